//! Exactly-once settle on a large table: how much of the table a recovering
//! replica reads to settle a dead replica's batch (docs/EXACTLY_ONCE.md,
//! "The settle read is bounded").
//!
//! Fills a MergeTree table (`ORDER BY rec_id`) with `SLUICE_BENCH_ROWS` rows
//! (default 100,000,000; `INSERT … SELECT FROM numbers(…)`; rec_ids from 0,
//! as the batch's are), then: worker A
//! records a batch of `SLUICE_BENCH_N` messages (default 5,000) while its
//! ClickHouse refuses connections and is killed; worker B recovers the batch
//! (fence, lookup, insert). Prints the granules (marks) ClickHouse selected
//! while B ran, from `system.events`, and B's time from start to settled —
//! next to what the lookup by batch id alone (the old settle query) reads
//! and takes on the same table. `cargo bench --bench settle`.

mod common;
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;
#[path = "../tests/it/common.rs"]
mod it_common;

use std::time::{Duration, Instant};

use common::{cmd, enqueue, env_usize, under_cargo_bench};
use fred::prelude::*;
use fred::types::Value;
use harness::{wait_for, ClickHouseServer, RedisServer, TcpProxy, Worker};

const LONG: Duration = Duration::from_secs(600);

fn config(redis_url: &str, ch_url: &str, table: &str) -> String {
    it_common::config_text(
        redis_url,
        ch_url,
        "settle",
        "jobs",
        table,
        r#"delivery = "exactly_once"
batch_id_column = "_batch"
metadata = { id = "_id" }
batch = { max_rows = 100000, max_wait = "1s" }
claim = { min_idle = "1s", every = "300ms" }"#,
    )
    // The lease (insert timeout + 5 s) is waited out before the take-over.
    .replace(
        "database = \"default\"",
        "database = \"default\"\ninsert_timeout = \"5s\"",
    )
}

async fn marks(ch: &ClickHouseServer) -> u64 {
    ch.query_u64("SELECT toUInt64(sum(value)) FROM system.events WHERE event = 'SelectedMarks'")
        .await
}

async fn scalar(rc: &Client, name: &'static str, args: Vec<Value>) -> u64 {
    let v: Value = rc.custom(cmd(name, "jobs"), args).await.unwrap();
    match v {
        Value::Array(items) => items.first().and_then(|v| v.as_u64()).unwrap_or(0),
        v => v.as_u64().unwrap_or(0),
    }
}

async fn run() {
    let rows = env_usize("SLUICE_BENCH_ROWS", 100_000_000) as u64;
    let n = env_usize("SLUICE_BENCH_N", 5_000);
    let (redis, ch) = tokio::join!(RedisServer::start(), ClickHouseServer::start());
    let rc = redis.client().await;
    let table = "settle_big";
    ch.exec(&format!(
        "CREATE TABLE {table} (rec_id UInt64, task_for String, function_type String, data String, _id String, _batch String) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    let started = Instant::now();
    const CHUNK: u64 = 10_000_000;
    for from in (0..rows).step_by(CHUNK as usize) {
        let count = CHUNK.min(rows - from);
        // rec_ids from 0, like the batch's (its key values are in the
        // table's granules); 5000-row "batches" with their own ids.
        ch.exec(&format!(
            "INSERT INTO {table} SELECT number, 'a', 'sum', '{{}}', toString(number), hex(cityHash64(intDiv(number, 5000))) FROM numbers({from}, {count})"
        ))
        .await;
    }
    println!(
        "table: {} rows ({} marks) filled in {:.0?}",
        ch.count(table).await,
        rows.div_ceil(8192),
        started.elapsed()
    );

    let proxy = TcpProxy::start(ch.http_addr());
    let mut a = Worker::spawn(&config(&redis.url(), &proxy.url(), table));
    wait_for(LONG, "A running", || async {
        a.log_contents().contains("flow running")
    })
    .await;
    proxy.refuse();
    enqueue(&rc, &["jobs"], 0, n).await;
    wait_for(LONG, "A retrying its batch", || async {
        a.log_contents().contains("insert failed; settling")
    })
    .await;
    a.kill();

    let before = marks(&ch).await;
    let started = Instant::now();
    let b = Worker::spawn(&config(&redis.url(), &ch.url(), table));
    wait_for(LONG, "B settled the batch", || async {
        scalar(&rc, "XPENDING", vec!["jobs".into(), "g".into()]).await == 0
    })
    .await;
    let took = started.elapsed();
    let read = marks(&ch).await - before;
    assert!(b
        .log_contents()
        .contains("no earlier attempt had landed it"));
    let batch = ch
        .query_tsv(&format!(
            "SELECT any(_batch) FROM {table} WHERE _id LIKE '%-%'"
        ))
        .await;
    let batch = batch.trim();
    let log = b.log_contents();
    let at = |what: &str| log.lines().find(|l| l.contains(what)).and_then(log_seconds);
    let settle = match (
        at("recovering a dead replica's batch"),
        at("batch inserted after settling"),
    ) {
        (Some(from), Some(to)) => format!("{:.0} ms", (to - from) * 1000.0),
        _ => "?".into(),
    };
    println!(
        "recovery: {read} marks selected while B ran; take-over → settled and inserted: {settle}; B start → acked: {took:.1?} (includes waiting out A's lease)"
    );

    // The old settle query, for comparison.
    let before = marks(&ch).await;
    let t = Instant::now();
    let held = ch
        .query_u64(&format!(
            "SELECT count() FROM {table} WHERE _batch = '{batch}'"
        ))
        .await;
    println!(
        "lookup by batch id alone (the old settle query): {:.1?}, {} marks selected, {held} rows",
        t.elapsed(),
        marks(&ch).await - before
    );
}

/// Seconds into the day of a log line's leading RFC 3339 timestamp.
fn log_seconds(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

fn main() {
    if !under_cargo_bench("settle") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
