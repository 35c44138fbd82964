//! Schedules: entries added to a stream on a cron / interval / one-off
//! trigger, fired exactly once per tick however many replicas run, with
//! their state in Redis so that `sluice schedule …` and plain `redis-cli`
//! both control them.
//!
//! - [`spec`]: the definition (`[[schedule]]` or Redis hash) and tick arithmetic.
//! - [`store`]: the Redis keys and the Lua scripts that change them.
//! - [`runner`]: the loop each replica runs.
//! - [`cli`]: `sluice schedule list|pause|resume|trigger|add|remove`.
//!
//! Keys and values are documented in docs/SCHEDULING.md.

pub(crate) mod runner;
pub(crate) mod spec;
pub(crate) mod store;

use crate::config::Config;
use crate::redis::client;
use crate::redis::delayed::Promoter;
use crate::redis::sharder::Sharder;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts the schedule loop and the delayed-job promoter (unless
/// `[scheduler] enabled = false`). They stop when `shutdown` is cancelled.
pub(crate) async fn spawn(
    config: &Config,
    owner: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    if !config.scheduler.enabled {
        return Ok(Vec::new());
    }
    let client = client::connect(&config.redis)
        .await
        .map_err(|e| anyhow::anyhow!("redis.url: cannot connect for schedules: {e}"))?;
    let scheduler = runner::Scheduler {
        client: client.clone(),
        owner: owner.to_string(),
        refresh: config.scheduler.refresh,
        config_schedules: config.schedules.clone(),
        sharder: Sharder::new(config),
        cluster: config.redis.is_cluster(),
    };
    let promoter = Promoter {
        client,
        every: config.scheduler.promote_every,
        batch: config.scheduler.promote_batch,
    };
    Ok(vec![
        tokio::spawn(scheduler.run(shutdown.clone())),
        tokio::spawn(promoter.run(shutdown)),
    ])
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = r#"
[redis]
url = "redis://127.0.0.1:6379"
[scheduler]
refresh = "200ms"
[[schedule]]
name = "a"
every = "1s"
stream = "s"
fields = { tick = "{tick}" }
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml_with_env(text, "t.toml", Vec::<(String, String)>::new())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn schedules_parse_and_errors_name_the_key() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.schedules.len(), 1);
        assert_eq!(c.scheduler.refresh, std::time::Duration::from_millis(200));
        let err = parse(&BASE.replace("every = \"1s\"", "cron = \"61 * * * * *\"")).unwrap_err();
        assert!(err.contains("schedule[0].cron"), "{err}");
        let err = parse(&BASE.replace("{tick}", "{tock}")).unwrap_err();
        assert!(
            err.contains("schedule[0].fields") && err.contains("tock"),
            "{err}"
        );
        let err = parse(&format!(
            "{BASE}[[schedule]]\nname = \"a\"\nevery = \"2s\"\nstream = \"t\"\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("schedule[1].name") && err.contains("duplicate"),
            "{err}"
        );
        let err = parse(&BASE.replace("stream = \"s\"", "stream = \"s\"\nrepeat = 3")).unwrap_err();
        assert!(
            err.contains("schedule[0]") && err.contains("repeat"),
            "{err}"
        );
        let err = parse(&BASE.replace("refresh = \"200ms\"", "refresh = \"1ms\"")).unwrap_err();
        assert!(err.contains("scheduler.refresh"), "{err}");
    }

    #[test]
    fn env_overrides_reach_schedules() {
        let c = Config::from_toml_with_env(
            BASE,
            "t.toml",
            [("SLUICE_SCHEDULE__0__EVERY".to_string(), "5s".to_string())],
        )
        .unwrap();
        assert_eq!(
            c.schedules[0].every,
            Some(std::time::Duration::from_secs(5))
        );
    }

    #[test]
    fn flow_retry_is_validated() {
        let text = r#"
[redis]
url = "redis://127.0.0.1:6379"
[clickhouse]
url = "http://127.0.0.1:8123"
[[flow]]
name = "f"
streams = ["s"]
sink = { type = "clickhouse", table = "t" }
handler = { type = "exec", command = ["./handle"] }
retry = { base = "10s", max = "1s" }
"#;
        let err = parse(text).unwrap_err();
        assert!(
            err.contains("flow[0].retry") && err.contains("max"),
            "{err}"
        );
        let ok = parse(&text.replace("max = \"1s\"", "max = \"1m\"")).unwrap();
        let r = ok.flows[0].retry.as_ref().unwrap();
        assert_eq!(r.backoff, crate::config::BackoffKind::Exponential);
        assert!(r.jitter);
    }
}
