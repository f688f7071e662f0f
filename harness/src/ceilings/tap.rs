//! The tap ceilings: `tap_write_<size>` (one `write(2)` per frame of a 12-byte zero virtio-net
//! header plus a test frame, EtherType 0x88b5, not addressed to the namespace, into a tap in a
//! fresh namespace whose stack drops it) and `tap_uring_<size>` (the same frames in io_uring
//! batches of 64 `WRITE`s on a registered file, one `submit_and_wait` per batch). One thread,
//! `limit-tap`, pinned to the worker's core: the worker's side of tap-vhost / emulated tx with
//! nothing else to do. Every frame a write accepted must show in the tap's receive counter.
//!
//! The write loops and [`measure_on`] take any fd and the interface that counts what it
//! accepts ([`Target`]), so the raw VF ceilings (`super::vf`) run the same code on a packet
//! socket and on macvtap.
//!
//! The `unsafe` here is io_uring's contract, kept by [`UringWriter`]: the buffers it hands the
//! kernel stay valid and untouched until their writes complete.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use io_uring::{opcode, types, IoUring};

use super::join;
use crate::pin::{spawn_pinned, worker_core};
use crate::topology::{self, Netns};

/// Frames per io_uring batch (`VHOST_NET_BATCH`), and per clock check of the write loop.
const BATCH: u64 = 64;

/// Name of the tap the tap limits write to (inside their own namespace).
const LIMIT_TAP: &str = "vhbtap0";

/// An error naming `name` and why the tap limits cannot run here, if they cannot.
fn require_tap(name: &str) -> anyhow::Result<()> {
    let p = topology::probe();
    ensure!(p.can_run, "limit {name} needs a tap: {}", p.summary());
    Ok(())
}

/// One write repeat: writes frames of `size` bytes, each after a `hdr_len`-byte zero header,
/// to the fd for `duration` on the calling (pinned) thread; returns (frames written, seconds).
pub(super) type WriteOnce = fn(File, usize, usize, Duration) -> anyhow::Result<(u64, f64)>;

/// Where a write ceiling writes: a fresh fd, the header its frames carry, and the interface
/// whose receive counter must count every frame a write accepted.
pub(super) struct Target<'ns> {
    /// The namespace the interfaces are in.
    pub ns: &'ns Netns,
    /// What the writes go to (dup'ed for each repeat).
    pub file: File,
    /// Bytes of header before each frame (12 on a tap, 0 on a raw packet socket).
    pub hdr_len: usize,
    /// The interface whose `rx_packets` counts the frames.
    pub counter: String,
}

/// `repeat` samples (Mpps) of `once` writing `size`-byte frames to `target`, each checked
/// against the target's receive counter.
pub(super) fn measure_on(
    name: &str,
    target: &Target<'_>,
    size: usize,
    duration: Duration,
    repeat: usize,
    once: WriteOnce,
) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let before = topology::link_stats(target.ns, &target.counter)?;
        let file = target.file.try_clone().context("dup fd")?;
        let hdr_len = target.hdr_len;
        let h = spawn_pinned("limit-tap".into(), worker_core(), move || {
            once(file, hdr_len, size, duration)
        })
        .context("spawning limit-tap")?;
        let (frames, secs) = join(h, "limit-tap")?;
        let after = topology::link_stats(target.ns, &target.counter)?;
        // Every frame the writes accepted reached the counter's receive path (the kernel's
        // count).
        let counted = after.rx_packets - before.rx_packets;
        ensure!(
            counted == frames,
            "{name}: wrote {frames} frames, {} received {counted}",
            target.counter
        );
        ensure!(secs > 0.0, "{name}: zero elapsed time");
        samples.push(frames as f64 / secs / 1e6);
    }
    Ok(samples)
}

/// `repeat` samples (Mpps): each repeat runs every loop of `loops` for `duration` on
/// `target`, one after the other, and keeps the best (a backend that picks the cheaper way as
/// it runs is put against the better of the two).
pub(super) fn measure_best(
    name: &str,
    target: &Target<'_>,
    size: usize,
    duration: Duration,
    repeat: usize,
    loops: &[WriteOnce],
) -> anyhow::Result<Vec<f64>> {
    ensure!(!loops.is_empty(), "{name}: no write loop");
    let mut samples = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let mut best = f64::NEG_INFINITY;
        for &once in loops {
            for s in measure_on(name, target, size, duration, 1, once)? {
                best = best.max(s);
            }
        }
        samples.push(best);
    }
    Ok(samples)
}

/// `repeat` samples (Mpps) of the best of `loops` writing `size`-byte frames to a fresh tap in
/// a fresh namespace, wired as the tap modes wire theirs (a port of a bridge with an uplink),
/// each checked against the uplink's wire end, which must receive every frame.
pub(super) fn measure(
    name: &str,
    size: usize,
    duration: Duration,
    repeat: usize,
    loops: &[WriteOnce],
) -> anyhow::Result<Vec<f64>> {
    check_size(name, size)?;
    require_tap(name)?;
    let ns = Netns::create().with_context(|| format!("{name}: namespace"))?;
    let tap = topology::open_tap(&ns, LIMIT_TAP, 0).with_context(|| format!("{name}: tap"))?;
    topology::bridge_with_uplink(&ns, "br0", &[LIMIT_TAP])
        .with_context(|| format!("{name}: bridge"))?;
    let target = Target {
        ns: &ns,
        file: tap.file.try_clone().context("dup tap fd")?,
        hdr_len: topology::TAP_VNET_HDR_LEN,
        counter: topology::UPLINK_WIRE.into(),
    };
    measure_best(name, &target, size, duration, repeat, loops)
}

/// An error unless a frame of `size` fits an Ethernet MTU of 1500 with its test stamp.
pub(super) fn check_size(name: &str, size: usize) -> anyhow::Result<()> {
    ensure!(
        (vring::frame::MIN_FRAME..=1514).contains(&size),
        "{name}: frame size {size} outside {}..=1514",
        vring::frame::MIN_FRAME
    );
    Ok(())
}

/// A `hdr_len`-byte zero header followed by a test frame of `size` bytes, sequence 0.
fn frame_with_header(hdr_len: usize, size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; hdr_len + size];
    vring::frame::fill(&mut buf[hdr_len..], 0, 0);
    buf
}

pub(super) fn write_once(
    file: File,
    hdr_len: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<(u64, f64)> {
    let mut buf = frame_with_header(hdr_len, size);
    let mut file = file;
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut seq = 0u64;
    loop {
        for _ in 0..BATCH {
            vring::frame::stamp(&mut buf[hdr_len..], seq, 0);
            let n = loop {
                match file.write(&buf) {
                    // A non-blocking socket whose device pushed back: the same frame again
                    // (not counted: the receive counter does not see it either).
                    Err(e) if pushed_back(&e) => std::hint::spin_loop(),
                    r => break r.with_context(|| format!("write of frame {seq}"))?,
                }
            };
            ensure!(
                n == buf.len(),
                "frame {seq}: wrote {n} of {} bytes",
                buf.len()
            );
            seq += 1;
        }
        if Instant::now() >= end {
            break;
        }
    }
    Ok((seq, t0.elapsed().as_secs_f64()))
}

/// Whether a write failed because the device pushed back (`EAGAIN` on a non-blocking
/// socket, `ENOBUFS` from a transmit that dropped the frame): retry it.
fn pushed_back(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS))
}

pub(super) fn uring_once(
    file: File,
    hdr_len: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<(u64, f64)> {
    let frame = frame_with_header(hdr_len, size);
    let mut w = UringWriter::new(file, BATCH as usize, frame.len()).context("io_uring")?;
    for i in 0..BATCH as usize {
        w.buf_mut(i)
            .context("io_uring buffer")?
            .copy_from_slice(&frame);
    }
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut seq = 0u64;
    loop {
        for i in 0..BATCH as usize {
            let buf = w.buf_mut(i).context("io_uring buffer")?;
            vring::frame::stamp(&mut buf[hdr_len..], seq, 0);
            seq += 1;
        }
        w.write_all()
            .with_context(|| format!("io_uring batch ending at frame {seq}"))?;
        if Instant::now() >= end {
            break;
        }
    }
    Ok((seq, t0.elapsed().as_secs_f64()))
}

/// Writes a fixed set of equal-length buffers to one file with io_uring: one `WRITE` SQE per
/// buffer on registered (fixed) file 0, one `submit_and_wait` per batch. The `tap_uring`
/// ceiling's io_uring path.
///
/// The kernel reads the buffers while writes are in flight; they are owned here, handed out
/// only while nothing is in flight ([`UringWriter::buf_mut`]), and `Drop` waits for every
/// outstanding write before they are freed (or leaks them if it cannot).
struct UringWriter {
    ring: IoUring,
    /// Boxed: their addresses are in the kernel's hands while writes are in flight.
    bufs: Vec<Box<[u8]>>,
    /// Writes submitted whose completions have not been reaped.
    in_flight: usize,
    /// The registered file (the ring holds its own reference too).
    _file: File,
}

impl std::fmt::Debug for UringWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringWriter")
            .field("bufs", &self.bufs.len())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl UringWriter {
    /// A ring with room for `count` writes of `len`-byte buffers (zeroed) to `file`.
    pub(crate) fn new(file: File, count: usize, len: usize) -> io::Result<Self> {
        let entries = u32::try_from(count.max(1).next_power_of_two())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many buffers"))?;
        let ring = IoUring::new(entries)?;
        ring.submitter().register_files(&[file.as_raw_fd()])?;
        Ok(Self {
            ring,
            bufs: (0..count)
                .map(|_| vec![0u8; len].into_boxed_slice())
                .collect(),
            in_flight: 0,
            _file: file,
        })
    }

    /// Buffer `i`, or `None` if `i` is out of range or writes are in flight (after a failed
    /// [`UringWriter::write_all`]).
    pub(crate) fn buf_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        if self.in_flight != 0 {
            return None;
        }
        self.bufs.get_mut(i).map(|b| &mut b[..])
    }

    /// Writes every buffer once (in order of submission; completion order is the kernel's),
    /// waits for all completions, and checks that each wrote the whole buffer.
    pub(crate) fn write_all(&mut self) -> io::Result<()> {
        if self.in_flight != 0 {
            return Err(io::Error::other(
                "writes from a failed batch still in flight",
            ));
        }
        let n = self.bufs.len();
        for (i, b) in self.bufs.iter().enumerate() {
            let len = u32::try_from(b.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer too long"))?;
            // Offset -1: the file position, as write(2) does (a tap ignores it).
            let e = opcode::Write::new(types::Fixed(0), b.as_ptr(), len)
                .offset(u64::MAX)
                .build()
                .user_data(i as u64);
            // SAFETY: the write reads `len` bytes at `b.as_ptr()`, a boxed slice owned by
            // `self.bufs` that is neither moved, freed nor handed out (`buf_mut` refuses while
            // `in_flight` != 0) until its completion is reaped below or in `Drop`. Fixed file
            // 0 is registered in `new`.
            if unsafe { self.ring.submission().push(&e) }.is_err() {
                // Not reached: the queue has a power-of-two >= n entries and is empty here.
                // The entries pushed so far are submitted and reaped below.
                break;
            }
            self.in_flight += 1;
        }
        let mut first_err: Option<io::Error> = None;
        let pushed = self.in_flight;
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(self.in_flight) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let mut cq = self.ring.completion();
            cq.sync();
            for cqe in &mut cq {
                self.in_flight -= 1;
                let want = self
                    .bufs
                    .get(cqe.user_data() as usize)
                    .map_or(usize::MAX, |b| b.len());
                let res = cqe.result();
                if first_err.is_none() {
                    if res < 0 {
                        first_err = Some(io::Error::from_raw_os_error(-res));
                    } else if res as usize != want {
                        first_err = Some(io::Error::other(format!(
                            "short write: {res} of {want} bytes"
                        )));
                    }
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if pushed != n {
            return Err(io::Error::other("submission queue full"));
        }
        Ok(())
    }
}

impl Drop for UringWriter {
    fn drop(&mut self) {
        // Reap what is still in flight so the kernel no longer reads `bufs`. Bounded: a tap
        // write completes promptly; if it does not, leak the buffers rather than free memory
        // the kernel may still read.
        for _ in 0..100 {
            if self.in_flight == 0 {
                return;
            }
            if self.ring.submit_and_wait(self.in_flight).is_err() {
                break;
            }
            let mut cq = self.ring.completion();
            cq.sync();
            for _ in &mut cq {
                self.in_flight -= 1;
            }
        }
        if self.in_flight != 0 {
            std::mem::forget(std::mem::take(&mut self.bufs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uring_writer_writes_every_buffer() {
        let dir = std::env::temp_dir().join(format!("vhb-uring-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&dir)
            .expect("temp file");
        let _ = std::fs::remove_file(&dir);
        let check = file.try_clone().expect("dup");
        let mut w = UringWriter::new(file, 4, 10).expect("ring");
        for i in 0..4 {
            w.buf_mut(i).expect("buffer").fill(b'a' + i as u8);
        }
        assert!(w.buf_mut(4).is_none());
        w.write_all().expect("write");
        w.write_all().expect("write");
        drop(w);
        // Writes without an offset append at the file position: 2 batches x 4 x 10 bytes.
        assert_eq!(check.metadata().expect("stat").len(), 80);
    }
}
