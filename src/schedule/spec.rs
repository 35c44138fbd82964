//! What a schedule is — its trigger (cron with seconds, `every`, `at`), its
//! window (`start`/`end`), its missed-tick policy and its templated fields —
//! and the pure tick arithmetic. Built from a `[[schedule]]` table or from
//! the schedule's Redis hash; nothing here talks to Redis.
//!
//! All times are Unix milliseconds, UTC.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

/// Unix time in milliseconds.
pub type Millis = u64;

/// The shortest `every`: each tick costs every replica one script call.
pub const MIN_EVERY: Duration = Duration::from_millis(50);

/// Most ticks one pass fires for one schedule (a bound, not a policy).
pub const MAX_TICKS_PER_PASS: usize = 1000;

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

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        render_with(text, |name| {
            if PLACEHOLDERS.contains(&name) {
                Ok(String::new())
            } else {
                Err(format!(
                    "unknown placeholder `{{{name}}}` in {text:?} (known: {})",
                    PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        })?;
        Ok(Template(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn render(&self, ctx: &TickContext<'_>) -> String {
        render_with(&self.0, |name| {
            Ok(match name {
                "now" => format_time(ctx.now),
                "now_ms" => ctx.now.to_string(),
                "tick" => ctx.tick.to_string(),
                "tick_iso" => format_time(ctx.tick),
                "name" => ctx.name.to_string(),
                _ => String::new(), // checked in parse
            })
        })
        .unwrap_or_else(|_| self.0.clone())
    }
}

/// Expands `{name}` placeholders through `value`; `{{` and `}}` are literal braces.
fn render_with(
    text: &str,
    mut value: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let rest = &text[i + 1..];
                let close = rest
                    .find('}')
                    .ok_or_else(|| format!("unclosed `{{` in {text:?}"))?;
                let name = &rest[..close];
                if name.is_empty() || name.contains('{') {
                    return Err(format!("bad placeholder in {text:?}"));
                }
                out.push_str(&value(name)?);
                for _ in 0..=close {
                    chars.next();
                }
            }
            '}' => return Err(format!("unmatched `}}` in {text:?} (write `}}}}`)")),
            c => out.push(c),
        }
    }
    Ok(out)
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

fn to_datetime(ms: Millis) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms.min(i64::MAX as u64 / 2) as i64)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The current wall-clock time.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    pub fn from_hash(
        name: &str,
        h: &std::collections::HashMap<String, String>,
    ) -> Result<Spec, SpecError> {
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

    fn anchor(&self) -> Millis {
        self.start.unwrap_or(0)
    }

    /// The trigger's first tick strictly after `t`, ignoring the window.
    fn trigger_after(&self, t: Millis) -> Option<Millis> {
        match &self.trigger {
            Trigger::Every(d) => {
                let every = d.as_millis() as u64;
                let anchor = self.anchor();
                if t < anchor {
                    Some(anchor)
                } else {
                    ((t - anchor) / every)
                        .checked_add(1)?
                        .checked_mul(every)?
                        .checked_add(anchor)
                }
            }
            Trigger::At(at) => (*at > t).then_some(*at),
            Trigger::Cron(c) => c
                .after(&to_datetime(t))
                .next()
                .and_then(|d| u64::try_from(d.timestamp_millis()).ok())
                .filter(|&n| n > t),
        }
    }

    /// The trigger's last tick strictly before `t`, ignoring the window.
    fn trigger_before(&self, t: Millis) -> Option<Millis> {
        match &self.trigger {
            Trigger::Every(d) => {
                let every = d.as_millis() as u64;
                let anchor = self.anchor();
                if t <= anchor {
                    None
                } else {
                    Some(anchor + (t - anchor - 1) / every * every)
                }
            }
            Trigger::At(at) => (*at < t).then_some(*at),
            Trigger::Cron(c) => {
                let mut it = c.after(&to_datetime(t));
                // The cron crate steps back from whole seconds; skip any
                // answer that is not strictly earlier.
                for _ in 0..3 {
                    let prev = it.next_back()?;
                    let ms = u64::try_from(prev.timestamp_millis()).ok()?;
                    if ms < t {
                        return Some(ms);
                    }
                }
                None
            }
        }
    }

    /// The first tick strictly after `t` within `start`..=`end`.
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        let from = match self.start {
            Some(s) if s > 0 && t < s => s - 1,
            _ => t,
        };
        let next = self.trigger_after(from)?;
        match self.end {
            Some(e) if next > e => None,
            _ => Some(next),
        }
    }

    /// The last tick strictly before `t` within `start`..=`end`.
    pub fn prev_before(&self, t: Millis) -> Option<Millis> {
        let from = match self.end {
            Some(e) if t > e => e.saturating_add(1),
            _ => t,
        };
        let prev = self.trigger_before(from)?;
        match self.start {
            Some(s) if prev < s => None,
            _ => Some(prev),
        }
    }

    /// The ticks to fire now, in order, given that every tick up to and
    /// including `cursor` has been dealt with. Ticks no older than `grace`
    /// are on time and all fired; older ones were missed and follow the
    /// policy (`skip`: none, `catch_up:K`: the latest K).
    pub fn due(&self, cursor: Millis, now: Millis) -> Due {
        let grace = self.grace.as_millis() as u64;
        let on_time_from = now.saturating_sub(grace);
        let mut due = Due::default();
        if on_time_from > cursor.saturating_add(1) {
            // Ticks in (cursor, on_time_from) were missed.
            let keep = match self.missed {
                MissedPolicy::Skip => 0,
                MissedPolicy::CatchUp(k) => k as usize,
            };
            let mut missed = Vec::new();
            let mut t = on_time_from;
            while let Some(p) = self.prev_before(t) {
                if p <= cursor {
                    break;
                }
                if missed.len() == keep.min(MAX_TICKS_PER_PASS) {
                    due.skipped = true;
                    break;
                }
                missed.push(p);
                t = p;
            }
            missed.reverse();
            due.ticks = missed;
        }
        let mut t = cursor.max(on_time_from.saturating_sub(1));
        while due.ticks.len() < MAX_TICKS_PER_PASS {
            match self.next_after(t) {
                Some(n) if n <= now => {
                    due.ticks.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        due
    }

    /// Renders the entry fields of one tick.
    pub fn render(&self, tick: Millis, now: Millis) -> Vec<(String, String)> {
        let ctx = TickContext {
            name: &self.name,
            tick,
            now,
        };
        self.fields
            .iter()
            .map(|(k, v)| (k.clone(), v.render(&ctx)))
            .collect()
    }

    /// How long a tick's exactly-once key lives: long enough that every
    /// replica that could still try that tick finds it.
    pub fn tick_key_ttl(&self) -> Duration {
        self.grace * 2 + Duration::from_secs(60)
    }
}

/// The outcome of [`Spec::due`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    pub ticks: Vec<Millis>,
    /// Some missed ticks were left out by the policy.
    pub skipped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(ms: u64) -> Spec {
        Spec::from_raw(&RawSpec {
            name: "t",
            every: Some(Duration::from_millis(ms)),
            stream: "s",
            grace: Duration::from_secs(1),
            ..Default::default()
        })
        .unwrap()
    }

    fn cron(line: &str) -> Spec {
        Spec::from_raw(&RawSpec {
            name: "c",
            cron: Some(line),
            stream: "s",
            grace: Duration::from_secs(1),
            ..Default::default()
        })
        .unwrap()
    }

    const T0: Millis = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    #[test]
    fn every_is_aligned_to_epoch_or_start() {
        let s = every(200);
        assert_eq!(s.next_after(T0), Some(T0 + 200));
        assert_eq!(s.next_after(T0 + 1), Some(T0 + 200));
        assert_eq!(s.next_after(T0 - 1), Some(T0));
        assert_eq!(s.prev_before(T0 + 200), Some(T0));
        assert_eq!(s.prev_before(T0 + 201), Some(T0 + 200));
        let mut s = every(1000);
        s.start = Some(T0 + 333);
        assert_eq!(s.next_after(0), Some(T0 + 333));
        assert_eq!(s.next_after(T0 + 333), Some(T0 + 1333));
        assert_eq!(s.prev_before(T0 + 333), None);
    }

    #[test]
    fn cron_with_seconds_steps_both_ways() {
        let s = cron("*/2 * * * * *");
        assert_eq!(s.next_after(T0), Some(T0 + 2000));
        assert_eq!(s.next_after(T0 + 500), Some(T0 + 2000));
        assert_eq!(s.next_after(T0 - 1), Some(T0));
        assert_eq!(s.prev_before(T0 + 2000), Some(T0));
        assert_eq!(s.prev_before(T0 + 2500), Some(T0 + 2000));
        assert_eq!(s.prev_before(T0 + 1), Some(T0));
        // five fields: a crontab line at second 0
        let s = cron("30 2 * * *");
        assert_eq!(s.next_after(T0), Some(T0 + (2 * 3600 + 30 * 60) * 1000));
        assert!(parse_cron("not a cron").is_err());
    }

    #[test]
    fn window_bounds_ticks() {
        let mut s = every(1000);
        s.end = Some(T0 + 2000);
        assert_eq!(s.next_after(T0 + 1000), Some(T0 + 2000));
        assert_eq!(s.next_after(T0 + 2000), None);
        assert_eq!(s.prev_before(T0 + 10_000), Some(T0 + 2000));
        let at = Spec::from_raw(&RawSpec {
            name: "a",
            at: Some("2026-01-01T00:00:10Z"),
            stream: "s",
            grace: Duration::from_secs(1),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(at.next_after(T0), Some(T0 + 10_000));
        assert_eq!(at.next_after(T0 + 10_000), None);
        assert_eq!(at.prev_before(T0 + 10_001), Some(T0 + 10_000));
    }

    #[test]
    fn due_fires_on_time_ticks_and_applies_missed_policy() {
        let mut s = every(200);
        // Running normally: everything after the cursor up to now.
        assert_eq!(s.due(T0, T0 + 450).ticks, vec![T0 + 200, T0 + 400]);
        assert_eq!(s.due(T0 + 400, T0 + 450).ticks, Vec::<Millis>::new());
        // Back after 10 s of downtime, grace 1 s: skip drops the old ones.
        let d = s.due(T0, T0 + 10_000);
        assert!(d.skipped);
        assert_eq!(d.ticks.first(), Some(&(T0 + 9_000)));
        assert_eq!(d.ticks.last(), Some(&(T0 + 10_000)));
        assert_eq!(d.ticks.len(), 6);
        // catch_up:3 fires the three latest missed ticks first.
        s.missed = MissedPolicy::CatchUp(3);
        let d = s.due(T0, T0 + 10_000);
        assert!(d.skipped);
        assert_eq!(
            &d.ticks[..4],
            &[T0 + 8_400, T0 + 8_600, T0 + 8_800, T0 + 9_000]
        );
        // Fewer missed than K: all of them, nothing reported skipped.
        let d = s.due(T0 + 8_500, T0 + 10_000);
        assert!(!d.skipped);
        assert_eq!(&d.ticks[..2], &[T0 + 8_600, T0 + 8_800]);
    }

    #[test]
    fn missed_policy_parses_and_prints() {
        assert_eq!("skip".parse::<MissedPolicy>().unwrap(), MissedPolicy::Skip);
        assert_eq!(
            "catch_up:3".parse::<MissedPolicy>().unwrap(),
            MissedPolicy::CatchUp(3)
        );
        assert_eq!(MissedPolicy::CatchUp(3).to_string(), "catch_up:3");
        assert!("later".parse::<MissedPolicy>().is_err());
    }

    #[test]
    fn templates_render_and_reject_unknown_placeholders() {
        let t = Template::parse("{name}-{tick} at {now} {{x}}").unwrap();
        let out = t.render(&TickContext {
            name: "n",
            tick: T0,
            now: T0 + 5,
        });
        assert_eq!(out, "n-1767225600000 at 2026-01-01T00:00:00.005Z {x}");
        assert_eq!(
            Template::parse("{tick_iso}").unwrap().render(&TickContext {
                name: "n",
                tick: T0,
                now: T0
            }),
            "2026-01-01T00:00:00.000Z"
        );
        assert!(Template::parse("{nope}").unwrap_err().contains("nope"));
        assert!(Template::parse("{tick").is_err());
        assert!(Template::parse("a}").is_err());
    }

    #[test]
    fn spec_round_trips_through_hash_fields() {
        let cfg: ScheduleConfig = toml::from_str(
            r#"
name = "r"
cron = "0 */5 * * * *"
start = "2026-01-01T00:00:00Z"
stream = "jobs"
fields = { a = "{tick}", b = "x" }
missed = { catch_up = 2 }
grace = "3s"
"#,
        )
        .unwrap();
        let spec = Spec::from_config(&cfg).unwrap();
        let h: std::collections::HashMap<String, String> = spec
            .hash_fields()
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let back = Spec::from_hash("r", &h).unwrap();
        assert_eq!(back.start, Some(T0));
        assert_eq!(back.missed, MissedPolicy::CatchUp(2));
        assert_eq!(back.grace, Duration::from_secs(3));
        assert_eq!(back.fields, spec.fields);
        assert_eq!(back.next_after(T0), Some(T0 + 300_000));
    }

    #[test]
    fn definitions_are_checked() {
        let base = RawSpec {
            name: "x",
            stream: "s",
            grace: Duration::from_secs(1),
            ..Default::default()
        };
        let e = Spec::from_raw(&base).unwrap_err();
        assert!(e.message.contains("one of"), "{e}");
        let e = Spec::from_raw(&RawSpec {
            every: Some(Duration::from_millis(10)),
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.key, "every");
        let e = Spec::from_raw(&RawSpec {
            name: "a b",
            every: Some(Duration::from_secs(1)),
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.key, "name");
        let e = Spec::from_raw(&RawSpec {
            cron: Some("* * * * * *"),
            every: Some(Duration::from_secs(1)),
            ..base.clone()
        })
        .unwrap_err();
        assert!(e.message.contains("only one"), "{e}");
        let e = Spec::from_raw(&RawSpec {
            every: Some(Duration::from_secs(1)),
            start: Some("2026-01-02T00:00:00Z"),
            end: Some("2026-01-01T00:00:00Z"),
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.key, "end");
        assert_eq!(parse_time("1767225600000").unwrap(), T0);
        assert_eq!(parse_time("2026-01-01T01:00:00+01:00").unwrap(), T0);
    }
}
