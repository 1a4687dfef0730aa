//! What planning one query produces, [`StagePlan`]: a stateless SQL stage, or the
//! stages around the one stateful operator a cut (`super::cuts`) made; and how such a
//! plan adds its nodes to an engine [`Graph`] (node names, routing by key, gathering
//! whole windows).

use std::sync::Arc;

use crate::engine::{Graph, NodeId, Partitioning};
use crate::operators::stage::SqlOperatorFactory;

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// One query as the engine runs it: a stateless SQL stage, or a query with one
/// stateful operator (an aggregate, row_number), cut by `super::cuts` in three:
/// per-batch stage below it, the keyed operator, per-batch stage above it.
#[derive(Clone)]
pub enum StagePlan {
    Stateless(Arc<SqlOperatorFactory>),
    Stateful {
        lower: Arc<SqlOperatorFactory>,
        operator: Arc<dyn crate::engine::OperatorFactory>,
        /// Node name suffix of the operator, given by the cut that made it
        /// (`window`, `aggregate`, `rank`): the operator's node is `{name}_{node_suffix}`.
        node_suffix: &'static str,
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

    /// What its stateful operator is, for messages.
    pub(super) fn stateful_name(&self) -> &'static str {
        match self {
            StagePlan::Stateless(_) => "per-row steps",
            StagePlan::Join { .. } => "a join of two streams",
            StagePlan::Stateful { node_suffix, .. } => match *node_suffix {
                "aggregate" => "a GROUP BY without a window",
                "window" if self.is_changelog() => {
                    "a windowed GROUP BY with windows.allowed_lateness"
                }
                "window" => "a windowed GROUP BY",
                _ => "ROW_NUMBER()",
            },
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
                node_suffix,
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
                    &format!("{name}_{node_suffix}"),
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
