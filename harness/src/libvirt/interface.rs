//! The rules: an `<interface>` (with the `<network>` it names, if given) to a mode and
//! settings. First where the device's frames go (a tap, macvtap on a device, a VF of a pool),
//! from the interface type, the network's forward mode or a sysfs probe; then what the guest
//! sees and who serves it (`<model>`, `<driver name>`), which picks among the modes that can
//! reach it.

use roxmltree::Node;

use super::driver::{self, DriverName};
use super::error::{LibvirtError, Pos};
use super::network::{Forward, NetworkDef};
use super::sysfs::{NetDev, SysfsRoot};
use super::xml::Xml;
use super::{Mapping, Settings};
use crate::cli::VfBackend;
use crate::modes::{self, direct_vf::DirectVf, emulated::Emulated, tap_vhost::TapVhost, Mode};
use crate::modes::{Selector, MODES};
use crate::topology::{check_ifname, Privileges};

/// Where the device's frames go.
#[derive(Debug)]
enum Path {
    /// A tap (on a bridge, if one is named).
    Tap { bridge: Option<String> },
    /// macvtap in passthrough mode on a host device.
    Macvtap { dev: String, pf: Option<String> },
    /// A VF of a PF's pool. `assigned`: libvirt would hand the VF itself to the guest
    /// (`hostdev`), so the guest's model is the VF's, not virtio.
    Pool {
        pf: Option<String>,
        vfs: Option<u32>,
        assigned: bool,
    },
}

/// Maps `iface`; the flag says whether `net` was the network it names (and so was used).
pub fn map(
    x: &Xml,
    iface: Node,
    net: Option<&NetworkDef>,
    host: &Privileges,
    sysfs: &SysfsRoot,
) -> Result<(Mapping, bool), LibvirtError> {
    let mut m = Mapping {
        // Replaced below once the rules have decided; never seen before that.
        mode: MODES[0],
        settings: Settings::default(),
        probed: Vec::new(),
        reasons: Vec::new(),
        unused: Vec::new(),
        unsupported: Vec::new(),
        origins: Vec::new(),
        unavailable: None,
    };
    x.mark(iface);
    let ty = x.attr(iface, "type").ok_or_else(|| LibvirtError::Missing {
        at: x.pos(iface),
        element: "interface",
        what: "attribute 'type'".into(),
        why: "it says what the device is attached to".into(),
    })?;
    let tat = x.attr_pos(iface, "type");
    let source = x.child(iface, "source")?;
    let mut used_network = false;

    let path = match ty {
        "network" => {
            let (src, name) = source_attr(x, iface, source, "network")?;
            match net {
                Some(def) if def.name == name => {
                    used_network = true;
                    from_network(def, &tat, &mut m)?
                }
                other => {
                    if let Some(def) = other {
                        m.unsupported.push(format!(
                            "the <network> definition at {} is named '{}', not '{name}' as \
                             the interface's source: it was not used",
                            def.at, def.name
                        ));
                    }
                    m.reasons.push(format!(
                        "<interface type='network'> at {tat}: no definition of network \
                         '{name}' was given, so '{name}' is looked up as a device"
                    ));
                    probe(x, src, "network", name, sysfs, &mut m).map_err(|e| match (e, other) {
                        (
                            LibvirtError::NoSuchDevice {
                                at,
                                attr,
                                name,
                                probed,
                            },
                            Some(def),
                        ) => LibvirtError::NoSuchDevice {
                            at,
                            attr,
                            name,
                            probed: format!(
                                "{probed}; the definition given is named '{}'",
                                def.name
                            ),
                        },
                        (e, _) => e,
                    })?
                }
            }
        }
        "bridge" => {
            let (src, name) = source_attr(x, iface, source, "bridge")?;
            probe(x, src, "bridge", name, sysfs, &mut m)?
        }
        "ethernet" => {
            m.reasons.push(format!(
                "<interface type='ethernet'> at {tat}: a tap that libvirt attaches to nothing"
            ));
            if let Some(s) = source {
                m.unused.push(format!(
                    "{} at {}: type='ethernet' has no source to follow",
                    Xml::show(s),
                    x.pos(s)
                ));
            }
            Path::Tap { bridge: None }
        }
        "direct" => direct(x, iface, source, &tat, &mut m)?,
        "hostdev" => hostdev(x, iface, source, &tat, sysfs, &mut m)?,
        other => {
            let why = match other {
                "vhostuser" => {
                    "a vhost-user backend is another process; vhostbench's worker is \
                                in its own"
                }
                "user" => "user-mode networking (slirp, passt) has no vhost path",
                "vdpa" => "vDPA needs a vDPA device; there is none here",
                _ => "it has no vhost-net data path here",
            };
            return Err(LibvirtError::NoMode {
                at: tat,
                what: format!("<interface type='{other}'>"),
                why: why.into(),
            });
        }
    };

    // The driver's settings are said after the mode they apply to.
    let before = m.reasons.len();
    let drv = driver::read(x, iface, &mut m)?;
    let settings: Vec<String> = m.reasons.drain(before..).collect();
    let model = x.child(iface, "model")?;
    m.origins
        .insert(0, ("modes", format!("<interface type='{ty}'> at {tat}")));
    m.mode = front(x, &tat, model, drv, path, host, &mut m)?;
    m.reasons.extend(settings);
    Ok((m, used_network))
}

/// `<source ATTR='X'>` of an interface whose type needs it.
fn source_attr<'a, 'i>(
    x: &Xml<'a, 'i>,
    iface: Node<'a, 'i>,
    source: Option<Node<'a, 'i>>,
    attr: &'static str,
) -> Result<(Node<'a, 'i>, &'a str), LibvirtError> {
    let missing = |at: Pos, what: String| LibvirtError::Missing {
        at,
        element: if what.starts_with('<') {
            "interface"
        } else {
            "source"
        },
        what,
        why: format!("type='{attr}' names its {attr} there"),
    };
    let src = source.ok_or_else(|| missing(x.pos(iface), "<source>".into()))?;
    let name = x
        .attr(src, attr)
        .ok_or_else(|| missing(x.pos(src), format!("attribute '{attr}'")))?;
    Ok((src, name))
}

/// `type='network'` with its definition: the forward mode decides.
fn from_network(def: &NetworkDef, tat: &Pos, m: &mut Mapping) -> Result<Path, LibvirtError> {
    let head = format!(
        "<interface type='network'> at {tat}: network '{}' (defined at {})",
        def.name, def.at
    );
    match &def.forward {
        Forward::Hostdev { pf, vfs, at } => {
            m.reasons.push(format!(
                "{head} forwards with <forward mode='hostdev'> at {at}: each guest gets a VF \
                 of {}",
                pf.as_deref().unwrap_or("the listed VFs' physical function")
            ));
            if let Some(n) = vfs {
                m.reasons.push(format!(
                    "<forward> at {at} lists {n} VF address(es): the pool has {n} VFs (--vfs)"
                ));
                m.origins
                    .push(("vfs", format!("the <address> VFs of <forward> at {at}")));
            }
            if let Some(p) = pf {
                m.origins
                    .push(("pf", format!("<pf dev='{p}'> in <forward> at {at}")));
            }
            Ok(Path::Pool {
                pf: pf.clone(),
                vfs: *vfs,
                assigned: true,
            })
        }
        Forward::Macvtap { mode, pf, devs, at } if mode == "passthrough" => {
            let dev = match (devs.first(), pf) {
                (Some(d), _) => {
                    m.reasons.push(format!(
                        "{head} forwards with <forward mode='passthrough'> at {at}: macvtap \
                         in passthrough on one of its devices ({}); libvirt takes a free one, \
                         a run needs one: {d}",
                        devs.join(", ")
                    ));
                    d.clone()
                }
                (None, Some(p)) => {
                    m.reasons.push(format!(
                        "{head} forwards with <forward mode='passthrough'> at {at}: macvtap \
                         in passthrough on a VF of {p}"
                    ));
                    m.origins
                        .push(("pf", format!("<pf dev='{p}'> in <forward> at {at}")));
                    format!("a VF of {p}")
                }
                (None, None) => {
                    return Err(LibvirtError::Missing {
                        at: at.clone(),
                        element: "forward",
                        what: "<pf dev=…> or <interface dev=…>".into(),
                        why: "mode='passthrough' needs devices".into(),
                    })
                }
            };
            Ok(Path::Macvtap {
                dev,
                pf: if devs.is_empty() { pf.clone() } else { None },
            })
        }
        Forward::Macvtap { mode, at, .. } => Err(LibvirtError::NoMode {
            at: at.clone(),
            what: format!("network '{}' with <forward mode='{mode}'>", def.name),
            why: macvtap_mode_why(mode),
        }),
        Forward::Bridge { mode, bridge } => {
            m.reasons.push(format!(
                "{head} forwards with mode '{mode}' through {}: the guest's device is on a tap",
                bridge
                    .as_deref()
                    .map_or("a bridge libvirt makes".to_string(), |b| format!(
                        "bridge {b}"
                    ))
            ));
            if mode != "bridge" {
                m.unused.push(format!(
                    "network '{}' forwarding ({mode}): the harness's frames stay inside its \
                     own namespace, nothing is forwarded off the host",
                    def.name
                ));
            }
            Ok(Path::Tap {
                bridge: bridge.clone(),
            })
        }
    }
}

/// Why a macvtap mode other than passthrough has no mode here.
fn macvtap_mode_why(mode: &str) -> String {
    format!(
        "macvtap in {mode} mode shares the device among guests ({}); vhostbench has macvtap \
         only in passthrough, a device dedicated to one guest",
        match mode {
            "vepa" => "their traffic hairpins through the external switch",
            "bridge" => "they switch to each other on the device",
            "private" => "they cannot reach each other",
            _ => "the device is shared",
        }
    )
}

/// `<source network|bridge='X'>` where X is no network definition that was given: look at
/// what X is on this host.
fn probe(
    x: &Xml,
    src: Node,
    attr: &'static str,
    name: &str,
    sysfs: &SysfsRoot,
    m: &mut Mapping,
) -> Result<Path, LibvirtError> {
    let at = x.attr_pos(src, attr);
    let item = format!("<source {attr}='{name}'> at {at}");
    if let Err(e) = check_ifname(name) {
        return Err(LibvirtError::NoSuchDevice {
            at,
            attr,
            name: name.into(),
            probed: format!("{e}, so nothing was looked up"),
        });
    }
    let (kind, probed) = sysfs.netdev(name);
    m.probed.extend(probed.iter().cloned());
    Ok(match kind {
        NetDev::Bridge => {
            m.reasons.push(format!(
                "{item}: {name} is a bridge, so the device is on a tap"
            ));
            Path::Tap {
                bridge: Some(name.into()),
            }
        }
        NetDev::Missing if attr == "bridge" => {
            m.reasons.push(format!(
                "{item}: no device {name} on this host; type='bridge' says it is a bridge, \
                 and the tap modes bring their own, so the device is on a tap"
            ));
            Path::Tap {
                bridge: Some(name.into()),
            }
        }
        NetDev::Missing => {
            return Err(LibvirtError::NoSuchDevice {
                at,
                attr,
                name: name.into(),
                probed: probed.join("; "),
            })
        }
        NetDev::Pf { vfs } => {
            m.reasons.push(format!(
                "{item}: {name} is a physical function with {vfs} VFs, so the guest gets a VF \
                 from {name}'s pool (the pool's size is --vfs, not the host's {vfs})"
            ));
            m.origins.push(("pf", item));
            Path::Pool {
                pf: Some(name.into()),
                vfs: None,
                assigned: false,
            }
        }
        NetDev::Plain => {
            m.reasons.push(format!(
                "{item}: {name} is a network device that is neither a bridge nor a PF with \
                 VFs, so it is dedicated to the guest: macvtap in passthrough on {name}"
            ));
            Path::Macvtap {
                dev: name.into(),
                pf: None,
            }
        }
    })
}

/// `type='direct'`: macvtap on `<source dev>`, in passthrough only.
fn direct(
    x: &Xml,
    iface: Node,
    source: Option<Node>,
    tat: &Pos,
    m: &mut Mapping,
) -> Result<Path, LibvirtError> {
    let (src, dev) = source_attr_dev(x, iface, source)?;
    let mode = x.attr(src, "mode");
    let mat = x.attr_pos(src, "mode");
    match mode {
        Some("passthrough") => {
            m.reasons.push(format!(
                "<interface type='direct'> at {tat} with <source dev='{dev}' \
                 mode='passthrough'> at {mat}: macvtap in passthrough on {dev}"
            ));
            Ok(Path::Macvtap {
                dev: dev.into(),
                pf: None,
            })
        }
        other => {
            let mode = other.unwrap_or("vepa");
            Err(LibvirtError::NoMode {
                at: mat,
                what: match other {
                    Some(m) => format!("<source dev='{dev}' mode='{m}'>"),
                    None => format!("<source dev='{dev}'> (no mode: libvirt's default is vepa)"),
                },
                why: macvtap_mode_why(mode),
            })
        }
    }
}

fn source_attr_dev<'a, 'i>(
    x: &Xml<'a, 'i>,
    iface: Node<'a, 'i>,
    source: Option<Node<'a, 'i>>,
) -> Result<(Node<'a, 'i>, &'a str), LibvirtError> {
    let src = source.ok_or_else(|| LibvirtError::Missing {
        at: x.pos(iface),
        element: "interface",
        what: "<source>".into(),
        why: "type='direct' names its device there".into(),
    })?;
    let dev = x.attr(src, "dev").ok_or_else(|| LibvirtError::Missing {
        at: x.pos(src),
        element: "source",
        what: "attribute 'dev'".into(),
        why: "type='direct' names its device there".into(),
    })?;
    Ok((src, dev))
}

/// `type='hostdev'`: a VF by PCI address; its PF (and so the pool) from sysfs.
fn hostdev(
    x: &Xml,
    iface: Node,
    source: Option<Node>,
    tat: &Pos,
    sysfs: &SysfsRoot,
    m: &mut Mapping,
) -> Result<Path, LibvirtError> {
    let missing = |at: Pos, element: &'static str, what: &str| LibvirtError::Missing {
        at,
        element,
        what: what.into(),
        why: "type='hostdev' names its VF by PCI address".into(),
    };
    let src = source.ok_or_else(|| missing(x.pos(iface), "interface", "<source>"))?;
    let addr = x
        .child(src, "address")?
        .ok_or_else(|| missing(x.pos(src), "source", "<address type='pci' …>"))?;
    let aat = x.pos(addr);
    match x.attr(addr, "type") {
        Some("pci") => {}
        other => {
            return Err(LibvirtError::BadValue {
                at: x.attr_pos(addr, "type"),
                element: "address",
                attr: "type",
                value: other.unwrap_or("").into(),
                expected: "expected pci: a network VF is a PCI function".into(),
            })
        }
    }
    let field = |attr: &'static str, max: u32| -> Result<u32, LibvirtError> {
        let v = x.attr(addr, attr).unwrap_or("0");
        let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => v.parse::<u32>().ok(),
        };
        n.filter(|n| *n <= max)
            .ok_or_else(|| LibvirtError::BadValue {
                at: x.attr_pos(addr, attr),
                element: "address",
                attr,
                value: v.into(),
                expected: format!("expected a number up to {max:#x} (0x hex or decimal)"),
            })
    };
    let pci = format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        field("domain", 0xffff)?,
        field("bus", 0xff)?,
        field("slot", 0x1f)?,
        field("function", 7)?
    );
    m.settings.pci = Some(pci.clone());
    m.reasons.push(format!(
        "<interface type='hostdev'> at {tat}: VF {pci} (<address> at {aat}) is given to the \
         guest"
    ));
    let (pf, probed) = sysfs.pf_of_vf(&pci);
    m.probed.push(probed);
    match &pf {
        Some(p) => {
            m.reasons.push(format!(
                "VF {pci}'s physical function is {p}: the VF comes from {p}'s pool"
            ));
            m.origins
                .push(("pf", format!("<address> at {aat} (VF {pci} of {p})")));
        }
        None => m.reasons.push(format!(
            "VF {pci} is not on this host: the VF comes from the pool of --pf"
        )),
    }
    Ok(Path::Pool {
        pf,
        vfs: None,
        assigned: true,
    })
}

/// What the guest sees (`<model>`) and who serves it (`<driver name>`), for a device whose
/// frames go by `path`: the mode, with the path's settings recorded.
fn front(
    x: &Xml,
    tat: &Pos,
    model: Option<Node>,
    drv: Option<DriverName>,
    path: Path,
    host: &Privileges,
    m: &mut Mapping,
) -> Result<&'static dyn Mode, LibvirtError> {
    let assigned = matches!(path, Path::Pool { assigned: true, .. });
    if assigned {
        if let Some(md) = model {
            x.attr(md, "type");
            m.unused.push(format!(
                "{} at {}: with a VF given to the guest its device is the VF's own; the \
                 guest here is always virtio-net, served by the vhost worker on the VF",
                Xml::show(md),
                x.pos(md)
            ));
        }
    } else {
        virtio(x, tat, model, m)?;
    }
    let bad_name = |d: &DriverName, expected: &str| LibvirtError::BadValue {
        at: d.at.clone(),
        element: "driver",
        attr: "name",
        value: d.name.clone(),
        expected: expected.into(),
    };

    match path {
        Path::Tap { bridge } => {
            if let Some(b) = &bridge {
                m.unused.push(format!(
                    "bridge {b}: the tap modes put their tap on a bridge of their own in a \
                     private namespace (the same for every tap mode); {b} is not touched"
                ));
            }
            m.settings.bridge = bridge;
            match drv.as_ref() {
                None => {
                    let resolved = modes::resolve(&[Selector::Auto], host);
                    m.reasons.push(
                        "no <driver name=…>: automatic, as libvirt does (vhost when the host \
                         allows it)"
                            .into(),
                    );
                    match resolved {
                        Ok(r) => {
                            m.reasons.extend(r.notes);
                            Ok(r.run.first().copied().unwrap_or(&TapVhost))
                        }
                        Err(e) => {
                            m.reasons.push(format!("{e:#}"));
                            Ok(&TapVhost)
                        }
                    }
                }
                Some(d) if d.name == "qemu" => {
                    m.reasons.push(format!(
                        "<driver name='qemu'> at {}: QEMU's own device model: emulated",
                        d.at
                    ));
                    Ok(&Emulated)
                }
                Some(d) if d.name == "vhost" => match TapVhost.unavailable(host) {
                    None => {
                        m.reasons.push(format!(
                            "<driver name='vhost'> at {}: vhost, forced: tap-vhost",
                            d.at
                        ));
                        Ok(&TapVhost)
                    }
                    Some(reason) => Err(LibvirtError::VhostUnavailable {
                        at: d.at.clone(),
                        reason,
                    }),
                },
                Some(d) => Err(bad_name(d, "expected vhost or qemu")),
            }
        }
        Path::Macvtap { dev, pf } => {
            vhost_only(drv.as_ref(), false, "macvtap", m, bad_name)?;
            m.reasons.push(format!(
                "direct-vf with the macvtap backend: the vhost worker on macvtap in \
                 passthrough, on a VF from the pool standing in for {dev}"
            ));
            m.settings.vf_backend = Some(VfBackend::Macvtap);
            let from = m
                .origins
                .iter()
                .find(|(k, _)| *k == "modes")
                .map_or_else(|| format!("macvtap on {dev}"), |(_, v)| v.clone());
            m.origins.push(("vf_backend", from));
            m.settings.device = Some(dev);
            m.settings.pf = pf;
            Ok(&DirectVf)
        }
        Path::Pool { pf, vfs, assigned } => {
            vhost_only(drv.as_ref(), assigned, "a VF", m, bad_name)?;
            m.reasons.push(format!(
                "direct-vf: the vhost worker on a VF from the pool of {} (no tap, no host \
                 bridge; the VF backend is --vf-backend's, by default the fastest measured)",
                pf.as_deref().unwrap_or("--pf")
            ));
            m.settings.pf = pf;
            m.settings.vfs = vfs;
            Ok(&DirectVf)
        }
    }
}

/// A direct-vf path is always served by the vhost worker: `vhost` (or no name) is fine,
/// `qemu` cannot be honoured, and for an assigned VF the assignment drivers (`vfio`, `kvm`)
/// make no difference.
fn vhost_only(
    drv: Option<&DriverName>,
    assigned: bool,
    what: &str,
    m: &mut Mapping,
    bad_name: impl Fn(&DriverName, &str) -> LibvirtError,
) -> Result<(), LibvirtError> {
    let Some(d) = drv else { return Ok(()) };
    match d.name.as_str() {
        "vhost" => {
            m.reasons.push(format!(
                "<driver name='vhost'> at {}: vhost, as direct-vf is",
                d.at
            ));
            Ok(())
        }
        "vfio" | "kvm" if assigned => {
            m.unused.push(format!(
                "<driver name='{}'> at {}: how the host would assign the VF; here the VF is a \
                 stand-in served by the vhost worker",
                d.name, d.at
            ));
            Ok(())
        }
        "qemu" => Err(LibvirtError::NoMode {
            at: d.at.clone(),
            what: format!("<driver name='qemu'> on {what}"),
            why: "QEMU's own device model (emulated) runs on a tap only".into(),
        }),
        _ => Err(bad_name(
            d,
            if assigned {
                "expected vhost, vfio or kvm"
            } else {
                "expected vhost"
            },
        )),
    }
}

/// `<model type='virtio'/>`, required: vhost-net serves virtio-net devices only, and without
/// a model libvirt gives the guest the hypervisor's default NIC.
fn virtio(x: &Xml, tat: &Pos, model: Option<Node>, m: &mut Mapping) -> Result<(), LibvirtError> {
    let Some(md) = model else {
        return Err(LibvirtError::NoMode {
            at: tat.clone(),
            what: "no <model>".into(),
            why: "libvirt then gives the guest the hypervisor's default NIC (rtl8139 or \
                  e1000), and vhost-net serves only virtio-net: add <model type='virtio'/>"
                .into(),
        });
    };
    match x.attr(md, "type") {
        Some("virtio") => {
            m.reasons.push(format!(
                "<model type='virtio'> at {}: a virtio-net device, which vhost-net serves",
                x.pos(md)
            ));
            Ok(())
        }
        other => Err(LibvirtError::NotVirtio {
            at: x.attr_pos(md, "type"),
            model: other.unwrap_or("").into(),
        }),
    }
}
