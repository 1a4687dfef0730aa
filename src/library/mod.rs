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

/// The time zone of the timestamps the library's operators emit (the generator's).
pub(crate) const TZ: &str = "+00:00";

/// The type of the timestamps the library's operators emit.
pub(crate) fn ts_type() -> arrow::datatypes::DataType {
    arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some(TZ.into()))
}

/// A timestamp the library's operators emit, from ms since the epoch.
pub(crate) fn ts(ms: Option<i64>) -> datafusion::common::ScalarValue {
    datafusion::common::ScalarValue::TimestampMillisecond(ms, Some(TZ.into()))
}

/// The unit of an input's `event_time` column, to read its values as ms.
#[derive(Debug, Clone, Copy)]
pub struct EventTimeUnit {
    /// Input units per ms; `-1000` for seconds (1,000 ms each).
    per_ms: i64,
}

impl EventTimeUnit {
    /// `v`, in the input's unit, as ms since the epoch.
    pub fn ms(self, v: i64) -> i64 {
        if self.per_ms < 0 {
            v * -self.per_ms
        } else {
            v.div_euclid(self.per_ms)
        }
    }
}

impl OperatorSpec<'_> {
    /// The unit of the input's `event_time`, refusing an input without the `required`
    /// columns (`what` says what the operator reads; `event_time` must be required)
    /// or whose `event_time` is not a timestamp.
    pub fn event_time_unit(&self, required: &[&str], what: &str) -> Result<EventTimeUnit> {
        use arrow::datatypes::{DataType, TimeUnit};
        for c in required {
            if self.input.field_with_name(c).is_err() {
                return Err(EngineError::Invalid(format!(
                    "operator {}: its input needs column {c} ({what})",
                    self.name
                ))
                .into());
            }
        }
        let per_ms = match self
            .input
            .field_with_name("event_time")
            .map(|f| f.data_type())
        {
            Ok(DataType::Timestamp(TimeUnit::Second, _)) => -1000,
            Ok(DataType::Timestamp(TimeUnit::Millisecond, _)) | Ok(DataType::Int64) => 1,
            Ok(DataType::Timestamp(TimeUnit::Microsecond, _)) => 1000,
            Ok(DataType::Timestamp(TimeUnit::Nanosecond, _)) => 1_000_000,
            Ok(other) => {
                return Err(EngineError::Invalid(format!(
                    "operator {}: event_time is {other}, expected a timestamp",
                    self.name
                ))
                .into());
            }
            Err(_) => {
                return Err(EngineError::Invalid(format!(
                    "operator {}: its input needs column event_time ({what})",
                    self.name
                ))
                .into());
            }
        };
        Ok(EventTimeUnit { per_ms })
    }

    /// Option `key` (or `default`) as a duration in ms; an error names the option.
    pub fn duration_ms(&self, key: &str, default: &str) -> Result<i64> {
        let text = self.option(key, default);
        crate::connectors::parse_duration(text)
            .map(|d| d.as_millis() as i64)
            .map_err(|e| {
                EngineError::Invalid(format!("operator {}: {key} = '{text}': {e}", self.name))
                    .into()
            })
    }
}

/// Holding a key's events until the watermark passes them, then applying them in
/// event-time order, as the library's operators do: results do not depend on arrival
/// order within the watermark's delay.
pub(crate) mod in_order {
    use crate::operators::{ProcessContext, Row};

    /// Whether an event at `at` (ms) can still be applied in order. A late one (at or
    /// behind the watermark) is dead-lettered, the message saying that `later` (the
    /// key's later events) were applied already; otherwise a timer is set at `at`,
    /// whose firing makes the event due.
    pub(crate) fn admit(row: &Row<'_>, at: i64, later: &str, ctx: &mut ProcessContext<'_>) -> bool {
        if at <= ctx.watermark() {
            ctx.dead_letter(
                row,
                format!(
                    "late: event time {at} ms is behind the watermark ({} ms); {later} were applied already",
                    ctx.watermark()
                ),
            );
            return false;
        }
        ctx.register_timer(at);
        true
    }

    /// The events of `pending` at or before `time` (by `at`), sorted by `order`; the
    /// others stay pending.
    pub(crate) fn due<T>(
        pending: &mut Vec<T>,
        time: i64,
        at: impl Fn(&T) -> i64,
        order: impl FnMut(&T, &T) -> std::cmp::Ordering,
    ) -> Vec<T> {
        let (mut now, later): (Vec<T>, Vec<T>) = std::mem::take(pending)
            .into_iter()
            .partition(|e| at(e) <= time);
        *pending = later;
        now.sort_by(order);
        now
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
