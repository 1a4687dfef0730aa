//! `examples/custom_operator`: a binary on the library registers its own Rust operator
//! and its pipeline file deploys it; the official binary refuses the unknown name.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use crate::common::*;

/// The example's binary, built by `cargo test` beside the test binaries.
fn example_bin() -> PathBuf {
    let bin = PathBuf::from(bin());
    bin.parent().unwrap().join("examples/custom_operator")
}

#[test]
fn a_users_own_operator_runs_from_its_pipeline_file_and_equals_an_oracle() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let yaml = root.join("examples/custom_operator/repeat_customers.yaml");
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(example_bin())
        .args([
            "run",
            yaml.to_str().unwrap(),
            "--set",
            "admin.listen=127.0.0.1:0",
            "--progress",
            "off",
        ])
        .current_dir(dir.path())
        .output()
        .expect("cargo test builds the examples");
    ok(&o);
    let got: BTreeSet<(i64, String)> = stdout(&o)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["customer_id"].as_i64().unwrap(),
                v["event_time"].as_str().unwrap().to_string(),
            )
        })
        .collect();

    // The oracle: the same generated orders, each customer's 3rd placed order within 7 days.
    generate(dir.path(), "orders", "42", "50000", &[], "orders.jsonl");
    let mut recent: BTreeMap<i64, VecDeque<i64>> = BTreeMap::new();
    let mut expected = BTreeSet::new();
    for e in json_lines(&dir.path().join("orders.jsonl")) {
        let (Some(customer), Some("order_placed")) =
            (e["customer_id"].as_i64(), e["event_type"].as_str())
        else {
            continue;
        };
        let at = match &e["event_time"] {
            serde_json::Value::Number(n) => n.as_i64().unwrap(),
            v => chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
                .unwrap()
                .timestamp_millis(),
        };
        let q = recent.entry(customer).or_default();
        q.push_back(at);
        while q.front().is_some_and(|t| *t <= at - 7 * 86_400_000) {
            q.pop_front();
        }
        if q.len() == 3 {
            let text = chrono::DateTime::from_timestamp_millis(at)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3f+00:00")
                .to_string();
            expected.insert((customer, text));
        }
    }
    assert!(expected.len() > 100, "{}", expected.len());
    assert_eq!(got, expected);

    // The official binary has no such operator: refused at the pipeline file's entry.
    let o = run(dir.path(), &["check", yaml.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(
            "repeat_customers.yaml:5:5: operator repeaters: no Rust operator named repeat_customers"
        ),
        "{}",
        stderr(&o)
    );
}
