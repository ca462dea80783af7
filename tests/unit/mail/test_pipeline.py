"""The pure SMTP transaction (streams/mail/pipeline.py): what goes on the wire and when, and
what each reply means for each recipient, with and without RFC 2920 pipelining."""

from __future__ import annotations

import pytest

from streams.mail.pipeline import (
    INLINE_CHUNK_BYTES,
    MAX_REPLY_BYTES,
    Exchange,
    Reply,
    ReplyParser,
    bdat,
)
from streams.mail.replies import Category, Disposition, Stage, TransportErrorKind

MAIL = b"MAIL FROM:<s@a.test>\r\n"
RCPTS = [b"RCPT TO:<r%d@b.test>\r\n" % i for i in range(3)]
PAYLOAD = b"Subject: x\r\n\r\nbody\r\n.\r\n"
OK = Reply(250, "2.0.0 OK")
GO = Reply(354, "go ahead")


def run(exchange: Exchange, replies: list[Reply]) -> list[bytes]:
    """Feed ``replies`` in order; returns every write the exchange asked for."""
    writes = [exchange.start()]
    for reply in replies:
        assert not exchange.done
        more = exchange.on_reply(reply)
        if more:
            writes.append(more)
    assert exchange.done
    return writes


# --- the reply parser -------------------------------------------------------------------------


def test_parser_splits_replies_however_the_bytes_are_cut() -> None:
    wire = b"250 OK\r\n250-first\r\n250-second\r\n250 2.1.5 last\r\n354 go\r\n"
    whole = ReplyParser().feed(wire)
    assert whole == [
        Reply(250, "OK"),
        Reply(250, "first\nsecond\n2.1.5 last"),
        Reply(354, "go"),
    ]
    parser = ReplyParser()
    bytewise = [reply for i in range(len(wire)) for reply in parser.feed(wire[i : i + 1])]
    assert bytewise == whole
    assert not parser.pending


def test_parser_flags_what_is_not_smtp() -> None:
    parser = ReplyParser()
    [ok, bad] = parser.feed(b"250 OK\r\nHTTP/1.1 400 Bad Request\r\n250 ignored\r\n")
    assert ok == Reply(250, "OK")
    assert bad.code == 0
    assert "malformed" in bad.text
    assert parser.broken
    assert parser.feed(b"250 more\r\n") == []


def test_parser_refuses_an_endless_reply() -> None:
    parser = ReplyParser()
    replies = parser.feed(b"250-" + b"x" * MAX_REPLY_BYTES)
    assert [reply.code for reply in replies] == [0]
    assert parser.broken


def test_parser_keeps_a_partial_reply_pending() -> None:
    parser = ReplyParser()
    assert parser.feed(b"250-one\r\n25") == []
    assert parser.pending
    assert parser.feed(b"0 two\r\n") == [Reply(250, "one\ntwo")]


# --- pipelined --------------------------------------------------------------------------------


def test_pipelined_sends_the_envelope_in_one_write_and_the_message_in_another() -> None:
    exchange = Exchange(MAIL, RCPTS, PAYLOAD, pipelining=True)
    writes = run(exchange, [OK, OK, OK, OK, GO, Reply(250, "2.0.0 queued")])
    assert writes == [MAIL + b"".join(RCPTS) + b"DATA\r\n", PAYLOAD]
    result = exchange.result()
    assert [o.disposition for o in result.outcomes] == [Disposition.DELIVERED] * 3
    assert all(o.stage is Stage.AFTER_DATA for o in result.outcomes)
    assert result.reusable
    assert not result.needs_reset


def test_one_refused_rcpt_of_many_is_about_that_recipient_only() -> None:
    exchange = Exchange(MAIL, RCPTS, PAYLOAD, pipelining=True)
    unknown = Reply(550, "5.1.1 <r1@b.test>: user unknown")
    run(exchange, [OK, OK, unknown, OK, GO, Reply(250, "queued")])
    first, second, third = exchange.result().outcomes
    assert first.disposition is third.disposition is Disposition.DELIVERED
    assert second.disposition is Disposition.BOUNCED
    assert (second.category, second.stage, second.enhanced) == (
        Category.USER_UNKNOWN,
        Stage.RCPT,
        "5.1.1",
    )
    assert second.is_hard


def test_a_refused_mail_is_about_everyone_and_the_503s_after_it_say_nothing() -> None:
    exchange = Exchange(MAIL, RCPTS, PAYLOAD, pipelining=True)
    refused = Reply(553, "5.7.1 sender address rejected: not owned by you")
    no = Reply(503, "5.5.1 need MAIL")
    writes = run(exchange, [refused, no, no, no, no])
    assert len(writes) == 1  # nothing after the envelope: no content, no lone "."
    result = exchange.result()
    assert {o.category for o in result.outcomes} == {Category.SENDER_REJECTED}
    assert {o.stage for o in result.outcomes} == {Stage.MAIL}
    assert result.reusable
    assert result.needs_reset


def test_all_rcpts_refused_and_data_refused_sends_no_content() -> None:
    exchange = Exchange(MAIL, RCPTS[:2], PAYLOAD, pipelining=True)
    deferred = Reply(451, "4.3.0 try again")
    writes = run(exchange, [OK, deferred, deferred, Reply(554, "5.5.1 no valid recipients")])
    assert len(writes) == 1
    result = exchange.result()
    assert [(o.disposition, o.stage) for o in result.outcomes] == [
        (Disposition.DEFERRED, Stage.RCPT)
    ] * 2
    assert result.needs_reset


def test_all_rcpts_refused_but_data_accepted_ends_the_data_with_a_lone_dot() -> None:
    # RFC 2920 3.1: a server that answers 354 with no valid recipient gets "." and no content
    exchange = Exchange(MAIL, RCPTS[:1], PAYLOAD, pipelining=True)
    refused = Reply(550, "5.1.1 user unknown")
    writes = run(exchange, [OK, refused, GO, Reply(554, "5.5.1 no valid recipients")])
    assert writes[1:] == [b".\r\n"]
    [outcome] = exchange.result().outcomes
    assert (outcome.disposition, outcome.stage) == (Disposition.BOUNCED, Stage.RCPT)
    assert not exchange.result().needs_reset  # the "." ended the transaction
    assert exchange.result().reusable


def test_data_refused_is_the_verdict_for_the_accepted_recipients() -> None:
    exchange = Exchange(MAIL, RCPTS[:2], PAYLOAD, pipelining=True)
    refused = Reply(550, "5.1.1 user unknown")
    run(exchange, [OK, OK, refused, Reply(452, "4.3.1 out of storage")])
    first, second = exchange.result().outcomes
    assert (first.disposition, first.stage) == (Disposition.DEFERRED, Stage.DATA)
    assert (second.disposition, second.stage) == (Disposition.BOUNCED, Stage.RCPT)


def test_final_reply_bounce_applies_to_the_accepted_only() -> None:
    exchange = Exchange(MAIL, RCPTS[:2], PAYLOAD, pipelining=True)
    run(exchange, [OK, OK, Reply(452, "4.5.3 too many recipients"), GO, Reply(554, "5.7.1 spam")])
    first, second = exchange.result().outcomes
    assert (first.disposition, first.stage) == (Disposition.BOUNCED, Stage.AFTER_DATA)
    assert (second.disposition, second.category) == (Disposition.DEFERRED, Category.RATE_LIMITED)


def test_connection_lost_mid_pipeline_defers_the_unanswered_and_kills_the_session() -> None:
    exchange = Exchange(MAIL, RCPTS, PAYLOAD, pipelining=True)
    exchange.start()
    exchange.on_reply(OK)
    exchange.on_reply(Reply(550, "5.1.1 user unknown"))
    assert exchange.awaiting is Stage.RCPT
    exchange.lost(TransportErrorKind.RESET, "connection reset")
    assert exchange.done
    result = exchange.result()
    refused, lost, lost_too = result.outcomes
    assert refused.disposition is Disposition.BOUNCED
    assert lost == lost_too
    assert (lost.disposition, lost.category, lost.stage) == (
        Disposition.DEFERRED,
        Category.CONNECTION,
        Stage.RCPT,
    )
    assert lost.destination_failure
    assert not result.reusable
    assert not result.needs_reset


def test_421_ends_the_exchange_at_once() -> None:
    # the server is closing: the replies still owed will never come, so none is awaited
    exchange = Exchange(MAIL, RCPTS, PAYLOAD, pipelining=True)
    exchange.start()
    exchange.on_reply(OK)
    exchange.on_reply(Reply(421, "4.7.0 try again later, closing"))
    assert exchange.done
    result = exchange.result()
    assert {o.code for o in result.outcomes} == {421}
    assert {o.disposition for o in result.outcomes} == {Disposition.DEFERRED}
    assert not result.reusable


def test_a_lost_final_reply_is_after_the_data() -> None:
    exchange = Exchange(MAIL, RCPTS[:1], PAYLOAD, pipelining=True)
    exchange.start()
    for reply in (OK, OK):
        exchange.on_reply(reply)
    assert exchange.on_reply(GO) == PAYLOAD
    assert exchange.awaiting is Stage.AFTER_DATA
    exchange.lost(TransportErrorKind.TIMEOUT, "no reply")
    [outcome] = exchange.result().outcomes
    assert (outcome.category, outcome.stage) == (Category.TIMEOUT, Stage.AFTER_DATA)


def test_a_malformed_reply_breaks_the_session() -> None:
    exchange = Exchange(MAIL, RCPTS[:1], PAYLOAD, pipelining=True)
    exchange.start()
    exchange.on_reply(OK)
    exchange.on_reply(Reply(0, "malformed reply line"))
    assert exchange.done
    result = exchange.result()
    [outcome] = result.outcomes
    assert (outcome.disposition, outcome.category) == (Disposition.DEFERRED, Category.PROTOCOL)
    assert not result.reusable


# --- CHUNKING (RFC 3030 BDAT) ------------------------------------------------------------------


def test_bdat_sends_the_message_as_it_is() -> None:
    assert bdat(b"a\r\n.b\r\n") == b"BDAT 7 LAST\r\na\r\n.b\r\n"  # no dot-stuffing
    assert bdat(b"x") == b"BDAT 3 LAST\r\nx\r\n"


def test_pipelined_bdat_is_one_write_and_one_round_trip() -> None:
    chunk = bdat(b"Subject: x\r\n\r\nbody\r\n")
    exchange = Exchange(MAIL, RCPTS[:2], chunk, pipelining=True, chunked=True)
    writes = run(exchange, [OK, OK, OK, Reply(250, "2.0.0 queued")])
    assert writes == [MAIL + RCPTS[0] + RCPTS[1] + chunk]
    result = exchange.result()
    assert [(o.disposition, o.stage) for o in result.outcomes] == [
        (Disposition.DELIVERED, Stage.AFTER_DATA)
    ] * 2
    assert not result.needs_reset


def test_pipelined_bdat_refused_for_want_of_recipients_resets() -> None:
    chunk = bdat(b"Subject: x\r\n\r\nbody\r\n")
    exchange = Exchange(MAIL, RCPTS[:1], chunk, pipelining=True, chunked=True)
    run(exchange, [OK, Reply(550, "5.1.1 user unknown"), Reply(554, "5.5.1 no valid recipients")])
    result = exchange.result()
    [outcome] = result.outcomes
    assert (outcome.stage, outcome.category) == (Stage.RCPT, Category.USER_UNKNOWN)
    assert result.needs_reset


def test_a_large_chunk_waits_for_the_envelope_replies() -> None:
    chunk = bdat(b"Subject: x\r\n\r\n" + b"x" * INLINE_CHUNK_BYTES)
    exchange = Exchange(MAIL, RCPTS[:2], chunk, pipelining=True, chunked=True)
    writes = run(exchange, [OK, OK, OK, Reply(250, "2.0.0 queued")])
    assert writes == [MAIL + RCPTS[0] + RCPTS[1], chunk]
    assert {o.disposition for o in exchange.result().outcomes} == {Disposition.DELIVERED}


def test_a_large_chunk_is_never_sent_after_a_refused_mail() -> None:
    # the case it waits for: a MAIL FROM refused for its SIZE
    chunk = bdat(b"Subject: x\r\n\r\n" + b"x" * INLINE_CHUNK_BYTES)
    exchange = Exchange(MAIL, RCPTS[:2], chunk, pipelining=True, chunked=True)
    no = Reply(503, "5.5.1 need MAIL")
    writes = run(exchange, [Reply(552, "5.3.4 message size exceeds fixed limit"), no, no])
    assert writes == [MAIL + RCPTS[0] + RCPTS[1]]
    assert {o.category for o in exchange.result().outcomes} == {Category.MESSAGE_TOO_LARGE}


def test_plain_bdat_follows_the_last_rcpt() -> None:
    chunk = bdat(b"Subject: x\r\n\r\nbody\r\n")
    exchange = Exchange(MAIL, RCPTS[:1], chunk, pipelining=False, chunked=True)
    writes = run(exchange, [OK, OK, Reply(554, "5.7.1 spam")])
    assert writes == [MAIL, RCPTS[0], chunk]
    [outcome] = exchange.result().outcomes
    assert (outcome.disposition, outcome.stage) == (Disposition.BOUNCED, Stage.AFTER_DATA)
    assert exchange.result().needs_reset


# --- the plain dialogue (no PIPELINING) -------------------------------------------------------


def test_plain_dialogue_writes_one_command_per_reply() -> None:
    exchange = Exchange(MAIL, RCPTS[:2], PAYLOAD, pipelining=False)
    writes = run(exchange, [OK, OK, OK, GO, Reply(250, "queued")])
    assert writes == [MAIL, RCPTS[0], RCPTS[1], b"DATA\r\n", PAYLOAD]
    assert {o.disposition for o in exchange.result().outcomes} == {Disposition.DELIVERED}


def test_plain_dialogue_stops_at_a_refused_mail() -> None:
    exchange = Exchange(MAIL, RCPTS, PAYLOAD, pipelining=False)
    writes = run(exchange, [Reply(550, "5.7.1 sender rejected")])
    assert writes == [MAIL]
    assert {o.stage for o in exchange.result().outcomes} == {Stage.MAIL}
    assert exchange.result().needs_reset


def test_plain_dialogue_sends_no_data_when_every_rcpt_is_refused() -> None:
    exchange = Exchange(MAIL, RCPTS[:2], PAYLOAD, pipelining=False)
    refused = Reply(550, "5.1.1 user unknown")
    writes = run(exchange, [OK, refused, refused])
    assert writes == [MAIL, RCPTS[0], RCPTS[1]]
    assert {o.category for o in exchange.result().outcomes} == {Category.USER_UNKNOWN}


def test_the_exchange_checks_its_use() -> None:
    with pytest.raises(ValueError, match="recipient"):
        Exchange(MAIL, [], PAYLOAD, pipelining=True)
    exchange = Exchange(MAIL, RCPTS[:1], PAYLOAD, pipelining=True)
    exchange.start()
    with pytest.raises(RuntimeError):
        exchange.start()
    with pytest.raises(RuntimeError):
        exchange.result()
