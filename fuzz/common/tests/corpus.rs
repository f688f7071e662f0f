//! Replays every committed input of each fuzz target, and the fuzzer's own corpus when there
//! is one.
//!
//! `fuzz/seeds/<target>/` is committed: a few seed inputs, and every crash the fuzzer found
//! once it is fixed (copy `fuzz/artifacts/<target>/crash-…` there). `fuzz/corpus/<target>/` is
//! what `cargo fuzz run` grew locally (not committed); it is replayed too when present. Each
//! file goes through the same decode and replay as under libFuzzer, so an input that broke an
//! oracle there breaks it here.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// `fuzz/`.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/common has a parent")
        .to_path_buf()
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus dir").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Replays every seed (which must decode: `replay` says whether one did) and every file of the
/// local corpus, then fails naming each file that broke an oracle. One target at a time
/// (`exclusive`): `vhost_msgs` counts the process's open files.
fn replay_all(target: &str, replay: impl Fn(&[u8]) -> bool) {
    let _one = fuzz_common::exclusive();
    let seeds = files(&fuzz_dir().join("seeds").join(target));
    assert!(
        !seeds.is_empty(),
        "no seeds for {target}: fuzz/seeds/{target}/ is committed"
    );
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    let mut failed = Vec::new();
    for (path, is_seed) in seeds
        .iter()
        .map(|p| (p, true))
        .chain(corpus.iter().map(|p| (p, false)))
    {
        let data = std::fs::read(path).expect("read corpus file");
        match catch_unwind(AssertUnwindSafe(|| replay(&data))) {
            Ok(decoded) => assert!(
                decoded || !is_seed,
                "seed {} does not decode as an input",
                path.display()
            ),
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs broke an oracle (messages above): {failed:#?}",
        failed.len(),
        seeds.len() + corpus.len()
    );
}

#[test]
fn virtq_device_corpus() {
    replay_all("virtq_device", |data| {
        fuzz_common::virtq_device::replay_bytes(data).is_some()
    });
}

#[test]
fn net_header_corpus() {
    replay_all("net_header", |data| {
        fuzz_common::net_header::replay(data);
        true
    });
}

#[test]
fn mem_table_corpus() {
    replay_all("mem_table", fuzz_common::mem_table::replay_bytes);
}

#[test]
fn vhost_msgs_corpus() {
    replay_all("vhost_msgs", fuzz_common::vhost_msgs::replay_bytes);
}
