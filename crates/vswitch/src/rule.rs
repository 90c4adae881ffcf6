//! Firewall rules as the daemon's API sees them: a [`Pattern`] and an [`Action`], their JSON
//! form (documented at the crate root), their validation, and how a pattern fits one copy of a
//! frame going from one port to another ([`Match`]).
//!
//! # Fail-closed matching
//!
//! A frame the switch could not parse at L4 (its protocol is unknown, or it is TCP or UDP with
//! unknown ports: a fragment other than the first, an IPv6 header chain the parser does not
//! follow to its end, a truncated TCP or UDP header; see [`crate::frame`]) may be carrying
//! anything to any port. A pattern naming the protocol or ports it does not show fits it as
//! [`Match::Unknown`] when every field the frame does show matches (ports, domains, MACs,
//! ethertype, IP prefixes, and the protocol when it is known), and the rule list
//! ([`crate::ruleset::RuleSet::allows`]) holds such a copy to the worst the rule could do:
//!
//! - a `drop` rule drops it (otherwise a guest could slip past `drop tcp port 22` by
//!   fragmenting its packets or stacking IPv6 extension headers);
//! - an `accept` rule never accepts it on fields it does not show: evaluation goes on;
//! - a `rate_limit` rule charges it to its bucket and drops it when over the rate, but never
//!   lets it through by itself: evaluation goes on (so fragmenting cannot get around the rate
//!   either, and cannot get past a `drop` rule further down).
//!
//! Each such copy is counted in the rule's `unparsed` counter as well as in `frames` and
//! `bytes` (and `dropped` when dropped). Rules that name no protocol or port judge unparsed
//! frames like any other, so `{"pattern":{"dst_domain":"db"},"action":"accept"}` placed first
//! lets every fragment for `db` through.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::frame::{FrameInfo, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use crate::mac::MacAddr;
use crate::prefix::IpPrefix;
use crate::rule_fields::{EtherType, IpProto, L4Ports};

/// Which frames a rule applies to. Every field is optional; a frame matches when all the
/// given fields do (an empty pattern matches everything).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pattern {
    /// Name of the port the frame came in on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_port: Option<String>,
    /// Name of the port this copy of the frame goes out on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_port: Option<String>,
    /// Domain owning the port the frame came in on (never the uplink).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_domain: Option<String>,
    /// Domain owning the port this copy goes out on (never the uplink).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_domain: Option<String>,
    /// Ethernet source address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_mac: Option<MacAddr>,
    /// Ethernet destination address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_mac: Option<MacAddr>,
    /// Ethertype (after one 802.1Q tag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ethertype: Option<EtherType>,
    /// IPv4 or IPv6 source prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<IpPrefix>,
    /// IPv4 or IPv6 destination prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<IpPrefix>,
    /// IP protocol (IPv4 or IPv6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<IpProto>,
    /// TCP/UDP source port or range; needs `proto` tcp or udp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<L4Ports>,
    /// TCP/UDP destination port or range; needs `proto` tcp or udp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<L4Ports>,
}

/// A token bucket: `bytes_per_sec` refill, `burst` bytes of capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Bytes per second let through in the long run.
    pub bytes_per_sec: u64,
    /// Bytes let through at once after a quiet period. A frame longer than this never passes.
    pub burst: u64,
}

/// What happens to a frame a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Forward it.
    Accept,
    /// Drop it.
    Drop,
    /// Forward it while the rule's token bucket allows; drop it when over the rate.
    RateLimit(RateLimit),
}

/// A firewall rule: pattern and action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The frames it applies to (absent: all).
    #[serde(default)]
    pub pattern: Pattern,
    /// What it does to them.
    pub action: Action,
}

/// What happens to frames no rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Forward them (the default: a switch without rules is a plain learning switch).
    #[default]
    Accept,
    /// Drop them (a firewall that lets through only what rules accept).
    Drop,
}

/// A rule's stable identifier, never reused by a switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuleId(pub u64);

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a rule, or a change to the rule list, is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The JSON does not parse as a rule (the message names the field and the problem: an
    /// unknown field, a bad MAC, prefix, protocol, port or ethertype).
    #[error("bad rule: {0}")]
    Json(String),
    /// A name field is empty.
    #[error("bad rule: \"{0}\" must not be empty")]
    EmptyName(&'static str),
    /// `sport` or `dport` without `proto` tcp or udp.
    #[error("bad rule: \"sport\" and \"dport\" need \"proto\": \"tcp\" or \"udp\"")]
    PortsNeedTcpOrUdp,
    /// `src_ip` and `dst_ip` are of different families.
    #[error("bad rule: \"src_ip\" {src} and \"dst_ip\" {dst} are of different IP versions, so nothing could match")]
    MixedFamilies {
        /// The source prefix.
        src: IpPrefix,
        /// The destination prefix.
        dst: IpPrefix,
    },
    /// `proto` is ICMP with an IPv6 prefix, or ICMPv6 with an IPv4 one.
    #[error("bad rule: \"proto\": \"{proto}\" never appears in {family} packets")]
    ProtoFamily {
        /// The protocol.
        proto: IpProto,
        /// The family of the prefix given with it.
        family: &'static str,
    },
    /// An IP field with an ethertype other than the matching IP version's.
    #[error("bad rule: \"{field}\" needs \"ethertype\" {needed} (or none), not {ethertype}")]
    EthertypeConflict {
        /// The IP field given.
        field: &'static str,
        /// What the ethertype would have to be.
        needed: &'static str,
        /// The ethertype given.
        ethertype: EtherType,
    },
    /// A rate limit of zero bytes per second.
    #[error("bad rule: rate_limit \"bytes_per_sec\" must be positive (use the drop action to drop everything)")]
    ZeroRate,
    /// A rate limit with a zero burst.
    #[error("bad rule: rate_limit \"burst\" must be positive (at least one full frame, 1514 bytes, to let full-size frames through)")]
    ZeroBurst,
    /// An insertion position past the end of the list.
    #[error("position {position} is past the end of the rule list ({len} rules)")]
    Position {
        /// The position asked for.
        position: usize,
        /// Rules in the list.
        len: usize,
    },
    /// No rule has this id.
    #[error("no rule with id {0}")]
    NoSuchRule(RuleId),
}

/// One end of a frame's path through the switch, as patterns see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint<'a> {
    /// The port's name.
    pub port: &'a str,
    /// The domain owning it (`None` for the uplink).
    pub domain: Option<&'a str>,
}

impl Rule {
    /// Parses a rule from JSON and validates it.
    pub fn from_json(text: &str) -> Result<Rule, RuleError> {
        let rule: Rule = serde_json::from_str(text).map_err(|e| RuleError::Json(e.to_string()))?;
        rule.validate()?;
        Ok(rule)
    }

    /// The rule as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("rules always serialize")
    }

    /// Checks what the types alone cannot: names not empty, ports only with TCP/UDP, no
    /// contradiction between ethertype, prefixes and protocol, a positive rate and burst.
    pub fn validate(&self) -> Result<(), RuleError> {
        let p = &self.pattern;
        for (field, value) in [
            ("in_port", &p.in_port),
            ("out_port", &p.out_port),
            ("src_domain", &p.src_domain),
            ("dst_domain", &p.dst_domain),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(RuleError::EmptyName(field));
            }
        }
        if (p.sport.is_some() || p.dport.is_some()) && !p.proto.is_some_and(|x| x.has_ports()) {
            return Err(RuleError::PortsNeedTcpOrUdp);
        }
        if let (Some(src), Some(dst)) = (p.src_ip, p.dst_ip) {
            if src.is_ipv4() != dst.is_ipv4() {
                return Err(RuleError::MixedFamilies { src, dst });
            }
        }
        let family = p.src_ip.or(p.dst_ip).map(|x| x.is_ipv4());
        match (p.proto, family) {
            (Some(IpProto::ICMP), Some(false)) => {
                return Err(RuleError::ProtoFamily {
                    proto: IpProto::ICMP,
                    family: "IPv6",
                })
            }
            (Some(IpProto::ICMPV6), Some(true)) => {
                return Err(RuleError::ProtoFamily {
                    proto: IpProto::ICMPV6,
                    family: "IPv4",
                })
            }
            _ => {}
        }
        if let Some(ethertype) = p.ethertype {
            let conflict = |field, needed| RuleError::EthertypeConflict {
                field,
                needed,
                ethertype,
            };
            let ip_field = [
                ("src_ip", p.src_ip.is_some()),
                ("dst_ip", p.dst_ip.is_some()),
                ("proto", p.proto.is_some()),
            ]
            .into_iter()
            .find(|(_, given)| *given)
            .map(|(field, _)| field);
            match (ip_field, family) {
                (Some(field), Some(true)) if ethertype.0 != ETHERTYPE_IPV4 => {
                    return Err(conflict(field, "ipv4"))
                }
                (Some(field), Some(false)) if ethertype.0 != ETHERTYPE_IPV6 => {
                    return Err(conflict(field, "ipv6"))
                }
                (Some(field), None)
                    if ethertype.0 != ETHERTYPE_IPV4 && ethertype.0 != ETHERTYPE_IPV6 =>
                {
                    return Err(conflict(field, "ipv4 or ipv6"))
                }
                _ => {}
            }
        }
        if let Action::RateLimit(r) = self.action {
            if r.bytes_per_sec == 0 {
                return Err(RuleError::ZeroRate);
            }
            if r.burst == 0 {
                return Err(RuleError::ZeroBurst);
            }
        }
        Ok(())
    }
}

/// How a pattern fits one copy of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// A field the frame shows differs from the pattern's (or the pattern names an IP field and
    /// the frame has no IP layer).
    No,
    /// Every field of the pattern matches.
    Yes,
    /// Every field the frame shows matches, but the pattern names a protocol or ports the
    /// switch could not read in this frame (it is unparsed at L4): the fail-closed case of the
    /// module documentation.
    Unknown,
}

impl Pattern {
    /// Whether the copy of `frame` going from `from` to `to` matches on every field (an
    /// unparsed frame never does on a protocol or port it does not show; see [`Pattern::check`]).
    pub fn matches(&self, frame: &FrameInfo, from: Endpoint<'_>, to: Endpoint<'_>) -> bool {
        self.check(frame, from, to) == Match::Yes
    }

    /// How the copy of `frame` going from `from` to `to` fits this pattern.
    pub fn check(&self, frame: &FrameInfo, from: Endpoint<'_>, to: Endpoint<'_>) -> Match {
        fn name(want: &Option<String>, have: Option<&str>) -> bool {
            want.as_deref().is_none_or(|w| have == Some(w))
        }
        fn field<T: PartialEq>(want: Option<T>, have: T) -> bool {
            want.is_none_or(|w| w == have)
        }
        if !(name(&self.in_port, Some(from.port))
            && name(&self.out_port, Some(to.port))
            && name(&self.src_domain, from.domain)
            && name(&self.dst_domain, to.domain)
            && field(self.src_mac, frame.src)
            && field(self.dst_mac, frame.dst)
            && field(self.ethertype, EtherType(frame.ethertype)))
        {
            return Match::No;
        }
        let needs_ip = self.src_ip.is_some()
            || self.dst_ip.is_some()
            || self.proto.is_some()
            || self.sport.is_some()
            || self.dport.is_some();
        if !needs_ip {
            return Match::Yes;
        }
        let Some(ip) = frame.ip else {
            return Match::No;
        };
        if !(self.src_ip.is_none_or(|p| p.contains(ip.src))
            && self.dst_ip.is_none_or(|p| p.contains(ip.dst)))
        {
            return Match::No;
        }
        let mut unknown = false;
        if let Some(proto) = self.proto {
            match ip.proto {
                Some(p) if p != proto.0 => return Match::No,
                Some(_) => {}
                None => unknown = true,
            }
        }
        if self.sport.is_some() || self.dport.is_some() {
            match ip.ports {
                Some((sport, dport)) => {
                    if !(self.sport.is_none_or(|r| r.contains(sport))
                        && self.dport.is_none_or(|r| r.contains(dport)))
                    {
                        return Match::No;
                    }
                }
                // TCP or UDP whose ports could not be read, or an unknown protocol.
                None if ip.l4_unparsed() => unknown = true,
                // A protocol known to have no ports.
                None => return Match::No,
            }
        }
        if unknown {
            Match::Unknown
        } else {
            Match::Yes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{parse, ETHERTYPE_ARP, ETHERTYPE_IPV6, PROTO_TCP, PROTO_UDP};
    use crate::testing::*;

    const FROM: Endpoint = Endpoint {
        port: "a0",
        domain: Some("a"),
    };
    const TO: Endpoint = Endpoint {
        port: "b0",
        domain: Some("b"),
    };
    const UPLINK: Endpoint = Endpoint {
        port: "tap0",
        domain: None,
    };

    fn pattern(json: &str) -> Pattern {
        let rule = Rule::from_json(&format!("{{\"pattern\":{json},\"action\":\"accept\"}}"));
        rule.unwrap().pattern
    }

    fn rule_error(json: &str) -> String {
        Rule::from_json(json).unwrap_err().to_string()
    }

    #[test]
    fn json_round_trip() {
        let text = r#"{"pattern":{"in_port":"a0","out_port":"b0","src_domain":"a","dst_domain":"b",
            "src_mac":"02:00:00:00:00:0A","dst_mac":"ff:ff:ff:ff:ff:ff","ethertype":"ipv4",
            "src_ip":"10.0.0.0/8","dst_ip":"10.0.0.2","proto":"tcp","sport":"1024-65535","dport":22},
            "action":{"rate_limit":{"bytes_per_sec":1000000,"burst":65536}}}"#;
        let rule = Rule::from_json(text).unwrap();
        assert_eq!(rule.pattern.src_mac, Some(A));
        assert_eq!(
            rule.action,
            Action::RateLimit(RateLimit {
                bytes_per_sec: 1_000_000,
                burst: 65536
            })
        );
        let json = rule.to_json();
        assert_eq!(
            json,
            r#"{"pattern":{"in_port":"a0","out_port":"b0","src_domain":"a","dst_domain":"b","src_mac":"02:00:00:00:00:0a","dst_mac":"ff:ff:ff:ff:ff:ff","ethertype":"ipv4","src_ip":"10.0.0.0/8","dst_ip":"10.0.0.2/32","proto":"tcp","sport":"1024-65535","dport":22},"action":{"rate_limit":{"bytes_per_sec":1000000,"burst":65536}}}"#
        );
        assert_eq!(Rule::from_json(&json).unwrap(), rule);

        let drop = Rule::from_json(r#"{"action":"drop"}"#).unwrap();
        assert_eq!(drop.pattern, Pattern::default());
        assert_eq!(drop.to_json(), r#"{"pattern":{},"action":"drop"}"#);
        assert_eq!(
            serde_json::to_string(&Policy::Drop).unwrap(),
            "\"drop\"".to_string()
        );
    }

    #[test]
    fn validation_errors_say_what_is_wrong() {
        let cases = [
            (
                r#"{"pattern":{"src_ip":"10.0.0.0/33"},"action":"drop"}"#,
                "from 0 to 32",
            ),
            (
                r#"{"pattern":{"src_ip":"10.0.0.1/8"},"action":"drop"}"#,
                "did you mean 10.0.0.0/8",
            ),
            (
                r#"{"pattern":{"src_mac":"02:00:00:00:00"},"action":"drop"}"#,
                "bad MAC address",
            ),
            (
                r#"{"pattern":{"dport":22},"action":"drop"}"#,
                "need \"proto\": \"tcp\" or \"udp\"",
            ),
            (
                r#"{"pattern":{"proto":"icmp","sport":1},"action":"drop"}"#,
                "\"tcp\" or \"udp\"",
            ),
            (
                r#"{"action":{"rate_limit":{"bytes_per_sec":0,"burst":1}}}"#,
                "\"bytes_per_sec\" must be positive",
            ),
            (
                r#"{"action":{"rate_limit":{"bytes_per_sec":1,"burst":0}}}"#,
                "\"burst\" must be positive",
            ),
            (
                r#"{"action":{"rate_limit":{"bytes_per_sec":1}}}"#,
                "missing field `burst`",
            ),
            (
                r#"{"action":{"rate_limit":{"bytes_per_sec":1,"burst":1,"x":2}}}"#,
                "unknown field `x`",
            ),
            (
                r#"{"pattern":{"src_port":"a"},"action":"drop"}"#,
                "unknown field `src_port`",
            ),
            (
                r#"{"pattern":{},"action":"drop","extra":1}"#,
                "unknown field `extra`",
            ),
            (r#"{"pattern":{}}"#, "missing field `action`"),
            (r#"{"action":"reject"}"#, "unknown variant `reject`"),
            (
                r#"{"pattern":{"in_port":""},"action":"drop"}"#,
                "\"in_port\" must not be empty",
            ),
            (
                r#"{"pattern":{"src_ip":"10.0.0.0/8","dst_ip":"fd00::/8"},"action":"drop"}"#,
                "different IP versions",
            ),
            (
                r#"{"pattern":{"src_ip":"fd00::/8","proto":"icmp"},"action":"drop"}"#,
                "never appears in IPv6",
            ),
            (
                r#"{"pattern":{"ethertype":"arp","proto":"udp"},"action":"drop"}"#,
                "needs \"ethertype\" ipv4 or ipv6 (or none), not arp",
            ),
            (
                r#"{"pattern":{"ethertype":"ipv6","dst_ip":"10.0.0.0/8"},"action":"drop"}"#,
                "needs \"ethertype\" ipv4",
            ),
            (
                r#"{"pattern":{"proto":"gre"},"action":"drop"}"#,
                "bad IP protocol \"gre\"",
            ),
            (r#"not json"#, "bad rule"),
        ];
        for (json, wanted) in cases {
            let message = rule_error(json);
            assert!(message.contains(wanted), "{json}: {message}");
        }
    }

    #[test]
    fn matching_l2_fields_and_endpoints() {
        let arp = parse(&eth(B, A, ETHERTYPE_ARP, &[0; 28])).unwrap();
        assert!(Pattern::default().matches(&arp, FROM, TO));
        assert!(pattern(r#"{"src_domain":"a","dst_domain":"b"}"#).matches(&arp, FROM, TO));
        assert!(!pattern(r#"{"src_domain":"b"}"#).matches(&arp, FROM, TO));
        assert!(!pattern(r#"{"dst_domain":"b"}"#).matches(&arp, FROM, UPLINK));
        assert!(pattern(r#"{"out_port":"tap0"}"#).matches(&arp, FROM, UPLINK));
        assert!(pattern(r#"{"in_port":"a0","out_port":"b0"}"#).matches(&arp, FROM, TO));
        assert!(!pattern(r#"{"in_port":"b0"}"#).matches(&arp, FROM, TO));
        assert!(pattern(r#"{"src_mac":"02:00:00:00:00:0a"}"#).matches(&arp, FROM, TO));
        assert!(!pattern(r#"{"dst_mac":"02:00:00:00:00:0a"}"#).matches(&arp, FROM, TO));
        assert!(pattern(r#"{"ethertype":"arp"}"#).matches(&arp, FROM, TO));
        assert!(!pattern(r#"{"ethertype":"ipv4"}"#).matches(&arp, FROM, TO));
        // IP fields never match a frame without an IP layer.
        assert!(!pattern(r#"{"src_ip":"0.0.0.0/0"}"#).matches(&arp, FROM, TO));
        assert!(!pattern(r#"{"proto":6}"#).matches(&arp, FROM, TO));
    }

    #[test]
    fn matching_ip_fields() {
        let ssh = parse(&eth(
            B,
            A,
            ETHERTYPE_IPV4,
            &ipv4(
                [10, 0, 0, 1],
                [10, 0, 0, 2],
                PROTO_TCP,
                &tcp_header(40000, 22),
            ),
        ))
        .unwrap();
        let yes = [
            r#"{"src_ip":"10.0.0.0/24","dst_ip":"10.0.0.2"}"#,
            r#"{"proto":"tcp","dport":22}"#,
            r#"{"proto":"tcp","sport":"32768-60999","dport":"1-1023"}"#,
            r#"{"ethertype":"ipv4","proto":"tcp"}"#,
        ];
        for p in yes {
            assert!(pattern(p).matches(&ssh, FROM, TO), "{p}");
        }
        let no = [
            r#"{"src_ip":"10.0.1.0/24"}"#,
            r#"{"src_ip":"fd00::/8"}"#,
            r#"{"proto":"udp"}"#,
            r#"{"proto":"tcp","dport":23}"#,
            r#"{"proto":"tcp","sport":22}"#,
        ];
        for p in no {
            assert!(!pattern(p).matches(&ssh, FROM, TO), "{p}");
        }
        let ping6 = parse(&ipv6_frame(B, A)).unwrap();
        assert!(pattern(r#"{"src_ip":"fd00::/16","proto":"udp"}"#).matches(&ping6, FROM, TO));
        assert!(!pattern(r#"{"src_ip":"10.0.0.0/8"}"#).matches(&ping6, FROM, TO));
        // Ports unknown (a bad IHL): a port pattern does not match, a protocol one does.
        let mut bad = eth(
            B,
            A,
            ETHERTYPE_IPV4,
            &ipv4([10, 0, 0, 1], [10, 0, 0, 2], PROTO_TCP, &tcp_header(1, 22)),
        );
        bad[14] = 0x43;
        let bad = parse(&bad).unwrap();
        assert!(pattern(r#"{"proto":"tcp"}"#).matches(&bad, FROM, TO));
        assert!(!pattern(r#"{"proto":"tcp","dport":22}"#).matches(&bad, FROM, TO));
    }

    #[test]
    fn unparsed_frames_fit_drop_rules_on_what_they_show() {
        let v4 = |proto, l4: &[u8]| ipv4([10, 0, 0, 1], [10, 0, 0, 2], proto, l4);
        let tcp22 = v4(PROTO_TCP, &tcp_header(40000, 22));
        let frame = |ethertype, pkt: &[u8]| parse(&eth(B, A, ethertype, pkt)).unwrap();
        let check = |p: &str, f: &FrameInfo| pattern(p).check(f, FROM, TO);
        let ssh = r#"{"proto":"tcp","dport":22}"#;

        // The first fragment shows its ports: it fits as any packet does.
        let first = frame(ETHERTYPE_IPV4, &fragmented(tcp22.clone(), 0, true));
        assert_eq!(check(ssh, &first), Match::Yes);
        assert_eq!(check(r#"{"proto":"tcp","dport":23}"#, &first), Match::No);

        // A later fragment of the same datagram: its ports are unknown.
        let later = frame(ETHERTYPE_IPV4, &fragmented(tcp22.clone(), 2, false));
        assert_eq!(check(ssh, &later), Match::Unknown);
        assert_eq!(
            check(r#"{"proto":"tcp","sport":"1-1023"}"#, &later),
            Match::Unknown
        );
        assert!(!pattern(ssh).matches(&later, FROM, TO));
        // Fields it shows still decide: the protocol, addresses, domains, MACs, ethertype.
        assert_eq!(check(r#"{"proto":"tcp"}"#, &later), Match::Yes);
        assert_eq!(check(r#"{"dst_ip":"10.0.0.2"}"#, &later), Match::Yes);
        for no in [
            r#"{"proto":"udp","dport":22}"#,
            r#"{"src_ip":"192.168.0.0/16","proto":"tcp","dport":22}"#,
            r#"{"src_domain":"b","proto":"tcp","dport":22}"#,
            r#"{"dst_mac":"02:00:00:00:00:0a","proto":"tcp","dport":22}"#,
            r#"{"ethertype":"ipv6","proto":"tcp","dport":22}"#,
            r#"{"proto":"icmp"}"#,
        ] {
            assert_eq!(check(no, &later), Match::No, "{no}");
        }
        assert_eq!(
            check(
                r#"{"src_domain":"a","dst_domain":"b","proto":"tcp","dport":22}"#,
                &later
            ),
            Match::Unknown
        );

        // IPv6 with one extension header too many: even the protocol is unknown.
        let chain = ipv6_options_chain(
            crate::frame::MAX_IPV6_EXTENSIONS + 1,
            PROTO_TCP,
            &tcp_header(40000, 22),
        );
        let long = frame(ETHERTYPE_IPV6, &ipv6("fd00::1", "fd00::2", 60, &chain));
        for unknown in [
            ssh,
            r#"{"proto":"icmpv6"}"#,
            r#"{"proto":"udp","dport":53}"#,
        ] {
            assert_eq!(check(unknown, &long), Match::Unknown, "{unknown}");
        }
        assert_eq!(check(r#"{"src_ip":"fd00::/16"}"#, &long), Match::Yes);
        assert_eq!(
            check(r#"{"src_ip":"10.0.0.0/8","proto":"tcp"}"#, &long),
            Match::No
        );

        // Truncated TCP and UDP headers.
        let short_tcp = frame(ETHERTYPE_IPV4, &v4(PROTO_TCP, &[0, 22]));
        assert_eq!(check(ssh, &short_tcp), Match::Unknown);
        let short_udp = frame(ETHERTYPE_IPV4, &v4(PROTO_UDP, &[0, 53, 0]));
        assert_eq!(
            check(r#"{"proto":"udp","dport":53}"#, &short_udp),
            Match::Unknown
        );
        assert_eq!(check(ssh, &short_udp), Match::No);

        // A packet that parses is judged exactly as before.
        let whole = frame(ETHERTYPE_IPV4, &tcp22);
        assert_eq!(check(ssh, &whole), Match::Yes);
        assert_eq!(check(r#"{"proto":"tcp","dport":80}"#, &whole), Match::No);
        // ICMP has no ports: a port pattern (unvalidated) never fits it, known or not.
        let echo = parse(&ping(B, A, 1, 2)).unwrap();
        let ports_only = Pattern {
            dport: Some(crate::L4Ports::one(22)),
            ..Pattern::default()
        };
        assert_eq!(ports_only.check(&echo, FROM, TO), Match::No);
    }
}
