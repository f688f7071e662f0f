//! What machine a result came from: kernel, CPU, cores, memory, and the build's git revision.

use std::fs;

use serde::{Deserialize, Serialize};

/// The host a run was measured on. Fields that cannot be read are `"unknown"` / 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Kernel release (`uname -r`, from `/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// First `model name` in `/proc/cpuinfo`.
    pub cpu_model: String,
    /// CPUs this process may run on (`std::thread::available_parallelism`).
    pub cores: usize,
    /// `/proc/sys/kernel/hostname`.
    pub hostname: String,
    /// `MemTotal` from `/proc/meminfo`, in bytes.
    pub total_memory_bytes: u64,
}

impl HostInfo {
    /// Reads the host description; never fails (unreadable fields get placeholders).
    pub fn probe() -> Self {
        Self {
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cpu_model: fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|s| cpu_model(&s))
                .unwrap_or_else(|| UNKNOWN.to_string()),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            total_memory_bytes: fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|s| kib_field(&s, "MemTotal:"))
                .unwrap_or(0),
        }
    }
}

const UNKNOWN: &str = "unknown";

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| UNKNOWN.to_string())
}

/// The first `model name : ...` value of a `/proc/cpuinfo` text.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

/// A `Key:   1234 kB` line of `/proc/meminfo` or `/proc/self/status`, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix(key))?;
    let mut parts = rest.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// Resident set size of this process (`VmRSS` in `/proc/self/status`), in bytes.
pub fn process_rss_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")
}

/// Resident memory of this process, split like `/proc/self/status` does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rss {
    /// `VmRSS`, bytes.
    pub total: u64,
    /// `RssShmem`: resident shared-memory pages (guest memory lives in a memfd), bytes.
    pub shmem: u64,
}

/// Resident memory of this process now.
pub fn process_rss() -> Option<Rss> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    Some(Rss {
        total: kib_field(&status, "VmRSS:")?,
        shmem: kib_field(&status, "RssShmem:")?,
    })
}

/// The git revision the binary was built from: `git rev-parse HEAD`, with `-dirty` appended
/// when tracked files had uncommitted changes; `"unknown"` when git was unavailable. Embedded
/// by `build.rs`.
pub fn git_revision() -> &'static str {
    env!("VHOSTBENCH_GIT_REVISION")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_texts() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
        let meminfo = "MemTotal:        8123456 kB\nMemFree:  1 kB\n";
        assert_eq!(kib_field(meminfo, "MemTotal:"), Some(8_123_456 * 1024));
        assert_eq!(kib_field(meminfo, "VmRSS:"), None);
    }

    #[test]
    fn probes_this_host() {
        let h = HostInfo::probe();
        assert!(h.cores >= 1);
        assert!(h.total_memory_bytes > 0);
        assert!(process_rss_bytes().is_some_and(|b| b > 0));
        assert!(!git_revision().is_empty());
    }
}
