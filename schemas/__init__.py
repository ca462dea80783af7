"""Avro schemas (``*.avsc``): the single source of truth for every topic value.

``common.avsc`` holds named types shared by several records; it is parsed first.
``history/<Record>/v<N>.avsc`` keeps every released version, fully expanded, for the
BACKWARD-compatibility check and so that old records still decode after a change.
"""

from pathlib import Path

__all__ = ["SCHEMA_DIR"]

SCHEMA_DIR = Path(__file__).parent
