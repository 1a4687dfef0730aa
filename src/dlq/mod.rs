//! Bad records and the dead-letter queue.
//!
//! Owns what happens to a record a pipeline cannot handle, whatever the failure class
//! ([`BadRecordReason`]): every source, operator and sink reports it to its task's
//! [`BadRecords`] handle, which applies the stage's [`ErrorPolicy`]:
//! - `dead-letter` (the default): the record, untouched, with its metadata becomes a
//!   [`DeadLetter`](record::DeadLetter) buffered in the task; the task's collector sends
//!   the buffer to the pipeline's dead-letter sink (`engine::DEAD_LETTER_PORT`) before
//!   its next batch, watermark or checkpoint barrier, so dead letters follow the
//!   checkpoint's guarantees like any other output;
//! - `drop`: counted and logged at a bounded rate (one line per second per task);
//! - `fail`: the task stops at its next emit with an error naming the record's class
//!   and message (DLQ007).
//!
//! Every report counts in `tributary_bad_records_total{reason}`. The stores that keep
//! dead letters for the admin workflow (`tributary dlq …`, the admin endpoint) are
//! connectors: `connectors::dead_letters` (the `DeadLetterStore` trait, the local
//! SQLite store, their conformance suite) and `connectors/kafka/dead_letters.rs`.

mod error;
pub mod record;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

pub use error::DlqError;
pub use record::{DeadLetter, Origin, PayloadFormat, Status};

use crate::types::NodeStats;
use crate::types::TaskInfo;

/// Why a record was refused (a dead letter's failure class); a closed set so metrics
/// labels stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRecordReason {
    /// Not valid in its format (broken JSON, truncated Avro…).
    Malformed,
    /// Valid syntax, but a field has the wrong type or a required field is missing.
    SchemaMismatch,
    /// Decoded, but breaks one of the table's `CHECK` constraints.
    Constraint,
    /// A row SQL or a UDF cannot evaluate, or an operator cannot place (a NULL event
    /// time).
    Processing,
    /// Later than the watermark allows: its window was already emitted.
    Late,
    /// A lookup table has no row for its key, and the table says that is an error.
    LookupMiss,
    /// Refused by a Rust process function (`ctx.dead_letter`), e.g. an impossible
    /// order transition.
    Rejected,
    /// Refused for good by a sink's destination (too large, rejected).
    Sink,
}

impl BadRecordReason {
    pub const ALL: [BadRecordReason; 8] = [
        BadRecordReason::Malformed,
        BadRecordReason::SchemaMismatch,
        BadRecordReason::Constraint,
        BadRecordReason::Processing,
        BadRecordReason::Late,
        BadRecordReason::LookupMiss,
        BadRecordReason::Rejected,
        BadRecordReason::Sink,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BadRecordReason::Malformed => "malformed",
            BadRecordReason::SchemaMismatch => "schema_mismatch",
            BadRecordReason::Constraint => "constraint",
            BadRecordReason::Processing => "processing",
            BadRecordReason::Late => "late",
            BadRecordReason::LookupMiss => "lookup_miss",
            BadRecordReason::Rejected => "rejected",
            BadRecordReason::Sink => "sink",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What a stage does with a record it cannot handle: the error policy, one per
/// pipeline (`errors: { policy }`), overridable per table (`errors: { tables }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Keep the record and its metadata in the dead-letter queue and go on.
    #[default]
    DeadLetter,
    /// Drop the record, count it and log it at a bounded rate.
    Drop,
    /// Stop the pipeline with an error naming the record's class and message.
    Fail,
}

impl ErrorPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorPolicy::DeadLetter => "dead-letter",
            ErrorPolicy::Drop => "drop",
            ErrorPolicy::Fail => "fail",
        }
    }
}

/// What one report carries besides its class and message.
pub struct Report<'a> {
    pub reason: BadRecordReason,
    pub detail: &'a str,
    pub payload: &'a [u8],
    pub format: PayloadFormat,
    pub event_time: Option<i64>,
}

/// Besides the [`Origin`], what a source knows about the record it is decoding.
#[derive(Debug, Clone, Default)]
pub struct RecordContext {
    pub schema_id: Option<i32>,
    /// A replayed dead letter: its id and how many times it has failed, so that if it
    /// fails again it returns under the same id with one more attempt.
    pub replay_of: Option<(String, i32)>,
}

/// The dead letters of one task, shared by every clone of its handle.
#[derive(Default)]
struct Pending {
    letters: Mutex<Vec<DeadLetter>>,
    count: AtomicUsize,
    /// Under the `fail` policy, the first bad record's error (read on every emit: a
    /// `OnceLock` is one atomic load).
    failure: std::sync::OnceLock<DlqError>,
}

/// Where a task reports the records it could not handle. A clone (for a task's
/// helper, such as a decoding worker) reports into the same counters and dead-letter
/// buffer; each clone limits its own log rate and has its own [`Origin`].
#[derive(Clone)]
pub struct BadRecords {
    pipeline: Arc<str>,
    operator: Arc<str>,
    stats: Arc<NodeStats>,
    policy: ErrorPolicy,
    /// Whether the pipeline has a dead-letter sink; without one `dead-letter` drops.
    routed: bool,
    pending: Arc<Pending>,
    origin: Origin,
    context: RecordContext,
    last_log: Option<Instant>,
    suppressed: u64,
    /// `tributary_bad_records_total` and `tributary_dead_letters_total` by class,
    /// looked up once each (a lookup builds its labels).
    counters: [Option<(metrics::Counter, metrics::Counter)>; BadRecordReason::ALL.len()],
    /// Letters this handle kept but has not released yet (see
    /// [`BadRecords::hold_letters`]); `None`: letters go out at once.
    held: Option<Vec<DeadLetter>>,
}

impl BadRecords {
    /// The handle of `task`. `policy` is its stage's; `routed` says whether the
    /// pipeline has a dead-letter sink; `table` is the source table whose records the
    /// task sees as they were read (a source, or a stage right after one), which makes
    /// its dead letters replayable.
    pub fn new(
        task: &TaskInfo,
        stats: Arc<NodeStats>,
        policy: ErrorPolicy,
        routed: bool,
        table: Option<&str>,
    ) -> Self {
        BadRecords {
            pipeline: task.pipeline.clone(),
            operator: task.node.clone(),
            stats,
            policy,
            routed,
            pending: Arc::default(),
            origin: Origin {
                table: table.map(str::to_string),
                ..Origin::default()
            },
            context: RecordContext::default(),
            last_log: None,
            suppressed: 0,
            counters: Default::default(),
            held: None,
        }
    }

    /// A handle that only counts into a private counter and drops (tests, `generate`).
    pub fn detached(name: &str) -> Self {
        BadRecords {
            pipeline: "-".into(),
            operator: name.into(),
            stats: Arc::default(),
            policy: ErrorPolicy::Drop,
            routed: false,
            pending: Arc::default(),
            origin: Origin::default(),
            context: RecordContext::default(),
            last_log: None,
            suppressed: 0,
            counters: Default::default(),
            held: None,
        }
    }

    /// A detached handle that keeps dead letters, for tests of what a component
    /// reports (read them with [`BadRecords::take_letters`]).
    pub fn collecting(name: &str) -> Self {
        BadRecords {
            policy: ErrorPolicy::DeadLetter,
            routed: true,
            ..BadRecords::detached(name)
        }
    }

    /// Number of bad records reported through this handle's node so far.
    pub fn count(&self) -> u64 {
        self.stats.bad_records.load(Ordering::Relaxed)
    }

    pub fn policy(&self) -> ErrorPolicy {
        self.policy
    }

    /// Where the records reported next come from; sources update it as they read
    /// (a Kafka offset, a file line). The replay table stays.
    pub fn origin_mut(&mut self) -> &mut Origin {
        &mut self.origin
    }

    /// What else is known about the records reported next: the schema id they were
    /// written with, and whether they are a replay of a dead letter.
    pub fn context_mut(&mut self) -> &mut RecordContext {
        &mut self.context
    }

    /// Reports one bad input record: `raw` is the offending input, untouched;
    /// `detail` says what is wrong with it, e.g. the decoder's message.
    pub fn report(&mut self, reason: BadRecordReason, detail: &str, raw: &[u8]) {
        self.report_with(Report {
            reason,
            detail,
            payload: raw,
            format: PayloadFormat::Bytes,
            event_time: None,
        });
    }

    /// Whether a report keeps the record (the `dead-letter` policy with a dead-letter
    /// sink): callers may skip preparing a payload otherwise.
    pub fn keeps_rows(&self) -> bool {
        self.policy == ErrorPolicy::DeadLetter && self.routed
    }

    /// Reports row `row` of `batch` (a decoded row an operator refused), kept as a
    /// JSON object.
    pub fn report_row(
        &mut self,
        reason: BadRecordReason,
        detail: &str,
        batch: &RecordBatch,
        row: usize,
        event_time: Option<i64>,
    ) {
        let raw = if self.keeps_rows() {
            row_json(batch, row)
        } else {
            Vec::new()
        };
        self.report_with(Report {
            reason,
            detail,
            payload: &raw,
            format: PayloadFormat::Row,
            event_time,
        });
    }

    pub fn report_with(&mut self, r: Report<'_>) {
        self.stats.bad_records.fetch_add(1, Ordering::Relaxed);
        self.counters(r.reason).0.increment(1);
        let kept = match self.policy {
            ErrorPolicy::DeadLetter if self.routed => {
                self.keep(&r);
                true
            }
            ErrorPolicy::Fail => {
                self.pending.failure.get_or_init(|| DlqError::Failed {
                    node: self.operator.to_string(),
                    class: r.reason.as_str(),
                    message: r.detail.to_string(),
                });
                true
            }
            _ => false,
        };
        let now = Instant::now();
        let due = self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            let shown = &r.payload[..r.payload.len().min(200)];
            let what = match (self.policy, kept) {
                (ErrorPolicy::Fail, _) => "bad record: stopping (policy fail)",
                (_, true) => "bad record dead-lettered",
                _ => "bad record dropped",
            };
            tracing::warn!(
                pipeline = %self.pipeline,
                operator = %self.operator,
                reason = r.reason.as_str(),
                detail = r.detail,
                record = %String::from_utf8_lossy(shown),
                source = %self.origin.describe(),
                suppressed = self.suppressed,
                "{what}"
            );
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }

    /// The counters of class `reason`.
    fn counters(&mut self, reason: BadRecordReason) -> &(metrics::Counter, metrics::Counter) {
        let i = BadRecordReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL");
        let (pipeline, operator) = (&self.pipeline, &self.operator);
        self.counters[i].get_or_insert_with(|| {
            (
                crate::metrics::bad_records(pipeline, operator, reason.as_str()),
                crate::metrics::dead_letters(pipeline, reason.as_str()),
            )
        })
    }

    fn keep(&mut self, r: &Report<'_>) {
        self.counters(r.reason).1.increment(1);
        let now = record::now_ms();
        let origin = self.origin.clone();
        let (id, attempts) = match self.context.replay_of.as_ref() {
            Some((id, attempts)) => (id.clone(), attempts + 1),
            None => (DeadLetter::new_id(), 1),
        };
        let letter = DeadLetter {
            id,
            pipeline: self.pipeline.to_string(),
            node: self.operator.to_string(),
            failure_class: r.reason,
            message: r.detail.to_string(),
            payload: r.payload.to_vec(),
            payload_format: r.format,
            source: origin,
            schema_id: self.context.schema_id,
            event_time: r.event_time,
            first_failure: now,
            last_failure: now,
            attempts,
            status: Status::Pending,
            status_reason: None,
            original_payload: None,
        };
        match self.held.as_mut() {
            Some(held) => held.push(letter),
            None => self.release(vec![letter]),
        }
    }

    /// From now on, letters this handle keeps wait in it until
    /// [`BadRecords::take_held`] and [`BadRecords::release`]: for a source that
    /// completes a letter's origin after the report (the Kafka source reads a refused
    /// record's headers again). Counters, logs and the `fail` policy still act at the
    /// report.
    pub fn hold_letters(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// The letters kept and held since the last call (none unless holding).
    pub fn take_held(&mut self) -> Vec<DeadLetter> {
        self.held.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Sends letters taken with [`BadRecords::take_held`] on, as if kept now.
    pub fn release(&self, letters: Vec<DeadLetter>) {
        if letters.is_empty() {
            return;
        }
        let n = letters.len();
        self.pending
            .letters
            .lock()
            .expect("dlq lock")
            .extend(letters);
        self.pending.count.fetch_add(n, Ordering::Release);
    }

    /// Whether dead letters wait to be sent (cheap; checked on every emit).
    pub fn has_pending(&self) -> bool {
        self.pending.count.load(Ordering::Acquire) > 0
    }

    /// The dead letters reported since the last call.
    pub fn take_letters(&self) -> Vec<DeadLetter> {
        let mut letters = self.pending.letters.lock().expect("dlq lock");
        self.pending.count.store(0, Ordering::Release);
        std::mem::take(&mut *letters)
    }

    /// Under the `fail` policy, the first bad record's error, once reported.
    pub fn failure(&self) -> Option<DlqError> {
        self.pending.failure.get().cloned()
    }
}

/// Row `row` of `batch` as one JSON object (Arrow's JSON writer: timestamps as RFC
/// 3339 text, NULLs left out), the payload of a dead letter of a decoded row.
fn row_json(batch: &RecordBatch, row: usize) -> Vec<u8> {
    let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
    match w.write(&batch.slice(row, 1)).and_then(|_| w.finish()) {
        Ok(()) => {
            let mut raw = w.into_inner();
            while raw.last() == Some(&b'\n') {
                raw.pop();
            }
            raw
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_letters_wait_in_their_handle_until_released_and_counters_act_at_the_report() {
        let shared = BadRecords::collecting("op");
        let mut worker = shared.clone();
        worker.hold_letters();
        worker.origin_mut().offset = Some(7);
        worker.report(BadRecordReason::Malformed, "cut short", b"{");
        worker.origin_mut().offset = Some(9);
        worker.report(BadRecordReason::Malformed, "cut short", b"[");
        assert_eq!(shared.count(), 2, "counted at the report");
        assert!(!shared.has_pending(), "not sent while held");

        let mut held = worker.take_held();
        assert_eq!(held.len(), 2);
        assert!(worker.take_held().is_empty(), "taken once");
        held[0].source.headers = vec![("trace".into(), b"t".to_vec())];
        worker.release(held);
        assert!(shared.has_pending());
        let sent = shared.take_letters();
        let at: Vec<_> = sent.iter().map(|l| l.source.offset).collect();
        assert_eq!(at, [Some(7), Some(9)]);
        assert_eq!(sent[0].source.headers, [("trace".into(), b"t".to_vec())]);

        // A handle that does not hold sends its letters at once.
        let mut direct = shared.clone();
        direct.report(BadRecordReason::Malformed, "x", b"x");
        assert!(direct.take_held().is_empty());
        assert_eq!(shared.take_letters().len(), 1);
    }
}
