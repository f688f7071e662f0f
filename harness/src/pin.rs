//! Thread placement: pin a thread to one core, read its CPU time, spawn named pinned threads.
//!
//! Every measured thread in vhostbench is pinned (the vCPU on the first of [`cores`], the
//! worker on the second: the process's affinity mask, or `--cores`) and named, so placement is
//! repeatable and the threads show up by name in `perf`.

use std::io;
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};

/// The cores measured threads are pinned to, in order; set once ([`set_cores`]) or taken
/// from the process's affinity mask on first use.
static CORES: OnceLock<Vec<usize>> = OnceLock::new();

/// The CPUs this process may run on (its affinity mask, `sched_getaffinity`), in order; `[0]`
/// if the mask cannot be read.
pub fn allowed_cores() -> Vec<usize> {
    let mut v: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    v.sort_unstable();
    v.dedup();
    if v.is_empty() {
        v.push(0);
    }
    v
}

/// Chooses the cores measured threads are pinned to (`--cores`): each must be in the
/// process's affinity mask. Without it they are the mask's, so `taskset -c 2,3 vhostbench`
/// runs on cores 2 and 3. Only the first call counts, and only before any thread was pinned.
pub fn set_cores(cores: &[usize]) -> anyhow::Result<()> {
    let allowed = allowed_cores();
    if let Some(c) = cores.iter().find(|c| !allowed.contains(c)) {
        anyhow::bail!(
            "--cores: core {c} is not one this process may run on ({})",
            fmt_cores(&allowed)
        );
    }
    anyhow::ensure!(!cores.is_empty(), "--cores: no core given");
    let mut v = cores.to_vec();
    v.dedup();
    anyhow::ensure!(
        CORES.set(v).is_ok() || CORES.get().is_some_and(|c| c == cores),
        "--cores: the cores were already chosen"
    );
    Ok(())
}

/// The cores measured threads are pinned to (see [`set_cores`]).
pub fn cores() -> &'static [usize] {
    CORES.get_or_init(allowed_cores)
}

/// The core of the guest side (the vCPU thread, producers in the limits): the first of
/// [`cores`].
pub fn vcpu_core() -> usize {
    cores()[0]
}

/// The core of the host side (the vhost worker, consumers in the limits): the second of
/// [`cores`], or the first when there is only one (the two sides then share it).
pub fn worker_core() -> usize {
    let c = cores();
    c[1 % c.len()]
}

/// `0,1` / `0-3` style list of cores, for messages.
pub fn fmt_cores(cores: &[usize]) -> String {
    cores
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

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
    fn the_cores_are_the_affinity_masks_and_others_are_refused() {
        let allowed = allowed_cores();
        assert!(!allowed.is_empty());
        assert!(cores().iter().all(|c| allowed.contains(c)));
        assert!(allowed.contains(&vcpu_core()) && allowed.contains(&worker_core()));
        let outside = allowed.iter().max().map_or(0, |m| m + 1);
        let e = set_cores(&[outside]).expect_err("a core outside the mask");
        assert!(
            e.to_string().contains("is not one this process may run on"),
            "{e}"
        );
    }

    #[test]
    fn spawned_thread_is_named_and_runs() {
        let h = spawn_pinned("pin-test".to_string(), 0, || {
            thread::current().name().map(str::to_owned)
        })
        .expect("spawn");
        assert_eq!(h.join().expect("join").as_deref(), Some("pin-test"));
    }
}
