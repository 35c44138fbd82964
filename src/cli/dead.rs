//! Dead-letter tooling: `sluice dead list|show|replay|purge`.
//!
//! A dead-letter entry (see [`crate::redis::dead_letter`]) holds
//! `sluice.id`, `sluice.stream`, `sluice.group`, `sluice.deliveries`,
//! `sluice.reason`, then the message's original fields. Replay strips every
//! `sluice.*` field and adds the originals back to `sluice.stream` — one Lua
//! script per entry deletes it from the dead-letter stream and adds it to
//! its source together, so an entry is replayed once even if two operators
//! replay at the same time.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::LazyLock;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Value;

use crate::config::Config;
use crate::flow::retry;
use crate::redis;
use crate::redis::client;
use crate::redis::dead_letter::{
    FIELD_DELIVERIES, FIELD_GROUP, FIELD_ID, FIELD_REASON, FIELD_STREAM,
};
use crate::redis::{commands, Message, StreamError};

fn custom(name: &'static str) -> fred::types::CustomCommand {
    fred::types::CustomCommand::new_static(name, fred::types::ClusterHash::FirstKey, false)
}

/// Entries read per XRANGE page.
const PAGE: usize = 500;

/// One dead letter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct DeadEntry {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// The id it had in its source stream.
    pub original_id: Option<String>,
    pub stream: Option<String>,
    pub group: Option<String>,
    pub deliveries: Option<u64>,
    pub reason: Option<String>,
    /// The original fields (every `sluice.*` field left out).
    #[serde(serialize_with = "ser_fields")]
    pub fields: Vec<(Bytes, Bytes)>,
}

fn ser_fields<S: serde::Serializer>(f: &[(Bytes, Bytes)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(f.len()))?;
    for (k, v) in f {
        m.serialize_entry(&String::from_utf8_lossy(k), &String::from_utf8_lossy(v))?;
    }
    m.end()
}

impl DeadEntry {
    pub(crate) fn from_message(m: Message) -> DeadEntry {
        let text = |name: &str| {
            m.field(name.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        DeadEntry {
            id: String::from_utf8_lossy(&m.id).into_owned(),
            original_id: text(FIELD_ID),
            stream: text(FIELD_STREAM),
            group: text(FIELD_GROUP),
            deliveries: text(FIELD_DELIVERIES).and_then(|d| d.parse().ok()),
            reason: text(FIELD_REASON),
            fields: retry::original_fields(&m.fields),
        }
    }
}

/// Up to `count` dead letters, oldest first, starting after `after` (an id)
/// or at the beginning.
pub(crate) async fn list(
    client: &Client,
    dead_stream: &str,
    after: Option<&str>,
    count: usize,
) -> Result<Vec<DeadEntry>, StreamError> {
    let stream: std::sync::Arc<str> = dead_stream.into();
    let start = match after {
        Some(id) => format!("({id}"),
        None => "-".to_string(),
    };
    Ok(
        commands::range(client, &stream, start.as_bytes(), b"+", count)
            .await?
            .into_iter()
            .map(DeadEntry::from_message)
            .collect(),
    )
}

/// One dead letter by id.
pub(crate) async fn show(
    client: &Client,
    dead_stream: &str,
    id: &str,
) -> Result<Option<DeadEntry>, StreamError> {
    let stream: std::sync::Arc<str> = dead_stream.into();
    Ok(
        commands::range(client, &stream, id.as_bytes(), id.as_bytes(), 1)
            .await?
            .into_iter()
            .next()
            .map(DeadEntry::from_message),
    )
}

/// Which entries a replay or purge takes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    /// At most this many (oldest first); None = all.
    pub count: Option<usize>,
    /// Exactly these ids (then `count` is ignored).
    pub ids: Vec<String>,
}

async fn select(
    client: &Client,
    dead_stream: &str,
    sel: &Selection,
) -> Result<Vec<DeadEntry>, StreamError> {
    if !sel.ids.is_empty() {
        let mut out = Vec::new();
        for id in &sel.ids {
            if let Some(e) = show(client, dead_stream, id).await? {
                out.push(e);
            }
        }
        return Ok(out);
    }
    let limit = sel.count.unwrap_or(usize::MAX);
    let mut out: Vec<DeadEntry> = Vec::new();
    while out.len() < limit {
        let after = out.last().map(|e| e.id.clone());
        let page = list(
            client,
            dead_stream,
            after.as_deref(),
            PAGE.min(limit - out.len()),
        )
        .await?;
        if page.is_empty() {
            break;
        }
        out.extend(page);
    }
    Ok(out)
}

/// Deletes the dead letter and adds its original fields to its source
/// stream, or does nothing if another replay took it first.
/// KEYS: dead stream, source stream. ARGV: dead id, fields….
const REPLAY: &str = r#"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return false end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
"#;

static REPLAY_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(REPLAY));

/// What replay did (or, in a dry run, would do) with one entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct Replayed {
    pub dead_id: String,
    pub stream: Option<String>,
    /// The new id in the source stream; None in a dry run, when skipped, or
    /// when another replay took the entry first.
    pub new_id: Option<String>,
    /// Why it was left in the dead-letter stream.
    pub skipped: Option<String>,
}

/// Moves the selected dead letters back to their source streams with their
/// original fields. With `dry_run`, only reports what it would do.
pub(crate) async fn replay(
    client: &Client,
    dead_stream: &str,
    sel: &Selection,
    dry_run: bool,
) -> Result<Vec<Replayed>, StreamError> {
    let entries = select(client, dead_stream, sel).await?;
    replay_entries(client, dead_stream, entries, dry_run).await
}

/// Replays dead letters already read (see [`replay`]).
pub(crate) async fn replay_entries(
    client: &Client,
    dead_stream: &str,
    entries: Vec<DeadEntry>,
    dry_run: bool,
) -> Result<Vec<Replayed>, StreamError> {
    let script = &REPLAY_S;
    let mut out = Vec::new();
    for e in entries {
        let skip = match (&e.stream, e.fields.is_empty()) {
            (None, _) => Some(format!("no {FIELD_STREAM} field")),
            (Some(_), true) => Some("no original fields".to_string()),
            _ => None,
        };
        let mut r = Replayed {
            dead_id: e.id.clone(),
            stream: e.stream.clone(),
            new_id: None,
            skipped: skip,
        };
        if r.skipped.is_none() && !dry_run {
            let target = e.stream.clone().expect("checked");
            let mut args: Vec<Value> = vec![e.id.as_str().into()];
            for (k, v) in e.fields {
                args.push(Value::Bytes(k));
                args.push(Value::Bytes(v));
            }
            let slot = |k: &str| fred::util::redis_keyslot(k.as_bytes());
            if client.is_clustered() && slot(dead_stream) != slot(&target) {
                // Two slots (e.g. `jobs:dead` and the shard `jobs:{3}`): no
                // script can do both. Add first, then delete, so a crash in
                // between duplicates the entry instead of losing it.
                let mut xadd: Vec<Value> = vec![target.as_str().into(), "*".into()];
                xadd.extend(args.split_off(1));
                let new_id: String = client.custom(custom("XADD"), xadd).await?;
                let deleted: i64 = client.xdel(dead_stream, e.id.as_str()).await?;
                r.new_id = Some(new_id);
                if deleted == 0 {
                    tracing::warn!(dead_id = %e.id, %target, "replayed a dead letter that another replay or purge took meanwhile: it may now be in the stream twice");
                }
            } else {
                let reply: Value = script
                    .evalsha_with_reload(client, vec![dead_stream.to_string(), target], args)
                    .await?;
                r.new_id = reply.as_string();
                if r.new_id.is_none() {
                    r.skipped = Some("already taken by another replay or purge".into());
                }
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// What to purge.
#[derive(Debug, Clone, Default)]
pub(crate) struct PurgeSelection {
    /// Every entry present when the purge starts.
    pub all: bool,
    pub sel: Selection,
}

/// Deletes dead letters; returns how many were (or, dry, would be) deleted.
pub(crate) async fn purge(
    client: &Client,
    dead_stream: &str,
    what: &PurgeSelection,
    dry_run: bool,
) -> Result<u64, StreamError> {
    if what.all {
        // Up to the newest entry now, so letters arriving meanwhile stay.
        let newest: Value = client
            .custom(
                custom("XREVRANGE"),
                vec![
                    dead_stream.to_string(),
                    "+".into(),
                    "-".into(),
                    "COUNT".into(),
                    "1".into(),
                ],
            )
            .await?;
        let last = match newest {
            Value::Array(items) => items.into_iter().next().and_then(|e| match e {
                Value::Array(parts) => parts.into_iter().next().and_then(|id| id.as_string()),
                _ => None,
            }),
            _ => None,
        };
        let Some(last) = last else {
            return Ok(0);
        };
        let Some((ms, seq)) = redis::parse_id(last.as_bytes()) else {
            return Ok(0);
        };
        let stream: std::sync::Arc<str> = dead_stream.into();
        if dry_run {
            // Count entries up to `last`.
            let mut n = 0u64;
            let mut start = "-".to_string();
            loop {
                let page =
                    commands::range(client, &stream, start.as_bytes(), last.as_bytes(), PAGE)
                        .await?;
                n += page.len() as u64;
                match page.last() {
                    Some(m) if page.len() == PAGE => {
                        start = format!("({}", String::from_utf8_lossy(&m.id))
                    }
                    _ => break,
                }
            }
            return Ok(n);
        }
        let min_id = format!("{ms}-{}", seq + 1);
        let removed: i64 = client
            .custom(
                custom("XTRIM"),
                vec![dead_stream.to_string(), "MINID".into(), min_id],
            )
            .await?;
        return Ok(removed.max(0) as u64);
    }
    let entries = select(client, dead_stream, &what.sel).await?;
    if dry_run || entries.is_empty() {
        return Ok(entries.len() as u64);
    }
    let ids: Vec<String> = entries.into_iter().map(|e| e.id).collect();
    delete_ids(client, dead_stream, &ids).await
}

/// XDELs `ids` from the dead-letter stream, a page at a time; returns how
/// many were still there.
pub(crate) async fn delete_ids(
    client: &Client,
    dead_stream: &str,
    ids: &[String],
) -> Result<u64, StreamError> {
    let mut removed = 0u64;
    for chunk in ids.chunks(PAGE) {
        let n: i64 = client.xdel(dead_stream, chunk.to_vec()).await?;
        removed += n.max(0) as u64;
    }
    Ok(removed)
}

// ---- the CLI ----

#[derive(Debug, Args)]
pub(crate) struct DeadArgs {
    /// Config file (its `[redis]`, and its flows' dead-letter streams).
    #[arg(long, short, env = "SLUICE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The flow whose dead-letter stream to use.
    #[arg(long, global = true)]
    pub flow: Option<String>,
    /// A dead-letter stream by name (instead of --flow).
    #[arg(long, global = true, conflicts_with = "flow")]
    pub stream: Option<String>,
    #[command(subcommand)]
    pub command: DeadCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// Dead letters, oldest first: id, source stream, deliveries, reason.
    List {
        /// At most this many per stream.
        #[arg(long, default_value_t = 20)]
        count: usize,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with all its fields.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to their source stream with their original fields.
    Replay {
        /// At most this many, oldest first (default: all).
        #[arg(long)]
        count: Option<usize>,
        /// Only this id (repeat for more).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters (`--all`, `--count N` oldest, or `--id ID`…).
    Purge {
        #[arg(long, conflicts_with_all = ["count", "ids"])]
        all: bool,
        #[arg(long)]
        count: Option<usize>,
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Show how many would be deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The dead-letter streams a command is about.
fn targets(
    config: &Config,
    flow: Option<&str>,
    stream: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    if let Some(s) = stream {
        return Ok(vec![s.to_string()]);
    }
    if let Some(f) = flow {
        let cfg = config.flows.iter().find(|c| c.name == f).with_context(|| {
            format!(
                "no flow named `{f}` (flows: {})",
                config
                    .flows
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        return Ok(vec![cfg.dead_letter_stream()]);
    }
    let mut all: Vec<String> = config
        .flows
        .iter()
        .map(|f| f.dead_letter_stream())
        .collect();
    all.sort();
    all.dedup();
    if all.is_empty() {
        anyhow::bail!("the config has no flows: name a dead-letter stream with --stream");
    }
    Ok(all)
}

fn one(targets: Vec<String>) -> anyhow::Result<String> {
    if targets.len() == 1 {
        return Ok(targets.into_iter().next().expect("one"));
    }
    anyhow::bail!(
        "several dead-letter streams ({}): choose one with --flow or --stream",
        targets.join(", ")
    )
}

fn clip(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Runs one `sluice dead …` command and prints its result.
pub(crate) async fn main(args: DeadArgs) -> anyhow::Result<()> {
    let path = args
        .config
        .clone()
        .context("--config (or SLUICE_CONFIG) is required")?;
    let config = Config::load(&path)?;
    let client = client::connect(&config.redis).await.context("redis.url")?;
    print!("{}", run(&client, &config, args).await?);
    Ok(())
}

/// Runs one command; returns what to print.
pub(crate) async fn run(
    client: &Client,
    config: &Config,
    args: DeadArgs,
) -> anyhow::Result<String> {
    let streams = targets(config, args.flow.as_deref(), args.stream.as_deref())?;
    let mut out = String::new();
    match args.command {
        DeadCommand::List { count, json } => {
            let mut all = serde_json::Map::new();
            for s in &streams {
                let len = commands::len(client, s).await?;
                let entries = list(client, s, None, count).await?;
                if json {
                    all.insert(
                        s.clone(),
                        serde_json::json!({ "length": len, "entries": entries }),
                    );
                    continue;
                }
                writeln!(out, "dead-letter stream `{s}`: {len} entries")?;
                if entries.is_empty() {
                    continue;
                }
                let w_id = entries.iter().map(|e| e.id.len()).max().unwrap_or(2).max(2);
                let w_src = entries
                    .iter()
                    .map(|e| e.stream.as_deref().unwrap_or("-").len())
                    .max()
                    .unwrap_or(6)
                    .max(6);
                writeln!(
                    out,
                    "{:<w_id$}  {:<w_src$}  DELIVERIES  REASON",
                    "ID", "SOURCE"
                )?;
                for e in &entries {
                    writeln!(
                        out,
                        "{:<w_id$}  {:<w_src$}  {:<10}  {}",
                        e.id,
                        e.stream.as_deref().unwrap_or("-"),
                        e.deliveries.map(|d| d.to_string()).unwrap_or("-".into()),
                        clip(e.reason.as_deref().unwrap_or("-"), 120)
                    )?;
                }
                if (len as usize) > entries.len() {
                    writeln!(out, "… {} more (use --count)", len as usize - entries.len())?;
                }
            }
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
            }
        }
        DeadCommand::Show { id, json } => {
            let s = one(streams)?;
            let e = show(client, &s, &id)
                .await?
                .with_context(|| format!("no entry {id} in `{s}`"))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&e)?)?;
            } else {
                writeln!(out, "id:           {}", e.id)?;
                writeln!(out, "source:       {}", e.stream.as_deref().unwrap_or("-"))?;
                writeln!(
                    out,
                    "original id:  {}",
                    e.original_id.as_deref().unwrap_or("-")
                )?;
                writeln!(out, "group:        {}", e.group.as_deref().unwrap_or("-"))?;
                writeln!(
                    out,
                    "deliveries:   {}",
                    e.deliveries.map(|d| d.to_string()).unwrap_or("-".into())
                )?;
                writeln!(out, "reason:       {}", e.reason.as_deref().unwrap_or("-"))?;
                writeln!(out, "fields:")?;
                for (k, v) in &e.fields {
                    writeln!(
                        out,
                        "  {} = {}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    )?;
                }
            }
        }
        DeadCommand::Replay {
            count,
            ids,
            dry_run,
        } => {
            let s = one(streams)?;
            let done = replay(client, &s, &Selection { count, ids }, dry_run).await?;
            let mut moved = 0;
            for r in &done {
                let target = r.stream.as_deref().unwrap_or("-");
                match (&r.new_id, &r.skipped) {
                    (_, Some(why)) => writeln!(out, "skip    {} ({why})", r.dead_id)?,
                    (Some(new), None) => {
                        moved += 1;
                        writeln!(out, "replay  {} -> {target} {new}", r.dead_id)?
                    }
                    (None, None) => {
                        moved += 1;
                        writeln!(out, "would replay  {} -> {target}", r.dead_id)?
                    }
                }
            }
            if dry_run {
                writeln!(out, "dry run: {moved} entries would be replayed from `{s}`")?;
            } else {
                writeln!(out, "replayed {moved} entries from `{s}`")?;
            }
        }
        DeadCommand::Purge {
            all,
            count,
            ids,
            dry_run,
        } => {
            if !all && count.is_none() && ids.is_empty() {
                anyhow::bail!("say what to purge: --all, --count N or --id ID");
            }
            let s = one(streams)?;
            let n = purge(
                client,
                &s,
                &PurgeSelection {
                    all,
                    sel: Selection { count, ids },
                },
                dry_run,
            )
            .await?;
            if dry_run {
                writeln!(out, "dry run: {n} entries would be deleted from `{s}`")?;
            } else {
                writeln!(out, "deleted {n} entries from `{s}`")?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn entry_separates_bookkeeping_from_original_fields() {
        let m = Message {
            stream: Arc::from("events:dead"),
            id: Bytes::from("7-0"),
            fields: vec![
                (Bytes::from(FIELD_ID), Bytes::from("5-1")),
                (Bytes::from(FIELD_STREAM), Bytes::from("events")),
                (Bytes::from(FIELD_GROUP), Bytes::from("g")),
                (Bytes::from(FIELD_DELIVERIES), Bytes::from("3")),
                (Bytes::from(FIELD_REASON), Bytes::from("bad")),
                (Bytes::from("rec_id"), Bytes::from("1")),
                (Bytes::from("sluice.attempt"), Bytes::from("3")),
                (Bytes::from("data"), Bytes::from("{}")),
            ]
            .into(),
            deliveries: 0,
        };
        let e = DeadEntry::from_message(m);
        assert_eq!(e.original_id.as_deref(), Some("5-1"));
        assert_eq!(e.stream.as_deref(), Some("events"));
        assert_eq!(e.deliveries, Some(3));
        assert_eq!(
            e.fields,
            vec![
                (Bytes::from("rec_id"), Bytes::from("1")),
                (Bytes::from("data"), Bytes::from("{}")),
            ]
        );
    }

    #[test]
    fn clip_keeps_one_line() {
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
