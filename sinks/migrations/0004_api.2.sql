-- GET /v1/events pages by landing order: a client that polls with the last cursor sees every
-- event once, including late ones whose occurred_at is older than what it already has.
ALTER TABLE events ADD COLUMN seq bigserial;
CREATE INDEX events_tenant_seq ON events (tenant_id, seq);

-- A message with several personalizations has one id per personalization, <id>.<n>;
-- pattern_ops lets `message_id LIKE '<id>.%'` use an index whatever the database collation.
CREATE INDEX messages_message_prefix ON messages (message_id text_pattern_ops);
CREATE INDEX events_message_prefix ON events (message_id text_pattern_ops)
    WHERE message_id IS NOT NULL;
