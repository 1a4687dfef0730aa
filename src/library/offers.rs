//! Offer targeting: which customer gets which marketing offer, and why.
//!
//! Two keyed Rust operators (keyed by `customer_id`) the `offer_targeting` reference
//! pipeline deploys; both emit *triggers* in the same schema ([`trigger_schema`]):
//! `customer_id`, `rule`, `offer`, `event_time` (when the rule fired), `day` (that
//! time's UTC date, `YYYY-MM-DD`, for the per-day cap the SQL applies) and `evidence`
//! (JSON text: what made the rule fire).
//! - `offer_rules` reads placed orders (`order_placed` events with `customer_id`,
//!   `order_id`, `event_time` and the restaurant's `time_zone`):
//!   - `loyalty_3rd_order`: an order that is the customer's `loyalty_nth` (default 3)
//!     within `loyalty_within` (default 7d), i.e. exactly that many orders in
//!     (order time − `loyalty_within`, order time]. Evidence: those orders.
//!   - `breakfast_winback`: at every `winback_check` boundary T of event time (default
//!     1d: UTC midnight), a customer with at least `breakfast_usual` (default 3)
//!     breakfast orders in the `breakfast_lookback` (default 28d) before the last
//!     `winback_quiet` (default 7d), i.e. in (T − quiet − lookback, T − quiet], and none
//!     in (T − quiet, T]. Once per lapse: not again until a new breakfast order. A
//!     breakfast order is one placed before `breakfast_until` (default 10:30) in the
//!     restaurant's local time (`time_zone`, IANA; UTC when unknown).
//! - `cart_nudge` reads app events (`cart_updated`, `session_ended` with `converted`):
//!   `cart_nudge` when a customer's last cart update is `nudge_after` (default 20m) old
//!   and no app checkout (a `session_ended` with `converted = true`) followed it.
//!   Evidence: the cart update.
//!
//! Invariants (as `order_tracking`):
//! - Each key's events are applied in event-time order (ties: event id) once the
//!   watermark has passed them, so results do not depend on arrival order within the
//!   watermark's delay; an event behind the watermark on arrival is a dead letter.
//! - A duplicate (an order id, or an app event id, already applied) changes nothing.
//! - Timers are event time: a rule that fires because nothing happened fires when the
//!   watermark passes its deadline (at the end of a bounded input, every pending one).

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{TimeZone, Timelike};
use datafusion::common::ScalarValue;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{EventTimeUnit, OperatorSpec, ts, ts_type};
use crate::engine::{EngineError, OperatorFactory, Result};
use crate::operators::{KeyedProcessFunction, ProcessContext, Row};

/// The schema both operators emit.
pub fn trigger_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Int64, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("offer", DataType::Utf8, false),
        Field::new("event_time", ts_type(), false),
        Field::new("day", DataType::Utf8, false),
        Field::new("evidence", DataType::Utf8, false),
    ]))
}

/// RFC 3339 (UTC, milliseconds) of `ms`.
fn iso(ms: i64) -> String {
    chrono::Utc
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

fn trigger(
    customer: i64,
    rule: &str,
    offer: &str,
    at: i64,
    evidence: serde_json::Value,
) -> Vec<ScalarValue> {
    vec![
        ScalarValue::Int64(Some(customer)),
        ScalarValue::from(rule),
        ScalarValue::from(offer),
        ts(Some(at)),
        ScalarValue::from(iso(at)[..10].to_string()),
        ScalarValue::from(evidence.to_string()),
    ]
}

/// The key's customer id (the first key column).
fn customer(ctx: &ProcessContext<'_>) -> i64 {
    match ctx.key().first() {
        Some(k) => match k.cast_to(&DataType::Int64) {
            Ok(ScalarValue::Int64(Some(v))) => v,
            _ => 0,
        },
        None => 0,
    }
}

/// Option `key` as a duration in ms, more than zero.
fn duration_option(spec: &OperatorSpec<'_>, key: &str, default: &str) -> Result<i64> {
    match spec.duration_ms(key, default)? {
        0 => Err(EngineError::Invalid(format!(
            "operator {}: {key} = '{}': must be more than zero",
            spec.name,
            spec.option(key, default)
        ))
        .into()),
        ms => Ok(ms),
    }
}

fn count_option(spec: &OperatorSpec<'_>, key: &str, default: &str) -> Result<usize> {
    let text = spec.option(key, default);
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(EngineError::Invalid(format!(
            "operator {}: {key} = '{text}': expected a whole number above zero",
            spec.name
        ))
        .into()),
    }
}

/// Whether `ms` is before `until` (minutes after local midnight) in `zone`.
fn is_breakfast(ms: i64, zone: Option<&str>, until_minutes: u32) -> bool {
    let Some(utc) = chrono::Utc.timestamp_millis_opt(ms).single() else {
        return false;
    };
    let tz = zone
        .and_then(|z| z.parse::<Tz>().ok())
        .unwrap_or_else(|| "+00:00".parse::<Tz>().expect("UTC"));
    let local = utc.with_timezone(&tz);
    local.hour() * 60 + local.minute() < until_minutes
}

// ---------------------------------------------------------------------------------
// offer_rules

/// A placed order, as `offer_rules` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Placed {
    order_id: i64,
    at: i64,
    event_id: String,
    breakfast: bool,
}

/// A customer's state for the order rules.
#[derive(Default, Serialize, Deserialize)]
struct Orders {
    /// Orders waiting for the watermark.
    pending: Vec<Placed>,
    /// Orders within `loyalty_within` of the latest, oldest first.
    recent: VecDeque<Placed>,
    /// Breakfast orders within `breakfast_lookback + winback_quiet`, oldest first.
    breakfasts: VecDeque<Placed>,
    /// The next win-back check (a timer).
    next_check: Option<i64>,
    /// The time of the last breakfast order when a win-back was sent for its lapse.
    winback_for: Option<i64>,
}

#[derive(Clone)]
struct OfferRules {
    unit: EventTimeUnit,
    nth: usize,
    within: i64,
    loyalty_offer: String,
    breakfast_until: u32,
    usual: usize,
    lookback: i64,
    quiet: i64,
    check: i64,
    winback_offer: String,
}

impl OfferRules {
    fn apply(&self, o: &mut Orders, p: Placed, ctx: &mut ProcessContext<'_>) {
        while o.recent.front().is_some_and(|r| r.at <= p.at - self.within) {
            o.recent.pop_front();
        }
        if o.recent.iter().any(|r| r.order_id == p.order_id)
            || o.breakfasts.iter().any(|r| r.order_id == p.order_id)
        {
            return; // a duplicate
        }
        o.recent.push_back(p.clone());
        ctx.register_timer(p.at + self.within);
        if o.recent.len() == self.nth {
            let orders: Vec<_> = o
                .recent
                .iter()
                .map(|r| json!({"order_id": r.order_id, "at": iso(r.at)}))
                .collect();
            ctx.emit(trigger(
                customer(ctx),
                "loyalty_3rd_order",
                &self.loyalty_offer,
                p.at,
                json!({"orders": orders, "within": self.within / 1000}),
            ));
        }
        if p.breakfast {
            o.breakfasts.push_back(p.clone());
            let next = (p.at.div_euclid(self.check) + 1) * self.check;
            if o.next_check.is_none_or(|t| t > next) {
                o.next_check = Some(next);
                ctx.register_timer(next);
            }
        }
    }

    fn winback(&self, o: &mut Orders, t: i64, ctx: &mut ProcessContext<'_>) {
        while o
            .breakfasts
            .front()
            .is_some_and(|b| b.at <= t - self.quiet - self.lookback)
        {
            o.breakfasts.pop_front();
        }
        let recent = o
            .breakfasts
            .iter()
            .filter(|b| b.at > t - self.quiet)
            .count();
        let usual: Vec<&Placed> = o
            .breakfasts
            .iter()
            .filter(|b| b.at <= t - self.quiet)
            .collect();
        let last = usual.last().map(|b| b.at);
        if recent == 0 && usual.len() >= self.usual && o.winback_for != last {
            o.winback_for = last;
            let lb = usual.last().expect("usual is not empty");
            ctx.emit(trigger(
                customer(ctx),
                "breakfast_winback",
                &self.winback_offer,
                t,
                json!({
                    "breakfast_orders": usual.len(),
                    "last_breakfast": {"order_id": lb.order_id, "at": iso(lb.at)},
                    "none_since": iso(t - self.quiet),
                }),
            ));
        }
        o.next_check = None;
        if !o.breakfasts.is_empty() {
            o.next_check = Some(t + self.check);
            ctx.register_timer(t + self.check);
        }
    }
}

impl KeyedProcessFunction for OfferRules {
    type State = Orders;

    fn process(
        &mut self,
        row: &Row<'_>,
        o: &mut Orders,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<()> {
        let (Some(event_id), Some(at), Some(order_id)) = (
            row.str("event_id")?,
            row.i64("event_time")?,
            row.i64("order_id")?,
        ) else {
            ctx.dead_letter(
                row,
                "not a placed order: event_id, event_time and order_id are required",
            );
            return Ok(());
        };
        if row.has("event_type")
            && row
                .str("event_type")?
                .as_deref()
                .is_some_and(|t| t != "order_placed")
        {
            return Ok(());
        }
        let at = self.unit.ms(at);
        if !super::in_order::admit(row, at, "the customer's later orders", ctx) {
            return Ok(());
        }
        let zone = if row.has("time_zone") {
            row.str("time_zone")?
        } else {
            None
        };
        o.pending.push(Placed {
            order_id,
            at,
            event_id,
            breakfast: is_breakfast(at, zone.as_deref(), self.breakfast_until),
        });
        Ok(())
    }

    fn on_timer(&mut self, time: i64, o: &mut Orders, ctx: &mut ProcessContext<'_>) -> Result<()> {
        let now = super::in_order::due(
            &mut o.pending,
            time,
            |p| p.at,
            |a, b| (a.at, &a.event_id).cmp(&(b.at, &b.event_id)),
        );
        for p in now {
            self.apply(o, p, ctx);
        }
        if o.next_check == Some(time) {
            self.winback(o, time, ctx);
        }
        while o.recent.front().is_some_and(|r| r.at <= time - self.within) {
            o.recent.pop_front();
        }
        if o.pending.is_empty() && o.recent.is_empty() && o.breakfasts.is_empty() {
            ctx.clear_state();
        }
        Ok(())
    }
}

/// `offer_rules`: placed orders keyed by `customer_id` → `loyalty_3rd_order` and
/// `breakfast_winback` triggers (see the module). Options: `loyalty_nth` (3),
/// `loyalty_within` (7d), `loyalty_offer` (LOYALTY_3RD_ORDER), `breakfast_until`
/// (10:30), `breakfast_usual` (3), `breakfast_lookback` (28d), `winback_quiet` (7d),
/// `winback_check` (1d), `winback_offer` (BREAKFAST_WINBACK).
pub fn offer_rules(spec: &OperatorSpec<'_>) -> Result<Arc<dyn OperatorFactory>> {
    spec.only_options(&[
        "loyalty_nth",
        "loyalty_within",
        "loyalty_offer",
        "breakfast_until",
        "breakfast_usual",
        "breakfast_lookback",
        "winback_quiet",
        "winback_check",
        "winback_offer",
    ])?;
    let unit = spec.event_time_unit(&["event_id", "event_time", "order_id"], "placed orders")?;
    let until = spec.option("breakfast_until", "10:30");
    let breakfast_until = until
        .split_once(':')
        .and_then(|(h, m)| Some((h.trim().parse::<u32>().ok()?, m.trim().parse::<u32>().ok()?)))
        .filter(|(h, m)| *h <= 24 && *m < 60)
        .map(|(h, m)| h * 60 + m)
        .ok_or_else(|| {
            crate::Error::from(EngineError::Invalid(format!(
                "operator {}: breakfast_until = '{until}': expected a local time HH:MM",
                spec.name
            )))
        })?;
    let rules = OfferRules {
        unit,
        nth: count_option(spec, "loyalty_nth", "3")?,
        within: duration_option(spec, "loyalty_within", "7d")?,
        loyalty_offer: spec
            .option("loyalty_offer", "LOYALTY_3RD_ORDER")
            .to_string(),
        breakfast_until,
        usual: count_option(spec, "breakfast_usual", "3")?,
        lookback: duration_option(spec, "breakfast_lookback", "28d")?,
        quiet: duration_option(spec, "winback_quiet", "7d")?,
        check: duration_option(spec, "winback_check", "1d")?,
        winback_offer: spec
            .option("winback_offer", "BREAKFAST_WINBACK")
            .to_string(),
    };
    spec.process(trigger_schema(), &[], move || rules.clone())
}

// ---------------------------------------------------------------------------------
// cart_nudge

/// An app event, as `cart_nudge` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AppEvent {
    event_id: String,
    kind: String,
    at: i64,
    session_id: Option<String>,
    cart_total: Option<f64>,
    converted: bool,
}

/// A customer's state for the cart nudge.
#[derive(Default, Serialize, Deserialize)]
struct Cart {
    pending: Vec<AppEvent>,
    /// The last cart update with no checkout since.
    open: Option<AppEvent>,
}

struct CartNudge {
    unit: EventTimeUnit,
    after: i64,
    offer: String,
}

impl KeyedProcessFunction for CartNudge {
    type State = Cart;

    fn process(&mut self, row: &Row<'_>, c: &mut Cart, ctx: &mut ProcessContext<'_>) -> Result<()> {
        let (Some(event_id), Some(kind), Some(at)) = (
            row.str("event_id")?,
            row.str("event_type")?,
            row.i64("event_time")?,
        ) else {
            ctx.dead_letter(
                row,
                "not an app event: event_id, event_type and event_time are required",
            );
            return Ok(());
        };
        if kind != "cart_updated" && kind != "session_ended" {
            return Ok(());
        }
        let at = self.unit.ms(at);
        if !super::in_order::admit(row, at, "the customer's later app events", ctx) {
            return Ok(());
        }
        let session_id = if row.has("session_id") {
            row.str("session_id")?
        } else {
            None
        };
        let cart_total = if row.has("cart_total") {
            match row.get("cart_total")? {
                ScalarValue::Float64(v) => v,
                ScalarValue::Float32(v) => v.map(f64::from),
                _ => None,
            }
        } else {
            None
        };
        let converted = row.has("converted")
            && matches!(row.get("converted")?, ScalarValue::Boolean(Some(true)));
        c.pending.push(AppEvent {
            event_id,
            kind,
            at,
            session_id,
            cart_total,
            converted,
        });
        Ok(())
    }

    fn on_timer(&mut self, time: i64, c: &mut Cart, ctx: &mut ProcessContext<'_>) -> Result<()> {
        let mut now = super::in_order::due(
            &mut c.pending,
            time,
            |e| e.at,
            |a, b| (a.at, &a.event_id).cmp(&(b.at, &b.event_id)),
        );
        // A duplicate is due with its first copy (or arrives behind the watermark).
        now.dedup_by(|a, b| a.event_id == b.event_id);
        for e in now {
            if e.kind == "cart_updated" {
                ctx.register_timer(e.at + self.after);
                c.open = Some(e);
            } else if e.converted {
                c.open = None;
            }
        }
        if let Some(open) = c.open.take_if(|o| o.at + self.after == time) {
            ctx.emit(trigger(
                customer(ctx),
                "cart_nudge",
                &self.offer,
                time,
                json!({
                    "cart_event_id": open.event_id,
                    "session_id": open.session_id,
                    "cart_updated_at": iso(open.at),
                    "cart_total": open.cart_total,
                }),
            ));
        }
        if c.pending.is_empty() && c.open.is_none() {
            ctx.clear_state();
        }
        Ok(())
    }
}

/// `cart_nudge`: app events keyed by `customer_id` → a `cart_nudge` trigger
/// `nudge_after` (20m) after a cart update without a checkout since. Options:
/// `nudge_after`, `nudge_offer` (CART_NUDGE).
pub fn cart_nudge(spec: &OperatorSpec<'_>) -> Result<Arc<dyn OperatorFactory>> {
    spec.only_options(&["nudge_after", "nudge_offer"])?;
    let unit = spec.event_time_unit(&["event_id", "event_type", "event_time"], "app events")?;
    let after = duration_option(spec, "nudge_after", "20m")?;
    let offer = spec.option("nudge_offer", "CART_NUDGE").to_string();
    spec.process(trigger_schema(), &[], move || CartNudge {
        unit,
        after,
        offer: offer.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakfast_is_local_time() {
        // 2026-01-05T16:00Z is 08:00 in Los Angeles, 11:00 in Toronto.
        let t = 1_767_628_800_000;
        assert!(is_breakfast(t, Some("America/Los_Angeles"), 630));
        assert!(!is_breakfast(t, Some("America/Toronto"), 630));
        assert!(!is_breakfast(t, None, 630));
        assert_eq!(iso(t), "2026-01-05T16:00:00.000Z");
    }
}
