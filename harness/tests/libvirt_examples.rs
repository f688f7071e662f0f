//! Every libvirt example in `examples/libvirt/` maps to its expected mode and settings, and
//! every error case fails with a message that says what and where. Devices are probed in a
//! fake sysfs: the one shipped with the examples, or one made in a temporary directory.

use std::fs;
use std::path::{Path, PathBuf};

use harness::cli::{RunArgs, VfBackend};
use harness::libvirt::{self, Input, LibvirtError, Mapping, Settings, SysfsRoot};
use harness::modes::Selector;
use harness::topology::Privileges;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/libvirt")
}

fn sysfs() -> SysfsRoot {
    SysfsRoot::new(dir().join("sysfs"))
}

/// A host that can run both tap modes, or one with taps but no io_uring (emulated only).
/// Built field by field from the default, so a field added to `Privileges` later keeps its
/// default here (hence not a struct literal, which clippy would otherwise prefer).
#[allow(clippy::field_reassign_with_default)]
fn host(can_run: bool) -> Privileges {
    let mut p = Privileges::default();
    p.can_run = can_run;
    if !can_run {
        p.reasons = vec!["io_uring is disabled (kernel.io_uring_disabled = 2)".into()];
    }
    p.taps = true;
    p.io_uring = can_run;
    p
}

/// A host with no privileges at all: neither tap mode.
#[allow(clippy::field_reassign_with_default)]
fn unprivileged() -> Privileges {
    let mut p = Privileges::default();
    p.reasons = vec!["not root (euid 1000) and no CAP_NET_ADMIN in the effective set".into()];
    p.io_uring = true;
    p
}

fn map_on(file: &str, network: Option<&str>, host: &Privileges) -> Result<Mapping, LibvirtError> {
    let d = dir();
    let net = network.map(|n| d.join(n));
    libvirt::map_files(&d.join(file), net.as_deref(), host, &sysfs())
}

fn map(file: &str, network: Option<&str>) -> Mapping {
    map_on(file, network, &host(true)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn err(file: &str, network: Option<&str>) -> String {
    match map_on(file, network, &host(true)) {
        Ok(m) => panic!("{file} mapped to {}: {:#?}", m.mode.name(), m.lines()),
        Err(e) => e.to_string(),
    }
}

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

/// The examples this test knows, so that a new one cannot go untested.
const KNOWN: &[&str] = &[
    "bridge-virtio-auto.xml",
    "bridge-driver-qemu.xml",
    "network-driver-vhost.xml",
    "net-default.xml",
    "direct-passthrough.xml",
    "hostdev.xml",
    "network-hostdev-pool.xml",
    "net-hostdev-pool.xml",
    "network-hostdev-pool-inline.xml",
    "source-network-bridge.xml",
    "source-network-pf.xml",
    "source-network-plain.xml",
    "driver-settings.xml",
    "unsupported-unequal-queue-sizes.xml",
    "unsupported-elements.xml",
    "error-e1000.xml",
    "error-direct-vepa.xml",
    "error-no-such-device.xml",
    "error-queue-size.xml",
];

#[test]
fn every_example_is_tested() {
    let mut files: Vec<String> = fs::read_dir(dir())
        .expect("examples/libvirt")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".xml"))
        .collect();
    files.sort();
    let mut known: Vec<String> = KNOWN.iter().map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(files, known);
}

#[test]
fn the_tap_examples() {
    let m = map("bridge-virtio-auto.xml", None);
    assert_eq!(m.mode.name(), "tap-vhost");
    assert!(
        has(&m.reasons, "automatic, as libvirt does"),
        "{:#?}",
        m.reasons
    );
    assert!(has(&m.reasons, "auto: tap-vhost"), "{:#?}", m.reasons);
    assert!(
        has(&m.probed, "class/net/br0/bridge: exists"),
        "{:#?}",
        m.probed
    );
    for unused in ["<mac ", "<target ", "<alias ", "<address "] {
        assert!(has(&m.unused, unused), "{unused}: {:#?}", m.unused);
    }
    assert!(m.unsupported.is_empty(), "{:#?}", m.unsupported);
    assert_eq!(m.settings.bridge.as_deref(), Some("br0"));

    // Automatic on a host without the tap privileges: emulated, saying why.
    let m = map_on("bridge-virtio-auto.xml", None, &host(false)).expect("map");
    assert_eq!(m.mode.name(), "emulated");
    assert!(has(
        &m.reasons,
        "auto: emulated, because tap-vhost cannot run: io_uring is disabled"
    ));
    // With neither: what auto would pick, and why it cannot run here.
    let m = map_on("bridge-virtio-auto.xml", None, &unprivileged()).expect("map");
    assert_eq!(m.mode.name(), "tap-vhost");
    assert!(has(
        &m.reasons,
        "neither tap-vhost nor emulated can run here"
    ));
    assert!(m
        .unavailable
        .as_deref()
        .is_some_and(|u| u.starts_with("not root")));
    assert!(has(
        &m.lines(),
        "on this host: tap-vhost cannot run: not root"
    ));

    let m = map("bridge-driver-qemu.xml", None);
    assert_eq!(m.mode.name(), "emulated");
    assert!(
        has(&m.reasons, "<driver name='qemu'> at "),
        "{:#?}",
        m.reasons
    );

    let m = map("network-driver-vhost.xml", Some("net-default.xml"));
    assert_eq!(m.mode.name(), "tap-vhost");
    assert!(has(&m.reasons, "network 'default'"), "{:#?}", m.reasons);
    assert!(has(&m.reasons, "vhost, forced"), "{:#?}", m.reasons);
    assert_eq!(m.settings.bridge.as_deref(), Some("virbr0"));
    // The network's addressing is reported, not silently dropped, and nothing is unsupported.
    assert!(
        has(&m.unused, "<ip address='192.168.122.1'"),
        "{:#?}",
        m.unused
    );
    assert!(has(&m.unused, "<bridge stp='on'>"), "{:#?}", m.unused);
    assert!(m.unsupported.is_empty(), "{:#?}", m.unsupported);

    let m = map("source-network-bridge.xml", None);
    assert_eq!(m.mode.name(), "tap-vhost");
    assert!(has(&m.reasons, "br0 is a bridge"), "{:#?}", m.reasons);
}

#[test]
fn vhost_forced_where_it_cannot_run_fails_with_the_probes_reason() {
    let e = map_on(
        "network-driver-vhost.xml",
        Some("net-default.xml"),
        &host(false),
    )
    .expect_err("cannot run");
    let msg = e.to_string();
    assert!(
        msg.contains("network-driver-vhost.xml:6:11: <driver name='vhost'> forces tap-vhost, which cannot run here: io_uring is disabled"),
        "{msg}"
    );
}

#[test]
fn the_direct_vf_examples() {
    let m = map("direct-passthrough.xml", None);
    assert_eq!(m.mode.name(), "direct-vf");
    assert_eq!(
        m.settings,
        Settings {
            vf_backend: Some(VfBackend::Macvtap),
            device: Some("ens1f0v0".into()),
            ..Settings::default()
        }
    );

    let m = map("hostdev.xml", None);
    assert_eq!(m.mode.name(), "direct-vf");
    assert_eq!(m.settings.pf.as_deref(), Some("ens1f0"));
    assert_eq!(m.settings.pci.as_deref(), Some("0000:02:07.0"));
    assert!(has(&m.probed, "physfn/net: ens1f0"), "{:#?}", m.probed);
    assert!(
        has(&m.unused, "<interface managed='yes'>"),
        "{:#?}",
        m.unused
    );

    let m = map("network-hostdev-pool.xml", Some("net-hostdev-pool.xml"));
    assert_eq!(m.mode.name(), "direct-vf");
    assert_eq!(
        (m.settings.pf.as_deref(), m.settings.vfs),
        (Some("ens1f0"), None)
    );
    assert!(
        has(&m.reasons, "<forward mode='hostdev'>"),
        "{:#?}",
        m.reasons
    );
    assert!(m.unsupported.is_empty(), "{:#?}", m.unsupported);

    let m = map("network-hostdev-pool-inline.xml", None);
    assert_eq!(m.mode.name(), "direct-vf");
    assert_eq!(
        (m.settings.pf.as_deref(), m.settings.vfs),
        (Some("ens1f0"), Some(2))
    );
    assert!(m.unsupported.is_empty(), "{:#?}", m.unsupported);

    let m = map("source-network-pf.xml", None);
    assert_eq!(m.mode.name(), "direct-vf");
    assert_eq!(
        (m.settings.pf.as_deref(), m.settings.vf_backend),
        (Some("ens1f0"), None)
    );
    assert!(has(&m.probed, "sriov_numvfs: 4"), "{:#?}", m.probed);

    let m = map("source-network-plain.xml", None);
    assert_eq!(m.mode.name(), "direct-vf");
    assert_eq!(m.settings.vf_backend, Some(VfBackend::Macvtap));
    assert_eq!(m.settings.device.as_deref(), Some("eth0"));
    assert!(has(&m.probed, "sriov_numvfs: absent"), "{:#?}", m.probed);
}

#[test]
fn driver_settings_become_the_runs() {
    let m = map("driver-settings.xml", None);
    assert_eq!(m.mode.name(), "tap-vhost");
    assert_eq!(
        (m.settings.queue_size, m.settings.queues),
        (Some(1024), Some(1))
    );
    assert_eq!(
        (m.settings.event_idx, m.settings.mrg_rxbuf),
        (Some(false), Some(false))
    );
    assert!(m.unsupported.is_empty(), "{:#?}", m.unsupported);

    let mut args = RunArgs::default();
    m.apply(&mut args, &[]).expect("apply");
    assert_eq!(args.modes, [Selector::One(m.mode)]);
    assert_eq!(args.queue_size, 1024);
    assert!(!args.event_idx && !args.mrg_rxbuf);

    // An option given that agrees is fine; one that disagrees names both.
    let mut args = RunArgs {
        queue_size: 1024,
        ..RunArgs::default()
    };
    m.apply(&mut args, &["queue_size".into()]).expect("agrees");
    let mut args = RunArgs {
        queue_size: 512,
        ..RunArgs::default()
    };
    let e = m
        .apply(&mut args, &["queue_size".into()])
        .expect_err("conflict");
    let msg = e.to_string();
    assert!(
        msg.starts_with("--queue-size 512 conflicts with <driver rx_queue_size='1024' tx_queue_size='1024'> at ")
            && msg.contains("driver-settings.xml:6:35: queue size 1024"),
        "{msg}"
    );
    // An option the file does not set still applies.
    let mut args = RunArgs {
        duration_ms: 500,
        ..RunArgs::default()
    };
    m.apply(&mut args, &["duration_ms".into()]).expect("apply");
    assert_eq!(args.duration_ms, 500);
}

#[test]
fn modes_given_with_an_interface_conflict() {
    let m = map("bridge-driver-qemu.xml", None);
    let mut args = RunArgs {
        modes: vec!["null".parse().expect("null")],
        ..RunArgs::default()
    };
    let msg = m
        .apply(&mut args, &["modes".into()])
        .expect_err("conflict")
        .to_string();
    assert!(
        msg.starts_with("--modes null conflicts with <interface type='bridge'> at ")
            && msg.contains("bridge-driver-qemu.xml:2:12: mode emulated"),
        "{msg}"
    );
    let m = map("direct-passthrough.xml", None);
    let mut args = RunArgs {
        vf_backend: vec![VfBackend::AfXdp],
        ..RunArgs::default()
    };
    let msg = m
        .apply(&mut args, &["vf_backend".into()])
        .expect_err("conflict")
        .to_string();
    assert!(
        msg.starts_with("--vf-backend af-xdp conflicts with <interface type='direct'>"),
        "{msg}"
    );
}

#[test]
fn unsupported_is_a_warning_for_interface_and_an_error_for_run() {
    let m = map("unsupported-unequal-queue-sizes.xml", None);
    assert_eq!(m.mode.name(), "tap-vhost");
    assert_eq!(m.settings.queue_size, None);
    assert_eq!(
        (
            m.settings.rx_queue_size,
            m.settings.tx_queue_size,
            m.settings.queues
        ),
        (Some(1024), Some(256), Some(4))
    );
    assert!(
        has(&m.unsupported, "<driver queues='4'> at "),
        "{:#?}",
        m.unsupported
    );
    assert!(has(
        &m.unsupported,
        "RX 1024 and TX 256: the engine takes one queue size"
    ));
    assert!(has(
        &m.lines(),
        "unsupported (an error for run --interface): "
    ));
    let msg = m
        .apply(&mut RunArgs::default(), &[])
        .expect_err("unsupported")
        .to_string();
    assert!(
        msg.starts_with(
            "the interface asks for what vhostbench cannot honour:\n  <driver queues='4'>"
        ),
        "{msg}"
    );

    let m = map("unsupported-elements.xml", None);
    let u = &m.unsupported;
    assert_eq!(u.len(), 5, "{u:#?}");
    for (i, start) in [
        "<driver txmode='iothread'> at ",
        "<host csum='off'> at ",
        "<bandwidth> at ",
        "<vlan> at ",
        "<frobnicate> at ",
    ]
    .iter()
    .enumerate()
    {
        assert!(u[i].starts_with(start), "{start}: {u:#?}");
    }
    assert!(u[4].ends_with("unsupported-elements.xml:15:3: not known to vhostbench"));
    assert!(m.apply(&mut RunArgs::default(), &[]).is_err());
}

#[test]
fn error_cases_say_what_and_where() {
    let e = err("error-e1000.xml", None);
    assert!(
        e.ends_with("error-e1000.xml:4:10: <model type='e1000'>: vhost-net serves only virtio-net devices; use <model type='virtio'/>"),
        "{e}"
    );
    let e = err("error-direct-vepa.xml", None);
    assert!(
        e.contains("error-direct-vepa.xml:4:22: <source dev='eth0' mode='vepa'>: not supported by vhostbench: macvtap in vepa mode"),
        "{e}"
    );
    let e = err("error-no-such-device.xml", None);
    assert!(
        e.contains("network='nosuch0' names no network definition that was given (--network FILE) and no device on this host")
            && e.contains("class/net/nosuch0: no such device"),
        "{e}"
    );
    let e = err("error-queue-size.xml", None);
    assert!(
        e.ends_with("error-queue-size.xml:5:11: <driver rx_queue_size='300'>: expected a power of two from 256 to 1024, as libvirt and QEMU allow"),
        "{e}"
    );
    // A network definition that is not the one the interface names.
    let e = err("network-hostdev-pool.xml", Some("net-default.xml"));
    assert!(e.contains("the definition given is named 'default'"), "{e}");
    // A network definition is not an interface.
    let e = err("net-default.xml", None);
    assert!(
        e.contains("net-default.xml:2:1: <network> found where <interface>"),
        "{e}"
    );
}

/// Small inline cases: each error names its element and position.
#[test]
fn inline_error_cases() {
    let no_sysfs = SysfsRoot::new("/nonexistent-sysfs");
    let one = |text: &str| {
        libvirt::map(
            Input {
                name: "t.xml",
                text,
            },
            None,
            &host(true),
            &no_sysfs,
        )
        .map(|m| m.mode.name())
        .map_err(|e| e.to_string())
    };
    let cases: &[(&str, &str)] = &[
        ("<interface>", "t.xml is not well-formed XML"),
        ("<interface/>", "t.xml:1:1: <interface> has no attribute 'type'"),
        (
            "<interface type='user'/>",
            "t.xml:1:12: <interface type='user'>: not supported by vhostbench",
        ),
        (
            "<interface type='bridge'><model type='virtio'/></interface>",
            "t.xml:1:1: <interface> has no <source>",
        ),
        (
            "<interface type='bridge'><source bridge='br0'/></interface>",
            "no <model>: not supported by vhostbench: libvirt then gives the guest the hypervisor's default NIC",
        ),
        (
            "<interface type='bridge'><source bridge='br0'/><model type='virtio'/><driver name='vfio'/></interface>",
            "<driver name='vfio'>: expected vhost or qemu",
        ),
        (
            "<interface type='bridge'><source bridge='br0'/><model type='virtio'/><driver event_idx='yes'/></interface>",
            "t.xml:1:78: <driver event_idx='yes'>: expected on or off",
        ),
        (
            "<interface type='bridge'><source bridge='br0'/><model type='virtio'/><driver queues='0'/></interface>",
            "<driver queues='0'>: expected a queue-pair count from 1",
        ),
        (
            "<interface type='direct'><source dev='eth0'/><model type='virtio'/></interface>",
            "<source dev='eth0'> (no mode: libvirt's default is vepa)",
        ),
        (
            "<interface type='direct'><source dev='eth0' mode='passthrough'/><model type='virtio'/><driver name='qemu'/></interface>",
            "<driver name='qemu'> on macvtap: not supported by vhostbench: QEMU's own device model (emulated) runs on a tap only",
        ),
        (
            "<interface type='hostdev'><source><address type='usb' bus='1' device='2'/></source></interface>",
            "<address type='usb'>: expected pci",
        ),
        (
            "<interface type='hostdev'><source><address type='pci' slot='0x40'/></source></interface>",
            "<address slot='0x40'>: expected a number up to 0x1f",
        ),
        (
            "<interface type='network'><source network='a/b'/><model type='virtio'/></interface>",
            "network='a/b' names no network definition",
        ),
        (
            "<domain><devices/></domain>",
            "t.xml:1:1: <domain> found where <interface>, or <vhostbench>",
        ),
        (
            "<interface type='bridge'><source bridge='br0'/><model type='virtio'/><model type='virtio'/></interface>",
            "a second <model>",
        ),
    ];
    for (text, want) in cases {
        match one(text) {
            Ok(mode) => panic!("{text}: mapped to {mode}"),
            Err(e) => assert!(e.contains(want), "{text}:\n  got  {e}\n  want {want}"),
        }
    }
    // A type='bridge' source that is no device here is still the bridge it says it is.
    assert_eq!(
        one("<interface type='bridge'><source bridge='br9'/><model type='virtio'/><driver name='qemu'/></interface>"),
        Ok("emulated")
    );
}

/// The probe, against a sysfs laid out in a temporary directory.
#[test]
fn probing_a_fake_sysfs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let net = tmp.path().join("class/net");
    fs::create_dir_all(net.join("ens2f0/device")).expect("mkdir");
    fs::write(net.join("ens2f0/device/sriov_numvfs"), "0\n").expect("write");
    fs::create_dir_all(net.join("ens3f0/device")).expect("mkdir");
    fs::write(net.join("ens3f0/device/sriov_numvfs"), "16\n").expect("write");
    let root = SysfsRoot::new(tmp.path());
    let text = |dev: &str| {
        format!(
            "<interface type='network'><source network='{dev}'/><model type='virtio'/></interface>"
        )
    };
    let m = |dev: &str| {
        let t = text(dev);
        libvirt::map(
            Input {
                name: "t.xml",
                text: &t,
            },
            None,
            &host(true),
            &root,
        )
    };
    // A PF with no VFs enabled is a plain device: macvtap on it.
    let a = m("ens2f0").expect("map");
    assert_eq!(
        (a.mode.name(), a.settings.vf_backend, a.settings.pf),
        ("direct-vf", Some(VfBackend::Macvtap), None)
    );
    assert!(has(
        &a.probed,
        "sriov_numvfs: 0, so a physical function with no VFs enabled"
    ));
    let b = m("ens3f0").expect("map");
    assert_eq!(
        (b.settings.pf.as_deref(), b.settings.vf_backend),
        (Some("ens3f0"), None)
    );
    let e = m("br0").expect_err("no br0 in this tree").to_string();
    assert!(e.contains("class/net/br0: no such device"), "{e}");
}

/// `for_run` leaves a run without `--interface` alone, and applies one with it.
#[test]
fn for_run_applies_the_file() {
    let mut args = RunArgs::default();
    assert!(libvirt::for_run(&mut args, &[]).expect("no file").is_none());
    assert_eq!(args.modes, [Selector::All]);
    let mut args = RunArgs {
        interface: Some(dir().join("bridge-driver-qemu.xml")),
        ..RunArgs::default()
    };
    let m = libvirt::for_run(&mut args, &[])
        .expect("maps")
        .expect("a mapping");
    assert_eq!(m.mode.name(), "emulated");
    assert_eq!(args.modes, [Selector::One(m.mode)]);
}
