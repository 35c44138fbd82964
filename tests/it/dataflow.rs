//! Dataflow against real servers: stream→stream routing and backpressure,
//! handlers (exec, http, Rust) with retries and dead letters, the chain
//! HTTP entry → exec handler → stream → ClickHouse, and `sluice enqueue`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::types::Value;
use serde_json::json;

use crate::common::*;
use crate::harness::{free_port, port_open, unique_name, wait_for, RedisServer, Worker};
use crate::http_entry::{http_section, post, TOKEN};

fn fixture() -> String {
    format!("{}/tests/fixtures/handler.py", env!("CARGO_MANIFEST_DIR"))
}

/// `[redis]` + `[worker]`, then `rest`.
pub fn config(redis_url: &str, rest: &str) -> String {
    format!(
        r#"
[redis]
url = "{redis_url}"
[worker]
shutdown_timeout = "20s"
block = "200ms"
{rest}
"#
    )
}

/// rec_id of every entry of `stream`.
async fn rec_ids(client: &fred::prelude::Client, stream: &str) -> Vec<u64> {
    entries(client, stream)
        .await
        .iter()
        .map(|(_, f)| field(f, "rec_id").unwrap().parse().unwrap())
        .collect()
}

async fn dead_letters(
    client: &fred::prelude::Client,
    stream: &str,
) -> BTreeMap<String, Vec<(String, String)>> {
    entries(client, stream)
        .await
        .into_iter()
        .map(|(_, f)| (field(&f, "rec_id").unwrap_or("?").to_string(), f))
        .collect()
}

#[tokio::test]
async fn routes_by_field_to_several_targets() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let src = unique_name("route_src");
    let t = |name: &str| format!("{src}.{name}");
    let ids = xadd_many(&rc, &src, 300, seed_job).await;
    let no_field = xadd(&rc, &src, &[("rec_id", "1000"), ("data", "x")]).await;
    let _w = Worker::spawn(&config(
        &redis.url(),
        &format!(
            r#"
[[flow]]
name = "route"
streams = ["{src}"]
group = "g"
batch = {{ max_rows = 64, max_wait = "50ms" }}
[flow.sink]
type = "stream"
route_by = "task_for"
routes = {{ a = "{a}", b = ["{b}", "{audit}"] }}
to = "{src}.{{task_for}}"
"#,
            a = t("a"),
            b = t("b"),
            audit = t("audit"),
        ),
    ));
    wait_for(LONG, "every entry moved or dead-lettered", || async {
        pending(&rc, &src, "g").await == 0
            && xlen(&rc, &t("c")).await == 100
            && xlen(&rc, &format!("{src}:dead")).await == 1
    })
    .await;
    // a → explicit route; b → fan-out to two streams; c → the template.
    for (stream, residue) in [(t("a"), 0), (t("b"), 1), (t("audit"), 1), (t("c"), 2)] {
        let got = rec_ids(&rc, &stream).await;
        let want: Vec<u64> = (0..300).filter(|i| i % 3 == residue).collect();
        assert_eq!(got, want, "{stream}");
    }
    // Fields are copied as they were.
    let first = &entries(&rc, &t("a")).await[0].1;
    let source = &entries(&rc, &src).await[0].1;
    assert_eq!(first, source);
    // No task_for, no default: dead-lettered with the reason.
    let dead = entries(&rc, &format!("{src}:dead")).await;
    assert_eq!(field(&dead[0].1, "sluice.id"), Some(no_field.as_str()));
    let reason = field(&dead[0].1, "sluice.reason").unwrap();
    assert!(
        reason.contains("no route") && reason.contains("task_for"),
        "{reason}"
    );
    // Acked, not deleted (on_success = ack).
    assert_eq!(xlen(&rc, &src).await, ids.len() as u64 + 1);
}

/// A target key that is not a stream refuses only the entries routed to
/// it: they are dead-lettered naming the target and Redis's error, every
/// other target gets its entries in order, and the flow goes on.
#[tokio::test]
async fn a_target_key_of_the_wrong_type_dead_letters_only_its_entries() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let src = unique_name("wrongtype_src");
    let t = |name: &str| format!("{src}.{name}");
    let _: Value = raw(&rc, "SET", vec![t("b").into(), "not a stream".into()]).await;
    xadd_many(&rc, &src, 3000, seed_job).await;
    let _w = Worker::spawn(&config(
        &redis.url(),
        &format!(
            r#"
[[flow]]
name = "wrongtype"
streams = ["{src}"]
group = "g"
batch = {{ max_rows = 1000, max_wait = "50ms" }}
[flow.sink]
type = "stream"
to = "{src}.{{task_for}}"
"#
        ),
    ));
    let dead_stream = format!("{src}:dead");
    wait_for(LONG, "every entry moved or dead-lettered", || async {
        pending(&rc, &src, "g").await == 0
            && xlen(&rc, &t("a")).await == 1000
            && xlen(&rc, &t("c")).await == 1000
            && xlen(&rc, &dead_stream).await == 1000
    })
    .await;
    for (stream, residue) in [(t("a"), 0), (t("c"), 2)] {
        let want: Vec<u64> = (0..3000).filter(|i| i % 3 == residue).collect();
        assert_eq!(rec_ids(&rc, &stream).await, want, "{stream}");
    }
    let dead = dead_letters(&rc, &dead_stream).await;
    let want: BTreeSet<String> = (0..3000)
        .filter(|i| i % 3 == 1)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(dead.keys().cloned().collect::<BTreeSet<_>>(), want);
    let reason = field(&dead["1"], "sluice.reason").unwrap();
    assert!(
        reason.contains(&format!("target `{}`", t("b"))) && reason.contains("WRONGTYPE"),
        "{reason}"
    );
    // The key was left as it was.
    assert_eq!(
        raw(&rc, "GET", vec![t("b").into()])
            .await
            .as_string()
            .as_deref(),
        Some("not a stream")
    );
}

#[tokio::test]
async fn full_target_pauses_the_flow_and_nothing_is_lost_or_trimmed() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (src, dst) = (unique_name("pause_src"), unique_name("pause_dst"));
    const N: usize = 1000;
    const CAP: u64 = 100;
    xadd_many(&rc, &src, N, seed_job).await;
    let w = Worker::spawn(&config(
        &redis.url(),
        &format!(
            r#"
[streams."{dst}"]
max_len = {CAP}
[[flow]]
name = "pause"
streams = ["{src}"]
group = "g"
read_count = 50
batch = {{ max_rows = 50, max_wait = "50ms" }}
claim = {{ min_idle = "1s", every = "200ms" }}
sink = {{ type = "stream", to = "{dst}", check_every = "50ms" }}
"#
        ),
    ));
    wait_for(LONG, "target full and flow paused", || async {
        xlen(&rc, &dst).await == CAP && w.log_contents().contains("flow paused")
    })
    .await;
    // Held paused for 3 × claim.min_idle: the target stays at its cap, the
    // source keeps everything unread, and the held entries are neither
    // claimed away nor dead-lettered.
    // No reads while paused: what the flow holds stays the same (a read in
    // flight when the pause began has landed after 1s).
    let paused_at = Instant::now();
    let mut held = None;
    while paused_at.elapsed() < Duration::from_secs(3) {
        assert_eq!(xlen(&rc, &dst).await, CAP);
        assert_eq!(xlen(&rc, &src).await, N as u64, "source trimmed");
        if paused_at.elapsed() > Duration::from_secs(1) {
            let now = pending(&rc, &src, "g").await;
            assert_eq!(*held.get_or_insert(now), now, "reads went on while paused");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held.unwrap() < N as u64);
    assert!(!w.log_contents().contains("claimed idle pending entries"));
    assert_eq!(xlen(&rc, &format!("{src}:dead")).await, 0);

    // Drain the target as a downstream consumer would; never above the cap.
    let mut seen: Vec<u64> = Vec::new();
    let drained = Instant::now();
    while seen.len() < N {
        assert!(drained.elapsed() < LONG, "drain stalled at {}", seen.len());
        let batch = entries(&rc, &dst).await;
        assert!(
            batch.len() as u64 <= CAP,
            "target passed max_len: {}",
            batch.len()
        );
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut args: Vec<Value> = vec![dst.as_str().into()];
        for (id, f) in &batch {
            seen.push(field(f, "rec_id").unwrap().parse().unwrap());
            args.push(id.as_str().into());
        }
        raw(&rc, "XDEL", args).await;
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..N as u64).collect::<Vec<_>>(),
        "lost or duplicated"
    );
    wait_for(LONG, "source fully acked", || async {
        pending(&rc, &src, "g").await == 0
    })
    .await;
    assert!(w.log_contents().contains("flow resumed"));
    assert_eq!(xlen(&rc, &format!("{src}:dead")).await, 0);
    // Every entry was delivered once: no redelivery during the pause.
    assert!(!w.log_contents().contains("claimed idle pending entries"));
}

#[tokio::test]
async fn chain_http_entry_exec_handler_stream_clickhouse_with_retries_and_dead_letters() {
    let s = Stack::start().await;
    let (stream_in, stream_out, table) = (
        unique_name("chain_in"),
        unique_name("chain_out"),
        unique_name("chain"),
    );
    s.ch.exec(&format!(
        "CREATE TABLE {table} (rec_id UInt64, task_for String, result String, deliveries UInt32) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    let port = free_port();
    let w = Worker::spawn(&config(
        &s.redis.url(),
        &format!(
            r#"
[clickhouse]
url = "{ch}"
{http}
[[flow]]
name = "work"
streams = ["{stream_in}"]
group = "g"
max_deliveries = 3
claim = {{ min_idle = "4s", every = "250ms" }}
batch = {{ max_rows = 100, max_wait = "50ms" }}
handler = {{ type = "exec", command = ["python3", "{script}"], workers = 2, timeout = "3s" }}
sink = {{ type = "stream", to = "{stream_out}" }}

[[flow]]
name = "land"
streams = ["{stream_out}"]
group = "g"
batch = {{ max_rows = 1000, max_wait = "100ms" }}
sink = {{ type = "clickhouse", table = "{table}" }}
"#,
            ch = s.ch.url(),
            http = http_section(port, &[&stream_in]),
            script = fixture(),
        ),
    ));
    wait_for(LONG, "HTTP entry up", || async { port_open(port).await }).await;
    let base = format!("http://127.0.0.1:{port}");
    let mut items: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            let task_for = ["a", "b"][i % 2];
            json!({"rec_id": i, "task_for": task_for, "data": i * 10})
        })
        .collect();
    items.push(json!({"rec_id": 100, "task_for": "a", "action": "crash"}));
    items.push(json!({"rec_id": 101, "task_for": "a", "action": "sleep"}));
    let r = post(&base, &stream_in, Some(TOKEN), &json!(items)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ids"].as_array().unwrap().len(), 42);

    wait_for(LONG, "40 handled rows in ClickHouse", || async {
        s.ch.count(&table).await == 40
    })
    .await;
    let wrong =
        s.ch.query_u64(&format!(
            "SELECT count() FROM {table} WHERE result != upper(task_for) OR deliveries != 1"
        ))
        .await;
    assert_eq!(wrong, 0);
    let dead_stream = format!("{stream_in}:dead");
    wait_for(LONG, "crash and timeout dead-lettered", || async {
        xlen(&s.rc, &dead_stream).await == 2
    })
    .await;
    let dead = dead_letters(&s.rc, &dead_stream).await;
    let crash = &dead["100"];
    let reason = field(crash, "sluice.reason").unwrap();
    assert!(
        reason.contains("exited") && reason.contains("delivery 3 of max_deliveries = 3"),
        "{reason}"
    );
    assert_eq!(field(crash, "sluice.deliveries"), Some("3"));
    assert_eq!(field(crash, "action"), Some("crash"));
    let timeout = &dead["101"];
    let reason = field(timeout, "sluice.reason").unwrap();
    assert!(reason.contains("timed out after 3s"), "{reason}");
    assert_eq!(field(timeout, "sluice.deliveries"), Some("3"));
    wait_for(LONG, "nothing pending anywhere", || async {
        pending(&s.rc, &stream_in, "g").await == 0 && pending(&s.rc, &stream_out, "g").await == 0
    })
    .await;
    assert_eq!(xlen(&s.rc, &stream_out).await, 40);
    assert_eq!(s.ch.count(&table).await, 40, "no duplicates");
    let log = w.log_contents();
    assert!(
        log.contains("crashing on purpose"),
        "child stderr reaches the log"
    );
    assert!(log.contains("started a new handler process"), "{log}");
    assert!(log.contains("handler process timed out"));
}

#[tokio::test]
async fn exec_handler_outputs_and_failure_kinds() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (src, dst) = (unique_name("exec_src"), unique_name("exec_dst"));
    for (i, action) in ["", "", "split", "drop", "refuse", "fail", "garbage", ""]
        .iter()
        .enumerate()
    {
        let id = i.to_string();
        let mut fields = vec![("rec_id", id.as_str()), ("task_for", "x")];
        if !action.is_empty() {
            fields.push(("action", action));
        }
        xadd(&rc, &src, &fields).await;
    }
    let w = Worker::spawn(&config(
        &redis.url(),
        &format!(
            r#"
[[flow]]
name = "exec"
streams = ["{src}"]
group = "g"
max_deliveries = 2
claim = {{ min_idle = "1s", every = "200ms" }}
batch = {{ max_rows = 100, max_wait = "50ms" }}
handler = {{ type = "exec", command = ["python3", "{script}"], timeout = "800ms" }}
sink = {{ type = "stream", to = "{dst}" }}
"#,
            script = fixture()
        ),
    ));
    let dead_stream = format!("{src}:dead");
    wait_for(LONG, "all settled", || async {
        pending(&rc, &src, "g").await == 0 && xlen(&rc, &dead_stream).await == 3
    })
    .await;
    let out = entries(&rc, &dst).await;
    let got: Vec<(&str, Option<&str>)> = out
        .iter()
        .map(|(_, f)| (field(f, "rec_id").unwrap(), field(f, "part")))
        .collect();
    assert_eq!(
        got,
        vec![
            ("0", None),
            ("1", None),
            ("2", Some("1")),
            ("2", Some("2")),
            ("7", None)
        ],
        "split gives two outputs, drop none"
    );
    assert_eq!(field(&out[0].1, "result"), Some("X"));
    let dead = dead_letters(&rc, &dead_stream).await;
    let refuse = &dead["4"];
    assert!(field(refuse, "sluice.reason")
        .unwrap()
        .contains("rec_id 4 is invalid"));
    assert_eq!(
        field(refuse, "sluice.deliveries"),
        Some("1"),
        "retry = false dead-letters at once"
    );
    let fail = &dead["5"];
    assert!(field(fail, "sluice.reason")
        .unwrap()
        .contains("cannot handle 5 yet"));
    assert_eq!(field(fail, "sluice.deliveries"), Some("2"));
    let garbage = &dead["6"];
    assert!(field(garbage, "sluice.reason")
        .unwrap()
        .contains("not JSON"));
    assert!(w.log_contents().contains("broke the protocol"));
}

/// A tiny HTTP service standing in for the user's endpoint.
async fn start_service() -> (u16, tokio::task::JoinHandle<()>) {
    use axum::http::StatusCode;
    async fn work(body: axum::body::Bytes) -> (StatusCode, String) {
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let f = &req["fields"];
        let rec = f["rec_id"].as_str().unwrap_or("").to_string();
        match f["action"].as_str().unwrap_or("") {
            "bad" => (StatusCode::UNPROCESSABLE_ENTITY, "rec_id is odd".into()),
            "busy" => (StatusCode::SERVICE_UNAVAILABLE, "try later".into()),
            "two" => (
                StatusCode::OK,
                json!([{"rec_id": rec, "n": 1}, {"rec_id": rec, "n": 2}]).to_string(),
            ),
            "none" => (StatusCode::NO_CONTENT, String::new()),
            _ => (
                StatusCode::OK,
                json!({"rec_id": rec, "id": req["id"], "deliveries": req["deliveries"], "upper": f["name"].as_str().unwrap_or("").to_uppercase()}).to_string(),
            ),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/work", axum::routing::post(work));
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, task)
}

#[tokio::test]
async fn http_handler_posts_each_message_and_classifies_failures() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (port, _service) = start_service().await;
    let (src, dst) = (unique_name("hh_src"), unique_name("hh_dst"));
    let plain = xadd(&rc, &src, &[("rec_id", "1"), ("name", "ada")]).await;
    xadd(&rc, &src, &[("rec_id", "2"), ("action", "two")]).await;
    xadd(&rc, &src, &[("rec_id", "3"), ("action", "none")]).await;
    xadd(&rc, &src, &[("rec_id", "4"), ("action", "bad")]).await;
    xadd(&rc, &src, &[("rec_id", "5"), ("action", "busy")]).await;
    let _w = Worker::spawn(&config(
        &redis.url(),
        &format!(
            r#"
[[flow]]
name = "hh"
streams = ["{src}"]
group = "g"
max_deliveries = 2
claim = {{ min_idle = "1s", every = "200ms" }}
batch = {{ max_rows = 100, max_wait = "50ms" }}
handler = {{ type = "http", url = "http://127.0.0.1:{port}/work", timeout = "500ms", headers = {{ x-test = "1" }} }}
sink = {{ type = "stream", to = "{dst}" }}
"#
        ),
    ));
    let dead_stream = format!("{src}:dead");
    wait_for(LONG, "all settled", || async {
        pending(&rc, &src, "g").await == 0 && xlen(&rc, &dead_stream).await == 2
    })
    .await;
    let out = entries(&rc, &dst).await;
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(field(&out[0].1, "upper"), Some("ADA"));
    assert_eq!(field(&out[0].1, "id"), Some(plain.as_str()));
    assert_eq!(field(&out[0].1, "deliveries"), Some("1"));
    assert_eq!(
        (field(&out[1].1, "n"), field(&out[2].1, "n")),
        (Some("1"), Some("2"))
    );
    let dead = dead_letters(&rc, &dead_stream).await;
    let bad = &dead["4"];
    assert!(field(bad, "sluice.reason").unwrap().contains("422"));
    assert_eq!(field(bad, "sluice.deliveries"), Some("1"));
    let busy = &dead["5"];
    assert!(field(busy, "sluice.reason").unwrap().contains("503"));
    assert_eq!(field(busy, "sluice.deliveries"), Some("2"));
}

/// A Rust handler: doubles `n`, refuses negative numbers.
struct Double;

#[async_trait::async_trait]
impl sluice::Handler for Double {
    async fn handle(
        &self,
        m: &sluice::Message,
    ) -> Result<Vec<sluice::Fields>, sluice::HandlerError> {
        let n: i64 = m
            .field(b"n")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| sluice::HandlerError::fatal("n is not a number"))?;
        if n < 0 {
            return Err(sluice::HandlerError::fatal("negative"));
        }
        Ok(vec![vec![
            ("n".into(), n.to_string().into()),
            ("doubled".into(), (2 * n).to_string().into()),
        ]])
    }
}

#[tokio::test]
async fn rust_handler_runs_in_process() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (src, dst) = (unique_name("rust_src"), unique_name("rust_dst"));
    for n in ["1", "2", "-3", "x", "21"] {
        xadd(&rc, &src, &[("n", n)]).await;
    }
    let text = config(
        &redis.url(),
        &format!(
            r#"
[[flow]]
name = "double"
streams = ["{src}"]
group = "g"
batch = {{ max_wait = "50ms" }}
handler = {{ type = "rust", name = "double", concurrency = 4 }}
sink = {{ type = "stream", to = "{dst}" }}
"#
        ),
    );
    let cfg = sluice::config::Config::from_toml_with_env(&text, "test", Vec::new()).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handlers = sluice::Handlers::new().register("double", Double);
    let run = tokio::spawn(sluice::run_with_handlers(
        cfg.clone(),
        shutdown.clone(),
        handlers,
    ));
    wait_for(LONG, "handled", || async {
        pending(&rc, &src, "g").await == 0 && xlen(&rc, &dst).await == 3
    })
    .await;
    let doubled: Vec<String> = entries(&rc, &dst)
        .await
        .iter()
        .map(|(_, f)| field(f, "doubled").unwrap().to_string())
        .collect();
    assert_eq!(doubled, ["2", "4", "42"]);
    assert_eq!(xlen(&rc, &format!("{src}:dead")).await, 2);
    shutdown.cancel();
    tokio::time::timeout(LONG, run)
        .await
        .expect("worker stopped")
        .unwrap()
        .expect("clean shutdown");
    // Without the registration the worker refuses to start, naming the handler.
    let err = sluice::run(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("handler `double`"), "{err}");
}

async fn enqueue(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("enqueue")
        .args(args)
        .env_remove("SLUICE_CONFIG")
        .env_remove("REDIS_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn sluice enqueue");
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).await.unwrap();
    }
    drop(input);
    tokio::time::timeout(LONG, child.wait_with_output())
        .await
        .expect("sluice enqueue timed out")
        .unwrap()
}

#[tokio::test]
async fn enqueue_loads_json_lines_and_csv() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let dir = tempfile::tempdir().unwrap();
    let (jl, csv) = (unique_name("enq_jl"), unique_name("enq_csv"));
    let lines: String = (0..2500)
        .map(|i| format!("{{\"rec_id\": {i}, \"task_for\": \"a\", \"ok\": true}}\n"))
        .collect();
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(&file, lines).unwrap();
    let url = redis.url();
    let out = enqueue(
        &[
            jl.as_str(),
            file.to_str().unwrap(),
            "--redis-url",
            &url,
            "--batch",
            "1000",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("enqueued 2500 messages") && stdout.contains("msgs/s"),
        "{stdout}"
    );
    assert_eq!(rec_ids(&rc, &jl).await, (0..2500).collect::<Vec<u64>>());
    assert_eq!(field(&entries(&rc, &jl).await[0].1, "ok"), Some("true"));

    // CSV from stdin.
    let out = enqueue(
        &[csv.as_str(), "--format", "csv", "--redis-url", &url],
        Some(b"rec_id,task_for,data\n1,a,\"x,y\"\n2,b,\n"),
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let got = entries(&rc, &csv).await;
    assert_eq!(
        got[0].1,
        vec![
            ("rec_id".to_string(), "1".to_string()),
            ("task_for".into(), "a".into()),
            ("data".into(), "x,y".into())
        ]
    );
    assert_eq!(field(&got[1].1, "data"), Some(""));

    // A bad line stops the load, naming it; the lines before it are in.
    let bad = unique_name("enq_bad");
    let out = enqueue(
        &[bad.as_str(), "--redis-url", &url],
        Some(b"{\"a\":1}\n{\"a\":2}\n{\"a\":{\"b\":1}}\n{\"a\":4}\n"),
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3: field `a`"), "{stderr}");
    assert_eq!(xlen(&rc, &bad).await, 2);
}

#[tokio::test]
async fn enqueue_waits_while_the_stream_is_at_max_len() {
    let redis = RedisServer::start().await;
    let rc = Arc::new(redis.client().await);
    let stream = unique_name("enq_cap");
    let input: String = (0..300).map(|i| format!("{{\"rec_id\": {i}}}\n")).collect();
    let url = redis.url();
    let load = {
        let (stream, url) = (stream.clone(), url.clone());
        tokio::spawn(async move {
            enqueue(
                &[
                    stream.as_str(),
                    "--redis-url",
                    url.as_str(),
                    "--max-len",
                    "50",
                    "--batch",
                    "40",
                    "--poll",
                    "20ms",
                ],
                Some(input.as_bytes()),
            )
            .await
        })
    };
    wait_for(LONG, "stream reaches its cap", || async {
        xlen(&rc, &stream).await == 50
    })
    .await;
    // Consume: read and delete, checking the cap holds.
    let mut seen = BTreeSet::new();
    let started = Instant::now();
    while seen.len() < 300 {
        assert!(started.elapsed() < LONG, "stalled at {}", seen.len());
        let batch = entries(&rc, &stream).await;
        assert!(batch.len() <= 50, "passed max_len: {}", batch.len());
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let mut args: Vec<Value> = vec![stream.as_str().into()];
        for (id, f) in &batch {
            seen.insert(field(f, "rec_id").unwrap().parse::<u64>().unwrap());
            args.push(id.as_str().into());
        }
        raw(&rc, "XDEL", args).await;
    }
    let out = load.await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(seen, (0..300).collect::<BTreeSet<u64>>());
    assert!(String::from_utf8_lossy(&out.stdout).contains("waiting at max_len"));
}
