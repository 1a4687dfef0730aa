//! One order's lifecycle, drawn from the seed: channel, customer and restaurant, lines,
//! payment, kitchen tickets per station, timings and cancellations. The `orders` and
//! `kitchen` streams both show it, so they agree.

use rand::Rng;

use super::catalog::{Category, Station};
use super::sessions::AppAction;
use super::world::{N_RESTAURANTS, World, pick, secs};
use super::{TAG_ORDER, TAG_ORDER_OFFER};
use crate::connectors::generator::rng_for;

impl World {
    /// Everything about order `idx`: the same for every stream that shows it.
    pub(super) fn order(&self, idx: u64) -> Order {
        let mut rng = rng_for(self.seed, TAG_ORDER, idx);
        let placed = self.order_placed_at(idx);
        let mut channel = pick(
            &mut rng,
            &[
                (Channel::App, 40),
                (Channel::Kiosk, 20),
                (Channel::DriveThru, 30),
                (Channel::Delivery, 10),
            ],
        );
        let known_customer = match channel {
            Channel::App | Channel::Delivery => true,
            Channel::Kiosk => rng.random_bool(0.4),
            Channel::DriveThru => rng.random_bool(0.25),
        };
        let customer = Self::draw_customer(&mut rng);
        let home = rng.random_bool(0.75);
        let any_restaurant = rng.random_range(0..N_RESTAURANTS);
        let (customer_id, restaurant) = if known_customer {
            let c = self.customer(customer);
            let r = if home {
                c.home_restaurant
            } else {
                any_restaurant
            };
            (Some(c.id), r)
        } else {
            (None, any_restaurant)
        };
        let restaurant = &self.restaurants[restaurant as usize];
        if channel == Channel::DriveThru && !restaurant.has_drive_thru {
            channel = Channel::Kiosk;
        }

        // What is ordered: a main, then sides, drinks and desserts.
        let n_lines = pick(&mut rng, &[(1usize, 35), (2, 30), (3, 20), (4, 10), (5, 5)]);
        let mut lines = Vec::with_capacity(n_lines);
        for l in 0..n_lines {
            let category = if l == 0 {
                pick(
                    &mut rng,
                    &[
                        (Category::Burgers, 50),
                        (Category::Chicken, 40),
                        (Category::Breakfast, 10),
                    ],
                )
            } else {
                pick(
                    &mut rng,
                    &[
                        (Category::Sides, 40),
                        (Category::Drinks, 40),
                        (Category::Desserts, 20),
                    ],
                )
            };
            let choices: Vec<usize> = (0..self.menu.len())
                .filter(|&m| self.menu[m].category == category)
                .collect();
            let menu = choices[rng.random_range(0..choices.len())];
            let quantity = pick(&mut rng, &[(1i32, 80), (2, 15), (3, 5)]);
            match lines.iter_mut().find(|l: &&mut Line| l.menu == menu) {
                Some(l) => l.quantity += quantity,
                None => lines.push(Line { menu, quantity }),
            }
        }
        let total_cents: i64 = lines
            .iter()
            .map(|l| self.menu[l.menu].price_cents * l.quantity as i64)
            .sum();
        let payment_method = match channel {
            Channel::App | Channel::Delivery => pick(
                &mut rng,
                &[
                    ("card", 50),
                    ("apple_pay", 20),
                    ("google_pay", 15),
                    ("gift_card", 10),
                    ("paypal", 5),
                ],
            ),
            Channel::Kiosk => pick(
                &mut rng,
                &[
                    ("card", 70),
                    ("apple_pay", 15),
                    ("google_pay", 10),
                    ("gift_card", 5),
                ],
            ),
            Channel::DriveThru => pick(
                &mut rng,
                &[
                    ("card", 55),
                    ("cash", 30),
                    ("apple_pay", 10),
                    ("gift_card", 5),
                ],
            ),
        };

        // Timings.
        let paid = placed
            + match channel {
                Channel::App => secs(&mut rng, 3.0, 40.0),
                Channel::Kiosk => secs(&mut rng, 10.0, 60.0),
                Channel::DriveThru => secs(&mut rng, 45.0, 150.0),
                Channel::Delivery => secs(&mut rng, 2.0, 20.0),
            };
        let mut tickets: Vec<Ticket> = Vec::new();
        for station in Station::ALL {
            let items: i32 = lines
                .iter()
                .filter(|l| self.menu[l.menu].station == station)
                .map(|l| l.quantity)
                .sum();
            if items == 0 {
                continue;
            }
            let wait = secs(&mut rng, 5.0, 90.0);
            let factor = rng.random_range(0.7..1.4) * (1.0 + 0.15 * (items - 1) as f64);
            let prep = (station.base_seconds() * factor * 1000.0) as i64;
            let started = paid + wait;
            tickets.push(Ticket {
                station,
                items,
                queued: paid,
                started: Some(started),
                finished: Some(started + prep),
                cancelled: false,
            });
        }
        let preparing = tickets
            .iter()
            .filter_map(|t| t.started)
            .min()
            .expect("an order has items");
        let last_finished = tickets
            .iter()
            .filter_map(|t| t.finished)
            .max()
            .expect("an order has items");
        let estimate_s = tickets
            .iter()
            .map(|t| t.station.base_seconds() * (1.0 + 0.15 * (t.items - 1) as f64))
            .fold(0.0, f64::max)
            + 30.0;
        let estimated_ready = preparing + (estimate_s * 1000.0) as i64;
        let ready = last_finished + secs(&mut rng, 5.0, 30.0);
        let handoff = ready
            + match channel {
                Channel::DriveThru => secs(&mut rng, 10.0, 60.0),
                Channel::Kiosk => secs(&mut rng, 15.0, 240.0),
                Channel::App => secs(&mut rng, 30.0, 900.0),
                Channel::Delivery => secs(&mut rng, 120.0, 600.0) + secs(&mut rng, 300.0, 1800.0),
            };

        // Cancellations: before payment, before preparation, or during it.
        let c: f64 = rng.random();
        let reason_u: f64 = rng.random();
        let at_u: f64 = rng.random_range(0.1..0.9);
        let cancel = if c < 0.02 {
            let reason = by_fraction(
                reason_u,
                &[
                    ("payment_failed", 0.5),
                    ("customer_cancelled", 0.35),
                    ("timeout", 0.15),
                ],
            );
            Some((
                Stage::BeforePayment,
                placed + 5_000 + (at_u * 120_000.0) as i64,
                reason,
            ))
        } else if c < 0.03 {
            let reason = by_fraction(
                reason_u,
                &[
                    ("customer_cancelled", 0.6),
                    ("item_unavailable", 0.3),
                    ("store_closing", 0.1),
                ],
            );
            Some((
                Stage::BeforePreparation,
                paid + ((preparing - paid) as f64 * at_u) as i64,
                reason,
            ))
        } else if c < 0.04 {
            let reason = by_fraction(
                reason_u,
                &[
                    ("item_unavailable", 0.5),
                    ("kitchen_issue", 0.3),
                    ("customer_cancelled", 0.2),
                ],
            );
            Some((
                Stage::DuringPreparation,
                preparing + ((ready - preparing) as f64 * at_u) as i64,
                reason,
            ))
        } else {
            None
        };

        let mut events = vec![(placed, Step::Placed)];
        match cancel {
            Some((Stage::BeforePayment, at, reason)) => {
                tickets.clear();
                events.push((at, Step::Cancelled(reason)));
            }
            Some((stage, at, reason)) => {
                events.push((paid, Step::Paid));
                if stage == Stage::DuringPreparation {
                    events.push((preparing, Step::Preparing));
                }
                for t in &mut tickets {
                    if t.finished.is_some_and(|f| f > at) {
                        t.finished = None;
                        t.cancelled = true;
                    }
                    if t.started.is_some_and(|s| s > at) {
                        t.started = None;
                    }
                }
                events.push((at, Step::Cancelled(reason)));
            }
            None => {
                events.push((paid, Step::Paid));
                events.push((preparing, Step::Preparing));
                events.push((ready, Step::Ready));
                events.push((
                    handoff,
                    if channel == Channel::Delivery {
                        Step::Delivered
                    } else {
                        Step::PickedUp
                    },
                ));
            }
        }
        let cancelled_at = cancel.map(|(_, at, _)| at);
        let mut restaurant_id = restaurant.id;
        let mut customer_id = customer_id;
        let offer = if channel == Channel::App {
            self.offer_used(idx, placed)
        } else {
            None
        };
        if let Some(used) = offer {
            customer_id = Some(used.customer_id);
            restaurant_id = used.restaurant_id;
        }
        Order {
            idx,
            id: idx as i64 + 1,
            customer_id,
            restaurant_id,
            offer_id: offer.map(|u| u.offer_id),
            channel,
            lines,
            total_cents,
            payment_method,
            estimated_ready,
            events,
            tickets,
            cancelled_at,
        }
    }
}

/// An app order that redeems an offer: the session it follows, whose customer clicked
/// the offer, then ended the session with an order (`converted`).
#[derive(Debug, Clone, Copy)]
struct OfferUse {
    offer_id: i64,
    customer_id: i64,
    restaurant_id: i64,
}

impl World {
    /// Whether app order `idx`, placed at `placed`, follows an app session that clicked
    /// an offer and converted: half of the app orders look at the session that started
    /// 0–15 minutes before; if that session clicked an offer and ended converted before
    /// `placed`, the order is that session's customer's, at its restaurant, with the
    /// offer last clicked. Drawn from its own random stream, so every other draw of the
    /// order is the same as without offers.
    fn offer_used(&self, idx: u64, placed: i64) -> Option<OfferUse> {
        let mut rng = rng_for(self.seed, TAG_ORDER_OFFER, idx);
        if !rng.random_bool(0.5) {
            return None;
        }
        let lag = secs(&mut rng, 0.0, 900.0);
        let s = self.session(self.session_at(placed - lag)?);
        let (ended, converted) = match s.events.last() {
            Some(&(t, AppAction::Ended { converted, .. })) => (t, converted),
            _ => return None,
        };
        if !converted || ended >= placed {
            return None;
        }
        let offer = s.events.iter().rev().find_map(|(_, a)| match a {
            AppAction::OfferClicked(o) => Some(*o),
            _ => None,
        })?;
        Some(OfferUse {
            offer_id: offer as i64 + 1,
            customer_id: s.customer_id,
            restaurant_id: s.restaurant_id,
        })
    }
}

fn by_fraction(u: f64, choices: &[(&'static str, f64)]) -> &'static str {
    let mut acc = 0.0;
    for (v, f) in choices {
        acc += f;
        if u < acc {
            return v;
        }
    }
    choices[choices.len() - 1].0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Channel {
    App,
    Kiosk,
    DriveThru,
    Delivery,
}

impl Channel {
    pub(super) fn name(self) -> &'static str {
        match self {
            Channel::App => "app",
            Channel::Kiosk => "kiosk",
            Channel::DriveThru => "drive_thru",
            Channel::Delivery => "delivery",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    BeforePayment,
    BeforePreparation,
    DuringPreparation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Placed,
    Paid,
    Preparing,
    Ready,
    PickedUp,
    Delivered,
    Cancelled(&'static str),
}

impl Step {
    pub(super) fn event_type(self) -> &'static str {
        match self {
            Step::Placed => "order_placed",
            Step::Paid => "order_paid",
            Step::Preparing => "order_preparing",
            Step::Ready => "order_ready",
            Step::PickedUp => "order_picked_up",
            Step::Delivered => "order_delivered",
            Step::Cancelled(_) => "order_cancelled",
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Line {
    pub(super) menu: usize,
    pub(super) quantity: i32,
}

#[derive(Debug, Clone)]
pub(super) struct Ticket {
    pub(super) station: Station,
    pub(super) items: i32,
    pub(super) queued: i64,
    pub(super) started: Option<i64>,
    pub(super) finished: Option<i64>,
    pub(super) cancelled: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Order {
    pub(super) idx: u64,
    pub(super) id: i64,
    pub(super) customer_id: Option<i64>,
    pub(super) restaurant_id: i64,
    /// The app offer the order redeems (`offer_id` of the offer events), if any.
    pub(super) offer_id: Option<i64>,
    pub(super) channel: Channel,
    pub(super) lines: Vec<Line>,
    pub(super) total_cents: i64,
    pub(super) payment_method: &'static str,
    pub(super) estimated_ready: i64,
    /// The order's events, in causal and event-time order.
    pub(super) events: Vec<(i64, Step)>,
    /// Kitchen tickets (none when cancelled before payment).
    pub(super) tickets: Vec<Ticket>,
    cancelled_at: Option<i64>,
}

impl Order {
    /// When ticket `t` shows in the kitchen stream: finished, or cancelled.
    pub(super) fn ticket_time(&self, t: &Ticket) -> i64 {
        t.finished.or(self.cancelled_at).unwrap_or(t.queued)
    }

    /// Indexes of the tickets in kitchen-stream order.
    pub(super) fn ticket_order(&self) -> Vec<usize> {
        let mut ix: Vec<usize> = (0..self.tickets.len()).collect();
        ix.sort_by_key(|&i| (self.ticket_time(&self.tickets[i]), self.tickets[i].station));
        ix
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::connectors::generator::restaurant::testing::{params, rank};

    #[test]
    fn order_lifecycles_are_causal_and_kitchen_tickets_agree() {
        let world = World::new(&params(7, |_| {}));
        let mut cancelled = 0;
        let mut channels = HashSet::new();
        for idx in 0..5000 {
            let o = world.order(idx);
            channels.insert(o.channel);
            assert_eq!(o.events[0].1, Step::Placed);
            assert!(o.events.windows(2).all(|w| w[0].0 < w[1].0), "{o:?}");
            let ranks: Vec<usize> = o.events.iter().map(|(_, s)| rank(s.event_type())).collect();
            // A prefix of the lifecycle, possibly ended by a cancellation before ready.
            let (last, body) = ranks.split_last().unwrap();
            assert!(body.iter().enumerate().all(|(i, r)| *r == i), "{ranks:?}");
            let at = |step: Step| o.events.iter().find(|(_, s)| *s == step).map(|(t, _)| *t);
            if *last == 5 {
                cancelled += 1;
                assert!(body.len() <= 3, "cancelled after ready: {ranks:?}");
                assert_eq!(o.cancelled_at, Some(o.events.last().unwrap().0));
            } else {
                assert_eq!(ranks, vec![0, 1, 2, 3, 4]);
                let handoff = o.events[4].1;
                assert_eq!(handoff == Step::Delivered, o.channel == Channel::Delivery);
            }
            let items: i32 = o.lines.iter().map(|l| l.quantity).sum();
            let ticket_items: i32 = o.tickets.iter().map(|t| t.items).sum();
            match at(Step::Paid) {
                None => assert!(o.tickets.is_empty()),
                Some(paid) => {
                    assert_eq!(ticket_items, items);
                    assert!(o.tickets.iter().all(|t| t.queued == paid));
                }
            }
            if let Some(preparing) = at(Step::Preparing) {
                let first = o.tickets.iter().filter_map(|t| t.started).min();
                assert_eq!(first, Some(preparing));
            }
            if let Some(ready) = at(Step::Ready) {
                assert!(
                    o.tickets
                        .iter()
                        .all(|t| !t.cancelled && t.finished.is_some_and(|f| f < ready))
                );
            }
            if let Some(c) = o.cancelled_at {
                for t in &o.tickets {
                    assert_eq!(t.cancelled, t.finished.is_none());
                    assert!(t.started.is_none_or(|s| s <= c));
                    assert!(t.finished.is_none_or(|f| f <= c));
                    assert_eq!(o.ticket_time(t), t.finished.unwrap_or(c));
                }
            }
        }
        assert!(
            (100..=300).contains(&cancelled),
            "{cancelled} cancellations of 5000"
        );
        assert_eq!(channels.len(), 4);
    }

    #[test]
    fn offers_used_by_app_orders_were_clicked_before_by_their_customer() {
        use crate::connectors::generator::restaurant::testing::{ms, parsed};
        // 20 events a second: the orders span 1,000 s of event time, most of them with
        // app sessions up to 15 minutes before.
        let p = params(5, |s| s.rate = 20.0);
        let orders = parsed("orders", &p, 20_000);
        let app = parsed("app", &p, 30_000);
        // (customer, offer) -> click times; sessions that ended converted.
        let mut clicks: std::collections::HashMap<(i64, i64), Vec<i64>> = Default::default();
        for e in app.iter().filter(|e| e["event_type"] == "offer_clicked") {
            clicks
                .entry((
                    e["customer_id"].as_i64().unwrap(),
                    e["offer_id"].as_i64().unwrap(),
                ))
                .or_default()
                .push(ms(&e["event_time"]));
        }
        let mut used = 0;
        let mut app_orders = 0;
        for o in orders.iter().filter(|o| o["event_type"] == "order_placed") {
            app_orders += usize::from(o["channel"] == "app");
            let Some(offer) = o.get("offer_id").and_then(|v| v.as_i64()) else {
                continue;
            };
            used += 1;
            assert_eq!(o["channel"], "app", "{o:?}");
            let customer = o["customer_id"].as_i64().unwrap();
            let placed = ms(&o["event_time"]);
            let before = clicks.get(&(customer, offer)).into_iter().flatten();
            assert!(
                before
                    .into_iter()
                    .any(|t| *t < placed && placed - t <= 900_000),
                "order {o:?}: no click on offer {offer} by customer {customer} in the 15 minutes before"
            );
        }
        // About half the app orders look for a session; a fraction of those converted
        // after clicking an offer.
        assert!(
            used * 50 > app_orders && used * 4 < app_orders,
            "{used} of {app_orders} app orders use an offer"
        );
    }
}
