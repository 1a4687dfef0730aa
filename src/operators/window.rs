//! Windowed aggregation: `GROUP BY tumble(interval)` and `GROUP BY hop(slide, width)`.
//!
//! Owns the window functions as SQL sees them and the operator that evaluates a
//! windowed `GROUP BY` incrementally. DataFusion plans the query; the planner
//! ([`crate::planner`]) cuts the physical plan at its aggregate: what is below runs per
//! batch as a SQL stage, the aggregate itself runs here, what is above (projection,
//! `HAVING`) runs per emitted batch as another SQL stage.
//!
//! Invariants:
//! - Aggregation is incremental: each row updates DataFusion's own (groups)
//!   accumulators for its window and key, so every built-in aggregate and every Rust
//!   UDAF works and a window never holds its input rows.
//! - A window `[start, end)` is emitted once, when the watermark reaches `end`, and its
//!   state is then dropped. A row whose window has already been emitted is late: it is
//!   dropped and counted (`tributary_late_rows_total`) and logged at a bounded rate.
//! - At the end of a bounded input the watermark jumps to the end of time, so every
//!   open window is emitted before the pipeline finishes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StructArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::take;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::expressions::Literal;

use super::accumulate::{AggInputs, split_states};
use super::late::LateRows;
use super::support::{column_indices, conform_columns, df, emit_in_slices, evaluate};
use super::window_fn::{TZ, WINDOW_FUNCTIONS, interval_ms, window_array};
use crate::engine::{
    Collector, EngineError, Operator, OperatorFactory, Result, TaskInfo, event_times_ms,
};
use crate::state::keyed::{KeyedHeader, KeyedTable};
use crate::state::snapshot::{Chain, DeltaPolicy, StateBlob};

/// Which windows a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    Tumble { width: i64 },
    Hop { slide: i64, width: i64 },
}

impl WindowSpec {
    pub fn width(&self) -> i64 {
        match self {
            WindowSpec::Tumble { width } | WindowSpec::Hop { width, .. } => *width,
        }
    }

    /// Calls `f` with the start of every window holding event time `ts`.
    fn starts(&self, ts: i64, mut f: impl FnMut(i64)) {
        match *self {
            WindowSpec::Tumble { width } => f(ts - ts.rem_euclid(width)),
            WindowSpec::Hop { slide, width } => {
                let mut start = ts - ts.rem_euclid(slide);
                while start > ts - width {
                    f(start);
                    start -= slide;
                }
            }
        }
    }
}

/// The window of a windowed `GROUP BY`: fixed windows, or sessions per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Fixed(WindowSpec),
    /// A key's session ends after `gap` ms without events.
    Session {
        gap: i64,
    },
}

impl WindowKind {
    /// Reads a window call from the physical plan: `tumble(width, time)`,
    /// `hop(slide, width, time)` or `session(gap, time)`; returns the kind and the
    /// time expression.
    pub(crate) fn from_expr(
        expr: &Arc<dyn PhysicalExpr>,
    ) -> std::result::Result<Option<(WindowKind, Arc<dyn PhysicalExpr>)>, String> {
        let Some(f) = expr.downcast_ref::<ScalarFunctionExpr>() else {
            return Ok(None);
        };
        if !WINDOW_FUNCTIONS.contains(&f.name()) {
            return Ok(None);
        }
        let constant = |e: &Arc<dyn PhysicalExpr>| -> std::result::Result<i64, String> {
            let lit = e.downcast_ref::<Literal>().ok_or_else(|| {
                format!("{}(): window sizes must be constant intervals", f.name())
            })?;
            interval_ms(lit.value())
        };
        let args = f.args();
        match (f.name(), args) {
            ("tumble", [w, time]) => Ok(Some((
                WindowKind::Fixed(WindowSpec::Tumble {
                    width: constant(w)?,
                }),
                time.clone(),
            ))),
            ("session", [gap, time]) => Ok(Some((
                WindowKind::Session {
                    gap: constant(gap)?,
                },
                time.clone(),
            ))),
            ("hop", [s, w, time]) => {
                let (slide, width) = (constant(s)?, constant(w)?);
                if width % slide != 0 {
                    return Err(format!(
                        "hop(): the width ({width} ms) must be a multiple of the slide ({slide} ms)"
                    ));
                }
                Ok(Some((
                    WindowKind::Fixed(WindowSpec::Hop { slide, width }),
                    time.clone(),
                )))
            }
            (name, _) => Err(format!(
                "{name}() needs the event-time column: declare event_time_field on the source table, \
                 or pass the column as the last argument"
            )),
        }
    }
}

/// A windowed aggregate as planned: what to group by, what to compute, what to emit.
pub struct WindowAggFactory {
    pub(crate) spec: WindowKind,
    pub(crate) parts: FactoryParts,
    /// Most bytes of window state one task may hold.
    pub(crate) memory_limit: Option<u64>,
    /// How long after its end a window still takes late rows (ms); 0: none. With a
    /// lateness, the output is a changelog: a late row updates the emitted result.
    pub(crate) allowed_lateness: i64,
}

impl WindowAggFactory {
    /// Input columns the keys are plain references to, or `None` when a key is
    /// computed (then rows cannot be routed by column and the node runs as one task).
    pub(crate) fn key_columns(&self) -> Option<Vec<usize>> {
        column_indices(&self.parts.keys)
    }
}

impl OperatorFactory for WindowAggFactory {
    fn output_schema(&self) -> SchemaRef {
        if self.allowed_lateness > 0 {
            super::updating::with_op_column(&self.parts.output)
        } else {
            self.parts.output.clone()
        }
    }

    fn describe(&self) -> String {
        let window = match self.spec {
            WindowKind::Fixed(WindowSpec::Tumble { width }) => format!("tumble {width} ms"),
            WindowKind::Fixed(WindowSpec::Hop { slide, width }) => {
                format!("hop {width} ms every {slide} ms")
            }
            WindowKind::Session { gap } => format!("session, gap {gap} ms"),
        };
        let keys: Vec<String> = self
            .parts
            .key_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let aggs: Vec<&str> = self.parts.aggs.iter().map(|a| a.name()).collect();
        format!(
            "window aggregate ({window}, event time {}) by [{}]: {}",
            self.parts.time,
            keys.join(", "),
            aggs.join(", ")
        )
    }

    fn state_kind(&self) -> crate::engine::StateKind {
        crate::engine::StateKind::Checkpointed
    }

    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        let parts = self.parts.clone();
        let spec = match self.spec {
            WindowKind::Fixed(spec) => spec,
            WindowKind::Session { gap } => {
                return Ok(Box::new(super::session::SessionAggOperator::new(
                    task,
                    gap,
                    parts,
                    self.memory_limit,
                )?));
            }
        };
        Ok(Box::new(WindowAggOperator {
            table: KeyedTable::open(task, "window", self.memory_limit),
            windows: BTreeMap::new(),
            late: LateRows::new(task),
            spec,
            factory: parts,
            allowed_lateness: self.allowed_lateness,
            changelog: (self.allowed_lateness > 0).then(|| self.output_schema()),
            deltas: DeltaPolicy::default(),
        }))
    }
}

impl FactoryParts {
    pub(crate) fn inputs(&self, batch: &RecordBatch) -> Result<AggInputs> {
        AggInputs::of(&self.keys, &self.aggs, &self.filters, batch)
    }

    /// The output batch of closed windows: the window column at its `GROUP BY`
    /// position among the key columns, then the aggregate values.
    pub(crate) fn results(
        &self,
        window: ArrayRef,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.output.fields().len());
        let mut keys = keys.into_iter();
        for i in 0..self.keys.len() + 1 {
            if i == self.window_pos {
                columns.push(window.clone());
            } else {
                columns.push(
                    keys.next().ok_or_else(|| {
                        EngineError::State("window state lost a key column".into())
                    })?,
                );
            }
        }
        columns.extend(values);
        let columns = conform_columns(&self.output, columns)?;
        RecordBatch::try_new(self.output.clone(), columns)
            .map_err(|e| EngineError::arrow("building window results", e))
    }
}

/// Gathers the rows of each closed window from every partition of a window aggregate
/// and emits them as one batch once the watermark has passed the window's end — for
/// window functions over whole windows (Top-N per window). Runs as one task.
pub struct WindowGatherFactory {
    pub(crate) schema: SchemaRef,
    pub(crate) window_column: usize,
}

impl OperatorFactory for WindowGatherFactory {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Always one task (the planner gives it parallelism 1), so its state never has
    /// to be split.
    fn state_kind(&self) -> crate::engine::StateKind {
        crate::engine::StateKind::Checkpointed
    }

    fn describe(&self) -> String {
        format!(
            "gather each closed window ({}) into one batch",
            self.schema.field(self.window_column).name()
        )
    }

    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(Box::new(WindowGather {
            task: task.clone(),
            schema: self.schema.clone(),
            window_column: self.window_column,
            pending: BTreeMap::new(),
        }))
    }
}

struct WindowGather {
    task: TaskInfo,
    schema: SchemaRef,
    window_column: usize,
    /// Rows by window end.
    pending: BTreeMap<i64, Vec<RecordBatch>>,
}

#[async_trait]
impl Operator for WindowGather {
    async fn process_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<()> {
        let windows = batch
            .column(self.window_column)
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| {
                EngineError::Internal("gather: the window column is not a struct".into())
            })?;
        let ends = event_times_ms(windows.column(1).as_ref())?;
        let mut rows: HashMap<i64, Vec<u32>> = HashMap::new();
        for (i, end) in ends.iter().enumerate() {
            rows.entry(end.unwrap_or(i64::MAX))
                .or_default()
                .push(i as u32);
        }
        for (end, idx) in rows {
            let part = if idx.len() == batch.num_rows() {
                batch.clone()
            } else {
                arrow::compute::take_record_batch(&batch, &UInt32Array::from(idx))
                    .map_err(|e| EngineError::arrow("gathering a window", e))?
            };
            self.pending.entry(end).or_default().push(part);
        }
        Ok(())
    }

    async fn handle_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        while let Some((&end, _)) = self.pending.first_key_value() {
            if end > watermark {
                break;
            }
            let (_, batches) = self.pending.pop_first().expect("checked above");
            let whole = arrow::compute::concat_batches(&self.schema, &batches)
                .map_err(|e| EngineError::arrow("gathering a window", e))?;
            out.emit(whole).await?;
        }
        Ok(())
    }

    async fn on_end(&mut self, _out: &mut Collector) -> Result<()> {
        crate::state::keyed::stopped_with_open_state(
            &self.task,
            self.pending.len(),
            "gathered window",
        );
        Ok(())
    }

    /// The rows of each window not yet emitted.
    fn snapshot(&mut self) -> Result<Option<StateBlob>> {
        let mut ends = Vec::with_capacity(self.pending.len());
        let mut batches = Vec::with_capacity(self.pending.len());
        for (end, parts) in &self.pending {
            let whole = arrow::compute::concat_batches(&self.schema, parts)
                .map_err(|e| EngineError::arrow("checkpointing gathered windows", e))?;
            ends.push(*end);
            batches.push(whole.columns().to_vec());
        }
        StateBlob::arrow(&ends, batches).map(Some)
    }

    fn restore(&mut self, states: &[Vec<u8>]) -> Result<()> {
        for state in states {
            let (ends, batches): (Vec<i64>, _) = crate::state::snapshot::decode(state)?;
            for (end, columns) in ends.into_iter().zip(batches) {
                let batch = RecordBatch::try_new(self.schema.clone(), columns)
                    .map_err(|e| EngineError::arrow("restoring gathered windows", e))?;
                self.pending.entry(end).or_default().push(batch);
            }
        }
        Ok(())
    }
}

/// What every window operator needs from the plan.
#[derive(Clone)]
pub(crate) struct FactoryParts {
    /// Position of the window among the `GROUP BY` expressions (and output columns).
    pub(crate) window_pos: usize,
    pub(crate) time: Arc<dyn PhysicalExpr>,
    /// The other `GROUP BY` expressions, in order.
    pub(crate) keys: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) key_schema: SchemaRef,
    pub(crate) aggs: Vec<Arc<AggregateFunctionExpr>>,
    pub(crate) filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// Output: the `GROUP BY` expressions then the aggregates, as DataFusion planned them.
    pub(crate) output: SchemaRef,
}

impl FactoryParts {
    /// One fresh accumulator per aggregate (row accumulators through DataFusion's
    /// adapter).
    fn new_accs(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggs
            .iter()
            .map(|a| {
                if a.groups_accumulator_supported() {
                    a.create_groups_accumulator()
                } else {
                    let a = a.clone();
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        a.create_accumulator()
                    })) as Box<dyn GroupsAccumulator>)
                }
            })
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(df("creating accumulators"))
    }
}

/// The state of one open window: its keys and one accumulator per aggregate.
///
/// Invariant: `key_log` holds the key of every group of `groups`, in group-id order
/// (DataFusion's [`GroupValues`] numbers new groups in order of first appearance, and
/// hands its keys out only destructively). It lets a snapshot read the keys without
/// emptying `groups`, so a checkpoint never rebuilds the window's hash table.
struct WindowState {
    /// `None` when the only `GROUP BY` is the window: then there is one group.
    groups: Option<Box<dyn GroupValues>>,
    key_log: Vec<Vec<ArrayRef>>,
    /// Memory of `key_log`'s arrays, kept as they are added: `size` runs after every
    /// batch, and the log has a chunk per batch that brought new keys.
    logged_bytes: usize,
    accs: Vec<Box<dyn GroupsAccumulator>>,
    group_ids: Vec<usize>,
    /// By group id: whether the group changed since the last snapshot (what a delta
    /// holds).
    changed: Vec<bool>,
    /// With an allowed lateness: the result last emitted (keys, values by group id),
    /// and whether late rows changed the state since.
    emitted: Option<(Vec<ArrayRef>, Vec<ArrayRef>)>,
    dirty: bool,
}

impl WindowState {
    fn size(&self) -> usize {
        self.groups.as_ref().map_or(0, |g| g.size())
            + self.logged_bytes
            + self.changed.capacity()
            + self.accs.iter().map(|a| a.size()).sum::<usize>()
    }

    /// Assigns each of `rows` rows (keyed by `keys`) its group id in `group_ids`,
    /// logging the keys of new groups and marking every group of these rows
    /// changed; returns the number of groups.
    fn intern(&mut self, keys: &[ArrayRef], rows: usize) -> Result<usize> {
        let total = self.intern_keys(keys, rows)?;
        self.changed.resize(total, true);
        for &id in &self.group_ids {
            self.changed[id] = true;
        }
        Ok(total)
    }

    fn intern_keys(&mut self, keys: &[ArrayRef], rows: usize) -> Result<usize> {
        self.group_ids.clear();
        let Some(g) = self.groups.as_mut() else {
            // No GROUP BY besides the window: one group.
            self.group_ids.resize(rows, 0);
            return Ok(1);
        };
        let before = g.len();
        g.intern(keys, &mut self.group_ids)
            .map_err(df("grouping rows"))?;
        let total = g.len();
        if total > before {
            // A new group's id first appears at the row that created it.
            let mut next = before;
            let mut firsts = Vec::with_capacity(total - before);
            for (row, &id) in self.group_ids.iter().enumerate() {
                if id == next {
                    firsts.push(row as u32);
                    next += 1;
                }
            }
            let idx = UInt32Array::from(firsts);
            let new_keys = keys
                .iter()
                .map(|k| take(k.as_ref(), &idx, None))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| EngineError::arrow("logging new window keys", e))?;
            self.logged_bytes += new_keys
                .iter()
                .map(|c| c.get_array_memory_size())
                .sum::<usize>();
            self.key_log.push(new_keys);
        }
        Ok(total)
    }

    /// Every group's key columns in group-id order (empty without keys), leaving the
    /// state as it was.
    fn keys(&mut self) -> Result<Vec<ArrayRef>> {
        if self.key_log.len() > 1 {
            let columns = (0..self.key_log[0].len())
                .map(|c| {
                    let parts: Vec<&dyn Array> =
                        self.key_log.iter().map(|chunk| chunk[c].as_ref()).collect();
                    arrow::compute::concat(&parts)
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| EngineError::arrow("reading window keys", e))?;
            self.logged_bytes = columns.iter().map(|c| c.get_array_memory_size()).sum();
            self.key_log = vec![columns];
        }
        Ok(self.key_log.first().cloned().unwrap_or_default())
    }

    /// Each aggregate's intermediate state, by group id, leaving the accumulators as
    /// they were: DataFusion's accumulators hand their state out destructively, so it
    /// is merged back into fresh ones (group ids unchanged, no keys hashed).
    fn intermediates(
        &mut self,
        fresh: Vec<Box<dyn GroupsAccumulator>>,
    ) -> Result<Vec<Vec<ArrayRef>>> {
        let n = self.groups.as_ref().map_or(1, |g| g.len());
        let ids: Vec<usize> = (0..n).collect();
        let mut out = Vec::with_capacity(self.accs.len());
        for (acc, mut kept) in self.accs.iter_mut().zip(fresh) {
            let state = acc.state(EmitTo::All).map_err(df("reading window state"))?;
            kept.merge_batch(&state, &ids, n)
                .map_err(df("restoring window state"))?;
            *acc = kept;
            out.push(state);
        }
        Ok(out)
    }
}

struct WindowAggOperator {
    /// The task's state bookkeeping: size, watermark, snapshots' form.
    table: KeyedTable,
    spec: WindowSpec,
    factory: FactoryParts,
    /// Open windows by start.
    windows: BTreeMap<i64, WindowState>,
    late: LateRows,
    allowed_lateness: i64,
    /// With an allowed lateness: the output schema (with its op column).
    changelog: Option<SchemaRef>,
    deltas: DeltaPolicy,
}

impl WindowAggOperator {
    fn new_window(&self) -> Result<WindowState> {
        let groups = if self.factory.keys.is_empty() {
            None
        } else {
            Some(
                new_group_values(self.factory.key_schema.clone(), &GroupOrdering::None)
                    .map_err(df("creating window state"))?,
            )
        };
        Ok(WindowState {
            groups,
            key_log: Vec::new(),
            logged_bytes: 0,
            accs: self.factory.new_accs()?,
            group_ids: Vec::new(),
            changed: Vec::new(),
            emitted: None,
            dirty: false,
        })
    }

    /// A window's current keys and results, leaving its state as it was.
    fn current_results(&self, state: &mut WindowState) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let keys = state.keys()?;
        let intermediates = state.intermediates(self.factory.new_accs()?)?;
        let n = keys.first().map_or(1, |k| k.len());
        let ids: Vec<usize> = (0..n).collect();
        let mut values = Vec::with_capacity(intermediates.len());
        for (mut acc, state) in self.factory.new_accs()?.into_iter().zip(&intermediates) {
            acc.merge_batch(state, &ids, n)
                .map_err(df("copying window state"))?;
            values.push(
                acc.evaluate(EmitTo::All)
                    .map_err(df("evaluating aggregates"))?,
            );
        }
        Ok((keys, values))
    }

    /// The output batch of rows `rows` of a window's keys and values, tagged with `op`
    /// when the output is a changelog; `None` for no rows.
    fn result_rows(
        &self,
        start: i64,
        (keys, values): (&[ArrayRef], &[ArrayRef]),
        rows: &[u32],
        op: super::updating::Op,
    ) -> Result<Option<RecordBatch>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let idx = UInt32Array::from(rows.to_vec());
        let pick = |a: &ArrayRef| {
            take(a.as_ref(), &idx, None).map_err(|e| EngineError::arrow("selecting results", e))
        };
        let keys = keys.iter().map(pick).collect::<Result<Vec<_>>>()?;
        let values = values.iter().map(pick).collect::<Result<Vec<_>>>()?;
        let width = self.spec.width();
        let n = rows.len();
        let window = window_array(
            TimestampMillisecondArray::from(vec![start; n]).with_timezone(TZ),
            TimestampMillisecondArray::from(vec![start + width; n]).with_timezone(TZ),
        );
        let batch = self.factory.results(window, keys, values)?;
        match &self.changelog {
            Some(schema) => {
                super::updating::tag(batch, &super::updating::op_array(op), schema).map(Some)
            }
            None => Ok(Some(batch)),
        }
    }

    /// With an allowed lateness: emits every window that has ended and not been
    /// emitted (`+I`), re-emits those late rows changed (`-U`/`+U`, `+I` for new keys),
    /// and drops those past their lateness.
    async fn fire_updating(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        use super::updating::Op;
        let width = self.spec.width();
        let due: Vec<i64> = self
            .windows
            .iter()
            .take_while(|(start, _)| start.saturating_add(width) <= watermark)
            .filter(|(_, w)| w.emitted.is_none() || w.dirty)
            .map(|(start, _)| *start)
            .collect();
        let mut batches = Vec::new();
        for start in due {
            let mut state = self.windows.remove(&start).expect("listed above");
            let (keys, values) = self.current_results(&mut state)?;
            let n = values.first().map_or(0, |v| v.len()) as u32;
            match state.emitted.take() {
                None => {
                    let all: Vec<u32> = (0..n).collect();
                    batches.push(self.result_rows(start, (&keys, &values), &all, Op::Insert)?);
                }
                Some((old_keys, old_values)) => {
                    let before = old_values.first().map_or(0, |v| v.len()) as u32;
                    let same = |i: usize| {
                        old_values.iter().zip(&values).all(|(o, v)| {
                            ScalarValue::try_from_array(o, i).ok()
                                == ScalarValue::try_from_array(v, i).ok()
                        })
                    };
                    let changed: Vec<u32> = (0..before).filter(|&i| !same(i as usize)).collect();
                    let added: Vec<u32> = (before..n).collect();
                    batches.push(self.result_rows(
                        start,
                        (&old_keys, &old_values),
                        &changed,
                        Op::UpdateBefore,
                    )?);
                    batches.push(self.result_rows(
                        start,
                        (&keys, &values),
                        &changed,
                        Op::UpdateAfter,
                    )?);
                    batches.push(self.result_rows(start, (&keys, &values), &added, Op::Insert)?);
                }
            }
            state.emitted = Some((keys, values));
            state.dirty = false;
            self.windows.insert(start, state);
        }
        for b in batches.into_iter().flatten() {
            emit_in_slices(out, b).await?;
        }
        // Past their lateness, windows take no more rows: forget them.
        let lateness = self.allowed_lateness;
        self.windows
            .retain(|start, _| start.saturating_add(width).saturating_add(lateness) > watermark);
        Ok(())
    }

    /// Emits every window that ends at or before `watermark`, oldest first.
    async fn fire(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        if self.changelog.is_some() {
            return self.fire_updating(watermark, out).await;
        }
        let width = self.spec.width();
        while let Some((&start, _)) = self.windows.first_key_value() {
            if start.saturating_add(width) > watermark {
                break;
            }
            let (_, mut state) = self.windows.pop_first().expect("checked above");
            let keys = match state.groups.as_mut() {
                Some(g) => g.emit(EmitTo::All).map_err(df("emitting window keys"))?,
                None => vec![],
            };
            let n = keys.first().map_or(1, |k| k.len());
            let mut values = Vec::with_capacity(state.accs.len());
            for acc in state.accs.iter_mut() {
                values.push(
                    acc.evaluate(EmitTo::All)
                        .map_err(df("evaluating aggregates"))?,
                );
            }
            let rows = values.first().map(|v| v.len()).unwrap_or(n);
            let window = window_array(
                TimestampMillisecondArray::from(vec![start; rows]).with_timezone(TZ),
                TimestampMillisecondArray::from(vec![start + width; rows]).with_timezone(TZ),
            );
            let batch = self.factory.results(window, keys, values)?;
            emit_in_slices(out, batch).await?;
        }
        Ok(())
    }

    /// Publishes the state size and fails when it is over the limit.
    fn check_state(&self) -> Result<()> {
        let bytes: usize = self.windows.values().map(WindowState::size).sum();
        self.table.report(
            bytes,
            || format!("in {} open window(s)", self.windows.len()),
            "raise the limit, use shorter windows or fewer keys, or run at a higher parallelism",
        )
    }
}

#[async_trait]
impl Operator for WindowAggOperator {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let n = batch.num_rows();
        let times = evaluate(&self.factory.time, &batch)?;
        let times = event_times_ms(times.as_ref())?;
        // Rows of each window, by window start.
        let mut by_window: HashMap<i64, Vec<u32>> = HashMap::new();
        let mut late: Vec<(u32, i64)> = Vec::new();
        let mut null_times: Vec<u32> = Vec::new();
        let width = self.spec.width();
        let watermark = self.table.watermark();
        // A window takes rows until the watermark passes its end plus the lateness.
        let open_until = width.saturating_add(self.allowed_lateness);
        for (row, t) in times.iter().enumerate() {
            let Some(t) = t else {
                null_times.push(row as u32);
                continue;
            };
            let mut placed = false;
            let mut any = false;
            self.spec.starts(t, |start| {
                any = true;
                if start.saturating_add(open_until) > watermark {
                    placed = true;
                    by_window.entry(start).or_default().push(row as u32);
                }
            });
            if any && !placed {
                late.push((row as u32, t));
            }
        }
        if !late.is_empty() || !null_times.is_empty() {
            let spec = &self.spec;
            let why = |t: i64| {
                let mut missed = Vec::new();
                spec.starts(t, |start| {
                    missed.push(format!("[{start}, {})", start + width))
                });
                format!("its window {} (ms) was already emitted", missed.join(", "))
            };
            self.late.report(
                self.table.task(),
                out,
                watermark,
                &batch,
                &late,
                &why,
                &null_times,
            );
        }
        if by_window.is_empty() {
            return Ok(());
        }
        let AggInputs {
            keys,
            args,
            filters,
        } = self.factory.inputs(&batch)?;
        // Rows for windows that have ended (within the allowed lateness) update them.
        let updates_ended = by_window
            .keys()
            .any(|start| start.saturating_add(width) <= watermark);
        for (start, rows) in by_window {
            if !self.windows.contains_key(&start) {
                let w = self.new_window()?;
                self.windows.insert(start, w);
            }
            let state = self.windows.get_mut(&start).expect("inserted above");
            state.dirty = state.emitted.is_some();
            let pick = |a: &ArrayRef| -> Result<ArrayRef> {
                if rows.len() == n {
                    Ok(a.clone())
                } else {
                    take(a.as_ref(), &UInt32Array::from(rows.clone()), None)
                        .map_err(|e| EngineError::arrow("selecting a window's rows", e))
                }
            };
            let key_cols: Vec<ArrayRef> = keys.iter().map(pick).collect::<Result<_>>()?;
            let total = state.intern(&key_cols, rows.len())?;
            for (i, acc) in state.accs.iter_mut().enumerate() {
                let values: Vec<ArrayRef> = args[i].iter().map(pick).collect::<Result<_>>()?;
                let filter = filters[i].as_ref().map(pick).transpose()?;
                let filter = filter
                    .as_ref()
                    .and_then(|f| f.as_any().downcast_ref::<BooleanArray>());
                acc.update_batch(&values, &state.group_ids, filter, total)
                    .map_err(df("updating aggregates"))?;
            }
        }
        if updates_ended {
            self.fire_updating(watermark, out).await?;
        }
        self.check_state()
    }

    async fn handle_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        let watermark = self.table.advance(watermark);
        self.fire(watermark, out).await?;
        self.check_state()
    }

    async fn on_end(&mut self, _out: &mut Collector) -> Result<()> {
        self.table.stopped(self.windows.len(), "window");
        Ok(())
    }

    /// Each open window's keys and its accumulators' intermediate state, with the
    /// watermark; the windows are left as they were.
    fn snapshot(&mut self) -> Result<Option<StateBlob>> {
        self.deltas.full();
        let (header, batches) = self.capture(false)?;
        self.table
            .snapshot(self.factory.keys.len(), header, batches)
            .map(Some)
    }

    /// Only the groups changed since the last snapshot, in the windows that have any,
    /// and which windows are open (a full snapshot when [`DeltaPolicy`] says so).
    fn snapshot_changes(&mut self) -> Result<Option<StateBlob>> {
        let total: usize = self.windows.values().map(|w| w.changed.len()).sum();
        let changed: usize = self
            .windows
            .values()
            .map(|w| w.changed.iter().filter(|c| **c).count())
            .sum();
        if !self.deltas.delta(changed, total) {
            return self.snapshot();
        }
        let (header, batches) = self.capture(true)?;
        let changes = self
            .table
            .snapshot(self.factory.keys.len(), header, batches)?;
        Ok(Some(StateBlob::delta(changes)))
    }

    fn restore(&mut self, states: &[Vec<u8>]) -> Result<()> {
        self.restore_chains(states.iter().map(|s| vec![s.clone()]).collect())
    }

    fn restore_chains(&mut self, chains: Vec<Chain>) -> Result<()> {
        // Several states after a change of parallelism: each key goes to the task that
        // owns its key group now; the watermark is the lowest of the old tasks'.
        for chain in chains {
            let (header, windows) = self.apply_chain(&chain)?;
            self.table.restored(header.watermark);
            for (start, columns) in windows {
                let rows = self.table.own(columns, header.keys)?;
                let n = rows.keys.first().map_or(1, |k| k.len());
                if n == 0 {
                    continue;
                }
                let (states, _) = split_states(&rows.values, &header.operator.widths);
                self.merge_into(start, &rows.keys, &states, n)?;
            }
        }
        if self.changelog.is_some() {
            // Every snapshot is taken with each ended window emitted and unchanged since
            // (process_batch and handle_watermark fire them before returning), and
            // every task of the node holds the same watermark at a barrier: so an ended
            // window's last result is the one its restored state gives.
            let width = self.spec.width();
            let watermark = self.table.watermark();
            let ended: Vec<i64> = self
                .windows
                .keys()
                .copied()
                .take_while(|start| start.saturating_add(width) <= watermark)
                .collect();
            for start in ended {
                let mut state = self.windows.remove(&start).expect("listed above");
                state.emitted = Some(self.current_results(&mut state)?);
                self.windows.insert(start, state);
            }
        }
        self.check_state()
    }
}

impl WindowAggOperator {
    /// The open windows' keys and state columns, with the header describing them: of
    /// every group, or (`changes_only`) of the groups changed since the last snapshot,
    /// leaving out windows without any. Either way every group counts as unchanged
    /// afterwards.
    fn capture(&mut self, changes_only: bool) -> Result<(WindowFields, Vec<Vec<ArrayRef>>)> {
        let mut header = WindowFields {
            starts: Vec::with_capacity(self.windows.len()),
            widths: Vec::new(),
            open: if changes_only {
                self.windows.keys().copied().collect()
            } else {
                Vec::new()
            },
        };
        let mut batches = Vec::with_capacity(self.windows.len());
        for (start, state) in self.windows.iter_mut() {
            let rows: Vec<u32> = if changes_only {
                (0..state.changed.len() as u32)
                    .filter(|&i| state.changed[i as usize])
                    .collect()
            } else {
                Vec::new()
            };
            state.changed.fill(false);
            if changes_only && rows.is_empty() {
                continue;
            }
            let mut columns = state.keys()?;
            let intermediates = state.intermediates(self.factory.new_accs()?)?;
            header.widths = intermediates.iter().map(Vec::len).collect();
            columns.extend(intermediates.into_iter().flatten());
            if changes_only && rows.len() < state.changed.len() {
                let idx = UInt32Array::from(rows);
                columns = columns
                    .iter()
                    .map(|c| take(c.as_ref(), &idx, None))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| EngineError::arrow("selecting changed window state", e))?;
            }
            header.starts.push(*start);
            batches.push(columns);
        }
        Ok((header, batches))
    }

    /// One old task's state from its chain (a full snapshot, then deltas): the last
    /// header (watermark, layout) and each window still open with its groups' rows,
    /// the latest row of each key.
    fn apply_chain(
        &self,
        chain: &[Vec<u8>],
    ) -> Result<(KeyedHeader<WindowFields>, Vec<(i64, Vec<ArrayRef>)>)> {
        let mut layers: BTreeMap<i64, Vec<Vec<ArrayRef>>> = BTreeMap::new();
        let mut last: Option<KeyedHeader<WindowFields>> = None;
        let mut widths = Vec::new();
        // The first link is a full snapshot, the others deltas (see `Chain`).
        for link in chain {
            let (header, batches) = self.table.decode::<WindowFields>(link)?;
            let fields = &header.operator;
            if last.is_some() {
                let open: std::collections::BTreeSet<i64> = fields.open.iter().copied().collect();
                layers.retain(|start, _| open.contains(start));
            }
            for (start, columns) in fields.starts.iter().zip(batches) {
                layers.entry(*start).or_default().push(columns);
            }
            if !fields.widths.is_empty() {
                widths = fields.widths.clone();
            }
            last = Some(header);
        }
        let Some(mut header) = last else {
            return Err(EngineError::State("restoring window state: an empty chain".into()).into());
        };
        header.operator.widths = widths;
        let windows = layers
            .into_iter()
            .map(|(start, layers)| Ok((start, self.latest_per_key(layers, header.keys)?)))
            .collect::<Result<_>>()?;
        Ok((header, windows))
    }

    /// The rows of `layers` (state batches of one window, oldest first, the first
    /// `keys` columns its keys) with only the last row of each key.
    fn latest_per_key(&self, mut layers: Vec<Vec<ArrayRef>>, keys: usize) -> Result<Vec<ArrayRef>> {
        if layers.len() == 1 || keys == 0 {
            // One layer holds each key once; without keys a window has one group.
            return Ok(layers.pop().expect("a window has a layer"));
        }
        let arrow = |e| EngineError::arrow("restoring window state", e);
        let columns = (0..layers[0].len())
            .map(|c| {
                let parts: Vec<&dyn Array> = layers.iter().map(|l| l[c].as_ref()).collect();
                arrow::compute::concat(&parts)
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(arrow)?;
        let mut groups = new_group_values(self.factory.key_schema.clone(), &GroupOrdering::None)
            .map_err(df("restoring window state"))?;
        let mut ids = Vec::new();
        groups
            .intern(&columns[..keys], &mut ids)
            .map_err(df("restoring window state"))?;
        let mut latest = vec![0u32; groups.len()];
        for (row, id) in ids.iter().enumerate() {
            latest[*id] = row as u32;
        }
        let idx = UInt32Array::from(latest);
        columns
            .iter()
            .map(|c| take(c.as_ref(), &idx, None))
            .collect::<std::result::Result<_, _>>()
            .map_err(arrow)
    }

    /// Adds checkpointed keys and their aggregate state to window `start`.
    fn merge_into(
        &mut self,
        start: i64,
        keys: &[ArrayRef],
        intermediates: &[Vec<ArrayRef>],
        n: usize,
    ) -> Result<()> {
        if !self.windows.contains_key(&start) {
            let w = self.new_window()?;
            self.windows.insert(start, w);
        }
        let w = self.windows.get_mut(&start).expect("inserted above");
        let total = w.intern(keys, n)?;
        for (acc, state) in w.accs.iter_mut().zip(intermediates) {
            acc.merge_batch(state, &w.group_ids, total)
                .map_err(df("restoring window state"))?;
        }
        Ok(())
    }
}

/// A window operator's own fields in its snapshots' header (with the watermark and
/// the key columns, see [`KeyedHeader`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct WindowFields {
    /// Open windows' starts, in the order of the state batches.
    starts: Vec<i64>,
    /// State columns of each aggregate.
    widths: Vec<usize>,
    /// In a delta (which holds only the groups changed since the previous snapshot, of
    /// the windows in `starts`): every open window; those not listed were emitted
    /// since.
    #[serde(default)]
    open: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use crate::testing::sorted_json_lines;
    use std::sync::{Arc, Mutex};

    use arrow::array::RecordBatch;
    use datafusion::prelude::SessionContext;

    use crate::connectors::blackhole::BlackholeSink;
    use crate::connectors::memory::MemorySource;
    use crate::pipeline::PipelineBuilder;
    use crate::testing::kvt_batch;

    /// Runs `query` over Nexmark bids (every window emitted at the end of input) and
    /// returns the input rows and the results.
    async fn run(query: &str, parallelism: usize) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
        let input = Arc::new(Mutex::new(Vec::new()));
        let mut p = PipelineBuilder::new("t").parallelism(parallelism);
        let src = p
            .source_sql(
                "CREATE TABLE raw WITH (connector = 'generator', world = 'nexmark', stream = 'bids', \
                 count = '20000', rate = '0', event_time_field = 'date_time', watermark_delay = '1h')",
            )
            .unwrap();
        let schema = p.schema(&src);
        let seen = input.clone();
        let src = p.map(src, "bids", schema, move |b| {
            seen.lock().unwrap().push(b.clone());
            Ok(b)
        });
        let out = p.sql(src, query).await.unwrap();
        let results = p.collect(out, "results").unwrap();
        p.run_to_completion().await.unwrap();
        let i = input.lock().unwrap().clone();
        (i, results.batches())
    }

    /// Aggregates with groups accumulators, with row accumulators only (through the
    /// adapter), with distinct and approximate state, and a FILTER clause: each must
    /// equal DataFusion batch over the same rows, at parallelism 1 and 2. (Groups hold
    /// fewer values than the t-digest's centroids, so the percentile is exact whatever
    /// the arrival order.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_kind_of_aggregate_equals_datafusion_batch() {
        let aggs = "count(*) AS n, sum(price) AS total, min(price) AS lo, max(price) AS hi, \
                    count(DISTINCT bidder) AS bidders, approx_distinct(bidder) AS approx_bidders, \
                    median(price) AS med, approx_percentile_cont(0.9) WITHIN GROUP (ORDER BY price) AS p90, \
                    array_length(array_agg(DISTINCT channel)) AS channels, \
                    count(*) FILTER (WHERE price > 1000) AS big, bool_or(price > 5000) AS any_huge, \
                    stddev_pop(price) > -1 AS has_stddev";
        let streaming = format!(
            "SELECT CAST(w['start'] AS BIGINT) AS ws, k, n, total, lo, hi, bidders, approx_bidders, med, p90, \
             channels, big, any_huge, has_stddev FROM (SELECT tumble(INTERVAL '10 milliseconds') AS w, auction % 50 AS k, \
             {aggs} FROM bids GROUP BY w, k HAVING count(*) > 1)"
        );
        let batch_query = format!(
            "SELECT CAST(date_bin(INTERVAL '10 milliseconds', date_time, TIMESTAMP '1970-01-01T00:00:00Z') AS BIGINT) \
             / 1000000 AS ws, \
             auction % 50 AS k, {aggs} FROM bids GROUP BY ws, k HAVING count(*) > 1"
        );
        for parallelism in [1, 2] {
            let (input, output) = run(&streaming, parallelism).await;
            let ctx = SessionContext::new();
            let schema = input[0].schema();
            ctx.register_table(
                "bids",
                Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![input]).unwrap()),
            )
            .unwrap();
            let expected = ctx
                .sql(&batch_query)
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let expected = sorted_json_lines(&expected);
            assert!(expected.len() > 100, "{} groups", expected.len());
            assert_eq!(
                sorted_json_lines(&output),
                expected,
                "parallelism {parallelism}"
            );
        }
    }

    /// One event of a property-test input: key, value, and event time.
    #[derive(Debug, Clone)]
    struct Ev {
        key: i64,
        value: i64,
        ts: i64,
    }

    /// Events whose times advance with jitter (out of order) and, now and then, a
    /// much older one (late).
    fn events() -> impl proptest::strategy::Strategy<Value = Vec<Ev>> {
        use proptest::prelude::*;
        prop::collection::vec((0i64..4, -50i64..50, 0i64..40, 0u8..20, 0i64..400), 1..120).prop_map(
            |raw| {
                let mut clock = 1_000_000i64;
                raw.into_iter()
                    .map(|(key, value, jitter, late_draw, late_by)| {
                        clock += 7;
                        let ts = if late_draw == 0 {
                            clock - 100 - late_by
                        } else {
                            clock - jitter
                        };
                        Ev { key, value, ts }
                    })
                    .collect()
            },
        )
    }

    fn ev_batch(events: &[Ev]) -> RecordBatch {
        let rows: Vec<(i64, i64, i64)> = events.iter().map(|e| (e.key, e.value, e.ts)).collect();
        crate::testing::kvt_batch(&rows)
    }

    /// The streaming result of `query` over `events`, one event per batch, watermark
    /// `delay` ms behind the newest event.
    async fn stream(events: &[Ev], delay: u64, query: &str) -> Vec<RecordBatch> {
        stream_in_batches(events, 1, delay, query).await
    }

    /// DataFusion batch over the (event, window start) pairs that the lateness rule
    /// keeps: an event is dropped from a window that ended at or before the watermark
    /// it met (the newest earlier event time minus the delay).
    async fn oracle(events: &[Ev], delay: i64, slide: i64, width: i64) -> Vec<RecordBatch> {
        oracle_with(events, delay, slide, width, 0).await
    }

    /// The oracle when windows take late rows for `lateness` ms after their end.
    async fn oracle_with(
        events: &[Ev],
        delay: i64,
        slide: i64,
        width: i64,
        lateness: i64,
    ) -> Vec<RecordBatch> {
        let mut kept = Vec::new();
        let mut starts = Vec::new();
        let mut newest: Option<i64> = None;
        for e in events {
            let watermark = newest.map_or(i64::MIN, |n| n - delay);
            super::WindowSpec::Hop { slide, width }.starts(e.ts, |s| {
                if s + width + lateness > watermark {
                    kept.push(e.clone());
                    starts.push(s);
                }
            });
            newest = Some(newest.map_or(e.ts, |n| n.max(e.ts)));
        }
        let rows = ev_batch(&kept);
        let ctx = SessionContext::new();
        ctx.register_batch("ev", rows.clone()).unwrap();
        let ws = arrow::array::Int64Array::from(starts);
        let with_ws = RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new("k", arrow::datatypes::DataType::Int64, false),
                arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
                arrow::datatypes::Field::new("ws", arrow::datatypes::DataType::Int64, false),
            ])),
            vec![rows.column(0).clone(), rows.column(1).clone(), Arc::new(ws)],
        )
        .unwrap();
        ctx.register_batch("pairs", with_ws).unwrap();
        ctx.sql(
            "SELECT ws, k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi, count(DISTINCT v) AS d \
             FROM pairs GROUP BY ws, k",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 48, ..Default::default() })]

        /// Tumbling and hopping windows over out-of-order input with late events equal
        /// DataFusion batch over the same input with the lateness rule applied.
        #[test]
        fn windows_equal_batch_with_lateness_applied(evs in events(), delay in 0u64..60, hop in proptest::bool::ANY) {
            let (slide, width, window) = if hop {
                (25, 75, "hop(INTERVAL '25 milliseconds', INTERVAL '75 milliseconds')")
            } else {
                (50, 50, "tumble(INTERVAL '50 milliseconds')")
            };
            let query = format!(
                "SELECT CAST(w['start'] AS BIGINT) AS ws, k, n, s, lo, hi, d FROM \
                 (SELECT {window} AS w, k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi, \
                 count(DISTINCT v) AS d FROM ev GROUP BY w, k)"
            );
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let (got, expected) = rt.block_on(async {
                (stream(&evs, delay, &query).await, oracle(&evs, delay as i64, slide, width).await)
            });
            proptest::prop_assert_eq!(sorted_json_lines(&got), sorted_json_lines(&expected));
        }
    }

    /// The rows the window operator of `query` over `ev` emits, one event per batch
    /// with the watermark `delay` ms behind the newest event, checkpointed after event
    /// `i` as `cuts[i]` says (see [`drive_node`](crate::testing::drive_node)).
    async fn drive_window(
        events: &[Ev],
        delay: i64,
        query: &str,
        lateness: Option<u64>,
        cuts: &[u8],
    ) -> Vec<String> {
        let source =
            crate::connectors::memory::MemorySource::new(ev_batch(&[]).schema(), vec![]).unwrap();
        let mut p = PipelineBuilder::new("drive");
        if let Some(l) = lateness {
            p = p.allowed_lateness(std::time::Duration::from_millis(l));
        }
        let src = p.source("ev", Arc::new(source));
        p.event_time(&src, "ts", std::time::Duration::from_millis(delay as u64))
            .unwrap();
        let out = p.sql(src, query).await.unwrap();
        p.collect(out, "results").unwrap();
        let mut newest = i64::MIN;
        let steps: Vec<(usize, RecordBatch, Option<i64>)> = events
            .iter()
            .map(|ev| {
                newest = newest.max(ev.ts);
                (0, ev_batch(std::slice::from_ref(ev)), Some(newest - delay))
            })
            .collect();
        let out = crate::testing::drive_node(&p.build(), "window aggregate", &steps, cuts).await;
        sorted_json_lines(&out)
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 32, ..Default::default() })]

        /// Snapshots taken anywhere leave a window operator's results unchanged, and
        /// operators restored from them, at another parallelism too, go on as the
        /// original would: the same rows (with an allowed lateness, the same changelog)
        /// as a run without checkpoints, for tumbling, hopping and session windows.
        #[test]
        fn snapshots_and_restores_anywhere_leave_the_results_unchanged(
            evs in events(),
            delay in 0i64..40,
            lateness in proptest::option::of(1u64..150),
            kind in 0u8..3,
            cuts in proptest::collection::vec(0u8..4, 0..120),
        ) {
            let (window, lateness) = match kind {
                0 => ("tumble(INTERVAL '50 milliseconds')", lateness),
                1 => ("hop(INTERVAL '25 milliseconds', INTERVAL '75 milliseconds')", lateness),
                // Sessions take no allowed lateness.
                _ => ("session(INTERVAL '20 milliseconds')", None),
            };
            let query = format!(
                "SELECT CAST(w['start'] AS BIGINT) AS ws, k, n, s, lo, hi, d FROM \
                 (SELECT {window} AS w, k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi, \
                 count(DISTINCT v) AS d FROM ev GROUP BY w, k)"
            );
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (plain, cut) = rt.block_on(async {
                (
                    drive_window(&evs, delay, &query, lateness, &[]).await,
                    drive_window(&evs, delay, &query, lateness, &cuts).await,
                )
            });
            proptest::prop_assert!(!plain.is_empty());
            proptest::prop_assert_eq!(cut, plain);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 32, ..Default::default() })]

        /// With an allowed lateness, late rows within it update emitted windows: the
        /// changelog, applied in order, equals DataFusion batch over the rows the
        /// lateness rule keeps (a row is dropped only from windows that ended more than
        /// the lateness before the watermark it met), and never retracts a row it did
        /// not emit.
        #[test]
        fn late_rows_within_the_allowed_lateness_update_windows(
            evs in events(),
            delay in 0u64..40,
            lateness in 1u64..150,
            hop in proptest::bool::ANY,
        ) {
            let (slide, width, window) = if hop {
                (25, 75, "hop(INTERVAL '25 milliseconds', INTERVAL '75 milliseconds')")
            } else {
                (50, 50, "tumble(INTERVAL '50 milliseconds')")
            };
            let query = format!(
                "SELECT CAST(w['start'] AS BIGINT) AS ws, k, n, s, lo, hi, d FROM \
                 (SELECT {window} AS w, k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi, \
                 count(DISTINCT v) AS d FROM ev GROUP BY w, k)"
            );
            // One row per batch: the watermark each row meets is the oracle's.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let (got, expected) = rt.block_on(async {
                (
                    stream_with(&evs, 1, delay, &query, Some(lateness)).await,
                    oracle_with(&evs, delay as i64, slide, width, lateness as i64).await,
                )
            });
            proptest::prop_assert_eq!(
                crate::operators::updating::apply_changelog(&got),
                Ok(sorted_json_lines(&expected))
            );
        }
    }

    /// Partition 1 of the source never sends anything and never ends. Once it has been
    /// silent for the idle timeout, partition 0's watermark alone closes the window,
    /// while the pipeline is still running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_partition_does_not_hold_windows_open() {
        let events: Vec<Ev> = (0..5)
            .map(|i| Ev {
                key: 1,
                value: i,
                ts: i * 10,
            })
            .chain([Ev {
                key: 1,
                value: 100,
                ts: 200,
            }])
            .collect();
        let p0: Vec<RecordBatch> = events
            .iter()
            .map(|e| ev_batch(std::slice::from_ref(e)))
            .collect();
        let source =
            crate::connectors::memory::MemorySource::new(ev_batch(&[]).schema(), vec![p0, vec![]])
                .unwrap()
                .unbounded();
        let mut p = PipelineBuilder::new("idle")
            .parallelism(2)
            .idle_timeout(std::time::Duration::from_millis(100));
        let src = p.source("ev", Arc::new(source));
        p.event_time(&src, "ts", std::time::Duration::ZERO).unwrap();
        let out = p
            .sql(src, "SELECT CAST(w['start'] AS BIGINT) AS ws, n, s FROM \
                       (SELECT tumble(INTERVAL '50 milliseconds') AS w, count(*) AS n, sum(v) AS s FROM ev GROUP BY w)")
            .await
            .unwrap();
        let mut rx = crate::testing::tap(&mut p, out);
        let handle = crate::engine::Runtime::start(p.build(), Default::default()).unwrap();
        let first = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
            .await
            .expect("the window was not emitted while partition 1 was idle")
            .unwrap();
        assert_eq!(
            sorted_json_lines(&[first]),
            vec![r#"{"ws":0,"n":5,"s":10}"#.to_string()]
        );
        handle.stop();
        handle.wait().await.unwrap();
        // Stopping is not the end of time: the open window [200, 250) is incomplete and
        // is not emitted.
        let rest: Vec<RecordBatch> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(
            sorted_json_lines(&rest).is_empty(),
            "{:?}",
            sorted_json_lines(&rest)
        );
    }

    /// In processing time, a window closes by the wall clock while the input is quiet:
    /// the source sends three rows and then nothing, never ending, and the window
    /// holding them is emitted anyway.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processing_time_windows_close_while_the_input_is_quiet() {
        let source = MemorySource::new(
            kvt_batch(&[]).schema(),
            vec![vec![kvt_batch(&[(1, 1, 0), (1, 2, 0), (2, 3, 0)])]],
        )
        .unwrap()
        .unbounded();
        let mut p = PipelineBuilder::new("proctime");
        let src = p.source("ev", Arc::new(source));
        let src = p.processing_time(src, "arrived").unwrap();
        let out = p
            .sql(
                src,
                "SELECT n, s FROM (SELECT tumble(INTERVAL '50 milliseconds') AS w, \
                       count(*) AS n, sum(v) AS s FROM ev GROUP BY w)",
            )
            .await
            .unwrap();
        let mut rx = crate::testing::tap(&mut p, out);
        let handle = crate::engine::Runtime::start(p.build(), Default::default()).unwrap();
        let first = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
            .await
            .expect("the processing-time window was not emitted")
            .unwrap();
        handle.stop();
        handle.wait().await.unwrap();
        assert_eq!(
            sorted_json_lines(&[first]),
            vec![r#"{"n":3,"s":6}"#.to_string()]
        );
    }

    /// Over the state memory limit the pipeline fails, naming the window operator.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_over_the_memory_limit_fails_loudly() {
        let mut p = PipelineBuilder::new("limit").state_memory_limit(64 * 1024);
        let src = p
            .source_sql(
                "CREATE TABLE bids WITH (connector = 'generator', world = 'nexmark', stream = 'bids', \
                 count = '200000', rate = '0', event_time_field = 'date_time', watermark_delay = '1h')",
            )
            .unwrap();
        let out = p
            .sql(src, "SELECT tumble(INTERVAL '1' DAY) AS w, bidder, count(*) AS n FROM bids GROUP BY w, bidder")
            .await
            .unwrap();
        p.sink(out, "blackhole", Arc::new(BlackholeSink::new(None)))
            .unwrap();
        let err = p.run_to_completion().await.unwrap_err().to_string();
        assert!(err.contains("limit/bids_sql_window[0/1]"), "{err}");
        assert!(
            err.contains("over the limit of 65536 (state.memory_limit)"),
            "{err}"
        );
    }

    fn session_events() -> impl proptest::strategy::Strategy<Value = Vec<Ev>> {
        use proptest::prelude::*;
        prop::collection::vec((0i64..3, -50i64..50, 0i64..30, 0i64..40), 1..100).prop_map(|raw| {
            let mut clock = 1_000_000i64;
            raw.into_iter()
                .map(|(key, value, step, jitter)| {
                    clock += step;
                    Ev {
                        key,
                        value,
                        ts: clock - jitter,
                    }
                })
                .collect()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 48, ..Default::default() })]

        /// Session windows over out-of-order input (nothing late): out-of-order rows that
        /// bridge two sessions merge them, and the result equals DataFusion batch over
        /// gaps-and-islands computed apart.
        #[test]
        fn sessions_equal_batch_over_islands(evs in session_events(), one_row_batches in proptest::bool::ANY) {
            const GAP: i64 = 20;
            let query = "SELECT CAST(w['start'] AS BIGINT) AS ws, CAST(w['end'] AS BIGINT) AS we, k, n, s, lo, hi \
                         FROM (SELECT session(INTERVAL '20 milliseconds') AS w, k, count(*) AS n, sum(v) AS s, \
                         min(v) AS lo, max(v) AS hi FROM ev GROUP BY w, k)";
            let islands = crate::operators::session::tests::islands(
                &evs.iter().map(|e| (e.key, e.ts)).collect::<Vec<_>>(),
                GAP,
            );
            // Each event's session start, for the batch oracle.
            let mut starts = Vec::new();
            for e in &evs {
                let (&(_, start), _) = islands
                    .range((e.key, i64::MIN)..=(e.key, e.ts))
                    .next_back()
                    .expect("every event is in an island");
                starts.push(start);
            }
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let (got, expected) = rt.block_on(async {
                let got = if one_row_batches {
                    stream(&evs, 1_000_000, query).await
                } else {
                    stream_in_batches(&evs, 7, 1_000_000, query).await
                };
                let rows = ev_batch(&evs);
                let ctx = SessionContext::new();
                let with_start = RecordBatch::try_new(
                    Arc::new(arrow::datatypes::Schema::new(vec![
                        arrow::datatypes::Field::new("k", arrow::datatypes::DataType::Int64, false),
                        arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
                        arrow::datatypes::Field::new("t", arrow::datatypes::DataType::Int64, false),
                        arrow::datatypes::Field::new("ws", arrow::datatypes::DataType::Int64, false),
                    ])),
                    vec![
                        rows.column(0).clone(),
                        rows.column(1).clone(),
                        Arc::new(arrow::array::Int64Array::from_iter_values(evs.iter().map(|e| e.ts))),
                        Arc::new(arrow::array::Int64Array::from(starts)),
                    ],
                )
                .unwrap();
                ctx.register_batch("ev", with_start).unwrap();
                let expected = ctx
                    .sql(&format!(
                        "SELECT ws, max(t) + {GAP} AS we, k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi \
                         FROM ev GROUP BY ws, k"
                    ))
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                (got, expected)
            });
            proptest::prop_assert_eq!(sorted_json_lines(&got), sorted_json_lines(&expected));
        }
    }

    /// Like [`stream`], with `size` events per batch.
    async fn stream_in_batches(
        events: &[Ev],
        size: usize,
        delay: u64,
        query: &str,
    ) -> Vec<RecordBatch> {
        stream_with(events, size, delay, query, None).await
    }

    async fn stream_with(
        events: &[Ev],
        size: usize,
        delay: u64,
        query: &str,
        allowed_lateness: Option<u64>,
    ) -> Vec<RecordBatch> {
        let batches: Vec<RecordBatch> = events.chunks(size).map(ev_batch).collect();
        let source =
            crate::connectors::memory::MemorySource::new(ev_batch(&[]).schema(), vec![batches])
                .unwrap();
        let mut p = PipelineBuilder::new("prop");
        if let Some(l) = allowed_lateness {
            p = p.allowed_lateness(std::time::Duration::from_millis(l));
        }
        let src = p.source("ev", Arc::new(source));
        p.event_time(&src, "ts", std::time::Duration::from_millis(delay))
            .unwrap();
        let out = p.sql(src, query).await.unwrap();
        let results = p.collect(out, "results").unwrap();
        p.run_to_completion().await.unwrap();
        results.batches()
    }

    /// A row that would open a session the watermark has passed is late; a row that
    /// falls inside a session still open joins it, however old.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn late_rows_join_open_sessions_or_are_dropped() {
        let ev = |key, value, ts| Ev { key, value, ts };
        let events = vec![
            ev(1, 1, 100),
            ev(1, 2, 130), // opens [130, 150) — 30 after 100 with gap 20
            ev(2, 3, 400), // watermark 400 - 100 = 300: key 1's sessions close
            ev(1, 4, 110), // would open [110, 130) < 300: late, dropped
            ev(2, 5, 390), // inside key 2's open session [390, 420): joins it
        ];
        let query = "SELECT CAST(w['start'] AS BIGINT) AS ws, CAST(w['end'] AS BIGINT) AS we, k, n, s FROM \
                     (SELECT session(INTERVAL '20 milliseconds') AS w, k, count(*) AS n, sum(v) AS s FROM ev GROUP BY w, k)";
        let got = stream(&events, 100, query).await;
        assert_eq!(
            sorted_json_lines(&got),
            vec![
                r#"{"ws":100,"we":120,"k":1,"n":1,"s":1}"#.to_string(),
                r#"{"ws":130,"we":150,"k":1,"n":1,"s":2}"#.to_string(),
                r#"{"ws":390,"we":420,"k":2,"n":2,"s":8}"#.to_string(),
            ]
        );
    }

    /// Top-N per window: ROW_NUMBER over a windowed GROUP BY, partitioned by the
    /// window, sees each closed window whole (gathered from every partition), so the
    /// result equals DataFusion batch at parallelism 1 and 2.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn top_n_per_window_equals_datafusion_batch() {
        let streaming = "SELECT ws, auction, n FROM (SELECT CAST(w['start'] AS BIGINT) AS ws, auction, n, \
             ROW_NUMBER() OVER (PARTITION BY w ORDER BY n DESC, auction) AS rn FROM \
             (SELECT tumble(INTERVAL '10 milliseconds') AS w, auction, count(*) AS n FROM bids GROUP BY w, auction)) \
             WHERE rn <= 3";
        let batch_query = "SELECT ws, auction, n FROM (SELECT ws, auction, n, \
             ROW_NUMBER() OVER (PARTITION BY ws ORDER BY n DESC, auction) AS rn FROM \
             (SELECT CAST(date_bin(INTERVAL '10 milliseconds', date_time, TIMESTAMP '1970-01-01T00:00:00Z') AS BIGINT) \
             / 1000000 AS ws, auction, count(*) AS n FROM bids GROUP BY ws, auction)) WHERE rn <= 3";
        for parallelism in [1, 2] {
            let (input, output) = run(streaming, parallelism).await;
            let ctx = SessionContext::new();
            let schema = input[0].schema();
            ctx.register_table(
                "bids",
                Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![input]).unwrap()),
            )
            .unwrap();
            let expected = ctx.sql(batch_query).await.unwrap().collect().await.unwrap();
            let expected = sorted_json_lines(&expected);
            assert!(expected.len() > 30, "{} rows", expected.len());
            assert_eq!(
                sorted_json_lines(&output),
                expected,
                "parallelism {parallelism}"
            );
        }
    }

    #[tokio::test]
    async fn gathered_windows_survive_a_snapshot_and_restore() {
        use crate::engine::{Collector, OperatorFactory};
        use arrow::array::{Int64Array, StructArray, TimestampMillisecondArray};
        use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let w_fields = Fields::from(vec![
            Field::new("start", ts.clone(), false),
            Field::new("end", ts.clone(), false),
        ]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("w", DataType::Struct(w_fields.clone()), false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = |ends: &[i64], ns: &[i64]| {
            let starts: Vec<i64> = ends.iter().map(|e| e - 1000).collect();
            let w = StructArray::new(
                w_fields.clone(),
                vec![
                    Arc::new(TimestampMillisecondArray::from(starts)),
                    Arc::new(TimestampMillisecondArray::from(ends.to_vec())),
                ],
                None,
            );
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(w), Arc::new(Int64Array::from(ns.to_vec()))],
            )
            .unwrap()
        };
        let factory = super::WindowGatherFactory {
            schema: schema.clone(),
            window_column: 0,
        };
        let task = crate::engine::TaskInfo {
            pipeline: "t".into(),
            node: "gather".into(),
            partition: 0,
            parallelism: 1,
            state: crate::state::memory_backend(),
        };
        let mut op = factory.create(&task).unwrap();
        let mut out = Collector::discard();
        op.process_batch(batch(&[1000, 2000, 1000], &[1, 2, 3]), &mut out)
            .await
            .unwrap();
        op.process_batch(batch(&[3000], &[4]), &mut out)
            .await
            .unwrap();
        let snapshot = |op: &mut Box<dyn crate::engine::Operator>| {
            op.snapshot().unwrap().expect("state").into_bytes().unwrap()
        };
        let state = snapshot(&mut op);
        let mut restored = factory.create(&task).unwrap();
        restored.restore(std::slice::from_ref(&state)).unwrap();
        assert_eq!(
            snapshot(&mut restored),
            state,
            "the restored operator holds the same windows"
        );
        let empty = snapshot(&mut factory.create(&task).unwrap());
        assert_ne!(state, empty);
    }

    #[test]
    fn hop_places_a_row_in_width_over_slide_windows() {
        let spec = super::WindowSpec::Hop {
            slide: 10,
            width: 30,
        };
        let mut starts = vec![];
        spec.starts(25, |s| starts.push(s));
        assert_eq!(starts, vec![20, 10, 0]);
        let mut starts = vec![];
        spec.starts(-5, |s| starts.push(s));
        assert_eq!(starts, vec![-10, -20, -30]);
        let mut starts = vec![];
        super::WindowSpec::Tumble { width: 10 }.starts(-1, |s| starts.push(s));
        assert_eq!(starts, vec![-10]);
    }
}
