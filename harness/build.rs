//! Embeds the git revision of the workspace as `VHOSTBENCH_GIT_REVISION`:
//! `git rev-parse HEAD`, plus `-dirty` when `git status --porcelain --untracked-files=no`
//! reports changes; `unknown` when git fails. A `VHOSTBENCH_GIT_REVISION` set in the build
//! environment (for builds outside a checkout) wins.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=VHOSTBENCH_GIT_REVISION");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());

    // Re-run when HEAD moves (checkout, commit: HEAD, the branch ref it names, packed refs)
    // or the index changes (staging, commit). Also when any member crate's sources change,
    // since that is what turns a clean tree dirty or back.
    let git_dir = git(&manifest_dir, &["rev-parse", "--absolute-git-dir"])
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("../.git"));
    let mut watch = vec![
        git_dir.join("HEAD"),
        git_dir.join("index"),
        git_dir.join("packed-refs"),
    ];
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD")) {
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            watch.push(git_dir.join(r));
        }
    }
    let root = manifest_dir.join("..");
    for member in [
        "Cargo.toml",
        "vring",
        "engine",
        "guest-sim",
        "harness/src",
        "harness/Cargo.toml",
    ] {
        watch.push(root.join(member));
    }
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    if let Some(rev) = std::env::var("VHOSTBENCH_GIT_REVISION")
        .ok()
        .filter(|s| !s.is_empty())
    {
        println!("cargo:rustc-env=VHOSTBENCH_GIT_REVISION={rev}");
        return;
    }
    let rev = match git(&manifest_dir, &["rev-parse", "HEAD"]).filter(|s| !s.is_empty()) {
        // Untracked files are ignored: run outputs land untracked in results/ and would
        // otherwise mark every later build dirty.
        Some(head) => match git(
            &manifest_dir,
            &["status", "--porcelain", "--untracked-files=no"],
        ) {
            Some(s) if s.is_empty() => head,
            Some(_) => format!("{head}-dirty"),
            None => format!("{head}-unknown-status"),
        },
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=VHOSTBENCH_GIT_REVISION={rev}");
}
