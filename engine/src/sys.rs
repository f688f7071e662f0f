//! The few OS calls the engine makes outside io_uring, each behind a safe function.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

/// Creates a non-semaphore eventfd (the kick and call fds of a queue, `VHOST_SET_VRING_KICK` /
/// `_CALL`).
pub fn eventfd() -> io::Result<File> {
    // SAFETY: eventfd has no memory preconditions; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Adds 1 to an eventfd (a kick or an interrupt).
#[inline]
pub fn signal(fd: &File) -> io::Result<()> {
    add(fd, 1)
}

/// Adds `n` to an eventfd.
#[inline]
pub fn add(fd: &File, n: u64) -> io::Result<()> {
    (&*fd).write_all(&n.to_ne_bytes())
}

/// Blocks until an eventfd is non-zero, then resets it; returns the count.
pub fn wait(fd: &File) -> io::Result<u64> {
    let mut b = [0u8; 8];
    (&*fd).read_exact(&mut b)?;
    Ok(u64::from_ne_bytes(b))
}

/// CPU time this thread has used, in ns (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to `core`; false if the core does not exist or pinning failed.
pub fn pin_to(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_counts_and_resets() {
        let e = eventfd().expect("eventfd");
        signal(&e).expect("signal");
        signal(&e).expect("signal");
        assert_eq!(wait(&e).expect("wait"), 2);
        assert!(thread_cpu_ns() > 0);
    }
}
