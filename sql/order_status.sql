-- Order tracking for the mobile backend: every lifecycle event of a mobile order
-- becomes the status the app shows ("where is my order, when will it be ready").
CREATE TABLE orders WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'orders',
    rate = '200',
    -- The first 10 minutes of event time at once: orders at every stage from the start.
    warmup = '10m',
    out_of_order = '2s',
    duplicate_fraction = '0.001',
    malformed_fraction = '0.001'
);

CREATE TABLE order_status WITH (
    connector = 'file',
    path = 'data/order_status.jsonl'
);

INSERT INTO order_status
SELECT
    order_id,
    customer_id,
    restaurant_id,
    channel,
    CASE event_type
        WHEN 'order_placed' THEN 'received'
        WHEN 'order_paid' THEN 'paid'
        WHEN 'order_preparing' THEN 'preparing'
        WHEN 'order_ready' THEN 'ready_for_pickup'
        WHEN 'order_picked_up' THEN 'completed'
        WHEN 'order_delivered' THEN 'completed'
        WHEN 'order_cancelled' THEN 'cancelled'
        ELSE 'unknown'
    END AS status,
    event_time AS status_time,
    estimated_ready_time,
    cancel_reason,
    event_type IN ('order_picked_up', 'order_delivered', 'order_cancelled') AS is_final,
    event_id
FROM orders;
