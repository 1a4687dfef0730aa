-- Top 10 menu items per restaurant and hour, updated every 15 minutes.
--
-- Who reads it: marketing and analysts (Parquet under data/sales_top_items/,
-- partitioned by date=YYYY-MM-DD/hour=HH of the window's end; query it with DuckDB,
-- Spark, Athena or pyarrow).
--
-- What counts: the lines of every order placed (`order_placed` events: each line is a
-- menu item and a quantity), by the time the order was placed (event time). Windows
-- are one hour long and start every 15 minutes (hopping): [window_start, window_end),
-- so an order counts in 4 overlapping windows, and each row says "in the hour before
-- window_end". Per window and restaurant: the 10 items with the most units sold,
-- ranked 1 to 10; ties (same units) go to the lower menu_item_id.
--
-- Late events: orders arrive up to a few seconds out of order; a window is published
-- once the stream has moved 5 s past its end. An order arriving after that is left out
-- of the windows already published (counted in tributary_late_rows_total; in the
-- dead-letter queue, class `late`, when it missed all of them).
CREATE TABLE orders WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'orders',
    -- A modest rate (restaurants see a few orders an hour each); the first hour of
    -- event time at once, so the first windows are published within a minute.
    rate = '20',
    warmup = '1h',
    out_of_order = '3s',
    late_fraction = '0.001',
    event_time_field = 'event_time',
    watermark_delay = '5s'
);

CREATE TABLE sales_top_items WITH (
    connector = 'parquet',
    path = 'data/sales_top_items',
    partition_by = 'date,hour',
    rollover_interval = '1m'
);

-- One row per order line.
CREATE VIEW placed_lines AS
SELECT restaurant_id, event_time, unnest(items) AS item
FROM orders
WHERE event_type = 'order_placed';

INSERT INTO sales_top_items
SELECT
    -- The hour the ranking covers, UTC: [window_start, window_end).
    w.start AS window_start,
    w['end'] AS window_end,
    restaurant_id,
    -- 1 = the item with the most units sold in that restaurant in that hour.
    item_rank,
    menu_item_id,
    item_name,
    -- Units sold (sum of the lines' quantities) and the orders that had the item.
    units,
    orders,
    -- Partition columns: the window's end (the hour it reports up to).
    to_char(w['end'], '%Y-%m-%d') AS date,
    to_char(w['end'], '%H') AS hour
FROM (
    SELECT
        w, restaurant_id, menu_item_id, item_name, units, orders,
        ROW_NUMBER() OVER (
            PARTITION BY w, restaurant_id
            ORDER BY units DESC, menu_item_id
        ) AS item_rank
    FROM (
        SELECT
            hop(INTERVAL '15' MINUTE, INTERVAL '1' HOUR) AS w,
            restaurant_id,
            item['menu_item_id'] AS menu_item_id,
            max(item['name']) AS item_name,
            sum(item['quantity']) AS units,
            count(*) AS orders
        FROM placed_lines
        GROUP BY w, restaurant_id, item['menu_item_id']
    )
)
WHERE item_rank <= 10;
