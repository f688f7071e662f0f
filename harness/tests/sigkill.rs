//! Killing `vhostbench` with SIGKILL mid-run leaves its namespace behind (nothing can catch
//! SIGKILL); the next start finds it, removes it and says so.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::topology;

fn namespaces_of(pid: u32) -> Vec<String> {
    let prefix = format!("{}{pid}-", topology::PREFIX);
    std::fs::read_dir(topology::NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigkilled_run_leaves_a_namespace_the_next_start_removes() {
    let p = topology::probe();
    if !p.can_run {
        harness::testing::skip(
            "sigkilled_run_leaves_a_namespace_the_next_start_removes",
            &p.summary(),
        );
        return;
    }
    let bin = env!("CARGO_BIN_EXE_vhostbench");
    let dir = std::env::temp_dir().join(format!("vhb-sigkill-{}", std::process::id()));
    // --out's directory must exist (a run refuses one that does not, before measuring).
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let mut child = Command::new(bin)
        .args([
            "run",
            "--modes",
            "tap-vhost",
            "--workloads",
            "tx",
            "--sizes",
            "64",
        ])
        .args(["--duration-ms", "30000", "--repeat", "1", "--out"])
        .arg(dir.join("killed.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vhostbench");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    // The ceilings measured before the run make and delete short-lived namespaces of their
    // own: wait for one that lasts (the 30-second run's), so the kill finds it still there.
    let mut left = Vec::new();
    let mut seen = namespaces_of(pid);
    while left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = namespaces_of(pid);
        left = now.iter().filter(|n| seen.contains(n)).cloned().collect();
        seen = now;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(!left.is_empty(), "the run never created a namespace");
    let still = namespaces_of(pid);
    assert!(
        !still.is_empty(),
        "SIGKILL cannot be caught: the namespace should still be there"
    );

    let out = Command::new(bin)
        .args([
            "run",
            "--modes",
            "null",
            "--workloads",
            "tx",
            "--sizes",
            "64",
        ])
        .args(["--duration-ms", "50", "--repeat", "1", "--out"])
        .arg(dir.join("next.json"))
        .output()
        .expect("run vhostbench again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ns in &still {
        assert!(
            stdout.contains(&format!("removed stale namespace {ns}")),
            "{ns} not reported:\n{stdout}"
        );
        assert!(
            !Path::new(topology::NETNS_DIR).join(ns).exists(),
            "{ns} still exists"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
