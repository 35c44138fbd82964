//! Fenced inserts: the exactly-once insert path, safe to retry after an
//! insert whose outcome is unknown, on any ClickHouse version.
//!
//! An insert that timed out or lost its connection may still land later: the
//! server may be finishing it, or its bytes may still be on their way (in a
//! kernel buffer, a stalled proxy). Retrying it blindly can write the batch
//! twice, and servers before 22.1 have no deduplication token to stop that.
//! So a batch never goes straight into the table. Each attempt:
//!
//! 1. creates a stage table `_sluice_stage_<batch>_<attempt>` (Memory engine,
//!    the target's structure) and inserts the Native block into it;
//! 2. moves it with `INSERT INTO target SELECT * FROM stage`;
//! 3. drops the stage.
//!
//! After a failure, [`settle`] drops every stage of the batch — the fence: a
//! move still running finishes first (DROP waits for it), one arriving later
//! finds no table and fails — and only then counts the batch's rows in the
//! target. The count is then final: the caller acks, retries, or completes a
//! partial move, knowing that no earlier attempt can land afterwards.
//!
//! The count reads through the target's primary key: the batch is staged
//! once more as a probe, and only rows whose key values are among the
//! probe's are read ([`crate::sink::clickhouse::exactly_once::stage_table`]), so a settle reads a few granules
//! however large the table is.

use std::collections::HashMap;

use bytes::Bytes;
use clickhouse::error::Error;

use crate::sink::clickhouse::classify::{classify, Disposition};
use crate::sink::clickhouse::endpoints::Endpoint;
use crate::sink::clickhouse::exactly_once::stage_table::EoTable;
use crate::sink::clickhouse::{quote_identifier, quote_string, ClickHouseSink};

const STAGE_PREFIX: &str = "_sluice_stage_";

/// The prefix of every stage table of `batch_id`.
fn stage_prefix(batch_id: &str) -> String {
    let hex: String = batch_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("{STAGE_PREFIX}{hex}_")
}

/// Runs `fut` under the sink's insert timeout; a timeout drops the request
/// (and its connection).
async fn timed<T>(
    sink: &ClickHouseSink,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(sink.insert_timeout(), fut)
        .await
        .unwrap_or(Err(Error::TimedOut))
}

/// A batch staged on one endpoint, ready to be moved into the target there.
pub(crate) struct Stage {
    name: String,
    endpoint: usize,
}

/// Creates a stage table for `batch_id` on endpoint `endpoint` and inserts
/// the block into it. Nothing reaches the target yet. On error the stage is
/// dropped (best effort; the next settle drops what is left).
pub(crate) async fn stage(
    sink: &ClickHouseSink,
    endpoint: usize,
    block: Bytes,
    batch_id: &str,
) -> Result<Stage, Error> {
    let suffix: u32 = rand::random();
    let stage = Stage {
        name: format!("{}{suffix:08x}", stage_prefix(batch_id)),
        endpoint,
    };
    let ep = sink.endpoints().get(endpoint);
    let mut create = ep.client.query(&format!(
        "CREATE TABLE {} AS {} ENGINE = Memory",
        table_sql(sink, &stage.name),
        table_sql(sink, &sink.schema.table)
    ));
    if ep.is_legacy() {
        // 18.x refuses to create LowCardinality columns without it.
        create = create.with_setting("allow_experimental_low_cardinality_type", "1");
    }
    timed(sink, create.execute()).await?;
    if let Err(e) = sink
        .insert_native(ep, &table_sql(sink, &stage.name), block)
        .await
    {
        discard(sink, stage).await;
        return Err(e);
    }
    Ok(stage)
}

/// Moves a staged batch into the target and drops the stage. An error
/// leaves the outcome unknown: [`settle`] before trying again.
pub(crate) async fn commit(
    sink: &ClickHouseSink,
    stage: Stage,
    batch_id: &str,
) -> Result<(), Error> {
    let ep = sink.endpoints().get(stage.endpoint);
    let mut copy = ep.client.query(&format!(
        "INSERT INTO {} SELECT * FROM {}",
        table_sql(sink, &sink.schema.table),
        table_sql(sink, &stage.name)
    ));
    if ep.has_dedup_token() {
        copy = copy.with_setting("insert_deduplication_token", batch_id);
    }
    let moved = timed(sink, copy.execute()).await;
    discard(sink, stage).await;
    moved
}

/// Drops a stage, best effort: one left behind is dropped by the next settle.
pub(crate) async fn discard(sink: &ClickHouseSink, stage: Stage) {
    let ep = sink.endpoints().get(stage.endpoint);
    let _ = drop_table(sink, ep, &stage.name).await;
}

fn table_sql(sink: &ClickHouseSink, table: &str) -> String {
    format!(
        "{}.{}",
        quote_identifier(&sink.schema.database),
        quote_identifier(table)
    )
}

async fn drop_table(sink: &ClickHouseSink, ep: &Endpoint, table: &str) -> Result<(), Error> {
    let sql = format!(
        "DROP TABLE IF EXISTS {}{}",
        table_sql(sink, table),
        // Atomic databases (20.x+) drop lazily unless told to wait.
        if ep.is_legacy() { "" } else { " SYNC" }
    );
    timed(sink, ep.client.query(&sql).execute()).await
}

/// Drops every stage table of the batch on one endpoint.
async fn drop_stages(sink: &ClickHouseSink, ep: &Endpoint, batch_id: &str) -> Result<(), Error> {
    let prefix = stage_prefix(batch_id);
    let stages: Vec<String> = timed(
        sink,
        ep.client
            .query(
                "SELECT name FROM system.tables WHERE database = ? AND substring(name, 1, ?) = ?",
            )
            .bind(sink.schema.database.as_str())
            .bind(prefix.len() as u64)
            .bind(prefix.as_str())
            .fetch_all(),
    )
    .await?;
    for stage in &stages {
        drop_table(sink, ep, stage).await?;
    }
    Ok(())
}

/// Drops every stage table of the batch on every endpoint (the fence),
/// then looks the batch up in the table ([`find`]). An endpoint that
/// refuses connections has no server running, so no move can be running
/// there; any other error means "not settled yet": retry.
pub(crate) async fn settle(sink: &ClickHouseSink, lookup: &Lookup<'_>) -> Result<Found, Error> {
    for ep in sink.endpoints().iter() {
        match drop_stages(sink, ep, lookup.batch_id).await {
            Ok(()) => {}
            Err(e) if connection_refused(&e) => {
                tracing::debug!(endpoint = %ep.label, "endpoint refuses connections: nothing of the batch can be moving there");
            }
            Err(e) => return Err(e),
        }
    }
    find(sink, lookup).await
}

/// What to look up: the rows of one batch.
pub(crate) struct Lookup<'a> {
    /// The column carrying batch ids, and this batch's id.
    pub batch_column: &'a str,
    pub batch_id: &'a str,
    /// The batch's Native block, staged as the probe that bounds the read.
    pub block: &'a Bytes,
    /// `(metadata.stream, metadata.id)` columns: also read which entries the
    /// found rows are. None: count only.
    pub keys: Option<(Option<&'a str>, &'a str)>,
}

/// What the table holds of a batch.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Found {
    /// Rows carrying the batch id.
    pub rows: u64,
    /// With [`Lookup::keys`]: the (stream, entry id) of those rows (stream
    /// `""` without a stream column).
    pub keys: Vec<(String, String)>,
}

/// Looks the batch up on the recovery read endpoints. Replicas /
/// Distributed nodes: the largest answer — a lagging replica may not hold
/// the batch yet, so it is missed only if no reachable one has it
/// (docs/CLICKHOUSE_CLUSTER.md); per entry, too. Shards: the sum over every
/// shard, all of which must answer.
async fn find(sink: &ClickHouseSink, lookup: &Lookup<'_>) -> Result<Found, Error> {
    let (endpoints, all_needed) = sink.read_endpoints();
    let mut answers = Vec::new();
    let mut last_error = None;
    for i in endpoints {
        match find_on(sink, i, lookup).await {
            Ok(found) => answers.push(found),
            Err(e) if all_needed => return Err(e),
            Err(e) => {
                tracing::warn!(endpoint = %sink.endpoints().get(i).label, error = %e, "exactly-once recovery read failed on this endpoint");
                last_error = Some(e);
            }
        }
    }
    if let (true, Some(e)) = (answers.is_empty(), last_error) {
        return Err(e);
    }
    Ok(if all_needed {
        answers.into_iter().fold(Found::default(), |mut all, f| {
            all.rows += f.rows;
            all.keys.extend(f.keys);
            all
        })
    } else {
        largest(answers)
    })
}

/// The largest of replicas' answers, per entry key too.
fn largest(answers: Vec<Found>) -> Found {
    let rows = answers.iter().map(|f| f.rows).max().unwrap_or(0);
    let mut most: HashMap<(String, String), usize> = HashMap::new();
    for found in answers {
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for key in found.keys {
            *counts.entry(key).or_default() += 1;
        }
        for (key, n) in counts {
            let m = most.entry(key).or_default();
            *m = (*m).max(n);
        }
    }
    let keys = most
        .into_iter()
        .flat_map(|(key, n)| std::iter::repeat_n(key, n))
        .collect();
    Found { rows, keys }
}

/// Distinct primary-key values per literal set sent through a Distributed
/// table: bounds one query's text (and its parse time).
const KEYS_PER_QUERY: usize = 1000;

/// Looks the batch up on endpoint `i`: stages the batch as a probe, checks
/// every staged row finds its own primary key (a NaN key does not), then
/// reads only the table's rows with the batch's key values
/// (docs/EXACTLY_ONCE.md, "The settle read is bounded"). The probe is a
/// stage of the batch: a probe left behind is dropped by the next settle.
async fn find_on(sink: &ClickHouseSink, i: usize, lookup: &Lookup<'_>) -> Result<Found, Error> {
    let Some(table) = &sink.eo_table else {
        return find_where(sink, i, lookup, None).await;
    };
    let probe = match stage(sink, i, lookup.block.clone(), lookup.batch_id).await {
        Ok(probe) => probe,
        // Every attempt stages the batch's block before anything can move:
        // a block the server refuses as data never reached the table. (A
        // completion's smaller block is only sent after this block staged.)
        Err(e) if classify(&e) == Disposition::Bisect => {
            tracing::debug!(batch = %lookup.batch_id, error = %e, "the server refuses the batch's data: nothing of it can have landed");
            return Ok(Found::default());
        }
        Err(e) => return Err(e),
    };
    let found = find_through(sink, i, lookup, table, &table_sql(sink, &probe.name)).await;
    discard(sink, probe).await;
    found
}

async fn find_through(
    sink: &ClickHouseSink,
    i: usize,
    lookup: &Lookup<'_>,
    table: &EoTable,
    probe: &str,
) -> Result<Found, Error> {
    let client = &sink.endpoints().get(i).client;
    let check = format!(
        "SELECT count(), countIf({}) FROM {probe}",
        table.key_in_probe(probe)
    );
    let (staged, matched): (u64, u64) = timed(sink, client.query_raw(&check).fetch_one()).await?;
    if matched < staged {
        tracing::warn!(table = %sink.table_name(), batch = %lookup.batch_id, rows = staged - matched, "rows of the batch do not match their own primary-key value (NaN in the key?): reading the whole table for this batch");
        return find_where(sink, i, lookup, None).await;
    }
    if !table.distributed {
        return find_where(sink, i, lookup, Some(table.key_in_probe(probe))).await;
    }
    let mut found = Found::default();
    for chunk in 0.. {
        let sql = format!(
            "SELECT DISTINCT {key} FROM {probe} ORDER BY {key} LIMIT {KEYS_PER_QUERY} OFFSET {}",
            chunk * KEYS_PER_QUERY,
            key = table.key
        );
        let values = timed(sink, async {
            client
                .query_raw(&sql)
                .fetch_bytes("Values")?
                .collect()
                .await
        })
        .await?;
        let values = String::from_utf8_lossy(&values);
        if values.trim().is_empty() {
            break;
        }
        let part = find_where(sink, i, lookup, Some(table.key_in_values(values.trim()))).await?;
        found.rows += part.rows;
        found.keys.extend(part.keys);
    }
    Ok(found)
}

/// The batch's rows on endpoint `i`, filtered by `bound` too if given.
async fn find_where(
    sink: &ClickHouseSink,
    i: usize,
    lookup: &Lookup<'_>,
    bound: Option<String>,
) -> Result<Found, Error> {
    let client = &sink.endpoints().get(i).client;
    let mut filter = format!(
        "{} = {}",
        quote_identifier(lookup.batch_column),
        quote_string(lookup.batch_id)
    );
    if let Some(bound) = bound {
        filter = format!("{filter} AND {bound}");
    }
    let target = table_sql(sink, &sink.schema.table);
    // Raw: key values in the text may hold `?`. Literal key sets can be long.
    let query = |sql: String| {
        client
            .query_raw(&sql)
            .with_setting("max_query_size", "67108864")
    };
    match lookup.keys {
        None => {
            let sql = format!("SELECT count() FROM {target} WHERE {filter}");
            let rows = timed(sink, query(sql).fetch_one::<u64>()).await?;
            Ok(Found {
                rows,
                keys: Vec::new(),
            })
        }
        Some((stream, id)) => {
            let stream = stream.map_or_else(
                || "''".to_string(),
                |c| format!("toString({})", quote_identifier(c)),
            );
            let sql = format!(
                "SELECT {stream}, toString({}) FROM {target} WHERE {filter}",
                quote_identifier(id)
            );
            let keys: Vec<(String, String)> = timed(sink, query(sql).fetch_all()).await?;
            Ok(Found {
                rows: keys.len() as u64,
                keys,
            })
        }
    }
}

/// The error is a refused TCP connection (no server listening).
fn connection_refused(error: &Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_answers_combine_to_the_largest_per_entry() {
        let k = |s: &str| ("s".to_string(), s.to_string());
        let a = Found {
            rows: 2,
            keys: vec![k("1-0"), k("2-0")],
        };
        let b = Found {
            rows: 2,
            keys: vec![k("2-0"), k("2-0")],
        };
        let mut all = largest(vec![a, b]);
        all.keys.sort();
        assert_eq!(all.rows, 2);
        assert_eq!(all.keys, vec![k("1-0"), k("2-0"), k("2-0")]);
    }

    #[test]
    fn stage_names_are_plain_identifiers_per_batch() {
        let p = stage_prefix("0f8e1a2b-0000-4abc-8def-0123456789ab");
        assert_eq!(p, "_sluice_stage_0f8e1a2b00004abc8def0123456789ab_");
        // Nothing but the batch id's letters and digits: a hostile id
        // cannot reach the SQL text.
        assert_eq!(stage_prefix("x`; DROP"), "_sluice_stage_xDROP_");
    }
}
