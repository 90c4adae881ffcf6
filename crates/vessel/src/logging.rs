//! Logs of the daemon and of domain processes, through `tracing`: one line per event on
//! standard error, with a UTC timestamp, the level and the module; `RUST_LOG` filters them with
//! the usual directives (`info`, the default; `vessel=debug,vmm=info`; `warn`...). A bad
//! `RUST_LOG` is reported and the default kept.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// Installs the subscriber for this process (once; later calls do nothing).
pub fn init() {
    let default = Targets::new().with_default(LevelFilter::INFO);
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => match text.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (
                default,
                Some(format!(
                    "RUST_LOG={text:?} is not understood ({e}); logging at info"
                )),
            ),
        },
        _ => (default, None),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .try_init();
    if let Some(bad) = bad {
        tracing::warn!("{bad}");
    }
}
