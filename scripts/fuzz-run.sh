#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for a few seconds from its seeds (fuzz/seeds/TARGET), one
# at a time on one core: CI's smoke test of the fuzzers, after scripts/fuzz-build.sh built them.
# Exits non-zero, after running the others, if any target crashed, hung (one input over 10 s)
# or failed to start; the input that did it is kept in fuzz/artifacts/TARGET/ for
# reproduction (`fuzz/target/<host>/release/TARGET fuzz/artifacts/TARGET/crash-...`).
#
# FUZZ_SECONDS sets the time per target (default 12); arguments name the targets to run
# (default: all of them). Each run starts from the seeds only and keeps no corpus, so it is
# the same work every time; for longer runs see docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-12}"
host="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="fuzz/target/$host/release"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^vessel-fuzz$')
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    if [ ! -x "$bin_dir/$t" ]; then
        echo "fuzz-run: $t: no binary at $bin_dir/$t (run scripts/fuzz-build.sh)" >&2
        failed+=("$t")
        continue
    fi
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    seeds=()
    if [ -d "fuzz/seeds/$t" ]; then
        seeds=("fuzz/seeds/$t")
    fi
    start=$SECONDS
    if "$bin_dir/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/artifacts/$t/" "$work/$t" "${seeds[@]}" >"$work/$t.log" 2>&1; then
        stats="$(grep -E '^#[0-9]+' "$work/$t.log" | tail -1 | sed 's/^#\([0-9]*\)\s*\S*\s*/runs \1, /')"
        echo "fuzz-run: $t: ok in $((SECONDS - start)) s ($stats)"
    else
        echo "fuzz-run: $t: FAILED; the end of its log:" >&2
        tail -n 40 "$work/$t.log" >&2
        ls fuzz/artifacts/"$t"/ >&2 || true
        failed+=("$t")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-run: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-run: ${#targets[@]} targets, ${seconds} s each: no crash"
