//! Committing a sealed batch: insert (retrying transient errors, bisecting
//! data errors), then dead-letter what was refused and ack what landed.
//! Nothing is acked before ClickHouse confirmed it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::ack_gate::{sources, AckGate};
use super::clickhouse::{ClickHouseSink, Target};
use super::exactly_once::{Batch, ExactlyOnce, Outcome};
use super::ledger::new_batch_id;
use super::retry::{classify, Backoff, Disposition};
use crate::batch::SealedBatch;
use crate::config::OnSuccess;
use crate::metrics::FlowMetrics;
use crate::stream::dead_letter::{dead_letter_and_ack, DeadLetter};
use crate::stream::{commands, Message};

/// The hard deadline passed while a sink or Redis was still failing; the
/// batch stays pending and another replica will claim it.
#[derive(Debug, thiserror::Error)]
#[error("gave up on a batch of {0} messages at the shutdown deadline; they stay pending for another replica")]
pub struct Abandoned(pub usize);

pub struct Committer {
    pub flow: String,
    pub group: String,
    pub dead_letter_stream: String,
    pub on_success: OnSuccess,
    pub sink: Arc<ClickHouseSink>,
    pub redis: fred::prelude::Client,
    pub metrics: FlowMetrics,
    /// Cancelled when the shutdown deadline passes: stop retrying.
    pub hard_stop: CancellationToken,
    /// The exactly-once insert; None in at-least-once mode.
    pub exactly_once: Option<Arc<ExactlyOnce>>,
}

fn lock(gate: &Mutex<AckGate>) -> MutexGuard<'_, AckGate> {
    gate.lock().expect("ack gate poisoned")
}

impl Committer {
    /// Sleeps for the backoff delay; false if the hard stop came first.
    async fn wait(&self, backoff: &mut Backoff) -> bool {
        backoff.wait(&self.hard_stop).await
    }

    pub async fn commit(&self, batch: SealedBatch) -> Result<(), Abandoned> {
        if self.sink.sharding.is_some() {
            return self.commit_sharded(batch).await;
        }
        let total = batch.messages.len() + batch.dead.len();
        let mut dead = batch.dead;
        let mut batch_ids = Vec::new();
        let inserted = if batch.messages.is_empty() {
            Vec::new()
        } else {
            let (ok, rejected) = self
                .insert_isolating(
                    Target::Any,
                    batch.messages,
                    batch.block,
                    batch.batch_id,
                    &mut batch_ids,
                )
                .await
                .map_err(|_| Abandoned(total))?;
            dead.extend(rejected);
            ok
        };
        self.finish(inserted, dead)
            .await
            .map_err(|_| Abandoned(total))?;
        self.forget(&batch_ids).await;
        Ok(())
    }

    /// Drops the ledger records of acked batches (exactly-once).
    async fn forget(&self, batch_ids: &[String]) {
        if let Some(eo) = &self.exactly_once {
            eo.forget(batch_ids, &eo.committer()).await;
        }
    }

    /// A sharded flow's batch (`shard_by`): split by shard, each part
    /// inserted to its own shard concurrently and acked as soon as it
    /// landed (exactly-once: each part recorded under its own batch id). A
    /// down shard's part is retried (no other shard takes it) while the
    /// other parts land; the next batch waits for all of them, so a long
    /// shard outage stops the flow's reads (bounded memory) instead of
    /// piling up its rows. A handler's outputs of one source may sit in
    /// several parts: the source is acked (or dead-lettered) only once the
    /// last of them is done ([`AckGate`]).
    async fn commit_sharded(&self, batch: SealedBatch) -> Result<(), Abandoned> {
        let sharding = self.sink.sharding.as_ref().expect("sharded sink");
        let total = batch.messages.len() + batch.dead.len();
        let parts = sharding.split(batch.messages);
        let gate = Mutex::new(AckGate::new(parts.iter().map(|(_, p)| p.as_slice())));
        let (landed, dead) = lock(&gate).release(&HashSet::new(), Vec::new(), batch.dead);
        self.finish(landed, dead)
            .await
            .map_err(|_| Abandoned(total))?;
        // The batch's block holds every shard's rows: each part is encoded
        // anew, and (exactly-once) is a batch of its own in the ledger.
        let with_ids = self.exactly_once.is_some();
        let gate = &gate;
        let parts = parts.into_iter().map(|(shard, part)| async move {
            let id = with_ids.then(new_batch_id);
            let block = self.sink.mapper.encode_all(&part, id.as_deref());
            let done = sources(&part);
            let mut batch_ids = Vec::new();
            let (landed, refused) = self
                .insert_isolating(Target::Shard(shard), part, block, id, &mut batch_ids)
                .await?;
            // Exactly-once flows have no handler: each source is in one
            // part, so nothing is held back past its record's drop below.
            let (landed, refused) = lock(gate).release(&done, landed, refused);
            self.finish(landed, refused).await?;
            self.forget(&batch_ids).await;
            Ok::<(), ()>(())
        });
        let results = futures_util::future::join_all(parts).await;
        if results.iter().any(Result::is_err) {
            return Err(Abandoned(total));
        }
        Ok(())
    }

    /// Inserts `messages` (encoded as `block`); on a data error splits the
    /// batch in halves until the refused rows are alone. Returns the messages
    /// that landed and those refused, with ClickHouse's reason.
    /// With batch ids (exactly-once), every insert — the whole batch, or a
    /// part while bisecting — is recorded under its own id first and goes
    /// through [`ExactlyOnce::insert`]; the ids used are appended to
    /// `batch_ids`, except those another replica took over (theirs to drop).
    /// A part is recorded as a child of the part it was bisected from, so
    /// every entry is in one open record at any time.
    async fn insert_isolating(
        &self,
        target: Target,
        messages: Vec<Message>,
        block: Bytes,
        batch_id: Option<String>,
        batch_ids: &mut Vec<String>,
    ) -> Result<(Vec<Message>, Vec<DeadLetter>), ()> {
        let with_ids = batch_id.is_some();
        let mut landed = Vec::with_capacity(messages.len());
        let mut refused = Vec::new();
        // Work list of (messages, pre-encoded block and its batch id if
        // any, the batch id of the part it was bisected from).
        type Part = (
            Vec<Message>,
            Option<(Bytes, Option<String>)>,
            Option<String>,
        );
        let mut todo: Vec<Part> = vec![(messages, Some((block, batch_id)), None)];
        while let Some((part, encoded, parent)) = todo.pop() {
            let (block, id) = encoded.unwrap_or_else(|| {
                let id = with_ids.then(new_batch_id);
                (self.sink.mapper.encode_all(&part, id.as_deref()), id)
            });
            let (part, result, id) = match (&self.exactly_once, id) {
                (Some(eo), Some(id)) => {
                    let before = part.len();
                    let part = eo
                        .record_owned(&id, parent.as_deref(), part, &self.hard_stop)
                        .await
                        .map_err(|_| ())?;
                    if part.is_empty() {
                        continue;
                    }
                    let block = if part.len() == before {
                        block
                    } else {
                        self.sink.mapper.encode_all(&part, Some(&id))
                    };
                    match eo
                        .insert(
                            Batch {
                                id: &id,
                                messages: &part,
                                block,
                                target,
                            },
                            &eo.committer(),
                            false,
                            &self.hard_stop,
                        )
                        .await
                        .map_err(|_| ())?
                    {
                        Outcome::Landed => {
                            batch_ids.push(id.clone());
                            (part, None, Some(id))
                        }
                        Outcome::Refused(error) => {
                            batch_ids.push(id.clone());
                            (part, Some(error), Some(id))
                        }
                        Outcome::LeaseLost => {
                            // Our lease lapsed (Redis was unreachable for
                            // long) and a replica that claimed the entries
                            // recovers the batch: nothing of ours to ack,
                            // and its record is the other replica's to drop.
                            tracing::warn!(flow = %self.flow, batch = %id, rows = part.len(), "another replica took over the batch");
                            continue;
                        }
                    }
                }
                (_, id) => {
                    let result = self.insert_with_retry(target, block, part.len()).await?;
                    (part, result, id)
                }
            };
            match result {
                None => landed.extend(part),
                Some(error) if part.len() == 1 => {
                    let message = part.into_iter().next().expect("one message");
                    refused.push(DeadLetter {
                        message,
                        reason: format!("rejected by ClickHouse: {error}"),
                        kind: "rejected",
                    });
                }
                Some(error) => {
                    tracing::warn!(flow = %self.flow, rows = part.len(), %error, "ClickHouse refused the batch; bisecting to isolate bad rows");
                    let mut left = part;
                    let right = left.split_off(left.len() / 2);
                    // Pop order: left half first, to keep rows roughly in order.
                    todo.push((right, None, id.clone()));
                    todo.push((left, None, id));
                }
            }
        }
        Ok((landed, refused))
    }

    /// One insert, retried while the error is transient. Ok(None) = landed;
    /// Ok(Some(error)) = the data was refused; Err = hard stop. Each try
    /// with [`Target::Any`] is a pass over the healthy endpoints (failover
    /// within the pass); the backoff is between passes.
    async fn insert_with_retry(
        &self,
        target: Target,
        block: Bytes,
        rows: usize,
    ) -> Result<Option<String>, ()> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let started = Instant::now();
            let size = block.len();
            let result = match target {
                Target::Any => self.sink.insert(block.clone(), rows, None).await,
                Target::Shard(shard) => {
                    self.sink
                        .insert_shard(shard, block.clone(), rows, None)
                        .await
                }
            };
            match result {
                Ok(()) => {
                    self.metrics.inserted(rows, size, started.elapsed());
                    return Ok(None);
                }
                Err(error) => match classify(&error) {
                    Disposition::Bisect => {
                        self.metrics.insert_refused();
                        return Ok(Some(error.to_string()));
                    }
                    Disposition::Retry => {
                        self.metrics.insert_retried(rows);
                        let shard = match target {
                            Target::Shard(s) => Some(self.sink.endpoints().get(s).label.as_str()),
                            Target::Any => None,
                        };
                        tracing::warn!(flow = %self.flow, table = %self.sink.table_name(), shard, attempt = backoff.attempts() + 1, %error, "insert failed; will retry (nothing acked)");
                        if !self.wait(&mut backoff).await {
                            return Err(());
                        }
                    }
                },
            }
        }
    }

    /// Dead-letters refused messages and acks landed ones, retrying Redis
    /// errors until the hard stop.
    async fn finish(&self, landed: Vec<Message>, dead: Vec<DeadLetter>) -> Result<(), ()> {
        let delete = self.on_success == OnSuccess::AckDel;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        while let Err(error) = dead_letter_and_ack(
            &self.redis,
            &self.dead_letter_stream,
            &self.group,
            &dead,
            delete,
        )
        .await
        {
            tracing::warn!(flow = %self.flow, %error, "writing dead letters failed; retrying");
            if !self.wait(&mut backoff).await {
                return Err(());
            }
        }
        for d in &dead {
            tracing::warn!(flow = %self.flow, stream = %d.message.stream, id = %String::from_utf8_lossy(&d.message.id), reason = %d.reason, "dead-lettered");
            self.metrics.dead_lettered(d.kind);
        }
        let mut by_stream: HashMap<Arc<str>, Vec<Bytes>> = HashMap::new();
        for m in &landed {
            by_stream
                .entry(m.stream.clone())
                .or_default()
                .push(m.id.clone());
        }
        for (stream, ids) in &by_stream {
            backoff.reset();
            while let Err(error) =
                commands::ack(&self.redis, stream, &self.group, ids, delete).await
            {
                tracing::warn!(flow = %self.flow, %stream, %error, "XACK failed; retrying");
                if !self.wait(&mut backoff).await {
                    return Err(());
                }
            }
            self.metrics.acked(stream, ids.len());
        }
        self.metrics.end_to_end(&landed);
        let span = tracing::Span::current();
        span.record("inserted", landed.len());
        span.record("dead_lettered", dead.len());
        Ok(())
    }
}
