//! `direct-vf`: the vhost worker backed directly by an SR-IOV virtual function, taken from a
//! pool whose VF count is fixed at startup. Not built yet: it needs the VF-pool topology and a
//! VF backend, so every host reports it unavailable and `all` lists it as skipped.

use anyhow::{bail, Result};

use super::Mode;
use crate::ceilings::Ceiling;
use crate::pair::{PairConfig, RunOutcome};
use crate::results::Workload;
use crate::topology::Privileges;

/// See the module documentation.
#[derive(Debug)]
pub struct DirectVf;

impl Mode for DirectVf {
    fn name(&self) -> &'static str {
        "direct-vf"
    }

    fn unavailable(&self, _host: &Privileges) -> Option<String> {
        Some("not built yet: it needs the VF-pool topology".into())
    }

    fn ceiling(&self, _workload: Workload, _size: u32) -> Option<Ceiling> {
        None
    }

    fn run(&self, _cfg: &PairConfig) -> Result<RunOutcome> {
        bail!("direct-vf is not built yet")
    }
}
