//! The null backend: no kernel I/O, the floor the engine itself costs.
//!
//! - `Sink`: TX frames are copied out of guest memory into a private buffer (the copy tun
//!   does) and checked: sequence numbers must arrive in order exactly once, and with
//!   `verify_bytes` every byte is compared with the test pattern ([`vring::frame`]).
//! - `Source`: RX frames of a fixed size are generated, numbered, and written into the guest's
//!   buffers with a valid virtio-net header.
//! - `Reflect`: TX frames are queued and handed back on RX unchanged (request/response).

use vring::frame;
use vring::net::VirtioNetHdr;
use vring::{GuestMemory, Span};

use super::{Backend, BackendError, TxResult};
use crate::metrics::DropReason;
use crate::virtq::chain::write_iov;
use crate::virtq::Chain;

/// The largest frame the null backend takes (tun's limit: 64 KiB plus a link header).
pub const MAX_FRAME: usize = 65_536 + 14;

/// The header of every frame `Source` and `Reflect` deliver, as bytes: no offloads, and
/// `num_buffers` (the last two, little-endian) 1.
const RX_HDR: [u8; VirtioNetHdr::SIZE] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// What the null backend does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NullMode {
    /// Consume TX frames.
    Sink,
    /// Produce RX frames of `frame_len` bytes.
    Source {
        /// Frame length, virtio-net header excluded.
        frame_len: usize,
    },
    /// Return TX frames on RX, holding at most `capacity` of them.
    Reflect {
        /// Frames held before TX frames are dropped as `BackendFull`.
        capacity: usize,
    },
}

/// Checks of the frames the guest sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCheck {
    /// Test frames received in order.
    pub in_order: u64,
    /// Test frames whose sequence number was not the next expected one (lost, duplicated or
    /// reordered before this point).
    pub out_of_order: u64,
    /// Frames that were not test frames (not checked).
    pub foreign: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct NullBackend {
    mode: NullMode,
    verify_bytes: bool,
    sink: Vec<u8>,
    next_seq: u64,
    /// `Source`: header + frame, restamped per frame.
    template: Vec<u8>,
    /// `Reflect`: a ring of `capacity` buffers, reused lap after lap, holding the queued
    /// frames in order, each behind the RX header it will be delivered with ([`RX_HDR`]).
    slots: Vec<Vec<u8>>,
    /// The oldest held frame's slot, and how many are held.
    head: usize,
    held: usize,
    /// TX checks so far.
    pub check: SinkCheck,
}

impl NullBackend {
    /// A null backend in `mode`; `verify_bytes` compares every TX byte (costs a pass over it).
    pub fn new(mode: NullMode, verify_bytes: bool) -> Self {
        let mut template = Vec::new();
        if let NullMode::Source { frame_len } = mode {
            template = vec![0u8; VirtioNetHdr::SIZE + frame_len.max(frame::MIN_FRAME)];
            template[..VirtioNetHdr::SIZE].copy_from_slice(&RX_HDR);
            frame::fill(&mut template[VirtioNetHdr::SIZE..], 0, 0);
        }
        let cap = match mode {
            NullMode::Reflect { capacity } => capacity,
            _ => 0,
        };
        NullBackend {
            mode,
            verify_bytes,
            sink: vec![0u8; VirtioNetHdr::SIZE + MAX_FRAME],
            next_seq: 0,
            template,
            slots: vec![Vec::new(); cap],
            head: 0,
            held: 0,
            check: SinkCheck::default(),
        }
    }

    /// Lets go of the oldest held frame (`Reflect`); its slot's buffer is kept for reuse.
    fn pop_held(&mut self) {
        self.held -= 1;
        self.head += 1;
        if self.head == self.slots.len() {
            self.head = 0;
        }
    }
}

/// Checks one test frame the guest sent: order and, with `verify`, every byte. False if it is
/// corrupt (counted as a drop in `out`).
#[inline]
fn check_frame(
    check: &mut SinkCheck,
    next_seq: &mut u64,
    verify: bool,
    f: &[u8],
    out: &mut TxResult,
) -> bool {
    match frame::seq(f) {
        None => check.foreign += 1,
        Some(s) => {
            if verify && !frame::verify(f) {
                out.drop_one(DropReason::Corrupt);
                return false;
            }
            if s == *next_seq {
                check.in_order += 1;
            } else {
                check.out_of_order += 1;
            }
            *next_seq = s.wrapping_add(1);
        }
    }
    true
}

impl Backend for NullBackend {
    fn name(&self) -> &'static str {
        "null"
    }

    fn send(
        &mut self,
        mem: &GuestMemory,
        chains: &[Chain],
        out: &mut TxResult,
    ) -> Result<(), BackendError> {
        for c in chains {
            // Header and frame: what tun copies in.
            let total = c.readable_len() as usize;
            let len = total.saturating_sub(VirtioNetHdr::SIZE);
            if total > self.sink.len() {
                out.drop_one(DropReason::BackendError);
                continue;
            }
            match self.mode {
                NullMode::Reflect { capacity } => {
                    if self.held >= capacity {
                        out.drop_one(DropReason::BackendFull);
                        continue;
                    }
                    // Kept as the guest will receive it: the RX header, then the frame. One
                    // copy in (the guest's header is overwritten), one copy out on RX.
                    let mut i = self.head + self.held;
                    if i >= capacity {
                        i -= capacity;
                    }
                    let buf = &mut self.slots[i];
                    buf.resize(total, 0);
                    c.read_into(mem, 0, buf);
                    buf[..VirtioNetHdr::SIZE].copy_from_slice(&RX_HDR);
                    self.held += 1;
                }
                _ => {
                    // The copy a tap would make, header included, into a private buffer; the
                    // frame is checked there, out of the guest's reach.
                    let n = c.read_into(mem, 0, &mut self.sink[..total]);
                    let f = &self.sink[VirtioNetHdr::SIZE.min(n)..n];
                    let verify = self.verify_bytes;
                    if !check_frame(&mut self.check, &mut self.next_seq, verify, f, out) {
                        continue;
                    }
                }
            }
            out.sent += 1;
            out.bytes += len as u64;
        }
        Ok(())
    }

    fn rx_peek(&mut self) -> Option<usize> {
        match self.mode {
            NullMode::Sink => None,
            NullMode::Source { .. } => Some(self.template.len()),
            NullMode::Reflect { .. } => (self.held > 0).then(|| self.slots[self.head].len()),
        }
    }

    fn rx_recv(&mut self, mem: &GuestMemory, iov: &[Span]) -> Result<usize, BackendError> {
        match self.mode {
            NullMode::Sink => Ok(0),
            NullMode::Source { .. } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                frame::stamp(&mut self.template[VirtioNetHdr::SIZE..], seq, 0);
                Ok(write_iov(mem, iov, 0, &self.template))
            }
            NullMode::Reflect { .. } => {
                if self.held == 0 {
                    return Ok(0);
                }
                let n = write_iov(mem, iov, 0, &self.slots[self.head]);
                self.pop_held();
                Ok(n)
            }
        }
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("tx_in_order", self.check.in_order),
            ("tx_out_of_order", self.check.out_of_order),
            ("tx_foreign", self.check.foreign),
        ]
    }

    fn rx_discard(&mut self) -> bool {
        match self.mode {
            NullMode::Source { .. } => {
                self.next_seq += 1;
                true
            }
            NullMode::Reflect { .. } => {
                if self.held == 0 {
                    return false;
                }
                self.pop_held();
                true
            }
            NullMode::Sink => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_header_is_one_buffer_and_no_offloads() {
        let want = VirtioNetHdr {
            num_buffers: 1,
            ..Default::default()
        };
        assert_eq!(RX_HDR, want.to_bytes());
    }
}
