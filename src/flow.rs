//! One flow at run time: a reader (XREADGROUP on its own connection), a
//! claim loop (XAUTOCLAIM of dead replicas' work, max-deliveries, consumer
//! pruning), a batcher (convert + encode) and a committer (insert, then ack).
//!
//! ```text
//! reader ──┐                      (bounded)                (bounded)
//!          ├─▶ chunks ─▶ batcher ─▶ sealed batches ─▶ committer ─▶ XACK
//! claimer ─┘
//! ```
//! The channels are bounded, so a slow or absent sink stops the reads: memory
//! stays bounded and nothing more is taken from Redis than can be held.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batch::{OpenBatch, RowMapper, SealedBatch};
use crate::config::{Config, FlowConfig, SinkConfig};
use crate::metrics::{FlowMetrics, Metrics};
use crate::sink::clickhouse::ClickHouseSink;
use crate::sink::commit::Committer;
use crate::sink::retry::Backoff;
use crate::stream::dead_letter::DeadLetter;
use crate::stream::{client, commands, group, Message, StreamError};

/// Everything a flow needs, resolved at start-up.
pub struct Flow {
    pub cfg: FlowConfig,
    pub consumer: String,
    pub streams: Vec<Arc<str>>,
    pub sink: Arc<ClickHouseSink>,
    pub read_client: Client,
    pub command_client: Client,
    pub metrics: FlowMetrics,
    pub block: Duration,
    pub prune_idle: Duration,
}

impl Flow {
    /// Connects to Redis and the sink, creates missing groups (MKSTREAM).
    pub async fn open(
        config: &Config,
        cfg: &FlowConfig,
        consumer: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Flow> {
        let read_client = client::connect_blocking(&config.redis, config.worker.block).await?;
        let command_client = client::connect(&config.redis).await?;
        for stream in &cfg.streams {
            if commands::create_group(&command_client, stream, &cfg.group, &cfg.start_id).await? {
                tracing::info!(flow = %cfg.name, %stream, group = %cfg.group, "created consumer group");
            }
        }
        let sink = match &cfg.sink {
            SinkConfig::Clickhouse { table } => {
                let ch = config
                    .clickhouse
                    .as_ref()
                    .expect("validated: clickhouse sink has a section");
                ClickHouseSink::open(ch, cfg, table)
                    .await
                    .map_err(|e| anyhow::anyhow!("flow `{}`: {e}", cfg.name))?
            }
        };
        let streams: Vec<Arc<str>> = cfg.streams.iter().map(|s| Arc::from(s.as_str())).collect();
        // No endpoint, nobody to read them: the hot path skips metrics.
        let metrics = if config.metrics.listen.is_some() {
            FlowMetrics::new(&metrics, &cfg.name, &streams)
        } else {
            FlowMetrics::disabled()
        };
        Ok(Flow {
            cfg: cfg.clone(),
            consumer,
            streams,
            sink: Arc::new(sink),
            read_client,
            command_client,
            metrics,
            block: config.worker.block,
            prune_idle: config.worker.prune_idle,
        })
    }

    /// Runs until `shutdown`; then stops reading, commits what it holds and
    /// removes its consumer when nothing is left pending. `hard_stop` ends
    /// retries at the shutdown deadline.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        hard_stop: CancellationToken,
    ) -> anyhow::Result<()> {
        tracing::info!(flow = %self.cfg.name, streams = ?self.cfg.streams, group = %self.cfg.group, consumer = %self.consumer, "flow running");
        let flow = Arc::new(self);
        let (chunk_tx, chunk_rx) = mpsc::channel::<Vec<Message>>(2);
        let (batch_tx, batch_rx) = mpsc::channel::<SealedBatch>(1);

        let reader = tokio::spawn(flow.clone().read_loop(chunk_tx.clone(), shutdown.clone()));
        let claimer = tokio::spawn(flow.clone().claim_loop(chunk_tx, shutdown.clone()));
        let committer = tokio::spawn(flow.clone().commit_loop(batch_rx, hard_stop.clone()));
        flow.batch_loop(chunk_rx, batch_tx).await;

        reader.await?;
        claimer.await?;
        let committed = committer.await?;
        if committed {
            for stream in &flow.streams {
                match group::remove_self_if_idle(
                    &flow.command_client,
                    stream,
                    &flow.cfg.group,
                    &flow.consumer,
                )
                .await
                {
                    Ok(true) => {
                        tracing::info!(flow = %flow.cfg.name, %stream, consumer = %flow.consumer, "removed own consumer")
                    }
                    Ok(false) => {
                        tracing::warn!(flow = %flow.cfg.name, %stream, consumer = %flow.consumer, "own consumer still has pending entries; left for the claim loop of other replicas")
                    }
                    Err(e) => {
                        tracing::warn!(flow = %flow.cfg.name, %stream, error = %e, "could not remove own consumer")
                    }
                }
            }
            Ok(())
        } else {
            anyhow::bail!(
                "flow `{}` stopped with uncommitted batches (they stay pending for other replicas)",
                flow.cfg.name
            )
        }
    }

    async fn read_loop(
        self: Arc<Self>,
        chunks: mpsc::Sender<Vec<Message>>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            let mut entries = Vec::with_capacity(self.cfg.read_count.min(10_000));
            let read = commands::read_group(
                &self.read_client,
                &self.cfg.group,
                &self.consumer,
                self.cfg.read_count,
                self.block,
                &self.streams,
                &mut entries,
            )
            .await;
            match read {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    self.handle_read_error(&e).await;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
            if entries.is_empty() {
                continue;
            }
            self.metrics.read(&entries);
            // Whatever was read is handed on even during shutdown: it is
            // pending for us now and must be committed, not dropped.
            if chunks.send(entries).await.is_err() {
                break;
            }
        }
    }

    async fn handle_read_error(&self, e: &StreamError) {
        tracing::warn!(flow = %self.cfg.name, error = %e, "XREADGROUP failed");
        // The stream or group was deleted under us: recreate it.
        if e.to_string().contains("NOGROUP") {
            for stream in &self.streams {
                if let Err(e) = commands::create_group(
                    &self.command_client,
                    stream,
                    &self.cfg.group,
                    &self.cfg.start_id,
                )
                .await
                {
                    tracing::warn!(flow = %self.cfg.name, %stream, error = %e, "recreating group failed");
                }
            }
        }
    }

    /// Every `claim.every`: take over entries idle past `claim.min_idle`,
    /// dead-letter those over `max_deliveries`, ack ids deleted meanwhile,
    /// and prune consumers of departed replicas.
    async fn claim_loop(
        self: Arc<Self>,
        chunks: mpsc::Sender<Vec<Message>>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.cfg.claim.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            for stream in &self.streams {
                if let Err(e) = self.claim_stream(stream, &chunks, &shutdown).await {
                    tracing::warn!(flow = %self.cfg.name, %stream, error = %e, "claim pass failed");
                }
            }
            if last_prune.elapsed() >= self.prune_idle.min(Duration::from_secs(60)) {
                last_prune = tokio::time::Instant::now();
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
    }

    async fn claim_stream(
        &self,
        stream: &Arc<str>,
        chunks: &mpsc::Sender<Vec<Message>>,
        shutdown: &CancellationToken,
    ) -> Result<(), StreamError> {
        const PAGE: usize = 1000;
        const MAX_PAGES: usize = 20; // bound one pass; the next tick continues
        let mut cursor = bytes::Bytes::from_static(b"0-0");
        for _ in 0..MAX_PAGES {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let page = commands::auto_claim(
                &self.command_client,
                stream,
                &self.cfg.group,
                &self.consumer,
                self.cfg.claim.min_idle,
                &cursor,
                PAGE,
            )
            .await?;
            if !page.deleted.is_empty() {
                self.metrics.lost(stream, page.deleted.len());
                tracing::error!(flow = %self.cfg.name, %stream, count = page.deleted.len(), ids = ?page.deleted.iter().take(20).map(|i| String::from_utf8_lossy(i).into_owned()).collect::<Vec<_>>(), "pending entries were deleted from the stream before delivery; acking them as lost");
                commands::ack(
                    &self.command_client,
                    stream,
                    &self.cfg.group,
                    &page.deleted,
                    false,
                )
                .await?;
            }
            let mut claimed = page.claimed;
            if !claimed.is_empty() {
                self.metrics.claimed(stream, claimed.len());
                tracing::info!(flow = %self.cfg.name, %stream, count = claimed.len(), "claimed idle pending entries");
                self.fill_delivery_counts(stream, &mut claimed).await?;
                if chunks.send(claimed).await.is_err() {
                    return Ok(());
                }
            }
            if page.cursor.as_ref() == b"0-0" {
                break;
            }
            cursor = page.cursor;
        }
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
        let counts: std::collections::HashMap<&[u8], u64> = pending
            .iter()
            .map(|p| (p.id.as_ref(), p.deliveries))
            .collect();
        for m in claimed.iter_mut() {
            // Unknown (acked meanwhile) counts as one more than a first delivery.
            m.deliveries = counts.get(m.id.as_ref()).copied().unwrap_or(2);
        }
        Ok(())
    }

    async fn batch_loop(
        &self,
        mut chunks: mpsc::Receiver<Vec<Message>>,
        batches: mpsc::Sender<SealedBatch>,
    ) {
        let mapper: &RowMapper = &self.sink.mapper;
        let mut open = OpenBatch::new();
        loop {
            let deadline = open
                .opened()
                .map(|t| tokio::time::Instant::from_std(t + self.cfg.batch.max_wait));
            let chunk = match deadline {
                Some(deadline) => tokio::select! {
                    c = chunks.recv() => c,
                    _ = tokio::time::sleep_until(deadline) => {
                        if batches.send(open.seal(mapper)).await.is_err() { return; }
                        continue;
                    }
                },
                None => chunks.recv().await,
            };
            let Some(chunk) = chunk else { break };
            for m in chunk {
                if m.deliveries > self.cfg.max_deliveries {
                    let reason = format!(
                        "delivered {} times, more than max_deliveries = {}",
                        m.deliveries, self.cfg.max_deliveries
                    );
                    open.add_dead(DeadLetter {
                        message: m,
                        reason,
                        kind: "max_deliveries",
                    });
                } else {
                    open.add(mapper, m);
                }
                if open.is_full(&self.cfg.batch) && batches.send(open.seal(mapper)).await.is_err() {
                    return;
                }
            }
        }
        if !open.is_empty() {
            let _ = batches.send(open.seal(mapper)).await;
        }
    }

    /// Returns false if a batch had to be abandoned at the hard stop.
    async fn commit_loop(
        self: Arc<Self>,
        mut batches: mpsc::Receiver<SealedBatch>,
        hard_stop: CancellationToken,
    ) -> bool {
        let committer = Committer {
            flow: self.cfg.name.clone(),
            group: self.cfg.group.clone(),
            dead_letter_stream: self.cfg.dead_letter_stream(),
            on_success: self.cfg.on_success,
            sink: self.sink.clone(),
            redis: self.command_client.clone(),
            metrics: self.metrics.clone(),
            hard_stop,
        };
        let mut all_committed = true;
        while let Some(batch) = batches.recv().await {
            if batch.is_empty() {
                continue;
            }
            let span = tracing::info_span!(
                "batch",
                flow = %self.cfg.name,
                rows = batch.messages.len(),
                dead = batch.dead.len(),
                inserted = tracing::field::Empty,
                dead_lettered = tracing::field::Empty,
            );
            // Continue the producers' traces (`traceparent` fields), if traces are exported.
            crate::telemetry::continue_producer_traces(&span, &batch.messages);
            if let Err(e) = committer.commit(batch).instrument(span).await {
                tracing::error!(flow = %self.cfg.name, error = %e);
                all_committed = false;
            }
        }
        all_committed
    }
}
