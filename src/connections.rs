//! Named connections at run time: connecting to them for `sluice check`,
//! and describing which connection each flow writes to (metrics, status,
//! check). Their sections, names and references are checked in
//! `crate::config::connections`.

use std::fmt::Write;

pub(crate) use crate::config::connections::{label, sink_connection, DEFAULT};
use crate::config::{redact_url, ClickHouseConfig, Config, Delivery, FlowConfig, SinkConfig};
use crate::obs::metrics::Metrics;
use crate::redis::client::connect;
use crate::sink::clickhouse::endpoints::{probe, EndpointStatus};
use crate::sink::clickhouse::split_table;

/// `sluice_flow_sink_info{flow, sink, connection} 1`: which connection each
/// flow writes to, for dashboards to join on `flow`.
pub(crate) fn export_info(metrics: &Metrics, config: &Config) {
    let gauge = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "sluice_flow_sink_info",
            "Always 1: the sink kind and the named connection each flow writes to.",
        ),
        &["flow", "sink", "connection"],
    )
    .expect("valid metric");
    // Registered once per process (a second worker run in the same process
    // keeps the first registration's series).
    if metrics.registry.register(Box::new(gauge.clone())).is_err() {
        return;
    }
    for f in &config.flows {
        let (sink, connection) = sink_connection(&f.sink);
        gauge.with_label_values(&[&f.name, sink, connection]).set(1);
    }
}

/// One flow's path with its connections, e.g. ``stream `jobs.out` on redis
/// `default` → stream sink on redis `edge` (exactly-once)``.
pub(crate) fn describe_flow(config: &Config, flow: &FlowConfig) -> String {
    let streams = flow
        .base_streams
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let sink = match &flow.sink {
        SinkConfig::Stream(s) => format!("stream sink on redis `{}`", label(s.redis.as_deref())),
        SinkConfig::Clickhouse {
            table, clickhouse, ..
        } => {
            let db = config
                .clickhouse_for(clickhouse.as_deref())
                .map_or("default", |c| c.database.as_str());
            let (db, table) = split_table(db, table);
            format!(
                "ClickHouse `{}` table `{db}`.`{table}`",
                label(clickhouse.as_deref())
            )
        }
    };
    let delivery = match flow.delivery {
        Delivery::AtLeastOnce => "at-least-once",
        Delivery::ExactlyOnce => "exactly-once",
    };
    format!("stream {streams} on redis `{DEFAULT}` → {sink} ({delivery})")
}

/// `sluice status`'s table of each flow's sink and connection.
pub(crate) fn render_sinks(config: &Config) -> String {
    if config.flows.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "
{:<16} {:<10} {:<12} TARGET",
        "FLOW", "SINK", "CONNECTION"
    );
    for f in &config.flows {
        let (sink, connection) = sink_connection(&f.sink);
        let target = match &f.sink {
            SinkConfig::Clickhouse { table, .. } => table.clone(),
            SinkConfig::Stream(s) => {
                let mut names: Vec<&str> = Vec::new();
                for t in s.to.iter().chain(s.routes.values()).chain(s.default.iter()) {
                    names.extend(t.0.iter().map(|t| t.stream.as_str()));
                }
                names.join(", ")
            }
        };
        let _ = writeln!(
            out,
            "{:<16} {:<10} {:<12} {target}",
            f.name, sink, connection
        );
    }
    out
}

/// `sluice check`'s lines for the named connections: connects to each
/// Redis (PING + version) and asks each ClickHouse endpoint its version.
/// Err names the first connection that cannot be reached.
pub(crate) async fn check_named(config: &Config) -> anyhow::Result<String> {
    let mut out = String::new();
    for (name, redis) in &config.redis_remote {
        let client = connect(redis)
            .await
            .map_err(|e| anyhow::anyhow!("redis.remote.{name}.url: cannot connect: {e}"))?;
        let version = redis_version(&client).await;
        let kind = if redis.is_cluster() {
            "redis cluster"
        } else {
            "redis"
        };
        writeln!(
            out,
            "{kind} `{name}`: {} (version {version}) ok",
            redact_url(&redis.url)
        )?;
    }
    for (name, ch) in &config.clickhouse_remote {
        let endpoints = probe(ch).await;
        out.push_str(&endpoint_lines(
            &format!("clickhouse `{name}`"),
            ch,
            &endpoints,
        )?);
    }
    Ok(out)
}

/// `sluice check`'s lines for one ClickHouse connection's endpoints
/// (`label`: `clickhouse`, or ``clickhouse `name` ``). One endpoint down of
/// several is a warning (the others take its inserts); all down is the
/// error.
pub(crate) fn endpoint_lines(
    label: &str,
    ch: &ClickHouseConfig,
    endpoints: &[EndpointStatus],
) -> anyhow::Result<String> {
    let mut out = String::new();
    let several = endpoints.len() > 1;
    for e in endpoints {
        match (&e.version, &e.error) {
            (Some(v), _) => writeln!(
                out,
                "{label}: {}{} (version {v}) as user `{}` ok",
                if several {
                    format!("{} ", e.key)
                } else {
                    String::new()
                },
                e.endpoint,
                ch.user
            )?,
            (None, error) => writeln!(
                out,
                "{label}: {} {} DOWN: {}",
                e.key,
                e.endpoint,
                error.as_deref().unwrap_or("?")
            )?,
        }
    }
    if !endpoints.iter().any(|e| e.up) {
        let e = &endpoints[0];
        anyhow::bail!(
            "{}: cannot query {}: {}",
            e.key,
            e.endpoint,
            e.error.as_deref().unwrap_or("?")
        );
    }
    Ok(out)
}

/// `redis_version` from INFO server, or `?`.
pub(crate) async fn redis_version(client: &fred::prelude::Client) -> String {
    use fred::prelude::*;
    let info: String = client
        .info(Some(fred::types::InfoKind::Server))
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string()
}
