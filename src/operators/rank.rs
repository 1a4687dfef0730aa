//! `ROW_NUMBER() OVER (PARTITION BY key ORDER BY event_time)` on a stream: the rank of
//! every row within its key by event time — the building block of deduplication
//! (`WHERE rn = 1`: the first event per key) and first-N per key (`WHERE rn <= N`).
//!
//! Owns the rows waiting for their rank and, per key, how many rows were ranked.
//!
//! Invariants:
//! - A row is ranked once the watermark has passed its event time: no on-time row
//!   can still arrive before it, so its rank is final and equals the batch result.
//!   Ranked rows leave in event-time order; the filter on the rank runs after.
//! - A row older than the watermark on arrival is late: dropped and counted.
//! - With `state.ttl`, a key whose last ranked row is older than the watermark by more
//!   than the TTL is forgotten (its next row ranks 1 again); without, keys are kept
//!   and the state memory limit bounds them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::state::keyed::{KeyCodec, KeyedTable, NoFields};
use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt64Array};
use arrow::compute::interleave;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::physical_expr::PhysicalExpr;

use super::late::LateRows;
use super::support::{emit_in_slices, evaluate};
use crate::engine::{
    Collector, EngineError, Operator, OperatorFactory, Result, TaskInfo, event_times_ms,
};
use crate::state::snapshot::StateBlob;

/// The rank operator as planned.
pub struct RankFactory {
    pub(crate) keys: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) time: Arc<dyn PhysicalExpr>,
    /// Input columns then the rank (`UInt64`), as DataFusion planned the window.
    pub(crate) output: SchemaRef,
    pub(crate) ttl: Option<std::time::Duration>,
    pub(crate) memory_limit: Option<u64>,
}

impl RankFactory {
    /// Input columns the keys are plain references to; `None` when one is computed.
    pub(crate) fn key_columns(&self) -> Option<Vec<usize>> {
        super::support::column_indices(&self.keys)
    }
}

impl OperatorFactory for RankFactory {
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn state_kind(&self) -> crate::engine::StateKind {
        crate::engine::StateKind::Checkpointed
    }

    fn describe(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(|k| k.to_string()).collect();
        format!(
            "row_number by event time {} per [{}]{}",
            self.time,
            keys.join(", "),
            self.ttl
                .map(|t| format!(", keys kept {t:?}"))
                .unwrap_or_default()
        )
    }

    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        let input = self.output.fields().len() - 1;
        Ok(Box::new(RankOperator {
            table: KeyedTable::open(task, "row_number", self.memory_limit),
            keys: self.keys.clone(),
            time: self.time.clone(),
            output: self.output.clone(),
            input_columns: input,
            codec: KeyCodec::default(),
            ttl_ms: self.ttl.map(|t| t.as_millis().min(i64::MAX as u128) as i64),
            batches: HashMap::new(),
            next_batch: 0,
            pending: BTreeMap::new(),
            next_seq: 0,
            ranked: HashMap::new(),
            last_expiry: crate::engine::Watermark::START,
            late: LateRows::new(task),
            buffered_bytes: 0,
        }))
    }
}

/// A buffered input batch and how many of its rows still wait.
struct Buffered {
    batch: RecordBatch,
    waiting: usize,
}

struct Ranked {
    count: u64,
    last_ts: i64,
}

struct RankOperator {
    /// The task's state bookkeeping: size, watermark, snapshots' form.
    table: KeyedTable,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    time: Arc<dyn PhysicalExpr>,
    output: SchemaRef,
    input_columns: usize,
    codec: KeyCodec,
    ttl_ms: Option<i64>,
    batches: HashMap<u64, Buffered>,
    next_batch: u64,
    /// Rows waiting for the watermark, by (event time, arrival): (batch, row, key).
    pending: BTreeMap<(i64, u64), (u64, u32, Box<[u8]>)>,
    next_seq: u64,
    ranked: HashMap<Box<[u8]>, Ranked>,
    last_expiry: i64,
    late: LateRows,
    buffered_bytes: usize,
}

impl RankOperator {
    fn state_size(&self) -> usize {
        self.buffered_bytes
            + self.pending.len() * 48
            + self.ranked.keys().map(|k| k.len() + 48).sum::<usize>()
    }

    fn check_state(&self) -> Result<()> {
        self.table.report(
            self.state_size(),
            || {
                format!(
                    "({} keys, {} rows waiting for the watermark)",
                    self.ranked.len(),
                    self.pending.len()
                )
            },
            "set state.ttl so old keys are forgotten, raise the limit, or run at a higher parallelism",
        )
    }

    /// Ranks and emits every waiting row older than `watermark` (all of them at the
    /// end of input), in event-time order.
    async fn release(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        let ready = if watermark == crate::engine::Watermark::END {
            std::mem::take(&mut self.pending)
        } else {
            let later = self.pending.split_off(&(watermark, 0));
            std::mem::replace(&mut self.pending, later)
        };
        if !ready.is_empty() {
            // Gather rows across buffered batches with `interleave`.
            let mut order: Vec<u64> = Vec::new();
            let mut slot: HashMap<u64, usize> = HashMap::new();
            let mut picks: Vec<(usize, usize)> = Vec::with_capacity(ready.len());
            let mut ranks: Vec<u64> = Vec::with_capacity(ready.len());
            for ((ts, _), (batch, row, key)) in ready {
                let s = *slot.entry(batch).or_insert_with(|| {
                    order.push(batch);
                    order.len() - 1
                });
                picks.push((s, row as usize));
                let r = self.ranked.entry(key).or_insert(Ranked {
                    count: 0,
                    last_ts: ts,
                });
                r.count += 1;
                r.last_ts = r.last_ts.max(ts);
                ranks.push(r.count);
            }
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.input_columns + 1);
            for c in 0..self.input_columns {
                let arrays: Vec<&dyn Array> = order
                    .iter()
                    .map(|b| self.batches[b].batch.column(c).as_ref())
                    .collect();
                columns.push(
                    interleave(&arrays, &picks)
                        .map_err(|e| EngineError::arrow("gathering ranked rows", e))?,
                );
            }
            columns.push(Arc::new(UInt64Array::from(ranks)));
            let batch = RecordBatch::try_new(self.output.clone(), columns)
                .map_err(|e| EngineError::arrow("building ranked rows", e))?;
            for (s, _) in &picks {
                let id = order[*s];
                let b = self.batches.get_mut(&id).expect("buffered");
                b.waiting -= 1;
                if b.waiting == 0 {
                    let gone = self.batches.remove(&id).expect("buffered");
                    self.buffered_bytes = self
                        .buffered_bytes
                        .saturating_sub(gone.batch.get_array_memory_size());
                }
            }
            emit_in_slices(out, batch).await?;
        }
        if let Some(ttl) = self.ttl_ms
            && watermark != crate::engine::Watermark::END
            && watermark.saturating_sub(self.last_expiry) >= (ttl / 4).max(1)
        {
            self.last_expiry = watermark;
            self.ranked
                .retain(|_, r| r.last_ts.saturating_add(ttl) > watermark);
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for RankOperator {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let times = event_times_ms(evaluate(&self.time, &batch)?.as_ref())?;
        let keys: Vec<ArrayRef> = self
            .keys
            .iter()
            .map(|k| evaluate(k, &batch))
            .collect::<Result<_>>()?;
        let rows = self.codec.encode(&keys)?;
        let id = self.next_batch;
        let mut waiting = 0;
        let mut late: Vec<(u32, i64)> = Vec::new();
        let mut null_times: Vec<u32> = Vec::new();
        for i in 0..batch.num_rows() {
            if times.is_null(i) {
                null_times.push(i as u32);
                continue;
            }
            let ts = times.value(i);
            if ts < self.table.watermark() {
                late.push((i as u32, ts));
                continue;
            }
            self.pending.insert(
                (ts, self.next_seq),
                (id, i as u32, rows.row(i).data().into()),
            );
            self.next_seq += 1;
            waiting += 1;
        }
        self.late.report(
            self.table.task(),
            out,
            self.table.watermark(),
            &batch,
            &late,
            &|_| "older than the watermark, it cannot be ranked".to_string(),
            &null_times,
        );
        if waiting > 0 {
            self.buffered_bytes += batch.get_array_memory_size();
            self.batches.insert(id, Buffered { batch, waiting });
            self.next_batch += 1;
        }
        self.check_state()
    }

    async fn handle_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        let watermark = self.table.advance(watermark);
        self.release(watermark, out).await?;
        self.check_state()
    }

    async fn on_end(&mut self, _out: &mut Collector) -> Result<()> {
        self.table
            .stopped(self.pending.len(), "row waiting for its rank");
        Ok(())
    }

    /// Two parts: each key's count of ranked rows and newest ranked event time (key
    /// columns first), with the watermark; and the rows waiting for their rank, in
    /// rank order.
    fn snapshot(&mut self) -> Result<Option<StateBlob>> {
        let mut ranked = Vec::new();
        if !self.ranked.is_empty() {
            let (keys, counts): (Vec<&Box<[u8]>>, Vec<&Ranked>) = self.ranked.iter().unzip();
            let mut columns = self
                .codec
                .decode(keys.into_iter().map(|k| &k[..]))?
                .unwrap_or_default();
            columns.push(Arc::new(UInt64Array::from_iter_values(
                counts.iter().map(|r| r.count),
            )));
            columns.push(Arc::new(Int64Array::from_iter_values(
                counts.iter().map(|r| r.last_ts),
            )));
            ranked.push(columns);
        }
        let mut waiting = Vec::new();
        if !self.pending.is_empty() {
            let mut order: Vec<u64> = Vec::new();
            let mut slot: HashMap<u64, usize> = HashMap::new();
            let picks: Vec<(usize, usize)> = self
                .pending
                .values()
                .map(|(batch, row, _)| {
                    let s = *slot.entry(*batch).or_insert_with(|| {
                        order.push(*batch);
                        order.len() - 1
                    });
                    (s, *row as usize)
                })
                .collect();
            let columns = (0..self.input_columns)
                .map(|c| {
                    let arrays: Vec<&dyn Array> = order
                        .iter()
                        .map(|b| self.batches[b].batch.column(c).as_ref())
                        .collect();
                    interleave(&arrays, &picks)
                        .map_err(|e| EngineError::arrow("checkpointing waiting rows", e))
                })
                .collect::<Result<Vec<_>>>()?;
            waiting.push(columns);
        }
        Ok(Some(StateBlob::parts(vec![
            self.table
                .snapshot(self.keys.len(), NoFields::default(), ranked)?,
            StateBlob::arrow(&(), waiting)?,
        ])))
    }

    /// Restores the keys this task owns now, then takes their waiting rows in again
    /// (none is late: each was newer than the watermark it is restored with).
    fn restore(&mut self, states: &[Vec<u8>]) -> Result<()> {
        let mut restored = Vec::with_capacity(states.len());
        for state in states {
            let parts = crate::state::snapshot::parts(state)?;
            let [ranked, waiting] = parts[..] else {
                return Err(EngineError::State(format!(
                    "restoring row_number: {} parts in its state",
                    parts.len()
                ))
                .into());
            };
            // Before the waiting rows go back in: none of them is late against the
            // restored watermark.
            let (_, batches) = self.table.restore::<NoFields>(ranked)?;
            for rows in batches {
                let what = "restoring row_number's key counts";
                let counts = rows.column::<UInt64Array>(0, what)?;
                let last = rows.column::<Int64Array>(1, what)?;
                let keys = self.codec.encode(&rows.keys)?;
                for i in 0..counts.len() {
                    self.ranked.insert(
                        keys.row(i).data().into(),
                        Ranked {
                            count: counts.value(i),
                            last_ts: last.value(i),
                        },
                    );
                }
            }
            restored.push(waiting);
        }
        self.last_expiry = self.table.watermark();
        let input = Arc::new(arrow::datatypes::Schema::new(
            self.output.fields()[..self.input_columns].to_vec(),
        ));
        let mut discard = Collector::discard();
        for waiting in restored {
            let ((), batches): ((), _) = crate::state::snapshot::decode(waiting)?;
            for columns in batches {
                let batch = RecordBatch::try_new(input.clone(), columns)
                    .map_err(|e| EngineError::arrow("restoring waiting rows", e))?;
                let keys = self
                    .keys
                    .iter()
                    .map(|k| evaluate(k, &batch))
                    .collect::<Result<Vec<_>>>()?;
                let batch = self.table.own_batch(&keys, batch)?;
                futures::executor::block_on(self.process_batch(batch, &mut discard))?;
            }
        }
        self.check_state()
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::sorted_json_lines;
    use std::sync::Arc;

    use arrow::array::RecordBatch;
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;

    use crate::connectors::memory::MemorySource;
    use crate::pipeline::PipelineBuilder;

    fn batch(rows: &[(i64, i64, i64)]) -> RecordBatch {
        crate::testing::kvt_batch(rows)
    }

    const QUERY: &str = "SELECT k, v, CAST(ts AS BIGINT) AS t, rn FROM \
        (SELECT k, v, ts, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn FROM ev) WHERE rn <= 2";

    async fn streaming(rows: &[(i64, i64, i64)], delay: u64, per_batch: usize) -> Vec<RecordBatch> {
        run(PipelineBuilder::new("rank"), rows, delay, per_batch).await
    }

    /// Runs [`QUERY`] on `builder` over `rows`, `per_batch` rows per batch.
    async fn run(
        mut p: PipelineBuilder,
        rows: &[(i64, i64, i64)],
        delay: u64,
        per_batch: usize,
    ) -> Vec<RecordBatch> {
        let batches: Vec<RecordBatch> = rows.chunks(per_batch).map(batch).collect();
        let source = MemorySource::new(batch(&[]).schema(), vec![batches]).unwrap();
        let src = p.source("ev", Arc::new(source));
        p.event_time(&src, "ts", std::time::Duration::from_millis(delay))
            .unwrap();
        let out = p.sql(src, QUERY).await.unwrap();
        let results = p.collect(out, "results").unwrap();
        p.run_to_completion().await.unwrap();
        results.batches()
    }

    /// Distinct event times 0..n, shuffled within a bounded distance.
    fn rows() -> impl Strategy<Value = Vec<(i64, i64, i64)>> {
        prop::collection::vec((0i64..5, -9i64..9, 0i64..30), 1..150).prop_map(|raw| {
            let mut rows: Vec<(i64, (i64, i64, i64))> = raw
                .into_iter()
                .enumerate()
                .map(|(i, (k, v, shift))| (i as i64 + shift, (k, v, 1_000 + i as i64)))
                .collect();
            rows.sort();
            rows.into_iter().map(|(_, r)| r).collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        /// Snapshots taken anywhere leave the ranks unchanged, and operators restored
        /// from them, at another parallelism too, go on as the original would: the
        /// same ranked rows as a run without checkpoints.
        #[test]
        fn snapshots_and_restores_anywhere_leave_the_ranks_unchanged(
            input in rows(),
            delay in 0i64..25,
            cuts in proptest::collection::vec(0u8..4, 0..80),
        ) {
            let mut newest = i64::MIN;
            let steps: Vec<(usize, RecordBatch, Option<i64>)> = input
                .chunks(2)
                .map(|c| {
                    newest = c.iter().map(|r| r.2).fold(newest, i64::max);
                    (0, batch(c), Some(newest - delay))
                })
                .collect();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let run = |cuts: Vec<u8>| {
                let steps = steps.clone();
                rt.block_on(async move {
                    let mut p = PipelineBuilder::new("drive");
                    let src = p.source("ev", Arc::new(MemorySource::new(batch(&[]).schema(), vec![]).unwrap()));
                    p.event_time(&src, "ts", std::time::Duration::from_millis(delay as u64)).unwrap();
                    let out = p.sql(src, QUERY).await.unwrap();
                    p.collect(out, "results").unwrap();
                    let out = crate::testing::drive_node(&p.build(), "row_number", &steps, &cuts).await;
                    sorted_json_lines(&out)
                })
            };
            let plain = run(vec![]);
            prop_assert!(!plain.is_empty());
            prop_assert_eq!(run(cuts), plain);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// First two rows per key by event time, over out-of-order input with late
        /// rows, equal DataFusion batch over the rows the lateness rule keeps (one row
        /// per batch: a row meets the newest earlier event time minus the delay).
        #[test]
        fn first_n_per_key_equals_batch_with_lateness_applied(input in rows(), delay in 0u64..25) {
            let mut newest: Option<i64> = None;
            let mut kept = Vec::new();
            for r in &input {
                if newest.is_none_or(|n| r.2 >= n - delay as i64) {
                    kept.push(*r);
                }
                newest = Some(newest.map_or(r.2, |n| n.max(r.2)));
            }
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let (got, expected) = rt.block_on(async {
                let got = streaming(&input, delay, 1).await;
                let ctx = SessionContext::new();
                ctx.register_batch("ev", batch(&kept)).unwrap();
                let expected = ctx.sql(QUERY).await.unwrap().collect().await.unwrap();
                (got, expected)
            });
            prop_assert_eq!(sorted_json_lines(&got), sorted_json_lines(&expected));
        }
    }

    /// Without lateness (a delay longer than any disorder) the batching does not
    /// matter: larger batches give the batch result too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_of_any_size_give_the_batch_result() {
        let input: Vec<(i64, i64, i64)> = (0..500)
            .map(|i| (i % 7, i, 10_000 - (i * 37) % 500))
            .collect();
        let got = streaming(&input, 1_000, 64).await;
        let ctx = SessionContext::new();
        ctx.register_batch("ev", batch(&input)).unwrap();
        let expected = ctx.sql(QUERY).await.unwrap().collect().await.unwrap();
        assert_eq!(sorted_json_lines(&expected).len(), 14);
        assert_eq!(sorted_json_lines(&got), sorted_json_lines(&expected));
    }

    /// With a TTL, a key quiet for longer than it is forgotten: its next row ranks 1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_is_forgotten_after_the_ttl() {
        let input = [(1, 1, 0), (1, 2, 10), (2, 3, 5_000), (1, 4, 5_001)];
        let p = PipelineBuilder::new("ttl").state_ttl(std::time::Duration::from_secs(1));
        let got = run(p, &input, 0, 1).await;
        assert_eq!(
            sorted_json_lines(&got),
            vec![
                r#"{"k":1,"v":1,"t":0,"rn":1}"#.to_string(),
                r#"{"k":1,"v":2,"t":10,"rn":2}"#.to_string(),
                r#"{"k":1,"v":4,"t":5001,"rn":1}"#.to_string(),
                r#"{"k":2,"v":3,"t":5000,"rn":1}"#.to_string(),
            ]
        );
    }
}
