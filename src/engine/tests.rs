//! Runtime tests on small in-process sources and sinks.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;

use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("seq", DataType::Int64, false),
    ]))
}

/// Emits `batches` batches of `rows` rows (`None`: until stopped), keys 0..keys.
struct Counter {
    batches: Option<u64>,
    rows: usize,
    keys: i64,
    emitted: Arc<AtomicU64>,
}

#[async_trait]
impl Source for Counter {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<()> {
        let mut b = 0u64;
        let base = ctx.task.partition as i64 * 1_000_000_000;
        while self.batches.is_none_or(|n| b < n) && !ctx.stop.is_raised() {
            let seq: Vec<i64> = (0..self.rows as i64)
                .map(|i| base + b as i64 * self.rows as i64 + i)
                .collect();
            let key: Vec<i64> = seq.iter().map(|s| s % self.keys).collect();
            let batch = RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Int64Array::from(key)),
                    Arc::new(Int64Array::from(seq)),
                ],
            )
            .unwrap();
            ctx.out.emit(batch).await?;
            self.emitted.fetch_add(1, Ordering::SeqCst);
            b += 1;
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

struct CounterFactory {
    batches: Option<u64>,
    rows: usize,
    keys: i64,
    emitted: Arc<AtomicU64>,
}

impl SourceFactory for CounterFactory {
    fn schema(&self) -> SchemaRef {
        schema()
    }
    fn bounded(&self) -> bool {
        self.batches.is_some()
    }
    fn describe(&self) -> String {
        "counter".into()
    }
    fn create(&self, _task: &TaskInfo) -> Result<Box<dyn Source>> {
        Ok(Box::new(Counter {
            batches: self.batches,
            rows: self.rows,
            keys: self.keys,
            emitted: self.emitted.clone(),
        }))
    }
}

/// Collects (partition, batch) pairs; optionally waits on a semaphore per batch.
#[derive(Clone, Default)]
struct Collect {
    got: Arc<Mutex<Vec<(usize, RecordBatch)>>>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    consumed: Arc<AtomicU64>,
}

struct CollectSink {
    c: Collect,
    partition: usize,
}

#[async_trait]
impl Sink for CollectSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if let Some(g) = &self.c.gate {
            g.acquire().await.unwrap().forget();
        }
        self.c.consumed.fetch_add(1, Ordering::SeqCst);
        self.c.got.lock().unwrap().push((self.partition, batch));
        Ok(())
    }
    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

impl SinkFactory for Collect {
    fn describe(&self) -> String {
        "collect".into()
    }
    fn create(&self, task: &TaskInfo, _schema: SchemaRef) -> Result<Box<dyn Sink>> {
        Ok(Box::new(CollectSink {
            c: self.clone(),
            partition: task.partition,
        }))
    }
}

fn counter(batches: Option<u64>, rows: usize, keys: i64) -> (Arc<CounterFactory>, Arc<AtomicU64>) {
    let emitted = Arc::new(AtomicU64::new(0));
    (
        Arc::new(CounterFactory {
            batches,
            rows,
            keys,
            emitted: emitted.clone(),
        }),
        emitted,
    )
}

/// `src` at `sources` tasks straight into `sink` at `sinks` tasks, over `edge`.
fn source_into(
    src: Arc<CounterFactory>,
    sources: usize,
    sink: &Collect,
    sinks: usize,
    edge: Partitioning,
) -> Graph {
    let mut g = Graph::new("t");
    let s = g.add_source("src", src, sources);
    g.add_sink("out", Arc::new(sink.clone()), sinks, s, edge)
        .unwrap();
    g
}

fn rows(got: &[(usize, RecordBatch)]) -> Vec<(usize, i64, i64)> {
    let mut out = vec![];
    for (p, b) in got {
        let k = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let s = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push((*p, k.value(i), s.value(i)));
        }
    }
    out
}

#[tokio::test]
async fn bounded_pipeline_delivers_every_row_and_finishes() {
    let (src, _) = counter(Some(20), 100, 7);
    let sink = Collect::default();
    let g = source_into(src, 2, &sink, 3, Partitioning::RoundRobin);
    let report = Runtime::run(g, RuntimeSettings::default(), futures::future::pending())
        .await
        .unwrap();
    let mut seqs: Vec<i64> = rows(&sink.got.lock().unwrap())
        .iter()
        .map(|r| r.2)
        .collect();
    seqs.sort();
    let mut expected: Vec<i64> = (0..2000).chain(1_000_000_000..1_000_002_000).collect();
    expected.sort();
    assert_eq!(seqs, expected);
    assert_eq!(report.rows_out[0], ("src".to_string(), 4000));
}

#[tokio::test]
async fn hash_partitioning_sends_each_key_to_one_partition() {
    let (src, _) = counter(Some(10), 500, 97);
    let sink = Collect::default();
    let g = source_into(src, 2, &sink, 4, Partitioning::Hash(vec![0]));
    Runtime::run(g, RuntimeSettings::default(), futures::future::pending())
        .await
        .unwrap();
    let got = rows(&sink.got.lock().unwrap());
    assert_eq!(got.len(), 10_000);
    let mut owner = std::collections::HashMap::new();
    for (p, k, _) in &got {
        let prev = owner.insert(*k, *p);
        assert!(
            prev.is_none_or(|q| q == *p),
            "key {k} reached partitions {prev:?} and {p}"
        );
    }
    let used: std::collections::HashSet<usize> = owner.values().copied().collect();
    assert_eq!(used.len(), 4, "97 keys should spread over all 4 partitions");
}

#[tokio::test]
async fn a_slow_sink_holds_the_source_back() {
    // Channel capacity 2 and one forward edge: the source can be at most the channel's
    // capacity plus the batch the sink holds plus the one being sent ahead.
    let (src, emitted) = counter(None, 10, 3);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let sink = Collect {
        gate: Some(gate.clone()),
        ..Default::default()
    };
    let g = source_into(src, 1, &sink, 1, Partitioning::Forward);
    let settings = RuntimeSettings {
        channel_capacity: 2,
        ..Default::default()
    };
    let handle = Runtime::start(g, settings).unwrap();
    let max_ahead = Arc::new(AtomicI64::new(0));
    for _ in 0..50 {
        gate.add_permits(1);
        // Let the source run as far as backpressure allows.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let ahead =
            emitted.load(Ordering::SeqCst) as i64 - sink.consumed.load(Ordering::SeqCst) as i64;
        max_ahead.fetch_max(ahead, Ordering::SeqCst);
    }
    handle.stopper().stop();
    gate.add_permits(1_000_000);
    handle.wait().await.unwrap();
    assert!(
        max_ahead.load(Ordering::SeqCst) <= 4,
        "source ran {} batches ahead of a blocked sink",
        max_ahead.load(Ordering::SeqCst)
    );
    assert_eq!(
        emitted.load(Ordering::SeqCst),
        sink.consumed.load(Ordering::SeqCst),
        "stopping drains every emitted batch into the sink"
    );
}

#[tokio::test]
async fn a_stop_lists_the_tasks_it_still_waits_for() {
    // Five batches fit in the channels: the source ends while both sinks are blocked.
    let (src, _) = counter(Some(5), 10, 3);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let sink = Collect {
        gate: Some(gate.clone()),
        ..Default::default()
    };
    let g = source_into(src, 1, &sink, 2, Partitioning::RoundRobin);
    let handle = Runtime::start(g, RuntimeSettings::default()).unwrap();
    let stopper = handle.stopper();
    assert_eq!(stopper.running(), ["out[0]", "out[1]", "src[0]"]);
    let source_ended = async {
        while stopper.running().contains(&"src[0]".to_string()) {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), source_ended)
        .await
        .expect("the source ends");
    assert_eq!(stopper.running(), ["out[0]", "out[1]"], "the blocked sinks");
    stopper.stop();
    assert_eq!(
        stopper.running(),
        ["out[0]", "out[1]"],
        "a stop waits for them"
    );
    gate.add_permits(1_000_000);
    handle.wait().await.unwrap();
    assert!(stopper.running().is_empty(), "every task ended");
}

struct Failing;

#[async_trait]
impl Operator for Failing {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let seq = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        if seq.values().contains(&250) {
            return Err(EngineError::Invalid("row 250 is poison".into()).into());
        }
        out.emit(batch).await
    }
}

struct Panicking;

#[async_trait]
impl Operator for Panicking {
    async fn process_batch(&mut self, _batch: RecordBatch, _out: &mut Collector) -> Result<()> {
        panic!("boom in user code");
    }
}

struct OpFactory(bool);

impl OperatorFactory for OpFactory {
    fn output_schema(&self) -> SchemaRef {
        schema()
    }
    fn describe(&self) -> String {
        "test".into()
    }
    fn create(&self, _task: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(if self.0 {
            Box::new(Panicking)
        } else {
            Box::new(Failing)
        })
    }
}

async fn run_with(op: OpFactory, name: &str) -> crate::Error {
    let (src, _) = counter(None, 50, 3);
    let mut g = Graph::new("t");
    let s = g.add_source("src", src, 2);
    let o = g.add_operator(name, Arc::new(op), 2, s, Partitioning::Forward);
    g.add_sink(
        "out",
        Arc::new(Collect::default()),
        1,
        o,
        Partitioning::RoundRobin,
    )
    .unwrap();
    Runtime::run(g, RuntimeSettings::default(), futures::future::pending())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_failing_operator_stops_an_unbounded_pipeline_and_is_named() {
    let e = run_with(OpFactory(false), "poison_check").await;
    let text = e.to_string();
    assert!(text.contains("t/poison_check[0/2]"), "{text}");
    assert!(text.contains("row 250 is poison"), "{text}");
}

#[tokio::test]
async fn a_panicking_operator_is_reported_as_an_error_naming_it() {
    let e = run_with(OpFactory(true), "user_code").await;
    let text = e.to_string();
    assert!(text.contains("t/user_code["), "{text}");
    assert!(text.contains("boom in user code"), "{text}");
}

#[test]
fn forward_between_different_parallelism_becomes_round_robin() {
    let (src, _) = counter(Some(1), 1, 1);
    let mut g = Graph::new("t");
    let s = g.add_source("src", src, 2);
    let id = g
        .add_sink(
            "out",
            Arc::new(Collect::default()),
            3,
            s,
            Partitioning::Forward,
        )
        .unwrap();
    g.finalize().unwrap();
    assert_eq!(g.nodes[id].inputs[0].1, Partitioning::RoundRobin);
    assert!(g.explain().contains("sink out [parallelism 3]"));
}

/// Emits `batches` batches of two rows and reports one bad record per batch, through
/// the source's handle and (for the second half) through a clone of it, as a decoding
/// worker would.
struct BadEvery {
    batches: i64,
}

#[async_trait]
impl Source for BadEvery {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<()> {
        let mut worker = ctx.bad_records.clone();
        for b in 0..self.batches {
            let bad = if b % 2 == 0 {
                &mut ctx.bad_records
            } else {
                &mut worker
            };
            bad.origin_mut().offset = Some(b);
            bad.report(
                crate::dlq::BadRecordReason::Malformed,
                &format!("bad {b}"),
                format!("{{broken {b}").as_bytes(),
            );
            let batch = RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Int64Array::from(vec![b, b])),
                    Arc::new(Int64Array::from(vec![2 * b, 2 * b + 1])),
                ],
            )
            .unwrap();
            ctx.out.emit(batch).await?;
        }
        Ok(())
    }
}

struct BadEveryFactory(i64);

impl SourceFactory for BadEveryFactory {
    fn schema(&self) -> SchemaRef {
        schema()
    }
    fn bounded(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        "bad every batch".into()
    }
    fn create(&self, _task: &TaskInfo) -> Result<Box<dyn Source>> {
        Ok(Box::new(BadEvery { batches: self.0 }))
    }
}

fn dead_letter_graph(
    policy: crate::dlq::ErrorPolicy,
) -> (
    Graph,
    crate::connectors::memory::MemorySink,
    crate::connectors::memory::MemorySink,
) {
    let mut graph = Graph::new("dlq");
    let src = graph.add_source("orders", Arc::new(BadEveryFactory(10)), 1);
    graph.nodes[src].replay_table = Some("orders".into());
    let out = crate::connectors::memory::MemorySink::new();
    let letters = crate::connectors::memory::MemorySink::new();
    graph
        .add_sink("out", Arc::new(out.clone()), 1, src, Partitioning::Forward)
        .unwrap();
    graph.errors = policy;
    graph.dead_letters = Some(Arc::new(letters.clone()));
    (graph, out, letters)
}

#[tokio::test]
async fn bad_records_reach_the_dead_letter_sink_once_each_and_good_rows_go_on() {
    let (graph, out, letters) = dead_letter_graph(crate::dlq::ErrorPolicy::DeadLetter);
    let report = Runtime::run(graph, RuntimeSettings::default(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.bad_records, 10);
    let rows: usize = out.batches().iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 20, "every good row is written");
    let mut got: Vec<crate::dlq::DeadLetter> = letters
        .batches()
        .iter()
        .flat_map(|b| crate::dlq::record::from_batch(b).unwrap())
        .collect();
    got.sort_by_key(|l| l.source.offset);
    assert_eq!(got.len(), 10, "one dead letter per bad record");
    for (b, l) in got.iter().enumerate() {
        assert_eq!(l.payload, format!("{{broken {b}").into_bytes());
        assert_eq!(l.message, format!("bad {b}"));
        assert_eq!(l.source.offset, Some(b as i64));
        assert_eq!(l.source.table.as_deref(), Some("orders"));
        assert_eq!((l.pipeline.as_str(), l.node.as_str()), ("dlq", "orders"));
        assert_eq!(l.failure_class, crate::dlq::BadRecordReason::Malformed);
        assert_eq!((l.attempts, l.status), (1, crate::dlq::Status::Pending));
    }
    let ids: std::collections::BTreeSet<_> = got.iter().map(|l| l.id.clone()).collect();
    assert_eq!(ids.len(), 10, "ids are unique");
}

#[tokio::test]
async fn the_fail_policy_stops_the_pipeline_naming_the_bad_record() {
    let (graph, _, letters) = dead_letter_graph(crate::dlq::ErrorPolicy::Fail);
    let err = Runtime::run(graph, RuntimeSettings::default(), std::future::pending())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("bad 0") && text.contains("malformed"),
        "{text}"
    );
    assert!(letters.batches().is_empty());
}

#[tokio::test]
async fn the_drop_policy_counts_and_keeps_nothing() {
    let (graph, out, letters) = dead_letter_graph(crate::dlq::ErrorPolicy::Drop);
    let report = Runtime::run(graph, RuntimeSettings::default(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.bad_records, 10);
    assert!(letters.batches().is_empty());
    assert_eq!(
        out.batches().iter().map(|b| b.num_rows()).sum::<usize>(),
        20
    );
}
