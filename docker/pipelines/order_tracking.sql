-- Order tracking in production: the order events from Kafka (written by
-- orders_to_kafka) through the same Rust operators as the embedded default
-- (order_tracking.yaml), to a compacted Kafka topic for the mobile backend and a
-- DynamoDB table it reads by order id and by customer.
CREATE TABLE orders (
    event_id VARCHAR, event_type VARCHAR, event_time TIMESTAMP, order_id BIGINT,
    customer_id BIGINT, restaurant_id BIGINT, channel VARCHAR
) WITH (
    connector = 'kafka',
    cluster = 'local',
    topic = 'orders.order_events',
    offset = 'earliest',
    event_time_field = 'event_time',
    watermark_delay = '3s'
);

CREATE TABLE restaurants WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'restaurants',
    lookup = 'true'
);

CREATE VIEW order_events AS
SELECT o.event_id, o.event_type, o.event_time, o.order_id, o.customer_id, o.restaurant_id,
       r.name AS restaurant_name, r.time_zone, o.channel
FROM orders o
LEFT JOIN restaurants r ON o.restaurant_id = r.restaurant_id;

-- orders.tracking: a record per status change keyed by order id, Avro with the
-- contract in schemas/; compacted, so the topic keeps each order's latest status.
CREATE TABLE tracking WITH (
    connector = 'kafka',
    cluster = 'local',
    topic = 'orders.tracking',
    key_field = 'order_id',
    partitions = '3',
    format = 'avro',
    schema_file = '../../schemas/orders.order_status.avsc',
    "topic.cleanup.policy" = 'compact'
);

-- The current status per order: by order id, and a customer's active orders through
-- a sparse index (active_customer_id is NULL once the order is final).
CREATE TABLE order_status WITH (
    connector = 'dynamodb',
    table = 'order_status',
    partition_key = 'order_id',
    'index.by_customer' = 'customer_id, status_time',
    'index.active_by_customer' = 'active_customer_id, status_time'
);

CREATE TABLE sla_alerts WITH (
    connector = 'kafka',
    cluster = 'local',
    topic = 'orders.sla_alerts',
    key_field = 'order_id',
    partitions = '3'
);

INSERT INTO tracking
SELECT order_id, customer_id, restaurant_id, restaurant_name, time_zone, channel, status,
       event_time AS status_time, placed_at, paid_at, preparing_at, ready_at, completed_at,
       cancelled_at, cancel_reason, eta, is_final, event_id
FROM order_tracking;

INSERT INTO order_status
SELECT order_id, customer_id, restaurant_id, restaurant_name, channel, status,
       event_time AS status_time, eta, is_final,
       CASE WHEN is_final THEN NULL ELSE customer_id END AS active_customer_id
FROM order_tracking;

INSERT INTO sla_alerts SELECT * FROM order_tracking_sla_alerts;
