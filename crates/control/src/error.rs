//! The one error of the control plane: every action a user can take answers with a
//! [`ControlError`] when it cannot be done. Its message (`Display`) is what the user reads, the
//! same whatever front end carries it; the variant says what kind of failure it is, so a front
//! end can map it (the daemon's HTTP layer maps each to a status) without reading the text.

use std::time::Duration;

use vmm::{DomainError, RunState};

/// Why an action on the control plane was not done.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No domain has this name.
    #[error("no domain named '{0}'")]
    NoSuchDomain(String),
    /// The name is taken by another domain.
    #[error("a domain named '{0}' already exists")]
    Exists(String),
    /// A definition file the control plane did not load is where this one would go: it is
    /// never written over.
    #[error(
        "{file} exists but the daemon did not load it ({why}); it is never written over: move \
         it away (or fix it and restart the daemon), then create the domain"
    )]
    Unloaded {
        /// The file.
        file: String,
        /// Why it was not loaded.
        why: String,
    },
    /// The domain is running, paused or starting, and the action needs it stopped.
    #[error("domain '{0}' is running: destroy it first")]
    Active(String),
    /// A start of a domain that is running, paused or already starting.
    #[error("domain '{0}' is already running")]
    AlreadyRunning(String),
    /// The action needs a running or paused domain; this one is in `state`.
    #[error("domain '{name}' is {}", state.name())]
    NotActive {
        /// The domain.
        name: String,
        /// Its state.
        state: RunState,
    },
    /// The domain's process did not do what was asked; `why` is its answer (or why there was
    /// none).
    #[error("domain '{name}': {why}")]
    Refused {
        /// The domain.
        name: String,
        /// Why.
        why: String,
    },
    /// The domain did not power off within the time it was given after its power button.
    #[error(
        "domain '{name}' did not power off within {} s of the power button",
        waited.as_secs()
    )]
    Timeout {
        /// The domain.
        name: String,
        /// How long it was given.
        waited: Duration,
    },
    /// The domain could not start.
    #[error("domain '{name}' cannot start: {cause}")]
    CannotStart {
        /// The domain.
        name: String,
        /// Why.
        cause: StartError,
    },
    /// What was asked is not valid: a definition, a rule, a policy, a parameter (the message
    /// says what is wrong).
    #[error("{0}")]
    Invalid(String),
    /// No device (a domain's disk, a switch port) is named so; the message says what there is.
    #[error("{0}")]
    NoSuchDevice(String),
    /// No switch rule has this id.
    #[error("no rule {0}")]
    NoSuchRule(vswitch::RuleId),
    /// A debugging hook was asked for, and the control plane does not serve them.
    #[error("debugging hooks are off (vessel daemon --debug-hooks)")]
    HooksOff,
    /// The host failed the control plane: its state directory cannot be written, a directory
    /// cannot be made, the switch cannot start.
    #[error("{0}")]
    Internal(String),
}

/// Why a domain could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The domain cannot run as defined on this host: its checks against the host, or opening
    /// the files and devices it needs, failed (the kind says whose fault it is).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Its process could not be started, or did not bring the domain up.
    #[error("{0}")]
    Process(String),
    /// Its memory reservation does not fit in the memory pool now.
    #[error("{0}")]
    Memory(String),
}

impl StartError {
    /// Whether the domain's definition (or what it names: its kernel, initrd, disks) is why it
    /// cannot start here, rather than the host or the control plane failing.
    pub fn is_the_definitions_fault(&self) -> bool {
        matches!(
            self,
            StartError::Domain(
                DomainError::Spec(_)
                    | DomainError::Config(_)
                    | DomainError::DiskFormat { .. }
                    | DomainError::Kernel(_)
                    | DomainError::Initrd(_)
                    | DomainError::UnsupportedHost(_)
            )
        )
    }
}

impl From<vswitch::RuleError> for ControlError {
    fn from(e: vswitch::RuleError) -> ControlError {
        match e {
            vswitch::RuleError::NoSuchRule(id) => ControlError::NoSuchRule(id),
            other => ControlError::Invalid(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages users (and the daemon's tests) read.
    #[test]
    fn each_error_says_what_users_read() {
        let name = || "web".to_string();
        for (error, says) in [
            (ControlError::NoSuchDomain(name()), "no domain named 'web'"),
            (
                ControlError::Exists(name()),
                "a domain named 'web' already exists",
            ),
            (
                ControlError::Unloaded {
                    file: "/s/domains/web.json".into(),
                    why: "bad".into(),
                },
                "/s/domains/web.json exists but the daemon did not load it (bad); it is never \
                 written over: move it away (or fix it and restart the daemon), then create the \
                 domain",
            ),
            (
                ControlError::Active(name()),
                "domain 'web' is running: destroy it first",
            ),
            (
                ControlError::AlreadyRunning(name()),
                "domain 'web' is already running",
            ),
            (
                ControlError::NotActive {
                    name: name(),
                    state: RunState::Shutoff,
                },
                "domain 'web' is shutoff",
            ),
            (
                ControlError::Refused {
                    name: name(),
                    why: "already paused".into(),
                },
                "domain 'web': already paused",
            ),
            (
                ControlError::Timeout {
                    name: name(),
                    waited: Duration::from_secs(3),
                },
                "domain 'web' did not power off within 3 s of the power button",
            ),
            (
                ControlError::CannotStart {
                    name: name(),
                    cause: StartError::Domain(DomainError::Config("no kernel".into())),
                },
                "domain 'web' cannot start: no kernel",
            ),
            (
                ControlError::CannotStart {
                    name: name(),
                    cause: StartError::Process("cannot bind x".into()),
                },
                "domain 'web' cannot start: cannot bind x",
            ),
            (ControlError::NoSuchRule(vswitch::RuleId(7)), "no rule 7"),
            (
                ControlError::HooksOff,
                "debugging hooks are off (vessel daemon --debug-hooks)",
            ),
        ] {
            assert_eq!(error.to_string(), says);
        }
    }

    #[test]
    fn a_start_is_the_definitions_fault_only_for_what_the_definition_names() {
        let fault = |e: DomainError| StartError::Domain(e).is_the_definitions_fault();
        assert!(fault(DomainError::Config("x".into())));
        assert!(fault(DomainError::Initrd("x".into())));
        assert!(fault(DomainError::UnsupportedHost("x".into())));
        assert!(!fault(DomainError::Crashed("x".into())));
        assert!(!StartError::Process("x".into()).is_the_definitions_fault());
    }

    #[test]
    fn rule_errors_are_a_missing_rule_or_an_invalid_one() {
        assert!(matches!(
            ControlError::from(vswitch::RuleError::NoSuchRule(vswitch::RuleId(3))),
            ControlError::NoSuchRule(vswitch::RuleId(3))
        ));
        let invalid = vswitch::Rule::from_json("{\"colour\": 1}").unwrap_err();
        assert!(matches!(
            ControlError::from(invalid),
            ControlError::Invalid(_)
        ));
    }
}
