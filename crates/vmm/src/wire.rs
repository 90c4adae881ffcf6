//! The protocol between the control plane and a domain process, over an [`hv::channel`].
//!
//! A message is one of:
//! - a JSON [`Call`] (control plane to domain): a request with an id;
//! - a JSON [`Note`] (domain to control plane): the reply to a call, or news (its state, its
//!   machine's threads);
//! - raw console bytes, tagged by their first byte: [`CONSOLE_OUT`] (what the guest printed),
//!   [`CONSOLE_REPLAY`] (the output the domain kept, sent when a control plane attaches, so a
//!   restarted daemon shows what came before) and [`CONSOLE_IN`] (bytes for the guest).
//!
//! JSON messages start with `{`; nothing else does. A domain process takes one control plane at
//! a time: the first message on a new connection is a [`Request::Launch`] (a process not
//! started yet) or a [`Request::Attach`] (one that runs already), answered with a
//! [`Note::Hello`].

use serde::{Deserialize, Serialize};

use crate::resources::Manifest;
use crate::spec::DomainSpec;
use crate::stats::VcpuSnapshot;

/// Tag of a message of console output (domain to control plane).
pub const CONSOLE_OUT: u8 = 1;
/// Tag of a message of console input (control plane to domain).
pub const CONSOLE_IN: u8 = 2;
/// Tag of the console output a domain kept, sent when a control plane attaches.
pub const CONSOLE_REPLAY: u8 = 3;

/// How a domain process is confined (see [`hv::sandbox::Sandbox`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confinement {
    /// The user it runs as.
    pub uid: u32,
    /// The group it runs as.
    pub gid: u32,
}

/// A thread kind of a domain process, as seccomp filters see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum ThreadKind {
    /// Runs a vCPU (KVM_RUN, port and MMIO exits on the buses).
    Vcpu,
    /// Serves the paravirtual devices' queues and backends.
    Io,
    /// Talks to the control plane, builds machines, supervises.
    Control,
}

impl From<ThreadKind> for hv::seccomp::ThreadKind {
    fn from(kind: ThreadKind) -> Self {
        match kind {
            ThreadKind::Vcpu => hv::seccomp::ThreadKind::Vcpu,
            ThreadKind::Io => hv::seccomp::ThreadKind::Io,
            ThreadKind::Control => hv::seccomp::ThreadKind::Control,
        }
    }
}

/// What the control plane asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Start the domain: its specification, the resources handed over with this message, and
    /// how to confine the process first.
    Launch {
        /// The domain's name.
        name: String,
        /// Its specification.
        spec: Box<DomainSpec>,
        /// What the descriptors of this message are.
        manifest: Manifest,
        /// The confinement, or none (a test harness).
        confine: Option<Confinement>,
    },
    /// A control plane (re)attaches to a running domain.
    Attach,
    /// Park the vCPUs.
    Pause,
    /// Run them again.
    Unpause,
    /// The memory policy holds the running domain, paused (`hold`), or lets the domain it
    /// holds run again (`Instance::hold_for_memory`).
    HoldForMemory {
        /// Hold, or let go.
        hold: bool,
    },
    /// A hard reset: a fresh machine boots.
    Reset,
    /// Press the ACPI power button.
    PowerButton,
    /// Stop at once.
    Destroy,
    /// Counters of the running machine.
    Stats,
    /// A control action on a running device (a disk's rate limits, a VIF's backend or link),
    /// carried out on the machine's I/O thread; the descriptors the action carries come with
    /// this message.
    DeviceControl {
        /// The device's slot (its place among the domain's virtio devices: the disks, the
        /// entropy device, then the VIFs).
        slot: usize,
        /// What to do.
        action: devices::virtio::Action,
    },
    /// Save the domain to the snapshot file whose descriptor comes with the call, and stop
    /// it there (`Instance::save`). `spec` is the domain's definition as the control plane
    /// keeps it now (with what changed since the launch, such as rate limits): the snapshot
    /// records it.
    Save {
        /// The definition to record.
        spec: Box<DomainSpec>,
    },
    /// Migrate the domain over the connection whose descriptor comes with the call (to a
    /// daemon awaiting it), and stop it here once the receiver runs it
    /// (`Instance::migrate`). `spec` is the definition to send, as for a save.
    Migrate {
        /// The definition to send.
        spec: Box<DomainSpec>,
        /// The downtime target and bandwidth cap.
        params: crate::migration::MigrateParams,
    },
    /// Host swapping (`hv::paging`): ask the host's kernel to page out about `bytes` of the
    /// guest's resident memory, chosen at random.
    PageOut {
        /// How much.
        bytes: u64,
    },
    /// A debugging hook for the tests of the seccomp filters: make a thread of this kind call
    /// a system call its filter does not allow (the kernel then kills the domain process).
    ForbiddenCall {
        /// Which thread.
        thread: ThreadKind,
    },
    /// A debugging hook for the tests of a failing thread: make a vCPU or the I/O thread panic
    /// (the domain then ends crashed, saying which thread failed).
    Panic {
        /// Which thread.
        thread: ThreadKind,
    },
}

/// A request and its id (replies carry it back).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Chosen by the caller, unique per connection.
    pub id: u64,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

/// A domain's state, as the control plane sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// "running", "paused", "shutoff" or "crashed".
    pub state: String,
    /// Machines built so far.
    pub boots: u32,
    /// Why it stopped or crashed, once it has.
    pub message: Option<String>,
    /// Paused by the memory policy, not by its user (absent from a process that never
    /// held its domain).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held_for_memory: bool,
    /// Milliseconds since the current machine started.
    pub uptime_ms: u64,
    /// Grows with every change: a report with a smaller version is older news.
    pub version: u64,
}

/// One virtio device's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStats {
    /// "block", "net", "rng"...
    pub kind: String,
    /// Its label (a disk's id, a VIF's MAC...).
    pub label: String,
    /// Counter name and value.
    pub counters: Vec<(String, u64)>,
}

/// One vCPU's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuStats {
    /// CPU time its thread used, in nanoseconds.
    pub cpu_ns: u64,
    /// Exits by reason name.
    pub exits: Vec<(String, u64)>,
}

impl From<VcpuSnapshot> for VcpuStats {
    fn from(s: VcpuSnapshot) -> Self {
        VcpuStats {
            cpu_ns: s.cpu_ns,
            exits: s
                .exits
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
        }
    }
}

/// The counters of a running machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineStats {
    /// Each vCPU's.
    pub vcpus: Vec<VcpuStats>,
    /// Each virtio device's, in slot order.
    pub devices: Vec<DeviceStats>,
    /// Guest RAM resident on the host, in bytes.
    pub resident_bytes: u64,
    /// Where a migration of the domain is, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<crate::migration::Progress>,
    /// What sampling its working set found, once a period has been sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set: Option<WorkingSetStats>,
}

/// A domain's working-set estimate, as its process keeps it (`crate::working_set`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkingSetStats {
    /// Periods sampled.
    pub periods: u64,
    /// Pages sampled in the last period.
    pub sampled_pages: u64,
    /// Of those, the pages touched.
    pub touched_pages: u64,
    /// The estimate: the share of its resident memory the domain uses, 0 to 1.
    pub active_share: f64,
}

impl WorkingSetStats {
    /// The stats of an estimate, if it has a period.
    pub fn of(share: &hv::sampling::ActiveShare) -> Option<WorkingSetStats> {
        Some(WorkingSetStats {
            periods: share.periods,
            sampled_pages: share.last.sampled as u64,
            touched_pages: share.last.touched as u64,
            active_share: share.estimate()?,
        })
    }
}

/// What a domain process says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "note", rename_all = "snake_case", deny_unknown_fields)]
pub enum Note {
    /// The answer to a [`Launch`](Request::Launch) or an [`Attach`](Request::Attach).
    Hello {
        /// The call it answers.
        id: u64,
        /// The domain process's pid.
        pid: u32,
        /// Its name.
        name: String,
        /// Its state now.
        status: StatusReport,
    },
    /// The answer to any other call: `error` says why it failed, `stats` carries what a
    /// [`Stats`](Request::Stats) asked for, `status` the domain's state once the call was
    /// done (so a caller never reads a state older than its own call's effect).
    Reply {
        /// The call it answers.
        id: u64,
        /// Why it failed, if it did.
        error: Option<String>,
        /// The counters, for a stats call on a running machine.
        stats: Option<MachineStats>,
        /// The domain's state after the call.
        status: Option<StatusReport>,
        /// What a save call wrote.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        saved: Option<crate::SaveReport>,
        /// What a migrate call did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        migrated: Option<Box<crate::migration::MigrationReport>>,
    },
    /// The domain's state changed.
    Status(StatusReport),
}

/// Encodes a JSON message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_default()
}

/// Decodes a JSON message; the error says what is wrong with it.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("a malformed message: {e}"))
}

/// A console message: `tag` then the bytes.
pub fn console(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(bytes.len() + 1);
    m.push(tag);
    m.extend_from_slice(bytes);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_notes_round_trip_and_strangers_are_refused() {
        let call = Call {
            id: 7,
            request: Request::ForbiddenCall {
                thread: ThreadKind::Io,
            },
        };
        let bytes = encode(&call);
        assert_eq!(bytes[0], b'{');
        assert_eq!(decode::<Call>(&bytes).unwrap(), call);
        let control = Call {
            id: 8,
            request: Request::DeviceControl {
                slot: 2,
                action: devices::virtio::Action::SetLink { up: false },
            },
        };
        assert_eq!(
            String::from_utf8(encode(&control)).unwrap(),
            r#"{"id":8,"op":"device_control","slot":2,"action":{"action":"set_link","up":false}}"#
        );
        assert_eq!(decode::<Call>(&encode(&control)).unwrap(), control);
        assert!(decode::<Call>(
            br#"{"id":1,"op":"device_control","slot":0,"action":{"action":"format"}}"#
        )
        .is_err());
        assert_eq!(
            String::from_utf8(encode(&Call {
                id: 1,
                request: Request::Pause
            }))
            .unwrap(),
            r#"{"id":1,"op":"pause"}"#
        );
        let hold = Call {
            id: 2,
            request: Request::HoldForMemory { hold: true },
        };
        assert_eq!(
            String::from_utf8(encode(&hold)).unwrap(),
            r#"{"id":2,"op":"hold_for_memory","hold":true}"#
        );
        assert_eq!(decode::<Call>(&encode(&hold)).unwrap(), hold);
        // A status without the hold (a process that never held its domain) is not held.
        let status: StatusReport =
            decode(br#"{"state":"paused","boots":1,"message":null,"uptime_ms":5,"version":3}"#)
                .unwrap();
        assert!(!status.held_for_memory);
        assert!(!String::from_utf8(encode(&status)).unwrap().contains("held"));
        let note = Note::Reply {
            id: 3,
            error: None,
            stats: Some(MachineStats::default()),
            status: None,
            saved: None,
            migrated: None,
        };
        assert_eq!(decode::<Note>(&encode(&note)).unwrap(), note);
        for bad in [
            &b"{}"[..],
            b"{\"id\":1,\"op\":\"format_disk\"}",
            b"\x01abc",
            b"",
        ] {
            assert!(decode::<Call>(bad).is_err(), "{bad:?}");
        }
        assert_eq!(console(CONSOLE_OUT, b"hi"), b"\x01hi");
    }
}
