//! The RX per-packet path, both sides, on one thread: the device delivers a batch of 64-byte
//! frames from the null source into the guest's posted buffers and publishes them, the guest
//! reaps them, reads each frame out, and reposts the buffers. Prints ns per packet for each
//! side. No cross-core traffic: this is the instruction cost alone, the figure to run under
//! `valgrind --tool=callgrind` for repeatable counts (the RX twin of `txpath`).
//!
//! `cargo run --release -p engine --example rxpath [packets]`

use std::hint::black_box;
use std::time::Instant;

use engine::backend::null::{NullBackend, NullMode};
use engine::backend::Backend;
use engine::net::rx::{Gather, RxWriter};
use engine::virtq::DeviceQueue;
use guest_sim::driver::{Buf, DriverQueue};
use guest_sim::mock::MockGuest;
use vring::frame;
use vring::net::{bit, Features, VirtioNetHdr};

const H: usize = VirtioNetHdr::SIZE;
const FRAME: usize = 64;
const BATCH: usize = 64;
const RING: u16 = 256;
const BUF: u32 = 2048;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let packets: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000_000);
    let mut g = MockGuest::new(4 << 20, &[RING])?;
    let addrs = g.queues[0];
    let feats = Features::of(&[
        bit::RING_EVENT_IDX,
        bit::VERSION_1,
        bit::IN_ORDER,
        bit::MRG_RXBUF,
    ]);
    let bufs: Vec<u64> = (0..RING)
        .map(|_| g.alloc(BUF as u64).ok_or("oom"))
        .collect::<Result<_, _>>()?;
    let mem = &g.mem;
    let mut drv = DriverQueue::new(mem, addrs, true)?.with_in_order(true);
    let mut dev = DeviceQueue::new(mem, addrs, feats)?;
    let offs: Vec<usize> = bufs
        .iter()
        .map(|&b| mem.translate(b, BUF as u64).map(|s| s.off))
        .collect::<Result<_, _>>()?;
    let mut slot_of = vec![0u32; RING as usize];
    for (slot, &b) in bufs.iter().enumerate() {
        let head = drv.add_one(mem, Buf::write(b, BUF))?;
        slot_of[head as usize] = slot as u32;
    }
    drv.publish(mem)?;
    let mut backend = NullBackend::new(NullMode::Source { frame_len: FRAME }, false);
    let mut rxw = RxWriter::with_batch(true, BATCH);
    let mut fb = [0u8; H + FRAME];
    let mut refill = Vec::with_capacity(RING as usize);
    let (mut t_guest, mut t_dev) = (0u128, 0u128);
    let (mut delivered, mut received, mut bad) = (0u64, 0u64, 0u64);
    while received < packets {
        let t0 = Instant::now();
        // Device: one batch, then publish.
        for _ in 0..BATCH {
            let Some(len) = backend.rx_peek() else { break };
            if rxw.gather(&mut dev, mem, len)? != Gather::Ready {
                break;
            }
            let n = backend.rx_recv(mem, rxw.iov())?;
            rxw.commit(&mut dev, mem, n)?;
            delivered += 1;
        }
        dev.publish_used(mem)?;
        black_box(dev.needs_notification(mem));
        let t1 = Instant::now();
        // Guest: reap, read each frame out, repost once half the ring is back.
        while let Some(u) = drv.pop_used(mem)? {
            let slot = slot_of[u.id as usize] as usize;
            let n = (u.len as usize).min(fb.len());
            mem.read_at(offs[slot], &mut fb[..n])?;
            if frame::stamps(&fb[H..n]).is_none() {
                bad += 1;
            }
            refill.push(slot);
            received += 1;
        }
        if refill.len() >= RING as usize / 2 {
            for slot in refill.drain(..) {
                let head = drv.add_one(mem, Buf::write(bufs[slot], BUF))?;
                slot_of[head as usize] = slot as u32;
            }
            black_box(drv.publish(mem)?);
        }
        let t2 = Instant::now();
        t_dev += (t1 - t0).as_nanos();
        t_guest += (t2 - t1).as_nanos();
    }
    println!("delivered {delivered}, received {received}, not test frames {bad}");
    println!(
        "guest {:.1} ns/pkt, device {:.1} ns/pkt over {received} packets",
        t_guest as f64 / received as f64,
        t_dev as f64 / received as f64
    );
    Ok(())
}
