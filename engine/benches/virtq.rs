//! `split_pop_used`: the device's per-chain hot path on a split virtqueue, per batch of chains:
//! pop a chain, walk all its descriptors into segments, add a used element; then publish
//! `used.idx` once per batch.
//!
//! Three implementations on the same ring layout (queue size 256 at
//! `QueueAddrs::packed(0, 256)`, the same descriptors, the same buffer addresses, event idx on,
//! no indirect):
//!
//! - `ours`: `engine::virtq::DeviceQueue::{pop, add_used, publish_used}` with one reused
//!   `Chain` (the walk into segments happens inside `pop`).
//! - `virtio-queue`: rust-vmm `Queue::pop_descriptor_chain`, iterating the `DescriptorChain`
//!   and translating each descriptor with `GuestMemoryBackend::get_slice` into a reused
//!   `Vec<VolatileSlice>` (what `virtio_queue::Reader::new` does, minus its per-chain
//!   `VecDeque`), then `Queue::add_used`. Its memory is a `GuestMemoryMmap` of its own holding a
//!   byte-for-byte copy of ours. Note: virtio-queue has no separate publish; `add_used` stores
//!   `used.idx` (Release) on every call, and `pop_descriptor_chain` loads `avail.idx` (Acquire)
//!   on every call. That is its API, and part of what is measured.
//! - `plain_loop`: the lower bound — plain loads of the same avail entries and descriptors from
//!   a `Vec<u8>` copy of the same bytes, segments as `(addr, len)`, used entries written, no
//!   validation.
//!
//! Shapes: `1desc` (one 64-byte device-readable buffer) and `2desc` (a 12-byte virtio-net
//! header + a 64-byte payload linked with `NEXT`). Batches: 1, 16, 256 chains.
//!
//! The ring is posted once: the descriptor table and all 256 avail slots are written when the
//! fixture is built. With 2 descriptors per chain the 256-entry table holds 128 chains, so avail
//! slot `s` names head `2 * (s % 128)`; a batch of 256 therefore walks each 2-descriptor chain
//! twice (the device does not — and cannot — tell). Each iteration's (untimed) setup stores
//! `avail.idx = batch` and builds a fresh queue state (next_avail = next_used = 0), so every
//! timed batch consumes avail slots `0..batch`. The routines only write the used ring, which
//! nothing reads back, so setups may be prepared ahead of the routines (`BatchSize::SmallInput`).
//!
//! Every routine counts its pops; after each benchmark the total is checked against
//! `batch * routine calls`, so an empty ring cannot be measured by accident.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::Ordering;

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use engine::virtq::{Chain, DeviceQueue};
use guest_sim::mock::MockGuest;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vring::layout::{self, avail, used, Descriptor, QueueAddrs};
use vring::net::{bit, Features};
use vring::GuestMemory;

/// Queue size for every variant.
const QUEUE_SIZE: u16 = 256;
/// Guest memory per fixture: the rings (< 7 KiB) and 256 buffer slots of 128 bytes.
const MEM_BYTES: u64 = 64 * 1024;
/// Guest-physical base of the buffers; descriptor `i` points at `BUF_BASE + i * BUF_STRIDE`.
const BUF_BASE: u64 = 0x4000;
/// Distance between two descriptors' buffers.
const BUF_STRIDE: u64 = 128;
/// virtio-net header (`virtio_net_hdr_v1`) length.
const NET_HDR_LEN: u32 = 12;
/// Payload / single-buffer length.
const PAYLOAD_LEN: u32 = 64;
/// Batches of chains per measured iteration.
const BATCHES: [u16; 3] = [1, 16, 256];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One 64-byte buffer.
    OneDesc,
    /// 12-byte net header -> 64-byte payload.
    TwoDesc,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::OneDesc => "1desc",
            Shape::TwoDesc => "2desc",
        }
    }

    fn descs_per_chain(self) -> u16 {
        match self {
            Shape::OneDesc => 1,
            Shape::TwoDesc => 2,
        }
    }

    fn chain_len(self) -> u32 {
        match self {
            Shape::OneDesc => PAYLOAD_LEN,
            Shape::TwoDesc => NET_HDR_LEN + PAYLOAD_LEN,
        }
    }
}

/// One shape's ring, posted once, in the three memories.
struct Fixture {
    shape: Shape,
    addrs: QueueAddrs,
    /// Ours: the memfd-backed guest.
    guest: MockGuest,
    /// virtio-queue's own mapping, with the same bytes at the same guest addresses.
    vm: GuestMemoryMmap<()>,
    /// The plain loop's copy of the same bytes (guest-physical address == index).
    bytes: Vec<u8>,
}

impl Fixture {
    fn new(shape: Shape) -> Self {
        let guest = MockGuest::new(MEM_BYTES, &[QUEUE_SIZE]).expect("mock guest");
        let addrs = guest.queues[0];
        let (expected, ring_len) = QueueAddrs::packed(0, QUEUE_SIZE);
        assert_eq!(
            addrs, expected,
            "MockGuest places queue 0 at packed(0, 256)"
        );
        assert!(ring_len <= BUF_BASE, "buffers must not overlap the rings");
        assert!(BUF_BASE + QUEUE_SIZE as u64 * BUF_STRIDE <= MEM_BYTES);

        // The descriptor table: `QUEUE_SIZE / descs_per_chain` chains, each in consecutive
        // table entries, each descriptor with its own buffer.
        let per = shape.descs_per_chain();
        for i in 0..QUEUE_SIZE {
            let addr = BUF_BASE + i as u64 * BUF_STRIDE;
            let d = match (shape, i % per) {
                (Shape::OneDesc, _) | (Shape::TwoDesc, 1) => Descriptor {
                    addr,
                    len: PAYLOAD_LEN,
                    flags: 0,
                    next: 0,
                },
                (Shape::TwoDesc, _) => Descriptor {
                    addr,
                    len: NET_HDR_LEN,
                    flags: layout::VIRTQ_DESC_F_NEXT,
                    next: i + 1,
                },
            };
            guest.write_desc(0, i, d).expect("write descriptor");
        }
        // Every avail slot names a chain head; with 2-descriptor chains the 128 chains appear
        // twice around the ring.
        let chains = QUEUE_SIZE / per;
        for slot in 0..QUEUE_SIZE {
            guest
                .write_avail_slot(0, slot, (slot % chains) * per)
                .expect("write avail slot");
        }
        guest.set_avail_idx(0, 0).expect("avail.idx");

        let mut bytes = vec![0u8; MEM_BYTES as usize];
        guest
            .mem
            .read_gpa(0, &mut bytes)
            .expect("copy guest memory");
        let vm = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_BYTES as usize)])
            .expect("vm-memory mapping");
        vm.write_slice(&bytes, GuestAddress(0))
            .expect("copy into vm-memory mapping");

        Fixture {
            shape,
            addrs,
            guest,
            vm,
            bytes,
        }
    }

    fn mem(&self) -> &GuestMemory {
        &self.guest.mem
    }

    /// Posts `batch` chains: `avail.idx = batch` in every copy.
    fn post(&mut self, batch: u16) {
        self.guest.set_avail_idx(0, batch).expect("avail.idx");
        self.vm
            .store(
                batch.to_le(),
                GuestAddress(self.addrs.avail + avail::IDX),
                Ordering::Release,
            )
            .expect("vm avail.idx");
        let at = (self.addrs.avail + avail::IDX) as usize;
        self.bytes[at..at + 2].copy_from_slice(&batch.to_le_bytes());
    }

    /// A fresh device queue: event idx on, no indirect.
    fn ours_queue(&self) -> DeviceQueue {
        DeviceQueue::new(self.mem(), self.addrs, Features::of(&[bit::RING_EVENT_IDX]))
            .expect("device queue")
    }

    /// A fresh rust-vmm queue at the same addresses: event idx on (it never follows indirect
    /// descriptors unless the table has them, and ours has none).
    fn vq_queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("virtio-queue");
        q.set_size(QUEUE_SIZE);
        q.try_set_desc_table_address(GuestAddress(self.addrs.desc))
            .expect("desc address");
        q.try_set_avail_ring_address(GuestAddress(self.addrs.avail))
            .expect("avail address");
        q.try_set_used_ring_address(GuestAddress(self.addrs.used))
            .expect("used address");
        q.set_event_idx(true);
        q.set_ready(true);
        q
    }
}

/// Ours: pop + walk (inside `pop`) + add_used per chain, one publish per batch.
/// Returns the chains popped.
#[inline(never)]
fn ours_batch(q: &mut DeviceQueue, mem: &GuestMemory, chain: &mut Chain, batch: u16) -> u32 {
    let mut n = 0;
    for _ in 0..batch {
        if !q.pop(mem, chain).expect("pop") {
            break;
        }
        black_box(chain.readable());
        q.add_used(mem, chain.head(), chain.readable_len())
            .expect("add_used");
        n += 1;
    }
    q.publish_used(mem).expect("publish");
    n
}

/// virtio-queue: pop_descriptor_chain + iterate its descriptors into slices + add_used
/// (which also publishes `used.idx`). Returns the chains popped.
#[inline(never)]
fn vq_batch<'m>(
    q: &mut Queue,
    mem: &'m GuestMemoryMmap<()>,
    segs: &mut Vec<VolatileSlice<'m, ()>>,
    batch: u16,
) -> u32 {
    let mut n = 0;
    for _ in 0..batch {
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        segs.clear();
        let mut total: u32 = 0;
        for d in chain {
            // The chain iterator already stops on a 32-bit length overflow.
            total = total.wrapping_add(d.len());
            segs.push(
                mem.get_slice(d.addr(), d.len() as usize)
                    .expect("buffer in guest memory"),
            );
        }
        black_box(&segs[..]);
        q.add_used(mem, head, total).expect("add_used");
        n += 1;
    }
    n
}

/// Byte offsets of the rings in the plain copy (guest-physical address == index).
#[derive(Clone, Copy)]
struct PlainRing {
    desc: usize,
    avail: usize,
    used: usize,
    mask: u16,
}

/// The plain loop: same bytes, plain loads, no validation. Returns the chains "popped".
#[inline(never)]
fn plain_batch(r: PlainRing, bytes: &mut [u8], segs: &mut Vec<(u64, u32)>, batch: u16) -> u32 {
    let mut n = 0;
    for i in 0..batch {
        let slot = r.avail + avail::ring(i & r.mask) as usize;
        let head = u16::from_le_bytes([bytes[slot], bytes[slot + 1]]);
        segs.clear();
        let mut total: u32 = 0;
        let mut idx = head;
        loop {
            let at = r.desc + idx as usize * Descriptor::SIZE;
            let mut raw = [0u8; 16];
            raw.copy_from_slice(&bytes[at..at + Descriptor::SIZE]);
            let d = Descriptor::from_bytes(raw);
            segs.push((d.addr, d.len));
            total = total.wrapping_add(d.len);
            if !d.has_next() {
                break;
            }
            idx = d.next;
        }
        black_box(&segs[..]);
        let u = r.used + used::ring(i & r.mask) as usize;
        bytes[u..u + 4].copy_from_slice(&u32::from(head).to_le_bytes());
        bytes[u + 4..u + 8].copy_from_slice(&total.to_le_bytes());
        n += 1;
    }
    let at = r.used + used::IDX as usize;
    bytes[at..at + 2].copy_from_slice(&batch.to_le_bytes());
    n
}

/// Runs each variant once, outside any timing, and checks what it did.
fn verify(f: &mut Fixture, batch: u16) {
    let expect_segs = f.shape.descs_per_chain() as usize;
    let expect_len = f.shape.chain_len();

    f.post(batch);
    let mut q = f.ours_queue();
    let mut chain = Chain::with_capacity(16);
    for _ in 0..batch {
        assert!(q.pop(f.mem(), &mut chain).expect("pop"), "ours: ring empty");
        assert_eq!(chain.readable().len(), expect_segs);
        assert_eq!(chain.readable_len(), expect_len);
        q.add_used(f.mem(), chain.head(), chain.readable_len())
            .expect("add_used");
    }
    assert!(
        !q.pop(f.mem(), &mut chain).expect("pop"),
        "ours: popped too many"
    );
    q.publish_used(f.mem()).expect("publish");
    assert_eq!(f.guest.used_idx(0).expect("used.idx"), batch);

    let mut q = f.vq_queue();
    for _ in 0..batch {
        let chain = q
            .pop_descriptor_chain(&f.vm)
            .expect("virtio-queue: ring empty");
        let head = chain.head_index();
        let descs: Vec<_> = chain.collect();
        assert_eq!(descs.len(), expect_segs);
        assert_eq!(descs.iter().map(|d| d.len()).sum::<u32>(), expect_len);
        assert!(descs.iter().all(|d| !d.is_write_only()));
        q.add_used(&f.vm, head, expect_len).expect("add_used");
    }
    assert!(
        q.pop_descriptor_chain(&f.vm).is_none(),
        "virtio-queue: popped too many"
    );
    assert_eq!(
        q.used_idx(&f.vm, Ordering::Acquire).expect("used.idx").0,
        batch
    );
}

fn bench_shape(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, shape: Shape) {
    let mut f = Fixture::new(shape);
    let name = shape.name();
    for batch in BATCHES {
        verify(&mut f, batch);
        f.post(batch);
        g.throughput(Throughput::Elements(batch as u64));

        // Pops counted over every timed call, checked after each benchmark.
        let popped = Cell::new(0u64);
        let calls = Cell::new(0u64);
        let check = |who: &str| {
            assert_eq!(
                popped.get(),
                calls.get() * batch as u64,
                "{who}/{name}/{batch}: some pops found an empty ring"
            );
            popped.set(0);
            calls.set(0);
        };

        {
            let f = &f;
            let mut chain = Chain::with_capacity(16);
            g.bench_with_input(
                BenchmarkId::new(format!("ours/{name}"), batch),
                &batch,
                |b, &batch| {
                    // By reference: the timed routine does the ring work, not a move of the
                    // queue struct in and out (the same for both implementations).
                    b.iter_batched_ref(
                        || f.ours_queue(),
                        |q| {
                            let n = ours_batch(q, f.mem(), &mut chain, batch);
                            popped.set(popped.get() + n as u64);
                            calls.set(calls.get() + 1);
                        },
                        BatchSize::SmallInput,
                    )
                },
            );
        }
        check("ours");

        {
            let f = &f;
            let mut segs: Vec<VolatileSlice<'_, ()>> = Vec::with_capacity(16);
            g.bench_with_input(
                BenchmarkId::new(format!("virtio-queue/{name}"), batch),
                &batch,
                |b, &batch| {
                    b.iter_batched_ref(
                        || f.vq_queue(),
                        |q| {
                            let n = vq_batch(q, &f.vm, &mut segs, batch);
                            popped.set(popped.get() + n as u64);
                            calls.set(calls.get() + 1);
                        },
                        BatchSize::SmallInput,
                    )
                },
            );
        }
        check("virtio-queue");

        {
            let r = PlainRing {
                desc: f.addrs.desc as usize,
                avail: f.addrs.avail as usize,
                used: f.addrs.used as usize,
                mask: QUEUE_SIZE - 1,
            };
            let bytes = &mut f.bytes;
            let mut segs: Vec<(u64, u32)> = Vec::with_capacity(16);
            g.bench_with_input(
                BenchmarkId::new(format!("plain_loop/{name}"), batch),
                &batch,
                |b, &batch| {
                    b.iter_batched(
                        || (),
                        |()| {
                            let n = plain_batch(r, bytes, &mut segs, batch);
                            popped.set(popped.get() + n as u64);
                            calls.set(calls.get() + 1);
                        },
                        BatchSize::SmallInput,
                    )
                },
            );
        }
        check("plain_loop");
    }
}

fn split_pop_used(c: &mut Criterion) {
    let mut g = c.benchmark_group("split_pop_used");
    for shape in [Shape::OneDesc, Shape::TwoDesc] {
        bench_shape(&mut g, shape);
    }
    g.finish();
}

criterion_group!(benches, split_pop_used);
criterion_main!(benches);
