//! The worker's rounds without its thread, its io_uring or its clock: a [`Stepper`] serves a
//! device's pairs one round at a time on the caller's thread, for a schedule that steps the
//! guest and the device in turn (the harness's lockstep runs, whose counts must not depend on
//! timing). Each round is the worker's own — the same handlers, the same round's end, the same
//! re-arming before a sleep and the same busy-poll checks (the worker's `Slot`); what differs is
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

#[cfg(test)]
mod tests {
    //! The stepper driven by hand with guest-sim's driver queue: what each step ends in, and
    //! that kicks and calls go where the worker's would.
    use std::os::unix::net::UnixDatagram;

    use super::*;
    use crate::backend::null::{NullBackend, NullMode};
    use crate::backend::packet::packet_backend;
    use crate::metrics::get;
    use guest_sim::testbed::{Testbed, TestbedConfig};
    use guest_sim::{Buf, DriverQueue};
    use vring::net::{bit, Features, VirtioNetHdr};

    const QUEUE: u16 = 64;

    fn testbed() -> Testbed {
        Testbed::new(&TestbedConfig {
            guest_mem_bytes: 4 << 20,
            region_len: None,
            queue_size: QUEUE,
            pairs: 1,
            frame_len: 64,
            mrg_rxbuf: true,
        })
        .expect("testbed")
    }

    fn features() -> Features {
        Features::of(&[bit::VERSION_1, bit::RING_EVENT_IDX, bit::IN_ORDER])
    }

    #[test]
    fn a_tx_stream_sleeps_when_drained_and_wakes_on_a_kick() {
        let tb = testbed();
        let (mem, g) = (tb.mem.clone(), &tb.guest[0]);
        let spec = DeviceSpec {
            mem: tb.mem,
            features: features(),
            pairs: tb.device,
        };
        let backends: Vec<Box<dyn Backend>> =
            vec![Box::new(NullBackend::new(NullMode::Sink, false))];
        let cfg = WorkerConfig {
            batch: 16,
            pkt_weight: 32,
            ..WorkerConfig::default()
        };
        let mut dev = Stepper::new(spec, backends, &cfg).expect("stepper");
        // Nothing posted: the first round finds the rings empty and re-arms.
        assert_eq!(dev.step(), Stepped::Asleep);
        assert_eq!(dev.step(), Stepped::Asleep, "no kick, no work");
        let mut txq = DriverQueue::new(&mem, g.pair.tx.addrs, true)
            .expect("driver")
            .with_in_order(true);
        let len = (VirtioNetHdr::SIZE + 64) as u32;
        for _ in 0..48 {
            let head = txq.next_free_head().expect("free");
            txq.add_one(&mem, Buf::read(g.bufs.tx[head as usize], len))
                .expect("post");
        }
        // The device asked for a kick when it went to sleep.
        assert!(txq.publish(&mem).expect("publish"));
        crate::sys::signal(&g.pair.tx.kick).expect("kick");
        assert_eq!(dev.kicked(0, Direction::Tx).expect("kicked"), 1);
        assert_eq!(get(&dev.metrics().tx.kicks), 1);
        // 48 frames, 32 a handler run (two batches of 16): one round spends the weight and
        // goes again at once.
        assert_eq!(dev.step(), Stepped::Busy);
        assert_eq!(get(&dev.metrics().tx.packets), 32);
        assert_eq!(dev.step(), Stepped::Asleep);
        assert_eq!(get(&dev.metrics().tx.packets), 48);
        assert_eq!(get(&dev.metrics().wakeups), 1);
        assert_eq!(dev.kick_reads(), 1);
        assert_eq!(txq.reap(&mem, |_| {}).expect("reap"), 48);
        let (report, m) = dev.finish();
        assert!(report.queue_failures.is_empty() && report.fatal.is_none());
        assert_eq!(report.stopped_at, vec![0, 48], "RX and TX bases");
        assert_eq!(get(&m.tx.packets), 48);
    }

    #[test]
    fn a_polling_stepper_spins_and_never_asks_for_a_kick() {
        let tb = testbed();
        let (mem, g) = (tb.mem.clone(), &tb.guest[0]);
        let spec = DeviceSpec {
            mem: tb.mem,
            features: features(),
            pairs: tb.device,
        };
        let backends: Vec<Box<dyn Backend>> =
            vec![Box::new(NullBackend::new(NullMode::Sink, false))];
        let cfg = WorkerConfig {
            busy_poll_us: 50,
            ..WorkerConfig::default()
        };
        let mut dev = Stepper::new(spec, backends, &cfg).expect("stepper");
        assert_eq!(dev.step(), Stepped::Polling);
        assert_eq!(dev.step(), Stepped::Polling);
        let mut txq = DriverQueue::new(&mem, g.pair.tx.addrs, true)
            .expect("driver")
            .with_in_order(true);
        let len = (VirtioNetHdr::SIZE + 64) as u32;
        let post = |txq: &mut DriverQueue| {
            let head = txq.next_free_head().expect("free");
            txq.add_one(&mem, Buf::read(g.bufs.tx[head as usize], len))
                .expect("post");
            txq.publish(&mem).expect("publish")
        };
        // A fresh ring's `avail_event` (0) asks for the first kick; it goes unread here.
        assert!(post(&mut txq));
        // The spin finds the frame and the same step serves it.
        assert_eq!(dev.step(), Stepped::Polling);
        assert_eq!(get(&dev.metrics().tx.packets), 1);
        assert_eq!(get(&dev.metrics().busy_poll_hits), 1);
        assert_eq!(get(&dev.metrics().busy_poll_spins), 2);
        // A polling device never arms kicks again.
        assert!(!post(&mut txq));
        assert_eq!(dev.step(), Stepped::Polling);
        assert_eq!(get(&dev.metrics().tx.packets), 2);
        assert_eq!((get(&dev.metrics().tx.kicks), dev.kick_reads()), (0, 0));
    }

    #[test]
    fn a_backend_that_waits_on_an_fd_cannot_be_stepped() {
        let tb = testbed();
        let (sock, _peer) = UnixDatagram::pair().expect("socketpair");
        let b = packet_backend(
            File::from(std::os::fd::OwnedFd::from(sock)),
            tb.mem.clone(),
            64,
        )
        .expect("packet backend");
        let spec = DeviceSpec {
            mem: tb.mem,
            features: features(),
            pairs: tb.device,
        };
        let e = Stepper::new(spec, vec![Box::new(b)], &WorkerConfig::default());
        assert!(matches!(e, Err(DeviceError::Config(_))), "{e:?}");
    }
}
