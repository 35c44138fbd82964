//! The console's answer time on a big stream: a private Redis holding a
//! stream of 1,000,000 seed-shaped entries with 100,000 of them pending
//! (10 consumers) and 100,000 dead letters, `sluice console` on loopback
//! with its sampler running every second, and each page / API call asked
//! for repeatedly over HTTP. Prints p50 / p99 / max per request (whole
//! answer read) and the sampler's own time per sample.
//!
//! `cargo bench --bench console`; knobs: `SLUICE_BENCH_N` (stream length,
//! default 1,000,000), `SLUICE_BENCH_PENDING` (default 100,000),
//! `SLUICE_BENCH_REQUESTS` (per request kind, default 50).

mod common;
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::time::{Duration, Instant};

use common::{cmd, enqueue, env_usize, under_cargo_bench};
use fred::prelude::*;
use fred::types::Value;
use harness::{free_port, port_open, wait_for, RedisServer, Worker};

/// GET `path`; returns (status, body length, time to the last byte).
async fn get(port: u16, path: &str) -> (u16, usize, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let took = started.elapsed();
    let status = std::str::from_utf8(&out[..out.len().min(16)])
        .ok()
        .and_then(|t| t.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out.len(), took)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    if !under_cargo_bench("console") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let n = env_usize("SLUICE_BENCH_N", 1_000_000);
        let pending = env_usize("SLUICE_BENCH_PENDING", 100_000);
        let requests = env_usize("SLUICE_BENCH_REQUESTS", 50);
        let redis = RedisServer::start().await;
        let rc = redis.client().await;
        let stream = "bench.jobs";
        let dead = "bench.jobs:dead";

        let t = Instant::now();
        enqueue(&rc, &[stream], 0, n).await;
        let _: Value = rc
            .custom(cmd("XGROUP", stream), vec!["CREATE", stream, "g", "0"])
            .await
            .unwrap();
        // Pending: read by 10 consumers, never acked.
        let mut read = 0;
        let mut c = 0;
        while read < pending {
            let take = (pending - read).min(10_000);
            let consumer = format!("worker-{}", c % 10);
            let _: Value = rc
                .custom(
                    cmd("XREADGROUP", stream),
                    vec![
                        "GROUP".to_string(), "g".into(), consumer, "COUNT".into(), take.to_string(),
                        "STREAMS".into(), stream.into(), ">".into(),
                    ],
                )
                .await
                .unwrap();
            read += take;
            c += 1;
        }
        // Dead letters: 100,000, seed-shaped with the bookkeeping fields.
        let mut i = 0;
        while i < 100_000 {
            let pipeline = rc.pipeline();
            for j in i..i + 5000 {
                let args: Vec<Value> = vec![
                    dead.into(), "*".into(),
                    "sluice.id".into(), "1-0".into(),
                    "sluice.stream".into(), stream.into(),
                    "sluice.group".into(), "g".into(),
                    "sluice.deliveries".into(), "5".into(),
                    "sluice.reason".into(), if j % 10 == 0 { "handler timed out" } else { "column `rec_id` (UInt64): cannot convert" }.into(),
                    "rec_id".into(), j.to_string().into(),
                    "task_for".into(), ["a", "b", "c"][j % 3].into(),
                ];
                let _: Value = pipeline.custom(cmd("XADD", dead), args).await.unwrap();
            }
            let _: Vec<Value> = pipeline.all().await.unwrap();
            i += 5000;
        }
        eprintln!("filled {n} entries, {pending} pending, 100000 dead letters in {:.1}s", t.elapsed().as_secs_f64());

        let port = free_port();
        let config = format!(
            r#"[redis]
url = "{}"
[[flow]]
name = "bench"
streams = ["{stream}"]
group = "g"
sink = {{ type = "stream", to = "bench.out" }}
dead_letter = "{dead}"
[console]
sample_every = "1s"
"#,
            redis.url()
        );
        let _console = Worker::spawn_command("console", &config, &["--listen", &format!("127.0.0.1:{port}")], &[]);
        wait_for(Duration::from_secs(30), "console listening", || port_open(port)).await;
        wait_for(Duration::from_secs(60), "first sample", || async {
            let (_, len, _) = get(port, "/api/v1/overview").await;
            len > 400
        })
        .await;

        // A deep id to page from: the middle of the stream, by time.
        let end_ms = |command: &'static str, from: &str, to: &str| {
            let rc = rc.clone();
            let (from, to) = (from.to_string(), to.to_string());
            async move {
                let v: Value = rc
                    .custom(cmd(command, stream), vec![stream.to_string(), from, to, "COUNT".into(), "1".into()])
                    .await
                    .unwrap();
                let Value::Array(v) = v else { unreachable!() };
                let Value::Array(e) = &v[0] else { unreachable!() };
                let id = e[0].as_string().unwrap();
                id.split('-').next().unwrap().parse::<u64>().unwrap()
            }
        };
        let first = end_ms("XRANGE", "-", "+").await;
        let last = end_ms("XREVRANGE", "+", "-").await;
        let mid_id = format!("{}-0", (first + last) / 2);
        let kinds: Vec<(&str, String)> = vec![
            ("overview page", "/".into()),
            ("overview API", "/api/v1/overview".into()),
            ("stream page (newest 50, pending 50, consumers)", format!("/stream?name={stream}")),
            ("stream page, oldest after an id", format!("/stream?name={stream}&order=oldest&after={mid_id}")),
            ("stream page, time range", format!("/stream?name={stream}&since=0&until=4102444800000&order=oldest")),
            ("stream page, field filter (no match: 10k scanned)", format!("/stream?name={stream}&where=task_for%3Dnone")),
            ("pending API, 50 after an id", format!("/api/v1/streams/pending?stream={stream}&group=g&after={mid_id}")),
            ("dead-letter page", format!("/dead?stream={dead}")),
            ("dead-letter page, reason filter", format!("/dead?stream={dead}&reason=timed")),
        ];
        println!("\nsluice console bench: stream of {n} entries, {pending} pending (10 consumers), 100,000 dead letters; {requests} requests each");
        println!("{:<52} {:>9} {:>9} {:>9} {:>10}", "request", "p50 ms", "p99 ms", "max ms", "bytes");
        for (label, path) in &kinds {
            let mut times = Vec::with_capacity(requests);
            let mut bytes = 0;
            for _ in 0..requests {
                let (status, len, took) = get(port, path).await;
                assert_eq!(status, 200, "{path}");
                bytes = len;
                times.push(took);
            }
            times.sort();
            println!(
                "{:<52} {:>9.1} {:>9.1} {:>9.1} {:>10}",
                label,
                quantile(&times, 0.5).as_secs_f64() * 1e3,
                quantile(&times, 0.99).as_secs_f64() * 1e3,
                times.last().unwrap().as_secs_f64() * 1e3,
                bytes
            );
        }
        let (_, _, _) = get(port, "/api/v1/overview").await;
        let body = {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(format!("GET /api/v1/overview HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let json: serde_json::Value = serde_json::from_str(body.split_once("\r\n\r\n").unwrap().1).unwrap();
        println!(
            "sampler: one sample of the flow (lag counted within its 20,000-entry bound) took {} ms; lag {} ({}), pending {}",
            json["took_ms"], json["flows"][0]["streams"][0]["lag"],
            if json["flows"][0]["streams"][0]["lag_exact"] == true { "exact" } else { "estimate" },
            json["flows"][0]["streams"][0]["pending"]
        );
    });
}
