//! `GET /metrics`: the control plane's figures rendered in the Prometheus text format (version
//! 0.0.4), named as Prometheus asks: one unit per family, named in its suffix (`_bytes_total`,
//! `_operations_total`, `_frames_total`, `_seconds_total`, `_ratio`), what differs within a
//! unit (a direction, an operation, a reason) in labels.
//!
//! Per domain: state, configuration (vCPUs, memory), memory resident, scheduling (weight, cap,
//! and CPU use, share and waiting over the scheduler's last interval); per vCPU: CPU time and
//! exits by reason; per disk and VIF: its traffic; per switch port and rule, theirs; the
//! daemon's build, start time and uptime.

use std::collections::BTreeMap;
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

/// Whether a family is a counter or a gauge.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its type, help and samples (labels and value, rendered).
struct Family {
    kind: Kind,
    help: &'static str,
    samples: Vec<(String, String)>,
}

/// The families of one exposition, each rendered once with all its samples together.
#[derive(Default)]
struct Exposition {
    families: BTreeMap<&'static str, Family>,
}

impl Exposition {
    /// Declares family `name` (no samples yet, so it is listed even when none come).
    fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) {
        self.families.entry(name).or_insert(Family {
            kind,
            help,
            samples: Vec::new(),
        });
    }

    /// A sample of family `name` (declared first) with `labels` (pairs of name and raw value).
    fn sample(
        &mut self,
        name: &'static str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect::<Vec<_>>()
            .join(",");
        let family = self
            .families
            .get_mut(name)
            .unwrap_or_else(|| panic!("metric family {name} is not declared"));
        family.samples.push((labels, value.to_string()));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in &f.samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}

/// Where a device's counter goes: its family, and the label (name and value) that sets it
/// apart within the family, if any.
struct DeviceMetric {
    family: &'static str,
    kind: Kind,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
}

/// The family of counter `counter` of a device of kind `kind` ("block", "net"); `None` for one
/// it does not know (a device's counters are named in its module: `devices::virtio`).
fn device_metric(kind: &str, counter: &str) -> Option<DeviceMetric> {
    use Kind::{Counter, Gauge};
    let m = |family, kind, help, label| {
        Some(DeviceMetric {
            family,
            kind,
            help,
            label,
        })
    };
    const BLOCK_BYTES: &str = "bytes a disk's guest read or wrote";
    const BLOCK_OPS: &str = "requests a disk served, by operation";
    const VIF_FRAMES: &str = "frames a VIF carried, by direction (rx: to the guest)";
    const VIF_BYTES: &str = "bytes a VIF carried, by direction (rx: to the guest)";
    const VIF_ERRORS: &str = "frames a VIF could not carry: malformed or too large";
    match (kind, counter) {
        ("block", "read_bytes") => m(
            "vessel_block_bytes_total",
            Counter,
            BLOCK_BYTES,
            Some(("op", "read")),
        ),
        ("block", "write_bytes") => m(
            "vessel_block_bytes_total",
            Counter,
            BLOCK_BYTES,
            Some(("op", "write")),
        ),
        ("block", "read_ops") => m(
            "vessel_block_operations_total",
            Counter,
            BLOCK_OPS,
            Some(("op", "read")),
        ),
        ("block", "write_ops") => m(
            "vessel_block_operations_total",
            Counter,
            BLOCK_OPS,
            Some(("op", "write")),
        ),
        ("block", "flush_ops") => m(
            "vessel_block_operations_total",
            Counter,
            BLOCK_OPS,
            Some(("op", "flush")),
        ),
        ("block", "errors") => m(
            "vessel_block_errors_total",
            Counter,
            "requests a disk answered with an error",
            None,
        ),
        ("block", "throttled") => m(
            "vessel_block_throttled_total",
            Counter,
            "requests a disk's rate limits held back",
            None,
        ),
        ("net", "rx_frames") => m(
            "vessel_vif_frames_total",
            Counter,
            VIF_FRAMES,
            Some(("direction", "rx")),
        ),
        ("net", "tx_frames") => m(
            "vessel_vif_frames_total",
            Counter,
            VIF_FRAMES,
            Some(("direction", "tx")),
        ),
        ("net", "rx_bytes") => m(
            "vessel_vif_bytes_total",
            Counter,
            VIF_BYTES,
            Some(("direction", "rx")),
        ),
        ("net", "tx_bytes") => m(
            "vessel_vif_bytes_total",
            Counter,
            VIF_BYTES,
            Some(("direction", "tx")),
        ),
        ("net", "rx_errors") => m(
            "vessel_vif_errors_total",
            Counter,
            VIF_ERRORS,
            Some(("direction", "rx")),
        ),
        ("net", "tx_errors") => m(
            "vessel_vif_errors_total",
            Counter,
            VIF_ERRORS,
            Some(("direction", "tx")),
        ),
        ("net", "tx_dropped") => m(
            "vessel_vif_dropped_frames_total",
            Counter,
            "frames from the guest its backend dropped",
            None,
        ),
        ("net", "tx_stalls") => m(
            "vessel_vif_stalls_total",
            Counter,
            "times a VIF's backend had no room and the guest's frames waited",
            None,
        ),
        ("net", "rx_pending") => m(
            "vessel_vif_pending_frames",
            Gauge,
            "frames waiting for the guest to post receive buffers",
            None,
        ),
        ("net", "tx_held") => m(
            "vessel_vif_held_frames",
            Gauge,
            "frames from the guest waiting for room in the backend",
            None,
        ),
        _ => None,
    }
}

/// The whole exposition.
pub fn render(plane: &ControlPlane) -> String {
    let mut x = Exposition::default();
    domain_families(plane, &mut x);
    sched_families(plane, &mut x);
    switch_families(plane, &mut x);
    x.family(
        "vessel_build_info",
        Kind::Gauge,
        "1, labelled with the daemon's version and API version",
    );
    x.sample(
        "vessel_build_info",
        &[("version", env!("CARGO_PKG_VERSION")), ("api", "v1")],
        1,
    );
    x.family(
        "process_start_time_seconds",
        Kind::Gauge,
        "when the daemon started, in seconds since the Unix epoch",
    );
    let started = plane
        .started_at()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    x.sample(
        "process_start_time_seconds",
        &[],
        format!("{:.3}", started.as_secs_f64()),
    );
    x.family(
        "vessel_daemon_uptime_seconds",
        Kind::Gauge,
        "time since the daemon started",
    );
    x.sample(
        "vessel_daemon_uptime_seconds",
        &[],
        format!("{:.3}", plane.uptime().as_secs_f64()),
    );
    x.render()
}

/// Each domain's state, configuration, memory, vCPUs and devices.
fn domain_families(plane: &ControlPlane, x: &mut Exposition) {
    use Kind::{Counter, Gauge};
    x.family(
        "vessel_domain_up",
        Gauge,
        "1 if the domain is running or paused",
    );
    x.family("vessel_domain_paused", Gauge, "1 if the domain is paused");
    x.family(
        "vessel_domain_boots_total",
        Counter,
        "machines built for the domain (1 + reboots)",
    );
    x.family(
        "vessel_domain_vcpus",
        Gauge,
        "vCPUs the domain is configured with",
    );
    x.family(
        "vessel_domain_memory_bytes",
        Gauge,
        "guest RAM the domain is configured with",
    );
    x.family(
        "vessel_domain_memory_resident_bytes",
        Gauge,
        "guest RAM resident on the host",
    );
    x.family(
        "vessel_domain_memory_target_bytes",
        Gauge,
        "guest RAM the host wants the domain to keep (its memory less the balloon's target)",
    );
    x.family(
        "vessel_domain_memory_balloon_bytes",
        Gauge,
        "guest RAM the guest gave back through its balloon",
    );
    x.family(
        "vessel_domain_memory_reported_bytes_total",
        Counter,
        "free guest RAM the guest reported and the host freed",
    );
    x.family(
        "vessel_domain_memory_shared_bytes",
        Gauge,
        "guest RAM page sharing keeps as one copy with identical pages",
    );
    x.family(
        "vessel_domain_memory_swapped_bytes",
        Gauge,
        "memory of the domain's process in the host's swap (guest pages the host paged out)",
    );
    x.family(
        "vessel_domain_memory_active_bytes",
        Gauge,
        "guest RAM the domain actively uses, as its working-set sampling estimates",
    );
    x.family(
        "vessel_domain_guest_memory_available_bytes",
        Gauge,
        "memory the guest could use without swapping, as its balloon driver last said",
    );
    x.family(
        "vessel_vcpu_cpu_seconds_total",
        Counter,
        "CPU time of a vCPU thread",
    );
    x.family(
        "vessel_vcpu_exits_total",
        Counter,
        "vCPU exits to the VMM by reason",
    );
    for e in plane.list() {
        let name = e.def.name();
        let domain = [("domain", name)];
        let state = e.state();
        x.sample("vessel_domain_up", &domain, u8::from(state.is_active()));
        x.sample(
            "vessel_domain_paused",
            &domain,
            u8::from(state == RunState::Paused),
        );
        x.sample(
            "vessel_domain_boots_total",
            &domain,
            e.status.as_ref().map_or(0, |s| s.boots),
        );
        x.sample("vessel_domain_vcpus", &domain, e.def.spec().vcpus);
        x.sample("vessel_domain_memory_bytes", &domain, e.def.spec().memory);
        let Some(m) = &e.stats else { continue };
        x.sample(
            "vessel_domain_memory_resident_bytes",
            &domain,
            m.resident_bytes,
        );
        let Some(memory) = &e.memory else { continue };
        x.sample(
            "vessel_domain_memory_target_bytes",
            &domain,
            memory.target_bytes,
        );
        x.sample(
            "vessel_domain_memory_balloon_bytes",
            &domain,
            memory.balloon_bytes,
        );
        x.sample(
            "vessel_domain_memory_reported_bytes_total",
            &domain,
            memory.reported_bytes,
        );
        x.sample(
            "vessel_domain_memory_shared_bytes",
            &domain,
            memory.shared_bytes,
        );
        x.sample(
            "vessel_domain_memory_swapped_bytes",
            &domain,
            memory.swapped_bytes,
        );
        if let Some(active) = memory.active_estimate_bytes {
            x.sample("vessel_domain_memory_active_bytes", &domain, active);
        }
        if let Some(guest) = memory.guest {
            x.sample(
                "vessel_domain_guest_memory_available_bytes",
                &domain,
                guest.available_bytes,
            );
        }
        for (i, v) in m.vcpus.iter().enumerate() {
            let vcpu = i.to_string();
            let labels = [("domain", name), ("vcpu", vcpu.as_str())];
            x.sample(
                "vessel_vcpu_cpu_seconds_total",
                &labels,
                format!("{:.9}", v.cpu_ns as f64 / 1e9),
            );
            for (reason, n) in &v.exits {
                let labels = [
                    ("domain", name),
                    ("vcpu", vcpu.as_str()),
                    ("reason", reason),
                ];
                x.sample("vessel_vcpu_exits_total", &labels, n);
            }
        }
        for d in &m.devices {
            // A disk is named by its id, a VIF by its MAC.
            let device = if d.kind == "block" { "disk" } else { "vif" };
            for (counter, n) in &d.counters {
                let Some(metric) = device_metric(&d.kind, counter) else {
                    continue;
                };
                x.family(metric.family, metric.kind, metric.help);
                let mut labels = vec![("domain", name), (device, d.label.as_str())];
                labels.extend(metric.label);
                x.sample(metric.family, &labels, n);
            }
        }
    }
}

/// A scheduling figure of a domain (given every domain's, for its share), if it has one.
type SchedGauge = fn(&control::DomainSched, &[control::DomainSched]) -> Option<f64>;

/// Each domain's scheduling: its weight and cap, and its CPU, share and waiting over the
/// scheduler's last interval.
fn sched_families(plane: &ControlPlane, x: &mut Exposition) {
    let all = plane.sched_all();
    let gauges: [(&'static str, &'static str, SchedGauge); 5] = [
        ("vessel_domain_sched_weight", "the domain's scheduling weight", |d, _| {
            Some(f64::from(d.params.weight))
        }),
        ("vessel_domain_sched_cap_ratio", "the domain's CPU cap as a ratio of one CPU (0: none)", |d, _| {
            Some(f64::from(d.params.cap) / 100.0)
        }),
        ("vessel_domain_cpu_usage_ratio", "CPU the domain used over the scheduler's last interval, as a ratio of one CPU", |d, _| {
            d.now.map(|n| n.cpu_percent() / 100.0)
        }),
        ("vessel_domain_cpu_share_ratio", "the domain's share of the CPU all domains used over the scheduler's last interval", |d, all| {
            d.share_percent(all).map(|p| p / 100.0)
        }),
        ("vessel_domain_cpu_wait_ratio", "time the domain's threads waited for a CPU over the scheduler's last interval, as a ratio of one CPU", |d, _| {
            d.now.map(|n| n.wait_percent() / 100.0)
        }),
    ];
    for (family, help, value) in gauges {
        x.family(family, Kind::Gauge, help);
        for d in &all {
            if let Some(v) = value(d, &all) {
                x.sample(family, &[("domain", d.name.as_str())], format!("{v:.5}"));
            }
        }
    }
}

/// The virtual switch's per-port and per-rule counters.
fn switch_families(plane: &ControlPlane, x: &mut Exposition) {
    use Kind::{Counter, Gauge};
    const FRAMES: &str = "frames a switch port carried, by direction (rx: into the switch)";
    const BYTES: &str = "bytes a switch port carried, by direction (rx: into the switch)";
    const DROPPED: &str = "frames a switch port dropped, by reason (error: unusable; filtered: \
                           a rule or the policy; no_room: the port was full, over its rate or gone)";
    x.family("vessel_switch_port_frames_total", Counter, FRAMES);
    x.family("vessel_switch_port_bytes_total", Counter, BYTES);
    x.family("vessel_switch_port_dropped_frames_total", Counter, DROPPED);
    x.family(
        "vessel_switch_port_unparsed_frames_total",
        Counter,
        "frames into a switch port whose protocol or ports the switch could not read",
    );
    x.family(
        "vessel_switch_port_waits_total",
        Counter,
        "frames that found a switch port full or over its rate, and waited",
    );
    x.family(
        "vessel_switch_port_rate_bytes_per_second",
        Gauge,
        "a switch port's rate, for a port that has one",
    );
    for p in plane.ports() {
        let domain = p.domain.as_deref().unwrap_or("");
        let port = [("port", p.name.as_str()), ("domain", domain)];
        let with = |key: &'static str, value: &'static str| {
            [("port", p.name.as_str()), ("domain", domain), (key, value)]
        };
        let c = &p.counters;
        for (direction, frames, bytes) in [
            ("rx", c.rx_frames, c.rx_bytes),
            ("tx", c.tx_frames, c.tx_bytes),
        ] {
            x.sample(
                "vessel_switch_port_frames_total",
                &with("direction", direction),
                frames,
            );
            x.sample(
                "vessel_switch_port_bytes_total",
                &with("direction", direction),
                bytes,
            );
        }
        for (reason, n) in [
            ("error", c.rx_errors),
            ("filtered", c.rx_filtered),
            ("no_room", c.tx_dropped),
        ] {
            x.sample(
                "vessel_switch_port_dropped_frames_total",
                &with("reason", reason),
                n,
            );
        }
        x.sample(
            "vessel_switch_port_unparsed_frames_total",
            &port,
            c.rx_unparsed,
        );
        x.sample("vessel_switch_port_waits_total", &port, c.tx_waits);
        if let Some(rate) = p.rate_bytes_per_sec {
            x.sample("vessel_switch_port_rate_bytes_per_second", &port, rate);
        }
    }
    x.family(
        "vessel_switch_rule_frames_total",
        Counter,
        "frame copies a switch rule matched",
    );
    x.family(
        "vessel_switch_rule_bytes_total",
        Counter,
        "bytes of the frame copies a switch rule matched",
    );
    x.family(
        "vessel_switch_rule_dropped_frames_total",
        Counter,
        "frame copies a switch rule dropped",
    );
    x.family(
        "vessel_switch_rule_unparsed_frames_total",
        Counter,
        "frame copies a switch rule judged fail-closed, their protocol or ports unknown",
    );
    for r in plane.rules() {
        let id = r.id.0.to_string();
        let rule = [("rule", id.as_str())];
        let c = &r.counters;
        x.sample("vessel_switch_rule_frames_total", &rule, c.frames);
        x.sample("vessel_switch_rule_bytes_total", &rule, c.bytes);
        x.sample("vessel_switch_rule_dropped_frames_total", &rule, c.dropped);
        x.sample(
            "vessel_switch_rule_unparsed_frames_total",
            &rule,
            c.unparsed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_family_is_rendered_once_with_all_its_samples() {
        let mut x = Exposition::default();
        x.family("b_total", Kind::Counter, "b");
        x.family("a_bytes", Kind::Gauge, "a");
        x.sample("b_total", &[("d", "x")], 1);
        x.sample("a_bytes", &[], 2);
        x.sample("b_total", &[("d", "y\"")], 3);
        assert_eq!(
            x.render(),
            "# HELP a_bytes a\n# TYPE a_bytes gauge\na_bytes 2\n\
             # HELP b_total b\n# TYPE b_total counter\nb_total{d=\"x\"} 1\nb_total{d=\"y\\\"\"} 3\n"
        );
    }

    #[test]
    fn every_device_counter_has_a_family_with_its_unit() {
        for (kind, names) in [
            ("block", devices::virtio::block::COUNTER_NAMES),
            ("net", devices::virtio::net::COUNTER_NAMES),
        ] {
            for name in names {
                let m = device_metric(kind, name)
                    .unwrap_or_else(|| panic!("{kind} counter {name} has no metric family"));
                assert_eq!(
                    m.kind == Kind::Counter,
                    m.family.ends_with("_total"),
                    "{}",
                    m.family
                );
            }
        }
    }
}
