-- Event webhooks: each tenant's endpoint (SendGrid's event webhook settings) and the batches
-- that could not be delivered to it within the retry window.

-- One endpoint per tenant, as SendGrid has one per account. The signing key never rests in
-- plaintext: it is sealed (AES-256-GCM) under the server secret's "webhook-key" subkey with the
-- tenant as associated data, so a sealed key copied to another tenant's row does not open.
CREATE TABLE webhook_endpoints (
    tenant_id   text PRIMARY KEY REFERENCES tenants (tenant_id),
    enabled     boolean NOT NULL DEFAULT false,
    url         text NOT NULL DEFAULT '' CHECK (url = '' OR url ~ '^https?://'),
    -- the settings' event-type booleans that are on (processed, bounce, spam_report, ...)
    events      text[] NOT NULL DEFAULT '{}',
    signed      boolean NOT NULL DEFAULT false,
    sealed_key  bytea,
    -- base64 DER SubjectPublicKeyInfo, what SendGrid shows
    public_key  text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((sealed_key IS NULL) = (public_key IS NULL)),
    CHECK (NOT signed OR sealed_key IS NOT NULL)
);

-- A batch given up on after the retry window (or refused for good): its payload as it was
-- posted, so `postwire webhooks replay` sends exactly the same events again.
CREATE TABLE webhook_failures (
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    batch_id    text NOT NULL,
    events      integer NOT NULL CHECK (events > 0),
    payload     bytea NOT NULL,
    attempts    integer NOT NULL,
    reason      text NOT NULL,
    first_at    timestamptz NOT NULL,
    failed_at   timestamptz NOT NULL,
    replayed_at timestamptz,
    PRIMARY KEY (tenant_id, batch_id)
);
CREATE INDEX webhook_failures_pending ON webhook_failures (tenant_id, failed_at)
    WHERE replayed_at IS NULL;
