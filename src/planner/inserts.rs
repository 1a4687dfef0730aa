//! Planning a pipeline's `INSERT INTO`s into its graph, the last steps of planning a
//! pipeline: each query's stage(s) (a chain's stages first, each read by the next as a
//! table); the source nodes a query reads, added when first
//! read (with their arrival-time step and event time); the sink node it writes, added
//! when first written (further inserts into it add inputs); and the refusal of a
//! changelog into a sink that only appends.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::SqlError;
use super::ddl::InsertDecl;
use super::event_time::add_window_time_args;
use super::plan::{PlannedQuery, Planning};
use super::stage_plan::StagePlan;
use super::tables::{SinkDecl, Tables};
use crate::connectors::{self, Options, TableRequest};
use crate::engine::{Graph, NodeId, Partitioning};
use crate::operators::stage::SqlOperatorFactory;

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// The graph being built, and the tables' nodes already in it.
pub(super) struct Wiring {
    pub graph: Graph,
    source_nodes: BTreeMap<String, NodeId>,
    /// The output of its node a table is, when not the main one (a Rust operator's
    /// side output).
    ports: BTreeMap<String, usize>,
    sink_nodes: BTreeMap<String, NodeId>,
    /// The SQL stages added (name, stage), for `explain`.
    pub stages: Vec<(String, Arc<SqlOperatorFactory>)>,
    /// The further nodes whose output is a table besides its node in `source_nodes`
    /// (the inputs of a `UNION ALL`): its readers read them all, as one input.
    more_nodes: BTreeMap<String, Vec<NodeId>>,
}

impl Wiring {
    pub(super) fn new(pipeline: &str) -> Self {
        Wiring {
            graph: Graph::new(pipeline),
            source_nodes: BTreeMap::new(),
            ports: BTreeMap::new(),
            sink_nodes: BTreeMap::new(),
            stages: Vec::new(),
            more_nodes: BTreeMap::new(),
        }
    }

    /// Makes output `port` of `node` the table `table` queries read (a Rust
    /// operator's output).
    /// When the table has a node already (a `UNION ALL` of several queries), `node`
    /// is one more that its readers read.
    pub(super) fn add_table_output(&mut self, table: String, node: NodeId, port: usize) {
        if self.source_nodes.contains_key(&table) {
            self.more_nodes.entry(table).or_default().push(node);
            return;
        }
        if port != 0 {
            self.ports.insert(table.clone(), port);
        }
        self.source_nodes.insert(table, node);
    }

    /// Adds a planned query's stage(s) reading `inputs` (their nodes added when first
    /// read); returns the node of its result.
    pub(super) fn wire_stage(
        &mut self,
        insert: &InsertDecl,
        stage: &StagePlan,
        inputs: &[String],
        tables: &Tables,
        settings: &crate::planner::PlanSettings,
    ) -> Result<NodeId> {
        let input_ids = self.source_nodes(insert, inputs, tables, settings)?;
        let first = self.graph.nodes.len();
        let (op, added) = self.add_stage(insert, stage, inputs, &input_ids)?;
        self.stages.extend(added);
        // Read each further node of a table (a UNION ALL's inputs) where its first
        // node is read: same routing, same side.
        for (name, id) in &input_ids {
            let Some(more) = self.more_nodes.get(name) else {
                continue;
            };
            for spec in &mut self.graph.nodes[first..] {
                let n = spec.inputs.len();
                for i in 0..n {
                    if spec.inputs[i].0 != *id {
                        continue;
                    }
                    let partitioning = spec.inputs[i].1.clone();
                    spec.input_ports.resize(spec.inputs.len(), 0);
                    spec.input_sides = (0..spec.inputs.len()).map(|k| spec.side_of(k)).collect();
                    let side = spec.side_of(i);
                    for &node in more {
                        spec.inputs.push((node, partitioning.clone()));
                        spec.input_ports.push(0);
                        spec.input_sides.push(side);
                    }
                }
            }
        }
        // Read the right output of each input node.
        for (name, id) in &input_ids {
            let Some(&port) = self.ports.get(name) else {
                continue;
            };
            for spec in &mut self.graph.nodes[first..] {
                for i in 0..spec.inputs.len() {
                    if spec.inputs[i].0 == *id {
                        spec.input_ports.resize(spec.inputs.len(), 0);
                        spec.input_ports[i] = port;
                    }
                }
            }
        }
        Ok(op)
    }

    /// Warns about the source tables no insert reads.
    pub(super) fn warn_unread_sources(&self, tables: &Tables) {
        for (name, source) in &tables.sources {
            if !self.source_nodes.contains_key(name) {
                tracing::warn!(table = %name, at = %source.location, "source table is never read");
            }
        }
    }
}

impl Planning<'_> {
    /// Plans one `INSERT INTO sink SELECT …` into the graph: the source nodes its query
    /// reads, its stage(s). Returns the node of its result and whether that is a
    /// changelog; [`Planning::connect_sink`] adds the sink once every insert is
    /// planned, so a sink several inserts write comes after all of their stages.
    pub(super) async fn plan_insert(
        &self,
        insert: &InsertDecl,
        tables: &Tables,
        wiring: &mut Wiring,
    ) -> Result<(NodeId, bool)> {
        let Some(sink) = tables.sinks.get(&insert.sink) else {
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
        add_window_time_args(&mut query, &tables.event_times).map_err(|(message, span)| {
            SqlError::Plan {
                location: super::ddl::span_location(self.sql, span),
                message,
            }
        })?;
        let planned = self
            .plan_query_stage(
                query,
                &insert.location,
                sink.declared.as_ref(),
                &insert.sink,
                &tables.event_times,
            )
            .await?;
        let op = self.wire_query(insert, &planned, tables, wiring)?;
        Ok((op, planned.stage.is_changelog()))
    }

    /// Adds a planned query's stages to the graph: each stage of its chain, whose
    /// output becomes the table the next reads, then its own; returns the node of its
    /// result.
    pub(super) fn wire_query(
        &self,
        insert: &InsertDecl,
        planned: &PlannedQuery,
        tables: &Tables,
        wiring: &mut Wiring,
    ) -> Result<NodeId> {
        for link in &planned.links {
            let feed = InsertDecl {
                sink: link.node.clone(),
                query: insert.query.clone(),
                location: insert.location.clone(),
            };
            let node =
                wiring.wire_stage(&feed, &link.stage, &link.inputs, tables, self.settings)?;
            wiring.add_table_output(link.table.clone(), node, 0);
        }
        wiring.wire_stage(
            insert,
            &planned.stage,
            &planned.inputs,
            tables,
            self.settings,
        )
    }

    /// Connects `op` (an insert's result) to the insert's sink, adding the sink's node
    /// on its first insert; refuses a changelog into a sink that only appends.
    pub(super) fn connect_sink(
        &self,
        insert: &InsertDecl,
        tables: &Tables,
        (op, changelog): (NodeId, bool),
        wiring: &mut Wiring,
    ) -> Result<()> {
        let sink = &tables.sinks[&insert.sink];
        self.add_sink(insert, sink, op, wiring)?;
        if changelog {
            wiring.check_sink_takes_changelog(insert)?;
        }
        Ok(())
    }

    /// Connects `op` to the insert's sink, adding the sink's node on its first insert.
    fn add_sink(
        &self,
        insert: &InsertDecl,
        sink: &SinkDecl,
        op: NodeId,
        wiring: &mut Wiring,
    ) -> Result<()> {
        if let Some(&sink_id) = wiring.sink_nodes.get(&insert.sink) {
            return wiring
                .graph
                .add_input(sink_id, op, Partitioning::Forward)
                .map_err(|e| {
                    SqlError::Plan {
                        location: insert.location.clone(),
                        message: e.to_string(),
                    }
                    .into()
                });
        }
        let SinkDecl {
            declared,
            decl,
            parallelism,
        } = sink;
        let req = TableRequest {
            env: self.planner.env(),
            table: &decl.name,
            schema: declared.clone(),
            base_dir: self.base_dir,
        };
        let mut options = decl.options.clone();
        options.remove("parallelism");
        let options =
            Options::new(&decl.name, &decl.connector, options).declared_in(self.sql_dir());
        let factory = connectors::sink(&req, options).map_err(|e| SqlError::Connector {
            location: decl.locate(&e),
            source: Box::new(e),
        })?;
        let id = wiring
            .graph
            .add_sink(&decl.name, factory, *parallelism, op, Partitioning::Forward)
            .map_err(|e| SqlError::Connector {
                location: insert.location.clone(),
                source: Box::new(e),
            })?;
        wiring.graph.nodes[id].on_error = self.settings.table_errors.get(&decl.name).copied();
        wiring.sink_nodes.insert(insert.sink.clone(), id);
        Ok(())
    }
}

impl Wiring {
    /// The nodes of the tables a query reads (name, node), adding a source's node on
    /// its first read; refuses reading a sink.
    fn source_nodes(
        &mut self,
        insert: &InsertDecl,
        inputs: &[String],
        tables: &Tables,
        settings: &crate::planner::PlanSettings,
    ) -> Result<Vec<(String, NodeId)>> {
        let mut input_ids = Vec::new();
        for input in inputs {
            if tables.sinks.contains_key(input) {
                return Err(SqlError::Plan {
                    location: insert.location.clone(),
                    message: format!(
                        "INSERT INTO {} reads from {input}, which is a sink: a table is either read or written",
                        insert.sink
                    ),
                }
                .into());
            }
            let id = match self.source_nodes.get(input) {
                Some(id) => *id,
                None => {
                    let id = self.add_source(insert, input, tables, settings)?;
                    self.source_nodes.insert(input.clone(), id);
                    id
                }
            };
            input_ids.push((input.clone(), id));
        }
        Ok(input_ids)
    }

    /// Adds a source table's node, and its arrival-time step when it is read in
    /// processing time; returns the node its readers read.
    fn add_source(
        &mut self,
        insert: &InsertDecl,
        input: &str,
        tables: &Tables,
        settings: &crate::planner::PlanSettings,
    ) -> Result<NodeId> {
        let graph = &mut self.graph;
        let source = tables.sources.get(input).ok_or_else(|| SqlError::Plan {
            location: insert.location.clone(),
            message: format!("{input} is not a declared table"),
        })?;
        let mut id = graph.add_source(input, source.factory.clone(), source.parallelism);
        graph.nodes[id].on_error = Some(
            settings
                .table_errors
                .get(input)
                .copied()
                .unwrap_or(settings.on_bad_record),
        );
        graph.nodes[id].replay_table = Some(input.to_string());
        if let Some(column) = &source.processing_time {
            let arrival =
                crate::operators::ArrivalTimeFactory::new(&source.factory.schema(), column)
                    .map_err(|e| SqlError::Plan {
                        location: source.location.clone(),
                        message: e.to_string(),
                    })?;
            id = graph.add_operator(
                &format!("{input}_arrival"),
                Arc::new(arrival),
                source.parallelism,
                id,
                Partitioning::Forward,
            );
        }
        if let Some((et, idle)) = &source.event_time {
            graph
                .set_event_time(id, et.clone())
                .map_err(|e| SqlError::Plan {
                    location: source.location.clone(),
                    message: e.to_string(),
                })?;
            if let Some(idle) = idle {
                graph.idle_timeout = Some(graph.idle_timeout.map_or(*idle, |t| t.min(*idle)));
            }
        }
        Ok(id)
    }

    /// Adds a query's stage(s) after the nodes it reads; returns the last node and the
    /// SQL stages added. A query that reads two streams must join them.
    fn add_stage(
        &mut self,
        insert: &InsertDecl,
        stage: &StagePlan,
        inputs: &[String],
        input_ids: &[(String, NodeId)],
    ) -> Result<(NodeId, Vec<(String, Arc<SqlOperatorFactory>)>)> {
        let graph = &mut self.graph;
        let stage_name = format!("{}_select", insert.sink);
        match stage {
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
                stage.add_join_to_graph(graph, &stage_name, l, r, parallelism)
            }
            _ => {
                let [(_, source_id)] = input_ids else {
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
                    graph,
                    &stage_name,
                    *source_id,
                    Partitioning::Forward,
                    stage_parallelism,
                )
            }
        }
    }

    /// Refuses a changelog (the results of an updating query) into a sink that only
    /// appends.
    fn check_sink_takes_changelog(&self, insert: &InsertDecl) -> Result<()> {
        let sink = &self.graph.nodes[self.sink_nodes[&insert.sink]];
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
        Ok(())
    }
}
