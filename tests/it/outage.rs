//! ClickHouse down for a while (longer than claim.min_idle): nothing is
//! acked, reads stop at the batch limits (bounded memory), the worker keeps
//! its in-flight entries, and everything lands once, when it is back.

use crate::common::*;
use crate::harness::{unique_name, wait_for, TcpProxy, Worker};

#[tokio::test]
async fn clickhouse_outage_acks_nothing_bounds_memory_and_recovers() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("outage"), unique_name("outage"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} ({SEED_TABLE_COLUMNS}) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    const N: usize = 100_000;
    xadd_many(&s.rc, &stream, N, seed_job).await;

    let proxy = TcpProxy::start(s.ch.http_addr());
    proxy.refuse();
    let extra = r#"batch = { max_rows = 2000, max_wait = "100ms" }
read_count = 500
claim = { min_idle = "1s", every = "200ms" }
metadata = { id = "_id" }"#;
    // The worker must start while ClickHouse answers (it reads the schema),
    // so point it at the proxy only for inserts: start passing, then refuse.
    proxy.pass();
    let w = Worker::spawn(&s.config(&proxy.url(), "outage", &stream, &table, extra));
    wait_for(LONG, "worker started", || async {
        !consumer_names(&s.rc, &stream, "g").await.is_empty()
    })
    .await;
    proxy.refuse();
    wait_for(LONG, "three failed insert attempts", || async {
        w.log_contents().matches("will retry").count() >= 3
    })
    .await;
    // Reads stop once the bounded pipeline is full: at most the batch being
    // committed, one queued, one open, two chunks in the channel and one read.
    const BOUND: usize = 2000 * 3 + 500 * 3;
    let rows_during = s.ch.count(&table).await;
    let pending_during = pending_ids(&s.rc, &stream, "g", 2 * BOUND).await;
    assert!(
        pending_during.len() <= BOUND,
        "read {} entries while ClickHouse was down",
        pending_during.len()
    );
    // Nothing acked: every row that did land before the outage was acked,
    // and nothing since; entries pending stay pending (the pipeline may
    // still have been filling up to its bound when they were listed).
    wait_for(LONG, "two more failed attempts", || async {
        w.log_contents().matches("will retry").count() >= 5
    })
    .await;
    assert_eq!(s.ch.count(&table).await, rows_during);
    let pending_after = pending_ids(&s.rc, &stream, "g", 2 * BOUND).await;
    assert!(
        pending_after.len() <= BOUND,
        "read {} entries",
        pending_after.len()
    );
    let after: std::collections::HashSet<&String> = pending_after.iter().collect();
    let left = pending_during
        .iter()
        .filter(|id| !after.contains(id))
        .count();
    assert_eq!(
        left, 0,
        "entries left the pending list while ClickHouse was down"
    );
    let rss_kb = w.peak_rss_kb().expect("rss");
    assert!(rss_kb < 200 * 1024, "worker peak RSS {rss_kb} KiB");

    proxy.pass();
    wait_for(LONG, "all rows after recovery", || async {
        s.ch.query_u64(&format!("SELECT uniqExact(_id) FROM {table}"))
            .await
            == N as u64
    })
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    assert_eq!(xlen(&s.rc, &format!("{stream}:dead")).await, 0);
}
