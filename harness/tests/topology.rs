//! The privileged topology layer against the real kernel: namespaces, taps, packet sockets, a
//! bridge, and cleanup after SIGKILL. Each test needs root and skips (with the reason on
//! stderr) without it. Everything a test creates is owned by a guard, so it is removed even
//! when the test fails.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::topology::{
    self, bridge, cleanup_stale, open_tap, packet_socket_with, Netns, PacketOptions,
    PACKET_VNET_HDR_LEN, TAP_VNET_HDR_LEN, TUN_F_CSUM,
};
use vring::net::{VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM};

/// How long a test waits for a frame to show up.
const PATIENCE: Duration = Duration::from_secs(5);

/// Whether the tap layer can run here; prints why not.
fn privileged(test: &str) -> bool {
    let p = topology::probe();
    if !p.can_run {
        harness::testing::skip(test, &p.summary());
    }
    p.can_run
}

/// Names in `ip netns list`.
fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn listed(name: &str) -> bool {
    netns_list().iter().any(|n| n == name)
}

/// Reads frames from a non-blocking `fd` until one satisfies `want`, or `PATIENCE` passes.
fn read_until(fd: &mut File, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + PATIENCE;
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        match fd.read(&mut buf) {
            Ok(n) if want(&buf[..n]) => return Some(buf[..n].to_vec()),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                topology::wait_readable(fd, deadline - now).expect("poll");
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// A test frame (`vring::frame`) of `len` bytes with sequence number `seq`.
fn test_frame(len: usize, seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; len];
    vring::frame::fill(&mut f, seq, 0);
    f
}

fn with_tap_header(hdr: &VirtioNetHdr, frame: &[u8]) -> Vec<u8> {
    let mut v = hdr.to_bytes().to_vec();
    v.extend_from_slice(frame);
    v
}

#[test]
fn namespace_is_created_entered_and_deleted() {
    if !privileged("namespace_is_created_entered_and_deleted") {
        return;
    }
    let ns = Netns::create().expect("create");
    let name = ns.name().to_string();
    let prefix = format!("vhb-{}-", std::process::id());
    assert!(name.starts_with(&prefix), "{name}");
    assert_eq!(topology::owner_pid(&name), Some(std::process::id()));
    assert!(listed(&name), "{name} not in ip netns list");
    assert!(Path::new(topology::NETNS_DIR).join(&name).exists());

    // The thread of run_in is in another network namespace than this one.
    let here = std::fs::read_link("/proc/thread-self/ns/net").expect("own netns");
    let there = ns
        .run_in(|| std::fs::read_link("/proc/thread-self/ns/net").expect("netns"))
        .expect("run_in");
    assert_ne!(here, there);
    // ... the same one every time, with lo up.
    let again = ns
        .run_in(|| std::fs::read_link("/proc/thread-self/ns/net").expect("netns"))
        .expect("run_in");
    assert_eq!(there, again);
    let lo = ns
        .ip(&["-o", "link", "show", "dev", "lo"])
        .expect("ip link");
    assert!(lo.contains(",UP"), "{lo}");
    // IPv6 is off inside (no ::1, no autoconfiguration traffic on the taps).
    let v6 = ns.ip(&["-6", "-o", "addr", "show"]).expect("ip -6 addr");
    assert!(v6.trim().is_empty(), "{v6}");
    // A result comes back; (a panic inside is tested in topology_panic.rs, alone in its
    // process, since the panic hook deletes every namespace of the process).
    assert_eq!(ns.run_in(|| 6 * 7).expect("run_in"), 42);

    drop(ns);
    assert!(!listed(&name), "{name} still listed after drop");
}

#[test]
fn frame_written_to_tap_reaches_packet_socket() {
    if !privileged("frame_written_to_tap_reaches_packet_socket") {
        return;
    }
    let ns = Netns::create().expect("netns");
    let mut tap = open_tap(&ns, "tap0", 0).expect("tap");
    assert!(tap.ifindex > 0);
    let link = ns
        .ip(&["-o", "link", "show", "dev", "tap0"])
        .expect("ip link");
    assert!(link.contains(",UP") && link.contains("mtu 1500"), "{link}");
    assert!(
        link.starts_with(&format!("{}: tap0:", tap.ifindex)),
        "{link}"
    );
    let mut pkt = packet_socket_with(
        &ns,
        "tap0",
        PacketOptions {
            vnet_hdr: false,
            nonblocking: true,
            ignore_outgoing: false,
        },
    )
    .expect("packet socket");

    let frame = test_frame(64, 7);
    let wire = with_tap_header(&VirtioNetHdr::default(), &frame);
    assert_eq!(tap.file.write(&wire).expect("write tap"), wire.len());

    let got = read_until(&mut pkt, |f| vring::frame::seq(f) == Some(7))
        .expect("frame did not reach the packet socket");
    assert_eq!(got, frame);
    let stats = topology::link_stats(&ns, "tap0").expect("stats");
    assert_eq!(stats.rx_packets, 1, "{stats:?}");
}

#[test]
fn frame_injected_on_packet_socket_reaches_tap_fd() {
    if !privileged("frame_injected_on_packet_socket_reaches_tap_fd") {
        return;
    }
    let ns = Netns::create().expect("netns");
    let mut tap = open_tap(&ns, "tap0", 0).expect("tap");
    let mut pkt = packet_socket_with(&ns, "tap0", PacketOptions::default()).expect("socket");

    let frame = test_frame(100, 11);
    assert_eq!(pkt.write(&frame).expect("send"), frame.len());

    let got = read_until(&mut tap.file, |b| {
        b.len() > TAP_VNET_HDR_LEN && vring::frame::seq(&b[TAP_VNET_HDR_LEN..]) == Some(11)
    })
    .expect("frame did not reach the tap fd");
    assert_eq!(got.len(), TAP_VNET_HDR_LEN + frame.len());
    // No offload metadata: flags, gso_type and the rest of the header are zero.
    assert_eq!(got[..TAP_VNET_HDR_LEN], [0u8; TAP_VNET_HDR_LEN]);
    assert_eq!(got[TAP_VNET_HDR_LEN..], frame);
}

/// An Ethernet + IPv4 + UDP frame (198.18.0.1 -> 198.18.0.2, RFC 2544 benchmarking range; it
/// never leaves the namespace, whose stack drops it) with the UDP checksum field holding the
/// pseudo-header sum, as a sender asking for checksum offload leaves it.
fn udp4_frame(payload: &[u8]) -> Vec<u8> {
    let src = [198, 18, 0, 1];
    let dst = [198, 18, 0, 2];
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&vring::frame::DST_MAC);
    f.extend_from_slice(&vring::frame::SRC_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let sum = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&4001u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&fold(sum16(&pseudo)).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn partial_checksum_metadata_reaches_a_vnet_hdr_packet_socket() {
    if !privileged("partial_checksum_metadata_reaches_a_vnet_hdr_packet_socket") {
        return;
    }
    let ns = Netns::create().expect("netns");
    let mut tap = open_tap(&ns, "tap0", TUN_F_CSUM).expect("tap");
    let mut pkt = packet_socket_with(
        &ns,
        "tap0",
        PacketOptions {
            vnet_hdr: true,
            nonblocking: true,
            ignore_outgoing: false,
        },
    )
    .expect("packet socket");

    let frame = udp4_frame(b"vhostbench partial checksum");
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 14 + 20,
        csum_offset: 6,
        ..VirtioNetHdr::default()
    };
    let wire = with_tap_header(&hdr, &frame);
    assert_eq!(tap.file.write(&wire).expect("write tap"), wire.len());

    let got = read_until(&mut pkt, |b| {
        b.len() > PACKET_VNET_HDR_LEN && b[PACKET_VNET_HDR_LEN..] == frame[..]
    })
    .expect("frame did not reach the packet socket");
    let mut h = [0u8; 12];
    h[..PACKET_VNET_HDR_LEN].copy_from_slice(&got[..PACKET_VNET_HDR_LEN]);
    let meta = VirtioNetHdr::from_bytes(&h);
    assert_eq!(
        meta.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        "{meta:?}"
    );
    assert_eq!((meta.csum_start, meta.csum_offset), (34, 6), "{meta:?}");
    assert_eq!(meta.gso_type, 0, "{meta:?}");
}

#[test]
fn bridge_forwards_between_two_taps() {
    if !privileged("bridge_forwards_between_two_taps") {
        return;
    }
    let ns = Netns::create().expect("netns");
    let mut tap0 = open_tap(&ns, "tap0", 0).expect("tap0");
    let mut tap1 = open_tap(&ns, "tap1", 0).expect("tap1");
    bridge(&ns, "br0", &["tap0", "tap1"]).expect("bridge");

    // Unknown unicast destination: flooded to the other port. Resent now and then until it
    // arrives, in case the ports need a moment to forward.
    let deadline = Instant::now() + PATIENCE;
    let mut seq = 100;
    let got = loop {
        assert!(
            Instant::now() < deadline,
            "tap1 never got a frame from tap0"
        );
        let wire = with_tap_header(&VirtioNetHdr::default(), &test_frame(80, seq));
        assert_eq!(tap0.file.write(&wire).expect("write tap0"), wire.len());
        let deadline_one = Instant::now() + Duration::from_millis(200);
        let mut buf = vec![0u8; 2048];
        let mut found = None;
        while found.is_none() && Instant::now() < deadline_one {
            match tap1.file.read(&mut buf) {
                Ok(n) => {
                    let b = &buf[..n];
                    if n > TAP_VNET_HDR_LEN
                        && vring::frame::seq(&b[TAP_VNET_HDR_LEN..]).is_some_and(|s| s >= 100)
                    {
                        found = Some(b.to_vec());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    topology::wait_readable(&tap1.file, Duration::from_millis(20)).expect("poll");
                }
                Err(e) => panic!("read tap1: {e}"),
            }
        }
        if let Some(f) = found {
            break f;
        }
        seq += 1;
    };
    assert_eq!(got.len(), TAP_VNET_HDR_LEN + 80);
    let s = vring::frame::seq(&got[TAP_VNET_HDR_LEN..]).expect("seq");
    assert_eq!(got[TAP_VNET_HDR_LEN..], test_frame(80, s)[..]);

    // And back, now that the bridge has learned where SRC_MAC lives: a reply to it goes to
    // tap0 only.
    let mut reply = test_frame(80, 500);
    reply[..6].copy_from_slice(&vring::frame::SRC_MAC);
    reply[6..12].copy_from_slice(&[0x02, 0x76, 0x68, 0x62, 0x00, 0x09]);
    let wire = with_tap_header(&VirtioNetHdr::default(), &reply);
    assert_eq!(tap1.file.write(&wire).expect("write tap1"), wire.len());
    let back = read_until(&mut tap0.file, |b| {
        b.len() > TAP_VNET_HDR_LEN && b[TAP_VNET_HDR_LEN..] == reply[..]
    });
    assert!(back.is_some(), "tap0 never got the reply");
}

/// Environment variable that turns [`netns_holder_child`] into the holder process.
const HOLDER_ENV: &str = "VHB_TEST_NETNS_HOLDER";
/// Line prefix the holder prints its namespace name with.
const HOLDER_MARK: &str = "VHB_NETNS=";

/// Not a test of its own: re-executed by [`sigkill_leaves_a_namespace_for_cleanup_stale`] with
/// `VHB_TEST_NETNS_HOLDER=1`, it creates a namespace, prints its name and waits to be killed
/// (at most a minute). Without the variable it returns at once.
#[test]
fn netns_holder_child() {
    if std::env::var_os(HOLDER_ENV).is_none() {
        return;
    }
    let ns = Netns::create().expect("holder: create");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{HOLDER_MARK}{}", ns.name()).expect("holder: print");
    out.flush().expect("holder: flush");
    drop(out);
    std::thread::sleep(Duration::from_secs(60));
}

/// Starts the holder; returns it and its namespace's name.
fn start_holder() -> (Holder, String) {
    let exe = std::env::current_exe().expect("test binary");
    let child = Command::new(exe)
        .args([
            "--exact",
            "netns_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn holder");
    let mut holder = Holder { child };
    let stdout = holder.child.stdout.take().expect("holder stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        for line in lines.by_ref() {
            // With --nocapture the mark follows libtest's "test netns_holder_child ... ".
            if let Some((_, name)) = line.split_once(HOLDER_MARK) {
                let _ = tx.send(name.trim().to_string());
                break;
            }
        }
        // Keep draining, so the holder never blocks on a full pipe.
        lines.for_each(drop);
    });
    let name = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("holder never printed its namespace");
    assert_eq!(topology::owner_pid(&name), Some(holder.child.id()));
    assert!(listed(&name), "{name} not created");
    (holder, name)
}

/// Kills the holder and deletes its namespaces if the test did not get that far.
struct Holder {
    child: Child,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let Ok(entries) = std::fs::read_dir(topology::NETNS_DIR) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if topology::owner_pid(&name) == Some(self.child.id()) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
}

#[test]
fn sigkill_leaves_a_namespace_for_cleanup_stale() {
    if !privileged("sigkill_leaves_a_namespace_for_cleanup_stale") {
        return;
    }
    let (mut holder, name) = start_holder();

    holder.child.kill().expect("SIGKILL");
    let status = holder.child.wait().expect("reap holder");
    assert!(!status.success());
    // Nothing in the holder ran: its namespace is still there.
    assert!(listed(&name), "{name} vanished without cleanup");

    let removed = cleanup_stale();
    assert!(removed.contains(&name), "{removed:?} lacks {name}");
    assert!(!listed(&name), "{name} still listed after cleanup_stale");
}

#[test]
fn cleanup_stale_spares_live_namespaces() {
    if !privileged("cleanup_stale_spares_live_namespaces") {
        return;
    }
    let ns = Netns::create().expect("netns");
    let removed = cleanup_stale();
    assert!(!removed.iter().any(|n| n == ns.name()), "{removed:?}");
    assert!(listed(ns.name()));
}

#[test]
fn sigterm_deletes_the_namespace_and_exits_143() {
    if !privileged("sigterm_deletes_the_namespace_and_exits_143") {
        return;
    }
    let (mut holder, name) = start_holder();
    let pid = holder.child.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(kill.success());
    let status = holder.child.wait().expect("reap holder");
    assert_eq!(status.code(), Some(128 + 15), "{status}");
    assert!(!listed(&name), "{name} left behind after SIGTERM");
}
