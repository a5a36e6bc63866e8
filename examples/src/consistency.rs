//! A checker of DESIGN §3's session guarantees and staleness bound over
//! recorded reads.
//!
//! Each [`Read`] is one pull of one tensor: who read, at which clock, when
//! (start and end, on one clock for all workers), and the version vector it
//! returned. From these alone the checker decides, per property, whether it
//! held on every read, and counts the reads checked and the violations.
//!
//! With backup workers, [`check_rounds`] checks from the pushes alone
//! that every round applied exactly its quorum of gradients.

use std::collections::BTreeMap;

/// One recorded pull of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Read {
    /// The reading worker.
    pub worker: u32,
    /// The pull's clock: the reader had pushed clocks `0..clock`, all acknowledged.
    pub clock: u64,
    /// The tensor.
    pub tensor: String,
    /// When the pull was sent (seconds, any common origin).
    pub start: f64,
    /// When its reply was complete.
    pub end: f64,
    /// Per worker, the highest clock applied to the value read.
    pub versions: Vec<i64>,
}

/// Outcome of one property over a history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Reads (or read pairs) the property was checked on.
    pub checked: u64,
    /// How many of them violated it.
    pub violations: u64,
}

impl Verdict {
    /// Whether the property held on everything checked.
    pub fn held(&self) -> bool {
        self.violations == 0
    }

    fn record(&mut self, ok: bool) {
        self.checked += 1;
        self.violations += u64::from(!ok);
    }
}

/// Per-property verdicts for one history.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Report {
    /// A pull after an acknowledged push reflects it: `versions[reader] >= clock - 1`.
    pub read_your_writes: Verdict,
    /// A worker's successive reads of a tensor never go back in any component.
    pub monotonic_reads: Verdict,
    /// Each worker's updates become visible in clock order and stay visible:
    /// a read that starts after another ended shows every writer at least as far.
    pub monotonic_writes: Verdict,
    /// No read misses updates older than the bound: `versions[w] >= clock - s - 1` for all `w`.
    pub bounded_staleness: Verdict,
    /// The largest staleness seen: `max_w (clock - 1 - versions[w])`, at least 0.
    pub max_staleness: i64,
    /// Backup workers: every round held exactly its quorum ([`check_rounds`]).
    pub rounds: Verdict,
}

/// One push under sync with backup workers, as its worker saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPush {
    /// The pushing worker.
    pub worker: u32,
    /// The tensor.
    pub tensor: String,
    /// The rounds applied to the values the gradient was computed from:
    /// the round it counts for, unless dropped.
    pub round: u64,
    /// Whether the shard dropped it; `None` when not known.
    pub dropped: Option<bool>,
}

/// Checks that every round holds exactly `quorum` gradients (`W - b`),
/// per tensor: the pushes computed from the values of round `r` and not
/// dropped are the ones round `r` applied. Checks the rounds during which
/// all `workers` were still pushing (below each worker's last read round),
/// where every push's fate is known.
pub fn check_rounds(pushes: &[RoundPush], workers: u32, quorum: u32) -> Verdict {
    let mut verdict = Verdict::default();
    let mut by_tensor: BTreeMap<&str, Vec<&RoundPush>> = BTreeMap::new();
    for p in pushes {
        by_tensor.entry(p.tensor.as_str()).or_default().push(p);
    }
    for seq in by_tensor.values() {
        let mut last = vec![None::<u64>; workers as usize];
        for p in seq {
            if let Some(l) = last.get_mut(p.worker as usize) {
                *l = Some(l.map_or(p.round, |r| r.max(p.round)));
            }
        }
        let Some(limit) = last.iter().map(|l| l.unwrap_or(0)).min() else { continue };
        let mut kept: BTreeMap<u64, u32> = (0..limit).map(|r| (r, 0)).collect();
        for p in seq.iter().filter(|p| p.round < limit) {
            if p.dropped == Some(false) {
                *kept.entry(p.round).or_default() += 1;
            }
        }
        for n in kept.values() {
            verdict.record(*n == quorum);
        }
    }
    verdict
}

/// Checks a history; `bound` is the staleness bound to check (`Some(0)` for
/// sync, `Some(s)` for ssp, `None` for async: then only the maximum is reported).
pub fn check(reads: &[Read], bound: Option<u64>) -> Report {
    let mut report = Report::default();
    for r in reads {
        let c = r.clock as i64;
        if c > 0 {
            let own = r.versions.get(r.worker as usize).copied().unwrap_or(-1);
            report.read_your_writes.record(own >= c - 1);
        }
        let stale = r.versions.iter().map(|v| (c - 1 - v).max(0)).max().unwrap_or(0);
        report.max_staleness = report.max_staleness.max(stale);
        if let Some(s) = bound {
            report.bounded_staleness.record(stale <= s as i64);
        }
    }
    // Monotonic reads: per (reader, tensor), in clock order.
    let mut by_reader: BTreeMap<(u32, &str), Vec<&Read>> = BTreeMap::new();
    for r in reads {
        by_reader.entry((r.worker, r.tensor.as_str())).or_default().push(r);
    }
    for seq in by_reader.values_mut() {
        seq.sort_by(|a, b| a.clock.cmp(&b.clock).then(a.start.total_cmp(&b.start)));
        for pair in seq.windows(2) {
            let ok = pair[1].versions.iter().zip(&pair[0].versions).all(|(later, earlier)| later >= earlier);
            report.monotonic_reads.record(ok);
        }
    }
    // Monotonic writes: per tensor, each read against the component-wise
    // maximum of all reads that ended before it started.
    let mut by_tensor: BTreeMap<&str, Vec<&Read>> = BTreeMap::new();
    for r in reads {
        by_tensor.entry(r.tensor.as_str()).or_default().push(r);
    }
    for seq in by_tensor.values() {
        let mut by_end: Vec<&Read> = seq.clone();
        by_end.sort_by(|a, b| a.end.total_cmp(&b.end));
        let mut by_start: Vec<&Read> = seq.clone();
        by_start.sort_by(|a, b| a.start.total_cmp(&b.start));
        let mut seen: Vec<i64> = Vec::new();
        let mut next = 0;
        for r in by_start {
            while next < by_end.len() && by_end[next].end < r.start {
                let v = &by_end[next].versions;
                if seen.len() < v.len() {
                    seen.resize(v.len(), -1);
                }
                for (s, x) in seen.iter_mut().zip(v) {
                    *s = (*s).max(*x);
                }
                next += 1;
            }
            if next > 0 {
                let ok = seen.iter().enumerate().all(|(w, s)| r.versions.get(w).copied().unwrap_or(-1) >= *s);
                report.monotonic_writes.record(ok);
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(worker: u32, clock: u64, start: f64, versions: &[i64]) -> Read {
        Read { worker, clock, tensor: "w".into(), start, end: start + 0.5, versions: versions.to_vec() }
    }

    /// A lockstep history of two workers: every property holds, staleness 0.
    fn good() -> Vec<Read> {
        let mut h = Vec::new();
        for c in 0..5u64 {
            for w in 0..2 {
                h.push(read(w, c, c as f64 * 10.0 + w as f64, &[c as i64 - 1, c as i64 - 1]));
            }
        }
        h
    }

    #[test]
    fn a_correct_sync_history_passes_everything() {
        let r = check(&good(), Some(0));
        assert!(r.read_your_writes.held() && r.monotonic_reads.held() && r.monotonic_writes.held());
        assert!(r.bounded_staleness.held());
        assert_eq!(r.read_your_writes.checked, 8);
        assert_eq!(r.monotonic_reads.checked, 8);
        assert_eq!(r.bounded_staleness.checked, 10);
        assert_eq!(r.max_staleness, 0);
    }

    #[test]
    fn detects_a_missing_own_write() {
        let mut h = good();
        h[4].versions = vec![0, 1]; // worker 0 at clock 2 misses its clock 1
        let r = check(&h, None);
        assert_eq!(r.read_your_writes.violations, 1);
    }

    #[test]
    fn detects_a_read_going_backwards() {
        let mut h = good();
        h[6].versions = vec![0, 0]; // worker 0 at clock 3 sees less than at clock 2
        let r = check(&h, None);
        assert!(r.monotonic_reads.violations >= 1, "{r:?}");
        assert!(r.monotonic_writes.violations >= 1, "{r:?}");
    }

    #[test]
    fn detects_a_lost_write_seen_by_another_worker() {
        // Worker 1 reads after worker 0's read ended, and sees worker 0's
        // updates rolled back; its own reads stay monotonic.
        let h = vec![read(0, 3, 0.0, &[2, 2]), read(1, 3, 1.0, &[1, 2])];
        let r = check(&h, None);
        assert!(r.monotonic_reads.held());
        assert_eq!(r.monotonic_writes, Verdict { checked: 1, violations: 1 });
    }

    #[test]
    fn overlapping_reads_are_not_ordered() {
        let h = vec![read(0, 3, 0.0, &[2, 2]), read(1, 3, 0.2, &[1, 2])];
        assert_eq!(check(&h, None).monotonic_writes.checked, 0);
    }

    fn pushed(worker: u32, round: u64, dropped: bool) -> RoundPush {
        RoundPush { worker, tensor: "w".into(), round, dropped: Some(dropped) }
    }

    #[test]
    fn every_round_must_hold_its_quorum() {
        // Three workers, one backup: rounds 0 and 1 each keep two pushes.
        let mut h = vec![
            pushed(0, 0, false),
            pushed(1, 0, false),
            pushed(2, 0, true),
            pushed(0, 1, false),
            pushed(2, 1, false),
            pushed(1, 1, true),
        ];
        // The last reads (round 2): their fate is not part of the check.
        h.extend((0..3).map(|w| RoundPush { worker: w, tensor: "w".into(), round: 2, dropped: None }));
        assert_eq!(check_rounds(&h, 3, 2), Verdict { checked: 2, violations: 0 });
        h[2].dropped = Some(false); // round 0 applied three gradients
        assert_eq!(check_rounds(&h, 3, 2), Verdict { checked: 2, violations: 1 });
        h[5].dropped = Some(true);
        h[3].dropped = Some(true); // round 1 applied one
        assert_eq!(check_rounds(&h, 3, 2).violations, 2);
        // Rounds some worker never reached are not checked.
        assert_eq!(check_rounds(&h[..6], 4, 2).checked, 0);
    }

    #[test]
    fn checks_the_staleness_bound() {
        let h = vec![read(0, 6, 0.0, &[5, 3]), read(0, 7, 1.0, &[6, 2])];
        let r = check(&h, Some(3));
        assert_eq!(r.max_staleness, 4);
        assert_eq!(r.bounded_staleness, Verdict { checked: 2, violations: 1 });
        assert!(check(&h, Some(4)).bounded_staleness.held());
        assert_eq!(check(&h, None).bounded_staleness.checked, 0);
    }
}
