"""Address verification: syntax, lists, DNS MX, optional SMTP probe, and the verdict.

Everything here but ``dns`` and ``probe`` (the I/O edges) is pure and unit-tested without I/O.
"""

__all__: list[str] = []
