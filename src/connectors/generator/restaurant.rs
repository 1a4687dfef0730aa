//! The restaurant world: a quick-service restaurant chain.
//!
//! Entities, all derived from the seed: 200 restaurants in 25 North American cities,
//! a menu of 33 items (prices vary with the seed), 12 app offers and 50,000
//! customers. Streams:
//! - `orders`: mobile, kiosk, drive-thru and delivery order lifecycles:
//!   `order_placed → order_paid → order_preparing → order_ready → order_picked_up` (or
//!   `order_delivered`), about 4% ending in `order_cancelled` before `order_ready`.
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

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use chrono::{DateTime, SecondsFormat};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Serialize, Serializer};

use super::{Gen, Params, mix, rng_for, splitmix64, ts_type};
use crate::dlq::BadRecords;
use crate::formats::json::JsonDecoder;

pub(super) const STREAMS: &[&str] = &[
    "orders",
    "kitchen",
    "app",
    "restaurants",
    "menu_items",
    "customers",
];

const N_RESTAURANTS: u64 = 200;
const N_CUSTOMERS: u64 = 50_000;

/// Distinct `orders` events per order, on average (see [`World::order`]): 96% complete
/// with 5 events; cancellations before payment (2%), before preparation (1%) and
/// during it (1%) have 2, 3 and 4.
const ORDER_EVENTS_PER_ORDER: f64 = 0.96 * 5.0 + 0.02 * 2.0 + 0.01 * 3.0 + 0.01 * 4.0;
/// `app` events per session, on average: start and end, 1–7 actions (4 on average),
/// 35% of them offer views of which 40% are clicked.
const APP_EVENTS_PER_SESSION: f64 = 2.0 + 4.0 + 4.0 * 0.35 * 0.4;
/// Event-time density when unpaced: distinct events per second of event time.
const NOMINAL_RATE: f64 = 1000.0;

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
const TAG_EMIT_ORDERS: u64 = 0x7265_7374_0010;
const TAG_EMIT_KITCHEN: u64 = 0x7265_7374_0011;
const TAG_EMIT_APP: u64 = 0x7265_7374_0012;
const TAG_EMIT_REFERENCE: u64 = 0x7265_7374_0013;

// ------------------------------------------------------------------------------------
// Catalogs
// ------------------------------------------------------------------------------------

/// City, region, country, time zone, latitude, longitude.
const CITIES: &[(&str, &str, &str, &str, f64, f64)] = &[
    (
        "Seattle",
        "WA",
        "US",
        "America/Los_Angeles",
        47.6062,
        -122.3321,
    ),
    (
        "Portland",
        "OR",
        "US",
        "America/Los_Angeles",
        45.5152,
        -122.6784,
    ),
    (
        "San Francisco",
        "CA",
        "US",
        "America/Los_Angeles",
        37.7749,
        -122.4194,
    ),
    (
        "Los Angeles",
        "CA",
        "US",
        "America/Los_Angeles",
        34.0522,
        -118.2437,
    ),
    (
        "San Diego",
        "CA",
        "US",
        "America/Los_Angeles",
        32.7157,
        -117.1611,
    ),
    (
        "Las Vegas",
        "NV",
        "US",
        "America/Los_Angeles",
        36.1699,
        -115.1398,
    ),
    ("Phoenix", "AZ", "US", "America/Phoenix", 33.4484, -112.0740),
    ("Denver", "CO", "US", "America/Denver", 39.7392, -104.9903),
    (
        "Salt Lake City",
        "UT",
        "US",
        "America/Denver",
        40.7608,
        -111.8910,
    ),
    ("Dallas", "TX", "US", "America/Chicago", 32.7767, -96.7970),
    ("Austin", "TX", "US", "America/Chicago", 30.2672, -97.7431),
    ("Houston", "TX", "US", "America/Chicago", 29.7604, -95.3698),
    ("Chicago", "IL", "US", "America/Chicago", 41.8781, -87.6298),
    (
        "Minneapolis",
        "MN",
        "US",
        "America/Chicago",
        44.9778,
        -93.2650,
    ),
    (
        "Nashville",
        "TN",
        "US",
        "America/Chicago",
        36.1627,
        -86.7816,
    ),
    ("Atlanta", "GA", "US", "America/New_York", 33.7490, -84.3880),
    ("Miami", "FL", "US", "America/New_York", 25.7617, -80.1918),
    (
        "New York",
        "NY",
        "US",
        "America/New_York",
        40.7128,
        -74.0060,
    ),
    ("Boston", "MA", "US", "America/New_York", 42.3601, -71.0589),
    (
        "Philadelphia",
        "PA",
        "US",
        "America/New_York",
        39.9526,
        -75.1652,
    ),
    ("Detroit", "MI", "US", "America/Detroit", 42.3314, -83.0458),
    ("Toronto", "ON", "CA", "America/Toronto", 43.6532, -79.3832),
    (
        "Vancouver",
        "BC",
        "CA",
        "America/Vancouver",
        49.2827,
        -123.1207,
    ),
    (
        "Honolulu",
        "HI",
        "US",
        "Pacific/Honolulu",
        21.3069,
        -157.8583,
    ),
    (
        "Anchorage",
        "AK",
        "US",
        "America/Anchorage",
        61.2181,
        -149.9003,
    ),
];

const NEIGHBORHOODS: &[&str] = &[
    "Downtown",
    "Airport",
    "Northgate",
    "Riverside",
    "Mall",
    "Old Town",
    "University",
    "Harbor",
    "Midtown",
    "Westside",
    "Eastside",
    "Union Station",
    "Lakeview",
    "Highway 9",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Station {
    Grill,
    Fryer,
    Assembly,
    Beverage,
    Dessert,
}

impl Station {
    const ALL: [Station; 5] = [
        Station::Grill,
        Station::Fryer,
        Station::Assembly,
        Station::Beverage,
        Station::Dessert,
    ];

    fn name(self) -> &'static str {
        match self {
            Station::Grill => "grill",
            Station::Fryer => "fryer",
            Station::Assembly => "assembly",
            Station::Beverage => "beverage",
            Station::Dessert => "dessert",
        }
    }

    /// Typical preparation time of one item, seconds.
    fn base_seconds(self) -> f64 {
        match self {
            Station::Grill => 240.0,
            Station::Fryer => 180.0,
            Station::Assembly => 60.0,
            Station::Beverage => 40.0,
            Station::Dessert => 75.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Burgers,
    Chicken,
    Sides,
    Drinks,
    Desserts,
    Breakfast,
}

impl Category {
    fn name(self) -> &'static str {
        match self {
            Category::Burgers => "burgers",
            Category::Chicken => "chicken",
            Category::Sides => "sides",
            Category::Drinks => "drinks",
            Category::Desserts => "desserts",
            Category::Breakfast => "breakfast",
        }
    }
}

/// Name, category, base price in cents, calories, station.
const MENU: &[(&str, Category, i64, i32, Station)] = &[
    (
        "Classic Burger",
        Category::Burgers,
        599,
        550,
        Station::Grill,
    ),
    (
        "Double Cheeseburger",
        Category::Burgers,
        799,
        780,
        Station::Grill,
    ),
    ("Bacon Burger", Category::Burgers, 849, 820, Station::Grill),
    (
        "Mushroom Swiss Burger",
        Category::Burgers,
        829,
        700,
        Station::Grill,
    ),
    ("Veggie Burger", Category::Burgers, 749, 480, Station::Grill),
    ("Kids Burger", Category::Burgers, 399, 300, Station::Grill),
    (
        "Crispy Chicken Sandwich",
        Category::Chicken,
        729,
        650,
        Station::Fryer,
    ),
    (
        "Spicy Chicken Sandwich",
        Category::Chicken,
        749,
        690,
        Station::Fryer,
    ),
    (
        "Grilled Chicken Wrap",
        Category::Chicken,
        679,
        480,
        Station::Grill,
    ),
    (
        "Chicken Nuggets (6)",
        Category::Chicken,
        499,
        290,
        Station::Fryer,
    ),
    (
        "Chicken Nuggets (10)",
        Category::Chicken,
        699,
        480,
        Station::Fryer,
    ),
    (
        "Chicken Tenders (4)",
        Category::Chicken,
        749,
        520,
        Station::Fryer,
    ),
    ("Small Fries", Category::Sides, 249, 230, Station::Fryer),
    ("Large Fries", Category::Sides, 379, 490, Station::Fryer),
    ("Onion Rings", Category::Sides, 399, 410, Station::Fryer),
    ("Side Salad", Category::Sides, 349, 90, Station::Assembly),
    ("Apple Slices", Category::Sides, 199, 35, Station::Assembly),
    ("Loaded Fries", Category::Sides, 549, 720, Station::Fryer),
    (
        "Soft Drink (M)",
        Category::Drinks,
        199,
        210,
        Station::Beverage,
    ),
    (
        "Soft Drink (L)",
        Category::Drinks,
        249,
        310,
        Station::Beverage,
    ),
    ("Iced Tea", Category::Drinks, 219, 90, Station::Beverage),
    ("Lemonade", Category::Drinks, 249, 180, Station::Beverage),
    ("Coffee", Category::Drinks, 179, 5, Station::Beverage),
    ("Bottled Water", Category::Drinks, 169, 0, Station::Beverage),
    (
        "Chocolate Shake",
        Category::Desserts,
        449,
        690,
        Station::Dessert,
    ),
    (
        "Vanilla Shake",
        Category::Desserts,
        429,
        640,
        Station::Dessert,
    ),
    ("Apple Pie", Category::Desserts, 229, 250, Station::Dessert),
    ("Cookie", Category::Desserts, 129, 170, Station::Dessert),
    (
        "Soft Serve Cone",
        Category::Desserts,
        179,
        200,
        Station::Dessert,
    ),
    (
        "Breakfast Sandwich",
        Category::Breakfast,
        459,
        420,
        Station::Grill,
    ),
    ("Hash Browns", Category::Breakfast, 199, 150, Station::Fryer),
    ("Pancakes", Category::Breakfast, 499, 560, Station::Grill),
    (
        "Breakfast Burrito",
        Category::Breakfast,
        529,
        610,
        Station::Grill,
    ),
];

const OFFERS: &[&str] = &[
    "2 for $6 Burgers",
    "Free Fries with Any Sandwich",
    "$1 Soft Drinks",
    "20% Off Delivery",
    "Free Shake with Combo",
    "Double Points Weekend",
    "$3 Breakfast Sandwich",
    "Buy One Get One Nuggets",
    "Free Cookie for App Orders",
    "$5 Off $25",
    "Family Bundle Deal",
    "Late Night Fries",
];

const FIRST_NAMES: &[&str] = &[
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Carlos",
    "Karen",
    "Daniel",
    "Lisa",
    "Matthew",
    "Nancy",
    "Anthony",
    "Sofia",
    "Mark",
    "Emily",
    "Wei",
    "Aisha",
    "Luis",
    "Priya",
    "Kevin",
    "Olivia",
    "Hiroshi",
    "Chloe",
    "Omar",
    "Grace",
    "Mateo",
    "Fatima",
];

const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Nguyen",
    "Chen",
    "Patel",
    "Kim",
    "Okafor",
];

const APP_VERSIONS: &[(&str, u32)] = &[("5.2.0", 10), ("5.2.1", 20), ("5.3.0", 30), ("5.3.1", 40)];

fn pick<T: Copy>(rng: &mut ChaCha8Rng, weighted: &[(T, u32)]) -> T {
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
fn secs(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> i64 {
    (rng.random_range(lo..hi) * 1000.0) as i64
}

/// A uniform value in `[0, 1)` from a 64-bit hash.
fn unit_f64(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

// ------------------------------------------------------------------------------------
// Entities
// ------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Restaurant {
    id: i64,
    name: String,
    city: usize,
    latitude: f64,
    longitude: f64,
    has_drive_thru: bool,
}

#[derive(Debug, Clone)]
struct MenuItem {
    id: i64,
    name: &'static str,
    category: Category,
    station: Station,
    price_cents: i64,
    calories: i32,
}

#[derive(Debug, Clone)]
struct Customer {
    id: i64,
    first: &'static str,
    last: &'static str,
    marketing_opt_in: bool,
    home_restaurant: u64,
    loyalty_tier: &'static str,
    signed_up_at: i64,
}

/// The chain: every entity of one seed, and the event-time layout of its units.
struct World {
    seed: u64,
    origin_ms: i64,
    restaurants: Vec<Restaurant>,
    menu: Vec<MenuItem>,
    /// Milliseconds of event time between consecutive orders / app sessions.
    order_spacing: f64,
    session_spacing: f64,
}

impl World {
    fn new(p: &Params) -> World {
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

    fn customer(&self, c: u64) -> Customer {
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
    fn draw_customer(rng: &mut ChaCha8Rng) -> u64 {
        let u: f64 = rng.random();
        ((u * u) * N_CUSTOMERS as f64) as u64 % N_CUSTOMERS
    }

    fn order_placed_at(&self, idx: u64) -> i64 {
        let jitter = unit_f64(mix(self.seed, TAG_ORDER_JITTER, idx));
        self.origin_ms + ((idx as f64 + jitter) * self.order_spacing) as i64
    }

    fn session_started_at(&self, idx: u64) -> i64 {
        let jitter = unit_f64(mix(self.seed, TAG_SESSION_JITTER, idx));
        self.origin_ms + ((idx as f64 + jitter) * self.session_spacing) as i64
    }

    /// Everything about order `idx`: the same for every stream that shows it.
    fn order(&self, idx: u64) -> Order {
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
        Order {
            idx,
            id: idx as i64 + 1,
            customer_id,
            restaurant_id: restaurant.id,
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
enum Channel {
    App,
    Kiosk,
    DriveThru,
    Delivery,
}

impl Channel {
    fn name(self) -> &'static str {
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
enum Step {
    Placed,
    Paid,
    Preparing,
    Ready,
    PickedUp,
    Delivered,
    Cancelled(&'static str),
}

impl Step {
    fn event_type(self) -> &'static str {
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
struct Line {
    menu: usize,
    quantity: i32,
}

#[derive(Debug, Clone)]
struct Ticket {
    station: Station,
    items: i32,
    queued: i64,
    started: Option<i64>,
    finished: Option<i64>,
    cancelled: bool,
}

#[derive(Debug, Clone)]
struct Order {
    idx: u64,
    id: i64,
    customer_id: Option<i64>,
    restaurant_id: i64,
    channel: Channel,
    lines: Vec<Line>,
    total_cents: i64,
    payment_method: &'static str,
    estimated_ready: i64,
    /// The order's events, in causal and event-time order.
    events: Vec<(i64, Step)>,
    /// Kitchen tickets (none when cancelled before payment).
    tickets: Vec<Ticket>,
    cancelled_at: Option<i64>,
}

impl Order {
    /// When ticket `t` shows in the kitchen stream: finished, or cancelled.
    fn ticket_time(&self, t: &Ticket) -> i64 {
        t.finished.or(self.cancelled_at).unwrap_or(t.queued)
    }

    /// Indexes of the tickets in kitchen-stream order.
    fn ticket_order(&self) -> Vec<usize> {
        let mut ix: Vec<usize> = (0..self.tickets.len()).collect();
        ix.sort_by_key(|&i| (self.ticket_time(&self.tickets[i]), self.tickets[i].station));
        ix
    }
}

// ------------------------------------------------------------------------------------
// App sessions
// ------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum AppAction {
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

struct Session {
    idx: u64,
    customer_id: i64,
    device: &'static str,
    app_version: &'static str,
    restaurant_id: i64,
    events: Vec<(i64, AppAction)>,
}

impl World {
    fn session(&self, idx: u64) -> Session {
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

// ------------------------------------------------------------------------------------
// Schemas
// ------------------------------------------------------------------------------------

fn line_item_fields() -> Fields {
    Fields::from(vec![
        Field::new("menu_item_id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("quantity", DataType::Int32, false),
        Field::new("unit_price", DataType::Float64, false),
    ])
}

fn orders_schema() -> Schema {
    Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("event_time", ts_type(), false),
        Field::new("order_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("restaurant_id", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new(
            "items",
            DataType::List(Arc::new(Field::new_list_field(
                DataType::Struct(line_item_fields()),
                true,
            ))),
            true,
        ),
        Field::new("total", DataType::Float64, true),
        Field::new("payment_method", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("estimated_ready_time", ts_type(), true),
        Field::new("cancel_reason", DataType::Utf8, true),
    ])
}

fn kitchen_schema() -> Schema {
    Schema::new(vec![
        Field::new("ticket_id", DataType::Utf8, false),
        Field::new("event_time", ts_type(), false),
        Field::new("order_id", DataType::Int64, false),
        Field::new("restaurant_id", DataType::Int64, false),
        Field::new("station", DataType::Utf8, false),
        Field::new("item_count", DataType::Int32, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("queued_at", ts_type(), false),
        Field::new("started_at", ts_type(), true),
        Field::new("finished_at", ts_type(), true),
        Field::new("wait_seconds", DataType::Float64, true),
        Field::new("prep_seconds", DataType::Float64, true),
    ])
}

fn app_schema() -> Schema {
    Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("event_time", ts_type(), false),
        Field::new("session_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("app_version", DataType::Utf8, false),
        Field::new("restaurant_id", DataType::Int64, false),
        Field::new("menu_item_id", DataType::Int64, true),
        Field::new("quantity", DataType::Int32, true),
        Field::new("cart_total", DataType::Float64, true),
        Field::new("offer_id", DataType::Int64, true),
        Field::new("offer_name", DataType::Utf8, true),
        Field::new("duration_seconds", DataType::Float64, true),
        Field::new("converted", DataType::Boolean, true),
    ])
}

fn restaurants_schema() -> Schema {
    Schema::new(vec![
        Field::new("restaurant_id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("time_zone", DataType::Utf8, false),
        Field::new("latitude", DataType::Float64, false),
        Field::new("longitude", DataType::Float64, false),
        Field::new("has_drive_thru", DataType::Boolean, false),
    ])
}

fn menu_items_schema() -> Schema {
    Schema::new(vec![
        Field::new("menu_item_id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("station", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("calories", DataType::Int32, false),
    ])
}

fn customers_schema() -> Schema {
    Schema::new(vec![
        Field::new("customer_id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("email", DataType::Utf8, false),
        Field::new("marketing_opt_in", DataType::Boolean, false),
        Field::new("home_restaurant_id", DataType::Int64, false),
        Field::new("loyalty_tier", DataType::Utf8, false),
        Field::new("signed_up_at", ts_type(), false),
    ])
}

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
// JSON records
// ------------------------------------------------------------------------------------

/// A timestamp as it appears in a record: RFC 3339 text or epoch milliseconds.
#[derive(Debug, Clone, Copy)]
struct Ts {
    ms: i64,
    millis: bool,
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

fn dollars(cents: i64) -> f64 {
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
struct RestaurantJson<'a> {
    restaurant_id: i64,
    name: &'a str,
    city: &'static str,
    region: &'static str,
    country: &'static str,
    time_zone: &'static str,
    latitude: f64,
    longitude: f64,
    has_drive_thru: bool,
}

#[derive(Serialize)]
struct MenuItemJson {
    menu_item_id: i64,
    name: &'static str,
    category: &'static str,
    station: &'static str,
    price: f64,
    calories: i32,
}

#[derive(Serialize)]
struct CustomerJson {
    customer_id: i64,
    name: String,
    email: String,
    marketing_opt_in: bool,
    home_restaurant_id: i64,
    loyalty_tier: &'static str,
    signed_up_at: Ts,
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn render_order_event(w: &World, o: &Order, k: usize, millis: bool) -> Vec<u8> {
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

fn render_ticket(o: &Order, t: &Ticket, millis: bool) -> Vec<u8> {
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

fn render_app_event(w: &World, s: &Session, k: usize, millis: bool) -> Vec<u8> {
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
fn corrupt(record: &[u8], numeric_field: &str, rng: &mut ChaCha8Rng) -> Vec<u8> {
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

// ------------------------------------------------------------------------------------
// Record streams
// ------------------------------------------------------------------------------------

/// Records in emission order, each with its schedule (emission time).
trait Records: Send {
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

struct OrdersModel(Arc<World>);
struct KitchenModel(Arc<World>);
struct AppModel(Arc<World>);

impl UnitModel for OrdersModel {
    fn start(&self, idx: u64) -> i64 {
        self.0.order_placed_at(idx)
    }

    fn times(&self, idx: u64, out: &mut Vec<i64>) {
        out.extend(self.0.order(idx).events.iter().map(|(t, _)| *t));
    }

    fn render(&self, idx: u64, k: usize, millis: bool) -> Vec<u8> {
        render_order_event(&self.0, &self.0.order(idx), k, millis)
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

fn records(stream: &str, p: &Params) -> crate::Result<Box<dyn Records>> {
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
            Box::new(OrdersModel(world.clone())),
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
            return Err(super::other(format!(
                "restaurant world has no stream '{other}'"
            )));
        }
    })
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

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    use serde_json::Value;

    use super::super::{DEFAULT_START_MS, GeneratorSettings, World as WorldKind};
    use super::*;

    fn params(seed: u64, tweak: impl FnOnce(&mut GeneratorSettings)) -> Params {
        let mut s = GeneratorSettings::defaults_of(WorldKind::Restaurant);
        tweak(&mut s);
        Params::new(seed, &s, DEFAULT_START_MS, 0, 1)
    }

    fn raw(stream: &str, p: &Params, n: usize) -> Vec<Vec<u8>> {
        let mut r = records(stream, p).unwrap();
        (0..n).map(|_| r.next_record().unwrap()).collect()
    }

    fn parsed(stream: &str, p: &Params, n: usize) -> Vec<serde_json::Map<String, Value>> {
        raw(stream, p, n)
            .iter()
            .map(|r| match serde_json::from_slice(r).unwrap() {
                Value::Object(m) => m,
                v => panic!("not an object: {v}"),
            })
            .collect()
    }

    /// A record's timestamp field, whichever way it is written.
    fn ms(v: &Value) -> i64 {
        match v {
            Value::Number(n) => n.as_i64().unwrap(),
            Value::String(s) => DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis(),
            v => panic!("not a timestamp: {v}"),
        }
    }

    fn rank(event_type: &str) -> usize {
        [
            "order_placed",
            "order_paid",
            "order_preparing",
            "order_ready",
            "order_picked_up",
        ]
        .iter()
        .position(|t| *t == event_type)
        .unwrap_or_else(|| match event_type {
            "order_delivered" => 4,
            "order_cancelled" => 5,
            t => panic!("unknown event type {t}"),
        })
    }

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

    #[test]
    fn records_decode_to_the_stream_schema() {
        let p = params(9, |_| {});
        for stream in STREAMS {
            let n = if is_reference(stream) {
                usize::MAX
            } else {
                5000
            };
            let mut r = records(stream, &p).unwrap();
            let mut decoder = JsonDecoder::new(schema(stream).unwrap()).unwrap();
            let mut bad = BadRecords::detached("test");
            let mut pushed = 0;
            while pushed < n {
                let Some(rec) = r.next_record() else { break };
                assert!(
                    decoder.push(&rec, &mut bad),
                    "{stream}: {}",
                    String::from_utf8_lossy(&rec)
                );
                pushed += 1;
            }
            let batch = decoder.flush().unwrap().unwrap();
            assert_eq!(batch.schema(), schema(stream).unwrap());
            assert_eq!(batch.num_rows(), pushed, "{stream}");
            assert_eq!(bad.count(), 0);
            let expect = match *stream {
                "restaurants" => N_RESTAURANTS as usize,
                "menu_items" => MENU.len(),
                "customers" => N_CUSTOMERS as usize,
                _ => 5000,
            };
            assert_eq!(pushed, expect, "{stream}");
        }
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
