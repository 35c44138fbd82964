//! End-to-end benchmark against real servers: one `sluice` worker draining a
//! backlog of seed-shaped 4-field jobs from a private Redis into a private
//! ClickHouse, then a steady-rate phase for latency.
//!
//! Prints msgs/s, enqueue→ack latency p50/p99 (from the worker's histogram),
//! worker peak RSS, and Redis's own time per consumed entry from
//! `INFO commandstats`, so the rate can be set against Redis's limit measured
//! in the same run. `cargo bench --bench e2e`; knobs: `SLUICE_BENCH_N`
//! (backlog size, default 1,000,000), `SLUICE_BENCH_RATE` (steady phase
//! msgs/s, default 50,000), `SLUICE_BENCH_SECS` (steady phase, default 10).

mod common;
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::time::{Duration, Instant};

use common::{cmd, commandstats, enqueue, env_usize, under_cargo_bench};
use fred::prelude::*;
use fred::types::Value;
use harness::{free_port, wait_for, ClickHouseServer, RedisServer, Worker};

/// Quantile from a Prometheus histogram's cumulative buckets (linear
/// interpolation inside the bucket, as `histogram_quantile` does).
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let span = count - prev.1;
            let frac = if span > 0.0 {
                (rank - prev.1) / span
            } else {
                0.0
            };
            return prev.0 + (le - prev.0) * frac;
        }
        prev = (le, count);
    }
    f64::NAN
}

async fn latency_buckets(metrics_port: u16) -> Vec<(f64, f64)> {
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    let mut out = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("sluice_end_to_end_latency_seconds_bucket{") {
            let le = rest
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let count: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
            out.push((le, count));
        }
    }
    out
}

struct Run {
    label: &'static str,
    rate: f64,
    redis_us_per_entry: f64,
    peak_rss_mb: f64,
}

async fn drain_backlog(
    redis: &RedisServer,
    ch: &ClickHouseServer,
    n: usize,
    with_metrics: bool,
    exactly_once: bool,
    label: &'static str,
) -> Run {
    let rc = redis.client().await;
    let stream = harness::unique_name("bench");
    let table = harness::unique_name("bench");
    // A primary key: exactly-once looks a batch up through it (and refuses
    // a table without one). Every run uses the same table.
    ch.exec(&format!("CREATE TABLE {table} (rec_id UInt64, task_for String, function_type String, data String, _batch String, _id String) ENGINE = MergeTree ORDER BY rec_id")).await;
    let delivery = if exactly_once {
        "delivery = \"exactly_once\"\nbatch_id_column = \"_batch\"\nmetadata = { id = \"_id\" }"
    } else {
        ""
    };
    let t = Instant::now();
    enqueue(&rc, &[&stream], 0, n).await;
    eprintln!(
        "[{label}] enqueued {n} in {:.2}s ({:.0}/s)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    let _: Value = rc
        .custom(cmd("CONFIG", ""), vec!["RESETSTAT"])
        .await
        .unwrap();
    let metrics = if with_metrics {
        format!("[metrics]\nlisten = \"127.0.0.1:{}\"\n", free_port())
    } else {
        String::new()
    };
    let config = format!(
        r#"[redis]
url = "{}"
[clickhouse]
url = "{}"
{metrics}
[[flow]]
name = "bench"
streams = ["{stream}"]
sink = {{ type = "clickhouse", table = "{table}" }}
batch = {{ max_rows = 50000, max_bytes = "16MiB", max_wait = "1s" }}
{delivery}
"#,
        redis.url(),
        ch.url()
    );
    let started = Instant::now();
    let worker = Worker::spawn(&config);
    wait_for(Duration::from_secs(600), "backlog drained", || async {
        ch.count(&table).await >= n as u64
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let stats = commandstats(&rc).await;
    let usec = |c: &str| stats.get(c).map(|s| s.1).unwrap_or(0) as f64;
    let redis_us = (usec("xreadgroup") + usec("xack")) / n as f64;
    let rss = worker.peak_rss_kb().unwrap_or(0) as f64 / 1024.0;
    drop(worker);
    let _: Value = rc
        .custom(cmd("DEL", &stream), vec![stream.as_str()])
        .await
        .unwrap();
    Run {
        label,
        rate: n as f64 / secs,
        redis_us_per_entry: redis_us,
        peak_rss_mb: rss,
    }
}

async fn steady_latency(
    redis: &RedisServer,
    ch: &ClickHouseServer,
    rate: usize,
    secs: u64,
) -> (f64, f64, f64) {
    let rc = redis.client().await;
    let stream = harness::unique_name("lat");
    let table = harness::unique_name("lat");
    ch.exec(&format!("CREATE TABLE {table} (rec_id UInt64, task_for String, function_type String, data String) ENGINE = MergeTree ORDER BY tuple()")).await;
    let port = free_port();
    let config = format!(
        r#"[redis]
url = "{}"
[clickhouse]
url = "{}"
[metrics]
listen = "127.0.0.1:{port}"
[[flow]]
name = "bench"
streams = ["{stream}"]
sink = {{ type = "clickhouse", table = "{table}" }}
batch = {{ max_rows = 50000, max_bytes = "16MiB", max_wait = "100ms" }}
"#,
        redis.url(),
        ch.url()
    );
    let worker = Worker::spawn(&config);
    wait_for(Duration::from_secs(30), "metrics up", || async {
        harness::port_open(port).await
    })
    .await;
    // Producer: every 10 ms, rate/100 messages.
    let per_tick = (rate / 100).max(1);
    let total = per_tick * 100 * secs as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        enqueue(&rc, &[&stream], sent, per_tick).await;
        sent += per_tick;
    }
    wait_for(Duration::from_secs(120), "steady phase landed", || async {
        ch.count(&table).await >= total as u64
    })
    .await;
    let buckets = latency_buckets(port).await;
    drop(worker);
    (
        quantile(&buckets, 0.5),
        quantile(&buckets, 0.99),
        total as f64,
    )
}

fn main() {
    if !under_cargo_bench("e2e") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let n = env_usize("SLUICE_BENCH_N", 1_000_000);
        let rate = env_usize("SLUICE_BENCH_RATE", 50_000);
        let secs = env_usize("SLUICE_BENCH_SECS", 10) as u64;
        let (redis, ch) = tokio::join!(RedisServer::start(), ClickHouseServer::start());
        let runs = vec![
            drain_backlog(&redis, &ch, n, true, false, "metrics on").await,
            drain_backlog(&redis, &ch, n, false, false, "metrics off").await,
            drain_backlog(&redis, &ch, n, true, true, "exactly-once").await,
        ];
        let (p50, p99, sent) = steady_latency(&redis, &ch, rate, secs).await;
        println!("\nsluice e2e bench: {n} seed-shaped 4-field messages, 1 worker, batch 50,000 rows");
        println!("{:<14} {:>12} {:>22} {:>22} {:>14}", "run", "msgs/s", "redis µs/entry (XREADGROUP+XACK)", "redis limit msgs/s", "worker peak RSS");
        for r in &runs {
            println!(
                "{:<14} {:>12.0} {:>22.2} {:>22.0} {:>11.1} MiB",
                r.label, r.rate, r.redis_us_per_entry, 1e6 / r.redis_us_per_entry, r.peak_rss_mb
            );
        }
        println!("metrics cost: {:.1}% of throughput", (1.0 - runs[0].rate / runs[1].rate) * 100.0);
        println!("exactly-once (ledger + fenced stage insert) cost: {:.1}% of throughput", (1.0 - runs[2].rate / runs[0].rate) * 100.0);
        println!("steady {rate} msgs/s for {secs}s ({sent} msgs, max_wait 100ms): enqueue→ack latency p50 {:.0} ms, p99 {:.0} ms", p50 * 1000.0, p99 * 1000.0);
    });
}
