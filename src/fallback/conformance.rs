//! The properties every [`FallbackStore`] keeps, written once and run against each
//! store (`fallback_store_conformance!` in the store's tests).

use super::{DeliveryMark, FallbackRecord, FallbackStore, Seq, StreamId};

/// A record of `pipeline`'s `topic` under `key`, at (`checkpoint`, `index`).
pub(crate) fn record(
    pipeline: &str,
    topic: &str,
    key: Option<&[u8]>,
    checkpoint: u64,
    index: u64,
) -> FallbackRecord {
    FallbackRecord {
        stream: StreamId {
            pipeline: pipeline.into(),
            topic: topic.into(),
            key: key.map(<[u8]>::to_vec),
        },
        seq: Seq { checkpoint, index },
        value: Some(format!("{checkpoint}.{index}").into_bytes()),
        headers: vec![("trace".into(), Some(b"x".to_vec())), ("none".into(), None)],
        timestamp_ms: Some(1_767_225_600_000 + index as i64),
        stored_ms: 1_767_225_600_000 + (checkpoint * 1000 + index) as i64,
    }
}

/// Records come back per stream, oldest first, whatever order they were appended
/// in; a null key and an empty key are two streams.
pub(crate) async fn streams_read_back_oldest_first(store: &dyn FallbackStore) {
    let k = Some(&b"order-1"[..]);
    let batch = vec![
        record("p", "orders.tracking", k, 2, 0),
        record("p", "orders.tracking", k, 1, 7),
        record("p", "orders.tracking", k, 1, 3),
        record("p", "orders.tracking", Some(b""), 1, 0),
        record("p", "orders.tracking", None, 1, 1),
        record("p", "other", k, 1, 0),
        record("q", "orders.tracking", k, 1, 0),
    ];
    store.append(&batch).await.unwrap();
    let stream = batch[0].stream.clone();
    let got: Vec<Seq> = store
        .oldest(&stream, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(
        got,
        [
            Seq {
                checkpoint: 1,
                index: 3
            },
            Seq {
                checkpoint: 1,
                index: 7
            },
            Seq {
                checkpoint: 2,
                index: 0
            }
        ]
    );
    assert_eq!(
        store.oldest(&stream, 1).await.unwrap(),
        vec![batch[2].clone()],
        "the whole record"
    );
    let mut streams = store.streams("p").await.unwrap();
    streams.sort();
    assert_eq!(streams.len(), 4, "{streams:?}");
    assert!(streams.iter().any(|s| s.key.is_none()));
    assert!(streams.iter().any(|s| s.key.as_deref() == Some(&b""[..])));
    assert_eq!(
        store.oldest(&batch[4].stream, 10).await.unwrap(),
        vec![batch[4].clone()]
    );
}

/// Appending the same records again (a retry after a crash, in part or whole) stores
/// nothing twice.
pub(crate) async fn a_repeated_append_stores_nothing_twice(store: &dyn FallbackStore) {
    let batch: Vec<FallbackRecord> = (0..50)
        .map(|i| record("p", "t", Some(b"k"), 3, i))
        .collect();
    store.append(&batch[..20]).await.unwrap();
    store.append(&batch).await.unwrap();
    let got = store.oldest(&batch[0].stream, 1000).await.unwrap();
    assert_eq!(got, batch);
    let backlog = store.backlog(Some("p")).await.unwrap();
    assert_eq!(backlog.len(), 1);
    assert_eq!((backlog[0].records, backlog[0].keys), (50, 1));
    assert_eq!(backlog[0].oldest_stored_ms, Some(batch[0].stored_ms));
}

/// Deleting through a sequence removes that stream's records up to it, and nothing
/// of other streams; a stream with nothing left is no longer listed.
pub(crate) async fn deleting_through_a_sequence_keeps_newer_records_and_other_streams(
    store: &dyn FallbackStore,
) {
    let a: Vec<FallbackRecord> = (0..5).map(|i| record("p", "t", Some(b"a"), 1, i)).collect();
    let b: Vec<FallbackRecord> = (0..5).map(|i| record("p", "t", Some(b"b"), 1, i)).collect();
    store.append(&a).await.unwrap();
    store.append(&b).await.unwrap();
    store.delete_through(&a[0].stream, a[2].seq).await.unwrap();
    assert_eq!(
        store.oldest(&a[0].stream, 10).await.unwrap(),
        a[3..].to_vec()
    );
    assert_eq!(store.oldest(&b[0].stream, 10).await.unwrap(), b);
    store
        .delete_through(
            &a[0].stream,
            Seq {
                checkpoint: 9,
                index: 0,
            },
        )
        .await
        .unwrap();
    assert!(store.oldest(&a[0].stream, 10).await.unwrap().is_empty());
    assert_eq!(store.streams("p").await.unwrap(), vec![b[0].stream.clone()]);
    let backlog = store.backlog(None).await.unwrap();
    assert_eq!((backlog[0].records, backlog[0].keys), (5, 1));
    // Emptied, then written again: listed again.
    store.append(&a[..1]).await.unwrap();
    assert_eq!(store.streams("p").await.unwrap().len(), 2);
}

/// Two handles (two processes) on one store see each other's records.
pub(crate) async fn two_handles_share_the_store(a: &dyn FallbackStore, b: &dyn FallbackStore) {
    let r = record("p", "t", Some(b"k"), 1, 0);
    a.append(std::slice::from_ref(&r)).await.unwrap();
    assert_eq!(b.oldest(&r.stream, 10).await.unwrap(), vec![r.clone()]);
    b.delete_through(&r.stream, r.seq).await.unwrap();
    assert!(a.streams("p").await.unwrap().is_empty());
}

/// A writer's delivery mark only goes forward within its lineage; a new lineage (a
/// pipeline started afresh) replaces it; writers and pipelines are apart.
pub(crate) async fn delivery_marks_go_forward_within_a_lineage(store: &dyn FallbackStore) {
    let mark = |writer: &str, lineage: &str, checkpoint: u64| DeliveryMark {
        pipeline: "p".into(),
        writer: writer.into(),
        lineage: lineage.into(),
        checkpoint,
    };
    assert!(store.marks("p").await.unwrap().is_empty());
    store.mark(&mark("tx-0", "a", 5)).await.unwrap();
    store.mark(&mark("tx-0", "a", 3)).await.unwrap();
    store.mark(&mark("tx-1", "a", 2)).await.unwrap();
    assert_eq!(
        store.marks("p").await.unwrap(),
        vec![mark("tx-0", "a", 5), mark("tx-1", "a", 2)]
    );
    store.mark(&mark("tx-0", "a", 7)).await.unwrap();
    store.mark(&mark("tx-1", "b", 1)).await.unwrap();
    assert_eq!(
        store.marks("p").await.unwrap(),
        vec![mark("tx-0", "a", 7), mark("tx-1", "b", 1)]
    );
    assert!(store.marks("q").await.unwrap().is_empty());
    assert!(
        store.streams("p").await.unwrap().is_empty(),
        "marks are no streams"
    );
}

/// Runs every property against the stores `$make` builds (an async expression giving
/// a fresh store and what keeps it alive); `$twin` gives a second handle on the same
/// store.
macro_rules! fallback_store_conformance {
    ($make:expr, $twin:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn streams_read_back_oldest_first() {
            let (store, _keep) = $make.await;
            $crate::fallback::conformance::streams_read_back_oldest_first(&*store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_repeated_append_stores_nothing_twice() {
            let (store, _keep) = $make.await;
            $crate::fallback::conformance::a_repeated_append_stores_nothing_twice(&*store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn deleting_through_a_sequence_keeps_newer_records_and_other_streams() {
            let (store, _keep) = $make.await;
            $crate::fallback::conformance::deleting_through_a_sequence_keeps_newer_records_and_other_streams(&*store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn delivery_marks_go_forward_within_a_lineage() {
            let (store, _keep) = $make.await;
            $crate::fallback::conformance::delivery_marks_go_forward_within_a_lineage(&*store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn two_handles_share_the_store() {
            let (store, keep) = $make.await;
            let twin = $twin(&keep).await;
            $crate::fallback::conformance::two_handles_share_the_store(&*store, &*twin).await;
        }
    };
}
pub(crate) use fallback_store_conformance;
