//! The table changes while sluice runs (`sink::mapping`): columns added
//! and dropped while rows flow are followed by the periodic re-read
//! (`clickhouse.schema_refresh`) — no stall, nothing dead-lettered, the new
//! column filled once read; a column whose type changed makes 18.16 refuse
//! the old blocks (BAD_CAST), which re-reads the columns at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use crate::harness::{unique_name, wait_for, Worker};

/// A worker re-reading the table's columns every `schema_refresh`.
fn spawn(s: &Stack, stream: &str, table: &str, schema_refresh: &str) -> Worker {
    let extra = "batch = { max_rows = 500, max_wait = \"100ms\" }\nmetadata = { id = \"_id\" }";
    let config = s.config(&s.ch.url(), &format!("f_{stream}"), stream, table, extra);
    Worker::spawn_with_env(
        &config,
        &[("SLUICE_CLICKHOUSE__SCHEMA_REFRESH", schema_refresh)],
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Adds rows `id, n, data, extra` in small steps until `stop`; counts them in `sent`.
fn produce(
    rc: fred::prelude::Client,
    stream: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let base = sent.load(Ordering::Relaxed);
            xadd_many(&rc, &stream, 40, |i| {
                let i = base + i;
                vec![
                    ("id".into(), i.to_string().into_bytes()),
                    ("n".into(), (i % 1000).to_string().into_bytes()),
                    ("data".into(), format!("d{i}").into_bytes()),
                    ("extra".into(), format!("e{i}").into_bytes()),
                ]
            })
            .await;
            sent.fetch_add(40, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test]
async fn columns_added_and_dropped_while_rows_flow_are_followed_without_restart() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("schema_ad"), unique_name("schema_ad"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64, data String, _id String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    let w = spawn(&s, &stream, &table, "500ms");
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let producer = produce(s.rc.clone(), stream.clone(), stop.clone(), sent.clone());
    wait_for(LONG, "rows flowing", || async {
        s.ch.count(&table).await >= 200
    })
    .await;

    s.ch.exec(&format!("ALTER TABLE {table} ADD COLUMN extra String"))
        .await;
    let added_ms = now_ms();
    // Enqueued three re-read periods after the ADD: the mapping knows the column.
    let after_reread = format!("toUInt64(splitByChar('-', _id)[1]) > {}", added_ms + 1500);
    wait_for(LONG, "rows enqueued after the re-read landed", || async {
        s.ch.query_u64(&format!("SELECT count() FROM {table} WHERE {after_reread}"))
            .await
            >= 200
    })
    .await;
    s.ch.exec(&format!("ALTER TABLE {table} DROP COLUMN data"))
        .await;
    // 18.16 takes a Native block with a column the table no longer has
    // (it skips it), so only the periodic re-read notices the drop.
    wait_for(LONG, "the drop noticed by a re-read", || async {
        w.log_contents().contains("dropped data")
    })
    .await;
    let landed = s.ch.count(&table).await;
    wait_for(LONG, "rows flowing after the drop", || async {
        s.ch.count(&table).await >= landed + 400
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let sent = sent.load(Ordering::Relaxed) as u64;
    wait_for(LONG, "every row landed, nothing pending", || async {
        s.ch.query_u64(&format!("SELECT uniqExact(_id) FROM {table}"))
            .await
            == sent
            && pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    assert_eq!(xlen(&s.rc, &format!("{stream}:dead")).await, 0);
    let unfilled =
        s.ch.query_u64(&format!(
            "SELECT count() FROM {table} WHERE extra = '' AND {after_reread}"
        ))
        .await;
    assert_eq!(
        unfilled, 0,
        "rows enqueued after the re-read lack the new column"
    );
    assert!(
        s.ch.query_u64(&format!("SELECT count() FROM {table} WHERE extra != ''"))
            .await
            >= 200
    );
    let log = w.log_contents();
    assert!(log.contains("added extra String"), "{log}");
    assert!(!log.contains("table-level"), "{log}");
}

/// Two type changes, each found without the periodic re-read: `n`
/// widened, then rows whose values fit both types (18.16 refuses the
/// old-typed block with BAD_CAST: re-read, converted again, sent); `m`
/// widened, then rows whose values only fit the new type (they fail to
/// convert: re-read before dead-lettering anything, and they convert).
#[tokio::test]
async fn column_types_changed_under_the_flow_are_reread_before_anything_is_refused() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("schema_mod"), unique_name("schema_mod"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64, n Int32, m Int32, _id String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    let w = spawn(&s, &stream, &table, "1h");
    let add = |from: u64, to: u64, m_scale: i64| {
        let (rc, stream) = (s.rc.clone(), stream.clone());
        async move {
            for i in from..to {
                let (id, m) = (i.to_string(), (i as i64 * m_scale).to_string());
                xadd(&rc, &stream, &[("id", &id), ("n", &id), ("m", &m)]).await;
            }
        }
    };
    let landed = |n: u64| {
        let table = table.clone();
        let (ch, w) = (&s.ch, &w);
        async move {
            wait_for(LONG, "rows landed (or retries piling up)", || async {
                ch.count(&table).await == n || w.log_contents().matches("will retry").count() >= 8
            })
            .await;
            assert_eq!(ch.count(&table).await, n, "{}", w.log_contents());
        }
    };
    add(0, 50, 1).await;
    landed(50).await;

    s.ch.exec(&format!("ALTER TABLE {table} MODIFY COLUMN n Int64"))
        .await;
    add(50, 75, 1).await;
    landed(75).await;
    assert!(
        w.log_contents().contains("converted again"),
        "{}",
        w.log_contents()
    );

    s.ch.exec(&format!("ALTER TABLE {table} MODIFY COLUMN m Int64"))
        .await;
    add(75, 100, 1_000_000_000).await;
    landed(100).await;
    assert_eq!(
        s.ch.query_u64(&format!("SELECT max(m) FROM {table}")).await,
        99_000_000_000
    );
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    assert_eq!(xlen(&s.rc, &format!("{stream}:dead")).await, 0);
}
