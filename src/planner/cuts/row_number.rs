//! The cut at `ROW_NUMBER() OVER (PARTITION BY key ORDER BY event_time)`
//! (deduplication, first N per key): node `{name}_rank`, ordered by the event time of
//! the table the query reads.

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;

use super::{Cut, Query, replace_with_slot};
use crate::operators::rank::RankFactory;
use crate::planner::stage_plan::StagePlan;

/// Cuts at the query's row_number window.
pub(super) struct RowNumber;

impl Cut for RowNumber {
    fn cut(&self, query: &Query<'_>) -> Result<Option<StagePlan>, String> {
        let event_time = query
            .inputs
            .first()
            .and_then(|i| query.event_times.get(i))
            .map(String::as_str);
        let Some(split) = split_row_number(query.physical, event_time)? else {
            return Ok(None);
        };
        let text = query.text;
        let rank = RankFactory {
            memory_limit: query.options.state_memory_limit,
            ttl: query.options.state_ttl,
            ..split.rank
        };
        Ok(Some(StagePlan::Stateful {
            lower: query.stage(split.lower, format!("(input of row_number) {text}")),
            gather: None,
            key_columns: rank.key_columns(),
            operator: Arc::new(rank),
            node_suffix: "rank",
            upper: query.stage(split.upper, text.to_string()),
        }))
    }
}

/// A physical plan cut at its `ROW_NUMBER() OVER (PARTITION BY … ORDER BY time)`.
struct RankSplit {
    lower: Arc<dyn ExecutionPlan>,
    rank: RankFactory,
    upper: Arc<dyn ExecutionPlan>,
}

/// Finds the row_number window (checked by `check_streamable`) and cuts the plan
/// there, dropping the sort DataFusion put below it. `None` when there is none.
fn split_row_number(
    plan: &Arc<dyn ExecutionPlan>,
    event_time: Option<&str>,
) -> std::result::Result<Option<RankSplit>, String> {
    use datafusion::physical_plan::expressions::Column;
    use datafusion::physical_plan::sorts::sort::SortExec;
    use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};

    fn find(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        if plan.downcast_ref::<BoundedWindowAggExec>().is_some()
            || plan.downcast_ref::<WindowAggExec>().is_some()
        {
            return Some(plan.clone());
        }
        plan.children().into_iter().find_map(find)
    }
    let Some(node) = find(plan) else {
        return Ok(None);
    };
    let (exprs, input) = match node.downcast_ref::<BoundedWindowAggExec>() {
        Some(w) => (w.window_expr().to_vec(), w.input().clone()),
        None => {
            let w = node.downcast_ref::<WindowAggExec>().expect("found above");
            (w.window_expr().to_vec(), w.input().clone())
        }
    };
    let [expr] = exprs.as_slice() else {
        return Err("one ROW_NUMBER() per query".into());
    };
    let [order] = expr.order_by() else {
        return Err("ROW_NUMBER() must be ordered by one column: the event time".into());
    };
    let time_name = order
        .expr
        .downcast_ref::<Column>()
        .map(|c| c.name().to_string());
    let Some(event_time) = event_time else {
        return Err(
            "ROW_NUMBER() on a stream is ordered by event time: declare event_time_field on the source table".into(),
        );
    };
    if time_name.as_deref() != Some(event_time) || order.options.descending {
        return Err(format!(
            "ROW_NUMBER() on a stream must be ordered by the event-time column ascending \
             (ORDER BY {event_time}): rows are ranked once the watermark has passed them"
        ));
    }
    // DataFusion sorts the input for the window; the operator orders by itself.
    let lower = match input.downcast_ref::<SortExec>() {
        Some(sort) => sort.input().clone(),
        None => input,
    };
    let output = node.schema();
    let upper = replace_with_slot(plan, &node)?;
    Ok(Some(RankSplit {
        lower,
        rank: RankFactory {
            keys: expr.partition_by().to_vec(),
            time: order.expr.clone(),
            output,
            ttl: None,
            memory_limit: None,
        },
        upper,
    }))
}
