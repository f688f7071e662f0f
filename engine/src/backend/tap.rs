//! The tap backend (`-net tap,vhost=on`): the worker moves frames between the rings and a tun/tap
//! fd opened by the harness with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte vnet header,
//! so a chain's readable part (virtio-net header, then frame) is exactly what the tap takes.
//!
//! - TX: a batch of up to 64 frames becomes 64 io_uring writes straight from guest memory (no
//!   bounce copy) on a registered (fixed) file, one `io_uring_enter` for the batch. A frame in
//!   one buffer uses `WRITE_FIXED` on the guest memory registered as a fixed buffer (no page
//!   pinning per write); a scattered frame uses `WRITEV`. A batch of one frame (request/
//!   response traffic) is a plain `writev`: there the ring is pure overhead.
//! - RX: the worker gathers guest buffers for the largest frame the tap can deliver and the
//!   frame is `readv`-ed straight into them (vhost-net's `recvmsg` into the guest's iov). The
//!   fd is non-blocking: `EAGAIN` means "no frame", and the worker then waits for readability
//!   with an io_uring poll.
//!
//! Like Firecracker's net device (`build_tap_offload_features`) and QEMU, the device sets the
//! tap's offloads itself from the negotiated features ([`offload_flags`], [`apply_offloads`]):
//! what the guest accepts on receive is what the tap may hand over.
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

use io_uring::{opcode, types, IoUring};
use vring::net::{bit, Features, VirtioNetHdr};
use vring::{GuestMemory, Span};

use super::{tx_frame_len, Backend, BackendError, TxResult};
use crate::metrics::DropReason;

use crate::sys;
use crate::virtq::chain::MAX_SEGMENTS;
use crate::virtq::Chain;

/// Largest frame a tap delivers without GSO: MTU 1500 + Ethernet header.
pub const MAX_FRAME_NO_GSO: usize = 1514;
/// Largest frame with GSO offloads on (64 KiB plus headers).
pub const MAX_FRAME_GSO: usize = 65_550;

/// `TUNSETOFFLOAD` flags for a negotiated feature set: the offloads the guest accepts on
/// receive are the ones the tap may hand over (QEMU's `virtio_net_apply_guest_offloads`).
/// Host-side offloads (the guest sending partial checksums or GSO frames) need no tap flag:
/// the tap takes `NEEDS_CSUM` and GSO headers from writers whatever its flags.
pub fn offload_flags(f: Features) -> u32 {
    let mut o = 0;
    if f.has(bit::GUEST_CSUM) {
        o |= libc::TUN_F_CSUM;
    }
    if f.has(bit::GUEST_TSO4) {
        o |= libc::TUN_F_TSO4;
    }
    if f.has(bit::GUEST_TSO6) {
        o |= libc::TUN_F_TSO6;
    }
    o
}

/// Whether the tap may deliver GSO frames (up to 64 KiB) for this feature set.
pub fn guest_gso(f: Features) -> bool {
    f.has(bit::GUEST_TSO4) || f.has(bit::GUEST_TSO6)
}

/// Sets the tap's offloads for the negotiated features ([`offload_flags`]). A feature set that
/// asks for none makes no call: a tap starts with none, and a datagram socket standing in for
/// a tap (in tests without privileges) takes none.
pub fn apply_offloads(tap: &File, f: Features) -> io::Result<()> {
    match offload_flags(f) {
        0 => Ok(()),
        flags => sys::tun_set_offload(tap.as_fd(), flags),
    }
}

/// The tap backend. See the module documentation.
pub struct TapBackend {
    tap: File,
    /// Dropped before `mem`: the ring holds guest memory registered as a fixed buffer.
    ring: IoUring,
    /// One iovec array per batch slot, reused; stable while the batch is in flight.
    iovs: Vec<sys::IoVecs>,
    rx_iov: sys::IoVecs,
    /// Guest memory is registered as fixed buffer 0: its host address range.
    fixed_mem: Option<(usize, usize)>,
    /// Largest frame RX must make room for, virtio-net header included.
    rx_room: usize,
    /// The tap may have a frame (cleared on `EAGAIN`, set by [`Backend::rx_wake`]).
    rx_ready: bool,
    /// Where discarded frames are read to (allocated on first use).
    scratch: Vec<u8>,
    /// A ring error left writes unaccounted: refuse further batches.
    poisoned: bool,
    stats: TapStats,
    /// The guest memory registered with `ring`, kept mapped while the registration lives.
    _mem: Arc<GuestMemory>,
}

#[derive(Clone, Copy, Debug, Default)]
struct TapStats {
    submits: u64,
    single_writes: u64,
    fixed_writes: u64,
    vectored_writes: u64,
    rx_reads: u64,
    rx_eagain: u64,
}

impl std::fmt::Debug for TapBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapBackend")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl TapBackend {
    /// Wraps a tap fd (non-blocking, `IFF_VNET_HDR`, vnet header size 12) for a device with the
    /// negotiated `features`, and sets the tap's offloads from them. `batch` is the most frames
    /// per `send`. Guest memory is registered with the ring when the kernel allows it; the
    /// backend keeps `mem` for as long as the registration lives.
    pub fn new(
        tap: File,
        mem: Arc<GuestMemory>,
        batch: usize,
        features: Features,
    ) -> io::Result<Self> {
        apply_offloads(&tap, features)?;
        let ring = IoUring::new((batch as u32).next_power_of_two().max(8))?;
        ring.submitter().register_files(&[tap.as_raw_fd()])?;
        let base = mem
            .host_ptr(Span {
                off: 0,
                len: mem.mapped_len(),
            })
            .map_err(io::Error::other)?;
        let region = libc::iovec {
            iov_base: base.cast(),
            iov_len: mem.mapped_len(),
        };
        // SAFETY: the iovec covers exactly the guest-memory mapping, which stays mapped while
        // any `Arc` of `mem` lives; the backend holds one in `self.mem`, and its `ring` field
        // (and with it the registration) is dropped before that field.
        let fixed_mem = match unsafe { ring.submitter().register_buffers(&[region]) } {
            Ok(()) => Some((base as usize, mem.mapped_len())),
            Err(_) => None,
        };
        Ok(TapBackend {
            tap,
            ring,
            iovs: (0..batch).map(|_| sys::IoVecs::with_capacity(8)).collect(),
            rx_iov: sys::IoVecs::with_capacity(64),
            fixed_mem,
            rx_room: VirtioNetHdr::SIZE
                + if guest_gso(features) {
                    MAX_FRAME_GSO
                } else {
                    MAX_FRAME_NO_GSO
                },
            rx_ready: true,
            scratch: Vec::new(),
            poisoned: false,
            stats: TapStats::default(),
            _mem: mem,
        })
    }

    /// Whether guest memory is registered as a fixed buffer.
    pub fn has_fixed_buffers(&self) -> bool {
        self.fixed_mem.is_some()
    }

    fn push(&mut self, e: io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: the caller built `e` over iovecs/buffers that stay valid until its
        // completion is reaped, which `send` does before returning.
        let r = unsafe { self.ring.submission().push(&e) };
        r.map_err(|_| io::Error::other("submission queue full"))
    }
}

impl Backend for TapBackend {
    fn name(&self) -> &'static str {
        "tap"
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
                "tap io_uring failed earlier",
            )));
        }
        if chains.len() == 1 {
            // One frame: io_uring only adds its own overhead to a single writev (the request/
            // response case). Batches go through the ring.
            self.stats.single_writes += 1;
            let c = &chains[0];
            match sys::writev_guest(self.tap.as_fd(), mem, c.readable(), &mut self.iovs[0]) {
                Ok(w) if w == c.readable_len() as usize => {
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
            return Ok(());
        }
        let n = chains.len().min(self.iovs.len());
        // More chains than iovec slots (the worker never hands over more than a batch).
        out.dropped[DropReason::BackendError as usize] += (chains.len() - n) as u64;
        let mut submitted = 0usize;
        for (i, c) in chains.iter().enumerate().take(n) {
            let len = c.readable_len() as usize;
            let mut iov = std::mem::take(&mut self.iovs[i]);
            let ok =
                c.readable().len() <= MAX_SEGMENTS && iov.fill(mem, c.readable().iter().copied());
            let entry = match (ok, iov.as_slice(), self.fixed_mem) {
                (false, _, _) => None,
                // Header and frame in one buffer, inside the registered guest memory.
                (true, [one], Some((base, size)))
                    if (one.iov_base as usize) >= base
                        && (one.iov_base as usize) + one.iov_len <= base + size =>
                {
                    self.stats.fixed_writes += 1;
                    Some(
                        opcode::WriteFixed::new(
                            types::Fixed(0),
                            one.iov_base as *const u8,
                            len as u32,
                            0,
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
                if res >= 0 && res as u32 == chains[i].readable_len() {
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

    fn rx_peek(&mut self) -> Option<usize> {
        self.rx_ready.then_some(self.rx_room)
    }

    fn rx_recv(&mut self, mem: &GuestMemory, iov: &[Span]) -> Result<usize, BackendError> {
        self.stats.rx_reads += 1;
        match sys::readv_guest(self.tap.as_fd(), mem, iov, &mut self.rx_iov) {
            Ok(n) => Ok(n),
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
        match (&self.tap).read(&mut self.scratch) {
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
        Some(self.tap.as_fd())
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("tap_uring_submits", self.stats.submits),
            ("tap_single_writev", self.stats.single_writes),
            ("tap_fixed_writes", self.stats.fixed_writes),
            ("tap_vectored_writes", self.stats.vectored_writes),
            ("tap_rx_reads", self.stats.rx_reads),
            ("tap_rx_eagain", self.stats.rx_eagain),
            (
                "tap_guest_memory_fixed_buffer",
                u64::from(self.has_fixed_buffers()),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_offloads_follow_the_guest_features() {
        let v1 = Features::of(&[bit::VERSION_1]);
        assert_eq!(offload_flags(v1), 0);
        let f = v1.with(bit::GUEST_CSUM, true).with(bit::GUEST_TSO4, true);
        assert_eq!(offload_flags(f), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
        assert!(guest_gso(f) && !guest_gso(v1));
        assert!(guest_gso(v1.with(bit::GUEST_TSO6, true)));
        // Host-side offloads (the guest sending partial checksums) need no tap flag.
        assert_eq!(offload_flags(v1.with(bit::CSUM, true)), 0);
    }
}
