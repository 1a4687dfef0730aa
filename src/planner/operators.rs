//! Planning a pipeline file's `operators:`: named Rust operators (`crate::library`)
//! between the SQL's tables. Each reads a table of the SQL (a source or a view,
//! through a SQL stage), is keyed by its `key`, and its output — and each side output
//! `<name>_<side>` — becomes a table the SQL's `INSERT`s read like any stream, with
//! the input's event-time column when the output keeps it.

use std::collections::BTreeMap;

use super::SqlError;
use super::ddl::InsertDecl;
use super::inserts::Wiring;
use super::plan::Planning;
use super::tables::Tables;
use crate::engine::Partitioning;
use crate::types::Location;

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// One entry of a pipeline file's `operators:`.
#[derive(Debug, Clone)]
pub struct OperatorDecl {
    /// Its output table (and node) name.
    pub name: String,
    /// The registered operator (`crate::library::register`).
    pub function: String,
    /// The table of the SQL it reads.
    pub input: String,
    /// Columns its rows are routed by.
    pub key: Vec<String>,
    pub options: BTreeMap<String, String>,
    pub parallelism: Option<usize>,
    /// Where the entry is written, for errors.
    pub location: Location,
}

impl Planning<'_> {
    /// Adds `op` to the graph, and its outputs to the tables the SQL reads.
    pub(super) async fn plan_operator(
        &self,
        op: &OperatorDecl,
        tables: &mut Tables,
        wiring: &mut Wiring,
    ) -> Result<()> {
        let refuse = |message: String| -> crate::Error {
            SqlError::Plan {
                location: op.location.clone(),
                message,
            }
            .into()
        };
        let Some(constructor) = crate::library::lookup(&op.function) else {
            let known = crate::library::names();
            let hint = crate::error::did_you_mean(&op.function, known.iter().map(String::as_str))
                .map(|m| format!(" (did you mean {m}?)"))
                .unwrap_or_default();
            return Err(refuse(format!(
                "operator {}: no Rust operator named {}{hint}; registered: {}",
                op.name,
                op.function,
                known.join(", ")
            )));
        };
        if tables.sources.contains_key(&op.name)
            || tables.sinks.contains_key(&op.name)
            || self.ctx.table_exist(op.name.as_str()).unwrap_or(false)
        {
            return Err(refuse(format!(
                "operator {}: a table of that name exists; an operator's name is the table of its output",
                op.name
            )));
        }
        // The input, through a SQL stage (a view's query, or a source as it is).
        let query = datafusion::sql::sqlparser::parser::Parser::new(
            &datafusion::sql::sqlparser::dialect::GenericDialect {},
        )
        .try_with_sql(&format!("SELECT * FROM {}", op.input))
        .and_then(|mut p| p.parse_statement())
        .map_err(|e| refuse(format!("operator {}: input {}: {e}", op.name, op.input)))?;
        let feed = InsertDecl {
            sink: op.name.clone(),
            query: query.clone(),
            location: op.location.clone(),
        };
        let settings = self.settings;
        let planned = self
            .plan_query_stage(query, &op.location, None, &op.name, &tables.event_times)
            .await?;
        let inputs = planned.inputs.clone();
        let stage_node = self.wire_query(&feed, &planned, tables, wiring)?;
        let input = wiring.graph.node(stage_node)?.schema.clone();
        let spec = crate::library::OperatorSpec {
            name: &op.name,
            input: input.clone(),
            key: &op.key,
            options: &op.options,
            memory_limit: settings.state_memory_limit,
        };
        let factory = constructor(&spec).map_err(|e| refuse(e.to_string()))?;
        let keys = op
            .key
            .iter()
            .map(|k| {
                input
                    .index_of(k)
                    .map_err(|_| refuse(format!("no key column {k}")))
            })
            .collect::<Result<Vec<usize>>>()?;
        let node = wiring.graph.add_operator(
            &op.name,
            factory,
            op.parallelism.unwrap_or(settings.parallelism),
            stage_node,
            Partitioning::Hash(keys),
        );
        // Its outputs as tables: the main one, then each side output.
        let event_time = tables.event_times.get(&op.input).cloned().or_else(|| {
            // A view: the event-time column every table it may read names alike.
            let mut all = inputs.iter().filter_map(|t| tables.event_times.get(t));
            let first = all.next()?;
            all.all(|c| c == first).then(|| first.clone())
        });
        let spec = wiring.graph.node(node)?.clone();
        let outputs = std::iter::once((op.name.clone(), 0, spec.schema.clone())).chain(
            spec.side_outputs
                .iter()
                .enumerate()
                .map(|(i, (side, schema))| (format!("{}_{side}", op.name), i + 1, schema.clone())),
        );
        for (table, port, schema) in outputs {
            super::plan::SqlPlanner::register_input(&self.ctx, &table, schema.clone())?;
            if let Some(c) = &event_time
                && schema.field_with_name(c).is_ok()
            {
                tables.event_times.insert(table.clone(), c.clone());
            }
            wiring.add_table_output(table, node, port);
        }
        Ok(())
    }
}
