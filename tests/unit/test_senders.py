"""Sender identities without I/O: what counts as an identity, what the directory lets a tenant
send as, what the gate does with a From its tenant has not verified, and what a validation
concludes from the TXT answers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streams.contract.signing import sign
from streams.db.dkim_keys import DkimKeyInfo, SenderKey, seal_context
from streams.db.senders import Identity, TenantSenders, parse_identity
from streams.db.tenants import ApiKey, Directory, Tenant, api_key_digest
from streams.deliver.dkim import keygen
from streams.deliver.senders import check_dkim, check_verification
from streams.errors import SenderInvalidError
from streams.gate.admission import Limits
from streams.gate.core import Arrival, Seen, decide, unknown_credentials, unknown_sender
from streams.kafka.records import SourcePosition
from streams.mail.dns import TxtAnswer
from streams.secret import ServerSecret
from tests.unit.gate.helpers import TRUST

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
PEM, PUBLIC = keygen("ed25519")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Acme.Example", ("acme.example", None)),
        ("acme.example.", ("acme.example", None)),
        ("News@Acme.Example", ("acme.example", "news@acme.example")),
        ("bücher.example", ("xn--bcher-kva.example", None)),
        ("info@bücher.example", ("xn--bcher-kva.example", "info@xn--bcher-kva.example")),
    ],
)
def test_identities_are_kept_as_delivery_sees_the_from(
    text: str, want: tuple[str, str | None]
) -> None:
    assert parse_identity(text) == want


@pytest.mark.parametrize("text", ["", "localhost", "a@@b.example", "not a domain", "x@"])
def test_what_cannot_be_a_from_is_refused(text: str) -> None:
    with pytest.raises(SenderInvalidError):
        parse_identity(text)


def directory() -> Directory:
    d = Directory()
    for tenant in ("a", "b"):
        d.tenants[tenant] = Tenant(tenant, Limits(100, 1000, 10000), "defer", False)
        secret = f"key-{tenant}"
        d.add_key(
            ApiKey(
                f"k{tenant}",
                tenant,
                api_key_digest(secret),
                frozenset({"send"}),
                False,
                True,
                secret.encode(),
            )
        )
    d.senders["a"] = TenantSenders(
        frozenset({"a.example", "xn--bcher-kva.example"}),
        frozenset({"solo@gmail.example"}),
        {"a.example": SenderKey("pw1", "ed25519-sha256", PEM)},
    )
    d.senders["b"] = TenantSenders(frozenset({"b.example"}))
    return d


@pytest.mark.parametrize(
    ("tenant", "address", "allowed"),
    [
        ("a", "news@a.example", True),
        ("a", "NEWS@A.Example", True),
        ("a", "info@bücher.example", True),  # the IDN From matches its ASCII identity
        ("a", "solo@gmail.example", True),
        ("a", "other@gmail.example", False),  # one address is not its whole domain
        ("a", "x@sub.a.example", False),  # nor a subdomain
        ("b", "news@a.example", False),  # the issue: B sending as A's domain
        ("b", "news@b.example", True),
        ("c", "news@a.example", False),  # a tenant without senders
    ],
)
def test_a_tenant_sends_only_as_its_verified_identities(
    tenant: str, address: str, allowed: bool
) -> None:
    assert directory().verified_sender(tenant, address) is allowed


def test_a_dkim_key_serves_only_its_own_tenant() -> None:
    d = directory()
    key = d.dkim_key("a", "A.Example")
    assert key is not None
    assert key.selector == "pw1"
    assert d.dkim_key("b", "a.example") is None
    assert d.dkim_key("a", "b.example") is None
    assert "BEGIN" not in repr(key)  # a key printed in a log shows no private half


def send(tenant: str, sender: str) -> dict[str, Any]:
    return {
        "request_id": "r1",
        "tenant": tenant,
        "operation": "send",
        "idempotency_key": None,
        "priority": "high",
        "smtp_probe": None,
        "from": {"email": sender, "name": None},
        "reply_to": None,
        "recipients": [
            {"email": "x@normal.example", "name": None, "kind": "to", "substitutions": {}}
            | {"custom_args": {}}
        ],
        "content": {
            "subject": "s",
            "text": "t",
            "html": None,
            "template_id": None,
            "headers": {},
            "attachments": [],
        },
        "substitutions": {},
        "categories": [],
        "custom_args": {},
        "send_at": None,
        "created_at": NOW,
    }


def gate(request: dict[str, Any]) -> Any:
    tenant = request["tenant"]
    # signed by the tenant's own key, as its direct producer does
    headers = sign(b"raw", tenant=tenant, key_id=f"k{tenant}", api_key=f"key-{tenant}")
    arrival = Arrival(SourcePosition("t.requests", 0, 3), b"raw", tenant.encode(), headers=headers)
    return decide(request, directory(), Seen(None, {}), arrival, NOW, trust=TRUST, dedup_ttl=60)  # type: ignore[arg-type]


def test_the_gate_dead_letters_a_from_its_tenant_has_not_verified() -> None:
    result = gate(send("b", "x@a.example"))
    assert result.outcome == "rejected"
    assert result.rejection["error_code"] == "auth.sender_not_verified"
    assert result.rejection["tenant"] == "b"
    assert "x@a.example" in result.rejection["error"]
    assert not result.deliveries
    assert not result.count
    # worth one look at a fresher directory (a sender verified a moment ago), not a key lookup
    assert unknown_sender(result)
    assert not unknown_credentials(result)


def test_the_gate_admits_a_verified_from() -> None:
    result = gate(send("a", "news@a.example"))
    assert result.outcome == "admitted"
    assert [domain for domain, _lane, _task in result.deliveries] == ["normal.example"]
    assert not unknown_sender(result)


def test_a_request_without_a_from_stays_a_render_error() -> None:
    request = send("b", "x@a.example")
    request["from"] = None
    result = gate(request)
    assert result.rejection["error_code"] == "render.invalid"


def identity(token: str = "t" * 32, address: str | None = None) -> Identity:
    return Identity(7, "a", "a.example", address, token, None, None, NOW)


@pytest.mark.parametrize(
    ("answer", "valid", "reason"),
    [
        (TxtAnswer("ok", ("v=spf1 -all", f"postwire-verification={'t' * 32}")), True, None),
        (TxtAnswer("ok", (f" postwire-verification={'t' * 32} ",)), True, None),
        (TxtAnswer("ok", ("postwire-verification=someone-elses",)), False, "another token"),
        (TxtAnswer("ok", ("v=spf1 -all",)), False, "no TXT record"),
        (TxtAnswer("nxdomain", error="Domain name not found"), False, "no TXT record"),
        (TxtAnswer("no_data"), False, "no TXT record"),
        (TxtAnswer("timeout", error="Timeout while contacting DNS servers"), False, "try again"),
    ],
)
def test_verification_wants_the_identitys_own_token(
    answer: TxtAnswer, valid: bool, reason: str | None
) -> None:
    found = check_verification(answer, identity())
    assert found.valid is valid
    if reason is None:
        assert found.reason is None
    else:
        assert found.reason is not None
        assert reason in found.reason
        assert "_postwire-verification.a.example" in found.reason


def test_an_address_is_proved_at_its_domains_verification_name() -> None:
    solo = identity(address="solo@a.example")
    assert solo.verification_host == "_postwire-verification.a.example"
    assert solo.name == "solo@a.example"


def key_info(public: str = PUBLIC) -> DkimKeyInfo:
    return DkimKeyInfo("a", "a.example", "pw1", "ed25519-sha256", public, True, None, NOW)


def test_the_dkim_record_must_publish_this_key() -> None:
    folded = PUBLIC.replace("; ", ";").replace("p=", "p= ")  # spacing a DNS UI may add
    assert check_dkim(TxtAnswer("ok", (folded,)), key_info()).valid
    other = keygen("ed25519")[1]
    found = check_dkim(TxtAnswer("ok", (other,)), key_info())
    assert not found.valid
    assert found.reason == "the TXT record at pw1._domainkey.a.example publishes another key"
    rsa_same_bits = PUBLIC.replace("k=ed25519", "k=rsa")
    assert not check_dkim(TxtAnswer("ok", (rsa_same_bits,)), key_info()).valid
    missing = check_dkim(TxtAnswer("nxdomain"), key_info())
    assert missing.reason == "no DKIM key record at pw1._domainkey.a.example"


def test_a_sealed_key_opens_only_in_its_own_row() -> None:
    secret = ServerSecret(b"k" * 32)
    sealed = secret.seal("dkim-key", PEM, context=seal_context("a", "a.example", "pw1"))
    assert PEM not in sealed
    assert secret.open("dkim-key", sealed, context=seal_context("a", "a.example", "pw1")) == PEM
    for context in (("b", "a.example", "pw1"), ("a", "b.example", "pw1"), ("a", "a.example", "s")):
        with pytest.raises(Exception, match="does not open"):
            secret.open("dkim-key", sealed, context=seal_context(*context))


def test_old_shared_key_files_are_reported_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from streams.stages.deliver import warn_of_key_files

    warn_of_key_files(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not a key")
    warn_of_key_files(tmp_path)
    assert not caplog.records
    (tmp_path / "pw1._domainkey.acme.example.pem").write_bytes(PEM)
    warn_of_key_files(tmp_path)
    [record] = caplog.records
    assert "1 DKIM key file(s)" in record.getMessage()
    assert "postwire dkim import" in record.getMessage()
