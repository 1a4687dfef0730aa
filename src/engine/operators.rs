//! Rust operators on record batches: map, filter and flat-map, for logic SQL cannot say.

use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use super::{Collector, EngineError, Operator, OperatorFactory, Result, TaskInfo};

type MapFn = dyn Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync;
type FilterFn = dyn Fn(&RecordBatch) -> Result<BooleanArray> + Send + Sync;
type FlatMapFn = dyn Fn(RecordBatch) -> Result<Vec<RecordBatch>> + Send + Sync;

/// Applies a function to every batch; the function must return `schema`.
#[derive(Clone)]
pub struct MapOperator {
    name: String,
    schema: SchemaRef,
    f: Arc<MapFn>,
}

impl MapOperator {
    pub fn new(
        name: impl Into<String>,
        schema: SchemaRef,
        f: impl Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync + 'static,
    ) -> Self {
        MapOperator {
            name: name.into(),
            schema,
            f: Arc::new(f),
        }
    }
}

fn check_schema(name: &str, expected: &SchemaRef, batch: &RecordBatch) -> Result<()> {
    if batch.schema().fields() != expected.fields() {
        return Err(EngineError::User(format!(
            "{name} returned a batch with schema {} but declared {}",
            super::graph::fields(&batch.schema()),
            super::graph::fields(expected)
        ))
        .into());
    }
    Ok(())
}

#[async_trait]
impl Operator for MapOperator {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let b = (self.f)(batch)?;
        check_schema(&self.name, &self.schema, &b)?;
        out.emit(b).await
    }
}

impl OperatorFactory for MapOperator {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn describe(&self) -> String {
        format!("rust map {}", self.name)
    }
    fn create(&self, _task: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(Box::new(self.clone()))
    }
}

/// Keeps the rows for which a predicate is true.
#[derive(Clone)]
pub struct FilterOperator {
    name: String,
    schema: SchemaRef,
    f: Arc<FilterFn>,
}

impl FilterOperator {
    pub fn new(
        name: impl Into<String>,
        schema: SchemaRef,
        f: impl Fn(&RecordBatch) -> Result<BooleanArray> + Send + Sync + 'static,
    ) -> Self {
        FilterOperator {
            name: name.into(),
            schema,
            f: Arc::new(f),
        }
    }
}

#[async_trait]
impl Operator for FilterOperator {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let mask = (self.f)(&batch)?;
        if mask.len() != batch.num_rows() {
            return Err(EngineError::User(format!(
                "{} returned {} flags for {} rows",
                self.name,
                mask.len(),
                batch.num_rows()
            ))
            .into());
        }
        let kept = filter_record_batch(&batch, &mask)
            .map_err(|e| EngineError::arrow(format!("filter {}", self.name), e))?;
        out.emit(kept).await
    }
}

impl OperatorFactory for FilterOperator {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn describe(&self) -> String {
        format!("rust filter {}", self.name)
    }
    fn create(&self, _task: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(Box::new(self.clone()))
    }
}

/// Turns every batch into any number of batches of `schema`.
#[derive(Clone)]
pub struct FlatMapOperator {
    name: String,
    schema: SchemaRef,
    f: Arc<FlatMapFn>,
}

impl FlatMapOperator {
    pub fn new(
        name: impl Into<String>,
        schema: SchemaRef,
        f: impl Fn(RecordBatch) -> Result<Vec<RecordBatch>> + Send + Sync + 'static,
    ) -> Self {
        FlatMapOperator {
            name: name.into(),
            schema,
            f: Arc::new(f),
        }
    }
}

#[async_trait]
impl Operator for FlatMapOperator {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        for b in (self.f)(batch)? {
            check_schema(&self.name, &self.schema, &b)?;
            out.emit(b).await?;
        }
        Ok(())
    }
}

impl OperatorFactory for FlatMapOperator {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn describe(&self) -> String {
        format!("rust flat-map {}", self.name)
    }
    fn create(&self, _task: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(Box::new(self.clone()))
    }
}
