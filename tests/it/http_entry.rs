//! The HTTP entry against a real Redis, through the `sluice` binary: every
//! refusal answers its status and leaves the stream unchanged; accepted
//! requests land whole; stream state, health and readiness.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::common::*;
use crate::harness::{free_port, port_open, unique_name, wait_for, RedisServer, Worker};

pub const TOKEN: &str = "tok-producer-0123456789";
pub const OTHER_TOKEN: &str = "tok-other-0123456789abc";

/// One HTTP exchange's result.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `method url` with an optional bearer token and body.
pub async fn request(method: &str, url: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Resp {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = axum::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = tokio::time::timeout(LONG, client.request(req))
        .await
        .expect("HTTP request timed out")
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// POSTs `items` (any JSON) to the stream's messages endpoint.
pub async fn post(base: &str, stream: &str, token: Option<&str>, items: &Value) -> Resp {
    post_raw(base, stream, token, serde_json::to_vec(items).unwrap()).await
}

pub async fn post_raw(base: &str, stream: &str, token: Option<&str>, body: Vec<u8>) -> Resp {
    request(
        "POST",
        &format!("{base}/v1/streams/{stream}/messages"),
        token,
        Some(body),
    )
    .await
}

/// The `[http]` section used by these tests: `TOKEN` may use `streams`.
pub fn http_section(port: u16, streams: &[&str]) -> String {
    let list = streams
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[http]
listen = "127.0.0.1:{port}"
body_limit = "2KiB"
max_items = 50
retry_after = "2s"
[[http.tokens]]
token = "{TOKEN}"
streams = [{list}]
[[http.tokens]]
token = "{OTHER_TOKEN}"
streams = ["nothing-here"]
"#
    )
}

struct Entry {
    redis: RedisServer,
    rc: fred::prelude::Client,
    worker: Worker,
    base: String,
    stream: String,
}

async fn entry() -> Entry {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let stream = unique_name("entry");
    let port = free_port();
    let config = format!(
        r#"
[redis]
url = "{}"
[streams."{stream}"]
max_len = 10
{}
"#,
        redis.url(),
        http_section(port, &[&stream, "wrongtype*"])
    );
    let worker = Worker::spawn(&config);
    wait_for(LONG, "HTTP entry listening", || async {
        port_open(port).await
    })
    .await;
    Entry {
        redis,
        rc,
        worker,
        base: format!("http://127.0.0.1:{port}"),
        stream,
    }
}

/// (token, body, expected status, `item` and `field` of the error body).
type Case = (
    Option<&'static str>,
    Vec<u8>,
    u16,
    Option<u64>,
    Option<&'static str>,
);

#[tokio::test]
async fn every_refusal_leaves_the_stream_unchanged() {
    let e = entry().await;
    let (base, stream) = (e.base.as_str(), e.stream.as_str());
    // Two entries already there.
    let ok = post(base, stream, Some(TOKEN), &json!([{"n": 1}, {"n": 2}])).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let before = entries(&e.rc, stream).await;
    assert_eq!(before.len(), 2);

    let big = format!(r#"[{{"data": "{}"}}]"#, "x".repeat(3000)).into_bytes();
    let many = serde_json::to_vec(&vec![json!({"a": 1}); 51]).unwrap();
    let cases: Vec<Case> = vec![
        (None, br#"[{"a":1}]"#.to_vec(), 401, None, None),
        (
            Some("tok-wrong-0123456789xyz"),
            br#"[{"a":1}]"#.to_vec(),
            401,
            None,
            None,
        ),
        (Some(OTHER_TOKEN), br#"[{"a":1}]"#.to_vec(), 403, None, None),
        (Some(TOKEN), br#"[{"a":1}"#.to_vec(), 400, None, None),
        (Some(TOKEN), br#"{"a":1}"#.to_vec(), 400, None, None),
        (Some(TOKEN), br#"[{"a":1}, 7]"#.to_vec(), 400, Some(1), None),
        (
            Some(TOKEN),
            br#"[{"a":1}, {"a":2}, {"a":3, "data": {"x": 1}}]"#.to_vec(),
            400,
            Some(2),
            Some("data"),
        ),
        (
            Some(TOKEN),
            br#"[{"a":1}, {"tags": ["x"]}]"#.to_vec(),
            400,
            Some(1),
            Some("tags"),
        ),
        (Some(TOKEN), br#"[{"":1}]"#.to_vec(), 400, Some(0), Some("")),
        (
            Some(TOKEN),
            b"[{\"a\":1}, {\"bad\\u0007name\":1}]".to_vec(),
            400,
            Some(1),
            Some("bad\u{7}name"),
        ),
        (Some(TOKEN), br#"[{"a":null}]"#.to_vec(), 400, Some(0), None),
        (Some(TOKEN), big, 413, None, None),
        (Some(TOKEN), many, 413, None, None),
    ];
    for (token, body, status, item, field) in cases {
        let text = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let r = post_raw(base, stream, token, body).await;
        assert_eq!(r.status, status, "{text}: {}", r.body);
        let j = r.json();
        assert!(j["error"].as_str().is_some_and(|s| !s.is_empty()), "{j}");
        assert_eq!(j["item"].as_u64(), item, "{text}: {j}");
        assert_eq!(j["field"].as_str(), field, "{text}: {j}");
        if status == 401 {
            assert!(r.headers.contains_key("www-authenticate"));
        }
        assert_eq!(
            entries(&e.rc, stream).await,
            before,
            "{text} changed the stream"
        );
    }

    // Capacity: max_len 10, length 2 → 8 more fit, 9 do not.
    let nine: Vec<Value> = (0..9).map(|i| json!({"i": i})).collect();
    let r = post(base, stream, Some(TOKEN), &json!(nine)).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.headers["retry-after"], "2");
    let j = r.json();
    assert_eq!(
        (j["length"].as_u64(), j["max_len"].as_u64()),
        (Some(2), Some(10))
    );
    assert_eq!(entries(&e.rc, stream).await, before);
    let r = post(base, stream, Some(TOKEN), &json!(nine[..8])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(xlen(&e.rc, stream).await, 10);
    let r = post(base, stream, Some(TOKEN), &json!([{"one": "more"}])).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(xlen(&e.rc, stream).await, 10);

    // A key that is not a stream.
    let key = unique_name("wrongtype");
    raw(&e.rc, "SET", vec![key.as_str().into(), "x".into()]).await;
    let r = post(base, &key, Some(TOKEN), &json!([{"a": 1}])).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(e.worker.log_contents().contains("HTTP entry listening"));
}

#[tokio::test]
async fn accepted_items_land_in_order_with_their_ids() {
    let e = entry().await;
    let (base, stream) = (e.base.as_str(), e.stream.as_str());
    // Raw text: the producer's field order is kept.
    let body = r#"[
        {"rec_id": 1, "task_for": "a", "function_type": "sum", "data": "{\"x\":1}"},
        {"rec_id": 2.5, "ok": true, "gone": null, "text": "quote\" and ünïcode"}
    ]"#;
    let r = post_raw(base, stream, Some(TOKEN), body.as_bytes().to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["stream"], stream);
    let ids: Vec<String> = j["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let got = entries(&e.rc, stream).await;
    assert_eq!(
        got.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        ids
    );
    assert_eq!(
        got[0].1,
        vec![
            ("rec_id".to_string(), "1".to_string()),
            ("task_for".into(), "a".into()),
            ("function_type".into(), "sum".into()),
            ("data".into(), "{\"x\":1}".into()),
        ]
    );
    assert_eq!(field(&got[1].1, "rec_id"), Some("2.5"));
    assert_eq!(field(&got[1].1, "ok"), Some("true"));
    assert_eq!(field(&got[1].1, "gone"), None);
    assert_eq!(field(&got[1].1, "text"), Some("quote\" and ünïcode"));
    // An empty list is accepted and adds nothing.
    let r = post(base, stream, Some(TOKEN), &json!([])).await;
    assert_eq!((r.status, r.json()["ids"].clone()), (200, json!([])));
    assert_eq!(xlen(&e.rc, stream).await, 2);
}

#[tokio::test]
async fn stream_state_health_and_readiness() {
    let mut e = entry().await;
    let (base, stream) = (e.base.clone(), e.stream.clone());
    let r = request(
        "GET",
        &format!("{base}/v1/streams/{stream}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["exists"], false);
    post(
        &base,
        &stream,
        Some(TOKEN),
        &json!([{"a": 1}, {"a": 2}, {"a": 3}]),
    )
    .await;
    raw(
        &e.rc,
        "XGROUP",
        vec![
            "CREATE".into(),
            stream.as_str().into(),
            "g".into(),
            "0".into(),
        ],
    )
    .await;
    raw(
        &e.rc,
        "XREADGROUP",
        vec![
            "GROUP".into(),
            "g".into(),
            "c1".into(),
            "COUNT".into(),
            fred::types::Value::Integer(1),
            "STREAMS".into(),
            stream.as_str().into(),
            ">".into(),
        ],
    )
    .await;
    let r = request(
        "GET",
        &format!("{base}/v1/streams/{stream}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["length"], 3);
    assert_eq!(j["max_len"], 10);
    assert_eq!(j["exists"], true);
    assert_eq!(j["groups"][0]["name"], "g");
    assert_eq!(j["groups"][0]["pending"], 1);
    assert_eq!(j["groups"][0]["consumers"], 1);
    assert_eq!(j["groups"][0]["lag"], 2);
    let r = request(
        "GET",
        &format!("{base}/v1/streams/{stream}"),
        Some(OTHER_TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = request("GET", &format!("{base}/v1/streams/{stream}"), None, None).await;
    assert_eq!(r.status, 401);

    let r = request("GET", &format!("{base}/healthz"), None, None).await;
    assert_eq!(r.status, 200);
    let r = request("GET", &format!("{base}/readyz"), None, None).await;
    assert_eq!(r.status, 200);
    e.redis.stop().await;
    wait_for(LONG, "readyz reports Redis down", || async {
        request("GET", &format!("{base}/readyz"), None, None)
            .await
            .status
            == 503
    })
    .await;
    let r = request("GET", &format!("{base}/healthz"), None, None).await;
    assert_eq!(r.status, 200, "alive while Redis is down");
    e.redis.start_again().await;
    wait_for(LONG, "readyz recovers", || async {
        request("GET", &format!("{base}/readyz"), None, None)
            .await
            .status
            == 200
    })
    .await;
}

/// Concurrent requests share round trips to Redis (group commit): each
/// must still get its own entries' ids, land whole or not at all, and a
/// capped stream must end at most at its cap with exactly the accepted
/// items in it.
#[tokio::test]
async fn concurrent_requests_get_their_own_ids_and_never_pass_the_cap() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (capped, open) = (unique_name("grp_capped"), unique_name("grp_open"));
    let port = free_port();
    let config = format!(
        "[redis]\nurl = \"{}\"\n[streams.\"{capped}\"]\nmax_len = 25\n{}",
        redis.url(),
        http_section(port, &[&capped, &open])
    );
    let _worker = Worker::spawn(&config);
    wait_for(LONG, "HTTP entry listening", || async {
        port_open(port).await
    })
    .await;
    let base = format!("http://127.0.0.1:{port}");
    // 60 requests at once per stream: one, two or three items each, every
    // item tagged with its request and position.
    let body = |r: usize| {
        let items: Vec<Value> = (0..1 + r % 3)
            .map(|i| json!({ "req": r, "i": i }))
            .collect();
        Value::Array(items)
    };
    for stream in [&open, &capped] {
        let answers = futures_util::future::join_all((0..60).map(|r| {
            let (base, stream, items) = (base.clone(), stream.clone(), body(r));
            async move { (r, post(&base, &stream, Some(TOKEN), &items).await) }
        }))
        .await;
        let got = entries(&rc, stream).await;
        let by_id: std::collections::HashMap<&str, &Vec<(String, String)>> =
            got.iter().map(|(id, f)| (id.as_str(), f)).collect();
        let mut accepted = 0;
        for (r, resp) in &answers {
            match resp.status {
                200 => {
                    let ids = resp.json()["ids"].as_array().unwrap().clone();
                    assert_eq!(ids.len(), 1 + r % 3, "request {r}: {}", resp.body);
                    for (i, id) in ids.iter().enumerate() {
                        let fields = by_id
                            .get(id.as_str().unwrap())
                            .unwrap_or_else(|| panic!("request {r}: id {id} not in the stream"));
                        assert_eq!(field(fields, "req"), Some(r.to_string().as_str()));
                        assert_eq!(field(fields, "i"), Some(i.to_string().as_str()));
                    }
                    accepted += ids.len();
                }
                429 => {
                    assert_eq!(stream, &capped, "only the capped stream refuses");
                    assert!(
                        !got.iter()
                            .any(|(_, f)| field(f, "req") == Some(r.to_string().as_str())),
                        "refused request {r} left items behind"
                    );
                }
                s => panic!("request {r}: status {s}: {}", resp.body),
            }
        }
        assert_eq!(accepted, got.len(), "{stream}: accepted items = entries");
        if stream == &open {
            assert_eq!(accepted, (0..60).map(|r| 1 + r % 3).sum::<usize>());
        } else {
            assert!(got.len() <= 25, "passed max_len: {}", got.len());
            // 120 items asked for 25 places: refusals stop only requests
            // that do not fit, so the stream ends within 2 of its cap.
            assert!(got.len() >= 23, "refused with room left: {}", got.len());
        }
    }
}

/// Groups for two streams at once (one goes on the direct connection, the
/// other through fred while that is busy), and the append script flushed
/// from Redis's cache between two rounds: every multi-item request lands
/// whole, with the ids it was answered.
#[tokio::test]
async fn two_streams_at_once_and_a_flushed_script_land_every_request() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (a, b) = (unique_name("two_a"), unique_name("two_b"));
    let port = free_port();
    let config = format!(
        "[redis]\nurl = \"{}\"\n{}",
        redis.url(),
        http_section(port, &[&a, &b])
    );
    let _worker = Worker::spawn(&config);
    wait_for(LONG, "HTTP entry listening", || async {
        port_open(port).await
    })
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let mut answered = Vec::new();
    for round in 0..2 {
        if round == 1 {
            raw(&rc, "SCRIPT", vec!["FLUSH".into()]).await;
        }
        let answers = futures_util::future::join_all((0..40).map(|r| {
            let stream = if r % 2 == 0 { a.clone() } else { b.clone() };
            let items =
                json!([{ "round": round, "req": r, "i": 0 }, { "round": round, "req": r, "i": 1 }]);
            let base = base.clone();
            async move {
                (
                    stream.clone(),
                    round,
                    r,
                    post(&base, &stream, Some(TOKEN), &items).await,
                )
            }
        }))
        .await;
        answered.extend(answers);
    }
    for stream in [&a, &b] {
        let got = entries(&rc, stream).await;
        assert_eq!(
            got.len(),
            2 * 40,
            "{stream}: 2 rounds × 20 requests × 2 items"
        );
        let by_id: std::collections::HashMap<&str, &Vec<(String, String)>> =
            got.iter().map(|(id, f)| (id.as_str(), f)).collect();
        for (_, round, r, resp) in answered.iter().filter(|(s, ..)| s == stream) {
            assert_eq!(
                resp.status, 200,
                "round {round}, request {r}: {}",
                resp.body
            );
            let ids = resp.json()["ids"].as_array().unwrap().clone();
            assert_eq!(ids.len(), 2, "round {round}, request {r}: {}", resp.body);
            for (i, id) in ids.iter().enumerate() {
                let fields = by_id[id.as_str().unwrap()];
                assert_eq!(field(fields, "round"), Some(round.to_string().as_str()));
                assert_eq!(field(fields, "req"), Some(r.to_string().as_str()));
                assert_eq!(field(fields, "i"), Some(i.to_string().as_str()));
            }
        }
    }
}
