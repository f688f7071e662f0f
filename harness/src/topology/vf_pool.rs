//! An SR-IOV-style pool of virtual functions, inside a [`Netns`].
//!
//! This kernel has no SR-IOV hardware and no netdevsim, so a VF is a veth pair: the **VF end**
//! (`<pf>v<i>`) is what a guest's backend binds to (the device queue dedicated to the guest);
//! the **wire end** (`<pf>w<i>`) stands for the NIC's embedded switch port and the cable. The
//! embedded switch is a bridge named after the PF (STP off, forward delay 0) whose ports are
//! the wire ends, so VF-to-VF traffic is switched as an SR-IOV eswitch switches it, and a
//! frame for no other VF ends there (counted by the wire end's receive counter). Nothing is on
//! the host bridge or in the host's namespace.
//!
//! As with `sriov_numvfs`, the number of VFs is fixed when the pool is created; changing it
//! means dropping the pool (which deletes its interfaces) and creating another. Each guest
//! device takes a VF ([`VfPool::take`]) and gives it back when the [`Vf`] guard is dropped.
//! Every interface lives in the run's namespace, so the namespace's clean-up (drop, panic,
//! signals, stale namespaces after a SIGKILL) removes them on every exit path even when the
//! pool's own `Drop` does not run.

use std::fs::File;
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};

use super::netns::{ip, Netns};
use super::tap::{bridge, check_ifname, packet_socket_with, PacketOptions};

/// How a guest's vhost worker reaches its VF (`--vf-backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VfBackend {
    /// A raw `AF_PACKET` socket bound to the VF: the socket kind vhost-net accepts.
    Packet,
    /// An `AF_XDP` socket on the VF's queue.
    AfXdp,
    /// macvtap in passthrough mode on the VF (libvirt's `<interface type='direct'>`).
    Macvtap,
}

impl VfBackend {
    /// Its name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            VfBackend::Packet => "packet",
            VfBackend::AfXdp => "af-xdp",
            VfBackend::Macvtap => "macvtap",
        }
    }
}

/// Where a run's VFs come from and how the worker reaches them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfOptions {
    /// The physical function: the pool's name.
    pub pf: String,
    /// The pool's VF count, fixed at creation (`None`: as many as the run needs).
    pub vfs: Option<u32>,
    /// The VF backend (`None`: the mode's default, the fastest measured).
    pub backend: Option<VfBackend>,
}

impl Default for VfOptions {
    fn default() -> Self {
        VfOptions {
            pf: "pf0".into(),
            vfs: None,
            backend: None,
        }
    }
}

/// A named PF with a fixed number of VFs (veth pairs) and its embedded switch (a bridge named
/// after the PF). Drop deletes every interface it created.
#[derive(Debug)]
pub struct VfPool<'ns> {
    ns: &'ns Netns,
    pf: String,
    size: usize,
    /// Slot `i` is taken by a live [`Vf`].
    taken: Mutex<Vec<bool>>,
    /// Interfaces created so far, deleted in reverse order on drop (a veth pair goes with
    /// either of its ends).
    created: Vec<String>,
}

impl<'ns> VfPool<'ns> {
    /// Creates PF `pf` with `n` VFs in `ns`: veth pairs `<pf>v<i>` (VF end, up) /
    /// `<pf>w<i>` (wire end, up, a port of bridge `<pf>`), `i` in `0..n`. Every name must fit
    /// in 15 bytes. On error, what was created is deleted.
    pub fn create(ns: &'ns Netns, pf: &str, n: usize) -> anyhow::Result<VfPool<'ns>> {
        check_ifname(pf).context("PF name")?;
        ensure!(n > 0, "VF pool {pf}: a pool needs at least one VF");
        if n > 1 {
            check_ifname(&wire_name(pf, n - 1))
                .with_context(|| format!("PF name {pf:?} leaves no room for {n} VF names"))?;
        }
        let mut pool = VfPool {
            ns,
            pf: pf.to_string(),
            size: n,
            taken: Mutex::new(vec![false; n]),
            created: Vec::with_capacity(n + 1),
        };
        pool.build()
            .with_context(|| format!("creating VF pool {pf} ({n} VFs) in {}", ns.name()))?;
        Ok(pool)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let (pf, n) = (self.pf.clone(), self.size);
        bridge(self.ns, &pf, &[])?;
        self.created.push(pf.clone());
        for i in 0..n {
            let (vf, wire) = (vf_name(&pf, i), wire_name(&pf, i));
            self.ns.run_in(|| {
                ip(&[
                    "link", "add", "name", &vf, "up", "type", "veth", "peer", "name", &wire,
                ])
            })??;
            self.created.push(vf);
            self.ns
                .run_in(|| ip(&["link", "set", "dev", &wire, "master", &pf, "up"]))??;
        }
        Ok(())
    }

    /// The PF's name (also the embedded switch's).
    pub fn pf(&self) -> &str {
        &self.pf
    }

    /// How many VFs the pool has (fixed at creation).
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many VFs are taken now.
    pub fn in_use(&self) -> usize {
        self.slots().iter().filter(|&&t| t).count()
    }

    /// The namespace the pool lives in.
    pub fn ns(&self) -> &'ns Netns {
        self.ns
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        // Only flags are flipped under the lock: a panic cannot leave it inconsistent.
        self.taken.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the lowest free VF; it is given back when the guard is dropped. An error naming
    /// the pool and its size when every VF is taken.
    pub fn take(&self) -> anyhow::Result<Vf<'_>> {
        let mut slots = self.slots();
        let Some(index) = slots.iter().position(|&t| !t) else {
            bail!(
                "VF pool {} is exhausted: all {} of its VFs are taken (the VF count is fixed \
                 when the pool is created)",
                self.pf,
                self.size
            );
        };
        slots[index] = true;
        Ok(Vf {
            pool: self,
            index,
            name: vf_name(&self.pf, index),
            wire: wire_name(&self.pf, index),
        })
    }
}

impl Drop for VfPool<'_> {
    fn drop(&mut self) {
        let ns = self.ns;
        for name in self.created.iter().rev() {
            // The namespace stays enterable through its fd even after a panic hook or a
            // signal deleted its name, so this works then too; if it fails, the namespace's
            // own deletion takes the interface with it.
            if let Err(e) = ns
                .run_in(|| ip(&["link", "del", "dev", name]))
                .and_then(|r| r)
            {
                eprintln!(
                    "warning: VF pool {}: could not delete {name}: {e:#}",
                    self.pf
                );
            }
        }
    }
}

/// One VF of a [`VfPool`], taken until dropped.
#[derive(Debug)]
pub struct Vf<'p> {
    pool: &'p VfPool<'p>,
    index: usize,
    name: String,
    wire: String,
}

impl Vf<'_> {
    /// Its index in the pool.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The VF end's name (`<pf>v<i>`): what the guest's backend binds to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The wire end's name (`<pf>w<i>`): the embedded switch's port for this VF. Frames the
    /// VF sends arrive here; frames sent here come out of the VF.
    pub fn wire(&self) -> &str {
        &self.wire
    }

    /// The socket a raw-socket vhost backend takes (`VHOST_NET_SET_BACKEND` with a packet
    /// socket): `AF_PACKET`/`SOCK_RAW` bound to the VF end for every protocol, non-blocking,
    /// no `PACKET_VNET_HDR` (bare Ethernet frames), and `PACKET_IGNORE_OUTGOING`, so it does
    /// not read back the frames it sends.
    pub fn backend_socket(&self) -> anyhow::Result<File> {
        vf_backend_socket(self.pool.ns, &self.name)
    }
}

/// [`Vf::backend_socket`] for the VF end named `vf` in `ns`.
pub fn vf_backend_socket(ns: &Netns, vf: &str) -> anyhow::Result<File> {
    packet_socket_with(
        ns,
        vf,
        PacketOptions {
            vnet_hdr: false,
            nonblocking: true,
            ignore_outgoing: true,
        },
    )
}

impl Drop for Vf<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.pool.slots().get_mut(self.index) {
            *t = false;
        }
    }
}

fn vf_name(pf: &str, i: usize) -> String {
    format!("{pf}v{i}")
}

fn wire_name(pf: &str, i: usize) -> String {
    format!("{pf}w{i}")
}

/// The veth interfaces in `ns` (`ip -j link show type veth`), by name.
pub fn veths(ns: &Netns) -> anyhow::Result<Vec<String>> {
    let out = ns.ip(&["-j", "link", "show", "type", "veth"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j output")?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.get("ifname")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_or_are_refused() {
        assert_eq!(vf_name("pf0", 3), "pf0v3");
        assert_eq!(wire_name("pf0", 12), "pf0w12");
        // Checked before anything is created: no namespace needed to refuse them.
        assert!(check_ifname(&wire_name("fourteen-chars", 0)).is_err());
        assert!(check_ifname(&wire_name("thirteen-char", 9)).is_ok());
        assert!(check_ifname(&wire_name("thirteen-char", 10)).is_err());
    }
}
