//! Oracles for a popped chain: what every chain the device hands out must satisfy, whatever
//! the guest wrote.

use engine::virtq::{Chain, MAX_SEGMENTS};
use vring::{GuestMemory, Span};

use super::{MAX_COMPARE, REGIONS};

/// A segment is non-empty, inside the mapping and inside one region.
fn check_segment(mem: &GuestMemory, s: Span, what: &str) {
    assert!(s.len > 0, "{what}: empty segment {s:?}");
    assert!(
        mem.host_ptr(s).is_ok(),
        "{what}: segment {s:?} outside the mapping"
    );
    let end = s.off + s.len;
    assert!(
        mem.host_regions()
            .any(|r| s.off >= r.off && end <= r.off + r.len),
        "{what}: segment {s:?} is not inside one region"
    );
}

/// Reads the bytes of `segs`, concatenated.
fn gather(mem: &GuestMemory, segs: &[Span]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segs {
        let at = out.len();
        out.resize(at + s.len, 0);
        mem.read_at(s.off, &mut out[at..])
            .expect("segment is mapped");
    }
    out
}

/// The chain's head is in range; its segments are good, add up to `readable_len` and
/// `writable_len`, and are no more than its descriptors and `MAX_SEGMENTS`; the copy helpers
/// from byte `skip` agree with them (and `write_from` is tried when `write`).
pub(super) fn check_chain(mem: &GuestMemory, chain: &Chain, size: u16, skip: usize, write: bool) {
    assert!(chain.head() < size, "head {} >= size {size}", chain.head());
    let mut r = 0u64;
    for &s in chain.readable() {
        check_segment(mem, s, "readable");
        r += s.len as u64;
    }
    let mut w = 0u64;
    for &s in chain.writable() {
        check_segment(mem, s, "writable");
        w += s.len as u64;
    }
    assert_eq!(
        r,
        chain.readable_len() as u64,
        "readable_len != sum of segments"
    );
    assert_eq!(
        w,
        chain.writable_len() as u64,
        "writable_len != sum of segments"
    );
    let segs = chain.readable().len() + chain.writable().len();
    assert!(
        chain.descriptors() >= 1,
        "a chain has at least one descriptor"
    );
    // A buffer is one segment per region it crosses.
    assert!(
        segs <= chain.descriptors() as usize * REGIONS.len(),
        "{segs} segments from {} descriptors",
        chain.descriptors()
    );
    assert!(segs <= MAX_SEGMENTS, "{segs} segments > MAX_SEGMENTS");

    // The copy helpers agree with the segments.
    let mut rf = 0u64;
    for s in chain.readable_from(skip) {
        check_segment(mem, s, "readable_from");
        rf += s.len as u64;
    }
    assert_eq!(rf, r.saturating_sub(skip as u64), "readable_from({skip})");
    let mut wf = 0u64;
    for s in chain.writable_from(skip) {
        check_segment(mem, s, "writable_from");
        wf += s.len as u64;
    }
    assert_eq!(wf, w.saturating_sub(skip as u64), "writable_from({skip})");

    let mut dst = [0u8; 256];
    let n = chain.read_into(mem, skip, &mut dst);
    let want = (r.saturating_sub(skip as u64)).min(dst.len() as u64) as usize;
    assert_eq!(n, want, "read_into({skip}) copied {n}, expected {want}");
    if r <= MAX_COMPARE {
        let all = gather(mem, chain.readable());
        assert_eq!(
            &dst[..n],
            &all[skip.min(all.len())..][..n],
            "read_into bytes"
        );
    }
    if write {
        let src = [0xa5u8; 64];
        let n = chain.write_from(mem, skip, &src);
        let want = (w.saturating_sub(skip as u64)).min(src.len() as u64) as usize;
        assert_eq!(n, want, "write_from({skip}) wrote {n}, expected {want}");
    }
}
