//! Operating a running process: stops are bounded (`run.stop_grace`, a second signal
//! stops at once, SIGHUP stops as cleanly as SIGTERM) and the probes tell liveness from
//! readiness (`/livez`, `/readyz`, each component's state, `tributary_component_up`).
//!
//! An unreachable cluster is a port on this machine nothing listens on.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::lifecycle::http_get;

/// `127.0.0.1:PORT` where nothing listens (a port the system just handed out, released).
fn unreachable_servers() -> String {
    format!("127.0.0.1:{}", crate::registry::free_port())
}

fn signal(r: &Running, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &r.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Generated orders into a Kafka sink on a cluster nobody answers for, with
/// `run.stop_grace` = `grace`; returns once the sink reports it cannot deliver (its
/// output is stuck in librdkafka, which would wait out its message timeout).
fn stuck_on_an_unreachable_sink(d: &std::path::Path, grace: &str) -> Running {
    let servers = unreachable_servers();
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', rate = '2000');\n\
             CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = 'orders');\n\
             INSERT INTO out SELECT order_id, event_type FROM orders;\n"
        ),
    );
    let grace = format!("run.stop_grace={grace}");
    let mut r = Running::start(d, &["--set", &grace, "p.sql"]);
    let stuck = r.wait_for_log("unreachable; retrying", Duration::from_secs(60));
    assert_eq!(stuck["component"], "out[0]", "{stuck}");
    r
}

#[test]
fn a_stop_stuck_on_an_unreachable_kafka_sink_is_abandoned_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let r = stuck_on_an_unreachable_sink(dir.path(), "2s");
    r.sigterm();
    let asked = Instant::now();
    let (code, err) = r.wait(Duration::from_secs(60));
    let took = asked.elapsed();
    assert_eq!(code, Some(3), "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "exited {took:?} after SIGTERM, grace 2 s:\n{err}"
    );
    let waiting = log_event(&err, "stop still waiting").expect("it says what it waits for");
    assert!(
        waiting["tasks"].as_str().unwrap().contains("out[0]"),
        "{waiting}"
    );
    assert!(
        waiting["components"]
            .as_str()
            .unwrap()
            .contains("out[0] (kafka) retrying"),
        "{waiting}"
    );
    let abandoned = log_event(
        &err,
        "stop abandoned: exiting without waiting; with checkpoints the next start replays from the last committed one",
    )
    .expect("the abandon is logged");
    assert!(
        abandoned["reason"]
            .as_str()
            .unwrap()
            .contains("run.stop_grace"),
        "{abandoned}"
    );
    assert!(abandoned["waiting"].as_str().unwrap().contains("out[0]"));
    assert!(err.contains("error[ENG008]: stop abandoned"), "{err}");
    assert!(err.contains("exactly-once output is not lost"), "{err}");
}

#[test]
fn a_second_signal_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = stuck_on_an_unreachable_sink(dir.path(), "10m");
    r.sigterm();
    r.wait_for_log(
        "stop requested: draining pipelines and flushing sinks",
        Duration::from_secs(30),
    );
    signal(&r, "INT");
    let asked = Instant::now();
    let (code, err) = r.wait(Duration::from_secs(60));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "exited {:?} after the second signal:\n{err}",
        asked.elapsed()
    );
    assert_eq!(code, Some(3), "{err}");
    let second = log_event(&err, "second stop signal: stopping at once").expect("logged");
    assert_eq!(second["signal"], "SIGINT");
    assert!(err.contains("error[ENG008]"), "{err}");
}

/// Rows in the committed (published) Parquet files under `dir`, and the names of
/// in-progress ones.
fn parquet_rows(dir: &std::path::Path) -> (usize, Vec<String>) {
    let mut rows = 0;
    let mut in_progress = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                dirs.push(p);
            } else if name.ends_with(".inprogress") {
                in_progress.push(name);
            } else if name.ends_with(".parquet") {
                let file = std::fs::File::open(&p).unwrap();
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .unwrap()
                        .build()
                        .unwrap();
                rows += reader.map(|b| b.unwrap().num_rows()).sum::<usize>();
            }
        }
    }
    (rows, in_progress)
}

#[test]
fn sighup_stops_as_cleanly_as_sigterm_and_every_row_read_is_in_committed_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("p.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', rate = '5000');\n\
         CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
         INSERT INTO out SELECT order_id, event_type, event_time FROM orders;\n",
    );
    write(
        &d.join("p.yaml"),
        "name: hup\nsql: p.sql\ncheckpoint: { interval: 1s, dir: checkpoints }\n\
         delivery: at-least-once\n",
    );
    let mut r = Running::start(d, &["p.yaml"]);
    r.wait_for_log("starting pipeline", Duration::from_secs(60));
    // Mid-stream: a file published at a checkpoint, and the next one being written.
    let out = d.join("out");
    eventually(
        "a published file and one in progress",
        Duration::from_secs(60),
        || {
            out.exists() && {
                let (rows, in_progress) = parquet_rows(&out);
                rows > 0 && !in_progress.is_empty()
            }
        },
    );
    signal(&r, "HUP");
    let (code, err) = r.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "SIGHUP drains and exits cleanly:\n{err}");
    let requested = log_event(
        &err,
        "stop requested: draining pipelines and flushing sinks",
    )
    .expect("the stop is logged");
    assert_eq!(requested["signal"], "SIGHUP");
    let (rows, in_progress) = parquet_rows(&out);
    assert!(in_progress.is_empty(), "left in progress: {in_progress:?}");
    let finished = log_event(&err, "pipeline finished").expect("finish log");
    assert!(rows > 0);
    assert_eq!(
        finished["rows_read"].as_u64(),
        Some(rows as u64),
        "{finished}"
    );
    assert_eq!(finished["rows_written"].as_u64(), Some(rows as u64));
}

/// Writes `p.sql`: a Kafka source on a cluster nobody answers for (with `options`
/// added to its `WITH`), copied to a file.
fn unreachable_source(d: &std::path::Path, options: &str) {
    let servers = unreachable_servers();
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE events (order_id BIGINT) WITH (connector = 'kafka', \
               bootstrap_servers = '{servers}', topic = 'orders'{options});\n\
             CREATE TABLE out WITH (connector = 'file', path = 'out.jsonl');\n\
             INSERT INTO out SELECT * FROM events;\n"
        ),
    );
}

/// The admin endpoint's address, from its log line.
pub(crate) fn admin_addr(r: &mut Running) -> String {
    let ready = r.wait_for_log(
        "admin endpoint: /metrics and /healthz",
        Duration::from_secs(60),
    );
    ready["addr"].as_str().unwrap().to_string()
}

fn probe(addr: &str, path: &str) -> (String, serde_json::Value) {
    let (status, body) = http_get(addr, path);
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, json)
}

/// The row of `component` in a probe's answer.
fn component<'a>(answer: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    answer["components"]
        .as_array()?
        .iter()
        .find(|c| c["component"] == name)
}

#[test]
fn a_source_on_an_unreachable_cluster_is_alive_but_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    unreachable_source(d, "");
    let mut r = Running::start(d, &["p.sql"]);
    let addr = admin_addr(&mut r);
    let mut ready = (String::new(), serde_json::Value::Null);
    eventually("the source retrying", Duration::from_secs(60), || {
        ready = probe(&addr, "/readyz");
        component(&ready.1, "events[0]").is_some_and(|c| c["state"] == "retrying")
    });
    let (status, answer) = ready;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{answer}");
    assert_eq!(answer["status"], "not ready");
    let c = component(&answer, "events[0]").unwrap();
    assert_eq!(c["pipeline"], "p");
    assert_eq!(c["kind"], "kafka");
    assert!(c["retrying_since"].is_string(), "{c}");
    assert!(c["retrying_for_s"].is_number(), "{c}");
    assert!(!c["last_error"].as_str().unwrap().is_empty(), "{c}");
    for path in ["/livez", "/healthz"] {
        let (status, answer) = probe(&addr, path);
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}: {answer}");
        assert_eq!(answer["status"], "ok");
        assert_eq!(
            component(&answer, "events[0]").unwrap()["state"],
            "retrying"
        );
    }
    let metrics = http_get(&addr, "/metrics").1;
    let up = "tributary_component_up{pipeline=\"p\",component=\"events[0]\",kind=\"kafka\"} 0";
    assert!(metrics.contains(up), "no `{up}` in:\n{metrics}");
    assert!(
        metrics.contains(
            "tributary_component_retrying_seconds{pipeline=\"p\",component=\"events[0]\",kind=\"kafka\"}"
        ),
        "{metrics}"
    );
    r.sigterm();
    let (code, err) = r.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_pipeline_on_a_reachable_cluster_is_ready_once_running() {
    let servers = crate::kafka::bootstrap();
    let input = crate::kafka::fresh_topic("ready.in");
    let output = crate::kafka::fresh_topic("ready.out");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("produce.sql"),
        &format!(
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '100', rate = '0');\n\
             CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
               topic = '{input}', partitions = '1');\n\
             INSERT INTO out SELECT order_id FROM orders;\n"
        ),
    );
    ok(&run(d, &["run", "produce.sql"]));
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE events (order_id BIGINT) WITH (connector = 'kafka', \
               bootstrap_servers = '{servers}', topic = '{input}', offset = 'earliest');\n\
             CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
               topic = '{output}', partitions = '1');\n\
             INSERT INTO out SELECT * FROM events;\n"
        ),
    );
    let mut r = Running::start(d, &["p.sql"]);
    let addr = admin_addr(&mut r);
    let mut ready = (String::new(), serde_json::Value::Null);
    eventually("/readyz 200", Duration::from_secs(60), || {
        ready = probe(&addr, "/readyz");
        ready.0 == "HTTP/1.1 200 OK"
    });
    let answer = ready.1;
    assert_eq!(answer["status"], "ready");
    for name in ["events[0]", "out[0]"] {
        let c = component(&answer, name).unwrap_or_else(|| panic!("no {name}: {answer}"));
        assert_eq!(c["state"], "up", "{c}");
    }
    let metrics = http_get(&addr, "/metrics").1;
    let up = "tributary_component_up{pipeline=\"p\",component=\"events[0]\",kind=\"kafka\"} 1";
    assert!(metrics.contains(up), "no `{up}` in:\n{metrics}");
    r.sigterm();
    let (code, err) = r.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
}

/// A source whose cluster stays unreachable for longer than its `outage_timeout` fails
/// the pipeline, naming the outage and the last error, instead of waiting forever.
#[test]
fn a_source_unreachable_for_longer_than_its_outage_timeout_fails_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    unreachable_source(d, ", outage_timeout = '2s'");
    let started = Instant::now();
    // Within a deadline: a source that waited the outage out would never exit.
    let (code, stderr) = Running::start(d, &["p.sql"]).wait(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("longer than outage_timeout"),
        "the error names the outage: {stderr}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the outage lasted outage_timeout"
    );
}
