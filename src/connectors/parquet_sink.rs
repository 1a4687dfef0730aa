//! The `parquet` sink: Parquet files in Hive-style partition directories, published
//! atomically.
//!
//! ```sql
//! CREATE TABLE sales (…) WITH (
//!     connector = 'parquet', path = 'data/sales', partition_by = 'date,hour',
//!     rollover_size = '128MB', rollover_interval = '5m', compression = 'snappy');
//! ```
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `path` | required | the output directory; relative paths are resolved from the working directory (where `tributary run` runs) |
//! | `partition_by` | none | comma-separated input columns whose values name the directories |
//! | `rollover_size` | `128MB` | a file is completed once its (estimated) size reaches this |
//! | `rollover_interval` | `5m` | a file is completed once it has been open this long |
//! | `compression` | `snappy` | `snappy` or `none` |
//! | `max_open_files` | `32` | open files per partition of the sink; the least recently written one is completed to make room |
//!
//! **Layout.** A row goes to `path/<col>=<value>/…/` for the `partition_by` columns, in
//! the order given: `data/sales/date=2026-01-01/hour=05/`. Values are rendered as
//! strings the way Arrow displays them (dates `2026-01-01`, integers `5`, timestamps
//! `2026-01-01T05:00:00`); a null or an empty string becomes
//! `__HIVE_DEFAULT_PARTITION__`, and the characters `"#%'*/:=?\[]^{}`, control
//! characters and DEL are escaped as `%XX` (Hive's convention). Partition columns
//! must be booleans, integers, decimals, strings, dates or timestamps; an unknown or
//! unsupported partition column is refused when the pipeline is planned.
//!
//! **Partition columns are dropped from the files' rows**: their values live in the
//! directory names only, as Hive, Spark, Trino, DuckDB and DataFusion expect when they
//! read a partitioned directory. (An unpartitioned sink writes every column.)
//!
//! **Files.** Partition `p` of the sink (its task index) keeps at most one open file per
//! partition directory, named `part-<p>-<sequence>.parquet`, where the sequence counts
//! the files that task opened, across directories. When a name is already taken (by a
//! previous run into the same directory) the sequence skips past it, so a rerun never
//! overwrites published files. While it is written, a file is named
//! `.part-<p>-<sequence>.parquet.inprogress` (hidden from Hive-style readers); once
//! complete it is synced to disk and renamed to its final name, an atomic step, so a
//! reader never sees a half-written file under a final name.
//!
//! **Completion.** A file is completed and published when its size (bytes written plus
//! the estimated encoded size of the buffered row group) reaches `rollover_size`,
//! checked after each write, so a file can exceed it by up to one input batch; when it
//! has been open for `rollover_interval`, checked on every write and every `flush()`;
//! when `max_open_files` would be exceeded; and at `finish()`, which completes
//! everything. Because a file's age is at least the time its partition has been idle,
//! the interval rule also closes the files of partitions that receive no more rows, so
//! idle partitions do not keep files open. `flush()` does not cut row groups (that
//! would make tiny ones): rows become visible when their file is published.
//!
//! Row groups are cut at `min(rollover_size, 64 MiB)` of estimated encoded size (or
//! 1,048,576 rows), which bounds memory to about `max_open_files` row groups per task.
//!
//! An empty input publishes no file. If the sink is dropped without `finish()` (the
//! pipeline failed), its in-progress files are deleted: their rows were never
//! published. Writes are synchronous on the sink's task.
//!
//! **Exactly once** (a pipeline with checkpoints, `delivery: exactly-once`): a file
//! completed by the rules above stays hidden (complete, synced, still under its
//! in-progress name) until the checkpoint after it commits; at a checkpoint's barrier
//! every open file is completed the same way (`pre_commit`) and the checkpoint records
//! the hidden files with their final names; when the checkpoint commits they are
//! renamed (`commit`). On recovery the restored checkpoint's files are renamed if they
//! were not yet, and every other in-progress file of the task (written after the
//! checkpoint) is deleted: its rows are replayed. A stopped pipeline publishes only
//! what committed checkpoints cover.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::json_lines::{check_declared_schema, describe_fields, resolve_path};
use super::{ConnectorError, Options, TableRequest};
use crate::engine::{Sink, SinkFactory, SinkOutput, TaskInfo};

type Result<T, E = crate::Error> = std::result::Result<T, E>;

const DEFAULT_ROLLOVER_SIZE: u64 = 128 * 1000 * 1000;
const DEFAULT_ROLLOVER_INTERVAL: Duration = Duration::from_secs(5 * 60);
const DEFAULT_MAX_OPEN_FILES: usize = 32;
const MAX_ROW_GROUP_BYTES: u64 = 64 * 1024 * 1024;

/// The directory value of a null or empty partition value.
pub const HIVE_DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Suffix of files being written.
pub const IN_PROGRESS_SUFFIX: &str = ".inprogress";

/// Where time comes from; tests drive it by hand.
type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Builds the `parquet` sink from its options.
pub fn sink(req: &TableRequest<'_>, opts: &mut Options) -> Result<Arc<dyn SinkFactory>> {
    Ok(Arc::new(build(req, opts, Arc::new(Instant::now))?))
}

fn build(req: &TableRequest<'_>, opts: &mut Options, clock: Clock) -> Result<ParquetSinkFactory> {
    let raw_path = opts.required("path")?;
    let raw_partition_by = opts.get("partition_by");
    let rollover_size = opts.parse_size("rollover_size", DEFAULT_ROLLOVER_SIZE)?;
    let rollover_interval = opts.parse_duration("rollover_interval", DEFAULT_ROLLOVER_INTERVAL)?;
    let raw_compression = opts.get("compression");
    let max_open_files = opts.parse::<usize>("max_open_files", DEFAULT_MAX_OPEN_FILES)?;

    if raw_path.trim().is_empty() {
        return Err(opts.invalid("path", &raw_path, "expected a directory"));
    }
    let dir = resolve_path(req.base_dir, &raw_path);
    if dir.is_file() {
        return Err(opts.invalid("path", &raw_path, "is a file; expected a directory"));
    }
    let mut partition_by: Vec<String> = Vec::new();
    if let Some(raw) = &raw_partition_by {
        for name in raw.split(',').map(str::trim) {
            if name.is_empty() {
                return Err(opts.invalid("partition_by", raw, "empty column name"));
            }
            if partition_by.iter().any(|p| p == name) {
                return Err(opts.invalid("partition_by", raw, format!("'{name}' is repeated")));
            }
            partition_by.push(name.to_string());
        }
    }
    if rollover_size == 0 {
        return Err(opts.invalid("rollover_size", "0", "must be greater than zero"));
    }
    if rollover_interval.is_zero() {
        let v = opts.get("rollover_interval").unwrap_or_default();
        return Err(opts.invalid("rollover_interval", &v, "must be greater than zero"));
    }
    if max_open_files == 0 {
        return Err(opts.invalid("max_open_files", "0", "must be at least 1"));
    }
    let compression = match raw_compression
        .as_deref()
        .map(|c| c.trim().to_ascii_lowercase())
    {
        None => Compression::SNAPPY,
        Some(c) if c == "snappy" => Compression::SNAPPY,
        Some(c) if c == "none" || c == "uncompressed" => Compression::UNCOMPRESSED,
        Some(_) => {
            let v = raw_compression.unwrap_or_default();
            return Err(opts.invalid("compression", &v, "expected 'snappy' or 'none'"));
        }
    };
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_bytes(Some(rollover_size.min(MAX_ROW_GROUP_BYTES) as usize))
        .build();
    let factory = ParquetSinkFactory {
        cfg: Arc::new(Config {
            table: req.table.to_string(),
            dir,
            partition_by,
            rollover_size,
            rollover_interval,
            max_open_files,
            compression_name: if compression == Compression::SNAPPY {
                "snappy"
            } else {
                "none"
            },
            props,
            declared: req.schema.clone(),
            clock,
        }),
    };
    // Declared columns let us refuse a bad `partition_by` before any query is planned.
    if let Some(declared) = &req.schema {
        factory.layout(declared)?;
    }
    Ok(factory)
}

struct Config {
    table: String,
    dir: PathBuf,
    partition_by: Vec<String>,
    rollover_size: u64,
    rollover_interval: Duration,
    max_open_files: usize,
    compression_name: &'static str,
    props: WriterProperties,
    declared: Option<SchemaRef>,
    clock: Clock,
}

struct ParquetSinkFactory {
    cfg: Arc<Config>,
}

/// Which input columns name directories and which are written.
struct Layout {
    partition_idx: Vec<usize>,
    /// `col=` prefixes, escaped, in `partition_by` order.
    partition_prefixes: Vec<String>,
    file_idx: Vec<usize>,
    file_schema: SchemaRef,
}

fn schema_error(table: &str, message: String) -> crate::Error {
    ConnectorError::Schema {
        table: table.to_string(),
        message,
    }
    .into()
}

fn supported_partition_type(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Boolean
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Decimal32(..)
            | Decimal64(..)
            | Decimal128(..)
            | Decimal256(..)
            | Utf8
            | LargeUtf8
            | Utf8View
            | Date32
            | Date64
            | Timestamp(..)
    )
}

impl ParquetSinkFactory {
    fn layout(&self, schema: &SchemaRef) -> Result<Layout> {
        let cfg = &self.cfg;
        let mut partition_idx = Vec::new();
        let mut partition_prefixes = Vec::new();
        for name in &cfg.partition_by {
            let Ok(i) = schema.index_of(name) else {
                return Err(schema_error(
                    &cfg.table,
                    format!(
                        "partition_by column '{name}' is not a column of the rows written \
                         ({})",
                        describe_fields(schema)
                    ),
                ));
            };
            let t = schema.field(i).data_type();
            if !supported_partition_type(t) {
                return Err(schema_error(
                    &cfg.table,
                    format!(
                        "partition_by column '{name}' has type {t}; partition columns must be \
                         booleans, integers, decimals, strings, dates or timestamps"
                    ),
                ));
            }
            partition_idx.push(i);
            let mut prefix = String::new();
            escape_into(name, &mut prefix);
            prefix.push('=');
            partition_prefixes.push(prefix);
        }
        let file_idx: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !partition_idx.contains(i))
            .collect();
        if file_idx.is_empty() {
            return Err(schema_error(
                &cfg.table,
                "every column is a partition_by column; the Parquet files would have no \
                 columns"
                    .to_string(),
            ));
        }
        let file_schema = Arc::new(
            schema
                .project(&file_idx)
                .map_err(|e| schema_error(&cfg.table, e.to_string()))?,
        );
        ArrowSchemaConverter::new()
            .convert(&file_schema)
            .map_err(|e| schema_error(&cfg.table, format!("cannot be written as Parquet: {e}")))?;
        Ok(Layout {
            partition_idx,
            partition_prefixes,
            file_idx,
            file_schema,
        })
    }
}

impl SinkFactory for ParquetSinkFactory {
    fn describe(&self) -> String {
        let c = &self.cfg;
        let parts = if c.partition_by.is_empty() {
            String::new()
        } else {
            format!("partition_by {}; ", c.partition_by.join(","))
        };
        format!(
            "parquet: {} ({parts}rollover {} bytes / {:?}; {})",
            c.dir.display(),
            c.rollover_size,
            c.rollover_interval,
            c.compression_name
        )
    }

    fn writes(&self, tasks: usize, exactly_once: bool) -> Option<String> {
        let c = &self.cfg;
        let mut pattern = std::path::absolute(&c.dir).unwrap_or_else(|_| c.dir.clone());
        for col in &c.partition_by {
            pattern.push(format!("{col}=<{col}>"));
        }
        let task = if tasks == 1 {
            "0".to_string()
        } else {
            format!("<task 0-{}>", tasks - 1)
        };
        Some(format!(
            "{} (Parquet; <n> counts the task's files; written as hidden \
             .part-{task}-<n>.parquet.inprogress, renamed when complete{})",
            pattern.join(format!("part-{task}-<n>.parquet")).display(),
            if exactly_once {
                " and its checkpoint has committed"
            } else {
                ""
            }
        ))
    }

    fn output(&self, _tasks: usize) -> Option<SinkOutput> {
        Some(SinkOutput::Parquet {
            dir: self.cfg.dir.clone(),
            partition_by: self.cfg.partition_by.clone(),
        })
    }

    fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        check_declared_schema(&self.cfg.table, self.cfg.declared.as_ref(), schema)?;
        self.layout(schema).map(|_| ())
    }

    fn create(&self, task: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let layout = self.layout(&schema)?;
        Ok(Box::new(ParquetSink {
            cfg: self.cfg.clone(),
            partition: task.partition,
            layout,
            open: HashMap::new(),
            next_seq: 0,
            hidden: None,
        }))
    }
}

/// Appends `value` to `out`, escaping what cannot appear in a directory name.
fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        let escape = c.is_ascii_control()
            || matches!(
                c,
                '"' | '#'
                    | '%'
                    | '\''
                    | '*'
                    | '/'
                    | ':'
                    | '='
                    | '?'
                    | '\\'
                    | '['
                    | ']'
                    | '^'
                    | '{'
                    | '}'
            );
        if escape {
            let _ = write!(out, "%{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
}

/// One file being written.
struct OpenFile {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    dst: PathBuf,
    opened: Instant,
    last_write: Instant,
}

/// One partition of the sink.
struct ParquetSink {
    cfg: Arc<Config>,
    partition: usize,
    layout: Layout,
    /// Open files by partition directory (relative, `""` when unpartitioned).
    open: HashMap<String, OpenFile>,
    next_seq: u64,
    /// Exactly once: completed files waiting for a checkpoint to commit, as (hidden
    /// name, final name), with the checkpoint that covers them (`None`: the next).
    hidden: Option<Vec<(Option<u64>, PathBuf, PathBuf)>>,
}

/// The files a checkpoint makes visible: (hidden name, final name).
#[derive(serde::Serialize, serde::Deserialize)]
struct PendingFiles(Vec<(PathBuf, PathBuf)>);

fn io_error(path: &Path, source: std::io::Error) -> crate::Error {
    ConnectorError::Io {
        connector: "parquet",
        path: path.display().to_string(),
        source,
    }
    .into()
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> crate::Error {
    ConnectorError::Other {
        connector: "parquet",
        message: format!("writing {}: {e}", path.display()),
    }
    .into()
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

impl ParquetSink {
    /// Splits `batch` by partition directory; the rows keep their order within a group.
    fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        let file_batch = batch
            .project(&self.layout.file_idx)
            .map_err(|e| crate::engine::EngineError::arrow("parquet sink", e))?;
        if self.layout.partition_idx.is_empty() {
            return Ok(vec![(String::new(), file_batch)]);
        }
        let columns: Vec<&dyn Array> = self
            .layout
            .partition_idx
            .iter()
            .map(|&i| batch.column(i).as_ref())
            .collect();
        let options = FormatOptions::new();
        let formatters = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(*c, &options))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| crate::engine::EngineError::arrow("parquet sink: partition value", e))?;

        let mut index: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
        let mut key = String::new();
        let mut value = String::new();
        for row in 0..batch.num_rows() {
            key.clear();
            for (j, prefix) in self.layout.partition_prefixes.iter().enumerate() {
                if j > 0 {
                    key.push('/');
                }
                key.push_str(prefix);
                value.clear();
                if columns[j].is_valid(row) {
                    let _ = write!(value, "{}", formatters[j].value(row));
                }
                if value.is_empty() {
                    key.push_str(HIVE_DEFAULT_PARTITION);
                } else {
                    escape_into(&value, &mut key);
                }
            }
            match index.get(key.as_str()) {
                Some(&g) => groups[g].1.push(row as u32),
                None => {
                    index.insert(key.clone(), groups.len());
                    groups.push((key.clone(), vec![row as u32]));
                }
            }
        }
        if groups.len() == 1 {
            let (key, _) = groups.pop().expect("one group");
            return Ok(vec![(key, file_batch)]);
        }
        groups
            .into_iter()
            .map(|(key, rows)| {
                let rows = UInt32Array::from(rows);
                take_record_batch(&file_batch, &rows)
                    .map(|b| (key, b))
                    .map_err(|e| crate::engine::EngineError::arrow("parquet sink", e))
            })
            .collect()
    }

    /// Opens the next file in partition directory `key`.
    fn open_file(&mut self, key: &str, now: Instant) -> Result<()> {
        if self.open.len() >= self.cfg.max_open_files {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, f)| f.last_write)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.publish(&k)?;
            }
        }
        let dir = if key.is_empty() {
            self.cfg.dir.clone()
        } else {
            self.cfg.dir.join(key)
        };
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let (tmp, dst, file) = loop {
            let name = format!("part-{}-{}.parquet", self.partition, self.next_seq);
            self.next_seq += 1;
            let dst = dir.join(&name);
            let tmp = dir.join(format!(".{name}{IN_PROGRESS_SUFFIX}"));
            if dst.exists() {
                continue;
            }
            match File::options().write(true).create_new(true).open(&tmp) {
                Ok(file) => break (tmp, dst, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(&tmp, e)),
            }
        };
        let writer = match ArrowWriter::try_new(
            file,
            self.layout.file_schema.clone(),
            Some(self.cfg.props.clone()),
        ) {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(parquet_error(&tmp, e));
            }
        };
        self.open.insert(
            key.to_string(),
            OpenFile {
                writer,
                tmp,
                dst,
                opened: now,
                last_write: now,
            },
        );
        Ok(())
    }

    /// Completes the file of directory `key`: footer, sync, rename to its final name
    /// (exactly once: kept hidden until a checkpoint covering it commits).
    fn publish(&mut self, key: &str) -> Result<()> {
        let Some(mut f) = self.open.remove(key) else {
            return Ok(());
        };
        f.writer.finish().map_err(|e| parquet_error(&f.tmp, e))?;
        f.writer
            .inner()
            .sync_all()
            .map_err(|e| io_error(&f.tmp, e))?;
        drop(f.writer);
        match self.hidden.as_mut() {
            Some(hidden) => {
                hidden.push((None, f.tmp, f.dst));
                Ok(())
            }
            None => reveal(&f.tmp, &f.dst),
        }
    }

    /// Completes every open file (hidden or published, see `publish`).
    fn publish_all(&mut self) -> Result<()> {
        let mut keys: Vec<String> = self.open.keys().cloned().collect();
        keys.sort();
        let mut first_error = None;
        for k in keys {
            if let Err(e) = self.publish(&k) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Makes visible the hidden files of checkpoints up to `id` (all when `None`).
    fn reveal_up_to(&mut self, id: Option<u64>) -> Result<()> {
        let Some(hidden) = self.hidden.as_mut() else {
            return Ok(());
        };
        let (due, keep): (Vec<_>, Vec<_>) =
            std::mem::take(hidden)
                .into_iter()
                .partition(|(c, _, _)| match (c, id) {
                    (_, None) => true,
                    (Some(c), Some(id)) => *c <= id,
                    (None, Some(_)) => false,
                });
        *hidden = keep;
        for (_, tmp, dst) in due {
            reveal(&tmp, &dst)?;
        }
        Ok(())
    }

    /// Deletes the in-progress files of (old) partition `partition` under the output
    /// directory: files of an attempt after the restored checkpoint, whose rows the
    /// restart replays.
    fn delete_leftovers(&self, partition: usize) -> Result<()> {
        let prefix = format!(".part-{partition}-");
        let mut stack = vec![self.cfg.dir.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&prefix) && name.ends_with(IN_PROGRESS_SUFFIX) {
                    std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
                }
            }
        }
        Ok(())
    }

    /// Publishes the files open for `rollover_interval` or longer.
    fn roll_expired(&mut self, now: Instant) -> Result<()> {
        let interval = self.cfg.rollover_interval;
        let mut due: Vec<String> = self
            .open
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.opened) >= interval)
            .map(|(k, _)| k.clone())
            .collect();
        due.sort();
        for k in due {
            self.publish(&k)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for ParquetSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let now = (self.cfg.clock)();
        self.roll_expired(now)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        for (key, rows) in self.split(&batch)? {
            if !self.open.contains_key(&key) {
                self.open_file(&key, now)?;
            }
            let f = self.open.get_mut(&key).expect("file just opened");
            f.writer
                .write(&rows)
                .map_err(|e| parquet_error(&f.tmp, e))?;
            f.last_write = now;
            let size = (f.writer.bytes_written() + f.writer.in_progress_size()) as u64;
            if size >= self.cfg.rollover_size {
                self.publish(&key)?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let now = (self.cfg.clock)();
        self.roll_expired(now)
    }

    async fn finish(&mut self) -> Result<()> {
        self.publish_all()?;
        self.reveal_up_to(None)
    }

    fn exactly_once(&mut self) -> bool {
        self.hidden = Some(Vec::new());
        true
    }

    async fn pre_commit(&mut self, id: u64) -> Result<Option<Vec<u8>>> {
        self.publish_all()?;
        let Some(hidden) = self.hidden.as_mut() else {
            // At-least-once: published as completed.
            return Ok(None);
        };
        for (c, _, _) in hidden.iter_mut() {
            c.get_or_insert(id);
        }
        let files = PendingFiles(
            hidden
                .iter()
                .map(|(_, tmp, dst)| (tmp.clone(), dst.clone()))
                .collect(),
        );
        serde_json::to_vec(&files).map(Some).map_err(|e| {
            crate::engine::EngineError::State(format!("parquet sink state: {e}")).into()
        })
    }

    async fn commit(&mut self, id: u64) -> Result<()> {
        self.reveal_up_to(Some(id))
    }

    async fn restore(&mut self, states: &[(usize, Vec<u8>)]) -> Result<()> {
        for (partition, state) in states {
            let PendingFiles(files) = serde_json::from_slice(state).map_err(|e| {
                crate::engine::EngineError::State(format!("restoring the parquet sink: {e}"))
            })?;
            for (tmp, dst) in &files {
                if tmp.exists() {
                    reveal(tmp, dst)?;
                } else if !dst.exists() {
                    return Err(crate::engine::EngineError::State(format!(
                        "restoring the parquet sink: {} of the checkpoint is gone",
                        dst.display()
                    ))
                    .into());
                }
            }
            self.delete_leftovers(*partition)?;
        }
        self.delete_leftovers(self.partition)
    }

    async fn close_uncommitted(&mut self, committed: u64) -> Result<()> {
        for (_, f) in self.open.drain() {
            drop(f.writer);
            let _ = std::fs::remove_file(&f.tmp);
        }
        self.reveal_up_to(Some(committed))?;
        for (_, tmp, _) in self.hidden.take().unwrap_or_default() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(())
    }
}

/// Renames a completed hidden file to its final name, durably.
fn reveal(tmp: &Path, dst: &Path) -> Result<()> {
    std::fs::rename(tmp, dst).map_err(|e| io_error(dst, e))?;
    if let Some(dir) = dst.parent() {
        sync_dir(dir).map_err(|e| io_error(dir, e))?;
    }
    Ok(())
}

impl Drop for ParquetSink {
    /// Without `finish()` the rows of open files were never published: remove them.
    fn drop(&mut self) {
        for (_, f) in self.open.drain() {
            drop(f.writer);
            let _ = std::fs::remove_file(&f.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8, true),
            Field::new("id", DataType::Int64, false),
            Field::new("amount", DataType::Float64, false),
        ]))
    }

    fn batch(regions: &[Option<&str>], first_id: i64) -> RecordBatch {
        let n = regions.len() as i64;
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(regions.to_vec())),
                Arc::new(Int64Array::from(
                    (first_id..first_id + n).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(vec![1.5; regions.len()])),
            ],
        )
        .unwrap()
    }

    fn task(partition: usize) -> TaskInfo {
        TaskInfo {
            pipeline: "test".into(),
            node: "sales".into(),
            partition,
            parallelism: 1,
            state: crate::state::memory_backend(),
        }
    }

    fn options(kv: &[(&str, &str)]) -> Options {
        let values: BTreeMap<String, String> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Options::new("sales", "parquet", values)
    }

    /// A clock the test moves by hand.
    #[derive(Clone)]
    struct ManualClock(Arc<Mutex<Instant>>);

    impl ManualClock {
        fn new() -> Self {
            ManualClock(Arc::new(Mutex::new(Instant::now())))
        }
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
        fn clock(&self) -> Clock {
            let c = self.0.clone();
            Arc::new(move || *c.lock().unwrap())
        }
    }

    fn factory(dir: &Path, kv: &[(&str, &str)], clock: &ManualClock) -> ParquetSinkFactory {
        let req = TableRequest {
            env: &crate::connectors::ConnectorEnv::default(),
            table: "sales",
            schema: None,
            base_dir: dir,
        };
        let mut opts = options(kv);
        let f = build(&req, &mut opts, clock.clock()).unwrap();
        opts.finish().unwrap();
        f
    }

    /// Every file under `dir`, relative, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    fn rows_in(path: &Path) -> usize {
        let file = File::open(path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        reader.map(|b| b.unwrap().num_rows()).sum()
    }

    #[test]
    fn plan_time_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let declared = TableRequest {
            env: &crate::connectors::ConnectorEnv::default(),
            table: "sales",
            schema: Some(schema()),
            base_dir: dir.path(),
        };
        let undeclared = TableRequest {
            env: &crate::connectors::ConnectorEnv::default(),
            schema: None,
            ..declared
        };
        let refuse = |req: &TableRequest<'_>, kv: &[(&str, &str)]| {
            super::super::sink(req, options(kv)).err().expect("refused")
        };
        // Unknown partition column: at sink() when columns are declared…
        let e = refuse(&declared, &[("path", "out"), ("partition_by", "regoin")]);
        assert_eq!(e.code(), "CON006");
        assert!(e.to_string().contains("'regoin'"), "{e}");
        // …and at check_schema otherwise.
        let f = super::super::sink(
            &undeclared,
            options(&[("path", "out"), ("partition_by", "regoin")]),
        )
        .unwrap();
        let e = f.check_schema(&schema()).unwrap_err();
        assert!(e.to_string().contains("region: Utf8, id: Int64"), "{e}");
        // A partition column of an unsupported type.
        let f = super::super::sink(
            &undeclared,
            options(&[("path", "out"), ("partition_by", "amount")]),
        )
        .unwrap();
        assert!(f.check_schema(&schema()).is_err());
        // Every column a partition column.
        let f = super::super::sink(
            &undeclared,
            options(&[("path", "out"), ("partition_by", "region,id")]),
        )
        .unwrap();
        let one: SchemaRef = Arc::new(schema().project(&[0, 1]).unwrap());
        assert!(f.check_schema(&one).is_err());

        for kv in [
            &[("path", "out"), ("compression", "gzip")][..],
            &[("path", "out"), ("rollover_size", "0")][..],
            &[("path", "out"), ("rollover_size", "12 parsecs")][..],
            &[("path", "out"), ("rollover_interval", "0s")][..],
            &[("path", "out"), ("partition_by", "region,,id")][..],
            &[("path", "out"), ("partition_by", "region,region")][..],
            &[("path", "out"), ("max_open_files", "0")][..],
        ] {
            assert_eq!(refuse(&undeclared, kv).code(), "CON004", "{kv:?}");
        }
        assert_eq!(refuse(&undeclared, &[]).code(), "CON003");
        assert_eq!(
            refuse(&undeclared, &[("path", "out"), ("row_group", "1")]).code(),
            "CON002"
        );
        super::super::sink(
            &undeclared,
            options(&[("path", "out"), ("compression", "none")]),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn files_are_named_per_task_and_directory_with_escaped_values() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let f = factory(
            dir.path(),
            &[("path", "out"), ("partition_by", "region")],
            &clock,
        );
        let mut s = f.create(&task(3), schema()).unwrap();
        s.write(batch(&[Some("eu"), Some("us/west"), None, Some("")], 0))
            .await
            .unwrap();
        s.write(batch(&[Some("eu")], 10)).await.unwrap();
        s.finish().await.unwrap();
        let files = listing(&dir.path().join("out"));
        assert_eq!(
            files,
            vec![
                "region=__HIVE_DEFAULT_PARTITION__/part-3-2.parquet",
                "region=eu/part-3-0.parquet",
                "region=us%2Fwest/part-3-1.parquet",
            ]
        );
        let out = dir.path().join("out");
        assert_eq!(rows_in(&out.join("region=eu/part-3-0.parquet")), 2);
        assert_eq!(
            rows_in(&out.join("region=__HIVE_DEFAULT_PARTITION__/part-3-2.parquet")),
            2
        );
    }

    #[tokio::test]
    async fn a_rerun_never_overwrites_published_files() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        for run in 0..2 {
            let f = factory(dir.path(), &[("path", "out")], &clock);
            let mut s = f.create(&task(0), schema()).unwrap();
            s.write(batch(&[Some("a"); 3], run * 100)).await.unwrap();
            s.finish().await.unwrap();
        }
        assert_eq!(
            listing(&dir.path().join("out")),
            vec!["part-0-0.parquet", "part-0-1.parquet"]
        );
    }

    #[tokio::test]
    async fn files_roll_over_by_age_on_flush_and_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let f = factory(
            dir.path(),
            &[
                ("path", "out"),
                ("partition_by", "region"),
                ("rollover_interval", "5m"),
            ],
            &clock,
        );
        let out = dir.path().join("out");
        let mut s = f.create(&task(0), schema()).unwrap();
        s.write(batch(&[Some("eu"), Some("us")], 0)).await.unwrap();
        clock.advance(Duration::from_secs(299));
        s.flush().await.unwrap();
        assert!(
            listing(&out).iter().all(|f| f.contains("/.part-")),
            "{:?}",
            listing(&out)
        );
        // Both partitions reach the interval; "us" stays idle and is closed by flush.
        clock.advance(Duration::from_secs(1));
        s.flush().await.unwrap();
        assert_eq!(
            listing(&out),
            vec!["region=eu/part-0-0.parquet", "region=us/part-0-1.parquet"]
        );
        // On write: the expired "eu" file is published before new rows go to a new one.
        s.write(batch(&[Some("eu")], 2)).await.unwrap();
        clock.advance(Duration::from_secs(300));
        s.write(batch(&[Some("eu")], 3)).await.unwrap();
        assert!(listing(&out).contains(&"region=eu/part-0-2.parquet".to_string()));
        assert!(listing(&out).contains(&"region=eu/.part-0-3.parquet.inprogress".to_string()));
        s.finish().await.unwrap();
        assert_eq!(rows_in(&out.join("region=eu/part-0-3.parquet")), 1);
        assert!(listing(&out).iter().all(|f| !f.contains("inprogress")));
    }

    #[tokio::test]
    async fn open_files_are_bounded_by_max_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let f = factory(
            dir.path(),
            &[
                ("path", "out"),
                ("partition_by", "region"),
                ("max_open_files", "2"),
            ],
            &clock,
        );
        let out = dir.path().join("out");
        let mut s = f.create(&task(0), schema()).unwrap();
        for (i, r) in ["a", "b", "c", "d"].iter().enumerate() {
            clock.advance(Duration::from_millis(10));
            s.write(batch(&[Some(r)], i as i64)).await.unwrap();
            let open = listing(&out)
                .iter()
                .filter(|f| f.ends_with(IN_PROGRESS_SUFFIX))
                .count();
            assert!(open <= 2, "{:?}", listing(&out));
        }
        // The least recently written ("a", then "b") were published to make room.
        let files = listing(&out);
        assert!(
            files.contains(&"region=a/part-0-0.parquet".to_string()),
            "{files:?}"
        );
        assert!(
            files.contains(&"region=b/part-0-1.parquet".to_string()),
            "{files:?}"
        );
        s.finish().await.unwrap();
        assert_eq!(listing(&out).len(), 4);
    }

    /// The published files (final names only) under `dir`.
    fn published(dir: &Path) -> Vec<String> {
        listing(dir)
            .into_iter()
            .filter(|f| !f.rsplit('/').next().unwrap().starts_with('.'))
            .collect()
    }

    #[tokio::test]
    async fn exactly_once_output_is_visible_only_for_committed_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let clock = ManualClock::new();
        let f = factory(dir.path(), &[("path", "out")], &clock);
        let mut s = f.create(&task(0), schema()).unwrap();
        assert!(s.exactly_once());
        s.write(batch(&[Some("a"), Some("b")], 0)).await.unwrap();
        let first = s.pre_commit(1).await.unwrap().expect("state");
        assert!(published(&out).is_empty(), "pre-committed, not yet visible");
        s.commit(1).await.unwrap();
        assert_eq!(published(&out).len(), 1);
        // Checkpoint 2 is pre-committed but never commits (the process dies), and
        // more rows are written after it.
        s.write(batch(&[Some("c")], 10)).await.unwrap();
        s.pre_commit(2).await.unwrap().expect("state");
        s.write(batch(&[Some("d")], 20)).await.unwrap();
        std::mem::forget(s); // kill -9: no drop, no finish
        assert_eq!(published(&out).len(), 1);

        // Restored from checkpoint 1: what came after it is discarded (replayed).
        let mut r = f.create(&task(0), schema()).unwrap();
        assert!(r.exactly_once());
        r.restore(&[(0, first.clone())]).await.unwrap();
        assert_eq!(published(&out).len(), 1);
        assert_eq!(listing(&out), published(&out), "no in-progress file left");

        // Restored from checkpoint 2 instead (it had committed): its file appears,
        // exactly once even if restored twice.
        let dir2 = tempfile::tempdir().unwrap();
        let out2 = dir2.path().join("out");
        let f2 = factory(dir2.path(), &[("path", "out")], &clock);
        let mut s = f2.create(&task(0), schema()).unwrap();
        s.exactly_once();
        s.write(batch(&[Some("a")], 0)).await.unwrap();
        let _ = s.pre_commit(1).await.unwrap();
        s.commit(1).await.unwrap();
        s.write(batch(&[Some("c")], 10)).await.unwrap();
        let second = s.pre_commit(2).await.unwrap().expect("state");
        s.write(batch(&[Some("d")], 20)).await.unwrap();
        std::mem::forget(s);
        for _ in 0..2 {
            let mut r = f2.create(&task(0), schema()).unwrap();
            r.exactly_once();
            r.restore(&[(0, second.clone())]).await.unwrap();
        }
        let files = published(&out2);
        assert_eq!(files.len(), 2, "{files:?}");
        let rows: usize = files.iter().map(|f| rows_in(&out2.join(f))).sum();
        assert_eq!(rows, 2, "rows a and c, not d");
    }

    #[tokio::test]
    async fn a_stopped_exactly_once_sink_publishes_only_committed_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let clock = ManualClock::new();
        let f = factory(dir.path(), &[("path", "out")], &clock);
        let mut s = f.create(&task(0), schema()).unwrap();
        s.exactly_once();
        s.write(batch(&[Some("a")], 0)).await.unwrap();
        s.pre_commit(1).await.unwrap();
        s.write(batch(&[Some("b")], 10)).await.unwrap();
        s.pre_commit(2).await.unwrap();
        s.write(batch(&[Some("c")], 20)).await.unwrap();
        s.close_uncommitted(1).await.unwrap();
        let files = published(&out);
        assert_eq!(files.len(), 1, "only checkpoint 1's file: {files:?}");
        assert_eq!(listing(&out), files, "the rest deleted");
    }

    #[tokio::test]
    async fn dropping_without_finish_leaves_no_in_progress_file() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let f = factory(dir.path(), &[("path", "out")], &clock);
        let mut s = f.create(&task(0), schema()).unwrap();
        s.write(batch(&[Some("a")], 0)).await.unwrap();
        assert_eq!(listing(&dir.path().join("out")).len(), 1);
        drop(s);
        assert!(listing(&dir.path().join("out")).is_empty());
    }

    #[test]
    fn escaping_follows_hive() {
        let mut s = String::new();
        escape_into("a/b=c:d%e é\n", &mut s);
        assert_eq!(s, "a%2Fb%3Dc%3Ad%25e é%0A");
    }
}
