//! The API's JSON views of the control plane's reports: a domain as `list` shows it, as
//! `info` shows it, and its CPU scheduling (docs/api.md).

use control::{DomainInfo, DomainSched, DomainSummary};
use serde_json::{json, Value};

/// The `list` view of a domain.
pub fn summary(d: &DomainSummary) -> Value {
    let cpu_ns: u64 = d
        .stats
        .as_ref()
        .map(|m| m.vcpus.iter().map(|v| v.cpu_ns).sum())
        .unwrap_or(0);
    json!({
        "id": d.id,
        "name": d.def.name(),
        "state": d.state().name(),
        "vcpus": d.def.spec().vcpus,
        "memory": vmm::spec::format_size(d.def.spec().memory),
        "cpu_ns": cpu_ns,
        "boots": d.status.as_ref().map_or(0, |s| s.boots),
        "message": d.status.as_ref().and_then(|s| s.message.clone()),
        "held_for_memory": d
            .status
            .as_ref()
            .is_some_and(|s| s.held_for_memory && s.state.is_active()),
    })
}

/// `GET /v1/host`: the host, its KVM and what runs on it.
pub fn host(h: &control::HostInfo) -> Value {
    let kvm = match &h.kvm {
        Ok(k) => json!({ "flavour": k.flavour.name(), "max_vcpus": k.max_vcpus }),
        Err(e) => json!({ "error": e }),
    };
    json!({
        "vessel": { "version": env!("CARGO_PKG_VERSION"), "api": "v1" },
        "host": { "cpus": h.cpus, "memory_bytes": h.memory_bytes, "kernel": h.kernel },
        "kvm": kvm,
        "daemon_uptime_seconds": h.uptime.as_secs_f64(),
        "domains": { "defined": h.domains, "running": h.running, "paused": h.paused },
        "memory_given_bytes": h.memory_given_bytes,
    })
}

/// The `info` view of a domain: its definition, state and every counter.
pub fn info(d: &DomainInfo) -> Value {
    let s = &d.summary;
    let mut v = summary(s);
    v["definition"] = serde_json::to_value(&s.def).unwrap_or(Value::Null);
    // `list` shows the memory as configured; `info` shows what became of it.
    let spec = s.def.spec();
    v["memory"] = match &s.memory {
        Some(memory) => json!(memory),
        None => json!({
            "configured_bytes": spec.memory,
            "reservation_bytes": spec.memory_alloc.reservation,
            "shares": spec.memory_alloc.shares,
        }),
    };
    if let Some(process) = &d.process {
        v["pid"] = json!(process.pid);
        if let Some(group) = &process.cgroup {
            v["cgroup"] = json!({
                "path": group.path,
                "cpu_ns": group.stats.cpu_ns,
                "memory_bytes": group.stats.memory_bytes,
            });
        }
    }
    if let Some(machine) = &s.stats {
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
        v["devices"] = Value::Array(device_stats(machine));
        if let Some(progress) = &machine.migration {
            v["migration"] = json!(progress);
        }
        if let Some(status) = &s.status {
            v["uptime_s"] = json!(status.since.elapsed().as_secs_f64());
        }
    }
    v
}

/// Each virtio device's kind, label and counters, as its domain process reported them.
fn device_stats(machine: &vmm::wire::MachineStats) -> Vec<Value> {
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

/// A domain's scheduling: its parameters and, while it runs, the scheduler's last interval
/// (`all`: every domain, for its share of what they all used).
pub fn sched(d: &DomainSched, all: &[DomainSched]) -> Value {
    let mut v = json!({
        "name": d.name,
        "state": d.state.name(),
        "params": d.params,
    });
    if let Some(now) = &d.now {
        v["interval_ms"] = json!(now.interval_ns as f64 / 1e6);
        v["cpu_percent"] = json!(round2(now.cpu_percent()));
        v["wait_percent"] = json!(round2(now.wait_percent()));
        v["share_percent"] = json!(d.share_percent(all).map(round2));
        v["contended"] = json!(now.bvt.contended);
        v["warp"] = json!(now.bvt.warp.name());
        v["lag_ms"] = json!(round2(now.bvt.lag_ns / 1e6));
        v["kernel_weight"] = json!(now.group_weight);
    }
    v
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
