-- Preparation time per restaurant and 15 minutes, from the kitchen.
--
-- Who reads it: operations, marketing and analysts (Parquet under
-- data/order_prep_times/, partitioned by date=YYYY-MM-DD/hour=HH of the window's
-- start; query it with DuckDB, Spark, Athena or pyarrow).
--
-- What counts: every kitchen ticket completed (one ticket per order and station:
-- grill, fryer, assembly, beverage, dessert), by the time it was finished (event
-- time), in 15-minute windows [window_start, window_start + 15 min). A ticket's
-- preparation time is from when the station started it to when it finished it; its
-- wait is from payment (queued) to the start. Cancelled tickets are left out.
--
-- Late events: tickets arrive up to a few seconds out of order; a window is published
-- once the stream has moved 5 s past its end. A ticket arriving after that is left
-- out (counted in tributary_late_rows_total; in the dead-letter queue, class `late`).
CREATE TABLE kitchen WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'kitchen',
    rate = '50',
    -- The first 20 minutes of event time at once: the first window (15 minutes) is
    -- published from the start.
    warmup = '20m',
    out_of_order = '2s',
    late_fraction = '0.001',
    event_time_field = 'event_time',
    watermark_delay = '5s'
);

-- The restaurants (reference data, kept in memory): the name shown next to the id.
-- The same seed as the kitchen's generator (both default to 42), so the ids agree.
CREATE TABLE restaurants WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'restaurants',
    lookup = 'true'
);

CREATE TABLE order_prep_times WITH (
    connector = 'parquet',
    path = 'data/order_prep_times',
    partition_by = 'date,hour',
    rollover_interval = '1m'
);

INSERT INTO order_prep_times
SELECT
    -- The quarter hour, UTC: tickets finished in [window_start, window_end).
    p.w.start AS window_start,
    p.w['end'] AS window_end,
    p.restaurant_id,
    r.name AS restaurant_name,
    -- Tickets completed, and the orders they belong to.
    p.tickets,
    p.orders,
    -- Preparation time per ticket, in seconds: average (to the millisecond) and longest.
    round(p.avg_prep_seconds, 3) AS avg_prep_seconds,
    p.max_prep_seconds,
    -- Wait before a station started a ticket, in seconds (average).
    round(p.avg_wait_seconds, 3) AS avg_wait_seconds,
    -- Partition columns (directory names, not inside the files).
    to_char(p.w.start, '%Y-%m-%d') AS date,
    to_char(p.w.start, '%H') AS hour
FROM (
    SELECT
        tumble(INTERVAL '15' MINUTE) AS w,
        restaurant_id,
        count(*) AS tickets,
        count(DISTINCT order_id) AS orders,
        avg(prep_seconds) AS avg_prep_seconds,
        max(prep_seconds) AS max_prep_seconds,
        avg(wait_seconds) AS avg_wait_seconds
    FROM kitchen
    WHERE status = 'completed'
    GROUP BY w, restaurant_id
) p
LEFT JOIN restaurants r ON p.restaurant_id = r.restaurant_id;
