//! Hand-written `mem_table` inputs through the fuzz target's own replay and oracles: each
//! checks with [`Outcome`] that it reached the case it is named for.

use fuzz_common::mem_table::{replay, At, Input, Outcome, Place, Probe, RegionIn, Size};

fn region(gpa: Place, size: Size, va: Place, offset: Size, second_file: bool) -> RegionIn {
    RegionIn {
        gpa,
        size,
        va,
        offset,
        second_file,
    }
}

/// Probes at and around every boundary of a table of `n` regions.
fn probes(n: u8) -> Vec<Probe> {
    let mut v = Vec::new();
    for i in 0..n {
        for back in [0u16, 1, 8, 100] {
            for len in [0u16, 1, 16, 300, 0x2000] {
                v.push(Probe {
                    at: At::End { i, back },
                    len: Size::Bytes(len),
                });
            }
        }
        v.push(Probe {
            at: At::Region { i, off: 0 },
            len: Size::Raw(u64::MAX),
        });
    }
    v.push(Probe {
        at: At::Raw(u64::MAX - 4),
        len: Size::Bytes(8),
    });
    v
}

fn run(table: Vec<RegionIn>) -> Outcome {
    let n = table.len() as u8;
    replay(&Input {
        table,
        probes: probes(n),
    })
}

#[test]
fn adjacent_regions_from_two_files_read_across() {
    // Three regions back to back in guest-physical space, in another order in frontend space,
    // at unaligned offsets of both files (the second past a page into its partial last page).
    let out = run(vec![
        region(
            Place::Pages(16),
            Size::Pages(3),
            Place::Raw(0x7f00_0000_0000),
            Size::Bytes(0x123),
            false,
        ),
        region(
            Place::After(0),
            Size::Bytes(0x4007 - 0x10),
            Place::Raw(0x7e00_0000_0000),
            Size::Bytes(0x1010),
            true,
        ),
        region(
            Place::After(0),
            Size::Pages(2),
            Place::After(0x1000),
            Size::Pages(12),
            false,
        ),
    ]);
    assert!(out.accepted);
    assert!(out.across >= 6, "{out:?}");
}

#[test]
fn hostile_tables_are_refused() {
    let ok = |gpa| region(gpa, Size::Pages(1), Place::After(0), Size::Pages(0), false);
    for table in [
        // Empty.
        vec![],
        // An empty region.
        vec![
            ok(Place::Pages(0)),
            region(
                Place::After(0),
                Size::Bytes(0),
                Place::After(0),
                Size::Pages(1),
                false,
            ),
        ],
        // Overlapping in guest-physical space (the second starts a byte before the first ends).
        vec![
            ok(Place::Pages(0)),
            region(
                Place::Before(1),
                Size::Pages(1),
                Place::After(0x1000),
                Size::Pages(1),
                false,
            ),
        ],
        // Overlapping in frontend space only.
        vec![
            ok(Place::Pages(0)),
            region(
                Place::After(0x1000),
                Size::Pages(1),
                Place::Before(1),
                Size::Pages(1),
                false,
            ),
        ],
        // Past the end of its file, by a byte.
        vec![region(
            Place::Pages(0),
            Size::Bytes(0x5008),
            Place::Pages(0),
            Size::Pages(0),
            true,
        )],
        // Wrapping the guest-physical, frontend and file spaces.
        vec![region(
            Place::Raw(u64::MAX - 0xfff),
            Size::Pages(1),
            Place::Pages(0),
            Size::Pages(0),
            false,
        )],
        vec![region(
            Place::Pages(0),
            Size::Pages(1),
            Place::Raw(u64::MAX - 0xfff),
            Size::Pages(0),
            false,
        )],
        vec![region(
            Place::Pages(0),
            Size::Pages(1),
            Place::Pages(0),
            Size::Raw(u64::MAX - 0xfff),
            false,
        )],
        // A size no file has.
        vec![region(
            Place::Pages(0),
            Size::Raw(u64::MAX),
            Place::Pages(0),
            Size::Pages(0),
            false,
        )],
    ] {
        assert_eq!(run(table.clone()), Outcome::default(), "{table:?}");
    }
}
