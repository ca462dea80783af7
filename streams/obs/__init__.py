"""Observability: Prometheus metrics (``metrics`` defines every one), /metrics and /healthz
over HTTP, consumer lag, and structured logs with email addresses hashed."""

__all__: list[str] = []
