-- Generated orders of app customers into the repeat_customers operator (see main.rs),
-- its triggers to standard output.
CREATE TABLE orders WITH (
    connector = 'generator', stream = 'orders', rate = '0', count = '50000',
    event_time_field = 'event_time'
);
CREATE VIEW placed AS
SELECT event_type, event_time, customer_id FROM orders WHERE customer_id IS NOT NULL;
CREATE TABLE triggers WITH (connector = 'stdout');
INSERT INTO triggers SELECT * FROM repeaters;
