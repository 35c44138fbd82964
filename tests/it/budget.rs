//! A fleet that is kind to ClickHouse: the table's insert budget, shared by
//! every replica through Redis (`sink.max_inserts_per_second`).
//!
//! Inserts are counted by the table itself: every insert into a
//! (non-replicated) MergeTree takes the next block number, and a merged
//! part keeps the highest of its sources', so the largest
//! `max_block_number` in `system.parts` is the number of inserts so far.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use sluice::testing::{budget, Budget};

use crate::common::*;
use crate::harness::{free_port, secs, unique_name, wait_for, RedisCluster, RedisServer, Worker};
use crate::observability::{sample, scrape};

/// Inserts into `table` so far.
async fn inserts(s: &Stack, table: &str) -> u64 {
    s.ch
        .query_u64(&format!(
            "SELECT max(max_block_number) FROM system.parts WHERE database = 'default' AND table = '{table}'"
        ))
        .await
}

/// One flow `f` from `stream` into `table`, batches of up to 100ms;
/// `sink_keys` go into the sink, `sections` before the flow.
fn config(s: &Stack, stream: &str, table: &str, sink_keys: &str, sections: &str) -> String {
    format!(
        r#"
[redis]
url = "{}"
[clickhouse]
url = "{}"
[worker]
shutdown_timeout = "20s"
block = "200ms"
{sections}
[[flow]]
name = "f"
streams = ["{stream}"]
group = "g"
sink = {{ type = "clickhouse", table = "{table}", {sink_keys} }}
batch = {{ max_rows = 100000, max_wait = "100ms" }}
dead_letter = "{stream}:dead"
"#,
        s.redis.url(),
        s.ch.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_under_a_budget_of_two_inserts_per_second_make_at_most_two() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("budget"), unique_name("budget"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64, v String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    // max_wait alone would make 4 × 10 inserts/s.
    let config = config(&s, &stream, &table, "max_inserts_per_second = 2", "");
    let workers: Vec<Worker> = (0..4).map(|_| Worker::spawn(&config)).collect();

    // A steady producer: 20 entries every 50 ms.
    let (stop, produced) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let producer = {
        let (rc, stream, stop, produced) =
            (s.rc.clone(), stream.clone(), stop.clone(), produced.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let from = produced.load(Ordering::Relaxed);
                xadd_many(&rc, &stream, 20, |i| {
                    vec![
                        ("id".into(), (from + i).to_string().into_bytes()),
                        ("v".into(), b"x".to_vec()),
                    ]
                })
                .await;
                produced.fetch_add(20, Ordering::Relaxed);
            }
        })
    };
    wait_for(LONG, "all four replicas reading", || async {
        consumer_names(&s.rc, &stream, "g").await.len() == 4
    })
    .await;
    wait_for(LONG, "inserts under way", || async {
        inserts(&s, &table).await > 2
    })
    .await;

    // The measurement window: a fixed span of time by definition.
    let (before, t0) = (inserts(&s, &table).await, Instant::now());
    tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + secs(10))).await;
    let after = inserts(&s, &table).await;
    let window = t0.elapsed().as_secs_f64();
    let made = after - before;
    // Slots are 500 ms apart in Redis's clock; a sealed batch may wait
    // behind the previous insert of its replica, so allow a burst of 4.
    let allowed = (2.0 * window).floor() as u64 + 4;
    eprintln!("{made} inserts in {window:.2}s (allowed {allowed})");
    assert!(
        made <= allowed,
        "{made} inserts in {window:.2}s with a budget of 2/s"
    );
    assert!(made >= 5, "the fleet still inserts: {made} in {window:.2}s");

    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let produced = produced.load(Ordering::Relaxed) as u64;
    wait_for(LONG, "every entry landed", || async {
        s.ch.count(&table).await >= produced
    })
    .await;
    let distinct =
        s.ch.query_u64(&format!("SELECT uniqExact(id) FROM {table}"))
            .await;
    assert_eq!(
        (s.ch.count(&table).await, distinct),
        (produced, produced),
        "nothing lost, nothing twice"
    );
    assert_eq!(xlen(&s.rc, &format!("{stream}:dead")).await, 0);
    wait_for(LONG, "every entry acked", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    drop(workers);
}

/// Reservations `n` apart: the waits the script answers.
async fn waits(budget: &Budget, n: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(budget.reserve().await.unwrap());
    }
    out
}

fn assert_spaced(waits: &[Duration], interval: Duration) {
    for (i, w) in waits.iter().enumerate() {
        let due = interval * i as u32;
        // The reservations themselves take a little of Redis's time.
        assert!(
            *w <= due && *w + Duration::from_millis(200) >= due,
            "reservation {i} waits {w:?}, expected about {due:?}: {waits:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_slots_are_one_interval_apart_across_clients() {
    let redis = RedisServer::start().await;
    let key = budget::key(None, "default", &unique_name("t"));
    // Two "replicas" on their own connections share the one key.
    let (a, b) = (redis.client().await, redis.client().await);
    let (a, b) = (
        Budget::new(a, key.clone(), 4.0),
        Budget::new(b, key.clone(), 4.0),
    );
    let mut w = Vec::new();
    for _ in 0..3 {
        w.extend(waits(&a, 1).await);
        w.extend(waits(&b, 1).await);
    }
    assert_spaced(&w, Duration::from_millis(250));
    // The key expires once its slots are in the past.
    let ttl: i64 = redis.client().await.pttl(&key).await.unwrap();
    assert!(ttl > 1_000 && ttl <= 6 * 250 + 1_000, "pttl {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_script_runs_on_redis_cluster() {
    let cluster = RedisCluster::start(3).await;
    let client = cluster.client().await;
    let budget = Budget::new(
        client,
        budget::key(Some("cold"), "logs", &unique_name("t")),
        10.0,
    );
    assert_spaced(&waits(&budget, 4).await, Duration::from_millis(100));
}

/// A gauge of flow `f` on the worker's `/metrics`.
async fn flow_gauge(port: u16, name: &str) -> f64 {
    sample(&scrape(port).await, name, &[("flow", "f")]).unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_grow_on_too_many_parts_and_return_to_size_when_merges_catch_up() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("adapt"), unique_name("adapt"));
    // Merges stopped: the 4th part refuses inserts with TOO_MANY_PARTS.
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64) ENGINE = MergeTree ORDER BY id SETTINGS parts_to_throw_insert = 4"
    ))
    .await;
    s.ch.exec(&format!("SYSTEM STOP MERGES {table}")).await;
    let port = free_port();
    let metrics = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"");
    let config = config(&s, &stream, &table, "max_batch_scale = 8", &metrics);
    let _worker = Worker::spawn(&config);
    let produced = AtomicUsize::new(0);
    let add = |n: usize| {
        let from = produced.fetch_add(n, Ordering::Relaxed);
        xadd_many(&s.rc, &stream, n, move |i| {
            vec![("id".into(), (from + i).to_string().into_bytes())]
        })
    };
    // Batches one by one until the table refuses them.
    wait_for(LONG, "the table refuses inserts", || async {
        add(10).await;
        flow_gauge(port, "sluice_clickhouse_pressure").await == 2.0
    })
    .await;
    wait_for(LONG, "batches grown to the bound", || async {
        flow_gauge(port, "sluice_batch_scale").await == 8.0
    })
    .await;

    // Merges catch up: calm inserts bring the batches back to size.
    s.ch.exec(&format!("SYSTEM START MERGES {table}")).await;
    s.ch.exec(&format!("OPTIMIZE TABLE {table} FINAL")).await;
    wait_for(LONG, "batches back to the configured size", || async {
        add(10).await;
        flow_gauge(port, "sluice_batch_scale").await == 1.0
    })
    .await;
    assert_eq!(flow_gauge(port, "sluice_clickhouse_pressure").await, 0.0);
    let produced = produced.load(Ordering::Relaxed) as u64;
    wait_for(LONG, "every entry landed once", || async {
        s.ch.count(&table).await == produced
    })
    .await;
    assert_eq!(
        s.ch.query_u64(&format!("SELECT uniqExact(id) FROM {table}"))
            .await,
        produced
    );
}
