//! Your own Rust operator, deployed by a pipeline file like the built-in ones.
//!
//! A binary on the `tributary` library registers a named operator, then hands over to
//! Tributary's command line: `run`, `check`, `explain`… all know the operator. Try:
//!
//! ```sh
//! cargo run --example custom_operator -- run examples/custom_operator/repeat_customers.yaml
//! ```
//!
//! The operator, `repeat_customers`, is keyed by customer: it counts each customer's
//! placed orders and emits a row when a customer places their `nth` order (default 3)
//! within `within` (default 7 days) of event time — the trigger of a loyalty offer.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use tributary::engine::{EngineError, OperatorFactory};
use tributary::library::OperatorSpec;
use tributary::operators::{KeyedProcessFunction, ProcessContext, Row};

/// A customer's recent orders (event times, ms), oldest first.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Recent {
    orders: VecDeque<i64>,
}

struct RepeatCustomers {
    nth: usize,
    within_ms: i64,
}

impl KeyedProcessFunction for RepeatCustomers {
    type State = Recent;

    fn process(
        &mut self,
        row: &Row<'_>,
        recent: &mut Recent,
        ctx: &mut ProcessContext<'_>,
    ) -> tributary::Result<()> {
        if row.str("event_type")?.as_deref() != Some("order_placed") {
            return Ok(());
        }
        let Some(at) = row.i64("event_time")? else {
            ctx.dead_letter(row, "an order without an event time");
            return Ok(());
        };
        recent.orders.push_back(at);
        while recent
            .orders
            .front()
            .is_some_and(|t| *t <= at - self.within_ms)
        {
            recent.orders.pop_front();
        }
        if recent.orders.len() == self.nth {
            ctx.emit(vec![
                ctx.key()[0].clone(),
                ScalarValue::Int64(Some(self.nth as i64)),
                ScalarValue::TimestampMillisecond(Some(at), Some("+00:00".into())),
            ]);
        }
        Ok(())
    }
}

/// Builds the operator from its pipeline-file entry: options `nth` and `within`.
fn repeat_customers(spec: &OperatorSpec<'_>) -> tributary::Result<Arc<dyn OperatorFactory>> {
    spec.only_options(&["nth", "within"])?;
    let nth = spec
        .option("nth", "3")
        .parse::<usize>()
        .map_err(|e| EngineError::Invalid(format!("operator {}: nth: {e}", spec.name)))?;
    let within = tributary::connectors::parse_duration(spec.option("within", "7d"))
        .map_err(|e| EngineError::Invalid(format!("operator {}: within: {e}", spec.name)))?;
    let output = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Int64, false),
        Field::new("orders", DataType::Int64, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
            false,
        ),
    ]));
    let within_ms = within.as_millis() as i64;
    spec.process(output, &[], move || RepeatCustomers { nth, within_ms })
}

fn main() -> std::process::ExitCode {
    if let Err(e) = tributary::library::register("repeat_customers", repeat_customers) {
        eprintln!("{e}");
        return std::process::ExitCode::FAILURE;
    }
    tributary::cli::main()
}
