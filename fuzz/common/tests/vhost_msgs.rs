//! Hand-written `vhost_msgs` inputs through the fuzz target's own replay and oracles: each
//! checks with [`Outcome`] that it reached the case it is named for. The same inputs, encoded,
//! are the target's committed seeds (`fuzz/seeds/vhost_msgs/<name>`);
//! `cargo test -p vhostbench-fuzz-common --test vhost_msgs -- --ignored write_seeds` writes
//! them again after a change to the input format.

use std::path::PathBuf;

use arbitrary::{Arbitrary, Unstructured};
use fuzz_common::exclusive;
use fuzz_common::vhost_msgs::build::{msg, negotiate, one_region, queue, setup, stop};
use fuzz_common::vhost_msgs::{
    code, replay, Addr, Encode, FdKind, Fds, FeatureBits, Flags, Input, Msg, Num, Outcome, Place,
    Queue, RegionIn, Req, Ring, Size, SizeField, VringFd, PROTOCOL_OFFER,
};

fn run(msgs: Vec<Msg>) -> Outcome {
    let _one = exclusive();
    replay(&Input { msgs })
}

/// The full set-up, then `GET_VRING_BASE` on both queues.
fn start_stop() -> Vec<Msg> {
    let mut v = setup();
    v.extend(stop());
    v
}

/// The full set-up with message `i` replaced by `m` (or removed).
fn setup_with(i: usize, m: Option<Msg>) -> Vec<Msg> {
    let mut v = start_stop();
    match m {
        Some(m) => v[i] = m,
        None => {
            v.remove(i);
        }
    }
    v
}

/// Index of the first message of `setup()` asking `code`.
fn at(code_wanted: u32) -> usize {
    let code_of = |m: &Msg| match &m.req {
        Req::SetFeatures(_) => code::SET_FEATURES,
        Req::SetMemTable(_) => code::SET_MEM_TABLE,
        Req::SetVringNum { .. } => code::SET_VRING_NUM,
        Req::SetVringAddr { .. } => code::SET_VRING_ADDR,
        Req::SetVringKick(_) => code::SET_VRING_KICK,
        Req::SetVringCall(_) => code::SET_VRING_CALL,
        _ => 0,
    };
    setup()
        .iter()
        .position(|m| code_of(m) == code_wanted)
        .expect("in the set-up")
}

fn overlapping_table() -> Req {
    // Two regions whose guest-physical ranges overlap by a page.
    Req::SetMemTable(vec![
        RegionIn {
            gpa: Place::Pages(0),
            size: Size::Whole,
            va: Place::Pages(0x100),
            offset: Size::Bytes(0),
        },
        RegionIn {
            gpa: Place::Before(0x1000),
            size: Size::Whole,
            va: Place::After(0x1000),
            offset: Size::Bytes(0),
        },
    ])
}

/// Every named case: the committed seeds.
fn cases() -> Vec<(&'static str, Vec<Msg>)> {
    let mut need_reply = start_stop();
    need_reply
        .iter_mut()
        .for_each(|m| m.flags = Flags::NeedReply);
    let mut no_protocol = vec![
        msg(Req::GetFeatures),
        msg(Req::SetOwner),
        msg(Req::SetFeatures(FeatureBits::Offered {
            mask: u64::MAX,
            protocol: false,
        })),
        msg(one_region()),
    ];
    for (q, slot) in [(Queue::Rx, 2), (Queue::Tx, 3)] {
        // Without protocol features the kick enables the ring: no SET_VRING_ENABLE (which
        // the vhost crate would refuse).
        no_protocol.extend(
            queue(q, 4, slot)
                .into_iter()
                .filter(|m| !matches!(m.req, Req::SetVringEnable { .. })),
        );
    }
    no_protocol.extend(stop());
    let mut restart = start_stop();
    restart.extend(queue(Queue::Rx, 8, 0));
    restart.extend(queue(Queue::Tx, 8, 1));
    restart.push(msg(Req::ResetOwner));
    vec![
        ("start-stop", start_stop()),
        ("start-stop-need-reply", need_reply),
        ("start-stop-no-protocol-features", no_protocol),
        ("start-disconnect", setup()),
        ("restart-reset-owner", restart),
        (
            "bad-size",
            setup_with(
                at(code::SET_VRING_NUM),
                Some(msg(Req::Known {
                    code: (code::SET_VRING_NUM - 1) as u8,
                    payload: vec![0, 0, 0],
                })),
            ),
        ),
        (
            "size-past-payload",
            setup_with(
                at(code::SET_VRING_ADDR),
                Some(Msg {
                    size: SizeField::Off(4),
                    ..setup()[at(code::SET_VRING_ADDR)].clone()
                }),
            ),
        ),
        (
            "mem-table-without-fd",
            setup_with(
                at(code::SET_MEM_TABLE),
                Some(Msg {
                    fds: Fds::List(vec![]),
                    ..msg(one_region())
                }),
            ),
        ),
        (
            "mem-table-eventfd",
            setup_with(
                at(code::SET_MEM_TABLE),
                Some(Msg {
                    fds: Fds::List(vec![FdKind::EventFd]),
                    ..msg(one_region())
                }),
            ),
        ),
        (
            "mem-table-small-memfd",
            setup_with(
                at(code::SET_MEM_TABLE),
                Some(Msg {
                    fds: Fds::List(vec![FdKind::SmallMemfd]),
                    ..msg(one_region())
                }),
            ),
        ),
        (
            "kick-without-fd",
            setup_with(
                at(code::SET_VRING_KICK),
                Some(Msg {
                    fds: Fds::List(vec![]),
                    ..setup()[at(code::SET_VRING_KICK)].clone()
                }),
            ),
        ),
        (
            "call-fd-and-no-fd-bit",
            setup_with(
                at(code::SET_VRING_CALL),
                Some(Msg {
                    fds: Fds::List(vec![FdKind::EventFd]),
                    ..msg(Req::SetVringCall(VringFd {
                        queue: Queue::Rx,
                        no_fd: true,
                    }))
                }),
            ),
        ),
        (
            "unknown-request",
            vec![
                msg(Req::Raw {
                    code: 9999,
                    payload: vec![],
                }),
                msg(Req::Raw {
                    code: 0,
                    payload: vec![],
                }),
                msg(Req::GetFeatures),
            ],
        ),
        (
            "overlapping-regions",
            setup_with(at(code::SET_MEM_TABLE), Some(msg(overlapping_table()))),
        ),
        (
            "rings-outside-memory",
            setup_with(
                at(code::SET_VRING_ADDR),
                Some(msg(Req::SetVringAddr {
                    queue: Queue::Rx,
                    ring: Ring::At {
                        desc: Addr::Raw(1 << 40),
                        used: Addr::Region {
                            region: 0,
                            off: 0x2000,
                        },
                        avail: Addr::Region {
                            region: 0,
                            off: 0x1000,
                        },
                    },
                    log: false,
                })),
            ),
        ),
        (
            "queue-too-big-for-memory",
            setup_with(
                at(code::SET_VRING_NUM),
                Some(msg(Req::SetVringNum {
                    queue: Queue::Rx,
                    num: Num::Pow2(15),
                })),
            ),
        ),
        (
            "queue-out-of-range",
            vec![
                msg(Req::SetVringNum {
                    queue: Queue::Raw(2),
                    num: Num::Pow2(8),
                }),
                msg(Req::SetVringKick(VringFd {
                    queue: Queue::Raw(0xff),
                    no_fd: false,
                })),
                msg(Req::GetVringBase(Queue::Raw(u32::MAX))),
            ],
        ),
        (
            "features-not-offered",
            setup_with(
                at(code::SET_FEATURES),
                // With the protocol-features bit, which the vhost crate then takes as
                // acknowledged (it allows SET_VRING_ENABLE); the engine does not.
                Some(msg(Req::SetFeatures(FeatureBits::Raw(u64::MAX)))),
            ),
        ),
        (
            "reserved-flags-and-oversize",
            vec![
                Msg {
                    flags: Flags::Raw(0x1 | 0x100),
                    ..msg(Req::GetFeatures)
                },
                Msg {
                    size: SizeField::Raw(0x1_0000),
                    ..msg(Req::GetFeatures)
                },
                msg(Req::GetFeatures),
            ],
        ),
        (
            "too-many-refusals",
            // 64 queue sizes refused in a row, then requests that are never read (one with an
            // fd, which the socket's queue holds until it is closed).
            (0..64)
                .map(|_| {
                    msg(Req::SetVringNum {
                        queue: Queue::Rx,
                        num: Num::Raw(3),
                    })
                })
                .chain([
                    msg(Req::GetFeatures),
                    msg(Req::SetVringCall(VringFd {
                        queue: Queue::Tx,
                        no_fd: false,
                    })),
                ])
                .collect(),
        ),
    ]
}

fn case(name: &str) -> Vec<Msg> {
    cases()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, m)| m)
        .expect("a case of that name")
}

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../seeds/vhost_msgs")
}

#[test]
fn every_case_encodes_to_itself() {
    // It opens files (the seeds, the cases' fds): not while a replay counts them.
    let _one = exclusive();
    for (name, msgs) in cases() {
        let input = Input { msgs };
        let bytes = input.to_bytes();
        let back = Input::arbitrary_take_rest(Unstructured::new(&bytes)).expect("decodes");
        assert_eq!(back, input, "{name}");
    }
}

#[test]
fn the_seeds_are_the_cases() {
    // It opens files (the seeds, the cases' fds): not while a replay counts them.
    let _one = exclusive();
    for (name, msgs) in cases() {
        let path = seeds_dir().join(name);
        let got = std::fs::read(&path).unwrap_or_default();
        assert!(
            got == Input { msgs }.to_bytes(),
            "{} is not the case's encoding: run `cargo test -p vhostbench-fuzz-common --test \
             vhost_msgs -- --ignored write_seeds`",
            path.display()
        );
    }
}

/// Writes the cases as seeds.
#[test]
#[ignore]
fn write_seeds() {
    // It opens files (the seeds, the cases' fds): not while a replay counts them.
    let _one = exclusive();
    std::fs::create_dir_all(seeds_dir()).expect("mkdir");
    for (name, msgs) in cases() {
        std::fs::write(seeds_dir().join(name), Input { msgs }.to_bytes()).expect("write");
    }
}

fn assert_stopped_by_get_vring_base(out: &Outcome) {
    let bases: Vec<_> = out
        .replies_to(code::GET_VRING_BASE)
        .map(|r| r.state())
        .collect();
    assert_eq!(bases, [Some((0, 0)), Some((1, 0))], "{out:?}");
}

#[test]
fn a_full_set_up_starts_a_device_and_get_vring_base_stops_it() {
    let out = run(case("start-stop"));
    assert_eq!(out.sent, start_stop().len());
    assert_eq!(out.starts, 1, "{out:?}");
    assert_eq!(out.refused, 0, "{out:?}");
    assert_stopped_by_get_vring_base(&out);
    let features = out.replies_to(code::GET_FEATURES).next().expect("a reply");
    assert!(features.u64().is_some_and(|f| f & (1 << 30) != 0));
    let protocol = out.replies_to(code::GET_PROTOCOL_FEATURES).next();
    assert_eq!(protocol.and_then(|r| r.u64()), Some(PROTOCOL_OFFER));
    assert_eq!(out.replies_to(code::GET_QUEUE_NUM).count(), 1);
}

#[test]
fn with_reply_ack_every_request_is_acked() {
    let out = run(case("start-stop-need-reply"));
    assert_eq!((out.starts, out.refused), (1, 0), "{out:?}");
    assert_stopped_by_get_vring_base(&out);
    // An ack (0: success) for each request without a reply of its own, from the first one
    // after REPLY_ACK was negotiated (it needs both GET_FEATURES and SET_PROTOCOL_FEATURES).
    let acks = out.replies_to(code::SET_VRING_ENABLE).count()
        + out.replies_to(code::SET_VRING_KICK).count()
        + out.replies_to(code::SET_MEM_TABLE).count();
    assert_eq!(acks, 2 + 2 + 1, "{out:?}");
    assert!(out
        .replies_to(code::SET_VRING_ENABLE)
        .all(|r| r.u64() == Some(0)));
}

#[test]
fn without_protocol_features_the_kicks_enable_the_rings() {
    let out = run(case("start-stop-no-protocol-features"));
    assert_eq!((out.starts, out.refused), (1, 0), "{out:?}");
    assert_stopped_by_get_vring_base(&out);
}

#[test]
fn a_frontend_that_goes_away_stops_its_device() {
    // No GET_VRING_BASE: the end of the stream stops the device (the replay checks that every
    // device started was stopped and the server is clear).
    let out = run(case("start-disconnect"));
    assert_eq!((out.starts, out.refused), (1, 0), "{out:?}");
    assert_eq!(out.replies_to(code::GET_VRING_BASE).count(), 0);
}

#[test]
fn a_stopped_device_starts_again_and_reset_owner_stops_it() {
    let out = run(case("restart-reset-owner"));
    assert_eq!((out.starts, out.refused), (2, 0), "{out:?}");
}

/// The malformed cases: refused (by the engine or the vhost crate), no device started.
#[test]
fn malformed_requests_are_refused() {
    for (name, why) in [
        ("bad-size", None),
        ("size-past-payload", None),
        ("mem-table-without-fd", None),
        // A table refused leaves no memory: the device cannot start.
        ("mem-table-eventfd", Some("before the memory table")),
        ("mem-table-small-memfd", Some("before the memory table")),
        ("kick-without-fd", None),
        ("call-fd-and-no-fd-bit", None),
        ("overlapping-regions", Some("before the memory table")),
        ("rings-outside-memory", Some("outside guest memory")),
        ("queue-too-big-for-memory", Some("outside guest memory")),
        ("queue-out-of-range", Some("does not exist")),
        ("features-not-offered", Some("or the features")),
        ("reserved-flags-and-oversize", None),
    ] {
        let out = run(case(name));
        assert_eq!(out.starts, 0, "{name}: {out:?}");
        assert!(out.refused > 0, "{name}: {out:?}");
        if let Some(why) = why {
            let last = out.last_refusal.clone().unwrap_or_default();
            assert!(
                last.contains(why),
                "{name}: refused for {last:?}, not {why:?}"
            );
        }
    }
}

#[test]
fn unknown_requests_are_refused_and_the_next_one_is_served() {
    let out = run(case("unknown-request"));
    assert_eq!(out.refused, 2, "{out:?}");
    assert_eq!(out.replies_to(code::GET_FEATURES).count(), 1, "{out:?}");
}

#[test]
fn a_frontend_refused_64_times_in_a_row_is_dropped() {
    let out = run(case("too-many-refusals"));
    assert_eq!(out.sent, 66);
    assert_eq!(out.refused, 64, "{out:?}");
    assert_eq!(out.replies_to(code::GET_FEATURES).count(), 0, "{out:?}");
    // 63 refusals and a good request: served, and the count starts again.
    let mut msgs = case("too-many-refusals");
    msgs[63] = msg(Req::GetFeatures);
    let out = run(msgs);
    assert_eq!(out.refused, 63, "{out:?}");
    assert_eq!(out.replies_to(code::GET_FEATURES).count(), 2, "{out:?}");
}

#[test]
fn fds_on_requests_that_take_none_are_closed() {
    // The vhost crate refuses them; the fd oracle checks they were closed.
    let kinds = vec![FdKind::Memfd, FdKind::EventFd, FdKind::Socket];
    let out = run(vec![
        Msg {
            fds: Fds::List(kinds.clone()),
            ..msg(Req::GetFeatures)
        },
        Msg {
            fds: Fds::List(kinds),
            ..msg(Req::Known {
                code: 32, // GPU_SET_SOCKET
                payload: vec![],
            })
        },
        msg(Req::SetVringErr(VringFd {
            queue: Queue::Tx,
            no_fd: false,
        })),
    ]);
    assert!(out.refused >= 2, "{out:?}");
}

#[test]
fn a_table_of_many_regions_is_mapped_and_replaced() {
    // Ten whole memfds back to back, then the usual table: the first is replaced.
    let many = (0..10)
        .map(|_| RegionIn {
            gpa: Place::After(0),
            size: Size::Whole,
            va: Place::After(0x1000),
            offset: Size::Bytes(0),
        })
        .collect();
    let mut msgs = negotiate();
    msgs.push(msg(Req::SetMemTable(many)));
    msgs.extend(setup().into_iter().skip(negotiate().len()));
    msgs.extend(stop());
    let out = run(msgs);
    assert_eq!((out.starts, out.refused), (1, 0), "{out:?}");
}
