"""keyturn rotate and the key lifecycle commands, on real SQLite files."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import App, after_grace, assert_no_secret, backed_up, fill_users, users_only
from cryptography.fernet import Fernet
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, Table

import keyturn
from keyturn._core.keyring import DataKey, Keyring
from keyturn.config import ColumnSpec
from keyturn.db.columns import BoundColumn
from keyturn.legacy import FERNET, LegacyReader, LegacySpec


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ready(app: App) -> None:
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)


def values(app: App) -> dict[tuple[str, int], str | None]:
    """Every configured value, decrypted through a fresh Store."""
    out: dict[tuple[str, int], str | None] = {}
    with keyturn.open(app.config) as store:
        for i, v in app.sql("SELECT id, secret FROM users"):
            out[("users", i)] = store.decrypt(v, context="users.secret") if v else v
        for i, v in app.sql("SELECT id, token FROM integrations"):
            out[("integrations", i)] = store.decrypt(v, context=f"integrations.token#{i}")
    return out


def versions_in_use(app: App) -> set[str]:
    rows = app.sql("SELECT secret FROM users WHERE secret LIKE 'kt1:%'")
    rows += app.sql("SELECT token FROM integrations")
    return {r[0].split(":")[1] for r in rows}


def key_states(app: App) -> dict[int, str]:
    return dict(app.sql("SELECT version, state FROM keyturn_keys ORDER BY version"))


def test_rotate_reencrypts_everything_and_keeps_values(
    app: App, expected: dict[tuple[str, int], str | None]
) -> None:
    ready(app)
    before = dict(app.sql("SELECT id, secret FROM users"))
    proc = app.cli("rotate", "--yes", "--json", check=True)
    report = json.loads(proc.stdout)
    assert report["new_version"] == 2 and report["rotated"] == 14 and report["failed"] == 0
    assert report["skipped_empty"] == 2 and report["already_current"] == 0
    assert set(report["columns"]) == {"users.secret", "integrations.token"}
    assert report["job"] and report["seconds"] >= 0
    assert Path(report["backup_file"]).exists()
    assert versions_in_use(app) == {"2"}
    assert values(app) == expected
    # The backup keeps v1 in use until pruned; then it retires.
    assert key_states(app) == {1: "draining", 2: "active"}
    backed = backed_up(f"sqlite:///{app.db}", report["job"])
    assert {pk[0]: old for table, _, pk, old in backed if table == "users"} == {
        i: v for i, v in before.items() if v
    }
    assert_no_secret(proc.stdout + proc.stderr, app.env["KEYTURN_KEK"])
    after_grace()
    app.cli("prune", report["job"], "--yes", check=True)
    assert key_states(app) == {1: "retired", 2: "active"}
    assert not Path(report["backup_file"]).exists()
    again = json.loads(app.cli("rotate", "--yes", "--json", "--no-backup", check=True).stdout)
    assert again["new_version"] == 3 and again["rotated"] == 14
    # Nothing uses v2, but app processes may seal under it for the [apps] grace
    # (0.2 s here) after v3 became active: it drains until then.
    assert key_states(app) == {1: "retired", 2: "draining", 3: "active"}
    after_grace()
    app.cli("destroy-key", "2", "--yes", check=True)
    assert key_states(app) == {1: "retired", 2: "destroyed", 3: "active"}
    assert values(app) == expected


def test_dry_run_writes_nothing_at_all(app: App) -> None:
    ready(app)
    before = digest(app.db)
    proc = app.cli("rotate", "--dry-run", "--json", check=True)
    report = json.loads(proc.stdout)
    assert report["dry_run"] is True and report["new_version"] == 2 and report["rotated"] == 14
    assert digest(app.db) == before
    assert list(app.dir.glob("*.bak")) == []


def test_without_a_tty_rotate_needs_yes(app: App) -> None:
    ready(app)
    before = digest(app.db)
    proc = app.cli("rotate")
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert digest(app.db) == before


def test_preflight_failure_writes_nothing(app: App) -> None:
    ready(app)
    app.sql("UPDATE users SET secret = (SELECT secret FROM users WHERE id = 2) WHERE id = 1")
    app.sql(
        "UPDATE integrations SET token = (SELECT token FROM integrations WHERE id = 2) WHERE id = 1"
    )
    before = digest(app.db)
    proc = app.cli("rotate", "--yes")
    assert proc.returncode == 1
    assert "preflight" in proc.stderr and "primary key 1" in proc.stderr
    assert "Nothing was written" in proc.stderr
    assert digest(app.db) == before
    assert list(app.dir.glob("*.bak")) == []


def test_missing_table_fails_before_writing(app: App) -> None:
    ready(app)
    app.sql("DROP TABLE integrations")
    before = digest(app.db)
    proc = app.cli("rotate", "--yes")
    assert proc.returncode == 2 and "integrations" in proc.stderr
    assert digest(app.db) == before


def _tamper_last_row(app: App) -> None:
    """Thirty more rows, then one token, past the preflight sample, that cannot decrypt:
    row 1's token copied into the last row (row binding makes it fail there)."""
    with sqlite3.connect(app.db) as conn:
        conn.executemany(
            "INSERT INTO integrations VALUES (?, 'x', ?)",
            [(100 + i, f"tok-{i}") for i in range(30)],
        )
    conn.close()
    app.cli("encrypt-existing", check=True)
    app.sql(
        "UPDATE integrations SET token = (SELECT token FROM integrations WHERE id = 1) "
        "WHERE id = 129"
    )


def test_failed_rows_are_listed_and_left_alone(app: App) -> None:
    ready(app)
    _tamper_last_row(app)
    (bad_id,) = app.sql("SELECT max(id) FROM integrations")[0]
    (bad_token,) = app.sql("SELECT token FROM integrations WHERE id = ?", (bad_id,))[0]
    proc = app.cli("rotate", "--yes", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["failed"] == 1
    assert report["failed_rows"] == [{"table": "integrations", "column": "token", "pk": bad_id}]
    assert app.sql("SELECT token FROM integrations WHERE id = ?", (bad_id,))[0][0] == bad_token
    assert key_states(app)[1] == "draining"


def test_atomic_rolls_back_completely_on_failure(app: App) -> None:
    ready(app)
    _tamper_last_row(app)
    snapshot = (
        app.sql("SELECT * FROM users"),
        app.sql("SELECT * FROM integrations"),
        app.sql("SELECT * FROM keyturn_keys"),
    )
    audit_before = app.sql("SELECT max(seq) FROM keyturn_audit")[0][0]
    proc = app.cli("rotate", "--yes", "--atomic", "--no-backup")
    assert proc.returncode == 1 and "rolled back" in proc.stderr
    assert (
        app.sql("SELECT * FROM users"),
        app.sql("SELECT * FROM integrations"),
        app.sql("SELECT * FROM keyturn_keys"),
    ) == snapshot
    assert app.sql("SELECT count(*) FROM keyturn_jobs") == [(0,)]
    # What remains is the audit log's record of the attempt, and only that.
    outcomes = app.sql(
        "SELECT action, json_extract(details, '$.outcome') FROM keyturn_audit WHERE seq > ?",
        (audit_before,),
    )
    assert outcomes == [("rotate", "started"), ("rotate", "failed")]


def test_atomic_success(app: App, expected: dict[tuple[str, int], str | None]) -> None:
    ready(app)
    report = json.loads(app.cli("rotate", "--yes", "--atomic", "--json", check=True).stdout)
    assert report["rotated"] == 14 and versions_in_use(app) == {"2"}
    assert values(app) == expected


def test_restore_gives_back_exactly_the_previous_tokens(app: App) -> None:
    ready(app)
    before = (
        app.sql("SELECT id, secret FROM users"),
        app.sql("SELECT id, token FROM integrations"),
    )
    job = json.loads(app.cli("rotate", "--yes", "--json", check=True).stdout)["job"]
    # The app changes one secret after the rotation: restore must keep it.
    with keyturn.open(app.config) as store:
        newer = store.encrypt("rotated-by-the-app", context="users.secret")
    app.sql("UPDATE users SET secret = ? WHERE id = 1", (newer,))
    proc = app.cli("restore", job, "--yes", "--json", check=True)
    counts = json.loads(proc.stdout)
    assert counts["restored"] == 13 and counts["changed_since"] == 1 and counts["job"] == job
    users, integrations = before
    assert app.sql("SELECT id, token FROM integrations") == integrations
    assert app.sql("SELECT id, secret FROM users") == [
        (i, newer if i == 1 else v) for i, v in users
    ]
    assert key_states(app) == {1: "draining", 2: "active"}


def test_destroy_key_refuses_while_used(app: App) -> None:
    ready(app)
    proc = app.cli("destroy-key", "1", "--yes")
    assert proc.returncode == 3 and "active" in proc.stderr
    job = json.loads(app.cli("rotate", "--yes", "--json", check=True).stdout)["job"]
    after_grace()  # so the backup, not the [apps] grace, is what keeps v1
    before = digest(app.db)
    proc = app.cli("destroy-key", "1", "--yes")
    assert proc.returncode == 3 and f"keyturn prune {job}" in proc.stderr
    assert digest(app.db) == before
    app.cli("prune", job, "--yes", check=True)
    app.cli("destroy-key", "1", "--yes", check=True)
    assert app.sql("SELECT state, wrapped_dek FROM keyturn_keys WHERE version = 1") == [
        ("destroyed", None)
    ]
    assert app.cli("destroy-key", "1", "--yes").returncode == 3
    app.cli("status", check=True)  # v2 still opens; the destroyed key is skipped


def test_keys_lists_states_and_counts(app: App) -> None:
    ready(app)
    app.cli("rotate", "--yes", check=True)
    rows = json.loads(app.cli("keys", "--json", check=True).stdout)
    assert [(r["version"], r["state"], r["rows"], r["backups"]) for r in rows] == [
        (1, "draining", 0, 14),
        (2, "active", 14, 0),
    ]
    assert "draining" in app.cli("keys", check=True).stdout
    assert "is draining" in app.cli("status", check=True).stdout


def test_a_store_opened_before_rotation_keeps_working(app: App) -> None:
    ready(app)
    with keyturn.open(app.config, refresh_seconds=0.0) as store:
        (old,) = app.sql("SELECT token FROM integrations WHERE id = 3")[0]
        app.cli("rotate", "--yes", "--no-backup", check=True)
        (new,) = app.sql("SELECT token FROM integrations WHERE id = 3")[0]
        assert old.startswith("kt1:1:") and new.startswith("kt1:2:")
        assert store.decrypt(old, context="integrations.token#3") == store.decrypt(
            new, context="integrations.token#3"
        )
        assert store.encrypt("x", context="c").startswith("kt1:2:")


@pytest.mark.parametrize("source", ["env", "file"])
def test_rotate_kek(
    app: App,
    source: str,
    expected: dict[tuple[str, int], str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import secrets

    env = dict(app.env)
    if source == "file":
        del env["KEYTURN_KEK"]
    a = App(app.dir, env)
    a.cli("init", check=True)
    a.cli("encrypt-existing", check=True)
    a.cli("rotate", "--yes", check=True)
    new = secrets.token_hex(32)
    before_rows = app.sql("SELECT * FROM users")
    proc = App(app.dir, dict(env, NEW_KEK=new)).cli(
        "rotate-kek", "--new-kek-env", "NEW_KEK", "--yes", "--json", check=True
    )
    result = json.loads(proc.stdout)
    assert result["rewrapped_versions"] == 2
    assert new not in proc.stdout + proc.stderr
    assert app.sql("SELECT * FROM users") == before_rows  # rows untouched
    if source == "env":
        assert result["update_env"] == "KEYTURN_KEK"
        assert App(app.dir, env).cli("status").returncode == 3  # the old KEK opens nothing
        env["KEYTURN_KEK"] = new
    else:
        key_file = app.dir / "data" / ".keyturn_kek"
        assert key_file.read_text().strip() == new
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    App(app.dir, env).cli("status", check=True)
    kek_ids = {r[0] for r in app.sql("SELECT kek_id FROM keyturn_keys")}
    assert len(kek_ids) == 1
    if source == "env":
        monkeypatch.setenv("KEYTURN_KEK", new)
    else:
        monkeypatch.delenv("KEYTURN_KEK")
    assert values(app) == expected


def test_rotate_kek_refuses_without_a_source_or_tty(app: App) -> None:
    ready(app)
    proc = app.cli("rotate-kek", "--yes")
    assert proc.returncode == 2 and "--new-kek-env" in proc.stderr
    same = App(app.dir, dict(app.env, SAME=app.env["KEYTURN_KEK"]))
    proc = same.cli("rotate-kek", "--new-kek-env", "SAME", "--yes")
    assert proc.returncode == 3 and "same" in proc.stderr


def test_a_missed_swap_is_retried_not_overwritten(app: App) -> None:
    """The compare-and-swap path when the app writes between our read and our write."""
    from keyturn.engine.walk import TableRewriter, each_value

    ready(app)
    with keyturn.open(app.config) as store:
        (users,) = [c for c in store.bound_columns() if c.spec.name == "users.secret"]
        newer = store.encrypt("written-meanwhile", context="users.secret")

        # The rewritten marker must not be a prefix a real token can have (a
        # token's payload is random base64url, so "kt1:1:x…" is one in 64).
        def decide(pk: tuple[int, ...], value: str | None) -> tuple[str, str | None]:
            if value is None or value == "" or value.startswith("done:"):
                return "skipped", None
            if pk == (2,) and value != newer:
                # The app replaces row 2 after we read it, before we write.
                app.sql("UPDATE users SET secret = ? WHERE id = 2", (newer,))
                app.sql("DELETE FROM users WHERE id = 3")
            return "rewritten", "done:" + str(pk[0])

        results = TableRewriter(store.engine, [users], [each_value(decide)]).run()
    rows = dict(app.sql("SELECT id, secret FROM users"))
    assert 3 not in rows, "a row deleted meanwhile was brought back"
    assert rows[2] == "done:2", "row 2 was retried from the app's value"
    assert rows[1] == "done:1"
    assert results[0].counts.get("contended", 0) == 0


_OLD, _NEW = DataKey.generate(1), DataKey.generate(2)
_FERNET = Fernet(Fernet.generate_key()).encrypt(b"legacy").decode()
_KINDS = {
    # kind: (value for the row with primary key pk under binding context ctx, category)
    "older": (lambda ctx: Keyring({1: _OLD}, 1).encrypt(b"s3cret", ctx), "rotated"),
    "current": (lambda ctx: Keyring({2: _NEW}, 2).encrypt(b"s3cret", ctx), "already_current"),
    "empty": (lambda ctx: "", "skipped_empty"),
    "null": (lambda ctx: None, "skipped_empty"),
    "plaintext": (lambda ctx: "hunter2", "skipped_plaintext"),
    "kt1 text": (lambda ctx: "kt1:not a token", "skipped_plaintext"),
    "legacy": (lambda ctx: _FERNET, "skipped_legacy"),
    "moved": (lambda ctx: Keyring({1: _OLD}, 1).encrypt(b"s3cret", "other.col"), "failed"),
    "unknown": (lambda ctx: Keyring({7: DataKey.generate(7)}, 7).encrypt(b"x", ctx), "failed"),
    # Bytes (a BLOB in a column, not UTF-8): a few are plaintext, more are of unknown shape.
    "bytes": (lambda ctx: b"\xffraw", "skipped_plaintext"),
    "random bytes": (lambda ctx: b"\xff" + bytes(range(40)), "unknown"),
}


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(sorted(_KINDS)), max_size=24),
    bind=st.sampled_from(["column", "row"]),
)
def test_the_batch_decider_classifies_every_kind_of_value(kinds: list[str], bind: str) -> None:
    """Rotation decides a whole batch at once: only older tokens that open are
    re-encrypted, to tokens that open under the new version in the same place;
    every other value is counted as one at a time would be, and left alone."""
    from keyturn.ops.rotate import _decider
    from keyturn.ops.rotate_progress import ColumnState

    spec = ColumnSpec("users", "secret", ("id",), bind=bind)
    table = Table("users", MetaData(), Column("id", Integer, primary_key=True), Column("secret"))
    reader = LegacyReader(LegacySpec("old", FERNET), lambda _: [])
    ring = Keyring({1: _OLD, 2: _NEW}, 2)
    state = ColumnState()
    decide = _decider(ring, BoundColumn(spec, table, None), 2, state, reader)
    pks = [(j,) for j in range(len(kinds))]
    values = [_KINDS[k][0](spec.context(pk)) for k, pk in zip(kinds, pks, strict=True)]
    categories, news = decide(pks, values)
    assert categories == [_KINDS[k][1] for k in kinds]
    for pk, kind, new in zip(pks, kinds, news, strict=True):
        if kind == "older":
            assert new is not None and new.startswith("kt1:2:")
            assert ring.decrypt(new, spec.context(pk)) == b"s3cret"
        else:
            assert new is None
    fresh = [new for new in news if new is not None]
    assert len({new[6:22] for new in fresh}) == len(fresh), "a nonce was used twice"
    assert sorted(map(tuple, state.failed)) == [
        pk for pk, k in zip(pks, kinds, strict=True) if _KINDS[k][1] == "failed"
    ]


def test_the_draining_hint_names_the_jobs_that_hold_the_version(app: App) -> None:
    """After a second rotation, v1's backups belong to the first job: the hint names it."""
    ready(app)
    first = json.loads(app.cli("rotate", "--yes", "--json", check=True).stdout)["job"]
    after_grace()
    second = app.cli("rotate", "--yes", check=True).stdout
    job2 = second.split()[1].rstrip(":")
    assert f"key v1 stays draining: the backups of job(s) {first} hold" in second
    assert f"key v2 stays draining: the backups of job(s) {job2} hold" in second
    report = json.loads(app.cli("rotate", "--yes", "--json", "--no-backup", check=True).stdout)
    assert report["draining"]["3"]["backup_jobs"] == [] and report["draining"]["3"]["grace_until"]


def test_a_rotation_with_failed_rows_is_a_failed_job(app: App) -> None:
    users_only(app)
    fill_users(app, 100)
    ready(app)
    app.sql("UPDATE users SET secret = 'kt1:1:' || ? WHERE id = 50", ("B" * 40,))
    proc = app.cli("rotate", "--yes", "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["failed"] == 1
    assert app.sql("SELECT state FROM keyturn_jobs") == [("failed",)]
    assert "failed" in app.cli("jobs", check=True).stdout


def test_status_says_why_an_unused_version_still_drains(app: App) -> None:
    app.write_config(
        app.config.read_text().replace("refresh_seconds = 0.1", "refresh_seconds = 30")
    )
    ready(app)
    app.cli("rotate", "--yes", "--no-backup", check=True)
    warning = json.loads(app.cli("status", "--json", check=True).stdout)["warnings"]
    assert any("nothing uses it, but app processes may seal under it until" in w for w in warning)


def test_job_progress_round_trips_the_stored_json() -> None:
    """A job checkpointed by keyturn 0.1 (an untyped dict) resumes: the typed progress
    reads and writes the same JSON."""
    from keyturn.ops.rotate_progress import JobProgress

    stored = {
        "mode": "chunks",
        "columns": {"users.secret": {"counts": {"rotated": 3}, "failed": [[7]]}},
        "tables": {"users(id)": {"cursor": [42], "done": False, "swept": False}},
        "sweeping": True,
    }
    progress = JobProgress.load(stored)
    assert progress.chunked and progress.sweeping
    assert progress.tables["users(id)"].cursor == [42]
    assert progress.column("users.secret").result("users.secret").counts["failed"] == 1
    assert progress.dump() == stored
    assert JobProgress.load(None).dump() == {"columns": {}, "tables": {}}


def test_rotate_options_refuse_combinations_that_make_no_sense() -> None:
    from keyturn import ConfigError
    from keyturn.ops.rotate import RotateOptions

    for bad in ({"atomic": True, "workers": 2}, {"join": True, "dry_run": True}, {"workers": 0}):
        with pytest.raises(ConfigError):
            RotateOptions(**bad)  # type: ignore[arg-type]
    assert RotateOptions(workers=3).mode == "parallel"
    assert RotateOptions(dry_run=True).mode == "dry-run"
