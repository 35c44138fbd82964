//! End-to-end benchmark against real servers: one `sluice` worker draining a
//! backlog of seed-shaped 4-field jobs from a private Redis into a private
//! ClickHouse, then a steady-rate phase for latency.
//!
//! For each run it prints msgs/s, Redis's own time per consumed entry
//! (XREADGROUP + XACK from `INFO commandstats`) and the limit that implies,
//! the ratio of the rate to that limit, CPU per message of the worker, Redis
//! and ClickHouse (user + sys from `/proc/<pid>/stat`), the worker's peak RSS
//! (`VmHWM`) and an estimate of where that memory is held. The steady phase
//! prints enqueue→row latency: from each row's own enqueue time (its entry
//! id's milliseconds, kept in a `_id` column) to the moment a poll of the
//! table first sees it; and enqueue→ack from the worker's histogram.
//!
//! `cargo bench --bench e2e`; knobs: `SLUICE_BENCH_N` (backlog size,
//! default 1,000,000), `SLUICE_BENCH_RATE` (steady phase msgs/s, default
//! 50,000), `SLUICE_BENCH_SECS` (steady phase, default 10),
//! `SLUICE_BENCH_REPEAT` (drains per mode and build, compared on medians;
//! default 1), `SLUICE_BENCH_MODES` (comma-separated mode labels to drain,
//! e.g. `at-least-once,exactly-once`; default all five), and
//! `SLUICE_BENCH_COMMANDS` (set: print each drain's busiest Redis commands
//! from `INFO commandstats`).
//!
//! The drain waits on the row count of the table's active parts
//! (`system.parts`), not on `SELECT count()`: counting a growing table
//! every 25 ms read its column again each time, and took a tenth of the
//! machine's CPU from the run it was timing.

mod common;
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{cmd, commandstats, enqueue, env_usize, under_cargo_bench};
use fred::prelude::*;
use fred::types::Value;
use harness::{free_port, wait_for, ClickHouseServer, RedisServer, Worker};

/// The drained runs' batch settings (the defaults).
const MAX_ROWS: usize = 50_000;
const READ_COUNT: usize = 5_000;

/// Quantile from a Prometheus histogram's cumulative buckets (linear
/// interpolation inside the bucket, as `histogram_quantile` does).
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let span = count - prev.1;
            let frac = if span > 0.0 {
                (rank - prev.1) / span
            } else {
                0.0
            };
            return prev.0 + (le - prev.0) * frac;
        }
        prev = (le, count);
    }
    f64::NAN
}

/// The worker's `/metrics` text.
async fn scrape(metrics_port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap()
}

/// The value of the first sample line starting with `prefix` (name and labels).
fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn latency_buckets(body: &str) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("sluice_end_to_end_latency_seconds_bucket{") {
            let le = rest
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let count: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
            out.push((le, count));
        }
    }
    out
}

/// User + system CPU time of process `pid` so far (`/proc/<pid>/stat`).
fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Duration::from_micros((ticks(11) + ticks(12)) * 1_000_000 / hz)
}

/// CPU of the servers, read before and after a run.
struct ServerCpu {
    redis: Duration,
    clickhouse: Duration,
}

impl ServerCpu {
    fn now(redis: &RedisServer, ch: &ClickHouseServer) -> ServerCpu {
        ServerCpu {
            redis: redis.pid().map(cpu_time).unwrap_or_default(),
            clickhouse: ch.pid().map(cpu_time).unwrap_or_default(),
        }
    }
}

/// Where the worker's peak memory is held, estimated from the sizes the
/// pipeline keeps (see `memory_breakdown`) and the worker's own metrics.
#[derive(Clone, Copy)]
struct Memory {
    /// One parsed message with the reply bytes its fields point into.
    per_message: f64,
    /// Average Native block of an insert (from `sluice_sink_bytes_total`).
    block: f64,
}

/// RESP bytes of one seed-shaped entry in an XREADGROUP reply: a message's
/// id and fields point into the reply buffer, which stays allocated while
/// any message of it lives.
fn resp_entry_bytes(id_len: usize, j: usize) -> usize {
    let bulk = |n: usize| 1 + n.to_string().len() + 2 + n + 2;
    let fields = [
        ("rec_id", j.to_string().len()),
        ("task_for", 1),
        ("function_type", 3),
        ("data", format!("{{\"x\":{j}}}").len()),
    ];
    let mut n = 4 + bulk(id_len) + 4;
    for (k, v) in fields {
        n += bulk(k.len()) + bulk(v);
    }
    n
}

impl Memory {
    fn estimate(n: usize, block: f64) -> Memory {
        use sluice::Message;
        let j = n / 2;
        // The message in its batch's list (its four fields' offsets are
        // inline), and the reply bytes.
        let per_message =
            (std::mem::size_of::<Message>() + resp_entry_bytes("1764500000000-0".len(), j)) as f64;
        Memory { per_message, block }
    }
}

#[derive(Clone)]
struct Run {
    label: String,
    rate: f64,
    redis_us_per_entry: f64,
    worker_us_per_msg: f64,
    redis_cpu_us_per_msg: f64,
    clickhouse_us_per_msg: f64,
    peak_rss_mb: f64,
    memory: Memory,
}

impl Run {
    fn limit(&self) -> f64 {
        1e6 / self.redis_us_per_entry
    }

    /// Each figure's median over `runs` (repeats of one mode and build),
    /// so one disturbed run on a shared machine does not decide a ratio.
    fn median(mut runs: Vec<Run>) -> Run {
        fn med(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        }
        if runs.len() == 1 {
            return runs.pop().expect("one run");
        }
        Run {
            label: format!("{} (median of {})", runs[0].label, runs.len()),
            rate: med(&runs, |r| r.rate),
            redis_us_per_entry: med(&runs, |r| r.redis_us_per_entry),
            worker_us_per_msg: med(&runs, |r| r.worker_us_per_msg),
            redis_cpu_us_per_msg: med(&runs, |r| r.redis_cpu_us_per_msg),
            clickhouse_us_per_msg: med(&runs, |r| r.clickhouse_us_per_msg),
            peak_rss_mb: med(&runs, |r| r.peak_rss_mb),
            memory: Memory {
                per_message: runs[0].memory.per_message,
                block: med(&runs, |r| r.memory.block),
            },
        }
    }
}

/// `SLUICE_BENCH_PERF=<dir>`: a `perf record` of the worker, Redis and
/// ClickHouse (`pids`) over a drained run, written to `<dir>/<label>.data`
/// (`perf report -i … --sort comm,dso,sym`).
fn start_perf(label: &str, pids: &[u32]) -> Option<std::process::Child> {
    let dir = std::env::var("SLUICE_BENCH_PERF").ok()?;
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let out = format!("{dir}/{}.data", label.replace(' ', "-"));
    std::process::Command::new("perf")
        .args([
            "record",
            "-F",
            "999",
            "-g",
            "-o",
            &out,
            "-p",
            &pids.join(","),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
}

/// Ends a `perf record` (SIGINT makes it write its file) and waits for it.
fn stop_perf(perf: Option<std::process::Child>) {
    if let Some(mut child) = perf {
        // SAFETY: signals the child this bench started.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let _ = child.wait();
    }
}

/// How a drained run is configured.
#[derive(Clone)]
struct Mode {
    label: String,
    metrics: bool,
    exactly_once: bool,
    lz4: bool,
    /// The type of the table's batch-id column.
    batch_type: &'static str,
    /// Another build of `sluice` to run instead of this one.
    bin: Option<PathBuf>,
}

/// `bin`, or this build, as a worker running `config`.
fn spawn_worker(bin: Option<&Path>, config: &str) -> Worker {
    match bin {
        Some(bin) => Worker::spawn_binary(bin, "run", config, &[], &[]),
        None => Worker::spawn(config),
    }
}

async fn drain_backlog(redis: &RedisServer, ch: &ClickHouseServer, n: usize, mode: Mode) -> Run {
    let Mode {
        label,
        metrics: with_metrics,
        exactly_once,
        lz4,
        batch_type,
        bin,
    } = mode;
    let rc = redis.client().await;
    let stream = harness::unique_name("bench");
    let table = harness::unique_name("bench");
    // A primary key: exactly-once looks a batch up through it (and refuses
    // a table without one). Every run's table is alike but for the type of
    // the batch-id column.
    ch.exec(&format!("CREATE TABLE {table} (rec_id UInt64, task_for String, function_type String, data String, _batch {batch_type}, _id String) ENGINE = MergeTree ORDER BY rec_id")).await;
    let delivery = if exactly_once {
        "delivery = \"exactly_once\"\nbatch_id_column = \"_batch\"\nmetadata = { id = \"_id\" }"
    } else {
        ""
    };
    let t = Instant::now();
    enqueue(&rc, &[&stream], 0, n).await;
    eprintln!(
        "[{label}] enqueued {n} in {:.2}s ({:.0}/s)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    let _: Value = rc
        .custom(cmd("CONFIG", ""), vec!["RESETSTAT"])
        .await
        .unwrap();
    let metrics_port = free_port();
    let metrics = if with_metrics {
        format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n")
    } else {
        String::new()
    };
    let config = format!(
        r#"[redis]
url = "{}"
[clickhouse]
url = "{}"
compression = {lz4}
{metrics}
[[flow]]
name = "bench"
streams = ["{stream}"]
read_count = {READ_COUNT}
sink = {{ type = "clickhouse", table = "{table}" }}
batch = {{ max_rows = {MAX_ROWS}, max_bytes = "16MiB", max_wait = "1s" }}
{delivery}
"#,
        redis.url(),
        ch.url()
    );
    let servers_before = ServerCpu::now(redis, ch);
    let started = Instant::now();
    let worker = spawn_worker(bin.as_deref(), &config);
    let pids = [Some(worker.pid()), redis.pid(), ch.pid()];
    let perf = start_perf(&label, &pids.into_iter().flatten().collect::<Vec<_>>());
    wait_for(Duration::from_secs(600), "backlog drained", || async {
        ch.rows_in_parts(&table).await >= n as u64
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    stop_perf(perf);
    let worker_cpu = cpu_time(worker.pid());
    let servers = ServerCpu::now(redis, ch);
    let stats = commandstats(&rc).await;
    if std::env::var_os("SLUICE_BENCH_COMMANDS").is_some() {
        let mut top: Vec<_> = stats.iter().collect();
        top.sort_by_key(|(_, s)| std::cmp::Reverse(s.1));
        eprintln!(
            "[{label}] Redis's busiest commands (calls, usec): {:?}",
            &top[..top.len().min(8)]
        );
    }
    let usec = |c: &str| stats.get(c).map(|s| s.1).unwrap_or(0) as f64;
    let redis_us = (usec("xreadgroup") + usec("xack")) / n as f64;
    let rss = worker.peak_rss_kb().unwrap_or(0) as f64 / 1024.0;
    let block = if with_metrics {
        let body = scrape(metrics_port).await;
        let bytes = sample(&body, "sluice_sink_bytes_total{").unwrap_or(0.0);
        let inserts = sample(&body, "sluice_batch_rows_count{").unwrap_or(1.0);
        bytes / inserts.max(1.0)
    } else {
        f64::NAN
    };
    drop(worker);
    let _: Value = rc
        .custom(cmd("DEL", &stream), vec![stream.as_str()])
        .await
        .unwrap();
    let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    Run {
        label,
        rate: n as f64 / secs,
        redis_us_per_entry: redis_us,
        worker_us_per_msg: per_msg(worker_cpu),
        redis_cpu_us_per_msg: per_msg(servers.redis.saturating_sub(servers_before.redis)),
        clickhouse_us_per_msg: per_msg(
            servers.clickhouse.saturating_sub(servers_before.clickhouse),
        ),
        peak_rss_mb: rss,
        memory: Memory::estimate(n, block),
    }
}

/// A config with metrics on `port` and one flow from `stream` into
/// `table`, with `extra` flow keys.
fn metered_flow(
    redis: &RedisServer,
    ch: &ClickHouseServer,
    port: u16,
    stream: &str,
    table: &str,
    extra: &str,
) -> String {
    format!(
        r#"[redis]
url = "{}"
[clickhouse]
url = "{}"
[metrics]
listen = "127.0.0.1:{port}"
[[flow]]
name = "bench"
streams = ["{stream}"]
sink = {{ type = "clickhouse", table = "{table}" }}
{extra}"#,
        redis.url(),
        ch.url()
    )
}

/// RSS of a worker with nothing to do (code, runtime, clients, metrics).
async fn idle_rss_mb(redis: &RedisServer, ch: &ClickHouseServer) -> f64 {
    let stream = harness::unique_name("idle");
    let table = harness::unique_name("idle");
    ch.exec(&format!("CREATE TABLE {table} (rec_id UInt64, task_for String, function_type String, data String) ENGINE = MergeTree ORDER BY rec_id")).await;
    let port = free_port();
    let worker = Worker::spawn(&metered_flow(redis, ch, port, &stream, &table, ""));
    wait_for(Duration::from_secs(30), "metrics up", || async {
        harness::port_open(port).await
    })
    .await;
    // One scrape, so the metrics path has run once too.
    let _ = scrape(port).await;
    worker.rss_kb().unwrap_or(0) as f64 / 1024.0
}

/// Prints the estimate of where a run's peak memory is held: the idle
/// worker, read chunks (the chunk channel holds 2, the reader 1 more) and
/// batches (each: its messages, with the reply bytes their fields point
/// into, and its Native block); the pipeline holds up to 3 full batches
/// (one filling, one sealed in the channel, one being inserted), and the
/// peak tells how many it held at once.
fn memory_breakdown(r: &Run, idle_mb: f64) {
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let m = &r.memory;
    let batch_msgs = mib(MAX_ROWS as f64 * m.per_message);
    let batch = batch_msgs + mib(m.block);
    let chunks = mib(3.0 * READ_COUNT as f64 * m.per_message);
    let batches = (r.peak_rss_mb - idle_mb - chunks) / batch;
    println!(
        "  {:<28} peak {:.1} MiB = idle worker {:.1} (code, runtime, clients, metrics) + 3 read chunks {:.1} ({READ_COUNT} × {:.0} B) + batches: {:.1} × {:.1} MiB (each {MAX_ROWS} messages × {:.0} B = {:.1} + Native block {:.1})",
        r.label,
        r.peak_rss_mb,
        idle_mb,
        chunks,
        m.per_message,
        batches,
        batch,
        m.per_message,
        batch_msgs,
        mib(m.block),
    );
}

/// Rows' enqueue→visible latency: polls the table every 10 ms for how many
/// rows of each enqueue millisecond (`_ms`, the entry id's milliseconds) it
/// holds; rows first seen by a poll count as visible when its answer came
/// (an upper bound, ≤ one poll period late). Returns the latencies in ms
/// (one per row) once `total` rows were seen or `deadline` passed.
async fn watch_visibility(ch: &ClickHouseServer, table: &str, total: u64) -> Vec<(u64, u64)> {
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut samples: Vec<(u64, u64)> = Vec::new(); // (latency ms, rows)
    let mut count = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while count < total && Instant::now() < deadline {
        tick.tick().await;
        let now = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        // Only the last 10 s can still change.
        let lo = now().saturating_sub(10_000);
        let Ok(tsv) = ch
            .try_query_tsv(&format!(
                "SELECT _ms, count() FROM {table} WHERE _ms >= {lo} GROUP BY _ms"
            ))
            .await
        else {
            continue;
        };
        let at = now();
        for line in tsv.lines() {
            let Some((ms, c)) = line.split_once('\t') else {
                continue;
            };
            let (Ok(ms), Ok(c)) = (ms.parse::<u64>(), c.parse::<u64>()) else {
                continue;
            };
            let before = seen.insert(ms, c).unwrap_or(0);
            if c > before {
                samples.push((at.saturating_sub(ms), c - before));
                count += c - before;
            }
        }
    }
    samples
}

/// The q-quantile of weighted samples (value, weight).
fn weighted_quantile(samples: &mut [(u64, u64)], q: f64) -> u64 {
    samples.sort_unstable();
    let total: u64 = samples.iter().map(|s| s.1).sum();
    let rank = (q * total as f64).ceil() as u64;
    let mut acc = 0;
    for &(v, w) in samples.iter() {
        acc += w;
        if acc >= rank {
            return v;
        }
    }
    samples.last().map(|s| s.0).unwrap_or(0)
}

struct Latency {
    label: String,
    row_p50: u64,
    row_p99: u64,
    row_max: u64,
    ack_p50: f64,
    ack_p99: f64,
    sent: usize,
    /// The rate the producer kept up (below `rate` on a loaded machine).
    produced: f64,
    seen: u64,
}

async fn steady_latency(
    redis: &RedisServer,
    ch: &ClickHouseServer,
    rate: usize,
    secs: u64,
    (label, bin): (String, Option<PathBuf>),
) -> Latency {
    let rc = redis.client().await;
    let stream = harness::unique_name("lat");
    let table = harness::unique_name("lat");
    // `_ms`: the entry id's milliseconds (when Redis added it), computed by
    // ClickHouse at insert from the `_id` the worker writes.
    ch.exec(&format!("CREATE TABLE {table} (rec_id UInt64, task_for String, function_type String, data String, _id String, _ms UInt64 MATERIALIZED toUInt64(splitByChar('-', _id)[1])) ENGINE = MergeTree ORDER BY _ms")).await;
    let port = free_port();
    let config = metered_flow(
        redis,
        ch,
        port,
        &stream,
        &table,
        "batch = { max_rows = 50000, max_bytes = \"16MiB\", max_wait = \"100ms\" }\nmetadata = { id = \"_id\" }\n",
    );
    let worker = spawn_worker(bin.as_deref(), &config);
    wait_for(Duration::from_secs(30), "metrics up", || async {
        harness::port_open(port).await
    })
    .await;
    // Producer: every 10 ms, rate/100 messages.
    let per_tick = (rate / 100).max(1);
    let total = per_tick * 100 * secs as usize;
    let produce = async {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut sent = 0;
        while sent < total {
            tick.tick().await;
            enqueue(&rc, &[&stream], sent, per_tick).await;
            sent += per_tick;
        }
        sent as f64 / started.elapsed().as_secs_f64()
    };
    let (mut samples, produced) = tokio::join!(watch_visibility(ch, &table, total as u64), produce);
    let body = scrape(port).await;
    let buckets = latency_buckets(&body);
    drop(worker);
    Latency {
        label,
        row_p50: weighted_quantile(&mut samples, 0.5),
        row_p99: weighted_quantile(&mut samples, 0.99),
        row_max: samples.iter().map(|s| s.0).max().unwrap_or(0),
        ack_p50: quantile(&buckets, 0.5),
        ack_p99: quantile(&buckets, 0.99),
        sent: total,
        produced,
        seen: samples.iter().map(|s| s.1).sum(),
    }
}

/// Throughput and cost of one mode, after against before (same sitting).
fn compare(before: &Run, after: &Run) {
    println!(
        "  {:<28} msgs/s {:+.0}%, of Redis's limit {:.0}% → {:.0}%, worker µs/msg {:.2} → {:.2}, peak RSS {:.1} → {:.1} MiB",
        after.label,
        (after.rate / before.rate - 1.0) * 100.0,
        100.0 * before.rate / before.limit(),
        100.0 * after.rate / after.limit(),
        before.worker_us_per_msg,
        after.worker_us_per_msg,
        before.peak_rss_mb,
        after.peak_rss_mb
    );
}

fn main() {
    if !under_cargo_bench("e2e") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let n = env_usize("SLUICE_BENCH_N", 1_000_000);
        let rate = env_usize("SLUICE_BENCH_RATE", 50_000);
        let secs = env_usize("SLUICE_BENCH_SECS", 10) as u64;
        // `SLUICE_BENCH_BASELINE=<path to an older sluice binary>`: every
        // run is made with it first, then with this build, in one sitting.
        let baseline = std::env::var_os("SLUICE_BENCH_BASELINE").map(PathBuf::from);
        let builds: Vec<(&str, Option<PathBuf>)> = match &baseline {
            Some(old) => vec![(" (before)", Some(old.clone())), (" (after)", None)],
            None => vec![("", None)],
        };
        let (redis, ch) = tokio::join!(RedisServer::start(), ClickHouseServer::start());
        let idle = idle_rss_mb(&redis, &ch).await;
        // (label, metrics, exactly-once, LZ4, batch-id column type): the
        // batch id is a UUID, the narrowest column that holds it (16 bytes
        // a row); the last mode shows what a 37-byte String costs instead.
        let modes = [
            ("at-least-once", true, false, true, "UUID"),
            ("metrics off", false, false, true, "UUID"),
            ("LZ4 off", true, false, false, "UUID"),
            ("exactly-once", true, true, true, "UUID"),
            ("exactly-once (String id)", true, true, true, "String"),
        ];
        // `SLUICE_BENCH_REPEAT=<r>`: each mode is drained r times, the
        // modes and builds taking turns, and compared on the medians.
        let repeat = env_usize("SLUICE_BENCH_REPEAT", 1).max(1);
        let (mut each, mut runs) = (Vec::new(), Vec::new());
        // `SLUICE_BENCH_MODES=at-least-once,exactly-once`: only these
        // modes are drained (the summary lines needing others are skipped).
        let only = std::env::var("SLUICE_BENCH_MODES").ok();
        let wanted = |label: &str| only.as_deref().is_none_or(|o| o.split(',').any(|m| m.trim() == label));
        let modes: Vec<_> = modes.into_iter().filter(|m| wanted(m.0)).collect();
        // Rounds: each round drains every mode once with every build, so a
        // machine that slows down during the sitting slows all alike.
        let k = builds.len();
        let mut done: Vec<Vec<Run>> = vec![Vec::new(); modes.len() * k];
        for _ in 0..repeat {
            for (m, &(label, metrics, exactly_once, lz4, batch_type)) in modes.iter().enumerate() {
                for (b, (suffix, bin)) in builds.iter().enumerate() {
                    let mode = Mode {
                        label: format!("{label}{suffix}"),
                        metrics,
                        exactly_once,
                        lz4,
                        batch_type,
                        bin: bin.clone(),
                    };
                    done[m * k + b].push(drain_backlog(&redis, &ch, n, mode).await);
                }
            }
        }
        for drains in done {
            if repeat > 1 {
                each.extend(drains.iter().cloned());
            }
            runs.push(Run::median(drains));
        }
        let mut latencies = Vec::new();
        for (suffix, bin) in &builds {
            let build = (format!("steady{suffix}"), bin.clone());
            latencies.push(steady_latency(&redis, &ch, rate, secs, build).await);
        }
        println!("\nsluice e2e bench: {n} seed-shaped 4-field messages, 1 worker, batch {MAX_ROWS} rows, read_count {READ_COUNT}");
        println!(
            "{:<40} {:>9} {:>13} {:>11} {:>9} {:>14} {:>13} {:>10} {:>10}",
            "run", "msgs/s", "redis µs/ent", "redis limit", "of limit", "worker µs/msg", "redis µs/msg", "CH µs/msg", "peak RSS"
        );
        for r in each.iter().chain(&runs) {
            println!(
                "{:<40} {:>9.0} {:>13.2} {:>11.0} {:>8.0}% {:>14.2} {:>13.2} {:>10.2} {:>6.1} MiB",
                r.label,
                r.rate,
                r.redis_us_per_entry,
                r.limit(),
                100.0 * r.rate / r.limit(),
                r.worker_us_per_msg,
                r.redis_cpu_us_per_msg,
                r.clickhouse_us_per_msg,
                r.peak_rss_mb
            );
        }
        println!("(redis µs/ent: XREADGROUP+XACK time from INFO commandstats; µs/msg: user+sys CPU ÷ messages)");
        let run = |mode: usize, build: usize| &runs[mode * k + build];
        for (b, (suffix, _)) in builds.iter().enumerate() {
            // The run of mode `label` with this build, if it was drained.
            let drained = |label: &str| {
                let mode = modes.iter().position(|m| m.0 == label)?;
                Some(run(mode, b))
            };
            let rate = |label: &str| drained(label).map(|r| r.rate);
            let at_least_once = rate("at-least-once");
            let mut costs = Vec::new();
            if let (Some(on), Some(off)) = (at_least_once, rate("metrics off")) {
                costs.push(format!("metrics cost {:.1}%", (1.0 - on / off) * 100.0));
            }
            if let (Some(on), Some(off)) = (at_least_once, rate("LZ4 off")) {
                costs.push(format!("LZ4 off {:+.1}% against LZ4 on", (off / on - 1.0) * 100.0));
            }
            // Also against the ratio to Redis's limit, which follows the
            // machine's speed of the moment: on a noisy box it compares
            // runs that the raw rates cannot.
            let share = |r: &Run| r.rate / r.limit();
            for eo_label in ["exactly-once", "exactly-once (String id)"] {
                if let (Some(alo), Some(eo)) = (drained("at-least-once"), drained(eo_label)) {
                    costs.push(format!(
                        "{eo_label} cost {:.1}% of at-least-once throughput ({:.1}% of its ratio to Redis's limit)",
                        (1.0 - eo.rate / alo.rate) * 100.0,
                        (1.0 - share(eo) / share(alo)) * 100.0
                    ));
                }
            }
            println!("{}: {}", suffix.trim(), costs.join(", "));
        }
        if k == 2 {
            println!("after against before:");
            for m in 0..modes.len() {
                compare(run(m, 0), run(m, 1));
            }
        }
        println!("where peak memory is held (estimate):");
        for r in runs.iter().filter(|r| r.memory.block.is_finite()) {
            memory_breakdown(r, idle);
        }
        for lat in &latencies {
            println!(
                "{}: {rate} msgs/s for {secs}s ({} msgs, producer kept {:.0}/s, max_wait 100ms): enqueue→row (visible in ClickHouse) p50 {} ms, p99 {} ms, max {} ms ({} rows seen); enqueue→ack p50 {:.0} ms, p99 {:.0} ms",
                lat.label, lat.sent, lat.produced, lat.row_p50, lat.row_p99, lat.row_max, lat.seen, lat.ack_p50 * 1000.0, lat.ack_p99 * 1000.0
            );
        }
    });
}
