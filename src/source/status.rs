//! `sluice status` for sources: where each one's cursor is, how many rows it
//! wrote, who runs it, whether a `once` source is done.

use serde::Serialize;

use super::cursor::{self, Keys};
use super::query::decode_position;
use crate::config::source::{SourceConfig, SourceMode};
use crate::config::{Config, Delivery};
use crate::connections;
use crate::redis::client;
use crate::redis::commands;
use crate::redis::sharder::Sharder;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SourceStatus {
    pub source: String,
    /// `<clickhouse connection>:<table>`.
    pub from: String,
    /// `<redis connection>:<stream>`.
    pub to: String,
    pub mode: &'static str,
    pub delivery: &'static str,
    /// The last position written (cursor, key…), or empty before the first.
    pub position: Vec<String>,
    pub rows: u64,
    pub updated_ms: Option<u64>,
    pub done_ms: Option<u64>,
    /// The replica holding the lease, if any.
    pub holder: Option<String>,
    pub stream_length: u64,
}

/// Reads one source's state from its Redis.
pub(crate) async fn status(config: &Config, s: &SourceConfig) -> anyhow::Result<SourceStatus> {
    let client = client::connect(config.redis_for(s.redis.as_deref())).await?;
    let keys = Keys::new(&s.name, &s.to);
    let state = cursor::load(&client, &keys).await?;
    let holder = cursor::holder(&client, &keys).await?;
    let mut stream_length = 0;
    for shard in Sharder::new(config).shards_of(&s.to) {
        stream_length += commands::len(&client, &shard).await?;
    }
    Ok(SourceStatus {
        source: s.name.clone(),
        from: format!(
            "{}:{}",
            connections::label(s.clickhouse.as_deref()),
            s.table
        ),
        to: format!("{}:{}", connections::label(s.redis.as_deref()), s.to),
        mode: match s.mode {
            SourceMode::Once => "once",
            SourceMode::Follow => "follow",
        },
        delivery: match s.delivery {
            Delivery::AtLeastOnce => "at_least_once",
            Delivery::ExactlyOnce => "exactly_once",
        },
        position: decode_position(&state.pos)
            .unwrap_or_default()
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect(),
        rows: state.rows,
        updated_ms: state.updated_ms,
        done_ms: state.done_ms,
        holder,
        stream_length,
    })
}

/// Every source's state.
pub(crate) async fn all(config: &Config) -> anyhow::Result<Vec<SourceStatus>> {
    let mut out = Vec::new();
    for s in &config.sources {
        out.push(status(config, s).await?);
    }
    Ok(out)
}

/// `sluice check`'s lines for source `index`: opens it (the table, its
/// columns against the config, the target Redis) and describes it.
pub(crate) async fn plan(config: &Config, index: usize) -> anyhow::Result<Vec<String>> {
    let source = super::Source::open(config, index, "sluice-check", None).await?;
    Ok(source.describe().await?)
}

/// A plain-text table.
pub(crate) fn render(list: &[SourceStatus]) -> String {
    use std::fmt::Write;
    if list.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<16} {:<28} {:<28} {:<7} {:>10} {:>10} {:<9} {:<24} POSITION",
        "SOURCE", "FROM", "TO", "MODE", "ROWS", "STREAM_LEN", "STATE", "HOLDER"
    );
    for s in list {
        let state = if s.done_ms.is_some() && s.mode == "once" {
            "done"
        } else if s.holder.is_some() {
            "running"
        } else {
            "idle"
        };
        let _ = writeln!(
            out,
            "{:<16} {:<28} {:<28} {:<7} {:>10} {:>10} {:<9} {:<24} {}",
            s.source,
            s.from,
            s.to,
            s.mode,
            s.rows,
            s.stream_length,
            state,
            s.holder.as_deref().unwrap_or("-"),
            if s.position.is_empty() {
                "(start)".to_string()
            } else {
                s.position.join(", ")
            }
        );
    }
    out
}
