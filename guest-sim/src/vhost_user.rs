//! The guest's side of vhost-user: what a VMM (QEMU's `vhost-user` netdev, DPDK's virtio-user
//! PMD) sends a vhost-user backend so the backend can serve the guest's queues directly: the
//! guest memory as fds, each queue's size, base index, ring addresses, and its kick and call
//! eventfds.
//!
//! The wire encoding is written here from the specification (QEMU's
//! `docs/interop/vhost-user.rst`), not taken from the crate the engine's server uses, so the
//! two sides of `vhostbench` share no code that could hide a common mistake; DPDK's vhost
//! library is the independent check of both.
//!
//! - Ring addresses are sent as *frontend virtual addresses*, as QEMU sends its own mappings'
//!   addresses: where this process has each region mapped, so a backend that confuses the two
//!   translations fails loudly instead of working by accident.
//! - Each region goes in `SET_MEM_TABLE` with its fd and its offset in it
//!   ([`GuestMemory::frontend_regions`]).
//! - With `VHOST_USER_F_PROTOCOL_FEATURES` negotiated, rings start disabled and are enabled
//!   with `SET_VRING_ENABLE`; with `REPLY_ACK`, every request that has no reply of its own
//!   asks for an acknowledgement, so a refusal is seen at the request that caused it.
//! - [`Frontend::stop`] sends `GET_VRING_BASE` per queue: the backend stops the ring and
//!   says where it stopped, which is where a reconnecting frontend resumes
//!   ([`Frontend::start`] takes the bases).

use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use vring::net::Features;
use vring::{GuestMemory, QueuePair};

/// `VHOST_USER_F_PROTOCOL_FEATURES`: the backend has protocol features (a feature bit of the
/// vhost-user transport, not of the device).
pub const F_PROTOCOL_FEATURES: u32 = 30;

/// Protocol feature bits this frontend knows.
pub mod protocol {
    /// `VHOST_USER_PROTOCOL_F_MQ`.
    pub const MQ: u32 = 0;
    /// `VHOST_USER_PROTOCOL_F_REPLY_ACK`.
    pub const REPLY_ACK: u32 = 3;
}

/// Requests (`VhostUserRequest`) this frontend sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Request {
    GetFeatures = 1,
    SetFeatures = 2,
    SetOwner = 3,
    SetMemTable = 5,
    SetVringNum = 8,
    SetVringAddr = 9,
    SetVringBase = 10,
    GetVringBase = 11,
    SetVringKick = 12,
    SetVringCall = 13,
    GetProtocolFeatures = 15,
    SetProtocolFeatures = 16,
    GetQueueNum = 17,
    SetVringEnable = 18,
}

/// Header flags: protocol version 1, this is a reply, a reply is wanted.
const VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 1 << 2;
const FLAG_NEED_REPLY: u32 = 1 << 3;
/// Regions `SET_MEM_TABLE` carries at most (`VHOST_MEMORY_BASELINE_NREGIONS`).
pub const MAX_REGIONS: usize = 8;

/// Frontend failures.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// The socket failed (connect, send, receive, timeout). The error is in the message and
    /// not also a `source`, so a chain printed with `{:#}` says it once.
    #[error("vhost-user socket: {0}")]
    Io(io::Error),
    /// The backend answered something this frontend cannot use.
    #[error("vhost-user backend: {0}")]
    Protocol(String),
    /// The backend refused a request (`REPLY_ACK` with a non-zero status).
    #[error("vhost-user backend refused {request:?} (status {status})")]
    Refused { request: Request, status: u64 },
    /// The memory or the queues cannot be described to a backend.
    #[error("vhost-user: {0}")]
    Unsendable(String),
}

impl From<io::Error> for VhostUserError {
    fn from(e: io::Error) -> Self {
        VhostUserError::Io(e)
    }
}

/// A connection to a vhost-user backend.
#[derive(Debug)]
pub struct Frontend {
    sock: UnixStream,
    /// Device features the backend offered (its `GET_FEATURES`).
    offered: Features,
    /// Protocol features agreed on (0 without `VHOST_USER_F_PROTOCOL_FEATURES`).
    protocol: u64,
    /// Device features agreed on.
    features: Features,
    /// Queues started, for [`Frontend::stop`].
    queues: usize,
    /// The memory table sent: (guest-physical, size, frontend address) per region.
    table: Vec<(u64, u64, u64)>,
}

impl Frontend {
    /// Connects to the backend listening on `path`, retrying until `wait` has passed (a
    /// backend that was just started may not be listening yet). Every reply is then awaited
    /// at most `wait`.
    pub fn connect(path: &Path, wait: Duration) -> Result<Frontend, VhostUserError> {
        let deadline = Instant::now() + wait;
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(VhostUserError::Io(io::Error::new(
                        e.kind(),
                        format!("connecting to {}: {e}", path.display()),
                    )))
                }
            }
        };
        sock.set_read_timeout(Some(wait.max(Duration::from_millis(100))))?;
        let mut f = Frontend {
            sock,
            offered: Features::empty(),
            protocol: 0,
            features: Features::empty(),
            queues: 0,
            table: Vec::new(),
        };
        f.send(Request::SetOwner, &[], &[])?;
        Ok(f)
    }

    /// Negotiates device features: the backend's offer (`GET_FEATURES`) and `wanted`, plus
    /// the protocol features both know (`REPLY_ACK`). Returns the device features agreed on,
    /// which the guest's driver must then follow.
    pub fn negotiate(&mut self, wanted: Features) -> Result<Features, VhostUserError> {
        let offered = self.get_u64(Request::GetFeatures)?;
        self.offered = Features(offered);
        let mut set = offered & wanted.0;
        if offered & (1 << F_PROTOCOL_FEATURES) != 0 {
            let theirs = self.get_u64(Request::GetProtocolFeatures)?;
            let ours = 1u64 << protocol::REPLY_ACK;
            let agreed = theirs & ours;
            self.send(Request::SetProtocolFeatures, &agreed.to_le_bytes(), &[])?;
            self.protocol = agreed;
            set |= 1 << F_PROTOCOL_FEATURES;
        }
        self.send(Request::SetFeatures, &set.to_le_bytes(), &[])?;
        self.features = Features(set & !(1 << F_PROTOCOL_FEATURES));
        Ok(self.features)
    }

    /// The device features the backend offered.
    pub fn offered(&self) -> Features {
        self.offered
    }

    /// The protocol features agreed on.
    pub fn protocol_features(&self) -> u64 {
        self.protocol
    }

    /// Sends the guest memory: each region with its fd, its offset in it, and where this
    /// process has it mapped (the frontend address ring addresses are then given in).
    pub fn set_mem_table(&mut self, mem: &GuestMemory) -> Result<(), VhostUserError> {
        let regions = mem.frontend_regions();
        if regions.is_empty() || regions.len() > MAX_REGIONS {
            return Err(VhostUserError::Unsendable(format!(
                "{} memory regions (a table carries 1..={MAX_REGIONS})",
                regions.len()
            )));
        }
        let mut body = Vec::with_capacity(8 + 32 * regions.len());
        body.extend_from_slice(&(regions.len() as u32).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        for (r, _) in &regions {
            for v in [r.gpa, r.size, r.va, r.mmap_offset] {
                body.extend_from_slice(&v.to_le_bytes());
            }
        }
        self.table = regions.iter().map(|(r, _)| (r.gpa, r.size, r.va)).collect();
        let fds: Vec<BorrowedFd<'_>> = regions.iter().map(|(_, fd)| *fd).collect();
        self.send(Request::SetMemTable, &body, &fds)
    }

    /// The frontend address of `len` bytes at guest-physical `gpa` (inside one region).
    fn va(&self, gpa: u64, len: u64) -> Result<u64, VhostUserError> {
        let end = gpa.checked_add(len);
        self.table
            .iter()
            .find(|&&(g, size, _)| gpa >= g && end.is_some_and(|e| e <= g + size))
            .map(|&(g, _, va)| va + (gpa - g))
            .ok_or_else(|| {
                VhostUserError::Unsendable(format!(
                    "{gpa:#x}+{len:#x} is not inside one region of the memory table sent"
                ))
            })
    }

    /// Starts the device's queues (virtio-net order: RX `2n`, TX `2n + 1`), each at the
    /// avail index `bases[i]` (0 for a fresh ring; what [`Frontend::stop`] returned to
    /// resume): size, base, ring addresses, kick and call eventfds (`pairs` is the device's
    /// half of the wiring), then enables them.
    pub fn start(&mut self, pairs: &[QueuePair], bases: &[u16]) -> Result<(), VhostUserError> {
        let queues: Vec<_> = pairs.iter().flat_map(|p| [&p.rx, &p.tx]).collect();
        if bases.len() != queues.len() {
            return Err(VhostUserError::Unsendable(format!(
                "{} bases for {} queues",
                bases.len(),
                queues.len()
            )));
        }
        for (i, (q, &base)) in queues.iter().zip(bases).enumerate() {
            let idx = i as u32;
            self.send(
                Request::SetVringNum,
                &state(idx, u32::from(q.addrs.size)),
                &[],
            )?;
            self.send(Request::SetVringBase, &state(idx, u32::from(base)), &[])?;
            let mut addr = Vec::with_capacity(40);
            addr.extend_from_slice(&idx.to_le_bytes());
            addr.extend_from_slice(&0u32.to_le_bytes()); // flags: no dirty logging
            let n = u64::from(q.addrs.size);
            for (gpa, len) in [
                (q.addrs.desc, 16 * n),
                (q.addrs.used, 6 + 8 * n),
                (q.addrs.avail, 6 + 2 * n),
            ] {
                addr.extend_from_slice(&self.va(gpa, len)?.to_le_bytes());
            }
            addr.extend_from_slice(&0u64.to_le_bytes()); // log_guest_addr
            self.send(Request::SetVringAddr, &addr, &[])?;
            self.send(
                Request::SetVringKick,
                &u64::from(idx).to_le_bytes(),
                &[q.kick.as_fd()],
            )?;
            self.send(
                Request::SetVringCall,
                &u64::from(idx).to_le_bytes(),
                &[q.call.as_fd()],
            )?;
        }
        if self.protocol_features_on() {
            for i in 0..queues.len() {
                self.send(Request::SetVringEnable, &state(i as u32, 1), &[])?;
            }
        }
        self.queues = queues.len();
        Ok(())
    }

    /// Stops every started queue (`GET_VRING_BASE`) and returns where each stopped: the
    /// avail index the backend will take next, in queue order.
    pub fn stop(&mut self) -> Result<Vec<u16>, VhostUserError> {
        let mut bases = Vec::with_capacity(self.queues);
        for i in 0..self.queues {
            if self.protocol_features_on() {
                self.send(Request::SetVringEnable, &state(i as u32, 0), &[])?;
            }
            let body = self.request(Request::GetVringBase, &state(i as u32, 0), &[], 8)?;
            let (idx, num) = (le32(&body[0..4]), le32(&body[4..8]));
            if idx != i as u32 {
                return Err(VhostUserError::Protocol(format!(
                    "GET_VRING_BASE for queue {i} answered for queue {idx}"
                )));
            }
            let base = u16::try_from(num).map_err(|_| {
                VhostUserError::Protocol(format!("queue {i} stopped at index {num} > 65535"))
            })?;
            bases.push(base);
        }
        self.queues = 0;
        Ok(bases)
    }

    /// Sends request `code` with `body` as given, unchecked, and waits for its acknowledgement
    /// when `REPLY_ACK` is on: to play a hostile or broken frontend in tests (ring addresses
    /// outside the memory table, unknown requests, bodies of the wrong size).
    pub fn send_raw(&mut self, code: u32, body: &[u8]) -> Result<(), VhostUserError> {
        let mut hdr = [0u8; 12];
        let flags = if self.reply_ack() { FLAG_NEED_REPLY } else { 0 };
        hdr[0..4].copy_from_slice(&code.to_le_bytes());
        hdr[4..8].copy_from_slice(&(VERSION | flags).to_le_bytes());
        hdr[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
        let mut msg = hdr.to_vec();
        msg.extend_from_slice(body);
        std::io::Write::write_all(&mut self.sock, &msg)?;
        if !self.reply_ack() {
            return Ok(());
        }
        let mut rh = [0u8; 12];
        self.sock.read_exact(&mut rh)?;
        let mut st = [0u8; 8];
        self.sock.read_exact(&mut st)?;
        match le64(&st) {
            0 => Ok(()),
            status => Err(VhostUserError::Refused {
                request: Request::SetVringAddr,
                status,
            }),
        }
    }

    /// Queue pairs the backend serves (`GET_QUEUE_NUM`, with `MQ`; 1 without).
    pub fn queue_num(&mut self) -> Result<u64, VhostUserError> {
        if self.protocol & (1 << protocol::MQ) == 0 {
            return Ok(1);
        }
        self.get_u64(Request::GetQueueNum)
    }

    fn protocol_features_on(&self) -> bool {
        self.offered.has(F_PROTOCOL_FEATURES)
    }

    fn reply_ack(&self) -> bool {
        self.protocol & (1 << protocol::REPLY_ACK) != 0
    }

    fn get_u64(&mut self, req: Request) -> Result<u64, VhostUserError> {
        let body = self.request(req, &[], &[], 8)?;
        Ok(le64(&body))
    }

    /// A request with no reply of its own (acknowledged with `REPLY_ACK`).
    fn send(
        &mut self,
        req: Request,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), VhostUserError> {
        if !self.reply_ack() {
            return self.write(req, 0, body, fds);
        }
        self.write(req, FLAG_NEED_REPLY, body, fds)?;
        let status = le64(&self.read_reply(req, 8)?);
        if status != 0 {
            return Err(VhostUserError::Refused {
                request: req,
                status,
            });
        }
        Ok(())
    }

    /// A request with a reply of `len` bytes.
    fn request(
        &mut self,
        req: Request,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
        len: usize,
    ) -> Result<Vec<u8>, VhostUserError> {
        self.write(req, 0, body, fds)?;
        self.read_reply(req, len)
    }

    fn write(
        &mut self,
        req: Request,
        flags: u32,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), VhostUserError> {
        let mut hdr = [0u8; 12];
        hdr[0..4].copy_from_slice(&(req as u32).to_le_bytes());
        hdr[4..8].copy_from_slice(&(VERSION | flags).to_le_bytes());
        hdr[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
        let iov = [IoSlice::new(&hdr), IoSlice::new(body)];
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(VhostUserError::Unsendable(format!(
                "{} fds do not fit one message",
                fds.len()
            )));
        }
        let want = hdr.len() + body.len();
        let n =
            sendmsg(&self.sock, &iov, &mut anc, SendFlags::NOSIGNAL).map_err(io::Error::from)?;
        if n != want {
            return Err(VhostUserError::Protocol(format!(
                "{req:?}: sent {n} of {want} bytes"
            )));
        }
        Ok(())
    }

    fn read_reply(&mut self, req: Request, len: usize) -> Result<Vec<u8>, VhostUserError> {
        let mut hdr = [0u8; 12];
        self.sock.read_exact(&mut hdr).map_err(|e| {
            io::Error::new(e.kind(), format!("waiting for the reply to {req:?}: {e}"))
        })?;
        let (code, flags, size) = (le32(&hdr[0..4]), le32(&hdr[4..8]), le32(&hdr[8..12]));
        if code != req as u32 || flags & FLAG_REPLY == 0 || flags & 0x3 != VERSION {
            return Err(VhostUserError::Protocol(format!(
                "expected a reply to {req:?}, got request {code} flags {flags:#x}"
            )));
        }
        if size as usize != len {
            return Err(VhostUserError::Protocol(format!(
                "reply to {req:?} has {size} bytes, expected {len}"
            )));
        }
        let mut body = vec![0u8; len];
        self.sock.read_exact(&mut body)?;
        Ok(body)
    }
}

fn state(index: u32, num: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&index.to_le_bytes());
    b[4..8].copy_from_slice(&num.to_le_bytes());
    b
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    //! The frontend against a scripted backend on a socketpair: what goes on the wire.
    use super::*;
    use crate::testbed::{Testbed, TestbedConfig};
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::io::{IoSliceMut, Write};
    use std::os::unix::net::UnixListener;

    /// One received message: request, flags, body, number of fds attached. The header is
    /// read on its own (the fds come with its first byte), then the body.
    fn recv(s: &UnixStream) -> (u32, u32, Vec<u8>, usize) {
        let mut hdr = [0u8; 12];
        let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let n = recvmsg(
            s,
            &mut [IoSliceMut::new(&mut hdr)],
            &mut anc,
            RecvFlags::WAITALL,
        )
        .expect("recvmsg")
        .bytes;
        assert_eq!(n, 12, "a whole header");
        let mut fds = 0;
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                fds += r.count();
            }
        }
        let mut body = vec![0u8; le32(&hdr[8..12]) as usize];
        (&*s).read_exact(&mut body).expect("body");
        (le32(&hdr[0..4]), le32(&hdr[4..8]), body, fds)
    }

    fn reply(mut s: &UnixStream, req: u32, body: &[u8]) {
        let mut m = Vec::new();
        m.extend_from_slice(&req.to_le_bytes());
        m.extend_from_slice(&(VERSION | FLAG_REPLY).to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        s.write_all(&m).expect("reply");
    }

    #[test]
    fn a_session_sends_what_the_specification_says() {
        let dir = std::env::temp_dir().join(format!("vhb-vu-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        let tb = Testbed::new(&TestbedConfig {
            guest_mem_bytes: 1 << 20,
            queue_size: 64,
            pairs: 1,
            frame_len: 64,
            mrg_rxbuf: true,
            region_len: None,
        })
        .expect("testbed");
        let backend = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut seen = Vec::new();
            let offered = (1u64 << 32) | (1 << 15) | (1 << 29) | (1 << F_PROTOCOL_FEATURES);
            loop {
                let (req, flags, body, fds) = recv(&s);
                seen.push((req, body.clone(), fds));
                match req {
                    1 => reply(&s, req, &offered.to_le_bytes()),
                    15 => reply(
                        &s,
                        req,
                        &(1u64 << protocol::REPLY_ACK | 1 << 5).to_le_bytes(),
                    ),
                    11 => {
                        reply(&s, req, &state(le32(&body[0..4]), 7));
                        if le32(&body[0..4]) == 1 {
                            return seen;
                        }
                    }
                    _ => {}
                }
                if flags & FLAG_NEED_REPLY != 0 {
                    reply(&s, req, &0u64.to_le_bytes());
                }
            }
        });
        let mut f = Frontend::connect(&path, Duration::from_secs(5)).expect("connect");
        let wanted = Features::of(&[32, 15, 29, 28, 35]);
        let got = f.negotiate(wanted).expect("negotiate");
        assert_eq!(got, Features::of(&[32, 15, 29]), "the intersection");
        assert_eq!(f.protocol_features(), 1 << protocol::REPLY_ACK);
        f.set_mem_table(&tb.mem).expect("mem table");
        f.start(&tb.device, &[0, 0]).expect("start");
        assert_eq!(f.stop().expect("stop"), vec![7, 7]);
        let seen = backend.join().expect("backend");
        let reqs: Vec<u32> = seen.iter().map(|s| s.0).collect();
        assert_eq!(
            reqs,
            [
                3, 1, 15, 16, 2, 5, // owner, features, protocol features, memory
                8, 10, 9, 12, 13, // queue 0
                8, 10, 9, 12, 13, // queue 1
                18, 18, // enable both
                18, 11, 18, 11, // disable and stop each
            ]
        );
        // SET_FEATURES carries the intersection plus PROTOCOL_FEATURES.
        assert_eq!(le64(&seen[4].1), got.0 | 1 << F_PROTOCOL_FEATURES);
        // SET_MEM_TABLE: one region, one fd, its frontend address, file offset 0.
        let mt = &seen[5];
        assert_eq!((le32(&mt.1[0..4]), mt.2), (1, 1));
        let (r, _) = tb.mem.frontend_regions()[0];
        assert_eq!(le64(&mt.1[8..16]), r.gpa);
        assert_eq!(le64(&mt.1[16..24]), r.size);
        assert_eq!(le64(&mt.1[24..32]), r.va);
        assert_ne!(
            r.va, r.gpa,
            "frontend addresses are not guest-physical ones"
        );
        assert_eq!(le64(&mt.1[32..40]), 0);
        // SET_VRING_ADDR of queue 0: desc, used, avail as frontend addresses.
        let a = &seen[8].1;
        let q = tb.device[0].rx.addrs;
        assert_eq!(le64(&a[8..16]), q.desc - r.gpa + r.va);
        assert_eq!(le64(&a[16..24]), q.used - r.gpa + r.va);
        assert_eq!(le64(&a[24..32]), q.avail - r.gpa + r.va);
        // Kick and call each carry their eventfd.
        assert_eq!((seen[9].2, seen[10].2), (1, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_refusal_names_the_request() {
        let (a, b) = UnixStream::pair().expect("pair");
        let backend = std::thread::spawn(move || {
            let (req, _, _, _) = recv(&b); // SET_OWNER
            assert_eq!(req, 3);
            let (req, _, _, _) = recv(&b);
            reply(&b, req, &(1u64 << F_PROTOCOL_FEATURES).to_le_bytes());
            let (req, _, _, _) = recv(&b);
            reply(&b, req, &(1u64 << protocol::REPLY_ACK).to_le_bytes());
            let _ = recv(&b); // SET_PROTOCOL_FEATURES (no ack yet: asked before agreeing)
            let (req, _, _, _) = recv(&b); // SET_FEATURES
            reply(&b, req, &1u64.to_le_bytes());
        });
        a.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut f = Frontend {
            sock: a,
            offered: Features::empty(),
            protocol: 0,
            features: Features::empty(),
            queues: 0,
            table: Vec::new(),
        };
        f.send(Request::SetOwner, &[], &[]).expect("owner");
        let e = f.negotiate(Features::of(&[32])).expect_err("refused");
        assert!(
            matches!(
                e,
                VhostUserError::Refused {
                    request: Request::SetFeatures,
                    status: 1
                }
            ),
            "{e}"
        );
        backend.join().expect("backend");
    }
}
