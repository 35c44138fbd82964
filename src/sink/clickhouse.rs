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
        let mapper = RowMapper::new(&schema, &flow.metadata, flow.payload.clone())?;
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
        })
    }

    pub fn table_name(&self) -> String {
        format!("{}.{}", self.schema.database, self.schema.table)
    }

    /// Sends one Native block as one insert and waits for the server's confirmation.
    pub async fn insert(&self, block: Bytes) -> Result<(), clickhouse::error::Error> {
        let mut insert = self
            .client
            .insert_formatted_with(self.insert_sql.clone())
            .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
        insert.send(block).await?;
        insert.end().await
    }
}

#[cfg(test)]
mod tests {
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
