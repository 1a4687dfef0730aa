//! Formats: bytes to Arrow and back.
//!
//! Owns the decoders and encoders of the formats Tributary reads and writes: JSON lines
//! ([`json`]), Avro object container files ([`avro`]) and Parquet files ([`parquet`]),
//! and [`conform`], which brings a batch read from a file to a declared schema.
//!
//! Invariants:
//! - Decoders never panic on their input: bad input is an error (a whole file) or a bad
//!   record (one JSON line), never a crash.
//! - A decoder produces batches of exactly the schema it was asked for.

pub mod avro;
pub mod json;
pub mod parquet;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use arrow::compute::{CastOptions, can_cast_types, cast_with_options};
use arrow::datatypes::{Schema, SchemaRef};

/// Errors of encoders and decoders.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{format}: {message}")]
    Decode {
        format: &'static str,
        message: String,
    },
    #[error("{format}: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
}

impl FormatError {
    pub fn code(&self) -> &'static str {
        match self {
            FormatError::Decode { .. } => "FMT001",
            FormatError::Encode { .. } => "FMT002",
        }
    }
}

fn conform_err(message: String) -> crate::Error {
    FormatError::Decode {
        format: "schema",
        message,
    }
    .into()
}

/// Finds the column of `name` in `schema`: the exact name, else the only column whose
/// name matches ignoring ASCII case.
fn find_column(schema: &Schema, name: &str) -> Option<usize> {
    if let Some((i, _)) = schema.column_with_name(name) {
        return Some(i);
    }
    let mut matches = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name().eq_ignore_ascii_case(name));
    match (matches.next(), matches.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

/// Brings `batch` to the schema `target`: each target column is taken from the column
/// of the same name (exact, else the only one equal ignoring ASCII case) and cast when
/// the types differ; a column missing from `batch` becomes nulls if nullable and is an
/// error otherwise; columns of `batch` not in `target` are dropped. A cast that fails
/// (e.g. `"abc"` to an integer, an overflow) or nulls in a non-nullable target column
/// are errors naming the column.
pub fn conform(batch: &RecordBatch, target: &SchemaRef) -> crate::Result<RecordBatch> {
    let source = batch.schema();
    if source.fields() == target.fields() {
        return batch
            .clone()
            .with_schema(target.clone())
            .map_err(|e| conform_err(e.to_string()));
    }
    let rows = batch.num_rows();
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let column = match find_column(&source, field.name()) {
            Some(i) => {
                let col = batch.column(i);
                if col.data_type() == field.data_type() {
                    col.clone()
                } else {
                    cast_with_options(col, field.data_type(), &options).map_err(|e| {
                        conform_err(format!(
                            "column '{}': cannot convert {} to {}: {e}",
                            field.name(),
                            col.data_type(),
                            field.data_type()
                        ))
                    })?
                }
            }
            None if field.is_nullable() => new_null_array(field.data_type(), rows),
            None => {
                let have: Vec<&str> = source.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(conform_err(format!(
                    "column '{}' ({}, NOT NULL) is missing; the input has: {}",
                    field.name(),
                    field.data_type(),
                    have.join(", ")
                )));
            }
        };
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(conform_err(format!(
                "column '{}' is NOT NULL but {} of {} values are null",
                field.name(),
                column.null_count(),
                rows
            )));
        }
        columns.push(column);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(target.clone(), columns, &options)
        .map_err(|e| conform_err(e.to_string()))
}

/// Checks, before reading, that batches of schema `source` can be brought to `target`
/// by [`conform`]: every non-nullable target column is present, and every present one
/// can be cast. (Values can still fail to cast, e.g. `"abc"` to an integer.)
pub fn check_conform(source: &Schema, target: &Schema) -> crate::Result<()> {
    for field in target.fields() {
        match find_column(source, field.name()) {
            Some(i) => {
                let from = source.field(i).data_type();
                if from != field.data_type() && !can_cast_types(from, field.data_type()) {
                    return Err(conform_err(format!(
                        "column '{}': cannot convert {} to {}",
                        field.name(),
                        from,
                        field.data_type()
                    )));
                }
            }
            None if field.is_nullable() => {}
            None => {
                let have: Vec<&str> = source.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(conform_err(format!(
                    "column '{}' ({}, NOT NULL) is missing; the input has: {}",
                    field.name(),
                    field.data_type(),
                    have.join(", ")
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type};

    use super::*;

    fn source() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("Name", DataType::Utf8, true),
            Field::new("id", DataType::Int32, false),
            Field::new("extra", DataType::Utf8, true),
            Field::new("num_text", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["x", "y"])),
                Arc::new(StringArray::from(vec![Some("10"), Some("oops")])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn conform_matches_by_name_casts_and_fills_nulls() {
        let target = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("missing", DataType::Float64, true),
        ]));
        let out = conform(&source(), &target).unwrap();
        assert_eq!(out.schema(), target);
        assert_eq!(out.num_rows(), 2);
        assert_eq!(
            out.column(0).as_primitive::<Int64Type>().values().to_vec(),
            vec![1, 2]
        );
        assert_eq!(
            out.column(1).as_string::<i32>().iter().collect::<Vec<_>>(),
            vec![Some("a"), None]
        );
        assert_eq!(out.column(2).null_count(), 2);
        check_conform(&source().schema(), &target).unwrap();
    }

    #[test]
    fn conform_of_the_same_schema_is_the_batch() {
        let b = source();
        let out = conform(&b, &b.schema()).unwrap();
        assert_eq!(out, b);
    }

    #[test]
    fn conform_refuses_a_missing_non_nullable_column() {
        let target = Arc::new(Schema::new(vec![Field::new(
            "gone",
            DataType::Int64,
            false,
        )]));
        let e = conform(&source(), &target).unwrap_err().to_string();
        assert!(e.contains("'gone'") && e.contains("missing"), "{e}");
        assert!(check_conform(&source().schema(), &target).is_err());
    }

    #[test]
    fn conform_refuses_values_that_do_not_cast() {
        let target = Arc::new(Schema::new(vec![Field::new(
            "num_text",
            DataType::Int64,
            true,
        )]));
        // The schemas are compatible; one value is not.
        check_conform(&source().schema(), &target).unwrap();
        let e = conform(&source(), &target).unwrap_err().to_string();
        assert!(e.contains("'num_text'"), "{e}");
        let ok = conform(&source().slice(0, 1), &target).unwrap();
        assert_eq!(ok.column(0).as_primitive::<Int64Type>().value(0), 10);
    }

    #[test]
    fn conform_refuses_nulls_in_a_non_nullable_column() {
        let target = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, false)]));
        let e = conform(&source(), &target).unwrap_err().to_string();
        assert!(e.contains("NOT NULL"), "{e}");
    }

    #[test]
    fn conform_refuses_types_that_cannot_cast() {
        let target = Arc::new(Schema::new(vec![Field::new(
            "id",
            DataType::Struct(vec![Field::new("x", DataType::Int64, true)].into()),
            true,
        )]));
        assert!(check_conform(&source().schema(), &target).is_err());
        assert!(conform(&source(), &target).is_err());
    }
}
