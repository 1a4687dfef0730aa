-- Offer targeting in production: placed orders from Kafka (written by orders_to_kafka)
-- through the same rules as the embedded default (offer_targeting.yaml), for opted-in
-- customers, at most one offer per customer per day, to the Kafka topic
-- marketing.offer-triggers keyed by customer (marketing's systems consume it). A
-- webhook to a marketing endpoint is one more sink of the same rows, e.g.
--   CREATE TABLE offer_webhook WITH (connector = 'webhook', url = 'https://…',
--       secret_env = 'OFFER_WEBHOOK_SECRET');
-- (docs/connectors.md#webhook); the stack has no endpoint to call.
CREATE TABLE orders (
    event_id VARCHAR, event_type VARCHAR, event_time TIMESTAMP, order_id BIGINT,
    customer_id BIGINT, restaurant_id BIGINT
) WITH (
    connector = 'kafka',
    cluster = 'local',
    topic = 'orders.order_events',
    offset = 'earliest',
    event_time_field = 'event_time',
    watermark_delay = '3s'
);

CREATE TABLE restaurants WITH (
    connector = 'generator', world = 'restaurant', stream = 'restaurants', lookup = 'true'
);

CREATE TABLE customers WITH (
    connector = 'generator', world = 'restaurant', stream = 'customers', lookup = 'true'
);

CREATE VIEW placed_orders AS
SELECT o.event_id, o.event_type, o.event_time, o.order_id, o.customer_id, o.restaurant_id,
       r.time_zone
FROM orders o
LEFT JOIN restaurants r ON o.restaurant_id = r.restaurant_id
WHERE o.event_type = 'order_placed' AND o.customer_id IS NOT NULL;

CREATE TABLE offer_triggers WITH (
    connector = 'kafka',
    cluster = 'local',
    topic = 'marketing.offer-triggers',
    key_field = 'customer_id',
    partitions = '3'
);

INSERT INTO offer_triggers
SELECT customer_id, rule, offer, event_time, day, evidence FROM (
    SELECT t.*, ROW_NUMBER() OVER (PARTITION BY t.customer_id, t.day ORDER BY t.event_time) AS rn
    FROM offer_rules t
    JOIN customers c ON t.customer_id = c.customer_id
    WHERE c.marketing_opt_in)
WHERE rn = 1;
