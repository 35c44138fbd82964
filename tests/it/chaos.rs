//! Chaos, small and fast: each case of `cargo bench --bench chaos` (see
//! `chaos/engine.rs` and docs/RELIABILITY.md) at a size that runs in well
//! under a minute against a debug build, asserting zero loss. The seed is
//! random and printed; `SLUICE_TEST_CHAOS_SEED=N` replays one.

mod engine;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::harness::{unique_name, wait_for, Worker};
use engine::{Case, Delivery, Params, Report};

fn seed() -> u64 {
    let seed = std::env::var("SLUICE_TEST_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed: {seed} (replay with SLUICE_TEST_CHAOS_SEED={seed})");
    seed
}

/// Runs `case` and fails on any problem (loss; duplicates in exactly-once mode).
async fn check(case: Case, params: Params) -> Report {
    let report = engine::run(case, &params).await;
    eprintln!("{}\n{}", Report::header(), report.row());
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    let problems = report.problems(&params);
    assert!(
        problems.is_empty(),
        "{} (seed {}): {problems:?}\nnotes: {}",
        case.name(),
        params.seed,
        report.notes.join("\n")
    );
    report
}

#[tokio::test]
async fn chaos_kill_random_replicas_loses_nothing() {
    let r = check(Case::Kill, Params::quick(seed())).await;
    assert!(r.faults >= 3, "only {} kills", r.faults);
}

#[tokio::test]
async fn chaos_clickhouse_faults_lose_nothing() {
    check(Case::ClickHouseFaults, Params::quick(seed())).await;
}

#[tokio::test]
async fn chaos_redis_restart_with_aof_loses_nothing() {
    let r = check(Case::RedisRestart, Params::quick(seed())).await;
    assert_eq!(r.confirmed_missing, 0);
}

#[tokio::test]
async fn chaos_slow_clickhouse_keeps_memory_bounded() {
    // Enough traffic for the backlog to outgrow what the workers may hold.
    let params = Params {
        messages: 30_000,
        rate: 5_000,
        slow_delay: std::time::Duration::from_millis(600),
        ..Params::quick(seed())
    };
    let r = check(Case::SlowClickHouse, params.clone()).await;
    let bound = params.in_flight_bound(r.replicas);
    assert!(
        r.max_pending <= bound,
        "pending reached {} (bound {bound}): reads did not stop",
        r.max_pending
    );
    assert!(
        r.max_backlog > bound,
        "ClickHouse was not slow enough to build a backlog ({} entries)",
        r.max_backlog
    );
    assert!(r.peak_rss_kb < 400 * 1024, "peak RSS {} KiB", r.peak_rss_kb);
}

#[tokio::test]
async fn chaos_redis_connections_cut_lose_nothing() {
    check(Case::RedisCut, Params::quick(seed())).await;
}

/// Fault combination: Redis at `maxmemory` while bad rows arrive (their
/// dead letters refused), a replica killed in some windows. Nothing lost.
async fn redis_maxmemory(params: Params) {
    let exactly_once = params.delivery == Delivery::ExactlyOnce;
    let r = check(Case::RedisMaxmemory, params).await;
    assert!(r.dead > 0, "no bad row was dead-lettered");
    // Exactly-once writes a batch's ledger record before its insert and
    // its dead letters, so at the limit Redis mostly refuses that first.
    let refused = |n: &String| {
        n.starts_with("dead letters refused")
            || (exactly_once && n.starts_with("ledger records refused"))
    };
    assert!(
        r.notes.iter().any(refused),
        "Redis never refused the fleet's writes: the combination did not happen\n{:?}",
        r.notes
    );
}

#[tokio::test]
async fn chaos_redis_maxmemory_with_bad_rows_loses_nothing() {
    redis_maxmemory(Params::quick(seed())).await;
}

#[tokio::test]
async fn chaos_exactly_once_redis_maxmemory_with_bad_rows_no_loss_no_duplicates() {
    redis_maxmemory(exactly_once(seed())).await;
}

/// What `redis-cut` provokes, made deterministic: entries delivered under
/// the worker's consumer name in a reply the worker never received (a
/// MULTI of XADD + XREADGROUP sent as that consumer, so the worker's own
/// blocked read cannot get them first). The worker must not keep such
/// orphans alive as if it held them: they go idle, its claim pass takes
/// them, and they land.
#[tokio::test]
async fn orphaned_pending_entries_under_own_name_are_recovered() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("orphan"), unique_name("orphan"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt32, _id String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    let w = Worker::spawn(&s.config(
        &s.ch.url(),
        "orphan",
        &stream,
        &table,
        r#"batch = { max_rows = 100, max_wait = "100ms" }
claim = { min_idle = "2s", every = "500ms" }
metadata = { id = "_id" }"#,
    ));
    // Once the worker has read something, its consumer exists.
    xadd(&s.rc, &stream, &[("id", "1")]).await;
    wait_for(LONG, "first row", || async {
        s.ch.count(&table).await == 1
    })
    .await;
    let names = consumer_names(&s.rc, &stream, "g").await;
    assert_eq!(names.len(), 1, "{names:?}");
    let name = names[0].clone();

    let mut conn = tokio::net::TcpStream::connect(s.redis.addr())
        .await
        .unwrap();
    let mut req = resp(&[b"MULTI"]);
    for i in 2..=6 {
        let id = i.to_string();
        req.extend(resp(&[
            b"XADD",
            stream.as_bytes(),
            b"*",
            b"id",
            id.as_bytes(),
        ]));
    }
    req.extend(resp(&[
        b"XREADGROUP",
        b"GROUP",
        b"g",
        name.as_bytes(),
        b"COUNT",
        b"100",
        b"STREAMS",
        stream.as_bytes(),
        b">",
    ]));
    req.extend(resp(&[b"EXEC"]));
    conn.write_all(&req).await.unwrap();
    // The EXEC reply: five XADD ids, then the XREADGROUP with five entries.
    let mut reply = Vec::new();
    tokio::time::timeout(LONG, async {
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&reply)
            .matches("$2\r\nid\r\n")
            .count()
            < 5
        {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "redis closed the connection");
            reply.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("EXEC reply");
    let orphans = pending_by_consumer(&s.rc, &stream, "g").await;
    assert_eq!(
        orphans,
        vec![(name.clone(), 5)],
        "the five entries are pending under the worker's name"
    );

    wait_for(LONG, "orphans landed", || async {
        s.ch.count(&table).await == 6
    })
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    assert!(
        w.log_contents().contains("that we never received"),
        "{}",
        w.log_contents()
    );
}

fn exactly_once(seed: u64) -> Params {
    Params {
        delivery: engine::Delivery::ExactlyOnce,
        ..Params::quick(seed)
    }
}

#[tokio::test]
async fn chaos_exactly_once_kill_random_replicas_no_loss_no_duplicates() {
    check(Case::Kill, exactly_once(seed())).await;
}

#[tokio::test]
async fn chaos_exactly_once_redis_connections_cut_no_loss_no_duplicates() {
    check(Case::RedisCut, exactly_once(seed())).await;
}

#[tokio::test]
async fn chaos_exactly_once_clickhouse_faults_no_loss_no_duplicates() {
    check(Case::ClickHouseFaults, exactly_once(seed())).await;
}

#[tokio::test]
async fn chaos_exactly_once_redis_restart_no_loss_no_duplicates() {
    check(Case::RedisRestart, exactly_once(seed())).await;
}

/// Long enough (7.5 s of producing) for rows enqueued well after the ADD.
fn schema_change(params: Params) -> Params {
    Params {
        messages: 30_000,
        ..params
    }
}

#[tokio::test]
async fn chaos_schema_change_stalls_nothing_and_dead_letters_nothing() {
    let r = check(Case::SchemaChange, schema_change(Params::quick(seed()))).await;
    assert_eq!(r.faults, 2, "{:?}", r.notes);
}

#[tokio::test]
async fn chaos_exactly_once_schema_change_no_loss_no_duplicates() {
    let r = check(Case::SchemaChange, schema_change(exactly_once(seed()))).await;
    assert_eq!(r.faults, 2, "{:?}", r.notes);
}

/// Fault combination (a): ClickHouse down for a while (six `min_idle`
/// periods) while a replica is killed and another joins, with
/// `max_deliveries = 2`. Nothing lost, no healthy row dead-lettered.
#[tokio::test]
async fn chaos_sink_down_while_replicas_come_and_go_dead_letters_nothing() {
    let r = check(Case::SinkDown, Params::quick(seed())).await;
    assert_eq!(r.faults, 3, "{:?}", r.notes);
}

#[tokio::test]
async fn chaos_exactly_once_sink_down_while_replicas_come_and_go_no_loss_no_duplicates() {
    let r = check(Case::SinkDown, exactly_once(seed())).await;
    assert_eq!(r.faults, 3, "{:?}", r.notes);
}
