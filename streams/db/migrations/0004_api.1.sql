-- The HTTP API's reads: verification jobs, paging events in landing order, message ids by prefix.

-- A verification job (one address or a batch) and the request ids it was split into; written by
-- the ingress before the requests go to Kafka, so progress is known from the first poll.
CREATE TABLE verify_jobs (
    job_id      text PRIMARY KEY,
    tenant_id   text NOT NULL,
    total       integer NOT NULL CHECK (total > 0),
    request_ids text[] NOT NULL,
    smtp_probe  boolean,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX verify_jobs_tenant ON verify_jobs (tenant_id, created_at);

