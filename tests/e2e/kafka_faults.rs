//! The Kafka source where partitions and topics do not behave like a steady stream:
//! a `kill -9` between one partition's records and another's (each partition's
//! watermark comes back with its offset), a partition that stays silent (idleness per
//! partition), and bounded reads of topics written in transactions (the last offsets
//! are markers and aborted records, which no record is delivered for).
//!
//! Records are produced by the test itself with rdkafka, partition by partition, so
//! that each scenario is exact; the expected windows are counted by the test.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::common::*;
use crate::kafka::{bootstrap, fresh_topic};

/// The start of the test's event time: a multiple of the 10 s windows.
const T0: i64 = 1_790_000_000_000;

/// Creates `topic` with `partitions` partitions.
pub(crate) fn create_topic(servers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

fn producer(
    servers: &str,
    transactional_id: Option<&str>,
) -> ThreadedProducer<DefaultProducerContext> {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", servers);
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
    }
    config.create().unwrap()
}

/// Sends one JSON record `{id, ts}` per event time to `partition`, and waits for them.
fn produce(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    partition: i32,
    times: &[i64],
) {
    for (i, ts) in times.iter().enumerate() {
        let value =
            serde_json::json!({"id": format!("{partition}-{i}-{ts}"), "ts": ts}).to_string();
        p.send(
            BaseRecord::<(), String>::to(topic)
                .partition(partition)
                .payload(&value),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// A tumbling 10 s count over `topic`, written to `out/w.jsonl`.
fn window_pipeline(d: &Path, servers: &str, topic: &str, extra: &str) {
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE events (id VARCHAR, ts TIMESTAMP) WITH (connector = 'kafka', \
               bootstrap_servers = '{servers}', topic = '{topic}', offset = 'earliest', \
               event_time_field = 'ts', watermark_delay = '0s'{extra});\n\
             CREATE TABLE w WITH (connector = 'file', path = 'out/w.jsonl');\n\
             INSERT INTO w SELECT CAST(to_unixtime(win.start) * 1000 AS BIGINT) AS start, n FROM \
               (SELECT tumble(INTERVAL '10' SECOND) AS win, count(*) AS n FROM events GROUP BY win);\n"
        ),
    );
}

/// The windows written so far: start → count.
fn windows(d: &Path) -> BTreeMap<i64, i64> {
    let path = d.join("out/w.jsonl");
    if !path.exists() {
        return BTreeMap::new();
    }
    json_lines(&path)
        .iter()
        .map(|r| (r["start"].as_i64().unwrap(), r["n"].as_i64().unwrap()))
        .collect()
}

/// Event times every 500 ms over `[from, from + 10 s)`.
fn every_half_second(from: i64) -> Vec<i64> {
    (0..20).map(|i| from + i * 500).collect()
}

/// Partition 1 gets all its records (0–10 s, then an end marker an hour later)
/// before a checkpoint covers them and the process is killed; partition 0 gets the
/// rest (10–20 s) and its end marker after the restart. Both windows must close: the
/// restored run knows partition 1's event time from the checkpoint, so its silence
/// does not hold the watermark back.
#[test]
fn windows_close_after_a_restore_when_a_partition_sends_nothing_more() {
    let servers = bootstrap();
    let topic = fresh_topic("faults.restore");
    create_topic(&servers, &topic, 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    window_pipeline(d, &servers, &topic, "");
    write(
        &d.join("p.yaml"),
        "name: restore_wm\nsql: p.sql\ncheckpoint: { interval: 200ms, dir: checkpoints }\n",
    );
    let p = producer(&servers, None);
    let mut p1 = every_half_second(T0);
    p1.push(T0 + 3_600_000);
    produce(&p, &topic, 1, &p1);

    let mut first = Running::start(d, &["p.yaml"]);
    let checkpoints = d.join("checkpoints");
    eventually(
        "a checkpoint covering partition 1",
        Duration::from_secs(60),
        || crate::checkpoints::checkpointed_offsets(&checkpoints, "events") >= p1.len() as i64,
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(
        windows(d).is_empty(),
        "nothing closed before partition 0 spoke"
    );

    let second = Running::start(d, &["p.yaml"]);
    let mut p0 = every_half_second(T0 + 10_000);
    p0.push(T0 + 3_600_000);
    produce(&p, &topic, 0, &p0);
    let expected = BTreeMap::from([(T0, 20), (T0 + 10_000, 20)]);
    eventually("both windows written", Duration::from_secs(60), || {
        windows(d).len() >= 2
    });
    second.sigterm();
    let (code, stderr) = second.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(windows(d), expected);
}

/// A partition that never sends does not hold the watermark back once it has been
/// silent for `idle_timeout`: partition 0's windows close while partition 1 is empty.
#[test]
fn a_silent_partition_stops_holding_windows_open_after_the_idle_timeout() {
    let servers = bootstrap();
    let topic = fresh_topic("faults.idle");
    create_topic(&servers, &topic, 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    window_pipeline(d, &servers, &topic, ", idle_timeout = '1s'");
    let p = producer(&servers, None);
    let mut p0 = every_half_second(T0);
    p0.push(T0 + 3_600_000);
    produce(&p, &topic, 0, &p0);
    let run = Running::start(d, &["p.sql"]);
    eventually("the first window written", Duration::from_secs(60), || {
        !windows(d).is_empty()
    });
    run.sigterm();
    let (code, stderr) = run.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(windows(d), BTreeMap::from([(T0, 20)]));
}

/// A bounded read of a topic written in transactions ends, and reads exactly the
/// committed records: one committed transaction, then an aborted one, so that each
/// partition ends in an abort marker after records no reader may see.
#[test]
fn a_bounded_read_ends_on_a_transactional_topic_with_committed_records_only() {
    let servers = bootstrap();
    let topic = fresh_topic("faults.transactions");
    create_topic(&servers, &topic, 2);
    let p = producer(&servers, Some(&topic));
    p.init_transactions(Duration::from_secs(30)).unwrap();
    p.begin_transaction().unwrap();
    let committed = every_half_second(T0);
    produce(&p, &topic, 0, &committed[..12]);
    produce(&p, &topic, 1, &committed[12..]);
    p.commit_transaction(Duration::from_secs(30)).unwrap();
    p.begin_transaction().unwrap();
    produce(&p, &topic, 0, &every_half_second(T0 + 50_000));
    produce(&p, &topic, 1, &every_half_second(T0 + 60_000));
    p.abort_transaction(Duration::from_secs(30)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::kafka::bounded_copy(d, &servers, &topic, "id VARCHAR, ts TIMESTAMP", "id");
    // Within a deadline: a read that waited for a record past the markers would never
    // end by itself.
    let (code, stderr) = Running::start(d, &["p.sql"]).wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    let mut got: Vec<String> = json_lines(&d.join("out/copy.jsonl"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = committed[..12]
        .iter()
        .enumerate()
        .map(|(i, ts)| format!("0-{i}-{ts}"))
        .chain(
            committed[12..]
                .iter()
                .enumerate()
                .map(|(i, ts)| format!("1-{i}-{ts}")),
        )
        .collect();
    want.sort();
    assert_eq!(got, want, "exactly the committed records");
}
