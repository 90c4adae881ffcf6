//! `vessel sched`: the daemon's CPU scheduling from the command line, as `xl sched-credit`
//! shows it: every domain's parameters and its share over the scheduler's last interval, one
//! domain's, or a change of one domain's parameters.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use crate::client::{call, print_json, text};
use crate::table::{Align, Table};

/// `vessel sched`.
#[derive(Args)]
pub struct SchedArgs {
    /// The domain; without it, every domain is listed.
    name: Option<String>,
    /// A new weight (1 to 10000).
    #[arg(long, value_name = "N", requires = "name")]
    weight: Option<u32>,
    /// A new cap, in percent of one host CPU (0: none).
    #[arg(long, value_name = "PERCENT", requires = "name")]
    cap: Option<u32>,
    /// A new warp, in milliseconds of virtual time (0: off).
    #[arg(long, value_name = "MS", requires = "name")]
    warp: Option<u32>,
    /// A new warp limit, in milliseconds.
    #[arg(long, value_name = "MS", requires = "name")]
    warp_limit: Option<u32>,
    /// A new unwarp requirement, in milliseconds.
    #[arg(long, value_name = "MS", requires = "name")]
    unwarp: Option<u32>,
    /// Print JSON (the API's answer) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn sched(socket: &Path, args: SchedArgs) -> anyhow::Result<ExitCode> {
    let change = vmm::SchedChange {
        weight: args.weight,
        cap: args.cap,
        warp_ms: args.warp,
        warp_limit_ms: args.warp_limit,
        unwarp_ms: args.unwarp,
    };
    let rows = match &args.name {
        None => call(socket, "GET", "/v1/sched", None)?,
        Some(name) if change.is_empty() => {
            call(socket, "GET", &format!("/v1/domains/{name}/sched"), None)?
        }
        Some(name) => {
            let body = serde_json::to_vec(&change)?;
            call(
                socket,
                "PUT",
                &format!("/v1/domains/{name}/sched"),
                Some(&body),
            )?
        }
    };
    if args.json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows = match rows {
        Value::Array(rows) => rows,
        one => vec![one],
    };
    print!("{}", table(&rows));
    Ok(ExitCode::SUCCESS)
}

/// The rows as a table: parameters, then what the last interval measured ("-" for a domain
/// that does not run).
fn table(rows: &[Value]) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("STATE", Align::Left),
        ("WEIGHT", Align::Right),
        ("CAP", Align::Right),
        ("WARP", Align::Right),
        ("WARP-L", Align::Right),
        ("UNWARP", Align::Right),
        ("CPU%", Align::Right),
        ("SHARE%", Align::Right),
        ("WAIT%", Align::Right),
        ("WARPING", Align::Right),
    ]);
    for r in rows {
        let p = &r["params"];
        let num = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
        let int = |v: &Value| v.as_u64().map_or("?".to_string(), |x| x.to_string());
        table.row(vec![
            text(&r["name"]),
            text(&r["state"]),
            int(&p["weight"]),
            int(&p["cap"]),
            int(&p["warp_ms"]),
            int(&p["warp_limit_ms"]),
            int(&p["unwarp_ms"]),
            num(&r["cpu_percent"]),
            num(&r["share_percent"]),
            num(&r["wait_percent"]),
            r["warp"].as_str().unwrap_or("-").to_string(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_has_a_row_per_domain_and_dashes_for_stopped_ones() {
        let rows = [
            json!({"name": "web", "state": "running",
                   "params": {"weight": 512, "cap": 0, "warp_ms": 0, "warp_limit_ms": 50, "unwarp_ms": 200},
                   "cpu_percent": 61.25, "share_percent": 66.7, "wait_percent": 3.0, "warp": "off"}),
            json!({"name": "db", "state": "shutoff",
                   "params": {"weight": 256, "cap": 25, "warp_ms": 0, "warp_limit_ms": 50, "unwarp_ms": 200}}),
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("web") && lines[1].contains("512") && lines[1].contains("61.2")
        );
        assert!(
            lines[2].contains("25") && lines[2].trim_end().ends_with('-'),
            "{}",
            lines[2]
        );
    }
}
