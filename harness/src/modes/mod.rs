//! The data paths `run` compares, one file each, and the selector that picks them.
//!
//! | mode | models | device | backend / topology |
//! |---|---|---|---|
//! | [`null`] | the engine alone | vhost worker | null backend (no kernel I/O) |
//! | [`emulated`] | QEMU `-net tap` | QEMU-style event loop (epoll, a syscall per frame) | tap in a private namespace ([`tap`]) |
//! | [`tap_vhost`] | `-net tap,vhost=on` | vhost worker (io_uring, batches, busy poll) | the same tap topology |
//! | [`direct_vf`] | vhost on an SR-IOV VF (raw packet socket backend) | vhost worker | a VF from a pool ([`crate::topology::VfPool`]) in a private namespace |
//! | [`vhost_user`] | a VMM's `vhost-user` netdev | any vhost-user backend (default: the engine, in-process) | guest-sim as the frontend, on a Unix socket |
//!
//! A mode is a [`Mode`]: its name, what it needs from the host, the ceiling each of its
//! combinations is compared with, and how one run of it is built. Adding a mode is one file
//! here plus one line in [`MODES`].

pub mod direct_vf;
pub mod emulated;
pub(crate) mod far;
pub mod null;
pub mod tap;
pub mod tap_vhost;
pub mod vhost_user;

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use engine::backend::Backend;
use serde::{Serialize, Serializer};

use crate::ceilings::Ceiling;
use crate::pair::{PairConfig, RunOutcome};
use crate::results::Workload;
use crate::topology::{Privileges, VfBackend};

/// One data path.
pub trait Mode: Sync {
    /// Its name on the command line and in results (`tap-vhost`).
    fn name(&self) -> &'static str;

    /// Why this host cannot run it; `None` when it can.
    fn unavailable(&self, host: &Privileges) -> Option<String>;

    /// The ceiling a combination of this mode is compared with (the best the same kernel I/O
    /// reaches with no device around it), if there is one for that frame size.
    fn ceiling(&self, workload: Workload, size: u32) -> Option<Ceiling>;

    /// Why one combination would not measure this data path on this machine, if it would not
    /// (`polling`: the guest and the device spin; `cores`: cores the run may use).
    fn oversubscribed(&self, _workload: Workload, _polling: bool, _cores: usize) -> Option<String> {
        None
    }

    /// [`Mode::ceiling`] for a combination run on VF backend `vf` (see
    /// [`Mode::takes_vf_backend`]; `None`: the mode's default backend).
    fn ceiling_on(&self, workload: Workload, size: u32, _vf: Option<VfBackend>) -> Option<Ceiling> {
        self.ceiling(workload, size)
    }

    /// Whether it runs on a VF backend the run may choose or sweep (`--vf-backend`).
    fn takes_vf_backend(&self) -> bool {
        false
    }

    /// The VF backend it runs on where none is asked for, on this host (see
    /// [`Mode::takes_vf_backend`]).
    fn default_vf_backend(&self, _host: &Privileges) -> Option<VfBackend> {
        None
    }

    /// Whether its rows are shown against `emulated`'s (the `x emulated` column): the vhost
    /// modes are what the comparison is about.
    fn vs_emulated(&self) -> bool {
        true
    }

    /// Whether its data path takes the run's `--batch` (chains per backend submission). One
    /// that does not (the emulated loop: a syscall and a used-ring publish per frame) shows
    /// the batch it really has, 1, in the table.
    fn batches(&self) -> bool {
        true
    }

    /// The ceiling of a combination in which neither side polls (both sleep on eventfds when
    /// idle), where it differs from [`Mode::ceiling_on`]'s: a yardstick whose sides sleep the
    /// same way. `None`: the same ceiling as polling.
    fn sleeping_ceiling(&self, _workload: Workload, _size: u32, _queue: u16) -> Option<Ceiling> {
        None
    }

    /// Whether `--modes all` (the default) runs it; a mode that measures something other than
    /// the host's own data paths (`vhost-user`, whose backend may be anyone's) runs only when
    /// named.
    fn in_all(&self) -> bool {
        true
    }

    /// One timed run of one combination.
    fn run(&self, cfg: &PairConfig) -> Result<RunOutcome>;

    /// The backend a lockstep run ([`crate::lockstep`]: the guest and the device stepped in
    /// turn on one thread, with no clock) serves one combination's device on; or why the mode
    /// cannot be stepped (its frames go through the kernel, which works on its own time).
    fn lockstep_backend(&self, cfg: &PairConfig) -> Result<Box<dyn Backend>, String>;
}

impl fmt::Debug for dyn Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for dyn Mode {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

/// Every mode, in the order the table shows them.
pub static MODES: &[&dyn Mode] = &[
    &null::Null,
    &emulated::Emulated,
    &tap_vhost::TapVhost,
    &direct_vf::DirectVf,
    &vhost_user::VhostUser,
];

/// The mode called `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Mode> {
    MODES.iter().copied().find(|m| m.name() == name)
}

/// What `--modes` names: every mode, the automatic choice, or one data path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selector {
    /// Every mode this host supports; the others are listed as skipped.
    All,
    /// `tap-vhost` when the host allows it, else `emulated`, saying why (libvirt's choice:
    /// vhost when available).
    Auto,
    /// One data path; an error if this host cannot run it.
    One(&'static dyn Mode),
}

impl Selector {
    /// Its name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Selector::All => "all",
            Selector::Auto => "auto",
            Selector::One(m) => m.name(),
        }
    }
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Selector::All),
            "auto" => Ok(Selector::Auto),
            _ => by_name(s).map(Selector::One).ok_or_else(|| {
                let names: Vec<&str> = MODES.iter().map(|m| m.name()).collect();
                format!(
                    "unknown mode {s:?} (all, auto, or one of: {})",
                    names.join(", ")
                )
            }),
        }
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The modes a run measures, what it skips and why, and what `auto` decided.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Modes to run, each once, in the order asked.
    pub run: Vec<&'static dyn Mode>,
    /// `"<mode>: <why>"` for each mode `all` left out.
    pub skipped: Vec<String>,
    /// What `auto` chose, and why.
    pub notes: Vec<String>,
}

/// Resolves selectors against what this host can run. `all` runs every mode this host can and
/// lists the rest as skipped; `auto` picks `tap-vhost` when the host allows it, else
/// `emulated`, saying why; a mode asked for by name that cannot run is an error naming what is
/// missing.
pub fn resolve(asked: &[Selector], host: &Privileges) -> Result<Resolved> {
    let mut r = Resolved::default();
    for sel in asked {
        match sel {
            Selector::All => {
                for &m in MODES.iter().filter(|m| m.in_all()) {
                    match m.unavailable(host) {
                        None => r.run.push(m),
                        Some(why) => r.skipped.push(format!("{}: {why}", m.name())),
                    }
                }
            }
            Selector::Auto => {
                let (vhost, emul): (&dyn Mode, &dyn Mode) =
                    (&tap_vhost::TapVhost, &emulated::Emulated);
                match (vhost.unavailable(host), emul.unavailable(host)) {
                    (None, _) => {
                        r.notes.push(
                            "auto: tap-vhost (root, /dev/net/tun and io_uring are available)"
                                .into(),
                        );
                        r.run.push(&tap_vhost::TapVhost);
                    }
                    (Some(why), None) => {
                        r.notes.push(format!(
                            "auto: emulated, because tap-vhost cannot run: {why}"
                        ));
                        r.run.push(&emulated::Emulated);
                    }
                    (Some(why), Some(_)) => {
                        bail!("auto: neither tap-vhost nor emulated can run here: {why}")
                    }
                }
            }
            Selector::One(m) => match m.unavailable(host) {
                None => r.run.push(*m),
                Some(why) => bail!("mode {} cannot run here: {why}", m.name()),
            },
        }
    }
    let mut seen: Vec<&'static dyn Mode> = Vec::new();
    r.run.retain(|m| {
        let new = !seen.contains(m);
        seen.push(*m);
        new
    });
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(can_run: bool, taps: bool) -> Privileges {
        Privileges {
            can_run,
            reasons: if can_run {
                vec![]
            } else {
                vec!["no root".into()]
            },
            taps,
            io_uring: can_run,
            vfs: can_run,
            af_xdp: can_run,
        }
    }

    #[test]
    fn names_parse_back_and_are_unique() {
        assert!("x".parse::<Selector>().is_err());
        for m in MODES {
            match m.name().parse::<Selector>() {
                Ok(Selector::One(p)) => assert_eq!(p.name(), m.name()),
                other => panic!("{}: {other:?}", m.name()),
            }
            assert_eq!(MODES.iter().filter(|n| n.name() == m.name()).count(), 1);
        }
        assert_eq!("all".parse::<Selector>(), Ok(Selector::All));
        let err = "tap".parse::<Selector>().expect_err("unknown");
        assert!(err.contains("tap-vhost") && err.contains("auto"), "{err}");
    }

    #[test]
    fn all_skips_what_the_host_cannot_run_and_auto_falls_back() {
        let names = |r: &Resolved| r.run.iter().map(|m| m.name()).collect::<Vec<_>>();
        let r = resolve(&[Selector::All], &host(false, false)).expect("all");
        assert_eq!(names(&r), ["null"]);
        assert!(
            r.skipped
                .iter()
                .any(|s| s.starts_with("tap-vhost: no root")),
            "{r:?}"
        );
        assert!(
            r.skipped.iter().any(|s| s.starts_with("direct-vf:")),
            "{r:?}"
        );

        let r = resolve(&[Selector::Auto], &host(true, true)).expect("auto");
        assert_eq!(names(&r), ["tap-vhost"]);
        let r = resolve(&[Selector::Auto], &host(false, true)).expect("auto");
        assert_eq!(names(&r), ["emulated"]);
        assert!(r.notes[0].contains("no root"), "{:?}", r.notes);
        assert!(resolve(&[Selector::Auto], &host(false, false)).is_err());

        let tap = Selector::One(&tap_vhost::TapVhost);
        let e = resolve(&[tap], &host(false, false)).expect_err("named, cannot run");
        assert!(format!("{e}").contains("no root"), "{e}");
        // Asked twice, run once.
        let null = Selector::One(&null::Null);
        let r = resolve(&[null, Selector::All, null], &host(true, true)).expect("all");
        assert_eq!(names(&r), ["null", "emulated", "tap-vhost", "direct-vf"]);
    }
}
