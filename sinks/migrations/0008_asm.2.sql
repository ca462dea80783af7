-- Who left which suppression group, fed from the compacted postwire.suppressions (the records
-- with a group_id; the global ones land in suppressions). A removal is a tombstone; the row keeps
-- the history of the address, as in suppressions.
CREATE TABLE group_suppressions (
    tenant_id   text NOT NULL,
    group_id    integer NOT NULL,
    address     text NOT NULL,
    reason      text NOT NULL,
    source      text NOT NULL,
    detail      text,
    created_at  timestamptz NOT NULL,
    removed_at  timestamptz,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, group_id, address)
);
CREATE INDEX group_suppressions_address ON group_suppressions (tenant_id, address);
