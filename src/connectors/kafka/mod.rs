//! The `kafka` connector: Apache Kafka (any Kafka-API cluster) on `rdkafka`, with
//! librdkafka built from its bundled source.
//!
//! Owns reading topic partitions into Arrow batches (JSON, or Avro in the Confluent
//! wire format with writer schemas from a registry) and writing batches as records.
//! This file holds what source and sink share (cluster and registry settings, errors);
//! the source is `source.rs` (its polling thread `poll.rs`), the sink `sink.rs`, their
//! transactions `transactions.rs`, decoding `decode.rs`, record attributes `metadata.rs`, health
//! reporting `probe.rs`, domains and clusters `domains.rs`; the Kafka dead-letter store
//! (`DeadLetterStore` on a topic per domain, built on the sink) `dead_letters.rs`.
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
//! - A thread of the task polls its consumer and hands chunks of records, each with
//!   the offsets to resume from after it, to the source task (`poll.rs`); record
//!   values are decoded by workers that keep each partition's order and are drained
//!   before every checkpoint barrier (`decode.rs`, ADR 0010). A checkpoint holds the
//!   offsets of the chunks received, never of records still being polled.
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
use std::time::Duration;

use rdkafka::ClientConfig;

use super::{ConnectorEnv, ConnectorError, Options};
pub use domains::{ClusterConfig, KafkaConfig};
pub(crate) use sink::sink;
pub(crate) use source::source;

mod client;
pub(crate) mod contract;
pub mod dead_letters;
mod decode;
mod domains;
mod headers;
mod metadata;
mod poll;
mod probe;
mod sink;
mod source;
mod transactions;
use crate::registry::client::RegistryClient;

pub(super) type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// How long a metadata or watermark request may take before it is retried.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Where transactional sinks record which checkpoint's output committed.
pub(super) const DEFAULT_COMMIT_TOPIC: &str = "_tributary_commits";
/// What to do about a partition whose last stable offset does not move: a transaction
/// whose coordinator no longer knows it (Kafka skips the markers of a partition that
/// has no leader when they are sent) stays open until an operator aborts it.
pub(super) const HANGING_TRANSACTION_HINT: &str = "if it never ends, the cluster left it \
     hanging: find it with `kafka-transactions.sh find-hanging --broker-id N` and end it \
     with `kafka-transactions.sh abort`";

pub(super) fn kafka_error(table: &str, what: &str, e: impl std::fmt::Display) -> crate::Error {
    ConnectorError::Other {
        connector: "kafka",
        message: format!("table {table}: {what}: {e}"),
    }
    .into()
}

/// Client settings and topic shared by the source and the sink: the cluster (its
/// `bootstrap_servers`, or a configured `cluster` / `domain`, see [`domains`]) and any
/// librdkafka property given as `kafka.<property>` (e.g. `kafka.security.protocol`).
pub(super) fn client_config(
    opts: &mut Options,
    env: &ConnectorEnv,
) -> Result<(ClientConfig, String)> {
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
pub(super) fn avro_registry(
    opts: &mut Options,
    env: &ConnectorEnv,
) -> Result<Option<Arc<RegistryClient>>> {
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
pub(super) async fn check_registry(table: &str, registry: Option<&RegistryClient>) -> Result<()> {
    match registry {
        Some(r) => r.check().await.map_err(|e| e.in_table(table).into()),
        None => Ok(()),
    }
}

/// Reads and checks the Avro schema of `schema_file`: a relative path is resolved from
/// the directory of the SQL file that declares the table (else from `base`, the working
/// directory, for a table declared without one); an absolute path is kept.
pub(super) fn read_avro_schema(
    opts: &Options,
    base: &std::path::Path,
    file: &str,
) -> Result<Arc<str>> {
    let path = opts.sql_dir().unwrap_or(base).join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| opts.invalid("schema_file", file, format!("{}: {e}", path.display())))?;
    crate::registry::schema::AvroSchema::parse(&text)
        .map_err(|e| opts.invalid("schema_file", file, e.to_string()))?;
    Ok(text.into())
}

/// The test broker's bootstrap servers (`TRIBUTARY_TEST_KAFKA`); a test that needs one
/// fails (it does not skip) without it.
#[cfg(test)]
pub(crate) fn test_bootstrap() -> String {
    std::env::var("TRIBUTARY_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "no Kafka broker: run the suite with scripts/test, or \
             export TRIBUTARY_TEST_KAFKA=\"$(scripts/kafka start | tail -n 1)\""
        )
    })
}
