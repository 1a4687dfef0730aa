//! The local dead-letter store: one SQLite file (rusqlite, bundled; ADR 0013).
//!
//! Owns the file's schema and every access to it: the admin operations of
//! [`DeadLetterStore`], the pipelines' dead-letter sink ([`LocalSink`]) and the replay
//! inbox a pipeline's sources read ([`LocalStore::inbox`]).
//!
//! Several processes open the same file at once (each `tributary run`, the
//! `tributary dlq` CLI): the file is in WAL mode, so readers never wait for the
//! writer; writers take the write lock when their transaction begins (`BEGIN
//! IMMEDIATE`) and wait up to [`BUSY_TIMEOUT`] for it. `synchronous = FULL`: a
//! committed transaction survives a crash of the process or of the machine.
//!
//! Tables:
//! - `dead_letters`: one row per dead letter id, every field its own column; `source`
//!   is the [`Origin`](super::Origin) as JSON, with `source_table`, `source_topic`,
//!   `domain` ([`domain_of`](super::domain_of)) and `message_lower` (the message lowercased)
//!   beside it for filtering in SQL.
//! - `staged`: dead letters a pipeline wrote under exactly-once whose checkpoint has
//!   not committed yet: the same columns, plus `seq` (write order) and `checkpoint`
//!   (`NULL` until the checkpoint's `pre_commit` tags them).
//! - `inbox`: replayed records waiting to be read again by their source table, in
//!   `seq` order.
//! - `audit`: every admin change, in the transaction of the change.
//!
//! Invariants:
//! - A dead letter becomes visible (in `dead_letters`) once: directly, without
//!   exactly-once; or when the checkpoint that staged it commits, in one transaction
//!   that moves it out of `staged`, so a repeated commit moves nothing twice.
//! - A record failing again (a replay) arrives under its id: it is upserted, keeping
//!   its first failure, origin and original payload, pending again.
//! - A replay inserts into `inbox` and marks the records replayed in one transaction:
//!   an interrupted and repeated replay never inserts a record twice.
//! - Staged rows belong to one pipeline, whose dead-letter sink has parallelism 1
//!   (`Graph::attach_dead_letters`): a sink's `pre_commit`, `commit` and `restore`
//!   act on all of its pipeline's staged rows.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use rusqlite::types::{Type, Value};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params, params_from_iter};

use super::{AuditEntry, DeadLetterStore, DlqError, Filter, Page, ReplayOutcome, Result, StatsRow};
use crate::dlq::BadRecordReason;
use crate::dlq::record::{self, DeadLetter, Origin, PayloadFormat, Status};
use crate::engine::{EngineError, Sink, SinkFactory, TaskInfo};

/// How long a writer waits for another process's write transaction to end.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The version of the tables below (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// The columns of a dead letter, in the order [`bind`] binds and [`letter_of`] reads
/// them, with their SQL types; `dead_letters` and `staged` both have them.
const COLUMNS: [(&str, &str); 20] = [
    ("id", "TEXT NOT NULL"),
    ("pipeline", "TEXT NOT NULL"),
    ("node", "TEXT NOT NULL"),
    ("failure_class", "TEXT NOT NULL"),
    ("message", "TEXT NOT NULL"),
    ("message_lower", "TEXT NOT NULL"),
    ("payload", "BLOB NOT NULL"),
    ("payload_format", "TEXT NOT NULL"),
    ("source", "TEXT NOT NULL"),
    ("source_table", "TEXT"),
    ("source_topic", "TEXT"),
    ("domain", "TEXT NOT NULL"),
    ("schema_id", "INTEGER"),
    ("event_time", "INTEGER"),
    ("first_failure", "INTEGER NOT NULL"),
    ("last_failure", "INTEGER NOT NULL"),
    ("attempts", "INTEGER NOT NULL"),
    ("status", "TEXT NOT NULL"),
    ("status_reason", "TEXT"),
    ("original_payload", "BLOB"),
];

/// `id, pipeline, …` (every column of [`COLUMNS`]).
static COLUMN_LIST: LazyLock<String> = LazyLock::new(|| {
    COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
});

/// The tables and indexes, created if missing.
static DDL: LazyLock<String> = LazyLock::new(|| {
    let defs = |extra: &str| {
        COLUMNS
            .iter()
            .map(|(name, ty)| format!("{name} {ty}{}", if *name == "id" { extra } else { "" }))
            .collect::<Vec<_>>()
            .join(",\n  ")
    };
    format!(
        "CREATE TABLE IF NOT EXISTS dead_letters (\n  {}\n);
CREATE INDEX IF NOT EXISTS dead_letters_pipeline ON dead_letters (pipeline, status, first_failure);
CREATE TABLE IF NOT EXISTS staged (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  checkpoint INTEGER,
  {}
);
CREATE INDEX IF NOT EXISTS staged_pipeline ON staged (pipeline, checkpoint);
CREATE TABLE IF NOT EXISTS inbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  pipeline TEXT NOT NULL,
  source_table TEXT NOT NULL,
  dlq_id TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  payload BLOB NOT NULL,
  payload_format TEXT NOT NULL,
  added_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_table ON inbox (pipeline, source_table, seq);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at INTEGER NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  detail TEXT NOT NULL,
  ids TEXT NOT NULL
);",
        defs(" PRIMARY KEY"),
        defs("")
    )
});

/// A record that fails again (same id) updates what its new failure says, and keeps
/// its first failure, origin and original payload.
const UPSERT: &str = "ON CONFLICT (id) DO UPDATE SET
  node = excluded.node,
  failure_class = excluded.failure_class,
  message = excluded.message,
  message_lower = excluded.message_lower,
  payload = excluded.payload,
  payload_format = excluded.payload_format,
  last_failure = excluded.last_failure,
  attempts = excluded.attempts,
  status = 'pending',
  status_reason = NULL";

/// What an operation on the connection fails with: SQLite's error (made a
/// [`DlqError::Store`] naming the file), or an answer of the store itself.
enum Fail {
    Sql(rusqlite::Error),
    Dlq(DlqError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<DlqError> for Fail {
    fn from(e: DlqError) -> Self {
        Fail::Dlq(e)
    }
}

type Op<T> = std::result::Result<T, Fail>;

struct Inner {
    path: PathBuf,
    name: String,
    conn: Mutex<Connection>,
}

/// The dead letters kept in one SQLite file. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

/// A replayed record waiting in the inbox of its source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRecord {
    /// Its place in the inbox (increasing): where a source resumes after it.
    pub seq: i64,
    pub dlq_id: String,
    /// How many times it has failed so far.
    pub attempts: i32,
    pub payload: Vec<u8>,
    pub payload_format: PayloadFormat,
}

impl LocalStore {
    /// Opens (creating it, its parent directories and its tables if needed) the store
    /// at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<LocalStore> {
        let path = path.as_ref().to_path_buf();
        let name = format!("local {}", path.display());
        let fail = |e: &dyn std::fmt::Display| DlqError::store(&name, e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let mut conn = Connection::open(&path).map_err(|e| fail(&e))?;
        init(&mut conn, &name).map_err(|e| match e {
            Fail::Sql(e) => fail(&e),
            Fail::Dlq(e) => e,
        })?;
        Ok(LocalStore {
            inner: Arc::new(Inner {
                path,
                name,
                conn: Mutex::new(conn),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the connection, on this thread.
    fn blocking<T>(&self, f: impl FnOnce(&mut Connection) -> Op<T>) -> Result<T> {
        // A panic inside a transaction rolled it back when the transaction dropped: the
        // connection is usable.
        let mut conn = self
            .inner
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut conn).map_err(|e| match e {
            Fail::Sql(e) => DlqError::store(&self.inner.name, e),
            Fail::Dlq(e) => e,
        })
    }

    /// Runs `f` on the connection on a blocking thread, off the async runtime.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Op<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.blocking(f))
            .await
            .map_err(|e| DlqError::store(&self.inner.name, e))?
    }

    /// The replayed records of `pipeline`'s source table `table` after inbox position
    /// `after_seq` (0: from the start), at most `limit`, in order.
    pub fn inbox(
        &self,
        pipeline: &str,
        table: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<InboxRecord>> {
        self.blocking(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, dlq_id, attempts, payload, payload_format FROM inbox
                 WHERE pipeline = ?1 AND source_table = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
            )?;
            let rows =
                stmt.query_map(params![pipeline, table, after_seq, limit_of(limit)], |r| {
                    Ok(InboxRecord {
                        seq: r.get(0)?,
                        dlq_id: r.get(1)?,
                        attempts: r.get(2)?,
                        payload: r.get(3)?,
                        payload_format: parsed(r, 4, PayloadFormat::parse)?,
                    })
                })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// How many dead letters of `pipeline` are pending, and the first failure of the
    /// oldest (ms since the epoch).
    pub fn pending_summary(&self, pipeline: &str) -> Result<(u64, Option<i64>)> {
        self.blocking(|conn| Ok(pending_summary(conn, pipeline)?))
    }
}

/// Connection settings and the tables.
fn init(conn: &mut Connection, name: &str) -> Op<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        let message = format!("cannot use write-ahead logging (journal mode {mode})");
        return Err(DlqError::store(name, message).into());
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        let message = format!(
            "written by a newer tributary (schema version {version}, this one knows {SCHEMA_VERSION})"
        );
        return Err(DlqError::store(name, message).into());
    }
    tx.execute_batch(&DDL)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// SQLite's LIMIT of a page size (`usize::MAX`: no limit).
fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Column `i` of `r`, text that `parse` must accept.
fn parsed<T>(r: &Row<'_>, i: usize, parse: impl Fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            Type::Text,
            format!("unknown value {s:?}").into(),
        )
    })
}

/// Binds `l` to the parameters `?1`…`?20` of an insert of [`COLUMNS`].
fn bind(stmt: &mut rusqlite::Statement<'_>, l: &DeadLetter) -> Op<()> {
    let source = serde_json::to_string(&l.source)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    stmt.execute(params![
        l.id,
        l.pipeline,
        l.node,
        l.failure_class.as_str(),
        l.message,
        l.message.to_lowercase(),
        l.payload,
        l.payload_format.as_str(),
        source,
        l.source.table,
        l.source.topic,
        super::domain_of(l),
        l.schema_id,
        l.event_time,
        l.first_failure,
        l.last_failure,
        l.attempts,
        l.status.as_str(),
        l.status_reason,
        l.original_payload,
    ])?;
    Ok(())
}

/// The dead letter of a row selecting [`COLUMN_LIST`].
fn letter_of(r: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    let source: String = r.get(8)?;
    let source: Origin = serde_json::from_str(&source)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(8, Type::Text, e.into()))?;
    Ok(DeadLetter {
        id: r.get(0)?,
        pipeline: r.get(1)?,
        node: r.get(2)?,
        failure_class: parsed(r, 3, BadRecordReason::parse)?,
        message: r.get(4)?,
        payload: r.get(6)?,
        payload_format: parsed(r, 7, PayloadFormat::parse)?,
        source,
        schema_id: r.get(12)?,
        event_time: r.get(13)?,
        first_failure: r.get(14)?,
        last_failure: r.get(15)?,
        attempts: r.get(16)?,
        status: parsed(r, 17, Status::parse)?,
        status_reason: r.get(18)?,
        original_payload: r.get(19)?,
    })
}

fn pending_summary(conn: &Connection, pipeline: &str) -> rusqlite::Result<(u64, Option<i64>)> {
    conn.prepare_cached(
        "SELECT COUNT(*), MIN(first_failure) FROM dead_letters
         WHERE pipeline = ?1 AND status = 'pending'",
    )?
    .query_row([pipeline], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
}

/// The SQL condition and parameters of `f` (`1` for everything).
fn where_of(f: &Filter) -> (String, Vec<Value>) {
    let mut clauses = vec!["1".to_string()];
    let mut values = Vec::new();
    let mut add = |clause: &str, v: Value| {
        values.push(v);
        clauses.push(clause.replace('?', &format!("?{}", values.len())));
    };
    if let Some(p) = &f.pipeline {
        add("pipeline = ?", Value::Text(p.clone()));
    }
    if let Some(d) = &f.domain {
        add("domain = ?", Value::Text(d.clone()));
    }
    if let Some(c) = f.class {
        add("failure_class = ?", Value::Text(c.as_str().into()));
    }
    if let Some(s) = f.status {
        add("status = ?", Value::Text(s.as_str().into()));
    }
    if let Some(t) = f.since {
        add("first_failure >= ?", Value::Integer(t));
    }
    if let Some(t) = f.until {
        add("first_failure < ?", Value::Integer(t));
    }
    if let Some(t) = &f.text {
        // `instr` on the message lowercased by Rust: the text is matched literally (no
        // LIKE wildcards to escape) and case-insensitively beyond ASCII, the same as
        // `Filter::matches`.
        add("instr(message_lower, ?) > 0", Value::Text(t.to_lowercase()));
    }
    (clauses.join(" AND "), values)
}

/// Appends one audit entry.
fn audit(conn: &Connection, actor: &str, action: &str, detail: &str, ids: &[String]) -> Op<()> {
    let ids = serde_json::to_string(ids)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, action, detail, ids) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![record::now_ms(), actor, action, detail, ids])?;
    Ok(())
}

/// Writes `letters` into `dead_letters` (upserting by id), in one transaction.
fn write_visible(conn: &mut Connection, letters: &[DeadLetter]) -> Op<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(&format!(
            "INSERT INTO dead_letters ({cols}) VALUES ({values}) {UPSERT}",
            cols = *COLUMN_LIST,
            values = placeholders(),
        ))?;
        for l in letters {
            bind(&mut stmt, l)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// `?1, ?2, …, ?20`.
fn placeholders() -> String {
    (1..=COLUMNS.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one call of [`stage`] does to `pipeline`'s staged rows, in one transaction.
struct Staging<'a> {
    /// Delete every staged row first (rows of a run that never checkpointed).
    clear: bool,
    letters: &'a [DeadLetter],
    /// Then tag every untagged row with this checkpoint.
    tag: Option<i64>,
}

fn stage(conn: &mut Connection, pipeline: &str, s: Staging<'_>) -> Op<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if s.clear {
        tx.execute("DELETE FROM staged WHERE pipeline = ?1", [pipeline])?;
    }
    {
        let mut stmt = tx.prepare_cached(&format!(
            "INSERT INTO staged ({cols}) VALUES ({values})",
            cols = *COLUMN_LIST,
            values = placeholders(),
        ))?;
        for l in s.letters {
            bind(&mut stmt, l)?;
        }
    }
    if let Some(id) = s.tag {
        tx.prepare_cached(
            "UPDATE staged SET checkpoint = ?1 WHERE pipeline = ?2 AND checkpoint IS NULL",
        )?
        .execute(params![id, pipeline])?;
    }
    tx.commit()?;
    Ok(())
}

/// What [`settle`] makes visible of a pipeline's staged rows.
#[derive(Clone, Copy)]
enum Upto {
    /// The rows of checkpoints up to this one.
    Checkpoint(i64),
    /// Every row, tagged or not (the end of the input).
    All,
}

/// In one transaction: moves `pipeline`'s staged rows selected by `upto` into
/// `dead_letters`, in the order they were written; with `discard_rest`, deletes its
/// other staged rows (of checkpoints that did not commit, which the restart replays).
/// With `clear`, first deletes every staged row (see [`Staging::clear`]).
fn settle(
    conn: &mut Connection,
    pipeline: &str,
    clear: bool,
    upto: Upto,
    discard_rest: bool,
) -> Op<()> {
    let (selected, bound) = match upto {
        Upto::Checkpoint(id) => ("checkpoint <= ?2", id),
        Upto::All => ("?2 = ?2", 0),
    };
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if clear {
        tx.execute("DELETE FROM staged WHERE pipeline = ?1", [pipeline])?;
    }
    tx.prepare_cached(&format!(
        "INSERT INTO dead_letters ({cols}) SELECT {cols} FROM staged
         WHERE pipeline = ?1 AND {selected} ORDER BY seq {UPSERT}",
        cols = *COLUMN_LIST,
    ))?
    .execute(params![pipeline, bound])?;
    tx.prepare_cached(&format!(
        "DELETE FROM staged WHERE pipeline = ?1 AND {selected}"
    ))?
    .execute(params![pipeline, bound])?;
    if discard_rest {
        tx.prepare_cached("DELETE FROM staged WHERE pipeline = ?1")?
            .execute([pipeline])?;
    }
    tx.commit()?;
    Ok(())
}

/// Sets the pipeline's dead-letter gauges from the store.
fn update_gauges(conn: &Connection, pipeline: &str) -> Op<()> {
    let (count, oldest) = pending_summary(conn, pipeline)?;
    crate::metrics::dead_letter_queue_size(pipeline).set(count as f64);
    let age = oldest.map_or(0.0, |t| ((record::now_ms() - t).max(0) as f64) / 1000.0);
    crate::metrics::dead_letter_oldest_age(pipeline).set(age);
    Ok(())
}

#[async_trait]
impl DeadLetterStore for LocalStore {
    fn describe(&self) -> String {
        self.inner.name.clone()
    }

    fn sink(&self, pipeline: &str) -> Result<Arc<dyn SinkFactory>> {
        Ok(Arc::new(LocalSinkFactory {
            path: self.inner.path.clone(),
            pipeline: pipeline.to_string(),
        }))
    }

    async fn list(&self, filter: &Filter, page: Page) -> Result<Vec<DeadLetter>> {
        let (mut cond, mut values) = where_of(filter);
        if let Some((t, id)) = &page.after {
            values.push(Value::Integer(*t));
            values.push(Value::Text(id.clone()));
            let n = values.len();
            cond.push_str(&format!(" AND (first_failure, id) > (?{}, ?{n})", n - 1));
        }
        values.push(Value::Integer(limit_of(page.limit)));
        values.push(Value::Integer(limit_of(page.offset)));
        let n = values.len();
        let sql = format!(
            "SELECT {cols} FROM dead_letters WHERE {cond}
             ORDER BY first_failure, id LIMIT ?{} OFFSET ?{n}",
            n - 1,
            cols = *COLUMN_LIST,
        );
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(values), letter_of)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<DeadLetter>> {
        let id = id.to_string();
        self.run(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {} FROM dead_letters WHERE id = ?1",
                    *COLUMN_LIST
                ))?
                .query_row([id], letter_of)
                .optional()?)
        })
        .await
    }

    async fn stats(&self, filter: &Filter) -> Result<Vec<StatsRow>> {
        let (cond, values) = where_of(filter);
        let sql = format!(
            "SELECT pipeline, failure_class, status, COUNT(*), MIN(first_failure)
             FROM dead_letters WHERE {cond}
             GROUP BY pipeline, failure_class, status ORDER BY pipeline, failure_class, status"
        );
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(values), |r| {
                Ok(StatsRow {
                    pipeline: r.get(0)?,
                    failure_class: parsed(r, 1, BadRecordReason::parse)?,
                    status: parsed(r, 2, Status::parse)?,
                    count: r.get::<_, i64>(3)? as u64,
                    oldest: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn replay(&self, ids: &[String], actor: &str) -> Result<ReplayOutcome> {
        let (ids, actor) = (ids.to_vec(), actor.to_string());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut outcome = ReplayOutcome::default();
            let mut replayed = Vec::new();
            for id in &ids {
                let row = tx
                    .prepare_cached(
                        "SELECT pipeline, source_table, status, attempts, payload, payload_format
                         FROM dead_letters WHERE id = ?1",
                    )?
                    .query_row([id], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            parsed(r, 2, Status::parse)?,
                            r.get::<_, i32>(3)?,
                            r.get::<_, Vec<u8>>(4)?,
                            r.get::<_, String>(5)?,
                        ))
                    })
                    .optional()?;
                // Returning an error drops `tx`: everything done so far rolls back.
                let Some((pipeline, table, status, attempts, payload, format)) = row else {
                    return Err(DlqError::NotFound(id.clone()).into());
                };
                let Some(table) = table else {
                    return Err(DlqError::NotReplayable {
                        id: id.clone(),
                        reason: "it is not a record of a source table".into(),
                    }
                    .into());
                };
                if status != Status::Pending {
                    outcome.skipped += 1;
                    continue;
                }
                tx.prepare_cached(
                    "INSERT INTO inbox (pipeline, source_table, dlq_id, attempts, payload,
                     payload_format, added_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    pipeline,
                    table,
                    id,
                    attempts,
                    payload,
                    format,
                    record::now_ms()
                ])?;
                tx.prepare_cached(
                    "UPDATE dead_letters SET status = 'replayed', status_reason = NULL
                     WHERE id = ?1",
                )?
                .execute([id])?;
                outcome.replayed += 1;
                replayed.push(id.clone());
            }
            if !replayed.is_empty() {
                let detail = format!("{} replayed, {} skipped", outcome.replayed, outcome.skipped);
                audit(&tx, &actor, "replay", &detail, &replayed)?;
            }
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn edit(&self, id: &str, payload: Vec<u8>, actor: &str) -> Result<()> {
        let (id, actor) = (id.to_string(), actor.to_string());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row = tx
                .prepare_cached("SELECT status, payload FROM dead_letters WHERE id = ?1")?
                .query_row([&id], |r| {
                    Ok((parsed(r, 0, Status::parse)?, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()?;
            let Some((status, old)) = row else {
                return Err(DlqError::NotFound(id).into());
            };
            if status != Status::Pending {
                return Err(DlqError::BadRequest(format!(
                    "dead letter {id} is {}: only a pending one can be edited",
                    status.as_str()
                ))
                .into());
            }
            tx.prepare_cached(
                "UPDATE dead_letters SET payload = ?2,
                 original_payload = COALESCE(original_payload, ?3) WHERE id = ?1",
            )?
            .execute(params![id, payload, old])?;
            let detail = format!("payload {} bytes -> {} bytes", old.len(), payload.len());
            audit(&tx, &actor, "edit", &detail, std::slice::from_ref(&id))?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn discard(&self, ids: &[String], reason: &str, actor: &str) -> Result<u64> {
        if reason.trim().is_empty() {
            return Err(DlqError::BadRequest(
                "a discard needs a reason (--reason)".into(),
            ));
        }
        let (ids, reason, actor) = (ids.to_vec(), reason.to_string(), actor.to_string());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut discarded = Vec::new();
            for id in &ids {
                let status = tx
                    .prepare_cached("SELECT status FROM dead_letters WHERE id = ?1")?
                    .query_row([id], |r| parsed(r, 0, Status::parse))
                    .optional()?;
                match status {
                    None => return Err(DlqError::NotFound(id.clone()).into()),
                    Some(Status::Pending) => {
                        tx.prepare_cached(
                            "UPDATE dead_letters SET status = 'discarded', status_reason = ?2
                             WHERE id = ?1",
                        )?
                        .execute(params![id, reason])?;
                        discarded.push(id.clone());
                    }
                    Some(_) => {}
                }
            }
            if !discarded.is_empty() {
                audit(&tx, &actor, "discard", &reason, &discarded)?;
            }
            tx.commit()?;
            Ok(discarded.len() as u64)
        })
        .await
    }

    async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT at, actor, action, detail, ids FROM audit ORDER BY seq DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit_of(limit)], |r| {
                let ids: String = r.get(4)?;
                Ok(AuditEntry {
                    at: r.get(0)?,
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    detail: r.get(3)?,
                    ids: serde_json::from_str(&ids).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(4, Type::Text, e.into())
                    })?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

/// Builds the dead-letter sink of one pipeline on a local store.
pub struct LocalSinkFactory {
    path: PathBuf,
    pipeline: String,
}

impl SinkFactory for LocalSinkFactory {
    fn describe(&self) -> String {
        format!("dead letters → local {}", self.path.display())
    }

    fn check_schema(&self, schema: &SchemaRef) -> crate::Result<()> {
        for f in record::schema().fields() {
            match schema.field_with_name(f.name()) {
                Ok(g) if g.data_type() == f.data_type() => {}
                _ => {
                    return Err(EngineError::Invalid(format!(
                        "the dead-letter sink needs column {} of type {}",
                        f.name(),
                        f.data_type()
                    ))
                    .into());
                }
            }
        }
        Ok(())
    }

    fn create(&self, _task: &TaskInfo, _schema: SchemaRef) -> crate::Result<Box<dyn Sink>> {
        Ok(Box::new(LocalSink {
            store: LocalStore::open(&self.path)?,
            pipeline: self.pipeline.clone(),
            buffer: Vec::new(),
            two_phase: false,
            clean_start: false,
            inflight: None,
            gauges_at: None,
        }))
    }
}

/// Dead letters buffered in memory before a flush writes them.
const FLUSH_AT: usize = 4096;

/// A pipeline's dead-letter sink on a local store. Without exactly-once, what it is
/// given becomes visible at each flush. With it, flushes stage the dead letters, and a
/// checkpoint's commit makes them visible (see the module documentation).
pub struct LocalSink {
    store: LocalStore,
    pipeline: String,
    buffer: Vec<DeadLetter>,
    /// Exactly-once: dead letters go through `staged`.
    two_phase: bool,
    /// Exactly-once and not restored (no committed checkpoint to resume from): staged
    /// rows of an earlier run belong to no checkpoint that will ever commit; the first
    /// write to `staged` deletes them.
    clean_start: bool,
    /// The write of the previous flush, still running on a blocking thread while the
    /// pipeline goes on (one at a time, in order; every commit point waits for it).
    inflight: Option<tokio::task::JoinHandle<Result<()>>>,
    /// When the queue gauges were last set (at most once a second; they count rows).
    gauges_at: Option<std::time::Instant>,
}

impl LocalSink {
    fn pipeline(&self) -> String {
        self.pipeline.clone()
    }

    /// Waits for the write in flight, if any.
    async fn settle_inflight(&mut self) -> crate::Result<()> {
        if let Some(write) = self.inflight.take() {
            write
                .await
                .map_err(|e| DlqError::store(&self.store.inner.name, e))??;
        }
        Ok(())
    }

    /// Whether the gauges are due (and marks them set).
    fn gauges_due(&mut self) -> bool {
        let now = std::time::Instant::now();
        let due = self
            .gauges_at
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            self.gauges_at = Some(now);
        }
        due
    }

    /// Writes the buffer (visible, or staged and then tagged with `tag`). A write
    /// without a tag runs while the pipeline goes on (the next call, a flush or any
    /// commit point waits for it); a tagged one (a pre-commit) is durable on return.
    async fn write_out(&mut self, tag: Option<i64>) -> crate::Result<()> {
        self.settle_inflight().await?;
        if self.buffer.is_empty() && tag.is_none() {
            return Ok(());
        }
        let letters = std::mem::take(&mut self.buffer);
        let pipeline = self.pipeline();
        let gauges = self.gauges_due();
        let store = self.store.clone();
        let write = if self.two_phase {
            let clear = std::mem::take(&mut self.clean_start);
            tokio::task::spawn_blocking(move || {
                store.blocking(move |conn| {
                    let s = Staging {
                        clear,
                        letters: &letters,
                        tag,
                    };
                    stage(conn, &pipeline, s)
                })
            })
        } else {
            tokio::task::spawn_blocking(move || {
                store.blocking(move |conn| {
                    write_visible(conn, &letters)?;
                    if gauges {
                        update_gauges(conn, &pipeline)?;
                    }
                    Ok(())
                })
            })
        };
        self.inflight = Some(write);
        if tag.is_some() {
            self.settle_inflight().await?;
        }
        Ok(())
    }

    async fn settle(&mut self, upto: Upto, discard_rest: bool) -> crate::Result<()> {
        self.settle_inflight().await?;
        let pipeline = self.pipeline();
        let clear = std::mem::take(&mut self.clean_start);
        self.store
            .run(move |conn| {
                settle(conn, &pipeline, clear, upto, discard_rest)?;
                update_gauges(conn, &pipeline)
            })
            .await?;
        Ok(())
    }
}

fn checkpoint_id(id: u64) -> crate::Result<i64> {
    i64::try_from(id)
        .map_err(|_| EngineError::State(format!("checkpoint id {id} out of range")).into())
}

#[async_trait]
impl Sink for LocalSink {
    async fn write(&mut self, batch: RecordBatch) -> crate::Result<()> {
        let letters = record::from_batch(&batch)
            .map_err(|e| DlqError::store(&self.store.inner.name, format!("dead letters: {e}")))?;
        self.buffer.extend(letters);
        if self.buffer.len() >= FLUSH_AT {
            self.write_out(None).await?;
        }
        Ok(())
    }

    /// Makes what it was given visible (or staged): a full buffer is written in the
    /// background by `write`, and the flush waits for it.
    async fn flush(&mut self) -> crate::Result<()> {
        self.write_out(None).await?;
        self.settle_inflight().await
    }

    /// At the end of the input: everything becomes visible. Under exactly-once the
    /// runtime's final checkpoint has normally committed it all already (nothing is
    /// left staged); what is left (that checkpoint could not complete) becomes visible
    /// as the trait asks, as the other two-phase sinks do (`parquet`).
    async fn finish(&mut self) -> crate::Result<()> {
        self.write_out(None).await?;
        self.settle_inflight().await?;
        if self.two_phase {
            self.settle(Upto::All, false).await?;
        }
        Ok(())
    }

    fn exactly_once(&mut self) -> bool {
        self.two_phase = true;
        self.clean_start = true;
        true
    }

    async fn pre_commit(&mut self, id: u64) -> crate::Result<Option<Vec<u8>>> {
        if !self.two_phase {
            self.write_out(None).await?;
            self.settle_inflight().await?;
            return Ok(None);
        }
        self.write_out(Some(checkpoint_id(id)?)).await?;
        Ok(Some(id.to_le_bytes().to_vec()))
    }

    async fn commit(&mut self, id: u64) -> crate::Result<()> {
        if self.two_phase {
            self.settle(Upto::Checkpoint(checkpoint_id(id)?), false)
                .await?;
        }
        Ok(())
    }

    async fn restore(&mut self, states: &[(usize, Vec<u8>)]) -> crate::Result<()> {
        let mut restored = None;
        for (partition, state) in states {
            let bytes: [u8; 8] = state.as_slice().try_into().map_err(|_| {
                EngineError::State(format!(
                    "restoring the dead-letter sink: state of partition {partition} is {} bytes, not 8",
                    state.len()
                ))
            })?;
            restored = restored.max(Some(u64::from_le_bytes(bytes)));
        }
        let Some(c) = restored else {
            return Ok(());
        };
        // The restored checkpoint's staged rows are to be committed, not cleared.
        self.clean_start = false;
        self.settle(Upto::Checkpoint(checkpoint_id(c)?), true).await
    }

    async fn close_uncommitted(&mut self, committed: u64) -> crate::Result<()> {
        // Not written: they came after the last checkpoint, which the restart replays.
        self.buffer.clear();
        self.settle_inflight().await?;
        if !self.two_phase {
            return self.finish().await;
        }
        self.settle(Upto::Checkpoint(checkpoint_id(committed)?), true)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::super::conformance::{self, all, ids, letter, sink, write, write_finished};
    use super::*;

    fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            LocalStore::open(dir.path().join("dlq").join("dead-letters.sqlite")).expect("open");
        (dir, Arc::new(store))
    }

    conformance::conformance_tests!(fresh());

    #[tokio::test]
    async fn inbox_holds_each_replayed_record_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStore::open(dir.path().join("dlq.sqlite")).unwrap();
        let store: Store = Arc::new(local.clone());
        let other_table = DeadLetter {
            source: Origin {
                table: Some("payments".into()),
                ..Origin::default()
            },
            ..letter(4)
        };
        write_finished(&store, &[letter(1), letter(2), letter(3), other_table]).await;
        assert_eq!(
            local.pending_summary("p").unwrap(),
            (4, Some(letter(1).first_failure))
        );
        store
            .edit(&letter(2).id, b"{\"n\":2}".to_vec(), "ana")
            .await
            .unwrap();
        let (a, b, c, d) = (letter(1).id, letter(2).id, letter(3).id, letter(4).id);
        store.replay(&[b.clone(), a.clone()], "ana").await.unwrap();
        store
            .replay(&[a.clone(), c.clone(), d.clone()], "ana")
            .await
            .unwrap();
        let inbox = local.inbox("p", "orders", 0, 100).unwrap();
        let got: Vec<(&str, &[u8], i32)> = inbox
            .iter()
            .map(|r| (r.dlq_id.as_str(), r.payload.as_slice(), r.attempts))
            .collect();
        assert_eq!(
            got,
            vec![
                (b.as_str(), &b"{\"n\":2}"[..], 1),
                (a.as_str(), &letter(1).payload[..], 1),
                (c.as_str(), &letter(3).payload[..], 1),
            ],
            "each replayed record once, in replay order, with its (edited) payload"
        );
        assert!(inbox.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(
            inbox
                .iter()
                .all(|r| r.payload_format == PayloadFormat::Bytes)
        );
        let after = local.inbox("p", "orders", inbox[0].seq, 1).unwrap();
        assert_eq!(
            ids_of(&after),
            std::slice::from_ref(&a),
            "after a position, at most the limit"
        );
        assert_eq!(ids_of(&local.inbox("p", "payments", 0, 100).unwrap()), [d]);
        assert!(local.inbox("q", "orders", 0, 100).unwrap().is_empty());
        assert_eq!(local.pending_summary("p").unwrap(), (0, None));
    }

    fn ids_of(records: &[InboxRecord]) -> Vec<String> {
        records.iter().map(|r| r.dlq_id.clone()).collect()
    }

    #[tokio::test]
    async fn two_stores_on_one_file_see_each_others_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.sqlite");
        // A pipeline's sink and the CLI, each with its own connection.
        let pipeline: Store = Arc::new(LocalStore::open(&path).unwrap());
        let cli: Store = Arc::new(LocalStore::open(&path).unwrap());
        let mut s = sink(&pipeline, "p");
        assert!(s.exactly_once());
        write(s.as_mut(), &[letter(1), letter(2)]).await;
        s.pre_commit(1).await.unwrap();
        assert!(
            all(&cli).await.is_empty(),
            "staged letters are not visible to the CLI"
        );
        s.commit(1).await.unwrap();
        assert_eq!(ids(&all(&cli).await), ids(&[letter(1), letter(2)]));
        cli.discard(&[letter(1).id], "noise", "ana").await.unwrap();
        assert_eq!(
            pipeline.get(&letter(1).id).await.unwrap().unwrap().status,
            Status::Discarded,
            "the CLI's change is visible to the pipeline's connection"
        );
        assert_eq!(pipeline.audit(10).await.unwrap()[0].actor, "ana");
    }

    #[tokio::test]
    async fn a_reopened_store_keeps_its_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a").join("b").join("dlq.sqlite");
        let store: Store = Arc::new(LocalStore::open(&path).unwrap());
        assert_eq!(store.describe(), format!("local {}", path.display()));
        write_finished(&store, &[letter(1)]).await;
        drop(store);
        let again: Store = Arc::new(LocalStore::open(&path).unwrap());
        assert_eq!(all(&again).await, vec![letter(1)]);
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_store_of_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.sqlite");
        LocalStore::open(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = LocalStore::open(&path).err().expect("refused");
        assert!(err.to_string().contains("newer tributary"), "{err}");
    }

    #[test]
    fn the_sink_needs_the_dead_letter_columns() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("dlq.sqlite")).unwrap();
        let factory = store.sink("p").unwrap();
        assert!(factory.describe().starts_with("dead letters → local "));
        factory.check_schema(&record::schema()).unwrap();
        let fields: Vec<_> = record::schema()
            .fields()
            .iter()
            .filter(|f| f.name() != "attempts")
            .cloned()
            .collect();
        let without = Arc::new(arrow::datatypes::Schema::new(fields));
        let err = factory.check_schema(&without).unwrap_err();
        assert!(err.to_string().contains("attempts"), "{err}");
    }
}
