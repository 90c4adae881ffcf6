//! The control plane's virtual switch: ports for domains' VIFs, and the actions on the switch
//! (its ports, its firewall rules, its default policy).
//!
//! The switch is `vsw0`; a VIF given `switch=vsw0` becomes its port `DOMAIN-ethN`. A port lives
//! as long as the domain process that holds it: a rebooted guest's new machine keeps it, and a
//! destroyed domain's port goes away with its process.

use std::sync::Arc;

use vmm::resources::PortLease;
use vswitch::{Policy, PortId, PortStatus, Rule, RuleId, RuleStatus, SwitchHandle};

use crate::{ControlError, ControlPlane};

/// The name of the control plane's one switch.
pub const SWITCH_NAME: &str = "vsw0";

/// The name of the switch port of VIF number `index` of domain `domain`.
pub fn port_name(domain: &str, index: usize) -> String {
    format!("{domain}-eth{index}")
}

/// Keeps a switch port on its switch while held: dropped, it removes the port.
struct PortGuard {
    id: PortId,
    switch: Arc<SwitchHandle>,
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        let _ = self.switch.remove_port(self.id);
    }
}

/// Opens switch ports for the VIFs of domain `domain`: each a lease on the domain's end of
/// the port's socket pair, the port leaving the switch when the lease goes.
pub fn port_provider(switch: &Arc<SwitchHandle>, domain: &str) -> vmm::net::PortProvider {
    let switch = switch.clone();
    let domain = domain.to_string();
    Arc::new(move |name: &str, index: usize, rate: Option<u64>| {
        if name != SWITCH_NAME {
            return Err(format!(
                "no switch named '{name}': the daemon's switch is {SWITCH_NAME}"
            ));
        }
        let port = port_name(&domain, index);
        let (id, backend) = switch
            .add_port(&port, &domain)
            .map_err(|e| format!("cannot add port {port}: {e}"))?;
        let guard = PortGuard {
            id,
            switch: switch.clone(),
        };
        if let Some(rate) = rate {
            switch
                .set_port_rate(id, Some(rate))
                .map_err(|e| format!("cannot give port {port} its rate: {e}"))?;
        }
        Ok(PortLease {
            socket: backend.into_socket(),
            name: port,
            release: Some(Box::new(guard)),
        })
    })
}

impl ControlPlane {
    /// The switch's ports, with their counters.
    pub fn ports(&self) -> Vec<PortStatus> {
        self.switch.ports()
    }

    /// The switch's firewall rules, in the order they are tried, with their counters.
    pub fn rules(&self) -> Vec<RuleStatus> {
        self.switch.rules()
    }

    /// Adds `rule` at `position` in the list (at its end without one); answers the rule as
    /// the switch lists it (`None` if it was deleted meanwhile).
    pub fn add_rule(
        &self,
        rule: Rule,
        position: Option<usize>,
    ) -> Result<Option<RuleStatus>, ControlError> {
        let id = self.switch.add_rule(rule, position)?;
        Ok(self.switch.rules().into_iter().find(|r| r.id == id))
    }

    /// Deletes rule `id`.
    pub fn delete_rule(&self, id: RuleId) -> Result<(), ControlError> {
        Ok(self.switch.delete_rule(id)?)
    }

    /// What the switch does with a frame no rule decides.
    pub fn policy(&self) -> Policy {
        self.switch.default_policy()
    }

    /// Sets what the switch does with a frame no rule decides.
    pub fn set_policy(&self, policy: Policy) {
        self.switch.set_default_policy(policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_the_policy_are_the_switchs() {
        let state = ControlPlane::scratch_dir("switch");
        let plane = ControlPlane::for_tests(&state, false);
        assert!(plane.ports().is_empty() && plane.rules().is_empty());
        let rule = Rule::from_json(r#"{"pattern":{"proto":"icmp"},"action":"drop"}"#).unwrap();
        let added = plane.add_rule(rule, None).unwrap().expect("listed");
        assert_eq!(plane.rules().len(), 1);
        let err = plane.delete_rule(RuleId(added.id.0 + 1)).unwrap_err();
        assert!(matches!(err, ControlError::NoSuchRule(_)), "{err}");
        plane.delete_rule(added.id).unwrap();
        assert!(plane.rules().is_empty());
        plane.set_policy(Policy::Drop);
        assert_eq!(plane.policy(), Policy::Drop);
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn a_vif_names_the_one_switch() {
        let state = ControlPlane::scratch_dir("ports");
        let plane = ControlPlane::for_tests(&state, false);
        let ports = port_provider(&plane.switch, "web");
        let err = ports("vsw1", 0, None).err().expect("no such switch");
        assert_eq!(err, "no switch named 'vsw1': the daemon's switch is vsw0");
        let lease = ports(SWITCH_NAME, 1, None).unwrap();
        assert_eq!(lease.name, "web-eth1");
        assert_eq!(plane.ports().len(), 1);
        drop(lease);
        assert!(plane.ports().is_empty(), "the port leaves with its lease");
        std::fs::remove_dir_all(&state).unwrap();
    }
}
