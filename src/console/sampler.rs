//! The one sampler every open page shares: every `console.sample_every` it
//! reads each flow's streams (through [`crate::obs::status`]), the delayed sets
//! and the ClickHouse endpoints, keeps the last `console.retention` of
//! counters in memory for the rate sparklines, and publishes a snapshot.
//! Pages and the API read the snapshot; none of them reads these numbers
//! from Redis itself, so ten open tabs cost what one does.
//!
//! Rates: *in* is the change of the stream's `entries-added` (XINFO
//! STREAM) per second; *out* is what left the group's backlog per second:
//! Δadded − Δlag − Δpending (entries read and acknowledged), never below 0.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fred::prelude::*;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clickhouse::schema::TableSchema;
use crate::config::{Config, FlowConfig, SinkConfig};
use crate::obs::status::{self, StreamStatus};
use crate::redis::delayed;
use crate::redis::group::ConsumerInfo;
use crate::redis::sharder::Sharder;
use crate::redis::{commands, reply, StreamError};
use crate::sink::clickhouse::endpoints;
use crate::sink::clickhouse::endpoints::EndpointStatus;
use crate::sink::clickhouse::split_table;
use crate::sink::clickhouse::stuck;
use crate::time::{now_ms, Ticker};

/// Bound on the ClickHouse part of one sample (endpoint checks, table checks).
const CLICKHOUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the overview shows, as of one sample.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Snapshot {
    /// When the sample was taken (Unix ms); 0 before the first one.
    pub taken_at_ms: u64,
    /// How long it took.
    pub took_ms: u64,
    pub sample_every_ms: u64,
    pub flows: Vec<FlowView>,
    pub endpoints: Vec<EndpointStatus>,
    /// Every stream with delayed jobs, and every flow stream.
    pub delayed: Vec<DelayedView>,
    /// Why the last sample failed (the rest is then from the one before).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FlowView {
    pub name: String,
    pub group: String,
    /// `clickhouse table t` or `streams`.
    pub sink: String,
    pub dead_letter_stream: String,
    pub dead_letter_length: u64,
    /// A table-level ClickHouse error: the table cannot be read (unknown
    /// table, missing rights), or a replica's inserts are refused for every
    /// row (its `sluice:stuck:{flow}` record). The flow retries until it is
    /// fixed.
    pub stuck: Option<String>,
    pub streams: Vec<StreamView>,
}

/// One stream of a flow as written in the config; a sharded stream adds
/// its shards up (lag, pending, length summed; idle the oldest).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamView {
    pub name: String,
    pub group_exists: bool,
    pub length: u64,
    pub lag: u64,
    /// False when any shard's lag is an estimate (see `status`).
    pub lag_exact: bool,
    pub lag_seconds: f64,
    pub pending: u64,
    pub oldest_pending_idle_seconds: f64,
    pub consumers: Vec<ConsumerInfo>,
    pub delayed: u64,
    /// Entries per second over the last interval (None before two samples).
    pub in_rate: Option<f64>,
    pub out_rate: Option<f64>,
    /// Rates of the retained window, oldest first.
    pub in_history: Vec<f64>,
    pub out_history: Vec<f64>,
    /// Each shard (empty when the stream is not sharded).
    pub shards: Vec<StreamStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DelayedView {
    pub stream: String,
    pub count: u64,
    pub next_due_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    at: Instant,
    added: u64,
    lag: u64,
    pending: u64,
}

/// Rate series per (flow, stream), owned by the sampling task.
struct History {
    keep: usize,
    points: HashMap<(String, String), VecDeque<Point>>,
}

impl History {
    /// Records a point; returns (in, out) rate series, oldest first.
    fn record(&mut self, flow: &str, stream: &str, p: Point) -> (Vec<f64>, Vec<f64>) {
        let series = self
            .points
            .entry((flow.to_string(), stream.to_string()))
            .or_default();
        series.push_back(p);
        while series.len() > self.keep + 1 {
            series.pop_front();
        }
        rates(series.make_contiguous())
    }
}

/// Per-interval rates of consecutive points: (in, out).
fn rates(points: &[Point]) -> (Vec<f64>, Vec<f64>) {
    let mut ins = Vec::with_capacity(points.len());
    let mut outs = Vec::with_capacity(points.len());
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        let secs = b.at.duration_since(a.at).as_secs_f64();
        if secs <= 0.0 {
            continue;
        }
        let added = b.added.saturating_sub(a.added) as f64;
        let backlog_change = (b.lag as f64 - a.lag as f64) + (b.pending as f64 - a.pending as f64);
        ins.push(added / secs);
        outs.push(((added - backlog_change) / secs).max(0.0));
    }
    (ins, outs)
}

pub(crate) struct Sampler {
    latest: RwLock<Arc<Snapshot>>,
}

impl Sampler {
    pub(crate) fn new() -> Arc<Sampler> {
        Arc::new(Sampler {
            latest: RwLock::new(Arc::new(Snapshot::default())),
        })
    }

    /// The latest snapshot (cheap: an `Arc`).
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, s: Snapshot) {
        *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }

    /// Samples now and then every `sample_every` until `shutdown`.
    pub(crate) async fn run(
        self: Arc<Self>,
        client: Client,
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) {
        let console = config.console.clone().unwrap_or_default();
        let every = console.sample_every;
        let keep = (console.retention.as_millis() / every.as_millis()).max(1) as usize;
        let mut history = History {
            keep,
            points: HashMap::new(),
        };
        let mut tick = Ticker::every(every);
        while tick.tick_until(&shutdown).await {
            let started = Instant::now();
            let (redis, clickhouse) = tokio::join!(
                sample_redis(&client, &config, &mut history),
                sample_clickhouse(&config),
            );
            let mut snap = match redis {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "console sampler: reading Redis failed");
                    let mut last = (*self.snapshot()).clone();
                    last.error = Some(format!("reading Redis failed: {e}"));
                    self.publish(last);
                    continue;
                }
            };
            let (endpoints, stuck) = clickhouse;
            snap.endpoints = endpoints;
            for f in &mut snap.flows {
                // An unreadable table says more than a refused insert.
                f.stuck = stuck.get(&f.name).cloned().or(f.stuck.take());
            }
            snap.taken_at_ms = now_ms();
            snap.took_ms = started.elapsed().as_millis() as u64;
            snap.sample_every_ms = every.as_millis() as u64;
            self.publish(snap);
        }
    }
}

/// `entries-added` of XINFO STREAM (0 for a stream that does not exist).
async fn entries_added(client: &Client, stream: &str) -> Result<u64, StreamError> {
    let frame = match commands::info(client, "STREAM", &[stream]).await {
        Ok(f) => f,
        Err(StreamError::Reply(m)) if m.contains("no such key") => return Ok(0),
        Err(e) => return Err(e),
    };
    for (k, v) in reply::key_values(frame, "XINFO STREAM")? {
        if k == "entries-added" {
            return Ok(reply::int_of(&v, "XINFO STREAM")?.max(0) as u64);
        }
    }
    Ok(0)
}

/// How many delayed jobs wait for `stream`, and when the first is due.
pub(crate) async fn delayed_of(client: &Client, stream: &str) -> Result<DelayedView, StreamError> {
    let key = delayed::set_key(stream);
    let count: u64 = client.zcard(&key).await?;
    // Members are MessagePack (binary): read the reply as values.
    let first: Vec<fred::types::Value> = if count > 0 {
        client.zrange(&key, 0, 0, None, false, None, true).await?
    } else {
        Vec::new()
    };
    Ok(DelayedView {
        stream: stream.to_string(),
        count,
        next_due_ms: first.get(1).and_then(|s| s.as_f64()).map(|s| s as u64),
    })
}

fn sink_label(f: &FlowConfig) -> String {
    match &f.sink {
        SinkConfig::Clickhouse { table, .. } => format!("ClickHouse table {table}"),
        SinkConfig::Stream(_) => "streams".to_string(),
    }
}

async fn sample_redis(
    client: &Client,
    config: &Config,
    history: &mut History,
) -> Result<Snapshot, StreamError> {
    let sharder = Sharder::new(config);
    let mut snap = Snapshot::default();
    let mut delayed: HashMap<String, DelayedView> = HashMap::new();
    for f in &config.flows {
        let dead = f.dead_letter_stream();
        let mut view = FlowView {
            name: f.name.clone(),
            group: f.group.clone(),
            sink: sink_label(f),
            dead_letter_length: commands::len(client, &dead).await?,
            dead_letter_stream: dead.clone(),
            stuck: stuck_record(client, &f.name).await,
            streams: Vec::new(),
        };
        for base in &f.base_streams {
            let mut shards = Vec::new();
            let (mut added, mut waiting) = (0u64, 0u64);
            for shard in sharder.shards_of(base) {
                shards.push(status::stream_status(client, &f.name, &shard, &f.group, &dead).await?);
                added += entries_added(client, &shard).await?;
                let d = delayed_of(client, &shard).await?;
                waiting += d.count;
                delayed.insert(shard.clone(), d);
            }
            let mut s = StreamView {
                name: base.clone(),
                group_exists: shards.iter().any(|s| s.group_exists),
                length: shards.iter().map(|s| s.length).sum(),
                lag: shards.iter().map(|s| s.lag).sum(),
                lag_exact: shards.iter().all(|s| s.lag_source.is_exact()),
                lag_seconds: shards.iter().map(|s| s.lag_seconds).fold(0.0, f64::max),
                pending: shards.iter().map(|s| s.pending).sum(),
                oldest_pending_idle_seconds: shards
                    .iter()
                    .map(|s| s.oldest_pending_idle_seconds)
                    .fold(0.0, f64::max),
                consumers: merge_consumers(&shards),
                delayed: waiting,
                in_rate: None,
                out_rate: None,
                in_history: Vec::new(),
                out_history: Vec::new(),
                shards: Vec::new(),
            };
            let (ins, outs) = history.record(
                &f.name,
                base,
                Point {
                    at: Instant::now(),
                    added,
                    lag: s.lag,
                    pending: s.pending,
                },
            );
            s.in_rate = ins.last().copied();
            s.out_rate = outs.last().copied();
            s.in_history = ins;
            s.out_history = outs;
            if sharder.is_sharded(base) {
                s.shards = shards;
            }
            view.streams.push(s);
        }
        snap.flows.push(view);
    }
    for stream in delayed::streams(client)
        .await
        .map_err(|e| StreamError::Reply(e.to_string()))?
    {
        if let std::collections::hash_map::Entry::Vacant(slot) = delayed.entry(stream) {
            let d = delayed_of(client, slot.key()).await?;
            slot.insert(d);
        }
    }
    let mut delayed: Vec<DelayedView> = delayed.into_values().collect();
    delayed.sort_by(|a, b| a.stream.cmp(&b.stream));
    snap.delayed = delayed;
    Ok(snap)
}

/// Consumers of all shards by name: pending summed, idle the least.
fn merge_consumers(shards: &[StreamStatus]) -> Vec<ConsumerInfo> {
    let mut out: Vec<ConsumerInfo> = Vec::new();
    for c in shards.iter().flat_map(|s| &s.consumers) {
        match out.iter_mut().find(|o| o.name == c.name) {
            Some(o) => {
                o.pending += c.pending;
                o.idle_ms = o.idle_ms.min(c.idle_ms);
            }
            None => out.push(c.clone()),
        }
    }
    out
}

/// The oldest record of a replica whose inserts into `flow`'s table are
/// refused for every row (`sink::stuck`), as `sluice status` prints it; None
/// when there is none or it cannot be read (the overview shows the rest).
async fn stuck_record(client: &Client, flow: &str) -> Option<String> {
    let now = now_ms();
    match stuck::list(client, flow, now).await {
        Ok(records) => records.first().map(|r| status::render_stuck(flow, r, now)),
        Err(e) => {
            tracing::warn!(flow, error = %e, "console sampler: reading the stuck record failed");
            None
        }
    }
}

/// Endpoint health, and the flows whose table cannot be read on an
/// endpoint that is up (flow name → error).
async fn sample_clickhouse(config: &Config) -> (Vec<EndpointStatus>, HashMap<String, String>) {
    let Some(ch) = &config.clickhouse else {
        return (Vec::new(), HashMap::new());
    };
    let endpoints = endpoints::probe(ch).await;
    let mut stuck = HashMap::new();
    let urls = ch.endpoint_urls();
    let Some(up) = endpoints.iter().position(|e| e.up) else {
        return (endpoints, stuck);
    };
    let client = endpoints::client_for(ch, urls[up]);
    for f in &config.flows {
        let SinkConfig::Clickhouse { table, .. } = &f.sink else {
            continue;
        };
        let (db, t) = split_table(&ch.database, table);
        let load = TableSchema::load(&client, db, t);
        match tokio::time::timeout(CLICKHOUSE_TIMEOUT, load).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                stuck.insert(f.name.clone(), e.to_string());
            }
            Err(_) => {
                stuck.insert(
                    f.name.clone(),
                    format!("reading the columns of {table} took over {CLICKHOUSE_TIMEOUT:?}"),
                );
            }
        }
    }
    (endpoints, stuck)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_what_came_in_and_what_left_the_backlog() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let points = [
            Point {
                at: at(0),
                added: 100,
                lag: 50,
                pending: 10,
            },
            // 20 added in 2 s; backlog grew by 5 + 5: 10 left it.
            Point {
                at: at(2),
                added: 120,
                lag: 55,
                pending: 15,
            },
            // nothing added; backlog shrank by 30: 30 out in 3 s.
            Point {
                at: at(5),
                added: 120,
                lag: 30,
                pending: 10,
            },
        ];
        let (ins, outs) = rates(&points);
        assert_eq!(ins, vec![10.0, 0.0]);
        assert_eq!(outs, vec![5.0, 10.0]);
    }

    #[test]
    fn history_keeps_the_retained_window() {
        let mut h = History {
            keep: 3,
            points: HashMap::new(),
        };
        let t0 = Instant::now();
        let mut last = (Vec::new(), Vec::new());
        for i in 0..10u64 {
            last = h.record(
                "f",
                "s",
                Point {
                    at: t0 + Duration::from_secs(i),
                    added: i * 10,
                    lag: 0,
                    pending: 0,
                },
            );
        }
        assert_eq!(last.0, vec![10.0, 10.0, 10.0]);
    }
}
