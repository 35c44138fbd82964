//! The chaos cases, shared by the fast tests in `tests/it/chaos.rs` and the
//! full-size command `cargo bench --bench chaos` (`benches/chaos.rs`).
//!
//! Every case starts its own Redis and ClickHouse on loopback, a fleet of
//! `sluice` replicas and a producer that XADDs `messages` entries at `rate`
//! per second, injects its faults on a schedule drawn from a seeded RNG while
//! the producer runs, then lets the fleet drain and counts:
//!
//! - **sent**: entries in the source stream (the producer's confirmed XADDs
//!   are checked too: an entry Redis confirmed must never go missing);
//! - **rows** / **unique**: `count()` and `uniqExact(_id)` in ClickHouse
//!   (`_id` is the entry id, `metadata = { id = "_id" }`);
//! - **duplicates** = rows − unique; **dead**: dead-letter entries;
//! - **lost**: sent entries neither in ClickHouse nor dead-lettered;
//! - **peak RSS**: the largest `VmHWM` of any replica (sampled before each
//!   SIGKILL and at the end), and the largest pending count seen.
//!
//! Nothing here panics on a bad outcome: the report says what happened, and
//! the caller (test or command) decides.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{CustomCommand, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::{self, ClickHouseServer, RedisServer, TcpProxy, Worker};

/// One chaos scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// SIGKILL a random replica of three about every second, restart it.
    Kill,
    /// Through a proxy to ClickHouse: refused connections, connections cut
    /// mid-insert, stalls longer than the insert timeout.
    ClickHouseFaults,
    /// Redis (AOF, `appendfsync always`) crashed or stopped and restarted.
    RedisRestart,
    /// ClickHouse slowed down by a proxy delay: backpressure bounds memory.
    SlowClickHouse,
    /// Every Redis connection of the workers cut at random moments, hitting
    /// XREADGROUP, XACK and XAUTOCLAIM in flight.
    RedisCut,
    /// Redis at `maxmemory` (`noeviction`: XADD refused, XACK not) while
    /// bad rows arrive, whose dead letters are refused; a replica killed
    /// in half the windows, its replacement starting at the limit.
    RedisMaxmemory,
    /// The table altered while rows flow: a column added (the messages
    /// carry it from the start), later one dropped. No stall, nothing
    /// dead-lettered, the new column filled once the schema is re-read.
    SchemaChange,
    /// ClickHouse down for `Params::outage` while one replica is killed and
    /// another joins, `max_deliveries = 2`: the replicas keep their entries
    /// alive and claim only what they can take, so no healthy row is
    /// delivered more than twice (dead-lettered).
    SinkDown,
}

impl Case {
    pub const ALL: [Case; 8] = [
        Case::Kill,
        Case::ClickHouseFaults,
        Case::RedisRestart,
        Case::SlowClickHouse,
        Case::RedisCut,
        Case::RedisMaxmemory,
        Case::SchemaChange,
        Case::SinkDown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::Kill => "kill",
            Case::ClickHouseFaults => "ch-faults",
            Case::RedisRestart => "redis-restart",
            Case::SlowClickHouse => "slow-ch",
            Case::RedisCut => "redis-cut",
            Case::RedisMaxmemory => "redis-oom",
            Case::SchemaChange => "schema-change",
            Case::SinkDown => "sink-down",
        }
    }

    pub fn parse(s: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Replicas used when the caller does not say.
    pub fn default_replicas(self) -> usize {
        match self {
            Case::Kill => 3,
            _ => 2,
        }
    }
}

/// The flow's delivery mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    AtLeastOnce,
    ExactlyOnce,
}

impl Delivery {
    pub fn name(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::ExactlyOnce => "exactly-once",
        }
    }

    pub fn parse(s: &str) -> Option<Delivery> {
        match s {
            "at-least-once" | "at_least_once" => Some(Delivery::AtLeastOnce),
            "exactly-once" | "exactly_once" => Some(Delivery::ExactlyOnce),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Params {
    /// Seeds the fault schedule and the message contents.
    pub seed: u64,
    pub messages: usize,
    /// Messages per second offered by the producer.
    pub rate: usize,
    pub replicas: usize,
    /// Bytes of the `data` field of each message.
    pub payload_bytes: usize,
    pub delivery: Delivery,
    /// Bound on the drain after the faults stop.
    pub drain_limit: Duration,
    /// `slow-ch`: proxy delay per forwarded chunk (≤ 64 KiB).
    pub slow_delay: Duration,
    /// `batch.max_rows` of the flow.
    pub batch_rows: usize,
    pub read_count: usize,
    /// `sink-down`: how long ClickHouse refuses connections.
    pub outage: Duration,
}

impl Params {
    /// The full-size defaults of the command.
    pub fn full(seed: u64) -> Params {
        Params {
            seed,
            messages: 300_000,
            rate: 10_000,
            replicas: 0, // per case
            payload_bytes: 200,
            delivery: Delivery::AtLeastOnce,
            drain_limit: Duration::from_secs(300),
            slow_delay: Duration::from_millis(200),
            batch_rows: 5000,
            read_count: 1000,
            outage: Duration::from_secs(60),
        }
    }

    /// Small and fast: what the tests run.
    pub fn quick(seed: u64) -> Params {
        Params {
            seed,
            messages: 20_000,
            rate: 4_000,
            replicas: 0,
            payload_bytes: 100,
            delivery: Delivery::AtLeastOnce,
            drain_limit: Duration::from_secs(45),
            slow_delay: Duration::from_millis(400),
            batch_rows: 2000,
            read_count: 500,
            outage: Duration::from_secs(12),
        }
    }

    fn replicas_for(&self, case: Case) -> usize {
        if self.replicas == 0 {
            case.default_replicas()
        } else {
            self.replicas
        }
    }

    /// Most entries one replica can hold read-but-unacked: the batch being
    /// committed, one sealed batch queued, one the batcher is blocked
    /// sending, the rest of the chunk it was batching, two chunks in the
    /// channel and one read the reader is blocked handing on (`flow.rs`).
    pub fn in_flight_bound(&self, replicas: usize) -> u64 {
        (replicas * (3 * self.batch_rows + 4 * self.read_count)) as u64
    }
}

/// What one case measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub case: String,
    pub delivery: String,
    pub seed: u64,
    pub replicas: usize,
    /// Entries in the source stream (or confirmed XADDs, if more).
    pub sent: u64,
    /// XADDs Redis confirmed to the producer.
    pub confirmed: u64,
    /// `count()` in ClickHouse.
    pub rows: u64,
    /// `uniqExact(_id)` in ClickHouse.
    pub unique: u64,
    pub duplicates: u64,
    /// Entries in the dead-letter stream.
    pub dead: u64,
    /// Sent entries found neither in ClickHouse nor among the dead letters.
    pub lost: u64,
    /// Confirmed XADDs whose entry is neither in ClickHouse nor dead-lettered.
    pub confirmed_missing: u64,
    /// Faults injected (kills, restarts, cuts, refusals, stalls).
    pub faults: u64,
    /// Largest `VmHWM` of any replica, KiB.
    pub peak_rss_kb: u64,
    /// Largest pending count of the group seen while the faults ran.
    pub max_pending: u64,
    /// Largest number of confirmed entries not yet in ClickHouse seen while
    /// the faults ran (`slow-ch`: the backlog Redis held instead of the workers).
    pub max_backlog: u64,
    /// Replicas that exited although nobody killed them.
    pub unexpected_exits: u64,
    /// `schema-change`: rows enqueued well after the new column was added
    /// (three re-read periods) that still lack it.
    pub unfilled: u64,
    /// Whether everything was accounted for before `drain_limit`.
    pub drained: bool,
    pub secs: f64,
    pub notes: Vec<String>,
}

impl Report {
    pub fn header() -> String {
        "| case | delivery | replicas | sent | rows (`count()`) | unique ids | duplicates | dead letters | lost | faults | peak RSS MiB | max pending | secs |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            .to_string()
    }

    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {:.0} |",
            self.case,
            self.delivery,
            self.replicas,
            self.sent,
            self.rows,
            self.unique,
            self.duplicates,
            self.dead,
            self.lost,
            self.faults,
            self.peak_rss_kb as f64 / 1024.0,
            self.max_pending,
            self.secs
        )
    }

    /// One line per problem; empty when the case met its targets.
    pub fn problems(&self, params: &Params) -> Vec<String> {
        let mut out = Vec::new();
        if !self.drained {
            out.push(format!("not drained within {:?}", params.drain_limit));
        }
        if self.lost > 0 || self.confirmed_missing > 0 {
            out.push(format!(
                "lost {} entries ({} confirmed XADDs missing)",
                self.lost, self.confirmed_missing
            ));
        }
        if self.unexpected_exits > 0 {
            out.push(format!(
                "{} replicas exited on their own",
                self.unexpected_exits
            ));
        }
        if self.faults == 0 {
            out.push("no fault was injected".into());
        }
        if params.delivery == Delivery::ExactlyOnce && self.duplicates > 0 {
            out.push(format!(
                "{} duplicates in exactly-once mode",
                self.duplicates
            ));
        }
        if self.case == Case::SinkDown.name() && self.dead > 0 {
            out.push(format!(
                "{} healthy rows dead-lettered (max_deliveries = 2)",
                self.dead
            ));
        }
        if self.case == Case::SchemaChange.name() {
            if self.dead > 0 {
                out.push(format!(
                    "{} rows dead-lettered for the schema change",
                    self.dead
                ));
            }
            if self.unfilled > 0 {
                out.push(format!(
                    "{} rows enqueued after the re-read lack the new column",
                    self.unfilled
                ));
            }
        }
        out
    }
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, fred::types::ClusterHash::FirstKey, false)
}

async fn try_raw(client: &Client, name: &'static str, args: Vec<Value>) -> Option<Value> {
    client.custom::<Value, Value>(cmd(name), args).await.ok()
}

async fn xlen(client: &Client, stream: &str) -> u64 {
    try_raw(client, "XLEN", vec![stream.into()])
        .await
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

async fn pending(client: &Client, stream: &str) -> Option<u64> {
    match try_raw(client, "XPENDING", vec![stream.into(), "g".into()]).await? {
        Value::Array(items) => items.first().and_then(|v| v.as_u64()),
        _ => None,
    }
}

/// `sluice.id` of every dead letter.
async fn dead_ids(client: &Client, dead_stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = "-".to_string();
    loop {
        let Some(Value::Array(items)) = try_raw(
            client,
            "XRANGE",
            vec![
                dead_stream.into(),
                start.as_str().into(),
                "+".into(),
                "COUNT".into(),
                Value::Integer(5000),
            ],
        )
        .await
        else {
            return out;
        };
        let n = items.len();
        for item in items {
            let Value::Array(parts) = item else { continue };
            let id = parts[0].as_string().unwrap_or_default();
            if let Value::Array(flat) = &parts[1] {
                for pair in flat.chunks(2) {
                    if pair[0].as_string().as_deref() == Some("sluice.id") {
                        out.push(pair[1].as_string().unwrap_or_default());
                    }
                }
            }
            start = format!("({id}");
        }
        if n < 5000 {
            return out;
        }
    }
}

/// Polls `cond` every 250 ms for up to `limit`; false on timeout.
async fn until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(true) = tokio::time::timeout(Duration::from_secs(10), cond()).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deterministic, poorly compressible text for the `data` field.
fn payload(seed: u64, seq: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = (seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(ALPHABET[(x % 36) as usize] as char);
    }
    s
}

#[derive(Default)]
struct ProducerStats {
    confirmed: Mutex<Vec<String>>,
    errors: AtomicU64,
    done: AtomicBool,
}

/// XADDs `n` messages at about `rate`/s in pipelined chunks. A failed XADD
/// (Redis down) is not retried: whether it landed is read from the stream.
/// `extra`: each message also carries the field of a column added later.
async fn produce(
    client: Client,
    stream: String,
    params: Params,
    stats: Arc<ProducerStats>,
    extra: bool,
) {
    let started = Instant::now();
    let n = params.messages as u64;
    let mut seq: u64 = 0;
    while seq < n {
        let due = ((started.elapsed().as_secs_f64() * params.rate as f64) as u64 + 1).min(n);
        if due <= seq {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let end = due.min(seq + 2000);
        let pipeline = client.pipeline();
        for i in seq..end {
            let mut args: Vec<Value> = vec![
                stream.as_str().into(),
                "*".into(),
                "rec_id".into(),
                Value::Integer(i as i64),
                "data".into(),
                payload(params.seed, i, params.payload_bytes).into(),
            ];
            if extra {
                args.extend([EXTRA_COLUMN.into(), format!("x{i}").into()]);
            }
            let _: Result<Value, _> = pipeline.custom(cmd("XADD"), args).await;
        }
        let mut ok = Vec::with_capacity((end - seq) as usize);
        let mut failed = 0;
        for r in pipeline.try_all::<Value>().await {
            match r.ok().and_then(|v| v.as_string()) {
                Some(id) => ok.push(id),
                None => failed += 1,
            }
        }
        stats.confirmed.lock().unwrap().extend(ok);
        if failed > 0 {
            stats.errors.fetch_add(failed, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seq = end;
    }
    stats.done.store(true, Ordering::SeqCst);
}

/// `redis-oom`: bad rows (`rec_id` is not a number: each becomes a dead
/// letter) every 10 ms while the main producer runs; refused ones (Redis
/// at its limit) are not retried.
async fn produce_bad_rows(client: Client, stream: String, stats: Arc<ProducerStats>) {
    let mut n: u64 = 0;
    while !stats.done.load(Ordering::SeqCst) {
        let args: Vec<Value> = vec![
            stream.as_str().into(),
            "*".into(),
            "rec_id".into(),
            format!("bad-{n}").into(),
            "data".into(),
            "x".into(),
        ];
        if try_raw(&client, "XADD", args).await.is_none() {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `INFO memory`: (`used_memory`, `maxmemory`); 0 for what it lacks.
async fn used_memory(client: &Client) -> (u64, u64) {
    let info: String = client
        .info(Some(fred::types::InfoKind::Memory))
        .await
        .unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("used_memory:"), field("maxmemory:"))
}

/// `CONFIG SET maxmemory <bytes>` with `noeviction` (0 = no limit).
async fn set_maxmemory(client: &Client, bytes: u64) {
    let args: Vec<Value> = vec![
        "SET".into(),
        "maxmemory-policy".into(),
        "noeviction".into(),
        "maxmemory".into(),
        bytes.to_string().into(),
    ];
    let _ = try_raw(client, "CONFIG", args).await;
}

/// The replicas, restartable, with their peak memory.
struct Fleet {
    config: String,
    workers: Vec<Worker>,
    peak_kb: u64,
    unexpected_exits: u64,
    panics: u64,
    /// Log lines of replicas reporting orphans: entries pending under
    /// their name whose reply a cut connection lost.
    orphan_reports: u64,
    /// `redis-oom`: log lines of replicas whose dead letters Redis refused.
    dead_letters_refused: u64,
    /// `redis-oom`, exactly-once: ledger records Redis refused (they are
    /// written before a batch's insert and its dead letters).
    ledger_writes_refused: u64,
}

impl Fleet {
    fn spawn(config: String, n: usize) -> Fleet {
        let workers = (0..n).map(|_| Worker::spawn(&config)).collect();
        Fleet {
            config,
            workers,
            peak_kb: 0,
            unexpected_exits: 0,
            panics: 0,
            orphan_reports: 0,
            dead_letters_refused: 0,
            ledger_writes_refused: 0,
        }
    }

    async fn wait_running(&self) -> bool {
        until(Duration::from_secs(60), || async {
            self.workers
                .iter()
                .all(|w| w.log_contents().contains("flow running"))
        })
        .await
    }

    fn sample(&mut self) {
        for w in &self.workers {
            if let Some(kb) = w.peak_rss_kb() {
                self.peak_kb = self.peak_kb.max(kb);
            }
        }
    }

    /// Restarts replicas that exited although nobody killed them.
    fn check_alive(&mut self) {
        for i in 0..self.workers.len() {
            if !self.workers[i].is_running() {
                self.unexpected_exits += 1;
                eprintln!(
                    "chaos: replica {} exited on its own; log tail:\n{}",
                    self.workers[i].pid(),
                    tail(&self.workers[i].log_contents(), 4000)
                );
                self.harvest_log(i);
                self.workers[i] = Worker::spawn(&self.config);
            }
        }
    }

    /// Counts what a replica's log says before the replica is replaced.
    fn harvest_log(&mut self, i: usize) {
        let log = self.workers[i].log_contents();
        self.panics += log.matches("panicked").count() as u64;
        self.orphan_reports += log.matches("that we never received").count() as u64;
        self.dead_letters_refused += log.matches("writing dead letters failed").count() as u64;
        self.ledger_writes_refused += log
            .matches("recording the batch in the ledger failed")
            .count() as u64;
    }

    fn kill_and_restart(&mut self, i: usize) {
        self.kill(i);
        self.workers[i] = Worker::spawn(&self.config);
    }

    /// SIGKILLs replica `i`, leaving it dead until the caller replaces it.
    fn kill(&mut self, i: usize) {
        if let Some(kb) = self.workers[i].peak_rss_kb() {
            self.peak_kb = self.peak_kb.max(kb);
        }
        self.workers[i].kill();
        self.harvest_log(i);
    }

    async fn stop(&mut self) {
        self.sample();
        for w in &self.workers {
            w.term();
        }
        for i in 0..self.workers.len() {
            self.workers[i].wait_exit(Duration::from_secs(20)).await;
            self.harvest_log(i);
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

struct Setup {
    redis: RedisServer,
    ch: ClickHouseServer,
    rc: Client,
    stream: String,
    table: String,
}

/// `schema-change`: the column added while rows flow.
const EXTRA_COLUMN: &str = "extra";

/// `schema-change`: how often the workers re-read the table's columns.
const SCHEMA_REFRESH: Duration = Duration::from_secs(1);

fn config_text(
    params: &Params,
    redis_url: &str,
    ch_url: &str,
    stream: &str,
    table: &str,
    insert_timeout: &str,
) -> String {
    let delivery = match params.delivery {
        Delivery::AtLeastOnce => String::new(),
        Delivery::ExactlyOnce => EXACTLY_ONCE_FLOW.to_string(),
    };
    format!(
        r#"[redis]
url = "{redis_url}"
[clickhouse]
url = "{ch_url}"
insert_timeout = "{insert_timeout}"
schema_refresh = "{refresh}ms"
[worker]
shutdown_timeout = "15s"
block = "200ms"
[[flow]]
name = "chaos"
streams = ["{stream}"]
group = "g"
sink = {{ type = "clickhouse", table = "{table}" }}
dead_letter = "{stream}:dead"
batch = {{ max_rows = {rows}, max_bytes = "4MiB", max_wait = "200ms" }}
read_count = {read}
claim = {{ min_idle = "2s", every = "500ms" }}
metadata = {{ id = "_id" }}
{delivery}
"#,
        rows = params.batch_rows,
        read = params.read_count,
        refresh = SCHEMA_REFRESH.as_millis(),
    )
}

/// Flow keys added in exactly-once mode.
const EXACTLY_ONCE_FLOW: &str = r#"delivery = "exactly_once"
batch_id_column = "_batch""#;

async fn setup(params: &Params, redis_args: &[&str]) -> Setup {
    let (redis, ch) = tokio::join!(
        RedisServer::start_with(redis_args),
        ClickHouseServer::start()
    );
    let rc = redis.client().await;
    let stream = harness::unique_name("chaos");
    let table = harness::unique_name("chaos");
    let batch_col = match params.delivery {
        Delivery::AtLeastOnce => "",
        Delivery::ExactlyOnce => ", _batch String",
    };
    ch.exec(&format!(
        "CREATE TABLE {table} (rec_id UInt64, data String, _id String{batch_col}) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    Setup {
        redis,
        ch,
        rc,
        stream,
        table,
    }
}

/// Runs one case and reports; never panics on a bad outcome.
pub async fn run(case: Case, params: &Params) -> Report {
    let started = Instant::now();
    let replicas = params.replicas_for(case);
    let mut rng = StdRng::seed_from_u64(params.seed ^ (case as u64).wrapping_mul(0x1000_0001));
    let redis_args: &[&str] = match case {
        Case::RedisRestart => &["--appendonly", "yes", "--appendfsync", "always"],
        _ => &[],
    };
    let mut s = setup(params, redis_args).await;
    let proxy = match case {
        Case::ClickHouseFaults | Case::SlowClickHouse | Case::SinkDown => {
            Some(TcpProxy::start(s.ch.http_addr()))
        }
        Case::RedisCut => Some(TcpProxy::start(s.redis.addr())),
        _ => None,
    };
    let (redis_url, ch_url) = match (case, &proxy) {
        (Case::RedisCut, Some(p)) => (p.redis_url(), s.ch.url()),
        (Case::ClickHouseFaults | Case::SlowClickHouse | Case::SinkDown, Some(p)) => {
            (s.redis.url(), p.url())
        }
        _ => (s.redis.url(), s.ch.url()),
    };
    let insert_timeout = match case {
        Case::ClickHouseFaults => "2s",
        _ => "30s",
    };
    let mut config = config_text(
        params,
        &redis_url,
        &ch_url,
        &s.stream,
        &s.table,
        insert_timeout,
    );
    if case == Case::SinkDown {
        config.push_str("max_deliveries = 2\n");
    }
    let mut fleet = Fleet::spawn(config, replicas);
    let mut report = Report {
        case: case.name().into(),
        delivery: params.delivery.name().into(),
        seed: params.seed,
        replicas,
        ..Report::default()
    };
    if !fleet.wait_running().await {
        report.notes.push("replicas did not start".into());
        report.unexpected_exits = fleet.workers.len() as u64;
        for w in &fleet.workers {
            let log = w.log_contents();
            // The error line comes before the backtrace that fills the tail.
            let error = log.lines().find(|l| l.starts_with("Error:")).unwrap_or("");
            eprintln!("chaos: replica log:\n{error}\n…\n{}", tail(&log, 4000));
        }
        return report;
    }

    let stats = Arc::new(ProducerStats::default());
    let producer = tokio::spawn(produce(
        s.redis.client().await,
        s.stream.clone(),
        params.clone(),
        stats.clone(),
        case == Case::SchemaChange,
    ));
    // `schema-change`: when the column was added (unix ms).
    let mut added_ms = None;
    let producing = || !stats.done.load(Ordering::SeqCst);
    let ms = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));

    // The fault schedule, while the producer runs.
    match case {
        Case::Kill => {
            while producing() {
                tokio::time::sleep(ms(&mut rng, 500, 1500)).await;
                fleet.check_alive();
                let victim = rng.random_range(0..fleet.workers.len());
                fleet.kill_and_restart(victim);
                report.faults += 1;
                sample_pending(&s, &mut report).await;
            }
        }
        Case::ClickHouseFaults => {
            let proxy = proxy.as_ref().expect("proxy");
            while producing() {
                tokio::time::sleep(ms(&mut rng, 300, 1200)).await;
                match rng.random_range(0..3) {
                    0 => {
                        proxy.refuse();
                        tokio::time::sleep(ms(&mut rng, 500, 2000)).await;
                    }
                    1 => {
                        // Slow the inserts down so that the cut lands inside one.
                        proxy.delay(ms(&mut rng, 5, 30));
                        tokio::time::sleep(ms(&mut rng, 50, 400)).await;
                        proxy.cut_all();
                    }
                    _ => {
                        proxy.stall();
                        tokio::time::sleep(ms(&mut rng, 500, 3000)).await;
                    }
                }
                proxy.pass();
                report.faults += 1;
                fleet.check_alive();
                sample_pending(&s, &mut report).await;
            }
        }
        Case::RedisRestart => {
            while producing() {
                tokio::time::sleep(ms(&mut rng, 1000, 2500)).await;
                if !producing() && report.faults > 0 {
                    break;
                }
                if rng.random_bool(0.5) {
                    s.redis.kill();
                } else {
                    s.redis.stop().await;
                }
                tokio::time::sleep(ms(&mut rng, 300, 1500)).await;
                s.redis.start_again().await;
                report.faults += 1;
                fleet.check_alive();
                sample_pending(&s, &mut report).await;
            }
        }
        Case::SlowClickHouse => {
            let proxy = proxy.as_ref().expect("proxy");
            proxy.delay(params.slow_delay);
            report.faults += 1;
            while producing() {
                tokio::time::sleep(Duration::from_millis(250)).await;
                fleet.sample();
                fleet.check_alive();
                sample_pending(&s, &mut report).await;
                let confirmed = stats.confirmed.lock().unwrap().len() as u64;
                let landed =
                    s.ch.try_query_tsv(&format!("SELECT uniqExact(_id) FROM {}", s.table))
                        .await
                        .ok()
                        .and_then(|t| t.trim().parse::<u64>().ok());
                if let Some(landed) = landed {
                    report.max_backlog = report.max_backlog.max(confirmed.saturating_sub(landed));
                }
            }
            proxy.pass();
            report.notes.push(format!(
                "backlog in Redis peaked at {} entries while the group's pending peaked at {} (bound {})",
                report.max_backlog,
                report.max_pending,
                params.in_flight_bound(replicas)
            ));
        }
        Case::RedisCut => {
            let proxy = proxy.as_ref().expect("proxy");
            // A little latency keeps replies in flight long enough for the
            // cuts to land inside XREADGROUP / XACK / XAUTOCLAIM exchanges.
            proxy.delay(Duration::from_millis(2));
            while producing() {
                tokio::time::sleep(ms(&mut rng, 150, 800)).await;
                proxy.cut_all();
                report.faults += 1;
                fleet.check_alive();
                sample_pending(&s, &mut report).await;
            }
            proxy.pass();
        }
        Case::RedisMaxmemory => {
            let bad = tokio::spawn(produce_bad_rows(
                s.redis.client().await,
                s.stream.clone(),
                stats.clone(),
            ));
            while producing() {
                tokio::time::sleep(ms(&mut rng, 300, 800)).await;
                // A little headroom: the producers fill it, so the bad rows
                // read last before the limit have their dead letters refused.
                set_maxmemory(&s.rc, used_memory(&s.rc).await.0 + 64 * 1024).await;
                until(Duration::from_secs(10), || async {
                    let (used, max) = used_memory(&s.rc).await;
                    used > max
                })
                .await;
                tokio::time::sleep(ms(&mut rng, 300, 700)).await;
                if rng.random_bool(0.5) {
                    let victim = rng.random_range(0..fleet.workers.len());
                    fleet.kill_and_restart(victim);
                }
                tokio::time::sleep(ms(&mut rng, 300, 700)).await;
                set_maxmemory(&s.rc, 0).await;
                report.faults += 1;
                fleet.check_alive();
                sample_pending(&s, &mut report).await;
            }
            set_maxmemory(&s.rc, 0).await;
            let _ = bad.await;
        }
        Case::SchemaChange => {
            // A column added a fifth of the way in, one dropped halfway:
            // rows keep coming long after the ADD was re-read.
            let total = params.messages;
            let steps = [
                (
                    total / 5,
                    format!("ALTER TABLE {} ADD COLUMN {EXTRA_COLUMN} String", s.table),
                ),
                (
                    total / 2,
                    format!("ALTER TABLE {} DROP COLUMN data", s.table),
                ),
            ];
            for (at, sql) in steps {
                while producing() && stats.confirmed.lock().unwrap().len() < at {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    fleet.sample();
                    fleet.check_alive();
                    sample_pending(&s, &mut report).await;
                }
                match s.ch.try_exec(&sql).await {
                    Ok(()) => {
                        report.faults += 1;
                        added_ms.get_or_insert_with(unix_ms);
                    }
                    Err(e) => report.notes.push(format!("{sql}: {e}")),
                }
            }
            while producing() {
                tokio::time::sleep(Duration::from_millis(250)).await;
                fleet.check_alive();
                sample_pending(&s, &mut report).await;
            }
        }
        Case::SinkDown => {
            // The outage starts a fifth of the way in; a third into it
            // replica 0 is killed, two thirds in a new replica joins.
            let proxy = proxy.as_ref().expect("proxy");
            while producing() && stats.confirmed.lock().unwrap().len() < params.messages / 5 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            proxy.refuse();
            report.faults += 1;
            let down = Instant::now();
            let mut killed = false;
            while down.elapsed() < params.outage {
                tokio::time::sleep(Duration::from_millis(250)).await;
                sample_pending(&s, &mut report).await;
                fleet.sample();
                if !killed && down.elapsed() >= params.outage / 3 {
                    fleet.kill(0);
                    killed = true;
                    report.faults += 1;
                } else if killed && down.elapsed() >= params.outage * 2 / 3 {
                    if !fleet.workers[0].is_running() {
                        fleet.workers[0] = Worker::spawn(&fleet.config);
                        report.faults += 1;
                    }
                } else if !killed {
                    fleet.check_alive();
                }
            }
            proxy.pass();
            fleet.check_alive();
        }
    }
    let _ = producer.await;
    if case == Case::RedisRestart && !s.redis.ping().await {
        s.redis.start_again().await;
    }

    // Drain: everything in the stream is in ClickHouse or dead-lettered,
    // and nothing is pending.
    let dead_stream = format!("{}:dead", s.stream);
    let count_sql = format!("SELECT uniqExact(_id) FROM {}", s.table);
    report.drained = until(params.drain_limit, || async {
        let sent = xlen(&s.rc, &s.stream).await;
        let dead = xlen(&s.rc, &dead_stream).await;
        let landed =
            s.ch.try_query_tsv(&count_sql)
                .await
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or(0);
        let pending = pending(&s.rc, &s.stream).await;
        sent > 0 && landed + dead >= sent && pending == Some(0)
    })
    .await;
    fleet.check_alive();
    fleet.stop().await;
    drop(proxy);

    // Count.
    let confirmed: Vec<String> = std::mem::take(&mut *stats.confirmed.lock().unwrap());
    report.confirmed = confirmed.len() as u64;
    let stream_len = xlen(&s.rc, &s.stream).await;
    report.sent = stream_len.max(report.confirmed);
    report.rows = s.ch.count(&s.table).await;
    report.unique = s.ch.query_u64(&count_sql).await;
    report.duplicates = report.rows - report.unique;
    let dead = dead_ids(&s.rc, &dead_stream).await;
    report.dead = dead.len() as u64;
    let mut landed: HashSet<String> =
        s.ch.query_tsv(&format!("SELECT DISTINCT _id FROM {} FORMAT TSV", s.table))
            .await
            .lines()
            .map(str::to_string)
            .collect();
    landed.extend(dead);
    report.lost = stream_len.saturating_sub(landed.len() as u64);
    report.confirmed_missing = confirmed.iter().filter(|id| !landed.contains(*id)).count() as u64;
    report.lost = report.lost.max(report.confirmed_missing);
    if let Some(added) = added_ms {
        // Enqueued three re-read periods after the ADD: filled.
        let after = added + 3 * SCHEMA_REFRESH.as_millis() as u64;
        let by_id = "toUInt64(splitByChar('-', _id)[1])";
        let (ch, table) = (&s.ch, &s.table);
        let count = |filter: String| async move {
            ch.query_u64(&format!("SELECT count() FROM {table} WHERE {filter}"))
                .await
        };
        report.unfilled = count(format!("{EXTRA_COLUMN} = '' AND {by_id} > {after}")).await;
        let filled = count(format!("{EXTRA_COLUMN} != ''")).await;
        let late = count(format!("{by_id} > {after}")).await;
        report.notes.push(format!(
            "new column filled in {filled} rows; {late} rows enqueued 3 re-reads after the ADD, {} of them unfilled",
            report.unfilled
        ));
        if late == 0 {
            report.unfilled = u64::MAX;
            report
                .notes
                .push("no row enqueued late enough to judge the fill".into());
        }
    }
    if params.delivery == Delivery::ExactlyOnce && report.duplicates > 0 {
        // Which kind: one batch inserted twice (same batch id), or the
        // same entry in two different batches?
        let same_batch =
            s.ch.query_tsv(&format!(
                "SELECT countIf(b = 1), countIf(b > 1) FROM (SELECT _id, uniqExact(_batch) AS b \
                 FROM {} GROUP BY _id HAVING count() > 1) FORMAT TSV",
                s.table
            ))
            .await;
        let mut it = same_batch.split_whitespace();
        report.notes.push(format!(
            "duplicated ids: {} within one batch id (a batch inserted twice), {} across batch ids",
            it.next().unwrap_or("?"),
            it.next().unwrap_or("?")
        ));
    }
    report.peak_rss_kb = fleet.peak_kb;
    report.unexpected_exits = fleet.unexpected_exits;
    let errors = stats.errors.load(Ordering::Relaxed);
    if errors > 0 {
        report
            .notes
            .push(format!("{errors} XADDs failed while Redis was away"));
    }
    if fleet.orphan_reports > 0 {
        report.notes.push(format!(
            "replicas reported orphaned pending entries (reply lost on a cut) {} times; recovered by the claim pass",
            fleet.orphan_reports
        ));
    }
    if fleet.dead_letters_refused > 0 {
        report.notes.push(format!(
            "dead letters refused by Redis at maxmemory {} times; their sources stayed pending",
            fleet.dead_letters_refused
        ));
    }
    if fleet.ledger_writes_refused > 0 {
        report.notes.push(format!(
            "ledger records refused by Redis at maxmemory {} times; their batches waited",
            fleet.ledger_writes_refused
        ));
    }
    if fleet.panics > 0 {
        report
            .notes
            .push(format!("{} panics in replica logs", fleet.panics));
    }
    if !report.drained {
        let pending = pending(&s.rc, &s.stream).await;
        let mut note = format!("not drained: pending {pending:?}");
        for w in &fleet.workers {
            let _ = write!(
                note,
                "\n--- replica {} log tail ---\n{}",
                w.pid(),
                tail(&w.log_contents(), 3000)
            );
        }
        report.notes.push(note);
    }
    report.secs = started.elapsed().as_secs_f64();
    report
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn sample_pending(s: &Setup, report: &mut Report) {
    if let Some(p) = pending(&s.rc, &s.stream).await {
        report.max_pending = report.max_pending.max(p);
    }
}
