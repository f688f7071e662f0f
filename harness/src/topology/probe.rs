//! Whether the tap modes can run on this host, and if not, why.

use std::fs::{self, OpenOptions};
use std::process::{Command, Stdio};

use std::sync::OnceLock;

use super::netns::Netns;
use super::sys;

/// `CAP_NET_ADMIN`: create taps and bridges, configure links.
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`: `setns` into a network namespace, and `ip netns add` (mount, unshare).
const CAP_SYS_ADMIN: u32 = 21;

/// The answer of [`probe`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Privileges {
    /// Every requirement holds: the tap modes (and tap limits) can run.
    pub can_run: bool,
    /// What is missing, one sentence each; empty when `can_run`.
    pub reasons: Vec<String>,
    /// Taps can be made (privileges, `/dev/net/tun`, `ip`), whatever io_uring says: the
    /// `emulated` mode needs no more.
    pub taps: bool,
    /// io_uring is usable (the `tap-vhost` worker needs it).
    pub io_uring: bool,
    /// A VF pool can be built and served (privileges, `ip`, veth pairs, io_uring), whatever
    /// `/dev/net/tun` says: the `direct-vf` mode needs no more.
    pub vfs: bool,
    /// `AF_XDP` sockets can be opened (the `af-xdp` VF backend; it does not count as missing
    /// when absent: `direct-vf` then defaults to the packet socket).
    pub af_xdp: bool,
}

impl Privileges {
    /// The reasons, joined with `"; "`.
    pub fn summary(&self) -> String {
        self.reasons.join("; ")
    }
}

/// Checks what the tap modes need: effective uid 0 or `CAP_NET_ADMIN` in the effective set,
/// and `CAP_SYS_ADMIN` (for `setns` and `ip netns add`; root has it unless a container dropped
/// it); `/dev/net/tun` openable; io_uring usable (`/proc/sys/kernel/io_uring_disabled` not 2,
/// and a 2-entry ring can be created); the `ip` command (iproute2); veth pairs (tried once per
/// process in a namespace of its own, which is deleted at once). Cheap, and leaves nothing.
pub fn probe() -> Privileges {
    let mut reasons = Vec::new();

    let euid = sys::geteuid();
    let cap_eff = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| cap_eff(&s));
    let has = |cap: u32| cap_eff.is_some_and(|c| c & (1 << cap) != 0);
    if euid != 0 && !has(CAP_NET_ADMIN) {
        reasons.push(format!(
            "not root (euid {euid}) and no CAP_NET_ADMIN in the effective set"
        ));
    }
    if cap_eff.is_some() && !has(CAP_SYS_ADMIN) {
        reasons.push(
            "no CAP_SYS_ADMIN in the effective set (needed by setns and ip netns add)".into(),
        );
    }

    if let Err(e) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        reasons.push(format!("cannot open /dev/net/tun: {e}"));
    }

    let taps_before_uring = reasons.len();
    let disabled = fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_string());
    match disabled.as_deref() {
        None | Some("0") | Some("1") => {}
        Some(v) => reasons.push(format!(
            "io_uring is disabled (kernel.io_uring_disabled = {v})"
        )),
    }
    if let Err(e) = io_uring::IoUring::new(2) {
        let sysctl = disabled.map_or(String::new(), |v| {
            format!(" (kernel.io_uring_disabled = {v})")
        });
        reasons.push(format!("cannot create an io_uring: {e}{sysctl}"));
    }
    let io_uring = reasons.len() == taps_before_uring;

    let ip_ok = Command::new("ip")
        .arg("-V")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ip_ok {
        reasons.push("the ip command (iproute2) is not available".into());
    }

    let taps = taps_before_uring == 0 && ip_ok;
    // Everything but the tun device: what a VF pool needs before veth can be tried.
    let admin = ip_ok && !reasons.iter().any(|r| !r.contains("/dev/net/tun"));
    let veth = if admin { veth_works() } else { Ok(()) };
    if let Err(why) = &veth {
        reasons.push(why.clone());
    }
    Privileges {
        can_run: reasons.is_empty(),
        reasons,
        taps,
        io_uring,
        vfs: admin && veth.is_ok(),
        af_xdp: engine::backend::af_xdp::sys::open_socket().is_ok(),
    }
}

/// Whether a veth pair can be created (in a namespace of its own, deleted at once). The
/// kernel's answer cannot change while the process runs, so it is asked once.
fn veth_works() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let ns = Netns::create().map_err(|e| format!("cannot create a namespace: {e:#}"))?;
            ns.ip(&[
                "link",
                "add",
                "name",
                "vhbprobe0",
                "type",
                "veth",
                "peer",
                "name",
                "vhbprobe1",
            ])
            .map(drop)
            .map_err(|e| format!("cannot create a veth pair: {e:#}"))
        })
        .clone()
}

/// `CapEff:` of a `/proc/<pid>/status` text.
fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let c = cap_eff(status).expect("CapEff");
        assert!(c & (1 << CAP_NET_ADMIN) != 0);
        assert_eq!(cap_eff("CapEff:\t0000000000001000\n"), Some(1 << 12));
        assert_eq!(cap_eff("Name: x\n"), None);
    }

    #[test]
    fn probe_is_consistent() {
        let p = probe();
        assert_eq!(p.can_run, p.reasons.is_empty(), "{p:?}");
    }
}
