//! Every `unsafe` of AF_XDP: the socket and its options, `bind`, the `mmap`s of the UMEM and
//! the four rings, the ring accessors and the `sendto` kick. The rest of the backend is safe
//! code over [`Xsk`] and [`Chunk`].
//!
//! # Who may touch a UMEM chunk
//!
//! The UMEM is memory shared with the kernel: it writes received frames into chunks posted on
//! the fill ring and reads frames out of chunks posted on the TX ring. A chunk is ours again
//! once it comes back on the RX ring or the completion ring. That ownership is a value here:
//! a [`Chunk`] is a token that only this module creates (once per chunk at set-up, and when the
//! kernel hands a chunk back on a ring), that is not `Clone`, and that posting to the fill or
//! TX ring consumes. [`Xsk::chunk_mut`] and [`Xsk::chunk_bytes`] borrow a chunk's bytes only through
//! its token, so safe code can never form a reference to bytes the kernel may be writing (the
//! rule of vm-memory's volatile views, kept by the protocol of the rings instead of volatile
//! accesses). What the kernel hands back is trusted to be an address it was given (it is the
//! kernel), but is still checked to lie inside the UMEM before a token is made of it.
//!
//! # Ring indices
//!
//! Each ring is a power-of-two array with a producer and a consumer index, free-running `u32`s
//! masked on use. Our side of each index lives in a local copy and is published once per
//! batch; the kernel's side is read with Acquire (see each accessor for the race it closes),
//! matching the `smp_load_acquire` / `smp_store_release` pairs of the kernel's
//! `net/xdp/xsk_queue.h`.

use std::io;
use std::marker::PhantomData;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// `SOL_XDP` (linux/socket.h).
const SOL_XDP: libc::c_int = 283;
/// Socket options of `SOL_XDP` (linux/if_xdp.h).
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
/// Descriptors the kernel sends per `sendto` in copy mode (Linux 6.17+; 32 before, fixed).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// `bind` flag: copy mode (the kernel copies between its buffers and the UMEM).
const XDP_COPY: u16 = 1 << 1;
/// mmap page offsets of the rings.
const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;

/// `struct xdp_desc`: one RX or TX descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpDesc {
    /// UMEM address of the frame (in aligned mode: chunk base plus an offset).
    pub addr: u64,
    /// Frame length.
    pub len: u32,
    /// Flags (`XDP_PKT_CONTD`); zero here.
    pub options: u32,
}

/// `struct xdp_umem_reg` (v2 and later: 32 bytes).
#[repr(C)]
#[derive(Debug, Default)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

/// `struct xdp_ring_offset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

/// `struct xdp_mmap_offsets`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

/// `struct sockaddr_xdp`.
#[repr(C)]
#[derive(Debug, Default)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// `struct xdp_statistics`: the kernel's drop counters of one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Frames dropped for reasons other than the ones below.
    pub rx_dropped: u64,
    /// RX descriptors the kernel found invalid.
    pub rx_invalid_descs: u64,
    /// TX descriptors the kernel found invalid (bad address or length).
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Frames dropped because the fill ring was empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the TX ring was found empty.
    pub tx_ring_empty_descs: u64,
}

/// Opens an `AF_XDP` socket (`SOCK_RAW`, non-blocking, close-on-exec). Needs `CAP_NET_RAW`:
/// the privileged half of the set-up, done by whoever opens the socket (the harness).
pub fn open_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments; the returned fd is checked, then owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_XDP,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: BorrowedFd<'_>, opt: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live, initialised `T` of exactly `size_of::<T>()` bytes, which
    // the kernel only reads during the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            opt,
            (val as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getsockopt` of a plain-data `T` (every bit pattern valid); an error unless the kernel
/// filled it entirely.
fn getsockopt<T: Default>(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<T> {
    let mut val = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is a live `T` of `len` bytes the kernel may write during the call; the `T`s
    // used here are `#[repr(C)]` structs of integers, valid for any bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            opt,
            (&mut val as *mut T).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<T>() {
        return Err(io::Error::other(format!(
            "getsockopt({opt}) gave {len} bytes, expected {}",
            size_of::<T>()
        )));
    }
    Ok(val)
}

/// One `mmap`ed range, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a mapping is an address range; which thread unmaps it does not matter, and every
// access to its contents goes through `&`/`&mut` of the types that own it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Private anonymous memory of `len` bytes, populated (the UMEM).
    fn anon(len: usize) -> io::Result<Mapping> {
        // SAFETY: a new anonymous mapping overlaps nothing; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::checked(p, len)
    }

    /// The ring of `fd` at page offset `off`, `len` bytes, shared with the kernel.
    fn ring(fd: BorrowedFd<'_>, off: libc::off_t, len: usize) -> io::Result<Mapping> {
        // SAFETY: a new shared mapping of the socket's ring (the kernel checks `off` and
        // `len` against the ring it allocated); overlaps nothing; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                off,
            )
        };
        Self::checked(p, len)
    }

    fn checked(p: *mut libc::c_void, len: usize) -> io::Result<Mapping> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` is a mapping this value created and nobody else unmaps; every
        // pointer into it is held by the value that owns this one and dies with it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A UMEM chunk we own: the kernel holds no reference to it (not posted on the fill or TX
/// ring, or handed back on the RX or completion ring). Made only by this module; posting it
/// consumes it. Dropping one leaks the chunk (the backend's accounting shows it).
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of the chunk in the UMEM (a multiple of the chunk size).
    base: u64,
}

impl Chunk {
    /// Its UMEM address.
    pub fn addr(&self) -> u64 {
        self.base
    }
}

/// Ring element types: plain data, valid for any bytes.
trait RingElem: Copy {}
impl RingElem for u64 {}
impl RingElem for XdpDesc {}

/// One of the four rings, mapped from the socket. We produce into fill and TX and consume from
/// RX and completion; the index we own is kept in `local` and published explicitly.
#[derive(Debug)]
struct Ring<T> {
    /// What the pointers below point into; unmapped when the ring is dropped.
    _map: Mapping,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
    /// Our index: the next slot we produce into, or consume from (free-running).
    local: u32,
    /// The kernel's index as last read (its consumer for our producer rings, its producer for
    /// our consumer rings), refreshed only when the cached value runs out.
    cached: u32,
    _t: PhantomData<T>,
}

// SAFETY: the ring's pointers point into `map`, owned by the ring; the ring is used through
// `&mut self` by one thread at a time, and the kernel's side is synchronised by the atomic
// indices.
unsafe impl<T> Send for Ring<T> {}

impl<T: RingElem> Ring<T> {
    /// Maps the ring of `size` entries at `pgoff` with the offsets the kernel reported, and
    /// checks that every field the accessors use lies inside the mapping, aligned.
    fn map(
        fd: BorrowedFd<'_>,
        pgoff: libc::off_t,
        off: RingOffset,
        size: u32,
        producer_side: bool,
    ) -> io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(io::Error::other(format!(
                "ring size {size} not a power of two"
            )));
        }
        let len = off.desc as usize + size as usize * size_of::<T>();
        let map = Mapping::ring(fd, pgoff, len)?;
        let fits = |o: u64, n: usize, align: usize| {
            (o as usize).checked_add(n).is_some_and(|end| end <= len)
                && (o as usize) & (align - 1) == 0
        };
        if !fits(off.producer, 4, 4)
            || !fits(off.consumer, 4, 4)
            || !fits(
                off.desc,
                size as usize * size_of::<T>(),
                std::mem::align_of::<T>(),
            )
        {
            return Err(io::Error::other(format!(
                "ring offsets {off:?} out of range"
            )));
        }
        let at = |o: u64| {
            // SAFETY: `o` was checked to lie inside the mapping just above.
            unsafe { NonNull::new_unchecked(map.ptr.as_ptr().add(o as usize)) }
        };
        let producer: NonNull<AtomicU32> = at(off.producer).cast();
        let consumer: NonNull<AtomicU32> = at(off.consumer).cast();
        let descs: NonNull<T> = at(off.desc).cast();
        let mut ring = Ring {
            _map: map,
            producer,
            consumer,
            descs,
            mask: size - 1,
            local: 0,
            cached: 0,
            _t: PhantomData,
        };
        // Fresh rings start at zero, but read them rather than assume. Relaxed: nothing has
        // been exchanged through the ring yet.
        if producer_side {
            ring.local = ring.producer().load(Ordering::Relaxed);
            ring.cached = ring.consumer().load(Ordering::Relaxed);
        } else {
            ring.local = ring.consumer().load(Ordering::Relaxed);
            ring.cached = ring.producer().load(Ordering::Relaxed);
        }
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: checked in `map` to be an aligned u32 inside `self.map`, which lives as long
        // as `self`; the kernel accesses it atomically too.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn size(&self) -> u32 {
        self.mask + 1
    }

    /// Writes slot `idx` (masked). Only called by a producer for slots it owns: between the
    /// kernel's consumer and our producer plus the free space (see `free`).
    fn write(&mut self, idx: u32, v: T) {
        // SAFETY: `idx & mask` < size, so the slot is inside the descriptor array checked in
        // `map`; the slot is ours (the kernel consumed it: `free` read the consumer with
        // Acquire), so the kernel neither reads nor writes it now.
        unsafe {
            self.descs
                .as_ptr()
                .add((idx & self.mask) as usize)
                .write_volatile(v)
        }
    }

    /// Reads slot `idx` (masked). Only called by a consumer for slots the kernel produced
    /// (below the producer index read with Acquire in `available`).
    fn read(&self, idx: u32) -> T {
        // SAFETY: inside the array as for `write`; the kernel wrote the slot before its
        // Release of the producer index, which we read with Acquire, and will not rewrite it
        // until we move the consumer index past it.
        unsafe {
            self.descs
                .as_ptr()
                .add((idx & self.mask) as usize)
                .read_volatile()
        }
    }

    // --- producer side (fill, TX) ---

    /// Free slots we may write, at least `want` if possible: refreshes the kernel's consumer
    /// only when the cached one does not leave `want`.
    fn free(&mut self, want: u32) -> u32 {
        let free = self.size() - self.local.wrapping_sub(self.cached);
        if free >= want {
            return free;
        }
        // Acquire pairs with the kernel's Release of its consumer index (after it read the
        // slots): without it our next writes to those slots could be ordered before the
        // kernel's reads of them, and it would send (or fill) half-overwritten descriptors.
        self.cached = self.consumer().load(Ordering::Acquire);
        self.size() - self.local.wrapping_sub(self.cached)
    }

    /// Entries produced that the kernel has not consumed yet (reads its consumer index).
    fn outstanding(&mut self) -> u32 {
        // Acquire: as in `free` (what this says is consumed may be reused right away).
        self.cached = self.consumer().load(Ordering::Acquire);
        self.local.wrapping_sub(self.cached)
    }

    /// Publishes everything written since the last publish.
    fn publish(&mut self) {
        // Release pairs with the kernel's Acquire of the producer index: the descriptors
        // written above become visible before the index that hands them over, or the kernel
        // could read stale slots.
        self.producer().store(self.local, Ordering::Release);
    }

    // --- consumer side (RX, completion) ---

    /// Entries the kernel produced that we have not consumed, refreshing its producer index
    /// only when the cached one is used up.
    fn available(&mut self) -> u32 {
        let n = self.cached.wrapping_sub(self.local);
        if n > 0 {
            return n;
        }
        // Acquire pairs with the kernel's Release of the producer index after it wrote the
        // descriptors: without it we could read slots from before the kernel filled them.
        self.cached = self.producer().load(Ordering::Acquire);
        self.cached.wrapping_sub(self.local)
    }

    /// Gives back every slot consumed so far.
    fn release(&mut self) {
        // Release pairs with the kernel's Acquire of the consumer index: our reads of the
        // slots complete before the kernel may overwrite them with new entries.
        self.consumer().store(self.local, Ordering::Release);
    }

    /// Entries consumed but not released.
    fn consumed_unreleased(&self) -> u32 {
        // Relaxed: our own index, only ever stored by this thread.
        self.local
            .wrapping_sub(self.consumer().load(Ordering::Relaxed))
    }
}

/// What an [`Xsk`] is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Interface index to bind to (in the socket's network namespace).
    pub ifindex: u32,
    /// Queue of that interface.
    pub queue: u32,
    /// Entries of each of the four rings (power of two).
    pub ring_size: u32,
    /// Bytes per UMEM chunk (power of two, 2048 or 4096).
    pub chunk_size: u32,
    /// UMEM chunks; at least `2 * ring_size` (one ring's worth for RX, the rest for TX).
    pub chunks: u32,
}

impl XskConfig {
    /// A socket on `ifindex`'s `queue` with rings of 1024 entries, 2 KiB chunks, 2048 of them.
    pub fn new(ifindex: u32, queue: u32) -> Self {
        XskConfig {
            ifindex,
            queue,
            ring_size: 1024,
            chunk_size: 2048,
            chunks: 2048,
        }
    }
}

/// An AF_XDP socket in copy mode, bound to one queue of one interface, with its UMEM and its
/// four rings. Owns everything the kernel may write: the UMEM mapping is unmapped only after
/// the socket is closed (field order), and the kernel pins the UMEM pages while the
/// registration lives anyway.
#[derive(Debug)]
pub struct Xsk {
    fill: Ring<u64>,
    comp: Ring<u64>,
    rx: Ring<XdpDesc>,
    tx: Ring<XdpDesc>,
    /// Closed after the rings are unmapped and before the UMEM is.
    fd: OwnedFd,
    umem: Mapping,
    chunk_size: u32,
    chunks: u32,
    /// Descriptors the kernel sends per `sendto` (its default, or what we set).
    tx_budget: u32,
}

impl Xsk {
    /// Registers a UMEM on the AF_XDP socket `fd` (from [`open_socket`], unbound), sizes and
    /// maps its rings, and binds it in copy mode to `cfg.ifindex` queue `cfg.queue`. Needs no
    /// capability beyond what opening `fd` took (the UMEM counts against `RLIMIT_MEMLOCK`
    /// without `CAP_IPC_LOCK`). Returns the socket and every chunk, all ours.
    pub fn new(fd: OwnedFd, cfg: &XskConfig) -> io::Result<(Xsk, Vec<Chunk>)> {
        if !cfg.chunk_size.is_power_of_two() || !(2048..=65536).contains(&cfg.chunk_size) {
            return Err(io::Error::other(format!(
                "chunk size {} not a power of two in 2048..=65536",
                cfg.chunk_size
            )));
        }
        if cfg.chunks < 2 * cfg.ring_size {
            return Err(io::Error::other("fewer than 2 * ring_size chunks"));
        }
        let len = cfg.chunks as usize * cfg.chunk_size as usize;
        let umem = Mapping::anon(len)?;
        let reg = UmemReg {
            addr: umem.ptr.as_ptr() as u64,
            len: len as u64,
            chunk_size: cfg.chunk_size,
            ..UmemReg::default()
        };
        let s = fd.as_fd();
        setsockopt(s, XDP_UMEM_REG, &reg)?;
        for opt in [
            XDP_UMEM_FILL_RING,
            XDP_UMEM_COMPLETION_RING,
            XDP_RX_RING,
            XDP_TX_RING,
        ] {
            setsockopt(s, opt, &cfg.ring_size)?;
        }
        let off: MmapOffsets = getsockopt(s, XDP_MMAP_OFFSETS)?;
        let n = cfg.ring_size;
        let fill = Ring::map(s, XDP_UMEM_PGOFF_FILL_RING, off.fr, n, true)?;
        let comp = Ring::map(s, XDP_UMEM_PGOFF_COMPLETION_RING, off.cr, n, false)?;
        let rx = Ring::map(s, XDP_PGOFF_RX_RING, off.rx, n, false)?;
        let tx = Ring::map(s, XDP_PGOFF_TX_RING, off.tx, n, true)?;
        // A whole TX batch per kick where the kernel lets us choose (Linux 6.17+); otherwise
        // its fixed 32, and a batch of 64 takes two kicks.
        let tx_budget = match setsockopt(s, XDP_MAX_TX_SKB_BUDGET, &(n.min(256))) {
            Ok(()) => n.min(256),
            Err(_) => 32,
        };
        let addr = SockaddrXdp {
            family: libc::AF_XDP as u16,
            flags: XDP_COPY,
            ifindex: cfg.ifindex,
            queue_id: cfg.queue,
            shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a live `sockaddr_xdp` of the length passed, read during the call.
        let r = unsafe {
            libc::bind(
                s.as_raw_fd(),
                (&addr as *const SockaddrXdp).cast(),
                size_of::<SockaddrXdp>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let chunks = (0..cfg.chunks)
            .map(|i| Chunk {
                base: u64::from(i) * u64::from(cfg.chunk_size),
            })
            .collect();
        Ok((
            Xsk {
                fill,
                comp,
                rx,
                tx,
                fd,
                umem,
                chunk_size: cfg.chunk_size,
                chunks: cfg.chunks,
                tx_budget,
            },
            chunks,
        ))
    }

    /// Bytes per chunk.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Chunks in the UMEM.
    pub fn chunks(&self) -> u32 {
        self.chunks
    }

    /// Entries per ring.
    pub fn ring_size(&self) -> u32 {
        self.tx.size()
    }

    /// Descriptors the kernel sends per kick.
    pub fn tx_budget(&self) -> u32 {
        self.tx_budget
    }

    /// The bytes of `chunk`, writable: it is ours (the token says so).
    pub fn chunk_mut(&mut self, chunk: &mut Chunk) -> &mut [u8] {
        // SAFETY: `chunk.base` is a multiple of the chunk size below `chunks * chunk_size`
        // (tokens are made only in `new` and `chunk_of`, which check it), so the range is
        // inside the UMEM mapping, which lives as long as `self`. The token proves the kernel
        // holds no reference to the chunk; `&mut chunk` (a token is unique) keeps any other
        // borrow of the same bytes from existing while this one does.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.umem.ptr.as_ptr().add(chunk.base as usize),
                self.chunk_size as usize,
            )
        }
    }

    /// The bytes of `chunk` from `off` for `len`, if inside the chunk.
    pub fn chunk_bytes(&self, chunk: &Chunk, off: usize, len: usize) -> Option<&[u8]> {
        let end = off.checked_add(len)?;
        if end > self.chunk_size as usize {
            return None;
        }
        // SAFETY: inside the UMEM as for `chunk_mut`, and inside the chunk (checked above);
        // the token proves the kernel does not write it while `chunk` is borrowed.
        Some(unsafe {
            std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(chunk.base as usize + off), len)
        })
    }

    /// The token of the chunk holding UMEM address `addr` (handed back by the kernel), and
    /// the offset of `addr` in it; `None` if outside the UMEM.
    fn chunk_of(&self, addr: u64) -> Option<(Chunk, usize)> {
        let size = u64::from(self.chunk_size);
        (addr < u64::from(self.chunks) * size).then(|| {
            (
                Chunk {
                    base: addr & !(size - 1),
                },
                (addr & (size - 1)) as usize,
            )
        })
    }

    // --- fill ring ---

    /// Free fill slots (at least `want` if there are).
    pub fn fill_free(&mut self, want: u32) -> u32 {
        self.fill.free(want)
    }

    /// Writes `chunk` to the next fill slot (not yet published); gives it back if the ring is
    /// full.
    pub fn fill_put(&mut self, chunk: Chunk) -> Result<(), Chunk> {
        if self.fill.free(1) == 0 {
            return Err(chunk);
        }
        let i = self.fill.local;
        self.fill.write(i, chunk.base);
        self.fill.local = i.wrapping_add(1);
        Ok(())
    }

    /// Publishes the fill entries written since the last publish.
    pub fn fill_publish(&mut self) {
        self.fill.publish();
    }

    /// Fill entries written and not yet published.
    pub fn fill_unpublished(&self) -> u32 {
        // Relaxed: our own index, stored only by this thread.
        self.fill
            .local
            .wrapping_sub(self.fill.producer().load(Ordering::Relaxed))
    }

    // --- TX ring ---

    /// Free TX slots (at least `want` if there are).
    pub fn tx_free(&mut self, want: u32) -> u32 {
        self.tx.free(want)
    }

    /// Writes a descriptor for the first `len` bytes of `chunk` to the next TX slot (not yet
    /// published); gives the chunk back if the ring is full or `len` exceeds a chunk.
    pub fn tx_put(&mut self, chunk: Chunk, len: u32) -> Result<(), Chunk> {
        if len > self.chunk_size || self.tx.free(1) == 0 {
            return Err(chunk);
        }
        let i = self.tx.local;
        self.tx.write(
            i,
            XdpDesc {
                addr: chunk.base,
                len,
                options: 0,
            },
        );
        self.tx.local = i.wrapping_add(1);
        Ok(())
    }

    /// Publishes the TX descriptors written since the last publish.
    pub fn tx_publish(&mut self) {
        self.tx.publish();
    }

    /// TX descriptors published that the kernel has not consumed yet.
    pub fn tx_outstanding(&mut self) -> u32 {
        self.tx.outstanding()
    }

    /// TX descriptors ever produced (free-running).
    pub fn tx_produced(&self) -> u32 {
        self.tx.local
    }

    /// Kicks the kernel to send what the TX ring holds: `sendto(fd, NULL, 0, MSG_DONTWAIT)`.
    /// In copy mode the frames go out during this call, up to [`Xsk::tx_budget`] of them.
    pub fn kick(&self) -> io::Result<()> {
        // SAFETY: a null buffer of length 0 and no address: the kernel reads nothing from us.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    // --- completion ring ---

    /// The next completed TX chunk, if any (consumed locally; [`Xsk::comp_release`] gives
    /// the slots back). A completion outside the UMEM is skipped and counted in `bad`.
    pub fn comp_take(&mut self, bad: &mut u64) -> Option<Chunk> {
        loop {
            if self.comp.available() == 0 {
                return None;
            }
            let addr = self.comp.read(self.comp.local);
            self.comp.local = self.comp.local.wrapping_add(1);
            match self.chunk_of(addr) {
                Some((c, _)) => return Some(c),
                None => *bad += 1,
            }
        }
    }

    /// Releases the completion slots consumed.
    pub fn comp_release(&mut self) {
        if self.comp.consumed_unreleased() > 0 {
            self.comp.release();
        }
    }

    /// Completions ever consumed (free-running).
    pub fn comp_consumed(&self) -> u32 {
        self.comp.local
    }

    // --- RX ring ---

    /// The next received descriptor, without consuming it.
    pub fn rx_peek(&mut self) -> Option<XdpDesc> {
        (self.rx.available() > 0).then(|| self.rx.read(self.rx.local))
    }

    /// Consumes the next received descriptor: its chunk, the frame's offset in it and its
    /// length. `Err(desc)` for a descriptor outside the UMEM or its chunk (consumed all the
    /// same; there is no chunk to give back).
    pub fn rx_take(&mut self) -> Option<Result<(Chunk, usize, usize), XdpDesc>> {
        if self.rx.available() == 0 {
            return None;
        }
        let d = self.rx.read(self.rx.local);
        self.rx.local = self.rx.local.wrapping_add(1);
        Some(match self.chunk_of(d.addr) {
            Some((c, off)) if off + d.len as usize <= self.chunk_size as usize => {
                Ok((c, off, d.len as usize))
            }
            _ => Err(d),
        })
    }

    /// Releases the RX slots consumed.
    pub fn rx_release(&mut self) {
        if self.rx.consumed_unreleased() > 0 {
            self.rx.release();
        }
    }

    /// RX slots consumed and not yet released.
    pub fn rx_unreleased(&self) -> u32 {
        self.rx.consumed_unreleased()
    }

    /// Fill entries ever produced minus RX descriptors ever consumed: chunks the kernel holds
    /// for RX, or has handed back on the RX ring and we have not taken yet.
    pub fn rx_chunks_out(&self) -> u32 {
        self.fill.local.wrapping_sub(self.rx.local)
    }

    /// TX descriptors ever produced minus completions ever consumed: TX chunks in flight.
    pub fn tx_chunks_out(&self) -> u32 {
        self.tx.local.wrapping_sub(self.comp.local)
    }

    /// The kernel's drop counters for this socket.
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        getsockopt(self.fd.as_fd(), XDP_STATISTICS)
    }
}

impl AsFd for Xsk {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn uapi_layouts_match_linux() {
        assert_eq!(size_of::<XdpDesc>(), 16);
        assert_eq!(offset_of!(XdpDesc, len), 8);
        assert_eq!(offset_of!(XdpDesc, options), 12);
        assert_eq!(size_of::<UmemReg>(), 32);
        assert_eq!(offset_of!(UmemReg, chunk_size), 16);
        assert_eq!(offset_of!(UmemReg, headroom), 20);
        assert_eq!(offset_of!(UmemReg, flags), 24);
        assert_eq!(size_of::<RingOffset>(), 32);
        assert_eq!(size_of::<MmapOffsets>(), 128);
        assert_eq!(offset_of!(MmapOffsets, cr), 96);
        assert_eq!(size_of::<SockaddrXdp>(), 16);
        assert_eq!(offset_of!(SockaddrXdp, ifindex), 4);
        assert_eq!(offset_of!(SockaddrXdp, shared_umem_fd), 12);
        assert_eq!(size_of::<XdpStatistics>(), 48);
    }
}
