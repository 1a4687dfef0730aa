//! The vocabulary every layer shares: what flows between tasks ([`Message`]), who a
//! task is ([`TaskInfo`]), how keys map to key groups (the unit of rescaling), the
//! state-backend interface operators account their state through, and the task error
//! ([`EngineError`], [`Result`]).
//!
//! Owns nothing that runs. It imports no other module of this crate except `metrics`
//! (metric names) and the crate-level error it converts into, so `state`, `dlq`,
//! `checkpoint`, `engine` and `operators` can all use it without depending on each
//! other (`tests/e2e/layout.rs` checks the module graph has no cycles).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arrow::array::{ArrayRef, RecordBatch};

/// The last column of a changelog (the output of a query whose results update, like a
/// `GROUP BY` without a window): what each row does — `+I` insert, `-U` / `+U` a
/// result's previous and new value, `-D` delete. See [`crate::operators::updating`].
pub const OP_COLUMN: &str = "_op";

/// What flows over a channel between two tasks.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Message {
    /// A batch of rows, with the schema of the sending node.
    Batch(RecordBatch),
    /// No more rows with an event time (ms since the epoch) below this are expected
    /// from the sender. See [`watermark`](self::watermark) for how they are combined.
    Watermark(i64),
    /// Checkpoint barrier: everything the sender sent before it belongs to checkpoint
    /// `n`, everything after to the next (see [`crate::checkpoint`]).
    Barrier(u64),
    /// The sender has sent its last batch.
    End,
}

/// Whether an operator's state survives a restart through checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// No state between batches: nothing to checkpoint.
    Stateless,
    /// State taken by [`Operator::snapshot`] and given back by [`Operator::restore`].
    Checkpointed,
    /// State that checkpoints do not cover yet: a pipeline with checkpoints refuses it.
    NotCheckpointed,
}

/// The generation of what this process writes afresh (a new lineage of checkpoints):
/// its start, in seconds since 2025-01-01 UTC. One value per process, so every task of
/// a pipeline shares it; kept in a checkpoint, so a restored task keeps its own. A
/// value ordered across runs is `generation × GENERATION_EPOCHS + checkpoint`: the
/// DynamoDB sink's item versions and the fallback's record sequences.
pub fn run_generation() -> u64 {
    /// 2025-01-01T00:00:00Z.
    const SINCE: u64 = 1_735_689_600;
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(SINCE).max(1))
            .unwrap_or(1)
    })
}

/// Checkpoints of one generation fit below this; `generation × GENERATION_EPOCHS +
/// checkpoint` stays below 2⁶³ (a signed 64-bit integer, Java's `long`) for the next
/// 290 years.
pub const GENERATION_EPOCHS: u64 = 1_000_000_000;

/// Identity of one running task: a node's instance for one partition.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub pipeline: Arc<str>,
    pub node: Arc<str>,
    /// 0-based index of this task among the node's partitions.
    pub partition: usize,
    pub parallelism: usize,
    /// Where a stateful operator keeps its state ([`RuntimeSettings::state`]).
    pub state: Arc<dyn StateBackend>,
}

impl std::fmt::Display for TaskInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}[{}/{}]",
            self.pipeline, self.node, self.partition, self.parallelism
        )
    }
}

/// Number of key groups: the most partitions a keyed node can ever be spread over.
pub const KEY_GROUPS: usize = 4096;

fn random_state() -> datafusion::common::hash_utils::RandomState {
    // A fixed seed: routing must be the same on every instance and across restarts.
    datafusion::common::hash_utils::RandomState::with_seed(0x7472_6962_7574_6172)
}

/// The key group of every row of `batch`, keyed by the columns `keys`.
pub fn key_groups_of(batch: &RecordBatch, keys: &[usize]) -> Result<Vec<u64>> {
    let arrays: Vec<ArrayRef> = keys.iter().map(|&i| batch.column(i).clone()).collect();
    key_groups_of_arrays(&arrays, batch.num_rows())
}

/// The partition (of `parallelism`) that owns key group `kg`: consecutive ranges of
/// key groups per partition, so rescaling moves whole key groups.
pub fn partition_of_key_group(kg: u64, parallelism: usize) -> usize {
    (kg as usize) * parallelism / KEY_GROUPS
}

/// The key group of each of `rows` rows of the key columns `arrays` (the hash the
/// exchange routes by).
pub fn key_groups_of_arrays(arrays: &[ArrayRef], rows: usize) -> Result<Vec<u64>> {
    let mut hashes = vec![0u64; rows];
    datafusion::common::hash_utils::create_hashes(arrays, &random_state(), &mut hashes)
        .map_err(|e| EngineError::datafusion("hashing key columns", e))?;
    for h in hashes.iter_mut() {
        *h %= KEY_GROUPS as u64;
    }
    Ok(hashes)
}

/// Counters shared between a node's tasks and the progress view.
#[derive(Debug, Default)]
pub struct NodeStats {
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub batches_out: AtomicU64,
    pub bad_records: AtomicU64,
}

/// Where operator state lives and how its size is accounted.
pub trait StateBackend: Send + Sync + std::fmt::Debug {
    /// Short name for logs and `explain` (`memory`).
    fn name(&self) -> &'static str;

    /// Opens the accounting of one operator task's state. `kind` names the state in
    /// messages (`window`, `join`, …); `limit` is the task's memory limit in bytes.
    fn open(&self, task: &TaskInfo, kind: &'static str, limit: Option<u64>) -> StateHandle;
}

/// One operator task's state accounting.
pub struct StateHandle {
    kind: &'static str,
    limit: Option<u64>,
    gauge: metrics::Gauge,
}

impl StateHandle {
    /// A handle reporting to `gauge`, failing past `limit` bytes; `kind` names the
    /// state in messages. Built by a [`StateBackend`].
    pub fn new(kind: &'static str, limit: Option<u64>, gauge: metrics::Gauge) -> Self {
        StateHandle { kind, limit, gauge }
    }

    /// Records the state's size; fails when it is over the limit. `what` describes the
    /// state (`in 3 open window(s)`), `advice` says what to change.
    pub fn report(&self, bytes: usize, what: impl FnOnce() -> String, advice: &str) -> Result<()> {
        self.gauge.set(bytes as f64);
        match self.limit {
            Some(limit) if bytes as u64 > limit => Err(EngineError::StateLimit(format!(
                "{} state holds {bytes} bytes {}, over the limit of {limit} (state.memory_limit): {advice}",
                self.kind,
                what()
            ))
            .into()),
            _ => Ok(()),
        }
    }
}

/// Errors of the runtime itself and of the tasks it runs.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("operator {task} failed: {source}")]
    Operator {
        task: String,
        #[source]
        source: Box<crate::Error>,
    },
    #[error("operator {task} panicked: {message}")]
    Panicked { task: String, message: String },
    #[error("invalid graph: {0}")]
    Graph(String),
    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{context}: {source}")]
    DataFusion {
        context: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// A pipeline put together wrongly, found while building or running it: a
    /// configuration value, a Rust operator's output that breaks its declaration, a
    /// source that cannot run as asked.
    #[error("{0}")]
    Invalid(String),
    /// State that cannot be written or read back: a checkpoint's bytes that do not
    /// decode, or hold other columns than the operator expects.
    #[error("{0}")]
    State(String),
    /// An operator task's state is over `state.memory_limit`.
    #[error("{0}")]
    StateLimit(String),
    /// An invariant of ours that did not hold (a bug): the message says which.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("downstream task has stopped")]
    DownstreamGone,
    /// A stop that did not drain in time (`run.stop_grace`) or was cut short by a
    /// second signal: the process exits without waiting for `waiting`.
    #[error(
        "stop abandoned ({reason}) while waiting for {waiting}; with checkpoints the next start \
         resumes from the last committed checkpoint and replays the rest (exactly-once output \
         is not lost); without, rows not yet written are lost"
    )]
    StopAbandoned { reason: String, waiting: String },
}

impl EngineError {
    pub fn code(&self) -> &'static str {
        match self {
            // A failing task is reported with its cause's code (what the user looks
            // up); the message names the task. ENG001 is the code of the wrapper alone.
            EngineError::Operator { source, .. } => source.code(),
            EngineError::Panicked { .. } => "ENG002",
            EngineError::Graph(_) => "ENG003",
            EngineError::Arrow { .. } => "ENG004",
            EngineError::DataFusion { .. } => "ENG005",
            EngineError::Invalid(_) => "ENG006",
            EngineError::State(_) => "ENG009",
            EngineError::StateLimit(_) => "ENG010",
            EngineError::Internal(_) => "ENG011",
            EngineError::DownstreamGone => "ENG007",
            EngineError::StopAbandoned { .. } => "ENG008",
        }
    }

    pub fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> crate::Error {
        EngineError::Arrow {
            context: context.into(),
            source,
        }
        .into()
    }

    pub fn datafusion(
        context: impl Into<String>,
        source: datafusion::error::DataFusionError,
    ) -> crate::Error {
        EngineError::DataFusion {
            context: context.into(),
            source,
        }
        .into()
    }
}

pub type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// A position in a user's file (pipeline YAML, SQL, configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}
