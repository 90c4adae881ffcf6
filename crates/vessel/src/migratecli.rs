//! `vessel migrate` and `vessel migrate-receive`: live migration between daemons.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use crate::client::{call, print_started};

/// `vessel migrate`.
#[derive(Args)]
pub struct MigrateArgs {
    /// The running or paused domain to move.
    name: String,
    /// Where the receiving daemon listens (`vessel migrate-receive` there): tcp:HOST:PORT.
    to: String,
    /// The secret the receiver was given (`vessel migrate-receive --token`): only a sender
    /// that presents it is let in.
    #[arg(long)]
    token: String,
    /// The longest pause the guest should see, in milliseconds: memory is copied while it
    /// runs until what is left can go in this long (and while each round halves what is
    /// left).
    #[arg(long, value_name = "MS", default_value_t = vmm::migration::DEFAULT_DOWNTIME_MS)]
    downtime: u64,
    /// The most to send, in MiB per second (default: as fast as the link goes).
    #[arg(long, value_name = "MIB_PER_S")]
    bandwidth: Option<u64>,
}

/// `vessel migrate-receive`.
#[derive(Args)]
pub struct MigrateReceiveArgs {
    /// Where to listen for the migration: tcp:HOST:PORT (as the sender will be told).
    listen: String,
    /// A secret the sender must present (`vessel migrate --token`); a connection without it
    /// is refused and the wait goes on. The stream itself is not encrypted: migrate over a
    /// network you trust.
    #[arg(long)]
    token: String,
    /// The name to give the domain here (default: its name on the sender).
    #[arg(long)]
    name: Option<String>,
    /// How long to wait for the migration to arrive.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    wait: u64,
}

pub fn migrate(socket: &Path, args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let mut body = json!({ "to": args.to, "token": args.token, "downtime_ms": args.downtime });
    if let Some(mib) = args.bandwidth {
        let bytes = mib
            .checked_mul(1 << 20)
            .ok_or_else(|| anyhow::anyhow!("--bandwidth {mib} MiB/s is too large"))?;
        body["bandwidth_bytes"] = json!(bytes);
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = show_progress(socket, &args.name, done.clone());
    let answer = call(
        socket,
        "POST",
        &format!("/v1/domains/{}/migrate", args.name),
        Some(&serde_json::to_vec(&body)?),
    );
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = progress.join();
    let v = answer?;
    println!(
        "domain '{}' migrated to {} in {} ms: downtime {} ms, {} rounds, {:.1} MiB sent ({} pages, {} in the last round)",
        args.name,
        args.to,
        v["total_ms"],
        v["downtime_ms"],
        v["rounds"],
        v["bytes"].as_u64().unwrap_or(0) as f64 / f64::from(1 << 20),
        v["pages"],
        v["last_pages"],
    );
    if let Some(why) = v["unconfirmed"].as_str() {
        println!("warning: {why}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a progress line on stderr for each pre-copy round of domain `name`'s migration (as
/// its info shows it), and one a second while a round is under way, until `done`.
fn show_progress(
    socket: &Path,
    name: &str,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::time::{Duration, Instant};
    let (socket, name) = (socket.to_path_buf(), name.to_string());
    std::thread::spawn(move || {
        let (mut shown_round, mut shown_bytes) = (0, 0);
        let mut shown_at = Instant::now();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(250));
            let Ok(v) = call(&socket, "GET", &format!("/v1/domains/{name}"), None) else {
                continue;
            };
            let p = &v["migration"];
            let round = p["round"].as_u64().unwrap_or(0);
            let sent = p["sent_bytes"].as_u64().unwrap_or(0);
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
            if round > shown_round {
                eprintln!(
                    "migrating '{name}': round {round}, {:.1} MiB sent, {} pages dirtied at \
                     {:.1} MiB/s, expected downtime {} ms",
                    mib(sent),
                    p["dirty_pages"],
                    mib(p["dirty_bytes_per_s"].as_u64().unwrap_or(0)),
                    p["expected_downtime_ms"]
                );
            } else if sent > shown_bytes && shown_at.elapsed() >= Duration::from_secs(1) {
                eprintln!(
                    "migrating '{name}': round {} under way, {:.1} MiB sent",
                    round + 1,
                    mib(sent)
                );
            } else {
                continue;
            }
            (shown_round, shown_bytes, shown_at) = (round, sent, Instant::now());
        }
    })
}

pub fn migrate_receive(socket: &Path, args: MigrateReceiveArgs) -> anyhow::Result<ExitCode> {
    let mut body = json!({ "listen": args.listen, "token": args.token, "wait_s": args.wait });
    if let Some(name) = args.name {
        body["name"] = json!(name);
    }
    let v = call(
        socket,
        "POST",
        "/v1/migrate-receive",
        Some(&serde_json::to_vec(&body)?),
    )?;
    print_started(&v);
    Ok(ExitCode::SUCCESS)
}
