//! Feeds arbitrary bytes, split into records at newlines, to the JSON decoder: it must
//! never panic, and the flushed batch must hold exactly the records it accepted.
#![no_main]

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use libfuzzer_sys::fuzz_target;
use tributary::dlq::BadRecords;
use tributary::formats::json::JsonDecoder;

fuzz_target!(|data: &[u8]| {
    let inner = Fields::from(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Float64, true),
    ]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            true,
        ),
        Field::new_list("tags", Field::new("item", DataType::Utf8, true), true),
        Field::new("inner", DataType::Struct(inner), true),
        Field::new("d", DataType::Decimal128(10, 2), true),
    ]));
    let mut decoder = JsonDecoder::with_capacity(schema, 8).unwrap();
    let mut bad = BadRecords::detached("fuzz");
    let mut accepted = 0;
    for record in data.split(|b| *b == b'\n') {
        if decoder.push(record, &mut bad) {
            accepted += 1;
        }
    }
    let rows = decoder.flush().unwrap().map(|b| b.num_rows()).unwrap_or(0);
    assert_eq!(rows, accepted);
});
