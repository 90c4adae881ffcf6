//! What a user can do to a domain that runs: pause and unpause it, reboot it, press its power
//! button (and wait for it to power off), destroy it, use its console, and the debugging hook
//! of the confinement tests. Each goes to the domain's process over its channel; none holds the
//! registry's lock while it waits.

use std::sync::Arc;
use std::time::Duration;

use vmm::wire::ThreadKind;
use vmm::{ConsoleLog, RunState};

use crate::process::DomainProcess;
use crate::{ControlError, ControlPlane};

impl ControlPlane {
    /// Parks every vCPU of running domain `name` and quiesces its devices.
    pub fn pause(&self, name: &str) -> Result<(), ControlError> {
        let process = self.active_process(name)?;
        process.pause().map_err(refused(name))
    }

    /// Lets paused domain `name` run again.
    pub fn unpause(&self, name: &str) -> Result<(), ControlError> {
        let process = self.active_process(name)?;
        process.unpause().map_err(refused(name))
    }

    /// Resets domain `name` at once, as a reset button would: it boots again, whatever its
    /// reboot policy, and the guest is not asked.
    pub fn reset(&self, name: &str) -> Result<(), ControlError> {
        let process = self.active_process(name)?;
        process.reset().map_err(refused(name))
    }

    /// Reboots domain `name` with its guest's consent: presses its ACPI power button, waits up
    /// to `wait` for the guest to power off, then starts it again. A guest that has not powered
    /// off by then keeps running and the call fails with [`ControlError::Timeout`] (`reset`
    /// forces a reboot).
    pub fn reboot(&self, name: &str, wait: Duration) -> Result<(), ControlError> {
        self.shutdown(name, Some(wait))?;
        self.start(name)
    }

    /// Presses domain `name`'s ACPI power button; with `wait`, returns once the guest has
    /// powered off, or [`ControlError::Timeout`] if it has not within that time.
    pub fn shutdown(&self, name: &str, wait: Option<Duration>) -> Result<(), ControlError> {
        let process = self.active_process(name)?;
        process.press_power_button().map_err(refused(name))?;
        match wait {
            Some(waited) if !process.wait_stopped(waited) => Err(ControlError::Timeout {
                name: name.to_string(),
                waited,
            }),
            _ => Ok(()),
        }
    }

    /// Stops domain `name` at once and frees its memory (its process ends).
    pub fn destroy(&self, name: &str) -> Result<(), ControlError> {
        self.active_process(name)?.destroy();
        Ok(())
    }

    /// Domain `name`'s console: what it printed lately (kept across starts and detaches), and
    /// live output to whoever attaches.
    pub fn console(&self, name: &str) -> Result<ConsoleLog, ControlError> {
        self.registry.with(name, |e| e.console.clone())
    }

    /// Sends `bytes` to domain `name`'s serial port; dropped unless the domain runs.
    pub fn console_input(&self, name: &str, bytes: &[u8]) {
        if let Ok(Some(process)) = self.registry.instance(name) {
            if process.status().state.is_active() {
                process.console_input(bytes);
            }
        }
    }

    /// The confinement tests' hook: makes a thread of kind `thread` in domain `name`'s process
    /// make a system call its seccomp filter forbids (the kernel then kills the process).
    /// Refused unless the control plane serves the debugging hooks.
    pub fn forbidden_call(&self, name: &str, thread: ThreadKind) -> Result<(), ControlError> {
        if !self.debug_hooks {
            return Err(ControlError::HooksOff);
        }
        let process = self.active_process(name)?;
        process.forbidden_call(thread).map_err(refused(name))
    }

    /// Whether the debugging hooks are served (`vessel daemon --debug-hooks`).
    pub fn serves_debug_hooks(&self) -> bool {
        self.debug_hooks
    }

    /// The failing-thread tests' hook: makes a vCPU or the I/O thread (`thread`) of domain
    /// `name`'s process panic; the domain ends crashed, saying which thread failed. Refused
    /// unless the control plane serves the debugging hooks.
    pub fn debug_panic(&self, name: &str, thread: ThreadKind) -> Result<(), ControlError> {
        if !self.debug_hooks {
            return Err(ControlError::HooksOff);
        }
        if thread == ThreadKind::Control {
            return Err(ControlError::Invalid(
                "thread must be vcpu or io: the control thread is not asked to panic".into(),
            ));
        }
        let process = self.active_process(name)?;
        process.panic(thread).map_err(refused(name))
    }

    /// The process of domain `name`, if the domain is running or paused.
    pub(crate) fn active_process(&self, name: &str) -> Result<Arc<DomainProcess>, ControlError> {
        let state = match self.registry.instance(name)? {
            Some(p) if p.status().state.is_active() => return Ok(p),
            Some(p) => p.status().state,
            None => RunState::Shutoff,
        };
        Err(ControlError::NotActive {
            name: name.to_string(),
            state,
        })
    }
}

/// What a domain process's refusal of an action on domain `name` becomes.
fn refused(name: &str) -> impl FnOnce(String) -> ControlError + '_ {
    move |why| ControlError::Refused {
        name: name.to_string(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DomainDef;

    /// An action on a domain, by name.
    type Action = fn(&ControlPlane, &str) -> Result<(), ControlError>;

    fn defined(tag: &str, hooks: bool) -> (ControlPlane, std::path::PathBuf) {
        let state = ControlPlane::scratch_dir(tag);
        let plane = ControlPlane::for_tests(&state, hooks);
        plane
            .define(DomainDef::from_json(br#"{"name":"a","kernel":"/k"}"#).unwrap())
            .unwrap();
        (plane, state)
    }

    #[test]
    fn actions_need_a_domain_that_runs_and_say_its_state() {
        let (plane, state) = defined("actions", false);
        let actions: [(&str, Action); 6] = [
            ("pause", |p, n| p.pause(n)),
            ("unpause", |p, n| p.unpause(n)),
            ("reset", |p, n| p.reset(n)),
            ("reboot", |p, n| p.reboot(n, Duration::from_secs(1))),
            ("shutdown", |p, n| {
                p.shutdown(n, Some(Duration::from_secs(1)))
            }),
            ("destroy", |p, n| p.destroy(n)),
        ];
        for (what, action) in actions {
            let err = action(&plane, "a").unwrap_err();
            assert!(
                matches!(
                    err,
                    ControlError::NotActive {
                        state: RunState::Shutoff,
                        ..
                    }
                ),
                "{what}: {err}"
            );
            assert_eq!(err.to_string(), "domain 'a' is shutoff", "{what}");
            let err = action(&plane, "nobody").unwrap_err();
            assert_eq!(err.to_string(), "no domain named 'nobody'", "{what}");
        }
        let info = plane.info("a").unwrap();
        assert!(info.process.is_none(), "no process while shut off");
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn the_console_is_kept_for_a_domain_that_never_ran() {
        let (plane, state) = defined("console", false);
        assert!(plane.console("a").unwrap().recent().is_empty());
        plane.console_input("a", b"dropped: the domain does not run");
        assert!(matches!(
            plane.console("nobody"),
            Err(ControlError::NoSuchDomain(_))
        ));
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn the_debug_hook_is_there_only_when_asked_for() {
        let (off, state) = defined("hooks-off", false);
        for name in ["a", "nobody"] {
            assert!(matches!(
                off.forbidden_call(name, ThreadKind::Io),
                Err(ControlError::HooksOff)
            ));
        }
        std::fs::remove_dir_all(&state).unwrap();
        let (on, state) = defined("hooks-on", true);
        assert!(matches!(
            on.forbidden_call("a", ThreadKind::Io),
            Err(ControlError::NotActive { .. })
        ));
        assert!(matches!(
            on.forbidden_call("nobody", ThreadKind::Vcpu),
            Err(ControlError::NoSuchDomain(_))
        ));
        std::fs::remove_dir_all(&state).unwrap();
    }
}
