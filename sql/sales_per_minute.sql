-- Sales per restaurant and minute: revenue, number of orders and average ticket.
--
-- Who reads it: marketing and analysts (Parquet under data/sales_per_minute/,
-- partitioned by date=YYYY-MM-DD/hour=HH of the minute; query it with DuckDB, Spark,
-- Athena or pyarrow).
--
-- What counts: every order placed (`order_placed` events), by the time the order was
-- placed (event time), in one-minute windows [minute_start, minute_start + 1 min).
-- Cancelled orders still count: the order was placed (sales_items has the lines).
--
-- Late and repeated events: orders arrive up to a few seconds out of order; a minute
-- is published once the stream has moved 5 s past its end (watermark_delay). An order
-- arriving after that is late: left out of the results and counted in
-- tributary_late_rows_total (kept in the dead-letter queue, class `late`). An event the
-- source sends twice (same event_id) is counted once: the inner query keeps one row
-- per order and minute, the outer one counts and sums them (two windowed aggregates
-- in one query, run as a chain of stages). A record that cannot be read is
-- in the dead-letter queue (class `malformed` or `schema_mismatch`), not in results.
CREATE TABLE orders WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'orders',
    rate = '200',
    -- The first 10 minutes of event time at once: results from the first minute.
    warmup = '10m',
    out_of_order = '3s',
    late_fraction = '0.001',
    duplicate_fraction = '0.001',
    malformed_fraction = '0.0005',
    event_time_field = 'event_time',
    watermark_delay = '5s'
);

-- The restaurants (reference data, kept in memory): the name shown next to the id.
-- The same seed as the orders' generator (both default to 42), so the ids agree.
CREATE TABLE restaurants WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'restaurants',
    lookup = 'true'
);

CREATE TABLE sales_per_minute WITH (
    connector = 'parquet',
    path = 'data/sales_per_minute',
    partition_by = 'date,hour',
    rollover_interval = '1m'
);

INSERT INTO sales_per_minute
SELECT
    -- The minute, UTC: orders placed in [minute_start, minute_start + 1 minute).
    s.w.start AS minute_start,
    s.restaurant_id,
    r.name AS restaurant_name,
    -- Orders placed in that minute at that restaurant.
    s.orders,
    -- Their total value in dollars (sum of the order totals, to the cent).
    s.revenue_cents / 100.0 AS revenue,
    -- Average ticket: revenue / orders, in dollars, rounded to the cent.
    round(s.revenue_cents / 100.0 / s.orders, 2) AS average_ticket,
    -- Partition columns (directory names, not inside the files).
    to_char(s.w.start, '%Y-%m-%d') AS date,
    to_char(s.w.start, '%H') AS hour
FROM (
    -- The minute's orders per restaurant.
    SELECT
        w,
        restaurant_id,
        count(*) AS orders,
        sum(cents) AS revenue_cents
    FROM (
        -- Each order once per minute: an event the source sends twice has the same
        -- order_id and event time, so its repeat falls in the same minute.
        SELECT
            tumble(INTERVAL '1' MINUTE) AS w,
            restaurant_id,
            order_id,
            -- The order's total in cents.
            max(CAST(round(total * 100) AS BIGINT)) AS cents
        FROM orders
        WHERE event_type = 'order_placed'
        GROUP BY w, restaurant_id, order_id
    )
    GROUP BY w, restaurant_id
) s
LEFT JOIN restaurants r ON s.restaurant_id = r.restaurant_id;
