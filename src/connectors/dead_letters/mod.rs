//! Where dead letters are kept: the [`DeadLetterStore`] trait every store implements
//! (the local SQLite store, a Kafka topic), and the types of its admin operations.
//!
//! A store has two sides. Pipelines write into it through the sink it builds
//! ([`DeadLetterStore::sink`]), with the checkpoint's guarantees: exactly once when the
//! pipeline has checkpoints. Admins read and change it through the other methods; every
//! change is recorded in the store's audit log in the same transaction as the change
//! itself, and a replay sends a record back to its source and marks it replayed in one
//! transaction, so an interrupted and repeated replay never sends a record twice.
//! `conformance.rs` holds what every store must do; `local.rs` is the embedded store
//! (SQLite), `connectors/kafka/dead_letters.rs` the Kafka one.

#[cfg(test)]
pub(crate) mod conformance;
pub mod local;
pub mod workflow;

use std::sync::Arc;

use async_trait::async_trait;

use crate::dlq::BadRecordReason;
use crate::dlq::record::{DeadLetter, Status};
use crate::engine::SinkFactory;

pub use crate::dlq::DlqError;

pub type Result<T, E = DlqError> = std::result::Result<T, E>;

/// Which dead letters an operation applies to. Every field narrows; the default
/// selects everything.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub pipeline: Option<String>,
    /// The domain of the record's source: the first dot-separated part of its topic,
    /// or of its table's name.
    pub domain: Option<String>,
    pub class: Option<BadRecordReason>,
    pub status: Option<Status>,
    /// First failure at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// First failure before this time (ms since the epoch).
    pub until: Option<i64>,
    /// Text the message contains (case-insensitive).
    pub text: Option<String>,
}

impl Filter {
    /// Whether `l` passes this filter; stores that cannot filter on the server apply it.
    pub fn matches(&self, l: &DeadLetter) -> bool {
        self.pipeline.as_ref().is_none_or(|p| *p == l.pipeline)
            && self.domain.as_ref().is_none_or(|d| domain_of(l) == *d)
            && self.class.is_none_or(|c| c == l.failure_class)
            && self.status.is_none_or(|s| s == l.status)
            && self.since.is_none_or(|t| l.first_failure >= t)
            && self.until.is_none_or(|t| l.first_failure < t)
            && self
                .text
                .as_ref()
                .is_none_or(|t| l.message.to_lowercase().contains(&t.to_lowercase()))
    }
}

/// The domain of a dead letter's source (see [`Filter::domain`]).
pub fn domain_of(l: &DeadLetter) -> String {
    let name = l
        .source
        .topic
        .as_deref()
        .or(l.source.table.as_deref())
        .unwrap_or(&l.node);
    name.split(['.', '_']).next().unwrap_or(name).to_string()
}

/// A page of a listing: records in order of first failure, then id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
    /// Only records after this (first failure, id) in that order: paging through a
    /// large queue by the last record of the previous page costs the same for every
    /// page, where an offset costs the records it skips.
    pub after: Option<(i64, String)>,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            offset: 0,
            limit: 100,
            after: None,
        }
    }
}

impl Page {
    /// Whether `l` comes after the page's cursor (always without one).
    pub fn is_after(&self, l: &DeadLetter) -> bool {
        self.after
            .as_ref()
            .is_none_or(|(t, id)| (l.first_failure, l.id.as_str()) > (*t, id.as_str()))
    }
}

/// Counts of one pipeline, class and status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatsRow {
    pub pipeline: String,
    pub failure_class: BadRecordReason,
    pub status: Status,
    pub count: u64,
    /// The first failure of the oldest record in this group (ms since the epoch).
    pub oldest: i64,
}

/// One admin action, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// When (ms since the epoch).
    pub at: i64,
    /// Who: the name the admin gave (`--actor`, the `x-tributary-actor` header), else
    /// the OS user.
    pub actor: String,
    /// `replay`, `edit` or `discard`.
    pub action: String,
    /// The reason given (discard), or what changed (edit).
    pub detail: String,
    /// The dead letters it applied to.
    pub ids: Vec<String>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayOutcome {
    /// Sent back to their source and marked replayed.
    pub replayed: u64,
    /// Already replayed or discarded when the replay reached them (an earlier,
    /// interrupted replay had sent them): not sent again.
    pub skipped: u64,
}

/// A place dead letters are kept. See the module documentation.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// For logs and errors: `local data/dlq.sqlite`, `kafka orders.dlq`, …
    fn describe(&self) -> String;

    /// The sink pipeline `pipeline` writes its dead letters through. It takes batches
    /// of [`record::schema`](crate::dlq::record::schema); with checkpoints it holds them back
    /// until the checkpoint commits (`Sink::exactly_once`), and after a crash keeps
    /// exactly the dead letters of the restored checkpoint.
    fn sink(&self, pipeline: &str) -> Result<Arc<dyn SinkFactory>>;

    /// The dead letters `filter` selects, in order of first failure then id.
    async fn list(&self, filter: &Filter, page: Page) -> Result<Vec<DeadLetter>>;

    async fn get(&self, id: &str) -> Result<Option<DeadLetter>>;

    /// Counts per pipeline, class and status of what `filter` selects.
    async fn stats(&self, filter: &Filter) -> Result<Vec<StatsRow>>;

    /// How many ids a bulk replay hands to one [`replay`](Self::replay) call (each
    /// call is one transaction). 500 by default.
    fn replay_chunk(&self) -> usize {
        500
    }

    /// Sends each pending record of `ids` back into its pipeline's input (its source
    /// table's replay inbox, or its source topic with the original key and headers)
    /// and marks it replayed, with an audit entry, atomically: a record already
    /// replayed or discarded is skipped. Fails without changing anything when one of
    /// them is not replayable.
    async fn replay(&self, ids: &[String], actor: &str) -> Result<ReplayOutcome>;

    /// Replaces the payload of pending record `id` (keeping the original the first
    /// time). The caller has validated it against the record's table.
    async fn edit(&self, id: &str, payload: Vec<u8>, actor: &str) -> Result<()>;

    /// Marks the pending records of `ids` discarded with `reason`; returns how many.
    async fn discard(&self, ids: &[String], reason: &str, actor: &str) -> Result<u64>;

    /// The newest `limit` audit entries, newest first.
    async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>>;
}

/// A shared store.
pub type Store = Arc<dyn DeadLetterStore>;
