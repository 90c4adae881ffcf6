//! Live migration: a running domain's memory and state sent over a TCP connection to a
//! daemon that builds it again and runs it on (`vessel migrate`, `vessel migrate-receive`;
//! `docs/design.md`, "Migrating a running domain").
//!
//! The sender copies the guest's memory while it runs (pre-copy), then, round after round,
//! the pages written since the round before: the guest's writes from KVM's dirty log, the
//! VMM's own (devices filling buffers) from [`hv::GuestMemory`]'s write log. Once what is left
//! would take no longer than the downtime target at the rate measured, or the rounds stop
//! shrinking it, the domain pauses, the last pages and the machine's state go, and the two
//! sides agree on who runs it:
//!
//! Each round ends with a sync record, which the receiver answers `synced` once it has placed
//! everything before it: a round's rate is the rate pages reach the receiver, and the pause
//! never waits on a backlog. Then:
//!
//! 1. the receiver, its machine built, answers `ready` (or `refused: WHY` at any point);
//! 2. the sender stops its copy for good and answers `go`;
//! 3. the receiver runs the domain and answers `running`.
//!
//! Until `go` is sent the sender's copy is the domain: any failure (the link drops, the
//! receiver dies or refuses, a timeout) resumes it there. After `go`, only the receiver's copy
//! may run: if `go` is lost on a link that dies at that instant, the receiver (which waits
//! for it a bounded time) discards its copy, and the domain is lost; the sender reports it.
//! Never two running copies.

use std::io::{self, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hv::{GuestMemory, Piece};
use serde::{Deserialize, Serialize};

use crate::domain::{MachineParts, MachineView};
use crate::snapshot::{GatheredWrite, SavedMachine, SnapshotWriter, MAX_RECORD_PAGES, PAGE};
use crate::spec::DomainSpec;

/// How a migration should go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateParams {
    /// The longest pause the guest should see, in milliseconds: pre-copy goes on until what
    /// is left can be sent in this long and a round no longer halves it (the hand-over adds
    /// its own few tens of milliseconds).
    pub downtime_ms: u64,
    /// The most bytes per second to send, or none for as fast as the link goes.
    #[serde(default)]
    pub bandwidth: Option<u64>,
}

/// The default downtime target (`--downtime`).
pub const DEFAULT_DOWNTIME_MS: u64 = 60;
/// The most pre-copy rounds after the first full copy.
const MAX_ROUNDS: u32 = 30;
/// Pages sent between two progress reports within a round (2 MiB).
const PROGRESS_PAGES: u64 = 512;
/// How long either side waits for the other to say or send anything.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a migration did, as the sender measured it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// Rounds of memory sent while the guest ran (the first, full copy among them).
    pub rounds: u32,
    /// Bytes sent in all.
    pub bytes: u64,
    /// Pages of memory sent (a page sent in two rounds counts twice).
    pub pages: u64,
    /// Pages sent in the last round, with the guest paused.
    pub last_pages: u64,
    /// From the start to the receiver's `running`, in milliseconds.
    pub total_ms: u64,
    /// From the pause to the receiver's `running`, in milliseconds: the guest's blackout as
    /// the sender sees it.
    pub downtime_ms: u64,
    /// Why the receiver's `running` did not come, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed: Option<String>,
}

/// Where a migration is, after each pre-copy round and every 2 MiB or so during one
/// (`vessel migrate`'s progress lines; the domain's info while it runs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Rounds sent so far (the next may be under way: `sent_bytes` grows).
    pub round: u32,
    /// Bytes sent so far.
    pub sent_bytes: u64,
    /// Pages the guest dirtied during the last round.
    pub dirty_pages: u64,
    /// How fast it dirtied them, in bytes per second.
    pub dirty_bytes_per_s: u64,
    /// How long sending them would pause it at the rate of the last round, in milliseconds.
    pub expected_downtime_ms: u64,
}

/// The receiver's answers.
const READY: &str = "ready";
const SYNCED: &str = "synced";
const REFUSED: &str = "refused: ";
const GO: &str = "go";
const GO_PAUSED: &str = "go paused";
const RUNNING: &str = "running";

/// Counts the bytes written through it and keeps their rate under a cap.
struct Metered<W: Write> {
    out: W,
    bytes: u64,
    started: Instant,
    cap: Option<u64>,
}

impl<W: Write> Metered<W> {
    /// Counts `n` bytes sent, and waits if they came faster than the cap.
    fn count(&mut self, n: usize) {
        self.bytes += n as u64;
        if let Some(cap) = self.cap.filter(|&c| c > 0) {
            let due = Duration::from_secs_f64(self.bytes as f64 / cap as f64);
            if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
}

impl<W: Write> Write for Metered<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.count(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl GatheredWrite for Metered<BufWriter<&TcpStream>> {
    fn write_gathered(&mut self, memory: &GuestMemory, pieces: &[Piece<'_>]) -> io::Result<()> {
        use std::os::fd::AsFd;
        self.out.flush()?;
        memory.write_gathered(self.out.get_ref().as_fd(), pieces)?;
        self.count(
            pieces
                .iter()
                .map(|p| match p {
                    Piece::Host(bytes) => bytes.len(),
                    Piece::Guest { len, .. } => *len,
                })
                .sum(),
        );
        Ok(())
    }
}

/// Reads one line (at most 4 KiB) from `conn`, a byte at a time, so that nothing after it is
/// taken.
pub fn read_line(mut conn: impl Read) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte)? {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ if byte[0] == b'\n' => break,
            _ if line.len() >= 4096 => return Err(io::Error::other("an answer too long")),
            _ => line.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// A connection read with one deadline for everything read through it: each read waits at
/// most until then, so a peer that sends a byte now and then cannot hold the reader longer
/// (the receiving daemon reads a migration's greeting and specification this way before any
/// domain process exists to bound it).
pub struct ReadBefore<'a> {
    conn: &'a TcpStream,
    until: Instant,
    within: Duration,
}

impl<'a> ReadBefore<'a> {
    /// Reads from `conn` for at most `within` from now.
    pub fn new(conn: &'a TcpStream, within: Duration) -> Self {
        ReadBefore {
            conn,
            until: Instant::now() + within,
            within,
        }
    }

    fn late(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the peer sent too little within {} ms",
                self.within.as_millis()
            ),
        )
    }
}

impl Read for ReadBefore<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.late());
        }
        self.conn.set_read_timeout(Some(left))?;
        match (&*self.conn).read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(self.late())
            }
            read => read,
        }
    }
}

/// Says `line` to the peer.
pub fn say(mut conn: &TcpStream, line: &str) -> io::Result<()> {
    conn.write_all(format!("{line}\n").as_bytes())
}

/// The sending side of one migration.
pub struct Sender<'a> {
    conn: &'a TcpStream,
    memory: &'a GuestMemory,
    parts: &'a MachineParts,
    ram: Vec<(u64, u64)>,
    writer: SnapshotWriter<Metered<BufWriter<&'a TcpStream>>>,
    params: MigrateParams,
    started: Instant,
    report: MigrationReport,
    /// The pages the last pre-copy round found dirty, for the last round.
    pending: hv::dirty::DirtyPages,
    /// The hand-over's steps and when each was done (logged at the end).
    steps: Vec<(&'static str, Instant)>,
}

impl<'a> Sender<'a> {
    /// Starts a migration of `machine` (the running domain `spec`) over `conn`: turns the
    /// dirty logs on and sends what the domain is.
    pub fn start(
        conn: &'a TcpStream,
        machine: &'a MachineView,
        spec: &DomainSpec,
        params: MigrateParams,
    ) -> Result<Sender<'a>, String> {
        conn.set_write_timeout(Some(PEER_TIMEOUT))
            .and_then(|()| conn.set_read_timeout(Some(PEER_TIMEOUT)))
            .and_then(|()| conn.set_nodelay(true))
            .map_err(|e| format!("setting up the connection: {e}"))?;
        let out = Metered {
            out: BufWriter::with_capacity(1 << 20, conn),
            bytes: 0,
            started: Instant::now(),
            cap: params.bandwidth,
        };
        let mut writer = SnapshotWriter::migration(out).map_err(|e| sending(conn, &e))?;
        writer
            .identity(spec, machine.parts.cpuid())
            .and_then(|()| writer.tsc(machine.parts.tsc_khz()))
            .map_err(|e| sending(conn, &e))?;
        if let Err(e) = machine.parts.log_dirty_pages(&machine.memory, true) {
            let _ = machine.parts.log_dirty_pages(&machine.memory, false);
            return Err(format!("turning the dirty log on: {e}"));
        }
        Ok(Sender {
            conn,
            memory: &machine.memory,
            parts: &machine.parts,
            ram: crate::layout::ram_regions(spec.memory),
            writer,
            params,
            started: Instant::now(),
            report: MigrationReport::default(),
            pending: hv::dirty::DirtyPages::default(),
            steps: Vec::new(),
        })
    }

    /// Sends `runs` of pages; returns how many were sent as data. `under_way` is told the
    /// bytes sent so far after about every [`PROGRESS_PAGES`] pages.
    fn send_pages(
        &mut self,
        runs: &[(u64, u64)],
        zeros_sent: bool,
        under_way: &dyn Fn(u64),
    ) -> Result<u64, String> {
        let mut pages = 0;
        let mut rest = runs;
        while !rest.is_empty() {
            // Whole runs up to PROGRESS_PAGES pages (at least one run).
            let mut take = 0;
            let mut batch_pages = 0;
            while take < rest.len() && (take == 0 || batch_pages + rest[take].1 <= PROGRESS_PAGES) {
                batch_pages += rest[take].1;
                take += 1;
            }
            let (batch, next) = rest.split_at(take);
            rest = next;
            let written = self
                .writer
                .pages_gathered(self.memory, batch, zeros_sent)
                .map_err(|e| sending(self.conn, &e))?;
            pages += written.pages;
            under_way(self.bytes());
        }
        self.writer.flush().map_err(|e| sending(self.conn, &e))?;
        self.report.pages += pages;
        Ok(pages)
    }

    /// Waits until the receiver has read and placed everything sent so far (a sync record,
    /// answered `synced`), so that a round's rate is the rate pages reach the receiver, and
    /// the pause never waits on a backlog of earlier rounds.
    fn sync(&mut self) -> Result<(), String> {
        self.writer.sync().map_err(|e| sending(self.conn, &e))?;
        self.expect_answer(SYNCED, "to take the pages")
    }

    /// Reads the receiver's next answer, which must be `want` (a refusal says why); `waiting`
    /// says for what, in an error.
    fn expect_answer(&self, want: &str, waiting: &str) -> Result<(), String> {
        match read_line(self.conn) {
            Ok(line) if line == want => Ok(()),
            Ok(line) if line.starts_with(REFUSED) => Err(format!(
                "the receiver refused the domain: {}",
                &line[REFUSED.len()..]
            )),
            Ok(line) => Err(format!("the receiver answered {line:?}, not {want:?}")),
            Err(e) => Err(format!("waiting for the receiver {waiting}: {e}")),
        }
    }

    fn bytes(&mut self) -> u64 {
        self.writer.get_mut().bytes
    }

    /// Copies the memory while the guest runs: all of it, then the pages dirtied meanwhile,
    /// round after round, until what is left fits the downtime target and a round no longer
    /// halves it (or it stops shrinking, or after [`MAX_ROUNDS`]).
    ///
    /// The target is the most pause allowed, not the pause aimed at: while each round at
    /// least halves what is left, one more (a fraction of the one before, in time and bytes)
    /// shortens the pause further. The pause also holds a hand-over of its own (the machine's
    /// state, the receiver building it, two answers: 36 to 44 ms in the box's benchmark runs),
    /// which no round shortens.
    ///
    /// `progress` is told where it is after each round, and the bytes sent so far after about
    /// every [`PROGRESS_PAGES`] pages during one.
    pub fn precopy(&mut self, progress: &dyn Fn(Progress)) -> Result<(), String> {
        let all = hv::dirty::DirtyPages::all(&self.ram).runs(MAX_RECORD_PAGES as u64);
        let mut round_started = Instant::now();
        let mut bytes_before = self.bytes();
        // The last round's figures, with the bytes sent so far.
        let last = std::cell::Cell::new(Progress::default());
        let under_way = |sent_bytes| {
            progress(Progress {
                sent_bytes,
                ..last.get()
            })
        };
        self.send_pages(&all, false, &under_way)?;
        self.sync()?;
        self.report.rounds = 1;
        let mut smallest = u64::MAX;
        let mut rounds_without_progress = 0;
        // What the round before left (the first round: all of the RAM).
        let mut before: u64 = all.iter().map(|&(_, pages)| pages).sum();
        loop {
            let round_time = round_started.elapsed();
            let rate = (self.bytes() - bytes_before) as f64 / round_time.as_secs_f64().max(1e-3);
            let dirty = self
                .parts
                .take_dirty_pages(self.memory)
                .map_err(|e| format!("reading the dirty log: {e}"))?;
            let left = dirty.count();
            let expected_ms = (left * PAGE as u64) as f64 / rate.max(1.0) * 1000.0;
            let now = Progress {
                round: self.report.rounds,
                sent_bytes: self.bytes(),
                dirty_pages: left,
                dirty_bytes_per_s: ((left * PAGE as u64) as f64
                    / round_time.as_secs_f64().max(1e-3)) as u64,
                expected_downtime_ms: expected_ms as u64,
            };
            tracing::info!(
                round = now.round,
                sent_mib = now.sent_bytes >> 20,
                dirty_pages = now.dirty_pages,
                dirty_mib_per_s = now.dirty_bytes_per_s >> 20,
                expected_downtime_ms = now.expected_downtime_ms,
                "migration round"
            );
            progress(now);
            last.set(now);
            if left < smallest {
                smallest = left;
                rounds_without_progress = 0;
            } else {
                rounds_without_progress += 1;
            }
            let halved = left * 2 <= before;
            before = left;
            let done = (expected_ms <= self.params.downtime_ms as f64 && !halved)
                || left == 0
                || self.report.rounds > MAX_ROUNDS
                || rounds_without_progress >= 3;
            // The pages of this log go either way: in one more round while the guest runs,
            // or in the last one (`finish`), with the rest, if this was the last.
            if done {
                self.pending = dirty;
                return Ok(());
            }
            let runs = dirty.runs(MAX_RECORD_PAGES as u64);
            round_started = Instant::now();
            bytes_before = self.bytes();
            self.send_pages(&runs, true, &under_way)?;
            self.sync()?;
            self.report.rounds += 1;
        }
    }

    /// Notes that the hand-over's step `what` is done now.
    pub fn mark(&mut self, what: &'static str) {
        self.steps.push((what, Instant::now()));
    }

    /// With the domain paused: sends the pages dirtied since the last round and the
    /// machine's state `saved`, then waits for the receiver to build the machine and say it
    /// is ready.
    pub fn finish(&mut self, saved: &SavedMachine) -> Result<(), String> {
        let mut dirty = std::mem::take(&mut self.pending);
        dirty.merge(
            self.parts
                .take_dirty_pages(self.memory)
                .map_err(|e| format!("reading the dirty log: {e}"))?,
        );
        self.report.last_pages =
            self.send_pages(&dirty.runs(MAX_RECORD_PAGES as u64), true, &|_| {})?;
        self.mark("last pages sent");
        self.writer
            .state(saved)
            .and_then(|()| self.writer.end())
            .map_err(|e| sending(self.conn, &e))?;
        self.mark("state sent");
        let answer = self.expect_answer(READY, "to be ready");
        self.mark("receiver ready");
        answer
    }

    /// Tells the receiver to run the domain (or to keep it paused, if it was paused here):
    /// from here on the sender's copy must never run again.
    pub fn go(&mut self, paused: bool) -> Result<(), String> {
        let line = if paused { GO_PAUSED } else { GO };
        say(self.conn, line).map_err(|e| format!("telling the receiver to run the domain: {e}"))
    }

    /// Waits for the receiver to say the domain runs; the report, with the downtime counted
    /// from `paused_at` (and `unconfirmed` saying why, if the receiver did not confirm: the
    /// domain may run there anyway).
    pub fn await_running(&mut self, paused_at: Instant) -> MigrationReport {
        let answer = read_line(self.conn);
        self.mark("receiver running");
        self.report.downtime_ms = paused_at.elapsed().as_millis() as u64;
        let mut last = paused_at;
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|&(what, at)| {
                let step = format!("{what} +{} ms", at.duration_since(last).as_millis());
                last = at;
                step
            })
            .collect();
        tracing::info!(steps = steps.join(", "), "migration hand-over");
        self.report.total_ms = self.started.elapsed().as_millis() as u64;
        self.report.bytes = self.bytes();
        self.report.unconfirmed = match answer {
            Ok(line) if line == RUNNING => None,
            Ok(line) => Some(format!("the receiver answered {line:?}, not {RUNNING:?}")),
            Err(e) => Some(format!(
                "the receiver did not confirm that the domain runs: {e}"
            )),
        };
        self.report.clone()
    }

    /// Turns the dirty logs off (the domain runs on here after a failure).
    pub fn stop_logging(&self) {
        let _ = self.parts.log_dirty_pages(self.memory, false);
    }
}

/// Why sending failed: the receiver's own reason if it gave one before it closed, else the
/// error.
fn sending(conn: &TcpStream, e: &dyn std::fmt::Display) -> String {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    match read_line(conn) {
        Ok(line) if line.starts_with(REFUSED) => {
            format!(
                "the receiver refused the domain: {}",
                &line[REFUSED.len()..]
            )
        }
        _ => format!("sending to the receiver: {e}"),
    }
}

/// The receiving side: builds the machine the migration stream on `conn` holds (its header
/// and specification, `cfg`, read already by the daemon that took the connection), says it
/// is ready, and waits for the sender's `go`; then answers `running` and returns the machine
/// to run, and whether it was paused on the sender (`go paused`: it stays paused). Any
/// failure is told to the sender (`refused: WHY`) before it is returned.
pub(crate) fn receive(
    hv: &hv::Hypervisor,
    cfg: &DomainSpec,
    res: &crate::resources::Resources,
    sink: &crate::console::ConsoleSink,
    conn: std::fs::File,
) -> Result<(crate::domain::Machine, bool), crate::DomainError> {
    use crate::DomainError;
    let conn = TcpStream::from(std::os::fd::OwnedFd::from(conn));
    let refuse = |e: DomainError| {
        let _ = say(&conn, &format!("{REFUSED}{e}"));
        e
    };
    conn.set_read_timeout(Some(PEER_TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(PEER_TIMEOUT)))
        .map_err(DomainError::host("setting up the migration's connection"))
        .map_err(refuse)?;
    let stream = |e: crate::snapshot::SnapshotError| DomainError::Snapshot(e.to_string());
    let mut reader = crate::snapshot::SnapshotReader::migration_after_spec(
        std::io::BufReader::with_capacity(1 << 20, &conn),
    );
    let cpuid = reader.cpuid().map_err(stream).map_err(refuse)?;
    // Refused before any memory comes.
    let missing = crate::cpuid::missing_features(
        &cpuid,
        &hv.supported_cpuid().map_err(|e| refuse(e.into()))?,
    );
    if !missing.is_empty() {
        return Err(refuse(DomainError::Snapshot(format!(
            "the guest was given CPU features this host's KVM does not offer ({})",
            missing.join("; ")
        ))));
    }
    // So is a TSC frequency this host's KVM cannot give a vCPU (tried on a scratch one).
    if let Some(khz) = reader.tsc_khz().map_err(stream).map_err(refuse)? {
        check_tsc(hv, khz).map_err(refuse)?;
    }
    let mut ended = Instant::now();
    let machine = crate::domain::Machine::restore(hv, cfg, res, sink, &mut |memory, ram| {
        reader.migrated_memory(memory, ram, &mut || say(&conn, SYNCED))?;
        let saved = reader.state(cfg.clone(), cpuid.clone())?;
        reader.end()?;
        ended = Instant::now();
        Ok(saved)
    })
    .map_err(refuse)?;
    let built = Instant::now();
    // Nothing follows the end record until this side answers, so the reader holds nothing
    // more: the answers are read from the connection itself.
    drop(reader);
    say(&conn, READY).map_err(DomainError::host("telling the sender it is ready"))?;
    let paused = match read_line(&conn) {
        Ok(line) if line == GO => false,
        Ok(line) if line == GO_PAUSED => true,
        Ok(line) => {
            return Err(DomainError::Snapshot(format!(
                "the sender answered {line:?}, not {GO:?}"
            )))
        }
        Err(e) => {
            return Err(DomainError::Snapshot(format!(
                "the sender did not say to run the domain: {e}"
            )))
        }
    };
    // The domain runs from here whatever the sender hears.
    let _ = say(&conn, RUNNING);
    tracing::info!(
        built_ms = built.duration_since(ended).as_millis() as u64,
        go_ms = built.elapsed().as_millis() as u64,
        "migration received: the machine built after the stream's end, then the sender's go"
    );
    Ok((machine, paused))
}

/// Whether this host's KVM can run a vCPU whose TSC runs at `khz`: a scratch VM's vCPU is
/// set to it.
pub fn check_tsc(hv: &hv::Hypervisor, khz: u32) -> Result<(), crate::DomainError> {
    let vm = hv.create_vm()?;
    vm.create_vcpu(0)?.run_tsc_at(khz)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A TSC frequency KVM cannot give is refused, with both frequencies; the host's own is
    /// not.
    #[test]
    fn a_tsc_frequency_kvm_cannot_give_is_refused_before_any_memory() {
        let hv = hv::Hypervisor::open().expect("/dev/kvm (this test needs KVM)");
        let here = hv
            .create_vm()
            .and_then(|vm| vm.create_vcpu(0))
            .unwrap()
            .tsc_khz()
            .expect("KVM tells the TSC frequency");
        check_tsc(&hv, here).unwrap();
        // Half the speed: a KVM without TSC scaling (this machine's) cannot, and says so; one
        // with it runs the vCPU at exactly that.
        let slower = here / 2;
        match check_tsc(&hv, slower) {
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains(&format!("ran at {slower} kHz, this host's at {here} kHz")),
                    "{e}"
                );
            }
            Ok(()) => {
                let vcpu = hv.create_vm().and_then(|vm| vm.create_vcpu(0)).unwrap();
                vcpu.run_tsc_at(slower).unwrap();
                assert_eq!(vcpu.tsc_khz(), Some(slower));
            }
        }
        // Far beyond what any KVM runs: refused, whether KVM says no at once or takes it and
        // then does not tell it back.
        assert!(check_tsc(&hv, u32::MAX).is_err());
    }

    /// A connected pair on the loopback.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (a, listener.accept().unwrap().0)
    }

    #[test]
    fn a_deadline_bounds_a_peer_that_sends_a_byte_now_and_then() {
        let (mut a, b) = pair();
        a.write_all(b"hello vessel\n").unwrap();
        assert_eq!(
            read_line(ReadBefore::new(&b, Duration::from_secs(5))).unwrap(),
            "hello vessel"
        );
        // A byte every 50 ms, never a whole line: each read would be answered in time, the
        // line never is.
        let dribbler = std::thread::spawn(move || {
            while a.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let e = read_line(ReadBefore::new(&b, Duration::from_millis(400))).unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("within 400 ms"), "{e}");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // A silent peer meets the same deadline.
        drop(b);
        dribbler.join().unwrap();
        let (_quiet, c) = pair();
        let e = read_line(ReadBefore::new(&c, Duration::from_millis(200))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }
}
