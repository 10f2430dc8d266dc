"""Secrets inside JSON documents (seed 004: Floh's ``connector_config``): a column
entry's ``json_fields`` names them, every operation works on those fields only,
and the rest of each document stays exactly as it was, on every backend."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import App, Database, assert_no_secret
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

import keyturn
from keyturn import ConfigError
from keyturn._core.jsonpath import (
    locate,
    parse_path,
    quick_finder,
    splice,
    token_splicer,
)
from keyturn.errors import InvalidDocument

PATHS = ["$.apiKey", "$.oauth.refresh_token", "$.headers[*].value"]
JSON_FIELDS = json.dumps(PATHS)


def documents() -> dict[int, str | None]:
    """Documents as an app wrote them: spacing, key order, exponents, escapes and
    non-ASCII text that a re-serialisation would change, and the edge cases."""
    key = f"sk_live_{secrets.token_hex(6)}"
    return {
        1: '{"name": "github", "apiKey": "KEY", "retries": 1e2, "ratio": 0.50,\n'
        ' "oauth": {"refresh_token": "rt-\\u00e9t\\u00e9-1", "scope": ["repo", "user"]},\n'
        ' "headers": [{"name": "X-Token", "value": "hv-1"}, {"name": "Accept"},'
        ' {"value": "hv-2\\n"}], "note": "caf\u00e9 \\"quoted\\""}'.replace("KEY", key),
        2: '{"apiKey":"sk-compact-2","oauth":{}}',
        3: '{"apiKey": null, "oauth": {"refresh_token": ""}, "headers": []}',
        4: '{"apiKey": 12345, "other": "fine"}',
        5: "{}",
        6: None,
        7: '  {"headers": [{"value": "a"}, {"value": "b"}, {"value": "c"}], "z": true}  ',
        8: '{"apiKey": "sk-8", "legacyBlob": "kt1:1:someone-elses-text"}',
    }


def field_values(document: str | None) -> list[str]:
    if not document or not document.rstrip().endswith("}"):
        return []
    found = locate(document, [parse_path(p) for p in PATHS])
    return [v for spans in found for _, _, v in spans if isinstance(v, str) and v]


# The column types each backend stores JSON documents in.
KINDS = {"sqlite": ["TEXT", "JSON"], "postgresql": ["TEXT", "JSON", "JSONB"], "mysql": ["JSON"]}


def json_app(
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    bind: str = "column",
    kind: str | None = None,
) -> tuple[App, dict[int, str | None]]:
    kind = kind or KINDS[database.kind][0]
    if kind not in KINDS[database.kind]:
        pytest.skip(f"{database.kind} has no {kind} column type")
    database.execute(
        f"CREATE TABLE connector_definition (id INTEGER PRIMARY KEY, connector_config {kind})"
    )
    docs = documents()
    if kind == "TEXT":
        docs[9] = '{"apiKey": "sk-9", '  # not JSON: reported, never guessed at
    for i, doc in docs.items():
        database.execute("INSERT INTO connector_definition VALUES (:i, :d)", i=i, d=doc)
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n'
        '[[columns]]\ntable = "connector_definition"\ncolumn = "connector_config"\n'
        f'bind = "{bind}"\njson_fields = {JSON_FIELDS}\n'
    )
    monkeypatch.setenv("KEYTURN_KEK", secrets.token_hex(32))
    monkeypatch.chdir(tmp_path)
    return App(tmp_path, dict(os.environ)), docs


def stored(database: Database) -> dict[int, str | None]:
    """The documents as text (PostgreSQL's driver would parse json and jsonb)."""
    as_text = "::text" if database.kind == "postgresql" else ""
    return dict(database.rows(f"SELECT id, connector_config{as_text} FROM connector_definition"))


def skeleton(document: str | None, open_: Any = None) -> tuple[str | None, list[Any]]:
    """A document with its configured string fields blanked, and those fields' values
    (opened by ``open_(token, path)`` where they are tokens)."""
    if not document:
        return document, []
    if not document.rstrip().endswith("}"):
        return document, []  # the document that is not JSON
    paths = [parse_path(p) for p in PATHS]
    edits, values = [], []
    for path, spans in zip(paths, locate(document, paths), strict=True):
        for start, end, value in spans:
            if isinstance(value, str):
                edits.append((start, end, ""))
                opens = open_ is not None and value.startswith("kt1:")
                values.append(open_(value, path.text) if opens else value)
    return splice(document, edits), values


def opened(database: Database, bind: str = "column") -> dict[int, Any]:
    """Every document as (skeleton, field values opened): what the app wrote
    (``documents()`` through :func:`skeleton`) if nothing else was touched."""
    out = {}
    with keyturn.open() as store:
        for i, document in stored(database).items():
            base = (
                keyturn.row_context("connector_definition", "connector_config", (i,))
                if bind == "row"
                else "connector_definition.connector_config"
            )
            out[i] = skeleton(
                document, lambda token, path, b=base: store.decrypt(token, context=b + path)
            )
    return out


def written(docs: dict[int, str | None]) -> dict[int, Any]:
    return {i: skeleton(d) for i, d in docs.items()}


def report(app: App, *args: str, code: int = 0) -> dict[str, Any]:
    proc = app.cli(*args, "--json")
    assert proc.returncode == code, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.mark.parametrize("kind", ["TEXT", "JSON", "JSONB"])
def test_every_operation_on_the_fields_leaves_the_rest_of_each_document(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    app, docs = json_app(database, tmp_path, monkeypatch, kind=kind)
    secrets_ = [v for i, d in docs.items() if i != 9 for v in field_values(d) if len(v) > 3]
    app.cli("init", check=True)
    # What the database made of the documents (jsonb normalises them), opened
    # fields and all, before keyturn touched them: nothing but the fields may change.
    before = opened(database)
    if kind != "JSONB":
        assert before == written(docs), "the database keeps the documents' text as written"
    bad = [4, 9] if kind == "TEXT" else [4]

    status = {c["column"]: c for c in report(app, "status")["columns"]}
    base = "connector_definition.connector_config"
    assert set(status) == {base + p for p in PATHS}
    api = status[base + "$.apiKey"]
    assert (api["rows"], api["plaintext"], api["empty"], api["invalid"]) == (5, 3, 1, len(bad))
    assert status[base + "$.headers[*].value"]["plaintext"] == 5

    enc = report(app, "encrypt-existing", code=1)  # doc 4's apiKey is a number: failed
    assert enc["columns"][base + "$.apiKey"]["encrypted"] == 3
    refresh = enc["columns"][base + "$.oauth.refresh_token"]
    assert {k: n for k, n in refresh.items() if n} == {"encrypted": 1, "skipped_empty": 1}
    assert enc["columns"][base + "$.headers[*].value"]["encrypted"] == 5
    assert enc["columns"][base]["skipped_empty"] == 1  # the NULL document
    assert [r["pk"] for r in enc["failed_rows"]] == bad
    assert_no_secret(json.dumps(enc), *secrets_)
    assert opened(database) == before, "only the fields changed, byte for byte"
    assert "kt1:1:someone-elses-text" in (stored(database)[8] or "")

    verified = report(app, "verify", code=1)
    assert verified["ok"] == 9 and verified["failed"] == len(bad)
    rotated = report(app, "rotate", "--yes", code=1)
    assert rotated["columns"][base + "$.headers[*].value"]["rotated"] == 5
    assert rotated["rotated"] == 9
    assert opened(database) == before
    heads = {v.split(":")[1] for d in stored(database).values() for v in field_values(d)}
    assert heads == {"2"}

    app.cli("restore", rotated["job"], "--yes", check=True)
    assert opened(database) == before
    heads = {v.split(":")[1] for d in stored(database).values() for v in field_values(d)}
    assert heads == {"1"}
    report(app, "rotate", "--yes", "--workers", "2", "--rows-per-chunk", "10", code=1)
    assert opened(database) == before
    status = {c["column"]: c for c in report(app, "status")["columns"]}
    assert status[base + "$.apiKey"]["by_version"] == {"3": 3}


def test_a_token_moved_to_another_field_or_row_fails(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, docs = json_app(database, tmp_path, monkeypatch, bind="row")
    for i in {4, 9} & set(docs):  # only documents that encrypt cleanly
        database.execute(
            "UPDATE connector_definition SET connector_config = '{}' WHERE id = :i", i=i
        )
        docs[i] = "{}"
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    assert opened(database, "row") == written(docs)
    doc = json.loads(stored(database)[1] or "")
    moved = {**doc, "apiKey": doc["oauth"]["refresh_token"]}  # a field to another field
    database.execute(
        "UPDATE connector_definition SET connector_config = :d WHERE id = 1", d=json.dumps(moved)
    )
    other = json.dumps({"apiKey": doc["apiKey"]})  # a field to another row
    database.execute("UPDATE connector_definition SET connector_config = :d WHERE id = 5", d=other)
    verified = report(app, "verify", code=1)
    assert sorted(r["pk"] for r in verified["failed_rows"]) == [1, 5]
    base = "connector_definition.connector_config"
    assert verified["columns"][base + "$.apiKey"]["failed"] == 2


def workflow_app(
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    documents: list[dict[str, Any]],
    entry: str,
) -> App:
    """``workflow_run(id, variables)`` holding ``documents`` (JSON on MariaDB, text
    elsewhere), taken over by keyturn with the column ``entry`` (TOML lines)."""
    kind = "JSON" if database.kind == "mysql" else "TEXT"
    database.execute(f"CREATE TABLE workflow_run (id INTEGER PRIMARY KEY, variables {kind})")
    engine = create_engine(database.url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO workflow_run VALUES (:i, :d)"),
            [{"i": i, "d": json.dumps(d)} for i, d in enumerate(documents)],
        )
    engine.dispose()
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n[[columns]]\ntable = "workflow_run"\n'
        f'column = "variables"\n{entry}'
    )
    monkeypatch.setenv("KEYTURN_KEK", secrets.token_hex(32))
    monkeypatch.chdir(tmp_path)
    app = App(tmp_path, dict(os.environ))
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    return app


def test_the_app_editing_other_fields_during_a_rotation_keeps_every_edit(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compare-and-swap covers the whole document: an app process bumping a
    counter in the documents while keyturn rotates their secrets loses no bump,
    and every secret still opens."""
    rows = 3000
    documents = [{"token": f"tok-{i}", "n": 0, "keep": [i, "x"]} for i in range(rows)]
    app = workflow_app(database, tmp_path, monkeypatch, documents, 'json_fields = ["$.token"]\n')
    engine = create_engine(database.url)
    bumps: dict[int, int] = {}
    stop = threading.Event()

    def edit_once(row: int) -> int:
        """Bump the row's counter in one transaction holding the row."""
        if database.kind == "sqlite":
            conn = sqlite3.connect(tmp_path / "app.db", isolation_level=None, timeout=30)
            try:
                conn.execute("BEGIN IMMEDIATE")
                (doc,) = conn.execute(
                    "SELECT variables FROM workflow_run WHERE id = ?", (row,)
                ).fetchone()
                value = json.loads(doc)
                value["n"] += 1
                conn.execute(
                    "UPDATE workflow_run SET variables = ? WHERE id = ?", (json.dumps(value), row)
                )
                conn.execute("COMMIT")
            finally:
                conn.close()
            return int(value["n"])
        with engine.begin() as conn:
            (doc,) = conn.execute(
                text("SELECT variables FROM workflow_run WHERE id = :i FOR UPDATE"), {"i": row}
            ).one()
            value = json.loads(doc)
            value["n"] += 1
            conn.execute(
                text("UPDATE workflow_run SET variables = :d WHERE id = :i"),
                {"d": json.dumps(value), "i": row},
            )
        return int(value["n"])

    def edit() -> None:
        i = 0
        while not stop.is_set():
            row = (i * 7919) % rows
            i += 1
            bumps[row] = edit_once(row)

    editor = threading.Thread(target=edit)
    editor.start()
    try:
        rotation = app.start("rotate", "--yes", "--json", "--max-rate", "4000")
        out, err = rotation.communicate(timeout=240)
    finally:
        time.sleep(0.2)
        stop.set()
        editor.join()
        engine.dispose()
    assert rotation.returncode == 0, err
    assert json.loads(out)["rotated"] >= rows
    assert bumps, "the app made edits during the rotation"
    engine.dispose()
    with keyturn.open() as store:
        for i, doc in database.rows("SELECT id, variables FROM workflow_run"):
            value = json.loads(doc)
            assert value["n"] == bumps.get(i, 0), f"row {i}: an app edit was lost"
            assert value["keep"] == [i, "x"]
            assert store.decrypt(value["token"], context="workflow_run.variables$.token") == (
                f"tok-{i}"
            )


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("$.apiKey", "$.apiKey"),
        ('$["apiKey"]', "$.apiKey"),
        ('$["a b"].c', '$["a b"].c'),
        ("$.headers[*].value", "$.headers[*].value"),
        ("$[*]", "$[*]"),
        ("$.x-y_z", "$.x-y_z"),
    ],
)
def test_paths_are_read_in_one_canonical_spelling(path: str, canonical: str) -> None:
    assert parse_path(path).text == canonical


@pytest.mark.parametrize(
    "path", ["$", "apiKey", "$..apiKey", "$.a[0]", "$.*", "$.a[?(@.x)]", '$["a"', "$.1a", "$.a b"]
)
def test_paths_it_cannot_honour_are_refused(path: str) -> None:
    with pytest.raises(ConfigError, match="not supported"):
        parse_path(path)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "apiKey", "x y", "é"]), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.sampled_from([0, 2, None]), st.sampled_from(["$.a", "$.b[*].a", "$.apiKey"]))
def test_replacing_fields_changes_only_those_fields(value: Any, indent: Any, path: str) -> None:
    """Against the json module: the document parsed back is the document with the
    named string fields replaced, and nothing else differs."""
    document = json.dumps(value, indent=indent, ensure_ascii=False)
    parsed = parse_path(path)
    (spans,) = locate(document, [parsed])
    edited = splice(
        document, [(s, e, f"kt1:{v}") for s, e, v in spans if isinstance(v, str) and e >= 0]
    )

    def expect(node: Any, segments: tuple[Any, ...]) -> Any:
        if not segments:
            return f"kt1:{node}" if isinstance(node, str) else node
        head, rest = segments[0], segments[1:]
        if head is None and isinstance(node, list):
            return [expect(n, rest) for n in node]
        if isinstance(head, str) and isinstance(node, dict):
            return {k: expect(v, rest) if k == head else v for k, v in node.items()}
        return node

    assert json.loads(edited) == expect(value, parsed.segments)
    assert splice(document, [(s, e, v) for s, e, v in spans if isinstance(v, str)]) == document
    assert_both_ways_agree(document, [parsed])


def assert_both_ways_agree(document: str, paths: list[Any]) -> None:
    """The fast way (json module, then the strings found in the text), where it
    answers, finds what the thorough parse finds."""
    from keyturn._core.jsonpath import _find_plain, _parse

    fast, thorough = _find_plain(document, paths), _parse(document, paths)
    quick = quick_finder(paths)
    found = quick(document) if quick else None
    if found is not None:  # one string per path, where the thorough parse finds it
        assert [[f] for f in found] == thorough
        splicer = token_splicer(len(paths))
        if splicer is not None:  # the batch's way of putting tokens in, in any order
            new = [f"kt1:1:T{i}" for i in range(len(found))]
            edits = [(s, e, t) for (s, e, _), t in zip(found, new, strict=True)]
            assert splicer(document, found, *new) == splice(document, edits)
    if fast is None:
        return
    for quick, slow in zip(fast, thorough, strict=True):
        assert [f for f in quick if isinstance(f[2], str)] == [
            f for f in slow if isinstance(f[2], str)
        ]
        assert [(v, e < 0) for _, e, v in quick] == [(v, e < 0) for _, e, v in slow]


# JSON text written by hand: members may repeat, text is not escaped unless it must be.
_MEMBERS = st.sampled_from(["a", "b", "apiKey", "x y", "é"])
_TEXT = st.text(alphabet=st.sampled_from('ab"\\é :,{}[]\x01'), max_size=6)
_JSON_TEXT = st.recursive(
    st.sampled_from(["null", "1", "true", ' "a" ', '"apiKey"'])
    | _TEXT.map(lambda t: json.dumps(t, ensure_ascii=False)),
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]")
        | st.lists(st.tuples(_MEMBERS, inner), max_size=4).map(
            lambda pairs: (
                "{" + ", ".join(json.dumps(k, ensure_ascii=False) + ":" + v for k, v in pairs) + "}"
            )
        )
    ),
    max_leaves=10,
)


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(json.dumps(k, ensure_ascii=False) + ": " + v for k, v in pairs) + "}"


# Documents that mostly hold the fields $.apiKey and $.a.b, beside look-alikes:
# the same strings elsewhere, members named twice, member names as values.
_FIELD = st.sampled_from(['"kt1:1:AAAA"', '"apiKey"', '"b"', '"é"', "null", "7"]) | st.text(
    alphabet="abcé:- ", max_size=8
).map(lambda t: f'"{t}"')
_INNER = st.tuples(
    st.tuples(st.just("b"), _FIELD),
    st.lists(st.tuples(st.sampled_from(["b", "apiKey"]), _FIELD | _JSON_TEXT), max_size=1),
).flatmap(lambda t: st.permutations([t[0], *t[1]]))
_DOCUMENTS = (
    st.tuples(
        st.tuples(st.just("apiKey"), _FIELD),
        st.tuples(st.just("a"), _INNER.map(_object)),
        st.lists(st.tuples(st.sampled_from(["x y", "é", "b", "apiKey"]), _FIELD), max_size=2),
    )
    .flatmap(lambda t: st.permutations([t[0], t[1], *t[2]]))
    .map(_object)
)


@settings(max_examples=800, deadline=None)
@given(_DOCUMENTS | _JSON_TEXT, st.sampled_from([" ", "", "x", "\n"]))
def test_the_quick_finder_finds_what_the_thorough_parse_finds(document: str, tail: str) -> None:
    """Where the quick way answers (each field once, as a string), it is the
    thorough parse's answer, members named twice, look-alike strings and
    unescaped text included; where the text is not JSON it does not answer."""
    paths = [parse_path(p) for p in ["$.apiKey", "$.a.b"]]
    document += tail
    try:
        thorough = _parse_fields(document, paths)
    except InvalidDocument:
        assert quick_finder(paths)(document) is None  # type: ignore[misc]
        return
    assert_both_ways_agree(document, paths)
    assert thorough is not None


def _parse_fields(document: str, paths: list[Any]) -> list[Any]:
    from keyturn._core.jsonpath import _parse

    return _parse(document, paths)


@pytest.mark.parametrize(
    "document",
    [
        '{"apiKey": "a", "apiKey": "b"}',  # a member twice: the json module keeps one
        '{"oauth": {"refresh_token": "x"}, "oauth": {}}',
        '{"note": "apiKey", "apiKey": "q"}',
        '{"apiKey": "same", "note": "same"}',
        '{"same": 1, "apiKey": "same"}',
        '{"apiKey": "a\\u0062", "b": "ab"}',
        '{"headers": [{"value": "v"}, {"value": "v"}], "apiKey": {"nested": "x"}}',
        '[{"apiKey": "x"}]',
    ],
)
def test_tricky_documents_are_located_exactly(document: str) -> None:
    paths = [parse_path(p) for p in [*PATHS, "$.oauth.refresh_token"][:3]]
    assert_both_ways_agree(document, paths)
    from keyturn._core.jsonpath import _parse

    def values(found: list[list[Any]]) -> list[list[Any]]:
        return [[v for _, _, v in spans] for spans in found]

    assert values(locate(document, paths)) == values(_parse(document, paths))


def test_the_app_seals_opens_and_masks_documents_with_json_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keyturn.JsonFields: what an app writes, keyturn verifies and rotates, and the
    app reads back; text keeps every other character, dicts are copied."""
    import sqlite3

    with sqlite3.connect(tmp_path / "app.db") as conn:
        conn.execute("CREATE TABLE connector_definition (id INTEGER PRIMARY KEY, config TEXT)")
    conn.close()
    (tmp_path / "keyturn.toml").write_text(
        'database = "sqlite:///app.db"\n[[columns]]\ntable = "connector_definition"\n'
        f'column = "config"\nbind = "row"\njson_fields = {JSON_FIELDS}\n'
    )
    monkeypatch.setenv("KEYTURN_KEK", secrets.token_hex(32))
    monkeypatch.chdir(tmp_path)
    app = App(tmp_path, dict(os.environ))
    app.cli("init", check=True)
    text_doc = documents()[1] or ""
    as_dict = {"apiKey": "sk-dict", "oauth": {"refresh_token": None}, "n": 1.5, "headers": "x"}
    with keyturn.open() as store:
        fields = keyturn.JsonFields(store, "connector_definition.config")
        sealed = fields.encrypt(text_doc, pk=(1,))
        assert skeleton(sealed)[0] == skeleton(text_doc)[0]
        assert all(v.startswith("kt1:1:") for v in field_values(sealed))
        assert fields.encrypt(sealed, pk=(1,)) == sealed, "tokens are left as they are"
        assert json.loads(fields.decrypt(sealed, pk=(1,))) == json.loads(text_doc)
        sealed_dict = fields.encrypt(as_dict, pk=(2,))
        assert as_dict["apiKey"] == "sk-dict", "the app's dict is not modified"
        assert sealed_dict["oauth"] == {"refresh_token": None} and sealed_dict["n"] == 1.5
        assert fields.decrypt(sealed_dict, pk=(2,)) == as_dict
        masked = fields.mask(json.loads(sealed))
        assert masked["apiKey"] == "********" and masked["headers"][1] == {"name": "Accept"}
        assert masked["oauth"]["scope"] == ["repo", "user"]
        assert "********" in fields.mask(sealed) and "kt1:" not in fields.mask(sealed)
        with pytest.raises(keyturn.InvalidToken):
            fields.decrypt(sealed, pk=(2,))  # another row's document
        with pytest.raises(ConfigError, match="pass pk"):
            fields.encrypt(text_doc)
        with pytest.raises(keyturn.InvalidDocument, match=r"\$\.apiKey holds a number") as exc:
            fields.encrypt({"apiKey": 424242}, pk=(3,))
        assert "424242" not in str(exc.value)
        with pytest.raises(keyturn.InvalidDocument):
            fields.encrypt('{"apiKey": "sk-x"', pk=(3,))
        with pytest.raises(ConfigError, match="json_fields"):
            keyturn.JsonFields(store, "connector_definition.other")
        assert "sk-dict" not in repr(fields)
    for i, doc in ((1, sealed), (2, json.dumps(sealed_dict))):
        app.sql("INSERT INTO connector_definition VALUES (?, ?)", (i, doc))
    assert report(app, "verify")["ok"] == 5
    assert report(app, "rotate", "--yes")["rotated"] == 5
    with keyturn.open() as store:
        fields = keyturn.JsonFields(store, "connector_definition.config")
        ((doc,),) = app.sql("SELECT config FROM connector_definition WHERE id = 2")
        assert fields.decrypt(json.loads(doc), pk=(2,)) == as_dict


def test_legacy_encrypted_fields_are_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """import-legacy on fields: TREK-style ciphertexts inside documents, among
    plaintext fields, in the rows a ``where`` selects; status and every report
    count per field; other rows and fields stay as they were."""
    import sqlite3

    from legacy_encoders import passphrase, trek

    old = passphrase()
    docs = {
        1: json.dumps({"apiKey": trek(old, b"sk-legacy-1"), "note": "keep"}),
        2: json.dumps({"apiKey": "sk-plain-2", "oauth": {"refresh_token": trek(old, b"rt-2")}}),
        3: json.dumps({"apiKey": trek(old, b"sk-other-app")}),  # a row outside the filter
    }
    with sqlite3.connect(tmp_path / "app.db") as conn:
        conn.execute("CREATE TABLE integrations (id INTEGER PRIMARY KEY, kind TEXT, config TEXT)")
        for i, doc in docs.items():
            conn.execute(
                "INSERT INTO integrations VALUES (?, ?, ?)", (i, "own" if i < 3 else "x", doc)
            )
    conn.close()
    (tmp_path / "keyturn.toml").write_text(
        'database = "sqlite:///app.db"\n'
        '[[legacy]]\nname = "trek"\nkey_env = "OLD_KEY"\nformat = "aes-gcm"\nprefix = "enc:v1:"\n'
        'encoding = "base64"\norder = "iv,tag,ct"\nkdf = "sha256"\nsuffix = ":api_keys:v1"\n'
        '[[columns]]\ntable = "integrations"\ncolumn = "config"\nlegacy = "trek"\n'
        'where = { kind = ["own"] }\njson_fields = ["$.apiKey", "$.oauth.refresh_token"]\n'
    )
    monkeypatch.setenv("KEYTURN_KEK", secrets.token_hex(32))
    monkeypatch.setenv("OLD_KEY", old)
    monkeypatch.chdir(tmp_path)
    app = App(tmp_path, dict(os.environ))
    app.cli("init", check=True)
    base = "integrations.config"
    status = {c["column"]: c for c in report(app, "status")["columns"]}
    assert (status[base + "$.apiKey"]["legacy"], status[base + "$.apiKey"]["plaintext"]) == (1, 1)
    assert status[base + "$.oauth.refresh_token"]["legacy"] == 1
    enc = report(app, "encrypt-existing")
    assert enc["columns"][base + "$.apiKey"]["skipped_legacy"] == 1 and enc["encrypted"] == 1
    wrong = app.cli("import-legacy", "--yes", env={**app.env, "OLD_KEY": passphrase()})
    assert wrong.returncode == 3, wrong.stderr  # a wrong legacy key: refused, nothing written
    imported = report(app, "import-legacy", "--yes")
    assert imported["imported"] == 2 and imported["columns"][base + "$.apiKey"]["imported"] == 1
    with keyturn.open() as store:
        fields = keyturn.JsonFields(store, base)
        rows = dict(app.sql("SELECT id, config FROM integrations"))
        assert fields.decrypt(json.loads(rows[1])) == {"apiKey": "sk-legacy-1", "note": "keep"}
        assert fields.decrypt(json.loads(rows[2]))["oauth"] == {"refresh_token": "rt-2"}
    assert rows[3] == docs[3], "the row outside `where` is untouched"


def test_documents_survive_a_killed_parallel_rotation(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL a parallel rotation of JSON fields at a random moment and resume it:
    every document keeps everything but its fields, and every field is on v2."""
    from parallel_app import kill_mid_job_and_resume

    rows = 4000
    documents = [
        {"run": i, "secrets": [{"value": f"s{i}-a"}, {"value": f"s{i}-b"}]} for i in range(rows)
    ]
    entry = 'bind = "row"\njson_fields = ["$.secrets[*].value"]\n'
    app = workflow_app(database, tmp_path, monkeypatch, documents, entry)
    assert report(app, "status")["columns"][0]["by_version"] == {"1": 2 * rows}
    rotation = app.start(
        "rotate", "--yes", "--json", "--workers", "2", "--rows-per-chunk", "500",
        "--max-rate", "3000",
    )  # fmt: skip
    kill_mid_job_and_resume(
        rotation, database, lambda: app.cli("rotate", "--yes", "--json", process=True)
    )
    with keyturn.open() as store:
        for i, doc in database.rows("SELECT id, variables FROM workflow_run"):
            value = json.loads(doc)
            assert value["run"] == i and len(value["secrets"]) == 2
            for item, suffix in zip(value["secrets"], "ab", strict=True):
                assert item["value"].startswith("kt1:2:")
                context = keyturn.row_context("workflow_run", "variables", (i,))
                opened = store.decrypt(item["value"], context=context + "$.secrets[*].value")
                assert opened == f"s{i}-{suffix}"


def sqlite_documents_app(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    documents_: list[dict[str, Any]],
    json_fields: list[str],
    extra: str = "",
) -> App:
    """An app whose SQLite table ``docs(id, doc)`` holds ``documents_`` (ids from 1),
    their ``json_fields`` sealed by encrypt-existing."""
    with sqlite3.connect(tmp_path / "app.db") as conn:
        conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, doc TEXT)")
        conn.executemany(
            "INSERT INTO docs VALUES (?, ?)",
            [(i, json.dumps(d)) for i, d in enumerate(documents_, start=1)],
        )
    conn.close()
    (tmp_path / "keyturn.toml").write_text(
        'database = "sqlite:///app.db"\n[[columns]]\ntable = "docs"\ncolumn = "doc"\n'
        f"json_fields = {json.dumps(json_fields)}\n{extra}"
    )
    monkeypatch.setenv("KEYTURN_KEK", secrets.token_hex(32))
    monkeypatch.chdir(tmp_path)
    app = App(tmp_path, dict(os.environ))
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    return app


def test_backed_up_documents_keep_their_key_version_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation's backup of a JSON column holds the fields' replaced tokens: they
    count as uses of their version, so it is neither retired nor destroyed while
    the backup could restore them; pruning the backup releases it."""
    documents_ = [{"a": f"s{i}", "b": "x"} for i in range(1, 6)]
    apps = "[apps]\nrefresh_seconds = 0.1\nwrite_margin_seconds = 0.1\n"
    app = sqlite_documents_app(tmp_path, monkeypatch, documents_, ["$.a", "$.b"], apps)
    rotated = report(app, "rotate", "--yes")
    assert rotated["draining"]["1"]["backup_jobs"] == [rotated["job"]]
    time.sleep(0.3)  # past the [apps] grace
    keys = {k["version"]: k for k in json.loads(app.cli("keys", "--json", check=True).stdout)}
    assert keys[1]["backups"] == 10 and keys[1]["rows"] == 0
    refused = app.cli("destroy-key", "1", "--yes")
    assert refused.returncode == 3, refused.stderr
    app.cli("prune", rotated["job"], "--yes", check=True)
    keys = {k["version"]: k for k in json.loads(app.cli("keys", "--json", check=True).stdout)}
    assert keys[1]["backups"] == 0 and keys[1]["state"] == "retired"


def test_a_restore_puts_back_the_fields_and_keeps_the_apps_edits(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation's backup keeps each field's replaced token, packed as tokens, not
    whole documents; restore puts them back into
    the documents as the app left them: another field edited since is kept, a
    secret field the app rewrote since is left as the app wrote it."""
    kind = KINDS[database.kind][-1]  # PostgreSQL's jsonb rewrites the documents' text
    database.execute(f"CREATE TABLE docs (id INTEGER PRIMARY KEY, doc {kind})")
    for i in range(1, 5):
        document = {"name": f"n{i}", "a": f"secret-a-{i}", "h": [{"v": f"h{i}"}, {"v": "w"}]}
        database.execute("INSERT INTO docs VALUES (:i, :d)", i=i, d=json.dumps(document))
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n[[columns]]\ntable = "docs"\ncolumn = "doc"\n'
        'json_fields = ["$.a", "$.h[*].v"]\n'
    )
    monkeypatch.setenv("KEYTURN_KEK", secrets.token_hex(32))
    monkeypatch.chdir(tmp_path)
    app = App(tmp_path, dict(os.environ))
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    as_text = "::text" if database.kind == "postgresql" else ""

    def documents_now() -> dict[int, Any]:
        return {i: json.loads(d) for i, d in database.rows(f"SELECT id, doc{as_text} FROM docs")}

    before = documents_now()
    rotated = report(app, "rotate", "--yes")
    assert rotated["rotated"] == 12
    packs_ = database.rows(
        "SELECT column_name, value_count, data FROM keyturn_backup_batches ORDER BY column_name"
    )
    assert [(name, n) for name, n, _ in packs_] == [("doc$.a", 4), ("doc$.h[*].v", 8)]
    from keyturn._core import packs

    kept = [packs.unpack(bytes(data)).olds for _, _, data in packs_]
    assert sorted(kept[0]) == sorted(d["a"] for d in before.values())
    assert sorted(kept[1]) == sorted(h["v"] for d in before.values() for h in d["h"])

    after = documents_now()
    with keyturn.open(tmp_path / "keyturn.toml") as store:
        rewritten = store.encrypt("the app's new secret", context="docs.doc$.a")
    edited = {**after[1], "name": "renamed"}  # another field: the restore keeps it
    database.execute(
        "UPDATE docs SET doc = :d WHERE id = 1", d=json.dumps(edited, separators=(",", ":"))
    )
    database.execute(
        "UPDATE docs SET doc = :d WHERE id = 2", d=json.dumps({**after[2], "a": rewritten})
    )
    database.execute("DELETE FROM docs WHERE id = 3")
    restored = report(app, "restore", rotated["job"], "--yes")
    assert (restored["restored"], restored["changed_since"]) == (3 + 2 + 3, 1 + 3)
    now = documents_now()
    assert now[1] == {**before[1], "name": "renamed"}
    assert now[2] == {**before[2], "a": rewritten}
    assert now[4] == before[4] and set(now) == {1, 2, 4}
    assert report(app, "verify")["failed"] == 0
    again = report(app, "restore", rotated["job"], "--yes")  # nothing left to put back
    assert (again["restored"], again["changed_since"]) == (0, 12)
    assert documents_now() == now


def test_a_field_whose_backup_name_is_too_long_is_backed_up_in_its_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``doc`` and a path of 130 characters do not fit the backup table's name: the
    backup keeps the whole documents, as before fields were kept, and restores."""
    member = "m" * 130
    documents_ = [{member: f"s{i}"} for i in range(1, 4)]
    app = sqlite_documents_app(tmp_path, monkeypatch, documents_, [f"$.{member}"])
    with sqlite3.connect(tmp_path / "app.db") as conn:
        before = dict(conn.execute("SELECT id, doc FROM docs"))
    rotated = report(app, "rotate", "--yes")
    with sqlite3.connect(tmp_path / "app.db") as conn:
        names = conn.execute("SELECT column_name FROM keyturn_backup_batches").fetchall()
    conn.close()
    assert names == [("doc",)]
    assert report(app, "restore", rotated["job"], "--yes")["restored"] == 3
    with sqlite3.connect(tmp_path / "app.db") as conn:
        assert dict(conn.execute("SELECT id, doc FROM docs")) == before
    conn.close()


def test_the_sweep_finds_exactly_the_documents_holding_another_version(
    database: Database,
) -> None:
    """The closing sweep's filter, run by each database: a document holding any
    token not on the target version, among tokens that are, is found; one whose
    tokens are all on it, or that holds none, is not."""
    from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine, select

    from keyturn.ops.rotate import _stale_document

    documents = {
        1: '{"a": "kt1:2:AAAA", "b": "kt1:2:BBBB"}',
        2: '{"a": "kt1:2:AAAA", "b": "kt1:1:BBBB"}',
        3: '{"a": "kt1:12:AAAA", "b": "kt1:2:BBBB"}',
        4: '{"a": "plain", "kt1:2:": "kt1:2:x"}',
        5: '{"note": "see kt1:1:x", "a": "kt1:2:A"}',
        6: '{"a": ["kt1:2:A", "kt1:21:B"]}',
    }
    database.execute("CREATE TABLE sweepdocs (id INTEGER PRIMARY KEY, doc TEXT)")
    for i, document in documents.items():
        database.execute("INSERT INTO sweepdocs VALUES (:i, :d)", i=i, d=document)
    table = Table("sweepdocs", MetaData(), Column("id", Integer), Column("doc", Text))
    engine = create_engine(database.url)
    try:
        with engine.connect() as conn:
            query = select(table.c.id).where(_stale_document(table.c.doc, 2)).order_by("id")
            assert list(conn.execute(query).scalars()) == [2, 3, 6]
    finally:
        engine.dispose()


@settings(max_examples=200, deadline=None)
@given(st.lists(_DOCUMENTS | _JSON_TEXT | st.none(), max_size=6), st.booleans())
def test_a_batch_of_documents_is_decided_as_each_document_alone(
    documents: list[str | None], change_all: bool
) -> None:
    """The batch decider's quick and thorough ways give, per document, the
    categories and text a per-document reference gives: each field decided on its
    own (some changed, some left alone), every other character kept."""
    from keyturn.config import ColumnSpec
    from keyturn.engine.fields import each_field

    spec = ColumnSpec(
        "t", "doc", ("id",), json_fields=(parse_path("$.apiKey"), parse_path("$.a.b"))
    )

    def decide_value(value: str) -> tuple[str, str | None]:
        if change_all or len(value) % 2:
            return "rotated", f"kt1:9:{len(value)}x{sum(map(ord, value))}"
        return "current", None

    def field_decider(field: ColumnSpec) -> Any:
        def decide(pks: Any, values: list[str]) -> tuple[list[str], list[str | None]]:
            pairs = [decide_value(v) for v in values]
            return [c for c, _ in pairs], [n for _, n in pairs]

        return decide

    paths = [p for p, _ in spec.fields()]
    categories, news = each_field(spec, field_decider, "empty")(
        [(i,) for i in range(len(documents))], documents
    )
    assert len(categories) == len(news) == len(documents)
    for document, category, new in zip(documents, categories, news, strict=True):
        if document is None or document == "":
            assert (category, new) == (("empty",), None)
            continue
        try:
            found = locate(document, paths)
        except InvalidDocument:
            assert (category, new) == (("failed",), None)
            continue
        expected, edits = [], []
        for path, spans in zip(paths, found, strict=True):
            for start, end, value in spans:
                if type(value) is str and end >= 0:
                    kind, token = decide_value(value)
                    expected.append(f"{path.text}\t{kind}")
                    if token is not None:
                        edits.append((start, end, token))
                else:
                    expected.append(f"{path.text}\t{'empty' if value is None else 'failed'}")
        assert sorted(category) == sorted(expected)
        assert new == (splice(document, edits) if edits else None)
