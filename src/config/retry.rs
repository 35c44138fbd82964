//! A flow's `retry = { … }`: the backoff policy for handler failures
//! retried through the delayed set (the retrying itself is
//! `crate::flow::retry`).
//!
//! Failure n (1-based) waits `min(max, base·2ⁿ⁻¹)` — or `base` when
//! `backoff = "fixed"` — and, with jitter, a uniformly random time between
//! half that and all of it.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackoffKind {
    #[default]
    Exponential,
    Fixed,
}

/// A flow's `retry = { … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default)]
    pub backoff: BackoffKind,
    /// The first delay.
    #[serde(default = "default_base", with = "humantime_serde")]
    pub base: Duration,
    /// No delay is longer.
    #[serde(default = "default_max", with = "humantime_serde")]
    pub max: Duration,
    /// Spread each delay uniformly over [½·d, d] so that failures of many
    /// messages at once do not come back at once.
    #[serde(default = "yes")]
    pub jitter: bool,
}

fn default_base() -> Duration {
    Duration::from_secs(1)
}
fn default_max() -> Duration {
    Duration::from_secs(300)
}
fn yes() -> bool {
    true
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            backoff: BackoffKind::Exponential,
            base: default_base(),
            max: default_max(),
            jitter: true,
        }
    }
}

impl RetryConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.base.is_zero() {
            return Err("`base` must be > 0".into());
        }
        if self.max < self.base {
            return Err("`max` must be at least `base`".into());
        }
        Ok(())
    }

    /// The delay before the retry after failure `failures` (1-based),
    /// without jitter.
    pub fn nominal_delay(&self, failures: u64) -> Duration {
        let d = match self.backoff {
            BackoffKind::Fixed => self.base,
            BackoffKind::Exponential => {
                let exp = failures.saturating_sub(1).min(40) as u32;
                self.base.saturating_mul(2u32.saturating_pow(exp.min(31)))
            }
        };
        d.min(self.max)
    }

    /// The shortest and longest delay after failure `failures`.
    pub fn delay_bounds(&self, failures: u64) -> (Duration, Duration) {
        let d = self.nominal_delay(failures);
        if self.jitter {
            (d / 2, d)
        } else {
            (d, d)
        }
    }

    /// The delay after failure `failures`, jittered.
    pub fn delay(&self, failures: u64) -> Duration {
        let (low, high) = self.delay_bounds(failures);
        let spread = (high - low).as_millis() as u64;
        if spread == 0 {
            low
        } else {
            low + Duration::from_millis(rand::random_range(0..=spread))
        }
    }
}
