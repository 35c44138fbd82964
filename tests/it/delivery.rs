//! At-least-once delivery: a killed replica's work is claimed by another;
//! bad rows are isolated into the dead-letter stream; entries delivered too
//! often are dead-lettered.

use std::collections::BTreeSet;

use fred::types::Value;

use crate::common::*;
use crate::harness::{unique_name, wait_for, TcpProxy, Worker};

#[tokio::test]
async fn sigkilled_replica_work_is_claimed_and_nothing_is_lost() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("kill"), unique_name("kill"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} ({SEED_TABLE_COLUMNS}) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    // Replica A reaches ClickHouse through a proxy that stalls once A is up:
    // it reads a batch and hangs inside the insert, holding entries pending.
    let proxy = TcpProxy::start(s.ch.http_addr());
    let extra = r#"batch = { max_rows = 1000, max_wait = "100ms" }
claim = { min_idle = "1s", every = "300ms" }
metadata = { id = "_id" }"#;
    let mut a = Worker::spawn(&s.config(&proxy.url(), "kill", &stream, &table, extra));
    wait_for(LONG, "replica A running", || async {
        a.log_contents().contains("flow running")
    })
    .await;
    proxy.stall();
    let ids = xadd_many(&s.rc, &stream, 3000, seed_job).await;
    wait_for(LONG, "replica A holds pending entries", || async {
        pending(&s.rc, &stream, "g").await > 0
    })
    .await;
    a.kill();
    a.wait_exit(LONG).await.expect("A exited");
    let held = pending(&s.rc, &stream, "g").await;
    assert!(held > 0);

    // Replica B talks to ClickHouse directly and claims A's entries.
    let b = Worker::spawn(&s.config(&s.ch.url(), "kill", &stream, &table, extra));
    wait_for(LONG, "all rows", || async {
        s.ch.query_u64(&format!("SELECT uniqExact(_id) FROM {table}"))
            .await
            == 3000
    })
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    let landed: BTreeSet<String> =
        s.ch.query_tsv(&format!("SELECT _id FROM {table} FORMAT TSV"))
            .await
            .lines()
            .map(str::to_string)
            .collect();
    let sent: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(landed, sent, "{}", b.log_contents());
    assert!(b.log_contents().contains("claimed idle pending entries"));
}

#[tokio::test]
async fn poison_rows_are_dead_lettered_and_the_rest_inserted() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("poison"), unique_name("poison"));
    // throwIf in a MATERIALIZED column: a server-side check that passes our
    // conversion but makes ClickHouse refuse the insert, forcing a bisect.
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt32, x Int32, chk UInt8 MATERIALIZED throwIf(x = -13)) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    xadd_many(&s.rc, &stream, 200, |i| {
        let x = match i {
            7 => "abc".to_string(),           // fails conversion
            50 => "-13".to_string(),          // refused by ClickHouse
            120 => "99999999999".to_string(), // overflows Int32
            _ => i.to_string(),
        };
        vec![
            ("id".into(), i.to_string().into_bytes()),
            ("x".into(), x.into_bytes()),
        ]
    })
    .await;
    let w = Worker::spawn(&s.config(
        &s.ch.url(),
        "poison",
        &stream,
        &table,
        r#"batch = { max_rows = 500, max_wait = "200ms" }"#,
    ));
    let dead_stream = format!("{stream}:dead");
    wait_for(LONG, "three dead letters", || async {
        xlen(&s.rc, &dead_stream).await == 3
    })
    .await;
    wait_for(LONG, "197 rows", || async {
        s.ch.count(&table).await == 197
    })
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    let ids =
        s.ch.query_tsv(&format!(
            "SELECT count() FROM {table} WHERE id IN (7, 50, 120)"
        ))
        .await;
    assert_eq!(ids.trim(), "0");

    let dead = entries(&s.rc, &dead_stream).await;
    let by_id = |n: &str| {
        dead.iter()
            .find(|(_, f)| field(f, "id") == Some(n))
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no dead letter for id {n}: {dead:?}"))
    };
    let r7 = by_id("7");
    let reason = field(&r7, "sluice.reason").unwrap();
    assert!(
        reason.contains("`x`") && reason.contains("Int32") && reason.contains("abc"),
        "{reason}"
    );
    assert_eq!(field(&r7, "sluice.stream"), Some(stream.as_str()));
    assert_eq!(field(&r7, "sluice.group"), Some("g"));
    assert_eq!(field(&r7, "sluice.deliveries"), Some("1"));
    assert!(field(&r7, "sluice.id").is_some());
    let r50 = by_id("50");
    let reason = field(&r50, "sluice.reason").unwrap();
    assert!(
        reason.contains("rejected by ClickHouse") && reason.contains("throwIf"),
        "{reason}"
    );
    let r120 = by_id("120");
    let reason = field(&r120, "sluice.reason").unwrap();
    assert!(reason.contains("99999999999"), "{reason}");
    assert!(w.log_contents().contains("bisecting"));
}

#[tokio::test]
async fn entry_over_max_deliveries_is_dead_lettered() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("maxdel"), unique_name("maxdel"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt32) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    raw(
        &s.rc,
        "XGROUP",
        vec![
            "CREATE".into(),
            stream.as_str().into(),
            "g".into(),
            "0".into(),
            "MKSTREAM".into(),
        ],
    )
    .await;
    let id = xadd(&s.rc, &stream, &[("id", "1")]).await;
    // A consumer that keeps failing: read it, then record 9 more deliveries.
    raw(
        &s.rc,
        "XREADGROUP",
        vec![
            "GROUP".into(),
            "g".into(),
            "ghost".into(),
            "STREAMS".into(),
            stream.as_str().into(),
            ">".into(),
        ],
    )
    .await;
    raw(
        &s.rc,
        "XCLAIM",
        vec![
            stream.as_str().into(),
            "g".into(),
            "ghost".into(),
            "0".into(),
            id.as_str().into(),
            "RETRYCOUNT".into(),
            Value::Integer(9),
            "IDLE".into(),
            Value::Integer(600_000),
        ],
    )
    .await;
    let ok = xadd(&s.rc, &stream, &[("id", "2")]).await;

    let w = Worker::spawn(&s.config(
        &s.ch.url(),
        "maxdel",
        &stream,
        &table,
        r#"batch = { max_rows = 10, max_wait = "100ms" }
claim = { min_idle = "1s", every = "200ms" }
max_deliveries = 5"#,
    ));
    let dead_stream = format!("{stream}:dead");
    wait_for(LONG, "dead letter", || async {
        xlen(&s.rc, &dead_stream).await == 1
    })
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    let dead = entries(&s.rc, &dead_stream).await;
    assert_eq!(field(&dead[0].1, "sluice.id"), Some(id.as_str()));
    assert_eq!(field(&dead[0].1, "sluice.deliveries"), Some("10"));
    let reason = field(&dead[0].1, "sluice.reason").unwrap();
    assert!(reason.contains("max_deliveries = 5"), "{reason}");
    // The healthy entry landed; the dead one did not.
    wait_for(LONG, "healthy row", || async {
        s.ch.count(&table).await == 1
    })
    .await;
    assert_eq!(
        s.ch.query_tsv(&format!("SELECT id FROM {table} FORMAT TSV"))
            .await
            .trim(),
        "2",
        "{ok} {}",
        w.log_contents()
    );
}

#[tokio::test]
async fn deleted_pending_entries_are_counted_as_lost_and_acked() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("lost"), unique_name("lost"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt32) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    raw(
        &s.rc,
        "XGROUP",
        vec![
            "CREATE".into(),
            stream.as_str().into(),
            "g".into(),
            "0".into(),
            "MKSTREAM".into(),
        ],
    )
    .await;
    let gone = xadd(&s.rc, &stream, &[("id", "1")]).await;
    xadd(&s.rc, &stream, &[("id", "2")]).await;
    // A consumer reads both and dies; one entry is then deleted from the stream.
    raw(
        &s.rc,
        "XREADGROUP",
        vec![
            "GROUP".into(),
            "g".into(),
            "ghost".into(),
            "STREAMS".into(),
            stream.as_str().into(),
            ">".into(),
        ],
    )
    .await;
    raw(
        &s.rc,
        "XDEL",
        vec![stream.as_str().into(), gone.as_str().into()],
    )
    .await;

    let w = Worker::spawn(&s.config(
        &s.ch.url(),
        "lost",
        &stream,
        &table,
        r#"batch = { max_rows = 10, max_wait = "100ms" }
claim = { min_idle = "400ms", every = "200ms" }"#,
    ));
    wait_for(LONG, "surviving entry landed", || async {
        s.ch.count(&table).await == 1
    })
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    let log = w.log_contents();
    assert!(
        log.contains("deleted from the stream before delivery") && log.contains(&gone),
        "{log}"
    );
}

#[tokio::test]
async fn consumers_of_departed_replicas_are_pruned() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("prune"), unique_name("prune"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt32) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    raw(
        &s.rc,
        "XGROUP",
        vec![
            "CREATE".into(),
            stream.as_str().into(),
            "g".into(),
            "0".into(),
            "MKSTREAM".into(),
        ],
    )
    .await;
    raw(
        &s.rc,
        "XGROUP",
        vec![
            "CREATECONSUMER".into(),
            stream.as_str().into(),
            "g".into(),
            "departed".into(),
        ],
    )
    .await;
    // A consumer that still holds work is kept until its entries are claimed.
    xadd(&s.rc, &stream, &[("id", "1")]).await;
    raw(
        &s.rc,
        "XREADGROUP",
        vec![
            "GROUP".into(),
            "g".into(),
            "holder".into(),
            "STREAMS".into(),
            stream.as_str().into(),
            ">".into(),
        ],
    )
    .await;

    let w = Worker::spawn(
        &s.config(
            &s.ch.url(),
            "prune",
            &stream,
            &table,
            r#"batch = { max_rows = 10, max_wait = "100ms" }
claim = { min_idle = "2s", every = "200ms" }"#,
        )
        .replace("[worker]\n", "[worker]\nprune_idle = \"1s\"\n"),
    );
    wait_for(LONG, "idle empty consumer pruned", || async {
        !consumer_names(&s.rc, &stream, "g")
            .await
            .contains(&"departed".to_string())
    })
    .await;
    // `holder` is kept while it has pending work, then claimed and pruned.
    wait_for(LONG, "holder's entry landed", || async {
        s.ch.count(&table).await == 1
    })
    .await;
    wait_for(LONG, "holder pruned", || async {
        !consumer_names(&s.rc, &stream, "g")
            .await
            .contains(&"holder".to_string())
    })
    .await;
    assert!(w.log_contents().contains("pruned idle consumers"));
}

/// One batch of 25,000 rows with `ack_del`: its acks go as three XACK and
/// three XDEL commands of at most 10,000 ids in one pipelined write, and
/// every id is acked and deleted (nothing left pending, the stream empty).
#[tokio::test]
async fn a_batch_over_ten_thousand_ids_is_acked_and_deleted_whole() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("bigack"), unique_name("bigack"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} ({SEED_TABLE_COLUMNS}) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    xadd_many(&s.rc, &stream, 25_000, seed_job).await;
    // A batch closes only when full: one batch of all 25,000.
    let extra = r#"on_success = "ack_del"
batch = { max_rows = 25000, max_wait = "60s" }"#;
    let worker = Worker::spawn(&s.config(&s.ch.url(), "bigack", &stream, &table, extra));
    wait_for(LONG, "all rows", || async {
        s.ch.count(&table).await == 25_000
    })
    .await;
    wait_for(LONG, "acked and deleted", || async {
        pending(&s.rc, &stream, "g").await == 0 && xlen(&s.rc, &stream).await == 0
    })
    .await;
    assert!(
        !worker.log_contents().contains("XACK failed"),
        "{}",
        worker.log_contents()
    );
}
