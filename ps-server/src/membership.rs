//! Who takes part in the job, as one shard sees it: per worker, whether it
//! is live, evicted, has joined this life of the shard's state, how many of
//! its requests are in flight and when it was last heard from; and whether
//! the job was stopped.
//!
//! This is the shard's one record of its workers. It is pure: it reads no
//! clock (time comes in as `now`), takes no lock and does no I/O. It is fed
//! request begins and ends, joins, leaves, rewinds and ticks; a tick returns
//! [`Decision`]s about silent workers, which the shard carries out (an
//! eviction is a leave on every tensor part). Each part's clock table keeps
//! its own copy of who is live, because its release rules are evaluated
//! under the part's lock; the shard tells every part of each join and leave
//! while it holds this record, so the two never disagree.

use std::time::{Duration, Instant};

use crate::config::WorkerLoss;
use crate::sync::ClockError;

/// Why a worker may not push or pull now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The id is outside `0..num_workers`.
    Unknown(ClockError),
    /// The shard came back from a checkpoint and the worker has not joined since.
    NotJoined,
    /// The worker was evicted for silence and has not joined again.
    Evicted,
    /// The worker left.
    NotLive(ClockError),
    /// An elastic worker that has not joined the job yet.
    NeverJoined,
}

/// What a tick found out about a silent worker; the shard carries it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `--on-worker-loss evict`: make the worker leave; its next request is refused as evicted.
    Evict(u32),
    /// `--on-worker-loss wait`: the worker just became silent; keep waiting, and say so.
    Silent(u32),
    /// `--on-worker-loss wait`: a silent worker was heard from again.
    Back(u32),
    /// `--on-worker-loss fail`: stop the job because of this worker.
    Fail(u32),
}

#[derive(Clone, Copy, Debug)]
struct Member {
    evicted: bool,
    /// Joined this life of the shard's state (true from the start on a fresh shard).
    joined: bool,
    in_flight: u32,
    /// When the worker was last heard from in this life or, before its
    /// first contact, when the life began.
    last_seen: Instant,
    /// Heard from in this life (a request or a join); until then the
    /// worker also gets the join grace.
    contacted: bool,
    /// Reported silent (`--on-worker-loss wait`) and not heard from since.
    silent: bool,
    /// Live at some point (from the start, or by joining): an elastic id
    /// that never was has not left, it has not joined yet.
    ever_live: bool,
}

/// The workers `0..n` of one shard and the job's stop reason.
///
/// Invariant: a worker with a request in flight is never overdue, so a
/// worker blocked in a long pull is never evicted.
#[derive(Clone, Debug)]
pub struct Membership {
    /// Per worker, whether it is live (kept apart so it can be lent as a slice).
    live: Vec<bool>,
    members: Vec<Member>,
    /// Silence after which a live worker is lost; `None`: never.
    timeout: Option<Duration>,
    /// Extra silence allowed before a worker's first contact, so workers
    /// still starting (or rejoining after a restart) are not lost.
    join_grace: Duration,
    on_loss: WorkerLoss,
    failure: Option<String>,
}

/// The join grace when none is given: time for workers started by hand
/// or by a scheduler to come up and join.
pub const DEFAULT_JOIN_GRACE: Duration = Duration::from_secs(60);

impl Membership {
    /// Workers `0..live.len()`, live as `live` says, all just heard from.
    /// `joined`: whether they may push and pull before joining (false on a
    /// shard restored from a checkpoint).
    pub fn new(
        live: Vec<bool>,
        joined: bool,
        timeout: Option<Duration>,
        on_loss: WorkerLoss,
        now: Instant,
    ) -> Self {
        let member = |ever_live| Member {
            evicted: false,
            joined,
            in_flight: 0,
            last_seen: now,
            contacted: false,
            silent: false,
            ever_live,
        };
        let members = live.iter().map(|&l| member(l)).collect();
        Self { live, members, timeout, join_grace: DEFAULT_JOIN_GRACE, on_loss, failure: None }
    }

    /// The same table with `grace` as the extra silence allowed before a
    /// worker's first contact.
    pub fn with_join_grace(mut self, grace: Duration) -> Self {
        self.join_grace = grace;
        self
    }

    fn unknown(&self, worker: u32) -> ClockError {
        ClockError::UnknownWorker { worker, num_workers: self.members.len() as u32 }
    }

    /// Whether `worker` may push and pull now.
    pub fn check(&self, worker: u32) -> Result<(), Refusal> {
        let m = self.members.get(worker as usize).ok_or_else(|| Refusal::Unknown(self.unknown(worker)))?;
        match (m.joined, self.live[worker as usize], m.evicted) {
            (false, _, _) => Err(Refusal::NotJoined),
            (true, true, _) => Ok(()),
            (true, false, true) => Err(Refusal::Evicted),
            (true, false, false) if !m.ever_live => Err(Refusal::NeverJoined),
            (true, false, false) => Err(Refusal::NotLive(ClockError::NotLive { worker })),
        }
    }

    /// A request of `worker` starts; `false` for an unknown id.
    pub fn begin(&mut self, worker: u32, now: Instant) -> bool {
        let Some(m) = self.members.get_mut(worker as usize) else { return false };
        m.in_flight += 1;
        m.last_seen = now;
        m.contacted = true;
        true
    }

    /// A request of `worker` that [`begin`](Self::begin) counted ends.
    pub fn end(&mut self, worker: u32, now: Instant) {
        if let Some(m) = self.members.get_mut(worker as usize) {
            m.in_flight = m.in_flight.saturating_sub(1);
            m.last_seen = now;
        }
    }

    /// `worker` joins (or rejoins) this life: live, not evicted, heard from now.
    pub fn join(&mut self, worker: u32, now: Instant) -> Result<(), ClockError> {
        let unknown = self.unknown(worker);
        let m = self.members.get_mut(worker as usize).ok_or(unknown)?;
        *m = Member {
            evicted: false,
            joined: true,
            silent: false,
            last_seen: now,
            contacted: true,
            ever_live: true,
            ..*m
        };
        self.live[worker as usize] = true;
        Ok(())
    }

    /// `worker` leaves; `evicted` records that it was made to, for silence.
    pub fn leave(&mut self, worker: u32, evicted: bool) -> Result<(), ClockError> {
        let unknown = self.unknown(worker);
        let m = self.members.get_mut(worker as usize).ok_or(unknown)?;
        m.evicted = evicted;
        self.live[worker as usize] = false;
        Ok(())
    }

    /// The shard's state was replaced by a checkpoint: live as `live` says,
    /// nobody evicted, and every worker must join again.
    pub fn rewound(&mut self, live: impl Fn(u32) -> bool, now: Instant) {
        for (w, (m, l)) in self.members.iter_mut().zip(&mut self.live).enumerate() {
            *m = Member {
                evicted: false,
                joined: false,
                silent: false,
                last_seen: now,
                contacted: false,
                ..*m
            };
            *l = live(w as u32);
        }
    }

    /// Looks for live workers with nothing in flight that were silent for
    /// longer than the timeout as of `now` (counted from their last
    /// request; before their first contact in this life, from its start
    /// plus the join grace), and says what to do about each, as
    /// `--on-worker-loss` says. Once the job is stopped, nothing more.
    ///
    /// With a 1 s timeout and `evict`: a live worker last heard from 1.5 s
    /// ago with no request in flight gives `[Evict(w)]`; the same worker
    /// blocked in a pull (one request in flight) gives `[]`.
    pub fn tick(&mut self, now: Instant) -> Vec<Decision> {
        let Some(timeout) = self.timeout else { return Vec::new() };
        if self.failure.is_some() {
            return Vec::new();
        }
        let (on_loss, grace) = (self.on_loss, self.join_grace);
        let mut decisions = Vec::new();
        for (w, (m, live)) in self.members.iter_mut().zip(&self.live).enumerate() {
            let w = w as u32;
            let allowed = if m.contacted { timeout } else { timeout + grace };
            let overdue = *live && m.in_flight == 0 && now.saturating_duration_since(m.last_seen) > allowed;
            match on_loss {
                WorkerLoss::Evict if overdue => decisions.push(Decision::Evict(w)),
                WorkerLoss::Fail if overdue => {
                    decisions.push(Decision::Fail(w));
                    break;
                }
                WorkerLoss::Wait if overdue && !m.silent => {
                    m.silent = true;
                    decisions.push(Decision::Silent(w));
                }
                WorkerLoss::Wait if !overdue && m.silent => {
                    m.silent = false;
                    decisions.push(Decision::Back(w));
                }
                _ => {}
            }
        }
        decisions
    }

    /// Stops the job (the first reason stays).
    pub fn fail(&mut self, reason: String) {
        self.failure.get_or_insert(reason);
    }

    /// Why the job was stopped, if it was.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Per worker, whether it is live.
    pub fn live(&self) -> &[bool] {
        &self.live
    }

    /// How many workers are live.
    pub fn live_count(&self) -> usize {
        self.live.iter().filter(|l| **l).count()
    }

    /// How many workers are reported silent (`--on-worker-loss wait`).
    pub fn silent_count(&self) -> usize {
        self.members.iter().filter(|m| m.silent).count()
    }

    /// The live workers not heard from in this life: no join or request
    /// since the shard started, was restored or rewound.
    pub fn unheard(&self) -> Vec<u32> {
        let unheard = self.members.iter().zip(&self.live).map(|(m, live)| *live && !m.contacted);
        unheard.enumerate().filter(|(_, u)| *u).map(|(w, _)| w as u32).collect()
    }

    /// Whether `worker` may push and pull in this life without joining.
    /// Unknown ids pass: the clock rules refuse them with a better message.
    pub fn has_joined(&self, worker: u32) -> bool {
        self.members.get(worker as usize).is_none_or(|m| m.joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn table(on_loss: WorkerLoss, t0: Instant) -> Membership {
        Membership::new(vec![true, true, false], true, Some(T), on_loss, t0).with_join_grace(Duration::ZERO)
    }

    #[test]
    fn unheard_workers_are_the_live_ones_without_a_request_or_join_in_this_life() {
        let t0 = Instant::now();
        let mut m = table(WorkerLoss::Evict, t0);
        assert_eq!(m.unheard(), vec![0, 1], "worker 2 is not live");
        assert!(m.begin(1, t0));
        m.end(1, t0);
        assert_eq!(m.unheard(), vec![0]);
        m.join(2, t0).expect("join");
        assert_eq!(m.unheard(), vec![0]);
        m.rewound(|w| w != 0, t0);
        assert_eq!(m.unheard(), vec![1, 2], "a rewind starts a new life");
    }

    #[test]
    fn silence_counts_from_first_contact_plus_the_join_grace_before_it() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut m =
            Membership::new(vec![true, true], true, Some(T), WorkerLoss::Evict, t0).with_join_grace(grace);
        assert!(m.tick(t0 + Duration::from_secs(5)).is_empty(), "nobody has had the time to start yet");
        assert!(m.begin(1, t0 + Duration::from_secs(5)));
        m.end(1, t0 + Duration::from_secs(5));
        assert_eq!(
            m.tick(t0 + Duration::from_millis(6500)),
            vec![Decision::Evict(1)],
            "1 went silent after contact"
        );
        m.leave(1, true).expect("the shard evicts it");
        assert!(m.tick(t0 + Duration::from_millis(10_500)).is_empty(), "0 is within timeout + grace");
        assert_eq!(m.tick(t0 + Duration::from_millis(11_500)), vec![Decision::Evict(0)]);
        m.rewound(|_| true, t0 + Duration::from_secs(20));
        assert!(m.tick(t0 + Duration::from_secs(30)).is_empty(), "a new life gives everyone the grace again");
    }

    #[test]
    fn only_silent_idle_live_workers_are_overdue() {
        let t0 = Instant::now();
        let mut m = table(WorkerLoss::Evict, t0);
        assert!(m.begin(1, t0));
        assert!(!m.begin(7, t0), "unknown id");
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(m.tick(later), vec![Decision::Evict(0)], "1 is in flight, 2 is not live");
        m.end(1, later);
        assert_eq!(m.tick(later), vec![Decision::Evict(0)], "1 was just heard from");
        assert_eq!(m.tick(later + Duration::from_millis(1001)), vec![Decision::Evict(0), Decision::Evict(1)]);
        assert!(Membership::new(vec![true], true, None, WorkerLoss::Evict, t0).tick(later).is_empty());
    }

    #[test]
    fn refusals_say_why() {
        let t0 = Instant::now();
        let mut m = table(WorkerLoss::Evict, t0);
        assert_eq!(m.check(0), Ok(()));
        assert_eq!(m.check(2), Err(Refusal::NeverJoined), "elastic, not joined yet");
        m.join(2, t0).unwrap();
        m.leave(2, false).unwrap();
        assert!(matches!(m.check(2), Err(Refusal::NotLive(_))));
        assert!(matches!(
            m.check(3),
            Err(Refusal::Unknown(ClockError::UnknownWorker { num_workers: 3, .. }))
        ));
        m.leave(0, true).unwrap();
        assert_eq!(m.check(0), Err(Refusal::Evicted));
        m.join(0, t0).unwrap();
        assert_eq!(m.check(0), Ok(()));
        m.rewound(|w| w < 2, t0);
        assert_eq!(m.check(0), Err(Refusal::NotJoined));
        assert!(!m.has_joined(1) && m.has_joined(9));
        m.join(1, t0).unwrap();
        assert_eq!((m.check(1), m.live_count()), (Ok(()), 2));
    }

    #[test]
    fn waiting_reports_a_silent_worker_once_and_its_return() {
        let t0 = Instant::now();
        let mut m = table(WorkerLoss::Wait, t0);
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(m.tick(later), vec![Decision::Silent(0), Decision::Silent(1)]);
        assert_eq!(m.tick(later), vec![], "reported once");
        assert_eq!(m.silent_count(), 2);
        m.begin(1, later);
        assert_eq!(m.tick(later), vec![Decision::Back(1)]);
        assert_eq!(m.silent_count(), 1);
    }

    #[test]
    fn failing_stops_at_the_first_lost_worker() {
        let t0 = Instant::now();
        let mut m = table(WorkerLoss::Fail, t0);
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(m.tick(later), vec![Decision::Fail(0)]);
        m.fail("worker 0 is lost".into());
        m.fail("second".into());
        assert_eq!(m.failure(), Some("worker 0 is lost"));
        assert!(m.tick(later).is_empty(), "a stopped job decides nothing more");
    }

    #[test]
    fn a_restored_shard_requires_a_join() {
        let t0 = Instant::now();
        let mut m = Membership::new(vec![true, true], false, None, WorkerLoss::Evict, t0);
        assert!(!m.has_joined(0) && !m.has_joined(1));
        assert_eq!(m.check(0), Err(Refusal::NotJoined));
        m.join(1, t0).unwrap();
        assert!(!m.has_joined(0) && m.has_joined(1));
        assert!(m.has_joined(5), "unknown ids are left to the clock rules");
    }

    #[test]
    fn a_rewind_starts_a_new_life_that_every_worker_must_join() {
        let t0 = Instant::now();
        let mut m = Membership::new(vec![true, true], true, None, WorkerLoss::Evict, t0);
        assert!(m.has_joined(0) && m.has_joined(1));
        m.leave(1, true).unwrap();
        m.rewound(|_| true, t0);
        assert!(!m.has_joined(0) && !m.has_joined(1));
        assert_eq!(m.live_count(), 2, "live again, evicted no more");
        assert_eq!(m.check(1), Err(Refusal::NotJoined));
    }
}
