//! The engine as a vhost-user net backend: a frontend (QEMU's `vhost-user` netdev, DPDK's
//! virtio-user PMD, `guest_sim::vhost_user`) hands over its guest memory and each queue's
//! rings and eventfds on a Unix socket, and the vhost worker serves them with a backend of the
//! caller's choosing.
//!
//! The message layer (framing, fd passing, size checks, `REPLY_ACK`) is rust-vmm's `vhost`
//! crate; what the messages mean is here: [`NetServer`] keeps what the frontend has set up
//! so far, checks each value a frontend controls (queue index, size, ring addresses, memory
//! table, features), and starts a [`Device`] once every queue has its size, addresses, kick
//! and call and is enabled. `GET_VRING_BASE` stops the device and answers where each queue
//! stopped; a frontend that disconnects stops it too, and one that comes back starts again
//! from the bases it sends.
//!
//! A frontend's mistakes are its own: a bad request gets an error (a failed `REPLY_ACK`, or
//! the connection closed when the stream itself is broken) and the server keeps listening.

use std::fs::File;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut,
};
use vring::layout::{QueueAddrs, MAX_QUEUE_SIZE};
use vring::memory::FrontendRegion;
use vring::net::Features;
use vring::{GuestMemory, QueuePair, Virtqueue};

use crate::backend::Backend;
use crate::device::{Device, DeviceReport, DeviceSpec};
use crate::net::device::{negotiate, DEFAULT_OFFER};
use crate::worker::{self, WorkerConfig};

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Builds the backends of a device about to start: one per queue pair, on its memory, for
/// the features the frontend acknowledged.
pub type BackendFactory =
    Box<dyn FnMut(&Arc<GuestMemory>, Features, usize) -> io::Result<Vec<Box<dyn Backend>>> + Send>;

/// What happened on a connection, for the operator and for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Frontends accepted.
    pub connections: u64,
    /// Devices started.
    pub starts: u64,
    /// Requests refused (bad values, unsupported requests).
    pub refused: u64,
    /// The last refusal, in words.
    pub last_refusal: Option<String>,
}

/// Frames the devices of a server moved, summed over every device it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// TX frames the backend took from the guest.
    pub tx_packets: u64,
    /// RX frames delivered to the guest.
    pub rx_packets: u64,
    /// Frames dropped, every reason.
    pub drops: u64,
}

impl Served {
    fn of(m: &crate::metrics::DeviceMetrics) -> Served {
        Served {
            tx_packets: crate::metrics::get(&m.tx.packets),
            rx_packets: crate::metrics::get(&m.rx.packets),
            drops: m.total_drops(),
        }
    }

    fn add(self, o: Served) -> Served {
        Served {
            tx_packets: self.tx_packets + o.tx_packets,
            rx_packets: self.rx_packets + o.rx_packets,
            drops: self.drops + o.drops,
        }
    }
}

/// One queue as the frontend has set it up so far.
#[derive(Debug, Default)]
struct QueueSetup {
    size: Option<u16>,
    /// Descriptor table, used ring, avail ring: frontend virtual addresses.
    addr: Option<(u64, u64, u64)>,
    base: u16,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
}

/// A memory table as the frontend sent it, mapped.
#[derive(Debug)]
struct MemTable {
    mem: Arc<GuestMemory>,
}

impl MemTable {
    /// The guest-physical address of `len` bytes at frontend address `va`, which must lie in
    /// one region.
    fn va_to_gpa(&self, va: u64, len: u64) -> Option<u64> {
        self.mem.va_to_gpa(va, len).ok()
    }
}

/// The state machine behind a vhost-user net device (see the module documentation).
pub struct NetServer {
    pairs: usize,
    offer: Features,
    acked: Option<Features>,
    /// `VHOST_USER_F_PROTOCOL_FEATURES` was acknowledged: rings then start disabled and wait
    /// for `SET_VRING_ENABLE` (otherwise a ring is enabled by its kick).
    protocol_acked: bool,
    protocol: VhostUserProtocolFeatures,
    mem: Option<MemTable>,
    queues: Vec<QueueSetup>,
    running: Option<Device>,
    /// Where each queue stopped, once the device has stopped (`GET_VRING_BASE`).
    stopped_at: Vec<Option<u16>>,
    factory: BackendFactory,
    cfg: WorkerConfig,
    /// Reports of devices that ran and stopped.
    pub reports: Vec<DeviceReport>,
    /// Counters.
    pub stats: ServerStats,
    /// What the devices that stopped moved.
    stopped_served: Served,
}

impl std::fmt::Debug for NetServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetServer")
            .field("pairs", &self.pairs)
            .field("acked", &self.acked)
            .field("running", &self.running.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

fn refuse(what: String) -> VuError {
    VuError::ReqHandlerError(io::Error::new(io::ErrorKind::InvalidInput, what))
}

impl NetServer {
    /// A device with `pairs` queue pairs whose backends `factory` builds, served by a worker
    /// configured as `cfg`.
    pub fn new(pairs: usize, factory: BackendFactory, cfg: WorkerConfig) -> NetServer {
        let pairs = pairs.max(1);
        NetServer {
            pairs,
            offer: DEFAULT_OFFER,
            acked: None,
            protocol_acked: false,
            protocol: VhostUserProtocolFeatures::empty(),
            mem: None,
            queues: (0..2 * pairs).map(|_| QueueSetup::default()).collect(),
            running: None,
            stopped_at: vec![None; 2 * pairs],
            factory,
            cfg,
            reports: Vec::new(),
            stats: ServerStats::default(),
            stopped_served: Served::default(),
        }
    }

    /// Whether a device is running.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Whether nothing of a frontend's set-up is left: no device, no features, no memory
    /// table, no queue with anything set. A new server is clear, and so is one whose
    /// frontend has gone ([`serve_connection`] returned).
    pub fn is_clear(&self) -> bool {
        self.running.is_none()
            && self.acked.is_none()
            && !self.protocol_acked
            && self.protocol.is_empty()
            && self.mem.is_none()
            && self.queues.iter().all(|q| {
                q.size.is_none()
                    && q.addr.is_none()
                    && q.base == 0
                    && q.kick.is_none()
                    && q.call.is_none()
                    && !q.enabled
            })
    }

    /// The running device's counters.
    pub fn device(&self) -> Option<&Device> {
        self.running.as_ref()
    }

    /// Stops the running device (its queues stay set up; a frontend's next enable starts it
    /// again): for a caller that must stop the device side first, as a VMM stopping its
    /// backend before its guest.
    pub fn stop_serving(&mut self) {
        self.stop_device();
    }

    /// What every device this server started has moved so far, the running one included.
    pub fn served(&self) -> Served {
        let live = self
            .running
            .as_ref()
            .map_or_else(Served::default, |d| Served::of(d.metrics()));
        self.stopped_served.add(live)
    }

    fn queue(&mut self, index: u32) -> VuResult<&mut QueueSetup> {
        let n = self.queues.len();
        self.queues
            .get_mut(index as usize)
            .ok_or_else(|| refuse(format!("queue {index} does not exist ({n} queues)")))
    }

    fn refused<T>(&mut self, r: VuResult<T>) -> VuResult<T> {
        if let Err(e) = &r {
            self.stats.refused += 1;
            self.stats.last_refusal = Some(e.to_string());
        }
        r
    }

    /// Stops the device, keeping where each queue stopped.
    fn stop_device(&mut self) {
        let Some(dev) = self.running.take() else {
            return;
        };
        let metrics = dev.metrics().clone();
        let report = dev.stop();
        self.stopped_served = self.stopped_served.add(Served::of(&metrics));
        for (i, q) in self.queues.iter().enumerate() {
            self.stopped_at[i] = Some(report.stopped_at.get(i).copied().unwrap_or(q.base));
        }
        self.reports.push(report);
    }

    /// Starts the device if every queue is ready and enabled.
    fn maybe_start(&mut self) -> VuResult<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let ready = self.queues.iter().all(|q| {
            q.size.is_some()
                && q.addr.is_some()
                && q.kick.is_some()
                && q.call.is_some()
                && q.enabled
        });
        if !ready {
            return Ok(());
        }
        let (Some(mem), Some(features)) = (&self.mem, self.acked) else {
            return Err(refuse(
                "queues set up before the memory table or the features".into(),
            ));
        };
        let mut wired = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            let (Some(size), Some((d, u, a)), Some(kick), Some(call)) =
                (q.size, q.addr, &q.kick, &q.call)
            else {
                return Err(refuse(format!("queue {i} is not set up")));
            };
            let s = u64::from(size);
            let layout = [
                (d, 16 * s, "descriptor table"),
                (u, 6 + 8 * s, "used ring"),
                (a, 6 + 2 * s, "avail ring"),
            ];
            let mut gpas = [0u64; 3];
            for (k, &(va, len, what)) in layout.iter().enumerate() {
                gpas[k] = mem.va_to_gpa(va, len).ok_or_else(|| {
                    refuse(format!(
                        "queue {i}: {what} at {va:#x}+{len:#x} is outside guest memory"
                    ))
                })?;
            }
            let clone = |f: &File| f.try_clone().map_err(VuError::ReqHandlerError);
            wired.push(Virtqueue {
                addrs: QueueAddrs {
                    size,
                    desc: gpas[0],
                    used: gpas[1],
                    avail: gpas[2],
                },
                kick: clone(kick)?,
                call: clone(call)?,
                base: q.base,
            });
        }
        let mut it = wired.into_iter();
        let mut pairs = Vec::with_capacity(self.pairs);
        while let (Some(rx), Some(tx)) = (it.next(), it.next()) {
            pairs.push(QueuePair { rx, tx });
        }
        let mem = mem.mem.clone();
        let backends =
            (self.factory)(&mem, features, pairs.len()).map_err(VuError::ReqHandlerError)?;
        let spec = DeviceSpec {
            mem,
            features,
            pairs,
        };
        let dev = worker::spawn(spec, backends, self.cfg.clone())
            .map_err(|e| refuse(format!("starting the device: {e}")))?;
        self.running = Some(dev);
        self.stats.starts += 1;
        self.stopped_at.iter_mut().for_each(|s| *s = None);
        Ok(())
    }

    /// Forgets the frontend's set-up (a new connection starts from nothing), stopping the
    /// device first.
    fn reset(&mut self) {
        self.stop_device();
        self.acked = None;
        self.protocol_acked = false;
        self.protocol = VhostUserProtocolFeatures::empty();
        self.mem = None;
        self.queues
            .iter_mut()
            .for_each(|q| *q = QueueSetup::default());
    }

    fn map_memory(regions: &[VhostUserMemoryRegion], files: Vec<File>) -> VuResult<MemTable> {
        if files.len() != regions.len() {
            return Err(refuse(format!(
                "{} memory regions with {} fds",
                regions.len(),
                files.len()
            )));
        }
        // Copied out of the packed wire struct; every check (overlaps, overflows, a region
        // past its file's end) is `GuestMemory::from_frontend`'s.
        let table: Vec<(FrontendRegion, File)> = regions
            .iter()
            .map(|r| FrontendRegion {
                gpa: r.guest_phys_addr,
                size: r.memory_size,
                va: r.user_addr,
                mmap_offset: r.mmap_offset,
            })
            .zip(files)
            .collect();
        let mem =
            GuestMemory::from_frontend(table).map_err(|e| refuse(format!("memory table: {e}")))?;
        Ok(MemTable { mem: Arc::new(mem) })
    }
}

impl VhostUserBackendReqHandlerMut for NetServer {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.reset();
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.reset();
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.offer.0 | F_PROTOCOL_FEATURES)
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        let r = negotiate(self.offer, Features(features & !F_PROTOCOL_FEATURES))
            .map_err(|e| refuse(format!("features {features:#x}: {e}")));
        let r = self.refused(r)?;
        self.protocol_acked = features & F_PROTOCOL_FEATURES != 0;
        if self.running.is_some() && self.acked != Some(r) {
            return self.refused(Err(refuse("features changed while the device runs".into())));
        }
        self.acked = Some(r);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<vhost::VhostUserMemoryRegionBase>>> {
        // A new table replaces the old one: the device stops, as vhost does while it remaps.
        self.stop_device();
        let t = Self::map_memory(ctx, files);
        self.mem = Some(self.refused(t)?);
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let r = if num == 0 || !num.is_power_of_two() || num > u32::from(MAX_QUEUE_SIZE) {
            Err(refuse(format!(
                "queue {index}: size {num} is not a power of two in 1..={MAX_QUEUE_SIZE}"
            )))
        } else {
            self.queue(index).map(|q| q.size = Some(num as u16))
        };
        self.refused(r)
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let r = if flags.contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG) {
            Err(refuse(format!(
                "queue {index}: dirty logging is not supported"
            )))
        } else {
            self.queue(index)
                .map(|q| q.addr = Some((descriptor, used, available)))
        };
        self.refused(r)
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let r = match u16::try_from(base) {
            Ok(b) => self.queue(index).map(|q| q.base = b),
            Err(_) => Err(refuse(format!("queue {index}: base {base} > 65535"))),
        };
        self.refused(r)
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let r = self.queue(index).map(drop);
        self.refused(r)?;
        self.stop_device();
        let i = index as usize;
        let base = self.stopped_at[i].unwrap_or(self.queues[i].base);
        // The queue is stopped; a restart waits for it to be set up (at least enabled) again.
        let q = &mut self.queues[i];
        q.enabled = false;
        q.base = base;
        q.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let has_protocol = self.protocol_acked;
        let r = self.queue(u32::from(index)).map(|q| {
            q.kick = fd;
            // Without protocol features a ring is enabled when it gets its kick.
            if !has_protocol {
                q.enabled = true;
            }
        });
        self.refused(r)?;
        let r = self.maybe_start();
        self.refused(r)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let r = self.queue(u32::from(index)).map(|q| q.call = fd);
        self.refused(r)?;
        let r = self.maybe_start();
        self.refused(r)
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        let r = self.queue(u32::from(index)).map(drop);
        self.refused(r)
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        let r = VhostUserProtocolFeatures::from_bits(features)
            .filter(|f| {
                (VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ).contains(*f)
            })
            .ok_or_else(|| refuse(format!("protocol features {features:#x} not offered")));
        self.protocol = self.refused(r)?;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.pairs as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        let r = self.queue(index).map(|q| q.enabled = enable);
        self.refused(r)?;
        if !enable {
            // vhost-net serves a pair as a unit: disabling a ring stops the device.
            self.stop_device();
            return Ok(());
        }
        let r = self.maybe_start();
        self.refused(r)
    }

    fn get_config(&mut self, _o: u32, _s: u32, _f: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        self.unsupported("GET_CONFIG")
    }

    fn set_config(&mut self, _o: u32, _b: &[u8], _f: VhostUserConfigFlags) -> VuResult<()> {
        self.unsupported("SET_CONFIG")
    }

    fn set_gpu_socket(&mut self, _g: GpuBackend) -> VuResult<()> {
        self.unsupported("GPU_SET_SOCKET")
    }

    fn get_shared_object(&mut self, _u: VhostUserSharedMsg) -> VuResult<File> {
        self.unsupported("GET_SHARED_OBJECT")
    }

    fn get_inflight_fd(&mut self, _i: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        self.unsupported("GET_INFLIGHT_FD")
    }

    fn set_inflight_fd(&mut self, _i: &VhostUserInflight, _f: File) -> VuResult<()> {
        self.unsupported("SET_INFLIGHT_FD")
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        self.unsupported("GET_MAX_MEM_SLOTS")
    }

    fn add_mem_region(
        &mut self,
        _r: &VhostUserSingleMemoryRegion,
        _f: File,
        _p: Option<bool>,
    ) -> VuResult<Option<vhost::VhostUserMemoryRegionBase>> {
        self.unsupported("ADD_MEM_REG")
    }

    fn remove_mem_region(&mut self, _r: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        self.unsupported("REM_MEM_REG")
    }

    fn set_device_state_fd(
        &mut self,
        _d: VhostTransferStateDirection,
        _p: VhostTransferStatePhase,
        _f: File,
    ) -> VuResult<Option<File>> {
        self.unsupported("SET_DEVICE_STATE_FD")
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        self.unsupported("CHECK_DEVICE_STATE")
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        self.unsupported("GET_SHMEM_CONFIG")
    }

    fn set_log_base(&mut self, _l: &VhostUserLog, _f: File) -> VuResult<()> {
        self.unsupported("SET_LOG_BASE")
    }
}

impl NetServer {
    fn unsupported<T>(&mut self, what: &str) -> VuResult<T> {
        self.refused(Err(refuse(format!("{what} is not supported"))))
    }
}

/// A listening vhost-user net backend: serves one frontend at a time, one after another,
/// until [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    state: Arc<Mutex<NetServer>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Server {
    /// Listens on `path` (replacing a stale socket file) and serves in a thread.
    pub fn start(path: &Path, server: NetServer) -> io::Result<Server> {
        // A socket file left by a crashed server would make bind fail: replace it.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let state = Arc::new(Mutex::new(server));
        let stop = Arc::new(AtomicBool::new(false));
        let (state2, stop2) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("vhost-user".into())
            .spawn(move || serve(&listener, &state2, &stop2))?;
        Ok(Server {
            path: path.to_path_buf(),
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// The device state (stats, reports, the running device).
    pub fn state(&self) -> std::sync::MutexGuard<'_, NetServer> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops serving: the connection is dropped, the device stopped, the socket removed.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Release);
        let r = match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("vhost-user server thread panicked")),
            None => Ok(()),
        };
        self.state().reset();
        let _ = std::fs::remove_file(&self.path);
        r
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// Requests refused in a row after which a connection is dropped (a frontend talking
/// nonsense, or a stream out of step).
const MAX_REFUSALS_IN_A_ROW: u32 = 64;
/// How often an idle server looks at its stop flag.
const POLL: Duration = Duration::from_millis(20);

fn serve(
    listener: &UnixListener,
    state: &Arc<Mutex<NetServer>>,
    stop: &AtomicBool,
) -> io::Result<()> {
    while !stop.load(Ordering::Acquire) {
        let sock = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        serve_connection(sock, state, stop)?;
    }
    Ok(())
}

/// Serves one frontend on `sock` until it disconnects, breaks the stream, is refused 64 times
/// in a row, or `stop` is set (looked at every 20 ms); then stops its device and forgets its
/// set-up, on every way out: `state` is left [`NetServer::is_clear`].
///
/// [`Server`] runs this for each connection it accepts; a caller with a connected socket of
/// its own (a test, the fuzz harness) runs it directly. An error is the socket's own (making
/// it blocking, polling it), never a frontend's bad request.
pub fn serve_connection(
    sock: UnixStream,
    state: &Arc<Mutex<NetServer>>,
    stop: &AtomicBool,
) -> io::Result<()> {
    sock.set_nonblocking(false)?;
    let watch = sock.try_clone()?;
    let mut handler = BackendReqHandler::from_stream(sock, state.clone());
    lock(state).stats.connections += 1;
    let r = handle_requests(&mut handler, &watch, state, stop);
    // The frontend went away (or we are stopping): stop its device, forget its set-up.
    lock(state).reset();
    r
}

/// The request loop of [`serve_connection`].
fn handle_requests(
    handler: &mut BackendReqHandler<Mutex<NetServer>>,
    watch: &UnixStream,
    state: &Mutex<NetServer>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut in_a_row = 0;
    while !stop.load(Ordering::Acquire) {
        // Wait for a request with a bound, so a stop is seen.
        let mut pfd = [PollFd::new(watch, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: POLL.as_nanos() as i64,
        };
        match rustix::event::poll(&mut pfd, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        match handler.handle_request() {
            Ok(()) => in_a_row = 0,
            Err(
                VuError::Disconnected
                | VuError::PartialMessage
                | VuError::SocketBroken(_)
                | VuError::SocketError(_),
            ) => break,
            Err(e) => {
                // A refusal of ours (`ReqHandlerError`) is counted where it was made; a
                // message the layer below rejected (bad size, fds, unknown request) here.
                if !matches!(e, VuError::ReqHandlerError(_)) {
                    let mut s = lock(state);
                    s.stats.refused += 1;
                    s.stats.last_refusal = Some(e.to_string());
                }
                in_a_row += 1;
                if in_a_row >= MAX_REFUSALS_IN_A_ROW {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn lock(state: &Mutex<NetServer>) -> std::sync::MutexGuard<'_, NetServer> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}
