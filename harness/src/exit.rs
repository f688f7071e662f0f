//! Clean-up on the exit paths no `Drop` sees: a panic (which may never unwind to the owner of
//! what must be undone) and SIGINT, SIGTERM, SIGHUP.
//!
//! What the harness creates outside itself (network namespaces, `dpdk-testpmd` processes,
//! hugepages it reserved) registers a hook here with [`register`]; the first registration
//! installs, once per process:
//! - a panic hook (chaining the previous one) that runs every hook, then the previous hook.
//!   It cannot know whether the panic will be caught, so it errs on the side of not leaking;
//! - a thread `vhb-signals` waiting on SIGINT, SIGTERM and SIGHUP (`signal-hook`) that runs
//!   every hook, then exits with status 128 + the signal's number. A signal whose disposition
//!   was "ignore" when the first hook was registered (SIGHUP under `nohup`) stays ignored.
//!   While a run is [`graceful`], the first signal only asks it to stop ([`interrupted`]).
//!
//! Hooks run in the order they were registered, each at most once per event; a hook must
//! not block for long (each waits for its own registry with a bound) and must tolerate
//! running while the values it cleans up for are still alive in other threads.
//!
//! SIGKILL cannot be caught: each owner also has a `cleanup_stale` for the next start.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

use crate::topology::sys;

/// A hook: what it cleans up, and the function.
type Hook = (&'static str, fn());
/// The hooks, in registration order.
static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());
/// Installs the panic hook and the signal thread, once.
static HANDLERS: Once = Once::new();

/// While set, the first SIGINT/SIGTERM/SIGHUP only asks the run to stop (see [`graceful`]).
static GRACEFUL: AtomicBool = AtomicBool::new(false);
/// The signal that asked a graceful run to stop, or 0.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);
/// How long a run asked to stop may take to write what finished before the signal's usual
/// course (hooks, exit) is taken anyway.
const GRACE: Duration = Duration::from_secs(30);

/// From now on the first SIGINT, SIGTERM or SIGHUP does not exit: it is recorded
/// ([`interrupted`]) for the run to stop after the combination in progress and write what
/// finished. A second signal, or [`GRACE`] passing, exits as usual (hooks, then 128 + the
/// signal's number).
pub fn graceful() {
    install();
    GRACEFUL.store(true, Ordering::Release);
}

/// The signal that asked the run to stop, if one did.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::Acquire) {
        0 => None,
        s => Some(s),
    }
}

/// Runs `hook` on every panic and on SIGINT/SIGTERM/SIGHUP from now on. `name` says what it
/// cleans up; registering a name again changes nothing.
pub(crate) fn register(name: &'static str, hook: fn()) {
    install();
    let mut hooks = HOOKS.lock().unwrap_or_else(PoisonError::into_inner);
    if !hooks.iter().any(|&(n, _)| n == name) {
        hooks.push((name, hook));
    }
}

/// Runs every registered hook (the panic hook and the signal thread).
fn run_hooks() {
    // Pushing is the only thing done under the lock, so it is never held for long; a panic
    // while it was held cannot leave the list inconsistent.
    let hooks = HOOKS.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for (_, hook) in hooks {
        hook();
    }
}

fn install() {
    HANDLERS.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            run_hooks();
            previous(info);
        }));

        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let signals: Vec<i32> = [SIGINT, SIGTERM, SIGHUP]
            .into_iter()
            .filter(|&s| !sys::signal_ignored(s))
            .collect();
        let spawned = signal_hook::iterator::Signals::new(&signals).and_then(|mut signals| {
            std::thread::Builder::new()
                .name("vhb-signals".into())
                .spawn(move || {
                    for sig in signals.forever() {
                        let first = INTERRUPTED
                            .compare_exchange(0, sig, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok();
                        if first && GRACEFUL.load(Ordering::Acquire) {
                            eprintln!(
                                "vhostbench: interrupted: stopping after the combination in \
                                 progress and writing what finished (again to stop now)"
                            );
                            std::thread::spawn(move || {
                                std::thread::sleep(GRACE);
                                run_hooks();
                                std::process::exit(128 + sig);
                            });
                            continue;
                        }
                        run_hooks();
                        std::process::exit(128 + sig);
                    }
                })
        });
        if let Err(e) = spawned {
            eprintln!(
                "warning: no signal handling ({e}); an interrupted run may leave namespaces, \
                 testpmd processes or hugepages behind (cleaned up by the next run)"
            );
        }
    });
}

/// Locks `m` for an exit hook: waits at most `patience` (another thread may hold it, or this
/// very thread may have panicked holding it) and takes over a poisoned lock; `None` if it
/// stayed busy, so a hook never blocks an exit for long.
pub(crate) fn lock_within<T>(
    m: &std::sync::Mutex<T>,
    patience: std::time::Duration,
) -> Option<std::sync::MutexGuard<'_, T>> {
    use std::sync::TryLockError;
    let deadline = std::time::Instant::now() + patience;
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}
