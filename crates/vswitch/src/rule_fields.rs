//! The small value types of rule patterns that JSON writes as a number or a name: ethertypes
//! (`"ipv4"`, `"0x88cc"`, `2054`), IP protocols (`"tcp"`, `47`) and TCP/UDP port ranges (`22`,
//! `"1024-65535"`).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::frame::{
    ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

/// A JSON value that is either a non-negative integer or a string.
enum NumOrText {
    Num(u64),
    Text(String),
}

struct NumOrTextVisitor(&'static str);

impl Visitor<'_> for NumOrTextVisitor {
    type Value = NumOrText;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumOrText, E> {
        Ok(NumOrText::Num(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<NumOrText, E> {
        Ok(NumOrText::Text(v.to_string()))
    }
}

fn num_or_text<'de, D: Deserializer<'de>>(
    d: D,
    expecting: &'static str,
) -> Result<NumOrText, D::Error> {
    d.deserialize_any(NumOrTextVisitor(expecting))
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) => text.parse().ok(),
        None => None,
    }
}

/// An Ethernet type, matched after one 802.1Q tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EtherType(pub u16);

const ETHERTYPE_NAMES: [(&str, u16); 3] = [
    ("ipv4", ETHERTYPE_IPV4),
    ("arp", ETHERTYPE_ARP),
    ("ipv6", ETHERTYPE_IPV6),
];
const ETHERTYPE_EXPECTING: &str =
    "an ethertype: \"ipv4\", \"arp\", \"ipv6\", a hex string like \"0x88cc\" or a number";

impl EtherType {
    fn from_value(v: NumOrText) -> Result<Self, String> {
        let n = match &v {
            NumOrText::Num(n) => Some(*n),
            NumOrText::Text(t) => ETHERTYPE_NAMES
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(t))
                .map(|&(_, n)| u64::from(n))
                .or_else(|| parse_number(t)),
        };
        match n.and_then(|n| u16::try_from(n).ok()) {
            Some(n) => Ok(EtherType(n)),
            None => Err(match v {
                NumOrText::Num(n) => format!("bad ethertype {n}: more than 16 bits"),
                NumOrText::Text(t) => {
                    format!("bad ethertype {t:?}: expected {ETHERTYPE_EXPECTING}")
                }
            }),
        }
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match ETHERTYPE_NAMES.iter().find(|(_, n)| *n == self.0) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "0x{:04x}", self.0),
        }
    }
}

impl Serialize for EtherType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EtherType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EtherType::from_value(num_or_text(d, ETHERTYPE_EXPECTING)?).map_err(de::Error::custom)
    }
}

/// An IP protocol number (IPv6: the upper-layer protocol after the extension headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpProto(pub u8);

impl IpProto {
    /// ICMP (IPv4).
    pub const ICMP: IpProto = IpProto(PROTO_ICMP);
    /// TCP.
    pub const TCP: IpProto = IpProto(PROTO_TCP);
    /// UDP.
    pub const UDP: IpProto = IpProto(PROTO_UDP);
    /// ICMPv6.
    pub const ICMPV6: IpProto = IpProto(PROTO_ICMPV6);

    /// Whether this is TCP or UDP, the protocols with ports.
    pub fn has_ports(&self) -> bool {
        *self == IpProto::TCP || *self == IpProto::UDP
    }

    fn from_value(v: NumOrText) -> Result<Self, String> {
        let n = match &v {
            NumOrText::Num(n) => Some(*n),
            NumOrText::Text(t) => PROTO_NAMES
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(t))
                .map(|&(_, n)| u64::from(n))
                .or_else(|| parse_number(t)),
        };
        match n.and_then(|n| u8::try_from(n).ok()) {
            Some(n) => Ok(IpProto(n)),
            None => Err(match v {
                NumOrText::Num(n) => format!("bad IP protocol {n}: more than 255"),
                NumOrText::Text(t) => format!("bad IP protocol {t:?}: expected {PROTO_EXPECTING}"),
            }),
        }
    }
}

const PROTO_NAMES: [(&str, u8); 4] = [
    ("icmp", PROTO_ICMP),
    ("tcp", PROTO_TCP),
    ("udp", PROTO_UDP),
    ("icmpv6", PROTO_ICMPV6),
];
const PROTO_EXPECTING: &str =
    "an IP protocol: \"icmp\", \"tcp\", \"udp\", \"icmpv6\" or a number from 0 to 255";

impl fmt::Display for IpProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match PROTO_NAMES.iter().find(|(_, n)| *n == self.0) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for IpProto {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match PROTO_NAMES.iter().find(|(_, n)| *n == self.0) {
            Some((name, _)) => s.serialize_str(name),
            None => s.serialize_u8(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for IpProto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IpProto::from_value(num_or_text(d, PROTO_EXPECTING)?).map_err(de::Error::custom)
    }
}

/// An inclusive range of TCP/UDP ports: one port (`22`) or `"first-last"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Ports {
    /// The first port of the range.
    pub first: u16,
    /// The last port of the range (at least `first`).
    pub last: u16,
}

const PORTS_EXPECTING: &str =
    "a TCP/UDP port from 0 to 65535, or a range like \"1024-65535\" (first no more than last)";

impl L4Ports {
    /// Exactly `port`.
    pub fn one(port: u16) -> Self {
        L4Ports {
            first: port,
            last: port,
        }
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    fn from_value(v: NumOrText) -> Result<Self, String> {
        let port = |n: u64| u16::try_from(n).ok();
        let range = match &v {
            NumOrText::Num(n) => port(*n).map(L4Ports::one),
            NumOrText::Text(t) => {
                let (a, b) = t.split_once('-').unwrap_or((t, t));
                let first = parse_number(a.trim()).and_then(port);
                let last = parse_number(b.trim()).and_then(port);
                match (first, last) {
                    (Some(first), Some(last)) if first <= last => Some(L4Ports { first, last }),
                    _ => None,
                }
            }
        };
        range.ok_or_else(|| match v {
            NumOrText::Num(n) => format!("bad port {n}: expected {PORTS_EXPECTING}"),
            NumOrText::Text(t) => format!("bad port range {t:?}: expected {PORTS_EXPECTING}"),
        })
    }
}

impl fmt::Display for L4Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl Serialize for L4Ports {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u16(self.first)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for L4Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        L4Ports::from_value(num_or_text(d, PORTS_EXPECTING)?).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn ethertypes() {
        assert_eq!(json::<EtherType>("\"ipv4\""), Ok(EtherType(0x0800)));
        assert_eq!(json::<EtherType>("\"ARP\""), Ok(EtherType(0x0806)));
        assert_eq!(json::<EtherType>("\"0x88cc\""), Ok(EtherType(0x88cc)));
        assert_eq!(json::<EtherType>("34525"), Ok(EtherType(0x86dd)));
        assert_eq!(
            serde_json::to_string(&EtherType(0x86dd)).unwrap(),
            "\"ipv6\""
        );
        assert_eq!(
            serde_json::to_string(&EtherType(0x88cc)).unwrap(),
            "\"0x88cc\""
        );
        assert!(json::<EtherType>("\"ip\"")
            .unwrap_err()
            .contains("bad ethertype \"ip\""));
        assert!(json::<EtherType>("65536")
            .unwrap_err()
            .contains("more than 16 bits"));
        assert!(json::<EtherType>("\"0x\"").is_err());
        assert!(json::<EtherType>("-1")
            .unwrap_err()
            .contains("an ethertype"));
        assert!(json::<EtherType>("true")
            .unwrap_err()
            .contains("an ethertype"));
    }

    #[test]
    fn protocols() {
        assert_eq!(json::<IpProto>("\"icmp\""), Ok(IpProto::ICMP));
        assert_eq!(json::<IpProto>("\"icmpv6\""), Ok(IpProto::ICMPV6));
        assert_eq!(json::<IpProto>("47"), Ok(IpProto(47)));
        assert_eq!(json::<IpProto>("\"47\""), Ok(IpProto(47)));
        assert_eq!(serde_json::to_string(&IpProto(47)).unwrap(), "47");
        assert_eq!(serde_json::to_string(&IpProto::TCP).unwrap(), "\"tcp\"");
        assert!(json::<IpProto>("256")
            .unwrap_err()
            .contains("more than 255"));
        assert!(json::<IpProto>("\"sctp\"")
            .unwrap_err()
            .contains("bad IP protocol"));
        assert!(IpProto::UDP.has_ports() && !IpProto::ICMP.has_ports());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(json::<L4Ports>("22"), Ok(L4Ports::one(22)));
        let r = json::<L4Ports>("\"1024-65535\"").unwrap();
        assert!(r.contains(1024) && r.contains(65535) && !r.contains(1023));
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"1024-65535\"");
        assert_eq!(serde_json::to_string(&L4Ports::one(53)).unwrap(), "53");
        for bad in ["65536", "\"9-1\"", "\"1-\"", "\"a\"", "\"-\"", "1.5"] {
            assert!(json::<L4Ports>(bad).is_err(), "{bad}");
        }
        assert!(json::<L4Ports>("\"9-1\"")
            .unwrap_err()
            .contains("bad port range"));
    }
}
