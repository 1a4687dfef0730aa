//! Checkpoints and exactly-once output under `kill -9`: a windowed aggregation over the
//! generator writes Parquet with checkpoints every 100 ms; the process is killed at
//! random moments (ten times, often in the middle of a checkpoint), restarted each
//! time from its latest checkpoint, then left to finish. The committed Parquet rows
//! must equal DataFusion's batch answer over the same events: nothing lost, nothing
//! doubled. The same with the Kafka sink in transactions, read back `read_committed`.

use std::path::Path;
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;

use crate::common::*;

/// The oracle's view of the generated orders, with the event time the pipeline reads.
const ORDERS_VIEW: &str = "CREATE VIEW orders AS SELECT restaurant_id, total, \
    CAST(event_time AS TIMESTAMP) AS event_time FROM orders_raw";

const GEN: &str = "stream = 'orders', seed = '7', count = '20000', rate = '6000'";

// Sums rounded to cents: restored partial sums add up in another order than one run's.
const QUERY: &str = "SELECT CAST(to_unixtime(w.start) AS BIGINT) AS start, restaurant_id, n, round(total, 2) AS total FROM \
    (SELECT tumble(INTERVAL '1' SECOND) AS w, restaurant_id, count(*) AS n, sum(total) AS total \
     FROM orders GROUP BY w, restaurant_id)";

/// Writes `p.sql` (`sql`) and `p.yaml`: pipeline `name`, exactly-once, checkpoints
/// every 100 ms under `checkpoints/`.
fn exactly_once_pipeline(d: &Path, name: &str, sql: &str) {
    exactly_once_pipeline_every(d, name, sql, "100ms");
}

/// [`exactly_once_pipeline`] with checkpoints every `interval`.
fn exactly_once_pipeline_every(d: &Path, name: &str, sql: &str, interval: &str) {
    write(&d.join("p.sql"), sql);
    write(
        &d.join("p.yaml"),
        &format!(
            "name: {name}\nsql: p.sql\ncheckpoint: {{ interval: {interval}, dir: checkpoints }}\n\
             delivery: exactly-once\n"
        ),
    );
}

/// Whether `tributary checkpoints` lists, for the pipeline `p.yaml` in `d`, a
/// checkpoint that builds on earlier ones (a task's state as a full snapshot and
/// deltas on it). It runs while the pipeline does.
fn lists_a_delta(d: &Path) -> bool {
    let o = run(d, &["checkpoints", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listing = stdout(&o);
    let header = listing.lines().nth(1).unwrap_or_default();
    let column = header.find("builds on").expect("a 'builds on' column");
    listing
        .lines()
        .skip(2)
        .any(|row| row.get(column..).is_some_and(|c| !c.starts_with('-')))
}

/// One crash test: the pipeline, the oracle, how many stops of which kind, where the
/// output goes.
struct Crash<'a> {
    /// Generated streams: (name, events, events per second).
    streams: &'a [(&'a str, u64, u64)],
    query: &'a str,
    /// Oracle statements run before `oracle` (views over `<stream>_raw`).
    setup: &'a [&'a str],
    oracle: &'a str,
    kills: usize,
    /// The oracle must have more rows than this (the test is not vacuous).
    min_rows: usize,
    how: Stop,
    output: Output,
    /// Some operator's state is incremental: a checkpoint holding deltas must be seen
    /// committed during the run (the test then covers restoring from chains).
    deltas: bool,
}

/// Runs `query` over the generator's `streams` into the output with checkpoints every
/// 100 ms, kills the process `kills` times at random moments (restarting it each
/// time), lets the last run finish, and compares the published rows with `oracle` run
/// by DataFusion over the same events (tables `<stream>_raw`, then `setup`).
async fn killed_and_resumed(case: Crash<'_>) {
    let Crash {
        streams,
        query,
        setup,
        oracle,
        kills: kills_wanted,
        min_rows,
        how,
        output,
        deltas,
    } = case;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sources: String = streams
        .iter()
        .map(|(s, count, rate)| {
            format!(
                "CREATE TABLE {s} WITH (connector = 'generator', stream = '{s}', seed = '7', \
                 count = '{count}', rate = '{rate}', event_time_field = 'event_time', \
                 watermark_delay = '0s');\n"
            )
        })
        .collect();
    exactly_once_pipeline(
        d,
        "crash",
        &format!(
            "{sources}CREATE TABLE out WITH ({});\n\
             INSERT INTO out {query};\n",
            output.options()
        ),
    );
    let checkpoints = d.join("checkpoints");
    // A fixed-seed generator of kill moments: after 1–4 more committed checkpoints,
    // then 0–99 ms later (so kills land before, during and after checkpoints).
    let mut seed: u64 = 0x5eed_1234;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut kills = 0;
    let mut saw_deltas = false;
    while kills < kills_wanted {
        let before = committed(&checkpoints);
        let mut run = Running::start(d, &["p.yaml"]);
        let wanted = before + 1 + next(4);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut finished = false;
        while committed(&checkpoints) < wanted {
            if run.child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            assert!(Instant::now() < deadline, "no checkpoint progress");
            if deltas && !saw_deltas {
                saw_deltas = lists_a_delta(d);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if finished {
            let (code, stderr) = run.wait(Duration::from_secs(10));
            assert_eq!(code, Some(0), "a run failed after {kills} kills: {stderr}");
            break;
        }
        std::thread::sleep(Duration::from_millis(next(100)));
        match how {
            Stop::Kill => {
                run.child.kill().unwrap(); // SIGKILL
                run.child.wait().unwrap();
            }
            Stop::Term => {
                run.sigterm();
                let (code, stderr) = run.wait(Duration::from_secs(60));
                assert_eq!(code, Some(0), "a stop drains and exits cleanly: {stderr}");
            }
        }
        kills += 1;
    }
    assert_eq!(
        kills, kills_wanted,
        "the input ran out before {kills_wanted} kills: slow the generator"
    );
    let (code, stderr) = Running::start(d, &["p.yaml"]).wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("resuming from checkpoint"),
        "the last run resumed: {stderr}"
    );

    let ctx = SessionContext::new();
    for (s, count, rate) in streams {
        let file = format!("{s}.jsonl");
        generate(
            d,
            s,
            "7",
            &count.to_string(),
            &[&format!("rate={rate}")],
            &file,
        );
        register_generated(&ctx, &format!("{s}_raw"), s, &[d.join(&file)]);
    }
    for statement in setup {
        batch_sql(&ctx, statement).await;
    }
    let expected = batches_as_json(&batch_sql(&ctx, oracle).await);
    let got = applied_changelog(output.rows(d));
    assert!(expected.len() > min_rows, "{} rows", expected.len());
    assert!(saw_deltas || !deltas, "no committed checkpoint held deltas");
    assert_same_rows(
        &format!("after {kills} kills the committed output"),
        &got,
        &expected,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ten_times_the_committed_output_equals_the_batch_answer() {
    killed_and_resumed(Crash {
        streams: &[("orders", 20_000, 6000)],
        query: QUERY,
        setup: &[ORDERS_VIEW],
        oracle: WINDOWED_ORACLE,
        kills: 10,
        min_rows: 1000,
        how: Stop::Kill,
        output: Output::Parquet,
        deltas: false,
    })
    .await;
}

/// A window over many keys (customers, in 10 s windows), where a checkpoint interval
/// changes few of them: window state is checkpointed as deltas on a full snapshot,
/// and every restore reads such a chain. Killed ten times, the committed output still
/// equals the batch answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_window_state_killed_ten_times_equals_the_batch_answer() {
    killed_and_resumed(Crash {
        streams: &[("orders", 20_000, 6000)],
        query: "SELECT CAST(to_unixtime(w.start) AS BIGINT) AS start, customer_id, n, round(total, 2) AS total FROM \
            (SELECT tumble(INTERVAL '10' SECOND) AS w, customer_id, count(*) AS n, sum(total) AS total \
             FROM orders GROUP BY w, customer_id)",
        setup: &["CREATE VIEW orders AS SELECT customer_id, total, \
            CAST(event_time AS TIMESTAMP) AS event_time FROM orders_raw"],
        oracle: "SELECT CAST(to_unixtime(date_bin(INTERVAL '10' SECOND, event_time)) AS BIGINT) AS start, \
            customer_id, count(*) AS n, round(sum(total), 2) AS total FROM orders GROUP BY 1, 2",
        kills: 10,
        min_rows: 1000,
        how: Stop::Kill,
        output: Output::Parquet,
        deltas: true,
    })
    .await;
}

/// The busiest restaurant of each second (Top-N per window) across kills. (The step
/// that gathers a window for ranking rarely holds rows at a barrier, since a window
/// reaches it with the watermark that releases it; its snapshot and restore have a
/// unit test in `sql::window`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_n_per_window_killed_five_times_equals_the_batch_answer() {
    killed_and_resumed(Crash {
        streams: &[("orders", 20_000, 6000)],
        query: "SELECT start, restaurant_id, n FROM (SELECT CAST(to_unixtime(w.start) AS BIGINT) AS start, \
               restaurant_id, n, ROW_NUMBER() OVER (PARTITION BY w ORDER BY n DESC, restaurant_id) AS rn \
               FROM (SELECT tumble(INTERVAL '1' SECOND) AS w, restaurant_id, count(*) AS n FROM orders \
               GROUP BY w, restaurant_id)) WHERE rn = 1",
        setup: &[ORDERS_VIEW],
        oracle: "SELECT start, restaurant_id, n FROM (SELECT start, restaurant_id, n, \
               ROW_NUMBER() OVER (PARTITION BY start ORDER BY n DESC, restaurant_id) AS rn FROM \
               (SELECT CAST(to_unixtime(date_bin(INTERVAL '1' SECOND, event_time)) AS BIGINT) AS start, \
                restaurant_id, count(*) AS n FROM orders GROUP BY 1, 2)) WHERE rn = 1",
        kills: 5,
        min_rows: 10,
        how: Stop::Kill,
        output: Output::Parquet,
        deltas: false,
    })
    .await;
}

/// A query with two stateful operations — a deduplication by event (`ROW_NUMBER()`)
/// then a window per restaurant — runs as a chain of two stages; across kills both
/// stages' state is checkpointed and restored, and the output equals the batch answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_stateful_stages_killed_five_times_equals_the_batch_answer() {
    killed_and_resumed(Crash {
        streams: &[("orders", 20_000, 6000)],
        query: "SELECT CAST(to_unixtime(w.start) AS BIGINT) AS start, restaurant_id, n FROM \
            (SELECT tumble(INTERVAL '1' SECOND) AS w, restaurant_id, count(*) AS n FROM \
             (SELECT restaurant_id, event_time, \
               ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY event_time) AS rn FROM orders) \
             WHERE rn = 1 GROUP BY w, restaurant_id)",
        setup: &["CREATE VIEW orders AS SELECT event_id, restaurant_id, \
            CAST(event_time AS TIMESTAMP) AS event_time FROM orders_raw"],
        oracle: "SELECT CAST(to_unixtime(date_bin(INTERVAL '1' SECOND, event_time)) AS BIGINT) AS start, \
            restaurant_id, count(*) AS n FROM \
            (SELECT event_id, min(restaurant_id) AS restaurant_id, min(event_time) AS event_time \
             FROM orders GROUP BY event_id) GROUP BY 1, 2",
        kills: 5,
        min_rows: 100,
        how: Stop::Kill,
        output: Output::Parquet,
        deltas: false,
    })
    .await;
}

/// A `UNION ALL` of orders and kitchen tickets counted per second and stream: each
/// input is a stage of its own writing the table the window reads; across kills the
/// barriers are aligned over both inputs of that reader, so the output equals the
/// batch answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_over_a_union_all_killed_five_times_equals_the_batch_answer() {
    killed_and_resumed(Crash {
        // Paced orders keep the pipeline running; kitchen tickets are read at once.
        streams: &[("orders", 20_000, 6000), ("kitchen", 20_000, 0)],
        query: "SELECT CAST(to_unixtime(w.start) AS BIGINT) AS start, src, n FROM \
            (SELECT tumble(INTERVAL '1' SECOND) AS w, src, count(*) AS n FROM \
             (SELECT 'order' AS src, event_time FROM orders \
              UNION ALL SELECT 'ticket' AS src, event_time FROM kitchen) \
             GROUP BY w, src)",
        setup: &[
            "CREATE VIEW orders AS SELECT CAST(event_time AS TIMESTAMP) AS event_time FROM orders_raw",
            "CREATE VIEW kitchen AS SELECT CAST(event_time AS TIMESTAMP) AS event_time FROM kitchen_raw",
        ],
        oracle: "SELECT CAST(to_unixtime(date_bin(INTERVAL '1' SECOND, event_time)) AS BIGINT) AS start, \
            src, count(*) AS n FROM \
            (SELECT 'order' AS src, event_time FROM orders UNION ALL SELECT 'ticket' AS src, event_time FROM kitchen) \
            GROUP BY 1, 2",
        kills: 5,
        min_rows: 10,
        how: Stop::Kill,
        output: Output::Parquet,
        deltas: false,
    })
    .await;
}

/// The interval join of orders and kitchen tickets across kills: both sides' kept rows
/// are checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_join_killed_five_times_equals_the_batch_answer() {
    let join = "SELECT o.order_id, k.ticket_id, k.station FROM orders o JOIN kitchen k \
                ON k.order_id = o.order_id \
                AND k.event_time BETWEEN o.event_time AND o.event_time + INTERVAL '10' MINUTE \
                WHERE o.event_type = 'order_placed'";
    orders_and_kitchen_killed_five_times(join).await;
}

/// `query` over orders and kitchen tickets, killed five times into Parquet, against the
/// same query in batch.
async fn orders_and_kitchen_killed_five_times(query: &str) {
    killed_and_resumed(Crash {
        // Paced orders keep the pipeline running; kitchen tickets, unpaced, are all read
        // at once and their source finishes (checkpoints go on with its end position).
        streams: &[("orders", 20_000, 6000), ("kitchen", 20_000, 0)],
        query,
        setup: &[
            "CREATE VIEW orders AS SELECT * FROM orders_raw",
            "CREATE VIEW kitchen AS SELECT * FROM kitchen_raw",
        ],
        oracle: query,
        kills: 5,
        min_rows: 1000,
        how: Stop::Kill,
        output: Output::Parquet,
        deltas: false,
    })
    .await;
}

/// Outer and anti joins across kills: the marks of which rows found a pair are
/// checkpointed with the kept rows, so a restored join neither repeats nor loses a row
/// without one (emitted NULL-padded, or alone, as the watermark passes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_and_an_anti_interval_join_killed_five_times_equal_the_batch_answer() {
    let within = "k.event_time BETWEEN o.event_time AND o.event_time + INTERVAL '2' SECOND";
    let left = format!(
        "SELECT o.order_id, o.event_type, k.ticket_id, k.station FROM orders o \
         LEFT JOIN kitchen k ON k.order_id = o.order_id AND {within}"
    );
    let anti = format!(
        "SELECT o.order_id, o.event_type FROM orders o WHERE NOT EXISTS \
         (SELECT 1 FROM kitchen k WHERE k.order_id = o.order_id AND {within})"
    );
    for query in [&left, &anti] {
        orders_and_kitchen_killed_five_times(query).await;
    }
}

/// The windowed aggregation into Kafka through transactions, killed ten times: a
/// `read_committed` consumer reads each result row exactly once (kills land before,
/// during and after the sink's commits; the restored checkpoints' uncommitted output
/// is sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_in_transactions_killed_ten_times_equals_the_batch_answer() {
    let topic = crate::kafka::fresh_topic("crash.windows");
    // Windows of 100 ms, so that nearly every checkpoint interval has output to commit
    // (with 1 s windows most would be empty, and a lost or doubled commit would rarely
    // show).
    killed_and_resumed(Crash {
        streams: &[("orders", 20_000, 6000)],
        query: "SELECT CAST(w.start AS BIGINT) AS start, restaurant_id, n, round(total, 2) AS total FROM \
             (SELECT tumble(INTERVAL '100' MILLISECOND) AS w, restaurant_id, count(*) AS n, \
             sum(total) AS total FROM orders GROUP BY w, restaurant_id)",
        setup: &[ORDERS_VIEW],
        oracle: "SELECT CAST(date_bin(INTERVAL '100' MILLISECOND, event_time) AS BIGINT) / 1000000 AS start, \
             restaurant_id, count(*) AS n, round(sum(total), 2) AS total FROM orders GROUP BY 1, 2",
        kills: 10,
        min_rows: 1000,
        how: Stop::Kill,
        output: Output::Kafka(topic),
        deltas: false,
    })
    .await;
}

/// A GROUP BY without a window (a changelog: `+I`, then `-U`/`+U` per change) into
/// Kafka through transactions, killed five times: the changelog a `read_committed`
/// consumer reads, applied in order, equals the batch answer (a lost or doubled record
/// would leave a row retracted twice or a stale row behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updating_aggregate_into_kafka_killed_five_times_applies_to_the_batch_answer() {
    updating_aggregate_killed_five_times(Output::Kafka(crate::kafka::fresh_topic(
        "crash.updating",
    )))
    .await;
}

/// The same updating aggregate written as upserts by key (the latest record per key
/// is the group's row, a tombstone removes it), killed five times: the topic's view
/// equals the batch answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updating_aggregate_upserted_into_kafka_killed_five_times_equals_the_batch_answer() {
    updating_aggregate_killed_five_times(Output::KafkaUpsert(crate::kafka::fresh_topic(
        "crash.upsert",
    )))
    .await;
}

/// Revenue per restaurant without a window (an updating aggregate) into `output`,
/// killed five times; the published result equals the batch answer.
async fn updating_aggregate_killed_five_times(output: Output) {
    killed_and_resumed(Crash {
        streams: &[("orders", 20_000, 6000)],
        query: "SELECT restaurant_id, n, round(total, 2) AS total FROM \
             (SELECT restaurant_id, count(*) AS n, sum(total) AS total FROM orders GROUP BY restaurant_id)",
        setup: &[ORDERS_VIEW],
        oracle: "SELECT restaurant_id, count(*) AS n, round(sum(total), 2) AS total FROM orders \
             GROUP BY restaurant_id",
        kills: 5,
        min_rows: 10,
        how: Stop::Kill,
        output,
        deltas: false,
    })
    .await;
}

/// Every phase of a checkpoint hit on purpose (`TRIBUTARY_FAULT_INJECT`, see
/// `checkpoint::fault`): run after run, the process aborts in the next phase — while
/// the generator is still producing — during an operator's snapshot, after a sink's
/// pre-commit, after the state is stored but before the metadata commit, after the
/// metadata commit but before any sink publishes, in the middle of a restore, and
/// after one sink task published. The last run finishes; the published output equals
/// the batch answer.
async fn aborted_in_every_checkpoint_phase(output: Output) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two sink tasks, so `sink-committed` stops between the two publishing.
    exactly_once_pipeline(
        d,
        "phases",
        &format!(
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '7', \
               count = '30000', rate = '5000', event_time_field = 'event_time', \
               watermark_delay = '0s');\n\
             CREATE TABLE out WITH ({}, parallelism = '2');\n\
             INSERT INTO out {QUERY};\n",
            output.options()
        ),
    );
    abort_in_every_checkpoint_phase_then_resume(d);

    let ctx = SessionContext::new();
    generate(d, "orders", "7", "30000", &["rate=5000"], "orders.jsonl");
    register_generated(&ctx, "orders_raw", "orders", &[d.join("orders.jsonl")]);
    batch_sql(&ctx, ORDERS_VIEW).await;
    let expected = batches_as_json(&batch_sql(&ctx, WINDOWED_ORACLE).await);
    assert!(expected.len() > 1000, "{} rows", expected.len());
    assert_same_rows(
        "after an abort in every checkpoint phase the published output",
        &output.rows(d),
        &expected,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_output_is_exactly_once_after_an_abort_in_every_checkpoint_phase() {
    aborted_in_every_checkpoint_phase(Output::Parquet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_output_is_exactly_once_after_an_abort_in_every_checkpoint_phase() {
    aborted_in_every_checkpoint_phase(Output::Kafka(crate::kafka::fresh_topic("crash.phases")))
        .await;
}

/// A bounded pipeline run to its end with checkpoints, then started again: its last
/// checkpoint, taken at the end of the input, holds every source at its end and the
/// sink's last output, so the second run resumes there and writes nothing (before, it
/// resumed from the last checkpoint taken on the interval and wrote the tail again).
#[test]
fn a_finished_pipeline_started_again_resumes_at_its_end_and_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    exactly_once_pipeline(
        d,
        "rerun",
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '3', \
           count = '3000', rate = '3000');\n\
         CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
         INSERT INTO out SELECT event_id FROM orders;\n",
    );
    ok(&run(d, &["run", "p.yaml"]));
    assert_eq!(published_rows(&d.join("out")).len(), 3000);
    let again = run(d, &["run", "p.yaml"]);
    ok(&again);
    assert!(
        stderr(&again).contains("resuming from checkpoint"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        published_rows(&d.join("out")).len(),
        3000,
        "the second run resumed at the end"
    );
}

/// A bounded pipeline checkpointing once an hour ends when its input does: the sink at
/// its end asks for the checkpoint that publishes its output at once, instead of
/// waiting out the interval (before, the run lasted until the next hourly checkpoint).
#[test]
fn a_finished_sink_does_not_wait_out_the_checkpoint_interval() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    exactly_once_pipeline_every(
        d,
        "hourly",
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '3', \
           count = '300', rate = '0');\n\
         CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
         INSERT INTO out SELECT event_id FROM orders;\n",
        "1h",
    );
    let (code, stderr) = Running::start(d, &["p.yaml"]).wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(published_rows(&d.join("out")).len(), 300);
    assert_eq!(
        committed(&d.join("checkpoints")),
        1,
        "one checkpoint, at the end"
    );
}

/// Two sinks, one of whose inputs ends at once: that sink publishes everything at its
/// end and checkpoints go on for the other one (before, the first finished sink ended
/// checkpointing for the whole pipeline). Both outputs are complete.
#[test]
fn checkpoints_go_on_after_one_of_two_sinks_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    exactly_once_pipeline(
        d,
        "two_sinks",
        "CREATE TABLE quick WITH (connector = 'generator', stream = 'orders', seed = '1', \
           count = '50', rate = '0');\n\
         CREATE TABLE slow WITH (connector = 'generator', stream = 'orders', seed = '2', \
           count = '1500', rate = '1000');\n\
         CREATE TABLE a WITH (connector = 'parquet', path = 'a');\n\
         CREATE TABLE b WITH (connector = 'parquet', path = 'b');\n\
         INSERT INTO a SELECT event_id FROM quick;\n\
         INSERT INTO b SELECT event_id FROM slow;\n",
    );
    ok(&run(d, &["run", "p.yaml"]));
    let last = committed(&d.join("checkpoints"));
    assert!(
        last >= 5,
        "checkpoints went on while the slow branch ran (~1.5 s at 100 ms): last committed {last}"
    );
    assert_eq!(published_rows(&d.join("a")).len(), 50);
    assert_eq!(published_rows(&d.join("b")).len(), 1500);
}

/// `rows` as published: a changelog (rows with an `_op`) is applied in order, `+I`/`+U`
/// adding the row and `-U`/`-D` removing one equal row (which must be there); other
/// rows are returned as they are.
fn applied_changelog(rows: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    if !rows.iter().any(|r| r.get("_op").is_some()) {
        return rows;
    }
    let mut live: Vec<serde_json::Value> = Vec::new();
    for mut row in rows {
        let op = row
            .as_object_mut()
            .and_then(|o| o.remove("_op"))
            .and_then(|op| op.as_str().map(str::to_string))
            .expect("every changelog row has an _op");
        match op.as_str() {
            "+I" | "+U" => live.push(row),
            "-U" | "-D" => {
                let at = live.iter().position(|r| *r == row);
                let at = at.unwrap_or_else(|| panic!("{op} retracts a row never added: {row}"));
                live.swap_remove(at);
            }
            other => panic!("unknown op {other}"),
        }
    }
    live
}

/// Where a crash test's pipeline writes, and how the test reads what was published.
enum Output {
    /// Parquet files under `out/` (hidden until committed).
    Parquet,
    /// A Kafka topic of the test broker (3 partitions), read `read_committed`.
    Kafka(String),
    /// The same, written as upserts (`changelog = 'upsert'`): the latest record per
    /// key is the row, a tombstone deletes it.
    KafkaUpsert(String),
}

impl Output {
    fn options(&self) -> String {
        match self {
            Output::Parquet => "connector = 'parquet', path = 'out'".into(),
            // Its own transactional ids: crash tests run side by side under one
            // pipeline name, and alike ids would fence each other's producers.
            Output::Kafka(topic) => format!(
                "connector = 'kafka', bootstrap_servers = '{}', topic = '{topic}', \
                 partitions = '3', key_field = 'restaurant_id', \
                 transactional_id_prefix = '{topic}'",
                crate::kafka::bootstrap()
            ),
            Output::KafkaUpsert(topic) => format!(
                "{}, changelog = 'upsert'",
                Output::Kafka(topic.clone()).options()
            ),
        }
    }

    fn rows(&self, dir: &Path) -> Vec<serde_json::Value> {
        match self {
            Output::Parquet => published_rows(&dir.join("out")),
            Output::Kafka(topic) => {
                crate::kafka::read_topic(&crate::kafka::bootstrap(), topic, "read_committed")
            }
            Output::KafkaUpsert(topic) => {
                let mut latest = std::collections::BTreeMap::new();
                let records =
                    crate::kafka::read_records(&crate::kafka::bootstrap(), topic, "read_committed");
                for (key, value) in records {
                    let key = key.expect("an upsert record has a key");
                    match value {
                        Some(v) => latest.insert(key, v),
                        None => latest.remove(&key),
                    };
                }
                latest.into_values().collect()
            }
        }
    }
}

/// How the test stops a running pipeline.
#[derive(Clone, Copy)]
enum Stop {
    /// `kill -9`: no chance to clean up.
    Kill,
    /// SIGTERM: sources stop, the graph drains, sinks keep only committed output.
    Term,
}

/// Stopped (SIGTERM) three times and restarted, the output equals the batch answer.
/// (Stopped sources report where they stopped, so a checkpoint taken while the graph
/// drains usually covers everything up to the stop; what no committed checkpoint
/// covers is not published at the stop — `close_uncommitted`, unit-tested in the
/// Parquet sink.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_three_times_the_output_equals_the_batch_answer() {
    killed_and_resumed(Crash {
        streams: &[("orders", 20_000, 6000)],
        query: QUERY,
        setup: &[ORDERS_VIEW],
        oracle: WINDOWED_ORACLE,
        kills: 3,
        min_rows: 1000,
        how: Stop::Term,
        output: Output::Parquet,
        deltas: false,
    })
    .await;
}

/// The batch answer of `QUERY` over the view `orders` (`ORDERS_VIEW`).
const WINDOWED_ORACLE: &str = "SELECT CAST(to_unixtime(date_bin(INTERVAL '1' SECOND, event_time)) AS BIGINT) \
    AS start, restaurant_id, count(*) AS n, round(sum(total), 2) AS total FROM orders GROUP BY 1, 2";

/// Asserts that `got` and `expected` hold the same rows as multisets, naming `what`
/// and the first rows missing and extra.
fn assert_same_rows(what: &str, got: &[serde_json::Value], expected: &[serde_json::Value]) {
    let (got, expected) = (canonical(got), canonical(expected));
    let missing = multiset_minus(&expected, &got);
    let extra = multiset_minus(&got, &expected);
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what} must equal the batch answer: {} rows missing (first {:?}), {} extra (first {:?})",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>()
    );
}

/// The rows of sorted `a` not matched one-for-one in sorted `b`.
fn multiset_minus<'a>(a: &'a [String], b: &[String]) -> Vec<&'a String> {
    let mut out = Vec::new();
    let mut j = 0;
    for x in a {
        while j < b.len() && b[j] < *x {
            j += 1;
        }
        if j < b.len() && b[j] == *x {
            j += 1;
        } else {
            out.push(x);
        }
    }
    out
}

const RESCALE_COLUMNS: &str =
    "event_id VARCHAR, order_id BIGINT, restaurant_id BIGINT, total DOUBLE, event_time TIMESTAMP";

/// The source's own bytes in a source task's checkpointed blob: after a line naming
/// the format and a line of its splits' event times (`engine/position.rs`).
fn source_position(blob: &[u8]) -> Option<&[u8]> {
    let rest = blob.strip_prefix(b"tributary-position-v2\n".as_slice())?;
    rest.splitn(2, |c| *c == b'\n').nth(1)
}

/// Offsets the latest committed checkpoint holds for source `node` (summed over
/// partitions), read from the checkpoint directory.
pub(crate) fn checkpointed_offsets(checkpoints: &Path, node: &str) -> i64 {
    let id = committed(checkpoints);
    if id == 0 {
        return 0;
    }
    let dir = checkpoints.join(format!("{id:020}")).join(node);
    std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| {
                    serde_json::from_slice::<std::collections::BTreeMap<i32, i64>>(source_position(
                        &b,
                    )?)
                    .ok()
                })
                .flat_map(|m| m.into_values())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs the pipeline of `p.yaml` in `d`. The last run (`last`) must end by itself,
/// resumed from a checkpoint; an earlier one is killed (`kill -9`) once `covered`
/// says its latest checkpoint holds everything given to it so far.
fn resume_or_kill(d: &Path, last: bool, what: &str, covered: impl FnMut() -> bool) {
    let mut run = Running::start(d, &["p.yaml"]);
    if last {
        let (code, stderr) = run.wait(Duration::from_secs(120));
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stderr.contains("resuming from checkpoint"), "{stderr}");
        return;
    }
    eventually(what, Duration::from_secs(60), covered);
    run.child.kill().unwrap();
    run.child.wait().unwrap();
}

/// A windowed aggregation reading Kafka runs at parallelism 2, is killed once its
/// checkpoint covers every record produced so far, resumes at parallelism 1 (state
/// merged from two tasks), is killed again, and finishes at parallelism 4 (state split
/// by key group, Kafka partitions redistributed). The committed output equals the
/// batch answer over all records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_resumes_at_parallelism_one_and_four_with_the_batch_answer() {
    let servers = crate::kafka::bootstrap();
    let topic = crate::kafka::fresh_topic("rescale.orders");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let starts = [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:01:00Z",
        "2026-01-01T00:02:00Z",
    ];
    for (k, start) in starts.iter().enumerate() {
        generate(
            d,
            "orders",
            &(40 + k).to_string(),
            "4000",
            &["rate=0", &format!("start_time={start}")],
            &format!("in/b{k}.jsonl"),
        );
    }
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders ({RESCALE_COLUMNS}) WITH (connector = 'kafka', \
               bootstrap_servers = '{servers}', topic = '{topic}', \
               event_time_field = 'event_time', watermark_delay = '0s');\n\
             CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
             INSERT INTO out {QUERY};\n"
        ),
    );
    let checkpoints = d.join("checkpoints");
    let mut produced = 0i64;
    for (k, parallelism) in [2, 1, 4].into_iter().enumerate() {
        write(
            &d.join("produce.sql"),
            &format!(
                "CREATE TABLE src ({RESCALE_COLUMNS}) WITH (connector = 'file', path = 'in/b{k}.jsonl', format = 'json');\n\
                 CREATE TABLE dst ({RESCALE_COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
                   topic = '{topic}', partitions = '4', key_field = 'order_id');\n\
                 INSERT INTO dst SELECT * FROM src;\n"
            ),
        );
        let o = run(d, &["run", "produce.sql"]);
        ok(&o);
        produced += log_event(&stderr(&o), "pipeline finished").unwrap()["rows_written"]
            .as_i64()
            .unwrap();
        let last = k == 2;
        write(
            &d.join("p.yaml"),
            &format!(
                "name: rescale\nsql: p.sql\nparallelism: {parallelism}\n\
                 checkpoint: {{ interval: 100ms, dir: checkpoints }}\n\
                 connectors: {{ orders: {{ bounded: {last} }} }}\n"
            ),
        );
        resume_or_kill(
            d,
            last,
            "a checkpoint covering every record produced",
            || checkpointed_offsets(&checkpoints, "orders") == produced,
        );
    }

    let ctx = SessionContext::new();
    let files: Vec<_> = (0..3).map(|k| d.join(format!("in/b{k}.jsonl"))).collect();
    register_generated(&ctx, "orders_raw", "orders", &files);
    batch_sql(&ctx, ORDERS_VIEW).await;
    let expected = batches_as_json(&batch_sql(&ctx, WINDOWED_ORACLE).await);
    let got = published_rows(&d.join("out"));
    assert_same_rows("rescaled 2 → 1 → 4", &got, &expected);
}

/// Resuming is refused, with the reason, when the checkpoint does not fit the
/// pipeline: an aggregate changed, or a generator (whose position belongs to its
/// partition) runs at another parallelism.
#[test]
fn a_checkpoint_of_another_pipeline_version_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sql = |aggregates: &str| {
        format!(
            "CREATE TABLE orders WITH (connector = 'generator', {GEN}, \
               event_time_field = 'event_time', watermark_delay = '0s');\n\
             CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
             INSERT INTO out SELECT tumble(INTERVAL '1' SECOND) AS w, restaurant_id, {aggregates} \
             FROM orders GROUP BY w, restaurant_id;\n"
        )
    };
    let yaml = |parallelism: usize| {
        format!(
            "name: versions\nsql: p.sql\nparallelism: {parallelism}\n\
             checkpoint: {{ interval: 100ms, dir: checkpoints }}\n"
        )
    };
    write(&d.join("p.sql"), &sql("count(*) AS n"));
    write(&d.join("p.yaml"), &yaml(1));
    let mut first = Running::start(d, &["p.yaml"]);
    eventually("a committed checkpoint", Duration::from_secs(60), || {
        committed(&d.join("checkpoints")) > 0
    });
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    write(&d.join("p.sql"), &sql("count(*) AS n, avg(total) AS mean"));
    let o = run(d, &["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("CHK003"), "{err}");
    assert!(err.contains("changed: its state was taken as"), "{err}");

    write(&d.join("p.sql"), &sql("count(*) AS n"));
    write(&d.join("p.yaml"), &yaml(2));
    let o = run(d, &["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("ran at parallelism 1, now 2"), "{err}");
}

/// `tributary savepoint` asks the running pipeline for a checkpoint now; it is named,
/// listed by `tributary checkpoints`, and kept while newer checkpoints replace the
/// regular ones.
#[test]
fn a_savepoint_is_taken_on_request_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders WITH (connector = 'generator', {GEN}, \
               event_time_field = 'event_time', watermark_delay = '0s');\n\
             CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
             INSERT INTO out {QUERY};\n"
        ),
    );
    write(
        &d.join("p.yaml"),
        "name: sp\nsql: p.sql\ncheckpoint: { interval: 100ms, dir: checkpoints, retain: 2 }\n",
    );
    let mut pipeline = Running::start(d, &["p.yaml"]);
    let admin = pipeline.wait_for_log(
        "admin endpoint: /metrics and /healthz",
        Duration::from_secs(30),
    );
    let addr = admin["addr"].as_str().unwrap().to_string();
    let listen = format!("admin.listen={addr}");
    let o = tributary(d)
        .args([
            "savepoint",
            "sp",
            "--name",
            "before-deploy",
            "--set",
            &listen,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let said = stdout(&o);
    assert!(
        said.starts_with("savepoint before-deploy of sp: checkpoint "),
        "{said}"
    );
    let id: u64 = said.trim().rsplit(' ').next().unwrap().parse().unwrap();
    // Checkpoint metrics are exported while it runs.
    let metrics = crate::lifecycle::http_get(&addr, "/metrics").1;
    for name in [
        "tributary_checkpoints_total{pipeline=\"sp\"}",
        "tributary_checkpoint_seconds",
        "tributary_checkpoint_alignment_seconds",
        "tributary_checkpoint_bytes",
        "tributary_checkpoint_age_seconds",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
    // Regular checkpoints go on; only the last two of them are kept.
    eventually("five more checkpoints", Duration::from_secs(60), || {
        committed(&d.join("checkpoints")) >= id + 5
    });
    pipeline.child.kill().unwrap();
    pipeline.child.wait().unwrap();
    let o = run(d, &["checkpoints", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listing = stdout(&o);
    let rows: Vec<&str> = listing.lines().skip(2).collect();
    assert!(
        rows.iter()
            .any(|r| r.trim_start().starts_with(&id.to_string()) && r.ends_with("before-deploy")),
        "{listing}"
    );
    // The last two checkpoints are kept; killed between a commit and its garbage
    // collection, a third may remain, never an older one.
    let regular: Vec<u64> = rows
        .iter()
        .filter(|r| !r.ends_with("before-deploy"))
        .map(|r| r.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    let last = regular.iter().copied().max().unwrap_or(0);
    assert!(
        (2..=3).contains(&regular.len()) && regular.iter().all(|c| *c + 2 >= last),
        "the savepoint and the last two checkpoints:\n{listing}"
    );
}

/// Files read whole, per the latest committed checkpoint of a file source `node`.
fn checkpointed_files(checkpoints: &Path, node: &str) -> usize {
    let id = committed(checkpoints);
    if id == 0 {
        return 0;
    }
    let dir = checkpoints.join(format!("{id:020}")).join(node);
    std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| {
                    serde_json::from_slice::<serde_json::Value>(source_position(&b)?).ok()
                })
                .map(|v| v["done"].as_array().map_or(0, |a| a.len()))
                .sum()
        })
        .unwrap_or(0)
}

/// A followed directory of JSON files feeds a windowed aggregation with checkpoints:
/// killed once its checkpoint has every file so far, more files arrive, it resumes at
/// another parallelism (file positions move between tasks by name), three times; the
/// output equals the batch answer over all files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_directory_resumes_from_file_positions_at_other_parallelisms() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    write(
        &d.join("p.sql"),
        &format!(
            "CREATE TABLE orders ({RESCALE_COLUMNS}) WITH (connector = 'file', path = 'in', \
               format = 'json', follow = 'true', poll_interval = '50ms', \
               event_time_field = 'event_time', watermark_delay = '0s');\n\
             CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
             INSERT INTO out {QUERY};\n"
        ),
    );
    let checkpoints = d.join("checkpoints");
    let mut files = 0;
    for (k, parallelism) in [2, 1, 3].into_iter().enumerate() {
        // Three files per phase, each ten seconds of event time after the previous
        // one (a task reads its files in name order, so its rows stay in order).
        for f in 0..3 {
            let start = format!("2026-01-01T00:0{k}:{:02}Z", f * 10);
            generate(
                d,
                "orders",
                &(60 + 3 * k + f).to_string(),
                "1500",
                &["rate=0", &format!("start_time={start}")],
                &format!("in/_p{k}f{f}.jsonl"),
            );
            // Hidden while written, renamed when complete (the followed-directory rule).
            std::fs::rename(
                d.join(format!("in/_p{k}f{f}.jsonl")),
                d.join(format!("in/p{k}f{f}.jsonl")),
            )
            .unwrap();
            files += 1;
        }
        let last = k == 2;
        write(
            &d.join("p.yaml"),
            &format!(
                "name: files\nsql: p.sql\nparallelism: {parallelism}\n\
                 checkpoint: {{ interval: 100ms, dir: checkpoints }}\n\
                 connectors: {{ orders: {{ follow: {} }} }}\n",
                !last
            ),
        );
        resume_or_kill(d, last, "a checkpoint with every file read", || {
            checkpointed_files(&checkpoints, "orders") == files
        });
    }

    let ctx = SessionContext::new();
    let all: Vec<_> = (0..3)
        .flat_map(|k| (0..3).map(move |f| (k, f)))
        .map(|(k, f)| d.join(format!("in/p{k}f{f}.jsonl")))
        .collect();
    register_generated(&ctx, "orders_raw", "orders", &all);
    batch_sql(&ctx, ORDERS_VIEW).await;
    let expected = batches_as_json(&batch_sql(&ctx, WINDOWED_ORACLE).await);
    let got = published_rows(&d.join("out"));
    assert_same_rows("files at parallelism 2 → 1 → 3", &got, &expected);
}
