//! The `blackhole` sink: discards rows, counting them, and optionally measures latency.
//!
//! `WITH (connector = 'blackhole', latency_column = 'ts')`
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `latency_column` | none | a timestamp column (any unit, with or without time zone) |
//!
//! With `latency_column`, for each batch the sink records *now − the oldest value of
//! that column in the batch* (one sample per batch, in seconds; timestamps without a
//! time zone are taken as UTC; a value in the future counts as zero; an all-null batch
//! records nothing) into the `tributary_sink_latency_seconds` histogram and into an
//! in-process [`LatencyHistogram`]. Benchmarks build the sink from Rust to read it:
//!
//! ```no_run
//! # use tributary::connectors::blackhole::blackhole_with_latency;
//! let (factory, latency) = blackhole_with_latency("date_time");
//! // … run a graph whose sink is `factory` …
//! if let Some((p50, p99, samples)) = latency.percentiles() {
//!     println!("p50 {p50:.3}s p99 {p99:.3}s over {samples} batches, {} rows", latency.rows());
//! }
//! ```
//!
//! Each partition logs the rows it discarded when it finishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use super::json_lines::check_declared_schema;
use super::{Options, TableRequest};
use crate::engine::{Sink, SinkFactory, TaskInfo};

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// Builds the `blackhole` sink from its options (`latency_column`).
pub fn sink(req: &TableRequest<'_>, opts: &mut Options) -> Result<Arc<dyn SinkFactory>> {
    let sink = BlackholeSink {
        table: req.table.to_string(),
        latency_column: super::latency::option(opts)?,
        declared: req.schema.clone(),
        stats: Arc::new(Stats::default()),
    };
    if let Some(declared) = &req.schema {
        sink.check_schema(declared)?;
    }
    Ok(Arc::new(sink))
}

/// A sink that discards its rows; the factory of [`blackhole_with_latency`].
pub struct BlackholeSink {
    table: String,
    latency_column: Option<String>,
    declared: Option<SchemaRef>,
    stats: Arc<Stats>,
}

/// A blackhole sink that measures latency from `column`, and the handle to read it.
pub fn blackhole_with_latency(column: &str) -> (Arc<dyn SinkFactory>, LatencyHandle) {
    let sink = BlackholeSink::new(Some(column));
    let handle = sink.handle();
    (Arc::new(sink), handle)
}

impl BlackholeSink {
    /// A blackhole, measuring latency from `latency_column` if given.
    pub fn new(latency_column: Option<&str>) -> Self {
        BlackholeSink {
            table: "blackhole".to_string(),
            latency_column: latency_column.map(str::to_string),
            declared: None,
            stats: Arc::new(Stats::default()),
        }
    }

    /// Reads what every partition of this sink counted and measured.
    pub fn handle(&self) -> LatencyHandle {
        LatencyHandle {
            stats: self.stats.clone(),
        }
    }
}

#[derive(Default)]
struct Stats {
    rows: AtomicU64,
    batches: AtomicU64,
    latency: LatencyHistogram,
    /// When the first non-empty batch arrived (benchmarks: time to first output).
    first_write: std::sync::OnceLock<std::time::Instant>,
}

/// Shared view of a blackhole sink's counters and latency histogram. Cheap to clone.
#[derive(Clone)]
pub struct LatencyHandle {
    stats: Arc<Stats>,
}

impl LatencyHandle {
    /// `(p50, p99, samples)`, in seconds, or `None` before the first sample.
    pub fn percentiles(&self) -> Option<(f64, f64, u64)> {
        let h = &self.stats.latency;
        Some((h.quantile(0.5)?, h.quantile(0.99)?, h.count()))
    }

    /// The latency at quantile `q` (0 ≤ q ≤ 1), in seconds.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.stats.latency.quantile(q)
    }

    /// Rows discarded so far, over every partition.
    pub fn rows(&self) -> u64 {
        self.stats.rows.load(Ordering::Relaxed)
    }

    /// Non-empty batches discarded so far, over every partition.
    pub fn batches(&self) -> u64 {
        self.stats.batches.load(Ordering::Relaxed)
    }

    /// When the first non-empty batch arrived, if one did.
    pub fn first_write(&self) -> Option<std::time::Instant> {
        self.stats.first_write.get().copied()
    }
}

/// Sub-buckets per power of two: values are kept within 1/32 (about 3%) of their size.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets for every `u64`: 32 exact ones, then 32 per power of two from 2^5 to 2^63.
const BUCKETS: usize = ((64 - SUB_BITS + 1) * SUB as u32) as usize;

/// A log-bucketed histogram of durations with microsecond resolution and ~3% relative
/// error, in fixed memory (1,920 counters), safe to record into from many threads.
pub struct LatencyHistogram {
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let k = 63 - v.leading_zeros(); // k >= SUB_BITS
    let sub = (v >> (k - SUB_BITS)) & (SUB - 1);
    ((k - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The value a bucket stands for: the middle of its range.
fn bucket_value(i: usize) -> f64 {
    let i = i as u64;
    if i < SUB {
        return i as f64;
    }
    let k = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = i % SUB;
    let width = 1u64 << (k - SUB_BITS);
    let low = (SUB + sub) << (k - SUB_BITS);
    low as f64 + (width as f64 - 1.0) / 2.0
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one duration, in seconds; negative values count as zero.
    pub fn record(&self, seconds: f64) {
        let micros = if seconds.is_finite() && seconds > 0.0 {
            (seconds * 1e6).round().min(u64::MAX as f64) as u64
        } else {
            0
        };
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (clamped to 0..=1), in seconds; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(i) / 1e6);
            }
        }
        None
    }
}

impl BlackholeSink {
    /// The index of the latency column in `schema`, checked to be a timestamp.
    fn latency_index(&self, schema: &SchemaRef) -> Result<Option<usize>> {
        super::latency::index(&self.table, self.latency_column.as_deref(), schema)
    }
}

impl SinkFactory for BlackholeSink {
    fn accepts_changelog(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        match &self.latency_column {
            Some(c) => format!("blackhole (latency from {c})"),
            None => "blackhole".to_string(),
        }
    }

    fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        check_declared_schema(&self.table, self.declared.as_ref(), schema)?;
        self.latency_index(schema).map(|_| ())
    }

    fn create(&self, task: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let latency_column = self.latency_index(&schema)?;
        Ok(Box::new(Blackhole {
            task: task.to_string(),
            latency_column,
            stats: self.stats.clone(),
            metric: crate::metrics::sink_latency(&task.pipeline, &task.node),
            rows: 0,
        }))
    }
}

/// One partition of a blackhole sink.
struct Blackhole {
    task: String,
    latency_column: Option<usize>,
    stats: Arc<Stats>,
    metric: metrics::Histogram,
    rows: u64,
}

#[async_trait]
impl Sink for Blackhole {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let n = batch.num_rows() as u64;
        if n == 0 {
            return Ok(());
        }
        self.rows += n;
        self.stats.first_write.get_or_init(std::time::Instant::now);
        self.stats.rows.fetch_add(n, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = self.latency_column
            && let Some(seconds) = super::latency::age_of_oldest(&batch, i)
        {
            self.metric.record(seconds);
            self.stats.latency.record(seconds);
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        tracing::info!(task = %self.task, rows = self.rows, "blackhole discarded rows");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]))
    }

    fn task(partition: usize) -> TaskInfo {
        TaskInfo {
            pipeline: "test".into(),
            node: "sink".into(),
            partition,
            parallelism: 2,
            state: crate::state::memory_backend(),
        }
    }

    fn now_millis() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn batch(ts: Vec<Option<i64>>) -> RecordBatch {
        let n = ts.len() as i64;
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())),
                Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
            ],
        )
        .unwrap()
    }

    #[test]
    fn histogram_quantiles_are_within_the_bucket_error() {
        let h = LatencyHistogram::new();
        assert_eq!(h.quantile(0.5), None);
        // 1ms, 2ms, …, 1000ms.
        for i in 1..=1000 {
            h.record(i as f64 / 1000.0);
        }
        assert_eq!(h.count(), 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.032;
        assert!(
            close(h.quantile(0.5).unwrap(), 0.5),
            "{:?}",
            h.quantile(0.5)
        );
        assert!(
            close(h.quantile(0.99).unwrap(), 0.99),
            "{:?}",
            h.quantile(0.99)
        );
        assert!(close(h.quantile(1.0).unwrap(), 1.0));
        assert!(close(h.quantile(0.0).unwrap(), 0.001));
        // Small values are exact; negative ones count as zero.
        let h = LatencyHistogram::new();
        h.record(-3.0);
        h.record(0.000_007);
        assert_eq!(h.quantile(0.0), Some(0.0));
        assert_eq!(h.quantile(1.0), Some(0.000_007));
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let mut last = 0;
        for v in (0..10_000u64).chain([1 << 40, (1 << 40) + 1, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last);
            last = b;
            let mid = bucket_value(b);
            assert!(
                (mid - v as f64).abs() <= (v as f64) / 32.0 + 0.5,
                "{v} -> {mid}"
            );
        }
    }

    #[tokio::test]
    async fn counts_rows_and_measures_latency_from_the_oldest_value() {
        let (factory, handle) = blackhole_with_latency("ts");
        factory.check_schema(&schema()).unwrap();
        let mut a = factory.create(&task(0), schema()).unwrap();
        let mut b = factory.create(&task(1), schema()).unwrap();
        assert_eq!(handle.percentiles(), None);
        let now = now_millis();
        // Oldest 2 s ago; the newer value and the null are ignored.
        a.write(batch(vec![Some(now - 500), Some(now - 2000), None]))
            .await
            .unwrap();
        b.write(batch(vec![Some(now - 2000)])).await.unwrap();
        // All null: counted, no sample.
        b.write(batch(vec![None, None])).await.unwrap();
        // In the future: zero.
        a.write(batch(vec![Some(now + 60_000)])).await.unwrap();
        a.write(batch(vec![])).await.unwrap();
        a.finish().await.unwrap();
        b.finish().await.unwrap();
        assert_eq!(handle.rows(), 7);
        assert_eq!(handle.batches(), 4);
        let (p50, p99, n) = handle.percentiles().unwrap();
        assert_eq!(n, 3);
        // 2 s plus however long the test took, within the histogram's 3%.
        assert!((1.9..2.5).contains(&p50), "p50 {p50}");
        assert!((1.9..2.5).contains(&p99), "p99 {p99}");
        assert_eq!(handle.quantile(0.0), Some(0.0));
    }

    #[test]
    fn options_and_schema_are_checked_at_plan_time() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |kv: &[(&str, &str)]| {
            let values: BTreeMap<String, String> = kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Options::new("bh", "blackhole", values)
        };
        let undeclared = TableRequest {
            env: &crate::connectors::ConnectorEnv::default(),
            table: "bh",
            schema: None,
            base_dir: dir.path(),
        };
        let f = super::super::sink(&undeclared, opts(&[])).unwrap();
        f.check_schema(&schema()).unwrap();
        let e = super::super::sink(&undeclared, opts(&[("latency", "ts")]))
            .err()
            .unwrap();
        assert_eq!(e.code(), "CON002");
        let f = super::super::sink(&undeclared, opts(&[("latency_column", "id")])).unwrap();
        assert!(
            f.check_schema(&schema())
                .unwrap_err()
                .to_string()
                .contains("timestamp")
        );
        let f = super::super::sink(&undeclared, opts(&[("latency_column", "nope")])).unwrap();
        assert!(f.check_schema(&schema()).is_err());
        let declared = TableRequest {
            env: &crate::connectors::ConnectorEnv::default(),
            schema: Some(schema()),
            ..undeclared
        };
        let e = super::super::sink(&declared, opts(&[("latency_column", "nope")]))
            .err()
            .unwrap();
        assert_eq!(e.code(), "CON006");
        let f = super::super::sink(&declared, opts(&[("latency_column", "ts")])).unwrap();
        let other: SchemaRef = Arc::new(schema().project(&[1]).unwrap());
        assert_eq!(f.check_schema(&other).unwrap_err().code(), "CON006");
    }
}
