//! Aggregates as the stateful operators drive them: evaluating a batch's keys,
//! arguments and `FILTER`s, DataFusion accumulators per group (one per row for
//! sessions and updating aggregates), and their intermediate state as columns for
//! snapshots and back.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use arrow::compute::take;
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use super::support::{df, evaluate};
use crate::engine::{EngineError, Result};

/// A batch's inputs to an aggregate: key columns, each aggregate's arguments and each
/// aggregate's FILTER.
pub(crate) struct AggInputs {
    pub(crate) keys: Vec<ArrayRef>,
    pub(crate) args: Vec<Vec<ArrayRef>>,
    pub(crate) filters: Vec<Option<ArrayRef>>,
}

impl AggInputs {
    pub(crate) fn of(
        keys: &[Arc<dyn PhysicalExpr>],
        aggs: &[Arc<AggregateFunctionExpr>],
        filters: &[Option<Arc<dyn PhysicalExpr>>],
        batch: &RecordBatch,
    ) -> Result<AggInputs> {
        let keys = keys
            .iter()
            .map(|k| evaluate(k, batch))
            .collect::<Result<_>>()?;
        let args = aggs
            .iter()
            .map(|agg| {
                agg.expressions()
                    .iter()
                    .map(|e| evaluate(e, batch))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let filters = filters
            .iter()
            .map(|f| f.as_ref().map(|f| evaluate(f, batch)).transpose())
            .collect::<Result<_>>()?;
        Ok(AggInputs {
            keys,
            args,
            filters,
        })
    }
}

/// One fresh row accumulator per aggregate.
pub(crate) fn row_accumulators(
    aggs: &[Arc<AggregateFunctionExpr>],
) -> Result<Vec<Box<dyn datafusion::logical_expr::Accumulator>>> {
    aggs.iter()
        .map(|a| a.create_accumulator().map_err(df("creating accumulators")))
        .collect()
}

/// The intermediate state of row accumulators, one list per unit of state (a group, a
/// session), as columns by aggregate with unit `i` at row `i`. DataFusion's row
/// accumulators hand their state out destructively, so each unit's is put back into
/// fresh accumulators ([`merge_state_row`], as on restore).
pub(crate) fn take_row_states(
    mut units: Vec<&mut Vec<Box<dyn datafusion::logical_expr::Accumulator>>>,
    aggs: &[Arc<AggregateFunctionExpr>],
) -> Result<Vec<Vec<ArrayRef>>> {
    let mut states: Vec<Vec<Vec<ScalarValue>>> = vec![Vec::with_capacity(units.len()); aggs.len()];
    for accs in units.iter_mut() {
        for (i, acc) in accs.iter_mut().enumerate() {
            states[i].push(acc.state().map_err(df("reading aggregate state"))?);
        }
    }
    let mut columns = Vec::with_capacity(aggs.len());
    for per_unit in states {
        let width = per_unit.first().map_or(0, Vec::len);
        let agg_columns = (0..width)
            .map(|c| {
                ScalarValue::iter_to_array(per_unit.iter().map(|s| s[c].clone()))
                    .map_err(df("checkpointing aggregate state"))
            })
            .collect::<Result<Vec<_>>>()?;
        columns.push(agg_columns);
    }
    for (row, accs) in units.into_iter().enumerate() {
        *accs = row_accumulators(aggs)?;
        merge_state_row(accs, &columns, row)?;
    }
    Ok(columns)
}

/// Merges row `row` of checkpointed state columns (`states`, by aggregate) into `accs`.
pub(crate) fn merge_state_row(
    accs: &mut [Box<dyn datafusion::logical_expr::Accumulator>],
    states: &[Vec<ArrayRef>],
    row: usize,
) -> Result<()> {
    for (acc, state) in accs.iter_mut().zip(states) {
        let slices: Vec<ArrayRef> = state.iter().map(|c| c.slice(row, 1)).collect();
        acc.merge_batch(&slices)
            .map_err(df("restoring aggregate state"))?;
    }
    Ok(())
}

/// Splits checkpointed state columns into each aggregate's, `widths[i]` for aggregate
/// `i`; returns them and the columns after.
pub(crate) fn split_states(
    columns: &[ArrayRef],
    widths: &[usize],
) -> (Vec<Vec<ArrayRef>>, Vec<ArrayRef>) {
    let mut at = 0;
    let states = widths
        .iter()
        .map(|w| {
            let part = columns[at..at + w].to_vec();
            at += w;
            part
        })
        .collect();
    (states, columns[at..].to_vec())
}

/// A `FILTER` condition with NULL counting as false (arrow's `prep_null_mask_filter`,
/// which needs a null buffer, only when there is one).
pub(crate) fn null_as_false(condition: &BooleanArray) -> BooleanArray {
    match condition.nulls() {
        Some(n) if n.null_count() > 0 => arrow::compute::prep_null_mask_filter(condition),
        _ => condition.clone(),
    }
}

/// Updates one group's row accumulators with rows `rows` of a batch's aggregate
/// arguments, honouring each aggregate's FILTER.
pub(crate) fn update_accumulators(
    accs: &mut [Box<dyn datafusion::logical_expr::Accumulator>],
    rows: &[u32],
    args: &[Vec<ArrayRef>],
    filters: &[Option<ArrayRef>],
) -> Result<()> {
    use arrow::compute::filter;
    let indices = UInt32Array::from(rows.to_vec());
    for (i, acc) in accs.iter_mut().enumerate() {
        let mut values: Vec<ArrayRef> = args[i]
            .iter()
            .map(|a| take(a.as_ref(), &indices, None))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| EngineError::arrow("selecting a group's rows", e))?;
        if let Some(f) = &filters[i] {
            let mask = take(f.as_ref(), &indices, None)
                .map_err(|e| EngineError::arrow("aggregate FILTER", e))?;
            let mask = mask
                .as_any()
                .downcast_ref::<BooleanArray>()
                .map(null_as_false)
                .ok_or_else(|| EngineError::Internal("FILTER must be a boolean".into()))?;
            values = values
                .iter()
                .map(|v| filter(v.as_ref(), &mask))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| EngineError::arrow("aggregate FILTER", e))?;
        }
        acc.update_batch(&values)
            .map_err(df("updating aggregates"))?;
    }
    Ok(())
}
