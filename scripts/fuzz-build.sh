#!/usr/bin/env bash
# Builds Vessel's cargo-fuzz targets (fuzz/) on the stable toolchain, installing cargo-fuzz
# first if it is missing. CI calls this; so can you.
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address, the sanitizer-coverage
# options); RUSTC_BOOTSTRAP=1 lets the stable compiler accept them, and stable's
# x86_64-unknown-linux-gnu target ships the ASan runtime, so the default AddressSanitizer build
# works. FUZZ_SANITIZER=none (or leak, ...) picks another; arguments go to `cargo fuzz build`
# (e.g. a target name).
#
# Run a target afterwards with, for example:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run virtqueue -- -max_total_time=60
# and every target briefly, as CI does, with scripts/fuzz-run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer "${FUZZ_SANITIZER:-address}" "$@"
