//! [`CachePadded`]: keeps a cross-thread value alone on its cache lines.

use std::ops::Deref;

/// A value aligned (and therefore padded) to 128 bytes, so that nothing another thread writes
/// shares its cache line. 128 rather than 64 because x86's adjacent-line prefetcher pulls
/// lines in pairs (crossbeam-utils' `CachePadded` makes the same choice).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CachePadded<T>(pub T);

impl<T> Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn padded_to_128() {
        assert_eq!(std::mem::align_of::<CachePadded<AtomicU64>>(), 128);
        assert_eq!(std::mem::size_of::<CachePadded<AtomicU64>>(), 128);
    }
}
