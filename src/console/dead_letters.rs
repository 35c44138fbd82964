//! Dead letters in the console: filtered lists, and replay / purge of one,
//! the selected ones, or every one a filter matches.
//!
//! A bulk action is confirmed with a count first ([`preview`]), then runs
//! in windows: each request scans at most [`SCAN_LIMIT`] entries from a
//! cursor, acts on what matched (replay reuses [`crate::cli::dead::replay_entries`],
//! one atomic script per entry; purge XDELs a page at a time) and returns
//! the cursor to go on from. Entries are only ever held a page at a time,
//! so a stream of a million dead letters is as safe as one of ten. Every
//! window stops at `until`, the newest id when the count was taken, so
//! letters that arrive meanwhile are not swept up unseen.

use std::sync::Arc;

use fred::prelude::*;
use serde::Serialize;

use super::browse::{SCAN_LIMIT, SCAN_PAGE};
use super::params::FieldFilter;
use super::Result;
use crate::cli::dead;
use crate::cli::dead::DeadEntry;
use crate::cli::dead::Selection;
use crate::redis::commands;

/// What a dead-letter list or bulk action takes.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeadFilter {
    /// Case-insensitive substring of the reason.
    pub reason: Option<String>,
    /// Conditions on the original fields.
    pub fields: FieldFilter,
}

impl DeadFilter {
    pub(crate) fn is_empty(&self) -> bool {
        self.reason.is_none() && self.fields.is_empty()
    }

    pub(crate) fn matches(&self, e: &DeadEntry) -> bool {
        let reason_ok = self.reason.as_ref().is_none_or(|want| {
            e.reason
                .as_deref()
                .is_some_and(|r| r.to_lowercase().contains(&want.to_lowercase()))
        });
        reason_ok && self.fields.matches(&e.fields)
    }
}

/// A page of a (filtered) dead-letter list, oldest first.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeadPage {
    pub entries: Vec<DeadEntry>,
    /// Pass as `after` for more; None when the stream is done.
    pub next: Option<String>,
    pub scanned: usize,
}

/// Up to `count` dead letters matching `filter`, after `after`, reading at
/// most [`SCAN_LIMIT`] entries.
pub(crate) async fn list(
    client: &Client,
    dead_stream: &str,
    filter: &DeadFilter,
    after: Option<&str>,
    count: usize,
) -> Result<DeadPage> {
    let mut cursor = after.map(str::to_string);
    let mut out = Vec::new();
    let mut scanned = 0;
    loop {
        let want = if filter.is_empty() {
            count - out.len()
        } else {
            SCAN_PAGE
        };
        let page = dead::list(client, dead_stream, cursor.as_deref(), want).await?;
        scanned += page.len();
        let full = page.len() == want;
        for e in page {
            cursor = Some(e.id.clone());
            if filter.matches(&e) {
                out.push(e);
                if out.len() == count {
                    break;
                }
            }
        }
        if out.len() == count || scanned >= SCAN_LIMIT || !full {
            let next = if !full && out.len() < count {
                None
            } else {
                cursor
            };
            return Ok(DeadPage {
                entries: out,
                next,
                scanned,
            });
        }
    }
}

/// The newest id in the stream now (the `until` of a bulk action).
pub(crate) async fn newest_id(client: &Client, dead_stream: &str) -> Result<Option<String>> {
    let key: Arc<str> = Arc::from(dead_stream);
    Ok(commands::rev_range(client, &key, b"+", b"-", 1)
        .await?
        .first()
        .map(|m| String::from_utf8_lossy(&m.id).into_owned()))
}

/// What one window of a bulk action did.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Progress {
    /// Entries the filter matched in this window.
    pub matched: u64,
    /// Replayed or deleted (0 for a preview).
    pub done: u64,
    /// Left in place (no source stream, taken by another operator, …).
    pub skipped: u64,
    pub scanned: u64,
    /// Where the next window starts; None when the action is complete.
    pub cursor: Option<String>,
}

/// The bulk actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bulk {
    /// Count only.
    Preview,
    Replay,
    Purge,
}

impl Bulk {
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Bulk::Preview => "preview",
            Bulk::Replay => "replay",
            Bulk::Purge => "purge",
        }
    }
}

/// One window of `action` over the dead letters matching `filter`, from
/// after `cursor` up to `until` (inclusive).
pub(crate) async fn window(
    client: &Client,
    dead_stream: &str,
    action: Bulk,
    filter: &DeadFilter,
    until: &str,
    cursor: Option<&str>,
) -> Result<Progress> {
    let key: Arc<str> = Arc::from(dead_stream);
    let mut p = Progress::default();
    let mut start = cursor.map_or_else(|| "-".to_string(), |c| format!("({c}"));
    loop {
        let page =
            commands::range(client, &key, start.as_bytes(), until.as_bytes(), SCAN_PAGE).await?;
        p.scanned += page.len() as u64;
        let full = page.len() == SCAN_PAGE;
        let last = page
            .last()
            .map(|m| String::from_utf8_lossy(&m.id).into_owned());
        let matched: Vec<DeadEntry> = page
            .into_iter()
            .map(DeadEntry::from_message)
            .filter(|e| filter.matches(e))
            .collect();
        p.matched += matched.len() as u64;
        match action {
            Bulk::Preview => {}
            Bulk::Replay => {
                for r in dead::replay_entries(client, dead_stream, matched, false).await? {
                    if r.new_id.is_some() {
                        p.done += 1;
                    } else {
                        p.skipped += 1;
                    }
                }
            }
            Bulk::Purge => {
                let ids: Vec<String> = matched.into_iter().map(|e| e.id).collect();
                let n = dead::delete_ids(client, dead_stream, &ids).await?;
                p.done += n;
                p.skipped += ids.len() as u64 - n;
            }
        }
        match last {
            Some(id) if full => {
                if p.scanned as usize >= SCAN_LIMIT {
                    p.cursor = Some(id);
                    return Ok(p);
                }
                start = format!("({id}");
            }
            _ => return Ok(p),
        }
    }
}

/// Replays or purges exactly these dead letters; (done, skipped).
pub(crate) async fn by_ids(
    client: &Client,
    dead_stream: &str,
    action: Bulk,
    ids: &[String],
) -> Result<(u64, u64)> {
    let sel = Selection {
        count: None,
        ids: ids.to_vec(),
    };
    match action {
        Bulk::Preview => Ok((0, 0)),
        Bulk::Replay => {
            let done = dead::replay(client, dead_stream, &sel, false).await?;
            let ok = done.iter().filter(|r| r.new_id.is_some()).count() as u64;
            Ok((ok, ids.len() as u64 - ok))
        }
        Bulk::Purge => {
            let n = dead::delete_ids(client, dead_stream, ids).await?;
            Ok((n, ids.len() as u64 - n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(reason: &str, fields: &[(&str, &str)]) -> DeadEntry {
        DeadEntry {
            id: "1-0".into(),
            original_id: None,
            stream: Some("s".into()),
            group: None,
            deliveries: Some(1),
            reason: Some(reason.into()),
            fields: fields
                .iter()
                .map(|(k, v)| (Bytes::from(k.to_string()), Bytes::from(v.to_string())))
                .collect(),
        }
    }

    #[test]
    fn filter_by_reason_text_and_field_value() {
        let e = entry(
            "column `rec_id` (UInt64): cannot convert",
            &[("task_for", "report")],
        );
        let by_reason = DeadFilter {
            reason: Some("CANNOT convert".into()),
            ..Default::default()
        };
        assert!(by_reason.matches(&e));
        let by_field = DeadFilter {
            fields: FieldFilter::parse(["task_for=report"], "where").unwrap(),
            ..Default::default()
        };
        assert!(by_field.matches(&e));
        let both_wrong = DeadFilter {
            reason: Some("timeout".into()),
            fields: FieldFilter::parse(["task_for=report"], "where").unwrap(),
        };
        assert!(!both_wrong.matches(&e));
        assert!(DeadFilter::default().matches(&e));
    }
}
