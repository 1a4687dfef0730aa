//! Dead letters: what bad input costs a pipeline, and how fast a queue replays.
//!
//! 1. The same pipeline (JSON lines of Nexmark-like bids from a file, a projection,
//!    a blackhole sink) over the same number of lines with 0% and then 10% malformed,
//!    the bad ones kept in the local dead-letter store: events/s of each and the ratio
//!    (the target: ≥ 0.9).
//! 2. A bulk replay of 1,000,000 dead letters of the local store (the admin
//!    workflow's, in chunks: each chunk into the replay inbox and marked in one
//!    transaction): dead letters/s.
//!
//! 3. With `TRIBUTARY_BENCH_KAFKA` (bootstrap servers): the same on the Kafka store
//!    (a registry started from the binary): letters written through its sink, then a
//!    bulk replay (each chunk into the source topic and marked in one transaction).
//!
//! `cargo bench --bench dead_letters` (`TRIBUTARY_BENCH_EVENTS`, default 2,000,000
//! lines; `TRIBUTARY_BENCH_LETTERS`, default 1,000,000, for both stores).

use std::sync::Arc;
use std::time::Instant;

use tributary::connectors::dead_letters::local::LocalStore;
use tributary::connectors::dead_letters::workflow::{Target, Workflow};
use tributary::connectors::dead_letters::{DeadLetterStore, Filter, Store};
use tributary::dlq::{BadRecordReason, DeadLetter, Origin, PayloadFormat, Status};
use tributary::engine::{Runtime, RuntimeSettings, TaskInfo};
use tributary::planner::{PlanSettings, SqlPlanner, SqlText};

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` bids as JSON lines; with `bad_every` = k, every kth line is cut short.
fn bids(n: usize, bad_every: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 120);
    for i in 0..n {
        let line = format!(
            "{{\"auction\":{},\"bidder\":{},\"price\":{},\"channel\":\"{}\",\"date_time\":\"2026-01-01T00:{:02}:{:02}.{:03}Z\"}}",
            1000 + (i * 7919) % 5000,
            1000 + (i * 104_729) % 100_000,
            100 + (i * 2_654_435_761) % 10_000_000,
            ["Google", "Facebook", "Baidu", "Apple"][i % 4],
            (i / 60_000) % 60,
            (i / 1000) % 60,
            i % 1000
        );
        let cut = bad_every.is_some_and(|k| i % k == k - 1);
        out.extend_from_slice(if cut {
            &line.as_bytes()[..line.len() / 2]
        } else {
            line.as_bytes()
        });
        out.push(b'\n');
    }
    out
}

/// Runs the file → projection → blackhole pipeline over `input`; events/s and the
/// number of dead letters stored.
async fn run_pipeline(dir: &std::path::Path, name: &str, input: &[u8]) -> (f64, u64) {
    let path = dir.join(format!("{name}.jsonl"));
    std::fs::write(&path, input).unwrap();
    let sql = format!(
        "CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, \
           date_time TIMESTAMP) WITH (connector = 'file', path = '{}', format = 'json');\n\
         CREATE TABLE out WITH (connector = 'blackhole');\n\
         INSERT INTO out SELECT auction, price * 100 AS cents, channel FROM bids;\n",
        path.display()
    );
    let planned = SqlPlanner::new()
        .plan_pipeline(
            name,
            &SqlText::file(sql, dir.join("p.sql")),
            dir,
            &PlanSettings::default(),
        )
        .await
        .unwrap();
    let mut graph = planned.graph;
    let store = LocalStore::open(dir.join("dlq.sqlite")).unwrap();
    graph.dead_letters = Some(store.sink(name).unwrap());
    let lines = input.iter().filter(|b| **b == b'\n').count();
    let t = Instant::now();
    let report = Runtime::run(graph, RuntimeSettings::default(), std::future::pending())
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(report.bad_records, store.pending_summary(name).unwrap().0);
    (lines as f64 / secs, report.bad_records)
}

fn letter(i: usize) -> DeadLetter {
    DeadLetter {
        id: format!("{i:032x}"),
        pipeline: "replay".into(),
        node: "bids".into(),
        failure_class: BadRecordReason::Malformed,
        message: "unterminated string (at byte 61)".into(),
        payload: format!("{{\"auction\":{i},\"bidder\":7,\"price\":100,\"channel\":\"Goo")
            .into_bytes(),
        payload_format: PayloadFormat::Bytes,
        source: Origin {
            table: Some("bids".into()),
            file: Some("bids.jsonl".into()),
            line: Some(i as i64 + 1),
            ..Origin::default()
        },
        schema_id: None,
        event_time: None,
        first_failure: 1_767_225_600_000 + i as i64,
        last_failure: 1_767_225_600_000 + i as i64,
        attempts: 1,
        status: Status::Pending,
        status_reason: None,
        original_payload: None,
    }
}

/// Prints what [`write_and_replay`] measured of a store.
fn print_store(
    store: &str,
    n: usize,
    (write_rate, replay_rate, stored, replayed): (f64, f64, f64, f64),
) {
    println!("\n{:<28} {:>14} {:>10}", store, "letters/s", "seconds");
    println!(
        "{:<28} {:>14.0} {:>10.1}",
        format!("write {n} (sink)"),
        write_rate,
        stored
    );
    println!(
        "{:<28} {:>14.0} {:>10.1}",
        format!("bulk replay {n}"),
        replay_rate,
        replayed
    );
}

/// Writes `n` letters of pipeline `replay` through `store`'s sink, then replays them
/// all by filter; (write letters/s, replay letters/s, seconds of each).
async fn write_and_replay(store: Store, n: usize, topic: Option<&str>) -> (f64, f64, f64, f64) {
    let factory = store.sink("replay").unwrap();
    let task = TaskInfo {
        pipeline: "replay".into(),
        node: "dead_letters".into(),
        partition: 0,
        parallelism: 1,
        state: tributary::state::memory_backend(),
    };
    let mut sink = factory
        .create(&task, tributary::dlq::record::schema())
        .unwrap();
    let t = Instant::now();
    for start in (0..n).step_by(10_000) {
        let batch: Vec<DeadLetter> = (start..(start + 10_000).min(n))
            .map(|i| {
                let mut l = letter(i);
                l.source.topic = topic.map(str::to_string);
                l
            })
            .collect();
        sink.write(tributary::dlq::record::to_batch(&batch))
            .await
            .unwrap();
    }
    sink.finish().await.unwrap();
    let stored = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let report = Workflow::new(store)
        .replay(
            &Target::Filter(Filter {
                pipeline: Some("replay".into()),
                ..Filter::default()
            }),
            "bench",
            false,
        )
        .await
        .unwrap();
    let replayed = t.elapsed().as_secs_f64();
    assert_eq!(report.outcome.replayed, n as u64);
    (n as f64 / stored, n as f64 / replayed, stored, replayed)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let events = env_count("TRIBUTARY_BENCH_EVENTS", 2_000_000);
    println!("dead letters: {events} JSON lines per run, local store, release build\n");
    let clean = bids(events, None);
    let dirty = bids(events, Some(10));
    // Warm-up, then each run alternately; the best of three.
    let _ = run_pipeline(dir.path(), "warm", &clean[..clean.len() / 10]).await;
    let (mut best_clean, mut best_dirty, mut letters) = (0f64, 0f64, 0);
    for r in 0..3 {
        let (rate, _) = run_pipeline(dir.path(), &format!("clean{r}"), &clean).await;
        best_clean = best_clean.max(rate);
        let (rate, bad) = run_pipeline(dir.path(), &format!("dirty{r}"), &dirty).await;
        best_dirty = best_dirty.max(rate);
        letters = bad;
    }
    println!("{:<28} {:>14} {:>8}", "input", "events/s", "ratio");
    println!("{:<28} {:>14.0} {:>8.2}", "0% malformed", best_clean, 1.0);
    println!(
        "{:<28} {:>14.0} {:>8.2}   ({letters} dead letters stored per run)",
        "10% malformed",
        best_dirty,
        best_dirty / best_clean
    );

    let n = env_count("TRIBUTARY_BENCH_LETTERS", 1_000_000);
    let store = LocalStore::open(dir.path().join("replay.sqlite")).unwrap();
    let shared: Store = Arc::new(store.clone());
    let measured = write_and_replay(shared, n, None).await;
    assert_eq!(store.pending_summary("replay").unwrap().0, 0);
    print_store("local store", n, measured);

    let Ok(bootstrap) = std::env::var("TRIBUTARY_BENCH_KAFKA") else {
        println!("\n(Kafka store: set TRIBUTARY_BENCH_KAFKA to measure it)");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut registry = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["registry", "--listen", &listen, "--dir"])
        .arg(dir.path().join("registry"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            started.elapsed().as_secs() < 30,
            "the registry did not listen on {listen}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    use tributary::connectors::kafka::dead_letters::{KafkaDeadLetterStore, KafkaStoreSettings};
    let run = format!("{:x}", std::process::id());
    let mut settings = KafkaStoreSettings::new(
        &bootstrap,
        &format!("http://{listen}"),
        &format!("bench{run}{{domain}}.dlq"),
    );
    settings.audit_topic = format!("bench{run}.dlq-audit");
    settings.admin_transactional_id = format!("bench{run}-admin");
    settings.sink_transactional_prefix = format!("bench{run}");
    let kafka: Store = Arc::new(KafkaDeadLetterStore::new(settings).unwrap());
    let source = format!("bench{run}.source");
    let measured = write_and_replay(kafka, n, Some(&source)).await;
    let _ = registry.kill();
    let _ = registry.wait();
    print_store("Kafka store", n, measured);
}
