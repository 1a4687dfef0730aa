//! Cutting a query's physical plan at its stateful operator. Owns the [`Cut`] trait,
//! the fixed order in which the planner asks the cuts ([`CUTS`]), what a cut is given
//! ([`Query`]), and replacing the subtree below an operator by the per-task batch slot
//! the stage above it reads. Each stateful operator's cut is its own file here: a new
//! operator is a new file and one line in [`CUTS`].

mod aggregate;
mod join;
mod row_number;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::SessionState;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::streaming::PartitionStream;

use super::StageOptions;
use super::stage_plan::StagePlan;
use crate::operators::stage::{SlotPartition, SqlOperatorFactory};

/// A stateful operator the planner can cut a query's physical plan at: the per-batch
/// stage(s) below it, the operator, the per-batch stage above it.
pub(super) trait Cut: Sync {
    /// Cuts `query`'s plan at this cut's operator. `Ok(None)`: the plan holds none, the
    /// next cut is asked. `Err`: the plan holds one that cannot run as written; the
    /// message says what to write instead (reported at the statement, `SQL002`).
    fn cut(&self, query: &Query<'_>) -> Result<Option<StagePlan>, String>;
}

/// The cuts in the order they are asked; the first whose operator the plan holds makes
/// the stage. A query with several stateful operations has been split into a chain of
/// stages with one each (`super::chain`), except window functions over a windowed
/// aggregate's results (Top-N per window): the aggregate is cut before `ROW_NUMBER()`
/// so that they stay above it.
const CUTS: &[&dyn Cut] = &[
    &join::StreamJoin,
    &aggregate::Aggregate,
    &row_number::RowNumber,
];

/// Plans `query` as the first cut in [`CUTS`] makes it, or as one stateless stage
/// when the plan holds no stateful operator.
pub(super) fn plan(query: &Query<'_>) -> Result<StagePlan, String> {
    for cut in CUTS {
        if let Some(planned) = cut.cut(query)? {
            return Ok(planned);
        }
    }
    Ok(StagePlan::Stateless(
        query.stage(query.physical.clone(), query.text.to_string()),
    ))
}

/// What a cut is given: one query's physical plan (admitted by
/// [`check_streamable`](super::streamable::check_streamable)) and what its stages
/// are built with.
pub(super) struct Query<'a> {
    pub physical: &'a Arc<dyn ExecutionPlan>,
    /// The query's SQL, which its stages show in `explain`.
    pub text: &'a str,
    pub options: StageOptions,
    /// The event-time column of each stream table that has one.
    pub event_times: &'a BTreeMap<String, String>,
    /// Columns of a chain's internal tables holding a window's end, which bound a join
    /// as their event time does (see `super::chain`).
    pub window_ends: &'a BTreeMap<String, Vec<String>>,
    /// The stream tables the query reads (sorted).
    pub inputs: &'a [String],
    pub state: &'a SessionState,
}

impl Query<'_> {
    /// A per-batch stage; `changelog`: it runs over a changelog (see
    /// `SqlOperatorFactory::changelog`).
    pub(super) fn changelog_stage(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        sql: String,
        changelog: bool,
    ) -> Arc<SqlOperatorFactory> {
        Arc::new(SqlOperatorFactory {
            sql,
            misses: crate::operators::lookup::misses(&plan),
            // Refused at plan time when not joined on the key (see `plan_stage`).
            prefetch: crate::operators::lookup::key_plans(
                &plan,
                &crate::planner::plan::LookupNames::of(self.state),
            )
            .unwrap_or_default(),
            schema: plan.schema(),
            plan,
            task_ctx: self.state.task_ctx(),
            on_error: self.options.on_error,
            changelog,
        })
    }

    /// A per-batch stage over rows that only append.
    pub(super) fn stage(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        sql: String,
    ) -> Arc<SqlOperatorFactory> {
        self.changelog_stage(plan, sql, false)
    }
}

/// `plan` with the subtree `node` replaced by a scan of the per-task batch slot (of
/// `node`'s schema): the part of a query that runs above a stateful operator.
fn replace_with_slot(
    plan: &Arc<dyn ExecutionPlan>,
    node: &Arc<dyn ExecutionPlan>,
) -> std::result::Result<Arc<dyn ExecutionPlan>, String> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::physical_plan::streaming::StreamingTableExec;
    let schema = node.schema();
    let slot: Arc<dyn PartitionStream> = Arc::new(SlotPartition {
        schema: schema.clone(),
        table: None,
    });
    let scan: Arc<dyn ExecutionPlan> = Arc::new(
        StreamingTableExec::try_new(schema, vec![slot], None, vec![], false, None)
            .map_err(|e| e.to_string())?,
    );
    plan.clone()
        .transform_down(|n| {
            if Arc::ptr_eq(&n, node) {
                Ok(Transformed::new(
                    scan.clone(),
                    true,
                    TreeNodeRecursion::Jump,
                ))
            } else {
                Ok(Transformed::no(n))
            }
        })
        .map(|t| t.data)
        .map_err(|e| e.to_string())
}
