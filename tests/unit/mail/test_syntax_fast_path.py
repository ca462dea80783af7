"""The plain-ASCII fast path answers exactly as email-validator does, or leaves it the question."""

from __future__ import annotations

import random
import string

from email_validator import EmailNotValidError, validate_email

from streams.mail.syntax import _plain, check_syntax

ALPHABET = string.ascii_letters + string.digits + ".-_+!#$%&'*/=?^`{|}~@\"() ,;:<>[]\\"


def _reference(address: str) -> tuple[str, str, str, str] | None:
    try:
        info = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        return None
    return info.normalized, info.local_part, info.ascii_domain.lower(), info.domain


def _random_address(rng: random.Random) -> str:
    local = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))
    labels = [
        "".join(
            rng.choice(string.ascii_letters + string.digits + "-") for _ in range(rng.randint(0, 8))
        )
        for _ in range(rng.randint(1, 4))
    ]
    tld = rng.choice(
        ["com", "example", "test", "io", "c", "123", "x1", "ORG", "localhost", "onion"]
    )
    return f"{local}@{'.'.join([*labels, tld])}"


def test_the_fast_path_agrees_with_email_validator_on_generated_addresses() -> None:
    rng = random.Random(20261201)
    taken = 0
    for _ in range(20_000):
        address = _random_address(rng)
        fast = _plain(address)
        if fast is None:
            continue
        taken += 1
        expected = (fast.normalized, fast.local_part, fast.ascii_domain, fast.domain)
        assert _reference(address) == expected, address
    assert taken > 1000  # the generator does reach the fast path


def test_edge_cases_go_to_email_validator_and_get_its_answer() -> None:
    cases = [
        "a@b.test",  # special-use
        "x@xn--bcher-kva.example",  # punycode label
        "x@ab--cd.example",  # reserved label form
        "a" * 65 + "@example.com",  # local part too long
        "user@example.123",  # numeric TLD
        "user@[127.0.0.1]",  # address literal
        '"quoted"@example.com',
        "ünïcode@bücher.example",
        "a..b@example.com",
        ".a@example.com",
        "a@-example.com",
        "a@example",  # no dot
        "Bob@Example.COM",
    ]
    for address in cases:
        result = check_syntax(address)
        expected = _reference(address)
        assert (result.normalized, result.local_part, result.ascii_domain, result.domain) == (
            expected if expected is not None else (None, None, None, None)
        ), address
        assert result.valid is (expected is not None)
