//! The window column and the window functions as DataFusion sees them: `tumble`,
//! `hop` and `session` (registered with every planner session), the `struct<start,
//! end>` type and values of a `window` column, and reading constant intervals.

use std::sync::Arc;

use arrow::array::{ArrayRef, StructArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

use crate::engine::event_times_ms;

/// Names of the window functions allowed in `GROUP BY`.
pub const WINDOW_FUNCTIONS: [&str; 3] = ["tumble", "hop", "session"];

pub(crate) const TZ: &str = "UTC";

/// The type of a window column: `struct<start timestamp, end timestamp>`, so queries
/// read `window.start` / `window['end']`.
pub fn window_type() -> DataType {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some(TZ.into()));
    DataType::Struct(Fields::from(vec![
        Field::new("start", ts.clone(), false),
        Field::new("end", ts, false),
    ]))
}

/// `tumble(width [, time])`, `hop(slide, width [, time])` and `session(gap [, time])` as
/// DataFusion functions. The time argument defaults to the source's declared event-time
/// column (the planner adds it). As plain scalar functions (batch SQL, tests) `tumble`
/// returns the window of each row; `hop` and `session` exist only in a streaming
/// `GROUP BY`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowUdf {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for WindowUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(window_type())
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        if self.name != "tumble" {
            return Err(DataFusionError::Execution(format!(
                "{}() places a row by looking at other rows and is only valid in the GROUP BY of a streaming query",
                self.name
            )));
        }
        let [width, time] = args.args.as_slice() else {
            return Err(DataFusionError::Execution(
                "tumble() needs the event-time column: tumble(interval, column)".into(),
            ));
        };
        let ColumnarValue::Scalar(width) = width else {
            return Err(DataFusionError::Execution(
                "tumble(): the width must be a constant interval".into(),
            ));
        };
        let width = interval_ms(width).map_err(DataFusionError::Execution)?;
        let times = time.to_array(args.number_rows)?;
        let times = event_times_ms(times.as_ref())
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        let starts: TimestampMillisecondArray = times
            .iter()
            .map(|t| t.map(|t| t - t.rem_euclid(width)))
            .collect();
        let ends: TimestampMillisecondArray = starts.iter().map(|s| s.map(|s| s + width)).collect();
        Ok(ColumnarValue::Array(window_array(
            starts.with_timezone(TZ),
            ends.with_timezone(TZ),
        )))
    }
}

pub(crate) fn window_array(
    starts: TimestampMillisecondArray,
    ends: TimestampMillisecondArray,
) -> ArrayRef {
    let DataType::Struct(fields) = window_type() else {
        unreachable!("window_type is a struct")
    };
    Arc::new(StructArray::new(
        fields,
        vec![Arc::new(starts), Arc::new(ends)],
        None,
    ))
}

/// The window functions, registered with every planner session.
pub fn window_udfs() -> Vec<Arc<ScalarUDF>> {
    let sig = |n: &[usize]| {
        Signature::one_of(
            n.iter().map(|n| TypeSignature::Any(*n)).collect(),
            Volatility::Immutable,
        )
    };
    vec![
        Arc::new(ScalarUDF::new_from_impl(WindowUdf {
            name: "tumble",
            signature: sig(&[1, 2]),
        })),
        Arc::new(ScalarUDF::new_from_impl(WindowUdf {
            name: "hop",
            signature: sig(&[2, 3]),
        })),
        Arc::new(ScalarUDF::new_from_impl(WindowUdf {
            name: "session",
            signature: sig(&[1, 2]),
        })),
    ]
}

/// Milliseconds of a constant interval; months are refused (they have no fixed length).
pub(crate) fn interval_ms(v: &ScalarValue) -> std::result::Result<i64, String> {
    let ms = interval_value_ms(v)?;
    if ms <= 0 {
        return Err(format!("a window size must be positive, got {ms} ms"));
    }
    Ok(ms)
}

/// Milliseconds of a constant interval or duration of any sign; months are refused.
pub(crate) fn interval_value_ms(v: &ScalarValue) -> std::result::Result<i64, String> {
    Ok(match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            i.days as i64 * 86_400_000 + i.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(i)) => i.days as i64 * 86_400_000 + i.milliseconds as i64,
        ScalarValue::DurationMillisecond(Some(ms)) => *ms,
        ScalarValue::DurationSecond(Some(s)) => s * 1000,
        other => {
            return Err(format!(
                "expected a constant interval of days or less (e.g. INTERVAL '1' MINUTE), not {other}"
            ));
        }
    })
}
