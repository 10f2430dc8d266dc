"""The kt1 format: vectors both ways, round trips, and every way a token can be bad."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from conftest import vectors
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn import InvalidToken, UnknownKeyVersion
from keyturn._core import tokens
from keyturn._core.keyring import DataKey, Keyring, Resealed

KEY = DataKey(3, bytes(range(32)))
RING = Keyring({3: KEY}, 3)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def ring_for(vector: dict[str, Any]) -> Keyring:
    key = bytes.fromhex(vector["key"])
    keys = {vector["version"]: DataKey(vector["version"], key)}
    if "also_version" in vector:  # same key under another version: only the AAD differs
        keys[vector["also_version"]] = DataKey(vector["also_version"], key)
    return Keyring(keys, vector["version"])


@vectors("valid")
def test_vector_encrypts_to_token(vector: dict[str, Any]) -> None:
    token = ring_for(vector).encrypt(
        vector["plaintext"].encode(), vector["context"], nonce=bytes.fromhex(vector["nonce"])
    )
    assert token == vector["token"]


@vectors("valid")
def test_vector_decrypts_to_plaintext(vector: dict[str, Any]) -> None:
    out = ring_for(vector).decrypt(vector["token"], vector["context"])
    assert out.decode() == vector["plaintext"]


@vectors("valid")
def test_payload_is_exactly_nonce_ciphertext_tag(vector: dict[str, Any]) -> None:
    payload = vector["token"].split(":", 2)[2]
    assert "=" not in payload
    blob = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert len(blob) == 28 + len(vector["plaintext"].encode())
    assert blob[:12] == bytes.fromhex(vector["nonce"])


@vectors("invalid")
def test_invalid_vector_is_refused(vector: dict[str, Any]) -> None:
    error = {"InvalidToken": InvalidToken, "UnknownKeyVersion": UnknownKeyVersion}
    with pytest.raises(error[vector["error"]]):
        ring_for(vector).decrypt(vector["token"], vector["context"])


def test_bare_aesgcm_reads_a_token() -> None:
    """What docs/FORMAT.md tells other runtimes to do, done with bare AESGCM."""
    token = RING.encrypt(b"hello", "users.secret")
    _, version, payload = token.split(":", 2)
    blob = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    aad = f"kt1:{version}:users.secret".encode()
    assert AESGCM(KEY.key).decrypt(blob[:12], blob[12:], aad) == b"hello"


@given(st.binary(max_size=2048), st.text(max_size=80))
def test_round_trip_bytes(data: bytes, context: str) -> None:
    token = RING.encrypt(data, context)
    assert RING.decrypt(token, context) == data
    assert len(token) == tokens.token_length(3, len(data))


@given(st.text(max_size=500), st.text(min_size=1, max_size=40))
def test_round_trip_text_and_fresh_nonces(text: str, context: str) -> None:
    a = RING.encrypt(text.encode(), context)
    b = RING.encrypt(text.encode(), context)
    assert a != b  # random nonces: equal plaintexts do not give equal tokens
    assert RING.decrypt(a, context).decode() == RING.decrypt(b, context).decode() == text


@given(st.binary(max_size=64), st.text(max_size=20), st.text(max_size=20))
def test_other_context_is_refused(data: bytes, ctx: str, other: str) -> None:
    token = RING.encrypt(data, ctx)
    if other != ctx:
        with pytest.raises(InvalidToken):
            RING.decrypt(token, other)


@given(st.binary(max_size=64), st.data())
def test_any_edited_character_is_refused(data: bytes, draw: st.DataObject) -> None:
    token = RING.encrypt(data, "c")
    i = draw.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = draw.draw(st.sampled_from(ALPHABET + ":=+/ 0"))
    edited = token[:i] + replacement + token[i + 1 :]
    if edited != token:
        with pytest.raises((InvalidToken, UnknownKeyVersion)):
            RING.decrypt(edited, "c")


def test_every_truncation_is_refused() -> None:
    token = RING.encrypt(b"a secret value", "c")
    for n in range(len(token)):
        with pytest.raises(InvalidToken):
            RING.decrypt(token[:n], "c")


def test_every_single_bit_flip_of_the_blob_is_refused() -> None:
    token = RING.encrypt(b"secret", "c")
    version, blob = tokens.parse(token)
    for i in range(len(blob) * 8):
        flipped = bytearray(blob)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(InvalidToken):
            tokens.open_blob(KEY.aead, version, bytes(flipped), "c")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "kt1",
        "kt1:",
        "kt1:3",
        "kt1:3:",
        "kt1::AAAA",
        "kt1:-3:AAAA",
        "kt1:3.0:AAAA",
        "kt1:٣:AAAA",
        "kt1:99999999999:AAAA",
        "KT1:3:AAAA",
        " kt1:3:AAAA",
        "kt1:3:AA AA",
        None,
        b"kt1",
    ],
)
def test_malformed_tokens_raise_invalid_token(bad: Any) -> None:
    with pytest.raises(InvalidToken):
        RING.decrypt(bad, "c")


def test_unknown_version_names_the_version_and_nothing_else() -> None:
    token = RING.encrypt(b"secret", "c").replace("kt1:3:", "kt1:4:")
    with pytest.raises(UnknownKeyVersion) as info:
        RING.decrypt(token, "c")
    assert info.value.version == 4
    assert token.split(":")[2] not in str(info.value)


def test_invalid_token_message_carries_no_detail() -> None:
    with pytest.raises(InvalidToken) as info:
        RING.decrypt(RING.encrypt(b"secret", "a"), "b")
    assert str(info.value) == "invalid token"


def test_version_of_reads_only_the_header() -> None:
    assert tokens.version_of("kt1:12:x") == 12
    assert tokens.version_of("kt1:012:x") is None
    assert tokens.version_of("plain") is None
    assert tokens.version_of("kt1:5:") is None


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20), st.sampled_from(["t.c", "t.c#1", "x$.a"]))
def test_batch_sealing_and_checking_agree_with_one_at_a_time(
    plaintexts: list[bytes], context: str
) -> None:
    """``encrypt_many`` makes tokens ``decrypt`` opens (a fresh nonce each);
    ``opens`` says True exactly where ``decrypt`` would succeed."""
    ring = Keyring({1: DataKey.generate(1), 2: DataKey.generate(2)}, 2)
    sealed = ring.encrypt_many(plaintexts, [context] * len(plaintexts))
    assert [ring.decrypt(t, context) for t in sealed] == plaintexts
    assert len({t.split(":")[2][:16] for t in sealed}) == len(sealed)  # distinct nonces
    other = Keyring({9: DataKey.generate(9)}, 9).encrypt(b"x", context)
    mixed = [*sealed, ring.encrypt(b"old", context), other, "kt1:2:AAAA", "plain", "kt1:2"]
    expected = [True] * (len(sealed) + 1) + [False] * 4
    assert ring.opens(mixed, context) == expected
    assert not any(ring.opens(sealed, context + "x"))
    assert ring.opens([None, 5, ring.encrypt(b"x", context).encode()], context) == [False] * 3


@pytest.mark.parametrize("one_context", [False, True], ids=["per token", "one for all"])
@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=20))
def test_batch_reencryption_leaves_what_it_is_told_and_what_does_not_open(
    one_context: bool, plaintexts: list[bytes]
) -> None:
    """``reencrypt_many`` seals each older token's plaintext under the active version;
    None for a token on version ``leave``, for what does not open, and for values
    that are not tokens at all (the rotation hands it whole batches)."""
    old = Keyring({1: DataKey.generate(1)}, 1)
    ring = old.with_active(DataKey.generate(2))
    older = [old.encrypt(p, "t.c") for p in plaintexts]
    current = ring.encrypt(b"new", "t.c")
    others: list[Any] = [
        old.encrypt(b"x", "t.other"),
        "kt1:1:AAAA",
        "kt1:7:AAAA",
        "plain",
        b"kt1:1:",
    ]
    others += [None, 5, "kt1:01:" + older[0].split(":")[2]]
    values = [*older, current, *others]
    contexts = "t.c" if one_context else ["t.c"] * len(values)
    fresh = ring.reencrypt_many(values, contexts, leave=2)
    assert [ring.decrypt(t, "t.c") for t in fresh[: len(older)]] == plaintexts
    assert all(t.startswith("kt1:2:") for t in fresh[: len(older)])
    assert fresh[len(older) :] == [None] * (1 + len(others))
    again = ring.reencrypt_many([current], "t.c" if one_context else ["t.c"])  # re-sealed afresh
    assert again[0] is not None and again[0] != current and ring.decrypt(again[0], "t.c") == b"new"


def _damaged(draw: st.DrawFn, token: str) -> Any:
    """``token`` as it is, or edited, cut, lengthened, or swapped for another value."""
    how = draw(st.sampled_from(["as is", "edit", "insert", "cut", "append", "ending", "other"]))
    if how == "insert":  # characters a lax base64 decoder skips (four keep the length's rest)
        i = draw(st.integers(0, len(token)))
        skipped = draw(st.sampled_from(" \n=.!:+/é")) * draw(st.sampled_from([1, 4]))
        return token[:i] + skipped + token[i:]
    if how == "edit":
        i = draw(st.integers(0, len(token) - 1))
        return token[:i] + draw(st.sampled_from(ALPHABET + ":=+/ 0é")) + token[i + 1 :]
    if how == "cut":
        return token[: draw(st.integers(0, len(token) - 1))]
    if how == "append":
        return token + draw(st.sampled_from(["=", "==", ":", "A", ":AAAA", "\n"]))
    if how == "ending":  # the same bytes, spelled with other (non-canonical) low bits
        return token[:-1] + ALPHABET[(ALPHABET.index(token[-1]) + 1) % 64]
    if how == "other":
        values = st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.text(max_size=12))
        return draw(values)
    return token


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_batch_reencryption_under_one_context_agrees_with_one_token_at_a_time(
    data: st.DataObject,
) -> None:
    """The one-context batch loop (the rotation's usual one, and verify's, with its
    own copy of the token checks) opens exactly what :meth:`Keyring.decrypt` opens,
    to the same plaintext, and leaves version ``leave`` and everything else as None."""
    keys = {v: DataKey.generate(v) for v in (1, 2, 10)}
    ring = Keyring(keys, 10)
    leave = data.draw(st.sampled_from([None, 1, 2, 10]))
    values = [
        _damaged(data.draw, Keyring(keys, v).encrypt(p, c))
        for v, p, c in data.draw(
            st.lists(
                st.tuples(
                    st.sampled_from([1, 2, 10]),
                    st.binary(max_size=40),
                    st.sampled_from(["t.c", "t.d"]),
                ),
                max_size=12,
            )
        )
    ]
    fresh = ring.reencrypt_many(values, "t.c", leave=leave, opened=True)
    assert len(fresh) == len(values)
    for value, new in zip(values, fresh, strict=True):
        try:
            expected = ring.decrypt(value, "t.c")
        except (InvalidToken, UnknownKeyVersion):
            expected = None
        if expected is not None and tokens.version_of(value) == leave:
            expected = None
        if expected is None:
            assert new is None
        else:
            assert new is not None and new.startswith("kt1:10:")
            assert ring.decrypt(new, "t.c") == expected
    # What a backup keeps instead of decoding again: each opened token's body bytes,
    # and their version where all opened and share one.
    assert isinstance(fresh, Resealed)
    reopened = [v for v, new in zip(values, fresh, strict=True) if new is not None]
    spelled = [base64.urlsafe_b64encode(b).rstrip(b"=").decode() for b in fresh.opened]
    assert spelled == [v.split(":", 2)[2] for v in reopened]
    versions = {str(tokens.version_of(v)) for v in reopened}
    every = len(reopened) == len(values) and len(versions) == 1
    assert fresh.version == (versions.pop() if every else None)
    rows = data.draw(st.lists(st.integers(0, max(0, len(values) - 1)), max_size=len(values)))
    picked = fresh.picked(rows)  # some rows of a batch, as a backup gets them
    assert list(picked) == [fresh[j] for j in rows] and picked.version == fresh.version
    assert picked.opened == ([fresh.opened[j] for j in rows] if every else [])
    unasked = ring.reencrypt_many(values, "t.c", leave=leave)
    assert isinstance(unasked, Resealed) and unasked.opened == [] and unasked.version is None
    per_token = ring.reencrypt_many(values, ["t.c"] * len(values), leave=leave)
    assert [f is None for f in per_token] == [f is None for f in fresh]
    opened = []  # verify's batch path, the same loop: True exactly where decrypt opens
    for value in values:
        try:
            opened.append(ring.decrypt(value, "t.c") is not None)
        except (InvalidToken, UnknownKeyVersion):
            opened.append(False)
    assert ring.opens(values, "t.c") == opened
