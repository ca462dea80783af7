-- Placeholder holding version 5 for the `trust` branch's migration (API keys sealed at rest),
-- so this branch's 0006 applies without a gap; the lead drops this file when merging both.
SELECT 1;
