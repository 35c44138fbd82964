//! TEMPORARY STUB (replaced by the codec work).
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnType {
    String,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultKind {
    None,
    Default,
    Materialized,
    Alias,
}
#[derive(Debug, Clone)]
pub struct ColumnSpec {
    pub name: String,
    pub type_name: String,
    pub ty: ColumnType,
    pub default_kind: DefaultKind,
}
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub database: String,
    pub table: String,
    pub columns: Vec<ColumnSpec>,
}
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("x")]
    X,
}
impl TableSchema {
    pub async fn load(
        _client: &clickhouse::Client,
        _database: &str,
        _table: &str,
    ) -> Result<TableSchema, SchemaError> {
        Err(SchemaError::X)
    }
    pub fn insertable(&self) -> impl Iterator<Item = &ColumnSpec> {
        self.columns.iter()
    }
}
