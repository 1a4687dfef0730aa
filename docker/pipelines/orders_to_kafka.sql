-- The restaurant generator's order events into the Kafka topic orders.order_events,
-- keyed by order id (an order's events stay in order on one partition). The cluster
-- `local` is 127.0.0.1:9092 by default (the compose broker as seen from the host); in
-- docker/compose.yaml, TRIBUTARY__KAFKA__CLUSTERS points it at kafka:9092.
CREATE TABLE orders WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'orders',
    rate = '50',
    out_of_order = '2s'
);

CREATE TABLE order_events WITH (
    connector = 'kafka',
    cluster = 'local',
    topic = 'orders.order_events',
    key_field = 'order_id',
    partitions = '3'
);

INSERT INTO order_events
SELECT
    event_id,
    event_type,
    event_time,
    order_id,
    customer_id,
    restaurant_id,
    channel,
    total
FROM orders;
