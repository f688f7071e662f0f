//! The OS calls of the topology layer, each behind a safe function. **All of the harness's
//! `unsafe` is here**: `setns`, the tun and interface `ioctl`s, `AF_PACKET` sockets, `poll`,
//! `kill` and `sigaction`.
//!
//! Every function takes descriptors by reference (`AsFd`) and returns owned ones (`File`), so
//! no raw descriptor outlives its owner.

use std::ffi::c_int;
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `PACKET_VNET_HDR` (linux/if_packet.h): frames on the socket carry a `struct virtio_net_hdr`.
const PACKET_VNET_HDR: c_int = 15;
/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h, Linux 4.20): the socket does not see frames
/// sent out of its interface (with `ETH_P_ALL` it would otherwise read back its own).
const PACKET_IGNORE_OUTGOING: c_int = 23;
/// `PACKET_STATISTICS` (linux/if_packet.h): read (and reset) a `struct tpacket_stats`.
const PACKET_STATISTICS: c_int = 6;

/// `struct tpacket_stats` (linux/if_packet.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct TpacketStats {
    tp_packets: u32,
    tp_drops: u32,
}

/// `setsockopt(fd, SOL_PACKET, opt, &1)`.
fn packet_flag(fd: &OwnedFd, opt: c_int) -> io::Result<()> {
    let on: c_int = 1;
    // SAFETY: setsockopt reads `optlen` bytes from `optval`: one `int` that lives across the
    // call; `fd` is a live socket.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            opt,
            (&on as *const c_int).cast(),
            size_of::<c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Moves the calling thread into the network namespace `ns` (an open `/run/netns/<name>`).
/// Only this thread moves; fds it opens afterwards (sockets, taps) belong to the namespace.
pub(crate) fn setns_net(ns: &impl AsFd) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag; `ns` is a live descriptor borrowed for the
    // call. It changes only the calling thread's network namespace, no memory.
    cvt(unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) })?;
    Ok(())
}

/// An `ifreq` naming `name` (at most 15 bytes, checked by the callers) with a zeroed union.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: `ifreq` is plain old data (a byte array and a union of integers, sockaddrs and a
    // pointer); all-zero is a valid value of every member.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `TUNSETIFF`: attaches the tun fd to a new interface `name` with `flags` (`IFF_TAP` ...).
/// Returns the name the kernel gave it.
pub(crate) fn tun_set_iff(tun: &File, name: &str, flags: c_int) -> io::Result<String> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a valid, writable ifreq
    // that outlives the call, and `tun` is a live descriptor.
    cvt(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF as _, &mut req) })?;
    Ok(ifreq_name(&req))
}

/// `TUNGETIFF`: the name of the interface a tun, tap or macvtap fd is attached to.
pub(crate) fn tun_get_iff(tun: &File) -> io::Result<String> {
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one `struct ifreq`; `req` is a valid, writable ifreq that
    // outlives the call, and `tun` is a live descriptor.
    cvt(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNGETIFF as _, &mut req) })?;
    Ok(ifreq_name(&req))
}

/// `TUNSETVNETHDRSZ`: the size of the virtio-net header before every frame on the fd.
pub(crate) fn tun_set_vnet_hdr_sz(tun: &File, size: c_int) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer; `size` lives across the call.
    cvt(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &size) })?;
    Ok(())
}

/// `TUNSETVNETLE`: the header's fields are little-endian (virtio 1.x), whatever the host is.
pub(crate) fn tun_set_vnet_le(tun: &File) -> io::Result<()> {
    let le: c_int = 1;
    // SAFETY: TUNSETVNETLE reads one `int` through the pointer; `le` lives across the call.
    cvt(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETVNETLE as _, &le) })?;
    Ok(())
}

/// `TUNSETOFFLOAD`: which offloads (`TUN_F_*`) the reader of the fd accepts. The argument is
/// the value itself, not a pointer.
pub(crate) fn tun_set_offload(tun: &File, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long); no memory is
    // passed.
    cvt(unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETOFFLOAD as _,
            flags as libc::c_ulong,
        )
    })?;
    Ok(())
}

fn socket(domain: c_int, ty: c_int, protocol: c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket has no memory preconditions; the result is checked before use.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A datagram socket in the calling thread's namespace, for interface `ioctl`s.
pub(crate) fn control_socket() -> io::Result<OwnedFd> {
    socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
}

/// `SIOCGIFINDEX`: the index of interface `name` in `ctl`'s namespace.
pub(crate) fn if_index(ctl: &OwnedFd, name: &str) -> io::Result<u32> {
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFINDEX reads and writes one `struct ifreq`; `req` is valid and writable
    // for the call, and `ctl` is a live socket.
    cvt(unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFINDEX as _, &mut req) })?;
    // SAFETY: the kernel filled the union's `ifru_ifindex` member (an int; every bit pattern
    // is valid).
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    u32::try_from(index).map_err(|_| io::Error::other(format!("ifindex {index}")))
}

/// Sets `IFF_UP` on interface `name` (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS`).
pub(crate) fn if_set_up(ctl: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS reads and writes one `struct ifreq`; `req` is valid and writable.
    cvt(unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) })?;
    // SAFETY: the kernel filled the union's `ifru_flags` member (a short; any bits are valid).
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads one `struct ifreq`; `req` is valid for the call.
    cvt(unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) })?;
    Ok(())
}

/// An `AF_PACKET`/`SOCK_RAW` socket bound to `ifindex` for every protocol (`ETH_P_ALL`), in
/// the calling thread's namespace. With `vnet_hdr`, `PACKET_VNET_HDR` is set; with
/// `ignore_outgoing`, `PACKET_IGNORE_OUTGOING`.
pub(crate) fn packet_socket(
    ifindex: u32,
    vnet_hdr: bool,
    nonblocking: bool,
    ignore_outgoing: bool,
) -> io::Result<File> {
    let ty = libc::SOCK_RAW | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // Protocol 0: the socket receives nothing until it is bound to the one interface below,
    // so no frame of another interface can slip in between socket() and bind().
    let fd = socket(libc::AF_PACKET, ty, 0)?;
    if vnet_hdr {
        packet_flag(&fd, PACKET_VNET_HDR)?;
    }
    if ignore_outgoing {
        packet_flag(&fd, PACKET_IGNORE_OUTGOING)?;
    }
    // SAFETY: `sockaddr_ll` is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex"))?;
    // SAFETY: bind reads `addrlen` bytes from `addr`, a `sockaddr_ll` that lives across the
    // call; `fd` is a live socket.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(File::from(fd))
}

/// `PACKET_STATISTICS` of a packet socket: (frames received, frames dropped because its
/// receive queue was full) since the previous call (reading resets them).
pub(crate) fn packet_stats(sock: &impl AsFd) -> io::Result<(u32, u32)> {
    let mut st = TpacketStats::default();
    let mut len = size_of::<TpacketStats>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes to `optval`, a `TpacketStats` (the kernel's
    // `struct tpacket_stats`, two u32) that is valid and writable for the call, and stores
    // the length written in `len`; the descriptor is borrowed from `sock`.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_STATISTICS,
            (&mut st as *mut TpacketStats).cast(),
            &mut len,
        )
    })?;
    Ok((st.tp_packets, st.tp_drops))
}

/// `sendmmsg(2)`: sends `frames` on a bound packet socket, one message each, in one call.
/// Returns how many were sent (a prefix of `frames`); an error only if none was.
pub(crate) fn send_frames(sock: &impl AsFd, frames: &[&[u8]]) -> io::Result<usize> {
    let mut iovs: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: `msghdr` is plain old data; all-zero is a valid value (no name, no
            // control data).
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            }
        })
        .collect();
    let n = u32::try_from(msgs.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many frames"))?;
    // SAFETY: `msgs` holds `n` valid headers, each pointing at one iovec of `iovs` that points
    // at a frame of `frames`; all three outlive the call, and the kernel only reads the frames
    // and writes `msg_len`.
    let r = unsafe { libc::sendmmsg(sock.as_fd().as_raw_fd(), msgs.as_mut_ptr(), n, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Waits up to `timeout` for `fd` to become readable; `Ok(false)` on timeout. An interrupted
/// wait counts as a timeout (the caller re-checks its deadline).
pub(crate) fn wait_readable(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: poll reads and writes one `pollfd`, valid and writable for the call; the
    // descriptor in it is borrowed from `fd`.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    match r {
        r if r > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// The effective user id.
pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether `kill(pid, 0)` says the process is gone (`ESRCH`). `EPERM` means it exists.
pub(crate) fn process_gone(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 delivers nothing; kill only checks that `pid` exists and may be
    // signalled. No memory is involved.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Whether signal `sig`'s disposition is "ignore" (`SIG_IGN`), e.g. SIGHUP under `nohup`.
pub(crate) fn signal_ignored(sig: c_int) -> bool {
    // SAFETY: `sigaction` is plain old data; all-zero is a valid value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: with a null `act`, sigaction only writes the current disposition into `old`,
    // which is valid and writable for the call.
    let r = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
    r == 0 && old.sa_sigaction == libc::SIG_IGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_interface_names() {
        assert!(ifreq("").is_err());
        assert!(ifreq("a-name-that-is-too-long").is_err());
        assert!(ifreq("nul\0").is_err());
        let r = ifreq("tap0").expect("ifreq");
        assert_eq!(ifreq_name(&r), "tap0");
    }

    #[test]
    fn process_liveness() {
        assert!(!process_gone(std::process::id()));
        assert!(!process_gone(1));
    }
}
