//! Helpers the restaurant world's tests share: parameters, raw and parsed records of
//! a stream, timestamps and order event types as the records write them.

use chrono::DateTime;
use serde_json::Value;

use super::streams::records;
use crate::connectors::generator::{
    DEFAULT_START_MS, GeneratorSettings, Params, World as WorldKind,
};

pub(super) fn params(seed: u64, tweak: impl FnOnce(&mut GeneratorSettings)) -> Params {
    let mut s = GeneratorSettings::defaults_of(WorldKind::Restaurant);
    tweak(&mut s);
    Params::new(seed, &s, DEFAULT_START_MS, 0, 1)
}

pub(super) fn raw(stream: &str, p: &Params, n: usize) -> Vec<Vec<u8>> {
    let mut r = records(stream, p).unwrap();
    (0..n).map(|_| r.next_record().unwrap()).collect()
}

pub(super) fn parsed(stream: &str, p: &Params, n: usize) -> Vec<serde_json::Map<String, Value>> {
    raw(stream, p, n)
        .iter()
        .map(|r| match serde_json::from_slice(r).unwrap() {
            Value::Object(m) => m,
            v => panic!("not an object: {v}"),
        })
        .collect()
}

/// A record's timestamp field, whichever way it is written.
pub(super) fn ms(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(s) => DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis(),
        v => panic!("not a timestamp: {v}"),
    }
}

pub(super) fn rank(event_type: &str) -> usize {
    [
        "order_placed",
        "order_paid",
        "order_preparing",
        "order_ready",
        "order_picked_up",
    ]
    .iter()
    .position(|t| *t == event_type)
    .unwrap_or_else(|| match event_type {
        "order_delivered" => 4,
        "order_cancelled" => 5,
        t => panic!("unknown event type {t}"),
    })
}
