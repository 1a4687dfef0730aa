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
    /// field's, and not nullable where the field is not; no other column but the key.
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
                Ok(c) if c.is_nullable() && !f.is_nullable() => problems.push(format!(
                    "column {} may be NULL and the contract's field is not nullable (use COALESCE)",
                    f.name()
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
