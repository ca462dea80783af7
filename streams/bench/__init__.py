"""`postwire bench`: benchmarks against baselines measured in the same run, and the loopback
peers (DNS, SMTP) they need."""

__all__: list[str] = []
