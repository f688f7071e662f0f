//! `tx_path`: the worker's whole TX path and the guest driver's, per 64-byte frame, on one
//! thread (no cross-core traffic: the instruction cost alone, which a shared VM measures far
//! more steadily than a two-thread run).
//!
//! Each round, the guest driver (`guest_sim::DriverQueue`) stamps and posts a batch of 64
//! one-descriptor frames and publishes them; the device takes them as the worker does
//! (`TxBatch::pop` → null sink `Backend::send` → `TxBatch::complete` → interrupt decision);
//! the guest reaps them. `iter_custom` times one side and runs the other untimed, so:
//!
//! - `device/<features>`: pop + checks + copy-out + order check + used ring, per frame;
//! - `guest/<features>`: stamp + post + publish (with its fence) + reap, per frame;
//!
//! with `VIRTIO_F_IN_ORDER` on (`in_order`, one used element per batch) and off (`per_elem`).
//! The null sink's order check counts every frame; the bench fails if any arrives out of order.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
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
const QUEUE: u16 = 256;

struct Rig {
    g: MockGuest,
    drv: DriverQueue,
    dev: DeviceQueue,
    bufs: Vec<u64>,
    stamp_off: Vec<usize>,
    backend: NullBackend,
    sent: TxResult,
    batch: TxBatch,
    seq: u64,
}

impl Rig {
    fn new(in_order: bool) -> Rig {
        let mut g = MockGuest::new(4 << 20, &[QUEUE]).expect("guest");
        let addrs = g.queues[0];
        let feats =
            Features::of(&[bit::RING_EVENT_IDX, bit::VERSION_1]).with(bit::IN_ORDER, in_order);
        let drv = DriverQueue::new(&g.mem, addrs, true)
            .expect("driver")
            .with_in_order(in_order);
        let dev = DeviceQueue::new(&g.mem, addrs, feats).expect("device");
        let bufs: Vec<u64> = (0..QUEUE)
            .map(|_| g.alloc((H + FRAME) as u64).expect("buffer"))
            .collect();
        let mut f = vec![0u8; H + FRAME];
        frame::fill(&mut f[H..], 0, 0);
        let mut stamp_off = Vec::new();
        for &b in &bufs {
            g.mem.write_gpa(b, &f).expect("frame");
            let at = b + (H + frame::SEQ_OFFSET) as u64;
            stamp_off.push(g.mem.translate(at, 16).expect("stamp").off);
        }
        Rig {
            g,
            drv,
            dev,
            bufs,
            stamp_off,
            backend: NullBackend::new(NullMode::Sink, false),
            sent: TxResult::default(),
            batch: TxBatch::new(BATCH),
            seq: 0,
        }
    }

    /// The guest's half: reap what came back, stamp and post a batch (one buffer per
    /// descriptor), publish.
    fn guest(&mut self) {
        let mem = &self.g.mem;
        self.drv.reap(mem, |_| {}).expect("reap");
        for _ in 0..BATCH {
            let head = self.drv.next_free_head().expect("a free descriptor") as usize;
            mem.write_u64_pair(self.stamp_off[head], self.seq, 0)
                .expect("stamp");
            self.drv
                .add_one(mem, Buf::read(self.bufs[head], (H + FRAME) as u32))
                .expect("post");
            self.seq += 1;
        }
        black_box(self.drv.publish(mem).expect("publish"));
    }

    /// The device's half, as the worker's `handle_tx` runs it.
    fn device(&mut self) {
        let mem = &self.g.mem;
        assert!(
            self.batch.pop(&mut self.dev, mem, BATCH).is_none(),
            "queue error"
        );
        assert_eq!(self.batch.len(), BATCH, "the guest posted a whole batch");
        self.backend
            .send(mem, self.batch.chains(), &mut self.sent)
            .expect("send");
        black_box(&self.sent);
        self.batch.complete(&mut self.dev, mem).expect("complete");
        black_box(self.dev.needs_notification(mem));
    }

    fn check(&self) {
        let s = self.backend.stats();
        let get = |k| s.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        assert_eq!(get("tx_out_of_order"), Some(0), "{s:?}");
        assert_eq!(get("tx_in_order"), Some(self.seq), "{s:?}");
    }
}

fn tx_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("tx_path");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, in_order) in [("in_order", true), ("per_elem", false)] {
        g.bench_function(BenchmarkId::new("device", name), |b| {
            let mut r = Rig::new(in_order);
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    r.guest();
                    let t0 = Instant::now();
                    r.device();
                    t += t0.elapsed();
                }
                t
            });
            r.check();
        });
        g.bench_function(BenchmarkId::new("guest", name), |b| {
            let mut r = Rig::new(in_order);
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    r.guest();
                    t += t0.elapsed();
                    r.device();
                }
                t
            });
            r.check();
        });
    }
    g.finish();
}

criterion_group!(benches, tx_path);
criterion_main!(benches);
