//! Late rows: counted (`tributary_late_rows_total`), logged at a bounded rate per
//! task, and sent to the node's late side output where the pipeline declares one.

use crate::engine::{Collector, TaskInfo};

/// Counts rows dropped as late and logs them at most every 10 seconds per task.
pub(crate) struct LateRows {
    counter: metrics::Counter,
    logged: Option<std::time::Instant>,
}

impl LateRows {
    pub(crate) fn new(task: &TaskInfo) -> Self {
        LateRows {
            counter: crate::metrics::late_rows(&task.pipeline, &task.node),
            logged: None,
        }
    }

    /// Accounts for the rows of `batch` that cannot be placed: `late` ones (row, event
    /// time; `why(t)`: what the row missed, for the log and its dead letter) and ones
    /// with a NULL event time (bad records, class `processing`). Under the
    /// `dead-letter` policy each late row becomes a dead letter (class `late`); under
    /// the others it is counted and dropped as late.
    pub(crate) fn report(
        &mut self,
        task: &TaskInfo,
        out: &mut Collector,
        watermark: i64,
        batch: &arrow::array::RecordBatch,
        late: &[(u32, i64)],
        why: &dyn Fn(i64) -> String,
        null_times: &[u32],
    ) {
        if !late.is_empty() {
            if out.bad_records().keeps_rows() {
                for &(row, t) in late {
                    let message = format!("late: {}; watermark {watermark} ms", why(t));
                    out.bad_records().report_row(
                        crate::dlq::BadRecordReason::Late,
                        &message,
                        batch,
                        row as usize,
                        Some(t),
                    );
                }
                self.counter.increment(late.len() as u64);
            } else {
                self.note(task, late.len() as u64, watermark, &why(late[0].1));
            }
        }
        for &row in null_times {
            out.bad_records().report_row(
                crate::dlq::BadRecordReason::Processing,
                "a NULL event time: the row has no place in event time",
                batch,
                row as usize,
                None,
            );
        }
    }

    pub(crate) fn note(&mut self, task: &TaskInfo, rows: u64, watermark: i64, what: &str) {
        self.counter.increment(rows);
        let now = std::time::Instant::now();
        if self
            .logged
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(10))
        {
            self.logged = Some(now);
            tracing::warn!(
                task = %task,
                rows,
                watermark,
                "late rows dropped: {what} (raise watermark_delay to wait longer)"
            );
        }
    }
}
