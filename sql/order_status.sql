-- Order tracking for the mobile backend: where each order is, since when, and when it
-- will be ready ("where is my order?"). The SQL enriches the order events with the
-- restaurant; two Rust operators the pipeline file deploys (pipelines/order_status.yaml,
-- src/library/order_tracking.rs) keep each restaurant's rolling preparation time and
-- each order's lifecycle; the SQL writes their results.
CREATE TABLE orders WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'orders',
    rate = '200',
    -- The first 10 minutes of event time at once: orders at every stage from the start.
    warmup = '10m',
    out_of_order = '2s',
    duplicate_fraction = '0.001',
    malformed_fraction = '0.001',
    -- Now and then an event after an order's end: dead-lettered as an impossible transition.
    impossible_fraction = '0.001',
    -- Events arrive up to 2 s out of order: the operators put them back in order once
    -- the watermark (3 s behind the latest event) has passed them.
    event_time_field = 'event_time',
    watermark_delay = '3s'
);

-- The restaurants (reference data, kept in memory): name and time zone.
CREATE TABLE restaurants WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'restaurants',
    lookup = 'true'
);

-- What the operators read: each order event with its restaurant.
CREATE VIEW order_events AS
SELECT
    o.event_id,
    o.event_type,
    o.event_time,
    o.order_id,
    o.customer_id,
    o.restaurant_id,
    r.name AS restaurant_name,
    r.time_zone,
    o.channel,
    o.cancel_reason,
    o.estimated_ready_time
FROM orders o
LEFT JOIN restaurants r ON o.restaurant_id = r.restaurant_id;

-- The current status of every order, one row per change (the app shows the latest
-- row per order_id): status, the time of each step, and the ETA.
CREATE TABLE order_status WITH (
    connector = 'file',
    path = 'data/order_status.jsonl'
);

-- Orders paid 6 minutes ago (event time) and still not ready (the SLA in the pipeline file).
CREATE TABLE order_sla_alerts WITH (
    connector = 'file',
    path = 'data/order_sla_alerts.jsonl'
);

-- Each order's latest status, served on the admin port for the mobile backend:
-- GET /orders/<order_id>, and a customer's orders: GET /orders?customer_id=<id>&is_final=false.
-- (In production the same rows go to a DynamoDB table and a compacted Kafka topic:
-- docker/pipelines/order_tracking.sql.)
CREATE TABLE orders_served WITH (
    connector = 'serving',
    key_field = 'order_id',
    route = 'orders',
    -- An order not updated for an hour is no longer served.
    expire_after = '1h',
    -- Freshness (event time to readable) in tributary_sink_latency_seconds.
    latency_column = 'event_time'
);

-- `order_tracking` is the operator's output, `order_tracking_sla_alerts` its alerts.
INSERT INTO order_status SELECT * FROM order_tracking;

INSERT INTO order_sla_alerts SELECT * FROM order_tracking_sla_alerts;

INSERT INTO orders_served SELECT * FROM order_tracking;
