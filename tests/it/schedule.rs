//! Schedules against a real Redis and real worker processes: every tick
//! fired once by a fleet of three, pause/resume through `redis-cli HSET`,
//! the `sluice schedule …` commands, and the missed-tick policy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Output;

use fred::prelude::*;

use crate::common::*;
use crate::harness::{unique_name, wait_for, RedisServer, Worker};

/// A worker config with Redis only: schedules and delayed jobs, no flows.
pub fn redis_only_config(redis_url: &str, extra: &str) -> String {
    format!(
        r#"
[redis]
url = "{redis_url}"
[worker]
shutdown_timeout = "5s"
block = "200ms"
[scheduler]
refresh = "200ms"
promote_every = "50ms"
{extra}
"#
    )
}

/// `sluice <command> …` with a config file of its own.
pub struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    pub fn new(config_toml: &str) -> Cli {
        let dir = tempfile::Builder::new()
            .prefix("sluice-it-cli-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("sluice.toml"), config_toml).expect("write config");
        Cli { dir }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(args).arg("--config").arg(self.config_path());
        for (key, _) in std::env::vars_os() {
            if key
                .to_string_lossy()
                .to_ascii_uppercase()
                .starts_with("SLUICE")
            {
                cmd.env_remove(&key);
            }
        }
        cmd.env("NO_COLOR", "1")
            .output()
            .unwrap_or_else(|e| panic!("run sluice {args:?}: {e}"))
    }

    /// Runs and expects success; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "sluice {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and expects failure; returns stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "sluice {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

pub async fn hget(client: &Client, key: &str, field: &str) -> Option<String> {
    client
        .hget::<Option<String>, _, _>(key, field)
        .await
        .unwrap_or_else(|e| panic!("HGET {key} {field}: {e}"))
}

pub async fn hget_u64(client: &Client, key: &str, field: &str) -> u64 {
    hget(client, key, field)
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The `tick` field of every entry, in stream order.
async fn ticks_of(client: &Client, stream: &str) -> Vec<u64> {
    entries(client, stream)
        .await
        .iter()
        .map(|(id, f)| {
            field(f, "tick")
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("entry {id} has no numeric tick: {f:?}"))
        })
        .collect()
}

/// Consecutive ticks that are not `step` apart.
fn gaps(ticks: &[u64], step: u64) -> Vec<(u64, u64)> {
    ticks
        .windows(2)
        .filter(|w| w[1] - w[0] != step)
        .map(|w| (w[0], w[1]))
        .collect()
}

fn schedule_key(name: &str) -> String {
    format!("sluice:schedule:{{{name}}}")
}

fn local_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn three_replicas_fire_each_tick_once_and_redis_cli_pauses_and_resumes() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (every, every_out) = (unique_name("every"), unique_name("every_out"));
    let (cron, cron_out) = (unique_name("cron"), unique_name("cron_out"));
    let config = redis_only_config(
        &redis.url(),
        &format!(
            r#"
[[schedule]]
name = "{every}"
every = "200ms"
stream = "{every_out}"
fields = {{ tick = "{{tick}}", schedule = "{{name}}", fired_at = "{{now}}" }}

[[schedule]]
name = "{cron}"
cron = "* * * * * *"
stream = "{cron_out}"
fields = {{ tick = "{{tick}}" }}
"#
        ),
    );
    let mut fleet: Vec<Worker> = (0..3).map(|_| Worker::spawn(&config)).collect();
    wait_for(LONG, "20 ticks fired", || async {
        xlen(&rc, &every_out).await >= 20
    })
    .await;

    // Pause with the documented command, by the real redis-cli.
    let key = schedule_key(&every);
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port().to_string(),
            "HSET",
            &key,
            "state",
            "paused",
        ])
        .output()
        .expect("run redis-cli (apt-get install redis-tools)");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{out:?}");
    // The fire script reads the state atomically: nothing is added after this.
    let at_pause = xlen(&rc, &every_out).await;
    let tick_at_pause = hget_u64(&rc, &key, "last_tick").await;
    wait_for(LONG, "ten ticks passing while paused", || async {
        hget_u64(&rc, &key, "last_tick").await >= tick_at_pause + 2_000
    })
    .await;
    assert_eq!(
        xlen(&rc, &every_out).await,
        at_pause,
        "entries were added while paused"
    );
    assert_eq!(hget(&rc, &key, "state").await.as_deref(), Some("paused"));

    // Resume: the same HSET, here through a client.
    let _: i64 = rc.hset(&key, ("state", "running")).await.unwrap();
    wait_for(LONG, "20 more ticks after resuming", || async {
        xlen(&rc, &every_out).await >= at_pause + 20
    })
    .await;
    wait_for(LONG, "6 cron ticks", || async {
        xlen(&rc, &cron_out).await >= 6
    })
    .await;
    for w in &fleet {
        w.term();
    }
    for w in &mut fleet {
        let status = w.wait_exit(LONG).await.expect("worker exited");
        assert!(status.success(), "{}", w.log_contents());
        assert!(
            !w.log_contents().contains("firing a tick failed"),
            "{}",
            w.log_contents()
        );
    }

    // Every entry is its own tick, in order; no tick is missing except
    // those that passed while paused.
    let ticks = ticks_of(&rc, &every_out).await;
    let unique: BTreeSet<u64> = ticks.iter().copied().collect();
    assert_eq!(unique.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
    assert!(ticks.iter().all(|t| t % 200 == 0), "{ticks:?}");
    let g = gaps(&ticks, 200);
    assert_eq!(g.len(), 1, "exactly one gap, the pause: {g:?}");
    let (last_before, first_after) = g[0];
    assert!(last_before <= tick_at_pause, "{g:?} {tick_at_pause}");
    assert!(first_after > tick_at_pause + 2_000, "{g:?} {tick_at_pause}");
    assert_eq!(
        hget_u64(&rc, &key, "fired").await,
        ticks.len() as u64,
        "`fired` counts the entries"
    );
    let fields = &entries(&rc, &every_out).await[0].1;
    assert_eq!(field(fields, "schedule"), Some(every.as_str()));
    assert!(
        field(fields, "fired_at").unwrap().ends_with('Z'),
        "{fields:?}"
    );

    // Each tick's exactly-once key names the replica that took it.
    let pids: Vec<String> = fleet.iter().map(|w| format!("-{}-", w.pid())).collect();
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for t in &ticks {
        let owner: Option<String> = rc
            .get(format!("sluice:schedule:{{{every}}}:tick:{t}"))
            .await
            .unwrap();
        let owner = owner.unwrap_or_else(|| panic!("no tick key for {t}"));
        let pid = pids
            .iter()
            .find(|p| owner.contains(p.as_str()))
            .unwrap_or_else(|| panic!("tick {t} taken by {owner}, not one of {pids:?}"));
        *owners.entry(pid.clone()).or_default() += 1;
    }
    eprintln!("ticks taken per replica: {owners:?}");

    let cron_ticks = ticks_of(&rc, &cron_out).await;
    assert!(cron_ticks.len() >= 6);
    assert_eq!(gaps(&cron_ticks, 1_000), vec![], "{cron_ticks:?}");
    assert!(cron_ticks.iter().all(|t| t % 1_000 == 0), "{cron_ticks:?}");
}

#[tokio::test]
async fn schedule_commands_add_list_pause_trigger_resume_remove() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let config = redis_only_config(&redis.url(), "");
    let cli = Cli::new(&config);
    let w = Worker::spawn(&config);
    let (clock, clock_out) = (unique_name("clock"), unique_name("clock_out"));
    let (job, job_out) = (unique_name("job"), unique_name("job_out"));
    let (once, once_out) = (unique_name("once"), unique_name("once_out"));

    let out = cli.ok(&[
        "schedule", "add", &clock, "--every", "200ms", "--stream", &clock_out,
    ]);
    assert!(out.contains("added"), "{out}");
    let out = cli.ok(&[
        "schedule",
        "add",
        &job,
        "--every",
        "200ms",
        "--stream",
        &job_out,
        "--field",
        "task_for=report",
        "--field",
        "rec_id={name}-{tick}",
    ]);
    assert!(out.contains("state init"), "{out}");
    let at_ms = local_now_ms() + 3_000;
    let at = at_ms.to_string();
    cli.ok(&["schedule", "add", &once, "--at", &at, "--stream", &once_out]);
    let err = cli.fails(&[
        "schedule", "add", &clock, "--every", "1s", "--stream", &clock_out,
    ]);
    assert!(err.contains("exists") && err.contains("--replace"), "{err}");
    let err = cli.fails(&[
        "schedule",
        "add",
        "bad",
        "--cron",
        "61 * * * * *",
        "--stream",
        "x",
    ]);
    assert!(err.contains("--cron"), "{err}");

    // The worker picks them up at its next refresh.
    wait_for(LONG, "job fires", || async {
        xlen(&rc, &job_out).await >= 3
    })
    .await;
    let first = &entries(&rc, &job_out).await[0].1;
    assert_eq!(field(first, "task_for"), Some("report"));
    assert!(
        field(first, "rec_id")
            .unwrap()
            .starts_with(&format!("{job}-")),
        "{first:?}"
    );
    let list = cli.ok(&["schedule", "list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with(&job))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("running") && line.contains("every 200ms"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&cli.ok(&["schedule", "list", "--json"])).unwrap();
    let me = json
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == job.as_str())
        .unwrap()
        .clone();
    assert_eq!(me["state"], "running");
    assert_eq!(me["source"], "cli");
    assert!(me["fired"].as_u64().unwrap() >= 3, "{me}");

    // pause → ticks pass without entries; trigger still adds one.
    let out = cli.ok(&["schedule", "pause", &job]);
    assert!(out.contains("running -> paused"), "{out}");
    let paused_len = xlen(&rc, &job_out).await;
    let key = schedule_key(&job);
    let tick = hget_u64(&rc, &key, "last_tick").await;
    wait_for(LONG, "ticks pass while paused", || async {
        hget_u64(&rc, &key, "last_tick").await >= tick + 1_000
    })
    .await;
    assert_eq!(xlen(&rc, &job_out).await, paused_len);
    let out = cli.ok(&["schedule", "trigger", &job]);
    assert!(out.contains("fired"), "{out}");
    assert_eq!(xlen(&rc, &job_out).await, paused_len + 1);
    assert_eq!(hget_u64(&rc, &key, "triggered").await, 1);

    // resume → fires again.
    let out = cli.ok(&["schedule", "resume", &job]);
    assert!(out.contains("paused -> running"), "{out}");
    wait_for(LONG, "fires after resume", || async {
        xlen(&rc, &job_out).await >= paused_len + 4
    })
    .await;

    // The one-off fired once, at its time.
    wait_for(LONG, "the one-off", || async {
        xlen(&rc, &once_out).await == 1
    })
    .await;
    let (id, fields) = entries(&rc, &once_out).await.remove(0);
    assert_eq!(field(&fields, "tick"), Some(at.as_str()));
    let added_ms: u64 = id.split('-').next().unwrap().parse().unwrap();
    assert!(added_ms >= at_ms, "fired early: {id} < {at_ms}");

    // remove → no more entries, measured against the clock schedule.
    let out = cli.ok(&["schedule", "remove", &job]);
    assert!(out.contains("running -> removed"), "{out}");
    let removed_len = xlen(&rc, &job_out).await;
    let clock_len = xlen(&rc, &clock_out).await;
    wait_for(LONG, "the clock ticks on", || async {
        xlen(&rc, &clock_out).await >= clock_len + 5
    })
    .await;
    assert_eq!(xlen(&rc, &job_out).await, removed_len);
    let err = cli.fails(&["schedule", "resume", &job]);
    assert!(err.contains("removed"), "{err}");
    assert!(!cli.ok(&["schedule", "list"]).contains(&job));
    assert!(cli.ok(&["schedule", "list", "--all"]).contains("removed"));
    assert_eq!(xlen(&rc, &once_out).await, 1, "the one-off fired again");
    let err = cli.fails(&["schedule", "pause", "nope"]);
    assert!(err.contains("no schedule named `nope`"), "{err}");
    assert!(
        w.log_contents().contains("no longer firing"),
        "{}",
        w.log_contents()
    );
}

#[tokio::test]
async fn missed_ticks_after_downtime_are_skipped_or_caught_up() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (skip, skip_out) = (unique_name("skip"), unique_name("skip_out"));
    let (catch, catch_out) = (unique_name("catch"), unique_name("catch_out"));
    let config = redis_only_config(
        &redis.url(),
        &format!(
            r#"
[[schedule]]
name = "{skip}"
every = "200ms"
stream = "{skip_out}"
grace = "1s"
missed = "skip"

[[schedule]]
name = "{catch}"
every = "200ms"
stream = "{catch_out}"
grace = "1s"
missed = {{ catch_up = 3 }}
"#
        ),
    );
    // Both ran until a minute ago, when the whole fleet went down.
    let down_at = (local_now_ms() - 60_000) / 200 * 200;
    for name in [&skip, &catch] {
        let _: i64 = rc
            .hset(
                schedule_key(name),
                [
                    ("state", "running".to_string()),
                    ("last_tick", down_at.to_string()),
                ],
            )
            .await
            .unwrap();
    }
    let started = local_now_ms();
    let w = Worker::spawn(&config);
    wait_for(LONG, "both fire again", || async {
        xlen(&rc, &skip_out).await >= 10 && xlen(&rc, &catch_out).await >= 10
    })
    .await;
    let skipped = ticks_of(&rc, &skip_out).await;
    let caught = ticks_of(&rc, &catch_out).await;
    // Each runs without gaps from its first tick on.
    assert_eq!(gaps(&skipped, 200), vec![], "{skipped:?}");
    assert_eq!(gaps(&caught, 200), vec![], "{caught:?}");
    // skip: nothing older than the grace period at start-up.
    assert!(skipped[0] >= started - 1_000, "{} < {started}", skipped[0]);
    // catch_up = 3: exactly three ticks before those — in the same pass.
    assert_eq!(caught[0] + 600, skipped[0], "{caught:?} vs {skipped:?}");
    assert!(caught[0] > down_at);
    assert!(
        w.log_contents().contains("were left out"),
        "{}",
        w.log_contents()
    );
    // The config upsert kept the state and progress that were in Redis.
    assert_eq!(
        hget(&rc, &schedule_key(&skip), "source").await.as_deref(),
        Some("config")
    );
}
