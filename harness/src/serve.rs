//! `vhostbench serve`: the engine as a vhost-user net backend on a Unix socket, for any
//! vhost-user frontend (QEMU's `-netdev vhost-user`, DPDK's virtio-user PMD, or `vhostbench
//! run --modes vhost-user`). One frontend at a time; one that disconnects may come back.
//!
//! Backends:
//! - `null`: no kernel I/O; TX frames are taken and counted (`--null sink`), RX frames are
//!   made up (`--null source`), or TX frames are sent back as RX (`--null reflect`);
//! - `tap`: a tap on bridge `br0` with a veth uplink, in a private namespace (the tap modes'
//!   topology): frames the guest sends end at the uplink's wire end.
//!
//! It runs until SIGINT/SIGTERM (or `--duration-ms`), then prints what it served.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use engine::backend::null::{NullBackend, NullMode};
use engine::backend::tap::tap_backend;
use engine::backend::Backend;
use engine::vhost_user::{NetServer, Server};
use engine::worker::WorkerConfig;

use crate::topology::{self, Netns};

/// What the served device's worker moves frames to and from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServeBackend {
    /// No kernel I/O (see `--null`).
    Null,
    /// A tap on a bridge with an uplink, in a private namespace.
    Tap,
}

/// What the null backend does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NullRole {
    /// Takes TX frames and counts them.
    Sink,
    /// Produces RX frames of `--frame-len` bytes as fast as the guest takes them.
    Source,
    /// Sends TX frames back as RX.
    Reflect,
}

/// Options of `vhostbench serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// The vhost-user socket to listen on (a stale socket file there is replaced).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The device's backend.
    #[arg(long, value_enum, default_value_t = ServeBackend::Null)]
    pub backend: ServeBackend,
    /// With `--backend null`: what it does.
    #[arg(long = "null", value_enum, default_value_t = NullRole::Sink)]
    pub null_role: NullRole,
    /// Frame length of `--null source` frames (Ethernet header included).
    #[arg(long, default_value_t = 64)]
    pub frame_len: usize,
    /// Chains per backend submission (`VHOST_NET_BATCH`, at most 64).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub batch: u64,
    /// Worker busy-poll window (µs); 0: notifications only.
    #[arg(long, default_value_t = 0)]
    pub busy_poll_us: u64,
    /// Core to pin the worker to.
    #[arg(long)]
    pub core: Option<usize>,
    /// Stop after this long (ms); default: until SIGINT/SIGTERM.
    #[arg(long)]
    pub duration_ms: Option<u64>,
}

/// Runs `vhostbench serve`.
pub fn main(args: ServeArgs) -> Result<()> {
    let ns;
    let factory: engine::vhost_user::BackendFactory = match args.backend {
        ServeBackend::Null => {
            let mode = match args.null_role {
                NullRole::Sink => NullMode::Sink,
                NullRole::Source => NullMode::Source {
                    frame_len: args.frame_len,
                },
                NullRole::Reflect => NullMode::Reflect { capacity: 1024 },
            };
            println!("serve: null backend ({:?})", args.null_role);
            Box::new(move |_, _, pairs| {
                Ok((0..pairs)
                    .map(|_| Box::new(NullBackend::new(mode, false)) as Box<dyn Backend>)
                    .collect())
            })
        }
        ServeBackend::Tap => {
            let p = topology::probe();
            anyhow::ensure!(p.can_run, "--backend tap: {}", p.summary());
            ns = Netns::create().context("network namespace")?;
            let tap = topology::open_tap(&ns, "tap0", 0)?;
            topology::bridge_with_uplink(&ns, "br0", &["tap0"])?;
            println!(
                "serve: tap backend: tap0 on br0 with uplink {} in namespace {}",
                topology::UPLINK_WIRE,
                ns.name()
            );
            let batch = args.batch as usize;
            let file = tap.file;
            Box::new(move |mem: &Arc<_>, features, pairs| {
                if pairs != 1 {
                    return Err(std::io::Error::other(
                        "the tap backend serves one queue pair",
                    ));
                }
                let be = tap_backend(file.try_clone()?, mem.clone(), batch, features)?;
                Ok(vec![Box::new(be) as Box<dyn Backend>])
            })
        }
    };
    let cfg = WorkerConfig {
        name: "vu".into(),
        core: args.core,
        batch: args.batch as usize,
        busy_poll_us: args.busy_poll_us,
        ..WorkerConfig::default()
    };
    let server = Server::start(&args.socket, NetServer::new(1, factory, cfg))
        .with_context(|| format!("listening on {}", args.socket.display()))?;
    println!("serve: listening on {}", args.socket.display());
    let until = args
        .duration_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut last = engine::vhost_user::Served::default();
    let mut last_print = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let now = server.state().served();
            if now != last {
                let secs = last_print.elapsed().as_secs_f64();
                println!(
                    "serve: tx {} rx {} drops {} ({:.3} Mpps tx, {:.3} Mpps rx)",
                    now.tx_packets,
                    now.rx_packets,
                    now.drops,
                    (now.tx_packets - last.tx_packets) as f64 / secs / 1e6,
                    (now.rx_packets - last.rx_packets) as f64 / secs / 1e6,
                );
            }
            last = now;
            last_print = Instant::now();
        }
    }
    let s = server.state();
    let total = s.served();
    println!(
        "serve: tx {} rx {} drops {} in total",
        total.tx_packets, total.rx_packets, total.drops
    );
    println!(
        "serve: {} connections, {} device starts, {} requests refused{}",
        s.stats.connections,
        s.stats.starts,
        s.stats.refused,
        s.stats
            .last_refusal
            .as_ref()
            .map(|r| format!(" (last: {r})"))
            .unwrap_or_default()
    );
    drop(s);
    server.shutdown().context("stopping the server")?;
    Ok(())
}
