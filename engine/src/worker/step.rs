//! The worker's rounds without its thread, its io_uring or its clock: a [`Stepper`] serves a
//! device's pairs one round at a time on the caller's thread, for a schedule that steps the
//! guest and the device in turn (the harness's lockstep runs, whose counts must not depend on
//! timing). Each round is the worker's own — the same handlers, the same round's end, the same
//! re-arming before a sleep and the same busy-poll checks ([`super::Slot`]); what differs is
//! only how it waits:
//!
//! - a kick is handed in by the caller ([`Stepper::kicked`]), which reads the kick eventfd
//!   where the worker has io_uring read it;
//! - where the worker would sleep in `io_uring_enter`, a step returns [`Stepped::Asleep`], and
//!   the next step does nothing until a kick makes a handler due;
//! - where the worker would spin through a busy-poll window, each step is one spin
//!   ([`Stepped::Polling`]), and a window never runs out: no time passes in a schedule.
//!
//! No io_uring is made, so a stepped device never enters one; a backend that needs the kernel
//! to say when it has a frame (one with an RX fd: a tap, a socket) cannot be stepped.

use std::fs::File;
use std::io;
use std::sync::Arc;

use vring::{Direction, GuestMemory};

use super::{pairs, stopped, Pairs, Slot, WorkerConfig};
use crate::backend::Backend;
use crate::device::{DeviceError, DeviceReport, DeviceSpec};
use crate::metrics::{add, DeviceMetrics};
use crate::sys;

/// How a step ended: what the worker would do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stepped {
    /// A handler has work left: the worker would go round again at once.
    Busy,
    /// Busy polling: the rings had nothing new on this spin.
    Polling,
    /// Kicks are armed and nothing is due: the worker would sleep until a kick.
    Asleep,
    /// A backend failed: the worker would have stopped ([`Stepper::report`] says why).
    Stopped,
}

/// Where the stepped worker stands between steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between rounds.
    Running,
    /// In a busy-poll window.
    Polling,
    /// Asleep, kicks armed.
    Asleep,
}

/// A device's pairs served a round per [`Stepper::step`] (see the module documentation).
pub struct Stepper {
    slots: Vec<Slot>,
    /// Each pair's kick eventfds: TX, RX.
    kicks: Vec<[File; 2]>,
    metrics: DeviceMetrics,
    report: DeviceReport,
    busy_poll: bool,
    state: State,
    /// Kick eventfds read so far.
    kick_reads: u64,
    /// Last, so it is dropped after the backends.
    mem: Arc<GuestMemory>,
}

impl std::fmt::Debug for Stepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stepper")
            .field("pairs", &self.slots.len())
            .field("state", &self.state)
            .field("kick_reads", &self.kick_reads)
            .finish_non_exhaustive()
    }
}

impl Stepper {
    /// The device for `spec`, pair `n` on `backends[n]`, served as [`crate::worker::spawn`]
    /// would serve it with `cfg` (its batch, weights and busy polling: any window > 0 is one
    /// that never runs out; its name and core are unused).
    pub fn new(
        spec: DeviceSpec,
        backends: Vec<Box<dyn Backend>>,
        cfg: &WorkerConfig,
    ) -> Result<Stepper, DeviceError> {
        let Pairs { mem, slots, kicks } = pairs(spec, backends, cfg)?;
        if slots.iter().any(|s| s.q.backend.rx_fd().is_some()) {
            return Err(DeviceError::Config(
                "a backend that waits on an fd cannot be stepped",
            ));
        }
        Ok(Stepper {
            slots,
            kicks,
            metrics: DeviceMetrics::default(),
            report: DeviceReport::default(),
            busy_poll: cfg.busy_poll_us > 0,
            state: State::Running,
            kick_reads: 0,
            mem,
        })
    }

    /// The guest wrote the kick eventfd of queue `dir` of pair `pair`: reads it, as the
    /// worker's armed io_uring read does, and makes the handler waiting on that queue due.
    /// Call it only after a kick was written: the read waits for one. Returns the count read.
    pub fn kicked(&mut self, pair: usize, dir: Direction) -> io::Result<u64> {
        let (Some(fds), Some(slot)) = (self.kicks.get(pair), self.slots.get_mut(pair)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the device has no pair {pair}"),
            ));
        };
        let fd = match dir {
            Direction::Tx => &fds[0],
            Direction::Rx => &fds[1],
        };
        let n = sys::wait(fd)?;
        self.kick_reads += 1;
        slot.kicked(dir, &self.metrics);
        Ok(n)
    }

    /// One step of the worker: a round if anything is due (after a wake-up or a spin that
    /// found work), then what the worker does when the round leaves nothing due — a
    /// busy-poll spin, or re-arming kicks to sleep.
    pub fn step(&mut self) -> Stepped {
        if self.report.fatal.is_some() {
            return Stepped::Stopped;
        }
        let (mem, m) = (&*self.mem, &self.metrics);
        let due = self.slots.iter().any(Slot::requeued);
        match self.state {
            State::Running => {}
            State::Asleep if !due => return Stepped::Asleep,
            State::Asleep => add(&m.wakeups, 1),
            State::Polling if due => {}
            State::Polling => {
                add(&m.busy_poll_spins, 1);
                for s in &self.slots {
                    s.poll_prefetch(mem);
                }
                let r = &mut self.report;
                if !self.slots.iter_mut().any(|s| s.poll_rings(mem, m, r)) {
                    return Stepped::Polling;
                }
                add(&m.busy_poll_hits, 1);
            }
        }
        self.state = State::Running;
        let mut requeue = false;
        for s in &mut self.slots {
            requeue |= s.round(mem, m, &mut self.report);
        }
        if self.report.fatal.is_some() {
            return Stepped::Stopped;
        }
        if requeue {
            return Stepped::Busy;
        }
        if self.busy_poll {
            if self.slots.iter_mut().any(Slot::backend_ready) {
                return Stepped::Busy;
            }
            for s in &mut self.slots {
                s.poll_start(mem, m, &mut self.report);
            }
            self.state = State::Polling;
            return Stepped::Polling;
        }
        let mut requeue = false;
        for s in &mut self.slots {
            requeue |= s.rearm(mem, m, &mut self.report);
        }
        if requeue {
            return Stepped::Busy;
        }
        self.state = State::Asleep;
        Stepped::Asleep
    }

    /// The device's counters so far.
    pub fn metrics(&self) -> &DeviceMetrics {
        &self.metrics
    }

    /// Queue failures and fatal errors so far.
    pub fn report(&self) -> &DeviceReport {
        &self.report
    }

    /// Kick eventfds read so far ([`Stepper::kicked`]): with the call-eventfd writes counted
    /// in [`DeviceMetrics`], every system call the stepped device makes (the null backend
    /// makes none).
    pub fn kick_reads(&self) -> u64 {
        self.kick_reads
    }

    /// Stops serving: RX buffers held ahead go back, and the report says where each queue
    /// stopped and what the backends counted.
    pub fn finish(mut self) -> (DeviceReport, DeviceMetrics) {
        stopped(&mut self.slots, &mut self.report);
        (self.report, self.metrics)
    }
}
