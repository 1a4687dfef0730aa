//! Refusing what cannot run on an unbounded stream, on the optimized logical plan and
//! before any cut: unbounded `ORDER BY`, `LIMIT`, `UNION` without `ALL`, subqueries and `DISTINCT`,
//! `OVER (…)` other than `ROW_NUMBER()` by key or over whole windows, joins other than
//! with a lookup table or an inner join of two streams, and queries reading no table.
//! Also finds the stream tables a query reads, and tells its stateful operations
//! ([`is_stateful`]) apart for `super::chain`, which plans a query holding several as
//! a chain of stages.

use std::collections::BTreeSet;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan};

use super::SqlError;
use crate::operators::window_fn::WINDOW_FUNCTIONS;
use crate::types::Location;

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// Refuses plans that cannot run on an unbounded stream, and returns the stream tables
/// the plan reads (sorted).
pub(super) fn check_streamable(
    plan: &LogicalPlan,
    location: &Location,
    lookups: &BTreeSet<String>,
) -> Result<Vec<String>> {
    use datafusion::logical_expr::JoinType;
    let is_lookup = |side: &LogicalPlan| reads_lookups_only(side, lookups);
    let mut refusal: Option<String> = None;
    let mut tables: Vec<String> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        let why = match node {
            LogicalPlan::Sort(_) => Some(
                "ORDER BY over an unbounded stream would never emit a row, since a later row may always sort first. \
                 Remove the ORDER BY and sort where the results are read, or rank rows within a window \
                 (ROW_NUMBER() OVER (PARTITION BY … ORDER BY …) over a windowed GROUP BY for a Top-N per window, \
                 or by event time per key for the first rows of each key: see docs/pipelines.md)",
            ),
            LogicalPlan::Join(j) => {
                let (left, right) = (is_lookup(&j.left), is_lookup(&j.right));
                match (left, right, j.join_type) {
                    (false, true, JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti)
                    | (true, false, JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti) => None,
                    (false, true, _) | (true, false, _) => Some(
                        "a join with a lookup table keeps the stream's rows: use JOIN or LEFT JOIN with the stream \
                         on the left (a RIGHT or FULL join would emit the whole lookup table for every batch)",
                    ),
                    (false, false, t) if crate::operators::join::supported_join_type(t) => None,
                    _ => Some(
                        "a join between two streams is an interval join (JOIN, LEFT, RIGHT or FULL JOIN … \
                         ON keys AND a time condition, or EXISTS / NOT EXISTS with one); a subquery under OR \
                         (a mark join) is not supported yet: write the conditions as a UNION ALL of two \
                         queries. To enrich a stream with reference data, declare that table with \
                         lookup = 'true'",
                    ),
                }
            }
            // Window functions over the results of a windowed GROUP BY, partitioned by
            // the window (Top-N per window): they run once per closed window, over all of
            // its rows (see `StagePlan::Stateful::gather`).
            LogicalPlan::Window(w) if is_over_window_results(w) => None,
            LogicalPlan::Window(w) if is_row_number_by_key(w) => None,
            LogicalPlan::Window(w) if is_row_number(w) => Some(
                "ROW_NUMBER() on a stream ranks rows by event time, ascending (PARTITION BY key \
                 ORDER BY event_time: the first N rows of each key, final once the watermark passes \
                 them). Ordered otherwise (by another column, or the latest first) a row's rank \
                 changes as later rows arrive, which makes the results a changelog: not supported \
                 yet. For the top rows of a time span, rank the results of a windowed GROUP BY \
                 (ROW_NUMBER() OVER (PARTITION BY the window ORDER BY …))",
            ),
            LogicalPlan::Window(_) => Some(
                "on a stream, OVER (…) supports ROW_NUMBER() OVER (PARTITION BY key ORDER BY event_time) \
                 (deduplication with WHERE rn = 1, first N per key with WHERE rn <= N); other window \
                 functions and orders need state that is not supported yet",
            ),
            LogicalPlan::Limit(_) => Some(
                "LIMIT on an unbounded stream is not supported: filter rows with WHERE instead",
            ),
            LogicalPlan::Aggregate(a) if is_union_distinct(a) => Some(
                "UNION (without ALL) removes duplicate rows over the whole stream, which would keep \
                 every row forever: write UNION ALL, and deduplicate its rows if needed with \
                 ROW_NUMBER() OVER (PARTITION BY key ORDER BY event_time) … WHERE rn = 1",
            ),
            LogicalPlan::RecursiveQuery(_) => Some("recursive queries do not run on streams"),
            LogicalPlan::Subquery(_) | LogicalPlan::Distinct(_) => Some(
                "subqueries and DISTINCT over a stream are not supported: write the subquery as a join \
                 (with a lookup table, or between streams within a time bound) and DISTINCT as a GROUP BY",
            ),
            LogicalPlan::TableScan(scan) => {
                tables.push(scan.table_name.table().to_string());
                None
            }
            _ => None,
        };
        if let Some(why) = why {
            refusal = Some(why.to_string());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if let Some(message) = refusal {
        return Err(SqlError::NotStreamable {
            location: location.clone(),
            message,
        }
        .into());
    }
    tables.retain(|t| !lookups.contains(t));
    tables.sort();
    tables.dedup();
    if tables.is_empty() {
        return Err(SqlError::Plan {
            location: location.clone(),
            message: "the query reads no table: select FROM a source declared with CREATE TABLE … WITH (connector = …)".into(),
        }
        .into());
    }
    Ok(tables)
}

/// `true` for what DataFusion makes of `UNION` (distinct): a `GROUP BY` of every
/// column of a union, without aggregates.
fn is_union_distinct(a: &datafusion::logical_expr::Aggregate) -> bool {
    let mut input = a.input.as_ref();
    while let LogicalPlan::Projection(p) = input {
        input = p.input.as_ref();
    }
    a.aggr_expr.is_empty()
        && matches!(input, LogicalPlan::Union(u) if u.schema.fields().len() == a.group_expr.len())
}

/// `true` when `plan` reads only lookup tables.
fn reads_lookups_only(plan: &LogicalPlan, lookups: &BTreeSet<String>) -> bool {
    let mut all = true;
    let mut any = false;
    let _ = plan.apply(|n| {
        if let LogicalPlan::TableScan(scan) = n {
            any = true;
            all &= lookups.contains(scan.table_name.table());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    any && all
}

/// `true` for a node that keeps state across batches, each its own stage in a chain:
/// an aggregate (windowed or updating), a join of two streams, `ROW_NUMBER()` by key.
/// Window functions over whole windows (Top-N) run with the windowed aggregate below
/// them and are not one.
pub(super) fn is_stateful(node: &LogicalPlan, lookups: &BTreeSet<String>) -> bool {
    match node {
        LogicalPlan::Aggregate(_) => true,
        LogicalPlan::Join(j) => {
            !reads_lookups_only(&j.left, lookups) && !reads_lookups_only(&j.right, lookups)
        }
        LogicalPlan::Window(w) => !is_over_window_results(w) && is_row_number_by_key(w),
        _ => false,
    }
}

/// What a stateful node is, for messages.
pub(super) fn stateful_name(node: &LogicalPlan) -> &'static str {
    match node {
        LogicalPlan::Aggregate(a) if is_windowed(a) => "a windowed GROUP BY",
        LogicalPlan::Aggregate(_) => "a GROUP BY",
        LogicalPlan::Join(_) => "a join of two streams",
        _ => "ROW_NUMBER()",
    }
}

/// `true` when every window expression is partitioned by (a field of) the window
/// column of a windowed `GROUP BY` below it.
fn is_over_window_results(w: &datafusion::logical_expr::Window) -> bool {
    let below_is_windowed = w
        .input
        .exists(|n| Ok(matches!(n, LogicalPlan::Aggregate(a) if is_windowed(a))))
        .unwrap_or(false);
    let schema = w.input.schema();
    let window_type = crate::operators::window_fn::window_type();
    let by_window = |e: &Expr| {
        e.column_refs().iter().any(|c| {
            datafusion::common::ExprSchema::field_from_column(schema.as_ref(), c)
                .map(|f| f.data_type() == &window_type)
                .unwrap_or(false)
        })
    };
    below_is_windowed
        && w.window_expr.iter().all(|e| {
            let e = match e {
                Expr::Alias(a) => a.expr.as_ref(),
                e => e,
            };
            matches!(e, Expr::WindowFunction(f) if f.params.partition_by.iter().any(by_window))
        })
}

/// `true` for window expressions that are all `ROW_NUMBER()`.
fn is_row_number(w: &datafusion::logical_expr::Window) -> bool {
    w.window_expr.iter().all(|e| {
        let e = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        };
        matches!(e, Expr::WindowFunction(f) if f.fun.name() == "row_number")
    })
}

/// `true` for `ROW_NUMBER() OVER (PARTITION BY … ORDER BY one column ASC)`, alone.
fn is_row_number_by_key(w: &datafusion::logical_expr::Window) -> bool {
    let [expr] = w.window_expr.as_slice() else {
        return false;
    };
    let expr = match expr {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    match expr {
        Expr::WindowFunction(f) => {
            f.fun.name() == "row_number"
                && !f.params.partition_by.is_empty()
                && f.params.order_by.len() == 1
                && f.params.order_by[0].asc
        }
        _ => false,
    }
}

/// `true` when an aggregate's `GROUP BY` holds a window function.
pub(super) fn is_windowed(agg: &datafusion::logical_expr::Aggregate) -> bool {
    agg.group_expr.iter().any(|e| {
        e.exists(|e| {
            Ok(matches!(e, Expr::ScalarFunction(f) if WINDOW_FUNCTIONS.contains(&f.func.name())))
        })
        .unwrap_or(false)
    })
}
