//! Operator state: where it lives, how big it may grow, its byte form in checkpoints.
//!
//! Owns the in-memory [`StateBackend`] (the trait is shared vocabulary, in
//! [`crate::types`]), the keyed-state table every keyed operator keeps its state
//! through ([`keyed`]), and snapshots' byte form ([`snapshot`]).
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

pub mod keyed;
pub mod snapshot;

pub use crate::types::{StateBackend, StateHandle};

use std::sync::Arc;

use crate::types::TaskInfo;

/// The default backend: state stays in each operator's memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryStateBackend;

impl StateBackend for MemoryStateBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn open(&self, task: &TaskInfo, kind: &'static str, limit: Option<u64>) -> StateHandle {
        StateHandle::new(
            kind,
            limit,
            crate::metrics::state_bytes(&task.pipeline, &task.node),
        )
    }
}

/// The default backend as a shared trait object.
pub fn memory_backend() -> Arc<dyn StateBackend> {
    Arc::new(MemoryStateBackend)
}
