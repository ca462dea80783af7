-- postwire schema v1: the tables every stage and sink writes.
-- Natural keys are primary keys so every sink can upsert idempotently on replay.

CREATE TABLE tenants (
    tenant_id       text PRIMARY KEY,
    name            text NOT NULL DEFAULT '',
    -- NULL limits fall back to the settings defaults
    limit_per_second integer CHECK (limit_per_second > 0),
    limit_per_minute integer CHECK (limit_per_minute > 0),
    limit_per_hour   integer CHECK (limit_per_hour > 0),
    throttle_policy text NOT NULL DEFAULT 'defer' CHECK (throttle_policy IN ('defer', 'reject')),
    smtp_probe      boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz
);

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    -- only the sha256 of the key is stored; the key itself is shown once at creation
    key_sha256  bytea NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
    scopes      text[] NOT NULL DEFAULT ARRAY['send', 'verify', 'read'],
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

