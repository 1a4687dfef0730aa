//! The properties every [`CheckpointStore`] keeps, written once and run against each
//! store (`checkpoint_store_conformance!` in the store's tests): the local directory
//! and DynamoDB.

use super::coordinator::collect_garbage;
use super::{CheckpointMeta, CheckpointStore};

fn meta(id: u64, chain: &[u64]) -> CheckpointMeta {
    CheckpointMeta::for_test(id, "src", chain)
}

/// Only committed checkpoints are listed; a commit is conditional on the latest one
/// and happens once; metadata and blobs are deleted separately.
pub(crate) async fn commits_are_conditional_and_only_committed_checkpoints_are_listed(
    store: &dyn CheckpointStore,
) {
    assert!(store.list().await.unwrap().is_empty());
    store.put_blob(1, "src/0", b"abc".to_vec()).await.unwrap();
    assert!(
        store.list().await.unwrap().is_empty(),
        "blobs alone are no checkpoint"
    );
    assert_eq!(store.orphans().await.unwrap(), vec![1]);
    store.commit(&meta(1, &[]), None).await.unwrap();
    assert_eq!(store.list().await.unwrap(), vec![meta(1, &[])]);
    assert_eq!(store.get_blob(1, "src/0").await.unwrap(), b"abc");
    assert!(store.orphans().await.unwrap().is_empty());
    // On top of the wrong previous checkpoint: refused.
    let e = store.commit(&meta(2, &[]), None).await.unwrap_err();
    assert_eq!(e.code(), "CHK002", "{e}");
    store.commit(&meta(2, &[]), Some(1)).await.unwrap();
    let e = store.commit(&meta(2, &[]), Some(2)).await.unwrap_err();
    assert_eq!(e.code(), "CHK002", "committed twice: {e}");
    store.delete_meta(1).await.unwrap();
    assert_eq!(store.list().await.unwrap(), vec![meta(2, &[])]);
    assert_eq!(
        store.get_blob(1, "src/0").await.unwrap(),
        b"abc",
        "blobs outlive their metadata"
    );
    assert_eq!(store.orphans().await.unwrap(), vec![1]);
    store.delete_blobs(1).await.unwrap();
    assert!(store.get_blob(1, "src/0").await.is_err());
    assert!(store.orphans().await.unwrap().is_empty());
}

/// Large blobs come back byte for byte, and a blob written again (a retried attempt)
/// is the second version whole, even when it is shorter.
pub(crate) async fn blobs_round_trip_whole_and_a_rewrite_replaces_them(
    store: &dyn CheckpointStore,
) {
    let big: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    store.put_blob(7, "op/3", big.clone()).await.unwrap();
    assert_eq!(store.get_blob(7, "op/3").await.unwrap(), big);
    store.put_blob(7, "op/3", b"short".to_vec()).await.unwrap();
    assert_eq!(store.get_blob(7, "op/3").await.unwrap(), b"short");
    store.put_blob(7, "op/4", Vec::new()).await.unwrap();
    assert_eq!(store.get_blob(7, "op/4").await.unwrap(), b"");
    assert!(
        store.get_blob(7, "op/5").await.is_err(),
        "a blob never written"
    );
}

/// Two writers of one pipeline (a restarted process and the one it replaced): once
/// one has committed on top of a checkpoint, the other's commit on top of the same
/// one is refused, whichever store handle it uses.
pub(crate) async fn a_second_writer_is_fenced(a: &dyn CheckpointStore, b: &dyn CheckpointStore) {
    a.commit(&meta(1, &[]), None).await.unwrap();
    // Both resume from checkpoint 1; b commits 2 first.
    b.commit(&meta(2, &[]), Some(1)).await.unwrap();
    let e = a.commit(&meta(2, &[]), Some(1)).await.unwrap_err();
    assert_eq!(e.code(), "CHK002", "{e}");
    let e = a.commit(&meta(3, &[]), Some(1)).await.unwrap_err();
    assert_eq!(e.code(), "CHK002", "{e}");
    let ids: Vec<u64> = a.list().await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(ids, [1, 2]);
}

/// Two processes checkpointing the same id write the same blob names: the committed
/// checkpoint reads its own writer's state, whichever wrote last.
pub(crate) async fn the_committed_writers_blobs_are_read(
    a: &dyn CheckpointStore,
    b: &dyn CheckpointStore,
) {
    a.put_blob(4, "op/0", b"from a".to_vec()).await.unwrap();
    b.put_blob(4, "op/0", b"from b".to_vec()).await.unwrap();
    a.put_blob(4, "op/0", b"from a, again".to_vec())
        .await
        .unwrap();
    b.commit(&CheckpointMeta::for_test(4, "op", &[]), None)
        .await
        .unwrap();
    assert_eq!(a.get_blob(4, "op/0").await.unwrap(), b"from b");
    assert_eq!(b.get_blob(4, "op/0").await.unwrap(), b"from b");
}

/// Checkpoint 4's state is a chain (full snapshot in 2, deltas in 3 and 4): keeping
/// only the newest checkpoint keeps those three blobs; once a full snapshot (5)
/// replaces the chain, they go.
pub(crate) async fn garbage_collection_keeps_the_blobs_a_kept_chain_names(
    store: &dyn CheckpointStore,
) {
    let chains: [&[u64]; 4] = [&[], &[], &[2, 3], &[2, 3, 4]];
    let mut previous = None;
    for (id, chain) in (1..=4).zip(chains) {
        store.put_blob(id, "w/0", vec![id as u8]).await.unwrap();
        store
            .commit(&CheckpointMeta::for_test(id, "w", chain), previous)
            .await
            .unwrap();
        previous = Some(id);
    }
    // Checkpoint 5 in flight: its blob is newer than any committed checkpoint.
    store.put_blob(5, "w/0", vec![5]).await.unwrap();
    collect_garbage(store, 1).await;
    let ids: Vec<u64> = store.list().await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(ids, [4]);
    for id in [2, 3, 4, 5] {
        assert_eq!(
            store.get_blob(id, "w/0").await.unwrap(),
            [id as u8],
            "blob of {id}"
        );
    }
    assert!(
        store.get_blob(1, "w/0").await.is_err(),
        "no chain names checkpoint 1"
    );
    store
        .commit(&CheckpointMeta::for_test(5, "w", &[]), Some(4))
        .await
        .unwrap();
    collect_garbage(store, 1).await;
    for id in [2, 3, 4] {
        assert!(
            store.get_blob(id, "w/0").await.is_err(),
            "blob of {id} kept"
        );
    }
    assert_eq!(store.get_blob(5, "w/0").await.unwrap(), [5]);
}

/// Runs every property against the stores `$make` builds: `$make` is an async
/// expression giving a fresh store (an empty one each time) and `$twin` one giving a
/// second handle on the same store as the last `$make` (another process).
macro_rules! checkpoint_store_conformance {
    ($make:expr, $twin:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn commits_are_conditional_and_only_committed_checkpoints_are_listed() {
            let (store, _keep) = $make.await;
            $crate::checkpoint::conformance::commits_are_conditional_and_only_committed_checkpoints_are_listed(&*store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn blobs_round_trip_whole_and_a_rewrite_replaces_them() {
            let (store, _keep) = $make.await;
            $crate::checkpoint::conformance::blobs_round_trip_whole_and_a_rewrite_replaces_them(&*store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_second_writer_is_fenced() {
            let (store, keep) = $make.await;
            let twin = $twin(&keep).await;
            $crate::checkpoint::conformance::a_second_writer_is_fenced(&*store, &*twin).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_committed_writers_blobs_are_read() {
            let (store, keep) = $make.await;
            let twin = $twin(&keep).await;
            $crate::checkpoint::conformance::the_committed_writers_blobs_are_read(&*store, &*twin).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn garbage_collection_keeps_the_blobs_a_kept_chain_names() {
            let (store, _keep) = $make.await;
            $crate::checkpoint::conformance::garbage_collection_keeps_the_blobs_a_kept_chain_names(&*store).await;
        }
    };
}
pub(crate) use checkpoint_store_conformance;
