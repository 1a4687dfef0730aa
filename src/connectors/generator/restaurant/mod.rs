//! The restaurant world: a quick-service restaurant chain.
//!
//! Entities, all derived from the seed: 200 restaurants in 25 North American cities,
//! a menu of 33 items (prices vary with the seed), 12 app offers and 50,000
//! customers. Streams:
//! - `orders`: mobile, kiosk, drive-thru and delivery order lifecycles:
//!   `order_placed → order_paid → order_preparing → order_ready → order_picked_up` (or
//!   `order_delivered`), about 4% ending in `order_cancelled` before `order_ready`.
//!   An app order may follow an app session of the `app` stream (with the same seed,
//!   start and rate) whose customer clicked an offer and converted: it is then that
//!   customer's, and its `order_placed` carries the offer's `offer_id`.
//! - `kitchen`: one ticket per order and kitchen station, from the same per-order draws,
//!   so tickets agree with the orders: `queued_at` is the payment time, the earliest
//!   `started_at` is the `order_preparing` time and `order_ready` follows the last
//!   `finished_at`. Emitted when finished (or cancelled).
//! - `app`: app sessions: `session_started`, `offer_viewed`, `offer_clicked`,
//!   `cart_updated`, `session_ended`.
//! - `restaurants`, `menu_items`, `customers`: the reference tables.
//!
//! Orders (sessions) are placed at evenly spread, jittered instants, so that the
//! `orders` (`app`) stream carries `rate` distinct events per second of event time
//! (1000 when unpaced). Their events are released in event-time order through a heap,
//! then each is given an emission delay (`out_of_order`, `late_fraction`) and possibly
//! a duplicate emitted later; records come out by emission time. Records are JSON
//! objects, timestamps mixed as RFC 3339 strings and epoch milliseconds; a malformed
//! record is truncated, has a value of the wrong type, or is not JSON at all.
//!
//! Files: [`catalog`] (the static data: cities, menu, offers, names), [`world`] (the
//! entities built from the seed), [`orders`] and [`sessions`] (one order's or app
//! session's events, drawn from the seed), [`schemas`] (the streams' Arrow schemas,
//! checked against the Avro contracts in `schemas/`), [`json`] (records as JSON, and
//! their corruption), [`streams`] (records in emission order); this file: the entry
//! points `generator/mod.rs` calls.

mod catalog;
mod json;
mod orders;
mod schemas;
mod sessions;
mod streams;
#[cfg(test)]
mod testing;
mod world;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::{Gen, Params};
use crate::dlq::BadRecords;
use crate::formats::json::JsonDecoder;
use schemas::{
    app_schema, customers_schema, kitchen_schema, menu_items_schema, orders_schema,
    restaurants_schema,
};
use streams::{Records, records};

pub(super) const STREAMS: &[&str] = &[
    "orders",
    "kitchen",
    "app",
    "restaurants",
    "menu_items",
    "customers",
];

// Random-stream tags: one per kind of unit, so that streams are independent.
const TAG_RESTAURANT: u64 = 0x7265_7374_0001;
const TAG_MENU: u64 = 0x7265_7374_0002;
const TAG_CUSTOMER: u64 = 0x7265_7374_0003;
const TAG_ORDER: u64 = 0x7265_7374_0004;
const TAG_ORDER_JITTER: u64 = 0x7265_7374_0005;
const TAG_SESSION: u64 = 0x7265_7374_0006;
const TAG_SESSION_JITTER: u64 = 0x7265_7374_0007;
const TAG_ORDER_EVENT_ID: u64 = 0x7265_7374_0008;
const TAG_APP_EVENT_ID: u64 = 0x7265_7374_0009;
const TAG_SESSION_ID: u64 = 0x7265_7374_000a;
const TAG_ORDER_OFFER: u64 = 0x7265_7374_000b;
const TAG_ORDER_IMPOSSIBLE: u64 = 0x7265_7374_000c;
const TAG_EMIT_ORDERS: u64 = 0x7265_7374_0010;
const TAG_EMIT_KITCHEN: u64 = 0x7265_7374_0011;
const TAG_EMIT_APP: u64 = 0x7265_7374_0012;
const TAG_EMIT_REFERENCE: u64 = 0x7265_7374_0013;

// ------------------------------------------------------------------------------------
// Schemas
// ------------------------------------------------------------------------------------

pub(super) fn schema(stream: &str) -> Option<SchemaRef> {
    let s = match stream {
        "orders" => orders_schema(),
        "kitchen" => kitchen_schema(),
        "app" => app_schema(),
        "restaurants" => restaurants_schema(),
        "menu_items" => menu_items_schema(),
        "customers" => customers_schema(),
        _ => return None,
    };
    Some(Arc::new(s))
}

pub(super) fn is_reference(stream: &str) -> bool {
    matches!(stream, "restaurants" | "menu_items" | "customers")
}

// ------------------------------------------------------------------------------------
// Generator
// ------------------------------------------------------------------------------------

struct RestaurantGen {
    records: Box<dyn Records>,
    decoder: JsonDecoder,
}

pub(super) fn new_gen(stream: &str, params: &Params) -> crate::Result<Box<dyn Gen>> {
    let schema = schema(stream)
        .ok_or_else(|| super::other(format!("restaurant world has no stream '{stream}'")))?;
    Ok(Box::new(RestaurantGen {
        records: records(stream, params)?,
        decoder: JsonDecoder::new(schema)?,
    }))
}

impl Gen for RestaurantGen {
    fn peek_schedule(&mut self) -> Option<i64> {
        self.records.peek()
    }

    fn push_next(&mut self, bad: &mut BadRecords) -> crate::Result<()> {
        if let Some(r) = self.records.next_record() {
            self.decoder.push(&r, bad);
        }
        Ok(())
    }

    fn pending_rows(&self) -> usize {
        self.decoder.buffered()
    }

    fn take_batch(&mut self, bad: &mut BadRecords) -> crate::Result<Option<RecordBatch>> {
        let batch = self.decoder.flush()?;
        self.decoder.report_late(bad);
        Ok(batch)
    }
}

/// `count` raw records of partition 0 of 1, one per line.
pub(super) fn write_lines(
    stream: &str,
    params: &Params,
    count: u64,
    out: &mut dyn std::io::Write,
) -> crate::Result<u64> {
    let mut records = records(stream, params)?;
    let mut written = 0;
    while written < count {
        let Some(r) = records.next_record() else {
            break;
        };
        out.write_all(&r)
            .and_then(|_| out.write_all(b"\n"))
            .map_err(|e| crate::Error::io("<generator output>", e))?;
        written += 1;
    }
    Ok(written)
}
