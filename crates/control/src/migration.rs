//! Live migration between daemons, as the control plane runs it: the sending daemon connects
//! to the receiving one and hands the connection to the domain's process
//! ([`vmm::migration`] sends); the receiving daemon takes one connection, reads the domain's
//! definition from it, checks and defines the domain, and starts its process on the rest of
//! the stream. The domain leaves the sender's list once the receiver runs it.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use vmm::migration::{MigrateParams, MigrationReport};

use crate::lifecycle::FirstMachine;
use crate::{ControlError, ControlPlane, DomainDef};

/// How long the sender tries to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first line a sender says: this, a space and the token both sides were given.
const HELLO: &str = "vessel-migration";
/// The longest token.
const MAX_TOKEN: usize = 256;

/// The `HOST:PORT` of a migration address `tcp:HOST:PORT`.
pub fn parse_address(address: &str) -> Result<&str, ControlError> {
    address
        .strip_prefix("tcp:")
        .filter(|rest| {
            rest.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        })
        .ok_or_else(|| {
            ControlError::Invalid(format!(
                "the migration address {address:?} is not tcp:HOST:PORT"
            ))
        })
}

/// Checks a migration token: the secret both sides are given, which the sender presents
/// first (one to 256 printable characters, no spaces).
pub fn check_token(token: &str) -> Result<(), ControlError> {
    if token.is_empty() || token.len() > MAX_TOKEN || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ControlError::Invalid(format!(
            "a migration token is 1 to {MAX_TOKEN} printable characters without spaces"
        )));
    }
    Ok(())
}

/// `def` with `autostart` as `on`.
fn with_autostart(def: &DomainDef, on: bool) -> Result<DomainDef, ControlError> {
    let mut spec = def.spec().clone();
    spec.autostart = on;
    DomainDef::new(spec)
}

impl ControlPlane {
    /// Migrates running or paused domain `name` to the daemon awaiting it at `to`
    /// (`tcp:HOST:PORT`, see [`ControlPlane::migrate_receive`]), presenting `token`. Once the
    /// receiver runs it, its process here ends and its definition is forgotten (it lives on
    /// there). If the migration fails before that, the domain runs on here as it was, and the
    /// error says why. While it runs, the stored definition is not `autostart` (a daemon
    /// restarted meanwhile must not boot a second copy); a failure puts the mark back. If the
    /// receiver was told to run it but never confirmed that it does, the definition is kept
    /// here, shut off and not `autostart`, and the report says why.
    pub fn migrate(
        &self,
        name: &str,
        to: &str,
        token: &str,
        params: MigrateParams,
    ) -> Result<MigrationReport, ControlError> {
        check_token(token)?;
        let host_port = parse_address(to)?;
        let process = self.active_process(name)?;
        let spec = self.registry.with(name, |e| e.def.spec().clone())?;
        let refused = |why: String| ControlError::Refused {
            name: name.to_string(),
            why,
        };
        let addrs: Vec<_> = host_port
            .to_socket_addrs()
            .map_err(|e| refused(format!("cannot resolve {host_port}: {e}")))?
            .collect();
        let conn = addrs
            .iter()
            .find_map(|a| TcpStream::connect_timeout(a, CONNECT_TIMEOUT).ok())
            .ok_or_else(|| refused(format!("cannot connect to {host_port}")))?;
        vmm::migration::say(&conn, &format!("{HELLO} {token}"))
            .map_err(|e| refused(format!("cannot talk to {host_port}: {e}")))?;
        if spec.autostart {
            self.registry.redefine(name, |d| with_autostart(d, false))?;
        }
        let put_back = || {
            if spec.autostart {
                let _ = self.registry.redefine(name, |d| with_autostart(d, true));
            }
        };
        tracing::info!(domain = name, to, "migrating");
        match process.migrate(&conn, spec.clone(), params) {
            Ok(Ok(report)) => {
                drop(conn);
                process.wait_gone(Duration::from_secs(10));
                if report.unconfirmed.is_none() {
                    if let Err(e) = self.registry.undefine_stopped(name) {
                        tracing::warn!(
                            domain = name,
                            "the migrated domain's definition stays: {e}"
                        );
                    }
                }
                tracing::info!(
                    domain = name,
                    to,
                    rounds = report.rounds,
                    bytes = report.bytes,
                    downtime_ms = report.downtime_ms,
                    total_ms = report.total_ms,
                    unconfirmed = report.unconfirmed.as_deref().unwrap_or(""),
                    "migrated"
                );
                Ok(report)
            }
            Ok(Err(why)) => {
                put_back();
                Err(refused(why))
            }
            Err(no_answer) => Err(refused(format!(
                "{no_answer}; the domain's state says whether it still runs here (its \
                 definition is kept without autostart)"
            ))),
        }
    }

    /// Waits at most `wait` for one migration presenting `token` to arrive at `listen`
    /// (`tcp:HOST:PORT`) and runs the domain it brings (named `name`, or as it was named), as
    /// `vessel migrate-receive`; returns the domain's name once it runs here. A connection
    /// without the token is refused and the wait goes on. A domain of that name must not
    /// exist here; its disks must be at the same paths (shared storage). Its definition is
    /// stored without `autostart` until it runs here.
    pub fn migrate_receive(
        &self,
        listen: &str,
        token: &str,
        name: Option<&str>,
        wait: Duration,
    ) -> Result<String, ControlError> {
        check_token(token)?;
        let host_port = parse_address(listen)?;
        let listener = TcpListener::bind(host_port)
            .map_err(|e| ControlError::Invalid(format!("cannot listen on {host_port}: {e}")))?;
        tracing::info!(listen, "awaiting a migration");
        let deadline = Instant::now() + wait;
        let conn = loop {
            let conn = accept_until(&listener, deadline, wait)?;
            let peer = peer_of(&conn);
            // The greeting, then the specification, each within the peer timeout in all.
            let greeting = vmm::migration::ReadBefore::new(&conn, vmm::migration::PEER_TIMEOUT);
            match vmm::migration::read_line(greeting) {
                Ok(line)
                    if line.strip_prefix(HELLO).and_then(|t| t.strip_prefix(' '))
                        == Some(token) =>
                {
                    break conn
                }
                _ => {
                    tracing::warn!(from = %peer, "refused a migration without the token");
                    let _ = vmm::migration::say(&conn, "refused: not the migration's token");
                }
            }
        };
        drop(listener);
        let peer = peer_of(&conn);
        let refuse = |e: ControlError| {
            let _ = vmm::migration::say(&conn, &format!("refused: {e}"));
            e
        };
        // Unbuffered: the domain's process reads on from the byte after the definition.
        let within = vmm::migration::ReadBefore::new(&conn, vmm::migration::PEER_TIMEOUT);
        let mut spec = vmm::snapshot::SnapshotReader::migration(within)
            .and_then(|mut r| r.spec())
            .map_err(|e| ControlError::Invalid(format!("the migration from {peer}: {e}")))
            .map_err(refuse)?;
        if let Some(name) = name {
            spec.name = Some(name.to_string());
        }
        let autostart = spec.autostart;
        spec.autostart = false;
        let mut def = DomainDef::new(spec).map_err(refuse)?;
        def.check_to_store().map_err(refuse)?;
        def.pin_disk_formats().map_err(refuse)?;
        let name = def.name().to_string();
        let conn_file = conn
            .try_clone()
            .map_err(|e| ControlError::Invalid(format!("the migration's connection: {e}")))
            .map_err(refuse)?;
        self.registry.define(def, true).map_err(refuse)?;
        tracing::info!(domain = %name, from = %peer, "receiving a migration");
        let started = self.launch(
            &name,
            FirstMachine::Migration(std::fs::File::from(std::os::fd::OwnedFd::from(conn_file))),
        );
        if let Err(e) = started {
            let _ = self.registry.undefine_claimed(&name);
            return Err(refuse(e));
        }
        self.finish_start(&name, started)?;
        if autostart {
            let _ = self.registry.redefine(&name, |d| with_autostart(d, true));
        }
        tracing::info!(domain = %name, from = %peer, "migration received");
        Ok(name)
    }
}

fn peer_of(conn: &TcpStream) -> String {
    conn.peer_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string())
}

/// The next connection to `listener` before `deadline` (`wait` after the wait began).
fn accept_until(
    listener: &TcpListener,
    deadline: Instant,
    wait: Duration,
) -> Result<TcpStream, ControlError> {
    let no = |e: std::io::Error| ControlError::Invalid(format!("awaiting a migration: {e}"));
    listener.set_nonblocking(true).map_err(no)?;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).map_err(no)?;
                return Ok(conn);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(ControlError::Invalid(format!(
                        "no migration arrived within {} s",
                        wait.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(no(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_addresses_are_tcp_host_port() {
        assert_eq!(parse_address("tcp:10.0.0.2:7000").unwrap(), "10.0.0.2:7000");
        assert_eq!(parse_address("tcp:[::1]:7000").unwrap(), "[::1]:7000");
        assert_eq!(parse_address("tcp:target:1").unwrap(), "target:1");
        for bad in [
            "10.0.0.2:7000",
            "tcp:host",
            "tcp::7000",
            "tcp:h:70000",
            "udp:h:1",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_printable_words() {
        assert!(check_token("s3cret-42").is_ok());
        for bad in ["", "two words", "new\nline", &"x".repeat(257)] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
    }
}
