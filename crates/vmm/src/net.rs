//! A domain's virtual network interfaces: opening each VIF's backend and wrapping it in a
//! virtio-net device.

use devices::net_backend::{NetBackend, SocketBackend, TapBackend};
use devices::virtio::net::Net;
use devices::virtio::VirtioDevice;

use crate::config::{NetBackendConfig, NetConfig};
use crate::error::DomainError;
use crate::virtio::VIRTIO_MAX_DEVICES;

/// Opens a port on the daemon's virtual switch for VIF number `index` of `net` (a
/// `switch=` VIF: the switch's name, the address, the port's rate); `Err` is a message for
/// the user.
pub type PortProvider = std::sync::Arc<
    dyn Fn(&str, usize, &NetConfig) -> Result<Box<dyn NetBackend>, String> + Send + Sync,
>;

/// Opens the host side of `net`, VIF number `index`; switch ports come from `ports`.
pub fn open_backend(
    net: &NetConfig,
    index: usize,
    ports: Option<&PortProvider>,
) -> Result<Box<dyn NetBackend>, DomainError> {
    match &net.backend {
        NetBackendConfig::Switch(name) => match ports {
            Some(open) => open(name, index, net)
                .map_err(|e| DomainError::Config(format!("--net switch={name}: {e}"))),
            None => Err(DomainError::Config(format!(
                "--net switch={name}: switch ports exist only in domains run by `vessel daemon`"
            ))),
        },
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
    ports: Option<&PortProvider>,
) -> Result<Vec<Box<dyn VirtioDevice>>, DomainError> {
    if already + nets.len() > VIRTIO_MAX_DEVICES {
        return Err(DomainError::Config(format!(
            "too many devices: a domain has room for {VIRTIO_MAX_DEVICES} virtio devices"
        )));
    }
    nets.iter()
        .enumerate()
        .map(|(index, net)| {
            let backend = open_backend(net, index, ports)?;
            Ok(Box::new(Net::new(backend, net.mac)) as Box<dyn VirtioDevice>)
        })
        .collect()
}
