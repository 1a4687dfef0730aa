-- Sales analytics: one row per item sold, from placed orders, as Parquet partitioned
-- by date and hour for analysts' queries.
CREATE TABLE orders WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'orders',
    rate = '200',
    -- The first 10 minutes of event time at once: orders at every stage from the start.
    warmup = '10m'
);

CREATE TABLE sales_items WITH (
    connector = 'parquet',
    path = 'data/sales_items',
    partition_by = 'date,hour',
    rollover_interval = '1m'
);

CREATE VIEW placed_items AS
SELECT order_id, restaurant_id, customer_id, channel, event_time, unnest(items) AS item
FROM orders
WHERE event_type = 'order_placed';

INSERT INTO sales_items
SELECT
    order_id,
    restaurant_id,
    customer_id,
    channel,
    event_time AS order_time,
    item['menu_item_id'] AS menu_item_id,
    item['name'] AS item_name,
    item['quantity'] AS quantity,
    item['unit_price'] AS unit_price,
    round(CAST(item['quantity'] AS DOUBLE) * item['unit_price'], 2) AS line_total,
    to_char(event_time, '%Y-%m-%d') AS date,
    to_char(event_time, '%H') AS hour
FROM placed_items;
