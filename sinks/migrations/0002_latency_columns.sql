-- When the request was made and when its row landed, for request-to-row latency.
ALTER TABLE verifications ADD COLUMN requested_at timestamptz;
ALTER TABLE verifications ADD COLUMN landed_at timestamptz NOT NULL DEFAULT clock_timestamp();
ALTER TABLE events ADD COLUMN landed_at timestamptz NOT NULL DEFAULT clock_timestamp();
CREATE INDEX verifications_request ON verifications (request_id);
CREATE INDEX events_request ON events (request_id) WHERE request_id IS NOT NULL;
