//! Keyed state and timers for Rust operators: the process-function API.
//!
//! Owns [`KeyedProcessFunction`] (Flink's `KeyedProcessFunction`, in Rust): the logic
//! SQL cannot express — order-lifecycle state machines, alerts when something did not
//! happen in time, frequency caps. The runtime routes rows by key, keeps one typed
//! state value per key (any Rust type: a value, a `Vec` for list state, a map for map
//! state, or a struct of those), fires event-time timers as the watermark passes them
//! and processing-time timers as the wall clock does.
//!
//! Invariants:
//! - Rows of one key reach one task, in the order that task receives them; the
//!   function sees its key's state and nothing else.
//! - A timer fires once, when the watermark reaches its time, in time order (then key
//!   order); timers of one key at the same time fire once. Rows emitted by `on_timer`
//!   precede the watermark that fired them downstream.
//! - At the end of a bounded input every pending event-time timer fires; when the
//!   pipeline is stopped, pending timers do not fire (their time has not come).
//! - Processing-time timers fire on the operator's tick (every 50 ms), once the wall
//!   clock has reached them; they do not fire at the end of input.
//! - State lives in memory (the pipeline's [`crate::state::StateBackend`] accounts its
//!   size, estimated shallowly per key); checkpoints snapshot it through the keyed-state
//!   table ([`crate::state::keyed`]), restored per key group.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::row::OwnedRow;
use async_trait::async_trait;
use datafusion::common::ScalarValue;

use crate::dlq::BadRecordReason;
use crate::engine::{Collector, EngineError, Operator, OperatorFactory, Result, TaskInfo};
use crate::state::keyed::{KeyCodec, KeyedTable, NoFields};

/// One input row, read column by column.
pub struct Row<'a> {
    batch: &'a RecordBatch,
    index: usize,
}

impl Row<'_> {
    /// The value of column `name` (an error names the missing column).
    pub fn get(&self, name: &str) -> Result<ScalarValue> {
        let i = self.batch.schema().index_of(name).map_err(|_| {
            EngineError::Invalid(format!("process function: no column {name} in the input"))
        })?;
        ScalarValue::try_from_array(self.batch.column(i), self.index)
            .map_err(|e| EngineError::datafusion("reading a row", e))
    }

    /// Whether the input has column `name`.
    pub fn has(&self, name: &str) -> bool {
        self.batch.schema().index_of(name).is_ok()
    }

    /// A string column's value, `None` when NULL.
    pub fn str(&self, name: &str) -> Result<Option<String>> {
        Ok(match self.get(name)? {
            ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => v,
            other => Some(other.to_string()),
        })
    }

    /// An integer or timestamp column's value as i64, `None` when NULL.
    pub fn i64(&self, name: &str) -> Result<Option<i64>> {
        let v = self.get(name)?;
        if v.is_null() {
            return Ok(None);
        }
        match v.cast_to(&arrow::datatypes::DataType::Int64) {
            Ok(ScalarValue::Int64(x)) => Ok(x),
            _ => Err(EngineError::Invalid(format!("column {name}: {v} is not an integer")).into()),
        }
    }
}

/// What a process function can do besides reading its row and state.
pub struct ProcessContext<'a> {
    key: &'a [ScalarValue],
    watermark: i64,
    /// Rows emitted by the call, with their output (0 main, `i` side output `i`).
    emitted: &'a mut Vec<(usize, Vec<ScalarValue>)>,
    /// Input rows the call refused (`dead_letter`): (row of the batch, reason).
    rejected: Vec<(usize, String)>,
    timers: &'a mut Vec<Timer>,
    clear: bool,
    side_outputs: &'a [(String, SchemaRef)],
}

/// A timer a call asked for: event time (fires with the watermark) or processing time
/// (fires with the wall clock), in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Event(i64),
    Processing(i64),
}

impl Timer {
    /// (domain index: 0 event time, 1 processing time; time).
    fn split(self) -> (usize, i64) {
        match self {
            Timer::Event(t) => (0, t),
            Timer::Processing(t) => (1, t),
        }
    }
}

/// Where [`ProcessContext::dead_letter_kept`] puts a refused kept row among the
/// emitted ones: (row as JSON, event time, reason), reported by `emit`.
const REFUSED_PORT: usize = usize::MAX;

/// The wall clock in ms since the epoch.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl<'a> ProcessContext<'a> {
    fn new(
        key: &'a [ScalarValue],
        watermark: i64,
        emitted: &'a mut Vec<(usize, Vec<ScalarValue>)>,
        timers: &'a mut Vec<Timer>,
        side_outputs: &'a [(String, SchemaRef)],
    ) -> Self {
        ProcessContext {
            key,
            watermark,
            emitted,
            rejected: Vec::new(),
            timers,
            clear: false,
            side_outputs,
        }
    }

    /// The key of the current row or timer (the `key_by` columns, in order).
    pub fn key(&self) -> &[ScalarValue] {
        self.key
    }

    /// The current watermark (ms since the epoch); `i64::MIN` before the first one.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Emits one output row: one value per column of the output schema, in order.
    pub fn emit(&mut self, row: Vec<ScalarValue>) {
        self.emitted.push((0, row));
    }

    /// Refuses `row`, the row being processed: it goes to the dead-letter queue (class
    /// `rejected`, with `reason`, e.g. an impossible order transition) under the
    /// pipeline's error policy, and the rest of the batch goes on. The function should
    /// leave its state as if the row had not come.
    pub fn dead_letter(&mut self, row: &Row<'_>, reason: impl Into<String>) {
        self.rejected.push((row.index, reason.into()));
    }

    /// Refuses a row the function kept in its state (a row buffered until the
    /// watermark, refused when its turn comes, e.g. in `on_timer`): `row` is the row as
    /// the function kept it, as JSON; it goes to the dead-letter queue (class
    /// `rejected`, with `reason` and its event time) under the pipeline's error policy.
    pub fn dead_letter_kept(
        &mut self,
        row: &serde_json::Value,
        event_time: Option<i64>,
        reason: impl Into<String>,
    ) {
        self.emitted.push((
            REFUSED_PORT,
            vec![
                ScalarValue::Utf8(Some(row.to_string())),
                ScalarValue::Int64(event_time),
                ScalarValue::Utf8(Some(reason.into())),
            ],
        ));
    }

    /// Emits one row to the side output `name` (declared with
    /// `PipelineBuilder::process_with_side_outputs`): one value per column of its schema.
    pub fn emit_to(&mut self, name: &str, row: Vec<ScalarValue>) -> Result<()> {
        let port = self
            .side_outputs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| {
                EngineError::Invalid(format!(
                    "process function: no side output {name}; declared: {}",
                    self.side_outputs
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        self.emitted.push((port + 1, row));
        Ok(())
    }

    /// Asks for `on_timer` for this key when the watermark reaches `time` (ms since the
    /// epoch). A time the watermark has already passed fires at the next watermark.
    pub fn register_timer(&mut self, time: i64) {
        self.timers.push(Timer::Event(time));
    }

    /// Asks for `on_processing_timer` for this key when the wall clock reaches `time`
    /// (ms since the epoch; see [`processing_time`](Self::processing_time)).
    pub fn register_processing_timer(&mut self, time: i64) {
        self.timers.push(Timer::Processing(time));
    }

    /// The wall clock, in ms since the epoch.
    pub fn processing_time(&self) -> i64 {
        now_ms()
    }

    /// Forgets this key's state (and its pending timers) after this call.
    pub fn clear_state(&mut self) {
        self.clear = true;
    }
}

/// A Rust operator with typed state per key and event-time timers.
pub trait KeyedProcessFunction: Send + 'static {
    /// The state kept per key; `Default` is the state of a key never seen. Checkpoints
    /// store it with serde (as JSON), so a map's keys must serialise as strings or
    /// numbers.
    type State: Default + Send + serde::Serialize + serde::de::DeserializeOwned + 'static;

    /// Called for each row, with its key's state.
    fn process(
        &mut self,
        row: &Row<'_>,
        state: &mut Self::State,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<()>;

    /// Called when an event-time timer registered for this key fires.
    fn on_timer(
        &mut self,
        _time: i64,
        _state: &mut Self::State,
        _ctx: &mut ProcessContext<'_>,
    ) -> Result<()> {
        Ok(())
    }

    /// Called when a processing-time timer registered for this key fires.
    fn on_processing_timer(
        &mut self,
        _time: i64,
        _state: &mut Self::State,
        _ctx: &mut ProcessContext<'_>,
    ) -> Result<()> {
        Ok(())
    }
}

/// Builds one [`ProcessOperator`] per partition from a function factory.
pub struct ProcessFactory<F: KeyedProcessFunction> {
    pub(crate) make: Arc<dyn Fn() -> F + Send + Sync>,
    pub(crate) keys: Vec<usize>,
    pub(crate) output: SchemaRef,
    pub(crate) name: String,
    pub(crate) memory_limit: Option<u64>,
    /// Side outputs: (name, schema).
    pub(crate) side_outputs: Vec<(String, SchemaRef)>,
}

impl<F: KeyedProcessFunction> OperatorFactory for ProcessFactory<F> {
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn side_outputs(&self) -> Vec<(String, SchemaRef)> {
        self.side_outputs.clone()
    }

    fn state_kind(&self) -> crate::engine::StateKind {
        crate::engine::StateKind::Checkpointed
    }

    fn describe(&self) -> String {
        format!(
            "process function {} keyed by columns {:?}",
            self.name, self.keys
        )
    }

    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(Box::new(ProcessOperator {
            table: KeyedTable::open(task, "process function", self.memory_limit),
            function: (self.make)(),
            keys: self.keys.clone(),
            output: self.output.clone(),
            side_outputs: self.side_outputs.clone(),
            codec: KeyCodec::default(),
            states: HashMap::new(),
            timers: [BTreeSet::new(), BTreeSet::new()],
        }))
    }
}

struct KeyState<S> {
    key: Vec<ScalarValue>,
    state: S,
    timers: BTreeSet<Timer>,
}

struct ProcessOperator<F: KeyedProcessFunction> {
    /// The task's state bookkeeping: size, watermark, snapshots' form.
    table: KeyedTable,
    function: F,
    keys: Vec<usize>,
    output: SchemaRef,
    side_outputs: Vec<(String, SchemaRef)>,
    codec: KeyCodec,
    states: HashMap<OwnedRow, KeyState<F::State>>,
    /// Pending timers in firing order: event time [0] and processing time [1].
    timers: [BTreeSet<(i64, OwnedRow)>; 2],
}

impl<F: KeyedProcessFunction> ProcessOperator<F> {
    /// Applies what a call asked for (timers, clearing) and returns its output rows.
    fn settle(&mut self, key: &OwnedRow, timers: Vec<Timer>, clear: bool) {
        if clear {
            if let Some(s) = self.states.remove(key) {
                for t in s.timers {
                    let (domain, time) = t.split();
                    self.timers[domain].remove(&(time, key.clone()));
                }
            }
            return;
        }
        if let Some(s) = self.states.get_mut(key) {
            for t in timers {
                if s.timers.insert(t) {
                    let (domain, time) = t.split();
                    self.timers[domain].insert((time, key.clone()));
                }
            }
        }
    }

    /// Fires every timer of `until`'s domain at or before its time, in time order
    /// (timers registered while firing, if due, fire too); returns the emitted rows.
    fn fire(&mut self, until: Timer) -> Result<Vec<(usize, Vec<ScalarValue>)>> {
        let mut emitted = Vec::new();
        let (domain, until) = until.split();
        loop {
            let due = self.timers[domain]
                .first()
                .filter(|(t, _)| *t <= until)
                .cloned();
            let Some((time, key)) = due else { break };
            self.timers[domain].remove(&(time, key.clone()));
            let timer = if domain == 0 {
                Timer::Event(time)
            } else {
                Timer::Processing(time)
            };
            let Some(entry) = self.states.get_mut(&key) else {
                continue;
            };
            entry.timers.remove(&timer);
            let mut timers = Vec::new();
            let mut ctx = ProcessContext::new(
                &entry.key,
                self.table.watermark(),
                &mut emitted,
                &mut timers,
                &self.side_outputs,
            );
            match timer {
                Timer::Event(t) => self.function.on_timer(t, &mut entry.state, &mut ctx)?,
                Timer::Processing(t) => {
                    self.function
                        .on_processing_timer(t, &mut entry.state, &mut ctx)?
                }
            }
            let clear = ctx.clear;
            self.settle(&key, timers, clear);
        }
        Ok(emitted)
    }

    fn pending_timers(&self) -> usize {
        self.timers.iter().map(BTreeSet::len).sum()
    }

    /// Emits the rows of a call (if any), each to its output, and reports the state's
    /// size.
    async fn emit(
        &mut self,
        rows: Vec<(usize, Vec<ScalarValue>)>,
        out: &mut Collector,
    ) -> Result<()> {
        let mut per_port: Vec<Vec<Vec<ScalarValue>>> =
            vec![Vec::new(); self.side_outputs.len() + 1];
        for (port, row) in rows {
            if port == REFUSED_PORT {
                let text = |v: &ScalarValue| match v {
                    ScalarValue::Utf8(Some(s)) => s.clone(),
                    _ => String::new(),
                };
                let event_time = match row[1] {
                    ScalarValue::Int64(t) => t,
                    _ => None,
                };
                out.bad_records().report_with(crate::dlq::Report {
                    reason: BadRecordReason::Rejected,
                    detail: &text(&row[2]),
                    payload: text(&row[0]).as_bytes(),
                    format: crate::dlq::PayloadFormat::Row,
                    event_time,
                });
                continue;
            }
            per_port[port].push(row);
        }
        let mut batches = Vec::new();
        for (port, of_port) in per_port.into_iter().enumerate() {
            let schema = match port {
                0 => self.output.clone(),
                p => self.side_outputs[p - 1].1.clone(),
            };
            if let Some(b) = self.build(of_port, &schema)? {
                batches.push((port, b));
            }
        }
        let per_key = std::mem::size_of::<KeyState<F::State>>() + 64;
        self.table.report(
            self.states.len() * per_key + self.pending_timers() * 96,
            || {
                format!(
                    "({} keys, {} pending timers)",
                    self.states.len(),
                    self.pending_timers()
                )
            },
            "clear the state of finished keys (ctx.clear_state()), raise the limit or run at a \
             higher parallelism",
        )?;
        for (port, b) in batches {
            out.emit_to(port, b).await?;
        }
        Ok(())
    }

    /// The batch of the rows a call emitted to one output (`None` if none); built
    /// before any `await`, so the operator's state is never held across one.
    fn build(
        &self,
        rows: Vec<Vec<ScalarValue>>,
        schema: &SchemaRef,
    ) -> Result<Option<RecordBatch>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let width = schema.fields().len();
        if let Some(bad) = rows.iter().find(|r| r.len() != width) {
            return Err(EngineError::Invalid(format!(
                "{}: a process function emitted {} values for an output of {width} columns",
                self.table.task(),
                bad.len()
            ))
            .into());
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(width);
        for (c, field) in schema.fields().iter().enumerate() {
            let values = rows.iter().map(|r| r[c].clone());
            let array = ScalarValue::iter_to_array(values).map_err(|e| {
                EngineError::datafusion(format!("output column {}", field.name()), e)
            })?;
            let array = if array.data_type() == field.data_type() {
                array
            } else {
                arrow::compute::cast(&array, field.data_type())
                    .map_err(|e| EngineError::arrow(format!("output column {}", field.name()), e))?
            };
            columns.push(array);
        }
        RecordBatch::try_new(schema.clone(), columns)
            .map(Some)
            .map_err(|e| EngineError::arrow("building process function output", e))
    }
}

#[async_trait]
impl<F: KeyedProcessFunction> Operator for ProcessOperator<F> {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let key_columns: Vec<ArrayRef> =
            self.keys.iter().map(|&i| batch.column(i).clone()).collect();
        let rows = self.codec.encode(&key_columns)?;
        let mut emitted = Vec::new();
        for i in 0..batch.num_rows() {
            let key = rows.row(i).owned();
            let entry = match self.states.get_mut(&key) {
                Some(e) => e,
                None => {
                    let values = key_columns
                        .iter()
                        .map(|c| ScalarValue::try_from_array(c, i))
                        .collect::<datafusion::error::Result<Vec<_>>>()
                        .map_err(|e| EngineError::datafusion("reading a key", e))?;
                    self.states.entry(key.clone()).or_insert(KeyState {
                        key: values,
                        state: F::State::default(),
                        timers: BTreeSet::new(),
                    })
                }
            };
            let mut timers = Vec::new();
            let mut ctx = ProcessContext::new(
                &entry.key,
                self.table.watermark(),
                &mut emitted,
                &mut timers,
                &self.side_outputs,
            );
            self.function.process(
                &Row {
                    batch: &batch,
                    index: i,
                },
                &mut entry.state,
                &mut ctx,
            )?;
            for (row, reason) in std::mem::take(&mut ctx.rejected) {
                out.bad_records()
                    .report_row(BadRecordReason::Rejected, &reason, &batch, row, None);
            }
            let clear = ctx.clear;
            self.settle(&key, timers, clear);
        }
        self.emit(emitted, out).await
    }

    async fn handle_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        let watermark = self.table.advance(watermark);
        let rows = self.fire(Timer::Event(watermark))?;
        self.emit(rows, out).await
    }

    fn tick_interval(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(50))
    }

    async fn handle_tick(&mut self, out: &mut Collector) -> Result<()> {
        let rows = self.fire(Timer::Processing(now_ms()))?;
        self.emit(rows, out).await
    }

    async fn on_end(&mut self, _out: &mut Collector) -> Result<()> {
        self.table.stopped(self.pending_timers(), "timer");
        Ok(())
    }

    /// Every key's columns, its state (JSON) and its pending event-time and
    /// processing-time timers, with the watermark.
    fn snapshot(&mut self) -> Result<Option<crate::state::snapshot::StateBlob>> {
        use arrow::array::{BinaryBuilder, Int64Builder, ListBuilder};
        let n = self.states.len();
        let mut batches = Vec::new();
        if n > 0 {
            let mut states = BinaryBuilder::new();
            let mut timers = [
                ListBuilder::new(Int64Builder::new()),
                ListBuilder::new(Int64Builder::new()),
            ];
            let mut keys: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(n); self.keys.len()];
            for entry in self.states.values() {
                for (column, v) in keys.iter_mut().zip(&entry.key) {
                    column.push(v.clone());
                }
                let bytes = serde_json::to_vec(&entry.state).map_err(|e| {
                    EngineError::State(format!(
                        "{}: checkpointing a process function's state: {e}",
                        self.table.task()
                    ))
                })?;
                states.append_value(bytes);
                for t in &entry.timers {
                    let (domain, time) = t.split();
                    timers[domain].values().append_value(time);
                }
                for list in timers.iter_mut() {
                    list.append(true);
                }
            }
            let mut columns = keys
                .into_iter()
                .map(|values| {
                    ScalarValue::iter_to_array(values)
                        .map_err(|e| EngineError::datafusion("checkpointing keys", e))
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            columns.push(Arc::new(states.finish()));
            for list in timers.iter_mut() {
                columns.push(Arc::new(list.finish()));
            }
            batches.push(columns);
        }
        self.table
            .snapshot(self.keys.len(), NoFields::default(), batches)
            .map(Some)
    }

    /// Restores the keys this task owns now, with their timers; the watermark is the
    /// lowest of the restored states'.
    fn restore(&mut self, states: &[Vec<u8>]) -> Result<()> {
        use arrow::array::{Array, AsArray};
        for state in states {
            let (_, batches) = self.table.restore::<NoFields>(state)?;
            for restored in batches {
                let (keys, rest) = (&restored.keys, &restored.values);
                let corrupt =
                    || EngineError::State("restoring a process function: bad state columns".into());
                let values = rest
                    .first()
                    .and_then(|c| c.as_binary_opt::<i32>())
                    .ok_or_else(corrupt)?;
                let timers = [
                    rest.get(1)
                        .and_then(|c| c.as_list_opt::<i32>())
                        .ok_or_else(corrupt)?,
                    rest.get(2)
                        .and_then(|c| c.as_list_opt::<i32>())
                        .ok_or_else(corrupt)?,
                ];
                let rows = self.codec.encode(keys)?;
                for i in 0..values.len() {
                    let key = rows.row(i).owned();
                    let state: F::State = serde_json::from_slice(values.value(i)).map_err(|e| {
                        EngineError::State(format!(
                            "{}: restoring a process function's state (did its type change?): {e}",
                            self.table.task()
                        ))
                    })?;
                    let key_values = keys
                        .iter()
                        .map(|c| ScalarValue::try_from_array(c, i))
                        .collect::<datafusion::error::Result<Vec<_>>>()
                        .map_err(|e| EngineError::datafusion("restoring a key", e))?;
                    let mut entry = KeyState {
                        key: key_values,
                        state,
                        timers: BTreeSet::new(),
                    };
                    for (domain, list) in timers.iter().enumerate() {
                        let times = list.value(i);
                        let times = times
                            .as_primitive_opt::<arrow::datatypes::Int64Type>()
                            .ok_or_else(corrupt)?;
                        for time in times.values().iter().copied() {
                            entry.timers.insert(match domain {
                                0 => Timer::Event(time),
                                _ => Timer::Processing(time),
                            });
                            self.timers[domain].insert((time, key.clone()));
                        }
                    }
                    self.states.insert(key, entry);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BooleanArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::connectors::memory::MemorySource;
    use crate::pipeline::PipelineBuilder;

    /// Sums values per key; 100 ms after a key's first row, emits the sum and forgets
    /// the key.
    #[derive(Default)]
    struct SumThenReport;

    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct Sum {
        total: i64,
        armed: bool,
    }

    impl KeyedProcessFunction for SumThenReport {
        type State = Sum;

        fn process(
            &mut self,
            row: &Row<'_>,
            state: &mut Sum,
            ctx: &mut ProcessContext<'_>,
        ) -> Result<()> {
            state.total += row.i64("v")?.unwrap_or(0);
            if !state.armed {
                state.armed = true;
                ctx.register_timer(row.i64("ts")?.expect("ts") + 100);
            }
            Ok(())
        }

        fn on_timer(
            &mut self,
            time: i64,
            state: &mut Sum,
            ctx: &mut ProcessContext<'_>,
        ) -> Result<()> {
            let key = ctx.key()[0].clone();
            ctx.emit(vec![
                key,
                ScalarValue::Int64(Some(time)),
                ScalarValue::Int64(Some(state.total)),
            ]);
            ctx.clear_state();
            Ok(())
        }
    }

    fn input(rows: &[(i64, i64, i64)]) -> RecordBatch {
        crate::testing::kvt_batch(rows)
    }

    /// Timers fire in event-time order across keys, each once, with the state of their
    /// key; a cleared key starts again from the default state; pending timers fire at
    /// the end of a bounded input.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timers_fire_in_event_time_order_with_their_keys_state() {
        let rows = [
            (1, 10, 0),
            (2, 5, 20),
            (1, 1, 50), // same key, timer already armed at 100
            (3, 7, 90),
            (2, 2, 110), // key 2's timer (120) not yet fired
            (1, 4, 300), // key 1 was cleared at 100: a new sum, timer at 400; key 3 fires at 190
            (3, 1, 320), // key 3 starts again: timer at 420, fired by the end of input
        ];
        let batches: Vec<RecordBatch> = rows.chunks(1).map(input).collect();
        let source = MemorySource::new(input(&[]).schema(), vec![batches]).unwrap();
        let mut p = PipelineBuilder::new("timers");
        let src = p.source("ev", Arc::new(source));
        p.event_time(&src, "ts", std::time::Duration::ZERO).unwrap();
        let output = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("fired_at", DataType::Int64, false),
            Field::new("total", DataType::Int64, false),
        ]));
        let out = p
            .process(src, "sum", &["k"], output, || SumThenReport)
            .unwrap();
        let results = p.collect(out, "results").unwrap();
        p.run_to_completion().await.unwrap();
        let fired: Vec<(i64, i64, i64)> = results
            .batches()
            .iter()
            .flat_map(|b| {
                let c = |i: usize| {
                    b.column(i)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .clone()
                };
                let (k, t, s) = (c(0), c(1), c(2));
                (0..b.num_rows()).map(move |i| (k.value(i), t.value(i), s.value(i)))
            })
            .collect();
        assert_eq!(
            fired,
            vec![
                (1, 100, 11),
                (2, 120, 7),
                (3, 190, 7),
                (1, 400, 4),
                (3, 420, 1)
            ],
            "(key, time, total) in firing order"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 40, ..Default::default() })]

        /// Snapshots taken anywhere leave a process function's output unchanged, and
        /// operators restored from them (state, pending timers, watermark), at another
        /// parallelism too, go on as the original would: the same rows as a run
        /// without checkpoints.
        #[test]
        fn snapshots_and_restores_anywhere_leave_the_output_unchanged(
            raw in proptest::collection::vec((0i64..4, -9i64..9, 0i64..60), 1..80),
            cuts in proptest::collection::vec(0u8..4, 0..80),
        ) {
            let mut clock = 0;
            let mut steps = Vec::new();
            for (k, v, step) in raw {
                clock += step;
                steps.push((0, input(&[(k, v, clock)]), Some(clock)));
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let run = |cuts: Vec<u8>| {
                let steps = steps.clone();
                rt.block_on(async move {
                    let mut p = PipelineBuilder::new("drive");
                    let src = p.source("ev", Arc::new(MemorySource::new(input(&[]).schema(), vec![]).unwrap()));
                    p.event_time(&src, "ts", std::time::Duration::ZERO).unwrap();
                    let output = Arc::new(Schema::new(vec![
                        Field::new("k", DataType::Int64, false),
                        Field::new("fired_at", DataType::Int64, false),
                        Field::new("total", DataType::Int64, false),
                    ]));
                    let out = p.process(src, "sum", &["k"], output, || SumThenReport).unwrap();
                    p.collect(out, "results").unwrap();
                    let out = crate::testing::drive_node(&p.build(), "process function", &steps, &cuts).await;
                    crate::testing::sorted_json_lines(&out)
                })
            };
            let plain = run(vec![]);
            proptest::prop_assert!(!plain.is_empty());
            proptest::prop_assert_eq!(run(cuts), plain);
        }
    }

    #[tokio::test]
    async fn emitting_the_wrong_number_of_values_fails_naming_the_operator() {
        struct Bad;
        impl KeyedProcessFunction for Bad {
            type State = ();
            fn process(
                &mut self,
                _row: &Row<'_>,
                _s: &mut (),
                ctx: &mut ProcessContext<'_>,
            ) -> Result<()> {
                ctx.emit(vec![ScalarValue::Int64(Some(1))]);
                Ok(())
            }
        }
        let source =
            MemorySource::new(input(&[]).schema(), vec![vec![input(&[(1, 1, 1)])]]).unwrap();
        let mut p = PipelineBuilder::new("bad");
        let src = p.source("ev", Arc::new(source));
        let output = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int64, false),
        ]));
        let out = p.process(src, "bad_fn", &["k"], output, || Bad).unwrap();
        let _ = p.collect(out, "results").unwrap();
        let err = p.run_to_completion().await.unwrap_err().to_string();
        assert!(
            err.contains("bad/bad_fn[0/1]")
                && err.contains("emitted 1 values for an output of 2 columns"),
            "{err}"
        );
    }

    /// Reports a key's count when the wall clock passes 20 ms after its first row —
    /// an alert that needs no watermark (the source declares no event time).
    #[derive(Default)]
    struct CountThenAlert;

    impl KeyedProcessFunction for CountThenAlert {
        type State = Vec<i64>;

        fn process(
            &mut self,
            row: &Row<'_>,
            seen: &mut Vec<i64>,
            ctx: &mut ProcessContext<'_>,
        ) -> Result<()> {
            if seen.is_empty() {
                let at = ctx.processing_time() + 20;
                ctx.register_processing_timer(at);
            }
            seen.push(row.i64("v")?.unwrap_or(0));
            Ok(())
        }

        fn on_processing_timer(
            &mut self,
            _time: i64,
            seen: &mut Vec<i64>,
            ctx: &mut ProcessContext<'_>,
        ) -> Result<()> {
            let key = ctx.key()[0].clone();
            ctx.emit(vec![key, ScalarValue::Int64(Some(seen.len() as i64))]);
            ctx.clear_state();
            Ok(())
        }
    }

    /// Processing-time timers fire on a running pipeline whose input never ends and
    /// sends no watermark, with the list state their key collected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processing_time_timers_fire_without_watermarks() {
        let source = MemorySource::new(
            input(&[]).schema(),
            vec![vec![input(&[(1, 1, 0), (2, 1, 0), (1, 1, 0)])]],
        )
        .unwrap()
        .unbounded();
        let mut p = PipelineBuilder::new("proc");
        let src = p.source("ev", Arc::new(source));
        let output = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let out = p
            .process(src, "alert", &["k"], output, || CountThenAlert)
            .unwrap();
        let mut rx = crate::testing::tap(&mut p, out);
        let handle = crate::engine::Runtime::start(p.build(), Default::default()).unwrap();
        let mut alerts = Vec::new();
        while alerts.len() < 2 {
            let b = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
                .await
                .expect("processing-time timers did not fire")
                .unwrap();
            let c = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            alerts.extend(
                c(0).values()
                    .iter()
                    .copied()
                    .zip(c(1).values().iter().copied()),
            );
        }
        handle.stop();
        handle.wait().await.unwrap();
        alerts.sort();
        assert_eq!(alerts, vec![(1, 2), (2, 1)]);
    }

    /// Passes rows with a positive value on, sends the others to a side output.
    #[derive(Default)]
    struct SplitByValue;

    impl KeyedProcessFunction for SplitByValue {
        type State = ();

        fn process(
            &mut self,
            row: &Row<'_>,
            _: &mut (),
            ctx: &mut ProcessContext<'_>,
        ) -> Result<()> {
            let (k, v) = (row.get("k")?, row.i64("v")?.unwrap_or(0));
            if v > 0 {
                ctx.emit(vec![k, ScalarValue::Int64(Some(v))]);
                Ok(())
            } else {
                ctx.emit_to(
                    "rejected",
                    vec![k, ScalarValue::Utf8(Some(format!("value {v}")))],
                )
            }
        }
    }

    /// Rows sent to a side output reach only the nodes reading that output, with its
    /// own schema; the main output gets the others. An undeclared side output is an
    /// error naming the declared ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn side_outputs_carry_their_own_rows_and_schema() {
        let rows = [(1, 5, 0), (2, -1, 1), (1, 0, 2), (3, 7, 3)];
        let source =
            MemorySource::new(input(&[]).schema(), vec![vec![input(&rows)], vec![]]).unwrap();
        let mut p = PipelineBuilder::new("side").parallelism(2);
        let src = p.source("ev", Arc::new(source));
        let main = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let rejected = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("why", DataType::Utf8, false),
        ]));
        let out = p
            .process_with_side_outputs(
                src,
                "split",
                &["k"],
                main,
                &[("rejected", rejected)],
                || SplitByValue,
            )
            .unwrap();
        let side = p.side_output(&out, "rejected").unwrap();
        assert_eq!(p.schema(&side).field(1).name(), "why");
        let side = p.filter(side, "all", |b| {
            Ok(BooleanArray::from(vec![true; b.num_rows()]))
        });
        let kept = p.collect(out, "kept").unwrap();
        let dropped = p.collect(side, "dropped").unwrap();
        p.run_to_completion().await.unwrap();
        let lines = |batches: Vec<RecordBatch>| crate::testing::sorted_json_lines(&batches);
        assert_eq!(
            lines(kept.batches()),
            vec![r#"{"k":1,"v":5}"#, r#"{"k":3,"v":7}"#]
        );
        assert_eq!(
            lines(dropped.batches()),
            vec![r#"{"k":1,"why":"value 0"}"#, r#"{"k":2,"why":"value -1"}"#]
        );
        assert!(
            p_err_names_declared_outputs()
                .await
                .contains("declared: rejected")
        );
    }

    async fn p_err_names_declared_outputs() -> String {
        struct Wrong;
        impl KeyedProcessFunction for Wrong {
            type State = ();
            fn process(
                &mut self,
                _: &Row<'_>,
                _: &mut (),
                ctx: &mut ProcessContext<'_>,
            ) -> Result<()> {
                ctx.emit_to("nope", vec![])
            }
        }
        let source =
            MemorySource::new(input(&[]).schema(), vec![vec![input(&[(1, 1, 0)])]]).unwrap();
        let mut p = PipelineBuilder::new("wrong");
        let src = p.source("ev", Arc::new(source));
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let out = p
            .process_with_side_outputs(
                src,
                "w",
                &["k"],
                schema.clone(),
                &[("rejected", schema)],
                || Wrong,
            )
            .unwrap();
        p.collect(out, "x").unwrap();
        p.run_to_completion().await.unwrap_err().to_string()
    }
}
