//! DPDK 22.11 as a peer: `dpdk-testpmd` processes with a virtio-user or vhost vdev, the 2 MiB
//! hugepages they run on, and the testpmd ↔ testpmd yardstick.
//!
//! - [`probe`]: is `dpdk-testpmd` on `PATH`, which DPDK, and may this process run it (root,
//!   for the hugepage pool); when missing, the error says how to install it ([`INSTALL_HINT`]).
//! - [`Hugepages`] (module `hugepages`): a claim on the kernel's 2 MiB pool, raised while it
//!   lives and restored on drop, panic, SIGINT/SIGTERM/SIGHUP and, after a SIGKILL, at the
//!   next start.
//! - [`Testpmd`] (module `testpmd`): one `dpdk-testpmd --no-pci --in-memory
//!   --single-file-segments` process with one vdev ([`Vdev`]: `net_vhost0` or
//!   `net_virtio_user0`), driven on its interactive prompt (`start`, `stop`, `show port stats
//!   0`) so its counters ([`PortStats`], [`ForwardStats`]) are read exactly. Killed (SIGTERM,
//!   then SIGKILL after a bound) on drop, panic and signals, and by the kernel if the harness
//!   dies (`PR_SET_PDEATHSIG`); a testpmd whose owner is gone is recognised by its file
//!   prefix and killed at the next start.
//! - [`pair`]: testpmd's virtio-user ↔ testpmd's vhost PMD, one core each: the yardstick a
//!   vhost-user back end or a guest driver is compared with (`dpdk_pair_g2h_<size>`,
//!   `dpdk_pair_h2g_<size>` in [`crate::ceilings::Ceiling`]).
//!
//! Names: every testpmd gets `--file-prefix vhb-<pid>-<n>` (`<pid>` the harness process, the
//! same form as the namespaces, [`crate::topology::owner_pid`]), so its DPDK runtime
//! directory is `/var/run/dpdk/vhb-<pid>-<n>` (removed when it exits) and its owner can be
//! told from its command line; vhost-user sockets are `/run/vhostbench/sockets/vhb-<pid>-<n>.sock`
//! ([`SocketPath`]). [`cleanup_stale`] removes all three kinds of leftovers and stale
//! hugepage claims.

mod hugepages;
pub mod pair;
mod testpmd;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

pub use hugepages::{
    cleanup_stale as cleanup_stale_hugepages, cleanup_stale_in as cleanup_stale_hugepages_in,
    HugepageFiles, Hugepages, StaleHugepages, NR_HUGEPAGES, PAGE_BYTES, STATE_DIR,
};
pub use testpmd::{
    live_testpmds, runtime_dir, testpmd_prefix, ForwardMode, ForwardStats, PortStats, Testpmd,
    TestpmdConfig, Vdev, KILL_PATIENCE, PAGES_PER_TESTPMD, STDBUF,
};

/// The program.
pub const TESTPMD: &str = "dpdk-testpmd";
/// How to get it, for error messages.
pub const INSTALL_HINT: &str = "install DPDK 22.11's testpmd with `apt-get install \
    --no-install-recommends dpdk-dev` (Debian 12 ships dpdk-testpmd in dpdk-dev; the `dpdk` \
    package alone does not have it)";
/// Where the harness's vhost-user sockets are made.
pub const SOCKET_DIR: &str = "/run/vhostbench/sockets";
/// Prefix of every DPDK file prefix and socket name (the namespaces' form).
pub const PREFIX: &str = crate::topology::PREFIX;

/// How long `dpdk-testpmd -v -h` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `<n>` of the next name.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh `vhb-<pid>-<n>`: a testpmd's file prefix, a socket's name.
pub fn unique_name() -> String {
    format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A DPDK install that can run here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpdkInstall {
    /// `dpdk-testpmd`, resolved on `PATH`.
    pub testpmd: PathBuf,
    /// What its EAL says it is (`DPDK 22.11.11`).
    pub version: String,
}

/// Finds `dpdk-testpmd` on `PATH` and asks it its version (`-v -h`: the EAL banner, then the
/// usage; it creates nothing). Errors say what is missing and how to get it: no testpmd, not
/// root (the hugepage pool needs it), no 2 MiB hugepage pool in this kernel.
pub fn probe() -> anyhow::Result<DpdkInstall> {
    probe_on(std::env::var_os("PATH").as_deref())
}

/// [`probe`] with `path` standing in for `PATH`.
fn probe_on(path: Option<&std::ffi::OsStr>) -> anyhow::Result<DpdkInstall> {
    let Some(testpmd) = find_on_path(path, TESTPMD) else {
        bail!("{TESTPMD} is not on PATH: {INSTALL_HINT}");
    };
    if find_on_path(path, STDBUF).is_none() {
        bail!("{STDBUF} (coreutils) is not on PATH; testpmd runs under it");
    }
    let mut cmd = std::process::Command::new(&testpmd);
    cmd.args(["-v", "-h"]);
    let out = testpmd::output_bounded(cmd, PROBE_TIMEOUT)
        .with_context(|| format!("running {} -v -h", testpmd.display()))?;
    let Some(version) = parse_version(&out) else {
        bail!(
            "{} -v -h printed no `RTE Version` line (is it DPDK's testpmd?): {}",
            testpmd.display(),
            out.lines().take(5).collect::<Vec<_>>().join(" | ")
        );
    };
    if crate::topology::sys::geteuid() != 0 {
        bail!("DPDK peers need root (they raise the 2 MiB hugepage pool, {NR_HUGEPAGES})");
    }
    if !Path::new(NR_HUGEPAGES).exists() {
        bail!("this kernel has no 2 MiB hugepage pool ({NR_HUGEPAGES} is missing)");
    }
    // Opening it for writing changes nothing; a read-only /sys (a container) fails here.
    if let Err(e) = fs::OpenOptions::new().write(true).open(NR_HUGEPAGES) {
        bail!("the 2 MiB hugepage pool cannot be resized here ({NR_HUGEPAGES}: {e})");
    }
    Ok(DpdkInstall { testpmd, version })
}

/// `DPDK 22.11.11` from the EAL's `RTE Version: 'DPDK 22.11.11'` line.
pub fn parse_version(banner: &str) -> Option<String> {
    banner.lines().find_map(|l| {
        let rest = l.split_once("RTE Version:")?.1.trim();
        Some(rest.trim_matches('\'').to_string()).filter(|v| !v.is_empty())
    })
}

fn find_on_path(path: Option<&std::ffi::OsStr>, program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .map(|d| d.join(program))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A vhost-user socket path `/run/vhostbench/sockets/vhb-<pid>-<n>.sock`, its directory made;
/// the socket file (made by whichever side listens) is removed on drop.
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
}

impl SocketPath {
    /// A new, unused path.
    pub fn new() -> anyhow::Result<SocketPath> {
        fs::create_dir_all(SOCKET_DIR).with_context(|| format!("creating {SOCKET_DIR}"))?;
        let path = Path::new(SOCKET_DIR).join(format!("{}.sock", unique_name()));
        remove_if_present(&path)?;
        Ok(SocketPath { path })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        if let Err(e) = remove_if_present(&self.path) {
            eprintln!("warning: {e:#}");
        }
    }
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Registers the exit hook of the DPDK peers (once): every testpmd of this process is
/// stopped first, then its hugepage claims are given back (so the pool shrinks with no page
/// of a dying testpmd still in use).
pub(crate) fn register_exit_hook() {
    crate::exit::register("dpdk peers", || {
        testpmd::kill_all_live();
        hugepages::release_all_live();
    });
}

/// What [`cleanup_stale`] found and undid, one line each, for the caller to report.
pub fn cleanup_stale() -> Vec<String> {
    let mut done = testpmd::cleanup_stale();
    done.extend(stale_sockets());
    match hugepages::cleanup_stale() {
        Ok(s) => {
            for (claim, pages) in &s.claims {
                done.push(format!(
                    "released stale hugepage claim {claim} ({pages} pages of 2 MiB)"
                ));
            }
            if let Some(pool) = s.pool {
                done.push(format!("hugepage pool back to {pool} pages"));
            }
        }
        Err(e) => eprintln!("warning: stale hugepage claims: {e:#}"),
    }
    done
}

/// Removes sockets `vhb-<pid>-<n>.sock` whose process is gone.
fn stale_sockets() -> Vec<String> {
    let Ok(entries) = fs::read_dir(SOCKET_DIR) else {
        return Vec::new();
    };
    let mut done = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_suffix(".sock")
            .and_then(crate::topology::owner_pid)
        else {
            continue;
        };
        if pid != std::process::id() && crate::topology::process_dead(pid) {
            match remove_if_present(&entry.path()) {
                Ok(()) => done.push(format!("removed stale socket {}", entry.path().display())),
                Err(e) => eprintln!("warning: {e:#}"),
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_the_eal_banner() {
        let banner = "EAL: Detected CPU lcores: 2\nEAL: Detected NUMA nodes: 1\n\
                      EAL: RTE Version: 'DPDK 22.11.11'\n\nUsage: dpdk-testpmd [options]\n";
        assert_eq!(parse_version(banner).as_deref(), Some("DPDK 22.11.11"));
        assert_eq!(parse_version("Usage: dpdk-testpmd [options]"), None);
    }

    #[test]
    fn names_are_owned_by_this_process() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        assert_eq!(crate::topology::owner_pid(&a), Some(std::process::id()));
    }

    #[test]
    fn without_testpmd_the_error_says_how_to_install_it() {
        let empty = tempfile::tempdir().expect("tempdir");
        for path in [None, Some(empty.path().as_os_str())] {
            let e = format!("{:#}", probe_on(path).expect_err("no testpmd"));
            assert!(e.contains("dpdk-testpmd is not on PATH"), "{e}");
            assert!(
                e.contains("apt-get install --no-install-recommends dpdk-dev"),
                "{e}"
            );
        }
    }

    #[test]
    fn probe_finds_testpmd_or_says_how_to_install_it() {
        match probe() {
            Ok(d) => assert!(d.version.starts_with("DPDK "), "{d:?}"),
            Err(e) => {
                let e = format!("{e:#}");
                let known = e.contains("apt-get install") || e.contains("root");
                assert!(known || e.contains("hugepage"), "{e}");
            }
        }
    }
}
