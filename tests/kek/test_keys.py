"""KEK parsing, weakness, sources; DEK wrapping bound to version and keyring."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest

from keyturn import InvalidKEK, WrongKEK
from keyturn._core.kek import LocalKEK, parse_kek, weakness
from keyturn._core.keyring import DataKey, wrap_aad
from keyturn.config import parse_config
from keyturn.kek import resolve_kek
from keyturn.kek.local import from_file

KEY = secrets.token_bytes(32)


@pytest.mark.parametrize(
    "text",
    [
        KEY.hex(),
        KEY.hex().upper(),
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        f"  {KEY.hex()}\n",
    ],
)
def test_kek_accepts_hex_and_base64(text: str) -> None:
    assert parse_kek(text, "env:X") == KEY


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tooshort",
        KEY.hex()[:-2],
        KEY.hex() + "00",
        "zz" * 32,
        base64.b64encode(KEY[:31]).decode(),
        "correct horse battery staple 1234567890",
    ],
)
def test_malformed_kek_is_refused_without_echo(text: str) -> None:
    with pytest.raises(InvalidKEK) as info:
        parse_kek(text, "env:KEYTURN_KEK")
    message = str(info.value) + repr(info.value)
    assert "env:KEYTURN_KEK" in message
    if text.strip():
        assert text.strip() not in message


@pytest.mark.parametrize(
    "key",
    [
        bytes(32),
        b"\xff" * 32,
        b"ab" * 16,
        b"0123456789abcdef" * 2,
        bytes(range(32)),
        bytes(range(64, 0, -2)),
        bytes([1, 2, 3, 4, 5, 6] * 5 + [1, 2]),
    ],
)
def test_trivially_weak_keks_are_named(key: bytes) -> None:
    assert weakness(key) is not None


def test_random_keks_are_not_weak() -> None:
    assert all(weakness(os.urandom(32)) is None for _ in range(2000))


def test_local_kek_hides_the_key() -> None:
    kek = LocalKEK(KEY, "env:KEYTURN_KEK")
    text = repr(kek) + str(kek) + kek.kek_id
    assert KEY.hex() not in text and KEY.hex()[:16] not in text
    assert kek.kek_id == LocalKEK(KEY, "file:/elsewhere").kek_id


def test_wrapped_dek_is_bound_to_version_and_keyring() -> None:
    kek = LocalKEK(KEY, "env:K")
    dek = DataKey.generate(1)
    wrapped = kek.wrap(dek.key, wrap_aad("ring-a", 1))
    assert kek.unwrap(wrapped, wrap_aad("ring-a", 1)) == dek.key
    for aad in (wrap_aad("ring-a", 2), wrap_aad("ring-b", 1)):
        with pytest.raises(WrongKEK):
            kek.unwrap(wrapped, aad)
    with pytest.raises(WrongKEK):
        LocalKEK(os.urandom(32), "env:OTHER").unwrap(wrapped, wrap_aad("ring-a", 1))


def test_data_key_repr_hides_the_key() -> None:
    dek = DataKey.generate(5)
    assert dek.key.hex() not in repr(dek) and "redacted" in repr(dek)


def _config(tmp_path: Path, extra: str = "") -> object:
    return parse_config(
        {"database": "sqlite:///app.db", **({"kek": extra} if extra else {})},
        tmp_path / "keyturn.toml",
    )


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_text(KEY.hex())
    path.chmod(0o640)
    with pytest.raises(InvalidKEK, match="chmod 600"):
        from_file(path)
    path.chmod(0o600)
    assert from_file(path).kek_id == LocalKEK(KEY, "x").kek_id


def test_resolution_order_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYTURN_ENV", raising=False)
    config = parse_config({"database": "sqlite:///app.db"}, tmp_path / "keyturn.toml")
    file_key = os.urandom(32)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".keyturn_kek").write_text(file_key.hex())
    (tmp_path / "data" / ".keyturn_kek").chmod(0o600)
    monkeypatch.setenv("KEYTURN_KEK", KEY.hex())
    assert resolve_kek(config).kek_id == LocalKEK(KEY, "x").kek_id
    monkeypatch.delenv("KEYTURN_KEK")
    assert resolve_kek(config).kek_id == LocalKEK(file_key, "x").kek_id


def test_explicit_env_source_must_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_KEK", raising=False)
    config = parse_config({"database": "sqlite:///a.db", "kek": "env:APP_KEK"}, tmp_path / "k.toml")
    with pytest.raises(InvalidKEK, match="APP_KEK"):
        resolve_kek(config)
    monkeypatch.setenv("APP_KEK", KEY.hex())
    assert resolve_kek(config).source == "env:APP_KEK"


def test_production_refuses_missing_generated_and_weak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYTURN_ENV", "production")
    monkeypatch.delenv("KEYTURN_KEK", raising=False)
    config = parse_config({"database": "sqlite:///a.db"}, tmp_path / "keyturn.toml")
    with pytest.raises(InvalidKEK, match="production"):
        resolve_kek(config, allow_generate=True)
    assert not (tmp_path / "data").exists()
    monkeypatch.setenv("KEYTURN_KEK", "00" * 32)
    with pytest.raises(InvalidKEK, match="all zeros"):
        resolve_kek(config)
    monkeypatch.setenv("KEYTURN_KEK", KEY.hex())
    assert resolve_kek(config).source == "env:KEYTURN_KEK"


def test_weak_kek_outside_production_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYTURN_ENV", raising=False)
    monkeypatch.setenv("KEYTURN_KEK", "00" * 32)
    warnings: list[str] = []
    config = parse_config({"database": "sqlite:///a.db"}, tmp_path / "keyturn.toml")
    resolve_kek(config, warn=warnings.append)
    assert warnings and "production would refuse" in warnings[0]
