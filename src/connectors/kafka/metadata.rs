//! A Kafka record's attributes as columns: `'metadata.<column>' = '<attribute>'` on a
//! `connector = 'kafka'` table puts the record's key, partition, offset, timestamp,
//! topic, one header or all its headers into a declared column, next to the columns
//! decoded from the value. All headers go into a column declared
//! `ARRAY<STRUCT<key VARCHAR, value VARCHAR|BYTEA>>`, one entry per header in the
//! record's order (a header may repeat; a header without a value has a NULL value).
//!
//! Invariant: the attributes of the records a partition's decoder accepted are kept in
//! the same order as its rows; records the decoder refuses later (its safety net) are
//! removed by ordinal, so a row always carries its own record's attributes.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Array, Int64Array, RecordBatch, RecordBatchOptions,
    StringBuilder, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rdkafka::Message;
use rdkafka::message::Headers;

use super::super::Options;

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// What a metadata column holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Attribute {
    Key,
    Partition,
    Offset,
    /// The record's timestamp (create or log-append time), milliseconds since the epoch.
    Timestamp,
    Topic,
    /// The value of the named header (the last one, if repeated); NULL when absent.
    Header(String),
    /// Every header, in order, as a list of (key, value) structs.
    Headers,
}

impl std::fmt::Display for Attribute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attribute::Key => f.write_str("key"),
            Attribute::Partition => f.write_str("partition"),
            Attribute::Offset => f.write_str("offset"),
            Attribute::Timestamp => f.write_str("timestamp"),
            Attribute::Topic => f.write_str("topic"),
            Attribute::Header(h) => write!(f, "header.{h}"),
            Attribute::Headers => f.write_str("headers"),
        }
    }
}

impl Attribute {
    fn parse(s: &str) -> Option<Attribute> {
        Some(match s {
            "key" => Attribute::Key,
            "partition" => Attribute::Partition,
            "offset" => Attribute::Offset,
            "timestamp" => Attribute::Timestamp,
            "topic" => Attribute::Topic,
            "headers" => Attribute::Headers,
            _ => Attribute::Header(s.strip_prefix("header.").filter(|h| !h.is_empty())?.into()),
        })
    }

    fn accepts(&self, t: &DataType) -> bool {
        match self {
            Attribute::Key | Attribute::Header(_) => {
                matches!(t, DataType::Utf8 | DataType::Binary)
            }
            Attribute::Partition => matches!(t, DataType::Int32 | DataType::Int64),
            Attribute::Offset => matches!(t, DataType::Int64),
            Attribute::Timestamp => matches!(t, DataType::Timestamp(_, _)),
            Attribute::Topic => matches!(t, DataType::Utf8),
            Attribute::Headers => header_entry(t).is_some(),
        }
    }
}

/// The (key, value) fields of a headers column's entries: `t` must be a list of structs
/// of a VARCHAR `key` and a VARCHAR or BYTEA `value`.
fn header_entry(t: &DataType) -> Option<&arrow::datatypes::Fields> {
    let DataType::List(item) = t else { return None };
    let DataType::Struct(fields) = item.data_type() else {
        return None;
    };
    let [key, value] = &fields[..] else {
        return None;
    };
    (key.name() == "key"
        && key.data_type() == &DataType::Utf8
        && value.name() == "value"
        && matches!(value.data_type(), DataType::Utf8 | DataType::Binary))
    .then_some(fields)
}

/// The metadata columns of a table and the schema left for the value decoder.
#[derive(Debug, Clone)]
pub(super) struct MetadataColumns {
    table: SchemaRef,
    /// (index in the table's columns, attribute), in column order.
    columns: Vec<(usize, Attribute)>,
    /// The table's columns without the metadata ones: what the value decodes into.
    value: SchemaRef,
}

impl MetadataColumns {
    /// Reads the `metadata.*` options against the declared columns.
    pub(super) fn from_options(opts: &mut Options, table: &SchemaRef) -> Result<Self> {
        let mut columns = Vec::new();
        for (column, attr) in opts.prefixed("metadata.") {
            let key = format!("metadata.{column}");
            let Some(a) = Attribute::parse(attr.trim()) else {
                return Err(opts.invalid(
                    &key,
                    &attr,
                    "expected key, partition, offset, timestamp, topic, header.<name> or headers",
                ));
            };
            let Ok(i) = table.index_of(&column) else {
                return Err(opts.invalid(
                    &key,
                    &attr,
                    format!("{column} is not a declared column"),
                ));
            };
            let t = table.field(i).data_type();
            if !a.accepts(t) {
                return Err(opts.invalid(
                    &key,
                    &attr,
                    format!(
                        "column {column} is {t}; {attr} needs VARCHAR or BYTEA (key, header), INT or \
                         BIGINT (partition), BIGINT (offset), TIMESTAMP (timestamp), VARCHAR (topic), \
                         ARRAY<STRUCT<key VARCHAR, value VARCHAR or BYTEA>> (headers)"
                    ),
                ));
            }
            columns.push((i, a));
        }
        columns.sort_by_key(|(i, _)| *i);
        let value_fields: Vec<Arc<Field>> = table
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| !columns.iter().any(|(c, _)| c == i))
            .map(|(_, f)| f.clone())
            .collect();
        Ok(MetadataColumns {
            table: table.clone(),
            value: Arc::new(Schema::new_with_metadata(
                value_fields,
                table.metadata().clone(),
            )),
            columns,
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The schema the record values decode into.
    pub(super) fn value_schema(&self) -> &SchemaRef {
        &self.value
    }

    /// What `m` contributes to the metadata columns, or why it cannot: a key or
    /// header read as VARCHAR that is not UTF-8.
    pub(super) fn capture<M: Message>(&self, m: &M) -> Result<RecordMeta, String> {
        if self.is_empty() {
            return Ok(RecordMeta::default());
        }
        // VARCHAR columns take only UTF-8; the message is built only for a refusal.
        let utf8 = |b: Option<&[u8]>, column: usize| -> Result<(), String> {
            match b {
                Some(b)
                    if self.table.field(column).data_type() == &DataType::Utf8
                        && std::str::from_utf8(b).is_err() =>
                {
                    Err(format!(
                        "is not UTF-8 (column {} is VARCHAR)",
                        self.table.field(column).name()
                    ))
                }
                _ => Ok(()),
            }
        };
        let mut meta = RecordMeta {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: None,
            headers: Vec::new(),
            all_headers: Vec::new(),
        };
        // Headers in column order, the order `assemble` reads them in.
        for (i, a) in &self.columns {
            match a {
                Attribute::Key => {
                    utf8(m.key(), *i).map_err(|e| format!("the record's key {e}"))?;
                    meta.key = m.key().map(<[u8]>::to_vec);
                }
                Attribute::Header(name) => {
                    let value = m.headers().and_then(|hs| {
                        hs.iter()
                            .filter(|h| h.key == name)
                            .last()
                            .and_then(|h| h.value.map(<[u8]>::to_vec))
                    });
                    utf8(value.as_deref(), *i)
                        .map_err(|e| format!("the record's header {name} {e}"))?;
                    meta.headers.push(value);
                }
                Attribute::Headers => {
                    for h in m.headers().into_iter().flat_map(|hs| hs.iter()) {
                        // The entry's value column (struct field 1) decides UTF-8.
                        if let Some(v) = h.value
                            && self.headers_utf8(*i)
                            && std::str::from_utf8(v).is_err()
                        {
                            return Err(format!(
                                "the record's header {} is not UTF-8 (column {} holds VARCHAR values)",
                                h.key,
                                self.table.field(*i).name()
                            ));
                        }
                        meta.all_headers
                            .push((h.key.to_string(), h.value.map(<[u8]>::to_vec)));
                    }
                }
                _ => {}
            }
        }
        Ok(meta)
    }

    /// The table's rows: `value` (decoded values) with the metadata columns of
    /// `metas` (one per row, same order) in their declared places.
    pub(super) fn assemble(
        &self,
        value: RecordBatch,
        metas: &[RecordMeta],
        topic: &str,
    ) -> Result<RecordBatch> {
        if self.is_empty() {
            return Ok(value);
        }
        let rows = value.num_rows();
        if metas.len() != rows {
            return Err(crate::engine::EngineError::Internal(format!(
                "kafka: {} rows decoded but {} records' metadata kept",
                rows,
                metas.len()
            ))
            .into());
        }
        let mut value_columns = value.columns().iter();
        let mut header_index = 0;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.table.fields().len());
        for (i, field) in self.table.fields().iter().enumerate() {
            let Some((_, attr)) = self.columns.iter().find(|(c, _)| *c == i) else {
                columns.push(
                    value_columns
                        .next()
                        .expect("value columns in order")
                        .clone(),
                );
                continue;
            };
            let t = field.data_type();
            let array: ArrayRef = match attr {
                Attribute::Partition => {
                    let a = Int32Array::from_iter_values(metas.iter().map(|m| m.partition));
                    arrow::compute::cast(&a, t).map_err(|e| cast_error(field, e))?
                }
                Attribute::Offset => {
                    Arc::new(Int64Array::from_iter_values(metas.iter().map(|m| m.offset)))
                }
                Attribute::Timestamp => {
                    let a = TimestampMillisecondArray::from_iter(metas.iter().map(|m| m.timestamp))
                        .with_timezone("UTC");
                    arrow::compute::cast(&a, t).map_err(|e| cast_error(field, e))?
                }
                Attribute::Topic => {
                    let mut b = StringBuilder::with_capacity(rows, rows * topic.len());
                    for _ in 0..rows {
                        b.append_value(topic);
                    }
                    Arc::new(b.finish())
                }
                Attribute::Key => bytes_column(t, metas.iter().map(|m| m.key.as_deref())),
                Attribute::Header(_) => {
                    let h = header_index;
                    header_index += 1;
                    bytes_column(t, metas.iter().map(|m| m.headers[h].as_deref()))
                }
                Attribute::Headers => headers_column(t, metas)?,
            };
            columns.push(array);
        }
        RecordBatch::try_new_with_options(
            self.table.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| crate::engine::EngineError::arrow("adding Kafka metadata columns", e))
    }

    /// For `describe`: `key → k, offset → o`.
    pub(super) fn describe(&self) -> String {
        self.columns
            .iter()
            .map(|(i, a)| format!("{a} → {}", self.table.field(*i).name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl MetadataColumns {
    /// Whether the headers column `column` holds VARCHAR values.
    fn headers_utf8(&self, column: usize) -> bool {
        header_entry(self.table.field(column).data_type())
            .is_some_and(|f| f[1].data_type() == &DataType::Utf8)
    }
}

/// The headers column (of type `t`, checked by `header_entry`) of `metas`' records.
fn headers_column(t: &DataType, metas: &[RecordMeta]) -> Result<ArrayRef> {
    let (DataType::List(item), Some(fields)) = (t, header_entry(t)) else {
        unreachable!("checked when the table was read")
    };
    let entries = metas.iter().flat_map(|m| &m.all_headers);
    let keys: arrow::array::StringArray = entries.clone().map(|(k, _)| Some(k.as_str())).collect();
    let values = bytes_column(fields[1].data_type(), entries.map(|(_, v)| v.as_deref()));
    let structs =
        arrow::array::StructArray::try_new(fields.clone(), vec![Arc::new(keys), values], None)
            .map_err(|e| crate::engine::EngineError::arrow("building the headers column", e))?;
    let offsets =
        arrow::buffer::OffsetBuffer::from_lengths(metas.iter().map(|m| m.all_headers.len()));
    let list = arrow::array::ListArray::try_new(item.clone(), offsets, Arc::new(structs), None)
        .map_err(|e| crate::engine::EngineError::arrow("building the headers column", e))?;
    Ok(Arc::new(list))
}

fn cast_error(field: &Field, e: arrow::error::ArrowError) -> crate::Error {
    crate::engine::EngineError::arrow(format!("metadata column {}", field.name()), e)
}

/// A VARCHAR (already checked to be UTF-8) or BYTEA column of optional bytes.
fn bytes_column<'a>(t: &DataType, values: impl Iterator<Item = Option<&'a [u8]>>) -> ArrayRef {
    if t == &DataType::Utf8 {
        let mut b = StringBuilder::new();
        for v in values {
            // Checked by `capture`.
            b.append_option(v.map(|v| std::str::from_utf8(v).unwrap_or_default()));
        }
        Arc::new(b.finish())
    } else {
        let mut b = BinaryBuilder::new();
        for v in values {
            b.append_option(v);
        }
        Arc::new(b.finish())
    }
}

/// The attributes of one record that its row needs.
#[derive(Debug, Default, Clone)]
pub(super) struct RecordMeta {
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    /// The wanted headers' values, in the order of the header columns.
    headers: Vec<Option<Vec<u8>>>,
    /// Every header (key, value), in the record's order, when a column takes them all.
    all_headers: Vec<(String, Option<Vec<u8>>)>,
}
