"""The one error hierarchy for postwire.

Library errors (fastavro, aiokafka, asyncpg, subprocess) are converted at the edge with
``raise Ours(...) from exc`` so callers only ever catch these. ``retriable`` tells a caller
whether the same operation may succeed later (a broker not up yet) or never will (garbage bytes).
``code`` is a short stable identifier that lands in dead-letter records and metrics labels.
"""

from __future__ import annotations

__all__ = [
    "ApiClientError",
    "ApiKeyError",
    "AuthError",
    "BareLineEndingError",
    "BenchError",
    "CodecError",
    "ConfigError",
    "ControlCharacterError",
    "DkimError",
    "DkimKeyError",
    "DkimMessageError",
    "GroupLimitError",
    "HeaderInjectionError",
    "IngressValidationError",
    "InputFileError",
    "InvalidContentError",
    "InvalidRecordError",
    "KafkaRefusedError",
    "MigrationError",
    "NotAvroError",
    "NotReplayableError",
    "PostwireError",
    "RecordTooLargeError",
    "RecoveryStalledError",
    "RenderError",
    "ReplayError",
    "ReportError",
    "RequestLimitError",
    "RequestTooLargeError",
    "ReturnPathError",
    "RuntimeProduceError",
    "SchemaMismatchError",
    "SecretError",
    "SelectorTakenError",
    "SenderConflictError",
    "SenderError",
    "SenderInvalidError",
    "SinkUnavailableError",
    "StackError",
    "StageCrashError",
    "TemplateRenderError",
    "TimeFormatError",
    "TimeRangeError",
    "TrackRefusedError",
    "TrackingTokenError",
    "TrailingBytesError",
    "TruncatedError",
    "UndefinedVariableError",
    "UnknownKeyError",
    "UnknownSchemaError",
    "UnknownScopeError",
    "UnknownSenderError",
    "UnknownTemplateError",
    "UnknownTenantError",
    "UnknownTopicError",
    "UnreachableError",
]


class PostwireError(Exception):
    """Root of every error postwire raises on purpose."""

    code: str = "error"
    retriable: bool = False


class ConfigError(PostwireError):
    code = "config"


class SecretError(PostwireError):
    """A sealed secret does not open under this install's server secret."""

    code = "secret"


class StackError(PostwireError):
    """The embedded Kafka/PostgreSQL stack could not be fetched, started or stopped."""

    code = "stack"


class KafkaRefusedError(StackError):
    """The Kafka cluster answered but refused this client: its SASL credentials or mechanism,
    or the TLS handshake (the cluster's certificate not trusted, or a listener that speaks
    another protocol). ``code`` says which; never retriable: the same settings are refused
    again."""

    code = "kafka.refused"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class UnreachableError(StackError):
    """A server a process needs (Kafka, PostgreSQL) did not answer within the time it was
    given; ``code`` names which (``kafka.unreachable``, ``postgres.unreachable``)."""

    code = "unreachable"
    retriable = True

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AuthError(PostwireError):
    """The request's tenant or API key is not accepted; ``code`` says which check failed."""

    code = "auth"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TrackRefusedError(PostwireError):
    """A tracking event that is not the posting tenant's to record: a message id not issued to
    it (``track.foreign_message``) or a time too far in the future (``track.future_timestamp``).
    ``field`` names the part of the event at fault."""

    code = "track"

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


class MigrationError(PostwireError):
    code = "migration"


class SinkUnavailableError(PostwireError):
    """The sink's database refused or dropped the write; the batch is kept and retried."""

    code = "sink.unavailable"
    retriable = True

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CodecError(PostwireError):
    """A value could not be encoded or decoded with the Avro contract."""

    code = "codec"


class NotAvroError(CodecError):
    """The bytes do not start with the Avro single-object marker (0xC3 0x01)."""

    code = "codec.not_avro"


class TruncatedError(CodecError):
    """The bytes end before the header or the record body is complete."""

    code = "codec.truncated"


class UnknownSchemaError(CodecError):
    """The header names a schema fingerprint this build does not know."""

    code = "codec.unknown_schema"


class SchemaMismatchError(CodecError):
    """The record is valid Avro but of another type than the topic carries."""

    code = "codec.wrong_type"


class TrailingBytesError(CodecError):
    """The record decoded but bytes were left over: corrupt or concatenated input."""

    code = "codec.trailing_bytes"


class InvalidRecordError(CodecError):
    """The body does not decode with its writer schema, or a record to encode does not fit."""

    code = "codec.invalid"


class RenderError(PostwireError):
    """A send request cannot become a message; ``field`` names the part of the request at fault.

    Never retriable: the same request renders the same way every time."""

    code = "render"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


class HeaderInjectionError(RenderError):
    """A header value holds CR or LF, before or after substitution (header/SMTP injection)."""

    code = "render.header_injection"


class BareLineEndingError(RenderError):
    """A body holds CR or LF outside a CRLF pair (SMTP smuggling)."""

    code = "render.bare_line_ending"


class ControlCharacterError(RenderError):
    """A header value or one-line text holds a control character other than TAB, or a body a
    NUL: no reader agrees on what they mean."""

    code = "render.control_character"


class UndefinedVariableError(RenderError):
    """A template uses a variable that the substitutions do not define."""

    code = "render.undefined"


class TemplateRenderError(RenderError):
    """A template does not parse, breaks the sandbox, fails at run time or renders too much."""

    code = "render.template"


class UnknownTemplateError(RenderError):
    """The request names a stored template the template store does not hold."""

    code = "render.unknown_template"


class InvalidContentError(RenderError):
    """Missing sender or content, an unusable address, a reserved header or a bad attachment."""

    code = "render.invalid"


class RequestLimitError(PostwireError):
    """A request over one of the per-request limits every door enforces (recipients,
    categories, custom args); ``code`` names the limit (``limits.recipients``, ...)."""

    code = "limits"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RecordTooLargeError(RequestLimitError):
    """A request whose Kafka record would be larger than the pipeline can carry: Kafka would
    refuse it, or the records the gate makes of it. ``limit`` is the largest allowed."""

    code = "limits.record_size"

    def __init__(self, size: int, limit: int, reason: str) -> None:
        super().__init__(
            "limits.record_size",
            f"the request's Kafka record would be {size:,} bytes; at most {limit:,} bytes "
            f"fit ({reason})",
        )
        self.size = size
        self.limit = limit


class RequestTooLargeError(RequestLimitError):
    """One call whose records, all together, are more than a call may write: 1,000
    personalizations each carrying the same attachments would put a gigabyte on Kafka from a
    30 MB body."""

    code = "limits.request_size"

    def __init__(self, records: int, size: int, limit: int) -> None:
        super().__init__(
            "limits.request_size",
            f"this body becomes {records:,} requests of {size:,} bytes in all; one call may "
            f"write at most {limit:,} bytes (POSTWIRE_API_MAX_BODY): send fewer "
            "personalizations per call",
        )
        self.size = size
        self.limit = limit


class DkimError(PostwireError):
    """A message could not be DKIM-signed."""

    code = "dkim"


class DkimKeyError(DkimError):
    """The private key does not load or is not RSA (>= 1024 bits) or Ed25519."""

    code = "dkim.key"


class DkimMessageError(DkimError):
    """The message is not in SMTP form (CRLF only, header block then body)."""

    code = "dkim.message"


class RecoveryStalledError(StackError):
    """Rebuilding a state store from its changelog made no progress; the worker exits so its
    supervisor can restart it, instead of hanging."""

    code = "runtime.recovery_stalled"
    retriable = True


class RuntimeProduceError(StackError):
    """Kafka did not acknowledge a batch's outputs or state changes: its offsets are not
    committed and the worker stops, so the batch is read again after a restart."""

    code = "runtime.produce_failed"
    retriable = True


class StageCrashError(PostwireError):
    """A stage failed on a record in a way nobody planned for (a bug). The record is
    dead-lettered with the error rather than lost with the crashed agent."""

    code = "stage.crashed"


class BenchError(PostwireError):
    """A benchmark's peers could not be found, started or stopped."""

    code = "bench"


class IngressValidationError(PostwireError):
    """An HTTP request body the ingress cannot accept; every problem, as (field, message)."""

    code = "ingress.invalid"

    def __init__(self, problems: list[tuple[str | None, str]]) -> None:
        super().__init__("; ".join(f"{f or 'body'}: {m}" for f, m in problems))
        self.problems = problems


class ApiClientError(PostwireError):
    """A `postwire send|verify|status` call the API refused or could not be reached for;
    ``status`` is the HTTP status (0 when there was no answer)."""

    code = "api.client"

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class InputFileError(PostwireError):
    """An input file a command cannot read: missing, wrong format, no address column."""

    code = "input.file"


class ApiKeyError(PostwireError):
    """An API key operation (create, list, revoke) that cannot be done as asked."""

    code = "keys"


class UnknownScopeError(ApiKeyError):
    """A scope name that is not one of the scopes keys can carry."""

    code = "keys.unknown_scope"


class UnknownTenantError(ApiKeyError):
    """The tenant named for a key does not exist."""

    code = "keys.unknown_tenant"


class UnknownKeyError(ApiKeyError):
    """No key with that id, or none that is still active."""

    code = "keys.unknown_key"


class ReplayError(PostwireError):
    """A replay that cannot run as asked: the invocation is at fault, not the infrastructure."""

    code = "replay"


class TimeFormatError(ReplayError):
    code = "replay.bad_time"


class TimeRangeError(ReplayError):
    code = "replay.bad_range"


class UnknownTopicError(ReplayError):
    code = "replay.unknown_topic"


class NotReplayableError(ReplayError):
    """The stage or topic cannot be replayed this way (see streams/replay/__init__.py)."""

    code = "replay.refused"


class SenderError(PostwireError):
    """A sender identity or DKIM key operation that cannot be done as asked."""

    code = "sender"


class SenderInvalidError(SenderError):
    """Not a domain or address a tenant can send from, or an unusable selector or key."""

    code = "sender.invalid"


class UnknownSenderError(SenderError):
    """The tenant has no such sender identity (another tenant's is just as unknown)."""

    code = "sender.unknown"


class SenderConflictError(SenderError):
    """The identity or selector is taken: added already, another tenant's DKIM selector, or a
    domain another tenant has verified that the operator would vouch for without DNS proof."""

    code = "sender.conflict"


class SelectorTakenError(SenderConflictError):
    """The DKIM selector of that domain is in use (one DNS name holds one key)."""

    code = "sender.selector_taken"


class ReturnPathError(PostwireError):
    """A VERP return path (``<token>@<bounce domain>``) this install did not issue: another
    prefix, not base32, cut off, or a signature that does not match."""

    code = "inbound.bad_return_path"


class TrackingTokenError(PostwireError):
    """An open or click tracking token this install did not issue (or issued for the other
    kind), altered, or not base64: the request is refused without recording anything."""

    code = "tracking.bad_token"


class ReportError(PostwireError):
    """Mail at a return path that is neither a delivery status notification, a feedback report
    nor a bounce a detector recognises; ``code`` says which part failed."""

    code = "inbound.unparseable"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class UnsubscribeTokenError(PostwireError):
    """An unsubscribe token (``/u/<token>``, ``u<token>@<bounce domain>``) this install did not
    issue: another prefix, not base32, cut off, or a signature that does not match."""

    code = "unsubscribe.bad_token"


class GroupLimitError(PostwireError):
    """A tenant asked for more suppression groups than one may have."""

    code = "asm.too_many_groups"
