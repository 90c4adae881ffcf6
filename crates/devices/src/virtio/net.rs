//! virtio-net: a virtual network interface (VIF) whose frames go to a [`NetBackend`].
//!
//! Queues: receive (0) and transmit (1). Features: `VIRTIO_NET_F_MAC` (the MAC is in the
//! configuration space), `VIRTIO_NET_F_STATUS` (the link's state is there too, and for a
//! driver that negotiated it, activation tells the device so, a change raises a
//! configuration-change interrupt), and the offloads of [`Offloads::FEATURES`]: checksums
//! left to finish and TCP segmentation (IPv4, IPv6, ECN) in both directions.
//!
//! Offloads: every buffer starts with the 12-byte `virtio_net_hdr_v1`, and so does every
//! packet the backend carries (`crate::net_backend`): the header travels with its frame, so a
//! 64 KiB TCP segment crosses the VMM, the switch and the next VMM once instead of as 45
//! frames. On transmit the header is checked against the offloads the driver negotiated
//! (`net_offload::check`; a bad one is dropped and counted as `tx_errors`). On receive, a
//! packet asking for work this driver did not negotiate (an old guest, a module parameter
//! turning offloads off) is finished here: segmented and checksummed in software
//! (`net_offload::deliver`), each segment delivered as a plain frame.
//!
//! Flow control: congestion is pushed back to where it comes from instead of becoming drops,
//! and memory stays bounded whatever the guest and the backend do.
//!
//! - Receive: frames the guest has no buffers for wait in a queue of at most [`MAX_PENDING`]
//!   frames (and [`MAX_PENDING_BYTES`]). When it is full the device stops reading the backend
//!   ([`VirtioDevice::host_interest`]), so the backlog stays in the host (a socket's bounded
//!   buffer, a TAP's queue, which drops and counts there) until the guest posts buffers.
//! - Transmit: a frame the backend refuses for lack of room (`WouldBlock`) is held with the
//!   transmit queue stopped, and sent when the backend polls writable. A backend that stays full
//!   for [`TX_HOLD_MAX`] is a dead link: the held frame, and every frame refused from then until
//!   a send succeeds, are dropped and counted, so the guest's transmit queue keeps moving.
//! - A frame longer than [`MAX_FRAME`], or a transmit chain too short for the header, is dropped
//!   and counted.
//!
//! Control ([`Action`]): `set_link` takes the link down (an unplugged cable: frames waiting for
//! the guest are dropped, the backend is not read, frames the guest sends are dropped and
//! counted) or up again, each time with a configuration-change interrupt; `replace_backend`
//! puts the VIF on a new switch port's socket (a restarted daemon's), offering it a frame held
//! for the old one.
//!
//! Saved state (`docs/formats.md`): the link, the held transmit frame (by its chain's head: the
//! frame is read again from the guest's buffers on restore) and the frames waiting for receive
//! buffers.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::{Reader, StateError, Writer};
use super::{
    check_descriptors, copy_config, device_id, Action, Counters, DeviceError, HostInterest,
    Processed, Queue, QueueError, VirtioDevice, Wake,
};
use crate::net_backend::{NetBackend, PairBackend};
use crate::net_offload::{self, Offloads, VnetHeader, VNET_HDR_LEN};

/// Receive queue index.
pub const RX: usize = 0;
/// Transmit queue index.
pub const TX: usize = 1;
/// Size of `virtio_net_hdr_v1` (with `VERSION_1`, `num_buffers` is always present).
pub const HEADER_LEN: usize = VNET_HDR_LEN;
/// Largest frame moved in either direction (a 64 KiB IP packet with Ethernet and VLAN headers).
pub const MAX_FRAME: usize = net_offload::MAX_FRAME;
/// Largest packet (header and frame) moved in either direction.
pub const MAX_PACKET: usize = HEADER_LEN + MAX_FRAME;
/// Most frames waiting for receive buffers (a packet segmented here may pass it by the
/// segments of one packet).
pub const MAX_PENDING: usize = 256;
/// Most bytes waiting for receive buffers.
pub const MAX_PENDING_BYTES: usize = 1 << 20;
/// Longest a refused transmit frame is held before the link counts as dead.
pub const TX_HOLD_MAX: Duration = Duration::from_millis(250);
/// Most frames taken from the backend per readiness event (then epoll reports it again), so a
/// flooding peer cannot hold the I/O thread.
const DRAIN_BURST: usize = 1024;
const QUEUE_SIZE: u16 = 256;

const F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_MRG_RXBUF`: a received packet may span several buffers (its header says how
/// many), so the driver posts small ones instead of 64 KiB ones for every frame.
const F_MRG_RXBUF: u64 = 1 << 15;
/// Most buffers one received packet may span: a turn's budget, so that a packet always fits in
/// a fresh turn; buffers so small that it does not are the driver's error.
const MAX_MERGED: usize = super::mmio::SERVE_BUDGET as usize;
const F_STATUS: u64 = 1 << 16;
const LINK_UP: u16 = 1;

/// Bits of the saved state's flags byte.
const S_LINK_UP: u8 = 1;
const S_LINK_DEAD: u8 = 2;
const S_HELD: u8 = 4;

/// The names of a VIF's counters, as the API and metrics show them; the indices below follow.
/// The last two are gauges: frames waiting for receive buffers, and whether a transmit frame
/// is held.
pub const COUNTER_NAMES: &[&str] = &[
    "rx_frames",
    "rx_bytes",
    "rx_errors",
    "tx_frames",
    "tx_bytes",
    "tx_dropped",
    "tx_errors",
    "tx_stalls",
    "rx_pending",
    "tx_held",
];
const RX_FRAMES: usize = 0;
const RX_BYTES: usize = 1;
const RX_ERRORS: usize = 2;
const TX_FRAMES: usize = 3;
const TX_BYTES: usize = 4;
const TX_DROPPED: usize = 5;
const TX_ERRORS: usize = 6;
const TX_STALLS: usize = 7;
const RX_PENDING: usize = 8;
const TX_HELD: usize = 9;

/// Per-VIF counters, as a snapshot (see [`Net::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest (frames only, no headers).
    pub rx_bytes: u64,
    /// Frames dropped on the way in: too long for the guest's buffer or for [`MAX_FRAME`], or
    /// asking for offload work that could not be done (unreadable headers).
    pub rx_errors: u64,
    /// Frames sent by the guest and taken by the backend.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames the backend could not take (no peer, an error, or full for longer than
    /// [`TX_HOLD_MAX`]).
    pub tx_dropped: u64,
    /// Transmit chains dropped as malformed: shorter than the header, a frame over
    /// [`MAX_FRAME`], or a header asking for offloads the driver did not negotiate or that do
    /// not fit the frame.
    pub tx_errors: u64,
    /// Times the backend refused a frame for lack of room and transmission paused.
    pub tx_stalls: u64,
}

/// A transmit packet the backend refused for lack of room: its bytes (header and frame) are
/// in `Net::tx_buf`.
#[derive(Clone, Copy, Debug)]
struct HeldFrame {
    head: u16,
    len: usize,
    since: Instant,
}

/// What became of one packet offered to mergeable receive buffers.
enum Merge {
    /// Written across this many buffers.
    Written(u32),
    /// Too few buffers yet: none taken.
    Short,
    /// More than [`MAX_MERGED`] buffers would not hold it: the first went back empty.
    TooSmall,
}

/// What became of one send.
enum Sent {
    Yes,
    /// No room now: hold the frame.
    Busy,
    /// Dropped (counted).
    Dropped,
}

/// A virtio network device.
pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    /// Packets (header and frame) waiting for receive buffers, each one the driver can take.
    pending: VecDeque<Vec<u8>>,
    pending_bytes: usize,
    /// Scratch for one received packet (plus one byte, to recognise oversized ones).
    rx_buf: Vec<u8>,
    /// The packet being sent, kept while it is held.
    tx_buf: Vec<u8>,
    held: Option<HeldFrame>,
    /// The backend stayed full past [`TX_HOLD_MAX`]: refused frames are dropped, not held,
    /// until one goes through.
    link_dead: bool,
    /// The link is up (the control plane can take it down: [`Action::SetLink`]).
    link_up: bool,
    /// The features the driver acknowledged at activation (none before).
    features: u64,
    /// The offload features offered ([`Offloads::FEATURES`], or none).
    offered_offloads: u64,
    /// Counters, shared with the control plane (see [`COUNTER_NAMES`]).
    counters: Arc<Counters>,
}

impl Net {
    /// A VIF with address `mac` on `backend`.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Self {
        Net {
            backend,
            mac,
            pending: VecDeque::new(),
            pending_bytes: 0,
            rx_buf: vec![0; MAX_PACKET + 1],
            tx_buf: vec![0; MAX_PACKET],
            held: None,
            link_dead: false,
            link_up: true,
            features: 0,
            offered_offloads: Offloads::FEATURES,
            counters: Counters::new(COUNTER_NAMES),
        }
    }

    /// The same VIF offering no offloads (`offloads=off`): its guest sends and takes plain
    /// frames of at most its MTU, and what others send it is segmented and checksummed here.
    pub fn without_offloads(mut self) -> Self {
        self.offered_offloads = 0;
        self
    }

    /// The counters now (without the gauges).
    pub fn stats(&self) -> NetStats {
        let c = &self.counters;
        NetStats {
            rx_frames: c.get(RX_FRAMES),
            rx_bytes: c.get(RX_BYTES),
            rx_errors: c.get(RX_ERRORS),
            tx_frames: c.get(TX_FRAMES),
            tx_bytes: c.get(TX_BYTES),
            tx_dropped: c.get(TX_DROPPED),
            tx_errors: c.get(TX_ERRORS),
            tx_stalls: c.get(TX_STALLS),
        }
    }

    /// Publishes the gauges (pending frames, a held frame) after they changed.
    fn publish_gauges(&self) {
        self.counters.set(RX_PENDING, self.pending.len() as u64);
        self.counters.set(TX_HELD, u64::from(self.held.is_some()));
    }

    /// The VIF's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Frames waiting for receive buffers.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether the link is up.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Drops the frames waiting for receive buffers.
    fn drop_pending(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
        self.publish_gauges();
    }

    /// Takes the link down or up; returns whether it changed.
    fn set_link(&mut self, up: bool) -> bool {
        if self.link_up == up {
            return false;
        }
        self.link_up = up;
        if !up {
            self.drop_pending();
        }
        true
    }

    /// Whether a frame of any size still fits in the pending queue.
    fn has_room(&self) -> bool {
        self.pending.len() < MAX_PENDING && self.pending_bytes + MAX_PACKET <= MAX_PENDING_BYTES
    }

    /// Takes up to `limit` packets from the backend into the pending queue, while it has room,
    /// each made into what the driver negotiated (see the module's notes on offloads).
    /// Returns the number of packets taken from the backend.
    fn take_from_backend(&mut self, limit: usize) -> usize {
        let mut taken = 0;
        let accepts = Offloads::receive(self.features);
        while taken < limit && self.has_room() {
            let n = match self.backend.recv(&mut self.rx_buf) {
                Ok(Some(n)) => n,
                // Nothing waiting; a backend error is the host's problem, retried next event.
                Ok(None) | Err(_) => break,
            };
            taken += 1;
            if !(HEADER_LEN..=MAX_PACKET).contains(&n) {
                self.counters.add(RX_ERRORS, 1);
                continue;
            }
            let Some((header, frame)) = self.rx_buf[..n].split_first_chunk::<HEADER_LEN>() else {
                continue;
            };
            let header = VnetHeader::parse(header);
            let (pending, pending_bytes) = (&mut self.pending, &mut self.pending_bytes);
            let mut keep = |header: &VnetHeader, frame: &[u8]| {
                let mut packet = Vec::with_capacity(HEADER_LEN + frame.len());
                packet.extend_from_slice(&header.to_bytes());
                packet.extend_from_slice(frame);
                *pending_bytes += packet.len();
                pending.push_back(packet);
            };
            if net_offload::deliver(&header, frame, accepts, &mut keep).is_err() {
                self.counters.add(RX_ERRORS, 1);
            }
        }
        if taken > 0 {
            self.publish_gauges();
        }
        taken
    }

    /// Moves frames into the guest's receive buffers while both exist.
    fn receive(
        &mut self,
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
    ) -> Result<Processed, QueueError> {
        let mut done = Processed::default();
        // Frames taken from the backend in this call, bounded so that a backend that never
        // runs dry (a flood of frames too big to deliver) cannot hold the I/O thread.
        let mut budget = DRAIN_BURST;
        loop {
            while let Some(packet) = self.pending.front_mut() {
                let len = packet.len();
                if self.features & F_MRG_RXBUF != 0 {
                    match Self::write_merged(packet, queue, mem)? {
                        Merge::Written(buffers) => {
                            self.counters.add(RX_FRAMES, 1);
                            self.counters.add(RX_BYTES, (len - HEADER_LEN) as u64);
                            done.completed += buffers;
                        }
                        Merge::Short => {
                            done.short_of_buffers = true;
                            return Ok(done);
                        }
                        Merge::TooSmall => {
                            self.counters.add(RX_ERRORS, 1);
                            done.completed += 1;
                        }
                    }
                    self.pending_bytes -= len;
                    self.pending.pop_front();
                    self.publish_gauges();
                    continue;
                }
                let Some(chain) = queue.pop(mem)? else {
                    return Ok(done);
                };
                let fits = chain.writable_len() >= len as u64;
                let used = if fits {
                    // num_buffers = 1 (le16): one buffer holds the packet.
                    packet[10..HEADER_LEN].copy_from_slice(&1u16.to_le_bytes());
                    chain.write_at(mem, 0, packet)?;
                    self.counters.add(RX_FRAMES, 1);
                    self.counters.add(RX_BYTES, (len - HEADER_LEN) as u64);
                    len
                } else {
                    // Returned empty: the driver recycles the buffer and counts an error.
                    self.counters.add(RX_ERRORS, 1);
                    0
                };
                queue.add_used(mem, chain.head, used as u32)?;
                done.completed += 1;
                self.pending_bytes -= len;
                self.pending.pop_front();
                self.publish_gauges();
            }
            // The guest may have more buffers: fetch as many frames as the queue holds.
            let taken = self.take_from_backend(MAX_PENDING.min(budget));
            if taken == 0 {
                return Ok(done);
            }
            budget -= taken;
        }
    }

    /// Writes `packet` across as many of the driver's receive buffers as it needs (mergeable
    /// receive buffers), its header's `num_buffers` saying how many, and publishes them
    /// together so the driver never sees part of a packet. Takes nothing while the driver has
    /// made too few available.
    fn write_merged(
        packet: &mut [u8],
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
    ) -> Result<Merge, QueueError> {
        let mut chains: Vec<vring::DescriptorChain> = Vec::new();
        let mut room = 0u64;
        while room < packet.len() as u64 {
            if chains.len() == MAX_MERGED {
                queue.undo_pop((MAX_MERGED - 1) as u16);
                queue.add_used(mem, chains[0].head, 0)?;
                return Ok(Merge::TooSmall);
            }
            let Some(chain) = queue.pop(mem)? else {
                queue.undo_pop(chains.len() as u16);
                return Ok(Merge::Short);
            };
            room += chain.writable_len();
            chains.push(chain);
        }
        let count = chains.len() as u16;
        packet[10..HEADER_LEN].copy_from_slice(&count.to_le_bytes());
        let mut used = Vec::with_capacity(chains.len());
        let mut offset = 0;
        for chain in &chains {
            let room = usize::try_from(chain.writable_len()).unwrap_or(usize::MAX);
            let take = room.min(packet.len() - offset);
            chain.write_at(mem, 0, &packet[offset..offset + take])?;
            used.push((chain.head, take as u32));
            offset += take;
        }
        queue.add_used_batch(mem, &used)?;
        Ok(Merge::Written(u32::from(count)))
    }

    /// Offers the packet in `tx_buf[..len]` to the backend (dropped while the link is down).
    fn send(&mut self, len: usize) -> Sent {
        if !self.link_up {
            self.counters.add(TX_DROPPED, 1);
            return Sent::Dropped;
        }
        match self.backend.send(&self.tx_buf[..len]) {
            Ok(()) => {
                self.counters.add(TX_FRAMES, 1);
                self.counters.add(TX_BYTES, (len - HEADER_LEN) as u64);
                self.link_dead = false;
                Sent::Yes
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.link_dead => Sent::Busy,
            Err(_) => {
                self.counters.add(TX_DROPPED, 1);
                Sent::Dropped
            }
        }
    }

    /// Whether the packet in `tx_buf[..len]` (at least a header) asks only for offloads the
    /// driver negotiated, in a way that fits its frame; `num_buffers` is cleared on the way.
    fn sendable(&mut self, len: usize) -> bool {
        let Some((header, frame)) = self.tx_buf[..len].split_first_chunk_mut::<HEADER_LEN>() else {
            return false;
        };
        let mut parsed = VnetHeader::parse(header);
        parsed.num_buffers = 0;
        header.copy_from_slice(&parsed.to_bytes());
        net_offload::check(&parsed, frame, Offloads::transmit(self.features)).is_ok()
    }

    /// Sends every frame the guest queued for transmission, until the backend has no room.
    fn transmit(
        &mut self,
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
    ) -> Result<Processed, QueueError> {
        let mut done = Processed::default();
        if let Some(held) = self.held {
            match self.send(held.len) {
                Sent::Busy if held.since.elapsed() < TX_HOLD_MAX => {
                    done.throttled = true;
                    return Ok(done);
                }
                Sent::Busy => {
                    self.counters.add(TX_DROPPED, 1);
                    self.link_dead = true;
                }
                Sent::Yes | Sent::Dropped => {}
            }
            self.held = None;
            self.publish_gauges();
            queue.add_used(mem, held.head, 0)?;
            done.completed += 1;
        }
        while let Some(chain) = queue.pop(mem)? {
            let total = chain.readable_len();
            if total < HEADER_LEN as u64 || total > MAX_PACKET as u64 {
                self.counters.add(TX_ERRORS, 1);
            } else {
                let got = chain.read_at(mem, 0, &mut self.tx_buf[..total as usize])?;
                if !self.sendable(got) {
                    self.counters.add(TX_ERRORS, 1);
                } else if let Sent::Busy = self.send(got) {
                    self.counters.add(TX_STALLS, 1);
                    self.held = Some(HeldFrame {
                        head: chain.head,
                        len: got,
                        since: Instant::now(),
                    });
                    self.publish_gauges();
                    done.throttled = true;
                    return Ok(done);
                }
            }
            queue.add_used(mem, chain.head, 0)?;
            done.completed += 1;
        }
        Ok(done)
    }
}

impl VirtioDevice for Net {
    fn label(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
    fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
    fn device_id(&self) -> u32 {
        device_id::NET
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    fn device_features(&self) -> u64 {
        F_MAC | F_STATUS | F_MRG_RXBUF | self.offered_offloads
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6] at 0, status (le16) at 6.
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        let status = if self.link_up { LINK_UP } else { 0 };
        config[6..8].copy_from_slice(&status.to_le_bytes());
        copy_config(&config, offset, data);
    }
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
    ) -> Result<Processed, QueueError> {
        match index {
            RX => self.receive(queue, mem),
            TX => self.transmit(queue, mem),
            _ => Ok(Processed::default()),
        }
    }
    fn host_count(&self) -> usize {
        1
    }
    fn host_fd(&self, source: usize) -> Option<RawFd> {
        (source == 0).then(|| self.backend.raw_fd())
    }
    fn host_interest(&self, source: usize) -> HostInterest {
        if source != 0 {
            return HostInterest::default();
        }
        HostInterest {
            readable: self.has_room() && self.link_up,
            writable: self.held.is_some(),
        }
    }
    fn host_ready(&mut self, source: usize, ready: HostInterest) -> Wake {
        if source != 0 {
            return Wake::default();
        }
        // Read even when the driver is not up (the frames wait, bounded): with room left, a
        // readable descriptor left unread would keep the I/O thread spinning.
        if ready.readable {
            self.take_from_backend(DRAIN_BURST);
        } else if !ready.writable {
            // Woken for an error alone (reported whatever was asked): clear it.
            self.backend.clear_error();
        }
        let rx = if self.pending.is_empty() { 0 } else { 1 << RX };
        let tx = if ready.writable && self.held.is_some() {
            1 << TX
        } else {
            0
        };
        Wake::queues(rx | tx)
    }
    fn activate(&mut self, features: u64, _queues: &[Queue]) -> Result<(), DeviceError> {
        self.features = features;
        Ok(())
    }
    fn control(&mut self, action: Action, fds: Vec<OwnedFd>) -> Result<Wake, DeviceError> {
        check_descriptors(&action, &fds)?;
        match action {
            Action::SetLink { up } => {
                let changed = self.set_link(up);
                Ok(Wake {
                    queues: if changed && up { 1 << RX | 1 << TX } else { 0 },
                    // Only a driver that negotiated STATUS reads the link from the
                    // configuration space; the others are not interrupted for it.
                    config_changed: changed && self.features & F_STATUS != 0,
                })
            }
            Action::ReplaceBackend { port } => {
                let Some(fd) = fds.into_iter().next() else {
                    return Err(DeviceError::Host("no descriptor".into()));
                };
                let backend = PairBackend::new(UnixDatagram::from(fd), &port)
                    .map_err(|e| DeviceError::Host(format!("switch port {port}: {e}")))?;
                self.backend = Box::new(backend);
                // A new link: worth waiting for again; a held frame tries it first.
                self.link_dead = false;
                if let Some(held) = self.held.as_mut() {
                    held.since = Instant::now();
                }
                Ok(Wake::queues(1 << RX | 1 << TX))
            }
            Action::Announce => {
                if self.link_up {
                    let mut packet = vec![0u8; HEADER_LEN];
                    packet.extend_from_slice(&rarp_announcement(self.mac));
                    // Best effort, as any broadcast: a full backend drops it.
                    let _ = self.backend.send(&packet);
                }
                Ok(Wake::default())
            }
            other => Err(DeviceError::Unsupported {
                device: "net",
                action: other.name(),
            }),
        }
    }
    fn save_state(&self) -> Vec<u8> {
        let mut w = Writer::new();
        let bit = |on: bool, bit: u8| if on { bit } else { 0 };
        let flags = bit(self.link_up, S_LINK_UP)
            | bit(self.link_dead, S_LINK_DEAD)
            | bit(self.held.is_some(), S_HELD);
        w.u8(flags)
            .u16(self.held.map_or(0, |h| h.head))
            .bytes(&self.mac)
            .u16(self.pending.len() as u16);
        for packet in &self.pending {
            w.blob(packet);
        }
        w.finish()
    }
    fn restore_state(
        &mut self,
        bytes: &[u8],
        queues: &[Queue],
        mem: &dyn vring::GuestMemory,
    ) -> Result<(), StateError> {
        let bad = |why: String| StateError::Device(format!("net: {why}"));
        let mut r = Reader::new(bytes);
        let flags = r.u8("the VIF's flags")?;
        if flags & !(S_LINK_UP | S_LINK_DEAD | S_HELD) != 0 {
            return Err(bad(format!("flags {flags:#x} hold unknown bits")));
        }
        let head = r.u16("the held frame's head")?;
        let mac = r.bytes(6, "the MAC")?;
        if mac != self.mac {
            return Err(StateError::Mismatch(format!(
                "saved from the VIF {mac:02x?}, restored into {:02x?}",
                self.mac
            )));
        }
        let count = r.u16("the pending frame count")? as usize;
        if count > MAX_PENDING {
            return Err(bad(format!(
                "{count} frames pending, more than {MAX_PENDING}"
            )));
        }
        let mut pending = VecDeque::with_capacity(count);
        let mut pending_bytes = 0usize;
        for _ in 0..count {
            let frame = r.blob(MAX_PACKET, "a pending packet")?;
            if frame.len() < HEADER_LEN {
                return Err(bad(format!("a pending packet of {} bytes", frame.len())));
            }
            pending_bytes += frame.len();
            if pending_bytes > MAX_PENDING_BYTES {
                return Err(bad(format!(
                    "more than {MAX_PENDING_BYTES} bytes of frames pending"
                )));
            }
            pending.push_back(frame.to_vec());
        }
        r.finish()?;
        let held = if flags & S_HELD != 0 {
            // The frame is still in the guest's buffers, which the device owns until it
            // uses them: read it again, checked as when it was first sent.
            let queue = queues
                .get(TX)
                .ok_or_else(|| bad("a held frame, but no transmit queue".into()))?;
            let chain = queue
                .chain_at(mem, head)
                .map_err(|source| StateError::Queue { index: TX, source })?;
            let total = chain.readable_len();
            if total < HEADER_LEN as u64 || total > MAX_PACKET as u64 {
                return Err(bad(format!("the held frame's chain holds {total} bytes")));
            }
            let got = chain
                .read_at(mem, 0, &mut self.tx_buf[..total as usize])
                .map_err(|source| StateError::Queue { index: TX, source })?;
            // The features are set (activation comes before restored device state).
            if !self.sendable(got) {
                return Err(bad(
                    "the held frame's header is not one it could send".into()
                ));
            }
            Some(HeldFrame {
                head,
                len: got,
                since: Instant::now(),
            })
        } else {
            None
        };
        self.link_up = flags & S_LINK_UP != 0;
        self.link_dead = flags & S_LINK_DEAD != 0;
        self.pending = pending;
        self.pending_bytes = pending_bytes;
        self.held = held;
        self.publish_gauges();
        Ok(())
    }
    fn wake_at(&self) -> Option<Instant> {
        self.held.map(|h| h.since + TX_HOLD_MAX)
    }
    fn reset(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
        self.held = None;
        self.link_dead = false;
        self.features = 0;
        self.publish_gauges();
    }
}

/// A broadcast RARP request ("reverse request", opcode 3) from `mac` about itself, padded to
/// Ethernet's 60-byte minimum: what a VIF sends to announce where it now is.
pub fn rarp_announcement(mac: [u8; 6]) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    // Hardware Ethernet (1), protocol IPv4, address lengths 6 and 4, opcode 3.
    f[14..16].copy_from_slice(&1u16.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&3u16.to_be_bytes());
    // Sender and target hardware addresses: its own; protocol addresses unknown (zeros).
    f[22..28].copy_from_slice(&mac);
    f[32..38].copy_from_slice(&mac);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use vring::mock::{MockBuffer, MockDriver, RawDescriptor};

    /// A backend whose packets are in memory: what the device sent (frames, and their
    /// headers apart), what the host has for it (frames given a plain header, or whole
    /// packets, taken first).
    #[derive(Default)]
    struct Wire {
        sent: Vec<Vec<u8>>,
        sent_headers: Vec<VnetHeader>,
        inbox: VecDeque<Vec<u8>>,
        inbox_packets: VecDeque<Vec<u8>>,
        /// Sends fail with this error.
        refuse: Option<io::ErrorKind>,
    }

    struct MockBackend(Arc<Mutex<Wire>>);

    impl NetBackend for MockBackend {
        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            let mut w = self.0.lock().unwrap();
            if let Some(kind) = w.refuse {
                return Err(kind.into());
            }
            let (header, frame) = frame.split_at(HEADER_LEN);
            w.sent_headers
                .push(VnetHeader::parse(header.try_into().unwrap()));
            w.sent.push(frame.to_vec());
            Ok(())
        }
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
            let mut w = self.0.lock().unwrap();
            let packet = w.inbox_packets.pop_front().or_else(|| {
                let frame = w.inbox.pop_front()?;
                Some([&[0u8; HEADER_LEN][..], &frame].concat())
            });
            let Some(f) = packet else {
                return Ok(None);
            };
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            Ok(Some(n))
        }
        fn raw_fd(&self) -> RawFd {
            -1
        }
        fn describe(&self) -> String {
            "mock".into()
        }
    }

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const READABLE: HostInterest = HostInterest {
        readable: true,
        writable: false,
    };
    const WRITABLE: HostInterest = HostInterest {
        readable: false,
        writable: true,
    };

    fn new_net() -> (Arc<Mutex<Wire>>, Net) {
        let wire = Arc::new(Mutex::new(Wire::default()));
        let net = Net::new(Box::new(MockBackend(wire.clone())), MAC);
        (wire, net)
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_add(seed)).collect()
    }

    /// The first buffer's address of the chain at `head`.
    fn first_buffer(driver: &MockDriver, head: u16) -> u64 {
        let d = driver.read(driver.desc_table() + 16 * u64::from(head), 8);
        u64::from_le_bytes(d.try_into().unwrap())
    }

    #[test]
    fn transmitted_frames_reach_the_backend_without_the_header() {
        let (wire, mut net) = new_net();
        let mut driver = MockDriver::new(16, 1 << 20);
        let mut q = driver.queue();
        let f1 = frame(60, 1);
        let f2 = frame(1514, 2);
        // Header and frame in one buffer, and split across three.
        let one = [&[0u8; HEADER_LEN][..], &f1].concat();
        driver.add_chain(&[MockBuffer::Readable(&one)]);
        driver.add_chain(&[
            MockBuffer::Readable(&[0; HEADER_LEN]),
            MockBuffer::Readable(&f2[..100]),
            MockBuffer::Readable(&f2[100..]),
        ]);
        let done = net.process_queue(TX, &mut q, driver.mem()).unwrap();
        assert_eq!(done.completed, 2);
        assert_eq!(wire.lock().unwrap().sent, vec![f1, f2]);
        assert_eq!(driver.used().len(), 2);
        assert_eq!((net.stats().tx_frames, net.stats().tx_bytes), (2, 1574));
    }

    #[test]
    fn an_announcement_is_a_broadcast_rarp_from_the_vif_and_silent_while_the_link_is_down() {
        let (wire, mut net) = new_net();
        net.control(Action::Announce, Vec::new()).unwrap();
        let sent = wire.lock().unwrap().sent.clone();
        assert_eq!(sent.len(), 1);
        let f = &sent[0];
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x80, 0x35], "RARP");
        assert_eq!(&f[20..22], &[0, 3], "a reverse request");
        assert_eq!((&f[22..28], &f[32..38]), (&MAC[..], &MAC[..]));
        net.control(Action::SetLink { up: false }, Vec::new())
            .unwrap();
        net.control(Action::Announce, Vec::new()).unwrap();
        assert_eq!(wire.lock().unwrap().sent.len(), 1);
    }

    /// An IPv4 TCP frame from 10.0.0.1:40000 to 10.0.0.2:80 with `payload` bytes of data, its
    /// checksums left to finish (as a guest using checksum offload sends it).
    fn tcp_frame(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 54 + payload];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&MAC);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f[46] = 5 << 4;
        f[47] = 0x18; // PSH, ACK
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    /// The header a guest puts before a TCP segment of `tcp_frame` for TSO at `mss`.
    fn tso_header(mss: u16) -> VnetHeader {
        VnetHeader {
            flags: net_offload::F_NEEDS_CSUM,
            gso_type: net_offload::GSO_TCPV4,
            hdr_len: 54,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    #[test]
    fn offloads_are_offered_and_a_large_segment_goes_whole_only_when_negotiated() {
        let (wire, mut net) = new_net();
        assert_eq!(
            net.device_features() & Offloads::FEATURES,
            Offloads::FEATURES
        );
        let mut driver = MockDriver::new(16, 1 << 20);
        let mut q = driver.queue();
        let segment = tcp_frame(20_000);
        let mut header = tso_header(1448);
        header.num_buffers = 7; // meaningless on transmit: cleared on the way
        let packet = [&header.to_bytes()[..], &segment].concat();
        // Negotiated: the 20 kB segment goes to the backend once, with its header.
        net.activate(Offloads::FEATURES, &[]).unwrap();
        driver.add_chain(&[MockBuffer::Readable(&packet)]);
        net.process_queue(TX, &mut q, driver.mem()).unwrap();
        header.num_buffers = 0;
        {
            let w = wire.lock().unwrap();
            assert_eq!(w.sent, vec![segment.clone()]);
            assert_eq!(w.sent_headers, vec![header]);
        }
        assert_eq!(net.stats().tx_bytes, segment.len() as u64);
        // Not negotiated (a driver that took checksums but not TSO): dropped as malformed.
        net.activate(1 << 0, &[]).unwrap();
        driver.add_chain(&[MockBuffer::Readable(&packet)]);
        let done = net.process_queue(TX, &mut q, driver.mem()).unwrap();
        assert_eq!(done.completed, 1);
        assert_eq!(net.stats().tx_errors, 1);
        assert_eq!(wire.lock().unwrap().sent.len(), 1);
    }

    #[test]
    fn a_large_segment_reaches_a_driver_without_tso_as_checksummed_frames() {
        let segment = tcp_frame(3000);
        let packet = [&tso_header(1000).to_bytes()[..], &segment].concat();
        for (features, frames) in [(0, 3), (Offloads::FEATURES, 1)] {
            let (wire, mut net) = new_net();
            net.activate(features, &[]).unwrap();
            let mut driver = MockDriver::new(16, 1 << 20);
            let mut q = driver.queue();
            wire.lock().unwrap().inbox_packets.push_back(packet.clone());
            net.host_ready(0, READABLE);
            let heads: Vec<u16> = (0..4)
                .map(|_| driver.add_chain(&[MockBuffer::Writable((HEADER_LEN + 4000) as u32)]))
                .collect();
            net.process_queue(RX, &mut q, driver.mem()).unwrap();
            let used = driver.used();
            assert_eq!(used.len(), frames, "features {features:#x}");
            let mut data = Vec::new();
            for (u, head) in used.iter().zip(&heads) {
                let got = driver.read(first_buffer(&driver, *head), u.len as usize);
                let header = VnetHeader::parse(got[..HEADER_LEN].try_into().unwrap());
                assert_eq!(header.num_buffers, 1);
                if frames == 1 {
                    assert_eq!(header.gso_type, net_offload::GSO_TCPV4, "passed as it is");
                    assert_eq!(&got[HEADER_LEN..], &segment[..]);
                } else {
                    assert_eq!(header.flags, 0, "nothing left to do");
                    assert_eq!(header.gso_type, net_offload::GSO_NONE);
                    assert_eq!(got.len(), HEADER_LEN + 54 + 1000);
                    // The TCP checksum was computed: no longer zero.
                    assert_ne!(&got[HEADER_LEN + 50..HEADER_LEN + 52], &[0, 0]);
                }
                data.extend_from_slice(&got[HEADER_LEN + 54..]);
            }
            assert_eq!(data, segment[54..], "the payload, in order");
            assert_eq!(net.stats().rx_bytes as usize, 54 * frames + 3000);
        }
    }

    #[test]
    fn a_packet_spans_mergeable_buffers_only_once_enough_are_there() {
        let (wire, mut net) = new_net();
        net.activate(F_MRG_RXBUF | Offloads::FEATURES, &[]).unwrap();
        let mut driver = MockDriver::new(16, 1 << 20);
        let mut q = driver.queue();
        let segment = tcp_frame(3000);
        let packet = [&tso_header(1000).to_bytes()[..], &segment].concat();
        wire.lock().unwrap().inbox_packets.push_back(packet.clone());
        net.host_ready(0, READABLE);
        // 2 KiB posted for a packet of 3066 bytes: nothing is taken, and the device says why.
        let first = driver.add_chain(&[MockBuffer::Writable(1024)]);
        let second = driver.add_chain(&[MockBuffer::Writable(1024)]);
        let done = net.process_queue(RX, &mut q, driver.mem()).unwrap();
        assert!(done.short_of_buffers);
        assert_eq!((done.completed, q.next_avail()), (0, 0));
        assert!(driver.used().is_empty());
        // One more: the packet goes into all three, published together.
        let third = driver.add_chain(&[MockBuffer::Writable(1024)]);
        let done = net.process_queue(RX, &mut q, driver.mem()).unwrap();
        assert!(!done.short_of_buffers);
        assert_eq!(done.completed, 3);
        let used = driver.used();
        let lens: Vec<u32> = used.iter().map(|u| u.len).collect();
        assert_eq!(lens, [1024, 1024, packet.len() as u32 - 2048]);
        let mut got = driver.read(first_buffer(&driver, first), 1024);
        got.extend(driver.read(first_buffer(&driver, second), 1024));
        got.extend(driver.read(first_buffer(&driver, third), packet.len() - 2048));
        let header = VnetHeader::parse(got[..HEADER_LEN].try_into().unwrap());
        assert_eq!(header.num_buffers, 3);
        assert_eq!(header.gso_type, net_offload::GSO_TCPV4);
        assert_eq!(&got[HEADER_LEN..], &segment[..]);
        assert_eq!(net.stats().rx_frames, 1);
        // Buffers too small for any packet to fit in MAX_MERGED of them: the first goes back
        // empty, the packet is dropped and counted, the others stay for the next.
        wire.lock().unwrap().inbox.push_back(frame(1514, 0));
        net.host_ready(0, READABLE);
        let mut big = MockDriver::new(128, 1 << 20);
        let mut bq = big.queue();
        let heads: Vec<u16> = (0..MAX_MERGED + 1)
            .map(|_| big.add_chain(&[MockBuffer::Writable(8)]))
            .collect();
        let done = net.process_queue(RX, &mut bq, big.mem()).unwrap();
        assert_eq!(done.completed, 1);
        let used = big.used();
        assert_eq!(used.len(), 1);
        assert_eq!((used[0].id, used[0].len), (u32::from(heads[0]), 0));
        assert_eq!(bq.next_avail(), 1);
        assert_eq!(net.stats().rx_errors, 1);
    }

    #[test]
    fn oversized_short_and_undeliverable_frames_are_dropped_and_counted() {
        let (wire, mut net) = new_net();
        let mut driver = MockDriver::new(16, 1 << 20);
        let mut q = driver.queue();
        let big = vec![0u8; HEADER_LEN + MAX_FRAME + 1];
        driver.add_chain(&[MockBuffer::Readable(&big)]);
        driver.add_chain(&[MockBuffer::Readable(&[0; 5])]);
        driver.add_chain(&[MockBuffer::Writable(64)]);
        let done = net.process_queue(TX, &mut q, driver.mem()).unwrap();
        assert_eq!(done.completed, 3, "every chain is returned to the guest");
        assert_eq!(net.stats().tx_errors, 3);
        // No peer (an unplugged cable): dropped at once, not held.
        wire.lock().unwrap().refuse = Some(io::ErrorKind::ConnectionRefused);
        let ok = [&[0u8; HEADER_LEN][..], &frame(60, 0)].concat();
        driver.add_chain(&[MockBuffer::Readable(&ok)]);
        let done = net.process_queue(TX, &mut q, driver.mem()).unwrap();
        assert!(!done.throttled);
        assert_eq!(net.stats().tx_dropped, 1);
        assert!(wire.lock().unwrap().sent.is_empty());
        assert_eq!(driver.used().len(), 4);
        assert!(!net.host_interest(0).writable);
    }

    #[test]
    fn a_full_backend_pauses_transmission_and_a_dead_one_drops() {
        let (wire, mut net) = new_net();
        let mut driver = MockDriver::new(16, 1 << 20);
        let mut q = driver.queue();
        let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(60 + i, i as u8)).collect();
        let chain = |f: &[u8]| [&[0u8; HEADER_LEN][..], f].concat();
        wire.lock().unwrap().refuse = Some(io::ErrorKind::WouldBlock);
        for f in &frames[..2] {
            driver.add_chain(&[MockBuffer::Readable(&chain(f))]);
        }
        // The first frame is held; the second stays in the ring; the guest gets nothing back.
        let done = net.process_queue(TX, &mut q, driver.mem()).unwrap();
        assert_eq!((done.completed, done.throttled), (0, true));
        assert!(driver.used().is_empty());
        assert!(net.host_interest(0).writable, "waits for room");
        assert!(net.wake_at().is_some(), "and for its deadline");
        assert_eq!(net.stats().tx_stalls, 1);
        // A kick while still full changes nothing.
        let done = net.process_queue(TX, &mut q, driver.mem()).unwrap();
        assert_eq!((done.completed, done.throttled), (0, true));
        // Room again: both go, in order, and nothing was dropped.
        wire.lock().unwrap().refuse = None;
        assert_eq!(net.host_ready(0, WRITABLE), Wake::queues(1 << TX));
        let done = net.process_queue(TX, &mut q, driver.mem()).unwrap();
        assert_eq!((done.completed, done.throttled), (2, false));
        assert_eq!(wire.lock().unwrap().sent, frames[..2].to_vec());
        assert_eq!((net.stats().tx_frames, net.stats().tx_dropped), (2, 0));
        assert!(!net.host_interest(0).writable);
        assert!(net.wake_at().is_none());
        // Full for longer than TX_HOLD_MAX: the held frame and the ones after it are dropped,
        // so the guest's queue keeps moving...
        wire.lock().unwrap().refuse = Some(io::ErrorKind::WouldBlock);
        driver.add_chain(&[MockBuffer::Readable(&chain(&frames[2]))]);
        assert!(
            net.process_queue(TX, &mut q, driver.mem())
                .unwrap()
                .throttled
        );
        std::thread::sleep(TX_HOLD_MAX + Duration::from_millis(20));
        driver.add_chain(&[MockBuffer::Readable(&chain(&frames[3]))]);
        let done = net.process_queue(TX, &mut q, driver.mem()).unwrap();
        assert_eq!((done.completed, done.throttled), (2, false));
        assert_eq!(net.stats().tx_dropped, 2);
        // ...until a send succeeds, which makes a full backend worth waiting for again.
        wire.lock().unwrap().refuse = None;
        driver.add_chain(&[MockBuffer::Readable(&chain(&frames[0]))]);
        net.process_queue(TX, &mut q, driver.mem()).unwrap();
        wire.lock().unwrap().refuse = Some(io::ErrorKind::WouldBlock);
        driver.add_chain(&[MockBuffer::Readable(&chain(&frames[1]))]);
        assert!(
            net.process_queue(TX, &mut q, driver.mem())
                .unwrap()
                .throttled
        );
        // A reset forgets the held frame.
        net.reset();
        assert!(!net.host_interest(0).writable);
    }

    /// The counters the control plane holds (taken once, read without the device) follow the
    /// device, gauges included.
    #[test]
    fn the_shared_counters_follow_the_device_gauges_included() {
        let (wire, mut net) = new_net();
        let shared = net.counters();
        let names: Vec<&str> = shared.snapshot().iter().map(|(n, _)| *n).collect();
        // The names the API and metrics have always shown.
        assert_eq!(
            names,
            [
                "rx_frames",
                "rx_bytes",
                "rx_errors",
                "tx_frames",
                "tx_bytes",
                "tx_dropped",
                "tx_errors",
                "tx_stalls",
                "rx_pending",
                "tx_held"
            ]
        );
        let get = |name: &str| {
            shared
                .snapshot()
                .into_iter()
                .find(|(n, _)| *n == name)
                .unwrap()
                .1
        };
        wire.lock().unwrap().inbox.push_back(frame(60, 1));
        net.host_ready(0, READABLE);
        assert_eq!(get("rx_pending"), 1, "a frame waits for a buffer");
        let mut driver = MockDriver::new(16, 1 << 20);
        let mut rx = driver.queue();
        driver.add_chain(&[MockBuffer::Writable(1526)]);
        net.process_queue(RX, &mut rx, driver.mem()).unwrap();
        assert_eq!(
            (get("rx_pending"), get("rx_frames"), get("rx_bytes")),
            (0, 1, 60)
        );
        let mut driver = MockDriver::new(16, 1 << 20);
        let mut tx = driver.queue();
        wire.lock().unwrap().refuse = Some(io::ErrorKind::WouldBlock);
        driver.add_chain(&[MockBuffer::Readable(&[0; HEADER_LEN + 60])]);
        net.process_queue(TX, &mut tx, driver.mem()).unwrap();
        assert_eq!((get("tx_held"), get("tx_stalls")), (1, 1));
        net.reset();
        assert_eq!(get("tx_held"), 0);
    }

    #[test]
    fn received_frames_land_in_guest_buffers_after_a_header() {
        let (wire, mut net) = new_net();
        let mut driver = MockDriver::new(16, 1 << 20);
        let mut q = driver.queue();
        let f = frame(98, 7);
        wire.lock().unwrap().inbox.push_back(f.clone());
        assert_eq!(net.host_ready(0, READABLE), Wake::queues(1 << RX));
        let head = driver.add_chain(&[MockBuffer::Writable(1526)]);
        let done = net.process_queue(RX, &mut q, driver.mem()).unwrap();
        assert_eq!(done.completed, 1);
        let used = driver.used();
        assert_eq!(used[0].len as usize, HEADER_LEN + 98);
        let got = driver.read(first_buffer(&driver, head), HEADER_LEN + 98);
        let mut header = [0u8; HEADER_LEN];
        header[10] = 1;
        assert_eq!(&got[..HEADER_LEN], &header, "num_buffers = 1, nothing else");
        assert_eq!(&got[HEADER_LEN..], &f[..]);
        // With buffers already posted, a frame goes straight through.
        driver.add_chain(&[MockBuffer::Writable(1526)]);
        wire.lock().unwrap().inbox.push_back(frame(60, 0));
        net.process_queue(RX, &mut q, driver.mem()).unwrap();
        assert_eq!(driver.used().len(), 1);
        assert_eq!((net.stats().rx_frames, net.stats().rx_bytes), (2, 158));
        assert_eq!(net.pending(), 0);
    }

    #[test]
    fn a_guest_that_stops_reading_costs_bounded_memory_and_stops_the_backend() {
        let (wire, mut net) = new_net();
        let extra = 100;
        for i in 0..MAX_PENDING + extra {
            wire.lock().unwrap().inbox.push_back(frame(60, i as u8));
        }
        // The backend is read until the pending queue is full; the rest stays in the host,
        // and the device stops asking to read.
        assert!(net.host_interest(0).readable);
        assert_eq!(net.host_ready(0, READABLE), Wake::queues(1 << RX));
        assert_eq!(wire.lock().unwrap().inbox.len(), extra);
        assert_eq!(net.pending(), MAX_PENDING);
        assert!(!net.host_interest(0).readable);
        assert_eq!(net.host_ready(0, READABLE), Wake::queues(1 << RX));
        assert_eq!(wire.lock().unwrap().inbox.len(), extra, "nothing more read");
        // The byte bound holds too: large frames stop at MAX_PENDING_BYTES.
        let (wire2, mut net2) = new_net();
        for _ in 0..64 {
            wire2.lock().unwrap().inbox.push_back(vec![0; MAX_FRAME]);
        }
        net2.host_ready(0, READABLE);
        assert!(net2.pending_bytes <= MAX_PENDING_BYTES);
        assert_eq!(net2.pending() + wire2.lock().unwrap().inbox.len(), 64);
        assert!(!net2.host_interest(0).readable);
        // Once the guest posts buffers, the oldest pending frames arrive in order.
        let mut driver = MockDriver::new(256, 1 << 20);
        let mut q = driver.queue();
        let mut heads = Vec::new();
        for _ in 0..8 {
            heads.push(driver.add_chain(&[MockBuffer::Writable(1526)]));
        }
        assert_eq!(
            net.process_queue(RX, &mut q, driver.mem())
                .unwrap()
                .completed,
            8
        );
        for (i, head) in heads.into_iter().enumerate() {
            let got = driver.read(first_buffer(&driver, head) + HEADER_LEN as u64, 60);
            assert_eq!(got, frame(60, i as u8));
        }
        // Room again: the device asks to read, and refills the queue in order.
        assert_eq!(net.pending(), MAX_PENDING - 8);
        assert!(net.host_interest(0).readable);
        net.host_ready(0, READABLE);
        assert_eq!(net.pending(), MAX_PENDING);
        assert_eq!(wire.lock().unwrap().inbox.len(), extra - 8);
        // A reset forgets them.
        net.reset();
        assert_eq!(net.pending(), 0);
        // A backend that never runs dry of undeliverable frames does not hold the device.
        wire.lock().unwrap().inbox.clear();
        for _ in 0..3 * DRAIN_BURST {
            wire.lock().unwrap().inbox.push_back(vec![0; MAX_FRAME + 1]);
        }
        driver.add_chain(&[MockBuffer::Writable(1526)]);
        net.process_queue(RX, &mut q, driver.mem()).unwrap();
        assert_eq!(wire.lock().unwrap().inbox.len(), 2 * DRAIN_BURST);
        assert_eq!(net.stats().rx_errors, DRAIN_BURST as u64);
    }

    #[test]
    fn hostile_receive_and_transmit_chains_do_not_panic() {
        let (wire, mut net) = new_net();
        let mut driver = MockDriver::new(16, 1 << 16);
        let mut q = driver.queue();
        // Receive buffers that are read-only or too small: returned empty, counted.
        wire.lock()
            .unwrap()
            .inbox
            .extend([frame(60, 0), frame(1514, 0), vec![0; MAX_FRAME + 1]]);
        driver.add_chain(&[MockBuffer::Readable(&[0; 64])]);
        driver.add_chain(&[MockBuffer::Writable(100)]);
        net.process_queue(RX, &mut q, driver.mem()).unwrap();
        let used = driver.used();
        assert_eq!(used.iter().map(|u| u.len).collect::<Vec<_>>(), [0, 0]);
        assert_eq!(
            net.stats().rx_errors,
            3,
            "two frames too big for their buffers, one oversized"
        );
        // A transmit descriptor pointing outside guest memory breaks the queue, not the VMM.
        let mut tq = driver.queue();
        let head = driver.add_chain(&[MockBuffer::Readable(&[0; 32])]);
        driver.write_descriptor(
            head,
            RawDescriptor {
                addr: u64::MAX - 4,
                len: 64,
                flags: 0,
                next: 0,
            },
        );
        assert!(net.process_queue(TX, &mut tq, driver.mem()).is_err());
        // An unknown queue index is ignored.
        assert_eq!(
            net.process_queue(7, &mut tq, driver.mem()).unwrap(),
            Processed::default()
        );
    }

    use crate::virtio::test_support::{Counter, DriverMemory};

    /// Brings up the receive queue only, as a driver would.
    fn bring_up_rx(
        t: &mut crate::virtio::mmio::MmioTransport,
        driver: &Arc<Mutex<MockDriver>>,
        features: u64,
    ) {
        use crate::bus::BusDevice;
        use crate::virtio::mmio::status;
        let mut w = |offset: u64, v: u32| t.write(offset, &v.to_le_bytes());
        w(0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(0x24, 0);
        w(0x20, features as u32);
        w(0x24, 1);
        w(0x20, (features >> 32) as u32);
        w(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        let (desc, avail, used, size) = {
            let d = driver.lock().unwrap();
            (d.desc_table(), d.avail_ring(), d.used_ring(), d.size())
        };
        w(0x30, RX as u32);
        w(0x38, u32::from(size));
        for (reg, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            w(reg, addr as u32);
            w(reg + 4, (addr >> 32) as u32);
        }
        w(0x44, 1);
        w(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    #[test]
    fn the_transport_drains_the_host_side_and_interrupts_only_when_live() {
        use crate::bus::BusDevice;
        use crate::virtio::mmio::{MmioTransport, QUEUE_NOTIFY};
        use crate::virtio::{feature, Memory};
        let w = |t: &mut MmioTransport, offset: u64, v: u32| t.write(offset, &v.to_le_bytes());
        let irqs = |c: &Counter| c.count();

        let (wire, net) = new_net();
        let driver = Arc::new(Mutex::new(MockDriver::new(16, 1 << 20)));
        let irq = Arc::new(Counter::default());
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let mut t = MmioTransport::new(Box::new(net), mem, irq.clone());
        assert!(t.host_fd(0).is_some());
        // Frames before the driver is up are taken in (the descriptor must not stay readable)
        // but not delivered, and raise nothing.
        wire.lock().unwrap().inbox.push_back(frame(60, 1));
        t.host_ready(0, READABLE);
        assert!(wire.lock().unwrap().inbox.is_empty());
        assert_eq!(irqs(&irq), 0);
        bring_up_rx(&mut t, &driver, feature::VERSION_1);
        // One buffer, two frames: the first goes in and interrupts, the second waits.
        driver
            .lock()
            .unwrap()
            .add_chain(&[MockBuffer::Writable(1526)]);
        wire.lock().unwrap().inbox.push_back(frame(70, 2));
        t.host_ready(0, READABLE);
        assert_eq!(irqs(&irq), 1);
        assert_eq!(
            driver.lock().unwrap().used()[0].len as usize,
            HEADER_LEN + 60
        );
        // Buffers posted with nothing to put in them stay available, and a kick returns (it
        // used to spin: the buffers it leaves are "available" forever).
        let (wire2, net2) = new_net();
        let driver2 = Arc::new(Mutex::new(MockDriver::new(16, 1 << 20)));
        let mem2 = Memory(Arc::new(DriverMemory(driver2.clone())));
        let mut t2 = MmioTransport::new(Box::new(net2), mem2, Arc::new(Counter::default()));
        bring_up_rx(
            &mut t2,
            &driver2,
            feature::VERSION_1 | feature::RING_EVENT_IDX,
        );
        driver2
            .lock()
            .unwrap()
            .add_chain(&[MockBuffer::Writable(1526)]);
        w(&mut t2, QUEUE_NOTIFY, RX as u32);
        assert!(driver2.lock().unwrap().used().is_empty());
        wire2.lock().unwrap().inbox.push_back(frame(60, 3));
        t2.host_ready(0, READABLE);
        assert_eq!(driver2.lock().unwrap().used().len(), 1);
        // A new buffer and a kick deliver the waiting frame.
        driver
            .lock()
            .unwrap()
            .add_chain(&[MockBuffer::Writable(1526)]);
        w(&mut t, QUEUE_NOTIFY, RX as u32);
        assert_eq!(irqs(&irq), 2);
        assert_eq!(
            driver.lock().unwrap().used()[0].len as usize,
            HEADER_LEN + 70
        );
        // Nothing waiting: no interrupt.
        t.host_ready(0, READABLE);
        assert_eq!(irqs(&irq), 2);
    }

    /// A transport around a VIF on a mock wire, its transmit queue brought up on `driver`.
    fn live_tx(
        driver: &Arc<Mutex<MockDriver>>,
        net: Net,
    ) -> (crate::virtio::mmio::MmioTransport, Arc<Counter>) {
        use crate::virtio::{feature, Memory};
        let irq = Arc::new(Counter::default());
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let mut t = crate::virtio::mmio::MmioTransport::new(Box::new(net), mem, irq.clone());
        crate::virtio::test_support::bring_up(
            &mut t,
            driver,
            feature::VERSION_1 | F_STATUS | F_MAC,
            &[TX as u32],
        );
        (t, irq)
    }

    fn link_status(t: &mut crate::virtio::mmio::MmioTransport) -> u16 {
        use crate::bus::BusDevice;
        let mut status = [0u8; 2];
        t.read(0x100 + 6, &mut status);
        u16::from_le_bytes(status)
    }

    #[test]
    fn the_link_goes_down_and_up_with_a_configuration_interrupt_each_time() {
        let (wire, net) = new_net();
        let driver = Arc::new(Mutex::new(MockDriver::new(16, 1 << 20)));
        let (mut t, irq) = live_tx(&driver, net);
        assert_eq!(link_status(&mut t), LINK_UP);
        wire.lock().unwrap().inbox.push_back(frame(60, 1));
        t.host_ready(0, READABLE);
        assert_eq!(irq.count(), 0, "the receive queue is not up");
        t.control(Action::SetLink { up: false }, Vec::new())
            .unwrap();
        assert_eq!(link_status(&mut t), 0);
        assert_eq!(irq.count(), 1, "the configuration-change interrupt");
        assert!(!t.host_interest(0).readable, "a down link reads nothing");
        let pending =
            |t: &crate::virtio::mmio::MmioTransport| t.device().counters().snapshot()[RX_PENDING].1;
        assert_eq!(pending(&t), 0, "frames waiting for the guest are dropped");
        // Frames the guest sends on a down link are dropped and counted.
        driver
            .lock()
            .unwrap()
            .add_chain(&[MockBuffer::Readable(&[0; HEADER_LEN + 60])]);
        t.notified();
        assert_eq!(driver.lock().unwrap().used().len(), 1);
        assert!(wire.lock().unwrap().sent.is_empty());
        assert_eq!(t.device().counters().snapshot()[TX_DROPPED].1, 1);
        assert_eq!(irq.count(), 2, "and the used-buffer interrupt for it");
        // Down again: nothing changes, no interrupt.
        t.control(Action::SetLink { up: false }, Vec::new())
            .unwrap();
        assert_eq!(irq.count(), 2);
        t.control(Action::SetLink { up: true }, Vec::new()).unwrap();
        assert_eq!(link_status(&mut t), LINK_UP);
        assert_eq!(irq.count(), 3);
        driver
            .lock()
            .unwrap()
            .add_chain(&[MockBuffer::Readable(&[0; HEADER_LEN + 60])]);
        t.notified();
        assert_eq!(
            wire.lock().unwrap().sent.len(),
            1,
            "sent once the link is up"
        );
        // A driver that did not negotiate STATUS is not interrupted for its link (the device
        // behaves per the features activation handed it).
        let (_wire, plain) = new_net();
        let driver = Arc::new(Mutex::new(MockDriver::new(16, 1 << 20)));
        let mem = crate::virtio::Memory(Arc::new(DriverMemory(driver.clone())));
        let irq = Arc::new(Counter::default());
        let mut t = crate::virtio::mmio::MmioTransport::new(Box::new(plain), mem, irq.clone());
        crate::virtio::test_support::bring_up(
            &mut t,
            &driver,
            crate::virtio::feature::VERSION_1,
            &[TX as u32],
        );
        t.control(Action::SetLink { up: false }, Vec::new())
            .unwrap();
        assert_eq!(irq.count(), 0);
        assert_eq!(link_status(&mut t), 0, "the status still says so");
    }

    #[test]
    fn a_new_backend_takes_over_and_gets_the_frame_held_for_the_old_one() {
        use std::os::fd::{AsRawFd, OwnedFd};
        use std::os::unix::net::UnixDatagram;
        let (wire, net) = new_net();
        let driver = Arc::new(Mutex::new(MockDriver::new(16, 1 << 20)));
        let (mut t, _) = live_tx(&driver, net);
        wire.lock().unwrap().refuse = Some(io::ErrorKind::WouldBlock);
        let f = frame(60, 9);
        driver
            .lock()
            .unwrap()
            .add_chain(&[MockBuffer::Readable(&[&[0u8; HEADER_LEN][..], &f].concat())]);
        t.notified();
        assert!(t.host_interest(0).writable, "a frame is held");
        assert!(driver.lock().unwrap().used().is_empty());
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        // The wrong number of descriptors is refused, and changes nothing.
        let err = t
            .control(Action::ReplaceBackend { port: "p0".into() }, Vec::new())
            .unwrap_err();
        assert!(matches!(err, DeviceError::Descriptors { .. }), "{err}");
        let fd = ours.as_raw_fd();
        t.control(
            Action::ReplaceBackend { port: "p0".into() },
            vec![OwnedFd::from(ours)],
        )
        .unwrap();
        assert_eq!(t.host_fd(0), Some(fd), "the I/O thread watches the new one");
        theirs.set_nonblocking(true).unwrap();
        let mut got = [0u8; 200];
        let n = theirs
            .recv(&mut got)
            .expect("the held frame went to the new port");
        assert_eq!(&got[HEADER_LEN..n], &f[..]);
        assert_eq!(driver.lock().unwrap().used().len(), 1);
        // And frames come in from it.
        theirs
            .send(&[&[0u8; HEADER_LEN][..], &frame(70, 3)].concat())
            .unwrap();
        t.host_ready(0, READABLE);
        assert_eq!(t.device().counters().snapshot()[RX_PENDING].1, 1);
    }

    /// A VIF's state saved with a transmit frame held (the backend full) and received frames
    /// waiting for buffers restores into a fresh VIF on a new backend: the held frame is sent
    /// once, and completed once; the waiting frames are still there; the link stays down.
    #[test]
    fn a_vif_saved_mid_io_restores_its_held_and_pending_frames() {
        use crate::virtio::mmio::MmioTransport;
        use crate::virtio::Memory;
        let (wire, net) = new_net();
        let driver = Arc::new(Mutex::new(MockDriver::new(16, 1 << 20)));
        let (mut t, _) = live_tx(&driver, net);
        wire.lock().unwrap().refuse = Some(io::ErrorKind::WouldBlock);
        let f = frame(100, 4);
        let head = driver
            .lock()
            .unwrap()
            .add_chain(&[MockBuffer::Readable(&[&[0u8; HEADER_LEN][..], &f].concat())]);
        driver
            .lock()
            .unwrap()
            .add_chain(&[MockBuffer::Readable(&[0; HEADER_LEN + 60])]);
        t.notified();
        wire.lock()
            .unwrap()
            .inbox
            .extend([frame(60, 1), frame(61, 2)]);
        t.host_ready(0, READABLE);
        t.control(Action::SetLink { up: false }, Vec::new())
            .unwrap();
        wire.lock().unwrap().inbox.push_back(frame(62, 3));
        t.set_quiesced(true);
        let saved = t.save();
        drop(t);

        let (wire2, fresh) = new_net();
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let mut t = MmioTransport::restore(
            Box::new(fresh),
            mem,
            Arc::new(Counter::default()),
            &saved,
            true,
        )
        .unwrap();
        assert_eq!(link_status(&mut t), 0, "still down");
        assert!(t.host_interest(0).writable, "still holding the frame");
        t.control(Action::SetLink { up: true }, Vec::new()).unwrap();
        t.set_quiesced(false);
        assert_eq!(
            wire2.lock().unwrap().sent,
            vec![f, vec![0; 60]],
            "sent once, to the new backend, then the frame behind it"
        );
        let used: Vec<u32> = driver.lock().unwrap().used().iter().map(|u| u.id).collect();
        assert_eq!(used.len(), 2, "the held frame and the one behind it");
        assert_eq!(used[0], u32::from(head));
        // A VIF with another MAC is not this one.
        let other = Net::new(Box::new(MockBackend(Arc::default())), [2, 0, 0, 0, 0, 7]);
        let mem = Memory(Arc::new(DriverMemory(driver.clone())));
        let err = MmioTransport::restore(
            Box::new(other),
            mem,
            Arc::new(Counter::default()),
            &saved,
            false,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("saved from the VIF"), "{err}");
    }

    #[test]
    fn config_space_holds_the_mac_and_link_up() {
        let (_wire, net) = new_net();
        assert_eq!(net.device_features() & (F_MAC | F_STATUS), F_MAC | F_STATUS);
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, MAC);
        let mut status = [0u8; 2];
        net.read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), LINK_UP);
        let mut b = [0u8; 1];
        net.read_config(3, &mut b);
        assert_eq!(b[0], MAC[3]);
        for (offset, len) in [(7, 4), (8, 1), (u64::MAX, 2), (1 << 40, 4)] {
            let mut out = vec![0xffu8; len];
            net.read_config(offset, &mut out);
            assert!(out.iter().all(|&x| x == 0), "{offset} {len}");
        }
    }
}
