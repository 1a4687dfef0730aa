//! The Arrow schemas of the restaurant world's streams, which the JSON records decode
//! into. The event streams' schemas restate the Avro contracts in `schemas/`; a test
//! holds them to it.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema};

use crate::connectors::generator::ts_type;

fn line_item_fields() -> Fields {
    Fields::from(vec![
        Field::new("menu_item_id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("quantity", DataType::Int32, false),
        Field::new("unit_price", DataType::Float64, false),
    ])
}

pub(super) fn orders_schema() -> Schema {
    Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("event_time", ts_type(), false),
        Field::new("order_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("restaurant_id", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new(
            "items",
            DataType::List(Arc::new(Field::new_list_field(
                DataType::Struct(line_item_fields()),
                true,
            ))),
            true,
        ),
        Field::new("total", DataType::Float64, true),
        Field::new("payment_method", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("estimated_ready_time", ts_type(), true),
        Field::new("cancel_reason", DataType::Utf8, true),
        Field::new("offer_id", DataType::Int64, true),
    ])
}

pub(super) fn kitchen_schema() -> Schema {
    Schema::new(vec![
        Field::new("ticket_id", DataType::Utf8, false),
        Field::new("event_time", ts_type(), false),
        Field::new("order_id", DataType::Int64, false),
        Field::new("restaurant_id", DataType::Int64, false),
        Field::new("station", DataType::Utf8, false),
        Field::new("item_count", DataType::Int32, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("queued_at", ts_type(), false),
        Field::new("started_at", ts_type(), true),
        Field::new("finished_at", ts_type(), true),
        Field::new("wait_seconds", DataType::Float64, true),
        Field::new("prep_seconds", DataType::Float64, true),
    ])
}

pub(super) fn app_schema() -> Schema {
    Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("event_time", ts_type(), false),
        Field::new("session_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("app_version", DataType::Utf8, false),
        Field::new("restaurant_id", DataType::Int64, false),
        Field::new("menu_item_id", DataType::Int64, true),
        Field::new("quantity", DataType::Int32, true),
        Field::new("cart_total", DataType::Float64, true),
        Field::new("offer_id", DataType::Int64, true),
        Field::new("offer_name", DataType::Utf8, true),
        Field::new("duration_seconds", DataType::Float64, true),
        Field::new("converted", DataType::Boolean, true),
    ])
}

pub(super) fn restaurants_schema() -> Schema {
    Schema::new(vec![
        Field::new("restaurant_id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("time_zone", DataType::Utf8, false),
        Field::new("latitude", DataType::Float64, false),
        Field::new("longitude", DataType::Float64, false),
        Field::new("has_drive_thru", DataType::Boolean, false),
    ])
}

pub(super) fn menu_items_schema() -> Schema {
    Schema::new(vec![
        Field::new("menu_item_id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("station", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("calories", DataType::Int32, false),
    ])
}

pub(super) fn customers_schema() -> Schema {
    Schema::new(vec![
        Field::new("customer_id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("email", DataType::Utf8, false),
        Field::new("marketing_opt_in", DataType::Boolean, false),
        Field::new("home_restaurant_id", DataType::Int64, false),
        Field::new("loyalty_tier", DataType::Utf8, false),
        Field::new("signed_up_at", ts_type(), false),
    ])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use arrow::datatypes::SchemaRef;
    use serde_json::Value;

    use super::*;
    use crate::connectors::generator::restaurant::catalog::MENU;
    use crate::connectors::generator::restaurant::streams::records;
    use crate::connectors::generator::restaurant::testing::{params, parsed};
    use crate::connectors::generator::restaurant::world::{N_CUSTOMERS, N_RESTAURANTS};
    use crate::connectors::generator::restaurant::{STREAMS, is_reference, schema};
    use crate::dlq::BadRecords;
    use crate::formats::json::JsonDecoder;

    #[test]
    fn records_decode_to_the_stream_schema() {
        let p = params(9, |_| {});
        for stream in STREAMS {
            let n = if is_reference(stream) {
                usize::MAX
            } else {
                5000
            };
            let mut r = records(stream, &p).unwrap();
            let mut decoder = JsonDecoder::new(schema(stream).unwrap()).unwrap();
            let mut bad = BadRecords::detached("test");
            let mut pushed = 0;
            while pushed < n {
                let Some(rec) = r.next_record() else { break };
                assert!(
                    decoder.push(&rec, &mut bad),
                    "{stream}: {}",
                    String::from_utf8_lossy(&rec)
                );
                pushed += 1;
            }
            let batch = decoder.flush().unwrap().unwrap();
            assert_eq!(batch.schema(), schema(stream).unwrap());
            assert_eq!(batch.num_rows(), pushed, "{stream}");
            assert_eq!(bad.count(), 0);
            let expect = match *stream {
                "restaurants" => N_RESTAURANTS as usize,
                "menu_items" => MENU.len(),
                "customers" => N_CUSTOMERS as usize,
                _ => 5000,
            };
            assert_eq!(pushed, expect, "{stream}");
        }
    }

    /// The Avro contract (`schemas/<name>.avsc`) of each generator stream: `app` and
    /// `kitchen` have one each, with the stream's fields; `orders` has one per event
    /// type, each the fields that event carries (see `schemas/README.md`).
    const CONTRACTS: &[(&str, &str, Option<&str>)] = &[
        ("orders", "orders.order_placed", Some("order_placed")),
        ("orders", "orders.order_paid", Some("order_paid")),
        ("orders", "orders.order_preparing", Some("order_preparing")),
        ("orders", "orders.order_ready", Some("order_ready")),
        ("orders", "orders.order_picked_up", Some("order_picked_up")),
        ("orders", "orders.order_delivered", Some("order_delivered")),
        ("orders", "orders.order_cancelled", Some("order_cancelled")),
        ("kitchen", "kitchen.ticket_timing", None),
        ("app", "app.engagement", None),
    ];
    /// Contracts of pipelines' outputs (`sql/`) and of the platform itself (the
    /// dead-letter topics' records, `src/dlq/record.rs`), not of a generator stream.
    const PIPELINE_CONTRACTS: &[&str] = &[
        "offers.offer_triggered",
        "orders.order_status",
        "tributary.dead_letter",
    ];
    /// Generator streams without a contract.
    const UNCONTRACTED: &[&str] = &["restaurants", "menu_items", "customers"];

    /// Disagreements between a stream schema and its contract that are known and left
    /// as they are: changing either side changes what consumers see.
    ///
    /// `items`' elements are nullable in the `orders` schema (the usual Arrow list
    /// field), while the contract's `array` of `LineItem` records has no null
    /// elements. The generator never writes a null element.
    const KNOWN_DISAGREEMENTS: &[&str] = &[
        "orders.items vs orders.order_placed: List(Struct(\"menu_item_id\": non-null Int64, \"name\": non-null Utf8, \"quantity\": non-null Int32, \"unit_price\": non-null Float64)) vs List(non-null Struct(\"menu_item_id\": non-null Int64, \"name\": non-null Utf8, \"quantity\": non-null Int32, \"unit_price\": non-null Float64))",
    ];

    /// `dt` without its nested fields' metadata: arrow-avro records the Avro names of
    /// nested records there (`avro.name`, `avro.namespace`), which say nothing of the
    /// columns' shape.
    fn without_metadata(dt: &DataType) -> DataType {
        let field =
            |f: &Field| Field::new(f.name(), without_metadata(f.data_type()), f.is_nullable());
        match dt {
            DataType::List(f) => DataType::List(Arc::new(field(f))),
            DataType::LargeList(f) => DataType::LargeList(Arc::new(field(f))),
            DataType::FixedSizeList(f, n) => DataType::FixedSizeList(Arc::new(field(f)), *n),
            DataType::Struct(fields) => DataType::Struct(fields.iter().map(|f| field(f)).collect()),
            DataType::Map(f, sorted) => DataType::Map(Arc::new(field(f)), *sorted),
            other => other.clone(),
        }
    }

    fn schemas_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
    }

    /// The Arrow columns a contract's records decode into: arrow-avro's mapping, as
    /// the Kafka sink (`schema_file`) and the Kafka source's Avro decoder use it.
    fn contract_columns(name: &str) -> SchemaRef {
        let path = schemas_dir().join(format!("{name}.avsc"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        crate::connectors::kafka::contract::avro_columns(&text)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn every_contract_belongs_to_a_stream_or_a_pipeline() {
        let mut files: Vec<String> = std::fs::read_dir(schemas_dir())
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".avsc").map(str::to_string)
            })
            .collect();
        files.sort();
        let mut known: Vec<String> = CONTRACTS
            .iter()
            .map(|(_, c, _)| c.to_string())
            .chain(PIPELINE_CONTRACTS.iter().map(|c| c.to_string()))
            .collect();
        known.sort();
        assert_eq!(
            files, known,
            "schemas/*.avsc and this test's mapping differ"
        );
        for stream in STREAMS {
            let contracted = CONTRACTS.iter().any(|(s, _, _)| s == stream);
            assert_ne!(contracted, UNCONTRACTED.contains(stream), "{stream}");
        }
    }

    #[test]
    fn stream_schemas_agree_with_their_avro_contracts() {
        let mut problems = Vec::new();
        for &(stream, contract, event_type) in CONTRACTS {
            let ours = schema(stream).unwrap();
            let theirs = contract_columns(contract);
            let names = |s: &SchemaRef| -> Vec<String> {
                s.fields().iter().map(|f| f.name().clone()).collect()
            };
            match event_type {
                // The stream is the contract: the same fields, in the same order.
                None => {
                    if names(&ours) != names(&theirs) {
                        problems.push(format!(
                            "{stream} vs {contract}: fields {:?} vs {:?}",
                            names(&ours),
                            names(&theirs)
                        ));
                    }
                }
                // The stream carries every event type: the contract is the fields
                // every event has (not nullable here) and this event's own, in the
                // stream's order.
                Some(_) => {
                    let expected: Vec<String> = names(&ours)
                        .into_iter()
                        .filter(|n| {
                            theirs.field_with_name(n).is_ok()
                                || !ours.field_with_name(n).unwrap().is_nullable()
                        })
                        .collect();
                    if names(&theirs) != expected {
                        problems.push(format!(
                            "{stream} vs {contract}: fields {:?}, expected {expected:?}",
                            names(&theirs)
                        ));
                    }
                }
            }
            for theirs in theirs.fields() {
                let Ok(ours) = ours.field_with_name(theirs.name()) else {
                    continue;
                };
                let name = theirs.name();
                let (a, b) = (
                    without_metadata(ours.data_type()),
                    without_metadata(theirs.data_type()),
                );
                if a != b {
                    problems.push(format!("{stream}.{name} vs {contract}: {a} vs {b}"));
                }
                // Per event type, a field the stream's other events lack is required
                // in the contract and nullable here (the records show it is there).
                let nullability_agrees = match event_type {
                    None => ours.is_nullable() == theirs.is_nullable(),
                    Some(_) => ours.is_nullable() || !theirs.is_nullable(),
                };
                if !nullability_agrees {
                    problems.push(format!(
                        "{stream}.{name} vs {contract}: nullable {} vs {}",
                        ours.is_nullable(),
                        theirs.is_nullable()
                    ));
                }
            }
        }
        assert_eq!(
            problems, KNOWN_DISAGREEMENTS,
            "the stream schemas and their contracts disagree (or a known disagreement is gone)"
        );
    }

    /// Each record has only its contract's fields, and every required one.
    #[test]
    fn records_carry_their_contracts_fields() {
        // Sparse enough in event time that orders get past `order_ready` (minutes after
        // placement) within the records read.
        let p = params(4, |s| s.rate = 10.0);
        let mut problems = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for stream in ["orders", "kitchen", "app"] {
            let contracts: Vec<(Option<&str>, SchemaRef, &str)> = CONTRACTS
                .iter()
                .filter(|(s, _, _)| *s == stream)
                .map(|&(_, c, e)| (e, contract_columns(c), c))
                .collect();
            for r in parsed(stream, &p, 20_000) {
                let event_type = r
                    .get("event_type")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let Some((_, columns, contract)) = contracts
                    .iter()
                    .find(|(e, _, _)| e.is_none_or(|e| e == event_type))
                else {
                    problems.insert(format!("{stream}: no contract for {event_type}"));
                    continue;
                };
                seen.insert(*contract);
                for key in r.keys() {
                    if columns.field_with_name(key).is_err() {
                        problems.insert(format!("{contract}: {event_type} has {key}"));
                    }
                }
                for f in columns.fields() {
                    if !f.is_nullable() && r.get(f.name()).is_none_or(Value::is_null) {
                        problems.insert(format!("{contract}: {event_type} lacks {}", f.name()));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
        let all: BTreeSet<&str> = CONTRACTS.iter().map(|(_, c, _)| *c).collect();
        assert_eq!(seen, all, "a contract no record was checked against");
    }
}
