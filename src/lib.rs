//! sluice: stateless workers that move Redis Stream entries into ClickHouse
//! (or other streams) through consumer groups, with at-least-once delivery
//! (ack after the sink confirmed) or, into ClickHouse, exactly-once.
//!
//! # Public API
//! A program that embeds sluice needs only what is re-exported here:
//! [`Config`] (loaded from TOML with [`Config::load`], or built from a
//! string with [`Config::from_toml_with_env`]; every section type is in
//! [`config`]), [`run`] / [`run_with_handlers`] (the worker, until its
//! token is cancelled), the [`Handler`] trait with [`Handlers`] and
//! [`HandlerError`], and the [`Message`] (its [`MessageFields`]) and
//! [`Fields`] a handler sees and returns ([`FieldPairs`] reads either).
//! [`cli::main`] is the whole `sluice` binary. [`testing`] re-exports
//! internals that the integration tests, benches and fuzz
//! targets drive directly; it is not a stable API. Everything else is
//! `pub(crate)`.
//!
//! # Following one message
//! `flow/mod.rs` wires a flow's tasks. An entry is read by `flow/read.rs`
//! (XREADGROUP on `redis/direct.rs`'s connection, its reply parsed there
//! straight into messages; `redis/resp.rs` is the wire) or taken over by
//! `flow/claim.rs` (XAUTOCLAIM/XCLAIM); `flow/admit.rs` decides whether it
//! is dead before anything looks at it (oversized, delivered too often);
//! `flow/stage.rs` runs the handler, if any; `flow/batcher.rs` is the one
//! batch+commit loop, over the sink's `BatchBuilder` and `Sink`
//! (`sink/mod.rs`) — `sink/clickhouse/` maps rows (`clickhouse/rows.rs`),
//! encodes a Native block (`clickhouse/native/`) and inserts it,
//! `sink/stream/` routes and XADDs — and `flow/settle.rs` is the one
//! settle step: dead letters first, then XACK of what landed (its ids
//! encoded once, `redis/acks.rs`), retried until the hard stop.
//!
//! # Map of the crate
//! No two files import each other in a circle; `config/` imports only the
//! leaves.
//! - Leaves: `backoff.rs` (exponential backoff with jitter, for every
//!   retry loop), `time.rs` (the wall clock in milliseconds, and the one
//!   `Ticker` of periodic loops), `template.rs` (the `{field}` grammar of
//!   routes and schedule payloads), `fields.rs` (flat JSON objects → stream
//!   fields, and `FieldPairs`, which reads any list of pairs), `memory.rs`
//!   (large blocks go back to the system when freed).
//! - [`config`]: the ground floor. TOML + `SLUICE_…` env overrides and
//!   secrets; one file per section, each validating itself (errors name the
//!   key); shard naming both ways (`config/streams.rs`); named connections
//!   (`config/connections.rs`).
//! - `redis/`: Redis Streams — the message model (`message.rs`: fields as
//!   offsets into the reply they came in), raw reply parsing, the
//!   connections of sluice's own for the hot commands (`direct.rs`,
//!   `resp.rs`: reads, acks, XPENDING, the HTTP entry's appends), the ids
//!   to ack encoded once (`acks.rs`), the
//!   commands (XREADGROUP, XACK, XAUTOCLAIM, …), dead letters, group
//!   upkeep, leases (`lease.rs`), the held-entry set, the delayed set and
//!   the producer sharder.
//! - `clickhouse/`: a table's schema, field → column conversion
//!   (`convert/`, one file per type family), the Native block encoder
//!   (`native/`), payload expansion and field → column row mapping.
//! - `obs/`: Prometheus metrics, logging and OTLP traces, readiness
//!   (`/readyz`), and the group-state sampling behind `sluice status`.
//! - `handler/`: the processing step before a sink — exec (JSON-lines child
//!   processes), http, or a Rust [`Handler`].
//! - `flow/`: the message path above; plus keep-alive of held entries
//!   (`keep_alive.rs`), handler retries through the delayed set
//!   (`retry.rs`) and message lists reused along the pipeline (`lists.rs`).
//! - `sink/`: `clickhouse/` — batch, commit, endpoints (failover,
//!   round-robin, health), `shard_by` placement, the live mapping, retry
//!   classification (`classify.rs`), bisecting (`isolate.rs`) and its
//!   escalation, the stuck record, the fleet-wide insert budget, pressure
//!   and pacing, and `exactly_once/` (ledger with leases, fenced stage-table
//!   inserts, recovery of dead replicas' batches); `stream/` — routing,
//!   batch, commit (XADD then XACK, `max_len` backpressure), plain
//!   (pipelined XADDs on a direct connection), pause, and exactly-once by
//!   a dedup script on the target.
//! - `schedule/`: cron/every/at schedules, fired once per tick fleet-wide.
//! - `http_entry/`: `POST /v1/streams/{stream}/messages`, bearer tokens.
//! - `source/`: `[[source]]`, a ClickHouse table read in cursor order into
//!   a stream, one replica at a time.
//! - `console/`: the operator console (pages, JSON API, live tap).
//! - `connections.rs`: what each named connection serves (`check`,
//!   `status`); `worker.rs`: runs every flow, the HTTP entry, the console,
//!   schedules and sources, and shuts down with a deadline.
//! - [`cli`]: the `sluice` commands (`run`, `check`, `status`, `schedule`,
//!   `dead`, `enqueue`, `console`, `tap`).

#![warn(unreachable_pub)]

mod backoff;
pub mod cli;
mod clickhouse;
pub mod config;
mod connections;
mod console;
mod fields;
mod flow;
mod handler;
mod http_entry;
mod memory;
mod obs;
mod redis;
mod schedule;
mod sink;
mod source;
mod template;
pub mod testing;
mod time;
mod worker;

pub use config::{Config, ConfigError};
pub use fields::{FieldPairs, Fields};
pub use handler::{Handler, HandlerError, Handlers};
pub use redis::{Message, MessageFields};
pub use worker::{run, run_with_handlers};
