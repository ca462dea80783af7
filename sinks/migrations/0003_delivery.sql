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

-- Stored templates a send request names by content.template_id (jinja2, rendered sandboxed).
CREATE TABLE templates (
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    template_id text NOT NULL,
    subject     text,
    html        text,
    text        text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, template_id),
    CHECK (subject IS NOT NULL OR html IS NOT NULL OR text IS NOT NULL)
);
