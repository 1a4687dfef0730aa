//! DynamoDB end to end, against the test server (`scripts/dynamodb`, found through
//! `TRIBUTARY_TEST_DYNAMODB`; credentials from the AWS SDK's chain, which
//! `scripts/test` exports): a changelog into a table under repeated `kill -9` with a
//! reader watching, checkpoints kept in DynamoDB alone, a second process fenced, and
//! enrichment by point lookups — each checked against DataFusion batch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use datafusion::prelude::SessionContext;
use tributary::connectors::dynamodb::{Dynamo, DynamoSettings};

use crate::common::*;

type Item = HashMap<String, AttributeValue>;

/// The test server's settings with a table prefix of this test's own.
fn settings(test: &str) -> DynamoSettings {
    let endpoint = std::env::var("TRIBUTARY_TEST_DYNAMODB").unwrap_or_else(|_| {
        panic!(
            "TRIBUTARY_TEST_DYNAMODB is not set: start the test server with \
             export TRIBUTARY_TEST_DYNAMODB=\"$(scripts/dynamodb start | tail -n 1)\" \
             and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY set to anything (scripts/test does both)"
        )
    });
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    DynamoSettings {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint),
        table_prefix: format!("{test}_{}_{nanos}_", std::process::id()),
        create_tables: true,
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(500),
        request_timeout: Duration::from_secs(10),
        outage_timeout: Duration::from_secs(60),
    }
}

/// `tributary.toml` in `d` pointing the binary at the test server.
fn configure(d: &Path, s: &DynamoSettings) {
    write(
        &d.join("tributary.toml"),
        &format!(
            "[dynamodb]\nendpoint = \"{}\"\nregion = \"us-east-1\"\ntable_prefix = \"{}\"\n",
            s.endpoint.as_deref().unwrap(),
            s.table_prefix
        ),
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn scan(d: &Dynamo, table: &str) -> Vec<Item> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = match d
            .client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.clone())
            .send()
            .await
        {
            Ok(p) => p,
            // Not created yet.
            Err(e) if format!("{e:?}").contains("ResourceNotFoundException") => return out,
            Err(e) => panic!("scan {table}: {e:?}"),
        };
        out.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key.filter(|k| !k.is_empty());
        if start.is_none() {
            return out;
        }
    }
}

fn n(item: &Item, k: &str) -> i64 {
    match item.get(k) {
        Some(AttributeValue::N(v)) => v.parse().unwrap(),
        other => panic!("{k}: {other:?} in {item:?}"),
    }
}

fn version(item: &Item) -> u128 {
    match item.get("_version") {
        Some(AttributeValue::N(v)) => v.parse().unwrap(),
        other => panic!("_version: {other:?}"),
    }
}

/// The table's rows as JSON objects of `columns` (numbers), for comparing with batch.
fn rows(items: &[Item], columns: &[&str]) -> Vec<serde_json::Value> {
    items
        .iter()
        .map(|i| {
            serde_json::Value::Object(
                columns
                    .iter()
                    .map(|c| (c.to_string(), n(i, c).into()))
                    .collect(),
            )
        })
        .collect()
}

const PER_RESTAURANT: &str = "SELECT restaurant_id, count(*) AS orders, count(DISTINCT customer_id) AS customers \
    FROM orders GROUP BY restaurant_id HAVING count(*) % 5 <> 0";

/// The batch answer of `PER_RESTAURANT` over the events the generator makes with
/// `options`.
async fn per_restaurant_batch(
    d: &Path,
    seed: &str,
    count: &str,
    options: &[&str],
) -> Vec<serde_json::Value> {
    std::fs::create_dir_all(d.join("oracle")).unwrap();
    generate(d, "orders", seed, count, options, "oracle/orders.jsonl");
    let ctx = SessionContext::new();
    register_generated(&ctx, "orders", "orders", &[d.join("oracle/orders.jsonl")]);
    batches_as_json(&batch_sql(&ctx, PER_RESTAURANT).await)
}

/// The latest committed checkpoint of `pipeline` in DynamoDB (0: none).
fn latest_in_dynamodb(rt: &tokio::runtime::Runtime, d: &Dynamo, pipeline: &str) -> u64 {
    rt.block_on(async {
        let head = d
            .client
            .get_item()
            .table_name(d.table_name("tributary_checkpoints"))
            .consistent_read(true)
            .key("pipeline", AttributeValue::S(pipeline.into()))
            .key("item", AttributeValue::S("head".into()))
            .send()
            .await;
        match head
            .ok()
            .and_then(|h| h.item)
            .and_then(|i| i.get("latest").cloned())
        {
            Some(AttributeValue::N(v)) => v.parse().unwrap(),
            _ => 0,
        }
    })
}

/// A changelog (an unwindowed aggregate whose HAVING also deletes groups) into a
/// DynamoDB table, at parallelism 2, killed with `kill -9` ten times while the
/// generator is still producing: the table at the end equals the batch answer, and a
/// reader scanning all along never saw an item go back to an older version, nor two
/// contents under one version.
#[test]
fn a_changelog_killed_ten_times_equals_the_batch_answer_and_no_read_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = settings("crash");
    configure(d, &s);
    let (seed, count, rate) = ("11", "30000", "2500");
    write(
        &d.join("p.sql"),
        &format!(
            // One generator task: `tributary generate` (the oracle's input) makes the
            // same events as a single task; the aggregate and the sink run at 2.
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '{seed}', \
             count = '{count}', rate = '{rate}', parallelism = '1');\n\
             CREATE TABLE per_restaurant WITH (connector = 'dynamodb', table = 'per_restaurant', \
             partition_key = 'restaurant_id');\n\
             INSERT INTO per_restaurant {PER_RESTAURANT};\n"
        ),
    );
    write(
        &d.join("p.yaml"),
        "name: ddbcrash\nsql: p.sql\nparallelism: 2\ncheckpoint: { interval: 300ms, dir: checkpoints }\n",
    );
    let rt = runtime();
    let dynamo = rt.block_on(Dynamo::connect(&s)).unwrap();
    let table = dynamo.table_name("per_restaurant");

    // The reader: scans until told to stop, remembering each key's newest version.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, dynamo, table) = (stop.clone(), dynamo.clone(), table.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            let mut seen: BTreeMap<i64, (u128, i64, i64)> = BTreeMap::new();
            let mut violations = Vec::new();
            let mut scans = 0;
            while !stop.load(Ordering::Relaxed) {
                for item in rt.block_on(scan(&dynamo, &table)) {
                    let (k, v) = (n(&item, "restaurant_id"), version(&item));
                    let now = (v, n(&item, "orders"), n(&item, "customers"));
                    if let Some(before) = seen.get(&k)
                        && (now.0 < before.0 || (now.0 == before.0 && now != *before))
                    {
                        violations.push(format!("restaurant {k}: read {now:?} after {before:?}"));
                    }
                    if seen.get(&k).is_none_or(|b| now.0 >= b.0) {
                        seen.insert(k, now);
                    }
                }
                scans += 1;
            }
            (scans, seen.len(), violations)
        })
    };

    let checkpoints = d.join("checkpoints");
    let mut rng: u64 = 0xd1a_0d1a;
    let mut next = |m: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % m
    };
    let mut kills = 0;
    loop {
        let before = committed(&checkpoints);
        let mut run = Running::start(d, &["p.yaml"]);
        if kills == 10 {
            let (code, stderr) = run.wait(Duration::from_secs(180));
            assert_eq!(code, Some(0), "{stderr}");
            break;
        }
        let wanted = before + 1 + next(3);
        let deadline = Instant::now() + Duration::from_secs(60);
        while committed(&checkpoints) < wanted {
            assert!(
                run.child.try_wait().unwrap().is_none(),
                "the input ran out after {kills} kills: make it longer"
            );
            assert!(Instant::now() < deadline, "no checkpoint progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(next(150)));
        run.child.kill().unwrap(); // SIGKILL, while the generator is still producing
        run.child.wait().unwrap();
        kills += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (scans, keys, violations) = reader.join().unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        scans >= 10 && keys > 50,
        "the reader read: {scans} scans, {keys} keys"
    );

    let got = rows(
        &rt.block_on(scan(&dynamo, &table)),
        &["restaurant_id", "orders", "customers"],
    );
    let expected = rt.block_on(per_restaurant_batch(
        d,
        seed,
        count,
        &[&format!("rate={rate}")],
    ));
    assert!(expected.len() > 100, "{}", expected.len());
    assert_eq!(canonical(&got), canonical(&expected));
}

/// Checkpoints in DynamoDB: the pipeline is killed, every local file it made is
/// deleted, and it resumes from DynamoDB alone with the exact batch answer.
#[test]
fn a_pipeline_resumes_from_checkpoints_in_dynamodb_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = settings("resume");
    configure(d, &s);
    let (seed, count, rate) = ("12", "16000", "3000");
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '{seed}', \
             count = '{count}', rate = '{rate}');\n\
             CREATE TABLE per_restaurant WITH (connector = 'dynamodb', table = 'per_restaurant', \
             partition_key = 'restaurant_id');\n\
             INSERT INTO per_restaurant {PER_RESTAURANT};\n"
        ),
    );
    write(
        &d.join("p.yaml"),
        "name: ddbresume\nsql: p.sql\ncheckpoint: { interval: 200ms, store: dynamodb }\n",
    );
    let rt = runtime();
    let dynamo = rt.block_on(Dynamo::connect(&s)).unwrap();
    let mut first = Running::start(d, &["p.yaml"]);
    eventually(
        "two checkpoints in dynamodb",
        Duration::from_secs(60),
        || latest_in_dynamodb(&rt, &dynamo, "ddbresume") >= 2,
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // Nothing local survives: a new machine with the same files.
    for entry in std::fs::read_dir(d).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        if !["p.sql", "p.yaml", "tributary.toml"].contains(&name.as_str()) {
            let p = entry.path();
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
    let o = run(d, &["run", "p.yaml"]);
    ok(&o);
    let resumed = log_event(&stderr(&o), "resuming from checkpoint").expect("resumed");
    assert!(resumed["checkpoint"].as_u64().unwrap() >= 2, "{resumed}");
    assert!(
        resumed["store"].as_str().unwrap().contains("dynamodb"),
        "{resumed}"
    );
    let got = rows(
        &rt.block_on(scan(&dynamo, &dynamo.table_name("per_restaurant"))),
        &["restaurant_id", "orders", "customers"],
    );
    let expected = rt.block_on(per_restaurant_batch(
        d,
        seed,
        count,
        &[&format!("rate={rate}")],
    ));
    assert_eq!(canonical(&got), canonical(&expected));
    // `tributary checkpoints` lists them from DynamoDB.
    let o = run(d, &["checkpoints", "p.yaml"]);
    ok(&o);
    assert!(
        stdout(&o).contains("tributary_checkpoints (pipeline ddbresume)"),
        "{}",
        stdout(&o)
    );
}

/// Two processes of one pipeline on two machines (directories) sharing DynamoDB: the
/// one that commits second on top of the same checkpoint is fenced — it stops with
/// CHK002, naming the other writer — and the other goes on.
#[test]
fn a_second_process_of_the_same_pipeline_is_fenced() {
    let s = settings("fence");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for dir in &dirs {
        let d = dir.path();
        configure(d, &s);
        write(
            &d.join("p.sql"),
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '13', rate = '2000');\n\
             CREATE TABLE per_restaurant WITH (connector = 'dynamodb', table = 'per_restaurant', \
             partition_key = 'restaurant_id');\n\
             INSERT INTO per_restaurant SELECT restaurant_id, count(*) AS orders FROM orders GROUP BY restaurant_id;\n",
        );
        write(
            &d.join("p.yaml"),
            "name: ddbfence\nsql: p.sql\ncheckpoint: { interval: 200ms, store: dynamodb }\n",
        );
    }
    let rt = runtime();
    let dynamo = rt.block_on(Dynamo::connect(&s)).unwrap();
    let mut a = Running::start(dirs[0].path(), &["p.yaml"]);
    eventually("a's first checkpoint", Duration::from_secs(60), || {
        latest_in_dynamodb(&rt, &dynamo, "ddbfence") >= 1
    });
    let mut b = Running::start(dirs[1].path(), &["p.yaml"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (fenced, other) = loop {
        if a.child.try_wait().unwrap().is_some() {
            break (a, b);
        }
        if b.child.try_wait().unwrap().is_some() {
            break (b, a);
        }
        assert!(Instant::now() < deadline, "neither process was fenced");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (code, stderr) = fenced.wait(Duration::from_secs(10));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("CHK002") && stderr.contains("another writer"),
        "{stderr}"
    );
    let mut other = other;
    assert!(
        other.child.try_wait().unwrap().is_none(),
        "the other process goes on"
    );
    let before = latest_in_dynamodb(&rt, &dynamo, "ddbfence");
    eventually(
        "the other's next checkpoint",
        Duration::from_secs(30),
        || latest_in_dynamodb(&rt, &dynamo, "ddbfence") > before,
    );
    other.child.kill().unwrap();
    other.child.wait().unwrap();
}

/// Enrichment by point reads of a DynamoDB table equals the batch join with the
/// same reference rows, misses included (only even restaurant ids are in the table):
/// `LEFT JOIN` keeps the other orders with NULLs, `JOIN` drops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_joins_on_dynamodb_match_datafusion_batch_with_misses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = settings("lookup");
    configure(d, &s);
    // The reference table, written by a pipeline of its own.
    write(
        &d.join("load.sql"),
        "CREATE TABLE all_restaurants WITH (connector = 'generator', stream = 'restaurants', seed = '7', count = '300');\n\
         CREATE TABLE restaurants WITH (connector = 'dynamodb', table = 'restaurants', partition_key = 'restaurant_id');\n\
         INSERT INTO restaurants SELECT restaurant_id, name, time_zone FROM all_restaurants WHERE restaurant_id % 2 = 0;\n",
    );
    write(&d.join("load.yaml"), "name: load\nsql: load.sql\n");
    ok(&run(d, &["run", "load.yaml"]));
    generate(d, "orders", "7", "4000", &["rate=0"], "orders.jsonl");
    generate(d, "restaurants", "7", "300", &[], "all.jsonl");
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '7', count = '4000', rate = '0');\n\
             CREATE TABLE restaurants (restaurant_id BIGINT, name VARCHAR, time_zone VARCHAR) \
             WITH (connector = 'dynamodb', table = 'restaurants', key = 'restaurant_id', lookup = 'true', cache_size = '50');\n\
             CREATE TABLE left_out WITH (connector = 'file', path = 'left/rows.jsonl');\n\
             CREATE TABLE inner_out WITH (connector = 'file', path = 'inner/rows.jsonl');\n\
             INSERT INTO left_out {};\n\
             INSERT INTO inner_out {};\n",
            crate::lookup::Q_LEFT,
            crate::lookup::Q_INNER
        ),
    );
    write(
        &d.join("p.yaml"),
        "name: enrich\nsql: p.sql\nparallelism: 2\nbatch: { size: 256 }\n",
    );
    ok(&run(d, &["run", "p.yaml"]));

    let ctx = SessionContext::new();
    register_generated(&ctx, "orders", "orders", &[d.join("orders.jsonl")]);
    register_generated(
        &ctx,
        "all_restaurants",
        "restaurants",
        &[d.join("all.jsonl")],
    );
    ctx.sql("CREATE VIEW restaurants AS SELECT restaurant_id, name, time_zone FROM all_restaurants WHERE restaurant_id % 2 = 0")
        .await
        .unwrap();
    crate::lookup::assert_joins_match_batch(&ctx, d).await;
}

/// A lookup joined on anything but its key cannot be answered by point reads: refused
/// at start with the position.
#[test]
fn a_dynamodb_lookup_not_joined_on_its_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = settings("refuse");
    configure(d, &s);
    write(
        &d.join("p.sql"),
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n\
         CREATE TABLE restaurants (restaurant_id BIGINT, name VARCHAR) \
         WITH (connector = 'dynamodb', table = 'restaurants', key = 'restaurant_id', lookup = 'true');\n\
         CREATE TABLE out WITH (connector = 'stdout');\n\
         INSERT INTO out SELECT o.order_id, r.name FROM orders o JOIN restaurants r ON o.channel = r.name;\n",
    );
    let o = run(d, &["check", "p.sql"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("p.sql:4:"), "{err}");
    assert!(
        err.contains("join it with an equality on its key column restaurant_id"),
        "{err}"
    );
}
