//! Adaptive batches: how hard ClickHouse is pushing back, judged from the
//! outcome of each insert, and how much larger (and so rarer) batches
//! should be because of it. Pure decision logic; the sink feeds it
//! ([`crate::sink::clickhouse`]) and the batcher reads the scale
//! ([`crate::sink::clickhouse::pacing`]).
//!
//! Signals:
//! - **TOO_MANY_PARTS** (code 252, other than "too many partitions for
//!   single INSERT block", which is about the rows): the table has more
//!   active parts in a partition than `parts_to_throw_insert`. The scale
//!   doubles at once.
//! - **Slow inserts**: ClickHouse delays an insert ("delaying inserting
//!   block", up to `max_delay_to_insert`, 1 s by default) once a partition
//!   has `parts_to_delay_insert` parts, and an overloaded server answers
//!   late. An insert slower than [`SLOW_FACTOR`] × the calm baseline and
//!   at least [`SLOW_MARGIN`] more, both times the current scale (a batch
//!   `k` times larger may take `k` times as long), grows the scale by half.
//!   The baseline is the moving average of insert times while the scale is
//!   1 and nothing signals pressure.
//! - **Calm**: after [`RELAX_AFTER`] calm inserts in a row the scale halves,
//!   until it is back to 1 (the configured limits).
//!
//! Other errors (an outage, bad rows) say nothing about parts or merges and
//! are ignored here; the retry path has its own backoff.

use std::time::Duration;

use crate::sink::clickhouse::classify::{exception_code, is_partition_limit};

/// An insert slower than this many times the baseline is a pressure signal…
pub(crate) const SLOW_FACTOR: f64 = 3.0;
/// …and only if it is also at least this much slower (a 2 ms insert taking
/// 7 ms is noise, not pressure).
pub(crate) const SLOW_MARGIN: Duration = Duration::from_millis(250);
/// Calm inserts in a row before the scale halves.
pub(crate) const RELAX_AFTER: u32 = 4;
/// Weight of the newest calm insert in the baseline.
const BASELINE_WEIGHT: f64 = 0.1;

/// What one insert told about the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Signal {
    /// Confirmed after `took`.
    Inserted { took: Duration },
    /// Refused with TOO_MANY_PARTS.
    TooManyParts,
    /// Failed otherwise: no information about pressure.
    Failed,
}

/// The signal of one insert that ended with `result` after `took`.
pub(crate) fn signal(result: &Result<(), clickhouse::error::Error>, took: Duration) -> Signal {
    match result {
        Ok(()) => Signal::Inserted { took },
        Err(clickhouse::error::Error::BadResponse(text))
            if exception_code(text) == Some(252) && !is_partition_limit(text) =>
        {
            Signal::TooManyParts
        }
        Err(_) => Signal::Failed,
    }
}

/// The pressure the server signals (the `sluice_clickhouse_pressure` gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Nothing signalled (or calm again for [`RELAX_AFTER`] inserts).
    Calm = 0,
    /// Inserts slower than the baseline allows (delayed inserts, overload).
    Slow = 1,
    /// The server refused an insert with TOO_MANY_PARTS.
    TooManyParts = 2,
}

/// The adaptive scale of one flow's batch limits.
#[derive(Debug, Clone)]
pub(crate) struct Pressure {
    max_scale: f64,
    scale: f64,
    state: State,
    /// Seconds a calm insert takes at scale 1; None before the first.
    baseline: Option<f64>,
    calm_run: u32,
}

impl Pressure {
    /// Scales up to `max_scale` (1 = adaptive batches off: the scale stays 1).
    pub(crate) fn new(max_scale: f64) -> Pressure {
        Pressure {
            max_scale: max_scale.max(1.0),
            scale: 1.0,
            state: State::Calm,
            baseline: None,
            calm_run: 0,
        }
    }

    /// The factor applied to `batch.max_rows`, `max_bytes` and `max_wait`.
    pub(crate) fn scale(&self) -> f64 {
        self.scale
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// Whether an insert that took `took` is a pressure signal.
    fn is_slow(&self, took: Duration) -> bool {
        let Some(base) = self.baseline else {
            return false;
        };
        let took = took.as_secs_f64();
        let allowed = (SLOW_FACTOR * base).max(base + SLOW_MARGIN.as_secs_f64());
        took > allowed * self.scale
    }

    fn grow(&mut self, by: f64, state: State) {
        self.scale = (self.scale * by).min(self.max_scale);
        self.state = state;
        self.calm_run = 0;
    }

    /// Takes one insert's outcome into account; true if the scale changed.
    pub(crate) fn observe(&mut self, signal: Signal) -> bool {
        let before = self.scale;
        match signal {
            Signal::Failed => {}
            Signal::TooManyParts => self.grow(2.0, State::TooManyParts),
            Signal::Inserted { took } if self.is_slow(took) => self.grow(1.5, State::Slow),
            Signal::Inserted { took } => {
                if self.scale == 1.0 {
                    let t = took.as_secs_f64();
                    self.baseline = Some(match self.baseline {
                        None => t,
                        Some(b) => b + BASELINE_WEIGHT * (t - b),
                    });
                }
                self.calm_run += 1;
                if self.calm_run >= RELAX_AFTER {
                    self.calm_run = 0;
                    self.state = State::Calm;
                    self.scale = (self.scale / 2.0).max(1.0);
                }
            }
        }
        self.scale != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: u64) -> Signal {
        Signal::Inserted {
            took: Duration::from_millis(ms),
        }
    }

    fn calm(p: &mut Pressure, n: u32, ms: u64) {
        for _ in 0..n {
            p.observe(ok(ms));
        }
    }

    #[test]
    fn too_many_parts_is_told_from_the_partition_limit() {
        use clickhouse::error::Error;
        let t = Duration::from_millis(3);
        let parts = "Code: 252, e.displayText() = DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts.";
        let partitions = "Code: 252, e.displayText() = DB::Exception: Too many partitions for single INSERT block (more than 100).";
        assert_eq!(
            signal(&Err(Error::BadResponse(parts.into())), t),
            Signal::TooManyParts
        );
        assert_eq!(
            signal(&Err(Error::BadResponse(partitions.into())), t),
            Signal::Failed
        );
        assert_eq!(signal(&Err(Error::TimedOut), t), Signal::Failed);
        assert_eq!(signal(&Ok(()), t), Signal::Inserted { took: t });
    }

    #[test]
    fn too_many_parts_doubles_up_to_the_bound() {
        let mut p = Pressure::new(8.0);
        assert!(p.observe(Signal::TooManyParts));
        assert_eq!((p.scale(), p.state()), (2.0, State::TooManyParts));
        p.observe(Signal::TooManyParts);
        p.observe(Signal::TooManyParts);
        assert!(!p.observe(Signal::TooManyParts), "already at the bound");
        assert_eq!(p.scale(), 8.0);
    }

    #[test]
    fn scale_one_means_off() {
        let mut p = Pressure::new(1.0);
        assert!(!p.observe(Signal::TooManyParts));
        assert_eq!(p.scale(), 1.0);
        assert_eq!(p.state(), State::TooManyParts, "still reported");
    }

    #[test]
    fn a_slow_insert_grows_the_scale_by_half() {
        let mut p = Pressure::new(4.0);
        calm(&mut p, 10, 20);
        assert_eq!(p.scale(), 1.0);
        // 3 × 20 ms = 60 ms, but the margin asks for 270 ms.
        assert!(!p.observe(ok(200)));
        assert!(p.observe(ok(900)), "a delayed insert (~1 s)");
        assert_eq!((p.scale(), p.state()), (1.5, State::Slow));
    }

    #[test]
    fn a_larger_batch_may_take_longer_in_proportion() {
        let mut p = Pressure::new(8.0);
        calm(&mut p, 10, 100);
        p.observe(Signal::TooManyParts);
        p.observe(Signal::TooManyParts);
        assert_eq!(p.scale(), 4.0);
        // Allowed at scale 1: max(300, 350) = 350 ms; at scale 4: 1.4 s.
        assert!(!p.observe(ok(1_200)), "4× the rows in 12× the time is fine");
        assert!(p.observe(ok(1_500)));
        assert_eq!(p.scale(), 6.0);
    }

    #[test]
    fn the_first_insert_sets_the_baseline_and_is_never_slow() {
        let mut p = Pressure::new(4.0);
        assert!(!p.observe(ok(5_000)));
        assert_eq!(p.scale(), 1.0);
    }

    #[test]
    fn calm_inserts_relax_back_to_the_configured_size() {
        let mut p = Pressure::new(8.0);
        calm(&mut p, 3, 10);
        for _ in 0..3 {
            p.observe(Signal::TooManyParts);
        }
        assert_eq!(p.scale(), 8.0);
        calm(&mut p, RELAX_AFTER - 1, 10);
        assert_eq!(p.scale(), 8.0, "not yet");
        assert_eq!(p.state(), State::TooManyParts);
        calm(&mut p, 1, 10);
        assert_eq!((p.scale(), p.state()), (4.0, State::Calm));
        calm(&mut p, 2 * RELAX_AFTER, 10);
        assert_eq!(p.scale(), 1.0);
        calm(&mut p, 3 * RELAX_AFTER, 10);
        assert_eq!(p.scale(), 1.0, "never below the configured size");
    }

    #[test]
    fn pressure_interrupts_a_calm_run() {
        let mut p = Pressure::new(8.0);
        p.observe(Signal::TooManyParts);
        calm(&mut p, RELAX_AFTER - 1, 10);
        p.observe(Signal::TooManyParts);
        calm(&mut p, RELAX_AFTER - 1, 10);
        assert_eq!(p.scale(), 4.0, "the run started over");
    }

    #[test]
    fn other_failures_change_nothing() {
        let mut p = Pressure::new(8.0);
        p.observe(Signal::TooManyParts);
        calm(&mut p, RELAX_AFTER - 1, 10);
        assert!(!p.observe(Signal::Failed));
        calm(&mut p, 1, 10);
        assert_eq!(p.scale(), 1.0, "a failure neither grows nor resets the run");
    }

    #[test]
    fn the_baseline_is_learned_at_the_configured_size_only() {
        let mut p = Pressure::new(8.0);
        calm(&mut p, 5, 10);
        p.observe(Signal::TooManyParts);
        // Large batches at scale 2 take long; they must not raise the baseline.
        calm(&mut p, RELAX_AFTER - 1, 500);
        assert_eq!(p.scale(), 2.0);
        calm(&mut p, 1, 10);
        assert_eq!(p.scale(), 1.0);
        assert!(p.observe(ok(600)), "baseline still ~10 ms");
    }
}
