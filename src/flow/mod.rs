//! One flow at run time: a reader (XREADGROUP on its own connection), a
//! claim loop (dead replicas' work, consumer pruning: [`crate::flow::claim`]), a
//! keep-alive of the entries held ([`crate::flow::keep_alive`]), a
//! batcher (convert + encode) and a committer (insert, then ack).
//!
//! ```text
//! reader ──┐                      (bounded)                (bounded)
//!          ├─▶ chunks ─▶ batcher ─▶ sealed batches ─▶ committer ─▶ XACK
//! claimer ─┘
//! ```
//! The channels are bounded, so a slow or absent sink stops the reads: memory
//! stays bounded and nothing more is taken from Redis than can be held. The
//! committer acks a batch (dead letters first) while it inserts the next
//! one; the acked batch keeps only its ids meanwhile.
//!
//! A flow with a handler runs it between the chunks and the batcher
//! ([`crate::flow::stage`]); a flow with a stream sink batches and
//! commits with [`crate::sink::stream`] instead of the ClickHouse pair, and
//! its committer can pause the reader and the claim loop ([`Pause`]) while
//! a target stream is full.
//!
//! # Reading several streams from Redis Cluster
//! Outside a cluster one XREADGROUP covers all of a flow's streams. In a
//! cluster a command's keys must share one slot, and fred's client waits
//! for a blocking command before sending the next one, so one client
//! blocking on shard 0 would hold back every other shard. A flow there runs
//! one reader per stream (shard), each blocking on its own client (its
//! own connections); they share the bounded chunk channel, whose waiting
//! senders are served first come first served, so a busy shard cannot
//! starve the others when the sink is the bottleneck. Cost: one connection
//! per shard and node, per flow and replica.

pub mod claim;
pub mod keep_alive;
pub mod retry;
pub mod stage;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::clickhouse::rows::{OpenBatch, RowMapper, SealedBatch};
use crate::config::{Config, Delivery, FlowConfig, SinkConfig};
use crate::flow::keep_alive::KeepAlive;
use crate::handler::{Handler, Handlers};
use crate::obs::metrics::{FlowMetrics, Metrics};
use crate::obs::readiness::Readiness;
use crate::redis::dead_letter::DeadLetter;
use crate::redis::held::Held;
use crate::redis::{client, commands, group, Message, StreamError};
use crate::sink::clickhouse::commit::Committer;
use crate::sink::clickhouse::exactly_once::ledger::Ledger;
use crate::sink::clickhouse::exactly_once::recover::{Recovery, RecoveryTasks, MAX_TASKS};
use crate::sink::clickhouse::exactly_once::ExactlyOnce;
use crate::sink::clickhouse::pacing::Pacer;
use crate::sink::clickhouse::ClickHouseSink;
use crate::sink::stream::{same_stream, Pause, StreamSink};

/// Everything a flow needs, resolved at start-up.
pub struct Flow {
    pub cfg: FlowConfig,
    pub consumer: String,
    pub streams: Vec<Arc<str>>,
    pub sink: FlowSink,
    /// Runs before the sink; None = messages go to the sink as read.
    pub handler: Option<Arc<dyn Handler>>,
    /// Set while a stream sink's target is full: no reads, no claims.
    pub pause: Arc<Pause>,
    /// Blocking-read clients and the streams each reads: one for all
    /// streams, or one per stream in a cluster (see the module docs).
    pub readers: Vec<(Client, Vec<Arc<str>>)>,
    pub command_client: Client,
    pub metrics: FlowMetrics,
    pub block: Duration,
    pub prune_idle: Duration,
    /// Pending entries this process holds; the only ones kept alive.
    pub held: Arc<Held>,
    /// Exactly-once delivery: the ledger and the recovery of dead replicas' batches.
    pub recovery: Option<Arc<Recovery>>,
}

/// Where a flow's messages land.
pub enum FlowSink {
    Clickhouse(Arc<ClickHouseSink>),
    Stream(Arc<StreamSink>),
}

/// Why `m` is dead before anything else looks at it: a field name or value
/// longer than `max` bytes (`max_field_bytes`).
pub fn oversized_field(m: &Message, max: u64) -> Option<String> {
    let (name, len) = m.fields.iter().find_map(|(k, v)| {
        let len = k.len().max(v.len()) as u64;
        (len > max).then_some((k, len))
    })?;
    let shown = String::from_utf8_lossy(&name[..name.len().min(64)]);
    let more = if name.len() > 64 { "…" } else { "" };
    Some(format!(
        "field `{shown}{more}` is {len} bytes, more than max_field_bytes = {max}"
    ))
}

/// Why `m` is dead before being handled: delivered more than `max` times.
pub fn over_max_deliveries(m: &Message, max: u64) -> Option<String> {
    (m.deliveries > max).then(|| {
        format!(
            "delivered {} times, more than max_deliveries = {max}",
            m.deliveries
        )
    })
}

/// How a flow opens: where it says what it waits for, and when to give up.
pub struct Opening<'a> {
    pub consumer: String,
    pub metrics: Arc<Metrics>,
    pub handlers: &'a Handlers,
    /// Told why the flow is not running yet (ClickHouse not answering).
    pub readiness: &'a Readiness,
    /// Stops waiting for ClickHouse.
    pub stop: &'a CancellationToken,
}

impl Flow {
    /// Connects to Redis and the sink, creates missing groups (MKSTREAM).
    /// While ClickHouse does not answer, waits for it (with backoff, saying
    /// so in `readiness`) instead of failing: a replica may start during an
    /// outage. Ok(None): stopped while waiting.
    pub async fn open(
        config: &Config,
        cfg: &FlowConfig,
        o: Opening<'_>,
    ) -> anyhow::Result<Option<Flow>> {
        let Opening {
            consumer,
            metrics,
            handlers,
            readiness,
            stop,
        } = o;
        let command_client = client::connect(&config.redis).await?;
        for stream in &cfg.streams {
            if commands::create_group(&command_client, stream, &cfg.group, &cfg.start_id).await? {
                tracing::info!(flow = %cfg.name, %stream, group = %cfg.group, "created consumer group");
            }
        }
        let clickhouse = match &cfg.sink {
            SinkConfig::Clickhouse {
                table, clickhouse, ..
            } => {
                let ch = config
                    .clickhouse_for(clickhouse.as_deref())
                    .expect("validated: clickhouse sink has a connection");
                let endpoint_metrics = config.metrics.listen.is_some().then_some(&metrics);
                let waiting = |e: &crate::sink::clickhouse::SinkError| {
                    readiness.waiting(&cfg.name, format!("waiting for ClickHouse: {e}"));
                };
                let opened = ClickHouseSink::open_when_reachable(
                    ch,
                    cfg,
                    table,
                    endpoint_metrics,
                    waiting,
                    stop,
                )
                .await
                .map_err(|e| anyhow::anyhow!("flow `{}`: {e}", cfg.name))?;
                let Some(sink) = opened else {
                    return Ok(None);
                };
                let sink = Arc::new(sink);
                sink.spawn_schema_refresh();
                Some(sink)
            }
            SinkConfig::Stream(_) => None,
        };
        let handler = match &cfg.handler {
            Some(h) => Some(crate::handler::open(&cfg.name, h, handlers).await?),
            None => None,
        };
        let streams: Vec<Arc<str>> = cfg.streams.iter().map(|s| Arc::from(s.as_str())).collect();
        let mut readers = Vec::new();
        if config.redis.is_cluster() && streams.len() > 1 {
            for stream in &streams {
                let c = client::connect_blocking(&config.redis, config.worker.block).await?;
                readers.push((c, vec![stream.clone()]));
            }
        } else {
            let c = client::connect_blocking(&config.redis, config.worker.block).await?;
            readers.push((c, streams.clone()));
        }
        // No endpoint, nobody to read them: the hot path skips metrics.
        let metrics = if config.metrics.listen.is_some() {
            FlowMetrics::new(&metrics, &cfg.name, &streams)
        } else {
            FlowMetrics::disabled()
        };
        let exactly_once = clickhouse
            .as_ref()
            .filter(|_| cfg.delivery == Delivery::ExactlyOnce);
        let recovery = exactly_once.map(|sink| {
            // The lease only has to outlast one attempt's steps to spare
            // needless takeovers; correctness comes from the fence.
            let lease = (sink.insert_timeout() + Duration::from_secs(5)).max(cfg.claim.min_idle);
            Arc::new(Recovery {
                eo: Arc::new(ExactlyOnce {
                    flow: cfg.name.clone(),
                    group: cfg.group.clone(),
                    consumer: consumer.clone(),
                    sink: sink.clone(),
                    ledger: Arc::new(Ledger::new(
                        command_client.clone(),
                        &cfg.name,
                        cfg.ledger_ttl,
                        lease,
                        &streams,
                    )),
                    redis: command_client.clone(),
                    batch_id_column: cfg.batch_id_column.clone().unwrap_or_default(),
                    id_column: cfg.metadata.id.clone(),
                    stream_column: cfg.metadata.stream.clone(),
                    metrics: metrics.clone(),
                }),
                on_success: cfg.on_success,
                tasks: RecoveryTasks::new(MAX_TASKS, metrics.clone()),
            })
        });
        let sink = match (clickhouse, &cfg.sink) {
            (Some(ch), _) => FlowSink::Clickhouse(ch),
            (None, SinkConfig::Stream(s)) => {
                let caps = config
                    .streams
                    .iter()
                    .filter_map(|(name, st)| st.max_len.map(|m| (name.clone(), m)))
                    .collect();
                let mut forbidden = cfg.streams.clone();
                forbidden.push(cfg.dead_letter_stream());
                let mut sink = StreamSink::new(s, caps, forbidden)
                    .with_sharder(crate::redis::sharder::Sharder::new(config));
                // Targets on a named Redis (docs/DATAFLOW.md, "Across hosts").
                if let Some(name) = s
                    .redis
                    .as_deref()
                    .filter(|n| *n != crate::connections::DEFAULT)
                {
                    let target = client::connect(config.redis_for(Some(name)))
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "flow `{}`: redis.remote.{name}: cannot connect: {e}",
                                cfg.name
                            )
                        })?;
                    sink = sink.with_target(target, name);
                }
                if cfg.delivery == Delivery::ExactlyOnce {
                    // Records outlive their ack by more than the flow holds.
                    let keep = 3 * (cfg.read_count + cfg.batch.max_rows);
                    sink = sink.with_exactly_once(crate::sink::stream::once::StreamOnce::new(
                        &cfg.name,
                        cfg.ledger_ttl,
                        keep,
                    ));
                }
                FlowSink::Stream(Arc::new(sink))
            }
            (None, SinkConfig::Clickhouse { .. }) => unreachable!("opened above"),
        };
        Ok(Some(Flow {
            cfg: cfg.clone(),
            consumer,
            streams,
            sink,
            handler,
            pause: Arc::new(Pause::default()),
            recovery,
            readers,
            command_client,
            metrics,
            block: config.worker.block,
            prune_idle: config.worker.prune_idle,
            held: Arc::default(),
        }))
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

        let readers: Vec<_> = (0..flow.readers.len())
            .map(|i| {
                tokio::spawn(
                    flow.clone()
                        .read_loop(i, chunk_tx.clone(), shutdown.clone()),
                )
            })
            .collect();
        // Keep-alive goes on until everything held is committed.
        let held_done = CancellationToken::new();
        let keep_alive = tokio::spawn(
            KeepAlive {
                flow: flow.cfg.name.clone(),
                client: flow.command_client.clone(),
                streams: flow.streams.clone(),
                group: flow.cfg.group.clone(),
                consumer: flow.consumer.clone(),
                held: flow.held.clone(),
                min_idle: flow.cfg.claim.min_idle,
                every: flow.cfg.claim.every,
            }
            .run(held_done.clone()),
        );
        let claimer = tokio::spawn(flow.clone().claim_loop(
            chunk_tx,
            shutdown.clone(),
            hard_stop.clone(),
        ));
        let (chunk_rx, stage) = match (&flow.handler, &flow.cfg.handler) {
            (Some(handler), Some(cfg)) => {
                let (out_tx, out_rx) = mpsc::channel::<Vec<Message>>(2);
                let stage = crate::flow::stage::Stage {
                    flow: flow.clone(),
                    handler: handler.clone(),
                    concurrency: cfg.concurrency(),
                    timeout: crate::handler::outer_timeout(cfg),
                    hard_stop: hard_stop.clone(),
                };
                (out_rx, Some(tokio::spawn(stage.run(chunk_rx, out_tx))))
            }
            _ => (chunk_rx, None),
        };
        let committed = match &flow.sink {
            FlowSink::Clickhouse(sink) => {
                let (batch_tx, batch_rx) = mpsc::channel::<SealedBatch>(1);
                let committer = tokio::spawn(flow.clone().commit_loop(
                    sink.clone(),
                    batch_rx,
                    hard_stop.clone(),
                ));
                flow.batch_loop(sink, chunk_rx, batch_tx, hard_stop.clone())
                    .await;
                committer.await?
            }
            FlowSink::Stream(sink) => {
                crate::sink::stream::run(flow.clone(), sink.clone(), chunk_rx, hard_stop.clone())
                    .await
            }
        };

        for reader in readers {
            reader.await?;
        }
        claimer.await?;
        if let Some(stage) = stage {
            stage.await?;
        }
        if let Some(recovery) = &flow.recovery {
            recovery.tasks.join(&hard_stop).await;
        }
        held_done.cancel();
        keep_alive.await?;
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

    /// Reads `self.readers[reader]`'s streams until shutdown.
    async fn read_loop(
        self: Arc<Self>,
        reader: usize,
        chunks: mpsc::Sender<Vec<Message>>,
        shutdown: CancellationToken,
    ) {
        let (client, streams) = &self.readers[reader];
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            if self.pause.is_paused() {
                tokio::select! {
                    _ = self.pause.wait_resumed() => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            let mut entries = Vec::with_capacity(self.cfg.read_count.min(10_000));
            let read = commands::read_group(
                client,
                &self.cfg.group,
                &self.consumer,
                self.cfg.read_count,
                self.block,
                streams,
                &mut entries,
            )
            .await;
            match read {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    self.handle_read_error(streams, &e).await;
                    backoff.wait(&shutdown).await;
                }
            }
            if entries.is_empty() {
                continue;
            }
            self.metrics.read(&entries);
            self.held.insert_read(&entries);
            self.dead_letter_oversized(&mut entries, &shutdown).await;
            // Whatever was read is handed on even during shutdown: it is
            // pending for us now and must be committed, not dropped.
            if chunks.send(entries).await.is_err() {
                break;
            }
        }
    }

    /// Takes the messages with a field over `max_field_bytes` out of
    /// `entries` and dead-letters (and acks) them, retrying Redis errors
    /// until shutdown (then they stay pending for another replica).
    pub(crate) async fn dead_letter_oversized(
        &self,
        entries: &mut Vec<Message>,
        shutdown: &CancellationToken,
    ) {
        let max = self.cfg.max_field_bytes.as_u64();
        if !entries.iter().any(|m| oversized_field(m, max).is_some()) {
            return;
        }
        let mut dead = Vec::new();
        for m in std::mem::take(entries) {
            match oversized_field(&m, max) {
                Some(reason) => dead.push(DeadLetter {
                    message: m,
                    reason,
                    kind: "oversized",
                }),
                None => entries.push(m),
            }
        }
        let delete = self.cfg.on_success == crate::config::OnSuccess::AckDel;
        let dead_stream = self.cfg.dead_letter_stream();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        while let Err(e) = crate::redis::dead_letter::dead_letter_and_ack(
            &self.command_client,
            &dead_stream,
            &self.cfg.group,
            &dead,
            delete,
        )
        .await
        {
            tracing::warn!(flow = %self.cfg.name, count = dead.len(), error = %e, "dead-lettering oversized messages failed; retrying");
            if !backoff.wait(shutdown).await {
                return;
            }
        }
        for d in &dead {
            tracing::warn!(flow = %self.cfg.name, stream = %d.message.stream, id = %String::from_utf8_lossy(&d.message.id), reason = %d.reason, "dead-lettered");
            self.metrics.dead_lettered(d.kind);
        }
    }

    async fn handle_read_error(&self, streams: &[Arc<str>], e: &StreamError) {
        tracing::warn!(flow = %self.cfg.name, ?streams, error = %e, "XREADGROUP failed");
        // The stream or group was deleted under us: recreate it.
        if e.to_string().contains("NOGROUP") {
            for stream in streams {
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

    async fn batch_loop(
        &self,
        sink: &ClickHouseSink,
        mut chunks: mpsc::Receiver<Vec<Message>>,
        batches: mpsc::Sender<SealedBatch>,
        hard_stop: CancellationToken,
    ) {
        // Limits scaled by the server's pressure, and the table's insert budget.
        let mut pacer = Pacer::for_flow(
            &self.cfg,
            &sink.schema,
            sink.pressure.clone(),
            &self.command_client,
            hard_stop,
            &self.metrics,
        );
        // The table's columns may be re-read meanwhile: each batch is
        // converted with the mapping current when it opens.
        let mut mapper: Arc<RowMapper> = sink.mapper.current();
        // A handler's outputs of one message share its id: never seal between them.
        let siblings = self.handler.is_some();
        let mut open = if self.recovery.is_some() {
            OpenBatch::with_batch_ids()
        } else {
            OpenBatch::new()
        };
        loop {
            let deadline = open.opened().map(|t| pacer.due(t));
            let chunk = match deadline {
                Some(deadline) => tokio::select! {
                    c = chunks.recv() => c,
                    _ = tokio::time::sleep_until(deadline) => {
                        if pacer.may_seal().await && batches.send(open.seal_with(&mapper)).await.is_err() { return; }
                        continue;
                    }
                },
                None => chunks.recv().await,
            };
            let Some(chunk) = chunk else { break };
            pacer.refresh();
            if open.is_empty() && !sink.mapper.is_current(&mapper) {
                mapper = sink.mapper.current();
                open.remap();
            }
            let mut chunk = chunk.into_iter().peekable();
            while let Some(m) = chunk.next() {
                let boundary = !siblings
                    || chunk
                        .peek()
                        .is_none_or(|n| n.id != m.id || !same_stream(&n.stream, &m.stream));
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
                    open.add(&mapper, m);
                }
                if boundary && open.is_full(pacer.limits()) {
                    pacer.wait_for_slot().await;
                    if batches.send(open.seal_with(&mapper)).await.is_err() {
                        return;
                    }
                }
            }
        }
        if !open.is_empty() {
            let _ = batches.send(open.seal_with(&mapper)).await;
        }
    }

    /// Returns false if a batch had to be abandoned at the hard stop.
    async fn commit_loop(
        self: Arc<Self>,
        sink: Arc<ClickHouseSink>,
        mut batches: mpsc::Receiver<SealedBatch>,
        hard_stop: CancellationToken,
    ) -> bool {
        let committer = Committer {
            flow: self.cfg.name.clone(),
            consumer: self.consumer.clone(),
            group: self.cfg.group.clone(),
            dead_letter_stream: self.cfg.dead_letter_stream(),
            on_success: self.cfg.on_success,
            sink,
            redis: self.command_client.clone(),
            metrics: self.metrics.clone(),
            hard_stop,
            exactly_once: self.recovery.as_ref().map(|r| r.eo.clone()),
        };
        let committer = Arc::new(committer);
        let mut all_committed = true;
        // The acks of the batch inserted last, running while the next
        // batch is inserted; one at a time, so acks keep batch order.
        let mut acking: Option<tokio::task::JoinHandle<bool>> = None;
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
            crate::obs::telemetry::continue_producer_traces(&span, &batch.messages);
            let inserted = committer.insert(batch).instrument(span.clone()).await;
            if let Some(previous) = acking.take() {
                all_committed &= previous.await.unwrap_or(false);
            }
            match inserted {
                Ok(inserted) => {
                    let (committer, flow) = (committer.clone(), self.cfg.name.clone());
                    let ack = async move {
                        let acked = committer.acknowledge(inserted).await;
                        if let Err(e) = &acked {
                            tracing::error!(%flow, error = %e);
                        }
                        acked.is_ok()
                    };
                    acking = Some(tokio::spawn(ack.instrument(span)));
                }
                Err(e) => {
                    tracing::error!(flow = %self.cfg.name, error = %e);
                    all_committed = false;
                }
            }
        }
        if let Some(last) = acking {
            all_committed &= last.await.unwrap_or(false);
        }
        all_committed
    }
}
