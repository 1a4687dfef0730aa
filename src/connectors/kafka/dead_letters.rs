//! The Kafka dead-letter store: dead letters on a Kafka topic per domain, Avro in the
//! Confluent wire format (`schemas/tributary.dead_letter.avsc`, registered under
//! `<topic>-value`), behind [`DeadLetterStore`].
//!
//! Layout and invariants:
//! - **Topics.** Pipeline `p` writes to `topic_pattern` with `{domain}` replaced by
//!   `p`'s domain: [`KafkaStoreSettings::domains`] maps pipelines to domains (the
//!   caller fills it, e.g. from the first part of a pipeline's first Kafka source's
//!   topic), and a pipeline it does not list is its own domain. The admin side reads
//!   every topic of the cluster the pattern matches (`{domain}` standing for any
//!   non-empty text), so it needs no list of pipelines.
//! - **Records.** One record per dead letter, keyed by its id. A change of status
//!   (replay, edit, discard) is another record under the same id, written by the admin
//!   side; the records of an id, in order, fold into its current state. Both producers partition
//!   like the Java client (murmur2 of the key), so an id's records share a partition
//!   and their offsets order them. A replayed record that fails again comes back from
//!   the pipeline under its id, after its `replayed` record, and is pending again.
//!   An admin change's record carries the header `tributary-dlq-change` and is the
//!   whole new state; a record without it is a failure, and one of a known id (a
//!   replay that failed again) updates what the failure says but keeps the first
//!   failure, origin and original payload of the known state (as the local store's
//!   upsert). Folding needs those earlier records, so the topics keep every record
//!   (`retention.ms=-1`, no compaction: compaction would leave a re-failure without
//!   its first failure).
//! - **The sink** is the Kafka sink (`sink.rs`) with the contract embedded in the
//!   binary, keyed by `id`; its transactions (`transactions.rs`) make the dead letters
//!   of an exactly-once pipeline visible once their checkpoint commits.
//! - **Admin operations** read with a `read_committed` consumer from the beginning to
//!   the high watermark taken when the read starts (waiting, up to
//!   [`KafkaStoreSettings::read_patience`], for a transaction left open there to end,
//!   so that a committed change behind it is not missed), and fold by id; `list`,
//!   `get`, `stats` filter with [`Filter::matches`].
//! - **Changes** (`replay`, `edit`, `discard`) run in one Kafka transaction of the
//!   admin transactional id (`tributary-dlq-admin`): the records a replay sends to the
//!   source topics (on the store's cluster: original key and headers, plus
//!   `tributary-dlq-id` and `tributary-dlq-attempts`), the new status records and one
//!   audit record (JSON [`AuditEntry`]) on the audit topic (`tributary.dlq.audit`, one
//!   partition, kept forever). The producer is started (`init_transactions`, which
//!   fences any other admin producer and aborts what it left open) *before* the state
//!   is read, so two admins cannot both act on the same pending record: a repeated or
//!   concurrent replay sends a record at most once.
//! - An unreachable cluster or registry is a [`DlqError::Store`] after bounded
//!   timeouts ([`REQUEST_TIMEOUT`] per request), never a hang.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::REQUEST_TIMEOUT;
use super::contract::Contract;
use super::decode::conform;
use crate::connectors::dead_letters::{
    AuditEntry, DeadLetterStore, DlqError, Filter, Page, ReplayOutcome, Result, StatsRow,
};
use crate::connectors::{ConnectorEnv, Options, TableRequest};
use crate::dlq::record::{self, DeadLetter, Status};
use crate::engine::SinkFactory;
use crate::registry::client::{ClientSettings, RegistryClient};

/// The Avro contract of a dead letter, compiled in.
pub const CONTRACT: &str = include_str!("../../../schemas/tributary.dead_letter.avsc");
/// Where admin changes are recorded, by default.
pub const AUDIT_TOPIC: &str = "tributary.dlq.audit";
/// The transactional id of the admin operations, by default.
pub const ADMIN_TRANSACTIONAL_ID: &str = "tributary-dlq-admin";
/// Headers a replayed record carries, so that if it fails again it comes back under
/// its id with one more attempt.
pub const ID_HEADER: &str = "tributary-dlq-id";
pub const ATTEMPTS_HEADER: &str = "tributary-dlq-attempts";
/// The header of an admin change's record (its action): the record is the dead
/// letter's whole new state. A record without it is a failure from a pipeline.
pub const CHANGE_HEADER: &str = "tributary-dlq-change";

/// A known dead letter failed again (a replay that failed, under the same id): what
/// the new failure says replaces the old, and it is pending again; its first
/// failure, origin and original payload stay (as the local store's upsert).
fn failed_again(known: &mut DeadLetter, again: DeadLetter) {
    known.node = again.node;
    known.failure_class = again.failure_class;
    known.message = again.message;
    known.payload = again.payload;
    known.payload_format = again.payload_format;
    known.last_failure = again.last_failure;
    known.attempts = again.attempts;
    known.status = Status::Pending;
    known.status_reason = None;
}

/// How a [`KafkaDeadLetterStore`] reaches its cluster and registry and names its
/// topics.
#[derive(Debug, Clone)]
pub struct KafkaStoreSettings {
    pub bootstrap_servers: String,
    /// librdkafka properties of every client (TLS, SASL…): the cluster's.
    pub properties: BTreeMap<String, String>,
    pub registry_url: String,
    pub registry: ClientSettings,
    /// The dead-letter topic of a domain: `{domain}` is replaced (`[dlq] topic`).
    pub topic_pattern: String,
    /// Pipeline → domain; a pipeline not listed is its own domain.
    pub domains: BTreeMap<String, String>,
    pub audit_topic: String,
    pub admin_transactional_id: String,
    /// The sinks' transactional ids are `<prefix>-<pipeline>-dead_letters-<task>`.
    pub sink_transactional_prefix: String,
    /// Partitions and replication of a dead-letter topic the sink creates.
    pub partitions: i32,
    pub replication: i32,
    /// How long a read waits for a transaction left open in a topic to end.
    pub read_patience: Duration,
}

impl KafkaStoreSettings {
    /// Settings with the defaults: one partition per topic, the cluster's default
    /// replication, [`AUDIT_TOPIC`], [`ADMIN_TRANSACTIONAL_ID`].
    pub fn new(bootstrap_servers: &str, registry_url: &str, topic_pattern: &str) -> Self {
        KafkaStoreSettings {
            bootstrap_servers: bootstrap_servers.to_string(),
            properties: BTreeMap::new(),
            registry_url: registry_url.to_string(),
            registry: ClientSettings::default(),
            topic_pattern: topic_pattern.to_string(),
            domains: BTreeMap::new(),
            audit_topic: AUDIT_TOPIC.to_string(),
            admin_transactional_id: ADMIN_TRANSACTIONAL_ID.to_string(),
            sink_transactional_prefix: "tributary".to_string(),
            partitions: 1,
            replication: -1,
            // A transaction a crashed producer left open ends within its timeout
            // (librdkafka's default: 60 s).
            read_patience: Duration::from_secs(60) + REQUEST_TIMEOUT,
        }
    }

    /// Settings from the configuration: cluster `cluster` of `[kafka.clusters]` (""
    /// for `kafka.default_cluster`), the registry of `[registry]`.
    pub fn from_env(env: &ConnectorEnv, cluster: &str, topic_pattern: &str) -> Result<Self> {
        let name = if cluster.is_empty() {
            env.kafka.default_cluster.as_str()
        } else {
            cluster
        };
        let store = |m: String| DlqError::store("kafka", m);
        let c = env.kafka.clusters.get(name).ok_or_else(|| {
            store(format!(
                "dlq.cluster {name:?}: no such cluster in [kafka.clusters]"
            ))
        })?;
        let url = env.registry_url.clone().ok_or_else(|| {
            store("the Kafka store needs a schema registry (registry.url)".into())
        })?;
        let mut s = KafkaStoreSettings::new(&c.bootstrap_servers, &url, topic_pattern);
        s.properties = c.properties.clone();
        s.registry = env.registry.clone();
        Ok(s)
    }
}

/// Dead letters on Kafka topics; see the module documentation.
pub struct KafkaDeadLetterStore {
    s: KafkaStoreSettings,
    env: ConnectorEnv,
    registry: Arc<RegistryClient>,
    contract: Contract,
    /// Writer schema ids by id (decoding) and by topic (encoding status records).
    writer_schemas: tokio::sync::Mutex<HashMap<u32, String>>,
    value_ids: tokio::sync::Mutex<HashMap<String, u32>>,
    /// One admin change at a time in this process (others are fenced anyway).
    changing: tokio::sync::Mutex<()>,
    /// The folded state and the offsets it was read up to: the next read folds only
    /// what was appended since (the topics are append-only, `retention.ms=-1`).
    folded: tokio::sync::Mutex<(Offsets, State)>,
}

/// The next offset to read, by topic and partition.
type Offsets = BTreeMap<(String, i32), i64>;

/// A record read from a topic: where it is, key, value.
struct Raw {
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

/// A record an admin change sends.
struct Out {
    topic: String,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// The folded state: each id's latest record and the topic it is on.
type State = HashMap<String, (String, DeadLetter)>;

impl KafkaDeadLetterStore {
    pub fn new(settings: KafkaStoreSettings) -> Result<Self> {
        let registry = RegistryClient::new(&settings.registry_url, &settings.registry)
            .map_err(|e| DlqError::store("kafka", e))?;
        let contract = Contract::new(CONTRACT.into())
            .map_err(|e| DlqError::store("kafka", format!("the dead-letter contract: {e}")))?;
        let env = ConnectorEnv {
            kafka: Default::default(),
            registry_url: Some(settings.registry_url.clone()),
            registry: settings.registry.clone(),
            dynamodb: Default::default(),
            fallback: None,
        };
        Ok(KafkaDeadLetterStore {
            s: settings,
            env,
            registry: Arc::new(registry),
            contract,
            writer_schemas: Default::default(),
            value_ids: Default::default(),
            changing: Default::default(),
            folded: Default::default(),
        })
    }

    /// The dead-letter topic of `pipeline`.
    pub fn topic_of(&self, pipeline: &str) -> String {
        let domain = self
            .s
            .domains
            .get(pipeline)
            .map_or(pipeline, String::as_str);
        self.s.topic_pattern.replace("{domain}", domain)
    }

    /// Whether `topic` is one of this store's dead-letter topics.
    fn is_dlq_topic(&self, topic: &str) -> bool {
        if topic == self.s.audit_topic {
            return false;
        }
        match self.s.topic_pattern.split_once("{domain}") {
            None => topic == self.s.topic_pattern,
            Some((prefix, suffix)) => {
                topic.len() > prefix.len() + suffix.len()
                    && topic.starts_with(prefix)
                    && topic.ends_with(suffix)
            }
        }
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> DlqError {
        DlqError::store(&self.describe(), format!("{what}: {e}"))
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.s.bootstrap_servers)
            .set("client.id", "tributary-dlq");
        for (k, v) in &self.s.properties {
            c.set(k, v);
        }
        c
    }

    /// Every record of `topics` (those that exist; all this store's dead-letter
    /// topics when `None`) as committed: see the module docs.
    async fn read(&self, topics: Option<Vec<String>>) -> Result<Vec<Raw>> {
        Ok(self.read_from(topics, Offsets::new()).await?.0)
    }

    /// [`read`](Self::read) from `from` (the start of a partition not in it); also
    /// answers where each partition read ends.
    async fn read_from(
        &self,
        topics: Option<Vec<String>>,
        from: Offsets,
    ) -> Result<(Vec<Raw>, Offsets)> {
        let config = self.client_config();
        let dlq_topics = |names: Vec<String>| -> Vec<String> {
            names.into_iter().filter(|t| self.is_dlq_topic(t)).collect()
        };
        let patience = self.s.read_patience;
        let describe = self.describe();
        let err = move |what: &str, e: &dyn std::fmt::Display| {
            DlqError::store(&describe, format!("{what}: {e}"))
        };
        // Metadata first (async side, to filter with `self`).
        let meta_config = config.clone();
        let err2 = err.clone();
        let listed: Vec<(String, Vec<i32>)> = tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = meta_config
                .create()
                .map_err(|e| err2("creating a consumer", &e))?;
            let md = c
                .fetch_metadata(None, REQUEST_TIMEOUT)
                .map_err(|e| err2("reading the cluster's topics", &e))?;
            Ok::<_, DlqError>(
                md.topics()
                    .iter()
                    .map(|t| {
                        (
                            t.name().to_string(),
                            t.partitions().iter().map(|p| p.id()).collect(),
                        )
                    })
                    .collect(),
            )
        })
        .await
        .map_err(|e| self.error("reading", e))??;
        let wanted: Vec<String> = match topics {
            Some(t) => t,
            None => dlq_topics(listed.iter().map(|(t, _)| t.clone()).collect()),
        };
        let partitions: Vec<(String, i32)> = listed
            .into_iter()
            .filter(|(t, _)| wanted.contains(t))
            .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
            .collect();
        if partitions.is_empty() {
            return Ok((Vec::new(), from));
        }
        tokio::task::spawn_blocking(move || {
            read_partitions(config, partitions, &from, patience, err)
        })
        .await
        .map_err(|e| self.error("reading", e))?
    }

    /// The current state of every dead letter (see the module docs).
    async fn state(&self) -> Result<State> {
        let mut folded = self.folded.lock().await;
        let (raws, ends) = self.read_from(None, folded.0.clone()).await?;
        // A read that fails half way leaves the cache as it was.
        let mut state = folded.1.clone();
        // Consecutive records of one topic and writer schema are decoded together.
        let mut run: Vec<&Raw> = Vec::new();
        let mut run_id = None;
        for raw in &raws {
            let Some(value) = raw.value.as_deref() else {
                continue;
            };
            if value.len() < 5 || value[0] != 0 {
                tracing::warn!(topic = %raw.topic, "dead-letter topic: a record not in the Confluent wire format is ignored");
                continue;
            }
            let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
            if run_id.is_some_and(|r| r != id) {
                self.fold(&mut state, run_id.take().expect("set"), &run)
                    .await?;
                run.clear();
            }
            run_id = Some(id);
            run.push(raw);
        }
        if let Some(id) = run_id {
            self.fold(&mut state, id, &run).await?;
        }
        *folded = (ends, state.clone());
        Ok(state)
    }

    /// Decodes `raws` (all written with schema `id`) and folds them into `state`.
    async fn fold(&self, state: &mut State, id: u32, raws: &[&Raw]) -> Result<()> {
        let writer = self.writer_schema(id).await?;
        use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        store
            .set(Fingerprint::Id(id), AvroSchema::new(writer))
            .map_err(|e| self.error(&format!("schema id {id}"), e))?;
        let mut decoder = arrow_avro::reader::ReaderBuilder::new()
            .with_batch_size(raws.len() + 1)
            .with_writer_schema_store(store)
            .with_reader_schema(AvroSchema::new(CONTRACT.to_string()))
            .build_decoder()
            .map_err(|e| self.error(&format!("schema id {id}"), e))?;
        for raw in raws {
            let value = raw.value.as_deref().expect("checked by the caller");
            match decoder.decode(value) {
                Ok(n) if n == value.len() => {}
                Ok(n) => {
                    return Err(self.error(
                        &format!("decoding a dead letter of {}", raw.topic),
                        format!("{n} of {} bytes decoded", value.len()),
                    ));
                }
                Err(e) => {
                    return Err(self.error(&format!("decoding a dead letter of {}", raw.topic), e));
                }
            }
        }
        let batch = decoder
            .flush()
            .map_err(|e| self.error("decoding dead letters", e))?;
        let Some(batch) = batch else {
            return Ok(());
        };
        let batch = conform(&batch, &record::schema())
            .map_err(|e| self.error("decoding dead letters", e))?;
        let letters =
            record::from_batch(&batch).map_err(|e| self.error("decoding dead letters", e))?;
        for (raw, letter) in raws.iter().zip(letters) {
            if raw.key.as_deref() != Some(letter.id.as_bytes()) {
                // Written by someone else than the sink and the admin side.
                tracing::warn!(topic = %raw.topic, id = %letter.id,
                    "dead-letter topic: a record whose key is not its id");
            }
            let change = raw.headers.iter().any(|(k, _)| k == CHANGE_HEADER);
            match state.get_mut(&letter.id) {
                Some((_, known)) if !change => failed_again(known, letter),
                _ => {
                    state.insert(letter.id.clone(), (raw.topic.clone(), letter));
                }
            }
        }
        Ok(())
    }

    async fn writer_schema(&self, id: u32) -> Result<String> {
        let mut cache = self.writer_schemas.lock().await;
        if let Some(s) = cache.get(&id) {
            return Ok(s.clone());
        }
        let text = self
            .registry
            .schema_by_id(id)
            .await
            .map_err(|e| self.error(&format!("the writer schema of id {id}"), e))?;
        cache.insert(id, text.clone());
        Ok(text)
    }

    /// `letters` as record values of `topic`: the contract registered under
    /// `<topic>-value`, in the Confluent wire format.
    async fn encode(&self, topic: &str, letters: &[DeadLetter]) -> Result<Vec<Vec<u8>>> {
        let id = {
            let mut ids = self.value_ids.lock().await;
            match ids.get(topic) {
                Some(id) => *id,
                None => {
                    let subject = format!("{topic}-value");
                    let (status, reply) = self
                        .registry
                        .post_json(
                            &format!("/subjects/{subject}/versions"),
                            &serde_json::json!({ "schema": CONTRACT }),
                        )
                        .await
                        .map_err(|e| self.error(&format!("registering {subject}"), e))?;
                    let id = match (status, reply["id"].as_u64()) {
                        (200, Some(id)) => id as u32,
                        _ => {
                            return Err(self.error(
                                &format!("registering {subject}"),
                                format!(
                                    "HTTP {status}: {}",
                                    reply["message"].as_str().unwrap_or("no id in the reply")
                                ),
                            ));
                        }
                    };
                    ids.insert(topic.to_string(), id);
                    id
                }
            }
        };
        let avro = |e: arrow_avro::errors::AvroError| self.error("encoding dead letters", e);
        let batch = conform(&record::to_batch(letters), &self.contract.arrow)
            .map_err(|e| self.error("encoding dead letters", e))?;
        let mut encoder = arrow_avro::writer::WriterBuilder::new(batch.schema().as_ref().clone())
            .with_fingerprint_strategy(arrow_avro::schema::FingerprintStrategy::Id(id))
            .build_encoder::<arrow_avro::writer::format::AvroSoeFormat>()
            .map_err(avro)?;
        encoder.encode(&batch).map_err(avro)?;
        Ok(encoder.flush().iter().map(|b| b.to_vec()).collect())
    }

    /// A transactional producer of the admin id, started: any other is fenced.
    async fn admin_producer(&self) -> Result<FutureProducer> {
        let mut config = self.client_config();
        config
            .set("transactional.id", &self.s.admin_transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // As the sink: an id's status records land on its partition.
            .set("partitioner", "murmur2_random")
            .set("transaction.timeout.ms", "60000")
            .set("message.timeout.ms", "30000");
        let producer: FutureProducer = config
            .create()
            .map_err(|e| self.error("creating the admin producer", e))?;
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(REQUEST_TIMEOUT))
            .await
            .map_err(|e| self.error("starting the admin producer", e))?
            .map_err(|e| self.error("starting the admin producer", e))?;
        Ok(producer)
    }

    async fn create_audit_topic(&self) -> Result<()> {
        let admin: AdminClient<_> = self
            .client_config()
            .create()
            .map_err(|e| self.error("creating an admin client", e))?;
        let spec = NewTopic::new(&self.s.audit_topic, 1, TopicReplication::Fixed(-1))
            .set("retention.ms", "-1");
        let results = admin
            .create_topics(
                [&spec],
                &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)),
            )
            .await
            .map_err(|e| self.error("creating the audit topic", e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(self.error(&format!("creating topic {t}"), code)),
            }
        }
        Ok(())
    }

    /// Sends `out` and commits, in one transaction of `producer`; aborts on failure.
    async fn transact(&self, producer: &FutureProducer, out: Vec<Out>) -> Result<()> {
        producer
            .begin_transaction()
            .map_err(|e| self.error("beginning a transaction", e))?;
        let sent = async {
            let mut deliveries = Vec::with_capacity(out.len());
            for o in &out {
                let headers = o.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                    h.insert(Header {
                        key: k,
                        value: Some(v),
                    })
                });
                let mut record = FutureRecord::<[u8], [u8]>::to(&o.topic)
                    .payload(&o.value)
                    .headers(headers);
                if let Some(k) = &o.key {
                    record = record.key(k);
                }
                let delivery = producer
                    .send_result(record)
                    .map_err(|(e, _)| self.error(&format!("writing to {}", o.topic), e))?;
                deliveries.push((o.topic.clone(), delivery));
            }
            for (topic, d) in deliveries {
                match tokio::time::timeout(Duration::from_secs(35), d).await {
                    Ok(Ok(Ok(_))) => {}
                    Ok(Ok(Err((e, _)))) => {
                        return Err(self.error(&format!("writing to {topic}"), e));
                    }
                    Ok(Err(_)) | Err(_) => {
                        return Err(
                            self.error(&format!("writing to {topic}"), "no acknowledgement")
                        );
                    }
                }
            }
            let p = producer.clone();
            tokio::task::spawn_blocking(move || p.commit_transaction(REQUEST_TIMEOUT))
                .await
                .map_err(|e| self.error("committing", e))?
                .map_err(|e| self.error("committing", e))
        }
        .await;
        if sent.is_err() {
            let p = producer.clone();
            let _ = tokio::task::spawn_blocking(move || p.abort_transaction(REQUEST_TIMEOUT)).await;
        }
        sent
    }

    /// Status records of `letters` (their topic each) and one audit record.
    async fn change_records(
        &self,
        letters: &[(String, DeadLetter)],
        entry: &AuditEntry,
    ) -> Result<Vec<Out>> {
        let change = vec![(CHANGE_HEADER.to_string(), entry.action.clone().into_bytes())];
        let mut by_topic: BTreeMap<&str, Vec<DeadLetter>> = BTreeMap::new();
        for (topic, l) in letters {
            by_topic.entry(topic).or_default().push(l.clone());
        }
        let mut out = Vec::new();
        for (topic, ls) in by_topic {
            let values = self.encode(topic, &ls).await?;
            for (l, value) in ls.iter().zip(values) {
                out.push(Out {
                    topic: topic.to_string(),
                    key: Some(l.id.clone().into_bytes()),
                    value,
                    headers: change.clone(),
                });
            }
        }
        self.create_audit_topic().await?;
        out.push(Out {
            topic: self.s.audit_topic.clone(),
            key: None,
            value: serde_json::to_vec(entry).map_err(|e| self.error("the audit record", e))?,
            headers: Vec::new(),
        });
        Ok(out)
    }

    fn entry(actor: &str, action: &str, detail: String, ids: Vec<String>) -> AuditEntry {
        AuditEntry {
            at: record::now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            detail,
            ids,
        }
    }
}

/// Reads `partitions` with `read_committed` from their low to their high watermark
/// (as when the read starts), in offset order per partition.
fn read_partitions(
    config: ClientConfig,
    partitions: Vec<(String, i32)>,
    from: &Offsets,
    patience: Duration,
    err: impl Fn(&str, &dyn std::fmt::Display) -> DlqError,
) -> Result<(Vec<Raw>, Offsets)> {
    let consumer = |isolation: &str| -> Result<BaseConsumer> {
        let mut c = config.clone();
        c.set("group.id", "tributary-dlq-reader")
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation);
        c.create().map_err(|e| err("creating a consumer", &e))
    };
    // The high watermark, not the last stable offset a read_committed query answers:
    // see `transactions.rs` `markers`.
    let uncommitted = consumer("read_uncommitted")?;
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut reached = from.clone();
    let mut tpl = TopicPartitionList::new();
    for (t, p) in &partitions {
        let (low, high) = uncommitted
            .fetch_watermarks(t, *p, REQUEST_TIMEOUT)
            .map_err(|e| err(&format!("reading the offsets of {t}[{p}]"), &e))?;
        let start = from.get(&(t.clone(), *p)).copied().unwrap_or(low).max(low);
        reached.insert((t.clone(), *p), high.max(start));
        if high > start {
            ends.insert((t.clone(), *p), high);
            tpl.add_partition_offset(t, *p, Offset::Offset(start))
                .map_err(|e| err("assigning", &e))?;
        }
    }
    let mut out: BTreeMap<(String, i32), Vec<Raw>> = BTreeMap::new();
    if ends.is_empty() {
        return Ok((Vec::new(), reached));
    }
    let consumer = consumer("read_committed")?;
    consumer.assign(&tpl).map_err(|e| err("assigning", &e))?;
    let started = Instant::now();
    loop {
        let positions = consumer
            .position()
            .map_err(|e| err("reading the position", &e))?;
        let behind: Vec<_> = ends
            .iter()
            .filter(|((t, p), high)| {
                positions
                    .find_partition(t, *p)
                    .and_then(|e| e.offset().to_raw())
                    .is_none_or(|pos| pos < **high)
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        if started.elapsed() > patience {
            let ((t, p), high) = behind[0];
            return Err(err(
                &format!("reading {t}[{p}]"),
                &format!(
                    "not at offset {high} after {:?}: the cluster does not answer, or a \
                     transaction left open there has not ended ({})",
                    started.elapsed(),
                    super::HANGING_TRANSACTION_HINT
                ),
            ));
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(|e| err("reading", &e))?;
        out.entry((m.topic().to_string(), m.partition()))
            .or_default()
            .push(Raw {
                topic: m.topic().to_string(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: super::decode::headers_of(&m),
            });
    }
    Ok((out.into_values().flatten().collect(), reached))
}

fn sorted_page(mut letters: Vec<DeadLetter>, page: Page) -> Vec<DeadLetter> {
    letters.sort_by(|a, b| (a.first_failure, &a.id).cmp(&(b.first_failure, &b.id)));
    letters
        .into_iter()
        .filter(|l| page.is_after(l))
        .skip(page.offset)
        .take(page.limit)
        .collect()
}

fn audit_entry(v: &[u8]) -> Option<AuditEntry> {
    let v: serde_json::Value = serde_json::from_slice(v).ok()?;
    Some(AuditEntry {
        at: v["at"].as_i64()?,
        actor: v["actor"].as_str()?.to_string(),
        action: v["action"].as_str()?.to_string(),
        detail: v["detail"].as_str()?.to_string(),
        ids: v["ids"]
            .as_array()?
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<_>>()?,
    })
}

#[async_trait]
impl DeadLetterStore for KafkaDeadLetterStore {
    /// A replay call costs a transaction and a read of what was appended since the
    /// last: large chunks (the audit record of one lists its ids, well under a
    /// record's 1 MB).
    fn replay_chunk(&self) -> usize {
        10_000
    }

    fn describe(&self) -> String {
        format!(
            "kafka {} at {}",
            self.s.topic_pattern, self.s.bootstrap_servers
        )
    }

    /// The Kafka sink of the pipeline's topic (see the module docs).
    fn sink(&self, pipeline: &str) -> Result<Arc<dyn SinkFactory>> {
        let topic = self.topic_of(pipeline);
        let mut values = BTreeMap::from([
            (
                "bootstrap_servers".to_string(),
                self.s.bootstrap_servers.clone(),
            ),
            ("topic".to_string(), topic.clone()),
            ("format".to_string(), "avro".to_string()),
            (
                "schema_registry_url".to_string(),
                self.s.registry_url.clone(),
            ),
            ("key_field".to_string(), "id".to_string()),
            ("partitions".to_string(), self.s.partitions.to_string()),
            (
                "replication_factor".to_string(),
                self.s.replication.to_string(),
            ),
            ("retention".to_string(), "infinite".to_string()),
            (
                "transactional_id_prefix".to_string(),
                format!(
                    "{}-{pipeline}-dead_letters",
                    self.s.sink_transactional_prefix
                ),
            ),
        ]);
        for (k, v) in &self.s.properties {
            values.insert(format!("kafka.{k}"), v.clone());
        }
        let mut opts = Options::new("dead_letters", "kafka", values);
        let req = TableRequest {
            table: "dead_letters",
            env: &self.env,
            schema: Some(record::schema()),
            base_dir: std::path::Path::new("."),
        };
        let error = |e: crate::Error| self.error(&format!("the sink of pipeline {pipeline}"), e);
        let factory = super::sink::sink_with_contract(&req, &mut opts, Some(CONTRACT.into()))
            .map_err(error)?;
        opts.finish().map_err(error)?;
        factory.check_schema(&record::schema()).map_err(error)?;
        Ok(factory)
    }

    async fn list(&self, filter: &Filter, page: Page) -> Result<Vec<DeadLetter>> {
        let state = self.state().await?;
        let selected = state
            .into_values()
            .map(|(_, l)| l)
            .filter(|l| filter.matches(l))
            .collect();
        Ok(sorted_page(selected, page))
    }

    async fn get(&self, id: &str) -> Result<Option<DeadLetter>> {
        Ok(self.state().await?.remove(id).map(|(_, l)| l))
    }

    async fn stats(&self, filter: &Filter) -> Result<Vec<StatsRow>> {
        let mut groups: BTreeMap<(String, &'static str, &'static str), StatsRow> = BTreeMap::new();
        for (_, l) in self.state().await?.into_values() {
            if !filter.matches(&l) {
                continue;
            }
            let key = (
                l.pipeline.clone(),
                l.failure_class.as_str(),
                l.status.as_str(),
            );
            let row = groups.entry(key).or_insert_with(|| StatsRow {
                pipeline: l.pipeline.clone(),
                failure_class: l.failure_class,
                status: l.status,
                count: 0,
                oldest: l.first_failure,
            });
            row.count += 1;
            row.oldest = row.oldest.min(l.first_failure);
        }
        Ok(groups.into_values().collect())
    }

    async fn replay(&self, ids: &[String], actor: &str) -> Result<ReplayOutcome> {
        let _one = self.changing.lock().await;
        let producer = self.admin_producer().await?;
        let state = self.state().await?;
        let mut outcome = ReplayOutcome::default();
        let mut replayed: Vec<(String, DeadLetter)> = Vec::new();
        let mut sent = Vec::new();
        for id in ids {
            let Some((topic, l)) = state.get(id) else {
                return Err(DlqError::NotFound(id.clone()));
            };
            let source = match (&l.source.table, &l.source.topic) {
                (Some(_), Some(t)) => t.clone(),
                (None, _) => {
                    return Err(DlqError::NotReplayable {
                        id: id.clone(),
                        reason: "it is not a record of a source table".into(),
                    });
                }
                (Some(_), None) => {
                    return Err(DlqError::NotReplayable {
                        id: id.clone(),
                        reason: "it was not read from a Kafka topic (the Kafka store \
                                 replays into the source topic)"
                            .into(),
                    });
                }
            };
            if l.status != Status::Pending || replayed.iter().any(|(_, r)| r.id == *id) {
                outcome.skipped += 1;
                continue;
            }
            let mut headers: Vec<(String, Vec<u8>)> = l
                .source
                .headers
                .iter()
                .filter(|(k, _)| k != ID_HEADER && k != ATTEMPTS_HEADER)
                .cloned()
                .collect();
            headers.push((ID_HEADER.into(), id.clone().into_bytes()));
            headers.push((ATTEMPTS_HEADER.into(), l.attempts.to_string().into_bytes()));
            sent.push(Out {
                topic: source,
                key: l.source.key.clone(),
                value: l.payload.clone(),
                headers,
            });
            let mut r = l.clone();
            r.status = Status::Replayed;
            r.status_reason = None;
            replayed.push((topic.clone(), r));
            outcome.replayed += 1;
        }
        if replayed.is_empty() {
            return Ok(outcome);
        }
        let entry = Self::entry(
            actor,
            "replay",
            format!("{} replayed, {} skipped", outcome.replayed, outcome.skipped),
            replayed.iter().map(|(_, l)| l.id.clone()).collect(),
        );
        sent.extend(self.change_records(&replayed, &entry).await?);
        self.transact(&producer, sent).await?;
        Ok(outcome)
    }

    async fn edit(&self, id: &str, payload: Vec<u8>, actor: &str) -> Result<()> {
        let _one = self.changing.lock().await;
        let producer = self.admin_producer().await?;
        let mut state = self.state().await?;
        let Some((topic, mut l)) = state.remove(id) else {
            return Err(DlqError::NotFound(id.to_string()));
        };
        if l.status != Status::Pending {
            return Err(DlqError::BadRequest(format!(
                "dead letter {id} is {}: only a pending one can be edited",
                l.status.as_str()
            )));
        }
        let detail = format!(
            "payload {} bytes -> {} bytes",
            l.payload.len(),
            payload.len()
        );
        let old = std::mem::replace(&mut l.payload, payload);
        l.original_payload.get_or_insert(old);
        let entry = Self::entry(actor, "edit", detail, vec![id.to_string()]);
        let out = self.change_records(&[(topic, l)], &entry).await?;
        self.transact(&producer, out).await
    }

    async fn discard(&self, ids: &[String], reason: &str, actor: &str) -> Result<u64> {
        if reason.trim().is_empty() {
            return Err(DlqError::BadRequest(
                "a discard needs a reason (--reason)".into(),
            ));
        }
        let _one = self.changing.lock().await;
        let producer = self.admin_producer().await?;
        let state = self.state().await?;
        let mut discarded: Vec<(String, DeadLetter)> = Vec::new();
        for id in ids {
            let Some((topic, l)) = state.get(id) else {
                return Err(DlqError::NotFound(id.clone()));
            };
            if l.status == Status::Pending && !discarded.iter().any(|(_, d)| d.id == *id) {
                let mut d = l.clone();
                d.status = Status::Discarded;
                d.status_reason = Some(reason.to_string());
                discarded.push((topic.clone(), d));
            }
        }
        if discarded.is_empty() {
            return Ok(0);
        }
        let n = discarded.len() as u64;
        let entry = Self::entry(
            actor,
            "discard",
            reason.to_string(),
            discarded.iter().map(|(_, l)| l.id.clone()).collect(),
        );
        let out = self.change_records(&discarded, &entry).await?;
        self.transact(&producer, out).await?;
        Ok(n)
    }

    async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let raws = self.read(Some(vec![self.s.audit_topic.clone()])).await?;
        let mut entries: Vec<AuditEntry> = raws
            .iter()
            .filter_map(|r| r.value.as_deref().and_then(audit_entry))
            .collect();
        // Offset order is commit order (one partition); newest first.
        entries.reverse();
        entries.truncate(limit);
        Ok(entries)
    }
}

/// The Arrow columns of the dead-letter contract (arrow-avro's mapping).
pub fn contract_columns() -> std::result::Result<SchemaRef, String> {
    super::contract::avro_columns(CONTRACT)
}

#[cfg(test)]
mod tests;
