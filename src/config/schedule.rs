//! `[scheduler]` and `[[schedule]]`: what a schedule is — its trigger (cron
//! with seconds, `every`, `at`), its window (`start`/`end`), its
//! missed-tick policy and its templated fields — built and checked from a
//! config table or from the schedule's Redis hash. The tick arithmetic and
//! the Redis side live in `crate::schedule`.
//!
//! All times are Unix milliseconds, UTC.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::{key_error, Result as ConfigResult};
use crate::template::{self, Syntax};

/// Unix time in milliseconds.
pub type Millis = u64;

/// The shortest `every`: each tick costs every replica one script call.
pub const MIN_EVERY: Duration = Duration::from_millis(50);

/// `[[schedule]]` in the config file.
///
/// ```toml
/// [[schedule]]
/// name = "nightly-report"
/// cron = "0 30 2 * * *"      # sec min hour day-of-month month day-of-week [year], UTC
/// # every = "10s"            # or: a fixed interval, aligned to `start` (else to the Unix epoch)
/// # at = "2026-12-01T09:00:00Z"  # or: once
/// start = "2026-01-01T00:00:00Z" # optional: no tick before
/// end = "2027-01-01T00:00:00Z"   # optional: no tick after
/// stream = "jobs"
/// fields = { task_for = "report", rec_id = "{name}-{tick}", requested_at = "{now}" }
/// missed = "skip"            # or { catch_up = 3 }: ticks missed while no replica ran
/// grace = "5s"               # a tick fired this late is on time, not missed
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `[A-Za-z0-9_.-]+`; the Redis keys are named after it.
    pub name: String,
    /// Cron with seconds: `sec min hour dom month dow [year]`, in UTC. A
    /// five-field crontab line is read with seconds = 0.
    #[serde(default)]
    pub cron: Option<String>,
    /// A fixed interval, e.g. `"200ms"`, `"10s"`, `"1h"`.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Once, at this RFC 3339 time (or Unix milliseconds).
    #[serde(default)]
    pub at: Option<String>,
    /// No tick before this time (RFC 3339 or Unix ms); `every` ticks are
    /// aligned to it.
    #[serde(default)]
    pub start: Option<String>,
    /// No tick after this time.
    #[serde(default)]
    pub end: Option<String>,
    /// The stream each tick's entry is added to.
    pub stream: String,
    /// The entry's fields; values may use `{now}`, `{now_ms}`, `{tick}`,
    /// `{tick_iso}` and `{name}` (`{{`/`}}` for literal braces). Empty =
    /// `schedule = "{name}"`, `tick = "{tick}"`.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Ticks that came due while no replica could fire them (older than `grace`).
    #[serde(default)]
    pub missed: MissedPolicy,
    /// How late a tick may fire and still count as on time.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace: Duration,
    /// Create the schedule paused (only when Redis does not know it yet).
    #[serde(default)]
    pub paused: bool,
}

pub fn default_grace() -> Duration {
    Duration::from_secs(5)
}

/// What to do with ticks that came due more than `grace` ago and were not
/// fired (every replica was down, or Redis was unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// Drop them; carry on with the next tick.
    #[default]
    Skip,
    /// Fire at most this many of them (the most recent ones), late, in order.
    CatchUp(u32),
}

impl std::fmt::Display for MissedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MissedPolicy::Skip => f.write_str("skip"),
            MissedPolicy::CatchUp(k) => write!(f, "catch_up:{k}"),
        }
    }
}

impl FromStr for MissedPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "skip" {
            return Ok(MissedPolicy::Skip);
        }
        let k = s
            .strip_prefix("catch_up")
            .map(|r| r.trim_start_matches([':', '=', ' ']))
            .ok_or_else(|| format!("{s:?}: expected `skip` or `catch_up:K`"))?;
        k.parse()
            .map(MissedPolicy::CatchUp)
            .map_err(|_| format!("{s:?}: K in `catch_up:K` must be a whole number"))
    }
}

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum Trigger {
    Cron(Box<cron::Schedule>),
    Every(Duration),
    At(Millis),
}

impl Trigger {
    /// The Redis hash field that stores this trigger, and its value.
    pub fn hash_field(&self) -> (&'static str, String) {
        match self {
            Trigger::Cron(c) => ("cron", c.source().to_string()),
            Trigger::Every(d) => ("every", humantime::format_duration(*d).to_string()),
            Trigger::At(ms) => ("at", format_time(*ms)),
        }
    }

    /// Human-readable, for `sluice schedule list`.
    pub fn describe(&self) -> String {
        let (k, v) = self.hash_field();
        format!("{k} {v}")
    }
}

/// One placeholder-checked field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

/// Values the placeholders of a tick's fields are filled with.
#[derive(Debug, Clone, Copy)]
pub struct TickContext<'a> {
    pub name: &'a str,
    pub tick: Millis,
    pub now: Millis,
}

pub const PLACEHOLDERS: &[&str] = &["now", "now_ms", "tick", "tick_iso", "name"];

/// Field values: `{{`/`}}` are literal braces, placeholders are
/// [`PLACEHOLDERS`].
const FIELD_SYNTAX: Syntax = Syntax {
    escaped_braces: true,
    known: Some(PLACEHOLDERS),
};

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        template::parse(text, FIELD_SYNTAX)?;
        Ok(Template(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn render(&self, ctx: &TickContext<'_>) -> String {
        let Ok(pieces) = template::parse(&self.0, FIELD_SYNTAX) else {
            return self.0.clone(); // checked in parse
        };
        template::render(&pieces, |name| match name {
            "now" => format_time(ctx.now),
            "now_ms" => ctx.now.to_string(),
            "tick" => ctx.tick.to_string(),
            "tick_iso" => format_time(ctx.tick),
            "name" => ctx.name.to_string(),
            _ => String::new(), // checked in parse
        })
    }
}

/// A schedule ready to compute ticks and render entries.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub trigger: Trigger,
    pub start: Option<Millis>,
    pub end: Option<Millis>,
    pub stream: String,
    pub fields: Vec<(String, Template)>,
    pub missed: MissedPolicy,
    pub grace: Duration,
}

/// A problem with one key of a schedule definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct SpecError {
    pub key: &'static str,
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        key,
        message: message.into(),
    }
}

/// Checks a schedule name: it becomes part of Redis key names.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > 200 {
        return Err(err("name", "must be 1 to 200 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(err(
            "name",
            format!("{name:?}: only letters, digits, `_`, `-` and `.` are allowed"),
        ));
    }
    Ok(())
}

/// Parses a cron line with seconds; five fields are read as a crontab line at second 0.
pub fn parse_cron(text: &str) -> Result<cron::Schedule, SpecError> {
    let trimmed = text.split_whitespace().collect::<Vec<_>>();
    let line = if trimmed.len() == 5 {
        format!("0 {}", trimmed.join(" "))
    } else {
        trimmed.join(" ")
    };
    cron::Schedule::from_str(&line).map_err(|e| {
        err(
            "cron",
            format!(
                "{text:?}: {e} (expected `sec min hour day-of-month month day-of-week [year]`)"
            ),
        )
    })
}

/// Parses RFC 3339 (`2026-01-01T00:00:00Z`, any offset) or Unix milliseconds.
pub fn parse_time(text: &str) -> Result<Millis, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| format!("{t:?}: too large"));
    }
    let dt = DateTime::parse_from_rfc3339(t)
        .map_err(|e| format!("{t:?}: not an RFC 3339 time or Unix milliseconds ({e})"))?;
    u64::try_from(dt.timestamp_millis()).map_err(|_| format!("{t:?}: before 1970"))
}

/// RFC 3339, UTC, milliseconds: `2026-01-01T00:00:00.000Z`.
pub fn format_time(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Raw definition values, from config or from a Redis hash.
#[derive(Debug, Clone, Default)]
pub struct RawSpec<'a> {
    pub name: &'a str,
    pub cron: Option<&'a str>,
    pub every: Option<Duration>,
    pub at: Option<&'a str>,
    pub start: Option<&'a str>,
    pub end: Option<&'a str>,
    pub stream: &'a str,
    pub fields: Vec<(&'a str, &'a str)>,
    pub missed: MissedPolicy,
    pub grace: Duration,
}

impl Spec {
    pub fn from_raw(raw: &RawSpec<'_>) -> Result<Spec, SpecError> {
        check_name(raw.name)?;
        let trigger = match (raw.cron, raw.every, raw.at) {
            (Some(c), None, None) => Trigger::Cron(Box::new(parse_cron(c)?)),
            (None, Some(d), None) => {
                if d < MIN_EVERY {
                    return Err(err(
                        "every",
                        format!("must be at least {}", humantime::format_duration(MIN_EVERY)),
                    ));
                }
                Trigger::Every(d)
            }
            (None, None, Some(at)) => Trigger::At(parse_time(at).map_err(|m| err("at", m))?),
            (None, None, None) => {
                return Err(err("cron", "one of `cron`, `every` or `at` is required"))
            }
            _ => return Err(err("cron", "give only one of `cron`, `every` and `at`")),
        };
        let start = raw
            .start
            .map(parse_time)
            .transpose()
            .map_err(|m| err("start", m))?;
        let end = raw
            .end
            .map(parse_time)
            .transpose()
            .map_err(|m| err("end", m))?;
        if let (Some(s), Some(e)) = (start, end) {
            if e < s {
                return Err(err("end", "is before `start`"));
            }
        }
        if raw.stream.is_empty() {
            return Err(err("stream", "must not be empty"));
        }
        let mut fields = Vec::with_capacity(raw.fields.len().max(2));
        for (k, v) in &raw.fields {
            if k.is_empty() {
                return Err(err("fields", "empty field name"));
            }
            fields.push((
                k.to_string(),
                Template::parse(v).map_err(|m| err("fields", m))?,
            ));
        }
        if fields.is_empty() {
            fields.push(("schedule".into(), Template("{name}".into())));
            fields.push(("tick".into(), Template("{tick}".into())));
        }
        if raw.grace.is_zero() {
            return Err(err("grace", "must be > 0"));
        }
        Ok(Spec {
            name: raw.name.to_string(),
            trigger,
            start,
            end,
            stream: raw.stream.to_string(),
            fields,
            missed: raw.missed,
            grace: raw.grace,
        })
    }

    pub fn from_config(c: &ScheduleConfig) -> Result<Spec, SpecError> {
        Spec::from_raw(&RawSpec {
            name: &c.name,
            cron: c.cron.as_deref(),
            every: c.every,
            at: c.at.as_deref(),
            start: c.start.as_deref(),
            end: c.end.as_deref(),
            stream: &c.stream,
            fields: c
                .fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            missed: c.missed,
            grace: c.grace,
        })
    }

    /// The definition as Redis hash fields. Absent optional keys are given
    /// as empty values (the store deletes them).
    pub fn hash_fields(&self) -> Vec<(&'static str, String)> {
        let (tk, tv) = self.trigger.hash_field();
        let mut out = vec![];
        for k in ["cron", "every", "at"] {
            out.push((k, if k == tk { tv.clone() } else { String::new() }));
        }
        out.push(("start", self.start.map(format_time).unwrap_or_default()));
        out.push(("end", self.end.map(format_time).unwrap_or_default()));
        out.push(("stream", self.stream.clone()));
        let fields: serde_json::Map<String, serde_json::Value> = self
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.0.clone())))
            .collect();
        out.push(("fields", serde_json::Value::Object(fields).to_string()));
        out.push(("missed", self.missed.to_string()));
        out.push(("grace", humantime::format_duration(self.grace).to_string()));
        out
    }

    /// Reads the definition from a schedule's Redis hash.
    pub fn from_hash(name: &str, h: &HashMap<String, String>) -> Result<Spec, SpecError> {
        let get = |k: &str| {
            h.get(k)
                .map(String::as_str)
                .filter(|v| !v.trim().is_empty())
        };
        let every = get("every")
            .map(humantime::parse_duration)
            .transpose()
            .map_err(|e| err("every", e.to_string()))?;
        let fields_json: BTreeMap<String, String> = match get("fields") {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| err("fields", format!("must be a JSON object of strings: {e}")))?,
            None => BTreeMap::new(),
        };
        let missed = get("missed")
            .map(MissedPolicy::from_str)
            .transpose()
            .map_err(|m| err("missed", m))?
            .unwrap_or_default();
        let grace = get("grace")
            .map(humantime::parse_duration)
            .transpose()
            .map_err(|e| err("grace", e.to_string()))?
            .unwrap_or_else(default_grace);
        Spec::from_raw(&RawSpec {
            name,
            cron: get("cron"),
            every,
            at: get("at"),
            start: get("start"),
            end: get("end"),
            stream: get("stream").ok_or_else(|| err("stream", "is missing"))?,
            fields: fields_json
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            missed,
            grace,
        })
    }
}

/// `[scheduler]`: the schedule loop and the delayed-job promoter that every
/// worker runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Run schedules and move due delayed jobs in this worker.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often schedules are re-read from Redis (added, changed, removed).
    /// Pause and resume act at the next tick regardless.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// How often each replica looks for due delayed jobs.
    #[serde(default = "default_promote_every", with = "humantime_serde")]
    pub promote_every: Duration,
    /// Most delayed jobs moved by one script call.
    #[serde(default = "default_promote_batch")]
    pub promote_batch: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            enabled: true,
            refresh: default_refresh(),
            promote_every: default_promote_every(),
            promote_batch: default_promote_batch(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_refresh() -> Duration {
    Duration::from_secs(1)
}
fn default_promote_every() -> Duration {
    Duration::from_millis(100)
}
fn default_promote_batch() -> usize {
    1000
}

/// Checks `[scheduler]` and every `[[schedule]]`; the error names the key.
pub(crate) fn validate(
    scheduler: &SchedulerConfig,
    schedules: &[ScheduleConfig],
) -> ConfigResult<()> {
    if scheduler.refresh < Duration::from_millis(10) {
        return Err(key_error("scheduler.refresh", "must be at least 10ms"));
    }
    if scheduler.promote_every < Duration::from_millis(1) {
        return Err(key_error("scheduler.promote_every", "must be at least 1ms"));
    }
    if scheduler.promote_batch == 0 || scheduler.promote_batch > 100_000 {
        return Err(key_error(
            "scheduler.promote_batch",
            "must be between 1 and 100000",
        ));
    }
    let mut names = HashSet::new();
    for (i, s) in schedules.iter().enumerate() {
        if let Err(e) = Spec::from_config(s) {
            return Err(key_error(&format!("schedule[{i}].{}", e.key), e.message));
        }
        if !names.insert(s.name.as_str()) {
            return Err(key_error(
                &format!("schedule[{i}].name"),
                format!("duplicate schedule name {:?}", s.name),
            ));
        }
    }
    Ok(())
}
