//! Operator state: where it lives, how big it may grow, and the process-function API.
//!
//! Owns the [`StateBackend`] trait and its in-memory implementation, and
//! [`KeyedProcessFunction`] (keyed state and timers for Rust operators, in
//! [`process`]).
//!
//! Invariants:
//! - Every stateful operator task opens a [`StateHandle`] from the pipeline's backend
//!   and reports its state size to it after each change; the handle publishes
//!   `tributary_state_bytes{operator}` and fails the task, naming it, when the size
//!   passes `state.memory_limit` — loudly, rather than swapping the machine to death.
//! - The in-memory backend keeps state in the operator's own structures (DataFusion
//!   accumulators, Arrow batches, typed Rust values); operators snapshot them as Arrow
//!   columns (`snapshot.rs`), which the checkpoint coordinator stores, and restore
//!   them split by key group when the parallelism changed.

mod process;
pub mod snapshot;

pub(crate) use process::KeyEncoder;
pub use process::{KeyedProcessFunction, ProcessContext, ProcessFactory, Row};

use std::sync::Arc;

use crate::engine::{EngineError, Result, TaskInfo};

/// Where operator state lives and how its size is accounted.
pub trait StateBackend: Send + Sync + std::fmt::Debug {
    /// Short name for logs and `explain` (`memory`).
    fn name(&self) -> &'static str;

    /// Opens the accounting of one operator task's state. `kind` names the state in
    /// messages (`window`, `join`, …); `limit` is the task's memory limit in bytes.
    fn open(&self, task: &TaskInfo, kind: &'static str, limit: Option<u64>) -> StateHandle;
}

/// The default backend: state stays in each operator's memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryStateBackend;

impl StateBackend for MemoryStateBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn open(&self, task: &TaskInfo, kind: &'static str, limit: Option<u64>) -> StateHandle {
        StateHandle {
            kind,
            limit,
            gauge: crate::metrics::state_bytes(&task.pipeline, &task.node),
        }
    }
}

/// The default backend as a shared trait object.
pub fn memory_backend() -> Arc<dyn StateBackend> {
    Arc::new(MemoryStateBackend)
}

/// One operator task's state accounting.
pub struct StateHandle {
    kind: &'static str,
    limit: Option<u64>,
    gauge: metrics::Gauge,
}

impl StateHandle {
    /// Records the state's size; fails when it is over the limit. `what` describes the
    /// state (`in 3 open window(s)`), `advice` says what to change.
    pub fn report(&self, bytes: usize, what: impl FnOnce() -> String, advice: &str) -> Result<()> {
        self.gauge.set(bytes as f64);
        match self.limit {
            Some(limit) if bytes as u64 > limit => Err(EngineError::User(format!(
                "{} state holds {bytes} bytes {}, over the limit of {limit} (state.memory_limit): {advice}",
                self.kind,
                what()
            ))
            .into()),
            _ => Ok(()),
        }
    }
}
