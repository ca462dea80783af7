from __future__ import annotations

from pathlib import Path

import pytest

from streams.mail.syntax import check_syntax, split_domain
from streams.verify.lists import load_lists, osa_distance

LISTS = load_lists()


@pytest.mark.parametrize(
    ("domain", "suggestion"),
    [
        ("gmial.com", "gmail.com"),
        ("gmail.con", "gmail.com"),
        ("hotmial.com", "hotmail.com"),
        ("yaho.com", "yahoo.com"),
        ("outlok.com", "outlook.com"),
        ("gmail.com", None),
        ("mail.com", None),  # a real provider one edit away from gmail.com
        ("acme-corp.example", None),
    ],
)
def test_typo_suggestions(domain: str, suggestion: str | None) -> None:
    assert LISTS.suggest(domain) == suggestion


def test_osa_counts_a_transposition_as_one_edit() -> None:
    assert osa_distance("gmial", "gmail", 2) == 1
    assert osa_distance("abc", "abc", 2) == 0
    assert osa_distance("abcdef", "uvwxyz", 2) == 3  # gives up past the limit


def test_flags() -> None:
    flags = LISTS.flags("Info+news", "gmail.com")
    assert flags.is_role_account
    assert flags.is_free_provider
    assert not flags.is_disposable
    assert LISTS.flags("x", "mailinator.com").is_disposable
    assert LISTS.flags("x", "eu.mailinator.com").is_disposable  # subdomains count


def test_operators_can_extend_the_lists(tmp_path: Path) -> None:
    (tmp_path / "disposable.txt").write_text("# ours\nthrowaway.example\n")
    (tmp_path / "role_accounts.txt").write_text("ceo\n")
    lists = load_lists(tmp_path)
    assert lists.flags("ceo", "throwaway.example").is_disposable
    assert lists.flags("ceo", "throwaway.example").is_role_account


def test_syntax_normalises_and_handles_idn() -> None:
    r = check_syntax("Alice@Bücher.Example")
    assert r.valid
    assert r.normalized == "Alice@bücher.example"
    assert r.ascii_domain == "xn--bcher-kva.example"
    bad = check_syntax("alice@@example.org")
    assert not bad.valid
    assert bad.error is not None
    assert "@" in bad.error


def test_split_domain_is_best_effort() -> None:
    assert split_domain("A@B.Example ") == "b.example"
    assert split_domain("no-at-sign") == "no-at-sign"
