//! Round trips between the guest-sim driver and the engine's device side: random chains
//! posted by the driver come out of the device with the same bytes, used elements come back to
//! the driver, notifications are neither lost nor (when suppressed) sent.

use engine::net::header::pop_tx;
use engine::net::rx::{RxOutcome, RxWriter};
use engine::virtq::{Chain, DeviceQueue};
use guest_sim::{Buf, DriverQueue, FreeOrder, MockGuest};
use proptest::prelude::*;
use vring::net::{bit, Features, VirtioNetHdr};

fn features(event_idx: bool, indirect: bool) -> Features {
    Features::of(&[bit::VERSION_1])
        .with(bit::RING_EVENT_IDX, event_idx)
        .with(bit::RING_INDIRECT_DESC, indirect)
}

/// A chain as a test describes it: segment lengths, readable ones first.
#[derive(Clone, Debug)]
struct Shape {
    readable: Vec<u32>,
    writable: Vec<u32>,
    indirect: bool,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop::collection::vec(0u32..300, 0..5),
        prop::collection::vec(0u32..300, 0..5),
        any::<bool>(),
    )
        .prop_filter("non-empty", |(r, w, _)| !r.is_empty() || !w.is_empty())
        .prop_map(|(readable, writable, indirect)| Shape {
            readable,
            writable,
            indirect,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Posted bytes come out of the device unchanged, whatever the shape of the chains; bytes
    /// the device writes reach the driver's buffers; used elements return in order. With
    /// `split`, guest memory is 4 KiB regions mapped apart, so buffers and indirect tables
    /// cross region boundaries; with `lifo`, the driver reuses descriptors as Linux does;
    /// with `big`, the queue has 1024 entries.
    #[test]
    fn chains_round_trip(
        shapes in prop::collection::vec(shape(), 1..40),
        event_idx in any::<bool>(),
        seed in any::<u8>(),
        split in any::<bool>(),
        lifo in any::<bool>(),
        big in any::<bool>(),
    ) {
        let size = if big { 1024u16 } else { 16 };
        let mut g = if split {
            MockGuest::split(1 << 20, 0x1000, &[size])
        } else {
            MockGuest::new(1 << 20, &[size])
        }
        .expect("guest");
        let order = if lifo { FreeOrder::Lifo } else { FreeOrder::Fifo };
        let mut drv = DriverQueue::new(&g.mem, g.queues[0], event_idx)
            .expect("driver")
            .with_free_order(order);
        let mut dev = DeviceQueue::new(&g.mem, g.queues[0], features(event_idx, true)).expect("dev");
        let mut chain = Chain::default();
        let mut pending = std::collections::VecDeque::new();
        let mut fill = seed;
        for (n, s) in shapes.iter().enumerate() {
            // Post: readable buffers filled with a pattern, writable ones zeroed.
            let mut bufs = Vec::new();
            let mut expect_read = Vec::new();
            for &len in &s.readable {
                let gpa = g.alloc(len as u64 + 1).expect("alloc");
                let bytes: Vec<u8> = (0..len).map(|_| { fill = fill.wrapping_add(7); fill }).collect();
                g.mem.write_gpa(gpa, &bytes).expect("fill");
                expect_read.extend_from_slice(&bytes);
                bufs.push(Buf::read(gpa, len));
            }
            let mut wbufs = Vec::new();
            for &len in &s.writable {
                let gpa = g.alloc(len as u64 + 1).expect("alloc");
                wbufs.push((gpa, len));
                bufs.push(Buf::write(gpa, len));
            }
            let head = if s.indirect {
                let table = g.alloc(16 * bufs.len() as u64).expect("table");
                drv.add_indirect(&g.mem, table, &bufs).expect("add")
            } else {
                drv.add(&g.mem, &bufs).expect("add")
            };
            drv.publish(&g.mem).expect("publish");

            // Device: pop, check bytes, write a pattern into the writable part.
            prop_assert!(dev.pop(&g.mem, &mut chain).expect("pop"));
            prop_assert_eq!(chain.head(), head);
            let mut got = vec![0u8; chain.readable_len() as usize];
            prop_assert_eq!(chain.read_into(&g.mem, 0, &mut got), got.len());
            prop_assert_eq!(&got, &expect_read);
            let wlen = chain.writable_len() as usize;
            prop_assert_eq!(wlen, s.writable.iter().map(|&l| l as usize).sum::<usize>());
            let pattern: Vec<u8> = (0..wlen).map(|i| (i as u8) ^ (n as u8)).collect();
            prop_assert_eq!(chain.write_from(&g.mem, 0, &pattern), wlen);
            dev.add_used(&g.mem, head, wlen as u32).expect("used");
            pending.push_back((head, wbufs, pattern));

            // Publish in small batches; reap whenever the ring fills up or at the end.
            if n % 3 == 2 || drv.num_free() < 10 || n + 1 == shapes.len() {
                dev.publish_used(&g.mem).expect("publish used");
                while let Some(u) = drv.pop_used(&g.mem).expect("reap") {
                    let (h, wbufs, pattern) = pending.pop_front().expect("expected a used element");
                    prop_assert_eq!(u.id, h as u32);
                    prop_assert_eq!(u.len as usize, pattern.len());
                    let mut written = Vec::new();
                    for (gpa, len) in wbufs {
                        let mut b = vec![0u8; len as usize];
                        g.mem.read_gpa(gpa, &mut b).expect("read");
                        written.extend_from_slice(&b);
                    }
                    prop_assert_eq!(written, pattern);
                }
            }
        }
        prop_assert!(pending.is_empty());
        prop_assert!(!dev.pop(&g.mem, &mut chain).expect("empty"));
        prop_assert!(dev.broken().is_none());
    }

    /// RX frames of any size arrive whole through mergeable buffers, with `num_buffers` right.
    #[test]
    fn rx_mergeable_round_trip(
        frames in prop::collection::vec(1usize..5000, 1..20),
        buf_len in 128u32..2048,
    ) {
        let size = 64u16;
        let mut g = MockGuest::new(4 << 20, &[size]).expect("guest");
        let mut drv = DriverQueue::new(&g.mem, g.queues[0], true).expect("driver");
        let f = features(true, false).with(bit::MRG_RXBUF, true);
        let mut dev = DeviceQueue::new(&g.mem, g.queues[0], f).expect("dev");
        let mut rx = RxWriter::new(true);
        let mut bufs = std::collections::HashMap::new();
        for _ in 0..size {
            let gpa = g.alloc(buf_len as u64).expect("alloc");
            let head = drv.add(&g.mem, &[Buf::write(gpa, buf_len)]).expect("add");
            bufs.insert(head, gpa);
        }
        drv.publish(&g.mem).expect("publish");
        for (k, &len) in frames.iter().enumerate() {
            let frame: Vec<u8> = (0..len).map(|i| (i * 31 + k) as u8).collect();
            let hdr = VirtioNetHdr { flags: 2, ..Default::default() };
            let out = rx.deliver(&mut dev, &g.mem, &hdr, &frame).expect("deliver");
            let RxOutcome::Delivered { buffers } = out else {
                prop_assert!(false, "no room: {:?}", out);
                unreachable!()
            };
            dev.publish_used(&g.mem).expect("publish");
            // Driver: gather `num_buffers` used buffers.
            let mut data = Vec::new();
            let mut first = true;
            let mut expect_bufs = 1;
            let mut n = 0;
            while n < expect_bufs {
                let u = drv.pop_used(&g.mem).expect("reap").expect("used");
                let gpa = bufs[&(u.id as u16)];
                let mut b = vec![0u8; u.len as usize];
                g.mem.read_gpa(gpa, &mut b).expect("read");
                if first {
                    let h = VirtioNetHdr::from_bytes(b[..12].try_into().expect("12"));
                    prop_assert_eq!(h.flags, 2);
                    expect_bufs = h.num_buffers;
                    prop_assert_eq!(expect_bufs, buffers);
                    b.drain(..12);
                    first = false;
                }
                data.extend_from_slice(&b);
                // Re-post the buffer.
                let head = drv.add(&g.mem, &[Buf::write(gpa, buf_len)]).expect("repost");
                bufs.insert(head, gpa);
                n += 1;
            }
            drv.publish(&g.mem).expect("publish");
            prop_assert_eq!(data, frame);
        }
    }
}

/// Indices wrap past 2^16 with no loss: 200k chains through a 4-entry queue.
#[test]
fn indices_wrap_around() {
    let mut g = MockGuest::new(1 << 20, &[4]).expect("guest");
    let mut drv = DriverQueue::new(&g.mem, g.queues[0], true).expect("driver");
    let mut dev = DeviceQueue::new(&g.mem, g.queues[0], features(true, false)).expect("dev");
    let buf = g.alloc(64).expect("alloc");
    let mut chain = Chain::default();
    for i in 0u32..200_000 {
        g.mem.write_gpa(buf, &i.to_le_bytes()).expect("write");
        let head = drv.add(&g.mem, &[Buf::read(buf, 64)]).expect("add");
        drv.publish(&g.mem).expect("publish");
        assert!(dev.pop(&g.mem, &mut chain).expect("pop"));
        let mut b = [0u8; 4];
        chain.read_into(&g.mem, 0, &mut b);
        assert_eq!(u32::from_le_bytes(b), i);
        dev.add_used(&g.mem, head, 0).expect("used");
        dev.publish_used(&g.mem).expect("publish");
        assert_eq!(
            drv.pop_used(&g.mem).expect("reap").map(|u| u.id),
            Some(head as u32)
        );
    }
    assert_eq!(dev.stats.chains, 200_000);
}

/// With event indices, the device is kicked exactly when it asked, and a kick that races with
/// re-enabling is caught by the re-check.
#[test]
fn kicks_follow_event_index() {
    for event_idx in [true, false] {
        let mut g = MockGuest::new(1 << 20, &[8]).expect("guest");
        let mut drv = DriverQueue::new(&g.mem, g.queues[0], event_idx).expect("driver");
        let mut dev =
            DeviceQueue::new(&g.mem, g.queues[0], features(event_idx, false)).expect("dev");
        let buf = g.alloc(64).expect("alloc");
        let mut chain = Chain::default();
        // Device sleeping with notifications on: the first post kicks.
        assert!(!dev.enable_notifications(&g.mem).expect("enable"));
        drv.add(&g.mem, &[Buf::read(buf, 64)]).expect("add");
        assert!(
            drv.publish(&g.mem).expect("publish"),
            "first post must kick"
        );
        // Device polls with kicks off: later posts do not kick.
        dev.disable_notifications(&g.mem);
        assert!(dev.pop(&g.mem, &mut chain).expect("pop"));
        drv.add(&g.mem, &[Buf::read(buf, 64)]).expect("add");
        assert!(
            !drv.publish(&g.mem).expect("publish"),
            "no kick while the device polls"
        );
        // The device re-enables; the re-check sees the un-kicked buffer: no lost work.
        assert!(dev.enable_notifications(&g.mem).expect("enable"));
        assert!(dev.pop(&g.mem, &mut chain).expect("pop"));
        assert!(!dev.enable_notifications(&g.mem).expect("enable"));
        drv.add(&g.mem, &[Buf::read(buf, 64)]).expect("add");
        assert!(
            drv.publish(&g.mem).expect("publish"),
            "kick after re-enable"
        );
    }
}

/// Interrupts: sent when the driver asked, suppressed when it did not, never lost.
#[test]
fn interrupts_follow_used_event() {
    for event_idx in [true, false] {
        let mut g = MockGuest::new(1 << 20, &[8]).expect("guest");
        let mut drv = DriverQueue::new(&g.mem, g.queues[0], event_idx).expect("driver");
        let mut dev =
            DeviceQueue::new(&g.mem, g.queues[0], features(event_idx, false)).expect("dev");
        let buf = g.alloc(64).expect("alloc");
        let mut chain = Chain::default();
        let mut post_and_use = |drv: &mut DriverQueue, dev: &mut DeviceQueue| {
            let h = drv.add(&g.mem, &[Buf::write(buf, 64)]).expect("add");
            drv.publish(&g.mem).expect("publish");
            assert!(dev.pop(&g.mem, &mut chain).expect("pop"));
            dev.add_used(&g.mem, h, 0).expect("used");
            dev.publish_used(&g.mem).expect("publish");
            dev.needs_notification(&g.mem)
        };
        assert!(!drv.enable_interrupts(&g.mem).expect("enable"));
        assert!(
            post_and_use(&mut drv, &mut dev),
            "driver waiting: interrupt"
        );
        drv.disable_interrupts(&g.mem).expect("disable");
        assert!(
            !post_and_use(&mut drv, &mut dev),
            "driver polling: no interrupt"
        );
        // Driver re-enables with work pending: it sees it without an interrupt.
        assert!(drv.enable_interrupts(&g.mem).expect("enable"));
        while drv.pop_used(&g.mem).expect("reap").is_some() {}
        assert!(!drv.enable_interrupts(&g.mem).expect("enable"));
        assert!(
            post_and_use(&mut drv, &mut dev),
            "interrupt after re-enable"
        );
    }
}

/// TX frames with the header split across descriptors, sharing one with the payload, or in an
/// indirect table all parse to the same header and frame.
#[test]
fn tx_header_in_any_layout() {
    let mut g = MockGuest::new(1 << 20, &[16]).expect("guest");
    let mut drv = DriverQueue::new(&g.mem, g.queues[0], true).expect("driver");
    let mut dev = DeviceQueue::new(&g.mem, g.queues[0], features(true, true)).expect("dev");
    let hdr = VirtioNetHdr {
        flags: 1,
        gso_type: 1,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let frame: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(&frame);
    let base = g.alloc(bytes.len() as u64).expect("alloc");
    g.mem.write_gpa(base, &bytes).expect("write");
    let splits: [&[u32]; 4] = [&[212], &[12, 200], &[5, 7, 100, 100], &[3, 30, 179]];
    let mut chain = Chain::default();
    for (k, parts) in splits.iter().enumerate() {
        let mut at = base;
        let bufs: Vec<Buf> = parts
            .iter()
            .map(|&l| {
                let b = Buf::read(at, l);
                at += l as u64;
                b
            })
            .collect();
        if k % 2 == 0 {
            drv.add(&g.mem, &bufs).expect("add");
        } else {
            let t = g.alloc(16 * bufs.len() as u64).expect("table");
            drv.add_indirect(&g.mem, t, &bufs).expect("add");
        }
        drv.publish(&g.mem).expect("publish");
        let f = pop_tx(&mut dev, &g.mem, &mut chain)
            .expect("ok")
            .expect("frame");
        assert_eq!(f.hdr, hdr);
        assert_eq!(f.len, 200);
        let mut out = vec![0u8; 200];
        assert_eq!(chain.read_into(&g.mem, VirtioNetHdr::SIZE, &mut out), 200);
        assert_eq!(out, frame);
        let segs: usize = chain.readable_from(VirtioNetHdr::SIZE).map(|s| s.len).sum();
        assert_eq!(segs, 200);
    }
}

/// A frame needing more buffers than are posted consumes none of them, then goes through once
/// the driver posts more.
#[test]
fn rx_without_enough_buffers_consumes_nothing() {
    let mut g = MockGuest::new(1 << 20, &[8]).expect("guest");
    let mut drv = DriverQueue::new(&g.mem, g.queues[0], true).expect("driver");
    let f = features(true, false).with(bit::MRG_RXBUF, true);
    let mut dev = DeviceQueue::new(&g.mem, g.queues[0], f).expect("dev");
    let mut rx = RxWriter::new(true);
    let frame = vec![9u8; 1000];
    for _ in 0..2 {
        let gpa = g.alloc(256).expect("alloc");
        drv.add(&g.mem, &[Buf::write(gpa, 256)]).expect("add");
    }
    drv.publish(&g.mem).expect("publish");
    let hdr = VirtioNetHdr::default();
    assert_eq!(
        rx.deliver(&mut dev, &g.mem, &hdr, &frame).expect("ok"),
        RxOutcome::NoBuffers
    );
    assert_eq!(dev.next_avail(), 0);
    assert_eq!(dev.next_used(), 0);
    // Buffers already seen are no reason to try again: re-arming reports nothing new, so a
    // device waiting for more buffers sleeps instead of spinning.
    assert!(!dev.enable_notifications(&g.mem).expect("enable"));
    for _ in 0..3 {
        let gpa = g.alloc(256).expect("alloc");
        drv.add(&g.mem, &[Buf::write(gpa, 256)]).expect("add");
    }
    drv.publish(&g.mem).expect("publish");
    // 12 + 1000 bytes in 256-byte buffers: 4 of them.
    assert_eq!(
        rx.deliver(&mut dev, &g.mem, &hdr, &frame).expect("ok"),
        RxOutcome::Delivered { buffers: 4 }
    );
}

/// Without mergeable buffers, an RX buffer whose header is split over two descriptors (the
/// first shorter than the 12-byte header) still gets the frame whole and `num_buffers` 1, as
/// does a one-descriptor buffer: the two paths of `RxWriter::commit` agree.
#[test]
fn rx_header_split_or_whole_gets_num_buffers_one() {
    for first_len in [1u32, 2, 10, 11, 12, 13, 64, 2048] {
        for frame_len in [14usize, 60, 1500] {
            let mut g = MockGuest::new(1 << 20, &[8]).expect("guest");
            let mut drv = DriverQueue::new(&g.mem, g.queues[0], true).expect("driver");
            let mut dev =
                DeviceQueue::new(&g.mem, g.queues[0], features(true, false)).expect("dev");
            let mut rx = RxWriter::new(false);
            let a = g.alloc(first_len as u64).expect("alloc");
            let b = g.alloc(2048).expect("alloc");
            g.mem
                .write_gpa(a, &vec![0xee; first_len as usize])
                .expect("poison");
            let bufs: Vec<Buf> = if first_len >= 2048 {
                vec![Buf::write(a, first_len)]
            } else {
                vec![Buf::write(a, first_len), Buf::write(b, 2048)]
            };
            let head = drv.add(&g.mem, &bufs).expect("add");
            drv.publish(&g.mem).expect("publish");
            let frame: Vec<u8> = (0..frame_len).map(|i| (i * 7) as u8).collect();
            let out = rx
                .deliver(&mut dev, &g.mem, &VirtioNetHdr::default(), &frame)
                .expect("deliver");
            assert!(
                matches!(out, RxOutcome::Delivered { buffers: 1 }),
                "{first_len}/{frame_len}: {out:?}"
            );
            dev.publish_used(&g.mem).expect("publish");
            let u = drv.pop_used(&g.mem).expect("reap").expect("used");
            assert_eq!((u.id, u.len as usize), (head as u32, 12 + frame_len));
            let mut got = vec![0u8; 12 + frame_len];
            let n = (first_len as usize).min(got.len());
            g.mem.read_gpa(a, &mut got[..n]).expect("read");
            if n < got.len() {
                g.mem.read_gpa(b, &mut got[n..]).expect("read");
            }
            let hdr = VirtioNetHdr::from_bytes(got[..12].try_into().expect("12"));
            assert_eq!(hdr.num_buffers, 1, "{first_len}/{frame_len}");
            assert_eq!(&got[12..], &frame[..], "{first_len}/{frame_len}");
        }
    }
}

/// A buffer popped ahead of its frame (`RxWriter::prepare`, as the busy-polling worker does)
/// is the one the frame lands in; holding it twice pops nothing more; a frame too large for it
/// gives it back; `abort` gives it back; with mergeable buffers the frame continues into the
/// next ones in ring order.
#[test]
fn rx_prepared_buffer_is_used_first_and_given_back_when_not() {
    for mrg in [false, true] {
        let mut g = MockGuest::new(1 << 20, &[8]).expect("guest");
        let mut drv = DriverQueue::new(&g.mem, g.queues[0], true).expect("driver");
        let f = features(true, false).with(bit::MRG_RXBUF, mrg);
        let mut dev = DeviceQueue::new(&g.mem, g.queues[0], f).expect("dev");
        let mut rx = RxWriter::new(mrg);
        // Nothing posted: nothing to prepare.
        assert_eq!(rx.prepare(&mut dev, &g.mem).expect("prepare"), None);
        let mut gpas = Vec::new();
        for _ in 0..4 {
            let gpa = g.alloc(256).expect("alloc");
            drv.add(&g.mem, &[Buf::write(gpa, 256)]).expect("add");
            gpas.push(gpa);
        }
        drv.publish(&g.mem).expect("publish");
        let off = rx.prepare(&mut dev, &g.mem).expect("prepare");
        assert_eq!(off, Some(g.mem.translate(gpas[0], 256).expect("t").off));
        assert_eq!(rx.prepare(&mut dev, &g.mem).expect("again"), off);
        assert_eq!(dev.stats.chains, 1, "held once, popped once");
        rx.abort(&mut dev);
        // Given back: the same buffer is prepared again, then delivered into.
        assert_eq!(rx.prepare(&mut dev, &g.mem).expect("prepare"), off);
        let small = vec![5u8; 100];
        let out = rx
            .deliver(&mut dev, &g.mem, &VirtioNetHdr::default(), &small)
            .expect("deliver");
        assert_eq!(out, RxOutcome::Delivered { buffers: 1 });
        // A frame larger than one buffer: dropped without mergeable buffers (the prepared
        // buffer goes back), spread over three with them.
        rx.prepare(&mut dev, &g.mem).expect("prepare");
        let big = vec![9u8; 600];
        let out = rx
            .deliver(&mut dev, &g.mem, &VirtioNetHdr::default(), &big)
            .expect("deliver");
        if mrg {
            assert_eq!(out, RxOutcome::Delivered { buffers: 3 });
        } else {
            assert_eq!(out, RxOutcome::TooLarge);
            assert_eq!(
                rx.prepare(&mut dev, &g.mem).expect("prepare"),
                Some(g.mem.translate(gpas[1], 256).expect("t").off)
            );
            rx.abort(&mut dev);
        }
        dev.publish_used(&g.mem).expect("publish");
        let u = drv.pop_used(&g.mem).expect("reap").expect("first frame");
        assert_eq!(u.len, 112);
        let mut b = vec![0u8; 100];
        g.mem.read_gpa(gpas[0] + 12, &mut b).expect("read");
        assert_eq!(b, small);
        let mut rest = 0;
        while let Some(u) = drv.pop_used(&g.mem).expect("reap") {
            rest += u.len;
        }
        assert_eq!(rest, if mrg { 612 } else { 0 });
        assert!(dev.broken().is_none());
    }
}

/// The reflecting null backend hands frames back in the order sent, across laps of its ring
/// of buffers and with lengths that change; a frame beyond its capacity is a counted drop; a
/// discard lets go of the oldest frame.
#[test]
fn reflect_keeps_order_across_laps_and_counts_what_does_not_fit() {
    use engine::backend::null::{NullBackend, NullMode};
    use engine::backend::{Backend, TxResult};
    use engine::metrics::DropReason;
    use engine::net::tx::TxBatch;
    use vring::{frame, Span};

    const H: usize = VirtioNetHdr::SIZE;
    let mut g = MockGuest::new(1 << 20, &[8]).expect("guest");
    let mut drv = DriverQueue::new(&g.mem, g.queues[0], true).expect("driver");
    let mut dev = DeviceQueue::new(&g.mem, g.queues[0], features(true, false)).expect("dev");
    let mut backend = NullBackend::new(NullMode::Reflect { capacity: 3 }, false);
    let mut batch = TxBatch::new(4);
    let mut out = TxResult::default();
    let bufs: Vec<u64> = (0..8).map(|_| g.alloc(2048).expect("alloc")).collect();
    let mut sent_seq = std::collections::VecDeque::new();
    let mut seq = 0u64;
    let rx = g.alloc(2048).expect("rx buffer");
    let rx_span = Span {
        off: g.mem.translate(rx, 2048).expect("t").off,
        len: 2048,
    };
    for lap in 0..5 {
        // Two frames in, of a length that changes every frame, then one back out: the ring
        // fills, and from the third lap on the second frame finds it full.
        for k in 0..2usize {
            let len = 60 + (lap * 2 + k) * 37;
            let mut f = vec![0u8; H + len];
            frame::fill(&mut f[H..], seq, 0);
            let gpa = bufs[(lap * 2 + k) % 8];
            g.mem.write_gpa(gpa, &f).expect("frame");
            drv.reap(&g.mem, |_| {}).expect("reap");
            drv.add(&g.mem, &[Buf::read(gpa, f.len() as u32)])
                .expect("add");
            drv.publish(&g.mem).expect("publish");
            assert!(batch.pop(&mut dev, &g.mem, 4).is_none());
            let before = out;
            backend
                .send(&g.mem, batch.chains(), &mut out)
                .expect("send");
            batch.complete(&mut dev, &g.mem).expect("complete");
            if out.sent > before.sent {
                sent_seq.push_back((seq, len));
            }
            seq += 1;
        }
        let (want, len) = sent_seq.pop_front().expect("a frame is held");
        assert_eq!(backend.rx_peek(), Some(H + len));
        let n = backend.rx_recv(&g.mem, &[rx_span]).expect("recv");
        assert_eq!(n, H + len);
        let mut got = vec![0u8; n];
        g.mem.read_gpa(rx, &mut got).expect("read");
        assert_eq!(
            VirtioNetHdr::from_bytes(got[..H].try_into().expect("hdr")).num_buffers,
            1
        );
        assert_eq!(frame::seq(&got[H..]), Some(want), "lap {lap}");
        assert!(frame::verify(&got[H..]), "lap {lap}");
    }
    // 10 frames sent, 5 taken back, 3 held at most: from the third lap on, each lap's second
    // frame found the ring full (3 drops), and 2 are still held.
    assert_eq!(out.sent + out.dropped[DropReason::BackendFull as usize], 10);
    assert_eq!(out.dropped[DropReason::BackendFull as usize], 3);
    assert_eq!(sent_seq.len(), 2);
    assert!(backend.rx_discard());
    assert!(backend.rx_discard());
    assert!(!backend.rx_discard(), "nothing left to discard");
    assert_eq!(backend.rx_peek(), None);
    assert_eq!(backend.rx_recv(&g.mem, &[rx_span]).expect("recv"), 0);
}
