//! Group state per flow and stream: what `sluice status` prints and what the
//! lag gauges export.
//!
//! Lag in entries comes from XINFO GROUPS `lag`. Redis reports it as nil when
//! it cannot know (after XDEL or trimming inside the unread range); then we
//! count it ourselves: the entries after the group's last-delivered id, read
//! with XRANGE in pages up to [`LAG_SCAN_LIMIT`] (beyond that the value is a
//! lower bound). Lag in seconds is the age of the first undelivered entry,
//! from its id's millisecond part.
//!
//! Only one replica samples at a time (a Redis lease, `SET NX PX`), so N
//! replicas do not multiply the load on Redis.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fred::prelude::*;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::stream::group::{consumers, ConsumerInfo};
use crate::stream::{client, commands, reply, Result};

/// Most entries counted by hand when Redis reports lag as nil.
pub const LAG_SCAN_LIMIT: usize = 100_000;

#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub flow: String,
    pub stream: String,
    pub group: String,
    pub length: u64,
    pub group_exists: bool,
    pub lag: u64,
    /// True when lag was counted by hand (Redis had it as nil).
    pub lag_counted: bool,
    pub lag_seconds: f64,
    pub pending: u64,
    pub oldest_pending_idle_seconds: f64,
    pub consumers: Vec<ConsumerInfo>,
    pub dead_letter_stream: String,
    pub dead_letter_length: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The group's row of XINFO GROUPS, if the group exists.
async fn group_info(
    client: &Client,
    stream: &str,
    group: &str,
) -> Result<Option<(Bytes, Option<i64>, u64)>> {
    let frame = match commands::info(client, "GROUPS", &[stream]).await {
        Ok(f) => f,
        Err(crate::stream::StreamError::Reply(m)) if m.contains("no such key") => return Ok(None),
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

/// The first entry after `last_delivered` and, when `count` is set, how
/// many there are (up to [`LAG_SCAN_LIMIT`]).
async fn undelivered(
    client: &Client,
    stream: &Arc<str>,
    last_delivered: &[u8],
    count: bool,
) -> Result<(Option<u64>, u64)> {
    let mut start = Vec::with_capacity(last_delivered.len() + 1);
    start.push(b'(');
    start.extend_from_slice(last_delivered);
    let page = if count { 10_000 } else { 1 };
    let mut first_ms = None;
    let mut n = 0u64;
    loop {
        let entries = commands::range(client, stream, &start, b"+", page).await?;
        if first_ms.is_none() {
            first_ms = entries.first().and_then(|m| m.id_millis());
        }
        n += entries.len() as u64;
        if !count || entries.len() < page || n as usize >= LAG_SCAN_LIMIT {
            break;
        }
        let last = &entries.last().expect("non-empty").id;
        start.clear();
        start.push(b'(');
        start.extend_from_slice(last);
    }
    Ok((first_ms, n))
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
        lag_counted: false,
        lag_seconds: 0.0,
        pending: 0,
        oldest_pending_idle_seconds: 0.0,
        consumers: Vec::new(),
        dead_letter_stream: dead_letter.into(),
        dead_letter_length,
    };
    let Some((last, lag, pending)) = group_info(client, stream, group).await? else {
        return Ok(s);
    };
    s.group_exists = true;
    s.pending = pending;
    let (first_ms, counted) = undelivered(client, &stream_arc, &last, lag.is_none()).await?;
    match lag {
        Some(l) => s.lag = l.max(0) as u64,
        None => {
            s.lag = counted;
            s.lag_counted = true;
        }
    }
    if let Some(ms) = first_ms {
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
pub async fn all(client: &Client, config: &Config) -> Result<Vec<StreamStatus>> {
    let mut out = Vec::new();
    for f in &config.flows {
        for stream in &f.streams {
            out.push(
                stream_status(client, &f.name, stream, &f.group, &f.dead_letter_stream()).await?,
            );
        }
    }
    Ok(out)
}

pub fn export(metrics: &Metrics, s: &StreamStatus) {
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

/// Every [`SAMPLE_EVERY`], the replica holding the lease samples all streams
/// into the gauges. Others keep their last values untouched... they export
/// nothing for gauges, so dashboards should aggregate with `max`.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

pub async fn sample_loop(config: Config, metrics: Arc<Metrics>, shutdown: CancellationToken) {
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
    let me = crate::stream::group::consumer_name(config.worker.consumer_prefix.as_deref());
    let lease_key = format!(
        "sluice:sampler:{}",
        config
            .flows
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let lease_ms = (SAMPLE_EVERY.as_millis() * 3) as i64;
        let got: Option<String> = client
            .set(
                &lease_key,
                &me,
                Some(fred::types::Expiration::PX(lease_ms)),
                Some(fred::types::SetOptions::NX),
                true,
            )
            .await
            .ok()
            .flatten();
        let holder: Option<String> = match got {
            Some(previous) => Some(previous),
            None => client.get(&lease_key).await.ok().flatten(),
        };
        if holder.as_deref() != Some(me.as_str()) {
            continue;
        }
        let _: std::result::Result<(), _> = client.pexpire(&lease_key, lease_ms, None).await;
        match all(&client, &config).await {
            Ok(list) => list.iter().for_each(|s| export(&metrics, s)),
            Err(e) => tracing::warn!(error = %e, "sampling stream state failed"),
        }
    }
}

/// A plain-text table for `sluice status`.
pub fn render_table(list: &[StreamStatus]) -> String {
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
        } else if s.lag_counted {
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
    if list.iter().any(|s| s.lag_counted) {
        let _ = writeln!(
            out,
            "* lag counted with XRANGE: Redis reports it as nil after XDEL/trim"
        );
    }
    out
}
