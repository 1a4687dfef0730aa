//! The `kafka` connector against a real Apache Kafka broker (started by `scripts/test`
//! with `scripts/kafka start`; its bootstrap servers in `TRIBUTARY_TEST_KAFKA`).
//!
//! A round trip: the generator's orders, from a file, are written by the Kafka sink
//! (a topic of 3 partitions it creates, keyed by order id), then read back by a
//! bounded Kafka source at parallelism 2. Every row comes back exactly once, and the
//! rows of each order come back in the order they were written (one key, one
//! partition, one reading task).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;

/// The broker's bootstrap servers; the test fails (it does not skip) without one.
pub fn bootstrap() -> String {
    std::env::var("TRIBUTARY_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "no Kafka broker: run the suite with scripts/test, or \
             export TRIBUTARY_TEST_KAFKA=\"$(scripts/kafka start | tail -n 1)\""
        )
    })
}

/// A topic name no earlier run on the same broker used.
pub fn fresh_topic(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}.{}.{nanos}", std::process::id())
}

/// Every record value of `topic` (JSON), from the beginning to the end offsets at the
/// call, read with `isolation` (`read_committed` or `read_uncommitted`).
pub fn read_topic(servers: &str, topic: &str, isolation: &str) -> Vec<serde_json::Value> {
    read_records(servers, topic, isolation)
        .into_iter()
        .map(|(_, value)| value.expect("a record with a value"))
        .collect()
}

/// Every record of `topic` as (key, JSON value; `None` for a tombstone), in offset
/// order per partition, partitions one after another.
pub fn read_records(
    servers: &str,
    topic: &str,
    isolation: &str,
) -> Vec<(Option<Vec<u8>>, Option<serde_json::Value>)> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", fresh_topic("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let timeout = std::time::Duration::from_secs(10);
    let md = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    let mut ends = BTreeMap::new();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout).unwrap();
        if high > low {
            ends.insert(p.id(), high);
        }
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    assert!(!ends.is_empty(), "topic {topic} has records");
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut rows = Vec::new();
    loop {
        // Done when every partition's position has passed its end at the call (with
        // read_committed, aborted records and transaction markers are skipped).
        let positions = consumer.position().unwrap();
        let done = ends.iter().all(|(p, end)| {
            positions
                .find_partition(topic, *p)
                .and_then(|e| e.offset().to_raw())
                .is_some_and(|o| o >= *end)
        });
        if done {
            // Stable: per partition in offset order.
            rows.sort_by_key(|(p, offset, _)| (*p, *offset));
            return rows.into_iter().map(|(_, _, r)| r).collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out"
        );
        if let Some(m) = consumer.poll(std::time::Duration::from_millis(200)) {
            let m = m.unwrap();
            rows.push((
                m.partition(),
                m.offset(),
                (
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(|v| serde_json::from_slice(v).unwrap()),
                ),
            ));
        }
    }
}

const COLUMNS: &str =
    "event_id VARCHAR, event_type VARCHAR, order_id BIGINT, channel VARCHAR, total DOUBLE";

#[test]
fn rows_written_to_kafka_come_back_once_and_in_order_per_key() {
    let servers = bootstrap();
    let topic = fresh_topic("orders.order_events");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    generate(
        d,
        "orders",
        "17",
        "3000",
        &["rate=0", "duplicate_fraction=0.01"],
        "in/orders.jsonl",
    );

    write(
        &d.join("produce.sql"),
        &format!(
            "CREATE TABLE orders ({COLUMNS}) WITH (connector = 'file', path = 'in', format = 'json');\n\
             CREATE TABLE out ({COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
             topic = '{topic}', partitions = '3', key_field = 'order_id');\n\
             INSERT INTO out SELECT * FROM orders;\n"
        ),
    );
    ok(&run(d, &["run", "produce.sql"]));

    write(
        &d.join("consume.sql"),
        &format!(
            "CREATE TABLE events ({COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
             topic = '{topic}', bounded = 'true', offset = 'earliest', parallelism = '2');\n\
             CREATE TABLE copy WITH (connector = 'file', path = 'out/copy.jsonl', parallelism = '2');\n\
             INSERT INTO copy SELECT * FROM events;\n"
        ),
    );
    // Small batches: each partition's rows cross the decoding workers in many chunks,
    // which must come back in order.
    write(
        &d.join("consume.yaml"),
        "name: consume\nsql: consume.sql\nbatch: { size: 50 }\n",
    );
    ok(&run(d, &["run", "consume.yaml"]));

    // The input as the file source decoded it: the good rows, in file order.
    let input: Vec<serde_json::Value> = std::fs::read_to_string(d.join("in/orders.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event_id"].is_string() && v["order_id"].is_i64())
        .map(|v| {
            serde_json::json!({
                "event_id": v["event_id"], "event_type": v["event_type"],
                "order_id": v["order_id"], "channel": v["channel"], "total": v["total"],
            })
        })
        .collect();
    let mut got = Vec::new();
    for part in 0..2 {
        let text = std::fs::read_to_string(d.join(format!("out/copy-{part}.jsonl"))).unwrap();
        got.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    assert!(input.len() > 2500, "{} input rows", input.len());
    assert_eq!(
        canonical(&got),
        canonical(&input),
        "every row back exactly once"
    );

    // Per order, the events in the order they were written.
    let per_order = |rows: &[serde_json::Value]| {
        let mut m: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for r in rows {
            m.entry(r["order_id"].as_i64().unwrap())
                .or_default()
                .push(r["event_id"].as_str().unwrap().to_string());
        }
        m
    };
    assert_eq!(per_order(&got), per_order(&input));
}

/// Authentication through librdkafka properties (the way a managed cluster is
/// reached): the sink writes and a bounded source reads over the test broker's
/// SASL_PLAINTEXT listener (PLAIN; `scripts/kafka sasl-bootstrap`), without OpenSSL in
/// the build. What the source read equals what a plain reader finds in the topic; a
/// wrong password fails the source, naming the refusal.
#[test]
fn a_pipeline_writes_and_reads_through_a_sasl_plain_listener_and_a_wrong_password_fails() {
    let sasl = std::env::var("TRIBUTARY_TEST_KAFKA_SASL").unwrap_or_else(|_| {
        panic!("no SASL listener: run the suite with scripts/test (TRIBUTARY_TEST_KAFKA_SASL)")
    });
    let topic = fresh_topic("sasl.orders");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let auth = "\"kafka.security.protocol\" = 'SASL_PLAINTEXT', \"kafka.sasl.mechanisms\" = 'PLAIN', \
                \"kafka.sasl.username\" = 'tributary', \"kafka.sasl.password\" = 'tributary-secret'";
    write(
        &d.join("produce.sql"),
        &format!(
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '5', \
               count = '400', rate = '0');\n\
             CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{sasl}', \
               topic = '{topic}', partitions = '2', {auth});\n\
             INSERT INTO out SELECT event_id, order_id FROM orders;\n"
        ),
    );
    ok(&run(d, &["run", "produce.sql"]));
    write(
        &d.join("consume.sql"),
        &format!(
            "CREATE TABLE events (event_id VARCHAR, order_id BIGINT) WITH (connector = 'kafka', \
               bootstrap_servers = '{sasl}', topic = '{topic}', bounded = 'true', \
               offset = 'earliest', {auth});\n\
             CREATE TABLE copy WITH (connector = 'file', path = 'out/copy.jsonl');\n\
             INSERT INTO copy SELECT * FROM events;\n"
        ),
    );
    ok(&run(d, &["run", "consume.sql"]));
    let read = json_lines(&d.join("out/copy.jsonl"));
    let plain = read_topic(&bootstrap(), &topic, "read_committed");
    assert_eq!(
        plain.len(),
        400,
        "the sink wrote every generated order event"
    );
    assert_eq!(canonical(&read), canonical(&plain));

    // A wrong password fails the source naming the refusal; it does not wait as for
    // an unreachable cluster.
    let consume = std::fs::read_to_string(d.join("consume.sql")).unwrap();
    write(
        &d.join("refused.sql"),
        &consume
            .replace("'tributary-secret'", "'wrong'")
            .replace("out/copy.jsonl", "out/refused.jsonl"),
    );
    // Within a deadline: a source that waited instead would never exit by itself.
    let (code, stderr) = Running::start(d, &["refused.sql"]).wait(Duration::from_secs(60));
    assert_ne!(
        code,
        Some(0),
        "a refused login fails the pipeline:\n{stderr}"
    );
    assert!(
        stderr.contains("the cluster refused authentication"),
        "{stderr}"
    );
}

#[test]
fn a_missing_option_and_an_unknown_one_are_refused_at_plan_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("a.sql"),
        &format!(
            "CREATE TABLE events ({COLUMNS}) WITH (connector = 'kafka', topic = 't');\n\
             CREATE TABLE out WITH (connector = 'stdout');\n\
             INSERT INTO out SELECT * FROM events;\n"
        ),
    );
    let o = run(d, &["check", "a.sql"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bootstrap_servers"), "{}", stderr(&o));
    write(
        &d.join("b.sql"),
        &format!(
            "CREATE TABLE events ({COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = 'x:1', \
             topic = 't', offset_reset = 'x');\n\
             CREATE TABLE out WITH (connector = 'stdout');\n\
             INSERT INTO out SELECT * FROM events;\n"
        ),
    );
    let o = run(d, &["check", "b.sql"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("offset_reset"), "{}", stderr(&o));
}

/// Writes `d/p.sql`: `topic` (columns `columns`) read from its beginning to its end as
/// it is at the start, `SELECT {select}` of it into `out/copy.jsonl`.
pub fn bounded_copy(d: &std::path::Path, servers: &str, topic: &str, columns: &str, select: &str) {
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE events ({columns}) WITH (connector = 'kafka', \
               bootstrap_servers = '{servers}', topic = '{topic}', offset = 'earliest', \
               bounded = 'true');\n\
             CREATE TABLE copy WITH (connector = 'file', path = 'out/copy.jsonl');\n\
             INSERT INTO copy SELECT {select} FROM events;\n"
        ),
    );
}

/// What a record produced by [`records_with_headers`] carries: its key and headers.
type Sent = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// Produces 300 records to each of `topic`'s 2 partitions, every 23rd of them broken
/// JSON; each has a key and headers of its own (some none, some several, one without
/// a value). Returns the broken records' (partition, offset) → (key, headers), and the
/// number of good ones.
fn records_with_headers(servers: &str, topic: &str) -> (BTreeMap<(i32, i64), Sent>, usize) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        // Records of a partition land in the order sent, retries included.
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let (mut broken, mut good) = (BTreeMap::new(), 0);
    for p in 0..2i32 {
        for i in 0..300i64 {
            let key = format!("k{p}-{i}").into_bytes();
            let mut sent: Vec<(String, Vec<u8>)> = Vec::new();
            let mut headers = OwnedHeaders::new();
            for h in 0..(i % 4) {
                let value = vec![p as u8, i as u8, h as u8, 0xff];
                headers = headers.insert(Header {
                    key: &format!("h{h}"),
                    value: Some(&value),
                });
                sent.push((format!("h{h}"), value));
            }
            if i % 5 == 0 {
                headers = headers.insert(Header::<&[u8]> {
                    key: "empty",
                    value: None,
                });
                sent.push(("empty".into(), Vec::new()));
            }
            let bad = i % 23 == 7;
            let value = if bad {
                format!("{{\"id\": \"{p}-{i}\", \"ts\": ")
            } else {
                good += 1;
                format!(
                    "{{\"id\": \"{p}-{i}\", \"ts\": {}}}",
                    1_790_000_000_000i64 + i
                )
            };
            producer
                .send(
                    BaseRecord::to(topic)
                        .partition(p)
                        .key(&key)
                        .payload(&value)
                        .headers(headers),
                )
                .unwrap();
            if bad {
                // A fresh topic, one idempotent producer: offsets follow the order
                // sent.
                broken.insert((p, i), (key, sent));
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    (broken, good)
}

/// The Kafka source does not copy the headers of every record it reads (librdkafka
/// parses them only when asked); a record refused while decoding is read again from
/// the topic for them. Each dead letter carries its own record's key and headers, at
/// its own offset, among many refused in the same chunks of both partitions.
#[test]
fn records_refused_while_decoding_are_dead_lettered_with_their_own_key_and_headers() {
    use tributary::connectors::dead_letters::local::LocalStore;
    use tributary::connectors::dead_letters::{DeadLetterStore, Filter, Page};
    let servers = bootstrap();
    let topic = fresh_topic("kafka.headers");
    crate::kafka_faults::create_topic(&servers, &topic, 2);
    let (broken, good) = records_with_headers(&servers, &topic);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bounded_copy(d, &servers, &topic, "id VARCHAR, ts BIGINT", "id, ts");
    ok(&run(
        d,
        &["run", "--set", "pipeline.batch_size=64", "p.sql"],
    ));
    assert_eq!(
        json_lines_in(&d.join("out")).len(),
        good,
        "every good record"
    );

    let store = LocalStore::open(d.join("data/dlq.sqlite")).unwrap();
    let page = Page {
        offset: 0,
        limit: 10_000,
        after: None,
    };
    let letters = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(store.list(&Filter::default(), page))
        .unwrap();
    let got: BTreeMap<(i32, i64), Sent> = letters
        .iter()
        .map(|l| {
            let s = &l.source;
            let at = (s.partition.unwrap(), s.offset.unwrap());
            (at, (s.key.clone().unwrap(), s.headers.clone()))
        })
        .collect();
    assert_eq!(letters.len(), broken.len(), "one letter per broken record");
    assert_eq!(got, broken);
}
