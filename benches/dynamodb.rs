//! DynamoDB: the sink against a plain SDK loop, lookups by key against the in-memory
//! lookup, checkpoint commits against the local store. Against a DynamoDB-API
//! server: `TRIBUTARY_BENCH_DYNAMODB` (an endpoint), or dynalite started here with
//! `scripts/dynamodb` (in memory, one Node.js process: its own cost dominates).
//!
//! 1. Sink: `TRIBUTARY_BENCH_ITEMS` (default 40,000) order-status items written by a
//!    plain SDK loop (`BatchWriteItem`s of 25 one after the other, unprocessed items
//!    sent again), then through the sink (`write` + `finish`) in `batch` mode and in
//!    `conditional` mode (the default: one versioned conditional write per item,
//!    16 in flight): rows/s and the ratio to the loop (the target: ≥ 0.8).
//! 2. Lookup: a file of `TRIBUTARY_BENCH_ROWS` (default 200,000) orders joined with
//!    20,000 restaurants, keys drawn so that 95% of lookups hit the cache: the
//!    in-memory lookup (a file) and the DynamoDB lookup table: rows/s and the ratio.
//! 3. Checkpoint commit (a 1 MB blob, then the commit): ms per checkpoint, DynamoDB
//!    (blobs in the table, blobs local) and the local store.
//!
//! `AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x cargo bench --bench dynamodb` (the SDK's
//! default credential chain; any value for a local server).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use tributary::checkpoint::{
    BlobPlacement, CheckpointMeta, CheckpointStore, DynamoCheckpointStore, LocalCheckpointStore,
};
use tributary::connectors::dynamodb::{Dynamo, DynamoConfig, DynamoSettings, TableSpec};
use tributary::connectors::{ConnectorEnv, Options, TableRequest};
use tributary::engine::{Runtime, RuntimeSettings, TaskInfo};
use tributary::planner::{PlanSettings, SqlPlanner, SqlText};

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The endpoint, and the directory of a dynalite started here (stopped at the end).
fn endpoint() -> (String, Option<tempfile::TempDir>) {
    if let Ok(e) = std::env::var("TRIBUTARY_BENCH_DYNAMODB") {
        return (e, None);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .args(["scripts/dynamodb", "start", "--dir"])
        .arg(dir.path())
        .output()
        .expect("scripts/dynamodb runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    (e, Some(dir))
}

fn settings(endpoint: &str, prefix: &str) -> DynamoSettings {
    DynamoConfig {
        region: "us-east-1".into(),
        endpoint: endpoint.into(),
        table_prefix: prefix.into(),
        ..DynamoConfig::default()
    }
    .settings()
    .unwrap()
}

fn env_for(s: &DynamoSettings) -> ConnectorEnv {
    ConnectorEnv {
        dynamodb: DynamoConfig {
            region: "us-east-1".into(),
            endpoint: s.endpoint.clone().unwrap(),
            table_prefix: s.table_prefix.clone(),
            ..DynamoConfig::default()
        },
        ..ConnectorEnv::default()
    }
}

/// `n` order-status rows: id, customer, status, time.
fn status_rows(n: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new(
            "status_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let statuses = ["placed", "paid", "preparing", "ready", "picked_up"];
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..n as i64)),
        Arc::new(Int64Array::from_iter_values(
            (0..n as i64).map(|i| (i * 7919) % 50_000),
        )),
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| statuses[i % 5]),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                (0..n as i64).map(|i| 1_767_225_600_000_000 + i * 1000),
            )
            .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

async fn plain_loop(d: &Dynamo, table: &str, batch: &RecordBatch) -> f64 {
    let items: Vec<HashMap<String, AttributeValue>> = (0..batch.num_rows())
        .map(|r| {
            let mut item = tributary::connectors::dynamodb::types::item(batch, r).unwrap();
            item.insert("_version".into(), AttributeValue::N("1".into()));
            item
        })
        .collect();
    let t = Instant::now();
    for chunk in items.chunks(25) {
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|i| {
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(i.clone()))
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect();
        while !requests.is_empty() {
            let out = d
                .client
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .unwrap();
            requests = out
                .unprocessed_items
                .and_then(|mut m| m.remove(table))
                .unwrap_or_default();
        }
    }
    batch.num_rows() as f64 / t.elapsed().as_secs_f64()
}

async fn through_sink(s: &DynamoSettings, table: &str, mode: &str, batch: &RecordBatch) -> f64 {
    let env = env_for(s);
    let req = TableRequest {
        table,
        env: &env,
        schema: None,
        base_dir: std::path::Path::new("."),
    };
    let opts = Options::new(
        table,
        "dynamodb",
        [
            ("table", table),
            ("partition_key", "order_id"),
            ("write_mode", mode),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let factory = tributary::connectors::sink(&req, opts).unwrap();
    let task = TaskInfo {
        pipeline: "bench".into(),
        node: table.into(),
        partition: 0,
        parallelism: 1,
        state: tributary::state::memory_backend(),
    };
    let mut sink = factory.create(&task, batch.schema()).unwrap();
    let t = Instant::now();
    for start in (0..batch.num_rows()).step_by(8192) {
        let len = 8192.min(batch.num_rows() - start);
        sink.write(batch.slice(start, len)).await.unwrap();
    }
    sink.finish().await.unwrap();
    batch.num_rows() as f64 / t.elapsed().as_secs_f64()
}

/// Orders as JSON lines whose restaurant keys hit a warm cache: with `cold`, every 20th
/// row a key seen once (95% hits); the others from 1,000 hot keys.
fn orders_file(dir: &std::path::Path, rows: usize, cold: bool) -> std::path::PathBuf {
    let mut text = String::with_capacity(rows * 60);
    for i in 0..rows {
        let r = if cold && i % 20 == 0 {
            1_000 + (i / 20) % 19_000
        } else {
            i % 1_000
        };
        text.push_str(&format!(
            "{{\"order_id\":{i},\"restaurant_id\":{r},\"total\":{}.5}}\n",
            i % 40
        ));
    }
    let p = dir.join("orders.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

async fn join_rate(
    dir: &std::path::Path,
    env: ConnectorEnv,
    restaurants: &str,
    rows: usize,
) -> f64 {
    let sql = format!(
        "CREATE TABLE orders (order_id BIGINT, restaurant_id BIGINT, total DOUBLE) \
           WITH (connector = 'file', path = 'orders.jsonl', format = 'json');\n\
         {restaurants}\n\
         CREATE TABLE out WITH (connector = 'blackhole');\n\
         INSERT INTO out SELECT o.order_id, r.name, o.total FROM orders o \
           LEFT JOIN restaurants r ON o.restaurant_id = r.restaurant_id;\n"
    );
    let planned = SqlPlanner::new()
        .with_env(env)
        .plan_pipeline(
            "join",
            &SqlText::file(sql, dir.join("p.sql")),
            dir,
            &PlanSettings::default(),
        )
        .await
        .unwrap();
    let t = Instant::now();
    Runtime::run(
        planned.graph,
        RuntimeSettings::default(),
        std::future::pending(),
    )
    .await
    .unwrap();
    rows as f64 / t.elapsed().as_secs_f64()
}

async fn commit_ms(store: &dyn CheckpointStore, n: u64) -> f64 {
    let blob: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let t = Instant::now();
    let mut previous = None;
    for id in 1..=n {
        store.put_blob(id, "op/0", blob.clone()).await.unwrap();
        let mut meta: CheckpointMeta = serde_json::from_value(serde_json::json!({
            "id": id, "pipeline": "bench", "started_ms": 0, "duration_ms": 1, "bytes": blob.len(),
            "parallelism": {"op": 1}, "blobs": ["op/0"], "savepoint": null, "operators": {}
        }))
        .unwrap();
        meta.id = id;
        store.commit(&meta, previous).await.unwrap();
        previous = Some(id);
    }
    t.elapsed().as_secs_f64() * 1000.0 / n as f64
}

/// The restaurants as a DynamoDB lookup table.
const KEYED_RESTAURANTS: &str = "CREATE TABLE restaurants (restaurant_id BIGINT, name VARCHAR) \
    WITH (connector = 'dynamodb', table = 'restaurants', key = 'restaurant_id', lookup = 'true', \
    cache_ttl = '10m');";

fn main() {
    if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        eprintln!(
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (any value for a local server): \
             the SDK's default credential chain reads them"
        );
        std::process::exit(2);
    }
    let (endpoint, _server) = endpoint();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("bench{}_", std::process::id());
    let s = settings(&endpoint, &prefix);
    rt.block_on(async {
        let d = Dynamo::connect(&s).await.unwrap();
        // 1. Sink.
        let n = env_count("TRIBUTARY_BENCH_ITEMS", 40_000);
        let batch = status_rows(n);
        let spec = |name: &str| TableSpec {
            name: d.table_name(name),
            partition_key: ("order_id".into(), aws_sdk_dynamodb::types::ScalarAttributeType::N),
            sort_key: None,
            indexes: vec![],
        };
        d.ensure_table(&spec("plain")).await.unwrap();
        let plain = plain_loop(&d, &d.table_name("plain"), &batch).await;
        let batched = through_sink(&s, "batched", "batch", &batch).await;
        let conditional = through_sink(&s, "conditional", "conditional", &batch).await;
        println!("\nsink, {n} items ({endpoint})");
        println!("{:<44} {:>12} {:>8}", "", "rows/s", "ratio");
        println!("{:<44} {:>12.0} {:>8.2}", "plain SDK BatchWriteItem loop", plain, 1.0);
        println!("{:<44} {:>12.0} {:>8.2}", "sink, write_mode = 'batch'", batched, batched / plain);
        println!("{:<44} {:>12.0} {:>8.2}", "sink, conditional (versioned, 16 in flight)", conditional, conditional / plain);

        // 2. Lookup.
        let rows = env_count("TRIBUTARY_BENCH_ROWS", 200_000);
        let dir = tempfile::tempdir().unwrap();
        orders_file(dir.path(), rows, true);
        let mut refs = String::new();
        let mut requests = Vec::new();
        for r in 0..20_000i64 {
            refs.push_str(&format!("{{\"restaurant_id\":{r},\"name\":\"restaurant {r}\"}}\n"));
            requests.push(
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .item("restaurant_id", AttributeValue::N(r.to_string()))
                            .item("name", AttributeValue::S(format!("restaurant {r}")))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            );
        }
        std::fs::write(dir.path().join("restaurants.jsonl"), refs).unwrap();
        d.ensure_table(&TableSpec {
            name: d.table_name("restaurants"),
            partition_key: ("restaurant_id".into(), aws_sdk_dynamodb::types::ScalarAttributeType::N),
            sort_key: None,
            indexes: vec![],
        })
        .await
        .unwrap();
        d.batch_write(&d.table_name("restaurants"), requests).await.unwrap();
        let memory = join_rate(
            dir.path(),
            ConnectorEnv::default(),
            "CREATE TABLE restaurants (restaurant_id BIGINT, name VARCHAR) WITH (connector = 'file', \
             path = 'restaurants.jsonl', format = 'json', lookup = 'true');",
            rows,
        )
        .await;
        let keyed = join_rate(
            dir.path(),
            env_for(&s),
            KEYED_RESTAURANTS,
            rows,
        )
        .await;
        orders_file(dir.path(), rows, false);
        let hot = join_rate(
            dir.path(),
            env_for(&s),
            KEYED_RESTAURANTS,
            rows,
        )
        .await;
        println!("\nlookup join, {rows} orders, 95% of lookups cached");
        println!("{:<44} {:>12} {:>8}", "", "rows/s", "ratio");
        println!("{:<44} {:>12.0} {:>8.2}", "in-memory lookup (file, 20,000 rows)", memory, 1.0);
        println!("{:<44} {:>12.0} {:>8.2}", "dynamodb lookup (BatchGetItem + cache)", keyed, keyed / memory);
        println!("{:<44} {:>12.0} {:>8.2}", "dynamodb lookup, 1,000 keys (99.5% cached)", hot, hot / memory);

        // 3. Checkpoint commits.
        let commits = 30;
        let local_dir = tempfile::tempdir().unwrap();
        let local = commit_ms(&LocalCheckpointStore::new(local_dir.path()), commits).await;
        let table_blobs = commit_ms(&DynamoCheckpointStore::new("bench-table", &s, BlobPlacement::Table), commits).await;
        let blobs_dir = tempfile::tempdir().unwrap();
        let local_blobs = commit_ms(
            &DynamoCheckpointStore::new("bench-local", &s, BlobPlacement::Local(blobs_dir.path().into())),
            commits,
        )
        .await;
        println!("\ncheckpoint (1 MB blob + commit), {commits} in a row");
        println!("{:<44} {:>12}", "", "ms each");
        println!("{:<44} {:>12.1}", "local directory", local);
        println!("{:<44} {:>12.1}", "dynamodb, blobs in the table", table_blobs);
        println!("{:<44} {:>12.1}", "dynamodb, blobs local", local_blobs);
    });
}
