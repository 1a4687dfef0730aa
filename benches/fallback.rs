//! The broker-outage fallback (ADR 0016): what the exactly-once Kafka sink does while
//! its cluster is down, against what it does while the cluster is up, in one run.
//!
//! The pipeline in every part: the Nexmark generator's bids → a projection adding a
//! key column `k` (`(auction × 7919 + bidder) mod K` as text, K =
//! `TRIBUTARY_BENCH_KEYS`, default 10,000) → the Kafka sink keyed by `k`, JSON,
//! exactly-once (checkpoints every second on local disk, one Kafka transaction each),
//! parallelism 1, with a `[fallback]` (`Fallback::with_store`, given to the planner
//! through `ConnectorEnv`, as `tributary run` does).
//!
//! 1. **Normal path**: `TRIBUTARY_BENCH_EVENTS` (default 500,000) Nexmark events to a
//!    2-partition topic on the live broker (default `[fallback]` settings).
//! 2. **Breaker open**: the same pipeline with its sink pointed at a cluster that is
//!    down (bootstrap servers on a loopback port nobody listens on), `failures = 1`
//!    and `attempt_timeout = 500 ms`, so the breaker opens at the first commit and the
//!    output goes to the fallback store: the local store (SQLite); the same with the
//!    default `[fallback]` settings (left out with `TRIBUTARY_BENCH_NO_DEFAULTS_ROW`);
//!    the DynamoDB store (`TRIBUTARY_BENCH_DYNAMODB_EVENTS`, default 50,000: dynalite
//!    serves a few thousand requests a second). Records/s over the whole run and from
//!    the moment the breaker opened (nothing is stored before; what comes before is
//!    the sink's first write and its failed attempts), the ratio with the normal
//!    path's. Then each store's append alone, 5,000 records with one key or 5,000.
//! 3. **Drain**: a backlog of `TRIBUTARY_BENCH_BACKLOG` (default 1,000,000) records over
//!    the K keys put straight into a local store (`FallbackStore::append`, sequences
//!    `(1, i)`: below anything the pipeline writes), then the pipeline runs against the
//!    live broker with live traffic at half the normal path's rate for
//!    `TRIBUTARY_BENCH_LIVE_SECS` (default 60, if the pipeline keeps up): the store's
//!    content, the keys still waiting and the live records taken every 10 s, and when
//!    the store is empty (the sink's waiting keys gone). Once with `drain_rate = 0` (no
//!    limit) and once with the default 5,000/s (`TRIBUTARY_BENCH_DRAIN_RATES`, default
//!    `0,5000`). At the end the topic is read (`read_committed`) and must hold the
//!    backlog and every live record, each once.
//!
//! Every store is wrapped in [`Timed`]: what the sink asked of it, how often and for
//! how long (with `TRIBUTARY_BENCH_TRACE`, a timeline on stderr).
//!
//! `AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x cargo bench --bench fallback`
//! (`TRIBUTARY_BENCH_KAFKA` names a broker, else one is started with `scripts/kafka`
//! and stopped at the end; `TRIBUTARY_BENCH_DYNAMODB` names an endpoint, else dynalite
//! is started with `scripts/dynamodb`; without AWS credentials the DynamoDB parts are
//! left out). `RUST_LOG=tributary=info` shows the sink's logs.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tributary::checkpoint::{CheckpointSettings, LocalCheckpointStore};
use tributary::connectors::ConnectorEnv;
use tributary::connectors::dynamodb::DynamoConfig;
use tributary::engine::{BatchSettings, Runtime, RuntimeSettings};
use tributary::fallback::dynamodb::DynamoFallbackStore;
use tributary::fallback::local::LocalFallbackStore;
use tributary::fallback::{
    Backlog, BreakerSettings, DeliveryMark, Fallback, FallbackRecord, FallbackSettings,
    FallbackStore, Seq, StreamId,
};
use tributary::planner::{PlanSettings, SqlPlanner, SqlText};

const PARTITIONS: i32 = 2;
/// Bids among Nexmark events (46 of every 50).
const BIDS: f64 = 46.0 / 50.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A server started here, stopped when dropped.
struct Started {
    script: &'static str,
    dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .args([self.script, "stop", "--dir"])
            .arg(self.dir.path())
            .output();
    }
}

/// `scripts/<name> start --dir <tmp>`: the last line of its output, and the guard.
fn start(script: &'static str) -> (String, Started) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .args([script, "start", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{script} runs: {e}"));
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    (last, Started { script, dir })
}

/// A fallback store that times the calls made to the one it wraps: per kind of call,
/// how many, the records they carried, and the wall time of runs of consecutive calls
/// of one kind (reads run 16 at a time); with `TRIBUTARY_BENCH_TRACE`, each run of
/// calls is printed as it ends, a timeline of what the sink asked of its store.
#[derive(Debug)]
struct Timed {
    inner: Arc<dyn FallbackStore>,
    start: Instant,
    trace: bool,
    log: Mutex<TimedLog>,
}

#[derive(Debug, Default)]
struct TimedLog {
    /// Per kind: calls, records, wall seconds.
    totals: BTreeMap<&'static str, (u64, u64, f64)>,
    /// The current run of calls of one kind: kind, from, to, calls, records.
    run: Option<(&'static str, f64, f64, u64, u64)>,
}

impl Timed {
    fn new(inner: Arc<dyn FallbackStore>) -> Arc<Timed> {
        Arc::new(Timed {
            inner,
            start: Instant::now(),
            trace: std::env::var("TRIBUTARY_BENCH_TRACE").is_ok(),
            log: Mutex::new(TimedLog::default()),
        })
    }

    fn close_run(&self, log: &mut TimedLog) {
        if let Some((kind, from, to, calls, records)) = log.run.take() {
            let t = log.totals.entry(kind).or_default();
            t.0 += calls;
            t.1 += records;
            t.2 += to - from;
            if self.trace {
                eprintln!(
                    "    store {from:8.2}..{to:8.2} s {kind:<14} {calls:>6} calls {records:>8} records {:6.3} s",
                    to - from
                );
            }
        }
    }

    fn note(&self, kind: &'static str, began: Instant, records: u64) {
        let from = began.duration_since(self.start).as_secs_f64();
        let to = self.start.elapsed().as_secs_f64();
        let mut log = self.log.lock().unwrap();
        match &mut log.run {
            Some((k, _, end, calls, n)) if *k == kind => {
                *end = end.max(to);
                *calls += 1;
                *n += records;
            }
            _ => {
                self.close_run(&mut log);
                log.run = Some((kind, from, to, 1, records));
            }
        }
    }

    /// The totals so far, one line per kind (and starts over).
    fn summary(&self) -> String {
        let mut log = self.log.lock().unwrap();
        self.close_run(&mut log);
        let out = log
            .totals
            .iter()
            .map(|(kind, (calls, records, secs))| {
                format!("{kind} {calls} calls, {records} records, {secs:.1} s")
            })
            .collect::<Vec<_>>()
            .join("; ");
        log.totals.clear();
        out
    }
}

#[async_trait::async_trait]
impl FallbackStore for Timed {
    async fn append(&self, records: &[FallbackRecord]) -> tributary::fallback::Result<()> {
        let t = Instant::now();
        let r = self.inner.append(records).await;
        self.note("append", t, records.len() as u64);
        r
    }
    async fn streams(&self, pipeline: &str) -> tributary::fallback::Result<Vec<StreamId>> {
        let t = Instant::now();
        let r = self.inner.streams(pipeline).await;
        self.note("streams", t, r.as_ref().map_or(0, |s| s.len() as u64));
        r
    }
    async fn oldest(
        &self,
        stream: &StreamId,
        limit: usize,
    ) -> tributary::fallback::Result<Vec<FallbackRecord>> {
        let t = Instant::now();
        let r = self.inner.oldest(stream, limit).await;
        self.note("oldest", t, r.as_ref().map_or(0, |s| s.len() as u64));
        r
    }
    async fn delete_through(
        &self,
        stream: &StreamId,
        through: Seq,
    ) -> tributary::fallback::Result<()> {
        let t = Instant::now();
        let r = self.inner.delete_through(stream, through).await;
        self.note("delete_through", t, 0);
        r
    }
    async fn backlog(&self, pipeline: Option<&str>) -> tributary::fallback::Result<Vec<Backlog>> {
        self.inner.backlog(pipeline).await
    }
    async fn mark(&self, mark: &DeliveryMark) -> tributary::fallback::Result<()> {
        let t = Instant::now();
        let r = self.inner.mark(mark).await;
        self.note("mark", t, 0);
        r
    }
    async fn marks(&self, pipeline: &str) -> tributary::fallback::Result<Vec<DeliveryMark>> {
        self.inner.marks(pipeline).await
    }
}

/// A loopback address nobody listens on: a cluster that is down.
fn down_cluster() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

/// The breaker opens at the first failed attempt, which gives up after 500 ms; it
/// probes the cluster every 5 s (the default; `TRIBUTARY_BENCH_PROBE_SECS`), each
/// probe a metadata request that fails after the attempt timeout.
fn outage_settings() -> FallbackSettings {
    let default = BreakerSettings::default();
    FallbackSettings {
        breaker: BreakerSettings {
            failures: 1,
            probe_interval: Duration::from_secs(env_u64(
                "TRIBUTARY_BENCH_PROBE_SECS",
                default.probe_interval.as_secs(),
            )),
            ..default
        },
        attempt_timeout: Duration::from_millis(500),
        ..FallbackSettings::default()
    }
}

fn runtime_settings(dir: &std::path::Path) -> RuntimeSettings {
    RuntimeSettings {
        checkpoints: Some(CheckpointSettings {
            interval: Duration::from_secs(1),
            store: Arc::new(LocalCheckpointStore::new(dir.join("checkpoints"))),
            retain: 3,
            exactly_once: true,
            restore: None,
        }),
        channel_capacity: 8,
        batch: BatchSettings {
            size: 8192,
            flush_interval: Duration::from_millis(100),
        },
        ..RuntimeSettings::default()
    }
}

/// The pipeline's SQL: `events` Nexmark events (at `rate` events/s, 0: unpaced) keyed
/// by `k` among `keys`, into `topic` at `servers` (created with its partitions when
/// `create`).
fn pipeline_sql(
    servers: &str,
    topic: &str,
    commit_topic: &str,
    events: u64,
    rate: f64,
    keys: u64,
    create: bool,
) -> String {
    let partitions = if create {
        format!(", partitions = '{PARTITIONS}'")
    } else {
        String::new()
    };
    format!(
        "CREATE TABLE bids WITH (connector = 'generator', world = 'nexmark', stream = 'bids', \
           count = '{events}', rate = '{rate}');\n\
         CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
           topic = '{topic}', key_field = 'k', commit_topic = '{commit_topic}'{partitions});\n\
         INSERT INTO out SELECT CAST((auction * 7919 + bidder) % {keys} AS VARCHAR) AS k, \
           auction, bidder, price, channel, url, date_time, extra FROM bids;\n"
    )
}

/// What one run measured.
struct Measured {
    /// Rows the sink took.
    records: u64,
    elapsed: f64,
    /// Seconds until the breaker opened, if it did.
    opened_at: Option<f64>,
    /// Records the sink put in the fallback store.
    stored: u64,
    /// The breakers' states when the run ended.
    breakers_after: Vec<&'static str>,
    /// What the sink asked of the store ([`Timed::summary`]).
    store_calls: String,
}

impl Measured {
    /// Records per second once the breaker was open (the whole run if it never
    /// opened): the time before it, the sink's first write and its first failed
    /// attempt, left out. Nothing is stored before the breaker opens, so every record
    /// is stored in that time.
    fn steady(&self) -> f64 {
        self.records as f64 / (self.elapsed - self.opened_at.unwrap_or(0.0))
    }
}

/// Runs `sql` as pipeline `name` with a fallback over `store`, until its input ends.
async fn run(name: &str, sql: String, settings: FallbackSettings, store: Arc<Timed>) -> Measured {
    let fallback = Arc::new(Fallback::with_store(settings, store.clone()));
    let dir = tempfile::tempdir().unwrap();
    let env = ConnectorEnv {
        fallback: Some(fallback.clone()),
        ..ConnectorEnv::default()
    };
    let planned = SqlPlanner::new()
        .with_env(env)
        .plan_pipeline(
            name,
            &SqlText::file(sql, dir.path().join("p.sql")),
            dir.path(),
            &PlanSettings::default(),
        )
        .await
        .unwrap();
    let handle = Runtime::start(planned.graph, runtime_settings(dir.path())).unwrap();
    let sink = handle
        .stats
        .iter()
        .find(|(n, _)| n == "out")
        .expect("the sink's counters")
        .1
        .clone();
    let t = Instant::now();
    let mut waiter = tokio::spawn(handle.wait());
    let mut opened_at = None;
    let control = fallback.control(name);
    let trace = std::env::var("TRIBUTARY_BENCH_TRACE").is_ok();
    let mut next_note = 1.0;
    let open = |f: &Fallback| {
        f.status()
            .breakers
            .iter()
            .any(|b| b.state != tributary::fallback::BreakerState::Closed)
    };
    let report = loop {
        tokio::select! {
            r = &mut waiter => break r.unwrap().unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {
                let now = t.elapsed().as_secs_f64();
                if opened_at.is_none() && open(&fallback) {
                    assert_eq!(control.stored.load(Ordering::Relaxed), 0);
                    opened_at = Some(now);
                }
                if trace && now >= next_note {
                    let status = fallback.status();
                    eprintln!(
                        "  {name} {now:.1} s: sink took {}, stored {}, breakers {:?}",
                        sink.rows_in.load(Ordering::Relaxed),
                        control.stored.load(Ordering::Relaxed),
                        status.breakers.iter().map(|b| b.state.as_str()).collect::<Vec<_>>()
                    );
                    next_note += 1.0;
                }
            }
        }
    };
    let elapsed = t.elapsed().as_secs_f64();
    let records = report
        .rows_in
        .iter()
        .filter(|(n, _)| n == "out")
        .map(|(_, r)| *r)
        .sum();
    Measured {
        records,
        elapsed,
        opened_at,
        stored: control.stored.load(Ordering::Relaxed),
        breakers_after: fallback
            .status()
            .breakers
            .iter()
            .map(|b| b.state.as_str())
            .collect(),
        store_calls: store.summary(),
    }
}

fn consumer(servers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap()
}

/// The sum of `topic`'s high watermarks (records and transaction markers).
fn high_watermarks(c: &BaseConsumer, topic: &str) -> i64 {
    (0..PARTITIONS)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_or(0, |(_, h)| h)
        })
        .sum()
}

/// Creates `topic` with its partitions (before anything asks the broker about it:
/// a broker that creates topics on demand would give it its defaults).
async fn create_topic(servers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// The committed records of `topic` (`read_committed`, to the end), and each key's
/// count.
fn read_topic(servers: &str, topic: &str) -> (u64, HashMap<Vec<u8>, u64>) {
    use rdkafka::Message;
    let c = consumer(servers, &format!("bench-fallback-count-{topic}"));
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (_, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        ends.insert(p, high);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut n = 0u64;
    let mut keys: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut quiet = Instant::now();
    loop {
        let done = c.position().ok().is_some_and(|pos| {
            ends.iter().all(|(p, end)| {
                pos.find_partition(topic, *p)
                    .and_then(|e| e.offset().to_raw())
                    .is_some_and(|o| o >= *end)
            })
        });
        if done || quiet.elapsed() > Duration::from_secs(10) {
            break;
        }
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        quiet = Instant::now();
        n += 1;
        *keys
            .entry(m.key().unwrap_or_default().to_vec())
            .or_default() += 1;
    }
    (n, keys)
}

/// A JSON value the size of a bid's record.
fn backlog_value(i: u64, key: &str) -> Vec<u8> {
    format!(
        "{{\"k\":\"{key}\",\"auction\":{},\"bidder\":{},\"price\":{},\"channel\":\"Google\",\
         \"url\":\"https://www.nexmark.com/backlog/item.htm?query=1&channel_id={i}\",\
         \"date_time\":\"2026-01-01T00:00:00.000\",\"extra\":\"\"}}",
        1000 + i % 997,
        1000 + i % 1009,
        i % 10_000
    )
    .into_bytes()
}

/// Bids among the first `events` Nexmark events (event `n` is a bid when `n mod 50 ≥ 4`).
fn bids_of(events: u64) -> u64 {
    events / 50 * 46 + (events % 50).saturating_sub(4)
}

/// `n` records over `keys` keys (`first_key + i mod keys`), sequences `(checkpoint, i)`.
fn records(
    pipeline: &str,
    topic: &str,
    checkpoint: u64,
    from: u64,
    n: u64,
    keys: u64,
) -> Vec<FallbackRecord> {
    let now = chrono::Utc::now().timestamp_millis();
    (from..from + n)
        .map(|i| {
            let key = (i % keys).to_string();
            FallbackRecord {
                stream: StreamId {
                    pipeline: pipeline.into(),
                    topic: topic.into(),
                    key: Some(key.as_bytes().to_vec()),
                },
                seq: Seq {
                    checkpoint,
                    index: i,
                },
                value: Some(backlog_value(i, &key)),
                headers: Vec::new(),
                timestamp_ms: None,
                stored_ms: now,
            }
        })
        .collect()
}

/// Puts `n` records over `keys` keys into `store` under `pipeline` and `topic`, with
/// sequences `(1, i)`, 10,000 at a time: seconds in all, and records per second over
/// the first and the last 100,000.
async fn write_backlog(
    store: &dyn FallbackStore,
    pipeline: &str,
    topic: &str,
    n: u64,
    keys: u64,
) -> (f64, f64, f64) {
    let t = Instant::now();
    let (mut first, mut last) = (0.0, 0.0);
    let mut lap = Instant::now();
    let mut from = 0;
    while from < n {
        let len = 10_000.min(n - from);
        store
            .append(&records(pipeline, topic, 1, from, len, keys))
            .await
            .unwrap();
        from += len;
        if from % 100_000 == 0 || from == n {
            let rate = (if from % 100_000 == 0 {
                100_000
            } else {
                from % 100_000
            }) as f64
                / lap.elapsed().as_secs_f64();
            if from <= 100_000 {
                first = rate;
            }
            last = rate;
            lap = Instant::now();
        }
    }
    (t.elapsed().as_secs_f64(), first, last)
}

/// Appends `chunks` chunks of 5,000 records (the sink's append size) with `keys`
/// keys each to `store`: records per second.
async fn append_rate(store: &dyn FallbackStore, pipeline: &str, chunks: u64, keys: u64) -> f64 {
    let batches: Vec<Vec<FallbackRecord>> = (0..chunks)
        .map(|c| records(pipeline, "bench.fallback.append", 2, c * 5_000, 5_000, keys))
        .collect();
    let t = Instant::now();
    for b in &batches {
        store.append(b).await.unwrap();
    }
    (chunks * 5_000) as f64 / t.elapsed().as_secs_f64()
}

/// One sample of a drain run.
struct Sample {
    at: f64,
    waiting: usize,
    /// Records in the store (the backlog, plus what the sink stored, minus what it
    /// drained).
    in_store: u64,
    drained: u64,
    /// Live records the sink has taken, and those the source was due to send by then.
    live: u64,
    due: u64,
}

/// What a drain run measured.
struct Drained {
    rate_limit: u64,
    backlog: u64,
    /// Writing the backlog: seconds, records/s over the first and last 100,000.
    write: (f64, f64, f64),
    live_rate: f64,
    /// Live records (bids) the source sends.
    live_records: u64,
    /// When the sink had taken the last live record.
    live_end: Option<f64>,
    /// When no key waited in the store any more.
    empty_at: Option<f64>,
    /// Samples every 10 s, at the end of live traffic and when the store emptied.
    samples: Vec<Sample>,
    elapsed: f64,
    records: u64,
    /// The topic: high watermarks, committed records read back.
    watermarks: i64,
    committed: u64,
    store_after: u64,
    store_calls: String,
}

#[allow(clippy::too_many_arguments)]
async fn drain(
    servers: &str,
    run_id: &str,
    backlog: u64,
    keys: u64,
    live_rate: f64,
    live_secs: u64,
    drain_rate: u64,
) -> Drained {
    let name = format!("fbd{drain_rate}x{run_id}");
    let topic = format!("bench.fallback.drain{drain_rate}.{run_id}");
    let dir = tempfile::tempdir().unwrap();
    create_topic(servers, &topic).await;
    let path = dir.path().join("fallback.sqlite");
    let store = Arc::new(LocalFallbackStore::open(&path).unwrap());
    let write = write_backlog(store.as_ref(), &name, &topic, backlog, keys).await;
    let timed = Timed::new(store.clone());
    let fallback = Arc::new(Fallback::with_store(
        FallbackSettings {
            drain_rate,
            ..FallbackSettings::default()
        },
        timed.clone(),
    ));
    let waiting = fallback.waiting(&name, &topic).await.unwrap();
    assert_eq!(waiting.len() as u64, keys.min(backlog), "every key waits");
    let control = fallback.control(&name);
    let events = (live_rate * live_secs as f64) as u64;
    let live_records = bids_of(events);
    let sql = pipeline_sql(
        servers,
        &topic,
        &format!("bench.fallback.commits.{run_id}"),
        events,
        live_rate,
        keys,
        true,
    );
    let planned = SqlPlanner::new()
        .with_env(ConnectorEnv {
            fallback: Some(fallback.clone()),
            ..ConnectorEnv::default()
        })
        .plan_pipeline(
            &name,
            &SqlText::file(sql, dir.path().join("p.sql")),
            dir.path(),
            &PlanSettings::default(),
        )
        .await
        .unwrap();
    let handle = Runtime::start(planned.graph, runtime_settings(dir.path())).unwrap();
    let sink = handle
        .stats
        .iter()
        .find(|(n, _)| n == "out")
        .unwrap()
        .1
        .clone();
    let t = Instant::now();
    let mut waiter = tokio::spawn(handle.wait());
    let (mut empty_at, mut live_end) = (None, None);
    let mut samples = Vec::new();
    let mut next_sample = 10.0;
    let sample = |at: f64| {
        let drained = control.drained.load(Ordering::Relaxed);
        let live = sink.rows_in.load(Ordering::Relaxed);
        Sample {
            at,
            waiting: waiting.len(),
            in_store: (backlog + control.stored.load(Ordering::Relaxed)).saturating_sub(drained),
            drained,
            live,
            due: ((at * live_rate) as u64).min(events) * live_records / events.max(1),
        }
    };
    let report = loop {
        tokio::select! {
            r = &mut waiter => break r.unwrap().unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                let now = t.elapsed().as_secs_f64();
                let mut noted = false;
                if empty_at.is_none() && waiting.is_empty() {
                    empty_at = Some(now);
                    samples.push(sample(now));
                    noted = true;
                }
                if live_end.is_none() && sink.rows_in.load(Ordering::Relaxed) >= live_records {
                    live_end = Some(now);
                    if !noted {
                        samples.push(sample(now));
                    }
                }
                if now >= next_sample {
                    let s = sample(now);
                    eprintln!(
                        "  drain_rate {drain_rate}, {:.0} s: {} keys waiting, {} in the store, {} drained, live {} of {} due",
                        s.at, s.waiting, s.in_store, s.drained, s.live, s.due
                    );
                    samples.push(s);
                    next_sample += 10.0;
                }
            }
        }
    };
    let elapsed = t.elapsed().as_secs_f64();
    let records: u64 = report
        .rows_in
        .iter()
        .filter(|(n, _)| n == "out")
        .map(|(_, r)| *r)
        .sum();
    assert_eq!(records, live_records, "every live record reached the sink");
    let store_after: u64 = store
        .backlog(Some(&name))
        .await
        .unwrap()
        .iter()
        .map(|b| b.records)
        .sum();
    let (watermarks, committed) = tokio::task::block_in_place(|| {
        let c = consumer(servers, "bench-fallback-hw");
        let hw = high_watermarks(&c, &topic);
        let (n, per_key) = read_topic(servers, &topic);
        if per_key.len() as u64 != keys {
            eprintln!("  topic {topic}: {} keys, expected {keys}", per_key.len());
        }
        (hw, n)
    });
    Drained {
        rate_limit: drain_rate,
        backlog,
        write,
        live_rate,
        live_records,
        live_end,
        empty_at,
        samples,
        elapsed,
        records,
        watermarks,
        committed,
        store_after,
        store_calls: timed.summary(),
    }
}

fn print_drain(d: &Drained) {
    let limit = if d.rate_limit == 0 {
        "0 (no limit)".to_string()
    } else {
        format!("{}/s", d.rate_limit)
    };
    println!(
        "\ndrain_rate {limit}: a backlog of {} records written to the local store in {:.1} s \
         ({} rec/s; first 100k {}/s, last 100k {}/s); live traffic {} bids at {} bids/s",
        d.backlog,
        d.write.0,
        k(d.backlog as f64 / d.write.0),
        k(d.write.1),
        k(d.write.2),
        d.live_records,
        k(d.live_rate * BIDS),
    );
    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>11} {:>11}",
        "t (s)", "waiting", "in store", "drained", "live taken", "live due"
    );
    for s in &d.samples {
        println!(
            "{:>8.1} {:>8} {:>10} {:>10} {:>11} {:>11}",
            s.at, s.waiting, s.in_store, s.drained, s.live, s.due
        );
    }
    let live_s = d.live_records as f64 / (d.live_rate * BIDS);
    match (d.live_end, d.empty_at) {
        (Some(end), Some(empty)) if empty <= end => {
            let at = d.samples.iter().find(|s| s.at == empty).expect("sampled");
            println!(
                "store empty at {empty:.1} s, while live traffic ran: {} records drained ({} rec/s); \
                 live records taken meanwhile {} rec/s (target {}/s)",
                at.drained,
                k(at.drained as f64 / empty),
                k(at.live as f64 / empty),
                k(d.live_rate * BIDS)
            );
        }
        (end, empty) => {
            let end = end.unwrap_or(d.elapsed);
            let at = d
                .samples
                .iter()
                .find(|s| s.at == end)
                .or(d.samples.last())
                .expect("sampled");
            println!(
                "not empty while live traffic ran: live traffic took {end:.1} s (due in {live_s:.0} s: \
                 {} live rec/s against {}/s); then {} records in the store, {} drained by then ({} rec/s)",
                k(d.live_records as f64 / end),
                k(d.live_rate * BIDS),
                at.in_store,
                at.drained,
                k(at.drained as f64 / end)
            );
            if let Some(empty) = empty {
                let last = d.samples.iter().find(|s| s.at == empty).expect("sampled");
                println!(
                    "store empty at {empty:.1} s: the end of input drained {} records in {:.1} s ({} rec/s)",
                    last.drained - at.drained,
                    empty - end,
                    k((last.drained - at.drained) as f64 / (empty - end))
                );
            }
        }
    }
    let ok = if d.committed == d.backlog + d.records {
        "= backlog + live, each once"
    } else {
        "MISMATCH"
    };
    println!(
        "topic: {} committed records read back, expected {} ({ok}); high watermarks {}; store after the run: {} records",
        d.committed,
        d.backlog + d.records,
        d.watermarks,
        d.store_after
    );
    println!("store calls: {}", d.store_calls);
}

fn k(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else {
        format!("{:.1}k", x / 1e3)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let events = env_u64("TRIBUTARY_BENCH_EVENTS", 500_000);
    let dynamo_events = env_u64("TRIBUTARY_BENCH_DYNAMODB_EVENTS", 50_000);
    let backlog = env_u64("TRIBUTARY_BENCH_BACKLOG", 1_000_000);
    let keys = env_u64("TRIBUTARY_BENCH_KEYS", 10_000).max(1);
    let live_secs = env_u64("TRIBUTARY_BENCH_LIVE_SECS", 60);
    let drain_rates: Vec<u64> = std::env::var("TRIBUTARY_BENCH_DRAIN_RATES")
        .unwrap_or_else(|_| "0,5000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let (servers, _kafka) = match std::env::var("TRIBUTARY_BENCH_KAFKA") {
        Ok(s) => (s, None),
        Err(_) => {
            let (s, guard) = start("scripts/kafka");
            (s, Some(guard))
        }
    };
    let run_id = format!("{:08x}", rand::random::<u32>());
    let commit_topic = format!("bench.fallback.commits.{run_id}");
    println!(
        "Broker-outage fallback bench: Nexmark bids keyed by {keys} keys, JSON, exactly-once \
         (1 s checkpoints), parallelism 1; broker {servers}"
    );

    // 1. The normal path.
    let topic = format!("bench.fallback.normal.{run_id}");
    let name = format!("fbn{run_id}");
    create_topic(&servers, &topic).await;
    let normal_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalFallbackStore::open(normal_dir.path().join("f.sqlite")).unwrap());
    let normal = run(
        &name,
        pipeline_sql(&servers, &topic, &commit_topic, events, 0.0, keys, true),
        FallbackSettings::default(),
        Timed::new(store),
    )
    .await;
    if normal.stored > 0 {
        eprintln!(
            "warning: the normal path stored {} records in the fallback (the breaker opened)",
            normal.stored
        );
    }

    // 2. Breaker open: the local store, then DynamoDB.
    let down = down_cluster();
    // Every breaker-open row: the same pipeline against the unreachable cluster.
    let down_sql = |events| {
        pipeline_sql(
            &down,
            "bench.fallback.down",
            &commit_topic,
            events,
            0.0,
            keys,
            false,
        )
    };
    let mut open = Vec::new();
    let local_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalFallbackStore::open(local_dir.path().join("f.sqlite")).unwrap());
    let name = format!("fbl{run_id}");
    let m = run(
        &name,
        down_sql(events),
        outage_settings(),
        Timed::new(store),
    )
    .await;
    open.push(("breaker open, local store (SQLite)", events, m));
    // The same with the shipped `[fallback]` settings: 5 failures or 30 s to open,
    // 10 s per attempt and per probe.
    if std::env::var("TRIBUTARY_BENCH_NO_DEFAULTS_ROW").is_err() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalFallbackStore::open(dir.path().join("f.sqlite")).unwrap());
        let name = format!("fbx{run_id}");
        let m = run(
            &name,
            down_sql(events),
            FallbackSettings::default(),
            Timed::new(store),
        )
        .await;
        open.push(("  the same, default [fallback] settings", events, m));
    }
    let _dynalite;
    let mut dynamo = None;
    if std::env::var("AWS_ACCESS_KEY_ID").is_ok() {
        let endpoint = match std::env::var("TRIBUTARY_BENCH_DYNAMODB") {
            Ok(e) => e,
            Err(_) => {
                let (e, guard) = start("scripts/dynamodb");
                _dynalite = guard;
                e
            }
        };
        let settings = DynamoConfig {
            region: "us-east-1".into(),
            endpoint,
            table_prefix: format!("benchfb{}_", std::process::id()),
            ..DynamoConfig::default()
        }
        .settings()
        .unwrap();
        let store = Arc::new(DynamoFallbackStore::new(&settings));
        dynamo = Some(store.clone());
        let name = format!("fbd{run_id}");
        let m = run(
            &name,
            down_sql(dynamo_events),
            outage_settings(),
            Timed::new(store),
        )
        .await;
        open.push(("breaker open, DynamoDB store (dynalite)", dynamo_events, m));
    } else {
        eprintln!(
            "DynamoDB row skipped: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (any value)"
        );
    }

    println!(
        "\n{:<40} {:>9} {:>9} {:>8} {:>10} {:>10} {:>11} {:>6}",
        "sink path", "events", "records", "s", "rec/s", "opened at", "rec/s open", "ratio"
    );
    let row = |label: &str, events: u64, m: &Measured| {
        println!(
            "{:<40} {:>9} {:>9} {:>8.1} {:>10} {:>10} {:>11} {:>6.2}",
            label,
            events,
            m.records,
            m.elapsed,
            k(m.records as f64 / m.elapsed),
            m.opened_at.map_or("-".to_string(), |t| format!("{t:.1} s")),
            m.opened_at.map_or("-".to_string(), |_| k(m.steady())),
            m.steady() / normal.steady()
        );
    };
    row("normal path (Kafka, breaker closed)", events, &normal);
    for (label, events, m) in &open {
        row(label, *events, m);
        assert_eq!(m.stored, m.records, "{label}: every record stored");
    }
    println!(
        "(records: bids the sink took; rec/s: over the whole run; opened at: when the breaker \
         opened (the sink's first write and first failed attempt); rec/s open: from then to the \
         end; ratio: against the normal path's whole run)"
    );
    println!(
        "normal path: breakers at the end {:?}; store calls: {}",
        normal.breakers_after, normal.store_calls
    );
    for (label, _, m) in &open {
        println!(
            "{label}: breakers at the end {:?}; store calls: {}",
            m.breakers_after, m.store_calls
        );
    }

    // The stores' appends alone, as the sink makes them: 5,000 records, with one key
    // or with 5,000.
    println!(
        "\n{:<40} {:>14} {:>16}",
        "append of 5,000 records (the sink's)", "1 key, rec/s", "5,000 keys, rec/s"
    );
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFallbackStore::open(dir.path().join("f.sqlite")).unwrap();
        (dir, store)
    };
    let (_d1, one) = fresh();
    let (_d2, many) = fresh();
    println!(
        "{:<40} {:>14} {:>16}",
        "local (SQLite), 20 appends, fresh file",
        k(append_rate(&one, "append-1", 20, 1).await),
        k(append_rate(&many, "append-5000", 20, 5_000).await)
    );
    if let Some(store) = &dynamo {
        println!(
            "{:<40} {:>14} {:>16}",
            "DynamoDB (dynalite), 2 appends",
            k(append_rate(store.as_ref(), &format!("append-1-{run_id}"), 2, 1).await),
            k(append_rate(store.as_ref(), &format!("append-5000-{run_id}"), 2, 5_000).await)
        );
    }

    // 3. The drain, with live traffic at half the normal path's rate.
    let live_rate = (normal.steady() / BIDS / 2.0).round();
    let mut drains = Vec::new();
    for rate in drain_rates {
        drains.push(drain(&servers, &run_id, backlog, keys, live_rate, live_secs, rate).await);
    }
    for d in &drains {
        print_drain(d);
    }
}
