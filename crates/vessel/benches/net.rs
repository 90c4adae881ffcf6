//! Guest-to-guest TCP benchmark: two Vessel domains joined by Vessel's Unix datagram link
//! against two QEMU (`-M microvm`) guests joined by QEMU's equivalent (`-netdev dgram` over
//! Unix sockets), in one host box, same guest kernel and initramfs.
//!
//! Run with `cargo bench -p vessel --bench net`. Not a test: it prints what it measured. In each
//! pair, guest B listens with `nc`, guest A sends 16 MiB of zeros through `nc` and times it with
//! its own clock; throughput is 16 MiB over that time. `VESSEL_BENCH_ROUNDS` rounds (default 2),
//! alternating Vessel and QEMU, each pair in a box of its own; the figures are medians of the
//! rounds that finished (a round whose guest or whose L1 died is reported and left out).

mod common;

use std::time::Duration;

use testbox::{Assets, HostBox, StepResult};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
const MIB: u32 = 16;

/// Guest commands: address eth0 and wait until `peer` answers a ping.
fn up(addr: &str, peer: &str) -> String {
    format!(
        "ip addr add {addr}/24 dev eth0; ip link set eth0 up; i=0; \
         until ping -c 1 -W 1 {peer} >/dev/null 2>&1; do i=$((i+1)); \
         if [ $i -ge 240 ]; then echo UNREACHABLE; exit 1; fi; sleep 1; done"
    )
}

fn receiver() -> String {
    format!(
        "{}; timeout 120 nc -l -p 5000 > /dev/null; echo RXDONE",
        up("10.0.0.2", "10.0.0.1")
    )
}

fn sender() -> String {
    format!(
        "{}; sleep 2; echo T0=$(cat /proc/uptime); \
         dd if=/dev/zero bs=64k count={} 2>/dev/null | nc 10.0.0.2 5000 || echo SEND-FAILED; \
         echo T1=$(cat /proc/uptime)",
        up("10.0.0.1", "10.0.0.2"),
        MIB * 16
    )
}

/// An L1 step running `b` and `a` in the background and waiting for both.
fn pair(b: &str, a: &str) -> String {
    format!(
        "rm -f /tmp/*.sock; ({b}) >/tmp/b.log 2>&1 & pb=$!; sleep 1; ({a}) >/tmp/a.log 2>&1 & pa=$!; \
         wait $pa; wait $pb; cat /tmp/a.log /tmp/b.log | grep -E 'T0=|T1=|RXDONE|FAILED|UNREACHABLE'"
    )
}

fn vessel(net: &str, guest: &str) -> String {
    format!(
        "timeout 200 vessel run --kernel /assets/vmlinux --initrd /assets/initramfs.cpio.gz \
         --memory 256M --net {net} --cmdline 'console=ttyS0 quiet vcmd=\"{guest}\"' </dev/null"
    )
}

fn qemu(local: &str, remote: &str, mac: &str, guest: &str) -> String {
    format!(
        "timeout 200 qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 256 -smp 1 \
         -nographic -no-reboot -kernel /assets/vmlinux -initrd /assets/initramfs.cpio.gz \
         -netdev dgram,id=n0,local.type=unix,local.path={local},remote.type=unix,remote.path={remote} \
         -device virtio-net-device,netdev=n0,mac={mac} \
         -append 'console=ttyS0 quiet vcmd=\"{guest}\"' </dev/null"
    )
}

/// MB/s of one pair's transfer, or why the step has no figure (a guest that failed or died:
/// under TCG an L2 guest occasionally triple-faults, whichever VMM runs it).
fn throughput(step: &StepResult) -> Result<f64, String> {
    let out = &step.output;
    if !out.contains("RXDONE") || out.contains("FAILED") {
        return Err(format!("step {} did not finish its transfer", step.name));
    }
    let secs = common::try_figure(step, "T1=")? - common::try_figure(step, "T0=")?;
    Ok(f64::from(MIB) / secs)
}

fn main() {
    let rounds = common::rounds(2);
    let assets = Assets::locate().unwrap_or_else(|e| panic!("guest assets unavailable: {e}"));
    let vessel_pair = pair(
        &vessel("socket=/tmp/b.sock,peer=/tmp/a.sock", &receiver()),
        &vessel("socket=/tmp/a.sock,peer=/tmp/b.sock", &sender()),
    );
    let qemu_pair = pair(
        &qemu(
            "/tmp/b.sock",
            "/tmp/a.sock",
            "02:00:00:00:00:0b",
            &receiver(),
        ),
        &qemu("/tmp/a.sock", "/tmp/b.sock", "02:00:00:00:00:0a", &sender()),
    );
    let bx = HostBox::new(&assets)
        .with_qemu()
        .binary(VESSEL, "/bin/vessel")
        .timeout(Duration::from_secs(900));
    let start = std::time::Instant::now();
    let steps: Vec<(String, String)> = (0..rounds)
        .flat_map(|i| {
            [
                (format!("vessel-{i}"), vessel_pair.clone()),
                (format!("qemu-{i}"), qemu_pair.clone()),
            ]
        })
        .collect();
    let run = common::each_in_own_box(&bx, &steps);
    let figures = |vmm: &str| -> Vec<f64> {
        common::successes(
            (0..rounds).map(|i| run.get(&format!("{vmm}-{i}")).and_then(throughput)),
            vmm,
        )
    };
    let (v, q) = (figures("vessel"), figures("qemu"));
    let (mv, mq) = (common::median(v.clone()), common::median(q.clone()));
    println!("guest-to-guest TCP, {MIB} MiB per transfer, {rounds} rounds, one box run");
    println!(
        "{:<28}{:>10}{:>10}{:>8}",
        "median", "vessel", "qemu", "ratio"
    );
    println!(
        "{:<28}{mv:>10.1}{mq:>10.1}{:>8.2}   vessel {v:?} qemu {q:?}",
        "throughput (MB/s)",
        mv / mq
    );
    println!(
        "wall time, {} boxes: {:.1} s",
        steps.len(),
        start.elapsed().as_secs_f64()
    );
}
