//! A fleet that is kind to ClickHouse: 4 replicas at a steady rate into one
//! table, without and with a fleet-wide insert budget
//! (`sink.max_inserts_per_second`), against private Redis + ClickHouse.
//!
//! Every second it samples the table's insert count (the largest block
//! number in `system.parts`: every insert into a MergeTree takes the next
//! one) and its active part count, and prints both over time, then a
//! summary per run: inserts/s, rows per insert, peak and final active
//! parts, msgs/s sent (the producer's achieved rate), and how long the last
//! entries took to land after the producer stopped.
//!
//! `cargo bench --bench budget`; knobs: `SLUICE_BENCH_RATE` (msgs/s,
//! default 20,000), `SLUICE_BENCH_SECS` (steady phase, default 30),
//! `SLUICE_BENCH_BUDGET` (inserts/s of the budgeted run, default 2).

mod common;
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{enqueue, env_usize, under_cargo_bench};
use harness::{wait_for, ClickHouseServer, RedisServer, Worker};

const REPLICAS: usize = 4;

struct Run {
    label: String,
    inserts_per_sec: f64,
    rows_per_insert: f64,
    peak_parts: u64,
    end_parts: u64,
    sent_per_sec: f64,
    drain_secs: f64,
}

async fn inserts_and_parts(ch: &ClickHouseServer, table: &str) -> (u64, u64) {
    let tsv = ch
        .query_tsv(&format!(
            "SELECT max(max_block_number), countIf(active) FROM system.parts WHERE database = 'default' AND table = '{table}'"
        ))
        .await;
    let mut f = tsv
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    (f.next().unwrap_or(0), f.next().unwrap_or(0))
}

async fn run(
    redis: &RedisServer,
    ch: &ClickHouseServer,
    rate: usize,
    secs: u64,
    budget: Option<usize>,
) -> Run {
    let label = match budget {
        Some(b) => format!("budget {b}/s"),
        None => "no budget".to_string(),
    };
    let suffix = budget.map(|b| b.to_string()).unwrap_or_default();
    let (stream, table) = (format!("kind{suffix}"), format!("kind{suffix}"));
    ch.exec(&format!("CREATE TABLE {table} (rec_id UInt64, task_for String, function_type String, data String) ENGINE = MergeTree ORDER BY rec_id")).await;
    let budget_key = budget
        .map(|b| format!(", max_inserts_per_second = {b}"))
        .unwrap_or_default();
    let config = format!(
        r#"[redis]
url = "{}"
[clickhouse]
url = "{}"
[[flow]]
name = "kind"
streams = ["{stream}"]
sink = {{ type = "clickhouse", table = "{table}"{budget_key} }}
batch = {{ max_rows = 50000, max_bytes = "16MiB", max_wait = "100ms" }}
"#,
        redis.url(),
        ch.url()
    );
    let workers: Vec<Worker> = (0..REPLICAS).map(|_| Worker::spawn(&config)).collect();
    // Producer: every 10 ms, rate/100 messages, until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (rc, stream, stop) = (redis.client().await, stream.clone(), stop.clone());
        tokio::spawn(async move {
            let per_tick = (rate / 100).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                enqueue(&rc, &[&stream], sent, per_tick).await;
                sent += per_tick;
            }
            sent
        })
    };
    // A sample every second: inserts in that second, active parts.
    let started = Instant::now();
    let (mut per_sec, mut parts_over_time) = (Vec::new(), Vec::new());
    let (mut last, mut first) = (0, None);
    for t in 1..=secs {
        tokio::time::sleep_until((started + Duration::from_secs(t)).into()).await;
        let (inserts, parts) = inserts_and_parts(ch, &table).await;
        if t > 1 {
            per_sec.push(inserts - last);
        } else {
            // The summary counts from the first full second on.
            first = Some((inserts, Instant::now()));
        }
        parts_over_time.push(parts);
        last = inserts;
    }
    let (from, at) = first.expect("secs >= 2");
    let inserts_per_sec = (last - from) as f64 / at.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let total = producer.await.unwrap();
    let stopped = Instant::now();
    let sent_per_sec = total as f64 / started.elapsed().as_secs_f64();
    wait_for(Duration::from_secs(300), "everything landed", || async {
        ch.count(&table).await >= total as u64
    })
    .await;
    let drain_secs = stopped.elapsed().as_secs_f64();
    let (inserts, end_parts) = inserts_and_parts(ch, &table).await;
    drop(workers);
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    println!(
        "[{label}] inserts per second, from second 2: {}",
        list(&per_sec)
    );
    println!(
        "[{label}] active parts, every second:        {}",
        list(&parts_over_time)
    );
    Run {
        label,
        inserts_per_sec,
        rows_per_insert: total as f64 / inserts.max(1) as f64,
        peak_parts: parts_over_time.iter().copied().max().unwrap_or(0),
        end_parts,
        sent_per_sec,
        drain_secs,
    }
}

fn main() {
    if !under_cargo_bench("budget") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let rate = env_usize("SLUICE_BENCH_RATE", 20_000);
        let secs = env_usize("SLUICE_BENCH_SECS", 30) as u64;
        let budget = env_usize("SLUICE_BENCH_BUDGET", 2);
        let (redis, ch) = tokio::join!(RedisServer::start(), ClickHouseServer::start());
        let runs = vec![
            run(&redis, &ch, rate, secs, None).await,
            run(&redis, &ch, rate, secs, Some(budget)).await,
        ];
        println!("\nsluice budget bench: {REPLICAS} replicas, {rate} msgs/s for {secs}s, batch max_wait 100ms / max_rows 50,000");
        println!(
            "{:<14} {:>10} {:>12} {:>11} {:>10} {:>11} {:>16}",
            "run", "inserts/s", "rows/insert", "peak parts", "end parts", "msgs/s sent", "last landed after"
        );
        for r in &runs {
            println!(
                "{:<14} {:>10.2} {:>12.0} {:>11} {:>10} {:>11.0} {:>14.2} s",
                r.label,
                r.inserts_per_sec,
                r.rows_per_insert,
                r.peak_parts,
                r.end_parts,
                r.sent_per_sec,
                r.drain_secs
            );
        }
    });
}
