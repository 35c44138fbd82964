//! When the batcher may seal a ClickHouse batch: the configured limits
//! scaled by the server's pressure ([`crate::sink::clickhouse::pressure`]), and the table's
//! fleet-wide insert budget ([`crate::sink::clickhouse::budget`]).
//!
//! Without a budget, a batch is sealed when full or `max_wait` after its
//! first message, as always (limits times the pressure scale, 1 unless
//! `sink.max_batch_scale` is set and the server pushes back).
//!
//! With a budget, a batch that is due (`max_wait` passed) reserves the
//! table's next slot and is sealed when the slot comes; meanwhile it goes on
//! filling, so a replica without a slot still takes rows instead of idling.
//! A batch that fills up (`max_rows` / `max_bytes`) before its slot waits
//! for the slot: the wait is bounded, since each replica holds at most one
//! reservation (at most `replicas / max_inserts_per_second`), and the reads
//! stop meanwhile as they do behind any slow sink (bounded channels), so
//! the backlog stays in Redis. If Redis cannot be asked, the batch is
//! sealed without a slot (a budget must not stall the flow: the acks need
//! Redis anyway). The last batch at shutdown is sealed at once.

use std::sync::{Arc, Mutex, OnceLock};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clickhouse::schema::TableSchema;
use crate::config::{BatchConfig, FlowConfig, SinkConfig};
use crate::obs::metrics::{FlowMetrics, PacingVecs};
use crate::sink::clickhouse::budget::{self, Budget};
use crate::sink::clickhouse::pressure::{Pressure, Signal, State};

/// One flow's pacing series.
struct Handles {
    waits: prometheus::IntCounter,
    wait_seconds: prometheus::Counter,
    full_waits: prometheus::IntCounter,
    max_rows: prometheus::IntGauge,
    max_wait: prometheus::Gauge,
}

impl Handles {
    fn new(v: &PacingVecs, flow: &str) -> Handles {
        let l = &[flow];
        Handles {
            waits: v.waits.with_label_values(l),
            wait_seconds: v.wait_seconds.with_label_values(l),
            full_waits: v.full_waits.with_label_values(l),
            max_rows: v.max_rows.with_label_values(l),
            max_wait: v.max_wait.with_label_values(l),
        }
    }
}

/// A flow's pressure, shared by its sink (which feeds it every insert's
/// outcome) and its batcher (which reads the scale). Exports the state and
/// the scale as they change, also while the batcher waits behind a retried
/// insert.
pub(crate) struct SharedPressure {
    pressure: Mutex<Pressure>,
    gauges: OnceLock<(prometheus::Gauge, prometheus::IntGauge)>,
}

impl SharedPressure {
    pub(crate) fn new(max_scale: f64) -> SharedPressure {
        SharedPressure {
            pressure: Mutex::new(Pressure::new(max_scale)),
            gauges: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pressure> {
        self.pressure.lock().expect("pressure poisoned")
    }

    /// Takes one insert's outcome into account.
    pub(crate) fn observe(&self, signal: Signal) {
        let mut p = self.lock();
        p.observe(signal);
        self.export(&p);
    }

    /// The scale and the state now.
    pub(crate) fn current(&self) -> (f64, State) {
        let p = self.lock();
        (p.scale(), p.state())
    }

    fn export(&self, p: &Pressure) {
        if let Some((scale, state)) = self.gauges.get() {
            scale.set(p.scale());
            state.set(p.state() as i64);
        }
    }

    /// Exports to these gauges from now on (the first call wins).
    fn export_to(&self, scale: prometheus::Gauge, state: prometheus::IntGauge) {
        if self.gauges.set((scale, state)).is_ok() {
            self.export(&self.lock());
        }
    }
}

/// The batcher's pacing: see the module docs.
pub(crate) struct Pacer {
    base: BatchConfig,
    budget: Option<Budget>,
    pressure: Arc<SharedPressure>,
    /// The limits in effect (base × scale) and the scale they were made for.
    limits: BatchConfig,
    scale: f64,
    /// The slot reserved for the open batch.
    slot: Option<Instant>,
    /// Ends a wait for a slot (the shutdown deadline).
    stop: CancellationToken,
    flow: String,
    /// None when metrics are off.
    handles: Option<Handles>,
}

impl Pacer {
    pub(crate) fn new(
        base: BatchConfig,
        budget: Option<Budget>,
        pressure: Arc<SharedPressure>,
        stop: CancellationToken,
        flow: &str,
        metrics: &FlowMetrics,
    ) -> Pacer {
        let handles = metrics.shared().map(|(flow, m)| {
            let v = &m.pacing;
            pressure.export_to(
                v.scale.with_label_values(&[flow]),
                v.pressure.with_label_values(&[flow]),
            );
            Handles::new(v, flow)
        });
        let mut pacer = Pacer {
            limits: base.clone(),
            base,
            budget,
            pressure,
            scale: 0.0, // set below
            slot: None,
            stop,
            flow: flow.to_string(),
            handles,
        };
        pacer.refresh();
        pacer
    }

    /// The pacer of `cfg`'s batches into `table`, scaled by the sink's
    /// `pressure`, its budget (if any) kept through `redis`.
    pub(crate) fn for_flow(
        cfg: &FlowConfig,
        table: &TableSchema,
        pressure: Arc<SharedPressure>,
        redis: &fred::prelude::Client,
        stop: CancellationToken,
        metrics: &FlowMetrics,
    ) -> Pacer {
        let budget = match &cfg.sink {
            SinkConfig::Clickhouse {
                max_inserts_per_second: Some(rate),
                clickhouse,
                ..
            } => {
                let key = budget::key(clickhouse.as_deref(), &table.database, &table.table);
                Some(Budget::new(redis.clone(), key, *rate))
            }
            _ => None,
        };
        Pacer::new(
            cfg.batch.clone(),
            budget,
            pressure,
            stop,
            &cfg.name,
            metrics,
        )
    }

    /// The limits in effect, as of the last [`refresh`](Self::refresh).
    pub(crate) fn limits(&self) -> &BatchConfig {
        &self.limits
    }

    /// Takes the pressure's current scale into the limits: once per chunk
    /// (one uncontended lock), not per message.
    pub(crate) fn refresh(&mut self) {
        let (scale, state) = self.pressure.current();
        if scale == self.scale {
            return;
        }
        if self.scale != 0.0 {
            tracing::info!(flow = %self.flow, scale, ?state, "ClickHouse pressure changed; batch limits scaled");
        }
        self.scale = scale;
        self.limits = scaled(&self.base, scale);
        if let Some(h) = &self.handles {
            h.max_rows.set(self.limits.max_rows as i64);
            h.max_wait.set(self.limits.max_wait.as_secs_f64());
        }
    }

    /// When an open batch (opened at `opened`) is next due: its reserved
    /// slot, else `max_wait` (in effect) after it opened.
    pub(crate) fn due(&self, opened: std::time::Instant) -> Instant {
        self.slot
            .unwrap_or_else(|| Instant::from_std(opened + self.limits.max_wait))
    }

    /// The open batch is due: true if it may be sealed now. With a budget
    /// and no slot yet, reserves one; false means "keep filling until
    /// [`due`](Self::due)".
    pub(crate) async fn may_seal(&mut self) -> bool {
        if self.budget.is_none() {
            return true;
        }
        match self.slot {
            Some(at) if Instant::now() >= at => {
                self.slot = None;
                true
            }
            Some(_) => false,
            None => {
                self.reserve().await;
                self.slot.is_none()
            }
        }
    }

    /// The open batch is full: waits for its slot (reserving one if it has
    /// none), bounded by the fleet's reservations, or until the shutdown
    /// deadline.
    pub(crate) async fn wait_for_slot(&mut self) {
        if self.budget.is_none() {
            return;
        }
        if self.slot.is_none() {
            self.reserve().await;
        }
        let Some(at) = self.slot.take() else { return };
        if Instant::now() < at {
            if let Some(h) = &self.handles {
                h.full_waits.inc();
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = self.stop.cancelled() => {}
            }
        }
    }

    async fn reserve(&mut self) {
        let Some(budget) = &self.budget else { return };
        match budget.reserve().await {
            Ok(wait) if wait.is_zero() => {}
            Ok(wait) => {
                self.slot = Some(Instant::now() + wait);
                if let Some(h) = &self.handles {
                    h.waits.inc();
                    h.wait_seconds.inc_by(wait.as_secs_f64());
                }
            }
            Err(e) => {
                tracing::warn!(flow = %self.flow, error = %e, "could not reserve a slot in the table's insert budget; inserting without one");
            }
        }
    }
}

/// `base` with every limit times `scale`.
fn scaled(base: &BatchConfig, scale: f64) -> BatchConfig {
    if scale == 1.0 {
        return base.clone();
    }
    BatchConfig {
        max_rows: (base.max_rows as f64 * scale).round() as usize,
        max_bytes: bytesize::ByteSize((base.max_bytes.as_u64() as f64 * scale).round() as u64),
        max_wait: base.max_wait.mul_f64(scale),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn base() -> BatchConfig {
        BatchConfig {
            max_rows: 1000,
            max_bytes: bytesize::ByteSize(1 << 20),
            max_wait: Duration::from_millis(200),
        }
    }

    fn pacer(pressure: &Arc<SharedPressure>) -> Pacer {
        Pacer::new(
            base(),
            None,
            pressure.clone(),
            CancellationToken::new(),
            "f",
            &FlowMetrics::disabled(),
        )
    }

    #[test]
    fn limits_follow_the_pressure_scale() {
        let pressure = Arc::new(SharedPressure::new(8.0));
        let mut p = pacer(&pressure);
        assert_eq!(p.limits().max_rows, 1000);
        pressure.observe(Signal::TooManyParts);
        assert_eq!(p.limits().max_rows, 1000, "until refreshed");
        p.refresh();
        let l = p.limits().clone();
        assert_eq!(l.max_rows, 2000);
        assert_eq!(l.max_bytes.as_u64(), 2 << 20);
        assert_eq!(l.max_wait, Duration::from_millis(400));
    }

    #[tokio::test]
    async fn without_a_budget_a_due_batch_is_sealed_at_once() {
        let pressure = Arc::new(SharedPressure::new(1.0));
        let mut p = pacer(&pressure);
        let opened = std::time::Instant::now();
        assert_eq!(
            p.due(opened),
            Instant::from_std(opened + Duration::from_millis(200))
        );
        assert!(p.may_seal().await);
        p.wait_for_slot().await;
    }
}
