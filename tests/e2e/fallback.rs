//! The broker-outage fallback seen from the CLI: `tributary fallback status` over the
//! local store, and the `[fallback]` configuration checked at start.

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
