//! The live tap: new entries of one stream as they arrive, read with
//! `XREAD BLOCK` from the stream's last id when the tap opened (what `$`
//! means, taken once so nothing added between "listening" and the first
//! read is missed), on a connection of its own. Never XREADGROUP: looking
//! takes no work from the fleet and leaves no consumer behind.
//!
//! Served as server-sent events (`GET /api/v1/tap?stream=…&where=f=v`) and
//! as the CLI `sluice tap STREAM [--where field=value] [--json]`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use clap::Args;
use fred::prelude::*;
use fred::types::Value;

use super::browse::EntryView;
use super::params::{FieldFilter, Params};
use super::{Console, ConsoleError, Result};
use crate::config::Config;
use crate::config::RedisConfig;
use crate::redis::client;
use crate::redis::{commands, reply, Message, StreamError};

/// Longest single XREAD BLOCK (bounds how long a closed tap lingers).
const BLOCK: Duration = Duration::from_secs(1);

/// Most entries one XREAD returns.
const READ_COUNT: usize = 200;

pub(crate) struct Tap {
    client: Client,
    stream: Arc<str>,
    last: String,
    filter: FieldFilter,
}

impl Tap {
    /// Opens a connection of its own and notes where the stream ends now.
    pub(crate) async fn open(
        redis: &RedisConfig,
        stream: &str,
        filter: FieldFilter,
    ) -> Result<Tap> {
        let client = client::connect_blocking(redis, BLOCK)
            .await
            .map_err(|e| ConsoleError::Unavailable(format!("tap: cannot connect to Redis: {e}")))?;
        let last = match last_id(&client, stream).await {
            Ok(id) => id,
            Err(e) => {
                let _ = client.quit().await;
                return Err(e.into());
            }
        };
        Ok(Tap {
            client,
            stream: Arc::from(stream),
            last,
            filter,
        })
    }

    /// The id the tap reads after.
    pub(crate) fn position(&self) -> &str {
        &self.last
    }

    /// Waits up to a second for new entries; returns those the filter lets
    /// through (the position moves past the others too).
    pub(crate) async fn next(&mut self) -> Result<Vec<Message>> {
        let args: Vec<Value> = vec![
            "COUNT".into(),
            Value::Integer(READ_COUNT as i64),
            "BLOCK".into(),
            Value::Integer(BLOCK.as_millis() as i64),
            "STREAMS".into(),
            self.stream.as_ref().into(),
            self.last.as_str().into(),
        ];
        let frame = self
            .client
            .custom_raw(commands::command("XREAD", &self.stream, true), args)
            .await
            .map_err(StreamError::from)?;
        let mut got = Vec::new();
        reply::read_group(frame, std::slice::from_ref(&self.stream), &mut got)?;
        if let Some(m) = got.last() {
            self.last = String::from_utf8_lossy(&m.id).into_owned();
        }
        got.retain(|m| self.filter.matches(&m.fields));
        Ok(got)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let client = self.client.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

/// The stream's `last-generated-id` (`0-0` when it does not exist yet:
/// then every entry is new).
async fn last_id(client: &Client, stream: &str) -> Result<String, StreamError> {
    let frame = match commands::info(client, "STREAM", &[stream]).await {
        Ok(f) => f,
        Err(StreamError::Reply(m)) if m.contains("no such key") => return Ok("0-0".into()),
        Err(e) => return Err(e),
    };
    for (k, v) in reply::key_values(frame, "XINFO STREAM")? {
        if k == "last-generated-id" {
            let id = reply::bytes_of(v, "XINFO STREAM")?;
            return Ok(String::from_utf8_lossy(&id).into_owned());
        }
    }
    Ok("0-0".into())
}

fn json_event(kind: &str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .data(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

/// `GET /api/v1/tap?stream=S[&where=f=v…]`: server-sent events `ready`
/// (`{"stream", "from"}`), then one `entry` per new matching entry, or
/// `failure` if Redis fails.
pub(crate) async fn sse(State(console): State<Arc<Console>>, RawQuery(q): RawQuery) -> Response {
    let p = Params::parse(q.as_deref());
    let (stream, filter) = match (p.required("stream"), p.filter()) {
        (Ok(s), Ok(f)) => (s.to_string(), f),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let Ok(permit) = console.taps.clone().try_acquire_owned() else {
        return ConsoleError::Unavailable(format!(
            "{} taps are open already; close one",
            super::MAX_TAPS
        ))
        .into_response();
    };
    let tap = match Tap::open(&console.config.redis, &stream, filter).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let ready = json_event(
        "ready",
        &serde_json::json!({ "stream": stream, "from": tap.position() }),
    );
    let shutdown = console.shutdown.clone();
    let state = (Some(tap), VecDeque::from([ready]), permit);
    let events = futures_util::stream::unfold(state, move |(mut tap, mut queue, permit)| {
        let shutdown = shutdown.clone();
        async move {
            loop {
                if let Some(e) = queue.pop_front() {
                    return Some((Ok::<Event, Infallible>(e), (tap, queue, permit)));
                }
                let t = tap.as_mut()?;
                let read = tokio::select! {
                    r = t.next() => r,
                    _ = shutdown.cancelled() => return None,
                };
                match read {
                    Ok(list) => queue.extend(
                        list.iter()
                            .map(|m| json_event("entry", &EntryView::from_message(m))),
                    ),
                    Err(e) => {
                        queue.push_back(json_event(
                            "failure",
                            &serde_json::json!({ "error": e.to_string() }),
                        ));
                        tap = None; // ends after the error is sent
                    }
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

// ---- the CLI ----

#[derive(Debug, Args)]
pub(crate) struct TapArgs {
    /// The stream to watch (a shard's own name for a sharded stream).
    pub stream: String,
    /// Only entries whose field has this value (repeat: all must match).
    #[arg(long = "where", value_name = "FIELD=VALUE")]
    pub filters: Vec<String>,
    /// One JSON object per line: `{"id", "time_ms", "fields"}`.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many entries.
    #[arg(long)]
    pub count: Option<usize>,
    /// Config file (only `[redis]` is used).
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: PathBuf,
}

/// One entry as a line of text: control characters escaped, so a value
/// cannot move the cursor or recolour the terminal.
pub(crate) fn text_line(e: &EntryView) -> String {
    let mut line = e.id.clone();
    for (k, v) in &e.fields {
        line.push_str("  ");
        line.extend(k.chars().flat_map(escape_control));
        line.push('=');
        line.extend(v.chars().flat_map(escape_control));
    }
    line
}

fn escape_control(c: char) -> Vec<char> {
    if c.is_control() {
        c.escape_default().collect()
    } else {
        vec![c]
    }
}

/// `sluice tap`: prints new entries until Ctrl-C (or `--count`).
pub(crate) async fn main(args: TapArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let config = Config::load(&args.config)?;
    let filter = FieldFilter::parse(args.filters.iter().map(String::as_str), "--where")
        .map_err(|e| anyhow::anyhow!("--where: {e}"))?;
    let mut tap = Tap::open(&config.redis, &args.stream, filter).await?;
    eprintln!(
        "tapping `{}` after {} (Ctrl-C to stop)",
        args.stream,
        tap.position()
    );
    let mut seen = 0usize;
    loop {
        let got = tokio::select! {
            r = tap.next() => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let mut out = std::io::stdout().lock();
        for m in &got {
            let e = EntryView::from_message(m);
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&e)?)?;
            } else {
                writeln!(out, "{}", text_line(&e))?;
            }
            seen += 1;
            if args.count.is_some_and(|n| seen >= n) {
                out.flush()?;
                return Ok(());
            }
        }
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_escape_control_characters() {
        let e = EntryView {
            id: "1-0".into(),
            time_ms: Some(1),
            fields: vec![("k".into(), "a\u{1b}[31mred\nx".into())],
        };
        assert_eq!(text_line(&e), "1-0  k=a\\u{1b}[31mred\\nx");
    }
}
