//! SQL stages against an independent oracle: the same query, run by DataFusion in batch
//! mode over the same finite input (the `generate` output, decoded line by line with
//! arrow-json), must give the same multiset of rows — including duplicates and
//! out-of-order events, with malformed records dropped and counted.

use std::sync::Arc;

use datafusion::prelude::SessionContext;

use crate::common::*;

const GEN: &str = "stream = 'orders', seed = '11', count = '20000', rate = '0', \
                   out_of_order = '5s', duplicate_fraction = '0.02', malformed_fraction = '0.01'";

const Q_STATUS: &str = "SELECT order_id, upper(channel) AS channel, \
    CASE WHEN event_type IN ('order_picked_up', 'order_delivered') THEN 'done' \
         WHEN event_type = 'order_cancelled' THEN 'cancelled' ELSE 'open' END AS state, \
    CAST(total AS BIGINT) AS whole_total, round(total * 1.08, 2) AS with_tax, \
    date_part('hour', event_time) AS hour, coalesce(cancel_reason, '-') AS reason, event_id \
    FROM orders WHERE restaurant_id % 3 <> 0";

const Q_ITEMS: &str = "SELECT order_id, item['name'] AS name, \
    item['quantity'] * item['unit_price'] AS line_total, CAST(item['quantity'] AS VARCHAR) AS qty \
    FROM (SELECT order_id, unnest(items) AS item FROM orders WHERE event_type = 'order_placed')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_sql_stages_match_datafusion_batch_over_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(
        d,
        "orders",
        "11",
        "20000",
        &[
            "out_of_order=5s",
            "duplicate_fraction=0.02",
            "malformed_fraction=0.01",
            "rate=0",
        ],
        "input.jsonl",
    );
    let sql = format!(
        "CREATE TABLE orders WITH (connector = 'generator', {GEN});\n\
         CREATE TABLE status_out WITH (connector = 'file', path = 'status.jsonl');\n\
         CREATE TABLE items_out WITH (connector = 'file', path = 'items.jsonl');\n\
         INSERT INTO status_out {Q_STATUS};\n\
         INSERT INTO items_out {Q_ITEMS};\n"
    );
    write(&d.join("p.sql"), &sql);
    let o = run(d, &["run", "p.sql"]);
    ok(&o);

    let schema = tributary::connectors::generator::stream_schema("restaurant", "orders").unwrap();
    let input = std::fs::read_to_string(d.join("input.jsonl")).unwrap();
    let (batches, bad) = good_rows(&input, &schema);
    assert!(
        bad > 50,
        "the input should hold malformed records, found {bad}"
    );
    let ctx = SessionContext::new();
    let table = datafusion::datasource::MemTable::try_new(schema.clone(), vec![batches]).unwrap();
    ctx.register_table("orders", Arc::new(table)).unwrap();

    let expected_status = batches_as_json(&batch_sql(&ctx, Q_STATUS).await);
    let got_status = json_lines(&d.join("status.jsonl"));
    assert!(expected_status.len() > 10_000);
    assert_eq!(canonical(&got_status), canonical(&expected_status));

    let expected_items = batches_as_json(&batch_sql(&ctx, Q_ITEMS).await);
    let got_items = json_lines(&d.join("items.jsonl"));
    assert!(!expected_items.is_empty());
    assert_eq!(canonical(&got_items), canonical(&expected_items));

    let finished = log_event(&stderr(&o), "pipeline finished").expect("finish log");
    assert_eq!(
        finished["bad_records"].as_u64(),
        Some(bad),
        "bad records counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_at_parallelism_two_matches_datafusion_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    for (seed, name) in [("21", "in/a.jsonl"), ("22", "in/b.jsonl")] {
        generate(
            d,
            "orders",
            seed,
            "5000",
            &["duplicate_fraction=0.05"],
            name,
        );
    }
    let query = "SELECT event_id, order_id, lower(event_type) AS t, \
                 CAST(event_time AS VARCHAR) AS at, total / 2 AS half \
                 FROM orders WHERE channel <> 'kiosk' AND (total IS NULL OR total > 5)";
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders (event_id VARCHAR NOT NULL, event_type VARCHAR, event_time TIMESTAMP, \
             order_id BIGINT, restaurant_id BIGINT, channel VARCHAR, total DOUBLE) \
             WITH (connector = 'file', path = 'in', format = 'json');\n\
             CREATE TABLE out WITH (connector = 'file', path = 'out/rows.jsonl');\n\
             INSERT INTO out {query};\n"
        ),
    );
    write(
        &d.join("p.yaml"),
        "name: files\nsql: p.sql\nparallelism: 2\nbatch: { size: 500 }\n",
    );
    let o = run(d, &["run", "p.yaml"]);
    ok(&o);

    let got = json_lines_in(&d.join("out"));

    let ctx = SessionContext::new();
    let (_, bad) = register_generated(
        &ctx,
        "raw",
        "orders",
        &[d.join("in/a.jsonl"), d.join("in/b.jsonl")],
    );
    assert_eq!(bad, 0);
    // The pipeline declared event_time TIMESTAMP: the same cast here.
    batch_sql(
        &ctx,
        "CREATE VIEW orders AS SELECT event_id, event_type, \
         CAST(event_time AS TIMESTAMP) AS event_time, order_id, restaurant_id, channel, total FROM raw",
    )
    .await;
    let expected = batches_as_json(&batch_sql(&ctx, query).await);
    assert!(expected.len() > 5_000);
    assert_eq!(canonical(&got), canonical(&expected));
}
