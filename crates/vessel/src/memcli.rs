//! `vessel mem`: the host's memory as the daemon sees it (its free state, what the domains were
//! given, what page sharing saves) and each running domain's memory (`GET /v1/memory`).

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use crate::client::{call, print_json, text, ListArgs};
use crate::table::{Align, Table};

/// Prints the memory view.
pub fn mem(socket: &Path, args: ListArgs) -> anyhow::Result<ExitCode> {
    let v = call(socket, "GET", "/v1/memory", None)?;
    if args.json {
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&v));
    Ok(ExitCode::SUCCESS)
}

/// Bytes in MiB, or `-`.
fn mib(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |b| format!("{}M", b >> 20))
}

/// The view as text: the host's lines, then a table of the domains.
fn render(v: &Value) -> String {
    let mut out = String::new();
    out += &format!(
        "host memory   : {} MiB, {} MiB available (free state: {})\n",
        v["total_bytes"]
            .as_u64()
            .map_or("?".into(), |b| (b >> 20).to_string()),
        v["available_bytes"]
            .as_u64()
            .map_or("?".into(), |b| (b >> 20).to_string()),
        text(&v["free_state"]),
    );
    out += &format!(
        "memory pool   : {} MiB, {} MiB reserved, idle memory tax {}\n",
        v["pool_bytes"].as_u64().unwrap_or(0) >> 20,
        v["reserved_bytes"].as_u64().unwrap_or(0) >> 20,
        v["idle_tax"].as_f64().unwrap_or(0.0),
    );
    let pool = &v["pool"];
    out += &format!(
        "pool state    : {}, {} MiB free\n",
        text(&pool["state"]),
        pool["free_bytes"].as_i64().unwrap_or(0) >> 20,
    );
    out += &format!(
        "given         : {} MiB to {} domains\n",
        v["given_bytes"].as_u64().unwrap_or(0) >> 20,
        v["domains"].as_array().map_or(0, Vec::len)
    );
    let sharing = &v["page_sharing"];
    out += &if sharing.is_null() {
        "page sharing  : off\n".to_string()
    } else {
        format!(
            "page sharing  : on, {} MiB saved ({} distinct pages kept once), scanning {} pages \
             every {} ms, {} full passes\n",
            sharing["saved_bytes"].as_u64().unwrap_or(0) >> 20,
            sharing["shared_pages"],
            sharing["pages_per_batch"],
            sharing["sleep_ms"],
            sharing["full_scans"],
        )
    };
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("MEMORY", Align::Right),
        ("TARGET", Align::Right),
        ("BALLOON", Align::Right),
        ("RESIDENT", Align::Right),
        ("ACTIVE", Align::Right),
        ("SHARED", Align::Right),
        ("SWAPPED", Align::Right),
        ("GUEST-FREE", Align::Right),
    ]);
    for d in v["domains"].as_array().map_or(&[][..], Vec::as_slice) {
        table.row(vec![
            text(&d["name"]),
            mib(&d["configured_bytes"]),
            mib(&d["target_bytes"]),
            mib(&d["balloon_bytes"]),
            mib(&d["resident_bytes"]),
            mib(&d["active_estimate_bytes"]),
            mib(&d["shared_bytes"]),
            mib(&d["swapped_bytes"]),
            mib(&d["guest"]["free_bytes"]),
        ]);
    }
    out + &table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_reads_as_lines_and_a_table() {
        let v = serde_json::json!({
            "total_bytes": 4u64 << 30, "available_bytes": 3u64 << 30, "free_state": "high",
            "given_bytes": 512u64 << 20, "pool_bytes": 1024u64 << 20, "reserved_bytes": 64u64 << 20,
            "idle_tax": 0.75,
            "pool": {"state": "hard", "free_bytes": 12u64 << 20},
            "page_sharing": {"pages_per_batch": 100, "sleep_ms": 20, "shared_pages": 900,
                             "saved_bytes": 40u64 << 20, "full_scans": 3},
            "domains": [{"name": "web", "configured_bytes": 256u64 << 20,
                         "target_bytes": 128u64 << 20, "balloon_bytes": 128u64 << 20,
                         "resident_bytes": 100u64 << 20, "reported_bytes": 0,
                         "active_estimate_bytes": 30u64 << 20,
                         "shared_bytes": 20u64 << 20, "swapped_bytes": 8u64 << 20,
                         "guest": null}]
        });
        let text = render(&v);
        assert!(
            text.contains("4096 MiB, 3072 MiB available (free state: high)"),
            "{text}"
        );
        assert!(text.contains("512 MiB to 1 domains"), "{text}");
        assert!(
            text.contains("memory pool   : 1024 MiB, 64 MiB reserved, idle memory tax 0.75"),
            "{text}"
        );
        assert!(
            text.contains("on, 40 MiB saved (900 distinct pages"),
            "{text}"
        );
        assert!(
            text.contains("pool state    : hard, 12 MiB free\n"),
            "{text}"
        );
        let row: Vec<&str> = text.lines().last().unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["web", "256M", "128M", "128M", "100M", "30M", "20M", "8M", "-"]
        );
        let off = render(&serde_json::json!({"page_sharing": null, "domains": []}));
        assert!(off.contains("page sharing  : off"), "{off}");
    }
}
