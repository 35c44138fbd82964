//! What exactly-once needs from the target table, checked when a flow
//! starts and by `sluice check`, and how a batch is looked up in it.
//!
//! Exactly-once settles a batch by counting the rows carrying its batch id
//! (docs/EXACTLY_ONCE.md). Two things must hold:
//!
//! 1. **The count equals the rows inserted.** A MergeTree or
//!    ReplicatedMergeTree table (or a Distributed table over one) keeps
//!    every row. Refused, naming why: Null (stores nothing, feeding views:
//!    the count is always 0), Summing/Aggregating/Replacing/Collapsing/…
//!    MergeTree (merges fold rows), Buffer, Memory and Log engines, views,
//!    and any table with a TTL (rows deleted by age).
//! 2. **The lookup is bounded.** `WHERE batch_id = …` alone scans the whole
//!    table, which on a large table outlasts `insert_timeout`, so the settle
//!    would never end. The lookup therefore also filters on the table's
//!    primary key, with the key values of the batch's own rows: the batch
//!    is staged in a Memory table (a probe), and the count reads only the
//!    granules holding those key values (`(key) IN (SELECT key FROM probe)`;
//!    through a Distributed table, literal key sets — a subquery set is not
//!    used for the index there on older servers). So a table needs a
//!    primary key, and key columns computed by the server must be
//!    computed the same again (no `now()`, `rand()`, … in their defaults).

use std::fmt::Write;

use clickhouse::Client;

use crate::config::FlowConfig;

#[derive(Debug, thiserror::Error)]
pub(crate) enum EoTableError {
    #[error("delivery = \"exactly_once\" cannot be used with table `{table}`: {reason}")]
    Refused { table: String, reason: String },
    #[error("reading the definition of `{table}` from system.tables: {source}")]
    Query {
        table: String,
        #[source]
        source: clickhouse::error::Error,
    },
}

/// How a batch is looked up in an exactly-once table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EoTable {
    /// The primary key expression list, e.g. `task_for, toStartOfHour(ts)`.
    pub key: String,
    /// A Distributed table: key sets go to the shards as literals.
    pub distributed: bool,
    /// The engine the rows land in (the local table's, for Distributed).
    pub engine: String,
}

/// One table's definition, as `system.tables` / `system.columns` give it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Definition {
    pub engine: String,
    pub engine_full: String,
    pub create_query: String,
    pub primary_key: String,
    /// (column, default kind, default expression)
    pub defaults: Vec<(String, String, String)>,
}

impl EoTable {
    /// Reads the table's definition (and a Distributed table's local table
    /// on the same server) and checks it.
    pub(crate) async fn inspect(
        client: &Client,
        database: &str,
        table: &str,
    ) -> Result<Self, EoTableError> {
        let name = format!("{database}.{table}");
        let def = read_definition(client, database, table)
            .await
            .map_err(|source| EoTableError::Query {
                table: name.clone(),
                source,
            })?
            .ok_or_else(|| refused(&name, "the table was not found".into()))?;
        if def.engine != "Distributed" {
            return check(&def, false).map_err(|reason| refused(&name, reason));
        }
        let Some((db, local)) = distributed_target(&def.engine_full, database) else {
            return Err(refused(
                &name,
                format!("cannot read the local table from `{}`", def.engine_full),
            ));
        };
        let local_def = read_definition(client, &db, &local)
            .await
            .map_err(|source| EoTableError::Query {
                table: format!("{db}.{local}"),
                source,
            })?
            .ok_or_else(|| {
                refused(
                    &name,
                    format!(
                        "its local table `{db}.{local}` is not on this server: sluice reads its engine and primary key there"
                    ),
                )
            })?;
        check(&local_def, true)
            .map_err(|reason| refused(&name, format!("local table `{db}.{local}`: {reason}")))
    }

    /// The condition restricting a lookup to the primary-key values of the
    /// rows staged in `probe` (a quoted `db.table`), for a local table.
    pub(crate) fn key_in_probe(&self, probe: &str) -> String {
        format!("({key}) IN (SELECT {key} FROM {probe})", key = self.key)
    }

    /// The same with a literal set (`values`: `(…),(…)` as `FORMAT Values`
    /// prints them), for a Distributed table.
    pub(crate) fn key_in_values(&self, values: &str) -> String {
        format!("({}) IN ({values})", self.key)
    }

    /// One line for `sluice check`.
    pub(crate) fn describe(&self) -> String {
        let mut out = format!(
            "exactly-once: {} table, batches looked up through its primary key ({})",
            self.engine, self.key
        );
        if self.distributed {
            let _ = write!(out, " on every shard, through the Distributed table");
        }
        out
    }
}

/// The warning for an exactly-once flow whose partly landed batches cannot
/// always be completed exactly: entry ids repeat across its streams (the
/// shards of a sharded stream) and the table has no stream column.
pub(crate) fn completion_warning(flow: &FlowConfig) -> Option<String> {
    (flow.streams.len() > 1 && flow.metadata.id.is_some() && flow.metadata.stream.is_none())
        .then(|| {
            format!(
                "reads {} streams whose entry ids can repeat, without metadata.stream: a partly landed batch is completed with duplicates where ids are shared; set metadata.stream",
                flow.streams.len()
            )
        })
}

fn refused(table: &str, reason: String) -> EoTableError {
    EoTableError::Refused {
        table: table.to_string(),
        reason,
    }
}

async fn read_definition(
    client: &Client,
    database: &str,
    table: &str,
) -> Result<Option<Definition>, clickhouse::error::Error> {
    let rows: Vec<(String, String, String, String)> = client
        .query(
            "SELECT engine, engine_full, create_table_query, primary_key FROM system.tables WHERE database = ? AND name = ?",
        )
        .bind(database)
        .bind(table)
        .fetch_all()
        .await?;
    let Some((engine, engine_full, create_query, primary_key)) = rows.into_iter().next() else {
        return Ok(None);
    };
    let defaults = client
        .query(
            "SELECT name, default_kind, default_expression FROM system.columns WHERE database = ? AND table = ? AND default_kind != ''",
        )
        .bind(database)
        .bind(table)
        .fetch_all()
        .await?;
    Ok(Some(Definition {
        engine,
        engine_full,
        create_query,
        primary_key,
        defaults,
    }))
}

/// Why exactly-once cannot hold on a table with this definition, if it
/// cannot; else how to look a batch up in it.
pub(crate) fn check(def: &Definition, distributed: bool) -> Result<EoTable, String> {
    let base = def
        .engine
        .strip_prefix("Replicated")
        .or_else(|| def.engine.strip_prefix("Shared"))
        .unwrap_or(&def.engine);
    if base != "MergeTree" {
        return Err(engine_reason(&def.engine));
    }
    if has_ttl(&def.create_query) {
        return Err(
            "it has a TTL: rows deleted by age are missing from a batch's count, and the batch would be inserted again".into(),
        );
    }
    let key = def.primary_key.trim();
    if key.is_empty() || key == "tuple()" {
        return Err(
            "it has no primary key (ORDER BY tuple()): looking a batch up would read the whole table; give it an ORDER BY".into(),
        );
    }
    for (column, kind, expression) in &def.defaults {
        if kind != "ALIAS" && mentions(key, column) && !deterministic(expression) {
            return Err(format!(
                "primary-key column `{column}` is {kind} `{expression}`, which differs each time it is computed: a batch's rows could not be found by their key"
            ));
        }
    }
    Ok(EoTable {
        key: key.to_string(),
        distributed,
        engine: def.engine.clone(),
    })
}

/// Why an engine other than (Replicated)MergeTree is refused.
fn engine_reason(engine: &str) -> String {
    let why = if engine == "Null" {
        "it stores nothing (it only feeds materialized views), so a batch's count is always 0 and every retry would insert it again into the views' tables; point the flow at the table a view writes"
    } else if engine.ends_with("MergeTree") {
        "merges fold rows together, so a batch's count falls below the rows inserted and a settled batch would be inserted again; land the rows in a plain MergeTree table (a materialized view can aggregate from there)"
    } else if engine == "Buffer" {
        "rows wait in memory before they reach the table and are lost if the server stops"
    } else if matches!(engine, "Memory" | "Log" | "TinyLog" | "StripeLog") {
        "it has no primary key to look a batch up by (every settle would read the whole table), and keeps no rows across a restart (Memory)"
    } else {
        "only MergeTree and ReplicatedMergeTree tables (or a Distributed table over one) keep every inserted row countable"
    };
    format!("engine {engine}: {why}")
}

/// `text` has the keyword `TTL` outside quotes (a table or column TTL).
fn has_ttl(text: &str) -> bool {
    words(text).any(|(w, quoted)| !quoted && w == "TTL")
}

/// `expression` names `column` (as a bare or backquoted identifier).
fn mentions(expression: &str, column: &str) -> bool {
    words(expression).any(|(w, _)| w == column)
}

/// Functions whose value differs each time a row is computed.
fn deterministic(expression: &str) -> bool {
    !words(expression).any(|(w, _)| {
        let w = w.to_ascii_lowercase();
        w.starts_with("rand")
            || w.starts_with("now")
            || w.starts_with("generate")
            || matches!(
                w.as_str(),
                "today"
                    | "yesterday"
                    | "fuzzbits"
                    | "rownumberinblock"
                    | "rownumberinallblocks"
                    | "blocknumber"
                    | "uptime"
                    | "hostname"
                    | "fqdn"
                    | "queryid"
                    | "initialqueryid"
            )
    })
}

/// The identifiers and keywords of SQL text, each with whether it was
/// quoted: string literals skipped, backquoted and double-quoted
/// identifiers unquoted.
fn words(text: &str) -> impl Iterator<Item = (String, bool)> + '_ {
    let mut chars = text.chars().peekable();
    std::iter::from_fn(move || loop {
        let c = chars.next()?;
        match c {
            '\'' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '\'' => break,
                        _ => {}
                    }
                }
            }
            '`' | '"' => {
                let mut word = String::new();
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => word.extend(chars.next()),
                        d if d == c => break,
                        d => word.push(d),
                    }
                }
                return Some((word, true));
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut word = String::from(c);
                while let Some(&d) = chars.peek() {
                    if d.is_alphanumeric() || d == '_' {
                        word.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                return Some((word, false));
            }
            _ => {}
        }
    })
}

/// The (database, table) a Distributed engine writes to, from
/// `Distributed(cluster, db, table[, key[, policy]])`; `currentDatabase()`
/// or an empty database means `default_db`.
pub(crate) fn distributed_target(engine_full: &str, default_db: &str) -> Option<(String, String)> {
    let args = engine_full
        .trim()
        .strip_prefix("Distributed(")?
        .rsplit_once(')')?
        .0;
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, None::<char>, 0);
    let bytes: Vec<char> = args.chars().collect();
    for (i, &c) in bytes.iter().enumerate() {
        match (quoted, c) {
            (Some(q), c) if c == q => quoted = None,
            (Some(_), _) => {}
            (None, '\'' | '`' | '"') => quoted = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(bytes[start..i].iter().collect::<String>());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(bytes[start..].iter().collect::<String>());
    let unquote = |s: &str| -> String {
        let s = s.trim();
        s.strip_prefix(['\'', '`', '"'])
            .and_then(|s| s.strip_suffix(['\'', '`', '"']))
            .unwrap_or(s)
            .to_string()
    };
    let db = unquote(parts.get(1)?);
    let table = unquote(parts.get(2)?);
    let db = if db.is_empty() || db == "currentDatabase()" {
        default_db.to_string()
    } else {
        db
    };
    (!table.is_empty()).then_some((db, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(engine: &str, create: &str, key: &str) -> Definition {
        Definition {
            engine: engine.into(),
            engine_full: String::new(),
            create_query: create.into(),
            primary_key: key.into(),
            defaults: Vec::new(),
        }
    }

    fn reason(d: &Definition) -> String {
        check(d, false).unwrap_err()
    }

    #[test]
    fn merge_tree_tables_with_a_key_are_accepted() {
        for engine in ["MergeTree", "ReplicatedMergeTree", "SharedMergeTree"] {
            let t = check(
                &def(engine, "CREATE TABLE t (a UInt8) ENGINE = …", "a, b"),
                false,
            )
            .unwrap();
            assert_eq!(t.key, "a, b");
            assert_eq!(
                t.key_in_probe("`db`.`p`"),
                "(a, b) IN (SELECT a, b FROM `db`.`p`)"
            );
        }
    }

    #[test]
    fn engines_whose_count_cannot_hold_are_refused_by_name() {
        let r = reason(&def("Null", "", ""));
        assert!(
            r.contains("engine Null") && r.contains("stores nothing"),
            "{r}"
        );
        for engine in [
            "SummingMergeTree",
            "ReplicatedAggregatingMergeTree",
            "ReplacingMergeTree",
            "CollapsingMergeTree",
            "VersionedCollapsingMergeTree",
        ] {
            let r = reason(&def(engine, "", "a"));
            assert!(r.contains(engine) && r.contains("merges fold rows"), "{r}");
        }
        assert!(reason(&def("Buffer", "", "")).contains("lost if the server stops"));
        assert!(reason(&def("Memory", "", "")).contains("no primary key"));
        assert!(reason(&def("MaterializedView", "", "")).contains("only MergeTree"));
    }

    #[test]
    fn ttl_and_missing_keys_are_refused() {
        let r = reason(&def(
            "MergeTree",
            "CREATE TABLE t (d Date, s String) ENGINE = MergeTree ORDER BY d TTL d + toIntervalDay(7)",
            "d",
        ));
        assert!(r.contains("TTL"), "{r}");
        let r = reason(&def(
            "MergeTree",
            "CREATE TABLE t (d Date, s String TTL d + toIntervalDay(1)) ENGINE = MergeTree ORDER BY d",
            "d",
        ));
        assert!(r.contains("TTL"), "{r}");
        // The word in a string or a quoted name is not a TTL.
        assert!(check(
            &def(
                "MergeTree",
                "CREATE TABLE t (`TTL` String DEFAULT 'TTL') ENGINE = MergeTree ORDER BY d",
                "d"
            ),
            false
        )
        .is_ok());
        assert!(check(
            &def(
                "MergeTree",
                "CREATE TABLE t (s String DEFAULT 'no TTL here') ENGINE = MergeTree ORDER BY d",
                "d"
            ),
            false
        )
        .is_ok());
        assert!(reason(&def("MergeTree", "", "tuple()")).contains("no primary key"));
        assert!(reason(&def("MergeTree", "", "")).contains("no primary key"));
    }

    #[test]
    fn key_columns_computed_differently_each_time_are_refused() {
        let mut d = def("MergeTree", "", "toStartOfHour(at), id");
        d.defaults = vec![("at".into(), "DEFAULT".into(), "now()".into())];
        let r = reason(&d);
        assert!(r.contains("`at`") && r.contains("now()"), "{r}");
        d.defaults = vec![("day".into(), "MATERIALIZED".into(), "toDate(at)".into())];
        assert!(check(&d, false).is_ok(), "deterministic, or not in the key");
        d.defaults = vec![("r".into(), "MATERIALIZED".into(), "rand()".into())];
        assert!(check(&d, false).is_ok(), "not in the key");
    }

    #[test]
    fn distributed_engine_args_name_the_local_table() {
        assert_eq!(
            distributed_target("Distributed(sluice_test, default, t_local, rec_id)", "x"),
            Some(("default".into(), "t_local".into()))
        );
        assert_eq!(
            distributed_target("Distributed('c', '', 'loc', cityHash64(a, b))", "db"),
            Some(("db".into(), "loc".into()))
        );
        assert_eq!(
            distributed_target("Distributed(c, currentDatabase(), `we,ird`)", "db"),
            Some(("db".into(), "we,ird".into()))
        );
        assert_eq!(distributed_target("MergeTree ORDER BY a", "db"), None);
    }
}
