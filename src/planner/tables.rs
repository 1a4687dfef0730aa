//! Declaring a pipeline's tables, the first steps of planning a pipeline: checking that
//! the pipeline file's `connectors:` section names declared tables; reading each
//! `CREATE TABLE`'s own options (parallelism, event or processing time, lookup);
//! refusing options and `CHECK`s on sinks; building each source (with its `CHECK`
//! constraints) and registering it, or a lookup table, with the planning session. Sinks
//! are kept for the inserts that write them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::SessionContext;

use super::ddl::{ParsedSql, TableDecl};
use super::event_time::take_event_time;
use super::plan::{Planning, SqlPlanner, plan_error};
use super::{SqlError, SqlText};
use crate::connectors::{self, Options, TableRequest};
use crate::engine::{EventTime, SourceFactory};
use crate::operators::lookup::LookupTable;
use crate::types::Location;

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// A source table, added to the graph when a query first reads it.
pub(super) struct SourceDecl {
    pub factory: Arc<dyn SourceFactory>,
    pub parallelism: usize,
    pub location: Location,
    pub event_time: Option<(EventTime, Option<Duration>)>,
    /// The arrival-time column of a table read in processing time.
    pub processing_time: Option<String>,
}

/// A sink table, added to the graph when an insert first writes it.
pub(super) struct SinkDecl {
    /// Its declared columns, which the queries writing it are cast to.
    pub declared: Option<SchemaRef>,
    /// Its declaration, with the connector's options only.
    pub decl: TableDecl,
    pub parallelism: usize,
}

/// A pipeline's declared tables.
#[derive(Default)]
pub(super) struct Tables {
    pub sources: BTreeMap<String, SourceDecl>,
    pub sinks: BTreeMap<String, SinkDecl>,
    /// The event-time column of each stream table that has one (for a table read in
    /// processing time, its arrival-time column).
    pub event_times: BTreeMap<String, String>,
    /// The lookup tables, described for `explain`.
    pub lookups: Vec<String>,
}

/// A table's options, the planner's own taken out of the connector's.
struct TableOptions {
    /// What is left: the connector's options.
    connector: BTreeMap<String, String>,
    parallelism: usize,
    event_time: Option<(EventTime, Option<Duration>)>,
    /// `Some((refresh, misses are dead letters))`: a lookup table.
    lookup: Option<(Option<Duration>, bool)>,
    processing_time: Option<String>,
}

impl Planning<'_> {
    /// The directory of the pipeline's SQL file (of the pipeline file for inline SQL):
    /// where a table's `schema_file` is resolved from.
    pub(super) fn sql_dir(&self) -> &std::path::Path {
        self.sql.file.parent().unwrap_or(std::path::Path::new(""))
    }

    /// Refuses connector options (from the pipeline file) for a table the SQL does not
    /// declare.
    pub(super) fn check_table_options(&self, parsed: &ParsedSql) -> Result<()> {
        for table in self.settings.table_options.keys() {
            if !parsed.tables.iter().any(|t| &t.name == table) {
                return Err(SqlError::Plan {
                    location: self
                        .settings
                        .table_options_origin
                        .clone()
                        .unwrap_or_else(|| self.sql.locate(1, 1)),
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
        Ok(())
    }

    /// Declares every table of the pipeline: sources and lookup tables are registered
    /// with the session, sinks kept for the inserts.
    pub(super) async fn declare_tables(&self, parsed: &ParsedSql) -> Result<Tables> {
        let sink_names: Vec<&str> = parsed.inserts.iter().map(|i| i.sink.as_str()).collect();
        let mut tables = Tables::default();
        for decl in &parsed.tables {
            let declared = declared_schema(&self.ctx, decl, self.sql).await?;
            let options = self.table_options(decl)?;
            let is_sink = sink_names.contains(&decl.name.as_str());
            let sink_only = matches!(
                decl.connector.as_str(),
                "stdout" | "parquet" | "blackhole" | "webhook" | "serving"
            );
            if is_sink || sink_only {
                refuse_source_options(decl, &options)?;
                let mut decl = decl.clone();
                decl.options = options.connector;
                let parallelism = options.parallelism;
                tables.sinks.insert(
                    decl.name.clone(),
                    SinkDecl {
                        declared,
                        decl,
                        parallelism,
                    },
                );
                continue;
            }
            self.declare_source(decl, declared, options, &mut tables)?;
        }
        Ok(tables)
    }

    /// Reads a table's own options: `parallelism`, event time, lookup, processing time.
    fn table_options(&self, decl: &TableDecl) -> Result<TableOptions> {
        let mut options = decl.options.clone();
        if let Some(extra) = self.settings.table_options.get(&decl.name) {
            options.extend(extra.clone());
        }
        let parallelism = match options.remove("parallelism") {
            None => self.settings.parallelism,
            Some(p) => {
                p.parse::<usize>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| SqlError::Plan {
                        location: decl.location.clone(),
                        message: format!(
                            "table {}: parallelism = '{p}' must be a positive integer",
                            decl.name
                        ),
                    })?
            }
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
        Ok(TableOptions {
            connector: options,
            parallelism,
            event_time,
            lookup,
            processing_time,
        })
    }

    /// Builds a source table (with its `CHECK`s) and declares it as a lookup table or a
    /// stream.
    fn declare_source(
        &self,
        decl: &TableDecl,
        declared: Option<SchemaRef>,
        mut options: TableOptions,
        tables: &mut Tables,
    ) -> Result<()> {
        let req = TableRequest {
            table: &decl.name,
            env: self.planner.env(),
            schema: declared,
            base_dir: self.base_dir,
        };
        if decl.connector == "dynamodb"
            && let Some((refresh, on_miss)) = options.lookup
        {
            return self.declare_keyed_lookup(decl, &req, options, (refresh, on_miss), tables);
        }
        let mut factory = connectors::source(
            &req,
            Options::new(
                &decl.name,
                &decl.connector,
                std::mem::take(&mut options.connector),
            )
            .declared_in(self.sql_dir()),
        )
        .map_err(|e| SqlError::Connector {
            location: decl.locate(&e),
            source: Box::new(e),
        })?;
        if !decl.checks.is_empty() {
            let checks = super::check::TableChecks::plan(
                &self.ctx,
                &decl.name,
                &factory.schema(),
                &decl.checks,
            )?;
            factory = Arc::new(crate::engine::ValidatedSourceFactory {
                inner: factory,
                validator: Arc::new(checks),
            });
        }
        match options.lookup {
            Some((refresh, on_miss)) => {
                self.declare_lookup(decl, factory, (refresh, on_miss), &options, tables)
            }
            None => self.declare_stream(decl, factory, options, tables),
        }
    }

    /// Registers a lookup table read by key (DynamoDB) with the session.
    fn declare_keyed_lookup(
        &self,
        decl: &TableDecl,
        req: &TableRequest<'_>,
        mut options: TableOptions,
        (refresh, dead_letter_misses): (Option<Duration>, bool),
        tables: &mut Tables,
    ) -> Result<()> {
        let at = |message: String| -> crate::Error {
            SqlError::Plan {
                location: decl.location.clone(),
                message,
            }
            .into()
        };
        if refresh.is_some() {
            return Err(at(format!(
                "table {}: a dynamodb lookup table is read by key through a cache: set cache_ttl, not refresh_interval",
                decl.name
            )));
        }
        if options.event_time.is_some()
            || options.processing_time.is_some()
            || !decl.checks.is_empty()
        {
            return Err(at(format!(
                "table {}: a lookup table has no event time, processing time or CHECKs",
                decl.name
            )));
        }
        let mut opts = Options::new(
            &decl.name,
            &decl.connector,
            std::mem::take(&mut options.connector),
        )
        .declared_in(self.sql_dir());
        let lookup = connectors::dynamodb::lookup_table(self.pipeline, req, &mut opts)
            .and_then(|l| opts.finish().map(|()| l))
            .map_err(|e| SqlError::Connector {
                location: decl.locate(&e),
                source: Box::new(e),
            })?;
        let schema = req.schema.clone().expect("checked by lookup_table");
        let mut table = LookupTable::keyed(self.pipeline, &decl.name, lookup);
        table.dead_letter_misses = dead_letter_misses;
        let table = Arc::new(table);
        tables.lookups.push(table.describe());
        SqlPlanner::register_lookup(&self.ctx, table, schema)
    }

    /// Registers a lookup table (bounded, without event time) with the session.
    fn declare_lookup(
        &self,
        decl: &TableDecl,
        factory: Arc<dyn SourceFactory>,
        (refresh, dead_letter_misses): (Option<Duration>, bool),
        options: &TableOptions,
        tables: &mut Tables,
    ) -> Result<()> {
        if options.event_time.is_some() || options.processing_time.is_some() || !factory.bounded() {
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
        let mut table = LookupTable::new(self.pipeline, &decl.name, factory, refresh);
        table.dead_letter_misses = dead_letter_misses;
        let table = Arc::new(table);
        tables.lookups.push(table.describe());
        SqlPlanner::register_lookup(&self.ctx, table, schema)
    }

    /// Registers a stream table with the session (with its arrival-time column when it
    /// is read in processing time) and keeps it for the queries that read it.
    fn declare_stream(
        &self,
        decl: &TableDecl,
        factory: Arc<dyn SourceFactory>,
        options: TableOptions,
        tables: &mut Tables,
    ) -> Result<()> {
        let TableOptions {
            parallelism,
            event_time,
            processing_time,
            ..
        } = options;
        let schema = match &processing_time {
            Some(column) => Arc::new(crate::operators::ArrivalTimeFactory::schema(
                &factory.schema(),
                column,
            )),
            None => factory.schema(),
        };
        SqlPlanner::register_input(&self.ctx, &decl.name, schema)?;
        if let Some((et, _)) = &event_time {
            tables
                .event_times
                .insert(decl.name.clone(), et.column.clone());
        }
        if let Some(column) = &processing_time {
            tables.event_times.insert(decl.name.clone(), column.clone());
        }
        tables.sources.insert(
            decl.name.clone(),
            SourceDecl {
                factory,
                parallelism,
                location: decl.location.clone(),
                event_time,
                processing_time,
            },
        );
        Ok(())
    }
}

/// Refuses on a sink what applies to the tables a pipeline reads: `CHECK`s, event or
/// processing time, lookup.
fn refuse_source_options(decl: &TableDecl, options: &TableOptions) -> Result<()> {
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
    if options.event_time.is_some() || options.lookup.is_some() || options.processing_time.is_some()
    {
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
    Ok(())
}

impl SqlPlanner {
    /// The schema of `decl`'s declared columns (`None` if it declares none), typed as
    /// this planner types them in a pipeline's SQL (`VARCHAR` is `Utf8`): a table
    /// declared through the Rust API gets the columns the same DDL gets in a file.
    pub(crate) async fn declared_columns(
        &self,
        decl: &TableDecl,
        sql: &SqlText,
    ) -> Result<Option<SchemaRef>> {
        declared_schema(&self.session(), decl, sql).await
    }
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

/// Reads (and removes) a table's lookup options: `lookup = 'true'` and
/// `refresh_interval`. `None`: not a lookup table; `Some(refresh)`: a lookup table.
fn take_lookup(
    options: &mut BTreeMap<String, String>,
) -> std::result::Result<Option<(Option<std::time::Duration>, bool)>, String> {
    let lookup = options.remove("lookup");
    let refresh = options.remove("refresh_interval");
    let on_miss = match options.remove("on_miss").as_deref().map(str::trim) {
        None | Some("ignore") => None,
        Some("dead-letter") => Some(true),
        Some(other) => {
            return Err(format!(
                "on_miss = '{other}': expected 'dead-letter' (a stream row without a match \
                 is a dead letter, class lookup_miss) or 'ignore' (the join decides)"
            ));
        }
    };
    let is_lookup = match lookup.as_deref().map(str::trim) {
        None => false,
        Some("true") => true,
        Some("false") => false,
        Some(other) => return Err(format!("lookup = '{other}': expected 'true' or 'false'")),
    };
    if !is_lookup {
        return match (refresh, on_miss) {
            (Some(_), _) => {
                Err("refresh_interval applies to lookup tables (lookup = 'true')".into())
            }
            (_, Some(_)) => Err("on_miss applies to lookup tables (lookup = 'true')".into()),
            _ => Ok(None),
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
    Ok(Some((refresh, on_miss.unwrap_or(false))))
}
