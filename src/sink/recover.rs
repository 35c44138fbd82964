//! Exactly-once recovery: settles claimed entries that belong to a batch a
//! dead replica recorded in the ledger. If ClickHouse holds the batch (rows
//! with its batch id), the members are only acked; if it holds none, the
//! identical batch (same members, same order, same batch id and dedup
//! token) is inserted and then acked; if it holds part of it (an insert cut
//! across partitions), the missing members are inserted when `metadata.id`
//! names the id column, otherwise the whole batch is (and duplicates are
//! logged).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::clickhouse::ClickHouseSink;
use super::ledger::{BatchRecord, Ledger};
use super::retry::{classify, Backoff, Disposition};
use crate::config::OnSuccess;
use crate::stream::{commands, Message, StreamError};

pub struct Recovery {
    pub flow: String,
    pub group: String,
    pub consumer: String,
    pub sink: Arc<ClickHouseSink>,
    pub ledger: Arc<Ledger>,
    pub redis: Client,
    pub batch_id_column: String,
    /// The column holding entry ids (`metadata.id`), if configured.
    pub id_column: Option<String>,
    pub on_success: OnSuccess,
    /// How long one replica may hold a batch's recovery lock.
    pub lock_hold: Duration,
}

/// Why a recovery pass did not finish; it is retried.
#[derive(Debug, thiserror::Error)]
enum RecoverError {
    #[error(transparent)]
    Redis(#[from] StreamError),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

impl Recovery {
    /// Splits claimed entries into those of recorded batches (returned as
    /// the batches to recover) and the rest (returned for normal batching).
    pub async fn split(
        &self,
        claimed: Vec<Message>,
    ) -> Result<(Vec<Message>, Vec<BatchRecord>), StreamError> {
        let open = self.ledger.open_batches().await?;
        if open.is_empty() {
            return Ok((claimed, Vec::new()));
        }
        let mut owner: HashMap<(Arc<str>, Bytes), usize> = HashMap::new();
        for (i, record) in open.iter().enumerate() {
            for member in &record.members {
                owner.insert(member.clone(), i);
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

    /// Recovers one batch, retrying until done or `stop`. Members ClickHouse
    /// refuses as data go to `fallback` for normal batching (and bisection).
    pub async fn run(
        &self,
        record: BatchRecord,
        fallback: mpsc::Sender<Vec<Message>>,
        stop: CancellationToken,
    ) {
        match self
            .ledger
            .lock_recovery(&record.id, &self.consumer, self.lock_hold)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(flow = %self.flow, batch = %record.id, "another replica is recovering this batch");
                return;
            }
            Err(e) => {
                tracing::warn!(flow = %self.flow, batch = %record.id, error = %e, "could not lock batch for recovery; the next claim pass retries");
                return;
            }
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.once(&record, &fallback).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(flow = %self.flow, batch = %record.id, error = %e, "batch recovery failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn once(
        &self,
        record: &BatchRecord,
        fallback: &mpsc::Sender<Vec<Message>>,
    ) -> Result<(), RecoverError> {
        let held = self
            .sink
            .count_batch(&self.batch_id_column, &record.id)
            .await?;
        let members = record.members.len() as u64;
        if held >= members {
            tracing::info!(flow = %self.flow, batch = %record.id, rows = held, "ClickHouse already holds the recovered batch; acking only");
        } else {
            let mut messages = self.fetch(&record.members).await?;
            if held > 0 {
                match &self.id_column {
                    Some(col) => {
                        let present = self.present_ids(col, &record.id).await?;
                        messages.retain(|m| !present.contains(m.id.as_ref()));
                    }
                    None => {
                        tracing::warn!(flow = %self.flow, batch = %record.id, held, members, "ClickHouse holds part of the batch and no metadata.id column tells which rows: inserting all again (duplicates)")
                    }
                }
            }
            if !messages.is_empty() {
                match self.sink.insert_messages(&messages, &record.id).await {
                    Ok(()) => {
                        tracing::info!(flow = %self.flow, batch = %record.id, rows = messages.len(), "re-inserted the recovered batch")
                    }
                    Err(e) if classify(&e) == Disposition::Bisect => {
                        // The data is refused: settle it the normal way.
                        tracing::warn!(flow = %self.flow, batch = %record.id, error = %e, "recovered batch refused; batching its members again to isolate bad rows");
                        let _ = fallback.send(messages).await;
                        self.ledger.forget(&record.id).await?;
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.ack_all(&record.members).await?;
        self.ledger.forget(&record.id).await?;
        Ok(())
    }

    /// The members' current content; members deleted from the stream are
    /// counted as lost.
    async fn fetch(&self, members: &[(Arc<str>, Bytes)]) -> Result<Vec<Message>, StreamError> {
        let mut out = Vec::with_capacity(members.len());
        for (stream, id) in members {
            match commands::range(&self.redis, stream, id, id, 1)
                .await?
                .into_iter()
                .next()
            {
                Some(mut m) => {
                    m.deliveries = 2;
                    out.push(m);
                }
                None => {
                    tracing::error!(flow = %self.flow, %stream, id = %String::from_utf8_lossy(id), "member of a recovered batch was deleted from the stream; lost")
                }
            }
        }
        Ok(out)
    }

    async fn present_ids(
        &self,
        id_column: &str,
        batch_id: &str,
    ) -> Result<HashSet<Vec<u8>>, clickhouse::error::Error> {
        let ids = self
            .sink
            .batch_ids(id_column, &self.batch_id_column, batch_id)
            .await?;
        Ok(ids.into_iter().map(String::into_bytes).collect())
    }

    async fn ack_all(&self, members: &[(Arc<str>, Bytes)]) -> Result<(), StreamError> {
        let mut by_stream: HashMap<&str, Vec<Bytes>> = HashMap::new();
        for (stream, id) in members {
            by_stream.entry(stream).or_default().push(id.clone());
        }
        for (stream, ids) in by_stream {
            commands::ack(
                &self.redis,
                stream,
                &self.group,
                &ids,
                self.on_success == OnSuccess::AckDel,
            )
            .await?;
        }
        Ok(())
    }
}
