//! The few OS calls the engine makes outside io_uring, each behind a safe function.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use vring::{GuestMemory, Span};

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

/// `TUNSETOFFLOAD`: which offloads (`TUN_F_*`) the reader of a tap fd accepts.
pub fn tun_set_offload(tap: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long); no memory is
    // passed, and `tap` is a valid descriptor for the call's duration.
    let r = unsafe {
        libc::ioctl(
            tap.as_raw_fd(),
            libc::TUNSETOFFLOAD as _,
            libc::c_ulong::from(flags),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// Reusable scratch space for iovecs pointing into guest memory.
#[derive(Debug, Default)]
pub struct IoVecs(Vec<libc::iovec>);

// SAFETY: the iovecs are plain addresses into the guest-memory mapping, rebuilt from checked
// spans before every use and never dereferenced by Rust code; moving the scratch space to
// another thread (the worker's) moves no access to that memory.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Scratch space for `cap` segments.
    pub fn with_capacity(cap: usize) -> Self {
        IoVecs(Vec::with_capacity(cap))
    }

    /// Refills with the host addresses of `spans`; false if one is outside guest memory.
    pub fn fill(&mut self, mem: &GuestMemory, spans: impl IntoIterator<Item = Span>) -> bool {
        self.0.clear();
        for s in spans {
            match mem.host_ptr(s) {
                Ok(p) => self.0.push(libc::iovec {
                    iov_base: p.cast(),
                    iov_len: s.len,
                }),
                Err(_) => return false,
            }
        }
        true
    }

    /// The iovecs.
    pub fn as_slice(&self) -> &[libc::iovec] {
        &self.0
    }
}

/// `writev(2)` of guest-memory segments to `fd` (the frame goes from guest memory to the
/// kernel with no copy of ours). `iov` is scratch space, reused by the caller.
pub fn writev_guest(
    fd: BorrowedFd<'_>,
    mem: &GuestMemory,
    spans: impl IntoIterator<Item = Span>,
    iov: &mut IoVecs,
) -> io::Result<usize> {
    vectored(fd, mem, spans, iov, false)
}

/// `readv(2)` from `fd` straight into guest-memory segments.
pub fn readv_guest(
    fd: BorrowedFd<'_>,
    mem: &GuestMemory,
    spans: impl IntoIterator<Item = Span>,
    iov: &mut IoVecs,
) -> io::Result<usize> {
    vectored(fd, mem, spans, iov, true)
}

fn vectored(
    fd: BorrowedFd<'_>,
    mem: &GuestMemory,
    spans: impl IntoIterator<Item = Span>,
    iov: &mut IoVecs,
    read: bool,
) -> io::Result<usize> {
    if !iov.fill(mem, spans) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let v = iov.as_slice();
    // SAFETY: every iovec points into the guest-memory mapping (checked by `host_ptr` in
    // `fill`), which `mem` keeps mapped for the duration of the call. `writev` only reads
    // them; `readv` writes at most `iov_len` bytes to each, and nobody holds a reference to
    // those bytes.
    let n = unsafe {
        if read {
            libc::readv(fd.as_raw_fd(), v.as_ptr(), v.len() as i32)
        } else {
            libc::writev(fd.as_raw_fd(), v.as_ptr(), v.len() as i32)
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
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
