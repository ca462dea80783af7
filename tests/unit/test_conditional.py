"""ETags, If-None-Match and Accept-Encoding negotiation (pure)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from streams.api.conditional import accepts_gzip, etag_of, none_match, not_modified, version_tag


def test_the_tag_follows_the_content() -> None:
    tag = etag_of(b'{"a":1}')
    assert tag.startswith('"')
    assert tag.endswith('"')
    assert len(tag) > 10
    assert etag_of(b'{"a":1}') == tag
    assert etag_of(b'{"a":2}') != tag


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ("*", True),
        ('"other"', False),
        ('"other", TAG', True),
        ("W/TAG", True),  # If-None-Match compares weakly
        ("GZTAG", True),  # the gzip representation of the same content
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    tag = etag_of(b"body")
    gz = tag[:-1] + '.gz"'
    if header:
        header = header.replace("GZTAG", gz).replace("TAG", tag)
    assert none_match(header, tag) is matches
    assert none_match(header, gz) is matches


@pytest.mark.parametrize(
    ("header", "gzip"),
    [
        (None, False),
        ("identity", False),
        ("gzip", True),
        ("GZIP", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("*", True),
        ("*;q=0", False),
        ("br, *;q=0.1", True),
        ("gzip;q=0, *", False),  # named refusal wins over the wildcard
        ("gzip;q=x", False),
    ],
)
def test_accept_encoding(header: str | None, gzip: bool) -> None:
    assert accepts_gzip(header) is gzip


def test_a_version_tag_answers_304_before_the_answer_is_built() -> None:
    tag = version_tag("job-1", "2026-12-02T10:00:00Z", {"safe": 3}, 0, 100)
    assert tag == version_tag("job-1", "2026-12-02T10:00:00Z", {"safe": 3}, 0, 100)
    assert tag != version_tag("job-1", "2026-12-02T10:00:01Z", {"safe": 3}, 0, 100)
    asked = make_mocked_request("GET", "/", headers={"If-None-Match": tag})
    answer = not_modified(asked, tag)
    assert answer is not None
    assert answer.status == 304
    assert answer.headers["Cache-Control"] == "private, no-cache"
    fresh = make_mocked_request("GET", "/", headers={"If-None-Match": '"old"'})
    assert not_modified(fresh, tag) is None
