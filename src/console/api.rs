//! The JSON API under `/api/v1/…`: what the pages call and scripts may
//! too (bearer token). Reads are GETs; actions are POSTs (DELETE for a
//! schedule) that the guard checks for role and CSRF. A bad request gets
//! 400 with `{"error", "field"}` naming the parameter or body field.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::auth::Who;
use super::browse::{self, EntryQuery, Order};
use super::dead_letters::{self, Bulk, DeadFilter};
use super::params::{check_id, FieldFilter, Params, MAX_COUNT};
use super::{Console, ConsoleError, Result};
use crate::cli::dead;
use crate::cli::schedule::AddArgs;
use crate::http_entry;
use crate::redis::commands;
use crate::redis::delayed;
use crate::redis::group;
use crate::schedule::spec;
use crate::schedule::spec::MissedPolicy;
use crate::schedule::store::{self, Action, State as ScheduleState, Stored};
use crate::time::now_ms;

/// Most ids one replay or purge request may name.
pub(crate) const MAX_IDS: usize = 1000;

/// How many of the earliest waiting jobs a move looks through for its id.
pub(crate) const MOVE_LOOKUP: usize = 1000;

pub(crate) use crate::http_entry::json;

fn ok(body: &impl Serialize) -> Response {
    json(StatusCode::OK, body)
}

/// Parses a JSON body; an error names the field it is about.
pub(crate) fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ConsoleError::bad(&field, e.into_inner().to_string())
    })
}

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/v1/session", get(session))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/streams/entries", get(entries))
        .route("/api/v1/streams/pending", get(pending))
        .route("/api/v1/streams/groups", get(groups))
        .route("/api/v1/dead", get(dead_list))
        .route("/api/v1/dead/entry", get(dead_entry))
        .route("/api/v1/dead/preview", post(dead_preview))
        .route("/api/v1/dead/replay", post(dead_replay))
        .route("/api/v1/dead/purge", post(dead_purge))
        .route("/api/v1/schedules", get(schedules).post(schedule_add))
        .route(
            "/api/v1/schedules/{name}",
            get(schedule_one).delete(schedule_delete),
        )
        .route("/api/v1/schedules/{name}/{action}", post(schedule_action))
        .route("/api/v1/delayed", get(delayed))
        .route("/api/v1/delayed/peek", get(delayed_peek))
        .route("/api/v1/delayed/move", post(delayed_move))
        .route("/api/v1/tap", get(super::tap::sse))
}

/// Logs an action with who did it, what, and how many.
pub(crate) fn log_action(who: &Who, action: &str, target: &str, count: u64) {
    tracing::info!(who = %who.name, role = who.role.as_str(), action, target, count, "console action");
}

async fn session(Extension(who): Extension<Who>) -> Response {
    ok(&serde_json::json!({ "name": who.name, "role": who.role, "csrf": who.csrf }))
}

async fn overview(State(c): State<Arc<Console>>) -> Response {
    ok(&*c.sampler.snapshot())
}

/// The entries query of the stream page and the API.
pub(crate) fn entry_query(p: &Params) -> Result<EntryQuery> {
    let order = match p.get("order") {
        None | Some("newest") => Order::Newest,
        Some("oldest") => Order::Oldest,
        Some(other) => {
            return Err(ConsoleError::bad(
                "order",
                format!("{other:?}: expected newest or oldest"),
            ))
        }
    };
    let from = match (p.id("from")?, p.time("since")?) {
        (Some(_), Some(_)) => {
            return Err(ConsoleError::bad("since", "give from or since, not both"))
        }
        (id, time) => id.or(time.map(|t| t.to_string())),
    };
    let to = match (p.id("to")?, p.time("until")?) {
        (Some(_), Some(_)) => return Err(ConsoleError::bad("until", "give to or until, not both")),
        (id, time) => id.or(time.map(|t| t.to_string())),
    };
    Ok(EntryQuery {
        order,
        from,
        to,
        after: p.id("after")?,
        count: p.count("count", 50, MAX_COUNT)?,
        filter: p.filter()?,
    })
}

async fn entries(State(c): State<Arc<Console>>, RawQuery(q): RawQuery) -> Result<Response> {
    let p = Params::parse(q.as_deref());
    let stream = p.required("stream")?;
    let listing = browse::entries(&c.redis, stream, &entry_query(&p)?).await?;
    Ok(ok(&listing))
}

async fn pending(State(c): State<Arc<Console>>, RawQuery(q): RawQuery) -> Result<Response> {
    let p = Params::parse(q.as_deref());
    let (list, next) = browse::pending(
        &c.redis,
        p.required("stream")?,
        p.required("group")?,
        p.id("after")?.as_deref(),
        p.count("count", 50, MAX_COUNT)?,
    )
    .await?;
    Ok(ok(&serde_json::json!({ "pending": list, "next": next })))
}

async fn groups(State(c): State<Arc<Console>>, RawQuery(q): RawQuery) -> Result<Response> {
    let p = Params::parse(q.as_deref());
    let stream = p.required("stream")?;
    let mut out = Vec::new();
    for g in http_entry::group_states(&c.redis, stream)
        .await?
        .unwrap_or_default()
    {
        let consumers = group::consumers(&c.redis, stream, &g.name).await?;
        out.push(serde_json::json!({ "group": g, "consumers": consumers }));
    }
    Ok(ok(&out))
}

/// The dead-letter filter of a query: `reason` text and `where` fields.
pub(crate) fn dead_filter(p: &Params) -> Result<DeadFilter> {
    Ok(DeadFilter {
        reason: p.get("reason").map(str::to_string),
        fields: p.filter()?,
    })
}

async fn dead_list(State(c): State<Arc<Console>>, RawQuery(q): RawQuery) -> Result<Response> {
    let p = Params::parse(q.as_deref());
    let page = dead_letters::list(
        &c.redis,
        p.required("stream")?,
        &dead_filter(&p)?,
        p.id("after")?.as_deref(),
        p.count("count", 50, MAX_COUNT)?,
    )
    .await?;
    Ok(ok(&page))
}

async fn dead_entry(State(c): State<Arc<Console>>, RawQuery(q): RawQuery) -> Result<Response> {
    let p = Params::parse(q.as_deref());
    let stream = p.required("stream")?;
    let id = check_id("id", p.required("id")?)?;
    match dead::show(&c.redis, stream, &id).await? {
        Some(e) => Ok(ok(&e)),
        None => Err(ConsoleError::NotFound(format!(
            "no entry {id} in `{stream}`"
        ))),
    }
}

/// A bulk action's request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkRequest {
    stream: String,
    /// Exactly these ids (then no filter applies).
    #[serde(default)]
    ids: Vec<String>,
    /// Reason text to match (case-insensitive substring).
    #[serde(default)]
    reason: Option<String>,
    /// `field=value` conditions.
    #[serde(default, rename = "where")]
    where_: Vec<String>,
    /// The newest id the action may touch (from the preview).
    #[serde(default)]
    until: Option<String>,
    /// Where to go on from (the previous window's `cursor`).
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
struct BulkAnswer {
    stream: String,
    action: &'static str,
    /// The newest id this action covers; pass it back with every window.
    until: Option<String>,
    #[serde(flatten)]
    progress: dead_letters::Progress,
    /// The filter's matches are all counted (preview) or handled.
    complete: bool,
}

impl BulkRequest {
    fn filter(&self) -> Result<DeadFilter> {
        Ok(DeadFilter {
            reason: self.reason.clone().filter(|r| !r.trim().is_empty()),
            fields: FieldFilter::parse(self.where_.iter().map(String::as_str), "where")?,
        })
    }

    fn check(&self) -> Result<()> {
        if self.stream.is_empty() {
            return Err(ConsoleError::bad("stream", "`stream` is required"));
        }
        if self.ids.len() > MAX_IDS {
            return Err(ConsoleError::bad(
                "ids",
                format!("at most {MAX_IDS} ids per request"),
            ));
        }
        for id in &self.ids {
            check_id("ids", id)?;
        }
        if let Some(u) = &self.until {
            check_id("until", u)?;
        }
        if let Some(c) = &self.cursor {
            check_id("cursor", c)?;
        }
        Ok(())
    }
}

async fn bulk(c: &Console, who: &Who, action: Bulk, raw: &[u8]) -> Result<Response> {
    let req: BulkRequest = body(raw)?;
    req.check()?;
    let stream = req.stream.as_str();
    if !req.ids.is_empty() {
        if action == Bulk::Preview {
            return Err(ConsoleError::bad(
                "ids",
                "a preview counts a filter's matches; ids need none",
            ));
        }
        let (done, skipped) = dead_letters::by_ids(&c.redis, stream, action, &req.ids).await?;
        log_action(who, action.verb(), stream, done);
        return Ok(ok(&BulkAnswer {
            stream: req.stream.clone(),
            action: action.verb(),
            until: None,
            progress: dead_letters::Progress {
                matched: req.ids.len() as u64,
                done,
                skipped,
                ..Default::default()
            },
            complete: true,
        }));
    }
    let filter = req.filter()?;
    let until =
        match &req.until {
            Some(u) => Some(u.clone()),
            None if action == Bulk::Preview => dead_letters::newest_id(&c.redis, stream).await?,
            None => return Err(ConsoleError::bad(
                "until",
                "a bulk action needs the `until` id its preview returned (confirm the count first)",
            )),
        };
    let Some(until) = until else {
        // Nothing in the stream.
        return Ok(ok(&BulkAnswer {
            stream: req.stream.clone(),
            action: action.verb(),
            until: None,
            progress: Default::default(),
            complete: true,
        }));
    };
    let progress = if action == Bulk::Preview && filter.is_empty() && req.cursor.is_none() {
        // Everything up to `until`, taken a moment ago: the length.
        let n = commands::len(&c.redis, stream).await?;
        dead_letters::Progress {
            matched: n,
            ..Default::default()
        }
    } else {
        dead_letters::window(
            &c.redis,
            stream,
            action,
            &filter,
            &until,
            req.cursor.as_deref(),
        )
        .await?
    };
    if action != Bulk::Preview {
        log_action(who, action.verb(), stream, progress.done);
    }
    Ok(ok(&BulkAnswer {
        stream: req.stream.clone(),
        action: action.verb(),
        until: Some(until),
        complete: progress.cursor.is_none(),
        progress,
    }))
}

async fn dead_preview(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Who>,
    raw: Bytes,
) -> Result<Response> {
    bulk(&c, &who, Bulk::Preview, &raw).await
}

async fn dead_replay(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Who>,
    raw: Bytes,
) -> Result<Response> {
    bulk(&c, &who, Bulk::Replay, &raw).await
}

async fn dead_purge(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Who>,
    raw: Bytes,
) -> Result<Response> {
    bulk(&c, &who, Bulk::Purge, &raw).await
}

// ---- schedules ----

/// Ticks that fell due more than `grace` ago without being dealt with
/// (no replica fired them yet); at most 1000 are counted.
pub(crate) fn missed_ticks(s: &Stored, now: u64) -> u64 {
    let (Ok(spec), Some(mut t)) = (&s.spec, s.last_tick) else {
        return 0;
    };
    if s.state() != Some(ScheduleState::Running) {
        return 0;
    }
    let late = now.saturating_sub(spec.grace.as_millis() as u64);
    let mut n = 0;
    while n < 1000 {
        match spec.next_after(t) {
            Some(next) if next <= late => {
                n += 1;
                t = next;
            }
            _ => break,
        }
    }
    n
}

/// One schedule as the API lists it: `sluice schedule list --json`'s
/// fields, plus the last entry id, missed ticks and `next_run_time`.
pub(crate) fn schedule_json(s: &Stored, now: u64) -> serde_json::Value {
    let mut v = store::describe(s, now);
    v["next_run_time"] = v["next"].clone();
    v["last_id"] = serde_json::json!(s.last_id);
    v["missed_ticks"] = serde_json::json!(missed_ticks(s, now));
    v["paused"] = serde_json::json!(s.state() == Some(ScheduleState::Paused));
    v
}

async fn schedules(State(c): State<Arc<Console>>, RawQuery(q): RawQuery) -> Result<Response> {
    let p = Params::parse(q.as_deref());
    let all = p.get("all").is_some_and(|v| v == "1" || v == "true");
    let now = now_ms();
    let list: Vec<serde_json::Value> = store::load_all(&c.redis)
        .await?
        .iter()
        .filter(|s| all || s.state != "removed")
        .map(|s| schedule_json(s, now))
        .collect();
    Ok(ok(&list))
}

async fn schedule_one(State(c): State<Arc<Console>>, Path(name): Path<String>) -> Result<Response> {
    match store::load(&c.redis, &name).await? {
        Some(s) => Ok(ok(&schedule_json(&s, now_ms()))),
        None => Err(store::StoreError::NotFound(name).into()),
    }
}

/// `POST /api/v1/schedules`: the fields of `sluice schedule add`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    name: String,
    #[serde(default)]
    cron: Option<String>,
    #[serde(default, with = "humantime_serde")]
    every: Option<std::time::Duration>,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
    stream: String,
    #[serde(default)]
    fields: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    missed: Option<String>,
    #[serde(default, with = "humantime_serde")]
    grace: Option<std::time::Duration>,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    replace: bool,
}

async fn schedule_add(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Who>,
    raw: Bytes,
) -> Result<Response> {
    let a: AddRequest = body(&raw)?;
    let missed: MissedPolicy = a
        .missed
        .as_deref()
        .unwrap_or("skip")
        .parse()
        .map_err(|e: String| ConsoleError::bad("missed", e))?;
    let args = AddArgs {
        name: a.name,
        cron: a.cron,
        every: a.every,
        at: a.at,
        start: a.start,
        end: a.end,
        stream: a.stream,
        fields: a.fields.into_iter().collect(),
        missed,
        grace: a.grace.unwrap_or_else(spec::default_grace),
        paused: a.paused,
        replace: a.replace,
    };
    let now = now_ms();
    let spec = args
        .spec(now)
        .map_err(|e| ConsoleError::bad(e.key, e.message))?;
    store::add(&c.redis, &spec, args.paused, args.replace, now).await?;
    log_action(&who, "schedule add", &spec.name, 1);
    let stored = store::load(&c.redis, &spec.name)
        .await?
        .ok_or_else(|| store::StoreError::NotFound(spec.name.clone()))?;
    Ok(json(StatusCode::CREATED, &schedule_json(&stored, now)))
}

/// Pause, resume, remove or trigger `name`; the same Redis change as
/// `sluice schedule …`. Returns what to show.
pub(crate) async fn schedule_act(
    c: &Console,
    who: &Who,
    name: &str,
    action: &str,
) -> Result<serde_json::Value> {
    let now = now_ms();
    let state_change = match action {
        "pause" => Some(Action::Pause),
        "resume" => Some(Action::Resume),
        "remove" => Some(Action::Remove),
        "trigger" => None,
        other => {
            return Err(ConsoleError::bad(
                "action",
                format!("{other:?}: expected pause, resume, trigger or remove"),
            ))
        }
    };
    let answer = match state_change {
        Some(a) => {
            let from = store::set_state(&c.redis, name, a, now).await?;
            serde_json::json!({ "name": name, "from": from, "action": action })
        }
        None => {
            let id = store::trigger(&c.redis, name, now, &c.sharder, c.config.redis.is_cluster())
                .await?;
            serde_json::json!({ "name": name, "action": action, "id": id })
        }
    };
    log_action(who, &format!("schedule {action}"), name, 1);
    Ok(answer)
}

async fn schedule_action(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Who>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response> {
    Ok(ok(&schedule_act(&c, &who, &name, &action).await?))
}

async fn schedule_delete(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Who>,
    Path(name): Path<String>,
) -> Result<Response> {
    Ok(ok(&schedule_act(&c, &who, &name, "remove").await?))
}

// ---- delayed jobs ----

async fn delayed(State(c): State<Arc<Console>>) -> Response {
    ok(&c.sampler.snapshot().delayed)
}

/// A waiting job as text.
#[derive(Debug, Serialize)]
pub(crate) struct WaitingView {
    pub job_id: String,
    pub due_ms: u64,
    pub fields: Vec<(String, String)>,
}

pub(crate) async fn peek(c: &Console, stream: &str, count: usize) -> Result<Vec<WaitingView>> {
    Ok(delayed::waiting(&c.redis, stream, count)
        .await?
        .into_iter()
        .map(|w| WaitingView {
            job_id: w.job_id,
            due_ms: w.due_ms,
            fields: browse::text_fields(&w.fields),
        })
        .collect())
}

async fn delayed_peek(State(c): State<Arc<Console>>, RawQuery(q): RawQuery) -> Result<Response> {
    let p = Params::parse(q.as_deref());
    let list = peek(&c, p.required("stream")?, p.count("count", 10, MAX_COUNT)?).await?;
    Ok(ok(&list))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    stream: String,
    job_id: String,
}

async fn delayed_move(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Who>,
    raw: Bytes,
) -> Result<Response> {
    let m: MoveRequest = body(&raw)?;
    let job = delayed::waiting(&c.redis, &m.stream, MOVE_LOOKUP)
        .await?
        .into_iter()
        .find(|w| w.job_id == m.job_id)
        .ok_or_else(|| {
            ConsoleError::NotFound(format!(
                "no job {} among the first {MOVE_LOOKUP} waiting for `{}`",
                m.job_id, m.stream
            ))
        })?;
    let id = delayed::move_now(&c.redis, &m.stream, &job.member)
        .await?
        .ok_or_else(|| ConsoleError::Conflict(format!("job {} was moved meanwhile", m.job_id)))?;
    log_action(&who, "delayed move", &m.stream, 1);
    Ok(ok(
        &serde_json::json!({ "stream": m.stream, "job_id": m.job_id, "id": id }),
    ))
}
