//! Tests of the decoder, and through it of the value rules and the scanner: round trips
//! with the encoder, refusals, the safety net, robustness to arbitrary input and the
//! scanned path (flat and nested schemas) against arrow-json.

use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array, ListBuilder, RecordBatch,
    StringArray, StringBuilder, StructArray, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray,
};
use arrow::datatypes::{
    DataType, Field, Fields, Float64Type, Int8Type, Int32Type, Int64Type, Schema, SchemaRef,
    TimeUnit, TimestampMillisecondType, TimestampNanosecondType,
};
use proptest::prelude::*;

use super::{JsonDecoder, Rows};
use crate::dlq::{BadRecordReason, BadRecords};
use crate::formats::json::columns::Column;
use crate::formats::json::encode_json_lines;
use crate::formats::json::rules::Spill;
use crate::formats::json::scanner::{Sink, compile_struct, scan_record};
use crate::testing::{Edit, apply_edits};

/// Counts bad-record reports by reason, through the metrics they increment.
#[derive(Default, Clone)]
pub(crate) struct Reasons(Arc<Mutex<Vec<String>>>);

struct ReasonCounter {
    reason: String,
    log: Reasons,
}

impl metrics::CounterFn for ReasonCounter {
    fn increment(&self, value: u64) {
        let mut log = self.log.0.lock().unwrap();
        for _ in 0..value {
            log.push(self.reason.clone());
        }
    }
    fn absolute(&self, _value: u64) {}
}

impl metrics::Recorder for Reasons {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() != "tributary_bad_records_total" {
            return metrics::Counter::noop();
        }
        let reason = key
            .labels()
            .find(|l| l.key() == "reason")
            .map(|l| l.value().to_string())
            .unwrap_or_default();
        metrics::Counter::from_arc(Arc::new(ReasonCounter {
            reason,
            log: self.clone(),
        }))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

impl Reasons {
    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn field(name: &str, dt: DataType, nullable: bool) -> Field {
    Field::new(name, dt, nullable)
}

fn schema(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

fn decode_all(
    schema: &SchemaRef,
    input: &[&[u8]],
    bad: &mut BadRecords,
) -> (Vec<bool>, Option<RecordBatch>) {
    let mut d = JsonDecoder::new(schema.clone()).unwrap();
    let accepted: Vec<bool> = input.iter().map(|r| d.push(r, bad)).collect();
    let batch = d.flush().unwrap();
    d.report_late(bad);
    (accepted, batch)
}

/// A batch of every kind of column the round trip covers, nulls included.
fn sample_batch() -> RecordBatch {
    let item = Arc::new(Field::new("item", DataType::Int64, true));
    let inner = Fields::from(vec![
        Field::new("name", DataType::Utf8, true),
        Field::new_list("tags", Field::new("item", DataType::Utf8, true), true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]);
    let schema = schema(vec![
        field("id", DataType::Int64, false),
        field("small", DataType::Int32, true),
        field("score", DataType::Float64, true),
        field("label", DataType::Utf8, true),
        field("ok", DataType::Boolean, true),
        field(
            "ts_ns",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        ),
        field(
            "ts_ms_tz",
            DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into())),
            true,
        ),
        field("ts_s", DataType::Timestamp(TimeUnit::Second, None), true),
        field("nums", DataType::List(item.clone()), true),
        field("inner", DataType::Struct(inner.clone()), true),
    ]);
    let mut nums = ListBuilder::new(arrow::array::Int64Builder::new());
    nums.append_value([Some(1), None, Some(3)]);
    nums.append_null();
    nums.append_value([]);
    let mut tags = ListBuilder::new(StringBuilder::new());
    tags.append_value([Some("a"), Some("b\"c")]);
    tags.append_value([None::<&str>]);
    tags.append_null();
    let inner_array = StructArray::try_new(
        inner,
        vec![
            Arc::new(StringArray::from(vec![Some("x"), Some("ünï✓"), None])),
            Arc::new(tags.finish()),
            Arc::new(
                TimestampMicrosecondArray::from(vec![Some(1_700_000_000_123_456), Some(-1), None])
                    .with_timezone("UTC"),
            ),
        ],
        Some(vec![true, true, false].into()),
    )
    .unwrap();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![i64::MAX, -1, 0])),
            Arc::new(Int32Array::from(vec![Some(7), None, Some(i32::MIN)])),
            Arc::new(Float64Array::from(vec![Some(0.1), Some(-1.5e300), None])),
            Arc::new(StringArray::from(vec![
                Some("plain"),
                Some("tab\tline\nquote\"\\"),
                None,
            ])),
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
            Arc::new(TimestampNanosecondArray::from(vec![
                Some(1_700_000_000_123_456_789),
                None,
                Some(-5),
            ])),
            Arc::new(
                TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), Some(0), None])
                    .with_timezone("+02:00"),
            ),
            Arc::new(TimestampSecondArray::from(vec![
                Some(1_700_000_000),
                None,
                Some(-86_400),
            ])),
            Arc::new(nums.finish()),
            Arc::new(inner_array),
        ],
    )
    .unwrap()
}

#[test]
fn round_trip_equals_the_batch() {
    let batch = sample_batch();
    let mut out = Vec::new();
    encode_json_lines(&batch, &mut out).unwrap();
    let text = String::from_utf8(out.clone()).unwrap();
    // Explicit nulls, RFC 3339 timestamps.
    assert!(text.contains("\"small\":null"), "{text}");
    assert!(
        text.contains("\"ts_ns\":\"2023-11-14T22:13:20.123456789Z\""),
        "{text}"
    );
    assert!(
        text.contains("\"ts_ms_tz\":\"2023-11-15T00:13:20.123+02:00\""),
        "{text}"
    );
    let mut bad = BadRecords::detached("test");
    let (accepted, decoded) = decode_all(&batch.schema(), &lines(&out), &mut bad);
    assert_eq!(accepted, vec![true; 3]);
    assert_eq!(bad.count(), 0);
    assert_eq!(decoded.unwrap(), batch);
}

#[test]
fn timestamps_from_strings_and_epoch_millis_in_every_unit() {
    let units = [
        TimeUnit::Second,
        TimeUnit::Millisecond,
        TimeUnit::Microsecond,
        TimeUnit::Nanosecond,
    ];
    for unit in units {
        for tz in [None, Some("UTC"), Some("+05:30")] {
            let dt = DataType::Timestamp(unit, tz.map(Into::into));
            let s = schema(vec![field("t", dt.clone(), true)]);
            let input: Vec<&[u8]> = vec![
                br#"{"t": 1700000000123}"#,
                br#"{"t": "2023-11-14T22:13:20.123Z"}"#,
                br#"{"t": "2023-11-15T03:43:20.123+05:30"}"#,
                br#"{"t": -1000}"#,
                br#"{"t": "1700000000123"}"#,
                br#"{"t": null}"#,
            ];
            let mut bad = BadRecords::detached("test");
            let (accepted, batch) = decode_all(&s, &input, &mut bad);
            assert_eq!(accepted, vec![true; 6], "{dt}");
            let batch = batch.unwrap();
            assert_eq!(batch.column(0).data_type(), &dt);
            let as_ms = arrow::compute::cast(
                batch.column(0),
                &DataType::Timestamp(TimeUnit::Millisecond, tz.map(Into::into)),
            )
            .unwrap();
            let ms = as_ms.as_primitive::<TimestampMillisecondType>();
            let expect_first = if unit == TimeUnit::Second {
                1_700_000_000_000
            } else {
                1_700_000_000_123
            };
            for i in 0..3 {
                assert_eq!(ms.value(i), expect_first, "{dt} row {i}");
            }
            assert_eq!(ms.value(3), -1000, "{dt}");
            assert_eq!(ms.value(4), expect_first, "{dt}");
            assert!(ms.is_null(5));
        }
    }
}

#[test]
fn sub_millisecond_precision_is_kept() {
    let s = schema(vec![field(
        "t",
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        false,
    )]);
    let mut bad = BadRecords::detached("test");
    let input: Vec<&[u8]> = vec![
        br#"{"t": "2023-11-14T22:13:20.123456789Z"}"#,
        br#"{"t": 1.5}"#,
    ];
    let (_, batch) = decode_all(&s, &input, &mut bad);
    let batch = batch.unwrap();
    let v = batch.column(0).as_primitive::<TimestampNanosecondType>();
    assert_eq!(v.value(0), 1_700_000_000_123_456_789);
    assert_eq!(v.value(1), 1_500_000);
}

fn reasons_of(
    schema: &SchemaRef,
    input: &[&[u8]],
) -> (Vec<bool>, Option<RecordBatch>, Vec<String>, u64) {
    let rec = Reasons::default();
    let mut bad = BadRecords::detached("test");
    let (accepted, batch) =
        metrics::with_local_recorder(&rec, || decode_all(schema, input, &mut bad));
    (accepted, batch, rec.take(), bad.count())
}

#[test]
fn bad_records_are_isolated_with_their_reason_and_good_ones_kept_in_order() {
    let s = schema(vec![
        field("id", DataType::Int64, false),
        field("name", DataType::Utf8, true),
        field(
            "tags",
            DataType::List(Arc::new(Field::new("item", DataType::Int32, false))),
            true,
        ),
    ]);
    let input: Vec<&[u8]> = vec![
        br#"{"id": 1, "name": "a", "extra": {"ignored": [1, 2]}}"#,
        br#"{"id": 2, "name": "#,         // truncated
        br#"{"id": "two", "name": "b"}"#, // wrong type
        br#"{"name": "c"}"#,              // missing non-nullable
        br#"{"id": 3, "tags": [1, 2]}"#,
        br#"[{"id": 4}]"#,                      // not an object
        b"{\"id\": 5, \"name\": \"\xff\"}",     // not UTF-8
        br#"{"id": 6, "name": "d"} {"id": 7}"#, // two objects
        br#"{"id": 8, "tags": [1, null]}"#,     // null item in non-nullable list
        br#"{"id": 9 "name": "e"}"#,            // missing comma
        br#"{"id": 1.5}"#,                      // not an integer
        br#"{"id": null}"#,                     // null in non-nullable
        br#"{"id": 10, "name": "f"}"#,
    ];
    let (accepted, batch, reasons, count) = reasons_of(&s, &input);
    assert_eq!(
        accepted,
        vec![
            true, false, false, false, true, false, false, false, false, false, false, false, true
        ]
    );
    assert_eq!(
        reasons,
        vec![
            "malformed",
            "schema_mismatch",
            "schema_mismatch",
            "schema_mismatch",
            "malformed",
            "malformed",
            "schema_mismatch",
            "malformed",
            "schema_mismatch",
            "schema_mismatch",
        ]
    );
    assert_eq!(count, 10);
    let batch = batch.unwrap();
    assert_eq!(batch.schema(), s);
    let ids = batch.column(0).as_primitive::<Int64Type>();
    assert_eq!(ids.values().to_vec(), vec![1, 3, 10]);
    let names = batch.column(1).as_string::<i32>();
    assert_eq!(
        names.iter().collect::<Vec<_>>(),
        vec![Some("a"), None, Some("f")]
    );
}

#[test]
fn refusal_details_name_the_field() {
    let inner = Fields::from(vec![Field::new("n", DataType::Int32, false)]);
    let s = schema(vec![field(
        "xs",
        DataType::List(Arc::new(Field::new("item", DataType::Struct(inner), true))),
        true,
    )]);
    let root = compile_struct(s.fields()).unwrap();
    let r = scan_record(br#"{"xs": [{"n": 1}, {"n": "x"}]}"#, &root, None).unwrap_err();
    assert_eq!(r.reason, BadRecordReason::SchemaMismatch);
    assert!(
        r.detail()
            .starts_with("field 'xs[1].n': expected Int32, found \"x\""),
        "{}",
        r.detail()
    );
    let r = scan_record(br#"{"xs": [{}]}"#, &root, None).unwrap_err();
    assert!(
        r.detail().starts_with("field 'xs[0].n': missing value"),
        "{}",
        r.detail()
    );
    // A type error in a record that is not JSON anyway is malformed.
    let r = scan_record(br#"{"xs": "oops", "#, &root, None).unwrap_err();
    assert_eq!(r.reason, BadRecordReason::Malformed);
}

/// Presence is tracked a bit per field in a word for structs of up to 64 fields, and
/// field by field past that: a missing required field is found either way, at the
/// edges of the word too.
#[test]
fn missing_required_fields_are_found_in_narrow_and_wide_structs() {
    for width in [2usize, 63, 64, 65, 70] {
        let required = [0, width / 2, width - 1];
        let s = schema(
            (0..width)
                .map(|f| field(&format!("f{f}"), DataType::Int32, !required.contains(&f)))
                .collect(),
        );
        let root = compile_struct(s.fields()).unwrap();
        let record = |without: Option<usize>| {
            let fields: Vec<String> = (0..width)
                .filter(|f| Some(*f) != without)
                .map(|f| format!(r#""f{f}":{f}"#))
                .collect();
            format!("{{{}}}", fields.join(","))
        };
        assert!(
            scan_record(record(None).as_bytes(), &root, None).is_ok(),
            "width {width}"
        );
        for f in 0..width {
            let r = scan_record(record(Some(f)).as_bytes(), &root, None);
            if required.contains(&f) {
                let detail = r.unwrap_err().detail();
                assert!(
                    detail.starts_with(&format!("field 'f{f}': missing value")),
                    "width {width}: {detail}"
                );
            } else {
                assert!(r.is_ok(), "width {width}, without f{f}");
            }
        }
    }
}

/// Records of wide structs (more fields than a word has bits) written into columns:
/// absent fields are nulls and a repeated key keeps its last value, as arrow-json
/// decodes the same records.
#[test]
fn wide_structs_fill_absent_fields_as_arrow_json_does() {
    for width in [63usize, 64, 65, 70] {
        let s = schema(
            (0..width)
                .map(|f| field(&format!("f{f}"), DataType::Int32, true))
                .collect(),
        );
        let records: Vec<String> = (0..width)
            .step_by(7)
            .map(|skip| {
                let mut fields: Vec<String> = (0..width)
                    .filter(|f| f % 7 != skip % 7 || *f == skip)
                    .map(|f| format!(r#""f{f}":{f}"#))
                    .collect();
                fields.push(format!(r#""f{skip}":-1"#));
                format!("{{{}}}", fields.join(","))
            })
            .collect();
        let input: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
        let mut bad = BadRecords::detached("test");
        let scanned = JsonDecoder::new(s.clone()).unwrap();
        assert!(matches!(scanned.rows, Rows::Scanned(_)), "width {width}");
        let (accepted, batch) = decode_all(&s, &input, &mut bad);
        assert!(accepted.iter().all(|a| *a), "width {width}");
        let mut arrow = JsonDecoder::with_capacity_through_arrow_json(s.clone(), 1024).unwrap();
        for r in &input {
            assert!(arrow.push(r, &mut bad));
        }
        let expected = arrow.flush().unwrap().unwrap();
        let batch = batch.unwrap();
        assert_eq!(batch, expected, "width {width}");
        let last = batch.column(7).as_primitive::<Int32Type>();
        assert_eq!(
            last.value(1),
            -1,
            "width {width}: the repeated key's last value"
        );
        assert!(
            last.null_count() > 0,
            "width {width}: absent fields are null"
        );
    }
}

#[test]
fn values_follow_the_documented_rules() {
    let s = schema(vec![
        field("i", DataType::Int8, true),
        field("f", DataType::Float32, true),
        field("s", DataType::Utf8, true),
        field("d", DataType::Date32, true),
        field(
            "m",
            DataType::Map(
                Arc::new(Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("key", DataType::Utf8, false),
                        Field::new("value", DataType::Int64, true),
                    ])),
                    false,
                )),
                false,
            ),
            true,
        ),
    ]);
    let ok: Vec<&[u8]> = vec![
        br#"{"i": 1e2, "f": "2.5", "s": 12, "d": "2024-02-29", "m": {"a": 1, "b": null}}"#,
        br#"{"i": "-128", "f": 1e-3, "s": true, "d": 19000, "m": {}}"#,
        br#"{"i": 2.0, "s": "\u00e9\ud83d\ude00"}"#,
    ];
    let (accepted, batch, reasons, _) = reasons_of(&s, &ok);
    assert_eq!(accepted, vec![true; 3], "{reasons:?}");
    let batch = batch.unwrap();
    assert_eq!(
        batch.column(0).as_primitive::<Int8Type>().values().to_vec(),
        vec![100, -128, 2]
    );
    let strings = batch.column(2).as_string::<i32>();
    assert_eq!(strings.value(0), "12");
    assert_eq!(strings.value(1), "true");
    assert_eq!(strings.value(2), "é😀");
    let bad: Vec<&[u8]> = vec![
        br#"{"i": 128}"#,
        br#"{"i": 1.5}"#,
        br#"{"i": "1e2"}"#,
        br#"{"f": "abc"}"#,
        br#"{"s": [1]}"#,
        br#"{"d": "2024-02-30"}"#,
        br#"{"m": {"a": "x"}}"#,
        br#"{"s": "\ud800"}"#,
        b"{\"s\": \"a\tb\"}",
        br#"{"i": 01}"#,
        b"",
        b"   ",
        br#"{"i": 1}}"#,
    ];
    let (accepted, _, reasons, _) = reasons_of(&s, &bad);
    assert_eq!(accepted, vec![false; bad.len()]);
    assert_eq!(&reasons[..7], vec!["schema_mismatch"; 7]);
    assert_eq!(&reasons[7..], vec!["malformed"; 6]);
}

/// Pins behaviours the flat and arrow-json paths must share: duplicate keys (the
/// last value wins, every value is checked), escapes, numbers written as strings,
/// `1e3` into integers, non-finite floats from strings, missing keys, nulls in a
/// non-nullable field and timestamps as epoch milliseconds.
#[test]
fn edge_cases_of_flat_records_are_pinned() {
    let s = schema(vec![
        field("n", DataType::Int32, false),
        field("i", DataType::Int64, true),
        field("f", DataType::Float64, true),
        field("s", DataType::Utf8, true),
        field("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ]);
    let input: Vec<&[u8]> = vec![
        br#"{"n": 1, "i": 1, "i": 2}"#,
        br#"{"n": 2, "i": 1, "i": null}"#,
        br#"{"n": 3, "n": null}"#,
        br#"{"n": 4, "i": "x", "i": 5}"#,
        br#"{"n": 5, "s": "a\"b\u00e9\n\/", "s": "last"}"#,
        br#"{"n": 6, "s": "q\"\\"}"#,
        br#"{"n": "7", "i": "-8", "f": "2.5"}"#,
        br#"{"n": 1e3, "i": 2.0, "f": 1E2}"#,
        br#"{"n": 9, "f": "NaN"}"#,
        br#"{"n": 10, "f": "-inf", "s": 1.50}"#,
        br#"{"n": 11}"#,
        br#"{}"#,
        br#"{"n": null}"#,
        br#"{"n": 12, "t": 1700000000123, "s": false}"#,
        br#"{"n": 13, "t": 1.5}"#,
        br#"{"n": 14, "t": "1700000000123"}"#,
        br#"{"n": 15, "t": "2015-07-15T00:00:01.234Z", "unknown": [1, {"a": null}]}"#,
        br#"{"i": 1, "n": 16, "i": 1.5}"#,
        br#"{"n": 17, "n": 18}"#,
    ];
    let (accepted, batch, reasons, _) = reasons_of(&s, &input);
    let expect_accepted = [
        true, true, false, false, true, true, true, true, true, true, true, false, false, true,
        true, true, true, false, true,
    ];
    assert_eq!(accepted, expect_accepted);
    assert_eq!(reasons, vec!["schema_mismatch"; 5]);
    let batch = batch.unwrap();
    let n = batch.column(0).as_primitive::<Int32Type>();
    assert_eq!(
        n.values().to_vec(),
        vec![1, 2, 5, 6, 7, 1000, 9, 10, 11, 12, 13, 14, 15, 18]
    );
    let i = batch.column(1).as_primitive::<Int64Type>();
    assert_eq!(i.value(0), 2);
    assert!(i.is_null(1));
    assert_eq!(i.value(4), -8);
    assert_eq!(i.value(5), 2);
    let f = batch.column(2).as_primitive::<Float64Type>();
    assert_eq!(f.value(4), 2.5);
    assert_eq!(f.value(5), 100.0);
    assert!(f.value(6).is_nan());
    assert_eq!(f.value(7), f64::NEG_INFINITY);
    let st = batch.column(3).as_string::<i32>();
    assert_eq!(st.value(2), "last");
    assert_eq!(st.value(3), "q\"\\");
    assert_eq!(st.value(7), "1.50");
    assert_eq!(st.value(9), "false");
    assert!(st.is_null(8));
    let t = batch.column(4).as_primitive::<TimestampMillisecondType>();
    assert_eq!(t.value(9), 1_700_000_000_123);
    assert_eq!(t.value(10), 1);
    assert_eq!(t.value(11), 1_700_000_000_123);
    assert_eq!(t.value(12), 1_436_918_401_234);
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let s = schema(vec![field("a", DataType::Int32, true)]);
    let mut deep = String::from(r#"{"x": "#);
    deep.push_str(&"[".repeat(100_000));
    deep.push_str(&"]".repeat(100_000));
    deep.push('}');
    let (accepted, _, reasons, _) = reasons_of(&s, &[deep.as_bytes()]);
    assert_eq!(accepted, vec![false]);
    assert_eq!(reasons, vec!["malformed"]);
}

/// Lists of structs, as the restaurant's orders carry line items: keys out of order, a
/// key repeated (the last value counts), a field absent, a null item, a null list, a
/// refused record between good ones leaving nothing behind.
#[test]
fn lists_of_structs_are_built_from_the_scanner() {
    let item = Fields::from(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]);
    let items = DataType::List(Arc::new(Field::new("item", DataType::Struct(item), true)));
    let s = schema(vec![
        field("order", DataType::Int64, false),
        field("items", items, true),
    ]);
    let input: [&[u8]; 4] = [
        br#"{"items": [{"name": "fries", "id": 1}, {"id": 2, "id": 3}, null], "order": 10}"#,
        br#"{"order": 11, "items": [{"id": 4, "name": "shake"}, {"id": "x"}]}"#,
        br#"{"order": 12, "items": null}"#,
        br#"{"order": 13, "items": [{"id": 5, "name": "cola\u0021"}]}"#,
    ];
    let mut d = JsonDecoder::new(s).unwrap();
    assert!(matches!(d.rows, Rows::Scanned(_)));
    let mut bad = BadRecords::detached("test");
    let accepted: Vec<bool> = input.iter().map(|r| d.push(r, &mut bad)).collect();
    assert_eq!(accepted, vec![true, false, true, true]);
    let batch = d.flush().unwrap().unwrap();
    let orders = batch.column(0).as_primitive::<Int64Type>();
    assert_eq!(orders.values(), &[10, 12, 13]);
    let lists = batch.column(1).as_list::<i32>();
    assert!(lists.is_null(1));
    assert_eq!(lists.value_offsets(), &[0, 3, 3, 4]);
    let structs = lists.values().as_struct();
    assert!(structs.is_null(2));
    let ids = structs.column(0).as_primitive::<Int64Type>();
    assert_eq!((ids.value(0), ids.value(1), ids.value(3)), (1, 3, 5));
    let names = structs.column(1).as_string::<i32>();
    assert_eq!(names.value(0), "fries");
    assert!(names.is_null(1));
    assert_eq!(names.value(3), "cola!");
}

#[test]
fn many_records_are_decoded_in_runs_of_the_capacity() {
    let s = schema(vec![field("n", DataType::Int64, false)]);
    let mut d = JsonDecoder::with_capacity(s, 7).unwrap();
    let mut bad = BadRecords::detached("test");
    for n in 0..100 {
        assert!(d.push(format!(r#"{{"n": {n}}}"#).as_bytes(), &mut bad));
    }
    assert_eq!(d.buffered(), 100);
    let batch = d.flush().unwrap().unwrap();
    assert_eq!(
        batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec(),
        (0..100).collect::<Vec<_>>()
    );
    assert_eq!(d.buffered(), 0);
    assert!(d.flush().unwrap().is_none());
}

#[test]
fn records_refused_by_arrow_after_the_scanner_are_isolated() {
    // The scanner is bypassed to exercise the safety net.
    let s = schema(vec![field("n", DataType::Int64, false)]);
    let mut d = JsonDecoder::with_capacity(s, 16).unwrap();
    let mut bad = BadRecords::detached("test");
    for n in 0..10 {
        if n == 6 {
            d.push_unchecked(br#"{"n": "six"}"#);
        } else {
            assert!(d.push(format!(r#"{{"n": {n}}}"#).as_bytes(), &mut bad));
        }
    }
    let batch = d.flush().unwrap().unwrap();
    let got = batch
        .column(0)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5, 7, 8, 9]);
    assert_eq!(d.take_dropped(), vec![6], "the refused record's ordinal");
    assert!(d.take_dropped().is_empty());
    assert_eq!(bad.count(), 0);
    d.report_late(&mut bad);
    assert_eq!(bad.count(), 1);
}

#[test]
fn dropped_ordinals_count_from_each_flush_across_buffer_decodes() {
    // Capacity 4: the buffer is decoded mid-way; ordinals stay per flush.
    let s = schema(vec![field("n", DataType::Int64, false)]);
    let mut d = JsonDecoder::with_capacity(s, 4).unwrap();
    let mut bad = BadRecords::detached("test");
    for round in 0..2 {
        for n in 0..10 {
            if n == 2 || n == 7 {
                d.push_unchecked(br#"{"n": "x"}"#);
            } else {
                assert!(d.push(format!(r#"{{"n": {n}}}"#).as_bytes(), &mut bad));
            }
        }
        let rows = d.flush().unwrap().unwrap().num_rows();
        assert_eq!(rows, 8, "round {round}");
        assert_eq!(d.take_dropped(), vec![2, 7], "round {round}");
    }
}

#[test]
fn unsupported_types_are_refused_up_front() {
    let s = schema(vec![field(
        "d",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        true,
    )]);
    let e = JsonDecoder::new(s).unwrap_err();
    assert!(e.to_string().contains("column d"), "{e}");
}

fn fuzz_schema() -> SchemaRef {
    let inner = Fields::from(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Float64, true),
    ]);
    schema(vec![
        field("id", DataType::Int64, false),
        field("name", DataType::Utf8, true),
        field(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        field(
            "tags",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        field("inner", DataType::Struct(inner), true),
        field("flag", DataType::Boolean, true),
    ])
}

const VALID: &[&str] = &[
    r#"{"id": 1, "name": "a", "ts": "2024-01-01T00:00:00Z", "tags": ["x", null], "inner": {"k": "q", "v": 1.5}, "flag": true}"#,
    r#"{"id": -9, "ts": 1700000000000, "inner": null, "other": {"deep": [1, {"a": "\u0041"}]}}"#,
    r#"{"id": 3, "name": "\"esc\"\n", "tags": [], "flag": false}"#,
];

/// Feeds `records` to a decoder: pushes never panic, flush never fails, and the
/// batch holds exactly the accepted records, each of which is strict JSON.
fn check_robust(records: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let s = fuzz_schema();
    let mut d = JsonDecoder::with_capacity(s.clone(), 4).unwrap();
    let mut bad = BadRecords::detached("fuzz");
    let mut accepted = 0;
    for r in records {
        if d.push(r, &mut bad) {
            accepted += 1;
            let v: serde_json::Value = serde_json::from_slice(r)
                .map_err(|e| TestCaseError::fail(format!("accepted non-JSON: {e}")))?;
            prop_assert!(v.is_object());
        }
    }
    prop_assert_eq!(d.buffered(), accepted);
    let batch = d.flush().map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(batch.map(|b| b.num_rows()).unwrap_or(0), accepted);
    d.report_late(&mut bad);
    prop_assert_eq!(bad.count() as usize, records.len() - accepted);
    Ok(())
}

fn edit() -> impl Strategy<Value = Edit> {
    let interesting = prop::sample::select(vec![
        b'{', b'}', b'[', b']', b'"', b'\\', b':', b',', b'0', b'-', b'e', b'.', b'n', b' ', 0xff,
        0xc3, 0x00,
    ]);
    prop_oneof![
        (any::<usize>(), interesting.clone()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), interesting).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// The scalar types of the differential tests, time zones and odd decimals included.
fn flat_types() -> Vec<DataType> {
    let ts = |unit, tz: Option<&str>| DataType::Timestamp(unit, tz.map(Into::into));
    vec![
        DataType::Null,
        DataType::Boolean,
        DataType::Int8,
        DataType::Int32,
        DataType::Int64,
        DataType::UInt8,
        DataType::UInt64,
        DataType::Float32,
        DataType::Float64,
        DataType::Utf8,
        DataType::LargeUtf8,
        DataType::Utf8View,
        DataType::Binary,
        DataType::LargeBinary,
        DataType::Date32,
        DataType::Date64,
        DataType::Time32(TimeUnit::Second),
        DataType::Time64(TimeUnit::Nanosecond),
        DataType::Duration(TimeUnit::Millisecond),
        ts(TimeUnit::Second, None),
        ts(TimeUnit::Millisecond, None),
        ts(TimeUnit::Microsecond, Some("UTC")),
        ts(TimeUnit::Nanosecond, Some("+05:30")),
        ts(TimeUnit::Millisecond, Some("America/New_York")),
        DataType::Decimal32(5, 1),
        DataType::Decimal64(12, 3),
        DataType::Decimal128(10, 2),
        DataType::Decimal256(40, -2),
    ]
}

fn flat_type() -> impl Strategy<Value = DataType> {
    prop::sample::select(flat_types())
}

/// Up to 5 scalar columns `c0`, `c1`, …; with `dup`, `c1` is called `c0` (which
/// keeps such schemas off the flat path).
fn flat_schema() -> impl Strategy<Value = SchemaRef> {
    (
        prop::collection::vec((flat_type(), any::<bool>()), 0..6),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(cols, dup)| {
            let fields = cols
                .into_iter()
                .enumerate()
                .map(|(i, (dt, nullable))| {
                    let i = if dup && i == 1 { 0 } else { i };
                    field(&format!("c{i}"), dt, nullable)
                })
                .collect();
            schema(fields)
        })
}

/// JSON values aimed at the edges of the value rules.
const DIFF_VALUES: &[&str] = &[
    "null",
    "0",
    "-0",
    "-1",
    "1e3",
    "2.0",
    "1.5",
    "-0.0",
    "127",
    "128",
    "-129",
    "255",
    "256",
    "1E2",
    "1e-400",
    "1e400",
    "0.1",
    "123456.789",
    "99999.99",
    "1.23e5",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1700000000123",
    // 18 digits: an integer as read; as milliseconds, past nanoseconds' range.
    "999999999999999999",
    "-999999999999999999",
    "-1000",
    "1.5e12",
    // Just above the midpoint of two f32: rounding twice (through f64) goes down.
    "1.000000059604644775390625001",
    "true",
    "false",
    "\"\"",
    "\"42\"",
    "\"-7\"",
    "\"1.5\"",
    "\"1e2\"",
    "\"NaN\"",
    "\"inf\"",
    "\"-inf\"",
    "\"abc\"",
    "\"00ff\"",
    "\"aBc\"",
    "\"0\"",
    "\"\\u0030\\u0031\"",
    "\"a\\\"b\\\\c\\u00e9\\ud83d\\ude00\"",
    "\"2024-02-29\"",
    "\"2024-02-30\"",
    "\"2015-07-15T00:00:01.234Z\"",
    "\"2023-11-15T03:43:20.123456789+05:30\"",
    "\"2023-11-14 22:13:20\"",
    "\"2023-11-14T22:13:20\"",
    "\"1700000000123\"",
    "\"12:34:56\"",
    "\"12:34:56.789\"",
    "\"99999999999999999999999999999\"",
    "[1]",
    "{\"a\": 1}",
    "[]",
    "{}",
];

fn diff_value() -> impl Strategy<Value = String> {
    let text = prop::collection::vec(prop::sample::select(b"azAZ09 .:+-TZe\\\"".to_vec()), 0..12)
        .prop_map(|b| {
            let s: String = b.into_iter().map(char::from).collect();
            serde_json::to_string(&s).unwrap()
        });
    prop_oneof![
        6 => prop::sample::select(DIFF_VALUES).prop_map(String::from),
        1 => any::<i64>().prop_map(|v| v.to_string()),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|v| format!("{v:e}")),
        1 => any::<f32>().prop_filter("finite", |f| f.is_finite()).prop_map(|v| v.to_string()),
        1 => any::<i64>().prop_map(|v| format!("\"{v}\"")),
        1 => text,
    ]
}

/// A value of the kind column type `dt` takes (in range or not).
fn fitting_value(dt: &DataType) -> BoxedStrategy<String> {
    let int = any::<i64>().prop_map(|v| v.to_string()).boxed();
    let quoted = |st: BoxedStrategy<String>| st.prop_map(|v| format!("\"{v}\"")).boxed();
    let hex = prop::collection::vec(
        prop::sample::select(b"0123456789abcdefABCDEF".to_vec()),
        0..9,
    )
    .prop_map(|b| format!("\"{}\"", String::from_utf8(b).unwrap()))
    .boxed();
    let date = (1900..2100i32, 1..13u32, 1..32u32)
        .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}"))
        .boxed();
    let time = (
        0..25u32,
        0..60u32,
        0..61u32,
        prop::option::of(0..1_000_000_000u32),
    )
        .prop_map(|(h, m, s, f)| match f {
            Some(f) => format!("{h:02}:{m:02}:{s:02}.{f}"),
            None => format!("{h:02}:{m:02}:{s:02}"),
        })
        .boxed();
    let offset = prop::sample::select(vec!["Z", "+05:30", "-08:00", "", "+00:00"]);
    let stamp = (date.clone(), time.clone(), offset)
        .prop_map(|(d, t, o)| format!("\"{d}T{t}{o}\""))
        .boxed();
    let small = (-100_000i64..100_000, 0..4u32)
        .prop_map(|(v, e)| {
            let v = v as f64 / 10f64.powi(e as i32);
            v.to_string()
        })
        .boxed();
    match dt {
        DataType::Null => Just("null".to_string()).boxed(),
        DataType::Boolean => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        DataType::Int8 | DataType::UInt8 => prop_oneof![
            (-300..300i32).prop_map(|v| v.to_string()),
            quoted((-300..300i32).prop_map(|v| v.to_string()).boxed())
        ]
        .boxed(),
        DataType::Int32 | DataType::Int64 | DataType::UInt64 | DataType::Duration(_) => {
            prop_oneof![int.clone(), quoted(int), small.clone()].boxed()
        }
        DataType::Float32 | DataType::Float64 => prop_oneof![
            any::<f64>().prop_map(|v| format!("{v:e}")),
            any::<f32>().prop_map(|v| v.to_string()),
            small.clone(),
            quoted(small),
        ]
        .boxed(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => diff_value().boxed(),
        DataType::Binary | DataType::LargeBinary => hex,
        DataType::Date32 | DataType::Date64 => prop_oneof![
            quoted(date),
            (-100_000..100_000i64).prop_map(|v| v.to_string())
        ]
        .boxed(),
        DataType::Time32(_) | DataType::Time64(_) => {
            prop_oneof![quoted(time), (0..100_000i64).prop_map(|v| v.to_string())].boxed()
        }
        DataType::Timestamp(_, _) => prop_oneof![
            stamp,
            any::<i64>().prop_map(|v| (v >> 20).to_string()),
            small.clone(),
            quoted(small),
        ]
        .boxed(),
        _ => prop_oneof![small.clone(), quoted(small), int].boxed(),
    }
}

/// A value of the kind column type `dt` takes; for lists, structs and maps, one whose
/// items, fields or values are such values (in range or not), or odd ones.
/// An object of these keys (written as they are) and values: compact (`{"k":v,…}`, as
/// producers mostly write them, which the scanner takes the short way) or spaced.
fn joined(entries: &[(String, String)], compact: bool) -> String {
    let (colon, comma) = if compact { (":", ",") } else { (": ", ", ") };
    let body: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("\"{k}\"{colon}{v}"))
        .collect();
    format!("{{{}}}", body.join(comma))
}

fn nested_value(dt: &DataType) -> BoxedStrategy<String> {
    let item = |dt: &DataType| prop_oneof![6 => nested_value(dt), 1 => diff_value()].boxed();
    match dt {
        DataType::List(f) | DataType::LargeList(f) => {
            prop::collection::vec(item(f.data_type()), 0..4)
                .prop_map(|v| format!("[{}]", v.join(", ")))
                .boxed()
        }
        DataType::Map(entries, _) => {
            let DataType::Struct(kv) = entries.data_type() else {
                unreachable!("map entries are structs")
            };
            let key = prop::sample::select(vec!["k", "\\\"j\\\"", "k", "", "\\u00e9"]);
            prop::collection::vec((key, item(kv[1].data_type())), 0..4)
                .prop_map(|kv| {
                    let body: Vec<String> =
                        kv.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                    format!("{{{}}}", body.join(", "))
                })
                .boxed()
        }
        DataType::Struct(fields) => {
            let entries: Vec<BoxedStrategy<Option<(String, String)>>> = fields
                .iter()
                .map(|f| {
                    let name = f.name().clone();
                    prop::option::weighted(
                        0.85,
                        item(f.data_type()).prop_map(move |v| (name.clone(), v)),
                    )
                    .boxed()
                })
                .collect();
            (
                entries,
                any::<bool>(),
                prop::option::of((0..fields.len().max(1), diff_value())),
                any::<bool>(),
            )
                .prop_map(|(entries, reverse, repeat, compact)| {
                    let mut entries: Vec<(String, String)> =
                        entries.into_iter().flatten().collect();
                    if reverse {
                        entries.reverse();
                    }
                    // A key repeated: the last value counts.
                    if let Some((i, v)) = repeat.filter(|(i, _)| *i < entries.len()) {
                        let k = entries[i].0.clone();
                        entries.insert(0, (k, v));
                    }
                    joined(&entries, compact)
                })
                .boxed()
        }
        dt => fitting_value(dt),
    }
}

/// Lists, structs and maps of the scalar types (and of each other), nullable or not;
/// with `dup`, the struct fields are all called `a` (which keeps such schemas off the
/// scanned path).
fn nested_type() -> impl Strategy<Value = DataType> {
    let leaf = (flat_type(), any::<bool>());
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|(dt, nullable)| (
                DataType::List(Arc::new(Field::new("item", dt, nullable))),
                nullable
            )),
            inner.clone().prop_map(|(dt, nullable)| (
                DataType::LargeList(Arc::new(Field::new("element", dt, nullable))),
                !nullable
            )),
            (
                prop::collection::vec(inner.clone(), 0..4),
                prop::bool::weighted(0.1)
            )
                .prop_map(|(fields, dup)| {
                    let fields: Vec<Field> = fields
                        .into_iter()
                        .enumerate()
                        .map(|(i, (dt, nullable))| {
                            let name = if dup {
                                "a".to_string()
                            } else {
                                format!("f{i}")
                            };
                            Field::new(name, dt, nullable)
                        })
                        .collect();
                    (DataType::Struct(fields.into()), true)
                }),
            inner.prop_map(|(dt, nullable)| {
                let entries = Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("keys", DataType::Utf8, false),
                        Field::new("values", dt, nullable),
                    ])),
                    false,
                );
                (DataType::Map(Arc::new(entries), false), nullable)
            }),
        ]
    })
    .prop_map(|(dt, _)| dt)
}

/// Up to 4 columns `c0`, `c1`, …, scalars, lists, structs and maps.
fn nested_schema() -> impl Strategy<Value = SchemaRef> {
    prop::collection::vec(
        (
            prop_oneof![1 => flat_type(), 2 => nested_type()],
            any::<bool>(),
        ),
        1..5,
    )
    .prop_map(|cols| {
        let fields = cols
            .into_iter()
            .enumerate()
            .map(|(i, (dt, nullable))| field(&format!("c{i}"), dt, nullable))
            .collect();
        schema(fields)
    })
}

/// A record for `s`: its columns (most of them) with fitting values or odd ones, in
/// order or not, a key repeated or unknown now and then, sometimes mutated.
fn diff_record(s: &SchemaRef) -> BoxedStrategy<Vec<u8>> {
    let columns: Vec<BoxedStrategy<Option<(String, String)>>> = s
        .fields()
        .iter()
        .map(|f| {
            let name = f.name().clone();
            let value = prop_oneof![
                6 => nested_value(f.data_type()),
                1 => diff_value(),
            ];
            prop::option::weighted(0.85, value.prop_map(move |v| (name.clone(), v))).boxed()
        })
        .collect();
    let key = prop::sample::select(vec!["c0", "c1", "c2", "zz", "C0", "c\\u0030"]);
    (
        columns,
        prop::collection::vec((key, diff_value()), 0..2),
        any::<prop::sample::Index>(),
        any::<bool>(),
        prop::collection::vec(edit(), 1..3),
        prop::bool::weighted(0.15),
        any::<bool>(),
    )
        .prop_map(|(columns, extra, at, reverse, edits, mutate, compact)| {
            let mut entries: Vec<(String, String)> = columns.into_iter().flatten().collect();
            if reverse {
                entries.reverse();
            }
            for (k, v) in extra {
                let i = at.index(entries.len() + 1);
                entries.insert(i, (k.to_string(), v));
            }
            let r = joined(&entries, compact).into_bytes();
            if mutate { apply_edits(r, &edits) } else { r }
        })
        .boxed()
}

/// Every value of [`DIFF_VALUES`] in a column of every type of [`flat_types`], spaced
/// and compact (the scanner's short way): the same answers, batches and refusals on
/// both paths.
#[test]
fn flat_path_equals_the_arrow_json_path_on_chosen_values() {
    let records: Vec<Vec<u8>> = DIFF_VALUES
        .iter()
        .flat_map(|v| [format!(r#"{{"c0": {v}}}"#), format!(r#"{{"c0":{v}}}"#)])
        .map(String::into_bytes)
        .collect();
    for dt in flat_types() {
        for nullable in [true, false] {
            let s = schema(vec![field("c0", dt.clone(), nullable)]);
            let new = run_path(&s, &records, 7, true);
            let old = run_path(&s, &records, 7, false);
            assert!(new.0 && !old.0);
            assert_eq!(new.1, old.1, "{dt}: accepted");
            assert_eq!(new.2, old.2, "{dt}: batches");
            assert_eq!(new.4, old.4, "{dt}: reasons");
        }
    }
}

/// Runs `records` through a decoder in two flushes: whether it was on the flat
/// path, what `push` answered, the batches, the dropped ordinals, the refusal
/// reasons and the number of bad records.
#[allow(clippy::type_complexity)]
fn run_path(
    s: &SchemaRef,
    records: &[Vec<u8>],
    capacity: usize,
    flat: bool,
) -> (
    bool,
    Vec<bool>,
    Vec<Option<RecordBatch>>,
    Vec<usize>,
    Vec<String>,
    u64,
) {
    let rec = Reasons::default();
    let mut bad = BadRecords::detached("diff");
    let (on_flat, accepted, batches, dropped) = metrics::with_local_recorder(&rec, || {
        let mut d = if flat {
            JsonDecoder::with_capacity(s.clone(), capacity)
        } else {
            JsonDecoder::with_capacity_through_arrow_json(s.clone(), capacity)
        }
        .unwrap();
        let mut accepted = Vec::new();
        let mut batches = Vec::new();
        let mut dropped = Vec::new();
        for half in records.chunks(records.len().div_ceil(2).max(1)) {
            accepted.extend(half.iter().map(|r| d.push(r, &mut bad)));
            batches.push(d.flush().unwrap());
            dropped.extend(d.take_dropped());
        }
        d.report_late(&mut bad);
        (
            matches!(d.rows, Rows::Scanned(_)),
            accepted,
            batches,
            dropped,
        )
    });
    (on_flat, accepted, batches, dropped, rec.take(), bad.count())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_break_the_decoder(records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..8)) {
        check_robust(&records)?;
    }

    #[test]
    fn mutated_records_never_break_the_decoder(
        picks in prop::collection::vec((0..VALID.len(), prop::collection::vec(edit(), 0..4)), 1..10)
    ) {
        let records: Vec<Vec<u8>> = picks
            .iter()
            .map(|(i, edits)| apply_edits(VALID[*i].as_bytes().to_vec(), edits))
            .collect();
        check_robust(&records)?;
    }

    /// The scanned path and the arrow-json path agree on every record of every flat
    /// schema: the same answers, batches, refusal reasons and refusal details.
    #[test]
    fn flat_path_equals_the_arrow_json_path(
        (s, records) in flat_schema().prop_flat_map(|s| {
            let records = prop::collection::vec(diff_record(&s), 1..12);
            (Just(s), records)
        }),
        capacity in 1..6usize,
    ) {
        scanned_path_equals_the_arrow_json_path(&s, &records, capacity)?;
    }

    /// The same for schemas with lists, structs and maps, nested in each other.
    #[test]
    fn nested_path_equals_the_arrow_json_path(
        (s, records) in nested_schema().prop_flat_map(|s| {
            let records = prop::collection::vec(diff_record(&s), 1..12);
            (Just(s), records)
        }),
        capacity in 1..6usize,
    ) {
        scanned_path_equals_the_arrow_json_path(&s, &records, capacity)?;
    }
}

/// Runs `records` through the scanned path and the arrow-json path: the same answers,
/// batches, refusal reasons and refusal details.
fn scanned_path_equals_the_arrow_json_path(
    s: &SchemaRef,
    records: &[Vec<u8>],
    capacity: usize,
) -> Result<(), TestCaseError> {
    let root = compile_struct(s.fields()).unwrap();
    let run = |flat| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_path(s, records, capacity, flat)
        }))
    };
    let (new, old) = match (run(true), run(false)) {
        (Ok(new), Ok(old)) => (new, old),
        // arrow-cast's `parse_decimal` overflows (a panic with debug assertions)
        // on exponents near 32767, on either path alike.
        (Err(_), Err(_)) => return Ok(()),
        (new, _) => {
            return Err(TestCaseError::fail(format!(
                "only the {} path panicked",
                if new.is_err() {
                    "scanned"
                } else {
                    "arrow-json"
                }
            )));
        }
    };
    let scanned = root.all_unique() && !s.fields().is_empty();
    prop_assert_eq!(new.0, scanned, "the scanned path is taken when it can be");
    prop_assert!(!old.0);
    prop_assert_eq!(&new.1, &old.1, "accepted");
    prop_assert_eq!(&new.2, &old.2, "batches");
    prop_assert_eq!(&new.3, &old.3, "dropped");
    prop_assert_eq!(&new.4, &old.4, "reasons");
    prop_assert_eq!(new.5, old.5, "bad records");
    // Written into columns (as the scanned path does, for the schemas it takes), a
    // record is refused as it is when only checked.
    let mut columns: Option<Vec<Column>> = s
        .fields()
        .iter()
        .map(|f| Column::new(f.data_type(), 8))
        .collect::<Option<_>>()
        .filter(|_| scanned);
    let mut spill = Spill::default();
    let mut rows = 0;
    for r in records {
        let old = scan_record(r, &root, None).map_err(|e| (e.reason, e.detail()));
        let sink = columns.as_deref_mut().map(|columns| Sink {
            columns,
            spill: &mut spill,
        });
        let new = scan_record(r, &root, sink).map_err(|e| (e.reason, e.detail()));
        match (&new, columns.as_deref_mut()) {
            (Ok(_), _) => rows += 1,
            (Err(_), Some(columns)) => columns.iter_mut().for_each(|c| c.truncate(rows)),
            (Err(_), None) => {}
        }
        prop_assert_eq!(new, old, "refusal of {}", String::from_utf8_lossy(r));
    }
    Ok(())
}

/// Pieces of a string's bytes: ASCII, whole characters of 2, 3 and 4 bytes, escapes,
/// and bytes that start, continue or break a multi-byte character on their own.
fn text_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[a-z ]{0,20}".prop_map(String::into_bytes),
        2 => prop::sample::select(vec!["é", "€", "中", "🍔", "ÿ"]).prop_map(|c| c.as_bytes().to_vec()),
        1 => prop::sample::select(vec!["\\n", "\\u00e9", "\\ud83c\\udf54"]).prop_map(|e| e.as_bytes().to_vec()),
        2 => prop::collection::vec(
            prop::sample::select(vec![0x80u8, 0xa9, 0xbf, 0xc0, 0xc3, 0xe0, 0xe2, 0xed, 0xa0, 0xf0, 0xf4, 0x90, 0xf5, 0xff]),
            1..4,
        ),
    ]
}

proptest! {
    /// A record is checked as UTF-8 as it is scanned, wherever its text is: a string
    /// taken the short way, one with escapes, a field the schema does not have, a key.
    /// Against std's check of the whole record: a record is refused exactly when it is
    /// not UTF-8, as malformed, at the byte std names; an accepted string keeps its
    /// text. Decoded one record at a time and as lines in one text, alike.
    #[test]
    fn records_are_refused_exactly_when_they_are_not_utf8(
        pieces in prop::collection::vec(text_piece(), 0..8),
        place in 0..4usize,
    ) {
        let text: Vec<u8> = pieces.concat();
        let s = schema(vec![
            field("s", DataType::Utf8, true),
            field("n", DataType::Int64, false),
        ]);
        let record = match place {
            0 => [&b"{\"s\":\""[..], &text, b"\",\"n\":1}"].concat(),
            1 => [&b"{\"s\": \"\\t"[..], &text, b"\", \"n\": 1}"].concat(),
            2 => [&b"{\"x\":\""[..], &text, b"\",\"s\":\"a\",\"n\":1}"].concat(),
            _ => [&b"{\"k"[..], &text, b"\":[1],\"s\":\"a\",\"n\":1}"].concat(),
        };
        let expected = std::str::from_utf8(&record).map(|_| {
            // The string's text once its escapes are read (the pieces' escapes are
            // JSON's), taken from std's own parse of the same string.
            let quoted = [&b"\""[..], &text, b"\""].concat();
            let value: String = serde_json::from_slice(&quoted).unwrap();
            match place {
                0 => value,
                1 => format!("\t{value}"),
                _ => "a".to_string(),
            }
        });
        // One record at a time.
        let rec = Reasons::default();
        let mut bad = BadRecords::collecting("test");
        let (accepted, batch) = metrics::with_local_recorder(&rec, || decode_all(&s, &[&record], &mut bad));
        // As a line among others.
        let mut lines = JsonDecoder::new(s.clone()).unwrap();
        let joined = [&b"{\"n\":0}\n"[..], &record, b"\n{\"n\":2}\n"].concat();
        let mut at = 0;
        let mut taken = 0;
        while let Some(end) = lines.push_line_at(&joined, at, usize::MAX) {
            at = end;
            taken += 1;
        }
        match expected {
            Ok(value) => {
                prop_assert_eq!(accepted, vec![true]);
                let batch = batch.unwrap();
                prop_assert_eq!(batch.column(0).as_string::<i32>().value(0), value.as_str());
                prop_assert_eq!(taken, 3, "every line taken");
            }
            Err(e) => {
                prop_assert_eq!(accepted, vec![false]);
                prop_assert_eq!(rec.take(), vec!["malformed".to_string()]);
                let letters = bad.take_letters();
                let at = format!("not valid UTF-8 (at byte {})", e.valid_up_to());
                prop_assert!(letters[0].message.contains(&at), "{} in {}", at, letters[0].message);
                prop_assert_eq!(taken, 1, "the line stops the run of lines taken in one pass");
            }
        }
    }
}
