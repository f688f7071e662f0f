//! The request/response path, both sides, on one thread, in the order a busy-polling run takes
//! it: the guest stamps and posts one 64-byte frame, the device pops it, the reflecting null
//! backend copies it out and hands it back on RX, the device writes it into the guest's next
//! RX buffer, publishes both used rings and decides on interrupts, the guest reaps the response
//! and reposts its buffer. Prints ns per transaction. No cross-core traffic: the instruction
//! cost alone, for `valgrind --tool=callgrind`.
//!
//! `cargo run --release -p engine --example rrpath [transactions]`

use std::hint::black_box;
use std::sync::atomic::{fence, Ordering};
use std::time::Instant;

use engine::backend::null::{NullBackend, NullMode};
use engine::backend::{Backend, TxResult};
use engine::net::rx::{Gather, RxWriter};
use engine::net::tx::TxBatch;
use engine::virtq::DeviceQueue;
use guest_sim::driver::{Buf, DriverQueue};
use guest_sim::mock::MockGuest;
use vring::frame;
use vring::net::{bit, Features, VirtioNetHdr};

const H: usize = VirtioNetHdr::SIZE;
const FRAME: usize = 64;
const Q: u16 = 256;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    // Queue 0 RX, queue 1 TX, as in the harness.
    let mut g = MockGuest::new(8 << 20, &[Q, Q])?;
    let (rxa, txa) = (g.queues[0], g.queues[1]);
    let feats = Features::of(&[bit::RING_EVENT_IDX, bit::VERSION_1, bit::IN_ORDER]);
    let tx_bufs: Vec<u64> = (0..Q)
        .map(|_| g.alloc((H + FRAME) as u64).ok_or("oom"))
        .collect::<Result<_, _>>()?;
    let rx_len = (H + 1514) as u32;
    let rx_bufs: Vec<u64> = (0..Q)
        .map(|_| g.alloc(rx_len as u64).ok_or("oom"))
        .collect::<Result<_, _>>()?;
    let mem = &g.mem;
    let mut txd = DriverQueue::new(mem, txa, true)?.with_in_order(true);
    let mut rxd = DriverQueue::new(mem, rxa, true)?.with_in_order(true);
    let mut txq = DeviceQueue::new(mem, txa, feats)?;
    let mut rxq = DeviceQueue::new(mem, rxa, feats)?;
    let mut f = vec![0u8; H + FRAME];
    frame::fill(&mut f[H..], 0, 0);
    let mut stamp_off = Vec::new();
    for &b in &tx_bufs {
        mem.write_gpa(b, &f)?;
        stamp_off.push(mem.translate(b + (H + frame::SEQ_OFFSET) as u64, 16)?.off);
    }
    let mut rx_slot = vec![0u32; Q as usize];
    for (i, &b) in rx_bufs.iter().enumerate() {
        let head = rxd.add_one(mem, Buf::write(b, rx_len))?;
        rx_slot[head as usize] = i as u32;
    }
    rxd.publish(mem)?;
    txd.disable_interrupts(mem)?;
    rxd.disable_interrupts(mem)?;
    let mut backend = NullBackend::new(NullMode::Reflect { capacity: 256 }, false);
    let mut sent = TxResult::default();
    let mut tx = TxBatch::new(64);
    let mut rxw = RxWriter::new(false);
    let mut refill: Vec<u32> = Vec::new();
    let mut frame_buf = vec![0u8; 2048];
    let mut expect = 0u64;
    let mut t_dev = 0u128;
    let mut t_empty = 0u128;
    for _ in 0..n {
        let td = Instant::now();
        t_empty += black_box(td).elapsed().as_nanos();
    }
    let t0 = Instant::now();
    for seq in 0..n {
        // Guest: reap TX, stamp, post, publish (with its kick decision).
        txd.reap(mem, |_| {})?;
        let head = txd.next_free_head().ok_or("tx ring full")? as usize;
        mem.write_u64_pair(stamp_off[head], seq, 0)?;
        txd.add_one(mem, Buf::read(tx_bufs[head], (H + FRAME) as u32))?;
        black_box(txd.publish(mem)?);

        // Device, as a busy-polling worker takes it: the next RX buffer is popped while it
        // spins (`RxWriter::prepare`, untimed), then handle_tx and handle_rx up to the RX
        // `used.idx` store are timed: the part between a request and its response. The TX
        // completion and the interrupt decisions come after it, untimed.
        rxw.prepare(&mut rxq, mem)?;
        let td = Instant::now();
        txq.disable_notifications(mem);
        if let Some(e) = tx.pop(&mut txq, mem, 64) {
            return Err(e.into());
        }
        backend.send(mem, tx.chains(), &mut sent)?;
        black_box(&sent);
        rxq.disable_notifications(mem);
        while let Some(len) = backend.rx_peek() {
            match rxw.gather(&mut rxq, mem, len)? {
                Gather::Ready => {}
                _ => return Err("no RX buffer".into()),
            }
            let w = backend.rx_recv(mem, rxw.iov())?;
            rxw.commit(&mut rxq, mem, w)?;
        }
        rxq.publish_used(mem)?;
        t_dev += td.elapsed().as_nanos();
        tx.complete(&mut txq, mem)?;
        fence(Ordering::SeqCst);
        black_box(rxq.needs_notification_fenced(mem));
        black_box(txq.needs_notification_fenced(mem));

        // Guest: reap the response and check it.
        let u = rxd.pop_used(mem)?.ok_or("no response")?;
        let slot = rx_slot[u.id as usize];
        let gpa = rx_bufs[slot as usize];
        let mut hdr = [0u8; H];
        mem.read_gpa(gpa, &mut hdr)?;
        let len = (u.len as usize).saturating_sub(H).min(frame_buf.len());
        mem.read_gpa(gpa + H as u64, &mut frame_buf[..len])?;
        if frame::seq(&frame_buf[..len]) != Some(expect) {
            return Err(format!("transaction {seq}: wrong response").into());
        }
        expect += 1;
        refill.push(slot);
        if refill.len() >= (Q / 2) as usize {
            for s in refill.drain(..) {
                let head = rxd.add_one(mem, Buf::write(rx_bufs[s as usize], rx_len))?;
                rx_slot[head as usize] = s;
            }
            rxd.publish(mem)?;
        }
    }
    let ns = t0.elapsed().as_nanos() as f64 / n as f64;
    println!("{n} transactions: {ns:.1} ns each (guest and device, one thread)");
    let dev = (t_dev as f64 - t_empty as f64) / n as f64;
    println!(
        "device part, request to response: {dev:.1} ns (clock pair {:.1} ns subtracted)",
        t_empty as f64 / n as f64
    );
    Ok(())
}
