//! The ClickHouse sink: one Native-format insert per batch, LZ4-compressed,
//! through the official crate. Works against 18.16 and current servers
//! (validation off; no version-specific settings needed for plain inserts).
//! Which endpoint takes an insert is [`crate::sink::clickhouse::endpoints`]' business; how a
//! sharded flow splits a batch is [`crate::sink::clickhouse::shard`]'s.

pub(crate) mod ack_gate;
pub(crate) mod batch;
pub(crate) mod budget;
pub(crate) mod classify;
pub(crate) mod commit;
pub(crate) mod endpoints;
pub(crate) mod escalation;
pub(crate) mod exactly_once;
mod isolate;
pub(crate) mod mapping;
pub(crate) mod pacing;
pub(crate) mod pressure;
pub(crate) mod shard;
pub(crate) mod stuck;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::clickhouse::rows::MappingError;
use crate::clickhouse::schema::{SchemaError, TableSchema};
use crate::config::{ClickHouseConfig, Delivery, FlowConfig, SinkConfig};
use crate::flow::lists::MessageLists;
use crate::obs::metrics::Metrics;
use crate::sink::clickhouse::endpoints::{Endpoint, Endpoints};
use crate::sink::clickhouse::exactly_once::stage_table::{
    completion_warning, EoTable, EoTableError,
};
use crate::sink::clickhouse::mapping::{LiveMapping, Refresh, RefreshError};
use crate::sink::clickhouse::pacing::SharedPressure;
use crate::sink::clickhouse::shard::Sharding;
use crate::time::Ticker;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("no ClickHouse endpoint answered: {0}")]
    NoEndpoint(String),
    #[error(transparent)]
    ExactlyOnce(#[from] EoTableError),
}

impl SinkError {
    /// ClickHouse could not be asked (no endpoint answered, or the columns
    /// query failed): worth waiting for, unlike a missing table or a
    /// mapping that does not fit.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SinkError::NoEndpoint(_)
                | SinkError::Schema(SchemaError::Query { .. })
                | SinkError::ExactlyOnce(EoTableError::Query { .. })
        )
    }
}

impl From<RefreshError> for SinkError {
    fn from(e: RefreshError) -> Self {
        match e {
            RefreshError::Schema(e) => SinkError::Schema(e),
        }
    }
}

/// Backquotes an identifier so no table or database name can inject SQL.
pub fn quote_identifier(name: &str) -> String {
    quoted(name, '`')
}

/// `text` as a string literal, for SQL sent without bound parameters.
pub(crate) fn quote_string(text: &str) -> String {
    quoted(text, '\'')
}

fn quoted(text: &str, quote: char) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        if c == quote || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push(quote);
    out
}

/// `db.table` split: a sink table may name its database (`logs.events`);
/// otherwise the configured database is used.
pub(crate) fn split_table<'a>(default_db: &'a str, table: &'a str) -> (&'a str, &'a str) {
    match table.split_once('.') {
        Some((db, t)) if !db.is_empty() && !t.is_empty() => (db, t),
        _ => (default_db, table),
    }
}

/// Where one insert may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Any endpoint, as `clickhouse.endpoints` says (with failover).
    Any,
    /// This shard's endpoint only (`shard_by`).
    Shard(usize),
}

/// A flow's ClickHouse table: its endpoints, schema, column mapping and
/// insert statement.
pub(crate) struct ClickHouseSink {
    endpoints: Arc<Endpoints>,
    insert_sql: String,
    /// The table as first read: its database and table names. Its columns
    /// may have changed since: the current ones are `mapper.schema()`.
    pub schema: TableSchema,
    /// The row mapping for the table's current columns (re-read while the
    /// flow runs: [`crate::sink::clickhouse::mapping`]).
    pub mapper: LiveMapping,
    insert_timeout: Duration,
    /// `shard_by`: the endpoints are shards, rows routed by this field.
    pub sharding: Option<Sharding>,
    /// `clickhouse.bisect_after`: see [`crate::sink::clickhouse::escalation`].
    pub bisect_after: u32,
    schema_refresh: Duration,
    flow: String,
    /// Exactly-once: how a batch is looked up in the table (checked to
    /// keep a countable row for every row inserted when the flow opened).
    pub eo_table: Option<EoTable>,
    /// What the inserts' outcomes say about the server's pressure
    /// (adaptive batches: [`crate::sink::clickhouse::pacing`]).
    pub pressure: Arc<SharedPressure>,
    /// Message lists of acked batches, for the next batches to fill (one
    /// filling, one queued and one inserting while one is acked: two
    /// spare ones cover it).
    pub lists: MessageLists,
}

impl ClickHouseSink {
    /// Connects, learns the table's columns and checks the flow's mapping;
    /// exports per-endpoint metrics to `metrics` if given. Checks every
    /// endpoint, reads the schema from the first one that answers (in
    /// `urls` order) and starts the background health checks. Fails at once
    /// when ClickHouse cannot be asked (`sluice check`).
    pub(crate) async fn open(
        cfg: &ClickHouseConfig,
        flow: &FlowConfig,
        table: &str,
        metrics: Option<&Arc<Metrics>>,
    ) -> Result<Self, SinkError> {
        let endpoints = Arc::new(Endpoints::new(cfg, &flow.name, metrics));
        let (schema, eo_table) = read_table(&endpoints, cfg, flow, table).await?;
        Self::assemble(cfg, flow, endpoints, schema, eo_table)
    }

    /// Like [`open`](Self::open), but while
    /// ClickHouse cannot be asked ([`SinkError::is_unreachable`]) waits and
    /// tries again with backoff, telling `waiting` why each time, so that a
    /// replica can start during an outage. Ok(None): `stop` came first.
    /// Other errors (no such table, a mapping that does not fit) fail at once.
    pub(crate) async fn open_when_reachable(
        cfg: &ClickHouseConfig,
        flow: &FlowConfig,
        table: &str,
        metrics: Option<&Arc<Metrics>>,
        waiting: impl Fn(&SinkError),
        stop: &CancellationToken,
    ) -> Result<Option<Self>, SinkError> {
        let endpoints = Arc::new(Endpoints::new(cfg, &flow.name, metrics));
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            match read_table(&endpoints, cfg, flow, table).await {
                Ok((schema, eo_table)) => {
                    return Self::assemble(cfg, flow, endpoints, schema, eo_table).map(Some)
                }
                Err(e) if e.is_unreachable() => {
                    waiting(&e);
                    tracing::warn!(flow = %flow.name, error = %e, attempt = backoff.attempts() + 1, "waiting for ClickHouse to read the table's columns; the flow starts once it answers");
                    if !backoff.wait(stop).await {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The sink over `endpoints` for `schema`; starts the health checks.
    fn assemble(
        cfg: &ClickHouseConfig,
        flow: &FlowConfig,
        endpoints: Arc<Endpoints>,
        schema: TableSchema,
        eo_table: Option<EoTable>,
    ) -> Result<Self, SinkError> {
        let mapper = LiveMapping::new(schema.clone(), flow)?;
        // No column list: each Native block names its columns, and a block
        // may leave out DEFAULT-expression columns its rows lack.
        let insert_sql = format!(
            "INSERT INTO {}.{} FORMAT Native",
            quote_identifier(&schema.database),
            quote_identifier(&schema.table)
        );
        let max_batch_scale = match &flow.sink {
            SinkConfig::Clickhouse {
                max_batch_scale, ..
            } => *max_batch_scale,
            SinkConfig::Stream(_) => 1.0,
        };
        let sharding = match &flow.sink {
            SinkConfig::Clickhouse {
                shard_by: Some(field),
                ..
            } => Some(Sharding::new(field, endpoints.len())),
            _ => None,
        };
        if let Some(warning) = eo_table.as_ref().and_then(|_| completion_warning(flow)) {
            tracing::warn!(flow = %flow.name, "exactly_once: {warning}");
        }
        endpoints.spawn_health_checks();
        Ok(ClickHouseSink {
            endpoints,
            insert_sql,
            schema,
            mapper,
            insert_timeout: cfg.insert_timeout,
            sharding,
            bisect_after: cfg.bisect_after,
            schema_refresh: cfg.schema_refresh,
            flow: flow.name.clone(),
            eo_table,
            pressure: Arc::new(SharedPressure::new(max_batch_scale)),
            lists: MessageLists::keeping(2),
        })
    }

    /// Re-reads the table's columns from a healthy endpoint (the first,
    /// when none is) and puts a changed schema's mapping in use; logs what
    /// changed.
    pub(crate) async fn refresh_schema(&self) -> Result<Refresh, SinkError> {
        let endpoint = self
            .endpoints
            .iter()
            .find(|e| e.is_up())
            .unwrap_or_else(|| self.endpoints.get(0));
        let refresh = self.mapper.refresh(&endpoint.client).await?;
        match &refresh {
            Refresh::Unchanged => {}
            Refresh::Changed(what) => {
                tracing::info!(flow = %self.flow, table = %self.table_name(), changes = %what, "the table's columns changed; converting rows for the new ones")
            }
            Refresh::Unusable(why) => {
                tracing::error!(flow = %self.flow, table = %self.table_name(), error = %why, "the table's columns changed in a way the flow's mapping cannot follow; keeping the previous mapping")
            }
        }
        Ok(refresh)
    }

    /// Re-reads the columns every `clickhouse.schema_refresh` until `self`
    /// is dropped.
    pub(crate) fn spawn_schema_refresh(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.schema_refresh;
        tokio::spawn(async move {
            let mut tick = Ticker::every(every);
            tick.tick().await; // the first tick is immediate: just read
            loop {
                tick.tick().await;
                let Some(sink) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = sink.refresh_schema().await {
                    tracing::warn!(flow = %sink.flow, error = %e, "re-reading the table's columns failed; keeping the current ones");
                }
            }
        });
    }

    pub(crate) fn table_name(&self) -> String {
        format!("{}.{}", self.schema.database, self.schema.table)
    }

    pub(crate) fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// One Native block as one insert to one endpoint, waiting for the
    /// server's confirmation. `batch_id` becomes the deduplication token
    /// where the endpoint has one.
    async fn send(
        &self,
        endpoint: &Endpoint,
        block: Bytes,
        batch_id: Option<&str>,
    ) -> Result<(), clickhouse::error::Error> {
        self.send_native(endpoint, self.insert_sql.clone(), block, batch_id)
            .await
    }

    /// Sends one Native block into `table_sql` (a quoted `db.table`) on
    /// `endpoint`: the exactly-once path's stage insert.
    pub(crate) async fn insert_native(
        &self,
        endpoint: &Endpoint,
        table_sql: &str,
        block: Bytes,
    ) -> Result<(), clickhouse::error::Error> {
        let sql = format!("INSERT INTO {table_sql} FORMAT Native");
        self.send_native(endpoint, sql, block, None).await
    }

    async fn send_native(
        &self,
        endpoint: &Endpoint,
        sql: String,
        block: Bytes,
        batch_id: Option<&str>,
    ) -> Result<(), clickhouse::error::Error> {
        let mut insert = endpoint
            .client
            .insert_formatted_with(sql)
            .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
        if let (true, Some(id)) = (endpoint.has_dedup_token(), batch_id) {
            insert = insert.with_setting("insert_deduplication_token", id);
        }
        let started = Instant::now();
        let result = async {
            insert.send(block).await?;
            insert.end().await
        }
        .await;
        self.pressure
            .observe(pressure::signal(&result, started.elapsed()));
        result
    }

    /// The bound on one insert, and on each step of a fenced insert.
    pub(crate) fn insert_timeout(&self) -> Duration {
        self.insert_timeout
    }

    /// The endpoint an insert for `target` goes to first.
    pub(crate) fn first_choice(&self, target: Target) -> usize {
        match target {
            Target::Any => self.endpoints.plan()[0],
            Target::Shard(shard) => shard,
        }
    }

    /// Inserts `block` (`rows` rows) on the endpoints as `clickhouse.endpoints`
    /// says, moving on to the next healthy endpoint after a transient error
    /// (see [`Endpoints::insert`]). Err = every endpoint tried failed, or
    /// the data was refused.
    pub(crate) async fn insert(
        &self,
        block: Bytes,
        rows: usize,
        batch_id: Option<&str>,
    ) -> Result<(), clickhouse::error::Error> {
        self.endpoints
            .insert(rows, |i| {
                self.send(self.endpoints.get(i), block.clone(), batch_id)
            })
            .await
    }

    /// Inserts `block` on shard `shard` only (`shard_by`).
    pub(crate) async fn insert_shard(
        &self,
        shard: usize,
        block: Bytes,
        rows: usize,
        batch_id: Option<&str>,
    ) -> Result<(), clickhouse::error::Error> {
        self.endpoints
            .insert_at(shard, rows, |i| {
                self.send(self.endpoints.get(i), block, batch_id)
            })
            .await
    }

    /// The endpoints a read for exactly-once recovery asks, and whether
    /// each must answer. Shards: all of them, each must answer (a part is
    /// on its shard only). Replicas / Distributed nodes: the healthy ones
    /// (all when none is), one answer is enough.
    pub(crate) fn read_endpoints(&self) -> (Vec<usize>, bool) {
        if self.sharding.is_some() {
            return ((0..self.endpoints.len()).collect(), true);
        }
        let any_up = self.endpoints.iter().any(|e| e.is_up());
        let list = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| !any_up || e.is_up())
            .map(|(i, _)| i)
            .collect();
        (list, false)
    }
}

/// Checks every endpoint and reads `table`'s columns from the first that
/// answers (in `urls` order); for exactly-once, also how a batch is looked
/// up in it (refused where a count cannot hold: [`EoTable::inspect`]).
async fn read_table(
    endpoints: &Endpoints,
    cfg: &ClickHouseConfig,
    flow_cfg: &FlowConfig,
    table: &str,
) -> Result<(TableSchema, Option<EoTable>), SinkError> {
    let flow = &flow_cfg.name;
    endpoints.check_all().await;
    let Some(first) = endpoints.iter().find(|e| e.is_up()) else {
        let why: Vec<String> = endpoints
            .statuses()
            .into_iter()
            .map(|s| format!("{} {}: {}", s.key, s.endpoint, s.error.unwrap_or_default()))
            .collect();
        return Err(SinkError::NoEndpoint(why.join("; ")));
    };
    for e in endpoints.iter().filter(|e| !e.is_up()) {
        tracing::warn!(%flow, endpoint = %e.label, error = e.status().error.unwrap_or_default(), "ClickHouse endpoint unreachable at start-up; the health checks bring it in when it answers");
    }
    let (db, table) = split_table(&cfg.database, table);
    let schema = TableSchema::load(&first.client, db, table).await?;
    let eo_table = match flow_cfg.delivery {
        Delivery::ExactlyOnce => Some(EoTable::inspect(&first.client, db, table).await?),
        Delivery::AtLeastOnce => None,
    };
    Ok((schema, eo_table))
}

/// `major.minor` of a `SELECT version()` string is at least the given one.
pub(crate) fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_compare_numerically() {
        assert!(!super::version_at_least("18.16.1", 22, 1));
        assert!(super::version_at_least("22.1.3.7", 22, 1));
        assert!(super::version_at_least("24.8.4.13", 22, 1));
        assert!(!super::version_at_least("21.12.1", 22, 1));
    }

    use super::*;

    #[test]
    fn identifiers_are_quoted_safely() {
        assert_eq!(quote_identifier("events"), "`events`");
        assert_eq!(
            quote_identifier("a`; DROP TABLE x; --"),
            "`a\\`; DROP TABLE x; --`"
        );
        assert_eq!(quote_identifier("back\\slash"), "`back\\\\slash`");
        assert_eq!(quote_string("a'b\\c"), "'a\\'b\\\\c'");
    }

    #[test]
    fn table_may_name_its_database() {
        assert_eq!(split_table("default", "logs.events"), ("logs", "events"));
        assert_eq!(split_table("default", "events"), ("default", "events"));
    }
}
