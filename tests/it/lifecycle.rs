//! Process lifecycle and the CLI: SIGTERM drains and leaves nothing pending,
//! `sluice check` and `sluice status` report what they should.

use std::process::Command;

use crate::common::*;
use crate::harness::{unique_name, wait_for, TcpProxy, Worker};

#[tokio::test]
async fn sigterm_commits_the_batch_in_hand_and_leaves_nothing_pending() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("term"), unique_name("term"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} ({SEED_TABLE_COLUMNS}) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    // Slow inserts so that a batch is in flight when SIGTERM arrives.
    let proxy = TcpProxy::start(s.ch.http_addr());
    let mut w = Worker::spawn(&s.config(
        &proxy.url(),
        "term",
        &stream,
        &table,
        r#"batch = { max_rows = 500, max_wait = "50ms" }
read_count = 200
metadata = { id = "_id" }"#,
    ));
    wait_for(LONG, "worker running", || async {
        w.log_contents().contains("flow running")
    })
    .await;
    proxy.delay(std::time::Duration::from_millis(300));
    xadd_many(&s.rc, &stream, 5000, seed_job).await;
    wait_for(LONG, "entries in flight", || async {
        pending(&s.rc, &stream, "g").await > 0
    })
    .await;
    w.term();
    let status = w.wait_exit(LONG).await.expect("worker exited");
    assert!(status.success(), "exit {status:?}\n{}", w.log_contents());
    // Everything it read landed and was acked; its consumer is gone.
    assert_eq!(
        pending(&s.rc, &stream, "g").await,
        0,
        "{}",
        w.log_contents()
    );
    assert!(
        consumer_names(&s.rc, &stream, "g").await.is_empty(),
        "{}",
        w.log_contents()
    );
    let read = read_by_group(&s, &stream).await;
    assert!(read > 0);
    assert_eq!(
        s.ch.query_u64(&format!("SELECT uniqExact(_id) FROM {table}"))
            .await,
        read
    );
}

/// XINFO GROUPS entries-read for group g.
async fn read_by_group(s: &Stack, stream: &str) -> u64 {
    use fred::types::Value;
    if let Value::Array(groups) = raw(&s.rc, "XINFO", vec!["GROUPS".into(), stream.into()]).await {
        for g in groups {
            if let Value::Array(kv) = g {
                for pair in kv.chunks(2) {
                    if pair[0].as_string().as_deref() == Some("entries-read") {
                        return pair[1].as_u64().unwrap_or(0);
                    }
                }
            }
        }
    }
    0
}

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice")
}

#[tokio::test]
async fn check_and_status_report_the_plan_and_the_state() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("cli"), unique_name("cli"));
    s.ch.exec(&format!("CREATE TABLE {table} (rec_id UInt64, data String, _id String) ENGINE = MergeTree ORDER BY rec_id")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        s.config(
            &s.ch.url(),
            "cli",
            &stream,
            &table,
            "metadata = { id = \"_id\" }",
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap();

    let out = sluice(&["check", "--config", path]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("default.{table}"))
            && text.contains("rec_id UInt64 ← field `rec_id`")
            && text.contains("_id String ← metadata: entry id"),
        "{text}"
    );

    // A metadata column the table lacks is named in the error.
    std::fs::write(
        path,
        s.config(
            &s.ch.url(),
            "cli",
            &stream,
            &table,
            "metadata = { id = \"nope\" }",
        ),
    )
    .unwrap();
    let out = sluice(&["check", "--config", path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nope"), "{err}");

    // A bad key is named.
    std::fs::write(
        path,
        s.config(&s.ch.url(), "cli", &stream, &table, "max_deliverys = 3"),
    )
    .unwrap();
    let out = sluice(&["check", "--config", path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("flow[0]") && err.contains("max_deliverys"),
        "{err}"
    );

    std::fs::write(
        path,
        s.config(
            &s.ch.url(),
            "cli",
            &stream,
            &table,
            "metadata = { id = \"_id\" }",
        ),
    )
    .unwrap();
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
    for i in 0..5 {
        xadd(&s.rc, &stream, &[("rec_id", &i.to_string())]).await;
    }
    raw(
        &s.rc,
        "XREADGROUP",
        vec![
            "GROUP".into(),
            "g".into(),
            "c1".into(),
            "COUNT".into(),
            2.into(),
            "STREAMS".into(),
            stream.as_str().into(),
            ">".into(),
        ],
    )
    .await;
    let out = sluice(&["status", "--config", path, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = &v[0];
    assert_eq!(st["length"], 5);
    assert_eq!(st["lag"], 3);
    assert_eq!(st["pending"], 2);
    assert_eq!(st["consumers"][0]["name"], "c1");
    assert_eq!(st["consumers"][0]["pending"], 2);
    assert_eq!(st["dead_letter_length"], 0);
    assert!(st["lag_seconds"].as_f64().unwrap() >= 0.0);
    let out = sluice(&["status", "--config", path]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("c1") && text.contains(&stream), "{text}");
}
