//! `vessel net ...`: the daemon's virtual switch from the command line: its ports, its rules
//! and its default policy.

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::client::{call, print_json, text};
use crate::table::{Align, Table};

#[derive(Subcommand)]
pub enum NetCommand {
    /// The switch's ports (one per VIF, and the uplink) with their learned MACs and counters.
    Ports {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change a switch port.
    #[command(subcommand)]
    Port(PortCommand),
    /// The switch's firewall rules.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Show the default policy, or set it (accept or drop).
    Policy { policy: Option<String> },
}

#[derive(Subcommand)]
pub enum PortCommand {
    /// Set a port's rate: the switch sends the port at most this much, like a link of that
    /// speed. In force at once on a port on the switch; a domain's port (DOMAIN-ethN) keeps it
    /// in the domain's definition, the uplink's lasts until the daemon stops.
    Set {
        /// The port (`vessel net ports` lists them): DOMAIN-ethN for a domain's VIF N.
        port: String,
        /// Bytes per second (10M, 1.5MiB, 1000000: a bare number is bytes; 0: no limit).
        #[arg(long, value_name = "RATE", value_parser = crate::client::parse_rate_arg)]
        bps: u64,
    },
}

#[derive(Subcommand)]
pub enum RuleCommand {
    /// Add a rule: a JSON rule (docs/api.md), or the flags below.
    Add(Box<RuleArgs>),
    /// Delete rule ID.
    Del { id: u64 },
    /// List the rules in evaluation order with their counters.
    List {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct RuleArgs {
    /// A whole rule as JSON, e.g. '{"pattern":{"proto":"icmp"},"action":"drop"}'.
    #[arg(value_name = "JSON", conflicts_with_all = ["action"])]
    json: Option<String>,
    /// Insert at this position (0 is first); default: append.
    #[arg(long)]
    position: Option<usize>,
    /// accept, drop, or rate-limit=BYTES_PER_SEC[:BURST] (bytes; K, M, G suffixes binary,
    /// e.g. rate-limit=1M:64K).
    #[arg(long, required_unless_present = "json")]
    action: Option<String>,
    /// Frames entering from this switch port.
    #[arg(long)]
    in_port: Option<String>,
    /// Frames leaving through this switch port.
    #[arg(long)]
    out_port: Option<String>,
    /// Frames from this domain.
    #[arg(long)]
    src_domain: Option<String>,
    /// Frames to this domain.
    #[arg(long)]
    dst_domain: Option<String>,
    /// Source MAC.
    #[arg(long)]
    src_mac: Option<String>,
    /// Destination MAC.
    #[arg(long)]
    dst_mac: Option<String>,
    /// ipv4, arp, ipv6 or a number.
    #[arg(long)]
    ethertype: Option<String>,
    /// Source IP prefix (CIDR).
    #[arg(long)]
    src_ip: Option<String>,
    /// Destination IP prefix (CIDR).
    #[arg(long)]
    dst_ip: Option<String>,
    /// icmp, tcp, udp, icmpv6 or a number.
    #[arg(long)]
    proto: Option<String>,
    /// TCP/UDP source port or range (first-last).
    #[arg(long)]
    sport: Option<String>,
    /// TCP/UDP destination port or range (first-last).
    #[arg(long)]
    dport: Option<String>,
}

/// A number, or the string as given (the daemon validates either).
fn number_or_text(s: &str) -> Value {
    s.parse::<u64>().map_or_else(|_| json!(s), |n| json!(n))
}

fn rule_json(args: &RuleArgs) -> anyhow::Result<String> {
    if let Some(json) = &args.json {
        return Ok(json.clone());
    }
    let mut pattern = Map::new();
    let text_fields = [
        ("in_port", &args.in_port),
        ("out_port", &args.out_port),
        ("src_domain", &args.src_domain),
        ("dst_domain", &args.dst_domain),
        ("src_mac", &args.src_mac),
        ("dst_mac", &args.dst_mac),
        ("src_ip", &args.src_ip),
        ("dst_ip", &args.dst_ip),
    ];
    for (key, value) in text_fields {
        if let Some(v) = value {
            pattern.insert(key.into(), json!(v));
        }
    }
    for (key, value) in [
        ("ethertype", &args.ethertype),
        ("proto", &args.proto),
        ("sport", &args.sport),
        ("dport", &args.dport),
    ] {
        if let Some(v) = value {
            pattern.insert(key.into(), number_or_text(v));
        }
    }
    let action = match args.action.as_deref().unwrap_or("") {
        "accept" => json!("accept"),
        "drop" => json!("drop"),
        other => {
            let Some(spec) = other.strip_prefix("rate-limit=") else {
                anyhow::bail!("--action must be accept, drop or rate-limit=BYTES_PER_SEC[:BURST], not '{other}'");
            };
            let (rate, burst) = spec.split_once(':').unwrap_or((spec, ""));
            let rate = vmm::parse_rate(rate)
                .filter(|&r| r > 0)
                .ok_or_else(|| anyhow::anyhow!("bad rate '{rate}' in --action"))?;
            let burst = if burst.is_empty() {
                (rate / 10).max(64 * 1024)
            } else {
                vmm::parse_rate(burst)
                    .ok_or_else(|| anyhow::anyhow!("bad burst '{burst}' in --action"))?
            };
            json!({ "rate_limit": { "bytes_per_sec": rate, "burst": burst } })
        }
    };
    Ok(json!({ "pattern": pattern, "action": action }).to_string())
}

pub fn net(socket: &Path, command: NetCommand) -> anyhow::Result<ExitCode> {
    match command {
        NetCommand::Port(PortCommand::Set { port, bps }) => {
            let body = serde_json::to_vec(&json!({ "rate_bytes_per_sec": bps }))?;
            let set = call(socket, "PUT", &format!("/v1/net/ports/{port}"), Some(&body))?;
            let rate = set["rate_bytes_per_sec"]
                .as_u64()
                .map_or_else(|| "no limit".to_string(), |r| format!("{r} B/s"));
            let when = if set["on_switch"].as_bool() == Some(true) {
                "now"
            } else {
                "from its domain's next start"
            };
            println!("port {port}: {rate} {when}");
        }
        NetCommand::Ports { json } => {
            let ports = call(socket, "GET", "/v1/net/ports", None)?;
            if json {
                print_json(&ports)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&[
                ("PORT", Align::Left),
                ("DOMAIN", Align::Left),
                ("RX-FRAMES", Align::Right),
                ("RX-BYTES", Align::Right),
                ("TX-FRAMES", Align::Right),
                ("TX-BYTES", Align::Right),
                ("DROPS", Align::Right),
                ("WAITS", Align::Right),
                ("RATE", Align::Right),
                ("MACS", Align::Left),
            ]);
            for p in ports.as_array().into_iter().flatten() {
                let c = &p["counters"];
                let n = |k: &str| c[k].as_u64().unwrap_or(0);
                let macs: Vec<&str> = p["macs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                table.row(vec![
                    text(&p["name"]),
                    p["domain"].as_str().unwrap_or("(uplink)").to_string(),
                    n("rx_frames").to_string(),
                    n("rx_bytes").to_string(),
                    n("tx_frames").to_string(),
                    n("tx_bytes").to_string(),
                    (n("tx_dropped") + n("rx_errors") + n("rx_filtered")).to_string(),
                    n("tx_waits").to_string(),
                    p["rate_bytes_per_sec"]
                        .as_u64()
                        .map_or_else(|| "-".to_string(), |r| r.to_string()),
                    if macs.is_empty() {
                        "-".to_string()
                    } else {
                        macs.join(",")
                    },
                ]);
            }
            print!("{}", table.render());
        }
        NetCommand::Rule(RuleCommand::List { json }) => {
            let rules = call(socket, "GET", "/v1/net/rules", None)?;
            if json {
                print_json(&rules)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&[
                ("ID", Align::Right),
                ("FRAMES", Align::Right),
                ("BYTES", Align::Right),
                ("DROPPED", Align::Right),
                ("UNPARSED", Align::Right),
                ("RULE", Align::Left),
            ]);
            for r in rules.as_array().into_iter().flatten() {
                let c = &r["counters"];
                let n = |v: &Value| v.as_u64().map_or("-".to_string(), |x| x.to_string());
                table.row(vec![
                    n(&r["id"]),
                    n(&c["frames"]),
                    n(&c["bytes"]),
                    n(&c["dropped"]),
                    n(&c["unparsed"]),
                    r["rule"].to_string(),
                ]);
            }
            print!("{}", table.render());
        }
        NetCommand::Rule(RuleCommand::Add(args)) => {
            let body = rule_json(&args)?;
            let path = match args.position {
                Some(p) => format!("/v1/net/rules?position={p}"),
                None => "/v1/net/rules".into(),
            };
            let v = call(socket, "POST", &path, Some(body.as_bytes()))?;
            println!("rule {} added", v["id"]);
        }
        NetCommand::Rule(RuleCommand::Del { id }) => {
            call(socket, "DELETE", &format!("/v1/net/rules/{id}"), None)?;
            println!("rule {id} deleted");
        }
        NetCommand::Policy { policy } => {
            let v = match policy {
                None => call(socket, "GET", "/v1/net/policy", None)?,
                Some(p) => {
                    let body = json!({ "default": p }).to_string();
                    call(socket, "PUT", "/v1/net/policy", Some(body.as_bytes()))?
                }
            };
            println!("default policy: {}", v["default"].as_str().unwrap_or("?"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
