//! Tributary: a stream processor for a company-wide event platform, embedded in one
//! binary, on Apache DataFusion and Arrow.
//!
//! A record travels `connectors` (source) → `formats` (bytes to Arrow) → `engine`
//! (operators exchanging Arrow batches over bounded channels, among them SQL stages
//! planned by `sql`) → `connectors` (sink). `pipeline` turns pipeline files and
//! configuration into an engine graph; `cli` is the command line. See
//! `docs/architecture.md` for the map.

pub mod admin;
pub mod checkpoint;
pub mod cli;
pub mod connectors;
pub mod dlq;
pub mod dynamodb;
pub mod engine;
pub mod error;
pub mod fallback;
pub mod formats;
pub mod health;
pub mod http;
pub mod library;
pub mod metrics;
pub mod operators;
pub mod pipeline;
pub mod planner;
pub mod query;
pub mod registry;
pub mod state;
#[cfg(test)]
pub(crate) mod testing;
pub mod types;

pub use error::{Error, Result};
