//! Records as JSON: one order event, kitchen ticket, app event or reference row per
//! object, timestamps as RFC 3339 text or epoch milliseconds; and the corruptions
//! that make a record malformed.

use chrono::{DateTime, SecondsFormat};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Serialize, Serializer};

use super::catalog::OFFERS;
use super::orders::{Order, Step, Ticket};
use super::sessions::{AppAction, Session};
use super::world::World;
use super::{TAG_APP_EVENT_ID, TAG_ORDER_EVENT_ID, TAG_SESSION_ID};
use crate::connectors::generator::mix;

/// A timestamp as it appears in a record: RFC 3339 text or epoch milliseconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ts {
    pub(super) ms: i64,
    pub(super) millis: bool,
}

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.millis {
            s.serialize_i64(self.ms)
        } else {
            match DateTime::from_timestamp_millis(self.ms) {
                Some(t) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true)),
                None => s.serialize_i64(self.ms),
            }
        }
    }
}

pub(super) fn dollars(cents: i64) -> f64 {
    cents as f64 / 100.0
}

#[derive(Serialize)]
struct LineJson {
    menu_item_id: i64,
    name: &'static str,
    quantity: i32,
    unit_price: f64,
}

#[derive(Serialize)]
struct OrderEventJson {
    event_id: String,
    event_type: &'static str,
    event_time: Ts,
    order_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    customer_id: Option<i64>,
    restaurant_id: i64,
    channel: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    items: Option<Vec<LineJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_method: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_ready_time: Option<Ts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offer_id: Option<i64>,
}

#[derive(Serialize)]
struct TicketJson {
    ticket_id: String,
    event_time: Ts,
    order_id: i64,
    restaurant_id: i64,
    station: &'static str,
    item_count: i32,
    status: &'static str,
    queued_at: Ts,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<Ts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<Ts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prep_seconds: Option<f64>,
}

#[derive(Serialize)]
struct AppEventJson {
    event_id: String,
    event_type: &'static str,
    event_time: Ts,
    session_id: String,
    customer_id: i64,
    device: &'static str,
    app_version: &'static str,
    restaurant_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    menu_item_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quantity: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cart_total: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offer_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offer_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    converted: Option<bool>,
}

#[derive(Serialize)]
pub(super) struct RestaurantJson<'a> {
    pub(super) restaurant_id: i64,
    pub(super) name: &'a str,
    pub(super) city: &'static str,
    pub(super) region: &'static str,
    pub(super) country: &'static str,
    pub(super) time_zone: &'static str,
    pub(super) latitude: f64,
    pub(super) longitude: f64,
    pub(super) has_drive_thru: bool,
}

#[derive(Serialize)]
pub(super) struct MenuItemJson {
    pub(super) menu_item_id: i64,
    pub(super) name: &'static str,
    pub(super) category: &'static str,
    pub(super) station: &'static str,
    pub(super) price: f64,
    pub(super) calories: i32,
}

#[derive(Serialize)]
pub(super) struct CustomerJson {
    pub(super) customer_id: i64,
    pub(super) name: String,
    pub(super) email: String,
    pub(super) marketing_opt_in: bool,
    pub(super) home_restaurant_id: i64,
    pub(super) loyalty_tier: &'static str,
    pub(super) signed_up_at: Ts,
}

pub(super) fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

pub(super) fn render_order_event(w: &World, o: &Order, k: usize, millis: bool) -> Vec<u8> {
    let ts = |ms| Ts { ms, millis };
    let (at, step) = o.events[k];
    let mut e = OrderEventJson {
        event_id: format!(
            "{:016x}",
            mix(w.seed, TAG_ORDER_EVENT_ID, o.idx * 8 + k as u64)
        ),
        event_type: step.event_type(),
        event_time: ts(at),
        order_id: o.id,
        customer_id: o.customer_id,
        restaurant_id: o.restaurant_id,
        channel: o.channel.name(),
        items: None,
        total: None,
        payment_method: None,
        amount: None,
        estimated_ready_time: None,
        cancel_reason: None,
        offer_id: None,
    };
    match step {
        Step::Placed => {
            e.items = Some(
                o.lines
                    .iter()
                    .map(|l| {
                        let m = &w.menu[l.menu];
                        LineJson {
                            menu_item_id: m.id,
                            name: m.name,
                            quantity: l.quantity,
                            unit_price: dollars(m.price_cents),
                        }
                    })
                    .collect(),
            );
            e.total = Some(dollars(o.total_cents));
            e.offer_id = o.offer_id;
        }
        Step::Paid => {
            e.payment_method = Some(o.payment_method);
            e.amount = Some(dollars(o.total_cents));
        }
        Step::Preparing => e.estimated_ready_time = Some(ts(o.estimated_ready)),
        Step::Cancelled(reason) => e.cancel_reason = Some(reason),
        Step::Ready | Step::PickedUp | Step::Delivered => {}
    }
    to_json(&e)
}

pub(super) fn render_ticket(o: &Order, t: &Ticket, millis: bool) -> Vec<u8> {
    let ts = |ms| Ts { ms, millis };
    let e = TicketJson {
        ticket_id: format!("{}-{}", o.id, t.station.name()),
        event_time: ts(o.ticket_time(t)),
        order_id: o.id,
        restaurant_id: o.restaurant_id,
        station: t.station.name(),
        item_count: t.items,
        status: if t.cancelled {
            "cancelled"
        } else {
            "completed"
        },
        queued_at: ts(t.queued),
        started_at: t.started.map(ts),
        finished_at: t.finished.map(ts),
        wait_seconds: t.started.map(|s| (s - t.queued) as f64 / 1000.0),
        prep_seconds: match (t.started, t.finished) {
            (Some(s), Some(f)) => Some((f - s) as f64 / 1000.0),
            _ => None,
        },
    };
    to_json(&e)
}

pub(super) fn render_app_event(w: &World, s: &Session, k: usize, millis: bool) -> Vec<u8> {
    let (at, action) = s.events[k];
    let mut e = AppEventJson {
        event_id: format!(
            "{:016x}",
            mix(w.seed, TAG_APP_EVENT_ID, s.idx * 64 + k as u64)
        ),
        event_type: "",
        event_time: Ts { ms: at, millis },
        session_id: format!("{:016x}", mix(w.seed, TAG_SESSION_ID, s.idx)),
        customer_id: s.customer_id,
        device: s.device,
        app_version: s.app_version,
        restaurant_id: s.restaurant_id,
        menu_item_id: None,
        quantity: None,
        cart_total: None,
        offer_id: None,
        offer_name: None,
        duration_seconds: None,
        converted: None,
    };
    match action {
        AppAction::Started => e.event_type = "session_started",
        AppAction::OfferViewed(o) | AppAction::OfferClicked(o) => {
            e.event_type = if matches!(action, AppAction::OfferViewed(_)) {
                "offer_viewed"
            } else {
                "offer_clicked"
            };
            e.offer_id = Some(o as i64 + 1);
            e.offer_name = Some(OFFERS[o]);
        }
        AppAction::CartUpdated {
            menu,
            quantity,
            cart_cents,
        } => {
            e.event_type = "cart_updated";
            e.menu_item_id = Some(w.menu[menu].id);
            e.quantity = Some(quantity);
            e.cart_total = Some(dollars(cart_cents));
        }
        AppAction::Ended {
            duration_ms,
            converted,
        } => {
            e.event_type = "session_ended";
            e.duration_seconds = Some(duration_ms as f64 / 1000.0);
            e.converted = Some(converted);
        }
    }
    to_json(&e)
}

/// Corrupts a record: truncated, a value of the wrong type, or not JSON at all.
pub(super) fn corrupt(record: &[u8], numeric_field: &str, rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.random_range(0..4u32) {
        0 => {
            // Cut short, as by a producer that died mid-write: a proper prefix of an
            // object is never valid JSON.
            if record.len() < 2 {
                return b"{".to_vec();
            }
            let cut = rng.random_range(1..record.len());
            record[..cut].to_vec()
        }
        1 | 2 => {
            // Valid JSON, but a number (or the event time) that is not one.
            let field = if rng.random_bool(0.5) {
                numeric_field
            } else {
                "event_time"
            };
            let garbage = ["abc", "n/a", "", "12,50", "NaN apples"][rng.random_range(0..5)];
            match serde_json::from_slice::<serde_json::Value>(record) {
                Ok(serde_json::Value::Object(mut m)) => {
                    m.insert(field.to_string(), serde_json::Value::String(garbage.into()));
                    serde_json::to_vec(&m).unwrap_or_default()
                }
                _ => record[..record.len() / 2].to_vec(),
            }
        }
        _ => {
            let text = [
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
                "order_placed,1042,17,app,12.99",
                "ERROR: upstream connection reset",
                "\u{1}\u{2}binary\u{3}payload",
                "{\"event_type\": 'order_paid', order_id: 12}",
            ][rng.random_range(0..5)];
            text.as_bytes().to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::schema;
    use super::super::testing::{params, raw};
    use crate::dlq::BadRecords;
    use crate::formats::json::JsonDecoder;

    #[test]
    fn malformed_records_are_refused_by_the_decoder() {
        let p = params(5, |s| s.malformed_fraction = 0.05);
        for stream in ["orders", "kitchen", "app"] {
            let recs = raw(stream, &p, 10_000);
            let mut decoder = JsonDecoder::new(schema(stream).unwrap()).unwrap();
            let mut bad = BadRecords::detached("test");
            let mut refused = 0;
            let mut not_json = 0;
            for r in &recs {
                if !decoder.push(r, &mut bad) {
                    refused += 1;
                    if serde_json::from_slice::<Value>(r).is_err() {
                        not_json += 1;
                    }
                }
            }
            let batch = decoder.flush().unwrap().unwrap();
            decoder.report_late(&mut bad);
            assert_eq!(bad.count(), refused);
            assert_eq!(batch.num_rows() as u64, recs.len() as u64 - refused);
            let share = refused as f64 / recs.len() as f64;
            assert!(
                (0.035..0.065).contains(&share),
                "{stream}: malformed share {share}"
            );
            // Broken JSON and well-formed records with wrong values, both.
            assert!(
                not_json > 0 && not_json < refused,
                "{stream}: {not_json} of {refused}"
            );
        }
    }
}
