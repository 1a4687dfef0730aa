//! Records in emission order: the event streams' timelines (units opened in event-time
//! order, each event given its emission delay, duplicate and corruption) and the
//! reference tables, split over partitions.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rand::Rng;

use super::catalog::{CITIES, MENU};
use super::json::{
    CustomerJson, MenuItemJson, RestaurantJson, Ts, corrupt, dollars, render_app_event,
    render_order_event, render_ticket, to_json,
};
use super::orders::{Order, Step};
use super::world::{N_CUSTOMERS, N_RESTAURANTS, World};
use super::{
    TAG_EMIT_APP, TAG_EMIT_KITCHEN, TAG_EMIT_ORDERS, TAG_EMIT_REFERENCE, TAG_ORDER_IMPOSSIBLE,
};
use crate::connectors::generator::{Params, mix, rng_for, splitmix64};

/// Records in emission order, each with its schedule (emission time).
pub(super) trait Records: Send {
    fn peek(&mut self) -> Option<i64>;
    fn next_record(&mut self) -> Option<Vec<u8>>;
}

/// A kind of unit (order, session) with timed events.
trait UnitModel: Send + Sync {
    /// No event of unit `idx` is earlier; non-decreasing in `idx`.
    fn start(&self, idx: u64) -> i64;
    /// The event times of unit `idx`, in causal order.
    fn times(&self, idx: u64, out: &mut Vec<i64>);
    fn render(&self, idx: u64, k: usize, millis: bool) -> Vec<u8>;
    /// A numeric field every record has, for wrong-type corruptions.
    fn numeric_field(&self) -> &'static str;
}

/// The orders' lifecycles; with `impossible` > 0, that fraction of orders has one more
/// event a minute after its last: a step no order takes after its final state.
struct OrdersModel {
    world: Arc<World>,
    impossible: f64,
}
struct KitchenModel(Arc<World>);
struct AppModel(Arc<World>);

impl OrdersModel {
    /// Order `idx`, with its impossible extra event when it has one.
    fn order(&self, idx: u64) -> Order {
        let mut o = self.world.order(idx);
        if self.impossible > 0.0 {
            let mut rng = rng_for(self.world.seed, TAG_ORDER_IMPOSSIBLE, idx);
            if rng.random::<f64>() < self.impossible {
                let last = o.events.last().map_or(0, |(t, _)| *t);
                let step = [Step::Paid, Step::Preparing, Step::Ready][rng.random_range(0..3)];
                o.events.push((last + 60_000, step));
            }
        }
        o
    }
}

impl UnitModel for OrdersModel {
    fn start(&self, idx: u64) -> i64 {
        self.world.order_placed_at(idx)
    }

    fn times(&self, idx: u64, out: &mut Vec<i64>) {
        out.extend(self.order(idx).events.iter().map(|(t, _)| *t));
    }

    fn render(&self, idx: u64, k: usize, millis: bool) -> Vec<u8> {
        render_order_event(&self.world, &self.order(idx), k, millis)
    }

    fn numeric_field(&self) -> &'static str {
        "order_id"
    }
}

impl UnitModel for KitchenModel {
    fn start(&self, idx: u64) -> i64 {
        self.0.order_placed_at(idx)
    }

    fn times(&self, idx: u64, out: &mut Vec<i64>) {
        let o = self.0.order(idx);
        out.extend(
            o.ticket_order()
                .into_iter()
                .map(|i| o.ticket_time(&o.tickets[i])),
        );
    }

    fn render(&self, idx: u64, k: usize, millis: bool) -> Vec<u8> {
        let o = self.0.order(idx);
        let i = o.ticket_order()[k];
        render_ticket(&o, &o.tickets[i], millis)
    }

    fn numeric_field(&self) -> &'static str {
        "item_count"
    }
}

impl UnitModel for AppModel {
    fn start(&self, idx: u64) -> i64 {
        self.0.session_started_at(idx)
    }

    fn times(&self, idx: u64, out: &mut Vec<i64>) {
        out.extend(self.0.session(idx).events.iter().map(|(t, _)| *t));
    }

    fn render(&self, idx: u64, k: usize, millis: bool) -> Vec<u8> {
        render_app_event(&self.0, &self.0.session(idx), k, millis)
    }

    fn numeric_field(&self) -> &'static str {
        "customer_id"
    }
}

/// A record waiting for its emission time.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    emit_at: i64,
    event_time: i64,
    idx: u64,
    k: u32,
    copy: u8,
    bytes: Vec<u8>,
}

/// The events of a partition's units, released in event-time order, perturbed, and
/// emitted by emission time.
struct Timeline {
    model: Box<dyn UnitModel>,
    p: Params,
    emit_tag: u64,
    next_idx: u64,
    next_start: i64,
    /// Events of opened units: (event time, unit, event).
    events: BinaryHeap<Reverse<(i64, u64, u32)>>,
    /// Records with their emission time.
    out: BinaryHeap<Reverse<Pending>>,
    times: Vec<i64>,
}

impl Timeline {
    fn new(model: Box<dyn UnitModel>, p: &Params, emit_tag: u64) -> Self {
        let next_idx = p.partition;
        let next_start = model.start(next_idx);
        Timeline {
            model,
            p: p.clone(),
            emit_tag,
            next_idx,
            next_start,
            events: BinaryHeap::new(),
            out: BinaryHeap::new(),
            times: Vec::new(),
        }
    }

    /// Earliest event time anything not yet in `out` can have.
    fn frontier(&self) -> i64 {
        match self.events.peek() {
            Some(Reverse((t, _, _))) => (*t).min(self.next_start),
            None => self.next_start,
        }
    }

    fn open_unit(&mut self) {
        let idx = self.next_idx;
        self.times.clear();
        self.model.times(idx, &mut self.times);
        for (k, t) in self.times.iter().enumerate() {
            self.events.push(Reverse((*t, idx, k as u32)));
        }
        self.next_idx += self.p.parallelism;
        self.next_start = self.model.start(self.next_idx);
    }

    /// Gives event `k` of unit `idx` its emission time(s) and record(s).
    fn release(&mut self, event_time: i64, idx: u64, k: u32) {
        let mut rng = rng_for(self.p.seed, self.emit_tag, idx * 64 + k as u64);
        let delay = self.p.draw_delay(&mut rng);
        let dup = rng.random::<f64>() < self.p.dup;
        let dup_after = 1 + rng.random_range(0..self.p.out_of_order_ms + 2000);
        let millis = rng.random_bool(0.25);
        let bad = [
            rng.random::<f64>() < self.p.malformed,
            rng.random::<f64>() < self.p.malformed,
        ];
        let record = self.model.render(idx, k as usize, millis);
        let field = self.model.numeric_field();
        let emit_at = event_time + delay;
        let copies = if dup { 2 } else { 1 };
        for (copy, &is_bad) in bad.iter().enumerate().take(copies) {
            let bytes = if is_bad {
                corrupt(&record, field, &mut rng)
            } else {
                record.clone()
            };
            self.out.push(Reverse(Pending {
                emit_at: emit_at + if copy == 1 { dup_after } else { 0 },
                event_time,
                idx,
                k,
                copy: copy as u8,
                bytes,
            }));
        }
    }

    /// Generates until the earliest pending record can go out; returns its emission time.
    fn advance(&mut self) -> i64 {
        loop {
            let frontier = self.frontier();
            if let Some(Reverse(r)) = self.out.peek()
                && r.emit_at < frontier
            {
                return r.emit_at;
            }
            match self.events.peek() {
                Some(Reverse((t, _, _))) if *t < self.next_start => {
                    let Some(Reverse((t, idx, k))) = self.events.pop() else {
                        unreachable!("peeked");
                    };
                    self.release(t, idx, k);
                }
                _ => self.open_unit(),
            }
        }
    }
}

impl Records for Timeline {
    fn peek(&mut self) -> Option<i64> {
        Some(self.advance())
    }

    fn next_record(&mut self) -> Option<Vec<u8>> {
        self.advance();
        self.out.pop().map(|Reverse(r)| r.bytes)
    }
}

/// A reference table's entities of one partition, all due at the origin.
struct Reference {
    world: Arc<World>,
    stream: &'static str,
    next: u64,
    step: u64,
    len: u64,
}

impl Reference {
    fn render(&self, i: u64) -> Vec<u8> {
        let w = &self.world;
        match self.stream {
            "restaurants" => {
                let r = &w.restaurants[i as usize];
                let (city, region, country, tz, _, _) = CITIES[r.city];
                to_json(&RestaurantJson {
                    restaurant_id: r.id,
                    name: &r.name,
                    city,
                    region,
                    country,
                    time_zone: tz,
                    latitude: r.latitude,
                    longitude: r.longitude,
                    has_drive_thru: r.has_drive_thru,
                })
            }
            "menu_items" => {
                let m = &w.menu[i as usize];
                to_json(&MenuItemJson {
                    menu_item_id: m.id,
                    name: m.name,
                    category: m.category.name(),
                    station: m.station.name(),
                    price: dollars(m.price_cents),
                    calories: m.calories,
                })
            }
            _ => {
                let c = w.customer(i);
                let millis = splitmix64(mix(w.seed, TAG_EMIT_REFERENCE, i)).is_multiple_of(4);
                to_json(&CustomerJson {
                    customer_id: c.id,
                    name: format!("{} {}", c.first, c.last),
                    email: format!(
                        "{}.{}{}@example.com",
                        c.first.to_ascii_lowercase(),
                        c.last.to_ascii_lowercase(),
                        c.id
                    ),
                    marketing_opt_in: c.marketing_opt_in,
                    home_restaurant_id: c.home_restaurant as i64 + 1,
                    loyalty_tier: c.loyalty_tier,
                    signed_up_at: Ts {
                        ms: c.signed_up_at,
                        millis,
                    },
                })
            }
        }
    }
}

impl Records for Reference {
    fn peek(&mut self) -> Option<i64> {
        (self.next < self.len).then_some(self.world.origin_ms)
    }

    fn next_record(&mut self) -> Option<Vec<u8>> {
        if self.next >= self.len {
            return None;
        }
        let r = self.render(self.next);
        self.next += self.step;
        Some(r)
    }
}

pub(super) fn records(stream: &str, p: &Params) -> crate::Result<Box<dyn Records>> {
    let world = Arc::new(World::new(p));
    let reference = |stream: &'static str, len: u64| -> Box<dyn Records> {
        Box::new(Reference {
            world: world.clone(),
            stream,
            next: p.partition,
            step: p.parallelism,
            len,
        })
    };
    Ok(match stream {
        "orders" => Box::new(Timeline::new(
            Box::new(OrdersModel {
                world: world.clone(),
                impossible: p.impossible,
            }),
            p,
            TAG_EMIT_ORDERS,
        )),
        "kitchen" => Box::new(Timeline::new(
            Box::new(KitchenModel(world.clone())),
            p,
            TAG_EMIT_KITCHEN,
        )),
        "app" => Box::new(Timeline::new(
            Box::new(AppModel(world.clone())),
            p,
            TAG_EMIT_APP,
        )),
        "restaurants" => reference("restaurants", N_RESTAURANTS),
        "menu_items" => reference("menu_items", MENU.len() as u64),
        "customers" => reference("customers", N_CUSTOMERS),
        other => {
            return Err(super::super::other(format!(
                "restaurant world has no stream '{other}'"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::collections::HashSet;

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    use serde_json::Value;

    use super::super::new_gen;
    use super::super::testing::{ms, params, parsed, rank, raw};
    use crate::connectors::generator::{
        DEFAULT_START_MS, GeneratorSettings, Params, World as WorldKind,
    };
    use crate::dlq::BadRecords;

    #[test]
    fn orders_stream_is_in_event_time_order_and_causal_per_order() {
        let recs = parsed("orders", &params(1, |_| {}), 20_000);
        let mut last = i64::MIN;
        let mut per_order: HashMap<i64, Vec<usize>> = HashMap::new();
        let mut ids = HashSet::new();
        let (mut text, mut millis) = (0, 0);
        for r in &recs {
            let t = ms(&r["event_time"]);
            assert!(t >= last, "event time went back");
            last = t;
            match &r["event_time"] {
                Value::String(_) => text += 1,
                _ => millis += 1,
            }
            assert!(ids.insert(r["event_id"].as_str().unwrap().to_string()));
            let ty = r["event_type"].as_str().unwrap();
            per_order
                .entry(r["order_id"].as_i64().unwrap())
                .or_default()
                .push(rank(ty));
            match ty {
                "order_placed" => {
                    let items = r["items"].as_array().unwrap();
                    let sum: f64 = items
                        .iter()
                        .map(|i| {
                            i["unit_price"].as_f64().unwrap() * i["quantity"].as_f64().unwrap()
                        })
                        .sum();
                    assert!((sum - r["total"].as_f64().unwrap()).abs() < 0.005);
                }
                "order_paid" => assert!(r["payment_method"].is_string()),
                "order_preparing" => assert!(ms(&r["estimated_ready_time"]) > t),
                "order_cancelled" => assert!(r["cancel_reason"].is_string()),
                _ => {}
            }
        }
        for (order, ranks) in &per_order {
            assert!(
                ranks.windows(2).all(|w| w[0] < w[1]),
                "order {order}: {ranks:?}"
            );
        }
        // Every order seen from its first event on, in order of placement.
        let mut placed: Vec<i64> = per_order.keys().copied().collect();
        placed.sort();
        assert_eq!(placed.first(), Some(&1));
        assert!(text > 0 && millis > 0, "both timestamp styles are used");
        assert!(millis * 2 < text);
    }

    #[test]
    fn impossible_fraction_adds_one_step_after_an_orders_final_state() {
        // A slow rate, so that the first 20,000 records hold many complete orders.
        let clean = parsed("orders", &params(5, |s| s.rate = 5.0), 20_000);
        let broken = parsed(
            "orders",
            &params(5, |s| {
                s.rate = 5.0;
                s.impossible_fraction = 0.05;
            }),
            20_000,
        );
        let per_order = |recs: &[serde_json::Map<String, Value>]| {
            let mut m: HashMap<i64, Vec<(i64, usize)>> = HashMap::new();
            for r in recs {
                m.entry(r["order_id"].as_i64().unwrap()).or_default().push((
                    ms(&r["event_time"]),
                    rank(r["event_type"].as_str().unwrap()),
                ));
            }
            m
        };
        let (clean, broken_orders) = (per_order(&clean), per_order(&broken));
        let ids: HashSet<&str> = broken
            .iter()
            .map(|r| r["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), broken.len(), "event ids stay unique");
        let mut impossible = 0;
        for (order, steps) in &broken_orders {
            let Some(expected) = clean.get(order) else {
                continue;
            };
            // Both runs cut the stream after 20,000 records: compare complete orders.
            let is_final = |s: &[(i64, usize)]| s.last().is_some_and(|(_, r)| *r >= 4);
            if !is_final(expected) || steps.len() < expected.len() {
                continue;
            }
            assert_eq!(&steps[..expected.len()], &expected[..], "order {order}");
            if let Some(&(t, r)) = steps.get(expected.len()) {
                impossible += 1;
                assert_eq!(steps.len(), expected.len() + 1, "order {order}: {steps:?}");
                assert_eq!(t, expected.last().unwrap().0 + 60_000);
                assert!(
                    (1..=3).contains(&r),
                    "order {order}: step {r} after the end"
                );
            }
        }
        let complete = broken_orders
            .values()
            .filter(|s| s.iter().any(|(_, r)| *r >= 4))
            .count() as f64;
        assert!(
            (0.02 * complete..0.08 * complete).contains(&(impossible as f64)),
            "{impossible} impossible of {complete} orders"
        );
    }

    #[test]
    fn kitchen_stream_matches_orders_stream() {
        let p = params(3, |_| {});
        let orders = parsed("orders", &p, 40_000);
        let kitchen = parsed("kitchen", &p, 10_000);
        let mut by_order: HashMap<i64, HashMap<String, i64>> = HashMap::new();
        for r in &orders {
            by_order
                .entry(r["order_id"].as_i64().unwrap())
                .or_default()
                .insert(
                    r["event_type"].as_str().unwrap().into(),
                    ms(&r["event_time"]),
                );
        }
        let mut checked = 0;
        let mut last = i64::MIN;
        for t in &kitchen {
            let time = ms(&t["event_time"]);
            assert!(time >= last);
            last = time;
            let Some(o) = by_order.get(&t["order_id"].as_i64().unwrap()) else {
                continue;
            };
            let Some(paid) = o.get("order_paid") else {
                continue;
            };
            checked += 1;
            assert_eq!(ms(&t["queued_at"]), *paid);
            if let (Some(prep), Some(started)) = (o.get("order_preparing"), t.get("started_at")) {
                assert!(ms(started) >= *prep);
            }
            if let (Some(ready), Some(finished)) = (o.get("order_ready"), t.get("finished_at")) {
                assert!(ms(finished) < *ready);
                assert_eq!(t["status"], "completed");
            }
            if let Some(c) = o.get("order_cancelled")
                && t["status"] == "cancelled"
            {
                assert_eq!(time, *c);
            }
        }
        assert!(checked > 5000, "{checked} tickets checked");
    }

    #[test]
    fn duplicates_and_disorder_are_roughly_as_asked() {
        let p = params(11, |s| {
            s.duplicate_fraction = 0.1;
            s.out_of_order = std::time::Duration::from_secs(5);
        });
        let recs = raw("orders", &p, 20_000);
        let mut seen: HashMap<String, &Vec<u8>> = HashMap::new();
        let mut dups = 0;
        let mut max_time = i64::MIN;
        for r in &recs {
            let v: Value = serde_json::from_slice(r).unwrap();
            let id = v["event_id"].as_str().unwrap().to_string();
            let t = ms(&v["event_time"]);
            if let Some(first) = seen.get(&id) {
                dups += 1;
                assert_eq!(*first, r, "a duplicate repeats its original");
            } else {
                seen.insert(id, r);
                // Originals are at most out_of_order behind (nothing is late here).
                assert!(t >= max_time.saturating_sub(5000), "{t} vs {max_time}");
            }
            max_time = max_time.max(t);
        }
        let share = dups as f64 / recs.len() as f64;
        assert!((0.07..0.11).contains(&share), "duplicate share {share}");

        let p = params(11, |s| {
            s.late_fraction = 0.1;
            s.out_of_order = std::time::Duration::from_secs(2);
        });
        let mut max_time = i64::MIN;
        let mut late = 0;
        let n = 20_000;
        for r in parsed("orders", &p, n) {
            let t = ms(&r["event_time"]);
            if t < max_time.saturating_sub(2000) {
                late += 1;
            }
            max_time = max_time.max(t);
        }
        let share = late as f64 / n as f64;
        assert!((0.06..0.12).contains(&share), "late share {share}");
    }

    #[test]
    fn reference_tables_split_over_partitions() {
        let s = GeneratorSettings::defaults_of(WorldKind::Restaurant);
        for (stream, len) in [
            ("restaurants", 200usize),
            ("menu_items", 33),
            ("customers", 50_000),
        ] {
            let mut ids = Vec::new();
            for part in 0..3 {
                let p = Params::new(42, &s, DEFAULT_START_MS, part, 3);
                let mut g = new_gen(stream, &p).unwrap();
                let mut bad = BadRecords::detached("test");
                while g.peek_schedule().is_some() {
                    g.push_next(&mut bad).unwrap();
                }
                let b = g.take_batch(&mut bad).unwrap().unwrap();
                let col = b.column(0).as_primitive::<Int64Type>();
                ids.extend(col.values().iter().copied());
                assert!(col.null_count() == 0);
            }
            ids.sort();
            assert_eq!(ids, (1..=len as i64).collect::<Vec<_>>(), "{stream}");
        }
    }
}
