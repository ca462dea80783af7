"""The ``/openapi.json`` paths of SendGrid's suppression groups (``/v3/asm/...``) and of the
links in the mail itself (``/u/<token>``, ``/t/o/<token>``, ``/t/c/<token>``), which take no
API key."""

from __future__ import annotations

from typing import Any, Final

from streams.api.openapi_parts import answer, op, path_param
from streams.mail.unsubscribe import MAX_GROUP

__all__ = ["ASM_PATHS", "LINK_PATHS"]

_EMAILS: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["recipient_emails"],
    "properties": {
        "recipient_emails": {
            "type": "array",
            "items": {"type": "string", "format": "email"},
            "minItems": 1,
            "maxItems": 1000,
        }
    },
}
_GROUP: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "is_default": {"type": "boolean"},
        "unsubscribes": {"type": "integer"},
        "last_email_sent_at": {"type": ["integer", "null"]},
    },
}
_GROUP_BODY: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 30},
        "description": {"type": "string", "maxLength": 100},
        "is_default": {"type": "boolean"},
    },
}
_GROUP_ID: Final[dict[str, Any]] = {
    "name": "group_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_GROUP},
}
_STORED: Final[dict[str, Any]] = {"204": {"description": "Stored in Kafka"}}
_ADDRESSES: Final[dict[str, Any]] = {"type": "array", "items": {"type": "string"}}
_MEMBER: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "email": {"type": "string"},
        "group_id": {"type": "integer"},
        "group_name": {"type": "string"},
        "created_at": {"type": "integer"},
    },
}

ASM_PATHS: Final[dict[str, dict[str, Any]]] = {
    "/v3/asm/groups": {
        "post": op(
            "Make a suppression group (at most 200; one default); scope send",
            {"201": answer("The group", _GROUP)},
            body={**_GROUP_BODY, "required": ["name"]},
        ),
        "get": op(
            "The caller's suppression groups (those of the ids given); scope read",
            {"200": answer("The groups", {"type": "array", "items": _GROUP})},
            parameters=(
                {
                    "name": "id",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_GROUP},
                },
            ),
        ),
    },
    "/v3/asm/groups/{group_id}": {
        "get": op(
            "One suppression group; scope read",
            {"200": answer("The group", _GROUP)},
            parameters=(_GROUP_ID,),
            not_found=True,
        ),
        "patch": op(
            "Change the name, description or default (SendGrid answers 201); scope send",
            {"201": answer("The group as it is now", _GROUP)},
            body=_GROUP_BODY,
            parameters=(_GROUP_ID,),
            not_found=True,
        ),
        "delete": op(
            "Delete the group and forget who left it; scope send",
            {"204": {"description": "Deleted"}},
            parameters=(_GROUP_ID,),
            not_found=True,
        ),
    },
    "/v3/asm/groups/{group_id}/suppressions": {
        "post": op(
            "The addresses leave the group (its mail is not sent to them); scope send",
            {"201": answer("recipient_emails", _EMAILS)},
            body=_EMAILS,
            parameters=(_GROUP_ID,),
            not_found=True,
        ),
        "get": op(
            "Who left the group; scope read",
            {"200": answer("The addresses", _ADDRESSES)},
            parameters=(_GROUP_ID,),
            not_found=True,
        ),
    },
    "/v3/asm/groups/{group_id}/suppressions/search": {
        "post": op(
            "Which of the addresses left the group; scope read",
            {"200": answer("The addresses that did", _ADDRESSES)},
            body=_EMAILS,
            parameters=(_GROUP_ID,),
            not_found=True,
        )
    },
    "/v3/asm/groups/{group_id}/suppressions/{email}": {
        "delete": op(
            "The address is back in the group; scope send",
            _STORED,
            parameters=(_GROUP_ID, path_param("email")),
            not_found=True,
        )
    },
    "/v3/asm/suppressions": {
        "get": op(
            "Everyone who left any group, newest first; scope read",
            {"200": answer("The members", {"type": "array", "items": _MEMBER})},
        )
    },
    "/v3/asm/suppressions/global": {
        "post": op(
            "Unsubscribe the addresses from all mail; scope send",
            {"201": answer("recipient_emails", _EMAILS)},
            body=_EMAILS,
        )
    },
    "/v3/asm/suppressions/global/{email}": {
        "get": op(
            "The address when it is a global unsubscribe, {} when not; scope read",
            {"200": answer("recipient_email or nothing")},
            parameters=(path_param("email"),),
        ),
        "delete": op(
            "Lift the address's global unsubscribe (a bounce stays); scope send",
            _STORED,
            parameters=(path_param("email"),),
        ),
    },
    "/v3/asm/suppressions/{email}": {
        "get": op(
            "Every group, each with whether the address left it; scope read",
            {"200": answer("suppressions: [{id, name, description, is_default, suppressed}]")},
            parameters=(path_param("email"),),
        )
    },
}


def _link(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [],
        "parameters": [path_param("token")],
        "responses": {**responses, "404": {"description": "Not a token of this server"}},
    }


_PAGE: Final[dict[str, Any]] = {"description": "An HTML page", "content": {"text/html": {}}}

LINK_PATHS: Final[dict[str, dict[str, Any]]] = {
    "/u/{token}": {
        "get": _link("The unsubscribe confirmation page (never unsubscribes)", {"200": _PAGE}),
        "post": {
            **_link(
                "One-click unsubscribe (RFC 8058): the body List-Unsubscribe=One-Click",
                {"200": _PAGE, "400": {"description": "Not a one-click body"}},
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "properties": {"List-Unsubscribe": {"const": "One-Click"}},
                        }
                    }
                },
            },
        },
    },
    "/t/o/{token}": {
        "get": _link("The open-tracking pixel: records an open", {"200": {"description": "A GIF"}})
    },
    "/t/c/{token}": {
        "get": _link(
            "A tracked link: records a click and redirects to the original URL",
            {"302": {"description": "To the original URL"}},
        )
    },
}
