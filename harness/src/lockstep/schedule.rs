//! Both sides of one device on one thread: the guest's driver ([`GuestSteps`], guest-sim's
//! own `tx`/`rx`/`rr` steps) and the device's worker rounds ([`Stepper`], the engine's own
//! handlers) take turns, and nothing in the schedule looks at a clock, so the same packets
//! go the same way through the same code every time.
//!
//! A turn is what two threads sharing one CPU would do without preemption: each side runs
//! until it would wait, then the other runs.
//!
//! - The guest steps until it sleeps on an interrupt or a step moves nothing (a polling
//!   guest spinning). Asleep, it wakes — reads its call eventfd — once the device has written
//!   that eventfd since it last read it.
//! - The device takes the kicks the guest wrote (reads its kick eventfds, as the worker's
//!   io_uring reads do), then goes round until it would wait: asleep with kicks armed, or
//!   spinning in a busy-poll window that found nothing. Asleep with no kick, it does not run.
//!
//! Each side's steps run inside its [`Meter`] method, which is what instruction counts are
//! taken around; the schedule's own bookkeeping between them is not counted.

use std::ops::Sub;

use anyhow::{anyhow, bail, Context, Result};
use engine::metrics::{get, DeviceMetrics};
use engine::worker::{Stepped, Stepper};
use guest_sim::traffic::lockstep::{Kicks, Lockstep as GuestSteps};
use guest_sim::traffic::{GuestPair, TrafficConfig, Workload};
use serde::{Deserialize, Serialize};
use vring::Direction;

/// Turns in a row with no packet moving on either side after which the schedule is stuck: a
/// lost kick or interrupt (both sides asleep), or both polling with nothing in flight.
const STALL_TURNS: u32 = 64;
/// Steps one side may take in one turn before it yields anyway (a side with work waits for
/// the other well before: each ring holds at most 32768 buffers).
const MAX_PHASE_STEPS: u32 = 1 << 17;

/// How each side's part of a turn is measured.
pub trait Meter {
    /// Runs the guest's part.
    fn guest<R>(&mut self, f: impl FnOnce() -> R) -> R;
    /// Runs the device's part.
    fn device<R>(&mut self, f: impl FnOnce() -> R) -> R;
}

/// Not measured: the warm-up.
#[derive(Debug)]
pub struct Unmeasured;

impl Meter for Unmeasured {
    #[inline]
    fn guest<R>(&mut self, f: impl FnOnce() -> R) -> R {
        f()
    }

    #[inline]
    fn device<R>(&mut self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// Each side's part inside a function of its own ([`GUEST_FN`], [`DEVICE_FN`]), which
/// `callgrind --toggle-collect` turns counting on in.
#[derive(Debug)]
pub struct Named;

/// The function the guest's measured steps run in.
pub const GUEST_FN: &str = "lockstep_measured_guest";
/// The function the device's measured steps run in.
pub const DEVICE_FN: &str = "lockstep_measured_device";

/// The guest's measured part of a turn (see [`GUEST_FN`]).
#[inline(never)]
fn lockstep_measured_guest<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The device's measured part of a turn (see [`DEVICE_FN`]).
#[inline(never)]
fn lockstep_measured_device<R>(f: impl FnOnce() -> R) -> R {
    f()
}

impl Meter for Named {
    fn guest<R>(&mut self, f: impl FnOnce() -> R) -> R {
        lockstep_measured_guest(f)
    }

    fn device<R>(&mut self, f: impl FnOnce() -> R) -> R {
        lockstep_measured_device(f)
    }
}

/// Counts over a stretch of turns (or since the start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Packets completed (tx: taken by the backend; rx: received by the guest; rr:
    /// transactions).
    pub packets: u64,
    /// Turns taken.
    pub turns: u64,
    /// Kick eventfd writes (the guest).
    pub kicks: u64,
    /// Call eventfd writes (the device).
    pub calls: u64,
    /// Kick eventfd reads (the device taking a kick).
    pub kick_reads: u64,
    /// Call eventfd reads (the guest taking an interrupt).
    pub call_reads: u64,
    /// `io_uring_enter` calls (the device's; a stepped device has no io_uring).
    pub io_uring_enters: u64,
}

impl Window {
    /// Every system call the stepped code made: the eventfd writes and reads.
    pub fn syscalls(&self) -> u64 {
        self.kicks + self.calls + self.kick_reads + self.call_reads + self.io_uring_enters
    }
}

impl Sub for Window {
    type Output = Window;

    fn sub(self, o: Window) -> Window {
        Window {
            packets: self.packets - o.packets,
            turns: self.turns - o.turns,
            kicks: self.kicks - o.kicks,
            calls: self.calls - o.calls,
            kick_reads: self.kick_reads - o.kick_reads,
            call_reads: self.call_reads - o.call_reads,
            io_uring_enters: self.io_uring_enters - o.io_uring_enters,
        }
    }
}

/// Calls the device has written on queue `dir`.
fn calls(m: &DeviceMetrics, dir: Direction) -> u64 {
    match dir {
        Direction::Tx => get(&m.tx.calls),
        Direction::Rx => get(&m.rx.calls),
    }
}

/// Both sides of one device, taking turns (see the module documentation).
#[derive(Debug)]
pub struct Schedule<'a> {
    guest: GuestSteps<'a>,
    device: Stepper,
    /// How the device's last step ended.
    device_state: Stepped,
    /// Per queue (TX, RX): the device's calls up to the guest's last read of that eventfd
    /// (one read takes every write before it).
    calls_taken: [u64; 2],
    /// Kicks the device's reads took (the sum of the counts read).
    kicks_taken: u64,
    /// Calls the guest's reads took (the sum of the counts read).
    calls_read: u64,
    workload: Workload,
    turns: u64,
}

impl<'a> Schedule<'a> {
    /// The guest of `nic` running `cfg`, started, and `device` serving the other side.
    pub fn new(nic: &'a GuestPair, cfg: &'a TrafficConfig, device: Stepper) -> Result<Self> {
        Ok(Schedule {
            guest: GuestSteps::new(nic, cfg).context("starting the guest")?,
            device,
            device_state: Stepped::Busy,
            calls_taken: [0; 2],
            kicks_taken: 0,
            calls_read: 0,
            workload: cfg.workload,
            turns: 0,
        })
    }

    /// One turn: the guest until it waits, then the device until it waits.
    pub fn turn<M: Meter>(&mut self, meter: &mut M) -> Result<()> {
        self.turns += 1;
        self.guest_phase(meter)?;
        self.device_phase(meter)?;
        let r = self.device.report();
        if let Some(f) = r.queue_failures.first() {
            bail!("the device broke a queue: {f}");
        }
        if let Some(e) = &r.fatal {
            bail!("the device stopped: {e}");
        }
        Ok(())
    }

    /// The guest's part of a turn: steps until it sleeps with no interrupt waiting, or a step
    /// moves nothing.
    fn guest_phase<M: Meter>(&mut self, meter: &mut M) -> Result<()> {
        for _ in 0..MAX_PHASE_STEPS {
            let guest = &mut self.guest;
            if let Some(dir) = guest.asleep() {
                let i = match dir {
                    Direction::Tx => 0,
                    Direction::Rx => 1,
                };
                let written = calls(self.device.metrics(), dir);
                if written == self.calls_taken[i] {
                    return Ok(());
                }
                self.calls_read += meter.guest(|| guest.interrupted())?;
                self.calls_taken[i] = written;
                continue;
            }
            let before = self.guest_progress();
            let guest = &mut self.guest;
            meter.guest(|| guest.step())?;
            if self.guest_progress() == before && self.guest.asleep().is_none() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The device's part of a turn: takes the kicks written, then goes round while it has work
    /// left. Asleep with no kick, it does not run.
    fn device_phase<M: Meter>(&mut self, meter: &mut M) -> Result<()> {
        let kicks = self.guest.take_kicks();
        if self.device_state == Stepped::Asleep && kicks == Kicks::default() {
            return Ok(());
        }
        let device = &mut self.device;
        let (state, taken) = meter.device(|| -> std::io::Result<(Stepped, u64)> {
            let mut taken = 0;
            if kicks.tx > 0 {
                taken += device.kicked(0, Direction::Tx)?;
            }
            if kicks.rx > 0 {
                taken += device.kicked(0, Direction::Rx)?;
            }
            Ok((device.step(), taken))
        })?;
        self.kicks_taken += taken;
        self.device_state = state;
        for _ in 1..MAX_PHASE_STEPS {
            if self.device_state != Stepped::Busy {
                break;
            }
            let device = &mut self.device;
            self.device_state = meter.device(|| device.step());
        }
        Ok(())
    }

    /// Takes turns until `packets` packets have completed in all (whole turns: a few more may).
    pub fn run_until<M: Meter>(&mut self, meter: &mut M, packets: u64) -> Result<()> {
        let mut still = 0;
        while self.packets() < packets {
            let before = (self.guest_progress(), self.device_progress());
            self.turn(meter)?;
            if (self.guest_progress(), self.device_progress()) != before {
                still = 0;
                continue;
            }
            still += 1;
            if still >= STALL_TURNS {
                bail!(
                    "stuck for {STALL_TURNS} turns at {} packets: guest {}, device {:?}",
                    self.packets(),
                    match self.guest.asleep() {
                        Some(d) => format!("asleep on {}", d.name()),
                        None => "awake".into(),
                    },
                    self.device_state
                );
            }
        }
        Ok(())
    }

    /// Packets completed so far, in the workload's unit.
    pub fn packets(&self) -> u64 {
        match self.workload {
            Workload::Tx => get(&self.device.metrics().tx.packets),
            Workload::Rx | Workload::Rr | Workload::Echo => self.guest.report().received,
        }
    }

    /// What the guest has moved: frames posted, TX frames reaped, frames received.
    fn guest_progress(&self) -> u64 {
        let g = self.guest.report();
        let reaped = g.sent - self.guest.tx_in_flight();
        g.sent + g.received + reaped
    }

    /// What the device has moved: frames taken and delivered.
    fn device_progress(&self) -> u64 {
        let m = self.device.metrics();
        get(&m.tx.packets) + get(&m.rx.packets)
    }

    /// Every count since the start.
    pub fn counts(&self) -> Window {
        let (g, m) = (self.guest.report(), self.device.metrics());
        Window {
            packets: self.packets(),
            turns: self.turns,
            kicks: g.kicks,
            calls: get(&m.tx.calls) + get(&m.rx.calls),
            kick_reads: self.device.kick_reads(),
            call_reads: self.guest.call_reads(),
            io_uring_enters: get(&m.uring_submits),
        }
    }

    /// Stops both sides and checks what was delivered: every frame that arrived did so once
    /// and in order, and no side counted one the other did not send.
    pub fn finish(self) -> Result<Delivered> {
        let (kicks, calls_written) = (self.guest.report().kicks, {
            let m = self.device.metrics();
            get(&m.tx.calls) + get(&m.rx.calls)
        });
        if self.kicks_taken != kicks || self.calls_read > calls_written {
            bail!(
                "notifications do not add up: {kicks} kicks written, {} taken; {calls_written} \
                 calls written, {} taken",
                self.kicks_taken,
                self.calls_read
            );
        }
        let tx_in_flight = self.guest.tx_in_flight();
        let (report, m) = self.device.finish();
        let g = self.guest.finish();
        let stat = |name: &str| {
            report
                .backend_stats
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, n)| *n)
        };
        let d = Delivered {
            guest_sent: g.sent,
            guest_received: g.received,
            guest_reaped: g.sent - tx_in_flight,
            device_sent: get(&m.tx.packets),
            device_delivered: get(&m.rx.packets),
            backend_in_order: stat("tx_in_order").unwrap_or(0),
            out_of_order: g.rx_out_of_order + stat("tx_out_of_order").unwrap_or(0),
            dropped: m.total_drops(),
        };
        d.check(self.workload)?;
        Ok(d)
    }
}

/// What each side moved over a schedule, for the delivery checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Frames the guest posted on TX.
    pub guest_sent: u64,
    /// Frames the guest received on RX.
    pub guest_received: u64,
    /// TX frames the device returned and the guest reaped.
    pub guest_reaped: u64,
    /// TX frames the device took (sent to the backend).
    pub device_sent: u64,
    /// RX frames the device delivered.
    pub device_delivered: u64,
    /// TX test frames the null backend saw in sequence.
    pub backend_in_order: u64,
    /// Frames out of sequence, at either end.
    pub out_of_order: u64,
    /// Frames the device dropped.
    pub dropped: u64,
}

impl Delivered {
    fn check(&self, workload: Workload) -> Result<()> {
        let fail = |what: &str| anyhow!("{what}: {self:?}");
        if self.out_of_order > 0 || self.dropped > 0 {
            return Err(fail("frames out of order or dropped"));
        }
        // TX: the device takes what the guest posted, in order, and returns it taken.
        let tx_ok = self.device_sent <= self.guest_sent
            && self.guest_reaped <= self.device_sent
            && self.backend_in_order == self.device_sent;
        // RX: the guest receives what the device delivered, no more.
        let rx_ok = self.guest_received <= self.device_delivered;
        let ok = match workload {
            Workload::Tx => tx_ok && self.device_delivered == 0,
            Workload::Rx => rx_ok && self.guest_sent == 0,
            // rr: the backend reflects each request as the response (it counts no order).
            Workload::Rr | Workload::Echo => {
                self.device_sent <= self.guest_sent
                    && self.device_delivered <= self.device_sent
                    && rx_ok
            }
        };
        if !ok {
            return Err(fail("the two sides' counts disagree"));
        }
        Ok(())
    }
}
