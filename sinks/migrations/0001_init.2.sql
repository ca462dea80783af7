CREATE TABLE requests (
    request_id      text PRIMARY KEY,
    tenant_id       text NOT NULL,
    operation       text NOT NULL,
    idempotency_key text,
    priority        text NOT NULL,
    recipient_count integer NOT NULL,
    categories      text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL,
    accepted_at     timestamptz NOT NULL DEFAULT now(),
    source_topic    text NOT NULL,
    source_partition integer NOT NULL,
    source_offset   bigint NOT NULL
);
CREATE INDEX requests_tenant_created ON requests (tenant_id, created_at);

CREATE TABLE verifications (
    request_id   text NOT NULL,
    address      text NOT NULL,
    tenant_id    text NOT NULL,
    normalized   text,
    is_reachable text NOT NULL,
    score        smallint NOT NULL,
    reasons      text[] NOT NULL DEFAULT '{}',
    result       jsonb NOT NULL,
    cached       boolean NOT NULL DEFAULT false,
    verified_at  timestamptz NOT NULL,
    PRIMARY KEY (request_id, address)
);
CREATE INDEX verifications_tenant ON verifications (tenant_id, verified_at);

CREATE TABLE messages (
    message_id  text NOT NULL,
    recipient   text NOT NULL,
    tenant_id   text NOT NULL,
    request_id  text NOT NULL,
    state       text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    last_reply  text,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (message_id, recipient)
);
CREATE INDEX messages_tenant_state ON messages (tenant_id, state);

CREATE TABLE events (
    event_id     text PRIMARY KEY,
    tenant_id    text NOT NULL,
    type         text NOT NULL,
    request_id   text,
    message_id   text,
    recipient    text,
    reason       text,
    detail       jsonb NOT NULL DEFAULT '{}',
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX events_tenant_occurred ON events (tenant_id, occurred_at);
CREATE INDEX events_message ON events (message_id) WHERE message_id IS NOT NULL;

CREATE TABLE rejections (
    source_topic     text NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint NOT NULL,
    stage            text NOT NULL,
    error_code       text NOT NULL,
    error            text NOT NULL,
    tenant_id        text,
    raw              bytea NOT NULL,
    rejected_at      timestamptz NOT NULL,
    PRIMARY KEY (source_topic, source_partition, source_offset)
);

CREATE TABLE suppressions (
    tenant_id   text NOT NULL,
    address     text NOT NULL,
    reason      text NOT NULL,
    source      text NOT NULL DEFAULT 'api',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, address)
);
