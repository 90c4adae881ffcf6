//! Shared helpers for the direct-KVM tests: building the `mini` test guest, running `vessel`
//! (or a wrapper around it) with a hard timeout, and small host checks.
// Each test binary uses its own subset of these.
#![allow(dead_code)]

pub mod daemon;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The `vessel` binary under test.
pub const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");

/// Fails the test unless this host has `/dev/kvm`. The direct tests never skip: on a host
/// without KVM they fail, saying why.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm does not exist on this host: the direct KVM tests need it \
         (they fail rather than skip when it is missing)"
    );
}

/// Fails the test unless it runs as root (needed to unshare a mount namespace or switch user).
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "this test must run as root (it unshares a mount namespace or switches to an unprivileged user)"
    );
}

/// The `mini` guest (tests/guest/mini.S), assembled and linked once per test process into the
/// target directory. Panics with the toolchain's output if that fails.
pub fn mini_kernel() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(build_mini)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_mini() -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mini-guest");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    let out = out_dir.join("mini.elf");
    // Link under a private name, then rename: concurrent test runs never see a partial file.
    let partial = out_dir.join(format!("mini.elf.{}.partial", std::process::id()));
    let mut linker_script = std::ffi::OsString::from("-Wl,-T,");
    linker_script.push(src.join("mini.ld"));
    let result = Command::new("gcc")
        .args(["-nostdlib", "-static", "-no-pie"])
        .arg(linker_script)
        .args(["-Wl,--build-id=none", "-Wl,-z,max-page-size=0x1000", "-o"])
        .arg(&partial)
        .arg(src.join("mini.S"))
        .output()
        .map_err(|e| format!("cannot run gcc to build the mini test guest: {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "building the mini test guest failed ({}):\n{}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    std::fs::rename(&partial, &out).map_err(|e| format!("renaming {}: {e}", partial.display()))?;
    Ok(out)
}

/// What a finished (or killed) child process left behind.
pub struct Finished {
    /// How it was run, for messages.
    pub what: String,
    /// Its exit status; `None` if it was killed.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to standard output (the guest console, for `vessel run`).
    pub stdout: String,
    /// Everything it wrote to standard error.
    pub stderr: String,
    /// Wall-clock time from spawn to exit or kill.
    pub elapsed: Duration,
    /// Whether it was killed because the timeout ran out.
    pub timed_out: bool,
}

impl Finished {
    /// The exit code, if the process exited on its own.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// A description for assertion messages.
    pub fn report(&self) -> String {
        format!(
            "{}\n  status: {}{}\n  elapsed: {:.3} s\n  stdout:\n{}\n  stderr:\n{}",
            self.what,
            self.status.map_or("killed".to_string(), |s| s.to_string()),
            if self.timed_out { " (timed out)" } else { "" },
            self.elapsed.as_secs_f64(),
            indent(&self.stdout),
            indent(&self.stderr)
        )
    }

    /// Asserts the process exited on its own with `code`.
    pub fn assert_code(&self, code: i32) {
        assert!(!self.timed_out, "timed out (a hang):\n{}", self.report());
        assert_eq!(
            self.code(),
            Some(code),
            "wrong exit status:\n{}",
            self.report()
        );
    }

    /// Asserts exit status 1 and exactly one line on standard error, a `vessel: error:` line
    /// containing every one of `needles`.
    pub fn assert_one_line_error(&self, needles: &[&str]) {
        self.assert_code(1);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "want one line on stderr:\n{}",
            self.report()
        );
        assert!(lines[0].starts_with("vessel: error: "), "{}", self.report());
        for needle in needles {
            assert!(
                lines[0].contains(needle),
                "stderr lacks {needle:?}:\n{}",
                self.report()
            );
        }
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    | {l}\n")).collect()
}

/// Collects a pipe in a thread, so the child never blocks on a full pipe.
fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, handle)
}

fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// Runs `cmd` (stdin from /dev/null) until it exits, `timeout` runs out, or `stop_when` holds
/// for its standard output so far; in the last two cases the child is killed. Never blocks
/// longer than `timeout` plus the time it takes to reap a killed child.
pub fn run_command(
    cmd: Command,
    timeout: Duration,
    stop_when: Option<&dyn Fn(&str) -> bool>,
) -> Finished {
    run_command_reacting(cmd, timeout, &mut |out, _| {
        stop_when.is_some_and(|f| f(out))
    })
}

/// Like [`run_command`], but `react` sees the standard output so far and the child's pid every
/// few milliseconds (it may signal the child); the child is killed when it returns `true`.
pub fn run_command_reacting(
    mut cmd: Command,
    timeout: Duration,
    react: &mut dyn FnMut(&str, u32) -> bool,
) -> Finished {
    let what = format!("{cmd:?}");
    let start = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let (out, out_thread) = collect(child.stdout.take().unwrap());
    let (err, err_thread) = collect(child.stderr.take().unwrap());
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break Some(status);
        }
        let stop = react(&text(&out), child.id());
        timed_out = !stop && start.elapsed() >= timeout;
        if stop || timed_out {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let _ = out_thread.join();
    let _ = err_thread.join();
    Finished {
        what,
        status,
        stdout: text(&out),
        stderr: text(&err),
        elapsed,
        timed_out,
    }
}

/// `vessel run` with `args`, killed after `timeout`.
pub fn vessel_run(args: &[&str], timeout: Duration) -> Finished {
    let mut cmd = Command::new(VESSEL);
    cmd.arg("run").args(args);
    run_command(cmd, timeout, None)
}

/// The value of `key` in `/proc/PID/status`.
pub fn proc_status(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim_start_matches(':').trim().to_string())
}

/// Whether process `pid` is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    proc_status(pid, "State").is_some_and(|s| !s.starts_with('Z'))
}

/// The children of process `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Sends `signal` (a name such as `TERM`) to process `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -s {signal} {pid} failed");
}

/// A directory under the system temporary directory, world-readable, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory.
    pub fn new(tag: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("vessel-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("setting a temporary directory's mode");
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills every domain process whose channel socket lies under `dir` (a test daemon's state
/// directory): domain processes outlive their daemon by design, so a test that ends (or kills
/// its daemon) ends them too. Returns how many there were.
pub fn kill_domain_processes_under(dir: &Path) -> usize {
    let mut killed = 0;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let needle = format!("VESSEL_DOMAIN_CHANNEL={}", dir.display());
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let ours = environ
            .split(|&b| b == 0)
            .any(|v| v.starts_with(needle.as_bytes()));
        if ours {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            killed += 1;
        }
    }
    killed
}
