//! Exactly-once recovery: settles claimed entries that belong to a batch a
//! dead replica recorded in the ledger. Once the batch's lease has expired
//! (its inserter stopped renewing it), the recovering replica takes it,
//! fences and counts the batch in ClickHouse (`fenced::settle`), and then
//! only acks (all rows present), inserts the identical batch (same members,
//! same order, same batch id; none present), or completes it (part present:
//! the missing members when `metadata.id` names the id column, otherwise the
//! whole batch, logging the duplicates).
//!
//! Recovery tasks hold a batch each: at most [`MAX_TASKS`] run at once per
//! flow (`sluice_recovery_tasks`), a batch found beyond that is left for a
//! later claim pass, and the flow awaits them at shutdown until the
//! deadline ([`RecoveryTasks::join`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::OnSuccess;
use crate::obs::metrics::FlowMetrics;
use crate::redis::acks::Acks;
use crate::redis::{commands, Message, StreamError};
use crate::sink::clickhouse::exactly_once::ledger::BatchRecord;
use crate::sink::clickhouse::exactly_once::{Batch, ExactlyOnce, Outcome};
use crate::sink::clickhouse::Target;

pub(crate) struct Recovery {
    /// The shared exactly-once insert (ledger, lease, fenced inserts).
    pub eo: Arc<ExactlyOnce>,
    pub on_success: OnSuccess,
    pub tasks: RecoveryTasks,
}

/// Recovery tasks running at once per flow, at most.
pub(crate) const MAX_TASKS: usize = 8;

/// The flow's running recovery tasks: capped, and awaited at shutdown.
pub(crate) struct RecoveryTasks {
    slots: Arc<Semaphore>,
    set: std::sync::Mutex<JoinSet<()>>,
    metrics: FlowMetrics,
}

impl RecoveryTasks {
    pub(crate) fn new(max: usize, metrics: FlowMetrics) -> RecoveryTasks {
        RecoveryTasks {
            slots: Arc::new(Semaphore::new(max)),
            set: std::sync::Mutex::new(JoinSet::new()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one more task, unless all are taken.
    pub(crate) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Runs `task` holding `slot` until it ends.
    pub(crate) fn spawn<F>(&self, slot: OwnedSemaphorePermit, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (slots, metrics) = (self.slots.clone(), self.metrics.clone());
        let mut set = self.lock();
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            task.await;
            drop(slot);
            metrics.recovery_tasks(MAX_TASKS - slots.available_permits());
        });
        self.metrics
            .recovery_tasks(MAX_TASKS - self.slots.available_permits());
    }

    /// Waits for every task (they end by themselves at `deadline`, the
    /// shutdown deadline; those still running a moment later are aborted).
    pub(crate) async fn join(&self, deadline: &CancellationToken) {
        let mut set = std::mem::take(&mut *self.lock());
        let all = async { while set.join_next().await.is_some() {} };
        tokio::select! {
            _ = all => {}
            _ = async {
                deadline.cancelled().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            } => {}
        }
        set.abort_all();
    }
}

impl Recovery {
    /// Splits claimed entries into those of recorded batches (returned as
    /// the batches to recover) and the rest (returned for normal batching).
    /// Only records overlapping the entries' time span are read (see
    /// [`crate::sink::clickhouse::exactly_once::ledger::Ledger::records_for`]); an entry is in at most one.
    pub(crate) async fn split(
        &self,
        claimed: Vec<Message>,
    ) -> Result<(Vec<Message>, Vec<BatchRecord>), StreamError> {
        // First: a process's first sweep indexes records older versions left.
        self.eo.sweep_ledger().await;
        let open = self.eo.ledger.records_for(&claimed).await?;
        if open.is_empty() {
            return Ok((claimed, Vec::new()));
        }
        let mut owner: HashMap<(Arc<str>, Bytes), usize> = HashMap::new();
        for (i, record) in open.iter().enumerate() {
            for member in &record.members {
                if let Some(other) = owner.insert(member.clone(), i) {
                    // The scripts keep an entry in one record; a ledger
                    // written by an older version may not.
                    tracing::error!(flow = %self.eo.flow, batch = %record.id, other = %open[other].id, id = %String::from_utf8_lossy(&member.1), "entry in two open ledger records");
                }
            }
        }
        let mut rest = Vec::new();
        let mut touched = HashSet::new();
        for m in claimed {
            match owner.get(&(m.stream.clone(), m.id.clone())) {
                Some(&i) => {
                    touched.insert(i);
                }
                None => rest.push(m),
            }
        }
        let batches = open
            .into_iter()
            .enumerate()
            .filter(|(i, _)| touched.contains(i))
            .map(|(_, r)| r)
            .collect();
        Ok((rest, batches))
    }

    /// Takes the lease of a batch found among claimed entries for a new
    /// recovery task, returning its holder name; None while its inserter (or
    /// another recovery) still renews it. The caller then lets go of the
    /// entries; they are claimed again later.
    pub(crate) async fn take(&self, record: &BatchRecord) -> Result<Option<String>, StreamError> {
        let holder = self.eo.recoverer();
        let taken = self.eo.ledger.renew_lease(&record.id, &holder).await?;
        Ok(taken.then_some(holder))
    }

    /// Recovers one batch whose lease we hold, retrying until done or
    /// `stop`. Members ClickHouse refuses as data go to `fallback` for
    /// normal batching (and bisection).
    pub(crate) async fn run(
        &self,
        record: BatchRecord,
        holder: String,
        fallback: mpsc::Sender<Vec<Message>>,
        stop: CancellationToken,
    ) {
        let flow = &self.eo.flow;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        // The members as recorded now that we hold the lease: the list read
        // when the entries were claimed may have been rewritten since (a
        // part bisected off, entries claimed by another replica), or the
        // batch finished and dropped.
        let record = loop {
            match self.eo.ledger.members(&record.id).await {
                Ok(Some(members)) => break BatchRecord { members, ..record },
                Ok(None) => {
                    tracing::info!(%flow, batch = %record.id, "the batch was finished before we took it over");
                    let _ = self.eo.ledger.forget(&record.id, &holder).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(%flow, batch = %record.id, error = %e, "reading a recovered batch's record failed; retrying");
                    if !backoff.wait(&stop).await {
                        return;
                    }
                }
            }
        };
        let messages = loop {
            match self.fetch(&record.members).await {
                Ok(m) => break m,
                Err(e) => {
                    tracing::warn!(%flow, batch = %record.id, error = %e, "reading a recovered batch's members failed; retrying");
                    if !backoff.wait(&stop).await {
                        return;
                    }
                }
            }
        };
        let block = self.eo.sink.mapper.encode_all(&messages, Some(&record.id));
        let outcome = match self
            .eo
            .insert(
                Batch {
                    id: &record.id,
                    messages: &messages,
                    block,
                    target: self.target(&messages),
                },
                &holder,
                true,
                &stop,
            )
            .await
        {
            Ok(outcome) => outcome,
            Err(_stopped) => return,
        };
        match outcome {
            Outcome::Landed => {}
            Outcome::LeaseLost => {
                tracing::info!(%flow, batch = %record.id, "another replica took over the batch");
                return;
            }
            Outcome::Refused(error) => {
                // The data is refused: settle it the normal way, under new
                // batch ids. The record goes first, so that an entry is
                // never in two records; if another task took the batch
                // over meanwhile, it is theirs.
                tracing::warn!(%flow, batch = %record.id, %error, "recovered batch refused; batching its members again to isolate bad rows");
                loop {
                    match self.eo.ledger.forget(&record.id, &holder).await {
                        Ok(true) => {
                            let _ = fallback.send(messages).await;
                            return;
                        }
                        Ok(false) => return,
                        Err(e) => {
                            tracing::warn!(%flow, batch = %record.id, error = %e, "dropping a refused batch's record failed; retrying");
                            if !backoff.wait(&stop).await {
                                return;
                            }
                        }
                    }
                }
            }
        }
        backoff.reset();
        loop {
            let done = match self.ack_all(&record.members).await {
                Ok(()) => self.eo.ledger.forget(&record.id, &holder).await,
                Err(e) => Err(e),
            };
            match done {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(%flow, batch = %record.id, error = %e, "acking a recovered batch failed; retrying");
                    if !backoff.wait(&stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// Where a recovered batch goes: with `shard_by`, each batch is one
    /// shard's part, so its members' shard.
    fn target(&self, messages: &[Message]) -> Target {
        let Some(sharding) = &self.eo.sink.sharding else {
            return Target::Any;
        };
        let mut shards = messages.iter().map(|m| sharding.shard_of(m));
        let first = shards.next().unwrap_or(0);
        if shards.all(|s| s == first) {
            Target::Shard(first)
        } else {
            tracing::warn!(flow = %self.eo.flow, "a recovered batch spans several shards; inserting through the endpoints as configured");
            Target::Any
        }
    }

    /// The members' current content; members deleted from the stream are
    /// counted as lost.
    async fn fetch(&self, members: &[(Arc<str>, Bytes)]) -> Result<Vec<Message>, StreamError> {
        let mut out = Vec::with_capacity(members.len());
        for (stream, id) in members {
            match commands::range(&self.eo.redis, stream, id, id, 1)
                .await?
                .into_iter()
                .next()
            {
                Some(mut m) => {
                    m.deliveries = 2;
                    out.push(m);
                }
                None => {
                    tracing::error!(flow = %self.eo.flow, %stream, id = %String::from_utf8_lossy(id), "member of a recovered batch was deleted from the stream; lost")
                }
            }
        }
        Ok(out)
    }

    async fn ack_all(&self, members: &[(Arc<str>, Bytes)]) -> Result<(), StreamError> {
        let mut acks = Acks::default();
        for (stream, id) in members {
            acks.push(stream, id);
        }
        let delete = self.on_success == OnSuccess::AckDel;
        for ids in acks.streams() {
            self.eo.pending.ack(&self.eo.group, ids, delete).await?;
        }
        Ok(())
    }
}
