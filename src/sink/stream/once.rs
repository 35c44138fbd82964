//! Exactly-once stream sinks (`delivery = "exactly_once"` with
//! `sink = { type = "stream", … }`, on the flow's own Redis or another one).
//!
//! At-least-once is XADD on the target, then XACK at the source: a replica
//! that dies between the two leaves entries pending that another replica
//! claims and XADDs again. Here the target remembers what it was sent. For
//! every (target stream, flow, source stream) it keeps a hash, the *written
//! set* `sluice:s2s:{T}:<flow>:<source stream>` (`{T}` puts it in the
//! target's Redis Cluster slot), mapping each source entry id written and
//! not yet acked to the time it was written. One script per target stream
//! and batch ([`WRITE`]) checks each entry's id in the set, XADDs the ones
//! not there and records them, atomically; so a batch written again (a
//! retry after a lost reply, or another replica recovering a dead one's
//! pending entries) adds nothing twice. After the source acked, the ids are
//! dropped from the set (`HDEL`) — not at once but once more entries than
//! the flow holds in flight were acked after them, so that a second copy of
//! an entry in this process (claimed by our own claim pass while the first
//! copy was still being written: a process starved for `claim.min_idle`)
//! still finds its record. The oldest records are dropped before the next
//! batch's ack, not after it, so the acked ids in the set never exceed
//! `keep`, even for a process killed between an ack and its HDEL.
//!
//! Why ids and not a "last id written" per source: entries reach a target
//! out of id order (several replicas write at once; a claimed entry is
//! older than what live replicas wrote since), so a high-water mark would
//! skip entries never written.
//!
//! Costs and bounds: per entry, an HEXISTS and an HSET in the script and an
//! HDEL later, all on the target; the set holds the entries in flight plus
//! the last few batches' (`3 × (read_count + batch.max_rows)` entries).
//! Ids whose HDEL was lost (a crash) are swept once older than
//! `ledger_ttl` ([`StreamOnce::sweep`]), and a set not written for
//! `ledger_ttl` expires whole. The guarantee holds while the record exists:
//! a batch recovered more than `ledger_ttl` after it was written is written
//! again. A replica that stalls longer than `claim.min_idle` (its entries
//! claimed by another replica meanwhile) and then acks and drops the ids
//! before the claimer writes its copies can still duplicate: as with any
//! takeover, a live-but-frozen replica is the limit (docs/EXACTLY_ONCE.md).
//!
//! Needs Redis 7.0+ on the target (the script declares no flags, so Redis
//! refuses it up front when out of memory instead of failing half-way).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Value;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::flow::settle::Stopped;
use crate::redis::sharder;
use crate::redis::Message;
use crate::sink::stream::{xadd_error_is_permanent, RouteSet};
use crate::time::now_ms;

/// KEYS: target stream, written set. ARGV: now (ms), ttl (ms), entry
/// count, then per entry: source id, field/value count, fields and values.
/// Returns how many entries it added. One HMGET looks every id up, one
/// HSET records the new ones after their XADDs (were the script to stop
/// half-way, an entry would be written unrecorded — written again by a
/// retry — never recorded unwritten); `done` catches an id twice in one
/// call.
pub(crate) const WRITE: &str = r#"#!lua
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'stream' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE target `' .. KEYS[1] .. '` holds a ' .. t .. ', not a stream')
end
local n = tonumber(ARGV[3])
if n == 0 then return 0 end
local ids, at = {}, {}
local i = 4
for e = 1, n do
  ids[e], at[e] = ARGV[i], i
  i = i + 2 + tonumber(ARGV[i + 1])
end
local seen = redis.call('HMGET', KEYS[2], unpack(ids))
local new, done = {}, {}
for e = 1, n do
  local id = ids[e]
  if not seen[e] and not done[id] then
    local j = at[e]
    redis.call('XADD', KEYS[1], '*', unpack(ARGV, j + 2, j + 1 + tonumber(ARGV[j + 1])))
    done[id] = true
    new[#new + 1] = id
    new[#new + 1] = ARGV[1]
  end
end
if #new > 0 then redis.call('HSET', KEYS[2], unpack(new)) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return #new / 2
"#;

static WRITE_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(WRITE));

/// Most entries in one script call: bounds how long Redis runs it.
const CHUNK: usize = 1_000;
/// Fields of the written sets inspected per HSCAN page while sweeping.
const SWEEP_PAGE: u64 = 1_000;
/// Most pages one sweep of one set reads.
const SWEEP_PAGES: usize = 100;

/// The written set of `flow`'s entries from `source` in `target`.
pub fn written_key(flow: &str, target: &str, source: &str) -> String {
    format!(
        "sluice:s2s:{}:{flow}:{source}",
        sharder::same_slot_tag(target)
    )
}

/// Entries of one source stream going to one target stream.
struct Group {
    target: Arc<str>,
    key: String,
    messages: Vec<usize>,
}

/// One acked batch's records: (written set, source ids).
type Acked = Vec<(String, Vec<bytes::Bytes>)>;

/// Acked batches whose records are still kept, oldest first.
#[derive(Default)]
struct AckedQueue {
    batches: std::collections::VecDeque<(usize, Acked)>,
    entries: usize,
}

impl AckedQueue {
    fn push(&mut self, batch: Acked) {
        let n = batch.iter().map(|(_, ids)| ids.len()).sum();
        self.entries += n;
        self.batches.push_back((n, batch));
    }

    /// The oldest batches, until at most `limit` entries stay queued.
    fn take_beyond(&mut self, limit: usize) -> Vec<Acked> {
        let mut out = Vec::new();
        while self.entries > limit {
            let Some((n, batch)) = self.batches.pop_front() else {
                break;
            };
            self.entries -= n;
            out.push(batch);
        }
        out
    }
}

/// A flow's exactly-once writer: the script calls and the written sets.
pub struct StreamOnce {
    flow: String,
    ttl: Duration,
    /// Entries whose records outlive their ack (see [`StreamOnce::new`]).
    keep: usize,
    acked: Mutex<AckedQueue>,
    /// Written sets this process wrote to, for the sweep.
    touched: Mutex<HashSet<String>>,
    last_sweep: Mutex<Instant>,
}

impl StreamOnce {
    /// `keep`: how many acked entries' records to keep after their ack.
    /// The same entry can come round again in this process while its
    /// first copy is being acked (the claim pass takes an entry whose
    /// keep-alive came late — a starved process — and the copy trails the
    /// original through the flow's channels); keeping the records of the
    /// last `keep` acked entries, more than the flow holds between reader
    /// and committer, makes such a copy find its record.
    pub fn new(flow: &str, ttl: Duration, keep: usize) -> StreamOnce {
        StreamOnce {
            flow: flow.to_string(),
            ttl,
            keep,
            acked: Mutex::new(AckedQueue::default()),
            touched: Mutex::new(HashSet::new()),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// `messages[i]` goes to every target in `routes[i]`: grouped per
    /// (target, source stream), in first-seen order, messages in order.
    fn groups(&self, messages: &[Message], routes: &[RouteSet]) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, (m, set)) in messages.iter().zip(routes).enumerate() {
            for t in set.iter() {
                let g = *index.entry((&t.name, &m.stream)).or_insert_with(|| {
                    groups.push(Group {
                        target: t.name.clone(),
                        key: written_key(&self.flow, &t.name, &m.stream),
                        messages: Vec::new(),
                    });
                    groups.len() - 1
                });
                groups[g].messages.push(i);
            }
        }
        groups
    }

    /// Writes every (message, target) pair not written before, retrying
    /// failed calls (the script makes a retry harmless) until `stop`.
    /// Returns the messages refused for good (a target that is not a
    /// stream), with the reason; Err = stopped before all were written.
    pub async fn write(
        &self,
        client: &Client,
        messages: &[Message],
        routes: &[RouteSet],
        stop: &CancellationToken,
    ) -> Result<Vec<(usize, String)>, Stopped> {
        let groups = self.groups(messages, routes);
        {
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            touched.extend(groups.iter().map(|g| g.key.clone()));
        }
        let mut todo: Vec<(&Group, &[usize])> = groups
            .iter()
            .flat_map(|g| g.messages.chunks(CHUNK).map(move |c| (g, c)))
            .collect();
        let mut refused: Vec<(usize, String)> = Vec::new();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        while !todo.is_empty() {
            let calls = todo
                .iter()
                .map(|(g, chunk)| self.call(client, g, chunk, messages));
            let results = futures_util::future::join_all(calls).await;
            let mut failed = Vec::new();
            let mut last_error = String::new();
            for ((g, chunk), result) in todo.into_iter().zip(results) {
                match result {
                    Ok(()) => {}
                    Err(e) if xadd_error_is_permanent(&e) => {
                        refused.extend(
                            chunk
                                .iter()
                                .map(|&i| (i, format!("target `{}`: {e}", g.target))),
                        );
                    }
                    Err(e) => {
                        last_error = e;
                        failed.push((g, chunk));
                    }
                }
            }
            if failed.is_empty() {
                break;
            }
            tracing::warn!(flow = %self.flow, calls = failed.len(), error = %last_error, "exactly-once write to target streams failed; retrying those (the script skips what landed)");
            if !backoff.wait(stop).await {
                return Err(Stopped);
            }
            todo = failed;
        }
        refused.sort_by_key(|(i, _)| *i);
        refused.dedup_by_key(|(i, _)| *i);
        Ok(refused)
    }

    async fn call(
        &self,
        client: &Client,
        group: &Group,
        chunk: &[usize],
        messages: &[Message],
    ) -> Result<(), String> {
        let mut args: Vec<Value> = Vec::with_capacity(3 + chunk.len() * 10);
        args.push(now_ms().to_string().into());
        args.push((self.ttl.as_millis().max(1) as u64).to_string().into());
        args.push(chunk.len().to_string().into());
        for &i in chunk {
            let m = &messages[i];
            args.push(Value::Bytes(m.id.clone()));
            args.push((m.fields.len() * 2).to_string().into());
            for (k, v) in m.fields.shared() {
                args.push(Value::Bytes(k));
                args.push(Value::Bytes(v));
            }
        }
        let keys = vec![group.target.to_string(), group.key.clone()];
        let _added: Value = WRITE_S
            .evalsha_with_reload(client, keys, args)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Before a batch with these `routes` is acked: drops the oldest kept
    /// records so that, with the batch's own, at most `keep` stay. Dropping
    /// them after the ack instead would leave `keep` plus a batch of acked
    /// records behind a process killed between the ack and the HDEL.
    pub async fn make_room(&self, client: &Client, routes: &[RouteSet]) {
        let records: usize = routes.iter().map(|set| set.len()).sum();
        let due = self
            .acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_beyond(self.keep.saturating_sub(records));
        self.drop_records(client, due).await;
    }

    /// The records of acked entries join the kept ones (room was made by
    /// [`Self::make_room`]; whatever is still beyond `keep` — a batch larger
    /// than `keep` — goes now), and the sets are swept now and then. Best
    /// effort: what is left behind is swept after `ledger_ttl`.
    pub async fn forget(&self, client: &Client, messages: &[Message], routes: &[RouteSet]) {
        let due: Vec<Acked> = {
            let mut queue = self.acked.lock().unwrap_or_else(|e| e.into_inner());
            let mut batch: Acked = Vec::new();
            for g in self.groups(messages, routes) {
                let ids = g.messages.iter().map(|&i| messages[i].id.clone()).collect();
                batch.push((g.key, ids));
            }
            queue.push(batch);
            queue.take_beyond(self.keep)
        };
        self.drop_records(client, due).await;
        self.sweep_if_due(client).await;
    }

    /// Drops every record still kept: at the end of the flow, when no copy
    /// of an entry can be in flight any more.
    pub async fn flush(&self, client: &Client) {
        let all = self
            .acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_beyond(0);
        self.drop_records(client, all).await;
    }

    async fn drop_records(&self, client: &Client, batches: Vec<Acked>) {
        if batches.is_empty() {
            return;
        }
        let pipeline = client.pipeline();
        for (key, ids) in batches.iter().flatten() {
            for chunk in ids.chunks(10_000) {
                let ids: Vec<fred::types::Key> = chunk.iter().map(|id| id.clone().into()).collect();
                let _: Result<Value, _> = pipeline.hdel(key.as_str(), ids).await;
            }
        }
        if let Err(error) = pipeline
            .try_all::<Value>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
        {
            tracing::warn!(flow = %self.flow, %error, "dropping acked ids from the exactly-once written sets failed; they are swept after ledger_ttl");
        }
    }

    async fn sweep_if_due(&self, client: &Client) {
        let due = {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            let every = (self.ttl / 8).clamp(Duration::from_secs(1), Duration::from_secs(600));
            let due = last.elapsed() >= every;
            if due {
                *last = Instant::now();
            }
            due
        };
        if !due {
            return;
        }
        let keys: Vec<String> = self
            .touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        for key in keys {
            if let Err(error) = self.sweep(client, &key).await {
                tracing::warn!(flow = %self.flow, %key, %error, "sweeping an exactly-once written set failed");
            }
        }
    }

    /// Drops ids recorded longer than `ledger_ttl` ago from `key`: left by
    /// a crash between an ack and its HDEL.
    pub async fn sweep(&self, client: &Client, key: &str) -> Result<usize, fred::error::Error> {
        let cutoff = now_ms().saturating_sub(self.ttl.as_millis() as u64);
        let mut cursor = "0".to_string();
        let mut dropped = 0;
        for _ in 0..SWEEP_PAGES {
            let page: Value = client
                .custom(
                    fred::types::CustomCommand::new_static(
                        "HSCAN",
                        fred::types::ClusterHash::FirstKey,
                        false,
                    ),
                    vec![
                        Value::from(key),
                        Value::from(cursor.as_str()),
                        Value::from("COUNT"),
                        Value::from(SWEEP_PAGE as i64),
                    ],
                )
                .await?;
            let (next, items) = match page {
                Value::Array(mut parts) if parts.len() == 2 => {
                    let items = parts.pop().expect("two parts");
                    (parts.pop().expect("two parts"), items)
                }
                other => {
                    return Err(fred::error::Error::new(
                        fred::error::ErrorKind::Parse,
                        format!("unexpected HSCAN reply {other:?}"),
                    ))
                }
            };
            let mut old: Vec<fred::types::Key> = Vec::new();
            if let Value::Array(flat) = items {
                for pair in flat.chunks(2) {
                    let written: Option<u64> = pair.get(1).and_then(|v| v.as_u64());
                    if let (Some(t), Some(id)) = (written, pair[0].as_bytes()) {
                        if t < cutoff {
                            old.push(fred::types::Key::from(id));
                        }
                    }
                }
            }
            if !old.is_empty() {
                dropped += old.len();
                let _: Value = client.hdel(key, old).await?;
            }
            cursor = next.as_string().unwrap_or_else(|| "0".into());
            if cursor == "0" {
                break;
            }
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_keep_acked_records_stay() {
        let batch = |n: usize| vec![("k".to_string(), vec![bytes::Bytes::new(); n])];
        let mut q = AckedQueue::default();
        q.push(batch(3));
        q.push(batch(4));
        assert!(q.take_beyond(7).is_empty(), "7 kept, keep = 7");
        // Room for a batch of 2 before its ack: the oldest (3) goes.
        assert_eq!(q.take_beyond(7 - 2).len(), 1);
        q.push(batch(2));
        assert_eq!(q.entries, 6);
        assert!(q.take_beyond(7).is_empty());
        assert_eq!(q.take_beyond(0).len(), 2);
        assert_eq!(q.entries, 0);
    }

    #[test]
    fn written_sets_share_the_target_slot() {
        let slot = |k: &str| fred::util::redis_keyslot(k.as_bytes());
        for target in ["jobs.in", "jobs.in:{2}", "{edge}.jobs"] {
            let key = written_key("move", target, "src:{0}");
            assert_eq!(slot(&key), slot(target), "{key}");
        }
        assert_eq!(
            written_key("move", "jobs", "src"),
            "sluice:s2s:{jobs}:move:src"
        );
    }
}
