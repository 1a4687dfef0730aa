//! The cut at a `GROUP BY`: a windowed aggregate (`tumble`, `hop`, `session` in the
//! `GROUP BY`), node `{name}_window`, with allowed lateness and, for window functions
//! over whole windows (Top-N), a gather before the stage above; or, without a window,
//! the updating aggregate, node `{name}_aggregate`, whose results are a changelog.
//! One cut for both: which one a plan needs is known only once its aggregate is found.

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;

use super::{Cut, Query, replace_with_slot};
use crate::operators::updating::UpdatingAggFactory;
use crate::operators::window::{WindowAggFactory, WindowKind};
use crate::planner::stage_plan::StagePlan;

/// Cuts at the query's aggregate, windowed or updating.
pub(super) struct Aggregate;

impl Cut for Aggregate {
    fn cut(&self, query: &Query<'_>) -> Result<Option<StagePlan>, String> {
        let Some(split) = split_window_aggregate(query.physical)? else {
            return Ok(None);
        };
        let WindowSplit {
            lower,
            aggregate,
            upper,
            gather,
        } = split;
        Ok(Some(match aggregate {
            AggOperator::Window(aggregate) => windowed(query, aggregate, lower, upper, gather)?,
            AggOperator::Updating(aggregate) => updating(query, aggregate, lower, upper),
        }))
    }
}

/// The stages around a windowed aggregate; refuses allowed lateness where it cannot apply.
fn windowed(
    query: &Query<'_>,
    aggregate: WindowAggFactory,
    lower: Arc<dyn ExecutionPlan>,
    upper: Arc<dyn ExecutionPlan>,
    gather: bool,
) -> Result<StagePlan, String> {
    let text = query.text;
    let allowed_lateness = query
        .options
        .allowed_lateness
        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64);
    if allowed_lateness > 0 && gather {
        return Err(
            "window functions over whole windows (Top-N) need each window once: \
             they do not run with windows.allowed_lateness"
                .into(),
        );
    }
    if allowed_lateness > 0 && matches!(aggregate.spec, WindowKind::Session { .. }) {
        return Err(
            "windows.allowed_lateness applies to tumble and hop windows; session \
             windows wait for the watermark"
                .into(),
        );
    }
    let aggregate = WindowAggFactory {
        memory_limit: query.options.state_memory_limit,
        allowed_lateness,
        ..aggregate
    };
    let gather = gather.then_some(aggregate.parts.window_pos);
    let upper = query.changelog_stage(upper, text.to_string(), allowed_lateness > 0);
    Ok(StagePlan::Stateful {
        lower: query.stage(lower, format!("(input of the window aggregate) {text}")),
        gather,
        key_columns: aggregate.key_columns(),
        operator: Arc::new(aggregate),
        node_suffix: "window",
        upper,
    })
}

/// The stages around an updating aggregate (a `GROUP BY` without a window).
fn updating(
    query: &Query<'_>,
    aggregate: UpdatingAggFactory,
    lower: Arc<dyn ExecutionPlan>,
    upper: Arc<dyn ExecutionPlan>,
) -> StagePlan {
    let text = query.text;
    let aggregate = UpdatingAggFactory {
        memory_limit: query.options.state_memory_limit,
        ttl: query.options.state_ttl,
        ..aggregate
    };
    let upper = query.changelog_stage(upper, text.to_string(), true);
    StagePlan::Stateful {
        lower: query.stage(lower, format!("(input of the aggregate) {text}")),
        gather: None,
        key_columns: aggregate.key_columns(),
        operator: Arc::new(aggregate),
        node_suffix: "aggregate",
        upper,
    }
}

/// The aggregate operator of a query: per window, or updating (no window).
enum AggOperator {
    Window(WindowAggFactory),
    Updating(UpdatingAggFactory),
}

/// A physical plan cut at its aggregate.
struct WindowSplit {
    lower: Arc<dyn ExecutionPlan>,
    aggregate: AggOperator,
    upper: Arc<dyn ExecutionPlan>,
    /// The upper part holds window functions: it must see whole windows.
    gather: bool,
}

/// Finds the aggregate of a planned query (checked to be windowed by
/// `check_streamable`) and cuts the plan there. `None` when there is no aggregate.
fn split_window_aggregate(
    plan: &Arc<dyn ExecutionPlan>,
) -> std::result::Result<Option<WindowSplit>, String> {
    use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};

    fn find(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        if plan.downcast_ref::<AggregateExec>().is_some() {
            return Some(plan.clone());
        }
        plan.children().into_iter().find_map(find)
    }
    let Some(top) = find(plan) else {
        return Ok(None);
    };
    let top_agg = top.downcast_ref::<AggregateExec>().expect("found above");
    // A two-phase plan (Final over Partial): the partial one holds the input-side
    // expressions.
    let bottom = match top_agg.mode() {
        AggregateMode::Final | AggregateMode::FinalPartitioned => top_agg
            .children()
            .into_iter()
            .find_map(find)
            .ok_or("the final aggregate has no partial aggregate below it")?,
        _ => top.clone(),
    };
    let agg = bottom.downcast_ref::<AggregateExec>().expect("found above");
    if agg.group_expr().has_grouping_set() {
        return Err("GROUPING SETS, CUBE and ROLLUP are not supported on streams".into());
    }
    let input_schema = agg.input().schema();
    let mut window = None;
    let mut keys = Vec::new();
    let mut key_fields = Vec::new();
    for (i, (expr, name)) in agg.group_expr().expr().iter().enumerate() {
        match WindowKind::from_expr(expr)? {
            Some((spec, time)) => {
                if window.is_some() {
                    return Err("GROUP BY holds more than one window function".into());
                }
                window = Some((i, spec, time));
            }
            None => {
                let dt = expr.data_type(&input_schema).map_err(|e| e.to_string())?;
                let nullable = expr.nullable(&input_schema).unwrap_or(true);
                key_fields.push(arrow::datatypes::Field::new(name, dt, nullable));
                keys.push(expr.clone());
            }
        }
    }
    let output = top.schema();
    let upper = replace_with_slot(plan, &top)?;
    let Some((window_pos, spec, time)) = window else {
        // No window: an updating aggregate, whose results are a changelog.
        if has_window_exec(&upper) {
            return Err(
                "window functions over the results of a GROUP BY without a window are not \
                 supported: its results keep changing"
                    .into(),
            );
        }
        return Ok(Some(WindowSplit {
            gather: false,
            lower: agg.input().clone(),
            aggregate: AggOperator::Updating(UpdatingAggFactory {
                keys,
                key_schema: Arc::new(arrow::datatypes::Schema::new(key_fields)),
                aggs: agg.aggr_expr().to_vec(),
                filters: agg.filter_expr().to_vec(),
                output,
                ttl: None,
                memory_limit: None,
            }),
            upper,
        }));
    };
    fn has_window_exec(plan: &Arc<dyn ExecutionPlan>) -> bool {
        use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
        plan.downcast_ref::<BoundedWindowAggExec>().is_some()
            || plan.downcast_ref::<WindowAggExec>().is_some()
            || plan.children().into_iter().any(has_window_exec)
    }
    let gather = has_window_exec(&upper);
    Ok(Some(WindowSplit {
        gather,
        lower: agg.input().clone(),
        aggregate: AggOperator::Window(WindowAggFactory {
            spec,
            parts: crate::operators::window::FactoryParts {
                window_pos,
                time,
                keys,
                key_schema: Arc::new(arrow::datatypes::Schema::new(key_fields)),
                aggs: agg.aggr_expr().to_vec(),
                filters: agg.filter_expr().to_vec(),
                output,
            },
            memory_limit: None,
            allowed_lateness: 0,
        }),
        upper,
    }))
}
