//! The Kafka source: a table's topic partitions read by explicit assignment into
//! Arrow batches, with offsets (and each partition's event time) in checkpoints.
//! The invariants are in the module docs of `kafka/mod.rs`; decoding is in
//! `decode.rs`, record attributes in `metadata.rs`.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::client::Watch;
use super::decode::{self, Decoding, RecordDecoder};
use super::metadata::MetadataColumns;
use super::poll::{PollSettings, Polled, Poller};
use super::probe;
use super::{
    REQUEST_TIMEOUT, Result, avro_registry, check_registry, client_config, kafka_error,
    read_avro_schema,
};
use crate::connectors::{ConnectorError, Options, TableRequest};
use crate::engine::{Source, SourceContext, SourceFactory, TaskInfo};
use crate::formats::json::JsonDecoder;
use crate::registry::client::RegistryClient;

/// Where a source starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartFrom {
    Earliest,
    Latest,
    Group,
    /// The first record whose timestamp is at or after this (ms since the epoch).
    Timestamp(i64),
}

/// `start_timestamp`: RFC 3339 (`2026-12-01T08:00:00Z`) or milliseconds since the epoch.
fn parse_start_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    s.parse::<i64>().ok().or_else(|| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    })
}

/// Builds the source of a `connector = 'kafka'` table.
pub(crate) fn source(req: &TableRequest<'_>, opts: &mut Options) -> Result<Arc<dyn SourceFactory>> {
    Ok(Arc::new(factory(req, opts)?))
}

fn factory(req: &TableRequest<'_>, opts: &mut Options) -> Result<KafkaSourceFactory> {
    let (config, topic) = client_config(opts, req.env)?;
    let avro = avro_registry(opts, req.env)?;
    let start_timestamp = opts.get("start_timestamp");
    let start = match opts.get("offset").as_deref().map(str::trim) {
        None | Some("earliest") => StartFrom::Earliest,
        Some("latest") => StartFrom::Latest,
        Some("group") => StartFrom::Group,
        Some("timestamp") => match start_timestamp.as_deref().map(parse_start_timestamp) {
            Some(Some(ms)) => StartFrom::Timestamp(ms),
            Some(None) => {
                let v = start_timestamp.unwrap_or_default();
                return Err(opts.invalid(
                    "start_timestamp",
                    &v,
                    "expected an RFC 3339 time (2026-12-01T08:00:00Z) or milliseconds since the epoch",
                ));
            }
            None => {
                return Err(opts.invalid(
                    "offset",
                    "timestamp",
                    "offset = 'timestamp' needs start_timestamp",
                ));
            }
        },
        Some(other) => {
            let v = other.to_string();
            return Err(opts.invalid(
                "offset",
                &v,
                "expected earliest, latest, group or timestamp",
            ));
        }
    };
    if start_timestamp.is_some() && !matches!(start, StartFrom::Timestamp(_)) {
        return Err(opts.invalid(
            "start_timestamp",
            &start_timestamp.unwrap_or_default(),
            "applies with offset = 'timestamp'",
        ));
    }
    let group = opts.get("group_id");
    let bounded = opts.parse_bool("bounded", false)?;
    let outage_timeout = match opts.get("outage_timeout") {
        None => None,
        Some(v) => Some(
            crate::connectors::parse_duration(&v)
                .map_err(|e| opts.invalid("outage_timeout", &v, e))?,
        ),
    };
    let schema = req.schema.clone().ok_or_else(|| -> crate::Error {
        ConnectorError::Schema {
            table: req.table.into(),
            message: "the kafka connector decodes JSON into declared columns; declare them, e.g. \
                      CREATE TABLE t (id BIGINT, ts TIMESTAMP) WITH (connector = 'kafka', …)"
                .into(),
        }
        .into()
    })?;
    let meta = MetadataColumns::from_options(opts, &schema)?;
    let reader_schema = match opts.get("schema_file") {
        None => None,
        Some(_) if avro.is_none() => {
            return Err(opts.invalid(
                "schema_file",
                "",
                "a reader schema applies to format = 'avro'",
            ));
        }
        Some(file) => Some(read_avro_schema(opts, req.base_dir, &file)?),
    };
    JsonDecoder::new(meta.value_schema().clone()).map_err(|e| -> crate::Error {
        ConnectorError::Schema {
            table: req.table.into(),
            message: e.to_string(),
        }
        .into()
    })?;
    Ok(KafkaSourceFactory {
        table: req.table.to_string(),
        config,
        topic,
        group,
        start,
        bounded,
        outage_timeout,
        schema,
        meta,
        avro,
        reader_schema,
    })
}

struct KafkaSourceFactory {
    table: String,
    config: ClientConfig,
    topic: String,
    /// `group_id`; `None`: [`default_group_id`], known once the pipeline is.
    group: Option<String>,
    start: StartFrom,
    bounded: bool,
    /// Fail once the cluster has been unreachable this long (`None`: wait forever).
    outage_timeout: Option<Duration>,
    schema: SchemaRef,
    /// Columns filled from the record's key, offset, headers… (`metadata.*`).
    meta: MetadataColumns,
    /// Avro in the Confluent wire format: the registry.
    avro: Option<Arc<RegistryClient>>,
    /// The Avro schema records are read as (`schema_file`), resolving each writer's.
    reader_schema: Option<Arc<str>>,
}

impl SourceFactory for KafkaSourceFactory {
    fn topic(&self) -> Option<String> {
        Some(self.topic.clone())
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Positions are offsets per partition, so any task count can take them over.
    fn checkpointable(&self) -> bool {
        true
    }

    fn rescalable(&self) -> bool {
        true
    }

    fn bounded(&self) -> bool {
        self.bounded
    }

    fn describe(&self) -> String {
        format!(
            "kafka: topic {} at {} ({}, from {:?}{})",
            self.topic,
            self.config.get("bootstrap.servers").unwrap_or("?"),
            match &self.avro {
                Some(registry) => format!("Avro, schemas from {}", registry.url()),
                None => "JSON".into(),
            },
            self.start,
            if self.bounded {
                ", up to the end offsets at start"
            } else {
                ""
            }
        ) + &if self.meta.is_empty() {
            String::new()
        } else {
            format!("; metadata: {}", self.meta.describe())
        }
    }

    /// The registry answers and takes the credentials (Avro).
    fn preflight(&self) -> futures::future::BoxFuture<'_, Result<()>> {
        Box::pin(check_registry(&self.table, self.avro.as_deref()))
    }

    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Source>> {
        let config = self.consumer_config(task);
        let consumer: BaseConsumer<Watch> = config
            .create_with_context(Watch::default())
            .map_err(|e| kafka_error(&self.table, "creating the consumer", e))?;
        Ok(Box::new(KafkaSource {
            table: self.table.clone(),
            topic: self.topic.clone(),
            start: self.start,
            bounded: self.bounded,
            outage_timeout: self.outage_timeout,
            consumer: Arc::new(consumer),
            config,
            probe: probe::task_probe(task),
            meta: self.meta.clone(),
            avro: self.avro.clone(),
            reader_schema: self.reader_schema.clone(),
            assigned: Default::default(),
            next: Default::default(),
            task: task.clone(),
        }))
    }
}

/// The consumer group of a table read without `group_id`: `tributary-<pipeline>-<table>`,
/// so two pipelines reading tables of the same name do not share a group (and its
/// committed offsets), and stable across restarts.
fn default_group_id(pipeline: &str, table: &str) -> String {
    format!("tributary-{pipeline}-{table}")
}

impl KafkaSourceFactory {
    /// The consumer's settings for `task`: the table's client settings, its group
    /// (`group_id`, else [`default_group_id`]) and the source's fixed settings.
    fn consumer_config(&self, task: &TaskInfo) -> ClientConfig {
        let mut config = self.config.clone();
        let group = match &self.group {
            Some(group) => group.clone(),
            None => default_group_id(&task.pipeline, &self.table),
        };
        // librdkafka (≥ 2.1) pauses a partition's fetching for this long whenever its
        // local queue is over `queued.min.messages`; at the default (1 s) a consumer
        // slower than the broker drains the queue and then idles for most of that
        // second (measured: 78 s → 32 s for 9.2M JSON records). A few milliseconds
        // keep the queue fed; a `kafka.fetch.queue.backoff.ms` option still wins.
        if config.get("fetch.queue.backoff.ms").is_none() {
            config.set("fetch.queue.backoff.ms", "10");
        }
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A bounded read ends a partition at its end-of-partition event: on a
            // transactional topic the last offsets are commit/abort markers (and
            // aborted records) that no record is delivered for.
            .set(
                "enable.partition.eof",
                if self.bounded { "true" } else { "false" },
            );
        config
    }
}

struct KafkaSource {
    table: String,
    topic: String,
    start: StartFrom,
    bounded: bool,
    outage_timeout: Option<Duration>,
    /// Polled by the thread of [`Poller`] once assigned.
    consumer: Arc<BaseConsumer<Watch>>,
    /// The consumer's settings, for reading refused records' headers again.
    config: ClientConfig,
    probe: crate::health::Probe,
    meta: MetadataColumns,
    avro: Option<Arc<RegistryClient>>,
    reader_schema: Option<Arc<str>>,
    /// The partitions this task reads: a batch holds one partition's rows, so the
    /// watermark can follow the slowest partition.
    assigned: std::collections::BTreeSet<i32>,
    /// The offset to resume each partition from (checkpointed); partitions not read
    /// yet are absent.
    next: std::collections::BTreeMap<i32, i64>,
    task: TaskInfo,
}

/// Fails when the cluster refused the consumer's credentials: retrying does not mend
/// that, so the source stops naming it rather than wait as for an unreachable cluster.
fn refused(consumer: &BaseConsumer<Watch>, table: &str) -> Result<()> {
    match consumer.context().refused() {
        Some(why) => Err(refusal(table, why)),
        None => Ok(()),
    }
}

fn refusal(table: &str, why: String) -> crate::Error {
    kafka_error(table, "the cluster refused authentication", why)
}

/// Fails when the cluster has been unreachable for longer than `outage_timeout`: the
/// outage is then an incident for whoever restarts the pipeline, not one to wait out
/// silently. Nothing read is lost: the checkpoint holds what was processed.
fn outlasted(
    probe: &crate::health::Probe,
    outage_timeout: Option<Duration>,
    table: &str,
) -> Result<()> {
    let (Some(limit), Some(lasted)) = (outage_timeout, probe.retrying_for()) else {
        return Ok(());
    };
    if lasted < limit {
        return Ok(());
    }
    let last = match probe.state() {
        crate::health::State::Retrying { last_error, .. } => last_error,
        _ => String::new(),
    };
    Err(kafka_error(
        table,
        &format!(
            "the cluster has been unreachable for {:.0} s, longer than outage_timeout",
            lasted.as_secs_f64()
        ),
        last,
    ))
}

/// A task's partitions of `topic`, waiting (with backoff) while the cluster is
/// unreachable or the topic does not exist yet; `None` when stopped meanwhile.
async fn partitions(
    consumer: &BaseConsumer<Watch>,
    table: &str,
    topic: &str,
    task: &TaskInfo,
    stop: &crate::engine::StopSignal,
    probe: &crate::health::Probe,
    outage_timeout: Option<Duration>,
) -> Result<Option<Vec<i32>>> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let fetched =
            tokio::task::block_in_place(|| consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT));
        match fetched {
            Ok(md) => {
                let parts: Vec<i32> = md
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if !parts.is_empty() {
                    probe.up();
                    return Ok(Some(
                        parts
                            .into_iter()
                            .filter(|p| *p as usize % task.parallelism == task.partition)
                            .collect(),
                    ));
                }
                tracing::warn!(task = %task, topic, "topic not found yet; waiting for it");
                probe.retrying(format!("topic {topic} not found"));
            }
            Err(e) => {
                // Nothing is assigned yet, so this only serves the client's events:
                // errors reach the context (`Watch`) when the queue is polled.
                let _ = tokio::task::block_in_place(|| {
                    consumer
                        .poll(Duration::from_millis(10))
                        .map(|r| r.map(|_| ()))
                });
                refused(consumer, table)?;
                tracing::warn!(task = %task, error = %e, "kafka unreachable; retrying");
                probe.retrying(format!("fetching metadata: {e}"));
            }
        }
        outlasted(probe, outage_timeout, table)?;
        if stop.is_raised() {
            return Ok(None);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<()> {
        self.read(ctx).await?;
        // Where it ended (a bounded read, or a stop): later checkpoints resume here.
        ctx.final_position = Some(
            serde_json::to_vec(&self.next)
                .map_err(|e| kafka_error(&self.table, "checkpointing offsets", e))?,
        );
        Ok(())
    }
}

impl KafkaSource {
    /// Where partition `p` starts and ends now. A cluster that cannot answer (down,
    /// electing a leader: `NotLeaderForPartition` just after it comes back) is an
    /// outage: retried with backoff, reported, until `outage_timeout`; `None` when
    /// stopped meanwhile.
    async fn end_offsets(
        &self,
        p: i32,
        stop: &crate::engine::StopSignal,
    ) -> Result<Option<(i64, i64)>> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let fetched = tokio::task::block_in_place(|| {
                self.consumer
                    .fetch_watermarks(&self.topic, p, REQUEST_TIMEOUT)
            });
            match fetched {
                Ok(w) => {
                    self.probe.up();
                    return Ok(Some(w));
                }
                Err(e) => {
                    refused(&self.consumer, &self.table)?;
                    tracing::warn!(task = %self.task, partition = p, error = %e,
                        "reading end offsets failed; retrying");
                    self.probe.retrying(format!("reading end offsets: {e}"));
                }
            }
            outlasted(&self.probe, self.outage_timeout, &self.table)?;
            if stop.is_raised() {
                return Ok(None);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn read(&mut self, ctx: &mut SourceContext) -> Result<()> {
        let Some(partitions) = partitions(
            &self.consumer,
            &self.table,
            &self.topic,
            &self.task,
            &ctx.stop,
            &self.probe,
            self.outage_timeout,
        )
        .await?
        else {
            return Ok(());
        };
        let _recheck = probe::recheck_source(
            self.probe.clone(),
            self.consumer.clone(),
            self.topic.clone(),
        );
        // Resuming: the next offset of every partition in the checkpoint (after a
        // change of parallelism, every old task's; this task keeps its partitions).
        let mut resume: std::collections::BTreeMap<i32, i64> = Default::default();
        for position in ctx.restored_positions().await? {
            let offsets: std::collections::BTreeMap<i32, i64> =
                serde_json::from_slice(&position)
                    .map_err(|e| kafka_error(&self.table, "reading the checkpointed offsets", e))?;
            resume.extend(offsets);
        }
        // Bounded: where each partition ends (its high watermark at start).
        let mut ends: std::collections::HashMap<i32, i64> = Default::default();
        let mut assignment = TopicPartitionList::new();
        let mut by_time = TopicPartitionList::new();
        for &p in &partitions {
            let restored = resume.get(&p).copied();
            // A restored offset stays part of this task's position even when the
            // partition has nothing left to read, so later checkpoints keep it.
            if let Some(n) = restored {
                self.next.insert(p, n);
            }
            if self.bounded {
                let Some((low, high)) = self.end_offsets(p, &ctx.stop).await? else {
                    return Ok(());
                };
                let from = restored.unwrap_or(low);
                if high <= from || (restored.is_none() && self.start == StartFrom::Latest) {
                    continue;
                }
                ends.insert(p, high);
            }
            // A partition the checkpoint has no offset for (nothing read from it yet,
            // or added since) starts as configured.
            let offset = match (restored, self.start) {
                (Some(next), _) => Offset::Offset(next),
                (None, StartFrom::Earliest) => Offset::Beginning,
                (None, StartFrom::Latest) => Offset::End,
                (None, StartFrom::Group) => Offset::Stored,
                (None, StartFrom::Timestamp(ms)) => Offset::Offset(ms),
            };
            let list = match (restored, self.start) {
                (None, StartFrom::Timestamp(_)) => &mut by_time,
                _ => &mut assignment,
            };
            list.add_partition_offset(&self.topic, p, offset)
                .map_err(|e| kafka_error(&self.table, "assigning partitions", e))?;
            self.assigned.insert(p);
        }
        if by_time.count() > 0 {
            // Timestamps in the list → the first offset at or after each.
            let found = tokio::task::block_in_place(|| {
                self.consumer.offsets_for_times(by_time, REQUEST_TIMEOUT)
            })
            .map_err(|e| kafka_error(&self.table, "finding offsets for start_timestamp", e))?;
            for e in found.elements() {
                assignment
                    .add_partition_offset(e.topic(), e.partition(), e.offset())
                    .map_err(|e| kafka_error(&self.table, "assigning partitions", e))?;
            }
        }
        ctx.out
            .register_splits(self.assigned.iter().map(|p| *p as u64));
        if assignment.count() == 0 {
            // Nothing to read: more tasks than partitions, or an empty bounded topic.
            if self.bounded {
                return Ok(());
            }
            tracing::info!(task = %self.task, "no partition of {} for this task", self.topic);
            // Stay, taking part in checkpoints, until stopped.
            let mut stop = ctx.stop.clone();
            loop {
                if let Some(id) = ctx.checkpoint_due() {
                    let position = serde_json::to_vec(&self.next)
                        .map_err(|e| kafka_error(&self.table, "checkpointing offsets", e))?;
                    ctx.checkpoint(id, position).await?;
                }
                tokio::select! {
                    _ = stop.raised() => return Ok(()),
                    _ = tokio::time::sleep(ctx.batch.flush_interval) => {}
                }
            }
        }
        self.consumer
            .assign(&assignment)
            .map_err(|e| kafka_error(&self.table, "assigning partitions", e))?;
        let started = self.start_polling(ends, ctx)?;
        let (read, poller) = self.read_polled(started, ctx).await;
        if !poller.stop() {
            read?;
            return Err(kafka_error(
                &self.table,
                "polling",
                "the polling thread panicked",
            ));
        }
        read
    }

    /// Starts the polling thread and the decoding workers.
    fn start_polling(
        &self,
        ends: std::collections::HashMap<i32, i64>,
        ctx: &SourceContext,
    ) -> Result<(Poller, Decoding)> {
        // A decoding worker per partition, up to the cores there are: decoding is most
        // of a record's cost, and polling needs little of a core.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let lanes = self.assigned.len().min(cores);
        let poller = Poller::start(
            self.consumer.clone(),
            PollSettings {
                assigned: self.assigned.clone(),
                ends: self.bounded.then_some(ends),
                meta: self.meta.clone(),
                bad: ctx.bad_records.clone(),
                probe: self.probe.clone(),
                batch_size: ctx.batch.size.max(1),
                task: self.task.to_string(),
            },
            decode::MAX_IN_FLIGHT * lanes,
        )
        .map_err(|e| kafka_error(&self.table, "starting the polling thread", e))?;
        let schemas = self
            .avro
            .clone()
            .map(|registry| decode::Schemas::new(registry, &self.task, &ctx.stop));
        let decoding = Decoding::start(
            &self.table,
            lanes,
            || {
                RecordDecoder::new(
                    self.meta.value_schema().clone(),
                    schemas.clone(),
                    self.reader_schema.clone(),
                    ctx.batch.size,
                )
            },
            &self.meta,
            &self.topic,
            &ctx.bad_records,
            &self.config,
            poller.recycle(),
        );
        match decoding {
            Ok(decoding) => Ok((poller, decoding)),
            Err(e) => {
                poller.stop();
                Err(e)
            }
        }
    }

    /// Emits what the polling thread reads, taking checkpoints, until the end of a
    /// bounded read or a stop; gives the poller back to be stopped.
    async fn read_polled(
        &mut self,
        (mut poller, mut decoding): (Poller, Decoding),
        ctx: &mut SourceContext,
    ) -> (Result<()>, Poller) {
        let result = self.emit_polled(&mut poller, &mut decoding, ctx).await;
        // Whatever was sent to the workers is emitted (or the first error kept).
        let drained = decoding.drain(&mut ctx.out).await;
        (result.and(drained), poller)
    }

    async fn emit_polled(
        &mut self,
        poller: &mut Poller,
        decoding: &mut Decoding,
        ctx: &mut SourceContext,
    ) -> Result<()> {
        let KafkaSource {
            consumer,
            bounded,
            outage_timeout,
            task,
            topic,
            next,
            probe,
            ..
        } = self;
        let consumer: &BaseConsumer<Watch> = consumer;
        let mut ticker = tokio::time::interval(ctx.batch.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = ctx.stop.clone();
        // Offsets of the checkpoints taken, committed to the consumer group once the
        // checkpoint is (for lag monitoring and `offset = 'group'`; never before).
        let committed = ctx.checkpoints.as_ref().map(|c| c.committed());
        let mut taken: std::collections::VecDeque<(u64, std::collections::BTreeMap<i32, i64>)> =
            Default::default();
        loop {
            if let Some(done) = committed.as_ref().map(|c| *c.borrow()) {
                commit_offsets(consumer, topic, &mut taken, done);
            }
            if let Some(id) = ctx.checkpoint_due() {
                // Every chunk received out, then the offsets to resume from: records
                // still in the polling thread come after them.
                decoding.drain(&mut ctx.out).await?;
                let position = serde_json::to_vec(&*next)
                    .map_err(|e| kafka_error(&task.node, "checkpointing offsets", e))?;
                ctx.checkpoint(id, position).await?;
                taken.push_back((id, next.clone()));
            }
            tokio::select! {
                polled = poller.next() => match polled {
                    Some(Polled::Records { partition, raw, next: after }) => {
                        decoding.send(partition, raw, &mut ctx.out).await?;
                        next.insert(partition, after);
                    }
                    Some(Polled::End(p)) => {
                        // This partition is read: its rows out, then it stops holding
                        // the watermark back.
                        decoding.drain(&mut ctx.out).await?;
                        ctx.out.end_split(p as u64).await?;
                    }
                    Some(Polled::Refused(why)) => return Err(refusal(&task.node, why)),
                    // A bounded read's thread ends once every partition has (a thread
                    // that panicked is found when it is joined).
                    None if *bounded => return Ok(()),
                    None => {
                        return Err(kafka_error(&task.node, "polling", "the polling thread stopped"));
                    }
                },
                decoded = decoding.finished(), if decoding.busy() => {
                    Decoding::emit(decoded, &mut ctx.out).await?;
                }
                _ = ticker.tick() => {
                    // Credentials refused while reading (rotated, revoked): librdkafka
                    // only reports it to the context.
                    refused(consumer, &task.node)?;
                    outlasted(probe, *outage_timeout, &task.node)?;
                    poller.flush();
                    // A partition silent for the idle timeout stops holding the
                    // watermark back. Silent because nothing is read yet, or because
                    // the cluster is unreachable, it is not idle: its records are
                    // only delayed, and would be made late by the partitions that
                    // happen to come first.
                    if poller.reading() && probe.state() == crate::health::State::Up {
                        ctx.out.tick().await?;
                    } else {
                        ctx.out.unreachable();
                    }
                }
                _ = stop.raised() => return Ok(()),
            }
        }
    }
}

/// Commits to the consumer group the offsets of the newest checkpoint in `taken` that
/// is committed (`done`), and forgets the older ones. Asynchronous: a failure is only
/// logged (the checkpoint, not the group, is where the source resumes).
fn commit_offsets(
    consumer: &BaseConsumer<Watch>,
    topic: &str,
    taken: &mut std::collections::VecDeque<(u64, std::collections::BTreeMap<i32, i64>)>,
    done: u64,
) {
    let mut newest = None;
    while taken.front().is_some_and(|(id, _)| *id <= done) {
        newest = taken.pop_front();
    }
    let Some((_, offsets)) = newest else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    for (p, next) in offsets {
        if tpl
            .add_partition_offset(topic, p, Offset::Offset(next))
            .is_err()
        {
            return;
        }
    }
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async)
    {
        tracing::warn!(topic, error = %e, "committing checkpointed offsets to the group failed");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::connectors::ConnectorEnv;

    fn group_of(pipeline: &str, table: &str, extra: &[(&str, &str)]) -> String {
        let values: BTreeMap<String, String> =
            [("bootstrap_servers", "127.0.0.1:1"), ("topic", "orders")]
                .iter()
                .chain(extra)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let mut opts = Options::new(table, "kafka", values);
        let env = ConnectorEnv::default();
        let req = TableRequest {
            table,
            env: &env,
            schema: Some(Arc::new(Schema::new(vec![Field::new(
                "id",
                DataType::Int64,
                true,
            )]))),
            base_dir: std::path::Path::new("."),
        };
        let factory = factory(&req, &mut opts).unwrap();
        let task = TaskInfo {
            pipeline: pipeline.into(),
            node: table.into(),
            partition: 0,
            parallelism: 1,
            state: crate::state::memory_backend(),
        };
        factory
            .consumer_config(&task)
            .get("group.id")
            .unwrap()
            .to_string()
    }

    #[test]
    fn pipelines_reading_tables_of_the_same_name_get_different_default_groups() {
        let a = group_of("billing", "orders", &[]);
        let b = group_of("shipping", "orders", &[]);
        assert_eq!(a, "tributary-billing-orders");
        assert_eq!(b, "tributary-shipping-orders");
        assert_ne!(a, b);
    }

    #[test]
    fn an_explicit_group_id_is_kept() {
        for pipeline in ["billing", "shipping"] {
            assert_eq!(
                group_of(pipeline, "orders", &[("group_id", "legacy-orders")]),
                "legacy-orders"
            );
        }
    }
}
