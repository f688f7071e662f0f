//! Hand-written `net_header` inputs through the fuzz target's own replay and oracles.

use engine::net::device::{negotiate, DEFAULT_OFFER};
use fuzz_common::net_header::{check_header, check_negotiation, replay};
use vring::net::{bit, FeatureError, Features, VirtioNetHdr};

#[test]
fn headers_survive_decode_and_encode() {
    let mut with_buffers = [0u8; 12];
    with_buffers[VirtioNetHdr::NUM_BUFFERS_OFFSET..][..2].copy_from_slice(&3u16.to_le_bytes());
    for b in [
        [0u8; 12],
        [0xff; 12],
        // NEEDS_CSUM, TCPv4 GSO, header 54, segment 1448, checksum at 34 + 16.
        [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0],
        with_buffers,
    ] {
        check_header(&b);
    }
}

#[test]
fn negotiation_outcomes() {
    let all = Features(u64::MAX);
    let v1 = Features::of(&[bit::VERSION_1]);
    let cases = [
        // What a Linux guest acks of the default offer.
        (DEFAULT_OFFER, DEFAULT_OFFER, Ok(DEFAULT_OFFER)),
        (DEFAULT_OFFER, v1, Ok(v1)),
        // A bit that was not offered.
        (
            v1,
            v1.with(bit::MRG_RXBUF, true),
            Err(FeatureError::NotOffered(1 << bit::MRG_RXBUF)),
        ),
        // Offered, but without what it depends on.
        (
            all,
            v1.with(bit::HOST_TSO4, true),
            Err(FeatureError::MissingDependency {
                feature: "HOST_TSO4",
                needs: "CSUM",
            }),
        ),
        // A legacy driver.
        (all, Features(0), Err(FeatureError::NoVersion1)),
    ];
    for (offered, acked, want) in cases {
        assert_eq!(negotiate(offered, acked), want, "{offered:?} {acked:?}");
        check_negotiation(offered, acked);
    }
}

#[test]
fn fixed_byte_inputs() {
    let inputs: [&[u8]; 5] = [
        &[],
        &[0; 11],
        &[0xff; 100],
        &[1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0, 7],
        &[0x5a; 4096],
    ];
    for data in inputs {
        replay(data);
    }
    let counting: Vec<u8> = (0..=255).collect();
    replay(&counting);
}
