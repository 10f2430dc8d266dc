"""encrypt-existing killed with SIGKILL at random points, then resumed: nothing lost."""

from __future__ import annotations

import json

from conftest import App, fill_users, users_only

import keyturn

ROWS = 30_000


def test_encrypt_existing_survives_sigkill(app: App) -> None:
    users_only(app)
    values = fill_users(app, ROWS)
    app.cli("init", check=True)
    kills = app.kill_at_random(
        "encrypt-existing", "--chunk-time", "0.02", "--max-rate", "15000",
        runs=5,
        window=(0.4, 1.6),
        finished=lambda: app.sql("SELECT count(*) FROM users WHERE secret LIKE 'kt1:%'")[0][0]
        == ROWS - ROWS // 97,
    )  # fmt: skip
    final = app.cli("encrypt-existing", "--json", check=True)
    report = json.loads(final.stdout)
    assert report["encrypted"] + report["already_encrypted"] == ROWS - ROWS // 97
    assert report["failed"] == 0
    assert kills >= 1, "no run was killed mid-way; the table is too small for this machine"
    with keyturn.open(app.config) as store:
        for i, token in app.sql("SELECT id, secret FROM users"):
            if values[i] is None:
                assert token is None
            else:
                # Exactly once: one decryption gives back the original plaintext.
                assert store.decrypt(token, context="users.secret") == values[i]
