//! The pages' HTML, rendered on the server with maud: every value is
//! escaped by the template (a dead letter is attacker-controlled text), and
//! no page has inline script or style (the Content-Security-Policy forbids
//! both). Live parts are filled by `console.js` from the same templates
//! (fragments) or from JSON through `textContent`.

use maud::{html, Markup, DOCTYPE};

use super::api::WaitingView;
use super::auth::Who;
use super::browse::{clip, EntryView, Listing, PendingView, CLIP};
use super::dead_letters::{DeadFilter, DeadPage};
use super::params::encode;
use super::sampler::{DelayedView, FlowView, Snapshot, StreamView};
use crate::cli::dead::DeadEntry;
use crate::http_entry::GroupState;
use crate::redis;
use crate::redis::group::ConsumerInfo;

/// Which top-level section a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Dead,
    Schedules,
    Delayed,
    Tap,
    None,
}

const NAV: &[(Nav, &str, &str)] = &[
    (Nav::Overview, "/", "Overview"),
    (Nav::Dead, "/dead", "Dead letters"),
    (Nav::Schedules, "/schedules", "Schedules"),
    (Nav::Delayed, "/delayed", "Delayed"),
    (Nav::Tap, "/tap", "Live tap"),
];

/// The frame around every page.
pub(crate) fn layout(title: &str, who: Option<&Who>, nav: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sluice" }
                @if let Some(csrf) = who.and_then(|w| w.csrf.as_deref()) {
                    meta name="csrf-token" content=(csrf);
                }
                link rel="stylesheet" href=(super::assets::CSS_PATH);
                script src=(super::assets::JS_PATH) defer {}
            }
            body {
                header.top {
                    a.brand href="/" { span.logo { "≋" } "sluice" }
                    @if who.is_some() {
                        nav {
                            @for (n, href, label) in NAV {
                                a.active[*n == nav] href=(href) { (label) }
                            }
                        }
                    }
                    @if let Some(w) = who {
                        div.who {
                            span.name { (w.name) }
                            span class=(format!("role role-{}", w.role.as_str())) { (w.role.as_str()) }
                            @if w.name != super::auth::OPEN_USER {
                                button.link type="button" data-action="logout" { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    div #flash.flash hidden {}
                    (body)
                }
            }
        }
    }
}

pub(crate) fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 entry`, `2 entries`.
pub(crate) fn entries_word(n: u64) -> String {
    format!("{} {}", count(n), if n == 1 { "entry" } else { "entries" })
}

pub(crate) fn secs(s: f64) -> String {
    if s < 0.05 {
        "0s".into()
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m {:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else if s < 86_400.0 {
        format!(
            "{}h {:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else {
        format!(
            "{}d {:02}h",
            (s / 86_400.0) as u64,
            ((s % 86_400.0) / 3600.0) as u64
        )
    }
}

pub(crate) fn time(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn rate(r: Option<f64>) -> String {
    match r {
        None => "—".into(),
        Some(r) if r >= 100.0 => count(r.round() as u64),
        Some(r) => format!("{r:.1}"),
    }
}

pub(crate) fn stream_link(stream: &str) -> String {
    format!("/stream?{}", encode(&[("name", stream)]))
}

pub(crate) fn dead_link(stream: &str) -> String {
    format!("/dead?{}", encode(&[("stream", stream)]))
}

/// In and out rates of the retained window as an inline SVG.
pub(crate) fn sparkline(ins: &[f64], outs: &[f64]) -> Markup {
    const W: f64 = 120.0;
    const H: f64 = 26.0;
    if ins.len() < 2 {
        return html! { span.muted { "collecting…" } };
    }
    let max = ins.iter().chain(outs).copied().fold(1e-9, f64::max);
    let line = |v: &[f64]| -> String {
        let step = W / (v.len() - 1).max(1) as f64;
        v.iter()
            .enumerate()
            .map(|(i, y)| {
                format!(
                    "{:.1},{:.1}",
                    i as f64 * step,
                    H - 1.0 - (y / max) * (H - 2.0)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        svg.spark viewBox=(format!("0 0 {W} {H}")) width=(W) height=(H) role="img" aria-label="in and out rate" {
            polyline.in points=(line(ins)) {}
            polyline.out points=(line(outs)) {}
        }
    }
}

fn lag_cell(s: &StreamView) -> Markup {
    html! {
        @if !s.group_exists { span.muted { "no group" } }
        @else if s.lag_exact { (count(s.lag)) }
        @else { span title="estimate: too many entries to count" { "≈" (count(s.lag)) } }
    }
}

fn consumers_table(list: &[ConsumerInfo]) -> Markup {
    html! {
        table.inner {
            thead { tr { th { "consumer" } th.num { "pending" } th.num { "idle" } } }
            tbody {
                @for c in list {
                    tr { td.mono { (c.name) } td.num { (count(c.pending)) } td.num { (secs(c.idle_ms as f64 / 1000.0)) } }
                }
            }
        }
    }
}

fn flow_card(f: &FlowView) -> Markup {
    html! {
        section.card {
            div.card-head {
                h2 { (f.name) }
                span.muted { "group " code { (f.group) } " → " (f.sink) }
                @if let Some(why) = &f.stuck {
                    span.pill.bad title=(why) { "stuck: table error" }
                }
                a.right href=(dead_link(&f.dead_letter_stream)) {
                    "dead letters "
                    span.pill.warn[f.dead_letter_length > 0] { (count(f.dead_letter_length)) }
                }
            }
            @if let Some(why) = &f.stuck {
                p.error-text { "Inserts retry until this is fixed: " (why) }
            }
            table.streams {
                thead {
                    tr {
                        th { "stream" } th.num { "length" } th.num { "lag" } th.num { "lag age" }
                        th.num { "pending" } th.num { "oldest pending" } th.num { "consumers" }
                        th.num { "delayed" } th.num { "in/s" } th.num { "out/s" } th { "last minutes" }
                    }
                }
                tbody {
                    @for s in &f.streams {
                        tr data-stream=(s.name) {
                            td {
                                @if s.shards.is_empty() { a.mono href=(stream_link(&s.name)) { (s.name) } }
                                @else { span.mono { (s.name) } " " span.pill { (s.shards.len()) " shards" } }
                            }
                            td.num data-k="length" { (count(s.length)) }
                            td.num data-k="lag" { (lag_cell(s)) }
                            td.num { (secs(s.lag_seconds)) }
                            td.num data-k="pending" { (count(s.pending)) }
                            td.num { (secs(s.oldest_pending_idle_seconds)) }
                            td.num {
                                @if s.consumers.is_empty() { span.muted { "0" } }
                                @else {
                                    details data-key=(format!("c:{}:{}", f.name, s.name)) {
                                        summary { (s.consumers.len()) }
                                        (consumers_table(&s.consumers))
                                    }
                                }
                            }
                            td.num { (count(s.delayed)) }
                            td.num.rate-in { (rate(s.in_rate)) }
                            td.num.rate-out { (rate(s.out_rate)) }
                            td { (sparkline(&s.in_history, &s.out_history)) }
                        }
                        @if !s.shards.is_empty() {
                            tr.shards {
                                td colspan="11" {
                                    details data-key=(format!("s:{}:{}", f.name, s.name)) {
                                        summary { "each shard" }
                                        table.inner {
                                            thead { tr { th { "shard" } th.num { "length" } th.num { "lag" } th.num { "lag age" } th.num { "pending" } th.num { "oldest pending" } th.num { "consumers" } } }
                                            tbody {
                                                @for sh in &s.shards {
                                                    tr {
                                                        td { a.mono href=(stream_link(&sh.stream)) { (sh.stream) } }
                                                        td.num { (count(sh.length)) }
                                                        td.num { (count(sh.lag)) @if !sh.lag_source.is_exact() { "~" } }
                                                        td.num { (secs(sh.lag_seconds)) }
                                                        td.num { (count(sh.pending)) }
                                                        td.num { (secs(sh.oldest_pending_idle_seconds)) }
                                                        td.num { (sh.consumers.len()) }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The part of the overview that refreshes itself.
pub(crate) fn overview_live(s: &Snapshot) -> Markup {
    html! {
        @if s.taken_at_ms == 0 {
            p.muted { "Taking the first sample…" }
        } @else {
            @if let Some(e) = &s.error { p.error-text { (e) } }
            @if s.flows.is_empty() {
                section.card { p.muted { "This config has no flows." } }
            }
            @for f in &s.flows { (flow_card(f)) }
            @if !s.endpoints.is_empty() {
                section.card {
                    div.card-head { h2 { "ClickHouse endpoints" } }
                    table {
                        thead { tr { th { "key" } th { "endpoint" } th { "state" } th { "version" } th { "last error" } } }
                        tbody {
                            @for e in &s.endpoints {
                                tr {
                                    td.mono { (e.key) }
                                    td.mono { (e.endpoint) }
                                    td { @if e.up { span.pill.ok { "up" } } @else { span.pill.bad { "down" } } }
                                    td { (e.version.as_deref().unwrap_or("—")) }
                                    td.error-text { (e.error.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
            p.foot.muted {
                "Sampled " (time(s.taken_at_ms)) " UTC in " (s.took_ms) " ms, every "
                (secs(s.sample_every_ms as f64 / 1000.0)) ". "
                span.legend-in { "■ in" } " " span.legend-out { "■ out" }
            }
        }
    }
}

pub(crate) fn overview(s: &Snapshot) -> Markup {
    html! {
        div.page-head { h1 { "Overview" } span.muted { "streams, groups and endpoints, refreshed every sample" } }
        div #live data-refresh="/?fragment=1" data-every=(s.sample_every_ms.max(1000)) {
            (overview_live(s))
        }
    }
}

/// A field list, values clipped (the full entry shows them all).
pub(crate) fn fields(list: &[(String, String)], limit: usize) -> Markup {
    html! {
        div.fields {
            @for (k, v) in list {
                span.field { span.k { (k) } span.v { (clip(v, limit)) } }
            }
        }
    }
}

pub(crate) struct StreamPage<'a> {
    pub stream: &'a str,
    pub length: u64,
    pub groups: &'a [GroupState],
    pub group: Option<&'a str>,
    pub consumers: &'a [ConsumerInfo],
    pub entries: &'a Listing,
    pub pending: &'a [PendingView],
    pub pending_next: Option<&'a str>,
    pub query: &'a super::params::Params,
}

/// The current query with `key` set to `value` (for paging links).
fn with(query: &super::params::Params, base: &str, key: &str, value: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = query.pairs().filter(|(k, _)| *k != key).collect();
    pairs.push((key, value));
    format!("{base}?{}", encode(&pairs))
}

pub(crate) fn stream(p: &StreamPage<'_>) -> Markup {
    let q = p.query;
    let v = |k: &str| q.get(k).unwrap_or("").to_string();
    html! {
        div.page-head {
            h1 { span.muted { "stream " } span.mono { (p.stream) } }
            span.pill { (entries_word(p.length)) }
            a.button.right href=(format!("/tap?{}", encode(&[("stream", p.stream)]))) { "Live tap" }
        }
        section.card {
            div.card-head { h2 { "Groups" } }
            @if p.groups.is_empty() { p.muted { "No consumer group reads this stream." } }
            @else {
                table {
                    thead { tr { th { "group" } th.num { "consumers" } th.num { "pending" } th { "last delivered" } th.num { "lag (Redis)" } } }
                    tbody {
                        @for g in p.groups {
                            tr.selected[Some(g.name.as_str()) == p.group] {
                                td { a href=(with(q, "/stream", "group", &g.name)) { (g.name) } }
                                td.num { (g.consumers) }
                                td.num { (count(g.pending)) }
                                td.mono { (g.last_delivered_id) }
                                td.num { (g.lag.map(count).unwrap_or_else(|| "nil".into())) }
                            }
                        }
                    }
                }
            }
        }
        section.card {
            div.card-head { h2 { "Entries" } span.muted { "read " (count(p.entries.scanned as u64)) " from Redis" } }
            form.filters method="get" action="/stream" {
                input type="hidden" name="name" value=(p.stream);
                @if let Some(g) = p.group { input type="hidden" name="group" value=(g); }
                label { "order " select name="order" {
                    option value="newest" selected[v("order") != "oldest"] { "newest first" }
                    option value="oldest" selected[v("order") == "oldest"] { "oldest first" }
                } }
                label { "field " input type="text" name="where" placeholder="task_for=report" value=(v("where")); }
                label { "from id " input.id type="text" name="from" placeholder="-" value=(v("from")); }
                label { "to id " input.id type="text" name="to" placeholder="+" value=(v("to")); }
                label { "since " input.time type="text" name="since" placeholder="2026-01-01T00:00:00Z" value=(v("since")); }
                label { "until " input.time type="text" name="until" placeholder="RFC 3339 or Unix ms" value=(v("until")); }
                button type="submit" { "Show" }
            }
            (entries_table(&p.entries.entries))
            @if let Some(next) = &p.entries.next {
                p.pager { a href=(with(q, "/stream", "after", next)) { "Next page →" } }
            }
        }
        @if let Some(group) = p.group {
            section.card {
                div.card-head { h2 { "Pending in " code { (group) } } }
                @if p.pending.is_empty() { p.muted { "Nothing pending." } }
                @else {
                    table.pending {
                        thead { tr { th { "id" } th { "consumer" } th.num { "idle" } th.num { "deliveries" } } }
                        tbody {
                            @for e in p.pending {
                                tr { td.mono { (e.id) } td.mono { (e.consumer) } td.num { (secs(e.idle_ms as f64 / 1000.0)) } td.num { (e.deliveries) } }
                            }
                        }
                    }
                    @if let Some(next) = p.pending_next {
                        p.pager { a href=(with(q, "/stream", "pending_after", next)) { "More pending →" } }
                    }
                }
            }
            section.card {
                div.card-head { h2 { "Consumers of " code { (group) } } }
                @if p.consumers.is_empty() { p.muted { "No consumers." } } @else { (consumers_table(p.consumers)) }
            }
        }
    }
}

fn entries_table(list: &[EntryView]) -> Markup {
    html! {
        @if list.is_empty() { p.muted { "No entries." } }
        @else {
            table.entries {
                thead { tr { th { "id" } th { "added (UTC)" } th { "fields" } } }
                tbody {
                    @for e in list {
                        tr {
                            td.mono.nowrap { (e.id) }
                            td.nowrap { (e.time_ms.map(time).unwrap_or_default()) }
                            td { (fields(&e.fields, CLIP)) }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) struct DeadPageView<'a> {
    pub streams: &'a [String],
    pub stream: &'a str,
    pub length: u64,
    pub filter: &'a DeadFilter,
    pub page: &'a DeadPage,
    pub query: &'a super::params::Params,
    pub can_act: bool,
}

fn text_fields(e: &DeadEntry) -> Vec<(String, String)> {
    super::browse::text_fields(&e.fields)
}

pub(crate) fn dead(p: &DeadPageView<'_>) -> Markup {
    let q = p.query;
    let where_text = q.get("where").unwrap_or("");
    let reason = p.filter.reason.as_deref().unwrap_or("");
    html! {
        div.page-head {
            h1 { "Dead letters" }
            nav.tabs {
                @for s in p.streams {
                    a.active[s == p.stream] href=(dead_link(s)) { (s) }
                }
            }
        }
        section.card #dead data-stream=(p.stream) data-reason=(reason) data-where=(where_text) {
            div.card-head {
                h2.mono { (p.stream) }
                span.pill.warn[p.length > 0] { (entries_word(p.length)) }
            }
            form.filters method="get" action="/dead" {
                input type="hidden" name="stream" value=(p.stream);
                label { "reason contains " input type="text" name="reason" placeholder="cannot convert" value=(reason); }
                label { "field " input type="text" name="where" placeholder="task_for=report" value=(where_text); }
                button type="submit" { "Filter" }
                @if !p.filter.is_empty() { a.button.plain href=(dead_link(p.stream)) { "Clear" } }
            }
            @if p.can_act {
                div.actions {
                    button type="button" data-action="dead-selected" data-op="replay" { "Replay selected" }
                    button.danger type="button" data-action="dead-selected" data-op="purge" { "Purge selected" }
                    span.sep {}
                    button type="button" data-action="dead-bulk" data-op="replay" {
                        @if p.filter.is_empty() { "Replay all…" } @else { "Replay all matching…" }
                    }
                    button.danger type="button" data-action="dead-bulk" data-op="purge" {
                        @if p.filter.is_empty() { "Purge all…" } @else { "Purge all matching…" }
                    }
                    span #bulk-status.muted {}
                }
            }
            @if p.page.entries.is_empty() {
                p.muted { @if p.filter.is_empty() { "No dead letters." } @else { "No dead letter matches in the part read." } }
            } @else {
                table.entries {
                    thead {
                        tr {
                            @if p.can_act { th { input type="checkbox" data-action="select-all" aria-label="select all"; } }
                            th { "id" } th { "source" } th.num { "deliveries" } th { "added (UTC)" } th { "reason" } th { "fields" }
                            @if p.can_act { th {} }
                        }
                    }
                    tbody {
                        @for e in &p.page.entries {
                            tr data-id=(e.id) {
                                @if p.can_act { td { input type="checkbox" name="sel" value=(e.id) aria-label="select"; } }
                                td.mono.nowrap { a href=(format!("/dead/entry?{}", encode(&[("stream", p.stream), ("id", &e.id)]))) { (e.id) } }
                                td.mono { (e.stream.as_deref().unwrap_or("—")) }
                                td.num { (e.deliveries.map(|d| d.to_string()).unwrap_or_else(|| "—".into())) }
                                td.nowrap { (redis::id_millis(e.id.as_bytes()).map(time).unwrap_or_default()) }
                                td.reason { (clip(e.reason.as_deref().unwrap_or("—"), 160)) }
                                td { (fields(&text_fields(e), 80)) }
                                @if p.can_act {
                                    td.nowrap {
                                        button.small type="button" data-action="dead-one" data-op="replay" data-id=(e.id) { "Replay" }
                                        " "
                                        button.small.danger type="button" data-action="dead-one" data-op="purge" data-id=(e.id) { "Purge" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.pager.muted {
                "Read " (entries_word(p.page.scanned as u64)) ". "
                @if let Some(next) = &p.page.next { a href=(with(q, "/dead", "after", next)) { "Next page →" } }
            }
        }
    }
}

pub(crate) fn dead_entry(stream: &str, e: &DeadEntry, can_act: bool) -> Markup {
    html! {
        div.page-head {
            h1 { span.muted { "dead letter " } span.mono { (e.id) } }
            a.right href=(dead_link(stream)) { "← " (stream) }
        }
        section.card #dead data-stream=(stream) {
            dl.kv {
                dt { "source stream" } dd.mono { (e.stream.as_deref().unwrap_or("—")) }
                dt { "original id" } dd.mono { (e.original_id.as_deref().unwrap_or("—")) }
                dt { "group" } dd.mono { (e.group.as_deref().unwrap_or("—")) }
                dt { "deliveries" } dd { (e.deliveries.map(|d| d.to_string()).unwrap_or_else(|| "—".into())) }
                dt { "added" } dd { (redis::id_millis(e.id.as_bytes()).map(time).unwrap_or_default()) " UTC" }
                dt { "reason" } dd.reason { (e.reason.as_deref().unwrap_or("—")) }
            }
            h3 { "Fields" }
            table.entries {
                thead { tr { th { "field" } th { "value" } } }
                tbody {
                    @for (k, v) in text_fields(e) {
                        tr { td.mono { (k) } td.value { pre { (v) } } }
                    }
                }
            }
            @if can_act {
                div.actions {
                    button type="button" data-action="dead-one" data-op="replay" data-id=(e.id) data-then=(dead_link(stream)) { "Replay to " (e.stream.as_deref().unwrap_or("source")) }
                    button.danger type="button" data-action="dead-one" data-op="purge" data-id=(e.id) data-then=(dead_link(stream)) { "Purge" }
                }
            }
        }
    }
}

pub(crate) fn schedules(list: &[serde_json::Value], can_act: bool) -> Markup {
    let s = |v: &serde_json::Value, k: &str| match &v[k] {
        serde_json::Value::Null => "—".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    html! {
        div.page-head { h1 { "Schedules" } span.muted { "the same Redis state as " code { "sluice schedule …" } } }
        section.card {
            @if list.is_empty() { p.muted { "No schedules." } }
            @else {
                table #schedules {
                    thead {
                        tr {
                            th { "name" } th { "state" } th { "trigger" } th { "stream" } th { "next tick" }
                            th { "last tick" } th { "last entry" } th.num { "fired" } th.num { "missed" }
                            @if can_act { th {} }
                        }
                    }
                    tbody {
                        @for v in list {
                            @let state = s(v, "state");
                            tr data-name=(s(v, "name")) {
                                td.mono { (s(v, "name")) }
                                td { span.pill.ok[state == "running"].warn[state == "paused"].state { (state) } }
                                td.mono { (s(v, "trigger")) }
                                td.mono { (s(v, "stream")) }
                                td.nowrap { (s(v, "next")) }
                                td.nowrap { (s(v, "last_tick")) }
                                td.mono { (s(v, "last_id")) }
                                td.num { (s(v, "fired")) }
                                td.num { @if v["missed_ticks"].as_u64().unwrap_or(0) > 0 { span.pill.warn { (s(v, "missed_ticks")) } } @else { "0" } }
                                @if can_act {
                                    td.nowrap {
                                        @if state == "paused" {
                                            button.small type="button" data-action="schedule" data-op="resume" data-name=(s(v, "name")) { "Resume" }
                                        } @else if state != "removed" {
                                            button.small type="button" data-action="schedule" data-op="pause" data-name=(s(v, "name")) { "Pause" }
                                        }
                                        " "
                                        @if state != "removed" {
                                            button.small type="button" data-action="schedule" data-op="trigger" data-name=(s(v, "name")) { "Trigger now" }
                                            " "
                                            button.small.danger type="button" data-action="schedule" data-op="remove" data-name=(s(v, "name")) { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if can_act {
            section.card {
                div.card-head { h2 { "Add a schedule" } }
                form #schedule-add.grid {
                    label { "name" input type="text" name="name" required placeholder="nightly-report"; }
                    label { "trigger" select name="kind" {
                        option value="cron" { "cron (with seconds, UTC)" }
                        option value="every" { "every (interval)" }
                        option value="at" { "at (once)" }
                    } }
                    label { "value" input type="text" name="value" required placeholder="0 30 2 * * *  ·  10s  ·  2026-01-01T00:00:00Z"; }
                    label { "stream" input type="text" name="stream" required placeholder="jobs.in"; }
                    label.wide { "fields (one name=value per line)" textarea name="fields" rows="3" placeholder="task_for=report\nrec_id={name}-{tick}" {} }
                    label.check { input type="checkbox" name="paused"; " create paused" }
                    div { button type="submit" { "Add" } }
                }
            }
        }
    }
}

pub(crate) fn delayed(
    list: &[DelayedView],
    peek: Option<(&str, &[WaitingView])>,
    can_act: bool,
) -> Markup {
    html! {
        div.page-head { h1 { "Delayed jobs" } span.muted { "waiting in " code { "sluice:delayed:{stream}" } " until due" } }
        section.card {
            table {
                thead { tr { th { "stream" } th.num { "waiting" } th { "next due (UTC)" } th {} } }
                tbody {
                    @for d in list {
                        tr {
                            td.mono { (d.stream) }
                            td.num { (count(d.count)) }
                            td { (d.next_due_ms.map(time).unwrap_or_else(|| "—".into())) }
                            td { @if d.count > 0 { a href=(format!("/delayed?{}", encode(&[("stream", &d.stream)]))) { "Peek" } } }
                        }
                    }
                }
            }
        }
        @if let Some((stream, jobs)) = peek {
            section.card #delayed data-stream=(stream) {
                div.card-head { h2 { "Earliest waiting for " span.mono { (stream) } } }
                @if jobs.is_empty() { p.muted { "Nothing waiting." } }
                @else {
                    table.entries {
                        thead { tr { th { "due (UTC)" } th { "job" } th { "fields" } @if can_act { th {} } } }
                        tbody {
                            @for j in jobs {
                                tr {
                                    td.nowrap { (time(j.due_ms)) }
                                    td.mono { (clip(&j.job_id, 12)) }
                                    td { (fields(&j.fields, CLIP)) }
                                    @if can_act { td { button.small type="button" data-action="delayed-move" data-job=(j.job_id) { "Move now" } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) fn tap(streams: &[String], stream: Option<&str>, where_text: &str) -> Markup {
    let src = stream.map(|s| {
        let mut pairs = vec![("stream", s)];
        if !where_text.is_empty() {
            pairs.push(("where", where_text));
        }
        format!("/api/v1/tap?{}", encode(&pairs))
    });
    html! {
        div.page-head { h1 { "Live tap" } span.muted { "new entries as they arrive (XREAD, takes nothing from the groups)" } }
        section.card {
            form.filters method="get" action="/tap" {
                label { "stream " input.wide type="text" name="stream" list="streams" required value=(stream.unwrap_or("")); }
                datalist #streams { @for s in streams { option value=(s) {} } }
                label { "field " input type="text" name="where" placeholder="task_for=report" value=(where_text); }
                button type="submit" { "Tap" }
            }
            @if let Some(src) = src {
                div #tap data-src=(src) {
                    p #tap-status.muted { "connecting…" }
                    table.entries {
                        thead { tr { th { "id" } th { "added (UTC)" } th { "fields" } } }
                        tbody #tap-rows {}
                    }
                }
            }
        }
    }
}

pub(crate) fn login(next: &str, error: Option<&str>) -> Markup {
    html! {
        div.login {
            section.card {
                h1 { "Sign in" }
                p.muted { "Paste your console token. It is exchanged for a session cookie; the token is not kept in the browser." }
                @if let Some(e) = error { p.error-text { (e) } }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    label { "token" input type="password" name="token" autocomplete="current-password" required autofocus; }
                    button type="submit" { "Sign in" }
                }
            }
        }
    }
}

pub(crate) fn error_page(status: u16, message: &str) -> Markup {
    html! {
        section.card {
            h1 { (status) }
            p.error-text { (message) }
            p { a href="/" { "← Overview" } }
        }
    }
}
