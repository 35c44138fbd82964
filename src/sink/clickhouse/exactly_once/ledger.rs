//! The exactly-once batch ledger (`delivery = "exactly_once"`).
//!
//! Before a batch is inserted, its id and member entry ids are recorded in
//! Redis; every row carries the batch id in a configured column (and, on
//! servers that have it, the insert carries `insert_deduplication_token`).
//! After the ack the record is dropped. A replica that claims entries of a
//! dead replica looks them up here: if ClickHouse already holds the batch,
//! it only acks; otherwise it re-inserts the identical batch (same members,
//! same order, same batch id). See docs/EXACTLY_ONCE.md for the guarantees.
//!
//! Keys (per flow; the braces are literal, a Redis Cluster hash tag):
//! `sluice:eo:{flow}:open` (set of open batch ids),
//! `sluice:eo:{flow}:batch:{id}` (JSON `[[stream, entry id], …]`, expiring
//! after `ledger_ttl`), `sluice:eo:{flow}:lease:{id}` (the task that may
//! insert the batch now, expiring unless renewed: the inserting replica takes
//! it with the record, a recovering one once it has expired), and per stream
//! `sluice:eo:{flow}:from:{stream}` / `…:to:{stream}` (sorted sets of open
//! batch ids scored by the first / last entry time of their members in that
//! stream: the index a claim page looks records up by).
//!
//! Invariants the scripts keep (each runs atomically in Redis):
//! - **an entry is in at most one open record.** A bisected part is recorded
//!   as a child of the part it came from, and the same script removes its
//!   members from the parent (deleting the parent once empty), so after a
//!   crash mid-bisect every entry maps to the one part that may hold it;
//! - **only the lease holder (or anyone, once the lease lapsed) changes or
//!   drops a record**: a replica that lost a batch to another one cannot
//!   delete the record the other is recovering.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;

use crate::redis::{id_millis, lease, Message, Result, StreamError};

/// One recorded batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    pub id: String,
    /// (stream, entry id) in block order.
    pub members: Vec<(Arc<str>, Bytes)>,
}

pub struct Ledger {
    client: Client,
    prefix: String,
    ttl: Duration,
    /// How long a lease lasts without renewal.
    lease: Duration,
    /// The flow's streams: each has an index of the open records by time.
    streams: Vec<Arc<str>>,
    /// When the open set was last swept of expired records.
    swept: Mutex<Option<Instant>>,
}

/// Records (or re-records) a batch under ARGV[1]'s lease, indexes it, and,
/// for a bisected part, removes its members from the parent record.
/// KEYS: lease, batch, open, then `from`/`to` of each of n streams, then
/// (a part only) the parent's batch and lease keys.
/// ARGV: holder, lease ms, ttl ms, members JSON, id, n, then the n streams'
/// first/last entry times ("" for a stream without members), then (a part
/// only) the parent id. Returns 0, changing nothing, when another holder has
/// the batch's or the parent's lease.
const RECORD: &str = r#"
local holder, id, n = ARGV[1], ARGV[5], tonumber(ARGV[6])
local parent = 3 + 2 * n + 1
local function other(lease_key)
  local h = redis.call('GET', lease_key)
  return h and h ~= holder
end
if other(KEYS[1]) or (KEYS[parent] and other(KEYS[parent + 1])) then
  return 0
end
redis.call('SET', KEYS[1], holder, 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], id)
for i = 1, n do
  local from, to = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  if from ~= '' then
    redis.call('ZADD', KEYS[2 + 2 * i], from, id)
    redis.call('ZADD', KEYS[3 + 2 * i], to, id)
  end
end
if KEYS[parent] then
  local text = redis.call('GET', KEYS[parent])
  if text then
    local moved = {}
    for _, m in ipairs(cjson.decode(ARGV[4])) do moved[m[1] .. '\0' .. m[2]] = true end
    local keep = {}
    for _, m in ipairs(cjson.decode(text)) do
      if not moved[m[1] .. '\0' .. m[2]] then keep[#keep + 1] = m end
    end
    if #keep > 0 then
      redis.call('SET', KEYS[parent], cjson.encode(keep), 'KEEPTTL')
    else
      local pid = ARGV[7 + 2 * n]
      redis.call('DEL', KEYS[parent], KEYS[parent + 1])
      redis.call('SREM', KEYS[3], pid)
      for i = 4, parent - 1 do redis.call('ZREM', KEYS[i], pid) end
    end
  end
end
return 1
"#;

/// Drops a batch's record, lease and index entries, unless another holder
/// has its lease. KEYS: lease, batch, open, the index keys. ARGV: holder, id.
const FORGET: &str = r#"
local h = redis.call('GET', KEYS[1])
if h and h ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
for i = 4, #KEYS do redis.call('ZREM', KEYS[i], ARGV[2]) end
return 1
"#;

/// The ids of open batches with members in [ARGV[1], ARGV[2]] (entry times,
/// ms) of one stream: those whose first member time is ≤ the end and whose
/// last is ≥ the start. Walks the smaller of the two sides.
/// KEYS: the stream's `from` and `to` index.
const OVERLAPPING: &str = r#"
local lo, hi = tonumber(ARGV[1]), tonumber(ARGV[2])
local before = redis.call('ZCOUNT', KEYS[1], '-inf', hi)
local after = redis.call('ZCOUNT', KEYS[2], lo, '+inf')
local out = {}
if before <= after then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', hi)) do
    local to = redis.call('ZSCORE', KEYS[2], id)
    if to and tonumber(to) >= lo then out[#out + 1] = id end
  end
else
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], lo, '+inf')) do
    local from = redis.call('ZSCORE', KEYS[1], id)
    if from and tonumber(from) <= hi then out[#out + 1] = id end
  end
end
return out
"#;

/// Removes ids whose record expired (ledger_ttl) from the open set and the
/// index. KEYS: open, n index keys, then one batch key per id. ARGV: n, ids.
const PURGE: &str = r#"
local n = tonumber(ARGV[1])
local purged = 0
for j = 2, #ARGV do
  if redis.call('EXISTS', KEYS[1 + n + j - 1]) == 0 then
    redis.call('SREM', KEYS[1], ARGV[j])
    for i = 2, 1 + n do redis.call('ZREM', KEYS[i], ARGV[j]) end
    purged = purged + 1
  end
end
return purged
"#;

static RECORD_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(RECORD));
static FORGET_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(FORGET));
static OVERLAPPING_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(OVERLAPPING));
static PURGE_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(PURGE));

/// `[[stream, entry id], …]` as JSON, written straight into one string:
/// a batch has 50,000 members, and a string and a pair each cost more than
/// the rest of the record.
fn encode_members(messages: &[Message]) -> String {
    let json = |text: &str| serde_json::to_string(text).expect("strings serialize");
    let mut out = String::with_capacity(2 + messages.len() * 32);
    let mut stream: Option<(&str, String)> = None;
    out.push('[');
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Consecutive members mostly share their stream: quoted once.
        if stream.as_ref().is_none_or(|(name, _)| *name != &*m.stream) {
            stream = Some((&m.stream, json(&m.stream)));
        }
        out.push('[');
        out.push_str(&stream.as_ref().expect("set above").1);
        out.push(',');
        let id = String::from_utf8_lossy(&m.id);
        if id.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            out.push('"');
            out.push_str(&id);
            out.push('"');
        } else {
            out.push_str(&json(&id));
        }
        out.push(']');
    }
    out.push(']');
    out
}

fn decode_members(text: &str) -> Option<Vec<(Arc<str>, Bytes)>> {
    let pairs: Vec<(String, String)> = serde_json::from_str(text).ok()?;
    Some(
        pairs
            .into_iter()
            .map(|(s, id)| (Arc::from(s.as_str()), Bytes::from(id)))
            .collect(),
    )
}

/// The first and last entry time (ms) of `messages` in each stream.
fn time_spans(messages: &[Message]) -> HashMap<&str, (u64, u64)> {
    spans_of(messages.iter().map(|m| (&*m.stream, &m.id[..])))
}

/// The same over `(stream, entry id)` pairs.
fn spans_of<'a>(
    entries: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> HashMap<&'a str, (u64, u64)> {
    // A list, not a map, while counting: a batch has one or a few
    // streams, and hashing the name of each of 50,000 members showed.
    let mut spans: Vec<(&str, (u64, u64))> = Vec::new();
    for (stream, id) in entries {
        let Some(t) = id_millis(id) else { continue };
        match spans.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, span)) => {
                span.0 = span.0.min(t);
                span.1 = span.1.max(t);
            }
            None => spans.push((stream, (t, t))),
        }
    }
    spans.into_iter().collect()
}

impl Ledger {
    /// `lease` must outlast one insert attempt (see `Committer`); `streams`
    /// are the flow's streams (after shard expansion).
    pub fn new(
        client: Client,
        flow: &str,
        ttl: Duration,
        lease: Duration,
        streams: &[Arc<str>],
    ) -> Self {
        Ledger {
            client,
            prefix: Self::prefix_for(flow),
            ttl,
            lease,
            streams: streams.to_vec(),
            swept: Mutex::new(None),
        }
    }

    fn lease_key(&self, id: &str) -> String {
        format!("{}:lease:{id}", self.prefix)
    }

    /// The flow name is a hash tag: all of a flow's ledger keys sit in one
    /// Redis Cluster slot, so scripts and MGET over them work there.
    fn prefix_for(flow: &str) -> String {
        format!("sluice:eo:{{{flow}}}")
    }

    fn batch_key(&self, id: &str) -> String {
        format!("{}:batch:{id}", self.prefix)
    }

    fn open_key(&self) -> String {
        format!("{}:open", self.prefix)
    }

    /// The index of `stream`: (first member time, last member time).
    fn index_keys(&self, stream: &str) -> [String; 2] {
        [
            format!("{}:from:{stream}", self.prefix),
            format!("{}:to:{stream}", self.prefix),
        ]
    }

    /// The flow's streams, and any other stream `messages` name.
    fn streams_of<'a>(&'a self, messages: &'a [Message]) -> Vec<&'a str> {
        let mut streams: Vec<&str> = self.streams.iter().map(|s| &**s).collect();
        let mut last: Option<&Arc<str>> = None;
        for m in messages {
            // Members of one stream share its `Arc`: most are skipped here.
            if last.is_some_and(|l| Arc::ptr_eq(l, &m.stream)) {
                continue;
            }
            last = Some(&m.stream);
            if !streams.contains(&&*m.stream) {
                streams.push(&m.stream);
            }
        }
        streams
    }

    /// Every index key of the flow's streams.
    fn all_index_keys(&self) -> Vec<String> {
        self.streams
            .iter()
            .flat_map(|s| self.index_keys(s))
            .collect()
    }

    /// Records a batch before its insert, with `holder`'s lease on it.
    /// Recording again (the same id) replaces the member list. `parent`: the
    /// batch this one was bisected from, which loses these members in the
    /// same step. False (nothing changed) when another holder has the lease
    /// of the batch or of its parent: it is theirs now.
    pub async fn record(
        &self,
        id: &str,
        parent: Option<&str>,
        holder: &str,
        messages: &[Message],
    ) -> Result<bool> {
        let spans = time_spans(messages);
        let streams = self.streams_of(messages);
        let mut keys = vec![self.lease_key(id), self.batch_key(id), self.open_key()];
        let mut args = vec![
            holder.to_string(),
            self.lease.as_millis().to_string(),
            self.ttl.as_millis().to_string(),
            encode_members(messages),
            id.to_string(),
            streams.len().to_string(),
        ];
        for stream in &streams {
            keys.extend(self.index_keys(stream));
            match spans.get(stream) {
                Some((from, to)) => args.extend([from.to_string(), to.to_string()]),
                None => args.extend([String::new(), String::new()]),
            }
        }
        if let Some(parent) = parent {
            keys.extend([self.batch_key(parent), self.lease_key(parent)]);
            args.push(parent.to_string());
        }
        let done: i64 = RECORD_S
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(StreamError::from)?;
        Ok(done == 1)
    }

    /// Drops a batch's record once its members are acked (or handed back to
    /// normal batching) — unless another task holds its lease: then the
    /// batch is that task's, which drops the record itself. False then.
    pub async fn forget(&self, id: &str, holder: &str) -> Result<bool> {
        let mut keys = vec![self.lease_key(id), self.batch_key(id), self.open_key()];
        keys.extend(self.all_index_keys());
        let done: i64 = FORGET_S
            .evalsha_with_reload(&self.client, keys, vec![holder.to_string(), id.to_string()])
            .await
            .map_err(StreamError::from)?;
        Ok(done == 1)
    }

    /// The current members of batch `id`, None once its record is gone.
    pub async fn members(&self, id: &str) -> Result<Option<Vec<(Arc<str>, Bytes)>>> {
        let text: Option<String> = self.client.get(self.batch_key(id)).await?;
        Ok(text.as_deref().and_then(decode_members))
    }

    /// The open batches with members among `entries` (one claim page):
    /// only records whose time span in the entries' streams overlaps the
    /// page's are fetched, so the cost follows the page, not the ledger.
    pub async fn records_for(&self, entries: &[Message]) -> Result<Vec<BatchRecord>> {
        let mut ids: Vec<String> = Vec::new();
        for (stream, (from, to)) in time_spans(entries) {
            let found: Vec<String> = OVERLAPPING_S
                .evalsha_with_reload(
                    &self.client,
                    self.index_keys(stream).to_vec(),
                    vec![from.to_string(), to.to_string()],
                )
                .await
                .map_err(StreamError::from)?;
            ids.extend(found);
        }
        let ids: Vec<String> = ids
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.batch_key(id)).collect();
        let texts: Vec<Option<String>> = self.client.mget(keys).await?;
        let mut out = Vec::new();
        let mut expired = Vec::new();
        for (id, text) in ids.into_iter().zip(texts) {
            match text.as_deref().and_then(decode_members) {
                Some(members) => out.push(BatchRecord { id, members }),
                None => expired.push(id),
            }
        }
        self.purge(&expired).await?;
        Ok(out)
    }

    /// Takes ids whose record expired out of the open set and the index;
    /// the number taken out.
    async fn purge(&self, ids: &[String]) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let index = self.all_index_keys();
        let mut keys = vec![self.open_key()];
        keys.extend(index.iter().cloned());
        keys.extend(ids.iter().map(|id| self.batch_key(id)));
        let mut args = vec![index.len().to_string()];
        args.extend(ids.iter().cloned());
        let purged: i64 = PURGE_S
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(StreamError::from)?;
        Ok(purged as usize)
    }

    /// At most every `every`: purges a sample of the open set of records
    /// that expired without being dropped (a crash between ack and drop),
    /// and returns the number of open records; None when not due. The
    /// first sweep of a process also indexes open records that are not
    /// (written by a version without the index).
    pub async fn sweep(&self, every: Duration) -> Result<Option<u64>> {
        let first = {
            let mut swept = self.swept.lock().expect("not poisoned");
            if swept.is_some_and(|t| t.elapsed() < every) {
                return Ok(None);
            }
            swept.replace(Instant::now()).is_none()
        };
        if first {
            self.index_all().await?;
        }
        const SAMPLE: usize = 64;
        let sample: Vec<String> = self
            .client
            .srandmember(self.open_key(), Some(SAMPLE))
            .await?;
        self.purge(&sample).await?;
        let open: u64 = self.client.scard(self.open_key()).await?;
        Ok(Some(open))
    }

    /// Adds every open record to the index (`ZADD` of the same scores again
    /// for those already in it).
    async fn index_all(&self) -> Result<()> {
        let ids: Vec<String> = self.client.smembers(self.open_key()).await?;
        for ids in ids.chunks(100) {
            let keys: Vec<String> = ids.iter().map(|id| self.batch_key(id)).collect();
            let texts: Vec<Option<String>> = self.client.mget(keys).await?;
            let pipeline = self.client.pipeline();
            for (id, text) in ids.iter().zip(texts) {
                let Some(members) = text.as_deref().and_then(decode_members) else {
                    continue;
                };
                let spans = spans_of(members.iter().map(|(s, id)| (&**s, &id[..])));
                for (stream, (from, to)) in spans {
                    let [from_key, to_key] = self.index_keys(stream);
                    let _: () = pipeline
                        .zadd(
                            from_key,
                            None,
                            None,
                            false,
                            false,
                            (from as f64, id.as_str()),
                        )
                        .await?;
                    let _: () = pipeline
                        .zadd(to_key, None, None, false, false, (to as f64, id.as_str()))
                        .await?;
                }
            }
            for r in pipeline.try_all::<Value>().await {
                r?;
            }
        }
        Ok(())
    }

    /// Renews `holder`'s lease on batch `id`, or takes it if it expired;
    /// false if another holder has it. Only the holder inserts a batch, so a
    /// replica recovers a batch only once its inserter stopped renewing.
    /// Holders are per task (committer, each recovery), not per process, so
    /// a process never races itself.
    pub async fn renew_lease(&self, id: &str, holder: &str) -> Result<bool> {
        Ok(lease::hold(&self.client, &self.lease_key(id), holder, self.lease).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::rows::new_batch_id;

    #[test]
    fn a_flows_ledger_keys_share_one_cluster_slot() {
        let slot = |k: String| fred::util::redis_keyslot(k.as_bytes());
        let prefix = Ledger::prefix_for("events");
        let open = slot(format!("{prefix}:open"));
        for id in [new_batch_id(), new_batch_id()] {
            assert_eq!(slot(format!("{prefix}:batch:{id}")), open);
            assert_eq!(slot(format!("{prefix}:lease:{id}")), open);
        }
        // A sharded stream's name has braces of its own; the flow's come first.
        assert_eq!(slot(format!("{prefix}:from:events:{{3}}")), open);
        assert_eq!(slot(format!("{prefix}:to:events:{{3}}")), open);
    }

    fn m(s: &str, id: &str) -> Message {
        Message {
            stream: Arc::from(s),
            id: Bytes::from(id.to_string()),
            fields: Default::default(),
            deliveries: 1,
        }
    }

    #[test]
    fn members_round_trip_in_order() {
        let members = [
            m("a", "1-0"),
            m("b\"x", "2-5"),
            m("b\"x", "x\"y"),
            m("a", "3-1"),
        ];
        let text = encode_members(&members);
        // The same text serde writes for the pairs (what older versions
        // recorded).
        let pairs: Vec<(&str, String)> = members
            .iter()
            .map(|m| (&*m.stream, String::from_utf8_lossy(&m.id).into_owned()))
            .collect();
        assert_eq!(text, serde_json::to_string(&pairs).unwrap());
        let back = decode_members(&text).unwrap();
        assert_eq!(
            back,
            vec![
                (Arc::from("a"), Bytes::from("1-0")),
                (Arc::from("b\"x"), Bytes::from("2-5")),
                (Arc::from("b\"x"), Bytes::from("x\"y")),
                (Arc::from("a"), Bytes::from("3-1")),
            ]
        );
        assert_eq!(encode_members(&[]), "[]");
        // As the record script writes them back (cjson escapes '/').
        assert_eq!(
            decode_members(r#"[["a\/b","1-0"]]"#).unwrap(),
            vec![(Arc::from("a/b"), Bytes::from("1-0"))]
        );
    }

    #[test]
    fn time_spans_are_per_stream() {
        let page = [m("a", "5-1"), m("b", "7-0"), m("a", "3-0"), m("a", "9-2")];
        let spans = time_spans(&page);
        assert_eq!(spans["a"], (3, 9));
        assert_eq!(spans["b"], (7, 7));
    }
}
