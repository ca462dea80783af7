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
