//! Rate limits changed without a restart (`vessel disk set`, `vessel net port set`): a disk's
//! bytes and requests per second, a switch port's rate. Each change is kept in the domain's
//! definition (its next boot and a restarted daemon keep it) and, while the domain runs, is in
//! force before the call returns.

use serde::{Deserialize, Serialize};
use vmm::spec::NetBackendSpec;
use vmm::DomainSpec;

use crate::{ControlError, ControlPlane};

/// A change of a disk's rate limits: the fields given are set (0: no limit), the others kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRateChange {
    /// Bytes per second.
    pub bytes_per_sec: Option<u64>,
    /// Requests per second.
    pub ops_per_sec: Option<u64>,
}

/// One disk of a domain as `vessel disk list` shows it, with its rate limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiskReport {
    /// Its id (`id=`, or `diskN`).
    pub id: String,
    /// The name a Linux guest gives it (`vda` for the first disk, `vdb`...).
    pub guest_name: String,
    /// Its image.
    pub path: String,
    /// Its format, once known.
    pub format: Option<String>,
    /// Whether the guest may only read it.
    pub readonly: bool,
    /// Data rate limit (0: none).
    pub bytes_per_sec: u64,
    /// Request rate limit (0: none).
    pub ops_per_sec: u64,
}

/// A switch port's rate after a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortRate {
    /// The port.
    pub port: String,
    /// Its domain (`None`: the uplink).
    pub domain: Option<String>,
    /// The rate in bytes per second (`None`: no limit).
    pub rate_bytes_per_sec: Option<u64>,
    /// Whether the port is on the switch now (its domain runs) and so has the rate already;
    /// else the domain's next start gives it.
    pub on_switch: bool,
}

/// The name Linux gives the virtio disk number `index` (`vda`...`vdz`, `vdaa`...).
pub fn guest_disk_name(index: usize) -> String {
    let letter = |n: usize| char::from(b'a' + (n % 26) as u8);
    match index {
        0..=25 => format!("vd{}", letter(index)),
        _ => format!("vd{}{}", letter(index / 26 - 1), letter(index)),
    }
}

/// The index of the disk that `disk` names in `spec`: its id first, else its guest name.
fn disk_index(spec: &DomainSpec, disk: &str) -> Option<usize> {
    let indices = 0..spec.disks.len();
    indices
        .clone()
        .find(|&i| spec.disks[i].id_at(i) == disk)
        .or_else(|| indices.into_iter().find(|&i| guest_disk_name(i) == disk))
}

fn disk_report(spec: &DomainSpec, index: usize) -> DiskReport {
    let d = &spec.disks[index];
    DiskReport {
        id: d.id_at(index),
        guest_name: guest_disk_name(index),
        path: d.path.display().to_string(),
        format: d.format.as_ref().map(ToString::to_string),
        readonly: d.readonly,
        bytes_per_sec: d.bytes_per_sec,
        ops_per_sec: d.ops_per_sec,
    }
}

impl ControlPlane {
    /// Domain `name`'s disks, in the order the guest sees them.
    pub fn disks(&self, name: &str) -> Result<Vec<DiskReport>, ControlError> {
        let view = self.registry.view(name)?;
        let spec = view.def.spec();
        Ok((0..spec.disks.len())
            .map(|i| disk_report(spec, i))
            .collect())
    }

    /// Changes the rate limits of domain `name`'s disk `disk` (its id, or its guest name):
    /// kept in the definition and, if the domain runs, in force at once (requests the old
    /// limits held back are judged again under the new ones).
    pub fn set_disk_rates(
        &self,
        name: &str,
        disk: &str,
        change: DiskRateChange,
    ) -> Result<DiskReport, ControlError> {
        if change == DiskRateChange::default() {
            return Err(ControlError::Invalid(
                "no rate limit to change: give bytes_per_sec or ops_per_sec".into(),
            ));
        }
        let def = self.registry.redefine(name, |def| {
            let i =
                disk_index(def.spec(), disk).ok_or_else(|| no_such_disk(def.spec(), name, disk))?;
            def.changed(|spec| {
                let d = &mut spec.disks[i];
                d.bytes_per_sec = change.bytes_per_sec.unwrap_or(d.bytes_per_sec);
                d.ops_per_sec = change.ops_per_sec.unwrap_or(d.ops_per_sec);
            })
        })?;
        // A change of limits leaves the disks where they were.
        let index =
            disk_index(def.spec(), disk).ok_or_else(|| no_such_disk(def.spec(), name, disk))?;
        let report = disk_report(def.spec(), index);
        if let Some(process) = self.registry.instance(name)? {
            if process.status().state.is_active() {
                let action = devices::virtio::Action::SetRateLimit {
                    bps: report.bytes_per_sec,
                    iops: report.ops_per_sec,
                };
                // The disks hold the first slots, in order.
                process.device_control(index, action, &[]).map_err(|why| {
                    ControlError::Refused {
                        name: name.to_string(),
                        why: format!("disk {disk}: {why}"),
                    }
                })?;
            }
        }
        tracing::info!(
            target: "control",
            "domain '{name}': disk {} at {} B/s, {} requests/s (0: no limit)",
            report.id,
            report.bytes_per_sec,
            report.ops_per_sec
        );
        Ok(report)
    }

    /// Sets switch port `port`'s rate (`None`: no limit). A domain's port (`DOMAIN-ethN`, whether
    /// or not the domain runs) keeps it in the domain's definition; the uplink's lasts as long
    /// as this control plane.
    pub fn set_port_rate(&self, port: &str, rate: Option<u64>) -> Result<PortRate, ControlError> {
        let rate = rate.filter(|&r| r > 0);
        let domain_vif = self.registry.views().into_iter().find_map(|v| {
            let spec = v.def.spec();
            let domain = v.def.name().to_string();
            (0..spec.nets.len())
                .find(|&i| {
                    matches!(spec.nets[i].backend, NetBackendSpec::Switch { .. })
                        && crate::switch::port_name(&domain, i) == port
                })
                .map(|i| (domain, i))
        });
        let live = self.switch.ports().into_iter().find(|p| p.name == port);
        if let Some((domain, index)) = &domain_vif {
            self.registry.redefine(domain, |def| {
                def.changed(|spec| {
                    if let NetBackendSpec::Switch { rate: r, .. } = &mut spec.nets[*index].backend {
                        *r = rate;
                    }
                })
            })?;
        } else if !live.as_ref().is_some_and(|p| p.uplink) {
            return Err(ControlError::NoSuchDevice(format!(
                "no switch port named '{port}' (a domain's ports are DOMAIN-ethN, N its VIF's \
                 number; `vessel net ports` lists those on the switch)"
            )));
        }
        if let Some(p) = &live {
            self.switch.set_port_rate(p.id, rate).map_err(|e| {
                ControlError::Internal(format!("cannot set port {port}'s rate: {e}"))
            })?;
        }
        tracing::info!(
            target: "control",
            "switch port {port}: rate {}",
            rate.map_or("none".to_string(), |r| format!("{r} B/s"))
        );
        Ok(PortRate {
            port: port.to_string(),
            domain: domain_vif.map(|(d, _)| d),
            rate_bytes_per_sec: rate,
            on_switch: live.is_some(),
        })
    }
}

/// The error for a disk `disk` that domain `name` does not have, listing those it has.
fn no_such_disk(spec: &DomainSpec, name: &str, disk: &str) -> ControlError {
    let have: Vec<String> = (0..spec.disks.len())
        .map(|i| format!("{} ({})", spec.disks[i].id_at(i), guest_disk_name(i)))
        .collect();
    ControlError::NoSuchDevice(if have.is_empty() {
        format!("domain '{name}' has no disks")
    } else {
        format!(
            "domain '{name}' has no disk '{disk}' (its disks: {})",
            have.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DomainDef;

    #[test]
    fn guest_names_follow_linuxs_order() {
        assert_eq!(guest_disk_name(0), "vda");
        assert_eq!(guest_disk_name(25), "vdz");
        assert_eq!(guest_disk_name(26), "vdaa");
        assert_eq!(guest_disk_name(27), "vdab");
        assert_eq!(guest_disk_name(52), "vdba");
    }

    fn plane_with(tag: &str, json: &str) -> (ControlPlane, std::path::PathBuf) {
        let state = ControlPlane::scratch_dir(tag);
        let plane = ControlPlane::for_tests(&state, false);
        plane
            .define(DomainDef::from_json(json.as_bytes()).unwrap())
            .unwrap();
        (plane, state)
    }

    #[test]
    fn a_disk_is_named_by_id_or_guest_name_and_its_limits_are_kept() {
        let (plane, state) = plane_with(
            "disk-rates",
            r#"{"name":"a","kernel":"/k","disk":["path=/d0,format=raw","path=/d1,format=raw,id=data,bps=1M"]}"#,
        );
        let change = DiskRateChange {
            bytes_per_sec: Some(10 << 20),
            ops_per_sec: None,
        };
        let got = plane.set_disk_rates("a", "vda", change).unwrap();
        assert_eq!((got.id.as_str(), got.bytes_per_sec), ("disk0", 10 << 20));
        let got = plane
            .set_disk_rates(
                "a",
                "data",
                DiskRateChange {
                    bytes_per_sec: None,
                    ops_per_sec: Some(500),
                },
            )
            .unwrap();
        assert_eq!(
            (got.guest_name.as_str(), got.bytes_per_sec, got.ops_per_sec),
            ("vdb", 1 << 20, 500),
            "the limit not given is kept"
        );
        let err = plane.set_disk_rates("a", "vdc", change).unwrap_err();
        assert!(matches!(err, ControlError::NoSuchDevice(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "domain 'a' has no disk 'vdc' (its disks: disk0 (vda), data (vdb))"
        );
        let err = plane
            .set_disk_rates("a", "vda", DiskRateChange::default())
            .unwrap_err();
        assert!(matches!(err, ControlError::Invalid(_)), "{err}");
        assert!(matches!(
            plane.set_disk_rates("b", "vda", change),
            Err(ControlError::NoSuchDomain(_))
        ));
        // A new control plane on the same state reads the limits back.
        drop(plane);
        let again = ControlPlane::for_tests(&state, false);
        let disks = again.disks("a").unwrap();
        assert_eq!(
            disks
                .iter()
                .map(|d| (d.bytes_per_sec, d.ops_per_sec))
                .collect::<Vec<_>>(),
            [(10 << 20, 0), (1 << 20, 500)]
        );
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn a_stopped_domains_port_rate_is_kept_for_its_next_start() {
        let (plane, state) = plane_with(
            "port-rates",
            r#"{"name":"a","kernel":"/k","net":["tap=t0","switch=vsw0,bps=1M"]}"#,
        );
        let set = plane.set_port_rate("a-eth1", Some(4 << 20)).unwrap();
        assert_eq!(
            set,
            PortRate {
                port: "a-eth1".into(),
                domain: Some("a".into()),
                rate_bytes_per_sec: Some(4 << 20),
                on_switch: false,
            }
        );
        let spec = plane.registry.view("a").unwrap().def.spec().clone();
        assert_eq!(
            spec.nets[1].backend,
            NetBackendSpec::Switch {
                name: "vsw0".into(),
                rate: Some(4 << 20)
            }
        );
        // 0 takes the limit away.
        assert_eq!(
            plane
                .set_port_rate("a-eth1", Some(0))
                .unwrap()
                .rate_bytes_per_sec,
            None
        );
        for bad in ["a-eth0", "b-eth0", "vtap9"] {
            let err = plane.set_port_rate(bad, Some(1)).unwrap_err();
            assert!(matches!(err, ControlError::NoSuchDevice(_)), "{bad}: {err}");
        }
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn a_port_on_the_switch_takes_its_rate_at_once() {
        let (plane, state) = plane_with(
            "port-rate-live",
            r#"{"name":"web","kernel":"/k","net":["switch=vsw0"]}"#,
        );
        let ports = crate::switch::port_provider(&plane.switch, "web");
        let _lease = ports(crate::SWITCH_NAME, 0, None).unwrap();
        let set = plane.set_port_rate("web-eth0", Some(2_000_000)).unwrap();
        assert!(set.on_switch);
        let port = plane
            .ports()
            .into_iter()
            .find(|p| p.name == "web-eth0")
            .unwrap();
        assert_eq!(port.rate_bytes_per_sec, Some(2_000_000));
        std::fs::remove_dir_all(&state).unwrap();
    }
}
