//! sluice: stateless workers that move Redis Stream entries into ClickHouse
//! through consumer groups, with at-least-once delivery (ack after insert).
//!
//! Map of the crate:
//! - [`config`]: TOML + `SLUICE_…` env overrides, validated; errors name the key.
//! - [`stream`]: Redis Streams — message model, raw reply parsing, the
//!   commands (XREADGROUP, XACK, XAUTOCLAIM, …), dead letters, group upkeep.
//! - [`schema`]: a ClickHouse table's columns and types, from `system.columns`.
//! - [`convert`]: field value → column value rules (the reasons bad rows get).
//! - [`native`]: the dynamic Native-format block encoder.
//! - [`payload`]: JSON / MessagePack payload fields expanded into columns.
//! - [`batch`]: field→column mapping and batches closed by rows/bytes/time.
//! - [`sink`]: the ClickHouse sink, retry-or-bisect decision, commit + ack.
//! - [`flow`]: one flow's reader, claim loop, batcher and committer tasks.
//! - [`worker`]: runs all flows; shutdown with a deadline.
//! - [`status`]: per-stream group state for `sluice status` and the gauges.
//! - [`check`]: `sluice check` — validate, connect, show the plan.
//! - [`metrics`]: Prometheus registry and `/metrics`.
//! - [`telemetry`]: logging setup.

pub mod batch;
pub mod check;
pub mod config;
pub mod convert;
pub mod flow;
pub mod metrics;
pub mod native;
pub mod payload;
pub mod schema;
pub mod sink;
pub mod status;
pub mod stream;
pub mod telemetry;
pub mod worker;

pub use worker::run;
