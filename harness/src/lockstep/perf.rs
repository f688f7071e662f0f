//! The CPU's instruction counter, where the host exposes one: `perf_event_open(2)` with
//! `PERF_COUNT_HW_INSTRUCTIONS`, counting user-space instructions of the calling thread only,
//! switched on and off around what is measured. Many VMs have no hardware counters; there
//! [`Counter::open`] fails and the lockstep run uses callgrind instead.
//!
//! All of the lockstep's `unsafe` is in this module: the system call and two `ioctl`s.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::schedule::Meter;

/// `struct perf_event_attr` as of `PERF_ATTR_SIZE_VER0` (64 bytes): the fields this counter
/// sets; the kernel takes the size from `size` and zero for everything after it.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// The bit fields: `disabled` (bit 0), `exclude_kernel` (5), `exclude_hv` (6), …
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_HARDWARE: u32 = 0;
const PERF_COUNT_HW_INSTRUCTIONS: u64 = 1;
const ATTR_DISABLED: u64 = 1 << 0;
const ATTR_EXCLUDE_KERNEL: u64 = 1 << 5;
const ATTR_EXCLUDE_HV: u64 = 1 << 6;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `_IO('$', 0)`, `_IO('$', 1)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_DISABLE: libc::c_ulong = 0x2401;

/// One instruction counter of the calling thread, user space only, created disabled.
#[derive(Debug)]
pub struct Counter {
    file: File,
}

impl Counter {
    /// Opens the counter for the calling thread (on any CPU it runs on).
    pub fn open() -> io::Result<Counter> {
        let attr = PerfEventAttr {
            kind: PERF_TYPE_HARDWARE,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_HW_INSTRUCTIONS,
            flags: ATTR_DISABLED | ATTR_EXCLUDE_KERNEL | ATTR_EXCLUDE_HV,
            ..PerfEventAttr::default()
        };
        // SAFETY: `attr` is a valid `perf_event_attr` of the size it says, alive for the call;
        // the kernel only reads it. pid 0 and cpu -1: this thread, wherever it runs; no group.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                0 as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::c_int::try_from(fd)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "fd out of range"))?;
        // SAFETY: `fd` is a fresh descriptor the kernel just returned, owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Counter { file })
    }

    fn ioctl(&self, request: libc::c_ulong) -> io::Result<()> {
        // SAFETY: the perf ioctls ENABLE and DISABLE take no argument (0); the descriptor is
        // valid for the call's duration.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Starts counting.
    pub fn enable(&self) -> io::Result<()> {
        self.ioctl(PERF_EVENT_IOC_ENABLE)
    }

    /// Stops counting.
    pub fn disable(&self) -> io::Result<()> {
        self.ioctl(PERF_EVENT_IOC_DISABLE)
    }

    /// Instructions counted so far.
    pub fn read(&self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        (&self.file).read_exact(&mut b)?;
        Ok(u64::from_ne_bytes(b))
    }
}

/// The two sides counted apart: each side's part of a turn between its counter's enable and
/// disable.
#[derive(Debug)]
pub struct PerfMeter {
    guest: Counter,
    device: Counter,
    /// The first enable or disable that failed.
    failed: Option<io::Error>,
}

impl PerfMeter {
    /// Two counters of the calling thread.
    pub fn open() -> io::Result<PerfMeter> {
        Ok(PerfMeter {
            guest: Counter::open()?,
            device: Counter::open()?,
            failed: None,
        })
    }

    fn around<R>(c: &Counter, failed: &mut Option<io::Error>, f: impl FnOnce() -> R) -> R {
        if let Err(e) = c.enable() {
            failed.get_or_insert(e);
        }
        let r = f();
        if let Err(e) = c.disable() {
            failed.get_or_insert(e);
        }
        r
    }

    /// Instructions counted: guest, device; an error if switching a counter ever failed.
    pub fn counts(self) -> io::Result<(u64, u64)> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        Ok((self.guest.read()?, self.device.read()?))
    }
}

impl Meter for PerfMeter {
    fn guest<R>(&mut self, f: impl FnOnce() -> R) -> R {
        Self::around(&self.guest, &mut self.failed, f)
    }

    fn device<R>(&mut self, f: impl FnOnce() -> R) -> R {
        Self::around(&self.device, &mut self.failed, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attr_is_the_first_published_size() {
        // PERF_ATTR_SIZE_VER0.
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 64);
    }

    /// Where the host has the counter, a loop of known length counts at least its iterations
    /// and nothing while disabled; where it has none, the error is the kernel's.
    #[test]
    fn counts_only_while_enabled() {
        let c = match Counter::open() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: no instruction counter here ({e})");
                assert!(e.raw_os_error().is_some(), "{e}");
                return;
            }
        };
        let spin = |n: u64| {
            for i in 0..n {
                std::hint::black_box(i);
            }
        };
        spin(100_000);
        assert_eq!(c.read().expect("read"), 0, "disabled from the start");
        c.enable().expect("enable");
        spin(100_000);
        c.disable().expect("disable");
        let n = c.read().expect("read");
        assert!(n >= 100_000, "{n} instructions for 100000 iterations");
        spin(100_000);
        assert_eq!(c.read().expect("read"), n, "nothing counted while disabled");
    }
}
