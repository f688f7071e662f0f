//! `run --lockstep` counted by callgrind, twice over: the two results files' `lockstep` lists
//! are identical, every field (instruction counts included), and each record's counts are
//! whole: both sides counted, the total their sum. Needs valgrind (CI installs it); without
//! it the test says so and skips.

use std::path::Path;
use std::process::Command;

use harness::results::{read_results, Counter, Results};

fn lockstep_run(out: &Path) -> Results {
    let o = Command::new(env!("CARGO_BIN_EXE_vhostbench"))
        .args(["run", "--lockstep", "--lockstep-counter", "callgrind"])
        .args([
            "--modes",
            "null",
            "--workloads",
            "tx,rx,rr",
            "--sizes",
            "64",
        ])
        .args(["--queue-size", "64", "--guest-mem-mb", "4"])
        .args(["--lockstep-packets", "1024", "--out"])
        .arg(out)
        .output()
        .expect("run vhostbench");
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    read_results(out).expect("read the results")
}

#[test]
fn two_lockstep_runs_of_one_build_count_the_same() {
    if let Err(e) = harness::lockstep::callgrind::version() {
        harness::testing::skip(
            "two_lockstep_runs_of_one_build_count_the_same",
            &format!("{e:#}"),
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("vhb-lockstep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let a = lockstep_run(&dir.join("a.json"));
    let b = lockstep_run(&dir.join("b.json"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(a.lockstep.len(), 3, "{:?}", a.lockstep);
    assert!(a.records.is_empty(), "no timed runs");
    assert_eq!(
        a.lockstep, b.lockstep,
        "two runs of one build counted differently"
    );
    for r in &a.lockstep {
        let i = &r.instructions_per_packet;
        assert_eq!(r.counter, Counter::Callgrind);
        assert!(r
            .counter_version
            .as_deref()
            .is_some_and(|v| v.starts_with("valgrind-")));
        assert!(r.packets >= 1024, "{r:?}");
        assert!(i.guest > 0.0 && i.device > 0.0, "{r:?}");
        assert!(
            (i.total - (i.guest + i.device)).abs() < 1e-6 * i.total,
            "{r:?}"
        );
        // Both sides sleep between turns: each hands over with an eventfd write and a read.
        assert!(
            r.kicks_per_packet > 0.0 && r.calls_per_packet > 0.0,
            "{r:?}"
        );
        assert_eq!(
            r.syscalls_per_packet,
            2.0 * (r.kicks_per_packet + r.calls_per_packet)
        );
    }
}
