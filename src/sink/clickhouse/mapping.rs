//! The row mapping of a ClickHouse sink for the table's *current* columns.
//!
//! A table can change while sluice runs (`ALTER TABLE … ADD / DROP / MODIFY
//! COLUMN`). The sink re-reads `system.columns` every
//! `clickhouse.schema_refresh` and at once when an insert fails with an
//! error that says the columns may have changed
//! ([`crate::sink::clickhouse::classify::may_mean_schema_changed`]). A changed schema gives a
//! new [`RowMapper`]; batches are converted with the mapping current when
//! they open, and a batch converted for an older one is converted again
//! before its insert, so a new column is filled from the messages' fields
//! and a dropped one is no longer sent — without a restart.
//!
//! A new schema the flow's mapping cannot use (a metadata or batch-id
//! column dropped, a type the encoder cannot write) is refused with an
//! error log; the previous mapping stays, and the inserts' own errors then
//! say what is wrong.

use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::clickhouse::rows::{MappingError, RowMapper};
use crate::clickhouse::schema::{ColumnSpec, SchemaError, TableSchema};
use crate::config::{FlowConfig, MetadataColumns, PayloadConfig};
use crate::redis::Message;

/// What a refresh found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refresh {
    Unchanged,
    /// The columns changed (described) and the new mapping is in use.
    Changed(String),
    /// The columns changed but the flow's mapping does not fit them (why);
    /// the previous mapping stays.
    Unusable(String),
}

/// Why a refresh could not read the columns.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RefreshError {
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// The flow's settings that build a mapping from a schema.
#[derive(Debug, Clone)]
struct Spec {
    metadata: MetadataColumns,
    payload: Option<PayloadConfig>,
    batch_id_column: Option<String>,
}

impl Spec {
    fn mapper(&self, schema: &TableSchema) -> Result<RowMapper, MappingError> {
        RowMapper::with_batch_id_column(
            schema,
            &self.metadata,
            self.payload.clone(),
            self.batch_id_column.as_deref(),
        )
    }
}

/// The current schema and its mapping, swapped as a pair.
struct Current {
    schema: Arc<TableSchema>,
    mapper: Arc<RowMapper>,
}

pub(crate) struct LiveMapping {
    spec: Spec,
    current: RwLock<Current>,
}

impl LiveMapping {
    /// The mapping of `flow` onto `schema`.
    pub(crate) fn new(schema: TableSchema, flow: &FlowConfig) -> Result<Self, MappingError> {
        let spec = Spec {
            metadata: flow.metadata.clone(),
            payload: flow.payload.clone(),
            batch_id_column: flow.batch_id_column.clone(),
        };
        let mapper = Arc::new(spec.mapper(&schema)?);
        Ok(LiveMapping {
            spec,
            current: RwLock::new(Current {
                schema: Arc::new(schema),
                mapper,
            }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The mapping for the columns as last read.
    pub(crate) fn current(&self) -> Arc<RowMapper> {
        self.read().mapper.clone()
    }

    /// The columns as last read.
    pub(crate) fn schema(&self) -> Arc<TableSchema> {
        self.read().schema.clone()
    }

    /// `mapper` is the current mapping.
    pub(crate) fn is_current(&self, mapper: &Arc<RowMapper>) -> bool {
        Arc::ptr_eq(&self.read().mapper, mapper)
    }

    /// The writable columns of the current mapping.
    pub(crate) fn columns(&self) -> Vec<ColumnSpec> {
        self.current().columns().to_vec()
    }

    /// Encodes `messages` with the current mapping (see [`RowMapper::encode_all`]).
    pub(crate) fn encode_all(&self, messages: &[Message], batch_id: Option<&str>) -> Bytes {
        self.current().encode_all(messages, batch_id)
    }

    /// Puts `schema` in use if it differs from the current one and the
    /// flow's mapping fits it.
    pub(crate) fn update(&self, schema: TableSchema) -> Refresh {
        let old = self.schema();
        if *old == schema {
            return Refresh::Unchanged;
        }
        let changes = schema.changes_since(&old);
        match self.spec.mapper(&schema) {
            Ok(mapper) => {
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                *current = Current {
                    schema: Arc::new(schema),
                    mapper: Arc::new(mapper),
                };
                Refresh::Changed(changes)
            }
            Err(e) => Refresh::Unusable(format!("{changes}: {e}")),
        }
    }

    /// Re-reads the columns through `client` and [`update`](Self::update)s.
    pub(crate) async fn refresh(
        &self,
        client: &clickhouse::Client,
    ) -> Result<Refresh, RefreshError> {
        let old = self.schema();
        let schema = TableSchema::load(client, &old.database, &old.table).await?;
        Ok(self.update(schema))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::schema::{ColumnType, DefaultKind};

    fn schema(columns: &[(&str, ColumnType)]) -> TableSchema {
        TableSchema {
            database: "db".into(),
            table: "t".into(),
            columns: columns
                .iter()
                .map(|(name, ty)| ColumnSpec {
                    name: name.to_string(),
                    type_name: ty.to_string(),
                    ty: ty.clone(),
                    default_kind: DefaultKind::None,
                })
                .collect(),
        }
    }

    fn flow(extra: &str) -> FlowConfig {
        let text = format!(
            "name = \"f\"\nstreams = [\"s\"]\nsink = {{ type = \"clickhouse\", table = \"t\" }}\n{extra}"
        );
        toml::from_str(&text).expect("flow config")
    }

    #[test]
    fn a_changed_schema_swaps_the_mapping_and_an_unusable_one_does_not() {
        let id = ("id", ColumnType::UInt64);
        let live = LiveMapping::new(
            schema(&[id.clone(), ("_id", ColumnType::String)]),
            &flow("metadata = { id = \"_id\" }"),
        )
        .unwrap();
        let first = live.current();
        assert!(live.is_current(&first));
        assert_eq!(
            live.update(schema(&[id.clone(), ("_id", ColumnType::String)])),
            Refresh::Unchanged
        );
        assert!(live.is_current(&first));

        let added = schema(&[
            id.clone(),
            ("_id", ColumnType::String),
            ("extra", ColumnType::String),
        ]);
        match live.update(added) {
            Refresh::Changed(what) => assert!(what.contains("added extra"), "{what}"),
            other => panic!("{other:?}"),
        }
        assert!(!live.is_current(&first));
        assert_eq!(live.columns().len(), 3);

        // The metadata column dropped: the flow cannot map onto that.
        let second = live.current();
        match live.update(schema(&[id])) {
            Refresh::Unusable(why) => assert!(why.contains("_id"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(live.is_current(&second), "the previous mapping stays");
    }
}
