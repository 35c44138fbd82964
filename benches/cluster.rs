//! Throughput versus Redis Cluster size: sluice workers draining a backlog
//! of seed-shaped 4-field jobs from a sharded stream on a private 1-, 2- and
//! 3-master Redis Cluster into a private ClickHouse.
//!
//! For each run it prints msgs/s and where the CPU went, per message:
//! Redis (XREADGROUP + XACK time from `INFO commandstats`, summed over the
//! nodes, and the nodes' process CPU), the workers' process CPU and
//! ClickHouse's process CPU — the inputs of the scaling model in
//! docs/SCALING.md. `cargo bench --bench cluster`; knobs: `SLUICE_BENCH_N`
//! (backlog, default 1,000,000), `SLUICE_BENCH_SHARDS` (default 6),
//! `SLUICE_BENCH_WORKERS` (replicas, default 2), `SLUICE_BENCH_NODES` (largest
//! cluster, default 3).

mod common;
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::time::{Duration, Instant};

use common::{commandstats, enqueue, env_usize, under_cargo_bench};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};
use harness::{wait_for, ClickHouseServer, RedisCluster, Worker};

/// User + system CPU seconds a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the `(comm)`: state is 3rd; utime, stime are 14th, 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: plain libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn shard(base: &str, i: usize) -> String {
    if i == usize::MAX {
        base.to_string()
    } else {
        format!("{base}:{{{i}}}")
    }
}

/// Redis's own microseconds in XREADGROUP + XACK, summed over the nodes.
async fn redis_stream_usec(cluster: &mut RedisCluster) -> f64 {
    let mut total = 0.0;
    for i in 0..cluster.len() {
        let client = cluster.node(i).client().await;
        let stats = commandstats(&client).await;
        if std::env::var("SLUICE_BENCH_STATS").is_ok() {
            eprintln!("node {i} commandstats (calls, usec): {stats:?}");
        }
        total += ["xreadgroup", "xack"]
            .iter()
            .map(|c| stats.get(*c).map_or(0, |s| s.1))
            .sum::<u64>() as f64;
        let _ = client.quit().await;
    }
    total
}

async fn reset_stats(cluster: &mut RedisCluster) {
    for i in 0..cluster.len() {
        let client = cluster.node(i).client().await;
        let _: Value = client
            .custom(
                CustomCommand::new_static("CONFIG", ClusterHash::Random, false),
                vec!["RESETSTAT"],
            )
            .await
            .unwrap();
        let _ = client.quit().await;
    }
}

struct Run {
    nodes: usize,
    shards: usize,
    rate: f64,
    redis_cmd_us: f64,
    redis_cpu_us: f64,
    worker_cpu_us: f64,
    ch_cpu_us: f64,
}

async fn run(ch: &ClickHouseServer, nodes: usize, shards: usize, workers: usize, n: usize) -> Run {
    // AOF fsynced once a second, as production runs it (the tests fsync
    // every write to prove nothing is lost on a restart).
    let mut cluster = RedisCluster::start_with(nodes, &["--appendfsync", "everysec"]).await;
    let rc = cluster.client().await;
    let base = harness::unique_name("bench");
    let table = harness::unique_name("bench");
    ch.exec(&format!("CREATE TABLE {table} (rec_id UInt64, task_for String, function_type String, data String) ENGINE = MergeTree ORDER BY tuple()")).await;
    let streams: Vec<String> = if shards == 1 {
        vec![base.clone()]
    } else {
        (0..shards).map(|i| shard(&base, i)).collect()
    };
    let t = Instant::now();
    enqueue(
        &rc,
        &streams.iter().map(String::as_str).collect::<Vec<_>>(),
        0,
        n,
    )
    .await;
    eprintln!(
        "[{nodes} nodes, {shards} shards] enqueued {n} in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    reset_stats(&mut cluster).await;
    let config = format!(
        r#"[redis]
url = "{}"
[clickhouse]
url = "{}"
[streams."{base}"]
shards = {shards}
[[flow]]
name = "bench"
streams = ["{base}"]
sink = {{ type = "clickhouse", table = "{table}" }}
batch = {{ max_rows = 50000, max_bytes = "16MiB", max_wait = "200ms" }}
"#,
        cluster.url(),
        ch.url()
    );
    let redis_pids: Vec<u32> = (0..nodes).filter_map(|i| cluster.node(i).pid()).collect();
    let redis_cpu0: f64 = redis_pids.iter().map(|p| cpu_secs(*p)).sum();
    let ch_pid = ch.pid().unwrap_or(0);
    let ch_cpu0 = cpu_secs(ch_pid);
    let started = Instant::now();
    let ws: Vec<Worker> = (0..workers).map(|_| Worker::spawn(&config)).collect();
    wait_for(Duration::from_secs(900), "backlog drained", || async {
        ch.count(&table).await >= n as u64
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let worker_cpu: f64 = ws.iter().map(|w| cpu_secs(w.pid())).sum();
    let redis_cpu = redis_pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - redis_cpu0;
    let ch_cpu = cpu_secs(ch_pid) - ch_cpu0;
    let redis_cmd = redis_stream_usec(&mut cluster).await;
    drop(ws);
    ch.exec(&format!("DROP TABLE {table}")).await;
    let per = |s: f64| s * 1e6 / n as f64;
    Run {
        nodes,
        shards,
        rate: n as f64 / secs,
        redis_cmd_us: redis_cmd / n as f64,
        redis_cpu_us: per(redis_cpu),
        worker_cpu_us: per(worker_cpu),
        ch_cpu_us: per(ch_cpu),
    }
}

fn main() {
    if !under_cargo_bench("cluster") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let n = env_usize("SLUICE_BENCH_N", 1_000_000);
        let shards = env_usize("SLUICE_BENCH_SHARDS", 6);
        let workers = env_usize("SLUICE_BENCH_WORKERS", 2);
        let max_nodes = env_usize("SLUICE_BENCH_NODES", 3);
        let ch = ClickHouseServer::start().await;
        let mut runs = vec![run(&ch, 1, 1, workers, n).await];
        for nodes in 1..=max_nodes {
            runs.push(run(&ch, nodes, shards, workers, n).await);
        }
        println!(
            "\nsluice cluster bench: {n} seed-shaped 4-field messages, {workers} workers, batch 50,000 rows / 200 ms, {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "{:>5} {:>6} {:>10} {:>26} {:>16} {:>16} {:>20}",
            "nodes", "shards", "msgs/s", "redis µs/msg (XRG+XACK)", "redis CPU µs/msg", "worker CPU µs/msg", "ClickHouse CPU µs/msg"
        );
        for r in &runs {
            println!(
                "{:>5} {:>6} {:>10.0} {:>26.2} {:>16.2} {:>16.2} {:>20.2}",
                r.nodes, r.shards, r.rate, r.redis_cmd_us, r.redis_cpu_us, r.worker_cpu_us, r.ch_cpu_us
            );
        }
    });
}
