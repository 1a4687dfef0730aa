//! Lookup joins (enrichment of a stream with reference data) against DataFusion batch
//! over the same input, with misses: the reference file holds only the restaurants with
//! an even id, so `LEFT JOIN` keeps the other orders with NULLs and `JOIN` drops them.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;

use crate::common::*;

pub const Q_LEFT: &str = "SELECT o.event_id, o.order_id, o.restaurant_id, r.name AS restaurant, r.time_zone \
    FROM orders o LEFT JOIN restaurants r ON o.restaurant_id = r.restaurant_id \
    WHERE o.event_type = 'order_placed'";

pub const Q_INNER: &str = "SELECT o.event_id, upper(r.name) AS restaurant, o.total \
    FROM orders o JOIN restaurants r ON o.restaurant_id = r.restaurant_id AND o.total > 10";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_joins_match_datafusion_batch_with_misses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(
        d,
        "orders",
        "7",
        "4000",
        &[
            "malformed_fraction=0.01",
            "duplicate_fraction=0.02",
            "rate=0",
        ],
        "orders.jsonl",
    );
    generate(d, "restaurants", "7", "300", &[], "all.jsonl");
    let even: String = std::fs::read_to_string(d.join("all.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["restaurant_id"].as_i64().unwrap() % 2 == 0
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write(&d.join("ref/restaurants.jsonl"), &even);

    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '7', count = '4000', \
             rate = '0', malformed_fraction = '0.01', duplicate_fraction = '0.02');\n\
             CREATE TABLE restaurants (restaurant_id BIGINT, name VARCHAR, time_zone VARCHAR) \
             WITH (connector = 'file', path = 'ref/restaurants.jsonl', format = 'json', lookup = 'true');\n\
             CREATE TABLE left_out WITH (connector = 'file', path = 'left/rows.jsonl');\n\
             CREATE TABLE inner_out WITH (connector = 'file', path = 'inner/rows.jsonl');\n\
             INSERT INTO left_out {Q_LEFT};\n\
             INSERT INTO inner_out {Q_INNER};\n"
        ),
    );
    write(
        &d.join("p.yaml"),
        "name: enrich\nsql: p.sql\nparallelism: 2\nbatch: { size: 256 }\n",
    );
    let o = run(d, &["run", "p.yaml"]);
    ok(&o);

    let schema = tributary::connectors::generator::stream_schema("restaurant", "orders").unwrap();
    let (orders, _) = good_rows(
        &std::fs::read_to_string(d.join("orders.jsonl")).unwrap(),
        &schema,
    );
    let ref_schema = Arc::new(Schema::new(vec![
        Field::new("restaurant_id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("time_zone", DataType::Utf8, true),
    ]));
    let (restaurants, bad) = good_rows(&even, &ref_schema);
    assert_eq!(bad, 0);
    let ctx = SessionContext::new();
    ctx.register_table(
        "orders",
        Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![orders]).unwrap()),
    )
    .unwrap();
    ctx.register_table(
        "restaurants",
        Arc::new(datafusion::datasource::MemTable::try_new(ref_schema, vec![restaurants]).unwrap()),
    )
    .unwrap();

    assert_joins_match_batch(&ctx, d).await;

    let loaded = log_event(&stderr(&o), "lookup table loaded").expect("load logged");
    assert_eq!(loaded["rows"].as_u64(), Some(even.lines().count() as u64));
}

#[test]
fn joins_that_cannot_run_on_a_stream_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tables = "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n\
                  CREATE TABLE kitchen WITH (connector = 'generator', stream = 'kitchen');\n\
                  CREATE TABLE restaurants WITH (connector = 'generator', stream = 'restaurants', lookup = 'true');\n\
                  CREATE TABLE out WITH (connector = 'stdout');\n";
    for (file, query, expected) in [
        (
            "streams.sql",
            "SELECT o.order_id FROM orders o JOIN kitchen k ON o.order_id = k.order_id",
            "declare that table with lookup = 'true'",
        ),
        (
            "right.sql",
            "SELECT o.order_id FROM orders o RIGHT JOIN restaurants r ON o.restaurant_id = r.restaurant_id",
            "use JOIN or LEFT JOIN with the stream on the left",
        ),
    ] {
        write(
            &d.join(file),
            &format!("{tables}INSERT INTO out {query};\n"),
        );
        let o = run(d, &["check", file]);
        assert_eq!(o.status.code(), Some(2), "{file}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&format!("{file}:5:1")) && e.contains(expected),
            "{file}: {e}"
        );
    }
    write(
        &d.join("unbounded.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n\
         CREATE TABLE more WITH (connector = 'generator', stream = 'orders', lookup = 'true');\n\
         CREATE TABLE out WITH (connector = 'stdout');\n\
         INSERT INTO out SELECT o.order_id FROM orders o JOIN more m ON o.order_id = m.order_id;\n",
    );
    let o = run(d, &["check", "unbounded.sql"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unbounded.sql:2:14")
            && stderr(&o).contains("must be a bounded source"),
        "{}",
        stderr(&o)
    );
}

/// The outputs of `Q_LEFT` (in `d/left`) and `Q_INNER` (in `d/inner`) equal DataFusion
/// batch over `ctx` (tables `orders` and `restaurants`), with misses on both sides.
pub async fn assert_joins_match_batch(ctx: &SessionContext, d: &std::path::Path) {
    let expected = batches_as_json(&batch_sql(ctx, Q_LEFT).await);
    let misses = expected
        .iter()
        .filter(|r| r["restaurant"].is_null())
        .count();
    assert!(
        misses > 100 && misses < expected.len() - 100,
        "{misses} misses of {}",
        expected.len()
    );
    assert_eq!(
        canonical(&json_lines_in(&d.join("left"))),
        canonical(&expected)
    );

    let expected = batches_as_json(&batch_sql(ctx, Q_INNER).await);
    assert!(expected.len() > 500, "{}", expected.len());
    assert_eq!(
        canonical(&json_lines_in(&d.join("inner"))),
        canonical(&expected)
    );
}
