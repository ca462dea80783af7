"""The shaping file (TOML): the shipped rules for the large providers, merged with an operator's.

An operator's file names rules: a rule named like a shipped one changes the fields it gives and
keeps the others (``duration = "15m"`` is enough to shorten Yahoo's suspension), ``enabled =
false`` turns it off, and a new name adds a rule after the shipped ones. ``defaults = false`` at
the top drops every shipped rule. The merged rules are validated with pydantic; a bad rule is a
``ConfigError`` naming the file, the rule and the field, raised when delivery starts.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.deliver.shaping import Rule
from streams.errors import ConfigError

__all__ = ["DEFAULTS_NAME", "default_text", "load_rules", "parse_duration", "rules_from"]

DEFAULTS_NAME = "postwire's default shaping rules"
_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*?)s?\s*$", re.I)
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string such as ``90s``, ``30m``, ``2 hours``.

    ValueError for every refusal, a wrong type included: pydantic reports only ValueErrors as
    validation errors of the field."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30m'")  # noqa: TRY004
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        unit = match.group(2).lower() if match else ""
        # "500ms" would otherwise read as 500 minutes
        if match is None or (unit and unit not in _UNITS) or value.strip().lower().endswith("ms"):
            raise ValueError(f"{value!r} is not a duration (say 90s, 30m, 2h or 1d)")
        seconds = float(match.group(1)) * _UNITS.get(unit, 1.0)
    else:
        raise ValueError("a duration is a number of seconds or a string like '30m'")  # noqa: TRY004
    if not seconds > 0:
        raise ValueError("a duration must be longer than 0")
    return seconds


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, int | str) and not isinstance(value, bool) else value


class _RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # a metric label: a short fixed name, never data
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    enabled: bool = True
    code: list[int] = Field(default_factory=list)
    enhanced: list[str] = Field(default_factory=list)
    text: str | None = None
    mx_suffixes: list[str] = Field(default_factory=list)
    action: Literal["suspend", "slow"] | None = None
    duration: float | None = None
    factor: float | None = Field(default=None, gt=0, lt=1)
    count: int = Field(default=1, ge=1, le=100_000)
    window: float = 60.0

    @field_validator("code", "enhanced", "mx_suffixes", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _listed(value)

    @field_validator("code")
    @classmethod
    def _codes(cls, value: list[int]) -> list[int]:
        bad = [c for c in value if not 400 <= c <= 599]
        if bad:
            raise ValueError(f"reply codes are 400-599 (a rule reacts to refusals), not {bad}")
        return value

    @field_validator("enhanced")
    @classmethod
    def _enhanced(cls, value: list[str]) -> list[str]:
        bad = [e for e in value if not _ENHANCED.match(e)]
        if bad:
            raise ValueError(f"enhanced status codes look like 4.7.0, not {bad}")
        return [".".join(str(int(part)) for part in e.split(".")) for e in value]

    @field_validator("text")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value, re.I)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from exc
        return value

    @field_validator("mx_suffixes")
    @classmethod
    def _suffixes(cls, value: list[str]) -> list[str]:
        cleaned = [s.strip().strip(".").lower() for s in value]
        if any(not s or " " in s for s in cleaned):
            raise ValueError(f"MX suffixes are host names like yahoodns.net, not {value}")
        return cleaned

    @field_validator("duration", "window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _complete(self) -> _RuleModel:
        if not self.enabled:
            return self
        if not (self.code or self.enhanced or self.text):
            raise ValueError("a rule needs at least one of code, enhanced, text")
        if self.action is None:
            raise ValueError("action is missing (suspend or slow)")
        if self.duration is None:
            raise ValueError("duration is missing")
        if self.action == "slow" and self.factor is None:
            raise ValueError("a slow rule needs a factor between 0 and 1")
        if self.action == "suspend" and self.factor is not None:
            raise ValueError("factor is for slow rules; a suspension stops the site")
        return self

    def rule(self) -> Rule:
        assert self.action is not None
        assert self.duration is not None
        return Rule(
            name=self.name,
            action=self.action,
            duration=self.duration,
            codes=frozenset(self.code),
            enhanced=frozenset(self.enhanced),
            pattern=re.compile(self.text, re.I) if self.text is not None else None,
            mx_suffixes=tuple(self.mx_suffixes),
            factor=self.factor if self.factor is not None else 1.0,
            count=self.count,
            window=self.window,
        )


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: bool = True
    rule: list[dict[str, Any]] = Field(default_factory=list)


def default_text() -> str:
    return resources.files("streams.deliver").joinpath("data", "shaping.toml").read_text("utf-8")


def _parse(text: str, source: str) -> _FileModel:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"shaping file {source}: not TOML: {exc}") from exc
    try:
        parsed = _FileModel.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"shaping file {source}: {_first_error(exc)}") from exc
    names: set[str] = set()
    for index, raw in enumerate(parsed.rule, 1):
        name = raw.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"shaping file {source}: rule #{index}: field name is missing")
        if name in names:
            raise ConfigError(f"shaping file {source}: rule {name!r} is given twice")
        names.add(name)
    return parsed


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "the file"
    return f"field {where}: {error['msg']}"


def _validate(raw: Mapping[str, Any], source: str) -> _RuleModel:
    name = raw.get("name")
    try:
        return _RuleModel.model_validate(dict(raw))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        what = f"field {field}" if field else "the rule"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"shaping file {source}: rule {name!r}: {what}: {message}") from exc


def rules_from(operator: str | None, source: str = "(operator)") -> tuple[Rule, ...]:
    """The shipped rules merged with the operator's file text ``operator`` (None: none)."""
    defaults = _parse(default_text(), DEFAULTS_NAME)
    theirs = _parse(operator, source) if operator is not None else _FileModel()
    merged: dict[str, tuple[dict[str, Any], str]] = {}
    if theirs.defaults:
        merged = {raw["name"]: (raw, DEFAULTS_NAME) for raw in defaults.rule}
    for raw in theirs.rule:
        base, _ = merged.get(raw["name"], ({}, source))
        merged[raw["name"]] = ({**base, **raw}, source)
    models = [_validate(raw, where) for raw, where in merged.values()]
    return tuple(model.rule() for model in models if model.enabled)


def load_rules(path: Path | None) -> tuple[Rule, ...]:
    """The rules delivery runs with: the shipped ones and those of the file at ``path``."""
    if path is None:
        return rules_from(None)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the shaping file {path}: {exc}") from exc
    return rules_from(text, str(path))
