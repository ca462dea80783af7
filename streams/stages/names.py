"""Which stages a worker process can run, and how `postwire up` splits them between processes
(kept free of faust so the supervisor does not import it)."""

from __future__ import annotations

__all__ = [
    "BULK_STAGES",
    "DELIVER_PARTS",
    "FRONT_STAGES",
    "KNOWN_STAGES",
    "STAGES",
    "TX_STAGES",
    "WEBHOOK_STAGES",
]

STAGES = ("gate", "verify", "deliver")
# ``deliver`` is both lanes plus the delay topics and queue control; the halves let a bulk
# backlog run in a process (and consumer group) of its own, away from transactional mail
DELIVER_PARTS = {
    "deliver": ("tx", "bulk"),
    "deliver.tx": ("tx",),
    "deliver.bulk": ("bulk",),
}
# the event webhooks (batching, posting, their delay tiers): not in STAGES, since a worker
# started without --stage moves mail; `postwire up` runs them in a process of their own
KNOWN_STAGES = (*STAGES, "deliver.tx", "deliver.bulk", "webhooks")
# `postwire up` runs each group in a process of its own: on one event loop the
# transactional lane's SMTP and Kafka work and the gate's batches took turns, and at 2,000
# requests/s one core was not enough for both
FRONT_STAGES = ("gate", "verify")
TX_STAGES = ("deliver.tx",)
BULK_STAGES = ("deliver.bulk",)
WEBHOOK_STAGES = ("webhooks",)
