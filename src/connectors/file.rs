//! The `file` source: rows from JSON lines, Avro or Parquet files.
//!
//! `WITH (connector = 'file', path = 'data/orders', format = 'json', follow = 'false',
//! poll_interval = '1s')`
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `path` | required | a file, or a directory; relative paths are resolved from the working directory (where `tributary run` runs) |
//! | `format` | from the file's extension | `json` (JSON lines), `avro` (object container files) or `parquet`; required for a directory |
//! | `follow` | `false` | `true`: keep polling the directory for new files until the pipeline stops |
//! | `poll_interval` | `1s` | how often a followed directory is listed |
//!
//! A directory means every file directly in it (not in subdirectories) with the
//! format's extension (`.json`, `.jsonl`, `.ndjson`; `.avro`; `.parquet`, any case), in
//! name order. Names starting with `.` or `_` are skipped, so that a writer can write
//! `_orders.jsonl` (or `.orders.jsonl`) and rename it when complete: a followed
//! directory should only ever show complete files. A file is read once; a followed file
//! that grows after it was read is not read again.
//!
//! Schema: JSON needs declared columns and produces exactly them. Avro and Parquet use
//! the declared columns when given (each file's columns are matched by name and cast,
//! see [`crate::formats::conform`]; checked against the first file at plan time), else
//! the first file's schema, read at plan time (other files are conformed to it).
//!
//! Parallelism: the files listed at plan time are spread over the partitions by index
//! (file `i` goes to partition `i % parallelism`); files found later by `follow` by a
//! hash of their name, so that every partition agrees without talking to the others.
//!
//! Reading is streaming and off the async runtime. A JSON lines file is cut, in order,
//! into chunks of the runtime's batch size in lines ([`chunks`]) by a thread of its own,
//! a few chunks ahead; up to two chunks per core are decoded at once on the blocking
//! pool (`spawn_blocking`), and the batches are
//! emitted in the file's order, so one file keeps every core busy. A Parquet file's row
//! groups are decoded the same way, several at once, each into a bounded channel of
//! batches, emitted row group after row group; an Avro file likewise, cut into runs of
//! whole blocks. A JSON line that is not JSON or
//! does not fit the columns is reported as a bad record (naming file and line) and
//! skipped; a line longer than [`MAX_LINE`] is refused as a bad record without being
//! loaded. An Avro or
//! Parquet file that cannot be read fails the source, naming the file (and, for Avro,
//! the block's offset). The `tributary_source_lag_seconds` gauge is the age (from its
//! modification time) of the file being read when following a directory, 0 when idle.
//!
//! Checkpoints: a task's position is the files it has read whole and the rows it has
//! emitted from the one it is reading (rows of chunks still being decoded are not
//! counted: a position is never past a row not yet emitted); resuming skips the former and the rows already
//! emitted of the latter (its bad lines are reported again). Positions are by file
//! name, so they move between tasks when the parallelism changes.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use super::{ConnectorError, Options, TableRequest};
use crate::dlq::BadRecords;
use crate::engine::{EngineError, Source, SourceContext, SourceFactory, TaskInfo};
use crate::formats::avro::AvroReader;
use crate::formats::json::JsonDecoder;
use crate::formats::parquet::ParquetReader;
use crate::formats::{check_conform, conform};

mod chunks;

use chunks::{LineChunks, decode_piece, read_ahead};

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// Longest JSON line accepted; longer lines are bad records, skipped without being
/// held in memory.
pub const MAX_LINE: usize = 16 << 20;

/// The formats the `file` source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Avro,
    Parquet,
}

impl Format {
    fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" | "jsonl" | "ndjson" => Some(Format::Json),
            "avro" => Some(Format::Avro),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    fn extensions(self) -> &'static [&'static str] {
        match self {
            Format::Json => &["json", "jsonl", "ndjson"],
            Format::Avro => &["avro"],
            Format::Parquet => &["parquet"],
        }
    }

    fn of_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        [Format::Json, Format::Avro, Format::Parquet]
            .into_iter()
            .find(|f| f.extensions().contains(&ext.as_str()))
    }

    fn matches(self, path: &Path) -> bool {
        Format::of_path(path) == Some(self)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "json",
            Format::Avro => "avro",
            Format::Parquet => "parquet",
        })
    }
}

fn resolve(base_dir: &Path, raw: &str) -> PathBuf {
    let p = Path::new(raw.trim());
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

fn io_error(path: &Path, source: std::io::Error) -> crate::Error {
    ConnectorError::Io {
        connector: "file",
        path: path.display().to_string(),
        source,
    }
    .into()
}

/// The files of `format` directly in `dir`, in name order (hidden and `_` files left
/// out).
pub fn list_files(dir: &Path, format: Format) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let path = entry.path();
        if !format.matches(&path) {
            continue;
        }
        // Follows symbolic links; a file that vanished meanwhile is skipped.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => files.push(path),
            _ => {}
        }
    }
    files.sort();
    Ok(files)
}

/// Builds the `file` source from its options (`path`, `format`, `follow`,
/// `poll_interval`).
pub fn source(req: &TableRequest<'_>, opts: &mut Options) -> crate::Result<Arc<dyn SourceFactory>> {
    let raw = opts.required("path")?;
    let format_opt = opts.get("format");
    let follow = opts.parse_bool("follow", false)?;
    let poll_interval = opts.parse_duration("poll_interval", Duration::from_secs(1))?;
    if raw.trim().is_empty() {
        return Err(opts.invalid("path", &raw, "expected a file or directory path"));
    }
    if poll_interval.is_zero() {
        return Err(opts.invalid(
            "poll_interval",
            &format!("{poll_interval:?}"),
            "must be greater than zero",
        ));
    }
    let root = resolve(req.base_dir, &raw);
    let meta = std::fs::metadata(&root).map_err(|e| io_error(&root, e))?;
    let is_dir = meta.is_dir();
    let format = match (&format_opt, is_dir) {
        (Some(v), _) => Format::parse(v)
            .ok_or_else(|| opts.invalid("format", v, "expected json, avro or parquet"))?,
        (None, false) => Format::of_path(&root).ok_or_else(|| {
            opts.invalid(
                "path",
                &raw,
                "cannot tell the format from the extension; set format = 'json', 'avro' or 'parquet'",
            )
        })?,
        (None, true) => {
            return Err(ConnectorError::MissingOption {
                table: req.table.into(),
                connector: "file".into(),
                option: "format (required when path is a directory)".into(),
            }
            .into());
        }
    };
    if follow && !is_dir {
        return Err(opts.invalid("follow", "true", "following needs path to be a directory"));
    }
    let files = if is_dir {
        list_files(&root, format)?
    } else {
        vec![root.clone()]
    };
    let schema_error = |message: String| -> crate::Error {
        ConnectorError::Schema {
            table: req.table.into(),
            message,
        }
        .into()
    };
    let (schema, declared) = match (format, &req.schema) {
        (Format::Json, None) => {
            return Err(schema_error(
                "the file connector reads JSON into declared columns; declare them, e.g. \
                 CREATE TABLE t (id BIGINT, ts TIMESTAMP) WITH (…)"
                    .into(),
            ));
        }
        (Format::Json, Some(s)) => {
            // Refuses, at plan time, column types JSON cannot be decoded into.
            JsonDecoder::new(s.clone()).map_err(|e| schema_error(e.to_string()))?;
            (s.clone(), true)
        }
        (_, declared) => {
            let first = match files.first() {
                Some(f) => Some(read_schema(f, format)?),
                None => None,
            };
            match (declared, first) {
                (Some(d), Some(first)) => {
                    check_conform(&first, d)
                        .map_err(|e| schema_error(format!("{}: {e}", files[0].display())))?;
                    (d.clone(), true)
                }
                (Some(d), None) => (d.clone(), true),
                (None, Some(first)) => (first, false),
                (None, None) => {
                    return Err(schema_error(format!(
                        "no .{format} file in {} to read the columns from; declare them",
                        root.display()
                    )));
                }
            }
        }
    };
    Ok(Arc::new(FileSourceFactory {
        spec: Arc::new(Spec {
            root,
            is_dir,
            format,
            schema,
            declared,
            follow,
            poll_interval,
            initial: files,
        }),
    }))
}

fn read_schema(path: &Path, format: Format) -> Result<SchemaRef> {
    match format {
        Format::Avro => crate::formats::avro::read_schema(path),
        Format::Parquet => crate::formats::parquet::read_schema(path),
        Format::Json => unreachable!("JSON has no schema of its own"),
    }
}

/// Everything the factory knows, shared with its sources.
#[derive(Debug)]
struct Spec {
    root: PathBuf,
    is_dir: bool,
    format: Format,
    schema: SchemaRef,
    /// Columns were declared (else `schema` is the first file's).
    declared: bool,
    follow: bool,
    poll_interval: Duration,
    /// The files listed at plan time.
    initial: Vec<PathBuf>,
}

struct FileSourceFactory {
    spec: Arc<Spec>,
}

impl SourceFactory for FileSourceFactory {
    fn schema(&self) -> SchemaRef {
        self.spec.schema.clone()
    }

    fn bounded(&self) -> bool {
        !self.spec.follow
    }

    fn describe(&self) -> String {
        let s = &self.spec;
        let what = if s.is_dir {
            format!("{} file(s) in {}", s.initial.len(), s.root.display())
        } else {
            s.root.display().to_string()
        };
        let follow = if s.follow {
            format!(", following every {:?}", s.poll_interval)
        } else {
            String::new()
        };
        let columns = if s.declared {
            "declared columns"
        } else {
            "columns of the first file"
        };
        format!("file: {} {what} ({columns}{follow})", s.format)
    }

    fn create(&self, task: &TaskInfo) -> crate::Result<Box<dyn Source>> {
        Ok(Box::new(FileSource {
            spec: self.spec.clone(),
            partition: task.partition,
            parallelism: task.parallelism.max(1),
            position: FilePosition::default(),
            resume: Default::default(),
        }))
    }

    /// Positions are file names and row counts: any task count can take them over.
    fn checkpointable(&self) -> bool {
        true
    }

    fn rescalable(&self) -> bool {
        true
    }
}

/// How many chunks of a JSON lines file (or parts of an Avro or Parquet file) one source
/// task has out for decoding at once: twice the cores, so that the cores still decode
/// while the source waits for the oldest one and emits its batches (with one per core,
/// they idle in between).
fn decoding_workers() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// A stable hash of a file name, the same on every instance: which partition reads a
/// file found while following.
fn name_hash(path: &Path) -> u64 {
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or_default();
    // FNV-1a.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

struct FileSource {
    spec: Arc<Spec>,
    partition: usize,
    parallelism: usize,
    /// Where this task is (checkpointed): files read to the end, and rows emitted
    /// from the file being read.
    position: FilePosition,
    /// Resuming: rows already emitted from partly read files (any old task's).
    resume: std::collections::HashMap<PathBuf, u64>,
}

/// A file source task's position: which files it has read whole, how far it is in the
/// one it is reading. Positions of several tasks merge (rescaling), since files are
/// named.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct FilePosition {
    done: Vec<PathBuf>,
    current: Option<(PathBuf, u64)>,
}

/// Runs `f` on the blocking pool with the task's bad-record handle, which is put back
/// afterwards.
async fn blocking<T, F>(ctx: &mut SourceContext, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut BadRecords) -> T + Send + 'static,
{
    let placeholder = BadRecords::detached("file");
    let mut bad = std::mem::replace(&mut ctx.bad_records, placeholder);
    let joined = tokio::task::spawn_blocking(move || {
        let r = f(&mut bad);
        (r, bad)
    })
    .await;
    match joined {
        Ok((r, bad)) => {
            ctx.bad_records = bad;
            Ok(r)
        }
        Err(e) => Err(EngineError::Panicked {
            task: ctx.task.to_string(),
            message: format!("reading files: {e}"),
        }
        .into()),
    }
}

impl FileSource {
    async fn read_file(
        &mut self,
        path: &Path,
        ctx: &mut SourceContext,
        lag: &metrics::Gauge,
    ) -> Result<()> {
        if self.spec.follow {
            let age = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            lag.set(age.as_secs_f64());
        }
        if self.spec.format == Format::Json {
            return self.read_json(path, ctx).await;
        }
        self.read_parts(path, ctx).await
    }

    /// Reads an Avro or Parquet file by its parts (a Parquet file's row groups, an Avro
    /// file's runs of blocks): each part is decoded on the blocking pool into a bounded
    /// channel, up to [`decoding_workers`] parts at once, and the batches are emitted
    /// part after part, in the file's order. The position (rows emitted) counts only
    /// rows that were emitted, whatever is still being decoded.
    async fn read_parts(&mut self, path: &Path, ctx: &mut SourceContext) -> Result<()> {
        let spec = self.spec.clone();
        let owned = path.to_path_buf();
        let batch_size = ctx.batch.size.max(1);
        let parts = blocking(ctx, move |_| FileReader::parts(&owned, &spec)).await??;
        let mut parts = parts.into_iter();
        // Resuming inside this file: skip the rows emitted before the checkpoint
        // (the file is read the same way again).
        let mut skip = self.resume.remove(path).unwrap_or(0);
        self.position.current = Some((path.to_path_buf(), skip));
        let workers = decoding_workers();
        let mut lanes = std::collections::VecDeque::new();
        loop {
            if ctx.stop.is_raised() {
                return Ok(());
            }
            self.checkpoint_if_due(ctx).await?;
            while lanes.len() < workers {
                let Some(part) = parts.next() else { break };
                lanes.push_back(FileReader::decode(
                    path.to_path_buf(),
                    self.spec.clone(),
                    batch_size,
                    part,
                ));
            }
            let Some(lane) = lanes.front_mut() else {
                self.position.current = None;
                self.position.done.push(path.to_path_buf());
                return Ok(());
            };
            let batch = match lane.recv().await {
                Some(Ok(Some(batch))) => batch,
                Some(Ok(None)) => {
                    lanes.pop_front();
                    continue;
                }
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(EngineError::Panicked {
                        task: ctx.task.to_string(),
                        message: format!("decoding {}: the worker ended early", path.display()),
                    }
                    .into());
                }
            };
            self.emit_after(&mut skip, batch, ctx).await?;
        }
    }

    /// Emits `batch` less the first `skip` rows (those emitted before the checkpoint
    /// being resumed, counted down), and counts what it emitted in the position.
    async fn emit_after(
        &mut self,
        skip: &mut u64,
        mut batch: RecordBatch,
        ctx: &mut SourceContext,
    ) -> Result<()> {
        if *skip > 0 {
            let n = (*skip as usize).min(batch.num_rows());
            batch = batch.slice(n, batch.num_rows() - n);
            *skip -= n as u64;
            if batch.num_rows() == 0 {
                return Ok(());
            }
        }
        let rows = batch.num_rows() as u64;
        ctx.out.emit(batch).await?;
        if let Some((_, emitted)) = self.position.current.as_mut() {
            *emitted += rows;
        }
        Ok(())
    }

    /// Reads a JSON lines file: chunks of `batch.size` lines are cut off the file in
    /// order by a reader thread ([`read_ahead`], as many ahead as there are decoders)
    /// and decoded on the blocking pool, up to [`decoding_workers`] at once; their
    /// batches are emitted in the file's order, so the position (rows emitted) counts
    /// only rows that were emitted, whatever is still being decoded.
    async fn read_json(&mut self, path: &Path, ctx: &mut SourceContext) -> Result<()> {
        let batch_size = ctx.batch.size.max(1);
        let owned = path.to_path_buf();
        let workers = decoding_workers();
        let mut pieces = blocking(ctx, move |_| {
            LineChunks::open(&owned, batch_size, MAX_LINE).and_then(|c| read_ahead(c, workers))
        })
        .await?
        .map_err(|e| io_error(path, e))?;
        let path_buf = Arc::new(path.to_path_buf());
        let mut skip = self.resume.remove(path).unwrap_or(0);
        self.position.current = Some((path.to_path_buf(), skip));
        let mut decoders: Vec<JsonDecoder> = Vec::new();
        let mut pending = std::collections::VecDeque::new();
        let mut end = false;
        loop {
            if ctx.stop.is_raised() {
                return Ok(());
            }
            self.checkpoint_if_due(ctx).await?;
            while !end && pending.len() < workers {
                // Waits for a piece only when nothing is being decoded.
                let next = if pending.is_empty() {
                    pieces.recv().await
                } else {
                    match pieces.try_recv() {
                        Ok(next) => Some(next),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
                    }
                };
                let piece = match next {
                    Some(Ok(Some(piece))) => piece,
                    Some(Ok(None)) => {
                        end = true;
                        break;
                    }
                    Some(Err(e)) => return Err(io_error(path, e)),
                    None => {
                        return Err(EngineError::Panicked {
                            task: ctx.task.to_string(),
                            message: format!("reading {}: the reader ended early", path.display()),
                        }
                        .into());
                    }
                };
                let mut decoder = match decoders.pop() {
                    Some(d) => d,
                    None => JsonDecoder::with_capacity(self.spec.schema.clone(), batch_size)?,
                };
                let mut bad = ctx.bad_records.clone();
                let at = path_buf.clone();
                pending.push_back(tokio::task::spawn_blocking(move || {
                    let r = decode_piece(piece, &at, &mut decoder, batch_size, MAX_LINE, &mut bad);
                    (r, decoder)
                }));
            }
            let Some(next) = pending.pop_front() else {
                self.position.current = None;
                self.position.done.push(path.to_path_buf());
                return Ok(());
            };
            let (batches, decoder) = next.await.map_err(|e| EngineError::Panicked {
                task: ctx.task.to_string(),
                message: format!("decoding {}: {e}", path.display()),
            })?;
            decoders.push(decoder);
            for batch in batches? {
                self.emit_after(&mut skip, batch, ctx).await?;
                if ctx.stop.is_raised() {
                    return Ok(());
                }
                self.checkpoint_if_due(ctx).await?;
            }
        }
    }

    async fn checkpoint_if_due(&mut self, ctx: &mut SourceContext) -> Result<()> {
        if let Some(id) = ctx.checkpoint_due() {
            let position = serde_json::to_vec(&self.position)
                .map_err(|e| EngineError::State(format!("file source position: {e}")))?;
            ctx.checkpoint(id, position).await?;
        }
        Ok(())
    }

    /// Reads the positions of a checkpoint: files read whole are skipped, partly read
    /// ones resume after their emitted rows.
    async fn restore(&mut self, ctx: &mut SourceContext) -> Result<HashSet<PathBuf>> {
        let mut done = HashSet::new();
        for blob in ctx.restored_positions().await? {
            let p: FilePosition = serde_json::from_slice(&blob)
                .map_err(|e| EngineError::State(format!("restoring a file source: {e}")))?;
            done.extend(p.done);
            if let Some((path, rows)) = p.current {
                self.resume.insert(path, rows);
            }
        }
        Ok(done)
    }
}

#[async_trait]
impl Source for FileSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> crate::Result<()> {
        self.read(ctx).await?;
        ctx.final_position = Some(
            serde_json::to_vec(&self.position)
                .map_err(|e| EngineError::State(format!("file source position: {e}")))?,
        );
        Ok(())
    }
}

impl FileSource {
    async fn read(&mut self, ctx: &mut SourceContext) -> crate::Result<()> {
        let lag = crate::metrics::source_lag(&ctx.task.pipeline, &ctx.task.node);
        let restored_done = self.restore(ctx).await?;
        let mut seen: HashSet<PathBuf> = self.spec.initial.iter().cloned().collect();
        let mine: Vec<PathBuf> = self
            .spec
            .initial
            .iter()
            .enumerate()
            .filter(|(i, _)| i % self.parallelism == self.partition)
            .map(|(_, p)| p.clone())
            .collect();
        for path in &mine {
            if ctx.stop.is_raised() {
                return Ok(());
            }
            if restored_done.contains(path) {
                self.position.done.push(path.clone());
                continue;
            }
            self.read_file(path, ctx, &lag).await?;
        }
        if !self.spec.follow {
            return Ok(());
        }
        loop {
            lag.set(0.0);
            self.checkpoint_if_due(ctx).await?;
            let stop = &mut ctx.stop;
            let checkpoints = &mut ctx.checkpoints;
            tokio::select! {
                _ = tokio::time::sleep(self.spec.poll_interval) => {}
                _ = stop.raised() => return Ok(()),
                _ = async {
                    match checkpoints.as_mut() {
                        Some(c) => { c.triggered().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => continue,
            }
            let root = self.spec.root.clone();
            let format = self.spec.format;
            let listed = blocking(ctx, move |_| list_files(&root, format)).await?;
            let files = match listed {
                Ok(f) => f,
                Err(e) => {
                    // The directory may come back (e.g. recreated); keep polling.
                    tracing::warn!(task = %ctx.task, error = %e, "listing a followed directory failed");
                    continue;
                }
            };
            for path in files {
                if !seen.insert(path.clone()) {
                    continue;
                }
                if name_hash(&path) % self.parallelism as u64 != self.partition as u64 {
                    continue;
                }
                if ctx.stop.is_raised() {
                    return Ok(());
                }
                if restored_done.contains(&path) {
                    self.position.done.push(path);
                    continue;
                }
                self.read_file(&path, ctx, &lag).await?;
            }
        }
    }
}

/// One open file of any format, yielding batches of the source's schema.
enum FileReader {
    Avro {
        reader: Box<AvroReader>,
        schema: SchemaRef,
    },
    Parquet {
        reader: Box<ParquetReader>,
        schema: SchemaRef,
    },
}

/// What one part of a file sends: a batch, `None` once the part is read whole (so
/// that a worker that vanished is never taken for a part read to its end), or the
/// error that ended it.
type PartBatch = Result<Option<RecordBatch>>;

/// Batches one decoding worker holds ready ahead of the source.
const PART_BATCHES: usize = 2;

/// A part of an Avro or Parquet file that decodes on its own ([`FileReader::parts`]).
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Whole,
    /// One row group of a Parquet file.
    RowGroup(usize),
    /// A run of whole blocks of an Avro file: the bytes they span.
    Blocks(std::ops::Range<u64>),
}

/// The size an Avro file's parts are cut to: big enough that a part is several batches
/// (so decoding it outweighs opening the file again), small enough that a file of tens
/// of megabytes already spreads over the cores. Unit tests cut finer, so that a small
/// file is several parts.
#[cfg(not(test))]
const AVRO_PART_BYTES: u64 = 8 << 20;
#[cfg(test)]
const AVRO_PART_BYTES: u64 = 16 << 10;

impl FileReader {
    /// The parts of the file at `path` that decode independently, in the file's order:
    /// a Parquet file's row groups, an Avro file's runs of blocks of about
    /// [`AVRO_PART_BYTES`], or the whole file when it has only one.
    fn parts(path: &Path, spec: &Spec) -> Result<Vec<Part>> {
        let parts: Vec<Part> = match spec.format {
            Format::Parquet => (0..crate::formats::parquet::row_groups(path)?)
                .map(Part::RowGroup)
                .collect(),
            Format::Avro => crate::formats::avro::block_parts(path, AVRO_PART_BYTES)?
                .into_iter()
                .map(Part::Blocks)
                .collect(),
            Format::Json => vec![],
        };
        Ok(if parts.len() > 1 {
            parts
        } else {
            vec![Part::Whole]
        })
    }

    /// Opens `part` of the file at `path` (see [`FileReader::parts`]).
    fn open(path: &Path, spec: &Spec, batch_size: usize, part: Part) -> Result<Self> {
        let schema = spec.schema.clone();
        Ok(match (spec.format, part) {
            (Format::Json, _) => unreachable!("JSON lines are read in chunks (read_json)"),
            (Format::Avro, Part::Blocks(range)) => FileReader::Avro {
                reader: Box::new(AvroReader::open_range(path, batch_size, Some(range))?),
                schema,
            },
            (Format::Avro, _) => FileReader::Avro {
                reader: Box::new(AvroReader::open(path, batch_size)?),
                schema,
            },
            (Format::Parquet, Part::RowGroup(g)) => FileReader::Parquet {
                reader: Box::new(ParquetReader::open_row_groups(path, batch_size, Some(g))?),
                schema,
            },
            (Format::Parquet, _) => FileReader::Parquet {
                reader: Box::new(ParquetReader::open_row_groups(path, batch_size, None)?),
                schema,
            },
        })
    }

    /// Decodes `part` of the file at `path` on the blocking pool: its batches in order,
    /// then `None`, or the error that stops it (a panic included). The worker stops
    /// when the receiver is dropped.
    fn decode(
        path: PathBuf,
        spec: Arc<Spec>,
        batch_size: usize,
        part: Part,
    ) -> tokio::sync::mpsc::Receiver<PartBatch> {
        let (tx, rx) = tokio::sync::mpsc::channel(PART_BATCHES);
        tokio::task::spawn_blocking(move || {
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut reader = FileReader::open(&path, &spec, batch_size, part)?;
                while let Some(batch) = reader.next_batch()? {
                    if tx.blocking_send(Ok(Some(batch))).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            }));
            let last = match read {
                Ok(Ok(())) => Ok(None),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ConnectorError::Other {
                    connector: "file",
                    message: format!("{}: the decoder panicked", path.display()),
                }
                .into()),
            };
            let _ = tx.blocking_send(last);
        });
        rx
    }

    /// The next batch, `None` at the end of the file.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        match self {
            FileReader::Avro { reader, schema } => match reader.next_batch()? {
                Some(b) => conform(&b, schema)
                    .map(Some)
                    .map_err(|e| in_file(reader.path(), e)),
                None => Ok(None),
            },
            FileReader::Parquet { reader, schema } => match reader.next_batch()? {
                Some(b) => conform(&b, schema)
                    .map(Some)
                    .map_err(|e| in_file(reader.path(), e)),
                None => Ok(None),
            },
        }
    }
}

fn in_file(path: &Path, e: crate::Error) -> crate::Error {
    ConnectorError::Other {
        connector: "file",
        message: format!("{}: {e}", path.display()),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs::File;
    use std::io::Write;
    use std::sync::Mutex;

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema, TimeUnit};
    use tokio::sync::watch;

    use super::*;
    use crate::engine::{
        BatchSettings, Graph, Partitioning, Runtime, RuntimeSettings, Sink, SinkFactory,
    };

    /// A sink keeping every batch, and publishing the number of rows received.
    struct Captured {
        batches: Mutex<Vec<RecordBatch>>,
        rows: watch::Sender<usize>,
    }

    struct CaptureFactory(Arc<Captured>);
    struct CaptureSink(Arc<Captured>);

    impl SinkFactory for CaptureFactory {
        fn describe(&self) -> String {
            "capture".into()
        }
        fn create(&self, _task: &TaskInfo, _schema: SchemaRef) -> crate::Result<Box<dyn Sink>> {
            Ok(Box::new(CaptureSink(self.0.clone())))
        }
    }

    #[async_trait]
    impl Sink for CaptureSink {
        async fn write(&mut self, batch: RecordBatch) -> crate::Result<()> {
            let n = batch.num_rows();
            self.0.batches.lock().unwrap().push(batch);
            self.0.rows.send_modify(|r| *r += n);
            Ok(())
        }
        async fn finish(&mut self) -> crate::Result<()> {
            Ok(())
        }
    }

    fn plan(
        base: &Path,
        options: &[(&str, &str)],
        schema: Option<SchemaRef>,
    ) -> crate::Result<Arc<dyn SourceFactory>> {
        let values: BTreeMap<String, String> = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut opts = Options::new("events", "file", values);
        let req = TableRequest {
            env: &crate::connectors::ConnectorEnv::default(),
            table: "events",
            schema,
            base_dir: base,
        };
        let f = source(&req, &mut opts)?;
        opts.finish()?;
        Ok(f)
    }

    struct Running {
        captured: Arc<Captured>,
        handle: crate::engine::RunHandle,
        source_stats: Arc<crate::engine::NodeStats>,
    }

    fn start(factory: Arc<dyn SourceFactory>, parallelism: usize, batch_size: usize) -> Running {
        let (rows, _) = watch::channel(0);
        let captured = Arc::new(Captured {
            batches: Mutex::new(Vec::new()),
            rows,
        });
        let mut g = Graph::new("test");
        let src = g.add_source("events", factory, parallelism);
        g.add_sink(
            "capture",
            Arc::new(CaptureFactory(captured.clone())),
            1,
            src,
            Partitioning::RoundRobin,
        )
        .unwrap();
        let settings = RuntimeSettings {
            batch: BatchSettings {
                size: batch_size,
                flush_interval: Duration::from_millis(50),
            },
            ..RuntimeSettings::default()
        };
        let handle = Runtime::start(g, settings).unwrap();
        let source_stats = handle
            .stats
            .iter()
            .find(|(n, _)| n == "events")
            .unwrap()
            .1
            .clone();
        Running {
            captured,
            handle,
            source_stats,
        }
    }

    impl Running {
        async fn wait_rows(&self, n: usize) {
            let mut rx = self.captured.rows.subscribe();
            let reached = rx.wait_for(|r| *r >= n);
            tokio::time::timeout(Duration::from_secs(30), reached)
                .await
                .expect("rows did not arrive")
                .unwrap();
        }
    }

    impl Captured {
        fn batches(&self) -> Vec<RecordBatch> {
            self.batches.lock().unwrap().clone()
        }
    }

    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        let mut ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        ids.sort();
        ids
    }

    fn json_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]))
    }

    fn write_lines(path: &Path, ids: std::ops::Range<i64>, extra: &[&str]) {
        let mut f = File::create(path).unwrap();
        for i in ids {
            writeln!(
                f,
                r#"{{"id": {i}, "name": "n{i}", "ts": {}}}"#,
                1_700_000_000_000 + i
            )
            .unwrap();
        }
        for e in extra {
            writeln!(f, "{e}").unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_a_directory_of_json_lines_over_partitions() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        write_lines(
            &dir.join("a.jsonl"),
            0..10,
            &[r#"{"id": "bad"}"#, "", "not json"],
        );
        write_lines(&dir.join("b.json"), 10..20, &[]);
        std::fs::write(
            dir.join("c.ndjson"),
            "\u{feff}{\"id\": 20}\r\n{\"id\": 21, \"name\": null}\r\n{\"id\": 22, \"ts\": \"2024-01-01T00:00:00Z\"}",
        )
        .unwrap();
        // Not read: other extensions, hidden and in-progress files, subdirectories.
        write_lines(&dir.join("notes.txt"), 100..101, &[]);
        write_lines(&dir.join("_partial.jsonl"), 101..102, &[]);
        write_lines(&dir.join(".hidden.json"), 102..103, &[]);
        std::fs::create_dir(dir.join("sub.json")).unwrap();
        write_lines(&dir.join("sub.json").join("d.json"), 103..104, &[]);

        let f = plan(
            base.path(),
            &[("path", "data"), ("format", "json")],
            Some(json_schema()),
        )
        .unwrap();
        assert!(f.bounded());
        assert_eq!(f.schema(), json_schema());
        assert!(f.describe().contains("3 file(s)"), "{}", f.describe());
        let run = start(f, 2, 4);
        run.handle.wait().await.unwrap();
        let batches = run.captured.batches();
        assert!(
            batches
                .iter()
                .all(|b| b.num_rows() <= 4 && b.schema() == json_schema())
        );
        assert_eq!(ids(&batches), (0..23).collect::<Vec<_>>());
        assert_eq!(
            run.source_stats
                .bad_records
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    #[tokio::test]
    async fn reads_one_json_file_with_the_format_from_its_extension() {
        let base = tempfile::tempdir().unwrap();
        write_lines(&base.path().join("one.jsonl"), 0..5, &[]);
        let f = plan(base.path(), &[("path", "one.jsonl")], Some(json_schema())).unwrap();
        let run = start(f, 3, 2);
        run.handle.wait().await.unwrap();
        assert_eq!(ids(&run.captured.batches()), (0..5).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn reads_avro_into_declared_columns() {
        let base = tempfile::tempdir().unwrap();
        let bytes = crate::formats::avro::tests::write_avro(50, apache_avro::Codec::Null, 8);
        std::fs::write(base.path().join("e.avro"), bytes).unwrap();
        let declared = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("score", DataType::Float32, true),
            Field::new("absent", DataType::Utf8, true),
        ]));
        let f = plan(base.path(), &[("path", "e.avro")], Some(declared.clone())).unwrap();
        let run = start(f, 1, 16);
        run.handle.wait().await.unwrap();
        let batches = run.captured.batches();
        assert_eq!(ids(&batches), (0..50).collect::<Vec<_>>());
        let b = &batches[1];
        assert_eq!(b.schema(), declared);
        assert_eq!(
            b.column(1).as_primitive::<Float32Type>().value(0),
            16.0 / 4.0
        );
        assert_eq!(b.column(2).null_count(), b.num_rows());
    }

    #[tokio::test]
    async fn reads_parquet_files_with_the_first_files_schema() {
        let base = tempfile::tempdir().unwrap();
        let sample = crate::formats::parquet::tests::sample(100);
        crate::formats::parquet::tests::write_parquet(
            &base.path().join("p1.parquet"),
            &sample.slice(0, 60),
        );
        crate::formats::parquet::tests::write_parquet(
            &base.path().join("p2.parquet"),
            &sample.slice(60, 40),
        );
        let dir = base.path().display().to_string();
        let f = plan(
            Path::new("/"),
            &[("path", &dir), ("format", "parquet")],
            None,
        )
        .unwrap();
        assert_eq!(f.schema(), sample.schema());
        let run = start(f, 2, 1000);
        run.handle.wait().await.unwrap();
        assert_eq!(ids(&run.captured.batches()), (0..100).collect::<Vec<_>>());
    }

    /// A Parquet file's row groups are decoded several at once, yet its rows arrive in
    /// the file's order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn row_groups_decoded_at_once_arrive_in_the_files_order() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("p.parquet");
        let sample = crate::formats::parquet::tests::sample(1000);
        // Row groups of 300 rows: 4 parts, more than the workers of a 1-core machine.
        crate::formats::parquet::tests::write_parquet(&path, &sample);
        assert_eq!(crate::formats::parquet::row_groups(&path).unwrap(), 4);
        assert_eq!(
            read_in_order(base.path(), "p.parquet").await,
            (0..1000).collect::<Vec<_>>()
        );
    }

    /// The first column of every row the source read from `file` under `base` (one
    /// task, batches of 64), in the order emitted; every batch holds at most 64 rows.
    async fn read_in_order(base: &Path, file: &str) -> Vec<i64> {
        let f = plan(base, &[("path", file)], None).unwrap();
        let run = start(f, 1, 64);
        run.handle.wait().await.unwrap();
        let batches = run.captured.batches();
        assert!(batches.iter().all(|b| b.num_rows() <= 64));
        batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    /// An Avro file cut into runs of blocks is decoded several parts at once, yet its
    /// rows arrive in the file's order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn avro_block_runs_decoded_at_once_arrive_in_the_files_order() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("e.avro");
        let n = 20_000;
        let bytes = crate::formats::avro::tests::write_avro(n, apache_avro::Codec::Null, 100);
        std::fs::write(&path, bytes).unwrap();
        let parts = crate::formats::avro::block_parts(&path, AVRO_PART_BYTES).unwrap();
        assert!(parts.len() > decoding_workers(), "{parts:?}");
        assert_eq!(
            read_in_order(base.path(), "e.avro").await,
            (0..n as i64).collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_a_directory_until_stopped() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path();
        write_lines(&dir.join("0.jsonl"), 0..3, &[]);
        let f = plan(
            dir,
            &[
                ("path", "."),
                ("format", "json"),
                ("follow", "true"),
                ("poll_interval", "10ms"),
            ],
            Some(json_schema()),
        )
        .unwrap();
        assert!(!f.bounded());
        let run = start(f, 2, 100);
        run.wait_rows(3).await;
        // Written under a skipped name, then renamed: only complete files are seen.
        write_lines(&dir.join("_1.jsonl"), 3..5, &[]);
        std::fs::rename(dir.join("_1.jsonl"), dir.join("1.jsonl")).unwrap();
        run.wait_rows(5).await;
        // By the time the next file arrives, the directory has been listed again with
        // the first two in it: they must not be read twice.
        write_lines(&dir.join("2.jsonl"), 5..6, &[]);
        run.wait_rows(6).await;
        run.handle.stop();
        run.handle.wait().await.unwrap();
        assert_eq!(ids(&run.captured.batches()), (0..6).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_corrupt_avro_file_fails_the_source_naming_it() {
        let base = tempfile::tempdir().unwrap();
        let bytes = crate::formats::avro::tests::write_avro(50, apache_avro::Codec::Null, 8);
        std::fs::write(base.path().join("e.avro"), &bytes[..bytes.len() - 30]).unwrap();
        let f = plan(base.path(), &[("path", "e.avro")], None).unwrap();
        let run = start(f, 1, 16);
        let e = run.handle.wait().await.unwrap_err().to_string();
        assert!(e.contains("e.avro") && e.contains("offset"), "{e}");
    }

    #[test]
    fn planning_errors_are_clear() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        write_lines(&b.join("x.jsonl"), 0..1, &[]);
        std::fs::write(b.join("x.txt"), "").unwrap();
        let err = |opts: &[(&str, &str)], schema: Option<SchemaRef>| match plan(b, opts, schema) {
            Ok(_) => panic!("expected an error for {opts:?}"),
            Err(e) => (e.code(), e.to_string()),
        };
        let (code, e) = err(&[("path", "nope.jsonl")], Some(json_schema()));
        assert_eq!(code, "CON007");
        assert!(e.contains("nope.jsonl"), "{e}");
        let (code, _) = err(&[("path", "x.jsonl")], None);
        assert_eq!(code, "CON006");
        let (code, e) = err(&[("path", ".")], Some(json_schema()));
        assert_eq!(code, "CON003");
        assert!(e.contains("format"), "{e}");
        let (code, _) = err(&[("path", "x.txt")], Some(json_schema()));
        assert_eq!(code, "CON004");
        let (code, _) = err(&[("path", "."), ("format", "csv")], Some(json_schema()));
        assert_eq!(code, "CON004");
        let (code, _) = err(
            &[("path", "x.jsonl"), ("follow", "true")],
            Some(json_schema()),
        );
        assert_eq!(code, "CON004");
        let (code, _) = err(&[("path", "."), ("format", "avro")], None);
        assert_eq!(code, "CON006");
        let (code, _) = err(
            &[("path", "x.jsonl"), ("colour", "red")],
            Some(json_schema()),
        );
        assert_eq!(code, "CON002");
        // Declared columns that the first Avro file cannot fill.
        let bytes = crate::formats::avro::tests::write_avro(1, apache_avro::Codec::Null, 8);
        std::fs::write(b.join("e.avro"), bytes).unwrap();
        let needs = Arc::new(Schema::new(vec![Field::new(
            "nope",
            DataType::Int64,
            false,
        )]));
        let (code, e) = err(&[("path", "e.avro")], Some(needs));
        assert_eq!(code, "CON006");
        assert!(e.contains("'nope'"), "{e}");
    }
}
