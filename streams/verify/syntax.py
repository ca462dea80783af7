"""Syntax and normalisation of one address with email-validator (IDN and SMTPUTF8 included)."""

from __future__ import annotations

from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

__all__ = ["SyntaxResult", "check_syntax", "split_domain"]


@dataclass(frozen=True)
class SyntaxResult:
    valid: bool
    normalized: str | None = None
    local_part: str | None = None
    domain: str | None = None
    ascii_domain: str | None = None
    error: str | None = None


def check_syntax(address: str) -> SyntaxResult:
    try:
        info = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        return SyntaxResult(valid=False, error=str(exc))
    return SyntaxResult(
        valid=True,
        normalized=info.normalized,
        local_part=info.local_part,
        domain=info.domain,
        ascii_domain=info.ascii_domain.lower(),
    )


def split_domain(address: str) -> str:
    """Best-effort lower-cased domain for partitioning, even for an invalid address."""
    return address.rpartition("@")[2].strip().lower()
