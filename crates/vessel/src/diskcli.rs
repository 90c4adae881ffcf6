//! `vessel disk ...`: a domain's disks from the command line, as `xl block-list` shows them,
//! and their rate limits changed while the domain runs (as Firecracker's PATCH on a drive).

use std::path::Path;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{call, print_json, text};
use crate::table::{Align, Table};

#[derive(Subcommand)]
pub enum DiskCommand {
    /// A domain's disks in the order its guest sees them (vda, vdb...), with their rate limits.
    List {
        /// The domain.
        name: String,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change a disk's rate limits: kept in the domain's definition and, if it runs, in force
    /// at once (requests held back are judged again under the new limits).
    Set(SetArgs),
}

#[derive(Args)]
#[command(group(ArgGroup::new("limits").required(true).multiple(true).args(["bps", "iops"])))]
pub struct SetArgs {
    /// The domain.
    name: String,
    /// The disk: its id (`id=`, or diskN for the Nth) or the name its guest gives it (vda...).
    disk: String,
    /// Bytes per second (10M, 1.5MiB, 1000000: a bare number is bytes; 0: no limit).
    #[arg(long, value_name = "RATE", value_parser = crate::client::parse_rate_arg)]
    bps: Option<u64>,
    /// Requests per second (0: no limit).
    #[arg(long, value_name = "N")]
    iops: Option<u64>,
    /// Print JSON (the API's answer) instead of a line.
    #[arg(long)]
    json: bool,
}

/// A limit `n` with its unit, or `none` for 0 (no limit).
fn limit(n: &Value, unit: &str, none: &str) -> String {
    match n.as_u64() {
        Some(0) => none.to_string(),
        Some(n) => format!("{n}{unit}"),
        None => "?".to_string(),
    }
}

pub fn disk(socket: &Path, command: DiskCommand) -> anyhow::Result<ExitCode> {
    match command {
        DiskCommand::List { name, json } => {
            let disks = call(socket, "GET", &format!("/v1/domains/{name}/disks"), None)?;
            if json {
                print_json(&disks)?;
            } else {
                print!("{}", table(disks.as_array().map_or(&[], Vec::as_slice)));
            }
        }
        DiskCommand::Set(args) => {
            let mut body = json!({});
            if let Some(bps) = args.bps {
                body["bytes_per_sec"] = json!(bps);
            }
            if let Some(iops) = args.iops {
                body["ops_per_sec"] = json!(iops);
            }
            let path = format!("/v1/domains/{}/disks/{}", args.name, args.disk);
            let d = call(socket, "PUT", &path, Some(&serde_json::to_vec(&body)?))?;
            if args.json {
                print_json(&d)?;
            } else {
                println!(
                    "domain '{}': disk {} ({}): {}, {}",
                    args.name,
                    text(&d["id"]),
                    text(&d["guest_name"]),
                    limit(&d["bytes_per_sec"], " B/s", "no byte limit"),
                    limit(&d["ops_per_sec"], " requests/s", "no request limit"),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The disks as a table.
fn table(disks: &[Value]) -> String {
    let mut table = Table::new(&[
        ("GUEST", Align::Left),
        ("ID", Align::Left),
        ("FORMAT", Align::Left),
        ("MODE", Align::Left),
        ("BPS", Align::Right),
        ("IOPS", Align::Right),
        ("PATH", Align::Left),
    ]);
    for d in disks {
        table.row(vec![
            text(&d["guest_name"]),
            text(&d["id"]),
            d["format"].as_str().unwrap_or("-").to_string(),
            if d["readonly"].as_bool() == Some(true) {
                "ro"
            } else {
                "rw"
            }
            .to_string(),
            limit(&d["bytes_per_sec"], "", "none"),
            limit(&d["ops_per_sec"], "", "none"),
            text(&d["path"]),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_disk_with_none_for_no_limit() {
        let disks = [
            json!({"id": "disk0", "guest_name": "vda", "path": "/img/root.qcow2", "format": "qcow2",
                   "readonly": false, "bytes_per_sec": 0, "ops_per_sec": 0}),
            json!({"id": "data", "guest_name": "vdb", "path": "/img/data.raw", "format": "raw",
                   "readonly": true, "bytes_per_sec": 1048576, "ops_per_sec": 200}),
        ];
        let t = table(&disks);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[1].starts_with("vda") && lines[1].contains("none"),
            "{t}"
        );
        assert!(
            lines[2].contains("ro") && lines[2].contains("1048576") && lines[2].contains("200"),
            "{t}"
        );
    }
}
