//! Rust operators on record batches: map, filter and flat-map, for logic SQL cannot say.

use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use crate::engine::{Collector, EngineError, Operator, OperatorFactory, Result, TaskInfo};

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
        return Err(EngineError::Invalid(format!(
            "{name} returned a batch with schema {} but declared {}",
            crate::engine::fields(&batch.schema()),
            crate::engine::fields(expected)
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
            return Err(EngineError::Invalid(format!(
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

/// Processing time: stamps every batch of a source with the wall clock, in a column
/// appended to its rows, and sends watermarks that follow the wall clock — after each
/// batch and on every tick, so processing-time windows close while the input is
/// quiet. Rows are never late: their time is when they arrived.
pub struct ArrivalTimeFactory {
    column: String,
    output: SchemaRef,
}

impl ArrivalTimeFactory {
    /// `input` with a `column` of arrival times appended (an error if it exists).
    pub fn new(input: &SchemaRef, column: &str) -> Result<Self> {
        if input.index_of(column).is_ok() {
            return Err(EngineError::Graph(format!(
                "processing_time_field {column}: the input already has a column of that name"
            ))
            .into());
        }
        Ok(ArrivalTimeFactory {
            column: column.to_string(),
            output: Arc::new(Self::schema(input, column)),
        })
    }

    /// The schema of a source read in processing time.
    pub fn schema(input: &SchemaRef, column: &str) -> arrow::datatypes::Schema {
        let mut fields: Vec<arrow::datatypes::FieldRef> = input.fields().iter().cloned().collect();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            column,
            arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Millisecond,
                Some("UTC".into()),
            ),
            false,
        )));
        arrow::datatypes::Schema::new_with_metadata(fields, input.metadata().clone())
    }
}

impl OperatorFactory for ArrivalTimeFactory {
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn describe(&self) -> String {
        format!("processing time: arrival time in {}", self.column)
    }

    fn create(&self, _task: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(Box::new(ArrivalTime {
            output: self.output.clone(),
        }))
    }
}

struct ArrivalTime {
    output: SchemaRef,
}

fn wall_clock_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[async_trait]
impl Operator for ArrivalTime {
    async fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let now = wall_clock_ms();
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(
            arrow::array::TimestampMillisecondArray::from(vec![now; batch.num_rows()])
                .with_timezone("UTC"),
        ));
        let stamped = RecordBatch::try_new(self.output.clone(), columns)
            .map_err(|e| EngineError::arrow("stamping arrival times", e))?;
        out.emit(stamped).await?;
        out.emit_watermark(now).await
    }

    fn tick_interval(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(100))
    }

    async fn handle_tick(&mut self, out: &mut Collector) -> Result<()> {
        out.emit_watermark(wall_clock_ms()).await
    }
}
