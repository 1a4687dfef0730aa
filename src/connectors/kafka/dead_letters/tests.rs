//! The Kafka dead-letter store: its contract against the Arrow record, and its
//! properties against a real broker (`TRIBUTARY_TEST_KAFKA`, as every Kafka test: it
//! fails without one, run the suite with `scripts/test`) and the built-in registry.

use std::sync::Arc;

use arrow::datatypes::DataType;

use super::*;
use crate::connectors::dead_letters::{
    DeadLetterStore, DlqError, Filter, Page, ReplayOutcome, Store,
};
use crate::dlq::record::{DeadLetter, Origin, Status, sample};
use crate::engine::Sink;

#[test]
fn dead_letter_contract_matches_the_record_schema() {
    let avro = contract_columns().unwrap();
    let arrow = record::schema();
    let shape = |dt: &DataType| match dt {
        // arrow-avro reads timestamp-millis as UTC under the name "+00:00".
        DataType::Timestamp(unit, Some(_)) => DataType::Timestamp(*unit, Some("UTC".into())),
        other => other.clone(),
    };
    let fields = |s: &SchemaRef| -> Vec<(String, DataType, bool)> {
        s.fields()
            .iter()
            .map(|f| (f.name().clone(), shape(f.data_type()), f.is_nullable()))
            .collect()
    };
    assert_eq!(fields(&avro), fields(&arrow));
    let doc: serde_json::Value = serde_json::from_str(CONTRACT).unwrap();
    assert_eq!(doc["namespace"], "com.tributary.dlq");
    assert_eq!(doc["name"], "DeadLetter");
    for f in doc["fields"].as_array().unwrap() {
        assert!(f["doc"].is_string(), "field {} has no doc", f["name"]);
        if f["type"].is_array() {
            assert_eq!(f["type"][0], "null", "{}", f["name"]);
            assert!(f["default"].is_null() && f.get("default").is_some());
        }
    }
}

fn settings(servers: &str, url: &str, unique: &str) -> KafkaStoreSettings {
    let mut s = KafkaStoreSettings::new(servers, url, &format!("dlqtest.{unique}.{{domain}}.dlq"));
    s.audit_topic = format!("dlqtest.{unique}.audit");
    s.admin_transactional_id = format!("dlqtest-{unique}-admin");
    s.sink_transactional_prefix = format!("dlqtest-{unique}");
    s
}

#[test]
fn topics_follow_the_pattern() {
    let mut s = settings("127.0.0.1:1", "http://127.0.0.1:1", "u");
    s.domains.insert("order_tracking".into(), "orders".into());
    let store = KafkaDeadLetterStore::new(s).unwrap();
    assert_eq!(store.topic_of("order_tracking"), "dlqtest.u.orders.dlq");
    assert_eq!(store.topic_of("sales"), "dlqtest.u.sales.dlq");
    assert!(store.is_dlq_topic("dlqtest.u.orders.dlq"));
    assert!(!store.is_dlq_topic("dlqtest.u..dlq"));
    assert!(!store.is_dlq_topic("dlqtest.u.audit"));
    assert!(!store.is_dlq_topic("orders.order_placed"));
}

use crate::connectors::kafka::test_bootstrap as bootstrap;

fn unique() -> String {
    format!("{}-{:x}", std::process::id(), rand::random::<u64>())
}

/// The built-in registry on a free port, for the life of the returned directory.
async fn registry() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let reg = crate::registry::Registry::open(dir.path()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::registry::server::serve(
        listener,
        Arc::new(reg),
        std::future::pending(),
    ));
    (dir, format!("http://{addr}"))
}

/// A fresh, empty store on the test broker (its own topics, audit topic and admin
/// transactional id) and what must live as long as it.
pub(crate) async fn fresh_store() -> (tempfile::TempDir, Store) {
    let (dir, url) = registry().await;
    let store = KafkaDeadLetterStore::new(settings(&bootstrap(), &url, &unique())).unwrap();
    (dir, Arc::new(store))
}

crate::connectors::dead_letters::conformance::conformance_tests!(multi_thread; fresh_store().await);

use crate::connectors::dead_letters::conformance::task;

fn sink(store: &Store, pipeline: &str) -> Box<dyn Sink> {
    store
        .sink(pipeline)
        .unwrap()
        .create(&task(pipeline), record::schema())
        .unwrap()
}

/// Dead letters of pipeline `pipeline` read from `source_topic`, each with a key and
/// headers.
fn letters(pipeline: &str, source_topic: &str, n: usize) -> Vec<DeadLetter> {
    (0..n)
        .map(|i| {
            let mut l = sample(i);
            l.id = DeadLetter::new_id();
            l.pipeline = pipeline.to_string();
            l.source.topic = Some(source_topic.to_string());
            l.source.key = Some(format!("key-{i}").into_bytes());
            l.source.headers = vec![("trace".into(), vec![i as u8, 0, 255])];
            l.payload = vec![0, 0, 0, 0, 9, i as u8, 200];
            l
        })
        .collect()
}

async fn all(store: &Store) -> Vec<DeadLetter> {
    store
        .list(
            &Filter::default(),
            Page {
                offset: 0,
                limit: usize::MAX,
                after: None,
            },
        )
        .await
        .unwrap()
}

fn sorted(mut v: Vec<DeadLetter>) -> Vec<DeadLetter> {
    v.sort_by(|a, b| (a.first_failure, &a.id).cmp(&(b.first_failure, &b.id)));
    v
}

/// Every committed record of `topic`.
async fn committed(topic: &str) -> Vec<Raw> {
    let config = {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap());
        c
    };
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().unwrap();
        let md = consumer
            .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
            .unwrap();
        let partitions = md.topics()[0]
            .partitions()
            .iter()
            .map(|p| (topic.clone(), p.id()))
            .collect();
        read_partitions(
            config,
            partitions,
            &Default::default(),
            Duration::from_secs(30),
            |w, e| DlqError::store("test", format!("{w}: {e}")),
        )
    })
    .await
    .unwrap()
    .unwrap()
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_written_in_a_checkpoint_transaction_list_with_every_field() {
    let (_dir, store) = fresh_store().await;
    let pipeline = format!("p{}", unique());
    let mut written = letters(&pipeline, "orders.order_placed", 3);
    written[1].source = Origin {
        file: Some("in.jsonl".into()),
        line: Some(4),
        table: Some("orders".into()),
        ..Origin::default()
    };
    written[1].event_time = None;
    written[1].schema_id = None;
    written[2].original_payload = Some(vec![1, 2]);
    written[2].status_reason = Some("note".into());
    written[2].message = "ÉCHEC: ligne tronquée".into();
    written[2].first_failure -= 10;

    let mut s = sink(&store, &pipeline);
    assert!(s.exactly_once());
    s.write(record::to_batch(&written)).await.unwrap();
    s.pre_commit(1).await.unwrap().expect("a held state");
    assert_eq!(
        all(&store).await,
        vec![],
        "nothing visible before the checkpoint commits"
    );
    s.commit(1).await.unwrap();
    assert_eq!(all(&store).await, sorted(written.clone()));
    assert_eq!(
        store.get(&written[1].id).await.unwrap().as_ref(),
        Some(&written[1])
    );
    assert_eq!(store.get(&"0".repeat(32)).await.unwrap(), None);

    let stats = store.stats(&Filter::default()).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].count, stats[0].oldest),
        (3, written[2].first_failure)
    );
    let page = store
        .list(
            &Filter::default(),
            Page {
                offset: 1,
                limit: 1,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page, vec![sorted(written.clone())[1].clone()]);
    let other = Filter {
        pipeline: Some("other".into()),
        ..Filter::default()
    };
    assert_eq!(store.list(&other, Page::default()).await.unwrap(), vec![]);

    // The topic holds Avro in the Confluent wire format, keyed by id.
    let raws = committed(&store_topic(&store, &pipeline)).await;
    assert_eq!(raws.len(), 3);
    for r in &raws {
        assert_eq!(r.value.as_ref().unwrap()[0], 0, "magic byte");
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        assert!(written.iter().any(|l| l.id == key));
    }
}

/// The dead-letter topic of `pipeline` in `store` (a [`KafkaDeadLetterStore`]).
fn store_topic(store: &Store, pipeline: &str) -> String {
    // `describe` is "kafka <pattern> at <servers>".
    let d = store.describe();
    let pattern = d.split(' ').nth(1).unwrap();
    pattern.replace("{domain}", pipeline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_replay_sends_each_record_once_with_its_key_and_headers() {
    let (_dir, store) = fresh_store().await;
    let pipeline = format!("p{}", unique());
    let source = format!("dlqtest.source.{}", unique());
    let written = letters(&pipeline, &source, 3);
    let mut s = sink(&store, &pipeline);
    s.write(record::to_batch(&written)).await.unwrap();
    s.finish().await.unwrap();

    let ids: Vec<String> = written[..2].iter().map(|l| l.id.clone()).collect();
    let outcome = store.replay(&ids, "ana").await.unwrap();
    assert_eq!(
        outcome,
        ReplayOutcome {
            replayed: 2,
            skipped: 0
        }
    );
    let again = store.replay(&ids, "ana").await.unwrap();
    assert_eq!(
        again,
        ReplayOutcome {
            replayed: 0,
            skipped: 2
        }
    );

    let sent = committed(&source).await;
    assert_eq!(
        sent.len(),
        2,
        "each replayed record reaches its source topic once"
    );
    for l in &written[..2] {
        let r = sent
            .iter()
            .find(|r| r.key == l.source.key)
            .expect("the original key");
        assert_eq!(r.value.as_ref(), Some(&l.payload));
        assert_eq!(
            r.headers,
            vec![
                ("trace".to_string(), l.source.headers[0].1.clone()),
                (ID_HEADER.to_string(), l.id.clone().into_bytes()),
                (ATTEMPTS_HEADER.to_string(), b"1".to_vec()),
            ]
        );
    }
    for l in &written[..2] {
        let now = store.get(&l.id).await.unwrap().unwrap();
        assert_eq!(now.status, Status::Replayed);
        assert_eq!(now.payload, l.payload);
    }
    assert_eq!(
        store.get(&written[2].id).await.unwrap().unwrap().status,
        Status::Pending
    );
    let audit = store.audit(10).await.unwrap();
    assert_eq!(
        audit.len(),
        1,
        "a replay that changed nothing leaves no entry"
    );
    assert_eq!(
        (audit[0].actor.as_str(), audit[0].action.as_str()),
        ("ana", "replay")
    );
    assert_eq!(audit[0].ids, ids);

    // Failing again: the pipeline writes it back under its id, pending again.
    let mut back = written[0].clone();
    back.attempts = 2;
    back.last_failure += 1000;
    let mut s = sink(&store, &pipeline);
    s.write(record::to_batch(std::slice::from_ref(&back)))
        .await
        .unwrap();
    s.finish().await.unwrap();
    assert_eq!(store.get(&back.id).await.unwrap(), Some(back));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_replays_discard_edit_and_audit() {
    let (_dir, store) = fresh_store().await;
    let pipeline = format!("p{}", unique());
    let source = format!("dlqtest.source.{}", unique());
    let mut written = letters(&pipeline, &source, 4);
    written[3].source = Origin::default();
    let mut s = sink(&store, &pipeline);
    s.write(record::to_batch(&written)).await.unwrap();
    s.finish().await.unwrap();
    let id = |i: usize| written[i].id.clone();

    let before = all(&store).await;
    let err = store.replay(&[id(0), id(3)], "ana").await.unwrap_err();
    assert!(
        matches!(err, DlqError::NotReplayable { ref id, .. } if *id == written[3].id),
        "{err:?}"
    );
    let err = store
        .replay(&[id(0), "0".repeat(32)], "ana")
        .await
        .unwrap_err();
    assert!(matches!(err, DlqError::NotFound(_)), "{err:?}");
    let err = store
        .discard(&[id(0), "0".repeat(32)], "dup", "ana")
        .await
        .unwrap_err();
    assert!(matches!(err, DlqError::NotFound(_)), "{err:?}");
    let err = store.discard(&[id(0)], " ", "ana").await.unwrap_err();
    assert!(matches!(err, DlqError::BadRequest(_)), "{err:?}");
    assert_eq!(
        all(&store).await,
        before,
        "refused operations change nothing"
    );
    assert_eq!(store.audit(10).await.unwrap(), vec![]);
    assert!(committed(&source).await.is_empty(), "and send nothing");

    assert_eq!(
        store
            .discard(&[id(0), id(1)], "duplicate", "bo")
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.discard(&[id(0)], "duplicate", "bo").await.unwrap(), 0);
    let d = store.get(&id(0)).await.unwrap().unwrap();
    assert_eq!(
        (d.status, d.status_reason.as_deref()),
        (Status::Discarded, Some("duplicate"))
    );

    store.edit(&id(2), b"fixed".to_vec(), "cy").await.unwrap();
    store
        .edit(&id(2), b"fixed again".to_vec(), "cy")
        .await
        .unwrap();
    let e = store.get(&id(2)).await.unwrap().unwrap();
    assert_eq!(e.payload, b"fixed again");
    assert_eq!(e.original_payload.as_ref(), Some(&written[2].payload));
    assert_eq!(e.status, Status::Pending);
    let err = store.edit(&id(0), b"x".to_vec(), "cy").await.unwrap_err();
    assert!(matches!(err, DlqError::BadRequest(_)), "{err:?}");
    let err = store
        .edit(&"0".repeat(32), b"x".to_vec(), "cy")
        .await
        .unwrap_err();
    assert!(matches!(err, DlqError::NotFound(_)), "{err:?}");

    let audit = store.audit(10).await.unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.actor.as_str(), a.action.as_str()))
        .collect();
    assert_eq!(actions, [("cy", "edit"), ("cy", "edit"), ("bo", "discard")]);
    assert_eq!(audit[2].ids, vec![id(0), id(1)]);
    assert_eq!(audit[2].detail, "duplicate");
    assert_eq!(store.audit(1).await.unwrap(), audit[..1].to_vec());

    // Discarded ones are skipped by a replay; the edited one is sent as edited.
    let outcome = store.replay(&[id(0), id(2)], "ana").await.unwrap();
    assert_eq!(
        outcome,
        ReplayOutcome {
            replayed: 1,
            skipped: 1
        }
    );
    let sent = committed(&source).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].value.as_deref(), Some(&b"fixed again"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_a_store_error() {
    let (_dir, url) = registry().await;
    // Nothing listens on port 1.
    let store = KafkaDeadLetterStore::new(settings("127.0.0.1:1", &url, &unique())).unwrap();
    let started = Instant::now();
    let err = store
        .list(&Filter::default(), Page::default())
        .await
        .unwrap_err();
    assert!(matches!(err, DlqError::Store { .. }), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    let err = store
        .discard(&["a".repeat(32)], "x", "ana")
        .await
        .unwrap_err();
    assert!(matches!(err, DlqError::Store { .. }), "{err:?}");
    assert!(
        started.elapsed() < 4 * REQUEST_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
}
