//! IP prefixes in CIDR notation (`10.0.0.0/8`, `fd00::/64`, or a bare address for one host),
//! for the address patterns of rules.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 or IPv6 prefix: an address whose bits past `len` are zero, and a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

/// Why a string is not a prefix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad CIDR prefix {text:?}: {reason}")]
pub struct BadPrefix {
    /// The rejected text.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl IpPrefix {
    /// The prefix `addr/len`; `None` when `len` is too long for the family or `addr` has bits
    /// set past `len`.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let (value, width) = bits(addr);
        (len <= width && value & !mask(len) == 0).then_some(IpPrefix { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` is inside: same family, same first `len` bits.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        (bits(ip).0 ^ bits(self.addr).0) & mask(self.len) == 0
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for IpPrefix {
    type Err = BadPrefix;
    fn from_str(s: &str) -> Result<Self, BadPrefix> {
        let bad = |reason: String| BadPrefix {
            text: s.to_string(),
            reason,
        };
        let (addr_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| bad(format!("{addr_text:?} is not an IPv4 or IPv6 address")))?;
        let width = bits(addr).1;
        let len = match len_text {
            None => width,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= width && !l.starts_with('+') => n,
                _ => {
                    return Err(bad(format!(
                        "the prefix length must be a number from 0 to {width}"
                    )))
                }
            },
        };
        IpPrefix::new(addr, len).ok_or_else(|| {
            let (value, _) = bits(addr);
            let network = match addr {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(((value & mask(len)) >> 96) as u32)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value & mask(len))),
            };
            bad(format!(
                "address bits are set past the prefix length (did you mean {network}/{len}?)"
            ))
        })
    }
}

impl TryFrom<String> for IpPrefix {
    type Error = BadPrefix;
    fn try_from(s: String) -> Result<Self, BadPrefix> {
        s.parse()
    }
}

impl From<IpPrefix> for String {
    fn from(p: IpPrefix) -> String {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn contains() {
        let p: IpPrefix = "10.1.0.0/16".parse().unwrap();
        assert!(p.contains(ip("10.1.255.3")));
        assert!(!p.contains(ip("10.2.0.1")));
        assert!(!p.contains(ip("::ffff:10.1.0.1")), "families never mix");
        let all: IpPrefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        let host: IpPrefix = "192.168.0.7".parse().unwrap();
        assert_eq!(host.to_string(), "192.168.0.7/32");
        assert!(host.contains(ip("192.168.0.7")) && !host.contains(ip("192.168.0.6")));
        let v6: IpPrefix = "fd00:1::/32".parse().unwrap();
        assert!(v6.contains(ip("fd00:1::99")) && !v6.contains(ip("fd00:2::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let any6: IpPrefix = "::/0".parse().unwrap();
        assert!(any6.contains(ip("2001:db8::1")));
    }

    #[test]
    fn rejects_bad_prefixes_with_reasons() {
        let reason = |s: &str| s.parse::<IpPrefix>().unwrap_err().to_string();
        assert!(reason("10.0.0.0/33").contains("from 0 to 32"));
        assert!(reason("fd00::/129").contains("from 0 to 128"));
        assert!(reason("10.0.0.0/").contains("from 0 to 32"));
        assert!(reason("10.0.0.0/+8").contains("from 0 to 32"));
        assert!(reason("10.0.0/8").contains("not an IPv4 or IPv6 address"));
        assert!(reason("").contains("not an IPv4 or IPv6 address"));
        assert!(reason("10.0.0.1/8").contains("did you mean 10.0.0.0/8"));
        assert!(reason("fd00::1/16").contains("did you mean fd00::/16"));
    }
}
