-- Prep-time analytics: each kitchen ticket joined with the order it belongs to, so
-- analysts see how long after the order was placed each station finished. An interval
-- join: a ticket joins the order placed in the hour before it; both streams' rows are
-- dropped from the join's state once the watermark has passed that hour.
CREATE TABLE orders WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'orders',
    rate = '200',
    -- The first 10 minutes of event time at once: orders at every stage from the start.
    warmup = '10m',
    out_of_order = '2s',
    event_time_field = 'event_time',
    watermark_delay = '5s'
);

CREATE TABLE kitchen WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'kitchen',
    rate = '200',
    -- The first 10 minutes of event time at once: orders at every stage from the start.
    warmup = '10m',
    out_of_order = '2s',
    event_time_field = 'event_time',
    watermark_delay = '5s'
);

CREATE TABLE order_prep_times WITH (
    connector = 'file',
    path = 'data/order_prep_times.jsonl'
);

INSERT INTO order_prep_times
SELECT
    o.order_id,
    o.restaurant_id,
    o.channel,
    k.station,
    k.status AS ticket_status,
    o.event_time AS placed_at,
    k.event_time AS ticket_done_at,
    k.prep_seconds,
    round(CAST(k.event_time AS BIGINT) / 1000.0 - CAST(o.event_time AS BIGINT) / 1000.0, 3) AS seconds_since_placed
FROM orders o
JOIN kitchen k
  ON k.order_id = o.order_id
 AND k.event_time BETWEEN o.event_time AND o.event_time + INTERVAL '1' HOUR
WHERE o.event_type = 'order_placed';
