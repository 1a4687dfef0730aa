//! Streaming SQL: the only place that knows SQL.
//!
//! Owns: parsing a pipeline's SQL (DDL for sources and sinks, views, `INSERT INTO`),
//! planning each query with DataFusion, refusing what cannot run as a stream, splitting
//! a query with several stateful operations into a chain of stages, and cutting each
//! stage at its stateful operator (which live in [`crate::operators`]).
//!
//! Invariants:
//! - Expressions are planned and evaluated by DataFusion; we write no evaluator.
//! - Every error names the file, line and column of the statement (or of the token
//!   DataFusion points at) it concerns.
//! - A plan that needs to see the end of an unbounded input (unbounded `ORDER BY`,
//!   `LIMIT`…) is refused at plan time, with what to
//!   write instead.

mod chain;
#[cfg(test)]
mod chain_tests;
pub mod check;
mod cuts;
mod ddl;
pub(crate) mod event_time;
mod inserts;
mod operators;
mod plan;
mod stage_plan;
mod streamable;
mod tables;
#[cfg(test)]
mod tests;
pub mod udf;

pub use ddl::{CheckDecl, InsertDecl, ParsedSql, TableDecl, parse_sql};
pub use operators::OperatorDecl;
pub use plan::{PlanSettings, PlannedPipeline, SqlPlanner, StageOptions};
pub use stage_plan::StagePlan;

use std::path::PathBuf;

use crate::types::Location;

/// SQL text and where it came from, so errors can point into the user's file.
#[derive(Debug, Clone)]
pub struct SqlText {
    pub text: String,
    pub file: PathBuf,
    /// Line of the file on which `text` starts (1-based): 1 for a `.sql` file, the
    /// block's first line for SQL inlined in a pipeline file.
    pub first_line: usize,
    /// Columns to add to positions on every line (indentation of an inlined block).
    pub indent: usize,
}

impl SqlText {
    pub fn file(text: impl Into<String>, file: impl Into<PathBuf>) -> Self {
        SqlText {
            text: text.into(),
            file: file.into(),
            first_line: 1,
            indent: 0,
        }
    }

    /// Maps a 1-based (line, column) inside `text` to the user's file.
    pub fn locate(&self, line: u64, column: u64) -> Location {
        let line = line.max(1) as usize;
        Location {
            file: self.file.clone(),
            line: self.first_line + line - 1,
            column: column.max(1) as usize + self.indent,
        }
    }
}

/// Errors of SQL parsing and planning.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{location}: syntax error: {message}")]
    Syntax { location: Location, message: String },
    #[error("{location}: {message}")]
    Plan { location: Location, message: String },
    #[error("{location}: not supported on a stream: {message}")]
    NotStreamable { location: Location, message: String },
    #[error("{location}: {source}")]
    Connector {
        location: Location,
        #[source]
        source: Box<crate::Error>,
    },
}

impl SqlError {
    pub fn code(&self) -> &'static str {
        match self {
            SqlError::Syntax { .. } => "SQL001",
            SqlError::Plan { .. } => "SQL002",
            SqlError::NotStreamable { .. } => "SQL003",
            SqlError::Connector { source, .. } => source.code(),
        }
    }

    pub fn location(&self) -> &Location {
        match self {
            SqlError::Syntax { location, .. }
            | SqlError::Plan { location, .. }
            | SqlError::NotStreamable { location, .. }
            | SqlError::Connector { location, .. } => location,
        }
    }
}
