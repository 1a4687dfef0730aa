//! The updating aggregate's vectorised path: `GROUP BY` without a window and without
//! `state.ttl`, on DataFusion's [`GroupValues`] and [`GroupsAccumulator`]s.
//!
//! Owns the group store and the per-batch changelog of that path (the changelog's form
//! and the row-accumulator path, used with `state.ttl`, are in
//! [`super::updating`]). Per input batch:
//! 1. the batch's keys are interned into group ids (DataFusion's hash table of keys);
//!    the groups the batch touched get local ids `0..m` in order of first appearance;
//! 2. fresh groups accumulators over the `m` touched groups merge the touched groups'
//!    stored intermediate state, take the batch's rows (`update_batch`), hand out the
//!    new state, and a second set merges that state and evaluates the new results —
//!    every step on whole columns, only for the touched groups;
//! 3. the touched groups' keys, new state and new results are appended to the store as
//!    one chunk, and each group's location moves to it;
//! 4. the changelog is assembled with `take`/`interleave`: `-U` (old results) and
//!    `+U` (new results) for the groups whose result changed, `+I` for new groups.
//!
//! Invariants:
//! - Every group id the key table has handed out has a location in the store (a group
//!   is created by a row, which touches it), holding its key, its intermediate state
//!   and the result last emitted for it. Chunk rows no group points to are garbage;
//!   once they outnumber the groups the store is compacted into one chunk.
//! - Snapshots have the row-accumulator path's form (key columns, each aggregate's
//!   state columns, each aggregate's last emitted value; deltas with the keys dropped
//!   since — none here), so either path restores the other's.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{interleave, take};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::accumulate::AggInputs;
use super::support::{df, emit_in_slices};
use super::updating::{Op, UpdatingFields, op_array, tag, walk_chain};
use crate::engine::{Collector, EngineError, Operator, Result, TaskInfo};
use crate::state::keyed::{KeyCodec, KeyedTable};
use crate::state::snapshot::{Chain, DeltaPolicy, StateBlob};

/// No location yet.
const NOWHERE: (u32, u32) = (u32::MAX, u32::MAX);

/// Where every group's key, state and last result are: chunks of rows, each
/// `keys ++ states ++ results` columns.
#[derive(Default)]
struct Store {
    chunks: Vec<Vec<ArrayRef>>,
    /// Rows in `chunks`, live or not.
    rows: usize,
    bytes: usize,
    /// By group id: (chunk, row).
    loc: Vec<(u32, u32)>,
}

impl Store {
    fn push(&mut self, chunk: Vec<ArrayRef>, groups: &[usize]) {
        let c = self.chunks.len() as u32;
        for (row, &g) in groups.iter().enumerate() {
            self.loc[g] = (c, row as u32);
        }
        self.rows += groups.len();
        self.bytes += chunk
            .iter()
            .map(|a| a.get_array_memory_size())
            .sum::<usize>();
        self.chunks.push(chunk);
    }

    /// Column `col` of the rows at `locs`.
    fn gather(&self, col: usize, locs: &[(usize, usize)]) -> Result<ArrayRef> {
        let arrays: Vec<&dyn Array> = self.chunks.iter().map(|c| c[col].as_ref()).collect();
        interleave(&arrays, locs).map_err(|e| EngineError::arrow("reading aggregate state", e))
    }

    /// Every column of the rows of `groups`.
    fn rows_of(&self, groups: &[usize], width: usize) -> Result<Vec<ArrayRef>> {
        let locs: Vec<(usize, usize)> = groups
            .iter()
            .map(|&g| (self.loc[g].0 as usize, self.loc[g].1 as usize))
            .collect();
        (0..width).map(|c| self.gather(c, &locs)).collect()
    }

    /// Rewrites the store as one chunk of the live rows once the garbage outnumbers
    /// them.
    fn compact(&mut self, width: usize) -> Result<()> {
        let groups = self.loc.len();
        if self.chunks.len() <= 1 || self.rows <= 2 * groups + 1024 {
            return Ok(());
        }
        let all: Vec<usize> = (0..groups).collect();
        let chunk = self.rows_of(&all, width)?;
        self.chunks.clear();
        self.rows = 0;
        self.bytes = 0;
        self.push(chunk, &all);
        Ok(())
    }
}

pub(crate) struct GroupedUpdatingOperator {
    /// The task's state bookkeeping: size, snapshots' form.
    table: KeyedTable,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    aggs: Vec<Arc<AggregateFunctionExpr>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    output: SchemaRef,
    tagged: SchemaRef,
    /// `None` without `GROUP BY` keys: then there is one group, id 0.
    groups: Option<Box<dyn GroupValues>>,
    /// Groups when there is no key table (0 or 1).
    keyless: usize,
    store: Store,
    /// State columns of each aggregate.
    widths: Vec<usize>,
    /// By group id: updated since the last snapshot (what a delta holds).
    changed: Vec<bool>,
    /// By group id: its local id in the batch being processed (`u32::MAX`: untouched).
    local: Vec<u32>,
    /// Row-format keys, for restoring (keys of a chain's links are matched by value).
    codec: KeyCodec,
    deltas: DeltaPolicy,
}

impl GroupedUpdatingOperator {
    pub(crate) fn new(
        task: &TaskInfo,
        factory: &super::updating::UpdatingAggFactory,
    ) -> Result<GroupedUpdatingOperator> {
        let groups = if factory.keys.is_empty() {
            None
        } else {
            Some(
                new_group_values(factory.key_schema.clone(), &GroupOrdering::None)
                    .map_err(df("creating aggregate state"))?,
            )
        };
        let mut op = GroupedUpdatingOperator {
            table: KeyedTable::open(task, "aggregate", factory.memory_limit),
            keys: factory.keys.clone(),
            aggs: factory.aggs.clone(),
            filters: factory.filters.clone(),
            output: factory.output.clone(),
            tagged: super::updating::with_op_column(&factory.output),
            groups,
            keyless: 0,
            store: Store::default(),
            widths: Vec::new(),
            changed: Vec::new(),
            local: Vec::new(),
            codec: KeyCodec::new(
                factory
                    .key_schema
                    .fields()
                    .iter()
                    .map(|f| f.data_type().clone()),
            )?,
            deltas: DeltaPolicy::default(),
        };
        op.widths = op
            .aggs
            .iter()
            .map(|a| a.state_fields().map(|f| f.len()))
            .collect::<datafusion::error::Result<_>>()
            .map_err(df("reading aggregate state fields"))?;
        Ok(op)
    }

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

    fn key_width(&self) -> usize {
        self.keys.len()
    }

    /// Columns of a store row: keys, each aggregate's state, each aggregate's result.
    fn width(&self) -> usize {
        self.key_width() + self.widths.iter().sum::<usize>() + self.aggs.len()
    }

    fn group_count(&self) -> usize {
        self.groups.as_ref().map_or(self.keyless, |g| g.len())
    }

    /// Group ids of `rows` rows keyed by `keys`; the store grows to the new groups.
    fn intern(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<usize>> {
        let mut ids = Vec::with_capacity(rows);
        match self.groups.as_mut() {
            Some(g) => g.intern(keys, &mut ids).map_err(df("grouping rows"))?,
            None => {
                if rows > 0 {
                    self.keyless = 1;
                }
                ids.resize(rows, 0);
            }
        }
        let n = self.group_count();
        self.store.loc.resize(n, NOWHERE);
        self.changed.resize(n, false);
        self.local.resize(n, u32::MAX);
        Ok(ids)
    }

    /// The distinct groups of `ids` in order of first appearance, each row's local id
    /// (its group's position there), and each group's first row.
    fn localise(&mut self, ids: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<u32>) {
        let mut touched = Vec::new();
        let mut firsts = Vec::new();
        let mut local_ids = Vec::with_capacity(ids.len());
        for (row, &g) in ids.iter().enumerate() {
            if self.local[g] == u32::MAX {
                self.local[g] = touched.len() as u32;
                touched.push(g);
                firsts.push(row as u32);
            }
            local_ids.push(self.local[g] as usize);
        }
        for &g in &touched {
            self.local[g] = u32::MAX;
        }
        (touched, local_ids, firsts)
    }

    /// Fresh accumulators over `m` local groups holding the stored state of the
    /// groups `existing` (local id, group id).
    fn load(
        &self,
        existing: &[(usize, usize)],
        m: usize,
    ) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        let mut accs = self.new_accs()?;
        if existing.is_empty() {
            return Ok(accs);
        }
        let locs: Vec<(usize, usize)> = existing
            .iter()
            .map(|&(_, g)| {
                let (c, r) = self.store.loc[g];
                (c as usize, r as usize)
            })
            .collect();
        let local: Vec<usize> = existing.iter().map(|&(l, _)| l).collect();
        let mut col = self.key_width();
        for (acc, &w) in accs.iter_mut().zip(&self.widths) {
            let state = (col..col + w)
                .map(|c| self.store.gather(c, &locs))
                .collect::<Result<Vec<_>>>()?;
            acc.merge_batch(&state, &local, m)
                .map_err(df("loading aggregate state"))?;
            col += w;
        }
        Ok(accs)
    }

    /// Each aggregate's state (flattened) and result for the `m` groups of `accs`,
    /// which are consumed.
    fn finish(
        &self,
        accs: Vec<Box<dyn GroupsAccumulator>>,
        m: usize,
    ) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let ids: Vec<usize> = (0..m).collect();
        let mut states = Vec::new();
        let mut results = Vec::with_capacity(accs.len());
        for (mut acc, mut eval) in accs.into_iter().zip(self.new_accs()?) {
            let state = acc
                .state(EmitTo::All)
                .map_err(df("reading aggregate state"))?;
            eval.merge_batch(&state, &ids, m)
                .map_err(df("copying aggregate state"))?;
            results.push(
                eval.evaluate(EmitTo::All)
                    .map_err(df("evaluating aggregates"))?,
            );
            states.extend(state);
        }
        Ok((states, results))
    }

    /// The changelog rows `keys ++ results` tagged with `op`; `None` when empty.
    fn rows(
        &self,
        keys: Vec<ArrayRef>,
        results: Vec<ArrayRef>,
        op: Op,
    ) -> Result<Option<RecordBatch>> {
        let n = results.first().or(keys.first()).map_or(0, |c| c.len());
        if n == 0 {
            return Ok(None);
        }
        let columns: Vec<ArrayRef> = keys.into_iter().chain(results).collect();
        let columns = super::support::conform_columns(&self.output, columns)?;
        let batch = RecordBatch::try_new(self.output.clone(), columns)
            .map_err(|e| EngineError::arrow("assembling aggregate results", e))?;
        tag(batch, &op_array(op), &self.tagged).map(Some)
    }

    fn check_state(&self) -> Result<()> {
        let bytes = self.store.bytes
            + self.store.loc.capacity() * 8
            + self.changed.capacity()
            + self.local.capacity() * 4
            + self.groups.as_ref().map_or(0, |g| g.size());
        self.table.report(
            bytes,
            || format!("for {} groups", self.group_count()),
            "set state.ttl so idle groups are dropped, aggregate per window, raise the limit or \
             run at a higher parallelism",
        )
    }

    /// The state of every group, or (`changes_only`) of the groups updated since the
    /// last snapshot. Every group counts as unchanged after.
    fn capture(&mut self, changes_only: bool) -> Result<StateBlob> {
        let fields = UpdatingFields {
            widths: self.widths.clone(),
        };
        let groups: Vec<usize> = (0..self.group_count())
            .filter(|&g| !changes_only || self.changed[g])
            .collect();
        self.changed.iter_mut().for_each(|c| *c = false);
        if groups.is_empty() {
            return self.table.snapshot(self.keys.len(), fields, vec![]);
        }
        let columns = self.store.rows_of(&groups, self.width())?;
        self.table.snapshot(self.keys.len(), fields, vec![columns])
    }

    /// Adds restored rows (`keys ++ states ++ emitted` columns): groups already present
    /// (state merged from several tasks without a key) merge their state and keep the
    /// result they had.
    fn absorb(&mut self, columns: Vec<ArrayRef>) -> Result<()> {
        let k = self.key_width();
        let rows = columns.first().map_or(0, |c| c.len());
        if rows == 0 {
            return Ok(());
        }
        let ids = self.intern(&columns[..k], rows)?;
        let (touched, local_ids, firsts) = self.localise(&ids);
        let m = touched.len();
        let existing: Vec<(usize, usize)> = touched
            .iter()
            .enumerate()
            .filter(|(_, g)| self.store.loc[**g] != NOWHERE)
            .map(|(l, &g)| (l, g))
            .collect();
        let mut accs = self.load(&existing, m)?;
        let mut col = k;
        for (acc, &w) in accs.iter_mut().zip(&self.widths) {
            acc.merge_batch(&columns[col..col + w], &local_ids, m)
                .map_err(df("restoring aggregate state"))?;
            col += w;
        }
        let mut states = Vec::new();
        for mut acc in accs {
            states.extend(
                acc.state(EmitTo::All)
                    .map_err(df("restoring aggregate state"))?,
            );
        }
        let first_rows = UInt32Array::from(firsts);
        let pick = |a: &ArrayRef| {
            take(a.as_ref(), &first_rows, None)
                .map_err(|e| EngineError::arrow("restoring aggregate state", e))
        };
        let keys = columns[..k].iter().map(pick).collect::<Result<Vec<_>>>()?;
        let mut emitted = columns[col..]
            .iter()
            .map(pick)
            .collect::<Result<Vec<_>>>()?;
        if !existing.is_empty() {
            // Groups already present keep the result they emitted.
            let old_locs: Vec<(usize, usize)> = existing
                .iter()
                .map(|&(_, g)| (self.store.loc[g].0 as usize, self.store.loc[g].1 as usize))
                .collect();
            let mut picks: Vec<(usize, usize)> = (0..m).map(|l| (1, l)).collect();
            for (j, &(l, _)) in existing.iter().enumerate() {
                picks[l] = (0, j);
            }
            for (i, e) in emitted.iter_mut().enumerate() {
                let old = self.store.gather(col + i, &old_locs)?;
                *e = interleave(&[old.as_ref(), e.as_ref()], &picks)
                    .map_err(|e| EngineError::arrow("restoring aggregate state", e))?;
            }
        }
        let chunk: Vec<ArrayRef> = keys.into_iter().chain(states).chain(emitted).collect();
        self.store.push(chunk, &touched);
        for &g in &touched {
            self.changed[g] = true;
        }
        self.store.compact(self.width())
    }
}

/// Rows where `old` and `new` differ (NULLs equal each other).
fn differ(old: &ArrayRef, new: &ArrayRef) -> Result<BooleanArray> {
    if let Ok(d) = arrow::compute::kernels::cmp::distinct(old, new) {
        return Ok(d);
    }
    // Types the comparison kernels do not take (lists, structs): row by row.
    let cmp = arrow::array::make_comparator(old.as_ref(), new.as_ref(), Default::default())
        .map_err(|e| EngineError::arrow("comparing aggregate results", e))?;
    Ok((0..old.len())
        .map(|i| Some(cmp(i, i) != std::cmp::Ordering::Equal))
        .collect())
}

#[async_trait]
impl Operator for GroupedUpdatingOperator {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let AggInputs {
            keys,
            args,
            filters,
        } = AggInputs::of(&self.keys, &self.aggs, &self.filters, &batch)?;
        let ids = self.intern(&keys, batch.num_rows())?;
        let (touched, local_ids, firsts) = self.localise(&ids);
        let m = touched.len();
        if m == 0 {
            return self.check_state();
        }
        // (local id, group id) of the touched groups that existed before the batch.
        let existing: Vec<(usize, usize)> = touched
            .iter()
            .enumerate()
            .filter(|(_, g)| self.store.loc[**g] != NOWHERE)
            .map(|(l, &g)| (l, g))
            .collect();
        let old_locs: Vec<(usize, usize)> = existing
            .iter()
            .map(|&(_, g)| {
                let (c, r) = self.store.loc[g];
                (c as usize, r as usize)
            })
            .collect();
        let mut accs = self.load(&existing, m)?;
        for (i, acc) in accs.iter_mut().enumerate() {
            let filter = filters[i]
                .as_ref()
                .map(|f| {
                    // A NULL condition counts as false.
                    f.as_any()
                        .downcast_ref::<BooleanArray>()
                        .map(super::accumulate::null_as_false)
                        .ok_or_else(|| EngineError::Internal("FILTER must be a boolean".into()))
                })
                .transpose()?;
            acc.update_batch(&args[i], &local_ids, filter.as_ref(), m)
                .map_err(df("updating aggregates"))?;
        }
        let (states, results) = self.finish(accs, m)?;
        let first_rows = UInt32Array::from(firsts);
        let new_keys = keys
            .iter()
            .map(|k| take(k.as_ref(), &first_rows, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| EngineError::arrow("grouping rows by key", e))?;

        // The changelog: old and new results of the groups that existed, new groups'.
        let result_col = self.key_width() + self.widths.iter().sum::<usize>();
        let mut batches = Vec::with_capacity(3);
        if !existing.is_empty() {
            let local = UInt32Array::from_iter_values(existing.iter().map(|&(l, _)| l as u32));
            let pick = |a: &ArrayRef| {
                take(a.as_ref(), &local, None)
                    .map_err(|e| EngineError::arrow("selecting changed groups", e))
            };
            let old: Vec<ArrayRef> = (0..self.aggs.len())
                .map(|i| self.store.gather(result_col + i, &old_locs))
                .collect::<Result<_>>()?;
            let new: Vec<ArrayRef> = results.iter().map(pick).collect::<Result<_>>()?;
            let mut changed: Option<BooleanArray> = None;
            for (o, n) in old.iter().zip(&new) {
                let d = differ(o, n)?;
                changed = Some(match changed {
                    None => d,
                    Some(c) => arrow::compute::or(&c, &d)
                        .map_err(|e| EngineError::arrow("comparing aggregate results", e))?,
                });
            }
            let changed =
                changed.unwrap_or_else(|| BooleanArray::from(vec![false; old_locs.len()]));
            if changed.true_count() > 0 {
                let keep = |cols: &[ArrayRef]| {
                    cols.iter()
                        .map(|c| arrow::compute::filter(c.as_ref(), &changed))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|e| EngineError::arrow("selecting changed groups", e))
                };
                let keys: Vec<ArrayRef> = new_keys.iter().map(pick).collect::<Result<_>>()?;
                let keys = keep(&keys)?;
                batches.push(self.rows(keys.clone(), keep(&old)?, Op::UpdateBefore)?);
                batches.push(self.rows(keys, keep(&new)?, Op::UpdateAfter)?);
            }
        }
        if existing.len() < m {
            let mut is_new = vec![true; m];
            for &(l, _) in &existing {
                is_new[l] = false;
            }
            let inserted =
                UInt32Array::from_iter_values((0..m as u32).filter(|&l| is_new[l as usize]));
            let pick = |a: &ArrayRef| {
                take(a.as_ref(), &inserted, None)
                    .map_err(|e| EngineError::arrow("selecting new groups", e))
            };
            let keys = new_keys.iter().map(pick).collect::<Result<Vec<_>>>()?;
            let values = results.iter().map(pick).collect::<Result<Vec<_>>>()?;
            batches.push(self.rows(keys, values, Op::Insert)?);
        }

        let chunk: Vec<ArrayRef> = new_keys.into_iter().chain(states).chain(results).collect();
        self.store.push(chunk, &touched);
        for &g in &touched {
            self.changed[g] = true;
        }
        self.store.compact(self.width())?;
        for b in batches.into_iter().flatten() {
            emit_in_slices(out, b).await?;
        }
        self.check_state()
    }

    /// Every group's key columns, its accumulators' intermediate state and the result
    /// last emitted for it.
    fn snapshot(&mut self) -> Result<Option<StateBlob>> {
        self.deltas.full();
        self.capture(false).map(Some)
    }

    /// The groups updated since the last snapshot, then the keys dropped since (none:
    /// this path runs without `state.ttl`); a full snapshot when [`DeltaPolicy`] says
    /// so.
    fn snapshot_changes(&mut self) -> Result<Option<StateBlob>> {
        let changed = self.changed.iter().filter(|c| **c).count();
        if !self.deltas.delta(changed, self.group_count()) {
            return self.snapshot();
        }
        let changes = self.capture(true)?;
        let dropped = StateBlob::arrow(&0usize, Vec::<Vec<ArrayRef>>::new())?;
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
        for chain in chains {
            let widths = &self.widths;
            let (restored, latest) =
                walk_chain(&self.table, &mut self.codec, &chain, |fields, rows| {
                    if &fields.widths != widths {
                        return Err(EngineError::State(format!(
                            "restoring aggregate state: state widths {:?}, expected {:?}",
                            fields.widths, widths
                        ))
                        .into());
                    }
                    let mut columns = rows.keys;
                    columns.extend(rows.values);
                    Ok(columns)
                })?;
            let mut picks: Vec<(usize, usize)> = latest.into_values().collect();
            picks.sort_unstable();
            if picks.is_empty() {
                continue;
            }
            let columns = (0..self.width())
                .map(|c| {
                    let arrays: Vec<&dyn Array> = restored.iter().map(|b| b[c].as_ref()).collect();
                    interleave(&arrays, &picks)
                        .map_err(|e| EngineError::arrow("restoring aggregate state", e))
                })
                .collect::<Result<Vec<_>>>()?;
            self.absorb(columns)?;
        }
        self.check_state()
    }
}
