//! `sluice status`: per flow and stream, length, lag, pending, consumers and
//! dead letters; then the ClickHouse endpoints, the sinks' connections and
//! the sources.

use anyhow::Context;

use crate::config::Config;
use crate::connections::render_sinks;
use crate::obs::status::{all, render_endpoints, render_table};
use crate::redis::client::connect;
use crate::sink::clickhouse::endpoints::probe;
use crate::source::status as source_status;

/// Prints the status as a table, or as JSON with `json`.
pub(super) async fn main(config: &Config, json: bool) -> anyhow::Result<()> {
    let client = connect(&config.redis).await.context("redis.url")?;
    let list = all(&client, config).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    print!("{}", render_table(&list));
    // The default ClickHouse, then the named ones.
    for ch in config
        .clickhouse
        .iter()
        .chain(config.clickhouse_remote.values())
    {
        print!("{}", render_endpoints(&probe(ch).await));
    }
    print!("{}", render_sinks(config));
    let sources = source_status::all(config).await?;
    print!("{}", source_status::render(&sources));
    Ok(())
}
