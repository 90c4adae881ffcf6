//! The switch thread and the handle the daemon drives it with.
//!
//! One thread per switch waits in `epoll` on the switch's end of every port's socket pair, the
//! uplink TAP and a wake-up eventfd. Each port has a one-frame lookahead (its *head*): when a
//! port polls readable and has no head, one frame is read into it and the port joins the
//! deficit round robin ([`Drr`]). The thread then takes head frames in DRR order, at most
//! [`BATCH`] per pass, hands each to the [`Forwarder`] (checks, learning, rules) and sends it
//! to the chosen ports with non-blocking sends. After each frame its port's next frame, if any,
//! becomes its head.
//!
//! # Congestion
//!
//! A unicast frame whose destination has no room *waits*: it stays with its ingress port, which
//! reads nothing more (so the sender's own socket fills and its VIF is pushed back) and keeps
//! its place and credit in the ingress round robin. The senders with a frame waiting at a
//! destination are in a round robin of that destination's own (by bytes, as between ingress
//! ports), and a frame for a destination where others already wait waits behind them. When the
//! destination has room again (it polls writable, or its rate allows), the waiting frames go in
//! that order, and each sender whose frame went has its next frame forwarded at once, so that a
//! sender that always has a frame for the destination keeps its place and credit there. So a
//! flooder and a light sender share a congested destination fairly in bytes, whatever the sizes
//! of their frames, instead of the light sender's frames being dropped whenever the flooder has
//! just filled it, or a 64 KiB segment waiting for ever behind a stream of small frames. A
//! frame that waits longer than [`HOLD_MAX`] (and on a rated port, as long again as the rate
//! needs to carry a largest frame of each sender waiting there, and one more) is dropped and counted (`tx_dropped`), and its
//! destination counts as *stalled*:
//! frames for it are dropped at once, without waiting, until one goes through. So a domain that
//! stops reading holds each sender for at most [`HOLD_MAX`] once, and then no longer. A frame
//! for several ports (broadcast, unknown destination) never waits: a port with no room gets its
//! copy dropped and counted.
//!
//! # Rates
//!
//! A port may have a rate ([`SwitchHandle::set_port_rate`]): the switch sends it at most that
//! many bytes per second, like a link of that speed. A frame goes unless the port still owes
//! the rate for an earlier one, and is charged in full (spending what the token bucket holds and
//! owing the rest), so the rate holds over time. A unicast frame that finds the port owing waits
//! as for room, and every frame waiting there tries again once the debt is paid (a timer, not
//! epoll): the senders to a rated port share its rate in DRR order whatever their frames' sizes.
//! (Admitting a frame only when the bucket held its whole length let a flood of small frames
//! take the tokens before they could ever add up to a 64 KiB segment, which waited past
//! [`HOLD_MAX`] and was dropped.) A copy of a frame for several ports never waits: over the rate,
//! it is dropped; broadcasts such as ARP still get through a congested port between frames.
//!
//! # Packets
//!
//! What crosses a port is a packet as `devices::net_backend` defines it: a virtio-net header
//! and then the frame, so a guest's 64 KiB TCP segment (TSO) goes through as one. The switch
//! reads the frame behind the header (its real headers: the firewall judges a large segment
//! as it would each of its parts) and passes the header on untouched; rates, round-robin
//! credit and counters count the frame's bytes. Whoever receives does what the header leaves
//! to do if it cannot take it as it is: a VIF whose guest did not negotiate the offload
//! segments and checksums in software, the uplink's kernel does it for the host.
//!
//! The price is head-of-line blocking within one sender: while its frame waits for a congested
//! destination, its frames for other destinations wait behind it (at most [`HOLD_MAX`]).
//!
//! All state sits in one mutex, taken by the thread for a pass (never while it waits) and by
//! the handle's methods briefly; the handle is `Send + Sync` and can be shared in an `Arc`.
//! Epoll tokens are port ids, which are never reused, so a stale event for a removed port is
//! ignored even if its descriptor number was reused.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::SwitchPortBackend;
use crate::drr::{Drr, DEFAULT_QUANTUM};
use crate::forward::Forwarder;
use crate::frame::MAX_FRAME;
use crate::learning::DEFAULT_AGE;
use crate::port::{PortId, PortInfo, PortStatus};
use crate::rule::{Policy, Rule, RuleError, RuleId};
use crate::ruleset::RuleStatus;
use crate::token_bucket::TokenBucket;
use devices::net_offload::VNET_HDR_LEN;

/// Most frames forwarded per pass before the thread looks at new events and lets the handle in.
pub const BATCH: usize = 64;
/// Longest a unicast frame waits for room at its destination before it is dropped, beyond
/// what the destination's rate needs to carry the largest frames of the senders waiting there
/// (see [`PortLink::hold_limit`]).
///
/// Half a second: a kernel bridge's TAP queue (1000 frames) holds about as long at a few MB/s,
/// and a guest under an emulated host (the box) often does not read for a few hundred
/// milliseconds; at 100 ms, frames for a congested domain that was only slow were dropped.
pub const HOLD_MAX: Duration = Duration::from_millis(500);
/// Consecutive read errors after which a port's descriptor is no longer watched (a deleted TAP
/// polls in error forever); the port stays, and frames for it are dropped and counted.
const MAX_READ_ERRORS: u32 = 3;
/// A rated port's bucket holds this long at its rate (or one largest frame, if more), so the
/// thread's millisecond timer never leaves tokens unused.
const RATE_BURST: Duration = Duration::from_millis(20);
/// Longest wait when idle: how often aged addresses are dropped.
const IDLE_WAIT_MS: i32 = 1000;
const WAKE_TOKEN: u64 = u64::MAX;

/// Settings of a switch.
#[derive(Clone, Copy, Debug)]
pub struct SwitchConfig {
    /// Bytes each busy port may forward per DRR turn.
    pub quantum: usize,
    /// How long a learned address is kept without traffic from it.
    pub mac_age: Duration,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            quantum: DEFAULT_QUANTUM,
            mac_age: DEFAULT_AGE,
        }
    }
}

/// Starts switches.
pub struct Switch;

impl Switch {
    /// Starts a switch with the default settings.
    pub fn start() -> io::Result<SwitchHandle> {
        Self::start_with(SwitchConfig::default())
    }

    /// Starts a switch thread with `config`; it runs until the handle is dropped.
    pub fn start_with(config: SwitchConfig) -> io::Result<SwitchHandle> {
        let epoll = Epoll::new()?;
        let wake = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE_TOKEN),
        )?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                forwarder: Forwarder::new(config.mac_age),
                links: HashMap::new(),
                drr: Drr::new(config.quantum),
                queues: HashMap::new(),
                quantum: config.quantum,
                scratch: vec![0u8; VNET_HDR_LEN + MAX_FRAME + 1],
                next_port: 1,
                uplink: None,
                shutdown: false,
                failure: None,
            }),
            epoll,
            wake,
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vswitch".into())
            .spawn(move || run(&for_thread))?;
        Ok(SwitchHandle {
            shared,
            thread: Some(thread),
        })
    }
}

/// The daemon's handle on a running switch. Dropping it stops the thread and closes every
/// port (the domains' sends then fail and are counted as drops by their devices).
pub struct SwitchHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    epoll: Epoll,
    wake: EventFd,
}

/// What carries a port's frames on the switch's side.
enum Link {
    /// The switch's end of a domain port's socket pair.
    Socket(UnixDatagram),
    /// The uplink TAP (non-blocking).
    Tap(File),
}

struct PortLink {
    link: Link,
    /// The port's next frame, read ahead.
    head: Option<Vec<u8>>,
    /// A buffer kept for the next head.
    spare: Vec<u8>,
    /// This port's frame waiting for room at its destination; the port reads nothing more
    /// until it has gone.
    waiting: Option<Waiting>,
    /// Frames waiting for room here (writability is watched while there are any and the
    /// socket is `full`).
    waiters: usize,
    /// The last send found no room in the descriptor (until it polls writable).
    full: bool,
    /// The port's rate, if it has one.
    rate: Option<TokenBucket>,
    /// A frame waited here past [`HOLD_MAX`]: frames for this port are dropped without waiting
    /// until a send succeeds.
    stalled: bool,
    /// What the descriptor is registered for in epoll.
    interest: EventSet,
    read_errors: u32,
    /// Still registered in epoll.
    watched: bool,
}

/// A unicast frame taken from its ingress port and waiting for room at its destination.
struct Waiting {
    frame: Vec<u8>,
    dst: PortId,
    since: Instant,
}

/// What became of one send.
enum Sent {
    Yes,
    /// No room now, or over the port's rate.
    Full,
    /// An error, or a short write.
    Failed,
}

/// The Ethernet frame of a packet (what follows its virtio-net header; nothing if the packet is
/// shorter than the header, which the forwarder then drops as a runt).
fn frame_of(packet: &[u8]) -> &[u8] {
    packet.get(VNET_HDR_LEN..).unwrap_or_default()
}

/// The bytes a packet puts on the wire: its frame's (a 64 KiB segment counts in full, its
/// header not at all), for rates, round-robin credit and counters.
fn wire_len(packet: &[u8]) -> usize {
    frame_of(packet).len()
}

struct State {
    forwarder: Forwarder,
    links: HashMap<PortId, PortLink>,
    drr: Drr,
    /// For each destination with frames waiting for room, the order in which their senders
    /// get it (deficit round robin by bytes, as between ingress ports).
    queues: HashMap<PortId, Drr>,
    quantum: usize,
    /// Room for one received frame (and a byte more, to recognise oversized ones).
    scratch: Vec<u8>,
    next_port: u64,
    uplink: Option<PortId>,
    shutdown: bool,
    failure: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PortLink {
    fn new(link: Link) -> Self {
        PortLink {
            link,
            head: None,
            spare: Vec::new(),
            waiting: None,
            waiters: 0,
            full: false,
            rate: None,
            stalled: false,
            interest: EventSet::IN,
            read_errors: 0,
            watched: true,
        }
    }

    fn raw_fd(&self) -> i32 {
        match &self.link {
            Link::Socket(s) => s.as_raw_fd(),
            Link::Tap(f) => f.as_raw_fd(),
        }
    }

    /// Reads one frame into `scratch`: its length, `Ok(None)` when none is waiting.
    fn read(&mut self, scratch: &mut [u8]) -> io::Result<Option<usize>> {
        let got = match &mut self.link {
            Link::Socket(s) => s.recv(scratch),
            Link::Tap(f) => match f.read(scratch) {
                Ok(0) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                other => other,
            },
        };
        match got {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                Ok(None)
            }
            Err(e) => {
                if let Link::Socket(s) = &self.link {
                    let _ = s.take_error();
                }
                Err(e)
            }
        }
    }

    /// Sends `frame` without blocking, unless the port's rate is still owed at `now`; a frame
    /// that goes is charged to the rate in full.
    fn send(&mut self, frame: &[u8], now: Instant) -> Sent {
        if self.rate.as_mut().is_some_and(|rate| rate.owes(now)) {
            return Sent::Full;
        }
        let written = match &mut self.link {
            Link::Socket(s) => s.send(frame),
            Link::Tap(f) => f.write(frame),
        };
        match written {
            Ok(n) if n == frame.len() => {
                if let Some(rate) = &mut self.rate {
                    rate.charge(wire_len(frame), now);
                }
                Sent::Yes
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.full = true;
                Sent::Full
            }
            _ => Sent::Failed,
        }
    }

    /// The length of the head frame this port would forward now: none while a frame of its
    /// own waits for room at its destination.
    fn ready_len(&self) -> Option<usize> {
        match &self.waiting {
            Some(_) => None,
            None => self.head.as_ref().map(|p| wire_len(p)),
        }
    }

    /// How long a frame may wait for room here: [`HOLD_MAX`], and with a rate, as long again as
    /// the rate takes to carry a largest frame for each frame waiting here and one more (the
    /// one being paid for: on a port of 100 kB/s a 64 KiB TCP segment owes 0.66 s, which the
    /// next frame must wait whatever happens, and each sender ahead in the round robin may send
    /// as much first).
    fn hold_limit(&self) -> Duration {
        let for_rate = self.rate.as_ref().map_or(Duration::ZERO, |rate| {
            let frames = 1 + self.waiters.max(1) as u128;
            let nanos = frames * MAX_FRAME as u128 * 1_000_000_000
                / u128::from(rate.bytes_per_sec().max(1));
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        });
        HOLD_MAX + for_rate
    }

    /// Registers the descriptor for what the port needs now: readable unless its frame waits
    /// (level-triggered: an unread socket would report forever), writable while others wait.
    fn rearm(&mut self, port: PortId, epoll: &Epoll) {
        if !self.watched {
            return;
        }
        let mut wanted = EventSet::empty();
        if self.waiting.is_none() {
            wanted |= EventSet::IN;
        }
        if self.waiters > 0 && self.full {
            wanted |= EventSet::OUT;
        }
        if wanted != self.interest
            && epoll
                .ctl(
                    ControlOperation::Modify,
                    self.raw_fd(),
                    EpollEvent::new(wanted, port.0),
                )
                .is_ok()
        {
            self.interest = wanted;
        }
    }
}

impl State {
    /// Makes sure `port` has a head frame if one is waiting: whether it has one.
    fn fill_head(&mut self, port: PortId, epoll: &Epoll) -> bool {
        let Some(link) = self.links.get_mut(&port) else {
            return false;
        };
        if link.head.is_some() || link.waiting.is_some() {
            return true;
        }
        let scratch = &mut self.scratch;
        match link.read(scratch) {
            Ok(Some(n)) => {
                link.read_errors = 0;
                let mut frame = std::mem::take(&mut link.spare);
                frame.clear();
                frame.extend_from_slice(&scratch[..n]);
                link.head = Some(frame);
                self.drr.activate(port);
                true
            }
            Ok(None) => {
                link.read_errors = 0;
                false
            }
            Err(_) => {
                link.read_errors += 1;
                if link.read_errors >= MAX_READ_ERRORS && link.watched {
                    let _ = epoll.ctl(
                        ControlOperation::Delete,
                        link.raw_fd(),
                        EpollEvent::default(),
                    );
                    link.watched = false;
                }
                false
            }
        }
    }

    /// Forwards up to [`BATCH`] head frames in DRR order.
    fn forward_batch(&mut self, out: &mut Vec<PortId>, epoll: &Epoll) {
        let now = Instant::now();
        for _ in 0..BATCH {
            let links = &self.links;
            let Some(port) = self
                .drr
                .next(|p| links.get(&p).and_then(PortLink::ready_len))
            else {
                return;
            };
            if !self.forward_head(port, true, now, out, epoll) {
                self.drr.deactivate(port);
            }
        }
    }

    /// Forwards `port`'s head frame, if it has one (whether it had): to its one destination, or
    /// a copy to each of several. `charged`: the ingress round robin charged the frame to the
    /// port (and gives it back if the frame waits).
    fn forward_head(
        &mut self,
        port: PortId,
        charged: bool,
        now: Instant,
        out: &mut Vec<PortId>,
        epoll: &Epoll,
    ) -> bool {
        let Some(frame) = self.links.get_mut(&port).and_then(|l| l.head.take()) else {
            return false;
        };
        self.forwarder.forward(port, frame_of(&frame), now, out);
        if let [dst] = out[..] {
            self.unicast(port, frame, dst, charged, now, epoll);
        } else {
            for dst in out.iter() {
                let sent = self.links.get_mut(dst).map(|link| {
                    let sent = link.send(&frame, now);
                    // A port filled by a copy is watched for room if frames wait for it.
                    link.rearm(*dst, epoll);
                    sent
                });
                self.count_send(*dst, wire_len(&frame), sent);
            }
            self.done_with(port, frame, epoll);
        }
        true
    }

    /// Sends `port`'s unicast `frame` to `dst`, or leaves it waiting there for room (see the
    /// module's notes on congestion). A frame finding others already waiting there waits behind
    /// them without trying.
    fn unicast(
        &mut self,
        port: PortId,
        frame: Vec<u8>,
        dst: PortId,
        charged: bool,
        now: Instant,
        epoll: &Epoll,
    ) {
        let sent = match self.links.get_mut(&dst) {
            Some(d) if d.waiters > 0 => Some(Sent::Full),
            Some(d) => Some(d.send(&frame, now)),
            None => None,
        };
        let stalled = self.links.get(&dst).is_some_and(|l| l.stalled);
        if matches!(sent, Some(Sent::Full)) && !stalled {
            self.forwarder.waited(dst);
            if charged {
                self.drr.refund(port, wire_len(&frame));
            }
            if let Some(d) = self.links.get_mut(&dst) {
                d.waiters += 1;
                d.rearm(dst, epoll);
            }
            let quantum = self.quantum;
            self.queues
                .entry(dst)
                .or_insert_with(|| Drr::new(quantum))
                .activate(port);
            if let Some(link) = self.links.get_mut(&port) {
                link.waiting = Some(Waiting {
                    frame,
                    dst,
                    since: now,
                });
                link.rearm(port, epoll);
            }
            return;
        }
        self.count_send(dst, wire_len(&frame), sent);
        self.done_with(port, frame, epoll);
    }

    /// Gives the frames waiting at `dst` its room, in the round-robin order of their senders,
    /// while it has room and its rate allows (at most [`BATCH`]). A sender whose frame went has
    /// its next frame forwarded at once: if that one is for `dst` too, it waits in the sender's
    /// place with the sender's credit, so a sender that always has a frame for `dst` gets its
    /// share in bytes however large or small its frames are.
    fn serve(&mut self, dst: PortId, now: Instant, out: &mut Vec<PortId>, epoll: &Epoll) {
        for _ in 0..BATCH {
            let Some(d) = self.links.get_mut(&dst) else {
                return;
            };
            if d.full || d.rate.as_mut().is_some_and(|r| r.owes(now)) {
                return;
            }
            let links = &self.links;
            let Some(queue) = self.queues.get_mut(&dst) else {
                return;
            };
            let waiting_len = |p: PortId| {
                let w = links.get(&p)?.waiting.as_ref()?;
                (w.dst == dst).then(|| wire_len(&w.frame))
            };
            let Some(port) = queue.next(waiting_len) else {
                // Nobody waits here any more.
                self.queues.remove(&dst);
                return;
            };
            let Some(waiting) = self.links.get_mut(&port).and_then(|l| l.waiting.take()) else {
                continue;
            };
            let len = wire_len(&waiting.frame);
            let sent = self
                .links
                .get_mut(&dst)
                .map(|d| d.send(&waiting.frame, now));
            if matches!(sent, Some(Sent::Full)) {
                if let Some(queue) = self.queues.get_mut(&dst) {
                    queue.refund(port, len);
                }
                if let Some(link) = self.links.get_mut(&port) {
                    link.waiting = Some(waiting);
                }
                // Full now: watched for room (the frames waiting here are why).
                if let Some(d) = self.links.get_mut(&dst) {
                    d.rearm(dst, epoll);
                }
                return;
            }
            self.stop_waiting(dst, epoll);
            self.count_send(dst, len, sent);
            self.done_with(port, waiting.frame, epoll);
            self.forward_head(port, false, now, out, epoll);
            self.leave_queue_unless_waiting(port, dst);
        }
    }

    /// Serves every destination with frames waiting for it.
    fn serve_all(&mut self, out: &mut Vec<PortId>, epoll: &Epoll) {
        let now = Instant::now();
        let dsts: Vec<PortId> = self.queues.keys().copied().collect();
        for dst in dsts {
            self.serve(dst, now, out, epoll);
        }
    }

    /// Takes `port` out of `dst`'s queue unless a frame of its own waits there.
    fn leave_queue_unless_waiting(&mut self, port: PortId, dst: PortId) {
        let waits_there = self
            .links
            .get(&port)
            .and_then(|l| l.waiting.as_ref())
            .is_some_and(|w| w.dst == dst);
        if !waits_there {
            if let Some(queue) = self.queues.get_mut(&dst) {
                queue.deactivate(port);
            }
        }
    }

    /// Counts a send to `dst` (`None`: the port is gone) and keeps its stalled flag.
    fn count_send(&mut self, dst: PortId, len: usize, sent: Option<Sent>) {
        let delivered = matches!(sent, Some(Sent::Yes));
        if let Some(d) = self.links.get_mut(&dst) {
            if delivered {
                d.stalled = false;
            }
        }
        self.forwarder.sent(dst, len, delivered);
    }

    /// One fewer frame waits for room at `dst`.
    fn stop_waiting(&mut self, dst: PortId, epoll: &Epoll) {
        if let Some(d) = self.links.get_mut(&dst) {
            d.waiters = d.waiters.saturating_sub(1);
            d.rearm(dst, epoll);
        }
    }

    /// `port`'s frame has gone (or was dropped): its buffer is kept for the next head, which is
    /// read now; a port with nothing more leaves the round robin.
    fn done_with(&mut self, port: PortId, frame: Vec<u8>, epoll: &Epoll) {
        if let Some(link) = self.links.get_mut(&port) {
            link.spare = frame;
            link.rearm(port, epoll);
        }
        if !self.fill_head(port, epoll) {
            self.drr.deactivate(port);
        }
    }

    /// Drops (and counts) the frames that have waited longer than their destination's
    /// [hold limit](PortLink::hold_limit), or all those
    /// waiting for `gone` (a port being removed); the destinations of expired frames count as
    /// stalled. Returns when the next waiting frame expires.
    fn expire_waiting(
        &mut self,
        now: Instant,
        gone: Option<PortId>,
        epoll: &Epoll,
    ) -> Option<Instant> {
        let expired: Vec<PortId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.waiting.as_ref().is_some_and(|w| {
                    Some(w.dst) == gone || self.expiry(w).is_none_or(|at| at <= now)
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for port in expired {
            let Some(waiting) = self.links.get_mut(&port).and_then(|l| l.waiting.take()) else {
                continue;
            };
            if let Some(d) = self.links.get_mut(&waiting.dst) {
                d.stalled = true;
            }
            self.stop_waiting(waiting.dst, epoll);
            self.leave_queue_unless_waiting(port, waiting.dst);
            self.forwarder
                .sent(waiting.dst, wire_len(&waiting.frame), false);
            self.done_with(port, waiting.frame, epoll);
        }
        self.links
            .values()
            .filter_map(|l| l.waiting.as_ref().and_then(|w| self.expiry(w)))
            .min()
    }

    /// When `waiting` expires (`None`: its destination is gone).
    fn expiry(&self, waiting: &Waiting) -> Option<Instant> {
        let dst = self.links.get(&waiting.dst)?;
        Some(waiting.since + dst.hold_limit())
    }

    /// When the next rated destination with frames waiting for it will have paid for its
    /// earlier frames.
    fn next_rate_room(&mut self, now: Instant) -> Option<Instant> {
        self.links
            .values_mut()
            .filter(|d| d.waiters > 0 && !d.full)
            .filter_map(|d| d.rate.as_mut())
            .map(|rate| now + rate.time_until_paid(now))
            .min()
    }

    /// Gives `port` a rate of `bytes_per_sec` (positive), or none.
    fn set_rate(&mut self, port: PortId, bytes_per_sec: Option<u64>) -> io::Result<()> {
        if bytes_per_sec == Some(0) {
            return Err(invalid("a port's rate must be positive (bytes per second)"));
        }
        let (Some(link), Some(info)) = (self.links.get_mut(&port), self.forwarder.port_mut(port))
        else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the switch has no port {port}"),
            ));
        };
        link.rate = bytes_per_sec.map(|rate| {
            let burst = (u128::from(rate) * RATE_BURST.as_nanos() / 1_000_000_000) as u64;
            TokenBucket::new(rate, burst.max(MAX_FRAME as u64), Instant::now())
        });
        info.rate = bytes_per_sec;
        // Frames waiting for the old rate try the new one in the thread's next pass.
        Ok(())
    }

    /// Whether some port has a frame it may forward now, or some destination with frames
    /// waiting for it has room for them.
    fn has_ready(&mut self, now: Instant) -> bool {
        let heads = !self.drr.is_idle() && self.links.values().any(|l| l.ready_len().is_some());
        heads
            || self.queues.keys().any(|dst| {
                self.links.get(dst).is_some_and(|d| {
                    d.waiters > 0 && !d.full && d.rate.as_ref().is_none_or(|r| r.paid_at(now))
                })
            })
    }

    /// `port` polled writable: the frames waiting for it may try again.
    fn room_at(&mut self, port: PortId, epoll: &Epoll) {
        if let Some(link) = self.links.get_mut(&port) {
            link.full = false;
            // No longer watched for room until a send finds it full again (a level-triggered
            // writable port left registered would wake the thread for nothing, for as long as
            // its rate keeps the waiting frames back).
            link.rearm(port, epoll);
        }
    }

    fn remove(&mut self, id: PortId, epoll: &Epoll) -> bool {
        let Some(link) = self.links.remove(&id) else {
            return false;
        };
        if link.watched {
            let _ = epoll.ctl(
                ControlOperation::Delete,
                link.raw_fd(),
                EpollEvent::default(),
            );
        }
        if let Some(waiting) = link.waiting {
            self.stop_waiting(waiting.dst, epoll);
        }
        for queue in self.queues.values_mut() {
            queue.deactivate(id);
        }
        // Frames waiting for the removed port are dropped at once.
        self.expire_waiting(Instant::now(), Some(id), epoll);
        self.queues.remove(&id);
        self.drr.deactivate(id);
        self.forwarder.remove_port(id);
        if self.uplink == Some(id) {
            self.uplink = None;
        }
        true
    }

    fn add(
        &mut self,
        name: &str,
        domain: Option<&str>,
        link: Link,
        epoll: &Epoll,
    ) -> io::Result<PortId> {
        if name.is_empty() {
            return Err(invalid("a port name must not be empty"));
        }
        if domain.is_some_and(str::is_empty) {
            return Err(invalid("a domain name must not be empty"));
        }
        if self.forwarder.port_named(name).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("the switch already has a port called {name:?}"),
            ));
        }
        let id = PortId(self.next_port);
        let link = PortLink::new(link);
        epoll.ctl(
            ControlOperation::Add,
            link.raw_fd(),
            EpollEvent::new(EventSet::IN, id.0),
        )?;
        self.next_port += 1;
        self.links.insert(id, link);
        self.forwarder.add_port(id, PortInfo::new(name, domain));
        Ok(id)
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_string())
}

/// The switch thread.
fn run(shared: &Shared) {
    let mut events = vec![EpollEvent::default(); 64];
    let mut out = Vec::new();
    let mut wait_ms = IDLE_WAIT_MS;
    let mut next_expiry = Instant::now() + Duration::from_millis(IDLE_WAIT_MS as u64);
    loop {
        let ready = match shared.epoll.wait(wait_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => {
                shared.lock().failure = Some(format!("epoll_wait failed: {e}"));
                return;
            }
        };
        let mut state = shared.lock();
        if state.shutdown {
            return;
        }
        for event in &events[..ready] {
            match event.data() {
                WAKE_TOKEN => {
                    let _ = shared.wake.read();
                }
                token => {
                    let set = event.event_set();
                    if set.contains(EventSet::OUT) {
                        state.room_at(PortId(token), &shared.epoll);
                    }
                    if !set.contains(EventSet::OUT) || set.contains(EventSet::IN) {
                        state.fill_head(PortId(token), &shared.epoll);
                    }
                }
            }
        }
        state.forward_batch(&mut out, &shared.epoll);
        state.serve_all(&mut out, &shared.epoll);
        let now = Instant::now();
        let next_hold_expiry = state.expire_waiting(now, None, &shared.epoll);
        let next_rate_room = state.next_rate_room(now);
        if now >= next_expiry {
            state.forwarder.expire(now);
            next_expiry = now + Duration::from_millis(IDLE_WAIT_MS as u64);
        }
        wait_ms = if state.has_ready(now) {
            0
        } else {
            let next = match (next_hold_expiry, next_rate_room) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            next.map_or(IDLE_WAIT_MS, |at| {
                let ms = at.saturating_duration_since(now).as_millis() + 1;
                i32::try_from(ms).unwrap_or(IDLE_WAIT_MS).min(IDLE_WAIT_MS)
            })
        };
    }
}

impl SwitchHandle {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Adds a port called `name` (unique on the switch) for a VIF of `domain`: its id, and the
    /// backend to give the domain's virtio-net device.
    pub fn add_port(&self, name: &str, domain: &str) -> io::Result<(PortId, SwitchPortBackend)> {
        let (switch_end, domain_end) = UnixDatagram::pair()?;
        switch_end.set_nonblocking(true)?;
        let backend = SwitchPortBackend::new(domain_end, name)?;
        let id = self.lock().add(
            name,
            Some(domain),
            Link::Socket(switch_end),
            &self.shared.epoll,
        )?;
        Ok((id, backend))
    }

    /// Gives port `id` a rate (bytes per second, positive), or takes it away with `None`: the
    /// switch then sends the port at most that many bytes per second, and the frames of every
    /// sender to it wait their turn (see the module's notes on rates).
    pub fn set_port_rate(&self, id: PortId, bytes_per_sec: Option<u64>) -> io::Result<()> {
        let mut state = self.lock();
        state.set_rate(id, bytes_per_sec)?;
        drop(state);
        let _ = self.shared.wake.write(1);
        Ok(())
    }

    /// Removes a port (a domain port or the uplink): its socket closes and the addresses
    /// learned on it are forgotten.
    pub fn remove_port(&self, id: PortId) -> io::Result<()> {
        if self.lock().remove(id, &self.shared.epoll) {
            // Senders whose frames waited for it have their next frames to forward.
            let _ = self.shared.wake.write(1);
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the switch has no port {id}"),
            ))
        }
    }

    /// Makes the open, non-blocking TAP `file` the uplink, a port called `name` owned by no
    /// domain; it replaces any previous uplink.
    pub fn set_uplink(&self, file: File, name: &str) -> io::Result<PortId> {
        let mut state = self.lock();
        let old = state.uplink;
        if let Some(old) = old {
            let same_name = state
                .forwarder
                .port(old)
                .is_some_and(|port| port.name == name);
            if same_name {
                state.remove(old, &self.shared.epoll);
            }
        }
        let id = state.add(name, None, Link::Tap(file), &self.shared.epoll)?;
        if let Some(old) = old {
            state.remove(old, &self.shared.epoll);
        }
        state.uplink = Some(id);
        Ok(id)
    }

    /// The uplink port, if any.
    pub fn uplink(&self) -> Option<PortId> {
        self.lock().uplink
    }

    /// Validates `rule` and inserts it at `position` in the list (0 is evaluated first; `None`
    /// appends).
    pub fn add_rule(&self, rule: Rule, position: Option<usize>) -> Result<RuleId, RuleError> {
        self.lock()
            .forwarder
            .rules
            .add(rule, position, Instant::now())
    }

    /// Deletes the rule `id`.
    pub fn delete_rule(&self, id: RuleId) -> Result<(), RuleError> {
        self.lock().forwarder.rules.delete(id)
    }

    /// The rules in evaluation order, with their counters.
    pub fn rules(&self) -> Vec<RuleStatus> {
        self.lock().forwarder.rules.list()
    }

    /// Sets what happens to frames no rule matches.
    pub fn set_default_policy(&self, policy: Policy) {
        self.lock().forwarder.rules.set_policy(policy);
    }

    /// What happens to frames no rule matches.
    pub fn default_policy(&self) -> Policy {
        self.lock().forwarder.rules.policy()
    }

    /// Every port with its learned addresses and counters, by id.
    pub fn ports(&self) -> Vec<PortStatus> {
        self.lock().forwarder.status(Instant::now())
    }

    /// Why the switch thread stopped, if it failed (it never does short of a broken epoll).
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }
}

impl Drop for SwitchHandle {
    fn drop(&mut self) {
        self.lock().shutdown = true;
        let _ = self.shared.wake.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
