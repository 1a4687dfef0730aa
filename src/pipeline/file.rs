//! Pipeline files: `pipelines/<name>.yaml`.
//!
//! ```yaml
//! name: order_status            # required
//! sql: ../sql/order_status.sql  # required: a path relative to this file, or inline SQL
//! parallelism: 2                # default from configuration
//! batch: { size: 8192, flush_interval: 100ms }
//! channel_capacity: 8           # batches per channel between two tasks
//! errors:                      # dead-letter (default) | drop | fail
//!   policy: dead-letter         # every failure class
//!   on_bad_record: drop         # sources' classes: malformed, schema_mismatch, constraint
//!   on_processing_error: fail   # operators' and sinks' classes: processing, late, …
//!   tables: { orders: fail }    # a table's own (its source, or its sink's refusals)
//! state: { memory_limit: 1GB, ttl: 1h }  # per task of a stateful operator; key TTL (dedup)
//! windows: { allowed_lateness: 30s }      # late rows update emitted windows (a changelog)
//! connectors:                   # per-table options, added to / overriding WITH (…)
//!   orders: { rate: 200 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Config, PipelineError};
use crate::dlq::ErrorPolicy;
use crate::engine::{BatchSettings, RuntimeSettings};
use crate::planner::{PlannedPipeline, SqlPlanner, SqlText};
use crate::types::Location;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub name: String,
    pub sql: String,
    #[serde(default)]
    pub description: Option<String>,
    pub parallelism: Option<usize>,
    pub batch: Option<BatchFile>,
    pub channel_capacity: Option<usize>,
    pub errors: Option<ErrorsFile>,
    pub state: Option<StateFile>,
    pub windows: Option<WindowsFile>,
    pub checkpoint: Option<CheckpointFile>,
    /// `exactly-once` (the default with checkpoints) or `at-least-once`.
    pub delivery: Option<Delivery>,
    #[serde(default)]
    pub connectors: BTreeMap<String, BTreeMap<String, Scalar>>,
    /// Rust operators between the SQL's tables, in order (see `crate::library`).
    #[serde(default)]
    pub operators: Vec<OperatorFile>,
}

/// `operators:` — a named Rust operator deployed by the pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorFile {
    /// Its output: a table the SQL reads (side outputs: `<name>_<side>`).
    pub name: String,
    /// The registered operator, e.g. `order_tracking`.
    pub function: String,
    /// The table of the SQL it reads: a source or a view.
    pub input: String,
    /// The column(s) its rows are routed by; each key has its own state and timers.
    pub key: KeyColumns,
    /// The operator's own options (durations, numbers, words).
    #[serde(default)]
    pub options: BTreeMap<String, Scalar>,
    /// Its tasks (default: the pipeline's parallelism).
    pub parallelism: Option<usize>,
}

/// One key column, or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeyColumns {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointFile {
    /// How often a checkpoint is taken, e.g. `10s`.
    pub interval: String,
    /// Completed checkpoints kept (default 3).
    pub retain: Option<usize>,
    /// Where they are kept (default: `pipeline.checkpoint_dir`/<name>); with
    /// `store: dynamodb` and `blobs: local`, where the state blobs are.
    pub dir: Option<String>,
    /// `local` (the default: files in `dir`) or `dynamodb` (the `[dynamodb]`
    /// connection; any machine can resume).
    pub store: Option<CheckpointStoreKind>,
    /// With `store: dynamodb`: state blobs in the table (`table`, the default, in
    /// chunks under the item limit) or in `dir` (`local`).
    pub blobs: Option<BlobsKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointStoreKind {
    Local,
    Dynamodb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobsKind {
    Table,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    ExactlyOnce,
    AtLeastOnce,
}

/// A pipeline's checkpointing, as its file declares it.
#[derive(Debug, Clone)]
pub struct CheckpointPlan {
    pub interval: Duration,
    pub retain: usize,
    pub dir: PathBuf,
    pub exactly_once: bool,
    /// `Some`: checkpoints in DynamoDB (the pipeline's name, the connection, where
    /// blobs go); `None`: in `dir`.
    pub dynamodb: Option<(
        String,
        crate::connectors::dynamodb::DynamoSettings,
        crate::checkpoint::BlobPlacement,
    )>,
}

impl CheckpointPlan {
    pub fn store(&self) -> std::sync::Arc<dyn crate::checkpoint::CheckpointStore> {
        match &self.dynamodb {
            Some((pipeline, settings, blobs)) => std::sync::Arc::new(
                crate::checkpoint::DynamoCheckpointStore::new(pipeline, settings, blobs.clone()),
            ),
            None => std::sync::Arc::new(crate::checkpoint::LocalCheckpointStore::new(&self.dir)),
        }
    }

    /// Where checkpoints are, for messages: the directory or the DynamoDB table.
    pub fn location(&self) -> String {
        match &self.dynamodb {
            Some((pipeline, settings, _)) => format!(
                "dynamodb table {}tributary_checkpoints (pipeline {pipeline})",
                settings.table_prefix
            ),
            None => self.dir.display().to_string(),
        }
    }

    /// The runtime's checkpoint settings, resuming from the latest checkpoint.
    pub async fn settings(&self) -> crate::Result<crate::checkpoint::CheckpointSettings> {
        let store = self.store();
        let restore = crate::checkpoint::latest(store.as_ref()).await?;
        Ok(crate::checkpoint::CheckpointSettings {
            interval: self.interval,
            store,
            retain: self.retain,
            exactly_once: self.exactly_once,
            restore,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// Most state one task of a stateful operator may hold, e.g. `512MB`.
    pub memory_limit: Option<String>,
    /// How long keyed state without a window (ROW_NUMBER dedup) keeps a quiet key,
    /// in event time, e.g. `1h`.
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsFile {
    /// How long after its end a tumbling or hopping window still takes late rows,
    /// updating its emitted result (the output becomes a changelog), e.g. `30s`.
    pub allowed_lateness: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    pub size: Option<usize>,
    pub flush_interval: Option<String>,
}

/// `errors:` — what the pipeline does with a record it cannot handle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsFile {
    /// Every failure class (default `dead-letter`).
    pub policy: Option<ErrorPolicy>,
    /// Sources' classes (malformed, schema_mismatch, constraint), over `policy`.
    pub on_bad_record: Option<ErrorPolicy>,
    /// Operators' and sinks' classes (processing, late, lookup_miss, rejected, sink),
    /// over `policy`.
    pub on_processing_error: Option<ErrorPolicy>,
    /// A table's own policy (its source or its sink), over the others.
    #[serde(default)]
    pub tables: BTreeMap<String, ErrorPolicy>,
}

/// A connector option value: YAML strings, numbers and booleans are all accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Str(s) => write!(f, "{s}"),
        }
    }
}

/// A validated pipeline, ready to plan.
#[derive(Debug, Clone)]
pub struct LoadedPipeline {
    pub name: String,
    pub path: PathBuf,
    pub sql: SqlText,
    pub plan: crate::planner::PlanSettings,
    pub runtime: RuntimeSettings,
    /// `None`: no checkpoints.
    pub checkpoint: Option<CheckpointPlan>,
    /// Where `errors: { tables }` was written, for an error about a table it names.
    pub errors_at: Option<Location>,
}

impl LoadedPipeline {
    /// Plans the pipeline's SQL into a graph. Relative paths in connector options are
    /// resolved against the working directory.
    pub async fn plan(&self, planner: &SqlPlanner) -> crate::Result<PlannedPipeline> {
        let cwd = std::env::current_dir().map_err(|e| crate::Error::io(".", e))?;
        let planned = planner
            .plan_pipeline(&self.name, &self.sql, &cwd, &self.plan)
            .await?;
        for table in self.plan.table_errors.keys() {
            if planned.graph.find(table).is_none() {
                let tables: Vec<&str> = planned
                    .graph
                    .nodes
                    .iter()
                    .filter(|n| {
                        matches!(
                            n.kind,
                            crate::engine::NodeKind::Source(_) | crate::engine::NodeKind::Sink(_)
                        )
                    })
                    .map(|n| n.name.as_str())
                    .collect();
                return Err(invalid(
                    self.errors_at.clone().unwrap_or_else(|| Location {
                        file: self.path.clone(),
                        line: 1,
                        column: 1,
                    }),
                    format!(
                        "errors.tables names {table}, which is not a table the pipeline reads or writes ({})",
                        tables.join(", ")
                    ),
                ));
            }
        }
        Ok(planned)
    }
}

/// The line and column of the first `key:` in a YAML text, for errors about values.
/// Where `name: <value>` is written (an `operators:` entry), if it is.
fn name_location(path: &Path, text: &str, value: &str) -> Option<Location> {
    text.lines().enumerate().find_map(|(i, line)| {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let rest = trimmed.strip_prefix("name:")?;
        (rest.trim().trim_matches(['"', '\'']) == value).then(|| Location {
            file: path.to_path_buf(),
            line: i + 1,
            column: line.len() - trimmed.len() + 1,
        })
    })
}

fn key_location(path: &Path, text: &str, key: &str) -> Location {
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with(&format!("{key}:")) {
            return Location {
                file: path.to_path_buf(),
                line: i + 1,
                column: line.len() - trimmed.len() + 1,
            };
        }
    }
    Location {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
    }
}

fn invalid(location: Location, message: impl Into<String>) -> crate::Error {
    PipelineError::Invalid {
        location,
        message: message.into(),
    }
    .into()
}

/// Where inline SQL starts in the YAML text: the line after `sql: |` (with the block's
/// indentation), or the value on the `sql:` line itself.
fn inline_sql_position(text: &str) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("sql:") {
            let rest_trim = rest.trim();
            if rest_trim.starts_with('|') || rest_trim.starts_with('>') {
                let next = lines.get(i + 1).copied().unwrap_or("");
                let indent = next.len() - next.trim_start().len();
                return (i + 2, indent);
            }
            let col = line.len() - rest.trim_start().len();
            let quoted = rest_trim.starts_with('"') || rest_trim.starts_with('\'');
            return (i + 1, col + usize::from(quoted));
        }
    }
    (1, 0)
}

/// Reads and validates a pipeline file (or a bare `.sql` file, which gets the defaults
/// and the file's stem as name), layering it over the configuration's defaults.
pub fn load_pipeline(path: &Path, config: &Config) -> crate::Result<LoadedPipeline> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    let defaults = &config.pipeline;
    let default_flush = crate::connectors::parse_duration(&defaults.flush_interval)
        .unwrap_or(Duration::from_millis(100));
    let mut runtime = RuntimeSettings {
        channel_capacity: defaults.channel_capacity,
        batch: BatchSettings {
            size: defaults.batch_size,
            flush_interval: default_flush,
        },
        ..RuntimeSettings::default()
    };
    let mut plan = crate::planner::PlanSettings {
        parallelism: defaults.parallelism,
        state_memory_limit: Some(
            crate::connectors::parse_size(&defaults.state_memory_limit).map_err(|e| {
                invalid(
                    Location {
                        file: "configuration".into(),
                        line: 1,
                        column: 1,
                    },
                    format!(
                        "pipeline.state_memory_limit = '{}': {e}",
                        defaults.state_memory_limit
                    ),
                )
            })?,
        ),
        ..Default::default()
    };
    if path.extension().and_then(|e| e.to_str()) == Some("sql") {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("pipeline")
            .to_string();
        return Ok(LoadedPipeline {
            name,
            path: path.to_path_buf(),
            sql: SqlText::file(text, path),
            plan,
            runtime,
            checkpoint: None,
            errors_at: None,
        });
    }
    let file: PipelineFile = serde_yaml_ng::from_str(&text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let message = e.to_string();
        let message = match message.find(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        invalid(
            Location {
                file: path.to_path_buf(),
                line,
                column,
            },
            crate::error::with_did_you_mean(message),
        )
    })?;
    let at = |key: &str| key_location(path, &text, key);
    let mut errors_at = None;
    if file.name.is_empty()
        || !file
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(
            at("name"),
            format!(
                "name '{}' must be letters, digits, '_' or '-' (it labels metrics and outputs)",
                file.name
            ),
        ));
    }
    if let Some(p) = file.parallelism {
        if p == 0 || p > 256 {
            return Err(invalid(
                at("parallelism"),
                "parallelism must be between 1 and 256",
            ));
        }
        plan.parallelism = p;
    }
    if let Some(b) = &file.batch {
        if let Some(size) = b.size {
            if size == 0 {
                return Err(invalid(at("size"), "batch size must be at least 1"));
            }
            runtime.batch.size = size;
        }
        if let Some(f) = &b.flush_interval {
            runtime.batch.flush_interval = crate::connectors::parse_duration(f)
                .map_err(|e| invalid(at("flush_interval"), e))?;
            if runtime.batch.flush_interval.is_zero() {
                return Err(invalid(
                    at("flush_interval"),
                    "flush_interval must be positive",
                ));
            }
        }
    }
    if let Some(c) = file.channel_capacity {
        if c == 0 {
            return Err(invalid(
                at("channel_capacity"),
                "channel_capacity must be at least 1",
            ));
        }
        runtime.channel_capacity = c;
    }
    if let Some(errors) = &file.errors {
        let all = errors.policy.unwrap_or_default();
        plan.on_bad_record = errors.on_bad_record.unwrap_or(all);
        plan.on_processing_error = errors.on_processing_error.unwrap_or(all);
        plan.table_errors = errors.tables.clone();
        errors_at = Some(at("tables"));
    }
    if let Some(limit) = file.state.as_ref().and_then(|s| s.memory_limit.as_ref()) {
        let bytes = crate::connectors::parse_size(limit)
            .map_err(|e| invalid(at("memory_limit"), format!("memory_limit '{limit}': {e}")))?;
        if bytes == 0 {
            return Err(invalid(at("memory_limit"), "memory_limit must be positive"));
        }
        plan.state_memory_limit = Some(bytes);
    }
    if let Some(ttl) = file.state.as_ref().and_then(|s| s.ttl.as_ref()) {
        let d = crate::connectors::parse_duration(ttl)
            .map_err(|e| invalid(at("ttl"), format!("ttl '{ttl}': {e}")))?;
        if d.is_zero() {
            return Err(invalid(at("ttl"), "ttl must be longer than 0s"));
        }
        plan.state_ttl = Some(d);
    }
    if let Some(l) = file
        .windows
        .as_ref()
        .and_then(|w| w.allowed_lateness.as_ref())
    {
        let d = crate::connectors::parse_duration(l).map_err(|e| {
            invalid(
                at("allowed_lateness"),
                format!("allowed_lateness '{l}': {e}"),
            )
        })?;
        plan.allowed_lateness = (!d.is_zero()).then_some(d);
    }
    let checkpoint = match (&file.checkpoint, file.delivery) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(invalid(
                at("delivery"),
                "delivery applies to a pipeline with checkpoints: add checkpoint: { interval: 10s }",
            ));
        }
        (Some(c), delivery) => {
            let interval = crate::connectors::parse_duration(&c.interval)
                .map_err(|e| invalid(at("interval"), format!("interval '{}': {e}", c.interval)))?;
            if interval < Duration::from_millis(10) {
                return Err(invalid(at("interval"), "interval must be at least 10ms"));
            }
            if c.retain == Some(0) {
                return Err(invalid(at("retain"), "retain must be at least 1"));
            }
            let dir = match &c.dir {
                Some(d) => PathBuf::from(d),
                None => PathBuf::from(&defaults.checkpoint_dir).join(&file.name),
            };
            let dynamodb = match (c.store, c.blobs) {
                (None | Some(CheckpointStoreKind::Local), Some(_)) => {
                    return Err(invalid(
                        at("blobs"),
                        "blobs applies to store: dynamodb (a local store keeps everything in dir)",
                    ));
                }
                (None | Some(CheckpointStoreKind::Local), None) => None,
                (Some(CheckpointStoreKind::Dynamodb), blobs) => {
                    let settings = config
                        .dynamodb
                        .settings()
                        .map_err(|e| invalid(at("store"), e.to_string()))?;
                    let blobs = match blobs {
                        None | Some(BlobsKind::Table) => crate::checkpoint::BlobPlacement::Table,
                        Some(BlobsKind::Local) => {
                            crate::checkpoint::BlobPlacement::Local(dir.clone())
                        }
                    };
                    Some((file.name.clone(), settings, blobs))
                }
            };
            Some(CheckpointPlan {
                interval,
                retain: c.retain.unwrap_or(3),
                dir,
                exactly_once: delivery != Some(Delivery::AtLeastOnce),
                dynamodb,
            })
        }
    };
    for (table, options) in &file.connectors {
        plan.table_options.insert(
            table.to_lowercase(),
            options
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.to_string()))
                .collect(),
        );
    }
    plan.table_options_origin = Some(at("connectors"));
    plan.operators = file
        .operators
        .iter()
        .map(|o| crate::planner::OperatorDecl {
            name: o.name.to_lowercase(),
            function: o.function.clone(),
            input: o.input.to_lowercase(),
            key: match &o.key {
                KeyColumns::One(k) => vec![k.to_lowercase()],
                KeyColumns::Many(ks) => ks.iter().map(|k| k.to_lowercase()).collect(),
            },
            options: o
                .options
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.to_string()))
                .collect(),
            parallelism: o.parallelism,
            location: name_location(path, &text, &o.name).unwrap_or_else(|| at("operators")),
        })
        .collect();
    let sql_value = file.sql.trim();
    let sql = if !sql_value.contains('\n') && sql_value.ends_with(".sql") {
        let sql_path = path.parent().unwrap_or(Path::new(".")).join(sql_value);
        let sql_text = std::fs::read_to_string(&sql_path).map_err(|e| {
            invalid(
                at("sql"),
                format!("cannot read SQL file {}: {e}", sql_path.display()),
            )
        })?;
        SqlText::file(sql_text, sql_path)
    } else {
        let (first_line, indent) = inline_sql_position(&text);
        SqlText {
            text: file.sql.clone(),
            file: path.to_path_buf(),
            first_line,
            indent,
        }
    };
    Ok(LoadedPipeline {
        name: file.name,
        path: path.to_path_buf(),
        sql,
        plan,
        runtime,
        checkpoint,
        errors_at,
    })
}

/// Every pipeline file (`*.yaml`, `*.yml`) in `dir`, in name order.
pub fn discover(dir: &Path) -> crate::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml") | Some("yml")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}
