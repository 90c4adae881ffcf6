//! The daemon's HTTP/JSON API, version 1: the route table and its handlers.
//!
//! Every route is in [`ROUTES`] (docs/api.md describes the same set, and a test checks the two
//! agree). Handlers answer 4xx with `{"error": "..."}` for anything the client got wrong:
//! malformed JSON, unknown fields, unknown domains, duplicate names, and transitions the state
//! machine forbids (pausing a paused domain, unpausing a running one).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use vmm::DomainError;

use super::net;
use super::process::DomainProcess;
use super::registry::{EntryView, RegistryError};
use super::Daemon;
use crate::def::DomainDef;
use crate::http::{Request, Response};

/// Path parameters of a matched route.
#[derive(Debug, Default)]
pub struct Params {
    /// `{name}`: a domain.
    pub name: String,
    /// `{id}`: a rule.
    pub id: String,
}

type Handler = fn(&Daemon, &Params, &Request) -> Response;

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
    route("GET", "/v1/domains", list_domains),
    route("POST", "/v1/domains", create_domain),
    route("GET", "/v1/domains/{name}", get_domain),
    route("DELETE", "/v1/domains/{name}", delete_domain),
    route("POST", "/v1/domains/{name}/start", start_domain),
    route("POST", "/v1/domains/{name}/pause", pause_domain),
    route("POST", "/v1/domains/{name}/unpause", unpause_domain),
    route("POST", "/v1/domains/{name}/shutdown", shutdown_domain),
    route("POST", "/v1/domains/{name}/reboot", reboot_domain),
    route("POST", "/v1/domains/{name}/destroy", destroy_domain),
    route("GET", "/v1/domains/{name}/console", console_without_upgrade),
    route(
        "POST",
        "/v1/domains/{name}/debug/forbidden-call",
        debug_forbidden_call,
    ),
    route("GET", "/v1/net/ports", net::list_ports),
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
pub fn handle(daemon: &Daemon, req: &Request) -> Response {
    match find(&req.method, &req.path) {
        Ok((route, params)) => (route.handler)(daemon, &params, req),
        Err(405) => Response::error(
            405,
            &format!("{} is not allowed on {}", req.method, req.path),
        ),
        Err(status) => Response::error(status, &format!("no such resource: {}", req.path)),
    }
}

/// The answer to a registry error.
pub fn registry_error_response(e: RegistryError) -> Response {
    match e {
        RegistryError::NotFound(name) => Response::error(404, &format!("no domain named '{name}'")),
        RegistryError::Exists(name) => {
            Response::error(409, &format!("a domain named '{name}' already exists"))
        }
        RegistryError::Active(name) => Response::error(
            409,
            &format!("domain '{name}' is running: destroy it first"),
        ),
        RegistryError::Unloaded { file, why } => Response::error(
            409,
            &format!(
                "{file} exists but the daemon did not load it ({why}); it is never written \
                 over: move it away (or fix it and restart the daemon), then create the domain"
            ),
        ),
        RegistryError::Storage(msg) => Response::error(500, &msg),
    }
}

/// The status for a domain that failed to start.
pub fn start_error_status(e: &DomainError) -> u16 {
    match e {
        DomainError::Spec(_)
        | DomainError::Config(_)
        | DomainError::DiskFormat { .. }
        | DomainError::Kernel(_)
        | DomainError::Initrd(_)
        | DomainError::UnsupportedHost(_) => 400,
        _ => 500,
    }
}

fn version(_: &Daemon, _: &Params, _: &Request) -> Response {
    Response::json(
        200,
        &json!({ "name": "vessel", "version": env!("CARGO_PKG_VERSION"), "api": "v1" }),
    )
}

fn list_domains(daemon: &Daemon, _: &Params, _: &Request) -> Response {
    let list: Vec<Value> = daemon.registry.views().iter().map(summary).collect();
    Response::json(200, &Value::Array(list))
}

/// The `list` view of a domain.
fn summary(e: &EntryView) -> Value {
    summary_with(e, &e.instance.as_ref().and_then(|i| i.stats()))
}

/// The `list` view, with the counters already asked for.
fn summary_with(e: &EntryView, stats: &Option<vmm::wire::MachineStats>) -> Value {
    let status = e.status();
    let cpu_ns: u64 = stats
        .as_ref()
        .map(|m| m.vcpus.iter().map(|v| v.cpu_ns).sum())
        .unwrap_or(0);
    json!({
        "id": e.id,
        "name": e.def.name(),
        "state": e.state().name(),
        "vcpus": e.def.spec().vcpus,
        "memory": vmm::spec::format_size(e.def.spec().memory),
        "cpu_ns": cpu_ns,
        "boots": status.as_ref().map_or(0, |s| s.boots),
        "message": status.and_then(|s| s.message),
    })
}

fn create_domain(daemon: &Daemon, _: &Params, req: &Request) -> Response {
    // Everything that can be checked without the host's files or KVM is, before anything is
    // stored: a definition that could never start is refused now, not at its first start.
    let mut def = match DomainDef::from_json(&req.body).and_then(|def| {
        def.check_to_store()?;
        Ok(def)
    }) {
        Ok(def) => def,
        Err(msg) => return Response::error(400, &msg),
    };
    if let Err(msg) = def.pin_disk_formats() {
        return Response::error(400, &msg);
    }
    let start = match req.query_param("start") {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Response::error(400, &format!("start must be true or false, not '{other}'"))
        }
    };
    let name = def.name().to_string();
    if let Err(resp) = daemon.create(def, start) {
        return resp;
    }
    match daemon.registry.view(&name) {
        Ok(e) => Response::json(201, &info(daemon, &e)),
        Err(e) => registry_error_response(e),
    }
}

fn get_domain(daemon: &Daemon, p: &Params, _: &Request) -> Response {
    match daemon.registry.view(&p.name) {
        Ok(e) => Response::json(200, &info(daemon, &e)),
        Err(e) => registry_error_response(e),
    }
}

/// The `info` view of a domain: its definition, state and every counter.
fn info(daemon: &Daemon, e: &EntryView) -> Value {
    let stats = e.instance.as_ref().and_then(|i| i.stats());
    let mut v = summary_with(e, &stats);
    v["definition"] = serde_json::to_value(&e.def).unwrap_or(Value::Null);
    if let Some(process) = e.instance.as_ref().filter(|i| i.status().state.is_active()) {
        v["pid"] = json!(process.pid());
        let name = e.def.name();
        if let (Some(path), Some(g)) = (daemon.cgroups.path(name), daemon.cgroups.stats(name)) {
            v["cgroup"] = json!({
                "path": path,
                "cpu_ns": g.cpu_ns,
                "memory_bytes": g.memory_bytes,
            });
        }
    }
    if let Some(machine) = stats {
        let vcpus: Vec<Value> = machine
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let exits: serde_json::Map<String, Value> =
                    s.exits.iter().map(|(k, n)| (k.clone(), json!(n))).collect();
                json!({ "vcpu": i, "cpu_ns": s.cpu_ns, "exits": exits })
            })
            .collect();
        v["vcpu_stats"] = Value::Array(vcpus);
        v["memory_resident_bytes"] = json!(machine.resident_bytes);
        v["devices"] = Value::Array(device_stats(&machine));
        if let Some(status) = e.status() {
            v["uptime_s"] = json!(status.since.elapsed().as_secs_f64());
        }
    }
    v
}

/// Each virtio device's kind, label and counters, as its domain process reported them.
pub fn device_stats(machine: &vmm::wire::MachineStats) -> Vec<Value> {
    machine
        .devices
        .iter()
        .map(|d| {
            let counters: serde_json::Map<String, Value> = d
                .counters
                .iter()
                .map(|(k, n)| (k.clone(), json!(n)))
                .collect();
            json!({ "kind": d.kind, "label": d.label, "counters": counters })
        })
        .collect()
}

fn delete_domain(daemon: &Daemon, p: &Params, _: &Request) -> Response {
    match daemon.registry.undefine_stopped(&p.name) {
        Ok(()) => Response::json(200, &json!({ "deleted": p.name })),
        Err(e) => registry_error_response(e),
    }
}

fn start_domain(daemon: &Daemon, p: &Params, _: &Request) -> Response {
    match daemon.start(&p.name) {
        Ok(()) => get_domain(daemon, p, &Request::default()),
        Err(resp) => resp,
    }
}

/// The running instance of domain `name`, or the answer when there is none.
fn active_instance(daemon: &Daemon, name: &str) -> Result<Arc<DomainProcess>, Response> {
    let instance = daemon
        .registry
        .instance(name)
        .map_err(registry_error_response)?;
    match instance {
        Some(i) if i.status().state.is_active() => Ok(i),
        Some(i) => Err(Response::error(
            409,
            &format!("domain '{name}' is {}", i.status().state.name()),
        )),
        None => Err(Response::error(409, &format!("domain '{name}' is shutoff"))),
    }
}

fn state_answer(daemon: &Daemon, p: &Params, result: Result<(), String>) -> Response {
    match result {
        Ok(()) => get_domain(daemon, p, &Request::default()),
        Err(msg) => Response::error(409, &format!("domain '{}': {msg}", p.name)),
    }
}

fn pause_domain(daemon: &Daemon, p: &Params, _: &Request) -> Response {
    match active_instance(daemon, &p.name) {
        Ok(i) => state_answer(daemon, p, i.pause()),
        Err(resp) => resp,
    }
}

fn unpause_domain(daemon: &Daemon, p: &Params, _: &Request) -> Response {
    match active_instance(daemon, &p.name) {
        Ok(i) => state_answer(daemon, p, i.unpause()),
        Err(resp) => resp,
    }
}

fn reboot_domain(daemon: &Daemon, p: &Params, _: &Request) -> Response {
    match active_instance(daemon, &p.name) {
        Ok(i) => state_answer(daemon, p, i.reset()),
        Err(resp) => resp,
    }
}

fn shutdown_domain(daemon: &Daemon, p: &Params, req: &Request) -> Response {
    let instance = match active_instance(daemon, &p.name) {
        Ok(i) => i,
        Err(resp) => return resp,
    };
    if let Err(msg) = instance.press_power_button() {
        return Response::error(409, &format!("domain '{}': {msg}", p.name));
    }
    // `?wait=SECONDS`: answer once the guest is off (or say it is not yet).
    let wait = match req.query_param("wait").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(s)) if s <= 600 => s,
        Some(_) => return Response::error(400, "wait must be a number of seconds up to 600"),
    };
    if wait > 0 && !instance.wait_stopped(Duration::from_secs(wait)) {
        return Response::error(
            409,
            &format!(
                "domain '{}' did not power off within {wait} s of the power button",
                p.name
            ),
        );
    }
    get_domain(daemon, p, &Request::default())
}

fn destroy_domain(daemon: &Daemon, p: &Params, _: &Request) -> Response {
    match active_instance(daemon, &p.name) {
        Ok(i) => {
            i.destroy();
            get_domain(daemon, p, &Request::default())
        }
        Err(resp) => resp,
    }
}

/// `?thread=vcpu|io|control`: makes a thread of that kind in the domain's process call what
/// its seccomp filter forbids (the kernel then kills the process). Only with `--debug-hooks`.
fn debug_forbidden_call(daemon: &Daemon, p: &Params, req: &Request) -> Response {
    use vmm::wire::ThreadKind;
    if !daemon.debug_hooks {
        return Response::error(404, "debugging hooks are off (vessel daemon --debug-hooks)");
    }
    let thread = match req.query_param("thread") {
        Some("vcpu") => ThreadKind::Vcpu,
        Some("io") => ThreadKind::Io,
        Some("control") => ThreadKind::Control,
        _ => return Response::error(400, "thread must be vcpu, io or control"),
    };
    match active_instance(daemon, &p.name) {
        Ok(i) => match i.forbidden_call(thread) {
            Ok(()) => Response::json(200, &json!({ "asked": p.name })),
            Err(e) => Response::error(409, &e),
        },
        Err(resp) => resp,
    }
}

fn console_without_upgrade(daemon: &Daemon, p: &Params, _: &Request) -> Response {
    // Without `Upgrade: vessel-console`: the kept output, as text.
    match daemon.registry.with(&p.name, |e| e.console.clone()) {
        Ok(log) => Response::text(
            200,
            "text/plain; charset=utf-8",
            String::from_utf8_lossy(&log.recent()).into_owned(),
        ),
        Err(e) => registry_error_response(e),
    }
}

fn metrics(daemon: &Daemon, _: &Params, _: &Request) -> Response {
    Response::text(
        200,
        "text/plain; version=0.0.4",
        super::metrics::render(daemon),
    )
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
