//! The DynamoDB sink (`connector = 'dynamodb'`): each row is an item keyed by the
//! table's primary key (`partition_key`, optional `sort_key`); a changelog is applied
//! by key (`+I`/`+U` put the item, `-D` deletes it, a `-U` not followed by its `+U`
//! deletes it).
//!
//! Writes are grouped into *epochs* and collapsed by key: within an epoch only a
//! key's last change is written, with the version `generation × 10⁹ + epoch` in the
//! version attribute (`_version` by default) and the condition
//! `attribute_not_exists(v) OR v <= :version`, so no write ever replaces a newer
//! version of an item (ADR 0015).
//!
//! Invariants:
//! - Exactly-once pipelines: the epoch is the checkpoint. Changes are held until the
//!   barrier (`pre_commit` seals them, with every sealed epoch not yet written, into
//!   the checkpoint), written once the checkpoint commits (`commit`), and written
//!   again from the checkpoint after a crash (`restore`): the same items with the same
//!   versions, so rewriting is idempotent, and a replayed older epoch or a fenced
//!   process's late write is refused by the condition instead of overwriting. The
//!   table then only ever holds committed results.
//! - At-least-once pipelines (no checkpoints, or `delivery: at-least-once`): every
//!   flush is an epoch, written at once.
//! - The generation is the run's start time, kept in the checkpoint: a restored
//!   pipeline keeps its generation, a pipeline started afresh writes over what an
//!   earlier run left.
//! - Rows of one key go to one sink task (the planner routes by the key columns), so
//!   one key's changes stay in order.
//! - A row that cannot be an item (a NULL or empty key, a value DynamoDB cannot hold,
//!   over 400 KB) is refused for good when it is written: a dead letter (class
//!   `sink`), the rest goes on. Throttling and outages are retried
//!   ([`Dynamo::call`]), never dropped.
//! - `write_mode = 'conditional'` (the default) sends one conditional `PutItem` or
//!   `DeleteItem` per item, `write_concurrency` at a time; `write_mode = 'batch'` sends
//!   `BatchWriteItem`s of 25 with their unprocessed items retried, without conditions
//!   (DynamoDB has none for batches): for append-only tables whose items never change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};
use futures::StreamExt;

use super::types::{self, Item, MAX_ITEM_BYTES};
use super::{Dynamo, DynamoError, DynamoSettings, TableSpec};
use crate::connectors::{Options, Result, TableRequest};
use crate::dlq::{BadRecordReason, BadRecords};
use crate::dynamodb::{describe, error_code, retriable};
use crate::engine::{OP_COLUMN, Sink, SinkFactory, TaskInfo};

/// How items are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    Conditional,
    Batch,
}

#[derive(Debug, Clone)]
pub(crate) struct DynamoSinkFactory {
    table: String,
    /// The DynamoDB table's name (prefix applied).
    table_name: String,
    partition_key: String,
    sort_key: Option<String>,
    version_attribute: String,
    mode: WriteMode,
    concurrency: usize,
    /// Global secondary indexes to create with the table: (name, pk, sk).
    indexes: Vec<(String, String, Option<String>)>,
    settings: DynamoSettings,
}

/// Builds the sink of a `connector = 'dynamodb'` table.
pub(crate) fn sink(req: &TableRequest<'_>, opts: &mut Options) -> Result<Arc<dyn SinkFactory>> {
    let settings = req.env.dynamodb.settings()?;
    let table = opts.required("table")?;
    if table.trim().is_empty() {
        return Err(opts.invalid("table", &table, "expected a table name"));
    }
    let column = |opts: &mut Options, key: &'static str, v: String| -> Result<String> {
        let v = v.trim().to_string();
        if v.is_empty() || v.contains(',') {
            return Err(opts.invalid(key, &v, "expected one column name"));
        }
        Ok(v)
    };
    let pk = opts.required("partition_key")?;
    let partition_key = column(opts, "partition_key", pk)?;
    let sort_key = match opts.get("sort_key") {
        Some(v) => Some(column(opts, "sort_key", v)?),
        None => None,
    };
    let version_attribute = match opts.get("version_attribute") {
        Some(v) => column(opts, "version_attribute", v)?,
        None => "_version".into(),
    };
    let mode = match opts.get("write_mode").as_deref().map(str::trim) {
        None | Some("conditional") => WriteMode::Conditional,
        Some("batch") => WriteMode::Batch,
        Some(other) => {
            return Err(opts.invalid(
                "write_mode",
                other,
                "expected 'conditional' (versioned PutItem/DeleteItem, the default) or 'batch' \
                 (BatchWriteItem without conditions, for append-only tables)",
            ));
        }
    };
    let concurrency: usize = opts.parse("write_concurrency", 16)?;
    if concurrency == 0 {
        return Err(opts.invalid("write_concurrency", "0", "must be at least 1"));
    }
    let mut indexes = Vec::new();
    for (name, keys) in opts.prefixed("index.") {
        let parts: Vec<String> = keys.split(',').map(|k| k.trim().to_string()).collect();
        if parts.is_empty() || parts.len() > 2 || parts.iter().any(String::is_empty) {
            return Err(opts.invalid(
                "index.*",
                &keys,
                format!("index {name}: expected 'partition_key' or 'partition_key, sort_key'"),
            ));
        }
        indexes.push((name, parts[0].clone(), parts.get(1).cloned()));
    }
    let f = DynamoSinkFactory {
        table: req.table.to_string(),
        table_name: format!("{}{}", settings.table_prefix, table.trim()),
        partition_key,
        sort_key,
        version_attribute,
        mode,
        concurrency,
        indexes,
        settings,
    };
    if let Some(declared) = &req.schema {
        f.check_schema(declared)?;
    }
    Ok(Arc::new(f))
}

impl DynamoSinkFactory {
    fn schema_error(&self, message: String) -> crate::Error {
        crate::connectors::ConnectorError::Schema {
            table: self.table.clone(),
            message,
        }
        .into()
    }

    /// The table's key and indexes, typed from the sink's input columns.
    fn spec(&self, schema: &Schema) -> std::result::Result<TableSpec, String> {
        let typed = |c: &str| types::key_type(schema, c).map(|t| (c.to_string(), t));
        Ok(TableSpec {
            name: self.table_name.clone(),
            partition_key: typed(&self.partition_key)?,
            sort_key: self.sort_key.as_deref().map(typed).transpose()?,
            indexes: self
                .indexes
                .iter()
                .map(|(n, pk, sk)| {
                    Ok((n.clone(), typed(pk)?, sk.as_deref().map(typed).transpose()?))
                })
                .collect::<std::result::Result<_, String>>()?,
        })
    }
}

impl SinkFactory for DynamoSinkFactory {
    fn describe(&self) -> String {
        format!(
            "dynamodb table {} (key {}{}, {} writes)",
            self.table_name,
            self.partition_key,
            self.sort_key
                .as_ref()
                .map(|s| format!(", {s}"))
                .unwrap_or_default(),
            match self.mode {
                WriteMode::Conditional => "versioned conditional",
                WriteMode::Batch => "batched",
            }
        )
    }

    fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        for f in schema.fields() {
            if f.name() == OP_COLUMN {
                continue;
            }
            if *f.name() == self.version_attribute {
                return Err(self.schema_error(format!(
                    "column {} is the version attribute the sink writes: rename it or set version_attribute",
                    f.name()
                )));
            }
            types::check_type(f.name(), f.data_type()).map_err(|e| self.schema_error(e))?;
        }
        self.spec(schema).map_err(|e| self.schema_error(e))?;
        Ok(())
    }

    fn accepts_changelog(&self) -> bool {
        true
    }

    fn partition_by(&self) -> Vec<String> {
        std::iter::once(self.partition_key.clone())
            .chain(self.sort_key.clone())
            .collect()
    }

    fn create(&self, task: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let spec = self.spec(&schema).map_err(|e| self.schema_error(e))?;
        let data_columns: Vec<usize> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name() != OP_COLUMN)
            .map(|(i, _)| i)
            .collect();
        let op_column = schema.index_of(OP_COLUMN).ok();
        let probe = crate::health::Probe::new(
            &task.pipeline,
            format!("{}[{}]", task.node, task.partition),
            "dynamodb",
        );
        Ok(Box::new(DynamoSink {
            factory: self.clone(),
            spec,
            data_columns,
            op_column,
            dynamo: None,
            exactly_once: false,
            generation: crate::types::run_generation(),
            pending: Changes::default(),
            sealed: Vec::new(),
            last_epoch: 0,
            bad: None,
            probe,
            writes: crate::metrics::dynamodb_writes(&task.pipeline, &self.table_name),
            stale: crate::metrics::dynamodb_stale_writes(&task.pipeline, &self.table_name),
            latency: crate::metrics::sink_latency(&task.pipeline, &task.node),
        }))
    }

    fn preflight(&self) -> futures::future::BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let dynamo = Dynamo::connect(&self.settings).await?;
            dynamo
                .client
                .describe_table()
                .table_name(&self.table_name)
                .send()
                .await
                .map(|_| ())
                .or_else(|e| match error_code(&e).as_deref() {
                    Some("ResourceNotFoundException") if self.settings.create_tables => Ok(()),
                    _ => Err(DynamoError::request(&self.table_name, "DescribeTable", &e).into()),
                })
        })
    }
}

/// Epochs fit below this (see [`crate::types::GENERATION_EPOCHS`]).
const EPOCHS: u64 = crate::types::GENERATION_EPOCHS;

/// A key's last change in an epoch.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    Put(Item),
    /// The key's attributes.
    Delete(Item),
}

/// Changes by key (the key's values, encoded), in the order first seen.
type Changes = indexmap_lite::OrderedChanges;

struct DynamoSink {
    factory: DynamoSinkFactory,
    spec: TableSpec,
    /// The columns that become attributes (all but the op column).
    data_columns: Vec<usize>,
    op_column: Option<usize>,
    dynamo: Option<Dynamo>,
    exactly_once: bool,
    generation: u64,
    /// The open epoch's changes.
    pending: Changes,
    /// Epochs sealed (at a barrier or a flush) and not written yet, oldest first.
    sealed: Vec<(u64, Changes)>,
    /// The last epoch sealed.
    last_epoch: u64,
    bad: Option<BadRecords>,
    probe: crate::health::Probe,
    writes: metrics::Counter,
    stale: metrics::Counter,
    latency: metrics::Histogram,
}

/// Changes by key, last change winning, in first-seen order (so writes go out in
/// roughly the order rows came).
mod indexmap_lite {
    use super::Change;
    use std::collections::HashMap;

    #[derive(Debug, Default, Clone)]
    pub(super) struct OrderedChanges {
        index: HashMap<Vec<u8>, usize>,
        changes: Vec<Change>,
    }

    impl OrderedChanges {
        pub(super) fn insert(&mut self, key: Vec<u8>, change: Change) {
            match self.index.get(&key) {
                Some(&i) => self.changes[i] = change,
                None => {
                    self.index.insert(key, self.changes.len());
                    self.changes.push(change);
                }
            }
        }

        pub(super) fn len(&self) -> usize {
            self.changes.len()
        }

        pub(super) fn is_empty(&self) -> bool {
            self.changes.is_empty()
        }

        pub(super) fn iter(&self) -> impl Iterator<Item = &Change> {
            self.changes.iter()
        }

        pub(super) fn into_changes(self) -> Vec<Change> {
            self.changes
        }
    }
}

impl DynamoSink {
    async fn dynamo(&mut self) -> Result<Dynamo> {
        if let Some(d) = &self.dynamo {
            return Ok(d.clone());
        }
        let d = Dynamo::connect(&self.factory.settings).await?;
        d.ensure_table(&self.spec).await?;
        self.probe.up();
        self.dynamo = Some(d.clone());
        Ok(d)
    }

    fn version(&self, epoch: u64) -> AttributeValue {
        AttributeValue::N(
            // 10⁹ epochs are 3 years of checkpoints every 100 ms.
            (self.generation * EPOCHS + epoch.min(EPOCHS - 1)).to_string(),
        )
    }

    fn refuse(&mut self, batch: &RecordBatch, row: usize, why: &str) {
        if let Some(bad) = &mut self.bad {
            bad.report_row(
                BadRecordReason::Sink,
                &format!("dynamodb table {}: {why}", self.factory.table_name),
                batch,
                row,
                None,
            );
        }
    }

    /// The encoded key of an item (for collapsing), or why it has none.
    fn key_of(&self, item: &Item) -> std::result::Result<(Vec<u8>, Item), String> {
        let mut encoded = Vec::new();
        let mut key = Item::new();
        let names =
            std::iter::once(&self.factory.partition_key).chain(self.factory.sort_key.as_ref());
        for name in names {
            let v = item
                .get(name)
                .ok_or_else(|| format!("key attribute {name} is NULL"))?;
            match v {
                AttributeValue::S(s) if s.is_empty() => {
                    return Err(format!("key attribute {name} is an empty string"));
                }
                AttributeValue::S(s) => {
                    encoded.extend_from_slice(format!("S{}:{s}", s.len()).as_bytes())
                }
                AttributeValue::N(n) => {
                    encoded.extend_from_slice(format!("N{}:{n}", n.len()).as_bytes())
                }
                AttributeValue::B(b) => {
                    encoded.extend_from_slice(format!("B{}:", b.as_ref().len()).as_bytes());
                    encoded.extend_from_slice(b.as_ref());
                }
                other => {
                    return Err(format!(
                        "key attribute {name} is {other:?}, not a string, number or binary"
                    ));
                }
            }
            key.insert(name.clone(), v.clone());
        }
        Ok((encoded, key))
    }

    /// Seals the open epoch as `epoch`.
    fn seal(&mut self, epoch: u64) {
        self.last_epoch = epoch;
        if !self.pending.is_empty() {
            let changes = std::mem::take(&mut self.pending);
            self.sealed.push((epoch, changes));
        }
    }

    /// Writes every sealed epoch up to `upto` (all when `None`), oldest first.
    async fn write_sealed(&mut self, upto: Option<u64>) -> Result<()> {
        while let Some((epoch, _)) = self.sealed.first() {
            if upto.is_some_and(|u| *epoch > u) {
                break;
            }
            let (epoch, changes) = self.sealed.remove(0);
            let t = Instant::now();
            let n = changes.len();
            self.write_epoch(epoch, changes).await?;
            self.writes.increment(n as u64);
            self.latency.record(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn write_epoch(&mut self, epoch: u64, changes: Changes) -> Result<()> {
        let dynamo = self.dynamo().await?;
        let version = self.version(epoch);
        let refused = match self.factory.mode {
            WriteMode::Conditional => self.write_conditional(&dynamo, &version, changes).await?,
            WriteMode::Batch => self.write_batched(&dynamo, &version, changes).await?,
        };
        for (change, why) in refused {
            let item = match &change {
                Change::Put(i) | Change::Delete(i) => i,
            };
            tracing::error!(table = %self.factory.table_name, error = %why, "dynamodb refused an item");
            if let Some(bad) = &mut self.bad {
                let json = serde_json::to_vec(&item_json(item)).unwrap_or_default();
                bad.report_with(crate::dlq::Report {
                    reason: BadRecordReason::Sink,
                    detail: &format!("dynamodb table {}: {why}", self.factory.table_name),
                    payload: &json,
                    format: crate::dlq::PayloadFormat::Row,
                    event_time: None,
                });
            }
        }
        Ok(())
    }

    /// One conditional request per change; returns the changes refused for good.
    async fn write_conditional(
        &self,
        dynamo: &Dynamo,
        version: &AttributeValue,
        changes: Changes,
    ) -> Result<Vec<(Change, String)>> {
        let table = &self.factory.table_name;
        let v = &self.factory.version_attribute;
        let condition = "attribute_not_exists(#v) OR #v <= :v";
        let probe = &self.probe;
        let stale = &self.stale;
        let results = futures::stream::iter(changes.into_changes())
            .map(|change| async move {
                let outcome = dynamo
                    .call(Some(probe), || async {
                        let sent = match &change {
                            Change::Put(item) => {
                                let mut item = item.clone();
                                item.insert(v.clone(), version.clone());
                                dynamo
                                    .client
                                    .put_item()
                                    .table_name(table)
                                    .set_item(Some(item))
                                    .condition_expression(condition)
                                    .expression_attribute_names("#v", v)
                                    .expression_attribute_values(":v", version.clone())
                                    .send()
                                    .await
                                    .map(|_| ())
                                    .map_err(|e| (error_code(&e), retriable(&e), describe(&e)))
                            }
                            Change::Delete(key) => dynamo
                                .client
                                .delete_item()
                                .table_name(table)
                                .set_key(Some(key.clone()))
                                .condition_expression(condition)
                                .expression_attribute_names("#v", v)
                                .expression_attribute_values(":v", version.clone())
                                .send()
                                .await
                                .map(|_| ())
                                .map_err(|e| (error_code(&e), retriable(&e), describe(&e))),
                        };
                        match sent {
                            Ok(()) => Ok(Ok(())),
                            Err((Some(code), _, _))
                                if code == "ConditionalCheckFailedException" =>
                            {
                                // A newer version is there already: this write is stale.
                                stale.increment(1);
                                Ok(Ok(()))
                            }
                            Err((Some(code), _, message)) if code == "ValidationException" => {
                                Ok(Err(message))
                            }
                            Err((_, retriable, message)) => Err(DynamoError::Request {
                                table: table.clone(),
                                what: "PutItem/DeleteItem",
                                message,
                                retriable,
                            }),
                        }
                    })
                    .await;
                (change, outcome)
            })
            .buffer_unordered(self.factory.concurrency)
            .collect::<Vec<_>>()
            .await;
        let mut refused = Vec::new();
        for (change, outcome) in results {
            match outcome? {
                Ok(()) => {}
                Err(why) => refused.push((change, why)),
            }
        }
        Ok(refused)
    }

    /// `BatchWriteItem`s of 25, `write_concurrency` at a time, unprocessed items sent
    /// again with backoff; a batch DynamoDB refuses is sent item by item to find the
    /// item at fault.
    async fn write_batched(
        &self,
        dynamo: &Dynamo,
        version: &AttributeValue,
        changes: Changes,
    ) -> Result<Vec<(Change, String)>> {
        let v = &self.factory.version_attribute;
        let requests: Vec<(Change, WriteRequest)> = changes
            .into_changes()
            .into_iter()
            .map(|change| {
                let request = match &change {
                    Change::Put(item) => {
                        let mut item = item.clone();
                        item.insert(v.clone(), version.clone());
                        WriteRequest::builder()
                            .put_request(
                                PutRequest::builder()
                                    .set_item(Some(item))
                                    .build()
                                    .expect("item set"),
                            )
                            .build()
                    }
                    Change::Delete(key) => WriteRequest::builder()
                        .delete_request(
                            DeleteRequest::builder()
                                .set_key(Some(key.clone()))
                                .build()
                                .expect("key set"),
                        )
                        .build(),
                };
                (change, request)
            })
            .collect();
        let chunks: Vec<Vec<(Change, WriteRequest)>> =
            requests.chunks(25).map(|c| c.to_vec()).collect();
        let results = futures::stream::iter(chunks)
            .map(|chunk| async move {
                let requests: Vec<WriteRequest> = chunk.iter().map(|(_, r)| r.clone()).collect();
                match batch_write(dynamo, &self.factory.table_name, &self.probe, requests).await? {
                    Ok(()) => Ok(Vec::new()),
                    Err(BatchRefused(_)) => {
                        // Find the item at fault: each on its own.
                        let mut refused = Vec::new();
                        for (change, request) in chunk {
                            if let Err(BatchRefused(why)) = batch_write(
                                dynamo,
                                &self.factory.table_name,
                                &self.probe,
                                vec![request],
                            )
                            .await?
                            {
                                refused.push((change, why));
                            }
                        }
                        Ok(refused)
                    }
                }
            })
            .buffer_unordered(self.factory.concurrency)
            .collect::<Vec<std::result::Result<Vec<_>, crate::Error>>>()
            .await;
        let mut refused = Vec::new();
        for r in results {
            refused.extend(r?);
        }
        Ok(refused)
    }
}

/// DynamoDB refused a batch (a validation error): no item of it was written.
struct BatchRefused(String);

/// One `BatchWriteItem`, its unprocessed items sent again (with backoff) until none
/// is left. Outages are retried by [`Dynamo::call`] (an outage past its timeout is the
/// outer error: the pipeline fails, nothing is dropped); a refusal is the inner one.
async fn batch_write(
    dynamo: &Dynamo,
    table: &str,
    probe: &crate::health::Probe,
    mut requests: Vec<WriteRequest>,
) -> Result<std::result::Result<(), BatchRefused>> {
    let mut backoff = Duration::from_millis(25);
    while !requests.is_empty() {
        let sent = dynamo
            .call(Some(probe), || async {
                match dynamo
                    .client
                    .batch_write_item()
                    .request_items(table, requests.clone())
                    .send()
                    .await
                {
                    Ok(out) => Ok(Ok(out
                        .unprocessed_items
                        .and_then(|mut m| m.remove(table))
                        .unwrap_or_default())),
                    Err(e) if error_code(&e).as_deref() == Some("ValidationException") => {
                        Ok(Err(describe(&e)))
                    }
                    Err(e) => Err(DynamoError::request(table, "BatchWriteItem", &e)),
                }
            })
            .await;
        match sent {
            Ok(Ok(unprocessed)) => {
                if !unprocessed.is_empty() {
                    tracing::debug!(
                        table,
                        unprocessed = unprocessed.len(),
                        "dynamodb left items unprocessed; sending them again"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(dynamo.settings.max_backoff.max(backoff));
                }
                requests = unprocessed;
            }
            Ok(Err(why)) => return Ok(Err(BatchRefused(why))),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Ok(()))
}

/// DynamoDB JSON (`{"S": "…"}`) of an item, for the checkpoint and dead letters.
fn item_json(item: &Item) -> serde_json::Value {
    serde_json::Value::Object(
        item.iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &AttributeValue) -> serde_json::Value {
    use base64::Engine;
    use serde_json::json;
    match v {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => {
            json!({ "B": base64::engine::general_purpose::STANDARD.encode(b.as_ref()) })
        }
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::L(l) => json!({ "L": l.iter().map(value_json).collect::<Vec<_>>() }),
        AttributeValue::M(m) => json!({ "M": item_json(m) }),
        _ => json!({ "NULL": true }),
    }
}

fn value_from_json(v: &serde_json::Value) -> std::result::Result<AttributeValue, String> {
    use base64::Engine;
    let (tag, inner) = v
        .as_object()
        .and_then(|o| o.iter().next())
        .ok_or_else(|| format!("not a DynamoDB value: {v}"))?;
    Ok(match (tag.as_str(), inner) {
        ("S", serde_json::Value::String(s)) => AttributeValue::S(s.clone()),
        ("N", serde_json::Value::String(n)) => AttributeValue::N(n.clone()),
        ("B", serde_json::Value::String(b)) => {
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| e.to_string())?,
            ))
        }
        ("BOOL", serde_json::Value::Bool(b)) => AttributeValue::Bool(*b),
        ("NULL", _) => AttributeValue::Null(true),
        ("L", serde_json::Value::Array(l)) => AttributeValue::L(
            l.iter()
                .map(value_from_json)
                .collect::<std::result::Result<_, _>>()?,
        ),
        ("M", m) => AttributeValue::M(item_from_json(m)?),
        _ => return Err(format!("not a DynamoDB value: {v}")),
    })
}

fn item_from_json(v: &serde_json::Value) -> std::result::Result<Item, String> {
    v.as_object()
        .ok_or_else(|| format!("not an item: {v}"))?
        .iter()
        .map(|(k, v)| Ok((k.clone(), value_from_json(v)?)))
        .collect()
}

/// What a checkpoint holds for one sink task: its generation and the epochs sealed
/// and not yet known to be written.
#[derive(serde::Serialize, serde::Deserialize)]
struct Held {
    generation: u64,
    last_epoch: u64,
    /// (epoch, [(put?, item or key)]).
    epochs: Vec<(u64, Vec<(bool, serde_json::Value)>)>,
}

impl DynamoSink {
    fn held(&self) -> Result<Vec<u8>> {
        let held = Held {
            generation: self.generation,
            last_epoch: self.last_epoch,
            epochs: self
                .sealed
                .iter()
                .map(|(epoch, changes)| {
                    (
                        *epoch,
                        changes
                            .iter()
                            .map(|c| match c {
                                Change::Put(i) => (true, item_json(i)),
                                Change::Delete(k) => (false, item_json(k)),
                            })
                            .collect(),
                    )
                })
                .collect(),
        };
        serde_json::to_vec(&held).map_err(|e| {
            crate::connectors::ConnectorError::Other {
                connector: "dynamodb",
                message: format!(
                    "table {}: encoding the checkpoint: {e}",
                    self.factory.table_name
                ),
            }
            .into()
        })
    }

    fn restore_held(&mut self, bytes: &[u8]) -> Result<Vec<(u64, Changes)>> {
        let corrupt = |e: String| -> crate::Error {
            crate::connectors::ConnectorError::Other {
                connector: "dynamodb",
                message: format!(
                    "table {}: restoring the checkpoint: {e}",
                    self.factory.table_name
                ),
            }
            .into()
        };
        let held: Held = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        self.generation = held.generation;
        self.last_epoch = self.last_epoch.max(held.last_epoch);
        let mut out = Vec::new();
        for (epoch, changes) in held.epochs {
            let mut c = Changes::default();
            for (put, v) in changes {
                let item = item_from_json(&v).map_err(&corrupt)?;
                let (key, _) = self.key_of(&item).map_err(&corrupt)?;
                c.insert(
                    key,
                    if put {
                        Change::Put(item)
                    } else {
                        Change::Delete(item)
                    },
                );
            }
            out.push((epoch, c));
        }
        Ok(out)
    }
}

#[async_trait]
impl Sink for DynamoSink {
    fn report_refusals_to(&mut self, bad: BadRecords) {
        self.bad = Some(bad);
    }

    fn exactly_once(&mut self) -> bool {
        self.exactly_once = true;
        true
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if self.dynamo.is_none() {
            // Fail early on a missing table or bad credentials, before holding rows.
            self.dynamo().await?;
        }
        let data = batch
            .project(&self.data_columns)
            .map_err(|e| crate::engine::EngineError::Invalid(format!("dynamodb sink: {e}")))?;
        let ops = self
            .op_column
            .map(|i| batch.column(i).as_string::<i32>().clone());
        for row in 0..data.num_rows() {
            let delete = ops
                .as_ref()
                .is_some_and(|o| matches!(o.value(row), "-D" | "-U"));
            let item = match types::item(&data, row) {
                Ok(item) => item,
                Err(why) => {
                    self.refuse(&data, row, &why);
                    continue;
                }
            };
            let (key, key_item) = match self.key_of(&item) {
                Ok(k) => k,
                Err(why) => {
                    self.refuse(&data, row, &why);
                    continue;
                }
            };
            if delete {
                self.pending.insert(key, Change::Delete(key_item));
                continue;
            }
            let size = types::item_size(&item) + self.factory.version_attribute.len() + 21;
            if size > MAX_ITEM_BYTES {
                self.refuse(
                    &data,
                    row,
                    &format!("the item is {size} bytes, over DynamoDB's limit of {MAX_ITEM_BYTES}"),
                );
                continue;
            }
            self.pending.insert(key, Change::Put(item));
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.exactly_once {
            return Ok(());
        }
        if !self.pending.is_empty() {
            let epoch = self.last_epoch + 1;
            self.seal(epoch);
        }
        self.write_sealed(None).await
    }

    async fn pre_commit(&mut self, id: u64) -> Result<Option<Vec<u8>>> {
        if !self.exactly_once {
            self.flush().await?;
            return Ok(None);
        }
        self.seal(id);
        Ok(Some(self.held()?))
    }

    async fn commit(&mut self, id: u64) -> Result<()> {
        self.write_sealed(Some(id)).await
    }

    async fn restore(&mut self, states: &[(usize, Vec<u8>)]) -> Result<()> {
        let mut epochs: BTreeMap<u64, Changes> = BTreeMap::new();
        let mut generation = None;
        for (_, bytes) in states {
            let restored = self.restore_held(bytes)?;
            generation = Some(generation.unwrap_or(0).max(self.generation));
            for (epoch, changes) in restored {
                let merged = epochs.entry(epoch).or_default();
                for c in changes.into_changes() {
                    let item = match &c {
                        Change::Put(i) | Change::Delete(i) => i,
                    };
                    let (key, _) = self.key_of(item).map_err(|e| {
                        crate::engine::EngineError::Invalid(format!("dynamodb sink restore: {e}"))
                    })?;
                    merged.insert(key, c);
                }
            }
        }
        if let Some(g) = generation {
            self.generation = g;
        }
        self.sealed = epochs.into_iter().collect();
        // Everything the restored checkpoint holds was committed: write it (again).
        self.write_sealed(None).await
    }

    async fn close_uncommitted(&mut self, committed: u64) -> Result<()> {
        self.write_sealed(Some(committed)).await?;
        self.sealed.clear();
        self.pending = Changes::default();
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        let epoch = self.last_epoch + 1;
        self.seal(epoch);
        self.write_sealed(None).await
    }
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
