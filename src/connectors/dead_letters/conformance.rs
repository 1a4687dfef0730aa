//! One conformance suite for the dead-letter stores.
//!
//! Every property is written once, as a function taking a fresh, empty [`Store`],
//! and each store's test module runs all of them (`conformance_tests!`, one test each).
//! Dead letters go in the way a pipeline writes them: as Arrow batches through the
//! store's sink ([`DeadLetterStore::sink`]); they are read back through the admin
//! side. `list` is checked against [`Filter::matches`] as the oracle, with the
//! expected ids spelled out as well so an empty answer cannot pass.
//!
//! Documented outcomes the suite pins down:
//! - editing a record that is not pending is a [`DlqError::BadRequest`];
//! - `replay` and `discard` of an unknown id fail with [`DlqError::NotFound`] and
//!   change nothing, like a replay of a record without a source table
//!   ([`DlqError::NotReplayable`]);
//! - an admin operation that changes nothing leaves no audit entry.

use super::{DlqError, Filter, Page, ReplayOutcome, StatsRow, Store};
use crate::dlq::BadRecordReason;
use crate::dlq::record::{self, DeadLetter, Origin, PayloadFormat, Status};
use crate::engine::{Sink, TaskInfo};

/// Defines one `#[tokio::test]` per property in the calling module. `$new_store` is
/// evaluated once per test, inside the test's async body (it may `.await`), and gives
/// `(guard, store)`: a fresh, empty store and what must live as long as it (a
/// temporary directory). `multi_thread;` before it runs the tests on a multi-threaded
/// runtime, for stores whose sink blocks in place (the Kafka sink's transactions).
macro_rules! conformance_tests {
    (multi_thread; $new_store:expr) => {
        $crate::connectors::dead_letters::conformance::conformance_tests!(@list
            [tokio::test(flavor = "multi_thread", worker_threads = 2)] $new_store);
    };
    ($new_store:expr) => {
        $crate::connectors::dead_letters::conformance::conformance_tests!(@list [tokio::test] $new_store);
    };
    (@list [$attr:meta] $new_store:expr) => {
        $crate::connectors::dead_letters::conformance::conformance_tests!(@each [$attr] $new_store;
            sink_without_checkpoints_lists_what_it_wrote,
            two_phase_restore_keeps_only_the_restored_checkpoint,
            two_phase_restore_commits_a_pre_committed_checkpoint,
            two_phase_close_uncommitted_keeps_committed_checkpoints,
            two_phase_start_without_a_checkpoint_drops_earlier_staged_letters,
            list_filters_and_pages,
            a_cursor_pages_like_offsets,
            stats_count_and_oldest,
            discard_needs_a_reason_and_a_pending_record,
            edit_keeps_the_first_original_payload,
            replay_marks_once_and_is_all_or_nothing,
            a_replayed_record_failing_again_is_pending_again,
            audit_is_newest_first_and_limited
        );
    };
    (@each [$attr:meta] $new_store:expr; $($name:ident),*) => {
        $(
            #[$attr]
            async fn $name() {
                let (_guard, store) = $new_store;
                $crate::connectors::dead_letters::conformance::$name(store).await;
            }
        )*
    };
}
pub(crate) use conformance_tests;

const T0: i64 = 1_700_000_000_000;

/// The task of a pipeline's dead-letter sink.
pub(crate) fn task(pipeline: &str) -> TaskInfo {
    TaskInfo {
        pipeline: pipeline.into(),
        node: "dead_letters".into(),
        partition: 0,
        parallelism: 1,
        state: crate::state::memory_backend(),
    }
}

/// A new instance of `pipeline`'s dead-letter sink (a task starting).
pub(crate) fn sink(store: &Store, pipeline: &str) -> Box<dyn Sink> {
    store
        .sink(pipeline)
        .expect("sink factory")
        .create(&task(pipeline), record::schema())
        .expect("sink")
}

pub(crate) async fn write(sink: &mut dyn Sink, letters: &[DeadLetter]) {
    sink.write(record::to_batch(letters)).await.expect("write");
}

/// Writes `letters` through a new sink without checkpoints and finishes it.
pub(crate) async fn write_finished(store: &Store, letters: &[DeadLetter]) {
    let pipeline = &letters.first().expect("letters").pipeline;
    let mut s = sink(store, pipeline);
    write(s.as_mut(), letters).await;
    s.finish().await.expect("finish");
}

pub(crate) async fn all(store: &Store) -> Vec<DeadLetter> {
    list(store, &Filter::default(), 0, usize::MAX).await
}

async fn list(store: &Store, filter: &Filter, offset: usize, limit: usize) -> Vec<DeadLetter> {
    store
        .list(
            filter,
            Page {
                offset,
                limit,
                after: None,
            },
        )
        .await
        .expect("list")
}

pub(crate) fn ids(letters: &[DeadLetter]) -> Vec<String> {
    letters.iter().map(|l| l.id.clone()).collect()
}

async fn all_ids(store: &Store) -> Vec<String> {
    ids(&all(store).await)
}

async fn get(store: &Store, id: &str) -> DeadLetter {
    store
        .get(id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("dead letter {id} is not in the store"))
}

/// `record::sample(i)`: pipeline `p`, table `orders`, pending, first failure `T0`.
pub(crate) fn letter(i: usize) -> DeadLetter {
    record::sample(i)
}

fn at(i: usize, pipeline: &str, first_failure: i64) -> DeadLetter {
    DeadLetter {
        pipeline: pipeline.into(),
        first_failure,
        last_failure: first_failure + 1,
        ..letter(i)
    }
}

fn sorted(mut letters: Vec<DeadLetter>) -> Vec<DeadLetter> {
    letters.sort_by(|a, b| (a.first_failure, &a.id).cmp(&(b.first_failure, &b.id)));
    letters
}

fn state(s: Option<Vec<u8>>) -> Vec<u8> {
    s.expect("an exactly-once sink returns a state from pre_commit")
}

pub(crate) async fn sink_without_checkpoints_lists_what_it_wrote(store: Store) {
    let plain = letter(1);
    let file = DeadLetter {
        message: "ÉCHEC: ligne tronquée".into(),
        payload: vec![0, 159, 255, b'\n'],
        payload_format: PayloadFormat::Row,
        source: Origin {
            file: Some("in/orders.jsonl".into()),
            line: Some(17),
            ..Origin::default()
        },
        schema_id: None,
        event_time: None,
        ..letter(2)
    };
    let operator = DeadLetter {
        node: "enrich".into(),
        failure_class: BadRecordReason::LookupMiss,
        source: Origin {
            position: Some(12),
            ..Origin::default()
        },
        first_failure: T0 - 60_000,
        last_failure: T0 - 59_000,
        attempts: 3,
        status_reason: Some("note".into()),
        original_payload: Some(b"{\"n\":0}".to_vec()),
        ..letter(3)
    };
    let mut s = sink(&store, "p");
    write(s.as_mut(), &[plain.clone(), file.clone()]).await;
    s.flush().await.expect("flush");
    assert_eq!(
        all(&store).await,
        sorted(vec![plain.clone(), file.clone()]),
        "without checkpoints a flush makes the dead letters visible, every field as written"
    );
    write(s.as_mut(), std::slice::from_ref(&operator)).await;
    s.finish().await.expect("finish");
    let expected = sorted(vec![plain, file.clone(), operator]);
    assert_eq!(
        all(&store).await,
        expected,
        "after finish every dead letter is listed, every field as written, in order of first failure"
    );
    assert_eq!(get(&store, &file.id).await, file, "get returns the letter");
    assert_eq!(
        store
            .get("ffffffffffffffffffffffffffffffff")
            .await
            .expect("get"),
        None,
        "get of an unknown id is None"
    );
}

pub(crate) async fn two_phase_restore_keeps_only_the_restored_checkpoint(store: Store) {
    let mut s = sink(&store, "p");
    assert!(s.exactly_once(), "a dead-letter sink can hold output back");
    write(s.as_mut(), &[letter(1), letter(2)]).await;
    let first = state(s.pre_commit(1).await.expect("pre_commit 1"));
    assert_eq!(
        all_ids(&store).await,
        Vec::<String>::new(),
        "pre-committed dead letters are not visible before their checkpoint commits"
    );
    s.commit(1).await.expect("commit 1");
    assert_eq!(all_ids(&store).await, ids(&[letter(1), letter(2)]));
    s.commit(1).await.expect("commit 1 again");
    assert_eq!(
        all_ids(&store).await,
        ids(&[letter(1), letter(2)]),
        "commit is idempotent"
    );
    // Checkpoint 2 is pre-committed but never commits; more comes after it; then the
    // process dies.
    write(s.as_mut(), &[letter(3)]).await;
    s.pre_commit(2).await.expect("pre_commit 2");
    write(s.as_mut(), &[letter(4)]).await;
    s.flush().await.expect("flush");
    drop(s);
    assert_eq!(
        all_ids(&store).await,
        ids(&[letter(1), letter(2)]),
        "a crash makes nothing uncommitted visible"
    );

    let mut r = sink(&store, "p");
    assert!(r.exactly_once());
    r.restore(&[(0, first)]).await.expect("restore");
    assert_eq!(
        all_ids(&store).await,
        ids(&[letter(1), letter(2)]),
        "restored from checkpoint 1: exactly its dead letters"
    );
    // The restart replays what came after checkpoint 1, which fails again as new
    // dead letters; checkpoints 2 and 3 of the new run commit.
    write(r.as_mut(), &[letter(5)]).await;
    r.pre_commit(2).await.expect("pre_commit 2");
    r.commit(2).await.expect("commit 2");
    write(r.as_mut(), &[letter(6)]).await;
    r.pre_commit(3).await.expect("pre_commit 3");
    r.commit(3).await.expect("commit 3");
    assert_eq!(
        all_ids(&store).await,
        ids(&[letter(1), letter(2), letter(5), letter(6)]),
        "the dead letters of the uncommitted checkpoint 2 and after it are gone for good"
    );
}

pub(crate) async fn two_phase_restore_commits_a_pre_committed_checkpoint(store: Store) {
    let mut s = sink(&store, "p");
    assert!(s.exactly_once());
    write(s.as_mut(), &[letter(1)]).await;
    s.pre_commit(1).await.expect("pre_commit 1");
    s.commit(1).await.expect("commit 1");
    write(s.as_mut(), &[letter(2), letter(3)]).await;
    let second = state(s.pre_commit(2).await.expect("pre_commit 2"));
    write(s.as_mut(), &[letter(4)]).await;
    s.flush().await.expect("flush");
    // The coordinator committed checkpoint 2, the process died before the sink did.
    drop(s);
    assert_eq!(all_ids(&store).await, ids(&[letter(1)]));

    let mut r = sink(&store, "p");
    assert!(r.exactly_once());
    r.restore(&[(0, second.clone())]).await.expect("restore");
    let expected = ids(&[letter(1), letter(2), letter(3)]);
    assert_eq!(
        all_ids(&store).await,
        expected,
        "restored from checkpoint 2: its dead letters become visible, those after it do not"
    );
    drop(r);
    let mut again = sink(&store, "p");
    assert!(again.exactly_once());
    again.restore(&[(0, second)]).await.expect("restore again");
    write(again.as_mut(), &[letter(5)]).await;
    again.pre_commit(3).await.expect("pre_commit 3");
    again.commit(3).await.expect("commit 3");
    assert_eq!(
        all_ids(&store).await,
        ids(&[letter(1), letter(2), letter(3), letter(5)]),
        "restoring twice publishes nothing twice, and letter 4 (after checkpoint 2) never appears"
    );
    assert_eq!(get(&store, &letter(2).id).await, letter(2));
}

pub(crate) async fn two_phase_close_uncommitted_keeps_committed_checkpoints(store: Store) {
    let mut s = sink(&store, "p");
    assert!(s.exactly_once());
    write(s.as_mut(), &[letter(1)]).await;
    let first = state(s.pre_commit(1).await.expect("pre_commit 1"));
    write(s.as_mut(), &[letter(2)]).await;
    s.pre_commit(2).await.expect("pre_commit 2");
    write(s.as_mut(), &[letter(3)]).await;
    // Stopped: checkpoint 1 committed (the sink had not yet been told), 2 did not.
    s.close_uncommitted(1).await.expect("close_uncommitted");
    assert_eq!(
        all_ids(&store).await,
        ids(&[letter(1)]),
        "stopped: the committed checkpoint's dead letters are visible, later ones not"
    );
    let mut r = sink(&store, "p");
    assert!(r.exactly_once());
    r.restore(&[(0, first)]).await.expect("restore");
    write(r.as_mut(), &[letter(4)]).await;
    r.pre_commit(2).await.expect("pre_commit 2");
    r.commit(2).await.expect("commit 2");
    assert_eq!(
        all_ids(&store).await,
        ids(&[letter(1), letter(4)]),
        "what close_uncommitted left out never comes back"
    );
}

pub(crate) async fn two_phase_start_without_a_checkpoint_drops_earlier_staged_letters(
    store: Store,
) {
    let mut s = sink(&store, "p");
    assert!(s.exactly_once());
    write(s.as_mut(), &[letter(1)]).await;
    s.pre_commit(1).await.expect("pre_commit 1");
    write(s.as_mut(), &[letter(2)]).await;
    s.flush().await.expect("flush");
    // Dies before any checkpoint committed: the restart has nothing to restore and
    // reads its input again from the start.
    drop(s);
    let mut r = sink(&store, "p");
    assert!(r.exactly_once());
    write(r.as_mut(), &[letter(3)]).await;
    r.pre_commit(1).await.expect("pre_commit 1");
    r.commit(1).await.expect("commit 1");
    assert_eq!(
        all_ids(&store).await,
        ids(&[letter(3)]),
        "dead letters staged by a run that never committed a checkpoint are dropped"
    );
    // The end of the input: the final checkpoint commits, then finish.
    write(r.as_mut(), &[letter(4)]).await;
    r.pre_commit(2).await.expect("pre_commit 2");
    r.commit(2).await.expect("commit 2");
    r.finish().await.expect("finish");
    assert_eq!(all_ids(&store).await, ids(&[letter(3), letter(4)]));
}

/// The letters of the filter and page checks; see the expected lists below.
fn filter_letters() -> Vec<DeadLetter> {
    let with = |i: usize, pipeline: &str, ff: i64, class, topic: Option<&str>, msg: &str| {
        let mut l = at(i, pipeline, ff);
        l.failure_class = class;
        l.source.topic = topic.map(str::to_string);
        l.message = msg.into();
        l
    };
    use BadRecordReason::*;
    let mut e = with(5, "q", 5000, Processing, None, "division by zero 500");
    e.node = "enrich".into();
    e.source.table = None;
    vec![
        with(
            1,
            "p",
            1000,
            Malformed,
            Some("orders.placed"),
            "EOF at 50% of record",
        ),
        with(
            2,
            "p",
            2000,
            SchemaMismatch,
            Some("payments.captured"),
            "party 5: not int",
        ),
        with(3, "p", 3000, Constraint, None, "CHECK qty_50 failed"),
        with(
            4,
            "q",
            2000,
            Malformed,
            Some("orders.x"),
            "ÉCHEC du décodage",
        ),
        e,
        with(
            6,
            "q",
            6000,
            Late,
            Some("payments.refunded"),
            "late by 50 s",
        ),
    ]
}

/// Paging by the last record of the previous page (`Page::after`) gives the pages an
/// offset gives.
pub(crate) async fn a_cursor_pages_like_offsets(store: Store) {
    let letters = filter_letters();
    write_finished(&store, &letters).await;
    let by_offset = |offset| Page {
        offset,
        limit: 3,
        after: None,
    };
    let mut by_cursor: Vec<DeadLetter> = Vec::new();
    loop {
        let page = Page {
            offset: 0,
            limit: 3,
            after: by_cursor.last().map(|l| (l.first_failure, l.id.clone())),
        };
        let got = store.list(&Filter::default(), page).await.expect("list");
        let expected = store
            .list(&Filter::default(), by_offset(by_cursor.len()))
            .await
            .expect("list");
        assert_eq!(got, expected, "the page after {} records", by_cursor.len());
        if got.is_empty() {
            break;
        }
        by_cursor.extend(got);
    }
    assert_eq!(by_cursor.len(), letters.len(), "every record once");
}

pub(crate) async fn list_filters_and_pages(store: Store) {
    let letters = filter_letters();
    write_finished(&store, &letters[..3]).await;
    write_finished(&store, &letters[3..]).await;
    let id = |i: usize| letter(i).id;
    assert_eq!(
        store
            .discard(&[id(5)], "noise", "ana")
            .await
            .expect("discard"),
        1
    );
    assert_eq!(
        store.replay(&[id(6)], "ana").await.expect("replay"),
        ReplayOutcome {
            replayed: 1,
            skipped: 0
        }
    );
    let everything = all(&store).await;
    let order = |v: &[usize]| v.iter().map(|&i| id(i)).collect::<Vec<_>>();
    assert_eq!(
        ids(&everything),
        order(&[1, 2, 4, 3, 5, 6]),
        "listed in order of first failure, then id"
    );
    let cases: Vec<(&str, Filter, Vec<usize>)> = vec![
        (
            "pipeline",
            Filter {
                pipeline: Some("q".into()),
                ..Filter::default()
            },
            vec![4, 5, 6],
        ),
        (
            "domain of the topic or the table",
            Filter {
                domain: Some("orders".into()),
                ..Filter::default()
            },
            vec![1, 4, 3],
        ),
        (
            "domain of the node",
            Filter {
                domain: Some("enrich".into()),
                ..Filter::default()
            },
            vec![5],
        ),
        (
            "class",
            Filter {
                class: Some(BadRecordReason::Malformed),
                ..Filter::default()
            },
            vec![1, 4],
        ),
        (
            "status pending",
            Filter {
                status: Some(Status::Pending),
                ..Filter::default()
            },
            vec![1, 2, 4, 3],
        ),
        (
            "status discarded",
            Filter {
                status: Some(Status::Discarded),
                ..Filter::default()
            },
            vec![5],
        ),
        (
            "status replayed",
            Filter {
                status: Some(Status::Replayed),
                ..Filter::default()
            },
            vec![6],
        ),
        (
            "since (inclusive) and until (exclusive)",
            Filter {
                since: Some(2000),
                until: Some(5000),
                ..Filter::default()
            },
            vec![2, 4, 3],
        ),
        (
            "text with % taken literally",
            Filter {
                text: Some("50%".into()),
                ..Filter::default()
            },
            vec![1],
        ),
        (
            "text with _ taken literally",
            Filter {
                text: Some("ty_5".into()),
                ..Filter::default()
            },
            vec![3],
        ),
        (
            "text, case-insensitive beyond ASCII",
            Filter {
                text: Some("échec DU".into()),
                ..Filter::default()
            },
            vec![4],
        ),
        (
            "text, case-insensitive",
            Filter {
                text: Some("eof".into()),
                ..Filter::default()
            },
            vec![1],
        ),
        (
            "every field narrows",
            Filter {
                pipeline: Some("p".into()),
                status: Some(Status::Pending),
                since: Some(2000),
                ..Filter::default()
            },
            vec![2, 3],
        ),
    ];
    for (what, filter, expected) in cases {
        let got = list(&store, &filter, 0, 100).await;
        let oracle: Vec<DeadLetter> = everything
            .iter()
            .filter(|l| filter.matches(l))
            .cloned()
            .collect();
        assert_eq!(ids(&got), order(&expected), "filter {what}: {filter:?}");
        assert_eq!(got, oracle, "filter {what} agrees with Filter::matches");
    }
    let mut paged = Vec::new();
    for offset in (0..8).step_by(2) {
        let page = list(&store, &Filter::default(), offset, 2).await;
        assert!(page.len() <= 2, "a page holds at most its limit");
        paged.extend(page);
    }
    assert_eq!(
        ids(&paged),
        ids(&everything),
        "pages of 2 put together are the whole listing, in the same order"
    );
    assert_eq!(
        ids(&list(&store, &Filter::default(), 5, 10).await),
        order(&[6])
    );
    assert!(list(&store, &Filter::default(), 6, 10).await.is_empty());
    assert_eq!(
        ids(&list(&store, &Filter::default(), 0, 0).await),
        Vec::<String>::new(),
        "limit 0"
    );
    let q = Filter {
        pipeline: Some("q".into()),
        ..Filter::default()
    };
    assert_eq!(
        ids(&list(&store, &q, 1, 1).await),
        order(&[5]),
        "paging applies after the filter"
    );
}

fn stats_key(r: &StatsRow) -> (String, &'static str, &'static str) {
    (
        r.pipeline.clone(),
        r.failure_class.as_str(),
        r.status.as_str(),
    )
}

pub(crate) async fn stats_count_and_oldest(store: Store) {
    use BadRecordReason::*;
    let with = |i: usize, pipeline: &str, ff: i64, class| DeadLetter {
        failure_class: class,
        ..at(i, pipeline, ff)
    };
    write_finished(
        &store,
        &[
            with(1, "p", 300, Malformed),
            with(2, "p", 100, Malformed),
            with(3, "p", 200, Malformed),
            with(4, "p", 50, Late),
        ],
    )
    .await;
    write_finished(
        &store,
        &[with(5, "q", 400, Malformed), with(6, "q", 500, Malformed)],
    )
    .await;
    store
        .discard(&[letter(5).id], "noise", "ana")
        .await
        .expect("discard");
    let row = |pipeline: &str, class, status, count, oldest| StatsRow {
        pipeline: pipeline.into(),
        failure_class: class,
        status,
        count,
        oldest,
    };
    let mut got = store.stats(&Filter::default()).await.expect("stats");
    got.sort_by_key(stats_key);
    let mut expected = vec![
        row("p", Malformed, Status::Pending, 3, 100),
        row("p", Late, Status::Pending, 1, 50),
        row("q", Malformed, Status::Discarded, 1, 400),
        row("q", Malformed, Status::Pending, 1, 500),
    ];
    expected.sort_by_key(stats_key);
    assert_eq!(
        got, expected,
        "one row per pipeline, class and status, with its count and oldest first failure"
    );
    let q_pending = Filter {
        pipeline: Some("q".into()),
        status: Some(Status::Pending),
        ..Filter::default()
    };
    assert_eq!(
        store.stats(&q_pending).await.expect("stats"),
        vec![row("q", Malformed, Status::Pending, 1, 500)],
        "stats count what the filter selects"
    );
}

pub(crate) async fn discard_needs_a_reason_and_a_pending_record(store: Store) {
    write_finished(&store, &[letter(1), letter(2), letter(3)]).await;
    let (a, b, c) = (letter(1).id, letter(2).id, letter(3).id);
    let before = all(&store).await;
    let err = store
        .discard(std::slice::from_ref(&a), " ", "ana")
        .await
        .unwrap_err();
    assert!(
        matches!(err, DlqError::BadRequest(_)),
        "a discard without a reason is a bad request, got {err:?}"
    );
    let err = store
        .discard(&[a.clone(), "0".repeat(32)], "noise", "ana")
        .await
        .unwrap_err();
    assert!(
        matches!(err, DlqError::NotFound(_)),
        "an unknown id is not found, got {err:?}"
    );
    assert_eq!(
        all(&store).await,
        before,
        "a refused discard changes nothing"
    );
    assert!(store.audit(10).await.expect("audit").is_empty());

    store
        .replay(std::slice::from_ref(&b), "ana")
        .await
        .expect("replay");
    let n = store
        .discard(&[a.clone(), b.clone()], "duplicate of 42", "bob")
        .await
        .expect("discard");
    assert_eq!(n, 1, "only the pending record is discarded");
    let discarded = get(&store, &a).await;
    assert_eq!(discarded.status, Status::Discarded);
    assert_eq!(discarded.status_reason.as_deref(), Some("duplicate of 42"));
    assert_eq!(
        get(&store, &b).await.status,
        Status::Replayed,
        "not pending: unchanged"
    );
    assert_eq!(
        get(&store, &c).await.status,
        Status::Pending,
        "not named: unchanged"
    );
    let entry = &store.audit(1).await.expect("audit")[0];
    assert_eq!(
        (
            entry.actor.as_str(),
            entry.action.as_str(),
            entry.detail.as_str()
        ),
        ("bob", "discard", "duplicate of 42"),
        "the audit entry names who, what and why"
    );
    assert_eq!(
        entry.ids,
        vec![a.clone()],
        "the audit entry names what it changed"
    );
    assert_eq!(
        store.discard(&[a], "again", "bob").await.expect("discard"),
        0,
        "a discarded record is not discarded again"
    );
}

pub(crate) async fn edit_keeps_the_first_original_payload(store: Store) {
    write_finished(&store, &[letter(1), letter(2)]).await;
    let (a, b) = (letter(1).id, letter(2).id);
    let original = letter(1).payload;
    store
        .edit(&a, b"{\"n\":1}".to_vec(), "ana")
        .await
        .expect("edit");
    store
        .edit(&a, b"{\"n\":10}".to_vec(), "bob")
        .await
        .expect("edit again");
    let edited = get(&store, &a).await;
    assert_eq!(
        edited.payload, b"{\"n\":10}",
        "the payload is the last edit"
    );
    assert_eq!(
        edited.original_payload,
        Some(original.clone()),
        "the original payload is the one it failed with, kept by the first edit"
    );
    assert_eq!(edited.status, Status::Pending);
    let entries = store.audit(10).await.expect("audit");
    assert_eq!(entries.len(), 2, "one audit entry per edit");
    assert_eq!(
        (entries[0].actor.as_str(), entries[0].action.as_str()),
        ("bob", "edit")
    );
    assert_eq!(entries[0].ids, vec![a.clone()]);
    assert_eq!(
        entries[0].detail, "payload 7 bytes -> 8 bytes",
        "the audit entry says what changed"
    );

    store
        .discard(std::slice::from_ref(&b), "noise", "ana")
        .await
        .expect("discard");
    let err = store.edit(&b, b"{}".to_vec(), "ana").await.unwrap_err();
    assert!(
        matches!(err, DlqError::BadRequest(_)),
        "only a pending record can be edited, got {err:?}"
    );
    assert_eq!(
        get(&store, &b).await.payload,
        letter(2).payload,
        "unchanged"
    );
    let err = store
        .edit(&"0".repeat(32), b"{}".to_vec(), "ana")
        .await
        .unwrap_err();
    assert!(matches!(err, DlqError::NotFound(_)), "got {err:?}");
    assert_eq!(
        store.audit(10).await.expect("audit").len(),
        3,
        "edit, edit, discard"
    );
}

pub(crate) async fn replay_marks_once_and_is_all_or_nothing(store: Store) {
    let operator_row = DeadLetter {
        source: Origin::default(),
        ..letter(3)
    };
    write_finished(&store, &[letter(1), letter(2), operator_row, letter(4)]).await;
    let (a, b, c, d) = (letter(1).id, letter(2).id, letter(3).id, letter(4).id);
    let outcome = store
        .replay(&[a.clone(), b.clone()], "ana")
        .await
        .expect("replay");
    assert_eq!(
        outcome,
        ReplayOutcome {
            replayed: 2,
            skipped: 0
        }
    );
    for id in [&a, &b] {
        assert_eq!(get(&store, id).await.status, Status::Replayed);
    }
    let entry = &store.audit(1).await.expect("audit")[0];
    assert_eq!(
        (entry.actor.as_str(), entry.action.as_str()),
        ("ana", "replay")
    );
    assert_eq!(entry.ids, vec![a.clone(), b.clone()]);

    let again = store
        .replay(&[a.clone(), b.clone()], "ana")
        .await
        .expect("replay again");
    assert_eq!(
        again,
        ReplayOutcome {
            replayed: 0,
            skipped: 2
        },
        "a repeated replay sends nothing twice"
    );

    let before = all(&store).await;
    let audit_before = store.audit(100).await.expect("audit").len();
    let err = store
        .replay(&[d.clone(), c.clone()], "ana")
        .await
        .unwrap_err();
    assert!(
        matches!(err, DlqError::NotReplayable { ref id, .. } if *id == c),
        "a record without a source table cannot be replayed, got {err:?}"
    );
    let err = store
        .replay(&[d.clone(), "0".repeat(32)], "ana")
        .await
        .unwrap_err();
    assert!(
        matches!(err, DlqError::NotFound(_)),
        "an unknown id is not found, got {err:?}"
    );
    assert_eq!(
        all(&store).await,
        before,
        "a refused replay changes nothing, not even the records before the refused one"
    );
    assert_eq!(store.audit(100).await.expect("audit").len(), audit_before);
    assert_eq!(get(&store, &d).await.status, Status::Pending);
}

pub(crate) async fn a_replayed_record_failing_again_is_pending_again(store: Store) {
    let first = letter(1);
    write_finished(&store, std::slice::from_ref(&first)).await;
    store
        .edit(&first.id, b"{\"n\":1}".to_vec(), "ana")
        .await
        .expect("edit");
    store
        .replay(std::slice::from_ref(&first.id), "ana")
        .await
        .expect("replay");
    // The replayed record fails again, in a later run, with the edited payload.
    let again = DeadLetter {
        node: "enrich".into(),
        failure_class: BadRecordReason::LookupMiss,
        message: "still no customer".into(),
        payload: b"{\"n\":1}".to_vec(),
        source: Origin {
            table: Some("orders".into()),
            ..Origin::default()
        },
        first_failure: first.first_failure + 60_000,
        last_failure: first.first_failure + 60_000,
        attempts: 2,
        ..first.clone()
    };
    let mut s = sink(&store, "p");
    assert!(s.exactly_once());
    write(s.as_mut(), std::slice::from_ref(&again)).await;
    s.pre_commit(1).await.expect("pre_commit");
    s.commit(1).await.expect("commit");
    let back = get(&store, &first.id).await;
    let expected = DeadLetter {
        first_failure: first.first_failure,
        source: first.source.clone(),
        status: Status::Pending,
        status_reason: None,
        original_payload: Some(first.payload.clone()),
        ..again
    };
    assert_eq!(
        back, expected,
        "pending again under its id, with the new failure and attempts, the first failure, \
         origin and original payload kept"
    );
    assert_eq!(all(&store).await.len(), 1, "still one record");
}

pub(crate) async fn audit_is_newest_first_and_limited(store: Store) {
    write_finished(&store, &[letter(1), letter(2), letter(3)]).await;
    for (i, actor) in [(1, "ana"), (2, "bob"), (3, "cy")] {
        store
            .discard(&[letter(i).id], "noise", actor)
            .await
            .expect("discard");
    }
    let entries = store.audit(2).await.expect("audit");
    let actors: Vec<&str> = entries.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(
        actors,
        ["cy", "bob"],
        "the newest entries first, at most the limit"
    );
    let now = record::now_ms();
    assert!(
        entries.iter().all(|e| e.at > now - 600_000 && e.at <= now),
        "entries carry the time of the change: {entries:?}"
    );
}
