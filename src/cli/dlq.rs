//! `tributary dlq …`: the dead-letter queue's admin workflow on the command line —
//! `list`, `show`, `stats`, `replay`, `edit`, `discard`, `audit`.
//!
//! Owns the flags and what they print, opening the configured store ([`open_store`]),
//! and checking an edited record against its pipeline's source table
//! ([`validate_record`], also the admin endpoint's check through [`PipelineValidator`]).
//! The operations themselves (selection, token check, replay by filter) are
//! [`crate::connectors::dead_letters::workflow`]'s, shared with the admin endpoint.
//!
//! Changes (replay, edit, discard) need `--token` / `TRIBUTARY_ADMIN_TOKEN` equal to
//! `dlq.admin_token` when that is set; with none set the command line needs no token
//! (it has the store's file anyway). Who: `--actor`, else `$USER`, else `unknown`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use clap::{Args, Subcommand, ValueEnum};

use super::report;
use crate::connectors::dead_letters::Store;
use crate::connectors::dead_letters::local::LocalStore;
use crate::connectors::dead_letters::workflow::{
    self, EditValidator, Params, Target, Unset, Workflow,
};
use crate::dlq::record::now_ms;
use crate::dlq::{BadRecords, DeadLetter, DlqError};
use crate::engine::NodeKind;
use crate::pipeline::{Config, DlqStoreKind, discover, load_pipeline};

#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    action: Action,
    /// Who is acting, for the audit log (default: $USER, else `unknown`).
    #[arg(long, global = true)]
    actor: Option<String>,
    /// The admin token (dlq.admin_token) that replay, edit and discard need when one
    /// is configured.
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Where to find pipeline files by name, to check edited records (default:
    /// run.pipelines_dir).
    #[arg(long, global = true)]
    pipelines_dir: Option<PathBuf>,
}

/// Which dead letters: every flag narrows.
#[derive(Debug, Clone, Default, Args)]
struct FilterArgs {
    /// Only this pipeline's dead letters (its name).
    #[arg(long)]
    pipeline: Option<String>,
    /// The first part of the source's topic or table name (`orders` for
    /// `orders.order_placed`).
    #[arg(long)]
    domain: Option<String>,
    /// The failure class: malformed, schema_mismatch, constraint, processing, late,
    /// lookup_miss, rejected or sink.
    #[arg(long)]
    class: Option<String>,
    /// The record's status: pending, replayed or discarded.
    #[arg(long)]
    status: Option<String>,
    /// First failed at or after: an RFC 3339 time, or a duration ago (2h, 30m, 7d).
    #[arg(long)]
    since: Option<String>,
    /// First failed before: an RFC 3339 time, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Text the message contains (case-insensitive).
    #[arg(long)]
    text: Option<String>,
}

impl FilterArgs {
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("pipeline", &self.pipeline),
            ("domain", &self.domain),
            ("class", &self.class),
            ("status", &self.status),
            ("since", &self.since),
            ("until", &self.until),
            ("text", &self.text),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }

    /// The filter, with the ids (if any) as the rest of the selection.
    fn params(&self, ids: &[String]) -> Result<Params, DlqError> {
        let joined = ids.join(",");
        let mut pairs = self.pairs();
        pairs.push(("ids", &joined));
        workflow::parse_params(pairs, now_ms())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TableOrJson {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TextOrJson {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Skip this many of the selected records first (for paging).
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Show at most this many records.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// table, or json (one JSON object per line).
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
    },
    /// One dead letter: its metadata and its payload (decoded when it is JSON).
    Show {
        /// The dead letter's id (as `dlq list` shows it).
        id: String,
        /// text (metadata, then the payload) or json (one JSON object).
        #[arg(long, value_enum, default_value = "text")]
        format: TextOrJson,
    },
    /// Counts per pipeline, failure class and status; the oldest pending record's age.
    Stats {
        #[command(flatten)]
        filter: FilterArgs,
        /// table, or json (one JSON object per line).
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
    },
    /// Send dead letters back into their pipeline's input: the ids given, or every
    /// pending record the filters select.
    Replay {
        /// Ids of the dead letters to replay (none: every pending record the filters
        /// select).
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Say how many would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Replace a pending record's payload with a corrected one (checked against its
    /// source table first; the original is kept).
    Edit {
        /// The id of the pending dead letter to correct.
        id: String,
        /// The corrected record (one JSON object).
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        payload: Option<String>,
        /// A file holding the corrected record.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Give up on dead letters, with a reason: the ids given, or every pending record
    /// the filters select.
    Discard {
        /// Ids of the dead letters to discard (none: every pending record the filters
        /// select).
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Why (kept with each record and in the audit log).
        #[arg(long)]
        reason: String,
        /// Say how many would be discarded; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The admin changes, newest first: who, when, what, which records.
    Audit {
        /// Show at most this many changes.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// table, or json (one JSON object per line).
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
    },
}

/// The configured dead-letter store. A local store's relative path is relative to the
/// working directory, like other data paths.
pub(crate) fn open_store(config: &Config) -> Result<Store, DlqError> {
    open_store_for(config, None)
}

/// [`open_store`] for writing: `pipeline` = (name, domain) writes to its domain's
/// topic on the Kafka store.
pub(crate) fn open_store_for(
    config: &Config,
    pipeline: Option<(&str, &str)>,
) -> Result<Store, DlqError> {
    match config.dlq.store {
        DlqStoreKind::Local => Ok(Arc::new(LocalStore::open(&config.dlq.path)?)),
        DlqStoreKind::Kafka => {
            use crate::connectors::kafka::dead_letters::{
                KafkaDeadLetterStore, KafkaStoreSettings,
            };
            let mut settings = KafkaStoreSettings::from_env(
                &config.connector_env(),
                &config.dlq.cluster,
                &config.dlq.topic,
            )?;
            if let Some((name, domain)) = pipeline {
                settings
                    .domains
                    .insert(name.to_string(), domain.to_string());
            }
            Ok(Arc::new(KafkaDeadLetterStore::new(settings)?))
        }
    }
}

/// The pipeline file of pipeline `name` in `dir`: `dir/name.yaml` (or `.yml`) when it
/// declares that name, else the file that does.
fn find_pipeline(config: &Config, name: &str) -> Result<crate::pipeline::LoadedPipeline, String> {
    let dir = Path::new(&config.run.pipelines_dir);
    let mut candidates: Vec<PathBuf> = ["yaml", "yml"]
        .iter()
        .map(|ext| dir.join(format!("{name}.{ext}")))
        .filter(|p| p.exists())
        .collect();
    if dir.is_dir() {
        candidates.extend(discover(dir).map_err(|e| e.to_string())?);
    }
    for path in candidates {
        if let Ok(loaded) = load_pipeline(&path, config)
            && loaded.name == name
        {
            return Ok(loaded);
        }
    }
    Err(format!(
        "no pipeline named {name} in {} (set run.pipelines_dir or --pipelines-dir)",
        dir.display()
    ))
}

/// Checks that `bytes` is one record of source table `table` of pipeline
/// `pipeline_name` (found by name in `config.run.pipelines_dir`, and planned): one JSON
/// object that decodes with the table's schema and passes its `CHECK` constraints.
/// `Err` says why not.
pub(crate) async fn validate_record(
    config: &Config,
    pipeline_name: &str,
    table: &str,
    bytes: &[u8],
) -> Result<(), String> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Err(e) => return Err(format!("not valid JSON: {e}")),
        Ok(v) if !v.is_object() => {
            return Err(format!("a record of table {table} is one JSON object"));
        }
        Ok(_) => {}
    }
    let loaded = find_pipeline(config, pipeline_name)?;
    let planner = crate::planner::SqlPlanner::new().with_env(config.connector_env());
    let planned = loaded
        .plan(&planner)
        .await
        .map_err(|e| format!("pipeline {pipeline_name} does not plan: {e}"))?;
    // The table's source node: its schema and its `CHECK`s, as the pipeline runs them.
    let (schema, checks) = planned
        .graph
        .nodes
        .iter()
        .find_map(|n| match &n.kind {
            NodeKind::Source(f) if n.name == table => Some((n.schema.clone(), f.validator())),
            _ => None,
        })
        .ok_or_else(|| format!("pipeline {pipeline_name} reads no source table {table}"))?;
    let mut bad = BadRecords::collecting("edit");
    let refusal = |bad: &BadRecords| {
        let letters = bad.take_letters();
        letters
            .first()
            .map(|l| format!("{} ({})", l.message, l.failure_class.as_str()))
    };
    let not_a_row = |why: String| format!("not a record of table {table}: {why}");
    let mut decoder =
        crate::formats::json::JsonDecoder::new(schema.clone()).map_err(|e| e.to_string())?;
    decoder.push(bytes, &mut bad);
    let batch = decoder.flush().map_err(|e| e.to_string())?;
    decoder.report_late(&mut bad);
    if let Some(why) = refusal(&bad) {
        return Err(not_a_row(why));
    }
    let Some(batch) = batch.filter(|b| b.num_rows() == 1) else {
        return Err(not_a_row("it does not decode as one row".into()));
    };
    if let Some(checks) = checks {
        checks
            .validate(batch, &mut bad)
            .map_err(|e| e.to_string())?;
        if let Some(why) = refusal(&bad) {
            return Err(why);
        }
    }
    Ok(())
}

/// Checks edits with [`validate_record`] against the pipelines of a configuration.
pub(crate) struct PipelineValidator {
    config: Config,
}

impl PipelineValidator {
    pub(crate) fn new(config: Config) -> Self {
        PipelineValidator { config }
    }
}

#[async_trait]
impl EditValidator for PipelineValidator {
    async fn validate(&self, letter: &DeadLetter, payload: &[u8]) -> Result<(), String> {
        let table = letter
            .source
            .table
            .as_deref()
            .ok_or("the record has no source table")?;
        validate_record(&self.config, &letter.pipeline, table, payload).await
    }
}

/// What the admin endpoint needs for its `/dlq` routes (the store is opened at the
/// first request, so a run without dead letters never creates the file).
pub(super) fn http_access(config: &Config) -> crate::admin::DlqAccess {
    let opened = config.clone();
    crate::admin::DlqAccess::new(
        Box::new(move || open_store(&opened)),
        config.dlq.admin_token.clone(),
        Arc::new(PipelineValidator::new(config.clone())),
    )
}

fn actor(given: Option<&str>) -> String {
    given
        .map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "unknown".into())
}

pub(super) async fn dlq(config: &Config, args: DlqArgs) -> ExitCode {
    let mut config = config.clone();
    if let Some(dir) = &args.pipelines_dir {
        config.run.pipelines_dir = dir.display().to_string();
    }
    match execute(&config, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = match e {
                DlqError::Store { .. } | DlqError::Failed { .. } => 1,
                _ => 2,
            };
            report(&e.into());
            ExitCode::from(code)
        }
    }
}

async fn execute(config: &Config, args: DlqArgs) -> Result<(), DlqError> {
    let actor = actor(args.actor.as_deref());
    let authorize =
        || workflow::authorize(&config.dlq.admin_token, args.token.as_deref(), Unset::Open);
    // Refuse a change before touching the store.
    if matches!(
        args.action,
        Action::Replay { dry_run: false, .. }
            | Action::Discard { dry_run: false, .. }
            | Action::Edit { .. }
    ) {
        authorize()?;
    }
    let flow = Workflow::new(open_store(config)?);
    match args.action {
        Action::List {
            filter,
            offset,
            limit,
            format,
        } => {
            let (offset_s, limit_s) = (offset.to_string(), limit.to_string());
            let mut pairs = filter.pairs();
            pairs.extend([("offset", offset_s.as_str()), ("limit", limit_s.as_str())]);
            let params = workflow::parse_params(pairs, now_ms())?;
            let letters = flow.store().list(&params.filter, params.page).await?;
            match format {
                TableOrJson::Json => {
                    for l in &letters {
                        println!("{}", l.summary_json());
                    }
                }
                TableOrJson::Table => print_list(&letters),
            }
            if letters.len() == limit && format == TableOrJson::Table {
                eprintln!("(more: --offset {})", offset + limit);
            }
        }
        Action::Show { id, format } => {
            let l = flow.get(&id).await?;
            match format {
                TextOrJson::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&workflow::show_json(&l)).unwrap_or_default()
                ),
                TextOrJson::Text => print!("{}", show_text(&l)),
            }
        }
        Action::Stats { filter, format } => {
            let params = filter.params(&[])?;
            let rows = flow.store().stats(&params.filter).await?;
            let summary = workflow::stats_json(&rows, now_ms());
            match format {
                TableOrJson::Json => println!("{summary}"),
                TableOrJson::Table => {
                    let mut t = vec![row(&[
                        "PIPELINE",
                        "CLASS",
                        "STATUS",
                        "COUNT",
                        "OLDEST (UTC)",
                    ])];
                    for r in &rows {
                        t.push(vec![
                            r.pipeline.clone(),
                            r.failure_class.as_str().into(),
                            r.status.as_str().into(),
                            r.count.to_string(),
                            time(r.oldest),
                        ]);
                    }
                    print_table(&t);
                    let oldest = match summary["oldest_pending_age_s"].as_i64() {
                        Some(s) => format!("oldest pending: {} ago", age(s)),
                        None => "nothing pending".into(),
                    };
                    println!(
                        "total {}, pending {}; {oldest}",
                        summary["total"], summary["pending"]
                    );
                }
            }
        }
        Action::Replay {
            ids,
            filter,
            dry_run,
        } => {
            let target = Target::from_params(&filter.params(&ids)?)?;
            let r = flow.replay(&target, &actor, dry_run).await?;
            let not = if r.not_replayable > 0 {
                format!(
                    "; {} selected record(s) have no source table and stay pending",
                    r.not_replayable
                )
            } else {
                String::new()
            };
            if dry_run {
                println!(
                    "dry run: {} pending record(s) would be replayed{not}; nothing changed",
                    r.selected
                );
            } else {
                println!(
                    "replayed {}, skipped {} (already replayed or discarded){not}",
                    r.outcome.replayed, r.outcome.skipped
                );
            }
        }
        Action::Edit { id, payload, file } => {
            let bytes = match (payload, file) {
                (Some(p), _) => p.into_bytes(),
                (None, Some(f)) => std::fs::read(&f).map_err(|e| {
                    DlqError::BadRequest(format!("cannot read {}: {e}", f.display()))
                })?,
                (None, None) => unreachable!("clap requires --payload or --file"),
            };
            let validator = PipelineValidator::new(config.clone());
            flow.edit(&id, bytes, &actor, &validator).await?;
            println!("edited {id} (the original payload is kept); replay it to send it");
        }
        Action::Discard {
            ids,
            filter,
            reason,
            dry_run,
        } => {
            let target = Target::from_params(&filter.params(&ids)?)?;
            let r = flow.discard(&target, &reason, &actor, dry_run).await?;
            if dry_run {
                println!(
                    "dry run: {} pending record(s) would be discarded; nothing changed",
                    r.selected
                );
            } else {
                println!("discarded {}", r.discarded);
            }
        }
        Action::Audit { limit, format } => {
            let entries = flow.store().audit(limit).await?;
            match format {
                TableOrJson::Json => {
                    for e in &entries {
                        println!("{}", serde_json::to_string(e).unwrap_or_default());
                    }
                }
                TableOrJson::Table => {
                    let mut t = vec![row(&["AT (UTC)", "ACTOR", "ACTION", "IDS", "DETAIL"])];
                    for e in &entries {
                        t.push(vec![
                            time(e.at),
                            e.actor.clone(),
                            e.action.clone(),
                            match e.ids.as_slice() {
                                [] => "-".into(),
                                [one] => one.clone(),
                                [first, rest @ ..] => format!("{first} +{} more", rest.len()),
                            },
                            truncate(&e.detail, 80),
                        ]);
                    }
                    print_table(&t);
                }
            }
        }
    }
    Ok(())
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Prints rows as aligned columns (the last one unpadded).
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn print_list(letters: &[DeadLetter]) {
    let mut t = vec![row(&[
        "ID",
        "FIRST FAILURE (UTC)",
        "PIPELINE",
        "CLASS",
        "STATUS",
        "TRIES",
        "SOURCE",
        "MESSAGE",
    ])];
    for l in letters {
        t.push(vec![
            l.id.clone(),
            time(l.first_failure),
            l.pipeline.clone(),
            l.failure_class.as_str().into(),
            l.status.as_str().into(),
            l.attempts.to_string(),
            l.source.describe(),
            truncate(&l.message, 60),
        ]);
    }
    print_table(&t);
}

/// One line of at most `max` characters.
fn truncate(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut out: String = one_line.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// `3h 12m`, `45s`.
fn age(secs: i64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A payload for `show`: pretty JSON when it is JSON, text when it is UTF-8, else
/// base64 with the schema id it was written with.
fn payload_text(payload: &[u8], l: &DeadLetter) -> String {
    use base64::Engine;
    if let Some(v) = workflow::payload_json(payload, l.payload_format) {
        let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
        return format!("({}, JSON)\n{}", l.payload_format.as_str(), indent(&pretty));
    }
    if let Ok(s) = std::str::from_utf8(payload) {
        return format!("({}, text)\n{}", l.payload_format.as_str(), indent(s));
    }
    let schema = match l.schema_id {
        Some(id) => format!(", schema id {id}"),
        None => String::new(),
    };
    format!(
        "({} bytes, base64{schema})\n{}",
        payload.len(),
        indent(&base64::engine::general_purpose::STANDARD.encode(payload))
    )
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

fn show_text(l: &DeadLetter) -> String {
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{k:<15} {v}\n"));
    field("id", l.id.clone());
    field("pipeline", l.pipeline.clone());
    field("node", l.node.clone());
    field("failure class", l.failure_class.as_str().into());
    field("message", l.message.clone());
    let status = match &l.status_reason {
        Some(r) => format!("{} ({r})", l.status.as_str()),
        None => l.status.as_str().into(),
    };
    field("status", status);
    field("attempts", l.attempts.to_string());
    field("first failure", time(l.first_failure));
    field("last failure", time(l.last_failure));
    if let Some(t) = l.event_time {
        field("event time", time(t));
    }
    field("source", l.source.describe());
    field(
        "source table",
        l.source
            .table
            .clone()
            .unwrap_or_else(|| "- (not replayable)".into()),
    );
    if let Some(k) = &l.source.key {
        field("key", String::from_utf8_lossy(k).into_owned());
    }
    for (k, v) in &l.source.headers {
        field("header", format!("{k}={}", String::from_utf8_lossy(v)));
    }
    if let Some(id) = l.schema_id {
        field("schema id", id.to_string());
    }
    out.push_str(&format!("payload {}", payload_text(&l.payload, l)));
    if let Some(o) = &l.original_payload {
        out.push_str(&format!("original payload {}", payload_text(o, l)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_truncate_to_one_line() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("éééééééééééé", 5), "éééé…");
        assert_eq!(age(45), "45s");
        assert_eq!(age(3 * 3600 + 12 * 60 + 5), "3h 12m");
        assert_eq!(age(2 * 86_400 + 3600), "2d 1h");
    }
}
