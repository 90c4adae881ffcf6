//! Helpers shared by the benchmarks: reading figures out of box step output, medians, rounds.
// Each benchmark uses its own subset of these.
#![allow(dead_code)]

use testbox::StepResult;

/// The number after `prefix` on the first line of the step's output that starts with it.
pub fn figure(step: &StepResult, prefix: &str) -> f64 {
    step.output
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("step {}: no '{prefix}' figure:\n{}", step.name, step.output))
}

/// The median (mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Rounds per VMM: `VESSEL_BENCH_ROUNDS`, or `default`.
pub fn rounds(default: usize) -> usize {
    std::env::var("VESSEL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// Runs `rounds` of the `vessel` step then the `qemu` step (named `vessel-N`, `qemu-N`) in one
/// box, alternating so that drift in the box affects both alike.
pub fn alternate(
    mut bx: testbox::HostBox,
    rounds: usize,
    vessel: &str,
    qemu: &str,
) -> testbox::BoxRun {
    for i in 0..rounds {
        bx = bx
            .step(&format!("vessel-{i}"), vessel)
            .step(&format!("qemu-{i}"), qemu);
    }
    bx.run().unwrap_or_else(|e| panic!("host box failed: {e}"))
}
