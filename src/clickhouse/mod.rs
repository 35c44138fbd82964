//! ClickHouse data: a table's schema, field → column conversion, the
//! Native-format block encoder, payload expansion and row mapping.

pub mod convert;
pub mod native;
pub mod payload;
pub mod rows;
pub mod schema;
