//! A domain's virtual network interfaces: each VIF's host side (opened once, see
//! [`crate::resources`]) wrapped in a virtio-net device for one boot.

use devices::virtio::net::Net;
use devices::virtio::VirtioDevice;

use crate::error::DomainError;
use crate::resources::{PortLease, Resources};
use crate::spec::{generated_mac, DomainSpec, NetBackendSpec, NetSpec};
use crate::virtio::VIRTIO_MAX_DEVICES;

/// Opens a port on the daemon's virtual switch for a `switch=` VIF: given the switch's name,
/// the VIF's number and the port's rate (bytes per second, `None` for no limit); `Err` is a
/// message for the user.
pub type PortProvider =
    std::sync::Arc<dyn Fn(&str, usize, Option<u64>) -> Result<PortLease, String> + Send + Sync>;

/// The MAC of VIF number `index` of domain `domain` (its name, if it has one): the one given,
/// or a generated one ([`generated_mac`]) from a key that names the backend: `tap=NAME`,
/// `socket=PATH` (PATH made absolute), or for a switch port `switch=NAME/DOMAIN/INDEX` (so two
/// domains never share one; `switch=NAME` without a domain name).
pub fn vif_mac(domain: Option<&str>, index: usize, net: &NetSpec) -> [u8; 6] {
    if let Some(mac) = net.mac {
        return mac;
    }
    let key = match &net.backend {
        NetBackendSpec::Tap(name) => format!("tap={name}"),
        NetBackendSpec::Socket { path, .. } => {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            format!("socket={}", path.display())
        }
        NetBackendSpec::Switch { name, .. } => match domain {
            Some(domain) => format!("switch={name}/{domain}/{index}"),
            None => format!("switch={name}"),
        },
    };
    generated_mac(&key)
}

/// One virtio-net device per VIF of `spec`, in order, on the VIFs' host sides in `res`;
/// `already` devices are placed before them.
pub fn build_nets(
    spec: &DomainSpec,
    already: usize,
    res: &Resources,
) -> Result<Vec<Box<dyn VirtioDevice>>, DomainError> {
    let nets = &spec.nets;
    if already + nets.len() > VIRTIO_MAX_DEVICES {
        return Err(DomainError::Config(format!(
            "too many devices: a domain has room for {VIRTIO_MAX_DEVICES} virtio devices"
        )));
    }
    nets.iter()
        .enumerate()
        .map(|(index, net)| {
            let backend = res.net_backend(index)?;
            let mac = vif_mac(spec.name.as_deref(), index, net);
            let vif = Net::new(backend, mac);
            let vif = if net.offloads {
                vif
            } else {
                vif.without_offloads()
            };
            Ok(Box::new(vif) as Box<dyn VirtioDevice>)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> NetSpec {
        text.parse().unwrap()
    }

    #[test]
    fn generated_macs_are_stable_and_distinct() {
        let tap = vif_mac(None, 0, &net("tap=tap0"));
        assert_eq!(tap, vif_mac(Some("x"), 3, &net("tap=tap0")), "stable");
        assert_ne!(tap, vif_mac(None, 0, &net("tap=tap1")));
        assert_eq!(tap[0], 0x02, "locally administered unicast");
        // The two ends of a link differ; a relative path means the absolute one.
        let a = vif_mac(None, 0, &net("socket=/tmp/a.sock,peer=/tmp/b.sock"));
        let b = vif_mac(None, 0, &net("socket=/tmp/b.sock,peer=/tmp/a.sock"));
        assert_ne!(a, b);
        let cwd = std::env::current_dir().unwrap();
        let absolute = format!("socket={},peer=/p", cwd.join("rel.sock").display());
        assert_eq!(
            vif_mac(None, 0, &net("socket=rel.sock,peer=/p")),
            vif_mac(None, 0, &net(&absolute))
        );
        // The addresses Vessel has always given: FNV-1a of the key.
        assert_eq!(tap, generated_mac("tap=tap0"));
        assert_eq!(a, generated_mac("socket=/tmp/a.sock"));
    }

    #[test]
    fn switch_ports_get_per_domain_macs_unless_given_one() {
        let port = net("switch=vsw0");
        let a = vif_mac(Some("a"), 0, &port);
        assert_ne!(a, vif_mac(Some("b"), 0, &port), "two domains");
        assert_ne!(a, vif_mac(Some("a"), 1, &port), "two ports of one domain");
        assert_eq!(a, generated_mac("switch=vsw0/a/0"));
        let given = net("switch=vsw0,mac=02:00:00:00:00:09");
        assert_eq!(vif_mac(Some("c"), 0, &given), [2, 0, 0, 0, 0, 9]);
    }
}
