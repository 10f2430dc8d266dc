"""A SQLAlchemy 2 ORM app whose API keys and notes are encrypted columns.

Imported by tests/integrations for its models; run as a process, it is a live app:
read-modify-write, inserts and deletes through the ORM, one transaction each,
appending what it committed to a journal (JSON lines), until STOPFILE exists.
Any error is written to the journal as {"error": ...} and ends the process with 1.

Usage: python orm_app.py CONFIG JOURNAL STOPFILE SEED
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import keyturn
from keyturn.integrations.sqlalchemy import EncryptedString, EncryptedText, configure


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(64))
    api_key: Mapped[str | None] = mapped_column(EncryptedString(255))
    notes: Mapped[str | None] = mapped_column(EncryptedText())


CONFIG = """\
database = "{url}"

[[columns]]
table = "accounts"
column = "api_key"

[[columns]]
table = "accounts"
column = "notes"

[apps]
refresh_seconds = 0.1
write_margin_seconds = 0.1
"""


def run(config: Path, journal: Path, stopfile: Path, seed: int) -> int:
    rng = random.Random(seed)
    store = keyturn.open(config)
    configure(store)
    engine = create_engine(store.config.database)
    counter = 0
    with journal.open("a", encoding="utf-8") as log:

        def note(entry: dict[str, object]) -> None:
            log.write(json.dumps(entry) + "\n")
            log.flush()

        try:
            while not stopfile.exists():
                counter += 1
                with Session(engine) as session:
                    ids = session.scalars(select(Account.id)).all()
                    op = rng.random()
                    if op < 0.7 and ids:  # read-modify-write of a random account
                        account = session.get(Account, rng.choice(ids))
                        assert account is not None
                        assert account.api_key is None or account.api_key.startswith("sk_")
                        account.api_key = f"sk_{account.id}_{seed}_{counter}"
                        session.commit()
                        note({"id": account.id, "api_key": account.api_key})
                    elif op < 0.85 or not ids:
                        new_id = 100_000 + seed * 10_000 + counter
                        value = f"sk_{new_id}_new"
                        session.add(Account(id=new_id, name="new", api_key=value, notes="n"))
                        session.commit()
                        note({"id": new_id, "api_key": value})
                    else:
                        victim = session.get(Account, rng.choice(ids))
                        assert victim is not None
                        session.delete(victim)
                        session.commit()
                        note({"id": victim.id, "deleted": True})
                time.sleep(rng.uniform(0, 0.01))
        except Exception as exc:  # the test fails on any error the app saw
            note({"error": f"{type(exc).__name__}: {exc}"})
            return 1
        finally:
            engine.dispose()
            store.close()
    return 0


if __name__ == "__main__":
    config, journal, stopfile, seed = sys.argv[1:5]
    sys.exit(run(Path(config), Path(journal), Path(stopfile), int(seed)))
