//! Batching: maps each message's fields onto the table's columns, encodes
//! the row into the open Native block, and tells when the batch is full.
//! A message whose fields cannot be converted becomes a dead letter here and
//! never reaches ClickHouse; the rest of the batch carries on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::clickhouse::convert::FieldValue;
use crate::clickhouse::native::BlockEncoder;
use crate::clickhouse::payload;
use crate::clickhouse::schema::{ColumnSpec, DefaultKind, TableSchema};
use crate::config::{BatchConfig, MetadataColumns, PayloadConfig};
use crate::redis::dead_letter::DeadLetter;
use crate::redis::Message;

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("batch id column `{column}` (batch_id_column) is not a column of {table}")]
    MissingBatchIdColumn { column: String, table: String },
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
    /// Positions of columns with a DEFAULT expression (at most 64 tracked).
    default_columns: Vec<usize>,
    /// Column receiving the batch id (exactly-once delivery).
    batch_id: Option<usize>,
}

impl RowMapper {
    pub fn new(
        schema: &TableSchema,
        metadata: &MetadataColumns,
        payload: Option<PayloadConfig>,
    ) -> Result<Self, MappingError> {
        Self::with_batch_id_column(schema, metadata, payload, None)
    }

    /// Like [`new`](Self::new), also filling `batch_id_column` with each
    /// row's batch id.
    pub fn with_batch_id_column(
        schema: &TableSchema,
        metadata: &MetadataColumns,
        payload: Option<PayloadConfig>,
        batch_id_column: Option<&str>,
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
        let default_columns = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.default_kind == DefaultKind::Default)
            .map(|(i, _)| i)
            .take(64)
            .collect();
        let batch_id = match batch_id_column {
            None => None,
            Some(c) => Some(*by_name.get(c.as_bytes()).ok_or_else(|| {
                MappingError::MissingBatchIdColumn {
                    column: c.to_string(),
                    table: table.clone(),
                }
            })?),
        };
        Ok(RowMapper {
            columns,
            by_name,
            meta,
            payload,
            default_columns,
            batch_id,
        })
    }

    pub fn columns(&self) -> &[ColumnSpec] {
        &self.columns
    }

    /// The column named `name`, tried first at `likely` (producers tend to
    /// write fields in one order, often the table's: the column after the
    /// previous field's); otherwise a scan of the names for a table of a
    /// few columns (cheaper, per field of every message, than hashing it),
    /// the map for wider ones.
    fn column_of(&self, name: &[u8], likely: usize) -> Option<usize> {
        const SCAN_UP_TO: usize = 16;
        if self
            .columns
            .get(likely)
            .is_some_and(|c| c.name.as_bytes() == name)
        {
            Some(likely)
        } else if self.columns.len() <= SCAN_UP_TO {
            self.columns.iter().position(|c| c.name.as_bytes() == name)
        } else {
            self.by_name.get(name).copied()
        }
    }

    pub fn new_encoder(&self) -> BlockEncoder {
        BlockEncoder::new(&self.columns)
    }

    /// Calls `f` with the message's values in column order, or returns why
    /// the message cannot be mapped (e.g. a payload that does not decode).
    fn with_values<R>(
        &self,
        m: &Message,
        batch_id: Option<&str>,
        f: impl FnOnce(&[Option<FieldValue<'_>>]) -> R,
    ) -> Result<R, String> {
        let decoded;
        // On the stack for up to 16 columns: this runs once per message.
        let mut values: SmallVec<[Option<FieldValue<'_>>; 16]> =
            smallvec::smallvec![None; self.columns.len()];
        let mut payload_raw = None;
        let mut likely = 0;
        for (name, value) in &m.fields {
            if let Some(p) = &self.payload {
                if name == p.field.as_bytes() {
                    payload_raw = Some(value);
                    continue;
                }
            }
            if let Some(i) = self.column_of(name, likely) {
                values[i] = Some(FieldValue::Text(value));
                likely = i + 1;
            }
        }
        if let (Some(p), Some(raw)) = (&self.payload, payload_raw) {
            decoded = payload::decode(p.format, raw)
                .map_err(|e| format!("payload field `{}`: {e}", p.field))?;
            let mut likely = 0;
            for (key, value) in &decoded {
                if let Some(i) = self.column_of(key.as_bytes(), likely) {
                    values[i] = Some(FieldValue::Json(value));
                    likely = i + 1;
                }
            }
        }
        if let Some(i) = self.meta.id {
            values[i] = Some(FieldValue::Text(&m.id));
        }
        if let Some(i) = self.meta.stream {
            values[i] = Some(FieldValue::Text(m.stream.as_bytes()));
        }
        if let Some(i) = self.meta.enqueued_at {
            values[i] = m.id_millis().map(FieldValue::UnixMillis);
        }
        if let Some(i) = self.meta.deliveries {
            values[i] = Some(FieldValue::Int(m.deliveries as i64));
        }
        if let (Some(i), Some(id)) = (self.batch_id, batch_id) {
            values[i] = Some(FieldValue::Text(id.as_bytes()));
        }
        Ok(f(&values))
    }

    /// Which DEFAULT-expression columns the row leaves empty: bit k stands
    /// for the k-th such column (up to 64; later ones are always sent).
    fn absent_defaults(&self, values: &[Option<FieldValue<'_>>]) -> u64 {
        let mut mask = 0;
        for (bit, &col) in self.default_columns.iter().enumerate() {
            if values[col].is_none() {
                mask |= 1 << bit;
            }
        }
        mask
    }

    /// The omit flags for a block whose rows all leave `absent` empty.
    fn omit_flags(&self, absent: u64) -> Vec<bool> {
        let mut omit = vec![false; self.columns.len()];
        for (bit, &col) in self.default_columns.iter().enumerate() {
            omit[col] = absent & (1 << bit) != 0;
        }
        omit
    }

    /// Encodes `messages` (already known to convert) into Native blocks.
    pub fn encode_all(&self, messages: &[Message], batch_id: Option<&str>) -> Bytes {
        let mut blocks = Blocks::default();
        for m in messages {
            // Rows were checked when the batch was built; a failure here
            // would be a bug, and the row is skipped rather than panicking.
            if let Err(e) = blocks.push(self, m, batch_id) {
                tracing::error!(id = ?m.id, error = %e, "row failed to re-encode");
            }
        }
        blocks.seal(self)
    }

    /// Converts and encodes `messages` anew, e.g. for a table whose columns
    /// changed since they were batched: the block of those that convert,
    /// those messages, and the others as dead letters with the reason.
    pub fn encode_checked(
        &self,
        messages: Vec<Message>,
        batch_id: Option<&str>,
    ) -> (Bytes, Vec<Message>, Vec<DeadLetter>) {
        let mut blocks = Blocks::default();
        let mut kept = Vec::with_capacity(messages.len());
        let mut dead = Vec::new();
        for m in messages {
            match blocks.push(self, &m, batch_id) {
                Ok(()) => kept.push(m),
                Err(reason) => dead.push(DeadLetter {
                    message: m,
                    reason,
                    kind: "convert",
                }),
            }
        }
        (blocks.seal(self), kept, dead)
    }
}

/// Most distinct "which DEFAULT columns are absent" shapes per batch; rows
/// of further shapes send those columns with their type's default.
const MAX_SHAPES: usize = 8;

/// One Native block per row shape, so that a column with a DEFAULT
/// expression is left out of the blocks whose rows lack it, and ClickHouse
/// computes it. All blocks go in the same insert.
#[derive(Default)]
struct Blocks {
    shapes: Vec<(u64, BlockEncoder)>,
    encoded_len: usize,
}

impl Blocks {
    fn push(
        &mut self,
        mapper: &RowMapper,
        m: &Message,
        batch_id: Option<&str>,
    ) -> Result<(), String> {
        mapper.with_values(m, batch_id, |values| {
            let absent = mapper.absent_defaults(values);
            let index = match self.shapes.iter().position(|(s, _)| *s == absent) {
                Some(i) => i,
                None if self.shapes.len() < MAX_SHAPES => {
                    self.shapes.push((absent, mapper.new_encoder()));
                    self.shapes.len() - 1
                }
                // Too many shapes: send every column (shape 0).
                None => match self.shapes.iter().position(|(s, _)| *s == 0) {
                    Some(i) => i,
                    None => {
                        self.shapes.push((0, mapper.new_encoder()));
                        self.shapes.len() - 1
                    }
                },
            };
            let encoder = &mut self.shapes[index].1;
            let before = encoder.encoded_len();
            encoder.push_row(values).map_err(|e| e.to_string())?;
            self.encoded_len += encoder.encoded_len() - before;
            Ok(())
        })?
    }

    fn seal(&mut self, mapper: &RowMapper) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len + 64 * self.shapes.len());
        for (absent, encoder) in &mut self.shapes {
            encoder.finish_into_without(&mut out, &mapper.omit_flags(*absent));
        }
        self.encoded_len = 0;
        Bytes::from(out)
    }
}

/// A batch being filled.
pub struct OpenBatch {
    blocks: Blocks,
    /// Messages whose rows are in the block, in block order.
    pub messages: Vec<Message>,
    /// Messages refused at conversion.
    pub dead: Vec<DeadLetter>,
    opened: Option<Instant>,
    raw_bytes: usize,
    /// The id every row of this batch carries (exactly-once), if any.
    batch_id: Option<String>,
}

impl Default for OpenBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// A batch ready to insert.
pub struct SealedBatch {
    pub block: Bytes,
    pub messages: Vec<Message>,
    pub dead: Vec<DeadLetter>,
    pub opened: Instant,
    /// The batch id in the block's rows (exactly-once), if any.
    pub batch_id: Option<String>,
    /// The mapping the block was encoded with, when the sink's can change
    /// (the table's columns are re-read while the flow runs).
    pub mapper: Option<Arc<RowMapper>>,
}

impl SealedBatch {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.dead.is_empty()
    }
}

impl OpenBatch {
    pub fn new() -> Self {
        OpenBatch {
            blocks: Blocks::default(),
            messages: Vec::new(),
            dead: Vec::new(),
            opened: None,
            raw_bytes: 0,
            batch_id: None,
        }
    }

    /// A batch whose rows carry a fresh batch id, renewed at every seal.
    pub fn with_batch_ids() -> Self {
        OpenBatch {
            batch_id: Some(new_batch_id()),
            ..Self::new()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.dead.is_empty()
    }

    /// Messages in the batch (dead ones left out).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// The mapping changes (the table's columns were re-read): drops the
    /// encoders kept from earlier batches, built for the old columns. Only
    /// while the batch is empty.
    pub fn remap(&mut self) {
        debug_assert!(self.is_empty());
        self.blocks = Blocks::default();
    }

    pub fn opened(&self) -> Option<Instant> {
        self.opened
    }

    pub fn add(&mut self, mapper: &RowMapper, m: Message) {
        self.opened.get_or_insert_with(Instant::now);
        match self.blocks.push(mapper, &m, self.batch_id.as_deref()) {
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
            || self.raw_bytes.max(self.blocks.encoded_len) as u64 >= limits.max_bytes.as_u64()
    }

    pub fn seal(&mut self, mapper: &RowMapper) -> SealedBatch {
        // The next batch is sized like this one: under load that is the
        // full batch, reserved once instead of grown by doubling (which
        // left up to half of it unused, and copied it at each step).
        let next = Vec::with_capacity(self.messages.len());
        self.seal_into(mapper, next)
    }

    /// [`seal`](Self::seal), the next batch filling `next` (emptied).
    pub fn seal_into(&mut self, mapper: &RowMapper, mut next: Vec<Message>) -> SealedBatch {
        self.raw_bytes = 0;
        next.clear();
        SealedBatch {
            block: self.blocks.seal(mapper),
            messages: std::mem::replace(&mut self.messages, next),
            dead: std::mem::take(&mut self.dead),
            opened: self.opened.take().unwrap_or_else(Instant::now),
            batch_id: self
                .batch_id
                .as_mut()
                .map(|id| std::mem::replace(id, new_batch_id())),
            mapper: None,
        }
    }

    /// [`seal_into`](Self::seal_into), remembering the mapping the block
    /// was encoded with.
    pub fn seal_with(&mut self, mapper: &Arc<RowMapper>, next: Vec<Message>) -> SealedBatch {
        SealedBatch {
            mapper: Some(mapper.clone()),
            ..self.seal_into(mapper, next)
        }
    }
}

/// A batch id for `batch_id_column` and the exactly-once ledger: a
/// random UUID (v4) as text: valid for String, FixedString(36) and UUID columns.
pub(crate) fn new_batch_id() -> String {
    let b: [u8; 16] = rand::random();
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    // Version 4, variant 10xx.
    let mut b6 = b[6];
    b6 = (b6 & 0x0f) | 0x40;
    let mut b8 = b[8];
    b8 = (b8 & 0x3f) | 0x80;
    format!(
        "{}-{}-{:02x}{:02x}-{:02x}{:02x}-{}",
        hex(0..4),
        hex(4..6),
        b6,
        b[7],
        b8,
        b[9],
        hex(10..16)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_are_uuid_v4_text() {
        let id = new_batch_id();
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{id}");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{id}"
        );
        assert_ne!(new_batch_id(), id);
    }

    use crate::clickhouse::schema::ColumnType;

    fn mapper(columns: &[&str]) -> Arc<RowMapper> {
        let schema = TableSchema {
            database: "db".into(),
            table: "t".into(),
            columns: columns
                .iter()
                .map(|name| ColumnSpec {
                    name: name.to_string(),
                    type_name: "String".into(),
                    ty: ColumnType::String,
                    default_kind: DefaultKind::None,
                })
                .collect(),
        };
        Arc::new(RowMapper::new(&schema, &MetadataColumns::default(), None).unwrap())
    }

    fn message(i: u32) -> Message {
        let v = |s: &str| Bytes::from(format!("{s}{i}"));
        Message {
            stream: Arc::from("s"),
            id: Bytes::from(format!("{i}-0")),
            fields: vec![(v("a").slice(..1), v("a")), (v("b").slice(..1), v("b"))].into(),
            deliveries: 1,
        }
    }

    /// A batch opened after the columns were re-read gets encoders for the
    /// new columns, not the ones kept from the previous batch.
    #[test]
    fn a_remapped_batch_encodes_for_the_new_columns() {
        let (old, new) = (mapper(&["a"]), mapper(&["a", "b"]));
        let mut open = OpenBatch::new();
        open.add(&old, message(1));
        let first = open.seal_with(&old, Vec::new());
        assert!(first.dead.is_empty());
        open.remap();
        open.add(&new, message(2));
        let second = open.seal_with(&new, Vec::new());
        assert!(second.dead.is_empty(), "{:?}", second.dead[0].reason);
        assert_eq!(second.messages.len(), 1);
        assert!(Arc::ptr_eq(second.mapper.as_ref().unwrap(), &new));
        // The same message encoded on its own gives the same block.
        let (block, kept, dead) = new.encode_checked(vec![message(2)], None);
        assert_eq!((block, kept.len(), dead.len()), (second.block, 1, 0));
    }
}
