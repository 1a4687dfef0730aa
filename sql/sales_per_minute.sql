-- Sales analytics: revenue, orders and average basket per restaurant and minute, by
-- event time. Orders arrive up to a few seconds out of order; the watermark waits 5 s,
-- later events are dropped and counted (tributary_late_rows_total).
CREATE TABLE orders WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'orders',
    rate = '200',
    -- The first 10 minutes of event time at once: orders at every stage from the start.
    warmup = '10m',
    out_of_order = '3s',
    event_time_field = 'event_time',
    watermark_delay = '5s'
);

CREATE TABLE sales_per_minute WITH (
    connector = 'file',
    path = 'data/sales_per_minute.jsonl'
);

INSERT INTO sales_per_minute
SELECT
    w.start AS minute_start,
    restaurant_id,
    orders,
    customers,
    revenue,
    round(revenue / orders, 2) AS average_basket
FROM (
    SELECT
        tumble(INTERVAL '1' MINUTE) AS w,
        restaurant_id,
        count(*) AS orders,
        count(DISTINCT customer_id) AS customers,
        round(sum(total), 2) AS revenue
    FROM orders
    WHERE event_type = 'order_placed'
    GROUP BY w, restaurant_id
);
