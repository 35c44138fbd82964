//! The operator console against a real Redis, driven through Debian's
//! Chromium (WebDriver) where the issue asks for a browser, and over plain
//! HTTP for the API's answers. With `SLUICE_SCREENSHOTS=1` the browser
//! tests also rewrite `docs/console/*.png`.

use std::path::PathBuf;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;

use crate::common::*;
use crate::harness::{
    free_port, port_open, secs, unique_name, wait_for, Browser, RedisServer, Worker,
};
use crate::schedule::Cli;

const VIEWER: &str = "viewer-token-0123456789abcdef";
const OPERATOR: &str = "operator-token-0123456789abcdef";

/// How long the page may take to show what Redis has (sampler + refresh).
const SHOWN: Duration = Duration::from_secs(20);

/// A private Redis and `sluice console` on its own port.
struct Setup {
    _redis: RedisServer,
    redis_port: u16,
    rc: Client,
    console: Worker,
    port: u16,
    stream: String,
    config: String,
}

impl Setup {
    /// One flow reading `stream` (group `g`, dead letters `{stream}:dead`);
    /// `tokens` adds a viewer and an operator token.
    async fn start(tokens: bool) -> Setup {
        let redis = RedisServer::start().await;
        let rc = redis.client().await;
        let stream = unique_name("jobs");
        let token_toml = if tokens {
            format!(
                "[[console.tokens]]\nname = \"vera\"\ntoken = \"{VIEWER}\"\nrole = \"viewer\"\n\
                 [[console.tokens]]\nname = \"otto\"\ntoken = \"{OPERATOR}\"\nrole = \"operator\"\n"
            )
        } else {
            String::new()
        };
        let config = format!(
            r#"
[redis]
url = "{url}"
[[flow]]
name = "work"
streams = ["{stream}"]
group = "g"
sink = {{ type = "stream", to = "{stream}.out" }}
dead_letter = "{stream}:dead"
[[flow]]
name = "archive"
streams = ["{stream}.out"]
group = "archive"
sink = {{ type = "stream", to = "{stream}.archived" }}
[console]
sample_every = "300ms"
retention = "1m"
{token_toml}"#,
            url = redis.url()
        );
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let console = Worker::spawn_command("console", &config, &["--listen", &listen], &[]);
        wait_for(secs(30), "console listening", || port_open(port)).await;
        Setup {
            redis_port: redis.port(),
            _redis: redis,
            rc,
            console,
            port,
            stream,
            config,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn dead(&self) -> String {
        format!("{}:dead", self.stream)
    }

    /// Adds a dead letter of `source` with `fields`; returns its id.
    async fn dead_letter(&self, source: &str, reason: &str, fields: &[(&str, &str)]) -> String {
        let mut all = vec![
            ("sluice.id", "1-0"),
            ("sluice.stream", source),
            ("sluice.group", "g"),
            ("sluice.deliveries", "5"),
            ("sluice.reason", reason),
        ];
        all.extend_from_slice(fields);
        xadd(&self.rc, &self.dead(), &all).await
    }
}

/// Where screenshots go, when this run should rewrite them.
fn screenshot_path(name: &str) -> Option<PathBuf> {
    (std::env::var("SLUICE_SCREENSHOTS").as_deref() == Ok("1")).then(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("docs/console")
            .join(name)
    })
}

async fn maybe_screenshot(b: &Browser, name: &str) {
    if let Some(path) = screenshot_path(name) {
        b.screenshot(&path).await;
    }
}

async fn xlen(rc: &Client, stream: &str) -> u64 {
    match raw(rc, "XLEN", vec![stream.into()]).await {
        Value::Integer(n) => n as u64,
        other => panic!("XLEN {stream}: {other:?}"),
    }
}

/// Redis's own `lag` and `pending` of group `g`.
async fn redis_lag_pending(rc: &Client, stream: &str) -> (u64, u64) {
    let Value::Array(groups) = raw(rc, "XINFO", vec!["GROUPS".into(), stream.into()]).await else {
        panic!("XINFO GROUPS {stream}");
    };
    let Value::Array(kv) = &groups[0] else {
        panic!("group row")
    };
    let get = |name: &str| {
        kv.chunks(2)
            .find(|p| p[0].as_string().as_deref() == Some(name))
            .and_then(|p| p[1].as_u64())
            .unwrap_or_else(|| panic!("{name} in {kv:?}"))
    };
    (get("lag"), get("pending"))
}

/// `METHOD path` over HTTP/1.1; (status, body).
async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect console");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(secs(30), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Reads `count` new entries of group `g` as `consumer`, then XACKs them.
async fn read_and_ack(rc: &Client, stream: &str, consumer: &str, count: usize) {
    let mut ack: Vec<Value> = vec![stream.into(), "g".into()];
    ack.extend(read_new(rc, stream, consumer, count).await);
    raw(rc, "XACK", ack).await;
}

/// Runs `POST /api/v1/dead/{action}` window after window until complete;
/// returns the sum of `sum_key`, the number of windows and `until`.
async fn bulk_windows(
    port: u16,
    auth: &str,
    action: &str,
    filter: &str,
    mut until: serde_json::Value,
    sum_key: &str,
) -> (u64, u32, serde_json::Value) {
    let (mut sum, mut windows, mut cursor) = (0, 0, serde_json::Value::Null);
    loop {
        let body = format!("{{{filter},\"until\":{until},\"cursor\":{cursor}}}");
        let path = format!("/api/v1/dead/{action}");
        let (status, answer) =
            http(port, "POST", &path, &[("Authorization", auth)], Some(&body)).await;
        assert_eq!(status, 200, "{answer}");
        let a = json(&answer);
        sum += a[sum_key].as_u64().unwrap();
        until = a["until"].clone();
        cursor = a["cursor"].clone();
        windows += 1;
        if a["complete"] == true {
            return (sum, windows, until);
        }
    }
}

/// XREADGROUP up to `count` new entries of group `g` as `consumer`; their ids.
async fn read_new(rc: &Client, stream: &str, consumer: &str, count: usize) -> Vec<Value> {
    let read = raw(
        rc,
        "XREADGROUP",
        vec![
            "GROUP".into(),
            "g".into(),
            consumer.into(),
            "COUNT".into(),
            (count as i64).into(),
            "STREAMS".into(),
            stream.into(),
            ">".into(),
        ],
    )
    .await;
    let mut ids = Vec::new();
    if let Value::Array(per_stream) = read {
        if let Some(Value::Array(kv)) = per_stream.first() {
            if let Some(Value::Array(items)) = kv.get(1) {
                for e in items {
                    if let Value::Array(parts) = e {
                        ids.push(parts[0].clone());
                    }
                }
            }
        }
    }
    ids
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn overview_shows_length_and_lag_as_redis_has_them() {
    let s = Setup::start(false).await;
    for i in 0..25 {
        xadd(
            &s.rc,
            &s.stream,
            &[
                ("rec_id", &i.to_string()),
                ("task_for", ["report", "sum"][i % 2]),
            ],
        )
        .await;
    }
    raw(
        &s.rc,
        "XGROUP",
        vec![
            "CREATE".into(),
            s.stream.as_str().into(),
            "g".into(),
            "0".into(),
        ],
    )
    .await;
    read_new(&s.rc, &s.stream, "c1", 10).await;
    let length = xlen(&s.rc, &s.stream).await;
    let (lag, pending) = redis_lag_pending(&s.rc, &s.stream).await;
    assert_eq!((length, lag, pending), (25, 15, 10), "the setup itself");

    let b = Browser::start().await;
    b.goto(&s.url("/")).await;
    let row = format!("tr[data-stream=\"{}\"]", s.stream);
    let cell = |k: &str| format!("{row} td[data-k=\"{k}\"]");
    wait_for(SHOWN, "overview row with Redis's numbers", || async {
        b.text(&cell("length")).await == Some(length.to_string())
            && b.text(&cell("lag")).await == Some(lag.to_string())
            && b.text(&cell("pending")).await == Some(pending.to_string())
    })
    .await;

    // The page refreshes itself: more entries show without a reload.
    for i in 25..30 {
        xadd(
            &s.rc,
            &s.stream,
            &[("rec_id", &i.to_string()), ("task_for", "report")],
        )
        .await;
    }
    assert_eq!(xlen(&s.rc, &s.stream).await, 30);
    wait_for(SHOWN, "refreshed length and lag", || async {
        b.text(&cell("length")).await.as_deref() == Some("30")
            && b.text(&cell("lag")).await.as_deref() == Some("20")
    })
    .await;
    // A few more rounds, each seen by a sample, so the in/out sparkline
    // has a shape: entries come in, and consumer c2 takes and acks some.
    for round in 0..6u64 {
        for i in 0..(round * 3 + 2) {
            xadd(
                &s.rc,
                &s.stream,
                &[("rec_id", &format!("{round}-{i}")), ("task_for", "report")],
            )
            .await;
        }
        read_and_ack(&s.rc, &s.stream, "c2", round as usize + 2).await;
        let want = xlen(&s.rc, &s.stream).await.to_string();
        wait_for(SHOWN, "round sampled", || async {
            b.text(&cell("length")).await.as_deref() == Some(want.as_str())
        })
        .await;
    }
    // Let the in/out sparkline collect a few samples before the picture.
    wait_for(SHOWN, "sparkline drawn", || async {
        b.eval(&format!(
            "document.querySelectorAll('{row} svg.spark').length"
        ))
        .await
            == serde_json::json!(1)
    })
    .await;
    // Open the consumers of the stream (each one's pending and idle); the
    // refresh keeps it open.
    b.click(&format!("{row} details summary")).await;
    maybe_screenshot(&b, "overview.png").await;

    // The stream page: newest entries, filter by field value, the pending list.
    b.click(&format!("{row} td a")).await;
    wait_for(SHOWN, "stream page", || async {
        b.text("table.entries").await.is_some()
    })
    .await;
    let first_id = b
        .text("table.entries tbody tr td")
        .await
        .unwrap_or_default();
    let newest = entries(&s.rc, &s.stream).await;
    assert_eq!(first_id, newest.last().unwrap().0, "newest first");
    maybe_screenshot(&b, "stream.png").await;
    b.goto(&s.url(&format!(
        "/stream?name={}&where=task_for%3Dsum&order=oldest",
        s.stream
    )))
    .await;
    let shown = b.eval("Array.from(document.querySelectorAll('table.entries tbody tr')).map(r => r.textContent)").await;
    let shown: Vec<String> = serde_json::from_value(shown).unwrap();
    assert_eq!(
        shown.len(),
        12,
        "rec_id 1, 3, …, 23 have task_for=sum: {shown:?}"
    );
    // Pending entries of group g, with their consumer.
    let pending = b
        .eval("document.querySelectorAll('table.pending tbody tr').length")
        .await;
    assert_eq!(
        pending,
        serde_json::json!(10),
        "the pending list of group g"
    );
    assert!(
        shown
            .iter()
            .all(|r| r.contains("sum") && !r.contains("report")),
        "{shown:?}"
    );
    b.close().await;
}

#[tokio::test]
async fn dead_letter_replayed_by_clicking_is_back_in_its_source_stream() {
    let s = Setup::start(false).await;
    let reasons = [
        "column `rec_id` (UInt64): cannot convert \"x7\"",
        "handler failed 5 times: exit status 1: KeyError: 'data'",
        "rejected by ClickHouse: Code: 53, Type mismatch in column amount",
    ];
    for (i, r) in reasons.iter().enumerate() {
        s.dead_letter(
            &s.stream,
            r,
            &[
                ("rec_id", &format!("x{i}")),
                ("task_for", "report"),
                ("data", "{\"amount\":\"ten\"}"),
            ],
        )
        .await;
    }
    let id = s
        .dead_letter(
            &s.stream,
            "column `rec_id` (UInt64): cannot convert \"abc\"",
            &[("rec_id", "abc"), ("task_for", "sum")],
        )
        .await;
    assert_eq!(xlen(&s.rc, &s.dead()).await, 4);
    assert_eq!(xlen(&s.rc, &s.stream).await, 0);

    let b = Browser::start().await;
    b.goto(&s.url(&format!("/dead?stream={}", s.dead()))).await;
    let button = format!("tr[data-id=\"{id}\"] button[data-op=\"replay\"]");
    wait_for(SHOWN, "dead letter listed", || async {
        b.text(&button).await.is_some()
    })
    .await;
    maybe_screenshot(&b, "dead-letters.png").await;
    b.click(&button).await;

    wait_for(
        SHOWN,
        "dead letter gone from the dead-letter stream",
        || async { xlen(&s.rc, &s.dead()).await == 3 },
    )
    .await;
    let back = entries(&s.rc, &s.stream).await;
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(
        back[0].1,
        vec![
            ("rec_id".to_string(), "abc".to_string()),
            ("task_for".to_string(), "sum".to_string())
        ]
    );
    let left: Vec<String> = entries(&s.rc, &s.dead())
        .await
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert!(!left.contains(&id), "{left:?}");
    // The page reloads and says so.
    wait_for(SHOWN, "flash after replay", || async {
        b.text("#flash")
            .await
            .is_some_and(|t| t.contains("Replayed 1"))
    })
    .await;
    b.close().await;
}

#[tokio::test]
async fn schedule_paused_by_clicking_is_paused_in_redis() {
    let s = Setup::start(false).await;
    let cli = Cli::new(&s.config);
    let name = unique_name("nightly");
    cli.ok(&[
        "schedule",
        "add",
        &name,
        "--cron",
        "0 30 2 * * *",
        "--stream",
        &s.stream,
        "--field",
        "task_for=report",
    ]);
    raw(
        &s.rc,
        "HSET",
        vec![
            format!("sluice:schedule:{{{name}}}").into(),
            "state".into(),
            "running".into(),
        ],
    )
    .await;

    let b = Browser::start().await;
    b.goto(&s.url("/schedules")).await;
    let pause = format!("tr[data-name=\"{name}\"] button[data-op=\"pause\"]");
    wait_for(SHOWN, "schedule listed", || async {
        b.text(&pause).await.is_some()
    })
    .await;
    b.click(&pause).await;
    wait_for(SHOWN, "paused in Redis", || async {
        crate::schedule::hget(&s.rc, &format!("sluice:schedule:{{{name}}}"), "state")
            .await
            .as_deref()
            == Some("paused")
    })
    .await;
    let list = json(&cli.ok(&["schedule", "list", "--json"]));
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name.as_str())
        .expect("listed");
    assert_eq!(mine["state"], "paused", "{mine}");
    wait_for(SHOWN, "page shows paused", || async {
        b.text(&format!("tr[data-name=\"{name}\"] .state"))
            .await
            .as_deref()
            == Some("paused")
    })
    .await;
    b.close().await;
}

#[tokio::test]
async fn tap_shows_an_entry_added_with_redis_cli_within_a_second() {
    let s = Setup::start(false).await;
    xadd(&s.rc, &s.stream, &[("before", "the tap")]).await;
    let b = Browser::start().await;
    b.goto(&s.url(&format!("/tap?stream={}&where=task_for%3Dreport", s.stream)))
        .await;
    wait_for(SHOWN, "tap listening", || async {
        b.eval("document.getElementById('tap-status').dataset.state || ''")
            .await
            == serde_json::json!("listening")
    })
    .await;
    let add = |value: &str| {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &s.redis_port.to_string(),
                "XADD",
                &s.stream,
                "*",
                "task_for",
                value,
                "note",
                "from redis-cli",
            ])
            .output()
            .expect("run redis-cli (apt-get install redis-tools)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let skipped = add("sum");
    let id = add("report");
    wait_for(
        Duration::from_secs(1),
        "the entry in the tap within a second",
        || async {
            b.eval(&format!(
                "!!document.querySelector('#tap-rows tr[data-id=\"{id}\"]')"
            ))
            .await
                == serde_json::json!(true)
        },
    )
    .await;
    let rows = b
        .eval("Array.from(document.querySelectorAll('#tap-rows tr')).map(r => r.dataset.id)")
        .await;
    assert_eq!(
        rows,
        serde_json::json!([id]),
        "the filter keeps {skipped} out, and nothing before the tap shows"
    );
    b.close().await;
}

#[tokio::test]
async fn viewer_cannot_replay_and_requests_without_csrf_are_refused() {
    let s = Setup::start(true).await;
    let id = s.dead_letter(&s.stream, "bad", &[("rec_id", "1")]).await;
    let b = Browser::start().await;

    // Unsigned: the page sends the browser to the sign-in form.
    b.goto(&s.url("/dead")).await;
    wait_for(SHOWN, "sign-in form", || async {
        b.text("form input[name=token]").await.is_some()
    })
    .await;
    b.client
        .find(fantoccini::Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(VIEWER)
        .await
        .unwrap();
    b.click("form button[type=submit]").await;
    wait_for(SHOWN, "signed in as the viewer", || async {
        b.text(".who .name").await.as_deref() == Some("vera")
    })
    .await;
    assert!(
        b.text("button[data-op=replay]").await.is_none(),
        "a viewer sees no action buttons"
    );

    let replay = |csrf: bool| {
        format!(
            r#"const meta = document.querySelector('meta[name=csrf-token]');
               const headers = {{ 'Content-Type': 'application/json' }};
               if ({csrf}) headers['X-CSRF-Token'] = meta.content;
               fetch('/api/v1/dead/replay', {{ method: 'POST', credentials: 'same-origin', headers,
                     body: JSON.stringify({{ stream: '{dead}', ids: ['{id}'] }}) }})
                 .then(r => r.text().then(t => done([r.status, t])));"#,
            dead = s.dead()
        )
    };
    let got = b.run_async(&replay(true)).await;
    assert_eq!(got[0], 403, "viewer with a valid CSRF token: {got}");
    assert!(got[1].as_str().unwrap().contains("viewer"), "{got}");

    // The operator: without the CSRF token refused, with it done.
    b.run_async("fetch('/logout', { method: 'POST', headers: { 'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content } }).then(r => done(r.status));").await;
    b.goto(&s.url("/login?next=%2Fdead")).await;
    b.client
        .find(fantoccini::Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(OPERATOR)
        .await
        .unwrap();
    b.click("form button[type=submit]").await;
    wait_for(SHOWN, "signed in as the operator", || async {
        b.text(".who .name").await.as_deref() == Some("otto")
    })
    .await;
    let got = b.run_async(&replay(false)).await;
    assert_eq!(got[0], 403, "no CSRF token: {got}");
    assert!(got[1].as_str().unwrap().contains("CSRF"), "{got}");
    assert_eq!(xlen(&s.rc, &s.dead()).await, 1, "nothing replayed");
    let got = b.run_async(&replay(true)).await;
    assert_eq!(got[0], 200, "{got}");
    assert_eq!(xlen(&s.rc, &s.dead()).await, 0);
    assert_eq!(xlen(&s.rc, &s.stream).await, 1);
    b.close().await;

    // Scripts: a viewer's bearer token reads but cannot act.
    let auth = format!("Bearer {VIEWER}");
    let (status, _) = http(
        s.port,
        "GET",
        "/api/v1/overview",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let body = format!(r#"{{"stream":"{}","ids":["{id}"]}}"#, s.dead());
    let (status, _) = http(
        s.port,
        "POST",
        "/api/v1/dead/purge",
        &[("Authorization", &auth)],
        Some(&body),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = http(s.port, "GET", "/api/v1/overview", &[], None).await;
    assert_eq!(status, 401);
    assert!(
        s.console.log_contents().contains("action refused"),
        "{}",
        s.console.log_contents()
    );
}

#[tokio::test]
async fn dead_letter_whose_field_holds_script_is_shown_as_text() {
    let s = Setup::start(false).await;
    // Short enough to be shown whole in the list (values are clipped at 80).
    let evil = "<script>document.title='pwned'</script><img src=x onerror=document.title=1>";
    let id = s
        .dead_letter(
            &s.stream,
            "<b>bold</b> reason",
            &[("note", evil), ("<i>field</i>", "x")],
        )
        .await;
    let b = Browser::start().await;
    for path in [
        format!("/dead?stream={}", s.dead()),
        format!("/dead/entry?stream={}&id={id}", s.dead()),
    ] {
        b.goto(&s.url(&path)).await;
        wait_for(SHOWN, "dead letter shown", || async {
            b.text("table.entries").await.is_some()
        })
        .await;
        let texts = b
            .eval(
                "Array.from(document.querySelectorAll('.v, pre, .reason')).map(e => e.textContent)",
            )
            .await;
        let texts: Vec<String> = serde_json::from_value(texts).unwrap();
        assert!(
            texts.iter().any(|t| t == evil),
            "the value as text on {path}: {texts:?}"
        );
        assert!(texts.iter().any(|t| t == "<b>bold</b> reason"), "{texts:?}");
        assert_eq!(
            b.eval("document.scripts.length").await,
            serde_json::json!(1),
            "only console.js on {path}"
        );
        assert_eq!(
            b.eval("document.querySelectorAll('img, b, i').length")
                .await,
            serde_json::json!(0)
        );
        let title = b.eval("document.title").await;
        assert!(title != "pwned" && title != "1", "{title}");
    }
    b.close().await;
}

#[tokio::test]
async fn bulk_replay_of_a_filter_is_counted_first_and_runs_in_windows() {
    let s = Setup::start(true).await;
    let auth = format!("Bearer {OPERATOR}");
    // 12,000 dead letters (more than one 10,000-entry window), every
    // third one with task_for=report.
    let n = 12_000;
    let mut i = 0;
    while i < n {
        let pipeline = s.rc.pipeline();
        for j in i..(i + 2000).min(n) {
            let task = if j % 3 == 0 { "report" } else { "sum" };
            let args: Vec<Value> = vec![
                s.dead().into(),
                "*".into(),
                "sluice.stream".into(),
                s.stream.as_str().into(),
                "sluice.reason".into(),
                "handler failed".into(),
                "rec_id".into(),
                j.to_string().into(),
                "task_for".into(),
                task.into(),
            ];
            let _: () = pipeline
                .custom(
                    fred::types::CustomCommand::new_static(
                        "XADD",
                        fred::types::ClusterHash::FirstKey,
                        false,
                    ),
                    args,
                )
                .await
                .unwrap();
        }
        let _: Vec<Value> = pipeline.all().await.unwrap();
        i += 2000;
    }
    let filter = format!(r#""stream":"{}","where":["task_for=report"]"#, s.dead());

    // Without the preview's `until`, the action is refused, naming it.
    let (status, body) = http(
        s.port,
        "POST",
        "/api/v1/dead/replay",
        &[("Authorization", &auth)],
        Some(&format!("{{{filter}}}")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["field"], "until");

    let (matched, windows, until) = bulk_windows(
        s.port,
        &auth,
        "preview",
        &filter,
        serde_json::Value::Null,
        "matched",
    )
    .await;
    assert_eq!((matched, windows), (4000, 2));
    assert_eq!(
        xlen(&s.rc, &s.dead()).await,
        n as u64,
        "a preview changes nothing"
    );
    let (done, windows, _) = bulk_windows(s.port, &auth, "replay", &filter, until, "done").await;
    assert_eq!((done, windows), (4000, 2));
    assert_eq!(xlen(&s.rc, &s.stream).await, 4000);
    assert_eq!(xlen(&s.rc, &s.dead()).await, 8000);
    let back = entries(&s.rc, &s.stream).await;
    assert!(back.iter().all(
        |(_, f)| field(f, "task_for") == Some("report") && field(f, "sluice.reason").is_none()
    ));
    assert!(
        s.console.log_contents().contains("action=\"replay\"")
            || s.console.log_contents().contains("action=replay"),
        "{}",
        s.console.log_contents()
    );
}

#[tokio::test]
async fn api_answers_bad_requests_with_400_naming_the_field() {
    let s = Setup::start(true).await;
    let auth = format!("Bearer {OPERATOR}");
    let h = [("Authorization", auth.as_str())];
    let dead = s.dead();
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        (
            "GET",
            format!("/api/v1/streams/entries?stream={}&count=0", s.stream),
            None,
            "count",
        ),
        (
            "GET",
            format!("/api/v1/streams/entries?stream={}&from=abc", s.stream),
            None,
            "from",
        ),
        (
            "GET",
            format!("/api/v1/streams/entries?stream={}&since=soon", s.stream),
            None,
            "since",
        ),
        (
            "GET",
            format!("/api/v1/streams/entries?stream={}&where=novalue", s.stream),
            None,
            "where",
        ),
        ("GET", "/api/v1/streams/entries".into(), None, "stream"),
        (
            "GET",
            format!("/api/v1/dead/entry?stream={dead}&id=x"),
            None,
            "id",
        ),
        (
            "POST",
            "/api/v1/dead/replay".into(),
            Some(format!(r#"{{"stream":"{dead}","ids":["1-x"]}}"#)),
            "ids",
        ),
        (
            "POST",
            "/api/v1/dead/purge".into(),
            Some(format!(r#"{{"stream":"{dead}","cursor":5}}"#)),
            "cursor",
        ),
        (
            "POST",
            "/api/v1/dead/purge".into(),
            Some(format!(r#"{{"stream":"{dead}","colour":"red"}}"#)),
            "colour",
        ),
        (
            "POST",
            "/api/v1/schedules".into(),
            Some(r#"{"name":"n1","cron":"61 * * * * *","stream":"s"}"#.into()),
            "cron",
        ),
        (
            "POST",
            "/api/v1/schedules".into(),
            Some(r#"{"name":"n2","every":"soon","stream":"s"}"#.into()),
            "every",
        ),
        (
            "POST",
            "/api/v1/schedules".into(),
            Some(r#"{"name":"n3","at":"2001-01-01T00:00:00Z","stream":"s"}"#.into()),
            "at",
        ),
        (
            "POST",
            "/api/v1/schedules/n4/explode".into(),
            None,
            "action",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, answer) = http(s.port, method, &path, &h, body.as_deref()).await;
        assert_eq!(status, 400, "{method} {path}: {answer}");
        assert_eq!(json(&answer)["field"], field, "{method} {path}: {answer}");
    }
    // Unknown names are 404, not 400.
    let (status, _) = http(s.port, "POST", "/api/v1/schedules/nope/pause", &h, None).await;
    assert_eq!(status, 404);

    // The schedule API covers what the original scheduler's HTTP control
    // did: add, list with status and next run time, pause, resume, remove.
    let add = format!(
        r#"{{"name":"aps","every":"1h","stream":"{}","fields":{{"task_for":"report"}}}}"#,
        s.stream
    );
    let (status, answer) = http(s.port, "POST", "/api/v1/schedules", &h, Some(&add)).await;
    assert_eq!(status, 201, "{answer}");
    for (action, state) in [("pause", "paused"), ("resume", "running")] {
        let (status, answer) = http(
            s.port,
            "POST",
            &format!("/api/v1/schedules/aps/{action}"),
            &h,
            None,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let (_, one) = http(s.port, "GET", "/api/v1/schedules/aps", &h, None).await;
        let one = json(&one);
        assert_eq!(one["state"], state, "{one}");
        assert!(
            one["next_run_time"].is_string() == (state == "running"),
            "{one}"
        );
    }
    let (status, answer) = http(s.port, "POST", "/api/v1/schedules/aps/trigger", &h, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(xlen(&s.rc, &s.stream).await, 1);
    let (status, _) = http(s.port, "DELETE", "/api/v1/schedules/aps", &h, None).await;
    assert_eq!(status, 200);
    let (_, list) = http(s.port, "GET", "/api/v1/schedules", &h, None).await;
    assert_eq!(
        json(&list),
        serde_json::json!([]),
        "removed ones are not listed"
    );
}

#[tokio::test]
async fn sluice_run_serves_the_console_when_listen_is_set_and_sluice_tap_prints_matches() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let port = free_port();
    let config = crate::schedule::redis_only_config(
        &redis.url(),
        &format!("[console]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let w = Worker::spawn(&config);
    wait_for(secs(30), "console inside sluice run", || port_open(port)).await;
    let (status, body) = http(port, "GET", "/api/v1/overview", &[], None).await;
    assert_eq!(status, 200, "{body}");
    drop(w);

    // `sluice tap`: only new entries, only those matching, as JSON lines.
    let stream = unique_name("tapped");
    xadd(&rc, &stream, &[("task_for", "report"), ("old", "yes")]).await;
    let cli = Cli::new(&config);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args([
        "tap",
        &stream,
        "--where",
        "task_for=report",
        "--json",
        "--count",
        "1",
        "--config",
    ])
    .arg(cli.config_path())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("sluice tap");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output());
    // Add until the tap has certainly opened (it prints nothing for these
    // before it does); each round adds a non-matching and a matching entry.
    let mut added = Vec::new();
    let waited = tokio::time::timeout(secs(30), async {
        loop {
            xadd(&rc, &stream, &[("task_for", "sum")]).await;
            added.push(
                xadd(
                    &rc,
                    &stream,
                    &[("task_for", "report"), ("n", &added.len().to_string())],
                )
                .await,
            );
            if out.is_finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "sluice tap did not print a match within 30 s"
    );
    let out = out.await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = json(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        added.contains(&line["id"].as_str().unwrap().to_string()),
        "{line}"
    );
    assert_eq!(
        line["fields"][0],
        serde_json::json!(["task_for", "report"]),
        "{line}"
    );
}

#[tokio::test]
async fn overview_marks_a_flow_stuck_on_a_missing_table_and_shows_endpoints() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("stuck"), unique_name("stuck"));
    let config = format!(
        "{}[console]\nsample_every = \"300ms\"\n",
        s.config(&s.ch.url(), "land", &stream, &table, "")
    );
    let port = free_port();
    let _console = Worker::spawn_command(
        "console",
        &config,
        &["--listen", &format!("127.0.0.1:{port}")],
        &[],
    );
    wait_for(secs(30), "console listening", || port_open(port)).await;
    let overview = || async {
        let (status, body) = http(port, "GET", "/api/v1/overview", &[], None).await;
        assert_eq!(status, 200, "{body}");
        json(&body)
    };
    wait_for(SHOWN, "flow marked stuck", || async {
        let o = overview().await;
        o["flows"][0]["stuck"]
            .as_str()
            .is_some_and(|e| e.contains(&table))
            && o["endpoints"][0]["up"] == true
    })
    .await;
    s.ch.exec(&format!(
        "CREATE TABLE {table} (rec_id UInt64) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    wait_for(SHOWN, "stuck cleared once the table exists", || async {
        let o = overview().await;
        o["flows"][0]["stuck"].is_null() && o["taken_at_ms"].as_u64().unwrap_or(0) > 0
    })
    .await;
}

#[tokio::test]
async fn open_pages_share_the_one_sampler_and_send_redis_nothing() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let stream = unique_name("shared");
    xadd(&rc, &stream, &[("k", "v")]).await;
    let config = format!(
        "[redis]\nurl = \"{}\"\n[[flow]]\nname = \"f\"\nstreams = [\"{stream}\"]\nsink = {{ type = \"stream\", to = \"elsewhere\" }}\n\
         [console]\nsample_every = \"1h\"\nretention = \"1h\"\n",
        redis.url()
    );
    let port = free_port();
    let _console = Worker::spawn_command(
        "console",
        &config,
        &["--listen", &format!("127.0.0.1:{port}")],
        &[],
    );
    wait_for(secs(30), "console listening", || port_open(port)).await;
    wait_for(SHOWN, "the first sample", || async {
        let (_, body) = http(port, "GET", "/api/v1/overview", &[], None).await;
        json(&body)["taken_at_ms"].as_u64().unwrap_or(0) > 0
    })
    .await;
    raw(&rc, "CONFIG", vec!["RESETSTAT".into()]).await;
    for _ in 0..10 {
        for path in ["/", "/?fragment=1", "/api/v1/overview", "/api/v1/delayed"] {
            let (status, body) = http(port, "GET", path, &[], None).await;
            assert_eq!(status, 200, "{path}: {body}");
        }
    }
    let stats = raw(&rc, "INFO", vec!["commandstats".into()])
        .await
        .as_string()
        .expect("INFO commandstats text");
    let stream_commands: Vec<&str> = stats
        .lines()
        .filter(|l| {
            ["cmdstat_x", "cmdstat_z", "cmdstat_smembers"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert!(
        stream_commands.is_empty(),
        "40 page loads sent Redis: {stream_commands:?}"
    );
}

#[tokio::test]
async fn delayed_jobs_are_counted_peeked_and_moved_now_and_missed_ticks_counted() {
    let s = Setup::start(true).await;
    let auth = format!("Bearer {OPERATOR}");
    let h = [("Authorization", auth.as_str())];
    let far = sluice::testing::now_ms() + 3_600_000;
    for i in 0..3u64 {
        sluice::testing::delayed::enqueue_at(
            &s.rc,
            &s.stream,
            vec![
                ("job".into(), i.to_string().into()),
                ("note".into(), "<later>".into()),
            ],
            far + i * 1000,
        )
        .await
        .unwrap();
    }
    wait_for(SHOWN, "delayed jobs counted", || async {
        let (_, body) = http(s.port, "GET", "/api/v1/delayed", &h, None).await;
        json(&body)
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["stream"] == s.stream.as_str() && d["count"] == 3 && d["next_due_ms"] == far)
    })
    .await;
    let (status, body) = http(
        s.port,
        "GET",
        &format!("/api/v1/delayed/peek?stream={}&count=2", s.stream),
        &h,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let peek = json(&body);
    assert_eq!(peek.as_array().unwrap().len(), 2, "{peek}");
    assert_eq!(
        peek[0]["fields"],
        serde_json::json!([["job", "0"], ["note", "<later>"]]),
        "{peek}"
    );
    let job = peek[1]["job_id"].as_str().unwrap();
    let (status, body) = http(
        s.port,
        "POST",
        "/api/v1/delayed/move",
        &h,
        Some(&format!(r#"{{"stream":"{}","job_id":"{job}"}}"#, s.stream)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let moved = entries(&s.rc, &s.stream).await;
    assert_eq!(moved.len(), 1);
    assert_eq!(
        field(&moved[0].1, "job"),
        Some("1"),
        "the job asked for, not the earliest"
    );
    let left: u64 =
        s.rc.zcard(sluice::testing::delayed::set_key(&s.stream))
            .await
            .unwrap();
    assert_eq!(left, 2);
    let (status, _) = http(
        s.port,
        "POST",
        "/api/v1/delayed/move",
        &h,
        Some(&format!(r#"{{"stream":"{}","job_id":"{job}"}}"#, s.stream)),
    )
    .await;
    assert_eq!(status, 404, "moved already");

    // A running schedule nobody fires (no worker runs): its ticks pile up
    // as missed.
    let cli = Cli::new(&s.config);
    cli.ok(&[
        "schedule", "add", "every1s", "--every", "1s", "--stream", &s.stream,
    ]);
    let key = "sluice:schedule:{every1s}";
    let ten_ago = (sluice::testing::now_ms() - 10_000).to_string();
    raw(
        &s.rc,
        "HSET",
        vec![
            key.into(),
            "state".into(),
            "running".into(),
            "last_tick".into(),
            ten_ago.as_str().into(),
        ],
    )
    .await;
    let (_, body) = http(s.port, "GET", "/api/v1/schedules/every1s", &h, None).await;
    let missed = json(&body)["missed_ticks"].as_u64().unwrap();
    assert!(
        (3..=6).contains(&missed),
        "ticks of the 10 s behind, less the 5 s grace: {missed}"
    );
}

/// Waits for the page's `confirm()` dialog, checks its text, accepts it.
async fn accept_confirm(b: &Browser, expect: &str) {
    wait_for(SHOWN, "a confirm dialog", || async {
        b.client.get_alert_text().await.is_ok()
    })
    .await;
    let text = b.client.get_alert_text().await.expect("the dialog's text");
    assert!(text.contains(expect), "{text:?} should say {expect:?}");
    b.client.accept_alert().await.expect("accept the dialog");
}

#[tokio::test]
async fn dead_letters_replayed_by_filter_and_purged_by_selection_in_the_browser() {
    let s = Setup::start(false).await;
    for i in 0..6 {
        let task = if i % 2 == 0 { "report" } else { "sum" };
        s.dead_letter(
            &s.stream,
            "handler failed",
            &[("rec_id", &i.to_string()), ("task_for", task)],
        )
        .await;
    }
    let b = Browser::start().await;
    b.goto(&s.url(&format!(
        "/dead?stream={}&where=task_for%3Dreport",
        s.dead()
    )))
    .await;
    wait_for(SHOWN, "filtered list", || async {
        b.eval("document.querySelectorAll('table.entries tbody tr').length")
            .await
            == serde_json::json!(3)
    })
    .await;
    b.click("button[data-action=dead-bulk][data-op=replay]")
        .await;
    accept_confirm(&b, "Replay 3 dead letter(s) matching the filter").await;
    wait_for(SHOWN, "the three replayed", || async {
        xlen(&s.rc, &s.dead()).await == 3
    })
    .await;
    let back = entries(&s.rc, &s.stream).await;
    assert_eq!(back.len(), 3);
    assert!(
        back.iter()
            .all(|(_, f)| field(f, "task_for") == Some("report")),
        "{back:?}"
    );

    b.goto(&s.url(&format!("/dead?stream={}", s.dead()))).await;
    wait_for(SHOWN, "the rest listed", || async {
        b.eval("document.querySelectorAll('input[name=sel]').length")
            .await
            == serde_json::json!(3)
    })
    .await;
    b.eval("(() => { const boxes = document.querySelectorAll('input[name=sel]'); boxes[0].click(); boxes[1].click(); return 1; })()").await;
    b.click("button[data-action=dead-selected][data-op=purge]")
        .await;
    accept_confirm(&b, "Delete 2 selected").await;
    wait_for(SHOWN, "two purged", || async {
        xlen(&s.rc, &s.dead()).await == 1
    })
    .await;
    assert_eq!(
        xlen(&s.rc, &s.stream).await,
        3,
        "purge adds nothing anywhere"
    );
    b.close().await;
}
