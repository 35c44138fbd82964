//! TEMPORARY STUB
#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'a> {
    Text(&'a [u8]),
    Json(&'a serde_json::Value),
    Int(i64),
    UnixMillis(u64),
}
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column `{column}` ({column_type}): cannot convert {value}: {reason}")]
pub struct ConvertError {
    pub column: String,
    pub column_type: String,
    pub value: String,
    pub reason: String,
}
