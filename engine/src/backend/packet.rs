//! The raw-socket backend: what Linux vhost-net accepts as a backend besides a tap
//! (`VHOST_NET_SET_BACKEND` with an `AF_PACKET` socket). A [`FrameFd`] on a bound `AF_PACKET`
//! `SOCK_RAW` socket that carries bare Ethernet frames: the device strips the 12-byte
//! virtio-net header on TX and writes a zero one on RX ([`Header::Stripped`]; vhost-net's
//! `vhost_hlen` = 12, `sock_hlen` = 0), so no offloads cross it.
//!
//! The socket is opened by whoever has the privileges (the harness, as libvirt would): bound
//! to one interface with `ETH_P_ALL`, non-blocking, without `PACKET_VNET_HDR`, and with
//! `PACKET_IGNORE_OUTGOING` so it does not read back the frames it sends.

use std::fs::File;
use std::io;
use std::sync::Arc;

use vring::GuestMemory;

use super::frames::{FrameFd, Header};
use super::tap::MAX_FRAME_NO_GSO;

/// The backend on the packet socket `sock` (see the module documentation). `batch` is the most
/// frames per `send`.
pub fn packet_backend(sock: File, mem: Arc<GuestMemory>, batch: usize) -> io::Result<FrameFd> {
    FrameFd::new(
        "packet",
        sock,
        mem,
        batch,
        Header::Stripped,
        MAX_FRAME_NO_GSO,
    )
}
