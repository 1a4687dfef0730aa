-- Offer engagement for marketing: offer views and clicks in the app, the raw material
-- of offer targeting and conversion analytics.
CREATE TABLE app WITH (
    connector = 'generator',
    world = 'restaurant',
    stream = 'app',
    rate = '300',
    -- The first 10 minutes of event time at once: orders at every stage from the start.
    warmup = '10m'
);

CREATE TABLE offer_events WITH (
    connector = 'file',
    path = 'data/offer_events.jsonl'
);

INSERT INTO offer_events
SELECT
    event_time,
    customer_id,
    session_id,
    restaurant_id,
    offer_id,
    offer_name,
    event_type = 'offer_clicked' AS clicked,
    lower(device) AS device
FROM app
WHERE event_type IN ('offer_viewed', 'offer_clicked');
