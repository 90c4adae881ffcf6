//! Domain 0 benchmark, in one host box, against QEMU on the same guest:
//!
//! - **start**: from the API call (`vessel create` to a running `vessel daemon`) to the guest's
//!   `/init` marker on its console, for 1 domain and for 4 created at once; QEMU has no daemon,
//!   so its figure is from spawning `qemu-system-x86_64 -M microvm` to the same marker.
//! - **switch**: guest-to-guest TCP (8 MiB with the `tcpblast` guest tool, 64 KiB reads and
//!   writes, timed by the receiver from its first byte to its last)
//!   between two domains on the daemon's virtual switch, against two QEMU guests on TAP devices
//!   joined by a Linux bridge in the same L1 (both with their offloads: checksums and TSO,
//!   and Vessel's mergeable receive buffers); and QEMU again with checksum offload and TSO
//!   turned off, to show what they are worth.
//!
//! During each Vessel transfer the step also takes the CPU times of L1 and of every Vessel
//! thread, and the benchmark prints where L1's CPU went (idle, guests, I/O threads, switch).
//!
//! With `VESSEL_BENCH_BUILDS=LABEL=PATH[,...]` it runs only the Vessel switch transfer, with
//! this build and each of those `vessel` binaries in turn, round after round in one box, and
//! prints each build's throughput: the way to compare before and after a change, since the
//! box's speed varies more between boots than a change moves it.
//!
//! Run with `cargo bench -p vessel --bench daemon`. Not a test: it prints what it measured.
//! `VESSEL_BENCH_ROUNDS` rounds (default 2), alternating Vessel and QEMU, each step in a box of
//! its own; figures are medians of the rounds that finished (a failed round is reported and left
//! out).

mod common;
// The guest tools (tcpblast), built and packed as the box tests do.
#[path = "../tests/boxed/mod.rs"]
mod boxed;

use std::time::Duration;

use testbox::{Assets, HostBox};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
const MIB: u32 = 8;
/// The guest initramfs with the guest tools (`tcpblast`) appended, made by [`WITH_TOOLS`].
const TOOLS_INITRD: &str = "/tmp/initrd";
/// L1 shell: the guest initramfs with the tools archive appended (the kernel unpacks both).
const WITH_TOOLS: &str = "cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd";
const MARKER: &str = "VESSEL-GUEST-INIT";

/// L1 shell: seconds since L1 booted.
const NOW: &str = "$(cut -d' ' -f1 /proc/uptime)";

/// L1 shell: the start steps give up on a guest 120 s after T0 (by L1's clock: a loop count
/// would depend on how slowly L1 runs the loop).
const DEADLINE: &str = "DL=$(( $(cut -d. -f1 /proc/uptime) + 120 ))";
const GIVE_UP: &str = "[ $(cut -d. -f1 /proc/uptime) -ge $DL ]";

/// L1 shell: L1's CPU times (`/proc/stat`'s first line, in ticks) and, for each thread of every
/// `vessel` process, `PID NAME UTIME STIME` (ticks; a vCPU thread's include its guest's time).
const CPU_SNAPSHOT: &str = "(head -1 /proc/stat; for p in $(pidof vessel); do \
     for t in /proc/$p/task/*; do \
     echo $p $(cat $t/comm) $(sed 's/.*) //' $t/stat | cut -d' ' -f12,13); done; done)";

/// Starts the daemon (with the uplink TAP `vtap0` when `uplink`, and the extra arguments in
/// `VESSEL_BENCH_DAEMON_ARGS`) and waits for its socket.
fn daemon(uplink: bool) -> String {
    let uplink = if uplink { " --uplink vtap0" } else { "" };
    let extra = std::env::var("VESSEL_BENCH_DAEMON_ARGS").unwrap_or_default();
    format!(
        "export VESSEL_SOCKET=/tmp/api.sock; rm -rf /tmp/state /tmp/api.sock; \
         vessel daemon --state-dir /tmp/state --socket /tmp/api.sock{uplink} {extra} 2>/tmp/daemon.log & \
         DPID=$!; i=0; while [ ! -S /tmp/api.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done"
    )
}

fn definition(name: &str, cmdline: &str, net: bool) -> String {
    definition_with(name, cmdline, net, "/assets/initramfs.cpio.gz")
}

fn definition_with(name: &str, cmdline: &str, net: bool, initrd: &str) -> String {
    let net = if net {
        r#", "net": ["switch=vsw0"]"#
    } else {
        ""
    };
    format!(
        r#"{{"name": "{name}", "kernel": "/assets/vmlinux", "initrd": "{initrd}", "memory": "256M", "cmdline": "{cmdline}"{net}}}"#
    )
}

/// Vessel: create `n` domains at once through the API, wait for each one's marker.
fn vessel_start(n: usize) -> String {
    let mut s = daemon(false);
    for i in 0..n {
        let def = definition(
            &format!("d{i}"),
            "console=ttyS0 quiet vcmd=\\\"sleep 600\\\"",
            false,
        );
        s.push_str(&format!("; echo '{def}' > /tmp/d{i}.json"));
    }
    s.push_str(&format!("; T0={NOW}; {DEADLINE}"));
    for i in 0..n {
        s.push_str(&format!("; vessel create /tmp/d{i}.json >/dev/null & true"));
    }
    for i in 0..n {
        // The create may still be on its way: a console of an unknown domain fails at once.
        s.push_str(&format!(
            "; until vessel console d{i} --until {MARKER} --timeout 120 >/dev/null 2>&1 \
             && echo UP{i}={NOW}; do {GIVE_UP} && break; sleep 0.02; done"
        ));
    }
    s.push_str("; echo T0=$T0; kill $DPID; wait; true");
    s
}

/// QEMU: spawn `n` microvm guests at once, wait for each one's marker in its output.
fn qemu_start(n: usize) -> String {
    let mut s = format!("T0={NOW}; {DEADLINE}");
    for i in 0..n {
        s.push_str(&format!(
            "; timeout 600 qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 256 -smp 1 \
             -nographic -no-reboot -kernel /assets/vmlinux -initrd /assets/initramfs.cpio.gz \
             -append 'console=ttyS0 quiet vcmd=\"sleep 600\"' </dev/null >/tmp/q{i}.log 2>&1 & \
             Q=\"$Q $!\""
        ));
    }
    for i in 0..n {
        s.push_str(&format!(
            "; until grep -q {MARKER} /tmp/q{i}.log && echo UP{i}={NOW}; do {GIVE_UP} && break; \
             sleep 0.02; done"
        ));
    }
    // (L1's busybox has no pkill.)
    s.push_str("; echo T0=$T0; kill $Q; wait; true");
    s
}

/// Seconds from T0 to the last UPi of a start step.
fn start_seconds(step: &testbox::StepResult, n: usize) -> Result<f64, String> {
    let t0 = common::try_figure(step, "T0=")?;
    let mut last: f64 = 0.0;
    for i in 0..n {
        last = last.max(common::try_figure(step, &format!("UP{i}="))? - t0);
    }
    Ok(last)
}

/// Guest commands: address eth0, wait for the peer, then receive or send `MIB` MiB with
/// `tcpblast` (64 KiB reads and writes; the receiver times the stream from its first byte to its
/// end). The receiver stays up a moment after, so its console can still be read.
fn receiver() -> String {
    "ip addr add 10.0.0.2/24 dev eth0; ip link set eth0 up; \
     timeout 120 /bin/tcpblast recv 5000; grep ^Tcp /proc/net/snmp | tail -1 | while read l; do echo RXTCP $l; done; \
     grep -e virtio -e LOC /proc/interrupts | while read l; do echo RXIRQ $l; done; echo RXDONE; sleep 5"
        .to_string()
}

fn sender() -> String {
    format!(
        "ip addr add 10.0.0.1/24 dev eth0; ip link set eth0 up; i=0; \
         until ping -c 1 -W 1 10.0.0.2 >/dev/null 2>&1; do i=$((i+1)); \
         if [ $i -ge 240 ]; then echo UNREACHABLE; echo TXEND; exit 1; fi; sleep 1; done; sleep 2; \
         echo TX0=$(cat /proc/uptime); \
         /bin/tcpblast send 10.0.0.2 5000 {} || echo SEND-FAILED; \
         echo TX1=$(cat /proc/uptime); grep ^Tcp /proc/net/snmp | tail -1 | while read l; do echo TXTCP $l; done; \
         grep -e virtio -e LOC /proc/interrupts | while read l; do echo TXIRQ $l; done; echo TXEND; sleep 1",
        u64::from(MIB) << 20
    )
}

fn vessel_switch() -> String {
    let b = definition_with(
        "rx",
        &format!("console=ttyS0 quiet vcmd=\\\"{}\\\"", receiver()),
        true,
        TOOLS_INITRD,
    );
    let a = definition_with(
        "tx",
        &format!("console=ttyS0 quiet vcmd=\\\"{}\\\"", sender()),
        true,
        TOOLS_INITRD,
    );
    format!(
        "{WITH_TOOLS}; {}; echo '{b}' > /tmp/rx.json; echo '{a}' > /tmp/tx.json; \
         vessel create /tmp/rx.json >/dev/null; vessel create /tmp/tx.json >/dev/null; \
         vessel console tx --until TX0= --timeout 120 >/dev/null; {snap} > /tmp/s0; \
         vessel console tx --until TX1= --timeout 60 >/dev/null; {snap} > /tmp/s1; \
         vessel console tx --until TXEND --timeout 30 | grep -E 'TX0=|TX1=|FAILED|UNREACHABLE|TXTCP|TXIRQ'; \
         vessel console rx --until RXDONE --timeout 30 | grep -E 'TCPBLAST|RXTCP|RXIRQ'; \
         vessel net ports | sed 's/^/PORTS /'; \
         sed 's/^/S0 /' /tmp/s0; sed 's/^/S1 /' /tmp/s1; \
         kill $DPID; wait; true",
        daemon(false),
        snap = CPU_SNAPSHOT
    )
}

/// A QEMU guest on TAP `tap`; `offloads: false` turns off checksum offload and TSO (which need
/// it) both ways, so the guest sends and receives frames of at most its MTU, like Vessel's.
fn qemu_guest(tap: &str, mac: &str, guest: &str, log: &str, offloads: bool) -> String {
    let off = if offloads {
        ""
    } else {
        ",csum=off,guest_csum=off"
    };
    format!(
        "timeout 200 qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 256 -smp 1 \
         -nographic -no-reboot -kernel /assets/vmlinux -initrd {TOOLS_INITRD} \
         -netdev tap,id=n0,ifname={tap},script=no,downscript=no \
         -device virtio-net-device,netdev=n0,mac={mac}{off} \
         -append 'console=ttyS0 quiet vcmd=\"{guest}\"' </dev/null >{log} 2>&1"
    )
}

/// Two QEMU guests on TAP devices (QEMU creates them; L1's busybox `ip` cannot) joined by a
/// Linux bridge.
fn qemu_bridge(offloads: bool) -> String {
    format!(
        "{WITH_TOOLS}; ip link add br0 type bridge 2>/dev/null || brctl addbr br0; ip link set br0 up; \
         ({}) & ({}) & \
         for t in qtap0 qtap1; do i=0; while [ ! -e /sys/class/net/$t ] && [ $i -lt 300 ]; do \
         sleep 0.1; i=$((i+1)); done; brctl addif br0 $t; ip link set $t up; done; \
         wait; grep -hE 'TX0=|TX1=|FAILED|UNREACHABLE' /tmp/qtx.log; grep -h TCPBLAST /tmp/qrx.log; \
         ip link set br0 down; brctl delbr br0 2>/dev/null || ip link del br0; true",
        qemu_guest(
            "qtap1",
            "02:00:00:00:00:0b",
            &receiver(),
            "/tmp/qrx.log",
            offloads
        ),
        qemu_guest(
            "qtap0",
            "02:00:00:00:00:0a",
            &sender(),
            "/tmp/qtx.log",
            offloads
        ),
    )
}

/// MiB/s of the stream, as the receiver timed it (all of it must have arrived).
fn throughput(step: &testbox::StepResult) -> Result<f64, String> {
    if step.output.contains("FAILED") || step.output.contains("UNREACHABLE") {
        return Err(format!("step {}: the transfer failed", step.name));
    }
    let line = step
        .output
        .lines()
        .find_map(|l| l.trim().strip_prefix("TCPBLAST received="))
        .ok_or_else(|| format!("step {}: the receiver reported nothing", step.name))?;
    let (bytes, seconds) = line
        .split_once(" seconds=")
        .and_then(|(b, s)| Some((b.parse::<u64>().ok()?, s.trim().parse::<f64>().ok()?)))
        .ok_or_else(|| format!("step {}: cannot read '{line}'", step.name))?;
    if bytes != u64::from(MIB) << 20 || seconds <= 0.0 {
        return Err(format!(
            "step {}: {bytes} bytes in {seconds} s arrived, not {MIB} MiB",
            step.name
        ));
    }
    Ok(bytes as f64 / f64::from(1u32 << 20) / seconds)
}

/// Where L1's CPU time went between the `S0` and `S1` snapshots of a switch step: percent of
/// all L1 CPU time that was idle, and of the busy time, the part of each kind of Vessel thread
/// (vCPU threads with their guests, domain I/O threads, the switch thread) and of the rest
/// (the L1 kernel's own work, other threads and processes).
fn cpu_breakdown(step: &testbox::StepResult) -> Option<String> {
    let snapshot = |tag: &str| -> Option<(u64, u64, std::collections::HashMap<String, u64>)> {
        let mut threads = std::collections::HashMap::new();
        let (mut total, mut idle) = (None, 0);
        for line in step.output.lines() {
            let Some(rest) = line.strip_prefix(tag) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.first() == Some(&"cpu") {
                // user nice system idle iowait irq softirq steal (guest is inside user).
                let n: Vec<u64> = f.get(1..9)?.iter().filter_map(|v| v.parse().ok()).collect();
                total = Some(n.iter().sum());
                idle = n.get(3)? + n.get(4)?;
            } else if let [pid, name, user, system] = f[..] {
                let ticks = user.parse::<u64>().ok()? + system.parse::<u64>().ok()?;
                threads.insert(format!("{pid} {name}"), ticks);
            }
        }
        Some((total?, idle, threads))
    };
    let (t0, i0, th0) = snapshot("S0 ")?;
    let (t1, i1, th1) = snapshot("S1 ")?;
    let (total, idle) = (t1.checked_sub(t0)?, i1.checked_sub(i0)?);
    let busy = total.checked_sub(idle)?.max(1);
    let mut kinds = [0u64; 3];
    for (key, end) in &th1 {
        let spent = end.saturating_sub(*th0.get(key).unwrap_or(end));
        let name = key.split_whitespace().nth(1).unwrap_or("");
        match name {
            n if n.starts_with("vcpu") => kinds[0] += spent,
            "io" => kinds[1] += spent,
            "vswitch" => kinds[2] += spent,
            _ => {}
        }
    }
    let pct = |n: u64| 100.0 * n as f64 / busy as f64;
    Some(format!(
        "L1 idle {:.0}%; of the busy time: vCPUs and guests {:.0}%, domain I/O threads {:.0}%, \
         switch thread {:.0}%, the rest (L1 kernel, KVM, other threads) {:.0}%",
        100.0 * idle as f64 / total.max(1) as f64,
        pct(kinds[0]),
        pct(kinds[1]),
        pct(kinds[2]),
        pct(busy.saturating_sub(kinds.iter().sum())),
    ))
}

/// A fresh directory for building the guest tools.
fn tools_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vessel-bench-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the guest tools");
    dir
}

/// `VESSEL_BENCH_BUILDS=LABEL=PATH[,LABEL=PATH...]`: the switch transfer with each of these
/// `vessel` binaries (other builds of Vessel, e.g. before and after a change) and with this
/// build, round after round in one box, so that the box's speed, which varies from one boot to
/// the next, is the same for all.
fn compare_builds(spec: &str, rounds: usize) {
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let mut builds = vec![("this".to_string(), VESSEL.to_string())];
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let (label, path) = item
            .split_once('=')
            .unwrap_or_else(|| panic!("VESSEL_BENCH_BUILDS: '{item}' is not LABEL=PATH"));
        builds.push((label.to_string(), path.to_string()));
    }
    let dir = tools_dir();
    let mut bx = HostBox::new(&assets)
        .file(boxed::guest_tools(&dir), "/tools.cpio.gz")
        .memory_mib(2048)
        .timeout(Duration::from_secs(
            300 + 120 * (rounds * builds.len()) as u64,
        ));
    for (label, path) in &builds {
        bx = bx.binary(path, format!("/opt/{label}/vessel"));
    }
    for round in 0..rounds {
        for (label, _) in &builds {
            bx = bx.step(
                &format!("{label}-{round}"),
                &format!("export PATH=/opt/{label}:$PATH; {}", vessel_switch()),
            );
        }
    }
    let run = bx.run().unwrap_or_else(|e| panic!("host box failed: {e}"));
    println!("guest-to-guest TCP through the switch, {rounds} rounds in one box (MiB/s)");
    let mut this = f64::NAN;
    for (label, _) in &builds {
        let figures: Vec<f64> = (0..rounds)
            .filter_map(|r| {
                let step = run
                    .steps
                    .iter()
                    .find(|s| s.name == format!("{label}-{r}"))?;
                throughput(step)
                    .map_err(|e| eprintln!("bench: {label}: a round is left out: {e}"))
                    .ok()
            })
            .collect();
        let shown: Vec<String> = figures.iter().map(|f| format!("{f:.2}")).collect();
        let median = common::median(figures);
        if label == "this" {
            this = median;
        }
        println!(
            "{label:<12} median {median:>6.2}  this/{label} {:>5.2}  rounds: {}",
            this / median,
            shown.join(" ")
        );
    }
}

fn main() {
    let rounds = common::rounds(2);
    if let Ok(spec) = std::env::var("VESSEL_BENCH_BUILDS") {
        compare_builds(&spec, rounds);
        return;
    }
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let dir = tools_dir();
    let bx = HostBox::new(&assets)
        .file(boxed::guest_tools(&dir), "/tools.cpio.gz")
        .with_qemu()
        .binary(VESSEL, "/bin/vessel")
        .memory_mib(2048)
        .timeout(Duration::from_secs(900));
    let cases: [(&str, String, String); 3] = [
        ("start1", vessel_start(1), qemu_start(1)),
        ("start4", vessel_start(4), qemu_start(4)),
        ("switch", vessel_switch(), qemu_bridge(true)),
    ];
    let mut steps = Vec::new();
    for round in 0..rounds {
        for (name, v, q) in &cases {
            steps.push((format!("{name}-vessel-{round}"), v.clone()));
            steps.push((format!("{name}-qemu-{round}"), q.clone()));
        }
        // QEMU without its offloads, to show what they are worth here.
        steps.push((format!("plain-qemu-{round}"), qemu_bridge(false)));
    }
    let run = common::each_in_own_box(&bx, &steps);
    let median_of =
        |name: &str, vmm: &str, f: &dyn Fn(&testbox::StepResult) -> Result<f64, String>| {
            common::median(common::successes(
                (0..rounds).map(|r| run.get(&format!("{name}-{vmm}-{r}")).and_then(f)),
                &format!("{name} {vmm}"),
            ))
        };
    println!("domain 0 benchmark, {rounds} rounds, each step in a box of its own, medians");
    println!("{:<44}{:>10}{:>10}{:>8}", "", "vessel", "qemu", "ratio");
    for (name, label, n) in [
        ("start1", "API create to /init, 1 domain (s)", 1),
        ("start4", "API create to /init, 4 at once (s)", 4),
    ] {
        let f = |s: &testbox::StepResult| start_seconds(s, n);
        let (v, q) = (median_of(name, "vessel", &f), median_of(name, "qemu", &f));
        println!("{label:<44}{v:>10.2}{q:>10.2}{:>8.2}", v / q);
    }
    let (v, q) = (
        median_of("switch", "vessel", &throughput),
        median_of("switch", "qemu", &throughput),
    );
    println!(
        "{:<44}{v:>10.1}{q:>10.1}{:>8.2}",
        "guest-to-guest TCP via switch/bridge (MiB/s)",
        v / q
    );
    for r in 0..rounds {
        if let Some(b) = run
            .get(&format!("switch-vessel-{r}"))
            .ok()
            .and_then(cpu_breakdown)
        {
            println!("  Vessel round {r} during the transfer: {b}");
        }
    }
    let plain = median_of("plain", "qemu", &throughput);
    println!(
        "{:<44}{v:>10.1}{plain:>10.1}{:>8.2}",
        "  the same, QEMU without offloads (MiB/s)",
        v / plain
    );
}
