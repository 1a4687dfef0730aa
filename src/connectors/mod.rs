//! Connectors: where rows come from and where they go.
//!
//! Owns one submodule per connector, each implementing the engine's
//! [`SourceFactory`](crate::engine::SourceFactory) and/or
//! [`SinkFactory`](crate::engine::SinkFactory), and the registry that maps a
//! `connector = '…'` name from SQL DDL or a pipeline file to that implementation.
//!
//! Invariants:
//! - Options are validated when the pipeline is planned: an unknown option, a missing
//!   required one or a value of the wrong kind is refused before anything runs.
//! - A source emits batches with exactly the schema its factory reports.
//! - A malformed record never fails a source: it is reported to
//!   [`BadRecords`](crate::dlq::BadRecords) and skipped.

pub mod blackhole;
pub mod dead_letters;
pub mod dynamodb;
pub mod file;
pub mod generator;
pub mod json_lines;
pub mod kafka;
mod latency;
pub mod memory;
pub mod parquet_sink;
pub mod replay_inbox;
pub mod serving;
pub mod webhook;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;

use crate::engine::{SinkFactory, SourceFactory};

/// Errors of connectors: configuration and I/O.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("unknown connector '{name}' for table {table}{hint}; known connectors: {known}")]
    UnknownConnector {
        table: String,
        name: String,
        known: String,
        /// ` (did you mean 'kafka'?)` for a likely typo, else empty.
        hint: String,
    },
    #[error(
        "connector '{connector}' of table {table} has no option '{option}'{hint}; its options are: {known}"
    )]
    UnknownOption {
        table: String,
        connector: String,
        option: String,
        known: String,
        /// ` (did you mean 'rate'?)` for a likely typo, else empty.
        hint: String,
    },
    #[error("table {table}: option '{option}' is required by connector '{connector}'")]
    MissingOption {
        table: String,
        connector: String,
        option: String,
    },
    #[error("table {table}: option '{option}' = '{value}' is invalid: {reason}")]
    InvalidOption {
        table: String,
        option: String,
        value: String,
        reason: String,
    },
    #[error("connector '{connector}' cannot be used as a {role} (table {table})")]
    WrongRole {
        table: String,
        connector: String,
        role: &'static str,
    },
    #[error("table {table}: {message}")]
    Schema { table: String, message: String },
    #[error("{connector} i/o error on {path}: {source}")]
    Io {
        connector: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{connector}: {message}")]
    Other {
        connector: &'static str,
        message: String,
    },
    #[error("table {table}: webhook {url} refused the sink itself (HTTP {status}): {reason}")]
    WebhookRefused {
        table: String,
        url: String,
        status: u16,
        reason: String,
    },
    #[error(
        "table {table}: webhook {url}: tls handshake refused: {message} (a private CA? set ca_file)"
    )]
    WebhookTls {
        table: String,
        url: String,
        message: String,
    },
}

impl ConnectorError {
    pub fn code(&self) -> &'static str {
        match self {
            ConnectorError::UnknownConnector { .. } => "CON001",
            ConnectorError::UnknownOption { .. } => "CON002",
            ConnectorError::MissingOption { .. } => "CON003",
            ConnectorError::InvalidOption { .. } => "CON004",
            ConnectorError::WrongRole { .. } => "CON005",
            ConnectorError::Schema { .. } => "CON006",
            ConnectorError::Io { .. } => "CON007",
            ConnectorError::Other { .. } => "CON008",
            ConnectorError::WebhookRefused { .. } => "CON009",
            ConnectorError::WebhookTls { .. } => "CON010",
        }
    }
}

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// The `WITH (…)` options of one table, consumed by its connector. Every option must be
/// read by the connector; [`Options::finish`] refuses the ones nobody read.
#[derive(Debug, Clone)]
pub struct Options {
    pub table: String,
    pub connector: String,
    values: BTreeMap<String, String>,
    known: BTreeSet<&'static str>,
    /// Prefixes of options passed through (e.g. `kafka.` for librdkafka properties).
    known_prefixes: BTreeSet<&'static str>,
    /// The directory of the SQL file that declares the table (see [`Options::sql_dir`]).
    sql_dir: Option<std::path::PathBuf>,
}

impl Options {
    pub fn new(table: &str, connector: &str, values: BTreeMap<String, String>) -> Self {
        Options {
            table: table.into(),
            connector: connector.into(),
            values,
            known: BTreeSet::new(),
            known_prefixes: BTreeSet::new(),
            sql_dir: None,
        }
    }

    /// These options, declared by a SQL file in `dir`.
    pub fn declared_in(mut self, dir: &std::path::Path) -> Self {
        self.sql_dir = Some(dir.to_path_buf());
        self
    }

    /// The directory of the SQL file that declares the table, when it has one: files
    /// that belong with the SQL (a Kafka table's `schema_file`) are resolved from it,
    /// unlike data paths (relative to the working directory, [`TableRequest::base_dir`]).
    pub fn sql_dir(&self) -> Option<&std::path::Path> {
        self.sql_dir.as_deref()
    }

    /// Every option starting with `prefix`, without it: properties passed through to a
    /// client library (e.g. `kafka.security.protocol` → `security.protocol`).
    pub fn prefixed(&mut self, prefix: &'static str) -> Vec<(String, String)> {
        self.known_prefixes.insert(prefix);
        self.values
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
            .collect()
    }

    /// The raw value of `key`, if set; marks `key` as an option of this connector.
    pub fn get(&mut self, key: &'static str) -> Option<String> {
        self.known.insert(key);
        self.values.get(key).cloned()
    }

    pub fn required(&mut self, key: &'static str) -> Result<String> {
        self.get(key).ok_or_else(|| {
            ConnectorError::MissingOption {
                table: self.table.clone(),
                connector: self.connector.clone(),
                option: key.into(),
            }
            .into()
        })
    }

    pub fn invalid(&self, key: &str, value: &str, reason: impl Into<String>) -> crate::Error {
        ConnectorError::InvalidOption {
            table: self.table.clone(),
            option: key.into(),
            value: value.into(),
            reason: reason.into(),
        }
        .into()
    }

    /// Parses `key` with `FromStr`, or returns `default` when unset.
    pub fn parse<T: std::str::FromStr>(&mut self, key: &'static str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<T>()
                .map_err(|e| self.invalid(key, &v, e.to_string())),
        }
    }

    pub fn parse_bool(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(true),
                "false" | "no" | "off" | "0" => Ok(false),
                _ => Err(self.invalid(key, &v, "expected true or false")),
            },
        }
    }

    /// A duration such as `100ms`, `5s`, `2m`, `1h`, or a bare number of milliseconds.
    pub fn parse_duration(&mut self, key: &'static str, default: Duration) -> Result<Duration> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_duration(&v).map_err(|e| self.invalid(key, &v, e)),
        }
    }

    /// A size such as `128MB`, `64KiB`, or a bare number of bytes.
    pub fn parse_size(&mut self, key: &'static str, default: u64) -> Result<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_size(&v).map_err(|e| self.invalid(key, &v, e)),
        }
    }

    /// Refuses the options no one asked for.
    pub fn finish(self) -> Result<()> {
        for key in self.values.keys() {
            let passed_through = self.known_prefixes.iter().any(|p| key.starts_with(p));
            if !self.known.contains(key.as_str()) && !passed_through {
                let known: Vec<&str> = self.known.iter().copied().collect();
                return Err(ConnectorError::UnknownOption {
                    table: self.table.clone(),
                    connector: self.connector.clone(),
                    option: key.clone(),
                    known: known.join(", "),
                    hint: did_you_mean_hint(key, known.iter().copied()),
                }
                .into());
            }
        }
        Ok(())
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h`, `7d` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| "expected a duration such as 250ms, 5s, 2m or 1h".to_string())?;
    let secs = match unit.trim() {
        "" | "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        u => {
            return Err(format!(
                "unknown duration unit '{u}' (use ms, s, m, h or d)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err("duration must be a non-negative number".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `128MB`, `64KiB`, `1GB` or a bare number of bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a size such as 64MB or 512KiB".to_string())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" => 1024,
        "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        u => return Err(format!("unknown size unit '{u}'")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "size too large".to_string())
}

/// Every connector name, for error messages and docs.
pub const CONNECTORS: &[&str] = &[
    "generator",
    "file",
    "kafka",
    "stdout",
    "parquet",
    "blackhole",
    "dynamodb",
    "webhook",
    "serving",
];

/// What the planner knows about a table when it asks for its source.
pub struct TableRequest<'a> {
    pub table: &'a str,
    /// What the installation's configuration says beyond the table's options.
    pub env: &'a ConnectorEnv,
    /// Columns declared in the DDL, if any; the source must produce exactly these.
    pub schema: Option<SchemaRef>,
    /// Where relative data paths in options (`path`) are resolved from: the working
    /// directory. Files that belong with the SQL (`schema_file`) are resolved from
    /// [`Options::sql_dir`] instead, when known.
    pub base_dir: &'a std::path::Path,
}

/// What connectors take from the installation's configuration rather than from a
/// table's options: Kafka clusters and domains, the default schema registry.
#[derive(Debug, Clone, Default)]
pub struct ConnectorEnv {
    pub kafka: kafka::KafkaConfig,
    /// The registry an Avro table uses when it names none (`[registry] url`).
    pub registry_url: Option<String>,
    /// How Avro tables talk to their registry (`[registry]`: credentials, CA file,
    /// timeouts); a table's own options override them.
    pub registry: crate::registry::client::ClientSettings,
    /// How DynamoDB tables reach DynamoDB (`[dynamodb]`).
    pub dynamodb: dynamodb::DynamoConfig,
    /// Where exactly-once Kafka sinks keep their output while their cluster is down
    /// (`[fallback]`; `None`: they wait for the cluster).
    pub fallback: Option<std::sync::Arc<crate::fallback::Fallback>>,
}

fn unknown(table: &str, name: &str) -> crate::Error {
    ConnectorError::UnknownConnector {
        table: table.into(),
        name: name.into(),
        known: CONNECTORS.join(", "),
        hint: did_you_mean_hint(name, CONNECTORS.iter().copied()),
    }
    .into()
}

/// ` (did you mean 'x'?)` when one of `candidates` is a likely typo of `name` (the same
/// suggestion as for unknown keys of pipeline files), else empty.
fn did_you_mean_hint<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    crate::error::did_you_mean(name, candidates)
        .map(|m| format!(" (did you mean '{m}'?)"))
        .unwrap_or_default()
}

/// Builds the source of a table declared with `connector = …`.
pub fn source(req: &TableRequest<'_>, mut opts: Options) -> Result<Arc<dyn SourceFactory>> {
    let f: Arc<dyn SourceFactory> = match opts.connector.as_str() {
        "generator" => generator::source(req, &mut opts)?,
        "file" => file::source(req, &mut opts)?,
        "kafka" => kafka::source(req, &mut opts)?,
        "stdout" | "parquet" | "blackhole" | "dynamodb" | "webhook" | "serving" => {
            return Err(ConnectorError::WrongRole {
                table: req.table.into(),
                connector: opts.connector.clone(),
                role: "source",
            }
            .into());
        }
        other => return Err(unknown(req.table, other)),
    };
    opts.finish()?;
    Ok(f)
}

/// Builds the sink of a table declared with `connector = …`. `schema` is the declared
/// schema, if columns were given.
pub fn sink(req: &TableRequest<'_>, mut opts: Options) -> Result<Arc<dyn SinkFactory>> {
    let f: Arc<dyn SinkFactory> = match opts.connector.as_str() {
        "stdout" => json_lines::stdout_sink(req, &mut opts)?,
        "file" => json_lines::file_sink(req, &mut opts)?,
        "parquet" => parquet_sink::sink(req, &mut opts)?,
        "blackhole" => blackhole::sink(req, &mut opts)?,
        "kafka" => kafka::sink(req, &mut opts)?,
        "dynamodb" => dynamodb::sink(req, &mut opts)?,
        "webhook" => webhook::sink(req, &mut opts)?,
        "serving" => serving::sink(req, &mut opts)?,
        "generator" => {
            return Err(ConnectorError::WrongRole {
                table: req.table.into(),
                connector: opts.connector.clone(),
                role: "sink",
            }
            .into());
        }
        other => return Err(unknown(req.table, other)),
    };
    opts.finish()?;
    Ok(f)
}

#[cfg(test)]
mod conformance;
