//! Lookup tables: reference data a stream is joined with (enrichment).
//!
//! A table declared with `lookup = 'true'` is read whole from its (bounded) connector —
//! a file of restaurants, the generator's `menu_items` — and kept in memory; every
//! batch of the stream is joined with the current snapshot by DataFusion's own join,
//! inside the per-batch SQL stage. With `refresh_interval`, the snapshot is read again
//! when it is older than that, so a changed file is picked up without a restart.
//!
//! A table too large to read whole (a DynamoDB table) is read by key instead: it
//! implements [`PointLookup`], and before each batch the stage evaluates the stream
//! side's join key ([`key_plans`]), fetches the rows of those keys (through the
//! table's own cache) and puts them in the task's [`LookupRows`]; the same join then
//! runs over them, so misses follow the SQL exactly as with a snapshot.
//!
//! Invariants:
//! - A lookup table is loaded at most once at a time, on first use, by whichever task
//!   needs it first; every task then shares the same snapshot.
//! - Misses follow the SQL: `LEFT JOIN` keeps the row with NULLs, `JOIN` drops it;
//!   with `on_miss = 'dead-letter'` each missed stream row is also a dead letter
//!   (class `lookup_miss`, found by an anti join of the same keys: `misses`).
//! - A failed read is an outage, never rows dropped: a refresh that fails keeps the
//!   whole previous snapshot and is tried again after the refresh interval, the table
//!   reported retrying in the health table ([`Probe`], kind `lookup`) until a read
//!   succeeds; a first load that fails fails the pipeline, naming the table (no row
//!   was joined yet, so nothing is lost or checkpointed past). A connector waits out
//!   its own outages inside a read (the Kafka source waits for its cluster and
//!   schema registry), so a lookup table is never short of rows for an outage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;

use crate::engine::SourceFactory;
use crate::health::Probe;

type Snapshot = Arc<Vec<RecordBatch>>;

pub(crate) use crate::engine::PointLookup;

/// The rows each keyed lookup table has for the batch a task is evaluating, by
/// table; put there by the stage before it runs the plan.
#[derive(Debug, Default)]
pub(crate) struct LookupRows(std::sync::Mutex<std::collections::HashMap<String, RecordBatch>>);

impl LookupRows {
    pub(crate) fn set(&self, table: &str, rows: RecordBatch) {
        self.0
            .lock()
            .expect("lookup rows")
            .insert(table.to_string(), rows);
    }

    fn get(&self, table: &str) -> Option<RecordBatch> {
        self.0.lock().expect("lookup rows").get(table).cloned()
    }
}

pub(crate) struct LookupTable {
    pub(crate) name: String,
    /// `on_miss = 'dead-letter'`: a stream row the join finds no row of this table for
    /// is a dead letter (class `lookup_miss`), whatever the join then does with it.
    pub(crate) dead_letter_misses: bool,
    /// Read by key (`Some`) instead of whole from `source`.
    pub(crate) keyed: Option<Arc<dyn PointLookup>>,
    source: Option<Arc<dyn SourceFactory>>,
    refresh: Option<Duration>,
    current: tokio::sync::Mutex<Option<(Instant, Snapshot)>>,
    pipeline: String,
    /// Up after a successful read, retrying while refreshes fail; made at the first
    /// read, so a table not read yet is not listed as connecting.
    probe: std::sync::OnceLock<Probe>,
}

impl std::fmt::Debug for LookupTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupTable")
            .field("name", &self.name)
            .field("refresh", &self.refresh)
            .field("dead_letter_misses", &self.dead_letter_misses)
            .field("keyed", &self.keyed.is_some())
            .finish()
    }
}

impl LookupTable {
    pub(crate) fn new(
        pipeline: &str,
        name: &str,
        source: Arc<dyn SourceFactory>,
        refresh: Option<Duration>,
    ) -> Self {
        LookupTable {
            name: name.into(),
            dead_letter_misses: false,
            keyed: None,
            source: Some(source),
            refresh,
            current: tokio::sync::Mutex::new(None),
            pipeline: pipeline.into(),
            probe: std::sync::OnceLock::new(),
        }
    }

    /// A lookup table read by key.
    pub(crate) fn keyed(pipeline: &str, name: &str, lookup: Arc<dyn PointLookup>) -> Self {
        LookupTable {
            name: name.into(),
            dead_letter_misses: false,
            keyed: Some(lookup),
            source: None,
            refresh: None,
            current: tokio::sync::Mutex::new(None),
            pipeline: pipeline.into(),
            probe: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        if let Some(k) = &self.keyed {
            return format!("lookup table {}: {}", self.name, k.describe());
        }
        format!(
            "lookup table {}: {}{}",
            self.name,
            self.source
                .as_ref()
                .map(|s| s.describe())
                .unwrap_or_default(),
            self.refresh
                .map(|r| format!(", refreshed every {r:?}"))
                .unwrap_or_default()
        )
    }

    fn probe(&self) -> &Probe {
        self.probe
            .get_or_init(|| Probe::new(&self.pipeline, self.name.clone(), "lookup"))
    }

    /// The snapshot to join with: loaded on first use, reloaded when older than the
    /// refresh interval.
    async fn snapshot(&self) -> crate::Result<Snapshot> {
        let mut current = self.current.lock().await;
        let due = match (&*current, self.refresh) {
            (None, _) => true,
            (Some((at, _)), Some(every)) => at.elapsed() >= every,
            (Some(_), None) => false,
        };
        if due {
            let t = Instant::now();
            let Some(source) = self.source.clone() else {
                return Ok(Arc::new(Vec::new()));
            };
            match crate::connectors::memory::read_all(&self.name, source).await {
                Ok(batches) => {
                    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                    tracing::info!(
                        table = %self.name,
                        rows,
                        millis = t.elapsed().as_millis() as u64,
                        "lookup table loaded"
                    );
                    *current = Some((Instant::now(), Arc::new(batches)));
                    self.probe().up();
                }
                Err(e) => match &mut *current {
                    Some((at, _)) => {
                        tracing::warn!(table = %self.name, error = %e, "lookup table refresh failed; keeping the previous data");
                        self.probe().retrying(&e);
                        *at = Instant::now();
                    }
                    None => {
                        return Err(crate::engine::EngineError::Invalid(format!(
                            "lookup table {}: {e}",
                            self.name
                        ))
                        .into());
                    }
                },
            }
        }
        Ok(current.as_ref().expect("loaded above").1.clone())
    }
}

/// The lookup table as DataFusion sees it: one partition yielding the snapshot.
#[derive(Debug)]
pub(crate) struct LookupPartition {
    pub(crate) schema: SchemaRef,
    pub(crate) table: Arc<LookupTable>,
}

impl PartitionStream for LookupPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        if self.table.keyed.is_some() {
            // The rows the stage fetched for this batch's keys.
            let rows = ctx
                .session_config()
                .get_extension::<LookupRows>()
                .and_then(|r| r.get(&self.table.name));
            let items: Vec<datafusion::error::Result<RecordBatch>> =
                rows.into_iter().map(Ok).collect();
            return Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::iter(items),
            ));
        }
        let table = self.table.clone();
        let batches = futures::stream::once(async move {
            table
                .snapshot()
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))
        })
        .flat_map(|r| {
            let items: Vec<datafusion::error::Result<RecordBatch>> = match r {
                Ok(s) => s.iter().cloned().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}

/// For each join of `plan` with a lookup table whose misses are dead letters: the
/// table's name and a plan of the stream side's rows that find no row in it (the same
/// join, anti). Each runs over the stage's batch like the stage's own plan.
pub(crate) fn misses(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> Vec<(String, Arc<dyn datafusion::physical_plan::ExecutionPlan>)> {
    use datafusion::common::JoinType;
    use datafusion::physical_plan::joins::HashJoinExec;
    let mut out = Vec::new();
    if let Some(join) = plan.downcast_ref::<HashJoinExec>()
        && matches!(
            join.join_type(),
            JoinType::Inner | JoinType::Left | JoinType::Right
        )
    {
        let (left, right) = (lookup_in(join.left()), lookup_in(join.right()));
        let anti = match (left, right) {
            (Some(t), None) => Some((t, JoinType::RightAnti)),
            (None, Some(t)) => Some((t, JoinType::LeftAnti)),
            _ => None,
        };
        if let Some((table, join_type)) = anti
            && let Ok(miss) = join
                .builder()
                .with_type(join_type)
                .with_projection(None)
                .reset_state()
                .build_exec()
        {
            out.push((table, miss));
        }
    }
    for child in plan.children() {
        out.extend(misses(child));
    }
    out
}

/// For each join of `plan` with a lookup table read by key: the table and a plan of
/// the stream side's key values (the join's key expression over the stream side),
/// which the stage runs over each batch to know which rows to fetch. A join that is
/// not an equality on the table's key column is refused: it could not be answered
/// by point reads.
pub(crate) fn key_plans(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    tables: &std::collections::BTreeMap<String, Arc<LookupTable>>,
) -> std::result::Result<
    Vec<(
        Arc<LookupTable>,
        Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    )>,
    String,
> {
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::joins::HashJoinExec;
    use datafusion::physical_plan::projection::ProjectionExec;
    let mut out = Vec::new();
    let keyed = |side: &Arc<dyn datafusion::physical_plan::ExecutionPlan>| {
        scanned_lookup(side, |_| true)
            .and_then(|name| tables.get(&name).cloned())
            .filter(|t| t.keyed.is_some())
    };
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        let sides = (keyed(join.left()), keyed(join.right()));
        let found = match sides {
            (Some(t), None) => Some((t, false)),
            (None, Some(t)) => Some((t, true)),
            _ => None,
        };
        if let Some((table, lookup_on_right)) = found {
            let key = table
                .keyed
                .as_ref()
                .expect("keyed")
                .key_column()
                .to_string();
            let stream_side = if lookup_on_right {
                join.left()
            } else {
                join.right()
            };
            let pair = join.on().iter().find(|(l, r)| {
                let lookup_expr = if lookup_on_right { r } else { l };
                lookup_expr
                    .downcast_ref::<Column>()
                    .is_some_and(|c| c.name() == key)
            });
            let Some((l, r)) = pair else {
                return Err(format!(
                    "lookup table {} is read by key: join it with an equality on its key column {key}                      (e.g. ON s.{key} = {}.{key})",
                    table.name, table.name
                ));
            };
            let stream_expr = if lookup_on_right { l } else { r };
            let keys = ProjectionExec::try_new(
                vec![(stream_expr.clone(), "key".to_string())],
                stream_side.clone(),
            )
            .map_err(|e| format!("lookup table {}: {e}", table.name))?;
            out.push((
                table,
                Arc::new(keys) as Arc<dyn datafusion::physical_plan::ExecutionPlan>,
            ));
        }
    }
    for child in plan.children() {
        out.extend(key_plans(child, tables)?);
    }
    Ok(out)
}

/// The name of the first lookup table a subtree scans whose description `wanted`
/// accepts (`PartitionStream` offers no downcast: the partition's `Debug` text is what
/// tells a lookup scan apart).
fn scanned_lookup(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    wanted: fn(&str) -> bool,
) -> Option<String> {
    use datafusion::physical_plan::streaming::StreamingTableExec;
    if let Some(scan) = plan.downcast_ref::<StreamingTableExec>() {
        return scan.partitions().iter().find_map(|p| {
            let d = format!("{p:?}");
            if !wanted(&d) {
                return None;
            }
            let name = d
                .split("LookupTable { name: \"")
                .nth(1)?
                .split('"')
                .next()?;
            Some(name.to_string())
        });
    }
    plan.children()
        .into_iter()
        .find_map(|c| scanned_lookup(c, wanted))
}

/// The name of the lookup table (with `on_miss = 'dead-letter'`) a subtree scans.
fn lookup_in(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> Option<String> {
    scanned_lookup(plan, |d| d.contains("dead_letter_misses: true"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::{Options, TableRequest};

    fn file_table(dir: &std::path::Path, refresh: Option<Duration>) -> LookupTable {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, true),
        ]));
        let req = TableRequest {
            env: &crate::connectors::ConnectorEnv::default(),
            table: "ref",
            schema: Some(schema),
            base_dir: dir,
        };
        let opts = Options::new(
            "ref",
            "file",
            [("path", "ref.jsonl"), ("format", "json")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        LookupTable::new(
            "lookup-test",
            "ref",
            crate::connectors::source(&req, opts).unwrap(),
            refresh,
        )
    }

    fn rows(s: &Snapshot) -> usize {
        s.iter().map(|b| b.num_rows()).sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_file_is_picked_up_after_the_refresh_interval_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ref.jsonl"), "{\"id\": 1}\n{\"id\": 2}\n").unwrap();
        let refreshed = file_table(dir.path(), Some(Duration::from_millis(1)));
        let fixed = file_table(dir.path(), None);
        assert_eq!(rows(&refreshed.snapshot().await.unwrap()), 2);
        assert_eq!(rows(&fixed.snapshot().await.unwrap()), 2);
        std::fs::write(
            dir.path().join("ref.jsonl"),
            "{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3}\n",
        )
        .unwrap();
        // The refresh is by age: let the 1 ms interval pass.
        let loaded = Instant::now();
        while loaded.elapsed() < Duration::from_millis(2) {
            tokio::task::yield_now().await;
        }
        assert_eq!(rows(&refreshed.snapshot().await.unwrap()), 3);
        assert_eq!(
            rows(&fixed.snapshot().await.unwrap()),
            2,
            "no refresh_interval: loaded once"
        );
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_previous_data_and_reports_an_outage_until_a_read_succeeds()
    {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ref.jsonl"), "{\"id\": 1}\n").unwrap();
        let t = file_table(dir.path(), Some(Duration::from_millis(1)));
        let never_loaded = file_table(dir.path(), None);
        assert_eq!(rows(&t.snapshot().await.unwrap()), 1);
        std::fs::remove_file(dir.path().join("ref.jsonl")).unwrap();
        let loaded = Instant::now();
        while loaded.elapsed() < Duration::from_millis(2) {
            tokio::task::yield_now().await;
        }
        assert_eq!(rows(&t.snapshot().await.unwrap()), 1);
        assert!(
            matches!(t.probe().state(), crate::health::State::Retrying { .. }),
            "a failed refresh is reported as an outage: {:?}",
            t.probe().state()
        );
        let err = never_loaded.snapshot().await.unwrap_err().to_string();
        assert!(err.contains("lookup table ref"), "{err}");
        // The source is back: the next refresh reads it and the outage ends.
        std::fs::write(dir.path().join("ref.jsonl"), "{\"id\": 1}\n{\"id\": 2}\n").unwrap();
        let failed = Instant::now();
        while failed.elapsed() < Duration::from_millis(2) {
            tokio::task::yield_now().await;
        }
        assert_eq!(rows(&t.snapshot().await.unwrap()), 2);
        assert_eq!(t.probe().state(), crate::health::State::Up);
    }
}
