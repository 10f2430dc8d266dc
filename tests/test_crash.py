"""encrypt-existing killed with SIGKILL at random points, then resumed: nothing lost."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

from conftest import App, fill_users, users_only

import keyturn

ROWS = 30_000


def test_encrypt_existing_survives_sigkill(app: App) -> None:
    users_only(app)
    values = fill_users(app, ROWS)
    app.cli("init", check=True)
    rng = random.Random()
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keyturn",
                "encrypt-existing",
                "--chunk-time",
                "0.02",
                "--max-rate",
                "15000",
            ],
            cwd=app.dir,
            env=app.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.4, 1.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        done = app.sql("SELECT count(*) FROM users WHERE secret LIKE 'kt1:%'")[0][0]
        if done == ROWS - ROWS // 97:
            break
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
