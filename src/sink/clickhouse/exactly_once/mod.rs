//! The exactly-once insert of one batch, shared by the committer (a batch
//! this replica read) and recovery (a batch a dead replica recorded).
//!
//! The rules that make it exact (docs/EXACTLY_ONCE.md):
//! - a batch is recorded in the ledger before any insert, and only entries
//!   still pending under our consumer after the record stay in it — an entry
//!   another replica claimed first is its to insert (a batch read too
//!   recently for any claim to have come first skips the check);
//! - only the holder of the batch's lease inserts, and it renews the lease
//!   right before each step that can land rows;
//! - rows land through a fenced stage (`fenced`), and after any failure the
//!   batch is settled (stages dropped, rows counted) before another attempt.

pub(crate) mod fenced;
pub(crate) mod ledger;
pub(crate) mod recover;
pub(crate) mod stage_table;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::Client;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::obs::metrics::FlowMetrics;
use crate::redis::acks::same_stream;
use crate::redis::direct::StreamConnection;
use crate::redis::held::Held;
use crate::redis::{parse_id, Message, StreamError};
use crate::sink::clickhouse::classify::classify;
use crate::sink::clickhouse::exactly_once::ledger::Ledger;
use crate::sink::clickhouse::{ClickHouseSink, Target};

/// A stream entry id as its two numbers (ms, seq).
type EntryId = (u64, u64);

pub(crate) struct ExactlyOnce {
    pub flow: String,
    pub group: String,
    pub consumer: String,
    pub sink: Arc<ClickHouseSink>,
    pub ledger: Arc<Ledger>,
    pub redis: Client,
    /// XPENDING over each recorded batch, and recovery's acks: a
    /// connection of sluice's own where it can be (see [`StreamConnection`]).
    pub pending: StreamConnection,
    /// The entries this process holds, with when their reads were sent.
    pub held: Arc<Held>,
    /// `claim.min_idle`, the same on every replica: no replica claims an
    /// entry delivered to us less than this long ago.
    pub claim_min_idle: Duration,
    pub batch_id_column: String,
    /// The column holding entry ids (`metadata.id`), if configured: lets a
    /// partly landed batch be completed exactly.
    pub id_column: Option<String>,
    /// The column holding stream names (`metadata.stream`), if configured:
    /// ids repeat across a flow's streams (the shards of a sharded stream
    /// count from the same clock), so completion matches on both.
    pub stream_column: Option<String>,
    pub metrics: FlowMetrics,
}

/// One recorded batch to insert: its id, members, their Native block and
/// where it goes.
pub(crate) struct Batch<'a> {
    pub id: &'a str,
    pub messages: &'a [Message],
    pub block: Bytes,
    pub target: Target,
}

/// How an exactly-once insert ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Every row of the batch is in the table (now or from an earlier attempt).
    Landed,
    /// ClickHouse refused the insert (an exception about it, not an
    /// outage) and none of it landed.
    Refused(String),
    /// Another replica holds the batch's lease: it is theirs to finish.
    LeaseLost,
}

/// The stop token fired before the work was done.
#[derive(Debug)]
pub(crate) struct Stopped;

impl ExactlyOnce {
    /// The lease holder name of this process's committer.
    pub(crate) fn committer(&self) -> String {
        format!("{}#commit", self.consumer)
    }

    /// A fresh lease holder name for one recovery task.
    pub(crate) fn recoverer(&self) -> String {
        format!("{}#recover-{:08x}", self.consumer, rand::random::<u32>())
    }

    /// Records `part` as batch `id` (bisected from batch `parent`, which
    /// gives its members up in the same step), then keeps only the members
    /// still pending under our consumer (re-recording if some were taken).
    /// Entries another replica claimed before the record existed are batched
    /// by it. Empty when nothing is left for us to insert — including when
    /// another replica holds the parent's lease: it recovers those entries.
    pub(crate) async fn record_owned(
        &self,
        id: &str,
        parent: Option<&str>,
        mut part: Vec<Message>,
        stop: &CancellationToken,
    ) -> Result<Vec<Message>, Stopped> {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let ours = match self
                .ledger
                .record(id, parent, &self.committer(), &part)
                .await
            {
                Ok(true) if self.too_recent_to_be_claimed(&part) => return Ok(part),
                Ok(true) => self.still_ours(&part).await,
                Ok(false) => {
                    tracing::warn!(flow = %self.flow, batch = %id, rows = part.len(), "another replica took over the batch this part was bisected from; leaving it");
                    return Ok(Vec::new());
                }
                Err(e) => Err(e),
            };
            match ours {
                Ok(ours) => {
                    let before = part.len();
                    part.retain(|m| {
                        let ids = ours.iter().find(|(s, _)| same_stream(s, &m.stream));
                        let (Some((_, ids)), Some(id)) = (ids, parse_id(&m.id)) else {
                            return false;
                        };
                        ids.binary_search(&id).is_ok()
                    });
                    if part.len() == before {
                        return Ok(part);
                    }
                    tracing::warn!(flow = %self.flow, batch = %id, taken = before - part.len(), "entries were claimed by another replica before the batch was recorded; leaving them to it");
                    if part.is_empty() {
                        let _ = self.ledger.forget(id, &self.committer()).await;
                        return Ok(part);
                    }
                }
                Err(error) => {
                    tracing::warn!(flow = %self.flow, batch = %id, %error, "recording the batch in the ledger failed; retrying");
                    if !backoff.wait(stop).await {
                        return Err(Stopped);
                    }
                }
            }
        }
    }

    /// Drops ledger records of batches this task is done with, and now and
    /// then sweeps expired records out of the ledger (exporting how many
    /// are open). Best effort: a record left behind expires with
    /// `ledger_ttl`; a record another task holds the lease of stays (it is
    /// that task's to drop).
    pub(crate) async fn forget(&self, ids: &[String], holder: &str) {
        for id in ids {
            if let Err(e) = self.ledger.forget(id, holder).await {
                tracing::warn!(flow = %self.flow, batch = %id, error = %e, "could not drop ledger record");
            }
        }
        self.sweep_ledger().await;
    }

    /// Sweeps the ledger at most every 10 s; see [`Ledger::sweep`].
    pub(crate) async fn sweep_ledger(&self) {
        match self.ledger.sweep(Duration::from_secs(10)).await {
            Ok(Some(open)) => self.metrics.exactly_once_open_batches(open),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(flow = %self.flow, %error, "sweeping the exactly-once ledger failed")
            }
        }
    }

    /// Whether every member of `part` was delivered to us by a read sent so
    /// recently that no replica can have claimed it yet: a claim takes only
    /// entries idle for `claim.min_idle`, and Redis counts idle time from
    /// the delivery, which came after the read was sent. Called right after
    /// the batch was recorded: from then on a claiming replica finds the
    /// record, so the members are ours without asking Redis (XPENDING over
    /// a 50,000-member batch costs Redis more than reading it). Half of
    /// `min_idle` is the margin for the two clocks.
    fn too_recent_to_be_claimed(&self, part: &[Message]) -> bool {
        self.held
            .delivered_since(part)
            .is_some_and(|sent| sent.elapsed() < self.claim_min_idle / 2)
    }

    /// The members of `part` pending under our consumer (XPENDING over each
    /// stream's id range, paged).
    async fn still_ours(
        &self,
        part: &[Message],
    ) -> Result<Vec<(Arc<str>, Vec<EntryId>)>, StreamError> {
        const PAGE: usize = 10_000;
        type Id = EntryId;
        // Per stream (a list: a batch has one or a few, and members of one
        // share its `Arc`), the lowest and highest member id.
        let mut ranges: Vec<(Arc<str>, (Id, Id))> = Vec::new();
        for m in part {
            let Some(id) = parse_id(&m.id) else { continue };
            match ranges.iter_mut().find(|(s, _)| same_stream(s, &m.stream)) {
                Some((_, r)) => {
                    r.0 = r.0.min(id);
                    r.1 = r.1.max(id);
                }
                None => ranges.push((m.stream.clone(), (id, id))),
            }
        }
        let mut ours: Vec<(Arc<str>, Vec<EntryId>)> = Vec::new();
        for (stream, (lo, hi)) in ranges {
            ours.push((stream.clone(), Vec::new()));
            let ids = &mut ours.last_mut().expect("pushed above").1;
            let mut start = format!("{}-{}", lo.0, lo.1);
            let end = format!("{}-{}", hi.0, hi.1);
            loop {
                let page = self
                    .pending
                    .pending_ids(
                        &stream,
                        &self.group,
                        start.as_bytes(),
                        end.as_bytes(),
                        PAGE,
                        &self.consumer,
                    )
                    .await?;
                let full = page.len() == PAGE;
                let last = page.last().copied();
                ids.extend(page);
                match last {
                    Some((ms, seq)) if full => start = format!("({ms}-{seq}"),
                    _ => break,
                }
            }
            // Pages come in id order; sorted for the binary search anyway.
            ids.sort_unstable();
        }
        Ok(ours)
    }

    /// Inserts a recorded batch exactly once, as lease holder `holder`,
    /// retrying until it lands, is refused, the lease goes to another
    /// replica, or `stop`. `settle_first`: an earlier attempt (maybe another
    /// replica's) may have landed some or all of it.
    pub(crate) async fn insert(
        &self,
        batch: Batch<'_>,
        holder: &str,
        mut settle_first: bool,
        stop: &CancellationToken,
    ) -> Result<Outcome, Stopped> {
        let Batch {
            id,
            messages,
            block,
            target,
        } = batch;
        let rows = messages.len();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut next = block.clone();
        // The last attempt's error, when it was a refusal of the data.
        let mut refused: Option<String> = None;
        let mut settled = false;
        loop {
            if !self.hold_lease(id, holder, &mut backoff, stop).await? {
                return Ok(Outcome::LeaseLost);
            }
            if settle_first {
                match self.settle(id, messages, &block).await {
                    Ok(Settled::All) => return Ok(Outcome::Landed),
                    // Data errors surface while staging, before anything
                    // can reach the table, so a refusal normally settles
                    // as "nothing landed".
                    Ok(_) if refused.is_some() => {
                        return Ok(Outcome::Refused(refused.take().unwrap_or_default()))
                    }
                    Ok(Settled::Nothing) => {
                        next = block.clone();
                        settled = true;
                    }
                    Ok(Settled::Part(missing)) => {
                        next = missing;
                        settled = true;
                    }
                    Err(error) => {
                        tracing::warn!(flow = %self.flow, batch = %id, %error, "settling the batch failed; retrying before any new insert");
                        if !backoff.wait(stop).await {
                            return Err(Stopped);
                        }
                        continue;
                    }
                }
            }
            let started = Instant::now();
            // A healthy endpoint (or the shard's): after a failure the
            // endpoint is marked down, so the next attempt — after the
            // settle — goes to another one.
            let endpoint = self.sink.first_choice(target);
            let result = match fenced::stage(&self.sink, endpoint, next.clone(), id).await {
                // The last step that can land rows: only with the lease.
                Ok(stage) => match self.ledger.renew_lease(id, holder).await {
                    Ok(true) => fenced::commit(&self.sink, stage, id).await,
                    other => {
                        fenced::discard(&self.sink, stage).await;
                        if matches!(other, Ok(false)) {
                            return Ok(Outcome::LeaseLost);
                        }
                        settle_first = true;
                        continue;
                    }
                },
                Err(e) => Err(e),
            };
            let result = self.sink.endpoints().record(endpoint, rows, result);
            match result {
                Ok(()) => {
                    self.metrics.inserted(rows, next.len(), started.elapsed());
                    if settled {
                        tracing::info!(flow = %self.flow, batch = %id, "batch inserted after settling: no earlier attempt had landed it");
                    }
                    return Ok(Outcome::Landed);
                }
                Err(error) => {
                    settle_first = true;
                    // A refusal goes back to the committer, which decides
                    // to retry or to bisect (`escalation`).
                    if classify(&error).is_refusal() {
                        self.metrics.insert_refused();
                        refused = Some(error.to_string());
                        continue; // settle at once: did anything land?
                    }
                    self.metrics.insert_retried(rows);
                    tracing::warn!(flow = %self.flow, table = %self.sink.table_name(), batch = %id, %error, "insert failed; settling, then retrying (nothing acked)");
                    if !backoff.wait(stop).await {
                        return Err(Stopped);
                    }
                }
            }
        }
    }

    /// Renews our lease on `id`, retrying Redis errors: Ok(false) if another
    /// replica holds it.
    async fn hold_lease(
        &self,
        id: &str,
        holder: &str,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Result<bool, Stopped> {
        loop {
            match self.ledger.renew_lease(id, holder).await {
                Ok(held) => return Ok(held),
                Err(error) => {
                    tracing::warn!(flow = %self.flow, batch = %id, %error, "could not renew the batch's lease; not inserting until it is");
                    if !backoff.wait(stop).await {
                        return Err(Stopped);
                    }
                }
            }
        }
    }

    /// Fences the batch and counts what landed.
    async fn settle(
        &self,
        id: &str,
        messages: &[Message],
        block: &Bytes,
    ) -> Result<Settled, clickhouse::error::Error> {
        let lookup = fenced::Lookup {
            batch_column: &self.batch_id_column,
            batch_id: id,
            block,
            keys: self
                .id_column
                .as_deref()
                .map(|id| (self.stream_column.as_deref(), id)),
        };
        let found = fenced::settle(&self.sink, &lookup).await?;
        let held = found.rows as usize;
        if held >= messages.len() {
            tracing::info!(flow = %self.flow, batch = %id, rows = held, "ClickHouse holds the whole batch");
            return Ok(Settled::All);
        }
        if held == 0 {
            return Ok(Settled::Nothing);
        }
        if self.id_column.is_none() {
            tracing::warn!(flow = %self.flow, batch = %id, held, members = messages.len(), "ClickHouse holds part of the batch and no metadata.id column tells which rows: inserting all again (duplicates)");
            return Ok(Settled::Part(block.clone()));
        }
        let landed = found.keys;
        let (missing, duplicated) =
            missing_members(messages, &landed, self.stream_column.is_some());
        if duplicated > 0 {
            tracing::warn!(flow = %self.flow, batch = %id, duplicated, "part of the batch landed, but which of several members sharing an entry id cannot be told (set metadata.stream when a flow reads several streams): inserting those again (duplicates)");
        }
        tracing::info!(flow = %self.flow, batch = %id, held, missing = missing.len(), "completing a partly landed batch");
        Ok(Settled::Part(
            self.sink.mapper.encode_all(&missing, Some(id)),
        ))
    }
}

/// The members of a partly landed batch still to insert, given the
/// `(stream, entry id)` of its rows found in the table (`stream` is only
/// compared when `with_stream`: the table has a stream column). A member is
/// matched on (stream, id, occurrence): several members sharing a key — a
/// handler's outputs of one source, or, without a stream column, the same id
/// in two streams — are present only as many times as rows were found.
/// When fewer rows than members share a key, which of them landed cannot be
/// told: all of them are inserted again, and the second value counts the
/// rows duplicated that way.
fn missing_members(
    messages: &[Message],
    landed: &[(String, String)],
    with_stream: bool,
) -> (Vec<Message>, usize) {
    let key = |stream: &str, id: &[u8]| -> (String, Vec<u8>) {
        let stream = if with_stream { stream } else { "" };
        (stream.to_string(), id.to_vec())
    };
    let mut found: HashMap<(String, Vec<u8>), usize> = HashMap::new();
    for (stream, id) in landed {
        *found.entry(key(stream, id.as_bytes())).or_default() += 1;
    }
    let mut members: HashMap<(String, Vec<u8>), usize> = HashMap::new();
    for m in messages {
        *members.entry(key(&m.stream, &m.id)).or_default() += 1;
    }
    let mut duplicated = 0;
    for (k, &n) in &members {
        let rows = found.get(k).copied().unwrap_or(0);
        if rows > 0 && rows < n {
            duplicated += rows;
        }
    }
    let missing = messages
        .iter()
        .filter(|m| {
            let k = key(&m.stream, &m.id);
            found.get(&k).copied().unwrap_or(0) < members[&k]
        })
        .cloned()
        .collect();
    (missing, duplicated)
}

/// What a settle found in the table.
enum Settled {
    All,
    Nothing,
    /// Part of the batch landed: the block still to insert.
    Part(Bytes),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(stream: &str, id: &str, n: u8) -> Message {
        Message {
            stream: Arc::from(stream),
            id: Bytes::from(id.to_string()),
            fields: vec![(Bytes::from_static(b"n"), Bytes::from(vec![n]))].into(),
            deliveries: 1,
        }
    }

    fn landed(rows: &[(&str, &str)]) -> Vec<(String, String)> {
        rows.iter()
            .map(|(s, i)| (s.to_string(), i.to_string()))
            .collect()
    }

    #[test]
    fn the_same_id_in_two_streams_is_matched_per_stream() {
        let batch = [
            m("x:{0}", "5-0", 0),
            m("x:{1}", "5-0", 1),
            m("x:{1}", "6-0", 2),
        ];
        let (missing, duplicated) = missing_members(&batch, &landed(&[("x:{0}", "5-0")]), true);
        assert_eq!(missing, vec![batch[1].clone(), batch[2].clone()]);
        assert_eq!(duplicated, 0);
    }

    #[test]
    fn without_a_stream_column_an_id_shared_by_two_streams_is_inserted_again_whole() {
        let batch = [
            m("x:{0}", "5-0", 0),
            m("x:{1}", "5-0", 1),
            m("x:{1}", "6-0", 2),
        ];
        // One of the two `5-0` rows landed, which one is unknown: both go
        // again (one duplicate) rather than one being taken for landed.
        let (missing, duplicated) = missing_members(&batch, &landed(&[("", "5-0")]), false);
        assert_eq!(missing, batch.to_vec());
        assert_eq!(duplicated, 1);
        // Both landed: neither is missing.
        let (missing, duplicated) =
            missing_members(&batch, &landed(&[("", "5-0"), ("", "5-0")]), false);
        assert_eq!(missing, vec![batch[2].clone()]);
        assert_eq!(duplicated, 0);
    }

    #[test]
    fn outputs_sharing_their_sources_id_count_one_row_each() {
        // A handler's two outputs of `1-0` and one of `2-0`.
        let batch = [m("s", "1-0", 0), m("s", "1-0", 1), m("s", "2-0", 2)];
        let (missing, _) = missing_members(&batch, &landed(&[("s", "1-0"), ("s", "2-0")]), true);
        assert_eq!(missing, vec![batch[0].clone(), batch[1].clone()]);
        let all = landed(&[("s", "1-0"), ("s", "1-0"), ("s", "2-0")]);
        assert!(missing_members(&batch, &all, true).0.is_empty());
    }
}
