//! The AF_XDP backend: a vhost backend on an `AF_XDP` socket bound to one queue of a VF (a
//! veth end here), in copy mode. Its descriptor rings are shared with the kernel, the closest
//! thing userspace has to a VF's own rings.
//!
//! - TX: each frame of a batch is copied from guest memory, virtio-net header stripped (as
//!   vhost-net does for a raw socket: `vhost_hlen` = 12, `sock_hlen` = 0), into a free UMEM
//!   chunk; the batch's TX descriptors are published with one Release store of the producer
//!   index and one `sendto(fd, NULL, 0, MSG_DONTWAIT)` kicks the kernel, which in copy mode
//!   sends them during the call (a second kick only if the kernel's per-call budget is smaller
//!   than the batch, or it pushed back). Chunks come back on the completion ring, reaped
//!   before and after each batch. A frame with no free chunk or no TX slot is a
//!   `backend_full` drop; a frame larger than a chunk, empty, or unreadable is a
//!   `backend_error` drop.
//! - RX: the fill ring is kept stocked with one ring's worth of chunks; [`Backend::rx_peek`]
//!   looks at the RX ring (Acquire on its producer), [`Backend::rx_recv`] copies the frame
//!   into the guest's buffers behind a zero 12-byte header and puts the chunk back on the
//!   fill ring. Consumed RX slots and refilled chunks are published together, when the
//!   locally seen RX entries run out or every [`RX_PUBLISH`] frames, so the kernel sees one
//!   store of each index per batch. [`Backend::rx_fd`] is the socket: `poll` says readable
//!   when the RX ring is not empty, which is what the worker's io_uring poll waits for.
//!
//! # Where the set-up lives
//!
//! One [`sys::Xsk`] type in the engine owns the socket, the UMEM and the four ring mappings;
//! its constructor takes an `AF_XDP` socket fd that someone else opened. Only opening the
//! socket needs `CAP_NET_RAW` (and loading and attaching the XDP program that redirects the
//! queue's frames to it, `CAP_BPF`/`CAP_NET_ADMIN`): UMEM registration, ring sizing, `mmap`
//! and `bind` are allowed to whoever holds the fd. So the harness (as libvirt would) opens
//! the socket and loads the program, and the engine does the rest on the fd it is handed.
//! Keeping the mappings in the engine, in one owner, makes their lifetime structural: the
//! ring pointers and the UMEM are unmapped only when the backend is dropped, after the socket
//! is closed — no second object whose lifetime the harness would have to get right. The
//! ceiling `xdp_tx_<size>` in the harness uses the same type, with no backend around it.

pub mod sys;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use vring::net::VirtioNetHdr;
use vring::{GuestMemory, Span};

use super::{tx_frame_len, Backend, BackendError, TxResult};
use crate::metrics::DropReason;
use crate::virtq::Chain;
use sys::{Chunk, Xsk};

/// RX frames consumed before the RX and fill indices are published even if more are seen.
pub const RX_PUBLISH: u32 = 32;
/// `sendto` kicks per batch at most, when the kernel keeps pushing back (`EAGAIN`).
const KICK_TRIES: u32 = 16;

/// Where every UMEM chunk is; `tx_free + tx_in_flight + rx_out == total` unless one leaked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UmemAccount {
    /// Chunks in the UMEM.
    pub total: u32,
    /// TX chunks free in the backend.
    pub tx_free: u32,
    /// TX chunks posted and not completed yet (ring indices).
    pub tx_in_flight: u32,
    /// RX chunks posted to the fill ring and not taken back from the RX ring (ring indices).
    pub rx_out: u32,
    /// RX chunks taken back and waiting for room on the fill ring.
    pub rx_parked: u32,
}

impl UmemAccount {
    /// Whether every chunk is accounted for.
    pub fn balanced(&self) -> bool {
        self.tx_free + self.tx_in_flight + self.rx_out + self.rx_parked == self.total
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct XdpStats {
    kicks: u64,
    kick_eagain: u64,
    kick_ebusy: u64,
    kick_errors: u64,
    tx_no_chunk: u64,
    tx_ring_full: u64,
    completions: u64,
    bad_completions: u64,
    rx_frames: u64,
    rx_bad_descs: u64,
    rx_publishes: u64,
    fill_parked: u64,
}

/// The AF_XDP backend. See the module documentation.
#[derive(Debug)]
pub struct AfXdp {
    xsk: Xsk,
    /// TX chunks we own, ready for frames.
    free: Vec<Chunk>,
    /// RX chunks taken from the RX ring that found no room on the fill ring: the kernel
    /// publishes a received frame before it frees the fill slot the chunk came from, so a
    /// full fill ring can be momentarily short of room. They go back at the next publish.
    parked: Vec<Chunk>,
    stats: XdpStats,
}

impl AfXdp {
    /// The backend on `xsk` (bound, see [`Xsk::new`]) with `chunks`, every chunk of its UMEM:
    /// one ring's worth stocks the fill ring, the rest are for TX.
    pub fn new(mut xsk: Xsk, mut chunks: Vec<Chunk>) -> io::Result<Self> {
        let rx = xsk.ring_size() as usize;
        if chunks.len() != xsk.chunks() as usize || chunks.len() < 2 * rx {
            return Err(io::Error::other(format!(
                "{} chunks handed over, the UMEM has {} and needs 2 x {rx}",
                chunks.len(),
                xsk.chunks()
            )));
        }
        for c in chunks.drain(chunks.len() - rx..) {
            if xsk.fill_put(c).is_err() {
                return Err(io::Error::other("fill ring smaller than its size"));
            }
        }
        xsk.fill_publish();
        Ok(AfXdp {
            xsk,
            free: chunks,
            parked: Vec::with_capacity(rx),
            stats: XdpStats::default(),
        })
    }

    /// The socket.
    pub fn xsk(&self) -> &Xsk {
        &self.xsk
    }

    /// Largest frame (header excluded) RX can deliver and TX can send: a chunk less the
    /// kernel's `XDP_PACKET_HEADROOM` (256) it keeps in front of received frames.
    pub fn max_frame(&self) -> usize {
        self.xsk.chunk_size() as usize - 256
    }

    /// Takes back the chunks of completed TX descriptors.
    pub fn reclaim(&mut self) {
        let mut bad = 0;
        while let Some(c) = self.xsk.comp_take(&mut bad) {
            self.free.push(c);
            self.stats.completions += 1;
        }
        self.stats.bad_completions += bad;
        self.xsk.comp_release();
    }

    /// Where every chunk is, after reaping completions.
    pub fn account(&mut self) -> UmemAccount {
        self.reclaim();
        UmemAccount {
            total: self.xsk.chunks(),
            tx_free: self.free.len() as u32,
            tx_in_flight: self.xsk.tx_chunks_out(),
            rx_out: self.xsk.rx_chunks_out(),
            rx_parked: self.parked.len() as u32,
        }
    }

    /// Copies `c`'s frame (header stripped) into a free chunk and posts it (unpublished).
    fn post(&mut self, mem: &GuestMemory, c: &Chain, out: &mut TxResult) {
        let len = tx_frame_len(c) as usize;
        if len == 0 || len > self.max_frame() {
            out.drop_one(DropReason::BackendError);
            return;
        }
        if self.xsk.tx_free(1) == 0 {
            self.stats.tx_ring_full += 1;
            out.drop_one(DropReason::BackendFull);
            return;
        }
        let Some(mut chunk) = self.free.pop() else {
            self.stats.tx_no_chunk += 1;
            out.drop_one(DropReason::BackendFull);
            return;
        };
        let copied = copy_frame(mem, c.readable(), self.xsk.chunk_mut(&mut chunk));
        if copied != Some(len) {
            self.free.push(chunk);
            out.drop_one(DropReason::BackendError);
            return;
        }
        match self.xsk.tx_put(chunk, len as u32) {
            Ok(()) => {
                out.sent += 1;
                out.bytes += len as u64;
            }
            Err(chunk) => {
                self.free.push(chunk);
                out.drop_one(DropReason::BackendFull);
            }
        }
    }

    /// Kicks until the kernel has consumed every published TX descriptor, or stops making
    /// progress.
    fn kick(&mut self, out: &mut TxResult) -> Result<(), BackendError> {
        for _ in 0..KICK_TRIES {
            if self.xsk.tx_outstanding() == 0 {
                return Ok(());
            }
            self.stats.kicks += 1;
            match self.xsk.kick() {
                Ok(()) => {}
                // The kernel's per-call budget ran out, or the device's queue was busy: the
                // rest stays in the ring for the next kick.
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => self.stats.kick_eagain += 1,
                // `NET_XMIT_DROP`: the kernel consumed one descriptor (and completes its
                // chunk) without sending it. It was counted as sent when posted, in this
                // batch unless an earlier batch left descriptors behind.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.stats.kick_ebusy += 1;
                    if out.sent > 0 {
                        out.sent -= 1;
                        out.drop_one(DropReason::BackendFull);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.stats.kick_eagain += 1,
                Err(e) => {
                    self.stats.kick_errors += 1;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Publishes consumed RX slots and the chunks put back on the fill ring.
    fn rx_publish(&mut self) {
        if self.xsk.rx_unreleased() > 0 || self.xsk.fill_unpublished() > 0 {
            self.stats.rx_publishes += 1;
            self.xsk.rx_release();
            // Parked chunks first: the kernel may have freed fill slots since.
            while let Some(c) = self.parked.pop() {
                if let Err(c) = self.xsk.fill_put(c) {
                    self.parked.push(c);
                    break;
                }
            }
            self.xsk.fill_publish();
        }
    }

    /// Puts a chunk taken from the RX ring back on the fill ring, or parks it until there is
    /// room (see the `parked` field).
    fn refill(&mut self, chunk: Chunk) {
        if let Err(c) = self.xsk.fill_put(chunk) {
            self.stats.fill_parked += 1;
            self.parked.push(c);
        }
        if self.xsk.rx_unreleased() >= RX_PUBLISH {
            self.rx_publish();
        }
    }
}

impl AsFd for AfXdp {
    /// The socket (for an XSKMAP entry, or to poll).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.xsk.as_fd()
    }
}

/// Copies the frame of a chain's readable `spans` (after the 12-byte header) into `dst`;
/// the bytes copied, or `None` if it does not fit or guest memory fails.
fn copy_frame(mem: &GuestMemory, spans: &[Span], dst: &mut [u8]) -> Option<usize> {
    let mut skip = VirtioNetHdr::SIZE;
    let mut at = 0usize;
    for s in spans {
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let (off, len) = (s.off + skip, s.len - skip);
        skip = 0;
        let d = dst.get_mut(at..at.checked_add(len)?)?;
        mem.read_at(off, d).ok()?;
        at += len;
    }
    Some(at)
}

impl Backend for AfXdp {
    fn name(&self) -> &'static str {
        "af_xdp"
    }

    fn send(
        &mut self,
        mem: &GuestMemory,
        chains: &[Chain],
        out: &mut TxResult,
    ) -> Result<(), BackendError> {
        self.reclaim();
        for c in chains {
            self.post(mem, c, out);
        }
        self.xsk.tx_publish();
        let r = self.kick(out);
        self.reclaim();
        r
    }

    fn rx_peek(&mut self) -> Option<usize> {
        match self.xsk.rx_peek() {
            Some(d) => Some(VirtioNetHdr::SIZE + d.len as usize),
            None => {
                // Nothing more seen: hand back what was consumed before looking again (and
                // before the worker sleeps on the socket).
                self.rx_publish();
                self.xsk
                    .rx_peek()
                    .map(|d| VirtioNetHdr::SIZE + d.len as usize)
            }
        }
    }

    fn rx_recv(&mut self, mem: &GuestMemory, iov: &[Span]) -> Result<usize, BackendError> {
        let (chunk, off, len) = match self.xsk.rx_take() {
            None => return Ok(0),
            Some(Err(_)) => {
                self.stats.rx_bad_descs += 1;
                return Ok(0);
            }
            Some(Ok(t)) => t,
        };
        let r = (|| {
            let frame = self
                .xsk
                .chunk_bytes(&chunk, off, len)
                .ok_or_else(|| io::Error::other("rx descriptor outside its chunk"))?;
            let zero = [0u8; VirtioNetHdr::SIZE];
            let mut src: [&[u8]; 2] = [&zero, frame];
            let mut written = 0usize;
            for s in iov {
                let mut room = s.len;
                let mut at = s.off;
                for part in src.iter_mut() {
                    if room == 0 {
                        break;
                    }
                    let n = room.min(part.len());
                    if n == 0 {
                        continue;
                    }
                    mem.write_at(at, &part[..n])?;
                    *part = &part[n..];
                    at += n;
                    room -= n;
                    written += n;
                }
            }
            if written != VirtioNetHdr::SIZE + len {
                return Err(BackendError::Io(io::Error::other(
                    "guest buffers smaller than the frame peeked",
                )));
            }
            Ok(written)
        })();
        self.stats.rx_frames += 1;
        self.refill(chunk);
        r
    }

    fn rx_discard(&mut self) -> bool {
        match self.xsk.rx_take() {
            Some(Ok((chunk, _, _))) => {
                self.refill(chunk);
                true
            }
            Some(Err(_)) => {
                self.stats.rx_bad_descs += 1;
                true
            }
            None => false,
        }
    }

    fn rx_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.xsk.as_fd())
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        let k = self.xsk.statistics().unwrap_or_default();
        let s = &self.stats;
        vec![
            ("xdp_kicks", s.kicks),
            ("xdp_fill_parked", s.fill_parked),
            ("xdp_kick_eagain", s.kick_eagain),
            ("xdp_kick_ebusy", s.kick_ebusy),
            ("xdp_kick_errors", s.kick_errors),
            ("xdp_tx_budget", u64::from(self.xsk.tx_budget())),
            ("xdp_tx_no_chunk", s.tx_no_chunk),
            ("xdp_tx_ring_full", s.tx_ring_full),
            ("xdp_completions", s.completions),
            ("xdp_bad_completions", s.bad_completions),
            ("xdp_rx_frames", s.rx_frames),
            ("xdp_rx_bad_descs", s.rx_bad_descs),
            ("xdp_rx_publishes", s.rx_publishes),
            ("xdp_umem_total", u64::from(self.xsk.chunks())),
            ("xdp_umem_tx_free", self.free.len() as u64),
            ("xdp_umem_tx_in_flight", u64::from(self.xsk.tx_chunks_out())),
            ("xdp_umem_rx_out", u64::from(self.xsk.rx_chunks_out())),
            ("xdp_umem_rx_parked", self.parked.len() as u64),
            ("xdp_k_rx_dropped", k.rx_dropped),
            ("xdp_k_rx_ring_full", k.rx_ring_full),
            ("xdp_k_rx_fill_empty", k.rx_fill_ring_empty_descs),
            ("xdp_k_tx_invalid", k.tx_invalid_descs),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vring::RegionSpec;

    #[test]
    fn copy_frame_strips_a_split_header() {
        let mem = GuestMemory::new(&[RegionSpec { gpa: 0, len: 4096 }]).expect("mem");
        let bytes: Vec<u8> = (0..100u8).collect();
        mem.write_at(0, &bytes).expect("write");
        let s = |off, len| Span { off, len };
        let mut dst = [0u8; 128];
        // Header split 4 + 8, frame in two pieces.
        let n = copy_frame(&mem, &[s(0, 4), s(4, 20), s(40, 10)], &mut dst);
        assert_eq!(n, Some(22));
        assert_eq!(&dst[..12], &bytes[12..24]);
        assert_eq!(&dst[12..22], &bytes[40..50]);
        // Does not fit.
        assert_eq!(
            copy_frame(&mem, &[s(0, 12), s(12, 80)], &mut dst[..40]),
            None
        );
    }
}
