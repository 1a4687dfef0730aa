//! The logical dataflow graph: nodes, their parallelism and the partitioning of the
//! edges between them. Built by the SQL planner and the Rust builder API alike; run by
//! the [`Runtime`](super::Runtime).

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use super::{EngineError, OperatorFactory, Partitioning, Result, SinkFactory, SourceFactory};

pub type NodeId = usize;

/// What a node does.
#[derive(Clone)]
pub enum NodeKind {
    Source(Arc<dyn SourceFactory>),
    Operator(Arc<dyn OperatorFactory>),
    Sink(Arc<dyn SinkFactory>),
}

/// One node of the graph.
#[derive(Clone)]
pub struct NodeSpec {
    /// Unique within the pipeline; names tasks in logs, metrics and errors.
    pub name: String,
    pub kind: NodeKind,
    pub parallelism: usize,
    /// Upstream nodes and how their output is spread over this node's partitions.
    pub inputs: Vec<(NodeId, Partitioning)>,
    /// Schema of the batches this node emits (sinks: of the batches they receive).
    pub schema: SchemaRef,
    /// Sources only: how to derive watermarks from the rows.
    pub event_time: Option<super::EventTime>,
    /// Which output of each input node this node reads, by input position; missing
    /// entries read the main output (0). See [`OperatorFactory::side_outputs`].
    pub input_ports: Vec<usize>,
    /// The side outputs this node emits besides its main output: (name, schema).
    pub side_outputs: Vec<(String, SchemaRef)>,
    /// Its error policy, when it differs from the graph's (a table's own).
    pub on_error: Option<crate::dlq::ErrorPolicy>,
    /// Sources only: its rows hold no watermark back downstream (a replay inbox).
    pub passive: bool,
    /// Which of the node's inputs each graph input feeds, by input position; missing
    /// entries feed their own position. A replay inbox joins the input of the table
    /// it replays into (see [`Graph::add_replay_source`]).
    pub input_sides: Vec<usize>,
    /// The source table whose records, as read, this node's tasks see: set on a
    /// table's source node, inherited by the nodes reading it directly. Their dead
    /// letters can be replayed into that table.
    pub replay_table: Option<String>,
}

impl NodeSpec {
    /// The output of input `i` this node reads.
    pub fn port_of(&self, i: usize) -> usize {
        self.input_ports.get(i).copied().unwrap_or(0)
    }

    /// The node input (its side, for a join) graph input `i` feeds.
    pub fn side_of(&self, i: usize) -> usize {
        self.input_sides.get(i).copied().unwrap_or(i)
    }
}

/// A pipeline's graph.
#[derive(Clone)]
pub struct Graph {
    pub pipeline: String,
    pub nodes: Vec<NodeSpec>,
    /// An input that sends nothing for this long stops holding back the watermark of
    /// the task reading it, until it sends again (sources' `idle_timeout`; the
    /// shortest applies). `None`: inputs are never considered idle.
    pub idle_timeout: Option<std::time::Duration>,
    /// The error policy of every node that has none of its own.
    pub errors: crate::dlq::ErrorPolicy,
    /// Where the pipeline's dead letters go: a sink of `dlq::record::schema()` that the
    /// runtime adds as node `dead_letters`, fed by every task ([`DEAD_LETTER_PORT`]).
    /// `None`: the `dead-letter` policy drops (counted, logged).
    pub dead_letters: Option<Arc<dyn SinkFactory>>,
}

/// The output port every task sends its dead letters on.
pub const DEAD_LETTER_PORT: usize = usize::MAX;

impl Graph {
    pub fn new(pipeline: impl Into<String>) -> Self {
        Graph {
            pipeline: pipeline.into(),
            nodes: Vec::new(),
            idle_timeout: None,
            errors: crate::dlq::ErrorPolicy::default(),
            dead_letters: None,
        }
    }

    fn unique_name(&self, name: &str) -> String {
        if !self.nodes.iter().any(|n| n.name == name) {
            return name.to_string();
        }
        (2..)
            .map(|i| format!("{name}_{i}"))
            .find(|c| !self.nodes.iter().any(|n| &n.name == c))
            .expect("unbounded range")
    }

    fn push(&mut self, mut spec: NodeSpec) -> NodeId {
        spec.name = self.unique_name(&spec.name);
        spec.parallelism = spec.parallelism.max(1);
        self.nodes.push(spec);
        self.nodes.len() - 1
    }

    pub fn add_source(
        &mut self,
        name: &str,
        factory: Arc<dyn SourceFactory>,
        parallelism: usize,
    ) -> NodeId {
        let schema = factory.schema();
        self.push(NodeSpec {
            name: name.into(),
            kind: NodeKind::Source(factory),
            parallelism,
            inputs: vec![],
            schema,
            event_time: None,
            input_ports: vec![],
            side_outputs: vec![],
            on_error: None,
            passive: false,
            input_sides: vec![],
            replay_table: None,
        })
    }

    pub fn add_operator(
        &mut self,
        name: &str,
        factory: Arc<dyn OperatorFactory>,
        parallelism: usize,
        input: NodeId,
        partitioning: Partitioning,
    ) -> NodeId {
        let schema = factory.output_schema();
        let side_outputs = factory.side_outputs();
        self.push(NodeSpec {
            side_outputs,
            name: name.into(),
            kind: NodeKind::Operator(factory),
            parallelism,
            inputs: vec![(input, partitioning)],
            schema,
            event_time: None,
            input_ports: vec![],
            on_error: None,
            passive: false,
            input_sides: vec![],
            replay_table: None,
        })
    }

    /// Adds an operator with two inputs of different schemas (a join): batches from
    /// `left` reach [`Operator::process_input`](super::Operator::process_input) as
    /// input 0, from `right` as input 1.
    pub fn add_join(
        &mut self,
        name: &str,
        factory: Arc<dyn OperatorFactory>,
        parallelism: usize,
        left: (NodeId, Partitioning),
        right: (NodeId, Partitioning),
    ) -> NodeId {
        let schema = factory.output_schema();
        self.push(NodeSpec {
            name: name.into(),
            kind: NodeKind::Operator(factory),
            parallelism,
            inputs: vec![left, right],
            schema,
            event_time: None,
            input_ports: vec![],
            side_outputs: vec![],
            on_error: None,
            passive: false,
            input_sides: vec![],
            replay_table: None,
        })
    }

    /// Adds a sink fed by `input`; its schema must be accepted by the sink.
    pub fn add_sink(
        &mut self,
        name: &str,
        factory: Arc<dyn SinkFactory>,
        parallelism: usize,
        input: NodeId,
        partitioning: Partitioning,
    ) -> Result<NodeId> {
        self.add_sink_on_port(name, factory, parallelism, (input, 0), partitioning)
    }

    /// Adds a sink fed by output `port` of `input` (0: its main output).
    pub fn add_sink_on_port(
        &mut self,
        name: &str,
        factory: Arc<dyn SinkFactory>,
        parallelism: usize,
        (input, port): (NodeId, usize),
        partitioning: Partitioning,
    ) -> Result<NodeId> {
        let schema = self.output_schema(input, port)?;
        factory.check_schema(&schema)?;
        let partitioning = keyed(factory.as_ref(), &schema, partitioning)?;
        Ok(self.push(NodeSpec {
            name: name.into(),
            kind: NodeKind::Sink(factory),
            parallelism,
            inputs: vec![(input, partitioning)],
            schema,
            event_time: None,
            input_ports: vec![port],
            side_outputs: vec![],
            on_error: None,
            passive: false,
            input_sides: vec![],
            replay_table: None,
        }))
    }

    /// The schema of output `port` of `node`: 0 its main output, `i` side output `i`.
    pub fn output_schema(&self, node: NodeId, port: usize) -> Result<SchemaRef> {
        let spec = self.node(node)?;
        match port {
            0 => Ok(spec.schema.clone()),
            DEAD_LETTER_PORT => Ok(crate::dlq::record::schema()),
            p => spec
                .side_outputs
                .get(p - 1)
                .map(|(_, s)| s.clone())
                .ok_or_else(|| {
                    EngineError::Graph(format!("{} has no side output {p}", spec.name)).into()
                }),
        }
    }

    /// Adds another input to an existing node (several queries writing one sink). The
    /// new input must have the node's schema, field for field.
    pub fn add_input(
        &mut self,
        node: NodeId,
        input: NodeId,
        partitioning: Partitioning,
    ) -> Result<()> {
        let got = self.node(input)?.schema.clone();
        let target = self.node(node)?;
        if !same_fields(&got, &target.schema) {
            return Err(EngineError::Graph(format!(
                "{} receives rows of different schemas: {} and {}",
                target.name,
                fields(&target.schema),
                fields(&got)
            ))
            .into());
        }
        let partitioning = match &target.kind {
            NodeKind::Sink(factory) => keyed(factory.as_ref(), &got, partitioning)?,
            _ => partitioning,
        };
        self.nodes[node].inputs.push((input, partitioning));
        Ok(())
    }

    /// Declares a source's event-time column, from which its tasks derive watermarks.
    /// The column must be a timestamp of the source's schema.
    pub fn set_event_time(&mut self, source: NodeId, event_time: super::EventTime) -> Result<()> {
        let node = self.node(source)?;
        if !matches!(node.kind, NodeKind::Source(_)) {
            return Err(EngineError::Graph(format!(
                "{}: only sources have an event-time column",
                node.name
            ))
            .into());
        }
        match node.schema.field_with_name(&event_time.column) {
            Ok(f) if matches!(f.data_type(), arrow::datatypes::DataType::Timestamp(_, _)) => {}
            Ok(f) => {
                return Err(EngineError::Graph(format!(
                    "{}: event_time_field {} is {}, not a timestamp",
                    node.name,
                    event_time.column,
                    f.data_type()
                ))
                .into());
            }
            Err(_) => {
                return Err(EngineError::Graph(format!(
                    "{}: event_time_field {} is not a column; columns: {}",
                    node.name,
                    event_time.column,
                    fields(&node.schema)
                ))
                .into());
            }
        }
        self.nodes[source].event_time = Some(event_time);
        Ok(())
    }

    pub fn node(&self, id: NodeId) -> Result<&NodeSpec> {
        self.nodes
            .get(id)
            .ok_or_else(|| EngineError::Graph(format!("no node {id}")).into())
    }

    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// `true` when every source has an end, so the pipeline finishes by itself.
    pub fn bounded(&self) -> bool {
        self.nodes.iter().all(|n| match &n.kind {
            NodeKind::Source(s) => s.bounded(),
            _ => true,
        })
    }

    /// Checks the graph and resolves edges: a forward edge between nodes of different
    /// parallelism becomes round robin.
    pub fn finalize(&mut self) -> Result<()> {
        if !self
            .nodes
            .iter()
            .any(|n| matches!(n.kind, NodeKind::Sink(_)))
        {
            return Err(EngineError::Graph(format!(
                "pipeline {} has no sink: nothing would be written",
                self.pipeline
            ))
            .into());
        }
        let parallelism: Vec<usize> = self.nodes.iter().map(|n| n.parallelism).collect();
        let changelog: Vec<bool> = self
            .nodes
            .iter()
            .map(|n| {
                n.schema
                    .fields()
                    .last()
                    .is_some_and(|f| f.name() == super::OP_COLUMN)
            })
            .collect();
        let sources: Vec<bool> = self
            .nodes
            .iter()
            .map(|n| matches!(n.kind, NodeKind::Source(_)))
            .collect();
        for (id, node) in self.nodes.iter_mut().enumerate() {
            for (input, partitioning) in node.inputs.iter_mut() {
                // A source reads nothing, so it may come anywhere (a replay inbox is
                // added after the nodes that read it).
                if *input >= id && !sources.get(*input).copied().unwrap_or(false) {
                    return Err(EngineError::Graph(format!(
                        "{} reads from a node defined after it",
                        node.name
                    ))
                    .into());
                }
                if *partitioning == Partitioning::Forward
                    && parallelism[*input] != node.parallelism
                    && !changelog[*input]
                {
                    *partitioning = Partitioning::RoundRobin;
                }
            }
        }
        Ok(())
    }

    /// Adds the `dead_letters` sink fed by every node's [`DEAD_LETTER_PORT`] (when the
    /// graph has a dead-letter sink), and passes each source's replay table on to the
    /// nodes that read it directly. Called by the runtime after `finalize`.
    pub(crate) fn attach_dead_letters(&mut self) {
        for id in 0..self.nodes.len() {
            if self.nodes[id].replay_table.is_some() {
                continue;
            }
            // An operator reading only the sources of one table sees its records.
            let node = &self.nodes[id];
            let mut tables = node.inputs.iter().map(|(input, _)| {
                let up = &self.nodes[*input];
                match up.kind {
                    NodeKind::Source(_) => up.replay_table.clone(),
                    _ => None,
                }
            });
            let first = tables.next().flatten();
            let inherited = match first {
                Some(t)
                    if matches!(node.kind, NodeKind::Operator(_))
                        && tables.all(|o| o.as_deref() == Some(t.as_str())) =>
                {
                    Some(t)
                }
                _ => None,
            };
            self.nodes[id].replay_table = inherited;
        }
        let Some(factory) = self.dead_letters.clone() else {
            return;
        };
        let n = self.nodes.len();
        let name = self.unique_name("dead_letters");
        self.nodes.push(NodeSpec {
            name,
            kind: NodeKind::Sink(factory),
            parallelism: 1,
            inputs: (0..n).map(|i| (i, Partitioning::Forward)).collect(),
            schema: crate::dlq::record::schema(),
            event_time: None,
            input_ports: vec![DEAD_LETTER_PORT; n],
            side_outputs: vec![],
            on_error: Some(crate::dlq::ErrorPolicy::Fail),
            passive: false,
            input_sides: vec![],
            replay_table: None,
        });
    }

    /// Adds `factory` as a second source of the table `source` reads (its replay
    /// inbox): every node reading `source`'s main output reads the new node too, as
    /// the same input (side) and with the same partitioning. Returns its id.
    pub fn add_replay_source(
        &mut self,
        source: NodeId,
        factory: Arc<dyn SourceFactory>,
    ) -> Result<NodeId> {
        let spec = self.node(source)?.clone();
        if !same_fields(&factory.schema(), &spec.schema) {
            return Err(EngineError::Graph(format!(
                "{}: a replay source must have the table's columns {}; it has {}",
                spec.name,
                fields(&spec.schema),
                fields(&factory.schema())
            ))
            .into());
        }
        let id = self.push(NodeSpec {
            name: format!("{}_replay", spec.name),
            kind: NodeKind::Source(factory),
            parallelism: 1,
            inputs: vec![],
            schema: spec.schema.clone(),
            event_time: None,
            input_ports: vec![],
            side_outputs: vec![],
            on_error: spec.on_error,
            passive: true,
            input_sides: vec![],
            replay_table: spec.replay_table.clone(),
        });
        for node in self.nodes.iter_mut().take(id) {
            let readers: Vec<(usize, Partitioning)> = node
                .inputs
                .iter()
                .enumerate()
                .filter(|(i, (input, _))| *input == source && node.port_of(*i) == 0)
                .map(|(i, (_, p))| (i, p.clone()))
                .collect();
            for (side, partitioning) in readers {
                let n = node.inputs.len();
                node.input_ports.resize(n, 0);
                node.input_sides = (0..n).map(|i| node.side_of(i)).collect();
                node.inputs.push((id, partitioning));
                node.input_ports.push(0);
                node.input_sides.push(side);
            }
        }
        Ok(id)
    }

    /// The ids of the nodes reading from `id`.
    pub fn consumers(&self, id: NodeId) -> Vec<(NodeId, Partitioning)> {
        let mut out = vec![];
        for (cid, n) in self.nodes.iter().enumerate() {
            for (input, p) in &n.inputs {
                if *input == id {
                    out.push((cid, p.clone()));
                }
            }
        }
        out
    }

    /// The streaming plan, one line per node, for `tributary explain`.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pipeline {} ({})",
            self.pipeline,
            if self.bounded() {
                "bounded: finishes at the end of its input"
            } else {
                "unbounded"
            }
        );
        for node in &self.nodes {
            let (kind, desc) = match &node.kind {
                NodeKind::Source(f) => ("source", f.describe()),
                NodeKind::Operator(f) => ("operator", f.describe()),
                NodeKind::Sink(f) => ("sink", f.describe()),
            };
            let _ = writeln!(
                s,
                "  {kind} {} [parallelism {}]: {desc}",
                node.name, node.parallelism
            );
            if let Some(et) = &node.event_time {
                let _ = writeln!(
                    s,
                    "    event time: {}, watermark = newest - {:?}",
                    et.column, et.delay
                );
            }
            for (i, (input, p)) in node.inputs.iter().enumerate() {
                let up = &self.nodes[*input];
                match node
                    .port_of(i)
                    .checked_sub(1)
                    .and_then(|o| up.side_outputs.get(o))
                {
                    Some((side, _)) => {
                        let _ = writeln!(s, "    <- {} side output {side} ({p})", up.name);
                    }
                    None => {
                        let _ = writeln!(s, "    <- {} ({p})", up.name);
                    }
                }
            }
            let _ = writeln!(s, "    schema: {}", fields(&node.schema));
            for (side, schema) in &node.side_outputs {
                let _ = writeln!(s, "    side output {side}: {}", fields(schema));
            }
        }
        s
    }
}

fn same_fields(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields().iter())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// `(name type, …)`: a schema as error messages show it.
pub fn fields(schema: &SchemaRef) -> String {
    let parts: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    format!("({})", parts.join(", "))
}

/// A sink's input routing: by the hash of the sink's [`SinkFactory::partition_by`]
/// columns when it names some (rows of one key reach one task, in order), else as
/// asked.
fn keyed(
    factory: &dyn SinkFactory,
    schema: &SchemaRef,
    partitioning: Partitioning,
) -> Result<Partitioning> {
    let columns = factory.partition_by();
    if columns.is_empty() || partitioning != Partitioning::Forward {
        return Ok(partitioning);
    }
    let indices = columns
        .iter()
        .map(|c| {
            schema.index_of(c).map_err(|_| {
                EngineError::Graph(format!(
                    "{}: no column {c} to route its rows by",
                    factory.describe()
                ))
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Partitioning::Hash(indices))
}
