//! The `stdout` and `file` sinks: JSON lines, one object per row, newline-terminated.
//!
//! Both encode with [`crate::formats::json::encode_json_lines`], one whole batch at a
//! time.
//!
//! ## `stdout`
//!
//! `WITH (connector = 'stdout')`, no options. Each batch is encoded first and then
//! written while holding the process-wide standard output lock, so the partitions of
//! a parallel sink (and anything else printing through `std::io::stdout`) never
//! interleave within a line, nor within a batch. Output is flushed on every `flush()`
//! and on `finish()`.
//!
//! ## `file`
//!
//! `WITH (connector = 'file', path = 'out/orders.jsonl', append = false)`
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `path` | required | the file to write; relative paths are resolved from the SQL file's directory |
//! | `append` | `false` | `false`: the file is truncated when the sink starts; `true`: rows are appended |
//!
//! With parallelism 1 the sink writes `path` itself. With parallelism `n > 1` each
//! partition writes its own file, named by inserting `-<partition>` before the
//! extension: `out/orders-0.jsonl`, `out/orders-1.jsonl`, … (`out/orders` becomes
//! `out/orders-0`, …). Files of a previous run with a higher parallelism are left as
//! they are. Missing parent directories are created. Writes are buffered; the buffer is
//! written out on every `flush()`, and `finish()` writes it out and syncs the file to
//! disk. A file is created (empty) even when no row arrives.
//!
//! Writes are synchronous on the sink's task: the buffers keep system calls few and
//! large, and a slow disk slows the pipeline down through backpressure.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use super::{ConnectorError, Options, TableRequest};
use crate::engine::{Sink, SinkFactory, TaskInfo};

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// Size of the `file` sink's write buffer.
const FILE_BUFFER: usize = 1 << 20;

/// Builds the `stdout` sink. It has no options.
pub fn stdout_sink(req: &TableRequest<'_>, _opts: &mut Options) -> Result<Arc<dyn SinkFactory>> {
    Ok(Arc::new(StdoutSinkFactory {
        table: req.table.to_string(),
        declared: req.schema.clone(),
        console: Console::Stdout,
    }))
}

/// Builds the `file` sink from its options (`path`, `append`).
pub fn file_sink(req: &TableRequest<'_>, opts: &mut Options) -> Result<Arc<dyn SinkFactory>> {
    let raw = opts.required("path")?;
    let append = opts.parse_bool("append", false)?;
    let path = resolve_path(req.base_dir, &raw);
    if raw.trim().is_empty() || raw.ends_with('/') || raw.ends_with('\\') {
        return Err(opts.invalid("path", &raw, "expected a file path"));
    }
    if path.is_dir() {
        return Err(opts.invalid("path", &raw, "is a directory; expected a file path"));
    }
    Ok(Arc::new(FileSinkFactory {
        table: req.table.to_string(),
        declared: req.schema.clone(),
        path,
        append,
    }))
}

/// Resolves a path option against the directory of the SQL file.
pub(crate) fn resolve_path(base_dir: &Path, raw: &str) -> PathBuf {
    let p = Path::new(raw.trim());
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// Refuses an input schema that differs from the columns declared in the DDL (names
/// and types, in order; nested field names and nullability of top-level columns are
/// not compared).
pub(crate) fn check_declared_schema(
    table: &str,
    declared: Option<&SchemaRef>,
    input: &SchemaRef,
) -> Result<()> {
    let Some(declared) = declared else {
        return Ok(());
    };
    // A changelog's op column comes on top of the declared columns.
    let input = &match input.fields().last() {
        Some(f) if f.name() == crate::engine::OP_COLUMN && declared.index_of(f.name()).is_err() => {
            let n = input.fields().len() - 1;
            Arc::new(
                input
                    .project(&(0..n).collect::<Vec<_>>())
                    .expect("in range"),
            )
        }
        _ => input.clone(),
    };
    let same = declared.fields().len() == input.fields().len()
        && declared
            .fields()
            .iter()
            .zip(input.fields().iter())
            .all(|(d, i)| d.name() == i.name() && d.data_type().equals_datatype(i.data_type()));
    if same {
        return Ok(());
    }
    Err(ConnectorError::Schema {
        table: table.to_string(),
        message: format!(
            "the declared columns ({}) differ from the columns written to it ({})",
            describe_fields(declared),
            describe_fields(input)
        ),
    }
    .into())
}

/// `a: Int64, b: Utf8` for error messages.
pub(crate) fn describe_fields(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn io_error(connector: &'static str, path: &Path, source: std::io::Error) -> crate::Error {
    ConnectorError::Io {
        connector,
        path: path.display().to_string(),
        source,
    }
    .into()
}

/// Where JSON lines go: somewhere that takes whole batches at once.
trait LineOut: Send {
    /// Writes `bytes` (whole lines) without letting another writer in between.
    fn write_lines(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
    /// Makes everything written durable.
    fn finish(&mut self) -> std::io::Result<()>;
}

/// The process's standard output, or (in tests) a shared in-memory capture.
#[derive(Clone)]
enum Console {
    Stdout,
    #[cfg(test)]
    Capture(Arc<std::sync::Mutex<Vec<u8>>>),
}

impl LineOut for Console {
    fn write_lines(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            // One lock for the whole batch: no other partition's line can get in.
            Console::Stdout => std::io::stdout().lock().write_all(bytes),
            #[cfg(test)]
            Console::Capture(buf) => {
                buf.lock().expect("capture lock").extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Console::Stdout => std::io::stdout().lock().flush(),
            #[cfg(test)]
            Console::Capture(_) => Ok(()),
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

impl LineOut for BufWriter<File> {
    fn write_lines(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Write::flush(self)
    }

    fn finish(&mut self) -> std::io::Result<()> {
        Write::flush(self)?;
        self.get_ref().sync_all()
    }
}

/// One partition of a JSON-lines sink.
struct JsonLinesSink<W: LineOut> {
    connector: &'static str,
    /// What the errors name: a path, or `stdout`.
    target: PathBuf,
    out: W,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

impl<W: LineOut> JsonLinesSink<W> {
    fn io(&self, e: std::io::Error) -> crate::Error {
        io_error(self.connector, &self.target, e)
    }
}

#[async_trait]
impl<W: LineOut> Sink for JsonLinesSink<W> {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.buf.clear();
        crate::formats::json::encode_json_lines(&batch, &mut self.buf)?;
        let r = self.out.write_lines(&self.buf);
        // Keep a large batch's buffer from pinning memory for the rest of the run.
        if self.buf.capacity() > 4 * FILE_BUFFER {
            self.buf = Vec::new();
        }
        r.map_err(|e| self.io(e))
    }

    async fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| self.io(e))
    }

    async fn finish(&mut self) -> Result<()> {
        self.out.finish().map_err(|e| self.io(e))
    }
}

struct StdoutSinkFactory {
    table: String,
    declared: Option<SchemaRef>,
    console: Console,
}

impl SinkFactory for StdoutSinkFactory {
    fn accepts_changelog(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "stdout (JSON lines)".to_string()
    }

    fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        check_declared_schema(&self.table, self.declared.as_ref(), schema)
    }

    fn create(&self, _task: &TaskInfo, _schema: SchemaRef) -> Result<Box<dyn Sink>> {
        Ok(Box::new(JsonLinesSink {
            connector: "stdout",
            target: PathBuf::from("stdout"),
            out: self.console.clone(),
            buf: Vec::new(),
        }))
    }
}

struct FileSinkFactory {
    table: String,
    declared: Option<SchemaRef>,
    path: PathBuf,
    append: bool,
}

/// The file partition `partition` of a sink with parallelism `parallelism` writes:
/// `path` itself when alone, else `path` with `-<partition>` before the extension.
pub(crate) fn partition_file(path: &Path, partition: usize, parallelism: usize) -> PathBuf {
    if parallelism <= 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{partition}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{partition}"),
    };
    path.with_file_name(name)
}

impl SinkFactory for FileSinkFactory {
    fn accepts_changelog(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "file: {} (JSON lines{})",
            self.path.display(),
            if self.append { ", append" } else { "" }
        )
    }

    fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        check_declared_schema(&self.table, self.declared.as_ref(), schema)
    }

    fn create(&self, task: &TaskInfo, _schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let path = partition_file(&self.path, task.partition, task.parallelism);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io_error("file", parent, e))?;
        }
        let mut open = std::fs::OpenOptions::new();
        open.create(true);
        if self.append {
            open.append(true);
        } else {
            open.write(true).truncate(true);
        }
        let file = open.open(&path).map_err(|e| io_error("file", &path, e))?;
        Ok(Box::new(JsonLinesSink {
            connector: "file",
            target: path,
            out: BufWriter::with_capacity(FILE_BUFFER, file),
            buf: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn batch(from: i64, n: i64) -> RecordBatch {
        let ids: Vec<i64> = (from..from + n).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("name {i} \"quoted\"")).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    fn task(partition: usize, parallelism: usize) -> TaskInfo {
        TaskInfo {
            pipeline: "test".into(),
            node: "out".into(),
            partition,
            parallelism,
            state: crate::state::memory_backend(),
        }
    }

    fn options(connector: &str, kv: &[(&str, &str)]) -> Options {
        let values: BTreeMap<String, String> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Options::new("orders", connector, values)
    }

    fn file_factory(dir: &Path, kv: &[(&str, &str)]) -> Arc<dyn SinkFactory> {
        let req = TableRequest {
            env: &crate::connectors::ConnectorEnv::default(),
            table: "orders",
            schema: None,
            base_dir: dir,
        };
        super::super::sink(&req, options("file", kv)).unwrap()
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn partition_files_insert_the_index_before_the_extension() {
        let p = Path::new("out/orders.jsonl");
        assert_eq!(partition_file(p, 0, 1), PathBuf::from("out/orders.jsonl"));
        assert_eq!(partition_file(p, 1, 3), PathBuf::from("out/orders-1.jsonl"));
        assert_eq!(
            partition_file(Path::new("out/orders"), 2, 3),
            PathBuf::from("out/orders-2")
        );
    }

    #[tokio::test]
    async fn file_sink_truncates_by_default_and_appends_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/orders.jsonl");
        for _ in 0..2 {
            let f = file_factory(dir.path(), &[("path", "out/orders.jsonl")]);
            let mut s = f.create(&task(0, 1), schema()).unwrap();
            s.write(batch(0, 3)).await.unwrap();
            s.finish().await.unwrap();
            assert_eq!(lines(&path).len(), 3, "the second run truncates");
        }
        let f = file_factory(
            dir.path(),
            &[("path", "out/orders.jsonl"), ("append", "true")],
        );
        let mut s = f.create(&task(0, 1), schema()).unwrap();
        s.write(batch(3, 2)).await.unwrap();
        s.finish().await.unwrap();
        let ids: Vec<i64> = lines(&path)
            .iter()
            .map(|v| v["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn file_sink_flush_makes_rows_visible_before_finish() {
        let dir = tempfile::tempdir().unwrap();
        let f = file_factory(dir.path(), &[("path", "orders.jsonl")]);
        let mut s = f.create(&task(0, 1), schema()).unwrap();
        s.write(batch(0, 4)).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(lines(&dir.path().join("orders.jsonl")).len(), 4);
        s.finish().await.unwrap();
    }

    #[test]
    fn file_sink_refuses_unknown_options_and_a_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        let req = TableRequest {
            env: &crate::connectors::ConnectorEnv::default(),
            table: "orders",
            schema: None,
            base_dir: dir.path(),
        };
        let e = super::super::sink(
            &req,
            options("file", &[("path", "a.jsonl"), ("compresion", "gzip")]),
        )
        .err()
        .unwrap();
        assert_eq!(e.code(), "CON002", "{e}");
        let e = super::super::sink(&req, options("file", &[]))
            .err()
            .unwrap();
        assert_eq!(e.code(), "CON003", "{e}");
        let e = super::super::sink(&req, options("file", &[("path", "a"), ("append", "maybe")]))
            .err()
            .unwrap();
        assert_eq!(e.code(), "CON004", "{e}");
        let e = super::super::sink(&req, options("stdout", &[("path", "a")]))
            .err()
            .unwrap();
        assert_eq!(e.code(), "CON002", "{e}");
    }

    #[test]
    fn declared_schema_mismatch_lists_both_column_lists() {
        let dir = tempfile::tempdir().unwrap();
        let req = TableRequest {
            env: &crate::connectors::ConnectorEnv::default(),
            table: "orders",
            schema: Some(schema()),
            base_dir: dir.path(),
        };
        let f = super::super::sink(&req, options("file", &[("path", "a.jsonl")])).unwrap();
        f.check_schema(&schema()).unwrap();
        let other: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let e = f.check_schema(&other).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.code(), "CON006");
        assert!(msg.contains("id: Int64, name: Utf8"), "{msg}");
        assert!(msg.contains("id: Int32, name: Utf8"), "{msg}");
        let s = super::super::sink(&req, options("stdout", &[])).unwrap();
        assert!(s.check_schema(&other).is_err());
    }

    /// Four partitions write concurrently from a multi-threaded runtime; every line of
    /// the shared output is a whole JSON object and every row arrives once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stdout_partitions_never_interleave_within_a_line() {
        let capture = Arc::new(std::sync::Mutex::new(Vec::new()));
        let factory = Arc::new(StdoutSinkFactory {
            table: "t".into(),
            declared: None,
            console: Console::Capture(capture.clone()),
        });
        let mut handles = Vec::new();
        for p in 0..4usize {
            let factory = factory.clone();
            handles.push(tokio::spawn(async move {
                let mut s = factory.create(&task(p, 4), schema()).unwrap();
                for b in 0..20 {
                    s.write(batch((p as i64) * 1_000_000 + b * 1000, 1000))
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
                s.finish().await.unwrap();
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let out = String::from_utf8(capture.lock().unwrap().clone()).unwrap();
        assert!(out.ends_with('\n'));
        let mut ids: Vec<i64> = out
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let id = v["id"].as_i64().unwrap();
                assert_eq!(v["name"], format!("name {id} \"quoted\""));
                id
            })
            .collect();
        ids.sort_unstable();
        let mut expected: Vec<i64> = (0..4i64)
            .flat_map(|p| (0..20_000).map(move |i| p * 1_000_000 + i))
            .collect();
        expected.sort_unstable();
        assert_eq!(ids, expected);
    }
}
