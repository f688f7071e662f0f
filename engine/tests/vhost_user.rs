//! The engine's vhost-user server driven by guest-sim's vhost-user frontend, two
//! implementations of the protocol written apart (the server's message layer is rust-vmm's
//! `vhost` crate, the frontend's is its own): every workload crosses exactly once, a queue
//! stopped with `GET_VRING_BASE` says where it stopped and a second connection resumes there,
//! and a frontend's bad requests are refused while the server keeps serving.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use engine::backend::null::{NullBackend, NullMode};
use engine::backend::Backend;
use engine::metrics::get;
use engine::vhost_user::{NetServer, Server};
use engine::worker::WorkerConfig;
use guest_sim::testbed::{Testbed, TestbedConfig};
use guest_sim::traffic::{self, TrafficConfig, Workload};
use guest_sim::vhost_user::{Frontend, VhostUserError};
use guest_sim::{Buf, DriverQueue, FreeOrder};
use std::io::Write;
use vring::net::{bit, Features};

const FRAME: usize = 64;
const QUEUE: u16 = 256;
const PATIENCE: Duration = Duration::from_secs(5);

fn state(index: u32, num: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&index.to_le_bytes());
    b[4..8].copy_from_slice(&num.to_le_bytes());
    b
}

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vhb-vu-{}-{name}.sock", std::process::id()))
}

/// A server whose devices run the null backend for `w`.
fn server(name: &str, w: Workload) -> (Server, PathBuf) {
    let path = socket_path(name);
    let mode = match w {
        Workload::Tx => NullMode::Sink,
        Workload::Rx => NullMode::Source { frame_len: FRAME },
        Workload::Rr | Workload::Echo => NullMode::Reflect {
            capacity: QUEUE as usize,
        },
    };
    let factory = Box::new(move |_: &Arc<_>, _: Features, pairs: usize| {
        Ok((0..pairs)
            .map(|_| Box::new(NullBackend::new(mode, true)) as Box<dyn Backend>)
            .collect())
    });
    let s = Server::start(&path, NetServer::new(1, factory, WorkerConfig::default()))
        .expect("server starts");
    (s, path)
}

fn testbed() -> Testbed {
    testbed_in(None)
}

/// Guest memory in regions of `region_len` bytes, one memfd each, mapped apart, buffers
/// across their boundaries (see `TestbedConfig::region_len`), if given.
fn testbed_in(region_len: Option<u64>) -> Testbed {
    Testbed::new(&TestbedConfig {
        guest_mem_bytes: 4 << 20,
        queue_size: QUEUE,
        pairs: 1,
        frame_len: FRAME,
        mrg_rxbuf: true,
        region_len,
    })
    .expect("testbed")
}

fn wanted() -> Features {
    Features::of(&[
        bit::VERSION_1,
        bit::RING_EVENT_IDX,
        bit::MRG_RXBUF,
        bit::IN_ORDER,
    ])
}

/// A frontend on `path` that negotiated [`wanted`], sent `tb`'s memory and started both
/// queues at 0.
fn started(path: &std::path::Path, tb: &Testbed) -> (Frontend, Features) {
    let mut fe = Frontend::connect(path, PATIENCE).expect("connect");
    let f = fe.negotiate(wanted()).expect("negotiate");
    fe.set_mem_table(&tb.mem).expect("memory");
    fe.start(&tb.device, &[0, 0]).expect("start");
    (fe, f)
}

/// Runs `w` on `tb`'s first pair through `fe` and stops the device with `GET_VRING_BASE` when
/// the guest quiesces: the guest's report and the bases the backend answered.
fn run_then_stop(
    tb: &Testbed,
    fe: &mut Frontend,
    w: Workload,
    f: Features,
) -> (guest_sim::traffic::TrafficReport, Vec<u16>) {
    let stop = AtomicBool::new(false);
    let mut bases = None;
    let r = traffic::run(&tb.guest[0], &traffic_cfg(w, f), &stop, &mut || {
        bases = Some(fe.stop().expect("GET_VRING_BASE"));
    });
    (r, bases.expect("stopped"))
}

fn traffic_cfg(w: Workload, f: Features) -> TrafficConfig {
    TrafficConfig {
        workload: w,
        frame_len: FRAME,
        rate_pps: None,
        duration: Duration::from_millis(80),
        warmup: Duration::ZERO,
        poll: false,
        event_idx: f.has(bit::RING_EVENT_IDX),
        indirect: false,
        mrg_rxbuf: f.has(bit::MRG_RXBUF),
        in_order: f.has(bit::IN_ORDER),
        verify_bytes: true,
        exit_cost_ns: 0,
        count_foreign: false,
        free_order: FreeOrder::Fifo,
    }
}

#[test]
fn every_workload_crosses_a_vhost_user_socket_exactly_once() {
    // One memfd, and memory in 1 MiB regions (one fd each, mapped apart in both processes,
    // buffers across region boundaries): the server maps what the table says.
    for (w, regions) in [
        (Workload::Tx, None),
        (Workload::Rx, None),
        (Workload::Rr, None),
        (Workload::Tx, Some(1 << 20)),
        (Workload::Rx, Some(1 << 20)),
    ] {
        let (srv, path) = server(&format!("once-{w:?}-{regions:?}"), w);
        let tb = testbed_in(regions);
        let mut fe = Frontend::connect(&path, PATIENCE).expect("connect");
        let f = fe.negotiate(wanted()).expect("negotiate");
        assert_eq!(f, wanted(), "the engine offers all of them");
        fe.set_mem_table(&tb.mem).expect("memory");
        fe.start(&tb.device, &[0, 0]).expect("start");
        assert!(srv.state().is_running(), "{w:?}: the device started");
        let metrics = srv
            .state()
            .device()
            .map(|d| d.metrics().clone())
            .expect("device");
        let stop = AtomicBool::new(false);
        let mut bases = None;
        let r = traffic::run(&tb.guest[0], &traffic_cfg(w, f), &stop, &mut || {
            bases = Some(fe.stop().expect("GET_VRING_BASE"));
        });
        assert!(r.error.is_none(), "{w:?}: {:?}", r.error);
        assert_eq!(r.rx_corrupt + r.rx_out_of_order, 0, "{w:?}");
        assert!(
            !srv.state().is_running(),
            "{w:?}: stopped by GET_VRING_BASE"
        );
        match w {
            Workload::Tx => {
                assert!(r.sent > 0);
                assert_eq!(
                    get(&metrics.tx.packets),
                    r.sent,
                    "every TX frame reached the backend"
                );
            }
            Workload::Rx => {
                assert!(r.received > 0);
                assert_eq!(
                    get(&metrics.rx.packets),
                    r.received,
                    "every RX frame reached the guest"
                );
            }
            _ => {
                assert!(r.received > 0);
                assert_eq!(r.received, r.sent, "every request came back");
            }
        }
        // The bases are where the rings stopped: as many as the guest posted on TX.
        let bases = bases.expect("stopped");
        if w == Workload::Tx {
            assert_eq!(u64::from(bases[1]), r.sent % 65536);
        }
        let st = srv.state().stats.clone();
        assert_eq!((st.connections, st.starts, st.refused), (1, 1, 0), "{st:?}");
        drop(fe);
        srv.shutdown().expect("shutdown");
        assert!(!path.exists(), "the socket file is removed");
    }
}

#[test]
fn bad_requests_are_refused_and_the_server_keeps_serving() {
    let (srv, path) = server("hostile", Workload::Tx);
    let tb = testbed();
    {
        // Rings outside guest memory: refused when the device would start.
        let mut fe = Frontend::connect(&path, PATIENCE).expect("connect");
        fe.negotiate(wanted()).expect("negotiate");
        fe.set_mem_table(&tb.mem).expect("memory");
        fe.start(&tb.device, &[0, 0]).expect("a good start");
        assert!(srv.state().is_running());
        // Stop queue 1, give it a descriptor table far outside memory, enable it again.
        fe.send_raw(18, &state(1, 0)).expect("disable");
        let mut addr = Vec::new();
        addr.extend_from_slice(&1u32.to_le_bytes());
        addr.extend_from_slice(&0u32.to_le_bytes());
        for va in [1u64 << 40, 1 << 41, 1 << 42] {
            addr.extend_from_slice(&va.to_le_bytes());
        }
        addr.extend_from_slice(&0u64.to_le_bytes());
        fe.send_raw(9, &addr).expect("stored; checked at start");
        let e = fe.send_raw(18, &state(1, 1)).expect_err("refused");
        assert!(matches!(e, VhostUserError::Refused { .. }), "{e}");
        assert!(!srv.state().is_running());
        let why = srv.state().stats.last_refusal.clone().unwrap_or_default();
        assert!(why.contains("outside guest memory"), "{why}");
    }
    {
        // A queue size that is not a power of two.
        let mut fe = Frontend::connect(&path, PATIENCE).expect("connect");
        fe.negotiate(wanted()).expect("negotiate");
        fe.set_mem_table(&tb.mem).expect("memory");
        let e = fe.send_raw(8, &state(0, 100)).expect_err("refused");
        assert!(matches!(e, VhostUserError::Refused { .. }), "{e}");
        // An unknown request and a body of the wrong size: refused, the connection kept.
        assert!(fe.send_raw(9999, &[]).is_err());
        assert!(fe.send_raw(8, &[1, 2, 3]).is_err() || srv.state().stats.refused > 0);
    }
    // A well-behaved frontend afterwards is served.
    let mut fe = Frontend::connect(&path, PATIENCE).expect("connect");
    let f = fe.negotiate(wanted()).expect("negotiate");
    fe.set_mem_table(&tb.mem).expect("memory");
    fe.start(&tb.device, &[0, 0]).expect("start");
    let stop = AtomicBool::new(false);
    let r = traffic::run(
        &tb.guest[0],
        &traffic_cfg(Workload::Tx, f),
        &stop,
        &mut || {
            fe.stop().expect("stop");
        },
    );
    assert!(r.error.is_none() && r.sent > 0, "{:?}", r.error);
    let st = srv.state().stats.clone();
    assert_eq!(st.connections, 3, "{st:?}");
    assert!(st.refused >= 2, "{st:?}");
    srv.shutdown().expect("shutdown");
}

/// A frontend that stops its queues (`GET_VRING_BASE`), goes away and comes back with those
/// bases (`SET_VRING_BASE`) is served from where the rings stopped: the device starts at the
/// base instead of rejecting a ring already in use, and the next frames are taken once.
#[test]
fn a_frontend_that_comes_back_resumes_where_the_queues_stopped() {
    let (srv, path) = server("resume", Workload::Tx);
    let tb = testbed();
    let (mut fe, f) = started(&path, &tb);
    let (r, bases) = run_then_stop(&tb, &mut fe, Workload::Tx, f);
    assert!(r.error.is_none() && r.sent > 0, "{:?}", r.error);
    assert_eq!(u64::from(bases[1]), r.sent % 65536);
    drop(fe);

    // Back again, at the bases it was given; the guest's driver goes on from there too (its
    // rings set up before the device starts on them, as a driver does before DRIVER_OK).
    let g = &tb.guest[0];
    let mut q = DriverQueue::new_at(&g.mem, g.pair.tx.addrs, true, bases[1]).expect("driver");
    let mut fe = Frontend::connect(&path, PATIENCE).expect("reconnect");
    fe.negotiate(wanted()).expect("negotiate");
    fe.set_mem_table(&tb.mem).expect("memory");
    fe.start(&tb.device, &bases).expect("resume");
    const MORE: u64 = 10;
    for i in 0..MORE {
        let gpa = g.bufs.tx[i as usize];
        let mut b = vec![0u8; 12 + FRAME];
        vring::frame::fill(&mut b[12..], r.sent + i, 0);
        g.mem.write_gpa(gpa, &b).expect("frame");
        q.add_one(&g.mem, Buf::read(gpa, b.len() as u32))
            .expect("post");
    }
    q.publish(&g.mem).expect("publish");
    (&g.pair.tx.kick)
        .write_all(&1u64.to_ne_bytes())
        .expect("kick");
    let deadline = std::time::Instant::now() + PATIENCE;
    while srv.state().served().tx_packets < r.sent + MORE && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        srv.state().served().tx_packets,
        r.sent + MORE,
        "each frame taken once"
    );
    let st = srv.state().stats.clone();
    assert_eq!((st.starts, st.refused), (2, 0), "{st:?}");
    assert_eq!(
        fe.stop().expect("stop again"),
        vec![bases[0], bases[1].wrapping_add(MORE as u16)]
    );
    srv.shutdown().expect("shutdown");
}

/// The RX base a stopped device answers counts the buffers it filled and no more: buffers it
/// popped ahead of frames that never came (request/response: a batch popped for the first
/// response, one used) go back to the ring first, or a frontend resuming there would never
/// see them again.
#[test]
fn a_stopped_rx_queue_answers_the_buffers_it_filled() {
    let (srv, path) = server("rx-base", Workload::Rr);
    let tb = testbed();
    let (mut fe, f) = started(&path, &tb);
    let (r, bases) = run_then_stop(&tb, &mut fe, Workload::Rr, f);
    assert!(r.error.is_none() && r.received > 0, "{:?}", r.error);
    // 64-byte frames in 2 KiB buffers: one buffer each.
    assert_eq!(u64::from(bases[0]), r.received % 65536, "RX base");
    assert_eq!(u64::from(bases[1]), r.sent % 65536, "TX base");
    drop(fe);
    srv.shutdown().expect("shutdown");
}

/// A frontend that goes away mid-run, without `GET_VRING_BASE` (a VMM killed): the server
/// stops the device, keeps serving, and the next frontend gets a device that moves every
/// frame again.
#[test]
fn a_frontend_that_disconnects_mid_run_leaves_the_server_serving() {
    let (srv, path) = server("vanish", Workload::Rx);
    let tb = testbed();
    let (fe, f) = started(&path, &tb);
    let metrics = srv
        .state()
        .device()
        .map(|d| d.metrics().clone())
        .expect("device");
    // The guest receives; the connection closes under it.
    let stop = AtomicBool::new(false);
    let mut cfg = traffic_cfg(Workload::Rx, f);
    cfg.duration = Duration::from_secs(10);
    std::thread::scope(|s| {
        let guest = s.spawn(|| traffic::run(&tb.guest[0], &cfg, &stop, &mut || {}));
        let deadline = std::time::Instant::now() + PATIENCE;
        while get(&metrics.rx.packets) < 1000 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            get(&metrics.rx.packets) >= 1000,
            "frames flow before the frontend leaves"
        );
        drop(fe);
        let deadline = std::time::Instant::now() + PATIENCE;
        while srv.state().is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !srv.state().is_running(),
            "the device stopped with its frontend"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // What the guest makes of a device that vanished is its business; it must end.
        let _ = guest.join().expect("guest thread");
    });

    // A new frontend, a new guest: a fresh device, every frame once.
    let tb = testbed();
    let mut fe = Frontend::connect(&path, PATIENCE).expect("reconnect");
    fe.negotiate(f).expect("negotiate");
    fe.set_mem_table(&tb.mem).expect("memory");
    fe.start(&tb.device, &[0, 0]).expect("start");
    let metrics = srv
        .state()
        .device()
        .map(|d| d.metrics().clone())
        .expect("device");
    let stop = AtomicBool::new(false);
    let r = traffic::run(
        &tb.guest[0],
        &traffic_cfg(Workload::Rx, f),
        &stop,
        &mut || {
            fe.stop().expect("GET_VRING_BASE");
        },
    );
    assert!(r.error.is_none() && r.received > 0, "{:?}", r.error);
    assert_eq!(r.rx_corrupt, 0);
    assert_eq!(
        get(&metrics.rx.packets),
        r.received,
        "every frame reached the guest"
    );
    let st = srv.state().stats.clone();
    assert_eq!((st.connections, st.starts, st.refused), (2, 2, 0), "{st:?}");
    srv.shutdown().expect("shutdown");
}
