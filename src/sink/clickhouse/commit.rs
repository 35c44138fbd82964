//! Committing a sealed batch: insert (retrying transient errors, isolating
//! refused rows: [`crate::sink::clickhouse::isolate`]), then dead-letter what was refused and
//! ack what landed. Nothing is acked before ClickHouse confirmed it.

use std::collections::HashSet;

use std::sync::{Arc, Mutex, MutexGuard};

use crate::clickhouse::rows::new_batch_id;
use crate::clickhouse::rows::SealedBatch;
use crate::flow::settle::{Settler, Stopped};
use crate::redis::acks::Acks;
use crate::redis::dead_letter::DeadLetter;
use crate::redis::Message;
use crate::sink::clickhouse::ack_gate::{sources, AckGate};
use crate::sink::clickhouse::exactly_once::ExactlyOnce;
use crate::sink::clickhouse::{ClickHouseSink, Target};
use crate::sink::{Abandoned, Sealed, Sink};

/// A batch whose insert is done, waiting for its acks: the ids of what
/// landed, the dead letters to write first, and the exactly-once ledger
/// records to drop after.
#[derive(Default)]
pub(crate) struct Inserted {
    landed: Acks,
    dead: Vec<DeadLetter>,
    batch_ids: Vec<String>,
    total: usize,
}

pub(crate) struct Committer {
    /// This replica's consumer name (its record of a stuck flow).
    pub consumer: String,
    /// Dead letters and acks at the source; also the flow's name, its
    /// Redis, its metrics and the hard stop that ends every retry.
    pub settler: Settler,
    pub sink: Arc<ClickHouseSink>,
    /// The exactly-once insert; None in at-least-once mode.
    pub exactly_once: Option<Arc<ExactlyOnce>>,
}

fn lock(gate: &Mutex<AckGate>) -> MutexGuard<'_, AckGate> {
    gate.lock().expect("ack gate poisoned")
}

impl Committer {
    /// The first half of committing a batch: inserts the batch (isolating refused
    /// rows) and returns what is left to do. The committer acks one batch
    /// while it inserts the next. A sharded batch's parts are acked as they
    /// land, here: nothing is left for [`acknowledge`](Self::acknowledge).
    pub(crate) async fn insert(&self, batch: SealedBatch) -> Result<Inserted, Abandoned> {
        if self.sink.sharding.is_some() {
            self.commit_sharded(batch).await?;
            return Ok(Inserted::default());
        }
        let total = batch.messages.len() + batch.dead.len();
        let batch = self.for_current_columns(batch).await;
        let mut dead = batch.dead;
        let mut batch_ids = Vec::new();
        let landed = if batch.messages.is_empty() {
            Acks::default()
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
            // Acking needs only the ids: the messages, and the replies
            // they point into, go now, not once the next insert is done.
            let acks = Acks::of(&ok);
            self.sink.lists.give_back(ok);
            acks
        };
        Ok(Inserted {
            landed,
            dead,
            batch_ids,
            total,
        })
    }

    /// The second half of committing a batch: dead-letters what ClickHouse refused,
    /// then acks what it confirmed, then drops the batch's ledger records
    /// (exactly-once), retrying Redis errors until the hard stop.
    pub(crate) async fn acknowledge(&self, done: Inserted) -> Result<(), Abandoned> {
        if done.landed.is_empty() && done.dead.is_empty() && done.batch_ids.is_empty() {
            // A sharded batch acked its parts itself: its span says so.
            return Ok(());
        }
        self.finish(&done.landed, &done.dead)
            .await
            .map_err(|_| Abandoned(done.total))?;
        self.forget(&done.batch_ids).await;
        Ok(())
    }

    /// A batch converted for columns the table no longer has (they were
    /// re-read since) is converted again, its conversion failures too: a
    /// new column is filled, a dropped one no longer sent, and a row that
    /// does not convert any more is dead-lettered with the reason. A batch
    /// with rows that failed to convert has the columns re-read first (one
    /// `system.columns` query): they may fit columns changed since the
    /// last read, e.g. a type widened just before they came.
    async fn for_current_columns(&self, mut batch: SealedBatch) -> SealedBatch {
        if batch.dead.iter().any(|d| d.kind == "convert") {
            if let Err(e) = self.sink.refresh_schema().await {
                tracing::warn!(flow = %self.settler.flow, error = %e, "could not re-read the table's columns");
            }
        }
        match &batch.mapper {
            Some(m) if !self.sink.mapper.is_current(m) => {}
            _ => return batch,
        }
        let mapper = self.sink.mapper.current();
        let (retry, keep): (Vec<_>, Vec<_>) =
            batch.dead.into_iter().partition(|d| d.kind == "convert");
        let mut messages = batch.messages;
        messages.extend(retry.into_iter().map(|d| d.message));
        let rows = messages.len();
        let (block, ok, mut dead) = mapper.encode_checked(messages, batch.batch_id.as_deref());
        tracing::info!(flow = %self.settler.flow, rows, dead = dead.len(), "batch converted for the table's previous columns; converted again for the current ones");
        dead.extend(keep);
        batch.block = block;
        batch.messages = ok;
        batch.dead = dead;
        batch.mapper = Some(mapper);
        batch
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
        let batch = self.for_current_columns(batch).await;
        let parts = sharding.split(batch.messages);
        let gate = Mutex::new(AckGate::new(parts.iter().map(|(_, p)| p.as_slice())));
        let (landed, dead) = lock(&gate).release(&HashSet::new(), Vec::new(), batch.dead);
        self.finish(&Acks::of(&landed), &dead)
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
            self.finish(&Acks::of(&landed), &refused).await?;
            self.forget(&batch_ids).await;
            Ok::<(), Stopped>(())
        });
        let results = futures_util::future::join_all(parts).await;
        if results.iter().any(Result::is_err) {
            return Err(Abandoned(total));
        }
        Ok(())
    }

    /// Dead-letters refused messages and acks landed ones, retrying Redis
    /// errors until the hard stop.
    async fn finish(&self, landed: &Acks, dead: &[DeadLetter]) -> Result<(), Stopped> {
        self.settler.settle_batch(landed, dead).await
    }
}

impl Sealed for SealedBatch {
    fn messages(&self) -> &[Message] {
        &self.messages
    }

    fn dead(&self) -> &[DeadLetter] {
        &self.dead
    }
}

/// Inserts while the previous batch is acked ([`crate::flow::batcher`]).
impl Sink for Committer {
    type Sealed = SealedBatch;
    type Written = Inserted;

    async fn write(&self, batch: SealedBatch) -> Result<Inserted, Abandoned> {
        self.insert(batch).await
    }

    async fn settle(&self, inserted: Inserted) -> Result<(), Abandoned> {
        self.acknowledge(inserted).await
    }
}
