//! The Kafka sink: rows as records (JSON or Avro, keyed and partitioned like the Java
//! client), appended or upserted, at-least-once or in transactions committed with
//! checkpoints (`transactions.rs`). The invariants are in the module docs of
//! `kafka/mod.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::client::Watch;
use super::contract::Contract;
use super::decode::conform;
use super::probe;
use super::transactions::{self, Transactions};
use super::{
    DEFAULT_COMMIT_TOPIC, REQUEST_TIMEOUT, Result, avro_registry, check_registry, client_config,
    kafka_error, read_avro_schema,
};
use crate::connectors::{ConnectorError, Options, TableRequest};
use crate::engine::{Sink, SinkFactory, TaskInfo};
use crate::registry::client::RegistryClient;

mod fallback;

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
        // The cluster did not answer a metadata request (a probe, the producer's start).
        KafkaError::MetadataFetch(_) => true,
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

/// Builds the sink of a `connector = 'kafka'` table.
pub(crate) fn sink(req: &TableRequest<'_>, opts: &mut Options) -> Result<Arc<dyn SinkFactory>> {
    sink_with_contract(req, opts, None)
}

/// [`sink`], with the Avro contract given as text (a schema compiled into the
/// binary, e.g. the dead-letter topics') instead of read from `schema_file`.
pub(super) fn sink_with_contract(
    req: &TableRequest<'_>,
    opts: &mut Options,
    embedded: Option<Arc<str>>,
) -> Result<Arc<dyn SinkFactory>> {
    let (mut config, topic) = client_config(opts, req.env)?;
    let avro = avro_registry(opts, req.env)?;
    let contract = match opts.get("schema_file") {
        None => match embedded {
            Some(_) if avro.is_none() => {
                return Err(opts.invalid("format", "json", "this sink writes Avro"));
            }
            Some(text) => Some(Contract::new(text).map_err(|e| opts.invalid("format", "avro", e))?),
            None => None,
        },
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
            v => crate::connectors::parse_duration(v)
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
        fallback: req.env.fallback.clone(),
    }))
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
    /// Where exactly-once output waits while the cluster is down.
    fallback: Option<Arc<crate::fallback::Fallback>>,
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

    /// A key's rows reach one task: its records keep their order across the sink's
    /// tasks, and one task holds back and drains the key's fallback backlog.
    fn partition_by(&self) -> Vec<String> {
        self.key_field.iter().cloned().collect()
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
        // Avro without schema_file: the contract derived from the query's columns.
        let contract = match (&self.contract, &self.avro) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(_)) => Some(
                Contract::derived(&schema, &self.table, &task.pipeline).map_err(|e| {
                    ConnectorError::Schema {
                        table: self.table.clone(),
                        message: format!("no Avro schema for the query's columns: {e}"),
                    }
                })?,
            ),
            (None, None) => None,
        };
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
            contract,
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
            refusals: None,
            max_record_bytes: None,
            fallback: self.fallback.clone().map(|shared| {
                fallback::SinkFallback::new(
                    shared,
                    self.config.get("bootstrap.servers").unwrap_or(""),
                    &task.pipeline,
                    &self.table,
                )
            }),
            stall_limit: None,
            in_doubt: false,
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
    /// Where records the topic would refuse for good (too large) go.
    refusals: Option<crate::dlq::BadRecords>,
    /// The largest record the topic takes (`None`: not looked up yet).
    max_record_bytes: Option<usize>,
    /// Exactly-once output while the cluster is down (`sink/fallback.rs`).
    fallback: Option<fallback::SinkFallback>,
    /// During a fallback attempt: how long the cluster may stay silent.
    stall_limit: Option<Duration>,
    /// The last attempt's commit was requested and not confirmed within the stall
    /// limit: it may or may not have gone through.
    in_doubt: bool,
}

impl KafkaSink {
    /// Waits, with backoff and reported as `retrying`, until the cluster answers a
    /// metadata request. A restore needs the cluster (fencing the earlier producers,
    /// reading the commit topic): a pipeline restarted during a broker outage waits
    /// for it instead of failing, and a supervisor does not restart it in a loop.
    async fn wait_for_cluster(&self) {
        let mut backoff = Duration::from_millis(200);
        let mut told = false;
        loop {
            let producer = self.producer().clone();
            match tokio::task::block_in_place(|| {
                producer.client().fetch_metadata(None, REQUEST_TIMEOUT)
            }) {
                Ok(_) => return,
                Err(e) => {
                    if !told {
                        tracing::warn!(table = %self.table, task = self.task.partition, error = %e,
                            "kafka unreachable while restoring; waiting for it (fencing and the \
                             commit topic need the cluster)");
                        told = true;
                    }
                    self.probe.retrying(format!("restoring: {e}"));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    /// The largest record (key + value) the topic takes: the smaller of the
    /// producer's `message.max.bytes` and the topic's `max.message.bytes`, looked up
    /// once (the producer's alone when the topic's cannot be read).
    async fn record_limit(&mut self) -> usize {
        if let Some(limit) = self.max_record_bytes {
            return limit;
        }
        let producer_limit: usize = self
            .config
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let topic_limit = async {
            let admin: AdminClient<rdkafka::client::DefaultClientContext> =
                self.config.create().ok()?;
            let results = admin
                .describe_configs(
                    [&rdkafka::admin::ResourceSpecifier::Topic(&self.topic)],
                    &AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)),
                )
                .await
                .ok()?;
            let resource = results.into_iter().next()?.ok()?;
            resource
                .get("max.message.bytes")?
                .value
                .as_deref()?
                .parse::<usize>()
                .ok()
        }
        .await;
        let limit = topic_limit.map_or(producer_limit, |t| t.min(producer_limit));
        self.max_record_bytes = Some(limit);
        limit
    }

    /// `records` without those larger than the topic takes, which are reported (class
    /// `sink`) with their encoded bytes: a record the topic refuses would fail every
    /// retry, so it goes to the dead-letter queue instead of stopping the pipeline.
    async fn refuse_oversized(&mut self, records: RecordBatch) -> Result<RecordBatch> {
        let limit = self.record_limit().await;
        let size = |row: usize| {
            transactions::value_of(&records, row).map_or(0, <[u8]>::len)
                + transactions::key_of(&records, row).map_or(0, str::len)
        };
        if (0..records.num_rows()).all(|row| size(row) <= limit) {
            return Ok(records);
        }
        let mut keep = Vec::with_capacity(records.num_rows());
        for row in 0..records.num_rows() {
            let n = size(row);
            keep.push(n <= limit);
            if n > limit
                && let Some(bad) = self.refusals.as_mut()
            {
                bad.origin_mut().topic = Some(self.topic.clone());
                bad.origin_mut().key =
                    transactions::key_of(&records, row).map(|k| k.as_bytes().to_vec());
                bad.report(
                    crate::dlq::BadRecordReason::Sink,
                    &format!(
                        "a record of {n} bytes is larger than topic {} takes ({limit} bytes)",
                        self.topic
                    ),
                    transactions::value_of(&records, row).unwrap_or_default(),
                );
            }
        }
        arrow::compute::filter_record_batch(&records, &keep.into())
            .map_err(|e| crate::engine::EngineError::arrow("leaving out refused records", e))
    }
    /// `batch` without the rows that are NULL in a field the contract says is not
    /// nullable, which are reported (class `schema_mismatch`) as rows: they cannot be
    /// encoded, and would fail every retry.
    fn refuse_nulls(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let Some(contract) = &self.contract else {
            return Ok(batch);
        };
        let nulls = contract.nulls(&batch);
        if nulls.is_empty() {
            return Ok(batch);
        }
        let mut keep = vec![true; batch.num_rows()];
        let record = contract.record_name();
        for (row, field) in nulls {
            keep[row] = false;
            if let Some(bad) = self.refusals.as_mut() {
                bad.origin_mut().topic = Some(self.topic.clone());
                bad.origin_mut().key = self.key.and_then(|k| {
                    arrow::util::display::array_value_to_string(batch.column(k), row)
                        .ok()
                        .map(String::into_bytes)
                });
                bad.report_row(
                    crate::dlq::BadRecordReason::SchemaMismatch,
                    &format!("{field} is NULL and {record} requires it"),
                    &batch,
                    row,
                    None,
                );
            }
        }
        arrow::compute::filter_record_batch(&batch, &keep.into())
            .map_err(|e| crate::engine::EngineError::arrow("leaving out refused rows", e))
    }

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
            crate::engine::EngineError::Internal(format!("Avro: {e}"))
        };
        let contract = self
            .contract
            .as_ref()
            .expect("an Avro sink has a contract: schema_file or derived");
        let batch = &conform(batch, &contract.arrow)?;
        if encoder.is_none() {
            let schema = arrow_avro::schema::AvroSchema::new(contract.text.to_string());
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
        let step = self
            .stall_limit
            .map_or(probe::STALLED, |l| l.min(probe::STALLED));
        for mut delivery in self.pending.drain(..) {
            let mut waited = Duration::ZERO;
            let delivered = loop {
                match tokio::time::timeout(step, &mut delivery).await {
                    Ok(delivered) => break delivered,
                    Err(_) => {
                        waited += step;
                        self.probe.retrying(format!(
                            "no delivery acknowledged for {} s",
                            waited.as_secs()
                        ));
                        if self.stall_limit.is_some_and(|l| waited >= l) {
                            return Err(KafkaError::MessageProduction(
                                RDKafkaErrorCode::MessageTimedOut,
                            ));
                        }
                    }
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
    /// A new transactional producer in place of one that is finished (fenced, or its
    /// transaction left in doubt): nothing in flight or to abort is the old one's.
    fn new_producer(&mut self) -> Result<()> {
        self.txn
            .as_mut()
            .expect("transactional")
            .restart_producer()?;
        self.pending.clear();
        self.abort_pending = false;
        Ok(())
    }

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
                self.new_producer()?;
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
        self.transact_once_within(commit, None).await
    }

    /// [`Self::transact_once`], given up (a timeout, the transaction aborted) when the
    /// cluster does not answer for `limit`: no delivery acknowledged, the producer not
    /// started, an abort not confirmed. The fallback's attempts, which the breaker
    /// counts. A commit once requested is never given up (it may have gone through).
    async fn transact_once_within(
        &mut self,
        commit: &transactions::Commit,
        limit: Option<Duration>,
    ) -> Result<(), KafkaError> {
        self.stall_limit = limit;
        let result = self.transact_attempt(commit).await;
        self.stall_limit = None;
        result
    }

    async fn transact_attempt(&mut self, commit: &transactions::Commit) -> Result<(), KafkaError> {
        let limit = self.stall_limit;
        let call_timeout = limit.unwrap_or(REQUEST_TIMEOUT);
        let txn = self.txn.as_mut().expect("transactional");
        match limit {
            None => txn.ready().await?,
            Some(limit) => tokio::time::timeout(limit, txn.ready())
                .await
                .unwrap_or(Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageTimedOut,
                )))?,
        }
        let producer = txn.producer.clone();
        let marker_topic = txn.commit_topic().to_string();
        if self.abort_pending {
            // An earlier abort did not get through: finish it first.
            tokio::task::block_in_place(|| producer.abort_transaction(call_timeout))?;
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
            for (key, value) in &commit.extra {
                let record = FutureRecord::<str, str>::to(&marker_topic)
                    .key(key)
                    .payload(value);
                let delivery = self.producer().send_result(record).map_err(|(e, _)| e)?;
                self.pending.push(delivery);
            }
            self.settle_raw().await
        }
        .await;
        let mut committed = sent.and_then(|()| {
            tokio::task::block_in_place(|| producer.commit_transaction(call_timeout))
        });
        // A commit that timed out (retriable) is retried as is, not aborted: it may
        // have gone through. With a fallback, it is given up after the stall limit and
        // left in doubt (`sink/fallback.rs` settles it once the cluster answers).
        let mut logged = false;
        let requested = Instant::now();
        while let Err(KafkaError::Transaction(t)) = &committed
            && t.is_retriable()
        {
            if self.stall_limit.is_some_and(|l| requested.elapsed() >= l) {
                tracing::warn!(table = %self.table, error = %t,
                    "kafka commit not confirmed; it is in doubt until the cluster answers");
                self.in_doubt = true;
                self.pending.clear();
                return committed;
            }
            if !logged {
                tracing::warn!(table = %self.table, error = %t, "kafka commit not confirmed; retrying it");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            committed = tokio::task::block_in_place(|| producer.commit_transaction(call_timeout));
        }
        if committed.is_err() {
            self.pending.clear();
            self.abort_pending =
                tokio::task::block_in_place(|| producer.abort_transaction(call_timeout).is_err());
        }
        committed
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.ensure_topic().await?;
        let batch = self.refuse_nulls(batch)?;
        let records = self.records(&batch).await?;
        let records = self.refuse_oversized(records).await?;
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

    fn report_refusals_to(&mut self, bad: crate::dlq::BadRecords) {
        self.refusals = Some(bad);
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
            Some(commit) => self.deliver(commit).await,
            None => Ok(()),
        }
    }

    async fn restore(&mut self, states: &[(usize, Vec<u8>)]) -> Result<()> {
        if self.txn.is_none() {
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
        }
        self.wait_for_cluster().await;
        let delivered = self.delivered_marks().await?;
        let txn = self.txn.as_mut().expect("transactional");
        match txn.restore(states, &delivered).await? {
            Some(commit) => {
                self.ensure_topic().await?;
                self.deliver(commit).await
            }
            None => Ok(()),
        }
    }

    async fn close_uncommitted(&mut self, committed: u64) -> Result<()> {
        match self.txn.as_mut().and_then(|t| t.stopped(committed)) {
            Some(commit) => self.deliver(commit).await,
            None => Ok(()),
        }
    }

    async fn flush(&mut self) -> Result<()> {
        self.settle().await
    }

    async fn finish(&mut self) -> Result<()> {
        if let Some(commit) = self.txn.as_mut().and_then(|t| t.everything()) {
            self.deliver(commit).await?;
        }
        if self.txn.is_some() {
            self.drain_rest().await?;
        }
        self.settle().await?;
        let producer = self.producer().clone();
        tokio::task::block_in_place(|| producer.flush(REQUEST_TIMEOUT))
            .map_err(|e| kafka_error(&self.table, "flushing", e))
    }
}
