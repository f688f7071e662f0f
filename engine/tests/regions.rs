//! Buffers that cross from one memory region into the next, through every path that takes a
//! buffer: the chain walk (direct, linked, indirect, an indirect table itself across regions),
//! the TX header, RX delivery (mergeable or not), and the fd backend's io_uring, `writev` and
//! `readv`. Guest memory here is one memfd per region, mapped apart
//! (`GuestMemory::new_regions`): a range read as one span across a boundary would read the
//! wrong bytes, so every check below compares bytes.
//!
//! Also the limits: a byte in a hole or past the last region is `BadAddress`, and the segments
//! the crossings add count against `MAX_SEGMENTS`, per chain and per received frame.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use engine::backend::frames::{FrameFd, Header};
use engine::backend::{Backend, TxResult};
use engine::net::header::{parse_tx, pop_tx};
use engine::net::rx::{Gather, RxOutcome, RxWriter};
use engine::virtq::{Chain, DeviceQueue, ErrorKind, QueueError, MAX_SEGMENTS};
use guest_sim::{Buf, DriverQueue, MockGuest};
use vring::layout::Descriptor;
use vring::net::{bit, Features, VirtioNetHdr};
use vring::{GuestMemory, RegionSpec};

const H: usize = VirtioNetHdr::SIZE;
const SIZE: u16 = 16;
/// Region boundaries: the rings and an arena below `B1`, two one-page regions, a hole from
/// `HOLE` to `FAR`, and a last page at `FAR`.
const B1: u64 = 0x1_0000;
const B2: u64 = 0x1_1000;
const HOLE: u64 = 0x1_2000;
const FAR: u64 = 0x2_0000;

fn guest() -> MockGuest {
    let r = |gpa, len| RegionSpec { gpa, len };
    MockGuest::with_split_regions(
        &[r(0, B1), r(B1, 0x1000), r(B2, 0x1000), r(FAR, 0x1000)],
        &[SIZE],
    )
    .expect("guest")
}

fn features(indirect: bool, mrg: bool) -> Features {
    Features::of(&[bit::VERSION_1, bit::RING_EVENT_IDX])
        .with(bit::RING_INDIRECT_DESC, indirect)
        .with(bit::MRG_RXBUF, mrg)
}

fn queues(g: &MockGuest, indirect: bool, mrg: bool) -> (DriverQueue, DeviceQueue) {
    let drv = DriverQueue::new(&g.mem, g.queues[0], true).expect("driver");
    let dev = DeviceQueue::new(&g.mem, g.queues[0], features(indirect, mrg)).expect("device");
    (drv, dev)
}

/// `len` bytes of a pattern seeded by `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read(mem: &GuestMemory, gpa: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    mem.read_gpa(gpa, &mut b).expect("read");
    b
}

/// The readable bytes of a popped chain, through the chain's copy helper and segment by
/// segment: both must give the same.
fn chain_bytes(mem: &GuestMemory, c: &Chain) -> Vec<u8> {
    let mut via_helper = vec![0u8; c.readable_len() as usize];
    assert_eq!(c.read_into(mem, 0, &mut via_helper), via_helper.len());
    let mut via_segments = Vec::new();
    for s in c.readable() {
        let at = via_segments.len();
        via_segments.resize(at + s.len, 0);
        mem.read_at(s.off, &mut via_segments[at..])
            .expect("segment");
    }
    assert_eq!(via_helper, via_segments);
    via_helper
}

#[test]
fn a_buffer_across_regions_is_one_segment_per_region() {
    let g = guest();
    // One region, two regions, three (the middle one whole).
    let cases = [
        (B1 - 0x200, 0x100, 1),
        (B1 - 0x80, 0x100, 2),
        (B1 - 8, 0x1010, 3),
    ];
    for (k, &(gpa, len, segs)) in cases.iter().enumerate() {
        for indirect in [false, true] {
            let (mut drv, mut dev) = queues(&g, true, false);
            let data = pattern(len, k as u8);
            g.mem.write_gpa(gpa, &data).expect("write");
            // Linked to a second buffer that crosses too, or as an indirect chain of both.
            let bufs = [Buf::read(gpa, len as u32), Buf::read(B2 - 3, 6)];
            let head = if indirect {
                drv.add_indirect(&g.mem, 0x8000, &bufs).expect("add")
            } else {
                drv.add(&g.mem, &bufs).expect("add")
            };
            drv.publish(&g.mem).expect("publish");
            let mut c = Chain::default();
            assert!(dev.pop(&g.mem, &mut c).expect("pop"));
            assert_eq!(c.head(), head);
            assert_eq!(c.readable().len(), segs + 2, "{gpa:#x}+{len:#x}");
            assert_eq!(c.descriptors(), 2);
            let mut want = data.clone();
            want.extend(read(&g.mem, B2 - 3, 6));
            assert_eq!(chain_bytes(&g.mem, &c), want);
            // From an offset inside the second segment on.
            let skip = len.min(0x90);
            let from: usize = c.readable_from(skip).map(|s| s.len).sum();
            assert_eq!(from, len + 6 - skip);
        }
    }
}

#[test]
fn an_indirect_table_across_regions_is_read_whole() {
    let g = guest();
    let (mut drv, mut dev) = queues(&g, true, false);
    // Five entries starting 24 bytes before the boundary: entry 1 straddles it.
    let table = B1 - 24;
    let bufs: Vec<Buf> = (0..5u64)
        .map(|i| Buf::read(0x9000 + i * 0x100, 40))
        .collect();
    for (i, b) in bufs.iter().enumerate() {
        g.mem
            .write_gpa(b.gpa, &pattern(40, i as u8))
            .expect("payload");
    }
    let head = drv.add_indirect(&g.mem, table, &bufs).expect("add");
    drv.publish(&g.mem).expect("publish");
    let mut c = Chain::default();
    assert!(dev.pop(&g.mem, &mut c).expect("pop"));
    assert_eq!((c.head(), c.descriptors()), (head, 5));
    let want: Vec<u8> = (0..5).flat_map(|i| pattern(40, i)).collect();
    assert_eq!(chain_bytes(&g.mem, &c), want);

    // A table running into the hole is a bad address, not a partial read.
    let g = guest();
    let (_, mut dev) = queues(&g, true, false);
    let ind = Descriptor {
        addr: HOLE - 16,
        len: 32,
        flags: vring::layout::VIRTQ_DESC_F_INDIRECT,
        next: 0,
    };
    g.write_desc(0, 0, ind).expect("desc");
    g.write_avail_slot(0, 0, 0).expect("slot");
    g.set_avail_idx(0, 1).expect("idx");
    let err = dev.pop(&g.mem, &mut c).expect_err("hole");
    assert_eq!(err.kind(), ErrorKind::BadAddress, "{err}");
}

#[test]
fn a_buffer_into_a_hole_or_past_the_end_breaks_the_queue() {
    for (gpa, len) in [(HOLE - 8, 16u32), (FAR + 0x1000 - 8, 16), (B2 - 8, 0x1010)] {
        let g = guest();
        let (mut drv, mut dev) = queues(&g, false, false);
        drv.add(&g.mem, &[Buf::read(0x9000, 16), Buf::read(gpa, len)])
            .expect("add");
        drv.publish(&g.mem).expect("publish");
        let err = dev.pop(&g.mem, &mut Chain::default()).expect_err("bad");
        assert!(
            matches!(err, QueueError::BadAddress { addr, .. } if addr == gpa),
            "{gpa:#x}: {err}"
        );
        assert!(dev.broken().is_some());
    }
}

#[test]
fn a_tx_header_across_regions_is_read_whole() {
    let g = guest();
    for (k, at) in [B1 - 5, B1 - 12, B1 - 1, B2 - 11].into_iter().enumerate() {
        let (mut drv, mut dev) = queues(&g, false, false);
        let hdr = VirtioNetHdr {
            flags: 1,
            gso_type: 3,
            hdr_len: 0x1234,
            gso_size: 0x5678,
            csum_start: 0x9abc,
            csum_offset: 0xdef0,
            num_buffers: 0,
        };
        let frame = pattern(200, k as u8);
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(&frame);
        g.mem.write_gpa(at, &bytes).expect("write");
        drv.add_one(&g.mem, Buf::read(at, bytes.len() as u32))
            .expect("add");
        drv.publish(&g.mem).expect("publish");
        let mut c = Chain::default();
        let f = pop_tx(&mut dev, &g.mem, &mut c).expect("pop").expect("one");
        assert_eq!(f.hdr, hdr, "header at {at:#x}");
        assert_eq!(f.len, 200);
        assert_eq!(parse_tx(&g.mem, &c).expect("parse"), f);
        assert_eq!(chain_bytes(&g.mem, &c)[H..], frame[..]);
    }
}

#[test]
fn rx_delivers_into_buffers_across_regions() {
    for mrg in [false, true] {
        let g = guest();
        let (mut drv, mut dev) = queues(&g, false, mrg);
        let mut rx = RxWriter::new(mrg);
        // Buffers whose header (and its `num_buffers`) straddles a boundary, whose frame
        // does, and one crossing two boundaries.
        let bufs: Vec<(u64, u32)> = if mrg {
            vec![(B1 - 11, 64), (B1 + 0x100, 0x40), (B2 - 0x20, 0x40)]
        } else {
            vec![(B1 - 11, 0x1100)]
        };
        let mut heads = Vec::new();
        for &(gpa, len) in &bufs {
            heads.push(drv.add_one(&g.mem, Buf::write(gpa, len)).expect("add"));
        }
        drv.publish(&g.mem).expect("publish");
        let frame = pattern(if mrg { 150 } else { 0x10f0 }, 7);
        let hdr = VirtioNetHdr {
            flags: 2,
            ..Default::default()
        };
        let out = rx.deliver(&mut dev, &g.mem, &hdr, &frame).expect("deliver");
        let want_bufs = if mrg { 3 } else { 1 };
        assert_eq!(out, RxOutcome::Delivered { buffers: want_bufs });
        dev.publish_used(&g.mem).expect("publish");
        let mut got = Vec::new();
        for (k, &(gpa, _)) in bufs.iter().enumerate() {
            let u = drv.pop_used(&g.mem).expect("reap").expect("used");
            assert_eq!(u.id, heads[k] as u32);
            got.extend(read(&g.mem, gpa, u.len as usize));
        }
        let h = VirtioNetHdr::from_bytes(got[..H].try_into().expect("12"));
        assert_eq!((h.flags, h.num_buffers), (2, want_bufs));
        assert_eq!(got[H..], frame[..], "mrg {mrg}");
    }
}

/// An indirect chain of `n` one-byte-each-side-of-`B1` buffers, posted as head 0.
fn post_crossing_indirect(g: &MockGuest, n: usize, write: bool) -> u16 {
    let table = 0x8000 + 0x4000 * u64::from(write);
    let flags = if write {
        vring::layout::VIRTQ_DESC_F_WRITE
    } else {
        0
    };
    let mut raw = Vec::new();
    for k in 0..n {
        let more = k + 1 < n;
        let d = Descriptor {
            addr: B1 - 1,
            len: 2 + 10 * u32::from(k == 0),
            flags: flags
                | if more {
                    vring::layout::VIRTQ_DESC_F_NEXT
                } else {
                    0
                },
            next: if more { k as u16 + 1 } else { 0 },
        };
        raw.extend_from_slice(&d.to_bytes());
    }
    g.mem.write_gpa(table, &raw).expect("table");
    let head = u16::from(write);
    let ind = Descriptor {
        addr: table,
        len: raw.len() as u32,
        flags: vring::layout::VIRTQ_DESC_F_INDIRECT,
        next: 0,
    };
    g.write_desc(0, head, ind).expect("desc");
    head
}

#[test]
fn crossings_count_against_the_segment_limit() {
    // Each descriptor gives two segments: half the limit of them fits, one more does not.
    for (n, ok) in [(MAX_SEGMENTS / 2, true), (MAX_SEGMENTS / 2 + 1, false)] {
        let g = guest();
        let (_, mut dev) = queues(&g, true, false);
        let head = post_crossing_indirect(&g, n, false);
        g.write_avail_slot(0, 0, head).expect("slot");
        g.set_avail_idx(0, 1).expect("idx");
        let mut c = Chain::default();
        match dev.pop(&g.mem, &mut c) {
            Ok(true) if ok => assert_eq!(c.readable().len(), MAX_SEGMENTS),
            Err(QueueError::TooManySegments(m)) if !ok => assert_eq!(m, MAX_SEGMENTS),
            r => panic!("{n} crossing descriptors: {r:?}"),
        }
    }
}

#[test]
fn a_received_frame_gathers_at_most_the_segment_limit() {
    // Two mergeable buffers of 3/4 of the limit in segments each: the frame needs both, and
    // together they are over it.
    let g = guest();
    let (_, mut dev) = queues(&g, true, true);
    let n = MAX_SEGMENTS * 3 / 8;
    post_crossing_indirect(&g, n, true);
    g.write_avail_slot(0, 0, 1).expect("slot");
    // The second buffer: the same table again.
    let again = Descriptor {
        addr: 0xc000,
        len: (n * Descriptor::SIZE) as u32,
        flags: vring::layout::VIRTQ_DESC_F_INDIRECT,
        next: 0,
    };
    g.write_desc(0, 2, again).expect("desc");
    g.write_avail_slot(0, 1, 2).expect("slot");
    g.set_avail_idx(0, 2).expect("idx");
    let mut rx = RxWriter::new(true);
    let cap = 2 * n + 10;
    match rx.gather(&mut dev, &g.mem, cap + 1) {
        Err(QueueError::TooManySegments(m)) => assert_eq!(m, MAX_SEGMENTS),
        r => panic!("{r:?}"),
    }
    assert_eq!(dev.stats.errors[ErrorKind::TooManySegments as usize], 1);
    // A frame one buffer holds is fine.
    let g = guest();
    let (_, mut dev) = queues(&g, true, true);
    post_crossing_indirect(&g, n, true);
    g.write_avail_slot(0, 0, 1).expect("slot");
    g.set_avail_idx(0, 1).expect("idx");
    let mut rx = RxWriter::new(true);
    assert_eq!(
        rx.gather(&mut dev, &g.mem, cap).expect("gather"),
        Gather::Ready
    );
    assert_eq!(rx.iov().len(), 2 * n);
}

/// A Unix datagram socketpair standing in for a tap: the device's end (non-blocking) and the
/// far end.
fn socket_tap() -> (File, UnixDatagram) {
    let (dev, peer) = UnixDatagram::pair().expect("socketpair");
    dev.set_nonblocking(true).expect("non-blocking");
    (File::from(OwnedFd::from(dev)), peer)
}

#[test]
fn the_fd_backend_sends_and_receives_across_regions() {
    let g = guest();
    let mut drv = DriverQueue::new(&g.mem, g.queues[0], true).expect("driver");
    let mem = Arc::new(
        GuestMemory::from_frontend(
            g.mem
                .frontend_regions()
                .into_iter()
                .map(|(r, fd)| (r, File::from(fd.try_clone_to_owned().expect("dup"))))
                .collect(),
        )
        .expect("the device's mapping"),
    );
    // The device works on its own mapping of the same memory.
    let mut dev = DeviceQueue::new(&mem, g.queues[0], features(false, false)).expect("device");
    let (tap, peer) = socket_tap();
    let mut b = FrameFd::new("tap", tap, mem.clone(), 8, Header::Passed, 1514).expect("backend");
    // Frames in one region (a fixed write when the kernel allows registration), across one
    // boundary, across two, and with a split header.
    let at = [0x9000, B1 - 0x30, B1 - 0x10, B1 - 6];
    let lens = [100usize, 200, 0x1020, 300];
    // The buffers overlap (TX buffers may): one pattern over all of them.
    g.mem
        .write_gpa(0x9000, &pattern((HOLE - 0x9000) as usize, 1))
        .expect("frames");
    let mut sent = Vec::new();
    for (&gpa, &len) in at.iter().zip(&lens) {
        drv.add_one(&g.mem, Buf::read(gpa, len as u32))
            .expect("add");
        sent.push(read(&g.mem, gpa, len));
    }
    drv.publish(&g.mem).expect("publish");
    let mut chains: Vec<Chain> = (0..4).map(|_| Chain::default()).collect();
    let (n, err) = dev.pop_batch(&mem, &mut chains, |_| Ok(()));
    assert_eq!((n, err.is_none()), (4, true));
    // A batch goes through io_uring; one frame alone through writev.
    let mut out = TxResult::default();
    b.send(&mem, &chains[..3], &mut out).expect("send batch");
    b.send(&mem, &chains[3..], &mut out).expect("send one");
    assert_eq!(out.sent, 4, "{out:?}");
    let mut buf = vec![0u8; 0x2000];
    for want in &sent {
        let n = peer.recv(&mut buf).expect("datagram");
        assert_eq!(&buf[..n], &want[..]);
    }
    let stats: std::collections::HashMap<_, _> = b.stats().into_iter().collect();
    assert_eq!(stats["uring_submits"], 1, "{stats:?}");
    assert_eq!(stats["single_writev"], 1, "{stats:?}");
    assert_eq!(
        stats["fixed_writes"], stats["guest_memory_fixed_buffer"],
        "{stats:?}"
    );

    // RX: a datagram read straight into a buffer across two boundaries.
    let (mut rxd, mut rxq) = (
        DriverQueue::new(&g.mem, g.queues[0], true).expect("driver"),
        DeviceQueue::new(&mem, g.queues[0], features(false, false)).expect("device"),
    );
    let gpa = B1 - 7;
    let head = rxd.add_one(&g.mem, Buf::write(gpa, 0x1100)).expect("post");
    rxd.publish(&g.mem).expect("publish");
    let mut hdr = VirtioNetHdr::default().to_bytes().to_vec();
    let frame = pattern(0x1080, 9);
    hdr.extend_from_slice(&frame);
    peer.send(&hdr).expect("send datagram");
    let mut w = RxWriter::new(false);
    assert_eq!(
        w.gather(&mut rxq, &mem, H + 1514).expect("gather"),
        Gather::Ready
    );
    let n = b.rx_recv(&mem, w.iov()).expect("readv");
    assert_eq!(n, hdr.len());
    assert_eq!(w.commit(&mut rxq, &mem, n).expect("commit"), 1);
    rxq.publish_used(&mem).expect("publish");
    let u = rxd.pop_used(&g.mem).expect("reap").expect("used");
    assert_eq!((u.id, u.len as usize), (head as u32, n));
    assert_eq!(read(&g.mem, gpa + H as u64, frame.len()), frame);
}
