//! The TX per-packet path, both sides, on one thread: the guest driver posts a batch of 64-byte
//! frames, the device pops them into the null sink and returns them, the driver reaps. Prints
//! ns per packet for each side. No cross-core traffic: this is the instruction cost alone, the
//! figure to run under `valgrind --tool=callgrind` for repeatable counts.
//!
//! `cargo run --release -p engine --example txpath [packets]`

use std::hint::black_box;
use std::time::Instant;

use engine::backend::null::{NullBackend, NullMode};
use engine::backend::{Backend, TxResult};
use engine::net::tx::TxBatch;
use engine::virtq::DeviceQueue;
use guest_sim::driver::{Buf, DriverQueue};
use guest_sim::mock::MockGuest;
use vring::frame;
use vring::net::{bit, Features, VirtioNetHdr};

const H: usize = VirtioNetHdr::SIZE;
const FRAME: usize = 64;
const BATCH: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let packets: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000_000);
    let mut g = MockGuest::new(4 << 20, &[256])?;
    let addrs = g.queues[0];
    let mem = &g.mem;
    let feats = Features::of(&[bit::RING_EVENT_IDX, bit::VERSION_1, bit::IN_ORDER]);
    let mut drv = DriverQueue::new(mem, addrs, true)?.with_in_order(true);
    let mut dev = DeviceQueue::new(mem, addrs, feats)?;
    let bufs: Vec<u64> = (0..256)
        .map(|_| g.alloc((H + FRAME) as u64).ok_or("oom"))
        .collect::<Result<_, _>>()?;
    let mem = &g.mem;
    let mut f = vec![0u8; H + FRAME];
    frame::fill(&mut f[H..], 0, 0);
    let mut stamp_off = Vec::new();
    for &b in &bufs {
        mem.write_gpa(b, &f)?;
        stamp_off.push(mem.translate(b + (H + frame::SEQ_OFFSET) as u64, 16)?.off);
    }
    let mut slot_of = vec![0u32; 256];
    let mut free: std::collections::VecDeque<u32> = (0..256).collect();
    let mut backend = NullBackend::new(NullMode::Sink, false);
    let mut sent = TxResult::default();
    let mut batch = TxBatch::new(BATCH);
    let (mut t_guest, mut t_dev) = (0u128, 0u128);
    let mut seq = 0u64;
    while seq < packets {
        let t0 = Instant::now();
        // Guest: reap what came back, post a batch, publish.
        drv.reap(mem, |u| free.push_back(slot_of[u.id as usize]))?;
        for _ in 0..BATCH {
            let Some(slot) = free.pop_front() else { break };
            mem.write_u64_pair(stamp_off[slot as usize], seq, 0)?;
            let head = drv.add_one(mem, Buf::read(bufs[slot as usize], (H + FRAME) as u32))?;
            slot_of[head as usize] = slot;
            seq += 1;
        }
        black_box(drv.publish(mem)?);
        let t1 = Instant::now();
        // Device: one batch.
        if let Some(e) = batch.pop(&mut dev, mem, BATCH) {
            return Err(e.into());
        }
        backend.send(mem, batch.chains(), &mut sent)?;
        black_box(&sent);
        batch.complete(&mut dev, mem)?;
        black_box(dev.needs_notification(mem));
        let t2 = Instant::now();
        t_guest += (t1 - t0).as_nanos();
        t_dev += (t2 - t1).as_nanos();
    }
    let s = backend.stats();
    println!("{s:?}");
    println!(
        "guest {:.1} ns/pkt, device {:.1} ns/pkt over {packets} packets",
        t_guest as f64 / packets as f64,
        t_dev as f64 / packets as f64
    );
    Ok(())
}
