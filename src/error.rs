//! The crate-level error: one variant per module error, each with a stable code.
//!
//! Modules own their error enums (`engine::EngineError`, `planner::SqlError`, …); this type
//! only gathers them so that the CLI has one place that turns an error into what the
//! user sees: `error[CODE]: message`, with the file, line and column where known.

use std::path::PathBuf;

pub use crate::types::Location;

/// Every error Tributary reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Sql(#[from] crate::planner::SqlError),
    #[error(transparent)]
    Connector(#[from] crate::connectors::ConnectorError),
    #[error(transparent)]
    Format(#[from] crate::formats::FormatError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Dlq(#[from] crate::dlq::DlqError),
    #[error(transparent)]
    Dynamo(#[from] crate::dynamodb::DynamoError),
    #[error(transparent)]
    Fallback(#[from] crate::fallback::FallbackError),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A stable code, e.g. `SQL003`; documented in `docs/errors.md`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Engine(e) => e.code(),
            Error::Sql(e) => e.code(),
            Error::Connector(e) => e.code(),
            Error::Format(e) => e.code(),
            Error::Pipeline(e) => e.code(),
            Error::Registry(e) => e.code(),
            Error::Checkpoint(e) => e.code(),
            Error::Dlq(e) => e.code(),
            Error::Dynamo(e) => e.code(),
            Error::Fallback(e) => e.code(),
            Error::Io { .. } => "IO001",
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
