//! The guest: the input's relative values resolved against the memory layout, and its writes
//! applied to guest memory the way a driver (or a hostile guest) would.

use std::sync::atomic::Ordering;

use vring::layout::{self, avail, used, Descriptor, QueueAddrs};
use vring::GuestMemory;

use super::input::{
    Addr, AvailIdx, Buf, DescInit, Flags, Frame, GuestWrite, Head, Len, Next, PartAddr, RingPart,
};
use super::{A_END, B_END, MAX_OPS, REGION_A, REGION_B};

/// What the input's relative values are resolved against.
pub(super) struct Ctx {
    pub(super) size: u16,
    /// First arena address in region A.
    pub(super) arena: u64,
    pub(super) qa: QueueAddrs,
    /// Host offsets of the ring parts (valid once `DeviceQueue::new` accepted them).
    pub(super) avail_off: usize,
    pub(super) used_off: usize,
}

impl Addr {
    pub(super) fn gpa(self, cx: &Ctx) -> u64 {
        match self {
            Addr::Arena(o) => cx.arena + o as u64 % (A_END - cx.arena),
            Addr::B(o) => REGION_B.gpa + o as u64 % REGION_B.len,
            Addr::A(o) => REGION_A.gpa + o as u64 % REGION_A.len,
            Addr::RegionEnd { in_b, back } => {
                let end = if in_b { B_END } else { A_END };
                end - back as u64
            }
            Addr::Hole(o) => A_END + o as u64 % (REGION_B.gpa - A_END),
            Addr::Raw(a) => a,
        }
    }
}

impl Len {
    pub(super) fn get(self) -> u32 {
        match self {
            Len::Small(n) => n as u32,
            Len::Mid(n) => n as u32,
            Len::Raw(n) => n,
        }
    }
}

impl DescInit {
    /// The 16 bytes, with `next` indices resolved against a table of `entries`.
    pub(super) fn bytes(self, cx: &Ctx, entries: u16) -> [u8; 16] {
        match self {
            DescInit::Raw(b) => b,
            DescInit::Structured(d) => Descriptor {
                addr: d.addr.gpa(cx),
                len: d.len.get(),
                flags: match d.flags {
                    Flags::Known(f) => f as u16 & 7,
                    Flags::Raw(f) => f,
                },
                next: match d.next {
                    Next::Idx(i) => i % entries.max(1),
                    Next::Raw(i) => i,
                },
            }
            .to_bytes(),
        }
    }
}

impl Head {
    pub(super) fn get(self, size: u16) -> u16 {
        match self {
            Head::Idx(i) => i % size,
            Head::Raw(h) => h,
        }
    }
}

impl PartAddr {
    pub(super) fn gpa(self) -> u64 {
        match self {
            PartAddr::A(o) => REGION_A.gpa + (o as u64 * 4) % REGION_A.len,
            PartAddr::B(o) => REGION_B.gpa + (o as u64 * 4) % REGION_B.len,
            PartAddr::Raw(a) => a,
        }
    }
}

impl Frame {
    pub(super) fn bytes(&self) -> Vec<u8> {
        match self {
            Frame::Bytes(b) => b.clone(),
            Frame::Filled { len, byte } => vec![*byte; *len as usize],
        }
    }
}

pub(super) struct Guest<'a> {
    pub(super) mem: &'a GuestMemory,
    pub(super) cx: Ctx,
    /// The driver's own `avail.idx`.
    pub(super) idx: u16,
}

impl Guest<'_> {
    /// Every write may hit a hole: a hostile guest writes where it likes, and a failed write is
    /// simply not done.
    pub(super) fn apply(&mut self, w: &GuestWrite, dev_next_avail: u16) {
        let cx = &self.cx;
        let size = cx.size;
        let mem = self.mem;
        match w {
            GuestWrite::Desc { i, d } => {
                let i = i % size;
                let _ = mem.write_gpa(
                    cx.qa.desc + i as u64 * Descriptor::SIZE as u64,
                    &d.bytes(cx, size),
                );
            }
            GuestWrite::PostChain { at, bufs, indirect } => {
                let head = at % size;
                let desc = |addr: u64, len: u32, flags: u16, next: u16| {
                    Descriptor {
                        addr,
                        len,
                        flags,
                        next,
                    }
                    .to_bytes()
                };
                let link = |i: usize, n: usize, b: &Buf, next: u16| {
                    let mut flags = 0;
                    if b.write {
                        flags |= layout::VIRTQ_DESC_F_WRITE;
                    }
                    if i + 1 < n {
                        flags |= layout::VIRTQ_DESC_F_NEXT;
                    }
                    desc(b.addr.gpa(cx), b.len.get(), flags, next)
                };
                match indirect {
                    None => {
                        let n = bufs.len().min(size as usize);
                        for (i, b) in bufs.iter().take(n).enumerate() {
                            let idx = head.wrapping_add(i as u16) % size;
                            let next = head.wrapping_add(i as u16 + 1) % size;
                            let _ = mem.write_gpa(
                                cx.qa.desc + idx as u64 * Descriptor::SIZE as u64,
                                &link(i, n, b, next),
                            );
                        }
                    }
                    Some(table) => {
                        let n = bufs.len().min(MAX_OPS);
                        let base = table.gpa(cx);
                        for (i, b) in bufs.iter().take(n).enumerate() {
                            let _ = mem.write_gpa(
                                base.wrapping_add(i as u64 * Descriptor::SIZE as u64),
                                &link(i, n, b, i as u16 + 1),
                            );
                        }
                        let _ = mem.write_gpa(
                            cx.qa.desc + head as u64 * Descriptor::SIZE as u64,
                            &desc(
                                base,
                                (n * Descriptor::SIZE) as u32,
                                layout::VIRTQ_DESC_F_INDIRECT,
                                0,
                            ),
                        );
                    }
                }
                let slot = cx.qa.avail + avail::ring(self.idx & (size - 1));
                let _ = mem.write_gpa(slot, &head.to_le_bytes());
                self.idx = self.idx.wrapping_add(1);
                self.store_idx(self.idx);
            }
            GuestWrite::PostIndirectRun {
                at,
                table,
                count,
                buf,
            } => {
                let head = at % size;
                let n = *count as u64 % 4096;
                let base = table.gpa(cx);
                let mut flags = layout::VIRTQ_DESC_F_NEXT;
                if buf.write {
                    flags |= layout::VIRTQ_DESC_F_WRITE;
                }
                let (addr, len) = (buf.addr.gpa(cx), buf.len.get());
                for i in 0..n {
                    let last = i + 1 == n;
                    let d = Descriptor {
                        addr,
                        len,
                        flags: if last {
                            flags & !layout::VIRTQ_DESC_F_NEXT
                        } else {
                            flags
                        },
                        next: (i + 1) as u16,
                    };
                    let at = base.wrapping_add(i * Descriptor::SIZE as u64);
                    if mem.write_gpa(at, &d.to_bytes()).is_err() {
                        break;
                    }
                }
                let ind = Descriptor {
                    addr: base,
                    len: (n * Descriptor::SIZE as u64) as u32,
                    flags: layout::VIRTQ_DESC_F_INDIRECT,
                    next: 0,
                };
                let _ = mem.write_gpa(
                    cx.qa.desc + head as u64 * Descriptor::SIZE as u64,
                    &ind.to_bytes(),
                );
                let slot = cx.qa.avail + avail::ring(self.idx & (size - 1));
                let _ = mem.write_gpa(slot, &head.to_le_bytes());
                self.idx = self.idx.wrapping_add(1);
                self.store_idx(self.idx);
            }
            GuestWrite::Post(heads) => {
                for h in heads.iter().take(size as usize) {
                    let at = cx.qa.avail + avail::ring(self.idx & (size - 1));
                    let _ = mem.write_gpa(at, &h.get(size).to_le_bytes());
                    self.idx = self.idx.wrapping_add(1);
                }
                self.store_idx(self.idx);
            }
            GuestWrite::AvailSlot { slot, head } => {
                let at = cx.qa.avail + avail::ring(slot & (size - 1));
                let _ = mem.write_gpa(at, &head.get(size).to_le_bytes());
            }
            GuestWrite::AvailIdx(i) => {
                let v = match *i {
                    AvailIdx::Ahead(k) => dev_next_avail.wrapping_add(k % (size + 1)),
                    AvailIdx::Raw(v) => v,
                };
                self.idx = v;
                self.store_idx(v);
            }
            GuestWrite::AvailFlags(f) => {
                let _ = mem.write_gpa(cx.qa.avail + avail::FLAGS, &f.to_le_bytes());
            }
            GuestWrite::UsedEvent(e) => {
                let _ = mem.write_gpa(cx.qa.avail + avail::used_event(size), &e.to_le_bytes());
            }
            GuestWrite::RawRing { part, off, data } => {
                let (base, len) = match part {
                    RingPart::Desc => (cx.qa.desc, layout::desc_table_size(size)),
                    RingPart::Avail => (cx.qa.avail, avail::size(size)),
                    RingPart::Used => (cx.qa.used, used::size(size)),
                };
                let off = *off as u64 % len;
                let n = data.len().min((len - off) as usize);
                let _ = mem.write_gpa(base + off, &data[..n]);
            }
            GuestWrite::Bytes { at, data } => {
                let _ = mem.write_gpa(at.gpa(cx), data);
            }
            GuestWrite::Fill { at, len, byte } => {
                if let Ok(span) = mem.translate(at.gpa(cx), *len as u64) {
                    let _ = mem.fill(span, *byte);
                }
            }
            GuestWrite::Indirect { at, descs } => {
                let n = descs.len().min(MAX_OPS) as u16;
                let base = at.gpa(cx);
                for (i, d) in descs.iter().take(n as usize).enumerate() {
                    let _ = mem.write_gpa(
                        base.wrapping_add(i as u64 * Descriptor::SIZE as u64),
                        &d.bytes(cx, n),
                    );
                }
            }
        }
    }

    fn store_idx(&self, v: u16) {
        self.mem
            .store_u16(
                self.cx.avail_off + avail::IDX as usize,
                v,
                Ordering::Release,
            )
            .expect("avail.idx is mapped and aligned: DeviceQueue::new checked it");
    }

    pub(super) fn avail_idx(&self) -> u16 {
        self.mem
            .read_u16(self.cx.avail_off + avail::IDX as usize)
            .expect("avail ring is mapped")
    }

    pub(super) fn used_idx(&self) -> u16 {
        self.mem
            .read_u16(self.cx.used_off + used::IDX as usize)
            .expect("used ring is mapped")
    }

    pub(super) fn used_flags(&self) -> u16 {
        self.mem
            .read_u16(self.cx.used_off + used::FLAGS as usize)
            .expect("used ring is mapped")
    }

    pub(super) fn used_elem(&self, i: u16) -> (u32, u32) {
        let v = self
            .mem
            .read_u64(self.cx.used_off + used::ring(i & (self.cx.size - 1)) as usize)
            .expect("used ring is mapped");
        (v as u32, (v >> 32) as u32)
    }
}
