//! The VF pool against the real kernel: allocation, exhaustion and release, frames across a VF
//! and through the PF's embedded switch, and nothing left behind. Each test needs root and
//! skips (with the reason on stderr) without it.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use harness::topology::{self, link_stats, packet_socket, veths, Netns, VfPool};

fn privileged(test: &str) -> bool {
    let p = topology::probe();
    if !p.can_run {
        harness::testing::skip(test, &p.summary());
    }
    p.can_run
}

/// Test frames (by sequence number) read from a non-blocking socket until `n` arrived or
/// `patience` passed.
fn read_seqs_for(sock: &mut File, n: usize, patience: Duration) -> Vec<u64> {
    let deadline = Instant::now() + patience;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 2048];
    while got.len() < n && Instant::now() < deadline {
        match sock.read(&mut buf) {
            Ok(len) => got.extend(vring::frame::seq(&buf[..len])),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                topology::wait_readable(sock, Duration::from_millis(50)).expect("poll");
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

fn read_seqs(sock: &mut File, n: usize) -> Vec<u64> {
    read_seqs_for(sock, n, Duration::from_secs(5))
}

/// Nothing more arrives on `sock` within a short while.
fn quiet(sock: &mut File) -> bool {
    read_seqs_for(sock, 1, Duration::from_millis(200)).is_empty()
}

fn frame(seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    vring::frame::fill(&mut f, seq, 0);
    f
}

#[test]
fn vfs_are_taken_released_and_exhaustion_names_the_pool() {
    if !privileged("vfs_are_taken_released_and_exhaustion_names_the_pool") {
        return;
    }
    let ns = Netns::create().expect("netns");
    let pool = VfPool::create(&ns, "pf0", 2).expect("pool");
    assert_eq!((pool.pf(), pool.size(), pool.in_use()), ("pf0", 2, 0));
    let mut names = veths(&ns).expect("veths");
    names.sort();
    assert_eq!(names, ["pf0v0", "pf0v1", "pf0w0", "pf0w1"]);

    let a = pool.take().expect("first VF");
    let b = pool.take().expect("second VF");
    assert_eq!((a.name(), a.wire(), a.index()), ("pf0v0", "pf0w0", 0));
    assert_eq!((b.name(), b.wire()), ("pf0v1", "pf0w1"));
    assert_eq!(pool.in_use(), 2);
    let e = pool.take().expect_err("a third VF from a pool of two");
    let msg = format!("{e:#}");
    assert!(msg.contains("pf0") && msg.contains('2'), "{msg}");

    // A released VF is the next one handed out.
    drop(a);
    assert_eq!(pool.in_use(), 1);
    let again = pool.take().expect("the released VF");
    assert_eq!(again.name(), "pf0v0");
    drop((again, b));
    assert_eq!(pool.in_use(), 0);

    // Every wire end is a port of the PF's bridge.
    let ports = ns
        .ip(&["-j", "link", "show", "master", "pf0"])
        .expect("ports");
    for w in ["pf0w0", "pf0w1"] {
        assert!(ports.contains(&format!("\"{w}\"")), "{ports}");
    }

    // Dropping the pool deletes its interfaces; another one with another size can follow.
    drop(pool);
    assert!(veths(&ns).expect("veths").is_empty());
    assert!(ns.ip(&["link", "show", "dev", "pf0"]).is_err());
    let bigger = VfPool::create(&ns, "pf0", 3).expect("pool of three");
    assert_eq!(veths(&ns).expect("veths").len(), 6);
    drop(bigger);
    assert!(veths(&ns).expect("veths").is_empty());
}

#[test]
fn bad_pools_are_refused_before_anything_is_created() {
    if !privileged("bad_pools_are_refused_before_anything_is_created") {
        return;
    }
    let ns = Netns::create().expect("netns");
    assert!(VfPool::create(&ns, "pf0", 0).is_err());
    assert!(VfPool::create(&ns, "thirteen-char", 11).is_err());
    assert!(VfPool::create(&ns, "bad name", 1).is_err());
    // A name already taken fails, and what was created on the way is deleted.
    ns.ip(&["link", "add", "name", "pf1v1", "type", "bridge"])
        .expect("a bridge in the way");
    assert!(VfPool::create(&ns, "pf1", 2).is_err());
    assert!(veths(&ns).expect("veths").is_empty());
    assert!(ns.ip(&["link", "show", "dev", "pf1"]).is_err());
}

#[test]
fn frames_cross_a_vf_both_ways_and_vf_to_vf_through_the_switch() {
    if !privileged("frames_cross_a_vf_both_ways_and_vf_to_vf_through_the_switch") {
        return;
    }
    let ns = Netns::create().expect("netns");
    let pool = VfPool::create(&ns, "pf0", 2).expect("pool");
    let (a, b) = (pool.take().expect("vf"), pool.take().expect("vf"));
    let mut sa = a.backend_socket().expect("socket on the VF end");
    let mut sb = b.backend_socket().expect("socket on the other VF end");
    const N: u64 = 50;

    // VF → wire: every frame counted once by the wire end.
    let before = link_stats(&ns, a.wire()).expect("stats");
    for s in 0..N {
        assert_eq!(sa.write(&frame(s)).expect("send"), 64);
    }
    // ... and switched to the other VF (unknown destination: flooded to every other port).
    assert_eq!(read_seqs(&mut sb, N as usize), (0..N).collect::<Vec<_>>());
    let after = link_stats(&ns, a.wire()).expect("stats");
    assert_eq!(after.rx_packets - before.rx_packets, N);
    // The sender does not read back its own frames (PACKET_IGNORE_OUTGOING).
    assert!(quiet(&mut sa));

    // wire → VF: frames sent into the wire end come out of the VF end, once each.
    let wire = packet_socket(&ns, a.wire(), false).expect("socket on the wire end");
    for s in 100..100 + N {
        assert_eq!((&wire).write(&frame(s)).expect("inject"), 64);
    }
    assert_eq!(
        read_seqs(&mut sa, N as usize),
        (100..100 + N).collect::<Vec<_>>()
    );
    assert!(quiet(&mut sa), "a frame came twice");
    assert_eq!(
        topology::packet_socket_drops(&sa).expect("stats"),
        0,
        "the VF socket dropped frames"
    );
}
