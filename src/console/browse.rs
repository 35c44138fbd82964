//! Bounded reads of one stream for the stream page and the API: entries
//! newest or oldest first (by id range, time range, field filter), the
//! group's pending list, groups and consumers. Every call has a COUNT; a
//! filtered scan reads at most [`SCAN_LIMIT`] entries per request and
//! returns where it stopped, so even a stream of millions answers at once.

use std::sync::Arc;

use fred::prelude::*;
use serde::Serialize;

use super::params::FieldFilter;
use super::Result;
use crate::fields::FieldPairs;
use crate::redis::StreamError;
use crate::redis::{commands, Message};

/// Most entries one filtered request reads before answering with a cursor.
pub(crate) const SCAN_LIMIT: usize = 10_000;

/// Entries per XRANGE while scanning.
pub(crate) const SCAN_PAGE: usize = 500;

/// Longest field value shown in a list (the entry itself shows all).
pub(crate) const CLIP: usize = 240;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Order {
    Newest,
    Oldest,
}

/// Which entries to list.
#[derive(Debug, Clone)]
pub(crate) struct EntryQuery {
    pub order: Order,
    /// Lowest id (inclusive), `ms-seq` or `ms` (a time).
    pub from: Option<String>,
    /// Highest id (inclusive).
    pub to: Option<String>,
    /// Continue after this id (exclusive; the previous answer's `next`).
    pub after: Option<String>,
    pub count: usize,
    pub filter: FieldFilter,
}

/// One entry as text (values lossy UTF-8; the page escapes them).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EntryView {
    pub id: String,
    /// The id's time part (Unix ms).
    pub time_ms: Option<u64>,
    pub fields: Vec<(String, String)>,
}

impl EntryView {
    pub(crate) fn from_message(m: &Message) -> EntryView {
        EntryView {
            id: String::from_utf8_lossy(&m.id).into_owned(),
            time_ms: m.id_millis(),
            fields: text_fields(&m.fields),
        }
    }
}

pub(crate) fn text_fields(fields: &(impl FieldPairs + ?Sized)) -> Vec<(String, String)> {
    fields
        .pairs()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

/// `s` cut to `max` characters, with `…` when cut.
pub(crate) fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => s.into(),
        Some((i, _)) => format!("{}…", &s[..i]).into(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Listing {
    pub entries: Vec<EntryView>,
    /// Pass as `after` for the next page; None when the range is done.
    pub next: Option<String>,
    /// Entries read from Redis to answer (more than listed when filtering).
    pub scanned: usize,
}

fn exclusive(id: &str) -> Vec<u8> {
    format!("({id}").into_bytes()
}

/// Lists entries as `q` says; see the module docs for the bounds.
pub(crate) async fn entries(client: &Client, stream: &str, q: &EntryQuery) -> Result<Listing> {
    let key: Arc<str> = Arc::from(stream);
    let low = q.from.as_deref().unwrap_or("-").as_bytes().to_vec();
    let high = q.to.as_deref().unwrap_or("+").as_bytes().to_vec();
    let mut cursor = q.after.as_deref().map(exclusive);
    let mut out = Vec::new();
    let mut scanned = 0;
    loop {
        let want = if q.filter.is_empty() {
            q.count - out.len()
        } else {
            SCAN_PAGE
        };
        let page = match q.order {
            Order::Oldest => {
                let start = cursor.as_deref().unwrap_or(&low);
                commands::range(client, &key, start, &high, want).await?
            }
            Order::Newest => {
                let end = cursor.as_deref().unwrap_or(&high);
                commands::rev_range(client, &key, end, &low, want).await?
            }
        };
        scanned += page.len();
        let full = page.len() == want;
        let mut last = None;
        for m in &page {
            last = Some(m.id.clone());
            if q.filter.matches(&m.fields) {
                out.push(EntryView::from_message(m));
                if out.len() == q.count {
                    break;
                }
            }
        }
        let last = last.map(|id| String::from_utf8_lossy(&id).into_owned());
        let done = !full || last.is_none();
        if out.len() == q.count || scanned >= SCAN_LIMIT || done {
            // Finished the range only when the last page was short and
            // nothing was cut off by the count.
            let next = if done && out.len() < q.count {
                None
            } else {
                last
            };
            return Ok(Listing {
                entries: out,
                next,
                scanned,
            });
        }
        cursor = last.as_deref().map(exclusive);
    }
}

/// One pending entry of a group.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PendingView {
    pub id: String,
    pub consumer: String,
    pub idle_ms: u64,
    pub deliveries: u64,
}

/// Up to `count` pending entries of `group`, oldest first, after `after`.
pub(crate) async fn pending(
    client: &Client,
    stream: &str,
    group: &str,
    after: Option<&str>,
    count: usize,
) -> Result<(Vec<PendingView>, Option<String>)> {
    let start = after.map(exclusive).unwrap_or_else(|| b"-".to_vec());
    let rows = match commands::pending(client, stream, group, &start, b"+", count, None).await {
        Ok(rows) => rows,
        Err(StreamError::Reply(m)) if m.starts_with("NOGROUP") => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let list: Vec<PendingView> = rows
        .into_iter()
        .map(|p| PendingView {
            id: String::from_utf8_lossy(&p.id).into_owned(),
            consumer: String::from_utf8_lossy(&p.consumer).into_owned(),
            idle_ms: p.idle_ms,
            deliveries: p.deliveries,
        })
        .collect();
    let next = (list.len() == count)
        .then(|| list.last().map(|p| p.id.clone()))
        .flatten();
    Ok((list, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_on_characters() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("äbcd", 2), "äb…");
    }
}
