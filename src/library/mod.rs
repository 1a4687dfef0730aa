//! The operator library: Rust operators by name, what a pipeline file's `operators:`
//! section deploys.
//!
//! Owns the registry of named operators and the reference pipelines' own
//! ([`order_tracking`]: the order lifecycle state machine, and the rolling
//! preparation time it estimates with). A pipeline file deploys a Rust operator like
//! a SQL query: it names the function, the table it reads, the key and its options,
//! and the SQL reads the operator's output (and side outputs) as tables. A user adds
//! their own by building a binary on the library that calls [`register`] before
//! [`crate::cli::main`] (see `examples/custom_operator/`).
//!
//! Invariants:
//! - A name is registered once; registering a taken name is refused.
//! - A constructor sees the input's schema, the key columns and the options as
//!   written, and refuses what it cannot work with (an error the planner shows at
//!   the pipeline file's `operators:` entry).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use arrow::datatypes::SchemaRef;

use crate::engine::{EngineError, OperatorFactory, Result};
use crate::operators::KeyedProcessFunction;

pub mod offers;
pub mod order_tracking;

/// The operators every binary has.
const BUILT_IN: &[(&str, Constructor)] = &[
    ("order_tracking", order_tracking::order_tracking),
    ("rolling_prep_time", order_tracking::rolling_prep_time),
    ("offer_rules", offers::offer_rules),
    ("cart_nudge", offers::cart_nudge),
];

/// What a named operator is built from: the pipeline file's entry.
pub struct OperatorSpec<'a> {
    /// The entry's `name`: the operator's node and output table.
    pub name: &'a str,
    /// The schema of the table it reads.
    pub input: SchemaRef,
    /// The columns rows are routed by (`key:`); each key's state and timers are its own.
    pub key: &'a [String],
    /// `options:` as written (durations, numbers and words as text).
    pub options: &'a BTreeMap<String, String>,
    /// Most bytes of state one task may hold (`state.memory_limit`).
    pub memory_limit: Option<u64>,
}

impl OperatorSpec<'_> {
    /// Option `key`, or `default` when not given.
    pub fn option<'s>(&'s self, key: &str, default: &'s str) -> &'s str {
        self.options.get(key).map_or(default, String::as_str)
    }

    /// Refuses options other than `known` (with did-you-mean).
    pub fn only_options(&self, known: &[&str]) -> Result<()> {
        for k in self.options.keys() {
            if !known.contains(&k.as_str()) {
                return Err(
                    EngineError::Invalid(crate::error::with_did_you_mean(format!(
                        "operator {}: unknown option `{k}`, expected one of {}",
                        self.name,
                        known
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                    .into(),
                );
            }
        }
        Ok(())
    }

    /// A keyed process function over this spec's input and key (see
    /// [`crate::pipeline::PipelineBuilder::process_with_side_outputs`]).
    pub fn process<F: KeyedProcessFunction>(
        &self,
        output: SchemaRef,
        side_outputs: &[(&str, SchemaRef)],
        make: impl Fn() -> F + Send + Sync + 'static,
    ) -> Result<Arc<dyn OperatorFactory>> {
        let keys = self
            .key
            .iter()
            .map(|k| {
                self.input.index_of(k).map_err(|_| {
                    EngineError::Invalid(format!(
                        "operator {}: key column {k} is not in its input ({})",
                        self.name,
                        self.input
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .into()
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        if keys.is_empty() {
            return Err(EngineError::Invalid(format!(
                "operator {}: give the key its rows are routed by (key: [column, …])",
                self.name
            ))
            .into());
        }
        Ok(Arc::new(crate::operators::ProcessFactory {
            make: Arc::new(make),
            keys,
            output,
            name: self.name.to_string(),
            memory_limit: self.memory_limit,
            side_outputs: side_outputs
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect(),
        }))
    }
}

/// Builds a named operator's factory from its pipeline-file entry.
pub type Constructor = fn(&OperatorSpec<'_>) -> Result<Arc<dyn OperatorFactory>>;

fn registry() -> &'static RwLock<BTreeMap<String, Constructor>> {
    static REGISTRY: std::sync::OnceLock<RwLock<BTreeMap<String, Constructor>>> =
        std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| {
        RwLock::new(
            BUILT_IN
                .iter()
                .map(|(name, c)| (name.to_string(), *c))
                .collect(),
        )
    })
}

/// Makes `constructor` available to pipeline files as `function: name`.
pub fn register(name: &str, constructor: Constructor) -> Result<()> {
    let mut r = registry().write().expect("operator registry");
    if r.contains_key(name) {
        return Err(EngineError::Invalid(format!(
            "an operator named {name} is already registered"
        ))
        .into());
    }
    r.insert(name.to_string(), constructor);
    Ok(())
}

/// The constructor registered as `name`.
pub fn lookup(name: &str) -> Option<Constructor> {
    registry()
        .read()
        .expect("operator registry")
        .get(name)
        .copied()
}

/// Every registered name, sorted.
pub fn names() -> Vec<String> {
    registry()
        .read()
        .expect("operator registry")
        .keys()
        .cloned()
        .collect()
}
