//! `emulated`: the VMM's own userspace virtio-net on a tap (QEMU `-net tap` with ioeventfd and
//! irqfd): [`engine::emulated`]'s event loop, a syscall per frame, on the shared tap topology.

use std::fs::File;

use anyhow::Result;
use engine::backend::Backend;
use engine::device::{Device, DeviceSpec};
use engine::emulated::{self, EmulatedConfig};
use engine::worker::WorkerConfig;

use super::tap::{self, TapDevice};
use super::Mode;
use crate::ceilings::{Ceiling, RxPort};
use crate::pair::{PairConfig, RunOutcome};
use crate::results::Workload;
use crate::topology::Privileges;

/// See the module documentation.
#[derive(Debug)]
pub struct Emulated;

impl TapDevice for Emulated {
    fn name(&self) -> &'static str {
        "emulated"
    }

    fn start(&self, tap: File, spec: DeviceSpec, wcfg: WorkerConfig) -> Result<Device> {
        let ecfg = EmulatedConfig {
            name: wcfg.name,
            core: wcfg.core,
            ..EmulatedConfig::default()
        };
        Ok(emulated::spawn(spec, vec![tap], ecfg)?)
    }
}

impl Mode for Emulated {
    fn name(&self) -> &'static str {
        TapDevice::name(self)
    }

    /// Taps are enough: the event loop needs no io_uring.
    fn unavailable(&self, host: &Privileges) -> Option<String> {
        (!host.taps).then(|| host.summary())
    }

    /// A `write(2)` (TX) or `read(2)` (RX) per frame on the tap is what the loop does: its
    /// ceilings are the tap written one frame per syscall, and read one frame per syscall
    /// with the rx workload's injector feeding it through the same bridge (`tap_read_N`).
    fn ceiling(&self, workload: Workload, size: u32) -> Option<Ceiling> {
        match workload {
            Workload::Rr => Some(Ceiling::BusyPollWakeRtt),
            Workload::Tx => Ceiling::tap_write(size),
            Workload::Rx => Ceiling::rx(RxPort::Tap, size),
        }
    }

    fn oversubscribed(&self, workload: Workload, polling: bool, cores: usize) -> Option<String> {
        tap::oversubscribed(workload, polling, cores)
    }

    fn vs_emulated(&self) -> bool {
        false
    }

    /// QEMU's loop moves one frame per `write`/`read` and publishes each at once.
    fn batches(&self) -> bool {
        false
    }

    fn lockstep_backend(&self, _cfg: &PairConfig) -> Result<Box<dyn Backend>, String> {
        Err("its event loop reads and writes a tap: every frame goes through the kernel".into())
    }

    fn run(&self, cfg: &PairConfig) -> Result<RunOutcome> {
        tap::run_tap(self, cfg)
    }
}
