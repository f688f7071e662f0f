//! Network namespaces the harness creates and always deletes.
//!
//! A namespace is named `vhb-<pid>-<n>` (`<pid>` the creating process, `<n>` a per-process
//! counter) and created with `ip netns add`, so it is visible to `ip netns list` and can be
//! inspected with `ip -n <name> ...` while a run is going on. The [`Netns`] value holds an open
//! descriptor of the namespace: [`Netns::run_in`] enters it through that descriptor, so code
//! already running keeps working even if the name is removed under it.
//!
//! Cleanup on every exit path:
//! - normal return and unwinding: [`Netns`]'s `Drop` runs `ip netns del`;
//! - a panic: the harness's panic hook ([`crate::exit`], registered when the first namespace
//!   is created) deletes every namespace this process still has (it cannot know whether the
//!   panic will be caught, so it errs on the side of not leaking; live [`Netns`] values keep
//!   working through their fds);
//! - SIGINT, SIGTERM, SIGHUP: the `vhb-signals` thread ([`crate::exit`]) deletes every
//!   namespace, then exits with status 128 + signal number. A signal whose disposition was
//!   "ignore" when the first hook was registered (SIGHUP under `nohup`) stays ignored;
//! - SIGKILL (and power loss) cannot be caught: [`cleanup_stale`], called at start-up, deletes
//!   the namespaces of processes that no longer exist.
//!
//! Deleting a namespace removes its name; the kernel frees it once the last descriptor in it
//! (a tap, a socket, the [`Netns`] fd) is closed, which process exit always does.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::sys;

/// Prefix of every namespace name this harness creates.
pub const PREFIX: &str = "vhb-";
/// Where `ip netns` keeps its namespaces (bind mounts of `/proc/<pid>/ns/net`).
pub const NETNS_DIR: &str = "/run/netns";

/// Names of the namespaces this process created and has not deleted yet.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The `<n>` of the next name.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// How long the panic hook and the signal thread wait for the registry (held by a thread in
/// the middle of `ip netns add` or `del`) before cleaning up without it.
const LOCK_PATIENCE: Duration = Duration::from_secs(5);

#[cfg(test)]
thread_local! {
    /// Names of the namespaces created on this thread, for tests that check something they
    /// called cleaned up after itself (other tests create namespaces in parallel).
    static CREATED_HERE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The names of the namespaces created on this thread since the last call (tests only).
#[cfg(test)]
pub(crate) fn created_on_this_thread() -> Vec<String> {
    CREATED_HERE.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

fn live() -> MutexGuard<'static, Vec<String>> {
    // A panic while the lock is held cannot leave the list inconsistent (push / remove only).
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A network namespace created by this process; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// `/run/netns/<name>`, open: what [`Netns::run_in`] enters.
    fd: File,
}

impl Netns {
    /// Creates a namespace `vhb-<pid>-<n>` with `lo` up and IPv6 disabled (so the kernel sends
    /// no router solicitations or MLD reports of its own on the interfaces created in it:
    /// every frame on a tap is one a test or benchmark put there).
    pub fn create() -> anyhow::Result<Netns> {
        crate::exit::register("network namespaces", delete_all_registered);
        let pid = std::process::id();
        let name = {
            let mut live = live();
            // A leftover `vhb-<pid>-<n>` of an earlier process with the same pid is skipped
            // (and later removed by `cleanup_stale`).
            let name = loop {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let name = format!("{PREFIX}{pid}-{n}");
                if !netns_path(&name).exists() {
                    break name;
                }
            };
            // Holding the registry across `ip netns add`: a signal's cleanup waits for the
            // namespace to exist and be registered, and so deletes it.
            ip(&["netns", "add", &name])
                .with_context(|| format!("creating network namespace {name}"))?;
            live.push(name.clone());
            #[cfg(test)]
            CREATED_HERE.with(|c| c.borrow_mut().push(name.clone()));
            name
        };
        let fd = match File::open(netns_path(&name)) {
            Ok(f) => f,
            Err(e) => {
                unregister_and_delete(&name);
                return Err(e).with_context(|| format!("opening network namespace {name}"));
            }
        };
        let ns = Netns { name, fd };
        ns.run_in(|| -> anyhow::Result<()> {
            ip(&["link", "set", "dev", "lo", "up"])?;
            for knob in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
                match fs::write(&path, "1") {
                    // A kernel without IPv6 has nothing to disable.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    r => r.with_context(|| format!("writing {path}"))?,
                }
            }
            Ok(())
        })?
        .with_context(|| format!("setting up network namespace {}", ns.name))?;
        Ok(ns)
    }

    /// The namespace's name (`vhb-<pid>-<n>`), as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread that has entered this namespace (`setns(CLONE_NEWNET)`), and
    /// returns its result. Sockets and taps opened by `f` belong to the namespace, and so do
    /// processes it spawns (`ip ...` without `-n`); the calling thread is not moved. A panic
    /// in `f` is resumed on the calling thread.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let fd = &self.fd;
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name("vhb-netns".into())
                .spawn_scoped(s, move || -> anyhow::Result<T> {
                    sys::setns_net(fd).context("setns(CLONE_NEWNET)")?;
                    Ok(f())
                })
                .context("spawning a thread for the namespace")?;
            match h.join() {
                Ok(r) => r.with_context(|| format!("in network namespace {}", self.name)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs `ip <args>` inside this namespace (each argument passed as is, no shell) and
    /// returns its standard output.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        self.run_in(|| ip(args))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        unregister_and_delete(&self.name);
    }
}

/// Removes `name` from the registry and, if it was there (not already deleted by a panic hook
/// or a signal), deletes it. Holds the registry while deleting, so a signal's cleanup that
/// runs meanwhile waits instead of racing.
fn unregister_and_delete(name: &str) {
    let mut live = live();
    if let Some(i) = live.iter().position(|n| n == name) {
        if let Err(e) = delete(name) {
            eprintln!("warning: could not delete network namespace {name}: {e:#}");
        }
        live.swap_remove(i);
    }
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `ip` with `args` (no shell) in the calling thread's namespace; its stdout, or an error
/// with its stderr.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).map_err(|e| anyhow!("ip {}: output: {e}", args.join(" ")))
}

/// `ip netns del <name>`; a namespace that is already gone is not an error.
fn delete(name: &str) -> anyhow::Result<()> {
    match ip(&["netns", "del", name]) {
        Ok(_) => Ok(()),
        Err(_) if !netns_path(name).exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes every registered namespace (panic hook, signal thread). Never blocks for long: if
/// the registry stays locked (a thread is in `ip netns add`/`del`, or this very thread
/// panicked holding it) it gives up after [`LOCK_PATIENCE`].
fn delete_all_registered() {
    let Some(mut live) = crate::exit::lock_within(&LIVE, LOCK_PATIENCE) else {
        eprintln!("vhostbench: network namespaces left behind (registry busy)");
        return;
    };
    for name in live.drain(..) {
        match delete(&name) {
            Ok(()) => eprintln!("vhostbench: deleted network namespace {name}"),
            Err(e) => eprintln!("vhostbench: could not delete network namespace {name}: {e:#}"),
        }
    }
}

/// The owner pid of a namespace named `vhb-<pid>-<n>`, or `None` for any other name.
pub fn owner_pid(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix(PREFIX)?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

/// Whether process `pid` no longer runs: `kill(pid, 0)` fails with `ESRCH`, `/proc/<pid>` is
/// missing, or it is a zombie (dead, waiting for its parent to reap it).
pub(crate) fn process_dead(pid: u32) -> bool {
    if sys::process_gone(pid) {
        return true;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => !Path::new(&format!("/proc/{pid}")).exists(),
        // `pid (comm) S ...`: the state follows the last ')' (comm may contain one).
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Deletes the namespaces named `vhb-<pid>-*` whose owner process no longer runs (killed with
/// SIGKILL, or crashed in a way no handler saw), and returns their names, sorted, for the
/// caller to report. A name with this process's pid that it did not create (a previous
/// process had the same pid) is stale too. Names that cannot be deleted are warned about on
/// stderr and not returned.
///
/// A pid reused by an unrelated live process keeps its namespace until that process exits.
pub fn cleanup_stale() -> Vec<String> {
    // Held throughout: a `Netns::create` in another thread finishes registering first.
    let live = live();
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = owner_pid(name) else { continue };
        let stale = if pid == me {
            !live.iter().any(|n| n == name)
        } else {
            process_dead(pid)
        };
        if !stale {
            continue;
        }
        match delete(name) {
            Ok(()) => removed.push(name.to_string()),
            Err(e) => eprintln!("warning: could not delete stale network namespace {name}: {e:#}"),
        }
    }
    removed.sort();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_of_names() {
        assert_eq!(owner_pid("vhb-1234-0"), Some(1234));
        assert_eq!(owner_pid("vhb-1-17"), Some(1));
        for bad in [
            "vhb-1234",
            "vhb--0",
            "vhb-12a-0",
            "vhb-0-0",
            "vhb-1-",
            "vhb-1-2-3",
            "other-1-2",
            "vhb-99999999999-1",
        ] {
            assert_eq!(owner_pid(bad), None, "{bad}");
        }
    }

    #[test]
    fn liveness_of_processes() {
        assert!(!process_dead(std::process::id()));
        // A child that has exited and been reaped is dead.
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        assert!(process_dead(pid));
    }
}
