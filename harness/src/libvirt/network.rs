//! A libvirt `<network>` definition, as far as it decides a mode: its name and how it
//! forwards (`<forward mode=…>`): VFs of a PF (`hostdev`), macvtap on host devices
//! (`passthrough`, `private`, `vepa`, `bridge` with devices), a host bridge (`bridge` with
//! `<bridge name=…>`), or a bridge libvirt makes itself (`nat`, `route`, `open`, or no
//! `<forward>`: isolated).

use roxmltree::Node;

use super::error::{LibvirtError, Pos};
use super::xml::Xml;

/// The forwarding that decides the mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forward {
    /// `<forward mode='hostdev'>`: guests get VFs of `pf` (or of the listed VFs).
    Hostdev {
        /// `<pf dev=…>`.
        pf: Option<String>,
        /// How many `<address>` VFs are listed, if any.
        vfs: Option<u32>,
        /// Where `<forward>` is.
        at: Pos,
    },
    /// macvtap on host devices in mode `mode`.
    Macvtap {
        /// `passthrough`, `private`, `vepa` or `bridge`.
        mode: String,
        /// `<pf dev=…>`: macvtap on that PF's VFs.
        pf: Option<String>,
        /// `<interface dev=…>`, in order.
        devs: Vec<String>,
        /// Where `<forward>` is.
        at: Pos,
    },
    /// A bridge: the host's (`<forward mode='bridge'>` with `<bridge name=…>`) or one libvirt
    /// makes (`nat`, `route`, `open`, isolated).
    Bridge {
        /// The forward mode (`isolated` when there is no `<forward>`).
        mode: String,
        /// `<bridge name=…>`.
        bridge: Option<String>,
    },
}

/// A `<network>` definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkDef {
    /// `<name>`.
    pub name: String,
    /// Where the definition starts.
    pub at: Pos,
    /// How it forwards.
    pub forward: Forward,
}

/// Reads `net` (a `<network>` element).
pub fn read(x: &Xml, net: Node) -> Result<NetworkDef, LibvirtError> {
    x.mark(net);
    let at = x.pos(net);
    let name = x
        .child(net, "name")?
        .and_then(|n| x.text(n))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| LibvirtError::Missing {
            at: at.clone(),
            element: "network",
            what: "<name>".into(),
            why: String::new(),
        })?
        .to_string();
    let bridge = match x.child(net, "bridge")? {
        Some(b) => x.attr(b, "name").map(str::to_string),
        None => None,
    };
    let Some(fwd) = x.child(net, "forward")? else {
        return Ok(NetworkDef {
            name,
            at,
            forward: Forward::Bridge {
                mode: "isolated".into(),
                bridge,
            },
        });
    };
    let fat = x.pos(fwd);
    let mode = x.attr(fwd, "mode").unwrap_or("nat");
    let forward = match mode {
        "hostdev" => {
            let pf = pf_dev(x, fwd)?;
            let addrs = x.children(fwd, "address");
            for a in &addrs {
                for attr in ["type", "domain", "bus", "slot", "function"] {
                    x.attr(*a, attr);
                }
            }
            if pf.is_none() && addrs.is_empty() {
                return Err(LibvirtError::Missing {
                    at: fat,
                    element: "forward",
                    what: "<pf dev=…> or <address> VFs".into(),
                    why: "mode='hostdev' needs the VFs' physical function".into(),
                });
            }
            let vfs = (!addrs.is_empty()).then(|| u32::try_from(addrs.len()).unwrap_or(u32::MAX));
            Forward::Hostdev { pf, vfs, at: fat }
        }
        "bridge" if bridge.is_some() => Forward::Bridge {
            mode: mode.into(),
            bridge,
        },
        "passthrough" | "private" | "vepa" | "bridge" => {
            let pf = pf_dev(x, fwd)?;
            let devs: Vec<String> = x
                .children(fwd, "interface")
                .into_iter()
                .filter_map(|i| x.attr(i, "dev").map(str::to_string))
                .collect();
            if pf.is_none() && devs.is_empty() {
                return Err(LibvirtError::Missing {
                    at: fat,
                    element: "forward",
                    what: "<bridge name=…>, <pf dev=…> or <interface dev=…>".into(),
                    why: format!("mode='{mode}' needs a host bridge or devices"),
                });
            }
            Forward::Macvtap {
                mode: mode.into(),
                pf,
                devs,
                at: fat,
            }
        }
        "nat" | "route" | "open" => Forward::Bridge {
            mode: mode.into(),
            bridge,
        },
        other => {
            return Err(LibvirtError::BadValue {
                at: x.attr_pos(fwd, "mode"),
                element: "forward",
                attr: "mode",
                value: other.into(),
                expected: "expected nat, route, open, bridge, private, vepa, passthrough or \
                           hostdev"
                    .into(),
            })
        }
    };
    Ok(NetworkDef { name, at, forward })
}

/// `<pf dev=…>` under `<forward>`.
fn pf_dev(x: &Xml, fwd: Node) -> Result<Option<String>, LibvirtError> {
    let Some(p) = x.child(fwd, "pf")? else {
        return Ok(None);
    };
    match x.attr(p, "dev") {
        Some(d) => Ok(Some(d.to_string())),
        None => Err(LibvirtError::Missing {
            at: x.pos(p),
            element: "pf",
            what: "attribute 'dev'".into(),
            why: "the physical function's device name".into(),
        }),
    }
}
