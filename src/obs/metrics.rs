//! Prometheus metrics (`sluice_` prefix, base units, bounded labels: flow,
//! stream, group, sink, reason, kind — never ids) and the `/metrics` endpoint.
//!
//! Two kinds of metric:
//! - counters and histograms, updated by every replica on its hot path
//!   through [`FlowMetrics`]: handles resolved once per flow, so a message
//!   costs an atomic add (or nothing, when metrics are off), never a label
//!   lookup;
//! - per-stream gauges (length, lag, pending, …) sampled from Redis by the one
//!   replica holding the sampler lease (see [`crate::obs::status`]).
//!
//! Metrics are recorded only when `[metrics] listen` is set: without an
//! endpoint nobody can read them, so the hot path skips them entirely.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::obs::readiness::Readiness;
use crate::redis::acks::Acks;
use crate::redis::Message;

/// Dead-letter reasons (the `reason` label), created at zero for every flow
/// so that `increase()` sees the first dead letter too.
pub(crate) const DEAD_LETTER_REASONS: &[&str] = &[
    "convert",
    "rejected",
    "max_deliveries",
    "payload",
    "oversized",
];

/// Sink error kinds (the `kind` label of `sluice_sink_errors_total`).
pub(crate) const SINK_ERROR_KINDS: &[&str] = &["retry", "bisect"];

pub struct Metrics {
    pub registry: Registry,
    pub messages_read: IntCounterVec,
    pub messages_acked: IntCounterVec,
    pub messages_claimed: IntCounterVec,
    pub messages_retried: IntCounterVec,
    pub messages_dead_lettered: IntCounterVec,
    pub messages_lost: IntCounterVec,
    pub sink_rows: IntCounterVec,
    pub sink_bytes: IntCounterVec,
    pub sink_errors: IntCounterVec,
    pub insert_duration: HistogramVec,
    pub batch_rows: HistogramVec,
    pub end_to_end_latency: HistogramVec,
    pub stream_length: IntGaugeVec,
    pub group_lag: IntGaugeVec,
    pub group_pending: IntGaugeVec,
    pub group_oldest_pending_idle: GaugeVec,
    pub group_lag_seconds: GaugeVec,
    pub group_consumers: IntGaugeVec,
    pub dead_letter_length: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub endpoint_up: IntGaugeVec,
    pub endpoint_inserts: IntCounterVec,
    pub endpoint_rows: IntCounterVec,
    pub endpoint_errors: IntCounterVec,
    pub stream_sink_targets: IntGaugeVec,
    pub stream_sink_targets_evicted: IntCounterVec,
    pub sink_stuck_since: IntGaugeVec,
    pub exactly_once_open_batches: IntGaugeVec,
    /// Insert budget and adaptive batches ([`crate::sink::clickhouse::pacing`]).
    pub pacing: PacingVecs,
    pub recovery_tasks: IntGaugeVec,
}

/// The pacing metric families of the insert budget and adaptive batches
/// ([`crate::sink::clickhouse::pacing`]), registered once in [`Metrics`].
pub struct PacingVecs {
    pub(crate) waits: IntCounterVec,
    pub(crate) wait_seconds: CounterVec,
    pub(crate) full_waits: IntCounterVec,
    pub(crate) scale: GaugeVec,
    pub(crate) max_rows: IntGaugeVec,
    pub(crate) max_wait: GaugeVec,
    pub(crate) pressure: IntGaugeVec,
}

impl PacingVecs {
    pub(crate) fn register(r: &Registry) -> PacingVecs {
        let flow = &["flow"];
        let wait_seconds = CounterVec::new(
            Opts::new(
                "sluice_insert_budget_wait_seconds_total",
                "Time batches were held past max_wait for their slot in the table's insert budget (filling meanwhile).",
            ),
            flow,
        )
        .expect("valid metric");
        r.register(Box::new(wait_seconds.clone()))
            .expect("unique metric");
        PacingVecs {
            waits: counter(
                r,
                "sluice_insert_budget_waits_total",
                "Batches that had to wait for a slot in the table's insert budget.",
                flow,
            ),
            wait_seconds,
            full_waits: counter(
                r,
                "sluice_insert_budget_full_waits_total",
                "Batches that filled up (max_rows / max_bytes) before their budget slot and waited for it with reads stopped.",
                flow,
            ),
            scale: gauge(
                r,
                "sluice_batch_scale",
                "Factor applied to the batch limits because ClickHouse signals pressure (1 = as configured).",
                flow,
            ),
            max_rows: int_gauge(
                r,
                "sluice_batch_effective_max_rows",
                "batch.max_rows in effect (configured × sluice_batch_scale).",
                flow,
            ),
            max_wait: gauge(
                r,
                "sluice_batch_effective_max_wait_seconds",
                "batch.max_wait in effect (configured × sluice_batch_scale).",
                flow,
            ),
            pressure: int_gauge(
                r,
                "sluice_clickhouse_pressure",
                "Pressure ClickHouse signals to the flow: 0 calm, 1 slow inserts, 2 TOO_MANY_PARTS.",
                flow,
            ),
        }
    }
}

pub(crate) fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

pub(crate) fn int_gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

pub(crate) fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(pc));
        }
        let secs = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ];
        let rows = prometheus::exponential_buckets(1.0, 4.0, 10).expect("buckets");
        Arc::new(Metrics {
            messages_read: counter(
                &r,
                "sluice_messages_read_total",
                "Entries read with XREADGROUP.",
                &["flow", "stream"],
            ),
            messages_acked: counter(
                &r,
                "sluice_messages_acked_total",
                "Entries acknowledged after their sink confirmed them.",
                &["flow", "stream"],
            ),
            messages_claimed: counter(
                &r,
                "sluice_messages_claimed_total",
                "Entries taken over from idle consumers with XAUTOCLAIM.",
                &["flow", "stream"],
            ),
            messages_retried: counter(
                &r,
                "sluice_messages_retried_total",
                "Messages whose insert is being retried after a transient error.",
                &["flow"],
            ),
            messages_dead_lettered: counter(
                &r,
                "sluice_messages_dead_lettered_total",
                "Messages moved to the dead-letter stream.",
                &["flow", "reason"],
            ),
            messages_lost: counter(
                &r,
                "sluice_messages_lost_total",
                "Pending entries deleted from the stream before delivery (XAUTOCLAIM deleted ids).",
                &["flow", "stream"],
            ),
            sink_rows: counter(
                &r,
                "sluice_sink_rows_total",
                "Rows confirmed by the sink.",
                &["flow", "sink"],
            ),
            sink_bytes: counter(
                &r,
                "sluice_sink_bytes_total",
                "Uncompressed bytes sent to the sink in confirmed inserts.",
                &["flow", "sink"],
            ),
            sink_errors: counter(
                &r,
                "sluice_sink_errors_total",
                "Failed inserts by kind (retry, bisect).",
                &["flow", "sink", "kind"],
            ),
            insert_duration: histogram(
                &r,
                "sluice_insert_duration_seconds",
                "Time for one insert, send to confirmation.",
                &["flow", "sink"],
                secs.clone(),
            ),
            batch_rows: histogram(
                &r,
                "sluice_batch_rows",
                "Rows per inserted batch.",
                &["flow"],
                rows,
            ),
            end_to_end_latency: histogram(
                &r,
                "sluice_end_to_end_latency_seconds",
                "From the entry id's timestamp to its ack.",
                &["flow"],
                secs,
            ),
            stream_length: int_gauge(
                &r,
                "sluice_stream_length",
                "XLEN of the stream.",
                &["flow", "stream"],
            ),
            group_lag: int_gauge(
                &r,
                "sluice_group_lag",
                "Entries not yet delivered to the group.",
                &["flow", "stream", "group"],
            ),
            group_pending: int_gauge(
                &r,
                "sluice_group_pending",
                "Entries delivered but not acknowledged.",
                &["flow", "stream", "group"],
            ),
            group_oldest_pending_idle: gauge(
                &r,
                "sluice_group_oldest_pending_idle_seconds",
                "Idle time of the oldest pending entry.",
                &["flow", "stream", "group"],
            ),
            group_lag_seconds: gauge(
                &r,
                "sluice_group_lag_seconds",
                "Age of the oldest undelivered entry, from its id.",
                &["flow", "stream", "group"],
            ),
            group_consumers: int_gauge(
                &r,
                "sluice_group_consumers",
                "Consumers in the group.",
                &["flow", "stream", "group"],
            ),
            dead_letter_length: int_gauge(
                &r,
                "sluice_dead_letter_length",
                "XLEN of the flow's dead-letter stream.",
                &["flow", "stream"],
            ),
            build_info: int_gauge(
                &r,
                "sluice_build_info",
                "Always 1; the version label tells which build runs.",
                &["version"],
            ),
            endpoint_up: int_gauge(
                &r,
                "sluice_clickhouse_endpoint_up",
                "1 while the ClickHouse endpoint takes inserts, 0 while it is marked down.",
                &["flow", "endpoint"],
            ),
            endpoint_inserts: counter(
                &r,
                "sluice_clickhouse_endpoint_inserts_total",
                "Inserts the ClickHouse endpoint confirmed.",
                &["flow", "endpoint"],
            ),
            endpoint_rows: counter(
                &r,
                "sluice_clickhouse_endpoint_rows_total",
                "Rows in inserts the ClickHouse endpoint confirmed.",
                &["flow", "endpoint"],
            ),
            endpoint_errors: counter(
                &r,
                "sluice_clickhouse_endpoint_errors_total",
                "Failed inserts and health checks per ClickHouse endpoint, by kind (retry, bisect, health_check).",
                &["flow", "endpoint", "kind"],
            ),
            stream_sink_targets: int_gauge(
                &r,
                "sluice_stream_sink_targets",
                "Target streams a stream sink's router remembers (at most max_targets plus those of batches in flight).",
                &["flow"],
            ),
            stream_sink_targets_evicted: counter(
                &r,
                "sluice_stream_sink_targets_evicted_total",
                "Idle templated targets the router forgot because it held max_targets.",
                &["flow"],
            ),
            sink_stuck_since: int_gauge(
                &r,
                "sluice_sink_stuck_since_seconds",
                "Unix time since which the flow's inserts are refused with a table-level error (every row the same way; the batch is kept and retried, nothing dead-lettered); 0 while not stuck.",
                &["flow", "sink"],
            ),
            exactly_once_open_batches: int_gauge(
                &r,
                "sluice_exactly_once_open_batches",
                "Batches recorded in the flow's exactly-once ledger and not yet dropped (in flight, or left by a crash until recovered or expired).",
                &["flow"],
            ),
            pacing: PacingVecs::register(&r),
            recovery_tasks: int_gauge(
                &r,
                "sluice_recovery_tasks",
                "Exactly-once recovery tasks of the flow running in this process (each holds a dead replica's batch; capped).",
                &["flow"],
            ),
            registry: r,
        })
        .init_build_info()
    }

    fn init_build_info(self: Arc<Self>) -> Arc<Self> {
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        self
    }

    /// Drops every sampled gauge series: called when this replica stops
    /// holding the sampler lease, so that it does not go on exporting values
    /// frozen at the moment it lost it next to the new holder's live ones.
    pub fn reset_sampled(&self) {
        self.stream_length.reset();
        self.dead_letter_length.reset();
        self.group_lag.reset();
        self.group_pending.reset();
        self.group_oldest_pending_idle.reset();
        self.group_lag_seconds.reset();
        self.group_consumers.reset();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8 metrics")
    }
}

/// One flow's metric handles, resolved once when the flow opens.
///
/// `with_label_values` hashes the label values and takes a lock on every
/// call; at a few hundred thousand messages a second that is measurable, so
/// the hot path goes through these pre-resolved handles instead. Cloning is
/// cheap (an `Arc`). A disabled `FlowMetrics` records nothing.
#[derive(Clone, Default)]
pub struct FlowMetrics {
    inner: Option<Arc<FlowHandles>>,
}

struct FlowHandles {
    flow: String,
    metrics: Arc<Metrics>,
    streams: Vec<(Arc<str>, StreamHandles)>,
    retried: IntCounter,
    sink_rows: IntCounter,
    sink_bytes: IntCounter,
    insert_duration: Histogram,
    batch_rows: Histogram,
    end_to_end: Histogram,
    errors_retry: IntCounter,
    errors_bisect: IntCounter,
    dead_lettered: Vec<(&'static str, IntCounter)>,
    stuck_since: prometheus::IntGauge,
}

struct StreamHandles {
    read: IntCounter,
    acked: IntCounter,
    claimed: IntCounter,
    lost: IntCounter,
}

/// The `sink` label of the ClickHouse sink.
const SINK: &str = "clickhouse";

impl FlowMetrics {
    /// Handles for `flow` reading `streams`. Every series is created here, at
    /// zero, so rates and `increase()` work from the first event on.
    pub fn new(metrics: &Arc<Metrics>, flow: &str, streams: &[Arc<str>]) -> FlowMetrics {
        let m = metrics;
        let streams = streams
            .iter()
            .map(|s| {
                let l = [flow, s.as_ref()];
                let h = StreamHandles {
                    read: m.messages_read.with_label_values(&l),
                    acked: m.messages_acked.with_label_values(&l),
                    claimed: m.messages_claimed.with_label_values(&l),
                    lost: m.messages_lost.with_label_values(&l),
                };
                (s.clone(), h)
            })
            .collect();
        let error = |kind: &str| m.sink_errors.with_label_values(&[flow, SINK, kind]);
        let handles = FlowHandles {
            flow: flow.to_string(),
            metrics: m.clone(),
            streams,
            retried: m.messages_retried.with_label_values(&[flow]),
            sink_rows: m.sink_rows.with_label_values(&[flow, SINK]),
            sink_bytes: m.sink_bytes.with_label_values(&[flow, SINK]),
            insert_duration: m.insert_duration.with_label_values(&[flow, SINK]),
            batch_rows: m.batch_rows.with_label_values(&[flow]),
            end_to_end: m.end_to_end_latency.with_label_values(&[flow]),
            errors_retry: error(SINK_ERROR_KINDS[0]),
            errors_bisect: error(SINK_ERROR_KINDS[1]),
            dead_lettered: DEAD_LETTER_REASONS
                .iter()
                .map(|&r| (r, m.messages_dead_lettered.with_label_values(&[flow, r])))
                .collect(),
            stuck_since: m.sink_stuck_since.with_label_values(&[flow, SINK]),
        };
        FlowMetrics {
            inner: Some(Arc::new(handles)),
        }
    }

    /// Records nothing.
    pub fn disabled() -> FlowMetrics {
        FlowMetrics { inner: None }
    }

    /// The flow's name and the registry's metrics, for handles resolved
    /// elsewhere ([`crate::sink::clickhouse::pacing`]); None when metrics are off.
    pub fn shared(&self) -> Option<(&str, &Arc<Metrics>)> {
        let h = self.inner.as_ref()?;
        Some((&h.flow, &h.metrics))
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Messages carry a clone of the flow's own `Arc<str>`, so a pointer
    /// compare finds the stream; the string compare covers anything else.
    fn stream(&self, stream: &Arc<str>) -> Option<&StreamHandles> {
        let h = self.inner.as_ref()?;
        h.streams
            .iter()
            .find(|(s, _)| Arc::ptr_eq(s, stream))
            .or_else(|| h.streams.iter().find(|(s, _)| **s == **stream))
            .map(|(_, sh)| sh)
    }

    /// Open records in the flow's exactly-once ledger (sampled by the
    /// ledger's sweep; every replica sees the same shared ledger).
    pub fn exactly_once_open_batches(&self, open: u64) {
        let Some(h) = &self.inner else { return };
        h.metrics
            .exactly_once_open_batches
            .with_label_values(&[&h.flow])
            .set(open as i64);
    }

    /// Recovery tasks running now (rare: looked up by label).
    pub fn recovery_tasks(&self, running: usize) {
        let Some(h) = &self.inner else { return };
        h.metrics
            .recovery_tasks
            .with_label_values(&[&h.flow])
            .set(running as i64);
    }

    /// One XREADGROUP's entries: one add per stream, not per message.
    pub fn read(&self, entries: &[Message]) {
        let Some(h) = &self.inner else { return };
        if let [(_, only)] = h.streams.as_slice() {
            only.read.inc_by(entries.len() as u64);
            return;
        }
        for (name, sh) in &h.streams {
            let n = entries
                .iter()
                .filter(|m| Arc::ptr_eq(&m.stream, name) || *m.stream == **name)
                .count();
            if n > 0 {
                sh.read.inc_by(n as u64);
            }
        }
    }

    pub fn acked(&self, stream: &Arc<str>, n: usize) {
        if let Some(sh) = self.stream(stream) {
            sh.acked.inc_by(n as u64);
        }
    }

    pub fn claimed(&self, stream: &Arc<str>, n: usize) {
        if let Some(sh) = self.stream(stream) {
            sh.claimed.inc_by(n as u64);
        }
    }

    pub fn lost(&self, stream: &Arc<str>, n: usize) {
        if let Some(sh) = self.stream(stream) {
            sh.lost.inc_by(n as u64);
        }
    }

    /// A stream sink's router holds `held` targets after forgetting
    /// `evicted` idle ones. Rare (a new target, an eviction): labels are
    /// looked up here rather than pre-resolved.
    pub fn stream_sink_targets(&self, held: usize, evicted: usize) {
        let Some(h) = &self.inner else { return };
        let flow = [h.flow.as_str()];
        let m = &h.metrics;
        m.stream_sink_targets
            .with_label_values(&flow)
            .set(held as i64);
        m.stream_sink_targets_evicted
            .with_label_values(&flow)
            .inc_by(evicted as u64);
    }

    /// A confirmed insert of `rows` rows, `bytes` bytes, taking `took`.
    pub fn inserted(&self, rows: usize, bytes: usize, took: Duration) {
        let Some(h) = &self.inner else { return };
        h.insert_duration.observe(took.as_secs_f64());
        h.sink_rows.inc_by(rows as u64);
        h.sink_bytes.inc_by(bytes as u64);
        h.batch_rows.observe(rows as f64);
    }

    /// A transient insert error: the `rows` will be sent again.
    pub fn insert_retried(&self, rows: usize) {
        let Some(h) = &self.inner else { return };
        h.errors_retry.inc();
        h.retried.inc_by(rows as u64);
    }

    /// ClickHouse refused the data: the batch is bisected.
    pub fn insert_refused(&self) {
        if let Some(h) = &self.inner {
            h.errors_bisect.inc();
        }
    }

    /// The flow is stuck on a table-level error since `since` (None: no longer).
    pub fn stuck_since(&self, since: Option<SystemTime>) {
        let Some(h) = &self.inner else { return };
        let secs = since
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs().max(1));
        h.stuck_since.set(secs as i64);
    }

    pub fn dead_lettered(&self, reason: &'static str) {
        let Some(h) = &self.inner else { return };
        match h.dead_lettered.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => c.inc(),
            // A reason added without updating DEAD_LETTER_REASONS still counts.
            None => h
                .metrics
                .messages_dead_lettered
                .with_label_values(&[h.flow.as_str(), reason])
                .inc(),
        }
    }

    /// End-to-end latency of acked messages: now minus each id's milliseconds.
    /// Observed into a thread-local buffer and flushed once per call, so a
    /// batch costs one round of atomics, not one per message.
    pub fn end_to_end(&self, acked: &Acks) {
        let Some(h) = &self.inner else { return };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let local = h.end_to_end.local();
        for ms in acked.id_millis() {
            local.observe(now_ms.saturating_sub(ms) as f64 / 1000.0);
        }
        local.flush();
    }
}

/// Serves `/metrics`, `/healthz` (200 while the process runs) and
/// `/readyz` (200 once every flow runs, else 503 naming what each waits
/// for) until `shutdown`.
pub(crate) async fn serve(
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness.check() {
                        Ok(()) => (axum::http::StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics() {
        let m = Metrics::new();
        m.messages_read.with_label_values(&["f", "s"]).inc_by(3);
        let text = m.render();
        assert!(
            text.contains("sluice_messages_read_total{flow=\"f\",stream=\"s\"} 3"),
            "{text}"
        );
    }
}
