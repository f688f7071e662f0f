//! The OS calls of the peers, each behind a safe function. **All of the peers' `unsafe` is
//! here**: `flock`, `kill`, and the `prctl(PR_SET_PDEATHSIG)` a child runs before `exec`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// Takes an exclusive `flock` on `file`, waiting at most `patience`. `Ok(false)` if it is
/// still held elsewhere then. The lock lasts until `file` is closed (or [`unlock`]).
pub(crate) fn lock_exclusive(file: &File, patience: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + patience;
    loop {
        // SAFETY: flock takes a descriptor and flags; `file` is open for the call. No memory.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => {}
            _ => return Err(e),
        }
    }
}

/// Releases a lock taken with [`lock_exclusive`] (closing the file does too).
pub(crate) fn unlock(file: &File) {
    // SAFETY: as above; unlocking a descriptor that holds no lock is harmless.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

/// Sends `sig` to process `pid`. A process that is already gone is not an error.
pub(crate) fn kill(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad pid"))?;
    // SAFETY: kill takes a pid (positive: one process, never a group or "all") and a signal
    // number. No memory is involved.
    if unsafe { libc::kill(pid, sig) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Makes the child `cmd` starts receive `sig` when the thread that forked it exits (the
/// kernel's `PR_SET_PDEATHSIG`), and exit at once if the parent is already gone by the time it
/// runs. Spawn it from a thread that lives as long as the process.
pub(crate) fn die_with_parent(cmd: &mut Command, sig: libc::c_int) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let hook = move || -> io::Result<()> {
        // SAFETY: prctl with PR_SET_PDEATHSIG takes the signal number as its one argument;
        // the rest are unused. It is async-signal-safe, so it may run between fork and exec.
        if unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::c_ulong::from(sig as u32),
                0,
                0,
                0,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: getppid has no preconditions and cannot fail (async-signal-safe).
        if unsafe { libc::getppid() } != parent {
            // The parent died before the death signal was armed: nobody would ever kill us.
            // (ESRCH: "no such process"; an OS error, so nothing is allocated after fork.)
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the closure only makes two async-signal-safe calls (prctl, getppid) and
    // allocates nothing (its errors are OS error codes); it touches no lock the forked child
    // could find held.
    unsafe {
        cmd.pre_exec(hook);
    }
}
