//! What a worker says while a shard holds its step, pull or barrier back:
//! every [`HELD_LOG_EVERY`] that the request still waits, on which shard and
//! tensors, and for which workers (the shard's `Status`, asked about the
//! request's wait, names them). Silence while waiting is a bug.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use ps_proto::WaitAt;

use crate::connection::Shards;
use crate::declared::TensorInfo;
use crate::error::WorkerError;
use crate::status::{self, Waits};

/// How often a worker says that a request is still held back.
pub(crate) const HELD_LOG_EVERY: Duration = Duration::from_secs(5);

/// A request to one shard that the shard may hold back for other workers.
pub(crate) struct Held<'a> {
    pub(crate) shards: &'a Shards,
    pub(crate) shard: u32,
    /// `"step"`, `"pull"` or `"barrier"`.
    pub(crate) op: &'static str,
    /// The worker's clock of the request.
    pub(crate) clock: u64,
    /// What the request waits for on the shard.
    pub(crate) wait: WaitAt,
    /// The request's tensors (those with no part on `shard` are skipped).
    pub(crate) tensors: &'a [&'a TensorInfo],
}

type Asking<'a> = Pin<Box<dyn Future<Output = Result<Waits, WorkerError>> + Send + 'a>>;

impl Held<'_> {
    /// Awaits `request`; while it is unanswered, says every
    /// [`HELD_LOG_EVERY`] what it waits for. The request is polled
    /// throughout: asking the shard for whom it waits never delays it.
    pub(crate) async fn awaiting<T>(&self, request: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let mut request = std::pin::pin!(request);
        let mut next = std::pin::pin!(tokio::time::sleep(HELD_LOG_EVERY));
        let mut asking: Option<Asking<'_>> = None;
        loop {
            tokio::select! {
                biased;
                out = &mut request => return out,
                () = &mut next, if asking.is_none() => {
                    next.as_mut().reset(tokio::time::Instant::now() + HELD_LOG_EVERY);
                    asking = Some(Box::pin(self.holding_back()));
                }
                who = async { asking.as_mut().expect("guarded by is_some").await }, if asking.is_some() => {
                    asking = None;
                    self.say(started.elapsed(), who);
                }
            }
        }
    }

    /// The names on the shards of the request's tensors with a part on `shard`.
    fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors
            .iter()
            .filter(|t| t.parts.iter().any(|p| p.shard == self.shard))
            .map(|t| t.wire_name.as_str())
    }

    /// The workers the shard says the request's wait on its tensors waits
    /// for, in id order.
    async fn holding_back(&self) -> Result<Waits, WorkerError> {
        status::holding_back(self.shards, self.shard, self.wait, &self.names().collect()).await
    }

    /// Logs that the request has waited `waited`, and for whom.
    fn say(&self, waited: Duration, who: Result<Waits, WorkerError>) {
        let cfg = self.shards.config();
        let (worker, shard, op, clock) = (cfg.worker, self.shard, self.op, self.clock);
        let addr = cfg.cluster.shards.get(shard as usize).map_or("?", String::as_str);
        let names: Vec<&str> = self.names().collect();
        let tensors = match names.as_slice() {
            [one] => format!("tensor {one:?}"),
            [a, b] => format!("tensors {a:?} and {b:?}"),
            [a, b, rest @ ..] => format!("tensors {a:?}, {b:?} and {} more", rest.len()),
            [] => "its tensors".to_string(),
        };
        let secs = waited.as_secs();
        let give_up = cfg.wait_timeout.as_secs();
        let until = match self.wait {
            WaitAt::Pull(_) => format!("release {tensors}"),
            WaitAt::Barrier(clock) => format!("see every live worker reach clock {clock} on {tensors}"),
        };
        let why = match &who {
            Ok(Waits { on, unheard }) if !on.is_empty() => {
                format!("it waits for workers {on:?} to push; {}", ps_proto::wait_at::advice(on, unheard))
            }
            Ok(_) => "the shard names no worker it waits for: an update or a checkpoint is in \
                      progress, or the shard is overloaded"
                .to_string(),
            Err(e) => format!("the shard did not say for whom ({e})"),
        };
        // The same field as the shard's own wait log: the workers, or "unknown".
        let waiting_for = who.as_ref().map_or_else(|_| "unknown".to_string(), |w| format!("{:?}", w.on));
        tracing::warn!(
            worker,
            shard,
            addr,
            op,
            clock,
            waited_s = secs,
            %waiting_for,
            "{op} at clock {clock} has waited {secs} s for shard {shard} ({addr}) to {until}: \
             {why}; giving up after {give_up} s"
        );
    }
}
