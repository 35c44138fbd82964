//! Observability: Prometheus metrics, logging and traces, readiness, and
//! the group-state sampling behind `sluice status` and the lag gauges.

pub mod metrics;
pub mod readiness;
pub mod status;
pub mod telemetry;
