//! `[[source]]`: a ClickHouse table read into a stream — the original
//! write-up's "database sync" pattern, and with a ClickHouse sink on another
//! server, its rule for moving data between ClickHouse servers (never
//! directly: into a stream, then stream → ClickHouse).
//!
//! ```text
//! ClickHouse ──page query (cursor order)──▶ source ──XADD──▶ stream ──▶ flows
//!                                             │  cursor + lease in Redis
//! ```
//!
//! - **Pages** ([`query`]): keyset pagination on `(cursor, key…)`, each
//!   page a bounded position range; ties at a page boundary handled. Rows become flat entries in the
//!   text forms the ClickHouse sink accepts ([`text`]), so a row moved
//!   through a stream into another table arrives unchanged.
//! - **Cursor** ([`cursor`]): the last position written, in Redis next to
//!   the target stream, moved only after the page's XADDs were confirmed
//!   (at-least-once), or by the same script that XADDs them
//!   (`delivery = "exactly_once"`). Each move is a compare-and-set, so a
//!   replica that lost the lease cannot move it.
//! - **Lease**: one replica runs a source at a time; it renews the lease
//!   every third of `lease`; when it dies the lease expires and another
//!   replica takes over from the cursor.
//! - **Modes**: `once` reads until a page comes back short, records
//!   `done_ms` and goes idle (a restart finds it done); `follow` polls every
//!   `poll` for rows past the cursor.
//! - **Backpressure**: with a `max_len` (the source's, or the stream's in
//!   `[streams]`) the source writes only what fits and pauses while the
//!   stream is full; nothing is trimmed.
//! - **Bad rows** (a value that cannot be written as text, see [`text`]) go
//!   to the dead-letter stream `{to}:dead` with `sluice.source`,
//!   `sluice.table`, `sluice.position` and `sluice.reason`, then the fields.

pub(crate) mod cursor;
pub(crate) mod metrics;
pub(crate) mod query;
pub(crate) mod status;
pub(crate) mod text;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::cursor::{Advanced, Keys};
use self::query::{decode_position, encode_position, Plan};
use crate::backoff::Backoff;
use crate::clickhouse::schema::TableSchema;
use crate::config::source::{SourceConfig, SourceMode};
use crate::config::{Config, Delivery};
use crate::connections;
use crate::obs::metrics::Metrics;
use crate::redis::client;
use crate::redis::commands;
use crate::redis::sharder::Sharder;
use crate::sink::clickhouse::endpoints;
use crate::sink::clickhouse::split_table;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error("clickhouse ({endpoint}): {source}")]
    ClickHouse {
        endpoint: String,
        source: clickhouse::error::Error,
    },
    #[error("clickhouse ({endpoint}): page query took longer than query_timeout ({timeout:?})")]
    Timeout { endpoint: String, timeout: Duration },
    #[error(transparent)]
    Decode(#[from] text::DecodeError),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("the cursor stored in Redis is malformed: {0:?}")]
    Position(String),
}

pub(crate) type Result<T, E = SourceError> = std::result::Result<T, E>;

/// One row of a page.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub fields: Vec<(Bytes, Bytes)>,
    /// Cursor and key values (see [`query`]).
    pub position: Vec<Bytes>,
    /// Why it cannot be written as an entry (it is dead-lettered).
    pub problem: Option<String>,
}

/// Most rows one Redis script call or pipeline writes.
const CHUNK: usize = 2_000;

/// Why a source stopped running its pages.
enum Stop {
    /// `once`: everything was read.
    Done,
    /// The lease or the cursor went to another replica.
    Lost,
    Shutdown,
}

/// One `[[source]]`, opened.
pub(crate) struct Source {
    cfg: SourceConfig,
    plan: Plan,
    /// The connection's endpoints (label, client), tried in turn on errors.
    endpoints: Vec<(String, clickhouse::Client)>,
    redis: Client,
    keys: Keys,
    me: String,
    max_len: Option<u64>,
    /// The target's shards, when `to` is sharded (at-least-once only).
    sharder: Sharder,
    sharded: bool,
    metrics: metrics::Handles,
}

impl Source {
    /// Connects to ClickHouse and the target Redis and reads the table's
    /// columns; errors name the config key.
    pub(crate) async fn open(
        config: &Config,
        index: usize,
        me: &str,
        families: Option<&metrics::Families>,
    ) -> anyhow::Result<Source> {
        let cfg = config.sources[index].clone();
        let key = format!("source[{index}]");
        let ch = config
            .clickhouse_for(cfg.clickhouse.as_deref())
            .expect("validated: the source's ClickHouse connection exists");
        let endpoints: Vec<(String, clickhouse::Client)> = ch
            .endpoint_urls()
            .into_iter()
            .map(|url| {
                (
                    endpoints::endpoint_label(url),
                    endpoints::client_for(ch, url),
                )
            })
            .collect();
        let (db, table) = split_table(&ch.database, &cfg.table);
        let mut schema = None;
        let mut errors = Vec::new();
        for (label, client) in &endpoints {
            match TableSchema::load(client, db, table).await {
                Ok(s) => {
                    schema = Some(s);
                    break;
                }
                Err(e) => errors.push(format!("{label}: {e}")),
            }
        }
        let schema = schema.ok_or_else(|| {
            anyhow::anyhow!(
                "{key}.table: cannot read the columns of `{db}`.`{table}`: {}",
                errors.join("; ")
            )
        })?;
        let plan = Plan::new(
            &schema,
            &cfg.columns,
            &cfg.cursor,
            &cfg.key,
            cfg.filter.as_deref(),
            cfg.page,
            &key,
        )?;
        let redis_name = cfg.redis.as_deref();
        let redis = client::connect(config.redis_for(redis_name))
            .await
            .map_err(|e| anyhow::anyhow!("{key}.redis: cannot connect: {e}"))?;
        let metrics = families
            .map(|f| {
                f.handles(
                    &cfg.name,
                    connections::label(cfg.clickhouse.as_deref()),
                    connections::label(redis_name),
                    &cfg.to,
                )
            })
            .unwrap_or_default();
        let sharder = Sharder::new(config);
        Ok(Source {
            keys: Keys::new(&cfg.name, &cfg.to),
            max_len: cfg.max_len.or_else(|| config.stream_max_len(&cfg.to)),
            sharded: sharder.is_sharded(&cfg.to),
            sharder,
            me: me.to_string(),
            plan,
            endpoints,
            redis,
            metrics,
            cfg,
        })
    }

    /// `sluice check`'s lines: the path with its connections, the columns,
    /// the paging, and where the cursor is.
    pub(crate) async fn describe(&self) -> Result<Vec<String>> {
        let c = &self.cfg;
        let state = cursor::load(&self.redis, &self.keys).await?;
        let label = connections::label;
        let mode = match c.mode {
            SourceMode::Once => "once".to_string(),
            SourceMode::Follow => format!("follow, polling every {:?}", c.poll),
        };
        let delivery = match c.delivery {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::ExactlyOnce => "exactly-once",
        };
        let order: Vec<&str> = self.plan.position.iter().map(|p| p.name.as_str()).collect();
        let columns: Vec<String> = self
            .plan
            .fields
            .iter()
            .map(|f| format!("{} {}", String::from_utf8_lossy(&f.name), f.type_name))
            .collect();
        let position = decode_position(&state.pos)
            .unwrap_or_default()
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        Ok(vec![
            format!("source `{}`:", c.name),
            format!(
                "  ClickHouse `{}` table {} → stream `{}` on redis `{}` ({mode}, {delivery})",
                label(c.clickhouse.as_deref()),
                self.plan.table,
                c.to,
                label(c.redis.as_deref())
            ),
            format!("  fields: {}", columns.join(", ")),
            format!(
                "  pages of ≤{} rows ordered by ({}){}{}",
                c.page,
                order.join(", "),
                if self.plan.keyed() {
                    ""
                } else {
                    ", whole cursor values per page"
                },
                c.filter
                    .as_deref()
                    .map(|f| format!(", where {f}"))
                    .unwrap_or_default()
            ),
            format!(
                "  cursor `{}`: {} ({} rows written{})",
                self.keys.cursor,
                if position.is_empty() {
                    "(start)".to_string()
                } else {
                    position
                },
                state.rows,
                if state.done_ms.is_some() {
                    ", done"
                } else {
                    ""
                }
            ),
            format!(
                "  one replica at a time (lease {:?}); {}dead letters → `{}`",
                c.lease,
                self.max_len
                    .map(|m| format!("pauses at max_len {m}; "))
                    .unwrap_or_default(),
                c.dead_letter_stream()
            ),
        ])
    }

    /// Runs until `shutdown`: waits for the lease, then reads pages while
    /// it holds it; a finished `once` source returns.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let lease_ms = self.cfg.lease.as_millis() as u64;
        let retry = self.cfg.lease / 3;
        let mut waiting_logged = false;
        loop {
            let held = tokio::select! {
                h = cursor::hold(&self.redis, &self.keys, &self.me, lease_ms) => h,
                _ = shutdown.cancelled() => return,
            };
            match held {
                Ok(true) => {}
                Ok(false) => {
                    if !waiting_logged {
                        tracing::info!(source = %self.cfg.name, "another replica runs this source; waiting for its lease");
                        waiting_logged = true;
                    }
                    if !sleep_or(&shutdown, retry).await {
                        return;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(source = %self.cfg.name, %error, "taking the source lease failed");
                    if !sleep_or(&shutdown, retry).await {
                        return;
                    }
                    continue;
                }
            }
            waiting_logged = false;
            tracing::info!(source = %self.cfg.name, table = %self.plan.table, stream = %self.cfg.to, "running source (lease held)");
            self.metrics.active(true);
            let lost = Arc::new(AtomicBool::new(false));
            let keeper_stop = CancellationToken::new();
            let keeper = tokio::spawn(keep_lease(
                self.redis.clone(),
                self.keys.clone(),
                self.me.clone(),
                self.cfg.lease,
                lost.clone(),
                keeper_stop.clone(),
            ));
            let stop = self.run_pages(&lost, &shutdown).await;
            keeper_stop.cancel();
            let _ = keeper.await;
            self.metrics.active(false);
            self.metrics.paused(false);
            match stop {
                Stop::Lost => {
                    tracing::warn!(source = %self.cfg.name, "lost the source lease (or another replica moved the cursor); stopped writing");
                }
                Stop::Done | Stop::Shutdown => {
                    if let Err(error) = cursor::release(&self.redis, &self.keys, &self.me).await {
                        tracing::warn!(source = %self.cfg.name, %error, "releasing the source lease failed; it expires");
                    }
                    if let Stop::Done = stop {
                        tracing::info!(source = %self.cfg.name, "source finished: every row the query matches was written");
                    }
                    return;
                }
            }
        }
    }

    /// Reads and writes pages while the lease is held.
    async fn run_pages(&self, lost: &AtomicBool, shutdown: &CancellationToken) -> Stop {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let state = loop {
            match cursor::load(&self.redis, &self.keys).await {
                Ok(s) => break s,
                Err(error) => {
                    self.metrics.error();
                    tracing::warn!(source = %self.cfg.name, %error, "reading the source cursor failed; retrying");
                    if !backoff.wait(shutdown).await {
                        return Stop::Shutdown;
                    }
                }
            }
        };
        if state.done_ms.is_some() && self.cfg.mode == SourceMode::Once {
            return Stop::Done;
        }
        let mut pos = state.pos;
        loop {
            if shutdown.is_cancelled() {
                return Stop::Shutdown;
            }
            if lost.load(Ordering::Acquire) {
                return Stop::Lost;
            }
            let Some(after) = decode_position(&pos) else {
                tracing::error!(source = %self.cfg.name, error = %SourceError::Position(String::from_utf8_lossy(&pos).into_owned()), "cannot continue; delete the cursor key to start over");
                if !sleep_or(shutdown, self.cfg.poll).await {
                    return Stop::Shutdown;
                }
                continue;
            };
            let (page, full) = match self.fetch(&after).await {
                Ok(fetched) => {
                    backoff.reset();
                    fetched
                }
                Err(error) => {
                    self.metrics.error();
                    tracing::warn!(source = %self.cfg.name, %error, "page query failed; retrying");
                    if !backoff.wait(shutdown).await {
                        return Stop::Shutdown;
                    }
                    continue;
                }
            };
            if !page.is_empty() {
                match self.write_page(&page, &mut pos, lost, shutdown).await {
                    Ok(()) => {}
                    Err(stop) => return stop,
                }
            }
            if full {
                continue;
            }
            match self.cfg.mode {
                SourceMode::Once => {
                    if let Err(error) = cursor::mark_done(&self.redis, &self.keys).await {
                        tracing::warn!(source = %self.cfg.name, %error, "recording the source as done failed");
                    }
                    return Stop::Done;
                }
                SourceMode::Follow => {
                    if !sleep_or(shutdown, self.cfg.poll).await {
                        return Stop::Shutdown;
                    }
                }
            }
        }
    }

    /// Runs `sql` on the first endpoint that answers; the RowBinary bytes.
    async fn query(&self, sql: &str) -> Result<Bytes> {
        let mut last = None;
        for (label, client) in &self.endpoints {
            let run = async {
                client
                    .query_raw(sql)
                    .fetch_bytes("RowBinary")
                    .map_err(|source| SourceError::ClickHouse {
                        endpoint: label.clone(),
                        source,
                    })?
                    .collect()
                    .await
                    .map_err(|source| SourceError::ClickHouse {
                        endpoint: label.clone(),
                        source,
                    })
            };
            match tokio::time::timeout(self.cfg.query_timeout, run).await {
                Ok(Ok(bytes)) => return Ok(bytes),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(SourceError::Timeout {
                        endpoint: label.clone(),
                        timeout: self.cfg.query_timeout,
                    })
                }
            }
        }
        Err(last.expect("a connection has at least one endpoint"))
    }

    /// One row's position values.
    fn position(&self, reader: &mut text::Reader) -> Result<Vec<Bytes>> {
        let mut position = Vec::with_capacity(self.plan.position.len());
        for p in &self.plan.position {
            let mut never = None; // plain text and FixedString: no problem
            position.push(reader.value(&p.shape, &mut never)?.unwrap_or_default());
        }
        Ok(position)
    }

    fn parse(&self, bytes: Bytes) -> Result<Vec<Row>> {
        let mut reader = text::Reader::new(bytes);
        let mut rows = Vec::new();
        while !reader.is_done() {
            let (fields, problem) = text::row_fields(&mut reader, &self.plan.fields)?;
            let position = self.position(&mut reader)?;
            rows.push(Row {
                fields,
                position,
                problem,
            });
        }
        Ok(rows)
    }

    /// The page after `after`, and whether rows are left after it (it was
    /// a full page).
    pub(crate) async fn fetch(&self, after: &[Bytes]) -> Result<(Vec<Row>, bool)> {
        self.metrics.page();
        let bound = self.query(&self.plan.bound_sql(after)).await?;
        let upto = match bound.is_empty() {
            true => None,
            false => Some(self.position(&mut text::Reader::new(bound))?),
        };
        let rows = self.parse(
            self.query(&self.plan.page_sql(after, upto.as_deref()))
                .await?,
        )?;
        Ok((rows, upto.is_some()))
    }

    /// Where the chunk from `start` ends: whole groups (rows sharing a
    /// position; without a key, a cursor value), at most `limit` rows but
    /// always the first group.
    fn chunk_end(&self, rows: &[Row], start: usize, limit: usize) -> usize {
        let group_end = |from: usize| {
            if self.plan.keyed() {
                return from + 1;
            }
            let v = &rows[from].position[0];
            from + rows[from..]
                .iter()
                .take_while(|r| r.position[0] == *v)
                .count()
        };
        let mut end = group_end(start);
        while end < rows.len() {
            let next = group_end(end);
            if next - start > limit {
                break;
            }
            end = next;
        }
        end
    }

    /// Writes `rows` in chunks, moving `pos` after each.
    async fn write_page(
        &self,
        rows: &[Row],
        pos: &mut Bytes,
        lost: &AtomicBool,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let mut start = 0;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        while start < rows.len() {
            if lost.load(Ordering::Acquire) {
                return Err(Stop::Lost);
            }
            let room = self.wait_for_room(shutdown).await?;
            let end = self.chunk_end(rows, start, CHUNK.min(room));
            let new_pos = Bytes::from(encode_position(&rows[end - 1].position));
            match self.write_chunk(&rows[start..end], pos, &new_pos).await {
                Ok(Advanced::Done) => {
                    backoff.reset();
                    *pos = new_pos;
                    start = end;
                }
                Ok(Advanced::Moved) => return Err(Stop::Lost),
                Ok(Advanced::Full) => {} // filled meanwhile: wait again
                Err(error) => {
                    self.metrics.error();
                    tracing::warn!(source = %self.cfg.name, %error, "writing to the stream failed; retrying (the cursor did not move)");
                    if !backoff.wait(shutdown).await {
                        return Err(Stop::Shutdown);
                    }
                }
            }
        }
        Ok(())
    }

    /// Room left under `max_len` (usize::MAX without one), waiting while
    /// there is none. For a sharded stream, the least room of any shard.
    async fn wait_for_room(&self, shutdown: &CancellationToken) -> Result<usize, Stop> {
        let Some(max) = self.max_len else {
            return Ok(usize::MAX);
        };
        let mut paused = false;
        loop {
            let mut room = u64::MAX;
            let mut failed = None;
            for shard in self.sharder.shards_of(&self.cfg.to) {
                match commands::len(&self.redis, &shard).await {
                    Ok(len) => room = room.min(max.saturating_sub(len)),
                    Err(e) => failed = Some(e),
                }
            }
            match failed {
                None if room > 0 => {
                    if paused {
                        tracing::info!(source = %self.cfg.name, "stream drained below max_len; source resumed");
                        self.metrics.paused(false);
                    }
                    return Ok(room.min(usize::MAX as u64) as usize);
                }
                None => {
                    if !paused {
                        tracing::warn!(source = %self.cfg.name, stream = %self.cfg.to, max_len = max, "target stream full (length at max_len); source paused");
                        self.metrics.paused(true);
                        paused = true;
                    }
                }
                Some(error) => {
                    self.metrics.error();
                    tracing::warn!(source = %self.cfg.name, %error, "XLEN of the target failed; retrying");
                }
            }
            if !sleep_or(shutdown, self.cfg.check_every).await {
                return Err(Stop::Shutdown);
            }
        }
    }

    /// Dead-letters the chunk's bad rows, writes the others and moves the
    /// cursor from `pos` to `new_pos`.
    async fn write_chunk(&self, rows: &[Row], pos: &[u8], new_pos: &[u8]) -> Result<Advanced> {
        let dead: Vec<&Row> = rows.iter().filter(|r| r.problem.is_some()).collect();
        if !dead.is_empty() {
            self.dead_letter(&dead).await?;
        }
        let good: Vec<&[(Bytes, Bytes)]> = rows
            .iter()
            .filter(|r| r.problem.is_none())
            .map(|r| r.fields.as_slice())
            .collect();
        // Exactly-once: the script XADDs the rows as it moves the cursor;
        // at-least-once: XADDs first, then the cursor alone.
        let (max_len, entries) = if self.cfg.delivery == Delivery::ExactlyOnce {
            (self.max_len, good.as_slice())
        } else {
            self.xadd(&good).await?;
            (None, &[][..])
        };
        let advanced = cursor::advance(
            &self.redis,
            &self.keys,
            pos,
            new_pos,
            rows.len() as u64,
            max_len,
            entries,
        )
        .await?;
        if advanced == Advanced::Done {
            self.metrics.written(good.len(), dead.len());
        }
        Ok(advanced)
    }

    /// At-least-once: one pipelined XADD per row (to its shard).
    async fn xadd(&self, rows: &[&[(Bytes, Bytes)]]) -> Result<()> {
        let pipeline = self.redis.pipeline();
        for fields in rows {
            let stream = if self.sharded {
                self.sharder.pick(&self.cfg.to, *fields)
            } else {
                &self.cfg.to
            };
            let mut args: Vec<Value> = Vec::with_capacity(2 + fields.len() * 2);
            args.push(stream.into());
            args.push("*".into());
            push_fields(&mut args, fields);
            let _: Value = pipeline
                .custom(commands::command("XADD", stream, false), args)
                .await?;
        }
        for r in pipeline.try_all::<Value>().await {
            r?;
        }
        Ok(())
    }

    async fn dead_letter(&self, rows: &[&Row]) -> Result<()> {
        let stream = self.cfg.dead_letter_stream();
        let pipeline = self.redis.pipeline();
        for r in rows {
            let position: Vec<String> = r
                .position
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let mut args: Vec<Value> = vec![stream.as_str().into(), "*".into()];
            for (k, v) in [
                ("sluice.source", self.cfg.name.clone()),
                ("sluice.table", self.cfg.table.clone()),
                ("sluice.position", position.join(", ")),
                ("sluice.reason", r.problem.clone().unwrap_or_default()),
            ] {
                args.push(k.into());
                args.push(v.into());
            }
            push_fields(&mut args, &r.fields);
            let _: Value = pipeline
                .custom(commands::command("XADD", &stream, false), args)
                .await?;
        }
        for r in pipeline.try_all::<Value>().await {
            r?;
        }
        for r in rows {
            tracing::warn!(source = %self.cfg.name, reason = r.problem.as_deref().unwrap_or_default(), "row dead-lettered");
        }
        Ok(())
    }
}

/// Appends the field/value pairs of an XADD.
fn push_fields(args: &mut Vec<Value>, fields: &[(Bytes, Bytes)]) {
    for (k, v) in fields {
        args.push(Value::Bytes(k.clone()));
        args.push(Value::Bytes(v.clone()));
    }
}

/// Sleeps `d`; false if `shutdown` came first.
async fn sleep_or(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Renews the lease every third of it; sets `lost` when another replica
/// has it, or when no renewal succeeded for a whole lease (Redis
/// unreachable: another replica may have taken over).
async fn keep_lease(
    redis: Client,
    keys: Keys,
    me: String,
    lease: Duration,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        if !sleep_or(&stop, lease / 3).await {
            return;
        }
        match cursor::hold(&redis, &keys, &me, lease.as_millis() as u64).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                lost.store(true, Ordering::Release);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, lease = %keys.lease, "renewing the source lease failed");
                if last_ok.elapsed() >= lease {
                    lost.store(true, Ordering::Release);
                    return;
                }
            }
        }
    }
}

/// Opens every `[[source]]` and runs each on its own task.
pub(crate) async fn spawn_all(
    config: &Config,
    me: &str,
    metrics: &Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    if config.sources.is_empty() {
        return Ok(Vec::new());
    }
    let families = config
        .metrics
        .listen
        .is_some()
        .then(|| metrics::Families::register(metrics))
        .flatten();
    let mut tasks = Vec::new();
    for i in 0..config.sources.len() {
        let source = Source::open(config, i, me, families.as_ref()).await?;
        tasks.push(tokio::spawn(source.run(shutdown.clone())));
    }
    Ok(tasks)
}
