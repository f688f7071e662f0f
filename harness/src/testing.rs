//! For tests that cannot run on this host (no root, no `/dev/net/tun`, no `dpdk-testpmd`):
//! [`skip`] says so on stderr and, when `VHOSTBENCH_SKIPPED` names a file, adds a line to it,
//! so that what did not run is counted where CI reads it (`.ci/run` lists them after the
//! tests, and fails when a CI run as root skipped any). libtest itself has no "skipped": such
//! a test otherwise passes silently.

use std::io::Write;

/// The environment variable naming the file skipped tests are listed in.
pub const SKIPPED_FILE_VAR: &str = "VHOSTBENCH_SKIPPED";

/// Records that test `test` did not run, and why.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    if let Some(path) = std::env::var_os(SKIPPED_FILE_VAR) {
        if let Err(e) = list(std::path::Path::new(&path), test, why) {
            eprintln!("could not list {test} as skipped in {path:?}: {e}");
        }
    }
}

/// Appends `test: why` (on one line) to the file at `path`.
fn list(path: &std::path::Path, test: &str, why: &str) -> std::io::Result<()> {
    let line = format!("{test}: {}\n", why.replace('\n', " "));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_listed_on_one_line() {
        let path = std::env::temp_dir().join(format!("vhb-skipped-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        list(&path, "some_test", "no root\nat all").expect("list");
        list(&path, "other_test", "no testpmd").expect("list");
        let text = std::fs::read_to_string(&path).expect("listed");
        assert_eq!(text, "some_test: no root at all\nother_test: no testpmd\n");
        let _ = std::fs::remove_file(&path);
    }
}
