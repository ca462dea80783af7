"""Checks of JSON request bodies that collect every problem, as SendGrid reports them all at once
(``errors[]`` of field + message)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from streams.contract.records import Address
from streams.errors import IngressValidationError, RenderError, RequestLimitError
from streams.mail.headers import check_line
from streams.mail.limits import address_problem

__all__ = ["Check"]


class Check:
    """Collects every problem of a body, as SendGrid reports them all at once."""

    def __init__(self) -> None:
        self.errors: list[tuple[str | None, str]] = []

    def fail(self, field: str | None, message: str) -> None:
        self.errors.append((field, message))

    def done(self) -> None:
        """Raise IngressValidationError with every problem found, if any."""
        if self.errors:
            raise IngressValidationError(self.errors)

    def obj(self, value: Any, field: str, *, required: bool = False) -> dict[str, Any] | None:
        if value is None:
            if required:
                self.fail(field, f"The {field} parameter is required.")
            return None
        if not isinstance(value, dict):
            self.fail(field, f"The {field} parameter must be an object.")
            return None
        return value

    def items(self, value: Any, field: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(field, f"The {field} parameter must be an array.")
            return []
        return value

    def text(self, value: Any, field: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(field, f"The {field} parameter must be a string.")
            return None
        return value

    def strings(self, value: Any, field: str) -> dict[str, str]:
        """A map of strings (headers, custom args, substitutions)."""
        found = self.obj(value, field) or {}
        out: dict[str, str] = {}
        for key, item in found.items():
            if isinstance(item, str):
                out[str(key)] = item
            elif isinstance(item, (int, float, bool)):
                out[str(key)] = orjson.dumps(item).decode()
            else:
                self.fail(f"{field}.{key}", "Values must be strings.")
        return out

    def rule(self, rule: Callable[..., None], *args: Any, at: str | None = None) -> bool:
        """Run one of the mail rules (:mod:`streams.mail.headers`, :mod:`streams.mail.limits`);
        what it raises becomes a problem of the field it names (under ``at``, when given)."""
        try:
            rule(*args)
        except RenderError as exc:
            self.fail(exc.field if at is None else f"{at}.{exc.field}", exc.detail)
            return False
        except RequestLimitError as exc:
            self.fail(at, str(exc))
            return False
        return True

    def address(self, value: Any, field: str, *, required: bool = False) -> Address | None:
        """A mailbox we can send as or to: a valid address (email-validator, as the gate
        checks it) and a display name without control characters."""
        found = self.obj(value, field, required=required)
        if found is None:
            return None
        email = self.text(found.get("email"), f"{field}.email")
        if not email:
            self.fail(f"{field}.email", "Does not contain a valid address.")
            return None
        problem = address_problem(email)
        if problem is not None:
            self.fail(f"{field}.email", f"Does not contain a valid address: {problem}")
            return None
        name = self.text(found.get("name"), f"{field}.name")
        if name is not None and not self.rule(check_line, f"{field}.name", name):
            return None
        return {"email": email, "name": name}

    def send_at(self, value: Any, field: str) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            self.fail(field, "send_at must be a UNIX timestamp in seconds.")
            return None
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            self.fail(field, "send_at is out of range.")
            return None
