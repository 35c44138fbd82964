//! Batching: maps each message's fields onto the table's columns, encodes
//! the row into the open Native block, and tells when the batch is full.
//! A message whose fields cannot be converted becomes a dead letter here and
//! never reaches ClickHouse; the rest of the batch carries on.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;

use crate::config::{BatchConfig, MetadataColumns, PayloadConfig};
use crate::convert::FieldValue;
use crate::native::BlockEncoder;
use crate::payload;
use crate::schema::{ColumnSpec, TableSchema};
use crate::stream::dead_letter::DeadLetter;
use crate::stream::Message;

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("metadata column `{column}` ({key}) is not a column of {table}")]
    MissingMetadataColumn {
        column: String,
        key: &'static str,
        table: String,
    },
}

/// Which column receives each metadata value.
#[derive(Debug, Clone, Default)]
struct MetadataSlots {
    id: Option<usize>,
    stream: Option<usize>,
    enqueued_at: Option<usize>,
    deliveries: Option<usize>,
}

/// Maps message fields to column positions; built once per flow.
#[derive(Debug, Clone)]
pub struct RowMapper {
    columns: Vec<ColumnSpec>,
    by_name: HashMap<Box<[u8]>, usize>,
    meta: MetadataSlots,
    payload: Option<PayloadConfig>,
}

impl RowMapper {
    pub fn new(
        schema: &TableSchema,
        metadata: &MetadataColumns,
        payload: Option<PayloadConfig>,
    ) -> Result<Self, MappingError> {
        let columns: Vec<ColumnSpec> = schema.insertable().cloned().collect();
        let by_name = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_bytes().into(), i))
            .collect::<HashMap<Box<[u8]>, usize>>();
        let table = format!("{}.{}", schema.database, schema.table);
        let slot =
            |name: &Option<String>, key: &'static str| -> Result<Option<usize>, MappingError> {
                match name {
                    None => Ok(None),
                    Some(n) => by_name.get(n.as_bytes()).copied().map(Some).ok_or_else(|| {
                        MappingError::MissingMetadataColumn {
                            column: n.clone(),
                            key,
                            table: table.clone(),
                        }
                    }),
                }
            };
        let meta = MetadataSlots {
            id: slot(&metadata.id, "metadata.id")?,
            stream: slot(&metadata.stream, "metadata.stream")?,
            enqueued_at: slot(&metadata.enqueued_at, "metadata.enqueued_at")?,
            deliveries: slot(&metadata.deliveries, "metadata.deliveries")?,
        };
        Ok(RowMapper {
            columns,
            by_name,
            meta,
            payload,
        })
    }

    pub fn columns(&self) -> &[ColumnSpec] {
        &self.columns
    }

    pub fn new_encoder(&self) -> BlockEncoder {
        BlockEncoder::new(&self.columns)
    }

    /// Encodes one message as a row; on failure returns the reason, and the
    /// encoder is left as it was.
    pub fn push(&self, encoder: &mut BlockEncoder, m: &Message) -> Result<(), String> {
        let decoded;
        let mut values: Vec<Option<FieldValue<'_>>> = vec![None; self.columns.len()];
        let mut payload_raw = None;
        for (name, value) in &m.fields {
            if let Some(p) = &self.payload {
                if name.as_ref() == p.field.as_bytes() {
                    payload_raw = Some(value);
                    continue;
                }
            }
            if let Some(&i) = self.by_name.get(name.as_ref()) {
                values[i] = Some(FieldValue::Text(value));
            }
        }
        if let (Some(p), Some(raw)) = (&self.payload, payload_raw) {
            decoded = payload::decode(p.format, raw)
                .map_err(|e| format!("payload field `{}`: {e}", p.field))?;
            for (key, value) in &decoded {
                if let Some(&i) = self.by_name.get(key.as_bytes()) {
                    values[i] = Some(FieldValue::Json(value));
                }
            }
        }
        let stream_bytes = m.stream.as_bytes();
        if let Some(i) = self.meta.id {
            values[i] = Some(FieldValue::Text(&m.id));
        }
        if let Some(i) = self.meta.stream {
            values[i] = Some(FieldValue::Text(stream_bytes));
        }
        if let Some(i) = self.meta.enqueued_at {
            values[i] = m.id_millis().map(FieldValue::UnixMillis);
        }
        if let Some(i) = self.meta.deliveries {
            values[i] = Some(FieldValue::Int(m.deliveries as i64));
        }
        encoder.push_row(&values).map_err(|e| e.to_string())
    }

    /// Encodes `messages` (already known to convert) into one Native block.
    pub fn encode_all(&self, messages: &[Message]) -> Bytes {
        let mut encoder = self.new_encoder();
        for m in messages {
            // Rows were checked when the batch was built; a failure here
            // would be a bug, and the row is skipped rather than panicking.
            if let Err(e) = self.push(&mut encoder, m) {
                tracing::error!(id = ?m.id, error = %e, "row failed to re-encode");
            }
        }
        let mut out = Vec::with_capacity(encoder.encoded_len() + 64);
        encoder.finish_into(&mut out);
        Bytes::from(out)
    }
}

/// A batch being filled.
pub struct OpenBatch {
    encoder: BlockEncoder,
    /// Messages whose rows are in the block, in block order.
    pub messages: Vec<Message>,
    /// Messages refused at conversion.
    pub dead: Vec<DeadLetter>,
    opened: Option<Instant>,
    raw_bytes: usize,
}

/// A batch ready to insert.
pub struct SealedBatch {
    pub block: Bytes,
    pub messages: Vec<Message>,
    pub dead: Vec<DeadLetter>,
    pub opened: Instant,
}

impl SealedBatch {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.dead.is_empty()
    }
}

impl OpenBatch {
    pub fn new(mapper: &RowMapper) -> Self {
        OpenBatch {
            encoder: mapper.new_encoder(),
            messages: Vec::new(),
            dead: Vec::new(),
            opened: None,
            raw_bytes: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.dead.is_empty()
    }

    pub fn opened(&self) -> Option<Instant> {
        self.opened
    }

    pub fn add(&mut self, mapper: &RowMapper, m: Message) {
        self.opened.get_or_insert_with(Instant::now);
        match mapper.push(&mut self.encoder, &m) {
            Ok(()) => {
                self.raw_bytes += m.approx_size();
                self.messages.push(m);
            }
            Err(reason) => self.dead.push(DeadLetter {
                message: m,
                reason,
                kind: "convert",
            }),
        }
    }

    /// Adds a message that is dead before conversion (e.g. too many deliveries).
    pub fn add_dead(&mut self, dead: DeadLetter) {
        self.opened.get_or_insert_with(Instant::now);
        self.dead.push(dead);
    }

    /// Full by rows, or by bytes (the larger of raw and encoded size).
    pub fn is_full(&self, limits: &BatchConfig) -> bool {
        self.messages.len() + self.dead.len() >= limits.max_rows
            || self.raw_bytes.max(self.encoder.encoded_len()) as u64 >= limits.max_bytes.as_u64()
    }

    pub fn seal(&mut self) -> SealedBatch {
        let mut out = Vec::with_capacity(self.encoder.encoded_len() + 64);
        self.encoder.finish_into(&mut out);
        self.raw_bytes = 0;
        SealedBatch {
            block: Bytes::from(out),
            messages: std::mem::take(&mut self.messages),
            dead: std::mem::take(&mut self.dead),
            opened: self.opened.take().unwrap_or_else(Instant::now),
        }
    }
}
