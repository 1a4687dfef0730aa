//! One app session, drawn from the seed: its customer, device and restaurant, then
//! offer views and clicks and cart updates, ending with whether it converted.

use rand::Rng;

use super::TAG_SESSION;
use super::catalog::{APP_VERSIONS, OFFERS};
use super::world::{N_RESTAURANTS, World, pick, secs};
use crate::connectors::generator::rng_for;

#[derive(Debug, Clone, Copy)]
pub(super) enum AppAction {
    Started,
    OfferViewed(usize),
    OfferClicked(usize),
    CartUpdated {
        menu: usize,
        quantity: i32,
        cart_cents: i64,
    },
    Ended {
        duration_ms: i64,
        converted: bool,
    },
}

pub(super) struct Session {
    pub(super) idx: u64,
    pub(super) customer_id: i64,
    pub(super) device: &'static str,
    pub(super) app_version: &'static str,
    pub(super) restaurant_id: i64,
    pub(super) events: Vec<(i64, AppAction)>,
}

impl World {
    pub(super) fn session(&self, idx: u64) -> Session {
        let mut rng = rng_for(self.seed, TAG_SESSION, idx);
        let start = self.session_started_at(idx);
        let c = self.customer(Self::draw_customer(&mut rng));
        let device = if rng.random_bool(0.55) {
            "ios"
        } else {
            "android"
        };
        let app_version = pick(&mut rng, APP_VERSIONS);
        let restaurant = if rng.random_bool(0.8) {
            c.home_restaurant
        } else {
            rng.random_range(0..N_RESTAURANTS)
        };
        let mut events = vec![(start, AppAction::Started)];
        let mut t = start;
        let mut cart: Vec<(usize, i32)> = Vec::new();
        let actions = rng.random_range(1..=7);
        for _ in 0..actions {
            t += secs(&mut rng, 3.0, 45.0);
            if rng.random_bool(0.35) {
                let offer = rng.random_range(0..OFFERS.len());
                events.push((t, AppAction::OfferViewed(offer)));
                if rng.random_bool(0.4) {
                    t += secs(&mut rng, 1.0, 10.0);
                    events.push((t, AppAction::OfferClicked(offer)));
                }
            } else {
                let menu = rng.random_range(0..self.menu.len());
                let quantity = match cart.iter_mut().find(|(m, _)| *m == menu) {
                    Some((_, q)) => {
                        *q = if rng.random_bool(0.3) { 0 } else { *q + 1 };
                        *q
                    }
                    None => {
                        cart.push((menu, 1));
                        1
                    }
                };
                let cart_cents = cart
                    .iter()
                    .map(|&(m, q)| self.menu[m].price_cents * q as i64)
                    .sum();
                events.push((
                    t,
                    AppAction::CartUpdated {
                        menu,
                        quantity,
                        cart_cents,
                    },
                ));
            }
        }
        t += secs(&mut rng, 2.0, 30.0);
        let converted = cart.iter().any(|&(_, q)| q > 0) && rng.random_bool(0.7);
        events.push((
            t,
            AppAction::Ended {
                duration_ms: t - start,
                converted,
            },
        ));
        Session {
            idx,
            customer_id: c.id,
            device,
            app_version,
            restaurant_id: self.restaurants[restaurant as usize].id,
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::connectors::generator::restaurant::testing::{ms, params, parsed};

    #[test]
    fn app_sessions_are_well_formed() {
        let recs = parsed("app", &params(2, |_| {}), 20_000);
        let mut sessions: HashMap<String, Vec<(i64, String)>> = HashMap::new();
        let mut last = i64::MIN;
        for r in &recs {
            let t = ms(&r["event_time"]);
            assert!(t >= last);
            last = t;
            let ty = r["event_type"].as_str().unwrap().to_string();
            match ty.as_str() {
                "offer_viewed" | "offer_clicked" => assert!(r["offer_id"].is_i64()),
                "cart_updated" => assert!(r["menu_item_id"].is_i64() && r["cart_total"].is_f64()),
                "session_ended" => assert!(r["converted"].is_boolean()),
                "session_started" => {}
                t => panic!("unknown app event {t}"),
            }
            sessions
                .entry(r["session_id"].as_str().unwrap().into())
                .or_default()
                .push((t, ty));
        }
        let mut ended = 0;
        for events in sessions.values() {
            assert_eq!(events[0].1, "session_started");
            if let Some(i) = events.iter().position(|(_, t)| t == "session_ended") {
                assert_eq!(i, events.len() - 1);
                ended += 1;
            }
            // A click follows a view of the same offer.
            for (i, (_, t)) in events.iter().enumerate() {
                if t == "offer_clicked" {
                    assert_eq!(events[i - 1].1, "offer_viewed");
                }
            }
        }
        assert!(ended > 200, "{ended} sessions ended");
    }
}
