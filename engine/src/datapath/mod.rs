//! The data path of one queue pair, with no thread of its own: [`NetQueuePair`] moves frames
//! between a pair's TX and RX rings and that pair's backend. The vhost worker
//! ([`crate::worker`]) drives a list of them from one thread; a vhost-user server drives the
//! same type (cloud-hypervisor's `net_util::queue_pair` plays this part for its in-VMM device
//! and its vhost-user daemon alike).

mod queue_pair;
mod slowdown;

pub(crate) use queue_pair::{queue_failed, Ran};
pub use queue_pair::{NetQueuePair, PairConfig};
pub use slowdown::TEST_SLOWDOWN_ITERATIONS;
