//! libvirt-style configuration: a domain's `<interface>` element (and, for pools, a
//! `<network>` definition) mapped to the mode and settings `run` uses, with every step said
//! out loud. `vhostbench interface FILE` prints the [`Mapping`]; `vhostbench run --interface
//! FILE` runs it ([`for_run`]).
//!
//! | the interface | mode | settings |
//! |---|---|---|
//! | `type='network'`/`'bridge'`/`'ethernet'`, `<model type='virtio'/>`, no `<driver name>` | `auto`: tap-vhost if the host allows it, else emulated | |
//! | … with `<driver name='qemu'/>` | emulated | |
//! | … with `<driver name='vhost'/>` | tap-vhost, an error if it cannot run here | |
//! | `type='direct'`, `<source dev='X' mode='passthrough'/>` | direct-vf | `vf_backend` macvtap, device X |
//! | `type='hostdev'`, `<source><address type='pci' …/></source>` | direct-vf | `pf`: the VF's PF, probed in sysfs |
//! | `type='network'` whose `<network>` has `<forward mode='hostdev'><pf dev='P'/>` | direct-vf | `pf` P (`vfs`: the `<address>` VFs listed) |
//! | `<source network='X'>` with no definition of X given, or `<source bridge='X'>`: X probed | bridge → tap rules; PF with VFs → direct-vf from X's pool; other netdev → direct-vf, macvtap on X; nothing → error (a `type='bridge'` X that is absent is taken as the bridge it says it is) | |
//! | `<driver queues rx_queue_size tx_queue_size event_idx>`, `<host mrg_rxbuf>` | | `queues` 1 only; equal sizes → `queue_size`; `event_idx`; `mrg_rxbuf` |
//!
//! Anything else in the file is reported: as "not used by vhostbench" where leaving it out
//! changes nothing measured (`<mac>`, `<target>`, `<alias>`, the guest's `<address>`, …), as
//! unsupported where it would (offload switches, `<bandwidth>`, `<vlan>`, `txmode`, unequal
//! queue sizes, `queues` > 1, anything unknown): a warning for `interface`, an error for
//! `run --interface`.
//!
//! A file holds one `<interface>` as its root, or a `<vhostbench>` root holding one
//! `<interface>` and one `<network>` (XML allows one root, so the pair needs a wrapper); the
//! network may instead come from its own file (`--network FILE`).

mod apply;
mod driver;
pub mod error;
mod interface;
mod network;
pub mod sysfs;
mod xml;

use std::path::Path;

use roxmltree::Node;
use serde::Serialize;

pub use apply::for_run;
pub use error::{LibvirtError, Pos};
pub use sysfs::{NetDev, SysfsRoot};

use crate::cli::VfBackend;
use crate::modes::Mode;
use crate::topology::Privileges;
use xml::{Class, Xml};

/// The run settings an interface sets; `None` leaves the run's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// `--queue-size`: set when `rx_queue_size` and `tx_queue_size` agree.
    pub queue_size: Option<u16>,
    /// `rx_queue_size` as written.
    pub rx_queue_size: Option<u16>,
    /// `tx_queue_size` as written.
    pub tx_queue_size: Option<u16>,
    /// `queues` as written (only 1 can run).
    pub queues: Option<u32>,
    /// `event_idx` (`--no-event-idx` when off).
    pub event_idx: Option<bool>,
    /// `<host mrg_rxbuf>` (`--no-mrg-rxbuf` when off).
    pub mrg_rxbuf: Option<bool>,
    /// `--vf-backend` (macvtap for `type='direct'`).
    pub vf_backend: Option<VfBackend>,
    /// `--pf`: the physical function whose pool the VF comes from.
    pub pf: Option<String>,
    /// `--vfs`: the pool's VF count, where the network lists its VFs.
    pub vfs: Option<u32>,
    /// The host device named by `type='direct'` (or a probed plain netdev): what macvtap
    /// sits on in libvirt; here a VF from the pool stands in for it.
    pub device: Option<String>,
    /// The bridge the interface names, for the tap modes (their tap sits on vhostbench's own
    /// bridge in a private namespace; this one is not touched).
    pub bridge: Option<String>,
    /// The PCI address of a `type='hostdev'` VF (`dddd:bb:ss.f`).
    pub pci: Option<String>,
}

/// What an interface definition maps to, and why.
#[derive(Debug)]
pub struct Mapping {
    /// The mode it runs.
    pub mode: &'static dyn Mode,
    /// The run settings it sets.
    pub settings: Settings,
    /// What was looked at on this host (sysfs), one line each.
    pub probed: Vec<String>,
    /// Why this mode and these settings, one line per step, each naming the XML it reads.
    pub reasons: Vec<String>,
    /// What the file says that makes no difference here, with why.
    pub unused: Vec<String>,
    /// What the file asks for that vhostbench cannot honour, with why.
    pub unsupported: Vec<String>,
    /// Which XML set each run option (`("queue_size", "<driver …> at f:4:3")`), for
    /// conflicts with options given on the command line.
    pub origins: Vec<(&'static str, String)>,
    /// Why this host cannot run the mode, if it cannot.
    pub unavailable: Option<String>,
}

impl Mapping {
    /// The mapping as printed by `vhostbench interface`, one line per fact.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("mode: {}", self.mode.name())];
        out.extend(self.probed.iter().map(|l| format!("probed: {l}")));
        out.extend(self.reasons.iter().map(|l| format!("why: {l}")));
        out.push(format!("settings: {}", self.settings_summary()));
        out.extend(
            self.unused
                .iter()
                .map(|l| format!("not used by vhostbench: {l}")),
        );
        out.extend(
            self.unsupported
                .iter()
                .map(|l| format!("unsupported (an error for run --interface): {l}")),
        );
        out.push(match &self.unavailable {
            None => format!("on this host: {} can run", self.mode.name()),
            Some(why) => format!("on this host: {} cannot run: {why}", self.mode.name()),
        });
        out
    }

    /// The settings as `name=value` pairs, or what applies when there are none.
    pub fn settings_summary(&self) -> String {
        let s = &self.settings;
        let on = |b: bool| if b { "on" } else { "off" };
        let mut v = Vec::new();
        let mut put = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                v.push(format!("{k}={val}"));
            }
        };
        put("queue_size", s.queue_size.map(|n| n.to_string()));
        put("rx_queue_size", s.rx_queue_size.map(|n| n.to_string()));
        put("tx_queue_size", s.tx_queue_size.map(|n| n.to_string()));
        put("queues", s.queues.map(|n| n.to_string()));
        put("event_idx", s.event_idx.map(|b| on(b).into()));
        put("mrg_rxbuf", s.mrg_rxbuf.map(|b| on(b).into()));
        put("vf_backend", s.vf_backend.map(|b| b.name().into()));
        put("pf", s.pf.clone());
        put("vfs", s.vfs.map(|n| n.to_string()));
        put("device", s.device.clone());
        put("bridge", s.bridge.clone());
        put("pci", s.pci.clone());
        if v.is_empty() {
            "none set by the file (the run's options and defaults apply)".into()
        } else {
            v.join(" ")
        }
    }
}

/// An XML text and the name it is reported under.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The file name, for positions.
    pub name: &'a str,
    /// Its content.
    pub text: &'a str,
}

/// Maps the interface in file `interface` (with the network definition in `network`, if
/// given) for a host with `host`'s privileges and sysfs at `sysfs`.
pub fn map_files(
    interface: &Path,
    network: Option<&Path>,
    host: &Privileges,
    sysfs: &SysfsRoot,
) -> Result<Mapping, LibvirtError> {
    let itext = xml::read(interface)?;
    let iname = interface.display().to_string();
    let ntext = network.map(xml::read).transpose()?;
    let nname = network.map(|p| p.display().to_string());
    let net = match (&nname, &ntext) {
        (Some(name), Some(text)) => Some(Input { name, text }),
        _ => None,
    };
    map(
        Input {
            name: &iname,
            text: &itext,
        },
        net,
        host,
        sysfs,
    )
}

/// Maps `interface` (with the `<network>` definition `network`, if given).
pub fn map(
    interface: Input,
    network: Option<Input>,
    host: &Privileges,
    sysfs: &SysfsRoot,
) -> Result<Mapping, LibvirtError> {
    let idoc = xml::parse(interface.name, interface.text)?;
    let ix = Xml::new(&idoc, interface.name);
    let root = idoc.root_element();
    let (iface, inline_net) = split_root(&ix, root)?;

    let ndoc = network.map(|n| xml::parse(n.name, n.text)).transpose()?;
    let nx = match (&ndoc, &network) {
        (Some(d), Some(n)) => Some(Xml::new(d, n.name)),
        _ => None,
    };
    let net: Option<(&Xml, Node)> = match (&nx, &ndoc, inline_net) {
        (Some(_), Some(_), Some(inline)) => {
            return Err(LibvirtError::Duplicate {
                at: ix.pos(inline),
                element: "network",
            })
        }
        (Some(x), Some(d), None) => {
            let r = d.root_element();
            if !r.has_tag_name("network") {
                return Err(LibvirtError::Unexpected {
                    at: x.pos(r),
                    found: r.tag_name().name().into(),
                    expected: "a <network> definition",
                });
            }
            Some((x, r))
        }
        (_, _, Some(inline)) => Some((&ix, inline)),
        _ => None,
    };
    let def = net.map(|(x, n)| network::read(x, n)).transpose()?;

    let (mut m, used_network) = interface::map(&ix, iface, def.as_ref(), host, sysfs)?;
    let mut leftovers = ix.leftovers(root, inline_net);
    match net {
        Some((x, n)) if used_network => leftovers.extend(x.leftovers(n, None)),
        _ => {}
    }
    for l in leftovers {
        match l.class {
            Class::Unused => m.unused.push(l.line),
            Class::Unsupported => m.unsupported.push(l.line),
        }
    }
    m.unavailable = m.mode.unavailable(host);
    Ok(m)
}

/// The `<interface>` of the file, and the inline `<network>` if it has a `<vhostbench>` root.
fn split_root<'a, 'i>(
    x: &Xml<'a, 'i>,
    root: Node<'a, 'i>,
) -> Result<(Node<'a, 'i>, Option<Node<'a, 'i>>), LibvirtError> {
    const EXPECTED: &str = "<interface>, or <vhostbench> holding one <interface> and one <network>";
    x.mark(root);
    match root.tag_name().name() {
        "interface" => Ok((root, None)),
        "vhostbench" => {
            for c in root.children().filter(|c| c.is_element()) {
                if !c.has_tag_name("interface") && !c.has_tag_name("network") {
                    return Err(LibvirtError::Unexpected {
                        at: x.pos(c),
                        found: c.tag_name().name().into(),
                        expected: "<interface> or <network> inside <vhostbench>",
                    });
                }
            }
            let iface = x
                .child(root, "interface")?
                .ok_or_else(|| LibvirtError::Missing {
                    at: x.pos(root),
                    element: "vhostbench",
                    what: "<interface>".into(),
                    why: String::new(),
                })?;
            Ok((iface, x.child(root, "network")?))
        }
        other => Err(LibvirtError::Unexpected {
            at: x.pos(root),
            found: other.into(),
            expected: EXPECTED,
        }),
    }
}
