//! How a running machine stops and pauses: the first stop reason wins and everyone else is told
//! to stop; a pause request parks every vCPU thread until it is lifted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use devices::{InterruptLine, PowerEvent, PowerSink};

/// Why a machine stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset.
    Reset,
    /// The guest or the VMM failed; the message says how.
    Crash(String),
    /// The control plane destroyed the domain.
    Destroyed,
    /// The domain was saved to a snapshot and stops there.
    Saved,
    /// The domain was migrated: it runs on elsewhere.
    Migrated,
}

/// What the thread that waits for a machine is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineEvent {
    /// The machine stopped.
    Stopped(StopReason),
    /// A pause was asked for (`true`) or lifted (`false`).
    PauseWanted(bool),
}

#[derive(Default)]
struct State {
    reason: Option<StopReason>,
    pause_wanted: bool,
    /// vCPU threads parked by a pause.
    parked: u32,
}

/// Shared by the vCPU threads, the devices and the thread that waits for the machine.
#[derive(Default)]
pub struct Control {
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
    /// A copy of `State::pause_wanted` that vCPU threads read on every exit without the lock.
    pause_wanted: AtomicBool,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `reason` unless another reason came first, and asks every vCPU to stop.
    pub fn stop(&self, reason: StopReason) {
        let mut state = self.lock();
        if state.reason.is_none() {
            state.reason = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Runs `body` (a vCPU's or the I/O thread's loop); if it panics, the machine stops as
    /// crashed, the reason naming `thread` and the panic's message. Without this a thread that
    /// panicked would just end, and its domain would look running with a guest frozen (no vCPU)
    /// or deaf (no devices). The panic hook has printed where it happened by then.
    pub fn run_or_crash(&self, thread: &str, body: impl FnOnce()) {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            let message = panic_message(payload.as_ref());
            self.stop(StopReason::Crash(format!("{thread} failed: {message}")));
        }
    }

    /// Whether vCPUs should leave their run loops.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Blocks until a stop reason is recorded, and returns it.
    pub fn wait(&self) -> StopReason {
        let mut state = self.lock();
        loop {
            if let Some(r) = state.reason.clone() {
                return r;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until the machine stops or the wanted pause state differs from `paused`.
    pub fn wait_event(&self, paused: bool) -> MachineEvent {
        let mut state = self.lock();
        loop {
            if let Some(r) = state.reason.clone() {
                return MachineEvent::Stopped(r);
            }
            if state.pause_wanted != paused {
                return MachineEvent::PauseWanted(state.pause_wanted);
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Asks for the vCPUs to be parked (`true`) or to run again (`false`). The thread waiting
    /// for the machine kicks them out of the guest.
    pub fn want_pause(&self, on: bool) {
        let mut state = self.lock();
        state.pause_wanted = on;
        self.pause_wanted.store(on, Ordering::SeqCst);
        drop(state);
        self.changed.notify_all();
    }

    /// Whether a pause is wanted (one load, for vCPU threads between guest entries).
    pub fn pause_wanted(&self) -> bool {
        self.pause_wanted.load(Ordering::SeqCst)
    }

    /// Called by a vCPU thread between guest entries: parks it while a pause is wanted.
    pub fn park_if_paused(&self) {
        // The common case, no pause, costs one load. A pause asked for just after it is seen
        // at the next exit: the waiting thread keeps kicking until every vCPU is parked.
        if !self.pause_wanted.load(Ordering::SeqCst) {
            return;
        }
        let mut state = self.lock();
        if !state.pause_wanted || state.reason.is_some() {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.pause_wanted && state.reason.is_none() {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.parked -= 1;
        self.changed.notify_all();
    }

    /// Waits (at most `timeout`) until `count` vCPU threads are parked, calling `nudge`
    /// (which kicks them out of the guest) every millisecond meanwhile. Returns whether they
    /// all parked.
    pub fn wait_parked(&self, count: u32, timeout: Duration, nudge: impl Fn()) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let state = self.lock();
                if state.parked >= count {
                    return true;
                }
                if state.reason.is_some() || Instant::now() >= deadline {
                    return false;
                }
            }
            nudge();
            let state = self.lock();
            let _ = self
                .changed
                .wait_timeout(state, Duration::from_millis(1))
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The words a panic was given (`panic!`'s message), from its payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// A machine's ACPI power button: pressing it pulses the interrupt line of the Generic Event
/// Device (`layout::POWER_BUTTON_GSI`), whose `_EVT` method notifies the guest's power button
/// device. What happens then is the guest's choice: one that handles the button powers off
/// through ACPI S5 (a [`StopReason::PowerOff`]); one that does not, or has not yet loaded its
/// driver, ignores it. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct PowerButton(std::sync::Arc<dyn InterruptLine>);

impl PowerButton {
    /// The button on `line`.
    pub fn new(line: std::sync::Arc<dyn InterruptLine>) -> PowerButton {
        PowerButton(line)
    }

    /// Presses the button once (an edge on its line).
    pub fn press(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

impl std::fmt::Debug for PowerButton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PowerButton")
    }
}

impl PowerSink for Control {
    fn power_event(&self, event: PowerEvent) {
        self.stop(match event {
            PowerEvent::PowerOff => StopReason::PowerOff,
            PowerEvent::Reset => StopReason::Reset,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins() {
        let c = Arc::new(Control::default());
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait());
        c.power_event(PowerEvent::PowerOff);
        c.stop(StopReason::Crash("late".into()));
        assert_eq!(t.join().unwrap(), StopReason::PowerOff);
        assert!(c.stopping());
    }

    #[test]
    fn a_pause_parks_vcpus_until_lifted_or_stopped() {
        let c = Arc::new(Control::default());
        c.want_pause(true);
        assert_eq!(c.wait_event(false), MachineEvent::PauseWanted(true));
        let vcpus: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.park_if_paused())
            })
            .collect();
        assert!(c.wait_parked(2, Duration::from_secs(5), || {}));
        assert!(vcpus.iter().all(|t| !t.is_finished()));
        c.want_pause(false);
        for t in vcpus {
            t.join().unwrap();
        }
        // A stop releases parked vCPUs too.
        c.want_pause(true);
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.park_if_paused());
        assert!(c.wait_parked(1, Duration::from_secs(5), || {}));
        c.stop(StopReason::Destroyed);
        t.join().unwrap();
        assert_eq!(
            c.wait_event(true),
            MachineEvent::Stopped(StopReason::Destroyed)
        );
        assert!(!c.wait_parked(1, Duration::from_secs(5), || {}));
    }
}
