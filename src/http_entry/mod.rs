//! The HTTP entry: producers POST lists of flat
//! objects, which land in a stream all together or not at all.
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/streams/{stream}/messages`, body `[{…}, …]` | 200 `{"stream", "ids": […]}` |
//! | the same with `?not_before=TIME` (RFC 3339 or Unix ms, future) | 202 `{"stream", "delayed": n, "not_before": ms}` |
//! | `GET /v1/streams/{stream}` | 200 length, cap and group state |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when Redis answers, else 503 |
//!
//! Refusals, all leaving the stream unchanged: 400 (bad JSON, not an array,
//! an item that is not an object, a nested value, an empty or bad field
//! name, an item without fields; the body names `item` and `field`), 401
//! (no or unknown bearer token), 403 (token not valid for this stream), 413
//! (body over `body_limit`, more than `max_items`), 429 + `Retry-After`
//! (length + items would pass `max_len`), 409 (the key is not a stream),
//! 503 + `Retry-After` (Redis unavailable).

pub(crate) mod append;
pub(crate) mod auth;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fred::prelude::*;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use self::append::{Appended, Appender};
use self::auth::{Auth, Denied};
use crate::config::{Config, HttpConfig};
use crate::fields::Fields;
use crate::fields::{self, Refusal};
use crate::redis::delayed;
use crate::redis::delayed::Due;
use crate::redis::direct::StreamConnection;
use crate::redis::sharder;
use crate::redis::sharder::Sharder;
use crate::redis::Result;
use crate::redis::StreamError;
use crate::redis::{client, commands, reply};

/// Longest stream name accepted in a path.
const MAX_STREAM_NAME: usize = 512;

pub(crate) struct Entry {
    redis: Client,
    cfg: HttpConfig,
    caps: BTreeMap<String, u64>,
    auth: Auth,
    appender: Arc<Appender>,
    sharder: Sharder,
}

/// A JSON error body: `{"error": …, "item": n, "field": …}`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_len: Option<u64>,
    /// Ids already added to other shards of a sharded stream when a later
    /// shard refused (`shard_by` splits a request per shard).
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted: Option<Vec<String>>,
}

/// A JSON answer with `status`.
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json(
        status,
        &ErrorBody {
            error: message,
            item: None,
            field: None,
            length: None,
            max_len: None,
            accepted: None,
        },
    )
}

fn retry_after(mut resp: Response, after: Duration) -> Response {
    let secs = after.as_secs_f64().ceil().max(1.0) as u64;
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

fn denied(d: Denied, stream: &str) -> Response {
    match d {
        Denied::Missing => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing bearer token (Authorization: Bearer <token>)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        Denied::Unknown => {
            let mut r = error(StatusCode::UNAUTHORIZED, "unknown bearer token");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            r
        }
        Denied::Forbidden => error(
            StatusCode::FORBIDDEN,
            &format!("this token may not use stream `{stream}`"),
        ),
    }
}

fn bad_stream_name(stream: &str) -> Option<&'static str> {
    if stream.is_empty() {
        Some("empty stream name")
    } else if stream.len() > MAX_STREAM_NAME {
        Some("stream name longer than 512 bytes")
    } else if stream.chars().any(char::is_control) {
        Some("stream name contains a control character")
    } else {
        None
    }
}

/// The checks every request on a stream passes first: the bearer token may
/// use `stream` (else 401/403), then the name itself is sound (else 400).
/// None when the request may go on.
fn check_request(entry: &Entry, headers: &HeaderMap, stream: &str) -> Option<Response> {
    if let Err(d) = entry.auth.check(headers.get(header::AUTHORIZATION), stream) {
        return Some(denied(d, stream));
    }
    bad_stream_name(stream).map(|why| error(StatusCode::BAD_REQUEST, why))
}

fn redis_unavailable(entry: &Entry, e: impl std::fmt::Display) -> Response {
    let text = e.to_string();
    if text.contains("WRONGTYPE") {
        return error(StatusCode::CONFLICT, "the key exists and is not a stream");
    }
    tracing::warn!(error = %text, "HTTP entry: Redis command failed");
    retry_after(
        error(StatusCode::SERVICE_UNAVAILABLE, "redis is unavailable"),
        entry.cfg.retry_after,
    )
}

impl Entry {
    pub(crate) async fn open(config: &Config) -> anyhow::Result<Arc<Entry>> {
        let cfg = config.http.clone().expect("called with an [http] section");
        let redis = client::connect(&config.redis).await?;
        if cfg.allow_unauthenticated {
            tracing::warn!(
                "HTTP entry accepts requests without a token (http.allow_unauthenticated)"
            );
        }
        Ok(Arc::new(Entry {
            appender: Appender::new(
                redis.clone(),
                StreamConnection::connect_or(&config.redis, &redis).await?,
            ),
            redis,
            caps: config
                .streams
                .iter()
                .filter_map(|(name, s)| s.max_len.map(|m| (name.clone(), m)))
                .collect(),
            auth: Auth::new(&cfg),
            sharder: Sharder::new(config),
            cfg,
        }))
    }

    /// The cap of `stream`: `[streams."name"].max_len`, else `http.max_len`.
    pub(crate) fn max_len(&self, stream: &str) -> Option<u64> {
        // A shard `name:{i}` of a sharded stream has the stream's cap.
        let base = sharder::base_of(stream).filter(|b| self.sharder.is_sharded(b));
        self.caps
            .get(stream)
            .or_else(|| self.caps.get(base?))
            .copied()
            .or(self.cfg.max_len)
    }

    pub(crate) fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/v1/streams/{stream}/messages", post(post_messages))
            .route("/v1/streams/{stream}", get(get_stream))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(self)
    }
}

/// Binds `http.listen` and serves the entry until `shutdown`; fails at
/// once if Redis or the address cannot be had.
pub(crate) async fn start(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let entry = Entry::open(config).await?;
    let addr: std::net::SocketAddr = entry.cfg.listen.parse()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen {addr}: {e}"))?;
    tracing::info!(%addr, "HTTP entry listening");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, entry.router())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP entry stopped");
        }
    }))
}

fn refusal(r: &Refusal) -> Response {
    let status = match r {
        Refusal::TooManyItems { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    json(
        status,
        &ErrorBody {
            error: &r.to_string(),
            item: r.index(),
            field: r.field(),
            length: None,
            max_len: None,
            accepted: None,
        },
    )
}

#[derive(Serialize)]
struct Accepted<'a> {
    stream: &'a str,
    ids: Vec<String>,
}

async fn post_messages(
    State(entry): State<Arc<Entry>>,
    Path(stream): Path<String>,
    request: axum::extract::Request,
) -> Response {
    // The request taken whole: the `HeaderMap` and `Uri` extractors each
    // copy theirs, a visible share of a one-item request's cost.
    let (parts, body) = request.into_parts();
    let (headers, uri) = (&parts.headers, &parts.uri);
    if let Some(refused) = check_request(&entry, headers, &stream) {
        return refused;
    }
    let limit = entry.cfg.body_limit.as_u64() as usize;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body is larger than http.body_limit ({limit} bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("reading the body failed: {e}"),
            )
        }
    };
    let items = match fields::parse_items(&body, entry.cfg.max_items) {
        Ok(items) => items,
        Err(r) => return refusal(&r),
    };
    if items.is_empty() {
        return json(
            StatusCode::OK,
            &Accepted {
                stream: &stream,
                ids: Vec::new(),
            },
        );
    }
    // A sharded stream: the whole request goes to one shard (round-robin),
    // so it stays all-or-nothing, unless `shard_by` spreads its items.
    let groups: Vec<(&str, Vec<Fields>)> = match entry.sharder.shard_by(&stream) {
        Some(_) => entry.sharder.split(&stream, items),
        None => vec![(entry.sharder.pick_one(&stream), items)],
    };
    // `?not_before=TIME`: held in the stream's delayed set until then.
    match delayed::not_before(uri.query()) {
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
        Ok(Some(due)) => {
            let mut due = Due::At(due);
            let mut held = 0;
            for (target, items) in &groups {
                match delayed::enqueue(&entry.redis, target, items, due).await {
                    Ok(at) => {
                        due = Due::At(at);
                        held += items.len();
                    }
                    Err(e) => return redis_unavailable(&entry, e),
                }
            }
            let Due::At(due) = due else {
                unreachable!("set above")
            };
            return json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "stream": stream, "delayed": held, "not_before": due }),
            );
        }
        Ok(None) => {}
    }
    let max_len = entry.max_len(&stream);
    let mut all_ids = Vec::new();
    for (target, items) in groups {
        let count = items.len();
        match entry.appender.append(target, items, max_len).await {
            Ok(Appended::Ids(ids)) => all_ids.extend(ids),
            Ok(Appended::Full { length }) => {
                let max = max_len.expect("only refused with a cap");
                let message = format!(
                    "stream `{target}` is full: length {length} + {count} items would pass max_len {max}"
                );
                return retry_after(
                    json(
                        StatusCode::TOO_MANY_REQUESTS,
                        &ErrorBody {
                            error: &message,
                            item: None,
                            field: None,
                            length: Some(length),
                            max_len: Some(max),
                            accepted: (!all_ids.is_empty()).then_some(all_ids),
                        },
                    ),
                    entry.cfg.retry_after,
                );
            }
            Err(e) => return redis_unavailable(&entry, e),
        }
    }
    json(
        StatusCode::OK,
        &Accepted {
            stream: &stream,
            ids: all_ids,
        },
    )
}

/// One consumer group of a stream, as XINFO GROUPS reports it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GroupState {
    pub name: String,
    pub consumers: u64,
    pub pending: u64,
    pub last_delivered_id: String,
    /// Redis's own lag figure (null when Redis cannot tell).
    pub lag: Option<u64>,
}

#[derive(Serialize)]
struct StreamState {
    stream: String,
    exists: bool,
    length: u64,
    max_len: Option<u64>,
    groups: Vec<GroupState>,
    /// A sharded stream: each shard's state; the fields above add them up
    /// (length, pending and lag summed, consumers the most of any shard,
    /// `max_len` per shard, no last-delivered id).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shards: Vec<StreamState>,
}

/// The state of a sharded stream: its shards' states and their sum.
async fn sharded_state(entry: &Entry, stream: &str) -> Result<StreamState> {
    let mut total = StreamState {
        stream: stream.to_string(),
        exists: false,
        length: 0,
        max_len: entry.max_len(stream),
        groups: Vec::new(),
        shards: Vec::new(),
    };
    for shard in entry.sharder.shards_of(stream) {
        let s = stream_state(entry, &shard).await?;
        total.exists |= s.exists;
        total.length += s.length;
        for g in &s.groups {
            match total.groups.iter_mut().find(|t| t.name == g.name) {
                Some(t) => {
                    t.consumers = t.consumers.max(g.consumers);
                    t.pending += g.pending;
                    t.lag = t.lag.zip(g.lag).map(|(a, b)| a + b);
                }
                None => total.groups.push(GroupState {
                    name: g.name.clone(),
                    consumers: g.consumers,
                    pending: g.pending,
                    last_delivered_id: String::new(),
                    lag: g.lag,
                }),
            }
        }
        total.shards.push(s);
    }
    Ok(total)
}

async fn stream_state(entry: &Entry, stream: &str) -> Result<StreamState> {
    let length = commands::len(&entry.redis, stream).await?;
    let mut state = StreamState {
        stream: stream.to_string(),
        exists: false,
        length,
        max_len: entry.max_len(stream),
        groups: Vec::new(),
        shards: Vec::new(),
    };
    if let Some(groups) = group_states(&entry.redis, stream).await? {
        state.exists = true;
        state.groups = groups;
    }
    Ok(state)
}

/// The stream's consumer groups; None when the stream does not exist.
pub(crate) async fn group_states(client: &Client, stream: &str) -> Result<Option<Vec<GroupState>>> {
    let frame = match commands::info(client, "GROUPS", &[stream]).await {
        Ok(f) => f,
        Err(StreamError::Reply(m)) if m.contains("no such key") => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut groups = Vec::new();
    for item in reply::array_of(frame, "XINFO GROUPS")? {
        let mut g = GroupState {
            name: String::new(),
            consumers: 0,
            pending: 0,
            last_delivered_id: String::new(),
            lag: None,
        };
        for (k, v) in reply::key_values(item, "XINFO GROUPS")? {
            let text = |v| {
                reply::bytes_of(v, "XINFO GROUPS").map(|b| String::from_utf8_lossy(&b).into_owned())
            };
            match k.as_str() {
                "name" => g.name = text(v)?,
                "consumers" => g.consumers = reply::int_of(&v, "XINFO GROUPS")?.max(0) as u64,
                "pending" => g.pending = reply::int_of(&v, "XINFO GROUPS")?.max(0) as u64,
                "last-delivered-id" => g.last_delivered_id = text(v)?,
                "lag" => {
                    g.lag = reply::int_of(&v, "XINFO GROUPS")
                        .ok()
                        .map(|l| l.max(0) as u64)
                }
                _ => {}
            }
        }
        groups.push(g);
    }
    Ok(Some(groups))
}

async fn get_stream(
    State(entry): State<Arc<Entry>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = check_request(&entry, &headers, &stream) {
        return refused;
    }
    let state = if entry.sharder.is_sharded(&stream) {
        sharded_state(&entry, &stream).await
    } else {
        stream_state(&entry, &stream).await
    };
    match state {
        Ok(state) => json(StatusCode::OK, &state),
        Err(e) => redis_unavailable(&entry, e),
    }
}

async fn readyz(State(entry): State<Arc<Entry>>) -> Response {
    let ping = entry.redis.custom_raw(
        fred::types::CustomCommand::new_static("PING", fred::types::ClusterHash::Random, false),
        Vec::<fred::types::Value>::new(),
    );
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(frame)) if !matches!(frame, fred::types::Resp3Frame::SimpleError { .. }) => {
            (StatusCode::OK, "ready\n").into_response()
        }
        _ => retry_after(
            (StatusCode::SERVICE_UNAVAILABLE, "redis is unavailable\n").into_response(),
            entry.cfg.retry_after,
        ),
    }
}
