//! Checkpoints: consistent snapshots of a running pipeline, taken while it runs, from
//! which it resumes after a crash with nothing lost and nothing doubled.
//!
//! Owns the [`CheckpointStore`] trait (where checkpoints are kept: a local directory,
//! `local.rs`, or DynamoDB, `dynamodb.rs`; both pass the properties in
//! `conformance.rs`), checkpoint metadata, and the coordinator that triggers a
//! checkpoint, collects every task's snapshot and commits it
//! ([`coordinator`]). The engine carries the barriers (`engine::Message::Barrier`).
//!
//! Invariants:
//! - A checkpoint is *complete* only once its metadata is committed, after every task
//!   (each source, operator and sink partition) has acknowledged it; a crash before
//!   that leaves blobs without metadata, which are never read and are deleted later.
//! - Commits are conditional: a checkpoint commits only on top of the checkpoint the
//!   coordinator last saw committed, so two writers cannot interleave checkpoints of one
//!   pipeline.
//! - Blobs are opaque bytes named by task (`node/partition`); nothing in the trait
//!   assumes a filesystem.
//! - Sinks make their output visible only for committed checkpoints (two-phase
//!   commit: `Sink::pre_commit` at the barrier, `Sink::commit` after the metadata is
//!   committed, `Sink::restore` on recovery commits what the restored checkpoint
//!   pre-committed and discards the rest).

#[cfg(test)]
pub(crate) mod conformance;
pub mod coordinator;
mod dynamodb;
pub mod fault;
mod local;

pub use coordinator::{CheckpointSettings, Coordinator, SavepointRequest, Share, TaskCheckpoints};
pub use dynamodb::{BlobPlacement, DynamoCheckpointStore};
pub use local::LocalCheckpointStore;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Errors of checkpoint storage and recovery.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint storage: {0}")]
    Storage(String),
    /// A conditional commit found another checkpoint committed meanwhile.
    #[error(
        "checkpoint {id} not committed: the latest committed checkpoint is {found:?}, expected {expected:?} (another writer?)"
    )]
    Conflict {
        id: u64,
        expected: Option<u64>,
        found: Option<u64>,
    },
    /// The checkpoint to restore does not fit the pipeline being started.
    #[error("cannot restore checkpoint {id}: {reason}")]
    Incompatible { id: u64, reason: String },
    #[error("checkpoint {0}: {1}")]
    Corrupt(u64, String),
    /// `savepoint delete` named a regular checkpoint: the retention deletes those.
    #[error(
        "checkpoint {id} of {pipeline} is not a savepoint: regular checkpoints are deleted by the retention (checkpoint.retain), not by hand"
    )]
    NotASavepoint { pipeline: String, id: u64 },
    /// `savepoint delete` named no savepoint (or a name several savepoints share).
    #[error("{reason}; the savepoints of {pipeline} in {location}: {savepoints}")]
    SavepointNotFound {
        pipeline: String,
        reason: String,
        location: String,
        /// `name (checkpoint id)`, comma-separated, or `none`.
        savepoints: String,
    },
    /// `savepoint delete` without `--force` of the checkpoint a restart resumes from.
    #[error(
        "savepoint {name} (checkpoint {id}) is the latest checkpoint of {pipeline}: a restart would resume from it, and deleting it would lose that state ({fallback}); let a newer checkpoint commit first, or pass --force"
    )]
    SavepointInUse {
        pipeline: String,
        id: u64,
        name: String,
        /// What a restart would resume from instead.
        fallback: String,
    },
}

impl CheckpointError {
    pub fn code(&self) -> &'static str {
        match self {
            CheckpointError::Storage(_) => "CHK001",
            CheckpointError::Conflict { .. } => "CHK002",
            CheckpointError::Incompatible { .. } => "CHK003",
            CheckpointError::Corrupt(..) => "CHK004",
            CheckpointError::NotASavepoint { .. } => "CHK005",
            CheckpointError::SavepointNotFound { .. } => "CHK006",
            CheckpointError::SavepointInUse { .. } => "CHK007",
        }
    }
}

pub type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// What a committed checkpoint holds: enough to restore every task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    pub id: u64,
    pub pipeline: String,
    /// When the checkpoint was triggered, ms since the epoch.
    pub started_ms: i64,
    /// From trigger to commit.
    pub duration_ms: u64,
    /// Total size of its blobs.
    pub bytes: u64,
    /// Each node's parallelism when it was taken.
    pub parallelism: BTreeMap<String, usize>,
    /// The blobs written, by task name (`node/partition`): tasks without state have
    /// none.
    pub blobs: Vec<String>,
    /// Tasks whose state is incremental: the checkpoints whose blob of the task's
    /// name make up its state, oldest first (a full snapshot, then deltas; the last is
    /// this checkpoint). A task not named here has its whole state in this
    /// checkpoint's blob. Garbage collection keeps every blob a kept checkpoint names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub chains: BTreeMap<String, Vec<u64>>,
    /// `Some(name)` for a savepoint (taken on request, kept until deleted).
    #[serde(default)]
    pub savepoint: Option<String>,
    /// What each stateful operator was (its description: window, keys, aggregates),
    /// so a changed pipeline is refused instead of misreading the state.
    #[serde(default)]
    pub operators: BTreeMap<String, String>,
}

/// The name of one task's blob.
pub fn task_blob(node: &str, partition: usize) -> String {
    format!("{node}/{partition}")
}

/// Where checkpoints are kept. Blobs first, then the metadata that makes a checkpoint
/// complete; readers only ever see complete checkpoints.
#[async_trait]
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// Writes blob `name` of checkpoint `id` (overwriting an earlier attempt's).
    async fn put_blob(&self, id: u64, name: &str, bytes: Vec<u8>) -> Result<()>;
    /// Reads blob `name` of checkpoint `id`.
    async fn get_blob(&self, id: u64, name: &str) -> Result<Vec<u8>>;
    /// Commits `meta`, atomically, only if the latest committed checkpoint is still
    /// `previous` ([`CheckpointError::Conflict`] otherwise).
    async fn commit(&self, meta: &CheckpointMeta, previous: Option<u64>) -> Result<()>;
    /// The committed checkpoints, oldest first.
    async fn list(&self) -> Result<Vec<CheckpointMeta>>;
    /// Deletes checkpoint `id`'s metadata: it is no longer listed. Its blobs stay
    /// (a later checkpoint may build on them) until [`delete_blobs`].
    ///
    /// [`delete_blobs`]: CheckpointStore::delete_blobs
    async fn delete_meta(&self, id: u64) -> Result<()>;
    /// Deletes the blobs of checkpoint `id`, which has no metadata.
    async fn delete_blobs(&self, id: u64) -> Result<()>;
    /// Ids that have blobs but no metadata (abandoned attempts, deleted checkpoints),
    /// for cleanup.
    async fn orphans(&self) -> Result<Vec<u64>>;
}

impl CheckpointMeta {
    /// A committed checkpoint's metadata for tests: one task `node/0` with a blob,
    /// whose state is the chain `chain` (empty: its own blob alone).
    #[cfg(test)]
    pub(crate) fn for_test(id: u64, node: &str, chain: &[u64]) -> Self {
        let task = task_blob(node, 0);
        CheckpointMeta {
            id,
            pipeline: "p".into(),
            started_ms: 0,
            duration_ms: 1,
            bytes: 3,
            parallelism: [(node.to_string(), 1)].into(),
            blobs: vec![task.clone()],
            savepoint: None,
            operators: Default::default(),
            chains: if chain.is_empty() {
                Default::default()
            } else {
                [(task, chain.to_vec())].into()
            },
        }
    }

    /// The checkpoints whose blob `task` (a task name) makes up the task's state, oldest
    /// first; empty when the task had no state.
    pub fn chain(&self, task: &str) -> Vec<u64> {
        match self.chains.get(task) {
            Some(chain) => chain.clone(),
            None if self.blobs.iter().any(|b| b == task) => vec![self.id],
            None => Vec::new(),
        }
    }
}

/// The latest committed checkpoint, if any.
pub async fn latest(store: &dyn CheckpointStore) -> Result<Option<CheckpointMeta>> {
    Ok(store.list().await?.pop())
}
