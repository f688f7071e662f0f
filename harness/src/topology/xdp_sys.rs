//! The `bpf(2)` calls of the XDP redirect program, each behind a safe function: an `XSKMAP`
//! map, the program's load, its attachment to an interface as a BPF link, and map updates.
//! This module and `sys` hold all of the topology layer's `unsafe`; here it is one place,
//! [`bpf`], with each attribute struct `#[repr(C)]`, zero-padded, and pinned by a test.

use std::ffi::c_int;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: c_int = 0;
const BPF_MAP_UPDATE_ELEM: c_int = 2;
const BPF_PROG_LOAD: c_int = 5;
const BPF_PROG_GET_FD_BY_ID: c_int = 13;
const BPF_LINK_CREATE: c_int = 28;

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`: `BPF_XDP`.
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_SKB_MODE`: generic XDP, run on the skb after the driver.
pub(crate) const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP, run by the driver (veth has it).
pub(crate) const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `struct bpf_insn`: opcode, dst/src registers (low/high nibble), offset, immediate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// The `BPF_MAP_CREATE` member of `union bpf_attr` (the fields used, then zeros).
#[repr(C)]
#[derive(Debug, Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// The `BPF_MAP_*_ELEM` member.
#[repr(C)]
#[derive(Debug, Default)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `BPF_PROG_LOAD` member, up to `expected_attach_type`.
#[repr(C)]
#[derive(Debug, Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_LINK_CREATE` member (target by ifindex, no extra options).
#[repr(C)]
#[derive(Debug, Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// The `BPF_*_GET_FD_BY_ID` member.
#[repr(C)]
#[derive(Debug, Default)]
struct GetById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `bpf(cmd, attr, sizeof attr)`; the new fd for the commands that make one.
fn bpf<T>(cmd: c_int, attr: &T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, fully initialised `#[repr(C)]` prefix of `union bpf_attr` of
    // the size passed (the kernel zero-extends a shorter attr). Every pointer inside it (to
    // instructions, the license, a log buffer) points into values the caller keeps alive for
    // the duration of this call, which is the only time the kernel reads or writes them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// `BPF_PROG_LOAD`, retried while the kernel answers `EAGAIN` (the verifier gives up with it
/// when it is interrupted or short of memory for a moment; libbpf retries 5 times the same
/// way).
fn prog_load<T>(attr: &T) -> io::Result<i64> {
    let mut tries = 0;
    loop {
        match bpf(BPF_PROG_LOAD, attr) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 5 => tries += 1,
            r => return r,
        }
    }
}

fn owned(fd: i64) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned no fd"))?;
    // SAFETY: the commands that reach here return a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (d, s) in out.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    out
}

/// An `XSKMAP` of `entries` slots (key: queue index, value: an AF_XDP socket fd).
pub(crate) fn xskmap_create(name: &str, entries: u32) -> io::Result<OwnedFd> {
    owned(bpf(
        BPF_MAP_CREATE,
        &MapCreate {
            map_type: BPF_MAP_TYPE_XSKMAP,
            key_size: 4,
            value_size: 4,
            max_entries: entries,
            map_name: name16(name),
            ..MapCreate::default()
        },
    )?)
}

/// `map[key] = fd` (an `XSKMAP` slot gets a socket).
pub(crate) fn xskmap_set(map: &impl AsFd, key: u32, fd: &impl AsFd) -> io::Result<()> {
    let value: u32 = fd.as_fd().as_raw_fd() as u32;
    bpf(
        BPF_MAP_UPDATE_ELEM,
        &MapElem {
            map_fd: map.as_fd().as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..MapElem::default()
        },
    )?;
    Ok(())
}

/// Loads `insns` as an XDP program named `name` under `license`; on a verifier rejection the
/// error carries the verifier's log.
pub(crate) fn prog_load_xdp(name: &str, insns: &[Insn], license: &str) -> io::Result<OwnedFd> {
    let license = std::ffi::CString::new(license).map_err(io::Error::other)?;
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name16(name),
        expected_attach_type: BPF_XDP,
        ..ProgLoad::default()
    };
    match prog_load(&attr) {
        Ok(fd) => return owned(fd),
        // Kernels that do not know `BPF_XDP` as an expected attach type take 0.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => attr.expected_attach_type = 0,
        Err(e) => return Err(e),
    }
    if let Ok(fd) = prog_load(&attr) {
        return owned(fd);
    }
    // Once more with the verifier's log, to say why.
    let mut log = vec![0u8; 16 * 1024];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    match prog_load(&attr) {
        Ok(fd) => owned(fd),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(io::Error::new(
                e.kind(),
                format!("{e}; verifier: {}", String::from_utf8_lossy(&log[..end])),
            ))
        }
    }
}

/// Attaches `prog` to interface `ifindex` as a BPF link with `flags` (`XDP_FLAGS_*_MODE`);
/// closing the link detaches it.
pub(crate) fn xdp_link_create(prog: &impl AsFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    owned(bpf(
        BPF_LINK_CREATE,
        &LinkCreate {
            prog_fd: prog.as_fd().as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags,
        },
    )?)
}

/// Whether the kernel still has a BPF program with id `id` (`BPF_PROG_GET_FD_BY_ID`).
pub(crate) fn prog_exists(id: u32) -> io::Result<bool> {
    match bpf(
        BPF_PROG_GET_FD_BY_ID,
        &GetById {
            id,
            ..GetById::default()
        },
    ) {
        Ok(fd) => owned(fd).map(|_| true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn attr_layouts_match_linux() {
        assert_eq!(size_of::<Insn>(), 8);
        assert_eq!(offset_of!(MapCreate, map_name), 28);
        assert_eq!(size_of::<MapElem>(), 32);
        assert_eq!(offset_of!(MapElem, key), 8);
        assert_eq!(offset_of!(ProgLoad, insns), 8);
        assert_eq!(offset_of!(ProgLoad, log_buf), 32);
        assert_eq!(offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(offset_of!(ProgLoad, prog_ifindex), 64);
        assert_eq!(offset_of!(ProgLoad, expected_attach_type), 68);
        assert_eq!(size_of::<LinkCreate>(), 16);
    }
}
