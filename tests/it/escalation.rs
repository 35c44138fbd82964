//! How ClickHouse insert errors escalate (`sink::escalation`), on real
//! 18.16 servers with materialized views:
//! - a view whose expression fails for some rows (an error code no list
//!   names): the batch is retried, bisected after `bisect_after` identical
//!   refusals, the bad rows dead-lettered with the server's message, the
//!   rest lands — instead of retrying forever;
//! - a view that fails for every row (TYPE_MISMATCH, a code that names bad
//!   data): a table-level error — nothing dead-lettered, the batch kept and
//!   retried, the flow shown stuck (`sluice status`, a gauge) until the
//!   view is fixed, then everything lands.
//!
//! At-least-once, ClickHouse writes the table before its views: every
//! refused insert leaves its rows in the base table (the views' targets
//! get each row once). The assertions look at the views' targets.

use std::time::Duration;

use crate::common::*;
use crate::harness::{free_port, unique_name, wait_for, Worker};
use crate::probe::{http_get, metric, sluice_status};

/// One flow with a metrics endpoint; `bisect_after` left at its default (3).
fn config(s: &Stack, stream: &str, table: &str, metrics_port: u16) -> String {
    let flow = format!("f_{stream}");
    let extra = "batch = { max_rows = 1000, max_wait = \"300ms\" }\nmetadata = { id = \"_id\" }";
    format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        s.config(&s.ch.url(), &flow, stream, table, extra)
    )
}

async fn add_rows(s: &Stack, stream: &str, n: usize, x: impl Fn(usize) -> i32) {
    let rows: Vec<(usize, String)> = (0..n).map(|i| (i, x(i).to_string())).collect();
    for (i, x) in &rows {
        xadd(&s.rc, stream, &[("id", &i.to_string()), ("x", x)]).await;
    }
}

#[tokio::test]
async fn a_view_refusing_some_rows_dead_letters_them_and_lands_the_rest() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("esc_some"), unique_name("esc_some"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64, x Int32, _id String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    // Division by zero (code 153, on no list) for x = 13 only.
    s.ch.exec(&format!(
        "CREATE MATERIALIZED VIEW {table}_mv ENGINE = MergeTree ORDER BY id AS SELECT id, intDiv(100, x - 13) AS q FROM {table}"
    ))
    .await;
    let port = free_port();
    let w = Worker::spawn(&config(&s, &stream, &table, port));
    add_rows(&s, &stream, 40, |i| {
        if i == 7 || i == 29 {
            13
        } else {
            100 + i as i32
        }
    })
    .await;
    let dead_stream = format!("{stream}:dead");
    wait_for(
        LONG,
        "the bad rows dead-lettered (or retries piling up)",
        || async {
            xlen(&s.rc, &dead_stream).await >= 2
                || w.log_contents()
                    .matches("insert failed; will retry")
                    .count()
                    >= 8
        },
    )
    .await;
    assert_eq!(
        xlen(&s.rc, &dead_stream).await,
        2,
        "the view's refusal was retried instead of escalated:\n{}",
        w.log_contents()
    );
    wait_for(
        LONG,
        "the good rows in the view, nothing pending",
        || async {
            s.ch.count(&format!("{table}_mv")).await == 38
                && pending(&s.rc, &stream, "g").await == 0
        },
    )
    .await;
    let dead = entries(&s.rc, &dead_stream).await;
    let mut bad: Vec<&str> = dead.iter().filter_map(|(_, f)| field(f, "id")).collect();
    bad.sort();
    assert_eq!(bad, ["29", "7"]);
    for (_, f) in &dead {
        let reason = field(f, "sluice.reason").unwrap_or_default();
        assert!(
            reason.contains("rejected by ClickHouse") && reason.contains("Division by zero"),
            "{reason}"
        );
    }
    assert_eq!(
        s.ch.query_u64(&format!(
            "SELECT uniqExact(id) FROM {table}_mv WHERE id IN (7, 29)"
        ))
        .await,
        0
    );
    assert_eq!(
        metric(port, "sluice_clickhouse_endpoint_up", &[]).await,
        Some(1.0),
        "a refused row does not mark the endpoint down"
    );
    assert!(!w.log_contents().contains("table-level"));
}

#[tokio::test]
async fn a_view_refusing_every_row_keeps_the_batch_and_reports_the_flow_stuck() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("esc_all"), unique_name("esc_all"));
    let flow = format!("f_{stream}");
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64, x Int32, _id String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    s.ch.exec(&format!(
        "CREATE TABLE {table}_to (id UInt64, x Int32) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    // Mis-defined: a String into an Int32 column, TYPE_MISMATCH for every row.
    s.ch.exec(&format!(
        "CREATE MATERIALIZED VIEW {table}_mv TO {table}_to AS SELECT id, toString(x) AS x FROM {table}"
    ))
    .await;
    let (port, console_port) = (free_port(), free_port());
    let w = Worker::spawn(&format!(
        "{}\n[console]\nlisten = \"127.0.0.1:{console_port}\"\nsample_every = \"300ms\"\n",
        config(&s, &stream, &table, port)
    ));
    add_rows(&s, &stream, 30, |i| i as i32).await;
    let dead_stream = format!("{stream}:dead");
    wait_for(
        LONG,
        "the flow reported stuck (or rows dead-lettered)",
        || async {
            xlen(&s.rc, &dead_stream).await > 0
                || sluice_status(&w.config_path()).await.contains("STUCK")
        },
    )
    .await;
    assert_eq!(
        xlen(&s.rc, &dead_stream).await,
        0,
        "a table-level error must not dead-letter rows"
    );
    let status = sluice_status(&w.config_path()).await;
    let line = status
        .lines()
        .find(|l| l.starts_with("STUCK"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        line.contains(&format!("flow `{flow}` since 20")) && line.contains("Type mismatch"),
        "{line}"
    );
    let since = metric(port, "sluice_sink_stuck_since_seconds", &[("flow", &flow)])
        .await
        .unwrap_or(0.0);
    assert!(since > 1.6e9, "stuck gauge: {since}");
    assert_eq!(pending(&s.rc, &stream, "g").await, 30, "the rows are kept");
    assert!(w.log_contents().contains("table-level error"));
    // The console shows the same record: the table reads fine, the inserts
    // are refused.
    wait_for(LONG, "the console marks the flow stuck", || async {
        http_get(console_port, "/api/v1/overview")
            .await
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .is_some_and(|o| {
                o["flows"][0]["stuck"]
                    .as_str()
                    .is_some_and(|e| e.contains("Type mismatch"))
            })
    })
    .await;

    // Fixed in one step (the target takes the view's String), so that no
    // retry lands while the table has no view: everything lands once,
    // nothing dead-lettered, no longer stuck. The stuck batch is retried at
    // most a minute apart.
    s.ch.exec(&format!("ALTER TABLE {table}_to MODIFY COLUMN x String"))
        .await;
    let stuck_retry = Duration::from_secs(60);
    wait_for(
        LONG + stuck_retry,
        "every row in the view, nothing pending",
        || async {
            s.ch.query_u64(&format!("SELECT uniqExact(id) FROM {table}_to"))
                .await
                == 30
                && pending(&s.rc, &stream, "g").await == 0
        },
    )
    .await;
    assert_eq!(xlen(&s.rc, &dead_stream).await, 0);
    assert_eq!(s.ch.count(&format!("{table}_to")).await, 30);
    wait_for(LONG, "no longer stuck", || async {
        metric(port, "sluice_sink_stuck_since_seconds", &[("flow", &flow)]).await == Some(0.0)
    })
    .await;
    assert!(!sluice_status(&w.config_path()).await.contains("STUCK"));
}

/// Exactly-once: the same judgement through the fenced stage (a
/// MATERIALIZED `throwIf` is evaluated when the stage is filled, so nothing
/// reaches the table): one bad row among good ones is dead-lettered and the
/// rest land once; a batch whose every row is refused is held and reported
/// stuck, then lands once when the column is fixed.
#[tokio::test]
async fn exactly_once_isolates_a_refused_row_and_holds_a_table_refusing_every_row() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("esc_eo"), unique_name("esc_eo"));
    let flow = format!("f_{stream}");
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64, x Int32, _id String, _batch String, chk UInt8 MATERIALIZED throwIf(x = 13)) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    let port = free_port();
    let config = config(&s, &stream, &table, port).replace(
        "metadata = ",
        "delivery = \"exactly_once\"\nbatch_id_column = \"_batch\"\nmetadata = ",
    );
    let w = Worker::spawn(&config);
    add_rows(
        &s,
        &stream,
        20,
        |i| if i == 7 { 13 } else { 100 + i as i32 },
    )
    .await;
    let dead_stream = format!("{stream}:dead");
    let once = format!("SELECT count() = uniqExact(_id) FROM {table}");
    wait_for(LONG, "19 rows once, the bad one dead-lettered", || async {
        s.ch.count(&table).await == 19
            && xlen(&s.rc, &dead_stream).await == 1
            && pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    assert_eq!(s.ch.query_u64(&once).await, 1);
    wait_for(LONG, "no ledger record left", || async {
        open_batches(&s.rc, &flow).await == 0
    })
    .await;

    // Every row refused: held, reported, nothing more dead-lettered.
    let ids = xadd_many(&s.rc, &stream, 10, |i| {
        vec![
            ("id".into(), (100 + i).to_string().into_bytes()),
            ("x".into(), b"13".to_vec()),
        ]
    })
    .await;
    wait_for(LONG, "the flow reported stuck", || async {
        sluice_status(&w.config_path()).await.contains("STUCK")
    })
    .await;
    assert_eq!(xlen(&s.rc, &dead_stream).await, 1);
    assert_eq!(pending(&s.rc, &stream, "g").await, ids.len() as u64);
    s.ch.exec(&format!(
        "ALTER TABLE {table} MODIFY COLUMN chk UInt8 MATERIALIZED 0"
    ))
    .await;
    let stuck_retry = Duration::from_secs(60);
    wait_for(LONG + stuck_retry, "the held rows landed once", || async {
        s.ch.count(&table).await == 29 && pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    assert_eq!(s.ch.query_u64(&once).await, 1);
    assert_eq!(xlen(&s.rc, &dead_stream).await, 1);
    wait_for(LONG, "no longer stuck, no ledger record left", || async {
        metric(port, "sluice_sink_stuck_since_seconds", &[("flow", &flow)]).await == Some(0.0)
            && open_batches(&s.rc, &flow).await == 0
    })
    .await;
}
