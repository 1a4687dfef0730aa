//! Interval joins between two streams:
//! `FROM o JOIN p ON o.id = p.order_id AND o.ts BETWEEN p.ts - INTERVAL '10' MINUTE AND p.ts`.
//!
//! Owns the join operator and reading a join's time bounds from its condition. The
//! planner ([`crate::planner`]) cuts DataFusion's physical plan at the join: each side's
//! subtree runs per batch as a SQL stage fed by its source, rows are routed by the hash
//! of the equality keys to this operator, what is above the join runs per batch.
//!
//! Invariants:
//! - Each side keeps the rows it has seen (the Arrow batches they came in, without the
//!   rows it does not keep), indexed by key hash (`Side`). A batch arriving on one
//!   side is matched against the other side's rows (key hash, time bound and key
//!   equality per row; then DataFusion's evaluation of the whole join condition over
//!   the candidate pairs, column at a time) and then kept; so every matching pair is
//!   emitted exactly once, when the later of its two rows arrives.
//! - The condition bounds `left time − right time` to `[lo, hi]`. A row no future row of
//!   the other side can match is dropped once the watermark passes it: a left row at
//!   `t` when `watermark > t − lo`, a right row at `t` when `watermark > t + hi`. A join
//!   whose condition does not bound both ends is refused at plan time.
//! - A row older than the watermark when it arrives is late: dropped and counted, like
//!   late rows of a window (its partners may already be gone).
//! - Outer joins (`LEFT`, `RIGHT`, `FULL`): each kept row of a preserved side carries
//!   whether a pair has been emitted with it. Once the watermark passes the time after
//!   which nothing can match it any more (as for its expiry, but row by row), a row
//!   still without a pair is emitted once with NULLs for the other side's columns. Its
//!   time is then never behind the watermark the join has passed on (the holdback
//!   covers the bounds), so it is not late downstream.
//! - Semi and anti joins (`EXISTS`, `IN`, `NOT EXISTS` with a time bound) keep the same
//!   mark on the side they return: a semi join emits a row once, at its first pair; an
//!   anti join emits a row that never found one, once the watermark has passed it, as
//!   an outer join does but with that side's columns only.
//! - Output is append-only: pairs, and the rows of outer, semi and anti joins, each
//!   emitted once and never retracted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{filter_record_batch, interleave, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use datafusion::common::JoinSide;
use datafusion::logical_expr::{JoinType, Operator as BinOp};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::expressions::{BinaryExpr, CastExpr, Column, Literal};
use datafusion::physical_plan::joins::utils::JoinFilter;

use super::late::LateRows;
use super::support::evaluate;
use crate::engine::{
    Collector, EngineError, Operator, OperatorFactory, Result, TaskInfo, event_times_ms,
};
use crate::state::keyed::{KeyedTable, NoFields};

/// Where a side's event time is read: `value of column col − shift` (DataFusion may
/// have pushed `ts − INTERVAL …` into the side's projection as a column of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SideTime {
    pub(crate) col: usize,
    pub(crate) shift: i64,
    /// The source column the time comes from.
    pub(crate) name: String,
}

/// `left time − right time` of every joined pair lies in `[lo, hi]` (milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimeBounds {
    pub(crate) left: SideTime,
    pub(crate) right: SideTime,
    pub(crate) lo: i64,
    pub(crate) hi: i64,
}

/// Reads the time bounds of a join condition: comparisons between a timestamp column
/// of each side, each possibly shifted by a constant interval, joined by `AND`.
/// `sides` are the join's left and right input plans; `times` their event-time
/// columns, when known: a key of equal times bounds the join only on those. `Err` says
/// what is missing.
pub(crate) fn time_bounds(
    filter: Option<&JoinFilter>,
    on: &[(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)],
    sides: [&Arc<dyn ExecutionPlan>; 2],
    times: [Option<&str>; 2],
) -> std::result::Result<TimeBounds, String> {
    const HOW: &str = "a join between two streams needs its time bounded on both ends, e.g. \
                       ON o.id = p.order_id AND o.ts BETWEEN p.ts - INTERVAL '10' MINUTE AND p.ts \
                       (comparing the event-time columns of both sides), so that its state can be \
                       dropped as the watermark passes. To enrich a stream with reference data \
                       instead, declare that table with lookup = 'true'";
    let mut found: Option<(SideTime, SideTime)> = None;
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    // A window join: `date_bin(w, l.ts) = date_bin(w, r.ts)` (both rows in the same
    // tumbling window) bounds `l − r` to (−w, w). DataFusion makes such an equality a
    // join key, so it is read from the keys, not the filter.
    for (l, r) in on {
        // Equal times, `l.ts = r.ts` (a join of two windowed results on their window
        // time): `l − r` is the difference of the columns' shifts.
        let is_time = |t: &SideTime, side: usize| times[side].is_none_or(|n| n == t.name);
        if let (Some(a), Some(c)) = (time_key(l, sides[0]), time_key(r, sides[1]))
            && is_time(&a, 0)
            && is_time(&c, 1)
        {
            let k = c.shift - a.shift;
            found.get_or_insert((a, c));
            lo = lo.max(k);
            hi = hi.min(k);
            continue;
        }
        if let (Some((wl, a)), Some((wr, c))) = (window_key(l, sides[0]), window_key(r, sides[1]))
            && wl == wr
        {
            found.get_or_insert((a, c));
            lo = lo.max(1 - wl);
            hi = hi.min(wl - 1);
        }
    }
    let mut conjuncts: Vec<Arc<dyn PhysicalExpr>> =
        filter.map(|f| f.expression().clone()).into_iter().collect();
    while let Some(e) = conjuncts.pop() {
        let (Some(filter), Some(b)) = (filter, e.downcast_ref::<BinaryExpr>()) else {
            continue;
        };
        if *b.op() == BinOp::And {
            conjuncts.push(b.left().clone());
            conjuncts.push(b.right().clone());
            continue;
        }
        let (Some(a), Some(c)) = (
            affine(b.left(), filter, sides),
            affine(b.right(), filter, sides),
        ) else {
            continue;
        };
        // a.base + a.off  op  c.base + c.off, rewritten as `left − right  op'  k`.
        let (op, k, pair) = match (a.side, c.side) {
            (JoinSide::Left, JoinSide::Right) => (*b.op(), c.offset - a.offset, (a.time, c.time)),
            (JoinSide::Right, JoinSide::Left) => {
                let Some(op) = b.op().swap() else { continue };
                (op, a.offset - c.offset, (c.time, a.time))
            }
            _ => continue,
        };
        if let Some((l, r)) = &found
            && (l.name != pair.0.name || r.name != pair.1.name)
        {
            return Err(format!(
                "the join's time condition compares more than one pair of time columns ({} and {}, \
                 {} and {}); bound one pair: the event-time columns of both sides",
                l.name, r.name, pair.0.name, pair.1.name
            ));
        }
        let before = (lo, hi);
        match op {
            BinOp::GtEq => lo = lo.max(k),
            BinOp::Gt => lo = lo.max(k.saturating_add(1)),
            BinOp::LtEq => hi = hi.min(k),
            BinOp::Lt => hi = hi.min(k.saturating_sub(1)),
            BinOp::Eq => {
                lo = lo.max(k);
                hi = hi.min(k);
            }
            _ => {}
        }
        if (lo, hi) != before && found.is_none() {
            found = Some(pair);
        }
    }
    match found {
        Some((left, right)) if lo != i64::MIN && hi != i64::MAX => Ok(TimeBounds {
            left,
            right,
            lo,
            hi,
        }),
        _ => Err(HOW.into()),
    }
}

struct Affine {
    side: JoinSide,
    /// The side's column and what it holds.
    time: SideTime,
    /// The expression's value is the base time plus this.
    offset: i64,
}

/// `column`, `column ± constant interval` (through casts between timestamp types),
/// with the column traced back through the side's projections to a source column.
fn affine(
    e: &Arc<dyn PhysicalExpr>,
    filter: &JoinFilter,
    sides: [&Arc<dyn ExecutionPlan>; 2],
) -> Option<Affine> {
    if let Some(c) = e.downcast_ref::<Column>() {
        let field = filter.schema().fields().get(c.index())?;
        if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
            return None;
        }
        let index = filter.column_indices().get(c.index())?;
        let plan = match index.side {
            JoinSide::Left => sides[0],
            JoinSide::Right => sides[1],
            JoinSide::None => return None,
        };
        let (name, shift) = trace(plan, index.index)?;
        return Some(Affine {
            side: index.side,
            time: SideTime {
                col: index.index,
                shift,
                name,
            },
            offset: shift,
        });
    }
    if let Some(cast) = e.downcast_ref::<CastExpr>() {
        return matches!(cast.cast_type(), DataType::Timestamp(_, _))
            .then(|| affine(cast.expr(), filter, sides))
            .flatten();
    }
    let (inner, k) = shifted(e)?;
    let a = affine(&inner, filter, sides)?;
    Some(Affine {
        offset: a.offset.checked_add(k)?,
        ..a
    })
}

/// `date_bin(width, time)` with the default origin: the width in ms and `time`.
fn date_bin(e: &Arc<dyn PhysicalExpr>) -> Option<(i64, &Arc<dyn PhysicalExpr>)> {
    let f = e.downcast_ref::<datafusion::physical_expr::ScalarFunctionExpr>()?;
    let [width, time] = f.args() else {
        return None;
    };
    if f.name() != "date_bin" {
        return None;
    }
    let width = width
        .downcast_ref::<Literal>()
        .and_then(|l| super::window_fn::interval_ms(l.value()).ok())?;
    Some((width, time))
}

/// An equality key `date_bin(width, ts)` of one side (possibly computed by the side's
/// projection): the width in ms and a column of the side's output holding `ts`.
/// A join key that is a timestamp column of `side`, traced back to a source column.
fn time_key(e: &Arc<dyn PhysicalExpr>, side: &Arc<dyn ExecutionPlan>) -> Option<SideTime> {
    let c = e.downcast_ref::<Column>()?;
    if !matches!(
        side.schema().fields().get(c.index())?.data_type(),
        DataType::Timestamp(_, _)
    ) {
        return None;
    }
    let (name, shift) = trace(side, c.index())?;
    Some(SideTime {
        col: c.index(),
        shift,
        name,
    })
}

fn window_key(e: &Arc<dyn PhysicalExpr>, side: &Arc<dyn ExecutionPlan>) -> Option<(i64, SideTime)> {
    fn base(e: &Arc<dyn PhysicalExpr>, plan: &Arc<dyn ExecutionPlan>) -> Option<(i64, String)> {
        use datafusion::physical_plan::projection::ProjectionExec;
        if let Some(c) = e.downcast_ref::<Column>() {
            let p = plan.downcast_ref::<ProjectionExec>()?;
            return base(&p.expr().get(c.index())?.expr, p.input());
        }
        let (width, time) = date_bin(e)?;
        let column = time.downcast_ref::<Column>()?;
        match trace(plan, column.index())? {
            (name, 0) => Some((width, name)),
            _ => None,
        }
    }
    let (width, name) = base(e, side)?;
    let schema = side.schema();
    let col = (0..schema.fields().len()).find(|&i| {
        matches!(schema.field(i).data_type(), DataType::Timestamp(_, _))
            && trace(side, i).is_some_and(|(n, shift)| n == name && shift == 0)
    })?;
    Some((
        width,
        SideTime {
            col,
            shift: 0,
            name,
        },
    ))
}

/// `x + k`, `k + x` or `x − k` for a constant interval `k`: `(x, ±k)`.
fn shifted(e: &Arc<dyn PhysicalExpr>) -> Option<(Arc<dyn PhysicalExpr>, i64)> {
    let b = e.downcast_ref::<BinaryExpr>()?;
    let constant = |e: &Arc<dyn PhysicalExpr>| {
        e.downcast_ref::<Literal>()
            .and_then(|l| super::window_fn::interval_value_ms(l.value()).ok())
    };
    match b.op() {
        BinOp::Plus => match constant(b.right()) {
            Some(k) => Some((b.left().clone(), k)),
            None => Some((b.right().clone(), constant(b.left())?)),
        },
        BinOp::Minus => Some((b.left().clone(), constant(b.right())?.checked_neg()?)),
        _ => None,
    }
}

/// The source column a side's output column `index` holds, and by how much it is
/// shifted: through projections (`ts`, `ts ± interval`, casts) and row filters.
fn trace(plan: &Arc<dyn ExecutionPlan>, index: usize) -> Option<(String, i64)> {
    use datafusion::physical_plan::filter::FilterExec;
    use datafusion::physical_plan::projection::ProjectionExec;
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        let mut expr = p.expr().get(index)?.expr.clone();
        let mut shift = 0i64;
        loop {
            if let Some(c) = expr.downcast_ref::<Column>() {
                let (name, s) = trace(p.input(), c.index())?;
                return Some((name, s.checked_add(shift)?));
            }
            if let Some(cast) = expr.downcast_ref::<CastExpr>() {
                if !matches!(cast.cast_type(), DataType::Timestamp(_, _)) {
                    return None;
                }
                expr = cast.expr().clone();
                continue;
            }
            let (inner, k) = shifted(&expr)?;
            shift = shift.checked_add(k)?;
            expr = inner;
        }
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        let index = match f.projection() {
            Some(p) => *p.get(index)?,
            None => index,
        };
        return trace(f.input(), index);
    }
    Some((plan.schema().field(index).name().clone(), 0))
}

/// Builds the interval join operator of a planned query.
pub(crate) struct IntervalJoinFactory {
    pub(crate) left_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) right_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) bounds: TimeBounds,
    /// The whole join condition besides the key equalities (includes the time bounds).
    pub(crate) filter: Option<JoinFilter>,
    pub(crate) left_schema: SchemaRef,
    pub(crate) right_schema: SchemaRef,
    /// Columns of `left ++ right` the join outputs (DataFusion may fold a projection
    /// into the join).
    pub(crate) projection: Option<Vec<usize>>,
    pub(crate) output: SchemaRef,
    /// NULL keys match each other (`IS NOT DISTINCT FROM`); SQL's `=` never matches NULL.
    pub(crate) nulls_equal: bool,
    /// Inner, outer, semi or anti (the planner refuses mark joins).
    pub(crate) join_type: JoinType,
    pub(crate) memory_limit: Option<u64>,
}

impl IntervalJoinFactory {
    /// Input columns that key each side, when every key is a plain column of the same
    /// type on both sides: rows are then routed by their hash so that equal keys meet
    /// in one task. `None`: the join runs as one task.
    pub(crate) fn key_columns(&self) -> Option<(Vec<usize>, Vec<usize>)> {
        let left = super::support::column_indices(&self.left_keys)?;
        let right = super::support::column_indices(&self.right_keys)?;
        let same_types = left.iter().zip(&right).all(|(l, r)| {
            self.left_schema.field(*l).data_type() == self.right_schema.field(*r).data_type()
        });
        (same_types && !left.is_empty()).then_some((left, right))
    }

    fn kind(&self) -> Kind {
        match self.join_type {
            JoinType::Left | JoinType::Right | JoinType::Full => Kind::Outer,
            JoinType::LeftSemi | JoinType::RightSemi => Kind::Semi,
            JoinType::LeftAnti | JoinType::RightAnti => Kind::Anti,
            _ => Kind::Inner,
        }
    }

    /// The side a semi or anti join returns (its output is that side's columns).
    fn returned_side(&self) -> Option<usize> {
        match self.kind() {
            Kind::Semi | Kind::Anti => self.preserved().iter().position(|&p| p),
            _ => None,
        }
    }

    /// Whether `side` emits its rows that never found a pair (an outer join's
    /// preserved side, NULL-padded; an anti join's returned side).
    fn emits_unpaired(&self, side: usize) -> bool {
        self.preserved()[side] && matches!(self.kind(), Kind::Outer | Kind::Anti)
    }

    /// Whether the left (0) and right (1) side mark their rows emitted: the sides an
    /// outer join preserves, the side a semi or anti join returns.
    fn preserved(&self) -> [bool; 2] {
        match self.join_type {
            JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => [true, false],
            JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => [false, true],
            JoinType::Full => [true, true],
            _ => [false, false],
        }
    }
}

/// What a join emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Pairs.
    Inner,
    /// Pairs, and a preserved side's rows without one, NULL-padded.
    Outer,
    /// One side's rows that found a pair, once.
    Semi,
    /// One side's rows that found none.
    Anti,
}

/// Whether a join between two streams of this type can run: inner, outer (its rows
/// without a pair emitted once the watermark has passed them), semi or anti (not the
/// mark joins DataFusion plans for subqueries under `OR`).
pub(crate) fn supported_join_type(join_type: JoinType) -> bool {
    !matches!(join_type, JoinType::LeftMark | JoinType::RightMark)
}

impl OperatorFactory for IntervalJoinFactory {
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn state_kind(&self) -> crate::engine::StateKind {
        crate::engine::StateKind::Checkpointed
    }

    fn describe(&self) -> String {
        let b = &self.bounds;
        let kind = match (self.kind(), self.join_type) {
            (Kind::Inner, _) => String::new(),
            (Kind::Outer, t) => format!(" ({} outer)", t.to_string().to_lowercase()),
            (_, t) => format!(" ({})", t.to_string().to_lowercase()),
        };
        format!(
            "interval join{kind}: {} key(s), left.{} − right.{} in [{} ms, {} ms]",
            self.left_keys.len(),
            b.left.name,
            b.right.name,
            b.lo,
            b.hi
        )
    }

    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        let key_types: Vec<DataType> = self
            .left_keys
            .iter()
            .map(|k| k.data_type(&self.left_schema))
            .collect::<datafusion::error::Result<_>>()
            .map_err(super::support::df("typing join keys"))?;
        let converter = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())
            .map_err(|e| EngineError::arrow("creating the join's key encoder", e))?;
        // The columns each side's pairs need: those the condition and the output read.
        let widths = [
            self.left_schema.fields().len(),
            self.right_schema.fields().len(),
        ];
        let mut needed = [vec![false; widths[0]], vec![false; widths[1]]];
        let returned = self.returned_side();
        match (&self.projection, returned) {
            // A semi or anti join's output is one side's columns.
            (Some(p), Some(side)) => {
                for &i in p {
                    needed[side][i] = true;
                }
            }
            (None, Some(side)) => needed[side] = vec![true; widths[side]],
            (Some(p), None) => {
                for &i in p {
                    match i.checked_sub(widths[0]) {
                        None => needed[0][i] = true,
                        Some(r) => needed[1][r] = true,
                    }
                }
            }
            (None, None) => needed = [vec![true; widths[0]], vec![true; widths[1]]],
        }
        if let Some(filter) = &self.filter {
            for c in filter.column_indices() {
                match c.side {
                    JoinSide::Left => needed[0][c.index] = true,
                    _ => needed[1][c.index] = true,
                }
            }
        }
        Ok(Box::new(IntervalJoinOperator {
            table: KeyedTable::open(task, "join", self.memory_limit),
            sides: [Side::default(), Side::default()],
            converter,
            key_types,
            late: LateRows::new(task),
            hash_state: key_hash_state(),
            needed,
            factory: IntervalJoinFactory {
                left_keys: self.left_keys.clone(),
                right_keys: self.right_keys.clone(),
                bounds: self.bounds.clone(),
                filter: self.filter.clone(),
                left_schema: self.left_schema.clone(),
                right_schema: self.right_schema.clone(),
                projection: self.projection.clone(),
                output: self.output.clone(),
                nulls_equal: self.nulls_equal,
                join_type: self.join_type,
                memory_limit: self.memory_limit,
            },
        }))
    }
}

/// A hasher for keys that already are hashes (DataFusion's `create_hashes`).
#[derive(Default, Clone, Copy)]
struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Key hash → 1 + number of the newest kept row with that hash (0: none).
type Heads = HashMap<u64, u64, std::hash::BuildHasherDefault<PreHashed>>;

/// The seed of the join's key hashes: fixed, and not the exchange's (whose hashes of
/// one task's rows share their key-group bits).
fn key_hash_state() -> datafusion::common::hash_utils::RandomState {
    datafusion::common::hash_utils::RandomState::with_seed(0x6a6f_696e_6b65_7973)
}

/// The rows one side has kept, oldest batch first.
///
/// Rows are numbered in arrival order over the side's life; `first` is the number of
/// the oldest kept row. The index is DataFusion's `JoinHashMap` shape over a sliding
/// range of rows: `heads` maps a key hash to its newest row, `prev` chains each row
/// to the previous row with the same hash, so a key's rows are walked newest first
/// and the walk stops at the first number below `first` (an expired row: every row
/// older than it is expired too). Expiry pops whole batches from the front and their
/// `prev`/`times` entries with them; `heads` entries left pointing below `first` are
/// dead and are swept once they outnumber the kept rows.
#[derive(Default)]
struct Side {
    batches: VecDeque<Kept>,
    first: u64,
    heads: Heads,
    /// By kept row (`number − first`): 1 + number of the previous row with the same
    /// key hash, 0 for none.
    prev: VecDeque<u64>,
    /// By kept row: its event time (ms, shift applied).
    times: VecDeque<i64>,
    /// By kept row, on a marked side (see [`IntervalJoinFactory::preserved`]; else
    /// empty): whether it has been emitted, in a pair or alone.
    done: VecDeque<bool>,
    bytes: usize,
}

struct Kept {
    /// Only rows that are kept (not late, with a time and a key).
    batch: RecordBatch,
    /// The rows' keys in arrow's row format (`None` without equality keys).
    keys: Option<arrow::row::Rows>,
    /// Number of the batch's first row.
    start: u64,
    max_time: i64,
    /// The oldest time of its rows not yet emitted (a marked side; `i64::MAX` when
    /// none is left): below the threshold, it has rows to emit alone.
    pending_min: i64,
    bytes: usize,
}

impl Side {
    /// Drops whole batches, oldest first, while every row of the front batch is older
    /// than `threshold` (no future row can match them).
    fn expire(&mut self, threshold: i64) {
        while self
            .batches
            .front()
            .is_some_and(|front| front.max_time < threshold)
        {
            let kept = self.batches.pop_front().expect("checked above");
            let n = kept.batch.num_rows();
            self.prev.drain(..n);
            self.times.drain(..n);
            self.done.drain(..n.min(self.done.len()));
            self.first += n as u64;
            self.bytes -= kept.bytes;
        }
        if self.heads.len() > 2 * self.prev.len() + 1024 {
            let first = self.first;
            self.heads.retain(|_, head| *head > first);
            self.heads.shrink_to_fit();
        }
    }

    fn rows(&self) -> usize {
        self.prev.len()
    }

    /// Bytes held, the index included.
    fn size(&self) -> usize {
        self.bytes
            + self.heads.capacity() * 16
            + (self.prev.capacity() + self.times.capacity()) * 8
            + self.done.capacity()
    }

    /// Marks kept row `(batch, row)` emitted (in a pair); true if it was not yet.
    fn mark(&mut self, (b, r): (usize, usize)) -> bool {
        if self.done.is_empty() {
            return false;
        }
        let at = (self.batches[b].start - self.first) as usize + r;
        !std::mem::replace(&mut self.done[at], true)
    }

    /// The (batch, row) of every kept row not emitted yet whose time is below
    /// `threshold` (no future row can match it), now marked emitted.
    fn unmatched_before(&mut self, threshold: i64) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        if self.done.is_empty() {
            return found;
        }
        for (b, kept) in self.batches.iter_mut().enumerate() {
            if kept.pending_min >= threshold {
                continue;
            }
            let base = (kept.start - self.first) as usize;
            let mut pending_min = i64::MAX;
            for r in 0..kept.batch.num_rows() {
                if self.done[base + r] {
                    continue;
                }
                let t = self.times[base + r];
                if t < threshold {
                    self.done[base + r] = true;
                    found.push((b, r));
                } else {
                    pending_min = pending_min.min(t);
                }
            }
            kept.pending_min = pending_min;
        }
        found
    }

    /// The batch (position in `batches`) and row of kept row number `n`.
    fn locate(&self, n: u64) -> (usize, usize) {
        let b = self.batches.partition_point(|k| k.start <= n) - 1;
        (b, (n - self.batches[b].start) as usize)
    }

    /// Appends to `out` the (batch, row) of every kept row with key hash `hash`, a
    /// time in `[lo, hi]` and the key `key` (`None`: no equality keys), newest first.
    fn matches(
        &self,
        hash: u64,
        (lo, hi): (i64, i64),
        key: Option<arrow::row::Row<'_>>,
        out: &mut Vec<(usize, usize)>,
    ) {
        let Some(&head) = self.heads.get(&hash) else {
            return;
        };
        let mut next = head;
        // Rows numbered below `first` have expired, and so have all older ones.
        while next > self.first {
            let at = (next - 1 - self.first) as usize;
            next = self.prev[at];
            let t = self.times[at];
            if t < lo || t > hi {
                continue;
            }
            let (b, r) = self.locate(self.first + at as u64);
            let same_key = match (key, &self.batches[b].keys) {
                (Some(mine), Some(theirs)) => mine == theirs.row(r),
                _ => true,
            };
            if same_key {
                out.push((b, r));
            }
        }
    }

    /// Keeps `batch` (every row kept): indexes its rows under `hashes`. `done`: on a
    /// marked side, whether each row has been emitted.
    fn keep(
        &mut self,
        batch: RecordBatch,
        keys: Option<arrow::row::Rows>,
        hashes: &[u64],
        times: &[i64],
        done: Option<&[bool]>,
    ) {
        let start = self.first + self.prev.len() as u64;
        for (i, &h) in hashes.iter().enumerate() {
            let number = start + i as u64;
            self.prev
                .push_back(self.heads.insert(h, number + 1).unwrap_or(0));
        }
        self.times.extend(times.iter().copied());
        let mut pending_min = i64::MAX;
        if let Some(done) = done {
            self.done.extend(done.iter().copied());
            for (&d, &t) in done.iter().zip(times) {
                if !d {
                    pending_min = pending_min.min(t);
                }
            }
        }
        let bytes = batch.get_array_memory_size() + keys.as_ref().map_or(0, |k| k.size());
        self.bytes += bytes;
        self.batches.push_back(Kept {
            batch,
            keys,
            start,
            max_time: times.iter().copied().max().unwrap_or(i64::MIN),
            pending_min,
            bytes,
        });
    }
}

struct IntervalJoinOperator {
    /// The task's state bookkeeping: size, watermark, snapshots' form.
    table: KeyedTable,
    factory: IntervalJoinFactory,
    /// Left (0) and right (1).
    sides: [Side; 2],
    converter: RowConverter,
    /// The keys' types (the left side's): right keys of another type are cast to them.
    key_types: Vec<DataType>,
    late: LateRows,
    hash_state: datafusion::common::hash_utils::RandomState,
    /// By side, by column: whether the join condition or the output reads it.
    needed: [Vec<bool>; 2],
}

impl IntervalJoinOperator {
    /// Joins a batch from `side` with the other side's kept rows, emits the pairs
    /// (unless `restored` is given: restoring, with the rows' emitted marks on a
    /// marked side) and keeps the batch's rows.
    async fn arrive(
        &mut self,
        side: usize,
        batch: RecordBatch,
        out: &mut Collector,
        restored: Option<Option<BooleanArray>>,
    ) -> Result<()> {
        let probe = restored.is_none();
        let mut restored_done = restored.flatten();
        let preserved = self.factory.preserved();
        let f = &self.factory;
        let (keys, time) = match side {
            0 => (&f.left_keys, &f.bounds.left),
            _ => (&f.right_keys, &f.bounds.right),
        };
        let times = event_times_ms(batch.column(time.col).as_ref())?;
        let shift = time.shift;
        let mut key_cols = Vec::with_capacity(keys.len());
        for (k, field) in keys.iter().zip(&self.key_types) {
            let col = evaluate(k, &batch)?;
            let col = if col.data_type() == field {
                col
            } else {
                arrow::compute::cast(&col, field)
                    .map_err(|e| EngineError::arrow("casting a join key", e))?
            };
            key_cols.push(col);
        }
        // The rows kept: with a time, not late, and (unless NULLs are equal) without a
        // NULL key.
        let (mut late, mut null_times): (Vec<(u32, i64)>, Vec<u32>) = (vec![], vec![]);
        let watermark = self.table.watermark();
        let key_nulls = if f.nulls_equal {
            None
        } else {
            key_cols
                .iter()
                .filter_map(|c| c.logical_nulls())
                .reduce(|a, b| arrow::buffer::NullBuffer::union(Some(&a), Some(&b)).expect("both"))
        };
        let mut live: Vec<i64> = Vec::with_capacity(batch.num_rows());
        // Rows with a NULL key, which no row matches: an outer or anti join's preserved
        // side emits them at once.
        let mut keyless: Vec<u32> = Vec::new();
        let mut skipped = false;
        let mut mask = Vec::new();
        for i in 0..batch.num_rows() {
            let keep = if times.is_null(i) {
                null_times.push(i as u32);
                false
            } else {
                let t = times.value(i) - shift;
                if t < watermark {
                    late.push((i as u32, t));
                    false
                } else if key_nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                    keyless.push(i as u32);
                    false
                } else {
                    live.push(t);
                    true
                }
            };
            if !keep && !skipped {
                skipped = true;
                mask = vec![true; i];
            }
            if skipped {
                mask.push(keep);
            }
        }
        self.late.report(
            self.table.task(),
            out,
            watermark,
            super::late::Unplaced {
                batch: &batch,
                late: &late,
                null_times: &null_times,
            },
            &|_| "older than the join's watermark".to_string(),
        );
        if probe && !keyless.is_empty() && self.factory.emits_unpaired(side) {
            let rows = UInt32Array::from(keyless);
            let cols = self.take_needed(side, &batch, &rows)?;
            let alone = self.unmatched_output(side, cols, rows.len())?;
            super::support::emit_in_slices(out, alone).await?;
        }
        let (batch, key_cols) = if skipped {
            let mask = BooleanArray::from(mask);
            if let Some(done) = &restored_done {
                restored_done = Some(
                    arrow::compute::filter(done, &mask)
                        .map_err(|e| EngineError::arrow("selecting the rows a join keeps", e))?
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .expect("a boolean array filtered")
                        .clone(),
                );
            }
            let batch = filter_record_batch(&batch, &mask)
                .map_err(|e| EngineError::arrow("selecting the rows a join keeps", e))?;
            let key_cols = key_cols
                .iter()
                .map(|c| arrow::compute::filter(c.as_ref(), &mask))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| EngineError::arrow("selecting the rows a join keeps", e))?;
            (batch, key_cols)
        } else {
            (batch, key_cols)
        };
        if batch.num_rows() == 0 {
            return self.check_state();
        }
        // Without an equality key every row has the same (empty) key and hash.
        let mut hashes = vec![0u64; batch.num_rows()];
        let rows = if key_cols.is_empty() {
            None
        } else {
            datafusion::common::hash_utils::create_hashes(&key_cols, &self.hash_state, &mut hashes)
                .map_err(super::support::df("hashing join keys"))?;
            Some(
                self.converter
                    .convert_columns(&key_cols)
                    .map_err(|e| EngineError::arrow("encoding join keys", e))?,
            )
        };

        // On a marked side: whether each row has been emitted.
        let mut done: Option<Vec<bool>> = preserved[side].then(|| match &restored_done {
            Some(d) => (0..batch.num_rows())
                .map(|i| d.is_valid(i) && d.value(i))
                .collect(),
            None => vec![false; batch.num_rows()],
        });
        if probe {
            // `other time` must lie in [t + from, t + to] for a row at `t` of this side.
            let (from, to) = match side {
                0 => (-f.bounds.hi, -f.bounds.lo),
                _ => (f.bounds.lo, f.bounds.hi),
            };
            let other = &self.sides[1 - side];
            let mut probe_rows: Vec<u32> = Vec::new();
            let mut matched: Vec<(usize, usize)> = Vec::new();
            if !other.prev.is_empty() {
                for (i, (&h, &t)) in hashes.iter().zip(&live).enumerate() {
                    other.matches(
                        h,
                        (t.saturating_add(from), t.saturating_add(to)),
                        rows.as_ref().map(|r| r.row(i)),
                        &mut matched,
                    );
                    probe_rows.resize(matched.len(), i as u32);
                }
            }
            if !probe_rows.is_empty() {
                let (joined, paired) = self.pairs(side, &batch, &probe_rows, &matched)?;
                // A semi join's rows that found their first pair: of this batch, of
                // the other side's kept rows.
                let (mut mine, mut theirs_first) = (Vec::new(), Vec::new());
                if preserved.iter().any(|&p| p) {
                    for (i, (&row, &theirs)) in probe_rows.iter().zip(&matched).enumerate() {
                        if paired.as_ref().is_none_or(|m| m.is_valid(i) && m.value(i)) {
                            if let Some(done) = done.as_mut()
                                && !std::mem::replace(&mut done[row as usize], true)
                            {
                                mine.push(row);
                            }
                            if self.sides[1 - side].mark(theirs) {
                                theirs_first.push(theirs);
                            }
                        }
                    }
                }
                if let Some(joined) = joined
                    && joined.num_rows() > 0
                {
                    super::support::emit_in_slices(out, joined).await?;
                }
                if self.factory.kind() == Kind::Semi {
                    if !mine.is_empty() {
                        let probe = UInt32Array::from(mine);
                        let cols = self.take_needed(side, &batch, &probe)?;
                        let rows = probe.len();
                        super::support::emit_in_slices(out, self.output_rows(cols, rows)?).await?;
                    }
                    if !theirs_first.is_empty() {
                        let cols = self.gather_kept(1 - side, &theirs_first)?;
                        let rows = theirs_first.len();
                        super::support::emit_in_slices(out, self.output_rows(cols, rows)?).await?;
                    }
                }
            }
        }
        self.sides[side].keep(batch, rows, &hashes, &live, done.as_deref());
        self.check_state()
    }

    /// Emits the rows of `side` (see [`IntervalJoinFactory::emits_unpaired`]) still
    /// without a pair whose time is below `threshold`.
    async fn emit_unmatched(
        &mut self,
        side: usize,
        threshold: i64,
        out: &mut Collector,
    ) -> Result<()> {
        let rows = self.sides[side].unmatched_before(threshold);
        if rows.is_empty() {
            return Ok(());
        }
        let this_cols = self.gather_kept(side, &rows)?;
        let alone = self.unmatched_output(side, this_cols, rows.len())?;
        super::support::emit_in_slices(out, alone).await
    }

    /// The output of `side`'s rows without a pair (gathered columns, `None`: not
    /// needed): an anti join's rows as they are, an outer join's NULL-padded.
    fn unmatched_output(
        &self,
        side: usize,
        this_cols: Vec<Option<ArrayRef>>,
        rows: usize,
    ) -> Result<RecordBatch> {
        if self.factory.kind() == Kind::Anti {
            return self.output_rows(this_cols, rows);
        }
        let other_schema = match side {
            0 => &self.factory.right_schema,
            _ => &self.factory.left_schema,
        };
        let other_cols: Vec<Option<ArrayRef>> = other_schema
            .fields()
            .iter()
            .map(|f| Some(new_null_array(f.data_type(), rows)))
            .collect();
        let (left, right) = match side {
            0 => (this_cols, other_cols),
            _ => (other_cols, this_cols),
        };
        self.assemble(left, right, rows)
    }

    /// The output rows of candidate pairs (`probe[i]` of `batch` with row
    /// `matched[i].1` of the other side's kept batch `matched[i].0`) that satisfy the
    /// whole join condition. Only columns the condition or the output reads are
    /// gathered.
    /// Also returns which candidates satisfied it (`None`: all did).
    fn pairs(
        &self,
        side: usize,
        batch: &RecordBatch,
        probe: &[u32],
        matched: &[(usize, usize)],
    ) -> Result<(Option<RecordBatch>, Option<BooleanArray>)> {
        let arrow_err = |what: &'static str| move |e| EngineError::arrow(what, e);
        let probe = UInt32Array::from(probe.to_vec());
        let this_cols = self.take_needed(side, batch, &probe)?;
        let other = &self.sides[1 - side];
        let mut other_cols = Vec::with_capacity(self.needed[1 - side].len());
        for (c, &needed) in self.needed[1 - side].iter().enumerate() {
            if !needed {
                other_cols.push(None);
                continue;
            }
            let arrays: Vec<&dyn Array> = other
                .batches
                .iter()
                .map(|k| k.batch.column(c).as_ref())
                .collect();
            other_cols.push(Some(
                interleave(&arrays, matched).map_err(arrow_err("taking the other side's rows"))?,
            ));
        }
        let (left, right) = match side {
            0 => (this_cols, other_cols),
            _ => (other_cols, this_cols),
        };
        let gathered = |c: &Option<ArrayRef>| -> Result<ArrayRef> {
            c.clone().ok_or_else(|| {
                EngineError::Internal("a join column was not gathered".into()).into()
            })
        };
        let rows = probe.len();
        let mut keep: Option<BooleanArray> = None;
        if let Some(filter) = &self.factory.filter {
            let columns: Vec<ArrayRef> = filter
                .column_indices()
                .iter()
                .map(|c| match c.side {
                    JoinSide::Left => gathered(&left[c.index]),
                    _ => gathered(&right[c.index]),
                })
                .collect::<Result<_>>()?;
            let input = RecordBatch::try_new(filter.schema().clone(), columns)
                .map_err(arrow_err("assembling the join condition's input"))?;
            let result = evaluate(filter.expression(), &input)?;
            keep = Some(
                result
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| {
                        EngineError::Internal("the join condition is not a boolean".into())
                    })?
                    .clone(),
            );
        }
        if matches!(self.factory.kind(), Kind::Semi | Kind::Anti) {
            // Their output is one side's rows, not pairs: only the mask counts.
            return Ok((None, keep));
        }
        let joined = self.assemble(left, right, rows)?;
        match keep {
            Some(mask) => Ok((
                Some(
                    filter_record_batch(&joined, &mask)
                        .map_err(arrow_err("applying the join condition"))?,
                ),
                Some(mask),
            )),
            None => Ok((Some(joined), None)),
        }
    }

    /// The needed columns of rows `rows` of `batch`, from `side`.
    fn take_needed(
        &self,
        side: usize,
        batch: &RecordBatch,
        rows: &UInt32Array,
    ) -> Result<Vec<Option<ArrayRef>>> {
        batch
            .columns()
            .iter()
            .zip(&self.needed[side])
            .map(|(c, &needed)| needed.then(|| take(c.as_ref(), rows, None)).transpose())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| EngineError::arrow("taking a join side's rows", e))
    }

    /// The needed columns of `side`'s kept rows `rows` ((batch, row) each).
    fn gather_kept(&self, side: usize, rows: &[(usize, usize)]) -> Result<Vec<Option<ArrayRef>>> {
        let kept = &self.sides[side].batches;
        self.needed[side]
            .iter()
            .enumerate()
            .map(|(c, &needed)| {
                if !needed {
                    return Ok(None);
                }
                let arrays: Vec<&dyn Array> =
                    kept.iter().map(|k| k.batch.column(c).as_ref()).collect();
                interleave(&arrays, rows)
                    .map(Some)
                    .map_err(|e| EngineError::arrow("taking a join side's kept rows", e))
            })
            .collect()
    }

    /// The output rows of gathered `left` and `right` columns (`None`: not needed).
    fn assemble(
        &self,
        left: Vec<Option<ArrayRef>>,
        right: Vec<Option<ArrayRef>>,
        rows: usize,
    ) -> Result<RecordBatch> {
        self.output_rows(left.into_iter().chain(right).collect(), rows)
    }

    /// The output rows of the join's gathered input columns (both sides', or a semi or
    /// anti join's returned side's; `None`: not needed): its projection of them.
    fn output_rows(&self, all: Vec<Option<ArrayRef>>, rows: usize) -> Result<RecordBatch> {
        let gathered = |c: &Option<ArrayRef>| -> Result<ArrayRef> {
            c.clone().ok_or_else(|| {
                EngineError::Internal("a join column was not gathered".into()).into()
            })
        };
        let columns: Vec<ArrayRef> = match &self.factory.projection {
            Some(p) => p
                .iter()
                .map(|&i| gathered(&all[i]))
                .collect::<Result<_>>()?,
            None => all.iter().map(gathered).collect::<Result<_>>()?,
        };
        let columns = super::support::conform_columns(&self.factory.output, columns)?;
        RecordBatch::try_new_with_options(
            self.factory.output.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| EngineError::arrow("assembling joined rows", e))
    }

    fn check_state(&self) -> Result<()> {
        self.table.report(
            self.sides.iter().map(Side::size).sum(),
            || {
                format!(
                    "({} left and {} right rows)",
                    self.sides[0].rows(),
                    self.sides[1].rows()
                )
            },
            "narrow the join's time bounds, lower watermark_delay, raise the limit or run at a \
             higher parallelism",
        )
    }
}

#[async_trait]
impl Operator for IntervalJoinOperator {
    /// A pair is emitted when its later row arrives (not late: at or after the
    /// watermark); its earlier row is at most `−lo` (left) or `hi` (right) older.
    fn watermark_holdback(&self) -> i64 {
        let b = &self.factory.bounds;
        0i64.max(b.lo.saturating_neg()).max(b.hi)
    }

    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        self.arrive(0, batch, out, None).await
    }

    async fn process_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Collector,
    ) -> Result<()> {
        self.arrive(input.min(1), batch, out, None).await
    }

    async fn handle_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        let watermark = self.table.advance(watermark);
        let b = &self.factory.bounds;
        // A left row at t matches right rows in [t − hi, t − lo]; a right row at t
        // matches left rows in [t + lo, t + hi]. Future rows are at or after the
        // watermark.
        let thresholds = [
            watermark.saturating_add(b.lo),
            watermark.saturating_sub(b.hi),
        ];
        for (side, threshold) in thresholds.into_iter().enumerate() {
            if self.factory.emits_unpaired(side) {
                self.emit_unmatched(side, threshold, out).await?;
            }
            self.sides[side].expire(threshold);
        }
        self.check_state()
    }

    /// Each side's kept rows (only those: rows dropped as late or with a NULL key are
    /// left out), and the watermark.
    fn snapshot(&mut self) -> Result<Option<crate::state::snapshot::StateBlob>> {
        let mut parts = Vec::with_capacity(2);
        let preserved = self.factory.preserved();
        for (s, side) in self.sides.iter().enumerate() {
            let batches = side
                .batches
                .iter()
                .map(|k| {
                    let mut columns = k.batch.columns().to_vec();
                    if preserved[s] {
                        // Whether each row has been emitted: the last column.
                        let base = (k.start - side.first) as usize;
                        let done: BooleanArray = side
                            .done
                            .range(base..base + k.batch.num_rows())
                            .map(|&d| Some(d))
                            .collect();
                        columns.push(Arc::new(done) as ArrayRef);
                    }
                    columns
                })
                .collect();
            parts.push(self.table.snapshot(0, NoFields::default(), batches)?);
        }
        Ok(Some(crate::state::snapshot::StateBlob::parts(parts)))
    }

    /// Feeds the kept rows back in, side by side, before any new row: the pairs they
    /// make with each other were emitted before the checkpoint and are discarded here.
    fn restore(&mut self, states: &[Vec<u8>]) -> Result<()> {
        // The rows go back in before the restored watermark is taken: none is late.
        let mut watermarks = Vec::new();
        for state in states {
            let sides = crate::state::snapshot::parts(state)?;
            if sides.len() != 2 {
                return Err(EngineError::State(format!(
                    "restoring a join: {} sides in its state",
                    sides.len()
                ))
                .into());
            }
            for (side, blob) in sides.into_iter().enumerate() {
                let (header, batches) = self.table.decode::<NoFields>(blob)?;
                watermarks.push(header.watermark);
                let schema = match side {
                    0 => self.factory.left_schema.clone(),
                    _ => self.factory.right_schema.clone(),
                };
                let keys = match side {
                    0 => self.factory.left_keys.clone(),
                    _ => self.factory.right_keys.clone(),
                };
                // A marked side has its rows' emitted marks last.
                let schema = if self.factory.preserved()[side] {
                    let mut fields = schema.fields().to_vec();
                    fields.push(Arc::new(arrow::datatypes::Field::new(
                        "_emitted",
                        DataType::Boolean,
                        true,
                    )));
                    Arc::new(arrow::datatypes::Schema::new(fields))
                } else {
                    schema
                };
                let mut discard = Collector::discard();
                for columns in batches {
                    let batch = RecordBatch::try_new(schema.clone(), columns)
                        .map_err(|e| EngineError::arrow("restoring a join side", e))?;
                    let key_columns = keys
                        .iter()
                        .map(|k| evaluate(k, &batch))
                        .collect::<Result<Vec<_>>>()?;
                    let mut batch = self.table.own_batch(&key_columns, batch)?;
                    let done = if self.factory.preserved()[side] {
                        let done = batch.remove_column(batch.num_columns() - 1);
                        Some(
                            done.as_any()
                                .downcast_ref::<BooleanArray>()
                                .cloned()
                                .ok_or_else(|| {
                                    EngineError::State(
                                    "restoring a join: its rows' emitted marks are not booleans"
                                        .into(),
                                )
                                })?,
                        )
                    } else {
                        None
                    };
                    futures::executor::block_on(self.arrive(
                        side,
                        batch,
                        &mut discard,
                        Some(done),
                    ))?;
                }
            }
        }
        for w in watermarks {
            self.table.restored(w);
        }
        Ok(())
    }

    async fn on_end(&mut self, _out: &mut Collector) -> Result<()> {
        let kept = self.sides.iter().filter(|s| !s.batches.is_empty()).count();
        if self.table.watermark() != crate::engine::Watermark::END {
            self.table.stopped(kept, "join side");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::sorted_json_lines;
    use std::sync::Arc;

    use arrow::array::RecordBatch;
    use datafusion::prelude::SessionContext;

    use crate::connectors::memory::MemorySource;
    use crate::pipeline::PipelineBuilder;

    /// The rows as a batch of `k`, `v`, `ts`, with key 3 as NULL (which no row
    /// matches: an outer or anti join's preserved side emits it alone).
    fn kvt_batch(rows: &[(i64, i64, i64)]) -> RecordBatch {
        use arrow::array::Int64Array;
        let plain = crate::testing::kvt_batch(rows);
        let keys: Int64Array = rows.iter().map(|r| (r.0 != 3).then_some(r.0)).collect();
        let mut fields = plain.schema().fields().to_vec();
        fields[0] = Arc::new(arrow::datatypes::Field::new(
            "k",
            arrow::datatypes::DataType::Int64,
            true,
        ));
        let mut columns = plain.columns().to_vec();
        columns[0] = Arc::new(keys);
        RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns).unwrap()
    }

    type Rows = Vec<(i64, i64, i64)>;

    /// Rows whose times advance with jitter below `JITTER` (out of order, never late
    /// with a watermark delay of `JITTER`), with now and then a duplicate.
    fn side() -> impl proptest::strategy::Strategy<Value = Rows> {
        use proptest::prelude::*;
        prop::collection::vec((0i64..4, -9i64..9, 0i64..JITTER, 0u8..8, 1i64..6), 0..80).prop_map(
            |raw| {
                let mut clock = 1_000_000i64;
                let mut rows: Rows = Vec::new();
                for (k, v, jitter, dup, step) in raw {
                    clock += step;
                    rows.push((k, v, clock - jitter));
                    if dup == 0 {
                        rows.push((k, v, clock - jitter));
                    }
                }
                rows
            },
        )
    }

    const JITTER: i64 = 25;

    /// The input cut into batches of `size` rows (at least one batch).
    fn batches(rows: &Rows, size: usize) -> Vec<RecordBatch> {
        if rows.is_empty() {
            return vec![kvt_batch(&[])];
        }
        rows.chunks(size).map(kvt_batch).collect()
    }

    async fn stream(
        l: &Rows,
        r: &Rows,
        size: usize,
        parallelism: usize,
        query: &str,
    ) -> crate::engine::Result<Vec<RecordBatch>> {
        let mut p = PipelineBuilder::new("join").parallelism(parallelism);
        let schema = kvt_batch(&[]).schema();
        let mut streams = Vec::new();
        for (name, rows) in [("l", l), ("r", r)] {
            // All rows in partition 0: one source partition per side keeps the jitter
            // bound (partition 1, if any, is empty and ends at once).
            let mut parts = vec![batches(rows, size)];
            parts.resize(parallelism, vec![]);
            let s = p.source(name, Arc::new(MemorySource::new(schema.clone(), parts)?));
            p.event_time(&s, "ts", std::time::Duration::from_millis(JITTER as u64))?;
            streams.push(s);
        }
        let r = streams.pop().unwrap();
        let l = streams.pop().unwrap();
        let out = p.join_sql(l, r, query).await?;
        let results = p.collect(out, "results")?;
        p.run_to_completion().await?;
        Ok(results.batches())
    }

    async fn batch(l: &Rows, r: &Rows, query: &str) -> Vec<RecordBatch> {
        let ctx = SessionContext::new();
        ctx.register_batch("l", kvt_batch(l)).unwrap();
        ctx.register_batch("r", kvt_batch(r)).unwrap();
        ctx.sql(query).await.unwrap().collect().await.unwrap()
    }

    const QUERIES: [&str; 11] = [
        // Bounded on both ends around the right row, BETWEEN.
        "SELECT l.k, l.v AS lv, r.v AS rv, CAST(l.ts AS BIGINT) AS lt, CAST(r.ts AS BIGINT) AS rt \
         FROM l JOIN r ON l.k = r.k AND l.ts BETWEEN r.ts - INTERVAL '30 milliseconds' AND r.ts + INTERVAL '10 milliseconds'",
        // Strict bounds, written from the right side, with an extra non-time condition.
        "SELECT r.k, l.v AS lv, r.v AS rv, CAST(l.ts AS BIGINT) AS lt, CAST(r.ts AS BIGINT) AS rt \
         FROM l JOIN r ON r.k = l.k AND r.ts > l.ts AND r.ts < l.ts + INTERVAL '20 milliseconds' AND l.v <= r.v",
        // No key: every pair within 5 ms, in the WHERE clause.
        "SELECT l.k AS lk, r.k AS rk, l.v AS lv, r.v AS rv, CAST(l.ts AS BIGINT) AS lt, CAST(r.ts AS BIGINT) AS rt \
         FROM l JOIN r ON true WHERE l.ts >= r.ts - INTERVAL '5 milliseconds' AND l.ts <= r.ts + INTERVAL '5 milliseconds'",
        // A window join: both rows in the same 20 ms tumbling window.
        "SELECT l.k, l.v AS lv, r.v AS rv, CAST(l.ts AS BIGINT) AS lt, CAST(r.ts AS BIGINT) AS rt \
         FROM l JOIN r ON l.k = r.k \
         AND date_bin(INTERVAL '20 milliseconds', l.ts) = date_bin(INTERVAL '20 milliseconds', r.ts)",
        // Outer joins: a left row without a pair within its bounds comes out once, with
        // NULLs for the right side, once the watermark has passed it.
        "SELECT l.k, l.v AS lv, r.v AS rv, CAST(l.ts AS BIGINT) AS lt, CAST(r.ts AS BIGINT) AS rt \
         FROM l LEFT JOIN r ON l.k = r.k AND l.ts BETWEEN r.ts - INTERVAL '30 milliseconds' AND r.ts + INTERVAL '10 milliseconds'",
        // A right outer join with a condition on values as well (a pair that fails it is
        // no pair).
        "SELECT r.k, l.v AS lv, r.v AS rv, CAST(l.ts AS BIGINT) AS lt, CAST(r.ts AS BIGINT) AS rt \
         FROM l RIGHT JOIN r ON r.k = l.k AND r.ts > l.ts AND r.ts < l.ts + INTERVAL '20 milliseconds' AND l.v <= r.v",
        // A full outer join with bounds on one side only of zero.
        "SELECT l.k AS lk, r.k AS rk, l.v AS lv, r.v AS rv, CAST(l.ts AS BIGINT) AS lt, CAST(r.ts AS BIGINT) AS rt \
         FROM l FULL JOIN r ON l.k = r.k AND l.ts BETWEEN r.ts AND r.ts + INTERVAL '15 milliseconds'",
        // A full outer window join: both rows in the same 20 ms tumbling window, or
        // each alone.
        "SELECT l.k AS lk, r.k AS rk, l.v AS lv, r.v AS rv, CAST(l.ts AS BIGINT) AS lt, CAST(r.ts AS BIGINT) AS rt \
         FROM l FULL JOIN r ON l.k = r.k \
         AND date_bin(INTERVAL '20 milliseconds', l.ts) = date_bin(INTERVAL '20 milliseconds', r.ts)",
        // Semi join: each left row with a partner in its bounds, once.
        "SELECT l.k, l.v AS lv, CAST(l.ts AS BIGINT) AS lt FROM l WHERE EXISTS \
         (SELECT 1 FROM r WHERE r.k = l.k AND l.ts BETWEEN r.ts - INTERVAL '30 milliseconds' AND r.ts + INTERVAL '10 milliseconds')",
        // Anti join with a value condition: each left row without such a partner.
        "SELECT l.k, l.v AS lv, CAST(l.ts AS BIGINT) AS lt FROM l WHERE NOT EXISTS \
         (SELECT 1 FROM r WHERE r.k = l.k AND r.ts > l.ts AND r.ts < l.ts + INTERVAL '20 milliseconds' AND l.v <= r.v)",
        // Semi join returning the right side, by IN.
        "SELECT r.k, r.v AS rv, CAST(r.ts AS BIGINT) AS rt FROM r WHERE r.k IN \
         (SELECT l.k FROM l WHERE l.ts BETWEEN r.ts AND r.ts + INTERVAL '15 milliseconds')",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 40, ..Default::default() })]

        /// Interval joins over out-of-order input with duplicates, whose state is dropped
        /// as the watermark passes, equal DataFusion batch over the same rows — whatever
        /// the batch sizes, the query shape and the parallelism.
        #[test]
        fn interval_joins_equal_batch(
            l in side(),
            r in side(),
            size in 1usize..7,
            q in 0usize..QUERIES.len(),
            parallel in proptest::bool::ANY,
        ) {
            let parallelism = if parallel { 2 } else { 1 };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let (got, expected) = rt.block_on(async {
                (stream(&l, &r, size, parallelism, QUERIES[q]).await.unwrap(), batch(&l, &r, QUERIES[q]).await)
            });
            proptest::prop_assert_eq!(sorted_json_lines(&got), sorted_json_lines(&expected));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 40, ..Default::default() })]

        /// Snapshots taken anywhere leave the joined rows unchanged, and joins restored
        /// from them, at another parallelism too (each task keeping the rows of its
        /// key groups), go on as the original would: the same rows as a run without
        /// checkpoints.
        #[test]
        fn snapshots_and_restores_anywhere_leave_the_joined_rows_unchanged(
            l in side(),
            r in side(),
            q in 0usize..QUERIES.len(),
            cuts in proptest::collection::vec(0u8..4, 0..160),
        ) {
            // The sides' rows alternate; the watermark trails the older side's newest row.
            let mut newest = [None::<i64>; 2];
            let mut steps = Vec::new();
            for i in 0..l.len().max(r.len()) {
                for (side, rows) in [&l, &r].into_iter().enumerate() {
                    if let Some(row) = rows.get(i) {
                        newest[side] = Some(newest[side].map_or(row.2, |n: i64| n.max(row.2)));
                        let watermark = newest[0].zip(newest[1]).map(|(a, b)| a.min(b) - JITTER);
                        steps.push((side, kvt_batch(&[*row]), watermark));
                    }
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let run = |cuts: Vec<u8>| {
                let steps = steps.clone();
                rt.block_on(async move {
                    let mut p = PipelineBuilder::new("drive");
                    let schema = kvt_batch(&[]).schema();
                    let mut sides = Vec::new();
                    for name in ["l", "r"] {
                        let s = p.source(name, Arc::new(MemorySource::new(schema.clone(), vec![]).unwrap()));
                        p.event_time(&s, "ts", std::time::Duration::from_millis(JITTER as u64)).unwrap();
                        sides.push(s);
                    }
                    let right = sides.pop().unwrap();
                    let left = sides.pop().unwrap();
                    let out = p.join_sql(left, right, QUERIES[q]).await.unwrap();
                    p.collect(out, "results").unwrap();
                    let out = crate::testing::drive_node(&p.build(), "interval join", &steps, &cuts).await;
                    sorted_json_lines(&out)
                })
            };
            let plain = run(vec![]);
            proptest::prop_assert_eq!(run(cuts), plain);
        }
    }

    /// One side's kept rows: 200 batches of 50 rows, five keys touched ten times in
    /// every batch, the keys sharing two hashes (so every probe meets rows of other
    /// keys under its hash).
    fn colliding_side() -> (super::Side, arrow::row::RowConverter, Vec<(u64, i64, i64)>) {
        use arrow::array::Int64Array;
        use arrow::datatypes::DataType;
        use arrow::row::{RowConverter, SortField};
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let mut side = super::Side::default();
        // (row number, key, time) of every row.
        let mut all = Vec::new();
        for b in 0..200i64 {
            let keys: Vec<i64> = (0..50).map(|j| j % 5).collect();
            let times: Vec<i64> = (0..50).map(|j| b * 10 + j % 10).collect();
            let hashes: Vec<u64> = keys.iter().map(|k| (k % 2) as u64).collect();
            let column: arrow::array::ArrayRef = Arc::new(Int64Array::from(keys.clone()));
            let rows = converter
                .convert_columns(std::slice::from_ref(&column))
                .unwrap();
            let batch = RecordBatch::try_from_iter([("k", column)]).unwrap();
            for (j, (k, t)) in keys.iter().zip(&times).enumerate() {
                all.push(((b * 50) as u64 + j as u64, *k, *t));
            }
            side.keep(batch, Some(rows), &hashes, &times, None);
        }
        (side, converter, all)
    }

    /// A probe finds exactly the kept rows of its key and time range, newest first —
    /// never a row of another key under the same hash — and after the watermark
    /// passes half the batches, never an expired row: expiry drops those 100 batches
    /// whole.
    #[test]
    fn a_side_finds_its_rows_by_key_and_time_and_expires_whole_batches() {
        use arrow::array::Int64Array;
        let (mut side, converter, all) = colliding_side();
        let probe = |side: &super::Side, key: i64, range: (i64, i64)| {
            let column: arrow::array::ArrayRef = Arc::new(Int64Array::from(vec![key]));
            let rows = converter.convert_columns(&[column]).unwrap();
            let mut out = Vec::new();
            side.matches((key % 2) as u64, range, Some(rows.row(0)), &mut out);
            out.into_iter()
                .map(|(b, r)| side.batches[b].start + r as u64)
                .collect::<Vec<u64>>()
        };
        let expected = |first: u64, key: i64, (lo, hi): (i64, i64)| {
            let mut rows: Vec<u64> = all
                .iter()
                .filter(|(n, k, t)| *n >= first && *k == key && *t >= lo && *t <= hi)
                .map(|(n, _, _)| *n)
                .collect();
            rows.reverse();
            rows
        };
        for (key, range) in [(2, (1500, 1520)), (3, (0, 2000)), (0, (995, 1005))] {
            let got = probe(&side, key, range);
            assert!(!got.is_empty());
            assert_eq!(got, expected(0, key, range), "key {key} in {range:?}");
        }
        // Batch b's newest row is at b·10 + 9: batches 0..=99 are below 1000.
        side.expire(1000);
        assert_eq!(side.batches.len(), 100);
        assert_eq!(side.rows(), 100 * 50);
        assert_eq!(side.first, 100 * 50);
        for (key, range) in [(2, (1500, 1520)), (3, (0, 2000)), (0, (995, 1005))] {
            assert_eq!(
                probe(&side, key, range),
                expected(5000, key, range),
                "key {key} in {range:?} after expiry"
            );
        }
        assert!(probe(&side, 1, (0, 999)).is_empty());
    }

    /// Expiry in bulk across many batches keeps the index bounded: hashes whose rows
    /// have all expired are swept once they outnumber the kept rows, and kept rows are
    /// still found.
    #[test]
    fn expired_hashes_are_swept_from_the_index() {
        let mut side = super::Side::default();
        for b in 0..100i64 {
            let hashes: Vec<u64> = (0..100).map(|j| (b * 100 + j) as u64).collect();
            let times = vec![b; 100];
            let batch = crate::testing::kvt_batch(&(0..100).map(|j| (j, 0, b)).collect::<Vec<_>>());
            side.keep(batch, None, &hashes, &times, None);
            side.expire(b - 5);
        }
        // Batches 94..=99 are kept.
        assert_eq!(side.rows(), 600);
        assert!(
            side.heads.len() <= 2 * 600 + 1024,
            "{} hashes indexed for 600 rows",
            side.heads.len()
        );
        let mut found = Vec::new();
        side.matches(9_950, (i64::MIN, i64::MAX), None, &mut found);
        assert_eq!(found, [(5, 50)]);
        found.clear();
        side.matches(50, (i64::MIN, i64::MAX), None, &mut found);
        assert!(found.is_empty());
    }

    /// The state is bounded: rows the watermark has passed are dropped while the
    /// pipeline runs, so a long input keeps only about the time bound's worth of rows.
    #[test]
    fn time_bounds_are_read_from_the_condition() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let refused = |q: &str| {
            rt.block_on(stream(&vec![], &vec![], 1, 1, q))
                .unwrap_err()
                .to_string()
        };
        let unbounded = refused("SELECT l.k FROM l JOIN r ON l.k = r.k AND l.ts >= r.ts");
        assert!(
            unbounded.contains("needs its time bounded on both ends"),
            "{unbounded}"
        );
        let no_time = refused("SELECT l.k FROM l JOIN r ON l.k = r.k");
        assert!(no_time.contains("needs its time bounded"), "{no_time}");
        let outer = refused("SELECT l.k FROM l LEFT JOIN r ON l.k = r.k");
        assert!(outer.contains("needs its time bounded"), "{outer}");
        let semi = refused("SELECT l.k FROM l WHERE EXISTS (SELECT 1 FROM r WHERE r.k = l.k)");
        assert!(semi.contains("needs its time bounded"), "{semi}");
    }
}
