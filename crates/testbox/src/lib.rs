//! Test support for Vessel: the guest assets and the *host box*.
//!
//! # Why a box
//!
//! The development and CI machines expose a `/dev/kvm` backed by `kvm_pvm`, which runs ring-0
//! guest code through a slow, incomplete instruction emulator: a stock Linux kernel cannot boot
//! on it (see `docs/environment.md`, section 2, in the shared docs). To test real Linux guests,
//! the host box builds a hardware-style KVM one level down:
//!
//! ```text
//!   host (kvm_pvm)                      this process
//!    └─ qemu-system-x86_64 -accel tcg   -cpu max: an emulated AMD CPU with SVM + NPT
//!        └─ L1: Debian cloud kernel     loads irqbypass, kvm, kvm-amd => a real /dev/kvm
//!            └─ steps (sh scripts)      e.g. run Vessel or QEMU on /dev/kvm
//!                └─ L2: Linux guest     Debian cloud kernel + the Vessel guest initramfs
//! ```
//!
//! L1 boots from an initramfs that this crate packs for every run: busybox, the KVM modules, the
//! guest [`Assets`] under `/assets`, whatever binaries and files the test adds (executables come
//! with the shared libraries `ldd` lists, at the same paths), optionally QEMU itself as the
//! reference VMM, and an `/init` that runs the test's *steps* in order and reports each one on
//! the console between delimiter lines. The console is QEMU's stdout, which [`HostBox::run`]
//! captures and parses into a [`BoxRun`].
//!
//! # Guest assets
//!
//! `scripts/guest-assets.sh` builds, from Debian packages, the kernel (`bzImage` and the
//! PVH-bootable ELF `vmlinux`), its modules, a static busybox and the L2 guest initramfs. The
//! same kernel serves as L1 and L2. The guest `/init` prints `VESSEL-GUEST-INIT` once its virtio
//! modules are loaded; with `vcmd="..."` on the kernel command line it runs that command and
//! prints `VESSEL-CMD-EXIT rc=N`; then it powers off. [`Assets::locate`] finds (or builds) them.
//!
//! # Example
//!
//! ```no_run
//! use testbox::{Assets, HostBox};
//!
//! let assets = Assets::locate()?;
//! let run = HostBox::new(&assets)
//!     .with_qemu()
//!     .step("kvm", "test -c /dev/kvm")
//!     .step(
//!         "l2",
//!         "qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 256 -nographic -no-reboot \
//!          -kernel /assets/vmlinux -initrd /assets/initramfs.cpio.gz \
//!          -append 'console=ttyS0 panic=-1 vcmd=\"nproc\"' </dev/null",
//!     )
//!     .run()?;
//! assert_eq!(run.step("kvm").exit_code, 0);
//! assert!(run.step("l2").output.contains("VESSEL-GUEST-INIT"));
//! # Ok::<(), testbox::BoxError>(())
//! ```
//!
//! # Timing
//!
//! Everything in the box runs under TCG: an L1 boot takes a few seconds, an L2 boot about ten.
//! Compare only timings measured side by side in one box run ([`StepResult::seconds`] is L1
//! time, with 10 ms resolution).
//!
//! # Environment variables
//!
//! - `VESSEL_ASSETS`: the guest assets directory (default `<workspace>/.cache/assets`).
//! - `VESSEL_BOX_VERBOSE=1`: echo the box console to stderr while it runs.
//! - `VESSEL_BOX_KEEP=1`: keep the box's temporary directory (its path is printed on stderr).
//! - `VESSEL_BOX_CPU=MODEL`: the emulated CPU (default `max`; it needs SVM and NPT, e.g.
//!   `EPYC-v4,+svm,+npt`), and `VESSEL_BOX_TCG_THREAD=single`: one host thread for all of L1's
//!   CPUs (default: one each). For measuring which set-up L1 dies least under.
//! - `VESSEL_BOX_TSC=1`: L1 keeps time with the TSC (`tsc=reliable`) instead of the
//!   `refined-jiffies` it falls back to under TCG, whose clocks move in 4 ms steps: for
//!   measuring latencies finer than that. Not the default: with it, on 2026-12-07, an L2 guest
//!   triple-faulted during a network transfer in two `offloads_linux` boxes and one
//!   `virtio_net` box (and a third `offloads_linux` box lost a domain mid-transfer without a
//!   record of why); without it, the next full suite saw one (`daemon_linux`). Too few boxes
//!   to say whether it makes L2 guests crash more; not measured yet.
//!
//! A run that is retried (see [`HostBox::run`]) is also recorded, with its console's tail, in
//! `<workspace>/target/testbox-retries.log`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Marker the L1 `/init` prints once every step has run.
pub const BOX_DONE: &str = "@@BOX-DONE";
/// Prefix of the line the L1 `/init` prints before a step's output: `@@STEP-BEGIN <name>`.
pub const STEP_BEGIN: &str = "@@STEP-BEGIN ";
/// Prefix of the line the L1 `/init` prints after a step: `@@STEP-END <name> rc=<N> ms=<M>`.
pub const STEP_END: &str = "@@STEP-END ";
/// Prefix of the lines the L1 `/init` prints when the box itself is broken (e.g. no `/dev/kvm`).
pub const BOX_ERROR: &str = "BOX-ERROR:";
/// Marker the L2 guest `/init` prints once its modules are loaded.
pub const GUEST_INIT_MARKER: &str = "VESSEL-GUEST-INIT";
/// Prefix of the line the L2 guest `/init` prints after `vcmd`/`vscript`: `VESSEL-CMD-EXIT rc=N`.
pub const GUEST_CMD_EXIT: &str = "VESSEL-CMD-EXIT rc=";

/// The L1 kernel command line. A panic resets L1 at once by a triple fault (`reboot=t`: the
/// other reset methods can hang on `-M microvm`, and one L1 panic under TCG sat silent until the
/// box's timeout), so QEMU, run with `-no-reboot`, exits and the run is retried as a reset.
/// L1's kernel finds TCG's TSCs unsynchronized at boot, marks the TSC unstable and keeps time
/// with `refined-jiffies`: every clock in L1 (the uptime and timestamps the box scripts measure
/// with, ping's round trips) moves in 4 ms steps. [`L1_TSC_ARG`] (`VESSEL_BOX_TSC=1`) makes it
/// keep time with the TSC (checked in a box on 2026-12-07: `current_clocksource` is `tsc`).
const L1_CMDLINE: &str = "console=ttyS0 panic=-1 reboot=t quiet";
/// What `VESSEL_BOX_TSC=1` adds to [`L1_CMDLINE`].
const L1_TSC_ARG: &str = "tsc=reliable";
/// The QEMU used to run L1 (and, with [`HostBox::with_qemu`], packed into the box).
const QEMU: &str = "qemu-system-x86_64";
/// QEMU data files packed by [`HostBox::with_qemu`]: `(file, required)`. `-M microvm` with a
/// PVH `vmlinux` needs `bios-microvm.bin` (qboot) and `pvh.bin`; the others cover a bzImage
/// (`linuxboot*.bin`) and multiboot kernels, and are small.
const QEMU_FIRMWARE: &[(&str, bool)] = &[
    ("bios-microvm.bin", true),
    ("pvh.bin", true),
    ("qboot.rom", false),
    ("linuxboot.bin", false),
    ("linuxboot_dma.bin", false),
    ("multiboot.bin", false),
    ("multiboot_dma.bin", false),
    ("kvmvapic.bin", false),
];
/// QEMU's directory of loadable modules (TCG is one of them in Debian's build).
const QEMU_MODULE_DIR: &str = "/usr/lib/x86_64-linux-gnu/qemu";
/// Modules L1 must load: `kvm-amd` pulls in `kvm` and `irqbypass` through modules.dep.
const L1_REQUIRED_MODULES: &[&str] = &["kvm-amd"];
/// Boots of one box run before an L1 that wedged, locked up or reset counts as a failure.
const ATTEMPTS: u32 = 3;

/// Modules L1 loads if the kernel has them, for network tests (`bridge` pulls in `stp`, `llc`).
const L1_OPTIONAL_MODULES: &[&str] = &["tun", "bridge"];

/// Everything that can go wrong preparing or running a box.
#[derive(Debug)]
pub enum BoxError {
    /// Something the box needs is missing on this machine: a tool, the guest assets, a file
    /// given to the builder. The message says how to fix it.
    Missing(String),
    /// An I/O error while preparing the box; `context` says what was being done.
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The box ran but did not finish (`@@BOX-DONE` never appeared): a timeout, QEMU exiting
    /// early, `kvm-amd` not loading...
    Run {
        /// Why the run is considered failed.
        reason: String,
        /// The box console (QEMU's stdout, `\r\n` normalised) captured so far.
        console: String,
    },
}

impl BoxError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        BoxError::Io {
            context: context.into(),
            source,
        }
    }

    /// The console captured so far, for [`BoxError::Run`].
    pub fn console(&self) -> Option<&str> {
        match self {
            BoxError::Run { console, .. } => Some(console),
            _ => None,
        }
    }
}

impl fmt::Display for BoxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoxError::Missing(msg) => write!(f, "{msg}"),
            BoxError::Io { context, source } => write!(f, "{context}: {source}"),
            BoxError::Run { reason, console } => {
                writeln!(f, "host box failed: {reason}")?;
                writeln!(
                    f,
                    "----- box console (last {CONSOLE_TAIL_LINES} lines at most) -----"
                )?;
                writeln!(f, "{}", tail_lines(console, CONSOLE_TAIL_LINES))?;
                write!(f, "----- end of box console -----")
            }
        }
    }
}

impl std::error::Error for BoxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BoxError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// How many console lines error messages and panics show.
const CONSOLE_TAIL_LINES: usize = 200;

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= n {
        return text.trim_end().to_string();
    }
    let mut out = format!("[... {} earlier lines omitted ...]\n", lines.len() - n);
    out.push_str(&lines[lines.len() - n..].join("\n"));
    out
}

/// Appends a retried run's reason and the last 60 lines of its console to
/// `<workspace>/target/testbox-retries.log`: a test that passes on the retry shows none of its
/// stderr, and a hang that a retry hides is still worth finding. Tests that try something
/// again inside a box (a guest that TCG crashed) record it here too.
pub fn record_retry(reason: &str, console: &str) {
    let lines: Vec<&str> = console.lines().collect();
    let tail = lines[lines.len().saturating_sub(60)..].join("\n");
    let path = workspace_root().join("target").join("testbox-retries.log");
    if let Ok(mut log) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(log, "==== retried: {reason}\n{tail}");
    }
}

/// The root of the Cargo workspace (the directory holding `scripts/` and `.cache/`), derived
/// from this crate's `CARGO_MANIFEST_DIR` at compile time.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Finds an executable in `$PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn require_tool(name: &str) -> Result<PathBuf, BoxError> {
    which(name).ok_or_else(|| {
        BoxError::Missing(format!(
            "{name} not found in PATH: run scripts/setup.sh (as root)"
        ))
    })
}

/// The host's TSC frequency in kHz, measured against `CLOCK_MONOTONIC` over 50 ms (once per
/// process); `None` without an invariant TSC.
///
/// Under TCG the guest's TSC runs at the host's TSC rate, but the L1 kernel has to calibrate it
/// against the PIT (microvm has no HPET or ACPI PM timer), and that calibration, timed by an
/// emulated PIT on a busy host, sometimes fails: the kernel then marks the TSC unstable and,
/// measured here, hangs during boot about one time in ten. Passing `tsc_early_khz=` skips it.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
        let has = |f: &str| flags.split_whitespace().any(|w| w == f);
        if !(has("constant_tsc") && has("nonstop_tsc")) {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: rdtsc has no memory effects; the flags above show the CPU has a TSC.
            let tsc = || unsafe { std::arch::x86_64::_rdtsc() };
            let (t0, c0) = (Instant::now(), tsc());
            thread::sleep(Duration::from_millis(50));
            let (c1, t1) = (tsc(), Instant::now());
            let nanos = t1.duration_since(t0).as_nanos();
            if nanos == 0 || c1 <= c0 {
                return None;
            }
            let khz = u128::from(c1 - c0) * 1_000_000 / nanos;
            u64::try_from(khz)
                .ok()
                .filter(|k| (100_000..20_000_000).contains(k))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    })
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false)
}

// ------------------------------------------------------------------------------------------------
// Assets

/// The guest assets built by `scripts/guest-assets.sh`: one Debian cloud kernel (used for both
/// L1 and L2), its modules, a static busybox and the L2 guest initramfs.
#[derive(Debug, Clone)]
pub struct Assets {
    /// The assets directory.
    pub dir: PathBuf,
    /// The kernel as Debian ships it (bzImage).
    pub bzimage: PathBuf,
    /// The uncompressed ELF kernel, with the Xen PVH entry note (for PVH boot, `-M microvm`).
    pub vmlinux: PathBuf,
    /// The L2 guest initramfs (newc cpio, gzip).
    pub initramfs: PathBuf,
    /// A static busybox.
    pub busybox: PathBuf,
    /// The kernel's `lib/modules/<release>` tree, uncompressed `.ko` files, with `modules.dep`.
    pub modules: PathBuf,
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
}

impl Assets {
    /// Finds the guest assets in `$VESSEL_ASSETS`, or else `<workspace>/.cache/assets`.
    ///
    /// For the default directory, `scripts/guest-assets.sh` is run first: it returns at once
    /// when the assets are up to date and rebuilds them when the script changed. For
    /// `$VESSEL_ASSETS` it is run only if assets are missing there. Either way the directory is
    /// then checked; the error says what is missing and how to get it.
    pub fn locate() -> Result<Assets, BoxError> {
        let (dir, explicit) = match std::env::var_os("VESSEL_ASSETS") {
            Some(d) if !d.is_empty() => (PathBuf::from(d), true),
            _ => (workspace_root().join(".cache").join("assets"), false),
        };
        let present = Self::check(&dir).is_ok();
        if !present || !explicit {
            if let Err(e) = run_assets_script(&dir) {
                if present {
                    eprintln!(
                        "testbox: warning: {e}; using the existing assets in {}",
                        dir.display()
                    );
                } else {
                    return Err(e);
                }
            }
        }
        Self::check(&dir)
    }

    /// Checks that `dir` holds complete assets and describes them; does not build anything.
    pub fn from_dir(dir: &Path) -> Result<Assets, BoxError> {
        Self::check(dir)
    }

    fn check(dir: &Path) -> Result<Assets, BoxError> {
        let a = Assets {
            dir: dir.to_path_buf(),
            bzimage: dir.join("bzImage"),
            vmlinux: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.cpio.gz"),
            busybox: dir.join("busybox"),
            modules: dir.join("modules"),
            kernel_release: String::new(),
        };
        let needed = [
            &a.bzimage,
            &a.vmlinux,
            &a.initramfs,
            &a.busybox,
            &a.modules.join("modules.dep"),
        ];
        let missing: Vec<String> = needed
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(BoxError::Missing(format!(
                "guest assets missing ({}): run scripts/guest-assets.sh {}",
                missing.join(", "),
                dir.display()
            )));
        }
        let release_file = dir.join("kernel-release");
        let kernel_release = fs::read_to_string(&release_file)
            .map_err(|e| {
                BoxError::Missing(format!(
                    "guest assets incomplete ({}: {e}): run scripts/guest-assets.sh {}",
                    release_file.display(),
                    dir.display()
                ))
            })?
            .trim()
            .to_string();
        Ok(Assets {
            kernel_release,
            ..a
        })
    }

    /// The given modules and everything they depend on, as paths inside [`Assets::modules`],
    /// in an order `insmod` can load them (dependencies first), from `modules.dep`. Names may
    /// use `-` or `_`. Modules built into the kernel are left out; unknown ones are an error.
    pub fn modules_in_load_order(&self, names: &[&str]) -> Result<Vec<PathBuf>, BoxError> {
        let deps = self.read_modules_dep()?;
        let builtin = self.read_builtin();
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            let n = module_key(name);
            if deps.contains_key(&n) {
                visit_module(&n, &deps, &mut seen, &mut order);
            } else if !builtin.contains(&n) {
                return Err(BoxError::Missing(format!(
                    "kernel module {name} is not in {}/modules.dep (nor built in)",
                    self.modules.display()
                )));
            }
        }
        Ok(order
            .into_iter()
            .map(|rel| self.modules.join(rel))
            .collect())
    }

    /// Whether the kernel has this module, as a loadable module or built in.
    pub fn has_module(&self, name: &str) -> bool {
        let n = module_key(name);
        self.read_modules_dep()
            .map(|d| d.contains_key(&n))
            .unwrap_or(false)
            || self.read_builtin().contains(&n)
    }

    /// modules.dep as `key -> (relative path, dependency keys)`.
    fn read_modules_dep(&self) -> Result<HashMap<String, (String, Vec<String>)>, BoxError> {
        let path = self.modules.join("modules.dep");
        let text = fs::read_to_string(&path)
            .map_err(|e| BoxError::io(format!("reading {}", path.display()), e))?;
        let mut map = HashMap::new();
        for line in text.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(module_key).collect();
            map.insert(module_key(module), (module.trim().to_string(), deps));
        }
        Ok(map)
    }

    fn read_builtin(&self) -> HashSet<String> {
        fs::read_to_string(self.modules.join("modules.builtin"))
            .map(|t| t.lines().map(module_key).collect())
            .unwrap_or_default()
    }
}

/// `kernel/arch/x86/kvm/kvm-amd.ko` -> `kvm_amd`.
fn module_key(s: &str) -> String {
    let base = s.trim().rsplit('/').next().unwrap_or("");
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

fn visit_module(
    key: &str,
    deps: &HashMap<String, (String, Vec<String>)>,
    seen: &mut HashSet<String>,
    order: &mut Vec<String>,
) {
    if !seen.insert(key.to_string()) {
        return;
    }
    if let Some((path, ds)) = deps.get(key) {
        for d in ds {
            visit_module(d, deps, seen, order);
        }
        order.push(path.clone());
    }
}

fn run_assets_script(dir: &Path) -> Result<(), BoxError> {
    let script = workspace_root().join("scripts").join("guest-assets.sh");
    if !script.is_file() {
        return Err(BoxError::Missing(format!(
            "guest assets missing in {} and {} does not exist",
            dir.display(),
            script.display()
        )));
    }
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BoxError::io(format!("running {}", script.display()), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(BoxError::Missing(format!(
            "guest assets missing in {}: scripts/guest-assets.sh failed ({}); run scripts/setup.sh as root. Its output:\n{}",
            dir.display(),
            out.status,
            tail_lines(&stderr, 30)
        )));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// HostBox

/// A box to run: an L1 Linux with a real (SVM) `/dev/kvm`, inside QEMU TCG, and the steps to
/// run in it. Build it with the methods below, then [`HostBox::run`] it.
#[derive(Debug, Clone)]
pub struct HostBox {
    assets: Assets,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    binaries: Vec<(PathBuf, PathBuf)>,
    files: Vec<(PathBuf, PathBuf)>,
    with_qemu: bool,
    steps: Vec<(String, String)>,
    kernel_args: Vec<String>,
    qemu_args: Vec<String>,
    modules: Vec<String>,
    compress: bool,
    heartbeat_max: Duration,
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// The step's name, as given to [`HostBox::step`].
    pub name: String,
    /// The exit code of the step's shell script.
    pub exit_code: i32,
    /// What the step printed (stdout and stderr, interleaved), `\r\n` normalised to `\n`.
    pub output: String,
    /// The step's wall time in L1 (from `/proc/uptime`, 10 ms resolution).
    pub seconds: f64,
}

/// A finished box run.
#[derive(Debug, Clone)]
pub struct BoxRun {
    /// The whole box console (QEMU's stdout), `\r\n` normalised to `\n`.
    pub console: String,
    /// The steps that ran, in order.
    pub steps: Vec<StepResult>,
    /// Host wall time of the whole run, QEMU start to exit.
    pub wall: Duration,
}

impl BoxRun {
    /// The result of the step named `name`.
    ///
    /// # Panics
    /// If there is no such step (it did not run, or its end marker is missing); the panic
    /// message carries the console.
    pub fn step(&self, name: &str) -> &StepResult {
        match self.steps.iter().find(|s| s.name == name) {
            Some(s) => s,
            None => panic!(
                "box step {name:?} has no result (steps seen: {:?}); box console:\n{}",
                self.steps
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>(),
                tail_lines(&self.console, CONSOLE_TAIL_LINES)
            ),
        }
    }

    /// Like [`BoxRun::step`], and also panics (showing the step's output and the console tail)
    /// if the step's exit code is not 0.
    pub fn step_ok(&self, name: &str) -> &StepResult {
        let s = self.step(name);
        if s.exit_code != 0 {
            panic!(
                "box step {name:?} failed with exit code {}; its output:\n{}\n----- box console -----\n{}",
                s.exit_code,
                s.output,
                tail_lines(&self.console, CONSOLE_TAIL_LINES)
            );
        }
        s
    }
}

static BOX_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A temporary directory removed on drop (unless `VESSEL_BOX_KEEP` is set).
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new() -> Result<TempDir, BoxError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "vessel-box-{}-{}-{nanos:x}",
            std::process::id(),
            BOX_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        fs::create_dir_all(&path)
            .map_err(|e| BoxError::io(format!("creating {}", path.display()), e))?;
        let keep = env_flag("VESSEL_BOX_KEEP");
        if keep {
            eprintln!("testbox: keeping the box directory {}", path.display());
        }
        Ok(TempDir { path, keep })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// `/usr/bin/x` -> `<tree>/usr/bin/x`; refuses relative paths and `..`.
fn box_target(tree: &Path, box_path: &Path) -> Result<PathBuf, BoxError> {
    if !box_path.is_absolute()
        || box_path
            .components()
            .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(BoxError::Missing(format!(
            "box path {} must be absolute and must not contain ..",
            box_path.display()
        )));
    }
    Ok(tree.join(box_path.strip_prefix("/").unwrap_or(box_path)))
}

/// Copies `src` (following symlinks) to `dst`, creating parent directories, with `mode`.
fn copy_into(src: &Path, dst: &Path, mode: Option<u32>) -> Result<(), BoxError> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| BoxError::io(format!("creating {}", parent.display()), e))?;
    }
    fs::copy(src, dst)
        .map_err(|e| BoxError::io(format!("copying {} to {}", src.display(), dst.display()), e))?;
    if let Some(mode) = mode {
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))
            .map_err(|e| BoxError::io(format!("chmod {}", dst.display()), e))?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), BoxError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| BoxError::io(format!("creating {}", parent.display()), e))?;
    }
    fs::write(path, text).map_err(|e| BoxError::io(format!("writing {}", path.display()), e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| BoxError::io(format!("chmod {}", path.display()), e))
}

/// The shared libraries (absolute host paths, including the dynamic loader) `ldd` lists for
/// `exe`; empty for a static executable.
fn ldd_libs(exe: &Path) -> Result<Vec<PathBuf>, BoxError> {
    let ldd = require_tool("ldd")?;
    let out = Command::new(ldd)
        .arg(exe)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BoxError::io(format!("running ldd {}", exe.display()), e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(BoxError::Missing(format!(
            "ldd {} failed ({}): {}",
            exe.display(),
            out.status,
            text.trim()
        )));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            return Err(BoxError::Missing(format!(
                "{} needs a shared library that is not installed: {line}",
                exe.display()
            )));
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

impl HostBox {
    /// A box booting the L1 kernel from `assets`, with 2048 MiB, 2 CPUs, a 300 s timeout and
    /// no steps.
    pub fn new(assets: &Assets) -> Self {
        HostBox {
            assets: assets.clone(),
            memory_mib: 2048,
            cpus: 2,
            timeout: Duration::from_secs(300),
            binaries: Vec::new(),
            files: Vec::new(),
            with_qemu: false,
            steps: Vec::new(),
            kernel_args: Vec::new(),
            qemu_args: Vec::new(),
            modules: Vec::new(),
            compress: false,
            heartbeat_max: HEARTBEAT_MAX,
        }
    }

    /// L1 memory in MiB (default 2048). The initramfs (with the assets and added files) lives
    /// in it, unpacked, besides whatever the steps need (e.g. L2 guest memory).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Kernel modules L1 loads besides its own (with what they depend on), such as `zram`
    /// for a swap device. One the kernel does not have is left out (a warning on stderr), and
    /// one that does not load is a `BOX-WARN:` line: the step sees what it lacks.
    pub fn module(mut self, name: &str) -> Self {
        self.modules.push(name.to_string());
        self
    }

    /// Number of L1 CPUs (QEMU `-smp`, default 2). TCG is multi-threaded, one host thread per CPU.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Host wall-clock limit for the whole run, boot included (default 300 s). On timeout QEMU
    /// is killed and [`HostBox::run`] returns [`BoxError::Run`] with the console so far.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long L1's console may go without a heartbeat before L1 counts as stopped (default
    /// [`HEARTBEAT_MAX`]).
    pub fn heartbeat_max(mut self, max: Duration) -> Self {
        self.heartbeat_max = max;
        self
    }

    /// Copies the executable `host_path` to `box_path` in the box, with every shared library
    /// `ldd` lists for it (at the same paths as on the host).
    pub fn binary(mut self, host_path: impl AsRef<Path>, box_path: impl AsRef<Path>) -> Self {
        self.binaries.push((
            host_path.as_ref().to_path_buf(),
            box_path.as_ref().to_path_buf(),
        ));
        self
    }

    /// Copies the plain file `host_path` to `box_path` in the box (permissions kept).
    pub fn file(mut self, host_path: impl AsRef<Path>, box_path: impl AsRef<Path>) -> Self {
        self.files.push((
            host_path.as_ref().to_path_buf(),
            box_path.as_ref().to_path_buf(),
        ));
        self
    }

    /// Also packs the host's `qemu-system-x86_64` (at the same path, with its libraries, its
    /// TCG accelerator module) and the firmware `-M microvm` needs (`bios-microvm.bin`,
    /// `pvh.bin`, and the small `linuxboot*.bin`/`multiboot*.bin` option ROMs), so QEMU can run
    /// in the box as the reference VMM: `qemu-system-x86_64 -enable-kvm -M microvm -cpu host
    /// ...`. Give it `</dev/null` as stdin when its output is captured.
    pub fn with_qemu(mut self) -> Self {
        self.with_qemu = true;
        self
    }

    /// Adds a step: `shell_script` runs under `/bin/sh` in L1 (busybox), stdin `/dev/null`,
    /// stdout and stderr captured together. Steps run in order, whatever their exit codes.
    /// Busybox applets, the added binaries and (with [`HostBox::with_qemu`]) QEMU are in
    /// `PATH`; the guest assets are in `/assets` (`vmlinux`, `bzImage`, `initramfs.cpio.gz`);
    /// `/tmp` is a tmpfs. A step must not leave background processes holding its output open.
    pub fn step(mut self, name: &str, shell_script: &str) -> Self {
        let name = name.replace(['\n', '\r'], " ").trim().to_string();
        self.steps.push((name, shell_script.to_string()));
        self
    }

    /// Extra L1 kernel command line arguments (after `console=ttyS0 panic=-1 reboot=t quiet` and
    /// `tsc_early_khz=<host TSC kHz>`, see [`host_tsc_khz`]).
    pub fn kernel_args(mut self, args: &str) -> Self {
        self.kernel_args.push(args.to_string());
        self
    }

    /// Extra arguments for the L1 QEMU (e.g. a `-device` for a disk).
    pub fn qemu_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.qemu_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Whether to gzip (`-1`) the L1 initramfs (default: no). Measured: the uncompressed cpio
    /// (~125 MB with QEMU packed) reaches L1's `/init` ~2 s sooner, since TCG decompresses
    /// slowly, and saves ~1.5 s of host gzip; compress only if host temp space is short.
    pub fn compress(mut self, compress: bool) -> Self {
        self.compress = compress;
        self
    }

    /// Packs the box, boots it and collects the step results. An error if the box could not
    /// be prepared or did not reach `@@BOX-DONE` (timeout, QEMU failure, no `/dev/kvm` in L1);
    /// failing steps are not errors: look at [`StepResult::exit_code`].
    ///
    /// A run whose L1 fails is tried again, with a warning on stderr: under load, TCG's
    /// emulated SVM now and then wedges L1's KVM, either with a soft lockup report (then the
    /// run is stopped at once) or silently (L1's console heartbeat stops: the run is stopped
    /// after [`HostBox::heartbeat_max`]), or resets or panics L1 (QEMU, run with `-no-reboot`,
    /// exits 0 without `@@BOX-DONE`; such resets were caught on the console as L1 kernel stack
    /// overflows in its exception entry: nothing L1 user space can cause). A reset, a lockup
    /// or a stop is retried up to three boots in all; a timeout (heartbeats going on, a step
    /// not finishing) once only, since it may be the code under test hanging. A failure after
    /// that is an error like any other.
    pub fn run(self) -> Result<BoxRun, BoxError> {
        let mut attempt = 1;
        loop {
            match self.run_once() {
                // A timeout may be the code under test hanging: retried once only. A reset
                // or a lockup report is L1's kernel failing: retried up to ATTEMPTS boots.
                Err(BoxError::Run { reason, console })
                    if (reason.starts_with("timed out") && attempt < 2)
                        || (attempt < ATTEMPTS
                            && (reason.contains(L1_LOCKUP)
                                || reason.starts_with(L1_STOPPED)
                                || reason.starts_with("QEMU exited (exit status: 0)"))) =>
                {
                    let lines: Vec<&str> = console.lines().collect();
                    let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
                    eprintln!(
                        "testbox: warning: {reason}; running the box again (attempt {} of \
                         {ATTEMPTS}). The failed run's console ended with:\n  {tail}",
                        attempt + 1
                    );
                    record_retry(&reason, &console);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One boot of the box, not retried whatever happens: for measuring how often L1 dies.
    pub fn run_without_retries(self) -> Result<BoxRun, BoxError> {
        self.run_once()
    }

    fn run_once(&self) -> Result<BoxRun, BoxError> {
        let qemu = require_tool(QEMU)?;
        let tmp = TempDir::new()?;
        let initrd = self.pack(&tmp.path)?;

        let mut cmdline = L1_CMDLINE.to_string();
        if std::env::var("VESSEL_BOX_TSC").as_deref() == Ok("1") {
            cmdline.push(' ');
            cmdline.push_str(L1_TSC_ARG);
        }
        if let Some(khz) = host_tsc_khz() {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        for a in &self.kernel_args {
            cmdline.push(' ');
            cmdline.push_str(a);
        }
        let mut cmd = Command::new(&qemu);
        let accel = match std::env::var("VESSEL_BOX_TCG_THREAD").as_deref() {
            Ok("single") => "tcg,thread=single",
            _ => "tcg",
        };
        let cpu = std::env::var("VESSEL_BOX_CPU").unwrap_or_else(|_| "max".into());
        cmd.args(["-accel", accel, "-M", "microvm", "-cpu", &cpu])
            .arg("-m")
            .arg(self.memory_mib.to_string())
            .arg("-smp")
            .arg(self.cpus.to_string())
            .args(["-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.assets.vmlinux)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(&cmdline)
            .args(&self.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| BoxError::io(format!("starting {}", qemu.display()), e))?;
        let outcome = supervise(
            child,
            self.timeout,
            self.heartbeat_max,
            env_flag("VESSEL_BOX_VERBOSE"),
        )?;
        let wall = start.elapsed();
        drop(tmp);

        let console = normalise(&outcome.stdout);
        let done = console.lines().any(|l| l.trim_end() == BOX_DONE);
        if !done {
            let mut reason = if outcome.lockup {
                format!("the L1 kernel reported a soft lockup ({L1_LOCKUP}); QEMU stopped")
            } else if outcome.stopped {
                format!(
                    "{L1_STOPPED}: no heartbeat on its console for {:.0} s; QEMU stopped",
                    self.heartbeat_max.as_secs_f64()
                )
            } else if outcome.timed_out {
                format!(
                    "timed out after {:.0} s (QEMU killed)",
                    self.timeout.as_secs_f64()
                )
            } else {
                format!("QEMU exited ({}) before {BOX_DONE}", outcome.status)
            };
            if let Some(panic) = console.lines().find(|l| l.contains(KERNEL_PANIC)) {
                reason.push_str(&format!(
                    "; the console shows a kernel panic: {}",
                    panic.trim()
                ));
            }
            let box_errors: Vec<&str> = console.lines().filter(|l| l.contains(BOX_ERROR)).collect();
            if !box_errors.is_empty() {
                reason.push_str(&format!("; {}", box_errors.join("; ")));
            }
            let stderr = normalise(&outcome.stderr);
            if !stderr.trim().is_empty() {
                reason.push_str(&format!("; QEMU stderr: {}", stderr.trim()));
            }
            return Err(BoxError::Run { reason, console });
        }
        let steps = parse_steps(&console);
        Ok(BoxRun {
            console,
            steps,
            wall,
        })
    }

    /// Builds the L1 tree under `dir/tree` and packs it into `dir/l1.cpio` (or `l1.cpio.gz`).
    fn pack(&self, dir: &Path) -> Result<PathBuf, BoxError> {
        let cpio = require_tool("cpio")?;
        let tree = dir.join("tree");
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run",
            "root", "steps", "assets",
        ] {
            let p = tree.join(d);
            fs::create_dir_all(&p)
                .map_err(|e| BoxError::io(format!("creating {}", p.display()), e))?;
        }
        copy_into(&self.assets.busybox, &tree.join("bin/busybox"), Some(0o755))?;

        // Kernel modules, in load order.
        let mut module_lines = String::new();
        let rel_root = PathBuf::from("lib/modules").join(&self.assets.kernel_release);
        let mut add_modules = |names: &[&str], kind: &str| -> Result<(), BoxError> {
            for m in self.assets.modules_in_load_order(names)? {
                let rel = m.strip_prefix(&self.assets.modules).unwrap_or(&m);
                if !m.is_file() {
                    return Err(BoxError::Missing(format!(
                        "kernel module {} missing (compressed?): re-run scripts/guest-assets.sh",
                        m.display()
                    )));
                }
                let box_rel = rel_root.join(rel);
                copy_into(&m, &tree.join(&box_rel), Some(0o644))?;
                module_lines.push_str(&format!("{kind} /{}\n", box_rel.display()));
            }
            Ok(())
        };
        add_modules(L1_REQUIRED_MODULES, "req")?;
        let optional: Vec<&str> = L1_OPTIONAL_MODULES
            .iter()
            .copied()
            .filter(|m| self.assets.has_module(m))
            .collect();
        add_modules(&optional, "opt")?;
        let asked: Vec<&str> = self
            .modules
            .iter()
            .map(String::as_str)
            .filter(|m| {
                let there = self.assets.has_module(m);
                if !there {
                    eprintln!("testbox: the L1 kernel has no module {m}: not loaded");
                }
                there
            })
            .collect();
        add_modules(&asked, "opt")?;
        write_file(&tree.join("etc/box-modules"), &module_lines, 0o644)?;

        // Guest assets.
        copy_into(
            &self.assets.vmlinux,
            &tree.join("assets/vmlinux"),
            Some(0o644),
        )?;
        copy_into(
            &self.assets.bzimage,
            &tree.join("assets/bzImage"),
            Some(0o644),
        )?;
        copy_into(
            &self.assets.initramfs,
            &tree.join("assets/initramfs.cpio.gz"),
            Some(0o644),
        )?;

        // Binaries with their libraries, files.
        let mut libs = BTreeSet::new();
        let mut binaries = self.binaries.clone();
        if self.with_qemu {
            let qemu = require_tool(QEMU)?;
            binaries.push((qemu.clone(), qemu.clone()));
            let share = qemu
                .parent()
                .and_then(Path::parent)
                .map(|p| p.join("share/qemu"))
                .unwrap_or_else(|| PathBuf::from("/usr/share/qemu"));
            for (fw, required) in QEMU_FIRMWARE {
                let src = share.join(fw);
                if src.is_file() {
                    copy_into(&src, &box_target(&tree, &src)?, Some(0o644))?;
                } else if *required {
                    return Err(BoxError::Missing(format!(
                        "QEMU firmware {} not found: run scripts/setup.sh (qemu-system-x86)",
                        src.display()
                    )));
                }
            }
            // Debian builds TCG as a loadable module; not needed with -enable-kvm, but small.
            let accel = Path::new(QEMU_MODULE_DIR).join("accel-tcg-x86_64.so");
            if accel.is_file() {
                copy_into(&accel, &box_target(&tree, &accel)?, Some(0o644))?;
                libs.extend(ldd_libs(&accel)?);
            }
        }
        for (host, boxp) in &binaries {
            if !host.is_file() {
                return Err(BoxError::Missing(format!(
                    "binary {} for the box not found",
                    host.display()
                )));
            }
            copy_into(host, &box_target(&tree, boxp)?, Some(0o755))?;
            libs.extend(ldd_libs(host)?);
        }
        for lib in &libs {
            copy_into(lib, &box_target(&tree, lib)?, Some(0o755))?;
        }
        for (host, boxp) in &self.files {
            if !host.is_file() {
                return Err(BoxError::Missing(format!(
                    "file {} for the box not found",
                    host.display()
                )));
            }
            copy_into(host, &box_target(&tree, boxp)?, None)?;
        }

        // Steps and init.
        for (i, (name, script)) in self.steps.iter().enumerate() {
            write_file(
                &tree.join(format!("steps/{:03}.name", i + 1)),
                &format!("{name}\n"),
                0o644,
            )?;
            write_file(&tree.join(format!("steps/{:03}.sh", i + 1)), script, 0o755)?;
        }
        write_file(&tree.join("init"), L1_INIT, 0o755)?;
        write_file(&tree.join("bin/box-heartbeat"), L1_HEARTBEAT, 0o755)?;

        // Pack: (cd tree && find . | cpio -o -H newc [| gzip -1]) > l1.cpio[.gz]
        let gzip = if self.compress {
            Some(require_tool("gzip")?)
        } else {
            None
        };
        let out = dir.join(if self.compress {
            "l1.cpio.gz"
        } else {
            "l1.cpio"
        });
        let out_file = fs::File::create(&out)
            .map_err(|e| BoxError::io(format!("creating {}", out.display()), e))?;
        let mut find = Command::new("find")
            .arg(".")
            .current_dir(&tree)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| BoxError::io("running find", e))?;
        let find_out = find
            .stdout
            .take()
            .ok_or_else(|| BoxError::Missing("find: no stdout".into()))?;
        let mut cpio_cmd = Command::new(&cpio);
        cpio_cmd
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(&tree)
            .stdin(find_out);
        let (cpio_status, gzip_status) = match gzip {
            Some(gzip) => {
                let mut cpio_child = cpio_cmd
                    .stdout(Stdio::piped())
                    .spawn()
                    .map_err(|e| BoxError::io("running cpio", e))?;
                let cpio_out = cpio_child
                    .stdout
                    .take()
                    .ok_or_else(|| BoxError::Missing("cpio: no stdout".into()))?;
                let gzip_status = Command::new(&gzip)
                    .arg("-1")
                    .stdin(cpio_out)
                    .stdout(out_file)
                    .status()
                    .map_err(|e| BoxError::io("running gzip", e))?;
                let cpio_status = cpio_child
                    .wait()
                    .map_err(|e| BoxError::io("waiting for cpio", e))?;
                (cpio_status, Some(gzip_status))
            }
            None => {
                let cpio_status = cpio_cmd
                    .stdout(out_file)
                    .status()
                    .map_err(|e| BoxError::io("running cpio", e))?;
                (cpio_status, None)
            }
        };
        let find_status = find
            .wait()
            .map_err(|e| BoxError::io("waiting for find", e))?;
        if !(find_status.success()
            && cpio_status.success()
            && gzip_status.is_none_or(|s| s.success()))
        {
            return Err(BoxError::Missing(format!(
                "packing the box initramfs failed (find {find_status}, cpio {cpio_status}, gzip {gzip_status:?})"
            )));
        }
        let _ = fs::remove_dir_all(&tree);
        Ok(out)
    }
}

/// The L1 `/init`.
const L1_INIT: &str = r#"#!/bin/busybox sh
# Vessel host box, L1 init (generated by the testbox crate).
/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/null >/dev/console 2>&1
echo "@@BOX-INIT kernel=$(uname -r) cpus=$(nproc) uptime=$(cut -d' ' -f1 /proc/uptime)"

while read -r kind m; do
    [ -n "$m" ] || continue
    name=${m##*/}; name=${name%.ko}
    [ -d "/sys/module/$(echo "$name" | tr - _)" ] && continue
    if ! insmod "$m" 2>/tmp/insmod.err; then
        if [ "$kind" = req ]; then
            echo "BOX-ERROR: insmod $name failed: $(cat /tmp/insmod.err)"
        else
            echo "BOX-WARN: insmod $name failed: $(cat /tmp/insmod.err)"
        fi
    fi
done < /etc/box-modules
rm -f /tmp/insmod.err
if [ ! -c /dev/kvm ]; then
    echo "BOX-ERROR: kvm-amd did not load (/dev/kvm missing); kernel log:"
    dmesg | tail -n 30
    sync
    poweroff -f
    exit 1
fi
# Only emergencies on the console from now on, so kernel messages do not mix with step output.
dmesg -n 1
# A heartbeat on the console while the steps run: the host tells an L1 that stopped (no more
# heartbeats) from a step that hangs (they go on). The host takes them out of the console.
/bin/box-heartbeat &
heartbeat=$!
echo $heartbeat > /run/box-heartbeat.pid

ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
failed=0
for f in /steps/*.sh; do
    [ -f "$f" ] || continue
    name=$(cat "${f%.sh}.name")
    echo "@@STEP-BEGIN $name"
    t0=$(ms)
    rm -f /tmp/.step-rc
    ( /bin/sh "$f" </dev/null 2>&1; echo $? > /tmp/.step-rc ) | tee /tmp/.step-out
    t1=$(ms)
    rc=$(cat /tmp/.step-rc 2>/dev/null || echo 255)
    # Make sure the end marker starts a line.
    [ -s /tmp/.step-out ] && [ -n "$(tail -c 1 /tmp/.step-out)" ] && echo
    echo "@@STEP-END $name rc=$rc ms=$((t1 - t0))"
    [ "$rc" = 0 ] || failed=1
done
rm -f /tmp/.step-rc /tmp/.step-out
if [ "$failed" = 1 ]; then
    echo "@@L1-DMESG-BEGIN (a step failed; last kernel messages)"
    dmesg | tail -n 40
    echo "@@L1-DMESG-END"
fi
kill $heartbeat
echo "@@BOX-DONE"
sync
poweroff -f
"#;

/// The L1 heartbeat (`/bin/box-heartbeat`): [`HEARTBEAT`] on the console every 5 s.
const L1_HEARTBEAT: &str = r#"#!/bin/busybox sh
while :; do echo "@@HB"; sleep 5; done
"#;
/// What L1's heartbeat prints, a line of its own (or, written in the middle of a step's line,
/// a piece that taking it out mends).
const HEARTBEAT: &str = "@@HB\n";
/// The heartbeat as it is looked for in the raw console (where its line ends in `\r\n`).
const HEARTBEAT_MARK: &[u8] = b"@@HB";
/// How long L1's console may go without a heartbeat, by default, before L1 counts as stopped:
/// a kernel wedged under TCG sits silent until the timeout otherwise (a busy L1 still runs the
/// heartbeat's shell every few seconds).
pub const HEARTBEAT_MAX: Duration = Duration::from_secs(60);
/// The start of the reason of a run whose L1 stopped (no heartbeat).
const L1_STOPPED: &str = "L1 stopped";

/// `\r\n` -> `\n`, stray `\r` dropped, lossy UTF-8.
fn normalise(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\r', "")
        .replace(HEARTBEAT, "")
}

/// Splits the console into step results, from the `@@STEP-BEGIN`/`@@STEP-END` lines.
fn parse_steps(console: &str) -> Vec<StepResult> {
    let mut steps = Vec::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    for line in console.lines() {
        if let Some(name) = line.strip_prefix(STEP_BEGIN) {
            current = Some((name.trim_end().to_string(), Vec::new()));
            continue;
        }
        if let (Some(rest), Some((name, lines))) = (line.strip_prefix(STEP_END), current.as_mut()) {
            // "<name> rc=N ms=M"
            let mut parts = rest.trim_end().rsplitn(3, ' ');
            let ms = parts
                .next()
                .and_then(|p| p.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok());
            let rc = parts
                .next()
                .and_then(|p| p.strip_prefix("rc="))
                .and_then(|v| v.parse::<i32>().ok());
            let end_name = parts.next();
            if let (Some(ms), Some(rc), Some(end_name)) = (ms, rc, end_name) {
                if end_name == name.as_str() {
                    let mut output = lines.join("\n");
                    if !lines.is_empty() {
                        output.push('\n');
                    }
                    steps.push(StepResult {
                        name: name.clone(),
                        exit_code: rc,
                        output,
                        seconds: ms as f64 / 1000.0,
                    });
                    current = None;
                    continue;
                }
            }
        }
        if let Some((_, lines)) = current.as_mut() {
            lines.push(line);
        }
    }
    steps
}

struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: String,
    timed_out: bool,
    /// The L1 kernel reported a soft lockup (and QEMU was stopped).
    lockup: bool,
    /// L1's heartbeat stopped (and QEMU was stopped).
    stopped: bool,
}

/// What the L1 kernel prints when one of its CPUs stops scheduling: under TCG, L1's KVM can
/// occasionally wedge a CPU inside a guest entry loop. It is a fault of the emulated box, not
/// of what runs in it, and the box never recovers from it.
const L1_LOCKUP: &str = "watchdog: BUG: soft lockup";

/// What a Linux kernel prints when it panics (L1's, or a guest's whose console a step shows).
const KERNEL_PANIC: &str = "Kernel panic - not syncing";

/// Collects QEMU's output until it exits, `timeout` passes, L1 reports a soft lockup or its
/// heartbeat stops for `heartbeat_max` (then kills it).
fn supervise(
    mut child: Child,
    timeout: Duration,
    heartbeat_max: Duration,
    verbose: bool,
) -> Result<Outcome, BoxError> {
    let stdout_buf = Arc::new(Mutex::new(Vec::new()));
    let stderr_buf = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<thread::JoinHandle<()>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .zip([Arc::clone(&stdout_buf), Arc::clone(&stderr_buf)])
    .zip([verbose, verbose])
    .filter_map(|((src, buf), echo)| src.map(|s| (s, buf, echo)))
    .map(|(mut src, buf, echo)| {
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match src.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if echo {
                            let _ = io::stderr().write_all(&chunk[..n]);
                        }
                        if let Ok(mut b) = buf.lock() {
                            b.extend_from_slice(&chunk[..n]);
                        }
                    }
                }
            }
        })
    })
    .collect();

    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let mut lockup = false;
    let mut stopped = false;
    // When L1's heartbeat was last seen (none before its init starts it).
    let mut last_beat: Option<Instant> = None;
    let mut scanned: usize = 0;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.to_string(),
            Ok(None) => {}
            Err(e) => return Err(BoxError::io("waiting for QEMU", e)),
        }
        // An L1 kernel soft lockup never recovers, nor does an L1 whose heartbeat stopped:
        // stop now rather than at the deadline.
        if let Ok(out) = stdout_buf.lock() {
            let contains = |needle: &[u8]| {
                let from = scanned.saturating_sub(needle.len());
                out[from..].windows(needle.len()).any(|w| w == needle)
            };
            lockup = contains(L1_LOCKUP.as_bytes());
            if contains(HEARTBEAT_MARK) {
                last_beat = Some(Instant::now());
            }
            scanned = out.len();
        }
        stopped = last_beat.is_some_and(|at| at.elapsed() > heartbeat_max);
        if lockup || stopped || Instant::now() >= deadline {
            timed_out = !lockup && !stopped;
            let _ = child.kill();
            break match child.wait() {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
        }
        thread::sleep(Duration::from_millis(50));
    };
    for r in readers {
        let _ = r.join();
    }
    let take = |b: &Arc<Mutex<Vec<u8>>>| {
        b.lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    };
    Ok(Outcome {
        stdout: take(&stdout_buf),
        stderr: take(&stderr_buf),
        status,
        timed_out,
        lockup,
        stopped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps() {
        let console = "boot\n@@STEP-BEGIN a b\nhello\nworld\n@@STEP-END a b rc=0 ms=1230\n\
                       @@STEP-BEGIN empty\n@@STEP-END empty rc=3 ms=0\n@@BOX-DONE\n";
        let steps = parse_steps(console);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].name, "a b");
        assert_eq!(steps[0].output, "hello\nworld\n");
        assert_eq!(steps[0].exit_code, 0);
        assert!((steps[0].seconds - 1.23).abs() < 1e-9);
        assert_eq!(steps[1].output, "");
        assert_eq!(steps[1].exit_code, 3);
    }

    #[test]
    fn normalises_crlf() {
        assert_eq!(normalise(b"a\r\nb\r\n"), "a\nb\n");
    }

    #[test]
    fn heartbeats_are_taken_out_even_from_the_middle_of_a_line() {
        assert_eq!(
            normalise(b"@@HB\r\nstep li@@HB\r\nne\r\n@@HB\r\n@@STEP-END x rc=0 ms=1\r\n"),
            "step line\n@@STEP-END x rc=0 ms=1\n"
        );
    }

    #[test]
    fn module_keys() {
        assert_eq!(module_key("kernel/arch/x86/kvm/kvm-amd.ko"), "kvm_amd");
        assert_eq!(
            module_key("kernel/drivers/char/hw_random/virtio-rng.ko:"),
            "virtio_rng"
        );
        assert_eq!(module_key("kvm.ko.xz"), "kvm");
    }

    #[test]
    fn box_paths() {
        let t = Path::new("/x");
        assert_eq!(
            box_target(t, Path::new("/usr/bin/q")).ok(),
            Some(PathBuf::from("/x/usr/bin/q"))
        );
        assert!(box_target(t, Path::new("rel")).is_err());
        assert!(box_target(t, Path::new("/a/../b")).is_err());
    }
}
