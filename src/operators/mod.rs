//! Every operator a pipeline runs between its sources and its sinks, one per file.
//!
//! Owns: the SQL stage (a DataFusion physical plan evaluated per batch, `stage.rs`),
//! Rust map/filter/flat-map and the arrival-time column (`map.rs`), and the stateful
//! operators — windowed aggregates (`window.rs`), sessions (`session.rs`), interval
//! joins (`join.rs`), lookup joins' table side (`lookup.rs`), `ROW_NUMBER()` dedup and
//! Top-N (`rank.rs`), updating aggregates and changelogs (`updating.rs`), keyed process
//! functions with timers (`process.rs`). The planner (`crate::planner`) builds them;
//! the engine runs them through `engine::{Operator, OperatorFactory}`; their keyed
//! state goes through `crate::state`.
//!
//! Invariants:
//! - No operator knows SQL: each takes DataFusion physical expressions and
//!   accumulators the planner hands it.
//! - An operator's results precede the watermark that produced them (the engine
//!   forwards a watermark after `handle_watermark` returns).

pub(crate) mod accumulate;
pub(crate) mod join;
pub(crate) mod late;
pub(crate) mod lookup;
pub mod map;
pub mod process;
pub mod rank;
pub(crate) mod session;
pub(crate) mod stage;
pub(crate) mod support;
pub mod updating;
pub(crate) mod updating_groups;
pub mod window;
pub mod window_fn;

pub use map::{ArrivalTimeFactory, FilterOperator, FlatMapOperator, MapOperator};
pub use process::{KeyedProcessFunction, ProcessContext, ProcessFactory, Row};
pub use stage::SqlOperatorFactory;
