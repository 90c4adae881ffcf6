//! How a domain's memory is shared out when the host has less than all domains were given, as
//! ESX does it (Waldspurger, OSDI 2002): a **reservation** the domain always keeps, and
//! **shares** that order who gives memory back first (the domain with the fewest shares per page
//! it holds).
//!
//! [`MemoryAlloc`] is part of a [`crate::DomainSpec`] (the `memory_alloc` object of a
//! definition) and `vessel create`'s `--reservation` and `--shares`. The daemon's memory policy
//! (the `control` crate's `allocation` module) acts on them; `vessel run`, one domain alone,
//! takes none.

use serde::{Deserialize, Serialize};

/// The shares of a domain given none.
pub const DEFAULT_SHARES: u32 = 1000;
/// The most shares a domain may have.
pub const MAX_SHARES: u32 = 1_000_000;

/// A domain's claim on the host's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct MemoryAlloc {
    /// Memory the domain always keeps, never reclaimed (at most its --memory; 0 by default).
    /// The daemon refuses to start a domain whose reservation does not fit in what the memory
    /// pool has not reserved for the running domains.
    #[serde(default, with = "reservation_text")]
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_reservation)
    )]
    pub reservation: u64,
    /// The domain's shares (1 to 1000000): when the memory pool is short, memory is taken back
    /// first from the domain with the fewest shares per page it holds.
    #[serde(default = "default_shares")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N", default_value_t = DEFAULT_SHARES))]
    pub shares: u32,
}

/// A reservation as `--reservation` takes it: `0`, or a size as `--memory` takes it.
pub fn parse_reservation(text: &str) -> Result<u64, crate::spec::SpecError> {
    if text.trim() == "0" {
        Ok(0)
    } else {
        crate::spec::parse_size(text)
    }
}

/// A reservation in a definition: a size as text, `"0"` for none.
mod reservation_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
        if *bytes == 0 {
            s.serialize_str("0")
        } else {
            crate::spec::size_text::serialize(bytes, s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_reservation(&text)
            .map_err(|e| serde::de::Error::custom(format_args!("reservation: {e}")))
    }
}

fn default_shares() -> u32 {
    DEFAULT_SHARES
}

impl Default for MemoryAlloc {
    fn default() -> Self {
        MemoryAlloc {
            reservation: 0,
            shares: DEFAULT_SHARES,
        }
    }
}

impl MemoryAlloc {
    /// Whether these are the defaults (a definition then leaves them out).
    pub fn is_default(&self) -> bool {
        *self == MemoryAlloc::default()
    }

    /// Checks them for a domain of `memory` bytes.
    pub fn validate(&self, memory: u64) -> Result<(), AllocError> {
        if !(1..=MAX_SHARES).contains(&self.shares) {
            return Err(AllocError::Shares(self.shares));
        }
        if self.reservation > memory {
            return Err(AllocError::ReservationAboveMemory {
                reservation: self.reservation,
                memory,
            });
        }
        if !self.reservation.is_multiple_of(4096) {
            return Err(AllocError::UnalignedReservation);
        }
        Ok(())
    }
}

/// A claim out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Shares out of 1..=1000000.
    #[error("--shares {0} is out of range: give 1 to {MAX_SHARES}")]
    Shares(u32),
    /// A reservation above the domain's memory.
    #[error("--reservation {} MiB is more than the domain's --memory {} MiB", .reservation >> 20, .memory >> 20)]
    ReservationAboveMemory {
        /// The reservation given (bytes).
        reservation: u64,
        /// The domain's memory (bytes).
        memory: u64,
    },
    /// A reservation that is not whole pages.
    #[error("--reservation must be a multiple of 4 KiB")]
    UnalignedReservation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_checked_against_the_domains_memory() {
        let mib = 1 << 20;
        assert!(MemoryAlloc::default().validate(16 * mib).is_ok());
        let ok = MemoryAlloc {
            reservation: 128 * mib,
            shares: 1,
        };
        assert!(ok.validate(128 * mib).is_ok());
        assert_eq!(
            ok.validate(64 * mib).unwrap_err().to_string(),
            "--reservation 128 MiB is more than the domain's --memory 64 MiB"
        );
        for shares in [0, MAX_SHARES + 1] {
            let bad = MemoryAlloc { shares, ..ok };
            assert_eq!(bad.validate(256 * mib), Err(AllocError::Shares(shares)));
        }
        let odd = MemoryAlloc {
            reservation: mib + 1,
            ..ok
        };
        assert_eq!(
            odd.validate(256 * mib),
            Err(AllocError::UnalignedReservation)
        );
    }

    #[test]
    fn json_gives_sizes_as_text_and_leaves_defaults_out() {
        let a: MemoryAlloc = serde_json::from_str(r#"{"reservation": "64M"}"#).unwrap();
        assert_eq!(
            a,
            MemoryAlloc {
                reservation: 64 << 20,
                shares: DEFAULT_SHARES
            }
        );
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            serde_json::json!({"reservation": "64M", "shares": 1000})
        );
        assert!(serde_json::from_str::<MemoryAlloc>(r#"{"shares": 1, "x": 2}"#).is_err());
        let none: MemoryAlloc =
            serde_json::from_str(r#"{"reservation": "0", "shares": 5}"#).unwrap();
        assert_eq!(
            none,
            MemoryAlloc {
                reservation: 0,
                shares: 5
            }
        );
        assert_eq!(
            serde_json::to_value(none).unwrap(),
            serde_json::json!({"reservation": "0", "shares": 5})
        );
        assert!(serde_json::from_str::<MemoryAlloc>(r#"{"reservation": "lots"}"#).is_err());
        assert_eq!(parse_reservation("0"), Ok(0));
        assert_eq!(parse_reservation("1G"), Ok(1 << 30));
    }
}
