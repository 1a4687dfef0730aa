//! The keyed-state table: what every keyed operator's state has in common, in one
//! place.
//!
//! Owns, for one operator task: the accounting of its state's size against
//! `state.memory_limit` ([`StateHandle`]), its event-time watermark (advanced by
//! watermarks, lowered to the lowest of the old tasks' at a restore), the byte form of
//! its snapshots ([`KeyedHeader`] + key columns first, through [`StateBlob`]), the
//! selection at restore of the rows whose keys this task owns now (rescaling by key
//! group), the conversion of key columns to and from compact row keys ([`KeyCodec`]),
//! and the warning when a task stops with state still open.
//!
//! An operator keeps only what is its own: the conversion of its structures (windows,
//! sessions, ranks, groups, typed values) to columns and back.
//!
//! Invariants:
//! - A snapshot's batches hold the key columns first (`keys` of them); every other
//!   column is the operator's.
//! - After a restore from several old tasks (a change of parallelism) the watermark is
//!   the lowest of theirs: no row the old tasks would still have taken is dropped as
//!   late.
//! - Restored rows are those of this task's key groups
//!   ([`partition_of_key_group`](crate::types::partition_of_key_group)); at
//!   parallelism 1 all of them, without copying.

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::row::{RowConverter, Rows, SortField};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::snapshot::StateBlob;
use crate::types::{EngineError, Result, StateHandle, TaskInfo};

/// The first watermark of a task: before any event time.
const START: i64 = i64::MIN;

/// One keyed operator task's state bookkeeping (see the module doc).
pub struct KeyedTable {
    task: TaskInfo,
    handle: StateHandle,
    watermark: i64,
    /// While restoring: the lowest watermark of the states restored so far.
    restored: Option<i64>,
}

/// The header of a keyed operator's snapshot: the watermark and the number of key
/// columns, then the operator's own fields (flattened into the same JSON object).
#[derive(Serialize, Deserialize)]
pub struct KeyedHeader<H> {
    /// Absent in snapshots of operators without event time.
    #[serde(default = "start")]
    pub watermark: i64,
    pub keys: usize,
    #[serde(flatten)]
    pub operator: H,
}

fn start() -> i64 {
    START
}

/// For an operator whose header holds nothing of its own.
#[derive(Serialize, Deserialize, Default)]
pub struct NoFields {}

/// Restored rows this task owns: the key columns and the operator's columns.
pub struct KeyedRows {
    pub keys: Vec<ArrayRef>,
    pub values: Vec<ArrayRef>,
}

impl KeyedRows {
    /// Rows in this batch.
    pub fn len(&self) -> usize {
        self.keys
            .first()
            .or(self.values.first())
            .map_or(0, |c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The operator's column `i` as an `A`; `what` names it in the error when the
    /// snapshot does not hold one (a corrupt or foreign state).
    pub fn column<A: Array + 'static>(&self, i: usize, what: &str) -> Result<&A> {
        self.values
            .get(i)
            .and_then(|c| c.as_any().downcast_ref::<A>())
            .ok_or_else(|| {
                EngineError::State(format!("{what}: column {i} of the wrong type")).into()
            })
    }
}

impl KeyedTable {
    /// Opens the state of `task`; `kind` names it in messages (`window`, `join`…),
    /// `limit` is the task's memory limit in bytes.
    pub fn open(task: &TaskInfo, kind: &'static str, limit: Option<u64>) -> Self {
        KeyedTable {
            task: task.clone(),
            handle: task.state.open(task, kind, limit),
            watermark: START,
            restored: None,
        }
    }

    pub fn task(&self) -> &TaskInfo {
        &self.task
    }

    /// The task's event-time watermark (ms): `i64::MIN` before the first.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Takes `watermark` if it is later than the current one; returns the current one.
    pub fn advance(&mut self, watermark: i64) -> i64 {
        self.watermark = self.watermark.max(watermark);
        self.watermark
    }

    /// Records the state's size (`bytes`); fails, naming the task's state, when it is
    /// over the limit. `what` describes the state, `advice` says what to change.
    pub fn report(&self, bytes: usize, what: impl FnOnce() -> String, advice: &str) -> Result<()> {
        self.handle.report(bytes, what, advice)
    }

    /// Logs state left open when the task stops before the end of its input (see
    /// [`stopped_with_open_state`]).
    pub fn stopped(&self, open: usize, what: &str) {
        stopped_with_open_state(&self.task, open, what);
    }

    /// A snapshot: `operator`'s header fields with the watermark and `keys`, and
    /// `batches` (each with its `keys` key columns first).
    pub fn snapshot<H: Serialize>(
        &self,
        keys: usize,
        operator: H,
        batches: Vec<Vec<ArrayRef>>,
    ) -> Result<StateBlob> {
        let header = KeyedHeader {
            watermark: self.watermark,
            keys,
            operator,
        };
        StateBlob::arrow(&header, batches)
    }

    /// Reads one old task's snapshot (or one link of its chain) as stored: the header
    /// and every batch, whoever owns their keys now.
    pub fn decode<H: DeserializeOwned>(
        &self,
        bytes: &[u8],
    ) -> Result<(KeyedHeader<H>, Vec<Vec<ArrayRef>>)> {
        super::snapshot::decode(bytes)
    }

    /// Takes the watermark of one restored old task's state: after a restore from
    /// several, the task's watermark is the lowest of theirs.
    pub fn restored(&mut self, watermark: i64) {
        let lowest = self.restored.map_or(watermark, |w| w.min(watermark));
        self.restored = Some(lowest);
        self.watermark = lowest;
    }

    /// Reads one old task's full snapshot, takes its watermark ([`KeyedTable::restored`])
    /// and keeps the rows whose keys this task owns now, split into keys and the
    /// operator's columns.
    pub fn restore<H: DeserializeOwned>(&mut self, bytes: &[u8]) -> Result<(H, Vec<KeyedRows>)> {
        let (header, batches) = self.decode::<H>(bytes)?;
        self.restored(header.watermark);
        let rows = batches
            .into_iter()
            .map(|columns| self.own(columns, header.keys))
            .collect::<Result<Vec<_>>>()?;
        Ok((header.operator, rows))
    }

    /// The rows of `columns` (the first `keys` of them the key) this task owns now.
    pub fn own(&self, columns: Vec<ArrayRef>, keys: usize) -> Result<KeyedRows> {
        let mut columns = match owned_rows(&self.task, &columns[..keys.min(columns.len())])? {
            None => columns,
            Some(idx) => columns
                .iter()
                .map(|c| take(c.as_ref(), &idx, None))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| EngineError::arrow("selecting restored keys", e))?,
        };
        if keys > columns.len() {
            return Err(EngineError::State(format!(
                "{}: a snapshot with {keys} key columns holds {}",
                self.task,
                columns.len()
            ))
            .into());
        }
        let values = columns.split_off(keys);
        Ok(KeyedRows {
            keys: columns,
            values,
        })
    }

    /// The rows of a restored `batch` whose keys (`keys`, evaluated on it) this task
    /// owns now: for state kept as whole input rows (a join's sides, rows waiting for
    /// their rank).
    pub fn own_batch(&self, keys: &[ArrayRef], batch: RecordBatch) -> Result<RecordBatch> {
        match owned_rows(&self.task, keys)? {
            Some(idx) => arrow::compute::take_record_batch(&batch, &idx)
                .map_err(|e| EngineError::arrow("selecting restored rows", e)),
            None => Ok(batch),
        }
    }
}

/// Logs state left open when `task` stops before the end of its input: `open` items
/// (`what`: window, session…) are incomplete and not emitted; the last checkpoint
/// holds them.
pub fn stopped_with_open_state(task: &TaskInfo, open: usize, what: &str) {
    if open > 0 {
        tracing::warn!(
            task = %task,
            open,
            "stopped with {open} open {what}(s): they are incomplete and not emitted; \
             with checkpoints, a restart restores them from the last one"
        );
    }
}

/// Which rows, keyed by the columns `keys`, belong to `task`'s key groups: `None` when
/// all do (always at parallelism 1), else their indices.
fn owned_rows(task: &TaskInfo, keys: &[ArrayRef]) -> Result<Option<UInt32Array>> {
    let Some(n) = keys.first().map(|k| k.len()) else {
        return Ok(None);
    };
    if task.parallelism == 1 {
        return Ok(None);
    }
    let groups = crate::types::key_groups_of_arrays(keys, n)?;
    let mine: Vec<u32> = (0..n as u32)
        .filter(|i| {
            crate::types::partition_of_key_group(groups[*i as usize], task.parallelism)
                == task.partition
        })
        .collect();
    Ok((mine.len() < n).then(|| UInt32Array::from(mine)))
}

/// Key columns as compact, comparable row keys (Arrow's row format) and back: how
/// keyed operators index their state by key. The column types are those of the
/// first key columns encoded, or given up front.
#[derive(Default)]
pub struct KeyCodec {
    converter: Option<RowConverter>,
}

impl KeyCodec {
    /// A codec for key columns of these types.
    pub fn new(types: impl IntoIterator<Item = arrow::datatypes::DataType>) -> Result<Self> {
        let fields = types.into_iter().map(SortField::new).collect();
        let converter =
            RowConverter::new(fields).map_err(|e| EngineError::arrow("encoding keys", e))?;
        Ok(KeyCodec {
            converter: Some(converter),
        })
    }

    /// The row keys of `columns` (one per row).
    pub fn encode(&mut self, columns: &[ArrayRef]) -> Result<Rows> {
        if self.converter.is_none() {
            *self = Self::new(columns.iter().map(|c| c.data_type().clone()))?;
        }
        self.converter
            .as_ref()
            .expect("set above")
            .convert_columns(columns)
            .map_err(|e| EngineError::arrow("encoding keys", e))
    }

    /// The row keys of `columns`, each as owned bytes.
    pub fn encode_owned(&mut self, columns: &[ArrayRef]) -> Result<Vec<Box<[u8]>>> {
        Ok(self
            .encode(columns)?
            .iter()
            .map(|r| r.as_ref().into())
            .collect())
    }

    /// The key columns of encoded `keys`; `None` before anything was encoded.
    pub fn decode<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Option<Vec<ArrayRef>>> {
        let Some(c) = &self.converter else {
            return Ok(None);
        };
        let parser = c.parser();
        c.convert_rows(keys.into_iter().map(|k| parser.parse(k)))
            .map(Some)
            .map_err(|e| EngineError::arrow("decoding keys", e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};

    use super::*;

    fn task(partition: usize, parallelism: usize) -> TaskInfo {
        TaskInfo {
            pipeline: "p".into(),
            node: "n".into(),
            partition,
            parallelism,
            state: crate::state::memory_backend(),
        }
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fields {
        widths: Vec<usize>,
    }

    /// 100 keys `k0..k99` with values 0..99.
    fn rows() -> Vec<ArrayRef> {
        let keys: StringArray = (0..100).map(|i| Some(format!("k{i}"))).collect();
        vec![
            Arc::new(keys),
            Arc::new(Int64Array::from_iter_values(0..100)),
        ]
    }

    fn bytes(table: &KeyedTable, columns: Vec<ArrayRef>) -> Vec<u8> {
        table
            .snapshot(1, Fields { widths: vec![1] }, vec![columns])
            .unwrap()
            .into_bytes()
            .unwrap()
    }

    #[test]
    fn a_snapshot_restores_its_rows_header_and_watermark_at_the_same_parallelism() {
        let mut old = KeyedTable::open(&task(0, 1), "test", None);
        old.advance(1_000);
        let state = bytes(&old, rows());
        let mut new = KeyedTable::open(&task(0, 1), "test", None);
        let (fields, batches) = new.restore::<Fields>(&state).unwrap();
        assert_eq!(fields, Fields { widths: vec![1] });
        assert_eq!(new.watermark(), 1_000);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].keys.len(), 1);
        assert_eq!(batches[0].values.len(), 1);
        assert_eq!(batches[0].len(), 100);
    }

    #[test]
    fn at_another_parallelism_each_row_goes_to_exactly_the_task_that_owns_its_key_group() {
        let old = KeyedTable::open(&task(0, 1), "test", None);
        let state = bytes(&old, rows());
        let mut seen = Vec::new();
        for partition in 0..3 {
            let mut new = KeyedTable::open(&task(partition, 3), "test", None);
            let (_, batches) = new.restore::<Fields>(&state).unwrap();
            let keys = batches[0].keys[0].clone();
            let groups =
                crate::types::key_groups_of_arrays(std::slice::from_ref(&keys), keys.len())
                    .unwrap();
            for g in groups {
                assert_eq!(crate::types::partition_of_key_group(g, 3), partition);
            }
            let values = batches[0].column::<Int64Array>(0, "values").unwrap();
            seen.extend(values.values().iter().copied());
        }
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>(), "every row once");
    }

    #[test]
    fn restored_from_several_tasks_the_watermark_is_the_lowest_of_theirs() {
        let mut new = KeyedTable::open(&task(0, 1), "test", None);
        for w in [5_000, 2_000, 9_000] {
            let mut old = KeyedTable::open(&task(0, 3), "test", None);
            old.advance(w);
            new.restore::<Fields>(&bytes(&old, rows())).unwrap();
        }
        assert_eq!(new.watermark(), 2_000);
        // Watermarks then only advance.
        assert_eq!(new.advance(1_000), 2_000);
        assert_eq!(new.advance(3_000), 3_000);
    }

    #[test]
    fn a_column_of_the_wrong_type_is_a_state_error_not_a_panic() {
        let old = KeyedTable::open(&task(0, 1), "test", None);
        let mut new = KeyedTable::open(&task(0, 1), "test", None);
        let (_, batches) = new.restore::<Fields>(&bytes(&old, rows())).unwrap();
        let err = batches[0]
            .column::<StringArray>(0, "restoring values")
            .unwrap_err();
        assert_eq!(err.code(), "ENG009", "{err}");
        assert!(err.to_string().contains("restoring values"), "{err}");
        let err = new
            .own(rows(), 3)
            .err()
            .expect("more key columns than columns");
        assert_eq!(err.code(), "ENG009", "{err}");
    }

    #[test]
    fn the_state_limit_fails_with_its_own_code() {
        let table = KeyedTable::open(&task(0, 1), "test", Some(100));
        table.report(100, || "at the limit".into(), "").unwrap();
        let err = table.report(101, || "over".into(), "raise it").unwrap_err();
        assert_eq!(err.code(), "ENG010", "{err}");
    }

    #[test]
    fn keys_survive_the_codec_round_trip() {
        let mut codec = KeyCodec::default();
        assert!(
            codec.decode([&b""[..]]).unwrap().is_none(),
            "nothing encoded yet"
        );
        let keys = rows();
        let encoded = codec.encode_owned(&keys).unwrap();
        let decoded = codec
            .decode(encoded.iter().map(|k| &k[..]))
            .unwrap()
            .unwrap();
        assert_eq!(decoded[0].as_ref(), keys[0].as_ref());
        assert_eq!(decoded[1].as_ref(), keys[1].as_ref());
    }
}
