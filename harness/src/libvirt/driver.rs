//! `<driver>`: the backend name (`vhost`, `qemu`), and the queue settings that become the
//! run's: `queues`, `rx_queue_size` / `tx_queue_size`, `event_idx`, and `<host
//! mrg_rxbuf=…>`.

use roxmltree::Node;

use super::error::{LibvirtError, Pos};
use super::xml::Xml;
use super::Mapping;

/// QEMU's virtio-net queue size when `rx_queue_size` / `tx_queue_size` is not given (also
/// vhostbench's `--queue-size` default).
pub const QEMU_QUEUE_SIZE: u16 = 256;
/// The smallest queue size libvirt and QEMU accept for virtio-net.
const MIN_QUEUE_SIZE: u16 = 256;
/// The largest.
const MAX_QUEUE_SIZE: u16 = 1024;

/// `<driver name=…>`, where it is.
#[derive(Clone, Debug)]
pub struct DriverName {
    /// The name as written.
    pub name: String,
    /// Where the attribute is.
    pub at: Pos,
}

/// Reads `<driver>` under `iface` (if any) into `m`'s settings and reasons, and returns its
/// `name`, which the caller interprets (it depends on the interface type).
pub fn read(x: &Xml, iface: Node, m: &mut Mapping) -> Result<Option<DriverName>, LibvirtError> {
    let Some(drv) = x.child(iface, "driver")? else {
        return Ok(None);
    };
    let name = x.attr(drv, "name").map(|n| DriverName {
        name: n.to_string(),
        at: x.attr_pos(drv, "name"),
    });

    if let Some(q) = x.attr(drv, "queues") {
        let at = x.attr_pos(drv, "queues");
        let n = q
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad(&at, "queues", q, "a queue-pair count from 1"))?;
        m.settings.queues = Some(n);
        if n == 1 {
            m.reasons.push(format!(
                "<driver queues='1'> at {at}: one queue pair, as the harness runs"
            ));
        } else {
            m.unsupported.push(format!(
                "<driver queues='{n}'> at {at}: the harness runs one queue pair per device \
                 today (the engine's devices serve N pairs, but the run path starts one vCPU)"
            ));
        }
    }

    queue_sizes(x, drv, m)?;

    if let Some(v) = x.attr(drv, "event_idx") {
        let at = x.attr_pos(drv, "event_idx");
        let on = on_off(&at, "event_idx", v)?;
        m.settings.event_idx = Some(on);
        m.origins
            .push(("event_idx", format!("<driver event_idx='{v}'> at {at}")));
        m.reasons.push(format!(
            "<driver event_idx='{v}'> at {at}: VIRTIO_RING_F_EVENT_IDX {}",
            if on {
                "negotiated (the run's default)"
            } else {
                "off, as --no-event-idx"
            }
        ));
    }

    // Read so that each offload switch is reported on its own; `mrg_rxbuf` is the one the
    // engine can honour.
    x.child(drv, "guest")?;
    if let Some(host) = x.child(drv, "host")? {
        if let Some(v) = x.attr(host, "mrg_rxbuf") {
            let at = x.attr_pos(host, "mrg_rxbuf");
            let on = on_off(&at, "mrg_rxbuf", v)?;
            m.settings.mrg_rxbuf = Some(on);
            m.origins
                .push(("mrg_rxbuf", format!("<host mrg_rxbuf='{v}'> at {at}")));
            m.reasons.push(format!(
                "<host mrg_rxbuf='{v}'> at {at}: VIRTIO_NET_F_MRG_RXBUF {}",
                if on {
                    "negotiated (the run's default)"
                } else {
                    "off, as --no-mrg-rxbuf"
                }
            ));
        }
    }
    Ok(name)
}

/// `rx_queue_size` and `tx_queue_size`: one size for both queues when they agree (the engine
/// takes one per device); unsupported when they differ, a missing one counting as QEMU's
/// default.
fn queue_sizes(x: &Xml, drv: Node, m: &mut Mapping) -> Result<(), LibvirtError> {
    let size = |attr: &'static str| -> Result<Option<u16>, LibvirtError> {
        let Some(v) = x.attr(drv, attr) else {
            return Ok(None);
        };
        let at = x.attr_pos(drv, attr);
        let n = v
            .parse::<u16>()
            .ok()
            .filter(|n| n.is_power_of_two() && (MIN_QUEUE_SIZE..=MAX_QUEUE_SIZE).contains(n))
            .ok_or_else(|| {
                bad(
                    &at,
                    attr,
                    v,
                    "a power of two from 256 to 1024, as libvirt and QEMU allow",
                )
            })?;
        Ok(Some(n))
    };
    let (rx, tx) = (size("rx_queue_size")?, size("tx_queue_size")?);
    if rx.is_none() && tx.is_none() {
        return Ok(());
    }
    m.settings.rx_queue_size = rx;
    m.settings.tx_queue_size = tx;
    let written = [("rx_queue_size", rx), ("tx_queue_size", tx)]
        .iter()
        .filter_map(|(a, v)| v.map(|v| format!("{a}='{v}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let item = format!(
        "<driver {written}> at {}",
        x.attr_pos(
            drv,
            if rx.is_some() {
                "rx_queue_size"
            } else {
                "tx_queue_size"
            }
        )
    );
    let (r, t) = (rx.unwrap_or(QEMU_QUEUE_SIZE), tx.unwrap_or(QEMU_QUEUE_SIZE));
    if r == t {
        m.settings.queue_size = Some(r);
        m.reasons.push(format!(
            "{item}: queue size {r} for both queues (--queue-size)"
        ));
        m.origins.push(("queue_size", item));
    } else {
        let default = if rx.is_none() || tx.is_none() {
            format!(" ({QEMU_QUEUE_SIZE} is QEMU's default for the one not given)")
        } else {
            String::new()
        };
        m.unsupported.push(format!(
            "{item}: RX {r} and TX {t}{default}: the engine takes one queue size per device"
        ));
    }
    Ok(())
}

fn on_off(at: &Pos, attr: &'static str, v: &str) -> Result<bool, LibvirtError> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(bad(at, attr, v, "on or off")),
    }
}

fn bad(at: &Pos, attr: &'static str, value: &str, expected: &str) -> LibvirtError {
    LibvirtError::BadValue {
        at: at.clone(),
        element: if attr == "mrg_rxbuf" {
            "host"
        } else {
            "driver"
        },
        attr,
        value: value.to_string(),
        expected: format!("expected {expected}"),
    }
}
