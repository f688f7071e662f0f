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
//!
//! Hooks run in the order they were registered, each at most once per event; a hook must
//! not block for long (each waits for its own registry with a bound) and must tolerate
//! running while the values it cleans up for are still alive in other threads.
//!
//! SIGKILL cannot be caught: each owner also has a `cleanup_stale` for the next start.

use std::sync::{Mutex, Once, PoisonError};

use crate::topology::sys;

/// A hook: what it cleans up, and the function.
type Hook = (&'static str, fn());
/// The hooks, in registration order.
static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());
/// Installs the panic hook and the signal thread, once.
static HANDLERS: Once = Once::new();

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
                    if let Some(sig) = signals.forever().next() {
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
