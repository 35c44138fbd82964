//! `sluice schedule list|pause|resume|trigger|add|remove`: the same changes
//! an operator can make with `redis-cli` on the documented keys, checked
//! against the state machine.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::redis::client;
use crate::redis::sharder::Sharder;
use crate::schedule::spec;
use crate::schedule::spec::Millis;
use crate::schedule::spec::SpecError;
use crate::schedule::spec::Trigger;
use crate::schedule::spec::{MissedPolicy, RawSpec, Spec};
use crate::schedule::store::{self, Action};
use crate::time::now_ms;

#[derive(Debug, Args)]
pub(crate) struct ScheduleArgs {
    /// Config file (only `[redis]` is used).
    #[arg(long, short, env = "SLUICE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ScheduleCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Every schedule: state, trigger, stream, next tick, last tick, entries fired.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Include removed schedules.
        #[arg(long)]
        all: bool,
    },
    /// Stop firing: ticks pass without entries (= `HSET 'sluice:schedule:{NAME}' state paused`).
    Pause { name: String },
    /// Fire again from the next tick on (= `HSET 'sluice:schedule:{NAME}' state running`).
    Resume { name: String },
    /// Add one entry now, outside the tick sequence (`{tick}` = now).
    Trigger { name: String },
    /// Create a schedule at run time (it starts at the next refresh of the workers).
    Add(AddArgs),
    /// Never fire again; kept as a tombstone (= `HSET 'sluice:schedule:{NAME}' state removed`).
    Remove { name: String },
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    pub name: String,
    /// Cron with seconds: `sec min hour day-of-month month day-of-week [year]` (UTC).
    #[arg(long, group = "trigger")]
    pub cron: Option<String>,
    /// A fixed interval, e.g. `10s`.
    #[arg(long, group = "trigger", value_parser = humantime::parse_duration)]
    pub every: Option<Duration>,
    /// Once, at this RFC 3339 time or Unix ms.
    #[arg(long, group = "trigger")]
    pub at: Option<String>,
    /// No tick before (RFC 3339 or Unix ms).
    #[arg(long)]
    pub start: Option<String>,
    /// No tick after (RFC 3339 or Unix ms).
    #[arg(long)]
    pub end: Option<String>,
    /// The stream each tick's entry goes to.
    #[arg(long)]
    pub stream: String,
    /// `name=value` of the entry (repeat); values may use {now}, {now_ms},
    /// {tick}, {tick_iso}, {name}.
    #[arg(long = "field", value_parser = parse_field)]
    pub fields: Vec<(String, String)>,
    /// Ticks missed while no replica ran: `skip` or `catch_up:K`.
    #[arg(long, default_value = "skip")]
    pub missed: MissedPolicy,
    /// How late a tick may fire and still count as on time.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Create it paused.
    #[arg(long)]
    pub paused: bool,
    /// Overwrite an existing schedule of that name (its progress restarts).
    #[arg(long)]
    pub replace: bool,
}

fn parse_field(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: expected name=value"))
}

/// Runs one `sluice schedule …` command and prints its result.
pub(crate) async fn main(args: ScheduleArgs) -> anyhow::Result<()> {
    let path = args
        .config
        .context("--config (or SLUICE_CONFIG) is required")?;
    let config = Config::load(&path)?;
    let client = client::connect(&config.redis).await.context("redis.url")?;
    print!("{}", run(&client, args.command, &config).await?);
    Ok(())
}

/// Runs one command against Redis; returns what to print.
pub(crate) async fn run(
    client: &fred::prelude::Client,
    cmd: ScheduleCommand,
    config: &Config,
) -> anyhow::Result<String> {
    let now = now_ms();
    let mut out = String::new();
    match cmd {
        ScheduleCommand::List { json, all } => {
            let list: Vec<serde_json::Value> = store::load_all(client)
                .await?
                .iter()
                .filter(|s| all || s.state != "removed")
                .map(|s| store::describe(s, now))
                .collect();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                out.push_str(&render_table(&list));
            }
        }
        ScheduleCommand::Pause { name } => {
            let from = store::set_state(client, &name, Action::Pause, now).await?;
            writeln!(out, "{name}: {from} -> paused")?;
        }
        ScheduleCommand::Resume { name } => {
            let from = store::set_state(client, &name, Action::Resume, now).await?;
            writeln!(out, "{name}: {from} -> running")?;
        }
        ScheduleCommand::Remove { name } => {
            let from = store::set_state(client, &name, Action::Remove, now).await?;
            writeln!(out, "{name}: {from} -> removed")?;
        }
        ScheduleCommand::Trigger { name } => {
            let sharder = Sharder::new(config);
            let id =
                store::trigger(client, &name, now, &sharder, config.redis.is_cluster()).await?;
            writeln!(out, "{name}: fired {id}")?;
        }
        ScheduleCommand::Add(a) => {
            let spec = a
                .spec(now)
                .map_err(|e| anyhow::anyhow!("--{}: {}", e.key, e.message))?;
            store::add(client, &spec, a.paused, a.replace, now).await?;
            let state = if a.paused { "paused" } else { "init" };
            writeln!(
                out,
                "{}: added ({}, stream `{}`), state {state}",
                spec.name,
                spec.trigger.describe(),
                spec.stream
            )?;
        }
    }
    Ok(out)
}

impl AddArgs {
    /// The definition, checked as `add` checks it (a one-off time must
    /// still be ahead); the error names the option.
    pub(crate) fn spec(&self, now: Millis) -> Result<Spec, SpecError> {
        let spec = Spec::from_raw(&RawSpec {
            name: &self.name,
            cron: self.cron.as_deref(),
            every: self.every,
            at: self.at.as_deref(),
            start: self.start.as_deref(),
            end: self.end.as_deref(),
            stream: &self.stream,
            fields: self
                .fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            missed: self.missed,
            grace: self.grace,
        })?;
        check_new(&spec, now)?;
        Ok(spec)
    }
}

/// What `add` checks beyond the definition itself: a one-off time must
/// still be ahead.
fn check_new(spec: &Spec, now: Millis) -> Result<(), SpecError> {
    match spec.trigger {
        Trigger::At(at) if at <= now => Err(SpecError {
            key: "at",
            message: format!("{} is in the past", spec::format_time(at)),
        }),
        _ => Ok(()),
    }
}

fn render_table(list: &[serde_json::Value]) -> String {
    let headers = [
        "NAME",
        "STATE",
        "TRIGGER",
        "STREAM",
        "NEXT",
        "LAST TICK",
        "FIRED",
        "SOURCE",
    ];
    let keys = [
        "name",
        "state",
        "trigger",
        "stream",
        "next",
        "last_tick",
        "fired",
        "source",
    ];
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|v| {
            keys.iter()
                .map(|k| match &v[*k] {
                    serde_json::Value::Null => "-".to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    if rows.is_empty() {
        out.push_str("(no schedules)\n");
    }
    out
}
