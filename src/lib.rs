//! sluice: stateless workers that move Redis Stream entries into ClickHouse
//! (or other streams) through consumer groups, with at-least-once delivery
//! (ack after the sink confirmed) or, into ClickHouse, exactly-once.
//!
//! Map of the crate:
//! - [`config`]: TOML + `SLUICE_…` env overrides, validated; errors name the key.
//!   The ground floor: one file per section, importing only leaves.
//! - [`template`]: the `{field}` template grammar (stream-sink targets, schedule fields).
//! - [`connections`]: named Redis / ClickHouse connections
//!   (`[redis.remote.<name>]`, `[clickhouse.remote.<name>]`) and references to them.
//! - [`stream`]: Redis Streams — message model, raw reply parsing, the
//!   commands (XREADGROUP, XACK, XAUTOCLAIM, …), dead letters, group upkeep.
//! - [`schema`]: a ClickHouse table's columns and types, from `system.columns`.
//! - [`convert`]: field value → column value rules (the reasons bad rows get).
//! - [`native`]: the dynamic Native-format block encoder.
//! - [`payload`]: JSON / MessagePack payload fields expanded into columns.
//! - [`batch`]: field→column mapping and batches closed by rows/bytes/time.
//! - [`sink`]: the ClickHouse sink, its endpoints (failover / round-robin,
//!   health checks) and `shard_by` placement, the live mapping of the
//!   table's current columns, retry-or-bisect decision and its escalation
//!   (table-level errors reported stuck), commit + ack, and exactly-once: the batch ledger with leases
//!   (`sink::ledger`), fenced stage-table inserts settled before any retry
//!   (`sink::fenced`), the shared insert (`sink::exactly_once`) and the
//!   recovery of dead replicas' batches (`sink::recover`). Kindness to
//!   ClickHouse: the table's fleet-wide insert budget in Redis
//!   (`sink::budget`), batch limits scaled by the server's pressure
//!   (`sink::pressure`), and when the batcher seals (`sink::pacing`).
//!   The stream sink: routing, `max_len` backpressure, XADD then XACK,
//!   possibly on another Redis; exactly-once by a dedup script on the
//!   target (`sink::stream_once`).
//! - [`flow`]: one flow's reader, claim loop, batcher and committer tasks.
//! - [`claim`]: the claim pass — dead replicas' entries first and in bulk,
//!   only as many as the pipeline can take now, recovery tasks started;
//!   consumer pruning. Keep-alive is `stream::keep_alive`.
//! - [`handler`]: the processing step before a sink: exec (JSON-lines child
//!   processes), http (POST per message) or a Rust [`handler::Handler`].
//! - [`flat`]: flat JSON objects → stream fields (HTTP entry, enqueue).
//! - [`enqueue`]: `sluice enqueue` — JSON lines / CSV into a stream, pipelined.
//! - [`http_entry`]: `POST /v1/streams/{stream}/messages` (all-or-nothing,
//!   429 at `max_len`), stream state, health; bearer tokens per stream.
//! - [`worker`]: runs all flows (and the HTTP entry); shutdown with a deadline.
//! - [`readiness`]: whether every flow runs (`/readyz`), and why not.
//! - [`status`]: per-stream group state (exact lag) for `sluice status` and
//!   the gauges, sampled by one replica holding a lease.
//! - [`check`]: `sluice check` — validate, connect, show the plan.
//! - [`metrics`]: Prometheus registry, per-flow hot-path handles, `/metrics`.
//! - [`telemetry`]: logging, OTLP trace export, producer `traceparent`s.
//! - [`schedule`]: cron/every/at schedules, once per tick fleet-wide, state in Redis.
//! - [`delayed`]: delayed jobs in a sorted set per stream, moved in when due.
//! - [`retry_queue`]: retry with exponential backoff + jitter via the delayed set.
//! - [`dead`]: `sluice dead list|show|replay|purge`.
//! - [`console`]: the operator console (`sluice console`, or in `sluice run`
//!   with `[console] listen`): pages and a JSON API over streams, groups,
//!   dead letters, schedules and delayed jobs, and the live tap
//!   (`sluice tap`).
//! - [`source`]: `[[source]]` — a ClickHouse table read in cursor order
//!   into a stream (once or following new rows), one replica at a time
//!   (a lease), cursor kept in Redis, exactly-once with a script.
//! - [`shard`]: sharded streams (`name:{0}` … for Redis Cluster): which
//!   shard a producer writes an entry to.

pub mod backoff;
pub mod cli;
pub mod clickhouse;
pub mod config;
pub mod connections;
pub mod console;
pub mod fields;
pub mod flow;
pub mod handler;
pub mod http_entry;
pub mod obs;
pub mod redis;
pub mod schedule;
pub mod sink;
pub mod source;
pub mod template;
pub mod worker;

pub use worker::run;
