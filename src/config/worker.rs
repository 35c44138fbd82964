//! `[worker]` (consumer naming, shutdown, blocking reads) and `[metrics]`:
//! the settings of the worker process itself.

use std::time::Duration;

use serde::Deserialize;

use super::{key_error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Consumer name prefix; the full name is `{prefix}-{pid}-{random}`.
    /// Defaults to the host name.
    #[serde(default)]
    pub consumer_prefix: Option<String>,
    /// On SIGTERM/SIGINT: time allowed to finish and ack the batch in hand.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Longest single XREADGROUP BLOCK; bounds how long shutdown waits for a read.
    #[serde(default = "default_block", with = "humantime_serde")]
    pub block: Duration,
    /// Consumers idle this long with nothing pending are deleted from their group.
    #[serde(default = "default_prune_idle", with = "humantime_serde")]
    pub prune_idle: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            consumer_prefix: None,
            shutdown_timeout: default_shutdown_timeout(),
            block: default_block(),
            prune_idle: default_prune_idle(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` for `/metrics`; unset = no metrics endpoint, and no
    /// metrics recorded at all (the hot path skips them).
    #[serde(default)]
    pub listen: Option<String>,
    /// How often the replica holding the sampler lease reads every stream's
    /// length, lag, pending and consumers from Redis into the gauges.
    #[serde(default = "default_sample_every", with = "humantime_serde")]
    pub sample_every: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            sample_every: default_sample_every(),
        }
    }
}

impl WorkerConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.block.is_zero() {
            return Err(key_error(
                "worker.block",
                "must be > 0 (0 would block forever)",
            ));
        }
        Ok(())
    }
}

impl MetricsConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(listen) = &self.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(key_error(
                    "metrics.listen",
                    "must be host:port, e.g. 0.0.0.0:9464",
                ));
            }
        }
        if self.sample_every < Duration::from_millis(100) {
            return Err(key_error("metrics.sample_every", "must be at least 100ms"));
        }
        Ok(())
    }
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_block() -> Duration {
    Duration::from_millis(500)
}
fn default_prune_idle() -> Duration {
    Duration::from_secs(3600)
}
fn default_sample_every() -> Duration {
    Duration::from_secs(5)
}
