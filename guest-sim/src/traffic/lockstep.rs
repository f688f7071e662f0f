//! One vCPU's driver stepped by a caller, for a schedule that runs the guest and the device
//! in turn on one thread (the harness's lockstep runs, whose counts must not depend on
//! timing). Each [`Lockstep::step`] is one pass of the loop [`super::run`] goes round — the
//! same `tx`, `rx` and `rr` steps, the same driver code, the same kicks — with what needs time
//! taken out:
//!
//! - no clock: `rr`'s stamps count steps, there is no run length and no rate (a
//!   [`TrafficConfig`] with `rate_pps` or an exit cost is refused);
//! - no blocking: where the driver would sleep on a call eventfd (interrupts armed, nothing to
//!   reap), the step returns with the guest [asleep](Lockstep::asleep), and the schedule wakes
//!   it with [`Lockstep::interrupted`] once the device has written that eventfd;
//! - `rr` sends its request in one step and looks for the response in the next ones, so the
//!   device can answer in between.
//!
//! The kicks a step wrote are handed to the schedule ([`Lockstep::take_kicks`]), which passes
//! them to the device; every kick and every interrupt taken is one eventfd write or read, as
//! in a threaded run.

use std::fs::File;
use std::io::{self, Read};

use vring::Direction;

use super::{modeled_exit, Guest, GuestPair, TrafficConfig, TrafficReport, Vcpu, Workload};
use crate::driver::DriverError;

/// Why a guest could not be stepped, or a step failed.
#[derive(Debug, thiserror::Error)]
pub enum LockstepError {
    /// The configuration needs a clock, which a schedule does not have.
    #[error("a lockstep guest has no clock: {0}")]
    Timed(&'static str),
    /// The driver failed (a broken device, guest memory).
    #[error("driver")]
    Driver(#[from] DriverError),
    /// Reading a call eventfd failed.
    #[error("call eventfd")]
    Eventfd(#[from] io::Error),
    /// The schedule woke a guest that was not asleep.
    #[error("the guest is not asleep")]
    NotAsleep,
}

/// Kicks written since they were last taken, per queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kicks {
    /// On the TX queue.
    pub tx: u32,
    /// On the RX queue.
    pub rx: u32,
}

/// The guest's side of a schedule: a step counter for a clock, the kicks it wrote, whether it
/// sleeps.
#[derive(Debug, Default)]
struct Turns {
    steps: u64,
    kicks: Kicks,
    /// Asleep on the TX (`true`) or RX queue's interrupt.
    asleep: Option<bool>,
    /// Call eventfds read (interrupts taken).
    call_reads: u64,
}

impl Vcpu for Turns {
    fn now_ns(&mut self) -> u64 {
        self.steps
    }

    fn kicked(&mut self, tx: bool) {
        match tx {
            true => self.kicks.tx += 1,
            false => self.kicks.rx += 1,
        }
    }

    fn sleep(&mut self, _call: &File, tx: bool, _exit_cost_ns: u64) -> bool {
        self.asleep = Some(tx);
        false
    }
}

/// `rr`: the request is out, the response not yet in; where it will land.
type Awaiting = (Option<usize>, usize);

/// One vCPU's driver, a step at a time (see the module documentation).
pub struct Lockstep<'a> {
    g: Guest<'a, Turns>,
    rr_awaiting: Option<Awaiting>,
}

impl std::fmt::Debug for Lockstep<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lockstep")
            .field("workload", &self.g.cfg.workload)
            .field("turns", &self.g.vcpu)
            .finish_non_exhaustive()
    }
}

impl<'a> Lockstep<'a> {
    /// The driver of `nic` running `cfg`'s workload, started as [`super::run`] starts it
    /// (buffers prepared, RX buffers posted and kicked).
    pub fn new(nic: &'a GuestPair, cfg: &'a TrafficConfig) -> Result<Self, LockstepError> {
        if cfg.rate_pps.is_some() {
            return Err(LockstepError::Timed("an offered rate needs one"));
        }
        if cfg.exit_cost_ns > 0 {
            return Err(LockstepError::Timed("a modeled exit cost is spent by one"));
        }
        let mut g = Guest::new(nic, cfg, Turns::default())?;
        g.start()?;
        Ok(Lockstep {
            g,
            rr_awaiting: None,
        })
    }

    /// One pass of the workload's loop; nothing while the guest is asleep.
    pub fn step(&mut self) -> Result<(), LockstepError> {
        if self.g.vcpu.asleep.is_some() {
            return Ok(());
        }
        self.g.vcpu.steps += 1;
        let g = &mut self.g;
        match g.cfg.workload {
            Workload::Tx => g.step_tx()?,
            Workload::Rx => g.step_rx()?,
            Workload::Echo => g.step_echo()?,
            Workload::Rr => match self.rr_awaiting {
                None => {
                    if g.rr_request()?.is_some() {
                        self.rr_awaiting = Some(g.rr_response_lines());
                    }
                }
                Some(lines) => {
                    if g.rr_response(lines)? {
                        self.rr_awaiting = None;
                    } else {
                        g.wait_used(false)?;
                    }
                }
            },
        }
        Ok(())
    }

    /// The queue whose interrupt the guest sleeps on, if it sleeps.
    pub fn asleep(&self) -> Option<Direction> {
        self.g.vcpu.asleep.map(|tx| match tx {
            true => Direction::Tx,
            false => Direction::Rx,
        })
    }

    /// The device wrote the call eventfd of the queue the guest sleeps on: the guest takes
    /// the interrupt (reads the eventfd, as a sleeping vCPU does when it wakes) and turns
    /// interrupts off again. Call it only after such a write: the read waits for one. Returns
    /// the count read (every call written since the last read).
    pub fn interrupted(&mut self) -> Result<u64, LockstepError> {
        let tx = self.g.vcpu.asleep.ok_or(LockstepError::NotAsleep)?;
        let (q, call) = match tx {
            true => (&mut self.g.tx, &self.g.nic.pair.tx.call),
            false => (&mut self.g.rx, &self.g.nic.pair.rx.call),
        };
        let mut count = [0u8; 8];
        (&*call).read_exact(&mut count)?;
        self.g.vcpu.call_reads += 1;
        self.g.vcpu.asleep = None;
        modeled_exit(self.g.cfg.exit_cost_ns);
        q.disable_interrupts(&self.g.nic.mem)?;
        Ok(u64::from_ne_bytes(count))
    }

    /// The kicks written since the last call, per queue.
    pub fn take_kicks(&mut self) -> Kicks {
        std::mem::take(&mut self.g.vcpu.kicks)
    }

    /// Call eventfds read so far ([`Lockstep::interrupted`]): with the kick writes
    /// ([`TrafficReport::kicks`]), every system call the stepped guest makes.
    pub fn call_reads(&self) -> u64 {
        self.g.vcpu.call_reads
    }

    /// TX buffers posted and not yet returned by the device.
    pub fn tx_in_flight(&self) -> u64 {
        self.g.tx.in_flight() as u64
    }

    /// What the guest has seen so far.
    pub fn report(&self) -> &TrafficReport {
        &self.g.r
    }

    /// Stops: TX buffers still out are counted as unreturned. (The device must be stopped
    /// first for that count to be final.)
    pub fn finish(mut self) -> TrafficReport {
        self.g.r.tx_unreturned = self.g.tx.in_flight() as u64;
        self.g.r
    }
}
