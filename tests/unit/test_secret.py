from __future__ import annotations

import stat
from pathlib import Path

import pytest

from streams.errors import ConfigError, SecretError
from streams.secret import ServerSecret, load_server_secret

KEY = bytes(range(32))


def test_subkeys_differ_per_purpose_and_are_stable() -> None:
    secret = ServerSecret(KEY)
    assert secret.subkey("message-id") == ServerSecret(KEY).subkey("message-id")
    assert secret.subkey("message-id") != secret.subkey("api-key")
    assert ServerSecret(bytes(32)).subkey("message-id") != secret.subkey("message-id")


def test_mac_separates_its_parts() -> None:
    secret = ServerSecret(KEY)
    assert secret.mac("id", "ab", "c") != secret.mac("id", "a", "bc")
    assert secret.mac("id", "a") != secret.mac("other", "a")


def test_sealed_values_open_only_with_their_context_and_key() -> None:
    secret = ServerSecret(KEY)
    sealed = secret.seal("api-key", b"pw_secret", context="k_1")
    assert b"pw_secret" not in sealed
    assert secret.open("api-key", sealed, context="k_1") == b"pw_secret"
    with pytest.raises(SecretError, match="does not open"):
        secret.open("api-key", sealed, context="k_2")
    with pytest.raises(SecretError):
        ServerSecret(bytes(32)).open("api-key", sealed, context="k_1")
    with pytest.raises(SecretError):
        secret.open("api-key", sealed[:-1] + bytes([sealed[-1] ^ 1]), context="k_1")


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        ServerSecret(b"short")


def test_the_secret_file_is_made_once_private(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    first = load_server_secret(None, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.subkey("x") == load_server_secret(None, path).subkey("x")
    given = load_server_secret(KEY.hex(), path)
    assert given.subkey("x") == ServerSecret(KEY).subkey("x")
    assert "hidden" in repr(given)


def test_a_malformed_secret_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hex or base64"):
        load_server_secret("not*base64*at*all!", tmp_path / "s")
