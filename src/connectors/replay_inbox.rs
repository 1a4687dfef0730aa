//! The replay inbox of a source table, on the embedded default: dead letters an admin
//! replays (`tributary dlq replay`) are put in the local store's inbox, in the same
//! transaction that marks them replayed; this source reads them back into the
//! pipeline as records of their table.
//!
//! `tributary run` adds one per source table of a pipeline whose dead letters are
//! kept locally (in a bounded pipeline it reads what the inbox holds, then ends) ([`add_replay_inboxes`]), as a second input of the nodes
//! reading the table ([`Graph::add_replay_source`]). Invariants:
//! - Its position (the inbox sequence number it has read up to) is in the pipeline's
//!   checkpoints: a replayed record enters the pipeline exactly once, and a crash
//!   re-reads from the checkpoint.
//! - Its records are decoded as the table's (JSON: a replayed input line, or a row a
//!   check refused); one that fails again returns to the queue under its id with one
//!   more attempt (`RecordContext::replay_of`).
//! - It holds no watermark back (`NodeSpec::passive`): replayed records are late by
//!   nature, and windows they missed stay emitted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use crate::connectors::dead_letters::local::LocalStore;
use crate::engine::{
    Graph, NodeKind, Result, RowValidator, Source, SourceContext, SourceFactory, TaskInfo,
    ValidatedSourceFactory,
};
use crate::formats::json::JsonDecoder;

/// How often an empty inbox is read again.
const POLL: Duration = Duration::from_millis(250);

/// Gives every source table of `graph` its inbox in the local store at `path`.
pub fn add_replay_inboxes(graph: &mut Graph, path: &std::path::Path) -> Result<()> {
    // A bounded pipeline reads what its inboxes hold when it starts, and ends; its
    // graph (and so its checkpoints) is the same as when it runs unbounded.
    let bounded = graph.bounded();
    let tables: Vec<(usize, String, SchemaRef, Option<Arc<dyn RowValidator>>)> = graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.passive)
        .filter_map(|(id, n)| match &n.kind {
            NodeKind::Source(f) => {
                Some((id, n.replay_table.clone()?, n.schema.clone(), f.validator()))
            }
            _ => None,
        })
        .collect();
    for (id, table, schema, validator) in tables {
        let inbox: Arc<dyn SourceFactory> = Arc::new(InboxSourceFactory {
            path: path.to_path_buf(),
            pipeline: graph.pipeline.clone(),
            table,
            schema,
            bounded,
        });
        // Replayed records keep the table's contract: its CHECKs apply to them too.
        let factory: Arc<dyn SourceFactory> = match validator {
            Some(validator) => Arc::new(ValidatedSourceFactory {
                inner: inbox,
                validator,
            }),
            None => inbox,
        };
        graph.add_replay_source(id, factory)?;
    }
    Ok(())
}

/// Reads the inbox of one table of one pipeline.
pub struct InboxSourceFactory {
    pub path: PathBuf,
    pub pipeline: String,
    pub table: String,
    pub schema: SchemaRef,
    /// Read up to the end of the inbox as it is at the start, then end.
    pub bounded: bool,
}

impl SourceFactory for InboxSourceFactory {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn bounded(&self) -> bool {
        self.bounded
    }
    fn describe(&self) -> String {
        format!("replay inbox of {} in {}", self.table, self.path.display())
    }
    fn checkpointable(&self) -> bool {
        true
    }
    fn create(&self, _task: &TaskInfo) -> Result<Box<dyn Source>> {
        Ok(Box::new(InboxSource {
            path: self.path.clone(),
            pipeline: self.pipeline.clone(),
            table: self.table.clone(),
            schema: self.schema.clone(),
            bounded: self.bounded,
        }))
    }
}

struct InboxSource {
    path: PathBuf,
    pipeline: String,
    table: String,
    schema: SchemaRef,
    bounded: bool,
}

#[async_trait]
impl Source for InboxSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<()> {
        let store = Arc::new(LocalStore::open(&self.path)?);
        let mut after: i64 = ctx
            .restored_positions()
            .await?
            .iter()
            .filter_map(|p| Some(i64::from_le_bytes(p.get(..8)?.try_into().ok()?)))
            .max()
            .unwrap_or(0);
        let mut decoder = JsonDecoder::new(self.schema.clone())?;
        let limit = ctx.batch.size.max(1);
        loop {
            if let Some(id) = ctx.checkpoint_due() {
                ctx.checkpoint(id, after.to_le_bytes().to_vec()).await?;
            }
            if ctx.stop.is_raised() {
                break;
            }
            let (s, pipeline, table) = (store.clone(), self.pipeline.clone(), self.table.clone());
            let records =
                tokio::task::spawn_blocking(move || s.inbox(&pipeline, &table, after, limit))
                    .await
                    .map_err(|e| {
                        crate::engine::EngineError::Internal(format!("inbox read: {e}"))
                    })??;
            if records.is_empty() {
                if self.bounded {
                    break;
                }
                ctx.pause_until(tokio::time::Instant::now() + POLL).await;
                continue;
            }
            for r in records {
                ctx.bad_records.context_mut().replay_of = Some((r.dlq_id, r.attempts));
                decoder.push(&r.payload, &mut ctx.bad_records);
                after = r.seq;
            }
            ctx.bad_records.context_mut().replay_of = None;
            let batch = decoder.flush()?;
            decoder.report_late(&mut ctx.bad_records);
            if let Some(batch) = batch {
                ctx.out.emit(batch).await?;
            }
        }
        ctx.final_position = Some(after.to_le_bytes().to_vec());
        Ok(())
    }
}
