//! A query with several stateful operations as a chain of stages. Owns cutting a
//! query's optimized logical plan bottom-up at each stateful operator (`GROUP BY`, join
//! of two streams, `ROW_NUMBER()` by key) whose input holds another: that input becomes
//! a stage of its own, a *link*, whose output is an internal table the next stage reads
//! — as a Rust operator's output is read. Each link is then planned and cut like any
//! query (`super::cuts`).
//!
//! Also owns what a link's output carries for the stages after it:
//! - the event time of its rows: a windowed aggregate's rows get the hidden column
//!   `_window_time`, their window's end − 1 ms (Flink's `window_time`: the last instant
//!   of the window, so a downstream window of the same or a larger aligned size holds
//!   the row in the window it came from); other links keep the event-time column of
//!   what they read, when their output passes it through;
//! - which of its columns hold its window (the `window` struct, its start, its end).
//!
//! With those, grouping by the window columns of a windowed result (a windowed
//! aggregate over another's results, Nexmark q5's `max` per window) is planned as a
//! 1 ms tumbling window over `_window_time`, which holds exactly the rows of one
//! upstream window; and a join of two windowed results on their window (q5, q8) is a
//! window join bounded by their `_window_time`s being equal.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Column, DFSchema, ScalarValue, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Expr, Filter, Join, LogicalPlan, LogicalPlanBuilder, Operator,
    Projection, ScalarUDF, SubqueryAlias, Union, Window, lit,
};
use datafusion::physical_plan::streaming::PartitionStream;

use super::streamable::{is_stateful, is_windowed, stateful_name};
use crate::operators::stage::SlotPartition;
use crate::operators::window_fn::WINDOW_FUNCTIONS;

/// The hidden column of a windowed link's output: its rows' event time.
pub(super) const WINDOW_TIME: &str = "_window_time";

/// Where a column of a plan's output comes from.
#[derive(Debug, Clone, PartialEq)]
enum Origin {
    /// The window column of a windowed aggregate.
    Window,
    /// Its start or end.
    Start,
    End,
    /// A windowed link's `_window_time`.
    Time,
    /// A column of a table, unchanged.
    Plain {
        table: String,
        column: String,
    },
}

/// One stage of a chain: a subtree of the query, planned on its own, whose output is
/// the internal table `name`.
pub(super) struct Link {
    pub name: String,
    /// The subtree, its columns renamed to the table's (and `_window_time` added).
    pub plan: LogicalPlan,
    pub schema: SchemaRef,
    /// The column of its output holding its rows' event time, if any.
    pub event_time: Option<String>,
    /// Columns holding its window's end: a join may be bounded by them as by its event
    /// time (they are 1 ms after it).
    pub window_ends: Vec<String>,
    /// The operation that reads it (`a windowed GROUP BY`…), for refusals.
    pub reader: &'static str,
    /// The base of its graph nodes' names: its table's, or, for one input of a
    /// `UNION ALL` (several links writing one table), `{table}_{n}`.
    pub node: String,
    /// Why its table has no event time, when a stage reading it may need one (the
    /// inputs of a `UNION ALL` that do not pass one through).
    pub no_event_time: Option<String>,
}

/// Cuts a plan into links; see the module docs.
pub(super) struct Splitter<'a> {
    /// Links are named `{base}_stage{n}`.
    base: String,
    lookups: &'a BTreeSet<String>,
    event_times: &'a BTreeMap<String, String>,
    /// Whether a table name is taken already (in the session).
    taken: &'a (dyn Fn(&str) -> bool + Sync),
    tumble: Arc<ScalarUDF>,
    /// The origin of each column of each link's table.
    origins: BTreeMap<String, BTreeMap<String, Origin>>,
    /// The event-time column of each `UNION ALL`'s table.
    union_times: BTreeMap<String, String>,
    /// The links made, in the order they run (each reads only earlier ones).
    pub links: Vec<Link>,
}

type Result<T> = std::result::Result<T, String>;

fn df(e: datafusion::error::DataFusionError) -> String {
    e.message().to_string()
}

impl<'a> Splitter<'a> {
    pub(super) fn new(
        base: &str,
        lookups: &'a BTreeSet<String>,
        event_times: &'a BTreeMap<String, String>,
        taken: &'a (dyn Fn(&str) -> bool + Sync),
        tumble: Arc<ScalarUDF>,
    ) -> Self {
        Splitter {
            base: if base.is_empty() { "query" } else { base }.to_string(),
            lookups,
            event_times,
            taken,
            tumble,
            origins: BTreeMap::new(),
            union_times: BTreeMap::new(),
            links: Vec::new(),
        }
    }

    /// `plan` with the input of each stateful operator that holds another stateful
    /// operation replaced by a scan of a link's table (bottom-up, so links read links).
    pub(super) fn split(&mut self, plan: &LogicalPlan) -> Result<LogicalPlan> {
        let inputs = plan.inputs();
        if inputs.is_empty() {
            return Ok(plan.clone());
        }
        let mut children = Vec::with_capacity(inputs.len());
        let mut changed = false;
        for child in inputs {
            let before = self.links.len();
            let new = self.split(child)?;
            changed |= self.links.len() != before;
            children.push(new);
        }
        let plan = if changed {
            with_children(plan, children)?
        } else {
            plan.clone()
        };
        if let LogicalPlan::Union(union) = &plan {
            return self.union_link(union);
        }
        if !is_stateful(&plan, self.lookups) {
            return Ok(plan);
        }
        let reader = stateful_name(&plan);
        let mut children = Vec::new();
        let mut changed = false;
        for child in plan.inputs() {
            if child
                .exists(|n| Ok(is_stateful(n, self.lookups)))
                .unwrap_or(false)
            {
                children.push(self.link(child, reader)?);
                changed = true;
            } else {
                children.push(child.clone());
            }
        }
        let plan = if changed {
            with_children(&plan, children)?
        } else {
            plan
        };
        self.over_windows(plan)
    }

    /// Makes `input` a link; returns the scan of its table that replaces it, its
    /// columns qualified as `input`'s were.
    fn link(&mut self, input: &LogicalPlan, reader: &'static str) -> Result<LogicalPlan> {
        let name = self.fresh_name();
        let windowed = input
            .exists(|n| Ok(matches!(n, LogicalPlan::Aggregate(a) if is_windowed(a))))
            .unwrap_or(false);
        let exposed = if windowed {
            expose_window(input)?
        } else {
            None
        };
        let (plan, window) = match exposed {
            Some((plan, column)) => (plan, Some(column)),
            None => (input.clone(), None),
        };
        let original = input.schema();
        let count = original.fields().len();
        let mut names = table_names(original);
        let schema = plan.schema().clone();
        let mut exprs = Vec::new();
        let mut origins = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            let (q, f) = schema.qualified_field(i);
            exprs.push(Expr::Column(Column::new(q.cloned(), f.name())).alias(name));
            if let Some(o) = self.origin(&plan, i) {
                origins.insert(name.clone(), o);
            }
        }
        if let Some(window) = &window {
            let end = datafusion::functions::core::expr_fn::get_field(
                Expr::Column(window.clone()),
                "end",
            );
            let time = Expr::BinaryExpr(BinaryExpr::new(
                Box::new(end),
                Operator::Minus,
                Box::new(lit(ScalarValue::new_interval_mdn(0, 0, 1_000_000))),
            ));
            exprs.push(time.alias(WINDOW_TIME));
            names.push(WINDOW_TIME.to_string());
            origins.insert(WINDOW_TIME.to_string(), Origin::Time);
        }
        let plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan)).map_err(df)?);
        let table_schema: SchemaRef = Arc::new(Schema::new(
            plan.schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let event_time = names
            .iter()
            .find(|n| match origins.get(*n) {
                Some(Origin::Time) => true,
                Some(o) => self.is_event_time(o),
                None => false,
            })
            .cloned();
        let window_ends = names
            .iter()
            .filter(|n| origins.get(*n) == Some(&Origin::End))
            .cloned()
            .collect();
        // The scan that replaces the subtree, with the window's time when it has one.
        let extra = window.as_ref().map(|_| WINDOW_TIME);
        let replaced = read_link(&name, &table_schema, original, &names[..count], extra)?;
        self.origins.insert(name.clone(), origins);
        self.links.push(Link {
            node: name.clone(),
            name,
            plan,
            schema: table_schema,
            event_time,
            window_ends,
            reader,
            no_event_time: None,
        });
        Ok(replaced)
    }

    /// A name for a link's table, unused in the session and by other links.
    fn fresh_name(&self) -> String {
        let mut n = self.links.len() + 1;
        loop {
            let name = format!("{}_stage{n}", self.base);
            if !(self.taken)(&name) && !self.origins.contains_key(&name) {
                return name;
            }
            n += 1;
        }
    }

    /// `true` when a column of this origin holds its rows' event time.
    fn is_event_time(&self, origin: &Origin) -> bool {
        match origin {
            Origin::Time => true,
            Origin::Plain { table, column } => {
                self.event_times.get(table) == Some(column)
                    || self.union_times.get(table) == Some(column)
            }
            _ => false,
        }
    }

    /// Makes each input of a `UNION ALL` a link writing one table (the engine merges
    /// their rows into the stage that reads it); returns the scan of that table that
    /// replaces the union. The table's event time is the column every input passes
    /// its event time through at (same position); a column whose inputs all come
    /// from the same place (a window, a table's column) keeps that origin.
    fn union_link(&mut self, union: &Union) -> Result<LogicalPlan> {
        let name = self.fresh_name();
        let out = union.schema.clone();
        let count = out.fields().len();
        let names = table_names(&out);
        let table_schema: SchemaRef = Arc::new(Schema::new(
            (0..count)
                .map(|i| {
                    out.field(i)
                        .as_ref()
                        .clone()
                        .with_name(&names[i])
                        .with_nullable(true)
                })
                .collect::<Vec<_>>(),
        ));
        let branch_origins: Vec<Vec<Option<Origin>>> = union
            .inputs
            .iter()
            .map(|input| (0..count).map(|i| self.origin(input, i)).collect())
            .collect();
        let is_time = |o: &Option<Origin>| o.as_ref().is_some_and(|o| self.is_event_time(o));
        let time_at = (0..count).find(|&i| branch_origins.iter().all(|b| is_time(&b[i])));
        let mut origins = BTreeMap::new();
        for (i, column) in names.iter().enumerate() {
            if Some(i) == time_at {
                origins.insert(
                    column.clone(),
                    Origin::Plain {
                        table: name.clone(),
                        column: column.clone(),
                    },
                );
            } else if let Some(first) = &branch_origins[0][i]
                && branch_origins.iter().all(|b| b[i].as_ref() == Some(first))
            {
                origins.insert(column.clone(), first.clone());
            }
        }
        let event_time = time_at.map(|i| names[i].clone());
        let no_event_time = match &event_time {
            Some(column) => {
                self.union_times.insert(name.clone(), column.clone());
                None
            }
            None => Some(format!(
                "its input is a UNION ALL whose inputs do not all pass an event-time column \
                 through at the same position (its columns: {}); select each input's \
                 event-time column at the same position (a windowed aggregate's window \
                 time does not pass through a UNION ALL yet)",
                names.join(", ")
            )),
        };
        for (b, input) in union.inputs.iter().enumerate() {
            let schema = input.schema();
            let exprs = (0..count)
                .map(|i| {
                    let (q, f) = schema.qualified_field(i);
                    let column = Expr::Column(Column::new(q.cloned(), f.name()));
                    let want = table_schema.field(i).data_type();
                    let column = if f.data_type() == want {
                        column
                    } else {
                        datafusion::logical_expr::cast(column, want.clone())
                    };
                    column.alias(&names[i])
                })
                .collect();
            let plan =
                LogicalPlan::Projection(Projection::try_new(exprs, input.clone()).map_err(df)?);
            self.links.push(Link {
                name: name.clone(),
                plan,
                schema: table_schema.clone(),
                event_time: event_time.clone(),
                window_ends: Vec::new(),
                reader: "UNION ALL",
                node: format!("{name}_{}", b + 1),
                no_event_time: no_event_time.clone(),
            });
        }
        self.origins.insert(name.clone(), origins);
        read_link(&name, &table_schema, &out, &names, None)
    }

    /// Plans what reads windowed results by their window: a `GROUP BY` of window
    /// columns as a 1 ms window over `_window_time`; a join on window columns as a
    /// window join (equal `_window_time`s).
    fn over_windows(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let is_window =
            |o: Option<Origin>| matches!(o, Some(Origin::Window | Origin::Start | Origin::End));
        match &plan {
            LogicalPlan::Aggregate(a) if !is_windowed(a) => {
                let Some(time) = self.time_column(&a.input) else {
                    return Ok(plan);
                };
                if !a
                    .group_expr
                    .iter()
                    .any(|g| is_window(self.origin_of_expr(&a.input, g)))
                {
                    return Ok(plan);
                }
                let window = Expr::ScalarFunction(ScalarFunction::new_udf(
                    self.tumble.clone(),
                    vec![
                        lit(ScalarValue::new_interval_mdn(0, 0, 1_000_000)),
                        Expr::Column(time),
                    ],
                ))
                .alias("_window_of_input");
                let mut group = a.group_expr.clone();
                group.push(window);
                let windowed =
                    Aggregate::try_new(a.input.clone(), group, a.aggr_expr.clone()).map_err(df)?;
                // The aggregate's columns as before, without that window.
                let exprs = a
                    .schema
                    .iter()
                    .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
                    .collect();
                Ok(LogicalPlan::Projection(
                    Projection::try_new(exprs, Arc::new(LogicalPlan::Aggregate(windowed)))
                        .map_err(df)?,
                ))
            }
            LogicalPlan::Join(j) => {
                let (Some(lt), Some(rt)) = (self.time_column(&j.left), self.time_column(&j.right))
                else {
                    return Ok(plan);
                };
                let on_window = j.on.iter().any(|(l, r)| {
                    is_window(self.origin_of_expr(&j.left, l))
                        && is_window(self.origin_of_expr(&j.right, r))
                });
                if !on_window {
                    return Ok(plan);
                }
                let (l, r) = (Expr::Column(lt), Expr::Column(rt));
                let same = l.clone().gt_eq(r.clone()).and(l.lt_eq(r));
                let filter = match &j.filter {
                    Some(f) => f.clone().and(same),
                    None => same,
                };
                Ok(LogicalPlan::Join(Join {
                    filter: Some(filter),
                    ..j.clone()
                }))
            }
            _ => Ok(plan),
        }
    }

    /// The `_window_time` column of a plan's output, if it has one.
    fn time_column(&self, plan: &LogicalPlan) -> Option<Column> {
        let schema = plan.schema();
        (0..schema.fields().len())
            .find(|&i| self.origin(plan, i) == Some(Origin::Time))
            .map(|i| {
                let (q, f) = schema.qualified_field(i);
                Column::new(q.cloned(), f.name())
            })
    }

    /// Where column `idx` of `plan`'s output comes from, when it is a column of a
    /// table or a window's unchanged.
    fn origin(&self, plan: &LogicalPlan, idx: usize) -> Option<Origin> {
        match plan {
            LogicalPlan::Projection(p) => self.origin_of_expr(&p.input, p.expr.get(idx)?),
            LogicalPlan::Filter(Filter { input, .. })
            | LogicalPlan::SubqueryAlias(SubqueryAlias { input, .. }) => self.origin(input, idx),
            LogicalPlan::Sort(s) => self.origin(&s.input, idx),
            LogicalPlan::Window(w) => {
                if idx < w.input.schema().fields().len() {
                    self.origin(&w.input, idx)
                } else {
                    None
                }
            }
            LogicalPlan::Aggregate(a) => {
                let g = unaliased(a.group_expr.get(idx)?);
                if is_window_call(g) {
                    Some(Origin::Window)
                } else {
                    self.origin_of_expr(&a.input, g)
                }
            }
            LogicalPlan::Join(j) => {
                let l = j.left.schema().fields().len();
                if idx < l {
                    self.origin(&j.left, idx)
                } else {
                    self.origin(&j.right, idx - l)
                }
            }
            LogicalPlan::TableScan(s) => {
                let f = s.projected_schema.field(idx);
                let table = s.table_name.table();
                match self.origins.get(table) {
                    Some(columns) => columns.get(f.name()).cloned(),
                    None => Some(Origin::Plain {
                        table: table.to_string(),
                        column: f.name().clone(),
                    }),
                }
            }
            _ => None,
        }
    }

    fn origin_of_expr(&self, input: &LogicalPlan, e: &Expr) -> Option<Origin> {
        match unaliased(e) {
            Expr::Column(c) => self.origin(input, input.schema().index_of_column(c).ok()?),
            Expr::ScalarFunction(f) if f.func.name() == "get_field" => {
                let [Expr::Column(c), Expr::Literal(field, _)] = f.args.as_slice() else {
                    return None;
                };
                let idx = input.schema().index_of_column(c).ok()?;
                if self.origin(input, idx)? != Origin::Window {
                    return None;
                }
                match field.try_as_str()?? {
                    "start" => Some(Origin::Start),
                    "end" => Some(Origin::End),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// The plan that stands where link `name`'s input was: a scan of its table
/// (`table_schema`), whose columns `names` are renamed back to `replaced`'s qualified
/// columns, so that the plan above reads them as before; then the table's column
/// `extra`, as it is.
fn read_link(
    name: &str,
    table_schema: &SchemaRef,
    replaced: &DFSchema,
    names: &[String],
    extra: Option<&str>,
) -> Result<LogicalPlan> {
    let part: Arc<dyn PartitionStream> = Arc::new(SlotPartition {
        schema: table_schema.clone(),
        table: Some(name.into()),
    });
    let table = StreamingTable::try_new(table_schema.clone(), vec![part]).map_err(df)?;
    let reference = TableReference::bare(name);
    let scan =
        LogicalPlanBuilder::scan(reference.clone(), provider_as_source(Arc::new(table)), None)
            .and_then(|b| b.build())
            .map_err(df)?;
    let mut exprs: Vec<Expr> = names
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let (q, f) = replaced.qualified_field(i);
            Expr::Column(Column::new(Some(reference.clone()), column))
                .alias_qualified(q.cloned(), f.name())
        })
        .collect();
    exprs.extend(extra.map(|c| Expr::Column(Column::new(Some(reference.clone()), c))));
    Ok(LogicalPlan::Projection(
        Projection::try_new(exprs, Arc::new(scan)).map_err(df)?,
    ))
}

/// Column names of a link's table for a plan's output: unqualified, made unique.
fn table_names(schema: &DFSchema) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (q, f) in schema.iter() {
        let mut name = f.name().clone();
        if names.contains(&name) {
            name = format!("{}_{}", q.map(|q| q.table()).unwrap_or("col"), f.name());
        }
        let base = name.clone();
        let mut k = 2;
        while names.contains(&name) || name == WINDOW_TIME {
            name = format!("{base}_{k}");
            k += 1;
        }
        names.push(name);
    }
    names
}

fn unaliased(mut e: &Expr) -> &Expr {
    while let Expr::Alias(a) = e {
        e = &a.expr;
    }
    e
}

fn is_window_call(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if WINDOW_FUNCTIONS.contains(&f.func.name()))
}

/// `plan` over new inputs, its schema recomputed.
fn with_children(plan: &LogicalPlan, children: Vec<LogicalPlan>) -> Result<LogicalPlan> {
    use datafusion::common::tree_node::Transformed;
    let mut children = children.into_iter();
    plan.clone()
        .map_children(|_| Ok(Transformed::yes(children.next().expect("one per input"))))
        .and_then(|t| t.data.recompute_schema())
        .map_err(df)
}

/// `plan` (which holds a windowed aggregate) with the aggregate's window column passed
/// through the per-row steps above it, and that column in its output; `None` when a
/// step above it cannot pass it.
fn expose_window(plan: &LogicalPlan) -> Result<Option<(LogicalPlan, Column)>> {
    Ok(match plan {
        LogicalPlan::Aggregate(a) if is_windowed(a) => {
            let Some(i) = a
                .group_expr
                .iter()
                .position(|g| is_window_call(unaliased(g)))
            else {
                return Ok(None);
            };
            let (q, f) = a.schema.qualified_field(i);
            Some((plan.clone(), Column::new(q.cloned(), f.name())))
        }
        LogicalPlan::Projection(p) => {
            let Some((input, column)) = expose_window(&p.input)? else {
                return Ok(None);
            };
            let mut exprs = p.expr.clone();
            let (expr, out) = if column.name == "_window" {
                // Passed through from a projection below: keep its name (and qualifier).
                (Expr::Column(column.clone()), column)
            } else {
                (
                    Expr::Column(column).alias("_window"),
                    Column::new_unqualified("_window"),
                )
            };
            exprs.push(expr);
            Some((
                LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(input)).map_err(df)?),
                out,
            ))
        }
        LogicalPlan::Filter(f) => {
            let Some((input, column)) = expose_window(&f.input)? else {
                return Ok(None);
            };
            Some((
                LogicalPlan::Filter(
                    Filter::try_new(f.predicate.clone(), Arc::new(input)).map_err(df)?,
                ),
                column,
            ))
        }
        LogicalPlan::SubqueryAlias(s) => {
            let Some((input, column)) = expose_window(&s.input)? else {
                return Ok(None);
            };
            Some((
                LogicalPlan::SubqueryAlias(
                    SubqueryAlias::try_new(Arc::new(input), s.alias.clone()).map_err(df)?,
                ),
                Column::new(Some(s.alias.clone()), column.name),
            ))
        }
        LogicalPlan::Window(w) => {
            let Some((input, column)) = expose_window(&w.input)? else {
                return Ok(None);
            };
            Some((
                LogicalPlan::Window(
                    Window::try_new(w.window_expr.clone(), Arc::new(input)).map_err(df)?,
                ),
                column,
            ))
        }
        _ => None,
    })
}
