//! A DynamoDB table as a lookup table (`connector = 'dynamodb', lookup = 'true'`): read
//! by key with `BatchGetItem` for the keys of each batch, through a bounded cache with
//! a time to live, instead of being loaded whole.
//!
//! Invariants:
//! - A key is read at most once per `cache_ttl` (found or not: a miss is cached too),
//!   so a changed or added item is seen at most `cache_ttl` after it changed; the
//!   cache holds at most `cache_size` keys (least recently used go first).
//! - An unreachable or throttling table is an outage: the batch waits (retried with
//!   backoff, reported in the health table) and no row is joined without its item;
//!   unprocessed keys are asked again until none is left.
//! - An item whose attributes do not fit the declared columns is left out (a miss
//!   for the join), logged and counted (`tributary_lookup_bad_items_total`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use futures::StreamExt;

use super::types::{self, Item};
use super::{Dynamo, DynamoError, DynamoSettings};
use crate::connectors::{Options, Result, TableRequest};
use crate::engine::PointLookup;

/// Keys per `BatchGetItem` (DynamoDB's limit).
const GET_BATCH: usize = 100;
/// `BatchGetItem`s in flight at once.
const GET_CONCURRENCY: usize = 8;

pub(crate) struct DynamoLookup {
    table: String,
    table_name: String,
    key: String,
    schema: SchemaRef,
    consistent: bool,
    ttl: Duration,
    settings: DynamoSettings,
    dynamo: tokio::sync::OnceCell<Dynamo>,
    /// The key (in the row format) → its item as a row of a decoded batch, or `None`
    /// for no item.
    cache: moka::sync::Cache<Vec<u8>, Option<Cached>>,
    probe: std::sync::OnceLock<crate::health::Probe>,
    pipeline: String,
    metrics: crate::metrics::LookupMetrics,
}

/// Builds a DynamoDB lookup table: its columns are declared, `key` names the
/// partition key column the stream joins on.
pub(crate) fn lookup_table(
    pipeline: &str,
    req: &TableRequest<'_>,
    opts: &mut Options,
) -> Result<Arc<dyn PointLookup>> {
    let settings = req.env.dynamodb.settings()?;
    let table = opts.required("table")?;
    let key = opts.required("key")?.trim().to_string();
    let cache_size: u64 = opts.parse("cache_size", 100_000)?;
    let ttl = opts.parse_duration("cache_ttl", Duration::from_secs(60))?;
    let consistent = opts.parse_bool("consistent_read", false)?;
    let schema = req.schema.clone().ok_or_else(|| {
        crate::connectors::ConnectorError::Schema {
            table: req.table.to_string(),
            message: "a dynamodb lookup table declares its columns: CREATE TABLE name (col TYPE, …) WITH (…)"
                .into(),
        }
    })?;
    types::key_type(&schema, &key).map_err(|e| opts.invalid("key", &key, e))?;
    for f in schema.fields() {
        types::check_type(f.name(), f.data_type()).map_err(|message| {
            crate::connectors::ConnectorError::Schema {
                table: req.table.to_string(),
                message,
            }
        })?;
    }
    Ok(Arc::new(DynamoLookup {
        table: req.table.to_string(),
        table_name: format!("{}{}", settings.table_prefix, table.trim()),
        key,
        schema,
        consistent,
        ttl,
        cache: moka::sync::Cache::builder()
            .max_capacity(if ttl.is_zero() { 0 } else { cache_size })
            .time_to_live(ttl.max(Duration::from_millis(1)))
            .build(),
        settings,
        dynamo: tokio::sync::OnceCell::new(),
        probe: std::sync::OnceLock::new(),
        pipeline: pipeline.to_string(),
        metrics: crate::metrics::lookup(pipeline, req.table),
    }))
}

impl DynamoLookup {
    fn probe(&self) -> &crate::health::Probe {
        self.probe
            .get_or_init(|| crate::health::Probe::new(&self.pipeline, self.table.clone(), "lookup"))
    }

    async fn dynamo(&self) -> std::result::Result<&Dynamo, DynamoError> {
        self.dynamo
            .get_or_try_init(|| Dynamo::connect(&self.settings))
            .await
    }

    /// Reads `keys` (distinct) with `BatchGetItem`s; returns encoded key → item for
    /// the keys that have one.
    async fn fetch(
        &self,
        keys: Vec<(String, AttributeValue)>,
    ) -> std::result::Result<std::collections::HashMap<String, Item>, DynamoError> {
        let dynamo = self.dynamo().await?;
        let chunks: Vec<Vec<(String, AttributeValue)>> =
            keys.chunks(GET_BATCH).map(|c| c.to_vec()).collect();
        let results = futures::stream::iter(chunks)
            .map(|chunk| self.fetch_chunk(dynamo, chunk))
            .buffer_unordered(GET_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut found = std::collections::HashMap::new();
        for r in results {
            found.extend(r?);
        }
        Ok(found)
    }

    async fn fetch_chunk(
        &self,
        dynamo: &Dynamo,
        chunk: Vec<(String, AttributeValue)>,
    ) -> std::result::Result<Vec<(String, Item)>, DynamoError> {
        let mut wanted: Vec<Item> = chunk
            .iter()
            .map(|(_, v)| [(self.key.clone(), v.clone())].into())
            .collect();
        let mut found = Vec::new();
        let mut backoff = Duration::from_millis(25);
        while !wanted.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(wanted.clone()))
                .consistent_read(self.consistent)
                .build()
                .expect("keys set");
            let t = Instant::now();
            let out = dynamo
                .call(Some(self.probe()), || async {
                    dynamo
                        .client
                        .batch_get_item()
                        .request_items(&self.table_name, request.clone())
                        .send()
                        .await
                        .map_err(|e| DynamoError::request(&self.table_name, "BatchGetItem", &e))
                })
                .await?;
            self.metrics.latency.record(t.elapsed().as_secs_f64());
            for item in out
                .responses
                .and_then(|mut r| r.remove(&self.table_name))
                .unwrap_or_default()
            {
                if let Some(k) = item.get(&self.key).and_then(encode) {
                    found.push((k, item));
                }
            }
            wanted = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table_name))
                .map(|k| k.keys)
                .unwrap_or_default();
            if !wanted.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(dynamo.settings.max_backoff.max(backoff));
            }
        }
        Ok(found)
    }
}

/// A key value as a cache key (its type and text).
fn encode(v: &AttributeValue) -> Option<String> {
    match v {
        AttributeValue::S(s) => Some(format!("S{s}")),
        AttributeValue::N(n) => Some(format!("N{}", canonical_number(n))),
        AttributeValue::B(b) => Some(format!("B{}", String::from_utf8_lossy(b.as_ref()))),
        _ => None,
    }
}

/// DynamoDB returns numbers normalised (`1.50` → `1.5`); compare them that way.
fn canonical_number(n: &str) -> String {
    if n.contains('.') && !n.contains(['e', 'E']) {
        let t = n.trim_end_matches('0').trim_end_matches('.');
        if t.is_empty() || t == "-" {
            "0".into()
        } else {
            t.to_string()
        }
    } else {
        n.to_string()
    }
}

#[async_trait::async_trait]
impl PointLookup for DynamoLookup {
    fn describe(&self) -> String {
        format!(
            "dynamodb table {} read by {} (cache {}, ttl {:?})",
            self.table_name,
            self.key,
            self.cache.policy().max_capacity().unwrap_or(0),
            self.ttl
        )
    }

    fn key_column(&self) -> &str {
        &self.key
    }

    async fn get(&self, keys: &ArrayRef) -> crate::Result<RecordBatch> {
        let invalid = |e: String| -> crate::Error {
            crate::engine::EngineError::Invalid(format!("lookup table {}: keys: {e}", self.table))
                .into()
        };
        // The stream's key as the table's key column type (the join may have coerced it),
        // in the row format: its bytes are the cache key, so repeats are found without
        // building a DynamoDB value per row.
        let want = self
            .schema
            .field_with_name(&self.key)
            .map(|f| f.data_type().clone())
            .expect("checked at plan time");
        let keys = arrow::compute::cast(keys, &want).map_err(|e| invalid(e.to_string()))?;
        let converter = arrow::row::RowConverter::new(vec![arrow::row::SortField::new(want)])
            .map_err(|e| invalid(e.to_string()))?;
        let rows = converter
            .convert_columns(std::slice::from_ref(&keys))
            .map_err(|e| invalid(e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        let mut hits: Vec<Cached> = Vec::new();
        let mut missing: Vec<(Vec<u8>, AttributeValue)> = Vec::new();
        for (row, key) in rows.iter().enumerate() {
            let bytes = key.data();
            if keys.is_null(row) || !seen.insert(bytes) {
                continue;
            }
            match self.cache.get(bytes) {
                Some(hit) => {
                    self.metrics.hits.increment(1);
                    hits.extend(hit);
                }
                None => {
                    if let Ok(Some(v)) = types::value(keys.as_ref(), row) {
                        missing.push((bytes.to_vec(), v));
                    }
                }
            }
        }
        if !missing.is_empty() {
            self.metrics.fetched.increment(missing.len() as u64);
            let wanted: Vec<(String, AttributeValue)> = missing
                .iter()
                .filter_map(|(_, v)| Some((encode(v)?, v.clone())))
                .collect();
            let found = self.fetch(wanted).await?;
            // The items found, decoded once into one batch that the cache points into.
            let mut order: Vec<&String> = found.keys().collect();
            order.sort();
            let items: Vec<&Item> = order.iter().map(|k| &found[*k]).collect();
            let (decoded, bad) = types::batch(&self.schema, &items);
            let decoded = Arc::new(decoded);
            let mut row_of = std::collections::HashMap::new();
            let mut next = 0;
            for (i, k) in order.iter().enumerate() {
                if let Some((_, why)) = bad.iter().find(|(b, _)| *b == i) {
                    self.metrics.bad_items.increment(1);
                    tracing::warn!(table = %self.table, key = %k, error = %why,
                        "a lookup item does not fit the table's columns; joined as a miss");
                    continue;
                }
                row_of.insert(k.as_str(), next);
                next += 1;
            }
            for (bytes, v) in missing {
                let cached = encode(&v)
                    .and_then(|k| row_of.get(k.as_str()).copied())
                    .map(|row| (decoded.clone(), row));
                if cached.is_none() {
                    self.metrics.not_found.increment(1);
                }
                if !self.ttl.is_zero() {
                    self.cache.insert(bytes, cached.clone());
                }
                hits.extend(cached);
            }
        }
        // One batch of the rows found, taken from the batches they were decoded into.
        let mut batches: Vec<&RecordBatch> = Vec::new();
        let mut index_of: std::collections::HashMap<*const RecordBatch, usize> = Default::default();
        let mut picks = Vec::with_capacity(hits.len());
        for (batch, row) in &hits {
            let i = *index_of.entry(Arc::as_ptr(batch)).or_insert_with(|| {
                batches.push(batch.as_ref());
                batches.len() - 1
            });
            picks.push((i, *row));
        }
        if picks.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        arrow::compute::interleave_record_batch(&batches, &picks)
            .map_err(|e| invalid(e.to_string()))
    }
}

/// A cached item: the batch it was decoded into and its row there.
type Cached = (Arc<RecordBatch>, usize);

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    fn lookup(settings: &DynamoSettings, ttl: &str) -> Arc<dyn PointLookup> {
        let env = crate::connectors::ConnectorEnv {
            dynamodb: crate::connectors::dynamodb::DynamoConfig {
                region: "us-east-1".into(),
                endpoint: settings.endpoint.clone().unwrap(),
                table_prefix: settings.table_prefix.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let req = TableRequest {
            table: "ref",
            env: &env,
            schema: Some(schema),
            base_dir: std::path::Path::new("."),
        };
        let mut opts = Options::new(
            "ref",
            "dynamodb",
            [("table", "ref"), ("key", "id"), ("cache_ttl", ttl)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let l = lookup_table("lookup-test", &req, &mut opts).unwrap();
        opts.finish().unwrap();
        l
    }

    async fn put(d: &Dynamo, id: i64, name: &str) {
        d.client
            .put_item()
            .table_name(d.table_name("ref"))
            .item("id", AttributeValue::N(id.to_string()))
            .item("name", AttributeValue::S(name.into()))
            .send()
            .await
            .unwrap();
    }

    fn names(b: &RecordBatch) -> Vec<(i64, String)> {
        let mut out: Vec<(i64, String)> = (0..b.num_rows())
            .map(|i| {
                (
                    b.column(0)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .value(i),
                    b.column(1).as_string::<i32>().value(i).to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Keys are read once per TTL, found or not: a changed item (and a new one) is
    /// seen only after the TTL since it was read; repeats and NULLs in the keys are
    /// fine; unprocessed keys and throttling (injected) are asked again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn items_are_read_by_key_and_a_change_is_seen_after_the_ttl() {
        let real = crate::dynamodb::test_settings();
        let d = Dynamo::connect(&real).await.unwrap();
        d.ensure_table(&crate::dynamodb::TableSpec {
            name: d.table_name("ref"),
            partition_key: ("id".into(), aws_sdk_dynamodb::types::ScalarAttributeType::N),
            sort_key: None,
            indexes: vec![],
        })
        .await
        .unwrap();
        for id in 0..300 {
            put(&d, id, &format!("r{id}")).await;
        }
        let (proxy, injected) =
            crate::dynamodb::chaos::start(real.endpoint.as_deref().unwrap(), 5).await;
        let through = DynamoSettings {
            endpoint: Some(proxy),
            ..real.clone()
        };
        let ttl = Duration::from_millis(400);
        let l = lookup(&through, "400ms");
        let keys: ArrayRef = Arc::new(Int64Array::from(
            (0..250)
                .map(|i| if i == 7 { None } else { Some(i % 240) })
                .chain([Some(1000)])
                .collect::<Vec<_>>(),
        ));
        let first = names(&l.get(&keys).await.unwrap());
        // Items are cached as their reads come back.
        let read_at = Instant::now();
        assert_eq!(first.len(), 240, "distinct keys found, 1000 missing");
        assert_eq!(first[5], (5, "r5".to_string()));
        assert!(
            injected
                .unprocessed
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        assert!(
            injected
                .throttled
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        put(&d, 5, "renamed").await;
        put(&d, 1000, "new").await;
        let one: ArrayRef = Arc::new(Int64Array::from(vec![5, 1000]));
        let cached = names(&l.get(&one).await.unwrap());
        if read_at.elapsed() < ttl {
            assert_eq!(
                cached,
                [(5, "r5".to_string())],
                "within the TTL: the cached item, the cached miss"
            );
        }
        // The TTL is a time: let it pass, measured from the read.
        while read_at.elapsed() < ttl + Duration::from_millis(50) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let fresh = names(&l.get(&one).await.unwrap());
        assert_eq!(
            fresh,
            [(5, "renamed".to_string()), (1000, "new".to_string())]
        );
    }
}
