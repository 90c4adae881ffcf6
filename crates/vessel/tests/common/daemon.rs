//! A `vessel daemon` for tests, on a private state directory and socket, driven over the API
//! exactly as a client would, and the helpers its tests share (the `mini` guest's definitions,
//! waiting for a condition).
// Each test binary uses its own subset of these.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{mini_kernel, VESSEL};

/// Held shared by every test daemon and exclusively by a test that measures response times, so
/// that no other test of this binary runs guests (which spin at CPL3 and take whole CPUs) while
/// it measures. A test holds at most one daemon at a time.
pub static TIMING: RwLock<()> = RwLock::new(());

/// A daemon on a private state directory and socket; killed on drop.
pub struct TestDaemon {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// Released after the daemon is killed.
    _shared: Option<RwLockReadGuard<'static, ()>>,
    /// Whether dropping this kills the domain processes of its state directory (not when
    /// another daemon takes them over).
    pub reap_domains: bool,
}

impl TestDaemon {
    pub fn start(dir: &Path) -> TestDaemon {
        TestDaemon::start_with(dir, &[])
    }

    /// A daemon given the extra arguments `args`.
    pub fn start_with(dir: &Path, args: &[&str]) -> TestDaemon {
        let shared = TIMING.read().unwrap_or_else(|e| e.into_inner());
        TestDaemon::spawn(dir, args, Some(shared))
    }

    /// A daemon for a test that holds [`TIMING`] exclusively.
    pub fn start_alone(dir: &Path, _alone: &RwLockWriteGuard<'static, ()>) -> TestDaemon {
        TestDaemon::spawn(dir, &[], None)
    }

    pub fn spawn(
        dir: &Path,
        args: &[&str],
        shared: Option<RwLockReadGuard<'static, ()>>,
    ) -> TestDaemon {
        let socket = dir.join("api.sock");
        let child = Command::new(VESSEL)
            .arg("daemon")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&socket)
            // Tests run daemons side by side: each keeps its domains' groups apart.
            .arg("--cgroup-parent")
            .arg(cgroup_parent(dir))
            .args(args)
            // As under a service manager: relative paths must not depend on where it runs.
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("daemon.log")).unwrap(),
            ))
            .spawn()
            .expect("spawning vessel daemon");
        let d = TestDaemon {
            child,
            dir: dir.to_path_buf(),
            socket,
            _shared: shared,
            reap_domains: true,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&d.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the daemon did not serve its socket within 10 s; log:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Sends `signal` (a name such as `TERM`) to the daemon.
    pub fn signal(&self, signal: &str) {
        super::send_signal(self.child.id(), signal);
    }

    /// Waits at most `timeout` for the daemon to exit; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon (SIGKILL) and leaves its domain processes running, for the next daemon
    /// on the same state directory to take over.
    pub fn kill_leaving_domains(mut self) {
        self.reap_domains = false;
        drop(self);
    }

    /// The pid of domain `name`'s process, while it runs.
    pub fn pid_of(&self, name: &str) -> u32 {
        let info = self.ok("GET", &format!("/v1/domains/{name}"), None);
        info["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("domain {name} has no process: {info}")) as u32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Sends raw bytes and returns the status and body of the answer.
    pub fn raw(&self, request: &[u8]) -> (u16, String) {
        self.raw_within(request, Duration::from_secs(30))
    }

    /// [`TestDaemon::raw`], failing the test if the whole answer has not come within `limit`.
    pub fn raw_within(&self, request: &[u8], limit: Duration) -> (u16, String) {
        let started = Instant::now();
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(limit)).unwrap();
        // A daemon with no slot free answers 503 and closes at once, maybe before the
        // request is written: the answer is read all the same.
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let read = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        // A reset after the whole answer (the daemon closed with our bytes unread) is fine.
        let timed_out = read.as_ref().is_err_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        });
        assert!(
            !timed_out && (read.is_ok() || text.contains("\r\n\r\n")),
            "no whole answer within {limit:?} (after {:?}) to {:?}: {read:?}, got {text:?}",
            started.elapsed(),
            String::from_utf8_lossy(&request[..request.len().min(200)])
        );
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }

    /// One API call with a JSON (or raw) body.
    /// Runs `vessel ARGS` against this daemon (stdin empty): its exit code, stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(VESSEL)
            .args(args)
            .env("VESSEL_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `vessel ARGS` against this daemon, which must succeed: its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cli(args);
        assert_eq!(code, Some(0), "vessel {args:?}: {out}{err}");
        out
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.call_within(method, path, body, Duration::from_secs(30))
    }

    /// [`TestDaemon::call`], failing the test if the answer has not come within `limit`.
    pub fn call_within(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        limit: Duration,
    ) -> (u16, Value) {
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, body) = self.raw_within(req.as_bytes(), limit);
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, value)
    }

    pub fn ok(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}\nlog:\n{}",
            self.log()
        );
        v
    }

    pub fn state(&self, name: &str) -> String {
        self.ok("GET", &format!("/v1/domains/{name}"), None)["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn console(&self, name: &str) -> String {
        let (status, body) = self.raw(
            format!("GET /v1/domains/{name}/console HTTP/1.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(status, 200);
        body
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// The control group a test daemon on `dir` puts its domains' groups under.
pub fn cgroup_parent(dir: &Path) -> String {
    let tag = dir.file_name().and_then(|n| n.to_str()).unwrap_or("t");
    let mut name = format!("vt-{tag}");
    name.truncate(32);
    name
}

/// Removes a test daemon's parent groups (empty once its domains have gone).
pub fn remove_cgroup_parent(dir: &Path) {
    let parent = cgroup_parent(dir);
    for hierarchy in ["", "cpu", "cpuacct", "memory"] {
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(hierarchy).join(&parent));
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // A daemon that is done with gets SIGQUIT first, so that it puts the host's KSM
        // settings back as it found them (page sharing); then it is killed in any case.
        if self.reap_domains && matches!(self.child.try_wait(), Ok(None)) {
            let quit = Command::new("kill")
                .args(["-s", "QUIT", &self.child.id().to_string()])
                .status();
            if quit.is_ok_and(|s| s.success()) {
                let _ = self.wait_exit(Duration::from_secs(3));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Domains outlive a killed daemon (by design): the test's end is theirs too.
        if self.reap_domains {
            super::kill_domain_processes_under(&self.dir);
            // The killed processes' groups, then the parent.
            std::thread::sleep(Duration::from_millis(100));
            for hierarchy in ["", "cpu", "cpuacct", "memory"] {
                let parent = Path::new("/sys/fs/cgroup")
                    .join(hierarchy)
                    .join(cgroup_parent(&self.dir));
                if let Ok(entries) = std::fs::read_dir(&parent) {
                    for e in entries.flatten() {
                        if e.path().is_dir() {
                            let _ = std::fs::remove_dir(e.path());
                        }
                    }
                }
            }
            remove_cgroup_parent(&self.dir);
        }
    }
}

pub fn tmpdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("daemon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn mini(name: &str, scenario: &str, memory: &str) -> String {
    json!({
        "name": name,
        "kernel": mini_kernel(),
        "cmdline": scenario,
        "memory": memory,
    })
    .to_string()
}

/// The number of the last complete "mini: tick N" line in a console log.
pub fn last_tick(console: &str) -> u64 {
    let complete = console.rfind('\n').map_or("", |end| &console[..end]);
    complete
        .lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix("mini: tick "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
