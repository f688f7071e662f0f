//! `vhost-user`: guest-sim as a vhost-user frontend ([`guest_sim::vhost_user`]) in front of a
//! vhost-user net backend: the engine served in this process on a private socket (the same
//! worker and null backend as `null`, reached through the protocol: memory and eventfds
//! passed as fds, rings given as frontend addresses), or any backend listening on `--socket
//! PATH` (DPDK's vhost PMD, another `vhostbench serve`).
//!
//! The features are negotiated with the backend, and the guest runs with what was agreed
//! (a feature the run asked for and the backend lacks is named in the row's notes). The run
//! stops the device with `GET_VRING_BASE`, as a VMM does when it stops a guest's NIC.
//!
//! Counting: the engine's counters when it is the backend; for a backend outside the process,
//! what the backend returned to the guest (TX buffers it consumed, RX frames it delivered),
//! said so in the notes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use engine::backend::Backend;
use engine::device::{DeviceReport, DeviceSpec};
use engine::metrics::DeviceMetrics;
use engine::vhost_user::{NetServer, Server};
use engine::worker::WorkerConfig;
use guest_sim::vhost_user::Frontend;
use vring::net::bit;

use super::null::Null;
use super::Mode;
use crate::ceilings::Ceiling;
use crate::pair::{self, null_backend, PairConfig, RunOutcome, Served};
use crate::results::Workload;
use crate::topology::Privileges;

/// See the module documentation.
#[derive(Debug)]
pub struct VhostUser;

/// How long connecting and each reply may take.
const PATIENCE: Duration = Duration::from_secs(5);

/// A backend behind a frontend connection, serving the run's device.
struct Peer {
    fe: Frontend,
    metrics: Arc<DeviceMetrics>,
    /// The engine, when it is the backend (stopped after the frontend has stopped it).
    server: Option<Server>,
}

impl Served for Peer {
    fn metrics(&self) -> Arc<DeviceMetrics> {
        self.metrics.clone()
    }

    fn stop(mut self: Box<Self>) -> DeviceReport {
        let mut report = DeviceReport::default();
        if let Err(e) = self.fe.stop() {
            report.fatal = Some(format!("stopping the queues (GET_VRING_BASE): {e}"));
        }
        if let Some(server) = self.server.take() {
            let mut st = server.state();
            // The engine's own report of the device the frontend just stopped.
            if let Some(r) = st.reports.pop() {
                report.queue_failures = r.queue_failures;
                report.cpu_ns = r.cpu_ns;
                report.backend_stats = r.backend_stats;
                report.fatal = report.fatal.or(r.fatal);
            }
            if st.stats.refused > 0 {
                let why = st.stats.last_refusal.clone().unwrap_or_default();
                report
                    .fatal
                    .get_or_insert(format!("the server refused a request: {why}"));
            }
            drop(st);
            if let Err(e) = server.shutdown() {
                report
                    .fatal
                    .get_or_insert(format!("stopping the server: {e}"));
            }
        }
        report
    }
}

/// A private socket path for the in-process server.
fn private_socket() -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("vhb-{}-vu{n}.sock", std::process::id()))
}

impl Mode for VhostUser {
    fn name(&self) -> &'static str {
        "vhost-user"
    }

    fn unavailable(&self, _host: &Privileges) -> Option<String> {
        None
    }

    /// The engine through the protocol is the engine: the same ceilings as `null`.
    fn ceiling(&self, workload: Workload, size: u32) -> Option<Ceiling> {
        Null.ceiling(workload, size)
    }

    /// As `null`'s: the ring whose two sides sleep, when neither polls.
    fn sleeping_ceiling(&self, workload: Workload, size: u32, queue: u16) -> Option<Ceiling> {
        Null.sleeping_ceiling(workload, size, queue)
    }

    fn vs_emulated(&self) -> bool {
        false
    }

    fn in_all(&self) -> bool {
        false
    }

    /// Its device, when the engine serves it, is `null`'s worker and backend; what vhost-user
    /// adds is set-up over a socket with a second side, which has no per-packet work to step.
    fn lockstep_backend(&self, _cfg: &PairConfig) -> Result<Box<dyn Backend>, String> {
        Err(
            "its per-packet path is null's (the protocol only sets it up, over a socket to \
             another side): step null instead"
                .into(),
        )
    }

    fn run(&self, cfg: &PairConfig) -> Result<RunOutcome> {
        let (server, path) = match &cfg.socket {
            Some(p) => (None, p.clone()),
            None => {
                let path = private_socket();
                let backend = null_backend(cfg);
                let mut once = Some(backend);
                let factory: engine::vhost_user::BackendFactory =
                    Box::new(move |_, _, pairs| match (pairs, once.take()) {
                        (1, Some(b)) => Ok(vec![Box::new(b) as Box<dyn engine::backend::Backend>]),
                        _ => Err(std::io::Error::other(
                            "one device with one queue pair per run",
                        )),
                    });
                let wcfg = WorkerConfig {
                    name: "0".into(),
                    core: cfg.worker_core,
                    batch: cfg.batch,
                    busy_poll_us: cfg.busy_poll_us,
                    ..WorkerConfig::default()
                };
                let s = Server::start(&path, NetServer::new(1, factory, wcfg))
                    .context("starting the in-process vhost-user server")?;
                (Some(s), path)
            }
        };
        let mut fe = Frontend::connect(&path, PATIENCE)
            .with_context(|| format!("vhost-user backend at {}", path.display()))?;
        let agreed = fe
            .negotiate(cfg.features())
            .context("feature negotiation")?;
        let mut notes = Vec::new();
        let mut run_cfg = cfg.clone();
        run_cfg.event_idx = agreed.has(bit::RING_EVENT_IDX);
        run_cfg.mrg_rxbuf = agreed.has(bit::MRG_RXBUF);
        run_cfg.in_order = agreed.has(bit::IN_ORDER);
        run_cfg.indirect = agreed.has(bit::RING_INDIRECT_DESC);
        let missing = cfg.features().0 & !agreed.0;
        if missing != 0 {
            notes.push(format!(
                "the backend does not offer features {missing:#x}; ran without them"
            ));
        }
        let external = server.is_none();
        let mut o = pair::run_served(&run_cfg, move |spec: DeviceSpec, _| {
            fe.set_mem_table(&spec.mem).context("SET_MEM_TABLE")?;
            fe.start(&spec.pairs, &[0, 0])
                .context("starting the queues")?;
            let metrics = match &server {
                Some(s) => s
                    .state()
                    .device()
                    .map(|d| d.metrics().clone())
                    .context("the in-process server did not start the device")?,
                None => Arc::new(DeviceMetrics::default()),
            };
            Ok(Box::new(Peer {
                fe,
                metrics,
                server,
            }) as Box<dyn Served>)
        })?;
        if external {
            // A backend outside the process counts nothing we can read here: what it returned
            // to the guest is what it took and delivered.
            let m = &o.metrics;
            let took = o.guest.sent.saturating_sub(o.guest.tx_unreturned);
            m.tx.packets
                .store(took, std::sync::atomic::Ordering::Relaxed);
            m.rx.packets
                .store(o.guest.received, std::sync::atomic::Ordering::Relaxed);
            notes.push(format!(
                "counts from the guest's side: the backend at {} reports none",
                path.display()
            ));
        }
        o.notes.extend(notes);
        o.backend = Some(if external { "external" } else { "engine" });
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pair::test_config;
    use guest_sim::traffic::Workload as W;

    #[test]
    fn every_workload_crosses_the_in_process_server_exactly_once() {
        for w in [W::Tx, W::Rx, W::Rr] {
            let o = VhostUser.run(&test_config(w)).expect("run");
            assert!(o.worker.fatal.is_none(), "{w:?}: {:?}", o.worker.fatal);
            assert!(o.worker.queue_failures.is_empty(), "{w:?}");
            assert_eq!(o.backend, Some("engine"));
            assert!(o.notes.is_empty(), "{w:?}: {:?}", o.notes);
            assert!(o.received(w) > 0, "{w:?}");
            assert_eq!(o.lost(w), 0, "{w:?}");
            assert_eq!(o.dropped(), 0, "{w:?}");
            assert_eq!(o.guest.rx_corrupt + o.guest.rx_out_of_order, 0, "{w:?}");
        }
    }

    #[test]
    fn a_backend_that_is_not_there_is_a_clear_error() {
        let mut c = test_config(W::Tx);
        c.socket = Some(std::env::temp_dir().join("vhb-no-such-backend.sock"));
        let e = VhostUser.run(&c).expect_err("nobody listens");
        assert!(
            format!("{e:#}").contains("vhb-no-such-backend.sock"),
            "{e:#}"
        );
    }

    #[test]
    fn all_leaves_it_out_and_naming_it_runs_it() {
        let host = crate::topology::probe();
        let r = super::super::resolve(&[super::super::Selector::All], &host).expect("all");
        assert!(r.run.iter().all(|m| m.name() != "vhost-user"));
        let one: super::super::Selector = "vhost-user".parse().expect("named");
        let r = super::super::resolve(&[one], &host).expect("named");
        assert_eq!(r.run.len(), 1);
    }
}
