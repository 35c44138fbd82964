//! `sluice check`: validates the config, connects to Redis and ClickHouse,
//! checks each flow's table and column mapping, and prints the plan.

use std::fmt::Write;

pub(crate) use crate::config::redact_url;
use crate::config::{Config, OnSuccess, SinkConfig};
use crate::connections;
use crate::handler;
use crate::redis::version;
use crate::redis::{client, commands};
use crate::sink::clickhouse::budget;
use crate::sink::clickhouse::endpoints;
use crate::sink::clickhouse::exactly_once::stage_table;
use crate::sink::clickhouse::ClickHouseSink;
use crate::sink::stream;
use crate::source::status;

/// Returns the human-readable plan, or the first problem found.
pub(crate) async fn check(config: &Config) -> anyhow::Result<String> {
    let mut out = String::new();
    let redis = client::connect(&config.redis)
        .await
        .map_err(|e| anyhow::anyhow!("redis.url: cannot connect: {e}"))?;
    let versions = version::check(&redis).await?;
    let version = versions
        .iter()
        .map(|(_, v)| v.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(", ");
    let kind = if config.redis.is_cluster() {
        "redis cluster"
    } else {
        "redis"
    };
    writeln!(
        out,
        "{kind}: {} (version {version}) ok",
        redact_url(&config.redis.url)
    )?;
    if let Some(ch) = &config.clickhouse {
        let endpoints = endpoints::probe(ch).await;
        let several = endpoints.len() > 1;
        out.push_str(&connections::endpoint_lines("clickhouse", ch, &endpoints)?);
        if several {
            writeln!(
                out,
                "clickhouse: endpoints = {:?}, health checks every {:?}",
                ch.endpoints, ch.health_check_every
            )?;
        }
    }
    // Every named connection (`[redis.remote.*]`, `[clickhouse.remote.*]`).
    out.push_str(&connections::check_named(config).await?);
    for f in &config.flows {
        writeln!(out, "flow `{}`:", f.name)?;
        writeln!(out, "  {}", connections::describe_flow(config, f))?;
        for s in &f.streams {
            let len = commands::len(&redis, s).await?;
            writeln!(
                out,
                "  reads stream `{s}` (length {len}) as group `{}` (created at `{}` if missing)",
                f.group, f.start_id
            )?;
        }
        if let Some(h) = &f.handler {
            writeln!(out, "  handler: {}", handler::describe(h))?;
        }
        match &f.sink {
            SinkConfig::Stream(s) => {
                for line in stream::describe(s, config) {
                    writeln!(out, "  {line}")?;
                }
            }
            SinkConfig::Clickhouse {
                table,
                shard_by,
                clickhouse,
                max_inserts_per_second,
                max_batch_scale,
            } => {
                let ch = config
                    .clickhouse_for(clickhouse.as_deref())
                    .expect("validated");
                let sink = ClickHouseSink::open(ch, f, table, None)
                    .await
                    .map_err(|e| anyhow::anyhow!("flow `{}`: {e}", f.name))?;
                if let Some(field) = shard_by {
                    writeln!(
                        out,
                        "  sharded by field `{field}`: row → shard cityHash64({field}) % {}, shards in clickhouse.urls order (no failover between shards)",
                        sink.endpoints().len()
                    )?;
                }
                writeln!(
                    out,
                    "  inserts into {} (Native, batches of ≤{} rows / ≤{} / ≤{:?}), columns:",
                    sink.table_name(),
                    f.batch.max_rows,
                    f.batch.max_bytes,
                    f.batch.max_wait
                )?;
                if let Some(rate) = max_inserts_per_second {
                    writeln!(
                        out,
                        "  insert budget: at most {rate} inserts/s into {} across the fleet (Redis key `{}`)",
                        sink.table_name(),
                        budget::key(
                            clickhouse.as_deref(),
                            &sink.schema.database,
                            &sink.schema.table
                        )
                    )?;
                }
                if *max_batch_scale > 1.0 {
                    writeln!(
                        out,
                        "  adaptive batches: limits grow up to {max_batch_scale}× while ClickHouse signals pressure"
                    )?;
                }
                for c in sink.mapper.columns() {
                    let source = if f.metadata.id.as_deref() == Some(c.name.as_str()) {
                        "metadata: entry id".to_string()
                    } else if f.metadata.stream.as_deref() == Some(c.name.as_str()) {
                        "metadata: stream name".to_string()
                    } else if f.metadata.enqueued_at.as_deref() == Some(c.name.as_str()) {
                        "metadata: enqueue time from the id".to_string()
                    } else if f.metadata.deliveries.as_deref() == Some(c.name.as_str()) {
                        "metadata: delivery count".to_string()
                    } else {
                        format!("field `{}`", c.name)
                    };
                    writeln!(out, "    {} {} ← {source}", c.name, c.type_name)?;
                }
                if let Some(eo) = &sink.eo_table {
                    writeln!(out, "  {}", eo.describe())?;
                    if let Some(warning) = stage_table::completion_warning(f) {
                        writeln!(out, "  warning: {warning}")?;
                    }
                }
            }
        }
        let ack = match f.on_success {
            OnSuccess::Ack => "XACK",
            OnSuccess::AckDel => "XACK + XDEL",
        };
        let after = match &f.sink {
            SinkConfig::Stream(_) => "the XADD to its targets",
            SinkConfig::Clickhouse { .. } => "ClickHouse confirmed the insert",
        };
        writeln!(
            out,
            "  {ack} once {after}; dead letters → `{}` (after {} deliveries or on bad data)",
            f.dead_letter_stream(),
            f.max_deliveries
        )?;
        writeln!(
            out,
            "  claims entries idle > {:?} every {:?}",
            f.claim.min_idle, f.claim.every
        )?;
    }
    for i in 0..config.sources.len() {
        for line in status::plan(config, i).await? {
            writeln!(out, "{line}")?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact_url("https://u:p@ss@h:8443/x?y=a@b"),
            "https://u:***@h:8443/x?y=a@b"
        );
        assert_eq!(redact_url("rediss://h/0?x=@"), "rediss://h/0?x=@");
        assert_eq!(redact_url("redis://u:pa/ss@h/0"), "redis://u:***@h/0");
        assert_eq!(redact_url("redis://sluice@h/0"), "redis://sluice@h/0");
    }
}
