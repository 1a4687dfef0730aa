//! The Rust builder API: the same graph as SQL pipelines, built from Rust, with SQL
//! stages and Rust operators mixed freely.
//!
//! ```no_run
//! # async fn demo() -> tributary::Result<()> {
//! use tributary::pipeline::PipelineBuilder;
//! let mut p = PipelineBuilder::new("demo").parallelism(2);
//! let orders = p.source_sql(
//!     "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '1000')",
//! )?;
//! let placed = p
//!     .sql(orders, "SELECT order_id, total FROM orders WHERE event_type = 'order_placed'")
//!     .await?;
//! let keyed = p.key_by(placed, &["order_id"])?;
//! p.sink_sql(keyed, "CREATE TABLE out WITH (connector = 'stdout')")?;
//! let report = p.run_to_completion().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;

use crate::connectors::{self, Options, TableRequest};
use crate::dlq::ErrorPolicy;
use crate::engine::{
    EngineError, Graph, NodeId, Partitioning, RunReport, Runtime, RuntimeSettings, SinkFactory,
    SourceFactory,
};
use crate::operators::{FilterOperator, FlatMapOperator, MapOperator};
use crate::planner::{SqlPlanner, SqlText, StagePlan, parse_sql};

/// A node's output inside a [`PipelineBuilder`], with how the next node receives it.
#[derive(Debug, Clone)]
pub struct Stream {
    node: NodeId,
    partitioning: Partitioning,
    /// Which output of the node: 0 its main output, `i` its side output `i`.
    port: usize,
}

/// Builds a pipeline graph from Rust.
pub struct PipelineBuilder {
    graph: Graph,
    planner: SqlPlanner,
    parallelism: usize,
    stage_options: crate::planner::StageOptions,
    runtime: RuntimeSettings,
    /// Nodes that stamp a source's rows with their arrival time: (table name, column).
    arrivals: std::collections::HashMap<NodeId, (String, String)>,
}

type Result<T, E = crate::Error> = std::result::Result<T, E>;

impl PipelineBuilder {
    pub fn new(name: &str) -> Self {
        PipelineBuilder {
            graph: Graph::new(name),
            planner: SqlPlanner::new(),
            parallelism: 1,
            stage_options: Default::default(),
            runtime: RuntimeSettings::default(),
            arrivals: Default::default(),
        }
    }

    /// Reads `source` in processing time: each row gets its arrival time (the wall
    /// clock) in `column`, which windows, joins and timers then use as event time;
    /// watermarks follow the wall clock, so windows close while the input is quiet.
    pub fn processing_time(&mut self, source: Stream, column: &str) -> Result<Stream> {
        let schema = self.schema(&source);
        let table = self.graph.nodes[source.node].name.clone();
        let factory = crate::operators::ArrivalTimeFactory::new(&schema, column)?;
        let parallelism = self.graph.nodes[source.node].parallelism;
        let first = self.graph.nodes.len();
        let node = self.graph.add_operator(
            &format!("{table}_arrival"),
            Arc::new(factory),
            parallelism,
            source.node,
            Partitioning::Forward,
        );
        self.read_port(first, &source);
        self.arrivals.insert(node, (table, column.to_string()));
        Ok(Stream {
            node,
            partitioning: Partitioning::Forward,
            port: 0,
        })
    }

    /// The name SQL reads `stream` under: its node's name, or the source's table name
    /// for a stream read in processing time.
    fn table_name(&self, stream: &Stream) -> String {
        match self.arrivals.get(&stream.node) {
            Some((table, _)) => table.clone(),
            None => self.graph.nodes[stream.node].name.clone(),
        }
    }

    /// Parallelism of the nodes added from now on.
    pub fn parallelism(mut self, n: usize) -> Self {
        self.parallelism = n.max(1);
        self
    }

    /// What SQL stages do with a row they cannot evaluate (default: fail).
    pub fn on_processing_error(mut self, policy: ErrorPolicy) -> Self {
        self.stage_options.on_error = policy;
        self
    }

    /// Most bytes of state one task of a stateful SQL stage may hold.
    pub fn state_memory_limit(mut self, bytes: u64) -> Self {
        self.stage_options.state_memory_limit = Some(bytes);
        self
    }

    /// How long keyed state without a window (ROW_NUMBER dedup) keeps a quiet key.
    /// How long after its end a tumbling or hopping window still takes late rows,
    /// updating its emitted result: the query's output becomes a changelog.
    pub fn allowed_lateness(mut self, lateness: std::time::Duration) -> Self {
        self.stage_options.allowed_lateness = Some(lateness);
        self
    }

    pub fn state_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.stage_options.state_ttl = Some(ttl);
        self
    }

    pub fn runtime_settings(mut self, settings: RuntimeSettings) -> Self {
        self.runtime = settings;
        self
    }

    /// The planner used for SQL stages; register Rust UDFs on it.
    pub fn planner_mut(&mut self) -> &mut SqlPlanner {
        &mut self.planner
    }

    pub fn schema(&self, s: &Stream) -> SchemaRef {
        self.graph
            .output_schema(s.node, s.port)
            .expect("a stream's node and port exist")
    }

    fn edge(&self, s: &Stream) -> Stream {
        s.clone()
    }

    /// An operator reading `input` (its node's main or side output).
    fn add_op(
        &mut self,
        name: &str,
        op: Arc<dyn crate::engine::OperatorFactory>,
        input: &Stream,
    ) -> NodeId {
        let first = self.graph.nodes.len();
        let node = self.graph.add_operator(
            name,
            op,
            self.parallelism,
            input.node,
            input.partitioning.clone(),
        );
        self.read_port(first, input);
        node
    }

    /// Nodes added from `first` on that read `input`'s node read its port.
    fn read_port(&mut self, first: NodeId, input: &Stream) {
        if input.port == 0 {
            return;
        }
        for spec in &mut self.graph.nodes[first..] {
            for i in 0..spec.inputs.len() {
                if spec.inputs[i].0 == input.node {
                    spec.input_ports.resize(spec.inputs.len(), 0);
                    spec.input_ports[i] = input.port;
                }
            }
        }
    }

    /// The side output `name` of a process function's stream (see
    /// [`process_with_side_outputs`](Self::process_with_side_outputs)).
    pub fn side_output(&self, stream: &Stream, name: &str) -> Result<Stream> {
        let spec = &self.graph.nodes[stream.node];
        let i = spec
            .side_outputs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| {
                EngineError::Invalid(format!("{} has no side output {name}", spec.name))
            })?;
        Ok(Stream {
            node: stream.node,
            partitioning: Partitioning::Forward,
            port: i + 1,
        })
    }

    /// Adds a source from a factory (any connector, or your own).
    pub fn source(&mut self, name: &str, factory: Arc<dyn SourceFactory>) -> Stream {
        let node = self.graph.add_source(name, factory, self.parallelism);
        Stream {
            node,
            partitioning: Partitioning::Forward,
            port: 0,
        }
    }

    /// Declares the event-time column of a source and its bounded out-of-orderness:
    /// its tasks then send watermarks (newest event time seen − `delay`).
    pub fn event_time(
        &mut self,
        source: &Stream,
        column: &str,
        delay: std::time::Duration,
    ) -> Result<()> {
        self.graph.set_event_time(
            source.node,
            crate::engine::EventTime {
                column: column.into(),
                delay,
            },
        )
    }

    /// An input silent for this long stops holding back the watermark downstream.
    pub fn idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.graph.idle_timeout = Some(timeout);
        self
    }

    /// The table a lone `CREATE TABLE` declares, and its text (for errors).
    fn single_table(ddl: &str) -> Result<(crate::planner::TableDecl, SqlText)> {
        // A lone CREATE TABLE is not a pipeline, so parse it with a dummy INSERT.
        let text = SqlText::file(format!("{ddl};\nINSERT INTO x SELECT 1"), "<builder>");
        let parsed = parse_sql(&text)?;
        let decl = parsed.tables.into_iter().next().ok_or_else(|| {
            EngineError::Invalid("expected CREATE TABLE … WITH (connector = …)".into())
        })?;
        Ok((decl, text))
    }

    /// Adds a source declared in SQL: `CREATE TABLE name [(cols)] WITH (connector = …)`.
    pub fn source_sql(&mut self, ddl: &str) -> Result<Stream> {
        let (decl, text) = Self::single_table(ddl)?;
        let schema = futures::executor::block_on(self.planner.declared_columns(&decl, &text))?;
        let cwd = std::env::current_dir().map_err(|e| crate::Error::io(".", e))?;
        let req = TableRequest {
            env: self.planner.env(),
            table: &decl.name,
            schema,
            base_dir: &cwd,
        };
        let mut options = decl.options.clone();
        let event_time = crate::planner::event_time::take_event_time(&mut options)
            .map_err(|m| EngineError::Invalid(format!("table {}: {m}", decl.name)))?;
        let processing_time = options.remove("processing_time_field");
        let parallelism = match options.remove("parallelism") {
            None => self.parallelism,
            Some(p) => p
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "table {}: parallelism = '{p}' must be a positive integer",
                        decl.name
                    ))
                })?,
        };
        let factory = connectors::source(&req, Options::new(&decl.name, &decl.connector, options))?;
        let stream = Stream {
            node: self.graph.add_source(&decl.name, factory, parallelism),
            partitioning: Partitioning::Forward,
            port: 0,
        };
        if let Some((et, idle)) = event_time {
            self.graph.set_event_time(stream.node, et)?;
            if let Some(idle) = idle {
                self.graph.idle_timeout =
                    Some(self.graph.idle_timeout.map_or(idle, |t| t.min(idle)));
            }
        }
        match processing_time {
            Some(column) => self.processing_time(stream, &column),
            None => Ok(stream),
        }
    }

    /// The event-time column of the source `stream` descends from, if declared and
    /// still present in its schema.
    fn event_time_of(&self, stream: &Stream) -> Option<String> {
        let mut node = stream.node;
        loop {
            let spec = &self.graph.nodes[node];
            if let Some(et) = &spec.event_time {
                return Some(et.column.clone());
            }
            if let Some((_, column)) = self.arrivals.get(&node) {
                return Some(column.clone());
            }
            node = spec.inputs.first()?.0;
        }
    }

    /// A SQL stage reading `input` under its node name (the source's table name, or
    /// the name of the stage that produced it).
    pub async fn sql(&mut self, input: Stream, query: &str) -> Result<Stream> {
        let name = self.table_name(&input);
        let event_time = self.event_time_of(&input);
        let stage = self
            .planner
            .plan_query(
                query,
                &[(&name, self.schema(&input), event_time.as_deref())],
                self.stage_options,
            )
            .await?;
        let e = self.edge(&input);
        let first = self.graph.nodes.len();
        let (node, _) = stage.add_to_graph(
            &mut self.graph,
            &format!("{name}_sql"),
            e.node,
            e.partitioning,
            self.parallelism,
        )?;
        self.read_port(first, &input);
        Ok(Stream {
            node,
            partitioning: Partitioning::Forward,
            port: 0,
        })
    }

    /// A SQL query joining two streams, each read under its node name (the source's
    /// table name, or the name of the stage that produced it): an interval join,
    /// `… FROM a JOIN b ON a.k = b.k AND a.ts BETWEEN b.ts - INTERVAL … AND b.ts`.
    pub async fn join_sql(&mut self, left: Stream, right: Stream, query: &str) -> Result<Stream> {
        let names = [self.table_name(&left), self.table_name(&right)];
        let times = [self.event_time_of(&left), self.event_time_of(&right)];
        let stage = self
            .planner
            .plan_query(
                query,
                &[
                    (&names[0], self.schema(&left), times[0].as_deref()),
                    (&names[1], self.schema(&right), times[1].as_deref()),
                ],
                self.stage_options,
            )
            .await?;
        let StagePlan::Join { inputs, .. } = &stage else {
            return Err(EngineError::Invalid(format!(
                "join_sql: the query does not join {} with {}",
                names[0], names[1]
            ))
            .into());
        };
        // The planner may have put either stream on either side.
        let (l, r) = if inputs[0] == names[0] {
            (left, right)
        } else {
            (right, left)
        };
        let first = self.graph.nodes.len();
        let (node, _) = stage.add_join_to_graph(
            &mut self.graph,
            &format!("{}_{}", names[0], names[1]),
            l.node,
            r.node,
            self.parallelism,
        )?;
        self.read_port(first, &l);
        self.read_port(first, &r);
        Ok(Stream {
            node,
            partitioning: Partitioning::Forward,
            port: 0,
        })
    }

    /// Routes `input` by the hash of `columns`, so that every row of one key reaches
    /// the same partition of the next node.
    pub fn key_by(&mut self, input: Stream, columns: &[&str]) -> Result<Stream> {
        let schema = self.schema(&input);
        let idx = columns
            .iter()
            .map(|c| {
                schema.index_of(c).map_err(|_| {
                    EngineError::Invalid(format!(
                        "key_by: no column {c} in {}",
                        self.graph.nodes[input.node].name
                    ))
                    .into()
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        Ok(Stream {
            node: input.node,
            partitioning: Partitioning::Hash(idx),
            port: input.port,
        })
    }

    /// A Rust function from batch to batch, returning `schema`.
    pub fn map(
        &mut self,
        input: Stream,
        name: &str,
        schema: SchemaRef,
        f: impl Fn(RecordBatch) -> crate::engine::Result<RecordBatch> + Send + Sync + 'static,
    ) -> Stream {
        let op = Arc::new(MapOperator::new(name, schema, f));
        let node = self.add_op(name, op, &input);
        Stream {
            node,
            partitioning: Partitioning::Forward,
            port: 0,
        }
    }

    /// A keyed process function ([`crate::operators::KeyedProcessFunction`]): rows are
    /// routed by `key_by`, each key has its own typed state and event-time timers, and
    /// the function emits rows of `output`. `make` builds one function per partition.
    pub fn process<F: crate::operators::KeyedProcessFunction>(
        &mut self,
        input: Stream,
        name: &str,
        key_by: &[&str],
        output: SchemaRef,
        make: impl Fn() -> F + Send + Sync + 'static,
    ) -> Result<Stream> {
        self.process_with_side_outputs(input, name, key_by, output, &[], make)
    }

    /// [`process`](Self::process) with side outputs besides the main output: the
    /// function sends rows to one with `ctx.emit_to(name, row)`, and
    /// [`side_output`](Self::side_output) is the stream of its rows (alerts, rejected
    /// rows) for any further node or sink.
    pub fn process_with_side_outputs<F: crate::operators::KeyedProcessFunction>(
        &mut self,
        input: Stream,
        name: &str,
        key_by: &[&str],
        output: SchemaRef,
        side_outputs: &[(&str, SchemaRef)],
        make: impl Fn() -> F + Send + Sync + 'static,
    ) -> Result<Stream> {
        let keyed = self.key_by(input, key_by)?;
        let Partitioning::Hash(keys) = keyed.partitioning.clone() else {
            unreachable!("key_by routes by hash")
        };
        let op = Arc::new(crate::operators::ProcessFactory {
            make: Arc::new(make),
            keys,
            output,
            name: name.to_string(),
            memory_limit: self.stage_options.state_memory_limit,
            side_outputs: side_outputs
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect(),
        });
        let node = self.add_op(name, op, &keyed);
        Ok(Stream {
            node,
            partitioning: Partitioning::Forward,
            port: 0,
        })
    }

    /// Keeps the rows for which `f` returns true.
    pub fn filter(
        &mut self,
        input: Stream,
        name: &str,
        f: impl Fn(&RecordBatch) -> crate::engine::Result<BooleanArray> + Send + Sync + 'static,
    ) -> Stream {
        let schema = self.schema(&input);
        let op = Arc::new(FilterOperator::new(name, schema, f));
        let node = self.add_op(name, op, &input);
        Stream {
            node,
            partitioning: Partitioning::Forward,
            port: 0,
        }
    }

    /// Turns each batch into any number of batches of `schema`.
    pub fn flat_map(
        &mut self,
        input: Stream,
        name: &str,
        schema: SchemaRef,
        f: impl Fn(RecordBatch) -> crate::engine::Result<Vec<RecordBatch>> + Send + Sync + 'static,
    ) -> Stream {
        let op = Arc::new(FlatMapOperator::new(name, schema, f));
        let node = self.add_op(name, op, &input);
        Stream {
            node,
            partitioning: Partitioning::Forward,
            port: 0,
        }
    }

    /// Ends `input` in an in-memory sink; read its batches after the run (tests,
    /// tools, small results).
    pub fn collect(
        &mut self,
        input: Stream,
        name: &str,
    ) -> Result<crate::connectors::memory::MemorySink> {
        let sink = crate::connectors::memory::MemorySink::new();
        self.sink(input, name, Arc::new(sink.clone()))?;
        Ok(sink)
    }

    /// Writes `input` to a sink from a factory.
    pub fn sink(&mut self, input: Stream, name: &str, factory: Arc<dyn SinkFactory>) -> Result<()> {
        self.graph.add_sink_on_port(
            name,
            factory,
            self.parallelism,
            (input.node, input.port),
            input.partitioning,
        )?;
        Ok(())
    }

    /// Writes `input` to a sink declared in SQL: `CREATE TABLE name WITH (connector = …)`.
    pub fn sink_sql(&mut self, input: Stream, ddl: &str) -> Result<()> {
        let (decl, text) = Self::single_table(ddl)?;
        let schema = futures::executor::block_on(self.planner.declared_columns(&decl, &text))?;
        let cwd = std::env::current_dir().map_err(|e| crate::Error::io(".", e))?;
        let req = TableRequest {
            env: self.planner.env(),
            table: &decl.name,
            schema,
            base_dir: &cwd,
        };
        let factory = connectors::sink(
            &req,
            Options::new(&decl.name, &decl.connector, decl.options.clone()),
        )?;
        self.sink(input, &decl.name, factory)
    }

    pub fn build(self) -> Graph {
        self.graph
    }

    /// Runs the pipeline until its (bounded) sources are exhausted.
    pub async fn run_to_completion(self) -> Result<RunReport> {
        let settings = self.runtime.clone();
        Runtime::run(self.build(), settings, futures::future::pending()).await
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::DataType;

    use super::*;
    use crate::planner::PlanSettings;

    /// A table declared through the Rust API gets the columns the same DDL gets in a
    /// pipeline's SQL: `VARCHAR` is `Utf8` both ways (DataFusion's own default is
    /// `Utf8View`, which the planner turns off).
    #[tokio::test]
    async fn declared_columns_are_typed_as_in_a_pipelines_sql() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, "{\"s\": \"a\", \"n\": 1}\n").unwrap();
        let ddl = format!(
            "CREATE TABLE t (s VARCHAR NOT NULL, n BIGINT, at TIMESTAMP, d DECIMAL(10, 2)) \
             WITH (connector = 'file', path = '{}', format = 'json')",
            path.display()
        );
        let mut p = PipelineBuilder::new("p");
        let stream = p.source_sql(&ddl).unwrap();
        let built = p.schema(&stream);
        let text = format!(
            "{ddl};\nCREATE TABLE out WITH (connector = 'blackhole');\nINSERT INTO out SELECT * FROM t;\n"
        );
        let planned = SqlPlanner::new()
            .plan_pipeline(
                "p",
                &SqlText::file(text, "p.sql"),
                dir.path(),
                &PlanSettings::default(),
            )
            .await
            .unwrap();
        let source = planned.graph.find("t").unwrap();
        let in_sql = planned.graph.output_schema(source, 0).unwrap();
        assert_eq!(built.fields(), in_sql.fields());
        assert_eq!(
            built.field_with_name("s").unwrap().data_type(),
            &DataType::Utf8
        );
    }
}
