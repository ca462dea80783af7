"""Batched, idempotent Kafka -> PostgreSQL sinks and the database migrations."""

__all__: list[str] = []
