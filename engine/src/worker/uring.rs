//! The worker's io_uring: one outstanding 8-byte read per eventfd (kicks, stop), on registered
//! (fixed) files, so waiting for any of them is one `io_uring_enter`, and a kick that arrives
//! while the worker is busy is already a completion when it looks.
//!
//! The `unsafe` here is io_uring's contract: a read's buffer must stay valid and untouched
//! until its completion is reaped. The buffers are owned by [`EventRing`], and its `Drop`
//! cancels and reaps every outstanding read before they are freed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};

/// `user_data` of cancel requests (never an index).
const CANCEL: u64 = u64::MAX;
/// Tag bit in the `user_data` of poll requests.
const POLL_TAG: u64 = 1 << 62;

/// An io_uring with one armed read per eventfd.
pub struct EventRing {
    ring: IoUring,
    /// The eventfds, owned here so they outlive the reads on them.
    files: Vec<File>,
    /// Read targets, one per file. Boxed: their addresses are in the kernel's hands.
    bufs: Box<[u64]>,
    armed: Vec<bool>,
    /// Files `0..n_reads` carry reads; the rest are polled on demand.
    n_reads: usize,
    /// `io_uring_enter` calls made.
    pub enters: u64,
}

impl EventRing {
    /// Registers `files` as fixed files and arms a read on each.
    pub fn new(files: Vec<File>) -> io::Result<Self> {
        Self::with_polls(files, Vec::new())
    }

    /// Like [`EventRing::new`], plus `polls`: files (indices after the eventfds) that are
    /// watched for readability only on request ([`EventRing::arm_poll`]), one shot at a time.
    pub fn with_polls(reads: Vec<File>, polls: Vec<File>) -> io::Result<Self> {
        let n_reads = reads.len();
        let mut files = reads;
        files.extend(polls);
        let n = files.len();
        let ring = IoUring::new((n as u32 * 2).next_power_of_two().max(8))?;
        let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        ring.submitter().register_files(&raw)?;
        let mut r = EventRing {
            ring,
            files,
            bufs: vec![0u64; n].into_boxed_slice(),
            armed: vec![false; n],
            n_reads,
            enters: 0,
        };
        for i in 0..n_reads {
            r.arm(i)?;
        }
        r.ring.submit()?;
        r.enters += 1;
        Ok(r)
    }

    fn arm(&mut self, i: usize) -> io::Result<()> {
        let buf = &mut self.bufs[i] as *mut u64 as *mut u8;
        let e = opcode::Read::new(types::Fixed(i as u32), buf, 8)
            .build()
            .user_data(i as u64);
        // SAFETY: `buf` points into `self.bufs`, a boxed slice that is neither moved nor freed
        // while the read is outstanding: `armed[i]` stays true until its completion is reaped,
        // nothing else touches `bufs[i]` meanwhile, and `Drop` cancels and reaps every armed
        // read before the box is freed. Fixed file `i` is registered and owned by `self.files`.
        let pushed = unsafe { self.ring.submission().push(&e) };
        if pushed.is_err() {
            // The queue holds 2 entries per file and at most one read per file is armed.
            return Err(io::Error::other("submission queue full"));
        }
        self.armed[i] = true;
        Ok(())
    }

    /// Arms a one-shot readability poll on file `i` (a poll file), unless one is armed. Its
    /// completion is reported by [`EventRing::reap`] like a read, with the poll mask as count,
    /// and is not re-armed.
    pub fn arm_poll(&mut self, i: usize) -> io::Result<()> {
        if self.armed.get(i).copied().unwrap_or(true) {
            return Ok(());
        }
        let e = opcode::PollAdd::new(types::Fixed(i as u32), libc::POLLIN as u32)
            .build()
            .user_data(POLL_TAG | i as u64);
        // SAFETY: a poll request carries no buffer; fixed file `i` is registered and owned by
        // `self.files`.
        let pushed = unsafe { self.ring.submission().push(&e) };
        if pushed.is_err() {
            return Err(io::Error::other("submission queue full"));
        }
        self.armed[i] = true;
        Ok(())
    }

    /// Whether completions are waiting (no syscall).
    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Hands each completed read to `f(index, count)` and re-arms it (queued, see below). A
    /// failed read is reported with count 0.
    pub fn reap(&mut self, mut f: impl FnMut(usize, u64)) -> io::Result<usize> {
        // One pass: a guest writing its kick eventfd in a loop completes the re-armed read at
        // once, and looping here until the queue is quiet would never return to the rings.
        let mut rearm = [0usize; 16];
        let mut n = 0;
        let mut total = 0;
        {
            let mut cq = self.ring.completion();
            cq.sync();
            for cqe in &mut cq {
                let ud = cqe.user_data();
                if ud == CANCEL {
                    continue;
                }
                let i = (ud & !POLL_TAG) as usize;
                let Some(armed) = self.armed.get_mut(i) else {
                    continue;
                };
                *armed = false;
                total += 1;
                if ud & POLL_TAG != 0 {
                    // A one-shot poll: report, do not re-arm.
                    f(i, cqe.result().max(0) as u64);
                    continue;
                }
                f(i, if cqe.result() >= 0 { self.bufs[i] } else { 0 });
                // At most one read per file is outstanding, so this cannot overflow.
                if n < rearm.len() {
                    rearm[n] = i;
                    n += 1;
                }
            }
        }
        // Re-armed reads are only queued: they go to the kernel with the next `wait` (or
        // `flush`), saving a syscall per wake-up. Kicks meanwhile are not lost: the eventfd
        // counts them and the read completes as soon as it is submitted.
        for &i in &rearm[..n] {
            self.arm(i)?;
        }
        Ok(total)
    }

    /// Submits queued reads and polls without waiting (before spinning on completions).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.enters += 1;
        self.ring.submit().map(drop)
    }

    /// Blocks until at least one read completes.
    pub fn wait(&mut self) -> io::Result<()> {
        self.enters += 1;
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl std::fmt::Debug for EventRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRing")
            .field("files", &self.files.len())
            .field("enters", &self.enters)
            .finish()
    }
}

impl Drop for EventRing {
    fn drop(&mut self) {
        // Flush what was pushed but not submitted (a poll armed just before stopping), so the
        // submission queue has room for the cancels.
        let _ = self.ring.submit();
        for i in 0..self.armed.len() {
            if !self.armed[i] {
                continue;
            }
            let ud = if i >= self.n_reads {
                POLL_TAG | i as u64
            } else {
                i as u64
            };
            let e = opcode::AsyncCancel::new(ud).build().user_data(CANCEL);
            // SAFETY: a cancel request carries no buffer.
            if unsafe { self.ring.submission().push(&e) }.is_err() {
                let _ = self.ring.submit();
                // SAFETY: as above.
                let _ = unsafe { self.ring.submission().push(&e) };
            }
        }
        // Reap until no read is outstanding, so the kernel no longer holds `bufs`. Bounded in
        // time (10 ms per wait): if a completion never comes, leak the buffers rather than
        // free memory the kernel may still write.
        let ts = types::Timespec::new().nsec(10_000_000);
        let args = types::SubmitArgs::new().timespec(&ts);
        for _ in 0..100 {
            if !self.armed.iter().any(|&a| a) {
                return;
            }
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
            let mut cq = self.ring.completion();
            cq.sync();
            for cqe in &mut cq {
                let ud = cqe.user_data();
                if ud == CANCEL {
                    continue;
                }
                if let Some(a) = self.armed.get_mut((ud & !POLL_TAG) as usize) {
                    *a = false;
                }
            }
        }
        if self.armed.iter().any(|&a| a) {
            std::mem::forget(std::mem::take(&mut self.bufs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;

    #[test]
    fn reads_complete_on_signal_and_rearm() {
        let a = sys::eventfd().expect("eventfd");
        let b = sys::eventfd().expect("eventfd");
        let a2 = a.try_clone().expect("dup");
        let b2 = b.try_clone().expect("dup");
        let mut r = EventRing::new(vec![a, b]).expect("ring");
        sys::signal(&b2).expect("signal");
        r.wait().expect("wait");
        let mut got = Vec::new();
        r.reap(|i, n| got.push((i, n))).expect("reap");
        assert_eq!(got, vec![(1, 1)]);
        sys::signal(&a2).expect("signal");
        sys::signal(&a2).expect("signal");
        // The re-armed read may take the two signals in one completion or in two.
        let mut total = 0;
        while total < 2 {
            r.wait().expect("wait");
            r.reap(|i, n| {
                assert_eq!(i, 0);
                total += n;
            })
            .expect("reap");
        }
        assert_eq!(total, 2);
        drop(r);
    }
}
