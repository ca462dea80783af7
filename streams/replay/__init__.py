"""`postwire replay`: re-read a time range of a topic and re-apply it.

``--into-sinks`` reads the range with a plain consumer (partitions assigned, no group, nothing
committed), maps every record with the live sink's TableSpec and writes it through the live sink's
idempotent writer: rows already there are left as they are (natural-key upserts; where a table
keeps the latest state, an older record never rolls a row back), missing rows come back, and
records that cannot be mapped or that PostgreSQL refuses become ``rejections`` rows keyed by their
source offset, as in the live sink. Safe to run at any time, beside the live sinks, any number of
times.

``--stage NAME`` re-runs a stage over the range of its input topic under a consumer group of its
own and stops at the end of the range. Only ``verify`` may be replayed, because it is the only
stage whose every output is a keyed record that the sinks write idempotently and that nothing else
acts on: ``verifications`` (first write per (request, address) wins, so only missing results are
filled in; changed verdicts do not overwrite old ones) and dead letters keyed by source offset. It
runs with empty MX and verdict caches, so it repeats DNS lookups, and the SMTP probes of tasks that
asked for one (a probe stops at RCPT TO: no mail is sent, but remote servers are contacted again).

Refused, with the reason in one sentence:

- ``deliver`` (and ``deliver.tx`` / ``deliver.bulk``): the ledger of tasks a receiver accepted is
  the live app's faust table. A replay app starts with an empty ledger and would send every task
  in the range again. Nothing short of the live ledger can prove a task was not sent, so there is
  no safe variant.
- ``gate``: a replay app starts with empty dedup, rate-window and decision tables. Its decisions
  would differ from the ones the world already saw: duplicates outside the range are admitted
  again, a replay at full speed trips the rate limits (new ``throttled``/``deferred`` events with
  new ids, and deferred requests re-enter the *live* gate through ``deferred`` as new requests), a
  key revoked since then turns an admitted request into a dead letter, and a suppression added
  since turns a delivered message's state into ``dropped``. Worst, admitted send requests become
  delivery tasks on the live lanes again. The live ledger skips those it recorded as sent, but it
  forgets them a day after the retry lifetime, and it never held mail that bounced, failed or that
  an operator deleted from the queue: those would be attempted again. The sinks are idempotent for
  most of what it emits (``accepted`` by request id, events by stable event id, dead letters by
  source offset), but not for these. Everything the gate produced is already on ``accepted``,
  ``events``, ``verify`` and ``rejections``: replay those ``--into-sinks``, or ``--stage verify``.
"""

from __future__ import annotations

__all__: list[str] = []
