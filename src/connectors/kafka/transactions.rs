//! Exactly-once output of the Kafka sink: Kafka transactions tied to checkpoints.
//!
//! librdkafka cannot take over a transaction that an earlier producer (the process
//! before a crash) left open: a producer that starts with the same transactional id
//! aborts it. So the sink cannot, like Flink, pre-commit a transaction at the barrier
//! and commit it after the checkpoint, since a crash between the two would lose that
//! output. Instead it keeps a **write-ahead** of its output:
//!
//! - records written between two barriers are encoded and held (`current`);
//! - at barrier `n` they join the pre-committed intervals (`pending`), and *all*
//!   pending intervals are the task's checkpoint state;
//! - once checkpoint `n` commits, one transaction sends the pending intervals up to
//!   `n` and a marker `transactional id → (lineage, n)` to the commit topic
//!   (compacted, one partition), and commits;
//! - on restore, the producers of the restored tasks' transactional ids are started
//!   (aborting what they left open), the commit topic is read (`read_committed`), and
//!   the restored intervals newer than their task's marker are sent again, with the
//!   marker, in one transaction.
//!
//! Checkpoint ids start again at 1 when a pipeline starts without a checkpoint, so a
//! marker also names its **lineage**: a random token a task draws when it starts
//! fresh and keeps through restores (it is in the state). A marker of another lineage
//! (an earlier deployment under the same name) says nothing about this one's output.
//!
//! Invariants: a record is visible to `read_committed` consumers only in a committed
//! transaction that also advanced its task's marker past the record's checkpoint; the
//! records of every checkpoint whose marker may be missing are in that checkpoint's
//! state. Output therefore becomes visible when its checkpoint commits (as with any
//! two-phase sink), and a checkpoint holds the sink's output since the last one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{REQUEST_TIMEOUT, kafka_error};
use crate::Result;

/// librdkafka's `transaction.timeout.ms` when the configuration does not set it.
const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The encoded records of a sink: the key (if any) and the value of each.
pub(super) fn records_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("key", DataType::Utf8, true),
                // NULL: a tombstone (an upsert sink's deleted key).
                Field::new("value", DataType::Binary, true),
            ]))
        })
        .clone()
}

/// The checkpoint state's header: the pre-committed intervals, each with the number
/// of record batches that follow it in the snapshot.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    lineage: String,
    /// The lineage's generation ([`crate::types::run_generation`]): orders its
    /// checkpoints after every earlier lineage's in the fallback's sequences (0 in
    /// states written before it was kept).
    #[serde(default)]
    generation: u64,
    intervals: Vec<(u64, usize)>,
}

/// A commit marker: the output of task `id`'s (a transactional id) checkpoints up to
/// `checkpoint` of `lineage` is committed. Its record: key `id`, value
/// `<lineage>:<checkpoint>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Marker {
    pub(super) id: String,
    pub(super) lineage: String,
    pub(super) checkpoint: u64,
}

impl Marker {
    pub(super) fn value(&self) -> String {
        format!("{}:{}", self.lineage, self.checkpoint)
    }

    pub(super) fn parse(id: &str, value: &str) -> Option<Marker> {
        let (lineage, checkpoint) = value.rsplit_once(':')?;
        Some(Marker {
            id: id.to_string(),
            lineage: lineage.to_string(),
            checkpoint: checkpoint.parse().ok()?,
        })
    }
}

/// A sink task's transactional side: identity, the commit topic, and its write-ahead.
pub(super) struct Transactions {
    table: String,
    config: ClientConfig,
    /// `<prefix>-<task>` is a task's transactional id.
    prefix: String,
    task: usize,
    commit_topic: String,
    /// This task's lineage (see the module docs) and its generation.
    lineage: String,
    generation: u64,
    /// The transactional producer; `init_transactions` has run once `ready`.
    pub(super) producer: FutureProducer,
    ready: bool,
    /// Records since the last barrier.
    pub(super) current: Vec<RecordBatch>,
    /// Pre-committed intervals (checkpoint id, records), oldest first.
    pending: Vec<(u64, Vec<RecordBatch>)>,
}

/// A batch of work for one transaction: records (with where each batch came from),
/// and the markers that commit them.
pub(super) struct Commit {
    pub(super) records: Vec<RecordBatch>,
    /// Where `records[i]` came from: what gives its rows their fallback sequences.
    pub(super) origins: Vec<Origin>,
    pub(super) markers: Vec<Marker>,
    /// Other commit-topic records of the transaction (key, value): the drain's.
    pub(super) extra: Vec<(String, String)>,
}

/// Where a batch of held records came from: the task that wrote it, its checkpoint
/// interval (as an epoch ordered across lineages: `generation × 10⁹ + checkpoint`) and
/// the index of its first row among the interval's records. A record's fallback
/// sequence is `(epoch, task × 2⁴⁰ + index)`: the same however often it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) task: usize,
    pub(super) epoch: u64,
    pub(super) first: u64,
}

impl Origin {
    /// The fallback sequence of row `row` of the batch.
    pub(super) fn seq(&self, row: usize) -> crate::fallback::Seq {
        crate::fallback::Seq {
            checkpoint: self.epoch,
            index: ((self.task as u64) << 40) | (self.first + row as u64),
        }
    }
}

/// The origins of an interval's batches, in order.
fn origins(task: usize, generation: u64, checkpoint: u64, batches: &[RecordBatch]) -> Vec<Origin> {
    let epoch = generation * crate::types::GENERATION_EPOCHS
        + checkpoint.min(crate::types::GENERATION_EPOCHS - 1);
    let mut first = 0;
    batches
        .iter()
        .map(|b| {
            let o = Origin { task, epoch, first };
            first += b.num_rows() as u64;
            o
        })
        .collect()
}

impl Commit {
    pub(super) fn empty() -> Commit {
        Commit {
            records: Vec::new(),
            origins: Vec::new(),
            markers: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Adds an interval's batches.
    fn interval(
        &mut self,
        task: usize,
        generation: u64,
        checkpoint: u64,
        batches: Vec<RecordBatch>,
    ) {
        self.origins
            .extend(origins(task, generation, checkpoint, &batches));
        self.records.extend(batches);
    }

    /// How many records.
    pub(super) fn len(&self) -> usize {
        self.records.iter().map(RecordBatch::num_rows).sum()
    }
}

impl Transactions {
    pub(super) fn new(
        table: &str,
        config: &ClientConfig,
        prefix: String,
        task: usize,
        commit_topic: String,
    ) -> Result<Self> {
        let producer = transactional(table, config, &format!("{prefix}-{task}"))?;
        Ok(Transactions {
            table: table.to_string(),
            config: config.clone(),
            prefix,
            task,
            commit_topic,
            lineage: format!("{:016x}", rand::random::<u64>()),
            generation: crate::types::run_generation(),
            producer,
            ready: false,
            current: Vec::new(),
            pending: Vec::new(),
        })
    }

    fn id_of(&self, task: usize) -> String {
        format!("{}-{task}", self.prefix)
    }

    pub(super) fn commit_topic(&self) -> &str {
        &self.commit_topic
    }

    /// Starts this task's producer (once): creates the commit topic if needed, and
    /// aborts whatever an earlier producer with this transactional id left open.
    pub(super) async fn ready(&mut self) -> Result<(), KafkaError> {
        if self.ready {
            return Ok(());
        }
        create_commit_topic(&self.config, &self.commit_topic).await?;
        let producer = self.producer.clone();
        tokio::task::block_in_place(|| producer.init_transactions(REQUEST_TIMEOUT))?;
        self.ready = true;
        Ok(())
    }

    /// A new producer with this task's transactional id, in place of one that failed
    /// fatally (e.g. the broker aborted its transaction after `transaction.timeout.ms`
    /// and bumped its epoch); it aborts what the old one left open when it starts.
    pub(super) fn restart_producer(&mut self) -> Result<()> {
        self.producer = transactional(&self.table, &self.config, &self.id_of(self.task))?;
        self.ready = false;
        Ok(())
    }

    /// Barrier `id`: the records since the last barrier become interval `id`; the
    /// returned state holds every interval not yet committed.
    pub(super) fn pre_commit(&mut self, id: u64) -> Result<Vec<u8>> {
        let records = std::mem::take(&mut self.current);
        self.pending.push((id, records));
        let header = Header {
            lineage: self.lineage.clone(),
            generation: self.generation,
            intervals: self.pending.iter().map(|(id, b)| (*id, b.len())).collect(),
        };
        let batches: Vec<Vec<ArrayRef>> = self
            .pending
            .iter()
            .flat_map(|(_, b)| b.iter().map(|b| b.columns().to_vec()))
            .collect();
        crate::state::snapshot::encode(&header, &batches)
    }

    /// Checkpoint `id` committed: what to send for it (intervals up to `id`), or
    /// `None` when nothing is pending.
    pub(super) fn committed(&mut self, id: u64) -> Option<Commit> {
        let upto = self.pending.iter().take_while(|(i, _)| *i <= id).count();
        if upto == 0 {
            return None;
        }
        let done: Vec<_> = self.pending.drain(..upto).collect();
        let last = done.last().map(|(i, _)| *i).unwrap_or(id);
        let mut commit = Commit::empty();
        for (interval, batches) in done {
            commit.interval(self.task, self.generation, interval, batches);
        }
        commit.markers.push(self.marker(last));
        Some(commit)
    }

    fn marker(&self, checkpoint: u64) -> Marker {
        Marker {
            id: self.id_of(self.task),
            lineage: self.lineage.clone(),
            checkpoint,
        }
    }

    /// The end of input: everything held, committed with the newest marker.
    pub(super) fn everything(&mut self) -> Option<Commit> {
        let last = self.pending.last().map(|(i, _)| *i);
        let mut commit = Commit::empty();
        for (interval, batches) in std::mem::take(&mut self.pending) {
            commit.interval(self.task, self.generation, interval, batches);
        }
        // The records after the last barrier: the interval after it.
        let current = std::mem::take(&mut self.current);
        commit.interval(self.task, self.generation, last.unwrap_or(0) + 1, current);
        if commit.len() == 0 {
            return None;
        }
        commit.markers = last.map(|l| vec![self.marker(l)]).unwrap_or_default();
        Some(commit)
    }

    /// Stopped mid-input: intervals up to `committed` out, the rest dropped (the
    /// restart replays them).
    pub(super) fn stopped(&mut self, committed: u64) -> Option<Commit> {
        let commit = self.committed(committed);
        self.pending.clear();
        self.current.clear();
        commit
    }

    /// Restoring from a checkpoint's states: fences the producers of the tasks that
    /// wrote them (their open transactions are aborted), reads the markers (the
    /// commit topic's, and `delivered`: those of the fallback store, ADR 0016), and
    /// returns the intervals neither says were delivered, to send again.
    pub(super) async fn restore(
        &mut self,
        states: &[(usize, Vec<u8>)],
        delivered: &[Marker],
    ) -> Result<Option<Commit>> {
        for (q, _) in states {
            if *q != self.task {
                let other = transactional(&self.table, &self.config, &self.id_of(*q))?;
                tokio::task::block_in_place(|| other.init_transactions(REQUEST_TIMEOUT)).map_err(
                    |e| kafka_error(&self.table, "fencing an earlier task's producer", e),
                )?;
            }
        }
        self.ready()
            .await
            .map_err(|e| kafka_error(&self.table, "starting the transactional producer", e))?;
        let held = held(states)?;
        // This task's own state (same task index) carries on its lineage.
        if let Some(own) = held.iter().find(|h| h.task == self.task) {
            self.lineage = own.lineage.clone();
            self.generation = own.generation;
        }
        let mut markers: Vec<Marker> = self.markers()?.into_values().collect();
        markers.extend(delivered.iter().cloned());
        let (commit, intervals) = self.unmarked(&held, &markers);
        tracing::info!(
            table = %self.table,
            task = self.task,
            intervals,
            records = commit.records.iter().map(|b| b.num_rows()).sum::<usize>(),
            "kafka sink restored: checkpoint intervals whose transaction had not committed \
             are sent again"
        );
        Ok((!commit.markers.is_empty()).then_some(commit))
    }

    /// The intervals of the restored states newer than their task's newest marker of
    /// their lineage, with the markers that commit them; and how many intervals that
    /// is.
    fn unmarked(&self, held: &[Held], markers: &[Marker]) -> (Commit, usize) {
        let mut commit = Commit::empty();
        let mut intervals = 0;
        for h in held {
            let id = self.id_of(h.task);
            let done = markers
                .iter()
                .filter(|m| m.id == id && m.lineage == h.lineage)
                .map(|m| m.checkpoint)
                .max()
                .unwrap_or(0);
            for (interval, records) in &h.intervals {
                if *interval > done {
                    intervals += 1;
                    commit.interval(h.task, h.generation, *interval, records.clone());
                }
            }
            if let Some(last) = h.intervals.last().map(|(i, _)| *i).filter(|l| *l > done) {
                commit.markers.push(Marker {
                    id,
                    lineage: h.lineage.clone(),
                    checkpoint: last,
                });
            }
        }
        (commit, intervals)
    }

    /// The commit topic's markers as committed (`read_committed`): the last one of
    /// each transactional id, read to the end of the log.
    ///
    /// The end is the high watermark, not the last stable offset a `read_committed`
    /// query answers: another pipeline's transaction still open in the commit topic
    /// holds the stable offset back, and the markers committed after it would be
    /// missed (and their output sent twice). So the read waits for such transactions
    /// to end, which they do within the producers' transaction timeout at most.
    fn markers(&self) -> Result<HashMap<String, Marker>> {
        Ok(self
            .commit_log()?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), Marker::parse(k, v)?)))
            .collect())
    }

    /// The commit topic as committed: the last value of each key (commit markers,
    /// and the drain's records), waiting for open transactions as [`Self::markers`]
    /// says.
    pub(super) fn commit_log(&self) -> Result<HashMap<String, String>> {
        let timeout = self
            .config
            .get("transaction.timeout.ms")
            .and_then(|ms| ms.parse().ok())
            .map_or(DEFAULT_TRANSACTION_TIMEOUT, Duration::from_millis);
        self.commit_log_within(timeout + REQUEST_TIMEOUT)
    }

    #[cfg(test)]
    fn markers_within(&self, patience: Duration) -> Result<HashMap<String, Marker>> {
        Ok(self
            .commit_log_within(patience)?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), Marker::parse(k, v)?)))
            .collect())
    }

    fn commit_log_within(&self, patience: Duration) -> Result<HashMap<String, String>> {
        let topic = &self.commit_topic;
        let error = |e| kafka_error(&self.table, "reading the commit topic", e);
        let consumer = |isolation: &str| -> Result<BaseConsumer> {
            let mut config = self.config.clone();
            config
                .set("group.id", format!("{}-markers", self.prefix))
                .set("enable.auto.commit", "false")
                .set("isolation.level", isolation);
            config.create().map_err(error)
        };
        let (low, high) = tokio::task::block_in_place(|| {
            consumer("read_uncommitted")?
                .fetch_watermarks(topic, 0, REQUEST_TIMEOUT)
                .map_err(error)
        })?;
        let mut markers = HashMap::new();
        if high <= low {
            return Ok(markers);
        }
        let consumer = consumer("read_committed")?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(low))
            .map_err(error)?;
        consumer.assign(&tpl).map_err(error)?;
        let started = Instant::now();
        let mut told = false;
        tokio::task::block_in_place(|| -> Result<()> {
            loop {
                let position = consumer
                    .position()
                    .ok()
                    .and_then(|p| p.find_partition(topic, 0).and_then(|e| e.offset().to_raw()))
                    .unwrap_or(low);
                if position >= high {
                    return Ok(());
                }
                let waited = started.elapsed();
                if waited > patience {
                    return Err(kafka_error(
                        &self.table,
                        "reading the commit topic",
                        format!(
                            "stuck at offset {position} of {high} for {waited:?}: a \
                             transaction left open there has not ended ({})",
                            super::HANGING_TRANSACTION_HINT
                        ),
                    ));
                }
                if !told && waited > REQUEST_TIMEOUT {
                    tracing::info!(
                        table = %self.table,
                        topic,
                        position,
                        high,
                        hint = super::HANGING_TRANSACTION_HINT,
                        "waiting for a transaction open in the commit topic to end"
                    );
                    told = true;
                }
                let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let m = m.map_err(error)?;
                let (Some(k), Some(v)) = (m.key(), m.payload()) else {
                    continue;
                };
                let (Ok(k), Ok(v)) = (std::str::from_utf8(k), std::str::from_utf8(v)) else {
                    continue;
                };
                markers.insert(k.to_string(), v.to_string());
            }
        })?;
        Ok(markers)
    }
}

/// One restored task state: the task that wrote it, its lineage, and its held
/// intervals (checkpoint id, records), oldest first.
struct Held {
    task: usize,
    lineage: String,
    generation: u64,
    intervals: Vec<(u64, Vec<RecordBatch>)>,
}

/// The restored `states`, decoded.
fn held(states: &[(usize, Vec<u8>)]) -> Result<Vec<Held>> {
    states
        .iter()
        .map(|(task, state)| {
            let (header, batches): (Header, _) = crate::state::snapshot::decode(state)?;
            let mut batches = batches.into_iter();
            let mut intervals = Vec::with_capacity(header.intervals.len());
            for (interval, n) in header.intervals {
                let records = batches
                    .by_ref()
                    .take(n)
                    .map(|columns| RecordBatch::try_new(records_schema(), columns))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        crate::engine::EngineError::arrow("restoring the kafka sink", e)
                    })?;
                intervals.push((interval, records));
            }
            Ok(Held {
                task: *task,
                lineage: header.lineage,
                generation: header.generation,
                intervals,
            })
        })
        .collect()
}

/// Every record the restored `states` hold, in order: what a sink restoring an
/// exactly-once run's checkpoint without transactions (at-least-once) sends.
pub(super) fn all_held(states: &[(usize, Vec<u8>)]) -> Result<Vec<RecordBatch>> {
    Ok(held(states)?
        .into_iter()
        .flat_map(|h| h.intervals)
        .flat_map(|(_, records)| records)
        .collect())
}

/// A producer with transactional id `id` (idempotent, acks=all by implication).
fn transactional(table: &str, config: &ClientConfig, id: &str) -> Result<FutureProducer> {
    let mut config = config.clone();
    config.set("transactional.id", id);
    config
        .create()
        .map_err(|e| kafka_error(table, "creating the transactional producer", e))
}

/// The commit topic: one partition, compacted (only the newest marker per id is
/// needed), the cluster's default replication.
async fn create_commit_topic(config: &ClientConfig, topic: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<_> = config.create()?;
    let spec =
        NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let results = admin
        .create_topics(
            [&spec],
            &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)),
        )
        .await?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, "created the commit topic"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

/// `key` of row `i` of encoded records, if any.
pub(super) fn key_of(records: &RecordBatch, i: usize) -> Option<&str> {
    let k = records.column(0).as_string::<i32>();
    (!k.is_null(i)).then(|| k.value(i))
}

/// `value` of row `i` of encoded records; `None` for a tombstone.
pub(super) fn value_of(records: &RecordBatch, i: usize) -> Option<&[u8]> {
    let v = records.column(1).as_binary::<i32>();
    (!v.is_null(i)).then(|| v.value(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(keys: &[&str]) -> RecordBatch {
        RecordBatch::try_new(
            records_schema(),
            vec![
                Arc::new(arrow::array::StringArray::from_iter_values(keys)),
                Arc::new(arrow::array::BinaryArray::from_iter_values(
                    keys.iter()
                        .map(|k| format!("{{\"k\":\"{k}\"}}").into_bytes()),
                )),
            ],
        )
        .unwrap()
    }

    fn transactions(task: usize) -> Transactions {
        let mut config = ClientConfig::new();
        // Never contacted: these tests only keep the books.
        config.set("bootstrap.servers", "127.0.0.1:1");
        Transactions::new("out", &config, "p".into(), task, "commits".into()).unwrap()
    }

    fn marks(c: &Commit) -> Vec<(String, u64)> {
        c.markers
            .iter()
            .map(|m| (m.id.clone(), m.checkpoint))
            .collect()
    }

    fn keys(batches: &[RecordBatch]) -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(move |i| key_of(b, i).unwrap().to_string()))
            .collect()
    }

    #[test]
    fn a_checkpoint_holds_every_uncommitted_interval_and_commits_go_in_order() {
        let mut t = transactions(0);
        t.current.push(records(&["a", "b"]));
        t.pre_commit(1).unwrap();
        t.current.push(records(&["c"]));
        let state = t.pre_commit(2).unwrap();
        let (header, batches): (Header, _) = crate::state::snapshot::decode(&state).unwrap();
        assert_eq!(header.intervals, vec![(1, 1), (2, 1)]);
        assert_eq!(batches.len(), 2);

        let c = t.committed(1).unwrap();
        assert_eq!(keys(&c.records), ["a", "b"]);
        assert_eq!(marks(&c), [("p-0".to_string(), 1)]);
        assert!(t.committed(1).is_none(), "committing twice sends nothing");

        // Stopped with checkpoint 2 committed: its rows go, the rows since are dropped.
        t.current.push(records(&["d"]));
        let c = t.stopped(2).unwrap();
        assert_eq!(keys(&c.records), ["c"]);
        assert_eq!(marks(&c), [("p-0".to_string(), 2)]);
        assert!(t.everything().is_none());
    }

    #[test]
    fn the_end_of_input_sends_everything_held() {
        let mut t = transactions(1);
        t.current.push(records(&["a"]));
        t.pre_commit(4).unwrap();
        t.current.push(records(&["b"]));
        let c = t.everything().unwrap();
        assert_eq!(keys(&c.records), ["a", "b"]);
        assert_eq!(marks(&c), [("p-1".to_string(), 4)]);
    }

    #[test]
    fn a_restore_sends_again_only_the_intervals_past_their_tasks_marker() {
        // Two old tasks' states, restored by one task (parallelism 2 → 1).
        let mut old0 = transactions(0);
        old0.current.push(records(&["a"]));
        old0.pre_commit(7).unwrap();
        old0.current.push(records(&["b"]));
        let s0 = old0.pre_commit(8).unwrap();
        let mut old1 = transactions(1);
        old1.current.push(records(&["c"]));
        let s1 = old1.pre_commit(8).unwrap();

        let t = transactions(0);
        let held = held(&[(0, s0), (1, s1)]).unwrap();
        let marker = |old: &Transactions, checkpoint| {
            (
                old.id_of(old.task),
                Marker {
                    checkpoint,
                    ..old.marker(checkpoint)
                },
            )
        };
        // Task 0 committed interval 7 before the crash, task 1 nothing of interval 8.
        let markers = vec![marker(&old0, 7).1, marker(&old1, 5).1];
        let (c, intervals) = t.unmarked(&held, &markers);
        assert_eq!(intervals, 2);
        assert_eq!(keys(&c.records), ["b", "c"]);
        assert_eq!(marks(&c), [("p-0".to_string(), 8), ("p-1".to_string(), 8)]);
        assert_eq!(
            c.markers[0].lineage, old0.lineage,
            "markers keep their lineage"
        );

        // Everything committed: nothing to send, no marker to write.
        let markers = vec![marker(&old0, 8).1, marker(&old1, 8).1];
        let (c, intervals) = t.unmarked(&held, &markers);
        assert_eq!((c.records.len(), c.markers.len(), intervals), (0, 0, 0));

        // A marker of another lineage (an earlier deployment of the same name, whose
        // checkpoint ids went higher) does not count.
        let mut stale = marker(&old0, 80);
        stale.1.lineage = "earlier".into();
        let markers = vec![stale.1, marker(&old1, 8).1];
        let (c, intervals) = t.unmarked(&held, &markers);
        assert_eq!(intervals, 2);
        assert_eq!(keys(&c.records), ["a", "b"]);

        // The fallback's mark of interval 8 (stored there, not in Kafka) beside an
        // older Kafka marker: the newer counts, nothing is sent again.
        let markers = vec![marker(&old0, 7).1, marker(&old1, 8).1, marker(&old0, 8).1];
        let (c, intervals) = t.unmarked(&held, &markers);
        assert_eq!((c.records.len(), intervals), (0, 0));
    }

    #[test]
    fn a_record_keeps_its_fallback_sequence_however_it_is_sent_again() {
        let mut t = transactions(2);
        t.current.push(records(&["a", "b"]));
        t.current.push(records(&["c"]));
        let state = t.pre_commit(3).unwrap();
        let first = t.committed(3).unwrap();
        let seqs = |c: &Commit| -> Vec<crate::fallback::Seq> {
            c.records
                .iter()
                .zip(&c.origins)
                .flat_map(|(b, o)| (0..b.num_rows()).map(move |r| o.seq(r)))
                .collect()
        };
        let sent = seqs(&first);
        assert_eq!(sent.len(), 3);
        assert!(sent.windows(2).all(|w| w[0] < w[1]), "in production order");
        assert_eq!(sent[0].index, 2 << 40, "the writer task is in the index");
        // Restored from the checkpoint (no marker anywhere): the same sequences.
        let again = transactions(0);
        let (c, _) = again.unmarked(&held(&[(2, state)]).unwrap(), &[]);
        assert_eq!(seqs(&c), sent);
        // A later lineage's interval 1 sorts after this lineage's interval 3.
        let mut later = transactions(2);
        later.generation = t.generation + 1;
        later.current.push(records(&["a"]));
        later.pre_commit(1).unwrap();
        assert!(seqs(&later.committed(1).unwrap())[0] > sent[2]);
    }

    #[test]
    fn an_at_least_once_restore_takes_every_held_record() {
        let mut old = transactions(0);
        old.current.push(records(&["a"]));
        old.pre_commit(1).unwrap();
        old.current.push(records(&["b", "c"]));
        let state = old.pre_commit(2).unwrap();
        assert_eq!(keys(&all_held(&[(0, state)]).unwrap()), ["a", "b", "c"]);
    }

    #[test]
    fn a_marker_reads_back_from_its_record_value() {
        let m = Marker {
            id: "p-3".into(),
            lineage: "00ff".into(),
            checkpoint: 42,
        };
        assert_eq!(Marker::parse("p-3", &m.value()), Some(m));
        assert_eq!(Marker::parse("p-3", "garbage"), None);
    }

    /// Another pipeline's transaction left open in the commit topic (a crashed
    /// producer's, until its transaction times out) holds the topic's last stable
    /// offset back. A restore must still read the markers committed after it, or it
    /// sends their output again: it waits for the transaction to end instead of
    /// stopping at that offset (test broker: `TRIBUTARY_TEST_KAFKA`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn markers_committed_behind_another_producers_open_transaction_are_read() {
        use rdkafka::producer::FutureRecord;
        let servers = crate::connectors::kafka::test_bootstrap();
        let unique = format!("{}.{:x}", std::process::id(), rand::random::<u64>());
        let topic = format!("commits.{unique}");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &servers);
        let mut t =
            Transactions::new("out", &config, format!("p.{unique}"), 0, topic.clone()).unwrap();
        t.ready().await.unwrap();

        let other = transactional("other", &config, &format!("other.{unique}")).unwrap();
        tokio::task::block_in_place(|| other.init_transactions(REQUEST_TIMEOUT)).unwrap();
        other.begin_transaction().unwrap();
        other
            .send(
                FutureRecord::to(&topic).key("other").payload("x:1"),
                REQUEST_TIMEOUT,
            )
            .await
            .unwrap();

        let marker = t.marker(5);
        t.producer.begin_transaction().unwrap();
        t.producer
            .send(
                FutureRecord::to(&topic)
                    .key(&marker.id)
                    .payload(&marker.value()),
                REQUEST_TIMEOUT,
            )
            .await
            .unwrap();
        tokio::task::block_in_place(|| t.producer.commit_transaction(REQUEST_TIMEOUT)).unwrap();

        let waiting = t.markers_within(Duration::from_secs(2));
        assert!(
            waiting
                .as_ref()
                .is_err_and(|e| e.to_string().contains("has not ended")),
            "while the other transaction is open the read must wait, not answer: {:?}",
            waiting.map(|m| m.into_keys().collect::<Vec<_>>())
        );
        tokio::task::block_in_place(|| other.abort_transaction(REQUEST_TIMEOUT)).unwrap();
        let markers = t.markers_within(REQUEST_TIMEOUT).unwrap();
        assert_eq!(markers.get(&marker.id), Some(&marker));
        assert!(
            !markers.contains_key("other"),
            "an aborted marker is not read"
        );
    }
}
