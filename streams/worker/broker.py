"""The faust side of the Kafka security settings: the worker's faust app (process host, its
own producer and consumer) authenticates with the same SASL credentials and TLS context as every
aiokafka client, which ``streams.kafka.config.client_options`` builds."""

from __future__ import annotations

import faust
from faust.types.auth import CredentialsT

from streams.kafka.config import KafkaSecurity, ssl_context

__all__ = ["broker_credentials"]


def broker_credentials(security: KafkaSecurity) -> CredentialsT | None:
    """faust's ``broker_credentials`` for ``security``; None for PLAINTEXT."""
    context = ssl_context(security)
    if security.sasl:
        assert security.sasl_password is not None  # checked when the settings were made
        # with a context faust speaks SASL_SSL, without one SASL_PLAINTEXT
        return faust.SASLCredentials(
            username=security.sasl_username,
            password=security.sasl_password.get_secret_value(),
            mechanism=security.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
