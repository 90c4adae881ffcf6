//! How a running machine stops: the first stop reason wins, everyone else is told to stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use devices::{PowerEvent, PowerSink};

/// Why a machine stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset.
    Reset,
    /// The guest or the VMM failed; the message says how.
    Crash(String),
}

/// Shared by the vCPU threads, the devices and the thread that waits for the machine.
#[derive(Default)]
pub struct Control {
    reason: Mutex<Option<StopReason>>,
    changed: Condvar,
    stopping: AtomicBool,
}

impl Control {
    /// Records `reason` unless another reason came first, and asks every vCPU to stop.
    pub fn stop(&self, reason: StopReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Whether vCPUs should leave their run loops.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Blocks until a stop reason is recorded, and returns it.
    pub fn wait(&self) -> StopReason {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = slot.clone() {
                return r;
            }
            slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
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
}
