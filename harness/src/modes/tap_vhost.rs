//! `tap-vhost`: the vhost worker on a tap (`-net tap,vhost=on`): [`engine::worker`] with the
//! tap backend (io_uring batches from guest memory, `readv` into guest buffers), on the shared
//! tap topology.

use std::fs::File;

use anyhow::{Context, Result};
use engine::backend::tap::tap_backend;
use engine::backend::Backend;
use engine::device::{Device, DeviceSpec};
use engine::worker::{self, WorkerConfig};

use super::tap::{self, TapDevice};
use super::Mode;
use crate::ceilings::{Ceiling, RxPort};
use crate::pair::{PairConfig, RunOutcome};
use crate::results::Workload;
use crate::topology::Privileges;

/// See the module documentation.
#[derive(Debug)]
pub struct TapVhost;

impl TapDevice for TapVhost {
    fn name(&self) -> &'static str {
        "tap-vhost"
    }

    fn start(&self, tap: File, spec: DeviceSpec, wcfg: WorkerConfig) -> Result<Device> {
        let be =
            tap_backend(tap, spec.mem.clone(), wcfg.batch, spec.features).context("tap backend")?;
        Ok(worker::spawn(spec, vec![Box::new(be)], wcfg)?)
    }
}

impl Mode for TapVhost {
    fn name(&self) -> &'static str {
        TapDevice::name(self)
    }

    /// Taps and io_uring.
    fn unavailable(&self, host: &Privileges) -> Option<String> {
        (!host.can_run).then(|| host.summary())
    }

    /// TX goes out in io_uring batches on a fixed file: its ceiling is the tap written that
    /// way. RX reads one frame per `readv`: its ceiling is the tap read one frame per
    /// `read(2)`, fed by the rx workload's injector through the same bridge (`tap_read_N`).
    fn ceiling(&self, workload: Workload, size: u32) -> Option<Ceiling> {
        match workload {
            Workload::Rr => Some(Ceiling::BusyPollWakeRtt),
            Workload::Tx => Ceiling::tap_best(size),
            Workload::Rx => Ceiling::rx(RxPort::Tap, size),
        }
    }

    fn oversubscribed(&self, workload: Workload, polling: bool, cores: usize) -> Option<String> {
        tap::oversubscribed(workload, polling, cores)
    }

    fn lockstep_backend(&self, _cfg: &PairConfig) -> Result<Box<dyn Backend>, String> {
        Err(
            "its backend is a tap: every frame goes through the kernel (io_uring writes, reads)"
                .into(),
        )
    }

    fn run(&self, cfg: &PairConfig) -> Result<RunOutcome> {
        tap::run_tap(self, cfg)
    }
}
