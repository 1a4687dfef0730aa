//! Checkpoints in DynamoDB (`checkpoint: { store: dynamodb }`): any machine with the
//! table can resume a pipeline, without a shared disk.
//!
//! One table (`{prefix}tributary_checkpoints`, partition key `pipeline`, sort key
//! `item`, both strings) holds every pipeline's checkpoints:
//! - `head`: the latest committed id (`latest`) and its metadata (`meta`, JSON);
//! - `meta|{id:020}`: each committed checkpoint's metadata;
//! - `blob|{id:020}|{task}|{writer}|n`: a blob's chunk count, and
//!   `blob|{id:020}|{task}|{writer}|c{i:06}`: its chunks (`data`, at most [`CHUNK`]
//!   bytes, under DynamoDB's 400 KB item limit) — or, with `blobs: local`, the blobs
//!   in the local directory as the local store keeps them;
//! - `writer|{id:020}`: which writer's blobs checkpoint `id` committed.
//!
//! Invariants:
//! - The commit is one conditional write of `head` (`latest = previous AND latest <
//!   id`, or no `latest` yet): of two processes of one pipeline, only one commits on
//!   top of a checkpoint; the other gets [`CheckpointError::Conflict`] (fenced). The
//!   `meta|id` item is written after it; `list` takes the head's metadata as well,
//!   so a crash between the two loses nothing.
//! - A blob's chunks are written before its chunk count, and a rewrite writes its
//!   count last too, so a reader never mixes two attempts (only the first `n` chunks
//!   are read).
//! - Blobs are kept per writer (a random token per store handle, so per process):
//!   two processes of one pipeline checkpointing the same id never overwrite each
//!   other's state; the commit records the winner's token (in `head` and
//!   `writer|id`), and reads take that writer's blobs.
//! - Every read is strongly consistent.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use async_trait::async_trait;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, PutRequest, ScalarAttributeType, WriteRequest,
};

use super::{CheckpointError, CheckpointMeta, CheckpointStore, LocalCheckpointStore, Result};
use crate::dynamodb::{Dynamo, DynamoError, DynamoSettings, TableSpec, conditional};

/// Bytes per blob chunk: under the item limit with the keys and names.
pub(crate) const CHUNK: usize = 350 * 1024;
/// The checkpoint table's name, before the prefix.
pub(crate) const TABLE: &str = "tributary_checkpoints";

/// Where a DynamoDB checkpoint store keeps state blobs.
#[derive(Debug, Clone, PartialEq)]
pub enum BlobPlacement {
    /// Items of the checkpoint table, in chunks (the default).
    Table,
    /// Files in a local directory (large state on a volume; the metadata, and so
    /// the commit, stays in DynamoDB).
    Local(PathBuf),
}

#[derive(Debug, Clone)]
pub struct DynamoCheckpointStore {
    pipeline: String,
    settings: DynamoSettings,
    table: String,
    blobs: BlobPlacement,
    dynamo: std::sync::Arc<tokio::sync::OnceCell<Dynamo>>,
    /// This handle's blob namespace.
    writer: String,
}

fn storage(e: impl std::fmt::Display) -> crate::Error {
    CheckpointError::Storage(format!("dynamodb: {e}")).into()
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

impl DynamoCheckpointStore {
    pub fn new(pipeline: &str, settings: &DynamoSettings, blobs: BlobPlacement) -> Self {
        DynamoCheckpointStore {
            pipeline: pipeline.to_string(),
            table: format!("{}{TABLE}", settings.table_prefix),
            settings: settings.clone(),
            blobs,
            dynamo: Default::default(),
            writer: super::local::writer_token(),
        }
    }

    /// The client, with the table made sure of on first use.
    async fn dynamo(&self) -> Result<&Dynamo> {
        self.dynamo
            .get_or_try_init(|| {
                Dynamo::connect_to(
                    &self.settings,
                    TableSpec {
                        name: self.table.clone(),
                        partition_key: ("pipeline".into(), ScalarAttributeType::S),
                        sort_key: Some(("item".into(), ScalarAttributeType::S)),
                        indexes: Vec::new(),
                    },
                )
            })
            .await
            .map_err(storage)
    }

    fn local(&self) -> Option<LocalCheckpointStore> {
        match &self.blobs {
            BlobPlacement::Local(dir) => {
                Some(LocalCheckpointStore::with_writer(dir, self.writer.clone()))
            }
            BlobPlacement::Table => None,
        }
    }

    fn key(&self, item: &str) -> HashMap<String, AttributeValue> {
        [
            ("pipeline".to_string(), s(&self.pipeline)),
            ("item".to_string(), s(item)),
        ]
        .into()
    }

    /// Every item whose sort key starts with `prefix` (consistent; all pages), with
    /// only the attributes in `projection` (all when empty).
    async fn query(
        &self,
        prefix: &str,
        projection: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>> {
        let d = self.dynamo().await?;
        d.pages(None, |start, _| async {
            let mut q = d
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("#p = :p AND begins_with(#i, :prefix)")
                .expression_attribute_names("#p", "pipeline")
                .expression_attribute_names("#i", "item")
                .expression_attribute_values(":p", s(&self.pipeline))
                .expression_attribute_values(":prefix", s(prefix))
                .set_exclusive_start_key(start);
            if !projection.is_empty() {
                q = q.projection_expression(projection);
            }
            q.send()
                .await
                .map(|o| (o.items.unwrap_or_default(), o.last_evaluated_key))
                .map_err(|e| DynamoError::request(&self.table, "Query", &e))
        })
        .await
        .map_err(storage)
    }

    async fn get_item(&self, item: &str) -> Result<Option<HashMap<String, AttributeValue>>> {
        let d = self.dynamo().await?;
        d.call(None, || async {
            d.client
                .get_item()
                .table_name(&self.table)
                .consistent_read(true)
                .set_key(Some(self.key(item)))
                .send()
                .await
                .map(|o| o.item)
                .map_err(|e| DynamoError::request(&self.table, "GetItem", &e))
        })
        .await
        .map_err(storage)
    }

    /// Writes (or deletes) items 25 at a time, unprocessed ones again.
    async fn batch(&self, requests: Vec<WriteRequest>) -> Result<()> {
        let d = self.dynamo().await?;
        d.batch_write(&self.table, requests).await.map_err(storage)
    }

    fn blob_prefix(id: u64, name: &str) -> String {
        format!("blob|{id:020}|{name}|")
    }

    /// The writer whose blobs checkpoint `id` committed, if it is committed.
    async fn committed_writer(&self, id: u64) -> Result<Option<String>> {
        let writer = |item: Option<HashMap<String, AttributeValue>>| match item
            .as_ref()
            .and_then(|i| i.get("writer"))
        {
            Some(AttributeValue::S(w)) => Some(w.clone()),
            _ => None,
        };
        if let Some(w) = writer(self.get_item(&format!("writer|{id:020}")).await?) {
            return Ok(Some(w));
        }
        // Committed, but the process stopped before writing `writer|id`.
        let head = self.get_item("head").await?;
        let latest = match head.as_ref().and_then(|h| h.get("latest")) {
            Some(AttributeValue::N(n)) => n.parse::<u64>().ok(),
            _ => None,
        };
        Ok(if latest == Some(id) {
            writer(head)
        } else {
            None
        })
    }

    fn parse_meta(&self, item: &HashMap<String, AttributeValue>) -> Result<Option<CheckpointMeta>> {
        let Some(AttributeValue::S(json)) = item.get("meta") else {
            return Ok(None);
        };
        serde_json::from_str(json)
            .map(Some)
            .map_err(|e| CheckpointError::Corrupt(0, format!("{}: {e}", self.table)).into())
    }
}

#[async_trait]
impl CheckpointStore for DynamoCheckpointStore {
    async fn put_blob(&self, id: u64, name: &str, bytes: Vec<u8>) -> Result<()> {
        if let Some(local) = self.local() {
            return local.put_blob(id, name, bytes).await;
        }
        let prefix = format!("{}{}|", Self::blob_prefix(id, name), self.writer);
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
        let requests = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut item = self.key(&format!("{prefix}c{i:06}"));
                item.insert("data".into(), AttributeValue::B(Blob::new(*c)));
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .expect("item"),
                    )
                    .build()
            })
            .collect();
        self.batch(requests).await?;
        let mut header = self.key(&format!("{prefix}n"));
        header.insert("chunks".into(), AttributeValue::N(chunks.len().to_string()));
        header.insert("bytes".into(), AttributeValue::N(bytes.len().to_string()));
        let d = self.dynamo().await?;
        d.call(None, || async {
            d.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(header.clone()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| DynamoError::request(&self.table, "PutItem", &e))
        })
        .await
        .map_err(storage)
    }

    async fn get_blob(&self, id: u64, name: &str) -> Result<Vec<u8>> {
        if let Some(local) = self.local() {
            // The committed writer's, when several wrote it.
            return match local.get_blob_of(id, name, None).await {
                Ok(b) => Ok(b),
                Err(e) => match self.committed_writer(id).await? {
                    Some(w) => local.get_blob_of(id, name, Some(&w)).await,
                    None => Err(e),
                },
            };
        }
        let prefix = Self::blob_prefix(id, name);
        // Every writer's items of this blob, grouped by writer: "{writer}|n" or
        // "{writer}|c000012" after the prefix.
        let mut writers: std::collections::BTreeMap<String, Vec<HashMap<String, AttributeValue>>> =
            Default::default();
        for item in self.query(&prefix, "").await? {
            if let Some(AttributeValue::S(k)) = item.get("item")
                && let Some((writer, _)) = k[prefix.len()..].split_once('|')
            {
                writers.entry(writer.to_string()).or_default().push(item);
            }
        }
        let items = match writers.len() {
            0 => return Err(storage(format!("checkpoint {id} has no blob {name}"))),
            1 => writers.into_values().next().expect("one"),
            _ => {
                let w = self.committed_writer(id).await?.ok_or_else(|| {
                    storage(format!(
                        "blob {name} of checkpoint {id} was written by {} processes and none committed it",
                        writers.len()
                    ))
                })?;
                writers.remove(&w).ok_or_else(|| {
                    storage(format!("checkpoint {id} has no blob {name} of its writer"))
                })?
            }
        };
        // Sorted by key: the chunks (c…), then the count (n).
        let count: usize = match items.last().and_then(|h| h.get("chunks")) {
            Some(AttributeValue::N(n)) => n.parse().map_err(storage)?,
            _ => {
                return Err(storage(format!(
                    "blob {name} of checkpoint {id}: no chunk count"
                )));
            }
        };
        let mut out = Vec::new();
        for i in 0..count {
            match items.get(i).and_then(|c| c.get("data")) {
                Some(AttributeValue::B(b)) => out.extend_from_slice(b.as_ref()),
                _ => {
                    return Err(storage(format!(
                        "blob {name} of checkpoint {id}: chunk {i} of {count} missing"
                    )));
                }
            }
        }
        Ok(out)
    }

    async fn commit(&self, meta: &CheckpointMeta, previous: Option<u64>) -> Result<()> {
        let json = serde_json::to_string(meta).map_err(storage)?;
        let d = self.dynamo().await?;
        let id = AttributeValue::N(meta.id.to_string());
        let committed = d
            .call(None, || async {
                let mut put = d
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some({
                        let mut head = self.key("head");
                        head.insert("latest".into(), id.clone());
                        head.insert("meta".into(), s(&json));
                        head.insert("writer".into(), s(&self.writer));
                        head
                    }))
                    .expression_attribute_names("#l", "latest");
                put = match previous {
                    None => put.condition_expression("attribute_not_exists(#l)"),
                    Some(p) => put
                        .condition_expression("#l = :p AND #l < :id")
                        .expression_attribute_values(":p", AttributeValue::N(p.to_string()))
                        .expression_attribute_values(":id", id.clone()),
                };
                conditional(&self.table, "PutItem", put.send().await)
            })
            .await
            .map_err(storage)?;
        if !committed {
            let found = match self
                .get_item("head")
                .await?
                .and_then(|h| h.get("latest").cloned())
            {
                Some(AttributeValue::N(n)) => n.parse().ok(),
                _ => None,
            };
            return Err(CheckpointError::Conflict {
                id: meta.id,
                expected: previous,
                found,
            }
            .into());
        }
        let mut writer = self.key(&format!("writer|{:020}", meta.id));
        writer.insert("writer".into(), s(&self.writer));
        let mut item = self.key(&format!("meta|{:020}", meta.id));
        item.insert("meta".into(), s(json));
        self.batch(
            [writer, item]
                .into_iter()
                .map(|i| {
                    WriteRequest::builder()
                        .put_request(
                            PutRequest::builder()
                                .set_item(Some(i))
                                .build()
                                .expect("item"),
                        )
                        .build()
                })
                .collect(),
        )
        .await
    }

    async fn list(&self) -> Result<Vec<CheckpointMeta>> {
        let mut by_id = std::collections::BTreeMap::new();
        for item in self.query("meta|", "").await? {
            if let Some(m) = self.parse_meta(&item)? {
                by_id.insert(m.id, m);
            }
        }
        if let Some(head) = self.get_item("head").await?
            && let Some(m) = self.parse_meta(&head)?
        {
            by_id.entry(m.id).or_insert(m);
        }
        Ok(by_id.into_values().collect())
    }

    async fn delete_meta(&self, id: u64) -> Result<()> {
        let d = self.dynamo().await?;
        let key = self.key(&format!("meta|{id:020}"));
        d.call(None, || async {
            d.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key.clone()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| DynamoError::request(&self.table, "DeleteItem", &e))
        })
        .await
        .map_err(storage)?;
        // The head keeps `latest` (commits build on it) but no longer lists it.
        d.call(None, || async {
            let sent = d
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(self.key("head")))
                .update_expression("REMOVE #m")
                .condition_expression("#l = :id")
                .expression_attribute_names("#m", "meta")
                .expression_attribute_names("#l", "latest")
                .expression_attribute_values(":id", AttributeValue::N(id.to_string()))
                .send()
                .await;
            // Another checkpoint is the latest by now: nothing to unlist.
            conditional(&self.table, "UpdateItem", sent).map(|_| ())
        })
        .await
        .map_err(storage)
    }

    async fn delete_blobs(&self, id: u64) -> Result<()> {
        if let Some(local) = self.local() {
            return local.delete_blobs(id).await;
        }
        let mut items = self.query(&format!("blob|{id:020}|"), "#i").await?;
        items.extend(self.get_item(&format!("writer|{id:020}")).await?);
        let requests = items
            .into_iter()
            .filter_map(|i| i.get("item").cloned())
            .map(|k| {
                let mut key = self.key("");
                key.insert("item".into(), k);
                WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .set_key(Some(key))
                            .build()
                            .expect("key"),
                    )
                    .build()
            })
            .collect();
        self.batch(requests).await
    }

    async fn orphans(&self) -> Result<Vec<u64>> {
        let committed: BTreeSet<u64> = self.list().await?.iter().map(|m| m.id).collect();
        let ids: BTreeSet<u64> = match self.local() {
            Some(local) => local.orphans().await?.into_iter().collect(),
            None => self
                .query("blob|", "#i")
                .await?
                .iter()
                .filter_map(|i| match i.get("item") {
                    Some(AttributeValue::S(k)) => k.split('|').nth(1)?.parse().ok(),
                    _ => None,
                })
                .collect(),
        };
        Ok(ids.difference(&committed).copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Keep = (
        DynamoSettings,
        String,
        BlobPlacement,
        Option<std::sync::Arc<tempfile::TempDir>>,
    );

    /// A store for a new pipeline on the test server (`TRIBUTARY_TEST_DYNAMODB`).
    async fn fresh_in(local: bool) -> (Box<dyn CheckpointStore>, Keep) {
        let settings = crate::dynamodb::test_settings();
        let pipeline = format!("p{}", settings.table_prefix);
        let dir = local.then(|| std::sync::Arc::new(tempfile::tempdir().unwrap()));
        let blobs = match &dir {
            Some(d) => BlobPlacement::Local(d.path().to_path_buf()),
            None => BlobPlacement::Table,
        };
        let store = DynamoCheckpointStore::new(&pipeline, &settings, blobs.clone());
        (Box::new(store), (settings, pipeline, blobs, dir))
    }

    async fn twin(keep: &Keep) -> Box<dyn CheckpointStore> {
        Box::new(DynamoCheckpointStore::new(&keep.1, &keep.0, keep.2.clone()))
    }

    mod blobs_in_the_table {
        use super::*;
        crate::checkpoint::conformance::checkpoint_store_conformance!(fresh_in(false), twin);
    }

    mod blobs_in_a_local_directory {
        use super::*;
        crate::checkpoint::conformance::checkpoint_store_conformance!(fresh_in(true), twin);
    }
}
