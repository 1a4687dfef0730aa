//! Session windows: `GROUP BY session(gap), key`.
//!
//! Owns the sessions of each key: a session is `[first event, last event + gap)`; an
//! event within `gap` of a session joins it, and an out-of-order event that bridges
//! two sessions merges them (their accumulator states are merged with DataFusion's
//! `Accumulator::merge_batch`, as a distributed aggregate merges partial states).
//!
//! Invariants:
//! - The sessions of one key are disjoint (as half-open intervals): every insertion
//!   merges all sessions it overlaps.
//! - A session is emitted once, when the watermark reaches its end, then dropped.
//! - A row that would only open a session already ended by the watermark is late: it
//!   is dropped and counted; a late row that falls inside an open session joins it.

use std::collections::{BTreeSet, HashMap};

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, TimestampMillisecondArray};
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;

use super::accumulate::{AggInputs, update_accumulators};
use super::late::LateRows;
use super::support::{df, evaluate};
use super::window::FactoryParts;
use super::window_fn::{TZ, window_array};
use crate::engine::{Collector, Operator, Result, TaskInfo, event_times_ms};
use crate::state::keyed::{KeyCodec, KeyedTable};
use crate::state::snapshot::StateBlob;

struct Session {
    key: Box<[u8]>,
    start: i64,
    end: i64,
    accs: Vec<Box<dyn Accumulator>>,
}

impl Session {
    fn size(&self) -> usize {
        self.key.len() + self.accs.iter().map(|a| a.size()).sum::<usize>()
    }
}

pub(crate) struct SessionAggOperator {
    /// The task's state bookkeeping: size, watermark, snapshots' form.
    table: KeyedTable,
    gap: i64,
    parts: FactoryParts,
    /// Encodes key columns as comparable bytes; `None` when the only `GROUP BY` is the
    /// session (one key).
    codec: Option<KeyCodec>,
    sessions: HashMap<u64, Session>,
    by_key: HashMap<Box<[u8]>, Vec<u64>>,
    /// (end, id) of every open session, to find the ones the watermark closes.
    by_end: BTreeSet<(i64, u64)>,
    next_id: u64,
    bytes: usize,
    late: LateRows,
}

impl SessionAggOperator {
    pub(crate) fn new(
        task: &TaskInfo,
        gap: i64,
        parts: FactoryParts,
        memory_limit: Option<u64>,
    ) -> Result<Self> {
        let codec = if parts.keys.is_empty() {
            None
        } else {
            let types = parts
                .key_schema
                .fields()
                .iter()
                .map(|f| f.data_type().clone());
            Some(KeyCodec::new(types)?)
        };
        Ok(SessionAggOperator {
            table: KeyedTable::open(task, "session", memory_limit),
            gap,
            parts,
            codec,
            sessions: HashMap::new(),
            by_key: HashMap::new(),
            by_end: BTreeSet::new(),
            next_id: 0,
            bytes: 0,
            late: LateRows::new(task),
        })
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        super::accumulate::row_accumulators(&self.parts.aggs)
    }

    /// Adds a session to every index.
    fn insert(&mut self, session: Session) {
        let id = self.next_id;
        self.next_id += 1;
        self.bytes += session.size();
        self.by_end.insert((session.end, id));
        self.by_key.entry(session.key.clone()).or_default().push(id);
        self.sessions.insert(id, session);
    }

    /// Removes a session from every index.
    fn remove(&mut self, id: u64) -> Option<Session> {
        let s = self.sessions.remove(&id)?;
        self.by_end.remove(&(s.end, id));
        self.bytes = self.bytes.saturating_sub(s.size());
        if let Some(ids) = self.by_key.get_mut(&s.key) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_key.remove(&s.key);
            }
        }
        Some(s)
    }

    fn check_state(&self) -> Result<()> {
        self.table.report(
            self.bytes,
            || format!("in {} open session(s)", self.sessions.len()),
            "raise the limit, use a shorter gap or fewer keys, or run at a higher parallelism",
        )
    }

    /// Adds rows `rows` (all of key `key`, spanning `[start, end)`) to the state.
    fn add(
        &mut self,
        key: &[u8],
        start: i64,
        end: i64,
        rows: &[u32],
        args: &[Vec<ArrayRef>],
        filters: &[Option<ArrayRef>],
    ) -> Result<()> {
        let overlapping: Vec<u64> = self
            .by_key
            .get(key)
            .map(|ids| {
                ids.iter()
                    .copied()
                    .filter(|id| {
                        let s = &self.sessions[id];
                        s.start < end && start < s.end
                    })
                    .collect()
            })
            .unwrap_or_default();
        if overlapping.is_empty() && end <= self.table.watermark() {
            self.late.note(
                self.table.task(),
                rows.len() as u64,
                self.table.watermark(),
                "their session had already ended",
            );
            return Ok(());
        }
        // Merge every overlapping session into one.
        let mut target = match overlapping.first() {
            Some(&id) => self.remove(id).expect("listed above"),
            None => Session {
                key: key.into(),
                start,
                end,
                accs: self.new_accumulators()?,
            },
        };
        for &id in overlapping.iter().skip(1) {
            let other = self.remove(id).expect("listed above");
            target.start = target.start.min(other.start);
            target.end = target.end.max(other.end);
            for (acc, mut from) in target.accs.iter_mut().zip(other.accs) {
                let state: Vec<ArrayRef> = from
                    .state()
                    .and_then(|values| values.iter().map(ScalarValue::to_array).collect())
                    .map_err(df("reading a session's state"))?;
                acc.merge_batch(&state).map_err(df("merging sessions"))?;
            }
        }
        target.start = target.start.min(start);
        target.end = target.end.max(end);
        update_accumulators(&mut target.accs, rows, args, filters)?;
        self.insert(target);
        Ok(())
    }

    /// Emits every session that ends at or before `watermark`.
    async fn fire(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        let mut done = Vec::new();
        while let Some(&(end, id)) = self.by_end.first() {
            if end > watermark {
                break;
            }
            done.push(self.remove(id).expect("indexed"));
        }
        for chunk in done.chunks_mut(8192) {
            let starts: Vec<i64> = chunk.iter().map(|s| s.start).collect();
            let ends: Vec<i64> = chunk.iter().map(|s| s.end).collect();
            let window = window_array(
                TimestampMillisecondArray::from(starts).with_timezone(TZ),
                TimestampMillisecondArray::from(ends).with_timezone(TZ),
            );
            let keys: Vec<ArrayRef> = match &self.codec {
                Some(c) => c
                    .decode(chunk.iter().map(|s| &s.key[..]))?
                    .unwrap_or_default(),
                None => vec![],
            };
            let mut values = Vec::with_capacity(self.parts.aggs.len());
            for i in 0..self.parts.aggs.len() {
                let scalars: Vec<ScalarValue> = chunk
                    .iter_mut()
                    .map(|s| s.accs[i].evaluate())
                    .collect::<datafusion::error::Result<_>>()
                    .map_err(df("evaluating aggregates"))?;
                values.push(
                    ScalarValue::iter_to_array(scalars).map_err(df("evaluating aggregates"))?,
                );
            }
            out.emit(self.parts.results(window, keys, values)?).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for SessionAggOperator {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let times = event_times_ms(evaluate(&self.parts.time, &batch)?.as_ref())?;
        let AggInputs {
            keys,
            args,
            filters,
        } = self.parts.inputs(&batch)?;
        let rows = match &mut self.codec {
            Some(c) => Some(c.encode(&keys)?),
            None => None,
        };
        // Rows by key, then by time within a key.
        let mut per_key: HashMap<&[u8], Vec<u32>> = HashMap::new();
        let mut null_times: Vec<u32> = Vec::new();
        for i in 0..batch.num_rows() {
            if times.is_null(i) {
                null_times.push(i as u32);
                continue;
            }
            let key: &[u8] = match &rows {
                Some(r) => r.row(i).data(),
                None => &[],
            };
            per_key.entry(key).or_default().push(i as u32);
        }
        self.late.report(
            self.table.task(),
            out,
            self.table.watermark(),
            &batch,
            &[],
            &|_| String::new(),
            &null_times,
        );
        let mut work: Vec<(Box<[u8]>, i64, i64, Vec<u32>)> = Vec::new();
        for (key, mut idx) in per_key {
            idx.sort_by_key(|&i| times.value(i as usize));
            // The batch's own sessions for this key, before meeting the state.
            let mut current: Option<(i64, i64, Vec<u32>)> = None;
            for i in idx {
                let t = times.value(i as usize);
                match current.as_mut() {
                    Some((_, end, rows)) if t < *end => {
                        *end = (*end).max(t.saturating_add(self.gap));
                        rows.push(i);
                    }
                    _ => {
                        if let Some((s, e, r)) = current.take() {
                            work.push((key.into(), s, e, r));
                        }
                        current = Some((t, t.saturating_add(self.gap), vec![i]));
                    }
                }
            }
            if let Some((s, e, r)) = current {
                work.push((key.into(), s, e, r));
            }
        }
        for (key, start, end, rows) in work {
            self.add(&key, start, end, &rows, &args, &filters)?;
        }
        self.check_state()
    }

    async fn handle_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        let watermark = self.table.advance(watermark);
        self.fire(watermark, out).await?;
        self.check_state()
    }

    async fn on_end(&mut self, _out: &mut Collector) -> Result<()> {
        self.table.stopped(self.sessions.len(), "session");
        Ok(())
    }

    /// Every open session's key columns, bounds and accumulators' intermediate state,
    /// with the watermark.
    fn snapshot(&mut self) -> Result<Option<StateBlob>> {
        let mut keys = Vec::with_capacity(self.sessions.len());
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut units = Vec::with_capacity(self.sessions.len());
        for s in self.sessions.values_mut() {
            keys.push(s.key.clone());
            starts.push(s.start);
            ends.push(s.end);
            units.push(&mut s.accs);
        }
        let states = super::accumulate::take_row_states(units, &self.parts.aggs)?;
        let fields = SessionFields {
            widths: states.iter().map(Vec::len).collect(),
        };
        let n_keys = self.parts.keys.len();
        if keys.is_empty() {
            return self.table.snapshot(n_keys, fields, vec![]).map(Some);
        }
        let mut columns: Vec<ArrayRef> = match &self.codec {
            Some(c) => c.decode(keys.iter().map(|k| &k[..]))?.unwrap_or_default(),
            None => vec![],
        };
        columns.push(Arc::new(Int64Array::from(starts)));
        columns.push(Arc::new(Int64Array::from(ends)));
        columns.extend(states.into_iter().flatten());
        self.table.snapshot(n_keys, fields, vec![columns]).map(Some)
    }

    /// Restores the sessions whose keys this task owns now; the watermark is the lowest
    /// of the restored states'.
    fn restore(&mut self, states: &[Vec<u8>]) -> Result<()> {
        for state in states {
            let (fields, batches) = self.table.restore::<SessionFields>(state)?;
            for rows in batches {
                let what = "restoring sessions' bounds";
                let starts = rows.column::<Int64Array>(0, what)?.clone();
                let ends = rows.column::<Int64Array>(1, what)?.clone();
                let (states, _) =
                    super::accumulate::split_states(&rows.values[2..], &fields.widths);
                let keys = match &mut self.codec {
                    Some(c) => Some(c.encode(&rows.keys)?),
                    None => None,
                };
                for row in 0..starts.len() {
                    let mut accs = self.new_accumulators()?;
                    super::accumulate::merge_state_row(&mut accs, &states, row)?;
                    self.insert(Session {
                        key: keys
                            .as_ref()
                            .map_or(Box::default(), |r| r.row(row).as_ref().into()),
                        start: starts.value(row),
                        end: ends.value(row),
                        accs,
                    });
                }
            }
        }
        self.check_state()
    }
}

/// A session operator's own fields in its snapshots' header (with the watermark and
/// the key columns, see [`KeyedHeader`](crate::state::keyed::KeyedHeader)): one batch
/// of key columns, session starts and ends (ms), then each aggregate's state columns.
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionFields {
    /// State columns of each aggregate.
    widths: Vec<usize>,
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    /// Gaps-and-islands per key over all events, whatever their order: the sessions a
    /// bounded input must produce when nothing is late.
    pub(crate) fn islands(events: &[(i64, i64)], gap: i64) -> BTreeMap<(i64, i64), Vec<i64>> {
        let mut by_key: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for (k, t) in events {
            by_key.entry(*k).or_default().push(*t);
        }
        let mut out = BTreeMap::new();
        for (k, mut ts) in by_key {
            ts.sort();
            let mut start = ts[0];
            let mut members = vec![];
            let mut last = ts[0];
            for t in ts {
                if t >= last + gap {
                    out.insert((k, start), std::mem::take(&mut members));
                    start = t;
                }
                members.push(t);
                last = t;
            }
            out.insert((k, start), members);
        }
        out
    }

    #[test]
    fn islands_split_at_the_gap() {
        let got = islands(&[(1, 10), (1, 0), (1, 4), (2, 3), (1, 20)], 5);
        let keys: Vec<_> = got.keys().copied().collect();
        assert_eq!(keys, vec![(1, 0), (1, 10), (1, 20), (2, 3)]);
    }
}
