//! Dataflow benchmarks against a private Redis, with the `sluice` binary:
//!
//! 1. stream→stream forwarding: a backlog of seed-shaped 4-field jobs moved
//!    by one worker (XREADGROUP → XADD to the target(s) → XACK), plain,
//!    routed by `task_for` through a template to three streams, and to one
//!    target with a `max_len` (never reached: the cost of adding through
//!    the capacity script, `sink::stream::ADD_UNDER_CAP`);
//! 2. the HTTP entry: a loopback load generator (keep-alive HTTP/1.1
//!    connections, each with one request in flight) POSTs JSON arrays of
//!    seed-shaped items for a few seconds; requests/s, items/s, latency.
//!
//! Everything shares the machine's cores (Redis, the worker, the load
//! generator): the numbers are for this box, not limits of the design.
//! `cargo bench --bench dataflow`; knobs: `SLUICE_BENCH_N` (backlog,
//! default 500,000), `SLUICE_BENCH_SECS` (HTTP phase per size, default 5),
//! `SLUICE_BENCH_CONNS` (HTTP connections, default 32),
//! `SLUICE_BENCH_BASELINE` (path of a `sluice` binary built from an older
//! commit: every run is made with it too, right before this build's, so
//! the two compare within one sitting), `SLUICE_BENCH_REPEAT` (forwarding
//! runs per shape and build, default 1, in rounds so drift hits all alike;
//! medians compared).

mod common;
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cmd, commandstats, enqueue, env_usize, under_cargo_bench};
use fred::prelude::*;
use fred::types::Value;
use harness::{free_port, port_open, wait_for, RedisServer, Worker};

async fn xlen(client: &Client, stream: &str) -> u64 {
    let v: Value = client
        .custom(cmd("XLEN", stream), vec![stream.to_string()])
        .await
        .unwrap();
    v.as_u64().unwrap_or(0)
}

/// User + system CPU seconds `pid` has used so far (`/proc/<pid>/stat`).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, stime the 15th, in clock ticks.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A `sluice` binary to run: this build's, or a baseline's.
struct Build {
    label: &'static str,
    bin: PathBuf,
}

struct Forward {
    build: &'static str,
    label: &'static str,
    rate: f64,
    redis_us: f64,
    /// Redis's user+sys CPU per entry: its commands and its socket work.
    redis_cpu_us: f64,
    worker_us: f64,
    rss_mb: f64,
}

/// The stream sink of a forwarding run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Plain,
    Routed,
    Capped,
}

async fn forward(redis: &RedisServer, build: &Build, n: usize, shape: Shape) -> Forward {
    let routed = shape == Shape::Routed;
    let rc = redis.client().await;
    let src = harness::unique_name("fwd_src");
    let dst = harness::unique_name("fwd_dst");
    enqueue(&rc, &[&src], 0, n).await;
    let _: Value = rc
        .custom(cmd("CONFIG", ""), vec!["RESETSTAT"])
        .await
        .unwrap();
    let sink = match shape {
        Shape::Routed => format!(
            r#"sink = {{ type = "stream", route_by = "task_for", to = "{dst}.{{task_for}}" }}"#
        ),
        Shape::Plain => format!(r#"sink = {{ type = "stream", to = "{dst}" }}"#),
        Shape::Capped => format!(
            r#"sink = {{ type = "stream", to = "{dst}", max_len = {} }}"#,
            n + 1
        ),
    };
    let config = format!(
        r#"[redis]
url = "{}"
[[flow]]
name = "fwd"
streams = ["{src}"]
batch = {{ max_rows = 5000, max_wait = "100ms" }}
{sink}
"#,
        redis.url()
    );
    let redis_cpu = || redis.pid().map(cpu_secs).unwrap_or_default();
    let redis_cpu_before = redis_cpu();
    let started = Instant::now();
    let worker = Worker::spawn_binary(&build.bin, "run", &config, &[], &[]);
    let targets: Vec<String> = if routed {
        ["a", "b", "c"]
            .iter()
            .map(|t| format!("{dst}.{t}"))
            .collect()
    } else {
        vec![dst.clone()]
    };
    wait_for(Duration::from_secs(600), "backlog forwarded", || async {
        let mut total = 0;
        for t in &targets {
            total += xlen(&rc, t).await;
        }
        total >= n as u64
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let redis_cpu_us = (redis_cpu() - redis_cpu_before) * 1e6 / n as f64;
    let stats = commandstats(&rc).await;
    let usec = |c: &str| stats.get(c).map(|s| s.1).unwrap_or(0) as f64;
    // A script's XADDs are counted under `xadd` and in `evalsha` both.
    let redis_us =
        (usec("xreadgroup") + usec("xack") + usec("evalsha").max(usec("xadd"))) / n as f64;
    let rss_mb = worker.peak_rss_kb().unwrap_or(0) as f64 / 1024.0;
    let worker_us = cpu_secs(worker.pid()) * 1e6 / n as f64;
    drop(worker);
    let mut del: Vec<String> = targets;
    del.push(src);
    let _: Value = rc.custom(cmd("DEL", ""), del).await.unwrap();
    Forward {
        build: build.label,
        label: match shape {
            Shape::Routed => "routed by task_for → 3 streams",
            Shape::Plain => "plain → 1 stream",
            Shape::Capped => "capped (max_len) → 1 stream",
        },
        rate: n as f64 / secs,
        redis_us,
        redis_cpu_us,
        worker_us,
        rss_mb,
    }
}

struct Load {
    build: &'static str,
    items_per_request: usize,
    requests: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    refused: u64,
    redis_us: f64,
    worker_us: f64,
}

async fn http_load(
    redis: &RedisServer,
    build: &Build,
    items: usize,
    conns: usize,
    secs: u64,
) -> Load {
    let port = free_port();
    let stream = harness::unique_name("entry");
    let token = "bench-token-0123456789abcdef";
    let config = format!(
        r#"[redis]
url = "{}"
[http]
listen = "127.0.0.1:{port}"
body_limit = "8MiB"
[[http.tokens]]
token = "{token}"
streams = ["{stream}"]
"#,
        redis.url()
    );
    let worker = Worker::spawn_binary(&build.bin, "run", &config, &[], &[]);
    wait_for(Duration::from_secs(30), "entry up", || async {
        port_open(port).await
    })
    .await;
    let rc = redis.client().await;
    let _: Value = rc
        .custom(cmd("CONFIG", ""), vec!["RESETSTAT"])
        .await
        .unwrap();
    let cpu_before = cpu_secs(worker.pid());
    let body: Bytes = {
        let list: Vec<String> = (0..items)
            .map(|j| {
                format!(
                    r#"{{"rec_id":{j},"task_for":"{}","function_type":"sum","data":"{{\"x\":{j}}}"}}"#,
                    ["a", "b", "c"][j % 3]
                )
            })
            .collect();
        Bytes::from(format!("[{}]", list.join(",")))
    };
    // The same request each time, written as bytes: the load generator
    // shares the two cores with the worker and Redis, so it should cost
    // as little per request as it can (a hyper client cost about as much
    // CPU per request as the entry itself).
    let request: Bytes = {
        let mut r = format!(
            "POST /v1/streams/{stream}/messages HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
             authorization: Bearer {token}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        Bytes::from(r)
    };
    let done = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (request, done, refused) = (request.clone(), done.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            // One keep-alive connection per task, one request at a time.
            let mut conn = KeepAlive::open(port).await;
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let status = conn.exchange(&request).await;
                lat.push(t.elapsed());
                if status == 200 {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(worker.pid()) - cpu_before;
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let requests = done.load(Ordering::Relaxed);
    let stats = commandstats(&rc).await;
    let redis_usec: u64 = stats.values().map(|s| s.1).sum();
    assert_eq!(
        xlen(&rc, &stream).await,
        requests * items as u64,
        "every accepted item landed"
    );
    let _: Value = rc.custom(cmd("DEL", ""), vec![stream]).await.unwrap();
    drop(worker);
    let all = (requests + refused.load(Ordering::Relaxed)).max(1) as f64;
    Load {
        build: build.label,
        items_per_request: items,
        requests,
        secs,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        refused: refused.load(Ordering::Relaxed),
        redis_us: redis_usec as f64 / all,
        worker_us: cpu * 1e6 / all,
    }
}

/// A keep-alive HTTP/1.1 connection that sends prepared requests and reads
/// each answer's status line, headers and `content-length` body.
struct KeepAlive {
    socket: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    async fn open(port: u16) -> KeepAlive {
        let socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the entry");
        socket.set_nodelay(true).unwrap();
        KeepAlive {
            socket,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends `request`; the answer's status.
    async fn exchange(&mut self, request: &[u8]) -> u16 {
        use tokio::io::AsyncWriteExt;
        self.socket.write_all(request).await.expect("send");
        self.buf.clear();
        loop {
            if let Some(head) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                let headers = String::from_utf8_lossy(&self.buf[..head]).to_ascii_lowercase();
                let status: u16 = headers[9..12].parse().expect("status code");
                let length: usize = headers
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().expect("content-length"))
                    .unwrap_or(0);
                while self.buf.len() < head + 4 + length {
                    self.read_more().await;
                }
                assert_eq!(self.buf.len(), head + 4 + length, "one answer per request");
                return status;
            }
            self.read_more().await;
        }
    }

    async fn read_more(&mut self) {
        use tokio::io::AsyncReadExt;
        self.buf.reserve(4096);
        let n = self.socket.read_buf(&mut self.buf).await.expect("read");
        assert!(n > 0, "the entry closed the connection");
    }
}

/// The median run (by rate) of each (shape, build), in first-run order.
fn median_forwards(runs: &[Forward]) -> Vec<&Forward> {
    let mut keys: Vec<(&'static str, &'static str)> = Vec::new();
    for f in runs {
        if !keys.contains(&(f.label, f.build)) {
            keys.push((f.label, f.build));
        }
    }
    keys.into_iter()
        .map(|(label, build)| {
            let mut same: Vec<&Forward> = runs
                .iter()
                .filter(|f| f.label == label && f.build == build)
                .collect();
            same.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            same[same.len() / 2]
        })
        .collect()
}

/// Per shape with a baseline: this build's median rate ÷ the baseline's.
fn forward_ratios(runs: &[Forward]) -> Vec<(&'static str, f64)> {
    let medians = median_forwards(runs);
    let baseline = |label: &str| {
        medians
            .iter()
            .find(|f| f.label == label && f.build == "baseline")
            .map(|f| f.rate)
    };
    medians
        .iter()
        .filter(|f| f.build == "this build")
        .filter_map(|f| Some((f.label, f.rate / baseline(f.label)?)))
        .collect()
}

fn main() {
    if !under_cargo_bench("dataflow") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let n = env_usize("SLUICE_BENCH_N", 500_000);
        let secs = env_usize("SLUICE_BENCH_SECS", 5) as u64;
        let conns = env_usize("SLUICE_BENCH_CONNS", 32);
        let mut builds = Vec::new();
        if let Some(bin) = std::env::var_os("SLUICE_BENCH_BASELINE") {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "SLUICE_BENCH_BASELINE: no file {bin:?}");
            builds.push(Build {
                label: "baseline",
                bin,
            });
        }
        builds.push(Build {
            label: "this build",
            bin: Path::new(env!("CARGO_BIN_EXE_sluice")).to_path_buf(),
        });
        // `SLUICE_BENCH_ONLY=http` (or `forward`) runs one half.
        let only = std::env::var("SLUICE_BENCH_ONLY").unwrap_or_default();
        let runs = |half: &str| only.is_empty() || only == half;
        let redis = RedisServer::start().await;
        let repeat = env_usize("SLUICE_BENCH_REPEAT", 1).max(1);
        let mut forwards = Vec::new();
        for _ in 0..repeat {
            for shape in [Shape::Plain, Shape::Routed, Shape::Capped].into_iter().filter(|_| runs("forward")) {
                for build in &builds {
                    forwards.push(forward(&redis, build, n, shape).await);
                }
            }
        }
        let mut loads = Vec::new();
        for items in [1, 100].into_iter().filter(|_| runs("http")) {
            for build in &builds {
                loads.push(http_load(&redis, build, items, conns, secs).await);
            }
        }
        println!("\nsluice dataflow bench (1 worker, 1 Redis, same 2-core box)");
        println!("stream→stream forwarding of {n} seed-shaped 4-field jobs (batch 5,000):");
        println!(
            "  {:<32} {:<22} {:>10} {:>16} {:>9} {:>14} {:>14} {:>16}",
            "run",
            "build",
            "msgs/s",
            "redis µs/entry",
            "of limit",
            "redis CPU µs",
            "worker µs/msg",
            "worker peak RSS"
        );
        let row = |f: &Forward, build: &str| {
            println!(
                "  {:<32} {:<22} {:>10.0} {:>16.2} {:>8.0}% {:>14.2} {:>14.2} {:>12.1} MiB",
                f.label,
                build,
                f.rate,
                f.redis_us,
                100.0 * f.rate * f.redis_us / 1e6,
                f.redis_cpu_us,
                f.worker_us,
                f.rss_mb
            );
        };
        for f in &forwards {
            row(f, f.build);
        }
        if repeat > 1 {
            for f in median_forwards(&forwards) {
                row(f, &format!("{} (median of {repeat})", f.build));
            }
        }
        for (label, ratio) in forward_ratios(&forwards) {
            println!("  {label}: this build ÷ baseline = {ratio:.2}× (medians)");
        }
        println!("  (redis µs/entry: XREADGROUP + XADD (or the capacity script) + XACK, from INFO commandstats; of limit: msgs/s ÷ the rate at which those µs fill Redis; redis CPU and worker µs: user+sys CPU per entry)");
        println!("HTTP entry, {conns} keep-alive connections for {secs}s each:");
        println!(
            "  {:>14} {:<10} {:>11} {:>11} {:>8} {:>8} {:>8} {:>13} {:>13}",
            "items/request",
            "build",
            "requests/s",
            "items/s",
            "p50 ms",
            "p99 ms",
            "non-200",
            "redis µs/req",
            "worker µs/req"
        );
        for l in &loads {
            println!(
                "  {:>14} {:<10} {:>11.0} {:>11.0} {:>8.2} {:>8.2} {:>8} {:>13.2} {:>13.2}",
                l.items_per_request,
                l.build,
                l.requests as f64 / l.secs,
                (l.requests * l.items_per_request as u64) as f64 / l.secs,
                l.p50_ms,
                l.p99_ms,
                l.refused,
                l.redis_us,
                l.worker_us,
            );
        }
    });
}
