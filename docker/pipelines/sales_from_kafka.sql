-- Revenue and orders per restaurant and minute of event time, read from the topic
-- orders_to_kafka writes, into the topic orders.sales_per_minute (keyed by restaurant).
-- The source reads committed records only (librdkafka's default isolation), so it sees
-- each order event once; a window is emitted when the watermark passes its end.
CREATE TABLE orders (
    event_id VARCHAR,
    event_type VARCHAR,
    event_time TIMESTAMP,
    order_id BIGINT,
    customer_id BIGINT,
    restaurant_id BIGINT,
    channel VARCHAR,
    total DOUBLE
) WITH (
    connector = 'kafka',
    cluster = 'local',
    topic = 'orders.order_events',
    offset = 'earliest',
    event_time_field = 'event_time',
    watermark_delay = '5s'
);

CREATE TABLE sales_per_minute WITH (
    connector = 'kafka',
    cluster = 'local',
    topic = 'orders.sales_per_minute',
    key_field = 'restaurant_id',
    partitions = '3'
);

INSERT INTO sales_per_minute
SELECT
    w.start AS minute_start,
    restaurant_id,
    orders,
    revenue,
    round(revenue / orders, 2) AS average_basket
FROM (
    SELECT
        tumble(INTERVAL '1' MINUTE) AS w,
        restaurant_id,
        count(*) AS orders,
        round(sum(total), 2) AS revenue
    FROM orders
    WHERE event_type = 'order_placed'
    GROUP BY w, restaurant_id
);
