//! The `kafka` connector: Apache Kafka (any Kafka-API cluster) on `rdkafka`, with
//! librdkafka built from its bundled source.
//!
//! Owns reading topic partitions into Arrow batches (JSON, or Avro in the Confluent
//! wire format with writer schemas from a registry) and writing batches as records.
//!
//! Source invariants:
//! - The topic's partitions are spread over the source tasks (partition `i` to task
//!   `i mod parallelism`) by explicit assignment, not consumer-group rebalancing: a
//!   partition is read by exactly one task, so per-task order is per-partition order.
//! - Offsets are never auto-committed: where reading starts is `offset`
//!   (`earliest`, `latest`, `group`: the group's committed offsets, or `timestamp`),
//!   unless a checkpoint is restored (its offsets win). A checkpoint records the next
//!   offset of every partition read; once it is committed, those offsets are committed
//!   to the consumer group, never earlier.
//! - A record that does not decode is a bad record (dead-letter path), never a crash.
//!   An unreachable cluster is retried with backoff (the source pauses, it does not
//!   fail); errors are logged at a bounded rate.
//! - Each task reports its connection state to the health table (`probe.rs`).
//! - With `bounded = 'true'` the source reads each partition up to its end offset at
//!   start and then ends (tests, backfills).
//! - Watermarks per partition: each batch holds one partition's rows and the task's
//!   watermark follows its slowest partition (`Collector::emit_split`), so a partition
//!   that is behind does not have its rows made late by one that is ahead.
//! - Record values are decoded off the polling task, by workers that keep each
//!   partition's order and are drained before every checkpoint barrier
//!   (`decode.rs`, ADR 0010).
//! - Record attributes (key, offset, headers…) reach columns only through
//!   `metadata.*` options (`metadata.rs`); domains and clusters resolve through the
//!   configuration (`domains.rs`).
//!
//! Sink invariants:
//! - Idempotent producer (`enable.idempotence`), `acks=all`; each row is one record,
//!   JSON or Avro (a contract from `schema_file`, or a schema derived from the
//!   columns), keyed by `key_field` when given and partitioned like the Java client
//!   (murmur2), so a key's records share a partition and stay in order. `flush`/`finish`
//!   wait until every record sent is acknowledged; a record the cluster refuses fails
//!   the pipeline, naming the topic.
//! - In an exactly-once pipeline the sink is transactional (`transactions.rs`): its
//!   output since the last checkpoint is held in the checkpoint (write-ahead) and sent
//!   in one transaction, with a commit marker, once that checkpoint commits; a restore
//!   sends again what a crash left uncommitted. `read_committed` consumers see each
//!   row once. Otherwise (at-least-once) rows are sent as they come.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use super::{ConnectorEnv, ConnectorError, Options, TableRequest};
use client::Watch;
use decode::{Decoding, RecordDecoder, conform};
pub use domains::{ClusterConfig, KafkaConfig};
use metadata::MetadataColumns;

mod client;
mod decode;
mod domains;
mod metadata;
mod probe;
mod transactions;
use crate::engine::{Sink, SinkFactory, Source, SourceContext, SourceFactory, TaskInfo};
use crate::formats::json::JsonDecoder;
use crate::registry::client::RegistryClient;
use transactions::Transactions;

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// How long a metadata or watermark request may take before it is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Where transactional sinks record which checkpoint's output committed.
const DEFAULT_COMMIT_TOPIC: &str = "_tributary_commits";

fn kafka_error(table: &str, what: &str, e: impl std::fmt::Display) -> crate::Error {
    ConnectorError::Other {
        connector: "kafka",
        message: format!("table {table}: {what}: {e}"),
    }
    .into()
}

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

/// Client settings and topic shared by the source and the sink: the cluster (its
/// `bootstrap_servers`, or a configured `cluster` / `domain`, see [`domains`]) and any
/// librdkafka property given as `kafka.<property>` (e.g. `kafka.security.protocol`).
fn client_config(opts: &mut Options, env: &ConnectorEnv) -> Result<(ClientConfig, String)> {
    let domains::Endpoint {
        mut config, topic, ..
    } = domains::endpoint(opts, &env.kafka)?;
    // Keep the log quiet and the client id recognisable.
    config.set("client.id", format!("tributary-{}", opts.table));
    for (key, value) in opts.prefixed("kafka.") {
        config.set(key, value);
    }
    Ok((config, topic))
}

/// `format` (`json`, the default, or `avro`) and, for Avro in the Confluent wire
/// format, the registry's client: `schema_registry_url`, else the configured one
/// (`[registry] url`), with `[registry]`'s settings, `schema_registry_basic_auth_user_info`
/// and `schema_registry_ca_file` overriding theirs. `Some(client)` for Avro.
fn avro_registry(opts: &mut Options, env: &ConnectorEnv) -> Result<Option<Arc<RegistryClient>>> {
    let format = opts.get("format").unwrap_or_else(|| "json".into());
    let url = opts
        .get("schema_registry_url")
        .or_else(|| env.registry_url.clone());
    let mut settings = env.registry.clone();
    if let Some(info) = opts.get("schema_registry_basic_auth_user_info") {
        settings.basic_auth_user_info = Some(info);
    }
    if let Some(file) = opts.get("schema_registry_ca_file") {
        settings.ca_file = Some(file.into());
    }
    match (format.as_str(), url) {
        ("json", _) => Ok(None),
        ("avro", Some(url)) => RegistryClient::new(&url, &settings)
            .map(|c| Some(Arc::new(c)))
            .map_err(|e| e.in_table(&opts.table).into()),
        ("avro", None) => Err(opts.invalid(
            "format",
            "avro",
            "Avro in the Confluent wire format needs schema_registry_url",
        )),
        (other, _) => Err(opts.invalid("format", other, "expected json or avro")),
    }
}

/// `tributary check` of an Avro table: its registry answers and takes the credentials.
async fn check_registry(table: &str, registry: Option<&RegistryClient>) -> Result<()> {
    match registry {
        Some(r) => r.check().await.map_err(|e| e.in_table(table).into()),
        None => Ok(()),
    }
}

/// Whether a failed transaction is worth another try: anything but a fatal
/// transaction error (fenced, unauthorised) and records the cluster will never take.
fn transient(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => !t.is_fatal(),
        KafkaError::MessageProduction(code) => !matches!(
            code,
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fatal
        ),
        // The commit topic's creation (the admin request timed out, …).
        KafkaError::AdminOp(code) => !matches!(
            code,
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        ),
        KafkaError::AdminOpCreation(_) => true,
        _ => false,
    }
}

/// Whether the transactional producer itself is finished (fatal error, fenced).
fn fenced(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        KafkaError::MessageProduction(code) => matches!(
            code,
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fatal
        ),
        _ => false,
    }
}

/// Builds the source of a `connector = 'kafka'` table.
pub(crate) fn source(req: &TableRequest<'_>, opts: &mut Options) -> Result<Arc<dyn SourceFactory>> {
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
    let group = opts
        .get("group_id")
        .unwrap_or_else(|| format!("tributary-{}", req.table));
    let bounded = opts.parse_bool("bounded", false)?;
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
    Ok(Arc::new(KafkaSourceFactory {
        table: req.table.to_string(),
        config,
        topic,
        group,
        start,
        bounded,
        schema,
        meta,
        avro,
        reader_schema,
    }))
}

/// Reads and checks the Avro schema of `schema_file` (relative to the SQL file).
fn read_avro_schema(opts: &Options, base: &std::path::Path, file: &str) -> Result<Arc<str>> {
    let path = base.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| opts.invalid("schema_file", file, format!("{}: {e}", path.display())))?;
    crate::registry::schema::AvroSchema::parse(&text)
        .map_err(|e| opts.invalid("schema_file", file, e.to_string()))?;
    Ok(text.into())
}

struct KafkaSourceFactory {
    table: String,
    config: ClientConfig,
    topic: String,
    group: String,
    start: StartFrom,
    bounded: bool,
    schema: SchemaRef,
    /// Columns filled from the record's key, offset, headers… (`metadata.*`).
    meta: MetadataColumns,
    /// Avro in the Confluent wire format: the registry.
    avro: Option<Arc<RegistryClient>>,
    /// The Avro schema records are read as (`schema_file`), resolving each writer's.
    reader_schema: Option<Arc<str>>,
}

impl SourceFactory for KafkaSourceFactory {
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
        let mut config = self.config.clone();
        // librdkafka (≥ 2.1) pauses a partition's fetching for this long whenever its
        // local queue is over `queued.min.messages`; at the default (1 s) a consumer
        // slower than the broker drains the queue and then idles for most of that
        // second (measured: 78 s → 32 s for 9.2M JSON records). A few milliseconds
        // keep the queue fed; a `kafka.fetch.queue.backoff.ms` option still wins.
        if config.get("fetch.queue.backoff.ms").is_none() {
            config.set("fetch.queue.backoff.ms", "10");
        }
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A bounded read ends a partition at its end-of-partition event: on a
            // transactional topic the last offsets are commit/abort markers (and
            // aborted records) that no record is delivered for.
            .set(
                "enable.partition.eof",
                if self.bounded { "true" } else { "false" },
            );
        let consumer: StreamConsumer<Watch> = config
            .create_with_context(Watch::default())
            .map_err(|e| kafka_error(&self.table, "creating the consumer", e))?;
        Ok(Box::new(KafkaSource {
            table: self.table.clone(),
            topic: self.topic.clone(),
            start: self.start,
            bounded: self.bounded,
            consumer: Arc::new(consumer),
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

struct KafkaSource {
    table: String,
    topic: String,
    start: StartFrom,
    bounded: bool,
    consumer: Arc<StreamConsumer<Watch>>,
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
fn refused(consumer: &StreamConsumer<Watch>, table: &str) -> Result<()> {
    match consumer.context().refused() {
        Some(why) => Err(kafka_error(
            table,
            "the cluster refused authentication",
            why,
        )),
        None => Ok(()),
    }
}

/// A task's partitions of `topic`, waiting (with backoff) while the cluster is
/// unreachable or the topic does not exist yet; `None` when stopped meanwhile.
async fn partitions(
    consumer: &StreamConsumer<Watch>,
    table: &str,
    topic: &str,
    task: &TaskInfo,
    stop: &crate::engine::StopSignal,
    probe: &crate::health::Probe,
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
                let _ = tokio::time::timeout(Duration::from_millis(10), consumer.recv()).await;
                refused(consumer, table)?;
                tracing::warn!(task = %task, error = %e, "kafka unreachable; retrying");
                probe.retrying(format!("fetching metadata: {e}"));
            }
        }
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
    async fn read(&mut self, ctx: &mut SourceContext) -> Result<()> {
        let Some(partitions) = partitions(
            &self.consumer,
            &self.table,
            &self.topic,
            &self.task,
            &ctx.stop,
            &self.probe,
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
                let (low, high) = tokio::task::block_in_place(|| {
                    self.consumer
                        .fetch_watermarks(&self.topic, p, REQUEST_TIMEOUT)
                })
                .map_err(|e| kafka_error(&self.table, "reading end offsets", e))?;
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
        // A decoding worker per partition, up to the cores there are: decoding is most
        // of a record's cost, and the polling task needs little of a core.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let schemas = self
            .avro
            .clone()
            .map(|registry| decode::Schemas::new(registry, &self.task, &ctx.stop));
        let mut decoding = Decoding::start(
            &self.table,
            self.assigned.len().min(cores),
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
            ctx.batch.size,
        )?;
        let KafkaSource {
            consumer,
            assigned,
            bounded,
            task,
            meta,
            topic,
            next,
            probe,
            ..
        } = self;
        let consumer: &StreamConsumer<Watch> = consumer;
        // Every message already received, up to 4096, per wake-up: the loop's per-wake
        // work (timers, checkpoint checks) is shared by many records.
        let mut stream = consumer.stream().ready_chunks(4096);
        let mut ticker = tokio::time::interval(ctx.batch.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = ctx.stop.clone();
        let mut logged: Option<Instant> = None;
        // Offsets of the checkpoints taken, committed to the consumer group once the
        // checkpoint is (for lag monitoring and `offset = 'group'`; never before).
        let committed = ctx.checkpoints.as_ref().map(|c| c.committed());
        let mut taken: std::collections::VecDeque<(u64, std::collections::BTreeMap<i32, i64>)> =
            Default::default();
        loop {
            if *bounded && ends.is_empty() {
                break;
            }
            if let Some(done) = committed.as_ref().map(|c| *c.borrow()) {
                commit_offsets(consumer, topic, &mut taken, done);
            }
            if let Some(id) = ctx.checkpoint_due() {
                // Everything read so far out, then the offsets to resume from.
                decoding.drain(&mut ctx.out).await?;
                let position = serde_json::to_vec(&*next)
                    .map_err(|e| kafka_error(&task.node, "checkpointing offsets", e))?;
                ctx.checkpoint(id, position).await?;
                taken.push_back((id, next.clone()));
            }
            tokio::select! {
                msgs = stream.next() => {
                    let Some(msgs) = msgs else { break };
                    for msg in msgs {
                        let m = match msg {
                            Ok(m) => {
                                probe.up();
                                m
                            }
                            Err(KafkaError::PartitionEOF(p)) => {
                                // Read up to the partition's end as it is now (past
                                // markers and aborted records), at or beyond its end
                                // at start: this partition is done.
                                probe.up();
                                if *bounded && ends.remove(&p).is_some() {
                                    decoding.drain(&mut ctx.out).await?;
                                    ctx.out.end_split(p as u64).await?;
                                }
                                continue;
                            }
                            Err(e) => {
                                refused(consumer, &task.node)?;
                                probe.retrying(&e);
                                // Transient (broker down, rebalance in the cluster):
                                // librdkafka retries; say so at most every 10 s.
                                if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                                    tracing::warn!(task = %task, error = %e, "kafka consumer error; retrying");
                                    logged = Some(Instant::now());
                                }
                                continue;
                            }
                        };
                        let p = m.partition();
                        // Bounded: a partition read to its end takes nothing newer.
                        if *bounded && !ends.contains_key(&p) {
                            continue;
                        }
                        if !assigned.contains(&p) {
                            continue;
                        }
                        decoding.push(&m, meta, &mut ctx.bad_records, &mut ctx.out).await?;
                        next.insert(p, m.offset() + 1);
                        if *bounded
                            && ends.get(&p).is_some_and(|end| m.offset() + 1 >= *end)
                        {
                            // This partition is read: its rows out, then it stops
                            // holding the watermark back.
                            ends.remove(&p);
                            decoding.drain(&mut ctx.out).await?;
                            ctx.out.end_split(p as u64).await?;
                        }
                    }
                }
                decoded = decoding.finished(), if decoding.busy() => {
                    Decoding::emit(decoded, &mut ctx.out).await?;
                }
                _ = ticker.tick() => {
                    // Credentials refused while reading (rotated, revoked): librdkafka
                    // only reports it to the context.
                    refused(consumer, &task.node)?;
                    decoding.send_all(&mut ctx.out).await?;
                    // A partition silent for the idle timeout stops holding the
                    // watermark back.
                    ctx.out.tick().await?;
                }
                _ = stop.raised() => break,
            }
        }
        decoding.drain(&mut ctx.out).await
    }
}

/// Commits to the consumer group the offsets of the newest checkpoint in `taken` that
/// is committed (`done`), and forgets the older ones. Asynchronous: a failure is only
/// logged (the checkpoint, not the group, is where the source resumes).
fn commit_offsets(
    consumer: &StreamConsumer<Watch>,
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

/// Builds the sink of a `connector = 'kafka'` table.
pub(crate) fn sink(req: &TableRequest<'_>, opts: &mut Options) -> Result<Arc<dyn SinkFactory>> {
    let (mut config, topic) = client_config(opts, req.env)?;
    let avro = avro_registry(opts, req.env)?;
    let contract = match opts.get("schema_file") {
        None => None,
        Some(_) if avro.is_none() => {
            return Err(opts.invalid(
                "schema_file",
                "",
                "a writer schema applies to format = 'avro'",
            ));
        }
        Some(file) => {
            let text = read_avro_schema(opts, req.base_dir, &file)?;
            Some(Contract::new(text).map_err(|e| opts.invalid("schema_file", &file, e))?)
        }
    };
    let key_field = opts.get("key_field");
    if let (Some(k), Some(schema)) = (&key_field, &req.schema)
        && schema.index_of(k).is_err()
    {
        let v = k.clone();
        return Err(opts.invalid("key_field", &v, "no such column in the table"));
    }
    // A changelog as written: rows with their `_op` (append), or the table's current
    // state by key (upsert: a compacted topic's view).
    let upsert = match opts.get("changelog").as_deref() {
        None | Some("append") => false,
        Some("upsert") if key_field.is_some() => true,
        Some("upsert") => {
            return Err(opts.invalid(
                "changelog",
                "upsert",
                "an upsert topic is keyed: set key_field to the result's key",
            ));
        }
        Some(other) => {
            let v = other.to_string();
            return Err(opts.invalid("changelog", &v, "expected append or upsert"));
        }
    };
    let compression = opts.get("compression").unwrap_or_else(|| "lz4".into());
    if !["none", "gzip", "snappy", "lz4"].contains(&compression.as_str()) {
        let v = compression.clone();
        return Err(opts.invalid("compression", &v, "expected none, gzip, snappy or lz4"));
    }
    // Java's default (murmur2 of the key bytes), so a key lands on the partition a
    // Java or Kafka Streams producer would pick: co-partitioning across clients.
    let partitioner = opts
        .get("partitioner")
        .unwrap_or_else(|| "murmur2_random".into());
    const PARTITIONERS: [&str; 7] = [
        "murmur2_random",
        "murmur2",
        "consistent_random",
        "consistent",
        "fnv1a_random",
        "fnv1a",
        "random",
    ];
    if !PARTITIONERS.contains(&partitioner.as_str()) {
        let v = partitioner.clone();
        return Err(opts.invalid(
            "partitioner",
            &v,
            format!("expected one of {}", PARTITIONERS.join(", ")),
        ));
    }
    let partitions: Option<i32> = match opts.get("partitions") {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<i32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| opts.invalid("partitions", &v, "a positive number"))?,
        ),
    };
    let replication = opts.parse::<i32>("replication_factor", 1)?;
    // Topic-level settings for a topic this sink creates: `retention`, and any topic
    // config as `topic.<name>` (e.g. `topic.cleanup.policy = 'compact'`).
    let mut topic_configs = opts.prefixed("topic.");
    if let Some(r) = opts.get("retention") {
        let ms = match r.trim() {
            "infinite" => -1,
            v => super::parse_duration(v)
                .map_err(|e| opts.invalid("retention", &r, e))?
                .as_millis() as i64,
        };
        topic_configs.push(("retention.ms".into(), ms.to_string()));
    }
    let create = match partitions {
        Some(partitions) => Some(TopicSpec {
            partitions,
            replication,
            configs: topic_configs,
        }),
        None if !topic_configs.is_empty() => {
            let (k, v) = topic_configs.swap_remove(0);
            return Err(opts.invalid(
                if k == "retention.ms" {
                    "retention"
                } else {
                    "topic."
                },
                &v,
                "topic settings apply when the sink creates its topic: set partitions too",
            ));
        }
        None => None,
    };
    // The CloudEvents Kafka protocol binding, binary mode: the event's attributes in
    // `ce_*` headers, so consumers that do not read the payload can route on type.
    let cloudevents = opts.get("cloudevents_type").map(|ty| CloudEvents {
        source: format!("tributary/{}", req.table),
        ty,
    });
    let cloudevents = match (cloudevents, opts.get("cloudevents_source")) {
        (Some(ce), Some(source)) => Some(CloudEvents { source, ..ce }),
        (ce, None) => ce,
        (None, Some(v)) => {
            return Err(opts.invalid(
                "cloudevents_source",
                &v,
                "set cloudevents_type too (it turns the CloudEvents headers on)",
            ));
        }
    };
    // Exactly-once pipelines: the transactional ids (`<prefix>-<task>`) and the
    // topic of the markers that say which checkpoint's output committed.
    let transactional_id_prefix = opts.get("transactional_id_prefix");
    let commit_topic = opts
        .get("commit_topic")
        .unwrap_or_else(|| DEFAULT_COMMIT_TOPIC.into());
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", compression)
        .set("partitioner", partitioner)
        .set("linger.ms", "5");
    Ok(Arc::new(KafkaSinkFactory {
        table: req.table.to_string(),
        config,
        topic,
        key_field,
        upsert,
        create,
        avro,
        contract,
        cloudevents,
        transactional_id_prefix,
        commit_topic,
    }))
}

/// The Avro schema a sink writes (`schema_file`, e.g. one of `schemas/`): the
/// contract its consumers read, registered as is, instead of a schema derived from
/// the query's columns.
#[derive(Debug, Clone)]
struct Contract {
    text: Arc<str>,
    /// The Arrow columns the contract's fields decode into (arrow-avro's mapping),
    /// with the contract itself under `avro.schema` so the encoder writes it verbatim.
    arrow: SchemaRef,
}

impl Contract {
    fn new(text: Arc<str>) -> Result<Self, String> {
        use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        store
            .set(Fingerprint::Id(0), AvroSchema::new(text.to_string()))
            .map_err(|e| e.to_string())?;
        let decoder = arrow_avro::reader::ReaderBuilder::new()
            .with_writer_schema_store(store)
            .with_active_fingerprint(Fingerprint::Id(0))
            .build_decoder()
            .map_err(|e| e.to_string())?;
        let columns = decoder.schema();
        let mut metadata = columns.metadata().clone();
        metadata.insert(
            arrow_avro::schema::SCHEMA_METADATA_KEY.into(),
            text.to_string(),
        );
        Ok(Contract {
            text,
            arrow: Arc::new(arrow::datatypes::Schema::new_with_metadata(
                columns.fields().clone(),
                metadata,
            )),
        })
    }

    /// Refuses, at plan time, a query whose columns do not make the contract's
    /// fields: each field needs a column of its name, of a type that casts to the
    /// field's, and not nullable where the field is not; no other column but the key.
    fn check(&self, table: &str, schema: &SchemaRef, key: Option<&str>) -> Result<()> {
        let mut problems = Vec::new();
        for f in self.arrow.fields() {
            match schema.field_with_name(f.name()) {
                Err(_) => problems.push(format!("no column {} ({})", f.name(), f.data_type())),
                Ok(c) if !arrow::compute::can_cast_types(c.data_type(), f.data_type()) => problems
                    .push(format!(
                        "column {} is {}, the contract has {}",
                        f.name(),
                        c.data_type(),
                        f.data_type()
                    )),
                Ok(c) if c.is_nullable() && !f.is_nullable() => problems.push(format!(
                    "column {} may be NULL and the contract's field is not nullable (use COALESCE)",
                    f.name()
                )),
                Ok(_) => {}
            }
        }
        for c in schema.fields() {
            if self.arrow.field_with_name(c.name()).is_err() && Some(c.name().as_str()) != key {
                problems.push(format!("column {} is not in the contract", c.name()));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConnectorError::Schema {
            table: table.into(),
            message: format!(
                "the query does not fit schema_file: {}",
                problems.join("; ")
            ),
        }
        .into())
    }
}

/// CloudEvents attributes a sink puts on every record.
#[derive(Debug, Clone)]
struct CloudEvents {
    ty: String,
    source: String,
}

impl CloudEvents {
    /// The binary-mode headers of the event with id `id`, sent now.
    fn headers(&self, id: &str, avro: bool) -> rdkafka::message::OwnedHeaders {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let content_type = if avro {
            "application/avro"
        } else {
            "application/json"
        };
        [
            ("ce_specversion", "1.0"),
            ("ce_id", id),
            ("ce_source", self.source.as_str()),
            ("ce_type", self.ty.as_str()),
            ("ce_time", time.as_str()),
            ("content-type", content_type),
        ]
        .into_iter()
        .fold(rdkafka::message::OwnedHeaders::new(), |h, (key, value)| {
            h.insert(rdkafka::message::Header {
                key,
                value: Some(value),
            })
        })
    }
}

struct KafkaSinkFactory {
    table: String,
    config: ClientConfig,
    topic: String,
    key_field: Option<String>,
    /// `changelog = 'upsert'`: see [`KafkaSink::upsert`].
    upsert: bool,
    /// Create the topic (partitions, replication, configs) if it does not exist.
    create: Option<TopicSpec>,
    /// Avro in the Confluent wire format: the registry.
    avro: Option<Arc<RegistryClient>>,
    contract: Option<Contract>,
    cloudevents: Option<CloudEvents>,
    /// Transactional ids are `<prefix>-<task>`; by default the prefix is
    /// `tributary-<pipeline>-<table>`, stable across restarts.
    transactional_id_prefix: Option<String>,
    commit_topic: String,
}

impl SinkFactory for KafkaSinkFactory {
    fn describe(&self) -> String {
        format!(
            "kafka: topic {} at {} ({}{}, idempotent producer; transactions when exactly-once)",
            self.topic,
            self.config.get("bootstrap.servers").unwrap_or("?"),
            if self.avro.is_some() { "Avro" } else { "JSON" },
            self.key_field
                .as_ref()
                .map(|k| format!(", keyed by {k}"))
                .unwrap_or_default()
        )
    }

    /// The registry answers and takes the credentials (Avro).
    fn preflight(&self) -> futures::future::BoxFuture<'_, Result<()>> {
        Box::pin(check_registry(&self.table, self.avro.as_deref()))
    }

    fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        if let Some(k) = &self.key_field
            && schema.index_of(k).is_err()
        {
            return Err(ConnectorError::Schema {
                table: self.table.clone(),
                message: format!("key_field {k}: the query has no such column"),
            }
            .into());
        }
        match &self.contract {
            Some(c) => c.check(&self.table, schema, self.key_field.as_deref()),
            None => Ok(()),
        }
    }

    /// A changelog is written as records with their `_op`, in order per key (keyed
    /// by `key_field`), or, with `changelog = 'upsert'`, as the latest row per key.
    fn accepts_changelog(&self) -> bool {
        true
    }

    fn create(&self, task: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let producer: FutureProducer = self
            .config
            .create()
            .map_err(|e| kafka_error(&self.table, "creating the producer", e))?;
        let probe = probe::task_probe(task);
        let recheck = probe::recheck_sink(probe.clone(), &producer);
        let key = self
            .key_field
            .as_ref()
            .and_then(|k| schema.index_of(k).ok());
        Ok(Box::new(KafkaSink {
            table: self.table.clone(),
            topic: self.topic.clone(),
            config: self.config.clone(),
            producer,
            key,
            upsert: self.upsert,
            pending: Vec::new(),
            create: self.create.clone(),
            avro: self.avro.clone().map(|url| (url, None)),
            contract: self.contract.clone(),
            cloudevents: self.cloudevents.clone(),
            // Event ids: this sink instance's random prefix and a counter.
            id_prefix: format!("{:016x}", rand::random::<u64>()),
            sent: 0,
            task: task.clone(),
            transactional_id_prefix: self
                .transactional_id_prefix
                .clone()
                .unwrap_or_else(|| format!("tributary-{}-{}", task.pipeline, task.node)),
            commit_topic: self.commit_topic.clone(),
            txn: None,
            abort_pending: false,
            probe,
            _recheck: recheck,
        }))
    }
}

/// A topic the sink creates if it does not exist (Kafka Admin API).
#[derive(Debug, Clone)]
struct TopicSpec {
    partitions: i32,
    replication: i32,
    /// Topic configs, e.g. `retention.ms`.
    configs: Vec<(String, String)>,
}

struct KafkaSink {
    table: String,
    topic: String,
    config: ClientConfig,
    /// The idempotent producer (at-least-once); see [`KafkaSink::producer`].
    producer: FutureProducer,
    key: Option<usize>,
    /// Upsert: a changelog's `+I`/`+U` rows are written without their `_op` and its
    /// `-U`/`-D` rows as tombstones (no value) under their key, so a compacted topic
    /// (and any consumer keeping the latest value per key) holds the current result.
    /// A `-U` followed by its `+U` leaves the new row; a `-U` alone (a `HAVING` that
    /// stopped holding) deletes the key. Replays rewrite the same values: idempotent
    /// by key.
    upsert: bool,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
    /// Create the topic before the first write.
    create: Option<TopicSpec>,
    /// Avro: the registry, and the encoder made at the first write (its schema
    /// registered under `<topic>-value`).
    avro: Option<(Arc<RegistryClient>, Option<arrow_avro::writer::Encoder>)>,
    contract: Option<Contract>,
    cloudevents: Option<CloudEvents>,
    id_prefix: String,
    sent: u64,
    task: TaskInfo,
    transactional_id_prefix: String,
    commit_topic: String,
    /// Exactly-once: the transactional side (write-ahead of uncommitted output).
    txn: Option<Transactions>,
    /// A failed transaction whose abort has not been confirmed yet.
    abort_pending: bool,
    probe: crate::health::Probe,
    _recheck: probe::Recheck,
}

impl KafkaSink {
    async fn ensure_topic(&mut self) -> Result<()> {
        let Some(TopicSpec {
            partitions,
            replication,
            configs,
        }) = self.create.take()
        else {
            return Ok(());
        };
        let watch = Watch::default();
        let admin: AdminClient<Watch> = self
            .config
            .create_with_context(watch.clone())
            .map_err(|e| kafka_error(&self.table, "creating the admin client", e))?;
        let mut topic = NewTopic::new(
            &self.topic,
            partitions,
            TopicReplication::Fixed(replication),
        );
        for (k, v) in &configs {
            topic = topic.set(k, v);
        }
        let results = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)),
            )
            .await
            .map_err(|e| kafka_error(&self.table, "creating the topic", watch.explain(e)))?;
        for r in results {
            match r {
                Ok(_) => {
                    tracing::info!(topic = %self.topic, partitions, replication, "created topic")
                }
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(kafka_error(
                        &self.table,
                        &format!("creating topic {t}"),
                        code,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Each row of `batch` as a record value: a JSON object, or Avro in the Confluent
    /// wire format (the batch's schema registered under `<topic>-value` at the first
    /// write; a schema the registry refuses as incompatible fails the pipeline).
    async fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<bytes::Bytes>> {
        let Some((registry, encoder)) = self.avro.as_mut() else {
            let mut buf = Vec::new();
            crate::formats::json::encode_json_lines(batch, &mut buf)?;
            return Ok(buf
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(bytes::Bytes::copy_from_slice)
                .collect());
        };
        let avro_error = |e: arrow_avro::errors::AvroError| {
            crate::engine::EngineError::User(format!("Avro: {e}"))
        };
        let contracted;
        let batch = match &self.contract {
            Some(c) => {
                contracted = conform(batch, &c.arrow)?;
                &contracted
            }
            None => batch,
        };
        if encoder.is_none() {
            let schema = match &self.contract {
                Some(c) => arrow_avro::schema::AvroSchema::new(c.text.to_string()),
                None => arrow_avro::schema::AvroSchema::try_from(batch.schema().as_ref()).map_err(
                    |e| crate::engine::EngineError::arrow("deriving the Avro schema", e),
                )?,
            };
            let subject = format!("{}-value", self.topic);
            let path = format!("/subjects/{subject}/versions");
            let body = serde_json::json!({ "schema": schema.json_string });
            // An outage is waited out (the sink holds its input meanwhile); only while
            // registering, so the probe leaves the health table afterwards.
            let probe = crate::health::Probe::new(
                &self.task.pipeline,
                format!("{}[{}]", self.task.node, self.task.partition),
                "schema-registry",
            );
            let (status, reply) = registry
                .wait_out(&probe, futures::future::pending(), || {
                    registry.post_json(&path, &body)
                })
                .await
                .map_err(|e| e.in_table(&self.table))?;
            let id = match (status, reply["id"].as_u64()) {
                (200, Some(id)) => id as u32,
                _ => {
                    return Err(kafka_error(
                        &self.table,
                        &format!("registering the schema of {subject}"),
                        format!(
                            "HTTP {status}: {}",
                            reply["message"].as_str().unwrap_or("no id in the reply")
                        ),
                    ));
                }
            };
            *encoder = Some(
                arrow_avro::writer::WriterBuilder::new(batch.schema().as_ref().clone())
                    .with_fingerprint_strategy(arrow_avro::schema::FingerprintStrategy::Id(id))
                    .build_encoder::<arrow_avro::writer::format::AvroSoeFormat>()
                    .map_err(avro_error)?,
            );
        }
        let encoder = encoder.as_mut().expect("made above");
        encoder.encode(batch).map_err(avro_error)?;
        Ok(encoder.flush().iter().collect())
    }

    /// Waits until every record sent is acknowledged.
    async fn settle(&mut self) -> Result<()> {
        self.settle_raw()
            .await
            .map_err(|e| kafka_error(&self.table, &format!("writing to {}", self.topic), e))
    }

    async fn settle_raw(&mut self) -> Result<(), KafkaError> {
        for mut delivery in self.pending.drain(..) {
            let delivered = loop {
                match tokio::time::timeout(probe::STALLED, &mut delivery).await {
                    Ok(delivered) => break delivered,
                    Err(_) => self.probe.retrying(format!(
                        "no delivery acknowledged for {} s",
                        probe::STALLED.as_secs()
                    )),
                }
            };
            match delivered {
                Ok(Ok(_)) => self.probe.up(),
                Ok(Err((e, _))) => {
                    self.probe.retrying(&e);
                    return Err(e);
                }
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        Ok(())
    }
}

impl KafkaSink {
    /// The producer records go through: the transactional one when exactly-once.
    fn producer(&self) -> &FutureProducer {
        self.txn.as_ref().map_or(&self.producer, |t| &t.producer)
    }

    /// `batch` encoded as records: the key column (as text) and the value.
    async fn records(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let op = batch
            .schema()
            .index_of(crate::engine::OP_COLUMN)
            .ok()
            .filter(|_| self.upsert);
        let Some(op) = op else {
            let payloads = self.encode(batch).await?;
            return self.keyed(batch, payloads.into_iter().map(Some).collect());
        };
        // Upsert: the rows without their op; retractions become tombstones.
        use arrow::array::AsArray;
        let ops = batch.column(op).as_string::<i32>();
        let data = batch
            .project(&(0..op).collect::<Vec<_>>())
            .map_err(|e| crate::engine::EngineError::arrow("setting the changelog op aside", e))?;
        let payloads = self.encode(&data).await?;
        let values = payloads
            .into_iter()
            .zip(ops.iter())
            .map(|(p, op)| matches!(op, Some("+I" | "+U")).then_some(p))
            .collect();
        self.keyed(&data, values)
    }

    /// Encoded records: each row's key (from `key_field`) and value (`None`: a
    /// tombstone).
    fn keyed(
        &self,
        batch: &RecordBatch,
        payloads: Vec<Option<bytes::Bytes>>,
    ) -> Result<RecordBatch> {
        let keys: ArrayRef = match self.key {
            Some(i) => arrow::compute::cast(batch.column(i), &arrow::datatypes::DataType::Utf8)
                .map_err(|e| crate::engine::EngineError::arrow("reading the key column", e))?,
            None => arrow::array::new_null_array(&arrow::datatypes::DataType::Utf8, payloads.len()),
        };
        let values: ArrayRef = Arc::new(arrow::array::BinaryArray::from_iter(
            payloads.iter().map(|p| p.as_deref()),
        ));
        RecordBatch::try_new(transactions::records_schema(), vec![keys, values])
            .map_err(|e| crate::engine::EngineError::arrow("encoding records", e))
    }

    /// Hands `records` to the producer (waiting for deliveries when its queue is
    /// full); `settle` waits for them.
    async fn send(&mut self, records: &RecordBatch) -> Result<()> {
        self.send_raw(records)
            .await
            .map_err(|e| kafka_error(&self.table, &format!("writing to {}", self.topic), e))
    }

    async fn send_raw(&mut self, records: &RecordBatch) -> Result<(), KafkaError> {
        for row in 0..records.num_rows() {
            let line = transactions::value_of(records, row);
            let key = transactions::key_of(records, row);
            loop {
                let mut record = FutureRecord::<str, [u8]>::to(&self.topic);
                if let Some(line) = line {
                    record = record.payload(line);
                }
                if let Some(k) = key {
                    record = record.key(k);
                }
                if let Some(ce) = &self.cloudevents {
                    record = record.headers(ce.headers(
                        &format!("{}-{}", self.id_prefix, self.sent),
                        self.avro.is_some(),
                    ));
                }
                match self.producer().send_result(record) {
                    Ok(delivery) => {
                        self.pending.push(delivery);
                        self.sent += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // The producer's queue is full: wait for what is in flight.
                        self.settle_raw().await?;
                    }
                    Err((e, _)) => {
                        self.probe.retrying(&e);
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends `commit` in one transaction, again and again while the failure is
    /// transient (brokers unreachable, a transaction the coordinator aborted after its
    /// timeout): the pipeline waits for the cluster instead of failing, and output
    /// stays held. A fatal error (this producer fenced by a newer one with the same
    /// transactional id; refused authorisation; a record too large) fails the sink.
    async fn transact(&mut self, commit: transactions::Commit) -> Result<()> {
        let mut backoff = Duration::from_millis(200);
        let mut logged: Option<Instant> = None;
        let mut restarts = 0;
        loop {
            let e = match self.transact_once(&commit).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if fenced(&e) && restarts < 3 {
                // The producer is dead (its epoch was bumped: a transaction the broker
                // aborted after its timeout, or another instance with this id). A new
                // one sends the held records again; an instance really running twice
                // fences this one again and it fails after three restarts.
                tracing::warn!(table = %self.table, error = %e,
                    "kafka transactional producer fenced; starting a new one");
                restarts += 1;
                let txn = self.txn.as_mut().expect("transactional");
                txn.restart_producer()?;
                self.pending.clear();
                self.abort_pending = false;
                continue;
            }
            if !transient(&e) {
                return Err(kafka_error(&self.table, "a transaction", e));
            }
            self.probe.retrying(&e);
            if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(table = %self.table, error = %e,
                    "kafka transaction failed; retrying (output held until it commits)");
                logged = Some(Instant::now());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Sends `commit`'s records and markers in one transaction and commits it; on
    /// failure the transaction is aborted (the records are still held).
    async fn transact_once(&mut self, commit: &transactions::Commit) -> Result<(), KafkaError> {
        let txn = self.txn.as_mut().expect("transactional");
        txn.ready().await?;
        let producer = txn.producer.clone();
        let marker_topic = txn.commit_topic().to_string();
        if self.abort_pending {
            // An earlier abort did not get through: finish it first.
            tokio::task::block_in_place(|| producer.abort_transaction(REQUEST_TIMEOUT))?;
            self.abort_pending = false;
        }
        producer.begin_transaction()?;
        let sent = async {
            for records in &commit.records {
                self.send_raw(records).await?;
            }
            for marker in &commit.markers {
                let value = marker.value();
                let record = FutureRecord::<str, str>::to(&marker_topic)
                    .key(&marker.id)
                    .payload(&value);
                let delivery = self.producer().send_result(record).map_err(|(e, _)| e)?;
                self.pending.push(delivery);
            }
            self.settle_raw().await
        }
        .await;
        let mut committed = sent.and_then(|()| {
            tokio::task::block_in_place(|| producer.commit_transaction(REQUEST_TIMEOUT))
        });
        // A commit that timed out (retriable) is retried as is, not aborted: it may
        // have gone through.
        let mut logged = false;
        while let Err(KafkaError::Transaction(t)) = &committed
            && t.is_retriable()
        {
            if !logged {
                tracing::warn!(table = %self.table, error = %t, "kafka commit not confirmed; retrying it");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            committed =
                tokio::task::block_in_place(|| producer.commit_transaction(REQUEST_TIMEOUT));
        }
        if committed.is_err() {
            self.pending.clear();
            self.abort_pending = tokio::task::block_in_place(|| {
                producer.abort_transaction(REQUEST_TIMEOUT).is_err()
            });
        }
        committed
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.ensure_topic().await?;
        let records = self.records(&batch).await?;
        if let Some(txn) = self.txn.as_mut() {
            // Held until its checkpoint commits.
            txn.current.push(records);
            return Ok(());
        }
        self.send(&records).await?;
        if self.pending.len() >= 100_000 {
            self.settle().await?;
        }
        Ok(())
    }

    /// Exactly-once: a transactional producer (`<prefix>-<task>`) takes the place
    /// of the idempotent one; output is held and sent in the transaction of its checkpoint.
    fn exactly_once(&mut self) -> bool {
        match Transactions::new(
            &self.table,
            &self.config,
            self.transactional_id_prefix.clone(),
            self.task.partition,
            self.commit_topic.clone(),
        ) {
            Ok(txn) => {
                self.txn = Some(txn);
                true
            }
            Err(e) => {
                tracing::warn!(table = %self.table, error = %e, "no transactional producer");
                false
            }
        }
    }

    async fn pre_commit(&mut self, id: u64) -> Result<Option<Vec<u8>>> {
        match self.txn.as_mut() {
            Some(txn) => txn.pre_commit(id).map(Some),
            None => {
                self.settle().await?;
                Ok(None)
            }
        }
    }

    async fn commit(&mut self, id: u64) -> Result<()> {
        match self.txn.as_mut().and_then(|t| t.committed(id)) {
            Some(commit) => self.transact(commit).await,
            None => Ok(()),
        }
    }

    async fn restore(&mut self, states: &[(usize, Vec<u8>)]) -> Result<()> {
        let Some(txn) = self.txn.as_mut() else {
            // A checkpoint of an exactly-once run, resumed at-least-once: what it held
            // may or may not have been committed, so it is sent (rows may repeat).
            let held = transactions::all_held(states)?;
            if !held.is_empty() {
                tracing::warn!(table = %self.table, batches = held.len(),
                    "resuming an exactly-once checkpoint at-least-once: its held output is \
                     sent again (rows may repeat)");
                self.ensure_topic().await?;
                for records in &held {
                    self.send(records).await?;
                }
                self.settle().await?;
            }
            return Ok(());
        };
        match txn.restore(states).await? {
            Some(commit) => {
                self.ensure_topic().await?;
                self.transact(commit).await
            }
            None => Ok(()),
        }
    }

    async fn close_uncommitted(&mut self, committed: u64) -> Result<()> {
        match self.txn.as_mut().and_then(|t| t.stopped(committed)) {
            Some(commit) => self.transact(commit).await,
            None => Ok(()),
        }
    }

    async fn flush(&mut self) -> Result<()> {
        self.settle().await
    }

    async fn finish(&mut self) -> Result<()> {
        if let Some(commit) = self.txn.as_mut().and_then(|t| t.everything()) {
            self.transact(commit).await?;
        }
        self.settle().await?;
        let producer = self.producer().clone();
        tokio::task::block_in_place(|| producer.flush(REQUEST_TIMEOUT))
            .map_err(|e| kafka_error(&self.table, "flushing", e))
    }
}
