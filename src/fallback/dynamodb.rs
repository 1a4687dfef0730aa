//! The DynamoDB fallback store, for production: `{prefix}tributary_fallback`, on the
//! shared client ([`crate::dynamodb`]).
//!
//! Items:
//! - a record: partition key `stream` (pipeline, topic and key, encoded by
//!   [`stream_key`]), sort key `seq` (`{checkpoint:020}.{index:020}`, so the sort
//!   order is the sequence's), its value, headers, timestamps;
//! - a writer's delivery mark: partition key `\u{1e}mark\u{1f}{pipeline}` (no stream's
//!   key starts so), sort key the writer (a transactional id), its lineage and
//!   checkpoint, written only over an older one of the same lineage;
//! - a stream's marker: the same partition key, sort key `~` (after every sequence),
//!   with `waiting_pipeline` (the sparse index `waiting` lists a pipeline's streams
//!   through it) and `appends`, a counter every append adds to.
//!
//! Invariants:
//! - An append writes its records (`BatchWriteItem`, unprocessed items again) and
//!   then adds to its streams' markers: a record is unique by stream and sequence, so
//!   a repeated append overwrites a record with itself and stores nothing twice.
//! - A stream's marker goes when its last record goes, conditionally on `appends`
//!   not having changed since the stream was seen empty: an append racing the
//!   delete keeps (or recreates) the marker, so no waiting record is ever unlisted.
//! - Reads of records are strongly consistent; listing streams goes through the
//!   index, which DynamoDB keeps eventually: a stream appended a moment ago may be
//!   listed a moment later (a drainer loops).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, PutRequest, ScalarAttributeType, WriteRequest,
};

use super::{
    Backlog, DeliveryMark, FallbackError, FallbackRecord, FallbackStore, Result, Seq, StreamId,
};
use crate::dynamodb::{Dynamo, DynamoError, DynamoSettings, TableSpec, conditional};

const STORE: &str = "dynamodb";
/// The table's name, before the prefix.
pub(crate) const TABLE: &str = "tributary_fallback";
/// The sort key of a stream's marker: after every sequence.
const MARKER: &str = "~";

type Item = HashMap<String, AttributeValue>;

fn unavailable(e: impl std::fmt::Display) -> FallbackError {
    FallbackError::Unavailable {
        store: STORE,
        message: e.to_string(),
    }
}

fn corrupt(e: impl std::fmt::Display) -> FallbackError {
    FallbackError::Corrupt {
        store: STORE,
        message: e.to_string(),
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A stream's partition key: pipeline, topic and key (hex, `-` for none), separated
/// by a unit separator, which names of pipelines and topics do not hold.
pub(crate) fn stream_key(stream: &StreamId) -> String {
    let key = match &stream.key {
        Some(k) => format!(
            "k{}",
            k.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        None => "-".to_string(),
    };
    format!("{}\u{1f}{}\u{1f}{key}", stream.pipeline, stream.topic)
}

/// The partition key of a pipeline's delivery marks.
fn marks_key(pipeline: &str) -> String {
    format!("\u{1e}mark\u{1f}{pipeline}")
}

fn seq_key(seq: Seq) -> String {
    format!("{:020}.{:020}", seq.checkpoint, seq.index)
}

fn parse_seq(v: &str) -> Option<Seq> {
    let (c, i) = v.split_once('.')?;
    Some(Seq {
        checkpoint: c.parse().ok()?,
        index: i.parse().ok()?,
    })
}

#[derive(Debug, Clone)]
pub struct DynamoFallbackStore {
    settings: DynamoSettings,
    table: String,
    dynamo: std::sync::Arc<tokio::sync::OnceCell<Dynamo>>,
}

impl DynamoFallbackStore {
    pub fn new(settings: &DynamoSettings) -> Self {
        DynamoFallbackStore {
            table: format!("{}{TABLE}", settings.table_prefix),
            settings: settings.clone(),
            dynamo: Default::default(),
        }
    }

    async fn dynamo(&self) -> Result<&Dynamo> {
        self.dynamo
            .get_or_try_init(|| {
                Dynamo::connect_to(
                    &self.settings,
                    TableSpec {
                        name: self.table.clone(),
                        partition_key: ("stream".into(), ScalarAttributeType::S),
                        sort_key: Some(("seq".into(), ScalarAttributeType::S)),
                        indexes: vec![(
                            "waiting".into(),
                            ("waiting_pipeline".into(), ScalarAttributeType::S),
                            Some(("stream".into(), ScalarAttributeType::S)),
                        )],
                    },
                )
            })
            .await
            .map_err(unavailable)
    }

    /// Writes (or deletes) items 25 at a time, unprocessed ones again.
    async fn batch(&self, requests: Vec<WriteRequest>) -> Result<()> {
        let d = self.dynamo().await?;
        d.batch_write(&self.table, requests)
            .await
            .map_err(unavailable)
    }

    /// One page after another of a query of `stream`'s records (sort key below the
    /// marker, at most `through` when given), up to `limit` items.
    async fn records(
        &self,
        stream: &str,
        through: Option<Seq>,
        limit: Option<usize>,
        projection: Option<&str>,
    ) -> Result<Vec<Item>> {
        let d = self.dynamo().await?;
        let upper = through.map(seq_key).unwrap_or_else(|| "9".repeat(41));
        let upper = &upper;
        d.pages(limit, |start, left| async move {
            let mut q = d
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("#s = :s AND #q <= :upper")
                .expression_attribute_names("#s", "stream")
                .expression_attribute_names("#q", "seq")
                .expression_attribute_values(":s", s(stream))
                .expression_attribute_values(":upper", s(upper))
                .set_exclusive_start_key(start);
            if let Some(l) = left {
                q = q.limit(l.min(1000) as i32);
            }
            if let Some(p) = projection {
                q = q.projection_expression(p);
            }
            q.send()
                .await
                .map(|o| (o.items.unwrap_or_default(), o.last_evaluated_key))
                .map_err(|e| DynamoError::request(&self.table, "Query", &e))
        })
        .await
        .map_err(unavailable)
    }

    /// The markers of `pipeline`'s streams (every pipeline's when `None`).
    async fn markers(&self, pipeline: Option<&str>) -> Result<Vec<Item>> {
        let d = self.dynamo().await?;
        d.pages(None, |start, _| async {
            match pipeline {
                Some(p) => d
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name("waiting")
                    .key_condition_expression("waiting_pipeline = :p")
                    .expression_attribute_values(":p", s(p))
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map(|o| (o.items.unwrap_or_default(), o.last_evaluated_key))
                    .map_err(|e| DynamoError::request(&self.table, "Query", &e)),
                None => d
                    .client
                    .scan()
                    .table_name(&self.table)
                    .index_name("waiting")
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map(|o| (o.items.unwrap_or_default(), o.last_evaluated_key))
                    .map_err(|e| DynamoError::request(&self.table, "Scan", &e)),
            }
        })
        .await
        .map_err(unavailable)
    }
}

fn stream_of(marker: &Item) -> Result<StreamId> {
    let text = |k: &str| match marker.get(k) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        other => Err(corrupt(format!("marker attribute {k}: {other:?}"))),
    };
    Ok(StreamId {
        pipeline: text("pipeline")?,
        topic: text("topic")?,
        key: match marker.get("key") {
            Some(AttributeValue::B(b)) => Some(b.as_ref().to_vec()),
            _ => None,
        },
    })
}

fn record_of(stream: &StreamId, item: &Item) -> Result<FallbackRecord> {
    let n = |k: &str| match item.get(k) {
        Some(AttributeValue::N(v)) => v.parse::<i64>().map(Some).map_err(corrupt),
        None => Ok(None),
        other => Err(corrupt(format!("attribute {k}: {other:?}"))),
    };
    let seq = match item.get("seq") {
        Some(AttributeValue::S(v)) => parse_seq(v).ok_or_else(|| corrupt(format!("seq {v}")))?,
        other => return Err(corrupt(format!("seq: {other:?}"))),
    };
    Ok(FallbackRecord {
        stream: stream.clone(),
        seq,
        value: match item.get("value") {
            Some(AttributeValue::B(b)) => Some(b.as_ref().to_vec()),
            _ => None,
        },
        headers: match item.get("headers") {
            Some(AttributeValue::S(h)) => serde_json::from_str(h).map_err(corrupt)?,
            _ => Vec::new(),
        },
        timestamp_ms: n("timestamp_ms")?,
        stored_ms: n("stored_ms")?.unwrap_or_default(),
    })
}

#[async_trait]
impl FallbackStore for DynamoFallbackStore {
    async fn append(&self, records: &[FallbackRecord]) -> Result<()> {
        let mut streams: BTreeMap<String, &StreamId> = BTreeMap::new();
        let mut requests = Vec::with_capacity(records.len());
        for r in records {
            let key = stream_key(&r.stream);
            let mut item: Item = [
                ("stream".to_string(), s(&key)),
                ("seq".to_string(), s(seq_key(r.seq))),
                (
                    "headers".to_string(),
                    s(serde_json::to_string(&r.headers).map_err(corrupt)?),
                ),
                (
                    "stored_ms".to_string(),
                    AttributeValue::N(r.stored_ms.to_string()),
                ),
            ]
            .into();
            if let Some(v) = &r.value {
                item.insert("value".into(), AttributeValue::B(Blob::new(v.clone())));
            }
            if let Some(t) = r.timestamp_ms {
                item.insert("timestamp_ms".into(), AttributeValue::N(t.to_string()));
            }
            requests.push(
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .expect("item"),
                    )
                    .build(),
            );
            streams.insert(key, &r.stream);
        }
        self.batch(requests).await?;
        let d = self.dynamo().await?;
        for (key, stream) in streams {
            d.call(None, || async {
                let mut update = d
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key("stream", s(&key))
                    .key("seq", s(MARKER))
                    .update_expression(
                        "ADD appends :one SET waiting_pipeline = :p, pipeline = :p, topic = :t",
                    )
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .expression_attribute_values(":p", s(&stream.pipeline))
                    .expression_attribute_values(":t", s(&stream.topic));
                if let Some(k) = &stream.key {
                    update = update
                        .update_expression(
                            "ADD appends :one SET waiting_pipeline = :p, pipeline = :p, topic = :t, #k = :k",
                        )
                        .expression_attribute_names("#k", "key")
                        .expression_attribute_values(":k", AttributeValue::B(Blob::new(k.clone())));
                }
                update
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| DynamoError::request(&self.table, "UpdateItem", &e))
            })
            .await
            .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn streams(&self, pipeline: &str) -> Result<Vec<StreamId>> {
        let mut out: Vec<StreamId> = self
            .markers(Some(pipeline))
            .await?
            .iter()
            .map(stream_of)
            .collect::<Result<_>>()?;
        out.sort();
        Ok(out)
    }

    async fn oldest(&self, stream: &StreamId, limit: usize) -> Result<Vec<FallbackRecord>> {
        let key = stream_key(stream);
        self.records(&key, None, Some(limit), None)
            .await?
            .iter()
            .map(|i| record_of(stream, i))
            .collect()
    }

    async fn delete_through(&self, stream: &StreamId, through: Seq) -> Result<()> {
        let key = stream_key(stream);
        let d = self.dynamo().await?;
        // The marker's append count before looking: the marker goes only if no append
        // came since.
        let marker = d
            .call(None, || async {
                d.client
                    .get_item()
                    .table_name(&self.table)
                    .consistent_read(true)
                    .key("stream", s(&key))
                    .key("seq", s(MARKER))
                    .send()
                    .await
                    .map(|o| o.item)
                    .map_err(|e| DynamoError::request(&self.table, "GetItem", &e))
            })
            .await
            .map_err(unavailable)?;
        let appends = marker.as_ref().and_then(|m| m.get("appends").cloned());
        let doomed = self.records(&key, Some(through), None, Some("#q")).await?;
        let requests = doomed
            .into_iter()
            .filter_map(|i| i.get("seq").cloned())
            .map(|q| {
                WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .key("stream", s(&key))
                            .key("seq", q)
                            .build()
                            .expect("key"),
                    )
                    .build()
            })
            .collect();
        self.batch(requests).await?;
        let Some(appends) = appends else {
            return Ok(());
        };
        if !self
            .records(&key, None, Some(1), Some("#q"))
            .await?
            .is_empty()
        {
            return Ok(());
        }
        d.call(None, || async {
            let sent = d
                .client
                .delete_item()
                .table_name(&self.table)
                .key("stream", s(&key))
                .key("seq", s(MARKER))
                .condition_expression("appends = :n")
                .expression_attribute_values(":n", appends.clone())
                .send()
                .await;
            // Not deleted: an append came meanwhile, its stream stays listed.
            conditional(&self.table, "DeleteItem", sent).map(|_| ())
        })
        .await
        .map_err(unavailable)
    }

    async fn backlog(&self, pipeline: Option<&str>) -> Result<Vec<Backlog>> {
        let mut by: BTreeMap<(String, String), Backlog> = BTreeMap::new();
        for marker in self.markers(pipeline).await? {
            let stream = stream_of(&marker)?;
            let records = self
                .records(&stream_key(&stream), None, None, Some("#q, stored_ms"))
                .await?;
            if records.is_empty() {
                continue;
            }
            let oldest = records
                .iter()
                .filter_map(|i| match i.get("stored_ms") {
                    Some(AttributeValue::N(v)) => v.parse::<i64>().ok(),
                    _ => None,
                })
                .min();
            let b = by
                .entry((stream.pipeline.clone(), stream.topic.clone()))
                .or_insert_with(|| Backlog {
                    pipeline: stream.pipeline.clone(),
                    topic: stream.topic.clone(),
                    records: 0,
                    keys: 0,
                    oldest_stored_ms: None,
                });
            b.records += records.len() as u64;
            b.keys += 1;
            b.oldest_stored_ms = match (b.oldest_stored_ms, oldest) {
                (Some(a), Some(o)) => Some(a.min(o)),
                (a, o) => a.or(o),
            };
        }
        Ok(by.into_values().collect())
    }

    async fn mark(&self, mark: &DeliveryMark) -> Result<()> {
        let d = self.dynamo().await?;
        d.call(None, || async {
            let sent = d
                .client
                .put_item()
                .table_name(&self.table)
                .item("stream", s(marks_key(&mark.pipeline)))
                .item("seq", s(&mark.writer))
                .item("lineage", s(&mark.lineage))
                .item("checkpoint", AttributeValue::N(mark.checkpoint.to_string()))
                .condition_expression(
                    "attribute_not_exists(checkpoint) OR lineage <> :l OR checkpoint < :c",
                )
                .expression_attribute_values(":l", s(&mark.lineage))
                .expression_attribute_values(":c", AttributeValue::N(mark.checkpoint.to_string()))
                .send()
                .await;
            // Not written: the writer has a newer mark already.
            conditional(&self.table, "PutItem", sent).map(|_| ())
        })
        .await
        .map_err(unavailable)
    }

    async fn marks(&self, pipeline: &str) -> Result<Vec<DeliveryMark>> {
        let d = self.dynamo().await?;
        let key = marks_key(pipeline);
        let items = d
            .call(None, || async {
                d.client
                    .query()
                    .table_name(&self.table)
                    .consistent_read(true)
                    .key_condition_expression("#s = :s")
                    .expression_attribute_names("#s", "stream")
                    .expression_attribute_values(":s", s(&key))
                    .send()
                    .await
                    .map(|o| o.items.unwrap_or_default())
                    .map_err(|e| DynamoError::request(&self.table, "Query", &e))
            })
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for i in items {
            let text = |k: &str| match i.get(k) {
                Some(AttributeValue::S(v)) => Ok(v.clone()),
                other => Err(corrupt(format!("mark attribute {k}: {other:?}"))),
            };
            out.push(DeliveryMark {
                pipeline: pipeline.to_string(),
                writer: text("seq")?,
                lineage: text("lineage")?,
                checkpoint: match i.get("checkpoint") {
                    Some(AttributeValue::N(n)) => n.parse().map_err(corrupt)?,
                    other => return Err(corrupt(format!("mark checkpoint: {other:?}"))),
                },
            });
        }
        out.sort_by(|a, b| a.writer.cmp(&b.writer));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> (Box<dyn FallbackStore>, DynamoSettings) {
        let settings = crate::dynamodb::test_settings();
        (Box::new(DynamoFallbackStore::new(&settings)), settings)
    }

    async fn twin(settings: &DynamoSettings) -> Box<dyn FallbackStore> {
        Box::new(DynamoFallbackStore::new(settings))
    }

    crate::fallback::conformance::fallback_store_conformance!(fresh(), twin);

    #[test]
    fn sequences_sort_as_their_keys_and_streams_do_not_collide() {
        let a = seq_key(Seq {
            checkpoint: 9,
            index: 10,
        });
        let b = seq_key(Seq {
            checkpoint: 10,
            index: 0,
        });
        assert!(a < b && b.as_str() < MARKER);
        assert_eq!(
            parse_seq(&b),
            Some(Seq {
                checkpoint: 10,
                index: 0
            })
        );
        let stream = |key: Option<&[u8]>| StreamId {
            pipeline: "p".into(),
            topic: "t".into(),
            key: key.map(<[u8]>::to_vec),
        };
        assert_ne!(stream_key(&stream(None)), stream_key(&stream(Some(b""))));
    }
}
