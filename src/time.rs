//! Time: the wall clock in milliseconds since the Unix epoch (the unit of
//! stream ids, schedule ticks, leases and records in Redis), and the ticker
//! that paces every periodic task (claim, keep-alive, samplers, promoter,
//! health checks).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::{interval, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Paces a periodic task: the first tick comes at once, and a late one
/// delays those after it rather than firing a burst to catch up (a pass
/// that overran needs no second pass straight after).
pub(crate) struct Ticker(Interval);

impl Ticker {
    pub(crate) fn every(period: Duration) -> Ticker {
        let mut tick = interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker(tick)
    }

    /// Waits for the next tick.
    pub(crate) async fn tick(&mut self) {
        self.0.tick().await;
    }

    /// Waits for the next tick; false, at once, when `shutdown` comes first.
    pub(crate) async fn tick_until(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = self.0.tick() => true,
            _ = shutdown.cancelled() => false,
        }
    }
}
