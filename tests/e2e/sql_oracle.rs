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

/// `CHECK` constraints separate the rows that break them at the source, as bad records
/// with the check named; the windowed result equals batch SQL over the rows that pass,
/// so a rejected row's far-future event time did not advance the watermark (had it, every
/// later row would have been late and dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_constraints_divert_rows_before_they_count_toward_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "orders", "31", "4000", &["rate=0"], "gen.jsonl");
    let mut input = std::fs::read_to_string(d.join("gen.jsonl")).unwrap();
    let lines: Vec<&str> = input.lines().collect();
    // Three rule breakers in the middle of the stream: a negative total, a future
    // event, and both.
    let mid = lines.len() / 3;
    let breakers = [
        r#"{"event_id":"neg","event_type":"order_placed","event_time":"2026-01-01T00:00:05Z","order_id":1,"restaurant_id":1,"channel":"app","total":-5.0}"#,
        r#"{"event_id":"future","event_type":"order_placed","event_time":"2099-01-01T00:00:00Z","order_id":2,"restaurant_id":1,"channel":"app","total":5.0}"#,
        r#"{"event_id":"both","event_type":"order_placed","event_time":"2099-01-01T00:00:00Z","order_id":3,"restaurant_id":1,"channel":"app","total":-1.0}"#,
    ];
    input = lines[..mid]
        .iter()
        .chain(breakers.iter())
        .chain(lines[mid..].iter())
        .map(|l| format!("{l}\n"))
        .collect();
    write(&d.join("in.jsonl"), &input);
    let query = "SELECT tumble(INTERVAL '1' SECOND) AS w, restaurant_id, count(*) AS n, sum(total) AS s \
                 FROM orders GROUP BY w, restaurant_id";
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders (event_id VARCHAR NOT NULL, event_type VARCHAR, \
               event_time TIMESTAMP NOT NULL, order_id BIGINT, restaurant_id BIGINT, channel VARCHAR, \
               total DOUBLE CHECK (total >= 0), \
               CONSTRAINT not_in_the_future CHECK (event_time < TIMESTAMP '2090-01-01 00:00:00')) \
             WITH (connector = 'file', path = 'in.jsonl', format = 'json', \
                   event_time_field = 'event_time', watermark_delay = '0s');\n\
             CREATE TABLE out WITH (connector = 'file', path = 'out.jsonl');\n\
             INSERT INTO out SELECT to_unixtime(w.start) AS start, restaurant_id, n, s FROM ({query});\n"
        ),
    );
    let o = run(d, &["run", "p.sql"]);
    ok(&o);
    let explain = run(d, &["explain", "p.sql"]);
    ok(&explain);
    assert!(
        stdout(&explain).contains("CHECK not_in_the_future"),
        "{}",
        stdout(&explain)
    );

    let ctx = SessionContext::new();
    let (_, bad) = register_generated(&ctx, "raw", "orders", &[d.join("gen.jsonl")]);
    assert_eq!(bad, 0);
    let passing = batch_sql(
        &ctx,
        "SELECT count(*) AS n FROM raw WHERE (total >= 0) IS NOT FALSE",
    )
    .await;
    let negative_in_generated = 4000
        - passing[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0) as u64;
    let expected = batches_as_json(
        &batch_sql(
            &ctx,
            "SELECT to_unixtime(date_bin(INTERVAL '1' SECOND, CAST(event_time AS TIMESTAMP))) AS start, \
             restaurant_id, count(*) AS n, sum(total) AS s FROM raw \
             WHERE (total >= 0) IS NOT FALSE GROUP BY 1, 2",
        )
        .await,
    );
    let got = json_lines(&d.join("out.jsonl"));
    assert!(expected.len() > 1000, "{} windows", expected.len());
    assert_eq!(canonical(&got), canonical(&expected));

    let err = stderr(&o);
    let finished = log_event(&err, "pipeline finished").expect("finish log");
    assert_eq!(
        finished["bad_records"].as_u64(),
        Some(3 + negative_in_generated),
        "the three rule breakers (and any negative generated total) are bad records"
    );
    let first = log_event(&err, "bad record dead-lettered").expect("a bad record log");
    assert_eq!(first["reason"], "constraint");
    let detail = first["detail"].as_str().unwrap();
    assert!(
        detail.contains("table orders: CHECK (total >= 0) failed"),
        "{detail}"
    );
}

/// A `UNION ALL` of two file streams (orders of two seeds, one filtered) feeding a
/// deduplication (`ROW_NUMBER() … WHERE rn = 1`) and a windowed count, at parallelism
/// two: both equal DataFusion's batch result over the same rows, and no row is late
/// (the files' events are at most ~5.6 s out of order, the delay is 8 s): the union's
/// reader holds the least watermark of its inputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn union_all_of_two_streams_into_a_dedup_and_a_window_matches_datafusion_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    for (seed, name) in [("31", "in/a.jsonl"), ("32", "in/b.jsonl")] {
        generate(
            d,
            "orders",
            seed,
            "20000",
            &["duplicate_fraction=0.05", "out_of_order=2s"],
            name,
        );
    }
    let columns = "(event_id VARCHAR NOT NULL, event_type VARCHAR, event_time TIMESTAMP, \
                   order_id BIGINT, restaurant_id BIGINT, channel VARCHAR, total DOUBLE)";
    let union = "SELECT order_id, event_type, event_time FROM a \
                 UNION ALL SELECT order_id, event_type, event_time FROM b WHERE channel <> 'kiosk'";
    let dedup = "SELECT order_id, event_type, CAST(event_time AS VARCHAR) AS at FROM \
                 (SELECT *, ROW_NUMBER() OVER (PARTITION BY order_id, event_type ORDER BY event_time) AS rn \
                  FROM both_streams) WHERE rn = 1";
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE a {columns} WITH (connector = 'file', path = 'in/a.jsonl', format = 'json', \
               event_time_field = 'event_time', watermark_delay = '8s');\n\
             CREATE TABLE b {columns} WITH (connector = 'file', path = 'in/b.jsonl', format = 'json', \
               event_time_field = 'event_time', watermark_delay = '8s');\n\
             CREATE VIEW both_streams AS {union};\n\
             CREATE TABLE firsts WITH (connector = 'file', path = 'out/firsts/rows.jsonl');\n\
             CREATE TABLE counts WITH (connector = 'file', path = 'out/counts/rows.jsonl');\n\
             INSERT INTO firsts {dedup};\n\
             INSERT INTO counts SELECT date_part('epoch', w.start) AS start, event_type, n FROM \
               (SELECT tumble(INTERVAL '10' SECOND) AS w, event_type, count(*) AS n \
                FROM both_streams GROUP BY w, event_type);\n"
        ),
    );
    write(
        &d.join("p.yaml"),
        "name: union\nsql: p.sql\nparallelism: 2\nbatch: { size: 300 }\n",
    );
    let o = run(d, &["run", "p.yaml"]);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("late"), "{stderr}");

    let ctx = SessionContext::new();
    for (raw, file) in [("raw_a", "in/a.jsonl"), ("raw_b", "in/b.jsonl")] {
        let (_, bad) = register_generated(&ctx, raw, "orders", &[d.join(file)]);
        assert_eq!(bad, 0);
    }
    for (view, raw) in [("a", "raw_a"), ("b", "raw_b")] {
        batch_sql(
            &ctx,
            &format!(
                "CREATE VIEW {view} AS SELECT event_id, event_type, \
                 CAST(event_time AS TIMESTAMP) AS event_time, order_id, restaurant_id, channel, total FROM {raw}"
            ),
        )
        .await;
    }
    batch_sql(&ctx, &format!("CREATE VIEW both_streams AS {union}")).await;

    let firsts = json_lines_in(&d.join("out/firsts"));
    let expected = batches_as_json(&batch_sql(&ctx, dedup).await);
    assert!(expected.len() > 15_000, "{}", expected.len());
    assert_eq!(canonical(&firsts), canonical(&expected));

    let counts = json_lines_in(&d.join("out/counts"));
    let expected = batches_as_json(
        &batch_sql(
            &ctx,
            "SELECT date_part('epoch', date_bin(INTERVAL '10 seconds', event_time, TIMESTAMP '1970-01-01')) AS start, \
             event_type, count(*) AS n FROM both_streams GROUP BY 1, event_type",
        )
        .await,
    );
    assert!(expected.len() > 10, "{}", expected.len());
    assert_eq!(canonical(&counts), canonical(&expected));
}
