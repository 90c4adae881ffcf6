//! `GET /metrics`: the control plane's figures rendered in the Prometheus text format (version
//! 0.0.4).
//!
//! Per domain: state, CPU time, memory resident, scheduling (weight, cap, CPU, share and
//! waiting over the scheduler's last interval); per vCPU: CPU time and exits by reason; per
//! virtio device: each counter it keeps (bytes and operations in each direction, drops); per
//! switch port and rule, their counters; the daemon's uptime.

use std::fmt::Write;

use control::ControlPlane;
use vmm::RunState;

/// Escapes a label value (backslash, double quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition.
pub fn render(plane: &ControlPlane) -> String {
    let mut families: Vec<(&str, &str, &str, Vec<String>)> = vec![
        (
            "vessel_domain_up",
            "gauge",
            "1 if the domain is running or paused",
            vec![],
        ),
        (
            "vessel_domain_paused",
            "gauge",
            "1 if the domain is paused",
            vec![],
        ),
        (
            "vessel_domain_boots_total",
            "counter",
            "machines built for the domain (1 + reboots)",
            vec![],
        ),
        (
            "vessel_domain_memory_resident_bytes",
            "gauge",
            "guest RAM resident on the host",
            vec![],
        ),
        (
            "vessel_vcpu_cpu_seconds_total",
            "counter",
            "CPU time of a vCPU thread",
            vec![],
        ),
        (
            "vessel_vcpu_exits_total",
            "counter",
            "vCPU exits to the VMM by reason",
            vec![],
        ),
        (
            "vessel_device_counter_total",
            "counter",
            "a virtio device's counter",
            vec![],
        ),
    ];
    let rows = plane.list().into_iter().map(|e| {
        let name = label(e.def.name());
        let state = e.state();
        let mut rows: Vec<(usize, String)> = vec![
            (0, format!("{{domain=\"{name}\"}} {}", u8::from(state.is_active()))),
            (1, format!("{{domain=\"{name}\"}} {}", u8::from(state == RunState::Paused))),
            (2, format!("{{domain=\"{name}\"}} {}", e.status.as_ref().map_or(0, |s| s.boots))),
        ];
        if let Some(m) = &e.stats {
            rows.push((3, format!("{{domain=\"{name}\"}} {}", m.resident_bytes)));
            for (i, v) in m.vcpus.iter().enumerate() {
                rows.push((
                    4,
                    format!("{{domain=\"{name}\",vcpu=\"{i}\"}} {:.9}", v.cpu_ns as f64 / 1e9),
                ));
                for (reason, n) in &v.exits {
                    rows.push((
                        5,
                        format!("{{domain=\"{name}\",vcpu=\"{i}\",reason=\"{reason}\"}} {n}"),
                    ));
                }
            }
            for (slot, d) in m.devices.iter().enumerate() {
                let dev = label(&d.label);
                for (counter, n) in &d.counters {
                    rows.push((
                        6,
                        format!(
                            "{{domain=\"{name}\",slot=\"{slot}\",device=\"{dev}\",counter=\"{counter}\"}} {n}"
                        ),
                    ));
                }
            }
        }
        rows
    });
    for (family, row) in rows.into_iter().flatten() {
        families[family].3.push(row);
    }
    let mut out = String::new();
    for (name, kind, help, rows) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for row in rows {
            let _ = writeln!(out, "{name}{row}");
        }
    }
    sched_families(plane, &mut out);
    switch_families(plane, &mut out);
    let _ = writeln!(
        out,
        "# HELP vessel_daemon_uptime_seconds time since the daemon started"
    );
    let _ = writeln!(out, "# TYPE vessel_daemon_uptime_seconds gauge");
    let _ = writeln!(
        out,
        "vessel_daemon_uptime_seconds {:.3}",
        plane.uptime().as_secs_f64()
    );
    out
}

/// A scheduling figure of a domain (given every domain's, for its share), if it has one.
type SchedGauge = fn(&control::DomainSched, &[control::DomainSched]) -> Option<f64>;

/// Each domain's scheduling: its weight and cap, and its CPU, share and waiting over the
/// scheduler's last interval.
fn sched_families(plane: &ControlPlane, out: &mut String) {
    let all = plane.sched_all();
    let gauges: [(&str, &str, SchedGauge); 5] = [
        ("vessel_domain_sched_weight", "the domain's scheduling weight", |d, _| {
            Some(f64::from(d.params.weight))
        }),
        ("vessel_domain_sched_cap_percent", "the domain's CPU cap in percent of one CPU (0: none)", |d, _| {
            Some(f64::from(d.params.cap))
        }),
        ("vessel_domain_cpu_percent", "CPU the domain used over the scheduler's last interval, in percent of one CPU", |d, _| {
            d.now.map(|n| n.cpu_percent())
        }),
        ("vessel_domain_cpu_share_percent", "the domain's share of the CPU all domains used over the scheduler's last interval", |d, all| {
            d.share_percent(all)
        }),
        ("vessel_domain_cpu_wait_percent", "time the domain's threads waited for a CPU over the scheduler's last interval, in percent of one CPU", |d, _| {
            d.now.map(|n| n.wait_percent())
        }),
    ];
    for (family, help, value) in gauges {
        let _ = writeln!(out, "# HELP {family} {help}");
        let _ = writeln!(out, "# TYPE {family} gauge");
        for d in &all {
            if let Some(v) = value(d, &all) {
                let _ = writeln!(out, "{family}{{domain=\"{}\"}} {v:.3}", label(&d.name));
            }
        }
    }
}

/// The virtual switch's per-port and per-rule counters.
fn switch_families(plane: &ControlPlane, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP vessel_switch_port_counter_total a switch port's counter"
    );
    let _ = writeln!(out, "# TYPE vessel_switch_port_counter_total counter");
    for p in plane.ports() {
        let labels = format!(
            "port=\"{}\",domain=\"{}\"",
            label(&p.name),
            label(p.domain.as_deref().unwrap_or(""))
        );
        if let serde_json::Value::Object(counters) = serde_json::json!(p.counters) {
            for (k, v) in counters {
                let _ = writeln!(
                    out,
                    "vessel_switch_port_counter_total{{{labels},counter=\"{k}\"}} {v}"
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP vessel_switch_rule_counter_total a switch rule's counter"
    );
    let _ = writeln!(out, "# TYPE vessel_switch_rule_counter_total counter");
    for r in plane.rules() {
        if let serde_json::Value::Object(counters) = serde_json::json!(r.counters) {
            for (k, v) in counters {
                let _ = writeln!(
                    out,
                    "vessel_switch_rule_counter_total{{rule=\"{}\",counter=\"{k}\"}} {v}",
                    r.id
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
