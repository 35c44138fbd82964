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

use bytes::Bytes;
use clickhouse::error::Error;

use super::clickhouse::{quote_identifier, ClickHouseSink};
use super::endpoints::Endpoint;

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
pub struct Stage {
    name: String,
    endpoint: usize,
}

/// Creates a stage table for `batch_id` on endpoint `endpoint` and inserts
/// the block into it. Nothing reaches the target yet. On error the stage is
/// dropped (best effort; the next settle drops what is left).
pub async fn stage(
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
pub async fn commit(sink: &ClickHouseSink, stage: Stage, batch_id: &str) -> Result<(), Error> {
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
pub async fn discard(sink: &ClickHouseSink, stage: Stage) {
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
/// then counts the rows carrying `batch_id` in `column`. An endpoint that
/// refuses connections has no server running, so no move can be running
/// there; any other error means "not settled yet": retry.
pub async fn settle(sink: &ClickHouseSink, column: &str, batch_id: &str) -> Result<u64, Error> {
    for ep in sink.endpoints().iter() {
        match drop_stages(sink, ep, batch_id).await {
            Ok(()) => {}
            Err(e) if connection_refused(&e) => {
                tracing::debug!(endpoint = %ep.label, "endpoint refuses connections: nothing of the batch can be moving there");
            }
            Err(e) => return Err(e),
        }
    }
    timed(sink, sink.count_batch(column, batch_id)).await
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
    fn stage_names_are_plain_identifiers_per_batch() {
        let p = stage_prefix("0f8e1a2b-0000-4abc-8def-0123456789ab");
        assert_eq!(p, "_sluice_stage_0f8e1a2b00004abc8def0123456789ab_");
        // Nothing but the batch id's letters and digits: a hostile id
        // cannot reach the SQL text.
        assert_eq!(stage_prefix("x`; DROP"), "_sluice_stage_xDROP_");
    }
}
