//! The planner's entry points: [`SqlPlanner`] plans a pipeline's SQL into an engine
//! [`Graph`](crate::engine::Graph), and single queries into SQL stages for the Rust
//! builder API. One mechanism for both: every query becomes a [`StagePlan`] (see
//! [`SqlPlanner::plan_stage`]). Also owns the planning session (DataFusion's config,
//! UDFs, the stream inputs and lookup tables registered in it) and the settings.
//!
//! The steps of a pipeline are in `tables.rs` (declaring tables) and `inserts.rs`
//! (each `INSERT INTO`); refusals before any cut in `streamable.rs`; the cuts at
//! stateful operators in `cuts/`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, ScalarUDF, cast};
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::Statement;

use super::ddl::parse_sql;
use super::event_time::add_window_time_args;
use super::inserts::Wiring;
use super::stage_plan::StagePlan;
use super::streamable::check_streamable;
use super::{SqlError, SqlText, cuts};
use crate::connectors;
use crate::dlq::ErrorPolicy;
use crate::engine::Graph;
use crate::operators::lookup::{LookupPartition, LookupTable};
use crate::operators::stage::{SlotPartition, SqlOperatorFactory};
use crate::types::Location;

/// The lookup tables of one planning session, by name.
#[derive(Debug, Default)]
pub(crate) struct LookupNames(
    std::sync::Mutex<std::collections::BTreeMap<String, Arc<LookupTable>>>,
);

impl LookupNames {
    /// The lookup tables registered in a session's state.
    pub(crate) fn of(
        state: &datafusion::execution::SessionState,
    ) -> std::collections::BTreeMap<String, Arc<LookupTable>> {
        state
            .config()
            .get_extension::<LookupNames>()
            .map(|l| l.0.lock().expect("lookup names").clone())
            .unwrap_or_default()
    }
}

/// Settings the planner applies to every node it creates.
#[derive(Debug, Clone)]
pub struct PlanSettings {
    /// Default parallelism of every node; a table's `parallelism` option overrides it.
    pub parallelism: usize,
    /// What operators and sinks do with a row they cannot handle (a row SQL cannot
    /// evaluate, a late row, a lookup miss, a refusal).
    pub on_processing_error: ErrorPolicy,
    /// What sources do with a record they cannot decode or whose `CHECK` fails.
    pub on_bad_record: ErrorPolicy,
    /// A table's own policy (its source's or its sink's), overriding the two above.
    pub table_errors: BTreeMap<String, ErrorPolicy>,
    /// Connector options by table, added to (and overriding) the SQL `WITH (…)`, from
    /// the pipeline file's `connectors:` section.
    pub table_options: BTreeMap<String, BTreeMap<String, String>>,
    /// Where those options were written, for errors about them.
    pub table_options_origin: Option<Location>,
    /// Most bytes of state one task of a stateful operator may hold; over it the
    /// pipeline fails with an error naming the operator, rather than swapping.
    pub state_memory_limit: Option<u64>,
    /// How long keyed state without a window (row_number) keeps a quiet key, in event
    /// time; `None`: forever (bounded by the memory limit).
    pub state_ttl: Option<std::time::Duration>,
    /// How long after its end a window takes late rows, updating its result.
    pub allowed_lateness: Option<std::time::Duration>,
    /// The pipeline file's Rust operators, planned before the inserts, in order.
    pub operators: Vec<super::operators::OperatorDecl>,
}

/// What a SQL stage is told besides its query.
#[derive(Debug, Clone, Copy)]
pub struct StageOptions {
    pub on_error: ErrorPolicy,
    pub state_memory_limit: Option<u64>,
    pub state_ttl: Option<std::time::Duration>,
    pub allowed_lateness: Option<std::time::Duration>,
}

impl Default for StageOptions {
    fn default() -> Self {
        StageOptions {
            on_error: ErrorPolicy::Fail,
            state_memory_limit: None,
            state_ttl: None,
            allowed_lateness: None,
        }
    }
}

impl Default for PlanSettings {
    fn default() -> Self {
        PlanSettings {
            parallelism: 1,
            on_processing_error: ErrorPolicy::DeadLetter,
            on_bad_record: ErrorPolicy::DeadLetter,
            table_errors: BTreeMap::new(),
            table_options: BTreeMap::new(),
            table_options_origin: None,
            state_memory_limit: None,
            state_ttl: None,
            allowed_lateness: None,
            operators: Vec::new(),
        }
    }
}

/// One query planned: the stages of its chain, if it holds several stateful
/// operations (each reads the tables of those before it), then its own stage.
pub(super) struct PlannedQuery {
    pub links: Vec<PlannedLink>,
    pub stage: StagePlan,
    /// The stream tables (or links' tables) its own stage reads.
    pub inputs: Vec<String>,
}

/// A stage of a query's chain, whose output is the internal table `table`.
pub(super) struct PlannedLink {
    pub table: String,
    /// The base of its nodes' names (several links write the table of a `UNION ALL`).
    pub node: String,
    pub stage: StagePlan,
    pub inputs: Vec<String>,
}

/// A pipeline's graph and its SQL stages (for `explain`).
pub struct PlannedPipeline {
    pub graph: Graph,
    pub stages: Vec<(String, Arc<SqlOperatorFactory>)>,
    /// The lookup tables the stages join with, described for `explain`.
    pub lookups: Vec<String>,
}

/// Plans streaming SQL on DataFusion. Holds the Rust scalar and aggregate UDFs
/// registered through the API; the built-in ones are in [`super::udf`].
#[derive(Clone)]
pub struct SqlPlanner {
    udfs: Vec<Arc<ScalarUDF>>,
    udafs: Vec<Arc<datafusion::logical_expr::AggregateUDF>>,
    /// Kafka clusters and domains, the default registry: what tables may refer to.
    env: Arc<connectors::ConnectorEnv>,
}

impl Default for SqlPlanner {
    fn default() -> Self {
        Self::new()
    }
}

type Result<T, E = crate::Error> = std::result::Result<T, E>;

impl SqlPlanner {
    pub fn new() -> Self {
        SqlPlanner {
            udfs: super::udf::builtins(),
            udafs: Vec::new(),
            env: Arc::default(),
        }
    }

    /// Lets tables refer to what the configuration declares (Kafka clusters and
    /// domains, the schema registry).
    pub fn with_env(mut self, env: connectors::ConnectorEnv) -> Self {
        self.env = Arc::new(env);
        self
    }

    pub fn env(&self) -> &connectors::ConnectorEnv {
        &self.env
    }

    /// Makes a Rust scalar function callable from every query this planner plans.
    pub fn register_udf(&mut self, udf: ScalarUDF) {
        self.udfs.push(Arc::new(udf));
    }

    /// Makes a Rust aggregate function (a DataFusion `AggregateUDF`, its accumulator
    /// with `state`/`merge_batch`) usable in every query's `GROUP BY`, windowed or not.
    pub fn register_udaf(&mut self, udaf: datafusion::logical_expr::AggregateUDF) {
        self.udafs.push(Arc::new(udaf));
    }

    pub(super) fn session(&self) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_target_partitions(1)
            .with_coalesce_batches(false)
            .with_information_schema(false);
        let opts = config.options_mut();
        opts.sql_parser.collect_spans = true;
        opts.sql_parser.map_string_types_to_utf8view = false;
        opts.execution.parquet.schema_force_view_types = false;
        opts.optimizer.repartition_joins = false;
        opts.optimizer.repartition_aggregations = false;
        opts.optimizer.repartition_windows = false;
        opts.optimizer.enable_round_robin_repartition = false;
        let config = config.with_extension(Arc::new(LookupNames::default()));
        let ctx = SessionContext::new_with_config(config);
        for udf in self
            .udfs
            .iter()
            .chain(crate::operators::window_fn::window_udfs().iter())
        {
            ctx.register_udf(udf.as_ref().clone());
        }
        for udaf in &self.udafs {
            ctx.register_udaf(udaf.as_ref().clone());
        }
        // COUNT(DISTINCT x) must stay one aggregate (with a distinct accumulator), not
        // be rewritten into two GROUP BYs: the window operator is one aggregate.
        ctx.remove_optimizer_rule("single_distinct_aggregation_to_group_by");
        // A window function of another GROUP BY key (`tumble(…, date_time)` grouped with
        // `date_time`) is not redundant on a stream: it is what closes the group.
        ctx.remove_optimizer_rule("eliminate_group_by_constant");
        // An inner join whose right side is unique on the keys is not a semi join on a
        // stream (Nexmark q5): the interval join emits each pair once as it is.
        ctx.remove_optimizer_rule("eliminate_join");
        // Moving struct field access (`w.start`) towards the scans helps Parquet prune
        // columns; a stage reads a stream. Over the plans the chain of stages builds
        // (a link's table read back under its query's names) DataFusion 55's rules
        // made schemas with one name twice (`SELECT w … GROUP BY w` over a windowed
        // result; `a.w.start` over a join of two), refusing queries that are valid.
        ctx.remove_optimizer_rule("extract_leaf_expressions");
        ctx.remove_optimizer_rule("push_down_leaf_projections");
        ctx
    }

    /// The lookup tables registered in `ctx`.
    fn lookups_in(&self, ctx: &SessionContext) -> std::collections::BTreeSet<String> {
        LookupNames::of(&ctx.state()).into_keys().collect()
    }

    pub(super) fn register_lookup(
        ctx: &SessionContext,
        table: Arc<LookupTable>,
        schema: SchemaRef,
    ) -> Result<()> {
        let name = table.name.clone();
        let part: Arc<dyn PartitionStream> = Arc::new(LookupPartition {
            schema: schema.clone(),
            table: table.clone(),
        });
        let provider = StreamingTable::try_new(schema, vec![part])
            .map_err(|e| crate::engine::EngineError::datafusion("registering lookup table", e))?;
        ctx.register_table(name.as_str(), Arc::new(provider))
            .map_err(|e| crate::engine::EngineError::datafusion("registering lookup table", e))?;
        if let Some(names) = ctx.state().config().get_extension::<LookupNames>() {
            names.0.lock().expect("lookup names").insert(name, table);
        }
        Ok(())
    }

    pub(super) fn register_input(
        ctx: &SessionContext,
        name: &str,
        schema: SchemaRef,
    ) -> Result<()> {
        let part: Arc<dyn PartitionStream> = Arc::new(SlotPartition {
            schema: schema.clone(),
            table: Some(name.into()),
        });
        let table = StreamingTable::try_new(schema, vec![part])
            .map_err(|e| crate::engine::EngineError::datafusion("registering input", e))?;
        ctx.register_table(name, Arc::new(table))
            .map_err(|e| crate::engine::EngineError::datafusion("registering input", e))?;
        Ok(())
    }

    /// Plans one query reading the given inputs (name, schema) into SQL stages. When
    /// `target` is given, the result is cast to it column by column (by position).
    /// Refuses what cannot run on a stream (`check_streamable`); splits a query with
    /// several stateful operations into a chain of stages (`super::chain`), each
    /// reading the internal table of the one before; then asks the cuts in their order
    /// (`cuts::plan`) for each stage.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn plan_stage(
        &self,
        ctx: &SessionContext,
        sql: &SqlText,
        query: Statement,
        location: &Location,
        target: Option<&SchemaRef>,
        target_name: &str,
        options: StageOptions,
        event_times: &BTreeMap<String, String>,
    ) -> Result<PlannedQuery> {
        let text = query.to_string();
        let state = ctx.state();
        let plan = state
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                query,
            )))
            .await
            .map_err(|e| plan_error(sql, location, e))?;
        let plan = match target {
            Some(t) => cast_to(plan, t, target_name, location)?,
            None => plan,
        };
        let optimized = state
            .optimize(&plan)
            .map_err(|e| plan_error(sql, location, e))?;
        let lookups = self.lookups_in(ctx);
        let inputs = check_streamable(&optimized, location, &lookups)?;
        let refuse = |message: String| -> crate::Error {
            SqlError::Plan {
                location: location.clone(),
                message,
            }
            .into()
        };
        let taken = |name: &str| ctx.table_exist(name).unwrap_or(true);
        let tumble = datafusion::execution::FunctionRegistry::udf(ctx, "tumble")
            .map_err(|e| crate::engine::EngineError::datafusion("finding tumble", e))?;
        let (last, links) = {
            let mut splitter =
                super::chain::Splitter::new(target_name, &lookups, event_times, &taken, tumble);
            let last = splitter.split(&optimized).map_err(refuse)?;
            (last, splitter.links)
        };
        let mut times = event_times.clone();
        let mut window_ends: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut notes: BTreeMap<String, String> = BTreeMap::new();
        let mut planned_links = Vec::new();
        for link in links {
            if !ctx.table_exist(link.name.as_str()).unwrap_or(false) {
                Self::register_input(ctx, &link.name, link.schema.clone())?;
            }
            let link_inputs = check_streamable(&link.plan, location, &lookups)?;
            let stage = self
                .cut(
                    sql,
                    &state,
                    &link.plan,
                    &format!("(stage {} of) {text}", link.node),
                    options,
                    &times,
                    &window_ends,
                    &link_inputs,
                    location,
                )
                .await
                .map_err(|e| with_notes(e, &link_inputs, &notes))?;
            if stage.is_changelog() {
                return Err(SqlError::NotStreamable {
                    location: location.clone(),
                    message: format!(
                        "{} reads the results of {}, which update as rows arrive (a changelog); \
                         {} only takes rows that append. Aggregate per window in the inner query \
                         (GROUP BY tumble(…), …): a window's results are final once emitted",
                        link.reader,
                        stage.stateful_name(),
                        link.reader
                    ),
                }
                .into());
            }
            if let Some(column) = &link.event_time {
                times.insert(link.name.clone(), column.clone());
            }
            if let Some(note) = &link.no_event_time {
                notes.insert(link.name.clone(), note.clone());
            }
            window_ends.insert(link.name.clone(), link.window_ends.clone());
            planned_links.push(PlannedLink {
                node: link.node,
                table: link.name,
                stage,
                inputs: link_inputs,
            });
        }
        if planned_links.is_empty() {
            // One stage: planned from the query as written (the optimizer runs again).
            let stage = self
                .cut(
                    sql,
                    &state,
                    &plan,
                    &text,
                    options,
                    event_times,
                    &window_ends,
                    &inputs,
                    location,
                )
                .await?;
            return Ok(PlannedQuery {
                links: planned_links,
                stage,
                inputs,
            });
        }
        let last_inputs = check_streamable(&last, location, &lookups)?;
        let stage = self
            .cut(
                sql,
                &state,
                &last,
                &text,
                options,
                &times,
                &window_ends,
                &last_inputs,
                location,
            )
            .await
            .map_err(|e| with_notes(e, &last_inputs, &notes))?;
        Ok(PlannedQuery {
            links: planned_links,
            stage,
            inputs: last_inputs,
        })
    }

    /// Plans one stage's logical plan physically and cuts it at its stateful operator.
    #[allow(clippy::too_many_arguments)]
    async fn cut(
        &self,
        sql: &SqlText,
        state: &datafusion::execution::SessionState,
        plan: &LogicalPlan,
        text: &str,
        options: StageOptions,
        event_times: &BTreeMap<String, String>,
        window_ends: &BTreeMap<String, Vec<String>>,
        inputs: &[String],
        location: &Location,
    ) -> Result<StagePlan> {
        let physical = state
            .create_physical_plan(plan)
            .await
            .map_err(|e| plan_error(sql, location, e))?;
        // A lookup table read by key must be joined on its key.
        crate::operators::lookup::key_plans(&physical, &LookupNames::of(state)).map_err(
            |message| SqlError::Plan {
                location: location.clone(),
                message,
            },
        )?;
        let planned = cuts::plan(&cuts::Query {
            physical: &physical,
            text,
            options,
            event_times,
            window_ends,
            inputs,
            state,
        })
        .map_err(|message| SqlError::Plan {
            location: location.clone(),
            message,
        })?;
        Ok(planned)
    }

    /// Plans a query over named inputs (name, schema, event-time column), for the Rust
    /// builder API: one input, or two that the query joins. The event-time column is
    /// what `tumble`/`hop` use when not given one, and what bounds a join's state.
    pub async fn plan_query(
        &self,
        query: &str,
        inputs: &[(&str, SchemaRef, Option<&str>)],
        options: StageOptions,
    ) -> Result<StagePlan> {
        let sql = SqlText::file(query, "<query>");
        let mut parsed = datafusion::sql::sqlparser::parser::Parser::new(
            &datafusion::sql::sqlparser::dialect::GenericDialect {},
        )
        .try_with_sql(query)
        .and_then(|mut p| p.parse_statement())
        .map_err(|e| SqlError::Syntax {
            location: sql.locate(1, 1),
            message: e.to_string(),
        })?;
        let times: BTreeMap<String, String> = inputs
            .iter()
            .filter_map(|(name, _, et)| et.map(|c| (name.to_string(), c.to_string())))
            .collect();
        add_window_time_args(&mut parsed, &times).map_err(|(message, span)| SqlError::Plan {
            location: super::ddl::span_location(&sql, span),
            message,
        })?;
        let ctx = self.session();
        for (name, schema, _) in inputs {
            Self::register_input(&ctx, name, schema.clone())?;
        }
        let planned = self
            .plan_stage(
                &ctx,
                &sql,
                parsed,
                &sql.locate(1, 1),
                None,
                "",
                options,
                &times,
            )
            .await?;
        if !planned.links.is_empty() {
            return Err(SqlError::NotStreamable {
                location: sql.locate(1, 1),
                message: "a stage of the Rust builder API holds one stateful operation (GROUP BY, \
                          join of two streams or ROW_NUMBER): plan one stage per operation, each \
                          reading the one before, or write the query in a pipeline's SQL"
                    .into(),
            }
            .into());
        }
        Ok(planned.stage)
    }

    /// Plans a whole pipeline SQL text: tables, views and inserts.
    pub async fn plan_pipeline(
        &self,
        pipeline: &str,
        sql: &SqlText,
        base_dir: &Path,
        settings: &PlanSettings,
    ) -> Result<PlannedPipeline> {
        let parsed = parse_sql(sql)?;
        let planning = Planning {
            planner: self,
            ctx: self.session(),
            sql,
            pipeline,
            base_dir,
            settings,
        };
        planning.check_table_options(&parsed)?;
        let mut tables = planning.declare_tables(&parsed).await?;
        let mut deferred: Vec<_> = planning
            .plan_views(&parsed.views, !settings.operators.is_empty())
            .await?
            .into_iter()
            .cloned()
            .collect();
        let mut wiring = Wiring::new(pipeline);
        wiring.graph.errors = settings.on_processing_error;
        for op in &settings.operators {
            // Views over the outputs of the operators planned so far.
            deferred = planning
                .plan_views(&deferred, true)
                .await?
                .into_iter()
                .cloned()
                .collect();
            planning.plan_operator(op, &mut tables, &mut wiring).await?;
        }
        planning.plan_views(&deferred, false).await?;
        // Every INSERT is planned, so that one pass reports each one that fails; then
        // the sinks, after every stage that feeds them.
        let mut failed = Vec::new();
        let mut results = Vec::new();
        for insert in &parsed.inserts {
            match planning.plan_insert(insert, &tables, &mut wiring).await {
                Ok(result) => results.push((insert, result)),
                Err(e) => failed.push(e),
            }
        }
        for (insert, result) in results {
            if let Err(e) = planning.connect_sink(insert, &tables, result, &mut wiring) {
                failed.push(e);
            }
        }
        if let Some(e) = crate::Error::from_all(failed) {
            return Err(e);
        }
        wiring.warn_unread_sources(&tables);
        Ok(PlannedPipeline {
            graph: wiring.graph,
            stages: wiring.stages,
            lookups: tables.lookups,
        })
    }
}

/// What the steps of planning one pipeline share (see `tables.rs`, `inserts.rs`).
pub(super) struct Planning<'a> {
    pub planner: &'a SqlPlanner,
    /// The session the pipeline's tables and views are registered in.
    pub ctx: SessionContext,
    pub sql: &'a SqlText,
    pub pipeline: &'a str,
    pub base_dir: &'a Path,
    pub settings: &'a PlanSettings,
}

impl Planning<'_> {
    /// Plans one query of the pipeline (an `INSERT`'s, or what feeds a Rust operator)
    /// into a SQL stage with the pipeline's settings; see [`SqlPlanner::plan_stage`].
    pub(super) async fn plan_query_stage(
        &self,
        query: Statement,
        location: &Location,
        target: Option<&SchemaRef>,
        target_name: &str,
        event_times: &BTreeMap<String, String>,
    ) -> Result<PlannedQuery> {
        let settings = self.settings;
        self.planner
            .plan_stage(
                &self.ctx,
                self.sql,
                query,
                location,
                target,
                target_name,
                StageOptions {
                    on_error: settings.on_processing_error,
                    state_memory_limit: settings.state_memory_limit,
                    state_ttl: settings.state_ttl,
                    allowed_lateness: settings.allowed_lateness,
                },
                event_times,
            )
            .await
    }

    /// Registers the pipeline's views with the session.
    /// Registers the pipeline's views with the session, in order. With `defer`, a
    /// view that does not plan yet is returned instead of refused: it may read a Rust
    /// operator's output, which exists once the operators are planned.
    async fn plan_views<'v>(
        &self,
        views: &'v [(String, Statement, Location)],
        defer: bool,
    ) -> Result<Vec<&'v (String, Statement, Location)>> {
        let mut deferred = Vec::new();
        for view in views {
            let (_, stmt, location) = view;
            match self.ctx.sql(&stmt.to_string()).await {
                Ok(_) => {}
                Err(_) if defer => deferred.push(view),
                Err(e) => return Err(plan_error(self.sql, location, e)),
            }
        }
        Ok(deferred)
    }
}

/// A stage's refusal, with why the tables it reads lack an event time (the inputs
/// of a `UNION ALL` that pass none through) when that may be its cause.
fn with_notes(
    e: crate::Error,
    inputs: &[String],
    notes: &BTreeMap<String, String>,
) -> crate::Error {
    let Some(note) = inputs.iter().find_map(|i| notes.get(i)) else {
        return e;
    };
    match e {
        crate::Error::Sql(SqlError::Plan { location, message }) => SqlError::Plan {
            location,
            message: format!("{message} ({note})"),
        }
        .into(),
        crate::Error::Sql(SqlError::NotStreamable { location, message }) => {
            SqlError::NotStreamable {
                location,
                message: format!("{message} ({note})"),
            }
            .into()
        }
        e => e,
    }
}

/// Casts a query's result to a sink's declared columns, by position.
fn cast_to(
    plan: LogicalPlan,
    target: &SchemaRef,
    sink: &str,
    location: &Location,
) -> Result<LogicalPlan> {
    let columns = plan.schema().columns();
    if columns.len() != target.fields().len() {
        return Err(SqlError::Plan {
            location: location.clone(),
            message: format!(
                "INSERT INTO {sink}: the query returns {} columns but {sink} declares {} ({})",
                columns.len(),
                target.fields().len(),
                target
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        .into());
    }
    let exprs: Vec<Expr> = columns
        .into_iter()
        .zip(target.fields().iter())
        .map(|(c, f)| cast(Expr::Column(c), f.data_type().clone()).alias(f.name()))
        .collect();
    let plan = LogicalPlanBuilder::from(plan)
        .project(exprs)
        .and_then(|b| b.build())
        .map_err(|e| SqlError::Plan {
            location: location.clone(),
            message: format!("INSERT INTO {sink}: {}", e.message()),
        })?;
    Ok(plan)
}

/// Maps a DataFusion planning error to the user's file: DataFusion's diagnostic span
/// when it has one, else the statement's start.
pub(super) fn plan_error(sql: &SqlText, statement: &Location, e: DataFusionError) -> crate::Error {
    let location = e
        .diagnostic()
        .and_then(|d| d.span)
        .filter(|s| s.start.line > 0)
        .map(|s| sql.locate(s.start.line, s.start.column))
        .unwrap_or_else(|| statement.clone());
    let message = e.message().to_string();
    SqlError::Plan { location, message }.into()
}
