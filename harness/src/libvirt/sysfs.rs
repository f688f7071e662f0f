//! What a name in `<source network='X'>` is on this host, read from sysfs: a bridge, a
//! physical function with VFs, a plain netdev, or nothing. The root is injectable
//! ([`SysfsRoot`]) so tests can lay out a fake `/sys/class/net` in a temporary directory.

use std::fs;
use std::path::{Path, PathBuf};

/// The directory that stands for `/sys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsRoot(PathBuf);

impl Default for SysfsRoot {
    /// This host's `/sys`.
    fn default() -> Self {
        SysfsRoot(PathBuf::from("/sys"))
    }
}

/// What a network device name is on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetDev {
    /// A Linux bridge (`class/net/X/bridge` exists).
    Bridge,
    /// A physical function with this many VFs enabled (`device/sriov_numvfs` > 0).
    Pf {
        /// `sriov_numvfs`.
        vfs: u32,
    },
    /// Any other network device.
    Plain,
    /// No device by that name.
    Missing,
}

impl SysfsRoot {
    /// `path` stands for `/sys`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SysfsRoot(path.into())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// What `name` is, and one line per file looked at, saying what it showed. `name` must
    /// be a valid interface name (checked by the caller), so it cannot leave `class/net`.
    pub fn netdev(&self, name: &str) -> (NetDev, Vec<String>) {
        let dev = self.0.join("class/net").join(name);
        let mut probed = Vec::new();
        if !dev.exists() {
            probed.push(format!("{}: no such device", dev.display()));
            return (NetDev::Missing, probed);
        }
        let bridge = dev.join("bridge");
        if bridge.is_dir() {
            probed.push(format!(
                "{}: exists, so {name} is a bridge",
                bridge.display()
            ));
            return (NetDev::Bridge, probed);
        }
        probed.push(format!("{}: absent, so not a bridge", bridge.display()));
        let numvfs = dev.join("device/sriov_numvfs");
        match fs::read_to_string(&numvfs) {
            Err(_) => {
                probed.push(format!(
                    "{}: absent, so not an SR-IOV physical function",
                    numvfs.display()
                ));
                (NetDev::Plain, probed)
            }
            Ok(text) => match text.trim().parse::<u32>() {
                Ok(0) => {
                    probed.push(format!(
                        "{}: 0, so a physical function with no VFs enabled",
                        numvfs.display()
                    ));
                    (NetDev::Plain, probed)
                }
                Ok(vfs) => {
                    probed.push(format!(
                        "{}: {vfs}, so a physical function with {vfs} VFs",
                        numvfs.display()
                    ));
                    (NetDev::Pf { vfs }, probed)
                }
                Err(e) => {
                    probed.push(format!(
                        "{}: {:?} is not a count ({e}), so taken as not a physical function",
                        numvfs.display(),
                        text.trim()
                    ));
                    (NetDev::Plain, probed)
                }
            },
        }
    }

    /// The network device of the physical function behind PCI function `addr`
    /// (`dddd:bb:ss.f`), if `addr` is a VF whose PF has one, and what was looked at.
    pub fn pf_of_vf(&self, addr: &str) -> (Option<String>, String) {
        let dir = self.0.join("bus/pci/devices").join(addr).join("physfn/net");
        let name = fs::read_dir(&dir).ok().and_then(|entries| {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            names.sort();
            names.into_iter().next()
        });
        let what = match &name {
            Some(n) => format!(
                "{}: {n}, so the VF's physical function is {n}",
                dir.display()
            ),
            None => format!("{}: absent, so no VF by that address here", dir.display()),
        };
        (name, what)
    }
}

/// Fake sysfs trees for tests.
#[cfg(test)]
pub mod fake {
    use std::fs;

    use super::SysfsRoot;

    /// A temporary `/sys` with a bridge `br0`, a PF `ens1f0` with 4 VFs, a PF `ens2f0` with
    /// none enabled, a plain `eth0`, and VF `0000:02:07.0` of `ens1f0`.
    pub fn host() -> (tempfile::TempDir, SysfsRoot) {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = dir.path().join("class/net");
        let mk = |p: &str| fs::create_dir_all(net.join(p)).expect("mkdir");
        mk("br0/bridge");
        mk("ens1f0/device");
        mk("ens2f0/device");
        mk("eth0");
        fs::write(net.join("ens1f0/device/sriov_numvfs"), "4\n").expect("write");
        fs::write(net.join("ens2f0/device/sriov_numvfs"), "0\n").expect("write");
        fs::create_dir_all(
            dir.path()
                .join("bus/pci/devices/0000:02:07.0/physfn/net/ens1f0"),
        )
        .expect("mkdir");
        let root = SysfsRoot::new(dir.path());
        (dir, root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_each_kind() {
        let (_dir, root) = fake::host();
        assert_eq!(root.netdev("br0").0, NetDev::Bridge);
        assert_eq!(root.netdev("ens1f0").0, NetDev::Pf { vfs: 4 });
        let (kind, probed) = root.netdev("ens2f0");
        assert_eq!(kind, NetDev::Plain);
        assert!(probed[1].ends_with("0, so a physical function with no VFs enabled"));
        assert_eq!(root.netdev("eth0").0, NetDev::Plain);
        let (kind, probed) = root.netdev("nope0");
        assert_eq!(kind, NetDev::Missing);
        assert!(
            probed[0].ends_with("class/net/nope0: no such device"),
            "{probed:?}"
        );
        assert_eq!(root.pf_of_vf("0000:02:07.0").0.as_deref(), Some("ens1f0"));
        assert_eq!(root.pf_of_vf("0000:03:00.0").0, None);
    }
}
