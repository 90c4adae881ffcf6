//! A domain's virtual network interfaces: opening each VIF's backend and wrapping it in a
//! virtio-net device.

use devices::net_backend::{NetBackend, SocketBackend, TapBackend};
use devices::virtio::net::Net;
use devices::virtio::VirtioDevice;

use crate::config::{NetBackendConfig, NetConfig};
use crate::error::DomainError;
use crate::virtio::VIRTIO_MAX_DEVICES;

/// Opens the host side of `net`.
pub fn open_backend(net: &NetConfig) -> Result<Box<dyn NetBackend>, DomainError> {
    match &net.backend {
        NetBackendConfig::Tap(name) => {
            let (file, actual) = hv::tap::open_tap(name).map_err(|e| {
                DomainError::Config(format!(
                    "--net tap={name}: cannot open the TAP interface: {e}{}",
                    if e.kind() == std::io::ErrorKind::NotFound {
                        " (no /dev/net/tun: load the tun module)"
                    } else {
                        ""
                    }
                ))
            })?;
            Ok(Box::new(TapBackend::new(file, actual)))
        }
        NetBackendConfig::Socket { path, peer } => SocketBackend::bind(path, peer)
            .map(|b| Box::new(b) as Box<dyn NetBackend>)
            .map_err(|e| {
                DomainError::Config(format!(
                    "--net socket={}: cannot bind the socket: {e}",
                    path.display()
                ))
            }),
    }
}

/// One virtio-net device per VIF, in order; `already` devices are placed before them.
pub fn build_nets(
    nets: &[NetConfig],
    already: usize,
) -> Result<Vec<Box<dyn VirtioDevice>>, DomainError> {
    if already + nets.len() > VIRTIO_MAX_DEVICES {
        return Err(DomainError::Config(format!(
            "too many devices: a domain has room for {VIRTIO_MAX_DEVICES} virtio devices"
        )));
    }
    nets.iter()
        .map(|net| Ok(Box::new(Net::new(open_backend(net)?, net.mac)) as Box<dyn VirtioDevice>))
        .collect()
}
