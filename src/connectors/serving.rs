//! The `serving` sink: the latest row per key, served over HTTP on the admin port.
//!
//! Owns the in-process tables behind `GET /<route>/<key>` (the row of a key, e.g. an
//! order's current status at `/orders/1234`) and `GET /<route>?column=value` (the rows
//! whose column has that value, e.g. a customer's active orders:
//! `/orders?customer_id=7&is_final=false`). The embedded default's answer to what a
//! DynamoDB table serves in production.
//!
//! Invariants:
//! - Rows are routed by `key_field`, so each key lives in one task's map; a write
//!   replaces the key's row (a changelog's `-D`/`-U` remove it), so replaying output
//!   after a restart gives the same table: the maps are part of checkpoints and
//!   restored with them (after a change of parallelism, merged by key).
//! - With `expire_after`, a key not written for that long (wall clock) is dropped.
//! - A route is served by one table of the process; a second sink for the same route
//!   is refused when it starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use super::{ConnectorError, Options, TableRequest};
use crate::engine::{Sink, SinkFactory, TaskInfo};

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// Routes the admin endpoint serves itself; a serving table cannot take them.
const RESERVED: &[&str] = &["metrics", "livez", "readyz", "healthz", "dlq", "fallback"];

/// One task's keys: key → (row as a JSON object, when it was written).
type Partition = HashMap<String, (String, Instant)>;

/// A served table: its tasks' maps.
#[derive(Default)]
pub struct Served {
    /// The sink table that fills it.
    table: String,
    key_field: String,
    partitions: RwLock<HashMap<usize, Arc<Mutex<Partition>>>>,
}

impl Served {
    /// The row of `key`, as a JSON object.
    pub fn get(&self, key: &str) -> Option<String> {
        let parts = self.partitions.read().expect("serving partitions");
        parts.values().find_map(|p| {
            p.lock()
                .expect("serving partition")
                .get(key)
                .map(|(row, _)| row.clone())
        })
    }

    /// The rows whose columns have the given values (compared as text), at most
    /// `limit`, ordered by key.
    pub fn find(&self, filters: &[(String, String)], limit: usize) -> Vec<String> {
        let parts = self.partitions.read().expect("serving partitions");
        let mut found: Vec<(String, String)> = Vec::new();
        for p in parts.values() {
            for (key, (row, _)) in p.lock().expect("serving partition").iter() {
                let Ok(serde_json::Value::Object(o)) = serde_json::from_str(row) else {
                    continue;
                };
                let matches = filters.iter().all(|(c, v)| {
                    o.get(c).is_some_and(|x| match x {
                        serde_json::Value::String(s) => s == v,
                        other => v.as_str() == other.to_string().as_str(),
                    })
                });
                if matches {
                    found.push((key.clone(), row.clone()));
                }
            }
        }
        found.sort();
        found.into_iter().take(limit).map(|(_, r)| r).collect()
    }

    /// The key column.
    pub fn key_field(&self) -> &str {
        &self.key_field
    }
}

fn routes() -> &'static RwLock<HashMap<String, Arc<Served>>> {
    static ROUTES: std::sync::OnceLock<RwLock<HashMap<String, Arc<Served>>>> =
        std::sync::OnceLock::new();
    ROUTES.get_or_init(Default::default)
}

/// The table served at `/<route>`, if a pipeline of this process has one.
pub fn served(route: &str) -> Option<Arc<Served>> {
    routes().read().expect("serving routes").get(route).cloned()
}

/// `connector = 'serving'`: options `key_field` (required), `route` (default: the
/// table's name), `expire_after` (default: never), `latency_column` (default: none;
/// each batch's event-time age when it becomes readable, see
/// [`latency`](super::latency)).
pub fn sink(req: &TableRequest<'_>, opts: &mut Options) -> Result<Arc<dyn SinkFactory>> {
    let Some(key_field) = opts.get("key_field") else {
        return Err(opts.invalid("key_field", "", "give the column rows are served by"));
    };
    if let Some(schema) = &req.schema
        && schema.index_of(&key_field).is_err()
    {
        return Err(opts.invalid("key_field", &key_field, "no such column in the table"));
    }
    let route = opts.get("route").unwrap_or_else(|| req.table.to_string());
    if route.is_empty()
        || !route
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(opts.invalid("route", &route, "letters, digits, '_' and '-' only"));
    }
    if RESERVED.contains(&route.as_str()) {
        return Err(opts.invalid(
            "route",
            &route,
            format!("the admin endpoint serves /{route} itself"),
        ));
    }
    let expire_after = match opts.get("expire_after") {
        None => None,
        Some(v) => {
            Some(super::parse_duration(&v).map_err(|e| opts.invalid("expire_after", &v, e))?)
        }
    };
    Ok(Arc::new(ServingFactory {
        table: req.table.to_string(),
        key_field,
        route,
        expire_after,
        latency_column: super::latency::option(opts)?,
        served: Mutex::new(None),
    }))
}

struct ServingFactory {
    table: String,
    key_field: String,
    route: String,
    expire_after: Option<Duration>,
    latency_column: Option<String>,
    /// The table this factory's tasks fill, registered at the first task.
    served: Mutex<Option<Arc<Served>>>,
}

impl ServingFactory {
    /// Registers the route at the first task; refuses a route another sink serves.
    fn served(&self) -> Result<Arc<Served>> {
        let mut mine = self.served.lock().expect("serving factory");
        if let Some(s) = mine.as_ref() {
            return Ok(s.clone());
        }
        let mut all = routes().write().expect("serving routes");
        // The same table planned again (a pipeline restarted in this process) takes
        // its route back.
        if all.get(&self.route).is_some_and(|s| s.table != self.table) {
            return Err(ConnectorError::Other {
                connector: "serving",
                message: format!(
                    "table {}: route /{} is served by another table of this process",
                    self.table, self.route
                ),
            }
            .into());
        }
        let served = Arc::new(Served {
            table: self.table.clone(),
            key_field: self.key_field.clone(),
            partitions: RwLock::default(),
        });
        all.insert(self.route.clone(), served.clone());
        *mine = Some(served.clone());
        Ok(served)
    }
}

impl SinkFactory for ServingFactory {
    fn describe(&self) -> String {
        format!(
            "serving: GET /{}/<{}> on the admin endpoint{}",
            self.route,
            self.key_field,
            self.expire_after
                .map(|d| format!(", keys unwritten for {d:?} dropped"))
                .unwrap_or_default()
        )
    }

    fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        if schema.index_of(&self.key_field).is_err() {
            return Err(ConnectorError::Schema {
                table: self.table.clone(),
                message: format!("key_field {} is not a column of the query", self.key_field),
            }
            .into());
        }
        super::latency::index(&self.table, self.latency_column.as_deref(), schema).map(|_| ())
    }

    fn accepts_changelog(&self) -> bool {
        true
    }

    fn partition_by(&self) -> Vec<String> {
        vec![self.key_field.clone()]
    }

    fn create(&self, task: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let served = self.served()?;
        let partition = Arc::new(Mutex::new(Partition::new()));
        served
            .partitions
            .write()
            .expect("serving partitions")
            .insert(task.partition, partition.clone());
        let op = schema.index_of(crate::engine::OP_COLUMN).ok();
        Ok(Box::new(ServingSink {
            key: schema.index_of(&self.key_field).map_err(|_| {
                crate::engine::EngineError::Invalid(format!(
                    "serving: no column {}",
                    self.key_field
                ))
            })?,
            op,
            partition,
            expire_after: self.expire_after,
            writes: 0,
            latency: super::latency::index(&self.table, self.latency_column.as_deref(), &schema)?
                .map(|i| (i, crate::metrics::sink_latency(&task.pipeline, &task.node))),
        }))
    }
}

struct ServingSink {
    key: usize,
    op: Option<usize>,
    partition: Arc<Mutex<Partition>>,
    expire_after: Option<Duration>,
    writes: u64,
    /// The `latency_column` and the histogram its ages go to.
    latency: Option<(usize, metrics::Histogram)>,
}

#[async_trait]
impl Sink for ServingSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let data = match self.op {
            Some(op) => batch
                .project(
                    &(0..batch.num_columns())
                        .filter(|&i| i != op)
                        .collect::<Vec<_>>(),
                )
                .map_err(|e| crate::engine::EngineError::arrow("serving rows", e))?,
            None => batch.clone(),
        };
        let mut lines = Vec::new();
        crate::formats::json::encode_json_lines(&data, &mut lines)?;
        let keys = arrow::compute::cast(batch.column(self.key), &arrow::datatypes::DataType::Utf8)
            .map_err(|e| crate::engine::EngineError::arrow("serving keys", e))?;
        let keys = keys.as_string::<i32>();
        let ops = self.op.map(|i| batch.column(i).as_string::<i32>().clone());
        let now = Instant::now();
        let mut p = self.partition.lock().expect("serving partition");
        for (row, line) in lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            if keys.is_null(row) {
                continue;
            }
            let key = keys.value(row).to_string();
            let retract = ops
                .as_ref()
                .is_some_and(|o| matches!(o.value(row), "-D" | "-U"));
            if retract {
                p.remove(&key);
            } else {
                p.insert(key, (String::from_utf8_lossy(line).into_owned(), now));
            }
        }
        self.writes += 1;
        if let Some(ttl) = self.expire_after
            && self.writes.is_multiple_of(64)
        {
            p.retain(|_, (_, at)| now.duration_since(*at) < ttl);
        }
        drop(p);
        // Readable from here on: the age of the batch's oldest event.
        if let Some((i, histogram)) = &self.latency
            && let Some(seconds) = super::latency::age_of_oldest(&batch, *i)
        {
            histogram.record(seconds);
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }

    /// Upserts by key: replaying output after a restart rebuilds the same table, so
    /// nothing is held back; the checkpoint keeps the task's rows.
    fn exactly_once(&mut self) -> bool {
        true
    }

    async fn close_uncommitted(&mut self, _committed: u64) -> Result<()> {
        Ok(())
    }

    async fn pre_commit(&mut self, _id: u64) -> Result<Option<Vec<u8>>> {
        let p = self.partition.lock().expect("serving partition");
        let rows: Vec<(&String, &String)> = p.iter().map(|(k, (row, _))| (k, row)).collect();
        Ok(Some(serde_json::to_vec(&rows).map_err(|e| {
            crate::engine::EngineError::State(format!("serving: checkpointing rows: {e}"))
        })?))
    }

    async fn restore(&mut self, states: &[(usize, Vec<u8>)]) -> Result<()> {
        let now = Instant::now();
        let mut p = self.partition.lock().expect("serving partition");
        p.clear();
        for (_, bytes) in states {
            let rows: Vec<(String, String)> = serde_json::from_slice(bytes).map_err(|e| {
                crate::engine::EngineError::State(format!("serving: restoring rows: {e}"))
            })?;
            p.extend(rows.into_iter().map(|(k, row)| (k, (row, now))));
        }
        Ok(())
    }
}
