//! The ordered rule list of a switch: stable ids, insertion and deletion, per-rule counters and
//! token buckets, the default policy, and the verdict on one copy of a frame (first match wins).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::frame::FrameInfo;
use crate::rule::{Action, Endpoint, Match, Policy, Rule, RuleError, RuleId};
use crate::token_bucket::TokenBucket;

/// What a rule has matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleCounters {
    /// Frame copies the pattern matched (a flooded frame counts once per output port).
    pub frames: u64,
    /// Bytes of those copies.
    pub bytes: u64,
    /// Of those copies, the ones dropped: all of them for `drop`, the ones over the rate for
    /// `rate_limit`, none for `accept`.
    pub dropped: u64,
    /// Of those copies, the ones the switch could not parse at L4 (protocol or ports unknown)
    /// that the rule held to fail-closed semantics ([`crate::rule`]): dropped by a `drop` rule;
    /// charged to a `rate_limit` rule's bucket (dropped when over the rate, else passed on to
    /// the next rules). An `accept` rule never counts one.
    #[serde(default)]
    pub unparsed: u64,
}

/// A rule as listed: its id, the rule, its counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleStatus {
    /// Stable id (for deletion).
    pub id: RuleId,
    /// The rule.
    pub rule: Rule,
    /// Its counters since it was added.
    pub counters: RuleCounters,
}

struct Entry {
    id: RuleId,
    rule: Rule,
    counters: RuleCounters,
    bucket: Option<TokenBucket>,
}

/// The rules of a switch, in evaluation order, and the default policy.
pub struct RuleSet {
    entries: Vec<Entry>,
    next_id: u64,
    policy: Policy,
}

impl Default for RuleSet {
    fn default() -> Self {
        Self::new()
    }
}

impl RuleSet {
    /// No rules; policy accept.
    pub fn new() -> Self {
        RuleSet {
            entries: Vec::new(),
            next_id: 1,
            policy: Policy::Accept,
        }
    }

    /// Validates `rule` and inserts it at `position` (0 is first; `None` appends). A
    /// rate-limit rule starts with a full bucket at `now`.
    pub fn add(
        &mut self,
        rule: Rule,
        position: Option<usize>,
        now: Instant,
    ) -> Result<RuleId, RuleError> {
        rule.validate()?;
        let len = self.entries.len();
        let position = position.unwrap_or(len);
        if position > len {
            return Err(RuleError::Position { position, len });
        }
        let id = RuleId(self.next_id);
        self.next_id += 1;
        let bucket = match rule.action {
            Action::RateLimit(r) => Some(TokenBucket::new(r.bytes_per_sec, r.burst, now)),
            Action::Accept | Action::Drop => None,
        };
        self.entries.insert(
            position,
            Entry {
                id,
                rule,
                counters: RuleCounters::default(),
                bucket,
            },
        );
        Ok(id)
    }

    /// Removes the rule `id`.
    pub fn delete(&mut self, id: RuleId) -> Result<(), RuleError> {
        let at = self
            .entries
            .iter()
            .position(|e| e.id == id)
            .ok_or(RuleError::NoSuchRule(id))?;
        self.entries.remove(at);
        Ok(())
    }

    /// The rules in evaluation order, with their counters.
    pub fn list(&self) -> Vec<RuleStatus> {
        self.entries
            .iter()
            .map(|e| RuleStatus {
                id: e.id,
                rule: e.rule.clone(),
                counters: e.counters,
            })
            .collect()
    }

    /// What happens to frames no rule matches.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Sets the default policy.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Whether the copy of `frame` (`len` bytes) from `from` to `to` may go: the first
    /// matching rule decides (and counts it), else the policy. A frame unparsed at L4 is held
    /// to the rules fail-closed (see [`crate::rule`]): a `drop` rule it might match drops it, a
    /// `rate_limit` rule it might match charges it and may drop it but does not decide to let
    /// it through, and an `accept` rule accepts it only on fields it shows.
    pub fn allows(
        &mut self,
        frame: &FrameInfo,
        len: usize,
        from: Endpoint<'_>,
        to: Endpoint<'_>,
        now: Instant,
    ) -> bool {
        for entry in &mut self.entries {
            let fit = entry.rule.pattern.check(frame, from, to);
            if fit == Match::No || (fit == Match::Unknown && entry.rule.action == Action::Accept) {
                continue;
            }
            entry.counters.frames += 1;
            entry.counters.bytes += len as u64;
            if fit == Match::Unknown {
                entry.counters.unparsed += 1;
            }
            let pass = match (&entry.rule.action, &mut entry.bucket) {
                (Action::Accept, _) => true,
                (Action::Drop, _) => false,
                (Action::RateLimit(_), Some(bucket)) => bucket.take(len, now),
                (Action::RateLimit(_), None) => false,
            };
            if !pass {
                entry.counters.dropped += 1;
                return false;
            }
            if fit == Match::Yes {
                return true;
            }
            // An unparsed copy within a rate limit: charged, not accepted; the next rules
            // (or the policy) decide.
        }
        self.policy == Policy::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::parse;
    use crate::testing::*;
    use std::time::Duration;

    const FROM: Endpoint = Endpoint {
        port: "a0",
        domain: Some("a"),
    };
    const TO: Endpoint = Endpoint {
        port: "b0",
        domain: Some("b"),
    };

    fn rule(json: &str) -> Rule {
        Rule::from_json(json).unwrap()
    }

    #[test]
    fn first_match_wins_and_counts() {
        let now = Instant::now();
        let mut rules = RuleSet::new();
        let drop_icmp = rules
            .add(
                rule(r#"{"pattern":{"proto":"icmp"},"action":"drop"}"#),
                None,
                now,
            )
            .unwrap();
        let accept_all = rules
            .add(rule(r#"{"action":"accept"}"#), None, now)
            .unwrap();
        let icmp = ping(B, A, 1, 2);
        let udp = udp_frame(B, A, 1, 2, 100);
        let (pi, ui) = (parse(&icmp).unwrap(), parse(&udp).unwrap());
        assert!(!rules.allows(&pi, icmp.len(), FROM, TO, now));
        assert!(rules.allows(&ui, udp.len(), FROM, TO, now));
        assert!(rules.allows(&ui, udp.len(), FROM, TO, now));
        let list = rules.list();
        assert_eq!(list[0].id, drop_icmp);
        assert_eq!(
            list[0].counters,
            RuleCounters {
                frames: 1,
                bytes: icmp.len() as u64,
                dropped: 1,
                unparsed: 0,
            }
        );
        assert_eq!(list[1].id, accept_all);
        assert_eq!(list[1].counters.frames, 2);
        assert_eq!(list[1].counters.bytes, 200);
        assert_eq!(list[1].counters.dropped, 0);

        // Inserted first: an accept for ICMP now wins over the drop.
        let first = rules
            .add(
                rule(r#"{"pattern":{"proto":"icmp"},"action":"accept"}"#),
                Some(0),
                now,
            )
            .unwrap();
        assert!(rules.allows(&pi, icmp.len(), FROM, TO, now));
        let ids: Vec<_> = rules.list().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![first, drop_icmp, accept_all]);
        assert!(first > accept_all, "ids are never reused and grow");

        rules.delete(first).unwrap();
        assert_eq!(rules.delete(first), Err(RuleError::NoSuchRule(first)));
        assert!(!rules.allows(&pi, icmp.len(), FROM, TO, now));
        assert_eq!(
            rules.add(rule(r#"{"action":"drop"}"#), Some(3), now),
            Err(RuleError::Position {
                position: 3,
                len: 2
            })
        );
        let bad = Rule {
            pattern: Default::default(),
            action: Action::RateLimit(crate::rule::RateLimit {
                bytes_per_sec: 0,
                burst: 1,
            }),
        };
        assert_eq!(rules.add(bad, None, now), Err(RuleError::ZeroRate));
    }

    #[test]
    fn default_policy_applies_when_nothing_matches() {
        let now = Instant::now();
        let mut rules = RuleSet::new();
        let f = ping(B, A, 1, 2);
        let info = parse(&f).unwrap();
        assert!(rules.allows(&info, f.len(), FROM, TO, now));
        rules.set_policy(Policy::Drop);
        assert_eq!(rules.policy(), Policy::Drop);
        assert!(!rules.allows(&info, f.len(), FROM, TO, now));
        rules
            .add(
                rule(r#"{"pattern":{"src_domain":"a"},"action":"accept"}"#),
                None,
                now,
            )
            .unwrap();
        assert!(rules.allows(&info, f.len(), FROM, TO, now));
        assert!(!rules.allows(&info, f.len(), TO, FROM, now));
    }

    #[test]
    fn rate_limit_rule_caps_bytes_with_an_injected_clock() {
        // 100 kB/s, burst 10 kB; 1000-byte frames offered at 1 MB/s for 2 simulated seconds.
        let t0 = Instant::now();
        let mut rules = RuleSet::new();
        rules
            .add(
                rule(
                    r#"{"pattern":{"src_domain":"a"},
                    "action":{"rate_limit":{"bytes_per_sec":100000,"burst":10000}}}"#,
                ),
                None,
                t0,
            )
            .unwrap();
        let f = udp_frame(B, A, 1, 2, 1000);
        let info = parse(&f).unwrap();
        let mut passed = 0u64;
        for ms in 0..2000u64 {
            if rules.allows(&info, f.len(), FROM, TO, t0 + Duration::from_millis(ms)) {
                passed += f.len() as u64;
            }
        }
        assert!((200_000..=210_000).contains(&passed), "passed {passed}");
        let c = rules.list()[0].counters;
        assert_eq!(c.frames, 2000);
        assert_eq!(c.dropped, 2000 - passed / 1000);
        // Traffic the pattern does not match is not limited.
        assert!(rules.allows(&info, f.len(), TO, FROM, t0));
    }

    /// Copies of a later fragment of a TCP datagram to port 22, a whole one to port 80, and a
    /// later fragment of a UDP datagram, from a to b.
    fn fragments() -> [(FrameInfo, usize); 3] {
        let v4 = |proto, l4: &[u8]| ipv4([10, 0, 0, 1], [10, 0, 0, 2], proto, l4);
        let frames = [
            fragmented(
                v4(crate::frame::PROTO_TCP, &tcp_header(40000, 22)),
                8,
                false,
            ),
            v4(crate::frame::PROTO_TCP, &tcp_header(40000, 80)),
            fragmented(v4(crate::frame::PROTO_UDP, &udp_header(5000, 22)), 8, true),
        ];
        frames.map(|p| {
            let f = eth(B, A, crate::frame::ETHERTYPE_IPV4, &p);
            (parse(&f).unwrap(), f.len())
        })
    }

    #[test]
    fn drop_rules_drop_frames_whose_ports_are_unknown() {
        let now = Instant::now();
        let [(frag22, n), (web, m), (udp_frag, u)] = fragments();
        let mut rules = RuleSet::new();
        rules
            .add(
                rule(r#"{"pattern":{"proto":"tcp","dport":22},"action":"drop"}"#),
                None,
                now,
            )
            .unwrap();
        // Default accept: without fail-closed matching the fragment would pass.
        assert!(!rules.allows(&frag22, n, FROM, TO, now));
        assert!(rules.allows(&web, m, FROM, TO, now));
        // A UDP fragment shows its protocol, and it is not TCP.
        assert!(rules.allows(&udp_frag, u, FROM, TO, now));
        assert_eq!(
            rules.list()[0].counters,
            RuleCounters {
                frames: 1,
                bytes: n as u64,
                dropped: 1,
                unparsed: 1,
            }
        );
        // The rule still judges the fields the fragment shows: the other way round, it passes.
        let mut one_way = RuleSet::new();
        one_way
            .add(
                rule(r#"{"pattern":{"src_domain":"a","proto":"tcp","dport":22},"action":"drop"}"#),
                None,
                now,
            )
            .unwrap();
        assert!(!one_way.allows(&frag22, n, FROM, TO, now));
        assert!(one_way.allows(&frag22, n, TO, FROM, now));
    }

    #[test]
    fn accept_rules_never_accept_on_fields_a_frame_does_not_show() {
        let now = Instant::now();
        let [(frag22, n), (web, m), _] = fragments();
        let mut rules = RuleSet::new();
        rules.set_policy(Policy::Drop);
        rules
            .add(
                rule(r#"{"pattern":{"proto":"tcp","dport":"1-1023"},"action":"accept"}"#),
                None,
                now,
            )
            .unwrap();
        assert!(rules.allows(&web, m, FROM, TO, now));
        assert!(
            !rules.allows(&frag22, n, FROM, TO, now),
            "ports unknown: not accepted as 1-1023, the policy drops it"
        );
        assert_eq!(rules.list()[0].counters.frames, 1);
        assert_eq!(rules.list()[0].counters.unparsed, 0);
        // An accept rule on fields the fragment shows takes it.
        rules
            .add(
                rule(r#"{"pattern":{"src_domain":"a","dst_ip":"10.0.0.2"},"action":"accept"}"#),
                None,
                now,
            )
            .unwrap();
        assert!(rules.allows(&frag22, n, FROM, TO, now));
        assert_eq!(rules.list()[1].counters.frames, 1);
    }

    #[test]
    fn rate_limits_charge_unparsed_frames_but_never_let_them_past_a_drop() {
        let now = Instant::now();
        let [(frag22, n), ..] = fragments();
        let mut rules = RuleSet::new();
        let burst = 3 * n as u64;
        let limit = rules
            .add(
                rule(&format!(
                    r#"{{"pattern":{{"proto":"tcp","dport":22}},
                    "action":{{"rate_limit":{{"bytes_per_sec":1,"burst":{burst}}}}}}}"#
                )),
                None,
                now,
            )
            .unwrap();
        // Within the burst the fragments pass (the policy accepts); then the bucket drops them.
        let passed: Vec<bool> = (0..5)
            .map(|_| rules.allows(&frag22, n, FROM, TO, now))
            .collect();
        assert_eq!(passed, [true, true, true, false, false]);
        let c = rules.list()[0].counters;
        assert_eq!((c.frames, c.dropped, c.unparsed), (5, 2, 5));

        // A drop rule after a rate limit still drops them: the rate limit did not accept.
        rules.delete(limit).unwrap();
        rules
            .add(
                rule(
                    r#"{"pattern":{"proto":"tcp","dport":5001},
                    "action":{"rate_limit":{"bytes_per_sec":1000000,"burst":100000}}}"#,
                ),
                None,
                now,
            )
            .unwrap();
        rules
            .add(
                rule(r#"{"pattern":{"proto":"tcp","dport":22},"action":"drop"}"#),
                None,
                now,
            )
            .unwrap();
        assert!(!rules.allows(&frag22, n, FROM, TO, now));
        let list = rules.list();
        let counts = |i: usize| {
            let c = list[i].counters;
            (c.frames, c.dropped, c.unparsed)
        };
        assert_eq!(counts(0), (1, 0, 1), "charged, not dropped, not decided");
        assert_eq!(counts(1), (1, 1, 1));
    }
}
