//! A replica started while ClickHouse is down (a deploy or a node drain
//! during an outage): it starts, answers `/healthz` (alive) and `/readyz`
//! (not ready, saying it waits for ClickHouse), serves the HTTP entry, and
//! runs its flow once ClickHouse answers. `sluice check` still fails fast.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::{free_port, unique_name, wait_for, Worker};
use crate::probe::http_get;

#[tokio::test]
async fn a_replica_starts_while_clickhouse_is_down_and_runs_once_it_answers() {
    let mut s = Stack::start().await;
    let (stream, table) = (unique_name("start_down"), unique_name("start_down"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64, _id String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    s.ch.stop().await;

    let (metrics_port, http_port) = (free_port(), free_port());
    let config = format!(
        r#"{flow}
[metrics]
listen = "127.0.0.1:{metrics_port}"
[http]
listen = "127.0.0.1:{http_port}"
allow_unauthenticated = true
"#,
        flow = s.config(
            &s.ch.url(),
            "start_down",
            &stream,
            &table,
            "metadata = { id = \"_id\" }\nbatch = { max_wait = \"100ms\" }"
        ),
    );
    let mut w = Worker::spawn(&config);

    let started = Instant::now();
    let check = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(w.config_path())
        .output()
        .await
        .expect("run sluice check");
    assert!(
        !check.status.success(),
        "sluice check must fail while ClickHouse is down"
    );
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("clickhouse.url"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "check took {:?}",
        started.elapsed()
    );

    wait_for(LONG, "healthz answers (or the worker gives up)", || async {
        w.log_contents().contains("Error: ")
            || http_get(metrics_port, "/healthz")
                .await
                .is_some_and(|(c, _)| c == 200)
    })
    .await;
    assert!(w.is_running(), "the worker exited:\n{}", w.log_contents());
    let (code, why) = http_get(metrics_port, "/readyz")
        .await
        .expect("readyz answers");
    assert_eq!(code, 503, "{why}");
    assert!(
        why.contains("start_down") && why.contains("ClickHouse"),
        "{why}"
    );
    // The HTTP entry takes messages meanwhile.
    let (code, _) = http_get(http_port, &format!("/v1/streams/{stream}"))
        .await
        .expect("entry answers");
    assert_eq!(code, 200);
    for i in 0..20 {
        xadd(&s.rc, &stream, &[("id", &i.to_string())]).await;
    }
    assert!(w.log_contents().contains("waiting for ClickHouse"));

    s.ch.start_again().await;
    wait_for(LONG, "rows landed", || async {
        s.ch.try_query_tsv(&format!("SELECT uniqExact(_id) FROM {table}"))
            .await
            .is_ok_and(|t| t.trim() == "20")
    })
    .await;
    wait_for(LONG, "readyz flips to ready", || async {
        http_get(metrics_port, "/readyz")
            .await
            .is_some_and(|(c, _)| c == 200)
    })
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    assert_eq!(xlen(&s.rc, &format!("{stream}:dead")).await, 0);
}
