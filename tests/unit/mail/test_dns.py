from __future__ import annotations

from streams.mail.dns import MxAnswer, classify_mx


def test_records_sorted_by_preference_and_deduplicated() -> None:
    answer = classify_mx(
        [(20, "b.mx.example."), (10, "A.mx.example"), (30, "a.mx.example")], ttl=60
    )
    assert answer.status == "ok"
    assert answer.hosts == ("a.mx.example", "b.mx.example")
    assert answer.accepts_mail is True


def test_null_mx() -> None:
    answer = classify_mx([(0, "")])
    assert answer.status == "null_mx"
    assert answer.accepts_mail is False
    assert classify_mx([(0, ".")]).status == "null_mx"


def test_no_records() -> None:
    assert classify_mx([]).status == "no_mail"


def test_unknown_states_do_not_claim_anything() -> None:
    assert MxAnswer("timeout").accepts_mail is None
    assert MxAnswer("error").accepts_mail is None


def test_json_round_trip() -> None:
    answer = MxAnswer("ok", ("a", "b"), 300, None)
    assert MxAnswer.from_json(answer.to_json()) == answer
