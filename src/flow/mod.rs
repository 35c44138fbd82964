//! One flow at run time, wired here: readers (XREADGROUP on their own
//! connections: [`read`]), a claim loop (dead replicas' work, consumer
//! pruning: [`claim`]), a keep-alive of the entries held ([`keep_alive`]),
//! the handler stage if the flow has a handler ([`stage`]), and the one
//! batch+commit loop ([`batcher`]) into the flow's sink.
//!
//! ```text
//! reader ──┐                                (bounded)              (bounded)
//!          ├─▶ chunks ─▶ [handler stage] ─▶ batcher ─▶ sealed batches ─▶ committer ─▶ XACK
//! claimer ─┘
//! ```
//! The channels are bounded, so a slow or absent sink stops the reads: memory
//! stays bounded and nothing more is taken from Redis than can be held. The
//! committer settles a batch (dead letters first, then acks: [`settle`])
//! while it writes the next one; the settling batch keeps only its ids
//! meanwhile. Why a message is dead before that (oversized, delivered too
//! often) is [`admit`]. A chunk's list goes back to the readers once the
//! batcher has taken its messages, and a batch's to the batcher once it is
//! acked ([`lists`]).
//!
//! A stream sink's committer can pause the reader and the claim loop
//! ([`Pause`]) while a target stream is full.
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

pub(crate) mod admit;
pub(crate) mod batcher;
pub(crate) mod claim;
pub(crate) mod keep_alive;
pub(crate) mod lists;
mod read;
pub(crate) mod retry;
pub(crate) mod settle;
pub(crate) mod stage;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Delivery, FlowConfig, SinkConfig};
use crate::connections::DEFAULT;
use crate::flow::batcher::Batching;
use crate::flow::keep_alive::KeepAlive;
use crate::flow::lists::MessageLists;
use crate::flow::retry::Retrier;
use crate::flow::settle::Settler;
use crate::flow::stage::Stage;
use crate::handler::{open as open_handler, outer_timeout, Handler, Handlers};
use crate::obs::metrics::{FlowMetrics, Metrics};
use crate::obs::readiness::Readiness;
use crate::redis::direct::StreamConnection;
use crate::redis::held::Held;
use crate::redis::sharder::Sharder;
use crate::redis::{client, commands, group, Message};
use crate::sink::clickhouse::batch::ClickHouseBatches;
use crate::sink::clickhouse::commit::Committer;
use crate::sink::clickhouse::exactly_once::ledger::Ledger;
use crate::sink::clickhouse::exactly_once::recover::{Recovery, RecoveryTasks, MAX_TASKS};
use crate::sink::clickhouse::exactly_once::ExactlyOnce;
use crate::sink::clickhouse::pacing::Pacer;
use crate::sink::clickhouse::{ClickHouseSink, SinkError};
use crate::sink::stream::once::StreamOnce;
use crate::sink::stream::{Pause, StreamSink};

/// Everything a flow needs, resolved at start-up.
pub(crate) struct Flow {
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
    pub readers: Vec<(StreamConnection, Vec<Arc<str>>)>,
    /// Where the flow's acks go (see [`Settler`]).
    pub acks: Arc<StreamConnection>,
    pub command_client: Client,
    pub metrics: FlowMetrics,
    pub block: Duration,
    pub prune_idle: Duration,
    /// Pending entries this process holds; the only ones kept alive.
    pub held: Arc<Held>,
    /// Exactly-once delivery: the ledger and the recovery of dead replicas' batches.
    pub recovery: Option<Arc<Recovery>>,
    /// Read chunks' lists, handed back by the batcher for the next reads.
    pub chunk_lists: Arc<MessageLists>,
}

/// Where a flow's messages land.
pub(crate) enum FlowSink {
    Clickhouse(Arc<ClickHouseSink>),
    Stream(Arc<StreamSink>),
}

/// How a flow opens: where it says what it waits for, and when to give up.
pub(crate) struct Opening<'a> {
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
    pub(crate) async fn open(
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
                let waiting = |e: &SinkError| {
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
            Some(h) => Some(open_handler(&cfg.name, h, handlers).await?),
            None => None,
        };
        let streams: Vec<Arc<str>> = cfg.streams.iter().map(|s| Arc::from(s.as_str())).collect();
        let mut readers = Vec::new();
        if config.redis.is_cluster() && streams.len() > 1 {
            for stream in &streams {
                let c = StreamConnection::connect(&config.redis, config.worker.block).await?;
                readers.push((c, vec![stream.clone()]));
            }
        } else {
            let c = StreamConnection::connect(&config.redis, config.worker.block).await?;
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
        // Acks go on a connection of their own: on the readers' they would
        // wait behind a blocked XREADGROUP.
        let acks = Arc::new(StreamConnection::connect_or(&config.redis, &command_client).await?);
        let pending = match exactly_once {
            Some(_) => Some(StreamConnection::connect_or(&config.redis, &command_client).await?),
            None => None,
        };
        let held: Arc<Held> = Arc::default();
        let recovery = exactly_once.zip(pending).map(|(sink, pending)| {
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
                    pending,
                    held: held.clone(),
                    claim_min_idle: cfg.claim.min_idle,
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
                let mut sink =
                    StreamSink::new(s, caps, forbidden).with_sharder(Sharder::new(config));
                // Targets on a named Redis (docs/DATAFLOW.md, "Across hosts").
                if let Some(name) = s.redis.as_deref().filter(|n| *n != DEFAULT) {
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
                    sink = sink.with_exactly_once(StreamOnce::new(&cfg.name, cfg.ledger_ttl, keep));
                } else {
                    let (redis, client) = match &sink.target {
                        Some((client, name)) => (config.redis_for(Some(name)), client),
                        None => (&config.redis, &command_client),
                    };
                    let writes = StreamConnection::connect_or(redis, client).await?;
                    sink = sink.with_writes(writes);
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
            // Two in the channel, one being read, one being batched.
            chunk_lists: Arc::new(MessageLists::keeping(4)),
            recovery,
            readers,
            acks,
            command_client,
            metrics,
            block: config.worker.block,
            prune_idle: config.worker.prune_idle,
            held,
        }))
    }

    /// Runs until `shutdown`; then stops reading, commits what it holds and
    /// removes its consumer when nothing is left pending. `hard_stop` ends
    /// retries at the shutdown deadline.
    pub(crate) async fn run(
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
        // Dead letters and acks, retried until the hard stop.
        let settler = Settler::for_flow(
            &flow.cfg,
            flow.command_client.clone(),
            flow.acks.clone(),
            flow.metrics.clone(),
            hard_stop.clone(),
        );
        let (chunk_rx, stage) = match (&flow.handler, &flow.cfg.handler) {
            (Some(handler), Some(cfg)) => {
                let (out_tx, out_rx) = mpsc::channel::<Vec<Message>>(2);
                let stage = Stage {
                    handler: handler.clone(),
                    concurrency: cfg.concurrency(),
                    timeout: outer_timeout(cfg),
                    max_deliveries: flow.cfg.max_deliveries,
                    settler: settler.clone(),
                    retrier: Retrier::for_flow(&flow.cfg, flow.command_client.clone()),
                };
                (out_rx, Some(tokio::spawn(stage.run(chunk_rx, out_tx))))
            }
            _ => (chunk_rx, None),
        };
        let batching = Batching {
            flow: flow.cfg.name.clone(),
            max_deliveries: flow.cfg.max_deliveries,
            // A handler's outputs of one message share its id: never seal
            // between them. The stream sink writes and acks them together.
            keep_siblings: flow.handler.is_some() || matches!(flow.sink, FlowSink::Stream(_)),
            chunk_lists: flow.chunk_lists.clone(),
        };
        let committed = match &flow.sink {
            FlowSink::Clickhouse(sink) => {
                // Limits scaled by the server's pressure, and the table's insert budget.
                let pacer = Pacer::for_flow(
                    &flow.cfg,
                    &sink.schema,
                    sink.pressure.clone(),
                    &flow.command_client,
                    hard_stop.clone(),
                    &flow.metrics,
                );
                let batches = ClickHouseBatches::new(sink.clone(), pacer, flow.recovery.is_some());
                let committer = Committer {
                    consumer: flow.consumer.clone(),
                    settler,
                    sink: sink.clone(),
                    exactly_once: flow.recovery.as_ref().map(|r| r.eo.clone()),
                };
                batcher::run(batching, Arc::new(committer), batches, chunk_rx).await?
            }
            FlowSink::Stream(sink) => {
                let batches = sink.batches(flow.cfg.batch.clone(), flow.metrics.clone());
                let committer = sink.committer(settler, flow.pause.clone());
                batcher::run(batching, Arc::new(committer), batches, chunk_rx).await?
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
}
