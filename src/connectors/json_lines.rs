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
//! | `path` | required | the file to write; relative paths are resolved from the working directory (where `tributary run` runs) |
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
//!
//! ### Exactly once, with checkpoints
//!
//! In a pipeline with `checkpoint:` (and `delivery: exactly-once`, its default) the
//! file sink is two-phase, like the Kafka sink:
//! rows are held in memory until the checkpoint that covers them is committed, then
//! appended and synced ([`HeldFile`]). What a checkpoint has not committed yet is in
//! its state (the bytes, and the file's committed length before them), so a restore
//! truncates the file to that length and appends them again — the same bytes whether
//! or not the commit had happened before the crash. A restored run does not
//! truncate the file (`append = false` means a fresh run starts it empty): it goes on
//! appending, so the file holds every row once across restarts. A file shorter than
//! its checkpoint says was changed outside the pipeline: the restore refuses it. With
//! `delivery: at-least-once` rows are written through, and a checkpoint keeps the
//! file's length: a restore cuts off what came after it (the restart writes it again),
//! so the file ends the same, though a reader may have seen rows that were cut.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use super::{ConnectorError, Options, TableRequest};
use crate::engine::{Sink, SinkFactory, SinkOutput, TaskInfo};

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

/// Resolves a path option against `base_dir` (the working directory).
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

    fn output(&self, tasks: usize) -> Option<SinkOutput> {
        Some(SinkOutput::JsonLines {
            files: (0..tasks.max(1))
                .map(|p| partition_file(&self.path, p, tasks))
                .collect(),
        })
    }

    fn writes(&self, tasks: usize, _exactly_once: bool) -> Option<String> {
        let path = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        let files: Vec<String> = (0..tasks)
            .map(|p| partition_file(&path, p, tasks).display().to_string())
            .collect();
        Some(format!(
            "{} (JSON lines, {}; {})",
            files.join(", "),
            if tasks == 1 {
                "one task".to_string()
            } else {
                format!("one file per task of {tasks}")
            },
            if self.append {
                "appended to (append = true)"
            } else {
                "emptied at a fresh start, appended to when resuming from a checkpoint"
            }
        ))
    }

    fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        check_declared_schema(&self.table, self.declared.as_ref(), schema)
    }

    fn create(&self, task: &TaskInfo, _schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let path = partition_file(&self.path, task.partition, task.parallelism);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io_error("file", parent, e))?;
        }
        // Appends always; a fresh run (not restored) without `append` empties the
        // file before its first row (`HeldFile::start`).
        let file = open_appending(&path)?;
        Ok(Box::new(HeldFile {
            lines: JsonLinesSink {
                connector: "file",
                target: path,
                out: BufWriter::with_capacity(FILE_BUFFER, file),
                buf: Vec::new(),
            },
            append: self.append,
            started: false,
            restored: false,
            held: None,
        }))
    }
}

/// The `file` sink of one partition: writes through when the pipeline is
/// at-least-once, holds rows until their checkpoint commits when it is exactly-once
/// (see the module docs).
struct HeldFile {
    lines: JsonLinesSink<BufWriter<File>>,
    /// `append = true`: never empty the file.
    append: bool,
    /// Whether the file was emptied (or kept) for this run yet.
    started: bool,
    /// Whether the sink's own file was restored from a checkpoint (then it is kept).
    restored: bool,
    /// Exactly-once: what is held back; `None` when at-least-once.
    held: Option<Held>,
}

/// The rows an exactly-once file sink holds back.
#[derive(Default)]
struct Held {
    /// The file's length with every committed checkpoint's rows in it.
    committed_len: u64,
    /// The rows of checkpoints taken but not yet committed, oldest first.
    intervals: Vec<(u64, Vec<u8>)>,
    /// The rows since the last checkpoint.
    open: Vec<u8>,
}

/// The checkpoint state of an exactly-once file sink: the file, its committed length,
/// and the bytes of every checkpoint not yet committed when it was taken.
struct FileState {
    path: PathBuf,
    base: u64,
    bytes: Vec<u8>,
}

/// Version byte of [`FileState`]'s encoding.
const FILE_STATE_V1: u8 = 1;

impl FileState {
    fn encode(&self) -> Vec<u8> {
        let path = self.path.to_string_lossy();
        let mut out = Vec::with_capacity(1 + 4 + path.len() + 8 + self.bytes.len());
        out.push(FILE_STATE_V1);
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(&self.bytes);
        out
    }

    fn decode(state: &[u8]) -> Option<FileState> {
        let (&version, rest) = state.split_first()?;
        if version != FILE_STATE_V1 || rest.len() < 4 {
            return None;
        }
        let (len, rest) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        if rest.len() < len + 8 {
            return None;
        }
        let (path, rest) = rest.split_at(len);
        let (base, bytes) = rest.split_at(8);
        Some(FileState {
            path: PathBuf::from(std::str::from_utf8(path).ok()?),
            base: u64::from_le_bytes(base.try_into().ok()?),
            bytes: bytes.to_vec(),
        })
    }
}

impl HeldFile {
    fn io(&self, e: std::io::Error) -> crate::Error {
        self.lines.io(e)
    }

    /// Before the first row or checkpoint of the run: a fresh run without `append`
    /// starts the file empty; a restored one keeps it.
    fn start(&mut self) -> Result<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        let file = self.lines.out.get_ref();
        if !self.append && !self.restored {
            file.set_len(0).map_err(|e| self.io(e))?;
        }
        let len = file.metadata().map_err(|e| self.io(e))?.len();
        if let Some(h) = self.held.as_mut() {
            h.committed_len = len;
        }
        Ok(())
    }

    /// Appends `bytes` to the file and makes them durable.
    fn append_durably(&mut self, bytes: &[u8]) -> Result<()> {
        let out = &mut self.lines.out;
        let r = out
            .write_all(bytes)
            .and_then(|()| Write::flush(out))
            .and_then(|()| out.get_ref().sync_data());
        r.map_err(|e| self.io(e))
    }

    /// Appends the held intervals up to checkpoint `id` (all of them with `None`).
    fn release(&mut self, through: Option<u64>) -> Result<()> {
        let Some(h) = self.held.as_mut() else {
            return Ok(());
        };
        let n = h
            .intervals
            .iter()
            .take_while(|(i, _)| through.is_none_or(|t| *i <= t))
            .count();
        if n == 0 {
            return Ok(());
        }
        let bytes: Vec<u8> = h.intervals.drain(..n).flat_map(|(_, b)| b).collect();
        h.committed_len += bytes.len() as u64;
        self.append_durably(&bytes)
    }
}

/// `path` opened for appending, created if missing (the file sink's one way in).
fn open_appending(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_error("file", path, e))
}

/// Truncates `path` to `base` and appends `bytes`: the file as checkpoint `state`
/// committed it, whether or not that commit had happened.
fn restore_file(state: &FileState) -> Result<()> {
    let io = |e| io_error("file", &state.path, e);
    let mut file = open_appending(&state.path)?;
    let len = file.metadata().map_err(io)?.len();
    if len < state.base {
        return Err(io(std::io::Error::other(format!(
            "the file has {len} bytes, fewer than the {} its checkpoint committed: it was \
             changed outside the pipeline (move it away to start afresh)",
            state.base
        ))));
    }
    file.set_len(state.base).map_err(io)?;
    file.write_all(&state.bytes).map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(())
}

#[async_trait]
impl Sink for HeldFile {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.start()?;
        match self.held.as_mut() {
            Some(h) => {
                if batch.num_rows() > 0 {
                    crate::formats::json::encode_json_lines(&batch, &mut h.open)?;
                }
                Ok(())
            }
            None => self.lines.write(batch).await,
        }
    }

    async fn flush(&mut self) -> Result<()> {
        self.start()?;
        match self.held {
            // Held rows wait for their checkpoint's commit.
            Some(_) => Ok(()),
            None => self.lines.flush().await,
        }
    }

    async fn finish(&mut self) -> Result<()> {
        self.start()?;
        // The end of the input: every row is final.
        if let Some(h) = self.held.as_mut() {
            let open = std::mem::take(&mut h.open);
            h.intervals.push((u64::MAX, open));
            self.release(None)?;
        }
        self.lines.finish().await
    }

    fn exactly_once(&mut self) -> bool {
        self.held = Some(Held::default());
        true
    }

    async fn close_uncommitted(&mut self, committed: u64) -> Result<()> {
        self.start()?;
        self.release(Some(committed))?;
        self.lines.finish().await
    }

    async fn pre_commit(&mut self, id: u64) -> Result<Option<Vec<u8>>> {
        self.start()?;
        let Some(h) = self.held.as_mut() else {
            // At-least-once: the rows are in the file already; a restore cuts it
            // back to what this checkpoint covers (the rest is replayed).
            self.lines.flush().await?;
            let file = self.lines.out.get_ref();
            let state = FileState {
                path: self.lines.target.clone(),
                base: file.metadata().map_err(|e| self.io(e))?.len(),
                bytes: Vec::new(),
            };
            return Ok(Some(state.encode()));
        };
        let open = std::mem::take(&mut h.open);
        h.intervals.push((id, open));
        let state = FileState {
            path: self.lines.target.clone(),
            base: h.committed_len,
            bytes: h
                .intervals
                .iter()
                .flat_map(|(_, b)| b.iter().copied())
                .collect(),
        };
        Ok(Some(state.encode()))
    }

    async fn commit(&mut self, id: u64) -> Result<()> {
        self.release(Some(id))
    }

    async fn restore(&mut self, states: &[(usize, Vec<u8>)]) -> Result<()> {
        for (_, raw) in states {
            let state = FileState::decode(raw)
                .ok_or_else(|| self.io(std::io::Error::other("unreadable checkpoint state")))?;
            restore_file(&state)?;
            if state.path == self.lines.target {
                self.restored = true;
            }
        }
        Ok(())
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

    fn ids(path: &Path) -> Vec<i64> {
        lines(path)
            .iter()
            .map(|v| v["id"].as_i64().unwrap())
            .collect()
    }

    /// Exactly-once: rows appear when their checkpoint commits; a restore from a
    /// checkpoint whose commit did or did not happen leaves each row once, and the
    /// restored run appends instead of emptying the file.
    #[tokio::test]
    async fn exactly_once_file_sink_holds_rows_until_commit_and_restores_each_once() {
        for committed_before_crash in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("o.jsonl");
            let f = file_factory(dir.path(), &[("path", "o.jsonl")]);
            let mut s = f.create(&task(0, 1), schema()).unwrap();
            assert!(s.exactly_once());
            s.write(batch(0, 3)).await.unwrap();
            let _ = s.pre_commit(1).await.unwrap();
            assert_eq!(ids(&path), Vec::<i64>::new(), "held until the commit");
            s.commit(1).await.unwrap();
            assert_eq!(ids(&path), vec![0, 1, 2]);
            s.write(batch(3, 2)).await.unwrap();
            let state = s.pre_commit(2).await.unwrap().expect("a state");
            if committed_before_crash {
                s.commit(2).await.unwrap();
            }
            // Rows after the checkpoint, then a crash.
            s.write(batch(5, 4)).await.unwrap();
            drop(s);

            let mut s = f.create(&task(0, 1), schema()).unwrap();
            assert!(s.exactly_once());
            s.restore(&[(0, state)]).await.unwrap();
            assert_eq!(
                ids(&path),
                vec![0, 1, 2, 3, 4],
                "commit before crash: {committed_before_crash}"
            );
            s.write(batch(5, 4)).await.unwrap();
            let _ = s.pre_commit(3).await.unwrap();
            s.commit(3).await.unwrap();
            s.finish().await.unwrap();
            assert_eq!(ids(&path), (0..9).collect::<Vec<_>>());
        }
    }

    /// Checkpoints not yet committed when the next is taken are all in its state; a
    /// stop keeps only the committed ones; the end of input releases everything.
    #[tokio::test]
    async fn exactly_once_file_sink_commits_in_order_and_stops_at_the_committed_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let f = file_factory(dir.path(), &[("path", "o.jsonl")]);
        let mut s = f.create(&task(0, 1), schema()).unwrap();
        assert!(s.exactly_once());
        s.write(batch(0, 1)).await.unwrap();
        let _ = s.pre_commit(1).await.unwrap();
        s.write(batch(1, 1)).await.unwrap();
        let both = s.pre_commit(2).await.unwrap().unwrap();
        s.write(batch(2, 1)).await.unwrap();
        s.close_uncommitted(1).await.unwrap();
        assert_eq!(ids(&path), vec![0]);
        // Restored from checkpoint 2 (1 had committed): 1 is not written twice.
        let mut s = f.create(&task(0, 1), schema()).unwrap();
        assert!(s.exactly_once());
        s.restore(&[(0, both)]).await.unwrap();
        assert_eq!(ids(&path), vec![0, 1]);
        s.write(batch(2, 2)).await.unwrap();
        s.finish().await.unwrap();
        assert_eq!(ids(&path), vec![0, 1, 2, 3]);
    }

    /// At-least-once: rows are written through, and a restore cuts the file back to
    /// the checkpoint (what came after is replayed).
    #[tokio::test]
    async fn at_least_once_file_sink_is_cut_back_to_its_checkpoint_on_restore() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let f = file_factory(dir.path(), &[("path", "o.jsonl")]);
        let mut s = f.create(&task(0, 1), schema()).unwrap();
        s.write(batch(0, 2)).await.unwrap();
        let state = s.pre_commit(1).await.unwrap().unwrap();
        s.write(batch(2, 2)).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(ids(&path), vec![0, 1, 2, 3]);
        drop(s);
        let mut s = f.create(&task(0, 1), schema()).unwrap();
        s.restore(&[(0, state)]).await.unwrap();
        assert_eq!(ids(&path), vec![0, 1]);
        s.write(batch(2, 2)).await.unwrap();
        s.finish().await.unwrap();
        assert_eq!(ids(&path), vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_checkpoint_is_refused_on_restore() {
        let dir = tempfile::tempdir().unwrap();
        let f = file_factory(dir.path(), &[("path", "o.jsonl")]);
        let mut s = f.create(&task(0, 1), schema()).unwrap();
        s.write(batch(0, 2)).await.unwrap();
        let state = s.pre_commit(1).await.unwrap().unwrap();
        s.finish().await.unwrap();
        std::fs::write(dir.path().join("o.jsonl"), b"").unwrap();
        let mut s = f.create(&task(0, 1), schema()).unwrap();
        let e = s.restore(&[(0, state)]).await.unwrap_err().to_string();
        assert!(e.contains("changed outside the pipeline"), "{e}");
    }

    #[test]
    fn file_state_round_trips_and_garbage_is_refused() {
        let st = FileState {
            path: PathBuf::from("/x/o.jsonl"),
            base: 42,
            bytes: b"{\"id\":1}\n".to_vec(),
        };
        let back = FileState::decode(&st.encode()).unwrap();
        assert_eq!(
            (back.path, back.base, back.bytes),
            (st.path, st.base, st.bytes)
        );
        for bad in [
            &b""[..],
            &[2u8, 0, 0, 0, 0][..],
            &[1u8, 9, 0, 0, 0, b'a'][..],
        ] {
            assert!(FileState::decode(bad).is_none());
        }
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
