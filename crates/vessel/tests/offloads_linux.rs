//! Network offloads end to end with real Linux guests, in the host box: three domains on the
//! daemon's switch, two offered checksum offload and TSO and one with `offloads=off`, and L1
//! behind the uplink TAP (opened with the virtio-net header and its offloads). TCP streams of
//! random data between every kind of pair and through the uplink both ways arrive whole (MD5 and
//! size); large segments cross the switch whole and reach the guest without offloads cut into
//! plain frames; UDP datagrams with checksums left to finish verify at a guest that takes them
//! as they are and at one whose VIF finishes them. Firewall rules hold on offloaded TCP: a
//! rate-limit rule keeps a stream of segments to its rate and charges their real bytes, a drop
//! rule stops a running stream. The L1 side is
//! `tests/box_scripts/offloads.sh`.

mod boxed;

use boxed::{box_with_vessel, guest_tools, one, run_until_no_guest_crash, values, DOMAINS_LIB};

/// (frames, bytes) a port sent to its domain, from a `vessel net ports` table tagged `tag`.
fn port_tx(out: &str, tag: &str, port: &str) -> (u64, u64) {
    let line = values(out, tag)
        .into_iter()
        .find(|l| l.starts_with(port))
        .unwrap_or_else(|| panic!("no {tag} line for {port}:\n{out}"));
    let n = |i: usize| -> u64 { line.split_whitespace().nth(i).unwrap().parse().unwrap() };
    (n(4), n(5))
}

/// A VIF counter from `vessel info` lines tagged `tag` (`rx_frames:N`).
fn vif(out: &str, tag: &str, counter: &str) -> u64 {
    values(out, tag)
        .into_iter()
        .find_map(|l| l.strip_prefix(counter)?.strip_prefix(':')?.parse().ok())
        .unwrap_or_else(|| panic!("no {tag} {counter}:\n{out}"))
}

/// The counters of rule `id` in a `vessel net rule list --json` line tagged `tag`: (frames,
/// bytes, dropped).
fn rule_counters(out: &str, tag: &str, id: &str) -> (u64, u64, u64) {
    let rules: serde_json::Value = serde_json::from_str(one(out, tag))
        .unwrap_or_else(|e| panic!("{tag} is not JSON ({e}):\n{out}"));
    let rule = rules
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["id"].as_u64().map(|n| n.to_string()).as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no rule {id} under {tag}:\n{out}"));
    let c = |name: &str| rule["counters"][name].as_u64().unwrap_or(0);
    (c("frames"), c("bytes"), c("dropped"))
}

/// The UDP counters of a guest's `/proc/net/snmp` line tagged `tag`: (NoPorts, InCsumErrors).
fn udp(out: &str, tag: &str) -> (u64, u64) {
    let f: Vec<u64> = one(out, tag)
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    (f[1], f[6])
}

#[test]
fn offloaded_and_plain_guests_exchange_whole_streams_through_the_switch_and_the_uplink() {
    let dir = std::env::temp_dir().join(format!("vessel-offloads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = guest_tools(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/box_scripts/offloads.sh");
    // A guest that crashes by itself (TCG) ends the step and the box runs again (recorded).
    let output = run_until_no_guest_crash(3, "offloads", || {
        box_with_vessel(600)
            .memory_mib(2048)
            .file(&tools, "/tools.cpio.gz")
            .file(DOMAINS_LIB, "/domains.sh")
            .file(script, "/offloads.sh")
            .step("offloads", "sh /offloads.sh")
    });
    let _ = std::fs::remove_dir_all(&dir);
    let out = &output;
    println!("{out}");

    assert_eq!(values(out, "CREATED="), ["a", "b", "c"], "{out}");
    assert_eq!(values(out, "REACHABLE=").len(), 3, "{out}");
    // a negotiated CSUM (bit 0), GUEST_CSUM (1), GUEST_TSO4 (7) and HOST_TSO4 (11); c was
    // offered none of them.
    let bit = |features: &str, n: usize| features.as_bytes().get(n) == Some(&b'1');
    let (fa, fc) = (one(out, "FEATURES_1="), one(out, "FEATURES_3="));
    for n in [0, 1, 7, 11] {
        assert!(bit(fa, n), "a did not negotiate feature {n}: {fa}");
        assert!(!bit(fc, n), "c was offered feature {n}: {fc}");
    }

    // Every stream arrived whole.
    let data = |g: &str| one(out, &format!("DATA_{g}="));
    for g in ["1", "2", "3", "L1"] {
        assert!(data(g).ends_with(",4194304"), "{g}: {}\n{out}", data(g));
    }
    for (key, from) in [
        ("AB=", "1"),
        ("AC=", "1"),
        ("CA=", "3"),
        ("AL1=", "1"),
        ("L1A=", "L1"),
    ] {
        assert_eq!(
            one(out, key),
            data(from),
            "{key} against the sender's data:\n{out}"
        );
    }

    // a's segments crossed the switch whole (more than a 1514-byte frame on average to b);
    // those for c too, and c's VIF cut them into frames of its MTU.
    let avg = |(f0, b0): (u64, u64), (f1, b1): (u64, u64)| (b1 - b0) as f64 / (f1 - f0) as f64;
    let to_b = avg(
        port_tx(out, "PORTS0 ", "b-eth0"),
        port_tx(out, "PORTS1 ", "b-eth0"),
    );
    let to_c = avg(
        port_tx(out, "PORTS1 ", "c-eth0"),
        port_tx(out, "PORTS2 ", "c-eth0"),
    );
    let (frames, bytes) = (
        vif(out, "VIF_C1", "rx_frames") - vif(out, "VIF_C0", "rx_frames"),
        vif(out, "VIF_C1", "rx_bytes") - vif(out, "VIF_C0", "rx_bytes"),
    );
    let in_c = bytes as f64 / frames as f64;
    eprintln!(
        "average frame: {to_b:.0} B from the switch to b, {to_c:.0} B to c's port, \
         {in_c:.0} B into c's guest"
    );
    assert!(
        to_b > 1514.0,
        "no large segment reached b ({to_b:.0} B):\n{out}"
    );
    assert!(
        to_c > 1514.0,
        "no large segment reached c's port ({to_c:.0} B):\n{out}"
    );
    assert!(
        !values(out, "VIF_C1").is_empty() && in_c <= 1514.0,
        "c's guest got frames of {in_c:.0} B on average, more than its MTU allows:\n{out}"
    );

    // UDP: the datagrams to b and to c arrived with checksums that verified.
    for g in ["2", "3"] {
        let sent: u64 = one(out, &format!("UDPSENT_{g} udpflood sent="))
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let (ports0, csum0) = udp(out, &format!("UDP0_{g} "));
        let (ports1, csum1) = udp(out, &format!("UDP1_{g} "));
        eprintln!("UDP to guest {g}: {sent} sent, {} counted", ports1 - ports0);
        assert!(sent > 100, "the sender sent only {sent}:\n{out}");
        assert_eq!(csum1, csum0, "guest {g} counted checksum errors:\n{out}");
        assert!(
            (ports1 - ports0) * 10 >= sent * 9,
            "guest {g} counted {} of {sent} datagrams:\n{out}",
            ports1 - ports0
        );
    }

    // The firewall on offloaded TCP. A rate-limit rule of 300 kB/s: the stream arrived whole,
    // near the rate and not over it, and the rule was charged at least every byte of it (a
    // segment counted by its header or as one frame of the MTU would have charged less).
    let rated: Vec<&str> = values(out, "RATED TCPBLAST received=");
    let (bytes, seconds) = rated
        .first()
        .and_then(|l| {
            let (b, s) = l.split_once(" seconds=")?;
            Some((b.parse::<f64>().ok()?, s.parse::<f64>().ok()?))
        })
        .unwrap_or_else(|| panic!("the rated stream did not report:\n{out}"));
    assert_eq!(bytes, 1048576.0, "the rated stream lost data:\n{out}");
    let rate = bytes / seconds;
    eprintln!("rate-limited offloaded stream: {rate:.0} B/s against 300000");
    assert!(
        (0.35 * 300_000.0..=1.3 * 300_000.0).contains(&rate),
        "the rate-limited offloaded stream ran at {rate:.0} B/s, not near 300000:\n{out}"
    );
    let rated_id = one(out, "RATED_RULE=");
    let (frames, charged, _) = rule_counters(out, "RULES_RATED ", rated_id);
    eprintln!("the rate rule judged {frames} frames of {charged} bytes");
    assert!(
        charged >= 1048576,
        "the rate rule was charged {charged} bytes for a 1 MiB stream:\n{out}"
    );
    // A drop rule put first while a stream runs: the stream carried at least 300 kB over the
    // 3 s before the rule (at its rate, about 900 kB), the rule dropped frames of it, and b's
    // port carried almost nothing over 5 s after it (frames already past the rule went first).
    let drop_id = one(out, "RULE=drop-");
    let (_, _, dropped) = rule_counters(out, "RULES_CUT ", drop_id);
    let sent_to_b = |tag: &str| port_tx(out, tag, "b-eth0").1;
    let before = sent_to_b("PORTS_CUT1 ") - sent_to_b("PORTS_CUT0 ");
    let after = sent_to_b("PORTS_CUT3 ") - sent_to_b("PORTS_CUT2 ");
    eprintln!(
        "stream cut: {before} bytes to b in the 3 s before the drop rule, {after} in 5 s after"
    );
    assert!(dropped > 0, "the drop rule dropped nothing:\n{out}");
    assert!(
        before > 300_000,
        "the stream carried {before} bytes before the drop rule:\n{out}"
    );
    assert!(
        after < 50_000,
        "b's port carried {after} bytes after the drop rule:\n{out}"
    );
}
