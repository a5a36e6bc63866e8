//! Table-driven tests of the sync core: each file in `testdata/clock/` is a
//! history of events, each line with the decisions it must produce.
//!
//! ```text
//! # A comment.
//! policy ssp(1)
//! workers 2
//! push w0 c0 -> apply; update push(w0 c0)
//! pull #1 w0 c2 -> wait
//! applied -> frontier 0
//! ```
//!
//! Events: `push wW cC` (a whole push), `piece wW cC` (a piece, not the
//! push's last), `applied`, `pull #ID wW cC`, `observe #ID cC`,
//! `cancel #ID`, `join wW` (`join wW skip cC`: giving up the clock it
//! could not finish), `leave wW`, `read wW` (a released pull took
//! its snapshot). Decisions are written in a fixed
//! order, separated by `; `: the push decision, `update ...`, `read` or
//! `wait`, `resume cC`, `release #ID...`, `refuse #ID(reason)...`,
//! `frontier C`; `-` for none, `error reason` for a refusal. The line
//! `versions -> [..]` checks the version vector, and after a line
//! `show tau` an ssp/async update shows its staleness: `update push(wW cC tau T)`.

use std::path::Path;

use ps_server::sync::{ClockError, ClockTable, Event, Policy, PullDecision, PushDecision, Ready, Update};

fn reason(e: &ClockError) -> &'static str {
    match e {
        ClockError::UnknownWorker { .. } => "unknown-worker",
        ClockError::NotLive { .. } => "not-live",
        ClockError::PushGap { .. } => "push-gap",
        ClockError::PushAhead { .. } => "push-ahead",
        ClockError::PullAhead { .. } => "pull-ahead",
        ClockError::PullBehind { .. } => "pull-behind",
        ClockError::UpdatePending => "update-pending",
    }
}

fn render(ready: &Ready, show_tau: bool) -> String {
    let mut parts = Vec::new();
    if let Some(push) = ready.push {
        parts.push(
            match push {
                PushDecision::Apply => "apply",
                PushDecision::Accumulate => "accumulate",
                PushDecision::Duplicate => "duplicate",
                PushDecision::Dropped => "dropped",
            }
            .to_string(),
        );
    }
    match ready.update {
        Some(Update::Push { worker, clock, staleness }) if show_tau => {
            parts.push(format!("update push(w{worker} c{clock} tau {staleness})"))
        }
        Some(Update::Push { worker, clock, .. }) => parts.push(format!("update push(w{worker} c{clock})")),
        Some(Update::Round(r)) => parts.push(format!("update round(c{} of {})", r.clock, r.contributors)),
        None => {}
    }
    match ready.pull {
        Some(PullDecision::Ready) => parts.push("read".into()),
        Some(PullDecision::Wait) => parts.push("wait".into()),
        None => {}
    }
    if let Some(c) = ready.resumed_at {
        parts.push(format!("resume c{c}"));
    }
    if !ready.release.is_empty() {
        let ids: Vec<String> = ready.release.iter().map(|id| format!("#{id}")).collect();
        parts.push(format!("release {}", ids.join(" ")));
    }
    if !ready.refuse.is_empty() {
        let ids: Vec<String> = ready.refuse.iter().map(|(id, e)| format!("#{id}({})", reason(e))).collect();
        parts.push(format!("refuse {}", ids.join(" ")));
    }
    if let Some(f) = ready.frontier {
        parts.push(format!("frontier {f}"));
    }
    if parts.is_empty() { "-".into() } else { parts.join("; ") }
}

/// A number after its one-letter tag: `w3` -> 3.
fn num(word: Option<&str>, tag: char, line: &str) -> u64 {
    let word = word.unwrap_or_else(|| panic!("{line:?}: missing {tag}N"));
    word.strip_prefix(tag)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}: expected {tag}N, got {word:?}"))
}

fn event(text: &str) -> Event {
    let mut words = text.split_whitespace();
    let verb = words.next().unwrap_or_default();
    if verb == "join" {
        let worker = num(words.next(), 'w', text) as u32;
        let skip_to = match words.next() {
            None => 0,
            Some("skip") => num(words.next(), 'c', text),
            Some(other) => panic!("{text:?}: expected `skip cC`, got {other:?}"),
        };
        return Event::Join { worker, skip_to };
    }
    let mut next = |tag| num(words.next(), tag, text);
    match verb {
        "push" | "piece" => {
            let worker = next('w') as u32;
            Event::Push { worker, clock: next('c'), complete: verb == "push" }
        }
        "applied" => Event::Applied,
        "pull" => {
            let id = next('#');
            let worker = Some(next('w') as u32);
            Event::Pull { id, worker, clock: next('c') }
        }
        "observe" => {
            let id = next('#');
            Event::Pull { id, worker: None, clock: next('c') }
        }
        "cancel" => Event::Cancel { id: next('#') },
        "leave" => Event::Leave { worker: next('w') as u32 },
        "read" => Event::Read { worker: next('w') as u32 },
        _ => panic!("{text:?}: unknown event {verb:?}"),
    }
}

/// Runs one history file; returns the lines whose decisions differ.
fn run(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("readable history");
    let mut policy: Option<Policy> = None;
    let mut table: Option<ClockTable> = None;
    let mut failures = Vec::new();
    let mut show_tau = false;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "show tau" {
            show_tau = true;
            continue;
        }
        if let Some(p) = line.strip_prefix("policy ") {
            policy = Some(p.parse().expect("a policy"));
            continue;
        }
        if let Some(w) = line.strip_prefix("workers ") {
            let p = policy.expect("policy before workers");
            table = Some(ClockTable::new(p, w.parse().expect("a worker count")));
            continue;
        }
        let (event_text, expected) = line.split_once("->").unwrap_or_else(|| panic!("{line:?}: no ->"));
        let t = table.as_mut().expect("workers before events");
        let got = match event_text.trim() {
            "versions" => format!("{:?}", t.versions()),
            text => match t.step(event(text)) {
                Ok(ready) => render(&ready, show_tau),
                Err(e) => format!("error {}", reason(&e)),
            },
        };
        if got != expected.trim() {
            failures.push(format!(
                "{}:{}: {}\n    expected: {}\n    got:      {got}",
                path.display(),
                n + 1,
                event_text.trim(),
                expected.trim()
            ));
        }
    }
    failures
}

#[test]
fn every_history_in_testdata_gives_its_decisions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/clock");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata/clock exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "expected the histories in {}, found {files:?}", dir.display());
    let failures: Vec<String> = files.iter().flat_map(|f| run(f)).collect();
    assert!(failures.is_empty(), "{} decisions differ:\n{}", failures.len(), failures.join("\n"));
}
