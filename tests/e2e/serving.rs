//! The `serving` sink: the order-tracking reference pipeline's latest status per
//! order at `GET /orders/<id>` on the admin port, a customer's orders by query, and
//! the served rows kept across a `kill -9` through the checkpoint.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use crate::fallback_chaos::http_get;

/// The reference order_status pipeline in `d`, checkpointing every 300 ms.
fn layout(d: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(d.join("sql")).unwrap();
    std::fs::copy(
        root.join("sql/order_status.sql"),
        d.join("sql/order_status.sql"),
    )
    .unwrap();
    let yaml = std::fs::read_to_string(root.join("pipelines/order_status.yaml"))
        .unwrap()
        .replace(
            "checkpoint: { interval: 10s }",
            "checkpoint: { interval: 300ms }",
        );
    assert!(yaml.contains("interval: 300ms"));
    write(&d.join("pipelines/order_status.yaml"), &yaml);
}

/// `GET path`: (status, rows); an endpoint that does not answer within the read
/// timeout (a loaded machine) gives no rows, so `eventually` asks again.
fn get_json(addr: &str, path: &str) -> (String, Vec<serde_json::Value>) {
    let Some((code, body)) = http_get(addr, path) else {
        return ("no answer".to_string(), vec![]);
    };
    let status = code.to_string();
    if code != 200 {
        return (status, vec![]);
    }
    let rows = body
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (status, rows)
}

#[test]
fn order_status_is_served_by_id_and_customer_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    layout(d);
    let mut r = Running::start(d, &["order_status", "--progress", "off"]);
    let ready = r.wait_for_log(
        "admin endpoint: /metrics and /healthz",
        Duration::from_secs(60),
    );
    let addr = ready["addr"].as_str().unwrap().to_string();

    // Finished orders, as served.
    let mut finished: Vec<serde_json::Value> = Vec::new();
    eventually("finished orders served", Duration::from_secs(90), || {
        // 404 until the sink has started.
        let (_, rows) = get_json(&addr, "/orders?is_final=true&limit=50");
        finished = rows;
        finished.len() == 50
    });
    for row in &finished {
        let id = row["order_id"].as_i64().unwrap();
        let (status, one) = get_json(&addr, &format!("/orders/{id}"));
        assert!(status.contains("200"), "{status}");
        assert_eq!(one[0]["order_id"], id);
        assert!(
            ["picked_up", "delivered", "cancelled"].contains(&one[0]["status"].as_str().unwrap())
        );
    }
    // A customer's orders: every row served has that customer.
    let customer = finished
        .iter()
        .find_map(|r| r["customer_id"].as_i64())
        .expect("an app order");
    let (_, mine) = get_json(&addr, &format!("/orders?customer_id={customer}"));
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|r| r["customer_id"] == customer));
    let (status, _) = get_json(&addr, "/orders/999999999999");
    assert!(status.contains("404"), "{status}");
    // Freshness (latency_column): every served batch's event-time age is recorded.
    let (_, metrics) = http_get(&addr, "/metrics").expect("/metrics answers");
    let served_batches = metrics
        .lines()
        .find(|l| {
            l.starts_with("tributary_sink_latency_seconds_count") && l.contains("orders_served")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(served_batches > 0.0, "no freshness samples in /metrics");

    // Two checkpoints after those rows were served: they are in both.
    let checkpoints = d.join("data/checkpoints/order_status");
    let seen = committed(&checkpoints);
    eventually("two more checkpoints", Duration::from_secs(60), || {
        committed(&checkpoints) >= seen + 2
    });
    let mut child = r.child;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let mut r = Running::start(d, &["order_status", "--progress", "off"]);
    let ready = r.wait_for_log(
        "admin endpoint: /metrics and /healthz",
        Duration::from_secs(60),
    );
    let addr = ready["addr"].as_str().unwrap().to_string();
    // The generator resumes after those orders' events: only the checkpoint can serve them.
    eventually("the restored rows served", Duration::from_secs(60), || {
        finished.iter().all(|row| {
            let id = row["order_id"].as_i64().unwrap();
            let (status, one) = get_json(&addr, &format!("/orders/{id}"));
            status.contains("200") && one[0] == *row
        })
    });
    r.sigterm();
    let (code, err) = r.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
}
