//! The SQL stage: a DataFusion physical plan evaluated once per input batch.
//!
//! The plan's only leaf is a [`StreamingTable`] partition that hands out "the current
//! batch". Each task owns a `TaskContext` carrying its own [`BatchSlot`], so one
//! physical plan serves every partition: a task puts its batch in its slot, executes
//! the plan, and forwards what comes out. Only plans whose result for a batch depends
//! on that batch alone reach this operator (the planner refuses the others), so running
//! the plan per batch is exactly the streaming result.

use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream, displayable};
use futures::StreamExt;

use super::lookup::{LookupRows, LookupTable};
use crate::dlq::{BadRecordReason, ErrorPolicy};
use crate::engine::{Collector, EngineError, Operator, OperatorFactory, Result, TaskInfo};

/// The batch a task is currently evaluating, one per task, found through the task's
/// `TaskContext`.
#[derive(Debug, Default)]
pub(crate) struct BatchSlot(Mutex<Option<RecordBatch>>);

/// The input table of a SQL stage, as DataFusion sees it.
pub(crate) struct SlotPartition {
    pub(crate) schema: SchemaRef,
    /// The stream table it stands for; `None` for the input of a stage above a
    /// stateful operator.
    pub(crate) table: Option<Arc<str>>,
}

/// `PartitionStream` offers no downcast, so a physical plan's stream scans are told
/// apart from lookup scans by this text: `stream table NAME` (see
/// [`SlotPartition::table_of`]).
impl std::fmt::Debug for SlotPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.table {
            Some(t) => write!(f, "stream table {t}"),
            None => write!(f, "stream slot"),
        }
    }
}

impl SlotPartition {
    /// The stream table a partition of a `StreamingTableExec` stands for.
    pub(crate) fn table_of(partition: &dyn PartitionStream) -> Option<String> {
        format!("{partition:?}")
            .strip_prefix("stream table ")
            .map(str::to_string)
    }
}

impl PartitionStream for SlotPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch = ctx
            .session_config()
            .get_extension::<BatchSlot>()
            .and_then(|slot| slot.0.lock().expect("slot lock").take());
        let items: Vec<datafusion::error::Result<RecordBatch>> =
            batch.into_iter().map(Ok).collect();
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(items),
        ))
    }
}

/// Builds the per-partition operators of one SQL stage.
pub struct SqlOperatorFactory {
    pub(crate) sql: String,
    pub(crate) plan: Arc<dyn ExecutionPlan>,
    pub(crate) task_ctx: Arc<TaskContext>,
    pub(crate) schema: SchemaRef,
    pub(crate) on_error: ErrorPolicy,
    /// The stage runs over a changelog (above an updating aggregate): each batch's op
    /// column is set aside, the plan runs on the other columns and its output rows get
    /// the op back.
    pub(crate) changelog: bool,
    /// Joins with lookup tables whose misses are dead letters: (table, plan of the
    /// stream rows without a match); see `lookup::misses`.
    pub(crate) misses: Vec<(String, Arc<dyn ExecutionPlan>)>,
    /// Joins with lookup tables read by key: (table, plan of the stream side's keys);
    /// see `lookup::key_plans`.
    pub(crate) prefetch: Vec<(Arc<LookupTable>, Arc<dyn ExecutionPlan>)>,
}

impl SqlOperatorFactory {
    /// The DataFusion physical plan, indented, for `explain`.
    pub fn physical_plan(&self) -> String {
        displayable(self.plan.as_ref()).indent(false).to_string()
    }
}

impl OperatorFactory for SqlOperatorFactory {
    fn output_schema(&self) -> SchemaRef {
        if self.changelog {
            super::updating::with_op_column(&self.schema)
        } else {
            self.schema.clone()
        }
    }

    fn describe(&self) -> String {
        let one_line: Vec<&str> = self.sql.split_whitespace().collect();
        let mut s = one_line.join(" ");
        if s.len() > 120 {
            let cut = (0..=117)
                .rev()
                .find(|i| s.is_char_boundary(*i))
                .unwrap_or(0);
            s.truncate(cut);
            s.push('…');
        }
        format!("sql: {s}")
    }

    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        let slot = Arc::new(BatchSlot::default());
        let lookup_rows = Arc::new(LookupRows::default());
        let base = &self.task_ctx;
        let config = base
            .session_config()
            .clone()
            .with_extension(slot.clone())
            .with_extension(lookup_rows.clone());
        let ctx = TaskContext::new(
            Some(task.to_string()),
            base.session_id(),
            config,
            base.scalar_functions().clone(),
            base.higher_order_functions().clone(),
            base.aggregate_functions().clone(),
            base.window_functions().clone(),
            base.runtime_env(),
        );
        Ok(Box::new(SqlOperator {
            fresh_plan_per_batch: has_join(&self.plan),
            plan: self.plan.clone(),
            ctx: Arc::new(ctx),
            slot,
            task: task.to_string(),
            on_error: self.on_error,
            changelog: self.changelog.then(|| self.output_schema()),
            misses: self.misses.clone(),
            prefetch: self.prefetch.clone(),
            lookup_rows,
        }))
    }
}

/// `true` when the plan holds a join: DataFusion's joins keep their build side for
/// the life of the plan instance, which must not outlive one batch.
fn has_join(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.name().contains("Join") || plan.children().into_iter().any(has_join)
}

struct SqlOperator {
    plan: Arc<dyn ExecutionPlan>,
    /// Reset the plan's state before each batch (plans with joins).
    fresh_plan_per_batch: bool,
    ctx: Arc<TaskContext>,
    slot: Arc<BatchSlot>,
    task: String,
    on_error: ErrorPolicy,
    /// Over a changelog: the output schema, with its op column.
    changelog: Option<SchemaRef>,
    misses: Vec<(String, Arc<dyn ExecutionPlan>)>,
    prefetch: Vec<(Arc<LookupTable>, Arc<dyn ExecutionPlan>)>,
    lookup_rows: Arc<LookupRows>,
}

impl SqlOperator {
    /// Fetches, for each lookup table read by key, the rows of this batch's keys, for
    /// every evaluation of the plan over the batch (or parts of it) to join with.
    async fn fetch_lookups(&self, batch: &RecordBatch) -> Result<()> {
        for (table, keys) in &self.prefetch {
            let lookup = table.keyed.as_ref().expect("key plans are of keyed tables");
            let key_batches = self.run(keys, batch.clone()).await?;
            let key_arrays: Vec<&dyn arrow::array::Array> =
                key_batches.iter().map(|b| b.column(0).as_ref()).collect();
            let keys = if key_arrays.is_empty() {
                arrow::array::new_empty_array(&arrow::datatypes::DataType::Null)
            } else {
                arrow::compute::concat(&key_arrays)
                    .map_err(|e| EngineError::Invalid(format!("{}: lookup keys: {e}", self.task)))?
            };
            let rows = lookup.get(&keys).await?;
            self.lookup_rows.set(&table.name, rows);
        }
        Ok(())
    }

    /// Emits results, with the input batch's changelog op when there is one.
    async fn emit(
        &self,
        results: Vec<RecordBatch>,
        op: Option<&ArrayRef>,
        out: &mut Collector,
    ) -> Result<()> {
        for r in results {
            match (op, &self.changelog) {
                (Some(op), Some(schema)) => out.emit(super::updating::tag(r, op, schema)?).await?,
                _ => out.emit(r).await?,
            }
        }
        Ok(())
    }

    /// Evaluates the plan over `batch`, collecting every output batch (nothing is
    /// emitted when evaluation fails half way).
    async fn eval(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.run(&self.plan, batch).await
    }

    /// Reports the rows of `batch` a lookup join finds no row for, where the lookup
    /// table says misses are dead letters.
    async fn report_misses(&self, batch: &RecordBatch, out: &mut Collector) -> Result<()> {
        for (table, plan) in &self.misses {
            // Rows whose evaluation fails are the stage's own plan's to report.
            let Ok(missed) = self.run(plan, batch.clone()).await else {
                continue;
            };
            for missed in missed {
                for row in 0..missed.num_rows() {
                    out.bad_records().report_row(
                        BadRecordReason::LookupMiss,
                        &format!("lookup table {table} has no row for this row's key"),
                        &missed,
                        row,
                        None,
                    );
                }
            }
        }
        Ok(())
    }

    async fn run(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        batch: RecordBatch,
    ) -> Result<Vec<RecordBatch>> {
        *self.slot.0.lock().expect("slot lock") = Some(batch);
        let plan = if self.fresh_plan_per_batch {
            datafusion::physical_plan::execution_plan::reset_plan_states(plan.clone()).map_err(
                |e| EngineError::datafusion(format!("{}: resetting the plan", self.task), e),
            )?
        } else {
            plan.clone()
        };
        let mut stream = plan
            .execute(0, self.ctx.clone())
            .map_err(|e| EngineError::datafusion(format!("{}: executing", self.task), e))?;
        let mut out = Vec::new();
        while let Some(b) = stream.next().await {
            out.push(
                b.map_err(|e| EngineError::datafusion(format!("{}: evaluating", self.task), e))?,
            );
        }
        Ok(out)
    }

    /// Under the `dead-letter` and `drop` policies: finds the rows that make evaluation fail by halving the
    /// batch, reports each of them, and emits the results of all the others.
    async fn isolate(
        &self,
        batch: RecordBatch,
        op: Option<&ArrayRef>,
        out: &mut Collector,
    ) -> Result<()> {
        let mut pending = vec![batch];
        while let Some(b) = pending.pop() {
            match self.eval(b.clone()).await {
                Ok(results) => self.emit(results, op, out).await?,
                Err(e) if b.num_rows() <= 1 => {
                    out.bad_records().report_row(
                        BadRecordReason::Processing,
                        &e.to_string(),
                        &b,
                        0,
                        None,
                    );
                }
                Err(_) => {
                    let half = b.num_rows() / 2;
                    // Pushed in reverse so that rows keep their order.
                    pending.push(b.slice(half, b.num_rows() - half));
                    pending.push(b.slice(0, half));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for SqlOperator {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let (batch, op) = match self.changelog {
            Some(_) => {
                let (data, op) = super::updating::untag(batch)?;
                (data, Some(op))
            }
            None => (batch, None),
        };
        if !self.prefetch.is_empty() {
            self.fetch_lookups(&batch).await?;
        }
        if !self.misses.is_empty() {
            self.report_misses(&batch, out).await?;
        }
        let input = (self.on_error != ErrorPolicy::Fail).then(|| batch.clone());
        match self.eval(batch).await {
            Ok(results) => self.emit(results, op.as_ref(), out).await,
            Err(_) if input.is_some() => {
                self.isolate(input.expect("checked"), op.as_ref(), out)
                    .await
            }
            Err(e) => Err(e),
        }
    }
}
