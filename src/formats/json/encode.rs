//! Encoding: Arrow batches to JSON lines, one object per row.

use arrow::array::RecordBatch;
use arrow::json::WriterBuilder;
use arrow::json::writer::LineDelimited;

use crate::formats::FormatError;

/// Appends `batch` to `out` as JSON lines: one object per row, each ended by `\n`.
///
/// Nulls are written as explicit `null`; timestamps as RFC 3339 strings (`Z` for
/// columns without a time zone, which are taken as UTC); lists as arrays; structs and
/// maps as objects; binary as hex strings; non-finite floats as `null`.
pub fn encode_json_lines(batch: &RecordBatch, out: &mut Vec<u8>) -> crate::Result<()> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.fZ".to_string())
        .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.f%:z".to_string())
        .build::<_, LineDelimited>(out);
    let r = writer.write(batch).and_then(|_| writer.finish());
    r.map_err(|e| {
        FormatError::Encode {
            format: "json",
            message: e.to_string(),
        }
        .into()
    })
}
