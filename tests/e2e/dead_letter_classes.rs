//! Dead letters of a running pipeline on the embedded default: every failure class a
//! pipeline meets is in the local store once, with its metadata, while the good
//! records give the answer an independent computation gives over them; and with
//! checkpoints, an abort in every phase of a checkpoint leaves each bad record in the
//! queue exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tributary::connectors::dead_letters::local::LocalStore;
use tributary::connectors::dead_letters::{DeadLetterStore, Filter, Page};
use tributary::dlq::{BadRecordReason, DeadLetter, PayloadFormat};

use crate::common::*;

/// Every dead letter of the store at `d/data/dlq.sqlite`.
async fn letters(d: &Path) -> Vec<DeadLetter> {
    let store = LocalStore::open(d.join("data/dlq.sqlite")).unwrap();
    store
        .list(
            &Filter::default(),
            Page {
                offset: 0,
                limit: 1_000_000,
                after: None,
            },
        )
        .await
        .unwrap()
}

fn count_by_class(letters: &[DeadLetter]) -> BTreeMap<&'static str, usize> {
    let mut by = BTreeMap::new();
    for l in letters {
        *by.entry(l.failure_class.as_str()).or_insert(0) += 1;
    }
    by
}

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn line(order_id: i64, total: f64, at_ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(at_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(r#"{{"order_id":{order_id},"total":{total},"event_time":"{t}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_class_is_dead_lettered_once_with_its_metadata_and_good_rows_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 200 good orders one second apart; among them, by line number: broken JSON,
    // a string order id, negative totals (CHECK), and two orders far behind the
    // watermark (late for the window aggregate).
    let mut lines: Vec<String> = (1..=200)
        .map(|i| line(i, i as f64 * 1.5, T0 + i * 1000))
        .collect();
    let malformed = [10usize, 20, 30, 40, 50];
    for &at in &malformed {
        lines.insert(at, r#"{"order_id": 7, "tot"#.to_string());
    }
    let mismatched = [60usize, 70, 80, 90];
    for &at in &mismatched {
        lines.insert(
            at,
            r#"{"order_id":"x","total":1.0,"event_time":"2026-01-01T00:00:01Z"}"#.into(),
        );
    }
    for k in 0..3 {
        lines.insert(100 + k, line(900 + k as i64, -1.0, T0 + 100_000));
    }
    for k in 0..2 {
        lines.insert(150 + k, line(1001 + k as i64, 2.0, T0));
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    write(&d.join("in.jsonl"), &text);
    write(
        &d.join("p.sql"),
        "CREATE TABLE orders (order_id BIGINT, total DOUBLE, event_time TIMESTAMP, \
           CONSTRAINT non_negative CHECK (total >= 0)) \
         WITH (connector = 'file', path = 'in.jsonl', format = 'json', \
               event_time_field = 'event_time', watermark_delay = '0s');\n\
         CREATE TABLE quotients WITH (connector = 'file', path = 'quotients.jsonl');\n\
         CREATE TABLE per_10s WITH (connector = 'file', path = 'per_10s.jsonl');\n\
         INSERT INTO quotients SELECT order_id, 100 / (order_id % 50) AS q FROM orders;\n\
         INSERT INTO per_10s SELECT to_unixtime(w.start) AS start, n FROM \
           (SELECT tumble(INTERVAL '10' SECOND) AS w, count(*) AS n FROM orders GROUP BY w);\n",
    );
    // Small batches, so that the watermark moves while the file is read.
    let o = run(d, &["run", "--set", "pipeline.batch_size=16", "p.sql"]);
    ok(&o);

    let got = letters(d).await;
    let by = count_by_class(&got);
    let expected: BTreeMap<&str, usize> = [
        ("malformed", 5),
        ("schema_mismatch", 4),
        ("constraint", 3),
        // order ids 50, 100, 150, 200: division by zero.
        ("processing", 4),
        ("late", 2),
    ]
    .into();
    assert_eq!(by, expected, "dead letters by class: {got:#?}");

    // Bytes as read, with the file and line they came from.
    let path = d.join("in.jsonl").display().to_string();
    let mut malformed_lines: Vec<i64> = got
        .iter()
        .filter(|l| l.failure_class == BadRecordReason::Malformed)
        .map(|l| {
            assert_eq!(l.payload, br#"{"order_id": 7, "tot"#.to_vec());
            assert_eq!(l.payload_format, PayloadFormat::Bytes);
            assert_eq!(l.source.file.as_deref(), Some(path.as_str()));
            assert_eq!(l.source.table.as_deref(), Some("orders"), "replayable");
            l.source.line.unwrap()
        })
        .collect();
    malformed_lines.sort();
    assert_eq!(
        malformed_lines,
        vec![11, 21, 31, 41, 51],
        "1-based line numbers"
    );
    for l in got
        .iter()
        .filter(|l| l.failure_class == BadRecordReason::Constraint)
    {
        assert!(
            l.message.contains("non_negative"),
            "names the check: {}",
            l.message
        );
        assert_eq!(l.payload_format, PayloadFormat::Row);
        let row: serde_json::Value = serde_json::from_slice(&l.payload).unwrap();
        assert_eq!(row["total"], -1.0);
        assert_eq!(l.source.table.as_deref(), Some("orders"));
    }
    let mut failed_ids: Vec<i64> = got
        .iter()
        .filter(|l| l.failure_class == BadRecordReason::Processing)
        .map(|l| {
            assert!(
                l.message.to_lowercase().contains("divide by zero"),
                "{}",
                l.message
            );
            assert_eq!(l.node, "quotients_select");
            let row: serde_json::Value = serde_json::from_slice(&l.payload).unwrap();
            row["order_id"].as_i64().unwrap()
        })
        .collect();
    failed_ids.sort();
    assert_eq!(failed_ids, vec![50, 100, 150, 200]);
    for l in got
        .iter()
        .filter(|l| l.failure_class == BadRecordReason::Late)
    {
        assert!(
            l.message.contains("window") && l.message.contains("watermark"),
            "{}",
            l.message
        );
        assert_eq!(l.event_time, Some(T0));
        assert_eq!(
            l.source.table, None,
            "an operator's row is not a record of the table"
        );
    }
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "ids are unique");

    // The good rows: every order that decodes and keeps its check, but those whose
    // quotient fails; the late ones are on time for a per-row query.
    let mut quotients: Vec<(i64, i64)> = json_lines(&d.join("quotients.jsonl"))
        .iter()
        .map(|r| (r["order_id"].as_i64().unwrap(), r["q"].as_i64().unwrap()))
        .collect();
    quotients.sort();
    let mut expected_q: Vec<(i64, i64)> = (1..=200)
        .chain([1001, 1002])
        .filter(|i| i % 50 != 0)
        .map(|i| (i, 100 / (i % 50)))
        .collect();
    expected_q.sort();
    assert_eq!(quotients, expected_q);
    // Windows of 10 s over orders 1..=200 at T0 + i s: the late ones are not counted.
    let counted: i64 = json_lines(&d.join("per_10s.jsonl"))
        .iter()
        .map(|r| r["n"].as_i64().unwrap())
        .sum();
    assert_eq!(counted, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_in_every_checkpoint_phase_leaves_each_bad_record_in_the_queue_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Generated orders with 5% malformed records; a CHECK some of them break; a
    // quotient that fails for some: bad records of three classes while input arrives.
    write(
        &d.join("p.sql"),
        "CREATE TABLE orders (event_id VARCHAR NOT NULL, order_id BIGINT, total DOUBLE, \
           event_time TIMESTAMP, CONSTRAINT small CHECK (total < 20)) \
         WITH (connector = 'generator', stream = 'orders', seed = '7', count = '30000', \
               rate = '5000', malformed_fraction = '0.05');\n\
         CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
         INSERT INTO out SELECT event_id, 100 / (order_id % 7) AS q FROM orders;\n",
    );
    write(
        &d.join("p.yaml"),
        "name: phases\nsql: p.sql\ncheckpoint: { interval: 100ms, dir: checkpoints }\n\
         delivery: exactly-once\n",
    );
    abort_in_every_checkpoint_phase_then_resume(d);

    // The oracle: the same records, decoded one by one.
    generate(
        d,
        "orders",
        "7",
        "30000",
        &["rate=5000", "malformed_fraction=0.05"],
        "orders.jsonl",
    );
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("event_id", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("order_id", arrow::datatypes::DataType::Int64, true),
        arrow::datatypes::Field::new("total", arrow::datatypes::DataType::Float64, true),
        arrow::datatypes::Field::new(
            "event_time",
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
            true,
        ),
    ]));
    let mut refused = tributary::dlq::BadRecords::collecting("oracle");
    let text = std::fs::read_to_string(d.join("orders.jsonl")).unwrap();
    let (mut big, mut zero) = (0usize, 0usize);
    let mut good_events = std::collections::BTreeSet::new();
    for l in text.lines() {
        // One record at a time: a refusal found when the rows are assembled counts too.
        let mut decoder = tributary::formats::json::JsonDecoder::new(schema.clone()).unwrap();
        decoder.push(l.as_bytes(), &mut refused);
        let decoded = decoder.flush().unwrap().is_some_and(|b| b.num_rows() == 1);
        decoder.report_late(&mut refused);
        if decoded {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["total"].as_f64().is_some_and(|t| t >= 20.0) {
                big += 1;
            } else if v["order_id"].as_i64().is_some_and(|o| o % 7 == 0) {
                zero += 1;
            } else {
                good_events.insert(v["event_id"].as_str().unwrap().to_string());
            }
        }
    }
    let undecodable = refused.take_letters();
    assert!(
        undecodable.len() > 500 && big > 100 && zero > 100,
        "not vacuous: {} undecodable, {big} over the check, {zero} failing",
        undecodable.len()
    );

    let got = letters(d).await;
    let mut payloads: Vec<(&str, Vec<u8>)> = got
        .iter()
        .filter(|l| l.payload_format == PayloadFormat::Bytes)
        .map(|l| (l.failure_class.as_str(), l.payload.clone()))
        .collect();
    payloads.sort();
    let mut expected: Vec<(&str, Vec<u8>)> = undecodable
        .iter()
        .map(|l| (l.failure_class.as_str(), l.payload.clone()))
        .collect();
    expected.sort();
    assert_eq!(
        payloads.len(),
        expected.len(),
        "undecodable records in the queue"
    );
    assert!(payloads == expected, "the undecodable records, each once");
    let by = count_by_class(&got);
    assert_eq!(
        by.get("constraint").copied().unwrap_or(0),
        big,
        "CHECK refusals, each once"
    );
    assert_eq!(
        by.get("processing").copied().unwrap_or(0),
        zero,
        "failed rows, each once"
    );
    // The good rows too: exactly once.
    let mut out: Vec<String> = published_rows(&d.join("out"))
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    let n = out.len();
    out.dedup();
    assert_eq!(n, out.len(), "no good row twice");
    let out: std::collections::BTreeSet<String> = out.into_iter().collect();
    let missing: Vec<&String> = good_events.difference(&out).take(5).collect();
    let extra: Vec<&String> = out.difference(&good_events).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the good rows, exactly: {} of {} written; missing e.g. {missing:?}, extra e.g. {extra:?}",
        out.len(),
        good_events.len()
    );
}

/// The replay workflow on the embedded default, end to end: a running pipeline (a
/// followed directory, checkpoints, exactly-once Parquet) refuses half its orders
/// through a `CHECK`; the contract is then relaxed (the cause fixed), and a bulk
/// replay — aborted after its first chunk (`dlq-replay-chunk`) and run again — sends
/// each refused order back exactly once: the output ends with every order once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_aborted_and_repeated_adds_exactly_the_missing_results() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let n = 1200i64;
    // Even orders have a negative total: refused by the first contract.
    let text: String = (1..=2 * n)
        .map(|i| {
            let total = if i % 2 == 0 { -1.0 } else { 1.0 };
            format!("{}\n", line(i, total, T0 + i))
        })
        .collect();
    write(&d.join("in/part-1.jsonl"), &text);
    let pipeline = |check: &str| {
        write(
            &d.join("p.sql"),
            &format!(
                "CREATE TABLE orders (order_id BIGINT, total DOUBLE, event_time TIMESTAMP, \
                   CONSTRAINT valid_total CHECK ({check})) \
                 WITH (connector = 'file', path = 'in', format = 'json', follow = 'true', \
                       poll_interval = '50ms');\n\
                 CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
                 INSERT INTO out SELECT order_id, total FROM orders;\n"
            ),
        );
    };
    pipeline("total >= 0");
    write(
        &d.join("p.yaml"),
        "name: shop\nsql: p.sql\ncheckpoint: { interval: 100ms, dir: checkpoints }\n\
         delivery: exactly-once\n",
    );
    let published = |d: &Path| -> Vec<i64> {
        if !d.join("out").exists() {
            return vec![];
        }
        let mut ids: Vec<i64> = published_rows(&d.join("out"))
            .iter()
            .map(|r| r["order_id"].as_i64().unwrap())
            .collect();
        ids.sort();
        ids
    };
    let running = Running::start(d, &["p.yaml"]);
    eventually("the odd orders published", Duration::from_secs(60), || {
        published(d).len() == n as usize
    });
    let store = LocalStore::open(d.join("data/dlq.sqlite")).unwrap();
    let pending = |store: &LocalStore| {
        let store = store.clone();
        async move { store.pending_summary("shop").unwrap().0 }
    };
    assert_eq!(
        pending(&store).await,
        n as u64,
        "every even order is a dead letter"
    );
    running.sigterm();
    let (code, err) = running.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");

    // The cause fixed: the contract takes a total of -1 (a refund).
    pipeline("total >= -1");
    let mut replay = tributary(d);
    replay.env("TRIBUTARY_FAULT_INJECT", "dlq-replay-chunk@1");
    let o = replay
        .args([
            "dlq",
            "replay",
            "--pipeline",
            "shop",
            "--class",
            "constraint",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        None,
        "aborted after a chunk: {}",
        stderr(&o)
    );
    let after_abort = pending(&store).await;
    assert!(
        after_abort > 0 && after_abort < n as u64,
        "the abort came between chunks: {after_abort} still pending"
    );
    let o = run(
        d,
        &[
            "dlq",
            "replay",
            "--pipeline",
            "shop",
            "--class",
            "constraint",
        ],
    );
    ok(&o);
    assert_eq!(
        pending(&store).await,
        0,
        "the repeated replay sent the rest"
    );
    let inbox = store.inbox("shop", "orders", 0, 10 * n as usize).unwrap();
    let mut replayed: Vec<&str> = inbox.iter().map(|r| r.dlq_id.as_str()).collect();
    replayed.sort();
    replayed.dedup();
    assert_eq!(
        (inbox.len(), replayed.len()),
        (n as usize, n as usize),
        "each dead letter in the inbox once"
    );

    let running = Running::start(d, &["p.yaml"]);
    eventually("every order published", Duration::from_secs(60), || {
        published(d).len() >= 2 * n as usize
    });
    running.sigterm();
    let (code, err) = running.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        published(d),
        (1..=2 * n).collect::<Vec<_>>(),
        "every order exactly once"
    );
    assert_eq!(pending(&store).await, 0, "nothing failed again");
}

/// A lookup table with `on_miss = 'dead-letter'`: each order whose restaurant the
/// table does not know is a dead letter of class `lookup_miss` (the inner join drops
/// it); the others are enriched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_miss_is_a_dead_letter_where_the_table_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("restaurants.jsonl"),
        "{\"restaurant_id\":0,\"name\":\"Harbour\"}\n{\"restaurant_id\":1,\"name\":\"Station\"}\n",
    );
    let orders: String = (0..30)
        .map(|i| format!("{{\"order_id\":{i},\"restaurant_id\":{}}}\n", i % 3))
        .collect();
    write(&d.join("orders.jsonl"), &orders);
    write(
        &d.join("p.sql"),
        "CREATE TABLE restaurants (restaurant_id BIGINT, name VARCHAR) WITH (connector = 'file', \
           path = 'restaurants.jsonl', format = 'json', lookup = 'true', on_miss = 'dead-letter');\n\
         CREATE TABLE orders (order_id BIGINT, restaurant_id BIGINT) WITH (connector = 'file', \
           path = 'orders.jsonl', format = 'json');\n\
         CREATE TABLE out WITH (connector = 'file', path = 'out.jsonl');\n\
         INSERT INTO out SELECT o.order_id, r.name FROM orders o \
           JOIN restaurants r ON o.restaurant_id = r.restaurant_id;\n",
    );
    ok(&run(d, &["run", "p.sql"]));
    let mut enriched: Vec<i64> = json_lines(&d.join("out.jsonl"))
        .iter()
        .map(|r| r["order_id"].as_i64().unwrap())
        .collect();
    enriched.sort();
    assert_eq!(enriched, (0..30).filter(|i| i % 3 != 2).collect::<Vec<_>>());
    let got = letters(d).await;
    let mut missed: Vec<i64> = got
        .iter()
        .map(|l| {
            assert_eq!(l.failure_class, BadRecordReason::LookupMiss);
            assert!(l.message.contains("restaurants"), "{}", l.message);
            let row: serde_json::Value = serde_json::from_slice(&l.payload).unwrap();
            assert_eq!(row["restaurant_id"], 2);
            row["order_id"].as_i64().unwrap()
        })
        .collect();
    missed.sort();
    assert_eq!(missed, (0..30).filter(|i| i % 3 == 2).collect::<Vec<_>>());
}
