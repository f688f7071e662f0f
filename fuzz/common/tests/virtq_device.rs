//! Hand-written `virtq_device` inputs through the fuzz target's own replay and oracles.
//!
//! Each structural case is a guest the target's input can express, built by hand, and checks
//! with [`Outcome`] that it reached the case it is named for: a replay that stopped short of
//! it would otherwise pass without testing anything. The oracles inside the replay panic on
//! their own.

use arbitrary::{Arbitrary, Unstructured};
use engine::virtq::{ErrorKind, MAX_SEGMENTS};
use fuzz_common::virtq_device::{
    replay, replay_bytes, Addr, AvailIdx, BatchHeads, Buf, Desc, DescInit, Flags, Frame,
    GuestWrite, Head, Input, Len, Next, Op, PartAddr, Placement, UsedHead, SIZES,
};
use vring::layout::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT};

/// `Input::size` for a queue of 16.
const SIZE_16: u8 = 2;

fn input(setup: Vec<GuestWrite>, ops: Vec<Op>) -> Input {
    assert_eq!(SIZES[SIZE_16 as usize], 16);
    Input {
        size: SIZE_16,
        event_idx: false,
        indirect: false,
        mrg_rxbuf: false,
        in_order: false,
        placement: Placement::Packed,
        table: Vec::new(),
        setup,
        ops,
    }
}

fn buf(addr: Addr, len: u16, write: bool) -> Buf {
    Buf {
        addr,
        len: Len::Mid(len),
        write,
    }
}

fn post(at: u16, bufs: Vec<Buf>) -> GuestWrite {
    GuestWrite::PostChain {
        at,
        bufs,
        indirect: None,
    }
}

fn desc(i: u16, addr: Addr, len: Len, flags: u16, next: u16) -> GuestWrite {
    GuestWrite::Desc {
        i,
        d: DescInit::Structured(Desc {
            addr,
            len,
            flags: Flags::Raw(flags),
            next: Next::Raw(next),
        }),
    }
}

/// After the queue broke, every operation gets `Broken` (the replay checks that), and the
/// guest may go on writing.
fn after_break() -> Vec<Op> {
    vec![
        Op::Pop { skip: 0 },
        Op::PopTx,
        Op::PopBatch { max: 8, tx: true },
        Op::RxPrepare,
        Op::Rx {
            hdr: [0; 12],
            frame: Frame::Filled { len: 60, byte: 1 },
        },
        Op::Pending,
        Op::Enable,
        Op::Notify,
        Op::Guest(post(5, vec![buf(Addr::Arena(0), 64, false)])),
        Op::Pop { skip: 0 },
    ]
}

fn broken_by(mut inp: Input, want: ErrorKind) {
    inp.ops.extend(after_break());
    let out = replay(&inp);
    assert!(out.started, "placement rejected: {inp:?}");
    assert_eq!(out.first_err, Some(want), "{inp:?}");
}

#[test]
fn valid_chains_round_trip() {
    let setup = vec![
        // Header + frame readable, then a writable status: the shape of a request.
        post(
            0,
            vec![
                buf(Addr::Arena(0), 12, false),
                buf(Addr::Arena(64), 1500, false),
                buf(Addr::B(0), 256, true),
            ],
        ),
        // One buffer in region B, right up to its end.
        post(
            3,
            vec![buf(
                Addr::RegionEnd {
                    in_b: true,
                    back: 200,
                },
                200,
                false,
            )],
        ),
        post(4, vec![buf(Addr::Arena(2000), 64, false)]),
    ];
    let ops = vec![
        Op::Disable,
        Op::Pop { skip: 0 },
        Op::Pop { skip: 100 },
        Op::Unpop(1),
        Op::PopBatch { max: 8, tx: false },
        Op::AddUsedBatch {
            heads: BatchHeads::Popped(8),
            len: 0,
        },
        Op::Publish,
        Op::Notify,
        // Nothing left: an empty pop.
        Op::Pop { skip: 0 },
        Op::Enable,
        Op::Pending,
        // The guest posts more while the device runs.
        Op::Guest(post(5, vec![buf(Addr::Arena(300), 60, false)])),
        Op::PopTx,
        Op::AddUsed {
            head: UsedHead::Last,
            len: 0,
        },
        Op::Publish,
    ];
    for in_order in [false, true] {
        for event_idx in [false, true] {
            let mut inp = input(setup.clone(), ops.clone());
            inp.in_order = in_order;
            inp.event_idx = event_idx;
            let out = replay(&inp);
            assert!(out.started);
            assert_eq!(out.first_err, None, "{inp:?}");
            // 3 posted, 1 given back and popped again, 1 posted later; 4 returned.
            assert_eq!(out.stats.chains, 5, "{:?}", out.stats);
            assert_eq!(out.stats.used, 4, "{:?}", out.stats);
        }
    }
}

#[test]
fn indirect_chain_and_tx_batch_round_trip() {
    let mut inp = input(
        vec![
            GuestWrite::PostChain {
                at: 0,
                bufs: vec![
                    buf(Addr::Arena(0), 12, false),
                    buf(Addr::B(0x1000), 1000, false),
                ],
                indirect: Some(Addr::B(0)),
            },
            post(1, vec![buf(Addr::Arena(512), 74, false)]),
            // One run of 64 entries: fewer than MAX_SEGMENTS.
            GuestWrite::PostIndirectRun {
                at: 2,
                table: Addr::B(0x2000),
                count: 64,
                buf: buf(Addr::Arena(0), 32, false),
            },
        ],
        vec![
            Op::PopBatch { max: 64, tx: true },
            Op::AddUsedBatch {
                heads: BatchHeads::Popped(64),
                len: 0,
            },
            Op::Publish,
        ],
    );
    inp.indirect = true;
    inp.in_order = true;
    let out = replay(&inp);
    assert_eq!(out.first_err, None);
    assert_eq!(out.stats.chains, 3);
    assert_eq!(out.stats.used, 3);
}

#[test]
fn rx_delivery_merges_buffers() {
    let posts = (0..4)
        .map(|i| post(i, vec![buf(Addr::Arena(i * 256), 256, true)]))
        .collect();
    let mut inp = input(
        posts,
        vec![
            Op::RxPrepare,
            Op::Rx {
                hdr: [0; 12],
                frame: Frame::Filled { len: 600, byte: 7 },
            },
            // Too big for what is left (one buffer): waits, consumes nothing.
            Op::Rx {
                hdr: [0; 12],
                frame: Frame::Filled { len: 600, byte: 8 },
            },
            Op::Publish,
        ],
    );
    inp.mrg_rxbuf = true;
    let out = replay(&inp);
    assert_eq!(out.first_err, None);
    // 12 + 600 bytes in buffers of 256: three of them.
    assert_eq!(out.stats.used, 3);
}

#[test]
fn descriptor_loop() {
    let setup = vec![
        desc(0, Addr::Arena(0), Len::Small(16), VIRTQ_DESC_F_NEXT, 1),
        desc(1, Addr::Arena(16), Len::Small(16), VIRTQ_DESC_F_NEXT, 0),
        GuestWrite::Post(vec![Head::Idx(0)]),
    ];
    broken_by(
        input(setup, vec![Op::Pop { skip: 0 }]),
        ErrorKind::ChainLoop,
    );
}

#[test]
fn descriptor_loop_in_an_indirect_table() {
    let mut inp = input(
        vec![
            GuestWrite::Indirect {
                at: Addr::B(0),
                descs: vec![
                    DescInit::Structured(Desc {
                        addr: Addr::Arena(0),
                        len: Len::Small(8),
                        flags: Flags::Known(VIRTQ_DESC_F_NEXT as u8),
                        next: Next::Idx(1),
                    }),
                    DescInit::Structured(Desc {
                        addr: Addr::Arena(8),
                        len: Len::Small(8),
                        flags: Flags::Known(VIRTQ_DESC_F_NEXT as u8),
                        next: Next::Idx(0),
                    }),
                ],
            },
            desc(0, Addr::B(0), Len::Small(32), VIRTQ_DESC_F_INDIRECT, 0),
            GuestWrite::Post(vec![Head::Idx(0)]),
        ],
        vec![Op::PopTx],
    );
    inp.indirect = true;
    broken_by(inp, ErrorKind::ChainLoop);
}

#[test]
fn avail_index_jump() {
    let setup = vec![
        post(0, vec![buf(Addr::Arena(0), 64, false)]),
        GuestWrite::AvailIdx(AvailIdx::Raw(17)),
    ];
    broken_by(
        input(setup, vec![Op::Pop { skip: 0 }]),
        ErrorKind::AvailIdxJump,
    );
}

#[test]
fn avail_index_jump_caught_by_a_batch() {
    let setup = vec![GuestWrite::AvailIdx(AvailIdx::Raw(0x8000))];
    broken_by(
        input(setup, vec![Op::PopBatch { max: 64, tx: true }]),
        ErrorKind::AvailIdxJump,
    );
}

#[test]
fn avail_index_a_full_ring_ahead_is_legal() {
    let posts: Vec<GuestWrite> = (0..16)
        .map(|i| post(i, vec![buf(Addr::Arena(i * 64), 64, false)]))
        .collect();
    let out = replay(&input(
        posts,
        vec![Op::PopBatch { max: 64, tx: false }, Op::Pop { skip: 0 }],
    ));
    assert_eq!(out.first_err, None);
    assert_eq!(out.stats.chains, 16);
}

#[test]
fn indirect_table_too_long() {
    // More entries than the device takes segments: a run of 2048 fills region B.
    const { assert!(2048 > MAX_SEGMENTS) };
    let mut inp = input(
        vec![GuestWrite::PostIndirectRun {
            at: 0,
            table: Addr::B(0),
            count: 2048,
            buf: buf(Addr::Arena(0), 16, false),
        }],
        vec![Op::PopTx],
    );
    inp.indirect = true;
    broken_by(inp, ErrorKind::TooManySegments);
}

#[test]
fn indirect_table_longer_than_any_queue() {
    // 32769 entries: more than the largest queue holds, whatever is mapped there.
    let mut inp = input(
        vec![
            desc(
                0,
                Addr::B(0),
                Len::Raw(32769 * 16),
                VIRTQ_DESC_F_INDIRECT,
                0,
            ),
            GuestWrite::Post(vec![Head::Idx(0)]),
        ],
        vec![Op::Pop { skip: 0 }],
    );
    inp.indirect = true;
    broken_by(inp, ErrorKind::IndirectBadLength);
}

#[test]
fn indirect_without_the_feature() {
    let inp = input(
        vec![GuestWrite::PostChain {
            at: 0,
            bufs: vec![buf(Addr::Arena(0), 64, false)],
            indirect: Some(Addr::B(0)),
        }],
        vec![Op::Pop { skip: 0 }],
    );
    broken_by(inp, ErrorKind::IndirectNotNegotiated);
}

#[test]
fn address_in_the_hole() {
    let setup = vec![post(
        0,
        vec![
            buf(Addr::Arena(0), 12, false),
            buf(Addr::Hole(0x1000), 64, false),
        ],
    )];
    broken_by(input(setup, vec![Op::PopTx]), ErrorKind::BadAddress);
}

#[test]
fn buffer_across_the_end_of_a_region() {
    let setup = vec![post(
        0,
        vec![buf(
            Addr::RegionEnd {
                in_b: false,
                back: 10,
            },
            64,
            true,
        )],
    )];
    broken_by(
        input(setup, vec![Op::Pop { skip: 0 }]),
        ErrorKind::BadAddress,
    );
}

#[test]
fn buffers_and_tables_across_two_regions_are_popped() {
    // From B into C: a TX chain whose header straddles the boundary, an RX buffer across
    // it, and an indirect chain whose table does (entry 1 straddles).
    let across = |back| Addr::RegionEnd { in_b: true, back };
    let setup = vec![
        post(0, vec![buf(across(5), 200, false)]),
        post(1, vec![buf(across(100), 300, true)]),
        GuestWrite::PostChain {
            at: 2,
            bufs: vec![
                buf(Addr::Arena(0), 12, false),
                buf(across(40), 80, false),
                buf(Addr::B(0), 64, false),
            ],
            indirect: Some(across(24)),
        },
    ];
    let ops = vec![
        Op::PopTx,
        Op::Pop { skip: 3 },
        Op::Pop { skip: 50 },
        Op::AddUsedBatch {
            heads: BatchHeads::Popped(3),
            len: 0,
        },
        Op::Publish,
    ];
    let mut inp = input(setup, ops);
    inp.indirect = true;
    let out = replay(&inp);
    assert!(out.started);
    assert_eq!(out.first_err, None, "{inp:?}");
    assert_eq!(out.stats.chains, 3);
}

#[test]
fn buffer_past_the_last_region() {
    // C ends the memory: running off it is a bad address, as is running from A into the hole.
    let setup = vec![post(0, vec![buf(Addr::Raw(0x10_a000 - 10), 64, false)])];
    broken_by(
        input(setup, vec![Op::Pop { skip: 0 }]),
        ErrorKind::BadAddress,
    );
}

#[test]
fn head_out_of_range() {
    let setup = vec![GuestWrite::Post(vec![Head::Raw(16)])];
    broken_by(
        input(setup, vec![Op::Pop { skip: 0 }]),
        ErrorKind::HeadOutOfRange,
    );
}

#[test]
fn writable_part_on_tx() {
    let setup = vec![post(
        0,
        vec![
            buf(Addr::Arena(0), 64, false),
            buf(Addr::Arena(64), 64, true),
        ],
    )];
    broken_by(input(setup, vec![Op::PopTx]), ErrorKind::UnexpectedWritable);
}

#[test]
fn bad_placements_are_refused() {
    for (desc, avail, used) in [
        // The descriptor table misaligned (4 bytes in; it needs 16).
        (PartAddr::A(1), PartAddr::A(0x400), PartAddr::A(0x800)),
        // The used ring misaligned.
        (PartAddr::A(0), PartAddr::A(0x400), PartAddr::Raw(0x2002)),
        // The descriptor table in the hole.
        (
            PartAddr::Raw(0x8000),
            PartAddr::A(0x400),
            PartAddr::A(0x800),
        ),
        // The avail ring past the end of everything.
        (
            PartAddr::A(0),
            PartAddr::Raw(u64::MAX - 1),
            PartAddr::A(0x800),
        ),
    ] {
        let mut inp = input(Vec::new(), vec![Op::Pop { skip: 0 }]);
        inp.placement = Placement::Parts { desc, avail, used };
        assert!(!replay(&inp).started, "{inp:?}");
    }
    // Overlapping but aligned and mapped parts are the guest's business: accepted.
    let mut inp = input(Vec::new(), vec![Op::Pop { skip: 0 }]);
    inp.placement = Placement::Parts {
        desc: PartAddr::B(0),
        avail: PartAddr::B(0),
        used: PartAddr::B(0),
    };
    assert!(replay(&inp).started);
}

/// Inputs from fixed bytes, decoded the way the fuzzer does.
#[test]
fn fixed_byte_inputs() {
    let patterns: Vec<Vec<u8>> = vec![
        vec![0; 64],
        vec![0xff; 256],
        (0..=255).collect(),
        (0..=255).rev().collect(),
        (0..1024).map(|i| (i * 7 + 3) as u8).collect(),
    ];
    for data in &patterns {
        // The same bytes both ways: through `replay_bytes`, and decoded here.
        let out = replay_bytes(data).expect("decodes");
        let inp = Input::arbitrary_take_rest(Unstructured::new(data)).expect("decodes");
        assert_eq!(replay(&inp).first_err, out.first_err);
    }
}

/// A few thousand pseudo-random inputs: a small fuzz run that `cargo test` repeats exactly.
#[test]
fn pseudo_random_inputs() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut started = 0;
    for _ in 0..2000 {
        let len = (next() % 2048) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(out) = replay_bytes(&data) {
            started += usize::from(out.started);
        }
    }
    assert!(started > 0, "no input started a queue");
}
