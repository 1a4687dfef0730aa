//! The crate-level error: one variant per module error, each with a stable code.
//!
//! Modules own their error enums (`engine::EngineError`, `planner::SqlError`, …); this type
//! only gathers them so that the CLI has one place that turns an error into what the
//! user sees: `error[CODE]: message`, with the file, line and column where known.
//! It also owns the "did you mean" suggestions every layer adds to a refused name
//! (`did_you_mean`, `with_did_you_mean`: keys of pipeline and config files, connector
//! names and options), by the measure DataFusion uses for SQL columns.

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
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Several independent errors found in one pass (every failing `INSERT` of a
    /// pipeline), so `check` reports them all; shown one per line.
    #[error("{}", several(.0))]
    Several(Vec<Error>),
}

fn several(errors: &[Error]) -> String {
    errors
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if i == 0 {
                e.to_string()
            } else {
                format!("error[{}]: {e}", e.code())
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
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
            Error::Query(e) => e.code(),
            Error::Io { .. } => "IO001",
            Error::Several(all) => all.first().map_or("IO001", Error::code),
        }
    }

    /// One error, or [`Error::Several`]; `None` for none.
    pub fn from_all(mut all: Vec<Error>) -> Option<Error> {
        match all.len() {
            0 => None,
            1 => all.pop(),
            _ => Some(Error::Several(all)),
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

/// The candidate closest to `name` when it is close enough to be a likely typo, by the
/// measure and threshold DataFusion uses for its "Did you mean" on SQL columns
/// (normalized Levenshtein similarity at least 0.5).
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    use datafusion::common::utils::datafusion_strsim::normalized_levenshtein;
    candidates
        .into_iter()
        .map(|c| (normalized_levenshtein(name, c), c))
        .filter(|(score, _)| *score >= 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A serde refusal of a key or value (`unknown field `paralelism`, expected one of
/// `name`, `parallelism`, …`, likewise `unknown variant`) with the likely meant one
/// named right after the unknown one: `unknown field `paralelism` (did you mean
/// `parallelism`?), expected one of …`. Other messages are returned unchanged.
pub(crate) fn with_did_you_mean(message: String) -> String {
    let Some(start) = ["unknown field `", "unknown variant `"]
        .iter()
        .find_map(|p| message.find(p).map(|i| i + p.len()))
    else {
        return message;
    };
    let Some(len) = message[start..].find('`') else {
        return message;
    };
    let end = start + len;
    let name = &message[start..end];
    let Some(expected) = message[end..].find("expected ").map(|i| end + i) else {
        return message;
    };
    let candidates = message[expected..].split('`').skip(1).step_by(2);
    match did_you_mean(name, candidates) {
        Some(meant) if meant != name => format!(
            "{}` (did you mean `{meant}`?){}",
            &message[..end],
            &message[end + 1..]
        ),
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_get_the_likely_meant_one() {
        let m = "unknown field `paralelism`, expected one of `name`, `sql`, `parallelism`, `batch`";
        assert_eq!(
            with_did_you_mean(m.to_string()),
            "unknown field `paralelism` (did you mean `parallelism`?), expected one of \
             `name`, `sql`, `parallelism`, `batch`"
        );
        let m = "unknown field `pipeline_dir`, expected `pipelines_dir` or `stop_grace`";
        assert_eq!(
            with_did_you_mean(m.to_string()),
            "unknown field `pipeline_dir` (did you mean `pipelines_dir`?), expected \
             `pipelines_dir` or `stop_grace`"
        );
        let m =
            "delivery: unknown variant `exactly_onse`, expected `at_least_once` or `exactly_once`";
        assert!(
            with_did_you_mean(m.to_string()).contains("(did you mean `exactly_once`?)"),
            "{m}"
        );
    }

    #[test]
    fn nothing_close_means_no_suggestion() {
        for m in [
            "unknown field `wat`, expected one of `name`, `sql`, `parallelism`",
            "unknown field `x`, expected `name`",
            "invalid type: string \"a\", expected u32",
            "unknown field `broken",
        ] {
            assert_eq!(with_did_you_mean(m.to_string()), m);
        }
        assert_eq!(did_you_mean("zzzz", ["name", "sql"]), None);
        assert_eq!(did_you_mean("nmae", ["name", "sql"]), Some("name"));
    }
}
