"""Adopting existing databases: legacy readers, import-legacy, verify, the read fallback."""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
import sqlite3
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import App, Database, assert_no_secret
from hypothesis import given, settings
from hypothesis import strategies as st
from legacy_encoders import LAYOUTS, fernet_key, raw_key, trek

import keyturn
from keyturn import ConfigError, InvalidToken, LegacyKeyError
from keyturn.legacy import LegacyReader, parse_legacy

OLD = "OLD_ENCRYPTION_KEY"


def reader_for(layout: str, *keys: str) -> LegacyReader:
    body, _, _ = LAYOUTS[layout]
    spec = parse_legacy(tomllib.loads(f'name = "old"\nkey_env = "{OLD}"\n' + body), "test")
    return LegacyReader(spec, lambda s: [(f"env:{OLD}", k) for k in keys])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reader_opens_what_other_code_wrote(layout: str) -> None:
    _, encode, make_key = LAYOUTS[layout]
    key = make_key()
    reader = reader_for(layout, key)

    @settings(max_examples=30, deadline=None)
    @given(st.binary(max_size=300))
    def round_trip(plaintext: bytes) -> None:
        value = encode(key, plaintext)
        assert reader.recognises(value)
        assert reader.decrypt(value) == plaintext

    round_trip()
    # A kt1 token, plaintext API keys and other layouts are not this layout.
    assert not reader.recognises("kt1:1:" + "A" * 60)
    assert not reader.recognises("sk_live_51H8PLAINTEXTzzA")
    assert not reader.recognises("")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_values_size_bounds_its_plaintext(layout: str) -> None:
    """What import-legacy's width check reads instead of decrypting: AES-GCM's
    plaintext is the ciphertext less its tag; Fernet's less its padding, at most
    a block. No key is needed to tell."""
    _, encode, make_key = LAYOUTS[layout]
    key = make_key()
    reader = reader_for(layout)  # no key at all

    @settings(max_examples=30, deadline=None)
    @given(st.binary(max_size=300))
    def bounded(plaintext: bytes) -> None:
        most = reader.longest(encode(key, plaintext))
        assert most is not None
        if reader.spec.format == "fernet":
            assert len(plaintext) <= most < len(plaintext) + 16
        else:
            assert most == len(plaintext)

    bounded()
    for value in ("kt1:1:" + "A" * 60, "sk_live_51H8PLAINTEXTzzA", "", None, 42):
        assert reader.longest(value) is None


@pytest.mark.parametrize("iv", ["key", "prefix"])
@pytest.mark.parametrize("padding", ["pkcs7", "naive", "zeroes", "oneandzeroes"])
def test_a_cbc_values_size_bounds_its_plaintext(iv: str, padding: str) -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = os.urandom(32)
    spec = parse_legacy(
        {"name": "cbc", "format": "aes-cbc", "key_env": OLD, "iv": iv, "padding": padding}, "t"
    )
    reader = LegacyReader(spec, lambda s: [(f"env:{OLD}", key.hex())])

    @settings(max_examples=30, deadline=None)
    # UTF-8 text, as the format checks; no end a naive or zero padding would eat
    @given(st.text(max_size=60).map(str.encode).filter(lambda p: not p.endswith((b"*", b"\0"))))
    def bounded(plaintext: bytes) -> None:
        n = 16 - len(plaintext) % 16
        fill = {
            "pkcs7": bytes([n]) * n,
            "naive": b"*" * n,
            "zeroes": bytes(n - 1) + bytes([n]),
            "oneandzeroes": b"\x80" + bytes(n - 1),
        }[padding]
        start = os.urandom(16) if iv == "prefix" else key[:16]
        encryptor = Cipher(algorithms.AES(key), modes.CBC(start)).encryptor()
        sealed = encryptor.update(plaintext + fill) + encryptor.finalize()
        value = base64.b64encode((start if iv == "prefix" else b"") + sealed).decode()
        assert reader.decrypt(value) == plaintext
        most = reader.longest(value)
        assert most is not None and len(plaintext) <= most < len(plaintext) + 16

    bounded()


def test_an_apps_own_reader_bounds_nothing() -> None:
    """An app's reader may give back more than its value holds: no bound, so
    import-legacy's width check asks the reader for each value's plaintext."""
    from keyturn.legacy import UNBOUNDED

    spec = parse_legacy(
        {
            "name": "app",
            "format": "python",
            "reader": "json:loads",
            "prefix": "app1:",
            "key_env": OLD,
        },
        "t",
    )
    reader = LegacyReader(spec, lambda s: [])
    assert reader.longest("app1:x") == reader.longest(b"app1:\x00") == UNBOUNDED
    assert reader.longest("x") is None and reader.longest("") is None


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_edit_is_refused_or_not_recognised(layout: str) -> None:
    _, encode, make_key = LAYOUTS[layout]
    key = make_key()
    reader = reader_for(layout, key)
    value = encode(key, b"sk_live_secret")
    alphabet = "0123456789abcdefABCDEF+/_-=:$xz"
    for i in range(len(value)):
        for ch in random.Random(i).sample(alphabet, 3):
            edited = value[:i] + ch + value[i + 1 :]
            if edited == value or not reader.recognises(edited):
                continue
            try:
                opened = reader.decrypt(edited)
            except InvalidToken:
                continue
            # Only an edit that leaves the same bytes (hex case, base64 padding bits) opens.
            assert opened == b"sk_live_secret"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_wrong_key_never_decrypts_to_garbage(layout: str) -> None:
    _, encode, make_key = LAYOUTS[layout]
    value = encode(make_key(), b"secret")
    with pytest.raises(InvalidToken):
        reader_for(layout, make_key()).decrypt(value)


def test_previous_key_is_tried_in_order() -> None:
    new, previous = raw_key(), raw_key()
    _, encode, _ = LAYOUTS["floh"]
    both = reader_for("floh", new, previous)
    assert both.decrypt(encode(new, b"a")) == b"a"
    assert both.decrypt(encode(previous, b"b")) == b"b"
    with pytest.raises(InvalidToken):
        reader_for("floh", new).decrypt(encode(previous, b"b"))
    f1, f2 = fernet_key(), fernet_key()
    _, fenc, _ = LAYOUTS["fernet"]
    assert reader_for("fernet", f1, f2).decrypt(fenc(f2, b"c")) == b"c"


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ('format = "aes-gcm"\nkey = "hunter2hunter2"', "keys never go in keyturn.toml"),
        ('format = "aes-gcm"\nkey_env = "X"\nkdf = "pbkdf2"', "needs `salt`"),
        ('format = "aes-gcm"\nkey_env = "X"\norder = "ct,iv,tag"', "`order`"),
        ('format = "fernet"\nkey_env = "X"\niv_len = 16', "do not apply to format fernet"),
        ('format = "aes-gcm"', "exactly one of `key_env`"),
        ('format = "rot13"\nkey_env = "X"', "`format`"),
        ('format = "aes-gcm"\nkey_env = "X"\nkey_encoding = "ebcdic"', "`key_encoding`"),
        ('format = "fernet"\nkey_env = "X"\nkdf = "md5"', "`kdf` must be one of"),
        ('format = "fernet"\nkey_env = "X"\nkdf = "pbkdf2"\nsalt = "s"', "and `iterations`"),
        ('format = "fernet"\nkey_env = "X"\nsalt = "s"', "apply to a derived key"),
        ('format = "fernet"\nkey_env = "X"\nkdf = "hkdf"\nsalts = ["a"]', "applies to kdf pbkdf2"),
        ('format = "aes-gcm"\nkey_env = "X"\nkey_bytes = 32', "cuts a key read with"),
        (
            'format = "aes-gcm"\nkey_env = "X"\nkey_encoding = "utf8"\nkey_bytes = 20',
            "16, 24 or 32",
        ),
        (
            'format = "aes-gcm"\nkey_env = "X"\nkdf = "sha256"\nkey_encoding = "utf8"',
            "only to kdf raw",
        ),
    ],
)
def test_legacy_config_errors(entry: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_legacy(tomllib.loads('name = "old"\n' + entry), "keyturn.toml: [[legacy]] entry 1")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "key", "told"),
    [
        (
            "",
            "k" * 64,
            "hex (not hex), base64 (48 bytes), base64url (48 bytes), its characters (64",
        ),
        ('key_encoding = "hex"\n', "zz" * 16, "read as hex (not hex)"),
        ('key_encoding = "utf8"\n', "short", "its characters (5 UTF-8 bytes)"),
        ('key_encoding = "utf8"\nkey_bytes = 32\n', "x" * 20, "its characters (20 UTF-8 bytes)"),
    ],
)
def test_a_key_read_the_wrong_way_says_how_it_was_read(options: str, key: str, told: str) -> None:
    """The error names every way the key text was read, and never the key."""
    spec = parse_legacy(
        tomllib.loads(f'name = "old"\nkey_env = "{OLD}"\nformat = "aes-gcm"\n{options}'), "test"
    )
    reader = LegacyReader(spec, lambda s: [(f"env:{OLD}", key)])
    with pytest.raises(LegacyKeyError, match=re.escape(told)) as info:
        reader.keys()
    assert key not in str(info.value) and "key_encoding" in str(info.value)


# -- a whole app: mixed columns through the CLI -----------------------------------------


def legacy_app(
    app: App, monkeypatch: pytest.MonkeyPatch, layout: str, rows: int = 36
) -> tuple[dict[int, str | None], str]:
    """accounts(id, api_key) holding plaintext, legacy values, NULL and ''."""
    body, encode, make_key = LAYOUTS[layout]
    key = make_key()
    expected: dict[int, str | None] = {}
    with sqlite3.connect(app.db) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, api_key TEXT)")
        for i in range(1, rows + 1):
            plain: str | None = f"sk_live_{i}_Päss-{os.urandom(4).hex()}"
            stored = plain
            if i % 6 == 0:
                plain = stored = None
            elif i % 6 == 1:
                plain = stored = ""
            elif i % 6 != 2:
                stored = encode(key, plain.encode())
            conn.execute("INSERT INTO accounts VALUES (?, ?)", (i, stored))
            expected[i] = plain
    conn.close()
    app.write_config(
        'database = "sqlite:///app.db"\n\n'
        f'[[legacy]]\nname = "old"\nkey_env = "{OLD}"\n{body}\n'
        '[[columns]]\ntable = "accounts"\ncolumn = "api_key"\nlegacy = "old"\n'
    )
    app.env[OLD] = key
    monkeypatch.setenv(OLD, key)
    return expected, key


def counts_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def read_all(app: App, plaintext_ok: bool = False) -> dict[int, str | None]:
    """Every value decrypted (or, with ``plaintext_ok``, left plaintext in the i%6==2 rows)."""
    with keyturn.open(app.config) as store:
        return {
            i: v
            if not v or (plaintext_ok and i % 6 == 2 and not v.startswith("kt1:"))
            else store.decrypt(v, context="accounts.api_key")
            for i, v in app.sql("SELECT id, api_key FROM accounts")
        }


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_take_over_a_legacy_column(app: App, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    expected, key = legacy_app(app, monkeypatch, layout)
    plaintext_rows = sum(1 for i in expected if i % 6 == 2)
    legacy_rows = sum(1 for i in expected if i % 6 in (3, 4, 5))
    outputs = [app.cli("init", check=True)]

    status = counts_of(app.cli("status", "--json", check=True))["columns"][0]
    assert (status["legacy"], status["plaintext"]) == (legacy_rows, plaintext_rows)

    # encrypt-existing encrypts the plaintext and never the legacy values.
    enc = counts_of(app.cli("encrypt-existing", "--json", check=True))
    assert (enc["encrypted"], enc["skipped_legacy"]) == (plaintext_rows, legacy_rows)

    # A wrong legacy key: exit 3 naming the variable, the file byte-identical.
    before = app.db.read_bytes()
    wrong = app.cli("import-legacy", "--yes", env={**app.env, OLD: LAYOUTS[layout][2]()})
    assert wrong.returncode == 3, wrong.stderr
    assert "open none of the first" in wrong.stderr and "Nothing was written" in wrong.stderr
    assert app.db.read_bytes() == before
    missing = app.cli("import-legacy", "--yes", env={k: v for k, v in app.env.items() if k != OLD})
    assert missing.returncode == 3 and f"env var {OLD}, which is not set" in missing.stderr
    plan = counts_of(app.cli("rotate", "--dry-run", "--json", check=True))
    assert (plan["skipped_legacy"], plan["rotated"]) == (legacy_rows, plaintext_rows)
    dry = app.cli("import-legacy", "--dry-run", "--json", check=True)
    assert counts_of(dry)["imported"] == legacy_rows
    assert app.db.read_bytes() == before

    done = counts_of(app.cli("import-legacy", "--yes", "--json", check=True))
    assert (done["imported"], done["already_kt1"], done["failed"]) == (
        legacy_rows,
        plaintext_rows,
        0,
    )
    assert read_all(app) == expected

    # Once no legacy value remains, the legacy key can leave the environment.
    app.env.pop(OLD)
    monkeypatch.delenv(OLD)
    status = counts_of(app.cli("status", "--json", check=True))["columns"][0]
    assert status["legacy"] == 0 and status["by_version"] == {"1": legacy_rows + plaintext_rows}
    outputs.append(app.cli("verify", check=True))
    assert counts_of(app.cli("verify", "--json", check=True))["ok"] == legacy_rows + plaintext_rows
    again = counts_of(app.cli("import-legacy", "--yes", "--json", check=True))
    assert again["imported"] == 0
    outputs.append(app.cli("rotate", "--yes", check=True))
    assert read_all(app) == expected
    for proc in (*outputs, wrong, missing, dry):
        assert_no_secret(proc.stdout + proc.stderr, key, *(v for v in expected.values() if v))


def test_plaintext_is_encrypted_only_when_asked(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    expected, _ = legacy_app(app, monkeypatch, "trek")
    app.cli("init", check=True)
    left = app.cli("import-legacy", "--yes", check=True)
    assert "--include-plaintext" in left.stdout
    assert app.sql("SELECT api_key FROM accounts WHERE id = 2") == [(expected[2],)]
    both = counts_of(app.cli("import-legacy", "--yes", "--include-plaintext", "--json", check=True))
    assert both["plaintext"] == sum(1 for i in expected if i % 6 == 2) and both["imported"] == 0
    assert read_all(app) == expected
    assert app.sql("SELECT count(*) FROM accounts WHERE api_key NOT LIKE 'kt1:%'") == [
        (sum(1 for v in expected.values() if v is not None and v == ""),)
    ]


def test_verify_lists_failures_by_pk_and_prints_no_secret(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected, key = legacy_app(app, monkeypatch, "trek")
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    # A corrupted kt1 token (id 2) and a legacy value under another key (id 3).
    token = app.sql("SELECT api_key FROM accounts WHERE id = 2")[0][0]
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    other = trek(LAYOUTS["trek"][2](), b"x")
    app.sql("UPDATE accounts SET api_key = ? WHERE id = 2", (flipped,))
    app.sql("UPDATE accounts SET api_key = ? WHERE id = 3", (other,))
    proc = app.cli("verify")
    assert proc.returncode == 1
    assert "failed: accounts.api_key at primary key 2" in proc.stdout
    assert "failed: accounts.api_key at primary key 3" in proc.stdout
    report = counts_of(app.cli("verify", "--json"))
    assert report["failed"] == 2 and report["legacy_ok"] == 17 and report["ok"] == 5
    assert {r["pk"] for r in report["failed_rows"]} == {2, 3}
    # Without the legacy key, legacy values are counted as unchecked, not failed.
    no_key = app.cli("verify", "--json", env={k: v for k, v in app.env.items() if k != OLD})
    assert counts_of(no_key)["legacy_unchecked"] == 18
    assert no_key.returncode == 1  # the failed rows come first
    app.sql("UPDATE accounts SET api_key = NULL WHERE id IN (2, 3)")
    unchecked = app.cli("verify", env={k: v for k, v in app.env.items() if k != OLD})
    assert unchecked.returncode == 3 and "were not checked" in unchecked.stderr
    assert f"legacy values not checked: legacy reader old needs its key in env var {OLD}" in (
        unchecked.stdout
    )
    assert_no_secret(
        proc.stdout + proc.stderr + no_key.stdout, key, *(v for v in expected.values() if v)
    )


def test_store_reads_legacy_values_and_says_to_rewrap(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    expected, key = legacy_app(app, monkeypatch, "trek")
    app.cli("init", check=True)
    caplog.set_level(logging.DEBUG)
    with keyturn.open(app.config) as store:
        legacy = app.sql("SELECT api_key FROM accounts WHERE id = 3")[0][0]
        assert store.decrypt(legacy, context="accounts.api_key") == expected[3]
        assert store.needs_rewrap(legacy)
        assert store.rewrap_needed["accounts.api_key"] == 1
        for _ in range(438):  # one line per column a minute, not one per value read
            store.decrypt(legacy, context="accounts.api_key")
        assert store.rewrap_needed["accounts.api_key"] == 439
        fresh = store.encrypt(expected[3] or "", context="accounts.api_key")
        assert not store.needs_rewrap(fresh) and not store.needs_rewrap(None)
        assert store.decrypt(fresh, context="accounts.api_key") == expected[3]
        # The reader belongs to its column: elsewhere a legacy value is just invalid.
        with pytest.raises(InvalidToken):
            store.decrypt(legacy, context="users.secret")
        monkeypatch.delenv(OLD)
    events = [r for r in caplog.records if getattr(r, "event", None) == "keyturn.rewrap_needed"]
    assert len(events) == 1
    assert (events[0].table, events[0].column, events[0].legacy_format) == (  # type: ignore[attr-defined]
        "accounts",
        "api_key",
        "aes-gcm",
    )
    assert_no_secret(caplog.text, key, *(v for v in expected.values() if v))
    # Without the key, a legacy value fails with a message naming the variable.
    with keyturn.open(app.config) as store:
        with pytest.raises(LegacyKeyError, match=OLD):
            store.decrypt(legacy, context="accounts.api_key")
        assert store.decrypt(fresh, context="accounts.api_key") == expected[3]


def test_import_legacy_survives_sigkill(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    expected, _ = legacy_app(app, monkeypatch, "trek", rows=12_000)
    app.cli("init", check=True)
    legacy_rows = sum(1 for i in expected if i % 6 in (3, 4, 5))
    kills = app.kill_at_random(
        "import-legacy", "--yes", "--chunk-time", "0.02", "--max-rate", "8000",
        runs=4,
        window=(0.5, 1.2),
    )  # fmt: skip
    final = counts_of(app.cli("import-legacy", "--yes", "--json", check=True))
    assert final["failed"] == 0
    assert kills >= 1, "no run was killed mid-way"
    assert app.sql("SELECT count(*) FROM accounts WHERE api_key LIKE 'kt1:%'") == [(legacy_rows,)]
    # Every row exactly once: one decryption gives back the original plaintext.
    assert read_all(app, plaintext_ok=True) == expected


@pytest.mark.parametrize("pk_type", ["text", "composite"])
def test_import_and_verify_on_every_backend(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pk_type: str
) -> None:
    from conftest import base_env, run_cli

    key = fernet_key()
    _, encode, _ = LAYOUTS["fernet"]
    pk_sql, pk = {
        "text": ("name VARCHAR(40)", ["name"]),
        "composite": ("tenant VARCHAR(20), name VARCHAR(40)", ["tenant", "name"]),
    }[pk_type]
    database.execute(f"CREATE TABLE hooks ({pk_sql}, secret TEXT, PRIMARY KEY ({', '.join(pk)}))")
    expected: dict[tuple[str, ...], str] = {}
    for i in range(30):
        k = (f"hook-{i:02d}",) if pk_type == "text" else (f"t{i % 3}", f"hook-{i:02d}")
        plain = f"whsec_{i}_{os.urandom(4).hex()}"
        expected[k] = plain
        stored = plain if i % 5 == 0 else encode(key, plain.encode())
        cols = ", ".join(pk)
        marks = ", ".join(f":k{j}" for j in range(len(pk)))
        database.execute(
            f"INSERT INTO hooks ({cols}, secret) VALUES ({marks}, :s)",
            **{f"k{j}": v for j, v in enumerate(k)},
            s=stored,
        )
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n'
        f'[[legacy]]\nname = "django"\nformat = "fernet"\nkey_env = "{OLD}"\n'
        f'[[columns]]\ntable = "hooks"\ncolumn = "secret"\nprimary_key = {json.dumps(pk)}\n'
        'bind = "row"\nlegacy = "django"\n'
    )
    env = {**base_env(), "KEYTURN_KEK": os.urandom(32).hex(), OLD: key}
    monkeypatch.setenv("KEYTURN_KEK", env["KEYTURN_KEK"])
    run_cli("init", cwd=tmp_path, env=env, check=True)
    report = json.loads(
        run_cli(
            "import-legacy",
            "--yes",
            "--include-plaintext",
            "--json",
            cwd=tmp_path,
            env=env,
            check=True,
        ).stdout
    )
    assert (report["imported"], report["plaintext"], report["failed"]) == (24, 6, 0)
    verified = json.loads(run_cli("verify", "--json", cwd=tmp_path, env=env, check=True).stdout)
    assert verified["ok"] == 30
    with keyturn.open(tmp_path / "keyturn.toml") as store:
        for *k, value in database.rows(f"SELECT {', '.join(pk)}, secret FROM hooks"):
            context = "hooks.secret#" + ",".join(k)
            assert store.decrypt(value, context=context) == expected[tuple(k)]


def test_legacy_key_file_must_be_private(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    expected, key = legacy_app(app, monkeypatch, "floh")
    app.env.pop(OLD)
    monkeypatch.delenv(OLD)
    key_file = app.dir / "secrets" / "old.key"
    key_file.parent.mkdir()
    key_file.write_text(key + "\n")
    key_file.chmod(0o644)
    app.write_config(
        app.config.read_text().replace(f'key_env = "{OLD}"', 'key_file = "secrets/old.key"')
    )
    app.cli("init", check=True)
    loose = app.cli("import-legacy", "--yes")
    assert loose.returncode == 3 and "chmod 600" in loose.stderr
    key_file.chmod(0o600)
    report = counts_of(
        app.cli("import-legacy", "--yes", "--include-plaintext", "--json", check=True)
    )
    assert report["failed"] == 0 and report["imported"] == 18
    assert read_all(app) == expected
    assert_no_secret(loose.stdout + loose.stderr, key)


NODE_APP_ENCRYPT = """
const crypto = require("crypto");
const key = Buffer.from(process.env.APP_KEY).subarray(0, 32);  // the app's own scheme
for (const plaintext of JSON.parse(process.argv[1])) {
  const iv = crypto.randomBytes(12);
  const cipher = crypto.createCipheriv("aes-256-gcm", key, iv);
  const ct = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
  console.log([iv, cipher.getAuthTag(), ct].map((b) => b.toString("hex")).join(":"));
}
"""


def test_values_a_node_app_wrote_with_a_text_key_are_read() -> None:
    """Written by Node's crypto as a Node app does (the key text's UTF-8 bytes cut to
    32), read back through the node-text-key layout."""
    import shutil

    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    key = "a-long-app-secret-from-the-env-file-0123456789"
    plaintexts = ["sk_live_from_node", "Pässwörd ✓", "x"]
    written = subprocess.run(
        ["node", "-e", NODE_APP_ENCRYPT, json.dumps(plaintexts)],
        env={**os.environ, "APP_KEY": key},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    body, _, _ = LAYOUTS["node-text-key"]
    spec = parse_legacy(tomllib.loads(f'name = "node"\nkey_env = "{OLD}"\n' + body), "test")
    reader = LegacyReader(spec, lambda s: [(f"env:{OLD}", key)])
    assert [reader.decrypt(v).decode() for v in written] == plaintexts
    auto = parse_legacy(
        tomllib.loads(f'name = "node"\nkey_env = "{OLD}"\nformat = "aes-gcm"\nencoding = "hex"\n'
                      'separator = ":"\n'), "test"
    )  # fmt: skip
    with pytest.raises(LegacyKeyError, match="key_bytes = 32"):
        LegacyReader(auto, lambda s: [(f"env:{OLD}", key)]).keys()


@pytest.mark.parametrize(
    ("padding", "padded", "plain"),
    [
        ("pkcs7", b"abc" + bytes([13]) * 13, b"abc"),
        ("pkcs7", b"abc" + bytes([12]) * 12 + bytes([13]), None),
        ("pkcs7", b"abc" + bytes([0]) * 13, None),
        ("pkcs7", bytes([16]) * 16, b""),
        ("naive", b"abc" + b"*" * 13, b"abc"),
        ("naive", b"abc" + b"x" * 13, None),
        ("zeroes", b"abc" + b"\0" * 12 + bytes([13]), b"abc"),
        ("zeroes", b"abc" + b"\1" * 12 + bytes([13]), None),
        ("oneandzeroes", b"abc\x80" + b"\0" * 12, b"abc"),
        ("oneandzeroes", b"abc" + b"\0" * 13, None),
    ],
)
def test_cbc_padding_is_checked_exactly(padding: str, padded: bytes, plain: bytes | None) -> None:
    from keyturn.legacy.aescbc import _unpad

    assert _unpad(padded, padding) == plain


def test_a_wrong_cbc_key_is_refused_with_a_count(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tag: every sampled value must open, and the refusal says how many did not."""
    from cryptography.hazmat.primitives import padding as pad
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = os.urandom(32)

    def cbc(plain: bytes) -> str:
        padder = pad.PKCS7(128).padder()
        data = padder.update(plain) + padder.finalize()
        encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
        return base64.b64encode(encryptor.update(data) + encryptor.finalize()).decode()

    with sqlite3.connect(app.db) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, api_key TEXT)")
        conn.executemany(
            "INSERT INTO accounts VALUES (?, ?)", [(i, cbc(f"s{i}".encode())) for i in range(50)]
        )
    conn.close()
    app.write_config(
        app.config.read_text()
        + f'\n[[legacy]]\nname = "cbc"\nformat = "aes-cbc"\npadding = "pkcs7"\nkey_env = "{OLD}"\n'
        '[[columns]]\ntable = "accounts"\ncolumn = "api_key"\nlegacy = "cbc"\n'
    )
    app.cli("init", check=True)
    before = app.sql("SELECT * FROM accounts")
    wrong = app.cli("import-legacy", "--yes", env={**app.env, OLD: os.urandom(32).hex()})
    assert wrong.returncode == 3 and "of the first 50 values" in wrong.stderr, wrong.stderr
    assert app.sql("SELECT * FROM accounts") == before
    done = app.cli("import-legacy", "--yes", env={**app.env, OLD: key.hex()}, check=True)
    assert "legacy key checked on 50 value(s)" in done.stdout
