//! The HTML pages: each handler reads what its page shows (bounded, or
//! from the sampler's snapshot) and renders it with [`super::views`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::Markup;

use super::auth::{clear_cookie, session_cookie, Who};
use super::params::{Params, MAX_COUNT};
use super::views::{self, Nav};
use super::{api, browse, dead_letters, Console, ConsoleError, Result};
use crate::cli::dead;
use crate::config::console::Role;
use crate::http_entry;
use crate::redis::commands;
use crate::redis::group;
use crate::schedule::store;
use crate::time::now_ms;

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/", get(overview))
        .route("/stream", get(stream))
        .route("/dead", get(dead))
        .route("/dead/entry", get(dead_entry))
        .route("/schedules", get(schedules))
        .route("/delayed", get(delayed))
        .route("/tap", get(tap))
}

/// What every page handler reads from its request: the console, the signed-in
/// person (set by the auth guard) and the query string.
struct PageRequest {
    console: Arc<Console>,
    who: Who,
    params: Params,
}

impl FromRequestParts<Arc<Console>> for PageRequest {
    type Rejection = <Extension<Who> as FromRequestParts<Arc<Console>>>::Rejection;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> std::result::Result<Self, Self::Rejection> {
        let Extension(who) = Extension::<Who>::from_request_parts(parts, console).await?;
        Ok(PageRequest {
            console: console.clone(),
            who,
            params: Params::parse(parts.uri.query()),
        })
    }
}

fn page(title: &str, who: &Who, nav: Nav, body: Markup) -> Response {
    views::layout(title, Some(who), nav, body).into_response()
}

/// An error as a page (the API answers JSON instead).
fn error_page(who: &Who, e: ConsoleError) -> Response {
    let status = e.status();
    if status.is_server_error() {
        tracing::warn!(error = %e, "console page failed");
    }
    let mut resp = page(
        "Error",
        who,
        Nav::None,
        views::error_page(status.as_u16(), &e.to_string()),
    );
    *resp.status_mut() = status;
    resp
}

fn render(who: &Who, r: Result<(String, Nav, Markup)>) -> Response {
    match r {
        Ok((title, nav, body)) => page(&title, who, nav, body),
        Err(e) => error_page(who, e),
    }
}

async fn overview(req: PageRequest) -> Response {
    let snap = req.console.sampler.snapshot();
    if req.params.get("fragment").is_some() {
        return views::overview_live(&snap).into_response();
    }
    page("Overview", &req.who, Nav::Overview, views::overview(&snap))
}

async fn stream(req: PageRequest) -> Response {
    render(&req.who, stream_page(&req.console, &req.params).await)
}

/// The flow group reading `stream` (or one of its shards), if any.
fn flow_group<'a>(c: &'a Console, stream: &str) -> Option<&'a str> {
    c.config
        .flows
        .iter()
        .find(|f| f.streams.iter().chain(&f.base_streams).any(|s| s == stream))
        .map(|f| f.group.as_str())
}

async fn stream_page(c: &Console, p: &Params) -> Result<(String, Nav, Markup)> {
    let name = p.required("name")?;
    let query = api::entry_query(p)?;
    // A sharded stream as written in the config: show its first shard and
    // link the others from the overview.
    let groups = http_entry::group_states(&c.redis, name)
        .await?
        .unwrap_or_default();
    let group = p
        .get("group")
        .or_else(|| flow_group(c, name).filter(|g| groups.iter().any(|x| x.name == *g)))
        .or_else(|| groups.first().map(|g| g.name.as_str()))
        .map(str::to_string);
    let length = commands::len(&c.redis, name).await?;
    let entries = browse::entries(&c.redis, name, &query).await?;
    let (mut pending, mut pending_next, mut consumers) = (Vec::new(), None, Vec::new());
    if let Some(g) = group
        .as_deref()
        .filter(|g| groups.iter().any(|x| x.name == *g))
    {
        (pending, pending_next) = browse::pending(
            &c.redis,
            name,
            g,
            p.id("pending_after")?.as_deref(),
            p.count("pending_count", 50, MAX_COUNT)?,
        )
        .await?;
        consumers = group::consumers(&c.redis, name, g).await?;
    }
    let body = views::stream(&views::StreamPage {
        stream: name,
        length,
        groups: &groups,
        group: group.as_deref(),
        consumers: &consumers,
        entries: &entries,
        pending: &pending,
        pending_next: pending_next.as_deref(),
        query: p,
    });
    Ok((name.to_string(), Nav::Overview, body))
}

/// Every flow's dead-letter stream, in config order, once each.
fn dead_streams(c: &Console) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in &c.config.flows {
        let d = f.dead_letter_stream();
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

async fn dead(req: PageRequest) -> Response {
    render(
        &req.who,
        dead_page(&req.console, &req.who, &req.params).await,
    )
}

async fn dead_page(c: &Console, who: &Who, p: &Params) -> Result<(String, Nav, Markup)> {
    let streams = dead_streams(c);
    let stream = match p.get("stream") {
        Some(s) => s.to_string(),
        None => match streams.first() {
            Some(s) => s.clone(),
            None => {
                return Err(ConsoleError::bad(
                    "stream",
                    "the config has no flows: name a dead-letter stream with ?stream=",
                ))
            }
        },
    };
    let filter = api::dead_filter(p)?;
    let page = dead_letters::list(
        &c.redis,
        &stream,
        &filter,
        p.id("after")?.as_deref(),
        p.count("count", 50, MAX_COUNT)?,
    )
    .await?;
    let length = commands::len(&c.redis, &stream).await?;
    let body = views::dead(&views::DeadPageView {
        streams: &streams,
        stream: &stream,
        length,
        filter: &filter,
        page: &page,
        query: p,
        can_act: who.role == Role::Operator,
    });
    Ok(("Dead letters".into(), Nav::Dead, body))
}

async fn dead_entry(req: PageRequest) -> Response {
    render(&req.who, dead_entry_page(&req).await)
}

async fn dead_entry_page(req: &PageRequest) -> Result<(String, Nav, Markup)> {
    let p = &req.params;
    let stream = p.required("stream")?;
    let id = super::params::check_id("id", p.required("id")?)?;
    let e = dead::show(&req.console.redis, stream, &id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("no entry {id} in `{stream}`")))?;
    let body = views::dead_entry(stream, &e, req.who.role == Role::Operator);
    Ok((format!("Dead letter {id}"), Nav::Dead, body))
}

async fn schedules(req: PageRequest) -> Response {
    render(&req.who, schedules_page(&req).await)
}

async fn schedules_page(req: &PageRequest) -> Result<(String, Nav, Markup)> {
    let now = now_ms();
    let list: Vec<serde_json::Value> = store::load_all(&req.console.redis)
        .await?
        .iter()
        .filter(|s| s.state != "removed")
        .map(|s| api::schedule_json(s, now))
        .collect();
    Ok((
        "Schedules".to_string(),
        Nav::Schedules,
        views::schedules(&list, req.who.role == Role::Operator),
    ))
}

async fn delayed(req: PageRequest) -> Response {
    render(&req.who, delayed_page(&req).await)
}

async fn delayed_page(req: &PageRequest) -> Result<(String, Nav, Markup)> {
    let snap = req.console.sampler.snapshot();
    let peeked = match req.params.get("stream") {
        Some(s) => Some((s, api::peek(&req.console, s, 20).await?)),
        None => None,
    };
    let body = views::delayed(
        &snap.delayed,
        peeked.as_ref().map(|(s, list)| (*s, list.as_slice())),
        req.who.role == Role::Operator,
    );
    Ok(("Delayed jobs".to_string(), Nav::Delayed, body))
}

async fn tap(req: PageRequest) -> Response {
    let p = &req.params;
    let mut streams: Vec<String> = req
        .console
        .config
        .flows
        .iter()
        .flat_map(|f| f.streams.iter().cloned().chain([f.dead_letter_stream()]))
        .collect();
    streams.sort();
    streams.dedup();
    let body = views::tap(&streams, p.get("stream"), p.get("where").unwrap_or(""));
    page("Live tap", &req.who, Nav::Tap, body)
}

/// Where to go after signing in: a path on this site, nothing else.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

pub(crate) async fn login_form(State(c): State<Arc<Console>>, RawQuery(q): RawQuery) -> Response {
    if c.auth.is_open() {
        return Redirect::to("/").into_response();
    }
    let p = Params::parse(q.as_deref());
    views::layout(
        "Sign in",
        None,
        Nav::None,
        views::login(safe_next(p.get("next")), None),
    )
    .into_response()
}

pub(crate) async fn login(State(c): State<Arc<Console>>, body: Bytes) -> Response {
    let form = Params::parse(std::str::from_utf8(&body).ok());
    let next = safe_next(form.get("next")).to_string();
    let token = form.get("token").unwrap_or("").trim();
    match c.auth.check_token(token.as_bytes()) {
        Some((name, role)) => {
            tracing::info!(who = %name, role = role.as_str(), "console: signed in");
            let id = c.auth.start_session(&name, role);
            let mut resp = Redirect::to(&next).into_response();
            resp.headers_mut()
                .append(header::SET_COOKIE, c.auth.cookie(&id));
            resp
        }
        None => {
            tracing::warn!("console: sign-in with an unknown token");
            let mut resp = views::layout(
                "Sign in",
                None,
                Nav::None,
                views::login(&next, Some("Unknown token.")),
            )
            .into_response();
            *resp.status_mut() = StatusCode::UNAUTHORIZED;
            resp
        }
    }
}

/// Ends the session (a POST through the guard, so CSRF-checked).
pub(crate) async fn logout(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        c.auth.end_session(id);
    }
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, clear_cookie())],
    )
        .into_response()
}
