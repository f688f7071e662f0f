//! Feature negotiation (virtio 1.2 §3.1.1 and §5.1.3.1): the device offers a set, the driver
//! acknowledges a subset, and the result must be a set the spec allows.

use vring::net::{bit, FeatureError, Features};

/// What this device offers by default: everything implemented.
pub const DEFAULT_OFFER: Features = Features::SUPPORTED;

/// Checks the driver's `acked` set against the device's `offered` one and the spec's
/// dependency rules, and returns the negotiated set.
pub fn negotiate(offered: Features, acked: Features) -> Result<Features, FeatureError> {
    if !acked.is_subset_of(offered) {
        return Err(FeatureError::NotOffered(acked.0 & !offered.0));
    }
    acked.check_dependencies()?;
    Ok(acked)
}

/// The per-queue consequences of a negotiated set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The negotiated features.
    pub features: Features,
}

impl NetConfig {
    /// Wraps a negotiated set.
    pub fn new(features: Features) -> Self {
        NetConfig { features }
    }
    /// Mergeable RX buffers.
    pub fn mrg_rxbuf(&self) -> bool {
        self.features.has(bit::MRG_RXBUF)
    }
    /// Event-index notification suppression.
    pub fn event_idx(&self) -> bool {
        self.features.has(bit::RING_EVENT_IDX)
    }
    /// Indirect descriptors.
    pub fn indirect(&self) -> bool {
        self.features.has(bit::RING_INDIRECT_DESC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_a_valid_subset() {
        let acked = Features::of(&[bit::VERSION_1, bit::RING_EVENT_IDX, bit::MRG_RXBUF]);
        let got = negotiate(DEFAULT_OFFER, acked).expect("valid");
        let cfg = NetConfig::new(got);
        assert!(cfg.event_idx() && cfg.mrg_rxbuf() && !cfg.indirect());
    }

    #[test]
    fn negotiation_rejects_unoffered_and_inconsistent_sets() {
        let offer = Features::of(&[bit::VERSION_1, bit::CSUM]);
        let acked = Features::of(&[bit::VERSION_1, bit::MRG_RXBUF]);
        assert_eq!(
            negotiate(offer, acked),
            Err(FeatureError::NotOffered(1 << bit::MRG_RXBUF))
        );
        let acked = Features::of(&[bit::VERSION_1, bit::HOST_TSO4]);
        assert!(matches!(
            negotiate(DEFAULT_OFFER, acked),
            Err(FeatureError::MissingDependency { .. })
        ));
        assert_eq!(
            negotiate(DEFAULT_OFFER, Features::of(&[bit::CSUM])),
            Err(FeatureError::NoVersion1)
        );
    }
}
