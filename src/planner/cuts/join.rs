//! The cut at a join of two streams: finds it (an inner, outer, semi or anti join, as
//! admitted by `check_streamable`), checks that its sides are per-row and bounded by
//! their event-time columns, and makes the interval join operator with a per-batch
//! stage per side and one above it.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::physical_plan::ExecutionPlan;

use super::{Cut, Query, replace_with_slot};
use crate::operators::join::IntervalJoinFactory;
use crate::operators::stage::SlotPartition;
use crate::planner::stage_plan::StagePlan;

/// Cuts at a join whose both sides read streams: node `{name}_join` between
/// `{name}_left` and `{name}_right`.
pub(super) struct StreamJoin;

impl Cut for StreamJoin {
    fn cut(&self, query: &Query<'_>) -> Result<Option<StagePlan>, String> {
        let Some(split) = split_join(query.physical, query.event_times, query.window_ends)? else {
            return Ok(None);
        };
        let text = query.text;
        let join = IntervalJoinFactory {
            memory_limit: query.options.state_memory_limit,
            ..split.join
        };
        let [left_table, right_table] = split.tables;
        Ok(Some(StagePlan::Join {
            sides: [
                query.stage(
                    split.left,
                    format!("(left input of the join: {left_table}) {text}"),
                ),
                query.stage(
                    split.right,
                    format!("(right input of the join: {right_table}) {text}"),
                ),
            ],
            inputs: [left_table, right_table],
            key_columns: join.key_columns(),
            operator: Arc::new(join),
            upper: query.stage(split.upper, text.to_string()),
        }))
    }
}

/// A physical plan cut at a join of two streams.
struct JoinSplit {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    /// The stream table each side reads.
    tables: [String; 2],
    join: IntervalJoinFactory,
    upper: Arc<dyn ExecutionPlan>,
}

/// The stream tables a physical subtree scans.
fn stream_tables(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
    use datafusion::physical_plan::streaming::StreamingTableExec;
    let mut found = Vec::new();
    let _ = plan.apply(|n| {
        if let Some(scan) = n.downcast_ref::<StreamingTableExec>() {
            found.extend(
                scan.partitions()
                    .iter()
                    .filter_map(|p| SlotPartition::table_of(p.as_ref())),
            );
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Finds a join whose both sides read streams (checked by `check_streamable`
/// not to be a mark join) and cuts the plan there. `None` when there is none.
fn split_join(
    plan: &Arc<dyn ExecutionPlan>,
    event_times: &BTreeMap<String, String>,
    window_ends: &BTreeMap<String, Vec<String>>,
) -> std::result::Result<Option<JoinSplit>, String> {
    use datafusion::common::NullEquality;
    use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec};

    let mut found = None;
    let _ = plan.apply(|n| {
        let children = n.children();
        if children.len() == 2
            && !stream_tables(children[0]).is_empty()
            && !stream_tables(children[1]).is_empty()
        {
            found = Some(n.clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let Some(node) = found else {
        return Ok(None);
    };
    let (left, right, on, filter, join_type, projection, nulls_equal) =
        if let Some(j) = node.downcast_ref::<HashJoinExec>() {
            if j.null_aware {
                // `NOT IN`: one NULL on the other side makes every row's answer unknown,
                // which a stream could only learn after emitting rows.
                return Err(
                    "NOT IN (subquery) over a stream is not supported (a NULL arriving on \
                     the other side would take back every row already emitted): write NOT EXISTS"
                        .into(),
                );
            }
            (
                j.left().clone(),
                j.right().clone(),
                j.on().to_vec(),
                j.filter().cloned(),
                *j.join_type(),
                j.projection.as_ref().map(|p| p.to_vec()),
                j.null_equality() == NullEquality::NullEqualsNull,
            )
        } else if let Some(j) = node.downcast_ref::<NestedLoopJoinExec>() {
            (
                j.left().clone(),
                j.right().clone(),
                vec![],
                j.filter().cloned(),
                *j.join_type(),
                j.projection().as_ref().map(|p| p.to_vec()),
                false,
            )
        } else {
            return Err(format!(
                "this combination of two streams ({}) is not supported: join them with JOIN … ON",
                node.name()
            ));
        };
    if !crate::operators::join::supported_join_type(join_type) {
        return Err(format!(
            "a join between two streams is an interval join (inner, outer, semi or anti); \
             {join_type} joins are not supported yet"
        ));
    }
    let tables = [stream_tables(&left), stream_tables(&right)];
    let (Ok([left_table]), Ok([right_table])) = (
        <[String; 1]>::try_from(tables[0].clone()),
        <[String; 1]>::try_from(tables[1].clone()),
    ) else {
        return Err("each side of a join between streams must read one stream".into());
    };
    let stateful = |p: &Arc<dyn ExecutionPlan>| {
        p.exists(|n| {
            Ok(n.name().contains("Aggregate")
                || n.name().contains("Window")
                || n.name().contains("Join"))
        })
        .unwrap_or(false)
    };
    // `super::super::chain` made every stateful input a stage of its own.
    if stateful(&left) || stateful(&right) {
        return Err(
            "the inputs of this join between streams could not be cut into stages of their own"
                .into(),
        );
    }
    let bounds = crate::operators::join::time_bounds(
        filter.as_ref(),
        &on,
        [&left, &right],
        [
            event_times.get(&left_table).map(String::as_str),
            event_times.get(&right_table).map(String::as_str),
        ],
    )?;
    for (table, name) in [
        (&left_table, &bounds.left.name),
        (&right_table, &bounds.right.name),
    ] {
        let window_end = window_ends.get(table).is_some_and(|e| e.contains(name));
        match event_times.get(table) {
            Some(et) if et == name || window_end => {}
            Some(et) => {
                return Err(format!(
                    "the join's time condition uses {table}.{name}, but {table}'s event time is {et}: \
                     bound the join by the event-time columns, whose watermark drops the join's state"
                ));
            }
            None => {
                return Err(format!(
                    "{table} has no event time: declare event_time_field on it, a join between streams \
                     keeps its rows until the watermark passes them"
                ));
            }
        }
    }
    let upper = replace_with_slot(plan, &node)?;
    if stateful(&upper) {
        return Err(
            "the steps above this join between streams could not be cut into a stage of their own"
                .into(),
        );
    }
    let (left_keys, right_keys) = on.into_iter().unzip();
    Ok(Some(JoinSplit {
        join: IntervalJoinFactory {
            left_keys,
            right_keys,
            bounds,
            filter,
            left_schema: left.schema(),
            right_schema: right.schema(),
            projection,
            output: node.schema(),
            nulls_equal,
            join_type,
            memory_limit: None,
        },
        left,
        right,
        tables: [left_table, right_table],
        upper,
    }))
}
