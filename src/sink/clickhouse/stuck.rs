//! Telling the fleet that a flow is stuck on a table-level error
//! ([`crate::sink::clickhouse::escalation`]): ClickHouse refuses every row of a batch the
//! same way, so the batch is kept and retried, and nothing moves.
//!
//! Each stuck replica keeps a record in the hash `sluice:stuck:{flow}`
//! (field = its consumer name; JSON: since when, the table, the error, the
//! rows held), refreshed at every retry and removed once its rows land.
//! `sluice status` reads it; a replica that dies while stuck leaves a record
//! that readers ignore once its `expires_ms` has passed (the hash itself
//! expires too, when no replica refreshes it any more).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use serde::{Deserialize, Serialize};

/// How long a record counts without being refreshed: well over the slowest
/// retry of a stuck batch (60 s).
pub(crate) const RECORD_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub(crate) enum StuckError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("stuck record: {0}")]
    Json(#[from] serde_json::Error),
}

/// One replica's record of a flow stuck on a table-level error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StuckReport {
    pub consumer: String,
    /// `db.table`.
    pub table: String,
    /// Unix milliseconds since which the rows are refused.
    pub since_ms: u64,
    /// The server's latest message.
    pub error: String,
    /// Rows held, neither inserted nor dead-lettered.
    pub rows: usize,
    /// Unix milliseconds after which the record no longer counts.
    pub expires_ms: u64,
}

/// The hash of `flow`'s records (one cluster slot per flow).
pub(crate) fn key(flow: &str) -> String {
    format!("sluice:stuck:{{{flow}}}")
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes (or refreshes) `report` for `flow`.
pub(crate) async fn publish(
    client: &Client,
    flow: &str,
    report: &StuckReport,
) -> Result<(), StuckError> {
    let key = key(flow);
    let json = serde_json::to_string(report)?;
    let pipeline = client.pipeline();
    let _: () = pipeline
        .hset(&key, (report.consumer.as_str(), json))
        .await?;
    let _: () = pipeline
        .pexpire(&key, RECORD_TTL.as_millis() as i64, None)
        .await?;
    let _: Vec<Value> = pipeline.all().await?;
    Ok(())
}

/// Removes `consumer`'s record of `flow`.
pub(crate) async fn clear(client: &Client, flow: &str, consumer: &str) -> Result<(), StuckError> {
    let _: i64 = client.hdel(key(flow), consumer).await?;
    Ok(())
}

/// `flow`'s records that still count at `now_ms`, oldest first.
pub(crate) async fn list(
    client: &Client,
    flow: &str,
    now_ms: u64,
) -> Result<Vec<StuckReport>, StuckError> {
    let all: std::collections::HashMap<String, String> = client.hgetall(key(flow)).await?;
    let mut out = Vec::new();
    for json in all.values() {
        let report: StuckReport = serde_json::from_str(json)?;
        if report.expires_ms > now_ms {
            out.push(report);
        }
    }
    out.sort_by_key(|r| r.since_ms);
    Ok(out)
}
