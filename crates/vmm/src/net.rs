//! A domain's virtual network interfaces: each VIF's host side (opened once, see
//! [`crate::resources`]) wrapped in a virtio-net device for one boot.

use devices::virtio::net::Net;
use devices::virtio::VirtioDevice;

use crate::config::NetConfig;
use crate::error::DomainError;
use crate::resources::{PortLease, Resources};
use crate::virtio::VIRTIO_MAX_DEVICES;

/// Opens a port on the daemon's virtual switch for VIF number `index` of `net` (a
/// `switch=` VIF: the switch's name, the address, the port's rate); `Err` is a message for
/// the user.
pub type PortProvider =
    std::sync::Arc<dyn Fn(&str, usize, &NetConfig) -> Result<PortLease, String> + Send + Sync>;

/// One virtio-net device per VIF, in order, on the VIFs' host sides in `res`; `already`
/// devices are placed before them.
pub fn build_nets(
    nets: &[NetConfig],
    already: usize,
    res: &Resources,
) -> Result<Vec<Box<dyn VirtioDevice>>, DomainError> {
    if already + nets.len() > VIRTIO_MAX_DEVICES {
        return Err(DomainError::Config(format!(
            "too many devices: a domain has room for {VIRTIO_MAX_DEVICES} virtio devices"
        )));
    }
    nets.iter()
        .enumerate()
        .map(|(index, net)| {
            let backend = res.net_backend(index)?;
            Ok(Box::new(Net::new(backend, net.mac)) as Box<dyn VirtioDevice>)
        })
        .collect()
}
