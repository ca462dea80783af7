"""The OpenAPI 3.1 description served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["SPEC"]

_ADDRESS: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["email"],
    "properties": {"email": {"type": "string", "format": "email"}, "name": {"type": "string"}},
}
_STRINGS: Final[dict[str, Any]] = {"type": "object", "additionalProperties": {"type": "string"}}
_ERRORS: Final[dict[str, Any]] = {
    "description": "SendGrid's error shape",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "field": {"type": ["string", "null"]},
                                "message": {"type": "string"},
                                "help": {"type": ["string", "null"]},
                            },
                        },
                    }
                },
            }
        }
    },
}
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
    },
}

SPEC: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {"title": "postwire ingress", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v3/mail/send": {
            "post": {
                "summary": "Send mail (SendGrid v3 body)",
                "parameters": [
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                    {
                        "name": "X-Postwire-Priority",
                        "in": "header",
                        "schema": {
                            "type": "string",
                            "enum": ["critical", "high", "normal", "bulk"],
                        },
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _MAIL_SEND}},
                },
                "responses": {
                    "202": {
                        "description": "Stored in Kafka (acks=all); the pipeline owns it now",
                        "headers": {"X-Message-Id": {"schema": {"type": "string"}}},
                    },
                    "400": _ERRORS,
                    "401": _ERRORS,
                    "403": _ERRORS,
                    "413": _ERRORS,
                    "429": {**_ERRORS, "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                    "503": _ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Ready: Kafka producer started and tenant directory loaded",
                "security": [],
                "responses": {"200": {"description": "ready"}, "503": {"description": "not yet"}},
            }
        },
    },
}
