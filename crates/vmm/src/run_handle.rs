//! A handle on a domain run in the foreground by [`crate::run_with`]: other threads (a signal
//! handler, say) press its power button or destroy it, whichever machine it runs at the time.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::control::{Control, PowerButton, StopReason};
use crate::domain::MachineView;

#[derive(Default)]
struct Inner {
    /// The machine running now, if any.
    machine: Option<(Arc<Control>, PowerButton)>,
    /// A destroy was asked for: no further machine may start.
    destroyed: bool,
}

/// Acts on a domain run by [`crate::run_with`] from other threads. Cheap to clone.
#[derive(Clone, Default)]
pub struct RunHandle {
    inner: Arc<Mutex<Inner>>,
}

impl RunHandle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Presses the ACPI power button of the running machine: a guest that handles it powers off
    /// cleanly. Fails when no machine runs (not started yet, between two boots, or stopped).
    pub fn press_power_button(&self) -> Result<(), String> {
        match &self.lock().machine {
            Some((_, button)) => button
                .press()
                .map_err(|e| format!("cannot press the power button: {e}")),
            None => Err("the domain has no running machine".into()),
        }
    }

    /// Stops the domain at once, whatever its guest is doing (as pulling the plug): the running
    /// machine stops and no further one starts. [`crate::run_with`] then returns
    /// [`crate::Outcome::Destroyed`].
    pub fn destroy(&self) {
        let mut inner = self.lock();
        inner.destroyed = true;
        if let Some((control, _)) = &inner.machine {
            control.stop(StopReason::Destroyed);
        }
    }

    /// Makes `machine` the one this handle acts on; `false` (and nothing attached) if the domain
    /// was destroyed meanwhile, in which case the machine must not run.
    pub(crate) fn attach(&self, machine: &MachineView) -> bool {
        self.attach_parts(machine.control.clone(), machine.power_button.clone())
    }

    fn attach_parts(&self, control: Arc<Control>, button: PowerButton) -> bool {
        let mut inner = self.lock();
        if inner.destroyed {
            return false;
        }
        inner.machine = Some((control, button));
        true
    }

    /// The machine has stopped.
    pub(crate) fn detach(&self) {
        self.lock().machine = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Line(AtomicU32);

    impl devices::InterruptLine for Line {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn presses_reach_the_attached_machine_only() {
        let handle = RunHandle::default();
        assert!(handle.press_power_button().is_err());
        let line = Arc::new(Line::default());
        let control = Arc::new(Control::default());
        assert!(handle.attach_parts(control.clone(), PowerButton::new(line.clone())));
        handle.press_power_button().unwrap();
        assert_eq!(line.0.load(Ordering::SeqCst), 1);
        assert!(!control.stopping(), "a press does not stop the machine");
        handle.detach();
        assert!(handle.press_power_button().is_err());
        assert_eq!(line.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_destroy_stops_the_machine_and_the_next_one() {
        let handle = RunHandle::default();
        let line = Arc::new(Line::default());
        let control = Arc::new(Control::default());
        assert!(handle.attach_parts(control.clone(), PowerButton::new(line.clone())));
        handle.clone().destroy();
        assert_eq!(control.wait(), StopReason::Destroyed);
        handle.detach();
        // A machine built after the destroy (a reboot in flight) never runs.
        assert!(!handle.attach_parts(Arc::new(Control::default()), PowerButton::new(line)));
    }
}
