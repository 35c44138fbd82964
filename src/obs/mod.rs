//! Observability: Prometheus metrics, logging and traces, readiness, and
//! the group-state sampling behind `sluice status` and the lag gauges.

pub(crate) mod metrics;
pub(crate) mod readiness;
pub(crate) mod status;
pub(crate) mod telemetry;
