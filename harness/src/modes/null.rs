//! `null`: the engine alone. The vhost worker moves frames between the rings and a backend that
//! does no kernel I/O (it copies TX frames out as tun does, generates RX frames, or reflects
//! them for `rr`): the floor the engine itself costs.

use anyhow::Result;
use engine::backend::Backend;

use super::Mode;
use crate::ceilings::Ceiling;
use crate::pair::{self, PairConfig, RunOutcome};
use crate::results::Workload;
use crate::topology::Privileges;

/// See the module documentation.
#[derive(Debug)]
pub struct Null;

impl Mode for Null {
    fn name(&self) -> &'static str {
        "null"
    }

    fn unavailable(&self, _host: &Privileges) -> Option<String> {
        None
    }

    /// Throughput against a ring with one copy of the frame on each side; round trips against
    /// two busy-polling threads.
    fn ceiling(&self, workload: Workload, size: u32) -> Option<Ceiling> {
        match workload {
            Workload::Rr => Some(Ceiling::BusyPollWakeRtt),
            Workload::Tx | Workload::Rx => Ceiling::spsc_copy(size),
        }
    }

    /// Throughput without polling against the copy ring whose two sides sleep on eventfds
    /// with armed-flag suppression (`sleep_ring_<size>_q<queue>`): a busy ring would charge
    /// the engine for sleeping at all.
    fn sleeping_ceiling(&self, workload: Workload, size: u32, queue: u16) -> Option<Ceiling> {
        match workload {
            Workload::Tx | Workload::Rx => Ceiling::sleep_ring(size, queue),
            Workload::Rr => None,
        }
    }

    fn vs_emulated(&self) -> bool {
        false
    }

    fn run(&self, cfg: &PairConfig) -> Result<RunOutcome> {
        pair::run_null(cfg)
    }

    fn lockstep_backend(&self, cfg: &PairConfig) -> Result<Box<dyn Backend>, String> {
        Ok(Box::new(pair::null_backend(cfg)))
    }
}
