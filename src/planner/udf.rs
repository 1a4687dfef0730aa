//! Scalar functions Tributary adds to DataFusion's, and the way to add your own.
//!
//! Built in: JSON field access on string columns holding JSON documents —
//! `json_get_str(doc, path)`, `json_get_int(doc, path)`, `json_get_float(doc, path)`,
//! `json_get_bool(doc, path)` — where `path` is a dot-separated list of object keys
//! and array indexes (`'customer.address.city'`, `'items.0.sku'`). A document that is
//! not JSON, a missing path or a value of another type gives NULL, never an error.
//! Struct fields need no function: `col['field']` or `col.field`.
//!
//! Your own: build a [`ScalarUDF`] (e.g. with `datafusion::logical_expr::create_udf`)
//! and pass it to [`SqlPlanner::register_udf`](super::SqlPlanner::register_udf).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringArray, StringBuilder,
};
use arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

fn lookup<'a>(doc: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    let mut cur = doc;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        cur = match cur {
            serde_json::Value::Object(map) => map.get(part)?,
            serde_json::Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn json_fn(
    name: &'static str,
    return_type: DataType,
    extract: fn(&[Option<serde_json::Value>], &[Option<&str>]) -> ArrayRef,
) -> ScalarUDF {
    let f = move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let rows = args
            .iter()
            .find_map(|a| match a {
                ColumnarValue::Array(a) => Some(a.len()),
                _ => None,
            })
            .unwrap_or(1);
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let docs = arrays[0]
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| {
                DataFusionError::Plan(format!("{name}: first argument must be a string"))
            })?;
        let paths = arrays[1]
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| {
                DataFusionError::Plan(format!("{name}: second argument must be a string"))
            })?;
        let parsed: Vec<Option<serde_json::Value>> = (0..rows)
            .map(|i| {
                (!docs.is_null(i))
                    .then(|| serde_json::from_str(docs.value(i)).ok())
                    .flatten()
            })
            .collect();
        let path_values: Vec<Option<&str>> = (0..rows)
            .map(|i| (!paths.is_null(i)).then(|| paths.value(i)))
            .collect();
        Ok(ColumnarValue::Array(extract(&parsed, &path_values)))
    };
    create_udf(
        name,
        vec![DataType::Utf8, DataType::Utf8],
        return_type,
        Volatility::Immutable,
        Arc::new(f),
    )
}

fn each<'a>(
    docs: &'a [Option<serde_json::Value>],
    paths: &'a [Option<&'a str>],
) -> impl Iterator<Item = Option<&'a serde_json::Value>> + 'a {
    docs.iter().zip(paths.iter()).map(|(d, p)| match (d, p) {
        (Some(d), Some(p)) => lookup(d, p),
        _ => None,
    })
}

/// The functions every planner registers.
pub fn builtins() -> Vec<Arc<ScalarUDF>> {
    vec![
        Arc::new(json_fn("json_get_str", DataType::Utf8, |d, p| {
            let mut b = StringBuilder::new();
            for v in each(d, p) {
                match v {
                    Some(serde_json::Value::String(s)) => b.append_value(s),
                    Some(serde_json::Value::Null) | None => b.append_null(),
                    Some(other) => b.append_value(other.to_string()),
                }
            }
            Arc::new(b.finish())
        })),
        Arc::new(json_fn("json_get_int", DataType::Int64, |d, p| {
            let mut b = Int64Builder::new();
            for v in each(d, p) {
                b.append_option(v.and_then(|v| v.as_i64()));
            }
            Arc::new(b.finish())
        })),
        Arc::new(json_fn("json_get_float", DataType::Float64, |d, p| {
            let mut b = Float64Builder::new();
            for v in each(d, p) {
                b.append_option(v.and_then(|v| v.as_f64()));
            }
            Arc::new(b.finish())
        })),
        Arc::new(json_fn("json_get_bool", DataType::Boolean, |d, p| {
            let mut b = BooleanBuilder::new();
            for v in each(d, p) {
                b.append_option(v.and_then(|v| v.as_bool()));
            }
            Arc::new(b.finish())
        })),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_walks_objects_and_arrays() {
        let doc: serde_json::Value =
            serde_json::from_str(r#"{"a":{"b":[{"c":7}]},"s":"x"}"#).unwrap();
        assert_eq!(lookup(&doc, "a.b.0.c"), Some(&serde_json::json!(7)));
        assert_eq!(lookup(&doc, "a.b.1.c"), None);
        assert_eq!(lookup(&doc, "s.t"), None);
    }
}
