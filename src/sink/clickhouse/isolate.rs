//! Inserting one batch while isolating what ClickHouse refuses: the insert
//! loop that [`crate::sink::clickhouse::escalation`] steers, in both delivery modes.
//!
//! Parts of the batch wait on a stack (the whole batch first; halves
//! pushed right then left, so rows go roughly in order). Each part is
//! inserted — outages retried inside the attempt, with failover — and a
//! refusal is judged by [`Escalation`]: retry the part, split it,
//! dead-letter a single poison row, or hold a single suspect row. When the
//! error turns out to be table-level, the rows left are retried together
//! with a slow backoff and the flow is reported stuck ([`crate::sink::clickhouse::stuck`])
//! until they land, or until another round of bisecting finds rows that do.
//!
//! Before judging a refusal that may mean the table's columns changed, the
//! columns are re-read; a part converted for the old ones is converted
//! again and sent at once, without counting as a failure.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::backoff::Backoff;
use crate::clickhouse::rows::new_batch_id;
use crate::flow::settle::Stopped;
use crate::redis::dead_letter::DeadLetter;
use crate::redis::Message;
use crate::sink::clickhouse::classify::may_mean_schema_changed;
use crate::sink::clickhouse::commit::Committer;
use crate::sink::clickhouse::escalation::{AfterSuspect, Escalation, Refusal, Verdict, WhileStuck};
use crate::sink::clickhouse::exactly_once::{Batch, Outcome};
use crate::sink::clickhouse::mapping::Refresh;
use crate::sink::clickhouse::stuck::{self, StuckReport};
use crate::sink::clickhouse::Target;

/// A part of the batch waiting for its insert.
struct Part {
    messages: Vec<Message>,
    /// The part's block, encoded with the mapping current when it was
    /// encoded; None until needed.
    block: Option<Bytes>,
    /// Exactly-once: the batch id its rows carry, and whether the ledger
    /// holds it yet.
    id: Option<String>,
    recorded: bool,
    /// Exactly-once: the batch this part was split from; recording the part
    /// takes its rows out of that record in the same step, so an entry is in
    /// one open record at any time, also after a crash mid-bisect.
    parent: Option<String>,
    /// Refusals in a row with `code`.
    same: u32,
    code: Option<u32>,
}

impl Part {
    fn new(messages: Vec<Message>, block: Option<Bytes>, id: Option<String>) -> Part {
        Part {
            messages,
            block,
            id,
            recorded: false,
            parent: None,
            same: 0,
            code: None,
        }
    }
}

/// How one attempt at a part ended.
enum Attempt {
    Landed,
    Refused(Refusal),
    /// Exactly-once: the rows are no longer ours to insert (another replica
    /// claimed them, or took over the batch).
    Gone,
}

/// Whether the loop is bisecting or retrying the rows left together.
#[derive(PartialEq)]
enum Mode {
    Bisect,
    Stuck,
}

/// What the loop has found so far.
struct Progress {
    landed: Vec<Message>,
    refused: Vec<DeadLetter>,
    /// Single rows refused while nothing landed, with their refusal.
    suspects: Vec<(Message, Refusal)>,
    todo: Vec<Part>,
}

impl Progress {
    /// Rows neither landed nor dead-lettered.
    fn held(&self) -> usize {
        self.suspects.len() + self.todo.iter().map(|p| p.messages.len()).sum::<usize>()
    }

    /// Every row held, suspects first, then the untried parts in the order
    /// they would be tried.
    fn rows_left(&self) -> Vec<Message> {
        let mut out: Vec<Message> = self.suspects.iter().map(|(m, _)| m.clone()).collect();
        for part in self.todo.iter().rev() {
            out.extend(part.messages.iter().cloned());
        }
        out
    }

    /// Takes the rows dead-lettered since `p.refused[since..]` out of the
    /// suspects and the untried parts.
    fn forget(&mut self, since: usize) {
        if self.refused.len() == since {
            return;
        }
        let gone: std::collections::HashSet<(&str, &[u8])> = self.refused[since..]
            .iter()
            .map(|d| (d.message.stream.as_ref(), d.message.id.as_ref()))
            .collect();
        let keep = |m: &Message| !gone.contains(&(m.stream.as_ref(), m.id.as_ref()));
        self.suspects.retain(|(m, _)| keep(m));
        for part in &mut self.todo {
            let before = part.messages.len();
            part.messages.retain(keep);
            if part.messages.len() != before {
                part.block = None;
                part.recorded = false;
            }
        }
    }

    fn poison(&mut self, message: Message, refusal: &Refusal) {
        self.refused.push(DeadLetter {
            message,
            reason: format!("rejected by ClickHouse: {}", refusal.message),
            kind: "rejected",
        });
    }
}

impl Committer {
    /// Inserts `messages` (encoded as `block`, with the current mapping);
    /// returns those that landed and the poison rows refused, with the
    /// server's reason. With batch ids (exactly-once), every insert — the
    /// whole batch, a part while bisecting, the rows left while stuck — is
    /// recorded under its own id first and goes through
    /// [`crate::sink::clickhouse::exactly_once::ExactlyOnce::insert`]; the ids used are
    /// appended to `batch_ids`. Err: the hard stop came first.
    pub(super) async fn insert_isolating(
        &self,
        target: Target,
        messages: Vec<Message>,
        block: Bytes,
        batch_id: Option<String>,
        batch_ids: &mut Vec<String>,
    ) -> Result<(Vec<Message>, Vec<DeadLetter>), Stopped> {
        let with_ids = batch_id.is_some();
        let fresh_id = || with_ids.then(new_batch_id);
        let mut esc = Escalation::new(self.sink.bisect_after);
        let mut p = Progress {
            landed: Vec::new(),
            refused: Vec::new(),
            suspects: Vec::new(),
            todo: vec![Part::new(messages, Some(block), batch_id)],
        };
        let mut mode = Mode::Bisect;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut stuck_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let result = loop {
            if mode == Mode::Stuck {
                match self
                    .retry_rows_left(target, &mut esc, &mut p, batch_ids)
                    .await
                {
                    Err(Stopped) => break Err(Stopped),
                    Ok(None) => break Ok(()),
                    Ok(Some(next)) => mode = next,
                }
                if mode == Mode::Stuck && !stuck_backoff.wait(&self.settler.stop).await {
                    break Err(Stopped);
                }
                continue;
            }

            let Some(mut part) = p.todo.pop() else {
                if p.suspects.is_empty() {
                    break Ok(());
                }
                // Every row tried alone was refused, and nothing landed.
                let refusals: Vec<&Refusal> = p.suspects.iter().map(|(_, r)| r).collect();
                if esc.all_suspects(&refusals) == AfterSuspect::Poison {
                    for (m, r) in std::mem::take(&mut p.suspects) {
                        p.poison(m, &r);
                    }
                    break Ok(());
                }
                let r = p.suspects.last().expect("suspects").1.clone();
                self.table_level(&mut esc, &r, p.held()).await;
                mode = Mode::Stuck;
                continue;
            };
            if part.messages.is_empty() {
                continue;
            }
            let attempt = match self.attempt(target, &mut part, &mut p, batch_ids).await {
                Ok(a) => a,
                Err(Stopped) => break Err(Stopped),
            };
            let refusal = match attempt {
                Attempt::Landed => {
                    backoff.reset();
                    if p.landed.is_empty() {
                        // The usual case, the whole batch at once: its list
                        // is moved, not copied (a second list of 50,000
                        // messages was the worker's largest peak).
                        p.landed = part.messages;
                    } else {
                        p.landed.extend(part.messages);
                    }
                    if esc.landed() {
                        // The table takes rows: each suspect is tried alone
                        // once more, and is poison if refused again.
                        for (m, _) in std::mem::take(&mut p.suspects).into_iter().rev() {
                            p.todo.push(Part::new(vec![m], None, fresh_id()));
                        }
                    }
                    self.unstick(&mut esc).await;
                    continue;
                }
                Attempt::Gone => continue,
                Attempt::Refused(r) => r,
            };
            if may_mean_schema_changed(refusal.code)
                && self.reencode_if_changed(&mut part, &mut p).await
            {
                p.todo.push(part);
                continue;
            }
            let same = if part.code == Some(refusal.code) {
                part.same + 1
            } else {
                1
            };
            let verdict = esc.refused(part.messages.len(), same, &refusal);
            if !matches!(verdict, Verdict::RetryLater | Verdict::Split) {
                // Its row goes on under another id, or to the dead letters.
                self.drop_record(&part, batch_ids).await;
            }
            match verdict {
                Verdict::RetryLater => {
                    self.settler.metrics.insert_retried(part.messages.len());
                    tracing::warn!(flow = %self.settler.flow, table = %self.sink.table_name(), rows = part.messages.len(), refused = same, bisect_after = esc.bisect_after(), error = %refusal.message, "ClickHouse refused the insert; will retry, and bisect if it keeps failing the same way (nothing acked)");
                    part.same = same;
                    part.code = Some(refusal.code);
                    p.todo.push(part);
                    if !backoff.wait(&self.settler.stop).await {
                        break Err(Stopped);
                    }
                }
                Verdict::Split => {
                    self.settler.metrics.insert_refused();
                    tracing::warn!(flow = %self.settler.flow, rows = part.messages.len(), error = %refusal.message, "ClickHouse refused the batch; bisecting to isolate bad rows");
                    // The halves' records take their rows out of this one's.
                    let parent = part.recorded.then(|| part.id.clone()).flatten();
                    let mut left = part.messages;
                    let right = left.split_off(left.len() / 2);
                    // Pop order: left half first, to keep rows roughly in order.
                    for half in [right, left] {
                        let mut child = Part::new(half, None, fresh_id());
                        child.parent = parent.clone();
                        p.todo.push(child);
                    }
                }
                Verdict::Poison => {
                    self.settler.metrics.insert_refused();
                    let message = part.messages.pop().expect("one message");
                    p.poison(message, &refusal);
                }
                Verdict::Suspect => {
                    self.settler.metrics.insert_refused();
                    let message = part.messages.pop().expect("one message");
                    p.suspects.push((message, refusal.clone()));
                    if esc.suspect(&refusal) == AfterSuspect::TableLevel {
                        self.table_level(&mut esc, &refusal, p.held()).await;
                        mode = Mode::Stuck;
                    }
                }
            }
        };
        if result.is_err() && esc.stuck().is_some() {
            // Shutting down: the rows stay pending for another replica.
            self.unstick(&mut esc).await;
        }
        result.map(|()| (p.landed, p.refused))
    }

    /// While stuck: one insert of every row left. Ok(None): done (they
    /// landed, or are no longer ours); Ok(Some(mode)): go on in that mode.
    async fn retry_rows_left(
        &self,
        target: Target,
        esc: &mut Escalation,
        p: &mut Progress,
        batch_ids: &mut Vec<String>,
    ) -> Result<Option<Mode>, Stopped> {
        let with_ids = self.exactly_once.is_some();
        // The rows go on under one new id: records of parts refused before
        // (settled: nothing of them landed) are dropped first, so no entry
        // is in two records.
        for part in p.todo.iter_mut().filter(|part| part.recorded) {
            self.drop_record(part, batch_ids).await;
            part.recorded = false;
        }
        let mut whole = Part::new(p.rows_left(), None, with_ids.then(new_batch_id));
        let dead_before = p.refused.len();
        let attempt = self.attempt(target, &mut whole, p, batch_ids).await?;
        // Rows the current columns no longer take were dead-lettered.
        p.forget(dead_before);
        let refusal = match attempt {
            Attempt::Landed | Attempt::Gone => {
                if matches!(attempt, Attempt::Landed) {
                    p.landed.extend(whole.messages);
                }
                p.suspects.clear();
                p.todo.clear();
                self.unstick(esc).await;
                return Ok(None);
            }
            Attempt::Refused(r) => r,
        };
        self.drop_record(&whole, batch_ids).await;
        if may_mean_schema_changed(refusal.code) {
            // The next try encodes the rows for whatever the columns are then.
            let _ = self.sink.refresh_schema().await;
        }
        let next = match esc.refused_while_stuck(&refusal, !p.todo.is_empty()) {
            WhileStuck::Wait => Mode::Stuck,
            WhileStuck::Resume => {
                tracing::warn!(flow = %self.settler.flow, rows = p.held(), "still refused the same way; bisecting further before calling it table-level again");
                return Ok(Some(Mode::Bisect));
            }
            WhileStuck::Restart => {
                tracing::warn!(flow = %self.settler.flow, rows = whole.messages.len(), error = %refusal.message, "the rows left are refused another way now; judging them anew");
                whole.same = 1;
                whole.code = Some(refusal.code);
                whole.recorded = false;
                p.suspects.clear();
                p.todo = vec![whole];
                Mode::Bisect
            }
        };
        self.report_stuck(esc, p.held()).await;
        Ok(Some(next))
    }

    /// Exactly-once: drops the ledger record of a refused part whose rows
    /// go on under other ids (settled by the refused insert).
    async fn drop_record(&self, part: &Part, batch_ids: &mut Vec<String>) {
        let (Some(eo), Some(id), true) = (&self.exactly_once, &part.id, part.recorded) else {
            return;
        };
        match eo.ledger.forget(id, &eo.committer()).await {
            Ok(_) => batch_ids.retain(|b| b != id),
            Err(e) => {
                tracing::warn!(flow = %self.settler.flow, batch = %id, error = %e, "could not drop the ledger record of a refused part")
            }
        }
    }

    /// One insert of `part`, retrying outages until it lands, is refused,
    /// or is no longer ours. Encodes it first if needed (rows that no
    /// longer convert go to `p.refused`).
    async fn attempt(
        &self,
        target: Target,
        part: &mut Part,
        p: &mut Progress,
        batch_ids: &mut Vec<String>,
    ) -> Result<Attempt, Stopped> {
        if part.block.is_none() {
            self.encode(part, p);
        }
        let Some(eo) = &self.exactly_once else {
            let block = part.block.clone().unwrap_or_default();
            return self.insert_plain(target, block, part.messages.len()).await;
        };
        if part.id.is_none() {
            // Exactly-once parts carry an id from the batcher or the split.
            part.id = Some(new_batch_id());
            self.encode(part, p);
        }
        let id = part.id.clone().unwrap_or_default();
        if !part.recorded {
            let before = part.messages.len();
            part.messages = eo
                .record_owned(
                    &id,
                    part.parent.as_deref(),
                    std::mem::take(&mut part.messages),
                    &self.settler.stop,
                )
                .await
                .map_err(|_| Stopped)?;
            part.recorded = true;
            batch_ids.push(id.clone());
            if part.messages.is_empty() {
                return Ok(Attempt::Gone);
            }
            if part.messages.len() != before {
                self.encode(part, p);
            }
        }
        let outcome = eo
            .insert(
                Batch {
                    id: &id,
                    messages: &part.messages,
                    block: part.block.clone().unwrap_or_default(),
                    target,
                },
                &eo.committer(),
                // Tried before under this id: count what landed first.
                part.same > 0,
                &self.settler.stop,
            )
            .await
            .map_err(|_| Stopped)?;
        Ok(match outcome {
            Outcome::Landed => Attempt::Landed,
            Outcome::Refused(error) => Attempt::Refused(Refusal::from_text(&error)),
            Outcome::LeaseLost => {
                // Our lease lapsed (Redis was unreachable for long) and a
                // replica that claimed the entries recovers the batch:
                // nothing of ours to ack.
                tracing::warn!(flow = %self.settler.flow, batch = %id, rows = part.messages.len(), "another replica took over the batch");
                Attempt::Gone
            }
        })
    }

    /// Encodes `part` with the current mapping; rows that do not convert
    /// (the columns changed under them) are dead-lettered with the reason.
    fn encode(&self, part: &mut Part, p: &mut Progress) {
        let mapper = self.sink.mapper.current();
        let (block, kept, dead) =
            mapper.encode_checked(std::mem::take(&mut part.messages), part.id.as_deref());
        if !dead.is_empty() && part.recorded {
            // Exactly-once: the ledger must list the members sent.
            part.recorded = false;
        }
        part.messages = kept;
        part.block = Some(block);
        p.refused.extend(dead);
    }

    /// After a refusal that may mean the table's columns changed: re-reads
    /// them and, when the part's block is not what the current columns
    /// make of its rows, encodes it again. True: send it again at once.
    async fn reencode_if_changed(&self, part: &mut Part, p: &mut Progress) -> bool {
        match self.sink.refresh_schema().await {
            Ok(Refresh::Changed(_) | Refresh::Unchanged) => {}
            Ok(Refresh::Unusable(_)) => return false,
            Err(e) => {
                tracing::warn!(flow = %self.settler.flow, error = %e, "could not re-read the table's columns");
                return false;
            }
        }
        let sent = part.block.take();
        let rows = part.messages.len();
        self.encode(part, p);
        let changed = part.block != sent || part.messages.len() != rows;
        if changed {
            tracing::info!(flow = %self.settler.flow, rows = part.messages.len(), "rows converted again for the table's current columns");
        }
        changed
    }

    /// One plain (at-least-once) insert, retried through outages.
    async fn insert_plain(
        &self,
        target: Target,
        block: Bytes,
        rows: usize,
    ) -> Result<Attempt, Stopped> {
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
            let error = match result {
                Ok(()) => {
                    self.settler.metrics.inserted(rows, size, started.elapsed());
                    return Ok(Attempt::Landed);
                }
                Err(error) => error,
            };
            if let Some(refusal) = Refusal::of(&error) {
                return Ok(Attempt::Refused(refusal));
            }
            self.settler.metrics.insert_retried(rows);
            let shard = match target {
                Target::Shard(s) => Some(self.sink.endpoints().get(s).label.as_str()),
                Target::Any => None,
            };
            tracing::warn!(flow = %self.settler.flow, table = %self.sink.table_name(), shard, attempt = backoff.attempts() + 1, %error, "insert failed; will retry (nothing acked)");
            if !backoff.wait(&self.settler.stop).await {
                return Err(Stopped);
            }
        }
    }

    /// Bisecting stopped: the error is the table's.
    async fn table_level(&self, esc: &mut Escalation, refusal: &Refusal, held: usize) {
        if esc.table_level(refusal, SystemTime::now()) {
            tracing::error!(flow = %self.settler.flow, table = %self.sink.table_name(), rows = held, error = %refusal.message, "ClickHouse refuses every row tried the same way: a table-level error. Keeping the batch and retrying; nothing is dead-lettered");
        }
        self.report_stuck(esc, held).await;
    }

    /// The gauge and the fleet's record (`sluice status`) of a stuck flow.
    async fn report_stuck(&self, esc: &Escalation, held: usize) {
        let Some(s) = esc.stuck() else { return };
        self.settler.metrics.stuck_since(Some(s.since));
        let now = stuck::unix_ms(SystemTime::now());
        let report = StuckReport {
            consumer: self.consumer.clone(),
            table: self.sink.table_name(),
            since_ms: stuck::unix_ms(s.since),
            error: s.refusal.message.clone(),
            rows: held,
            expires_ms: now + stuck::RECORD_TTL.as_millis() as u64,
        };
        if let Err(e) = stuck::publish(&self.settler.redis, &self.settler.flow, &report).await {
            tracing::warn!(flow = %self.settler.flow, error = %e, "could not record the stuck flow in Redis");
        }
    }

    /// The flow is no longer stuck (if it was).
    async fn unstick(&self, esc: &mut Escalation) {
        let Some(s) = esc.unstick() else { return };
        let secs = s.since.elapsed().unwrap_or_default().as_secs();
        tracing::info!(flow = %self.settler.flow, stuck_for_secs = secs, "ClickHouse takes the flow's rows again; no longer stuck");
        self.settler.metrics.stuck_since(None);
        if let Err(e) = stuck::clear(&self.settler.redis, &self.settler.flow, &self.consumer).await
        {
            tracing::warn!(flow = %self.settler.flow, error = %e, "could not clear the stuck record in Redis");
        }
    }
}
