-- Offer conversion: how many offer triggers are followed by an order that uses the
-- offer, by the same customer, within 24 hours.
--
-- Who reads it: marketing and analysts. Two Parquet datasets, partitioned by
-- date=YYYY-MM-DD/hour=HH of the trigger:
--   data/offer_triggers/     per offer and hour: triggers (and distinct customers);
--   data/offer_conversions/  one row per trigger and order that used its offer in the
--                            24 hours after it (an order can follow several triggers,
--                            a trigger be followed by several orders).
-- Conversion rate per offer and hour (DuckDB, Spark or Athena):
--   SELECT t.offer_id, t.hour_start, t.triggers,
--          count(DISTINCT c.trigger_event_id) AS conversions,
--          count(DISTINCT c.trigger_event_id) / t.triggers AS conversion_rate
--   FROM offer_triggers t LEFT JOIN offer_conversions c
--     ON c.offer_id = t.offer_id AND date_trunc('hour', c.triggered_at) = t.hour_start
--   GROUP BY t.offer_id, t.hour_start, t.triggers;
-- (The two are written apart and the rate is computed where they are read:
-- conversions of an hour's triggers keep coming for 24 hours after it, so a rate
-- aggregated in the stream would be published only a day later. See
-- docs/pipelines.md, "Sales analytics".)
--
-- Late events: both streams arrive up to 2 s out of order and are waited for 5 s; an
-- event later than that is left out (tributary_late_rows_total; dead-letter queue).

-- Orders and app sessions of one restaurant world: the generator links an app order
-- to the app session (and offer click) it follows, so both must have the same seed,
-- start_time and rate.
CREATE TABLE orders WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'orders',
    rate = '20',
    -- The first hour of event time at once: the first hour of triggers is published
    -- from the start.
    warmup = '1h',
    out_of_order = '2s',
    event_time_field = 'event_time',
    watermark_delay = '5s'
);

CREATE TABLE app WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'app',
    rate = '20',
    warmup = '1h',
    out_of_order = '2s',
    event_time_field = 'event_time',
    watermark_delay = '5s'
);

-- The triggers: an offer shown to a customer in the app and clicked. This view is the
-- one place to change when triggers come from elsewhere (the offer-targeting
-- pipeline's output): keep its columns.
CREATE VIEW triggers AS
SELECT
    event_id AS trigger_event_id,
    offer_id,
    offer_name,
    customer_id,
    event_time AS triggered_at
FROM app
WHERE event_type = 'offer_clicked';

-- Orders that redeem an offer.
CREATE VIEW offer_orders AS
SELECT order_id, offer_id, customer_id, restaurant_id, total, event_time AS ordered_at
FROM orders
WHERE event_type = 'order_placed' AND offer_id IS NOT NULL;

CREATE TABLE offer_triggers WITH (
    connector = 'parquet',
    path = 'data/offer_triggers',
    partition_by = 'date,hour',
    rollover_interval = '1m'
);

CREATE TABLE offer_conversions WITH (
    connector = 'parquet',
    path = 'data/offer_conversions',
    partition_by = 'date,hour',
    rollover_interval = '1m'
);

-- Triggers per offer and hour (UTC): [hour_start, hour_start + 1 h).
INSERT INTO offer_triggers
SELECT
    w.start AS hour_start,
    offer_id,
    offer_name,
    triggers,
    customers,
    to_char(w.start, '%Y-%m-%d') AS date,
    to_char(w.start, '%H') AS hour
FROM (
    SELECT
        tumble(INTERVAL '1' HOUR, triggered_at) AS w,
        offer_id,
        max(offer_name) AS offer_name,
        count(*) AS triggers,
        count(DISTINCT customer_id) AS customers
    FROM triggers
    GROUP BY w, offer_id
);

-- Conversions: a trigger, then an order by the same customer with the same offer at
-- most 24 hours later (an interval join; published when the order arrives).
INSERT INTO offer_conversions
SELECT
    t.trigger_event_id,
    t.offer_id,
    t.offer_name,
    t.customer_id,
    t.triggered_at,
    o.order_id,
    o.restaurant_id,
    o.ordered_at,
    -- Minutes from the trigger to the order.
    round((CAST(o.ordered_at AS BIGINT) - CAST(t.triggered_at AS BIGINT)) / 60000.0, 3)
        AS minutes_to_order,
    -- The order's total in dollars.
    o.total AS order_total,
    to_char(t.triggered_at, '%Y-%m-%d') AS date,
    to_char(t.triggered_at, '%H') AS hour
FROM triggers t
JOIN offer_orders o
  ON o.customer_id = t.customer_id
 AND o.offer_id = t.offer_id
 AND o.ordered_at BETWEEN t.triggered_at AND t.triggered_at + INTERVAL '24' HOUR;
