//! Plans a pipeline's SQL into an engine [`Graph`], and single queries into SQL stages
//! for the Rust builder API. One mechanism for both: every query becomes a
//! [`SqlOperatorFactory`] reading the node(s) it names.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    DdlStatement, Expr, LogicalPlan, LogicalPlanBuilder, ScalarUDF, cast,
};
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::Statement;

use super::ddl::{TableDecl, parse_sql};
use super::{SqlError, SqlText};
use crate::connectors::{self, Options, TableRequest};
use crate::dlq::ErrorPolicy;
use crate::engine::EventTime;
use crate::engine::{Graph, NodeId, Partitioning};
use crate::operators::join::IntervalJoinFactory;
use crate::operators::lookup::{LookupPartition, LookupTable};
use crate::operators::rank::RankFactory;
use crate::operators::stage::{SlotPartition, SqlOperatorFactory};
use crate::operators::updating::UpdatingAggFactory;
use crate::operators::window::{WindowAggFactory, WindowKind};
use crate::operators::window_fn::WINDOW_FUNCTIONS;
use crate::types::Location;
use datafusion::physical_plan::ExecutionPlan;

/// Names of the lookup tables of one planning session.
#[derive(Debug, Default)]
struct LookupNames(std::sync::Mutex<std::collections::BTreeSet<String>>);

/// Settings the planner applies to every node it creates.
#[derive(Debug, Clone)]
pub struct PlanSettings {
    /// Default parallelism of every node; a table's `parallelism` option overrides it.
    pub parallelism: usize,
    /// What a SQL stage does with a row whose evaluation fails.
    pub on_processing_error: ErrorPolicy,
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
            on_processing_error: ErrorPolicy::Fail,
            table_options: BTreeMap::new(),
            table_options_origin: None,
            state_memory_limit: None,
            state_ttl: None,
            allowed_lateness: None,
        }
    }
}

/// One query as the engine runs it: a stateless SQL stage, or a query with one
/// stateful operator (windowed aggregate, row_number) cut in three: per-batch stage
/// below it, the keyed operator, per-batch stage above it.
#[derive(Clone)]
pub enum StagePlan {
    Stateless(Arc<SqlOperatorFactory>),
    Stateful {
        lower: Arc<SqlOperatorFactory>,
        operator: Arc<dyn crate::engine::OperatorFactory>,
        /// Node name suffix of the operator (`window`, `rank`).
        kind: &'static str,
        /// Columns of the lower stage's output that key the operator; `None` (a
        /// computed key) or empty (no key): the operator runs as one task.
        key_columns: Option<Vec<usize>>,
        /// When the upper stage holds window functions over whole windows (Top-N per
        /// window): the window column of the operator's output. A single task then
        /// gathers each closed window's rows from every partition and hands them to
        /// the upper stage as one batch.
        gather: Option<usize>,
        upper: Arc<SqlOperatorFactory>,
    },
    /// A join of two streams (an interval join): a per-batch stage per side, the join
    /// operator, a per-batch stage above it.
    Join {
        /// The per-batch stages of the left and the right side.
        sides: [Arc<SqlOperatorFactory>; 2],
        /// The stream table each side reads.
        inputs: [String; 2],
        operator: Arc<dyn crate::engine::OperatorFactory>,
        /// Columns of each side's stage output that key the join; `None`: one task.
        key_columns: Option<(Vec<usize>, Vec<usize>)>,
        upper: Arc<SqlOperatorFactory>,
    },
}

impl StagePlan {
    /// `true` when the query's results update (a changelog with an op column).
    pub fn is_changelog(&self) -> bool {
        match self {
            StagePlan::Stateless(_) => false,
            StagePlan::Stateful { upper, .. } | StagePlan::Join { upper, .. } => upper.changelog,
        }
    }

    /// Adds a join's nodes to `graph`, its sides reading `left` and `right`; returns
    /// the last node and the SQL stages added (name, stage) for `explain`.
    pub fn add_join_to_graph(
        &self,
        graph: &mut Graph,
        name: &str,
        left: NodeId,
        right: NodeId,
        parallelism: usize,
    ) -> Result<(NodeId, Vec<(String, Arc<SqlOperatorFactory>)>)> {
        let StagePlan::Join {
            sides,
            operator,
            key_columns,
            upper,
            ..
        } = self
        else {
            return Err(crate::engine::EngineError::Graph(format!(
                "{name}: only a join reads two inputs"
            ))
            .into());
        };
        let l = graph.add_operator(
            &format!("{name}_left"),
            sides[0].clone(),
            graph.node(left)?.parallelism,
            left,
            Partitioning::Forward,
        );
        let r = graph.add_operator(
            &format!("{name}_right"),
            sides[1].clone(),
            graph.node(right)?.parallelism,
            right,
            Partitioning::Forward,
        );
        // Rows with equal keys must meet in one task.
        let (routing, join_parallelism) = match key_columns {
            Some((lk, rk)) => (
                (
                    Partitioning::Hash(lk.clone()),
                    Partitioning::Hash(rk.clone()),
                ),
                parallelism,
            ),
            None => ((Partitioning::RoundRobin, Partitioning::RoundRobin), 1),
        };
        let join = graph.add_join(
            &format!("{name}_join"),
            operator.clone(),
            join_parallelism,
            (l, routing.0),
            (r, routing.1),
        );
        let up = graph.add_operator(
            name,
            upper.clone(),
            join_parallelism,
            join,
            Partitioning::Forward,
        );
        Ok((
            up,
            vec![
                (graph.nodes[l].name.clone(), sides[0].clone()),
                (graph.nodes[r].name.clone(), sides[1].clone()),
                (graph.nodes[up].name.clone(), upper.clone()),
            ],
        ))
    }

    /// Adds the query's node(s) to `graph` after `input`; returns the last node and
    /// the SQL stages added (name, stage) for `explain`.
    pub fn add_to_graph(
        &self,
        graph: &mut Graph,
        name: &str,
        input: NodeId,
        partitioning: Partitioning,
        parallelism: usize,
    ) -> Result<(NodeId, Vec<(String, Arc<SqlOperatorFactory>)>)> {
        match self {
            StagePlan::Join { .. } => Err(crate::engine::EngineError::Graph(format!(
                "{name}: a join reads two inputs; add it with add_join_to_graph"
            ))
            .into()),
            StagePlan::Stateless(stage) => {
                let id = graph.add_operator(name, stage.clone(), parallelism, input, partitioning);
                Ok((id, vec![(graph.nodes[id].name.clone(), stage.clone())]))
            }
            StagePlan::Stateful {
                lower,
                operator,
                kind,
                key_columns,
                gather,
                upper,
            } => {
                let low = graph.add_operator(
                    &format!("{name}_pre"),
                    lower.clone(),
                    parallelism,
                    input,
                    partitioning,
                );
                // Rows of one key must meet in one task: route by the key columns, or
                // run the aggregate as one task when a key is computed or absent.
                let (routing, agg_parallelism) = match key_columns {
                    Some(cols) if !cols.is_empty() => {
                        (Partitioning::Hash(cols.clone()), parallelism)
                    }
                    _ => (Partitioning::RoundRobin, 1),
                };
                let agg = graph.add_operator(
                    &format!("{name}_{kind}"),
                    operator.clone(),
                    agg_parallelism,
                    low,
                    routing,
                );
                let (before_upper, upper_parallelism) = match gather {
                    Some(column) => {
                        let factory = Arc::new(crate::operators::window::WindowGatherFactory {
                            schema: graph.nodes[agg].schema.clone(),
                            window_column: *column,
                        });
                        let g = graph.add_operator(
                            &format!("{name}_gather"),
                            factory,
                            1,
                            agg,
                            Partitioning::RoundRobin,
                        );
                        (g, 1)
                    }
                    None => (agg, agg_parallelism),
                };
                let up = graph.add_operator(
                    name,
                    upper.clone(),
                    upper_parallelism,
                    before_upper,
                    Partitioning::Forward,
                );
                Ok((
                    up,
                    vec![
                        (graph.nodes[low].name.clone(), lower.clone()),
                        (graph.nodes[up].name.clone(), upper.clone()),
                    ],
                ))
            }
        }
    }
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

    fn session(&self) -> SessionContext {
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
        ctx
    }

    /// The lookup tables registered in `ctx`.
    fn lookups_in(&self, ctx: &SessionContext) -> std::collections::BTreeSet<String> {
        ctx.state()
            .config()
            .get_extension::<LookupNames>()
            .map(|l| l.0.lock().expect("lookup names").clone())
            .unwrap_or_default()
    }

    fn register_lookup(
        ctx: &SessionContext,
        table: Arc<LookupTable>,
        schema: SchemaRef,
    ) -> Result<()> {
        let name = table.name.clone();
        let part: Arc<dyn PartitionStream> = Arc::new(LookupPartition {
            schema: schema.clone(),
            table,
        });
        let provider = StreamingTable::try_new(schema, vec![part])
            .map_err(|e| crate::engine::EngineError::datafusion("registering lookup table", e))?;
        ctx.register_table(name.as_str(), Arc::new(provider))
            .map_err(|e| crate::engine::EngineError::datafusion("registering lookup table", e))?;
        if let Some(names) = ctx.state().config().get_extension::<LookupNames>() {
            names.0.lock().expect("lookup names").insert(name);
        }
        Ok(())
    }

    fn register_input(ctx: &SessionContext, name: &str, schema: SchemaRef) -> Result<()> {
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

    /// The schema of a table's declared columns, planned by DataFusion.
    async fn declared_schema(
        ctx: &SessionContext,
        decl: &TableDecl,
        sql: &SqlText,
    ) -> Result<Option<SchemaRef>> {
        let Some(stmt) = &decl.columns_ddl else {
            return Ok(None);
        };
        let plan = ctx
            .state()
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                stmt.clone(),
            )))
            .await
            .map_err(|e| plan_error(sql, &decl.location, e))?;
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => {
                Ok(Some(Arc::new(c.input.schema().as_arrow().clone())))
            }
            _ => Err(SqlError::Plan {
                location: decl.location.clone(),
                message: format!("table {}: could not read its columns", decl.name),
            }
            .into()),
        }
    }

    /// Plans one query reading the given inputs (name, schema) into a SQL stage. When
    /// `target` is given, the result is cast to it column by column (by position).
    #[allow(clippy::too_many_arguments)]
    async fn plan_stage(
        &self,
        ctx: &SessionContext,
        sql: &SqlText,
        query: Statement,
        location: &Location,
        target: Option<&SchemaRef>,
        target_name: &str,
        options: StageOptions,
        event_times: &BTreeMap<String, String>,
    ) -> Result<(StagePlan, Vec<String>)> {
        let on_error = options.on_error;
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
        let inputs = check_streamable(&optimized, location, &self.lookups_in(ctx))?;
        let physical = state
            .create_physical_plan(&plan)
            .await
            .map_err(|e| plan_error(sql, location, e))?;
        // A per-batch stage; `changelog`: it runs over a changelog (see
        // `SqlOperatorFactory::changelog`).
        let changelog_stage = |plan: Arc<dyn ExecutionPlan>, sql: String, changelog: bool| {
            Arc::new(SqlOperatorFactory {
                sql,
                schema: plan.schema(),
                plan,
                task_ctx: state.task_ctx(),
                on_error,
                changelog,
            })
        };
        let stage = |plan, sql| changelog_stage(plan, sql, false);
        let refuse = |message: String| SqlError::Plan {
            location: location.clone(),
            message,
        };
        let planned = if let Some(split) = split_join(&physical, event_times).map_err(refuse)? {
            let join = IntervalJoinFactory {
                memory_limit: options.state_memory_limit,
                ..split.join
            };
            let [left_table, right_table] = split.tables;
            StagePlan::Join {
                sides: [
                    stage(
                        split.left,
                        format!("(left input of the join: {left_table}) {text}"),
                    ),
                    stage(
                        split.right,
                        format!("(right input of the join: {right_table}) {text}"),
                    ),
                ],
                inputs: [left_table, right_table],
                key_columns: join.key_columns(),
                operator: Arc::new(join),
                upper: stage(split.upper, text),
            }
        } else if let Some(split) = split_window_aggregate(&physical).map_err(refuse)? {
            match split.aggregate {
                AggOperator::Window(aggregate) => {
                    let allowed_lateness = options
                        .allowed_lateness
                        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64);
                    if allowed_lateness > 0 && split.gather {
                        return Err(refuse(
                            "window functions over whole windows (Top-N) need each window once: \
                             they do not run with windows.allowed_lateness"
                                .into(),
                        )
                        .into());
                    }
                    if allowed_lateness > 0 && matches!(aggregate.spec, WindowKind::Session { .. })
                    {
                        return Err(refuse(
                            "windows.allowed_lateness applies to tumble and hop windows; session \
                             windows wait for the watermark"
                                .into(),
                        )
                        .into());
                    }
                    let aggregate = WindowAggFactory {
                        memory_limit: options.state_memory_limit,
                        allowed_lateness,
                        ..aggregate
                    };
                    let gather = split.gather.then_some(aggregate.parts.window_pos);
                    let upper = changelog_stage(split.upper, text.clone(), allowed_lateness > 0);
                    StagePlan::Stateful {
                        lower: stage(
                            split.lower,
                            format!("(input of the window aggregate) {text}"),
                        ),
                        gather,
                        key_columns: aggregate.key_columns(),
                        operator: Arc::new(aggregate),
                        kind: "window",
                        upper,
                    }
                }
                AggOperator::Updating(aggregate) => {
                    let aggregate = UpdatingAggFactory {
                        memory_limit: options.state_memory_limit,
                        ttl: options.state_ttl,
                        ..aggregate
                    };
                    let upper = changelog_stage(split.upper, text.clone(), true);
                    StagePlan::Stateful {
                        lower: stage(split.lower, format!("(input of the aggregate) {text}")),
                        gather: None,
                        key_columns: aggregate.key_columns(),
                        operator: Arc::new(aggregate),
                        kind: "aggregate",
                        upper,
                    }
                }
            }
        } else if let Some(split) = split_row_number(
            &physical,
            inputs
                .first()
                .and_then(|i| event_times.get(i))
                .map(String::as_str),
        )
        .map_err(refuse)?
        {
            let rank = RankFactory {
                memory_limit: options.state_memory_limit,
                ttl: options.state_ttl,
                ..split.rank
            };
            StagePlan::Stateful {
                lower: stage(split.lower, format!("(input of row_number) {text}")),
                gather: None,
                key_columns: rank.key_columns(),
                operator: Arc::new(rank),
                kind: "rank",
                upper: stage(split.upper, text),
            }
        } else {
            StagePlan::Stateless(stage(physical, text))
        };
        Ok((planned, inputs))
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
        add_window_time_args(&mut parsed, &times);
        let ctx = self.session();
        for (name, schema, _) in inputs {
            Self::register_input(&ctx, name, schema.clone())?;
        }
        let (stage, _) = self
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
        Ok(stage)
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
        let ctx = self.session();
        let sink_names: Vec<&str> = parsed.inserts.iter().map(|i| i.sink.as_str()).collect();

        for table in settings.table_options.keys() {
            if !parsed.tables.iter().any(|t| &t.name == table) {
                return Err(SqlError::Plan {
                    location: settings
                        .table_options_origin
                        .clone()
                        .unwrap_or_else(|| sql.locate(1, 1)),
                    message: format!(
                        "connectors: no table named {table} in the pipeline's SQL; tables: {}",
                        parsed
                            .tables
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
                .into());
            }
        }
        let mut graph = Graph::new(pipeline);
        type SourceDecl = (
            Arc<dyn crate::engine::SourceFactory>,
            usize,
            Location,
            Option<(EventTime, Option<std::time::Duration>)>,
            // The arrival-time column of a table read in processing time.
            Option<String>,
        );
        let mut sources: BTreeMap<String, SourceDecl> = BTreeMap::new();
        let mut event_times: BTreeMap<String, String> = BTreeMap::new();
        let mut lookups: Vec<String> = Vec::new();
        let mut sinks: BTreeMap<String, (Option<SchemaRef>, TableDecl, usize)> = BTreeMap::new();
        for decl in &parsed.tables {
            let declared = Self::declared_schema(&ctx, decl, sql).await?;
            let mut options = decl.options.clone();
            if let Some(extra) = settings.table_options.get(&decl.name) {
                options.extend(extra.clone());
            }
            let parallelism =
                match options.remove("parallelism") {
                    None => settings.parallelism,
                    Some(p) => p.parse::<usize>().ok().filter(|p| *p > 0).ok_or_else(|| {
                        SqlError::Plan {
                            location: decl.location.clone(),
                            message: format!(
                                "table {}: parallelism = '{p}' must be a positive integer",
                                decl.name
                            ),
                        }
                    })?,
                };
            let event_time = take_event_time(&mut options).map_err(|message| SqlError::Plan {
                location: decl.location.clone(),
                message: format!("table {}: {message}", decl.name),
            })?;
            let lookup = take_lookup(&mut options).map_err(|message| SqlError::Plan {
                location: decl.location.clone(),
                message: format!("table {}: {message}", decl.name),
            })?;
            let processing_time = options.remove("processing_time_field");
            if processing_time.is_some() && event_time.is_some() {
                return Err(SqlError::Plan {
                    location: decl.location.clone(),
                    message: format!(
                        "table {}: a table is read in event time (event_time_field) or in processing \
                         time (processing_time_field), not both",
                        decl.name
                    ),
                }
                .into());
            }
            let is_sink = sink_names.contains(&decl.name.as_str());
            let sink_only = matches!(decl.connector.as_str(), "stdout" | "parquet" | "blackhole");
            if is_sink || sink_only {
                if let Some(check) = decl.checks.first() {
                    return Err(SqlError::Plan {
                        location: check.location.clone(),
                        message: format!(
                            "table {} is a sink: CHECK constraints apply to the tables a pipeline \
                             reads (a row that breaks one becomes a bad record there); filter a \
                             sink's rows with WHERE",
                            decl.name
                        ),
                    }
                    .into());
                }
                if event_time.is_some() || lookup.is_some() || processing_time.is_some() {
                    return Err(SqlError::Plan {
                        location: decl.location.clone(),
                        message: format!(
                            "table {} is a sink: event_time_field, watermark_delay, idle_timeout, \
                             processing_time_field and lookup apply to sources",
                            decl.name
                        ),
                    }
                    .into());
                }
                let mut decl = decl.clone();
                decl.options = options;
                sinks.insert(decl.name.clone(), (declared, decl, parallelism));
                continue;
            }
            let req = TableRequest {
                table: &decl.name,
                env: &self.env,
                schema: declared,
                base_dir,
            };
            let mut factory =
                connectors::source(&req, Options::new(&decl.name, &decl.connector, options))
                    .map_err(|e| SqlError::Connector {
                        location: decl.locate(&e),
                        source: Box::new(e),
                    })?;
            if !decl.checks.is_empty() {
                let checks = super::check::TableChecks::plan(
                    &ctx,
                    &decl.name,
                    &factory.schema(),
                    &decl.checks,
                )?;
                factory = Arc::new(crate::engine::ValidatedSourceFactory {
                    inner: factory,
                    validator: Arc::new(checks),
                });
            }
            if let Some(refresh) = lookup {
                if event_time.is_some() || processing_time.is_some() || !factory.bounded() {
                    return Err(SqlError::Plan {
                        location: decl.location.clone(),
                        message: format!(
                            "table {}: a lookup table is read whole and joined with streams, so it must be a \
                             bounded source (a file, or a generator reference stream such as restaurants) \
                             without event time",
                            decl.name
                        ),
                    }
                    .into());
                }
                let schema = factory.schema();
                let table = Arc::new(LookupTable::new(pipeline, &decl.name, factory, refresh));
                lookups.push(table.describe());
                Self::register_lookup(&ctx, table, schema)?;
                continue;
            }
            let schema = match &processing_time {
                Some(column) => Arc::new(crate::operators::ArrivalTimeFactory::schema(
                    &factory.schema(),
                    column,
                )),
                None => factory.schema(),
            };
            Self::register_input(&ctx, &decl.name, schema)?;
            if let Some((et, _)) = &event_time {
                event_times.insert(decl.name.clone(), et.column.clone());
            }
            if let Some(column) = &processing_time {
                event_times.insert(decl.name.clone(), column.clone());
            }
            sources.insert(
                decl.name.clone(),
                (
                    factory,
                    parallelism,
                    decl.location.clone(),
                    event_time,
                    processing_time,
                ),
            );
        }

        for (name, stmt, location) in &parsed.views {
            ctx.sql(&stmt.to_string())
                .await
                .map_err(|e| plan_error(sql, location, e))?;
            let _ = name;
        }

        let mut source_nodes: BTreeMap<String, NodeId> = BTreeMap::new();
        let mut sink_nodes: BTreeMap<String, NodeId> = BTreeMap::new();
        let mut stages = Vec::new();
        for insert in &parsed.inserts {
            let Some((declared, decl, sink_parallelism)) = sinks.get(&insert.sink) else {
                return Err(SqlError::Plan {
                    location: insert.location.clone(),
                    message: format!(
                        "INSERT INTO {}: no such table; declare it with CREATE TABLE {} (…) WITH (connector = …)",
                        insert.sink, insert.sink
                    ),
                }
                .into());
            };
            let mut query = insert.query.clone();
            add_window_time_args(&mut query, &event_times);
            let (stage, inputs) = self
                .plan_stage(
                    &ctx,
                    sql,
                    query,
                    &insert.location,
                    declared.as_ref(),
                    &insert.sink,
                    StageOptions {
                        on_error: settings.on_processing_error,
                        state_memory_limit: settings.state_memory_limit,
                        state_ttl: settings.state_ttl,
                        allowed_lateness: settings.allowed_lateness,
                    },
                    &event_times,
                )
                .await?;
            let mut input_ids = Vec::new();
            for input in &inputs {
                if sinks.contains_key(input) {
                    return Err(SqlError::Plan {
                        location: insert.location.clone(),
                        message: format!(
                            "INSERT INTO {} reads from {input}, which is a sink: a table is either read or written",
                            insert.sink
                        ),
                    }
                    .into());
                }
                let id = match source_nodes.get(input) {
                    Some(id) => *id,
                    None => {
                        let (factory, parallelism, decl_location, event_time, processing_time) =
                            sources.get(input).ok_or_else(|| SqlError::Plan {
                                location: insert.location.clone(),
                                message: format!("{input} is not a declared table"),
                            })?;
                        let mut id = graph.add_source(input, factory.clone(), *parallelism);
                        if let Some(column) = processing_time {
                            let arrival = crate::operators::ArrivalTimeFactory::new(
                                &factory.schema(),
                                column,
                            )
                            .map_err(|e| SqlError::Plan {
                                location: decl_location.clone(),
                                message: e.to_string(),
                            })?;
                            id = graph.add_operator(
                                &format!("{input}_arrival"),
                                Arc::new(arrival),
                                *parallelism,
                                id,
                                Partitioning::Forward,
                            );
                        }
                        if let Some((et, idle)) = event_time {
                            graph
                                .set_event_time(id, et.clone())
                                .map_err(|e| SqlError::Plan {
                                    location: decl_location.clone(),
                                    message: e.to_string(),
                                })?;
                            if let Some(idle) = idle {
                                graph.idle_timeout =
                                    Some(graph.idle_timeout.map_or(*idle, |t| t.min(*idle)));
                            }
                        }
                        source_nodes.insert(input.clone(), id);
                        id
                    }
                };
                input_ids.push((input.clone(), id));
            }
            let stage_name = format!("{}_select", insert.sink);
            let (op, added) = match &stage {
                StagePlan::Join {
                    inputs: [left, right],
                    ..
                } => {
                    let id_of = |t: &String| {
                        input_ids
                            .iter()
                            .find(|(n, _)| n == t)
                            .map(|(_, id)| *id)
                            .ok_or_else(|| SqlError::Plan {
                                location: insert.location.clone(),
                                message: format!("{t} is not a declared table"),
                            })
                    };
                    let (l, r) = (id_of(left)?, id_of(right)?);
                    let parallelism = graph.node(l)?.parallelism;
                    stage.add_join_to_graph(&mut graph, &stage_name, l, r, parallelism)?
                }
                _ => {
                    let [(_, source_id)] = input_ids.as_slice() else {
                        return Err(SqlError::NotStreamable {
                            location: insert.location.clone(),
                            message: format!(
                                "the query reads {} streams ({}) without joining them: combine two streams \
                                 with JOIN … ON keys AND a time condition",
                                inputs.len(),
                                inputs.join(", ")
                            ),
                        }
                        .into());
                    };
                    let stage_parallelism = graph.node(*source_id)?.parallelism;
                    stage.add_to_graph(
                        &mut graph,
                        &stage_name,
                        *source_id,
                        Partitioning::Forward,
                        stage_parallelism,
                    )?
                }
            };
            stages.extend(added);
            let changelog = stage.is_changelog();
            match sink_nodes.get(&insert.sink) {
                Some(&sink_id) => graph
                    .add_input(sink_id, op, Partitioning::Forward)
                    .map_err(|e| SqlError::Plan {
                        location: insert.location.clone(),
                        message: e.to_string(),
                    })?,
                None => {
                    let req = TableRequest {
                        env: &self.env,
                        table: &decl.name,
                        schema: declared.clone(),
                        base_dir,
                    };
                    let mut options = decl.options.clone();
                    options.remove("parallelism");
                    let factory =
                        connectors::sink(&req, Options::new(&decl.name, &decl.connector, options))
                            .map_err(|e| SqlError::Connector {
                                location: decl.locate(&e),
                                source: Box::new(e),
                            })?;
                    let id = graph
                        .add_sink(
                            &decl.name,
                            factory,
                            *sink_parallelism,
                            op,
                            Partitioning::Forward,
                        )
                        .map_err(|e| SqlError::Connector {
                            location: insert.location.clone(),
                            source: Box::new(e),
                        })?;
                    sink_nodes.insert(insert.sink.clone(), id);
                }
            }
            if changelog {
                let sink = &graph.nodes[sink_nodes[&insert.sink]];
                if let crate::engine::NodeKind::Sink(f) = &sink.kind
                    && !f.accepts_changelog()
                {
                    return Err(SqlError::NotStreamable {
                        location: insert.location.clone(),
                        message: format!(
                            "INSERT INTO {}: this query's results update as events arrive (a GROUP BY \
                             without a window produces a changelog of inserts, updates and deletes), and \
                             {} ({}) only appends. Write it to a sink that takes a changelog (connector \
                             'file' or 'stdout' write each change with its {}), or aggregate per window: \
                             GROUP BY tumble(INTERVAL '1' MINUTE), …",
                            insert.sink,
                            insert.sink,
                            f.describe(),
                            crate::engine::OP_COLUMN
                        ),
                    }
                    .into());
                }
            }
        }
        for (name, (_, _, location, _, _)) in &sources {
            if !source_nodes.contains_key(name) {
                tracing::warn!(table = %name, at = %location, "source table is never read");
            }
        }
        Ok(PlannedPipeline {
            graph,
            stages,
            lookups,
        })
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

/// Refuses plans that cannot run batch by batch on an unbounded stream, and returns the
/// one input table the plan reads.
fn check_streamable(
    plan: &LogicalPlan,
    location: &Location,
    lookups: &std::collections::BTreeSet<String>,
) -> Result<Vec<String>> {
    use datafusion::logical_expr::JoinType;
    let is_lookup = |side: &LogicalPlan| {
        let mut all = true;
        let mut any = false;
        let _ = side.apply(|n| {
            if let LogicalPlan::TableScan(scan) = n {
                any = true;
                all &= lookups.contains(scan.table_name.table());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        any && all
    };
    let mut refusal: Option<String> = None;
    let mut tables: Vec<String> = Vec::new();
    let one_stateful = ONE_STATEFUL;
    let mut aggregates = 0;
    let _ = plan.apply_with_subqueries(|node| {
        let why = match node {
            LogicalPlan::Sort(_) => Some(
                "ORDER BY over an unbounded stream would never emit a row, since a later row may always sort first. \
                 Remove the ORDER BY and sort where the results are read, or rank rows within a window \
                 (ROW_NUMBER() OVER (PARTITION BY … ORDER BY …) inside a tumble window, coming with the windows work)",
            ),
            LogicalPlan::Aggregate(agg) if is_windowed(agg) => {
                aggregates += 1;
                (aggregates > 1).then_some(one_stateful)
            }
            // Without a window: an updating aggregate, whose results are a changelog.
            LogicalPlan::Aggregate(_) => {
                aggregates += 1;
                (aggregates > 1).then_some(one_stateful)
            }
            LogicalPlan::Join(j) => {
                let (left, right) = (is_lookup(&j.left), is_lookup(&j.right));
                match (left, right, j.join_type) {
                    (false, true, JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti)
                    | (true, false, JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti) => None,
                    (false, true, _) | (true, false, _) => Some(
                        "a join with a lookup table keeps the stream's rows: use JOIN or LEFT JOIN with the stream \
                         on the left (a RIGHT or FULL join would emit the whole lookup table for every batch)",
                    ),
                    (false, false, JoinType::Inner) => {
                        aggregates += 1;
                        (aggregates > 1).then_some(one_stateful)
                    }
                    _ => Some(
                        "a join between two streams is an inner interval join (JOIN … ON keys AND a time \
                         condition); outer joins between streams are not supported yet. To enrich a stream \
                         with reference data, declare that table with lookup = 'true'",
                    ),
                }
            }
            // Window functions over the results of a windowed GROUP BY, partitioned by
            // the window (Top-N per window): they run once per closed window, over all of
            // its rows (see `StagePlan::Stateful::gather`).
            LogicalPlan::Window(w) if is_over_window_results(w) => None,
            LogicalPlan::Window(w) if is_row_number_by_key(w) => {
                aggregates += 1;
                (aggregates > 1).then_some(one_stateful)
            }
            LogicalPlan::Window(_) => Some(
                "on a stream, OVER (…) supports ROW_NUMBER() OVER (PARTITION BY key ORDER BY event_time) \
                 (deduplication with WHERE rn = 1, first N per key with WHERE rn <= N); other window \
                 functions and orders need state that is not supported yet",
            ),
            LogicalPlan::Limit(_) => Some(
                "LIMIT on an unbounded stream is not supported: filter rows with WHERE instead",
            ),
            LogicalPlan::Union(_) => Some(
                "UNION of several inputs is not supported yet: write one INSERT INTO the same sink per input",
            ),
            LogicalPlan::RecursiveQuery(_) => Some("recursive queries do not run on streams"),
            LogicalPlan::Subquery(_) | LogicalPlan::Distinct(_) => Some(
                "subqueries and DISTINCT over a stream need state, which comes with the stateful SQL work",
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
    match tables.as_slice() {
        [] => Err(SqlError::Plan {
            location: location.clone(),
            message: "the query reads no table: select FROM a source declared with CREATE TABLE … WITH (connector = …)".into(),
        }
        .into()),
        [_] | [_, _] if aggregates <= 1 => Ok(tables),
        many => Err(SqlError::NotStreamable {
            location: location.clone(),
            message: format!(
                "the query reads {} streams ({}); a query combines at most two, with one join",
                many.len(),
                many.join(", ")
            ),
        }
        .into()),
    }
}

/// Maps a DataFusion planning error to the user's file: DataFusion's diagnostic span
/// when it has one, else the statement's start.
fn plan_error(sql: &SqlText, statement: &Location, e: DataFusionError) -> crate::Error {
    let location = e
        .diagnostic()
        .and_then(|d| d.span)
        .filter(|s| s.start.line > 0)
        .map(|s| sql.locate(s.start.line, s.start.column))
        .unwrap_or_else(|| statement.clone());
    let message = e.message().to_string();
    SqlError::Plan { location, message }.into()
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
fn is_windowed(agg: &datafusion::logical_expr::Aggregate) -> bool {
    agg.group_expr.iter().any(|e| {
        e.exists(|e| {
            Ok(matches!(e, Expr::ScalarFunction(f) if WINDOW_FUNCTIONS.contains(&f.func.name())))
        })
        .unwrap_or(false)
    })
}

/// Reads (and removes) a source table's event-time options: `event_time_field`,
/// `watermark_delay` (bounded out-of-orderness, default 0s) and `idle_timeout`.
pub(crate) fn take_event_time(
    options: &mut BTreeMap<String, String>,
) -> std::result::Result<Option<(EventTime, Option<std::time::Duration>)>, String> {
    let column = options.remove("event_time_field");
    let delay = options.remove("watermark_delay");
    let idle = options.remove("idle_timeout");
    let duration = |key: &str, v: &str| {
        connectors::parse_duration(v).map_err(|e| format!("{key} = '{v}': {e}"))
    };
    let Some(column) = column else {
        if delay.is_some() || idle.is_some() {
            return Err(
                "watermark_delay and idle_timeout need event_time_field (the column holding each event's time)"
                    .into(),
            );
        }
        return Ok(None);
    };
    let delay = match delay {
        Some(v) => duration("watermark_delay", &v)?,
        None => std::time::Duration::ZERO,
    };
    let idle = idle.map(|v| duration("idle_timeout", &v)).transpose()?;
    if idle.is_some_and(|d| d.is_zero()) {
        return Err(
            "idle_timeout must be longer than 0s (leave it out to never treat inputs as idle)"
                .into(),
        );
    }
    Ok(Some((EventTime { column, delay }, idle)))
}

/// Gives `tumble(width)` and `hop(slide, width)` calls without a time argument the
/// event-time column of the table the query reads (`times`: table → column).
fn add_window_time_args(query: &mut Statement, times: &BTreeMap<String, String>) {
    use datafusion::sql::sqlparser::ast::{
        Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
        visit_expressions_mut, visit_relations,
    };
    let mut read: Vec<String> = Vec::new();
    let _ = visit_relations(query, |name| {
        read.push(name.to_string());
        std::ops::ControlFlow::<()>::Continue(())
    });
    let column = read
        .iter()
        .find_map(|t| times.get(t))
        .or_else(|| {
            // A view: use the event-time column if every source names it alike.
            let mut all = times.values();
            let first = all.next()?;
            all.all(|c| c == first).then_some(first)
        })
        .cloned();
    let Some(column) = column else { return };
    let _ = visit_expressions_mut(query, |e| {
        if let SqlExpr::Function(f) = e {
            let name = f.name.to_string().to_lowercase();
            let wanted = match name.as_str() {
                "tumble" | "session" => 1,
                "hop" => 2,
                _ => return std::ops::ControlFlow::<()>::Continue(()),
            };
            if let FunctionArguments::List(list) = &mut f.args
                && list.args.len() == wanted
            {
                list.args.push(FunctionArg::Unnamed(FunctionArgExpr::Expr(
                    SqlExpr::Identifier(Ident::new(column.clone())),
                )));
            }
        }
        std::ops::ControlFlow::Continue(())
    });
}

const ONE_STATEFUL: &str = "only one stateful operation (GROUP BY, join of two streams or ROW_NUMBER) \
                            per query is supported";

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

/// Finds a join whose both sides read streams (checked to be an inner join by
/// [`check_streamable`]) and cuts the plan there. `None` when there is none.
fn split_join(
    plan: &Arc<dyn ExecutionPlan>,
    event_times: &BTreeMap<String, String>,
) -> std::result::Result<Option<JoinSplit>, String> {
    use datafusion::common::NullEquality;
    use datafusion::logical_expr::JoinType;
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
    if join_type != JoinType::Inner {
        return Err(
            "a join between two streams is an inner interval join; outer joins are not supported yet"
                .into(),
        );
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
    if stateful(&left) || stateful(&right) {
        return Err(
            "the inputs of a join between streams must be per-row (filters, projections);              aggregate or join them in another pipeline"
                .into(),
        );
    }
    let bounds = crate::operators::join::time_bounds(filter.as_ref(), &on, [&left, &right])?;
    for (table, name) in [
        (&left_table, &bounds.left.name),
        (&right_table, &bounds.right.name),
    ] {
        match event_times.get(table) {
            Some(et) if et == name => {}
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
        return Err(ONE_STATEFUL.into());
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
            memory_limit: None,
        },
        left,
        right,
        tables: [left_table, right_table],
        upper,
    }))
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
/// [`check_streamable`]) and cuts the plan there. `None` when there is no aggregate.
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

/// Reads (and removes) a table's lookup options: `lookup = 'true'` and
/// `refresh_interval`. `None`: not a lookup table; `Some(refresh)`: a lookup table.
fn take_lookup(
    options: &mut BTreeMap<String, String>,
) -> std::result::Result<Option<Option<std::time::Duration>>, String> {
    let lookup = options.remove("lookup");
    let refresh = options.remove("refresh_interval");
    let is_lookup = match lookup.as_deref().map(str::trim) {
        None => false,
        Some("true") => true,
        Some("false") => false,
        Some(other) => return Err(format!("lookup = '{other}': expected 'true' or 'false'")),
    };
    if !is_lookup {
        return match refresh {
            Some(_) => Err("refresh_interval applies to lookup tables (lookup = 'true')".into()),
            None => Ok(None),
        };
    }
    let refresh = refresh
        .map(|v| {
            connectors::parse_duration(&v)
                .map_err(|e| format!("refresh_interval = '{v}': {e}"))
                .and_then(|d| {
                    if d.is_zero() {
                        Err("refresh_interval must be longer than 0s".to_string())
                    } else {
                        Ok(d)
                    }
                })
        })
        .transpose()?;
    Ok(Some(refresh))
}

/// A physical plan cut at its `ROW_NUMBER() OVER (PARTITION BY … ORDER BY time)`.
struct RankSplit {
    lower: Arc<dyn ExecutionPlan>,
    rank: RankFactory,
    upper: Arc<dyn ExecutionPlan>,
}

/// Finds the row_number window (checked by [`check_streamable`]) and cuts the plan
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
