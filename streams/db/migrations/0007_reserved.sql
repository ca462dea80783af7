-- Version 7 is kept for a part built alongside the webhooks (one version sequence across
-- streams/db/migrations and sinks/migrations, without gaps). This placeholder changes nothing;
-- when that part's 0007 is merged it replaces this file.
SELECT 1;
