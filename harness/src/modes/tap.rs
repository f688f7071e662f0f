//! The tap topology the tap modes share (`emulated` and `tap-vhost`: a [`TapDevice`] each).
//!
//! Tap topologies, built fresh in a namespace per run and deleted after it, as libvirt's
//! `type='bridge'` wires a tap: the tap is a port of bridge `br0`, whose uplink is a veth pair
//! (`up0` on the bridge, `upw0` the wire end) — the same kind of wire end a `direct-vf` VF's
//! frames cross to, so the two compare backend paths, not sinks:
//! - `tx`: frames cross the bridge and the uplink to the wire end, whose receive counter must
//!   count every frame the device sent; the namespace's stack consumes them there.
//! - `rx`: an injector sends numbered frames into the wire end; they cross the uplink and the
//!   bridge and come out of the tap fd towards the guest.
//! - `rr`: a second tap on the same bridge, a second guest on it echoing every frame back.

use std::fs::File;

use anyhow::{Context, Result};
use engine::device::{Device, DeviceSpec};
use engine::worker::WorkerConfig;
use guest_sim::traffic::Workload;

use super::far;
use crate::pair::{self, PairConfig, RunOutcome};
use crate::results::Workload as ResultsWorkload;
use crate::topology::{self, Netns, Tap};

/// A device that runs on a tap queue (the tap modes: `emulated`, `tap-vhost`).
pub trait TapDevice: Sync {
    /// The mode's name.
    fn name(&self) -> &'static str;
    /// Starts the device on `tap` with the device's half of the wiring.
    fn start(&self, tap: File, spec: DeviceSpec, wcfg: WorkerConfig) -> Result<Device>;
}

/// Why a tap mode's combination cannot give a meaningful number here, if it cannot: `rr` runs
/// two guests and two devices (four threads); with busy polling on both sides they all spin,
/// and with fewer than four cores they only take turns in scheduler time slices (round trips
/// of milliseconds that measure the scheduler, not the data path).
pub fn oversubscribed(workload: ResultsWorkload, polling: bool, cores: usize) -> Option<String> {
    (workload == ResultsWorkload::Rr && polling && cores < 4).then(|| {
        format!(
            "rr across the bridge with polling needs 4 spinning threads (2 vCPUs, 2 devices); \
             this machine has {cores} cores"
        )
    })
}

fn dup(t: &Tap) -> Result<File> {
    t.file.try_clone().context("dup tap fd")
}

/// One run of `dev` on a fresh tap topology for `cfg.workload`.
pub fn run_tap(dev: &dyn TapDevice, cfg: &PairConfig) -> Result<RunOutcome> {
    let ns = Netns::create().context("network namespace")?;
    // No offloads yet: the device sets them from the negotiated features.
    let offloads = 0;
    let tap0 = topology::open_tap(&ns, "tap0", offloads)?;
    let keep0 = dup(&tap0)?;
    let hdr = topology::TAP_VNET_HDR_LEN;
    let wire = topology::UPLINK_WIRE;
    let mut out = match cfg.workload {
        Workload::Tx | Workload::Echo => {
            topology::bridge_with_uplink(&ns, "br0", &["tap0"])?;
            let before = topology::link_stats(&ns, wire)?;
            let mut o = pair::run(cfg, |spec, w| dev.start(tap0.file, spec, w))?;
            let after = topology::link_stats(&ns, wire)?;
            // Every frame the tap took crossed the bridge to the wire end (a veth counts a
            // frame at the far end when it hands it over).
            let arrived = after.rx_packets - before.rx_packets;
            let sent = engine::metrics::get(&o.metrics.tx.packets);
            if arrived != sent {
                o.notes.push(format!(
                    "the device sent {sent} frames, the uplink's wire end received {arrived}"
                ));
            }
            o
        }
        Workload::Rx => {
            topology::bridge_with_uplink(&ns, "br0", &["tap0"])?;
            let (mut o, injected) =
                far::run_injected(&ns, wire, cfg, |spec, w| dev.start(tap0.file, spec, w))?;
            // The injector sends out of the wire end: its retried refusals are in that end's
            // tx_dropped; frames the bridge could not queue to the tap are the tap's.
            let tx_dropped = topology::link_stats(&ns, wire)?.tx_dropped;
            far::add_drops(
                &mut o,
                "wire_queue_full",
                injected.dropped_after_send(tx_dropped),
            );
            let tap_full = topology::link_stats(&ns, "tap0")?.tx_dropped;
            far::add_drops(&mut o, "tap_queue_full", tap_full);
            o
        }
        Workload::Rr => {
            let tap1 = topology::open_tap(&ns, "tap1", offloads)?;
            let keep1 = dup(&tap1)?;
            topology::bridge_with_uplink(&ns, "br0", &["tap0", "tap1"])?;
            let mut o = far::run_with_echo(
                cfg,
                |spec, w| dev.start(tap0.file, spec, w),
                |spec, w| dev.start(tap1.file, spec, w),
            )?;
            // What the kernel could not queue to either tap (towards either guest), and what
            // was still in the far tap's queue when its device stopped.
            for (tap, reason) in [("tap0", "tap_queue_full"), ("tap1", "far_tap_queue_full")] {
                let tx_dropped = topology::link_stats(&ns, tap)?.tx_dropped;
                far::add_drops(&mut o, reason, tx_dropped);
            }
            far::add_drops(&mut o, "left_in_far_tap", far::drain(&keep1, hdr));
            o
        }
    };
    // Frames still in the tap's queue when the device stopped.
    far::add_drops(&mut out, "left_in_tap", far::drain(&keep0, hdr));
    drop(ns);
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The tap modes end to end, on real taps in a private namespace. They need root (or
    //! CAP_NET_ADMIN + CAP_SYS_ADMIN) and /dev/net/tun; without them they skip, saying why.
    use super::*;
    use crate::modes::{emulated::Emulated, tap_vhost::TapVhost};
    use engine::net::device::{negotiate, DEFAULT_OFFER};
    use engine::sys;
    use guest_sim::testbed::Testbed;
    use guest_sim::traffic::NicBuffers;
    use guest_sim::{Buf, DriverQueue, MockGuest};
    use std::io::Read;
    use std::time::{Duration, Instant};
    use vring::frame;
    use vring::net::{bit, Features};
    use vring::net::{VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM};

    use crate::topology::{packet_socket_with, wait_readable, PacketOptions};

    const DEVICES: [&dyn TapDevice; 2] = [&TapVhost, &Emulated];

    fn can_run(test: &str) -> bool {
        let p = topology::probe();
        if !p.can_run {
            crate::testing::skip(test, &p.summary());
        }
        p.can_run
    }

    fn cfg(workload: Workload) -> PairConfig {
        pair::moderate_test_config(workload)
    }

    /// A UDP/IPv4 frame of 60 bytes whose checksum the guest asks the host to fill in.
    fn udp_frame() -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&frame::DST_MAC);
        f[6..12].copy_from_slice(&frame::SRC_MAC);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45; // IPv4, 20-byte header
        f[16..18].copy_from_slice(&46u16.to_be_bytes()); // total length
        f[22] = 64; // TTL
        f[23] = 17; // UDP
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&4000u16.to_be_bytes());
        f[36..38].copy_from_slice(&4001u16.to_be_bytes());
        f[38..40].copy_from_slice(&26u16.to_be_bytes()); // UDP length
        for (i, b) in f[42..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    #[test]
    fn guest_frames_reach_the_tap_with_bytes_and_offload_metadata() {
        if !can_run("guest_frames_reach_the_tap_with_bytes_and_offload_metadata") {
            return;
        }
        for dev in DEVICES {
            let ns = Netns::create().expect("netns");
            let tap = topology::open_tap(&ns, "tap0", 0).expect("tap");
            let opts = PacketOptions {
                vnet_hdr: true,
                nonblocking: true,
                ignore_outgoing: false,
            };
            let sniff = packet_socket_with(&ns, "tap0", opts).expect("packet socket");
            // A guest with one TX queue, driven by hand.
            let features = Features::of(&[bit::VERSION_1, bit::RING_EVENT_IDX, bit::CSUM]);
            let features = negotiate(DEFAULT_OFFER, features).expect("features");
            let mut g = MockGuest::new(1 << 20, &[64, 64]).expect("guest");
            let buf = g.alloc(128).expect("alloc");
            let queues = g.queues.clone();
            let tb =
                Testbed::from_guest(g.mem, &queues, vec![NicBuffers::default()]).expect("wire");
            let mem = tb.mem.clone();
            let spec = DeviceSpec {
                mem: tb.mem,
                features,
                pairs: tb.device,
            };
            let fds = &tb.guest[0].pair;
            let mut txq = DriverQueue::new(&mem, queues[1], true).expect("driver");
            let w = dev
                .start(tap.file, spec, WorkerConfig::default())
                .expect("device");
            let hdr = VirtioNetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                csum_start: 34,
                csum_offset: 6,
                ..Default::default()
            };
            let f = udp_frame();
            mem.write_gpa(buf, &hdr.to_bytes()).expect("hdr");
            mem.write_gpa(buf + 12, &f).expect("frame");
            // Header and frame in separate descriptors, to exercise the scattered path too.
            txq.add(
                &mem,
                &[Buf::read(buf, 12), Buf::read(buf + 12, f.len() as u32)],
            )
            .expect("add");
            if txq.publish(&mem).expect("publish") {
                sys::signal(&fds.tx.kick).expect("kick");
            }
            let mut got = None;
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut b = vec![0u8; 2048];
            while got.is_none() && Instant::now() < deadline {
                if !wait_readable(&sniff, Duration::from_millis(100)).expect("poll") {
                    continue;
                }
                while let Ok(n) = (&sniff).read(&mut b) {
                    // The kernel's 10-byte virtio_net_hdr, then the frame.
                    if n >= 10 + f.len() && b[10..10 + f.len()] == f[..] {
                        got = Some(b[..n].to_vec());
                    }
                }
            }
            let m = w.metrics().clone();
            let report = w.stop();
            assert!(
                report.queue_failures.is_empty() && report.fatal.is_none(),
                "{report:?}"
            );
            let got = got.unwrap_or_else(|| panic!("{}: frame never reached the tap", dev.name()));
            assert_eq!(
                got[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM,
                VIRTIO_NET_HDR_F_NEEDS_CSUM,
                "{}: flags {:#x}",
                dev.name(),
                got[0]
            );
            let csum_start = u16::from_le_bytes([got[6], got[7]]);
            let csum_offset = u16::from_le_bytes([got[8], got[9]]);
            assert_eq!((csum_start, csum_offset), (34, 6), "{}", dev.name());
            assert_eq!(engine::metrics::get(&m.tx.packets), 1);
            assert_eq!(txq.pop_used(&mem).expect("reap").map(|u| u.len), Some(0));
        }
    }

    #[test]
    fn injected_frames_arrive_in_the_guest() {
        if !can_run("injected_frames_arrive_in_the_guest") {
            return;
        }
        for dev in DEVICES {
            let c = cfg(Workload::Rx);
            let o = run_tap(dev, &c).expect("run");
            let w = Workload::Rx;
            assert!(
                o.guest.error.is_none() && o.worker.queue_failures.is_empty(),
                "{o:?}"
            );
            assert!(
                o.guest.received > 300,
                "{}: received {}",
                dev.name(),
                o.guest.received
            );
            assert_eq!(o.guest.rx_corrupt, 0);
            assert_eq!(o.guest.rx_out_of_order, 0, "{}", dev.name());
            assert_eq!(o.dropped(), 0, "{}: {:?}", dev.name(), o.drops_by_reason());
            assert_eq!(
                o.lost(w),
                0,
                "{}: sent {} received {}",
                dev.name(),
                o.sent(w),
                o.received(w)
            );
        }
    }

    #[test]
    fn two_guests_on_a_bridge_exchange_without_loss() {
        if !can_run("two_guests_on_a_bridge_exchange_without_loss") {
            return;
        }
        for dev in DEVICES {
            let mut c = cfg(Workload::Rr);
            c.rate_pps = Some(1000);
            let o = run_tap(dev, &c).expect("run");
            let w = Workload::Rr;
            assert!(o.notes.is_empty(), "{}: {:?}", dev.name(), o.notes);
            assert!(o.guest.error.is_none(), "{o:?}");
            assert!(
                o.guest.received > 100,
                "{}: received {}",
                dev.name(),
                o.guest.received
            );
            assert_eq!(o.guest.received, o.guest.sent, "{}", dev.name());
            assert_eq!(o.guest.rx_corrupt, 0);
            assert_eq!(o.lost(w), 0);
            assert_eq!(o.dropped(), 0, "{}: {:?}", dev.name(), o.drops_by_reason());
        }
    }

    #[test]
    fn guest_stream_into_the_tap_is_fully_accounted() {
        if !can_run("guest_stream_into_the_tap_is_fully_accounted") {
            return;
        }
        for dev in DEVICES {
            let o = run_tap(dev, &cfg(Workload::Tx)).expect("run");
            let w = Workload::Tx;
            assert!(o.guest.sent > 300);
            assert_eq!(o.received(w), o.guest.sent, "{}", dev.name());
            assert_eq!(o.lost(w), 0);
        }
    }
}
