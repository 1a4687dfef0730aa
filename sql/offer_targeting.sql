-- Offer targeting for marketing: which customer gets which offer, and why. Three rules,
-- whose parameters are the operators' options in pipelines/offer_targeting.yaml:
--   loyalty_3rd_order  a customer's 3rd order within 7 days (at that order);
--   breakfast_winback  a customer with 3+ breakfast orders (before 10:30, restaurant's
--                      local time) in the 4 weeks before this week, and none this week
--                      (checked at every UTC midnight, once per lapse);
--   cart_nudge         20 minutes after a cart update in the app with no checkout since.
-- Two Rust operators keyed by customer (src/library/offers.rs) evaluate the rules in
-- event time (state per customer, timers for "nothing happened"); this SQL feeds them,
-- keeps the opted-in customers and caps offers at one per customer and day.
CREATE TABLE orders WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'orders',
    rate = '100',
    -- The first 10 minutes of event time at once: repeat customers from the start.
    warmup = '10m',
    out_of_order = '2s',
    duplicate_fraction = '0.001',
    event_time_field = 'event_time',
    watermark_delay = '3s'
);

CREATE TABLE app WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'app',
    rate = '100',
    -- 30 minutes at once: abandoned carts are 20 minutes old from the start.
    warmup = '30m',
    out_of_order = '2s',
    duplicate_fraction = '0.001',
    event_time_field = 'event_time',
    watermark_delay = '3s'
);

-- Reference data (kept in memory): the restaurants' time zones, the customers' consent.
CREATE TABLE restaurants WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'restaurants',
    lookup = 'true'
);

CREATE TABLE customers WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'customers',
    lookup = 'true'
);

-- What offer_rules reads: the customers' placed orders, with the restaurant's time zone
-- (breakfast is in local time).
CREATE VIEW placed_orders AS
SELECT o.event_id, o.event_type, o.event_time, o.order_id, o.customer_id, o.restaurant_id,
       r.time_zone
FROM orders o
LEFT JOIN restaurants r ON o.restaurant_id = r.restaurant_id
WHERE o.event_type = 'order_placed' AND o.customer_id IS NOT NULL;

-- What cart_nudge reads: cart updates and session ends (a converted session is a checkout).
CREATE VIEW cart_events AS
SELECT event_id, event_type, event_time, session_id, customer_id, cart_total, converted
FROM app
WHERE event_type IN ('cart_updated', 'session_ended') AND customer_id IS NOT NULL;

-- One line per offer sent: customer_id, rule, offer, event_time (when the rule fired),
-- day (its UTC date) and evidence (JSON text: the orders or the cart event behind it).
CREATE TABLE offer_triggers WITH (
    connector = 'file',
    path = 'data/offer_triggers.jsonl'
);

-- Every rule's triggers (the operators' tables offer_rules and cart_nudges: the
-- same columns) as one stream.
CREATE VIEW rule_triggers AS
SELECT customer_id, rule, offer, event_time, day, evidence FROM offer_rules
UNION ALL
SELECT customer_id, rule, offer, event_time, day, evidence FROM cart_nudges;

-- The triggers of opted-in customers (lookup join), at most one offer per customer
-- and UTC day across all rules: the first of the day by event time (state.ttl in the
-- pipeline file forgets a customer's day after it).
INSERT INTO offer_triggers
SELECT customer_id, rule, offer, event_time, day, evidence FROM (
    SELECT t.*, ROW_NUMBER() OVER (PARTITION BY t.customer_id, t.day ORDER BY t.event_time) AS rn
    FROM rule_triggers t
    JOIN customers c ON t.customer_id = c.customer_id
    WHERE c.marketing_opt_in)
WHERE rn = 1;
