-- Delivery: the latest state per message and recipient, and suppressions fed from Kafka.
ALTER TABLE messages ADD COLUMN reason text;
ALTER TABLE messages ADD COLUMN bounce_class text;
ALTER TABLE messages ADD COLUMN next_attempt_at timestamptz;
ALTER TABLE messages ADD COLUMN landed_at timestamptz NOT NULL DEFAULT clock_timestamp();
CREATE INDEX messages_request ON messages (request_id);

-- A removal is a tombstone on the compacted topic; the row keeps the history of the address.
ALTER TABLE suppressions ADD COLUMN detail text;
ALTER TABLE suppressions ADD COLUMN removed_at timestamptz;
ALTER TABLE suppressions ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

