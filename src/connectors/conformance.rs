//! One conformance suite for the sinks whose output can be read back.
//!
//! Every scenario is written once, as a function generic over a [`ReadableSink`]
//! fixture (build the sink from `WITH` options the way the planner does, and read back
//! every row a reader of the output directory can see), and run against:
//!
//! - `file`: JSON lines, read back with `arrow_json`'s `ReaderBuilder`;
//! - `parquet`: read back with the parquet crate's Arrow reader;
//! - `parquet_partitioned`: `partition_by = 'day,region'`, read back like a Hive-aware
//!   reader: the partition columns, dropped from the files, are rebuilt from the
//!   `col=value` directory names;
//! - `webhook` (at-least-once, nothing on disk): POSTed to a receiver on loopback that
//!   verifies each signature, fails some requests (503, closed connections) and reads
//!   the delivered bodies back once per idempotency key with `arrow_json`. The
//!   scenarios about files (hidden in-progress files, rollover) do not apply.
//!
//! Rows are compared as multisets: each row is rendered to a canonical string (every
//! column displayed by Arrow, nulls marked) and the sorted lists must be equal; the
//! column types read back must equal the written ones.
//!
//! Documented outcomes the suite pins down: an empty input leaves an empty file for
//! `file` (the file is created when the sink starts) and no file at all for `parquet`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Date32Array, Float64Array, Int64Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder, StructArray, TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow::buffer::NullBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::{Options, TableRequest};
use crate::engine::{Sink, SinkFactory, TaskInfo};

/// A sink under test and how to read back what it wrote.
trait ReadableSink {
    /// Builds the sink, writing under `dir`, from its `WITH` options plus `extra`.
    fn factory(&self, dir: &Path, extra: &[(&str, &str)]) -> Arc<dyn SinkFactory>;
    /// Every row a reader of `dir` sees now, with the columns of `schema`.
    fn read_back(&self, dir: &Path, schema: &SchemaRef) -> Vec<RecordBatch>;
    /// Whether a run without rows leaves a (then empty) file.
    fn empty_run_leaves_a_file(&self) -> bool;
}

fn build(
    dir: &Path,
    connector: &str,
    options: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> Arc<dyn SinkFactory> {
    let values: BTreeMap<String, String> = options
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let req = TableRequest {
        env: &crate::connectors::ConnectorEnv::default(),
        table: "out",
        schema: None,
        base_dir: dir,
    };
    super::sink(&req, Options::new("out", connector, values)).expect("sink options")
}

/// `file`, writing `out/orders.jsonl` (and `out/orders-<p>.jsonl` when parallel).
struct JsonLinesFile;

impl ReadableSink for JsonLinesFile {
    fn factory(&self, dir: &Path, extra: &[(&str, &str)]) -> Arc<dyn SinkFactory> {
        build(dir, "file", &[("path", "out/orders.jsonl")], extra)
    }

    fn read_back(&self, dir: &Path, schema: &SchemaRef) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        for path in visible_files(&dir.join("out")) {
            assert_eq!(path.extension().unwrap(), "jsonl", "{}", path.display());
            let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
            let reader = arrow::json::ReaderBuilder::new(schema.clone())
                .build(file)
                .unwrap();
            for b in reader {
                out.push(b.unwrap_or_else(|e| panic!("{}: {e}", path.display())));
            }
        }
        out
    }

    fn empty_run_leaves_a_file(&self) -> bool {
        true
    }
}

/// `parquet`, writing under `data/sales`, optionally partitioned.
struct ParquetDir {
    partition_by: Option<&'static str>,
}

impl ParquetDir {
    fn root(dir: &Path) -> PathBuf {
        dir.join("data/sales")
    }
}

/// Undoes Hive's `%XX` escaping of directory names.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

impl ReadableSink for ParquetDir {
    fn factory(&self, dir: &Path, extra: &[(&str, &str)]) -> Arc<dyn SinkFactory> {
        let mut opts = vec![("path", "data/sales")];
        if let Some(p) = self.partition_by {
            opts.push(("partition_by", p));
        }
        build(dir, "parquet", &opts, extra)
    }

    fn read_back(&self, dir: &Path, schema: &SchemaRef) -> Vec<RecordBatch> {
        let root = Self::root(dir);
        let mut out = Vec::new();
        for path in visible_files(&root) {
            assert_eq!(path.extension().unwrap(), "parquet", "{}", path.display());
            // `col=value` directories between the root and the file.
            let mut values: BTreeMap<String, Option<String>> = BTreeMap::new();
            let rel = path.parent().unwrap().strip_prefix(&root).unwrap();
            for part in rel.components() {
                let part = part.as_os_str().to_str().unwrap();
                let (k, v) = part.split_once('=').expect("a col=value directory");
                let v = (v != super::parquet_sink::HIVE_DEFAULT_PARTITION).then(|| unescape(v));
                values.insert(unescape(k), v);
            }
            for batch in read_parquet(&path) {
                for name in values.keys() {
                    assert!(
                        batch.column_by_name(name).is_none(),
                        "partition column {name} is kept in {}",
                        path.display()
                    );
                }
                let columns: Vec<ArrayRef> = schema
                    .fields()
                    .iter()
                    .map(|f| match batch.column_by_name(f.name()) {
                        Some(c) => c.clone(),
                        None => {
                            let v = values.get(f.name()).unwrap_or_else(|| {
                                panic!("column {} missing from {}", f.name(), path.display())
                            });
                            let strings: ArrayRef =
                                Arc::new(StringArray::from(vec![v.as_deref(); batch.num_rows()]));
                            cast(&strings, f.data_type()).unwrap()
                        }
                    })
                    .collect();
                let fields: Vec<Field> = schema
                    .fields()
                    .iter()
                    .zip(&columns)
                    .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), true))
                    .collect();
                out.push(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap());
            }
        }
        out
    }

    fn empty_run_leaves_a_file(&self) -> bool {
        false
    }
}

/// Every file under `dir` whose path has no hidden (`.`-prefixed) component, sorted.
fn visible_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = all_files(dir)
        .into_iter()
        .filter(|p| {
            !p.strip_prefix(dir)
                .unwrap()
                .components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    out
}

/// `webhook`, POSTing to a [`Receiver`](super::webhook::tests::Receiver).
struct Webhook {
    receiver: super::webhook::tests::Receiver,
}

impl Webhook {
    async fn start() -> Webhook {
        use super::webhook::tests::{Receiver, Reply};
        // Every third request fails once: 503, or the connection closed.
        let rule =
            std::sync::Arc::new(
                |n: usize, _: &super::webhook::tests::Received| match n % 6 {
                    0 => Reply::Status(503, "busy"),
                    3 => Reply::Close,
                    _ => Reply::Status(200, "ok"),
                },
            );
        Webhook {
            receiver: Receiver::start(Some(b"conformance"), rule).await,
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let bad = self
            .receiver
            .bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst);
        if !std::thread::panicking() {
            assert_eq!(bad, 0, "requests with a bad signature");
        }
    }
}

impl ReadableSink for Webhook {
    fn factory(&self, dir: &Path, extra: &[(&str, &str)]) -> Arc<dyn SinkFactory> {
        let url = self.receiver.url();
        let opts = [
            ("url", url.as_str()),
            ("secret", "conformance"),
            ("backoff", "1ms"),
        ];
        build(dir, "webhook", &opts, extra)
    }

    fn read_back(&self, _dir: &Path, schema: &SchemaRef) -> Vec<RecordBatch> {
        let mut lines = Vec::new();
        for body in self.receiver.delivered().values() {
            lines.extend_from_slice(body);
            lines.push(b'\n');
        }
        arrow::json::ReaderBuilder::new(schema.clone())
            .build(std::io::Cursor::new(lines))
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    }

    fn empty_run_leaves_a_file(&self) -> bool {
        false
    }
}

/// Every file under `dir`, hidden or not.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn hidden_files(dir: &Path) -> Vec<PathBuf> {
    let visible = visible_files(dir);
    all_files(dir)
        .into_iter()
        .filter(|p| !visible.contains(p))
        .collect()
}

/// Each row rendered canonically, sorted: the multiset of rows. Also checks that every
/// batch has the column names and types of `schema`.
fn row_multiset(batches: &[RecordBatch], schema: &SchemaRef) -> Vec<String> {
    let options = FormatOptions::new().with_null("<null>");
    let mut rows = Vec::new();
    for batch in batches {
        assert_eq!(batch.num_columns(), schema.fields().len());
        for (f, c) in schema.fields().iter().zip(batch.columns()) {
            assert!(
                f.data_type().equals_datatype(c.data_type()),
                "column {} read back as {} instead of {}",
                f.name(),
                c.data_type(),
                f.data_type()
            );
        }
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = schema
                .fields()
                .iter()
                .zip(&formatters)
                .map(|(f, fmt)| format!("{}={}", f.name(), fmt.value(row)))
                .collect();
            rows.push(cells.join(" | "));
        }
    }
    rows.sort();
    rows
}

fn assert_same_rows(written: &[RecordBatch], read: &[RecordBatch], schema: &SchemaRef) {
    let want = row_multiset(written, schema);
    let got = row_multiset(read, schema);
    assert_eq!(got.len(), want.len(), "rows read back vs written");
    if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
        panic!(
            "row multisets differ; first difference:\n written: {}\n read:    {}",
            want[i], got[i]
        );
    }
}

fn task(partition: usize, parallelism: usize) -> TaskInfo {
    TaskInfo {
        pipeline: "conformance".into(),
        node: "out".into(),
        partition,
        parallelism,
        state: crate::state::memory_backend(),
    }
}

/// 2026-01-01, in days since the epoch.
const JAN_1_2026: i32 = 20454;
/// 2026-01-01T00:00:00Z in milliseconds.
const JAN_1_2026_MS: i64 = JAN_1_2026 as i64 * 86_400_000;

fn region(i: i64) -> Option<&'static str> {
    // "eu/west" needs escaping in a directory name; null goes to the default partition.
    [Some("eu"), Some("us"), Some("eu/west"), None][(i % 4) as usize]
}

fn simple_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("day", DataType::Date32, false),
        Field::new("amount", DataType::Float64, true),
    ]))
}

/// Rows `from..from + n` of the simple schema.
fn simple_batch(from: i64, n: i64) -> RecordBatch {
    let ids: Vec<i64> = (from..from + n).collect();
    RecordBatch::try_new(
        simple_schema(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from(
                ids.iter().map(|&i| region(i)).collect::<Vec<_>>(),
            )),
            Arc::new(Date32Array::from(
                ids.iter()
                    .map(|&i| JAN_1_2026 + (i / 7 % 3) as i32)
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                ids.iter()
                    .map(|&i| (i % 9 != 0).then_some(i as f64 * 0.25))
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn point_fields() -> Fields {
    Fields::from(vec![
        Field::new("x", DataType::Float64, true),
        Field::new("label", DataType::Utf8, true),
    ])
}

fn rich_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("day", DataType::Date32, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new(
            "local_at",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
        Field::new(
            "tags",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        Field::new("point", DataType::Struct(point_fields()), true),
    ]))
}

/// Rows `from..from + n` with timestamps, lists and structs, nulls at every level.
fn rich_batch(from: i64, n: i64) -> RecordBatch {
    let ids: Vec<i64> = (from..from + n).collect();
    let at = TimestampMillisecondArray::from(
        ids.iter()
            .map(|&i| (i % 5 != 0).then_some(JAN_1_2026_MS + i * 3_600_123))
            .collect::<Vec<_>>(),
    )
    .with_timezone("UTC");
    let local_at = TimestampMicrosecondArray::from(
        ids.iter()
            .map(|&i| JAN_1_2026_MS * 1000 + i * 1_000_001)
            .collect::<Vec<_>>(),
    );
    let mut tags = ListBuilder::new(StringBuilder::new());
    for &i in &ids {
        match i % 6 {
            0 => tags.append_null(),
            1 => tags.append(true), // empty list
            _ => {
                for j in 0..(i % 4) {
                    if (i + j) % 5 == 0 {
                        tags.values().append_null();
                    } else {
                        tags.values().append_value(format!("t{i}.{j}"));
                    }
                }
                tags.append(true);
            }
        }
    }
    let x = Float64Array::from(
        ids.iter()
            .map(|&i| (i % 3 != 0).then_some(i as f64 / 8.0))
            .collect::<Vec<_>>(),
    );
    let label = StringArray::from(
        ids.iter()
            .map(|&i| Some(format!("p\"{i}\"\n")))
            .collect::<Vec<_>>(),
    );
    let valid = NullBuffer::from(ids.iter().map(|&i| i % 4 != 1).collect::<Vec<_>>());
    let point = StructArray::try_new(
        point_fields(),
        vec![Arc::new(x), Arc::new(label)],
        Some(valid),
    )
    .unwrap();
    RecordBatch::try_new(
        rich_schema(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from(
                ids.iter().map(|&i| region(i)).collect::<Vec<_>>(),
            )),
            Arc::new(Date32Array::from(
                ids.iter()
                    .map(|&i| JAN_1_2026 + (i % 2) as i32)
                    .collect::<Vec<_>>(),
            )),
            Arc::new(at),
            Arc::new(local_at),
            Arc::new(tags.finish()),
            Arc::new(point),
        ],
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------
// Scenarios, each written once.

/// Two partitions, several batches each, flushes in between, then `finish()`: every
/// row written is read back exactly once, and nothing hidden is left behind.
async fn rows_survive_flushes_and_finish<S: ReadableSink + ?Sized>(s: &S) {
    let dir = tempfile::tempdir().unwrap();
    let schema = simple_schema();
    let factory = s.factory(dir.path(), &[]);
    factory.check_schema(&schema).unwrap();
    let mut sinks: Vec<Box<dyn Sink>> = (0..2)
        .map(|p| factory.create(&task(p, 2), schema.clone()).unwrap())
        .collect();
    let mut written = Vec::new();
    for round in 0..6i64 {
        let p = (round % 2) as usize;
        let batch = simple_batch(round * 100, 37 + round);
        sinks[p].write(batch.clone()).await.unwrap();
        written.push(batch);
        if round % 2 == 1 {
            for sink in &mut sinks {
                sink.flush().await.unwrap();
            }
        }
    }
    for sink in &mut sinks {
        sink.finish().await.unwrap();
    }
    drop(sinks);
    assert_same_rows(&written, &s.read_back(dir.path(), &schema), &schema);
    assert_eq!(hidden_files(dir.path()), Vec::<PathBuf>::new());
}

/// No rows (one empty batch): nothing to read back; `file` leaves an empty file,
/// `parquet` no file at all.
async fn empty_input<S: ReadableSink + ?Sized>(s: &S) {
    let dir = tempfile::tempdir().unwrap();
    let schema = simple_schema();
    let factory = s.factory(dir.path(), &[]);
    let mut sink = factory.create(&task(0, 1), schema.clone()).unwrap();
    sink.write(RecordBatch::new_empty(schema.clone()))
        .await
        .unwrap();
    sink.flush().await.unwrap();
    sink.finish().await.unwrap();
    drop(sink);
    let rows: usize = s
        .read_back(dir.path(), &schema)
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 0);
    let files = all_files(dir.path());
    if s.empty_run_leaves_a_file() {
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), 0);
    } else {
        assert_eq!(files, Vec::<PathBuf>::new());
    }
}

/// Lists (with null and empty lists and null elements), structs (null structs, null
/// fields, strings needing escapes) and timestamps of two units, with and without a
/// time zone, read back equal and with the same types.
async fn nested_types_and_timestamps_survive<S: ReadableSink + ?Sized>(s: &S) {
    let dir = tempfile::tempdir().unwrap();
    let schema = rich_schema();
    let factory = s.factory(dir.path(), &[]);
    factory.check_schema(&schema).unwrap();
    let mut sink = factory.create(&task(0, 1), schema.clone()).unwrap();
    let written = vec![rich_batch(0, 50), rich_batch(50, 31)];
    for b in &written {
        sink.write(b.clone()).await.unwrap();
    }
    sink.finish().await.unwrap();
    drop(sink);
    assert_same_rows(&written, &s.read_back(dir.path(), &schema), &schema);
}

/// Before `finish()`, with files too young and too small to roll, a reader sees
/// nothing: only hidden in-progress files exist. After it, everything.
async fn nothing_visible_before_complete<S: ReadableSink + ?Sized>(s: &S) {
    let dir = tempfile::tempdir().unwrap();
    let schema = simple_schema();
    let factory = s.factory(dir.path(), &[]);
    let mut sink = factory.create(&task(0, 1), schema.clone()).unwrap();
    let written = vec![simple_batch(0, 40), simple_batch(40, 40)];
    for b in &written {
        sink.write(b.clone()).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(visible_files(dir.path()), Vec::<PathBuf>::new());
        let hidden = hidden_files(dir.path());
        assert!(!hidden.is_empty());
        for h in &hidden {
            let name = h.file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with(".part-0-") && name.ends_with(".parquet.inprogress"),
                "{name}"
            );
        }
    }
    sink.finish().await.unwrap();
    drop(sink);
    assert_eq!(hidden_files(dir.path()), Vec::<PathBuf>::new());
    assert_same_rows(&written, &s.read_back(dir.path(), &schema), &schema);
}

/// A small `rollover_size` splits the output into several files; while writing, every
/// visible file is complete (readable); their union is the input.
async fn rollover_by_size_splits_files<S: ReadableSink + ?Sized>(s: &S) {
    let dir = tempfile::tempdir().unwrap();
    let schema = simple_schema();
    let factory = s.factory(dir.path(), &[("rollover_size", "4KB")]);
    let mut sink = factory.create(&task(0, 1), schema.clone()).unwrap();
    let mut written = Vec::new();
    for i in 0..20 {
        let b = simple_batch(i * 2000, 2000);
        sink.write(b.clone()).await.unwrap();
        written.push(b);
        for f in visible_files(dir.path()) {
            assert!(!read_parquet(&f).is_empty(), "{}", f.display());
        }
    }
    let published_before_finish = visible_files(dir.path()).len();
    sink.finish().await.unwrap();
    drop(sink);
    let files = visible_files(dir.path());
    let dirs: std::collections::BTreeSet<_> = files.iter().map(|f| f.parent().unwrap()).collect();
    assert!(published_before_finish > 0, "nothing rolled before finish");
    assert!(
        files.len() >= 2 * dirs.len(),
        "{} files in {} directories",
        files.len(),
        dirs.len()
    );
    assert_same_rows(&written, &s.read_back(dir.path(), &schema), &schema);
}

// ---------------------------------------------------------------------------------
// The matrix: every scenario against every fixture it applies to.

mod file {
    use super::*;

    #[tokio::test]
    async fn rows_survive_flushes_and_finish() {
        super::rows_survive_flushes_and_finish(&JsonLinesFile).await;
    }

    #[tokio::test]
    async fn empty_input() {
        super::empty_input(&JsonLinesFile).await;
    }

    #[tokio::test]
    async fn nested_types_and_timestamps_survive() {
        super::nested_types_and_timestamps_survive(&JsonLinesFile).await;
    }
}

mod parquet {
    use super::*;

    const S: ParquetDir = ParquetDir { partition_by: None };

    #[tokio::test]
    async fn rows_survive_flushes_and_finish() {
        super::rows_survive_flushes_and_finish(&S).await;
    }

    #[tokio::test]
    async fn empty_input() {
        super::empty_input(&S).await;
    }

    #[tokio::test]
    async fn nested_types_and_timestamps_survive() {
        super::nested_types_and_timestamps_survive(&S).await;
    }

    #[tokio::test]
    async fn nothing_visible_before_complete() {
        super::nothing_visible_before_complete(&S).await;
    }

    #[tokio::test]
    async fn rollover_by_size_splits_files() {
        super::rollover_by_size_splits_files(&S).await;
    }
}

mod parquet_partitioned {
    use super::*;

    const S: ParquetDir = ParquetDir {
        partition_by: Some("day,region"),
    };

    #[tokio::test]
    async fn rows_survive_flushes_and_finish() {
        super::rows_survive_flushes_and_finish(&S).await;
    }

    #[tokio::test]
    async fn empty_input() {
        super::empty_input(&S).await;
    }

    #[tokio::test]
    async fn nested_types_and_timestamps_survive() {
        super::nested_types_and_timestamps_survive(&S).await;
    }

    #[tokio::test]
    async fn nothing_visible_before_complete() {
        super::nothing_visible_before_complete(&S).await;
    }

    #[tokio::test]
    async fn rollover_by_size_splits_files() {
        super::rollover_by_size_splits_files(&S).await;
    }

    /// The directories are Hive-style, escaped, and in `partition_by` order.
    #[tokio::test]
    async fn directories_are_hive_style() {
        let dir = tempfile::tempdir().unwrap();
        let schema = simple_schema();
        let mut sink = S
            .factory(dir.path(), &[])
            .create(&task(0, 1), schema.clone())
            .unwrap();
        sink.write(simple_batch(0, 4)).await.unwrap();
        sink.finish().await.unwrap();
        let root = ParquetDir::root(dir.path());
        let rel: Vec<String> = visible_files(&root)
            .iter()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        assert_eq!(
            rel,
            vec![
                "day=2026-01-01/region=__HIVE_DEFAULT_PARTITION__/part-0-3.parquet",
                "day=2026-01-01/region=eu/part-0-0.parquet",
                "day=2026-01-01/region=eu%2Fwest/part-0-2.parquet",
                "day=2026-01-01/region=us/part-0-1.parquet",
            ]
        );
    }
}

mod webhook {
    use super::*;

    #[tokio::test]
    async fn rows_survive_flushes_and_finish() {
        super::rows_survive_flushes_and_finish(&Webhook::start().await).await;
    }

    #[tokio::test]
    async fn empty_input() {
        super::empty_input(&Webhook::start().await).await;
    }

    #[tokio::test]
    async fn nested_types_and_timestamps_survive() {
        super::nested_types_and_timestamps_survive(&Webhook::start().await).await;
    }
}
