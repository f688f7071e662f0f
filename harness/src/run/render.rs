//! The side-by-side table of a results document, and the notes under it.

use crate::modes;
use crate::results::{Record, Results};
use crate::stats::{fmt_num, Align, Summary, Table};

fn range(s: &Summary) -> String {
    format!(
        "{} [{}-{}]",
        fmt_num(s.median),
        fmt_num(s.min),
        fmt_num(s.max)
    )
}

fn us(s: &Option<Summary>) -> String {
    s.map(|s| fmt_num(s.median / 1000.0))
        .unwrap_or_else(|| "-".into())
}

/// For a row of a mode shown against `emulated` ([`modes::Mode::vs_emulated`]): its median
/// throughput ÷ that of the `emulated` row with the same workload, size, busy-poll window and
/// batch.
fn vs_emulated(doc: &Results, r: &Record) -> String {
    if !modes::by_name(&r.mode).is_some_and(|m| m.vs_emulated()) {
        return "-".into();
    }
    doc.records
        .iter()
        .find(|e| {
            e.mode == "emulated"
                && e.workload == r.workload
                && e.size_bytes == r.size_bytes
                && e.busy_poll_us == r.busy_poll_us
                && e.batch == r.batch
        })
        .map(|e| {
            format!(
                "{:.2}x",
                r.throughput_mpps.median / e.throughput_mpps.median
            )
        })
        .unwrap_or_else(|| "-".into())
}

/// Drops of a row, and their share of what was offered (`sent`: what the guest posted, or
/// what the far side injected for `rx`).
fn drops(r: &Record) -> String {
    let n: u64 = r.dropped.values().sum();
    if n == 0 || r.sent == 0 {
        return n.to_string();
    }
    format!("{n} ({}%)", fmt_num(n as f64 / r.sent as f64 * 100.0))
}

/// Why a row can read over 100% of its ceiling: what the row does that its yardstick does
/// not (or, for the kernel-backed modes, the noise the yardstick's own spread allows).
fn over_reason(r: &Record, ceiling: &str) -> &'static str {
    use crate::results::Workload;
    if ceiling.starts_with("sleep_ring") {
        "the guest asks to be woken when three quarters of its frames are back (used_event, as \
         Linux's virtqueue_enable_cb_delayed); the yardstick's sides ask at the next item, so \
         they sleep and wake more often"
    } else if ceiling.starts_with("spsc_copy") {
        match r.workload {
            Workload::Rx => {
                "the guest reads each frame's first line (its headers and test fields), the \
                 yardstick copies the whole frame on both sides"
            }
            _ => {
                "the guest rewrites 16 bytes of each frame (its sequence number and timestamp) \
                 before posting it, the yardstick's producer copies all of it"
            }
        }
    } else if ceiling.ends_with("wake_rtt") {
        "the row's median round trip beat the yardstick's: both are a pair of wake-ups on \
         this host, whose latency moves from one sample to the next"
    } else {
        "the yardstick is the same kernel path with nothing around it, measured once before \
         the repeat; the host's kernel ran faster during the row than during that sample"
    }
}

/// The reason lines under the table, one per row over 100% of its ceiling.
fn over_lines(doc: &Results) -> Vec<String> {
    doc.records
        .iter()
        .filter_map(|r| {
            let p = r.pct_of_ceiling.as_ref().filter(|p| p.median_pct > 100.0)?;
            Some(format!(
                "! {}/{}/{}: {:.0}% of {}: {}",
                r.mode,
                r.workload.as_str(),
                r.size_bytes,
                p.median_pct,
                p.ceiling,
                over_reason(r, &p.ceiling)
            ))
        })
        .collect()
}

/// The side-by-side table: what [`render`] prints, and what the Markdown export draws.
pub fn table(doc: &Results) -> Table {
    let mut t = Table::new(&[
        ("mode", Align::Left),
        ("wl", Align::Left),
        ("size", Align::Right),
        ("poll us", Align::Right),
        ("batch", Align::Right),
        ("Mpps median [min-max]", Align::Right),
        ("Gbit/s", Align::Right),
        ("% ceiling", Align::Right),
        ("x emulated", Align::Right),
        ("worker ns/pkt", Align::Right),
        ("vcpu ns/pkt", Align::Right),
        ("kicks/pkt", Align::Right),
        ("calls/pkt", Align::Right),
        ("chains/batch", Align::Right),
        ("p50 us", Align::Right),
        ("p99 us", Align::Right),
        ("p99.9 us", Align::Right),
        ("drops", Align::Right),
        ("lost", Align::Right),
    ]);
    for r in &doc.records {
        t.push_row(vec![
            format!(
                "{}{}{}",
                r.mode,
                r.backend
                    .as_deref()
                    .map(|b| format!("/{b}"))
                    .unwrap_or_default(),
                if r.modeled_exit_cost_ns > 0 { "*" } else { "" }
            ),
            r.workload.as_str().into(),
            r.size_bytes.to_string(),
            format!("{}{}", r.busy_poll_us, if r.guest_poll { "+g" } else { "" }),
            if modes::by_name(&r.mode).is_none_or(|m| m.batches()) {
                r.batch.to_string()
            } else {
                "1".into()
            },
            range(&r.throughput_mpps),
            fmt_num(r.throughput_gbps.median),
            match &r.pct_of_ceiling {
                // Over 100%: marked, with its reason under the table (`over_lines`).
                Some(p) if p.median_pct > 100.0 => format!("{:.0}%!", p.median_pct),
                Some(p) => format!("{:.0}%", p.median_pct),
                None => "-".into(),
            },
            vs_emulated(doc, r),
            fmt_num(r.cpu_ns_per_packet.worker.median),
            fmt_num(r.cpu_ns_per_packet.vcpu.median),
            fmt_num(r.kicks_per_packet.median),
            fmt_num(r.calls_per_packet.median),
            r.chains_per_batch
                .as_ref()
                .map(|s| format!("{:.1}", s.median))
                .unwrap_or_else(|| "-".into()),
            us(&r.rtt_p50_ns),
            us(&r.rtt_p99_ns),
            us(&r.rtt_p999_ns),
            drops(r),
            r.lost.to_string(),
        ]);
    }
    t
}

/// The side-by-side table and the notes under it.
pub fn render(doc: &Results) -> String {
    let mut out = table(doc).render();
    out.push_str(
        "Mpps: frames/s (rr: transactions/s) in the measured window, median [min-max] over repeats.\n\
         % ceiling: null vs the in-run ring + per-packet copy of the same size (spsc_copy_N), or,\n\
         when neither side polls, the same ring with both sides sleeping on eventfds\n\
         (sleep_ring_N_qQ);\n\
         rr vs the in-run wake round trip (ceiling / p50): busy_poll_wake_rtt when the sides\n\
         poll, blocking_wake_rtt when neither does; a ratio over 100% is marked ! and its\n\
         reason given below the table; the kernel-backed modes vs\n\
         their own socket with nothing around it, tx written (tap_write_N: a write(2) per frame;\n\
         tap_uring_N: io_uring batches; direct-vf: packet_best_N, xdp_tx_N, macvtap_best_N,\n\
         the better of macvtap_write_N and macvtap_uring_N), rx fed by the same injector into\n\
         the same wire end and read by one thread (tap_read_N; direct-vf: packet_read_N,\n\
         xdp_rx_N, macvtap_read_N; _r<pps> when paced by --rate-pps).\n\
         Each ratio is taken per repeat, against the ceiling measured right before it ran; the\n\
         median is shown.\n\
         x emulated: a vhost mode's throughput / emulated's, same row otherwise. ns/pkt: thread CPU time\n\
         per packet. kicks: guest eventfd writes (VM exits); calls: worker interrupts.\n\
         chains/batch: chains the worker moved per used-ring publish (how full its batches were).\n\
         drops: frames dropped, by any reason, and their share of the frames offered (sent).\n\
         poll us: worker busy-poll window; +g: the guest polls its rings too. batch: the\n\
         emulated loop has none (a syscall and a publish per frame) and shows 1.\n",
    );
    for line in over_lines(doc) {
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(r) = doc.records.iter().find(|r| r.modeled_exit_cost_ns > 0) {
        out.push_str(&format!(
            "* MODELED: these rows include a modeled VM-exit cost of {} ns per kick and per \
             interrupt taken (--exit-cost-ns); it is not measured.\n",
            r.modeled_exit_cost_ns
        ));
    }
    for r in &doc.records {
        for e in &r.errors {
            out.push_str(&format!(
                "! {}/{}/{}: {e}\n",
                r.mode,
                r.workload.as_str(),
                r.size_bytes
            ));
        }
        if !r.queue_errors.is_empty() {
            out.push_str(&format!(
                "! {}/{}/{}: queue errors {:?}\n",
                r.mode,
                r.workload.as_str(),
                r.size_bytes,
                r.queue_errors
            ));
        }
    }
    out
}

/// The `--peer` pairings: per direction and size, each driver × backend pairing's Mpps
/// (median [min-max] over repeats), its ratio to the DPDK ↔ DPDK pair of the same repeats,
/// and whether every frame sent was received; with the notes under it.
pub fn peers(recs: &[crate::peers::pairings::PeerRecord]) -> String {
    let mut out = peers_table(recs).render();
    out.push_str(
        "Peers: g2h = the driver sends, the backend takes; h2g = the other way. One core each\n\
         (driver: the vCPU's, backend: the worker's); our side busy-polls as DPDK's PMDs do.\n\
         x dpdk pair: this pairing / DPDK virtio-user -> DPDK vhost, per repeat, median.\n",
    );
    out
}

/// The table of [`peers`].
pub fn peers_table(recs: &[crate::peers::pairings::PeerRecord]) -> Table {
    use crate::peers::pairings::{Backend_, Driver};
    let mut t = Table::new(&[
        ("dir", Align::Left),
        ("size", Align::Right),
        ("driver", Align::Left),
        ("backend", Align::Left),
        ("Mpps median [min-max]", Align::Right),
        ("x dpdk pair", Align::Right),
        ("sent = received", Align::Left),
    ]);
    for r in recs {
        let s = Summary::from_values(&r.mpps);
        let dpdk = recs.iter().find(|o| {
            o.direction == r.direction
                && o.size_bytes == r.size_bytes
                && o.driver == Driver::DpdkVirtioUser
                && o.backend == Backend_::DpdkVhost
        });
        // Ratio per repeat (same repeat, same sitting), then the median.
        let ratio = dpdk.and_then(|d| {
            let per: Vec<f64> = r
                .mpps
                .iter()
                .zip(&d.mpps)
                .filter(|(_, b)| **b > 0.0)
                .map(|(a, b)| a / b)
                .collect();
            crate::stats::median(&per)
        });
        let lost: Vec<String> = r
            .sent
            .iter()
            .zip(&r.received)
            .filter(|(s, g)| s != g)
            .map(|(s, g)| format!("{g} of {s}"))
            .collect();
        t.push_row(vec![
            r.direction.clone(),
            r.size_bytes.to_string(),
            r.driver.name().into(),
            r.backend.name().into(),
            s.map_or("-".into(), |s| {
                format!(
                    "{} [{}-{}]",
                    fmt_num(s.median),
                    fmt_num(s.min),
                    fmt_num(s.max)
                )
            }),
            ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            if lost.is_empty() {
                "yes".into()
            } else {
                format!("no: {}", lost.join(", "))
            },
        ]);
    }
    t
}

/// The `--lockstep` counts: per combination, instructions per packet (both sides, then each),
/// and system calls, io_uring enters, kicks and calls per packet.
pub fn lockstep(recs: &[crate::results::LockstepRecord]) -> String {
    let mut t = Table::new(&[
        ("mode", Align::Left),
        ("wl", Align::Left),
        ("size", Align::Right),
        ("poll us", Align::Right),
        ("batch", Align::Right),
        ("packets", Align::Right),
        ("instr/pkt", Align::Right),
        ("guest", Align::Right),
        ("device", Align::Right),
        ("syscalls/pkt", Align::Right),
        ("uring/pkt", Align::Right),
        ("kicks/pkt", Align::Right),
        ("calls/pkt", Align::Right),
        ("counter", Align::Left),
    ]);
    for r in recs {
        let i = &r.instructions_per_packet;
        t.push_row(vec![
            format!(
                "{}{}",
                r.mode,
                if r.test_slowdown_iterations > 0 {
                    "!"
                } else {
                    ""
                }
            ),
            r.workload.as_str().into(),
            r.size_bytes.to_string(),
            format!("{}{}", r.busy_poll_us, if r.guest_poll { "+g" } else { "" }),
            r.batch.to_string(),
            r.packets.to_string(),
            format!("{:.1}", i.total),
            format!("{:.1}", i.guest),
            format!("{:.1}", i.device),
            fmt_num(r.syscalls_per_packet),
            fmt_num(r.io_uring_enters_per_packet),
            fmt_num(r.kicks_per_packet),
            fmt_num(r.calls_per_packet),
            match &r.counter_version {
                Some(v) => format!("{} ({v}, {})", r.counter.name(), r.profile),
                None => format!("{} ({})", r.counter.name(), r.profile),
            },
        ]);
    }
    let mut out = t.render();
    out.push_str(
        "Lockstep: the guest and the device stepped in turn on one thread, the same packets every\n\
         time; per packet (rr: per transaction) over the measured window, after a warm-up.\n\
         instr/pkt = guest + device: the guest's driver steps and the device's worker rounds,\n\
         each counted apart (the schedule between them is not). syscalls: eventfd writes (kicks,\n\
         interrupts) and reads (each taken); the stepped device has no io_uring. poll us > 0:\n\
         the device busy-polls (a window that never runs out); +g: the guest polls too.\n",
    );
    if let Some(r) = recs.iter().find(|r| r.test_slowdown_iterations > 0) {
        out.push_str(&format!(
            "! built with the test-only slowdown: {} extra loop iterations per packet in the \
             engine's handlers.\n",
            r.test_slowdown_iterations
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::schema::tests::sample_results;

    #[test]
    fn a_ratio_over_100_is_marked_with_its_reason_and_emulated_shows_its_batch() {
        let mut doc = sample_results();
        let mut r = doc.records[0].clone();
        if let Some(p) = r.pct_of_ceiling.as_mut() {
            p.median_pct = 139.0;
        }
        doc.records[0] = r.clone();
        r.mode = "emulated".into();
        r.pct_of_ceiling = None;
        doc.records.push(r);
        let t = render(&doc);
        assert!(t.contains("139%!"), "{t}");
        let note = t
            .lines()
            .find(|l| l.starts_with("! tap-vhost/rr/64: 139% of busy_poll_wake_rtt: "))
            .unwrap_or_else(|| panic!("no reason line: {t}"));
        assert!(note.contains("wake-ups"), "{note}");
        // The emulated row's batch column shows 1, the vhost row's its --batch.
        let batch_of = |mode: &str| {
            t.lines()
                .find(|l| l.starts_with(mode))
                .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
        };
        assert_eq!(batch_of("emulated").as_deref(), Some("1"));
        assert_eq!(
            batch_of("tap-vhost"),
            Some(doc.records[0].batch.to_string())
        );
    }
}
