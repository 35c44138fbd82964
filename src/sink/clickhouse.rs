//! The ClickHouse sink: one Native-format insert per batch, LZ4-compressed,
//! through the official crate. Works against 18.16 and current servers
//! (validation off; no version-specific settings needed for plain inserts).

use std::time::Duration;

use bytes::Bytes;
use clickhouse::Client;

use crate::batch::{MappingError, RowMapper};
use crate::config::{ClickHouseConfig, FlowConfig};
use crate::schema::{SchemaError, TableSchema};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

/// A client for `cfg`. Validation is off: it sends a setting 18.16 rejects.
pub fn client(cfg: &ClickHouseConfig) -> Client {
    let client = Client::default()
        .with_url(&cfg.url)
        .with_database(&cfg.database)
        .with_user(&cfg.user)
        .with_validation(false);
    let client = if cfg.password.is_empty() {
        client
    } else {
        client.with_password(&cfg.password)
    };
    if cfg.compression {
        client.with_compression(clickhouse::Compression::Lz4)
    } else {
        client.with_compression(clickhouse::Compression::None)
    }
}

/// `SELECT version()`.
pub async fn server_version(client: &Client) -> Result<String, clickhouse::error::Error> {
    client.query("SELECT version()").fetch_one::<String>().await
}

/// Backquotes an identifier so no table or database name can inject SQL.
pub fn quote_identifier(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        match c {
            '`' => out.push_str("\\`"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('`');
    out
}

/// `db.table` split: a sink table may name its database (`logs.events`);
/// otherwise the configured database is used.
pub fn split_table<'a>(default_db: &'a str, table: &'a str) -> (&'a str, &'a str) {
    match table.split_once('.') {
        Some((db, t)) if !db.is_empty() && !t.is_empty() => (db, t),
        _ => (default_db, table),
    }
}

/// A flow's ClickHouse table: its schema, column mapping and insert statement.
pub struct ClickHouseSink {
    client: Client,
    insert_sql: String,
    pub schema: TableSchema,
    pub mapper: RowMapper,
    insert_timeout: Duration,
    /// `insert_deduplication_token` exists (ClickHouse 22.1+).
    pub dedup_token: bool,
    /// Before 19.1: LowCardinality needs an experimental setting in DDL, and
    /// `DROP … SYNC` does not exist (nor is it needed: drops are eager).
    pub legacy_server: bool,
}

impl ClickHouseSink {
    /// Connects, learns the table's columns and checks the flow's mapping.
    pub async fn open(
        cfg: &ClickHouseConfig,
        flow: &FlowConfig,
        table: &str,
    ) -> Result<Self, SinkError> {
        let client = client(cfg);
        let (db, table) = split_table(&cfg.database, table);
        let schema = TableSchema::load(&client, db, table).await?;
        let mapper = RowMapper::with_batch_id_column(
            &schema,
            &flow.metadata,
            flow.payload.clone(),
            flow.batch_id_column.as_deref(),
        )?;
        let version = server_version(&client).await?;
        let dedup_token = version_at_least(&version, 22, 1);
        let legacy_server = !version_at_least(&version, 19, 1);
        // No column list: each Native block names its columns, and a block
        // may leave out DEFAULT-expression columns its rows lack.
        let insert_sql = format!(
            "INSERT INTO {}.{} FORMAT Native",
            quote_identifier(db),
            quote_identifier(table)
        );
        Ok(ClickHouseSink {
            client,
            insert_sql,
            schema,
            mapper,
            insert_timeout: cfg.insert_timeout,
            dedup_token,
            legacy_server,
        })
    }

    pub fn table_name(&self) -> String {
        format!("{}.{}", self.schema.database, self.schema.table)
    }

    /// Sends one Native block as one insert and waits for the server's
    /// confirmation. `batch_id` becomes the deduplication token where the
    /// server has one.
    pub async fn insert(
        &self,
        block: Bytes,
        batch_id: Option<&str>,
    ) -> Result<(), clickhouse::error::Error> {
        self.send_native(self.insert_sql.clone(), block, batch_id)
            .await
    }

    /// Sends one Native block into `table_sql` (a quoted `db.table`).
    pub async fn insert_native(
        &self,
        table_sql: &str,
        block: Bytes,
        batch_id: Option<&str>,
    ) -> Result<(), clickhouse::error::Error> {
        self.send_native(
            format!("INSERT INTO {table_sql} FORMAT Native"),
            block,
            batch_id,
        )
        .await
    }

    async fn send_native(
        &self,
        sql: String,
        block: Bytes,
        batch_id: Option<&str>,
    ) -> Result<(), clickhouse::error::Error> {
        let mut insert = self
            .client
            .insert_formatted_with(sql)
            .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
        if let (true, Some(id)) = (self.dedup_token, batch_id) {
            insert = insert.with_setting("insert_deduplication_token", id);
        }
        insert.send(block).await?;
        insert.end().await
    }

    pub fn insert_timeout(&self) -> Duration {
        self.insert_timeout
    }
}

impl ClickHouseSink {
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Rows carrying `batch_id` in `column` (exactly-once recovery).
    pub async fn count_batch(
        &self,
        column: &str,
        batch_id: &str,
    ) -> Result<u64, clickhouse::error::Error> {
        let sql = format!(
            "SELECT count() FROM {}.{} WHERE {} = ?",
            quote_identifier(&self.schema.database),
            quote_identifier(&self.schema.table),
            quote_identifier(column)
        );
        self.client
            .query(&sql)
            .bind(batch_id)
            .fetch_one::<u64>()
            .await
    }
}

impl ClickHouseSink {
    /// Entry ids (`id_column`) of the rows carrying `batch_id` in `batch_column`.
    pub async fn present_ids(
        &self,
        id_column: &str,
        batch_column: &str,
        batch_id: &str,
    ) -> Result<std::collections::HashSet<Vec<u8>>, clickhouse::error::Error> {
        let sql = format!(
            "SELECT {} FROM {}.{} WHERE {} = ?",
            quote_identifier(id_column),
            quote_identifier(&self.schema.database),
            quote_identifier(&self.schema.table),
            quote_identifier(batch_column)
        );
        let ids: Vec<String> = self.client.query(&sql).bind(batch_id).fetch_all().await?;
        Ok(ids.into_iter().map(String::into_bytes).collect())
    }
}

/// `major.minor` of a `SELECT version()` string is at least the given one.
pub fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_compare_numerically() {
        assert!(!super::version_at_least("18.16.1", 22, 1));
        assert!(super::version_at_least("22.1.3.7", 22, 1));
        assert!(super::version_at_least("24.8.4.13", 22, 1));
        assert!(!super::version_at_least("21.12.1", 22, 1));
    }

    use super::*;

    #[test]
    fn identifiers_are_quoted_safely() {
        assert_eq!(quote_identifier("events"), "`events`");
        assert_eq!(
            quote_identifier("a`; DROP TABLE x; --"),
            "`a\\`; DROP TABLE x; --`"
        );
        assert_eq!(quote_identifier("back\\slash"), "`back\\\\slash`");
    }

    #[test]
    fn table_may_name_its_database() {
        assert_eq!(split_table("default", "logs.events"), ("logs", "events"));
        assert_eq!(split_table("default", "events"), ("default", "events"));
    }
}
