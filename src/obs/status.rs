//! Group state per flow and stream: what `sluice status` prints and what the
//! lag gauges export.
//!
//! # Lag in entries
//! The true lag is the number of entries in the stream after the group's
//! last-delivered id: what the next `XREADGROUP >` calls would return.
//!
//! XINFO GROUPS `lag` (entries-added minus entries-read) is not that number
//! once anything left the unread range other than by delivery. After XDEL
//! there, Redis reports nil (KEDA's redis-streams scaler reads nil as 0). After
//! trimming (XTRIM, `MAXLEN`/`MINID` on XADD) cut unread entries, Redis 7.0
//! reports a number that still counts them, and keeps doing so for good: a
//! group that has read everything can show lag 2. So sluice does not take
//! Redis's figure when it can afford to know:
//! - nothing after last-delivered → 0 ([`LagSource::Empty`]);
//! - the stream's first entry is after last-delivered → every entry is
//!   unread: XLEN ([`LagSource::Length`]);
//! - otherwise it counts with XRANGE ([`count_undelivered`]): pages after
//!   last-delivered, alternating with pages up to it; whichever side ends
//!   first gives the exact answer (lag = counted after, or XLEN − counted up
//!   to). Pages grow from 100 entries, so a small lag costs one short
//!   XRANGE, and with `ack_del` the side up to last-delivered holds only the
//!   pending entries ([`LagSource::Counted`]);
//! - when both sides exceed [`LAG_SCAN_LIMIT`] / 2, counting stops: Redis's
//!   value kept within what was counted ([`LagSource::Redis`]), or the count
//!   so far, a lower bound, when Redis has nil ([`LagSource::LowerBound`]).
//!
//! Lag in seconds is the age of the first undelivered entry, from its id's
//! millisecond part (0 when nothing is undelivered).
//!
//! # Who samples
//! Only one replica samples at a time (a Redis lease, `SET NX PX`, renewed
//! every [`crate::config::MetricsConfig::sample_every`]), so N replicas do not
//! multiply the load on Redis. A replica that loses the lease drops its
//! gauge series, so dashboards see one live value per stream, never a
//! frozen one next to it.

use std::sync::Arc;

use bytes::Bytes;
use fred::prelude::*;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::obs::metrics::Metrics;
use crate::redis::group;
use crate::redis::group::{consumers, ConsumerInfo};
use crate::redis::StreamError;
use crate::redis::{client, commands, parse_id, reply, Result};
use crate::sink::clickhouse::endpoints::EndpointStatus;
use crate::sink::clickhouse::stuck;
use crate::sink::clickhouse::stuck::StuckReport;
use crate::time::{now_ms, Ticker};

/// Most entries one lag count reads with XRANGE, both directions together.
/// Bounds the sampler's cost on Redis (≈3 µs per entry read).
pub(crate) const LAG_SCAN_LIMIT: u64 = 20_000;

/// First and largest XRANGE page while counting.
const LAG_SCAN_FIRST_PAGE: usize = 100;
const LAG_SCAN_MAX_PAGE: usize = 2_500;

#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub flow: String,
    pub stream: String,
    pub group: String,
    pub length: u64,
    pub group_exists: bool,
    pub lag: u64,
    /// How `lag` was obtained (see the module docs).
    pub lag_source: LagSource,
    /// Redis's own `lag` field, for comparison (None = nil).
    pub redis_lag: Option<u64>,
    pub lag_seconds: f64,
    pub pending: u64,
    pub oldest_pending_idle_seconds: f64,
    pub consumers: Vec<ConsumerInfo>,
    pub dead_letter_stream: String,
    pub dead_letter_length: u64,
    /// The flow is stuck on a table-level ClickHouse error: one record per
    /// replica holding refused rows (`sink::stuck`); empty when not.
    pub stuck: Vec<StuckReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LagSource {
    /// Nothing after last-delivered: exactly 0.
    Empty,
    /// The stream starts after last-delivered: exactly XLEN.
    Length,
    /// Counted with XRANGE: exact.
    Counted,
    /// Too much to count: Redis's figure (may over-count after trimming).
    Redis,
    /// Too much to count and Redis has nil: a lower bound.
    LowerBound,
}

impl LagSource {
    /// True when `lag` is exact.
    pub fn is_exact(self) -> bool {
        matches!(
            self,
            LagSource::Empty | LagSource::Length | LagSource::Counted
        )
    }
}

/// The group's row of XINFO GROUPS, if the group exists.
async fn group_info(
    client: &Client,
    stream: &str,
    group: &str,
) -> Result<Option<(Bytes, Option<i64>, u64)>> {
    let frame = match commands::info(client, "GROUPS", &[stream]).await {
        Ok(f) => f,
        Err(StreamError::Reply(m)) if m.contains("no such key") => return Ok(None),
        Err(e) => return Err(e),
    };
    for item in reply::array_of(frame, "XINFO GROUPS")? {
        let kv = reply::key_values(item, "XINFO GROUPS")?;
        let name = kv.iter().find(|(k, _)| k == "name").map(|(_, v)| v.clone());
        let Some(name) = name else { continue };
        if reply::bytes_of(name, "XINFO GROUPS")?.as_ref() != group.as_bytes() {
            continue;
        }
        let mut last = Bytes::from_static(b"0-0");
        let mut lag = None;
        let mut pending = 0;
        for (k, v) in kv {
            match k.as_str() {
                "last-delivered-id" => last = reply::bytes_of(v, "XINFO GROUPS")?,
                "lag" => lag = reply::int_of(&v, "XINFO GROUPS").ok(),
                "pending" => pending = reply::int_of(&v, "XINFO GROUPS")?.max(0) as u64,
                _ => {}
            }
        }
        return Ok(Some((last, lag, pending)));
    }
    Ok(None)
}

/// The lag when it follows without counting: see the module docs.
/// `first` is the stream's first id, `next` the first id after
/// `last_delivered` (both None when there is none).
pub(crate) fn lag_shortcut(
    length: u64,
    last_delivered: &[u8],
    first: Option<&[u8]>,
    next: Option<&[u8]>,
) -> Option<(u64, LagSource)> {
    let (Some(first), Some(_)) = (first, next) else {
        return Some((0, LagSource::Empty));
    };
    match (parse_id(first), parse_id(last_delivered)) {
        (Some(f), Some(l)) if f > l => Some((length, LagSource::Length)),
        _ => None,
    }
}

fn after(id: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(id.len() + 1);
    v.push(b'(');
    v.extend_from_slice(id);
    v
}

/// Counts the entries after `last_delivered` (see the module docs).
/// `length` is XLEN, `redis_lag` XINFO's figure, used only past the limit.
pub(crate) async fn count_undelivered(
    client: &Client,
    stream: &Arc<str>,
    last_delivered: &[u8],
    length: u64,
    redis_lag: Option<u64>,
) -> Result<(u64, LagSource)> {
    let mut forward_from = after(last_delivered);
    let mut backward_from: Vec<u8> = b"-".to_vec();
    let (mut unread, mut read) = (0u64, 0u64);
    let mut page = LAG_SCAN_FIRST_PAGE;
    loop {
        let got = commands::range(client, stream, &forward_from, b"+", page).await?;
        unread += got.len() as u64;
        if got.len() < page {
            return Ok((unread, LagSource::Counted));
        }
        forward_from = after(&got.last().expect("full page").id);

        // Entries up to last-delivered, inclusive, still in the stream.
        let got = commands::range(client, stream, &backward_from, last_delivered, page).await?;
        read += got.len() as u64;
        if got.len() < page {
            // XLEN was read before the scan; entries added since are unread too.
            return Ok((length.saturating_sub(read).max(unread), LagSource::Counted));
        }
        backward_from = after(&got.last().expect("full page").id);

        if unread + read >= LAG_SCAN_LIMIT {
            let upper = length.saturating_sub(read).max(unread);
            return Ok(match redis_lag {
                Some(l) => (l.clamp(unread, upper), LagSource::Redis),
                None => (unread, LagSource::LowerBound),
            });
        }
        page = (page * 4).min(LAG_SCAN_MAX_PAGE);
    }
}

pub async fn stream_status(
    client: &Client,
    flow: &str,
    stream: &str,
    group: &str,
    dead_letter: &str,
) -> Result<StreamStatus> {
    let stream_arc: Arc<str> = Arc::from(stream);
    let length = commands::len(client, stream).await?;
    let dead_letter_length = commands::len(client, dead_letter).await?;
    let mut s = StreamStatus {
        flow: flow.into(),
        stream: stream.into(),
        group: group.into(),
        length,
        group_exists: false,
        lag: 0,
        lag_source: LagSource::Empty,
        redis_lag: None,
        lag_seconds: 0.0,
        pending: 0,
        oldest_pending_idle_seconds: 0.0,
        consumers: Vec::new(),
        dead_letter_stream: dead_letter.into(),
        dead_letter_length,
        stuck: Vec::new(),
    };
    let Some((last, lag, pending)) = group_info(client, stream, group).await? else {
        return Ok(s);
    };
    s.group_exists = true;
    s.pending = pending;
    s.redis_lag = lag.map(|l| l.max(0) as u64);
    let first = commands::range(client, &stream_arc, b"-", b"+", 1).await?;
    let next = commands::range(client, &stream_arc, &after(&last), b"+", 1).await?;
    let (first, next) = (first.first(), next.first());
    let shortcut = lag_shortcut(
        length,
        &last,
        first.map(|m| m.id.as_ref()),
        next.map(|m| m.id.as_ref()),
    );
    (s.lag, s.lag_source) = match shortcut {
        Some(known) => known,
        None => count_undelivered(client, &stream_arc, &last, length, s.redis_lag).await?,
    };
    if let Some(ms) = next.and_then(|m| m.id_millis()) {
        s.lag_seconds = now_ms().saturating_sub(ms) as f64 / 1000.0;
    }
    if pending > 0 {
        // The oldest pending entry is the first by id.
        if let Some(p) = commands::pending(client, stream, group, b"-", b"+", 1, None)
            .await?
            .first()
        {
            s.oldest_pending_idle_seconds = p.idle_ms as f64 / 1000.0;
        }
    }
    s.consumers = consumers(client, stream, group).await?;
    Ok(s)
}

/// Status of every stream of every flow.
pub(crate) async fn all(client: &Client, config: &Config) -> Result<Vec<StreamStatus>> {
    let mut out = Vec::new();
    for f in &config.flows {
        let stuck = match stuck::list(client, &f.name, now_ms()).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(flow = %f.name, error = %e, "could not read the flow's stuck records");
                Vec::new()
            }
        };
        for stream in &f.streams {
            let mut s =
                stream_status(client, &f.name, stream, &f.group, &f.dead_letter_stream()).await?;
            s.stuck = stuck.clone();
            out.push(s);
        }
    }
    Ok(out)
}

pub(crate) fn export(metrics: &Metrics, s: &StreamStatus) {
    let l = [s.flow.as_str(), s.stream.as_str(), s.group.as_str()];
    metrics
        .stream_length
        .with_label_values(&[&s.flow, &s.stream])
        .set(s.length as i64);
    metrics
        .dead_letter_length
        .with_label_values(&[&s.flow, &s.dead_letter_stream])
        .set(s.dead_letter_length as i64);
    metrics.group_lag.with_label_values(&l).set(s.lag as i64);
    metrics
        .group_pending
        .with_label_values(&l)
        .set(s.pending as i64);
    metrics
        .group_lag_seconds
        .with_label_values(&l)
        .set(s.lag_seconds);
    metrics
        .group_oldest_pending_idle
        .with_label_values(&l)
        .set(s.oldest_pending_idle_seconds);
    metrics
        .group_consumers
        .with_label_values(&l)
        .set(s.consumers.len() as i64);
}

/// Every `metrics.sample_every`, the replica holding the lease samples all
/// streams into the gauges; the others export no gauge series at all, so
/// dashboards aggregate with `max by (flow, stream, group)`.
pub(crate) async fn sample_loop(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    if config.metrics.listen.is_none() {
        return; // nobody would read the gauges
    }
    let client = match client::connect(&config.redis).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "metrics sampler could not connect to Redis");
            return;
        }
    };
    let every = config.metrics.sample_every;
    let me = group::consumer_name(config.worker.consumer_prefix.as_deref());
    let lease_key = format!(
        "sluice:sampler:{}",
        config
            .flows
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    // Three missed renewals and another replica takes over.
    let lease_ms = (every.as_millis() * 3).min(i64::MAX as u128) as i64;
    let mut holding = false;
    let mut tick = Ticker::every(every);
    while tick.tick_until(&shutdown).await {
        let holds = match hold_lease(&client, &lease_key, &me, lease_ms).await {
            Ok(h) => h,
            Err(e) => {
                // Keep the last values: Redis is unreachable, not the stream idle.
                tracing::warn!(error = %e, "metrics sampler lease check failed");
                continue;
            }
        };
        if !holds {
            if holding {
                tracing::info!("another replica samples the stream gauges now");
                metrics.reset_sampled();
                holding = false;
            }
            continue;
        }
        if !holding {
            tracing::info!(every = ?every, "this replica samples the stream gauges");
            holding = true;
        }
        match all(&client, &config).await {
            Ok(list) => list.iter().for_each(|s| export(&metrics, s)),
            Err(e) => tracing::warn!(error = %e, "sampling stream state failed"),
        }
    }
}

/// Takes or renews the sampler lease; true if `me` holds it.
async fn hold_lease(client: &Client, key: &str, me: &str, lease_ms: i64) -> Result<bool> {
    // SET NX GET: sets when free and returns the previous holder, if any.
    let previous: Option<String> = client
        .set(
            key,
            me,
            Some(fred::types::Expiration::PX(lease_ms)),
            Some(fred::types::SetOptions::NX),
            true,
        )
        .await?;
    match previous {
        None => Ok(true),
        Some(holder) if holder == me => {
            let _: bool = client.pexpire(key, lease_ms, None).await?;
            Ok(true)
        }
        Some(_) => Ok(false),
    }
}

/// A plain-text table for `sluice status`.
pub(crate) fn render_table(list: &[StreamStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<24} {:<12} {:>10} {:>10} {:>9} {:>10} {:>12} {:>6} {:>10}",
        "FLOW",
        "STREAM",
        "GROUP",
        "LENGTH",
        "LAG",
        "LAG_S",
        "PENDING",
        "OLDEST_IDLE",
        "CONS",
        "DEAD"
    );
    for s in list {
        let lag = if !s.group_exists {
            "no group".to_string()
        } else if s.lag_source == LagSource::LowerBound {
            format!(">={}~", s.lag)
        } else if !s.lag_source.is_exact() {
            format!("{}~", s.lag)
        } else if s.redis_lag != Some(s.lag) {
            format!("{}*", s.lag)
        } else {
            s.lag.to_string()
        };
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<12} {:>10} {:>10} {:>9.1} {:>10} {:>11.1}s {:>6} {:>10}",
            s.flow,
            s.stream,
            s.group,
            s.length,
            lag,
            s.lag_seconds,
            s.pending,
            s.oldest_pending_idle_seconds,
            s.consumers.len(),
            s.dead_letter_length
        );
        for c in &s.consumers {
            let _ = writeln!(
                out,
                "    consumer {:<40} pending {:>8} idle {:>8.1}s",
                c.name,
                c.pending,
                c.idle_ms as f64 / 1000.0
            );
        }
    }
    let mut flows_shown: Vec<&str> = Vec::new();
    for s in list.iter().filter(|s| !s.stuck.is_empty()) {
        if flows_shown.contains(&s.flow.as_str()) {
            continue;
        }
        flows_shown.push(&s.flow);
        for r in &s.stuck {
            let _ = writeln!(out, "{}", render_stuck(&s.flow, r, now_ms()));
        }
    }
    if list
        .iter()
        .any(|s| s.lag_source.is_exact() && s.redis_lag != Some(s.lag))
    {
        let _ = writeln!(
            out,
            "* Redis's own lag differs (nil after XDEL, too high after trimming); this one is counted"
        );
    }
    if list.iter().any(|s| !s.lag_source.is_exact()) {
        let _ = writeln!(
            out,
            "~ estimate: too many entries to count on both sides of the group's position"
        );
    }
    out
}

/// One line for a replica stuck on a table-level error: since when (and
/// for how long at `now_ms`), the table, the rows held, the error.
pub(crate) fn render_stuck(flow: &str, r: &StuckReport, now_ms: u64) -> String {
    let since = chrono::DateTime::from_timestamp_millis(r.since_ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| r.since_ms.to_string());
    let lasting = humantime::format_duration(std::time::Duration::from_secs(
        now_ms.saturating_sub(r.since_ms) / 1000,
    ));
    format!(
        "STUCK flow `{flow}` since {since} ({lasting}): ClickHouse refuses every row the same way (table-level error) on {}; {} rows held by {}, retried, nothing dead-lettered: {}",
        r.table, r.rows, r.consumer, r.error
    )
}

/// ClickHouse endpoints' health for `sluice status` (URLs without credentials).
pub(crate) fn render_endpoints(list: &[EndpointStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<22} {:<40} {:<6} {:<12} ERROR",
        "CLICKHOUSE", "ENDPOINT", "STATE", "VERSION"
    );
    for e in list {
        let _ = writeln!(
            out,
            "{:<22} {:<40} {:<6} {:<12} {}",
            e.key,
            e.endpoint,
            if e.up { "up" } else { "DOWN" },
            e.version.as_deref().unwrap_or("-"),
            e.error.as_deref().unwrap_or("")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shortcut(
        length: u64,
        last: &str,
        first: Option<&str>,
        next: Option<&str>,
    ) -> Option<(u64, LagSource)> {
        lag_shortcut(
            length,
            last.as_bytes(),
            first.map(str::as_bytes),
            next.map(str::as_bytes),
        )
    }

    #[test]
    fn nothing_after_last_delivered_is_zero() {
        // Redis 7.0 can still say 2 here after trimming; see the module docs.
        assert_eq!(
            shortcut(5, "9-0", Some("5-0"), None),
            Some((0, LagSource::Empty))
        );
        assert_eq!(shortcut(0, "0-0", None, None), Some((0, LagSource::Empty)));
    }

    #[test]
    fn stream_starting_after_the_group_is_all_unread() {
        // XADD 1..10, group read 1,2, XTRIM MINID 5: Redis says 8, truth is 6.
        assert_eq!(
            shortcut(6, "2-0", Some("5-0"), Some("5-0")),
            Some((6, LagSource::Length))
        );
        // Ids compare as numbers, not text.
        assert_eq!(
            shortcut(2, "9-0", Some("10-0"), Some("10-0")),
            Some((2, LagSource::Length))
        );
        assert_eq!(
            shortcut(2, "10-0", Some("10-1"), Some("10-1")),
            Some((2, LagSource::Length))
        );
    }

    #[test]
    fn entries_on_both_sides_need_counting() {
        assert_eq!(shortcut(10, "2-0", Some("1-0"), Some("3-0")), None);
        assert_eq!(shortcut(10, "2-0", Some("2-0"), Some("4-0")), None);
    }

    #[test]
    fn status_table_marks_counted_and_estimated_lag() {
        let base = StreamStatus {
            flow: "f".into(),
            stream: "s".into(),
            group: "g".into(),
            length: 10,
            group_exists: true,
            lag: 6,
            lag_source: LagSource::Counted,
            redis_lag: Some(8),
            lag_seconds: 1.0,
            pending: 0,
            oldest_pending_idle_seconds: 0.0,
            consumers: vec![],
            dead_letter_stream: "s:dead".into(),
            dead_letter_length: 0,
            stuck: vec![],
        };
        let table = render_table(std::slice::from_ref(&base));
        assert!(
            table.contains(" 6* ") && table.contains("* Redis's own lag differs"),
            "{table}"
        );
        let estimated = StreamStatus {
            lag_source: LagSource::LowerBound,
            redis_lag: None,
            ..base
        };
        let table = render_table(&[estimated]);
        assert!(
            table.contains(">=6~") && table.contains("~ estimate"),
            "{table}"
        );
    }

    #[test]
    fn a_stuck_flow_is_shown_with_since_when_and_the_error() {
        let r = StuckReport {
            consumer: "host-1-ab".into(),
            table: "default.events".into(),
            since_ms: 1_700_000_000_000,
            error: "Code: 53, e.displayText() = DB::Exception: Type mismatch for column x".into(),
            rows: 1200,
            expires_ms: 1_700_000_400_000,
        };
        let line = render_stuck("events", &r, 1_700_000_125_000);
        assert!(
            line.contains("STUCK flow `events` since 2023-11-14T22:13:20Z (2m 5s)"),
            "{line}"
        );
        assert!(
            line.contains("default.events") && line.contains("1200 rows held by host-1-ab"),
            "{line}"
        );
        assert!(line.ends_with("Type mismatch for column x"), "{line}");
    }
}
