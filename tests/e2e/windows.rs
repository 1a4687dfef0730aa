//! Windowed aggregation against an independent oracle.
//!
//! The pipeline reads the generator's orders (out of order by up to 5 s, some events
//! late beyond that, duplicates, malformed records) with a watermark 2 s behind the
//! newest event, so some rows are late. The oracle is computed apart from the engine:
//! - the lateness rule, in plain Rust over the `generate` output in its order: with one
//!   source task and batches of one row, the watermark a row meets is the newest event
//!   time before it minus the delay, and a row is dropped from a window that has ended
//!   by then;
//! - the aggregates, by DataFusion batch SQL over (row, window start) pairs that the
//!   test enumerates itself (no `tumble`/`hop` involved).

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;

use crate::common::*;

const DELAY_MS: i64 = 2_000;
const TUMBLE_MS: i64 = 5_000;
const HOP_SLIDE_MS: i64 = 2_000;
const HOP_WIDTH_MS: i64 = 6_000;

const GEN_OPTS: &[&str] = &[
    "out_of_order=5s",
    "late_fraction=0.02",
    "duplicate_fraction=0.02",
    "malformed_fraction=0.01",
    "rate=0",
];

const PIPELINE_SQL: &str = "
CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '5', count = '6000',
    rate = '0', out_of_order = '5s', late_fraction = '0.02', duplicate_fraction = '0.02',
    malformed_fraction = '0.01', event_time_field = 'event_time', watermark_delay = '2s');
CREATE TABLE per_restaurant WITH (connector = 'file', path = 'out/per_restaurant.jsonl');
CREATE TABLE per_channel WITH (connector = 'file', path = 'out/per_channel.jsonl');

INSERT INTO per_restaurant
SELECT w['start'] AS window_start, w['end'] AS window_end, restaurant_id, events, revenue,
       low, high, customers, mean
FROM (
  SELECT tumble(INTERVAL '5' SECOND) AS w, restaurant_id, count(*) AS events,
         round(sum(total), 2) AS revenue, min(total) AS low, max(total) AS high,
         count(DISTINCT customer_id) AS customers, round(avg(total), 6) AS mean
  FROM orders
  GROUP BY w, restaurant_id
);

INSERT INTO per_channel
SELECT w.start AS window_start, channel, n
FROM (
  SELECT hop(INTERVAL '2' SECOND, INTERVAL '6' SECOND) AS w, channel, count(*) AS n
  FROM orders
  WHERE event_type = 'order_placed'
  GROUP BY w, channel
  HAVING count(*) > 1
);
";

/// Window starts holding `ts`.
fn starts(ts: i64, slide: i64, width: i64) -> Vec<i64> {
    let mut s = ts - ts.rem_euclid(slide);
    let mut out = vec![];
    while s > ts - width {
        out.push(s);
        s -= slide;
    }
    out
}

/// The generator's good rows, in order, with the (row, window start) pairs that are
/// on time for windows of `slide`/`width`: a table `pairs(row, w_start)`.
fn on_time_pairs(times: &[Option<i64>], slide: i64, width: i64) -> (RecordBatch, u64) {
    let mut rows = vec![];
    let mut w_starts = vec![];
    let mut newest: Option<i64> = None;
    let mut late = 0;
    for (row, t) in times.iter().enumerate() {
        let Some(t) = *t else { continue };
        let watermark = newest.map_or(i64::MIN, |n| n - DELAY_MS);
        let mut placed = false;
        for s in starts(t, slide, width) {
            if s + width > watermark {
                rows.push(row as i64);
                w_starts.push(s);
                placed = true;
            }
        }
        if !placed {
            late += 1;
        }
        newest = Some(newest.map_or(t, |n| n.max(t)));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("row", DataType::Int64, false),
        Field::new("w_start", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(rows)),
            Arc::new(Int64Array::from(w_starts)),
        ],
    )
    .unwrap();
    (batch, late)
}

/// RFC 3339 window bounds from the sink, as milliseconds since the epoch.
fn to_ms(v: &serde_json::Value) -> serde_json::Value {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a timestamp string, got {v}"));
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("not RFC 3339: {s}: {e}"));
    serde_json::Value::from(t.timestamp_millis())
}

fn with_ms(mut rows: Vec<serde_json::Value>, fields: &[&str]) -> Vec<serde_json::Value> {
    for r in rows.iter_mut() {
        for f in fields {
            let v = to_ms(&r[*f]);
            r[*f] = v;
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumble_and_hop_aggregates_match_datafusion_batch_with_late_rows_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "orders", "5", "6000", GEN_OPTS, "input.jsonl");
    write(&d.join("p.sql"), PIPELINE_SQL);
    // One row per batch: the watermark a row meets is then exactly the one the oracle
    // computes (the newest event time before it, minus the delay).
    write(
        &d.join("p.yaml"),
        "name: windows\nsql: p.sql\nbatch: { size: 1 }\n",
    );
    let o = run(d, &["run", "p.yaml"]);
    ok(&o);

    // The good rows, in the order the generator produced them.
    let schema = tributary::connectors::generator::stream_schema("restaurant", "orders").unwrap();
    let (batches, _) = good_rows(
        &std::fs::read_to_string(d.join("input.jsonl")).unwrap(),
        &schema,
    );
    let orders = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let times = tributary::engine::event_times_ms(
        orders
            .column(orders.schema().index_of("event_time").unwrap())
            .as_ref(),
    )
    .unwrap();
    let times: Vec<Option<i64>> = times.iter().collect();

    // Row numbers for the join with the pairs.
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("row", DataType::Int64, false));
    let mut cols = orders.columns().to_vec();
    cols.push(Arc::new(Int64Array::from_iter_values(
        0..orders.num_rows() as i64,
    )));
    let numbered = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();

    let ctx = SessionContext::new();
    ctx.register_batch("orders", numbered).unwrap();
    let (tumble_pairs, tumble_late) = on_time_pairs(&times, TUMBLE_MS, TUMBLE_MS);
    let (hop_pairs, _) = on_time_pairs(&times, HOP_SLIDE_MS, HOP_WIDTH_MS);
    ctx.register_batch("tumble_pairs", tumble_pairs).unwrap();
    ctx.register_batch("hop_pairs", hop_pairs).unwrap();
    assert!(
        tumble_late > 10,
        "the input should hold late rows, found {tumble_late}"
    );

    let expected = batches_as_json(
        &batch_sql(
            &ctx,
            &format!(
                "SELECT p.w_start AS window_start, p.w_start + {TUMBLE_MS} AS window_end, restaurant_id,
                        count(*) AS events, round(sum(total), 2) AS revenue, min(total) AS low,
                        max(total) AS high, count(DISTINCT customer_id) AS customers,
                        round(avg(total), 6) AS mean
                 FROM orders o JOIN tumble_pairs p ON o.row = p.row
                 GROUP BY p.w_start, restaurant_id"
            ),
        )
        .await,
    );
    let got = with_ms(
        json_lines(&d.join("out/per_restaurant.jsonl")),
        &["window_start", "window_end"],
    );
    assert!(expected.len() > 100, "{} tumble rows", expected.len());
    assert_eq!(canonical(&got), canonical(&expected));

    let expected = batches_as_json(
        &batch_sql(
            &ctx,
            "SELECT p.w_start AS window_start, channel, count(*) AS n
             FROM orders o JOIN hop_pairs p ON o.row = p.row
             WHERE event_type = 'order_placed'
             GROUP BY p.w_start, channel HAVING count(*) > 1",
        )
        .await,
    );
    let got = with_ms(
        json_lines(&d.join("out/per_channel.jsonl")),
        &["window_start"],
    );
    assert!(expected.len() > 20, "{} hop rows", expected.len());
    assert_eq!(canonical(&got), canonical(&expected));
}

#[test]
fn window_without_event_time_and_a_changelog_into_parquet_are_refused_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("a.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n\
         CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
         INSERT INTO out\n\
         SELECT restaurant_id, count(*) FROM orders GROUP BY restaurant_id;\n",
    );
    // A GROUP BY without a window is a changelog: an append-only sink refuses it.
    let o = run(d, &["check", "a.sql"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("a.sql:3:1"), "{e}");
    assert!(e.contains("only appends"), "{e}");
    assert!(e.contains("GROUP BY tumble(INTERVAL '1' MINUTE)"), "{e}");

    write(
        &d.join("b.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n\
         CREATE TABLE out WITH (connector = 'stdout');\n\
         INSERT INTO out\n\
         SELECT tumble(INTERVAL '1' MINUTE) AS w, count(*) FROM orders GROUP BY w;\n",
    );
    let o = run(d, &["check", "b.sql"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("b.sql:4:8") && e.contains("event_time_field"),
        "{e}"
    );
}

#[test]
fn explain_shows_the_window_operator_routed_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("w.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', \
         event_time_field = 'event_time', watermark_delay = '5s');\n\
         CREATE TABLE out WITH (connector = 'stdout');\n\
         INSERT INTO out SELECT tumble(INTERVAL '10' SECOND) AS w, restaurant_id, count(*) AS n \
         FROM orders GROUP BY w, restaurant_id;\n",
    );
    write(&d.join("w.yaml"), "name: w\nsql: w.sql\nparallelism: 2\n");
    let o = run(d, &["explain", "w.yaml"]);
    ok(&o);
    let out = stdout(&o);
    assert!(out.contains("event time: event_time"), "{out}");
    assert!(
        out.contains("out_select_window [parallelism 2]: window aggregate (tumble 10000 ms"),
        "{out}"
    );
    assert!(out.contains("<- out_select_pre (hash["), "{out}");
}

/// Results per window with a watermark that only moves by the end of input: a bounded
/// pipeline with every event in one window still emits it before finishing.
#[test]
fn bounded_input_flushes_open_windows_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("in.jsonl"),
        "{\"k\": \"a\", \"ts\": \"2026-01-01T00:00:01Z\"}\n\
         {\"k\": \"b\", \"ts\": \"2026-01-01T00:00:02Z\"}\n\
         {\"k\": \"a\", \"ts\": 1767225603000}\n",
    );
    write(
        &d.join("p.sql"),
        "CREATE TABLE ev (k VARCHAR, ts TIMESTAMP) WITH (connector = 'file', path = 'in.jsonl', \
         format = 'json', event_time_field = 'ts', watermark_delay = '1h');\n\
         CREATE TABLE out WITH (connector = 'file', path = 'out.jsonl');\n\
         INSERT INTO out SELECT k, n, CAST(w['start'] AS VARCHAR) AS s \
         FROM (SELECT tumble(INTERVAL '1' HOUR) AS w, k, count(*) AS n FROM ev GROUP BY w, k);\n",
    );
    ok(&run(d, &["run", "p.sql"]));
    let rows = canonical(&json_lines(&d.join("out.jsonl")));
    assert_eq!(
        rows,
        vec![
            r#"{"k":"a","n":2,"s":"2026-01-01T00:00:00Z"}"#.to_string(),
            r#"{"k":"b","n":1,"s":"2026-01-01T00:00:00Z"}"#.to_string(),
        ]
    );
}

/// Deduplication of the generator's re-sent events with ROW_NUMBER, at parallelism 2
/// (two files, rows routed by event id): the same query in DataFusion batch over the
/// same events gives the same rows, so every event id appears once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_number_deduplicates_like_datafusion_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    for (seed, file) in [("9", "in/a.jsonl"), ("10", "in/b.jsonl")] {
        generate(
            d,
            "orders",
            seed,
            "3000",
            &["duplicate_fraction=0.05", "out_of_order=5s", "rate=0"],
            file,
        );
    }
    let query = "SELECT event_id, order_id, event_type, rn FROM \
                 (SELECT event_id, order_id, event_type, \
                  ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY event_time) AS rn FROM orders) \
                 WHERE rn = 1";
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders (event_id VARCHAR, event_type VARCHAR, event_time TIMESTAMP, order_id BIGINT) \
             WITH (connector = 'file', path = 'in', format = 'json', \
             event_time_field = 'event_time', watermark_delay = '1h');\n\
             CREATE TABLE unique_orders WITH (connector = 'file', path = 'out/rows.jsonl');\n\
             INSERT INTO unique_orders {query};\n"
        ),
    );
    write(
        &d.join("p.yaml"),
        "name: dedup\nsql: p.sql\nparallelism: 2\nbatch: { size: 100 }\nstate: { ttl: 10m }\n",
    );
    ok(&run(d, &["run", "p.yaml"]));

    let ctx = SessionContext::new();
    let (input_rows, _) = register_generated(
        &ctx,
        "orders",
        "orders",
        &[d.join("in/a.jsonl"), d.join("in/b.jsonl")],
    );
    let expected = batches_as_json(&batch_sql(&ctx, query).await);
    let got = json_lines_in(&d.join("out"));
    assert!(
        expected.len() + 100 < input_rows,
        "{} of {input_rows}: duplicates expected",
        expected.len()
    );
    assert_eq!(canonical(&got), canonical(&expected));
}

/// The interval join of the reference `order_prep_times` pipeline, over files of the
/// generator's orders and kitchen tickets (out of order by up to 3 s, duplicates
/// redelivered up to 5 s after that, all within the 10 s watermark delay, so nothing is
/// late), at parallelism 2 with its state dropped as the watermark passes:
/// the joined rows equal DataFusion batch's join of the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_join_matches_datafusion_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let opts = &["out_of_order=3s", "duplicate_fraction=0.01", "rate=0"];
    std::fs::create_dir_all(d.join("in/orders")).unwrap();
    std::fs::create_dir_all(d.join("in/kitchen")).unwrap();
    generate(d, "orders", "21", "4000", opts, "in/orders/a.jsonl");
    generate(d, "kitchen", "21", "4000", opts, "in/kitchen/a.jsonl");
    let query = "SELECT o.order_id, o.channel, k.station, k.ticket_id, o.event_time AS placed_at, \
                 k.event_time AS done_at \
                 FROM orders o JOIN kitchen k ON k.order_id = o.order_id \
                 AND k.event_time BETWEEN o.event_time AND o.event_time + INTERVAL '10' MINUTE \
                 WHERE o.event_type = 'order_placed'";
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders (event_id VARCHAR, event_type VARCHAR, event_time TIMESTAMP, order_id BIGINT, \
             channel VARCHAR) WITH (connector = 'file', path = 'in/orders', format = 'json', \
             event_time_field = 'event_time', watermark_delay = '10s');\n\
             CREATE TABLE kitchen (ticket_id VARCHAR, event_time TIMESTAMP, order_id BIGINT, station VARCHAR) \
             WITH (connector = 'file', path = 'in/kitchen', format = 'json', \
             event_time_field = 'event_time', watermark_delay = '10s');\n\
             CREATE TABLE joined WITH (connector = 'file', path = 'out/rows.jsonl');\n\
             INSERT INTO joined {query};\n"
        ),
    );
    write(
        &d.join("p.yaml"),
        "name: prep\nsql: p.sql\nparallelism: 2\nbatch: { size: 50 }\n",
    );
    ok(&run(d, &["run", "p.yaml"]));

    let ctx = SessionContext::new();
    for stream in ["orders", "kitchen"] {
        register_generated(
            &ctx,
            stream,
            stream,
            &[d.join(format!("in/{stream}/a.jsonl"))],
        );
    }
    let times = ["placed_at", "done_at"];
    let expected = canonical(&with_ms(
        batches_as_json(&batch_sql(&ctx, query).await),
        &times,
    ));
    let got = canonical(&with_ms(json_lines_in(&d.join("out")), &times));
    assert!(expected.len() > 1000, "{} joined rows", expected.len());
    let missing: Vec<&String> = expected
        .iter()
        .filter(|r| !got.contains(r))
        .take(3)
        .collect();
    let extra: Vec<&String> = got
        .iter()
        .filter(|r| !expected.contains(r))
        .take(3)
        .collect();
    assert!(
        got == expected,
        "{} rows, {} expected; missing e.g. {missing:?}; extra e.g. {extra:?}",
        got.len(),
        expected.len()
    );
}

/// A GROUP BY without a window over the generator's orders, written to a JSON file:
/// each change is a row with its `_op`, and applying the changelog in order gives
/// DataFusion batch's GROUP BY over the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwindowed_group_by_writes_a_changelog_equal_to_batch_when_applied() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    generate(d, "orders", "8", "3000", &["rate=0"], "in/orders.jsonl");
    let query = "SELECT channel, count(*) AS orders, count(DISTINCT customer_id) AS customers \
                 FROM orders WHERE event_type = 'order_placed' GROUP BY channel";
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders (event_type VARCHAR, customer_id BIGINT, channel VARCHAR) \
             WITH (connector = 'file', path = 'in', format = 'json');\n\
             CREATE TABLE per_channel WITH (connector = 'file', path = 'out/changes.jsonl');\n\
             INSERT INTO per_channel {query};\n"
        ),
    );
    write(
        &d.join("p.yaml"),
        "name: per_channel\nsql: p.sql\nparallelism: 2\nbatch: { size: 100 }\n",
    );
    ok(&run(d, &["run", "p.yaml"]));
    // Apply the changes in file order (each channel's changes are in one file).
    let mut state: std::collections::BTreeMap<String, i64> = Default::default();
    let mut ops = std::collections::BTreeSet::new();
    for mut row in json_lines_in(&d.join("out")) {
        let op = row["_op"].as_str().unwrap().to_string();
        row.as_object_mut().unwrap().remove("_op");
        let n = state.entry(row.to_string()).or_default();
        *n += if op.starts_with('+') { 1 } else { -1 };
        assert!(*n >= 0, "retracted {row} before inserting it");
        ops.insert(op);
    }
    let applied: Vec<serde_json::Value> = state
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, _)| serde_json::from_str(&r).unwrap())
        .collect();
    assert!(ops.contains("-U") && ops.contains("+U"), "{ops:?}");

    let ctx = SessionContext::new();
    register_generated(&ctx, "orders", "orders", &[d.join("in/orders.jsonl")]);
    let expected = batches_as_json(&batch_sql(&ctx, query).await);
    assert_eq!(canonical(&applied), canonical(&expected));
}
