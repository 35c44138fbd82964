//! Retry with backoff through the delayed set, dead letters after
//! `max_deliveries`, and `sluice dead list|show|replay|purge` — against
//! real Redis, ClickHouse and worker processes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::*;
use crate::harness::{unique_name, wait_for, RedisServer, Worker};
use crate::schedule::{redis_only_config, Cli};
use sluice::config::RetryConfig;

const FLAKY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/flaky_handler.py"
);

/// One line of the flaky handler's log.
#[derive(Debug, Clone, Copy)]
struct Call {
    deliveries: u64,
    attempt: u64,
    at_ms: u64,
}

fn read_calls(path: &std::path::Path) -> BTreeMap<u64, Vec<Call>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: BTreeMap<u64, Vec<Call>> = BTreeMap::new();
    for line in text.lines() {
        let p: Vec<&str> = line.split_whitespace().collect();
        let [rec, deliveries, attempt, at] = p[..] else {
            panic!("bad log line {line:?}")
        };
        out.entry(rec.parse().unwrap()).or_default().push(Call {
            deliveries: deliveries.parse().unwrap(),
            attempt: attempt.parse().unwrap(),
            at_ms: at.parse().unwrap(),
        });
    }
    out
}

#[tokio::test]
async fn failed_handling_backs_off_then_dead_letters_and_replay_lands_it() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("flaky"), unique_name("flaky"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (rec_id UInt64, data String) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.log");
    let marker = dir.path().join("fail");
    std::fs::write(&marker, "").unwrap();
    // claim.min_idle is a minute: every retry seen within it came through
    // the delayed set, not from the claim loop.
    let extra = format!(
        r#"handler = {{ type = "exec", command = ["python3", "{FLAKY}"], workers = 2, timeout = "10s", env = {{ FLAKY_LOG = "{log}", FLAKY_FAIL_WHILE = "{marker}" }} }}
retry = {{ backoff = "exponential", base = "400ms", max = "1600ms" }}
max_deliveries = 4
batch = {{ max_rows = 100, max_wait = "100ms" }}
claim = {{ min_idle = "60s", every = "1s" }}

[scheduler]
promote_every = "50ms"
"#,
        log = log.display(),
        marker = marker.display(),
    );
    let config = s.config(&s.ch.url(), "flaky", &stream, &table, &extra);
    let w = Worker::spawn(&config);
    wait_for(LONG, "flow running", || async {
        w.log_contents().contains("flow running")
    })
    .await;
    for i in 1..=5 {
        xadd(
            &s.rc,
            &stream,
            &[("rec_id", &i.to_string()), ("data", &format!("d{i}"))],
        )
        .await;
    }
    let dead_stream = format!("{stream}:dead");
    wait_for(LONG, "five dead letters", || async {
        xlen(&s.rc, &dead_stream).await == 5
    })
    .await;

    // Four calls per message: the first, then three retries, each after
    // the configured, jittered delay.
    let policy = RetryConfig {
        base: Duration::from_millis(400),
        max: Duration::from_millis(1600),
        ..RetryConfig::default()
    };
    let calls = read_calls(&log);
    assert_eq!(calls.len(), 5, "{calls:?}");
    for (rec, c) in &calls {
        assert_eq!(c.len(), 4, "rec {rec}: {c:?}\n{}", w.log_contents());
        for (k, call) in c.iter().enumerate() {
            assert_eq!(call.attempt, k as u64, "rec {rec}: {c:?}");
            assert_eq!(call.deliveries, 1, "a fresh copy each time: {c:?}");
        }
        for k in 1..4 {
            let gap = c[k].at_ms - c[k - 1].at_ms;
            let (low, high) = policy.delay_bounds(k as u64);
            let (low, high) = (low.as_millis() as u64, high.as_millis() as u64);
            assert!(
                gap >= low,
                "rec {rec}: retry {k} after {gap} ms < {low} ms: {c:?}"
            );
            // Upper bound: the delay, plus promotion, read and handling slack.
            assert!(
                gap <= high + 1_500,
                "rec {rec}: retry {k} after {gap} ms > {high} ms + slack: {c:?}"
            );
        }
    }
    assert_eq!(s.ch.count(&table).await, 0);
    assert_eq!(pending(&s.rc, &stream, "g").await, 0);
    let dead = entries(&s.rc, &dead_stream).await;
    for (_, f) in &dead {
        let reason = field(f, "sluice.reason").unwrap();
        assert!(
            reason.contains("failed 4 times (max_deliveries = 4)")
                && reason.contains("downstream unavailable"),
            "{reason}"
        );
        assert_eq!(field(f, "sluice.deliveries"), Some("4"));
        assert_eq!(field(f, "sluice.stream"), Some(stream.as_str()));
        assert!(field(f, "rec_id").is_some() && field(f, "data").is_some());
        assert!(field(f, "sluice.attempt").is_none(), "{f:?}");
    }

    // The tooling: list, show, a dry run, then replay in two steps.
    let cli = Cli::new(&config);
    let list = cli.ok(&["dead", "list", "--flow", "flaky"]);
    assert!(
        list.contains(&format!("`{dead_stream}`: 5 entries")),
        "{list}"
    );
    assert_eq!(list.matches("downstream unavailable").count(), 5, "{list}");
    let rec1 = &dead
        .iter()
        .find(|(_, f)| field(f, "rec_id") == Some("1"))
        .unwrap()
        .0;
    let show = cli.ok(&["dead", "show", rec1, "--flow", "flaky"]);
    assert!(
        show.contains("rec_id = 1") && show.contains("deliveries:   4"),
        "{show}"
    );
    let dry = cli.ok(&["dead", "replay", "--dry-run"]);
    assert!(dry.contains("5 entries would be replayed"), "{dry}");
    assert_eq!(xlen(&s.rc, &dead_stream).await, 5);

    std::fs::remove_file(&marker).unwrap();
    let out = cli.ok(&["dead", "replay", "--count", "2"]);
    assert!(out.contains("replayed 2 entries"), "{out}");
    wait_for(LONG, "two rows", || async { s.ch.count(&table).await == 2 }).await;
    let out = cli.ok(&["dead", "replay"]);
    assert!(out.contains("replayed 3 entries"), "{out}");
    wait_for(LONG, "all rows", || async { s.ch.count(&table).await == 5 }).await;
    assert_eq!(xlen(&s.rc, &dead_stream).await, 0);
    let rows =
        s.ch.query_tsv(&format!(
            "SELECT rec_id, data FROM {table} ORDER BY rec_id FORMAT TSV"
        ))
        .await;
    let want: String = (1..=5).map(|i| format!("{i}\td{i}\n")).collect();
    assert_eq!(rows, want);
    // Replayed with their original fields only: a fresh start (attempt 0).
    let calls = read_calls(&log);
    for c in calls.values() {
        assert_eq!(c.len(), 5, "{calls:?}");
        assert_eq!(c[4].attempt, 0);
    }
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
}

#[tokio::test]
async fn dead_commands_list_show_replay_and_purge() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (src, dead) = (unique_name("src"), unique_name("src_dead"));
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            xadd(
                &rc,
                &dead,
                &[
                    ("sluice.id", &format!("{i}-0")),
                    ("sluice.stream", &src),
                    ("sluice.group", "g"),
                    ("sluice.deliveries", "1"),
                    ("sluice.reason", &format!("column `x`: bad value {i}")),
                    ("x", &i.to_string()),
                    ("sluice.attempt", "2"),
                    ("y", "keep"),
                ],
            )
            .await,
        );
    }
    let orphan = xadd(&rc, &dead, &[("sluice.reason", "no source"), ("x", "9")]).await;
    let cli = Cli::new(&redis_only_config(&redis.url(), ""));
    let d = ["--stream", dead.as_str()];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter().chain(d.iter()).map(|s| s.to_string()).collect()
    };
    let run_ok = |args: &[&str]| {
        let v = with(args);
        cli.ok(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let run_fail = |args: &[&str]| {
        let v = with(args);
        cli.fails(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let list = run_ok(&["dead", "list"]);
    assert!(list.contains("6 entries"), "{list}");
    assert!(
        list.contains("bad value 3") && list.contains(&src),
        "{list}"
    );
    let list = run_ok(&["dead", "list", "--count", "2"]);
    assert!(list.contains("… 4 more"), "{list}");
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(&["dead", "list", "--json"])).unwrap();
    assert_eq!(json[dead.as_str()]["length"], 6);
    assert_eq!(json[dead.as_str()]["entries"][0]["fields"]["y"], "keep");
    let show = run_ok(&["dead", "show", &ids[1]]);
    assert!(
        show.contains("original id:  1-0") && show.contains("x = 1"),
        "{show}"
    );
    assert!(!show.contains("attempt"), "{show}");
    let err = run_fail(&["dead", "show", "1-1"]);
    assert!(err.contains("no entry"), "{err}");

    // Dry run changes nothing.
    let dry = run_ok(&["dead", "replay", "--dry-run"]);
    assert!(dry.contains("5 entries would be replayed"), "{dry}");
    assert!(dry.contains(&format!("skip    {orphan}")), "{dry}");
    assert_eq!(xlen(&rc, &dead).await, 6);
    assert_eq!(xlen(&rc, &src).await, 0);

    // --count takes the oldest; the copies carry the original fields only.
    let out = run_ok(&["dead", "replay", "--count", "2"]);
    assert!(out.contains("replayed 2 entries"), "{out}");
    let back = entries(&rc, &src).await;
    assert_eq!(back.len(), 2);
    assert_eq!(
        back[0].1,
        vec![
            ("x".to_string(), "0".to_string()),
            ("y".into(), "keep".into())
        ]
    );
    assert_eq!(field(&back[1].1, "x"), Some("1"));
    let out = run_ok(&["dead", "replay", "--id", &ids[4]]);
    assert!(out.contains("replayed 1 entries"), "{out}");
    assert_eq!(field(&entries(&rc, &src).await[2].1, "x"), Some("4"));
    assert_eq!(xlen(&rc, &dead).await, 3);

    // purge: must say what; dry run; count; all.
    let err = run_fail(&["dead", "purge"]);
    assert!(err.contains("--all"), "{err}");
    let out = run_ok(&["dead", "purge", "--count", "1", "--dry-run"]);
    assert!(out.contains("1 entries would be deleted"), "{out}");
    assert_eq!(xlen(&rc, &dead).await, 3);
    let out = run_ok(&["dead", "purge", "--count", "1"]);
    assert!(out.contains("deleted 1 entries"), "{out}");
    let remaining: BTreeSet<String> = entries(&rc, &dead).await.into_iter().map(|e| e.0).collect();
    assert_eq!(remaining, BTreeSet::from([ids[3].clone(), orphan.clone()]));
    let out = run_ok(&["dead", "purge", "--all", "--dry-run"]);
    assert!(out.contains("2 entries would be deleted"), "{out}");
    let out = run_ok(&["dead", "purge", "--all"]);
    assert!(out.contains("deleted 2 entries"), "{out}");
    assert_eq!(xlen(&rc, &dead).await, 0);
    assert_eq!(xlen(&rc, &src).await, 3);

    // With several flows, replay must be told which dead-letter stream.
    let two_flows = format!(
        r#"
[redis]
url = "{}"
[clickhouse]
url = "http://127.0.0.1:9"
[[flow]]
name = "a"
streams = ["a"]
sink = {{ type = "clickhouse", table = "a" }}
[[flow]]
name = "b"
streams = ["b"]
sink = {{ type = "clickhouse", table = "b" }}
"#,
        redis.url()
    );
    let cli2 = Cli::new(&two_flows);
    let err = cli2.fails(&["dead", "replay"]);
    assert!(
        err.contains("a:dead, b:dead") && err.contains("--flow"),
        "{err}"
    );
    let list = cli2.ok(&["dead", "list"]);
    assert!(
        list.contains("`a:dead`: 0 entries") && list.contains("`b:dead`: 0 entries"),
        "{list}"
    );
    let out = cli2.ok(&["dead", "replay", "--flow", "b"]);
    assert!(out.contains("replayed 0 entries from `b:dead`"), "{out}");
}
