//! A Kafka sink's contract: the Avro schema it writes (`schema_file`, e.g. one of
//! `schemas/`), the Arrow columns that schema maps to, and the plan-time check that a
//! query's columns make its fields.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use super::Result;
use crate::connectors::ConnectorError;

/// The Avro schema a sink writes (`schema_file`, e.g. one of `schemas/`): the
/// contract its consumers read, registered as is, instead of a schema derived from
/// the query's columns.
#[derive(Debug, Clone)]
pub(super) struct Contract {
    pub(super) text: Arc<str>,
    /// The Arrow columns the contract's fields decode into (arrow-avro's mapping),
    /// with the contract itself under `avro.schema` so the encoder writes it verbatim.
    pub(super) arrow: SchemaRef,
}

/// The Arrow columns the records of the Avro schema `text` decode into (arrow-avro's
/// mapping, as the Kafka source's Avro decoder reads them).
pub(crate) fn avro_columns(text: &str) -> Result<SchemaRef, String> {
    use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(0), AvroSchema::new(text.to_string()))
        .map_err(|e| e.to_string())?;
    let decoder = arrow_avro::reader::ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_active_fingerprint(Fingerprint::Id(0))
        .build_decoder()
        .map_err(|e| e.to_string())?;
    Ok(decoder.schema())
}

impl Contract {
    /// The contract of a sink without `schema_file`: derived from the query's
    /// columns, as consumers expect of an event topic. Timestamps are UTC instants
    /// (`timestamp-millis` for millisecond columns, `timestamp-micros` otherwise:
    /// nanoseconds are cut to microseconds, which every Avro reader knows); the record
    /// is named after the table (`sales_per_minute` → `SalesPerMinute`) in namespace
    /// `tributary.<pipeline>`; a field is nullable only where the plan says the column
    /// may be NULL.
    pub(super) fn derived(
        columns: &arrow::datatypes::Schema,
        table: &str,
        pipeline: &str,
    ) -> Result<Self, String> {
        use arrow::datatypes::{Field, Schema};
        use arrow_avro::schema::{AVRO_NAME_METADATA_KEY, AVRO_NAMESPACE_METADATA_KEY, AvroSchema};
        let fields: Vec<Field> = columns
            .fields()
            .iter()
            .filter(|f| f.name() != crate::engine::OP_COLUMN)
            .map(|f| {
                f.as_ref()
                    .clone()
                    .with_data_type(utc_instants(f.data_type()))
            })
            .collect();
        let metadata = [
            (AVRO_NAME_METADATA_KEY.to_string(), avro_name(table, true)),
            (
                AVRO_NAMESPACE_METADATA_KEY.to_string(),
                format!("tributary.{}", avro_name(pipeline, false)),
            ),
        ]
        .into();
        let schema = Schema::new_with_metadata(fields, metadata);
        let text = AvroSchema::try_from(&schema).map_err(|e| e.to_string())?;
        let mut metadata = schema.metadata().clone();
        metadata.insert(
            arrow_avro::schema::SCHEMA_METADATA_KEY.into(),
            text.json_string.clone(),
        );
        Ok(Contract {
            text: text.json_string.into(),
            arrow: Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata)),
        })
    }

    /// The rows of `batch` that are NULL in a field the contract says is not
    /// nullable, with the first such field: the writer refuses them (a dead letter of
    /// class `schema_mismatch`), the rest of the batch is written.
    pub(super) fn nulls(&self, batch: &arrow::array::RecordBatch) -> Vec<(usize, String)> {
        let mut bad: Vec<Option<String>> = vec![None; batch.num_rows()];
        for f in self.arrow.fields().iter().filter(|f| !f.is_nullable()) {
            let Some(column) = batch.column_by_name(f.name()) else {
                continue;
            };
            if column.null_count() == 0 {
                continue;
            }
            for (row, slot) in bad.iter_mut().enumerate() {
                if slot.is_none() && column.is_null(row) {
                    *slot = Some(f.name().clone());
                }
            }
        }
        bad.into_iter()
            .enumerate()
            .filter_map(|(row, f)| f.map(|f| (row, f)))
            .collect()
    }

    /// The contract's full record name, for messages.
    pub(super) fn record_name(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.text).unwrap_or_default();
        match (v["namespace"].as_str(), v["name"].as_str()) {
            (_, Some(n)) if n.contains('.') => n.to_string(),
            (Some(ns), Some(n)) => format!("{ns}.{n}"),
            (None, Some(n)) => n.to_string(),
            _ => "the contract".to_string(),
        }
    }

    pub(super) fn new(text: Arc<str>) -> Result<Self, String> {
        let columns = avro_columns(&text)?;
        let mut metadata = columns.metadata().clone();
        metadata.insert(
            arrow_avro::schema::SCHEMA_METADATA_KEY.into(),
            text.to_string(),
        );
        Ok(Contract {
            text,
            arrow: Arc::new(arrow::datatypes::Schema::new_with_metadata(
                columns.fields().clone(),
                metadata,
            )),
        })
    }

    /// Refuses, at plan time, a query whose columns do not make the contract's
    /// fields: each field needs a column of its name, of a type that casts to the
    /// field's; no other column but the key. A column that may be NULL fits a field
    /// that may not (as in Flink, where the plan cannot tell, e.g. the `items` of
    /// `orders` filtered to `order_placed` events): a row that is NULL there is
    /// refused when written ([`Contract::nulls`]), not the query.
    pub(super) fn check(&self, table: &str, schema: &SchemaRef, key: Option<&str>) -> Result<()> {
        let mut problems = Vec::new();
        for f in self.arrow.fields() {
            match schema.field_with_name(f.name()) {
                Err(_) => problems.push(format!("no column {} ({})", f.name(), f.data_type())),
                Ok(c) if !arrow::compute::can_cast_types(c.data_type(), f.data_type()) => problems
                    .push(format!(
                        "column {} is {}, the contract has {}",
                        f.name(),
                        c.data_type(),
                        f.data_type()
                    )),
                Ok(_) => {}
            }
        }
        for c in schema.fields() {
            if self.arrow.field_with_name(c.name()).is_err() && Some(c.name().as_str()) != key {
                problems.push(format!("column {} is not in the contract", c.name()));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConnectorError::Schema {
            table: table.into(),
            message: format!(
                "the query does not fit schema_file: {}",
                problems.join("; ")
            ),
        }
        .into())
    }
}

/// `dt` with every timestamp (also inside lists and structs) an instant in UTC:
/// millisecond and microsecond columns keep their unit, seconds become milliseconds and
/// nanoseconds microseconds (Avro's `timestamp-nanos` is too new for most readers).
fn utc_instants(dt: &arrow::datatypes::DataType) -> arrow::datatypes::DataType {
    use arrow::datatypes::{DataType, Field, TimeUnit};
    let field = |f: &Field| f.clone().with_data_type(utc_instants(f.data_type()));
    match dt {
        DataType::Timestamp(unit, _) => DataType::Timestamp(
            match unit {
                TimeUnit::Second | TimeUnit::Millisecond => TimeUnit::Millisecond,
                TimeUnit::Microsecond | TimeUnit::Nanosecond => TimeUnit::Microsecond,
            },
            Some("UTC".into()),
        ),
        DataType::List(f) => DataType::List(Arc::new(field(f))),
        DataType::LargeList(f) => DataType::LargeList(Arc::new(field(f))),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(|f| field(f)).collect()),
        other => other.clone(),
    }
}

/// An Avro name from a SQL or pipeline name: letters, digits and `_` only, not
/// starting with a digit; `pascal` joins `_`/`-`-separated words capitalised
/// (`sales_per_minute` → `SalesPerMinute`).
fn avro_name(name: &str, pascal: bool) -> String {
    let mut out = String::new();
    for word in name.split(|c: char| !c.is_ascii_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        if pascal {
            let mut chars = word.chars();
            out.extend(chars.next().map(|c| c.to_ascii_uppercase()));
            out.push_str(chars.as_str());
        } else {
            if !out.is_empty() {
                out.push('_');
            }
            out.push_str(word);
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}
