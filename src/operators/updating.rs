//! Updating results: `GROUP BY` without a window.
//!
//! Owns the updating aggregate and the changelog it emits. Such a query has no point at
//! which a group is complete, so every change to a group's result is emitted as it
//! happens, as a changelog: rows of the result's columns plus an
//! [`OP_COLUMN`](crate::engine::OP_COLUMN) saying what the row does — `+I` (a new
//! group), `-U` then `+U` (a group's previous and new result), `-D` (a group dropped by
//! `state.ttl`). Applying the changelog in order (add `+` rows, remove one equal row
//! for each `-` row) gives, at any moment, the result of the query over everything read
//! so far — which is how sinks that take a changelog use it, and how the tests check it.
//!
//! Invariants:
//! - Per input batch, the operator emits at most one `-U` batch, then one `+U` batch,
//!   then one `+I` batch; a group's `-U` always precedes its `+U`. A group whose result
//!   did not change emits nothing.
//! - Stages above the aggregate (projection, `HAVING`) run on each changelog batch with
//!   its op carried through ([`ChangelogStageFactory`]): a `HAVING` that stops holding
//!   retracts the row (its `-U` passes, its `+U` does not).
//! - With `state.ttl`, a group not updated for that long (processing time, like
//!   Flink's idle state retention) is dropped and retracted with `-D`, within a quarter
//!   of the TTL (checked on a processing-time tick, and as rows arrive).
//! - Sinks declare whether they take a changelog; the planner refuses to write one to
//!   an append-only sink.
//!
//! Two paths emit the same changelog from the same snapshots: without `state.ttl`,
//! `operators::updating_groups` (DataFusion's groups accumulators over the groups each
//! batch touched); with it, the row accumulators per group here, which can drop any
//! group.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use super::accumulate::AggInputs;
use super::support::{df, emit_in_slices};
use crate::engine::{
    Collector, EngineError, OP_COLUMN, Operator, OperatorFactory, Result, TaskInfo,
};
use crate::state::keyed::{KeyCodec, KeyedRows, KeyedTable};
use crate::state::snapshot::{Chain, DeltaPolicy, StateBlob};

/// What a changelog row does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    UpdateBefore,
    UpdateAfter,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "+I",
            Op::UpdateBefore => "-U",
            Op::UpdateAfter => "+U",
            Op::Delete => "-D",
        }
    }
}

/// `schema` with the op column appended.
pub(crate) fn with_op_column(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(
        OP_COLUMN,
        arrow::datatypes::DataType::Utf8,
        false,
    )));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batch` with an op column holding `op` (a one-row array) on every row, in `schema`
/// (which has the op column last).
pub(crate) fn tag(batch: RecordBatch, op: &ArrayRef, schema: &SchemaRef) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mut columns = batch.columns().to_vec();
    let op = op
        .as_any()
        .downcast_ref::<StringArray>()
        .filter(|a| !a.is_empty())
        .map_or(Op::Insert.as_str(), |a| a.value(0));
    columns.push(Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n(op, n),
    )));
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| EngineError::arrow("tagging changelog rows", e))
}

/// A changelog batch split into its result columns and its op (as a one-row array;
/// every row of a batch the engine emits has the same op).
pub(crate) fn untag(batch: RecordBatch) -> Result<(RecordBatch, ArrayRef)> {
    let last = batch.num_columns().checked_sub(1);
    let op = last
        .filter(|&i| batch.schema().field(i).name() == OP_COLUMN)
        .map(|i| batch.column(i).slice(0, batch.num_rows().min(1)))
        .ok_or_else(|| EngineError::Internal(format!("a changelog batch lacks its {OP_COLUMN}")))?;
    let data = batch
        .project(&(0..last.unwrap_or(0)).collect::<Vec<_>>())
        .map_err(|e| EngineError::arrow("setting the changelog op aside", e))?;
    Ok((data, op))
}

pub(crate) fn op_array(op: Op) -> ArrayRef {
    Arc::new(StringArray::from(vec![op.as_str()]))
}

/// Builds the updating aggregate of a planned query.
pub(crate) struct UpdatingAggFactory {
    pub(crate) keys: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) key_schema: SchemaRef,
    pub(crate) aggs: Vec<Arc<AggregateFunctionExpr>>,
    pub(crate) filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The aggregate's output as DataFusion planned it: keys, then aggregates.
    pub(crate) output: SchemaRef,
    pub(crate) ttl: Option<Duration>,
    pub(crate) memory_limit: Option<u64>,
}

impl UpdatingAggFactory {
    pub(crate) fn key_columns(&self) -> Option<Vec<usize>> {
        super::support::column_indices(&self.keys)
    }
}

impl OperatorFactory for UpdatingAggFactory {
    fn output_schema(&self) -> SchemaRef {
        with_op_column(&self.output)
    }

    fn state_kind(&self) -> crate::engine::StateKind {
        crate::engine::StateKind::Checkpointed
    }

    fn describe(&self) -> String {
        format!(
            "updating aggregate (changelog): {} key(s), {}{}",
            self.keys.len(),
            self.aggs
                .iter()
                .map(|a| a.name().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.ttl
                .map(|t| format!(", groups idle for {t:?} dropped"))
                .unwrap_or_default()
        )
    }

    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        if self.ttl.is_none() {
            // Without a TTL no group is ever dropped: the vectorised path.
            return Ok(Box::new(
                super::updating_groups::GroupedUpdatingOperator::new(task, self)?,
            ));
        }
        let types = self
            .key_schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone());
        Ok(Box::new(UpdatingAggOperator {
            table: KeyedTable::open(task, "aggregate", self.memory_limit),
            keys: self.keys.clone(),
            aggs: self.aggs.clone(),
            filters: self.filters.clone(),
            output: self.output.clone(),
            tagged: with_op_column(&self.output),
            ttl: self.ttl,
            codec: KeyCodec::new(types)?,
            groups: HashMap::new(),
            touched: VecDeque::new(),
            dropped: None,
            deltas: DeltaPolicy::default(),
            bytes: 0,
        }))
    }
}

struct Group {
    accs: Vec<Box<dyn Accumulator>>,
    /// The result last emitted for the group.
    emitted: Option<Vec<ScalarValue>>,
    last_update: Instant,
    size: usize,
    /// Updated since the last snapshot (what a delta holds).
    changed: bool,
}

struct UpdatingAggOperator {
    /// The task's state bookkeeping: size, snapshots' form.
    table: KeyedTable,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    aggs: Vec<Arc<AggregateFunctionExpr>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    output: SchemaRef,
    tagged: SchemaRef,
    ttl: Option<Duration>,
    codec: KeyCodec,
    groups: HashMap<Box<[u8]>, Group>,
    /// (time of an update, key) in update order, to find idle groups for the TTL.
    touched: VecDeque<(Instant, Box<[u8]>)>,
    bytes: usize,
    /// Keys of groups dropped by the TTL since the last snapshot; `None` until the
    /// first snapshot (without checkpoints nothing needs them).
    dropped: Option<Vec<Box<[u8]>>>,
    deltas: DeltaPolicy,
}

/// Rows of a changelog batch being assembled: keys and result values.
#[derive(Default)]
struct Changes {
    keys: Vec<Box<[u8]>>,
    values: Vec<Vec<ScalarValue>>,
}

impl UpdatingAggOperator {
    /// The result rows of `changes`, tagged with `op`.
    fn batch(&self, changes: Changes, op: Op) -> Result<Option<RecordBatch>> {
        if changes.keys.is_empty() {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = if self.keys.is_empty() {
            vec![]
        } else {
            self.codec
                .decode(changes.keys.iter().map(|k| &k[..]))?
                .unwrap_or_default()
        };
        for i in 0..self.aggs.len() {
            columns.push(
                ScalarValue::iter_to_array(changes.values.iter().map(|v| v[i].clone()))
                    .map_err(df("assembling aggregate results"))?,
            );
        }
        let columns = super::support::conform_columns(&self.output, columns)?;
        let batch = RecordBatch::try_new(self.output.clone(), columns)
            .map_err(|e| EngineError::arrow("assembling aggregate results", e))?;
        tag(batch, &op_array(op), &self.tagged).map(Some)
    }

    async fn emit(&self, batches: [(Changes, Op); 3], out: &mut Collector) -> Result<()> {
        for (changes, op) in batches {
            if let Some(b) = self.batch(changes, op)? {
                emit_in_slices(out, b).await?;
            }
        }
        Ok(())
    }

    /// Drops groups idle for longer than the TTL and retracts their results.
    async fn expire(&mut self, out: &mut Collector) -> Result<()> {
        let Some(ttl) = self.ttl else { return Ok(()) };
        let now = Instant::now();
        let mut deleted = Changes::default();
        while let Some((at, _)) = self.touched.front() {
            if now.duration_since(*at) < ttl {
                break;
            }
            let (at, key) = self.touched.pop_front().expect("checked above");
            // Only the group's latest update counts; older entries are stale.
            if self.groups.get(&key).is_some_and(|g| g.last_update == at) {
                let group = self.groups.remove(&key).expect("checked above");
                self.bytes = self.bytes.saturating_sub(group.size);
                if let Some(dropped) = &mut self.dropped {
                    dropped.push(key.clone());
                }
                if let Some(values) = group.emitted {
                    deleted.keys.push(key);
                    deleted.values.push(values);
                }
            }
        }
        if let Some(b) = self.batch(deleted, Op::Delete)? {
            emit_in_slices(out, b).await?;
        }
        self.check_state()
    }

    /// Adds a group restored from row `row` of checkpointed columns: its accumulators'
    /// intermediate state (`states`, by aggregate) and its last emitted result
    /// (`emitted`, by aggregate). A key already present (state merged from several
    /// tasks without a key) merges into it.
    fn restore_group(
        &mut self,
        key: Box<[u8]>,
        states: &[Vec<ArrayRef>],
        emitted: &[ArrayRef],
        row: usize,
        now: Instant,
    ) -> Result<()> {
        if !self.groups.contains_key(&key) {
            let values = emitted
                .iter()
                .map(|c| ScalarValue::try_from_array(c, row))
                .collect::<datafusion::error::Result<Vec<_>>>()
                .map_err(df("restoring aggregate results"))?;
            let group = Group {
                accs: self.new_accumulators()?,
                emitted: Some(values),
                last_update: now,
                size: 0,
                changed: true,
            };
            self.groups.insert(key.clone(), group);
            if self.ttl.is_some() {
                self.touched.push_back((now, key.clone()));
            }
        }
        let group = self.groups.get_mut(&key).expect("inserted above");
        super::accumulate::merge_state_row(&mut group.accs, states, row)?;
        let size = key.len() + group.accs.iter().map(|a| a.size()).sum::<usize>();
        self.bytes = self.bytes + size - group.size.min(self.bytes);
        group.size = size;
        Ok(())
    }

    /// The state of every group, or (`changes_only`) of the groups updated since the
    /// last snapshot: one batch of key columns, each aggregate's state columns and
    /// each aggregate's last emitted value. Every group counts as unchanged after.
    fn capture(&mut self, changes_only: bool) -> Result<StateBlob> {
        let aggs = self.aggs.len();
        let mut keys = Vec::new();
        let mut emitted: Vec<Vec<ScalarValue>> = vec![Vec::new(); aggs];
        let mut units = Vec::new();
        for (key, group) in self.groups.iter_mut() {
            if std::mem::take(&mut group.changed) || !changes_only {
                // Every group has emitted a result: it is created by a row and emitted
                // at once.
                let values = group.emitted.as_ref().ok_or_else(|| {
                    EngineError::Internal("an aggregate group has no emitted result".into())
                })?;
                for (column, v) in emitted.iter_mut().zip(values) {
                    column.push(v.clone());
                }
                keys.push(key.clone());
                units.push(&mut group.accs);
            }
        }
        let states = super::accumulate::take_row_states(units, &self.aggs)?;
        let fields = UpdatingFields {
            widths: states.iter().map(Vec::len).collect(),
        };
        if keys.is_empty() {
            return self.table.snapshot(self.keys.len(), fields, vec![]);
        }
        let mut columns = if self.keys.is_empty() {
            vec![]
        } else {
            self.key_columns(&keys)?
        };
        columns.extend(states.into_iter().flatten());
        for values in emitted {
            columns.push(
                ScalarValue::iter_to_array(values)
                    .map_err(df("checkpointing aggregate results"))?,
            );
        }
        self.table.snapshot(self.keys.len(), fields, vec![columns])
    }

    /// Group keys (row format) as key columns.
    fn key_columns(&self, keys: &[Box<[u8]>]) -> Result<Vec<ArrayRef>> {
        Ok(self
            .codec
            .decode(keys.iter().map(|k| &k[..]))?
            .unwrap_or_default())
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        super::accumulate::row_accumulators(&self.aggs)
    }

    fn check_state(&self) -> Result<()> {
        self.table.report(
            self.bytes,
            || format!("for {} groups", self.groups.len()),
            "set state.ttl so idle groups are dropped, aggregate per window, raise the limit or \
             run at a higher parallelism",
        )
    }
}

#[async_trait]
impl Operator for UpdatingAggOperator {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let AggInputs {
            keys,
            args,
            filters,
        } = AggInputs::of(&self.keys, &self.aggs, &self.filters, &batch)?;
        let rows = if keys.is_empty() {
            None
        } else {
            Some(self.codec.encode(&keys)?)
        };
        // Rows per key, keys in order of first appearance.
        let mut order: Vec<Box<[u8]>> = Vec::new();
        let mut per_key: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        for i in 0..batch.num_rows() {
            let key: Box<[u8]> = rows
                .as_ref()
                .map_or(Box::default(), |r| r.row(i).as_ref().into());
            per_key
                .entry(key)
                .or_insert_with_key(|k| {
                    order.push(k.clone());
                    Vec::new()
                })
                .push(i as u32);
        }
        // The batch's rows grouped by key, with one `take` per column: each group's
        // rows are then a zero-copy slice.
        let mut perm: Vec<u32> = Vec::with_capacity(batch.num_rows());
        let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(order.len());
        for key in &order {
            let rows = &per_key[key];
            ranges.push((perm.len(), rows.len()));
            perm.extend_from_slice(rows);
        }
        let perm = arrow::array::UInt32Array::from(perm);
        let regroup = |a: &ArrayRef| {
            arrow::compute::take(a.as_ref(), &perm, None)
                .map_err(|e| EngineError::arrow("grouping rows by key", e))
        };
        let args: Vec<Vec<ArrayRef>> = args
            .iter()
            .map(|cols| cols.iter().map(regroup).collect::<Result<Vec<_>>>())
            .collect::<Result<_>>()?;
        let filters: Vec<Option<BooleanArray>> = filters
            .iter()
            .map(|f| {
                f.as_ref()
                    .map(|f| {
                        let f = regroup(f)?;
                        f.as_any()
                            .downcast_ref::<BooleanArray>()
                            .map(super::accumulate::null_as_false)
                            .ok_or_else(|| {
                                EngineError::Internal("FILTER must be a boolean".into()).into()
                            })
                    })
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let now = Instant::now();
        let (mut before, mut after, mut inserted) =
            (Changes::default(), Changes::default(), Changes::default());
        for (key, (offset, len)) in order.into_iter().zip(ranges) {
            if !self.groups.contains_key(&key) {
                let accs = self.new_accumulators()?;
                self.groups.insert(
                    key.clone(),
                    Group {
                        accs,
                        emitted: None,
                        last_update: now,
                        size: 0,
                        changed: true,
                    },
                );
            }
            let group = self.groups.get_mut(&key).expect("inserted above");
            for (i, acc) in group.accs.iter_mut().enumerate() {
                let mut values: Vec<ArrayRef> =
                    args[i].iter().map(|a| a.slice(offset, len)).collect();
                if let Some(mask) = &filters[i] {
                    let mask = mask.slice(offset, len);
                    values = values
                        .iter()
                        .map(|v| arrow::compute::filter(v.as_ref(), &mask))
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|e| EngineError::arrow("aggregate FILTER", e))?;
                }
                acc.update_batch(&values)
                    .map_err(df("updating aggregates"))?;
            }
            let values = group
                .accs
                .iter_mut()
                .map(|a| a.evaluate())
                .collect::<datafusion::error::Result<Vec<_>>>()
                .map_err(df("evaluating aggregates"))?;
            group.last_update = now;
            group.changed = true;
            let size = key.len() + group.accs.iter().map(|a| a.size()).sum::<usize>();
            self.bytes = self.bytes + size - group.size.min(self.bytes);
            group.size = size;
            if self.ttl.is_some() {
                self.touched.push_back((now, key.clone()));
            }
            match group.emitted.replace(values.clone()) {
                None => {
                    inserted.keys.push(key);
                    inserted.values.push(values);
                }
                Some(old) if old == values => {}
                Some(old) => {
                    before.keys.push(key.clone());
                    before.values.push(old);
                    after.keys.push(key);
                    after.values.push(values);
                }
            }
        }
        self.emit(
            [
                (before, Op::UpdateBefore),
                (after, Op::UpdateAfter),
                (inserted, Op::Insert),
            ],
            out,
        )
        .await?;
        self.expire(out).await?;
        self.check_state()
    }

    async fn handle_watermark(&mut self, _watermark: i64, out: &mut Collector) -> Result<()> {
        self.expire(out).await
    }

    fn tick_interval(&self) -> Option<Duration> {
        self.ttl
            .map(|t| (t / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)))
    }

    async fn handle_tick(&mut self, out: &mut Collector) -> Result<()> {
        self.expire(out).await
    }

    /// Every group's key columns, its accumulators' intermediate state and the result
    /// last emitted for it.
    fn snapshot(&mut self) -> Result<Option<StateBlob>> {
        self.deltas.full();
        self.dropped = Some(Vec::new());
        self.capture(false).map(Some)
    }

    /// The groups updated since the last snapshot, then the keys dropped by the TTL
    /// since (a full snapshot when [`DeltaPolicy`] says so).
    fn snapshot_changes(&mut self) -> Result<Option<StateBlob>> {
        let changed = self.groups.values().filter(|g| g.changed).count();
        if !self.deltas.delta(changed, self.groups.len()) {
            return self.snapshot();
        }
        let changes = self.capture(true)?;
        let dropped = self.dropped.replace(Vec::new()).unwrap_or_default();
        let columns = if self.keys.is_empty() || dropped.is_empty() {
            vec![]
        } else {
            vec![self.key_columns(&dropped)?]
        };
        let dropped = StateBlob::arrow(&dropped.len(), columns)?;
        Ok(Some(StateBlob::delta(StateBlob::parts(vec![
            changes, dropped,
        ]))))
    }

    fn restore(&mut self, states: &[Vec<u8>]) -> Result<()> {
        self.restore_chains(states.iter().map(|s| vec![s.clone()]).collect())
    }

    /// Each chain's groups (a delta's rows replace its base's, its dropped keys are
    /// removed) are added to the state; groups of several chains with the same key
    /// (no `GROUP BY` key) merge.
    fn restore_chains(&mut self, chains: Vec<Chain>) -> Result<()> {
        let now = Instant::now();
        for chain in chains {
            let (restored, latest) =
                walk_chain(&self.table, &mut self.codec, &chain, |fields, rows| {
                    Ok(super::accumulate::split_states(
                        &rows.values,
                        &fields.widths,
                    ))
                })?;
            for (key, (batch, row)) in latest {
                let (states, emitted) = &restored[batch];
                self.restore_group(key, states, emitted, row, now)?;
            }
        }
        self.check_state()
    }
}

/// Walks one chain of an updating aggregate's snapshots (its base, then its deltas)
/// in order. Returns every state batch, as `each` makes it from the batch's owned
/// rows, and key → (batch, row) of each live key's latest state: a delta's rows
/// replace its base's, and its dropped keys are removed. Without key columns (no
/// `GROUP BY`) every row has the empty key.
pub(super) fn walk_chain<T>(
    table: &KeyedTable,
    codec: &mut KeyCodec,
    chain: &Chain,
    mut each: impl FnMut(&UpdatingFields, KeyedRows) -> Result<T>,
) -> Result<(Vec<T>, HashMap<Box<[u8]>, (usize, usize)>)> {
    let mut restored = Vec::new();
    let mut latest: HashMap<Box<[u8]>, (usize, usize)> = HashMap::new();
    for (i, link) in chain.iter().enumerate() {
        let (changes, dropped) = if i == 0 {
            (link.as_slice(), None)
        } else {
            match crate::state::snapshot::parts(link)?[..] {
                [changes, dropped] => (changes, Some(dropped)),
                _ => {
                    return Err(EngineError::State(
                        "restoring aggregate state: a delta without its two parts".into(),
                    )
                    .into());
                }
            }
        };
        if let Some(dropped) = dropped {
            let (count, columns): (usize, Vec<Vec<ArrayRef>>) =
                crate::state::snapshot::decode(dropped)?;
            let keys = match columns.first() {
                Some(keys) => codec.encode_owned(keys)?,
                None => vec![Box::default(); count],
            };
            for key in keys {
                latest.remove(&key);
            }
        }
        let (header, batches) = table.decode::<UpdatingFields>(changes)?;
        for columns in batches {
            let rows = table.own(columns, header.keys)?;
            let keys = if rows.keys.is_empty() {
                vec![Box::default(); rows.len()]
            } else {
                codec.encode_owned(&rows.keys)?
            };
            for (row, key) in keys.into_iter().enumerate() {
                latest.insert(key, (restored.len(), row));
            }
            restored.push(each(&header.operator, rows)?);
        }
    }
    Ok((restored, latest))
}

/// An updating aggregate's own fields in its snapshots' header (with the key columns,
/// see [`KeyedHeader`](crate::state::keyed::KeyedHeader)): one batch of key columns,
/// each aggregate's state columns, then each aggregate's last emitted value.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct UpdatingFields {
    /// State columns of each aggregate.
    pub(crate) widths: Vec<usize>,
}

/// Applies a changelog in order: `+` rows are added, each `-` row removes one equal
/// row. Returns the result rows as JSON lines (without the op), sorted; `Err` names a
/// retraction of a row that is not there.
#[cfg(test)]
pub(crate) fn apply_changelog(batches: &[RecordBatch]) -> std::result::Result<Vec<String>, String> {
    let mut rows: std::collections::BTreeMap<String, i64> = Default::default();
    for b in batches {
        let (data, op) = untag(b.clone()).map_err(|e| e.to_string())?;
        let op = op
            .as_any()
            .downcast_ref::<StringArray>()
            .filter(|a| !a.is_empty())
            .map(|a| a.value(0).to_string());
        let mut buf = Vec::new();
        crate::formats::json::encode_json_lines(&data, &mut buf).map_err(|e| e.to_string())?;
        for line in String::from_utf8(buf).map_err(|e| e.to_string())?.lines() {
            let n = rows.entry(line.to_string()).or_default();
            match op.as_deref() {
                Some("+I") | Some("+U") => *n += 1,
                Some("-U") | Some("-D") => {
                    *n -= 1;
                    if *n < 0 {
                        return Err(format!("retracted a row that is not there: {line}"));
                    }
                }
                other => return Err(format!("unknown op {other:?}")),
            }
        }
    }
    Ok(rows
        .into_iter()
        .flat_map(|(line, n)| std::iter::repeat_n(line, n as usize))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::RecordBatch;
    use datafusion::prelude::SessionContext;

    use crate::connectors::memory::MemorySource;
    use crate::pipeline::PipelineBuilder;
    use crate::testing::kvt_batch;

    async fn stream(
        rows: &[(i64, i64, i64)],
        size: usize,
        parallelism: usize,
        query: &str,
    ) -> Vec<RecordBatch> {
        let mut p = PipelineBuilder::new("upd").parallelism(parallelism);
        let batches: Vec<RecordBatch> = rows.chunks(size).map(kvt_batch).collect();
        let mut parts = vec![batches];
        parts.resize(parallelism, vec![]);
        let src = p.source(
            "ev",
            Arc::new(MemorySource::new(kvt_batch(&[]).schema(), parts).unwrap()),
        );
        let out = p.sql(src, query).await.unwrap();
        let results = p.collect(out, "results").unwrap();
        p.run_to_completion().await.unwrap();
        results.batches()
    }

    async fn batch(rows: &[(i64, i64, i64)], query: &str) -> Vec<String> {
        let ctx = SessionContext::new();
        ctx.register_batch("ev", kvt_batch(rows)).unwrap();
        let out = ctx.sql(query).await.unwrap().collect().await.unwrap();
        crate::testing::sorted_json_lines(&out)
    }

    const QUERIES: [&str; 3] = [
        // A HAVING that stops holding as a group grows: its row must be retracted.
        "SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM ev GROUP BY k HAVING sum(v) < 15",
        // No key: one group.
        "SELECT count(*) AS n, sum(v) AS s, count(DISTINCT v) AS d FROM ev",
        // A computed key and a projection above the aggregate.
        "SELECT k2, n * 2 AS twice, avg_v FROM (SELECT k % 2 AS k2, count(*) AS n, avg(v) AS avg_v FROM ev GROUP BY k % 2)",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 40, ..Default::default() })]

        /// The changelog of a GROUP BY without a window, applied in order, equals
        /// DataFusion batch over the same rows, and never retracts a row it did not emit.
        #[test]
        fn applied_changelog_equals_batch(
            raw in proptest::collection::vec((0i64..5, -9i64..12), 1..120),
            size in 1usize..9,
            q in 0usize..QUERIES.len(),
            parallel in proptest::bool::ANY,
        ) {
            let rows: Vec<(i64, i64, i64)> = raw.iter().enumerate().map(|(i, (k, v))| (*k, *v, i as i64)).collect();
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let (got, expected) = rt.block_on(async {
                (stream(&rows, size, if parallel { 2 } else { 1 }, QUERIES[q]).await, batch(&rows, QUERIES[q]).await)
            });
            let applied = super::apply_changelog(&got);
            proptest::prop_assert_eq!(applied, Ok(expected));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 40, ..Default::default() })]

        /// Snapshots taken anywhere leave the changelog unchanged, and operators
        /// restored from them, at another parallelism too, go on as the original
        /// would: the same changelog rows as a run without checkpoints.
        #[test]
        fn snapshots_and_restores_anywhere_leave_the_changelog_unchanged(
            raw in proptest::collection::vec((0i64..5, -9i64..12), 1..80),
            size in 1usize..5,
            q in 0usize..QUERIES.len(),
            cuts in proptest::collection::vec(0u8..4, 0..80),
        ) {
            let rows: Vec<(i64, i64, i64)> = raw.iter().enumerate().map(|(i, (k, v))| (*k, *v, i as i64)).collect();
            let steps: Vec<(usize, RecordBatch, Option<i64>)> = rows.chunks(size).map(|c| (0, kvt_batch(c), None)).collect();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let run = |cuts: Vec<u8>| {
                let steps = steps.clone();
                rt.block_on(async move {
                    let mut p = PipelineBuilder::new("drive");
                    let src = p.source("ev", Arc::new(MemorySource::new(kvt_batch(&[]).schema(), vec![]).unwrap()));
                    let out = p.sql(src, QUERIES[q]).await.unwrap();
                    p.collect(out, "results").unwrap();
                    let out = crate::testing::drive_node(&p.build(), "updating aggregate", &steps, &cuts).await;
                    // Tasks interleave their output: compare changelog rows as multisets.
                    crate::testing::sorted_json_lines(&out)
                })
            };
            let plain = run(vec![]);
            proptest::prop_assert!(!plain.is_empty());
            proptest::prop_assert_eq!(run(cuts), plain);
        }
    }

    /// The operator of `query` over `ev`, with a TTL or without (the two paths).
    async fn aggregate(query: &str, ttl: bool) -> Box<dyn crate::engine::Operator> {
        let mut p = PipelineBuilder::new("agg");
        if ttl {
            p = p.state_ttl(std::time::Duration::from_secs(3600));
        }
        let src = p.source(
            "ev",
            Arc::new(MemorySource::new(kvt_batch(&[]).schema(), vec![]).unwrap()),
        );
        let out = p.sql(src, query).await.unwrap();
        p.collect(out, "results").unwrap();
        crate::testing::operator(&p.build(), "updating aggregate")
    }

    /// The changelog rows `op` emits for `batch`, in emission order.
    async fn changes(op: &mut Box<dyn crate::engine::Operator>, batch: RecordBatch) -> Vec<String> {
        let (mut out, rx) = crate::engine::Collector::capture(1 << 10);
        op.process_batch(batch, &mut out).await.unwrap();
        drop(out);
        let batches = crate::testing::drain(rx).await;
        let mut lines = Vec::new();
        for b in &batches {
            let mut buf = Vec::new();
            crate::formats::json::encode_json_lines(b, &mut buf).unwrap();
            let mut rows: Vec<String> = String::from_utf8(buf)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            // Within one batch (one op) the order of groups is not part of the contract.
            rows.sort();
            lines.extend(rows);
        }
        lines
    }

    /// A key touched several times in one batch gets one `-U`/`+U` pair for the batch
    /// (with its result before and after the whole batch), new keys one `+I`, and a key
    /// whose result did not change nothing; `-U` rows come before `+U` rows, then `+I`.
    /// Both paths (with and without a TTL) emit the same.
    #[tokio::test]
    async fn a_key_touched_twice_in_a_batch_changes_once() {
        for ttl in [false, true] {
            let mut op = aggregate("SELECT k, sum(v) AS s FROM ev GROUP BY k", ttl).await;
            assert_eq!(
                changes(&mut op, kvt_batch(&[(1, 5, 0), (2, 1, 1), (1, 2, 2)])).await,
                [
                    r#"{"k":1,"sum(ev.v)":7,"_op":"+I"}"#,
                    r#"{"k":2,"sum(ev.v)":1,"_op":"+I"}"#,
                ]
            );
            assert_eq!(
                changes(
                    &mut op,
                    kvt_batch(&[(1, 1, 3), (2, 0, 4), (3, 4, 5), (1, 1, 6)])
                )
                .await,
                [
                    r#"{"k":1,"sum(ev.v)":7,"_op":"-U"}"#,
                    r#"{"k":1,"sum(ev.v)":9,"_op":"+U"}"#,
                    r#"{"k":3,"sum(ev.v)":4,"_op":"+I"}"#,
                ],
                "ttl: {ttl}"
            );
        }
    }

    /// Many keys per batch over many batches (the vectorised path's store is compacted
    /// several times on the way), with a HAVING that retracts groups as they grow and
    /// FILTERed aggregates: the applied changelog equals batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_keys_over_many_batches_equal_batch() {
        let rows: Vec<(i64, i64, i64)> = (0..12_000)
            .map(|i| ((i * 7919) % 1_200, i % 11 - 3, i))
            .collect();
        for query in [
            "SELECT k, count(*) AS n, sum(v) AS s, max(v) AS m FROM ev GROUP BY k HAVING sum(v) < 20",
            "SELECT k % 300 AS k3, count(*) FILTER (WHERE v > 0) AS pos, avg(v) FILTER (WHERE v < 5) AS a, \
             count(DISTINCT v) AS d FROM ev GROUP BY k % 300",
        ] {
            let got = stream(&rows, 500, 1, query).await;
            assert_eq!(
                super::apply_changelog(&got),
                Ok(batch(&rows, query).await),
                "{query}"
            );
        }
    }

    /// Snapshots of either path restore into the other (same form): a restored
    /// operator then emits what one that never stopped emits.
    #[tokio::test]
    async fn snapshots_of_either_path_restore_into_the_other() {
        let query = "SELECT k, count(*) AS n, avg(v) AS a, count(DISTINCT v) AS d, max(v) AS m, \
                     sum(v) FILTER (WHERE v > 1) AS big FROM ev GROUP BY k";
        let first = kvt_batch(&[(1, 5, 0), (2, 1, 1), (1, 2, 2), (3, 3, 3)]);
        let second = kvt_batch(&[(1, 1, 4), (2, 1, 5), (4, 4, 6), (1, 9, 7)]);
        for (from_ttl, to_ttl) in [(true, false), (false, true)] {
            let mut original = aggregate(query, to_ttl).await;
            changes(&mut original, first.clone()).await;
            let expected = changes(&mut original, second.clone()).await;
            let mut before = aggregate(query, from_ttl).await;
            changes(&mut before, first.clone()).await;
            let blob = before.snapshot().unwrap().unwrap().into_bytes().unwrap();
            let mut restored = aggregate(query, to_ttl).await;
            restored.restore(&[blob]).unwrap();
            assert_eq!(
                changes(&mut restored, second.clone()).await,
                expected,
                "from ttl {from_ttl} to ttl {to_ttl}"
            );
        }
    }

    /// A delta carries the keys the TTL dropped since its base: restored from a full
    /// snapshot holding keys 1 and 2 and a delta taken after they expired, the state
    /// holds only key 3, so keys 1 and 2 come back as new groups (`+I`). (The
    /// operator's own output: before the projection that names the sum.)
    #[tokio::test]
    async fn a_delta_removes_the_groups_the_ttl_dropped_since_its_base() {
        let ttl = std::time::Duration::from_millis(500);
        let mut p = PipelineBuilder::new("ttl").state_ttl(ttl);
        let src = p.source(
            "ev",
            Arc::new(MemorySource::new(kvt_batch(&[]).schema(), vec![]).unwrap()),
        );
        let out = p
            .sql(src, "SELECT k, sum(v) AS s FROM ev GROUP BY k")
            .await
            .unwrap();
        p.collect(out, "results").unwrap();
        let graph = p.build();
        let (mut out, mut rx) = crate::engine::Collector::capture(1 << 10);
        let mut op = crate::testing::operator(&graph, "updating aggregate");
        op.process_batch(kvt_batch(&[(1, 5, 0), (2, 7, 1)]), &mut out)
            .await
            .unwrap();
        let full = op.snapshot().unwrap().unwrap().into_bytes().unwrap();
        // Processing time passes beyond the TTL: keys 1 and 2 are dropped.
        std::thread::sleep(ttl + std::time::Duration::from_millis(100));
        op.handle_watermark(0, &mut out).await.unwrap();
        op.process_batch(kvt_batch(&[(3, 1, 2)]), &mut out)
            .await
            .unwrap();
        let delta = op.snapshot_changes().unwrap().unwrap();
        assert!(delta.is_delta(), "one changed group of one is a delta");
        let mut restored = crate::testing::operator(&graph, "updating aggregate");
        restored
            .restore_chains(vec![vec![full, delta.into_bytes().unwrap()]])
            .unwrap();
        while rx.try_recv().is_ok() {}
        restored
            .process_batch(kvt_batch(&[(1, 1, 3), (2, 1, 4), (3, 1, 5)]), &mut out)
            .await
            .unwrap();
        drop(out);
        assert_eq!(
            crate::testing::sorted_json_lines(&crate::testing::drain(rx).await),
            [
                r#"{"k":1,"sum(ev.v)":1,"_op":"+I"}"#,
                r#"{"k":2,"sum(ev.v)":1,"_op":"+I"}"#,
                r#"{"k":3,"sum(ev.v)":1,"_op":"-U"}"#,
                r#"{"k":3,"sum(ev.v)":2,"_op":"+U"}"#,
            ]
        );
    }

    /// With `state.ttl`, a group idle for longer is dropped and its result retracted
    /// with `-D`. (A TTL of 1 ns: by the time the second batch is processed, the first
    /// batch's group has been idle for longer than that.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_groups_are_retracted_after_the_ttl() {
        let mut p = PipelineBuilder::new("ttl").state_ttl(std::time::Duration::from_nanos(1));
        let src = p.source(
            "ev",
            Arc::new(
                MemorySource::new(
                    kvt_batch(&[]).schema(),
                    vec![vec![kvt_batch(&[(1, 5, 0)]), kvt_batch(&[(2, 7, 1)])]],
                )
                .unwrap(),
            ),
        );
        let out = p
            .sql(src, "SELECT k, sum(v) AS s FROM ev GROUP BY k")
            .await
            .unwrap();
        let results = p.collect(out, "results").unwrap();
        p.run_to_completion().await.unwrap();
        let changes = crate::testing::sorted_json_lines(&results.batches());
        assert!(
            changes.contains(&r#"{"k":1,"s":5,"_op":"-D"}"#.to_string()),
            "{changes:?}"
        );
        assert!(super::apply_changelog(&results.batches()).is_ok());
    }

    /// A Rust UDAF: the sum of squares, with partial state so sessions can merge it.
    #[derive(Debug, Default)]
    struct SumOfSquares(i64);

    impl datafusion::logical_expr::Accumulator for SumOfSquares {
        fn update_batch(
            &mut self,
            values: &[arrow::array::ArrayRef],
        ) -> datafusion::error::Result<()> {
            let v = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
                values[0].as_ref(),
            );
            self.0 += v.iter().flatten().map(|x| x * x).sum::<i64>();
            Ok(())
        }
        fn merge_batch(
            &mut self,
            states: &[arrow::array::ArrayRef],
        ) -> datafusion::error::Result<()> {
            let v = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
                states[0].as_ref(),
            );
            self.0 += v.iter().flatten().sum::<i64>();
            Ok(())
        }
        fn state(&mut self) -> datafusion::error::Result<Vec<datafusion::common::ScalarValue>> {
            Ok(vec![datafusion::common::ScalarValue::Int64(Some(self.0))])
        }
        fn evaluate(&mut self) -> datafusion::error::Result<datafusion::common::ScalarValue> {
            Ok(datafusion::common::ScalarValue::Int64(Some(self.0)))
        }
        fn size(&self) -> usize {
            std::mem::size_of_val(self)
        }
    }

    /// A Rust UDAF runs in a GROUP BY without a window, per tumbling window and per
    /// session (where partial states merge), with DataFusion's own answer as oracle.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rust_udafs_run_in_every_kind_of_group_by() {
        use arrow::datatypes::DataType;
        let udaf = datafusion::logical_expr::create_udaf(
            "sum_sq",
            vec![DataType::Int64],
            Arc::new(DataType::Int64),
            datafusion::logical_expr::Volatility::Immutable,
            Arc::new(|_| Ok(Box::new(SumOfSquares::default()))),
            Arc::new(vec![DataType::Int64]),
        );
        let rows: Vec<(i64, i64, i64)> = (0..40).map(|i| (i % 3, i % 7 - 3, i * 10)).collect();
        for (query, expected) in [
            (
                "SELECT k, sum_sq(v) AS q FROM ev GROUP BY k",
                "SELECT k, sum(v * v) AS q FROM ev GROUP BY k",
            ),
            (
                "SELECT CAST(w['start'] AS BIGINT) AS ws, k, q FROM \
                 (SELECT tumble(INTERVAL '100 milliseconds') AS w, k, sum_sq(v) AS q FROM ev GROUP BY w, k)",
                "SELECT (CAST(ts AS BIGINT) / 100) * 100 AS ws, k, sum(v * v) AS q FROM ev GROUP BY 1, k",
            ),
            (
                "SELECT k, q FROM (SELECT session(INTERVAL '25 milliseconds') AS w, k, sum_sq(v) AS q FROM ev GROUP BY w, k)",
                // Rows of a key are 30 ms apart: every row is its own session.
                "SELECT k, v * v AS q FROM ev",
            ),
        ] {
            let mut p = PipelineBuilder::new("udaf");
            p.planner_mut().register_udaf(udaf.clone());
            let src = p.source(
                "ev",
                Arc::new(
                    MemorySource::new(kvt_batch(&[]).schema(), vec![vec![kvt_batch(&rows)]])
                        .unwrap(),
                ),
            );
            p.event_time(&src, "ts", std::time::Duration::ZERO).unwrap();
            let out = p.sql(src, query).await.unwrap();
            let results = p.collect(out, "results").unwrap();
            p.run_to_completion().await.unwrap();
            let got = results.batches();
            let got = if got.first().is_some_and(|b| {
                b.schema()
                    .column_with_name(crate::engine::OP_COLUMN)
                    .is_some()
            }) {
                super::apply_changelog(&got).unwrap()
            } else {
                crate::testing::sorted_json_lines(&got)
            };
            assert_eq!(got, batch(&rows, expected).await, "{query}");
        }
    }
}
