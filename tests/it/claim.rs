//! Claiming and keep-alive under faults (issue 11, items 1, 2, 9, 10, 13,
//! 18): keep-alive never waits on the pipeline and pages through the whole
//! pending list, a claim takes only what the pipeline can take now, a
//! claimed entry is never dropped while kept alive, a dead replica's
//! entries behind a long pending list are taken at once, pruning is
//! atomic, and recovery tasks are awaited at shutdown.

use std::time::{Duration, Instant};

use fred::types::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::harness::{unique_name, wait_for, wait_some, TcpProxy, Worker};

/// XREADGROUP of everything new as `consumer` (nothing parsed).
async fn read_as(s: &Stack, stream: &str, consumer: &str, count: usize) {
    raw(
        &s.rc,
        "XREADGROUP",
        vec![
            "GROUP".into(),
            "g".into(),
            consumer.into(),
            "COUNT".into(),
            Value::Integer(count as i64),
            "STREAMS".into(),
            stream.into(),
            ">".into(),
        ],
    )
    .await;
}

/// `XCLAIM … consumer 0 ids [IDLE ms] JUSTID`: moves entries to `consumer`
/// (no delivery counted) with the idle time given, in chunks.
async fn move_to(s: &Stack, stream: &str, consumer: &str, ids: &[String], idle_ms: Option<u64>) {
    for chunk in ids.chunks(2000) {
        let mut args: Vec<Value> = vec![stream.into(), "g".into(), consumer.into(), "0".into()];
        args.extend(chunk.iter().map(|id| Value::from(id.as_str())));
        if let Some(ms) = idle_ms {
            args.extend(["IDLE".into(), Value::Integer(ms as i64)]);
        }
        args.push("JUSTID".into());
        raw(&s.rc, "XCLAIM", args).await;
    }
}

/// Entries of `consumer` between `first` and `last` idle at least `idle_ms`.
async fn idle_of(
    s: &Stack,
    stream: &str,
    consumer: &str,
    first: &str,
    last: &str,
    idle_ms: u64,
) -> usize {
    match raw(
        &s.rc,
        "XPENDING",
        vec![
            stream.into(),
            "g".into(),
            "IDLE".into(),
            Value::Integer(idle_ms as i64),
            first.into(),
            last.into(),
            Value::Integer(100_000),
            consumer.into(),
        ],
    )
    .await
    {
        Value::Array(items) => items.len(),
        _ => 0,
    }
}

async fn pending_of(s: &Stack, stream: &str, consumer: &str) -> u64 {
    pending_by_consumer(&s.rc, stream, "g")
        .await
        .into_iter()
        .find(|(c, _)| c == consumer)
        .map(|(_, n)| n)
        .unwrap_or(0)
}

/// The single consumer name of the group that is none of `others`.
async fn worker_name(s: &Stack, stream: &str, others: &[&str]) -> String {
    wait_some(LONG, || async {
        let names = consumer_names(&s.rc, stream, "g").await;
        names.into_iter().find(|n| !others.contains(&n.as_str()))
    })
    .await
}

/// `n` new entries (fields from `make`) delivered to `consumer` in one
/// MULTI (XADDs, then XREADGROUP), so no worker's blocked read can take
/// them first. Returns their ids.
async fn deliver_atomically(
    s: &Stack,
    stream: &str,
    consumer: &str,
    n: usize,
    make: impl Fn(usize) -> Vec<(String, Vec<u8>)>,
) -> Vec<String> {
    let mut conn = tokio::net::TcpStream::connect(s.redis.addr())
        .await
        .unwrap();
    let mut req = resp(&[b"MULTI"]);
    for i in 0..n {
        let fields = make(i);
        let mut args: Vec<&[u8]> = vec![b"XADD", stream.as_bytes(), b"*"];
        for (k, v) in &fields {
            args.extend([k.as_bytes(), v.as_slice()]);
        }
        req.extend(resp(&args));
    }
    req.extend(resp(&[
        b"XREADGROUP",
        b"GROUP",
        b"g",
        consumer.as_bytes(),
        b"STREAMS",
        stream.as_bytes(),
        b">",
    ]));
    req.extend(resp(&[b"EXEC"]));
    req.extend(resp(&[b"PING"]));
    conn.write_all(&req).await.unwrap();
    // Everything answered once PING's +PONG arrives.
    tokio::time::timeout(LONG, async {
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        while !reply.ends_with(b"+PONG\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "redis closed the connection");
            reply.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("MULTI answered");
    let ids = consumer_pending_ids(&s.rc, stream, "g", consumer, 1_000_000).await;
    assert!(ids.len() >= n, "{} of {n} delivered", ids.len());
    ids
}

async fn seed_table(s: &Stack, table: &str) {
    s.ch.exec(&format!(
        "CREATE TABLE {table} ({SEED_TABLE_COLUMNS}) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await
}

async fn landed(s: &Stack, table: &str) -> u64 {
    s.ch.query_u64(&format!("SELECT uniqExact(_id) FROM {table}"))
        .await
}

/// Item 1: with the sink down and the pipeline full, idle entries of a dead
/// consumer are there to claim. The claim pass must not block keep-alive:
/// the worker's own entries never go idle past `min_idle` (another replica
/// would take them and count a delivery), and nothing is claimed that the
/// pipeline cannot take now.
#[tokio::test]
async fn keep_alive_goes_on_while_the_pipeline_is_full() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("kafull"), unique_name("kafull"));
    seed_table(&s, &table).await;
    create_group(&s.rc, &stream).await;

    let proxy = TcpProxy::start(s.ch.http_addr());
    let w = Worker::spawn(&s.config(
        &proxy.url(),
        "kafull",
        &stream,
        &table,
        r#"batch = { max_rows = 100, max_wait = "100ms" }
read_count = 100
claim = { min_idle = "3s", every = "300ms" }
max_deliveries = 2
metadata = { id = "_id" }"#,
    ));
    wait_for(LONG, "worker running", || async {
        w.log_contents().contains("flow running")
    })
    .await;
    proxy.refuse();
    let ids = xadd_many(&s.rc, &stream, 2000, |i| seed_job(1000 + i)).await;
    let me = worker_name(&s, &stream, &["ghost"]).await;
    wait_for(LONG, "two failed inserts", || async {
        w.log_contents().matches("will retry").count() >= 2
    })
    .await;
    // A dead replica's entries (300 new ones and those the worker had no
    // room to read), idle past min_idle 3 s from now.
    deliver_atomically(&s, &stream, "ghost", 300, |i| {
        vec![("rec_id".into(), (100_000 + i).to_string().into_bytes())]
    })
    .await;
    let ghost = pending_of(&s, &stream, "ghost").await;
    assert!(ghost >= 300, "{ghost}");
    // Three min_idle periods with a full pipeline: the ghost's entries are
    // idle (claimable) for most of it.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(9) {
        let stale = idle_of(&s, &stream, &me, &ids[0], &ids[ids.len() - 1], 3000).await;
        assert_eq!(
            stale,
            0,
            "the worker's own entries went idle past min_idle while it lived ({:?} in)\n{}",
            watched.elapsed(),
            w.log_contents()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        pending_of(&s, &stream, "ghost").await,
        ghost,
        "entries were claimed that the full pipeline could not take"
    );

    proxy.pass();
    wait_for(LONG, "every row landed", || async {
        landed(&s, &table).await == 2300
    })
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    assert_eq!(xlen(&s.rc, &format!("{stream}:dead")).await, 0);
}

/// Item 2: a claim whose follow-up step fails (here XPENDING, refused to
/// the worker's user by an ACL) must not leave the claimed entries held
/// and kept alive: they are released, go idle, are claimed again once the
/// step works, and land.
#[tokio::test]
async fn claimed_entries_whose_next_step_fails_are_released_and_land() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("release"), unique_name("release"));
    seed_table(&s, &table).await;
    create_group(&s.rc, &stream).await;
    let ids = xadd_many(&s.rc, &stream, 5, seed_job).await;
    read_as(&s, &stream, "ghost", 100).await;
    move_to(&s, &stream, "ghost", &ids, Some(600_000)).await;
    raw(
        &s.rc,
        "ACL",
        vec![
            "SETUSER".into(),
            "sluice".into(),
            "on".into(),
            ">pw".into(),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
            "-xpending".into(),
        ],
    )
    .await;
    let url = format!("redis://sluice:pw@{}", s.redis.addr());
    let w = Worker::spawn(&config_text(
        &url,
        &s.ch.url(),
        "release",
        &stream,
        &table,
        r#"batch = { max_rows = 10, max_wait = "100ms" }
claim = { min_idle = "1s", every = "200ms" }
max_deliveries = 100
metadata = { id = "_id" }"#,
    ));
    let me = worker_name(&s, &stream, &["ghost"]).await;
    wait_for(LONG, "the entries claimed by the worker", || async {
        pending_of(&s, &stream, &me).await == 5
    })
    .await;
    raw(
        &s.rc,
        "ACL",
        vec!["SETUSER".into(), "sluice".into(), "+xpending".into()],
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "the claimed rows landed",
        || async { landed(&s, &table).await == 5 },
    )
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    drop(w);
}

/// Item 9: a dead replica's entries behind a long pending list of live
/// ones (here 50,000, not idle) are taken within `min_idle + claim.every`
/// of being idle, not after the claim pass has crawled the whole list.
#[tokio::test]
async fn a_dead_replicas_entries_behind_a_long_pending_list_are_taken_at_once() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("backlog"), unique_name("backlog"));
    seed_table(&s, &table).await;
    create_group(&s.rc, &stream).await;
    const LIVE: usize = 50_000;
    xadd_many(&s.rc, &stream, LIVE, seed_job).await;
    read_as(&s, &stream, "live", LIVE).await;
    let dead = xadd_many(&s.rc, &stream, 1000, |i| seed_job(LIVE + i)).await;
    read_as(&s, &stream, "ghost", 1000).await;
    // Dead for ten minutes already.
    move_to(&s, &stream, "ghost", &dead, Some(600_000)).await;

    let w = Worker::spawn(&s.config(
        &s.ch.url(),
        "backlog",
        &stream,
        &table,
        r#"batch = { max_rows = 1000, max_wait = "100ms" }
claim = { min_idle = "30s", every = "3s" }
metadata = { id = "_id" }"#,
    ));
    wait_for(LONG, "worker running", || async {
        w.log_contents().contains("flow running")
    })
    .await;
    let started = Instant::now();
    // min_idle = 30 s: within 20 s the live entries are not idle yet.
    wait_for(
        Duration::from_secs(20),
        "the dead replica's entries claimed",
        || async { pending_of(&s, &stream, "ghost").await == 0 },
    )
    .await;
    eprintln!(
        "dead replica's entries taken {:?} after start",
        started.elapsed()
    );
    assert_eq!(pending_of(&s, &stream, "live").await, LIVE as u64);
    wait_for(LONG, "the dead replica's rows landed", || async {
        landed(&s, &table).await == 1000
    })
    .await;
}

/// Item 10: keep-alive must not stop at a page of idle entries pending
/// under our name that we do not hold (orphans): the held entries behind
/// 10,050 of them are refreshed too.
#[tokio::test]
async fn keep_alive_pages_past_ten_thousand_orphans() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("kapage"), unique_name("kapage"));
    seed_table(&s, &table).await;
    create_group(&s.rc, &stream).await;
    const ORPHANS: usize = 10_050;

    let proxy = TcpProxy::start(s.ch.http_addr());
    let w = Worker::spawn(&s.config(
        &proxy.url(),
        "kapage",
        &stream,
        &table,
        r#"batch = { max_rows = 500, max_wait = "100ms" }
read_count = 500
claim = { min_idle = "20s", every = "1s" }
metadata = { id = "_id" }"#,
    ));
    wait_for(LONG, "worker running", || async {
        w.log_contents().contains("flow running")
    })
    .await;
    proxy.refuse();
    let me = w.consumer().expect("the worker logs its consumer name");
    // Pending under the worker's name, never delivered to it: a ghost
    // takes them in one MULTI (the worker's blocked read cannot), then
    // they are moved, fresh, to the worker. Made only now, with the worker
    // running, so a slow start cannot leave them claimable (idle past
    // 20 s) before they are the worker's.
    let orphans = deliver_atomically(&s, &stream, "ghost", ORPHANS, seed_job).await;
    move_to(&s, &stream, &me, &orphans, None).await;
    let held = xadd_many(&s.rc, &stream, 300, |i| seed_job(ORPHANS + i)).await;
    wait_for(LONG, "the worker holds the new entries", || async {
        idle_of(&s, &stream, &me, &held[0], &held[299], 0).await == 300
    })
    .await;
    // Keep-alive refreshes held entries idle past min_idle / 4 (5 s); the
    // orphans are claimable only after 20 s.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(14) {
        let stale = idle_of(&s, &stream, &me, &held[0], &held[299], 12_000).await;
        assert_eq!(
            stale,
            0,
            "held entries behind the orphans went idle ({:?} in)\n{}",
            watched.elapsed(),
            w.log_contents()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.pass();
    wait_for(LONG, "every row landed", || async {
        landed(&s, &table).await == (ORPHANS + 300) as u64
    })
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
}

/// Item 13: pruning checks that a consumer has nothing pending and deletes
/// it in one step. Redis is reached through a proxy that delays every
/// chunk; as soon as the pruner's XPENDING reaches Redis (seen on
/// MONITOR), the victim reads an entry on a direct connection. Check and
/// delete apart, DELCONSUMER arrives after the read and deletes the entry
/// from the pending list; done atomically, the entry stays pending.
#[tokio::test]
async fn pruning_never_deletes_a_consumer_that_got_an_entry_meanwhile() {
    let s = Stack::start().await;
    let stream = unique_name("prune");
    create_group(&s.rc, &stream).await;
    raw(
        &s.rc,
        "XGROUP",
        vec![
            "CREATECONSUMER".into(),
            stream.as_str().into(),
            "g".into(),
            "victim".into(),
        ],
    )
    .await;
    xadd(&s.rc, &stream, &[("id", "1")]).await;

    let mut monitor = tokio::net::TcpStream::connect(s.redis.addr())
        .await
        .unwrap();
    monitor.write_all(&resp(&[b"MONITOR"])).await.unwrap();
    let proxy = TcpProxy::start(s.redis.addr());
    proxy.delay(Duration::from_millis(400));
    let pruner = crate::harness::redis_client(&proxy.redis_url()).await;

    let prune = {
        let stream = stream.clone();
        tokio::spawn(async move {
            sluice::testing::group::prune_consumers(&pruner, &stream, "g", Duration::ZERO, "me")
                .await
        })
    };
    // Wait for the pruner's XPENDING (direct or inside a script) on MONITOR.
    tokio::time::timeout(LONG, async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen)
            .to_ascii_lowercase()
            .contains("\"xpending\"")
        {
            let n = monitor.read(&mut buf).await.unwrap();
            assert!(n > 0, "redis closed the monitor connection");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the pruner's XPENDING");
    read_as(&s, &stream, "victim", 10).await;
    let removed = prune.await.unwrap().expect("prune");
    eprintln!("pruned: {removed:?}");
    assert_eq!(
        pending(&s.rc, &stream, "g").await,
        1,
        "the entry the victim read was deleted from the pending list"
    );
}

/// Item 18: a recovery of a dead replica's batch running when SIGTERM
/// comes is awaited (within `worker.shutdown_timeout`), not dropped.
#[tokio::test]
async fn a_recovery_running_at_shutdown_is_awaited() {
    let s = Stack::start().await;
    let (flow, stream, table) = (unique_name("eo"), unique_name("eo"), unique_name("eo"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} ({SEED_TABLE_COLUMNS}, _batch String) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    let config =
        |ch_url: &str| crate::exactly_once::config(&s.redis.url(), ch_url, &flow, &stream, &table);
    // A records its batch and dies before its insert.
    let a_proxy = TcpProxy::start(s.ch.http_addr());
    let mut a = Worker::spawn(&config(&a_proxy.url()));
    wait_for(LONG, "A running", || async {
        a.log_contents().contains("flow running")
    })
    .await;
    a_proxy.refuse();
    const N: usize = 2000;
    xadd_many(&s.rc, &stream, N, seed_job).await;
    wait_for(LONG, "A's batch recorded", || async {
        open_batches(&s.rc, &flow).await == 1
    })
    .await;
    a.kill();
    a.wait_exit(LONG).await.expect("A exited");

    // B recovers it through a slow ClickHouse, and is told to stop meanwhile.
    let b_proxy = TcpProxy::start(s.ch.http_addr());
    b_proxy.delay(Duration::from_millis(100));
    let mut b = Worker::spawn(&config(&b_proxy.url()));
    wait_for(LONG, "B recovering A's batch", || async {
        b.log_contents()
            .contains("recovering a dead replica's batch")
    })
    .await;
    b.term();
    let exit = b.wait_exit(Duration::from_secs(40)).await;
    assert!(exit.is_some(), "B did not exit within its shutdown timeout");
    assert_eq!(
        s.ch.count(&table).await,
        N as u64,
        "the recovery was dropped at shutdown\n{}",
        b.log_contents()
    );
    assert_eq!(pending(&s.rc, &stream, "g").await, 0);
    assert_eq!(open_batches(&s.rc, &flow).await, 0);
}
