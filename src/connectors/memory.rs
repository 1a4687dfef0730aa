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
            return Err(EngineError::Invalid(format!(
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
            return Err(EngineError::Invalid(format!(
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

/// Collects every batch it receives, in arrival order per partition, into a shared
/// list — for tests, tools, and loading a bounded input into memory.
#[derive(Clone, Default)]
pub struct MemorySink {
    batches: Arc<std::sync::Mutex<Vec<RecordBatch>>>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything received so far.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.batches.lock().expect("memory sink lock").clone()
    }
}

impl crate::engine::SinkFactory for MemorySink {
    fn accepts_changelog(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "memory".into()
    }

    fn create(&self, _task: &TaskInfo, _schema: SchemaRef) -> Result<Box<dyn crate::engine::Sink>> {
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl crate::engine::Sink for MemorySink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.batches.lock().expect("memory sink lock").push(batch);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Runs a bounded source to its end (one task) and returns what it produced.
pub async fn read_all(name: &str, source: Arc<dyn SourceFactory>) -> Result<Vec<RecordBatch>> {
    if !source.bounded() {
        return Err(
            EngineError::Invalid(format!("{name} is unbounded: it cannot be read whole")).into(),
        );
    }
    let sink = MemorySink::new();
    let mut graph = crate::engine::Graph::new(name);
    let src = graph.add_source(name, source, 1);
    graph.add_sink(
        "memory",
        Arc::new(sink.clone()),
        1,
        src,
        crate::engine::Partitioning::Forward,
    )?;
    crate::engine::Runtime::run(graph, Default::default(), futures::future::pending()).await?;
    Ok(sink.batches())
}
