//! The serde types of a results file's `lockstep` list (`run --lockstep`): per combination,
//! counts per packet from a run in which the guest and the device were stepped in turn on one
//! thread, the same packets every time, so the counts repeat exactly from one run of a build
//! to the next. results/SCHEMA.md, "lockstep", documents every field.

use anyhow::ensure;
use serde::{Deserialize, Serialize};

use super::Workload;

/// What counted the instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    /// The CPU's own counter (`perf_event_open`, `PERF_COUNT_HW_INSTRUCTIONS`, user space
    /// only, the stepping thread only).
    PerfEvent,
    /// `valgrind --tool=callgrind` (its simulated CPU's instruction count).
    Callgrind,
}

impl Counter {
    /// `perf_event` or `callgrind`, as in the results.
    pub fn name(self) -> &'static str {
        match self {
            Counter::PerfEvent => "perf_event",
            Counter::Callgrind => "callgrind",
        }
    }
}

/// Instructions per packet, the two sides apart.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstructionsPerPacket {
    /// `guest + device`.
    pub total: f64,
    /// The guest's steps: its driver and its kicks, the interrupts it takes.
    pub guest: f64,
    /// The device's steps: the worker's rounds, the backend, the kicks it reads and the
    /// interrupts it sends.
    pub device: f64,
}

/// One combination, stepped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockstepRecord {
    /// Data path (only modes with no kernel I/O can be stepped: `null`).
    pub mode: String,
    /// Traffic pattern.
    pub workload: Workload,
    /// Frame size, bytes.
    pub size_bytes: u32,
    /// Chains per backend submission and RX frames per used-ring publish.
    pub batch: u32,
    /// The busy-poll window asked for, µs; stepped, any window > 0 polls and never runs out.
    pub busy_poll_us: u64,
    /// Whether the guest polls its used rings instead of sleeping on interrupts.
    pub guest_poll: bool,
    /// Entries per queue.
    pub queue_size: u16,
    /// `VIRTIO_RING_F_EVENT_IDX`.
    pub event_idx: bool,
    /// `VIRTIO_F_IN_ORDER`.
    pub in_order: bool,
    /// `VIRTIO_NET_F_MRG_RXBUF`.
    pub mrg_rxbuf: bool,
    /// Indirect descriptors for TX.
    pub indirect: bool,
    /// Packets in the measured window (rr: transactions).
    pub packets: u64,
    /// Packets stepped before the window opened, not counted.
    pub warmup_packets: u64,
    /// Instructions per packet.
    pub instructions_per_packet: InstructionsPerPacket,
    /// System calls per packet: eventfd writes (kicks, interrupts) and reads (a kick or an
    /// interrupt taken), as the stepped code made them.
    pub syscalls_per_packet: f64,
    /// `io_uring_enter` calls per packet.
    pub io_uring_enters_per_packet: f64,
    /// Guest → device notifications per packet.
    pub kicks_per_packet: f64,
    /// Device → guest notifications per packet.
    pub calls_per_packet: f64,
    /// What counted the instructions.
    pub counter: Counter,
    /// The counter's version where it has one (`valgrind-3.19.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter_version: Option<String>,
    /// `release` (built without debug assertions) or `debug`.
    pub profile: String,
    /// Iterations of deliberate extra work per packet the engine was built with (cargo
    /// feature `test-slowdown`, for testing the gate): not a configuration but a defect on
    /// purpose. Absent (0) in every build meant to be measured.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub test_slowdown_iterations: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `mode/workload/sizeB/busy-poll Nus/batch N`, as a run's combinations are named.
pub fn label(
    mode: &str,
    workload: Workload,
    size_bytes: u32,
    busy_poll_us: u64,
    batch: u32,
) -> String {
    format!(
        "{mode}/{}/{size_bytes}B/busy-poll {busy_poll_us}us/batch {batch}",
        workload.as_str()
    )
}

impl LockstepRecord {
    /// `mode/workload/sizeB/busy-poll Nus/batch N` ([`label`]).
    pub fn label(&self) -> String {
        label(
            &self.mode,
            self.workload,
            self.size_bytes,
            self.busy_poll_us,
            self.batch,
        )
    }

    /// Checks that every number is finite and the window held packets.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(self.packets > 0, "{}: no packets", self.label());
        let i = &self.instructions_per_packet;
        for (name, v) in [
            ("instructions_per_packet.total", i.total),
            ("instructions_per_packet.guest", i.guest),
            ("instructions_per_packet.device", i.device),
            ("syscalls_per_packet", self.syscalls_per_packet),
            (
                "io_uring_enters_per_packet",
                self.io_uring_enters_per_packet,
            ),
            ("kicks_per_packet", self.kicks_per_packet),
            ("calls_per_packet", self.calls_per_packet),
        ] {
            ensure!(v.is_finite() && v >= 0.0, "{}: {name} is {v}", self.label());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::schema::tests::sample_results;
    use crate::results::Results;

    fn record() -> LockstepRecord {
        LockstepRecord {
            mode: "null".into(),
            workload: Workload::Rr,
            size_bytes: 64,
            batch: 64,
            busy_poll_us: 0,
            guest_poll: false,
            queue_size: 256,
            event_idx: true,
            in_order: true,
            mrg_rxbuf: true,
            indirect: false,
            packets: 65_536,
            warmup_packets: 1024,
            instructions_per_packet: InstructionsPerPacket {
                total: 2977.982467651367,
                guest: 1376.7662200927734,
                device: 1601.2162475585938,
            },
            syscalls_per_packet: 4.0,
            io_uring_enters_per_packet: 0.0,
            kicks_per_packet: 1.0,
            calls_per_packet: 1.0,
            counter: Counter::Callgrind,
            counter_version: Some("valgrind-3.19.0".into()),
            profile: "release".into(),
            test_slowdown_iterations: 0,
        }
    }

    #[test]
    fn a_results_file_carries_its_lockstep_list_exactly() {
        let mut doc = sample_results();
        doc.lockstep.push(record());
        let text = serde_json::to_string(&doc).expect("serialize");
        assert!(text.contains(r#""counter":"callgrind""#), "{text}");
        assert!(!text.contains("test_slowdown"), "absent when 0: {text}");
        let back: Results = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, doc, "every count survives the file, to the last bit");
        // A file from before the list reads, with none.
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("value");
        v.as_object_mut().expect("object").remove("lockstep");
        let old: Results = serde_json::from_value(v).expect("old file");
        assert!(old.lockstep.is_empty());
    }

    #[test]
    fn a_record_without_packets_or_with_a_bad_number_is_refused() {
        record().check().expect("a good record");
        let empty = LockstepRecord {
            packets: 0,
            ..record()
        };
        assert!(empty.check().is_err());
        let mut nan = record();
        nan.instructions_per_packet.device = f64::NAN;
        assert!(nan.check().is_err());
        let negative = LockstepRecord {
            calls_per_packet: -1.0,
            ..record()
        };
        assert!(negative.check().is_err());
        assert_eq!(record().label(), "null/rr/64B/busy-poll 0us/batch 64");
    }
}
