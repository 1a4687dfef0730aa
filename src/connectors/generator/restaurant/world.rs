//! The chain built from the seed: restaurants, menu items (prices vary with the seed)
//! and customers, and where orders and app sessions fall in event time. What one order
//! or session does is in [`super::orders`] and [`super::sessions`].

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::catalog::{CITIES, Category, FIRST_NAMES, LAST_NAMES, MENU, NEIGHBORHOODS, Station};
use super::{TAG_CUSTOMER, TAG_MENU, TAG_ORDER_JITTER, TAG_RESTAURANT, TAG_SESSION_JITTER};
use crate::connectors::generator::{Params, mix, rng_for};

pub(super) const N_RESTAURANTS: u64 = 200;
pub(super) const N_CUSTOMERS: u64 = 50_000;

/// Distinct `orders` events per order, on average (see [`World::order`]): 96% complete
/// with 5 events; cancellations before payment (2%), before preparation (1%) and
/// during it (1%) have 2, 3 and 4.
const ORDER_EVENTS_PER_ORDER: f64 = 0.96 * 5.0 + 0.02 * 2.0 + 0.01 * 3.0 + 0.01 * 4.0;
/// `app` events per session, on average: start and end, 1–7 actions (4 on average),
/// 35% of them offer views of which 40% are clicked.
const APP_EVENTS_PER_SESSION: f64 = 2.0 + 4.0 + 4.0 * 0.35 * 0.4;
/// Event-time density when unpaced: distinct events per second of event time.
const NOMINAL_RATE: f64 = 1000.0;

pub(super) fn pick<T: Copy>(rng: &mut ChaCha8Rng, weighted: &[(T, u32)]) -> T {
    let total: u32 = weighted.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (v, w) in weighted {
        if x < *w {
            return *v;
        }
        x -= w;
    }
    weighted[weighted.len() - 1].0
}

/// Uniform in `[lo, hi)` seconds, as milliseconds.
pub(super) fn secs(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> i64 {
    (rng.random_range(lo..hi) * 1000.0) as i64
}

/// A uniform value in `[0, 1)` from a 64-bit hash.
fn unit_f64(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Clone)]
pub(super) struct Restaurant {
    pub(super) id: i64,
    pub(super) name: String,
    pub(super) city: usize,
    pub(super) latitude: f64,
    pub(super) longitude: f64,
    pub(super) has_drive_thru: bool,
}

#[derive(Debug, Clone)]
pub(super) struct MenuItem {
    pub(super) id: i64,
    pub(super) name: &'static str,
    pub(super) category: Category,
    pub(super) station: Station,
    pub(super) price_cents: i64,
    pub(super) calories: i32,
}

#[derive(Debug, Clone)]
pub(super) struct Customer {
    pub(super) id: i64,
    pub(super) first: &'static str,
    pub(super) last: &'static str,
    pub(super) marketing_opt_in: bool,
    pub(super) home_restaurant: u64,
    pub(super) loyalty_tier: &'static str,
    pub(super) signed_up_at: i64,
}

/// The chain: every entity of one seed, and the event-time layout of its units.
pub(super) struct World {
    pub(super) seed: u64,
    pub(super) origin_ms: i64,
    pub(super) restaurants: Vec<Restaurant>,
    pub(super) menu: Vec<MenuItem>,
    /// Milliseconds of event time between consecutive orders / app sessions.
    order_spacing: f64,
    session_spacing: f64,
}

impl World {
    pub(super) fn new(p: &Params) -> World {
        let seed = p.seed;
        let restaurants = (0..N_RESTAURANTS)
            .map(|r| {
                let mut rng = rng_for(seed, TAG_RESTAURANT, r);
                let city = rng.random_range(0..CITIES.len());
                let hood = NEIGHBORHOODS[rng.random_range(0..NEIGHBORHOODS.len())];
                let (name, _, _, _, lat, lon) = CITIES[city];
                Restaurant {
                    id: r as i64 + 1,
                    name: format!("{name} {hood} #{}", r + 1),
                    city,
                    latitude: ((lat + rng.random_range(-0.12..0.12)) * 1e5).round() / 1e5,
                    longitude: ((lon + rng.random_range(-0.12..0.12)) * 1e5).round() / 1e5,
                    has_drive_thru: rng.random_bool(0.7),
                }
            })
            .collect();
        let menu = MENU
            .iter()
            .enumerate()
            .map(|(m, &(name, category, base, calories, station))| {
                let mut rng = rng_for(seed, TAG_MENU, m as u64);
                let f: f64 = rng.random_range(0.9..1.1);
                let cents = (((base as f64 * f) / 10.0).round() as i64 * 10 - 1).max(99);
                MenuItem {
                    id: m as i64 + 1,
                    name,
                    category,
                    station,
                    price_cents: cents,
                    calories,
                }
            })
            .collect();
        let rate = if p.rate > 0.0 { p.rate } else { NOMINAL_RATE };
        World {
            seed,
            origin_ms: p.origin_ms,
            restaurants,
            menu,
            order_spacing: ORDER_EVENTS_PER_ORDER * 1000.0 / rate,
            session_spacing: APP_EVENTS_PER_SESSION * 1000.0 / rate,
        }
    }

    pub(super) fn customer(&self, c: u64) -> Customer {
        let mut rng = rng_for(self.seed, TAG_CUSTOMER, c);
        let first = FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())];
        let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
        let marketing_opt_in = rng.random_bool(0.55);
        let home_restaurant = rng.random_range(0..N_RESTAURANTS);
        let loyalty_tier = pick(
            &mut rng,
            &[("none", 60), ("silver", 25), ("gold", 12), ("platinum", 3)],
        );
        let signed_up_at = self.origin_ms - secs(&mut rng, 86_400.0, 4.0 * 365.0 * 86_400.0);
        Customer {
            id: c as i64 + 1,
            first,
            last,
            marketing_opt_in,
            home_restaurant,
            loyalty_tier,
            signed_up_at,
        }
    }

    /// A customer, frequent ones (low numbers) more often.
    pub(super) fn draw_customer(rng: &mut ChaCha8Rng) -> u64 {
        let u: f64 = rng.random();
        ((u * u) * N_CUSTOMERS as f64) as u64 % N_CUSTOMERS
    }

    pub(super) fn order_placed_at(&self, idx: u64) -> i64 {
        let jitter = unit_f64(mix(self.seed, TAG_ORDER_JITTER, idx));
        self.origin_ms + ((idx as f64 + jitter) * self.order_spacing) as i64
    }

    /// The app session whose slot in event time holds `t` (none before the origin).
    pub(super) fn session_at(&self, t: i64) -> Option<u64> {
        (t >= self.origin_ms).then(|| ((t - self.origin_ms) as f64 / self.session_spacing) as u64)
    }

    pub(super) fn session_started_at(&self, idx: u64) -> i64 {
        let jitter = unit_f64(mix(self.seed, TAG_SESSION_JITTER, idx));
        self.origin_ms + ((idx as f64 + jitter) * self.session_spacing) as i64
    }
}
