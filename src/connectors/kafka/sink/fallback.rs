//! The exactly-once Kafka sink's side of the broker-outage fallback (ADR 0016).
//!
//! Every transaction the sink would send goes through [`KafkaSink::deliver`]:
//! - **breaker open**: the transaction's records are appended to the fallback store
//!   under their stream (pipeline, topic, key) and sequence ([`Origin::seq`]), then
//!   the store's delivery marks take the place of the commit markers. The sink returns
//!   at once: checkpoints keep completing while the cluster is down.
//! - **breaker closed** (or probing): the records of keys that wait in the store go
//!   behind them into the store first; the rest go to Kafka in one transaction with
//!   the commit markers, and, while the breaker is closed, with a rate-limited drain
//!   of the oldest waiting records of the streams this task owns and a **drain
//!   record** per stream (`drain␟pipeline␟topic␟key → last sequence sent`) in the
//!   commit topic. Once the transaction commits, the drained records are deleted; a
//!   crash in between leaves records at or below their drain record, which the next
//!   drain skips and deletes.
//! - **the store unavailable too**: the sink retries and holds its input
//!   (back-pressure); nothing is acknowledged that is stored nowhere.
//!
//! A key leaves the waiting set only when a drain found no more of its records and
//! nothing newer was appended meanwhile ([`Waiting::drained`]), so its live records
//! never overtake its backlog. Each stream is drained by one task of the sink (the
//! owner, by the hash of its key), in that task's transactions.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use futures::StreamExt;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;

use super::super::transactions::{self, Commit, Marker};
use super::{KafkaSink, fenced, transient};
use crate::connectors::kafka::{Result, kafka_error};
use crate::fallback::{
    Breaker, DeliveryMark, DrainControl, DrainMode, Fallback, FallbackError, FallbackRecord, Route,
    Seq, StreamId, Waiting,
};

/// The most records one drain puts in a transaction.
const DRAIN_CHUNK: usize = 100_000;
/// The most records read from one stream per drain.
const PER_STREAM: usize = 1_000;
/// Streams read from the store at once.
const READS_IN_FLIGHT: usize = 16;
/// Records per append to the store.
const APPEND_CHUNK: usize = 5_000;
/// The longest time the drain's rate counts back over.
const MAX_DRAIN_WINDOW: Duration = Duration::from_secs(10);

/// How far back the drain's rate counts at `now`: from this task's last commit, or
/// from the breaker's close after an outage if that came later, at most
/// [`MAX_DRAIN_WINDOW`].
fn drain_window(last_commit: Instant, closed: Option<Instant>, now: Instant) -> Duration {
    let since = closed.map_or(last_commit, |c| c.max(last_commit));
    now.saturating_duration_since(since).min(MAX_DRAIN_WINDOW)
}

/// A sink task's handle on the process's fallback.
pub(super) struct SinkFallback {
    shared: Arc<Fallback>,
    breaker: Arc<Breaker>,
    control: Arc<DrainControl>,
    pipeline: String,
    /// Loaded at first use (it needs the store).
    waiting: Option<Arc<Waiting>>,
    /// The last sequence the drain sent per key (the commit topic's drain records),
    /// read at the first drain.
    sent: Option<HashMap<Option<Vec<u8>>, Seq>>,
    /// The last commit of this task (to Kafka or to the store): the drain's rate
    /// counts from it, or from the breaker's close if that came later.
    last_drain: Instant,
    /// The end of input's drain: it takes the full window (`MAX_DRAIN_WINDOW`),
    /// whenever the last commit or the breaker's close was.
    draining_rest: bool,
    /// A transaction whose outcome is not known yet.
    in_doubt: Option<InDoubt>,
    stored: metrics::Counter,
    drained: metrics::Counter,
}

/// Why one delivery attempt failed.
enum Failure {
    /// Kafka: counted by the breaker.
    Kafka(KafkaError),
    /// The fallback store: held and retried (back-pressure).
    Store(FallbackError),
    /// Neither is worth another try.
    Fatal(crate::Error),
}

/// A transaction whose commit was requested but not confirmed before the cluster
/// went away (ADR 0016): its direct records, kept in the store meanwhile, are deleted
/// from it if the commit went through, and its drained records too.
struct InDoubt {
    markers: Vec<Marker>,
    direct: Vec<(StreamId, Seq)>,
    drained: Vec<(StreamId, Seq, bool)>,
}

/// What one drain sends: records and drain records, and per stream what to do once
/// they are committed (delete through, the read found the whole stream).
#[derive(Default)]
struct Drain {
    records: Vec<RecordBatch>,
    extra: Vec<(String, String)>,
    done: Vec<(StreamId, Seq, bool)>,
    count: u64,
}

impl SinkFallback {
    pub(super) fn new(shared: Arc<Fallback>, cluster: &str, pipeline: &str, table: &str) -> Self {
        let labels = |path: &'static str| crate::metrics::fallback_records(pipeline, table, path);
        SinkFallback {
            breaker: shared.breaker(cluster),
            control: shared.control(pipeline),
            shared,
            pipeline: pipeline.to_string(),
            waiting: None,
            sent: None,
            last_drain: Instant::now(),
            draining_rest: false,
            in_doubt: None,
            stored: labels("stored"),
            drained: labels("drained"),
        }
    }

    pub(super) fn attempt_timeout(&self) -> Duration {
        self.shared.settings().attempt_timeout
    }

    async fn waiting(&mut self, topic: &str) -> Result<Arc<Waiting>, FallbackError> {
        if let Some(w) = &self.waiting {
            return Ok(w.clone());
        }
        let w = self.shared.waiting(&self.pipeline, topic).await?;
        self.waiting = Some(w.clone());
        Ok(w)
    }

    fn stream_of(&self, topic: &str, key: Option<Vec<u8>>) -> StreamId {
        StreamId {
            pipeline: self.pipeline.clone(),
            topic: topic.to_string(),
            key,
        }
    }

    fn stream(&self, topic: &str, key: Option<&str>) -> StreamId {
        StreamId {
            pipeline: self.pipeline.clone(),
            topic: topic.to_string(),
            key: key.map(|k| k.as_bytes().to_vec()),
        }
    }
}

/// The drain record's key of a stream in the commit topic.
fn drain_key(stream: &StreamId) -> String {
    let key = match &stream.key {
        None => "-".to_string(),
        Some(k) => k.iter().map(|b| format!("{b:02x}")).collect(),
    };
    format!(
        "drain\u{1f}{}\u{1f}{}\u{1f}{key}",
        stream.pipeline, stream.topic
    )
}

/// The key of a stream from its drain record's key (the part after the prefix).
fn key_of_drain(hex: &str) -> Option<Option<Vec<u8>>> {
    if hex == "-" {
        return Some(None);
    }
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Some)
}

fn seq_value(seq: Seq) -> String {
    format!("{}.{}", seq.checkpoint, seq.index)
}

fn parse_seq(v: &str) -> Option<Seq> {
    let (c, i) = v.split_once('.')?;
    Some(Seq {
        checkpoint: c.parse().ok()?,
        index: i.parse().ok()?,
    })
}

/// The sink task that drains `key`'s stream, of `parallelism`.
fn owner(key: Option<&[u8]>, parallelism: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % parallelism.max(1) as u64) as usize
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl KafkaSink {
    /// Sends `commit` to Kafka in one transaction, or keeps it in the fallback store
    /// (see the module docs); without a fallback, [`KafkaSink::transact`] (wait for
    /// the cluster).
    pub(super) async fn deliver(&mut self, commit: Commit) -> Result<()> {
        if self.fallback.is_none() {
            return self.transact(commit).await;
        }
        let mut backoff = Duration::from_millis(200);
        let mut logged: Option<Instant> = None;
        let mut restarts = 0;
        loop {
            let route = self.fallback.as_ref().expect("checked").breaker.route();
            let outcome = match route {
                Route::Fallback => self.store_all(&commit).await,
                Route::Direct | Route::Probe => self.send_direct(&commit, route).await,
            };
            let mut wait = true;
            let breaker = self.fallback.as_ref().expect("checked").breaker.clone();
            // A probe that ends without a word on the cluster is handed out again.
            let reported = match &outcome {
                Ok(()) => true,
                Err(Failure::Kafka(e)) => !fenced(e),
                Err(_) => false,
            };
            if route == Route::Probe && !reported {
                breaker.probe_abandoned();
            }
            match outcome {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Store(e)) => {
                    self.probe.retrying(&e);
                    if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(table = %self.table, error = %e, code = e.code(),
                            "fallback store unavailable; output held (back-pressure)");
                        logged = Some(Instant::now());
                    }
                }
                Err(Failure::Kafka(e)) => {
                    if fenced(&e) && restarts < 3 {
                        tracing::warn!(table = %self.table, error = %e,
                            "kafka transactional producer fenced; starting a new one");
                        restarts += 1;
                        self.new_producer()?;
                        continue;
                    }
                    if !transient(&e) {
                        return Err(kafka_error(&self.table, "a transaction", e));
                    }
                    breaker.failure(&e);
                    self.probe.retrying(&e);
                    // Open now: straight to the store.
                    wait = breaker.state() == crate::fallback::BreakerState::Closed;
                }
            }
            if wait {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }

    /// `commit`'s rows as fallback records (only the rows `keep` says, if given).
    fn fallback_records(
        &self,
        commit: &Commit,
        keep: impl Fn(Option<&str>) -> bool,
    ) -> Vec<FallbackRecord> {
        let fb = self.fallback.as_ref().expect("fallback");
        let stored_ms = now_ms();
        let mut out = Vec::new();
        for (batch, origin) in commit.records.iter().zip(&commit.origins) {
            for row in 0..batch.num_rows() {
                let key = transactions::key_of(batch, row);
                if !keep(key) {
                    continue;
                }
                out.push(FallbackRecord {
                    stream: fb.stream(&self.topic, key),
                    seq: origin.seq(row),
                    value: transactions::value_of(batch, row).map(<[u8]>::to_vec),
                    headers: Vec::new(),
                    timestamp_ms: None,
                    stored_ms,
                });
            }
        }
        out
    }

    /// Appends `records` to the store and counts them waiting.
    async fn append(&mut self, records: &[FallbackRecord]) -> Result<(), Failure> {
        if records.is_empty() {
            return Ok(());
        }
        let topic = self.topic.clone();
        let fb = self.fallback.as_mut().expect("fallback");
        let store = fb.shared.store().await.map_err(Failure::Store)?;
        let waiting = fb.waiting(&topic).await.map_err(Failure::Store)?;
        // Waiting before the append: an append that fails part-way may have stored
        // some of them, so their keys go to the store from now on (the retry appends
        // them all again, completing it) and never straight to Kafka.
        for r in records {
            waiting.appended(r.stream.key.as_deref(), r.seq);
        }
        for chunk in records.chunks(APPEND_CHUNK) {
            store.append(chunk).await.map_err(Failure::Store)?;
        }
        fb.stored.increment(records.len() as u64);
        fb.control
            .stored
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The breaker is open: all of `commit` to the store, then its marks.
    async fn store_all(&mut self, commit: &Commit) -> Result<(), Failure> {
        // No drain while the cluster is down: the drain's rate counts from its return.
        self.fallback.as_mut().expect("fallback").last_drain = Instant::now();
        let records = self.fallback_records(commit, |_| true);
        self.append(&records).await?;
        let fb = self.fallback.as_ref().expect("fallback");
        let store = fb.shared.store().await.map_err(Failure::Store)?;
        for m in &commit.markers {
            store
                .mark(&DeliveryMark {
                    pipeline: fb.pipeline.clone(),
                    writer: m.id.clone(),
                    lineage: m.lineage.clone(),
                    checkpoint: m.checkpoint,
                })
                .await
                .map_err(Failure::Store)?;
        }
        Ok(())
    }

    /// To Kafka: the records of waiting keys to the store first, the rest (and, with
    /// the breaker closed, a drain) in one transaction.
    async fn send_direct(&mut self, commit: &Commit, route: Route) -> Result<(), Failure> {
        let timeout = self.fallback.as_ref().expect("fallback").attempt_timeout();
        if route == Route::Probe {
            // A metadata request first: a cluster still down fails it within the
            // attempt timeout, without a transaction to abort.
            let producer = self.producer().clone();
            let topic = self.topic.clone();
            tokio::task::block_in_place(|| {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), timeout)
                    .map(|_| ())
            })
            .map_err(Failure::Kafka)?;
        }
        let topic = self.topic.clone();
        let waiting = {
            let fb = self.fallback.as_mut().expect("fallback");
            fb.waiting(&topic).await.map_err(Failure::Store)?
        };
        if self.settle_in_doubt(commit, &waiting).await? {
            // This very commit went through before the cluster went away.
            return Ok(());
        }
        // Where each key's records of this commit go straight to Kafka (kept in case
        // the commit ends in doubt).
        let mut direct_streams: HashMap<Option<Vec<u8>>, Seq> = HashMap::new();
        for (batch, origin) in commit.records.iter().zip(&commit.origins) {
            for row in 0..batch.num_rows() {
                let key = transactions::key_of(batch, row).map(str::as_bytes);
                if !waiting.contains(key) {
                    let seq = origin.seq(row);
                    let last = direct_streams.entry(key.map(<[u8]>::to_vec)).or_insert(seq);
                    *last = (*last).max(seq);
                }
            }
        }
        let direct = if waiting.is_empty() {
            commit.records.clone()
        } else {
            let behind = self.fallback_records(commit, |k| waiting.contains(k.map(str::as_bytes)));
            self.append(&behind).await?;
            let mut direct = Vec::with_capacity(commit.records.len());
            for batch in &commit.records {
                let keep: arrow::array::BooleanArray = (0..batch.num_rows())
                    .map(|row| {
                        Some(!waiting.contains(transactions::key_of(batch, row).map(str::as_bytes)))
                    })
                    .collect();
                let kept = arrow::compute::filter_record_batch(batch, &keep).map_err(|e| {
                    Failure::Fatal(crate::engine::EngineError::arrow(
                        "holding back waiting keys",
                        e,
                    ))
                })?;
                if kept.num_rows() > 0 {
                    direct.push(kept);
                }
            }
            direct
        };
        let drain = if route == Route::Direct {
            self.drain_batch(&waiting).await?
        } else {
            Drain::default()
        };
        let mut records = drain.records;
        records.extend(direct);
        let txn = Commit {
            records,
            origins: Vec::new(),
            markers: commit.markers.clone(),
            extra: drain.extra,
        };
        if let Err(e) = self.transact_once_within(&txn, Some(timeout)).await {
            if std::mem::take(&mut self.in_doubt) {
                // The commit may have gone through: a new producer settles it when the
                // cluster answers (its start completes or aborts the old transaction),
                // and until then this commit goes to the store like any other.
                self.new_producer().map_err(Failure::Fatal)?;
                let fb = self.fallback.as_mut().expect("fallback");
                fb.in_doubt = Some(InDoubt {
                    markers: commit.markers.clone(),
                    direct: direct_streams
                        .into_iter()
                        .map(|(key, seq)| (fb.stream_of(&topic, key), seq))
                        .collect(),
                    drained: drain.done,
                });
            }
            return Err(Failure::Kafka(e));
        }
        self.probe.up();
        let fb = self.fallback.as_mut().expect("fallback");
        fb.breaker.success();
        if drain.done.is_empty() {
            return Ok(());
        }
        crate::checkpoint::fault::point(
            crate::checkpoint::fault::Phase::DrainCommitted,
            None,
            &self.task,
        );
        let store = fb.shared.store().await.map_err(Failure::Store)?;
        let sent = fb.sent.get_or_insert_with(HashMap::new);
        for (stream, through, whole) in drain.done {
            sent.insert(stream.key.clone(), through);
            // Left for the next drain to skip and delete if this fails.
            if let Err(e) = store.delete_through(&stream, through).await {
                tracing::warn!(table = %self.table, error = %e,
                    "could not delete drained records from the fallback store; the next drain skips them");
                continue;
            }
            waiting.drained(stream.key.as_deref(), through, whole);
        }
        fb.drained.increment(drain.count);
        fb.control.drained.fetch_add(drain.count, Ordering::Relaxed);
        if waiting.is_empty() {
            fb.control.emptied();
        }
        Ok(())
    }

    /// The commit topic could not be read (the cluster went away again): a Kafka
    /// failure like any other, for the breaker.
    fn unreadable_log(&self, e: crate::Error) -> Failure {
        tracing::warn!(table = %self.table, error = %e, "reading the commit topic; retrying");
        Failure::Kafka(KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
        ))
    }

    /// Settles a transaction left in doubt, before anything else goes to Kafka: starts
    /// the new producer (which completes or aborts it) and reads the commit markers.
    /// Committed: its records are deleted from the store (they are in Kafka), and
    /// `true` if `commit` is that transaction itself. Not committed: what the store
    /// holds of it drains as any backlog.
    async fn settle_in_doubt(
        &mut self,
        commit: &Commit,
        waiting: &Waiting,
    ) -> Result<bool, Failure> {
        let Some(doubt) = self.fallback.as_ref().and_then(|f| f.in_doubt.as_ref()) else {
            return Ok(false);
        };
        let same = doubt.markers == commit.markers;
        let limit = self.fallback.as_ref().expect("fallback").attempt_timeout();
        let txn = self.txn.as_mut().expect("transactional");
        tokio::time::timeout(limit, txn.ready())
            .await
            .unwrap_or(Err(KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
            )))
            .map_err(Failure::Kafka)?;
        let log = match txn.commit_log() {
            Ok(log) => log,
            Err(e) => return Err(self.unreadable_log(e)),
        };
        let fb = self.fallback.as_mut().expect("fallback");
        let doubt = fb.in_doubt.as_ref().expect("checked");
        // No marker (the end of input without a checkpoint): it cannot be told, so it
        // counts as not committed — a record may repeat, none is lost.
        let committed = !doubt.markers.is_empty()
            && doubt.markers.iter().all(|m| {
                log.get(&m.id)
                    .and_then(|v| Marker::parse(&m.id, v))
                    .is_some_and(|k| k.lineage == m.lineage && k.checkpoint >= m.checkpoint)
            });
        tracing::info!(table = %self.table, committed,
            "kafka commit in doubt settled once the cluster answered");
        if committed {
            let store = fb.shared.store().await.map_err(Failure::Store)?;
            for (stream, through) in &doubt.direct {
                store
                    .delete_through(stream, *through)
                    .await
                    .map_err(Failure::Store)?;
                waiting.drained(stream.key.as_deref(), *through, true);
            }
            let sent = fb.sent.get_or_insert_with(HashMap::new);
            for (stream, through, whole) in &doubt.drained {
                sent.insert(stream.key.clone(), *through);
                store
                    .delete_through(stream, *through)
                    .await
                    .map_err(Failure::Store)?;
                waiting.drained(stream.key.as_deref(), *through, *whole);
            }
        }
        fb.in_doubt = None;
        Ok(committed && same)
    }

    /// The oldest waiting records of the streams this task owns, as many as the
    /// drain's rate allows now.
    async fn drain_batch(&mut self, waiting: &Waiting) -> Result<Drain, Failure> {
        let mut drain = Drain::default();
        if waiting.is_empty() {
            self.fallback.as_mut().expect("fallback").last_drain = Instant::now();
            return Ok(drain);
        }
        let (task, parallelism) = (self.task.partition, self.task.parallelism);
        let fb = self.fallback.as_mut().expect("fallback");
        let rate = fb.shared.settings().drain_rate;
        // The rate counts from the last commit (a drain or not), or from the
        // breaker's close if later, at most `MAX_DRAIN_WINDOW` back: a backlog met
        // after an outage or a restart drains at the rate, not all at once. Counted
        // from this task's last commit before the outage, the seconds spent probing
        // and settling a commit in doubt (by whichever task probed) would let the
        // backlog go out at once.
        let window = if fb.draining_rest {
            MAX_DRAIN_WINDOW
        } else {
            drain_window(fb.last_drain, fb.breaker.closed_at(), Instant::now())
        };
        let budget = match fb.control.mode() {
            DrainMode::Paused => 0,
            DrainMode::Unlimited => DRAIN_CHUNK,
            DrainMode::RateLimited if rate == 0 => DRAIN_CHUNK,
            DrainMode::RateLimited => {
                ((window.as_secs_f64() * rate as f64) as usize).min(DRAIN_CHUNK)
            }
        };
        if budget == 0 {
            if window >= MAX_DRAIN_WINDOW {
                fb.last_drain = Instant::now();
            }
            return Ok(drain);
        }
        fb.last_drain = Instant::now();
        let mut keys: Vec<Option<Vec<u8>>> = waiting
            .keys()
            .into_iter()
            .filter(|k| owner(k.as_deref(), parallelism) == task)
            .collect();
        if keys.is_empty() {
            return Ok(drain);
        }
        keys.sort();
        if fb.sent.is_none() {
            let sent = self.drain_records().map_err(|e| self.unreadable_log(e))?;
            self.fallback.as_mut().expect("fallback").sent = Some(sent);
        }
        let fb = self.fallback.as_ref().expect("fallback");
        let store = fb.shared.store().await.map_err(Failure::Store)?;
        let per_stream = budget.min(PER_STREAM);
        let streams: Vec<StreamId> = keys
            .into_iter()
            .map(|key| StreamId {
                pipeline: fb.pipeline.clone(),
                topic: self.topic.clone(),
                key,
            })
            .collect();
        let mut reads = futures::stream::iter(streams.into_iter().map(|stream| {
            let store = store.clone();
            // What was appended before the read: an empty read forgets the key only
            // if nothing came since.
            let before = waiting.last(stream.key.as_deref());
            async move {
                let read = store.oldest(&stream, per_stream).await;
                (stream, before, read)
            }
        }))
        .buffered(READS_IN_FLIGHT);
        let sent = fb.sent.as_ref().expect("read above");
        let mut keys_col = arrow::array::StringBuilder::new();
        let mut values_col = arrow::array::BinaryBuilder::new();
        while let Some((stream, before, read)) = reads.next().await {
            if drain.count as usize >= budget {
                break;
            }
            let records = match read {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(table = %self.table, error = %e, "fallback store: a drain read failed; retried next time");
                    continue;
                }
            };
            let whole = records.len() < per_stream;
            let Some(last) = records.last().map(|r| r.seq) else {
                // Nothing stored (drained by an earlier run, or an append that failed
                // and was not retried): the key is direct again.
                if let Some(before) = before {
                    waiting.forget(stream.key.as_deref(), before);
                }
                continue;
            };
            let done = sent.get(&stream.key).copied();
            for r in records.iter().filter(|r| done.is_none_or(|d| r.seq > d)) {
                keys_col.append_option(
                    r.stream
                        .key
                        .as_deref()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                );
                values_col.append_option(r.value.as_deref());
                drain.count += 1;
            }
            if done.is_none_or(|d| last > d) {
                drain.extra.push((drain_key(&stream), seq_value(last)));
            }
            drain.done.push((stream, last, whole));
        }
        if drain.count > 0 {
            let batch = RecordBatch::try_new(
                transactions::records_schema(),
                vec![
                    Arc::new(keys_col.finish()) as arrow::array::ArrayRef,
                    Arc::new(values_col.finish()),
                ],
            )
            .map_err(|e| {
                Failure::Fatal(crate::engine::EngineError::arrow(
                    "draining the fallback",
                    e,
                ))
            })?;
            drain.records.push(batch);
        }
        Ok(drain)
    }

    /// The commit topic's drain records of this sink's streams: the last sequence
    /// sent per key.
    fn drain_records(&self) -> Result<HashMap<Option<Vec<u8>>, Seq>> {
        let fb = self.fallback.as_ref().expect("fallback");
        let txn = self.txn.as_ref().expect("transactional");
        let prefix = format!("drain\u{1f}{}\u{1f}{}\u{1f}", fb.pipeline, self.topic);
        Ok(txn
            .commit_log()?
            .iter()
            .filter_map(|(k, v)| {
                let key = key_of_drain(k.strip_prefix(&prefix)?)?;
                Some((key, parse_seq(v)?))
            })
            .collect())
    }

    /// The fallback store's delivery marks of this pipeline, as commit markers, for
    /// a restore; an unavailable store is waited for.
    pub(super) async fn delivered_marks(&mut self) -> Result<Vec<Marker>> {
        let Some(fb) = self.fallback.as_ref() else {
            return Ok(Vec::new());
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            let marks = async {
                let store = fb.shared.store().await?;
                store.marks(&fb.pipeline).await
            }
            .await;
            match marks {
                Ok(marks) => {
                    return Ok(marks
                        .into_iter()
                        .map(|m| Marker {
                            id: m.writer,
                            lineage: m.lineage,
                            checkpoint: m.checkpoint,
                        })
                        .collect());
                }
                Err(e) => {
                    self.probe.retrying(&e);
                    tracing::warn!(table = %self.table, error = %e,
                        "reading the fallback store's delivery marks; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The end of input: drain what this task owns while the cluster takes it (what
    /// is left waits for the next run).
    pub(super) async fn drain_rest(&mut self) -> Result<()> {
        let Some(fb) = self.fallback.as_ref() else {
            return Ok(());
        };
        let control = fb.control.clone();
        let (task, parallelism) = (self.task.partition, self.task.parallelism);
        loop {
            let fb = self.fallback.as_mut().expect("checked");
            let waiting = match fb.waiting(&self.topic.clone()).await {
                Ok(w) => w,
                Err(_) => return Ok(()),
            };
            let mine = waiting
                .keys()
                .iter()
                .any(|k| owner(k.as_deref(), parallelism) == task);
            if !mine
                || control.mode() == DrainMode::Paused
                || fb.breaker.state() != crate::fallback::BreakerState::Closed
            {
                if mine {
                    tracing::warn!(table = %self.table, keys = waiting.len(),
                        "input ended with records waiting in the fallback store; the next run drains them");
                }
                return Ok(());
            }
            let before = control.drained.load(Ordering::Relaxed);
            fb.draining_rest = true;
            let sent = self.send_direct(&Commit::empty(), Route::Direct).await;
            self.fallback.as_mut().expect("checked").draining_rest = false;
            match sent {
                Ok(()) => {}
                Err(Failure::Fatal(e)) => return Err(e),
                Err(_) => return Ok(()),
            }
            if control.drained.load(Ordering::Relaxed) == before && !waiting.is_empty() {
                // Nothing moved (records already sent, deletes failing): stop here.
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_records_read_back() {
        for key in [None, Some(b"order-7\x1f\xff".to_vec())] {
            let s = StreamId {
                pipeline: "p".into(),
                topic: "t".into(),
                key: key.clone(),
            };
            let k = drain_key(&s);
            assert!(
                Marker::parse(
                    &k,
                    &seq_value(Seq {
                        checkpoint: 3,
                        index: 4
                    })
                )
                .is_none(),
                "a drain record is not a commit marker"
            );
            let hex = k.strip_prefix("drain\u{1f}p\u{1f}t\u{1f}").unwrap();
            assert_eq!(key_of_drain(hex), Some(key));
        }
        let seq = Seq {
            checkpoint: 5_000_000_007,
            index: (3 << 40) | 9,
        };
        assert_eq!(parse_seq(&seq_value(seq)), Some(seq));
        assert_eq!(parse_seq("x"), None);
        assert_eq!(key_of_drain("abc"), None);
    }

    #[test]
    fn every_key_has_one_owner_among_the_tasks() {
        for p in 1..5 {
            for k in 0..100u32 {
                let key = k.to_string();
                let o = owner(Some(key.as_bytes()), p);
                assert!(o < p);
                assert_eq!(o, owner(Some(key.as_bytes()), p), "stable");
            }
        }
    }

    #[test]
    fn the_drain_window_counts_from_the_later_of_the_last_commit_and_the_close() {
        let t = Instant::now();
        let s = Duration::from_secs;
        // No outage: from the last commit.
        assert_eq!(drain_window(t, None, t + s(2)), s(2));
        // The last commit of this task was before the outage (8 s of probing and
        // settling by another task): from the close, not from the commit.
        assert_eq!(drain_window(t, Some(t + s(8)), t + s(9)), s(1));
        // A commit since the close counts.
        assert_eq!(drain_window(t + s(9), Some(t + s(8)), t + s(10)), s(1));
        // Never more than the cap, and never negative.
        assert_eq!(drain_window(t, None, t + s(60)), MAX_DRAIN_WINDOW);
        assert_eq!(drain_window(t + s(5), None, t), Duration::ZERO);
    }
}
