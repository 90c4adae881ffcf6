//! The CLI verbs that talk to `vessel daemon` through its API socket, with xl/virsh habits:
//! `create`, `list`, `info`, `start`, `pause`, `unpause`, `shutdown`, `reboot`, `destroy`,
//! `delete`, `console`, `top`.

use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use vmm::DomainSpec;

use crate::http;
use crate::table::{Align, Table};
use control::{spec_from_json, DomainDef};

/// The console's detach key: Ctrl-] (as virsh).
const DETACH: u8 = 0x1d;

/// Connects to the daemon.
fn connect(socket: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the daemon at {} (is `vessel daemon` running? --socket or VESSEL_SOCKET choose another)",
            socket.display()
        )
    })
}

/// One API call; a non-2xx answer becomes an error carrying the daemon's message.
pub fn call(socket: &Path, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Value> {
    let mut stream = connect(socket)?;
    let (status, body) = http::call(&mut stream, method, path, body)
        .with_context(|| format!("talking to the daemon at {}", socket.display()))?;
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if !(200..300).contains(&status) {
        let msg = value["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        bail!("{msg} (HTTP {status})");
    }
    Ok(value)
}

/// `vessel create`: a definition file, or the flags of `vessel run` (the same
/// [`vmm::DomainSpec`]) plus `--name` and `--autostart`.
#[derive(Args)]
#[command(
    override_usage = "vessel create [OPTIONS] --name <NAME> --kernel <PATH>\n       \
                            vessel create [--no-start] FILE"
)]
pub struct CreateArgs {
    /// A JSON domain definition (docs/api.md); or give the flags below instead. Relative
    /// paths, in the file or in the flags, are taken from the current directory.
    #[arg(value_name = "FILE", conflicts_with_all = ["name", "autostart", "DomainSpec", "SchedParams", "MemoryAlloc"])]
    file: Option<PathBuf>,
    /// The domain's name.
    #[arg(long, required_unless_present = "file")]
    name: Option<String>,
    /// Start the domain whenever the daemon starts.
    #[arg(long)]
    autostart: bool,
    #[command(flatten)]
    spec: Option<DomainSpec>,
    #[command(flatten)]
    sched: vmm::SchedParams,
    #[command(flatten)]
    memory_alloc: vmm::MemoryAlloc,
    /// Only define the domain; do not start it now.
    #[arg(long)]
    no_start: bool,
}

/// `vessel console`.
#[derive(Args)]
pub struct ConsoleArgs {
    /// The domain.
    name: String,
    /// Detach after this many seconds (for scripts; interactively, press Ctrl-]).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Detach as soon as the output (kept or live) contains TEXT (for scripts); with
    /// --timeout, exit 1 if it has not appeared by then.
    #[arg(long, value_name = "TEXT")]
    until: Option<String>,
}

/// `vessel list`, `vessel host-info` and `vessel mem`.
#[derive(Args)]
pub struct ListArgs {
    /// Print JSON (the API's answer) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `vessel top`.
#[derive(Args)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, short = 'd', default_value_t = 1.0)]
    delay: f64,
    /// Refresh this many times, then exit (batch mode, as `top -n`).
    #[arg(long, short = 'n')]
    iterations: Option<u32>,
    /// Print each refresh as one line of JSON (an array with a row's fields per domain)
    /// instead of a table.
    #[arg(long)]
    json: bool,
}

/// The verbs on one domain.
#[derive(Subcommand)]
pub enum DomainVerb {
    /// Show a domain's definition, state and counters as JSON.
    Info { name: String },
    /// Start a defined domain.
    Start { name: String },
    /// Pause a running domain (its vCPUs stop; its memory stays).
    Pause { name: String },
    /// Let a paused domain run again.
    Unpause { name: String },
    /// Ask the guest to power off (ACPI power button).
    Shutdown {
        name: String,
        /// Wait this many seconds for the guest to power off.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Reboot a domain with its guest's consent: press its ACPI power button, and start it
    /// again once it has powered off (it keeps running if it has not within --wait).
    Reboot {
        name: String,
        /// Seconds the guest has to power off.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        wait: u64,
    },
    /// Reset a domain at once, as a reset button would (a fresh boot; the guest is not asked).
    Reset { name: String },
    /// Stop a domain at once and free its memory.
    Destroy { name: String },
    /// Forget a stopped domain's definition.
    Delete { name: String },
    /// Save a running or paused domain to FILE and stop it, as `xl save`: its vCPUs,
    /// interrupt controllers, clock, devices and memory (all-zero pages left out). `vessel
    /// restore FILE` brings it back where it was. FILE must not exist.
    Save {
        name: String,
        /// The snapshot to write (a path on the daemon's host).
        file: PathBuf,
    },
    /// Set a running domain's memory, as `xl mem-set`: its guest gives back what is above
    /// SIZE through its balloon (and takes it again when SIZE grows, up to its --memory).
    /// The guest does it at its own pace: `vessel info NAME` shows `memory.balloon_bytes`.
    MemSet {
        name: String,
        /// The memory the guest keeps (256M, 1G...; a bare number is MiB), at least 16M and
        /// at most the domain's --memory.
        #[arg(value_parser = parse_size_arg)]
        size: u64,
    },
}

/// `vessel restore`.
#[derive(Args)]
pub struct RestoreArgs {
    /// The snapshot `vessel save` wrote (a path on the daemon's host).
    file: PathBuf,
    /// The name to give the domain (default: the name it was saved with).
    #[arg(long)]
    name: Option<String>,
}

/// `path` made absolute from the current directory: the daemon has its own.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

/// "domain 'NAME' (id N) is STATE", of the domain info `v` a create or a restore answered.
pub(crate) fn print_started(v: &Value) {
    println!(
        "domain '{}' (id {}) is {}",
        v["name"].as_str().unwrap_or("?"),
        v["id"],
        v["state"].as_str().unwrap_or("?")
    );
}

pub fn restore(socket: &Path, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let mut body = json!({ "path": absolute(&args.file)? });
    if let Some(name) = args.name {
        body["name"] = json!(name);
    }
    let v = call(
        socket,
        "POST",
        "/v1/restore",
        Some(&serde_json::to_vec(&body)?),
    )?;
    print_started(&v);
    Ok(ExitCode::SUCCESS)
}

pub fn create(socket: &Path, args: CreateArgs) -> anyhow::Result<ExitCode> {
    let (spec, from) = match (args.file, args.spec) {
        (Some(file), _) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let from = format!("{}: ", file.display());
            let spec = spec_from_json(&bytes).map_err(|e| anyhow::anyhow!("{from}{e}"))?;
            (spec, from)
        }
        (None, Some(spec)) => (
            DomainSpec {
                name: args.name,
                autostart: args.autostart,
                sched: args.sched,
                memory_alloc: args.memory_alloc,
                ..spec
            },
            String::new(),
        ),
        // Unreachable through clap: without FILE, --kernel is required.
        (None, None) => bail!("give a definition FILE, or --name and --kernel"),
    };
    // Relative paths mean what they mean here, not in the daemon's working directory.
    let spec = spec
        .with_absolute_paths()
        .context("cannot make the definition's paths absolute")?;
    // Checked here too, so a bad definition is reported before anything is sent.
    let def = DomainDef::new(spec).map_err(|e| anyhow::anyhow!("{from}{e}"))?;
    let body = serde_json::to_vec(&def)?;
    let path = if args.no_start {
        "/v1/domains?start=false"
    } else {
        "/v1/domains"
    };
    let v = call(socket, "POST", path, Some(&body))?;
    print_started(&v);
    Ok(ExitCode::SUCCESS)
}

pub fn domain_verb(socket: &Path, verb: DomainVerb) -> anyhow::Result<ExitCode> {
    let (method, path, name) = match &verb {
        DomainVerb::Info { name } => ("GET", String::new(), name),
        DomainVerb::Start { name } => ("POST", "/start".into(), name),
        DomainVerb::Pause { name } => ("POST", "/pause".into(), name),
        DomainVerb::Unpause { name } => ("POST", "/unpause".into(), name),
        DomainVerb::Shutdown { name, wait } => (
            "POST",
            wait.map_or("/shutdown".into(), |w| format!("/shutdown?wait={w}")),
            name,
        ),
        DomainVerb::Reboot { name, wait } => ("POST", format!("/reboot?wait={wait}"), name),
        DomainVerb::Reset { name } => ("POST", "/reset".into(), name),
        DomainVerb::Destroy { name } => ("POST", "/destroy".into(), name),
        DomainVerb::Delete { name } => ("DELETE", String::new(), name),
        DomainVerb::MemSet { name, .. } => ("PUT", "/memory".into(), name),
        DomainVerb::Save { name, .. } => ("POST", "/save".into(), name),
    };
    let body = match &verb {
        DomainVerb::Save { file, .. } => {
            Some(serde_json::to_vec(&json!({ "path": absolute(file)? }))?)
        }
        DomainVerb::MemSet { size, .. } => {
            Some(serde_json::to_vec(&json!({ "target_bytes": size }))?)
        }
        _ => None,
    };
    let v = call(
        socket,
        method,
        &format!("/v1/domains/{name}{path}"),
        body.as_deref(),
    )?;
    match verb {
        DomainVerb::Info { .. } => print_json(&v)?,
        DomainVerb::Delete { name } => println!("domain '{name}' deleted"),
        DomainVerb::Save { name, file } => println!(
            "domain '{name}' saved to {} ({} MiB: {} pages of memory, {} zero pages left out)",
            file.display(),
            v["bytes"].as_u64().unwrap_or(0) >> 20,
            v["pages"],
            v["zero_pages"]
        ),
        DomainVerb::MemSet { name, size } => {
            let text = |b: u64| vmm::spec::format_size(b).unwrap_or_else(|| format!("{b} bytes"));
            // The memory policy may give the domain less than asked, never more.
            match v["target_bytes"].as_u64() {
                Some(target) if target < size => println!(
                    "domain '{name}': memory target {} (asked {}: the memory pool gives it no \
                     more now)",
                    text(target),
                    text(size)
                ),
                _ => println!("domain '{name}': memory target {}", text(size)),
            }
        }
        _ => println!("domain '{name}' is {}", v["state"].as_str().unwrap_or("?")),
    }
    Ok(ExitCode::SUCCESS)
}

fn cpu_seconds(v: &Value) -> f64 {
    v["cpu_ns"].as_u64().unwrap_or(0) as f64 / 1e9
}

pub fn list(socket: &Path, args: ListArgs) -> anyhow::Result<ExitCode> {
    let v = call(socket, "GET", "/v1/domains", None)?;
    if args.json {
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("NAME", Align::Left),
        ("STATE", Align::Left),
        ("VCPUS", Align::Right),
        ("MEMORY", Align::Right),
        ("CPU(s)", Align::Right),
    ]);
    for d in v.as_array().into_iter().flatten() {
        table.row(vec![
            d["id"].as_u64().map_or("-".into(), |id| id.to_string()),
            text(&d["name"]),
            // Paused by the memory policy, not by the user.
            if d["held_for_memory"] == true {
                "held".to_string()
            } else {
                text(&d["state"])
            },
            d["vcpus"].as_u64().unwrap_or(0).to_string(),
            text(&d["memory"]),
            format!("{:.1}", cpu_seconds(d)),
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

pub fn host_info(socket: &Path, args: ListArgs) -> anyhow::Result<ExitCode> {
    let v = call(socket, "GET", "/v1/host", None)?;
    if args.json {
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mib = |v: &Value| {
        v.as_u64()
            .map_or("?".to_string(), |b| format!("{} MiB", b >> 20))
    };
    let kvm = match v["kvm"]["flavour"].as_str() {
        Some(flavour) => format!(
            "{flavour} (at most {} vCPUs per domain)",
            v["kvm"]["max_vcpus"]
        ),
        None => format!("unusable: {}", text(&v["kvm"]["error"])),
    };
    let d = &v["domains"];
    let lines = [
        ("kernel", text(&v["host"]["kernel"])),
        ("cpus", v["host"]["cpus"].to_string()),
        ("memory", mib(&v["host"]["memory_bytes"])),
        ("kvm", kvm),
        (
            "vessel",
            format!(
                "{} (API {})",
                text(&v["vessel"]["version"]),
                text(&v["vessel"]["api"])
            ),
        ),
        (
            "daemon uptime",
            format!(
                "{:.0} s",
                v["daemon_uptime_seconds"].as_f64().unwrap_or(0.0)
            ),
        ),
        (
            "domains",
            format!(
                "{} defined, {} running, {} paused",
                d["defined"], d["running"], d["paused"]
            ),
        ),
        ("memory given", mib(&v["memory_given_bytes"])),
    ];
    for (key, value) in lines {
        println!("{key:<14}: {value}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `v` as the verbs' `--json` prints an API answer: pretty, one value.
pub fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A rate given on the command line (bytes per second, read as every rate is).
/// A size argument (`256M`, `1.5G`; a bare number is MiB), as `--memory` reads it.
pub fn parse_size_arg(s: &str) -> Result<u64, String> {
    vmm::spec::parse_size(s).map_err(|e| e.to_string())
}

pub fn parse_rate_arg(s: &str) -> Result<u64, String> {
    vmm::parse_rate(s).ok_or_else(|| {
        format!("'{s}' is not a rate: bytes per second, with K, M, G, T (or KiB...) and decimals")
    })
}

/// A JSON string's text, or "?".
pub fn text(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_string()
}

/// Sum of the I/O byte counters of a domain's devices: (block read+write, net rx+tx).
fn io_bytes(info: &Value) -> (u64, u64) {
    let mut block = 0;
    let mut net = 0;
    for d in info["devices"].as_array().into_iter().flatten() {
        let c = &d["counters"];
        let get = |k: &str| c[k].as_u64().unwrap_or(0);
        match d["kind"].as_str() {
            Some("block") => block += get("read_bytes") + get("write_bytes"),
            Some("net") => net += get("rx_bytes") + get("tx_bytes"),
            _ => {}
        }
    }
    (block, net)
}

pub fn top(socket: &Path, args: TopArgs) -> anyhow::Result<ExitCode> {
    let delay = Duration::from_secs_f64(args.delay.clamp(0.1, 3600.0));
    let interactive = io::stdout().is_terminal() && args.iterations.is_none();
    let mut last: std::collections::HashMap<String, (Instant, f64, u64, u64)> = Default::default();
    let mut round = 0;
    loop {
        let list = call(socket, "GET", "/v1/domains", None)?;
        let mut out = String::new();
        if interactive && !args.json {
            out.push_str("\x1b[H\x1b[2J");
        }
        let mut table = Table::new(&[
            ("NAME", Align::Left),
            ("STATE", Align::Left),
            ("CPU%", Align::Right),
            ("SHARE%", Align::Right),
            ("MEM(MiB)", Align::Right),
            ("TARGET(MiB)", Align::Right),
            ("ACTIVE(MiB)", Align::Right),
            ("BLK(KiB/s)", Align::Right),
            ("NET(KiB/s)", Align::Right),
        ]);
        let mut rows = Vec::new();
        for d in list.as_array().into_iter().flatten() {
            let name = d["name"].as_str().unwrap_or("?").to_string();
            let info =
                call(socket, "GET", &format!("/v1/domains/{name}"), None).unwrap_or(Value::Null);
            let now = Instant::now();
            let cpu = cpu_seconds(&info);
            let (blk, net) = io_bytes(&info);
            let (cpu_pct, blk_rate, net_rate) = match last.get(&name) {
                Some((t, c, b, n)) => {
                    let dt = now.duration_since(*t).as_secs_f64().max(1e-3);
                    (
                        100.0 * (cpu - c).max(0.0) / dt,
                        blk.saturating_sub(*b) as f64 / dt,
                        net.saturating_sub(*n) as f64 / dt,
                    )
                }
                None => (0.0, 0.0, 0.0),
            };
            last.insert(name.clone(), (now, cpu, blk, net));
            let resident = info["memory_resident_bytes"].as_u64().unwrap_or(0);
            // What the memory policy (or mem-set) wants it to hold, and what it uses as
            // sampled (absent until a sampling period has ended).
            let target = info["memory"]["target_bytes"].as_u64();
            let active = info["memory"]["active_estimate_bytes"].as_u64();
            let in_mib = |b: Option<u64>| {
                b.map_or("-".to_string(), |b| {
                    format!("{:.1}", b as f64 / (1 << 20) as f64)
                })
            };
            // The scheduler's share of what all domains used over its last interval.
            let share = info["sched"]["share_percent"].as_f64();
            table.row(vec![
                name.clone(),
                text(&d["state"]),
                format!("{cpu_pct:.1}"),
                share.map_or("-".to_string(), |s| format!("{s:.1}")),
                format!("{:.1}", resident as f64 / (1 << 20) as f64),
                in_mib(target),
                in_mib(active),
                format!("{:.1}", blk_rate / 1024.0),
                format!("{:.1}", net_rate / 1024.0),
            ]);
            rows.push(serde_json::json!({
                "name": name,
                "state": d["state"],
                "cpu_percent": cpu_pct,
                "share_percent": share,
                "memory_resident_bytes": resident,
                "memory_target_bytes": target,
                "memory_active_bytes": active,
                "block_bytes_per_sec": blk_rate,
                "net_bytes_per_sec": net_rate,
            }));
        }
        if args.json {
            out.push_str(&serde_json::to_string(&rows)?);
            out.push('\n');
        } else {
            out.push_str(&table.render());
        }
        print!("{out}");
        io::stdout().flush()?;
        round += 1;
        if args.iterations.is_some_and(|n| round >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(delay);
    }
}

pub fn console(socket: &Path, args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let mut stream = connect(socket)?;
    let req = format!(
        "GET /v1/domains/{}/console HTTP/1.1\r\nHost: vessel\r\nUpgrade: vessel-console\r\nConnection: Upgrade\r\n\r\n",
        args.name
    );
    stream.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let (status, length) = http::read_response_head(&mut reader)?;
    if status != 101 {
        let mut body = vec![0; length.unwrap_or(0)];
        reader.read_exact(&mut body)?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        bail!(
            "{} (HTTP {status})",
            v["error"]
                .as_str()
                .unwrap_or("the daemon refused the console")
        );
    }
    let terminal = if io::stdin().is_terminal() {
        Some(hv::RawTerminal::enable().context("cannot set the terminal to raw mode")?)
    } else {
        None
    };
    if terminal.is_some() {
        eprint!(
            "vessel: attached to '{}'; press Ctrl-] to detach\r\n",
            args.name
        );
    }
    let interactive = terminal.is_some();
    let mut input = stream.try_clone()?;
    let _ = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = [0u8; 256];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let bytes = &buf[..n];
                if interactive {
                    if let Some(at) = bytes.iter().position(|&b| b == DETACH) {
                        let _ = input.write_all(&bytes[..at]);
                        let _ = input.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
                if input.write_all(bytes).is_err() {
                    return;
                }
            }
        });
    if let Some(secs) = args.timeout {
        let s = stream.try_clone()?;
        let _ = std::thread::Builder::new()
            .name("console-timer".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_secs(secs));
                let _ = s.shutdown(std::net::Shutdown::Both);
            });
    }
    let mut stdout = io::stdout().lock();
    let mut buf = [0u8; 4096];
    // The tail of what was seen, long enough to find `until` across two reads.
    let mut seen: Vec<u8> = Vec::new();
    let mut found = false;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stdout
            .write_all(&buf[..n])
            .and_then(|_| stdout.flush())
            .is_err()
        {
            break;
        }
        if let Some(text) = args.until.as_deref().filter(|t| !t.is_empty()) {
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(text.len()).any(|w| w == text.as_bytes()) {
                found = true;
                let _ = stream.shutdown(std::net::Shutdown::Both);
                break;
            }
            let cut = seen.len().saturating_sub(text.len() - 1);
            seen.drain(..cut);
        }
    }
    drop(terminal);
    if interactive {
        eprintln!("\r\nvessel: detached from '{}'", args.name);
    }
    if args.until.is_some() && !found {
        bail!(
            "the console of '{}' did not show the text before it closed",
            args.name
        );
    }
    Ok(ExitCode::SUCCESS)
}
