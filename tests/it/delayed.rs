//! Delayed jobs against a real Redis: invisible until due (by the server's
//! clock), then delivered exactly once while three worker processes race
//! to promote them.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::Value;

use crate::common::*;
use crate::harness::{unique_name, wait_for, RedisServer, Worker};
use crate::schedule::redis_only_config;
use sluice::testing::delayed::{self, Due};

/// The Redis server's clock, in Unix ms.
pub async fn redis_now_ms(client: &Client) -> u64 {
    match raw(client, "TIME", vec![]).await {
        Value::Array(t) => {
            let secs: u64 = t[0].as_string().unwrap().parse().unwrap();
            let micros: u64 = t[1].as_string().unwrap().parse().unwrap();
            secs * 1_000 + micros / 1_000
        }
        other => panic!("TIME: {other:?}"),
    }
}

fn job(i: usize, batch: &str) -> Vec<(Bytes, Bytes)> {
    vec![
        (Bytes::from("job"), Bytes::from(i.to_string())),
        (Bytes::from("batch"), Bytes::from(batch.to_string())),
    ]
}

async fn zcard(client: &Client, key: &str) -> u64 {
    client.zcard(key).await.unwrap()
}

#[tokio::test]
async fn delayed_jobs_are_invisible_until_due_then_delivered_once_by_three_promoters() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let stream = unique_name("delayed");
    let config = redis_only_config(&redis.url(), "").replace(
        "promote_every = \"50ms\"",
        "promote_every = \"50ms\"\npromote_batch = 300",
    );
    let mut fleet: Vec<Worker> = (0..3).map(|_| Worker::spawn(&config)).collect();

    // Batch A: 50 jobs due in 1.5 s; batch B: 2000 jobs due in 3 s (more
    // than one script call's worth, so the promoters take turns on it).
    let a: Vec<_> = (0..50).map(|i| job(i, "a")).collect();
    let b: Vec<_> = (50..2050).map(|i| job(i, "b")).collect();
    let due_a = delayed::enqueue(&rc, &stream, &a, Due::After(Duration::from_millis(1_500)))
        .await
        .unwrap();
    let mut due_b = 0;
    for chunk in b.chunks(500) {
        due_b = due_a + 1_500;
        delayed::enqueue(&rc, &stream, chunk, Due::At(due_b))
            .await
            .unwrap();
    }
    let set = delayed::set_key(&stream);
    assert_eq!(zcard(&rc, &set).await, 2050);
    assert_eq!(xlen(&rc, &stream).await, 0);
    let waiting = delayed::waiting(&rc, &stream, 3).await.unwrap();
    assert_eq!(waiting.len(), 3);
    assert_eq!(waiting[0].due_ms, due_a);
    let listed: bool = rc
        .sismember(delayed::INDEX_KEY, stream.as_str())
        .await
        .unwrap();
    assert!(listed);

    // Not one entry before its due time (read the length first, then the
    // clock: an entry seen means the clock had passed its due time).
    wait_for(LONG, "batch A due and delivered", || async {
        let len = xlen(&rc, &stream).await;
        let now = redis_now_ms(&rc).await;
        assert!(len == 0 || now >= due_a, "{len} entries at {now} < {due_a}");
        assert!(
            len <= 50 || now >= due_b,
            "{len} entries at {now} < {due_b}"
        );
        len == 50
    })
    .await;
    wait_for(LONG, "batch B delivered", || async {
        let len = xlen(&rc, &stream).await;
        let now = redis_now_ms(&rc).await;
        assert!(
            len <= 50 || now >= due_b,
            "{len} entries at {now} < {due_b}"
        );
        len >= 2050
    })
    .await;
    assert_eq!(zcard(&rc, &set).await, 0);
    // The last promotion removed the stream from the index.
    wait_for(LONG, "index cleaned", || async {
        !rc.sismember::<bool, _, _>(delayed::INDEX_KEY, stream.as_str())
            .await
            .unwrap()
    })
    .await;
    for w in &fleet {
        w.term();
    }
    for w in &mut fleet {
        assert!(w.wait_exit(LONG).await.expect("exited").success());
    }

    // Exactly once: 2050 entries, each job once, none before its time.
    let all = entries(&rc, &stream).await;
    assert_eq!(all.len(), 2050);
    let mut seen: BTreeMap<usize, u64> = BTreeMap::new();
    for (id, f) in &all {
        let job: usize = field(f, "job").unwrap().parse().unwrap();
        let due = if field(f, "batch") == Some("a") {
            due_a
        } else {
            due_b
        };
        let added: u64 = id.split('-').next().unwrap().parse().unwrap();
        assert!(added >= due, "job {job} added at {added}, due {due}");
        assert!(
            added < due + 10_000,
            "job {job} added at {added}, due {due}"
        );
        assert!(
            seen.insert(job, added).is_none(),
            "job {job} delivered twice"
        );
    }
    assert_eq!(seen.len(), 2050);
    assert_eq!(*seen.keys().next().unwrap(), 0);
    assert_eq!(*seen.keys().last().unwrap(), 2049);
}

#[tokio::test]
async fn undecodable_members_are_set_aside() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let stream = unique_name("garbage");
    let set = delayed::set_key(&stream);
    let _: i64 = rc
        .zadd(&set, None, None, false, false, (1.0, "not msgpack"))
        .await
        .unwrap();
    delayed::enqueue_at(&rc, &stream, job(1, "ok"), 2)
        .await
        .unwrap();
    let p = delayed::promote(&rc, &stream, 100).await.unwrap();
    assert_eq!((p.moved, p.invalid, p.next_due), (1, 1, None));
    assert_eq!(xlen(&rc, &stream).await, 1);
    assert_eq!(zcard(&rc, &delayed::invalid_key(&stream)).await, 1);
    assert_eq!(zcard(&rc, &set).await, 0);
}

/// `sluice enqueue STREAM --delay D` with JSON lines on stdin.
fn enqueue_delayed(redis_url: &str, stream: &str, delay: &str, lines: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "enqueue",
            stream,
            "--quiet",
            "--delay",
            delay,
            "--redis-url",
            redis_url,
        ])
        .env_remove("SLUICE_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sluice enqueue");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn enqueue_delay_and_http_not_before_hold_messages_back() {
    use crate::http_entry::{http_section, post, request, TOKEN};
    use serde_json::json;
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let stream = unique_name("later");
    let port = crate::harness::free_port();
    let config = redis_only_config(&redis.url(), &http_section(port, &[&stream]));
    let _w = Worker::spawn(&config);
    wait_for(LONG, "HTTP entry listening", || async {
        crate::harness::port_open(port).await
    })
    .await;
    let base = format!("http://127.0.0.1:{port}");

    // HTTP: not_before in the future → 202, held back.
    let due_http = redis_now_ms(&rc).await + 1_500;
    let url = format!("{base}/v1/streams/{stream}/messages?not_before={due_http}");
    let body =
        serde_json::to_vec(&json!([{"via": "http", "n": 1}, {"via": "http", "n": 2}])).unwrap();
    let r = request("POST", &url, Some(TOKEN), Some(body)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["delayed"], 2);
    assert_eq!(r.json()["not_before"], due_http);
    // A bad time is refused; a past one appends at once.
    let bad = format!("{base}/v1/streams/{stream}/messages?not_before=soon");
    let r = request("POST", &bad, Some(TOKEN), Some(b"[{\"n\":1}]".to_vec())).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("not_before"), "{}", r.body);
    let past = format!("{base}/v1/streams/{stream}/messages?not_before=2020-01-01T00:00:00Z");
    let r = request(
        "POST",
        &past,
        Some(TOKEN),
        Some(b"[{\"via\":\"now\"}]".to_vec()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ids"].as_array().unwrap().len(), 1);
    // Without the parameter, as before.
    assert_eq!(
        post(&base, &stream, Some(TOKEN), &json!([{"via": "now"}]))
            .await
            .status,
        200
    );

    // CLI: --delay.
    let before_cli = redis_now_ms(&rc).await;
    let out = enqueue_delayed(
        &redis.url(),
        &stream,
        "2s",
        "{\"via\":\"cli\",\"n\":1}\n{\"via\":\"cli\",\"n\":2}\n{\"via\":\"cli\",\"n\":3}\n",
    );
    assert!(
        out.contains("enqueued 3 messages") && out.contains("held back in"),
        "{out}"
    );
    let due_cli = delayed::waiting(&rc, &stream, 10)
        .await
        .unwrap()
        .iter()
        .map(|w| w.due_ms)
        .max()
        .unwrap();
    assert!(
        due_cli >= before_cli + 2_000,
        "{due_cli} < {before_cli} + 2s"
    );
    assert_eq!(zcard(&rc, &delayed::set_key(&stream)).await, 5);
    assert_eq!(xlen(&rc, &stream).await, 2);

    wait_for(LONG, "all seven", || async {
        let len = xlen(&rc, &stream).await;
        let now = redis_now_ms(&rc).await;
        assert!(len == 2 || now >= due_http.min(due_cli), "{len} at {now}");
        len == 7
    })
    .await;
    for (id, f) in entries(&rc, &stream).await {
        let added: u64 = id.split('-').next().unwrap().parse().unwrap();
        match field(&f, "via") {
            Some("http") => assert!(added >= due_http, "{id} before {due_http}"),
            Some("cli") => assert!(added >= due_cli, "{id} before {due_cli}"),
            _ => {}
        }
    }
}
