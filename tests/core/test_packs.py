"""The packed backup format: every value comes back exactly, tokens are kept
smaller than their text, and damaged packs are refused, never misread."""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn._core import packs


def token(version: int, size: int) -> str:
    raw = os.urandom(size)
    return f"kt1:{version}:" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


tokens_ = st.builds(token, st.integers(1, 12_000), st.integers(28, 400))
text = st.text(max_size=60)
values = st.one_of(tokens_, text, st.binary(max_size=60))
keys = st.one_of(
    st.integers(-(2**70), 2**70),
    st.text(max_size=12),
    st.tuples(st.integers(-5, 5), st.text(max_size=5)),
)


def roundtrip(
    pks: list[tuple[object, ...]],
    olds: list[object],
    news: list[object],
    opened: tuple[str, list[bytes]] | None = None,
) -> packs.Pack:
    data, used = packs.pack(pks, olds, news, opened=opened)
    back = packs.unpack(data)
    assert back.pks == [list(pk) for pk in pks]
    if any(isinstance(v, bytes) for v in olds):  # a binary column's pack: all bytes
        olds = [v.encode() if isinstance(v, str) else v for v in olds]
    assert back.olds == olds
    assert back.fingerprints == [packs.fingerprint(n) for n in news]
    assert used == packs.versions_used(olds)
    return back


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_value_comes_back_exactly(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 40))
    kinds = ["tokens", "one version", "opened", "text", "bytes", "mixed"]
    kind = data.draw(st.sampled_from(kinds))
    opened = None
    olds: list[object]
    if kind == "opened":  # bodies as the re-encryption decoded them: one size or several
        version = data.draw(st.integers(1, 12_000))
        sizes = data.draw(st.lists(st.integers(28, 90), min_size=1, max_size=2))
        bodies = [os.urandom(data.draw(st.sampled_from(sizes))) for _ in range(n)]
        olds = [
            f"kt1:{version}:" + base64.urlsafe_b64encode(b).rstrip(b"=").decode() for b in bodies
        ]
        opened = str(version), bodies
    elif kind == "tokens":
        olds = data.draw(st.lists(tokens_, min_size=n, max_size=n))
    elif kind == "one version":
        size = data.draw(st.integers(28, 90))
        olds = [token(3, size) for _ in range(n)]
    elif kind == "text":
        olds = data.draw(st.lists(text, min_size=n, max_size=n))
    elif kind == "bytes":
        olds = data.draw(st.lists(st.binary(max_size=60), min_size=n, max_size=n))
    else:
        olds = data.draw(st.lists(values, min_size=n, max_size=n))
    pks = data.draw(
        st.lists(keys.map(lambda k: k if isinstance(k, tuple) else (k,)), min_size=n, max_size=n)
    )
    news = data.draw(
        st.lists(st.one_of(tokens_, text, st.binary(max_size=20)), min_size=n, max_size=n)
    )
    roundtrip(pks, olds, news, opened)


def test_opened_bodies_that_do_not_match_the_values_are_refused() -> None:
    olds = [token(1, 40) for _ in range(3)]
    bodies = [base64.urlsafe_b64decode(t[6:] + "=" * (-len(t[6:]) % 4)) for t in olds]
    pks = [(i,) for i in range(3)]
    with pytest.raises(ValueError, match="opened"):
        packs.pack(pks, olds, olds, opened=("1", bodies[:2]))
    with pytest.raises(ValueError, match="opened"):
        packs.pack(pks, olds, olds, opened=("01x", bodies))
    assert packs.unpack(packs.pack(pks, olds, olds, opened=("1", bodies))[0]).olds == olds


def test_a_batch_longer_than_a_decoding_step_packs_as_it_would_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tokens of one version and length are decoded a step at a time: the pack is
    the one a single step makes, and a token that differs in a later step (another
    version, a "+", a value that is no token) sends the batch the long way."""
    size = 61  # 88-character tokens: hundreds of them to a step
    olds = [token(4, size) for _ in range(3 * packs._CHUNK // 88 + 5)]
    pks = [(i,) for i in range(len(olds))]
    stepped, _ = packs.pack(pks, olds, olds)
    monkeypatch.setattr(packs, "_CHUNK", 10**9)
    whole, _ = packs.pack(pks, olds, olds)
    assert stepped == whole
    monkeypatch.undo()
    assert packs.unpack(stepped).olds == olds
    for odd in (token(5, size), "kt1:4:" + "+" + token(4, size)[7:], b"x" * 88, "x" * 88):
        changed: list[object] = [*olds[:-3], odd, *olds[-2:]]
        roundtrip(pks, changed, olds)


def test_near_tokens_are_kept_as_text_and_come_back() -> None:
    good = token(1, 40)
    near = [
        good.replace("kt1:1:", "kt1:01:"),  # a version spelled oddly
        good[:-1],  # a length base64 cannot have
        good[:10] + "+" + good[11:],  # the standard alphabet, not url-safe
        good + "\n" + good,  # two lines
        "kt1:x:" + good[6:],
        "kt1:\u00b2:" + good[6:],  # a digit, but not an ASCII one
        good + "=",
        "kt1:1:",
    ]
    for odd in near:
        for olds in ([odd], [good, odd], [odd, good]):
            pks = [(i,) for i in range(len(olds))]
            roundtrip(pks, list(olds), [good] * len(olds))


def test_tokens_are_kept_in_less_space_than_their_text() -> None:
    for secret in (*range(4, 40), 200, 2000):  # a token is 28 bytes more than its secret
        olds = [token(1, 28 + secret) for _ in range(1000)]
        news = [token(2, 28 + secret) for _ in range(1000)]
        data, used = packs.pack([(i,) for i in range(1000)], olds, news)
        assert len(data) <= sum(map(len, olds)), secret
        assert used == {1: 1000}
    for secret in range(4):  # the header and fingerprint weigh most on the shortest
        olds = [token(1, 28 + secret) for _ in range(1000)]
        data, _ = packs.pack([(i,) for i in range(1000)], olds, olds)
        assert len(data) <= 1.05 * sum(map(len, olds)), secret
    mixed = [token(v, 34 + v) for v in range(1, 1001)]
    data, _ = packs.pack([(i,) for i in range(1000)], mixed, mixed)
    assert len(data) <= sum(map(len, mixed))


def test_versions_counts_tokens_and_tokens_inside_documents() -> None:
    doc = json.dumps({"k": token(3, 30), "j": token(2, 30)})
    olds = [token(2, 30), doc, b"\xff", "plain"]
    assert packs.versions_used(olds) == {2: 2, 3: 1}
    assert packs.pack([(1,), (2,), (3,), (4,)], olds, olds)[1] == {2: 2, 3: 1}


def test_fingerprints_tell_written_values_apart() -> None:
    written = token(2, 40)
    assert packs.fingerprint(written) == written[-packs.FINGERPRINT :]
    assert packs.fingerprint(written.encode()) == packs.fingerprint(written)  # a BLOB column
    assert packs.fingerprint(token(2, 40)) != packs.fingerprint(written)
    doc = json.dumps({"a": written})
    assert len(packs.fingerprint(doc)) == packs.FINGERPRINT
    assert packs.fingerprint(doc) != packs.fingerprint(doc.replace('"a"', '"b"'))
    assert packs.fingerprint(b"\xff\x00") != packs.fingerprint(b"\xff\x01")
    both = packs.fingerprints([written, doc])
    assert [both[0::2], both[1::2]] == [packs.fingerprint(written), packs.fingerprint(doc)]
    same = [token(2, 40) for _ in range(3)]  # one length: sliced from one string
    assert packs.unpack(packs.pack([(1,), (2,), (3,)], same, same)[0]).fingerprints == [
        packs.fingerprint(v) for v in same
    ]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_packs_are_refused_never_misread(data: st.DataObject) -> None:
    olds = [token(1, 40) for _ in range(5)]
    good, _ = packs.pack([(i,) for i in range(5)], olds, olds)
    how = data.draw(st.sampled_from(["truncate", "flip", "random", "extend"]))
    if how == "truncate":
        bad = good[: data.draw(st.integers(0, len(good) - 1))]
    elif how == "flip":
        at = data.draw(st.integers(0, len(good) - 1))
        bad = good[:at] + bytes([good[at] ^ data.draw(st.integers(1, 255))]) + good[at + 1 :]
    elif how == "random":
        bad = data.draw(st.binary(max_size=200))
    else:
        bad = good + data.draw(st.binary(min_size=1, max_size=20))
    try:
        back = packs.unpack(bad)
    except packs.CorruptPack:
        return
    # A flip inside the values or fingerprints still parses: it changes what
    # restore would compare or put back, never the number of rows.
    assert len(back.olds) == len(back.pks) == len(back.fingerprints) == 5


def test_a_header_naming_another_form_is_refused() -> None:
    head = zlib.compress(b'{"pks":"json","form":"pickle","lengths":[1]}')
    data = b"ktb1" + struct.pack(">I", len(head)) + head
    keys = zlib.compress(b"[[1]]")
    data += struct.pack(">I", len(keys)) + keys + struct.pack(">I", 1) + b"x" + b"A" * 11
    with pytest.raises(packs.CorruptPack):
        packs.unpack(data)
    assert "values" in repr(packs.unpack(packs.pack([(1,)], ["x"], ["y"])[0]))
