//! ClickHouse data: a table's schema, field → column conversion, the
//! Native-format block encoder, payload expansion and row mapping.

pub(crate) mod convert;
pub(crate) mod native;
pub(crate) mod payload;
pub(crate) mod rows;
pub(crate) mod schema;
