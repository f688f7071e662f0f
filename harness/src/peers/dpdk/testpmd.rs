//! One `dpdk-testpmd` process with one vdev, driven on its interactive prompt.
//!
//! Command line (DPDK 22.11): `--lcores 0@<main>,1@<fwd> --no-pci --in-memory
//! --single-file-segments --no-telemetry --socket-limit <MB> --file-prefix vhb-<pid>-<n>
//! --vdev <vdev> -- -i --forward-mode=<mode> --nb-cores=1 --rxd=<ring> --txd=<ring>
//! --burst=<burst> --txpkts=<size> --total-num-mbufs=<n>`. testpmd needs two lcores: its main
//! lcore runs the prompt (idle, blocked on stdin, between commands) and the forwarding lcore
//! polls, pinned to `fwd_core` — one busy core per process.
//!
//! It runs under `stdbuf -o0 -e0` (which execs it): on a pipe, testpmd's replies would be
//! buffered by stdio and come out after the prompt that ends them. The prompt (`testpmd> `)
//! is printed once per command, and nothing else prints it (the PMDs'
//! logs and port events are whole lines of their own), so a command's reply is everything
//! between the prompt it was typed at and the next one; a command that gets no prompt within
//! its bound is an error naming the command, the process and its last lines of output.
//!
//! Exit paths: [`Testpmd::quit`] types `quit` (testpmd stops and closes its port: a
//! virtio-user driver tells its back end) and waits; drop, a panic and a signal send SIGTERM
//! (testpmd quits the same way, in milliseconds), then SIGKILL after [`KILL_PATIENCE`]. Every
//! testpmd is started from one long-lived thread with `PR_SET_PDEATHSIG` = SIGKILL, so the
//! kernel kills it if the harness dies without any of that (SIGKILL); [`cleanup_stale`] finds
//! those that still run (started by an older harness) by their file prefix.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::peers::sys;
use crate::pin::{vcpu_core, worker_core};
use crate::topology::{owner_pid, process_dead};

/// Hugepages (2 MiB) one testpmd is allowed (`--socket-limit`) and a run should reserve for
/// it. Measured with the defaults here (8192 mbufs, ring 256): 17 pages at peak.
pub const PAGES_PER_TESTPMD: u64 = 64;
/// Runs testpmd with unbuffered stdio.
pub const STDBUF: &str = "stdbuf";
/// What testpmd prints when it waits for a command.
const PROMPT: &[u8] = b"testpmd> ";
/// From spawn to the first prompt (EAL start-up, port set-up: about a second here).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// One command's reply.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// From `quit` to exit.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// From SIGTERM to SIGKILL.
pub const KILL_PATIENCE: Duration = Duration::from_secs(2);
/// Lines of output kept for error messages.
const TAIL_LINES: usize = 40;

/// testpmd's forwarding mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardMode {
    /// Generate `--txpkts`-byte UDP frames and send them (nothing is received).
    TxOnly,
    /// Receive and free.
    RxOnly,
    /// Send back what is received.
    Io,
}

impl ForwardMode {
    /// Its name on testpmd's command line.
    pub fn name(self) -> &'static str {
        match self {
            ForwardMode::TxOnly => "txonly",
            ForwardMode::RxOnly => "rxonly",
            ForwardMode::Io => "io",
        }
    }
}

/// The one virtual device a testpmd runs (one queue pair).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vdev {
    /// The vhost PMD (`net_vhost0`): a vhost-user back end, the host side. `client = false`:
    /// it listens on `iface` (it makes the socket); `true`: it connects to a listener there.
    Vhost {
        /// The vhost-user socket.
        iface: PathBuf,
        /// Connect instead of listening.
        client: bool,
    },
    /// The virtio-user PMD (`net_virtio_user0`): a virtio-net driver talking vhost-user, the
    /// guest side. `server = false`: it connects to a back end listening on `path`.
    VirtioUser {
        /// The vhost-user socket.
        path: PathBuf,
        /// Its virtqueue size.
        queue_size: u16,
        /// Listen instead of connecting.
        server: bool,
    },
    /// The null PMD (`net_null0`): a port that is always up, receives nothing and takes
    /// everything sent to it. For tests that need a testpmd but no peer.
    Null,
}

impl Vdev {
    /// Its `--vdev` argument, with `extra` (`key=value` devargs) appended.
    pub fn arg(&self, extra: &[String]) -> String {
        let mut s = match self {
            Vdev::Vhost { iface, client } => format!(
                "net_vhost0,iface={},queues=1,client={}",
                iface.display(),
                u8::from(*client)
            ),
            Vdev::VirtioUser {
                path,
                queue_size,
                server,
            } => format!(
                "net_virtio_user0,path={},queues=1,queue_size={queue_size},server={}",
                path.display(),
                u8::from(*server)
            ),
            Vdev::Null => "net_null0".to_string(),
        };
        for e in extra {
            s.push(',');
            s.push_str(e);
        }
        s
    }

    /// `vhost` or `virtio-user`.
    pub fn kind(&self) -> &'static str {
        match self {
            Vdev::Vhost { .. } => "vhost",
            Vdev::VirtioUser { .. } => "virtio-user",
            Vdev::Null => "null",
        }
    }
}

/// How to run one testpmd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestpmdConfig {
    /// The device.
    pub vdev: Vdev,
    /// `devargs` appended to the vdev's (`mrg_rxbuf=0`, `in_order=1`, `packed_vq=1`, ...).
    pub vdev_extra: Vec<String>,
    /// What the forwarding lcore does.
    pub forward: ForwardMode,
    /// The CPU the forwarding lcore is pinned to (the one busy core).
    pub fwd_core: usize,
    /// The CPU of the main lcore (the prompt; idle between commands). May equal `fwd_core`.
    pub main_core: usize,
    /// Frame bytes of `txonly` (`--txpkts`).
    pub frame_size: u32,
    /// Packets per burst (`--burst`).
    pub burst: u32,
    /// RX and TX descriptors of the port's queues (`--rxd`, `--txd`).
    pub ring: u16,
    /// Mbufs in its pool (`--total-num-mbufs`; testpmd's default sizes for the largest rings
    /// and takes ~370 MiB).
    pub mbufs: u32,
    /// MiB of hugepages it may take (`--socket-limit`).
    pub mem_mb: u64,
    /// More EAL arguments, before `--`.
    pub eal_extra: Vec<String>,
    /// More testpmd arguments, after `--`.
    pub app_extra: Vec<String>,
}

impl TestpmdConfig {
    /// `forward` on `vdev`: 64-byte frames, bursts of 32, ring 256, the guest's core
    /// ([`vcpu_core`]) for a virtio-user driver and the worker's ([`worker_core`]) for a vhost
    /// back end, its main lcore on the other one.
    pub fn new(vdev: Vdev, forward: ForwardMode) -> TestpmdConfig {
        let (fwd_core, main_core) = match vdev {
            Vdev::VirtioUser { .. } => (vcpu_core(), worker_core()),
            Vdev::Vhost { .. } | Vdev::Null => (worker_core(), vcpu_core()),
        };
        TestpmdConfig {
            vdev,
            vdev_extra: Vec::new(),
            forward,
            fwd_core,
            main_core,
            frame_size: 64,
            burst: 32,
            ring: 256,
            mbufs: 8192,
            mem_mb: PAGES_PER_TESTPMD * 2,
            eal_extra: Vec::new(),
            app_extra: Vec::new(),
        }
    }

    /// The arguments after the program's name, for file prefix `prefix`.
    pub fn args(&self, prefix: &str) -> Vec<String> {
        let mbufs = self.mbufs.max(4 * u32::from(self.ring) + 1024);
        let mut a: Vec<String> = vec![
            "--lcores".into(),
            format!("0@{},1@{}", self.main_core, self.fwd_core),
            "--no-pci".into(),
            "--in-memory".into(),
            "--single-file-segments".into(),
            "--no-telemetry".into(),
            "--socket-limit".into(),
            self.mem_mb.to_string(),
            "--file-prefix".into(),
            prefix.into(),
            "--vdev".into(),
            self.vdev.arg(&self.vdev_extra),
        ];
        a.extend(self.eal_extra.iter().cloned());
        a.extend([
            "--".into(),
            "-i".into(),
            format!("--forward-mode={}", self.forward.name()),
            "--nb-cores=1".into(),
            format!("--rxd={}", self.ring),
            format!("--txd={}", self.ring),
            format!("--burst={}", self.burst),
            format!("--txpkts={}", self.frame_size),
            format!("--total-num-mbufs={mbufs}"),
        ]);
        a.extend(self.app_extra.iter().cloned());
        a
    }
}

/// A port's counters (`show port stats 0`), since the port started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// `RX-packets`.
    pub rx_packets: u64,
    /// `RX-missed`: dropped by the device for want of room.
    pub rx_missed: u64,
    /// `RX-bytes`.
    pub rx_bytes: u64,
    /// `RX-errors`.
    pub rx_errors: u64,
    /// `RX-nombuf`: no mbuf to receive into.
    pub rx_nombuf: u64,
    /// `TX-packets`: handed to the device (for virtio-user and vhost: in the peer's ring).
    pub tx_packets: u64,
    /// `TX-errors`.
    pub tx_errors: u64,
    /// `TX-bytes`.
    pub tx_bytes: u64,
}

/// What `stop` reports for port 0 (`Forward statistics for port 0`), since `start`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// `RX-packets`.
    pub rx_packets: u64,
    /// `RX-dropped`.
    pub rx_dropped: u64,
    /// `TX-packets`.
    pub tx_packets: u64,
    /// `TX-dropped`: frames the forwarding loop made but the port did not take (its ring
    /// was full); `txonly` does not retry them.
    pub tx_dropped: u64,
}

/// `Key: value` pairs of testpmd's stats lines (`RX-packets: 5   RX-missed: 0 ...`).
fn key_values(text: &str) -> Vec<(&str, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace().peekable();
        while let Some(w) = words.next() {
            if let Some(key) = w.strip_suffix(':') {
                if let Some(v) = words.peek().and_then(|v| v.parse().ok()) {
                    out.push((key, v));
                    words.next();
                }
            }
        }
    }
    out
}

fn field(kv: &[(&str, u64)], key: &str, what: &str) -> anyhow::Result<u64> {
    kv.iter()
        .find(|(k, _)| *k == key)
        .map(|&(_, v)| v)
        .ok_or_else(|| anyhow!("{what}: no {key}"))
}

impl PortStats {
    /// Parses the reply of `show port stats 0`.
    pub fn parse(reply: &str) -> anyhow::Result<PortStats> {
        let start = reply
            .find("NIC statistics for port")
            .ok_or_else(|| anyhow!("no port statistics in {reply:?}"))?;
        let kv = key_values(&reply[start..]);
        let f = |k| field(&kv, k, "port statistics");
        Ok(PortStats {
            rx_packets: f("RX-packets")?,
            rx_missed: f("RX-missed")?,
            rx_bytes: f("RX-bytes")?,
            rx_errors: f("RX-errors")?,
            rx_nombuf: f("RX-nombuf")?,
            tx_packets: f("TX-packets")?,
            tx_errors: f("TX-errors")?,
            tx_bytes: f("TX-bytes")?,
        })
    }
}

impl ForwardStats {
    /// Parses the reply of `stop` (port 0's block).
    pub fn parse(reply: &str) -> anyhow::Result<ForwardStats> {
        if reply.contains("Packet forwarding not started") {
            bail!("stop: packet forwarding was not started");
        }
        let start = reply
            .find("Forward statistics for port")
            .ok_or_else(|| anyhow!("no forward statistics in {reply:?}"))?;
        let block = &reply[start..];
        let end = block.find("Accumulated").unwrap_or(block.len());
        let kv = key_values(&block[..end]);
        let f = |k| field(&kv, k, "forward statistics");
        Ok(ForwardStats {
            rx_packets: f("RX-packets")?,
            rx_dropped: f("RX-dropped")?,
            tx_packets: f("TX-packets")?,
            tx_dropped: f("TX-dropped")?,
        })
    }
}

/// What the reader threads collected.
#[derive(Debug, Default)]
struct OutState {
    /// Stdout not consumed yet; `base` is the offset of its first byte in the whole stream.
    buf: Vec<u8>,
    base: usize,
    /// Where the last consumed prompt ended (stream offset).
    cursor: usize,
    /// Where the next search for a prompt starts (stream offset).
    scanned: usize,
    /// Prompts seen and not consumed (stream offsets of their first byte).
    prompts: VecDeque<usize>,
    /// Stdout closed (the process exited or closed it).
    eof: bool,
    /// The last lines of stdout and stderr, for error messages.
    tail: VecDeque<String>,
    /// A partial line of stderr.
    err_line: String,
    /// A partial line of stdout (for the tail).
    out_line: String,
}

impl OutState {
    fn push_tail(&mut self, line: String) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn stdout(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let end = self.base + self.buf.len();
        let mut from = self.scanned;
        while let Some(i) = find(&self.buf[from - self.base..], PROMPT) {
            self.prompts.push_back(from + i);
            from += i + PROMPT.len();
        }
        // A prompt may straddle this read and the next.
        self.scanned = from.max(end.saturating_sub(PROMPT.len() - 1));
        for &b in data {
            if b == b'\n' {
                let line = std::mem::take(&mut self.out_line);
                self.push_tail(line);
            } else {
                self.out_line.push(char::from(b));
            }
        }
    }

    fn stderr(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                let line = std::mem::take(&mut self.err_line);
                self.push_tail(line);
            } else {
                self.err_line.push(char::from(b));
            }
        }
    }

    /// Takes the reply up to the first unconsumed prompt.
    fn take_reply(&mut self) -> Option<String> {
        let p = self.prompts.pop_front()?;
        let reply =
            String::from_utf8_lossy(&self.buf[self.cursor - self.base..p - self.base]).into_owned();
        self.cursor = p + PROMPT.len();
        self.buf.drain(..self.cursor - self.base);
        self.base = self.cursor;
        self.scanned = self.scanned.max(self.cursor);
        Some(reply)
    }

    fn tail_text(&self) -> String {
        let mut lines: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        if !self.out_line.is_empty() {
            lines.push(&self.out_line);
        }
        lines.join("\n")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Default)]
struct Output {
    state: Mutex<OutState>,
    changed: Condvar,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pids of the testpmd processes this process started and has not reaped, with their file
/// prefixes.
static LIVE: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<(u32, String)>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The file prefixes of the testpmd processes this process runs now.
pub fn live_testpmds() -> Vec<String> {
    live().iter().map(|(_, p)| p.clone()).collect()
}

/// A request to the spawner thread.
type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Starts `cmd` from the `vhb-spawner` thread, which lives as long as the process, so that
/// the child's `PR_SET_PDEATHSIG` fires when the process dies and not when some shorter
/// thread of it exits.
fn spawn_from_spawner(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let started = thread::Builder::new()
            .name("vhb-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            eprintln!("warning: no spawner thread ({e}); testpmd is started directly");
        }
        Mutex::new(tx)
    });
    sys::die_with_parent(&mut cmd, libc::SIGKILL);
    let (reply_tx, reply_rx) = mpsc::channel();
    let sent = spawner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((cmd, reply_tx));
    match sent {
        Ok(()) => reply_rx
            .recv()
            .map_err(|_| io::Error::other("the spawner thread is gone"))?,
        // No spawner thread: start it here (the death signal then follows this thread).
        Err(mpsc::SendError((mut cmd, _))) => cmd.spawn(),
    }
}

/// A running `dpdk-testpmd`, at its prompt between calls.
#[derive(Debug)]
pub struct Testpmd {
    child: Child,
    pid: u32,
    prefix: String,
    /// `<prefix> (<vdev> <mode>)`, for messages.
    label: String,
    stdin: Option<ChildStdin>,
    out: Arc<Output>,
    readers: Vec<thread::JoinHandle<()>>,
    exited: Option<ExitStatus>,
    config: TestpmdConfig,
}

impl Testpmd {
    /// Starts `testpmd` (the program to run: `dpdk-testpmd` or a path) with `config` and
    /// waits for its first prompt; its port is then configured but not forwarding. Needs
    /// hugepages in the pool ([`super::Hugepages`]) and root.
    pub fn spawn(testpmd: &Path, config: &TestpmdConfig) -> anyhow::Result<Testpmd> {
        super::register_exit_hook();
        let prefix = super::unique_name();
        let label = format!(
            "testpmd {prefix} ({} {})",
            config.vdev.kind(),
            config.forward.name()
        );
        // testpmd prints its replies with stdio, which a pipe makes fully buffered (a reply
        // would come out a command or more late, after the prompt that ends it); the prompt
        // itself is a plain write(2). `stdbuf` (coreutils) makes its stdout unbuffered, then
        // execs it, so the process is testpmd itself.
        let mut cmd = Command::new(STDBUF);
        cmd.args(["-o0", "-e0"])
            .arg(testpmd)
            .args(config.args(&prefix))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group: a Ctrl-C at the terminal reaches the harness, which stops it
        // in order, instead of killing it under the harness's feet.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = {
            let mut live = live();
            let child = spawn_from_spawner(cmd)
                .with_context(|| format!("starting {STDBUF} {} for {label}", testpmd.display()))?;
            live.push((child.id(), prefix.clone()));
            child
        };
        let pid = child.id();
        let out = Arc::new(Output::default());
        let mut readers = Vec::new();
        if let Some(mut stdout) = child.stdout.take() {
            let out = Arc::clone(&out);
            readers.push(spawn_reader(&prefix, "out", move |buf| {
                let n = stdout.read(buf);
                let mut st = out.lock();
                match n {
                    Ok(n) if n > 0 => st.stdout(&buf[..n]),
                    _ => st.eof = true,
                }
                out.changed.notify_all();
                n
            })?);
        }
        if let Some(mut stderr) = child.stderr.take() {
            let out = Arc::clone(&out);
            readers.push(spawn_reader(&prefix, "err", move |buf| {
                let n = stderr.read(buf);
                if let Ok(n) = n {
                    out.lock().stderr(&buf[..n]);
                }
                n
            })?);
        }
        let mut t = Testpmd {
            stdin: child.stdin.take(),
            child,
            pid,
            prefix,
            label,
            out,
            readers,
            exited: None,
            config: config.clone(),
        };
        t.wait_reply(STARTUP_TIMEOUT, "start-up (EAL and port set-up)")?;
        Ok(t)
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its `--file-prefix` (`vhb-<pid>-<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What it was started with.
    pub fn config(&self) -> &TestpmdConfig {
        &self.config
    }

    /// Types `command` at the prompt and returns the reply (the echoed command line, then
    /// what testpmd printed, up to the next prompt).
    pub fn command(&mut self, command: &str, timeout: Duration) -> anyhow::Result<String> {
        anyhow::ensure!(
            !command.contains('\n'),
            "one command at a time: {command:?}"
        );
        // Prompts nobody asked for (none expected) would shift every reply by one.
        while self.out.lock().take_reply().is_some() {}
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: its input is closed", self.label))?;
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{}: typing {command:?}", self.label))?;
        self.wait_reply(timeout, &format!("command {command:?}"))
    }

    fn wait_reply(&mut self, timeout: Duration, what: &str) -> anyhow::Result<String> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut st = self.out.lock();
        loop {
            if let Some(reply) = st.take_reply() {
                return Ok(reply);
            }
            let now = Instant::now();
            if st.eof || now >= deadline {
                let why = if st.eof {
                    "it exited (or closed its output)"
                } else {
                    "no prompt"
                };
                let tail = st.tail_text();
                drop(st);
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "{}: {what}: {why} after {:.1} s{}; its last output:\n{tail}",
                    self.label,
                    started.elapsed().as_secs_f64(),
                    status.map(|s| format!(" ({s})")).unwrap_or_default(),
                );
            }
            st = self
                .out
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Starts forwarding (`start`).
    pub fn start(&mut self) -> anyhow::Result<()> {
        let reply = self.command("start", COMMAND_TIMEOUT)?;
        if reply.contains("Packet forwarding already started") {
            bail!("{}: start: forwarding was already started", self.label);
        }
        Ok(())
    }

    /// Stops forwarding (`stop`) and returns what it forwarded since `start`.
    pub fn stop(&mut self) -> anyhow::Result<ForwardStats> {
        let reply = self.command("stop", COMMAND_TIMEOUT)?;
        ForwardStats::parse(&reply).with_context(|| format!("{}: stop", self.label))
    }

    /// Port 0's counters (`show port stats 0`).
    pub fn port_stats(&mut self) -> anyhow::Result<PortStats> {
        let reply = self.command("show port stats 0", COMMAND_TIMEOUT)?;
        PortStats::parse(&reply).with_context(|| format!("{}: show port stats 0", self.label))
    }

    /// Whether port 0's link is up (`show port info 0`: a vhost port is up once a driver has
    /// connected and started its queues, a virtio-user port once it is connected).
    pub fn link_up(&mut self) -> anyhow::Result<bool> {
        let reply = self.command("show port info 0", COMMAND_TIMEOUT)?;
        let status = reply
            .lines()
            .find_map(|l| l.trim().strip_prefix("Link status:"))
            .ok_or_else(|| anyhow!("{}: show port info 0: no link status", self.label))?;
        Ok(status.trim() == "up")
    }

    /// Waits (polling every 20 ms) until port 0's link is up.
    pub fn wait_link_up(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.link_up()? {
            if Instant::now() >= deadline {
                bail!(
                    "{}: port 0's link still down after {:.1} s (is the other side of {} \
                     running?)",
                    self.label,
                    timeout.as_secs_f64(),
                    match &self.config.vdev {
                        Vdev::Vhost { iface: p, .. } | Vdev::VirtioUser { path: p, .. } => {
                            p.display().to_string()
                        }
                        Vdev::Null => "net_null0".into(),
                    }
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Types `quit` and waits for it to exit (its port stopped and closed); kills it if it
    /// does not exit in time, which is then the error.
    pub fn quit(mut self) -> anyhow::Result<()> {
        let typed = self.stdin.as_mut().map(|s| {
            s.write_all(b"quit\n")
                .and_then(|()| s.flush())
                .map_err(anyhow::Error::from)
        });
        self.stdin = None;
        if let Some(Err(e)) = typed {
            self.kill();
            return Err(e.context(format!("{}: typing quit", self.label)));
        }
        match self.wait_exit(QUIT_TIMEOUT) {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!(
                "{}: quit: exited with {s}; its last output:\n{}",
                self.label,
                self.out.lock().tail_text()
            ),
            None => {
                self.kill();
                bail!(
                    "{}: quit: still running after {:.0} s, killed; its last output:\n{}",
                    self.label,
                    QUIT_TIMEOUT.as_secs_f64(),
                    self.out.lock().tail_text()
                )
            }
        }
    }

    /// Reaps it if it has exited (unregistering it in the same breath, so its pid is never
    /// signalled after it could be reused).
    fn reap(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            let mut live = live();
            if let Ok(Some(s)) = self.child.try_wait() {
                live.retain(|(p, _)| *p != self.pid);
                self.exited = Some(s);
            }
        }
        self.exited
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.reap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then SIGKILL after [`KILL_PATIENCE`]; reaped either way.
    fn kill(&mut self) {
        self.stdin = None;
        if self.reap().is_some() {
            return;
        }
        let _ = sys::kill(self.pid, libc::SIGTERM);
        if self.wait_exit(KILL_PATIENCE).is_none() {
            let _ = sys::kill(self.pid, libc::SIGKILL);
            if self.wait_exit(KILL_PATIENCE).is_none() {
                eprintln!(
                    "warning: {} (pid {}) survives SIGKILL for {KILL_PATIENCE:?}",
                    self.label, self.pid
                );
            }
        }
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.kill();
        // Its output closes with it; a reader that does not finish is left to itself.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        remove_runtime_dir(&self.prefix);
    }
}

fn spawn_reader(
    prefix: &str,
    which: &str,
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize> + Send + 'static,
) -> anyhow::Result<thread::JoinHandle<()>> {
    // Thread names show 15 bytes: `tp-<n>-out`.
    let n = prefix.rsplit('-').next().unwrap_or("");
    thread::Builder::new()
        .name(format!("tp-{n}-{which}"))
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
        .context("spawning a testpmd output reader")
}

/// DPDK's runtime directory of file prefix `prefix` (`/var/run/dpdk/<prefix>` as root).
pub fn runtime_dir(prefix: &str) -> PathBuf {
    let base = if crate::topology::sys::geteuid() == 0 {
        PathBuf::from("/var/run")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
    };
    base.join("dpdk").join(prefix)
}

fn remove_runtime_dir(prefix: &str) {
    let dir = runtime_dir(prefix);
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            eprintln!("warning: removing {}: {e}", dir.display());
        }
        _ => {}
    }
}

/// The exit hook: SIGTERM to every testpmd this process runs, SIGKILL to those still there
/// after [`KILL_PATIENCE`], their runtime directories removed. They are not reaped here (their
/// [`Testpmd`] values do that, or the process exits).
pub(super) fn kill_all_live() {
    let deadline = Instant::now() + KILL_PATIENCE;
    let live = loop {
        match LIVE.try_lock() {
            Ok(g) => break g,
            Err(TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(TryLockError::WouldBlock) => {
                eprintln!("vhostbench: testpmd processes left running (registry busy)");
                return;
            }
        }
    };
    // Holding the registry: nothing is reaped meanwhile, so every pid is still ours.
    let procs: Vec<(u32, String)> = live.clone();
    terminate(&procs);
    for (pid, prefix) in &procs {
        remove_runtime_dir(prefix);
        eprintln!("vhostbench: stopped testpmd {prefix} (pid {pid})");
    }
    drop(live);
}

/// SIGTERM to each, SIGKILL to those that are not gone (dead or zombies) after
/// [`KILL_PATIENCE`], and a bounded wait for those.
fn terminate(procs: &[(u32, String)]) {
    for (pid, _) in procs {
        let _ = sys::kill(*pid, libc::SIGTERM);
    }
    for sig in [Some(libc::SIGKILL), None] {
        let deadline = Instant::now() + KILL_PATIENCE;
        while procs.iter().any(|(p, _)| !process_dead(*p)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if let Some(sig) = sig {
            for (pid, _) in procs.iter().filter(|(p, _)| !process_dead(*p)) {
                let _ = sys::kill(*pid, sig);
            }
        }
    }
}

/// The file prefix of a `dpdk-testpmd` command line (NUL-separated, as in
/// `/proc/<pid>/cmdline`), if it is one.
pub fn testpmd_prefix(cmdline: &[u8]) -> Option<String> {
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = Path::new(args.first()?).file_name()?.to_str()?;
    if program != super::TESTPMD {
        return None;
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--file-prefix" {
            return it.next().cloned();
        }
        if let Some(p) = a.strip_prefix("--file-prefix=") {
            return Some(p.to_string());
        }
    }
    None
}

/// Kills the testpmd processes of vhostbench processes that are gone (and this process's
/// that it does not know: a process with the same pid ran before), removes their runtime
/// directories and those left without a process, and says what it did.
pub fn cleanup_stale() -> Vec<String> {
    let me = std::process::id();
    let known = live_testpmds();
    let stale_owner = |prefix: &str| match owner_pid(prefix) {
        Some(p) if p == me => !known.iter().any(|k| k == prefix),
        Some(p) => process_dead(p),
        None => false,
    };
    let mut stale = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if let Some(prefix) = testpmd_prefix(&cmdline) {
                if stale_owner(&prefix) && !process_dead(pid) {
                    stale.push((pid, prefix));
                }
            }
        }
    }
    terminate(&stale);
    let mut done: Vec<String> = stale
        .iter()
        .map(|(pid, prefix)| format!("killed stale testpmd {prefix} (pid {pid})"))
        .collect();
    if let Some(dir) = runtime_dir("x").parent() {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if stale_owner(&name) {
                    remove_runtime_dir(&name);
                    done.push(format!("removed stale DPDK runtime directory {name}"));
                }
            }
        }
    }
    done
}

/// Runs `cmd` (stdin closed) and returns its stdout and stderr, together; kills it and fails
/// if it takes longer than `timeout`.
pub(crate) fn output_bounded(mut cmd: Command, timeout: Duration) -> anyhow::Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut readers = Vec::new();
    for mut pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        readers.push(thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        }));
    }
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {:.0} s, killed", timeout.as_secs_f64());
        }
        thread::sleep(Duration::from_millis(10));
    }
    let mut text = String::new();
    for r in readers {
        let v = r.join().map_err(|_| anyhow!("output reader panicked"))?;
        text.push_str(&String::from_utf8_lossy(&v));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT_STATS: &str = "show port stats 0

  ######################## NIC statistics for port 0  ########################
  RX-packets: 25139680   RX-missed: 3          RX-bytes:  1608939520
  RX-errors: 1
  RX-nombuf:  2         
  TX-packets: 7          TX-errors: 0          TX-bytes:  448

  Throughput (since last show)
  Rx-pps:      4594781          Rx-bps:   2352528048
  Tx-pps:            0          Tx-bps:            0
  ############################################################################
";

    const STOP: &str = "stop
Telling cores to stop...
Waiting for lcores to finish...

  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 0              RX-dropped: 0             RX-total: 0
  TX-packets: 27411552       TX-dropped: 47822688      TX-total: 75234240
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 1              RX-dropped: 1             RX-total: 2
  TX-packets: 1              TX-dropped: 1             TX-total: 2
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++

Done.
";

    #[test]
    fn port_stats_parse() {
        let s = PortStats::parse(PORT_STATS).expect("parse");
        assert_eq!(
            s,
            PortStats {
                rx_packets: 25_139_680,
                rx_missed: 3,
                rx_bytes: 1_608_939_520,
                rx_errors: 1,
                rx_nombuf: 2,
                tx_packets: 7,
                tx_errors: 0,
                tx_bytes: 448,
            }
        );
        assert!(PortStats::parse("show port stats 0\nInvalid port 0\n").is_err());
    }

    #[test]
    fn forward_stats_parse_port_0_not_the_total() {
        let s = ForwardStats::parse(STOP).expect("parse");
        assert_eq!(
            s,
            ForwardStats {
                rx_packets: 0,
                rx_dropped: 0,
                tx_packets: 27_411_552,
                tx_dropped: 47_822_688,
            }
        );
        let e = ForwardStats::parse("stop\nPacket forwarding not started\n").expect_err("err");
        assert!(format!("{e}").contains("not started"));
    }

    #[test]
    fn prompts_are_found_across_reads_and_replies_split_at_them() {
        let mut st = OutState::default();
        st.stdout(b"EAL: something\nChecking link statuses...\nDone\ntestp");
        assert!(st.take_reply().is_none());
        st.stdout(b"md> ");
        assert_eq!(
            st.take_reply().as_deref(),
            Some("EAL: something\nChecking link statuses...\nDone\n")
        );
        st.stdout(b"VHOST_CONFIG: a log line after the prompt\n");
        st.stdout(b"show port stats 0\nstats\ntestpmd> stop\nstopped\ntestpmd> ");
        assert_eq!(
            st.take_reply().as_deref(),
            Some("VHOST_CONFIG: a log line after the prompt\nshow port stats 0\nstats\n")
        );
        assert_eq!(st.take_reply().as_deref(), Some("stop\nstopped\n"));
        assert!(st.take_reply().is_none());
        assert!(st.buf.is_empty());
        assert!(st.tail_text().contains("stopped"));
    }

    #[test]
    fn command_lines() {
        let mut c = TestpmdConfig::new(
            Vdev::VirtioUser {
                path: "/run/x.sock".into(),
                queue_size: 256,
                server: false,
            },
            ForwardMode::TxOnly,
        );
        c.vdev_extra = vec!["in_order=1".into()];
        let a = c.args("vhb-1-2");
        let s = a.join(" ");
        assert!(s.starts_with("--lcores 0@1,1@0 --no-pci --in-memory --single-file-segments"));
        assert!(s.contains(
            "--file-prefix vhb-1-2 --vdev net_virtio_user0,path=/run/x.sock,queues=1,\
             queue_size=256,server=0,in_order=1 -- -i --forward-mode=txonly"
        ));
        assert!(s.contains("--rxd=256 --txd=256 --burst=32 --txpkts=64 --total-num-mbufs=8192"));
        let v = Vdev::Vhost {
            iface: "/run/y.sock".into(),
            client: true,
        };
        assert_eq!(v.arg(&[]), "net_vhost0,iface=/run/y.sock,queues=1,client=1");
        let c = TestpmdConfig::new(v, ForwardMode::RxOnly);
        assert_eq!((c.fwd_core, c.main_core), (worker_core(), vcpu_core()));
    }

    #[test]
    fn testpmd_command_lines_are_recognised() {
        let line = |args: &[&str]| args.join("\0").into_bytes();
        assert_eq!(
            testpmd_prefix(&line(&[
                "/usr/bin/dpdk-testpmd",
                "--file-prefix",
                "vhb-9-1"
            ]))
            .as_deref(),
            Some("vhb-9-1")
        );
        assert_eq!(
            testpmd_prefix(&line(&["dpdk-testpmd", "--file-prefix=vhb-9-2", "--"])).as_deref(),
            Some("vhb-9-2")
        );
        assert_eq!(
            testpmd_prefix(&line(&["grep", "--file-prefix", "vhb-9-1"])),
            None
        );
        assert_eq!(
            testpmd_prefix(&line(&["dpdk-testpmd", "--", "--file-prefix", "vhb-9-1"])),
            None
        );
    }

    #[test]
    fn bounded_output() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2"]);
        let t = output_bounded(c, Duration::from_secs(5)).expect("sh");
        assert!(t.contains("out") && t.contains("err"), "{t}");
        let mut c = Command::new("sleep");
        c.arg("5");
        let e = output_bounded(c, Duration::from_millis(100)).expect_err("timeout");
        assert!(format!("{e}").contains("killed"));
    }
}
