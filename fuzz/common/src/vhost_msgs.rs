//! The vhost-user message parser and state machine against a hostile frontend.
//!
//! The input is a sequence of up to [`MAX_MSGS`] messages. Each has a request (mostly one the
//! engine serves, with a payload of the right shape; sometimes any known code or a raw one,
//! with raw bytes), header flags (version 1, with `NEED_REPLY` or not, or raw), a size field
//! (the payload's length, a little off, or raw) and the file descriptors attached: what the
//! request needs (a memfd per memory region, an eventfd for a kick or call), or a list of up
//! to [`MAX_FDS`] memfds, eventfds and sockets. The structured payloads are built so that
//! they reach the engine's handlers: memory-table regions are drawn relative to each other (as
//! in `mem_table`) over memfds of [`MEMFD_LEN`] bytes, and ring addresses point into the
//! regions of the last table sent.
//!
//! [`replay`] builds a fresh `NetServer` (one queue pair, the null backend), writes every
//! message to one end of a socket pair (`sendmsg`, fds as `SCM_RIGHTS`), shuts that end's
//! write side and runs `engine::vhost_user::serve_connection` on the other end on this
//! thread: it returns at the end of the stream. Then it reads the replies and checks:
//!
//! - nothing panicked (in the handlers, the vhost crate, or a device's worker thread) and the
//!   call returned (a hang is the fuzzer's timeout);
//! - the server is clear ([`NetServer::is_clear`]: no device running, no features, memory
//!   table or queue set-up left), counted one connection, and every device it started was
//!   stopped and reported; the connection kept no handle on the state;
//! - no file descriptor leaked: the process has as many open as before the replay (the
//!   memfds, eventfds and sockets the server received, the device's eventfds and io_uring);
//! - the replies are well-formed (the reply flag, version 1, a size within the limit, a
//!   request code the vhost crate knows, no fd attached), and those with a fixed answer say it
//!   (the features offered, the protocol features, the number of queue pairs).
//!
//! The fd count needs the process to itself: no other thread may open or close a file during
//! a replay. libFuzzer runs one input at a time; tests hold [`crate::exclusive`].

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};
use engine::backend::null::{NullBackend, NullMode};
use engine::backend::Backend;
use engine::net::device::DEFAULT_OFFER;
use engine::vhost_user::{serve_connection, BackendFactory, NetServer};
use engine::worker::WorkerConfig;
use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most messages an input sends: more than the 64 refusals in a row after which the server
/// drops a connection, so that messages left unread (and their fds) are part of the game.
pub const MAX_MSGS: usize = 80;
/// Most payload bytes a message has (the vhost crate's `MAX_MSG_SIZE`).
pub const MAX_PAYLOAD: usize = 4096;
/// Most fds a message's explicit list attaches.
pub const MAX_FDS: usize = 3;
/// Most regions of a structured memory table (one memfd each).
pub const MAX_TABLE: usize = 10;
/// A memfd's length.
pub const MEMFD_LEN: u64 = 0x1_0000;
/// A small memfd's length: one page.
pub const SMALL_MEMFD_LEN: u64 = 0x1000;
/// The highest request code the vhost crate knows.
pub const LAST_CODE: u32 = 44;
/// Where ring slot `n` of a region starts (see [`Ring::Laid`]): four per memfd.
pub const SLOT: u64 = 0x4000;

/// The request codes the structured messages use (vhost-user's numbering).
pub mod code {
    /// `VHOST_USER_GET_FEATURES`.
    pub const GET_FEATURES: u32 = 1;
    /// `VHOST_USER_SET_FEATURES`.
    pub const SET_FEATURES: u32 = 2;
    /// `VHOST_USER_SET_OWNER`.
    pub const SET_OWNER: u32 = 3;
    /// `VHOST_USER_RESET_OWNER`.
    pub const RESET_OWNER: u32 = 4;
    /// `VHOST_USER_SET_MEM_TABLE`.
    pub const SET_MEM_TABLE: u32 = 5;
    /// `VHOST_USER_SET_VRING_NUM`.
    pub const SET_VRING_NUM: u32 = 8;
    /// `VHOST_USER_SET_VRING_ADDR`.
    pub const SET_VRING_ADDR: u32 = 9;
    /// `VHOST_USER_SET_VRING_BASE`.
    pub const SET_VRING_BASE: u32 = 10;
    /// `VHOST_USER_GET_VRING_BASE`.
    pub const GET_VRING_BASE: u32 = 11;
    /// `VHOST_USER_SET_VRING_KICK`.
    pub const SET_VRING_KICK: u32 = 12;
    /// `VHOST_USER_SET_VRING_CALL`.
    pub const SET_VRING_CALL: u32 = 13;
    /// `VHOST_USER_SET_VRING_ERR`.
    pub const SET_VRING_ERR: u32 = 14;
    /// `VHOST_USER_GET_PROTOCOL_FEATURES`.
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    /// `VHOST_USER_SET_PROTOCOL_FEATURES`.
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    /// `VHOST_USER_GET_QUEUE_NUM`.
    pub const GET_QUEUE_NUM: u32 = 17;
    /// `VHOST_USER_SET_VRING_ENABLE`.
    pub const SET_VRING_ENABLE: u32 = 18;
}

/// Header flags: the version (bits 0–1).
pub const VERSION_1: u32 = 0x1;
/// Header flags: this is a reply.
pub const REPLY: u32 = 0x4;
/// Header flags: the frontend wants an ack (`REPLY_ACK`).
pub const NEED_REPLY: u32 = 0x8;
/// `VHOST_USER_F_PROTOCOL_FEATURES`, a feature bit of the transport.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// The protocol features the engine offers: `MQ` and `REPLY_ACK`.
pub const PROTOCOL_OFFER: u64 = 0x1 | 0x8;
/// A kick, call or err payload's "no fd" bit.
pub const NO_FD: u64 = 0x100;

/// One run of the `vhost_msgs` target.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The messages, in order (the first [`MAX_MSGS`]).
    pub msgs: Vec<Msg>,
}

/// One message.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// What it asks, and its payload.
    pub req: Req,
    /// The header's flags.
    pub flags: Flags,
    /// The header's size field.
    pub size: SizeField,
    /// The fds attached.
    pub fds: Fds,
}

/// A request and its payload.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Req {
    /// `GET_FEATURES`, no payload.
    GetFeatures,
    /// `SET_FEATURES`.
    SetFeatures(FeatureBits),
    /// `SET_OWNER`, no payload.
    SetOwner,
    /// `RESET_OWNER`, no payload.
    ResetOwner,
    /// `SET_MEM_TABLE` with these regions (the first [`MAX_TABLE`]).
    SetMemTable(Vec<RegionIn>),
    /// `SET_VRING_NUM`.
    SetVringNum {
        /// Which queue.
        queue: Queue,
        /// Its size.
        num: Num,
    },
    /// `SET_VRING_ADDR`.
    SetVringAddr {
        /// Which queue.
        queue: Queue,
        /// Where its rings are.
        ring: Ring,
        /// With the dirty-log flag (which the engine refuses).
        log: bool,
    },
    /// `SET_VRING_BASE`.
    SetVringBase {
        /// Which queue.
        queue: Queue,
        /// The avail index to start at.
        base: u32,
    },
    /// `GET_VRING_BASE`.
    GetVringBase(Queue),
    /// `SET_VRING_KICK`.
    SetVringKick(VringFd),
    /// `SET_VRING_CALL`.
    SetVringCall(VringFd),
    /// `SET_VRING_ERR`.
    SetVringErr(VringFd),
    /// `GET_PROTOCOL_FEATURES`, no payload.
    GetProtocolFeatures,
    /// `SET_PROTOCOL_FEATURES`.
    SetProtocolFeatures(u64),
    /// `GET_QUEUE_NUM`, no payload.
    GetQueueNum,
    /// `SET_VRING_ENABLE`.
    SetVringEnable {
        /// Which queue.
        queue: Queue,
        /// 1 enables, 0 disables, anything else is invalid.
        enable: u32,
    },
    /// A known request (`1 + code % LAST_CODE`) with any payload.
    Known {
        /// Picks the request.
        code: u8,
        /// The payload (the first [`MAX_PAYLOAD`] bytes).
        payload: Vec<u8>,
    },
    /// Anything.
    Raw {
        /// The request code.
        code: u32,
        /// The payload (the first [`MAX_PAYLOAD`] bytes).
        payload: Vec<u8>,
    },
}

/// A `SET_FEATURES` value.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureBits {
    /// The features offered, masked, with `VHOST_USER_F_PROTOCOL_FEATURES` or not.
    Offered {
        /// Which of the offered features.
        mask: u64,
        /// Acknowledge the protocol features.
        protocol: bool,
    },
    /// Anything.
    Raw(u64),
}

/// A queue index.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Queue 0.
    Rx,
    /// Queue 1.
    Tx,
    /// Any index (the kick, call and err payloads keep its low 8 bits as the index).
    Raw(u32),
}

/// A queue size.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num {
    /// `1 << (n % 16)`.
    Pow2(u8),
    /// Anything.
    Raw(u32),
}

/// A kick, call or err payload.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringFd {
    /// Which queue.
    pub queue: Queue,
    /// The "no fd" bit ([`Fds::Auto`] then attaches none, else an eventfd).
    pub no_fd: bool,
}

/// An address in a memory table, placed against the previous region (or 0 for the first).
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// `gap` bytes after the previous region's end (0: adjacent).
    After(u16),
    /// `back` bytes before the previous region's end (overlapping it when `back > 0`).
    Before(u16),
    /// `n` pages from 0.
    Pages(u16),
    /// Anywhere.
    Raw(u64),
}

/// A region's length or file offset.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// [`MEMFD_LEN`] (a region's length: the whole memfd).
    Whole,
    /// `n` pages.
    Pages(u8),
    /// `n` bytes.
    Bytes(u16),
    /// Anything.
    Raw(u64),
}

/// One memory-table entry.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionIn {
    /// Guest-physical address.
    pub gpa: Place,
    /// Size.
    pub size: Size,
    /// Frontend (virtual) address.
    pub va: Place,
    /// Offset into its file.
    pub offset: Size,
}

/// A frontend address for a ring.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// `off` bytes into region `region` (mod the length) of the last table sent (from 0 when
    /// none was).
    Region {
        /// Which region.
        region: u8,
        /// How far into it.
        off: u16,
    },
    /// Anywhere.
    Raw(u64),
}

/// A queue's three ring addresses.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// Laid out for any size up to 256 in slot `slot % 4` of region `region` of the last
    /// table sent: the descriptor table at the slot's start, the avail ring 4 KiB in, the used
    /// ring 8 KiB in.
    Laid {
        /// Which region.
        region: u8,
        /// Which slot of [`SLOT`] bytes.
        slot: u8,
    },
    /// Each where it says.
    At {
        /// The descriptor table.
        desc: Addr,
        /// The used ring.
        used: Addr,
        /// The avail ring.
        avail: Addr,
    },
}

/// The header's flags.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flags {
    /// Version 1.
    V1,
    /// Version 1, asking for an ack.
    NeedReply,
    /// Anything.
    Raw(u32),
}

/// The header's size field.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeField {
    /// The payload's length.
    Exact,
    /// The payload's length plus this (at least 0).
    Off(i8),
    /// Anything.
    Raw(u32),
}

/// The fds attached to a message.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Fds {
    /// What the request needs: a memfd per region of a structured memory table, an eventfd
    /// for a kick, call or err without the "no fd" bit, none otherwise.
    Auto,
    /// These (the first [`MAX_FDS`]).
    List(Vec<FdKind>),
}

/// A kind of fd to attach.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A memfd of [`MEMFD_LEN`] bytes.
    Memfd,
    /// A memfd of [`SMALL_MEMFD_LEN`] bytes.
    SmallMemfd,
    /// An eventfd.
    EventFd,
    /// One end of a Unix stream socket pair (the other end is closed).
    Socket,
}

/// A reply the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request it answers.
    pub code: u32,
    /// Its payload.
    pub body: Vec<u8>,
}

impl Reply {
    /// The payload as a `u64` (`GET_FEATURES`, a `REPLY_ACK` status, …), if it is one.
    pub fn u64(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.body.as_slice().try_into().ok()?))
    }

    /// The payload as a vring state (`GET_VRING_BASE`): index and number.
    pub fn state(&self) -> Option<(u32, u32)> {
        let b: [u8; 8] = self.body.as_slice().try_into().ok()?;
        let (i, n) = b.split_at(4);
        Some((
            u32::from_le_bytes(i.try_into().ok()?),
            u32::from_le_bytes(n.try_into().ok()?),
        ))
    }
}

/// What a replay did, so a test can check its input reached its case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Messages written whole (all of them, unless the socket's buffer filled).
    pub sent: usize,
    /// Devices started.
    pub starts: u64,
    /// Requests refused, by the engine or by the vhost crate below it.
    pub refused: u64,
    /// The last refusal, in words.
    pub last_refusal: Option<String>,
    /// The replies, in order.
    pub replies: Vec<Reply>,
}

impl Outcome {
    /// The replies to request `code`.
    pub fn replies_to(&self, code: u32) -> impl Iterator<Item = &Reply> {
        self.replies.iter().filter(move |r| r.code == code)
    }
}

impl Queue {
    fn index(self) -> u32 {
        match self {
            Queue::Rx => 0,
            Queue::Tx => 1,
            Queue::Raw(i) => i,
        }
    }
}

impl Size {
    fn get(self) -> u64 {
        match self {
            Size::Whole => MEMFD_LEN,
            Size::Pages(n) => u64::from(n) * 4096,
            Size::Bytes(n) => u64::from(n),
            Size::Raw(v) => v,
        }
    }
}

impl Place {
    fn get(self, prev_end: u64) -> u64 {
        match self {
            Place::After(gap) => prev_end.wrapping_add(u64::from(gap)),
            Place::Before(back) => prev_end.wrapping_sub(u64::from(back)),
            Place::Pages(n) => u64::from(n) * 4096,
            Place::Raw(v) => v,
        }
    }
}

fn new_fd(kind: FdKind) -> OwnedFd {
    let memfd = |len| {
        let fd = memfd_create("vhost-msgs", MemfdFlags::CLOEXEC).expect("memfd_create");
        ftruncate(&fd, len).expect("ftruncate");
        fd
    };
    match kind {
        FdKind::Memfd => memfd(MEMFD_LEN),
        FdKind::SmallMemfd => memfd(SMALL_MEMFD_LEN),
        FdKind::EventFd => {
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd")
        }
        FdKind::Socket => {
            let (a, _b) = UnixStream::pair().expect("socket pair");
            OwnedFd::from(a)
        }
    }
}

/// Turns messages into bytes and fds, remembering the last memory table for ring addresses.
#[derive(Debug, Default)]
struct Encoder {
    /// Frontend address and length of each region of the last table sent.
    table: Vec<(u64, u64)>,
}

impl Encoder {
    /// The frontend address of region `region` of the last table, plus `off`.
    fn in_region(&self, region: u8, off: u64) -> u64 {
        match self.table.len() {
            0 => off,
            n => self.table[usize::from(region) % n].0.wrapping_add(off),
        }
    }

    fn addr(&self, a: Addr) -> u64 {
        match a {
            Addr::Region { region, off } => self.in_region(region, u64::from(off)),
            Addr::Raw(v) => v,
        }
    }

    /// The message's bytes (header and payload), and the kinds of fd it carries.
    fn message(&mut self, m: &Msg) -> (Vec<u8>, Vec<FdKind>) {
        let mut p = Vec::new();
        let u32s = |p: &mut Vec<u8>, v: &[u32]| v.iter().for_each(|x| p.extend(x.to_le_bytes()));
        let u64s = |p: &mut Vec<u8>, v: &[u64]| v.iter().for_each(|x| p.extend(x.to_le_bytes()));
        let mut auto = Vec::new();
        let code = match &m.req {
            Req::GetFeatures => code::GET_FEATURES,
            Req::SetFeatures(f) => {
                let v = match *f {
                    FeatureBits::Offered { mask, protocol } => {
                        DEFAULT_OFFER.0 & mask | if protocol { F_PROTOCOL_FEATURES } else { 0 }
                    }
                    FeatureBits::Raw(v) => v,
                };
                u64s(&mut p, &[v]);
                code::SET_FEATURES
            }
            Req::SetOwner => code::SET_OWNER,
            Req::ResetOwner => code::RESET_OWNER,
            Req::SetMemTable(regions) => {
                let regions = &regions[..regions.len().min(MAX_TABLE)];
                u32s(&mut p, &[regions.len() as u32, 0]);
                let (mut gpa_end, mut va_end) = (0u64, 0u64);
                self.table.clear();
                for r in regions {
                    let (gpa, size, va) = (r.gpa.get(gpa_end), r.size.get(), r.va.get(va_end));
                    u64s(&mut p, &[gpa, size, va, r.offset.get()]);
                    gpa_end = gpa.wrapping_add(size);
                    va_end = va.wrapping_add(size);
                    self.table.push((va, size));
                    auto.push(FdKind::Memfd);
                }
                code::SET_MEM_TABLE
            }
            Req::SetVringNum { queue, num } => {
                let n = match *num {
                    Num::Pow2(n) => 1 << (n % 16),
                    Num::Raw(n) => n,
                };
                u32s(&mut p, &[queue.index(), n]);
                code::SET_VRING_NUM
            }
            Req::SetVringAddr { queue, ring, log } => {
                let (desc, used, avail) = match *ring {
                    Ring::Laid { region, slot } => {
                        let at = self.in_region(region, u64::from(slot % 4) * SLOT);
                        (at, at.wrapping_add(0x2000), at.wrapping_add(0x1000))
                    }
                    Ring::At { desc, used, avail } => {
                        (self.addr(desc), self.addr(used), self.addr(avail))
                    }
                };
                u32s(&mut p, &[queue.index(), u32::from(*log)]);
                u64s(&mut p, &[desc, used, avail, 0]);
                code::SET_VRING_ADDR
            }
            Req::SetVringBase { queue, base } => {
                u32s(&mut p, &[queue.index(), *base]);
                code::SET_VRING_BASE
            }
            Req::GetVringBase(queue) => {
                u32s(&mut p, &[queue.index(), 0]);
                code::GET_VRING_BASE
            }
            Req::SetVringKick(f) | Req::SetVringCall(f) | Req::SetVringErr(f) => {
                let no_fd = if f.no_fd { NO_FD } else { 0 };
                u64s(&mut p, &[u64::from(f.queue.index()) | no_fd]);
                if !f.no_fd {
                    auto.push(FdKind::EventFd);
                }
                match m.req {
                    Req::SetVringKick(_) => code::SET_VRING_KICK,
                    Req::SetVringCall(_) => code::SET_VRING_CALL,
                    _ => code::SET_VRING_ERR,
                }
            }
            Req::GetProtocolFeatures => code::GET_PROTOCOL_FEATURES,
            Req::SetProtocolFeatures(v) => {
                u64s(&mut p, &[*v]);
                code::SET_PROTOCOL_FEATURES
            }
            Req::GetQueueNum => code::GET_QUEUE_NUM,
            Req::SetVringEnable { queue, enable } => {
                u32s(&mut p, &[queue.index(), *enable]);
                code::SET_VRING_ENABLE
            }
            Req::Known { code, payload } => {
                p.extend_from_slice(&payload[..payload.len().min(MAX_PAYLOAD)]);
                1 + u32::from(*code) % LAST_CODE
            }
            Req::Raw { code, payload } => {
                p.extend_from_slice(&payload[..payload.len().min(MAX_PAYLOAD)]);
                *code
            }
        };
        let flags = match m.flags {
            Flags::V1 => VERSION_1,
            Flags::NeedReply => VERSION_1 | NEED_REPLY,
            Flags::Raw(f) => f,
        };
        let size = match m.size {
            SizeField::Exact => p.len() as u32,
            SizeField::Off(d) => (p.len() as i64 + i64::from(d)).max(0) as u32,
            SizeField::Raw(s) => s,
        };
        let mut bytes = Vec::with_capacity(12 + p.len());
        u32s(&mut bytes, &[code, flags, size]);
        bytes.extend_from_slice(&p);
        let fds = match &m.fds {
            Fds::Auto => auto,
            Fds::List(l) => l[..l.len().min(MAX_FDS)].to_vec(),
        };
        (bytes, fds)
    }
}

/// How many files the process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// A factory of null sinks, one per pair.
fn null_factory() -> BackendFactory {
    Box::new(|_, _, pairs| {
        Ok((0..pairs)
            .map(|_| Box::new(NullBackend::new(NullMode::Sink, true)) as Box<dyn Backend>)
            .collect())
    })
}

/// Sends `bytes` with `fds` attached, without blocking; whether all of it went.
fn send(sock: &UnixStream, bytes: &[u8], fds: &[OwnedFd]) -> bool {
    let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_TABLE))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(
            anc.push(SendAncillaryMessage::ScmRights(&fds)),
            "cmsg space"
        );
    }
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    match sendmsg(sock, &[IoSlice::new(bytes)], &mut anc, flags) {
        Ok(n) => n == bytes.len(),
        // The server's receive queue is full: the stream ends here.
        Err(Errno::AGAIN) => false,
        Err(e) => panic!("sendmsg: {e}"),
    }
}

/// Reads what the server sent until it closed its end: the bytes, and how many fds came.
fn drain(sock: &UnixStream) -> (Vec<u8>, usize) {
    let mut all = Vec::new();
    let mut fds = 0;
    let mut buf = [0u8; 4096];
    loop {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let n = match recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => r.bytes,
            Err(Errno::INTR) => continue,
            // The server closed its end with messages unread (it dropped the connection):
            // what it sent before is read first.
            Err(Errno::CONNRESET) => 0,
            Err(e) => panic!("recvmsg: {e}"),
        };
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                // Closed as they go.
                fds += r.count();
            }
        }
        if n == 0 {
            return (all, fds);
        }
        all.extend_from_slice(&buf[..n]);
    }
}

/// Splits the reply stream into replies, checking each one's header.
fn parse_replies(mut b: &[u8]) -> Vec<Reply> {
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 12, "a partial reply header: {b:?}");
        let (code, flags, size) = (le32(&b[0..4]), le32(&b[4..8]), le32(&b[8..12]) as usize);
        assert_eq!(flags, VERSION_1 | REPLY, "reply flags for request {code}");
        assert!(size <= MAX_PAYLOAD, "a reply of {size} bytes");
        // A request the server read, which is not always one the replay wrote: once a size
        // field is off, the server reads headers out of payloads.
        assert!(
            (1..=LAST_CODE).contains(&code),
            "a reply to request {code}, which the vhost crate does not know"
        );
        assert!(b.len() >= 12 + size, "a partial reply to {code}");
        out.push(Reply {
            code,
            body: b[12..12 + size].to_vec(),
        });
        b = &b[12 + size..];
    }
    out
}

/// Serves the input's messages on a fresh server and checks the oracles (module
/// documentation).
///
/// # Panics
///
/// When an oracle does not hold: a bug found. Also when another thread opened or closed a
/// file during the replay (hold [`crate::exclusive`] where others may run).
pub fn replay(input: &Input) -> Outcome {
    let fds_before = open_fds();
    let out = serve(input);
    let fds_after = open_fds();
    assert_eq!(
        fds_after, fds_before,
        "{} files open after the replay, {fds_before} before",
        fds_after
    );
    out
}

fn serve(input: &Input) -> Outcome {
    let state = Arc::new(Mutex::new(NetServer::new(
        1,
        null_factory(),
        WorkerConfig::default(),
    )));
    let (client, server) = UnixStream::pair().expect("socket pair");
    client.set_nonblocking(true).expect("nonblocking");
    // Room for every message (80 of 4 KiB) and every reply, so that neither side waits for
    // the other: the messages go first, the replies are read last.
    for s in [&client, &server] {
        rustix::net::sockopt::set_socket_send_buffer_size(s, 1 << 20).expect("SO_SNDBUF");
    }
    let mut enc = Encoder::default();
    let mut sent = 0;
    for m in input.msgs.iter().take(MAX_MSGS) {
        let (bytes, kinds) = enc.message(m);
        let fds: Vec<OwnedFd> = kinds.into_iter().map(new_fd).collect();
        if !send(&client, &bytes, &fds) {
            break;
        }
        sent += 1;
        // Our copies of the fds close here; the server holds its own.
    }
    client.shutdown(Shutdown::Write).expect("shutdown");
    let stop = AtomicBool::new(false);
    serve_connection(server, &state, &stop).expect("serving a socket pair");
    client.set_nonblocking(false).expect("blocking");
    let (bytes, fds) = drain(&client);
    drop(client);
    assert_eq!(fds, 0, "a reply carried {fds} fds");
    let replies = parse_replies(&bytes);
    for r in &replies {
        let want = match r.code {
            code::GET_FEATURES => DEFAULT_OFFER.0 | F_PROTOCOL_FEATURES,
            code::GET_PROTOCOL_FEATURES => PROTOCOL_OFFER,
            code::GET_QUEUE_NUM => 1,
            _ => continue,
        };
        assert_eq!(r.u64(), Some(want), "reply to request {}", r.code);
    }
    let server = Arc::try_unwrap(state)
        .expect("the connection kept a handle on the server state")
        .into_inner()
        .expect("the server state's lock was poisoned");
    assert!(server.is_clear(), "left set up: {server:?}");
    assert_eq!(server.stats.connections, 1);
    assert_eq!(
        server.reports.len() as u64,
        server.stats.starts,
        "every device started was stopped"
    );
    for r in &server.reports {
        assert_ne!(
            r.fatal.as_deref(),
            Some("device thread panicked"),
            "a device's worker panicked"
        );
    }
    let out = Outcome {
        sent,
        starts: server.stats.starts,
        refused: server.stats.refused,
        last_refusal: server.stats.last_refusal.clone(),
        replies,
    };
    drop(server);
    out
}

/// Decodes `data` as `libfuzzer-sys` does for the fuzz target and replays it; `false` when
/// the bytes do not decode.
///
/// # Panics
///
/// As [`replay`].
pub fn replay_bytes(data: &[u8]) -> bool {
    if data.len() < Input::size_hint(0).0 {
        return false;
    }
    match Input::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(input) => {
            replay(&input);
            true
        }
        Err(_) => false,
    }
}

/// Writes a value as the bytes its `Arbitrary` implementation decodes it from, so that seeds
/// can be written as inputs: arbitrary 1.x's format, where an integer is its little-endian
/// bytes, a `bool` one byte, an enum's variant a `u32` whose `(x * variants) >> 32` is its
/// index, then its fields, and a `Vec` each element after a byte 1, then a byte 0. (A test
/// decodes every encoding back.)
pub trait Encode {
    /// Appends the bytes.
    fn encode(&self, out: &mut Vec<u8>);

    /// The bytes.
    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

macro_rules! encode_ints {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
encode_ints!(u8, u16, u32, u64, i8);

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        for x in self {
            out.push(1);
            x.encode(out);
        }
        out.push(0);
    }
}

/// Variant `i` of `n`.
fn variant(out: &mut Vec<u8>, i: u64, n: u64) {
    ((i << 32).div_ceil(n) as u32).encode(out);
}

impl Encode for Input {
    fn encode(&self, out: &mut Vec<u8>) {
        self.msgs.encode(out);
    }
}

impl Encode for Msg {
    fn encode(&self, out: &mut Vec<u8>) {
        self.req.encode(out);
        self.flags.encode(out);
        self.size.encode(out);
        self.fds.encode(out);
    }
}

impl Encode for Req {
    fn encode(&self, out: &mut Vec<u8>) {
        const N: u64 = 18;
        match self {
            Req::GetFeatures => variant(out, 0, N),
            Req::SetFeatures(f) => {
                variant(out, 1, N);
                f.encode(out);
            }
            Req::SetOwner => variant(out, 2, N),
            Req::ResetOwner => variant(out, 3, N),
            Req::SetMemTable(t) => {
                variant(out, 4, N);
                t.encode(out);
            }
            Req::SetVringNum { queue, num } => {
                variant(out, 5, N);
                queue.encode(out);
                num.encode(out);
            }
            Req::SetVringAddr { queue, ring, log } => {
                variant(out, 6, N);
                queue.encode(out);
                ring.encode(out);
                log.encode(out);
            }
            Req::SetVringBase { queue, base } => {
                variant(out, 7, N);
                queue.encode(out);
                base.encode(out);
            }
            Req::GetVringBase(q) => {
                variant(out, 8, N);
                q.encode(out);
            }
            Req::SetVringKick(f) => {
                variant(out, 9, N);
                f.encode(out);
            }
            Req::SetVringCall(f) => {
                variant(out, 10, N);
                f.encode(out);
            }
            Req::SetVringErr(f) => {
                variant(out, 11, N);
                f.encode(out);
            }
            Req::GetProtocolFeatures => variant(out, 12, N),
            Req::SetProtocolFeatures(v) => {
                variant(out, 13, N);
                v.encode(out);
            }
            Req::GetQueueNum => variant(out, 14, N),
            Req::SetVringEnable { queue, enable } => {
                variant(out, 15, N);
                queue.encode(out);
                enable.encode(out);
            }
            Req::Known { code, payload } => {
                variant(out, 16, N);
                code.encode(out);
                payload.encode(out);
            }
            Req::Raw { code, payload } => {
                variant(out, 17, N);
                code.encode(out);
                payload.encode(out);
            }
        }
    }
}

impl Encode for FeatureBits {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            FeatureBits::Offered { mask, protocol } => {
                variant(out, 0, 2);
                mask.encode(out);
                protocol.encode(out);
            }
            FeatureBits::Raw(v) => {
                variant(out, 1, 2);
                v.encode(out);
            }
        }
    }
}

impl Encode for Queue {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Queue::Rx => variant(out, 0, 3),
            Queue::Tx => variant(out, 1, 3),
            Queue::Raw(i) => {
                variant(out, 2, 3);
                i.encode(out);
            }
        }
    }
}

impl Encode for Num {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Num::Pow2(n) => {
                variant(out, 0, 2);
                n.encode(out);
            }
            Num::Raw(n) => {
                variant(out, 1, 2);
                n.encode(out);
            }
        }
    }
}

impl Encode for VringFd {
    fn encode(&self, out: &mut Vec<u8>) {
        self.queue.encode(out);
        self.no_fd.encode(out);
    }
}

impl Encode for Place {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Place::After(v) => {
                variant(out, 0, 4);
                v.encode(out);
            }
            Place::Before(v) => {
                variant(out, 1, 4);
                v.encode(out);
            }
            Place::Pages(v) => {
                variant(out, 2, 4);
                v.encode(out);
            }
            Place::Raw(v) => {
                variant(out, 3, 4);
                v.encode(out);
            }
        }
    }
}

impl Encode for Size {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Size::Whole => variant(out, 0, 4),
            Size::Pages(n) => {
                variant(out, 1, 4);
                n.encode(out);
            }
            Size::Bytes(n) => {
                variant(out, 2, 4);
                n.encode(out);
            }
            Size::Raw(v) => {
                variant(out, 3, 4);
                v.encode(out);
            }
        }
    }
}

impl Encode for RegionIn {
    fn encode(&self, out: &mut Vec<u8>) {
        self.gpa.encode(out);
        self.size.encode(out);
        self.va.encode(out);
        self.offset.encode(out);
    }
}

impl Encode for Addr {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Addr::Region { region, off } => {
                variant(out, 0, 2);
                region.encode(out);
                off.encode(out);
            }
            Addr::Raw(v) => {
                variant(out, 1, 2);
                v.encode(out);
            }
        }
    }
}

impl Encode for Ring {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Ring::Laid { region, slot } => {
                variant(out, 0, 2);
                region.encode(out);
                slot.encode(out);
            }
            Ring::At { desc, used, avail } => {
                variant(out, 1, 2);
                desc.encode(out);
                used.encode(out);
                avail.encode(out);
            }
        }
    }
}

impl Encode for Flags {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Flags::V1 => variant(out, 0, 3),
            Flags::NeedReply => variant(out, 1, 3),
            Flags::Raw(f) => {
                variant(out, 2, 3);
                f.encode(out);
            }
        }
    }
}

impl Encode for SizeField {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SizeField::Exact => variant(out, 0, 3),
            SizeField::Off(d) => {
                variant(out, 1, 3);
                d.encode(out);
            }
            SizeField::Raw(s) => {
                variant(out, 2, 3);
                s.encode(out);
            }
        }
    }
}

impl Encode for Fds {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Fds::Auto => variant(out, 0, 2),
            Fds::List(l) => {
                variant(out, 1, 2);
                l.encode(out);
            }
        }
    }
}

impl Encode for FdKind {
    fn encode(&self, out: &mut Vec<u8>) {
        let i = match self {
            FdKind::Memfd => 0,
            FdKind::SmallMemfd => 1,
            FdKind::EventFd => 2,
            FdKind::Socket => 3,
        };
        variant(out, i, 4);
    }
}

/// Short-hands for writing inputs by hand (tests, seeds).
pub mod build {
    use super::*;

    /// A well-formed message: version 1, the exact size, the fds it needs.
    pub fn msg(req: Req) -> Msg {
        Msg {
            req,
            flags: Flags::V1,
            size: SizeField::Exact,
            fds: Fds::Auto,
        }
    }

    /// A memory table of one region: the whole of a memfd at guest-physical 0, frontend
    /// address 1 MiB.
    pub fn one_region() -> Req {
        Req::SetMemTable(vec![RegionIn {
            gpa: Place::Pages(0),
            size: Size::Whole,
            va: Place::Pages(0x100),
            offset: Size::Bytes(0),
        }])
    }

    /// Features and protocol features as a frontend negotiates them (every feature offered,
    /// `VHOST_USER_F_PROTOCOL_FEATURES`, `MQ` and `REPLY_ACK`), and `SET_OWNER`.
    pub fn negotiate() -> Vec<Msg> {
        vec![
            msg(Req::GetFeatures),
            msg(Req::GetProtocolFeatures),
            msg(Req::SetProtocolFeatures(PROTOCOL_OFFER)),
            msg(Req::GetQueueNum),
            msg(Req::SetOwner),
            msg(Req::SetFeatures(FeatureBits::Offered {
                mask: u64::MAX,
                protocol: true,
            })),
        ]
    }

    /// One queue set up, `size` entries, its rings in slot `slot` of region 0, and enabled.
    pub fn queue(q: Queue, size_log2: u8, slot: u8) -> Vec<Msg> {
        vec![
            msg(Req::SetVringNum {
                queue: q,
                num: Num::Pow2(size_log2),
            }),
            msg(Req::SetVringAddr {
                queue: q,
                ring: Ring::Laid { region: 0, slot },
                log: false,
            }),
            msg(Req::SetVringBase { queue: q, base: 0 }),
            msg(Req::SetVringKick(VringFd {
                queue: q,
                no_fd: false,
            })),
            msg(Req::SetVringCall(VringFd {
                queue: q,
                no_fd: false,
            })),
            msg(Req::SetVringEnable {
                queue: q,
                enable: 1,
            }),
        ]
    }

    /// The whole set-up of a device: negotiation, memory, both queues (the device starts on
    /// the last enable).
    pub fn setup() -> Vec<Msg> {
        let mut v = negotiate();
        v.push(msg(one_region()));
        v.extend(queue(Queue::Rx, 8, 0));
        v.extend(queue(Queue::Tx, 8, 1));
        v
    }

    /// `GET_VRING_BASE` on both queues: stops the device.
    pub fn stop() -> Vec<Msg> {
        vec![
            msg(Req::GetVringBase(Queue::Rx)),
            msg(Req::GetVringBase(Queue::Tx)),
        ]
    }
}
