//! The analytics outputs as DataFusion tables: what `tributary query` and the Arrow
//! Flight SQL endpoint ([`flight`]) run SQL over.
//!
//! **Tables.** Each table is a DataFusion `ListingTable` over the files a sink writes,
//! named after the sink's table ([`TableSpec::from_sink`], from
//! [`SinkOutput`](crate::engine::SinkOutput)), or added by hand (`--table name=path`,
//! [`TableSpec::by_hand`]):
//!
//! - **Parquet** (a directory): every `*.parquet` file under it. Hive-style partition
//!   directories (`date=2026-01-01/hour=13/`) become columns, **typed as strings**
//!   (`Utf8`), the directory's text whatever the pipeline's type was (the Parquet sink
//!   drops partition columns from the files and renders their values as text, nulls as
//!   `__HIVE_DEFAULT_PARTITION__`): compare them with string literals,
//!   `WHERE date = '2026-01-01' AND hour = '13'`. Filters on partition columns prune
//!   whole directories before any file is opened. Files being written are hidden
//!   (`.part-<p>-<n>.parquet.inprogress`): ListingTable does not skip hidden files,
//!   but reads only names ending in `.parquet`, so they are never read; a file appears
//!   once the sink renames it (completed, and committed with exactly-once).
//! - **JSON lines**: the files of every task of the sink (`name.jsonl` or
//!   `name-0.jsonl` … `name-(N-1).jsonl`), one table.
//!
//! A sink's table has the columns the pipeline writes (the planned schema, so a table
//! exists with its columns before any file does); a table added by hand has the
//! schema inferred from its files, and the partition columns found in the first
//! `key=value` directories below it.
//!
//! **Statements.** [`QuerySession::sql`] plans one statement; `SHOW TABLES` lists the
//! user tables only (`information_schema` is left out; `SELECT … FROM
//! information_schema.tables` shows everything). Errors say where in the statement
//! they are when DataFusion knows (`line 1, column 8`).

pub mod flight;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};

use crate::engine::SinkOutput;

/// Errors of `tributary query` and the Flight SQL endpoint.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement does not parse or plan (unknown table or column, syntax).
    #[error("query refused: {0}")]
    Refused(String),
    /// A table cannot be declared (a bad `--table`, unreadable files).
    #[error("table {table}: {message}")]
    Table { table: String, message: String },
    /// The query failed while running (a file unreadable or not matching the schema).
    #[error("query failed: {0}")]
    Failed(String),
    /// The Flight SQL endpoint cannot start.
    #[error("flight sql endpoint on {listen}: {message}")]
    Serve { listen: String, message: String },
}

impl QueryError {
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Refused(_) => "QRY001",
            QueryError::Table { .. } => "QRY002",
            QueryError::Failed(_) => "QRY003",
            QueryError::Serve { .. } => "QRY004",
        }
    }
}

type Result<T, E = QueryError> = std::result::Result<T, E>;

/// The file format of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Parquet,
    JsonLines,
}

/// A table to declare: its name, files and columns.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: String,
    pub kind: FileKind,
    /// Parquet: the directory (or one file); JSON lines: the files.
    pub paths: Vec<PathBuf>,
    /// Hive partition columns, outermost first (Parquet only).
    pub partition_by: Vec<String>,
    /// The rows' columns as the pipeline writes them, partition columns included;
    /// `None`: inferred from the files.
    pub schema: Option<SchemaRef>,
    /// Where the table comes from (`pipeline NAME`, `--table`), for errors.
    pub origin: String,
}

impl TableSpec {
    /// The table of a sink `name` (of `pipeline`) writing `output`, whose input rows
    /// have `schema`.
    pub fn from_sink(pipeline: &str, name: &str, output: SinkOutput, schema: SchemaRef) -> Self {
        let (kind, paths, partition_by) = match output {
            SinkOutput::Parquet { dir, partition_by } => {
                (FileKind::Parquet, vec![dir], partition_by)
            }
            SinkOutput::JsonLines { files } => (FileKind::JsonLines, files, Vec::new()),
        };
        TableSpec {
            name: name.to_string(),
            kind,
            paths,
            partition_by,
            schema: Some(schema),
            origin: format!("pipeline {pipeline}"),
        }
    }

    /// A table given as `name=path`: a directory or a `.parquet` file is Parquet (a
    /// directory's partition columns found from its first `key=value` directories),
    /// `.jsonl`, `.json` and `.ndjson` files are JSON lines.
    pub fn by_hand(spec: &str) -> Result<Self> {
        let bad = |message: String| QueryError::Table {
            table: spec.to_string(),
            message,
        };
        let Some((name, path)) = spec.split_once('=') else {
            return Err(bad("expected NAME=PATH".into()));
        };
        let (name, path) = (name.trim(), PathBuf::from(path.trim()));
        if name.is_empty() {
            return Err(bad("expected NAME=PATH, the name is empty".into()));
        }
        if !path.exists() {
            return Err(bad(format!("{} does not exist", path.display())));
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let (kind, partition_by) = if path.is_dir() {
            (FileKind::Parquet, hive_columns(&path))
        } else if ext == "parquet" {
            (FileKind::Parquet, Vec::new())
        } else if ["jsonl", "json", "ndjson"].contains(&ext.as_str()) {
            (FileKind::JsonLines, Vec::new())
        } else {
            return Err(bad(format!(
                "{}: expected a directory of Parquet files, a .parquet file or a .jsonl \
                 (.json, .ndjson) file",
                path.display()
            )));
        };
        Ok(TableSpec {
            name: name.to_string(),
            kind,
            paths: vec![path],
            partition_by,
            schema: None,
            origin: "--table".to_string(),
        })
    }
}

/// The `key` of each `key=value` directory on the way down from `dir`, following the
/// first visible such directory at each level.
fn hive_columns(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut here = dir.to_path_buf();
    loop {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&here)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        let next = entries.into_iter().find(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.') && n.contains('='))
        });
        let Some(next) = next else {
            return out;
        };
        let name = next.file_name().unwrap_or_default().to_string_lossy();
        out.push(name.split('=').next().unwrap_or_default().to_string());
        here = next;
    }
}

/// A DataFusion session holding the tables; cheap to clone (shared).
#[derive(Clone)]
pub struct QuerySession {
    ctx: SessionContext,
}

impl Default for QuerySession {
    fn default() -> Self {
        Self::new()
    }
}

/// The catalog and schema tables are declared in.
pub const CATALOG: &str = "tributary";
pub const SCHEMA: &str = "public";

impl QuerySession {
    pub fn new() -> Self {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA);
        // Spans on plan errors: "unknown column" says where it is.
        config.options_mut().sql_parser.collect_spans = true;
        QuerySession {
            ctx: SessionContext::new_with_config(config),
        }
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Declares `spec` as a `ListingTable`.
    pub async fn register(&self, spec: &TableSpec) -> Result<()> {
        let err = |message: String| QueryError::Table {
            table: spec.name.clone(),
            message,
        };
        if self.ctx.table_exist(spec.name.as_str()).unwrap_or(false) {
            return Err(err(format!(
                "declared twice (again by {}); the first one is kept",
                spec.origin
            )));
        }
        let urls = spec
            .paths
            .iter()
            .map(|p| {
                let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
                let mut text = abs.display().to_string();
                if spec.kind == FileKind::Parquet && abs.is_dir() && !text.ends_with('/') {
                    text.push('/');
                }
                ListingTableUrl::parse(&text).map_err(|e| err(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let (format, extension): (Arc<dyn FileFormat>, String) = match spec.kind {
            FileKind::Parquet => (Arc::new(ParquetFormat::default()), ".parquet".into()),
            // The files are named exactly; no extension filter.
            FileKind::JsonLines => (Arc::new(JsonFormat::default()), String::new()),
        };
        let partition_cols: Vec<(String, DataType)> = spec
            .partition_by
            .iter()
            .map(|c| (c.clone(), DataType::Utf8))
            .collect();
        let options = ListingOptions::new(format)
            .with_file_extension(extension)
            .with_table_partition_cols(partition_cols);
        let file_schema = match &spec.schema {
            Some(schema) => Arc::new(Schema::new(
                schema
                    .fields()
                    .iter()
                    .filter(|f| !spec.partition_by.contains(f.name()))
                    .map(|f| Field::clone(f).with_nullable(true))
                    .collect::<Vec<_>>(),
            )),
            None => options
                .infer_schema(&self.ctx.state(), &urls[0])
                .await
                .map_err(|e| err(format!("cannot read its files' schema: {e}")))?,
        };
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(file_schema);
        let table = ListingTable::try_new(config).map_err(|e| err(e.to_string()))?;
        self.ctx
            .register_table(spec.name.as_str(), Arc::new(table))
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    }

    /// Plans one statement (`SHOW TABLES`: the user tables only).
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        let sql = if is_show_tables(sql) {
            "SELECT table_catalog, table_schema, table_name, table_type \
             FROM information_schema.tables WHERE table_schema <> 'information_schema' \
             ORDER BY table_name"
        } else {
            sql
        };
        self.ctx.sql(sql).await.map_err(refused)
    }

    /// The user tables' names with their Arrow schemas, sorted by name.
    pub async fn tables(&self) -> Vec<(String, SchemaRef)> {
        let Some(schema) = self.ctx.catalog(CATALOG).and_then(|c| c.schema(SCHEMA)) else {
            return Vec::new();
        };
        let mut names = schema.table_names();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Ok(Some(t)) = schema.table(&name).await {
                out.push((name, t.schema()));
            }
        }
        out
    }
}

fn is_show_tables(sql: &str) -> bool {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    words == ["show", "tables"]
}

/// A planning error, with its place in the statement when DataFusion knows it.
fn refused(e: DataFusionError) -> QueryError {
    let place = e
        .diagnostic()
        .and_then(|d| d.span)
        .map(|s| format!(" (at line {}, column {})", s.start.line, s.start.column));
    let message = e.strip_backtrace();
    let place = place.or_else(|| {
        (message.contains("found: EOF") && !message.contains("Line:"))
            .then(|| " (at the end of the statement)".to_string())
    });
    QueryError::Refused(format!("{message}{}", place.unwrap_or_default()))
}

/// An error while running a planned query.
pub fn failed(e: DataFusionError) -> QueryError {
    QueryError::Failed(e.strip_backtrace())
}

#[cfg(test)]
mod tests;
