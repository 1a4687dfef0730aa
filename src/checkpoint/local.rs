//! Checkpoints in a local directory (the embedded default):
//! `DIR/<id>/<node>/<partition>@<writer>` blobs, `DIR/<id>.writer` (whose blobs the
//! checkpoint committed) and `DIR/<id>.json` metadata.
//!
//! Every file is written to a temporary name, synced and renamed into place, so a
//! crash leaves either the old state or the new one; the metadata file is created
//! only if absent, after checking which checkpoint is latest. Blobs are kept per
//! writer (a random token per store handle), so two processes of one pipeline that
//! checkpoint the same id never overwrite each other's state.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{CheckpointError, CheckpointMeta, CheckpointStore, Result};

#[derive(Debug, Clone)]
pub struct LocalCheckpointStore {
    dir: PathBuf,
    writer: String,
}

/// A random token naming one store handle's blobs.
pub(super) fn writer_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:016x}", h.finish())
}

impl LocalCheckpointStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_writer(dir, writer_token())
    }

    /// A handle writing blobs as `writer`.
    pub(super) fn with_writer(dir: impl Into<PathBuf>, writer: String) -> Self {
        LocalCheckpointStore {
            dir: dir.into(),
            writer,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn meta_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.json"))
    }

    fn blob_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}"))
    }

    /// Blob `name` of checkpoint `id` as `writer` wrote it; with `None`, the only
    /// writer's, or the one whose blobs the checkpoint committed.
    pub(super) async fn get_blob_of(
        &self,
        id: u64,
        name: &str,
        writer: Option<&str>,
    ) -> Result<Vec<u8>> {
        let path = self.blob_dir(id).join(name);
        let (parent, file) = match (path.parent(), path.file_name().and_then(|f| f.to_str())) {
            (Some(p), Some(f)) => (p.to_path_buf(), format!("{f}@")),
            _ => return Err(storage(&path, "not a blob name")),
        };
        // Every writer's version of the blob.
        let mut found = Vec::new();
        if let Ok(mut entries) = tokio::fs::read_dir(&parent).await {
            while let Some(e) = entries
                .next_entry()
                .await
                .map_err(|e| storage(&parent, e))?
            {
                if let Some(w) = e.file_name().to_str().and_then(|n| n.strip_prefix(&file))
                    && !w.ends_with(".tmp")
                {
                    found.push(w.to_string());
                }
            }
        }
        let writer = match (writer, found.len()) {
            (Some(w), _) => w.to_string(),
            (None, 0) => return Err(storage(&path, "no such blob")),
            (None, 1) => found.remove(0),
            (None, _) => {
                let marker = self.dir.join(format!("{id:020}.writer"));
                tokio::fs::read_to_string(&marker).await.map_err(|e| {
                    storage(&marker, format!("several writers and none committed: {e}"))
                })?
            }
        };
        let path = parent.join(format!("{file}{}", writer.trim()));
        tokio::fs::read(&path).await.map_err(|e| storage(&path, e))
    }
}

fn storage(path: &Path, e: impl std::fmt::Display) -> crate::Error {
    CheckpointError::Storage(format!("{}: {e}", path.display())).into()
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
async fn write_atomic(path: PathBuf, bytes: Vec<u8>) -> Result<()> {
    tokio::task::spawn_blocking(move || -> Result<()> {
        use std::io::Write;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| storage(parent, e))?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| storage(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| storage(&tmp, e))?;
        f.sync_all().map_err(|e| storage(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| storage(&path, e))?;
        Ok(())
    })
    .await
    .map_err(|e| storage(Path::new("-"), e))?
}

#[async_trait]
impl CheckpointStore for LocalCheckpointStore {
    async fn put_blob(&self, id: u64, name: &str, bytes: Vec<u8>) -> Result<()> {
        write_atomic(
            self.blob_dir(id).join(format!("{name}@{}", self.writer)),
            bytes,
        )
        .await
    }

    async fn get_blob(&self, id: u64, name: &str) -> Result<Vec<u8>> {
        self.get_blob_of(id, name, None).await
    }

    async fn commit(&self, meta: &CheckpointMeta, previous: Option<u64>) -> Result<()> {
        let found = self.list().await?.last().map(|m| m.id);
        if found != previous {
            return Err(CheckpointError::Conflict {
                id: meta.id,
                expected: previous,
                found,
            }
            .into());
        }
        let path = self.meta_path(meta.id);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Err(CheckpointError::Conflict {
                id: meta.id,
                expected: previous,
                found: Some(meta.id),
            }
            .into());
        }
        let json = serde_json::to_vec_pretty(meta).map_err(|e| storage(&path, e))?;
        write_atomic(
            self.dir.join(format!("{:020}.writer", meta.id)),
            self.writer.clone().into_bytes(),
        )
        .await?;
        write_atomic(path, json).await
    }

    async fn list(&self) -> Result<Vec<CheckpointMeta>> {
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(storage(&self.dir, e)),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| storage(&self.dir, e))?
        {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "json") {
                let bytes = match tokio::fs::read(&path).await {
                    Ok(bytes) => bytes,
                    // Deleted meanwhile (another process's garbage collection).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(storage(&path, e)),
                };
                let meta: CheckpointMeta = serde_json::from_slice(&bytes)
                    .map_err(|e| CheckpointError::Corrupt(0, format!("{}: {e}", path.display())))?;
                out.push(meta);
            }
        }
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    async fn delete_meta(&self, id: u64) -> Result<()> {
        let meta = self.meta_path(id);
        match tokio::fs::remove_file(&meta).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(storage(&meta, e)),
        }
    }

    async fn delete_blobs(&self, id: u64) -> Result<()> {
        let _ = tokio::fs::remove_file(self.dir.join(format!("{id:020}.writer"))).await;
        let blobs = self.blob_dir(id);
        match tokio::fs::remove_dir_all(&blobs).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(storage(&blobs, e)),
        }
    }

    async fn orphans(&self) -> Result<Vec<u64>> {
        let committed: std::collections::BTreeSet<u64> =
            self.list().await?.iter().map(|m| m.id).collect();
        let mut out = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return Ok(out);
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| storage(&self.dir, e))?
        {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if entry.path().is_dir() && !committed.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a fresh directory, and the directory (kept while the test runs).
    async fn fresh() -> (Box<dyn CheckpointStore>, std::sync::Arc<tempfile::TempDir>) {
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        (Box::new(LocalCheckpointStore::new(dir.path())), dir)
    }

    async fn twin(dir: &std::sync::Arc<tempfile::TempDir>) -> Box<dyn CheckpointStore> {
        Box::new(LocalCheckpointStore::new(dir.path()))
    }

    crate::checkpoint::conformance::checkpoint_store_conformance!(fresh(), twin);
}
