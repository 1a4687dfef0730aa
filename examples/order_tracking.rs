//! Order tracking as a keyed state machine in Rust: what SQL cannot say.
//!
//! Generated order events (out of order by up to 5 s) → keyed by `order_id` → a
//! [`KeyedProcessFunction`] that keeps each order's status, emits every status change,
//! and raises an alert when an order is not ready 10 minutes (event time) after it was
//! placed — an event-time timer, fired by the watermark. Run with
//! `cargo run --example order_tracking`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use tributary::operators::{KeyedProcessFunction, ProcessContext, Row};
use tributary::pipeline::PipelineBuilder;

const READY_WITHIN_MS: i64 = 10 * 60 * 1000;

/// A key's state; checkpoints store it with serde.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Order {
    status: Option<String>,
    ready: bool,
}

struct Tracker;

impl KeyedProcessFunction for Tracker {
    type State = Order;

    fn process(
        &mut self,
        row: &Row<'_>,
        order: &mut Order,
        ctx: &mut ProcessContext<'_>,
    ) -> tributary::Result<()> {
        let Some(event) = row.str("event_type")? else {
            return Ok(());
        };
        let at = row.i64("event_time")?.unwrap_or(0);
        let status = match event.as_str() {
            "order_placed" => {
                ctx.register_timer(at + READY_WITHIN_MS);
                "placed"
            }
            "order_paid" => "paid",
            "order_preparing" => "preparing",
            "order_ready" => {
                order.ready = true;
                "ready"
            }
            "order_picked_up" | "order_delivered" => "completed",
            "order_cancelled" => "cancelled",
            _ => return Ok(()),
        };
        // Duplicates and out-of-order events do not move the status backwards.
        if order.status.as_deref() != Some("completed") && order.status.as_deref() != Some(status) {
            order.status = Some(status.to_string());
            ctx.emit(vec![
                ctx.key()[0].clone(),
                ScalarValue::from(status),
                ScalarValue::Int64(Some(at)),
            ]);
        }
        if matches!(status, "completed" | "cancelled") {
            ctx.clear_state();
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        time: i64,
        order: &mut Order,
        ctx: &mut ProcessContext<'_>,
    ) -> tributary::Result<()> {
        if !order.ready {
            ctx.emit(vec![
                ctx.key()[0].clone(),
                ScalarValue::from("late_alert"),
                ScalarValue::Int64(Some(time)),
            ]);
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> tributary::Result<()> {
    let mut p = PipelineBuilder::new("order_tracking").parallelism(2);
    let orders = p.source_sql(
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '3', \
         count = '100000', rate = '0', out_of_order = '5s', duplicate_fraction = '0.01', \
         event_time_field = 'event_time', watermark_delay = '5s')",
    )?;
    let output = Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("at", DataType::Int64, false),
    ]));
    let changes = p.process(orders, "tracker", &["order_id"], output, || Tracker)?;
    let results = p.collect(changes, "status_changes")?;
    let report = p.run_to_completion().await?;

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for b in results.batches() {
        let status = b
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("status");
        for i in 0..status.len() {
            *counts.entry(status.value(i).to_string()).or_default() += 1;
        }
    }
    println!("status changes in {:?}: {counts:?}", report.elapsed);
    Ok(())
}
