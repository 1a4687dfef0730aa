//! Small helpers every operator uses: evaluating a physical expression on a batch,
//! conforming emitted columns to the planned types, emitting large results in
//! slices, and DataFusion errors in the engine's error.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::expressions::Column;

use crate::engine::{Collector, EngineError, Result};

/// The input column of each expression, or `None` if any is not a plain column.
pub(crate) fn column_indices(exprs: &[Arc<dyn PhysicalExpr>]) -> Option<Vec<usize>> {
    exprs
        .iter()
        .map(|k| k.downcast_ref::<Column>().map(|c| c.index()))
        .collect()
}

/// Emits `batch` in slices of at most 8192 rows (a window of a million keys must not
/// become one batch).
pub(crate) async fn emit_in_slices(out: &mut Collector, batch: RecordBatch) -> Result<()> {
    let mut offset = 0;
    while offset < batch.num_rows() {
        let len = (batch.num_rows() - offset).min(8192);
        out.emit(batch.slice(offset, len)).await?;
        offset += len;
    }
    Ok(())
}

pub(crate) fn df(context: &str) -> impl Fn(DataFusionError) -> crate::Error + '_ {
    move |e| EngineError::datafusion(context, e)
}

/// Casts emitted columns to the planned output types where DataFusion's plan and the
/// accumulators' results differ only in representation (e.g. timezone spelling).
pub(crate) fn conform_columns(schema: &SchemaRef, columns: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
    columns
        .into_iter()
        .zip(schema.fields().iter())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                arrow::compute::cast(&c, f.data_type()).map_err(|e| {
                    EngineError::arrow(format!("window result column {}", f.name()), e)
                })
            }
        })
        .collect()
}

pub(crate) fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
    expr.evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(df("evaluating a GROUP BY or aggregate argument"))
}
