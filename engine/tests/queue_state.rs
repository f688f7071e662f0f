//! Queue state across device restarts (`SET_VRING_BASE` / `GET_VRING_BASE`): a device started
//! at any base — near the 16-bit wrap too — runs from there, and a device stopped and started
//! again from what the stop returned goes on without losing or repeating a chain, on TX and
//! on RX, with or without `VIRTIO_F_IN_ORDER` and event index, at queue sizes up to 1024.

use engine::net::rx::{Gather, RxWriter};
use engine::virtq::{Chain, DeviceQueue, ErrorKind, QueueError, QueueState};
use guest_sim::{Buf, DriverQueue, MockGuest};
use vring::layout::used;
use vring::net::{bit, Features, VirtioNetHdr};

fn features(event_idx: bool, in_order: bool) -> Features {
    Features::of(&[bit::VERSION_1])
        .with(bit::RING_EVENT_IDX, event_idx)
        .with(bit::IN_ORDER, in_order)
}

/// Pops everything available as a batch of up to 64, checks each chain carries the next
/// sequence number, returns the batch and publishes. Returns how many were popped.
fn serve_tx(dev: &mut DeviceQueue, g: &MockGuest, expect: &mut u32) -> usize {
    let mut chains: Vec<Chain> = (0..64).map(|_| Chain::default()).collect();
    let mut total = 0;
    loop {
        let (n, err) = dev.pop_batch(&g.mem, &mut chains, |_| Ok(()));
        assert!(err.is_none(), "{err:?}");
        if n == 0 {
            return total;
        }
        for c in &chains[..n] {
            let mut b = [0u8; 4];
            assert_eq!(c.read_into(&g.mem, 0, &mut b), 4);
            assert_eq!(
                u32::from_le_bytes(b),
                *expect,
                "chain {} out of sequence",
                c.head()
            );
            *expect += 1;
        }
        dev.add_used_batch(&g.mem, chains[..n].iter().map(Chain::head), 0)
            .expect("used");
        dev.publish_used(&g.mem).expect("publish");
        total += n;
    }
}

/// Posts `n` one-buffer TX chains numbered from `*seq` on, each in a buffer of its own
/// descriptor (`bufs[head]`), and publishes them.
fn post_tx(drv: &mut DriverQueue, g: &MockGuest, bufs: &[u64], seq: &mut u32, n: usize) {
    for _ in 0..n {
        let head = drv.next_free_head().expect("a free descriptor");
        let b = bufs[head as usize];
        g.mem.write_gpa(b, &seq.to_le_bytes()).expect("stamp");
        drv.add_one(&g.mem, Buf::read(b, 64)).expect("post");
        *seq += 1;
    }
    drv.publish(&g.mem).expect("publish");
}

#[test]
fn a_queue_started_at_any_base_runs_from_there() {
    for size in [4u16, 256, 1024] {
        for base in [0u16, 1000, 65530, 65535] {
            for (event_idx, in_order) in [(false, false), (true, false), (true, true)] {
                let mut g = MockGuest::new(1 << 20, &[size]).expect("guest");
                let a = g.queues[0];
                let bufs: Vec<u64> = (0..size).map(|_| g.alloc(64).expect("buf")).collect();
                let mut drv = DriverQueue::new_at(&g.mem, a, event_idx, base)
                    .expect("driver")
                    .with_in_order(in_order);
                let f = features(event_idx, in_order);
                let state = QueueState {
                    addrs: a,
                    next_avail: base,
                };
                let mut dev = DeviceQueue::start(&g.mem, state, f).expect("device");
                assert_eq!((dev.next_avail(), dev.next_used()), (base, base));
                let (mut seq, mut expect) = (0u32, 0u32);
                // Three rings' worth, across the wrap when the base is near it.
                while seq < 3 * size as u32 {
                    drv.reap(&g.mem, |_| {}).expect("reap");
                    let room = drv.num_free() as usize;
                    post_tx(&mut drv, &g, &bufs, &mut seq, room.min(37));
                    serve_tx(&mut dev, &g, &mut expect);
                }
                drv.reap(&g.mem, |_| {}).expect("reap");
                assert_eq!((expect, drv.in_flight()), (seq, 0));
                let end = base.wrapping_add(seq as u16);
                assert_eq!(dev.state().next_avail, end);
                assert_eq!(dev.stop(&g.mem).next_avail, end);
                assert_eq!(g.used_idx(0).expect("used.idx"), end);
            }
        }
    }
}

#[test]
fn a_ring_in_use_needs_its_base() {
    // The old way, a fresh device at 0, takes the ring's index for a jump; from the base, fine.
    let mut g = MockGuest::new(1 << 20, &[256]).expect("guest");
    let a = g.queues[0];
    let bufs: Vec<u64> = (0..256).map(|_| g.alloc(64).expect("buf")).collect();
    let mut drv = DriverQueue::new_at(&g.mem, a, true, 40_000).expect("driver");
    let mut seq = 0;
    post_tx(&mut drv, &g, &bufs, &mut seq, 3);
    let f = features(true, false);
    let mut fresh = DeviceQueue::new(&g.mem, a, f).expect("device");
    let err = fresh.pending(&g.mem).expect_err("jump");
    assert_eq!(err.kind(), ErrorKind::AvailIdxJump);
    let mut dev = DeviceQueue::start(
        &g.mem,
        QueueState {
            addrs: a,
            next_avail: 40_000,
        },
        f,
    )
    .expect("device");
    let mut expect = 0;
    assert_eq!(serve_tx(&mut dev, &g, &mut expect), 3);
}

#[test]
fn a_base_no_ring_can_be_at_is_refused() {
    let g = MockGuest::new(1 << 20, &[16]).expect("guest");
    let a = g.queues[0];
    g.mem
        .write_gpa(a.used + used::IDX, &100u16.to_le_bytes())
        .expect("used.idx");
    let start = |next_avail| {
        DeviceQueue::start(
            &g.mem,
            QueueState {
                addrs: a,
                next_avail,
            },
            features(true, false),
        )
    };
    // Up to a whole ring in flight is possible; more, or behind the used index, is not.
    for ok in [100, 110, 116] {
        let q = start(ok).expect("a possible base");
        assert_eq!((q.next_used(), q.in_flight()), (100, ok - 100));
    }
    for bad in [117, 99, 0, 65535] {
        match start(bad) {
            Err(QueueError::BadBase {
                base,
                used_idx: 100,
                size: 16,
            }) => assert_eq!(base, bad),
            r => panic!("base {bad}: {r:?}"),
        }
    }
}

/// TX: the device is stopped at arbitrary points — with chains posted and not popped, with
/// popped ones returned but not published — and started again from what the stop returned.
/// Every chain is served once, in order, across all the devices.
#[test]
fn tx_stop_and_resume_loses_and_repeats_nothing() {
    for size in [16u16, 1024] {
        for (event_idx, in_order) in [(false, false), (true, false), (true, true)] {
            let mut g = MockGuest::new(1 << 20, &[size]).expect("guest");
            let a = g.queues[0];
            let bufs: Vec<u64> = (0..size).map(|_| g.alloc(64).expect("buf")).collect();
            let mut drv = DriverQueue::new_at(&g.mem, a, event_idx, 65_000)
                .expect("driver")
                .with_in_order(in_order);
            let f = features(event_idx, in_order);
            let mut state = QueueState {
                addrs: a,
                next_avail: 65_000,
            };
            let (mut seq, mut expect) = (0u32, 0u32);
            let mut chains: Vec<Chain> = (0..64).map(|_| Chain::default()).collect();
            for round in 0..40usize {
                let mut dev = DeviceQueue::start(&g.mem, state, f).expect("resume");
                drv.reap(&g.mem, |_| {}).expect("reap");
                let room = drv.num_free() as usize;
                post_tx(&mut drv, &g, &bufs, &mut seq, room.min(5 + round * 7 % 60));
                // Take only part of what is there, and return it without publishing.
                let want = (round * 5 % 13).min(64);
                let (n, err) = dev.pop_batch(&g.mem, &mut chains[..want], |_| Ok(()));
                assert!(err.is_none());
                for c in &chains[..n] {
                    let mut b = [0u8; 4];
                    c.read_into(&g.mem, 0, &mut b);
                    assert_eq!(u32::from_le_bytes(b), expect);
                    expect += 1;
                }
                dev.add_used_batch(&g.mem, chains[..n].iter().map(Chain::head), 0)
                    .expect("used");
                assert_eq!(dev.in_flight(), 0);
                state = dev.stop(&g.mem);
            }
            let mut dev = DeviceQueue::start(&g.mem, state, f).expect("resume");
            serve_tx(&mut dev, &g, &mut expect);
            drv.reap(&g.mem, |_| {}).expect("reap");
            assert_eq!((expect, drv.in_flight()), (seq, 0), "size {size}");
        }
    }
}

/// RX: a device stopped while it holds a buffer popped ahead of a frame gives it back first;
/// the next device fills it. Frames arrive once each, in order.
#[test]
fn rx_stop_and_resume_loses_and_repeats_nothing() {
    for mrg in [false, true] {
        let size = 64u16;
        let mut g = MockGuest::new(1 << 20, &[size]).expect("guest");
        let a = g.queues[0];
        let len = if mrg { 64u32 } else { 256 };
        let bufs: Vec<u64> = (0..size)
            .map(|_| g.alloc(len as u64).expect("buf"))
            .collect();
        let mut drv = DriverQueue::new_at(&g.mem, a, true, 65_500).expect("driver");
        // The buffer each head holds (reposting puts buffers behind other heads).
        let mut owner = vec![0u64; size as usize];
        for &b in &bufs {
            let h = drv.add_one(&g.mem, Buf::write(b, len)).expect("post");
            owner[h as usize] = b;
        }
        drv.publish(&g.mem).expect("publish");
        let f = features(true, false).with(bit::MRG_RXBUF, mrg);
        let mut state = QueueState {
            addrs: a,
            next_avail: 65_500,
        };
        let (mut sent, mut got) = (0u32, 0u32);
        for round in 0..30 {
            let mut dev = DeviceQueue::start(&g.mem, state, f).expect("resume");
            // Popping a few ahead, as the worker does, or one at a time.
            let mut rx = RxWriter::with_batch(mrg, [1, 3, 64][round % 3]);
            for _ in 0..round % 4 {
                let mut frame = vec![0u8; 100];
                frame[..4].copy_from_slice(&sent.to_le_bytes());
                match rx.deliver(&mut dev, &g.mem, &VirtioNetHdr::default(), &frame) {
                    Ok(engine::net::rx::RxOutcome::Delivered { .. }) => sent += 1,
                    r => panic!("{r:?}"),
                }
            }
            // A buffer held for the next frame when the stop comes.
            assert!(rx.prepare(&mut dev, &g.mem).expect("prepare").is_some());
            assert!(rx.held() > 0);
            rx.release(&mut dev);
            dev.publish_used(&g.mem).expect("publish");
            assert_eq!(dev.in_flight(), 0);
            state = dev.stop(&g.mem);
            // The guest reaps and reposts.
            while let Some(u) = drv.pop_used(&g.mem).expect("reap") {
                let gpa = owner[u.id as usize];
                let mut b = [0u8; 16];
                g.mem.read_gpa(gpa, &mut b).expect("read");
                let h = VirtioNetHdr::from_bytes(b[..12].try_into().expect("12"));
                assert_eq!(u32::from_le_bytes(b[12..16].try_into().expect("4")), got);
                got += 1;
                // The rest of a merged frame: its other buffers carry no header.
                let mut free = vec![gpa];
                for _ in 1..h.num_buffers {
                    let u = drv.pop_used(&g.mem).expect("reap").expect("merged");
                    free.push(owner[u.id as usize]);
                }
                for b in free {
                    let h = drv.add_one(&g.mem, Buf::write(b, len)).expect("repost");
                    owner[h as usize] = b;
                }
            }
            drv.publish(&g.mem).expect("publish");
        }
        assert_eq!(got, sent);
        assert!(sent > 30);
        let mut dev = DeviceQueue::start(&g.mem, state, f).expect("resume");
        let mut rx = RxWriter::new(mrg);
        assert_eq!(
            rx.gather(&mut dev, &g.mem, 100).expect("gather"),
            Gather::Ready
        );
    }
}

/// What the stop returns is where the device stopped, even with chains still out: those are
/// lost to the guest, which `in_flight` says beforehand.
#[test]
fn a_stop_with_chains_out_reports_them() {
    let mut g = MockGuest::new(1 << 20, &[16]).expect("guest");
    let a = g.queues[0];
    let bufs: Vec<u64> = (0..16).map(|_| g.alloc(64).expect("buf")).collect();
    let mut drv = DriverQueue::new(&g.mem, a, true).expect("driver");
    let mut seq = 0;
    post_tx(&mut drv, &g, &bufs, &mut seq, 5);
    let mut dev = DeviceQueue::new(&g.mem, a, features(true, false)).expect("device");
    let mut c = Chain::default();
    for _ in 0..3 {
        assert!(dev.pop(&g.mem, &mut c).expect("pop"));
    }
    dev.add_used(&g.mem, 0, 0).expect("used");
    assert_eq!(dev.in_flight(), 2);
    let s = dev.stop(&g.mem);
    assert_eq!(s.next_avail, 3);
    // The used element added before the stop was published by it.
    assert_eq!(g.used_idx(0).expect("used.idx"), 1);
    let dev = DeviceQueue::start(&g.mem, s, features(true, false)).expect("resume");
    assert_eq!(dev.in_flight(), 2);
}
