//! A domain process: one domain in a process of its own, confined before it runs guest code,
//! serving whichever control plane is attached over its channel ([`crate::wire`]).
//!
//! The daemon starts it with a listening channel socket as descriptor 3 and connects. The first
//! connection launches the domain: the definition, the host resources (open descriptors: the
//! process never opens a host path) and the confinement. The process then confines itself
//! (while it still has one thread), builds its first machine and answers. When the control
//! plane goes away (a daemon killed, or stopped for an upgrade) the domain runs on and the
//! process waits for the next connection, which attaches (`Attach`) and is told the state and
//! the console output kept meanwhile. When the domain stops for good the process reports it to
//! the attached control plane, if any, and exits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hv::channel::{Channel, Listener};

use crate::console::ConsoleLog;
use crate::instance::{Instance, Status};
use crate::resources::Resources;
use crate::wire::{
    self, Call, Confinement, DeviceStats, MachineStats, Note, Request, StatusReport, ThreadKind,
    VcpuStats,
};

/// The attached control plane, if any: where notes and console output go.
#[derive(Clone, Default)]
struct Peer {
    channel: Arc<Mutex<Option<Channel>>>,
    /// Calls being answered on threads of their own (a destroy's reply must go out before
    /// the process does).
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Peer {
    fn set(&self, channel: Option<Channel>) {
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = channel;
    }

    /// Sends to the attached control plane; a failed send detaches it.
    fn send(&self, bytes: &[u8]) {
        let mut slot = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            if c.send(bytes, &[]).is_err() {
                *slot = None;
            }
        }
    }
}

fn report(status: &Status) -> StatusReport {
    StatusReport {
        state: status.state.name().to_string(),
        boots: status.boots,
        message: status.message.clone(),
        held_for_memory: status.held_for_memory,
        uptime_ms: status.since.elapsed().as_millis() as u64,
        version: status.version,
    }
}

/// Serves a domain process on `listener` until its domain stops for good; returns the
/// process's exit status (0 when the domain ended in order, 1 when it could not start).
pub fn serve(listener: Listener) -> i32 {
    let first = match listener.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::info!("cannot accept the control plane: {e}");
            return 1;
        }
    };
    let (instance, log, name) = match launch(&first) {
        Ok(v) => v,
        Err((id, why)) => {
            tracing::info!("cannot start: {why}");
            let _ = first.send(
                &wire::encode(&Note::Reply {
                    id,
                    error: Some(why),
                    stats: None,
                    status: None,
                    saved: None,
                    migrated: None,
                }),
                &[],
            );
            return 1;
        }
    };
    let instance = Arc::new(instance);
    let peer = Peer::default();
    let ended = spawn_status_watcher(&instance, &peer);
    let mut next = Some((first, None::<u64>));
    loop {
        let (conn, pending_attach) = match next.take() {
            Some(c) => c,
            None => match accept_attach(&listener) {
                Some((c, id)) => (c, Some(id)),
                None => continue,
            },
        };
        let Ok(writer) = conn.try_clone() else {
            continue;
        };
        // Hello first, then what the console kept, then live output and notes. The kept output
        // and the live stream come from one attach, so no byte falls between them (the guest
        // runs and prints while a control plane attaches).
        let hello = Note::Hello {
            id: pending_attach.unwrap_or(0),
            pid: std::process::id(),
            name: name.clone(),
            status: report(&instance.status()),
        };
        let (kept, output) = log.attach();
        let Ok(console_writer) = conn.try_clone() else {
            continue;
        };
        if writer.send(&wire::encode(&hello), &[]).is_err()
            || writer
                .send(&wire::console(wire::CONSOLE_REPLAY, &kept), &[])
                .is_err()
        {
            continue;
        }
        let left = Arc::new(std::sync::atomic::AtomicBool::new(false));
        spawn_console_forwarder(output, console_writer, left.clone());
        peer.set(Some(writer));
        serve_connection(&conn, &instance, &peer);
        peer.set(None);
        left.store(true, std::sync::atomic::Ordering::SeqCst);
        if ended.lock().map(|e| *e).unwrap_or(true) {
            return 0;
        }
    }
}

/// Reads the launch call, confines the process and starts the domain.
fn launch(conn: &Channel) -> Result<(Instance, ConsoleLog, String), (u64, String)> {
    let (bytes, fds) = match conn.recv() {
        Ok(Some(m)) => m,
        Ok(None) => return Err((0, "the control plane left before the launch".into())),
        Err(e) => return Err((0, format!("reading the launch: {e}"))),
    };
    let call: Call = wire::decode(&bytes).map_err(|e| (0, e))?;
    let Request::Launch {
        name,
        spec,
        manifest,
        confine,
    } = call.request
    else {
        return Err((call.id, "the first call must be a launch".into()));
    };
    let fail = |e: String| (call.id, e);
    spec.validate().map_err(|e| fail(e.to_string()))?;
    let cfg = *spec;
    let res = Resources::from_wire(manifest, fds).map_err(|e| fail(e.to_string()))?;
    // While it may (a confined process gives its privileges up next).
    crate::working_set::prepare();
    if let Some(Confinement { uid, gid }) = confine {
        hv::sandbox::Sandbox {
            uid,
            gid,
            binds: res.socket_dirs(),
        }
        .enter()
        .map_err(|e| fail(e.to_string()))?;
        crate::confinement::confine_threads().map_err(|e| fail(e.to_string()))?;
    }
    let log = ConsoleLog::default();
    let instance = Instance::start(cfg, res, log.sink(), Box::new(|_: &Status| {}))
        .map_err(|e| fail(e.to_string()))?;
    Ok((instance, log, name))
}

/// Waits for a control plane whose first call is an attach; returns its id.
fn accept_attach(listener: &Listener) -> Option<(Channel, u64)> {
    let conn = listener.accept().ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let (bytes, _) = conn.recv().ok()??;
    let call: Call = wire::decode(&bytes).ok()?;
    if call.request != Request::Attach {
        let _ = conn.send(
            &wire::encode(&Note::Reply {
                id: call.id,
                error: Some("this domain runs already: attach to it".into()),
                stats: None,
                status: None,
                saved: None,
                migrated: None,
            }),
            &[],
        );
        return None;
    }
    conn.set_read_timeout(None).ok()?;
    Some((conn, call.id))
}

/// Sends what the guest prints to one attached control plane until it `left` or its connection
/// fails (a later control plane gets a forwarder of its own). Chunks waiting are sent together,
/// so a forwarder that fell behind a guest printing a byte per exit catches up.
fn spawn_console_forwarder(
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    channel: Channel,
    left: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let _ = std::thread::Builder::new()
        .name("console".into())
        .spawn(move || loop {
            let first = match output.recv_timeout(Duration::from_secs(1)) {
                Ok(chunk) => chunk,
                Err(RecvTimeoutError::Timeout) => {
                    if left.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut message = wire::console(wire::CONSOLE_OUT, &first);
            while message.len() < hv::channel::MAX_MESSAGE / 2 {
                match output.try_recv() {
                    Ok(more) => message.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if left.load(std::sync::atomic::Ordering::SeqCst)
                || channel.send(&message, &[]).is_err()
            {
                break;
            }
        });
}

/// Tells the control plane each change of the domain's state; returns the flag that says the
/// domain has stopped for good (once told, the process exits with its connection).
fn spawn_status_watcher(instance: &Arc<Instance>, peer: &Peer) -> Arc<Mutex<bool>> {
    let ended = Arc::new(Mutex::new(false));
    let (instance, peer, flag) = (instance.clone(), peer.clone(), ended.clone());
    let _ = std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            let mut last = instance.status();
            loop {
                let now = instance.wait_status_change(&last, Duration::from_secs(3600));
                if now.state != last.state || now.boots != last.boots {
                    peer.send(&wire::encode(&Note::Status(report(&now))));
                }
                if !now.state.is_active() {
                    *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
                    // The domain is over: the process goes, attached or not, once the
                    // answers under way (a destroy's) are out; the note has been sent to
                    // whoever was there.
                    let deadline = std::time::Instant::now() + Duration::from_secs(5);
                    while peer.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0
                        && std::time::Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    std::process::exit(0);
                }
                last = now;
            }
        });
    ended
}

/// Serves one control plane's calls until it goes away.
fn serve_connection(conn: &Channel, instance: &Arc<Instance>, peer: &Peer) {
    loop {
        let (bytes, fds) = match conn.recv() {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => return,
        };
        match bytes.first() {
            Some(&wire::CONSOLE_IN) => {
                instance.console_input().send_if_attached(&bytes[1..]);
            }
            Some(b'{') => match wire::decode::<Call>(&bytes) {
                Ok(call) => answer(call, fds, instance, peer),
                Err(e) => refuse_unknown(&bytes, &e.to_string(), instance, peer),
            },
            _ => tracing::info!("ignoring a message of an unknown kind"),
        }
    }
}

/// A call this process cannot read (a request a newer control plane knows and this binary
/// does not, or a malformed one): answered with an error if it carries an id, so that its
/// caller does not wait for an answer that never comes; ignored otherwise.
fn refuse_unknown(bytes: &[u8], why: &str, instance: &Instance, peer: &Peer) {
    let id = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
    let Some(id) = id else {
        tracing::info!("ignoring {why}");
        return;
    };
    tracing::info!("refusing call {id}: {why}");
    peer.send(&wire::encode(&Note::Reply {
        id,
        error: Some(format!("this domain process cannot do that: {why}")),
        stats: None,
        status: Some(report(&instance.status())),
        saved: None,
        migrated: None,
    }));
}

/// Answers one call (`fds`: the descriptors that came with it); the slow ones (which wait for
/// vCPUs or the I/O thread) on a thread of their own so that counters and console input keep
/// flowing meanwhile.
fn answer(call: Call, fds: Vec<std::os::fd::OwnedFd>, instance: &Arc<Instance>, peer: &Peer) {
    let reply = |peer: &Peer, id: u64, result: Result<Option<MachineStats>, String>| {
        let (error, stats) = match result {
            Ok(s) => (None, s),
            Err(e) => (Some(e), None),
        };
        let status = Some(report(&instance.status()));
        peer.send(&wire::encode(&Note::Reply {
            id,
            error,
            stats,
            status,
            saved: None,
            migrated: None,
        }));
    };
    let id = call.id;
    match call.request {
        Request::Stats => reply(peer, id, Ok(stats(instance))),
        Request::PowerButton => reply(peer, id, instance.press_power_button().map(|()| None)),
        Request::Reset => reply(peer, id, instance.reset().map(|()| None)),
        Request::Pause
        | Request::Unpause
        | Request::HoldForMemory { .. }
        | Request::Destroy
        | Request::DeviceControl { .. }
        | Request::Save { .. }
        | Request::Migrate { .. }
        | Request::PageOut { .. } => {
            let (instance, peer) = (instance.clone(), peer.clone());
            let request = call.request;
            peer.in_flight
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = std::thread::Builder::new()
                .name("transition".into())
                .spawn(move || {
                    let mut migrated = None;
                    let result = match request {
                        Request::Pause => instance.pause().map(|()| None),
                        Request::Unpause => instance.unpause().map(|()| None),
                        Request::HoldForMemory { hold } => {
                            instance.hold_for_memory(hold).map(|()| None)
                        }
                        Request::DeviceControl { slot, action } => {
                            instance.device_control(slot, action, fds).map(|()| None)
                        }
                        Request::PageOut { bytes } => instance.page_out(bytes).map(|advised| {
                            tracing::debug!("paged out {} KiB of guest memory", advised >> 10);
                            None
                        }),
                        Request::Save { spec } => match fds.into_iter().next() {
                            Some(fd) => instance.save(std::fs::File::from(fd), *spec).map(Some),
                            None => Err("a save comes with the snapshot file's descriptor".into()),
                        },
                        Request::Migrate { spec, params } => match fds.into_iter().next() {
                            Some(fd) => instance.migrate(fd, *spec, params).map(|report| {
                                migrated = Some(Box::new(report));
                                None
                            }),
                            None => Err("a migration comes with its connection".into()),
                        },
                        _ => {
                            instance.destroy();
                            Ok(None)
                        }
                    };
                    let (error, saved) = match result {
                        Ok(saved) => (None, saved),
                        Err(e) => (Some(e), None),
                    };
                    peer.send(&wire::encode(&Note::Reply {
                        id,
                        error,
                        stats: None,
                        status: Some(report(&instance.status())),
                        saved,
                        migrated,
                    }));
                    peer.in_flight
                        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
        }
        Request::Panic { thread } => {
            if !crate::confinement::request_panic(thread.into()) {
                return reply(
                    peer,
                    id,
                    Err("only a vCPU or the I/O thread is asked".into()),
                );
            }
            reply(peer, id, Ok(None));
            if thread == ThreadKind::Vcpu {
                // As below: a pause kicks the vCPU out of KVM_RUN.
                let instance = instance.clone();
                let _ = std::thread::Builder::new()
                    .name("transition".into())
                    .spawn(move || instance.pause());
            }
        }
        Request::ForbiddenCall { thread } => {
            reply(peer, id, Ok(None));
            crate::confinement::request_forbidden_call(thread.into());
            if thread == ThreadKind::Vcpu {
                // A guest that never leaves KVM_RUN on its own (a queue notified through an
                // ioeventfd) is kicked out by a pause: its vCPUs see the request first.
                let instance = instance.clone();
                let _ = std::thread::Builder::new()
                    .name("transition".into())
                    .spawn(move || instance.pause());
            }
        }
        Request::Launch { .. } | Request::Attach => {
            reply(peer, id, Err("this domain runs already".into()))
        }
    }
}

/// A virtio device type's name in the API.
pub fn device_kind(device_id: u32) -> &'static str {
    devices::virtio::device_id::name(device_id)
}

/// The counters of the running machine, if one runs.
fn stats(instance: &Instance) -> Option<MachineStats> {
    let machine = instance.machine()?;
    Some(MachineStats {
        vcpus: machine
            .counters
            .iter()
            .map(|c| VcpuStats::from(c.snapshot()))
            .collect(),
        devices: machine
            .devices
            .iter()
            .map(|d| DeviceStats {
                kind: device_kind(d.device_id).to_string(),
                label: d.label.clone(),
                counters: d
                    .counters
                    .snapshot()
                    .into_iter()
                    .map(|(k, n)| (k.to_string(), n))
                    .collect(),
            })
            .collect(),
        resident_bytes: machine.resident_bytes(),
        migration: instance.migration_progress(),
        working_set: wire::WorkingSetStats::of(&crate::working_set::read(&machine.working_set)),
    })
}
