//! Source metrics (`sluice_source_*`), registered once per process in the
//! worker's registry. Labels: `source`, and on the row counter the
//! connections (`clickhouse`, `redis`) and the target `stream`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::obs::metrics::Metrics;

/// The metric families, created and registered once.
pub(crate) struct Families {
    rows: IntCounterVec,
    dead: IntCounterVec,
    pages: IntCounterVec,
    errors: IntCounterVec,
    active: IntGaugeVec,
    paused: IntGaugeVec,
}

fn counter(metrics: &Metrics, name: &str, help: &str, labels: &[&str]) -> Option<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    metrics.registry.register(Box::new(c.clone())).ok()?;
    Some(c)
}

fn gauge(metrics: &Metrics, name: &str, help: &str) -> Option<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), &["source"]).expect("valid metric");
    metrics.registry.register(Box::new(g.clone())).ok()?;
    Some(g)
}

impl Families {
    /// None when already registered in this registry (a second worker run
    /// in one process) — its sources then record nothing.
    pub(crate) fn register(metrics: &Metrics) -> Option<Families> {
        Some(Families {
            rows: counter(
                metrics,
                "sluice_source_rows_total",
                "Rows a source wrote to its stream (confirmed, cursor moved).",
                &["source", "clickhouse", "redis", "stream"],
            )?,
            dead: counter(
                metrics,
                "sluice_source_dead_lettered_total",
                "Rows a source could not write as entries, sent to its dead-letter stream.",
                &["source"],
            )?,
            pages: counter(
                metrics,
                "sluice_source_pages_total",
                "Page queries a source ran.",
                &["source"],
            )?,
            errors: counter(
                metrics,
                "sluice_source_errors_total",
                "Failed page queries and Redis writes of a source (retried).",
                &["source"],
            )?,
            active: gauge(
                metrics,
                "sluice_source_active",
                "1 on the replica holding the source's lease.",
            )?,
            paused: gauge(
                metrics,
                "sluice_source_paused",
                "1 while the source waits for room under its stream's max_len.",
            )?,
        })
    }

    pub(crate) fn handles(
        &self,
        source: &str,
        clickhouse: &str,
        redis: &str,
        stream: &str,
    ) -> Handles {
        Handles {
            rows: Some(
                self.rows
                    .with_label_values(&[source, clickhouse, redis, stream]),
            ),
            dead: Some(self.dead.with_label_values(&[source])),
            pages: Some(self.pages.with_label_values(&[source])),
            errors: Some(self.errors.with_label_values(&[source])),
            active: Some(self.active.with_label_values(&[source])),
            paused: Some(self.paused.with_label_values(&[source])),
        }
    }
}

/// One source's handles; the default records nothing.
#[derive(Clone, Default)]
pub(crate) struct Handles {
    rows: Option<IntCounter>,
    dead: Option<IntCounter>,
    pages: Option<IntCounter>,
    errors: Option<IntCounter>,
    active: Option<IntGauge>,
    paused: Option<IntGauge>,
}

impl Handles {
    pub(crate) fn written(&self, rows: usize, dead: usize) {
        if let (Some(r), Some(d)) = (&self.rows, &self.dead) {
            r.inc_by(rows as u64);
            d.inc_by(dead as u64);
        }
    }

    pub(crate) fn page(&self) {
        if let Some(p) = &self.pages {
            p.inc();
        }
    }

    pub(crate) fn error(&self) {
        if let Some(e) = &self.errors {
            e.inc();
        }
    }

    pub(crate) fn active(&self, on: bool) {
        if let Some(a) = &self.active {
            a.set(i64::from(on));
        }
    }

    pub(crate) fn paused(&self, on: bool) {
        if let Some(p) = &self.paused {
            p.set(i64::from(on));
        }
    }
}
