"""An app process for the concurrency model (test_model.py): reads, writes and deletes
its own rows of ``app_secrets`` through ``keyturn.open()`` until told to stop.

Every write is journaled before and after its commit (``intent`` / ``done``), so
after a SIGKILL the checker knows which values may be in the row. A read that
does not give back the value this process last committed is journaled as ``bad``.

Usage: python model_app.py CONFIG OWNER JOURNAL SEED STOPFILE (it runs until STOPFILE exists)
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

from sqlalchemy import text

import keyturn


def main() -> None:
    config, owner, journal_path, seed, stop = sys.argv[1:6]
    me, rng = int(owner), random.Random(int(seed))
    fd = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def journal(kind: str, row: int, value: object = None) -> None:
        os.write(fd, (json.dumps([kind, row, value]) + "\n").encode())

    store = keyturn.open(config)
    with store.engine.connect() as conn:
        mine = [i for (i,) in conn.execute(text("SELECT id FROM app_secrets ORDER BY id"))]
    alive = [i for i in mine if i % 2 == me]
    committed = {i: f"init-{i}" for i in alive}
    n = 0
    while not os.path.exists(stop):
        n += 1
        row = rng.choice(alive)
        context = f"app_secrets.value#{row}"
        roll = rng.random()
        try:
            if roll < 0.5:
                value = f"secret-{me}-{row}-{n}"
                plain = rng.random() < 0.15  # an app not yet switched over writes plaintext
                stored = value if plain else store.encrypt(value, context=context)
                journal("intent", row, value)
                with store.engine.begin() as conn:
                    conn.execute(
                        text("UPDATE app_secrets SET value = :v WHERE id = :i"),
                        {"v": stored, "i": row},
                    )
                journal("done", row)
                committed[row] = value
            elif roll < 0.54 and len(alive) > len(mine) // 4:
                journal("intent", row, None)
                with store.engine.begin() as conn:
                    conn.execute(text("DELETE FROM app_secrets WHERE id = :i"), {"i": row})
                journal("done", row)
                alive.remove(row)
                del committed[row]
            else:
                with store.engine.connect() as conn:
                    found = conn.execute(
                        text("SELECT value FROM app_secrets WHERE id = :i"), {"i": row}
                    ).scalar()
                got = store.decrypt(found, context=context) if found.startswith("kt1:") else found
                if got != committed[row]:
                    journal("bad", row, "read back another value")
        except keyturn.KeyturnError as exc:
            journal("bad", row, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a database error: the write may or may not have committed
            journal("dberror", row, type(exc).__name__)
        time.sleep(rng.uniform(0, 0.01))
    store.close()


if __name__ == "__main__":
    main()
