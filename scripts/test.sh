#!/usr/bin/env bash
# Vessel's whole test suite: formatting, lints, the fuzz targets' build and a short run of each
# (about 12 s a target, from its seeds; a crash fails the suite), unit tests, the fast
# tests on /dev/kvm with the purpose-built guest, and the Linux-guest tests in the host box. Box tests run one at a time
# (--test-threads=1): each is a QEMU TCG machine that wants both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
bash scripts/fuzz-build.sh
bash scripts/fuzz-run.sh
bash scripts/guest-assets.sh
cargo test --workspace -- --test-threads=1
