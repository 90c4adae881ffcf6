//! How often the host box fails under each TCG set-up: L1 deaths (resets, lockups, timeouts)
//! and L2 guests that triple-fault, while three CPU-bound Linux domains (`tests/guest/spin.c`)
//! run under the daemon for `VESSEL_STABILITY_SECONDS` (default 150). The box is booted once per
//! round, never retried, so every death counts.
//!
//! Run with `cargo bench -p vessel --bench box_stability`. `VESSEL_STABILITY_SETUPS` lists the
//! set-ups as `CPU/THREADS` separated by `;` (default
//! `max/multi;EPYC-v3,+svm,+npt/multi;max/single`: the emulated CPU model, and one host thread
//! per L1 CPU or one for all); `VESSEL_STABILITY_ROUNDS` boots per set-up (default 1). Not a
//! test: it prints what it measured, for the choice of set-up in docs/benchmarks.md.

use std::time::{Duration, Instant};

use testbox::{Assets, HostBox};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");
#[path = "../tests/boxed/mod.rs"]
mod boxed;

fn script(seconds: u64) -> String {
    format!(
        r#"cat /assets/initramfs.cpio.gz /tools.cpio.gz > /tmp/initrd
export VESSEL_SOCKET=/tmp/api.sock
vessel daemon --state-dir /tmp/state --socket $VESSEL_SOCKET --shutdown-timeout 10 2>/tmp/daemon.log &
daemon=$!
trap 'kill $daemon; wait' EXIT
i=0; while ! vessel list >/dev/null 2>&1 && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
for w in 1 2 3; do
  echo "{{\"name\": \"w$w\", \"kernel\": \"/assets/bzImage\", \"initrd\": \"/tmp/initrd\", \"memory\": \"112M\", \"cmdline\": \"console=ttyS0 quiet panic=-1 vscript=worker vip=10.0.1.$w\", \"net\": [\"switch=vsw0\"]}}" > /tmp/w$w.json
  vessel create /tmp/w$w.json >/dev/null && echo CREATED=w$w
done
T0=$(cut -d' ' -f1 /proc/uptime)
sleep {seconds}
for w in 1 2 3; do
  vessel info w$w | grep -E '"state"|"message"' | tr -d '\n' | sed "s/^/STATE_w$w /"; echo
done
echo UP=$T0,$(cut -d' ' -f1 /proc/uptime)
echo DONE=1"#
    )
}

fn main() {
    let seconds: u64 = std::env::var("VESSEL_STABILITY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let rounds: usize = std::env::var("VESSEL_STABILITY_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let setups = std::env::var("VESSEL_STABILITY_SETUPS")
        .unwrap_or_else(|_| "max/multi;EPYC-v3,+svm,+npt/multi;max/single".into());
    let dir = std::env::temp_dir().join(format!("vessel-stability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = boxed::guest_tools(&dir);
    let assets = Assets::locate().expect("guest assets");
    for setup in setups.split(';') {
        let (cpu, threads) = setup.split_once('/').unwrap_or((setup, "multi"));
        std::env::set_var("VESSEL_BOX_CPU", cpu);
        std::env::set_var("VESSEL_BOX_TCG_THREAD", threads);
        let (mut l1_deaths, mut l2_crashes, mut finished) = (Vec::new(), 0, 0);
        for round in 0..rounds {
            let started = Instant::now();
            let run = HostBox::new(&assets)
                .binary(VESSEL, "/bin/vessel")
                .timeout(Duration::from_secs(600 + 2 * seconds))
                .memory_mib(2048)
                .file(&tools, "/tools.cpio.gz")
                .step("stability", &script(seconds))
                .run_without_retries();
            let wall = started.elapsed().as_secs_f64();
            match run {
                Err(e) => {
                    let why = e.to_string().lines().next().unwrap_or("").to_string();
                    println!(
                        "box_stability {setup} round {round}: L1 died after {wall:.0} s: {why}"
                    );
                    // Its console's end: an L1 death, or something of ours that hung?
                    let lines: Vec<&str> = e.console().unwrap_or("").lines().collect();
                    for l in &lines[lines.len().saturating_sub(12)..] {
                        println!("  console: {l}");
                    }
                    l1_deaths.push(why);
                }
                Ok(run) => {
                    let out = &run.step("stability").output;
                    let crashed: Vec<&str> = out
                        .lines()
                        .filter(|l| l.starts_with("STATE_") && l.contains("crashed"))
                        .collect();
                    let done = out.contains("DONE=1");
                    finished += usize::from(done);
                    l2_crashes += crashed.len();
                    println!(
                        "box_stability {setup} round {round}: {} in {wall:.0} s; {} of 3 guests \
                         crashed {crashed:?}",
                        if done { "finished" } else { "did not finish" },
                        crashed.len()
                    );
                }
            }
        }
        println!(
            "box_stability {setup}: {rounds} boots, {} L1 deaths, {finished} finished, {l2_crashes} \
             guest crashes among {} guests",
            l1_deaths.len(),
            3 * finished
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
