//! The checkpoint coordinator of one running pipeline, and each task's handle to it.
//!
//! Every `interval` the coordinator triggers checkpoint `n`: source tasks see it at
//! their next safe point, send their position and a barrier downstream; operator and
//! sink tasks snapshot once the barrier has arrived on every input (aligned) and
//! forward it. Each task acknowledges with its blob; when every task has, the
//! coordinator writes the blobs, commits the metadata and tells the sinks, which
//! then make that checkpoint's output visible. One checkpoint is in flight at a time;
//! one that does not complete within its timeout is abandoned (its blobs removed
//! later). Once a task has finished (its input ended), no further checkpoint starts:
//! the end of input commits everything itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::{CheckpointMeta, CheckpointStore, Result};
use crate::state::snapshot::StateBlob;

/// How a pipeline checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    pub interval: Duration,
    pub store: Arc<dyn CheckpointStore>,
    /// Completed checkpoints kept (savepoints are kept until deleted).
    pub retain: usize,
    /// `true`: sinks make output visible only for committed checkpoints; `false`
    /// (at-least-once): they commit at the barrier, without waiting.
    pub exactly_once: bool,
    /// The checkpoint to resume from.
    pub restore: Option<CheckpointMeta>,
}

/// What a task tells the coordinator.
#[derive(Debug)]
pub(crate) enum Report {
    /// Checkpoint `id` is taken on this task; its state (if any). A delta builds on
    /// the task's state in checkpoint `base`.
    Ack {
        id: u64,
        task: String,
        blob: Option<StateBlob>,
        base: Option<u64>,
    },
    /// This task's input ended. With `last` (its state at the end: a source's final
    /// position, an operator's state after it emitted everything, none for a sink that
    /// published everything), later checkpoints take that state without waiting for
    /// the task; without it (a stopped sink, or a source that cannot say where it
    /// ended) no checkpoint can complete any more.
    Finished {
        task: String,
        last: Option<Option<StateBlob>>,
    },
    /// A task waits for the next checkpoint (a sink at the end of its input): start
    /// it now rather than at the end of the interval.
    Soon,
}

/// Which of a node's states in the restored checkpoint a task takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Every state of the node (the task keeps what is its own: its key groups, its
    /// Kafka partitions).
    All,
    /// The states of old partitions `q` with `q mod parallelism = partition` (sinks:
    /// each old task's pending output committed by exactly one new task).
    Modulo,
}

/// A request for a savepoint: a checkpoint taken now, named, kept until deleted.
#[derive(Debug)]
pub struct SavepointRequest {
    pub name: Option<String>,
    /// The committed checkpoint's id, or why none was taken.
    pub reply: oneshot::Sender<std::result::Result<u64, String>>,
}

/// A task's side of checkpointing.
#[derive(Clone)]
pub struct TaskCheckpoints {
    name: String,
    node: String,
    partition: usize,
    parallelism: usize,
    triggered: watch::Receiver<u64>,
    committed: watch::Receiver<u64>,
    reports: mpsc::UnboundedSender<Report>,
    /// The checkpoint this task resumes from.
    restore: Option<Arc<CheckpointMeta>>,
    store: Arc<dyn CheckpointStore>,
    /// The last checkpoint this (source) task took.
    taken: u64,
    /// The last checkpoint this task acknowledged since it started.
    snapshotted: Option<u64>,
    pub exactly_once: bool,
}

impl TaskCheckpoints {
    /// Aborts here if a fault is injected at `phase` of checkpoint `id` ([`super::fault`]).
    pub(crate) fn fault_point(&self, phase: super::fault::Phase, id: Option<u64>) {
        super::fault::point(phase, id, &self.name);
    }

    /// A checkpoint triggered since this task's last one (sources).
    pub fn due(&self) -> Option<u64> {
        let t = *self.triggered.borrow();
        (t > self.taken).then_some(t)
    }

    /// Waits until a checkpoint is triggered (sources that wait for input).
    pub async fn triggered(&mut self) -> u64 {
        match self.next_trigger().await {
            Some(t) => t,
            None => std::future::pending().await,
        }
    }

    /// The next checkpoint triggered since this task's last one; `None` once the
    /// coordinator is gone (no more checkpoints).
    pub async fn next_trigger(&mut self) -> Option<u64> {
        let taken = self.taken;
        self.triggered
            .wait_for(|t| *t > taken)
            .await
            .map(|t| *t)
            .ok()
    }

    /// Acknowledges checkpoint `id` with this task's state (a delta builds on this
    /// task's previous acknowledgement).
    pub fn ack(&mut self, id: u64, blob: Option<StateBlob>) {
        self.taken = self.taken.max(id);
        let base = self
            .snapshotted
            .filter(|_| blob.as_ref().is_some_and(|b| b.is_delta()));
        self.snapshotted = Some(id);
        let _ = self.reports.send(Report::Ack {
            id,
            task: self.name.clone(),
            blob,
            base,
        });
    }

    /// Whether the last snapshot this task acknowledged since it started is part of a
    /// committed checkpoint, so that the next may be a delta on it
    /// ([`Operator::snapshot_changes`](crate::engine::Operator::snapshot_changes)).
    pub fn previous_committed(&self) -> bool {
        self.snapshotted
            .is_some_and(|id| *self.committed.borrow() >= id)
    }

    /// Asks for the next checkpoint to start now (if none is in flight) rather than
    /// at the end of the interval.
    pub(crate) fn checkpoint_soon(&self) {
        let _ = self.reports.send(Report::Soon);
    }

    /// This task's input ended; `last`: see [`Report::Finished`].
    pub(crate) fn finished(&self, last: Option<Option<StateBlob>>) {
        let _ = self.reports.send(Report::Finished {
            task: self.name.clone(),
            last,
        });
    }

    /// The states this task resumes from, with the partition each was taken on (see
    /// [`restored_chains`](Self::restored_chains)), for tasks that never write deltas.
    pub async fn restored(&self, share: Share) -> Result<Vec<(usize, Vec<u8>)>> {
        let (partitions, chains): (Vec<usize>, Vec<_>) =
            self.restored_chains(share).await?.into_iter().unzip();
        Ok(partitions
            .into_iter()
            .zip(crate::state::snapshot::full_snapshots(chains)?)
            .collect())
    }

    /// The states this task resumes from, each with the partition it was taken on and
    /// as a chain (a full snapshot and the deltas on it): its own when the node's
    /// parallelism is unchanged; after rescaling, the node's states that `share` gives
    /// it. Empty without a restored checkpoint.
    pub async fn restored_chains(
        &self,
        share: Share,
    ) -> Result<Vec<(usize, crate::state::snapshot::Chain)>> {
        let Some(meta) = &self.restore else {
            return Ok(Vec::new());
        };
        let old = meta.parallelism.get(&self.node).copied().unwrap_or(0);
        let wanted: Vec<usize> = if old == self.parallelism {
            vec![self.partition]
        } else {
            match share {
                Share::All => (0..old).collect(),
                Share::Modulo => (0..old)
                    .filter(|q| q % self.parallelism == self.partition)
                    .collect(),
            }
        };
        let mut out = Vec::new();
        for q in wanted {
            let name = super::task_blob(&self.node, q);
            let mut chain = Vec::new();
            for id in meta.chain(&name) {
                chain.push(self.store.get_blob(id, &name).await?);
            }
            if !chain.is_empty() {
                out.push((q, chain));
            }
        }
        Ok(out)
    }

    /// Whether this task resumes from a checkpoint.
    pub fn restoring(&self) -> bool {
        self.restore.is_some()
    }

    /// Whether this task's node ran at another parallelism in the restored checkpoint.
    pub fn rescaled(&self) -> bool {
        self.restore
            .as_ref()
            .is_some_and(|m| m.parallelism.get(&self.node).copied() != Some(self.parallelism))
    }

    /// The latest committed checkpoint id (sinks commit up to it).
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }
}

/// The coordinator: created with the runtime, run as its own task.
pub struct Coordinator {
    settings: CheckpointSettings,
    pipeline: String,
    parallelism: BTreeMap<String, usize>,
    operators: BTreeMap<String, String>,
    tasks: usize,
    triggered: watch::Sender<u64>,
    committed: watch::Sender<u64>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    savepoints_tx: mpsc::Sender<SavepointRequest>,
    savepoints: mpsc::Receiver<SavepointRequest>,
}

impl Coordinator {
    /// For a pipeline whose nodes have these parallelisms; `rescalable(node)` says
    /// whether a node's state can be redistributed when its parallelism changed.
    pub fn new(
        settings: CheckpointSettings,
        pipeline: &str,
        parallelism: BTreeMap<String, usize>,
        operators: BTreeMap<String, String>,
        rescalable: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        if let Some(meta) = &settings.restore {
            let mut reason = describe_difference(&meta.parallelism, &parallelism, &rescalable);
            for (node, then) in &meta.operators {
                if let Some(now) = operators.get(node)
                    && now != then
                {
                    if !reason.is_empty() {
                        reason.push_str("; ");
                    }
                    reason.push_str(&format!(
                        "operator {node} changed: its state was taken as `{then}`, it is now `{now}`"
                    ));
                }
            }
            if !reason.is_empty() {
                return Err(super::CheckpointError::Incompatible {
                    id: meta.id,
                    reason,
                }
                .into());
            }
        }
        let last = settings.restore.as_ref().map_or(0, |m| m.id);
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (savepoints_tx, savepoints) = mpsc::channel(4);
        Ok(Coordinator {
            savepoints_tx,
            savepoints,
            tasks: parallelism.values().sum(),
            triggered: watch::channel(last).0,
            committed: watch::channel(last).0,
            settings,
            pipeline: pipeline.to_string(),
            parallelism,
            operators,
            reports_tx,
            reports,
        })
    }

    /// Where savepoints are requested while the pipeline runs.
    pub fn savepoints(&self) -> mpsc::Sender<SavepointRequest> {
        self.savepoints_tx.clone()
    }

    /// The handle of task `node`/`partition`.
    pub fn task(&self, node: &str, partition: usize) -> TaskCheckpoints {
        let name = super::task_blob(node, partition);
        let restore = self.settings.restore.clone().map(Arc::new);
        TaskCheckpoints {
            node: node.to_string(),
            partition,
            parallelism: self.parallelism.get(node).copied().unwrap_or(1),
            triggered: self.triggered.subscribe(),
            committed: self.committed.subscribe(),
            reports: self.reports_tx.clone(),
            restore,
            store: self.settings.store.clone(),
            taken: self.settings.restore.as_ref().map_or(0, |m| m.id),
            snapshotted: None,
            exactly_once: self.settings.exactly_once,
            name,
        }
    }

    /// Takes checkpoints until a task finishes or every task is gone.
    pub async fn run(mut self) -> Result<()> {
        drop(self.reports_tx);
        let store = self.settings.store.clone();
        // The latest committed checkpoint: new ones commit on top of it, and tasks'
        // deltas build on its states.
        let mut latest = super::latest(store.as_ref()).await?;
        let mut next = latest
            .as_ref()
            .map_or(0, |m| m.id)
            .max(*self.triggered.borrow())
            + 1;
        let timeout = (self.settings.interval * 10).max(Duration::from_secs(60));
        let metrics = crate::metrics::checkpoints(&self.pipeline);
        let mut last_success = Instant::now();
        drop(self.savepoints_tx);
        let mut requested: Option<SavepointRequest> = None;
        let finished = |r: Option<SavepointRequest>| {
            if let Some(r) = r {
                let _ = r.reply.send(Err("the pipeline's input ended".into()));
            }
            Ok(())
        };
        // Tasks that finished with a known last state: part of every later checkpoint.
        let mut done: BTreeMap<String, Option<StateBlob>> = BTreeMap::new();
        loop {
            let wait = tokio::time::sleep(self.settings.interval);
            tokio::pin!(wait);
            // Between checkpoints, a task that finishes ends checkpointing; a
            // savepoint request, or a task waiting for a checkpoint, starts one at once.
            while requested.is_none() {
                tokio::select! {
                    _ = &mut wait => break,
                    r = self.reports.recv() => match r {
                        None | Some(Report::Finished { last: None, .. }) => return finished(requested),
                        Some(Report::Finished { task, last: Some(last) }) => {
                            done.insert(task, last);
                            if done.len() == self.tasks {
                                return finished(requested);
                            }
                        }
                        Some(Report::Soon) => break,
                        Some(Report::Ack { .. }) => {}
                    },
                    Some(req) = self.savepoints.recv() => requested = Some(req),
                }
                metrics.age.set(last_success.elapsed().as_secs_f64());
            }
            let id = next;
            next += 1;
            let started = Instant::now();
            let started_ms = chrono::Utc::now().timestamp_millis();
            let _ = self.triggered.send(id);
            // Every task's state for this checkpoint: finished tasks' last ones now,
            // the others' as they acknowledge; and which ones are deltas on `latest`.
            let mut states: BTreeMap<String, Option<StateBlob>> = done.clone();
            let mut chains: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut unchained = None;
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let complete = loop {
                if states.len() == self.tasks {
                    break true;
                }
                tokio::select! {
                    r = self.reports.recv() => match r {
                        None | Some(Report::Finished { last: None, .. }) => return finished(requested),
                        Some(Report::Finished { task, last: Some(last) }) => {
                            // A task that ends before acknowledging: its last state
                            // covers this checkpoint too.
                            states.entry(task.clone()).or_insert_with(|| last.clone());
                            done.insert(task, last);
                        }
                        Some(Report::Ack { id: a, task, blob, base }) if a == id => {
                            if blob.as_ref().is_some_and(|b| b.is_delta()) {
                                let mut chain = match (&latest, base) {
                                    (Some(l), Some(b)) if l.id == b => l.chain(&task),
                                    _ => Vec::new(),
                                };
                                if chain.is_empty() {
                                    unchained.get_or_insert_with(|| task.clone());
                                }
                                chain.push(id);
                                chains.insert(task.clone(), chain);
                            }
                            states.insert(task, blob);
                        }
                        Some(Report::Ack { .. } | Report::Soon) => {}
                    },
                    _ = &mut deadline => break false,
                }
            };
            let acked = states.len();
            if let Some(task) = unchained {
                // Cannot happen while tasks only send deltas on committed snapshots;
                // abandoning makes their next snapshot a full one.
                tracing::warn!(pipeline = %self.pipeline, checkpoint = id, task,
                    "checkpoint abandoned: a task's delta does not build on the latest committed checkpoint");
                metrics.failed.increment(1);
                if let Some(r) = requested.take() {
                    let _ = r.reply.send(Err(format!(
                        "checkpoint {id} was abandoned: {task}'s state could not be chained"
                    )));
                }
                continue;
            }
            let blobs: Vec<(String, StateBlob)> = states
                .into_iter()
                .filter_map(|(task, blob)| blob.map(|b| (task, b)))
                .collect();
            if !complete {
                tracing::warn!(pipeline = %self.pipeline, checkpoint = id, acked, tasks = self.tasks,
                    "checkpoint abandoned: not every task acknowledged it in time");
                metrics.failed.increment(1);
                if let Some(r) = requested.take() {
                    let _ = r.reply.send(Err(format!(
                        "checkpoint {id} was abandoned: {acked} of {} tasks acknowledged it in time",
                        self.tasks
                    )));
                }
                continue;
            }
            let alignment = started.elapsed();
            let mut bytes = 0u64;
            let mut names = Vec::with_capacity(blobs.len());
            for (name, blob) in blobs {
                // Operators' Arrow state is encoded here, off their tasks.
                let blob = tokio::task::spawn_blocking(move || blob.into_bytes())
                    .await
                    .map_err(|e| {
                        super::CheckpointError::Storage(format!("encoding {name}'s state: {e}"))
                    })??;
                bytes += blob.len() as u64;
                store.put_blob(id, &name, blob).await?;
                names.push(name);
            }
            names.sort();
            let meta = CheckpointMeta {
                id,
                pipeline: self.pipeline.clone(),
                started_ms,
                duration_ms: started.elapsed().as_millis() as u64,
                bytes,
                parallelism: self.parallelism.clone(),
                blobs: names,
                savepoint: requested
                    .as_ref()
                    .map(|r| r.name.clone().unwrap_or_else(|| format!("savepoint-{id}"))),
                operators: self.operators.clone(),
                chains,
            };
            super::fault::point(super::fault::Phase::BlobsWritten, Some(id), &self.pipeline);
            store.commit(&meta, latest.as_ref().map(|m| m.id)).await?;
            super::fault::point(
                super::fault::Phase::MetadataCommitted,
                Some(id),
                &self.pipeline,
            );
            if let Some(r) = requested.take() {
                tracing::info!(pipeline = %self.pipeline, checkpoint = id,
                    savepoint = meta.savepoint.as_deref().unwrap_or(""), "savepoint taken");
                let _ = r.reply.send(Ok(id));
            }
            let _ = self.committed.send(id);
            last_success = Instant::now();
            metrics.completed.increment(1);
            metrics.duration.record(started.elapsed().as_secs_f64());
            metrics.alignment.record(alignment.as_secs_f64());
            metrics.size.set(bytes as f64);
            metrics.age.set(0.0);
            tracing::debug!(pipeline = %self.pipeline, checkpoint = id, bytes,
                duration_ms = meta.duration_ms, "checkpoint committed");
            latest = Some(meta);
            collect_garbage(store.as_ref(), self.settings.retain).await;
        }
    }
}

/// Deletes committed checkpoints beyond the newest `retain` (savepoints stay), then
/// the blobs of deleted checkpoints and abandoned attempts, except those a kept
/// checkpoint's state still builds on; failures are logged, never fatal.
pub(crate) async fn collect_garbage(store: &dyn CheckpointStore, retain: usize) {
    let result = async {
        let mut all = store.list().await?;
        let newest = all.last().map(|m| m.id);
        let regular: Vec<u64> = all
            .iter()
            .filter(|m| m.savepoint.is_none())
            .map(|m| m.id)
            .collect();
        let old = &regular[..regular.len().saturating_sub(retain.max(1))];
        for id in old {
            store.delete_meta(*id).await?;
        }
        all.retain(|m| !old.contains(&m.id));
        // Blobs of the checkpoint in flight are newer than the newest committed.
        let orphans = store.orphans().await?;
        let done = orphans
            .into_iter()
            .filter(|id| newest.is_some_and(|n| *id < n));
        delete_unreferenced_blobs(store, &all, done).await?;
        Ok::<_, crate::Error>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "deleting old checkpoints failed");
    }
}

/// Deletes the blobs of checkpoints `ids`, which have no metadata any more (deleted
/// checkpoints, abandoned attempts), except those of an id whose blobs a checkpoint of
/// `kept` (the committed ones) still builds on (its [`CheckpointMeta::chains`]).
/// Returns the ids kept for that reason, each with the checkpoints building on it.
/// The one rule for deleting blobs: the retention above and `tributary savepoint
/// delete` both use it.
pub(crate) async fn delete_unreferenced_blobs(
    store: &dyn CheckpointStore,
    kept: &[CheckpointMeta],
    ids: impl IntoIterator<Item = u64>,
) -> Result<BTreeMap<u64, Vec<u64>>> {
    let mut users: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for m in kept {
        let mut bases: Vec<u64> = m.chains.values().flatten().copied().collect();
        bases.sort_unstable();
        bases.dedup();
        for base in bases {
            users.entry(base).or_default().push(m.id);
        }
    }
    let mut still_used = BTreeMap::new();
    for id in ids {
        match users.get(&id) {
            Some(by) => {
                still_used.insert(id, by.clone());
            }
            None => store.delete_blobs(id).await?,
        }
    }
    Ok(still_used)
}

/// Why a checkpoint taken with `then` does not fit a pipeline with `now` (empty when
/// it fits).
fn describe_difference(
    then: &BTreeMap<String, usize>,
    now: &BTreeMap<String, usize>,
    rescalable: &dyn Fn(&str) -> bool,
) -> String {
    let mut out = Vec::new();
    for (node, p) in then {
        match now.get(node) {
            None => out.push(format!("operator {node} is gone")),
            Some(q) if q != p && !rescalable(node) => out.push(format!(
                "operator {node} ran at parallelism {p}, now {q}, and its state cannot be \
                 redistributed (a generator's position belongs to its partition)"
            )),
            Some(_) => {}
        }
    }
    for node in now.keys().filter(|n| !then.contains_key(*n)) {
        out.push(format!("operator {node} is new"));
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LocalCheckpointStore;

    /// Blobs a kept checkpoint's chain names stay (reported with who builds on them);
    /// the others go.
    #[tokio::test]
    async fn only_blobs_nothing_builds_on_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalCheckpointStore::new(dir.path());
        let chains: [&[u64]; 3] = [&[], &[1, 2], &[]];
        let mut previous = None;
        for (id, chain) in (1..=3).zip(chains) {
            store.put_blob(id, "w/0", vec![id as u8]).await.unwrap();
            store
                .commit(&CheckpointMeta::for_test(id, "w", chain), previous)
                .await
                .unwrap();
            previous = Some(id);
        }
        store.delete_meta(1).await.unwrap();
        let kept = store.list().await.unwrap();
        let used = delete_unreferenced_blobs(&store, &kept, [1]).await.unwrap();
        assert_eq!(used, BTreeMap::from([(1, vec![2])]));
        assert_eq!(store.get_blob(1, "w/0").await.unwrap(), [1]);

        store.delete_meta(2).await.unwrap();
        let kept = store.list().await.unwrap();
        let used = delete_unreferenced_blobs(&store, &kept, [1, 2])
            .await
            .unwrap();
        assert!(used.is_empty(), "{used:?}");
        for id in [1, 2] {
            assert!(store.get_blob(id, "w/0").await.is_err(), "blob of {id}");
        }
        assert_eq!(store.get_blob(3, "w/0").await.unwrap(), [3]);
    }
}
