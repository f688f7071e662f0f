//! The test frames both sides agree on: an Ethernet header, a sequence number, a send
//! timestamp and a fixed byte pattern, so the receiving side can check that every frame arrived
//! exactly once (sequence numbers) with the right bytes (the pattern). The pattern does not
//! depend on the sequence number, so a sender rewrites only 16 bytes per frame, as a real
//! guest reusing a buffer would.
//!
//! Layout (all little-endian past the Ethernet header):
//!
//! | bytes | field |
//! |---|---|
//! | 0..6 | destination MAC (locally administered) |
//! | 6..12 | source MAC |
//! | 12..14 | EtherType 0x88b5 (IEEE local experimental) |
//! | 14..22 | sequence number |
//! | 22..30 | sender timestamp, ns (for round trips) |
//! | 30.. | `pattern(i)` |

/// Smallest frame that holds the fields: an Ethernet minimum frame without FCS is 60 bytes,
/// but 30 is enough for the fields.
pub const MIN_FRAME: usize = 30;
/// EtherType used: IEEE 802 local experimental 1.
pub const ETHERTYPE: u16 = 0x88b5;
const SEQ: usize = 14;
/// Where the per-frame fields (sequence, then timestamp) start.
pub const SEQ_OFFSET: usize = SEQ;
const TS: usize = 22;
const PAYLOAD: usize = 30;

/// Destination MAC of test frames.
pub const DST_MAC: [u8; 6] = [0x02, 0x76, 0x68, 0x62, 0x00, 0x02];
/// Source MAC of test frames.
pub const SRC_MAC: [u8; 6] = [0x02, 0x76, 0x68, 0x62, 0x00, 0x01];

#[inline]
fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(7)
}

/// Writes a whole test frame into `buf` (its full length is the frame).
pub fn fill(buf: &mut [u8], seq: u64, ts_ns: u64) {
    if buf.len() < MIN_FRAME {
        return;
    }
    buf[0..6].copy_from_slice(&DST_MAC);
    buf[6..12].copy_from_slice(&SRC_MAC);
    buf[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    for (i, b) in buf[PAYLOAD..].iter_mut().enumerate() {
        *b = pattern(i);
    }
    stamp(buf, seq, ts_ns);
}

/// Rewrites only the per-frame fields (sequence, timestamp) of a frame built by [`fill`].
#[inline]
pub fn stamp(buf: &mut [u8], seq: u64, ts_ns: u64) {
    if buf.len() < MIN_FRAME {
        return;
    }
    buf[SEQ..SEQ + 8].copy_from_slice(&seq.to_le_bytes());
    buf[TS..TS + 8].copy_from_slice(&ts_ns.to_le_bytes());
}

/// The sequence number of a frame, if it is long enough and carries the test EtherType.
#[inline]
pub fn seq(buf: &[u8]) -> Option<u64> {
    if buf.len() < MIN_FRAME || buf[12..14] != ETHERTYPE.to_be_bytes() {
        return None;
    }
    Some(u64::from_le_bytes(buf[SEQ..SEQ + 8].try_into().ok()?))
}

/// The sender timestamp of a frame.
#[inline]
pub fn timestamp(buf: &[u8]) -> Option<u64> {
    stamps(buf).map(|(_, ts)| ts)
}

/// The sequence number and the sender timestamp of a frame, read together (one check of
/// length and EtherType for both).
#[inline]
pub fn stamps(buf: &[u8]) -> Option<(u64, u64)> {
    let s = seq(buf)?;
    Some((s, u64::from_le_bytes(buf[TS..TS + 8].try_into().ok()?)))
}

/// Whether every byte of `buf` is what [`fill`] writes for its sequence number (any
/// timestamp, either direction of the MAC addresses).
pub fn verify(buf: &[u8]) -> bool {
    if seq(buf).is_none() {
        return false;
    }
    let macs_ok = (buf[0..6] == DST_MAC && buf[6..12] == SRC_MAC)
        // Sent back by an echoing peer, addresses swapped.
        || (buf[0..6] == SRC_MAC && buf[6..12] == DST_MAC);
    macs_ok
        && buf[PAYLOAD..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_verify_and_detect_corruption() {
        let mut b = vec![0u8; 64];
        fill(&mut b, 42, 7);
        assert_eq!(seq(&b), Some(42));
        assert_eq!(timestamp(&b), Some(7));
        assert_eq!(stamps(&b), Some((42, 7)));
        assert!(verify(&b));
        stamp(&mut b, 43, 8);
        assert!(verify(&b));
        b[50] ^= 1;
        assert!(!verify(&b));
        assert_eq!(seq(&b[..20]), None);
        assert_eq!(stamps(&b[..20]), None);
        assert!(!verify(&b[..5]));
    }
}
