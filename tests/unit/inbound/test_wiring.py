"""How the bounce domain setting reaches delivery (MAIL FROM) and `postwire up` (the inbound
process), without I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from streams.contract.build import delivery_task, email_request, recipient
from streams.contract.records import DeliveryTask
from streams.deliver.returnpath import from_address
from streams.errors import ConfigError
from streams.mail.verp import decode
from streams.secret import ServerSecret
from streams.settings import Settings
from streams.stack.stack import Stack
from streams.stages.policies import return_path

SECRET = ServerSecret(bytes(range(32)))


def _task(message_id: str) -> DeliveryTask:
    request = email_request(message_id, "acme", "send", datetime.now(UTC))
    return delivery_task(
        request,
        recipient("Gina@Example.org"),
        "example.org",
        sender={"email": "news@acme.example", "name": None},
        content={
            "subject": "s",
            "text": "t",
            "html": None,
            "template_id": None,
            "headers": {},
            "attachments": [],
        },
    )


def test_without_a_bounce_domain_mail_from_is_the_from_and_no_inbound_runs(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, bounce_domain="")
    assert return_path(settings.delivery, SECRET) is from_address
    assert return_path(settings.delivery, SECRET)(_task("r1")) == "news@acme.example"
    assert "inbound" not in {p.name for p in Stack(settings).applications()}


def test_with_a_bounce_domain_mail_from_is_a_verp_path_and_inbound_runs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, bounce_domain=" Bounces.Example.COM ")
    assert settings.delivery.bounce_domain == "bounces.example.com"
    assert settings.inbound.bounce_domain == "bounces.example.com"
    task = _task("0123456789abcdef0123456789abcdef")
    local, _, domain = return_path(settings.delivery, SECRET)(task).rpartition("@")
    assert domain == "bounces.example.com"
    assert decode(SECRET, local).message_id == task["message_id"]
    [inbound] = [p for p in Stack(settings).applications() if p.name == "inbound"]
    assert inbound.argv[-1] == "inbound"


def test_a_message_id_no_token_can_carry_keeps_the_from(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, bounce_domain="bounces.example.com")
    assert return_path(settings.delivery, SECRET)(_task("z" * 40)) == "news@acme.example"


def test_a_bounce_domain_needs_the_secret_that_signs_its_tokens(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, bounce_domain="bounces.example.com")
    with pytest.raises(ConfigError, match="server secret"):
        return_path(settings.delivery, None)


@pytest.mark.parametrize("value", ["bounces@example.com", "localhost", "a b.example", "<x.y>"])
def test_a_bounce_domain_that_is_no_domain_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="not a domain name"):
        Settings(bounce_domain=value)
