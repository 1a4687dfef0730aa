//! The dataflow runtime.
//!
//! Owns: the graph of nodes (sources, operators, sinks), the tasks that run them (one
//! tokio task per node and partition), the bounded channels between tasks, and the
//! exchange that routes batches from one node's partitions to the next node's
//! (forward, hash by key, round robin, broadcast).
//!
//! Invariants:
//! - Every channel is bounded (`RuntimeSettings::channel_capacity` batches): a slow sink
//!   slows every upstream task down to its pace; nothing queues without limit.
//! - A task sends [`Message::End`] exactly once to each of its outputs, after its last
//!   batch; a task ends when every one of its inputs has ended. A bounded pipeline
//!   therefore finishes by itself once its sources are exhausted.
//! - The first task to fail stops the whole pipeline; the error names the node and
//!   partition ([`EngineError::Operator`]). A panic is reported the same way.
//! - Stopping (SIGTERM, Ctrl-C) asks the sources to stop; everything already emitted is
//!   drained through the graph and flushed by the sinks before `run` returns.

mod exchange;
mod graph;
mod position;
mod runtime;
mod watermark;

pub use crate::types::{
    EngineError, KEY_GROUPS, Message, NodeStats, OP_COLUMN, Result, StateKind, TaskInfo,
    key_groups_of, key_groups_of_arrays, partition_of_key_group,
};
pub use exchange::{Collector, Partitioning};
pub use graph::{DEAD_LETTER_PORT, Graph, NodeId, NodeKind, NodeSpec, fields};
pub use runtime::{RunHandle, RunReport, Runtime, RuntimeSettings, StopSignal, Stopper};
pub use watermark::{EventTime, Watermark, event_times_ms};

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

/// How sources group rows into batches: a batch is emitted when it holds `size` rows or
/// when `flush_interval` has passed since the previous one, whichever comes first, so
/// latency stays low at low rates and throughput high at high rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    pub size: usize,
    pub flush_interval: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            size: 8192,
            flush_interval: Duration::from_millis(100),
        }
    }
}

/// A stateless or stateful step between sources and sinks, run once per partition.
///
/// A stateful operator also implements `snapshot` (and `snapshot_changes` for deltas)
/// and `restore`, and says so through [`OperatorFactory::state_kind`]; a stateless
/// one keeps the defaults.
#[async_trait]
pub trait Operator: Send {
    /// Processes one input batch and emits any number of output batches.
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()>;

    /// Processes a batch from the node's input number `input` (its position in the
    /// graph's inputs of the node: 0 for the left side of a join, 1 for the right).
    /// Operators with one input (or a union of like inputs) keep the default.
    async fn process_input(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Collector,
    ) -> Result<()> {
        self.process_batch(batch, out).await
    }

    /// The combined watermark of this task's inputs advanced to `watermark`: emit what
    /// it completes (windows, timers). The runtime forwards the watermark downstream
    /// after this returns, so results always precede the watermark that made them.
    /// At the end of input this is called with [`Watermark::END`] before `on_end`;
    /// not when the pipeline is stopped (SIGTERM), whose open windows are incomplete.
    async fn handle_watermark(&mut self, _watermark: i64, _out: &mut Collector) -> Result<()> {
        Ok(())
    }

    /// How far (ms) the watermark this operator forwards trails the one it was handed.
    /// An operator that emits rows older than its watermark (an interval join's pair,
    /// timed by its earlier row) holds the watermark back by as much, so that those rows
    /// are not late for a stateful operator downstream. `0` by default.
    fn watermark_holdback(&self) -> i64 {
        0
    }

    /// Called once after every input has ended; emit what is still buffered.
    async fn on_end(&mut self, _out: &mut Collector) -> Result<()> {
        Ok(())
    }

    /// How often the runtime calls [`handle_tick`](Operator::handle_tick), in
    /// processing time; `None` (the default): never. Asked once, when the task starts.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Processing time has passed: fire processing-time timers, expire idle state.
    async fn handle_tick(&mut self, _out: &mut Collector) -> Result<()> {
        Ok(())
    }

    /// The barrier of a checkpoint has arrived on every input: this task's state
    /// (`None`: no state), captured now and encoded off the task (see
    /// [`StateBlob`](crate::state::snapshot::StateBlob)). The state itself is left as
    /// it was.
    fn snapshot(&mut self) -> Result<Option<crate::state::snapshot::StateBlob>> {
        Ok(None)
    }

    /// Like [`snapshot`](Operator::snapshot), called instead of it when this task's
    /// previous snapshot is part of a committed checkpoint: the operator may return
    /// only what changed since that snapshot, as a
    /// [`StateBlob::delta`](crate::state::snapshot::StateBlob::delta), which restore
    /// applies on top of it. Every snapshot, of either kind, is the new base of what
    /// counts as changed. The default takes a full snapshot.
    fn snapshot_changes(&mut self) -> Result<Option<crate::state::snapshot::StateBlob>> {
        self.snapshot()
    }

    /// Before the first batch, when resuming: the bytes `snapshot` returned, on this
    /// task, or, after a change of parallelism, on every task of the node: a keyed
    /// operator keeps the keys whose key group is now this task's.
    fn restore(&mut self, _states: &[Vec<u8>]) -> Result<()> {
        Err(EngineError::Invalid("this operator has no state to restore".into()).into())
    }

    /// [`restore`](Operator::restore) for operators that write deltas: each old
    /// task's state as a [`Chain`](crate::state::snapshot::Chain), its last full
    /// snapshot then the deltas on top of it. The default restores the full snapshots
    /// and refuses deltas.
    fn restore_chains(&mut self, chains: Vec<crate::state::snapshot::Chain>) -> Result<()> {
        let states = crate::state::snapshot::full_snapshots(chains)?;
        self.restore(&states)
    }
}

/// Builds one [`Operator`] per partition.
pub trait OperatorFactory: Send + Sync {
    /// Schema of the batches this operator emits.
    fn output_schema(&self) -> SchemaRef;
    /// A short human description for `explain`, e.g. `sql: SELECT …`.
    fn describe(&self) -> String;
    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Operator>>;
    /// Outputs besides the main one, (name, schema): the operator sends to side output
    /// `i` with [`Collector::emit_to`]`(i + 1, …)`, and a downstream node reads it
    /// through its input port `i + 1` (`NodeSpec::input_ports`).
    fn side_outputs(&self) -> Vec<(String, SchemaRef)> {
        vec![]
    }
    /// Whether checkpoints cover this operator's state.
    fn state_kind(&self) -> StateKind {
        StateKind::Stateless
    }
    /// Whether its checkpointed state can be restored at another parallelism (keyed
    /// state filtered by key group on restore).
    fn rescalable(&self) -> bool {
        true
    }
}

/// The runtime's side of a source task: where to emit batches, when to stop, how to
/// batch and where to report bad records.
pub struct SourceContext {
    pub task: TaskInfo,
    pub out: Collector,
    pub batch: BatchSettings,
    pub stop: StopSignal,
    pub bad_records: crate::dlq::BadRecords,
    /// With checkpoints: this task's handle (see [`SourceContext::checkpoint_due`]).
    pub checkpoints: Option<crate::checkpoint::TaskCheckpoints>,
    /// Set by a checkpointing source before `run` returns: where it ended, so the
    /// checkpoints taken while the rest of the pipeline runs on resume it there.
    pub final_position: Option<Vec<u8>>,
}

impl SourceContext {
    /// A checkpoint to take now, if one was triggered since this task's last: the
    /// source emits what it has buffered, then calls [`SourceContext::checkpoint`].
    pub fn checkpoint_due(&self) -> Option<u64> {
        self.checkpoints.as_ref().and_then(|c| c.due())
    }

    /// Takes checkpoint `id` at this point of the input: `position` is where to
    /// resume (bytes the source's `restore` reads back); a barrier follows the rows
    /// emitted so far. The newest event time of each split goes with it
    /// (`position.rs`), so watermarks resume where they were.
    pub async fn checkpoint(&mut self, id: u64, position: Vec<u8>) -> Result<()> {
        self.out.emit_barrier(id).await?;
        let stored = position::encode(&position, self.out.split_event_times());
        if let Some(c) = self.checkpoints.as_mut() {
            c.ack(id, Some(stored.into()));
        }
        Ok(())
    }

    /// `final_position` as stored (with the splits' event times).
    pub(crate) fn take_final_position(&mut self) -> Option<Vec<u8>> {
        let p = self.final_position.take()?;
        Some(position::encode(&p, self.out.split_event_times()))
    }

    /// Waits until `deadline`, the stop signal or the next checkpoint trigger,
    /// whichever comes first: how a source waiting for input stays responsive.
    pub async fn pause_until(&mut self, deadline: tokio::time::Instant) {
        let stop = &mut self.stop;
        let checkpoints = &mut self.checkpoints;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = stop.raised() => {}
            _ = async {
                match checkpoints.as_mut() {
                    Some(c) => { c.triggered().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }

    /// Waits for the next checkpoint trigger; never resolves without checkpoints.
    pub async fn checkpoint_triggered(&mut self) -> u64 {
        match self.checkpoints.as_mut() {
            Some(c) => c.triggered().await,
            None => std::future::pending().await,
        }
    }

    /// The positions this task resumes from (what `checkpoint` was given): its own,
    /// or after a change of parallelism every task's of the source (a rescalable
    /// source keeps the splits it now reads). The splits' event times stored with
    /// them are restored into the watermark generator.
    pub async fn restored_positions(&mut self) -> Result<Vec<Vec<u8>>> {
        let Some(c) = &self.checkpoints else {
            return Ok(Vec::new());
        };
        let mut positions = Vec::new();
        for (_, stored) in c.restored(crate::checkpoint::Share::All).await? {
            let (position, times) = position::decode(&stored)?;
            self.out.restore_split_event_times(times);
            positions.push(position.to_vec());
        }
        Ok(positions)
    }
}

/// Produces batches for one partition. `run` returns when the input is exhausted (a
/// bounded source) or when `ctx.stop` is raised; the runtime then sends `End`
/// downstream.
#[async_trait]
pub trait Source: Send {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<()>;
}

/// Builds one [`Source`] per partition and describes what it produces.
pub trait SourceFactory: Send + Sync {
    fn schema(&self) -> SchemaRef;
    /// `true` when the input has an end (a file, a generator with a count).
    fn bounded(&self) -> bool;
    fn describe(&self) -> String;
    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Source>>;
    /// `true` when its sources take checkpoints (record their position and resume
    /// from it); a pipeline with checkpoints refuses other sources.
    fn checkpointable(&self) -> bool {
        false
    }
    /// `true` when its positions can be redistributed over another number of tasks
    /// (Kafka partitions); `false` when a position belongs to its task (a generator).
    fn rescalable(&self) -> bool {
        false
    }
    /// For `tributary check`: fails when a service the table needs besides its data
    /// (e.g. its schema registry) does not answer or refuses it. Nothing by default.
    fn preflight(&self) -> futures::future::BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// The topic it reads, for a source that reads one (Kafka): a pipeline's domain
    /// (its dead-letter topic) is named after its first source's topic.
    fn topic(&self) -> Option<String> {
        None
    }
    /// The rules its rows must satisfy (a table's `CHECK`s), which another source of
    /// the same table (its replay inbox) applies too.
    fn validator(&self) -> Option<Arc<dyn RowValidator>> {
        None
    }
}

/// Rules every row of a source must satisfy (a table's `CHECK` constraints). The
/// source task's collector applies them to each batch before it is sent or counts
/// toward the watermark, so a row that breaks a rule never reaches an operator and its
/// event time cannot make good rows late.
pub trait RowValidator: Send + Sync {
    /// `batch` without the rows that break a rule; each removed row is reported to
    /// `bad` with the rule it broke.
    fn validate(&self, batch: RecordBatch, bad: &mut crate::dlq::BadRecords)
    -> Result<RecordBatch>;
    /// The rules, for `explain`.
    fn describe(&self) -> String;
}

/// A source whose rows pass a [`RowValidator`] before they leave its tasks.
pub struct ValidatedSourceFactory {
    pub inner: Arc<dyn SourceFactory>,
    pub validator: Arc<dyn RowValidator>,
}

impl SourceFactory for ValidatedSourceFactory {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
    fn bounded(&self) -> bool {
        self.inner.bounded()
    }
    fn describe(&self) -> String {
        format!("{}; {}", self.inner.describe(), self.validator.describe())
    }
    fn checkpointable(&self) -> bool {
        self.inner.checkpointable()
    }
    fn rescalable(&self) -> bool {
        self.inner.rescalable()
    }
    fn preflight(&self) -> futures::future::BoxFuture<'_, Result<()>> {
        self.inner.preflight()
    }
    fn validator(&self) -> Option<Arc<dyn RowValidator>> {
        Some(self.validator.clone())
    }
    fn topic(&self) -> Option<String> {
        self.inner.topic()
    }
    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Source>> {
        Ok(Box::new(ValidatedSource {
            inner: self.inner.create(task)?,
            validator: self.validator.clone(),
        }))
    }
}

struct ValidatedSource {
    inner: Box<dyn Source>,
    validator: Arc<dyn RowValidator>,
}

#[async_trait]
impl Source for ValidatedSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<()> {
        ctx.out.validate_with(self.validator.clone());
        self.inner.run(ctx).await
    }
}

/// Writes batches out of the pipeline, one instance per partition.
#[async_trait]
pub trait Sink: Send {
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;

    /// Called once before the first write: where to report rows the destination
    /// refuses for good (too large, rejected), which go to the dead-letter queue
    /// under the default policy. Transient errors are retried instead.
    fn report_refusals_to(&mut self, _bad: crate::dlq::BadRecords) {}
    /// Called every flush interval while running: push buffered output out.
    async fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Called once at the end of input or on shutdown: make everything durable and
    /// visible. No call follows.
    async fn finish(&mut self) -> Result<()>;

    /// Called once before the first write when the pipeline delivers exactly once:
    /// from now on output becomes visible only through `commit` (two-phase). Returns
    /// `false` for a sink that cannot hold output back (it stays at-least-once).
    fn exactly_once(&mut self) -> bool {
        false
    }

    /// The pipeline was stopped (not at the end of its input) with checkpoints: keep
    /// only the output of committed checkpoints (up to `committed`), discard the rest
    /// (the restart replays it). The default is `finish`.
    async fn close_uncommitted(&mut self, _committed: u64) -> Result<()> {
        self.finish().await
    }

    /// Checkpoint `id`'s barrier arrived: make everything written so far durable but
    /// not yet visible (first phase), and return what `commit` or, after a crash,
    /// `restore` needs to make it visible. The default flushes (at-least-once).
    async fn pre_commit(&mut self, _id: u64) -> Result<Option<Vec<u8>>> {
        self.flush().await?;
        Ok(None)
    }

    /// Checkpoint `id` (and every one before it) is committed: make its output
    /// visible (second phase). Must be idempotent.
    async fn commit(&mut self, _id: u64) -> Result<()> {
        Ok(())
    }

    /// Before the first write, when resuming: what `pre_commit` returned for the
    /// restored checkpoint, with the partition that returned it (after a change of
    /// parallelism, old partition `q` goes to new partition `q mod parallelism`).
    /// Commit that output (it may not have been) and discard any written after it.
    async fn restore(&mut self, _states: &[(usize, Vec<u8>)]) -> Result<()> {
        Ok(())
    }
}

/// What a sink that writes files leaves for readers ([`SinkFactory::output`]), with
/// paths as the sink resolved them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkOutput {
    /// A directory of Parquet files, in Hive-style `col=value/` directories for the
    /// `partition_by` columns (in that order), which the files do not hold. Files being
    /// written are hidden (`.part-….parquet.inprogress`).
    Parquet {
        dir: std::path::PathBuf,
        partition_by: Vec<String>,
    },
    /// JSON-lines files, one per task.
    JsonLines { files: Vec<std::path::PathBuf> },
}

/// Builds one [`Sink`] per partition.
pub trait SinkFactory: Send + Sync {
    fn describe(&self) -> String;
    /// For `tributary explain`: the files a run with `tasks` tasks writes, with
    /// their real paths, when the sink writes files (`None`: [`Self::describe`] says
    /// where its output goes). `exactly_once`: the pipeline checkpoints with
    /// exactly-once sinks.
    fn writes(&self, _tasks: usize, _exactly_once: bool) -> Option<String> {
        None
    }
    /// For `tributary query`: the files a run with `tasks` tasks leaves for readers,
    /// in machine-readable form, when the sink writes files (`None`: it does not).
    fn output(&self, _tasks: usize) -> Option<SinkOutput> {
        None
    }
    /// Refuses, at plan time, an input schema the sink cannot write.
    fn check_schema(&self, _schema: &SchemaRef) -> Result<()> {
        Ok(())
    }
    /// `true` when the sink takes a changelog (rows with an [`OP_COLUMN`]) and keeps
    /// what it means: writes each change with its op, or applies it by key. An
    /// append-only sink (the default) is refused a changelog at plan time.
    fn accepts_changelog(&self) -> bool {
        false
    }
    /// Columns whose rows must reach the same sink task (a key-value store's key):
    /// the planner routes the sink's input by their hash. Empty (the default): rows
    /// go forward from the task that made them.
    fn partition_by(&self) -> Vec<String> {
        Vec::new()
    }
    fn create(&self, task: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Sink>>;
    /// For `tributary check`: see [`SourceFactory::preflight`].
    fn preflight(&self) -> futures::future::BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// A lookup table read by key rather than whole (a DynamoDB table): a connector
/// provides it, the SQL stage asks it for the keys of each batch
/// (`operators::lookup`).
#[async_trait]
pub trait PointLookup: Send + Sync {
    fn describe(&self) -> String;
    /// The column point reads are keyed by (the stream joins on it).
    fn key_column(&self) -> &str;
    /// The table's rows whose key is one of `keys` (a column of key values; NULLs and
    /// repeats allowed): at most one per distinct key, none for a key without one.
    /// An unreachable store is waited out here (retried, reported), never a miss.
    async fn get(&self, keys: &arrow::array::ArrayRef) -> crate::Result<RecordBatch>;
}

#[cfg(test)]
mod tests;
