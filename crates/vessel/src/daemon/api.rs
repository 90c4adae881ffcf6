//! The daemon's HTTP/JSON API, version 1: the route table, and handlers that only map a
//! request to an action of the control plane ([`ControlPlane`]) and its answer to a response:
//! the action's report rendered as JSON, or its [`ControlError`] as a status and
//! `{"error": "..."}` ([`error_response`], the one place statuses are chosen for errors).
//!
//! Every route is in [`ROUTES`] (docs/api.md describes the same set, and a test checks the two
//! agree). Anything the client got wrong (malformed JSON, unknown fields, unknown domains,
//! duplicate names, transitions the state machine forbids) is a 4xx.

use std::time::Duration;

use control::{ControlError, ControlPlane, DomainDef};
use serde_json::{json, Value};

use super::{metrics, net, render};
use crate::http::{Request, Response};

/// Path parameters of a matched route.
#[derive(Debug, Default)]
pub struct Params {
    /// `{name}`: a domain.
    pub name: String,
    /// `{id}`: a rule, a disk or a switch port.
    pub id: String,
}

/// A handler: the response to a request, or the control plane's error.
pub type Answer = Result<Response, ControlError>;

type Handler = fn(&ControlPlane, &Params, &Request) -> Answer;

/// One route.
pub struct Route {
    /// The HTTP method.
    pub method: &'static str,
    /// The path, with `{name}` or `{id}` standing for one segment.
    pub pattern: &'static str,
    handler: Handler,
}

const fn route(method: &'static str, pattern: &'static str, handler: Handler) -> Route {
    Route {
        method,
        pattern,
        handler,
    }
}

/// Every route of the API. The console route is served by the connection itself (it switches
/// protocols); its handler here only answers requests that did not ask to upgrade.
pub const ROUTES: &[Route] = &[
    route("GET", "/v1/version", version),
    route("GET", "/v1/host", host_info),
    route("GET", "/v1/domains", list_domains),
    route("POST", "/v1/domains", create_domain),
    route("GET", "/v1/domains/{name}", get_domain),
    route("DELETE", "/v1/domains/{name}", delete_domain),
    route("POST", "/v1/domains/{name}/start", start_domain),
    route("POST", "/v1/domains/{name}/pause", pause_domain),
    route("POST", "/v1/domains/{name}/unpause", unpause_domain),
    route("POST", "/v1/domains/{name}/shutdown", shutdown_domain),
    route("POST", "/v1/domains/{name}/reboot", reboot_domain),
    route("POST", "/v1/domains/{name}/reset", reset_domain),
    route("POST", "/v1/domains/{name}/destroy", destroy_domain),
    route("POST", "/v1/domains/{name}/save", save_domain),
    route("POST", "/v1/restore", restore_domain),
    route("POST", "/v1/domains/{name}/migrate", migrate_domain),
    route("POST", "/v1/migrate-receive", migrate_receive),
    route("GET", "/v1/domains/{name}/console", console_without_upgrade),
    route("GET", "/v1/domains/{name}/sched", get_sched),
    route("PUT", "/v1/domains/{name}/sched", set_sched),
    route("GET", "/v1/sched", list_sched),
    route("GET", "/v1/domains/{name}/disks", list_disks),
    route("PUT", "/v1/domains/{name}/disks/{id}", set_disk),
    route("PUT", "/v1/domains/{name}/memory", set_memory),
    route("GET", "/v1/memory", memory_view),
    route(
        "POST",
        "/v1/domains/{name}/debug/forbidden-call",
        debug_forbidden_call,
    ),
    route("POST", "/v1/domains/{name}/debug/panic", debug_panic),
    route("GET", "/v1/net/ports", net::list_ports),
    route("PUT", "/v1/net/ports/{id}", net::set_port),
    route("GET", "/v1/net/rules", net::list_rules),
    route("POST", "/v1/net/rules", net::add_rule),
    route("DELETE", "/v1/net/rules/{id}", net::delete_rule),
    route("GET", "/v1/net/policy", net::get_policy),
    route("PUT", "/v1/net/policy", net::set_policy),
    route("GET", "/metrics", metrics),
];

/// Finds the route for `method` and `path`: the route and its parameters, or the status to
/// answer (404 no such path, 405 path known but not with this method).
pub fn find(method: &str, path: &str) -> Result<(&'static Route, Params), u16> {
    let mut path_known = false;
    for r in ROUTES {
        if let Some(params) = matches(r.pattern, path) {
            if r.method == method {
                return Ok((r, params));
            }
            path_known = true;
        }
    }
    Err(if path_known { 405 } else { 404 })
}

fn matches(pattern: &str, path: &str) -> Option<Params> {
    let mut params = Params::default();
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return Some(params),
            (Some("{name}"), Some(v)) if !v.is_empty() => params.name = v.to_string(),
            (Some("{id}"), Some(v)) if !v.is_empty() => params.id = v.to_string(),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// Serves one request.
pub fn handle(plane: &ControlPlane, req: &Request) -> Response {
    match find(&req.method, &req.path) {
        Ok((route, params)) => {
            (route.handler)(plane, &params, req).unwrap_or_else(|e| error_response(&e))
        }
        Err(405) => Response::error(
            405,
            &format!("{} is not allowed on {}", req.method, req.path),
        ),
        Err(status) => Response::error(status, &format!("no such resource: {}", req.path)),
    }
}

/// The answer to an error of the control plane: its status, and its message as
/// `{"error": "..."}`.
///
/// | error | status |
/// |---|---|
/// | `NoSuchDomain`, `NoSuchRule`, `HooksOff` | 404 |
/// | `Invalid`; `CannotStart` when the definition is why | 400 |
/// | `Exists`, `Unloaded`, `Active`, `AlreadyRunning`, `NotActive`, `Refused`, `Timeout` | 409 |
/// | `Internal`; `CannotStart` when the host or a domain process is why | 500 |
pub fn error_response(e: &ControlError) -> Response {
    let status = match e {
        ControlError::NoSuchDomain(_)
        | ControlError::NoSuchRule(_)
        | ControlError::NoSuchDevice(_)
        | ControlError::HooksOff => 404,
        ControlError::Invalid(_) => 400,
        ControlError::CannotStart { cause, .. } if cause.is_the_definitions_fault() => 400,
        ControlError::CannotStart {
            cause: control::StartError::Memory(_),
            ..
        } => 409,
        ControlError::Exists(_)
        | ControlError::Unloaded { .. }
        | ControlError::Active(_)
        | ControlError::AlreadyRunning(_)
        | ControlError::NotActive { .. }
        | ControlError::Refused { .. }
        | ControlError::Timeout { .. } => 409,
        ControlError::CannotStart { .. } | ControlError::Internal(_) => 500,
    };
    Response::error(status, &e.to_string())
}

fn version(_: &ControlPlane, _: &Params, _: &Request) -> Answer {
    Ok(Response::json(
        200,
        &json!({ "name": "vessel", "version": env!("CARGO_PKG_VERSION"), "api": "v1" }),
    ))
}

fn host_info(plane: &ControlPlane, _: &Params, _: &Request) -> Answer {
    Ok(Response::json(200, &render::host(&plane.host_info())))
}

fn list_domains(plane: &ControlPlane, _: &Params, _: &Request) -> Answer {
    let list: Vec<Value> = plane.list().iter().map(render::summary).collect();
    Ok(Response::json(200, &Value::Array(list)))
}

/// `POST /v1/domains[?start=false]`: the body is a definition; it is started unless `start`
/// is `false`.
fn create_domain(plane: &ControlPlane, _: &Params, req: &Request) -> Answer {
    let def = DomainDef::from_json(&req.body)?;
    let start = match req.query_param("start") {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ControlError::Invalid(format!(
                "start must be true or false, not '{other}'"
            )))
        }
    };
    let name = def.name().to_string();
    if start {
        plane.create(def)?;
    } else {
        plane.define(def)?;
    }
    Ok(Response::json(201, &render::info(&plane.info(&name)?)))
}

fn get_domain(plane: &ControlPlane, p: &Params, _: &Request) -> Answer {
    let mut info = render::info(&plane.info(&p.name)?);
    if let Ok(mine) = plane.sched(&p.name) {
        info["sched"] = render::sched(&mine, &plane.sched_all());
    }
    Ok(Response::json(200, &info))
}

fn get_sched(plane: &ControlPlane, p: &Params, _: &Request) -> Answer {
    let all = plane.sched_all();
    let mine = plane.sched(&p.name)?;
    Ok(Response::json(200, &render::sched(&mine, &all)))
}

fn set_sched(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    let change: vmm::SchedChange = serde_json::from_slice(&req.body)
        .map_err(|e| ControlError::Invalid(format!("invalid scheduling change: {e}")))?;
    let mine = plane.set_sched(&p.name, &change)?;
    Ok(Response::json(
        200,
        &render::sched(&mine, &plane.sched_all()),
    ))
}

fn list_sched(plane: &ControlPlane, _: &Params, _: &Request) -> Answer {
    let all = plane.sched_all();
    let rows: Vec<Value> = all.iter().map(|d| render::sched(d, &all)).collect();
    Ok(Response::json(200, &Value::Array(rows)))
}

fn list_disks(plane: &ControlPlane, p: &Params, _: &Request) -> Answer {
    Ok(Response::json(200, &json!(plane.disks(&p.name)?)))
}

fn set_disk(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    let change: control::DiskRateChange = serde_json::from_slice(&req.body)
        .map_err(|e| ControlError::Invalid(format!("invalid disk change: {e}")))?;
    let disk = plane.set_disk_rates(&p.name, &p.id, change)?;
    Ok(Response::json(200, &json!(disk)))
}

/// The body of `PUT /v1/domains/{name}/memory`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryTarget {
    target_bytes: u64,
}

fn set_memory(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    let target: MemoryTarget = serde_json::from_slice(&req.body)
        .map_err(|e| ControlError::Invalid(format!("invalid memory target: {e}")))?;
    let set = plane.set_memory_target(&p.name, target.target_bytes)?;
    Ok(Response::json(
        200,
        &json!({ "name": p.name, "target_bytes": set }),
    ))
}

/// A snapshot's path in a request's body: absolute, as the daemon has its own working
/// directory.
fn snapshot_path(path: &str) -> Result<&std::path::Path, ControlError> {
    let path = std::path::Path::new(path);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(ControlError::Invalid(format!(
            "the snapshot's path {} must be absolute (the daemon has its own working directory)",
            path.display()
        )))
    }
}

/// The body of `POST /v1/domains/{name}/save`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveTo {
    path: String,
}

fn save_domain(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    let to: SaveTo = serde_json::from_slice(&req.body)
        .map_err(|e| ControlError::Invalid(format!("invalid save: {e}")))?;
    let report = plane.save(&p.name, snapshot_path(&to.path)?)?;
    Ok(Response::json(
        200,
        &json!({
            "name": p.name,
            "path": to.path,
            "bytes": report.bytes,
            "pages": report.pages,
            "zero_pages": report.zero_pages,
        }),
    ))
}

/// The body of `POST /v1/restore`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreFrom {
    path: String,
    #[serde(default)]
    name: Option<String>,
}

fn restore_domain(plane: &ControlPlane, _: &Params, req: &Request) -> Answer {
    let from: RestoreFrom = serde_json::from_slice(&req.body)
        .map_err(|e| ControlError::Invalid(format!("invalid restore: {e}")))?;
    let name = plane.restore(snapshot_path(&from.path)?, from.name.as_deref())?;
    started(plane, name, req)
}

/// The body of `POST /v1/domains/{name}/migrate`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateTo {
    to: String,
    token: String,
    #[serde(default = "default_downtime")]
    downtime_ms: u64,
    #[serde(default)]
    bandwidth_bytes: Option<u64>,
}

fn default_downtime() -> u64 {
    vmm::migration::DEFAULT_DOWNTIME_MS
}

fn migrate_domain(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    let to: MigrateTo = serde_json::from_slice(&req.body)
        .map_err(|e| ControlError::Invalid(format!("invalid migration: {e}")))?;
    if to.bandwidth_bytes.is_some_and(|b| b < 1 << 20) {
        return Err(ControlError::Invalid(
            "a migration's bandwidth_bytes is at least 1048576 (1 MiB/s)".into(),
        ));
    }
    let params = vmm::migration::MigrateParams {
        downtime_ms: to.downtime_ms,
        bandwidth: to.bandwidth_bytes,
    };
    let report = plane.migrate(&p.name, &to.to, &to.token, params)?;
    Ok(Response::json(200, &json!(report)))
}

/// The body of `POST /v1/migrate-receive`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateFrom {
    listen: String,
    token: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default = "default_receive_wait")]
    wait_s: u64,
}

fn default_receive_wait() -> u64 {
    600
}

fn migrate_receive(plane: &ControlPlane, _: &Params, req: &Request) -> Answer {
    let from: MigrateFrom = serde_json::from_slice(&req.body)
        .map_err(|e| ControlError::Invalid(format!("invalid migration: {e}")))?;
    let name = plane.migrate_receive(
        &from.listen,
        &from.token,
        from.name.as_deref(),
        std::time::Duration::from_secs(from.wait_s.min(86_400)),
    )?;
    started(plane, name, req)
}

/// 201 with the info of domain `name`, which a restore or an incoming migration started.
fn started(plane: &ControlPlane, name: String, req: &Request) -> Answer {
    let params = Params {
        name,
        ..Params::default()
    };
    let answer = get_domain(plane, &params, req)?;
    Ok(Response {
        status: 201,
        ..answer
    })
}

fn memory_view(plane: &ControlPlane, _: &Params, _: &Request) -> Answer {
    Ok(Response::json(200, &json!(plane.memory_view())))
}

fn delete_domain(plane: &ControlPlane, p: &Params, _: &Request) -> Answer {
    plane.delete(&p.name)?;
    Ok(Response::json(200, &json!({ "deleted": p.name })))
}

fn start_domain(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    plane.start(&p.name)?;
    get_domain(plane, p, req)
}

fn pause_domain(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    plane.pause(&p.name)?;
    get_domain(plane, p, req)
}

fn unpause_domain(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    plane.unpause(&p.name)?;
    get_domain(plane, p, req)
}

/// `?wait=SECONDS` (default 60): how long the guest has to power off before it is started again.
fn reboot_domain(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    let wait = wait_param(req)?.unwrap_or(60);
    plane.reboot(&p.name, Duration::from_secs(wait))?;
    get_domain(plane, p, req)
}

fn reset_domain(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    plane.reset(&p.name)?;
    get_domain(plane, p, req)
}

/// `?wait=SECONDS`: answer once the guest is off (or say it is not yet).
fn shutdown_domain(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    let wait = wait_param(req)?.unwrap_or(0);
    plane.shutdown(&p.name, (wait > 0).then(|| Duration::from_secs(wait)))?;
    get_domain(plane, p, req)
}

/// The `wait` query parameter: seconds, up to 600.
fn wait_param(req: &Request) -> Result<Option<u64>, ControlError> {
    match req.query_param("wait").map(str::parse::<u64>) {
        None => Ok(None),
        Some(Ok(s)) if s <= 600 => Ok(Some(s)),
        Some(_) => Err(ControlError::Invalid(
            "wait must be a number of seconds up to 600".into(),
        )),
    }
}

fn destroy_domain(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    plane.destroy(&p.name)?;
    get_domain(plane, p, req)
}

/// The `?thread=vcpu|io|control` of a debugging hook; a daemon without `--debug-hooks` answers
/// 404 whatever the query says.
fn hook_thread(plane: &ControlPlane, req: &Request) -> Result<vmm::wire::ThreadKind, ControlError> {
    use vmm::wire::ThreadKind;
    if !plane.serves_debug_hooks() {
        return Err(ControlError::HooksOff);
    }
    match req.query_param("thread") {
        Some("vcpu") => Ok(ThreadKind::Vcpu),
        Some("io") => Ok(ThreadKind::Io),
        Some("control") => Ok(ThreadKind::Control),
        _ => Err(ControlError::Invalid(
            "thread must be vcpu, io or control".into(),
        )),
    }
}

/// `?thread=vcpu|io|control`: makes a thread of that kind in the domain's process call what
/// its seccomp filter forbids (the kernel then kills the process). Only with `--debug-hooks`.
fn debug_forbidden_call(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    plane.forbidden_call(&p.name, hook_thread(plane, req)?)?;
    Ok(Response::json(200, &json!({ "asked": p.name })))
}

/// `?thread=vcpu|io`: makes that thread of the domain's process panic (the domain ends
/// crashed, saying which thread failed). Only with `--debug-hooks`.
fn debug_panic(plane: &ControlPlane, p: &Params, req: &Request) -> Answer {
    plane.debug_panic(&p.name, hook_thread(plane, req)?)?;
    Ok(Response::json(200, &json!({ "asked": p.name })))
}

/// Without `Upgrade: vessel-console`: the kept output, as text.
fn console_without_upgrade(plane: &ControlPlane, p: &Params, _: &Request) -> Answer {
    let log = plane.console(&p.name)?;
    Ok(Response::text(
        200,
        "text/plain; charset=utf-8",
        String::from_utf8_lossy(&log.recent()).into_owned(),
    ))
}

fn metrics(plane: &ControlPlane, _: &Params, _: &Request) -> Answer {
    Ok(Response::text(
        200,
        "text/plain; version=0.0.4",
        metrics::render(plane),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_by_segment() {
        let (r, p) = find("POST", "/v1/domains/web-1/pause").unwrap();
        assert_eq!(r.pattern, "/v1/domains/{name}/pause");
        assert_eq!(p.name, "web-1");
        assert_eq!(find("GET", "/v1/domains/a/b/c").err(), Some(404));
        assert_eq!(find("PUT", "/v1/domains").err(), Some(405));
        assert_eq!(find("GET", "/v1/domains//pause").err(), Some(404));
        assert_eq!(find("GET", "/v2/domains").err(), Some(404));
    }

    /// Each kind of control-plane error gets its status, and its message as the body's
    /// `error`.
    #[test]
    fn each_control_error_has_its_status() {
        use control::StartError;
        use vmm::DomainError;
        let name = || "web".to_string();
        for (error, status) in [
            (ControlError::NoSuchDomain(name()), 404),
            (ControlError::NoSuchRule(vswitch::RuleId(1)), 404),
            (ControlError::HooksOff, 404),
            (ControlError::Invalid("bad".into()), 400),
            (
                ControlError::CannotStart {
                    name: name(),
                    cause: StartError::Domain(DomainError::Config("no kernel".into())),
                },
                400,
            ),
            (ControlError::Exists(name()), 409),
            (
                ControlError::Unloaded {
                    file: "f".into(),
                    why: "w".into(),
                },
                409,
            ),
            (ControlError::Active(name()), 409),
            (ControlError::AlreadyRunning(name()), 409),
            (
                ControlError::NotActive {
                    name: name(),
                    state: vmm::RunState::Crashed,
                },
                409,
            ),
            (
                ControlError::Refused {
                    name: name(),
                    why: "no".into(),
                },
                409,
            ),
            (
                ControlError::Timeout {
                    name: name(),
                    waited: Duration::from_secs(1),
                },
                409,
            ),
            (
                ControlError::CannotStart {
                    name: name(),
                    cause: StartError::Process("cannot bind".into()),
                },
                500,
            ),
            (
                ControlError::CannotStart {
                    name: name(),
                    cause: StartError::Domain(DomainError::Crashed("x".into())),
                },
                500,
            ),
            (ControlError::Internal("disk full".into()), 500),
        ] {
            let resp = error_response(&error);
            assert_eq!(resp.status, status, "{error}");
            let body: Value = serde_json::from_slice(&resp.body).unwrap();
            assert_eq!(body, json!({ "error": error.to_string() }));
        }
    }

    /// docs/api.md's OpenAPI document describes exactly the routes served.
    #[test]
    fn the_api_document_matches_the_routes() {
        let doc = include_str!("../../../../docs/api.md");
        let json = doc
            .split("```json")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("docs/api.md has a ```json block");
        let openapi: Value = serde_json::from_str(json).expect("the OpenAPI block parses");
        let mut documented: Vec<String> = Vec::new();
        for (path, item) in openapi["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    documented.push(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        let mut served: Vec<String> = ROUTES
            .iter()
            .map(|r| format!("{} {}", r.method, r.pattern))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }
}
