//! The clock round trips are timed with, on both sides of a comparison: the guest's `rr`
//! workload and the harness's `busy_poll_wake_rtt` ceiling call the same [`now_ns`], so each
//! sample carries the same clock overhead.
//!
//! It is `CLOCK_MONOTONIC` (the vDSO, no system call) as a plain `u64` of nanoseconds: a stamp
//! costs the clock read and one multiply-add, where `Instant::elapsed().as_nanos()` would add
//! a `Timespec` subtraction and a 128-bit multiply inside every timed span.

use rustix::time::{clock_gettime, ClockId};

/// Nanoseconds since an arbitrary, fixed point (boot), monotonic.
#[inline]
pub fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    // Both fields are non-negative for CLOCK_MONOTONIC; u64 nanoseconds last 584 years.
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn advances_with_the_standard_clock() {
        let (a, i) = (now_ns(), Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (b, e) = (now_ns(), i.elapsed().as_nanos() as u64);
        assert!(b > a);
        // Same clock: the two measures of the sleep agree to well under a millisecond.
        assert!(
            (b - a).abs_diff(e) < 1_000_000,
            "now_ns {} vs Instant {e}",
            b - a
        );
    }
}
