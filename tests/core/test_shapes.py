"""Unknown values: another scheme's ciphertext is told from plaintext by its shape."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from legacy_encoders import LAYOUTS

from keyturn._core.shapes import api_keys, looks_encrypted, short_texts

# Plaintext secrets as apps hold them: none is taken for ciphertext.
PLAINTEXT_SECRETS = [
    "hunter2",
    "correct horse battery staple",
    "smtp.example.com",
    "sk_live_51H8xYzAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghijABCDEFGHIJKLMNOP",
    "sk-proj-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwAbCdEfGhIjKlMnOp",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # an AWS secret access key: 40 chars
    "SG.abcdefghijklmnopqrstuv.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "CorrectHorseBatteryStapleIsMyPassword2024xx",
    "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX",
    "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",  # a TOTP seed (base32)
    "postgres://user:pass@db.internal:5432/app",
    "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
    "AIzaSyD-abcdefghijklmnopqrstuvwxyz01234",
    "0123456789abcdef0123456789abcdef",  # 32 hex digits: 16 bytes, no room for IV and tag
    "ünïcödé-pässwörd-with-ß-and-€-that-is-quite-long-indeed",
    "x" * 200,
]


@pytest.mark.parametrize("value", PLAINTEXT_SECRETS)
def test_plaintext_secrets_are_plaintext(value: str) -> None:
    assert not looks_encrypted(value)
    assert not looks_encrypted(value.encode())


def _sealed(n: int) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(AESGCM.generate_key(bit_length=256)).encrypt(nonce, os.urandom(n), None)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_documented_legacy_layout_is_unknown_without_its_reader(layout: str) -> None:
    """Every layout of docs/ADOPTING.md; one written as bare unpadded base64url may
    start like an API key's ``word_`` (expected under 1%)."""
    _, encode, make_key = LAYOUTS[layout]
    key = make_key()
    values = [encode(key, os.urandom(8 + i % 200)) for i in range(300)]
    missed = [v for v in values if not looks_encrypted(v)]
    if layout == "pbkdf2":  # bare base64url
        assert len(missed) < 15
    else:
        assert missed == []


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=4, max_value=400))
def test_ciphertext_in_any_common_encoding_is_unknown(n: int) -> None:
    blob = _sealed(n)
    assert looks_encrypted(base64.b64encode(blob).decode())
    assert looks_encrypted(blob.hex())
    assert looks_encrypted(blob.hex().upper())
    assert looks_encrypted(f"{blob[:12].hex()}:{blob[12:].hex()}")
    assert looks_encrypted("enc:v2:" + base64.b64encode(blob).decode())
    assert looks_encrypted(blob)  # raw bytes, as a BLOB holds them
    assert looks_encrypted(Fernet(Fernet.generate_key()).encrypt(os.urandom(n)).decode())


def test_urlsafe_base64_ciphertext_is_unknown_but_for_a_word_led_few() -> None:
    """Unpadded base64url may start like ``abc_``, the shape of an API key's prefix:
    under 2% of ciphertexts (expected 0.9%) are then taken for plaintext."""
    values = [
        base64.urlsafe_b64encode(_sealed(8 + i % 64)).decode().rstrip("=") for i in range(3000)
    ]
    missed = sum(not looks_encrypted(v) for v in values)
    assert missed < 60


def test_short_or_text_bytes_are_not_unknown() -> None:
    assert not looks_encrypted(os.urandom(15).hex()[:15].encode())
    assert not looks_encrypted(b"plain text in a blob")
    assert not looks_encrypted(b"\xff\xfe")  # 2 bytes: too short to be ciphertext


@given(st.lists(st.one_of(st.text(max_size=60), st.sampled_from(PLAINTEXT_SECRETS))))
def test_a_batch_of_short_texts_holds_nothing_shaped_like_ciphertext(values: list[str]) -> None:
    """``short_texts`` lets encrypt-existing skip ``looks_encrypted`` for a whole batch."""
    if short_texts(values):
        assert all(value and not looks_encrypted(value) for value in values)
    assert short_texts(values) == all(0 < len(value) < 39 for value in values)


_WORD_LED = st.builds(
    lambda word, sep, rest: word + sep + rest,
    st.text("abcxyzAB", min_size=1, max_size=12),
    st.sampled_from(["_", "-", ":", "."]),
    st.text("abcXYZ019+/=_-.:$|\n ", max_size=120),
)
_IV, _CT = base64.b64encode(bytes(range(12))).decode(), base64.b64encode(bytes(40)).decode()
_CIPHERTEXTS = [
    f"enc_{_IV}:{_CT}",  # word-led, but split by ":": every rule applies
    f"enc-{_IV}${_CT}",
    f"v1:{_IV}:{_CT}",
    base64.b64encode(os.urandom(40)).decode(),
    "zzz" + base64.b64encode(os.urandom(40)).decode(),  # sorts after every key
    os.urandom(32).hex(),
    Fernet(Fernet.generate_key()).encrypt(b"secret").decode(),
]


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            _WORD_LED,
            st.sampled_from(PLAINTEXT_SECRETS),
            st.sampled_from(_CIPHERTEXTS),
            st.text(max_size=60),
        )
    )
)
def test_a_batch_of_api_keys_holds_nothing_shaped_like_ciphertext(values: list[str]) -> None:
    """``api_keys`` lets encrypt-existing skip ``looks_encrypted`` for a batch of
    word-led keys; a batch it accepts holds no value that rule would stop."""
    if api_keys(values, "\n".join(values)):
        assert values and not any(looks_encrypted(value) for value in values)
    keys = [f"sk_live_{os.urandom(40).hex()}", f"ghp_{os.urandom(18).hex()}", "xoxb-1-" + "a" * 50]
    assert api_keys(keys, "\n".join(keys))
    assert api_keys(keys[:1] * 3, "\n".join(keys[:1] * 3))  # one prefix: decided by the ends
    for sealed in _CIPHERTEXTS:
        assert looks_encrypted(sealed)
        for batch in ([*keys, sealed], [sealed, *keys], [keys[0], sealed, keys[0]]):
            assert not api_keys(batch, "\n".join(batch))


def test_a_word_led_value_is_plaintext_unless_a_separator_splits_it() -> None:
    """``sk_live_…`` and ``ghp_…`` are API keys, decided by one match; the same word
    before ``:`` or ``$`` parts (``enc_<iv>:<ciphertext>``) still gets every rule."""
    iv = base64.b64encode(bytes(range(12))).decode()  # no + or /: one base64 part with enc_
    sealed = base64.b64encode(_sealed(16)).decode()
    assert not looks_encrypted("enc_" + iv + sealed)
    assert not looks_encrypted("sk_live_" + base64.b64encode(os.urandom(60)).decode())
    assert looks_encrypted("enc_" + iv + ":" + sealed)
    assert looks_encrypted("enc-" + iv + "$" + sealed)
    assert looks_encrypted("v1:" + iv + ":" + sealed)
