"""One SMTP mail transaction as a pure state machine: MAIL, the RCPTs, DATA, the message, with
or without RFC 2920 PIPELINING; and an incremental parser of the server's replies.

The machine never touches a socket. ``Exchange.start()`` says what to write first; each reply
is handed to ``Exchange.on_reply``, which says what to write next (possibly nothing); when the
connection fails, ``Exchange.lost`` is told. ``Exchange.result()`` then gives one ``Outcome`` per
recipient and what the session is good for afterwards. The I/O shell (``streams/mail/wire.py``)
and the transport only move bytes.

Pipelined (the server offered PIPELINING), MAIL, every RCPT and DATA go in one write and their
replies are read in order, each classified with its own stage: a 5xx to one RCPT is about that
recipient, a refused MAIL is about all of them (the 503s that follow it are consequences and say
nothing). RFC 2920 section 3.1: when DATA is answered 354 although no recipient was accepted, the
client ends the data at once with a lone "."; the content is never sent. Without PIPELINING the
same machine speaks the plain dialogue, one command per write, and stops at the first refusal.

With ``chunked`` (the server offered RFC 3030 CHUNKING) the payload is ``BDAT <size> LAST`` and
the message as it is, no dot-stuffing; its reply is the verdict on the message. Pipelined, a
message of at most ``INLINE_CHUNK_BYTES`` goes in the same write as the envelope (RFC 3030
section 4.2): one round trip per message; a server that refused the envelope still reads the
chunk (its size is declared) and discards it. A larger one waits for the envelope's replies, so a
message refused at MAIL for its SIZE is not sent all the same.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from streams.mail.replies import (
    Category,
    Disposition,
    Outcome,
    Stage,
    TransportErrorKind,
    classify,
    transport_error,
)

__all__ = [
    "INLINE_CHUNK_BYTES",
    "MAX_REPLY_BYTES",
    "Exchange",
    "Reply",
    "ReplyParser",
    "TransactionResult",
    "bdat",
]

MAX_REPLY_BYTES: Final = 64 * 1024  # RFC 5321 says 512 a line; a reply past this is not SMTP
INLINE_CHUNK_BYTES: Final = 64 * 1024
_ABORT: Final = b".\r\n"  # ends a DATA that must carry nothing (RFC 2920 section 3.1)
_RCPT_OK: Final = frozenset({250, 251})


def bdat(message: bytes) -> bytes:
    """``message`` as one last chunk (RFC 3030): sent as it is, ending in CRLF as DATA's would."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return b"BDAT %d LAST\r\n" % len(message) + message


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete reply; multi-line texts are joined with newlines. Code 0: not SMTP."""

    code: int
    text: str


class ReplyParser:
    """Splits the bytes a server sends into replies, however the bytes are cut into reads."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[str] = []
        self.broken = False  # a line that was not a reply was seen: the framing is lost

    @property
    def pending(self) -> bool:
        """Whether part of a reply is buffered."""
        return bool(self._buffer or self._lines)

    def feed(self, data: bytes) -> list[Reply]:
        if self.broken:
            return []
        self._buffer += data
        replies: list[Reply] = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            code = line[:3]
            mark = line[3:4]
            if not code.isdigit() or mark not in (b" ", b"-", b"\r", b"\n"):
                self.broken = True
                text = line.decode("utf-8", "replace").strip()
                return [*replies, Reply(0, f"malformed reply line: {text[:200]!r}")]
            self._lines.append(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
            if mark != b"-":
                replies.append(Reply(int(code), "\n".join(self._lines)))
                self._lines = []
        if len(self._buffer) + sum(map(len, self._lines)) > MAX_REPLY_BYTES:
            self.broken = True
            replies.append(Reply(0, f"reply longer than {MAX_REPLY_BYTES} bytes"))
        return replies


@dataclass(frozen=True, slots=True)
class TransactionResult:
    outcomes: tuple[Outcome, ...]  # one per recipient, in the order given
    reusable: bool  # the session may carry another transaction
    needs_reset: bool  # RSET first: the server may hold part of this transaction


@dataclass(frozen=True, slots=True)
class _Awaited:
    stage: Stage
    index: int = -1  # the recipient a RCPT reply is about
    abort: bool = False  # the reply to a lone "." that ended an empty DATA


class Exchange:
    """One transaction. ``mail`` and each of ``rcpts`` are whole command lines (CRLF ended,
    arguments already checked); ``payload`` is the dot-stuffed message ending in ".\\r\\n", or
    with ``chunked`` the BDAT command and the message (``bdat``)."""

    def __init__(
        self,
        mail: bytes,
        rcpts: Sequence[bytes],
        payload: bytes,
        *,
        pipelining: bool,
        chunked: bool = False,
    ) -> None:
        if not rcpts:
            raise ValueError("a transaction needs at least one recipient")
        self._mail = mail
        self._rcpts = tuple(rcpts)
        self._payload = payload
        self.pipelining = pipelining
        self.chunked = chunked
        # the chunk rides with the envelope only when pipelined and small
        self._inline = pipelining and chunked and len(payload) <= INLINE_CHUNK_BYTES
        self._awaited: deque[_Awaited] = deque()
        self._mail_failure: Outcome | None = None
        self._refused: dict[int, Outcome] = {}
        self._accepted: list[int] = []
        self._answered = 0  # RCPT replies seen
        self._verdict: Outcome | None = None  # for the accepted: DATA refused, or the final reply
        self._ended = False  # a final reply (to the content or to a lone ".") was read
        self._broken: Outcome | None = None  # the session failed or the server is closing it
        self._started = False

    @property
    def done(self) -> bool:
        return self._started and not self._awaited

    @property
    def awaiting(self) -> Stage | None:
        """The stage whose reply is read next (its timeout differs after the data)."""
        return self._awaited[0].stage if self._awaited else None

    def start(self) -> bytes:
        if self._started:
            raise RuntimeError("the exchange has started already")
        self._started = True
        if not self.pipelining:
            self._awaited.append(_Awaited(Stage.MAIL))
            return self._mail
        self._awaited.append(_Awaited(Stage.MAIL))
        self._awaited.extend(_Awaited(Stage.RCPT, i) for i in range(len(self._rcpts)))
        if self._inline:
            self._awaited.append(_Awaited(Stage.AFTER_DATA))
            return b"".join((self._mail, *self._rcpts, self._payload))
        if self.chunked:
            return b"".join((self._mail, *self._rcpts))
        self._awaited.append(_Awaited(Stage.DATA))
        return b"".join((self._mail, *self._rcpts, b"DATA\r\n"))

    def on_reply(self, reply: Reply) -> bytes:
        """Take the reply to the oldest command still unanswered; returns what to write now."""
        if not self._awaited:
            raise RuntimeError("a reply nobody asked for")
        awaited = self._awaited.popleft()
        stage = Stage.AFTER_DATA if awaited.abort else awaited.stage
        outcome = classify(reply.code, None, reply.text, stage)
        if reply.code in (0, 421):
            # the framing is lost, or the server says it is closing: no later reply will come,
            # and whoever has no answer yet gets this one
            self._record(awaited, outcome, reply.code)
            self._broken = outcome
            self._awaited.clear()
            return b""
        return self._record(awaited, outcome, reply.code)

    def _record(self, awaited: _Awaited, outcome: Outcome, code: int) -> bytes:
        if awaited.abort:
            self._ended = True
            return b""
        if awaited.stage is Stage.MAIL:
            return self._on_mail(outcome)
        if awaited.stage is Stage.RCPT:
            return self._on_rcpt(awaited.index, outcome, code)
        if awaited.stage is Stage.DATA:
            if code == 354:
                if self._mail_failure is None and self._accepted:
                    return self._next(_Awaited(Stage.AFTER_DATA), self._payload)
                return self._next(_Awaited(Stage.DATA, abort=True), _ABORT)
            self._verdict = outcome
            return b""
        # AFTER_DATA: the server's word on the message. A refused BDAT may leave the server's
        # transaction half open (RFC 3030 section 2), so only an accepted one counts as its end.
        self._verdict = outcome
        self._ended = not self.chunked or 200 <= code < 300
        return b""

    def _on_mail(self, outcome: Outcome) -> bytes:
        if outcome.disposition is not Disposition.PROCEED:
            self._mail_failure = outcome
            return b""  # pipelined: the rest is read all the same; plain: nothing more
        if self.pipelining:
            return b""
        return self._next(_Awaited(Stage.RCPT, 0), self._rcpts[0])

    def _on_rcpt(self, index: int, outcome: Outcome, code: int) -> bytes:
        self._answered += 1
        if code in _RCPT_OK:
            self._accepted.append(index)
        else:
            self._refused[index] = outcome
        last = self._answered == len(self._rcpts)
        if self.pipelining:
            # the RCPTs went together; only a chunk too big to ride along waits for the last reply
            if not (last and self.chunked and not self._inline):
                return b""
        elif not last:
            return self._next(_Awaited(Stage.RCPT, self._answered), self._rcpts[self._answered])
        if not self._accepted or self._mail_failure is not None:
            return b""
        if self.chunked:
            return self._next(_Awaited(Stage.AFTER_DATA), self._payload)
        return self._next(_Awaited(Stage.DATA), b"DATA\r\n")

    def _next(self, awaited: _Awaited, data: bytes) -> bytes:
        self._awaited.append(awaited)
        return data

    def lost(self, kind: TransportErrorKind, text: str) -> None:
        """The connection failed (or a reply did not come in time) before the next reply."""
        stage = self.awaiting or Stage.MAIL
        if self._broken is None:
            self._broken = transport_error(kind, stage, text)
        self._awaited.clear()

    def result(self) -> TransactionResult:
        if self._awaited:
            raise RuntimeError("the exchange is not over")
        outcomes = tuple(self._outcome(i) for i in range(len(self._rcpts)))
        reusable = self._broken is None
        return TransactionResult(outcomes, reusable, reusable and not self._ended)

    def _outcome(self, index: int) -> Outcome:
        if self._mail_failure is not None:
            return self._mail_failure
        refused = self._refused.get(index)
        if refused is not None:
            return refused
        if index in self._accepted and self._verdict is not None:
            return self._verdict
        if self._broken is not None:
            return self._broken
        # accepted, DATA never sent or never answered, and nothing broke: cannot happen when
        # the exchange ran to its end, so it is a bug on one side
        text = "the transaction ended without a verdict for this recipient"
        return Outcome(Disposition.DEFERRED, Category.PROTOCOL, Stage.DATA, None, None, text, True)
