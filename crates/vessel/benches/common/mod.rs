//! Helpers shared by the benchmarks: reading figures out of box step output, medians, rounds.
// Each benchmark uses its own subset of these.
#![allow(dead_code)]

use testbox::StepResult;

/// The number after `prefix` on the first line of the step's output that starts with it.
pub fn figure(step: &StepResult, prefix: &str) -> f64 {
    try_figure(step, prefix).unwrap_or_else(|e| panic!("{e}:\n{}", step.output))
}

/// The number after `prefix` on the first line of the step's output that starts with it, or
/// why there is none.
pub fn try_figure(step: &StepResult, prefix: &str) -> Result<f64, String> {
    step.output
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| {
            let lines: Vec<&str> = step.output.lines().collect();
            format!(
                "step {} (exit {}): no '{prefix}' figure; its output ended with: {}",
                step.name,
                step.exit_code,
                lines[lines.len().saturating_sub(6)..].join(" | ")
            )
        })
}

/// The figures of the rounds that produced one; each failed round is reported on stderr with
/// the reason (if none produced one, the median of the empty list is NaN: printed as such).
pub fn successes(rounds: impl Iterator<Item = Result<f64, String>>, what: &str) -> Vec<f64> {
    let mut ok = Vec::new();
    for r in rounds {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => eprintln!("bench: {what}: a round is left out: {e}"),
        }
    }
    if ok.is_empty() {
        eprintln!("bench: {what}: no round finished");
    }
    ok
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

/// Step results by name, each from a box of its own (see [`each_in_own_box`]).
pub struct Steps(Vec<(String, Result<StepResult, String>)>);

impl Steps {
    /// The result of step `name`, or why it has none.
    pub fn get(&self, name: &str) -> Result<&StepResult, String> {
        match self.0.iter().find(|(n, _)| n == name) {
            Some((_, Ok(step))) => Ok(step),
            Some((_, Err(e))) => Err(e.clone()),
            None => Err(format!("no step {name}")),
        }
    }
}

/// Runs every `(name, script)` step in a box of its own, a clone of `bx` (which has no steps).
/// L1 boots again for each step, so when L1 dies under TCG (it does now and then, under
/// QEMU's guests as under Vessel's, after the box's own retry) only that step is lost; the
/// failure is reported on stderr and kept as the step's result.
///
/// With `VESSEL_BENCH_DRY_RUN=DIR`, nothing runs: each step's script is written to
/// `DIR/NAME.sh` (to check them with `sh -n`) and every step fails. With
/// `VESSEL_BENCH_ONLY=TEXT`, only the steps whose names contain `TEXT` run (the others fail as
/// skipped), to look into one step (with `VESSEL_BOX_VERBOSE=1`).
pub fn each_in_own_box(bx: &testbox::HostBox, steps: &[(String, String)]) -> Steps {
    let only = std::env::var("VESSEL_BENCH_ONLY").unwrap_or_default();
    if let Some(dir) = std::env::var_os("VESSEL_BENCH_DRY_RUN") {
        let dir = std::path::PathBuf::from(dir);
        for (name, script) in steps {
            std::fs::write(dir.join(format!("{name}.sh")), script)
                .expect("writing a dry-run script");
        }
        return Steps(
            steps
                .iter()
                .map(|(name, _)| (name.clone(), Err("dry run".to_string())))
                .collect(),
        );
    }
    Steps(
        steps
            .iter()
            .map(|(name, script)| {
                if !name.contains(&only) {
                    return (name.clone(), Err(format!("step {name} skipped")));
                }
                let result = match bx.clone().step(name, script).run() {
                    Ok(run) => run
                        .steps
                        .into_iter()
                        .find(|s| &s.name == name)
                        .ok_or_else(|| format!("step {name} did not run")),
                    Err(e) => Err(format!(
                        "the box of step {name} failed: {}",
                        e.to_string().lines().next().unwrap_or_default()
                    )),
                };
                // Reported as each step ends, so a run cut short keeps what it measured.
                match &result {
                    Ok(step) => {
                        let lines: Vec<&str> = step.output.lines().collect();
                        eprintln!(
                            "bench: step {name} done (exit {}, {:.1} s): {}",
                            step.exit_code,
                            step.seconds,
                            lines[lines.len().saturating_sub(8)..].join(" | ")
                        );
                    }
                    Err(e) => eprintln!("bench: {e}"),
                }
                (name.clone(), result)
            })
            .collect(),
    )
}
