//! One test per thing a hostile guest can do to a queue: each must give its typed error, break
//! the queue, be counted, and never panic, hang or reach outside guest memory.

use guest_sim::{Buf, DriverQueue, MockGuest};
use vring::layout::{Descriptor, QueueAddrs, VIRTQ_DESC_F_INDIRECT as IND};
use vring::layout::{VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE};
use vring::net::{bit, Features, VirtioNetHdr};
use vring::RegionSpec;

use super::{Chain, DeviceQueue, ErrorKind, QueueError};
use crate::net::header::pop_tx;
use crate::net::rx::{RxOutcome, RxWriter};

const SIZE: u16 = 16;
/// Data lives at 0x8000.. in a 64 KiB region; a second region sits at 1 MiB after a hole.
const DATA: u64 = 0x8000;
const HOLE: u64 = 0x1_0000;
const FAR: u64 = 0x10_0000;

fn features(indirect: bool) -> Features {
    Features::of(&[bit::VERSION_1, bit::RING_EVENT_IDX]).with(bit::RING_INDIRECT_DESC, indirect)
}

fn guest() -> MockGuest {
    let regions = [
        RegionSpec { gpa: 0, len: HOLE },
        RegionSpec {
            gpa: FAR,
            len: 0x1000,
        },
    ];
    MockGuest::with_regions(&regions, &[SIZE]).expect("guest")
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
    Descriptor {
        addr,
        len,
        flags,
        next,
    }
}

/// Writes `descs` at table indices 0.., makes head 0 available, and pops once.
fn pop_with(g: &MockGuest, descs: &[Descriptor], indirect: bool) -> (DeviceQueue, QueueError) {
    for (i, x) in descs.iter().enumerate() {
        g.write_desc(0, i as u16, *x).expect("desc");
    }
    g.write_avail_slot(0, 0, 0).expect("slot");
    g.set_avail_idx(0, 1).expect("idx");
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(indirect)).expect("queue");
    let mut c = Chain::default();
    let err = q.pop(&g.mem, &mut c).expect_err("must fail");
    (q, err)
}

/// The common tail of every hostile case: the queue is broken, the error counted once, and
/// the queue refuses further work.
fn assert_broken(mut q: DeviceQueue, g: &MockGuest, err: &QueueError, kind: ErrorKind) {
    assert_eq!(err.kind(), kind, "{err}");
    assert!(q.broken().is_some());
    assert_eq!(q.stats.errors[kind as usize], 1);
    let mut c = Chain::default();
    assert!(matches!(q.pop(&g.mem, &mut c), Err(QueueError::Broken)));
    // Re-arming refuses too; completing chains popped before the break is still allowed.
    assert!(matches!(
        q.enable_notifications(&g.mem),
        Err(QueueError::Broken)
    ));
    assert_eq!(q.stats.chains, 0);
}

fn case(descs: &[Descriptor], indirect: bool, kind: ErrorKind) {
    let g = guest();
    let (q, err) = pop_with(&g, descs, indirect);
    assert_broken(q, &g, &err, kind);
}

#[test]
fn descriptor_loop() {
    case(
        &[d(DATA, 8, NEXT, 1), d(DATA, 8, NEXT, 0)],
        false,
        ErrorKind::ChainLoop,
    );
}

#[test]
fn self_loop() {
    case(&[d(DATA, 8, NEXT, 0)], false, ErrorKind::ChainLoop);
}

#[test]
fn chain_longer_than_queue() {
    // 16 entries all linked, the last back to the start: length exceeds the table.
    let descs: Vec<_> = (0..SIZE)
        .map(|i| d(DATA, 1, NEXT, (i + 1) % SIZE))
        .collect();
    case(&descs, false, ErrorKind::ChainLoop);
}

#[test]
fn total_length_over_4g() {
    // The sum is checked before the address is translated, so a mapped 16-byte descriptor
    // followed by one claiming 2^32 - 1 bytes trips it.
    case(
        &[d(DATA, 16, NEXT, 1), d(DATA, u32::MAX, 0, 0)],
        false,
        ErrorKind::LengthOverflow,
    );
}

#[test]
fn head_out_of_range() {
    let g = guest();
    g.write_avail_slot(0, 0, SIZE).expect("slot");
    g.set_avail_idx(0, 1).expect("idx");
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
    let err = q.pop(&g.mem, &mut Chain::default()).expect_err("fail");
    assert_broken(q, &g, &err, ErrorKind::HeadOutOfRange);
}

#[test]
fn next_out_of_range() {
    case(&[d(DATA, 8, NEXT, SIZE)], false, ErrorKind::NextOutOfRange);
}

#[test]
fn address_outside_memory() {
    case(&[d(HOLE, 8, 0, 0)], false, ErrorKind::BadAddress);
}

#[test]
fn address_straddling_a_region_end() {
    case(&[d(HOLE - 4, 8, 0, 0)], false, ErrorKind::BadAddress);
}

#[test]
fn address_plus_len_overflows() {
    case(&[d(u64::MAX - 3, 8, 0, 0)], false, ErrorKind::BadAddress);
}

#[test]
fn indirect_not_negotiated() {
    case(
        &[d(DATA, 16, IND, 0)],
        false,
        ErrorKind::IndirectNotNegotiated,
    );
}

#[test]
fn indirect_bad_lengths() {
    case(&[d(DATA, 0, IND, 0)], true, ErrorKind::IndirectBadLength);
    case(&[d(DATA, 24, IND, 0)], true, ErrorKind::IndirectBadLength);
    case(
        &[d(DATA, 16 * 40000, IND, 0)],
        true,
        ErrorKind::IndirectBadLength,
    );
}

#[test]
fn indirect_table_outside_memory() {
    case(&[d(HOLE - 16, 32, IND, 0)], true, ErrorKind::BadAddress);
}

#[test]
fn nested_indirect() {
    let g = guest();
    g.mem
        .write_gpa(DATA, &d(DATA + 64, 16, IND, 0).to_bytes())
        .expect("table");
    let (q, err) = pop_with(&g, &[d(DATA, 16, IND, 0)], true);
    assert_broken(q, &g, &err, ErrorKind::NestedIndirect);
}

#[test]
fn indirect_with_next() {
    case(
        &[d(DATA, 16, IND | NEXT, 1), d(DATA, 8, 0, 0)],
        true,
        ErrorKind::IndirectWithNext,
    );
}

#[test]
fn loop_inside_indirect_table() {
    let g = guest();
    let table = [d(DATA + 64, 8, NEXT, 1), d(DATA + 64, 8, NEXT, 0)];
    for (i, x) in table.iter().enumerate() {
        g.mem
            .write_gpa(DATA + 16 * i as u64, &x.to_bytes())
            .expect("table");
    }
    let (q, err) = pop_with(&g, &[d(DATA, 32, IND, 0)], true);
    assert_broken(q, &g, &err, ErrorKind::ChainLoop);
}

#[test]
fn next_out_of_range_inside_indirect_table() {
    let g = guest();
    g.mem
        .write_gpa(DATA, &d(DATA + 64, 8, NEXT, 1).to_bytes())
        .expect("table");
    let (q, err) = pop_with(&g, &[d(DATA, 16, IND, 0)], true);
    assert_broken(q, &g, &err, ErrorKind::NextOutOfRange);
}

#[test]
fn readable_after_writable() {
    case(
        &[d(DATA, 8, WRITE | NEXT, 1), d(DATA, 8, 0, 0)],
        false,
        ErrorKind::ReadableAfterWritable,
    );
}

#[test]
fn readable_after_zero_length_writable() {
    case(
        &[d(DATA, 0, WRITE | NEXT, 1), d(DATA, 8, 0, 0)],
        false,
        ErrorKind::ReadableAfterWritable,
    );
}

#[test]
fn rx_frame_larger_than_the_whole_ring_is_dropped_not_stalled() {
    // Two 16-byte buffers fill a 2-entry ring; a 100-byte frame can never fit.
    let regions = [RegionSpec { gpa: 0, len: HOLE }];
    let g = MockGuest::with_regions(&regions, &[2]).expect("guest");
    for i in 0..2u16 {
        g.write_desc(0, i, d(DATA + 64 * i as u64, 16, WRITE, 0))
            .expect("desc");
        g.write_avail_slot(0, i, i).expect("slot");
    }
    g.set_avail_idx(0, 2).expect("idx");
    let f = features(false).with(bit::MRG_RXBUF, true);
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], f).expect("queue");
    let mut rx = RxWriter::new(true);
    let out = rx
        .deliver(&mut q, &g.mem, &VirtioNetHdr::default(), &[1u8; 100])
        .expect("ok");
    assert_eq!(out, RxOutcome::TooLarge);
    assert_eq!(q.next_avail(), 0, "buffers given back for the next frame");
    let out = rx
        .deliver(&mut q, &g.mem, &VirtioNetHdr::default(), &[1u8; 4])
        .expect("ok");
    assert_eq!(out, RxOutcome::Delivered { buffers: 1 });
}

#[test]
fn avail_idx_jump() {
    let g = guest();
    g.set_avail_idx(0, SIZE + 1).expect("idx");
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
    let err = q.pop(&g.mem, &mut Chain::default()).expect_err("fail");
    assert_broken(q, &g, &err, ErrorKind::AvailIdxJump);
}

#[test]
fn avail_idx_exactly_size_is_fine() {
    let g = guest();
    for i in 0..SIZE {
        g.write_desc(0, i, d(DATA, 64, 0, 0)).expect("desc");
        g.write_avail_slot(0, i, i).expect("slot");
    }
    g.set_avail_idx(0, SIZE).expect("idx");
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
    let mut c = Chain::default();
    for _ in 0..SIZE {
        assert!(q.pop(&g.mem, &mut c).expect("pop"));
    }
    assert!(!q.pop(&g.mem, &mut c).expect("empty"));
}

#[test]
fn tx_chain_with_writable_parts() {
    let g = guest();
    g.write_desc(0, 0, d(DATA, 12, NEXT, 1)).expect("desc");
    g.write_desc(0, 1, d(DATA + 64, 64, WRITE, 0))
        .expect("desc");
    g.write_avail_slot(0, 0, 0).expect("slot");
    g.set_avail_idx(0, 1).expect("idx");
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
    let err = pop_tx(&mut q, &g.mem, &mut Chain::default()).expect_err("fail");
    assert_eq!(err.kind(), ErrorKind::UnexpectedWritable);
    assert!(q.broken().is_some());
    assert_eq!(q.stats.errors[ErrorKind::UnexpectedWritable as usize], 1);
}

#[test]
fn zero_length_and_short_tx_header() {
    for len in [0u32, 11] {
        let g = guest();
        g.write_desc(0, 0, d(DATA, len, 0, 0)).expect("desc");
        g.write_avail_slot(0, 0, 0).expect("slot");
        g.set_avail_idx(0, 1).expect("idx");
        let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
        let err = pop_tx(&mut q, &g.mem, &mut Chain::default()).expect_err("fail");
        assert!(matches!(err, QueueError::HeaderTooShort { len: l } if l == len));
        assert_eq!(q.stats.errors[ErrorKind::HeaderTooShort as usize], 1);
    }
}

#[test]
fn rx_chain_with_readable_parts() {
    let g = guest();
    g.write_desc(0, 0, d(DATA, 64, 0, 0)).expect("desc");
    g.write_avail_slot(0, 0, 0).expect("slot");
    g.set_avail_idx(0, 1).expect("idx");
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
    let err = RxWriter::new(false)
        .deliver(&mut q, &g.mem, &VirtioNetHdr::default(), &[0u8; 60])
        .expect_err("fail");
    assert_eq!(err.kind(), ErrorKind::UnexpectedReadable);
    assert!(q.broken().is_some());
}

#[test]
fn rx_buffer_shorter_than_header() {
    for mrg in [false, true] {
        let g = guest();
        g.write_desc(0, 0, d(DATA, 0, WRITE, 0)).expect("desc");
        g.write_avail_slot(0, 0, 0).expect("slot");
        g.set_avail_idx(0, 1).expect("idx");
        let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
        let err = RxWriter::new(mrg)
            .deliver(&mut q, &g.mem, &VirtioNetHdr::default(), &[0u8; 60])
            .expect_err("fail");
        assert!(matches!(err, QueueError::HeaderTooShort { len: 0 }));
    }
}

#[test]
fn rx_frame_too_large_without_mergeable_is_dropped_and_buffer_kept() {
    let g = guest();
    g.write_desc(0, 0, d(DATA, 64, WRITE, 0)).expect("desc");
    g.write_avail_slot(0, 0, 0).expect("slot");
    g.set_avail_idx(0, 1).expect("idx");
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
    let mut rx = RxWriter::new(false);
    let hdr = VirtioNetHdr::default();
    assert_eq!(
        rx.deliver(&mut q, &g.mem, &hdr, &[7u8; 100]).expect("ok"),
        RxOutcome::TooLarge
    );
    assert_eq!(q.next_avail(), 0, "buffer given back");
    assert_eq!(
        rx.deliver(&mut q, &g.mem, &hdr, &[7u8; 52]).expect("ok"),
        RxOutcome::Delivered { buffers: 1 }
    );
}

#[test]
fn bad_queue_setup_is_rejected() {
    let g = guest();
    let mut a = g.queues[0];
    for size in [0u16, 3, 12] {
        a.size = size;
        assert!(matches!(
            DeviceQueue::new(&g.mem, a, features(false)),
            Err(QueueError::BadSize(_))
        ));
    }
    let (misaligned, _) = QueueAddrs::packed(8, 16);
    assert!(matches!(
        DeviceQueue::new(&g.mem, misaligned, features(false)),
        Err(QueueError::BadRing { part: "desc", .. })
    ));
    let (outside, _) = QueueAddrs::packed(HOLE - 64, 16);
    assert!(matches!(
        DeviceQueue::new(&g.mem, outside, features(false)),
        Err(QueueError::BadRing { .. })
    ));
}

#[test]
fn descriptor_rewritten_during_walk_is_read_once() {
    // The device copies each descriptor once; after the walk, rewriting the table changes
    // nothing in the popped chain.
    let g = guest();
    g.write_desc(0, 0, d(DATA, 12, NEXT, 1)).expect("desc");
    g.write_desc(0, 1, d(DATA + 64, 100, 0, 0)).expect("desc");
    g.write_avail_slot(0, 0, 0).expect("slot");
    g.set_avail_idx(0, 1).expect("idx");
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
    let mut c = Chain::default();
    assert!(q.pop(&g.mem, &mut c).expect("pop"));
    g.write_desc(0, 1, d(HOLE + 0x1000, u32::MAX, WRITE, 7))
        .expect("rewrite");
    assert_eq!(c.readable_len(), 112);
    assert!(c.writable().is_empty());
    assert!(c.readable().iter().all(|s| g.mem.host_ptr(*s).is_ok()));
}

/// Bounded randomized hostile rings: random bytes over the descriptor table and avail ring,
/// with descriptor addresses biased into (and just out of) guest memory, then the device side
/// driven until it stops. Checks: no panic, every popped segment inside guest memory, lengths
/// consistent, errors counted and sticky. (The cargo-fuzz target in `fuzz/` does this without
/// bounds.)
#[test]
fn randomized_hostile_rings() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut errors = 0;
    let mut popped = 0;
    for round in 0..3000 {
        let g = guest();
        let size = SIZE;
        for i in 0..size {
            let addr = match rng.next() % 6 {
                0 => rng.next(),
                1 => HOLE - (rng.next() % 64),
                2 => FAR + rng.next() % 0x1100,
                _ => DATA + rng.next() % 0x7000,
            };
            let len = match rng.next() % 5 {
                0 => rng.next() as u32,
                1 => 0,
                _ => (rng.next() % 256) as u32,
            };
            let flags = (rng.next() % 8) as u16
                & if rng.next().is_multiple_of(3) {
                    7
                } else {
                    NEXT | WRITE
                };
            let next = (rng.next() % (size as u64 + 2)) as u16;
            g.write_desc(0, i, d(addr, len, flags, next)).expect("desc");
            g.write_avail_slot(0, i, (rng.next() % (size as u64 + 1)) as u16)
                .expect("slot");
        }
        // Indirect tables in the data area: random too.
        let mut junk = vec![0u8; 512];
        for b in junk.iter_mut() {
            *b = rng.next() as u8;
        }
        g.mem.write_gpa(DATA, &junk).expect("junk");
        let avail = (rng.next() % (size as u64 + 3)) as u16;
        g.set_avail_idx(0, avail).expect("idx");
        let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(round % 2 == 0)).expect("q");
        let mut c = Chain::default();
        for _ in 0..(size as usize + 4) {
            match q.pop(&g.mem, &mut c) {
                Ok(true) => {
                    popped += 1;
                    for s in c.readable().iter().chain(c.writable()) {
                        assert!(g.mem.host_ptr(*s).is_ok());
                    }
                    let r: usize = c.readable().iter().map(|s| s.len).sum();
                    let w: usize = c.writable().iter().map(|s| s.len).sum();
                    assert_eq!((r as u32, w as u32), (c.readable_len(), c.writable_len()));
                    q.add_used(&g.mem, c.head(), c.writable_len())
                        .expect("used");
                }
                Ok(false) => break,
                Err(QueueError::Broken) => unreachable!("first error is reported as itself"),
                Err(e) => {
                    errors += 1;
                    assert!(q.broken().is_some());
                    assert_eq!(q.stats.errors.iter().sum::<u64>(), 1, "{e}");
                    assert!(matches!(q.pop(&g.mem, &mut c), Err(QueueError::Broken)));
                    break;
                }
            }
        }
        let _ = q.publish_used(&g.mem);
        let _ = q.needs_notification(&g.mem);
    }
    // Both outcomes must actually occur, or the test is not testing anything.
    assert!(
        errors > 100 && popped > 100,
        "errors {errors}, popped {popped}"
    );
}

#[test]
fn driver_and_device_agree_on_a_simple_chain() {
    let mut g = guest();
    let mut drv = DriverQueue::new(&g.mem, g.queues[0], true).expect("driver");
    let a = g.alloc(12).expect("alloc");
    let b = g.alloc(64).expect("alloc");
    g.mem.write_gpa(b, &[0xab; 64]).expect("payload");
    drv.add(&g.mem, &[Buf::read(a, 12), Buf::read(b, 64)])
        .expect("add");
    drv.publish(&g.mem).expect("publish");
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
    let mut c = Chain::default();
    let f = pop_tx(&mut q, &g.mem, &mut c).expect("ok").expect("one");
    assert_eq!(f.len, 64);
    let mut out = [0u8; 64];
    assert_eq!(c.read_into(&g.mem, VirtioNetHdr::SIZE, &mut out), 64);
    assert_eq!(out, [0xab; 64]);
}

/// A tiny deterministic generator, so the randomized test is reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Posts one writable `len`-byte buffer per head 0..n at `DATA + 256 * head`, in ring order.
fn post_rx(g: &MockGuest, n: u16, len: u32) {
    for i in 0..n {
        g.write_desc(0, i, d(DATA + 256 * i as u64, len, WRITE, 0))
            .expect("desc");
        g.write_avail_slot(0, i, i).expect("slot");
    }
    g.set_avail_idx(0, n).expect("idx");
}

#[test]
fn rx_batch_with_a_bad_buffer_breaks_the_queue_at_once() {
    // Buffers 0..3 are good, 3 is device-readable: the batch that reaches it breaks the queue
    // with that buffer's error, for the frame being delivered, and the good ones go back.
    let g = guest();
    post_rx(&g, 6, 128);
    g.write_desc(0, 3, d(DATA + 256 * 3, 128, 0, 0))
        .expect("desc");
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
    let mut rx = RxWriter::with_batch(false, 64);
    let err = rx
        .deliver(&mut q, &g.mem, &VirtioNetHdr::default(), &[9; 60])
        .expect_err("bad buffer in the batch");
    assert_eq!(err.kind(), ErrorKind::UnexpectedReadable);
    assert_eq!((rx.held(), q.next_avail(), q.next_used()), (0, 0, 0));
    assert_eq!(q.stats.errors[ErrorKind::UnexpectedReadable as usize], 1);
    let again = rx.deliver(&mut q, &g.mem, &VirtioNetHdr::default(), &[9; 60]);
    assert!(matches!(again, Err(QueueError::Broken)), "{again:?}");
}

#[test]
fn rx_batch_gives_back_what_it_popped_ahead_before_merging() {
    // Mergeable buffers of 64 bytes: a 40-byte frame fits one (taken from the batch popped
    // ahead); a 150-byte frame needs three, popped in ring order right after it.
    let g = guest();
    post_rx(&g, 8, 64);
    let f = features(false).with(bit::MRG_RXBUF, true);
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], f).expect("queue");
    let mut rx = RxWriter::with_batch(true, 64);
    let hdr = VirtioNetHdr::default();
    let small = rx.deliver(&mut q, &g.mem, &hdr, &[1; 40]).expect("small");
    assert_eq!(small, RxOutcome::Delivered { buffers: 1 });
    assert_eq!(rx.held(), 7, "the rest of the batch is held");
    let big = rx.deliver(&mut q, &g.mem, &hdr, &[2; 150]).expect("big");
    assert_eq!(big, RxOutcome::Delivered { buffers: 3 });
    assert_eq!(rx.held(), 0, "given back before merging");
    assert_eq!(q.next_avail(), 4);
    let small = rx
        .deliver(&mut q, &g.mem, &hdr, &[3; 40])
        .expect("small again");
    assert_eq!(small, RxOutcome::Delivered { buffers: 1 });
    rx.release(&mut q);
    assert_eq!(q.next_avail(), 5, "nothing held past the last frame");
    // The big frame starts in buffer 1 with num_buffers 3; the last small one is in buffer 4.
    let mut b = [0u8; 13];
    g.mem.read_gpa(DATA + 256, &mut b).expect("read");
    assert_eq!(
        VirtioNetHdr::from_bytes(b[..12].try_into().expect("12")).num_buffers,
        3
    );
    assert_eq!(b[12], 2);
    g.mem.read_gpa(DATA + 256 * 4, &mut b).expect("read");
    assert_eq!(b[12], 3);
}

#[test]
fn rx_batch_frame_too_large_without_mergeable_gives_everything_back() {
    let g = guest();
    post_rx(&g, 4, 64);
    let mut q = DeviceQueue::new(&g.mem, g.queues[0], features(false)).expect("queue");
    let mut rx = RxWriter::with_batch(false, 64);
    let hdr = VirtioNetHdr::default();
    assert_eq!(
        rx.deliver(&mut q, &g.mem, &hdr, &[7; 100]).expect("ok"),
        RxOutcome::TooLarge
    );
    assert_eq!((q.next_avail(), rx.held()), (0, 0), "buffers given back");
    assert_eq!(
        rx.deliver(&mut q, &g.mem, &hdr, &[7; 52]).expect("ok"),
        RxOutcome::Delivered { buffers: 1 }
    );
}
