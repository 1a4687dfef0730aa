//! Running, stopping and failing: SIGTERM drains and exits 0, a failing operator stops
//! the pipeline with an error naming it, the drop policy isolates bad rows, and the
//! admin endpoint serves metrics and health while running.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::*;

const UNBOUNDED: &str = "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', rate = '20000');\n\
    CREATE TABLE out WITH (connector = 'file', path = 'out.jsonl');\n\
    INSERT INTO out SELECT order_id, event_type, event_time FROM orders;\n";

#[test]
fn sigterm_drains_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("p.sql"), UNBOUNDED);
    let mut r = Running::start(d, &["p.sql"]);
    r.wait_for_log("starting pipeline", Duration::from_secs(60));
    let out = d.join("out.jsonl");
    eventually("output rows", Duration::from_secs(60), || {
        std::fs::metadata(&out)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false)
    });
    r.sigterm();
    let (code, err) = r.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    let rows = json_lines(&out); // every line complete and valid JSON
    let finished = log_event(&err, "pipeline finished").expect("finish log");
    assert_eq!(finished["rows_written"].as_u64(), Some(rows.len() as u64));
    assert_eq!(
        finished["rows_read"].as_u64(),
        Some(rows.len() as u64),
        "nothing lost in between"
    );
}

fn poison(policy: &str) -> (tempfile::TempDir, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("p.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '5000', rate = '0');\n\
         CREATE TABLE out WITH (connector = 'file', path = 'out.jsonl');\n\
         INSERT INTO out SELECT order_id, \
         CAST(CASE WHEN order_id % 10 = 0 THEN 'x' ELSE '1' END AS INT) AS one FROM orders;\n",
    );
    write(
        &d.join("p.yaml"),
        &format!("name: poison\nsql: p.sql\nerrors:\n  on_processing_error: {policy}\n"),
    );
    let o = run(d, &["run", "p.yaml"]);
    (dir, o)
}

#[test]
fn a_failing_operator_stops_the_pipeline_with_an_error_naming_it() {
    let (_dir, o) = poison("fail");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("operator poison/out_select[0/1] failed"),
        "{err}"
    );
    assert!(err.contains("Cannot cast string 'x'"), "{err}");
}

#[test]
fn the_drop_policy_drops_exactly_the_rows_that_fail() {
    let (dir, o) = poison("drop");
    ok(&o);
    let d = dir.path();
    // Independent count of the input: the same generator events.
    let g = run(
        d,
        &[
            "generate", "--stream", "orders", "--count", "5000", "--option", "rate=0",
        ],
    );
    ok(&g);
    let ids: Vec<i64> = stdout(&g)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["order_id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let failing = ids.iter().filter(|id| *id % 10 == 0).count();
    let rows = json_lines(&d.join("out.jsonl"));
    assert!(failing > 0);
    assert_eq!(rows.len(), ids.len() - failing);
    assert!(
        rows.iter()
            .all(|r| r["order_id"].as_i64().unwrap() % 10 != 0 && r["one"] == 1)
    );
    let finished = log_event(&stderr(&o), "pipeline finished").unwrap();
    assert_eq!(finished["bad_records"].as_u64(), Some(failing as u64));
}

pub fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let (head, rest) = body.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), rest.to_string())
}

#[test]
fn admin_endpoint_serves_prometheus_metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("p.sql"), UNBOUNDED);
    let mut r = Running::start(d, &["p.sql"]);
    let ready = r.wait_for_log(
        "admin endpoint: /metrics and /healthz",
        Duration::from_secs(60),
    );
    let addr = ready["addr"].as_str().unwrap().to_string();
    let out = d.join("out.jsonl");
    eventually("output rows", Duration::from_secs(60), || {
        std::fs::metadata(&out)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    });
    let (status, health) = http_get(&addr, "/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(health.contains("ok"));
    let mut metrics = String::new();
    eventually("metrics", Duration::from_secs(30), || {
        metrics = http_get(&addr, "/metrics").1;
        metrics.contains("tributary_rows_in_total")
    });
    for name in [
        "tributary_rows_out_total{pipeline=\"p\",operator=\"orders\"}",
        "tributary_rows_in_total{pipeline=\"p\",operator=\"out\"}",
        "tributary_processing_seconds",
        "tributary_channel_fill_ratio",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
    let (status, _) = http_get(&addr, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    r.sigterm();
    let (code, err) = r.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
}
