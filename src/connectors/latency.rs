//! Event-time latency measured where rows leave the pipeline: the `latency_column`
//! option of the sinks that take it (`blackhole`, `serving`).
//!
//! Owns reading the option, checking that the column is a timestamp of the rows
//! written, and the measure: for each batch, *now − the oldest value of that column*,
//! in seconds (timestamps without a time zone are taken as UTC; a value in the future
//! counts as zero; an all-null batch gives no sample). The sinks record it in
//! `tributary_sink_latency_seconds`.

use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::min;
use arrow::datatypes::{
    DataType, SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};

use super::json_lines::describe_fields;
use super::{ConnectorError, Options};

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// Reads `latency_column` from `opts`: the column's name, if given.
pub(crate) fn option(opts: &mut Options) -> Result<Option<String>> {
    match opts.get("latency_column") {
        Some(c) if c.trim().is_empty() => {
            Err(opts.invalid("latency_column", &c, "expected a column name"))
        }
        c => Ok(c.map(|c| c.trim().to_string())),
    }
}

/// The index of `column` in `schema`, checked to be a timestamp (`None`: no column).
pub(crate) fn index(
    table: &str,
    column: Option<&str>,
    schema: &SchemaRef,
) -> Result<Option<usize>> {
    let Some(column) = column else {
        return Ok(None);
    };
    let Ok(i) = schema.index_of(column) else {
        return Err(ConnectorError::Schema {
            table: table.to_string(),
            message: format!(
                "latency_column '{column}' is not a column of the rows written ({})",
                describe_fields(schema)
            ),
        }
        .into());
    };
    match schema.field(i).data_type() {
        DataType::Timestamp(..) => Ok(Some(i)),
        other => Err(ConnectorError::Schema {
            table: table.to_string(),
            message: format!("latency_column '{column}' has type {other}; expected a timestamp"),
        }
        .into()),
    }
}

/// Now − the oldest value of column `i` of `batch`, in seconds (0 for the future);
/// `None` when the column holds no value.
pub(crate) fn age_of_oldest(batch: &RecordBatch, i: usize) -> Option<f64> {
    let oldest = oldest_nanos(batch.column(i).as_ref())?;
    Some(((now_nanos() - oldest).max(0) as f64) / 1e9)
}

/// The oldest value of a timestamp column, in nanoseconds since the epoch.
fn oldest_nanos(column: &dyn Array) -> Option<i128> {
    let DataType::Timestamp(unit, _) = column.data_type() else {
        return None;
    };
    let (v, per_unit) = match unit {
        TimeUnit::Second => (
            min(column.as_primitive::<TimestampSecondType>())?,
            1_000_000_000,
        ),
        TimeUnit::Millisecond => (
            min(column.as_primitive::<TimestampMillisecondType>())?,
            1_000_000,
        ),
        TimeUnit::Microsecond => (
            min(column.as_primitive::<TimestampMicrosecondType>())?,
            1_000,
        ),
        TimeUnit::Nanosecond => (min(column.as_primitive::<TimestampNanosecondType>())?, 1),
    };
    Some(v as i128 * per_unit)
}

fn now_nanos() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}
