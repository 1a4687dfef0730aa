//! A schema registry outage is not bad data: an Avro Kafka source (checkpoints every
//! second) whose registry is unavailable holds its records — none reported bad, no
//! checkpoint past them — says so (log, metric), and reads every record exactly once
//! when the registry comes; after `registry.outage_timeout` it fails naming the
//! registry, and neither that failure nor a `kill -9` during the outage loses a record.
//!
//! The topic is written by a pipeline's Avro Kafka sink into a built-in registry
//! (`tributary registry`, state in `reg/`), which is then stopped; the reading
//! pipelines name a free port, where the same registry is started again (same state)
//! when the test wants it back.

use std::path::Path;
use std::time::Duration;

use crate::checkpoints::checkpointed_offsets;
use crate::common::*;
use crate::kafka::{bootstrap, fresh_topic};
use crate::lifecycle::http_get;
use crate::operations::admin_addr;
use crate::registry::{free_port, start_registry, start_registry_on};

const ROWS: usize = 600;

/// Writes `ROWS` generated order events as Avro to a new topic of 2 partitions (schema
/// registered in a built-in registry kept in `d/reg`, stopped afterwards) and the same
/// events as JSON lines to `d/expected/rows.jsonl`; returns the topic.
fn avro_topic(d: &Path) -> String {
    let servers = bootstrap();
    let topic = fresh_topic("outage.orders");
    let (registry, url) = start_registry(d);
    let table = |name: &str| {
        format!(
            "CREATE TABLE {name} WITH (connector = 'generator', stream = 'orders', seed = '11', \
               count = '{ROWS}', rate = '0');\n"
        )
    };
    write(
        &d.join("produce.sql"),
        &format!(
            "{}{}\
             CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
               topic = '{topic}', partitions = '2', format = 'avro', schema_registry_url = '{url}');\n\
             CREATE TABLE expected WITH (connector = 'file', path = 'expected/rows.jsonl');\n\
             INSERT INTO out SELECT event_id, order_id FROM orders;\n\
             INSERT INTO expected SELECT event_id, order_id FROM copy;\n",
            table("orders"),
            table("copy"),
        ),
    );
    ok(&run(d, &["run", "produce.sql"]));
    drop(registry);
    topic
}

/// Produces the Avro topic (`avro_topic`), then writes `consume.yaml`: the topic read
/// (bounded) as Avro with schemas from a registry on a free port where none runs yet,
/// into `out/rows.jsonl`, with checkpoints every second. Returns that port.
fn consume_pipeline_without_its_registry(d: &Path) -> u16 {
    let topic = avro_topic(d);
    let port = free_port();
    let registry = format!("http://127.0.0.1:{port}");
    write(
        &d.join("consume.sql"),
        &format!(
            "CREATE TABLE events (event_id VARCHAR, order_id BIGINT) WITH (connector = 'kafka', \
               bootstrap_servers = '{}', topic = '{topic}', bounded = 'true', offset = 'earliest', \
               format = 'avro', schema_registry_url = '{registry}');\n\
             CREATE TABLE out WITH (connector = 'file', path = 'out/rows.jsonl');\n\
             INSERT INTO out SELECT * FROM events;\n",
            bootstrap()
        ),
    );
    write(
        &d.join("consume.yaml"),
        "name: consume\nsql: consume.sql\ncheckpoint: { interval: 1s, dir: checkpoints }\n",
    );
    port
}

/// Asserts that the pipeline's output holds every produced row exactly once.
fn assert_every_row_once(d: &Path) {
    let expected = json_lines(&d.join("expected/rows.jsonl"));
    assert_eq!(expected.len(), ROWS);
    let got = json_lines(&d.join("out/rows.jsonl"));
    assert_eq!(
        canonical(&got),
        canonical(&expected),
        "every record read exactly once"
    );
}

/// The `pipeline finished` log line's bad-record count, asserting the pipeline ended
/// well and no record was dropped as bad.
fn assert_no_bad_records(stderr: &str) {
    assert!(
        !stderr.contains("\"message\":\"bad record"),
        "no record is bad for an outage:\n{stderr}"
    );
    if let Some(done) = log_event(stderr, "pipeline finished") {
        assert_eq!(done["bad_records"], 0, "{stderr}");
    }
}

/// With the registry back on `port`, the pipeline run again finishes, reports nothing
/// bad, and every produced row arrives exactly once.
fn with_the_registry_back_every_row_arrives_once(d: &Path, port: u16) {
    let (_registry, _) = start_registry_on(d, port);
    let (code, stderr) = Running::start(d, &["consume.yaml"]).wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    assert_no_bad_records(&stderr);
    assert_every_row_once(d);
}

#[test]
fn records_wait_for_an_unavailable_registry_and_each_arrives_once_when_it_comes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = consume_pipeline_without_its_registry(d);

    let mut run = Running::start(d, &["consume.yaml"]);
    // Logged before the pipeline starts.
    let admin = admin_addr(&mut run);
    let retrying = run.wait_for_log("unreachable; retrying", Duration::from_secs(60));
    assert_eq!(retrying["kind"], "schema-registry", "{retrying}");
    assert_eq!(retrying["pipeline"], "consume", "{retrying}");
    assert!(
        retrying["component"]
            .as_str()
            .unwrap()
            .starts_with("events["),
        "{retrying}"
    );
    // The outage in the metrics: the component is down.
    let metrics = http_get(&admin, "/metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tributary_component_up{")
                && l.contains("kind=\"schema-registry\"")
                && l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        !run.seen
            .iter()
            .any(|l| l.contains("\"message\":\"bad record")),
        "nothing is bad while the registry is away:\n{}",
        run.seen.join("\n")
    );

    let (_registry, _) = start_registry_on(d, port);
    let (code, stderr) = run.wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        log_event(&stderr, "reachable again").is_some(),
        "the end of the outage is logged:\n{stderr}"
    );
    assert_no_bad_records(&stderr);
    assert_every_row_once(d);
}

#[test]
fn an_outage_longer_than_outage_timeout_fails_the_pipeline_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = consume_pipeline_without_its_registry(d);
    let url = format!("http://127.0.0.1:{port}");

    let run = Running::start(d, &["--set", "registry.outage_timeout=2s", "consume.yaml"]);
    let (code, stderr) = run.wait(Duration::from_secs(60));
    assert_eq!(code, Some(1), "the pipeline fails:\n{stderr}");
    assert!(
        stderr.contains("error[REG027]")
            && stderr.contains("\"code\":\"REG027\"")
            && stderr.contains(&format!(
                "table events: schema registry {url} has been unavailable"
            ))
            && stderr.contains("registry.outage_timeout"),
        "a clear error naming the registry and the setting:\n{stderr}"
    );
    assert!(stderr.contains("table events"), "{stderr}");
    assert_no_bad_records(&stderr);
    assert_eq!(
        checkpointed_offsets(&d.join("checkpoints"), "events"),
        0,
        "no checkpoint passed the records not decoded"
    );

    // Run again with the registry there: nothing was skipped.
    with_the_registry_back_every_row_arrives_once(d, port);
}

#[test]
fn killed_during_an_outage_a_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = consume_pipeline_without_its_registry(d);

    let mut run = Running::start(d, &["consume.yaml"]);
    run.wait_for_log("unreachable; retrying", Duration::from_secs(60));
    // The outage lasts three checkpoint intervals: checkpoints fall due meanwhile (a
    // scenario's length, not a wait for an event).
    std::thread::sleep(Duration::from_secs(3));
    run.child.kill().unwrap(); // SIGKILL
    run.child.wait().unwrap();
    assert_eq!(
        checkpointed_offsets(&d.join("checkpoints"), "events"),
        0,
        "no checkpoint passed the records held during the outage"
    );

    with_the_registry_back_every_row_arrives_once(d, port);
}

/// A stop (SIGTERM) during the outage ends the source with an error (REG028) rather
/// than a final checkpoint: nothing reported bad, no checkpoint past the records held,
/// and a restart with the registry back reads them all.
#[test]
fn stopped_during_an_outage_the_records_held_are_read_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = consume_pipeline_without_its_registry(d);

    let mut run = Running::start(d, &["consume.yaml"]);
    run.wait_for_log("unreachable; retrying", Duration::from_secs(60));
    run.sigterm();
    // Within a deadline far below registry.outage_timeout (5 min): the stop ends the wait.
    let (code, stderr) = run.wait(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("\"code\":\"REG028\""), "{stderr}");
    assert_no_bad_records(&stderr);
    assert_eq!(
        checkpointed_offsets(&d.join("checkpoints"), "events"),
        0,
        "no checkpoint passed the records held during the outage"
    );

    with_the_registry_back_every_row_arrives_once(d, port);
}
