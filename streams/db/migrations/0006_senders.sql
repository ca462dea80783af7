-- Sender identities and the DKIM keys that sign for them: a tenant sends only from domains (or
-- single addresses) it has verified, and mail is signed only with its own key of that domain.

-- A domain (address NULL) or one address of it that a tenant may send from once verified: by
-- a DNS TXT record holding the identity's own token, or by the operator vouching for it.
CREATE TABLE sender_identities (
    identity_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    -- the ASCII (IDNA) form, lower-cased, as delivery sees the From domain
    domain      text NOT NULL CHECK (domain <> '' AND domain = lower(domain)),
    address     text CHECK (address = lower(address) AND address LIKE '%_@' || domain),
    token       text NOT NULL CHECK (length(token) >= 16),
    verified_at timestamptz,
    verified_by text CHECK (verified_by IN ('dns', 'operator')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((verified_at IS NULL) = (verified_by IS NULL))
);
CREATE UNIQUE INDEX sender_identities_once
    ON sender_identities (tenant_id, domain, coalesce(address, ''));
-- who else claims a domain: checked before the operator vouches for one
CREATE INDEX sender_identities_domain ON sender_identities (domain) WHERE verified_at IS NOT NULL;

-- DKIM keys of a (tenant, domain). The private key never rests in plaintext: it is sealed
-- (AES-256-GCM) under the server secret's "dkim-key" subkey with tenant, domain and selector as
-- associated data, so a sealed key copied to another row does not open.
CREATE TABLE dkim_keys (
    tenant_id    text NOT NULL REFERENCES tenants (tenant_id),
    domain       text NOT NULL,
    selector     text NOT NULL,
    algorithm    text NOT NULL CHECK (algorithm IN ('rsa-sha256', 'ed25519-sha256')),
    sealed_key   bytea NOT NULL,
    -- the TXT value to publish at <selector>._domainkey.<domain>
    public_txt   text NOT NULL,
    active       boolean NOT NULL DEFAULT true,
    -- when a validation last found the TXT record published as it should be
    published_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- a selector is unique per tenant only: a tenant that claims another's selector of a
    -- domain (before proving anything) must not lock the domain's owner out; DNS holds one key
    -- per name, so only the key its owner publishes ever verifies
    PRIMARY KEY (tenant_id, domain, selector)
);
-- the key that signs: at most one per tenant and domain
CREATE UNIQUE INDEX dkim_keys_active ON dkim_keys (tenant_id, domain) WHERE active;
