//! Writing a stream sink's sealed batches: waiting for room under the
//! targets' caps (pausing the flow meanwhile), XADDing (pipelined on a
//! connection of the sink's own, or in few script calls), then settling
//! at the source ([`crate::flow::settle`]): dead letters first, then the
//! acks of what landed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{CustomCommand, Key, Value};

use crate::backoff::Backoff;
use crate::config::Capacity;
use crate::flow::settle::{Settler, Stopped};
use crate::redis::acks::{same_stream, Acks};
use crate::redis::dead_letter::DeadLetter;
use crate::redis::direct::StreamConnection;
use crate::redis::Message;
use crate::sink::stream::batch::SealedStreamBatch;
use crate::sink::stream::once::StreamOnce;
use crate::sink::stream::pause::Pause;
use crate::sink::stream::plain::write_direct;
use crate::sink::stream::route::{RouteSet, Target};
use crate::sink::stream::StreamSink;
use crate::sink::{Abandoned, Sink};

/// Most entries one [`ADD_UNDER_CAP`] call adds (a script holds Redis while
/// it runs: 500 XADDs take about a millisecond).
const SCRIPT_ENTRIES: usize = 500;
/// Fields past which an entry is added by a script call of its own: Lua
/// unpacks at most about 8,000 values into one XADD.
const SCRIPT_MAX_FIELDS: usize = 3_900;

/// Counts a capped target's entries toward its cap and adds, in order, as
/// many of the given entries as fit, in one step on the target's node.
/// KEYS[1]: the target. ARGV[1]: the cap; ARGV[2]: `lag` or `length`
/// ([`Capacity`]); then per entry its field count n and n field/value pairs.
/// Returns {entries added, count before adding}.
///
/// `lag`: for each consumer group of the target, lag + pending (capped at
/// XLEN: Redis's lag can still count trimmed entries; XLEN when Redis
/// reports no lag, after an XDEL among unread entries); the largest wins.
/// A target without a group counts XLEN.
pub(crate) const ADD_UNDER_CAP: &str = r#"
local len = redis.call('XLEN', KEYS[1])
local used = len
if ARGV[2] == 'lag' and len > 0 then
  local worst = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local lag, pending = nil, 0
    for i = 1, #g, 2 do
      if g[i] == 'lag' then lag = g[i + 1] elseif g[i] == 'pending' then pending = g[i + 1] end
    end
    local n = len
    if lag then n = math.min(len, lag + pending) end
    if not worst or n > worst then worst = n end
  end
  if worst then used = worst end
end
local room = tonumber(ARGV[1]) - used
local added, i = 0, 3
while i <= #ARGV and added < room do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + 2 * n))
  added = added + 1
  i = i + 1 + 2 * n
end
return {added, used}
"#;
static ADD_UNDER_CAP_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(ADD_UNDER_CAP));

/// Adds the given entries to an uncapped target, in order. KEYS[1]: the
/// target; ARGV: per entry its field count n and n field/value pairs.
pub(crate) const ADD_ALL: &str = r#"
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + 2 * n))
  i = i + 1 + 2 * n
end
return 0
"#;
static ADD_ALL_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(ADD_ALL));

/// Whether an XADD error is about this message's target (dead-letter) or
/// about Redis (retry). Only a key of the wrong type is the former; OOM,
/// LOADING, connection trouble and anything unknown are retried.
pub(crate) fn xadd_error_is_permanent(text: &str) -> bool {
    text.contains("WRONGTYPE")
}

/// The script's error for an entry with too many fields for one Lua call
/// (such an entry is sent alone, so only it is refused).
fn too_many_fields(text: &str) -> bool {
    text.contains("too many results to unpack")
}

/// What one write round left to do.
#[derive(Default)]
struct Round {
    /// Failed (Redis trouble): retried after a backoff.
    failed: Vec<(usize, Arc<Target>)>,
    /// Not added: the target had no room left.
    full: Vec<(usize, Arc<Target>)>,
    /// Refused for good, with the reason.
    refused: Vec<(usize, String)>,
    last_error: String,
}

impl Round {
    fn error(&mut self, i: usize, t: &Arc<Target>, text: String) {
        if xadd_error_is_permanent(&text) {
            self.refused
                .push((i, format!("target `{}`: {text}", t.name)));
        } else {
            self.last_error = text;
            self.failed.push((i, t.clone()));
        }
    }
}

/// A batch on its targets, not yet acked at the source.
pub struct Written {
    acks: Acks,
    /// Exactly-once only: what landed, whose records are dropped after.
    landed: Vec<Message>,
    routes: Vec<RouteSet>,
    dead: Vec<DeadLetter>,
    total: usize,
}

/// Writes sealed batches: waits for room, XADDs, then acks.
pub struct StreamCommitter {
    /// Dead letters and acks at the source's Redis; its flow name, metrics
    /// and stop token (the hard stop) serve the writes too.
    pub settler: Settler,
    /// The targets' Redis: XADDs and capacity checks (the same client
    /// unless the sink names another connection).
    pub target: Client,
    pub exactly_once: Option<Arc<StreamOnce>>,
    pub pause: Arc<Pause>,
    pub check_every: Duration,
    /// What counts toward a target's cap.
    pub capacity: Capacity,
    /// Whether [`ADD_ALL`] was loaded on the targets' Redis.
    pub add_all_loaded: AtomicBool,
    /// Uncapped at-least-once writes: a direct connection to the targets'
    /// Redis when it is one plain-TCP server (see [`Self::write_plain`]).
    pub(crate) writes: Option<Arc<StreamConnection>>,
}

impl StreamSink {
    /// The committer of this sink's batches: acks and dead letters through
    /// `settler` (whose stop token is the hard stop), `pause` set while a
    /// target is full.
    pub fn committer(&self, settler: Settler, pause: Arc<Pause>) -> StreamCommitter {
        StreamCommitter {
            target: match &self.target {
                Some((client, _)) => client.clone(),
                None => settler.redis.clone(),
            },
            exactly_once: self.exactly_once.clone(),
            pause,
            check_every: self.check_every,
            capacity: self.capacity,
            add_all_loaded: AtomicBool::new(false),
            writes: self.writes.clone(),
            settler,
        }
    }
}

/// Consecutive messages with the same source entry: the outputs of one
/// handled message. They are written (and acked) together.
fn group_end(messages: &[Message], start: usize) -> usize {
    let first = &messages[start];
    let mut end = start + 1;
    while end < messages.len()
        && messages[end].id == first.id
        && same_stream(&messages[end].stream, &first.stream)
    {
        end += 1;
    }
    end
}

/// How many messages from `start` fit under the caps, given the targets'
/// current lengths. The first group passes if every capped target it uses
/// has any room at all, so a fan-out wider than a cap cannot stall the flow.
pub(crate) fn fit(
    messages: &[Message],
    routes: &[RouteSet],
    start: usize,
    room: &mut [(Arc<Target>, u64)],
) -> usize {
    let mut i = start;
    while i < messages.len() {
        let end = group_end(messages, i);
        let first = i == start;
        let mut need: Vec<(usize, u64)> = Vec::new();
        for set in &routes[i..end] {
            for t in set.iter().filter(|t| t.max_len.is_some()) {
                let slot = room
                    .iter()
                    .position(|(r, _)| Arc::ptr_eq(r, t))
                    .expect("every capped target has a room slot");
                match need.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, n)) => *n += 1,
                    None => need.push((slot, 1)),
                }
            }
        }
        let fits = need.iter().all(|&(slot, n)| {
            let left = room[slot].1;
            if first {
                left > 0
            } else {
                left >= n
            }
        });
        if !fits {
            break;
        }
        for (slot, n) in need {
            room[slot].1 = room[slot].1.saturating_sub(n);
        }
        i = end;
    }
    i
}

impl StreamCommitter {
    async fn wait(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.settler.stop.cancelled() => false,
        }
    }

    /// Writes a batch to its targets (waiting for room under caps); what
    /// is left to do is [`Self::settle`]: ack the landed messages and
    /// dead-letter the refused ones.
    pub async fn write_batch(&self, batch: SealedStreamBatch) -> Result<Written, Abandoned> {
        let total = batch.messages.len() + batch.dead.len();
        let mut dead = batch.dead;
        let mut refused = vec![false; batch.messages.len()];
        let mut start = 0;
        while start < batch.messages.len() {
            let end = self
                .wait_for_room(&batch.messages, &batch.routes, start)
                .await
                .map_err(|Stopped| Abandoned(total))?;
            let bad = self
                .write(&batch.messages[start..end], &batch.routes[start..end])
                .await
                .map_err(|Stopped| Abandoned(total))?;
            for (i, reason) in bad {
                refused[start + i] = true;
                dead.push(DeadLetter {
                    message: batch.messages[start + i].clone(),
                    reason,
                    kind: "route",
                });
            }
            start = end;
        }
        // A refused message is acked through its dead letter.
        let (landed, routes): (Vec<Message>, Vec<RouteSet>) = batch
            .messages
            .into_iter()
            .zip(batch.routes)
            .zip(refused)
            .filter_map(|(m, r)| (!r).then_some(m))
            .unzip();
        // Messages and routes are needed after the ack only to forget
        // exactly-once records; kept otherwise they would hold the replies
        // and pin templated targets in the router's registry while the
        // batch settles.
        let acks = Acks::of(&landed);
        let (landed, routes) = if self.exactly_once.is_some() {
            (landed, routes)
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Written {
            acks,
            landed,
            routes,
            dead,
            total,
        })
    }

    /// Dead-letters and acks a written batch at the source.
    pub async fn settle(&self, written: Written) -> Result<(), Abandoned> {
        let Written {
            acks,
            landed,
            routes,
            dead,
            total,
        } = written;
        if let Some(once) = &self.exactly_once {
            // The oldest kept records go before the ack (see `make_room`).
            once.make_room(&self.target, &routes).await;
        }
        self.settler
            .settle_batch(&acks, &dead)
            .await
            .map_err(|Stopped| Abandoned(total))?;
        if let Some(once) = &self.exactly_once {
            // Acked: no retry will look for these records again.
            once.forget(&self.target, &landed, &routes).await;
        }
        Ok(())
    }

    /// Waits until at least one message from `start` fits; returns the end
    /// of the run that fits. Pauses the flow while a target is full.
    async fn wait_for_room(
        &self,
        messages: &[Message],
        routes: &[RouteSet],
        start: usize,
    ) -> Result<usize, Stopped> {
        let mut capped: Vec<(Arc<Target>, u64)> = Vec::new();
        for set in &routes[start..] {
            for t in set.iter() {
                if t.max_len.is_some() && !capped.iter().any(|(c, _)| Arc::ptr_eq(c, t)) {
                    capped.push((t.clone(), 0));
                }
            }
        }
        if capped.is_empty() {
            return Ok(messages.len());
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut paused_at: Option<Instant> = None;
        loop {
            let lens = match self.counted(&capped).await {
                Ok(l) => l,
                Err(error) => {
                    tracing::warn!(flow = %self.settler.flow, %error, "counting the entries of capped targets failed; retrying");
                    if !self.wait(backoff.next_delay()).await {
                        return Err(Stopped);
                    }
                    continue;
                }
            };
            let mut room: Vec<(Arc<Target>, u64)> = capped
                .iter()
                .zip(&lens)
                .map(|((t, _), len)| (t.clone(), t.max_len.expect("capped").saturating_sub(*len)))
                .collect();
            let end = fit(messages, routes, start, &mut room);
            if end > start {
                if let Some(since) = paused_at {
                    self.pause.set(false);
                    tracing::info!(flow = %self.settler.flow, paused_for = ?since.elapsed(), "target drained below max_len; flow resumed");
                }
                return Ok(end);
            }
            if paused_at.is_none() {
                paused_at = Some(Instant::now());
                self.pause.set(true);
                let full: Vec<String> = capped
                    .iter()
                    .zip(&lens)
                    .filter(|((t, _), len)| **len >= t.max_len.expect("capped"))
                    .map(|((t, _), len)| {
                        format!("{} ({len}/{})", t.name, t.max_len.expect("capped"))
                    })
                    .collect();
                tracing::warn!(flow = %self.settler.flow, targets = ?full, capacity = self.capacity.as_str(), held = messages.len() - start, "target stream full (count at max_len); flow paused: no reads, no acks until it drains");
            }
            if !self.wait(self.check_every).await {
                self.pause.set(false);
                return Err(Stopped);
            }
        }
    }

    /// What counts toward each target's cap now ([`ADD_UNDER_CAP`] adding
    /// nothing), all targets at once. A key of the wrong type counts 0: the
    /// write then refuses its messages (dead letters) instead of waiting.
    async fn counted(&self, targets: &[(Arc<Target>, u64)]) -> Result<Vec<u64>, String> {
        let counts =
            futures_util::future::join_all(targets.iter().map(|(t, _)| self.add_under_cap(t, &[])))
                .await;
        counts
            .into_iter()
            .map(|r| match r {
                Ok((_, used)) => Ok(used),
                Err(e) if xadd_error_is_permanent(&e) => Ok(0),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// One [`ADD_UNDER_CAP`] call: adds as many of `messages` to `target`
    /// as fit under its cap; returns (added, counted before adding).
    async fn add_under_cap(
        &self,
        target: &Target,
        messages: &[&Message],
    ) -> Result<(usize, u64), String> {
        let cap = target.max_len.expect("only capped targets");
        let head = vec![
            Value::Integer(cap.min(i64::MAX as u64) as i64),
            self.capacity.as_str().into(),
        ];
        let args = entry_args(messages.iter().copied(), head);
        let reply: Value = ADD_UNDER_CAP_S
            .evalsha_with_reload(&self.target, vec![Key::from(target.key.clone())], args)
            .await
            .map_err(|e| e.to_string())?;
        let (added, used) = match &reply {
            Value::Array(v) if v.len() == 2 => (v[0].as_u64(), v[1].as_u64()),
            _ => (None, None),
        };
        match (added, used) {
            (Some(added), Some(used)) => Ok((added as usize, used)),
            _ => Err(format!(
                "unexpected reply from the capacity script: {reply:?}"
            )),
        }
    }

    /// XADDs every (message, target) pair, retrying failed pairs only (so a
    /// retry does not duplicate what landed). Returns the messages refused
    /// for good (target of the wrong type), with the reason.
    ///
    /// Pairs for capped targets go through [`ADD_UNDER_CAP`]; one whose
    /// room another replica took since [`Self::wait_for_room`] counted is
    /// written once the target has room again (the flow pauses meanwhile).
    async fn write(
        &self,
        messages: &[Message],
        routes: &[RouteSet],
    ) -> Result<Vec<(usize, String)>, Stopped> {
        let mut todo: Vec<(usize, Arc<Target>)> = Vec::with_capacity(messages.len());
        for (i, set) in routes.iter().enumerate() {
            for t in set.iter() {
                todo.push((i, t.clone()));
            }
        }
        if let Some(once) = &self.exactly_once {
            return once
                .write(&self.target, messages, routes, &self.settler.stop)
                .await;
        }
        let mut refused: Vec<(usize, String)> = Vec::new();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut paused = false;
        while !todo.is_empty() {
            let mut round = Round::default();
            let (plain, capped): (Vec<_>, Vec<_>) =
                todo.into_iter().partition(|(_, t)| t.max_len.is_none());
            self.write_plain(messages, plain, &mut round).await;
            self.write_capped(messages, capped, &mut round).await;
            refused.append(&mut round.refused);
            let waited = if !round.failed.is_empty() {
                tracing::warn!(flow = %self.settler.flow, pending_writes = round.failed.len(), error = %round.last_error, "XADD to target streams failed; retrying those (nothing acked)");
                self.wait(backoff.next_delay()).await
            } else if !round.full.is_empty() {
                if !paused {
                    paused = true;
                    self.pause.set(true);
                    tracing::info!(flow = %self.settler.flow, waiting = round.full.len(), "another replica took the room left in a capped target; flow paused until it has room again");
                }
                self.wait(self.check_every).await
            } else {
                true
            };
            if !waited {
                self.pause.set(false);
                return Err(Stopped);
            }
            todo = round.failed;
            todo.append(&mut round.full);
            // Entries keep their order within each target.
            todo.sort_by_key(|(i, _)| *i);
        }
        if paused {
            self.pause.set(false);
        }
        refused.sort_by_key(|(i, _)| *i);
        refused.dedup_by_key(|(i, _)| *i);
        Ok(refused)
    }

    /// Targets without a cap: each target's entries in order, all in one
    /// pipeline. On a direct connection, one XADD per entry written
    /// straight into the request ([`write_direct`]); through fred
    /// (cluster, sentinel, TLS), calls of [`ADD_ALL`] of at most
    /// [`SCRIPT_ENTRIES`] entries, as fred's cost per command (building,
    /// encoding and answering it) was half the worker's CPU per forwarded
    /// entry (`benches/dataflow.rs`). A script call adds all its entries
    /// or, failing on its first XADD (a key of the wrong type, out of
    /// memory), none.
    async fn write_plain(
        &self,
        messages: &[Message],
        pairs: Vec<(usize, Arc<Target>)>,
        round: &mut Round,
    ) {
        if pairs.is_empty() {
            return;
        }
        if let Some(StreamConnection::Direct(conn)) = self.writes.as_deref() {
            let mut conn = conn.lock().await;
            for (i, t, error) in write_direct(&mut conn, messages, &by_target(pairs)).await {
                round.error(i, &t, error);
            }
            return;
        }
        let script = &ADD_ALL_S;
        if !self.add_all_loaded.load(Ordering::Acquire) {
            match script.load(&self.target).await {
                Ok(()) => self.add_all_loaded.store(true, Ordering::Release),
                Err(e) => round.last_error = e.to_string(),
            }
        }
        let pipeline = self.target.pipeline();
        let mut calls: Vec<(Arc<Target>, Vec<usize>)> = Vec::new();
        for (t, ids) in by_target(pairs) {
            let mut done = 0;
            while done < ids.len() {
                let n = chunk_len(messages, &ids[done..]);
                let chunk = ids[done..done + n].to_vec();
                done += n;
                let head = vec![
                    Value::String(script.sha1().clone()),
                    Value::Integer(1),
                    Value::Bytes(t.key.clone()),
                ];
                let all = entry_args(chunk.iter().map(|&i| &messages[i]), head);
                let slot = fred::util::redis_keyslot(&t.key);
                let evalsha = CustomCommand::new_static(
                    "EVALSHA",
                    fred::types::ClusterHash::Custom(slot),
                    false,
                );
                if let Err(e) = pipeline.custom::<Value, _>(evalsha, all).await {
                    round.last_error = e.to_string();
                }
                calls.push((t.clone(), chunk));
            }
        }
        let replies = pipeline.try_all::<Value>().await;
        let mut reload = false;
        for (k, (t, chunk)) in calls.iter().enumerate() {
            let error = match replies.get(k) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => e.to_string(),
                None => round.last_error.clone(),
            };
            reload |= error.contains("NOSCRIPT");
            if too_many_fields(&error) && chunk.len() == 1 {
                round
                    .refused
                    .push((chunk[0], format!("target `{}`: {error}", t.name)));
                continue;
            }
            for &i in chunk {
                round.error(i, t, error.clone());
            }
        }
        if reload {
            // Flushed from Redis's script cache: loaded again for the retry.
            if let Err(e) = script.load(&self.target).await {
                round.last_error = e.to_string();
            }
        }
    }

    /// Capped targets, all at once; each target's entries in order, in
    /// script calls of at most [`SCRIPT_ENTRIES`], stopping at the first
    /// call that finds no more room.
    async fn write_capped(
        &self,
        messages: &[Message],
        pairs: Vec<(usize, Arc<Target>)>,
        round: &mut Round,
    ) {
        let by_target = by_target(pairs);
        let outcomes = futures_util::future::join_all(
            by_target
                .iter()
                .map(|(t, ids)| self.add_all_under_cap(messages, t, ids)),
        )
        .await;
        for ((t, ids), (added, error)) in by_target.iter().zip(outcomes) {
            let mut rest = ids[added..].iter();
            match error {
                None => round.full.extend(rest.map(|&i| (i, t.clone()))),
                Some(e) => {
                    // Too many fields: that entry was sent alone; only it is refused.
                    if too_many_fields(&e) {
                        if let Some(&i) = rest.next() {
                            round.refused.push((i, format!("target `{}`: {e}", t.name)));
                        }
                    }
                    for &i in rest {
                        round.error(i, t, e.clone());
                    }
                }
            }
        }
    }

    /// Adds `ids` (in order) to `target` until it is full or a call fails;
    /// returns how many were added and the error, if any.
    async fn add_all_under_cap(
        &self,
        messages: &[Message],
        target: &Target,
        ids: &[usize],
    ) -> (usize, Option<String>) {
        let mut done = 0;
        while done < ids.len() {
            let n = chunk_len(messages, &ids[done..]);
            let chunk: Vec<&Message> = ids[done..done + n].iter().map(|&i| &messages[i]).collect();
            match self.add_under_cap(target, &chunk).await {
                Ok((added, _)) => {
                    done += added;
                    if added < chunk.len() {
                        break;
                    }
                }
                Err(e) => return (done, Some(e)),
            }
        }
        (done, None)
    }
}

/// Writes while the previous batch is acked ([`crate::flow::batcher`]).
impl Sink for StreamCommitter {
    type Sealed = SealedStreamBatch;
    type Written = Written;

    async fn write(&self, batch: SealedStreamBatch) -> Result<Written, Abandoned> {
        self.write_batch(batch).await
    }

    async fn settle(&self, written: Written) -> Result<(), Abandoned> {
        StreamCommitter::settle(self, written).await
    }

    async fn finished(&self, all_committed: bool) {
        // Nothing is in flight any more: the kept exactly-once records go.
        if let (Some(once), true) = (&self.exactly_once, all_committed) {
            once.flush(&self.target).await;
        }
    }
}

/// (message, target) pairs grouped by target, each target's in order
/// (keyed by the target object's address: one object per name).
fn by_target(pairs: Vec<(usize, Arc<Target>)>) -> Vec<(Arc<Target>, Vec<usize>)> {
    let mut slot: HashMap<usize, usize> = HashMap::new();
    let mut out: Vec<(Arc<Target>, Vec<usize>)> = Vec::new();
    for (i, t) in pairs {
        let n = *slot.entry(Arc::as_ptr(&t) as usize).or_insert_with(|| {
            out.push((t.clone(), Vec::new()));
            out.len() - 1
        });
        out[n].1.push(i);
    }
    out
}

/// How many of `ids` (at least one) the next script call takes: at most
/// [`SCRIPT_ENTRIES`], and an entry over [`SCRIPT_MAX_FIELDS`] alone.
fn chunk_len(messages: &[Message], ids: &[usize]) -> usize {
    let mut n = 0;
    for &i in ids {
        let alone = messages[i].fields.len() > SCRIPT_MAX_FIELDS;
        if n == SCRIPT_ENTRIES || (alone && n > 0) {
            break;
        }
        n += 1;
        if alone {
            break;
        }
    }
    n
}

/// `args` followed by each message's field count and field/value pairs
/// (the scripts' per-entry layout).
fn entry_args<'a>(
    messages: impl Iterator<Item = &'a Message> + Clone,
    mut args: Vec<Value>,
) -> Vec<Value> {
    let values: usize = messages.clone().map(|m| 1 + 2 * m.fields.len()).sum();
    args.reserve(values);
    for m in messages {
        args.push(Value::Integer(m.fields.len() as i64));
        for (k, v) in m.fields.shared() {
            args.push(Value::Bytes(k));
            args.push(Value::Bytes(v));
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wrong_type_is_permanent() {
        assert!(xadd_error_is_permanent(
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        ));
        assert!(!xadd_error_is_permanent(
            "OOM command not allowed when used memory > 'maxmemory'"
        ));
        assert!(!xadd_error_is_permanent("connection closed"));
    }
}
