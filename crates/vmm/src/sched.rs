//! A domain's CPU scheduling parameters, as a user gives them: Borrowed Virtual Time's weight and
//! warp (Duda and Cheriton, SOSP 1999; Xen's first scheduler) and a cap.
//!
//! [`SchedParams`] is part of a [`crate::DomainSpec`] (the `sched` object of a definition),
//! `vessel create`'s `--weight`, `--cap`, `--warp`, `--warp-limit` and `--unwarp`, and the body
//! of the API's scheduling calls ([`SchedChange`] changes some of them on a running domain).
//! The daemon's scheduler (the `control` crate's `bvt` and `scheduler` modules) acts on them;
//! `vessel run`, one domain alone, has nothing to share its CPUs with and takes none.

use serde::{Deserialize, Serialize};

/// The weight of a domain given none.
pub const DEFAULT_WEIGHT: u32 = 256;
/// The largest weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// The warp limit of a domain given none, in milliseconds.
pub const DEFAULT_WARP_LIMIT_MS: u32 = 50;
/// The unwarp requirement of a domain given none, in milliseconds.
pub const DEFAULT_UNWARP_MS: u32 = 200;
/// The largest warp, warp limit and unwarp requirement, in milliseconds.
pub const MAX_WARP_MS: u32 = 10_000;

/// How a domain shares the host's CPUs with the other domains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct SchedParams {
    /// The domain's weight (1 to 10000): domains that all want CPU get it in proportion to
    /// their weights.
    #[serde(default = "default_weight")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N", default_value_t = DEFAULT_WEIGHT))]
    pub weight: u32,
    /// The most CPU the domain may use, in percent of one host CPU (0: no cap). It holds even
    /// when the host is otherwise idle.
    #[serde(default)]
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "PERCENT", default_value_t = 0)
    )]
    pub cap: u32,
    /// BVT's warp W, in milliseconds of virtual time (0: off): a domain that wakes runs as if
    /// it were W behind the others, so it is dispatched soon, without a larger share in the
    /// long run.
    #[serde(default)]
    #[cfg_attr(
        feature = "clap",
        arg(long = "warp", value_name = "MS", default_value_t = 0)
    )]
    pub warp_ms: u32,
    /// BVT's warp limit L: the longest one warped run may last, in milliseconds.
    #[serde(default = "default_warp_limit")]
    #[cfg_attr(
        feature = "clap",
        arg(long = "warp-limit", value_name = "MS", default_value_t = DEFAULT_WARP_LIMIT_MS)
    )]
    pub warp_limit_ms: u32,
    /// BVT's unwarp requirement U: how long a domain stays unwarped after a warped run before
    /// it may warp again, in milliseconds.
    #[serde(default = "default_unwarp")]
    #[cfg_attr(
        feature = "clap",
        arg(long = "unwarp", value_name = "MS", default_value_t = DEFAULT_UNWARP_MS)
    )]
    pub unwarp_ms: u32,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

fn default_warp_limit() -> u32 {
    DEFAULT_WARP_LIMIT_MS
}

fn default_unwarp() -> u32 {
    DEFAULT_UNWARP_MS
}

impl Default for SchedParams {
    fn default() -> Self {
        SchedParams {
            weight: DEFAULT_WEIGHT,
            cap: 0,
            warp_ms: 0,
            warp_limit_ms: DEFAULT_WARP_LIMIT_MS,
            unwarp_ms: DEFAULT_UNWARP_MS,
        }
    }
}

/// Scheduling parameters out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// A weight out of 1..=10000.
    #[error("--weight {0} is out of range: give 1 to {MAX_WEIGHT}")]
    Weight(u32),
    /// A cap above what the domain's vCPUs could use.
    #[error("--cap {cap} is more than {vcpus} vCPU(s) can use: give 0 (no cap) to {}", vcpus * 100)]
    Cap {
        /// The cap given, in percent of one CPU.
        cap: u32,
        /// The domain's vCPUs.
        vcpus: u32,
    },
    /// A warp time out of range.
    #[error("--{flag} {value} is out of range: give 0 to {MAX_WARP_MS} ms")]
    Warp {
        /// Which flag.
        flag: &'static str,
        /// The value given.
        value: u32,
    },
    /// A warp whose limit is zero: it could never run warped.
    #[error("--warp needs a --warp-limit of at least 1 ms")]
    NoWarpLimit,
}

impl SchedParams {
    /// Checks the parameters of a domain of `vcpus` vCPUs.
    pub fn validate(&self, vcpus: u32) -> Result<(), SchedError> {
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(SchedError::Weight(self.weight));
        }
        if self.cap > vcpus.saturating_mul(100) {
            return Err(SchedError::Cap {
                cap: self.cap,
                vcpus,
            });
        }
        for (flag, value) in [
            ("warp", self.warp_ms),
            ("warp-limit", self.warp_limit_ms),
            ("unwarp", self.unwarp_ms),
        ] {
            if value > MAX_WARP_MS {
                return Err(SchedError::Warp { flag, value });
            }
        }
        if self.warp_ms > 0 && self.warp_limit_ms == 0 {
            return Err(SchedError::NoWarpLimit);
        }
        Ok(())
    }

    /// Whether these are the defaults (a definition leaves them out).
    pub fn is_default(&self) -> bool {
        *self == SchedParams::default()
    }

    /// These parameters with `change` applied.
    pub fn with(mut self, change: &SchedChange) -> SchedParams {
        self.weight = change.weight.unwrap_or(self.weight);
        self.cap = change.cap.unwrap_or(self.cap);
        self.warp_ms = change.warp_ms.unwrap_or(self.warp_ms);
        self.warp_limit_ms = change.warp_limit_ms.unwrap_or(self.warp_limit_ms);
        self.unwarp_ms = change.unwarp_ms.unwrap_or(self.unwarp_ms);
        self
    }
}

/// A change of some of a domain's scheduling parameters (`vessel sched NAME --weight N`, the
/// API's `PUT /v1/domains/NAME/sched`); the others stay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedChange {
    /// A new weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// A new cap, in percent of one CPU (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<u32>,
    /// A new warp, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warp_ms: Option<u32>,
    /// A new warp limit, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warp_limit_ms: Option<u32>,
    /// A new unwarp requirement, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwarp_ms: Option<u32>,
}

impl SchedChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == SchedChange::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_out_of_range_are_refused_with_the_flag() {
        let ok = SchedParams::default();
        assert_eq!(ok.validate(1), Ok(()));
        let with = |f: &dyn Fn(&mut SchedParams)| {
            let mut p = SchedParams::default();
            f(&mut p);
            p
        };
        for (params, vcpus, says) in [
            (with(&|p| p.weight = 0), 1, "--weight 0 is out of range"),
            (with(&|p| p.weight = 10_001), 1, "--weight 10001"),
            (
                with(&|p| p.cap = 101),
                1,
                "--cap 101 is more than 1 vCPU(s)",
            ),
            (with(&|p| p.warp_ms = 10_001), 1, "--warp 10001"),
            (with(&|p| p.unwarp_ms = 60_000), 1, "--unwarp 60000"),
            (
                with(&|p| {
                    p.warp_ms = 5;
                    p.warp_limit_ms = 0
                }),
                1,
                "--warp needs a --warp-limit",
            ),
        ] {
            let err = params.validate(vcpus).unwrap_err().to_string();
            assert!(err.contains(says), "{params:?}: {err}");
        }
        assert_eq!(with(&|p| p.cap = 200).validate(2), Ok(()));
        assert_eq!(with(&|p| p.weight = 1).validate(1), Ok(()));
    }

    #[test]
    fn a_change_touches_only_what_it_names() {
        let p = SchedParams::default().with(&SchedChange {
            weight: Some(512),
            warp_ms: Some(20),
            ..SchedChange::default()
        });
        assert_eq!(
            p,
            SchedParams {
                weight: 512,
                warp_ms: 20,
                ..SchedParams::default()
            }
        );
        let json: SchedChange = serde_json::from_str(r#"{"cap":25}"#).unwrap();
        assert_eq!(SchedParams::default().with(&json).cap, 25);
        assert!(serde_json::from_str::<SchedChange>(r#"{"speed":1}"#).is_err());
        let full: SchedParams = serde_json::from_str(r#"{"weight":3}"#).unwrap();
        assert_eq!(
            full.warp_limit_ms, DEFAULT_WARP_LIMIT_MS,
            "defaults fill in"
        );
    }
}
