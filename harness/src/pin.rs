//! Thread placement: pin a thread to one core, read its CPU time, spawn named pinned threads.
//!
//! Every measured thread in vhostbench is pinned (the vCPU on core 0, the worker on core 1 by
//! default) and named, so placement is repeatable and the threads show up by name in `perf`.

use std::io;
use std::thread::{self, JoinHandle};

/// Default core of the guest side (the vCPU thread, producers in the limits).
pub const VCPU_CORE: usize = 0;
/// Default core of the host side (the vhost worker, consumers in the limits).
pub const WORKER_CORE: usize = 1;

/// Pins the calling thread to `core` (a logical CPU number). Returns whether it worked; it
/// fails when the core does not exist or is outside the process's allowed set.
pub fn pin_current(core: usize) -> bool {
    engine::sys::pin_to(core)
}

/// CPU time consumed by the calling thread so far, in nanoseconds
/// (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_ns() -> u64 {
    engine::sys::thread_cpu_ns()
}

/// Spawns a thread named `name` that pins itself to `core` and then runs `f`.
///
/// Linux shows at most 15 bytes of a thread name. If pinning fails the thread still runs
/// (unpinned) and a warning naming the thread and core goes to stderr once, at start-up.
pub fn spawn_pinned<F, T>(name: String, core: usize, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let label = name.clone();
    thread::Builder::new().name(name).spawn(move || {
        if !pin_current(core) {
            eprintln!("warning: could not pin thread {label} to core {core}; running unpinned");
        }
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_thread_is_named_and_runs() {
        let h = spawn_pinned("pin-test".to_string(), 0, || {
            thread::current().name().map(str::to_owned)
        })
        .expect("spawn");
        assert_eq!(h.join().expect("join").as_deref(), Some("pin-test"));
    }
}
