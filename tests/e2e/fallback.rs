//! The broker-outage fallback seen from the CLI: `tributary fallback status` over the
//! local store, `fallback drain|pause|resume` on a running process, and the
//! `[fallback]` configuration checked at start.

use std::time::Duration;

use tributary::fallback::local::LocalFallbackStore;
use tributary::fallback::{FallbackRecord, FallbackStore, Seq, StreamId};

use crate::common::*;

fn record(pipeline: &str, topic: &str, key: &str, index: u64, stored_ms: i64) -> FallbackRecord {
    FallbackRecord {
        stream: StreamId {
            pipeline: pipeline.into(),
            topic: topic.into(),
            key: Some(key.as_bytes().to_vec()),
        },
        seq: Seq {
            checkpoint: 4,
            index,
        },
        value: Some(b"{}".to_vec()),
        headers: Vec::new(),
        timestamp_ms: None,
        stored_ms,
    }
}

/// Status lists what waits per pipeline and topic, as a table or JSON lines, and one
/// pipeline's alone with `--pipeline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_backlog_per_pipeline_and_topic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = run(d, &["fallback", "status"]);
    ok(&o);
    assert!(stdout(&o).contains("nothing waits"), "{}", stdout(&o));
    let store = LocalFallbackStore::open(d.join("data/fallback.sqlite")).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let mut records: Vec<FallbackRecord> = (0..6)
        .map(|i| {
            record(
                "order_tracking",
                "orders.tracking",
                &format!("o{}", i % 3),
                i,
                now - 90_000,
            )
        })
        .collect();
    records.push(record(
        "offers",
        "marketing.offer-triggers",
        "c1",
        0,
        now - 5_000,
    ));
    store.append(&records).await.unwrap();

    let o = run(d, &["fallback", "status"]);
    ok(&o);
    let table = stdout(&o);
    let line = table
        .lines()
        .find(|l| l.starts_with("order_tracking"))
        .expect(&table);
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[..4],
        ["order_tracking", "orders.tracking", "6", "3"],
        "{table}"
    );
    let waited: f64 = cells[4].trim_end_matches('s').parse().unwrap();
    assert!((89.0..600.0).contains(&waited), "{table}");

    let o = run(
        d,
        &[
            "fallback",
            "status",
            "--pipeline",
            "offers",
            "--format",
            "json",
        ],
    );
    ok(&o);
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["topic"], "marketing.offer-triggers");
    assert_eq!(
        (lines[0]["records"].as_u64(), lines[0]["keys"].as_u64()),
        (Some(1), Some(1))
    );
}

/// A wrong `[fallback]` key or value is refused at start, naming it.
#[test]
fn fallback_configuration_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (set, expected) in [
        (
            "fallback.failures=0",
            "fallback.failures: must be at least 1",
        ),
        ("fallback.probe_interval=soon", "fallback.probe_interval"),
        ("fallback.treshold=3", "treshold"),
    ] {
        let o = run(d, &["fallback", "status", "--set", set]);
        assert_eq!(o.status.code(), Some(2), "{set}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("PIP003") && err.contains(expected),
            "{set}: {err}"
        );
    }
}

/// `fallback pause|resume|drain` act on the running process's drain control of a
/// pipeline (created on demand, so any name is accepted), and `fallback status` shows
/// the mode it is in while the process answers; once it is gone, status shows the
/// store alone and the controls say it is unreachable.
#[test]
fn drain_pause_and_resume_act_on_the_running_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("p.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', rate = '200');\n\
         CREATE TABLE out WITH (connector = 'blackhole');\n\
         INSERT INTO out SELECT * FROM orders;\n",
    );
    write(&d.join("p.yaml"), "name: fb\nsql: p.sql\n");
    let mut pipeline = Running::start(d, &["p.yaml"]);
    let admin = pipeline.wait_for_log(
        "admin endpoint: /metrics and /healthz",
        Duration::from_secs(30),
    );
    let listen = format!("admin.listen={}", admin["addr"].as_str().unwrap());
    let fallback = |args: &[&str]| {
        tributary(d)
            .arg("fallback")
            .args(args)
            .args(["--set", &listen])
            .output()
            .unwrap()
    };
    let drain_mode = |name: &str| -> Option<String> {
        let o = fallback(&["status", "--format", "json"]);
        ok(&o);
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["drain"]["pipeline"] == name)
            .map(|v| v["drain"]["mode"].as_str().unwrap().to_string())
    };
    assert_eq!(drain_mode("fb"), None, "no control before the first action");
    for (action, mode, said) in [
        (
            "pause",
            "paused",
            "pipeline fb: drain paused: its waiting keys keep going to the fallback store",
        ),
        (
            "resume",
            "rate-limited",
            "pipeline fb: drain rate-limited (fallback.drain_rate)",
        ),
        (
            "drain",
            "unlimited",
            "pipeline fb: drain unlimited until the backlog is empty",
        ),
    ] {
        let o = fallback(&[action, "--pipeline", "fb"]);
        ok(&o);
        assert_eq!(stdout(&o).trim(), said, "{action}");
        assert_eq!(drain_mode("fb").as_deref(), Some(mode), "after {action}");
    }
    // The table shows the drain beside the (empty) store.
    let o = fallback(&["status"]);
    ok(&o);
    let table = stdout(&o);
    assert!(table.contains("nothing waits"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("fb "))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(row.split_whitespace().nth(1), Some("unlimited"), "{table}");
    // A pipeline the process does not run is accepted: its control is made on demand.
    ok(&fallback(&["pause", "--pipeline", "elsewhere"]));
    assert_eq!(drain_mode("elsewhere").as_deref(), Some("paused"));
    let o = fallback(&["drain"]);
    assert_eq!(o.status.code(), Some(2), "--pipeline is required");

    pipeline.sigterm();
    let (code, err) = pipeline.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    let o = fallback(&["pause", "--pipeline", "fb"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("(is the pipeline running? admin.listen?)"),
        "{}",
        stderr(&o)
    );
    let o = fallback(&["status", "--format", "json"]);
    ok(&o);
    assert_eq!(stdout(&o), "", "no process answers: the store alone, empty");
}
