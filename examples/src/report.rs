//! What a comparison reports: accuracy curves, the summary table, the
//! consistency table and the CSV of every step.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::job::data::Dataset;
use crate::job::model::Model;
use crate::job::train::StepRecord;

use crate::consistency::{self, Read, Report, RoundPush};
use crate::run::Snapshot;

/// Test accuracy of the parameters at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalPoint {
    /// Seconds since the run started.
    pub wall: f64,
    /// Clock the parameters fully contain.
    pub clock: u64,
    /// Test accuracy.
    pub accuracy: f32,
}

/// One trained configuration: a policy's run, or the baseline.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// `sync`, `ssp(3)`, `async` or `baseline`.
    pub label: String,
    /// Staleness bound the run is checked against (`None`: none, or baseline).
    pub bound: Option<u64>,
    /// Sync with backup workers: the gradients each round must hold (`W - b`).
    pub quorum: Option<u32>,
    /// Workers of the run.
    pub workers: u32,
    /// Steps of every worker (empty for the baseline).
    pub steps: Vec<StepRecord>,
    /// Accuracy over time on the evaluation subset.
    pub curve: Vec<EvalPoint>,
    /// Accuracy of the final parameters on the whole test set.
    pub final_accuracy: f32,
    /// Training wall time.
    pub wall: Duration,
    /// Steps taken, summed over workers (clocks, for the baseline).
    pub total_steps: u64,
    /// Clocks per worker.
    pub clocks: u64,
    /// Loss per clock of the baseline (global batch), for the loss curves.
    pub baseline_loss: Vec<f32>,
}

/// Test accuracy of every snapshot on `eval` (the curve) and of the last on `test`.
pub fn evaluate(
    model: &Model,
    snapshots: &[Snapshot],
    eval: &Dataset,
    test: &Dataset,
    eval_rows: usize,
) -> (Vec<EvalPoint>, f32) {
    let (x, y) = eval.head(eval_rows);
    let curve = snapshots
        .iter()
        .map(|s| EvalPoint {
            wall: s.wall.as_secs_f64(),
            clock: s.clock,
            accuracy: model.accuracy(&s.params, x, y),
        })
        .collect();
    let last = snapshots.last().map_or(0.0, |s| model.accuracy(&s.params, test.images.view(), &test.labels));
    (curve, last)
}

/// The consistency checker's view of a run's reads.
pub fn reads(steps: &[StepRecord]) -> Vec<Read> {
    steps
        .iter()
        .flat_map(|s| {
            s.versions.iter().map(move |(tensor, versions)| Read {
                worker: s.worker,
                clock: s.clock,
                tensor: tensor.clone(),
                start: s.read.0.as_secs_f64(),
                end: s.read.1.as_secs_f64(),
                versions: versions.clone(),
            })
        })
        .collect()
}

/// The pushes of a backup-workers run, for [`consistency::check_rounds`].
pub fn round_pushes(steps: &[StepRecord]) -> Vec<RoundPush> {
    steps
        .iter()
        .flat_map(|s| {
            s.rounds.iter().map(move |(tensor, round)| RoundPush {
                worker: s.worker,
                tensor: tensor.clone(),
                round: *round,
                dropped: s.dropped.as_ref().map(|d| d.contains(tensor)),
            })
        })
        .collect()
}

/// One row of the summary table.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryRow {
    /// Policy label.
    pub label: String,
    /// Seconds until the curve first reached the target.
    pub time_to_target: Option<f64>,
    /// That time over the baseline's.
    pub vs_baseline: Option<f64>,
    /// Final test accuracy.
    pub final_accuracy: f32,
    /// Worker steps per second, all workers together.
    pub steps_per_second: f64,
    /// Mean and max staleness of the reads.
    pub staleness: (f64, i64),
    /// Fraction of worker time spent waiting for the policy.
    pub blocked: f64,
}

fn time_to(curve: &[EvalPoint], target: f32) -> Option<f64> {
    curve.iter().find(|p| p.accuracy >= target).map(|p| p.wall)
}

/// The summary rows, baseline first.
pub fn summarize(outcomes: &[Outcome], target: f32) -> Vec<SummaryRow> {
    let baseline = outcomes.iter().find(|o| o.label == "baseline").and_then(|o| time_to(&o.curve, target));
    outcomes
        .iter()
        .map(|o| {
            let t = time_to(&o.curve, target);
            let n = o.steps.len().max(1) as f64;
            let busy: f64 = o.steps.iter().map(|s| (s.pull + s.compute + s.push).as_secs_f64()).sum();
            let blocked: f64 = o.steps.iter().map(|s| s.blocked.as_secs_f64()).sum();
            SummaryRow {
                label: o.label.clone(),
                time_to_target: t,
                vs_baseline: t.zip(baseline).map(|(t, b)| t / b.max(1e-9)),
                final_accuracy: o.final_accuracy,
                steps_per_second: o.total_steps as f64 / o.wall.as_secs_f64().max(1e-9),
                // With backup workers every read is of the latest round and
                // a kept gradient is of its round's values: 0 rounds stale
                // (worker clocks, which move apart, do not measure it).
                staleness: match o.quorum {
                    Some(_) => (0.0, 0),
                    None => (
                        o.steps.iter().map(|s| s.staleness as f64).sum::<f64>() / n,
                        o.steps.iter().map(|s| s.staleness).max().unwrap_or(0),
                    ),
                },
                blocked: if busy > 0.0 { blocked / busy } else { 0.0 },
            }
        })
        .collect()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("never".into(), |v| format!("{v:.digits$}"))
}

/// The summary as a Markdown table.
pub fn summary_table(rows: &[SummaryRow], target: f32) -> String {
    let mut s = format!(
        "| policy | time to {target:.2} acc (s) | vs baseline | final acc | steps/s | staleness mean | staleness max | blocked |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let (mean, max, blocked) = if r.label == "baseline" {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            (format!("{:.2}", r.staleness.0), r.staleness.1.to_string(), format!("{:.1}%", r.blocked * 100.0))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | {:.0} | {mean} | {max} | {blocked} |",
            r.label,
            opt(r.time_to_target, 1),
            r.vs_baseline.map_or("never".into(), |v| format!("{v:.2}x")),
            r.final_accuracy,
            r.steps_per_second,
        );
    }
    s
}

fn verdict(v: consistency::Verdict) -> String {
    if v.checked == 0 {
        "n/a".into()
    } else if v.held() {
        format!("held ({} checked)", v.checked)
    } else {
        format!("VIOLATED ({} of {})", v.violations, v.checked)
    }
}

/// The consistency checker's verdicts per policy, as a Markdown table.
pub fn consistency_table(outcomes: &[Outcome]) -> (String, Vec<(String, Report)>) {
    let mut s = String::from(
        "| policy | read-your-writes | monotonic reads | monotonic writes | bounded staleness | rounds of W-b | max staleness seen |\n\
         |---|---|---|---|---|---|---:|\n",
    );
    let mut reports = Vec::new();
    for o in outcomes.iter().filter(|o| !o.steps.is_empty()) {
        let r = consistency::check(&reads(&o.steps), o.bound);
        let bound = match (o.bound, o.quorum) {
            (Some(b), _) => format!("s = {b}: {}", verdict(r.bounded_staleness)),
            (None, Some(_)) => "rounds, not clocks (backup)".into(),
            (None, None) => "no bound (eventual)".into(),
        };
        let rounds = o.quorum.map(|q| consistency::check_rounds(&round_pushes(&o.steps), o.workers, q));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            o.label,
            verdict(r.read_your_writes),
            verdict(r.monotonic_reads),
            verdict(r.monotonic_writes),
            bound,
            rounds.map_or_else(|| "n/a".into(), verdict),
            if o.quorum.is_some() { "0 rounds".to_string() } else { r.max_staleness.to_string() }
        );
        reports.push((o.label.clone(), Report { rounds: rounds.unwrap_or_default(), ..r }));
    }
    (s, reports)
}

/// Writes one row per worker step and one per evaluation.
pub fn write_csv(path: &Path, outcomes: &[Outcome]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "policy,worker,clock,wall_s,train_loss,test_accuracy,staleness,blocked_s")?;
    for o in outcomes {
        for s in &o.steps {
            writeln!(
                f,
                "{},{},{},{:.6},{:.6},,{},{:.6}",
                o.label,
                s.worker,
                s.clock,
                s.wall.as_secs_f64(),
                s.loss,
                s.staleness,
                s.blocked.as_secs_f64()
            )?;
        }
        for (clock, loss) in o.baseline_loss.iter().enumerate() {
            writeln!(f, "{},,{clock},,{loss:.6},,0,0", o.label)?;
        }
        for p in &o.curve {
            writeln!(f, "{},eval,{},{:.6},,{:.6},,", o.label, p.clock, p.wall, p.accuracy)?;
        }
    }
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_to_target_is_the_first_crossing() {
        let c = [
            EvalPoint { wall: 1.0, clock: 1, accuracy: 0.5 },
            EvalPoint { wall: 2.0, clock: 2, accuracy: 0.81 },
            EvalPoint { wall: 3.0, clock: 3, accuracy: 0.79 },
        ];
        assert_eq!(time_to(&c, 0.8), Some(2.0));
        assert_eq!(time_to(&c, 0.9), None);
    }
}
