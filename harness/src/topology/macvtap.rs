//! macvtap in passthrough mode on a device: libvirt's `<interface type='direct'>` with
//! `<source dev='X' mode='passthrough'/>`. The macvtap interface takes the lower device (a VF)
//! for itself, and its character device `/dev/tap<ifindex>` is a tap-like fd: one frame per
//! read and write, with a 12-byte virtio-net header (`IFF_VNET_HDR`), so the engine's tap
//! backend serves it unchanged.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{ensure, Context};

use super::netns::{ip, Netns};
use super::sys;
use super::tap::{check_ifname, Tap, TAP_VNET_HDR_LEN};

/// The interface index of the next macvtap: unique among this process's macvtaps (a counter
/// over 100) and those of every other live process (its pid), and above the small indexes a
/// namespace hands out itself. A macvtap's character device is `/dev/tap<ifindex>`, in the one
/// `/dev` of every namespace: two macvtaps of the same index in two namespaces (two runs or
/// ceilings built alike) would share one node, and the fd opened for the second would be the
/// first's.
fn next_ifindex() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 100;
    // Linux pids are below 2^22, so this stays below 2^31 (an ifindex is a positive int).
    1_000_000 + (std::process::id() % (1 << 22)) * 100 + n
}

/// Creates macvtap `name` in passthrough mode on `lower` in `ns`, sets both up, and opens its
/// character device non-blocking with `IFF_VNET_HDR` and a 12-byte little-endian header.
///
/// The character device is `/dev/tap<ifindex>`, named by the interface's index in its own
/// namespace; the fd is checked (`TUNGETIFF`) to be attached to `name`, so a node of an
/// interface of another namespace with the same index is never used by mistake.
pub fn open_macvtap(ns: &Netns, lower: &str, name: &str) -> anyhow::Result<Tap> {
    check_ifname(lower)?;
    check_ifname(name)?;
    ns.run_in(|| -> anyhow::Result<Tap> {
        let index = next_ifindex().to_string();
        ip(&[
            "link", "add", "link", lower, "name", name, "index", &index, "type", "macvtap", "mode",
            "passthru",
        ])?;
        ip(&["link", "set", "dev", lower, "up"])?;
        ip(&["link", "set", "dev", name, "up"])?;
        let ctl = sys::control_socket().context("control socket")?;
        let ifindex = sys::if_index(&ctl, name).context("SIOCGIFINDEX")?;
        let path = format!("/dev/tap{ifindex}");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        let is_char = file
            .metadata()
            .with_context(|| format!("stat {path}"))?
            .file_type()
            .is_char_device();
        let attached = sys::tun_get_iff(&file).context("TUNGETIFF")?;
        ensure!(
            is_char && attached == name,
            "{path} is attached to {attached:?}, not {name:?}"
        );
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        sys::tun_set_iff(&file, name, flags).context("TUNSETIFF")?;
        sys::tun_set_vnet_hdr_sz(&file, TAP_VNET_HDR_LEN as i32).context("TUNSETVNETHDRSZ")?;
        sys::tun_set_vnet_le(&file).context("TUNSETVNETLE")?;
        Ok(Tap {
            file,
            name: name.to_string(),
            ifindex,
        })
    })?
    .with_context(|| format!("macvtap {name} on {lower} in {}", ns.name()))
}

#[cfg(test)]
mod tests {
    //! Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN); without it the test skips, saying why.
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::topology::{self, link_stats, packet_socket, wait_readable};

    #[test]
    fn frames_cross_a_passthrough_macvtap_both_ways() {
        let p = topology::probe();
        if !p.can_run {
            crate::testing::skip("frames_cross_a_passthrough_macvtap_both_ways", &p.summary());
            return;
        }
        let ns = Netns::create().expect("netns");
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "w0"])
            .expect("veth");
        ns.ip(&["link", "set", "dev", "w0", "up"]).expect("up");
        let mvt = open_macvtap(&ns, "v0", "mvt0").expect("macvtap");
        assert_eq!(mvt.name, "mvt0");
        // Out: a zero header and a test frame written to the fd leave through the lower
        // device and arrive at the far end of the veth.
        let mut f = vec![0u8; TAP_VNET_HDR_LEN + 64];
        vring::frame::fill(&mut f[TAP_VNET_HDR_LEN..], 7, 0);
        let before = link_stats(&ns, "w0").expect("stats").rx_packets;
        assert_eq!((&mvt.file).write(&f).expect("write"), f.len());
        let deadline = Instant::now() + Duration::from_secs(5);
        while link_stats(&ns, "w0").expect("stats").rx_packets == before {
            assert!(Instant::now() < deadline, "the frame never reached w0");
            std::thread::sleep(Duration::from_millis(10));
        }
        // In: a frame sent into the far end comes out of the fd behind a 12-byte header.
        let sock = packet_socket(&ns, "w0", false).expect("packet socket");
        vring::frame::fill(&mut f[TAP_VNET_HDR_LEN..], 8, 0);
        (&sock).write_all(&f[TAP_VNET_HDR_LEN..]).expect("inject");
        let mut b = vec![0u8; 2048];
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            if !wait_readable(&mvt.file, Duration::from_millis(100)).expect("poll") {
                continue;
            }
            while let Ok(n) = (&mvt.file).read(&mut b) {
                let fr = &b[TAP_VNET_HDR_LEN..n];
                if vring::frame::seq(fr) == Some(8) {
                    got = Some(n);
                }
            }
        }
        assert_eq!(
            got,
            Some(f.len()),
            "the injected frame never came out of the macvtap"
        );
    }

    /// Two namespaces built alike, a macvtap of the same name in each: each fd is its own
    /// macvtap's (their `/dev/tap<ifindex>` nodes differ), so a frame written to the second
    /// leaves through the second namespace's veth.
    #[test]
    fn alike_macvtaps_in_two_namespaces_get_their_own_fds() {
        let p = topology::probe();
        if !p.can_run {
            crate::testing::skip(
                "alike_macvtaps_in_two_namespaces_get_their_own_fds",
                &p.summary(),
            );
            return;
        }
        let build = || {
            let ns = Netns::create().expect("netns");
            ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "w0"])
                .expect("veth");
            ns.ip(&["link", "set", "dev", "w0", "up"]).expect("up");
            let mvt = open_macvtap(&ns, "v0", "mvt0").expect("macvtap");
            (ns, mvt)
        };
        let (ns_a, a) = build();
        let (ns_b, b) = build();
        assert_ne!(a.ifindex, b.ifindex);
        let mut f = vec![0u8; TAP_VNET_HDR_LEN + 64];
        vring::frame::fill(&mut f[TAP_VNET_HDR_LEN..], 1, 0);
        let before_a = link_stats(&ns_a, "w0").expect("stats").rx_packets;
        let before_b = link_stats(&ns_b, "w0").expect("stats").rx_packets;
        assert_eq!((&b.file).write(&f).expect("write"), f.len());
        let deadline = Instant::now() + Duration::from_secs(5);
        while link_stats(&ns_b, "w0").expect("stats").rx_packets == before_b {
            assert!(Instant::now() < deadline, "the frame never reached b's w0");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(link_stats(&ns_a, "w0").expect("stats").rx_packets, before_a);
        drop((a, b));
    }
}
