//! The claim pass of a flow: takes over pending entries idle past
//! `claim.min_idle` (a dead replica's work, orphans of lost replies),
//! hands claimed batches of the exactly-once ledger to recovery tasks,
//! acks ids deleted meanwhile, and prunes consumers of departed replicas.
//! Keep-alive of what we hold is a task of its own
//! ([`crate::flow::keep_alive`]).
//!
//! # Only what the pipeline can take now
//! Every claim starts with a slot of the bounded chunk channel (waited for
//! at most `claim.every`, in turn with the readers), and the entries it
//! claims are handed on with that slot, never by waiting on a full
//! channel. A claimed entry is always sent on, dead-lettered (oversized;
//! over `max_deliveries` in the batcher), handed to a recovery task, or
//! released from [`crate::redis::held::Held`] — so it goes idle and is
//! claimed again — when a step after the claim fails.
//!
//! # Dead replicas first, in bulk
//! XAUTOCLAIM scans the group's pending list from a cursor, up to 10 ×
//! COUNT entries per call: behind a long list of live replicas' entries a
//! dead one's wait for many passes. So each pass first asks XINFO
//! CONSUMERS for the other consumers holding entries and reads the idle
//! time of each one's oldest entry (a live replica keeps its entries
//! fresh); from a consumer whose oldest entry is idle past `min_idle` it
//! takes its idle entries straight from its own pending list (XPENDING …
//! IDLE, then XCLAIM), as many per call as a read. The XAUTOCLAIM scan
//! then covers the rest (orphans under live names, released entries).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::flow::keep_alive::exclusive;
use crate::flow::Flow;
use crate::redis::{commands, group, Message, StreamError};
use crate::sink::clickhouse::exactly_once::ledger::BatchRecord;
use crate::time::Ticker;

/// XAUTOCLAIM COUNT: a call inspects up to ten times this many entries.
const SCAN_PAGE: usize = 100;
/// Bound on XAUTOCLAIM calls in one pass; the next tick goes on.
const MAX_SCAN_PAGES: usize = 200;
/// Most entries taken from a dead consumer per XCLAIM.
const MAX_BULK: usize = 10_000;

type Slot<'a> = mpsc::Permit<'a, Vec<Message>>;

/// (stream, id) of each message: what [`crate::redis::held::Held::release`] takes.
fn members(messages: &[Message]) -> Vec<(Arc<str>, Bytes)> {
    messages
        .iter()
        .map(|m| (m.stream.clone(), m.id.clone()))
        .collect()
}

impl Flow {
    /// Every `claim.every` until `shutdown`: a claim pass over each stream,
    /// and now and then the pruning of departed replicas' consumers.
    /// Recovery tasks run until done or `hard_stop`.
    pub(crate) async fn claim_loop(
        self: Arc<Self>,
        chunks: mpsc::Sender<Vec<Message>>,
        shutdown: CancellationToken,
        hard_stop: CancellationToken,
    ) {
        let mut tick = Ticker::every(self.cfg.claim.every);
        let mut last_prune = tokio::time::Instant::now();
        // Where each stream's XAUTOCLAIM scan of the pending list goes on.
        let mut cursors = vec![Bytes::from_static(b"0-0"); self.streams.len()];
        while tick.tick_until(&shutdown).await {
            for (stream, cursor) in self.streams.iter().zip(cursors.iter_mut()) {
                let claim = Claim {
                    stream,
                    chunks: &chunks,
                    shutdown: &shutdown,
                    hard_stop: &hard_stop,
                };
                if let Err(e) = self.claim_from_dead(&claim).await {
                    tracing::warn!(flow = %self.cfg.name, %stream, error = %e, "claiming a dead consumer's entries failed");
                }
                if let Err(e) = self.scan(&claim, cursor).await {
                    tracing::warn!(flow = %self.cfg.name, %stream, error = %e, "claim pass failed");
                }
            }
            if last_prune.elapsed() >= self.prune_idle.min(Duration::from_secs(60)) {
                last_prune = tokio::time::Instant::now();
                self.prune().await;
            }
        }
    }

    /// A slot for one chunk, if the pipeline frees one within `claim.every`;
    /// none while paused (a stream sink's target is full) or stopping.
    async fn room<'a>(&self, c: &Claim<'a>) -> Option<Slot<'a>> {
        if self.pause.is_paused() || c.shutdown.is_cancelled() {
            return None;
        }
        tokio::select! {
            slot = tokio::time::timeout(self.cfg.claim.every, c.chunks.reserve()) => slot.ok()?.ok(),
            _ = c.shutdown.cancelled() => None,
        }
    }

    /// Takes the idle entries of consumers whose oldest entry is idle past
    /// `min_idle`, straight from their own pending lists.
    async fn claim_from_dead(&self, c: &Claim<'_>) -> Result<(), StreamError> {
        let (client, group) = (&self.command_client, &self.cfg.group);
        let min_idle = self.cfg.claim.min_idle;
        let bulk = self.cfg.read_count.clamp(SCAN_PAGE, MAX_BULK);
        for consumer in group::consumers(client, c.stream, group).await? {
            if consumer.name == self.consumer || consumer.pending == 0 {
                continue;
            }
            let name = consumer.name.as_str();
            let oldest =
                commands::pending(client, c.stream, group, b"-", b"+", 1, Some(name)).await?;
            if oldest
                .first()
                .is_none_or(|p| p.idle_ms < min_idle.as_millis() as u64)
            {
                continue;
            }
            let mut start = Bytes::from_static(b"-");
            let mut told = false;
            loop {
                let Some(slot) = self.room(c).await else {
                    return Ok(());
                };
                let due =
                    commands::pending_idle(client, c.stream, group, name, min_idle, &start, bulk)
                        .await?;
                let Some(last) = due.last() else { break };
                start = exclusive(&last.id);
                let ids: Vec<Bytes> = due.iter().map(|p| p.id.clone()).collect();
                // The claim is one more delivery.
                let counts: HashMap<&[u8], u64> = due
                    .iter()
                    .map(|p| (p.id.as_ref(), p.deliveries + 1))
                    .collect();
                let mut claimed =
                    commands::claim(client, c.stream, group, &self.consumer, min_idle, &ids)
                        .await?;
                for m in &mut claimed {
                    m.deliveries = counts.get(m.id.as_ref()).copied().unwrap_or(2);
                }
                if !std::mem::replace(&mut told, true) {
                    tracing::info!(flow = %self.cfg.name, stream = %c.stream, consumer = name, pending = consumer.pending, "taking over the entries of a consumer idle past min_idle");
                }
                if claimed.len() < ids.len() {
                    self.count_deleted(c.stream, &ids, &claimed).await?;
                }
                self.hand_over(c, claimed, true, slot).await?;
                if due.len() < bulk {
                    break;
                }
            }
        }
        Ok(())
    }

    /// XCLAIM skips (and, on Redis 7, unlists) entries deleted from the
    /// stream; other missing ids went to another replica meanwhile.
    async fn count_deleted(
        &self,
        stream: &Arc<str>,
        asked: &[Bytes],
        claimed: &[Message],
    ) -> Result<(), StreamError> {
        let got: std::collections::HashSet<&[u8]> = claimed.iter().map(|m| m.id.as_ref()).collect();
        let mut deleted = Vec::new();
        for id in asked.iter().filter(|id| !got.contains(id.as_ref())) {
            if commands::range(&self.command_client, stream, id, id, 1)
                .await?
                .is_empty()
            {
                deleted.push(id.clone());
            }
        }
        self.ack_lost(stream, &deleted).await
    }

    /// Counts and acks pending entries deleted from the stream before delivery.
    async fn ack_lost(&self, stream: &Arc<str>, deleted: &[Bytes]) -> Result<(), StreamError> {
        if deleted.is_empty() {
            return Ok(());
        }
        self.metrics.lost(stream, deleted.len());
        tracing::error!(flow = %self.cfg.name, %stream, count = deleted.len(), ids = ?deleted.iter().take(20).map(|i| String::from_utf8_lossy(i).into_owned()).collect::<Vec<_>>(), "pending entries were deleted from the stream before delivery; acking them as lost");
        commands::ack(
            &self.command_client,
            stream,
            &self.cfg.group,
            deleted,
            false,
        )
        .await
    }

    /// The XAUTOCLAIM scan of `stream`'s pending list, from `cursor` on.
    ///
    /// Redis does nothing else during a call, and one inspects up to 10 ×
    /// COUNT entries (a page of 1000 took ≈20 ms on a long list): pages are
    /// small, a pass stops at the first page that finds nothing idle, and
    /// the next tick goes on from there.
    async fn scan(&self, c: &Claim<'_>, cursor: &mut Bytes) -> Result<(), StreamError> {
        for _ in 0..MAX_SCAN_PAGES {
            let Some(slot) = self.room(c).await else {
                return Ok(());
            };
            let page = commands::auto_claim(
                &self.command_client,
                c.stream,
                &self.cfg.group,
                &self.consumer,
                self.cfg.claim.min_idle,
                cursor,
                SCAN_PAGE,
            )
            .await?;
            let found = !page.claimed.is_empty() || !page.deleted.is_empty();
            self.ack_lost(c.stream, &page.deleted).await?;
            *cursor = page.cursor;
            self.hand_over(c, page.claimed, false, slot).await?;
            if cursor.as_ref() == b"0-0" || !found {
                break;
            }
        }
        Ok(())
    }

    /// Records claimed entries as held and hands them on with `slot`: into
    /// the pipeline, to recovery tasks, or dead-lettered. If a step fails,
    /// the entries not handed on are released (they go idle and are claimed
    /// again) and the error returned. `counted`: deliveries are set.
    async fn hand_over(
        &self,
        c: &Claim<'_>,
        claimed: Vec<Message>,
        counted: bool,
        slot: Slot<'_>,
    ) -> Result<(), StreamError> {
        if claimed.is_empty() {
            return Ok(());
        }
        self.metrics.claimed(c.stream, claimed.len());
        self.held.insert_claimed(&claimed);
        tracing::info!(flow = %self.cfg.name, stream = %c.stream, count = claimed.len(), "claimed idle pending entries");
        match self.prepare(c, claimed, counted).await {
            Ok(rest) => {
                if !rest.is_empty() {
                    slot.send(rest);
                }
                Ok(())
            }
            Err((e, left)) => {
                tracing::warn!(flow = %self.cfg.name, stream = %c.stream, count = left.len(), error = %e, "claimed entries released after a failed step; they are claimed again once idle");
                self.held.release(c.stream, &left);
                Err(e)
            }
        }
    }

    /// Dead-letters oversized entries, reads delivery counts (unless
    /// `counted`), and starts recovery tasks for entries of recorded
    /// exactly-once batches. Returns what goes into the pipeline, or the
    /// error and the entries not handed on.
    async fn prepare(
        &self,
        c: &Claim<'_>,
        mut claimed: Vec<Message>,
        counted: bool,
    ) -> Result<Vec<Message>, (StreamError, Vec<(Arc<str>, Bytes)>)> {
        self.dead_letter_oversized(&mut claimed, c.shutdown).await;
        if !counted {
            if let Err(e) = self.fill_delivery_counts(c.stream, &mut claimed).await {
                return Err((e, members(&claimed)));
            }
        }
        let Some(recovery) = &self.recovery else {
            return Ok(claimed);
        };
        let all = members(&claimed);
        let (rest, batches) = recovery.split(claimed).await.map_err(|e| (e, all))?;
        let mut batches = batches.into_iter();
        while let Some(record) = batches.next() {
            if let Err((e, mut left)) = self.recover(c, record).await {
                left.extend(members(&rest));
                left.extend(batches.flat_map(|r| r.members));
                return Err((e, left));
            }
        }
        Ok(rest)
    }

    /// Starts a recovery task for a claimed batch of the ledger, or lets
    /// go of its entries: while its lease is held (its inserter alive, or
    /// another replica recovering it), and while recovery tasks are at
    /// their cap.
    async fn recover(
        &self,
        c: &Claim<'_>,
        record: BatchRecord,
    ) -> Result<(), (StreamError, Vec<(Arc<str>, Bytes)>)> {
        let recovery = self.recovery.as_ref().expect("called with recovery");
        let Some(slot) = recovery.tasks.try_slot() else {
            tracing::info!(flow = %self.cfg.name, batch = %record.id, "recovery tasks at their cap; leaving the batch's entries for a later pass");
            self.held.release(c.stream, &record.members);
            return Ok(());
        };
        let holder = match recovery.take(&record).await {
            Ok(Some(holder)) => holder,
            Ok(None) => {
                tracing::info!(flow = %self.cfg.name, batch = %record.id, "claimed entries of a batch whose lease is held; leaving them");
                self.held.release(c.stream, &record.members);
                return Ok(());
            }
            Err(e) => return Err((e, record.members)),
        };
        tracing::info!(flow = %self.cfg.name, batch = %record.id, members = record.members.len(), "recovering a dead replica's batch");
        let task = recovery.clone();
        let (chunks, stop) = (c.chunks.clone(), c.hard_stop.clone());
        recovery.tasks.spawn(
            slot,
            async move { task.run(record, holder, chunks, stop).await },
        );
        Ok(())
    }

    /// XAUTOCLAIM does not report delivery counts; read them from XPENDING.
    async fn fill_delivery_counts(
        &self,
        stream: &Arc<str>,
        claimed: &mut [Message],
    ) -> Result<(), StreamError> {
        let (Some(first), Some(last)) = (claimed.first(), claimed.last()) else {
            return Ok(());
        };
        let pending = commands::pending(
            &self.command_client,
            stream,
            &self.cfg.group,
            &first.id,
            &last.id,
            claimed.len() * 2 + 100,
            Some(&self.consumer),
        )
        .await?;
        let counts: HashMap<&[u8], u64> = pending
            .iter()
            .map(|p| (p.id.as_ref(), p.deliveries))
            .collect();
        for m in claimed.iter_mut() {
            // Unknown (acked meanwhile) counts as one more than a first delivery.
            m.deliveries = counts.get(m.id.as_ref()).copied().unwrap_or(2);
        }
        Ok(())
    }

    /// Deletes consumers of departed replicas (idle past `prune_idle`,
    /// nothing pending; checked and deleted atomically).
    async fn prune(&self) {
        for stream in &self.streams {
            match group::prune_consumers(
                &self.command_client,
                stream,
                &self.cfg.group,
                self.prune_idle,
                &self.consumer,
            )
            .await
            {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(flow = %self.cfg.name, %stream, ?removed, "pruned idle consumers")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(flow = %self.cfg.name, %stream, error = %e, "pruning consumers failed")
                }
            }
        }
    }
}

/// One stream's claim pass: where claimed entries go, and when to stop.
struct Claim<'a> {
    stream: &'a Arc<str>,
    chunks: &'a mpsc::Sender<Vec<Message>>,
    shutdown: &'a CancellationToken,
    /// Ends recovery tasks (the shutdown deadline).
    hard_stop: &'a CancellationToken,
}
