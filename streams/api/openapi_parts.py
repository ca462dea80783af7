"""The parts every OpenAPI path of ``/openapi.json`` is built from: SendGrid's error answer and an
operation with the answers every guarded route can give."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["ERRORS", "OBJECT", "answer", "op", "path_param", "query_param"]

OBJECT: Final[dict[str, Any]] = {"type": "object"}
ERRORS: Final[dict[str, Any]] = {
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


def query_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema}


def path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def op(
    summary: str,
    ok: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    parameters: tuple[dict[str, Any], ...] = (),
    not_found: bool = False,
) -> dict[str, Any]:
    """An operation with the answers every guarded route can give."""
    responses: dict[str, Any] = {
        **ok,
        "400": ERRORS,
        "401": ERRORS,
        "403": ERRORS,
        "429": {**ERRORS, "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
        "503": ERRORS,
    }
    if body is not None:
        responses["413"] = ERRORS
    if not_found:
        responses["404"] = ERRORS
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": list(parameters),
        "responses": responses,
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def answer(description: str, schema: dict[str, Any] = OBJECT) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
