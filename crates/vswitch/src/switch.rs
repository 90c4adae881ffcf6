//! The switch thread and the handle the daemon drives it with.
//!
//! One thread per switch waits in `epoll` on the switch's end of every port's socket pair, the
//! uplink TAP and a wake-up eventfd. Each port has a one-frame lookahead (its *head*): when a
//! port polls readable and has no head, one frame is read into it and the port joins the
//! deficit round robin ([`Drr`]). The thread then takes head frames in DRR order, at most
//! [`BATCH`] per pass, hands each to the [`Forwarder`] (checks, learning, rules) and sends it
//! to the chosen ports with non-blocking sends; a port with no room gets the frame dropped and
//! counted (`tx_dropped`), so a domain that stops reading never holds the switch or other ports.
//! After each frame its port's next frame, if any, becomes its head.
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

/// Most frames forwarded per pass before the thread looks at new events and lets the handle in.
pub const BATCH: usize = 64;
/// Consecutive read errors after which a port's descriptor is no longer watched (a deleted TAP
/// polls in error forever); the port stays, and frames for it are dropped and counted.
const MAX_READ_ERRORS: u32 = 3;
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
    read_errors: u32,
    /// Still registered in epoll.
    watched: bool,
}

struct State {
    forwarder: Forwarder,
    links: HashMap<PortId, PortLink>,
    drr: Drr,
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

    /// Sends `frame` without blocking: whether it went.
    fn send(&mut self, frame: &[u8]) -> bool {
        match &mut self.link {
            Link::Socket(s) => s.send(frame).is_ok(),
            Link::Tap(f) => f.write(frame).is_ok_and(|n| n == frame.len()),
        }
    }
}

impl State {
    /// Makes sure `port` has a head frame if one is waiting: whether it has one.
    fn fill_head(&mut self, port: PortId, scratch: &mut [u8], epoll: &Epoll) -> bool {
        let Some(link) = self.links.get_mut(&port) else {
            return false;
        };
        if link.head.is_some() {
            return true;
        }
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
    fn forward_batch(&mut self, scratch: &mut [u8], out: &mut Vec<PortId>, epoll: &Epoll) {
        let now = Instant::now();
        for _ in 0..BATCH {
            let links = &self.links;
            let head_len = |p: PortId| {
                links
                    .get(&p)
                    .and_then(|l| l.head.as_ref())
                    .map_or(0, Vec::len)
            };
            let Some(port) = self.drr.next(head_len) else {
                return;
            };
            let Some(frame) = self.links.get_mut(&port).and_then(|l| l.head.take()) else {
                self.drr.deactivate(port);
                continue;
            };
            self.forwarder.forward(port, &frame, now, out);
            for dst in out.iter() {
                let delivered = self
                    .links
                    .get_mut(dst)
                    .is_some_and(|link| link.send(&frame));
                self.forwarder.sent(*dst, frame.len(), delivered);
            }
            if let Some(link) = self.links.get_mut(&port) {
                link.spare = frame;
            }
            if !self.fill_head(port, scratch, epoll) {
                self.drr.deactivate(port);
            }
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
    let mut scratch = vec![0u8; MAX_FRAME + 1];
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
                    state.fill_head(PortId(token), &mut scratch, &shared.epoll);
                }
            }
        }
        state.forward_batch(&mut scratch, &mut out, &shared.epoll);
        let now = Instant::now();
        if now >= next_expiry {
            state.forwarder.expire(now);
            next_expiry = now + Duration::from_millis(IDLE_WAIT_MS as u64);
        }
        wait_ms = if state.drr.is_idle() { IDLE_WAIT_MS } else { 0 };
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

    /// Removes a port (a domain port or the uplink): its socket closes and the addresses
    /// learned on it are forgotten.
    pub fn remove_port(&self, id: PortId) -> io::Result<()> {
        if self.lock().remove(id, &self.shared.epoll) {
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
