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

    /// Accounts for the rows of a batch that cannot be placed: `late` ones (`why`:
    /// the reason, for the log) and ones with a NULL event time (bad records).
    pub(crate) fn report(
        &mut self,
        task: &TaskInfo,
        out: &mut Collector,
        watermark: i64,
        late: u64,
        why: &str,
        null_times: u64,
    ) {
        if late > 0 {
            self.note(task, late, watermark, why);
        }
        if null_times > 0 {
            out.bad_records().report(
                crate::dlq::BadRecordReason::Processing,
                &format!(
                    "{null_times} row(s) with a NULL event time: they have no place in event time"
                ),
                &[],
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
