//! Bad records: what happens to a record that cannot be decoded or processed.
//!
//! Owns the [`BadRecords`] handle every source and operator reports bad records to.
//! Today a bad record is dropped, counted (`tributary_bad_records_total{reason}`) and
//! logged at a bounded rate (at most one log line per second per task, with the count
//! of records suppressed since). The dead-letter issue routes the same reports to a
//! dead-letter store without changing any caller: the handle is the per-stage error
//! policy's single entry point.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::types::NodeStats;
use crate::types::TaskInfo;

/// Why a record was refused; a closed set so metrics labels stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRecordReason {
    /// Not valid in its format (broken JSON, truncated Avro…).
    Malformed,
    /// Valid syntax, but a field has the wrong type or a required field is missing.
    SchemaMismatch,
    /// Decoded, but breaks one of the table's `CHECK` constraints.
    Constraint,
    /// Rejected by an operator while processing.
    Processing,
}

impl BadRecordReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BadRecordReason::Malformed => "malformed",
            BadRecordReason::SchemaMismatch => "schema_mismatch",
            BadRecordReason::Constraint => "constraint",
            BadRecordReason::Processing => "processing",
        }
    }
}

/// Where a task reports the records it could not handle. A clone reports into the
/// same counters (for a task's helper, such as a decoding worker); each clone limits
/// its own log rate.
#[derive(Clone)]
pub struct BadRecords {
    pipeline: Arc<str>,
    operator: Arc<str>,
    stats: Arc<NodeStats>,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl BadRecords {
    pub fn new(task: &TaskInfo, stats: Arc<NodeStats>) -> Self {
        BadRecords {
            pipeline: task.pipeline.clone(),
            operator: task.node.clone(),
            stats,
            last_log: None,
            suppressed: 0,
        }
    }

    /// A handle that only counts into a private counter (tests, `generate`).
    pub fn detached(name: &str) -> Self {
        BadRecords {
            pipeline: "-".into(),
            operator: name.into(),
            stats: Arc::default(),
            last_log: None,
            suppressed: 0,
        }
    }

    /// Number of bad records reported through this handle's node so far.
    pub fn count(&self) -> u64 {
        self.stats.bad_records.load(Ordering::Relaxed)
    }

    /// Reports one bad record. `raw` is the offending input (shown truncated in the
    /// log); `detail` says what is wrong with it, e.g. the decoder's message.
    pub fn report(&mut self, reason: BadRecordReason, detail: &str, raw: &[u8]) {
        self.stats.bad_records.fetch_add(1, Ordering::Relaxed);
        crate::metrics::bad_records(&self.pipeline, &self.operator, reason.as_str()).increment(1);
        let now = Instant::now();
        let due = self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            let shown = &raw[..raw.len().min(200)];
            tracing::warn!(
                pipeline = %self.pipeline,
                operator = %self.operator,
                reason = reason.as_str(),
                detail,
                record = %String::from_utf8_lossy(shown),
                suppressed = self.suppressed,
                "bad record dropped"
            );
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }
}

/// What a stage does with a record it cannot handle: the per-stage error policy.
/// The dead-letter issue adds `DeadLetter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Stop the pipeline with an error naming the stage (processing errors' default).
    #[default]
    Fail,
    /// Drop the record, count it and log it at a bounded rate (bad input's default).
    Drop,
}
