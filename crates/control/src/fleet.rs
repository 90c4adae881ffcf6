//! Actions on every domain at once: at startup, taking over the domain processes an earlier
//! control plane left running (with fresh switch ports for their VIFs) and starting the
//! domains marked `autostart`; at exit, shutting every domain down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::process::DomainProcess;
use crate::ControlPlane;

impl ControlPlane {
    /// Finds the domain processes an earlier control plane left running (their channel sockets
    /// in the run directory) and attaches to them; removes the control groups of domains that
    /// ended meanwhile; then starts the domains marked `autostart` that are not running.
    pub fn reattach_and_autostart(&self) {
        for view in self.registry.views() {
            let name = view.def.name().to_string();
            let socket = self.socket_of(&name);
            if !socket.exists() {
                continue;
            }
            let console = match self.registry.with(&name, |e| e.console.clone()) {
                Ok(c) => c,
                Err(_) => continue,
            };
            match DomainProcess::attach(&name, &socket, console, self.leave_group(&name)) {
                Some(process) => {
                    tracing::info!("domain '{name}' runs (process {}): attached", process.pid());
                    self.hand_new_ports(&name, view.def.spec(), &process);
                    let process = Arc::new(process);
                    let _ = self.registry.with(&name, |e| e.instance = Some(process));
                }
                None => {
                    // Nobody listens: the process ended while no control plane was there.
                    let _ = std::fs::remove_file(&socket);
                }
            }
        }
        let running: Vec<String> = self
            .registry
            .views()
            .into_iter()
            .filter(|v| v.state().is_active())
            .map(|v| v.def.name().to_string())
            .collect();
        self.cgroups.remove_stale(&running);
        for view in self.registry.views() {
            if view.def.spec().autostart && !view.state().is_active() {
                let name = view.def.name().to_string();
                match self.start(&name) {
                    Ok(()) => tracing::info!("domain '{name}' started (autostart)"),
                    Err(e) => tracing::info!("domain '{name}' (autostart) cannot start: {e}"),
                }
            }
        }
    }

    /// Gives the `switch=` VIFs of a domain found running after a restart new ports on this
    /// control plane's switch (the ports of the one that started it went with it): each VIF's
    /// device is handed its new port's socket while the domain runs on, so its networking
    /// works again.
    fn hand_new_ports(&self, name: &str, spec: &vmm::DomainSpec, process: &DomainProcess) {
        if !process.status().state.is_active() {
            return;
        }
        let ports = crate::switch::port_provider(&self.switch, name);
        for (index, vif) in spec.nets.iter().enumerate() {
            let vmm::spec::NetBackendSpec::Switch { name: switch, rate } = &vif.backend else {
                continue;
            };
            let slot = vmm::virtio::vif_slot(spec.disks.len(), index);
            let handed = ports(switch, index, *rate).and_then(|lease| {
                let port = lease.name.clone();
                process.hand_port(slot, lease).map(|()| port)
            });
            match handed {
                Ok(port) => tracing::info!("domain '{name}': eth{index} is on port {port} again"),
                Err(e) => tracing::warn!("domain '{name}': eth{index} has no switch port: {e}"),
            }
        }
    }

    /// Shuts every running domain down: presses each power button, waits at most `grace`
    /// for them to power off, then stops those still running; then removes the control
    /// plane's parent control groups if no domain's group is left in them.
    pub fn shut_down_all(&self, grace: Duration) {
        let running: Vec<(String, Arc<DomainProcess>)> = self
            .registry
            .views()
            .into_iter()
            .filter_map(|v| {
                let p = v.instance.clone()?;
                p.status()
                    .state
                    .is_active()
                    .then(|| (v.def.name().to_string(), p))
            })
            .collect();
        for (name, p) in &running {
            if let Err(e) = p.press_power_button() {
                tracing::info!("domain '{name}': {e}");
            }
        }
        let deadline = Instant::now() + grace;
        for (name, p) in &running {
            let left = deadline.saturating_duration_since(Instant::now());
            if !p.wait_stopped(left) {
                tracing::info!(
                    "domain '{name}' did not power off within {} s: stopping it",
                    grace.as_secs()
                );
                p.destroy();
            }
            p.wait_gone(Duration::from_secs(10));
        }
        self.cgroups.remove_parents();
    }
}
