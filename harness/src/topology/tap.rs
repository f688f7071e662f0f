//! Taps, a bridge, and packet sockets, created inside a [`Netns`].
//!
//! A tap is what libvirt hands QEMU (and QEMU hands vhost-net): `/dev/net/tun` attached to an
//! interface with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte `virtio_net_hdr_v1` before
//! every frame (little-endian fields), and the offloads the guest's features allow.
//!
//! A packet socket bound to a tap sees the tap from the kernel's side: frames written to the
//! tap fd arrive on it (the kernel's receive path), frames sent on it leave through the tap
//! (read from the tap fd). With `PACKET_VNET_HDR` each frame is preceded by the kernel's
//! 10-byte `struct virtio_net_hdr` (checksum and GSO metadata), in both directions.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use anyhow::{ensure, Context};

use super::netns::{ip, Netns};
use super::sys;

/// `TUNSETOFFLOAD`: the reader accepts frames with a partial checksum (`NEEDS_CSUM`).
pub const TUN_F_CSUM: u32 = libc::TUN_F_CSUM;
/// `TUNSETOFFLOAD`: ... and TCPv4 GSO frames (needs [`TUN_F_CSUM`]).
pub const TUN_F_TSO4: u32 = libc::TUN_F_TSO4;
/// `TUNSETOFFLOAD`: ... and TCPv6 GSO frames (needs [`TUN_F_CSUM`]).
pub const TUN_F_TSO6: u32 = libc::TUN_F_TSO6;
/// `TUNSETOFFLOAD`: ... and TSO frames with ECN.
pub const TUN_F_TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
/// `TUNSETOFFLOAD`: ... and UFO frames (legacy).
pub const TUN_F_UFO: u32 = libc::TUN_F_UFO;
/// `TUNSETOFFLOAD`: ... and UDP segmentation offload over IPv4.
pub const TUN_F_USO4: u32 = libc::TUN_F_USO4;
/// `TUNSETOFFLOAD`: ... and UDP segmentation offload over IPv6.
pub const TUN_F_USO6: u32 = libc::TUN_F_USO6;

/// Bytes of the virtio-net header before every frame on a tap fd (`virtio_net_hdr_v1`).
pub const TAP_VNET_HDR_LEN: usize = 12;
/// Bytes of the header before every frame on a `PACKET_VNET_HDR` socket (`virtio_net_hdr`).
pub const PACKET_VNET_HDR_LEN: usize = 10;
/// Longest interface name (`IFNAMSIZ` - 1).
pub const MAX_IFNAME: usize = libc::IFNAMSIZ - 1;

/// A tap interface and its fd (non-blocking, close-on-exec). Closing the fd removes the
/// interface (it is not persistent).
#[derive(Debug)]
pub struct Tap {
    /// `/dev/net/tun` attached to the interface: read frames the kernel sends out of the tap,
    /// write frames the kernel receives. Every frame is preceded by a 12-byte header.
    pub file: File,
    /// Interface name inside the namespace.
    pub name: String,
    /// Interface index inside the namespace.
    pub ifindex: u32,
}

/// Checks an interface name: 1 to 15 bytes of ASCII letters, digits, `-`, `_`, `.`.
pub fn check_ifname(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= MAX_IFNAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && name != "."
            && name != "..",
        "bad interface name {name:?} (1-{MAX_IFNAME} of [A-Za-z0-9._-])"
    );
    Ok(())
}

/// Creates tap `name` in `ns`: opens `/dev/net/tun` (`O_RDWR | O_NONBLOCK | O_CLOEXEC`),
/// `TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, `TUNSETVNETHDRSZ` 12,
/// `TUNSETVNETLE`, `TUNSETOFFLOAD` with `offload_flags` (`TUN_F_*`), and sets the link up.
/// The MTU stays 1500.
///
/// `offload_flags` says what the reader of the fd accepts (frames the kernel sends with a
/// partial checksum or as GSO); frames written to the fd may carry `NEEDS_CSUM` whatever it
/// is.
pub fn open_tap(ns: &Netns, name: &str, offload_flags: u32) -> anyhow::Result<Tap> {
    check_ifname(name)?;
    ns.run_in(|| -> anyhow::Result<Tap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        let got = sys::tun_set_iff(&file, name, flags).context("TUNSETIFF")?;
        ensure!(got == name, "TUNSETIFF named the tap {got:?}, not {name:?}");
        sys::tun_set_vnet_hdr_sz(&file, TAP_VNET_HDR_LEN as i32).context("TUNSETVNETHDRSZ")?;
        sys::tun_set_vnet_le(&file).context("TUNSETVNETLE")?;
        sys::tun_set_offload(&file, offload_flags)
            .with_context(|| format!("TUNSETOFFLOAD {offload_flags:#x}"))?;
        let ctl = sys::control_socket().context("control socket")?;
        let ifindex = sys::if_index(&ctl, name).context("SIOCGIFINDEX")?;
        sys::if_set_up(&ctl, name).context("setting the link up")?;
        Ok(Tap {
            file,
            name: name.to_string(),
            ifindex,
        })
    })?
    .with_context(|| format!("opening tap {name} in {}", ns.name()))
}

/// Creates bridge `name` in `ns` with STP off, forward delay 0, a 300 s ageing time (so
/// frames flow as soon as a port is up, and learned addresses stay), no multicast snooping
/// and no netfilter calls, enslaves `ports` (with learning and flooding on, the defaults) and
/// sets the bridge up.
pub fn bridge(ns: &Netns, name: &str, ports: &[&str]) -> anyhow::Result<()> {
    check_ifname(name)?;
    for p in ports {
        check_ifname(p)?;
    }
    ns.run_in(|| -> anyhow::Result<()> {
        ip(&[
            "link",
            "add",
            "name",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "ageing_time",
            "30000",
            // No IGMP snooping: its querier sends membership reports out of every port,
            // frames no run sent that a wire end's counter would count.
            "mcast_snooping",
            "0",
            // No netfilter on bridged frames (br_netfilter is loaded on this host and calls
            // the iptables hooks for every frame a bridge forwards): neither a host bridge
            // without firewall rules nor a NIC's embedded switch pays for it.
            "nf_call_iptables",
            "0",
            "nf_call_ip6tables",
            "0",
            "nf_call_arptables",
            "0",
        ])?;
        for p in ports {
            ip(&["link", "set", "dev", p, "master", name])?;
        }
        ip(&["link", "set", "dev", name, "up"])?;
        Ok(())
    })?
    .with_context(|| format!("bridge {name} over {ports:?} in {}", ns.name()))
}

/// The port end of a bridge's uplink ([`bridge_with_uplink`]), enslaved to the bridge.
pub const UPLINK_PORT: &str = "up0";
/// The wire end of a bridge's uplink: the cable to the rest of the network, where frames the
/// bridge sends up arrive (and are consumed by the namespace's stack) and where frames for
/// the bridge's ports are injected.
pub const UPLINK_WIRE: &str = "upw0";

/// [`bridge`] `name` over `ports` plus an uplink: a veth pair whose [`UPLINK_PORT`] end is a
/// port of the bridge and whose [`UPLINK_WIRE`] end is the far side, both up. A tap on such a
/// bridge is wired as libvirt's `type='bridge'` wires it on a host whose uplink is a NIC: its
/// frames cross the bridge to the same kind of wire end a VF's cross to.
pub fn bridge_with_uplink(ns: &Netns, name: &str, ports: &[&str]) -> anyhow::Result<()> {
    ns.run_in(|| -> anyhow::Result<()> {
        ip(&[
            "link",
            "add",
            UPLINK_PORT,
            "type",
            "veth",
            "peer",
            "name",
            UPLINK_WIRE,
        ])?;
        ip(&["link", "set", "dev", UPLINK_WIRE, "up"])?;
        ip(&["link", "set", "dev", UPLINK_PORT, "up"])?;
        Ok(())
    })?
    .with_context(|| format!("uplink of {name} in {}", ns.name()))?;
    let mut all: Vec<&str> = ports.to_vec();
    all.push(UPLINK_PORT);
    bridge(ns, name, &all)
}

/// Options of [`packet_socket_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketOptions {
    /// `PACKET_VNET_HDR`: received frames are preceded by a 10-byte `virtio_net_hdr` from the
    /// kernel, and sent frames must carry one.
    pub vnet_hdr: bool,
    /// `O_NONBLOCK`.
    pub nonblocking: bool,
    /// `PACKET_IGNORE_OUTGOING`: frames sent out of the interface (by this socket or anyone)
    /// are not delivered to the socket. A raw-socket vhost backend needs it: bound with
    /// `ETH_P_ALL` it would otherwise read back every frame it transmits as RX.
    pub ignore_outgoing: bool,
}

/// An `AF_PACKET`/`SOCK_RAW` socket in `ns` bound to interface `ifname` for all protocols
/// (`ETH_P_ALL`), blocking; `vnet_hdr` sets `PACKET_VNET_HDR`. Reads return one frame each
/// (both directions of the interface); writes send one frame out of the interface.
pub fn packet_socket(ns: &Netns, ifname: &str, vnet_hdr: bool) -> anyhow::Result<File> {
    packet_socket_with(
        ns,
        ifname,
        PacketOptions {
            vnet_hdr,
            ..PacketOptions::default()
        },
    )
}

/// [`packet_socket`] with all options.
pub fn packet_socket_with(ns: &Netns, ifname: &str, opts: PacketOptions) -> anyhow::Result<File> {
    check_ifname(ifname)?;
    ns.run_in(|| -> anyhow::Result<File> {
        let ctl = sys::control_socket().context("control socket")?;
        let ifindex = sys::if_index(&ctl, ifname).context("SIOCGIFINDEX")?;
        Ok(sys::packet_socket(
            ifindex,
            opts.vnet_hdr,
            opts.nonblocking,
            opts.ignore_outgoing,
        )?)
    })?
    .with_context(|| format!("packet socket on {ifname} in {}", ns.name()))
}

/// Frames a packet socket's receive queue could not take (its `PACKET_STATISTICS` drops)
/// since the previous call on the same socket (any descriptor of it): the kernel resets the
/// counters when they are read.
pub fn packet_socket_drops(sock: &impl AsFd) -> std::io::Result<u64> {
    Ok(u64::from(sys::packet_stats(sock)?.1))
}

/// Sends `frames` out of the interface `sock` is bound to in one `sendmmsg(2)`; returns how
/// many went (a prefix). An error only if none did (`ENOBUFS`: the interface pushed back).
pub fn send_frames(sock: &impl AsFd, frames: &[&[u8]]) -> std::io::Result<usize> {
    sys::send_frames(sock, frames)
}

/// Waits up to `timeout` for `fd` to be readable (`poll`); `false` on timeout.
pub fn wait_readable(fd: &impl AsFd, timeout: Duration) -> std::io::Result<bool> {
    sys::wait_readable(fd, timeout)
}

/// Packet counters of an interface, from the kernel's point of view (`rx`: frames the
/// interface delivered into the stack, which for a tap are the frames written to its fd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Received frames dropped.
    pub rx_dropped: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames dropped on send.
    pub tx_dropped: u64,
}

/// The counters of `ifname` in `ns` (`ip -s -j link show`).
pub fn link_stats(ns: &Netns, ifname: &str) -> anyhow::Result<LinkStats> {
    check_ifname(ifname)?;
    let out = ns.ip(&["-s", "-j", "link", "show", "dev", ifname])?;
    parse_link_stats(&out).with_context(|| format!("statistics of {ifname} in {}", ns.name()))
}

fn parse_link_stats(json: &str) -> anyhow::Result<LinkStats> {
    let v: serde_json::Value = serde_json::from_str(json).context("ip -j output")?;
    let s = v
        .get(0)
        .and_then(|l| l.get("stats64"))
        .context("no stats64 in ip -j output")?;
    let field = |dir: &str, key: &str| -> anyhow::Result<u64> {
        s.get(dir)
            .and_then(|d| d.get(key))
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("no stats64.{dir}.{key}"))
    };
    Ok(LinkStats {
        rx_packets: field("rx", "packets")?,
        rx_bytes: field("rx", "bytes")?,
        rx_dropped: field("rx", "dropped")?,
        tx_packets: field("tx", "packets")?,
        tx_bytes: field("tx", "bytes")?,
        tx_dropped: field("tx", "dropped")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for ok in ["tap0", "br-0", "a", "x.y_z", "fifteen-chars-1"] {
            check_ifname(ok).expect(ok);
        }
        for bad in [
            "",
            "sixteen-chars-12",
            "a b",
            "a/b",
            ".",
            "..",
            "tap0;",
            "\u{e9}",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_ip_stats() {
        let json = r#"[{"ifindex":2,"ifname":"tap0","stats64":{
            "rx":{"bytes":100,"packets":2,"errors":0,"dropped":1,"over_errors":0,"multicast":0},
            "tx":{"bytes":50,"packets":1,"errors":0,"dropped":0,"carrier_errors":0,
                  "collisions":0}}}]"#;
        assert_eq!(
            parse_link_stats(json).expect("parse"),
            LinkStats {
                rx_packets: 2,
                rx_bytes: 100,
                rx_dropped: 1,
                tx_packets: 1,
                tx_bytes: 50,
                tx_dropped: 0,
            }
        );
        assert!(parse_link_stats("[]").is_err());
        assert!(parse_link_stats("not json").is_err());
    }
}
