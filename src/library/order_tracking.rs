//! Order tracking: where each order is, since when, and when it will be ready.
//!
//! Two keyed Rust operators the `order_tracking` reference pipeline chains:
//! - `rolling_prep_time`, keyed by restaurant: each order event with the restaurant's
//!   rolling average preparation time (from `order_preparing` to `order_ready`, over
//!   the orders that became ready in the last `window` of event time, default 30m).
//! - `order_tracking`, keyed by order: the lifecycle state machine — placed → paid →
//!   preparing → ready → picked up or delivered, or cancelled before it is ready —
//!   with the time of each step and an ETA (the preparation's start, else payment,
//!   else placement, plus the rolling preparation time; the event's own
//!   `estimated_ready_time` while no preparation has been measured). It emits a row
//!   per status change; an impossible transition (paid before placed, ready before
//!   preparing, anything after the end) is a dead letter with the reason; an order not
//!   ready `sla` (default 15m) of event time after payment raises one alert on the
//!   side output `sla_alerts`. A finished order's state is kept `retain` (default 1h)
//!   to recognise late duplicates, then dropped.
//!
//! Invariants:
//! - Both apply a key's events in event-time order (ties: lifecycle order, then event
//!   id), once the watermark has passed them: an event that arrives out of order
//!   within the watermark's delay is put back in place, so results do not depend on
//!   arrival order, and the same input gives the same output. An event behind the
//!   watermark when it arrives is a dead letter (late), never applied out of place.
//! - A duplicate (an event id already applied to its order) changes nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use serde::{Deserialize, Serialize};

use super::{EventTimeUnit, OperatorSpec, ts, ts_type};
use crate::engine::{OperatorFactory, Result};
use crate::operators::{KeyedProcessFunction, ProcessContext, Row};

/// The steps of an order, in lifecycle order (ties in event time are applied in this
/// order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Step {
    Placed,
    Paid,
    Preparing,
    Ready,
    PickedUp,
    Delivered,
    Cancelled,
}

impl Step {
    fn parse(event_type: &str) -> Option<Step> {
        Some(match event_type {
            "order_placed" => Step::Placed,
            "order_paid" => Step::Paid,
            "order_preparing" => Step::Preparing,
            "order_ready" => Step::Ready,
            "order_picked_up" => Step::PickedUp,
            "order_delivered" => Step::Delivered,
            "order_cancelled" => Step::Cancelled,
            _ => return None,
        })
    }

    /// The status an order has after this step.
    fn status(self) -> &'static str {
        match self {
            Step::Placed => "placed",
            Step::Paid => "paid",
            Step::Preparing => "preparing",
            Step::Ready => "ready",
            Step::PickedUp => "picked_up",
            Step::Delivered => "delivered",
            Step::Cancelled => "cancelled",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, Step::PickedUp | Step::Delivered | Step::Cancelled)
    }

    /// Whether an order whose last step is `from` may take this step.
    fn follows(self, from: Option<Step>) -> bool {
        use Step::*;
        matches!(
            (from, self),
            (None, Placed)
                | (Some(Placed), Paid)
                | (Some(Paid), Preparing)
                | (Some(Preparing), Ready)
                | (Some(Ready), PickedUp | Delivered)
                | (Some(Placed | Paid | Preparing), Cancelled)
        )
    }
}

/// One order event, as both operators read and keep it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    id: String,
    kind: String,
    /// Event time, ms since the epoch.
    at: i64,
    order_id: i64,
    customer_id: Option<i64>,
    restaurant_id: Option<i64>,
    restaurant_name: Option<String>,
    time_zone: Option<String>,
    channel: Option<String>,
    cancel_reason: Option<String>,
    estimated_ready: Option<i64>,
    /// The restaurant's rolling preparation time when the event happened (seconds).
    avg_prep_seconds: Option<f64>,
}

impl Event {
    /// Application order: event time, then lifecycle order, then id.
    fn order_key(&self) -> (i64, Option<Step>, &str) {
        (self.at, Step::parse(&self.kind), &self.id)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// How the input's columns are read: the timestamp unit of its event time (to ms).
#[derive(Clone, Copy)]
struct Reader {
    unit: EventTimeUnit,
}

impl Reader {
    fn new(spec: &OperatorSpec<'_>) -> Result<Reader> {
        let unit = spec.event_time_unit(
            &["event_id", "event_type", "event_time", "order_id"],
            "order events",
        )?;
        Ok(Reader { unit })
    }

    fn ms(&self, v: i64) -> i64 {
        self.unit.ms(v)
    }

    fn optional<'r, T>(
        row: &'r Row<'r>,
        name: &str,
        read: impl Fn(&'r Row<'r>, &str) -> Result<Option<T>>,
    ) -> Option<T> {
        if row.has(name) {
            read(row, name).ok().flatten()
        } else {
            None
        }
    }

    fn event<'r>(&self, row: &'r Row<'r>) -> Result<Option<Event>> {
        let (Some(id), Some(kind), Some(at), Some(order_id)) = (
            row.str("event_id")?,
            row.str("event_type")?,
            row.i64("event_time")?,
            row.i64("order_id")?,
        ) else {
            return Ok(None);
        };
        let float = |row: &'r Row<'r>, name: &str| -> Result<Option<f64>> {
            Ok(match row.get(name)? {
                ScalarValue::Float64(v) => v,
                ScalarValue::Float32(v) => v.map(f64::from),
                _ => None,
            })
        };
        Ok(Some(Event {
            id,
            kind,
            at: self.ms(at),
            order_id,
            customer_id: Self::optional(row, "customer_id", Row::i64),
            restaurant_id: Self::optional(row, "restaurant_id", Row::i64),
            restaurant_name: Self::optional(row, "restaurant_name", Row::str),
            time_zone: Self::optional(row, "time_zone", Row::str),
            channel: Self::optional(row, "channel", Row::str),
            cancel_reason: Self::optional(row, "cancel_reason", Row::str),
            estimated_ready: Self::optional(row, "estimated_ready_time", Row::i64)
                .map(|v| self.ms(v)),
            avg_prep_seconds: Self::optional(row, "avg_prep_seconds", float),
        }))
    }
}

/// Reads the event of `row` into `pending` unless it is late (a dead letter) or not
/// an order event; asks for a timer at its time.
fn buffer(
    reader: &Reader,
    row: &Row<'_>,
    pending: &mut Vec<Event>,
    ctx: &mut ProcessContext<'_>,
) -> Result<()> {
    let Some(event) = reader.event(row)? else {
        ctx.dead_letter(
            row,
            "not an order event: event_id, event_type, event_time and order_id are required",
        );
        return Ok(());
    };
    if super::in_order::admit(row, event.at, "the order's later events", ctx) {
        pending.push(event);
    }
    Ok(())
}

/// The events of `pending` at or before `time`, in application order.
fn due(pending: &mut Vec<Event>, time: i64) -> Vec<Event> {
    super::in_order::due(
        pending,
        time,
        |e| e.at,
        |a, b| a.order_key().cmp(&b.order_key()),
    )
}

/// The columns [`Event`] carries, as the rolling preparation time emits them.
fn event_fields() -> Vec<Field> {
    vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("event_time", ts_type(), false),
        Field::new("order_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("restaurant_id", DataType::Int64, true),
        Field::new("restaurant_name", DataType::Utf8, true),
        Field::new("time_zone", DataType::Utf8, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("cancel_reason", DataType::Utf8, true),
        Field::new("estimated_ready_time", ts_type(), true),
        Field::new("avg_prep_seconds", DataType::Float64, true),
    ]
}

fn event_row(e: &Event) -> Vec<ScalarValue> {
    vec![
        ScalarValue::from(e.id.as_str()),
        ScalarValue::from(e.kind.as_str()),
        ts(Some(e.at)),
        ScalarValue::Int64(Some(e.order_id)),
        ScalarValue::Int64(e.customer_id),
        ScalarValue::Int64(e.restaurant_id),
        ScalarValue::Utf8(e.restaurant_name.clone()),
        ScalarValue::Utf8(e.time_zone.clone()),
        ScalarValue::Utf8(e.channel.clone()),
        ScalarValue::Utf8(e.cancel_reason.clone()),
        ts(e.estimated_ready),
        ScalarValue::Float64(e.avg_prep_seconds),
    ]
}

// ---------------------------------------------------------------------------------
// rolling_prep_time

/// A restaurant's state: events waiting for the watermark, orders in preparation and
/// the preparations finished within the window.
#[derive(Default, Serialize, Deserialize)]
struct Kitchen {
    pending: Vec<Event>,
    /// Order → when its preparation started.
    preparing: BTreeMap<i64, i64>,
    /// (ready at, seconds it took), oldest first.
    done: VecDeque<(i64, f64)>,
}

struct RollingPrepTime {
    reader: Reader,
    window: i64,
}

/// An order still preparing this long after it started is forgotten (its ready event
/// was lost or late).
const STALE_PREPARATION_MS: i64 = 6 * 3_600_000;

impl KeyedProcessFunction for RollingPrepTime {
    type State = Kitchen;

    fn process(
        &mut self,
        row: &Row<'_>,
        k: &mut Kitchen,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<()> {
        buffer(&self.reader, row, &mut k.pending, ctx)
    }

    fn on_timer(&mut self, time: i64, k: &mut Kitchen, ctx: &mut ProcessContext<'_>) -> Result<()> {
        for mut e in due(&mut k.pending, time) {
            match Step::parse(&e.kind) {
                Some(Step::Preparing) => {
                    k.preparing.entry(e.order_id).or_insert(e.at);
                }
                Some(Step::Ready) => {
                    if let Some(started) = k.preparing.remove(&e.order_id) {
                        k.done.push_back((e.at, (e.at - started) as f64 / 1000.0));
                    }
                }
                Some(Step::Cancelled | Step::PickedUp | Step::Delivered) => {
                    k.preparing.remove(&e.order_id);
                }
                _ => {}
            }
            while k
                .done
                .front()
                .is_some_and(|(at, _)| *at <= e.at - self.window)
            {
                k.done.pop_front();
            }
            k.preparing
                .retain(|_, started| *started > e.at - STALE_PREPARATION_MS);
            e.avg_prep_seconds = (!k.done.is_empty())
                .then(|| k.done.iter().map(|(_, s)| s).sum::<f64>() / k.done.len() as f64);
            ctx.emit(event_row(&e));
        }
        if k.pending.is_empty() && k.preparing.is_empty() && k.done.is_empty() {
            ctx.clear_state();
        }
        Ok(())
    }
}

/// `rolling_prep_time`: order events keyed by restaurant, each with its restaurant's
/// rolling average preparation time. Options: `window` (default 30m).
pub fn rolling_prep_time(spec: &OperatorSpec<'_>) -> Result<Arc<dyn OperatorFactory>> {
    spec.only_options(&["window"])?;
    let reader = Reader::new(spec)?;
    let window = spec.duration_ms("window", "30m")?;
    spec.process(Arc::new(Schema::new(event_fields())), &[], move || {
        RollingPrepTime { reader, window }
    })
}

// ---------------------------------------------------------------------------------
// order_tracking

/// An order's state.
#[derive(Default, Serialize, Deserialize)]
struct Order {
    pending: Vec<Event>,
    /// Ids of the events applied (duplicates are recognised by id).
    applied: Vec<String>,
    step: Option<Step>,
    /// When each step happened, by step.
    times: BTreeMap<String, i64>,
    last: Option<Event>,
    sla_due: Option<i64>,
    alerted: bool,
    expires: Option<i64>,
}

impl Order {
    fn at(&self, step: Step) -> Option<i64> {
        self.times.get(step.status()).copied()
    }

    /// The estimated ready time: ready's own time once ready; else the preparation's
    /// start (or payment, or placement) plus the rolling preparation time; else what
    /// the events said.
    fn eta(&self) -> Option<i64> {
        if let Some(ready) = self.at(Step::Ready) {
            return Some(ready);
        }
        let last = self.last.as_ref()?;
        let base = self
            .at(Step::Preparing)
            .or(self.at(Step::Paid))
            .or(self.at(Step::Placed))?;
        match last.avg_prep_seconds {
            Some(s) => Some(base + (s * 1000.0).round() as i64),
            None => last.estimated_ready,
        }
    }
}

struct OrderTracking {
    reader: Reader,
    sla: i64,
    retain: i64,
}

impl OrderTracking {
    fn apply(&self, o: &mut Order, e: Event, ctx: &mut ProcessContext<'_>) {
        if o.applied.contains(&e.id) {
            return;
        }
        let Some(step) = Step::parse(&e.kind) else {
            ctx.dead_letter_kept(
                &e.json(),
                Some(e.at),
                format!("unknown order event type {}", e.kind),
            );
            return;
        };
        if !step.follows(o.step) {
            let now = o.step.map_or("unknown (never placed)", Step::status);
            ctx.dead_letter_kept(
                &e.json(),
                Some(e.at),
                format!(
                    "impossible transition for order {}: {} while the order is {now}",
                    e.order_id, e.kind
                ),
            );
            return;
        }
        o.applied.push(e.id.clone());
        o.step = Some(step);
        o.times.insert(step.status().to_string(), e.at);
        // Keep what earlier events told when this one does not say.
        let mut e = e;
        if let Some(prev) = &o.last {
            e.customer_id = e.customer_id.or(prev.customer_id);
            e.restaurant_id = e.restaurant_id.or(prev.restaurant_id);
            e.restaurant_name = e.restaurant_name.take().or(prev.restaurant_name.clone());
            e.time_zone = e.time_zone.take().or(prev.time_zone.clone());
            e.channel = e.channel.take().or(prev.channel.clone());
            e.estimated_ready = e.estimated_ready.or(prev.estimated_ready);
            e.avg_prep_seconds = e.avg_prep_seconds.or(prev.avg_prep_seconds);
        }
        o.last = Some(e);
        if step == Step::Paid {
            let due = o.at(Step::Paid).unwrap_or_default() + self.sla;
            o.sla_due = Some(due);
            ctx.register_timer(due);
        }
        if step.is_final() {
            let expires = o.last.as_ref().map_or(0, |e| e.at) + self.retain;
            o.expires = Some(expires);
            ctx.register_timer(expires);
        }
        ctx.emit(self.status_row(o));
    }

    fn status_row(&self, o: &Order) -> Vec<ScalarValue> {
        let e = o.last.as_ref().expect("applied an event");
        let step = o.step.expect("applied an event");
        let completed = o.at(Step::PickedUp).or(o.at(Step::Delivered));
        vec![
            ScalarValue::Int64(Some(e.order_id)),
            ScalarValue::Int64(e.customer_id),
            ScalarValue::Int64(e.restaurant_id),
            ScalarValue::Utf8(e.restaurant_name.clone()),
            ScalarValue::Utf8(e.time_zone.clone()),
            ScalarValue::Utf8(e.channel.clone()),
            ScalarValue::from(step.status()),
            ts(Some(e.at)),
            ts(o.at(Step::Placed)),
            ts(o.at(Step::Paid)),
            ts(o.at(Step::Preparing)),
            ts(o.at(Step::Ready)),
            ts(completed),
            ts(o.at(Step::Cancelled)),
            ScalarValue::Utf8(if step == Step::Cancelled {
                e.cancel_reason.clone()
            } else {
                None
            }),
            ts(o.eta()),
            ScalarValue::Float64(e.avg_prep_seconds),
            ScalarValue::Boolean(Some(step.is_final())),
            ScalarValue::from(e.id.as_str()),
        ]
    }
}

fn status_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("restaurant_id", DataType::Int64, true),
        Field::new("restaurant_name", DataType::Utf8, true),
        Field::new("time_zone", DataType::Utf8, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("event_time", ts_type(), false),
        Field::new("placed_at", ts_type(), true),
        Field::new("paid_at", ts_type(), true),
        Field::new("preparing_at", ts_type(), true),
        Field::new("ready_at", ts_type(), true),
        Field::new("completed_at", ts_type(), true),
        Field::new("cancelled_at", ts_type(), true),
        Field::new("cancel_reason", DataType::Utf8, true),
        Field::new("eta", ts_type(), true),
        Field::new("avg_prep_seconds", DataType::Float64, true),
        Field::new("is_final", DataType::Boolean, false),
        Field::new("event_id", DataType::Utf8, false),
    ]))
}

fn alert_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("restaurant_id", DataType::Int64, true),
        Field::new("restaurant_name", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("paid_at", ts_type(), false),
        // The alert's event time: when the order should have been ready.
        Field::new("event_time", ts_type(), false),
    ]))
}

impl KeyedProcessFunction for OrderTracking {
    type State = Order;

    fn process(
        &mut self,
        row: &Row<'_>,
        o: &mut Order,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<()> {
        buffer(&self.reader, row, &mut o.pending, ctx)
    }

    fn on_timer(&mut self, time: i64, o: &mut Order, ctx: &mut ProcessContext<'_>) -> Result<()> {
        for e in due(&mut o.pending, time) {
            self.apply(o, e, ctx);
        }
        if o.sla_due == Some(time)
            && !o.alerted
            && matches!(o.step, Some(Step::Paid | Step::Preparing))
        {
            o.alerted = true;
            let e = o.last.as_ref().expect("paid");
            ctx.emit_to(
                "sla_alerts",
                vec![
                    ScalarValue::Int64(Some(e.order_id)),
                    ScalarValue::Int64(e.customer_id),
                    ScalarValue::Int64(e.restaurant_id),
                    ScalarValue::Utf8(e.restaurant_name.clone()),
                    ScalarValue::from(o.step.map_or("", Step::status)),
                    ts(o.at(Step::Paid)),
                    ts(Some(time)),
                ],
            )?;
        }
        if o.expires.is_some_and(|t| t <= time) && o.pending.is_empty() {
            ctx.clear_state();
        }
        if o.step.is_none() && o.pending.is_empty() {
            // Only refused events came: nothing to remember.
            ctx.clear_state();
        }
        Ok(())
    }
}

/// `order_tracking`: order events keyed by `order_id` → a status row per change, SLA
/// alerts on side output `sla_alerts`. Options: `sla` (default 15m), `retain`
/// (default 1h).
pub fn order_tracking(spec: &OperatorSpec<'_>) -> Result<Arc<dyn OperatorFactory>> {
    spec.only_options(&["sla", "retain"])?;
    let reader = Reader::new(spec)?;
    let sla = spec.duration_ms("sla", "15m")?;
    let retain = spec.duration_ms("retain", "1h")?;
    spec.process(
        status_schema(),
        &[("sla_alerts", alert_schema())],
        move || OrderTracking {
            reader,
            sla,
            retain,
        },
    )
}
