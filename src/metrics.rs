//! Prometheus metrics (`sluice_` prefix, base units, bounded labels: flow,
//! stream, group, sink, reason — never ids) and the `/metrics` endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio_util::sync::CancellationToken;

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
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn int_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
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
            registry: r,
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8 metrics")
    }
}

/// Serves `/metrics` (and `/healthz`) until `shutdown`.
pub async fn serve(
    metrics: Arc<Metrics>,
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
        .route("/healthz", get(|| async { "ok" }));
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
