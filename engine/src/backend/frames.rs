//! A backend on a file that takes one frame per `write` and gives one per `read`: a tun/tap or
//! macvtap fd (`IFF_VNET_HDR`, the 12-byte header passed through, [`super::tap`]) or a raw
//! `AF_PACKET` socket (the header stripped by the device, [`super::packet`]).
//!
//! - TX: a batch of up to 64 frames becomes 64 io_uring writes straight from guest memory (no
//!   bounce copy) on a registered (fixed) file, one `io_uring_enter` for the batch, or 64
//!   `writev(2)`s, whichever measures cheaper per frame on this fd as the run goes
//!   (`Chooser`; the counters say which ran). A frame in one buffer uses `WRITE_FIXED` on
//!   the guest memory registered as fixed buffers, one per memory region (no page pinning
//!   per write); a scattered frame, or one crossing from one region into the next, uses
//!   `WRITEV`. A batch of one frame (request/response traffic) is a plain `writev`:
//!   there the ring is pure overhead.
//! - RX: the worker gathers guest buffers for the largest frame the fd can deliver and the
//!   frame is `readv`-ed straight into them (vhost-net's `recvmsg` into the guest's iov). The
//!   fd is non-blocking: `EAGAIN` means "no frame", and the worker then waits for readability
//!   with an io_uring poll.
//! - The virtio-net header ([`Header`]): passed through to and from a tap as it is; for a raw
//!   socket the device strips it on TX and writes a zero one on RX (Linux vhost-net's
//!   `vhost_hlen` = 12 with `sock_hlen` = 0).
//!
//! The `unsafe` here is io_uring's contract: buffers handed to the kernel stay valid until the
//! operation completes. Every write of a batch is reaped before `send` returns, and every
//! pointer comes from [`GuestMemory::host_ptr`], inside a mapping that outlives the call. The
//! guest memory registered with the ring is owned by the backend (an `Arc`), so it outlives the
//! registration whatever the owner of the backend does.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use vring::net::VirtioNetHdr;
use vring::{GuestMemory, Span};

use super::{tx_frame_len, Backend, BackendError, TxResult};
use crate::metrics::DropReason;

use crate::sys;
use crate::virtq::chain::MAX_SEGMENTS;
use crate::virtq::Chain;

/// What happens to the 12-byte virtio-net header between the rings and the fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// The fd takes and gives it (a tap or macvtap with `IFF_VNET_HDR` and header size 12).
    Passed,
    /// The fd carries bare frames (a raw packet socket): stripped on TX, a zero header with
    /// only `num_buffers` set on RX.
    Stripped,
}

/// How a batch of more than one frame goes to the fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// One io_uring submission of one write per frame.
    Uring = 0,
    /// One `writev(2)` per frame.
    Writev = 1,
}

/// Batches per window of [`Chooser`].
const WINDOW: u32 = 512;
/// Batches at the end of each window sent the other way, to measure it.
const PROBE: u32 = 16;

/// Picks the cheaper way to submit batches, measured on this fd as the run goes: which one
/// wins depends on the host (a `write(2)` per frame to a tap beats io_uring batches on some
/// hosts and loses on others). Each window of [`WINDOW`] batches ends with [`PROBE`] batches
/// sent the other way; at its end the way with the lower wall time per frame becomes current
/// (the other must be at least 5 % cheaper to take over, so noise does not flip it).
#[derive(Debug)]
struct Chooser {
    current: Way,
    in_window: u32,
    /// Per way (indexed by `Way as usize`): ns and frames in this window.
    window: [(u64, u64); 2],
    /// Per way: batches sent, all run.
    batches: [u64; 2],
    /// Times the current way changed.
    switches: u64,
}

impl Chooser {
    fn new() -> Self {
        Chooser {
            current: Way::Uring,
            in_window: 0,
            window: [(0, 0); 2],
            batches: [0; 2],
            switches: 0,
        }
    }

    fn other(w: Way) -> Way {
        match w {
            Way::Uring => Way::Writev,
            Way::Writev => Way::Uring,
        }
    }

    #[inline]
    fn pick(&self) -> Way {
        if self.in_window >= WINDOW - PROBE {
            Self::other(self.current)
        } else {
            self.current
        }
    }

    fn record(&mut self, way: Way, took: Duration, frames: usize) {
        let w = &mut self.window[way as usize];
        w.0 += took.as_nanos() as u64;
        w.1 += frames as u64;
        self.batches[way as usize] += 1;
        self.in_window += 1;
        if self.in_window < WINDOW {
            return;
        }
        let per_frame = |(ns, n): (u64, u64)| (n > 0).then(|| ns as f64 / n as f64);
        let other = Self::other(self.current);
        if let (Some(cur), Some(alt)) = (
            per_frame(self.window[self.current as usize]),
            per_frame(self.window[other as usize]),
        ) {
            if alt < cur * 0.95 {
                self.current = other;
                self.switches += 1;
            }
        }
        self.in_window = 0;
        self.window = [(0, 0); 2];
    }
}

/// Spans of `spans` after the first `skip` bytes.
fn after(spans: &[Span], mut skip: usize) -> impl Iterator<Item = Span> + '_ {
    spans.iter().filter_map(move |s| {
        if skip >= s.len {
            skip -= s.len;
            None
        } else {
            let rest = Span {
                off: s.off + skip,
                len: s.len - skip,
            };
            skip = 0;
            Some(rest)
        }
    })
}

/// The fixed buffer (of the registered regions `fixed`) that holds all of `one`, if any. With
/// one region, one compare.
#[inline]
fn fixed_index(fixed: &[(usize, usize)], one: &libc::iovec) -> Option<u16> {
    let (start, len) = (one.iov_base as usize, one.iov_len);
    fixed
        .iter()
        .position(|&(base, size)| {
            start >= base
                && size
                    .checked_sub(len)
                    .is_some_and(|last| start - base <= last)
        })
        .and_then(|i| u16::try_from(i).ok())
}

/// A backend on a frame fd. See the module documentation.
pub struct FrameFd {
    /// Its name in reports (`tap`, `packet`).
    name: &'static str,
    fd: File,
    /// Bytes of each chain's readable part not written to the fd (the header, when stripped),
    /// and bytes of each RX buffer the device fills itself.
    skip: usize,
    /// Dropped before `mem`: the ring holds guest memory registered as a fixed buffer.
    ring: IoUring,
    /// One iovec array per batch slot, reused; stable while the batch is in flight.
    iovs: Vec<sys::IoVecs>,
    rx_iov: sys::IoVecs,
    /// Guest memory is registered as fixed buffers, one per region: buffer `i`'s host
    /// address range is `fixed_mem[i]`. Empty when the kernel refused.
    fixed_mem: Vec<(usize, usize)>,
    /// Largest frame RX must make room for, virtio-net header included.
    rx_room: usize,
    /// The tap may have a frame (cleared on `EAGAIN`, set by [`Backend::rx_wake`]).
    rx_ready: bool,
    /// Where discarded frames are read to (allocated on first use).
    scratch: Vec<u8>,
    /// A ring error left writes unaccounted: refuse further batches.
    poisoned: bool,
    stats: FrameStats,
    /// How batches are submitted.
    chooser: Chooser,
    /// The guest memory registered with `ring`, kept mapped while the registration lives.
    _mem: Arc<GuestMemory>,
}

#[derive(Clone, Copy, Debug, Default)]
struct FrameStats {
    submits: u64,
    single_writes: u64,
    fixed_writes: u64,
    vectored_writes: u64,
    rx_reads: u64,
    rx_eagain: u64,
}

impl std::fmt::Debug for FrameFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameFd")
            .field("name", &self.name)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl FrameFd {
    /// Wraps `fd` (non-blocking; one frame per read and per write) as the backend `name`, with
    /// the header handled as `header` and room for RX frames of up to `max_frame` bytes
    /// (header excluded). `batch` is the most frames per `send`. Guest memory is registered with
    /// the ring when the kernel allows it; the backend keeps `mem` for as long as the
    /// registration lives.
    pub fn new(
        name: &'static str,
        fd: File,
        mem: Arc<GuestMemory>,
        batch: usize,
        header: Header,
        max_frame: usize,
    ) -> io::Result<Self> {
        let ring = IoUring::new((batch as u32).next_power_of_two().max(8))?;
        ring.submitter().register_files(&[fd.as_raw_fd()])?;
        let regions = mem
            .host_regions()
            .map(|s| {
                mem.host_ptr(s).map(|p| libc::iovec {
                    iov_base: p.cast(),
                    iov_len: s.len,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(io::Error::other)?;
        // SAFETY: each iovec covers one region of the guest-memory mapping, which stays mapped
        // while any `Arc` of `mem` lives; the backend holds one in `self._mem`, and its `ring`
        // field (and with it the registration) is dropped before that field.
        let fixed_mem = match unsafe { ring.submitter().register_buffers(&regions) } {
            Ok(()) => regions
                .iter()
                .map(|v| (v.iov_base as usize, v.iov_len))
                .collect(),
            Err(_) => Vec::new(),
        };
        Ok(FrameFd {
            name,
            fd,
            skip: match header {
                Header::Passed => 0,
                Header::Stripped => VirtioNetHdr::SIZE,
            },
            ring,
            iovs: (0..batch).map(|_| sys::IoVecs::with_capacity(8)).collect(),
            rx_iov: sys::IoVecs::with_capacity(64),
            fixed_mem,
            rx_room: VirtioNetHdr::SIZE + max_frame,
            rx_ready: true,
            scratch: Vec::new(),
            poisoned: false,
            stats: FrameStats::default(),
            chooser: Chooser::new(),
            _mem: mem,
        })
    }

    /// Whether guest memory is registered as a fixed buffer.
    pub fn has_fixed_buffers(&self) -> bool {
        !self.fixed_mem.is_empty()
    }

    /// Sends one frame with one `writev(2)`.
    fn write_one(&mut self, mem: &GuestMemory, c: &Chain, out: &mut TxResult) {
        let spans = after(c.readable(), self.skip);
        match sys::writev_guest(self.fd.as_fd(), mem, spans, &mut self.iovs[0]) {
            Ok(w) if w == (c.readable_len() as usize).saturating_sub(self.skip) => {
                out.sent += 1;
                out.bytes += tx_frame_len(c) as u64;
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                out.drop_one(DropReason::BackendFull)
            }
            _ => out.drop_one(DropReason::BackendError),
        }
    }

    /// Sends a batch as one io_uring submission of one write per frame, and reaps them all.
    fn send_uring(
        &mut self,
        mem: &GuestMemory,
        chains: &[Chain],
        out: &mut TxResult,
    ) -> Result<(), BackendError> {
        let n = chains.len().min(self.iovs.len());
        // More chains than iovec slots (the worker never hands over more than a batch).
        out.dropped[DropReason::BackendError as usize] += (chains.len() - n) as u64;
        let mut submitted = 0usize;
        for (i, c) in chains.iter().enumerate().take(n) {
            let len = (c.readable_len() as usize).saturating_sub(self.skip);
            let mut iov = std::mem::take(&mut self.iovs[i]);
            let ok =
                c.readable().len() <= MAX_SEGMENTS && iov.fill(mem, after(c.readable(), self.skip));
            // Header and frame in one buffer: the registered region it is in.
            let fixed = match iov.as_slice() {
                [one] => fixed_index(&self.fixed_mem, one),
                _ => None,
            };
            let entry = match (ok, iov.as_slice(), fixed) {
                (false, _, _) => None,
                (true, [one], Some(buf)) => {
                    self.stats.fixed_writes += 1;
                    Some(
                        opcode::WriteFixed::new(
                            types::Fixed(0),
                            one.iov_base as *const u8,
                            len as u32,
                            buf,
                        )
                        .build()
                        .user_data(i as u64),
                    )
                }
                (true, v, _) => {
                    self.stats.vectored_writes += 1;
                    Some(
                        opcode::Writev::new(types::Fixed(0), v.as_ptr(), v.len() as u32)
                            .build()
                            .user_data(i as u64),
                    )
                }
            };
            self.iovs[i] = iov;
            match entry {
                Some(e) => {
                    if let Err(err) = self.push(e) {
                        // Never submitted, and the ring is not used again: this frame, those
                        // queued before it and those after it are all dropped.
                        self.poisoned = true;
                        out.dropped[DropReason::BackendError as usize] +=
                            (submitted + n - i) as u64;
                        return Err(err.into());
                    }
                    submitted += 1;
                }
                None => out.drop_one(DropReason::BackendError),
            }
        }
        if submitted == 0 {
            return Ok(());
        }
        self.stats.submits += 1;
        let mut reaped = 0;
        while reaped < submitted {
            match self.ring.submit_and_wait(submitted - reaped) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The ring failed with writes unreaped: count them as failed (they may or
                    // may not have reached the tap; the ring is not used again, so their iovecs
                    // stay untouched), and refuse further batches.
                    self.poisoned = true;
                    for _ in reaped..submitted {
                        out.drop_one(DropReason::BackendError);
                    }
                    return Ok(());
                }
            }
            for cqe in self.ring.completion() {
                reaped += 1;
                let i = cqe.user_data() as usize;
                let res = cqe.result();
                if res >= 0
                    && res as usize == (chains[i].readable_len() as usize).saturating_sub(self.skip)
                {
                    out.sent += 1;
                    out.bytes += tx_frame_len(&chains[i]) as u64;
                } else if res == -libc::EAGAIN || res == -libc::ENOBUFS || res == -libc::ENOMEM {
                    out.drop_one(DropReason::BackendFull);
                } else {
                    out.drop_one(DropReason::BackendError);
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, e: io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: the caller built `e` over iovecs/buffers that stay valid until its
        // completion is reaped, which `send` does before returning.
        let r = unsafe { self.ring.submission().push(&e) };
        r.map_err(|_| io::Error::other("submission queue full"))
    }
}

impl Backend for FrameFd {
    fn name(&self) -> &'static str {
        self.name
    }

    fn send(
        &mut self,
        mem: &GuestMemory,
        chains: &[Chain],
        out: &mut TxResult,
    ) -> Result<(), BackendError> {
        if self.poisoned {
            out.dropped[DropReason::BackendError as usize] += chains.len() as u64;
            return Err(BackendError::Io(io::Error::other(
                "io_uring failed earlier",
            )));
        }
        if chains.len() == 1 {
            // One frame: io_uring only adds its own overhead to a single writev (the request/
            // response case).
            self.stats.single_writes += 1;
            self.write_one(mem, &chains[0], out);
            return Ok(());
        }
        let way = self.chooser.pick();
        let t0 = Instant::now();
        let r = match way {
            Way::Uring => self.send_uring(mem, chains, out),
            Way::Writev => {
                for c in chains {
                    self.write_one(mem, c, out);
                }
                Ok(())
            }
        };
        self.chooser.record(way, t0.elapsed(), chains.len());
        r
    }

    fn rx_peek(&mut self) -> Option<usize> {
        self.rx_ready.then_some(self.rx_room)
    }

    fn rx_recv(&mut self, mem: &GuestMemory, iov: &[Span]) -> Result<usize, BackendError> {
        self.stats.rx_reads += 1;
        match sys::readv_guest(
            self.fd.as_fd(),
            mem,
            after(iov, self.skip),
            &mut self.rx_iov,
        ) {
            Ok(n) if self.skip == 0 => Ok(n),
            Ok(n) => {
                // The frame went in after the header's room: the header is the device's to
                // write, all zero (no offloads; `num_buffers` is set on commit).
                let zero = [0u8; VirtioNetHdr::SIZE];
                let mut left = &zero[..self.skip];
                for s in iov {
                    if left.is_empty() {
                        break;
                    }
                    let n = s.len.min(left.len());
                    mem.write_at(s.off, &left[..n])?;
                    left = &left[n..];
                }
                Ok(n + self.skip)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.stats.rx_eagain += 1;
                self.rx_ready = false;
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn rx_discard(&mut self) -> bool {
        // A frame too large for the guest: read it into a scratch buffer and drop it. `rx_peek`
        // only guessed there was a frame; EAGAIN means there was none, and nothing is counted.
        if self.scratch.len() < self.rx_room {
            self.scratch.resize(self.rx_room, 0);
        }
        match (&self.fd).read(&mut self.scratch) {
            Ok(n) => n > 0,
            Err(_) => {
                self.rx_ready = false;
                false
            }
        }
    }

    fn rx_wake(&mut self) {
        self.rx_ready = true;
    }

    fn rx_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("uring_submits", self.stats.submits),
            ("single_writev", self.stats.single_writes),
            ("fixed_writes", self.stats.fixed_writes),
            ("vectored_writes", self.stats.vectored_writes),
            ("rx_reads", self.stats.rx_reads),
            ("rx_eagain", self.stats.rx_eagain),
            ("batches_uring", self.chooser.batches[Way::Uring as usize]),
            ("batches_writev", self.chooser.batches[Way::Writev as usize]),
            ("submit_switches", self.chooser.switches),
            ("submit_writev_at_end", self.chooser.current as u64),
            (
                "guest_memory_fixed_buffer",
                u64::from(self.has_fixed_buffers()),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one window in which each batch of 64 frames costs `uring` or `writev` ns per frame.
    fn window(c: &mut Chooser, uring: u64, writev: u64) {
        for _ in 0..WINDOW {
            let way = c.pick();
            let per = match way {
                Way::Uring => uring,
                Way::Writev => writev,
            };
            c.record(way, Duration::from_nanos(per * 64), 64);
        }
    }

    #[test]
    fn the_chooser_takes_the_cheaper_way_and_keeps_probing() {
        let mut c = Chooser::new();
        // io_uring first; the end of each window probes writev.
        assert_eq!(c.pick(), Way::Uring);
        window(&mut c, 1000, 700);
        assert_eq!((c.current, c.switches), (Way::Writev, 1));
        assert_eq!(c.batches, [u64::from(WINDOW - PROBE), u64::from(PROBE)]);
        // Within 5 %: no flip-flopping on noise.
        window(&mut c, 690, 700);
        assert_eq!(c.current, Way::Writev);
        // The host changes: io_uring becomes clearly cheaper and takes over again.
        window(&mut c, 400, 700);
        assert_eq!((c.current, c.switches), (Way::Uring, 2));
        assert_eq!(c.batches.iter().sum::<u64>(), 3 * u64::from(WINDOW));
    }

    #[test]
    fn a_fixed_write_needs_the_whole_buffer_in_one_region() {
        let fixed = [(0x1000, 0x1000), (0x8000, 0x100)];
        let v = |base: usize, len: usize| libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        };
        assert_eq!(fixed_index(&fixed, &v(0x1000, 0x1000)), Some(0));
        assert_eq!(fixed_index(&fixed, &v(0x1fff, 1)), Some(0));
        assert_eq!(fixed_index(&fixed, &v(0x8010, 0xf0)), Some(1));
        for (base, len) in [
            (0x1fff, 2),
            (0x0fff, 2),
            (0x8000, 0x101),
            (0x4000, 1),
            (0, 0),
        ] {
            assert_eq!(
                fixed_index(&fixed, &v(base, len)),
                None,
                "{base:#x}+{len:#x}"
            );
        }
        assert_eq!(fixed_index(&[], &v(0x1000, 1)), None);
    }

    #[test]
    fn spans_after_a_header() {
        let s = |off, len| Span { off, len };
        let spans = [s(100, 12), s(200, 64)];
        assert_eq!(after(&spans, 12).collect::<Vec<_>>(), [s(200, 64)]);
        assert_eq!(after(&spans, 0).collect::<Vec<_>>(), spans);
        let split = [s(0, 4), s(10, 20)];
        assert_eq!(after(&split, 12).collect::<Vec<_>>(), [s(18, 12)]);
        let one = [s(0, 76)];
        assert_eq!(after(&one, 12).collect::<Vec<_>>(), [s(12, 64)]);
        assert_eq!(after(&[s(0, 12)], 12).count(), 0);
    }
}
