//! The privileged topology of the tap modes: network namespaces, taps, a bridge, packet
//! sockets. The harness builds it and hands the engine plain fds, as libvirt opens the tap and
//! passes its fd to QEMU; the engine itself never needs privileges.
//!
//! Everything lives in a private namespace `vhb-<pid>-<n>` ([`Netns`]) that is deleted on
//! every exit path (drop, panic, SIGINT/SIGTERM/SIGHUP; [`cleanup_stale`] after a SIGKILL), so
//! no interface ever appears in the host's namespace.
//!
//! Topologies:
//! - **one-way runs** (`tx`, `rx`): one tap whose frames the kernel consumes. `tx`: frames the
//!   worker writes to the tap fd enter the namespace's stack, which drops them (they are not
//!   addressed to it; the test EtherType has no handler). `rx`: frames injected from a
//!   [`packet_socket`] bound to the tap leave through the tap and appear on the tap fd, where
//!   the worker reads them.
//! - **request/response and two-guest runs**: two taps on a [`bridge`] (`br0`, STP off,
//!   forward delay 0): a frame written to one tap's fd is forwarded (flooded, then learned) to
//!   the other's.
//! - **VFs** ([`VfPool`]): a PF with a fixed number of VFs, each a veth pair (the VF end a
//!   backend binds a packet socket to, the wire end a port of the PF's embedded switch, a
//!   bridge named after the PF).
//!
//! [`probe`] says whether this host allows any of it. All `unsafe` of the layer (`setns`,
//! `ioctl`, sockets) is in the private `sys` module.

mod macvtap;
mod netns;
mod probe;
pub(crate) mod sys;
mod tap;
mod vf_pool;
mod xdp;
mod xdp_sys;

pub use macvtap::open_macvtap;
#[cfg(test)]
pub(crate) use netns::created_on_this_thread;
pub(crate) use netns::process_dead;
pub use netns::{cleanup_stale, owner_pid, Netns, NETNS_DIR, PREFIX};
pub use probe::{probe, Privileges};
pub use tap::{
    bridge, bridge_with_uplink, check_ifname, link_stats, open_tap, packet_socket,
    packet_socket_drops, packet_socket_with, send_frames, wait_readable, LinkStats, PacketOptions,
    Tap, MAX_IFNAME, PACKET_VNET_HDR_LEN, TAP_VNET_HDR_LEN, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6,
    TUN_F_TSO_ECN, TUN_F_UFO, TUN_F_USO4, TUN_F_USO6, UPLINK_PORT, UPLINK_WIRE,
};
pub use vf_pool::{veths, vf_backend_socket, Vf, VfBackend, VfOptions, VfPool};
pub use xdp::{attached_prog_id, open_xsk, prog_exists, veth_pair, xdp_port, XdpMode, XdpRedirect};
