//! Command-line arguments. `vhostbench` with no subcommand runs `vhostbench run`; the `run`
//! options are also accepted at the top level (`vhostbench --modes null`).

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Parser, Subcommand};
use serde::Serialize;

use std::str::FromStr;

use crate::modes::Selector;
use crate::results::Workload;
pub use crate::topology::VfBackend;

/// vhostbench: a userspace vhost-net worker, measured against the alternatives side by side.
#[derive(Debug, Parser)]
#[command(
    name = "vhostbench",
    version,
    long_version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("VHOSTBENCH_GIT_REVISION"), ")"),
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run`, when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

impl Cli {
    /// The subcommand to execute, with `run` standing in for none.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Run(self.run))
    }
}

/// Subcommands.
// `Run` is much larger than the others; one value is made per process, so boxing it would
// buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the benchmark matrix (modes × workloads × sizes) and write a results file.
    Run(RunArgs),
    /// Measure this machine's ceilings: ring hand-off, copies, wake-up round trips.
    Limits(LimitsArgs),
    /// Show the mode and settings a libvirt `<interface>` maps to, and why, without running
    /// anything (`run --interface FILE` runs it).
    Interface(InterfaceArgs),
    /// Serve a vhost-user net device on a Unix socket (the engine as a vhost-user backend for
    /// QEMU, DPDK's virtio-user or `run --modes vhost-user`).
    Serve(crate::serve::ServeArgs),
    /// One `run --lockstep` combination, stepped and counted (what `run --lockstep` runs
    /// under callgrind).
    #[command(hide = true)]
    LockstepStep(crate::lockstep::StepArgs),
    /// Compare two results files configuration by configuration; exit 1 if a metric
    /// regressed, 2 if the files cannot be compared.
    Compare(CompareArgs),
    /// Print a results file for another tool: github-action-benchmark or Bencher JSON,
    /// Markdown, CSV.
    Export(ExportArgs),
}

/// Options of `vhostbench compare`.
#[derive(Clone, Debug, Args)]
pub struct CompareArgs {
    /// The results file to compare against (the baseline).
    #[arg(value_name = "BASE.json")]
    pub base: PathBuf,
    /// The results file under test.
    #[arg(value_name = "NEW.json")]
    pub new: PathBuf,
    /// A metric regresses when it is worse than the base by more than PCT percent and, for a
    /// timed metric, its 95% confidence interval is clear of the base's.
    #[arg(
        long,
        value_name = "PCT",
        default_value_t = crate::compare::DEFAULT_MAX_REGRESSION_PCT,
        value_parser = parse_pct
    )]
    pub max_regression: f64,
    /// How to print the report.
    #[arg(long, value_enum, default_value_t = crate::compare::Format::Text)]
    pub format: crate::compare::Format,
}

/// Options of `vhostbench export`.
#[derive(Clone, Debug, Args)]
pub struct ExportArgs {
    /// The results file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// What to print (on stdout).
    #[arg(long, value_enum)]
    pub format: crate::export::Format,
}

/// Options of `vhostbench interface`.
#[derive(Clone, Debug, Args)]
pub struct InterfaceArgs {
    /// A libvirt domain `<interface>` element (or a `<vhostbench>` root holding one
    /// `<interface>` and one `<network>`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// A libvirt `<network>` definition the interface's `<source network=…>` may name.
    #[arg(long, value_name = "FILE")]
    pub network: Option<PathBuf>,
    /// Probe devices under DIR instead of `/sys` (to try the examples that name devices).
    #[arg(long, value_name = "DIR")]
    pub sysfs: Option<PathBuf>,
}

/// Options of `vhostbench limits`.
#[derive(Clone, Debug, Args, Serialize)]
pub struct LimitsArgs {
    /// How long each throughput measurement runs, per repeat (ms). Also caps each RTT repeat.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration_ms: u64,
    /// Repeats of every limit; min / median / max are over these.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub repeat: u64,
    /// Measure only these limits (comma separated names; default: all).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub only: Vec<String>,
    /// Also write the results (schema v1, no records) to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Options of `vhostbench run`.
#[derive(Clone, Debug, Args, Serialize)]
pub struct RunArgs {
    /// Modes to measure, comma separated: `all` (every mode this host can run), `auto`
    /// (tap-vhost when the host allows it, else emulated), or data paths by name (null,
    /// emulated, tap-vhost, direct-vf).
    #[arg(long, value_delimiter = ',', default_value = "all", value_parser = Selector::from_str)]
    pub modes: Vec<Selector>,
    /// Workloads, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tx,rx,rr")]
    pub workloads: Vec<Workload>,
    /// Frame sizes in bytes (Ethernet header + payload), comma separated; at least 30 (the
    /// test frame's header, sequence number and timestamp).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64,1500",
        value_parser = clap::value_parser!(u32).range(30..=65_535)
    )]
    pub sizes: Vec<u32>,
    /// Measured time per repeat (ms).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration_ms: u64,
    /// Repeats per combination; summaries are min / median / max over these.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub repeat: u64,
    /// Busy-poll window of the worker (µs); a comma list sweeps it. 0 = no busy polling.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub busy_poll_us: Vec<u64>,
    /// Chains per backend submission and RX frames per used-ring publish (`VHOST_NET_BATCH`,
    /// at most 64); a comma list sweeps it.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64",
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub batch: Vec<u32>,
    /// Modeled VM-exit cost in ns: the guest's vCPU spins this long after each kick and each
    /// interrupt it takes, standing in for the exits a real VM would pay (there is no VM here).
    /// 0 (the default) models nothing; rows with a cost are marked "modeled" in the table and
    /// carry `exit_cost_ns` in the results. See README, "What each mode models".
    #[arg(long, default_value_t = 0)]
    pub exit_cost_ns: u64,
    /// Make the guest poll its used rings instead of sleeping on interrupts. By default the
    /// guest polls exactly when the worker busy-polls (`--busy-poll-us` > 0).
    #[arg(long)]
    pub guest_poll: bool,
    /// Results file (default: `<workspace>/results/run-<timestamp>.json`); `-` for stdout. It
    /// is checked before anything is measured: it must not be a directory or a read-only
    /// file, and its directory must exist. Symbolic links are followed.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Guest memory size (MiB).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub guest_mem_mb: u64,
    /// Virtqueue size: a power of two up to 32768.
    #[arg(long, default_value_t = 256, value_parser = parse_queue_size)]
    pub queue_size: u16,
    /// Turn off VIRTIO_RING_F_EVENT_IDX (use the NO_NOTIFY / NO_INTERRUPT flags instead).
    #[arg(long = "no-event-idx", action = ArgAction::SetFalse)]
    pub event_idx: bool,
    /// Use indirect descriptors (VIRTIO_RING_F_INDIRECT_DESC) for TX chains.
    #[arg(long)]
    pub indirect: bool,
    /// Turn off mergeable RX buffers (VIRTIO_NET_F_MRG_RXBUF).
    #[arg(long = "no-mrg-rxbuf", action = ArgAction::SetFalse)]
    pub mrg_rxbuf: bool,
    /// Turn off VIRTIO_F_IN_ORDER (every used buffer then gets its own used-ring element).
    #[arg(long = "no-in-order", action = ArgAction::SetFalse)]
    pub in_order: bool,
    /// Offered load, packets per second (default: as fast as possible).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_pps: Option<u64>,
    /// Print the results JSON on stdout, and nothing else there (the table, progress and
    /// notes go to stderr). Without `--out` no file is written; `--out -` is the same.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Print the results on stdout in this format instead of the table (`markdown`, `csv`,
    /// or for dashboards `github-action-benchmark`, `bencher`); prose goes to stderr. The
    /// results file is written as usual.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<crate::export::Format>,
    /// Pin the vCPU and the worker to these cores (comma separated; the first two are used).
    /// Default: the process's affinity mask, so `taskset -c 2,3 vhostbench` runs on 2 and 3.
    #[arg(long, value_delimiter = ',', value_name = "CORES")]
    pub cores: Vec<usize>,
    /// Warm-up at the start of each repeat, left out of its figures (ms). Default: a tenth of
    /// `--duration-ms`, at least 20.
    #[arg(long, value_name = "MS")]
    pub warmup_ms: Option<u64>,
    /// Run the mode and settings a libvirt domain `<interface>` element maps to (see
    /// `vhostbench interface`); options the file also sets must agree with it.
    #[arg(long, value_name = "FILE")]
    pub interface: Option<PathBuf>,
    /// The libvirt `<network>` definition the interface's `<source network=…>` names.
    #[arg(long, value_name = "FILE", requires = "interface")]
    pub network: Option<PathBuf>,
    /// direct-vf: how the worker reaches its VF; a comma list sweeps it, so the backends are
    /// compared in one run (default: the fastest measured, chosen by the mode).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "BACKEND")]
    pub vf_backend: Vec<VfBackend>,
    /// direct-vf: the physical function whose pool the VFs come from.
    #[arg(long, value_name = "NAME", default_value = "pf0", value_parser = parse_ifname)]
    pub pf: String,
    /// direct-vf: the pool's VF count, fixed when the pool is made, as `sriov_numvfs` is
    /// (default: enough for the run).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub vfs: Option<u32>,
    /// vhost-user: the backend's socket (any vhost-user net backend: DPDK's vhost PMD,
    /// another `vhostbench serve`). Default: the engine, served in this process on a private
    /// socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Instead of timed runs: step the guest and the device in turn on one thread, the same
    /// packets every time, and count per packet what does not depend on timing: instructions
    /// (guest and device apart), system calls, io_uring enters, kicks and calls. Modes whose
    /// frames go through the kernel cannot be stepped and are left out, saying why.
    #[arg(long)]
    pub lockstep: bool,
    /// `--lockstep`: what counts instructions: `perf-event` (the CPU's counter) or `callgrind`
    /// (default: perf-event where the CPU has the counter, else callgrind).
    #[arg(long, value_enum, value_name = "COUNTER", requires = "lockstep")]
    pub lockstep_counter: Option<crate::results::Counter>,
    /// `--lockstep`: packets (rr: transactions) in each measured window, after a warm-up of
    /// four rings' worth.
    #[arg(
        long,
        default_value_t = 65_536,
        value_parser = clap::value_parser!(u64).range(1..),
        value_name = "N"
    )]
    pub lockstep_packets: u64,
    /// Also run the driver × backend pairings with a real, independent peer: `dpdk` (DPDK
    /// 22.11's testpmd: its virtio-user PMD and its vhost PMD, against guest-sim and the
    /// engine), for `tx` (g2h) and `rx` (h2g) at each size, after the matrix.
    #[arg(long, value_enum, value_name = "PEER")]
    pub peer: Option<Peer>,
}

/// A peer `run --peer` measures against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// DPDK 22.11's testpmd (`apt-get install dpdk-dev`).
    Dpdk,
}

impl Default for RunArgs {
    /// The defaults of `vhostbench run` with no options.
    fn default() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            run: RunArgs,
        }
        match Only::try_parse_from(["vhostbench"]) {
            Ok(o) => o.run,
            // Only reachable if an attribute above is malformed; the unit test catches it.
            Err(e) => panic!("RunArgs defaults do not parse: {e}"),
        }
    }
}

/// The ids (field names) of the `run` options given on the command line, from the matches
/// of the whole command line (`run` given or not): what `run --interface` must not
/// contradict.
pub fn given_run_options(matches: &ArgMatches) -> Vec<String> {
    let m = matches.subcommand_matches("run").unwrap_or(matches);
    m.ids()
        // Clap also names the group it makes of the struct's arguments.
        .filter(|id| id.as_str() != "RunArgs")
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.as_str().to_string())
        .collect()
}

/// A network interface name, as the kernel allows one.
fn parse_ifname(s: &str) -> Result<String, String> {
    crate::topology::check_ifname(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// A percentage threshold: a finite number, at least 0.
fn parse_pct(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a percentage: {e}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s} is not a percentage of at least 0"));
    }
    Ok(v)
}

/// A virtqueue size: a power of two from 1 to 32768 (virtio 1.2 §2.7).
fn parse_queue_size(s: &str) -> Result<u16, String> {
    let n: u16 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a queue size: {e}"))?;
    if n == 0 || !n.is_power_of_two() || n > 32_768 {
        return Err(format!("{n} is not a power of two from 1 to 32768"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::ValueEnum;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let a = RunArgs::default();
        assert_eq!(a.modes, [Selector::All]);
        assert_eq!(a.workloads, [Workload::Tx, Workload::Rx, Workload::Rr]);
        assert_eq!(a.sizes, [64, 1500]);
        assert_eq!((a.duration_ms, a.repeat), (1000, 3));
        assert_eq!(a.batch, [64]);
        assert!(!a.guest_poll);
        assert_eq!(a.busy_poll_us, [0]);
        assert_eq!((a.guest_mem_mb, a.queue_size), (64, 256));
        assert!(a.event_idx && a.mrg_rxbuf && !a.indirect && !a.json);
        assert_eq!((a.out, a.rate_pps), (None, None));
        assert_eq!(
            (a.vf_backend.is_empty(), a.pf.as_str(), a.vfs),
            (true, "pf0", None)
        );
        assert!(!a.lockstep && a.lockstep_counter.is_none());
        assert_eq!(a.lockstep_packets, 65_536);
    }

    #[test]
    fn lockstep_options() {
        let c = Cli::try_parse_from([
            "vhostbench",
            "run",
            "--lockstep",
            "--lockstep-counter",
            "callgrind",
            "--lockstep-packets",
            "1000",
        ])
        .expect("parse");
        let Command::Run(a) = c.into_command() else {
            panic!("expected run");
        };
        assert!(a.lockstep);
        assert_eq!(a.lockstep_counter, Some(crate::results::Counter::Callgrind));
        assert_eq!(a.lockstep_packets, 1000);
        for bad in [
            &["vhostbench", "run", "--lockstep-counter", "callgrind"][..],
            &[
                "vhostbench",
                "run",
                "--lockstep",
                "--lockstep-counter",
                "rdtsc",
            ],
            &["vhostbench", "run", "--lockstep", "--lockstep-packets", "0"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} parsed");
        }
        // The hidden subcommand a callgrind run uses.
        let c =
            Cli::try_parse_from(["vhostbench", "lockstep-step", "--step", "{}"]).expect("parse");
        assert!(matches!(c.into_command(), Command::LockstepStep(_)));
    }

    #[test]
    fn given_options_are_told_from_defaults() {
        for (line, want) in [
            (
                &["vhostbench", "--queue-size", "512"][..],
                &["queue_size"][..],
            ),
            (
                &["vhostbench", "run", "--no-event-idx", "--modes", "null"],
                &["event_idx", "modes"],
            ),
            (&["vhostbench", "run"], &[]),
        ] {
            let m = Cli::command().try_get_matches_from(line).expect("parse");
            let mut got = given_run_options(&m);
            got.sort();
            assert_eq!(got, want, "{line:?}");
        }
        let c = Cli::try_parse_from(["vhostbench", "interface", "x.xml", "--network", "n.xml"])
            .expect("parse");
        assert!(matches!(c.into_command(), Command::Interface(_)));
        assert!(Cli::try_parse_from(["vhostbench", "run", "--network", "n.xml"]).is_err());
    }

    #[test]
    fn direct_vf_options() {
        let c = Cli::try_parse_from([
            "vhostbench",
            "run",
            "--vf-backend",
            "af-xdp",
            "--pf",
            "ens1f0",
            "--vfs",
            "8",
        ])
        .expect("parse");
        let Command::Run(a) = c.into_command() else {
            panic!("expected run");
        };
        assert_eq!(a.vf_backend, [VfBackend::AfXdp]);
        assert_eq!((a.pf.as_str(), a.vfs), ("ens1f0", Some(8)));
        for b in VfBackend::value_variants() {
            let v = serde_json::to_value(b).expect("serialize");
            assert_eq!(v, b.name(), "serde and the name agree");
            let p = b.to_possible_value().expect("value");
            assert_eq!(p.get_name(), b.name(), "clap and the name agree");
        }
    }

    #[test]
    fn no_subcommand_is_run() {
        let c = Cli::try_parse_from(["vhostbench"]).expect("parse");
        assert!(matches!(c.into_command(), Command::Run(_)));
        let c = Cli::try_parse_from([
            "vhostbench",
            "--modes",
            "null,tap-vhost",
            "--busy-poll-us",
            "0,50",
            "--no-event-idx",
        ])
        .expect("parse");
        let Command::Run(a) = c.into_command() else {
            panic!("expected run");
        };
        let names: Vec<&str> = a.modes.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["null", "tap-vhost"]);
        assert_eq!(a.busy_poll_us, [0, 50]);
        assert!(!a.event_idx);
    }

    #[test]
    fn compare_and_export_options() {
        let c = Cli::try_parse_from(["vhostbench", "compare", "a.json", "b.json"]).expect("parse");
        let Command::Compare(a) = c.into_command() else {
            panic!("expected compare");
        };
        assert_eq!(
            (a.base, a.new, a.max_regression, a.format),
            (
                PathBuf::from("a.json"),
                PathBuf::from("b.json"),
                5.0,
                crate::compare::Format::Text
            )
        );
        let c = Cli::try_parse_from([
            "vhostbench",
            "compare",
            "a.json",
            "b.json",
            "--max-regression",
            "2.5",
            "--format",
            "markdown",
        ])
        .expect("parse");
        assert!(matches!(
            c.into_command(),
            Command::Compare(CompareArgs {
                max_regression: 2.5,
                format: crate::compare::Format::Markdown,
                ..
            })
        ));
        for (name, format) in [
            (
                "github-action-benchmark",
                crate::export::Format::GithubActionBenchmark,
            ),
            ("bencher", crate::export::Format::Bencher),
            ("markdown", crate::export::Format::Markdown),
            ("csv", crate::export::Format::Csv),
        ] {
            let c = Cli::try_parse_from(["vhostbench", "export", "r.json", "--format", name])
                .expect("parse");
            let Command::Export(a) = c.into_command() else {
                panic!("expected export");
            };
            assert_eq!((a.file, a.format), (PathBuf::from("r.json"), format));
        }
        for bad in [
            &["vhostbench", "compare", "a.json"][..],
            &["vhostbench", "compare", "a", "b", "--max-regression", "-1"],
            &["vhostbench", "compare", "a", "b", "--max-regression", "inf"],
            &["vhostbench", "compare", "a", "b", "--format", "csv"],
            &["vhostbench", "export", "r.json"],
            &["vhostbench", "export", "r.json", "--format", "xml"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn subcommands_and_bad_input() {
        let c = Cli::try_parse_from(["vhostbench", "limits", "--repeat", "5"]).expect("parse");
        assert!(matches!(
            c.into_command(),
            Command::Limits(LimitsArgs { repeat: 5, .. })
        ));
        for bad in [
            &["vhostbench", "run", "--queue-size", "300"][..],
            &["vhostbench", "run", "--queue-size", "65536"],
            &["vhostbench", "run", "--sizes", "64,x"],
            &["vhostbench", "run", "--workloads", "tx,zz"],
            &["vhostbench", "limits", "--repeat", "0"],
            &["vhostbench", "--modes", "null", "limits"],
            &["vhostbench", "--modes", "tap"],
            &["vhostbench", "run", "--vf-backend", "tap"],
            &["vhostbench", "run", "--pf", "a/b"],
            &["vhostbench", "run", "--vfs", "0"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} parsed");
        }
    }
}
