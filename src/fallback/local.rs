//! The local fallback store: one SQLite file (rusqlite, bundled, as the dead-letter
//! queue's local store, ADR 0013), for the embedded default.
//!
//! Table `records`: one row per record, keyed by `(pipeline, topic, has_key, key,
//! checkpoint, idx)` (a stream, then its sequence), `WITHOUT ROWID` so a stream's
//! records are stored in order. WAL mode with `synchronous = FULL`: an append that
//! returned survives a crash of the process or the machine; `INSERT OR IGNORE` makes
//! a repeated append store nothing twice; every append is one transaction.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::{
    Backlog, DeliveryMark, FallbackError, FallbackRecord, FallbackStore, Result, Seq, StreamId,
};

const STORE: &str = "local";
/// How long a writer waits for another process's write transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

fn unavailable(e: impl std::fmt::Display) -> FallbackError {
    FallbackError::Unavailable {
        store: STORE,
        message: e.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct LocalFallbackStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl LocalFallbackStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let conn = Connection::open(&path).map_err(unavailable)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unavailable)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS records (
                pipeline TEXT NOT NULL,
                topic TEXT NOT NULL,
                has_key INTEGER NOT NULL,
                key BLOB NOT NULL,
                checkpoint INTEGER NOT NULL,
                idx INTEGER NOT NULL,
                value BLOB,
                headers TEXT NOT NULL,
                timestamp_ms INTEGER,
                stored_ms INTEGER NOT NULL,
                PRIMARY KEY (pipeline, topic, has_key, key, checkpoint, idx)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS marks (
                pipeline TEXT NOT NULL,
                writer TEXT NOT NULL,
                lineage TEXT NOT NULL,
                checkpoint INTEGER NOT NULL,
                PRIMARY KEY (pipeline, writer)
            ) WITHOUT ROWID;",
        )
        .map_err(unavailable)?;
        Ok(LocalFallbackStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
    }
}

/// The key columns of a stream.
fn key_of(stream: &StreamId) -> (i64, Vec<u8>) {
    match &stream.key {
        Some(k) => (1, k.clone()),
        None => (0, Vec::new()),
    }
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl FallbackStore for LocalFallbackStore {
    async fn append(&self, records: &[FallbackRecord]) -> Result<()> {
        let records = records.to_vec();
        self.blocking(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO records
                     (pipeline, topic, has_key, key, checkpoint, idx, value, headers, timestamp_ms, stored_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for r in &records {
                    let (has_key, key) = key_of(&r.stream);
                    let headers = serde_json::to_string(&r.headers)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                    insert.execute(params![
                        r.stream.pipeline,
                        r.stream.topic,
                        has_key,
                        key,
                        as_i64(r.seq.checkpoint),
                        as_i64(r.seq.index),
                        r.value,
                        headers,
                        r.timestamp_ms,
                        r.stored_ms,
                    ])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn streams(&self, pipeline: &str) -> Result<Vec<StreamId>> {
        let pipeline = pipeline.to_string();
        self.blocking(move |conn| {
            let mut q = conn.prepare_cached(
                "SELECT DISTINCT topic, has_key, key FROM records WHERE pipeline = ?1
                 ORDER BY topic, has_key, key",
            )?;
            let rows = q.query_map(params![pipeline], |r| {
                Ok(StreamId {
                    pipeline: pipeline.clone(),
                    topic: r.get(0)?,
                    key: (r.get::<_, i64>(1)? == 1).then(|| r.get(2)).transpose()?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn oldest(&self, stream: &StreamId, limit: usize) -> Result<Vec<FallbackRecord>> {
        let stream = stream.clone();
        let rows = self
            .blocking(move |conn| {
                let (has_key, key) = key_of(&stream);
                let mut q = conn.prepare_cached(
                    "SELECT checkpoint, idx, value, headers, timestamp_ms, stored_ms FROM records
                     WHERE pipeline = ?1 AND topic = ?2 AND has_key = ?3 AND key = ?4
                     ORDER BY checkpoint, idx LIMIT ?5",
                )?;
                let rows = q.query_map(
                    params![stream.pipeline, stream.topic, has_key, key, limit as i64],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Option<Vec<u8>>>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, Option<i64>>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    },
                )?;
                Ok((stream, rows.collect::<rusqlite::Result<Vec<_>>>()?))
            })
            .await?;
        let (stream, rows) = rows;
        rows.into_iter()
            .map(
                |(checkpoint, idx, value, headers, timestamp_ms, stored_ms)| {
                    Ok(FallbackRecord {
                        stream: stream.clone(),
                        seq: Seq {
                            checkpoint: checkpoint as u64,
                            index: idx as u64,
                        },
                        value,
                        headers: serde_json::from_str(&headers).map_err(|e| {
                            FallbackError::Corrupt {
                                store: STORE,
                                message: format!("headers: {e}"),
                            }
                        })?,
                        timestamp_ms,
                        stored_ms,
                    })
                },
            )
            .collect()
    }

    async fn delete_through(&self, stream: &StreamId, through: Seq) -> Result<()> {
        let stream = stream.clone();
        self.blocking(move |conn| {
            let (has_key, key) = key_of(&stream);
            conn.execute(
                "DELETE FROM records
                 WHERE pipeline = ?1 AND topic = ?2 AND has_key = ?3 AND key = ?4
                   AND (checkpoint, idx) <= (?5, ?6)",
                params![
                    stream.pipeline,
                    stream.topic,
                    has_key,
                    key,
                    as_i64(through.checkpoint),
                    as_i64(through.index)
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn backlog(&self, pipeline: Option<&str>) -> Result<Vec<Backlog>> {
        let pipeline = pipeline.map(str::to_string);
        self.blocking(move |conn| {
            let mut q = conn.prepare_cached(
                "SELECT pipeline, topic, count(*), count(DISTINCT has_key || ':' || hex(key)), min(stored_ms)
                 FROM records WHERE ?1 IS NULL OR pipeline = ?1
                 GROUP BY pipeline, topic ORDER BY pipeline, topic",
            )?;
            let rows = q.query_map(params![pipeline], |r| {
                Ok(Backlog {
                    pipeline: r.get(0)?,
                    topic: r.get(1)?,
                    records: r.get::<_, i64>(2)? as u64,
                    keys: r.get::<_, i64>(3)? as u64,
                    oldest_stored_ms: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn mark(&self, mark: &DeliveryMark) -> Result<()> {
        let m = mark.clone();
        self.blocking(move |conn| {
            conn.execute(
                "INSERT INTO marks (pipeline, writer, lineage, checkpoint) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (pipeline, writer) DO UPDATE
                 SET lineage = excluded.lineage, checkpoint = excluded.checkpoint
                 WHERE excluded.lineage <> marks.lineage OR excluded.checkpoint > marks.checkpoint",
                params![m.pipeline, m.writer, m.lineage, as_i64(m.checkpoint)],
            )
            .map(|_| ())
        })
        .await
    }

    async fn marks(&self, pipeline: &str) -> Result<Vec<DeliveryMark>> {
        let pipeline = pipeline.to_string();
        self.blocking(move |conn| {
            let mut q = conn.prepare_cached(
                "SELECT writer, lineage, checkpoint FROM marks WHERE pipeline = ?1 ORDER BY writer",
            )?;
            let rows = q.query_map(params![pipeline], |r| {
                Ok(DeliveryMark {
                    pipeline: pipeline.clone(),
                    writer: r.get(0)?,
                    lineage: r.get(1)?,
                    checkpoint: r.get::<_, i64>(2)? as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> (Box<dyn FallbackStore>, Arc<tempfile::TempDir>) {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let store = LocalFallbackStore::open(dir.path().join("fallback.sqlite")).unwrap();
        (Box::new(store), dir)
    }

    async fn twin(dir: &Arc<tempfile::TempDir>) -> Box<dyn FallbackStore> {
        Box::new(LocalFallbackStore::open(dir.path().join("fallback.sqlite")).unwrap())
    }

    crate::fallback::conformance::fallback_store_conformance!(fresh(), twin);

    /// A record appended survives the process: the file is read again by a new handle.
    #[tokio::test]
    async fn what_an_append_stored_is_read_by_another_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.sqlite");
        let a = LocalFallbackStore::open(&path).unwrap();
        let r = crate::fallback::conformance::record("p", "t", Some(b"k"), 1, 0);
        a.append(std::slice::from_ref(&r)).await.unwrap();
        drop(a);
        let b = LocalFallbackStore::open(&path).unwrap();
        assert_eq!(b.oldest(&r.stream, 10).await.unwrap(), vec![r]);
    }
}
