//! The Nexmark auction model, generated straight into Arrow columns.
//!
//! Event `n` (0-based, global to the source) is a person, an auction or a bid by its
//! position in its group of 50: offset 0 a person, 1–3 auctions, 4–49 bids (1:3:46).
//! Ids follow the model: persons and auctions are numbered from 1000 in the order they
//! are created; an auction's seller and a bid's auction and bidder are mostly "hot"
//! (recent, a few popular ones) and otherwise drawn among the active ones, a little
//! ahead of the last created one as in the reference generator. Prices are
//! `round(10^(6u) * 100)`; categories 10–14; `extra` pads events to the model's average
//! sizes (person 200, auction 500, bid 100 bytes).
//!
//! Event `n`'s values are drawn from the ChaCha8 stream of the source's seed at word
//! `64 n`, so they do not depend on which task generates it; task `p` of `P` generates
//! the events with `n % P == p`. `date_time` is `start + n / rate` (10 µs per event
//! when unpaced), minus the event's emission delay (`out_of_order`, `late_fraction`).
//! A duplicate is the same event re-emitted 1–256 records later by the same task.
//!
//! Streams: `events` (`event_type` 0 person, 1 auction, 2 bid, and one nullable struct
//! column per kind), `bids`, `auctions`, `persons` (that kind's fields as columns; the
//! other kinds' events are counted by `count` but not emitted).

/// Nexmark q5 (hot items) as the published suites write it, on a `bids` table: a join
/// of two hopping-window aggregates on the window. The benchmark and the Nexmark suite
/// (`tests/e2e/nexmark_suite.rs`) run this text.
pub const Q5_HOT_ITEMS: &str = "SELECT AuctionBids.auction, AuctionBids.num FROM \
     (SELECT auction, num, w.start AS starttime, w['end'] AS endtime FROM \
      (SELECT hop(INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS w, auction, count(*) AS num \
       FROM bids GROUP BY w, auction)) AS AuctionBids \
     JOIN \
     (SELECT max(num) AS maxn, starttime, endtime FROM \
      (SELECT w.start AS starttime, w['end'] AS endtime, num FROM \
       (SELECT hop(INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS w, auction, count(*) AS num \
        FROM bids GROUP BY w, auction)) \
      GROUP BY starttime, endtime) AS MaxBids \
     ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime \
     AND AuctionBids.num >= MaxBids.maxn";

/// Nexmark q7 (highest bid) as the published suites write it, on a `bids` table: a
/// join with each tumbling window's maximum price.
pub const Q7_HIGHEST_BID: &str = "SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bids B \
     JOIN (SELECT w['end'] AS date_time, maxprice FROM \
           (SELECT tumble(INTERVAL '10' SECOND) AS w, max(price) AS maxprice FROM bids GROUP BY w)) B1 \
     ON B.price = B1.maxprice \
     WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time";

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Builder, Int64Builder, NullBufferBuilder, RecordBatch, StringBuilder,
    StructArray, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Gen, Params, UTC_TZ, mix, ts_type};
use crate::dlq::BadRecords;
use crate::engine::EngineError;

pub(super) const STREAMS: &[&str] = &["events", "bids", "auctions", "persons"];

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;
const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: i64 = 5;
const NUM_ACTIVE_PEOPLE: u64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_SELLER_RATIO: u64 = 4;
const HOT_BIDDER_RATIO: u64 = 4;
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;

/// ChaCha words reserved for each event (one 4-block buffer of the generator).
const WORDS_PER_EVENT: u128 = 64;
/// Tag of the source's key stream and of its text pools.
const TAG_EVENTS: u64 = 0x6e65_786d_6172_6b01;
const TAG_POOL: u64 = 0x6e65_786d_6172_6b02;
const POOL_LEN: usize = 1 << 16;

const FIRST_NAMES: &[&str] = &[
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: &[&str] = &[
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const CITIES: &[&str] = &[
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const STATES: &[&str] = &["AZ", "CA", "ID", "OR", "WA", "WY"];
const CHANNELS: &[&str] = &["Google", "Facebook", "Baidu", "Apple"];

/// Which kind of event `n` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Person = 0,
    Auction = 1,
    Bid = 2,
}

pub(super) fn kind_of(n: u64) -> Kind {
    let offset = n % TOTAL_PROPORTION;
    if offset < PERSON_PROPORTION {
        Kind::Person
    } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
        Kind::Auction
    } else {
        Kind::Bid
    }
}

/// 0-based id of the last person created at or before event `n`.
fn last_base0_person_id(n: u64) -> u64 {
    let epoch = n / TOTAL_PROPORTION;
    // Written for any proportions; with one person per epoch the offset is always 0.
    #[allow(clippy::unnecessary_min_or_max)]
    let offset = (n % TOTAL_PROPORTION).min(PERSON_PROPORTION - 1);
    epoch * PERSON_PROPORTION + offset
}

/// 0-based id of the last auction created at or before event `n` (0 before the first).
fn last_base0_auction_id(n: u64) -> u64 {
    let epoch = (n / TOTAL_PROPORTION) as i64;
    let offset = (n % TOTAL_PROPORTION) as i64;
    let (epoch, offset) = if offset < PERSON_PROPORTION as i64 {
        (epoch - 1, AUCTION_PROPORTION as i64 - 1)
    } else if offset >= (PERSON_PROPORTION + AUCTION_PROPORTION) as i64 {
        (epoch, AUCTION_PROPORTION as i64 - 1)
    } else {
        (epoch, offset - PERSON_PROPORTION as i64)
    };
    (epoch * AUCTION_PROPORTION as i64 + offset).max(0) as u64
}

/// A person among the active ones, possibly a few ahead of the last created.
fn next_base0_person_id(n: u64, rng: &mut ChaCha8Rng) -> u64 {
    let num_people = last_base0_person_id(n) + 1;
    let active = num_people.min(NUM_ACTIVE_PEOPLE);
    let k = rng.random_range(0..active + PERSON_ID_LEAD);
    num_people - active + k
}

/// An auction among those in flight, possibly a few ahead of the last created.
fn next_base0_auction_id(n: u64, rng: &mut ChaCha8Rng) -> u64 {
    let max = last_base0_auction_id(n);
    let min = max.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
    min + rng.random_range(0..max - min + 1 + AUCTION_ID_LEAD)
}

fn next_price(rng: &mut ChaCha8Rng) -> i64 {
    (10f64.powf(rng.random::<f64>() * 6.0) * 100.0).round() as i64
}

/// Length of `extra` that brings an event of `current` bytes to about `avg` bytes.
fn extra_len(rng: &mut ChaCha8Rng, current: usize, avg: usize) -> usize {
    if current >= avg {
        return 0;
    }
    let want = avg - current;
    let delta = (want as f64 * 0.2).round() as usize;
    let jitter = if delta > 0 {
        rng.random_range(0..2 * delta)
    } else {
        0
    };
    want - delta + jitter
}

fn slice<'a>(pool: &'a str, rng: &mut ChaCha8Rng, len: usize) -> &'a str {
    let off = rng.random_range(0..pool.len() - len);
    &pool[off..off + len]
}

// ------------------------------------------------------------------------------------
// Schemas
// ------------------------------------------------------------------------------------

fn person_fields() -> Fields {
    Fields::from(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("email_address", DataType::Utf8, false),
        Field::new("credit_card", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("date_time", ts_type(), false),
        Field::new("extra", DataType::Utf8, false),
    ])
}

fn auction_fields() -> Fields {
    Fields::from(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("item_name", DataType::Utf8, false),
        Field::new("description", DataType::Utf8, false),
        Field::new("initial_bid", DataType::Int64, false),
        Field::new("reserve", DataType::Int64, false),
        Field::new("date_time", ts_type(), false),
        Field::new("expires", ts_type(), false),
        Field::new("seller", DataType::Int64, false),
        Field::new("category", DataType::Int64, false),
        Field::new("extra", DataType::Utf8, false),
    ])
}

fn bid_fields() -> Fields {
    Fields::from(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("date_time", ts_type(), false),
        Field::new("extra", DataType::Utf8, false),
    ])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Events,
    Bids,
    Auctions,
    Persons,
}

impl Stream {
    fn parse(s: &str) -> Option<Stream> {
        match s {
            "events" => Some(Stream::Events),
            "bids" => Some(Stream::Bids),
            "auctions" => Some(Stream::Auctions),
            "persons" => Some(Stream::Persons),
            _ => None,
        }
    }

    fn includes(self, kind: Kind) -> bool {
        match self {
            Stream::Events => true,
            Stream::Bids => kind == Kind::Bid,
            Stream::Auctions => kind == Kind::Auction,
            Stream::Persons => kind == Kind::Person,
        }
    }

    fn schema(self) -> SchemaRef {
        Arc::new(match self {
            Stream::Events => Schema::new(vec![
                Field::new("event_type", DataType::Int32, false),
                Field::new("person", DataType::Struct(person_fields()), true),
                Field::new("auction", DataType::Struct(auction_fields()), true),
                Field::new("bid", DataType::Struct(bid_fields()), true),
            ]),
            Stream::Bids => Schema::new(bid_fields()),
            Stream::Auctions => Schema::new(auction_fields()),
            Stream::Persons => Schema::new(person_fields()),
        })
    }
}

pub(super) fn schema(stream: &str) -> Option<SchemaRef> {
    Stream::parse(stream).map(Stream::schema)
}

// ------------------------------------------------------------------------------------
// Column builders
// ------------------------------------------------------------------------------------

fn ts_builder(cap: usize) -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::with_capacity(cap).with_timezone(UTC_TZ)
}

struct PersonCols {
    id: Int64Builder,
    name: StringBuilder,
    email: StringBuilder,
    credit_card: StringBuilder,
    city: StringBuilder,
    state: StringBuilder,
    date_time: TimestampMillisecondBuilder,
    extra: StringBuilder,
}

impl PersonCols {
    fn new(cap: usize) -> Self {
        PersonCols {
            id: Int64Builder::with_capacity(cap),
            name: StringBuilder::with_capacity(cap, cap * 12),
            email: StringBuilder::with_capacity(cap, cap * 17),
            credit_card: StringBuilder::with_capacity(cap, cap * 19),
            city: StringBuilder::with_capacity(cap, cap * 8),
            state: StringBuilder::with_capacity(cap, cap * 2),
            date_time: ts_builder(cap),
            extra: StringBuilder::with_capacity(cap, cap * 128),
        }
    }

    fn append_default(&mut self) {
        self.id.append_value(0);
        self.name.append_value("");
        self.email.append_value("");
        self.credit_card.append_value("");
        self.city.append_value("");
        self.state.append_value("");
        self.date_time.append_value(0);
        self.extra.append_value("");
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.id.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.email.finish()),
            Arc::new(self.credit_card.finish()),
            Arc::new(self.city.finish()),
            Arc::new(self.state.finish()),
            Arc::new(self.date_time.finish()),
            Arc::new(self.extra.finish()),
        ]
    }
}

struct AuctionCols {
    id: Int64Builder,
    item_name: StringBuilder,
    description: StringBuilder,
    initial_bid: Int64Builder,
    reserve: Int64Builder,
    date_time: TimestampMillisecondBuilder,
    expires: TimestampMillisecondBuilder,
    seller: Int64Builder,
    category: Int64Builder,
    extra: StringBuilder,
}

impl AuctionCols {
    fn new(cap: usize) -> Self {
        AuctionCols {
            id: Int64Builder::with_capacity(cap),
            item_name: StringBuilder::with_capacity(cap, cap * 20),
            description: StringBuilder::with_capacity(cap, cap * 100),
            initial_bid: Int64Builder::with_capacity(cap),
            reserve: Int64Builder::with_capacity(cap),
            date_time: ts_builder(cap),
            expires: ts_builder(cap),
            seller: Int64Builder::with_capacity(cap),
            category: Int64Builder::with_capacity(cap),
            extra: StringBuilder::with_capacity(cap, cap * 330),
        }
    }

    fn append_default(&mut self) {
        self.id.append_value(0);
        self.item_name.append_value("");
        self.description.append_value("");
        self.initial_bid.append_value(0);
        self.reserve.append_value(0);
        self.date_time.append_value(0);
        self.expires.append_value(0);
        self.seller.append_value(0);
        self.category.append_value(0);
        self.extra.append_value("");
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.id.finish()),
            Arc::new(self.item_name.finish()),
            Arc::new(self.description.finish()),
            Arc::new(self.initial_bid.finish()),
            Arc::new(self.reserve.finish()),
            Arc::new(self.date_time.finish()),
            Arc::new(self.expires.finish()),
            Arc::new(self.seller.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.extra.finish()),
        ]
    }
}

struct BidCols {
    auction: Int64Builder,
    bidder: Int64Builder,
    price: Int64Builder,
    channel: StringBuilder,
    url: StringBuilder,
    date_time: TimestampMillisecondBuilder,
    extra: StringBuilder,
}

impl BidCols {
    fn new(cap: usize) -> Self {
        BidCols {
            auction: Int64Builder::with_capacity(cap),
            bidder: Int64Builder::with_capacity(cap),
            price: Int64Builder::with_capacity(cap),
            channel: StringBuilder::with_capacity(cap, cap * 8),
            url: StringBuilder::with_capacity(cap, cap * 60),
            date_time: ts_builder(cap),
            extra: StringBuilder::with_capacity(cap, cap * 70),
        }
    }

    fn append_default(&mut self) {
        self.auction.append_value(0);
        self.bidder.append_value(0);
        self.price.append_value(0);
        self.channel.append_value("");
        self.url.append_value("");
        self.date_time.append_value(0);
        self.extra.append_value("");
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.auction.finish()),
            Arc::new(self.bidder.finish()),
            Arc::new(self.price.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.url.finish()),
            Arc::new(self.date_time.finish()),
            Arc::new(self.extra.finish()),
        ]
    }
}

/// The builders of one stream's batch.
struct Columns {
    event_type: Int32Builder,
    person: Option<(PersonCols, NullBufferBuilder)>,
    auction: Option<(AuctionCols, NullBufferBuilder)>,
    bid: Option<(BidCols, NullBufferBuilder)>,
    rows: usize,
}

impl Columns {
    fn new(stream: Stream, cap: usize) -> Self {
        let wants = |k| stream.includes(k);
        Columns {
            event_type: Int32Builder::with_capacity(if stream == Stream::Events { cap } else { 0 }),
            person: wants(Kind::Person)
                .then(|| (PersonCols::new(cap), NullBufferBuilder::new(cap))),
            auction: wants(Kind::Auction)
                .then(|| (AuctionCols::new(cap), NullBufferBuilder::new(cap))),
            bid: wants(Kind::Bid).then(|| (BidCols::new(cap), NullBufferBuilder::new(cap))),
            rows: 0,
        }
    }
}

// ------------------------------------------------------------------------------------
// The generator
// ------------------------------------------------------------------------------------

pub(super) struct NexmarkGen {
    stream: Stream,
    schema: SchemaRef,
    p: Params,
    rng: ChaCha8Rng,
    /// Lowercase letters, for names and ids.
    letters: String,
    /// Letters and spaces, for descriptions and padding.
    text: String,
    /// The url of each of [`CHANNELS`].
    channel_urls: Vec<String>,
    /// Local index of the next original event; event `partition + local * parallelism`.
    next_local: u64,
    /// Duplicates to re-emit: (local index at which they are due, event number).
    dups: BinaryHeap<Reverse<(u64, u64)>>,
    cols: Columns,
    cap: usize,
}

pub(super) fn new_gen(stream: &str, params: &Params) -> crate::Result<Box<dyn Gen>> {
    Ok(Box::new(NexmarkGen::new(stream, params)?))
}

impl NexmarkGen {
    fn new(stream: &str, params: &Params) -> crate::Result<Self> {
        let stream = Stream::parse(stream)
            .ok_or_else(|| super::other(format!("nexmark has no stream '{stream}'")))?;
        let mut pool_rng = ChaCha8Rng::seed_from_u64(mix(params.seed, TAG_POOL, 0));
        let letters: String = (0..POOL_LEN)
            .map(|_| (b'a' + pool_rng.random_range(0..26u8)) as char)
            .collect();
        let text: String = (0..POOL_LEN)
            .map(|_| {
                if pool_rng.random_range(0..8u8) == 0 {
                    ' '
                } else {
                    (b'a' + pool_rng.random_range(0..26u8)) as char
                }
            })
            .collect();
        let channel_urls = CHANNELS
            .iter()
            .map(|_| {
                format!(
                    "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
                    slice(&letters, &mut pool_rng, 5),
                    slice(&letters, &mut pool_rng, 5),
                    slice(&letters, &mut pool_rng, 5)
                )
            })
            .collect();
        let cap = 1024;
        Ok(NexmarkGen {
            stream,
            schema: stream.schema(),
            p: params.clone(),
            rng: ChaCha8Rng::seed_from_u64(mix(params.seed, TAG_EVENTS, 0)),
            letters,
            text,
            channel_urls,
            next_local: 0,
            dups: BinaryHeap::new(),
            cols: Columns::new(stream, cap),
            cap,
        })
    }

    /// Nominal event time of event `n` (before its emission delay).
    fn slot(&self, n: u64) -> i64 {
        if self.p.rate > 0.0 {
            self.p.origin_ms + (n as f64 * 1000.0 / self.p.rate).floor() as i64
        } else {
            // 10 µs per event.
            self.p.origin_ms + (n / 100) as i64
        }
    }

    /// Event number of the next record, and whether it is a duplicate.
    fn next_event(&self) -> (u64, bool) {
        if let Some(Reverse((due, n))) = self.dups.peek()
            && *due <= self.next_local
        {
            return (*n, true);
        }
        (
            self.p.partition + self.next_local * self.p.parallelism,
            false,
        )
    }

    fn append(&mut self, n: u64, is_dup: bool) {
        let kind = kind_of(n);
        if !self.stream.includes(kind) {
            return;
        }
        let base = self.slot(n);
        let rng = &mut self.rng;
        rng.set_word_pos(n as u128 * WORDS_PER_EVENT);
        // Disorder and duplication: drawn first, the same way for every kind.
        let delay = self.p.draw_delay(rng);
        let dup = rng.random::<f64>() < self.p.dup;
        let dup_after = rng.random_range(1..=256u64);
        if dup && !is_dup {
            self.dups.push(Reverse((self.next_local + dup_after, n)));
        }
        let date_time = base - delay;
        let cols = &mut self.cols;
        if self.stream == Stream::Events {
            cols.event_type.append_value(kind as i32);
        }
        match kind {
            Kind::Person => {
                let (pc, nulls) = cols.person.as_mut().expect("person columns");
                nulls.append_non_null();
                let id = last_base0_person_id(n) as i64 + FIRST_PERSON_ID;
                pc.id.append_value(id);
                let first = FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())];
                let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
                let _ = write!(pc.name, "{first} {last}");
                pc.name.append_value("");
                let _ = write!(
                    pc.email,
                    "{}@{}.com",
                    slice(&self.letters, rng, 7),
                    slice(&self.letters, rng, 5)
                );
                pc.email.append_value("");
                let cc: [u32; 4] = [
                    rng.random_range(0..10_000),
                    rng.random_range(0..10_000),
                    rng.random_range(0..10_000),
                    rng.random_range(0..10_000),
                ];
                let _ = write!(
                    pc.credit_card,
                    "{:04} {:04} {:04} {:04}",
                    cc[0], cc[1], cc[2], cc[3]
                );
                pc.credit_card.append_value("");
                let city = CITIES[rng.random_range(0..CITIES.len())];
                let state = STATES[rng.random_range(0..STATES.len())];
                pc.city.append_value(city);
                pc.state.append_value(state);
                pc.date_time.append_value(date_time);
                let current =
                    8 + first.len() + last.len() + 1 + 17 + 19 + city.len() + state.len() + 8;
                let len = extra_len(rng, current, AVG_PERSON_BYTES);
                pc.extra.append_value(slice(&self.text, rng, len));
                if let Some((a, an)) = cols.auction.as_mut() {
                    a.append_default();
                    an.append_null();
                }
                if let Some((b, bn)) = cols.bid.as_mut() {
                    b.append_default();
                    bn.append_null();
                }
            }
            Kind::Auction => {
                let (ac, nulls) = cols.auction.as_mut().expect("auction columns");
                nulls.append_non_null();
                let id = last_base0_auction_id(n) as i64 + FIRST_AUCTION_ID;
                ac.id.append_value(id);
                let seller = if rng.random_range(0..HOT_SELLER_RATIO) > 0 {
                    (last_base0_person_id(n) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
                } else {
                    next_base0_person_id(n, rng)
                };
                let category = FIRST_CATEGORY_ID + rng.random_range(0..NUM_CATEGORIES);
                let initial_bid = next_price(rng);
                let reserve = initial_bid + next_price(rng);
                // Auctions last about as long as it takes to create the ones in flight.
                let ahead = NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION / AUCTION_PROPORTION;
                let horizon = if self.p.rate > 0.0 {
                    (ahead as f64 * 1000.0 / self.p.rate) as i64
                } else {
                    (ahead / 100) as i64
                };
                let length = 1 + rng.random_range(0..(horizon * 2).max(1));
                ac.item_name.append_value(slice(&self.letters, rng, 20));
                ac.description.append_value(slice(&self.text, rng, 100));
                ac.initial_bid.append_value(initial_bid);
                ac.reserve.append_value(reserve);
                ac.date_time.append_value(date_time);
                ac.expires.append_value(date_time + length);
                ac.seller.append_value(seller as i64 + FIRST_PERSON_ID);
                ac.category.append_value(category);
                let len = extra_len(rng, 8 * 7 + 20 + 100, AVG_AUCTION_BYTES);
                ac.extra.append_value(slice(&self.text, rng, len));
                if let Some((p, pn)) = cols.person.as_mut() {
                    p.append_default();
                    pn.append_null();
                }
                if let Some((b, bn)) = cols.bid.as_mut() {
                    b.append_default();
                    bn.append_null();
                }
            }
            Kind::Bid => {
                let (bc, nulls) = cols.bid.as_mut().expect("bid columns");
                nulls.append_non_null();
                let auction = if rng.random_range(0..HOT_AUCTION_RATIO) > 0 {
                    (last_base0_auction_id(n) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
                } else {
                    next_base0_auction_id(n, rng)
                };
                let bidder = if rng.random_range(0..HOT_BIDDER_RATIO) > 0 {
                    (last_base0_person_id(n) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
                } else {
                    next_base0_person_id(n, rng)
                };
                bc.auction.append_value(auction as i64 + FIRST_AUCTION_ID);
                bc.bidder.append_value(bidder as i64 + FIRST_PERSON_ID);
                bc.price.append_value(next_price(rng));
                let c = rng.random_range(0..10u32);
                let url_len = if c < CHANNELS.len() as u32 * 2 + 1 {
                    // Nine in ten bids come through one of the named channels.
                    let i = (c as usize) % CHANNELS.len();
                    bc.channel.append_value(CHANNELS[i]);
                    bc.url.append_value(&self.channel_urls[i]);
                    CHANNELS[i].len() + self.channel_urls[i].len()
                } else {
                    let k = rng.random_range(0..10_000u32);
                    let _ = write!(bc.channel, "channel-{k}");
                    bc.channel.append_value("");
                    let _ = write!(
                        bc.url,
                        "https://www.nexmark.com/{}/{}/{}/item.htm?query=1&channel_id={k}",
                        slice(&self.letters, rng, 5),
                        slice(&self.letters, rng, 5),
                        slice(&self.letters, rng, 5)
                    );
                    bc.url.append_value("");
                    75
                };
                bc.date_time.append_value(date_time);
                let len = extra_len(rng, 8 * 4 + url_len / 4, AVG_BID_BYTES);
                bc.extra.append_value(slice(&self.text, rng, len));
                if let Some((p, pn)) = cols.person.as_mut() {
                    p.append_default();
                    pn.append_null();
                }
                if let Some((a, an)) = cols.auction.as_mut() {
                    a.append_default();
                    an.append_null();
                }
            }
        }
        cols.rows += 1;
    }

    fn finish(&mut self) -> crate::Result<Option<RecordBatch>> {
        if self.cols.rows == 0 {
            return Ok(None);
        }
        let cols = std::mem::replace(&mut self.cols, Columns::new(self.stream, self.cap));
        let mut cols = cols;
        let arrays: Vec<ArrayRef> = match self.stream {
            Stream::Events => {
                let mut arrays: Vec<ArrayRef> = vec![Arc::new(cols.event_type.finish())];
                let (mut pc, mut pn) = cols.person.take().expect("person columns");
                let (mut ac, mut an) = cols.auction.take().expect("auction columns");
                let (mut bc, mut bn) = cols.bid.take().expect("bid columns");
                for (fields, children, nulls) in [
                    (person_fields(), pc.finish(), pn.finish()),
                    (auction_fields(), ac.finish(), an.finish()),
                    (bid_fields(), bc.finish(), bn.finish()),
                ] {
                    let s = StructArray::try_new(fields, children, nulls)
                        .map_err(|e| EngineError::arrow("nexmark: building event structs", e))?;
                    arrays.push(Arc::new(s));
                }
                arrays
            }
            Stream::Persons => cols.person.take().expect("person columns").0.finish(),
            Stream::Auctions => cols.auction.take().expect("auction columns").0.finish(),
            Stream::Bids => cols.bid.take().expect("bid columns").0.finish(),
        };
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| EngineError::arrow("nexmark: building a batch", e))?;
        // Size the next batch's builders like this one.
        self.cap = batch.num_rows().max(16);
        Ok(Some(batch))
    }
}

impl Gen for NexmarkGen {
    fn peek_schedule(&mut self) -> Option<i64> {
        // A duplicate goes out in the slot of the original that follows it.
        let n = self.p.partition + self.next_local * self.p.parallelism;
        Some(self.slot(n))
    }

    fn push_next(&mut self, _bad: &mut BadRecords) -> crate::Result<()> {
        let (n, is_dup) = self.next_event();
        if is_dup {
            self.dups.pop();
        } else {
            self.next_local += 1;
        }
        self.append(n, is_dup);
        Ok(())
    }

    fn pending_rows(&self) -> usize {
        self.cols.rows
    }

    fn take_batch(&mut self, _bad: &mut BadRecords) -> crate::Result<Option<RecordBatch>> {
        self.finish()
    }
}

/// `count` records of partition 0 of 1, as JSON lines.
pub(super) fn write_lines(
    stream: &str,
    params: &Params,
    count: u64,
    out: &mut dyn std::io::Write,
) -> crate::Result<u64> {
    let mut g = NexmarkGen::new(stream, params)?;
    let mut bad = BadRecords::detached("generate");
    let mut buf = Vec::new();
    let mut written = 0u64;
    let mut left = count;
    while left > 0 {
        let n = left.min(8192);
        for _ in 0..n {
            g.push_next(&mut bad)?;
        }
        left -= n;
        if let Some(batch) = g.take_batch(&mut bad)? {
            buf.clear();
            crate::formats::json::encode_json_lines(&batch, &mut buf)?;
            out.write_all(&buf)
                .map_err(|e| crate::Error::io("<generator output>", e))?;
            written += batch.num_rows() as u64;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};

    use super::super::{DEFAULT_START_MS, GeneratorSettings, World};
    use super::*;

    fn params(
        tweak: impl FnOnce(&mut GeneratorSettings),
        partition: u64,
        parallelism: u64,
    ) -> Params {
        let mut s = GeneratorSettings::defaults_of(World::Nexmark);
        tweak(&mut s);
        Params::new(42, &s, DEFAULT_START_MS, partition, parallelism)
    }

    fn generate(stream: &str, p: &Params, records: u64) -> RecordBatch {
        let mut g = NexmarkGen::new(stream, p).unwrap();
        let mut bad = BadRecords::detached("test");
        for _ in 0..records {
            g.push_next(&mut bad).unwrap();
        }
        g.take_batch(&mut bad).unwrap().unwrap()
    }

    fn i64s(b: &RecordBatch, name: &str) -> Vec<i64> {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    fn times(b: &RecordBatch, name: &str) -> Vec<i64> {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec()
    }

    fn lines(b: &RecordBatch) -> Vec<String> {
        let mut out = Vec::new();
        crate::formats::json::encode_json_lines(b, &mut out).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn proportions_and_ids_follow_the_model() {
        let b = generate("events", &params(|_| {}, 0, 1), 50_000);
        assert_eq!(b.num_rows(), 50_000);
        assert_eq!(b.schema(), schema("events").unwrap());
        let types = b.column(0).as_primitive::<Int32Type>();
        let mut counts = [0usize; 3];
        for (n, t) in types.values().iter().enumerate() {
            counts[*t as usize] += 1;
            assert_eq!(*t, kind_of(n as u64) as i32);
        }
        assert_eq!(counts, [1000, 3000, 46_000]);
        for (col, kind) in [(1, 0), (2, 1), (3, 2)] {
            let s = b.column(col).as_struct();
            for n in 0..b.num_rows() {
                assert_eq!(s.is_valid(n), types.value(n) == kind);
            }
        }

        let persons = generate("persons", &params(|_| {}, 0, 1), 50_000);
        assert_eq!(i64s(&persons, "id"), (1000..2000).collect::<Vec<_>>());
        let auctions = generate("auctions", &params(|_| {}, 0, 1), 50_000);
        assert_eq!(i64s(&auctions, "id"), (1000..4000).collect::<Vec<_>>());
        let (initial, reserve) = (i64s(&auctions, "initial_bid"), i64s(&auctions, "reserve"));
        assert!(
            initial
                .iter()
                .zip(&reserve)
                .all(|(i, r)| *i >= 100 && r > i)
        );
        assert!(
            i64s(&auctions, "category")
                .iter()
                .all(|c| (10..15).contains(c))
        );
        assert!(
            i64s(&auctions, "seller")
                .iter()
                .all(|s| (1000..2010).contains(s))
        );
        let (dt, expires) = (times(&auctions, "date_time"), times(&auctions, "expires"));
        assert!(dt.iter().zip(&expires).all(|(d, e)| e > d));

        let bids = generate("bids", &params(|_| {}, 0, 1), 50_000);
        assert_eq!(bids.num_rows(), 46_000);
        let (auction, bidder, price) = (
            i64s(&bids, "auction"),
            i64s(&bids, "bidder"),
            i64s(&bids, "price"),
        );
        let mut n = 0u64;
        for i in 0..bids.num_rows() {
            while kind_of(n) != Kind::Bid {
                n += 1;
            }
            let last_auction = last_base0_auction_id(n) as i64 + FIRST_AUCTION_ID;
            let last_person = last_base0_person_id(n) as i64 + FIRST_PERSON_ID;
            assert!(auction[i] >= 1000 && auction[i] <= last_auction + AUCTION_ID_LEAD as i64);
            assert!(bidder[i] >= 1000 && bidder[i] <= last_person + PERSON_ID_LEAD as i64);
            assert!((100..=100_000_000).contains(&price[i]));
            n += 1;
        }
        // Hot auctions: half the bids go to a few recent auctions.
        let mut per_auction: HashMap<i64, usize> = HashMap::new();
        for a in &auction {
            *per_auction.entry(*a).or_default() += 1;
        }
        assert!(per_auction.values().filter(|&&c| c >= 10).count() > 100);
        let channels = bids.column_by_name("channel").unwrap().as_string::<i32>();
        let named = (0..channels.len())
            .filter(|&i| CHANNELS.contains(&channels.value(i)))
            .count();
        let share = named as f64 / channels.len() as f64;
        assert!((0.85..0.95).contains(&share), "{share}");
    }

    #[test]
    fn date_time_advances_with_the_rate() {
        let b = generate("events", &params(|_| {}, 0, 1), 1000);
        let bids = generate("bids", &params(|s| s.rate = 1000.0, 0, 1), 1000);
        let dt = times(&bids, "date_time");
        let mut i = 0;
        for n in 0..1000u64 {
            if kind_of(n) == Kind::Bid {
                assert_eq!(dt[i], DEFAULT_START_MS + n as i64);
                i += 1;
            }
        }
        // Unpaced: 10 µs per event.
        let persons = b.column(1).as_struct();
        let pt = persons
            .column_by_name("date_time")
            .unwrap()
            .as_primitive::<TimestampMillisecondType>();
        assert_eq!(pt.value(0), DEFAULT_START_MS);
        assert_eq!(pt.value(950), DEFAULT_START_MS + 9);
    }

    #[test]
    fn partitions_generate_the_same_events_as_one() {
        let count = 5003;
        let mut whole = lines(&generate("events", &params(|_| {}, 0, 1), count));
        let mut parts = Vec::new();
        for p in 0..3 {
            let n = super::super::share(count, p, 3);
            parts.extend(lines(&generate("events", &params(|_| {}, p, 3), n)));
        }
        assert_eq!(parts.len(), count as usize);
        whole.sort();
        parts.sort();
        assert!(whole == parts);
        // And another seed gives other events.
        let other = Params {
            seed: 43,
            ..params(|_| {}, 0, 1)
        };
        assert!(
            lines(&generate("events", &other, 100))
                != lines(&generate("events", &params(|_| {}, 0, 1), 100))
        );
    }

    #[test]
    fn disorder_and_duplicates_are_roughly_as_asked() {
        let p = params(
            |s| {
                s.rate = 1000.0;
                s.out_of_order = std::time::Duration::from_secs(5);
                s.late_fraction = 0.1;
            },
            0,
            1,
        );
        let bids = generate("bids", &p, 100_000);
        let dt = times(&bids, "date_time");
        let mut n = 0u64;
        let mut late = 0;
        for t in &dt {
            while kind_of(n) != Kind::Bid {
                n += 1;
            }
            let delay = DEFAULT_START_MS + n as i64 - t;
            assert!(delay >= 0);
            if delay > 5000 {
                late += 1;
            }
            n += 1;
        }
        let share = late as f64 / dt.len() as f64;
        assert!((0.08..0.12).contains(&share), "late share {share}");

        let p = params(|s| s.duplicate_fraction = 0.1, 0, 1);
        let rows = lines(&generate("bids", &p, 50_000));
        let mut seen = std::collections::HashSet::new();
        let dups = rows.iter().filter(|r| !seen.insert(r.as_str())).count();
        let share = dups as f64 / rows.len() as f64;
        assert!((0.07..0.11).contains(&share), "duplicate share {share}");
    }
}
