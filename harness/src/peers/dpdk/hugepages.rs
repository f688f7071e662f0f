//! 2 MiB hugepages reserved for DPDK and given back on every exit path.
//!
//! `dpdk-testpmd --in-memory --single-file-segments` (DPDK 22.11) takes its memory from
//! `memfd_create(MFD_HUGETLB)`, one file per memory segment list, so it needs pages in the
//! kernel's pool (`nr_hugepages`) but no hugetlbfs mount (it says "no mounted hugetlbfs found
//! for that size" and goes on). Those memfds are also what a vhost-user back end maps.
//!
//! A [`Hugepages`] is a *claim* of N pages: the pool is raised by N while the claim lives and
//! lowered again when it is dropped. Claims are shared by every vhostbench process through
//! files under [`STATE_DIR`], changed only under an `flock` of its `lock` file:
//! - `original`: `nr_hugepages` as it was before the first live claim;
//! - `claim-<pid>-<n>`: the pages claim `n` of process `pid` holds.
//!
//! The pool is always `original` + the sum of the live claims, so concurrent runs (or tests)
//! add up instead of restoring each other's values; when the last claim goes, `original` is
//! written back and the file removed. Exit paths:
//! - drop (also while unwinding): the claim is released;
//! - a panic, SIGINT, SIGTERM, SIGHUP: a hook ([`crate::exit`]) releases every claim of the
//!   process;
//! - SIGKILL, power loss: the claim files stay; [`cleanup_stale`] (the next start) removes
//!   the claims of processes that are gone and restores `original` when none is left.
//!
//! Lowering the pool below what is in use is safe: the kernel turns the pages still mapped
//! into surplus pages and frees them when their last user (a testpmd being killed) lets go —
//! on this kernel (6.18) a moment later, from a workqueue; until then `nr_hugepages` reads
//! larger. A change waits (bounded) for that, so the pool reads as restored when it returns.
//! The `lock` file stays (removing a lock file others may be waiting on would break the
//! lock).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::peers::sys;
use crate::topology::process_dead;

/// The kernel's pool of 2 MiB pages.
pub const NR_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
/// Where the claims of every vhostbench process are recorded.
pub const STATE_DIR: &str = "/run/vhostbench/hugepages";
/// Bytes per page.
pub const PAGE_BYTES: u64 = 2 << 20;

/// How long a smaller pool may keep reading larger (surplus pages still being freed).
const SURPLUS_PATIENCE: Duration = Duration::from_secs(2);
/// How long a change waits for the lock another process holds.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);
/// How long the panic hook and the signal thread wait for it before going ahead without it.
const HOOK_PATIENCE: Duration = Duration::from_secs(3);

/// The files a claim changes: the pool's size and the state directory. [`HugepageFiles::system`]
/// is the real pool; tests point it at plain files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HugepageFiles {
    /// `nr_hugepages` (read and written as a decimal number).
    pub nr_hugepages: PathBuf,
    /// The directory of `lock`, `original` and the claims.
    pub state_dir: PathBuf,
}

impl HugepageFiles {
    /// The kernel's 2 MiB pool and [`STATE_DIR`].
    pub fn system() -> HugepageFiles {
        HugepageFiles {
            nr_hugepages: NR_HUGEPAGES.into(),
            state_dir: STATE_DIR.into(),
        }
    }

    /// The pool's size now.
    pub fn read(&self) -> anyhow::Result<u64> {
        let s = fs::read_to_string(&self.nr_hugepages)
            .with_context(|| format!("reading {}", self.nr_hugepages.display()))?;
        s.trim()
            .parse()
            .with_context(|| format!("{}: {s:?} is not a number", self.nr_hugepages.display()))
    }

    /// Asks for a pool of `pages` and returns what the kernel made of it. A smaller pool
    /// reads larger until the pages still in use (of a testpmd that is exiting) are freed,
    /// which the kernel may defer; that is waited for, up to [`SURPLUS_PATIENCE`].
    fn write(&self, pages: u64) -> anyhow::Result<u64> {
        fs::write(&self.nr_hugepages, pages.to_string()).with_context(|| {
            format!(
                "writing {pages} to {} (needs root)",
                self.nr_hugepages.display()
            )
        })?;
        let deadline = Instant::now() + SURPLUS_PATIENCE;
        loop {
            let now = self.read()?;
            if now <= pages || Instant::now() >= deadline {
                return Ok(now);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn original_path(&self) -> PathBuf {
        self.state_dir.join("original")
    }

    fn read_original(&self) -> anyhow::Result<Option<u64>> {
        let path = self.original_path();
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim().parse().with_context(|| {
                format!("{}: {s:?} is not a number", path.display())
            })?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The claims on file: (file name, owner pid, pages). Files that do not parse are skipped
    /// with a warning (they count for nothing).
    fn claims(&self) -> anyhow::Result<Vec<(String, u32, u64)>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.state_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(e).with_context(|| format!("listing {}", self.state_dir.display()))
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = claim_owner(&name) else {
                continue;
            };
            match fs::read_to_string(entry.path())
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                Some(pages) => out.push((name, pid, pages)),
                None => eprintln!(
                    "warning: ignoring unreadable hugepage claim {}",
                    entry.path().display()
                ),
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The owner pid of a claim file named `claim-<pid>-<n>`.
fn claim_owner(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix("claim-")?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n))
        .then(|| pid.parse().ok())
        .flatten()
        .filter(|&p| p > 0)
}

/// Claims of this process not released yet: (files, claim name).
static LIVE: Mutex<Vec<(HugepageFiles, String)>> = Mutex::new(Vec::new());
/// The `<n>` of the next claim.
static NEXT: AtomicU64 = AtomicU64::new(0);

fn live() -> MutexGuard<'static, Vec<(HugepageFiles, String)>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The state directory, locked. Unlocked (and closed) on drop.
struct Locked<'a> {
    files: &'a HugepageFiles,
    lock: Option<File>,
}

impl<'a> Locked<'a> {
    /// Waits up to `patience` for the lock; `strict` makes a lock still held then an error,
    /// otherwise the caller goes ahead without it (exit hooks: better than leaking pages).
    fn take(
        files: &'a HugepageFiles,
        patience: Duration,
        strict: bool,
    ) -> anyhow::Result<Locked<'a>> {
        fs::create_dir_all(&files.state_dir)
            .with_context(|| format!("creating {}", files.state_dir.display()))?;
        let path = files.state_dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if sys::lock_exclusive(&f, patience)
            .with_context(|| format!("locking {}", path.display()))?
        {
            return Ok(Locked {
                files,
                lock: Some(f),
            });
        }
        if strict {
            bail!(
                "{} is still locked after {patience:?}: another vhostbench process is changing \
                 the hugepage pool and does not finish",
                path.display()
            );
        }
        eprintln!(
            "vhostbench: {} still locked after {patience:?}; releasing hugepages without it",
            path.display()
        );
        Ok(Locked { files, lock: None })
    }

    /// Removes the claims whose process is gone, and this process's claims it does not hold
    /// any more (a process with the same pid ran before). Returns what was removed.
    fn sweep(&self, live: &[(HugepageFiles, String)]) -> anyhow::Result<Vec<(String, u64)>> {
        let me = std::process::id();
        let mut removed = Vec::new();
        for (name, pid, pages) in self.files.claims()? {
            let stale = if pid == me {
                !live.iter().any(|(f, n)| f == self.files && *n == name)
            } else {
                process_dead(pid)
            };
            if stale {
                remove_file(&self.files.state_dir.join(&name))?;
                removed.push((name, pages));
            }
        }
        Ok(removed)
    }

    /// Makes the pool `original` + the live claims; with none left, writes `original` back
    /// and forgets it. Returns (pages asked for, pages the kernel gave) when claims remain.
    fn settle(&self) -> anyhow::Result<Option<(u64, u64)>> {
        let claimed: u64 = self.files.claims()?.iter().map(|c| c.2).sum();
        let original = self.files.read_original()?;
        if claimed == 0 {
            if let Some(original) = original {
                self.files.write(original)?;
                remove_file(&self.files.original_path())?;
            }
            return Ok(None);
        }
        let original = match original {
            Some(o) => o,
            // Claims without `original` (someone removed it): the pool as it is stands in.
            None => {
                let now = self.files.read()?;
                write_file(&self.files.original_path(), now)?;
                now
            }
        };
        let target = original + claimed;
        Ok(Some((target, self.files.write(target)?)))
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(f) = &self.lock {
            sys::unlock(f);
        }
    }
}

fn remove_file(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn write_file(path: &Path, n: u64) -> anyhow::Result<()> {
    fs::write(path, format!("{n}\n")).with_context(|| format!("writing {}", path.display()))
}

/// A claim of 2 MiB hugepages: the kernel's pool is that much larger while it lives.
#[derive(Debug)]
pub struct Hugepages {
    files: HugepageFiles,
    claim: String,
    pages: u64,
    /// The pool's size right after the claim was made.
    pool: u64,
    released: bool,
}

impl Hugepages {
    /// Raises the kernel's 2 MiB pool by `pages` until the claim is dropped. Needs root.
    pub fn reserve(pages: u64) -> anyhow::Result<Hugepages> {
        Hugepages::reserve_in(&HugepageFiles::system(), pages)
    }

    /// [`Hugepages::reserve`] on `files`.
    pub fn reserve_in(files: &HugepageFiles, pages: u64) -> anyhow::Result<Hugepages> {
        anyhow::ensure!(pages > 0, "a hugepage claim of 0 pages");
        super::register_exit_hook();
        let pid = std::process::id();
        let claim = format!("claim-{pid}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let locked = Locked::take(files, LOCK_PATIENCE, true)?;
        let mut live = live();
        locked.sweep(&live)?;
        if files.claims()?.is_empty() {
            // Nothing claimed: an `original` left over is stale (its claims were swept) and
            // is restored first; then the pool as it is now is what to come back to.
            locked.settle()?;
            write_file(&files.original_path(), files.read()?)?;
        }
        write_file(&files.state_dir.join(&claim), pages)?;
        live.push((files.clone(), claim.clone()));
        let settled = locked.settle();
        if let Ok(Some((target, got))) = settled {
            if got >= target {
                return Ok(Hugepages {
                    files: files.clone(),
                    claim,
                    pages,
                    pool: got,
                    released: false,
                });
            }
        }
        // Not granted: the claim goes, and the pool back to what the other claims need.
        live.retain(|(f, n)| !(f == files && *n == claim));
        remove_file(&files.state_dir.join(&claim))?;
        if let Err(e) = locked.settle() {
            eprintln!("warning: restoring the hugepage pool: {e:#}");
        }
        match settled {
            Ok(Some((target, got))) => bail!(
                "asked the kernel for {target} hugepages of 2 MiB ({pages} for this run) in {}, \
                 it made {got}: not enough free (unfragmented) memory for {} MiB",
                files.nr_hugepages.display(),
                (pages * PAGE_BYTES) >> 20
            ),
            Ok(None) => bail!("hugepage claim {claim} vanished while it was made"),
            Err(e) => Err(e.context(format!("reserving {pages} hugepages of 2 MiB"))),
        }
    }

    /// Pages this claim holds.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The pool's size right after the claim was made (every live claim included).
    pub fn pool(&self) -> u64 {
        self.pool
    }

    /// Gives the pages back now, reporting failure (drop does the same, warning instead).
    pub fn release(mut self) -> anyhow::Result<()> {
        self.released = true;
        release_one(&self.files, &self.claim, LOCK_PATIENCE, true)
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = release_one(&self.files, &self.claim, LOCK_PATIENCE, false) {
                eprintln!(
                    "warning: could not give back {} hugepages: {e:#}",
                    self.pages
                );
            }
        }
    }
}

/// Removes claim `claim` (if this process still holds it: a panic or signal hook may have
/// released it already) and settles the pool.
fn release_one(
    files: &HugepageFiles,
    claim: &str,
    patience: Duration,
    strict: bool,
) -> anyhow::Result<()> {
    let locked = Locked::take(files, patience, strict)?;
    let mut live = live();
    let Some(i) = live.iter().position(|(f, n)| f == files && n == claim) else {
        return Ok(());
    };
    remove_file(&files.state_dir.join(claim))?;
    live.swap_remove(i);
    locked.settle()?;
    Ok(())
}

/// The exit hook: releases every claim of this process, waiting a bounded time for the
/// registry and the lock.
pub(super) fn release_all_live() {
    let Some(mut live) = crate::exit::lock_within(&LIVE, HOOK_PATIENCE) else {
        eprintln!("vhostbench: hugepage claims left behind (registry busy)");
        return;
    };
    let claims: Vec<(HugepageFiles, String)> = live.drain(..).collect();
    drop(live);
    for (files, claim) in claims {
        let r = Locked::take(&files, HOOK_PATIENCE, false).and_then(|locked| {
            remove_file(&files.state_dir.join(&claim))?;
            locked.settle()
        });
        match r {
            Ok(_) => eprintln!(
                "vhostbench: gave back hugepage claim {claim} (pool now {})",
                files
                    .read()
                    .map_or_else(|e| format!("unknown: {e:#}"), |n| n.to_string())
            ),
            Err(e) => eprintln!("vhostbench: could not give back hugepage claim {claim}: {e:#}"),
        }
    }
}

/// What [`cleanup_stale_in`] undid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaleHugepages {
    /// Claims of processes that are gone: (file name, pages).
    pub claims: Vec<(String, u64)>,
    /// The pool's size after the sweep, if it changed.
    pub pool: Option<u64>,
}

/// Removes the claims of processes that are gone and resizes the pool to what is still
/// claimed (restoring the original size when nothing is). Call at start-up.
pub fn cleanup_stale() -> anyhow::Result<StaleHugepages> {
    cleanup_stale_in(&HugepageFiles::system())
}

/// [`cleanup_stale`] on `files`. Without a state directory there is nothing to do.
pub fn cleanup_stale_in(files: &HugepageFiles) -> anyhow::Result<StaleHugepages> {
    if !files.state_dir.exists() {
        return Ok(StaleHugepages::default());
    }
    let had_original = files.read_original()?.is_some();
    let locked = Locked::take(files, LOCK_PATIENCE, true)?;
    let live = live();
    let claims = locked.sweep(&live)?;
    let mut pool = None;
    if !claims.is_empty() || (had_original && files.claims()?.is_empty()) {
        locked.settle()?;
        pool = Some(files.read()?);
    }
    Ok(StaleHugepages { claims, pool })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(start: u64) -> (tempfile::TempDir, HugepageFiles) {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = HugepageFiles {
            nr_hugepages: dir.path().join("nr_hugepages"),
            state_dir: dir.path().join("state"),
        };
        fs::write(&files.nr_hugepages, format!("{start}\n")).expect("write");
        (dir, files)
    }

    #[test]
    fn claims_add_up_and_the_last_one_restores() {
        let (_dir, files) = fake(7);
        let a = Hugepages::reserve_in(&files, 10).expect("a");
        assert_eq!((files.read().expect("read"), a.pool()), (17, 17));
        let b = Hugepages::reserve_in(&files, 5).expect("b");
        assert_eq!(files.read().expect("read"), 22);
        drop(a);
        assert_eq!(files.read().expect("read"), 12);
        b.release().expect("release");
        assert_eq!(files.read().expect("read"), 7);
        assert_eq!(files.read_original().expect("original"), None);
        assert!(files.claims().expect("claims").is_empty());
        assert!(Hugepages::reserve_in(&files, 0).is_err());
    }

    #[test]
    fn claims_of_dead_processes_are_swept_and_the_original_restored() {
        let (_dir, files) = fake(3);
        // A run that was SIGKILLed: pool raised, its claim and `original` on file.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = child.id();
        child.wait().expect("wait");
        fs::create_dir_all(&files.state_dir).expect("mkdir");
        write_file(&files.original_path(), 3).expect("original");
        write_file(&files.state_dir.join(format!("claim-{dead}-0")), 64).expect("claim");
        // And a claim file of this pid that this process never made.
        let me = std::process::id();
        write_file(&files.state_dir.join(format!("claim-{me}-999999")), 8).expect("claim");
        fs::write(&files.nr_hugepages, "75").expect("raise");

        let s = cleanup_stale_in(&files).expect("cleanup");
        assert_eq!(s.pool, Some(3));
        let mut names: Vec<String> = s.claims.iter().map(|c| c.0.clone()).collect();
        names.sort();
        let mut want = vec![format!("claim-{dead}-0"), format!("claim-{me}-999999")];
        want.sort();
        assert_eq!(names, want);
        assert_eq!(files.read().expect("read"), 3);
        assert_eq!(files.read_original().expect("original"), None);
        // Nothing left: a second sweep is quiet.
        assert_eq!(
            cleanup_stale_in(&files).expect("again"),
            StaleHugepages::default()
        );
    }

    #[test]
    fn a_claim_swept_at_reserve_time_restores_before_the_new_original_is_taken() {
        let (_dir, files) = fake(2);
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = child.id();
        child.wait().expect("wait");
        fs::create_dir_all(&files.state_dir).expect("mkdir");
        write_file(&files.original_path(), 2).expect("original");
        write_file(&files.state_dir.join(format!("claim-{dead}-3")), 30).expect("claim");
        fs::write(&files.nr_hugepages, "32").expect("raise");
        let h = Hugepages::reserve_in(&files, 4).expect("reserve");
        assert_eq!(files.read().expect("read"), 6, "2 original + 4, not 32 + 4");
        drop(h);
        assert_eq!(files.read().expect("read"), 2);
    }

    #[test]
    fn a_pool_that_cannot_be_changed_is_an_error_and_leaves_no_claim() {
        // A pool that cannot be read or written (no such file): reserving fails and leaves
        // no claim behind.
        let (_dir, files) = fake(5);
        let bad = HugepageFiles {
            nr_hugepages: files.state_dir.join("missing-dir").join("nr_hugepages"),
            state_dir: files.state_dir.clone(),
        };
        assert!(Hugepages::reserve_in(&bad, 4).is_err());
        assert!(files.claims().expect("claims").is_empty());
        assert!(live().iter().all(|(f, _)| *f != bad));
    }

    #[test]
    fn claim_names() {
        assert_eq!(claim_owner("claim-12-0"), Some(12));
        for bad in [
            "claim-12",
            "claim--0",
            "claim-0-1",
            "claim-1-x",
            "original",
            "lock",
        ] {
            assert_eq!(claim_owner(bad), None, "{bad}");
        }
    }
}
