"""The OpenAPI 3.1 description served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any, Final

from streams.api.openapi_asm import ASM_PATHS, LINK_PATHS
from streams.api.openapi_parts import OBJECT, answer, op, path_param, query_param
from streams.api.tracking import TRACK_TYPES

__all__ = ["SPEC"]

_ADDRESS: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["email"],
    "properties": {"email": {"type": "string", "format": "email"}, "name": {"type": "string"}},
}
_STRINGS: Final[dict[str, Any]] = {"type": "object", "additionalProperties": {"type": "string"}}
_PERSONALIZATION: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["to"],
    "properties": {
        "to": {"type": "array", "items": _ADDRESS, "minItems": 1},
        "cc": {"type": "array", "items": _ADDRESS},
        "bcc": {"type": "array", "items": _ADDRESS},
        "subject": {"type": "string"},
        "headers": _STRINGS,
        "substitutions": _STRINGS,
        "dynamic_template_data": {"type": "object"},
        "custom_args": _STRINGS,
        "send_at": {"type": "integer", "minimum": 0},
    },
}
# a SendGrid setting: `enable` is what is read (only mail_settings.sandbox_mode acts)
_SETTING: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"enable": {"type": "boolean"}},
}
_MAIL_SEND: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["personalizations", "from"],
    "properties": {
        "personalizations": {
            "type": "array",
            "items": _PERSONALIZATION,
            "minItems": 1,
            "maxItems": 1000,
        },
        "from": _ADDRESS,
        "reply_to": _ADDRESS,
        "subject": {"type": "string"},
        "content": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "value"],
                "properties": {
                    "type": {"type": "string", "enum": ["text/plain", "text/html"]},
                    "value": {"type": "string", "minLength": 1},
                },
            },
        },
        "attachments": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["content", "filename"],
                "properties": {
                    "content": {"type": "string", "contentEncoding": "base64"},
                    "filename": {"type": "string"},
                    "type": {"type": "string"},
                    "disposition": {"type": "string"},
                    "content_id": {"type": "string"},
                },
            },
        },
        "template_id": {"type": "string"},
        "headers": _STRINGS,
        "categories": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
        "custom_args": _STRINGS,
        "send_at": {"type": "integer", "minimum": 0},
        "batch_id": {"type": "string"},
        "mail_settings": {
            "type": "object",
            "properties": {"sandbox_mode": _SETTING},
            "additionalProperties": _SETTING,
        },
        "tracking_settings": {"type": "object", "additionalProperties": _SETTING},
    },
}

_IDEMPOTENCY: Final[dict[str, Any]] = {
    "name": "Idempotency-Key",
    "in": "header",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
_PRIORITY: Final[dict[str, Any]] = {
    "name": "X-Postwire-Priority",
    "in": "header",
    "schema": {"type": "string", "enum": ["critical", "high", "normal", "bulk"]},
}
_EMAIL: Final[dict[str, Any]] = {"type": "string", "minLength": 1, "maxLength": 320}
_JOB: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["pending", "done"]},
        "url": {"type": "string"},
    },
}
_WEBHOOK_EVENT: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["event", "email"],
    "properties": {
        "event": {"type": "string", "enum": sorted(TRACK_TYPES)},
        "email": {"type": "string", "format": "email"},
        "message_id": {"type": "string"},
        "sg_message_id": {"type": "string"},
        "timestamp": {"type": ["integer", "string"]},
        "url": {"type": "string"},
        "user_agent": {"type": "string"},
        "ip": {"type": "string"},
    },
}


_DOMAIN_ID: Final[dict[str, Any]] = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_NEW_DOMAIN: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["domain"],
    "properties": {
        "domain": {"type": "string", "minLength": 1, "maxLength": 253},
        "custom_dkim_selector": {"type": "string", "minLength": 1, "maxLength": 63},
        "dkim_algorithm": {"type": "string", "enum": ["rsa", "ed25519"]},
    },
}


_HOOK_FLAGS: Final[dict[str, Any]] = {
    name: {"type": "boolean"}
    for name in (
        "enabled", "processed", "dropped", "deferred", "delivered", "bounce", "open", "click",
        "unsubscribe", "spam_report", "group_unsubscribe", "group_resubscribe",
    )
}  # fmt: skip
_HOOK_URL: Final[dict[str, Any]] = {"type": "string", "maxLength": 2048, "pattern": "^https?://"}
_HOOK_SETTINGS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {**_HOOK_FLAGS, "url": _HOOK_URL},
}
_PUBLIC_KEY: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"public_key": {"type": "string"}},
}

_PAGE = (query_param("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),)
_SUPPRESSION_LISTS: Final = ("bounces", "blocks", "spam_reports", "invalid_emails", "unsubscribes")
_EPOCH: Final[dict[str, Any]] = {"type": "integer", "minimum": 0, "maximum": 253402300799}
_SG_ROW: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "created": {"type": "integer"},
        "email": {"type": "string"},
        "reason": {"type": "string"},
        "status": {"type": "string"},
    },
}
_SG_DELETE: Final[dict[str, Any]] = {
    "oneOf": [
        {
            "type": "object",
            "required": ["delete_all"],
            "properties": {"delete_all": {"const": True}},
            "additionalProperties": False,
        },
        {
            "type": "object",
            "required": ["emails"],
            "properties": {
                "emails": {
                    "type": "array",
                    "items": {"type": "string", "format": "email"},
                    "minItems": 1,
                    "maxItems": 1000,
                }
            },
            "additionalProperties": False,
        },
    ]
}


def _suppression_list(name: str) -> dict[str, dict[str, Any]]:
    shown = name.replace("_", " ")
    return {
        f"/v3/suppression/{name}": {
            "get": op(
                f"SendGrid's {shown}: the tenant's suppressions of that kind, newest first;"
                " scope read",
                {"200": answer(f"The {shown}", {"type": "array", "items": _SG_ROW})},
                parameters=(
                    query_param("start_time", _EPOCH),
                    query_param("end_time", _EPOCH),
                    query_param("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                    query_param("offset", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}),
                ),
            ),
            "delete": op(
                f'Lift {shown}: {{"delete_all": true}} or {{"emails": [...]}}; scope send',
                {"204": {"description": "Stored in Kafka"}},
                body=_SG_DELETE,
            ),
        },
        f"/v3/suppression/{name}/{{email}}": {
            "get": op(
                f"One address of the {shown}; scope read",
                {"200": answer("A list of one", {"type": "array", "items": _SG_ROW})},
                parameters=(path_param("email"),),
                not_found=True,
            ),
            "delete": op(
                f"Lift one address of the {shown}; scope send",
                {"204": {"description": "Stored in Kafka"}},
                parameters=(path_param("email"),),
                not_found=True,
            ),
        },
    }


SPEC: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {"title": "postwire API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v3/mail/send": {
            "post": op(
                "Send mail (SendGrid v3 body); scope send",
                {
                    "200": {
                        "description": "mail_settings.sandbox_mode: validated and recorded, "
                        "never delivered (empty body)",
                        "headers": {"X-Message-Id": {"schema": {"type": "string"}}},
                    },
                    "202": {
                        "description": "Stored in Kafka (acks=all); the pipeline owns it now",
                        "headers": {"X-Message-Id": {"schema": {"type": "string"}}},
                    },
                },
                body=_MAIL_SEND,
                parameters=(_IDEMPOTENCY, _PRIORITY),
            )
        },
        "/v1/verify": {
            "post": op(
                "Verify one address, waiting up to `timeout` s for the verdict; scope verify",
                {
                    "200": answer("The verdict (Reacher-like sections)"),
                    "202": answer("Not ready within the timeout; poll the url", _JOB),
                },
                body={
                    "type": "object",
                    "required": ["email"],
                    "properties": {
                        "email": _EMAIL,
                        "smtp_probe": {"type": ["boolean", "null"]},
                        "timeout": {"type": "number", "minimum": 0, "maximum": 30},
                    },
                },
                parameters=(_IDEMPOTENCY, _PRIORITY),
            )
        },
        "/v3/validations/email": {
            "post": op(
                "Validate one address in SendGrid's Email Validation shape, through the verify"
                " pipeline; scope verify",
                {
                    "200": answer("SendGrid's {result: {email, verdict, score, checks, ...}}"),
                    "202": answer("Not ready within POSTWIRE_API_VERIFY_WAIT; poll the url", _JOB),
                },
                body={
                    "type": "object",
                    "required": ["email"],
                    "properties": {"email": _EMAIL, "source": {"type": "string", "maxLength": 100}},
                },
                parameters=(_IDEMPOTENCY, _PRIORITY),
            )
        },
        "/v1/verify/batch": {
            "post": op(
                "Verify many addresses as a job; scope verify",
                {"202": answer("The job to poll", _JOB)},
                body={
                    "type": "object",
                    "required": ["emails"],
                    "properties": {
                        "emails": {"type": "array", "items": _EMAIL, "minItems": 1},
                        "smtp_probe": {"type": ["boolean", "null"]},
                    },
                },
                parameters=(_IDEMPOTENCY, _PRIORITY),
            )
        },
        "/v1/verify/batch/{job_id}": {
            "get": op(
                "A verification job's progress and a page of its results; scope verify",
                {"200": answer("Progress, counts per verdict, results")},
                parameters=(
                    path_param("job_id"),
                    query_param("offset", {"type": "integer", "minimum": 0}),
                    query_param("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
                ),
                not_found=True,
            )
        },
        "/v1/messages/{message_id}": {
            "get": op(
                "State and event timeline per recipient of a message; scope read",
                {"200": answer("The message")},
                parameters=(path_param("message_id"),),
                not_found=True,
            )
        },
        "/v1/events": {
            "get": op(
                "Events in landing order; pass next_cursor back as cursor; scope read",
                {"200": answer("A page of events")},
                parameters=(
                    *_PAGE,
                    query_param("cursor", {"type": "string", "pattern": "^[0-9]+$"}),
                    query_param("since", {"type": "string", "format": "date-time"}),
                    query_param("type", {"type": "string"}),
                ),
            )
        },
        "/v1/events/webhook": {
            "post": op(
                "Record opens, clicks, complaints, unsubscribes about the caller's own messages"
                " (at most 5 minutes ahead); scope send",
                {"202": answer("The accepted events stored in Kafka; refused ones in errors[]")},
                body={"type": "array", "items": _WEBHOOK_EVENT, "minItems": 1, "maxItems": 1000},
            )
        },
        "/v1/suppressions": {
            "get": op(
                "The tenant's suppressed addresses, in address order; scope read",
                {"200": answer("A page of suppressions")},
                parameters=(*_PAGE, query_param("after", {"type": "string"})),
            ),
            "post": op(
                "Suppress addresses; scope send",
                {"201": answer("Stored in Kafka")},
                body={
                    "type": "object",
                    "required": ["emails"],
                    "properties": {
                        "emails": {"type": "array", "items": _EMAIL, "minItems": 1},
                        "reason": {"type": "string"},
                    },
                },
            ),
        },
        "/v1/suppressions/{email}": {
            "get": op(
                "One suppressed address; scope read",
                {"200": answer("The suppression")},
                parameters=(path_param("email"),),
                not_found=True,
            ),
            "delete": op(
                "Lift a suppression; scope send",
                {"204": {"description": "Stored in Kafka"}},
                parameters=(path_param("email"),),
            ),
        },
        **{
            path: operations
            for name in _SUPPRESSION_LISTS
            for path, operations in _suppression_list(name).items()
        },
        "/v3/whitelabel/domains": {
            "post": op(
                "Add a sending domain with a new DKIM key; the answer lists the TXT records to"
                " publish (verification token, DKIM key); scope send",
                {"201": answer("The domain, unverified, and its DNS records")},
                body=_NEW_DOMAIN,
            ),
            "get": op(
                "The tenant's sending domains and their DNS records; scope send",
                {"200": answer("The domains", {"type": "array", "items": OBJECT})},
            ),
        },
        "/v3/whitelabel/domains/{id}": {
            "get": op(
                "One sending domain; scope send",
                {"200": answer("The domain and its DNS records")},
                parameters=(_DOMAIN_ID,),
                not_found=True,
            ),
            "delete": op(
                "Remove a sending domain and its DKIM keys; scope send",
                {"204": {"description": "Removed: its mail is refused and signed no more"}},
                parameters=(_DOMAIN_ID,),
                not_found=True,
            ),
        },
        "/v3/whitelabel/domains/{id}/validate": {
            "post": op(
                "Look the domain's TXT records up: the token verifies it, and says whether the"
                " DKIM key is published; scope send",
                {"200": answer("valid, and validation_results per record with the reason")},
                parameters=(_DOMAIN_ID,),
                not_found=True,
            )
        },
        "/v3/user/webhooks/event/settings": {
            "get": op(
                "The caller's event webhook: enabled, url and which events it is sent; scope send",
                {"200": answer("SendGrid's event webhook settings", _HOOK_SETTINGS)},
            ),
            "patch": op(
                "Change the event webhook (what is left out stays as it is); scope send",
                {"200": answer("The settings as they are now", _HOOK_SETTINGS)},
                body=_HOOK_SETTINGS,
            ),
        },
        "/v3/user/webhooks/event/settings/signed": {
            "get": op(
                "The public key posts are signed with (ECDSA P-256, base64 DER); empty when"
                " posts are not signed; scope send",
                {"200": answer("public_key", _PUBLIC_KEY)},
            ),
            "patch": op(
                "Sign the posts (a key is made the first time) or stop signing them; scope send",
                {"200": answer("public_key", _PUBLIC_KEY)},
                body={
                    "type": "object",
                    "required": ["enabled"],
                    "properties": {"enabled": {"type": "boolean"}},
                },
            ),
        },
        "/v3/user/webhooks/event/test": {
            "post": op(
                "Post SendGrid's test event to url (or the url set), signed as posts are;"
                " scope send",
                {"204": {"description": "The endpoint answered 2xx"}},
                body={"type": "object", "properties": {"url": _HOOK_URL}},
            )
        },
        **ASM_PATHS,
        **LINK_PATHS,
        "/healthz": {
            "get": {
                "summary": "Ready: Kafka producer, database pool, tenant directory, Kafka and"
                " PostgreSQL answering the background probes",
                "security": [],
                "responses": {
                    "200": answer('{"ok": true, "reasons": [], ...} per check'),
                    "503": answer('{"ok": false, "reasons": ["postgres unreachable: ..."], ...}'),
                },
            }
        },
        "/livez": {
            "get": {
                "summary": "Alive: the process answers and is not stopping, whatever its"
                " dependencies say",
                "security": [],
                "responses": {"200": answer("alive"), "503": answer("stopping")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of this process (postwire_http_*, ...)",
                "security": [],
                "responses": {"200": {"description": "Prometheus text format"}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": answer("OpenAPI 3.1")},
            }
        },
    },
}
