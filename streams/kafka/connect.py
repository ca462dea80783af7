"""Why a cluster refuses a client, in one sentence.

aiokafka gives up on a bootstrap server that refuses its credentials or its TLS handshake with
``KafkaConnectionError: Unable to bootstrap from [...]`` and logs the reason it had. That reads
the same as "Kafka is not up yet", so a caller would wait and retry a wrong password forever.
``start_client`` starts a client and, when that fails, opens one connection per bootstrap server
the way aiokafka does (``create_conn``: version lookup, SASL handshake over the TLS socket) to
find the reason, and raises it as a ``KafkaRefusedError`` with a code and the setting to check;
a cluster that simply does not answer keeps its original error (retriable, as before)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from typing import Any, Protocol

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from streams.errors import KafkaRefusedError

__all__ = ["CONNECTION_KEYS", "explain_refusal", "refusal_of", "start_client"]

PROBE_TIMEOUT_MS = 10_000
MISMATCH_RECHECK = 0.5  # seconds
CONNECTION_KEYS = (
    "security_protocol",
    "ssl_context",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
)


class _Client(Protocol):
    async def start(self) -> None: ...


def refusal_of(
    exc: BaseException, where: str, options: Mapping[str, Any]
) -> KafkaRefusedError | None:
    """The refusal ``exc`` (raised while connecting to ``where`` with ``options``) stands for,
    or None when it only says nobody answered (refused TCP, a timeout, a name not found)."""
    protocol = options.get("security_protocol", "PLAINTEXT")
    mechanism = options.get("sasl_mechanism")
    user = options.get("sasl_plain_username")
    if isinstance(exc, SaslAuthenticationFailed):
        return KafkaRefusedError(
            "kafka.sasl_auth_failed",
            f"Kafka at {where} refused the {mechanism} credentials of user {user!r}: check "
            f"POSTWIRE_KAFKA_SASL_USERNAME / _PASSWORD ({_strip(exc)})",
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return KafkaRefusedError(
            "kafka.sasl_mechanism",
            f"Kafka at {where} does not offer POSTWIRE_KAFKA_SASL_MECHANISM={mechanism} on this "
            f"listener ({_strip(exc)})",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        # the ssl module sets verify_message on the errors it raises, not on every instance
        reason = getattr(exc, "verify_message", None) or _strip(exc)
        return KafkaRefusedError(
            "kafka.tls_untrusted",
            f"the TLS certificate of Kafka at {where} was not accepted ({reason}): "
            "check POSTWIRE_KAFKA_SSL_CAFILE (unset: the system's CAs) and, for a certificate "
            "that names another host, POSTWIRE_KAFKA_SSL_CHECK_HOSTNAME",
        )
    if isinstance(exc, ssl.SSLError):
        return KafkaRefusedError(
            "kafka.tls_handshake",
            f"the TLS handshake with Kafka at {where} failed ({exc}): is it a TLS listener, and "
            "does it want a client certificate (POSTWIRE_KAFKA_SSL_CERTFILE)?",
        )
    if isinstance(exc, ConnectionResetError) or (
        isinstance(exc, KafkaConnectionError) and "closed" in str(exc)
    ):
        # the TCP connection was made and then dropped without an answer: a TLS listener
        # reading plaintext (or SASL) from a client, or a plaintext one reading a TLS hello
        return KafkaRefusedError(
            "kafka.protocol_mismatch",
            f"Kafka at {where} dropped the connection without answering: its listener does "
            f"not speak POSTWIRE_KAFKA_SECURITY_PROTOCOL={protocol}",
        )
    return None


def _strip(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


async def explain_refusal(options: Mapping[str, Any]) -> KafkaRefusedError | None:
    """Connect to each bootstrap server with ``options`` and return the first refusal; None
    when one accepted (the failure was elsewhere) or none answered at all."""
    found = await _probe(options)
    if found is not None and found.code == "kafka.protocol_mismatch":
        # a broker that is shutting down drops connections the same way: believe it when a
        # second look a moment later sees it again
        await asyncio.sleep(MISMATCH_RECHECK)
        again = await _probe(options)
        return again if again is not None and again.code == found.code else None
    return found


async def _probe(options: Mapping[str, Any]) -> KafkaRefusedError | None:
    connection: dict[str, Any] = {k: options[k] for k in CONNECTION_KEYS if k in options}
    for host, port, _ in collect_hosts(options["bootstrap_servers"], randomize=False):
        where = f"{host}:{port}"
        try:
            conn = await create_conn(host, port, request_timeout_ms=PROBE_TIMEOUT_MS, **connection)
        except (OSError, KafkaError, TimeoutError) as exc:
            found = refusal_of(exc, where, options)
            if found is not None:
                return found
            continue
        try:
            # a SASL listener answers the version lookup before authentication and drops a
            # client that skipped it at its first real request, as aiokafka's bootstrap sends
            await conn.send(MetadataRequest([]))
        except (OSError, KafkaError, TimeoutError) as exc:
            return refusal_of(exc, where, options)
        finally:
            conn.close()
        return None
    return None


async def start_client(client: _Client, options: Mapping[str, Any]) -> None:
    """``await client.start()``; if the cluster refuses the client's credentials or TLS, a
    KafkaRefusedError that says why (the client is closed first). Any other failure is raised
    as it came."""
    try:
        await client.start()
    except (KafkaError, OSError) as exc:
        found = await explain_refusal(options)
        if found is None:
            raise
        await _close(client)
        raise found from exc


async def _close(client: Any) -> None:
    closing = getattr(client, "stop", None) or getattr(client, "close", None)
    if closing is not None:
        with contextlib.suppress(Exception):
            await closing()
