//! A pipeline built from Rust, mixing a SQL stage and Rust operators.
//!
//! Generated orders → SQL (placed orders with their totals) → a Rust `map` adding the
//! total with tax → keyed by restaurant → a Rust `filter` keeping large orders → stdout
//! as JSON lines. Run with `cargo run --example rust_pipeline`.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use tributary::engine::EngineError;
use tributary::pipeline::PipelineBuilder;

#[tokio::main]
async fn main() -> tributary::Result<()> {
    let mut p = PipelineBuilder::new("rust_example").parallelism(2);

    // A bounded source declared in SQL (any SourceFactory works too).
    let orders = p.source_sql(
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', \
         seed = '7', count = '5000', rate = '0')",
    )?;

    // A SQL stage: DataFusion plans and evaluates it.
    let placed = p
        .sql(
            orders,
            "SELECT order_id, restaurant_id, total FROM orders \
             WHERE event_type = 'order_placed' AND total IS NOT NULL",
        )
        .await?;

    // A Rust map: add the total with 8% tax.
    let in_schema = p.schema(&placed);
    let mut fields: Vec<Field> = in_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("total_with_tax", DataType::Float64, true));
    let out_schema = Arc::new(Schema::new(fields));
    let schema = out_schema.clone();
    let with_tax = p.map(placed, "add_tax", out_schema, move |batch: RecordBatch| {
        let idx = batch
            .schema()
            .index_of("total")
            .map_err(|e| EngineError::arrow("add_tax", e))?;
        let total = batch
            .column(idx)
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| EngineError::Invalid("total is not a float".into()))?;
        let taxed: Float64Array = total
            .iter()
            .map(|t| t.map(|t| (t * 1.08 * 100.0).round() / 100.0))
            .collect();
        let mut cols = batch.columns().to_vec();
        cols.push(Arc::new(taxed));
        RecordBatch::try_new(schema.clone(), cols).map_err(|e| EngineError::arrow("add_tax", e))
    });

    // Every order of one restaurant reaches the same partition of the next operator.
    let keyed = p.key_by(with_tax, &["restaurant_id"])?;

    // A Rust filter: keep orders above 20.
    let large = p.filter(keyed, "large_orders", |batch: &RecordBatch| {
        let idx = batch
            .schema()
            .index_of("total_with_tax")
            .map_err(|e| EngineError::arrow("filter", e))?;
        let t = batch
            .column(idx)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("float");
        Ok((0..t.len())
            .map(|i| Some(t.is_valid(i) && t.value(i) > 20.0))
            .collect::<BooleanArray>())
    });

    p.sink_sql(
        large,
        "CREATE TABLE large_orders WITH (connector = 'stdout')",
    )?;
    let report = p.run_to_completion().await?;
    eprintln!("finished in {:?}: {:?}", report.elapsed, report.rows_out);
    Ok(())
}
