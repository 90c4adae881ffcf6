//! Domain 0 benchmark, in one host box, against QEMU on the same guest:
//!
//! - **start**: from the API call (`vessel create` to a running `vessel daemon`) to the guest's
//!   `/init` marker on its console, for 1 domain and for 4 created at once; QEMU has no daemon,
//!   so its figure is from spawning `qemu-system-x86_64 -M microvm` to the same marker.
//! - **switch**: guest-to-guest TCP (4 MiB through `nc`, timed by the sender's own clock)
//!   between two domains on the daemon's virtual switch, against two QEMU guests on TAP devices
//!   joined by a Linux bridge in the same L1; and again with QEMU's checksum offload and TSO
//!   turned off (Vessel's virtio-net has none yet), so both move the same frames.
//!
//! Run with `cargo bench -p vessel --bench daemon`. Not a test: it prints what it measured.
//! `VESSEL_BENCH_ROUNDS` rounds (default 2), alternating Vessel and QEMU, each step in a box of
//! its own; figures are medians of the rounds that finished (a failed round is reported and left
//! out).

mod common;

use std::time::Duration;

use testbox::{Assets, HostBox};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
const MIB: u32 = 4;
const MARKER: &str = "VESSEL-GUEST-INIT";

/// L1 shell: seconds since L1 booted.
const NOW: &str = "$(cut -d' ' -f1 /proc/uptime)";

/// L1 shell: the start steps give up on a guest 120 s after T0 (by L1's clock: a loop count
/// would depend on how slowly L1 runs the loop).
const DEADLINE: &str = "DL=$(( $(cut -d. -f1 /proc/uptime) + 120 ))";
const GIVE_UP: &str = "[ $(cut -d. -f1 /proc/uptime) -ge $DL ]";

/// Starts the daemon (with the uplink TAP `vtap0` when `uplink`, and the extra arguments in
/// `VESSEL_BENCH_DAEMON_ARGS`) and waits for its socket.
fn daemon(uplink: bool) -> String {
    let uplink = if uplink { " --uplink vtap0" } else { "" };
    let extra = std::env::var("VESSEL_BENCH_DAEMON_ARGS").unwrap_or_default();
    format!(
        "export VESSEL_SOCKET=/tmp/api.sock; rm -rf /tmp/state; \
         vessel daemon --state-dir /tmp/state --socket /tmp/api.sock{uplink} {extra} 2>/tmp/daemon.log & \
         DPID=$!; i=0; while [ ! -S /tmp/api.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done"
    )
}

fn definition(name: &str, cmdline: &str, net: bool) -> String {
    let net = if net {
        r#", "net": ["switch=vsw0"]"#
    } else {
        ""
    };
    format!(
        r#"{{"name": "{name}", "kernel": "/assets/vmlinux", "initrd": "/assets/initramfs.cpio.gz", "memory": "256M", "cmdline": "{cmdline}"{net}}}"#
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

/// Guest commands: address eth0, wait for the peer, then receive or send `MIB` MiB.
fn receiver() -> String {
    "ip addr add 10.0.0.2/24 dev eth0; ip link set eth0 up; \
     timeout 120 nc -l -p 5000 > /dev/null; echo RXDONE"
        .to_string()
}

fn sender() -> String {
    format!(
        "ip addr add 10.0.0.1/24 dev eth0; ip link set eth0 up; i=0; \
         until ping -c 1 -W 1 10.0.0.2 >/dev/null 2>&1; do i=$((i+1)); \
         if [ $i -ge 240 ]; then echo UNREACHABLE; echo TXEND; exit 1; fi; sleep 1; done; sleep 2; \
         echo TX0=$(cat /proc/uptime); \
         dd if=/dev/zero bs=64k count={} 2>/dev/null | nc 10.0.0.2 5000 || echo SEND-FAILED; \
         echo TX1=$(cat /proc/uptime); echo TXEND; sleep 1",
        MIB * 16
    )
}

fn vessel_switch() -> String {
    let b = definition(
        "rx",
        &format!("console=ttyS0 quiet vcmd=\\\"{}\\\"", receiver()),
        true,
    );
    let a = definition(
        "tx",
        &format!("console=ttyS0 quiet vcmd=\\\"{}\\\"", sender()),
        true,
    );
    format!(
        "{}; echo '{b}' > /tmp/rx.json; echo '{a}' > /tmp/tx.json; \
         vessel create /tmp/rx.json >/dev/null; vessel create /tmp/tx.json >/dev/null; \
         vessel console tx --until TXEND --timeout 200 | grep -E 'TX0=|TX1=|FAILED|UNREACHABLE'; \
         kill $DPID; wait; true",
        daemon(false)
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
         -nographic -no-reboot -kernel /assets/vmlinux -initrd /assets/initramfs.cpio.gz \
         -netdev tap,id=n0,ifname={tap},script=no,downscript=no \
         -device virtio-net-device,netdev=n0,mac={mac}{off} \
         -append 'console=ttyS0 quiet vcmd=\"{guest}\"' </dev/null >{log} 2>&1"
    )
}

/// Two QEMU guests on TAP devices (QEMU creates them; L1's busybox `ip` cannot) joined by a
/// Linux bridge.
fn qemu_bridge(offloads: bool) -> String {
    format!(
        "ip link add br0 type bridge 2>/dev/null || brctl addbr br0; ip link set br0 up; \
         ({}) & ({}) & \
         for t in qtap0 qtap1; do i=0; while [ ! -e /sys/class/net/$t ] && [ $i -lt 300 ]; do \
         sleep 0.1; i=$((i+1)); done; brctl addif br0 $t; ip link set $t up; done; \
         wait; grep -hE 'TX0=|TX1=|FAILED|UNREACHABLE' /tmp/qtx.log; \
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

fn throughput(step: &testbox::StepResult) -> Result<f64, String> {
    if step.output.contains("FAILED") || step.output.contains("UNREACHABLE") {
        return Err(format!("step {}: the transfer failed", step.name));
    }
    Ok(f64::from(MIB) / (common::try_figure(step, "TX1=")? - common::try_figure(step, "TX0=")?))
}

fn main() {
    let rounds = common::rounds(2);
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let bx = HostBox::new(&assets)
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
        // Vessel's virtio-net has no offloads yet: QEMU without them too, for the same frames.
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
    let plain = median_of("plain", "qemu", &throughput);
    println!(
        "{:<44}{v:>10.1}{plain:>10.1}{:>8.2}",
        "  the same, QEMU without offloads (MiB/s)",
        v / plain
    );
}
