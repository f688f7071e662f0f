//! The virtio-net header codec and feature negotiation: the `net_header` target.
//!
//! - Every 12-byte window of the input is decoded with `VirtioNetHdr::from_bytes`; encoding it
//!   again must give the same bytes, and decoding those the same header.
//! - The input is also read as (offered, acked, mode) triples for `net::device::negotiate`. A
//!   success must be exactly `acked`, a subset of `offered`, and pass `check_dependencies`; a
//!   failure must be the right one (`NotOffered` with exactly the extra bits, or the
//!   dependency error `check_dependencies` gives).

use arbitrary::{Arbitrary, Unstructured};

use engine::net::device::{negotiate, NetConfig, DEFAULT_OFFER};
use vring::net::{bit, FeatureError, Features, VirtioNetHdr};

/// An (offered, acked) feature pair, as a driver might ack.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Pair {
    /// Anything.
    Raw {
        /// What the device offers.
        offered: u64,
        /// What the driver acks.
        acked: u64,
    },
    /// A driver that acks only what was offered (so dependencies decide).
    Subset {
        /// What the device offers.
        offered: u64,
        /// Which of them the driver acks.
        mask: u64,
    },
    /// The device's default offer; acks within it, VERSION_1 forced on or off.
    Default {
        /// Which of the offered bits the driver acks.
        mask: u64,
        /// `VERSION_1` acked.
        v1: bool,
    },
}

impl Pair {
    /// The (offered, acked) sets.
    pub fn get(self) -> (Features, Features) {
        match self {
            Pair::Raw { offered, acked } => (Features(offered), Features(acked)),
            Pair::Subset { offered, mask } => (Features(offered), Features(offered & mask)),
            Pair::Default { mask, v1 } => (
                DEFAULT_OFFER,
                Features(DEFAULT_OFFER.0 & mask).with(bit::VERSION_1, v1),
            ),
        }
    }
}

/// Decoding and encoding `b` are each other's inverse, and the fields are where the spec
/// puts them.
pub fn check_header(b: &[u8; 12]) {
    let h = VirtioNetHdr::from_bytes(b);
    assert_eq!(&h.to_bytes(), b, "to_bytes(from_bytes(b)) != b");
    assert_eq!(VirtioNetHdr::from_bytes(&h.to_bytes()), h);
    assert_eq!(h.flags, b[0]);
    assert_eq!(h.gso_type, b[1]);
    let at = VirtioNetHdr::NUM_BUFFERS_OFFSET;
    assert_eq!(h.num_buffers, u16::from_le_bytes([b[at], b[at + 1]]));
}

/// `negotiate(offered, acked)` succeeds with exactly `acked`, or fails with the right error.
pub fn check_negotiation(offered: Features, acked: Features) {
    match negotiate(offered, acked) {
        Ok(f) => {
            assert_eq!(f, acked, "negotiated set is not what the driver acked");
            assert!(
                f.is_subset_of(offered),
                "negotiated {f:?} not offered {offered:?}"
            );
            assert_eq!(
                f.check_dependencies(),
                Ok(()),
                "negotiated an invalid set {f:?}"
            );
            let cfg = NetConfig::new(f);
            assert_eq!(cfg.mrg_rxbuf(), f.has(bit::MRG_RXBUF));
            assert_eq!(cfg.event_idx(), f.has(bit::RING_EVENT_IDX));
            assert_eq!(cfg.indirect(), f.has(bit::RING_INDIRECT_DESC));
        }
        Err(FeatureError::NotOffered(extra)) => {
            assert_ne!(extra, 0, "NotOffered with no extra bits");
            assert_eq!(
                extra,
                acked.0 & !offered.0,
                "NotOffered names the wrong bits"
            );
        }
        Err(e) => {
            assert!(acked.is_subset_of(offered), "{e:?} hides NotOffered");
            assert_eq!(
                acked.check_dependencies(),
                Err(e),
                "wrong negotiation error"
            );
        }
    }
}

/// Most pairs one input is read as.
pub const MAX_PAIRS: usize = 64;

/// Every 12-byte window of `data` through [`check_header`], then `data` read as up to
/// [`MAX_PAIRS`] feature pairs through [`check_negotiation`].
///
/// # Panics
///
/// When an oracle does not hold: that is a bug found.
pub fn replay(data: &[u8]) {
    for w in data.windows(12) {
        check_header(w.try_into().expect("12-byte window"));
    }
    let mut u = Unstructured::new(data);
    for _ in 0..MAX_PAIRS {
        if u.is_empty() {
            break;
        }
        let Ok(p) = Pair::arbitrary(&mut u) else {
            break;
        };
        let (offered, acked) = p.get();
        check_negotiation(offered, acked);
    }
}
