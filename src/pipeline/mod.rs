//! Pipelines: pipeline files, the configuration layers, and the Rust builder API.
//!
//! Owns: reading `pipelines/<name>.yaml` (strictly: unknown keys are refused, every
//! error names file, line and column), layering configuration (built-in defaults,
//! `tributary.toml`, `TRIBUTARY__SECTION__KEY` environment variables, flags), and
//! turning a pipeline into an engine graph — from SQL through [`crate::planner`], or from
//! Rust through [`PipelineBuilder`]. Both paths build the same [`Graph`](crate::engine::Graph).

mod builder;
mod config;
mod file;

pub use builder::{PipelineBuilder, Stream};
pub use config::{Config, DlqStoreKind, LogFormat, load_config};
pub use file::{LoadedPipeline, PipelineFile, discover, load_pipeline};

use crate::types::Location;

/// Errors of pipeline files and configuration.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("no pipeline named '{name}' (looked for {looked})")]
    NotFound { name: String, looked: String },
}

impl PipelineError {
    pub fn code(&self) -> &'static str {
        match self {
            PipelineError::Invalid { .. } => "PIP001",
            PipelineError::File { .. } => "PIP002",
            PipelineError::Config(_) => "PIP003",
            PipelineError::NotFound { .. } => "PIP004",
        }
    }
}
