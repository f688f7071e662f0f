//! `vhostbench run` as a script sees it: what is on stdout, exit statuses, where the results
//! go, and what happens when the run cannot finish. Each runs the binary on the null mode with
//! short repeats (no privileges needed).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhostbench"))
}

/// A short null run: one combination (two with `rx`), one repeat.
const QUICK: [&str; 11] = [
    "run",
    "--modes",
    "null",
    "--workloads",
    "tx",
    "--sizes",
    "64",
    "--repeat",
    "1",
    "--duration-ms",
    "100",
];

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vhb-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn run(args: &[&str]) -> Output {
    bin()
        .args(QUICK)
        .args(args)
        .output()
        .expect("run vhostbench")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    let t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&t).expect("results JSON")
}

#[test]
fn json_on_stdout_is_the_results_and_nothing_else() {
    for args in [&["--json"][..], &["--out", "-"][..]] {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not one JSON document: {e}"));
        assert_eq!(v["records"].as_array().map(Vec::len), Some(1));
        // The prose went to stderr.
        assert!(
            text(&o.stderr).contains("calibration"),
            "{}",
            text(&o.stderr)
        );
    }
}

#[test]
fn format_prints_the_results_in_that_format_on_stdout() {
    let d = scratch("format");
    let out = d.join("r.json");
    let o = run(&["--format", "csv", "--out", out.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let csv = text(&o.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one record: {csv}");
    assert!(lines[0].contains("throughput"), "{}", lines[0]);
    assert!(lines[1].starts_with("null"), "{}", lines[1]);
    // The file is written as usual; the table went to stderr with the prose.
    assert_eq!(json(&out)["records"].as_array().map(Vec::len), Some(1));
    assert!(
        text(&o.stderr).contains("Mpps median"),
        "{}",
        text(&o.stderr)
    );
    let o = run(&["--format", "markdown", "--out", "-"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_bad_output_path_is_refused_before_anything_is_measured() {
    let d = scratch("out");
    let ro = d.join("read-only.json");
    std::fs::write(&ro, "{}").expect("write");
    let mut perm = std::fs::metadata(&ro).expect("meta").permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&ro, perm).expect("chmod");
    let missing = d.join("no/such/dir/x.json");
    for (path, says) in [
        (d.clone(), "is a directory"),
        (ro.clone(), "is read-only"),
        (missing.clone(), "does not exist"),
    ] {
        let t = Instant::now();
        let o = run(&["--out", path.to_str().expect("utf-8")]);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{}: {}",
            path.display(),
            text(&o.stderr)
        );
        assert!(text(&o.stderr).contains(says), "{}", text(&o.stderr));
        assert!(!text(&o.stdout).contains("calibration"), "it measured");
        assert!(t.elapsed() < Duration::from_secs(5), "refused late");
    }
    assert!(!d.join("no").exists(), "a mistyped tree was created");
    assert_eq!(std::fs::read_to_string(&ro).expect("read"), "{}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_symlink_is_followed_and_stays_a_link() {
    let d = scratch("link");
    let target = d.join("target.json");
    let link = d.join("link.json");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let o = run(&["--out", link.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(std::fs::symlink_metadata(&link)
        .expect("link")
        .file_type()
        .is_symlink());
    assert_eq!(json(&target)["records"].as_array().map(Vec::len), Some(1));
    // Nothing else left in the directory (no temporary file).
    let names: Vec<String> = std::fs::read_dir(&d)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_combination_that_cannot_be_laid_out_is_a_usage_error_before_measuring() {
    let o = bin()
        .args([
            "run",
            "--modes",
            "null",
            "--workloads",
            "tx",
            "--sizes",
            "64,65535",
        ])
        .args(["--guest-mem-mb", "4", "--repeat", "1", "--json"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("65535B frames"),
        "{}",
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn a_failing_combination_is_recorded_and_the_others_run() {
    let d = scratch("fail");
    let out = d.join("r.json");
    let o = run(&[
        "--modes",
        "null,vhost-user",
        "--socket",
        d.join("nobody-listens.sock").to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let v = json(&out);
    assert_eq!(v["records"][0]["mode"], "null");
    assert_eq!(v["failed"][0]["mode"], "vhost-user");
    assert!(v["failed"][0]["errors"][0]
        .as_str()
        .is_some_and(|e| e.contains("nobody-listens.sock")));
    let _ = std::fs::remove_dir_all(&d);
}

/// Spawns a longer run writing to `out`, and waits for its first round to start. The child is
/// returned to the caller, which waits for it (clippy cannot see that).
#[allow(clippy::zombie_processes)]
fn spawn_long(out: &Path) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = bin()
        .args([
            "run",
            "--modes",
            "null",
            "--workloads",
            "tx,rx",
            "--sizes",
            "64",
        ])
        .args(["--repeat", "20", "--duration-ms", "200", "--out"])
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut r = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).expect("read") == 0 {
            let status = child.wait();
            panic!("the run ended before its first round: {status:?}");
        }
        if line.starts_with("round 1:") {
            return (child, r);
        }
    }
}

fn wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "the run did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigint_writes_what_finished_marked_partial() {
    let d = scratch("int");
    let out = d.join("r.json");
    let (mut child, mut r) = spawn_long(&out);
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    let mut rest = String::new();
    let _ = r.read_to_string(&mut rest);
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(130), "{rest}");
    let v = json(&out);
    assert_eq!(v["partial"], "interrupted by SIGINT");
    assert!(!v["records"].as_array().expect("records").is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_closed_stdout_ends_the_run_quietly_with_results_written() {
    let d = scratch("pipe");
    let out = d.join("r.json");
    let (mut child, r) = spawn_long(&out);
    drop(r);
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(141));
    assert_eq!(json(&out)["partial"], "stdout closed");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_cores_come_from_the_affinity_mask() {
    if Command::new("taskset").arg("-V").output().is_err() {
        harness::testing::skip("the_cores_come_from_the_affinity_mask", "no taskset");
        return;
    }
    let o = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_vhostbench")])
        .args(QUICK)
        .arg("--json")
        .output()
        .expect("taskset");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["config"]["cores"], serde_json::json!([0]));
    assert_eq!(v["config"]["worker_core"], 0);
    assert!(text(&o.stderr).contains("one core"), "{}", text(&o.stderr));
    // --cores outside the mask is refused.
    let o = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_vhostbench")])
        .args(QUICK)
        .args(["--cores", "1", "--json"])
        .output()
        .expect("taskset");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}
