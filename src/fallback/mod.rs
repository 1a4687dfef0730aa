//! The broker-outage fallback: what a Kafka sink does when its cluster is down.
//!
//! Owns the circuit breaker per Kafka cluster ([`breaker`]) and the fallback stores
//! that keep what a checkpoint commits while the breaker is open ([`FallbackStore`]:
//! the local SQLite store `local.rs` on the embedded default; the DynamoDB store for
//! production), with one conformance suite (`conformance.rs`), and the process's
//! [`Fallback`] (`runtime.rs`: the store, the breakers, the waiting keys and the drain
//! controls the Kafka sink tasks share). The Kafka sink's fallback path and its drain
//! are in `connectors/kafka/sink/fallback.rs`.
//!
//! Invariants of every store:
//! - Records are grouped by *stream* — pipeline, destination topic and Kafka key (a
//!   null key is a stream of its own) — and ordered in a stream by their [`Seq`]
//!   (checkpoint, index): a stream's records are read back oldest first.
//! - Appending is idempotent: a record already stored under its stream and sequence
//!   is not stored again (a retried append after a crash stores nothing twice).
//! - A stream's records are deleted only up to a sequence the caller has made
//!   durable elsewhere (committed to Kafka); newer ones stay.
//! - An unavailable store is an outage (`FallbackError::Unavailable`), never a loss:
//!   callers hold what they could not store and apply back-pressure.

pub mod breaker;
#[cfg(test)]
pub(crate) mod conformance;
pub mod dynamodb;
pub mod local;
pub mod runtime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use breaker::{Breaker, BreakerSettings, BreakerState, Route};
pub use runtime::{DrainControl, DrainMode, Fallback, FallbackSettings, FallbackStatus, Waiting};

/// Errors of the fallback stores and the breaker's settings.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FallbackError {
    /// The store cannot be reached or written now: hold the records and retry.
    #[error("fallback store {store} unavailable: {message}")]
    Unavailable {
        store: &'static str,
        message: String,
    },
    /// The store holds something it cannot read back (a bug or a foreign writer).
    #[error("fallback store {store}: {message}")]
    Corrupt {
        store: &'static str,
        message: String,
    },
    #[error("{0}")]
    Config(String),
}

impl FallbackError {
    pub fn code(&self) -> &'static str {
        match self {
            FallbackError::Unavailable { .. } => "FBK001",
            FallbackError::Corrupt { .. } => "FBK002",
            FallbackError::Config(_) => "FBK003",
        }
    }
}

pub type Result<T, E = FallbackError> = std::result::Result<T, E>;

/// Where a record sits in its stream: the checkpoint that stored it, then its index
/// in that checkpoint's output. Ordered as the records were produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seq {
    pub checkpoint: u64,
    pub index: u64,
}

/// One stream of records: a pipeline's output for one Kafka key of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId {
    pub pipeline: String,
    pub topic: String,
    /// The Kafka key; `None` for records without one.
    pub key: Option<Vec<u8>>,
}

/// A Kafka record kept in the fallback, with what producing it again needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FallbackRecord {
    pub stream: StreamId,
    pub seq: Seq,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record's timestamp (ms since the epoch), if it had one.
    pub timestamp_ms: Option<i64>,
    /// When the fallback stored it (ms since the epoch).
    pub stored_ms: i64,
}

/// What waits in the fallback for one pipeline and topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backlog {
    pub pipeline: String,
    pub topic: String,
    pub records: u64,
    pub keys: u64,
    /// When the oldest waiting record was stored (ms since the epoch).
    pub oldest_stored_ms: Option<i64>,
}

/// A sink task's output up to `checkpoint` (of `lineage`, see
/// `connectors/kafka/transactions.rs`) is stored in the fallback: the fallback's
/// counterpart of the commit marker the sink writes to Kafka, so a restore never sends
/// to Kafka what the fallback holds (ADR 0016).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryMark {
    pub pipeline: String,
    /// The sink task's transactional id.
    pub writer: String,
    pub lineage: String,
    pub checkpoint: u64,
}

/// Where a pipeline's Kafka output waits while its cluster is down.
#[async_trait]
pub trait FallbackStore: Send + Sync + std::fmt::Debug {
    /// Stores `records`; a record whose stream and sequence are stored already is
    /// left as it is. All or nothing: on error, the caller appends them all again.
    async fn append(&self, records: &[FallbackRecord]) -> Result<()>;
    /// The streams of `pipeline` that have records waiting.
    async fn streams(&self, pipeline: &str) -> Result<Vec<StreamId>>;
    /// The oldest `limit` records of `stream`, oldest first.
    async fn oldest(&self, stream: &StreamId, limit: usize) -> Result<Vec<FallbackRecord>>;
    /// Deletes `stream`'s records up to and including `through`.
    async fn delete_through(&self, stream: &StreamId, through: Seq) -> Result<()>;
    /// What waits, per pipeline and topic (every pipeline's when `None`).
    async fn backlog(&self, pipeline: Option<&str>) -> Result<Vec<Backlog>>;
    /// Records `mark` as its writer's latest, unless the writer has a newer one of
    /// the same lineage (a late mark never takes a writer back).
    async fn mark(&self, mark: &DeliveryMark) -> Result<()>;
    /// The latest mark of each writer of `pipeline`.
    async fn marks(&self, pipeline: &str) -> Result<Vec<DeliveryMark>>;
}
