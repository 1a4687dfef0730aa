-- Kitchen operations: tickets that waited or cooked longer than the target, so that
-- restaurant managers see slow stations as they happen.
CREATE TABLE kitchen WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'kitchen',
    rate = '200',
    -- The first 10 minutes of event time at once: orders at every stage from the start.
    warmup = '10m'
);

CREATE TABLE slow_tickets WITH (
    connector = 'file',
    path = 'data/slow_tickets.jsonl'
);

INSERT INTO slow_tickets
SELECT
    ticket_id,
    order_id,
    restaurant_id,
    station,
    queued_at,
    wait_seconds,
    prep_seconds,
    CASE WHEN wait_seconds > 120 THEN 'long_wait' ELSE 'long_prep' END AS reason
FROM kitchen
WHERE status = 'completed' AND (wait_seconds > 120 OR prep_seconds > 300);
