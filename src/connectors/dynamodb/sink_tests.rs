//! The DynamoDB sink against the test server (`TRIBUTARY_TEST_DYNAMODB`), driven
//! through the engine's sink protocol by hand: restores, a fenced writer's late
//! write, changelogs, refusals, and DynamoDB pushing back.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::*;
use crate::dynamodb::{Dynamo, DynamoSettings, test_settings};

fn schema(changelog: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("id", DataType::Int64, true),
        Field::new("status", DataType::Utf8, true),
    ];
    if changelog {
        fields.push(Field::new(OP_COLUMN, DataType::Utf8, false));
    }
    Arc::new(Schema::new(fields))
}

fn rows(rows: &[(Option<i64>, &str, &str)], changelog: bool) -> RecordBatch {
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        )),
    ];
    if changelog {
        cols.push(Arc::new(StringArray::from(
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        )));
    }
    RecordBatch::try_new(schema(changelog), cols).unwrap()
}

fn factory(settings: &DynamoSettings, extra: &[(&str, &str)]) -> Arc<dyn SinkFactory> {
    let env = crate::connectors::ConnectorEnv {
        dynamodb: crate::connectors::dynamodb::DynamoConfig {
            region: "us-east-1".into(),
            endpoint: settings.endpoint.clone().unwrap(),
            table_prefix: settings.table_prefix.clone(),
            max_attempts: 2,
            initial_backoff: "10ms".into(),
            max_backoff: "100ms".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let req = TableRequest {
        table: "status",
        env: &env,
        schema: None,
        base_dir: std::path::Path::new("."),
    };
    let mut values: BTreeMap<String, String> = [("table", "status"), ("partition_key", "id")]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    values.retain(|_, v| !v.is_empty());
    let mut opts = Options::new("status", "dynamodb", values);
    let f = sink(&req, &mut opts).unwrap();
    opts.finish().unwrap();
    f
}

fn task() -> TaskInfo {
    crate::connectors::dead_letters::conformance::task("ddb-sink-test")
}

/// The table: id → (status, version).
async fn table(settings: &DynamoSettings) -> BTreeMap<i64, (String, String)> {
    let d = Dynamo::connect(settings).await.unwrap();
    let mut out = BTreeMap::new();
    let mut start = None;
    loop {
        let page = d
            .client
            .scan()
            .table_name(format!("{}status", settings.table_prefix))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        for item in page.items() {
            let id = match &item["id"] {
                AttributeValue::N(n) => n.parse().unwrap(),
                other => panic!("{other:?}"),
            };
            let s = |k: &str| match item.get(k) {
                Some(AttributeValue::S(s)) => s.clone(),
                Some(AttributeValue::N(n)) => n.clone(),
                _ => String::new(),
            };
            out.insert(id, (s("status"), s("_version")));
        }
        start = page.last_evaluated_key.filter(|k| !k.is_empty());
        if start.is_none() {
            return out;
        }
    }
}

fn statuses(t: &BTreeMap<i64, (String, String)>) -> BTreeMap<i64, &str> {
    t.iter().map(|(k, (s, _))| (*k, s.as_str())).collect()
}

/// Only committed epochs reach the table; a restore writes the restored checkpoint's
/// epoch again; a writer that lost (fenced) and writes late cannot put an older
/// version over a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_holds_committed_epochs_and_no_write_replaces_a_newer_version() {
    let settings = test_settings();
    let f = factory(&settings, &[]);
    let mut a = f.create(&task(), schema(false)).unwrap();
    assert!(a.exactly_once());
    a.write(rows(
        &[
            (Some(1), "placed", ""),
            (Some(2), "placed", ""),
            (Some(1), "paid", ""),
        ],
        false,
    ))
    .await
    .unwrap();
    let one = a.pre_commit(1).await.unwrap().unwrap();
    assert!(
        table(&settings).await.is_empty(),
        "nothing before the commit"
    );
    a.commit(1).await.unwrap();
    let after_one = table(&settings).await;
    assert_eq!(
        statuses(&after_one),
        [(1, "paid"), (2, "placed")].into(),
        "a key's last change per epoch"
    );
    // Epoch 2 is pre-committed but its checkpoint never commits (a crash).
    a.write(rows(&[(Some(2), "ready", "")], false))
        .await
        .unwrap();
    let two = a.pre_commit(2).await.unwrap().unwrap();
    drop(a);
    // Restart from checkpoint 1: its epoch is written again, unchanged.
    let mut b = f.create(&task(), schema(false)).unwrap();
    b.exactly_once();
    b.restore(&[(0, one.clone())]).await.unwrap();
    assert_eq!(
        table(&settings).await,
        after_one,
        "rewriting a committed epoch changes nothing"
    );
    b.write(rows(
        &[(Some(2), "preparing", ""), (Some(3), "placed", "")],
        false,
    ))
    .await
    .unwrap();
    b.pre_commit(2).await.unwrap();
    b.commit(2).await.unwrap();
    let now = table(&settings).await;
    assert_eq!(
        statuses(&now),
        [(1, "paid"), (2, "preparing"), (3, "placed")].into()
    );
    // The first writer's checkpoint 2 (fenced, never committed) held `ready`; a late
    // restore of an older checkpoint (1) would write `placed`: neither may land over
    // the newer versions. Here the older epoch 1 is written again late.
    let mut zombie = f.create(&task(), schema(false)).unwrap();
    zombie.exactly_once();
    zombie.restore(&[(0, one)]).await.unwrap();
    assert_eq!(
        table(&settings).await,
        now,
        "an older epoch written late is refused"
    );
    let _ = two;
    // The version is generation × 10⁹ + epoch, the same generation across restores,
    // and fits a signed 64-bit integer.
    let v = |id: i64| now[&id].1.parse::<i64>().unwrap() as u64;
    assert_eq!(v(2) % EPOCHS, 2);
    assert_eq!(v(1) % EPOCHS, 1);
    assert_eq!(v(1) / EPOCHS, v(2) / EPOCHS);
}

/// A changelog is applied by key: `-U` then `+U` updates, `-D` and a lone `-U`
/// delete; an at-least-once sink writes at every flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changelog_is_applied_by_key() {
    let settings = test_settings();
    let f = factory(&settings, &[]);
    let mut s = f.create(&task(), schema(true)).unwrap();
    s.write(rows(
        &[
            (Some(1), "a", "+I"),
            (Some(2), "a", "+I"),
            (Some(3), "a", "+I"),
        ],
        true,
    ))
    .await
    .unwrap();
    s.flush().await.unwrap();
    assert_eq!(
        statuses(&table(&settings).await),
        [(1, "a"), (2, "a"), (3, "a")].into()
    );
    s.write(rows(
        &[
            (Some(1), "a", "-U"),
            (Some(1), "b", "+U"),
            (Some(2), "a", "-D"),
            (Some(3), "a", "-U"),
        ],
        true,
    ))
    .await
    .unwrap();
    s.flush().await.unwrap();
    assert_eq!(statuses(&table(&settings).await), [(1, "b")].into());
    s.write(rows(&[(Some(2), "c", "+I")], true)).await.unwrap();
    s.finish().await.unwrap();
    assert_eq!(
        statuses(&table(&settings).await),
        [(1, "b"), (2, "c")].into()
    );
}

/// Rows that cannot be items are dead letters (class sink), the others are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_cannot_be_items_are_refused_one_by_one() {
    let settings = test_settings();
    let f = factory(&settings, &[]);
    let t = task();
    let mut s = f.create(&t, schema(false)).unwrap();
    let bad = BadRecords::new(
        &t,
        Arc::default(),
        crate::dlq::ErrorPolicy::DeadLetter,
        true,
        None,
    );
    s.report_refusals_to(bad.clone());
    let huge = "x".repeat(MAX_ITEM_BYTES);
    s.write(rows(
        &[
            (Some(1), "ok", ""),
            (None, "no key", ""),
            (Some(2), &huge, ""),
            (Some(3), "ok", ""),
        ],
        false,
    ))
    .await
    .unwrap();
    s.finish().await.unwrap();
    assert_eq!(
        statuses(&table(&settings).await),
        [(1, "ok"), (3, "ok")].into()
    );
    let letters = bad.take_letters();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|l| l.failure_class == BadRecordReason::Sink),
        "{letters:?}"
    );
    assert!(
        letters[0].message.contains("key attribute id is NULL"),
        "{}",
        letters[0].message
    );
    assert!(
        letters[1].message.contains("over DynamoDB's limit"),
        "{}",
        letters[1].message
    );
}

/// Throttled requests and unprocessed batch items (injected by a proxy) are sent
/// again until every item is written, in both write modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_unprocessed_items_are_retried_with_nothing_lost() {
    let real = test_settings();
    let (proxy, injected) =
        crate::dynamodb::chaos::start(real.endpoint.as_deref().unwrap(), 4).await;
    let through = DynamoSettings {
        endpoint: Some(proxy),
        ..real.clone()
    };
    for mode in ["batch", "conditional"] {
        let prefix = format!("{}{mode}_", real.table_prefix);
        let settings = DynamoSettings {
            table_prefix: prefix.clone(),
            ..through.clone()
        };
        let f = factory(&settings, &[("write_mode", mode)]);
        let mut s = f.create(&task(), schema(false)).unwrap();
        let n = 600;
        let statuses_in: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let input: Vec<(Option<i64>, &str, &str)> = (0..n)
            .map(|i| (Some(i), statuses_in[i as usize].as_str(), ""))
            .collect();
        s.write(rows(&input, false)).await.unwrap();
        s.finish().await.unwrap();
        let direct = DynamoSettings {
            table_prefix: prefix,
            ..real.clone()
        };
        let got = table(&direct).await;
        assert_eq!(got.len(), n as usize, "{mode}: every item written");
        assert!(
            got.iter().all(|(k, (s, _))| *s == format!("s{k}")),
            "{mode}"
        );
    }
    assert!(
        injected
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed)
            > 10
    );
    assert!(
        injected
            .unprocessed
            .load(std::sync::atomic::Ordering::Relaxed)
            > 100
    );
}

/// An existing table whose key has another type than the key column makes is refused
/// at start (DDB004), instead of every row becoming a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_whose_key_type_differs_is_refused_at_start() {
    let settings = test_settings();
    let d = Dynamo::connect(&settings).await.unwrap();
    d.ensure_table(&TableSpec {
        name: d.table_name("status"),
        partition_key: ("id".into(), aws_sdk_dynamodb::types::ScalarAttributeType::S),
        sort_key: None,
        indexes: vec![],
    })
    .await
    .unwrap();
    let f = factory(&settings, &[]);
    let mut s = f.create(&task(), schema(false)).unwrap();
    let e = s
        .write(rows(&[(Some(1), "placed", "")], false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "DDB004", "{e}");
    assert!(
        e.to_string()
            .contains("key attribute id is of type S, but its column makes N"),
        "{e}"
    );
}
