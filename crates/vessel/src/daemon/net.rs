//! The `/v1/net` routes: the control plane's switch (ports, firewall rules, default policy).

use control::{ControlError, ControlPlane};
use serde_json::json;
use vswitch::{Policy, Rule, RuleId};

use super::api::{Answer, Params};
use crate::http::{Request, Response};

/// `GET /v1/net/ports`.
pub fn list_ports(plane: &ControlPlane, _: &Params, _: &Request) -> Answer {
    Ok(Response::json(200, &json!(plane.ports())))
}

/// `PUT /v1/net/ports/{id}` with `{"rate_bytes_per_sec": N}` (0: no limit): the port's rate,
/// changed at once and kept in its domain's definition.
pub fn set_port(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        rate_bytes_per_sec: u64,
    }
    let body = serde_json::from_slice::<Body>(&req.body)
        .map_err(|e| ControlError::Invalid(format!("invalid port change: {e}")))?;
    let set = plane.set_port_rate(&p.id, Some(body.rate_bytes_per_sec))?;
    Ok(Response::json(200, &json!(set)))
}

/// `GET /v1/net/rules`.
pub fn list_rules(plane: &ControlPlane, _: &Params, _: &Request) -> Answer {
    Ok(Response::json(200, &json!(plane.rules())))
}

/// `POST /v1/net/rules[?position=N]`: the body is one rule.
pub fn add_rule(plane: &ControlPlane, _: &Params, req: &Request) -> Answer {
    let text = std::str::from_utf8(&req.body)
        .map_err(|_| ControlError::Invalid("the rule is not UTF-8".into()))?;
    let rule = Rule::from_json(text)?;
    let position = match req.query_param("position").map(str::parse::<usize>) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => return Err(ControlError::Invalid("position must be a number".into())),
    };
    let added = plane.add_rule(rule, position)?;
    Ok(Response::json(201, &json!(added)))
}

/// `DELETE /v1/net/rules/{id}`.
pub fn delete_rule(plane: &ControlPlane, p: &Params, _: &Request) -> Answer {
    let Ok(id) = p.id.parse::<u64>() else {
        return Err(ControlError::Invalid(format!(
            "'{}' is not a rule id",
            p.id
        )));
    };
    plane.delete_rule(RuleId(id))?;
    Ok(Response::json(200, &json!({ "deleted": id })))
}

/// `GET /v1/net/policy`.
pub fn get_policy(plane: &ControlPlane, _: &Params, _: &Request) -> Answer {
    Ok(Response::json(200, &json!({ "default": plane.policy() })))
}

/// `PUT /v1/net/policy` with `{"default": "accept"|"drop"}`.
pub fn set_policy(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        default: Policy,
    }
    let body = serde_json::from_slice::<Body>(&req.body)
        .map_err(|e| ControlError::Invalid(format!("invalid policy: {e}")))?;
    plane.set_policy(body.default);
    get_policy(plane, p, req)
}
