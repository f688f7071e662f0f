//! `vhostbench compare` and `vhostbench export` as a CI job runs them: the binary, its exit
//! status, stdout and stderr. 0: no regression; 1: a regression; 2: the files cannot be
//! compared, with the file and the reason on stderr.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::results::{read_results, write_results, Results};

fn committed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../results")
        .join(name)
}

fn vhostbench(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vhostbench"))
        .args(args)
        .output()
        .expect("run vhostbench")
}

fn status(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `doc` with every repeat's throughput and its summary scaled by `factor` (a file written
/// before intervals: compare takes them from the repeats).
fn scaled(doc: &Results, factor: f64) -> Results {
    let mut d = doc.clone();
    for r in &mut d.records {
        // Five repeats (the file's three, cycled): what a timed verdict needs.
        let five: Vec<_> = r.per_repeat.iter().cycle().take(5).cloned().collect();
        r.per_repeat = five;
        for p in &mut r.per_repeat {
            p.throughput_mpps *= factor;
        }
        let s = &mut r.throughput_mpps;
        s.min *= factor;
        s.median *= factor;
        s.max *= factor;
    }
    d
}

#[test]
fn exit_status_says_regression_or_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committed_base =
        read_results(&committed("baseline-2026-12-03b-default.json")).expect("read");
    let base_path = dir.path().join("base.json");
    write_results(&base_path, &scaled(&committed_base, 1.0)).expect("write");
    let base = read_results(&base_path).expect("read");
    let slow = dir.path().join("slow.json");
    write_results(&slow, &scaled(&base, 0.5)).expect("write");

    // A file compared with itself: 0.
    let o = vhostbench(&[Path::new("compare"), &base_path, &base_path]);
    assert_eq!(status(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        text(&o.stdout).contains("regressed 0,"),
        "{}",
        text(&o.stdout)
    );

    // Half the throughput: 1, and the report says which.
    let o = vhostbench(&[Path::new("compare"), &base_path, &slow]);
    assert_eq!(status(&o), 1, "{}{}", text(&o.stderr), text(&o.stdout));
    assert!(text(&o.stdout).contains("REGRESSION"));
    // The other way round it is an improvement: 0.
    let o = vhostbench(&[Path::new("compare"), &slow, &base_path]);
    assert_eq!(status(&o), 0, "{}", text(&o.stdout));

    // JSON for scripts: parses, and agrees with the status.
    let o = vhostbench(&[
        Path::new("compare"),
        &base_path,
        &slow,
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(status(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(v["counts"]["regressions"].as_u64().is_some_and(|n| n > 0));
}

#[test]
fn unusable_input_is_status_2_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base_path = committed("baseline-2026-12-03b-default.json");
    let base = read_results(&base_path).expect("read");

    let missing = dir.path().join("missing.json");
    let not_results = dir.path().join("criterion.json");
    fs::write(&not_results, r#"{"tool": "criterion", "benchmarks": []}"#).expect("write");
    let newer = dir.path().join("v3.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&base_path).expect("read")).expect("JSON");
    v["schema_version"] = serde_json::json!(3);
    fs::write(&newer, v.to_string()).expect("write");
    let other_queue = dir.path().join("q1024.json");
    let mut q = base.clone();
    q.config["args"]["queue_size"] = serde_json::json!(1024);
    write_results(&other_queue, &q).expect("write");

    for (file, says) in [
        (&missing, "reading"),
        (&not_results, "not a vhostbench results document"),
        (&newer, "schema_version 3, this build reads 1..=2"),
        (&other_queue, "no common records"),
    ] {
        let o = vhostbench(&[Path::new("compare"), &base_path, file]);
        let err = text(&o.stderr);
        assert_eq!(status(&o), 2, "{}: {err}", file.display());
        assert!(
            err.contains(says) && err.contains(&file.display().to_string()),
            "{}: {err}",
            file.display()
        );
        assert!(
            o.stdout.is_empty(),
            "nothing on stdout: {}",
            text(&o.stdout)
        );
    }
    // Either side: the base named as such.
    let o = vhostbench(&[Path::new("compare"), &not_results, &base_path]);
    assert_eq!(status(&o), 2);
    assert!(text(&o.stderr).contains("base file"), "{}", text(&o.stderr));
}

#[test]
fn export_prints_each_format() {
    let file = committed("baseline-2026-12-03b-default.json");
    for (format, check) in [
        (
            "github-action-benchmark",
            "\"name\": \"null/tx/64B/poll0/batch64/q256\"",
        ),
        ("bencher", "\"throughput-mpps\""),
        ("markdown", "| mode | wl |"),
        ("csv", "name,mode,backend,"),
    ] {
        let o = vhostbench(&[
            Path::new("export"),
            &file,
            Path::new("--format"),
            Path::new(format),
        ]);
        assert_eq!(status(&o), 0, "{format}: {}", text(&o.stderr));
        assert!(
            text(&o.stdout).contains(check),
            "{format}: {}",
            text(&o.stdout)
        );
    }
    let o = vhostbench(&[
        Path::new("export"),
        Path::new("/nonexistent/r.json"),
        Path::new("--format"),
        Path::new("csv"),
    ]);
    assert_ne!(status(&o), 0);
    assert!(text(&o.stderr).contains("/nonexistent/r.json"));
}
