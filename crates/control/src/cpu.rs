//! The CPU scheduling a user sees and changes: each domain's parameters with what the
//! scheduler measured over its last interval (`vessel sched`), and changes of the parameters,
//! kept in the definition and applied at once to a running domain.

use vmm::{RunState, SchedChange, SchedParams};

use crate::scheduler::SchedReport;
use crate::{ControlError, ControlPlane};

/// A domain's scheduling: its parameters and, while it runs, its last interval.
#[derive(Clone, Debug)]
pub struct DomainSched {
    /// The domain.
    pub name: String,
    /// Its state.
    pub state: RunState,
    /// Its parameters, as defined.
    pub params: SchedParams,
    /// What the scheduler measured and decided, once the domain has run an interval.
    pub now: Option<SchedReport>,
}

impl DomainSched {
    /// Its share of the CPU time all domains used over the last interval, in percent.
    pub fn share_percent(&self, all: &[DomainSched]) -> Option<f64> {
        let mine = self.now?.bvt.last.run_ns as f64;
        let total: f64 = all
            .iter()
            .filter_map(|d| d.now.map(|n| n.bvt.last.run_ns as f64))
            .sum();
        (total > 0.0).then(|| 100.0 * mine / total)
    }
}

impl ControlPlane {
    /// Every domain's scheduling, in name order.
    pub fn sched_all(&self) -> Vec<DomainSched> {
        let reports = self.scheduler.report();
        self.registry
            .views()
            .into_iter()
            .map(|v| {
                let name = v.def.name().to_string();
                let state = v.status().map_or(RunState::Shutoff, |s| s.state);
                DomainSched {
                    now: reports.get(&name).copied().filter(|_| state.is_active()),
                    params: v.def.spec().sched,
                    name,
                    state,
                }
            })
            .collect()
    }

    /// Domain `name`'s scheduling.
    pub fn sched(&self, name: &str) -> Result<DomainSched, ControlError> {
        self.registry.view(name)?;
        self.sched_all()
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ControlError::NoSuchDomain(name.into()))
    }

    /// Changes some of domain `name`'s scheduling parameters: checked, kept in its definition,
    /// and, if it runs, in force before this returns.
    pub fn set_sched(&self, name: &str, change: &SchedChange) -> Result<DomainSched, ControlError> {
        if change.is_empty() {
            return Err(ControlError::Invalid(
                "no scheduling parameter to change: give weight, cap, warp_ms, warp_limit_ms or \
                 unwarp_ms"
                    .into(),
            ));
        }
        let def = self.registry.redefine(name, |def| def.with_sched(change))?;
        let running = self
            .registry
            .view(name)?
            .status()
            .is_some_and(|s| s.state.is_active());
        if running {
            self.scheduler
                .admit(name, def.spec().vcpus, def.spec().sched);
        }
        tracing::info!(
            target: "control",
            "domain '{name}': scheduling {}",
            serde_json::to_string(&def.spec().sched).unwrap_or_default()
        );
        self.sched(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_checked_kept_and_survives_a_restart() {
        let dir = ControlPlane::scratch_dir("sched");
        let plane = ControlPlane::for_tests(&dir, false);
        plane
            .define(crate::DomainDef::from_json(br#"{"name":"a","kernel":"/k"}"#).unwrap())
            .unwrap();
        let err = plane
            .set_sched(
                "a",
                &SchedChange {
                    weight: Some(0),
                    ..SchedChange::default()
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("--weight 0"), "{err}");
        assert!(plane.set_sched("a", &SchedChange::default()).is_err());
        assert!(matches!(
            plane.set_sched(
                "b",
                &SchedChange {
                    cap: Some(5),
                    ..SchedChange::default()
                }
            ),
            Err(ControlError::NoSuchDomain(_))
        ));
        let done = plane
            .set_sched(
                "a",
                &SchedChange {
                    weight: Some(512),
                    cap: Some(50),
                    ..SchedChange::default()
                },
            )
            .unwrap();
        assert_eq!((done.params.weight, done.params.cap), (512, 50));
        assert_eq!(done.state, RunState::Shutoff);
        assert!(done.now.is_none());
        drop(plane);
        let again = ControlPlane::for_tests(&dir, false);
        assert_eq!(again.sched("a").unwrap().params.weight, 512);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
