//! Arrow ⇄ DynamoDB types: what a column becomes in an item, and back.
//!
//! | Arrow | DynamoDB |
//! |---|---|
//! | Utf8, LargeUtf8, Utf8View | `S` |
//! | Int*, UInt*, Float* | `N` (NaN and ±∞ cannot be stored: the row is refused) |
//! | Decimal128/256 | `N`, exact (`12.50`) |
//! | Boolean | `BOOL` |
//! | Binary, LargeBinary, FixedSizeBinary | `B` |
//! | Timestamp (any unit, any zone) | `S`, RFC 3339 in UTC with microseconds (`2026-12-05T21:18:31.123456Z`): sorts as it reads |
//! | Date32/Date64 | `S` (`2026-12-05`) |
//! | List, LargeList, FixedSizeList | `L` |
//! | Struct | `M` (field → value) |
//! | Map with string keys | `M` |
//! | Dictionary | as its values |
//! | NULL | top level: the attribute is left out (so sparse indexes work); inside `L`/`M`: `NULL` |
//!
//! Reading items back (lookup tables) goes through the JSON decoder's type rules
//! with the table's declared columns: `N` into any number column, `S` into strings
//! and RFC 3339 timestamps, `L`/`M` into lists and structs.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

/// One DynamoDB item: attribute name → value.
pub type Item = HashMap<String, AttributeValue>;

/// DynamoDB's largest item, names and values included.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Refuses, at plan time, a column type with no DynamoDB counterpart.
pub fn check_type(name: &str, t: &DataType) -> Result<(), String> {
    use DataType::*;
    match t {
        Null | Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
        | Float16 | Float32 | Float64 | Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary
        | BinaryView | FixedSizeBinary(_) | Date32 | Date64 | Timestamp(..) | Decimal128(..)
        | Decimal256(..) => Ok(()),
        List(f) | LargeList(f) | FixedSizeList(f, _) => check_type(name, f.data_type()),
        Struct(fields) => fields
            .iter()
            .try_for_each(|f| check_type(&format!("{name}.{}", f.name()), f.data_type())),
        Map(entries, _) => match entries.data_type() {
            Struct(kv) if kv.len() == 2 && matches!(kv[0].data_type(), Utf8 | LargeUtf8) => {
                check_type(name, kv[1].data_type())
            }
            _ => Err(format!(
                "column {name}: a map needs string keys to be a DynamoDB M"
            )),
        },
        Dictionary(_, v) => check_type(name, v),
        other => Err(format!(
            "column {name}: type {other} has no DynamoDB counterpart (cast it in the query)"
        )),
    }
}

/// The value of `row` of `array`; `None` for NULL.
pub fn value(array: &dyn Array, row: usize) -> Result<Option<AttributeValue>, String> {
    use DataType::*;
    if array.is_null(row) {
        return Ok(None);
    }
    let n = |s: String| Ok(Some(AttributeValue::N(s)));
    macro_rules! int {
        ($t:ty) => {
            n(array.as_primitive::<$t>().value(row).to_string())
        };
    }
    match array.data_type() {
        Null => Ok(None),
        Boolean => Ok(Some(AttributeValue::Bool(array.as_boolean().value(row)))),
        Int8 => int!(arrow::datatypes::Int8Type),
        Int16 => int!(arrow::datatypes::Int16Type),
        Int32 => int!(arrow::datatypes::Int32Type),
        Int64 => int!(arrow::datatypes::Int64Type),
        UInt8 => int!(arrow::datatypes::UInt8Type),
        UInt16 => int!(arrow::datatypes::UInt16Type),
        UInt32 => int!(arrow::datatypes::UInt32Type),
        UInt64 => int!(arrow::datatypes::UInt64Type),
        Float16 => float(
            array
                .as_primitive::<arrow::datatypes::Float16Type>()
                .value(row)
                .to_f64(),
        ),
        Float32 => float(
            array
                .as_primitive::<arrow::datatypes::Float32Type>()
                .value(row) as f64,
        ),
        Float64 => float(
            array
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(row),
        ),
        Decimal128(..) => n(array
            .as_primitive::<arrow::datatypes::Decimal128Type>()
            .value_as_string(row)),
        Decimal256(..) => n(array
            .as_primitive::<arrow::datatypes::Decimal256Type>()
            .value_as_string(row)),
        Utf8 => Ok(Some(AttributeValue::S(
            array.as_string::<i32>().value(row).into(),
        ))),
        LargeUtf8 => Ok(Some(AttributeValue::S(
            array.as_string::<i64>().value(row).into(),
        ))),
        Utf8View => Ok(Some(AttributeValue::S(
            array.as_string_view().value(row).into(),
        ))),
        Binary => Ok(Some(AttributeValue::B(Blob::new(
            array.as_binary::<i32>().value(row),
        )))),
        LargeBinary => Ok(Some(AttributeValue::B(Blob::new(
            array.as_binary::<i64>().value(row),
        )))),
        BinaryView => Ok(Some(AttributeValue::B(Blob::new(
            array.as_binary_view().value(row),
        )))),
        FixedSizeBinary(_) => Ok(Some(AttributeValue::B(Blob::new(
            array.as_fixed_size_binary().value(row),
        )))),
        Timestamp(unit, _) => {
            let v = match unit {
                TimeUnit::Second => {
                    array
                        .as_primitive::<arrow::datatypes::TimestampSecondType>()
                        .value(row)
                        * 1_000_000
                }
                TimeUnit::Millisecond => {
                    array
                        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                        .value(row)
                        * 1_000
                }
                TimeUnit::Microsecond => array
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .value(row),
                TimeUnit::Nanosecond => array
                    .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                    .value(row)
                    .div_euclid(1_000),
            };
            let t = chrono::DateTime::from_timestamp_micros(v)
                .ok_or_else(|| format!("timestamp {v}µs is out of range"))?;
            Ok(Some(AttributeValue::S(
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            )))
        }
        Date32 => {
            let d = array
                .as_primitive::<arrow::datatypes::Date32Type>()
                .value(row);
            let t = chrono::DateTime::from_timestamp(d as i64 * 86_400, 0)
                .ok_or_else(|| format!("date {d} is out of range"))?;
            Ok(Some(AttributeValue::S(t.format("%Y-%m-%d").to_string())))
        }
        Date64 => {
            let ms = array
                .as_primitive::<arrow::datatypes::Date64Type>()
                .value(row);
            let t = chrono::DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| format!("date {ms}ms is out of range"))?;
            Ok(Some(AttributeValue::S(t.format("%Y-%m-%d").to_string())))
        }
        List(_) => list(array.as_list::<i32>().value(row).as_ref()),
        LargeList(_) => list(array.as_list::<i64>().value(row).as_ref()),
        FixedSizeList(..) => list(array.as_fixed_size_list().value(row).as_ref()),
        Struct(fields) => {
            let s = array.as_struct();
            let mut m = HashMap::with_capacity(fields.len());
            for (f, col) in fields.iter().zip(s.columns()) {
                m.insert(f.name().clone(), nested(col.as_ref(), row)?);
            }
            Ok(Some(AttributeValue::M(m)))
        }
        Map(..) => {
            let entries = array.as_map().value(row);
            let keys = arrow::compute::cast(entries.column(0), &Utf8).map_err(|e| e.to_string())?;
            let keys = keys.as_string::<i32>();
            let mut m = HashMap::with_capacity(entries.len());
            for i in 0..entries.len() {
                m.insert(
                    keys.value(i).to_string(),
                    nested(entries.column(1).as_ref(), i)?,
                );
            }
            Ok(Some(AttributeValue::M(m)))
        }
        Dictionary(_, v) => {
            let plain = arrow::compute::cast(&array.slice(row, 1), v).map_err(|e| e.to_string())?;
            value(plain.as_ref(), 0)
        }
        other => Err(format!("type {other} has no DynamoDB counterpart")),
    }
}

/// A value inside a list or map: NULL is kept as `NULL`.
fn nested(array: &dyn Array, row: usize) -> Result<AttributeValue, String> {
    Ok(value(array, row)?.unwrap_or(AttributeValue::Null(true)))
}

fn list(values: &dyn Array) -> Result<Option<AttributeValue>, String> {
    let items = (0..values.len())
        .map(|i| nested(values, i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(AttributeValue::L(items)))
}

fn float(v: f64) -> Result<Option<AttributeValue>, String> {
    if !v.is_finite() {
        return Err(format!(
            "{v} cannot be stored in DynamoDB (numbers are finite)"
        ));
    }
    let a = v.abs();
    let s = if a == 0.0 || (1e-7..1e16).contains(&a) {
        v.to_string()
    } else {
        format!("{v:e}")
    };
    Ok(Some(AttributeValue::N(s)))
}

/// Row `row` of `batch` as an item: every column (its name as the attribute), NULLs
/// left out. `Err` names the column whose value cannot be stored.
pub fn item(batch: &RecordBatch, row: usize) -> Result<Item, String> {
    let schema = batch.schema();
    let mut item = HashMap::with_capacity(batch.num_columns() + 1);
    for (f, col) in schema.fields().iter().zip(batch.columns()) {
        if let Some(v) =
            value(col.as_ref(), row).map_err(|e| format!("column {}: {e}", f.name()))?
        {
            item.insert(f.name().clone(), v);
        }
    }
    Ok(item)
}

/// The size DynamoDB counts for an item (names plus values), for refusing items over
/// [`MAX_ITEM_BYTES`] before sending them.
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => n.len().div_ceil(2) + 1,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| 1 + k.len() + value_size(v))
                .sum::<usize>()
        }
        AttributeValue::Ss(s) => s.iter().map(|s| s.len()).sum(),
        AttributeValue::Ns(s) => s.iter().map(|s| s.len().div_ceil(2) + 1).sum(),
        AttributeValue::Bs(s) => s.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    }
}

/// An item value as JSON, for decoding with the JSON type rules: numbers stay
/// strings when they do not fit an f64 exactly (the decoder parses strings into
/// number columns), binary becomes its bytes' string when UTF-8.
fn to_json(v: &AttributeValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => n
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| {
                n.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && f.to_string() == *n)
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .ok_or(())
            })
            .unwrap_or_else(|_| Value::String(n.clone())),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::B(b) => Value::String(String::from_utf8_lossy(b.as_ref()).into_owned()),
        AttributeValue::L(l) => Value::Array(l.iter().map(to_json).collect()),
        AttributeValue::M(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        AttributeValue::Ss(s) => Value::Array(s.iter().cloned().map(Value::String).collect()),
        AttributeValue::Ns(s) => Value::Array(
            s.iter()
                .map(|n| to_json(&AttributeValue::N(n.clone())))
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Items as a batch of `schema`'s columns (attributes not in the schema ignored,
/// missing ones NULL). An item whose values do not fit the columns is left out and
/// returned in the second list with the reason.
pub fn batch(
    schema: &arrow::datatypes::SchemaRef,
    items: &[&Item],
) -> (RecordBatch, Vec<(usize, String)>) {
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = items
        .iter()
        .map(|item| {
            schema
                .fields()
                .iter()
                .filter_map(|f| item.get(f.name()).map(|v| (f.name().clone(), to_json(v))))
                .collect()
        })
        .collect();
    let decode =
        |rows: &[serde_json::Map<String, serde_json::Value>]| -> Result<RecordBatch, String> {
            let mut d = arrow::json::ReaderBuilder::new(schema.clone())
                .with_coerce_primitive(true)
                .build_decoder()
                .map_err(|e| e.to_string())?;
            d.serialize(rows).map_err(|e| e.to_string())?;
            Ok(d.flush()
                .map_err(|e| e.to_string())?
                .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
        };
    if let Ok(b) = decode(&rows) {
        return (b, Vec::new());
    }
    // One item spoils the batch: decode one by one to find which.
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match decode(std::slice::from_ref(row)) {
            Ok(b) => good.push(b),
            Err(e) => bad.push((i, e)),
        }
    }
    let b = arrow::compute::concat_batches(schema, &good)
        .unwrap_or_else(|_| RecordBatch::new_empty(schema.clone()));
    (b, bad)
}

/// Whether the schema's column `name` is a string (`S` key) or a number (`N` key).
pub fn key_type(
    schema: &Schema,
    name: &str,
) -> Result<aws_sdk_dynamodb::types::ScalarAttributeType, String> {
    use aws_sdk_dynamodb::types::ScalarAttributeType as T;
    let f = schema
        .field_with_name(name)
        .map_err(|_| format!("no column {name}"))?;
    match f.data_type() {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Timestamp(..)
        | DataType::Date32
        | DataType::Date64 => Ok(T::S),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Ok(T::B),
        t if t.is_integer() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) => {
            Ok(T::N)
        }
        t => Err(format!(
            "key column {name} is {t}: a DynamoDB key is a string, an integer, a decimal or binary"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::*;
    use arrow::datatypes::{Field, Fields};
    use std::sync::Arc;

    #[test]
    fn columns_map_to_dynamodb_types_and_nulls_are_left_out() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
            Field::new("price", DataType::Decimal128(10, 2), true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Field::new("ok", DataType::Boolean, true),
            Field::new("items", DataType::new_list(DataType::Int32, true), true),
            Field::new(
                "place",
                DataType::Struct(Fields::from(vec![Field::new("tz", DataType::Utf8, true)])),
                true,
            ),
        ]));
        let items = ListArray::from_iter_primitive::<arrow::datatypes::Int32Type, _, _>(vec![
            Some(vec![Some(1), None]),
            None,
        ]);
        let place = StructArray::from(vec![(
            Arc::new(Field::new("tz", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec![Some("Europe/Paris"), None])) as ArrayRef,
        )]);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![Some(-3), None])),
                Arc::new(
                    Decimal128Array::from(vec![Some(1250), None])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
                Arc::new(
                    TimestampMillisecondArray::from(vec![Some(1_764_969_511_123), None])
                        .with_timezone("UTC"),
                ),
                Arc::new(BooleanArray::from(vec![Some(true), None])),
                Arc::new(items),
                Arc::new(place),
            ],
        )
        .unwrap();
        let a = item(&batch, 0).unwrap();
        assert_eq!(a["id"], AttributeValue::S("a".into()));
        assert_eq!(a["n"], AttributeValue::N("-3".into()));
        assert_eq!(a["price"], AttributeValue::N("12.50".into()));
        assert_eq!(
            a["at"],
            AttributeValue::S("2025-12-05T21:18:31.123000Z".into())
        );
        assert_eq!(a["ok"], AttributeValue::Bool(true));
        assert_eq!(
            a["items"],
            AttributeValue::L(vec![
                AttributeValue::N("1".into()),
                AttributeValue::Null(true)
            ])
        );
        assert_eq!(
            a["place"],
            AttributeValue::M(
                [("tz".to_string(), AttributeValue::S("Europe/Paris".into()))].into()
            )
        );
        let b = item(&batch, 1).unwrap();
        assert_eq!(b.len(), 2, "NULL columns are left out: {b:?}");
        assert!(item_size(&a) > item_size(&b));
        // And back, through the same schema.
        let (back, bad) = super::batch(&schema, &[&a, &b]);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(back, batch);
    }

    #[test]
    fn values_dynamodb_cannot_hold_are_refused_with_the_column() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Float64Array::from(vec![f64::NAN, 1e300, 0.5]))],
        )
        .unwrap();
        let e = item(&batch, 0).unwrap_err();
        assert!(e.contains("column x") && e.contains("NaN"), "{e}");
        assert_eq!(
            item(&batch, 1).unwrap()["x"],
            AttributeValue::N("1e300".into())
        );
        assert_eq!(
            item(&batch, 2).unwrap()["x"],
            AttributeValue::N("0.5".into())
        );
        assert!(check_type("d", &DataType::Duration(TimeUnit::Second)).is_err());
    }

    #[test]
    fn an_item_that_does_not_fit_the_columns_is_set_aside_not_the_batch() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let good: Item = [("n".to_string(), AttributeValue::N("7".into()))].into();
        let bad: Item = [("n".to_string(), AttributeValue::S("seven".into()))].into();
        let (b, refused) = batch(&schema, &[&good, &bad, &good]);
        assert_eq!(b.num_rows(), 2);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, 1);
    }
}
