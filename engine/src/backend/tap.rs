//! The tap backend (`-net tap,vhost=on`): a [`FrameFd`] on a tun/tap fd opened by the harness
//! with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte vnet header, so a chain's readable
//! part (virtio-net header, then frame) is exactly what the tap takes ([`Header::Passed`]). A
//! macvtap fd is the same kind of fd.
//!
//! Like Firecracker's net device (`build_tap_offload_features`) and QEMU, the device sets the
//! tap's offloads itself from the negotiated features ([`offload_flags`], [`apply_offloads`]):
//! what the guest accepts on receive is what the tap may hand over.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use vring::net::{bit, Features};
use vring::GuestMemory;

use super::frames::{FrameFd, Header};
use crate::sys;

/// Largest frame a tap delivers without GSO: MTU 1500 + Ethernet header.
pub const MAX_FRAME_NO_GSO: usize = 1514;
/// Largest frame with GSO offloads on (64 KiB plus headers).
pub const MAX_FRAME_GSO: usize = 65_550;

/// The backend on `tap` (non-blocking, `IFF_VNET_HDR`, vnet header size 12) for a device with
/// the negotiated `features`; sets the tap's offloads from them. `batch` is the most frames per
/// `send`.
pub fn tap_backend(
    tap: File,
    mem: Arc<GuestMemory>,
    batch: usize,
    features: Features,
) -> io::Result<FrameFd> {
    apply_offloads(&tap, features)?;
    let max_frame = if guest_gso(features) {
        MAX_FRAME_GSO
    } else {
        MAX_FRAME_NO_GSO
    };
    FrameFd::new("tap", tap, mem, batch, Header::Passed, max_frame)
}

/// `TUNSETOFFLOAD` flags for a negotiated feature set: the offloads the guest accepts on
/// receive are the ones the tap may hand over (QEMU's `virtio_net_apply_guest_offloads`).
/// Host-side offloads (the guest sending partial checksums or GSO frames) need no tap flag:
/// the tap takes `NEEDS_CSUM` and GSO headers from writers whatever its flags.
pub fn offload_flags(f: Features) -> u32 {
    let mut o = 0;
    if f.has(bit::GUEST_CSUM) {
        o |= libc::TUN_F_CSUM;
    }
    if f.has(bit::GUEST_TSO4) {
        o |= libc::TUN_F_TSO4;
    }
    if f.has(bit::GUEST_TSO6) {
        o |= libc::TUN_F_TSO6;
    }
    o
}

/// Whether the tap may deliver GSO frames (up to 64 KiB) for this feature set.
pub fn guest_gso(f: Features) -> bool {
    f.has(bit::GUEST_TSO4) || f.has(bit::GUEST_TSO6)
}

/// Sets the tap's offloads for the negotiated features ([`offload_flags`]). A feature set that
/// asks for none makes no call: a tap starts with none, and a datagram socket standing in for
/// a tap (in tests without privileges) takes none.
pub fn apply_offloads(tap: &File, f: Features) -> io::Result<()> {
    match offload_flags(f) {
        0 => Ok(()),
        flags => sys::tun_set_offload(tap.as_fd(), flags),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_offloads_follow_the_guest_features() {
        let v1 = Features::of(&[bit::VERSION_1]);
        assert_eq!(offload_flags(v1), 0);
        let f = v1.with(bit::GUEST_CSUM, true).with(bit::GUEST_TSO4, true);
        assert_eq!(offload_flags(f), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
        assert!(guest_gso(f) && !guest_gso(v1));
        assert!(guest_gso(v1.with(bit::GUEST_TSO6, true)));
        // Host-side offloads (the guest sending partial checksums) need no tap flag.
        assert_eq!(offload_flags(v1.with(bit::CSUM, true)), 0);
    }
}
