//! The daemon's virtual network: switch ports for domains' VIFs, and the `/v1/net` routes
//! (ports, rules, default policy).
//!
//! The switch is `vsw0`; a VIF given `switch=vsw0` becomes its port `DOMAIN-ethN`. A port lives
//! as long as the machine that opened it: a rebooted guest's new machine opens it again, and a
//! destroyed domain's port goes away with its machine.

use std::sync::Arc;

use serde_json::json;
use vmm::resources::PortLease;
use vswitch::{Policy, PortId, Rule, RuleError, RuleId, SwitchHandle};

use super::api::Params;
use super::Daemon;
use crate::http::{Request, Response};

/// The name of the daemon's one switch.
pub const SWITCH_NAME: &str = "vsw0";

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
        let port = format!("{domain}-eth{index}");
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

fn rule_error(e: RuleError) -> Response {
    match e {
        RuleError::NoSuchRule(id) => Response::error(404, &format!("no rule {id}")),
        other => Response::error(400, &other.to_string()),
    }
}

/// `GET /v1/net/ports`.
pub fn list_ports(daemon: &Daemon, _: &Params, _: &Request) -> Response {
    Response::json(200, &json!(daemon.switch.ports()))
}

/// `GET /v1/net/rules`.
pub fn list_rules(daemon: &Daemon, _: &Params, _: &Request) -> Response {
    Response::json(200, &json!(daemon.switch.rules()))
}

/// `POST /v1/net/rules[?position=N]`: the body is one rule.
pub fn add_rule(daemon: &Daemon, _: &Params, req: &Request) -> Response {
    let text = match std::str::from_utf8(&req.body) {
        Ok(t) => t,
        Err(_) => return Response::error(400, "the rule is not UTF-8"),
    };
    let rule = match Rule::from_json(text) {
        Ok(rule) => rule,
        Err(e) => return rule_error(e),
    };
    let position = match req.query_param("position").map(str::parse::<usize>) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => return Response::error(400, "position must be a number"),
    };
    match daemon.switch.add_rule(rule, position) {
        Ok(id) => {
            let status = daemon.switch.rules().into_iter().find(|r| r.id == id);
            Response::json(201, &json!(status))
        }
        Err(e) => rule_error(e),
    }
}

/// `DELETE /v1/net/rules/{id}`.
pub fn delete_rule(daemon: &Daemon, p: &Params, _: &Request) -> Response {
    let Ok(id) = p.id.parse::<u64>() else {
        return Response::error(400, &format!("'{}' is not a rule id", p.id));
    };
    match daemon.switch.delete_rule(RuleId(id)) {
        Ok(()) => Response::json(200, &json!({ "deleted": id })),
        Err(e) => rule_error(e),
    }
}

/// `GET /v1/net/policy`.
pub fn get_policy(daemon: &Daemon, _: &Params, _: &Request) -> Response {
    Response::json(200, &json!({ "default": daemon.switch.default_policy() }))
}

/// `PUT /v1/net/policy` with `{"default": "accept"|"drop"}`.
pub fn set_policy(daemon: &Daemon, _: &Params, req: &Request) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        default: Policy,
    }
    match serde_json::from_slice::<Body>(&req.body) {
        Ok(b) => {
            daemon.switch.set_default_policy(b.default);
            get_policy(daemon, &Params::default(), req)
        }
        Err(e) => Response::error(400, &format!("invalid policy: {e}")),
    }
}
