//! virtio-net: a virtual network interface (VIF) whose frames go to a [`NetBackend`].
//!
//! Queues: receive (0) and transmit (1). Features: `VIRTIO_NET_F_MAC` (the MAC is in the
//! configuration space) and `VIRTIO_NET_F_STATUS` (the link is always up); no offloads, so the
//! guest sends and expects complete frames with valid checksums. Every buffer starts with the
//! 12-byte `virtio_net_hdr_v1`; without offloads the device ignores it on transmit and writes
//! one with only `num_buffers = 1` on receive.
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

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{device_id, Counters, HostInterest, Processed, Queue, QueueError, VirtioDevice};
use crate::net_backend::NetBackend;

/// Receive queue index.
pub const RX: usize = 0;
/// Transmit queue index.
pub const TX: usize = 1;
/// Size of `virtio_net_hdr_v1` (with `VERSION_1`, `num_buffers` is always present).
pub const HEADER_LEN: usize = 12;
/// Largest frame moved in either direction (a 64 KiB IP packet with Ethernet and VLAN headers).
pub const MAX_FRAME: usize = 65550;
/// Most frames waiting for receive buffers.
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
const F_STATUS: u64 = 1 << 16;
const LINK_UP: u16 = 1;

/// The names of a VIF's counters, as the API and metrics show them; the indices below follow.
/// The last two are gauges: frames waiting for receive buffers, and whether a transmit frame
/// is held.
const COUNTER_NAMES: &[&str] = &[
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
    /// Frames dropped on the way in: too long for the guest's buffer or for [`MAX_FRAME`].
    pub rx_errors: u64,
    /// Frames sent by the guest and taken by the backend.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames the backend could not take (no peer, an error, or full for longer than
    /// [`TX_HOLD_MAX`]).
    pub tx_dropped: u64,
    /// Transmit chains dropped as malformed: shorter than the header, or a frame over
    /// [`MAX_FRAME`].
    pub tx_errors: u64,
    /// Times the backend refused a frame for lack of room and transmission paused.
    pub tx_stalls: u64,
}

/// A transmit frame the backend refused for lack of room: its bytes are in `Net::tx_buf`.
#[derive(Clone, Copy, Debug)]
struct HeldFrame {
    head: u16,
    len: usize,
    since: Instant,
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
    pending: VecDeque<Vec<u8>>,
    pending_bytes: usize,
    /// Scratch for one received frame (plus one byte, to recognise oversized ones).
    rx_buf: Vec<u8>,
    /// The frame being sent, kept while it is held.
    tx_buf: Vec<u8>,
    held: Option<HeldFrame>,
    /// The backend stayed full past [`TX_HOLD_MAX`]: refused frames are dropped, not held,
    /// until one goes through.
    link_dead: bool,
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
            rx_buf: vec![0; MAX_FRAME + 1],
            tx_buf: vec![0; MAX_FRAME],
            held: None,
            link_dead: false,
            counters: Counters::new(COUNTER_NAMES),
        }
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

    /// Whether a frame of any size still fits in the pending queue.
    fn has_room(&self) -> bool {
        self.pending.len() < MAX_PENDING && self.pending_bytes + MAX_FRAME <= MAX_PENDING_BYTES
    }

    /// Takes up to `limit` frames from the backend into the pending queue, while it has room.
    /// Returns the number of frames taken from the backend.
    fn take_from_backend(&mut self, limit: usize) -> usize {
        let mut taken = 0;
        while taken < limit && self.has_room() {
            let n = match self.backend.recv(&mut self.rx_buf) {
                Ok(Some(n)) => n,
                // Nothing waiting; a backend error is the host's problem, retried next event.
                Ok(None) | Err(_) => break,
            };
            taken += 1;
            if n > MAX_FRAME {
                self.counters.add(RX_ERRORS, 1);
            } else {
                self.pending.push_back(self.rx_buf[..n].to_vec());
                self.pending_bytes += n;
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
            while let Some(frame) = self.pending.front() {
                let Some(chain) = queue.pop(mem)? else {
                    return Ok(done);
                };
                let len = frame.len();
                let fits = chain.writable_len() >= (HEADER_LEN + len) as u64;
                let used = if fits {
                    let mut header = [0u8; HEADER_LEN];
                    header[10] = 1; // num_buffers = 1 (le16)
                    chain.write_at(mem, 0, &header)?;
                    chain.write_at(mem, HEADER_LEN as u64, frame)?;
                    self.counters.add(RX_FRAMES, 1);
                    self.counters.add(RX_BYTES, len as u64);
                    HEADER_LEN + len
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

    /// Offers the frame in `tx_buf[..len]` to the backend.
    fn send(&mut self, len: usize) -> Sent {
        match self.backend.send(&self.tx_buf[..len]) {
            Ok(()) => {
                self.counters.add(TX_FRAMES, 1);
                self.counters.add(TX_BYTES, len as u64);
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
            if total < HEADER_LEN as u64 || total - HEADER_LEN as u64 > MAX_FRAME as u64 {
                self.counters.add(TX_ERRORS, 1);
            } else {
                let len = (total - HEADER_LEN as u64) as usize;
                let got = chain.read_at(mem, HEADER_LEN as u64, &mut self.tx_buf[..len])?;
                if let Sent::Busy = self.send(got) {
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
        F_MAC | F_STATUS
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6] at 0, status (le16) at 6.
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| config.get(start..start.checked_add(data.len())?));
        match bytes {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
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
    fn host_fd(&self) -> Option<RawFd> {
        Some(self.backend.raw_fd())
    }
    fn host_interest(&self) -> HostInterest {
        HostInterest {
            readable: self.has_room(),
            writable: self.held.is_some(),
        }
    }
    fn host_ready(&mut self, ready: HostInterest) -> u64 {
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
        rx | tx
    }
    fn wake_at(&self) -> Option<Instant> {
        self.held.map(|h| h.since + TX_HOLD_MAX)
    }
    fn reset(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
        self.held = None;
        self.link_dead = false;
        self.publish_gauges();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use vring::mock::{MockBuffer, MockDriver, RawDescriptor};

    /// A backend whose frames are in memory: what the device sent, what the host has for it.
    #[derive(Default)]
    struct Wire {
        sent: Vec<Vec<u8>>,
        inbox: VecDeque<Vec<u8>>,
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
            w.sent.push(frame.to_vec());
            Ok(())
        }
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
            let Some(f) = self.0.lock().unwrap().inbox.pop_front() else {
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
        assert!(!net.host_interest().writable);
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
        assert!(net.host_interest().writable, "waits for room");
        assert!(net.wake_at().is_some(), "and for its deadline");
        assert_eq!(net.stats().tx_stalls, 1);
        // A kick while still full changes nothing.
        let done = net.process_queue(TX, &mut q, driver.mem()).unwrap();
        assert_eq!((done.completed, done.throttled), (0, true));
        // Room again: both go, in order, and nothing was dropped.
        wire.lock().unwrap().refuse = None;
        assert_eq!(net.host_ready(WRITABLE), 1 << TX);
        let done = net.process_queue(TX, &mut q, driver.mem()).unwrap();
        assert_eq!((done.completed, done.throttled), (2, false));
        assert_eq!(wire.lock().unwrap().sent, frames[..2].to_vec());
        assert_eq!((net.stats().tx_frames, net.stats().tx_dropped), (2, 0));
        assert!(!net.host_interest().writable);
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
        assert!(!net.host_interest().writable);
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
        net.host_ready(READABLE);
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
        assert_eq!(net.host_ready(READABLE), 1 << RX);
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
        assert!(net.host_interest().readable);
        assert_eq!(net.host_ready(READABLE), 1 << RX);
        assert_eq!(wire.lock().unwrap().inbox.len(), extra);
        assert_eq!(net.pending(), MAX_PENDING);
        assert!(!net.host_interest().readable);
        assert_eq!(net.host_ready(READABLE), 1 << RX);
        assert_eq!(wire.lock().unwrap().inbox.len(), extra, "nothing more read");
        // The byte bound holds too: large frames stop at MAX_PENDING_BYTES.
        let (wire2, mut net2) = new_net();
        for _ in 0..64 {
            wire2.lock().unwrap().inbox.push_back(vec![0; MAX_FRAME]);
        }
        net2.host_ready(READABLE);
        assert!(net2.pending_bytes <= MAX_PENDING_BYTES);
        assert_eq!(net2.pending() + wire2.lock().unwrap().inbox.len(), 64);
        assert!(!net2.host_interest().readable);
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
        assert!(net.host_interest().readable);
        net.host_ready(READABLE);
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
        assert!(t.host_fd().is_some());
        // Frames before the driver is up are taken in (the descriptor must not stay readable)
        // but not delivered, and raise nothing.
        wire.lock().unwrap().inbox.push_back(frame(60, 1));
        t.host_ready(READABLE);
        assert!(wire.lock().unwrap().inbox.is_empty());
        assert_eq!(irqs(&irq), 0);
        bring_up_rx(&mut t, &driver, feature::VERSION_1);
        // One buffer, two frames: the first goes in and interrupts, the second waits.
        driver
            .lock()
            .unwrap()
            .add_chain(&[MockBuffer::Writable(1526)]);
        wire.lock().unwrap().inbox.push_back(frame(70, 2));
        t.host_ready(READABLE);
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
        t2.host_ready(READABLE);
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
        t.host_ready(READABLE);
        assert_eq!(irqs(&irq), 2);
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
