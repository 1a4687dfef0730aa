//! In-memory source: batches given from Rust, emitted as they are.
//!
//! For tests and Rust pipelines that start from data already in memory (like Flink's
//! `fromElements`). Not a SQL connector: there is nothing to name in `WITH (…)`.
//! Each partition emits its own list of batches, one `emit` per batch, so batch
//! boundaries (and therefore when watermarks are sent) are exactly the caller's.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use crate::engine::{EngineError, Result, Source, SourceContext, SourceFactory, TaskInfo};

/// Emits fixed batches per partition; bounded unless [`MemorySource::unbounded`].
#[derive(Clone)]
pub struct MemorySource {
    schema: SchemaRef,
    partitions: Arc<Vec<Vec<RecordBatch>>>,
    bounded: bool,
}

impl MemorySource {
    /// `partitions[p]` is what partition `p` emits; the node's parallelism must equal
    /// `partitions.len()`. Every batch must have `schema`.
    pub fn new(schema: SchemaRef, partitions: Vec<Vec<RecordBatch>>) -> Result<Self> {
        if let Some(b) = partitions.iter().flatten().find(|b| b.schema() != schema) {
            return Err(EngineError::User(format!(
                "memory source: a batch has schema {:?}, expected {:?}",
                b.schema(),
                schema
            ))
            .into());
        }
        Ok(MemorySource {
            schema,
            partitions: Arc::new(partitions),
            bounded: true,
        })
    }

    /// After its batches, each partition stays open (sending nothing) until the
    /// pipeline is stopped, like a quiet stream.
    pub fn unbounded(mut self) -> Self {
        self.bounded = false;
        self
    }
}

impl SourceFactory for MemorySource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn bounded(&self) -> bool {
        self.bounded
    }

    fn describe(&self) -> String {
        let rows: usize = self.partitions.iter().flatten().map(|b| b.num_rows()).sum();
        format!(
            "memory: {rows} rows in {} partition(s){}",
            self.partitions.len(),
            if self.bounded { "" } else { ", then open" }
        )
    }

    fn create(&self, task: &TaskInfo) -> Result<Box<dyn Source>> {
        if task.parallelism != self.partitions.len() {
            return Err(EngineError::User(format!(
                "memory source has {} partition(s) but runs at parallelism {}",
                self.partitions.len(),
                task.parallelism
            ))
            .into());
        }
        Ok(Box::new(MemoryTask {
            batches: self.partitions[task.partition].clone(),
            bounded: self.bounded,
        }))
    }
}

struct MemoryTask {
    batches: Vec<RecordBatch>,
    bounded: bool,
}

#[async_trait]
impl Source for MemoryTask {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<()> {
        for b in std::mem::take(&mut self.batches) {
            if ctx.stop.is_raised() {
                return Ok(());
            }
            ctx.out.emit(b).await?;
        }
        if !self.bounded {
            ctx.stop.raised().await;
        }
        Ok(())
    }
}
