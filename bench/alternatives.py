"""keyturn rotate against what a user would write instead, on SQLite.

Usage: .venv/bin/python bench/alternatives.py [--rows 200000] [--rounds 1] [--only NAME ...]

Every run turns ROWS rows x 2 columns from one key to a new one, each on a
fresh copy of the same database, and is timed alone:

- keyturn rotate --no-backup, and with its backup: one worker, in-process;
  also as the CLI runs them by default, --workers auto (helpers on the cores
  left idle): "keyturn-auto" (--no-backup) and "keyturn-default".
- per-row sqlite3, one transaction: the seeds' script (docs/seeds: "run inside
  a single database transaction, iterate over every row, decrypt with the old
  key, re-encrypt with the new key, update the row") on the raw sqlite3 module,
  kt1 tokens, AES-GCM from `cryptography`.
- per-row SQLAlchemy, one transaction: the same script through SQLAlchemy Core.
- MultiFernet batch loop: the same rows as Fernet tokens, turned by
  `MultiFernet.rotate()` a keyset page at a time, an executemany UPDATE and a
  commit per page (what cryptography's docs suggest for Fernet).
- sqlalchemy-utils ORM: the same rows in `StringEncryptedType(AesGcmEngine)`
  columns, loaded as ORM objects a page at a time and saved again under the new
  key (the key a callable, as sqlalchemy-utils suggests for rotation).

Each prints seconds and how many times faster keyturn --no-backup is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rotate import build, keyturn_rotate, pages, turner  # bench/rotate.py: the same table

import keyturn
from keyturn.ops.rotate import most_auto_workers


def plaintexts(i: int) -> tuple[str, str]:
    """The secrets bench/rotate.py's build() seals in row ``i``."""
    return f"sk_live_{i:012d}_abcdefghij", f"ghp_{i:012d}_klmnopqrstuv"


def per_row_sqlite3(work: Path, old: AESGCM) -> float:
    turn = turner(old)
    started = time.perf_counter()
    db = sqlite3.connect(work / "app.db", isolation_level=None)
    db.execute("BEGIN")
    rows = db.execute("SELECT id, a, b FROM secrets").fetchall()
    for i, a, b in rows:
        db.execute(
            "UPDATE secrets SET a = ?, b = ? WHERE id = ?",
            (turn(a, "secrets.a"), turn(b, "secrets.b"), i),
        )
    db.execute("COMMIT")
    db.close()
    return time.perf_counter() - started


def per_row_sqlalchemy(work: Path, old: AESGCM) -> float:
    from sqlalchemy import create_engine, text

    turn = turner(old)
    started = time.perf_counter()
    engine = create_engine(f"sqlite:///{work / 'app.db'}")
    update = text("UPDATE secrets SET a = :a, b = :b WHERE id = :id")
    with engine.begin() as conn:
        for i, a, b in conn.execute(text("SELECT id, a, b FROM secrets")).all():
            conn.execute(update, {"a": turn(a, "secrets.a"), "b": turn(b, "secrets.b"), "id": i})
    engine.dispose()
    return time.perf_counter() - started


def build_fernet(work: Path, rows: int, key: bytes) -> None:
    work.mkdir(parents=True)
    f = Fernet(key)
    db = sqlite3.connect(work / "app.db")
    db.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, a TEXT, b TEXT)")
    for start in range(1, rows + 1, 50_000):
        batch = []
        for i in range(start, min(start + 50_000, rows + 1)):
            a, b = plaintexts(i)
            batch.append((i, f.encrypt(a.encode()).decode(), f.encrypt(b.encode()).decode()))
        db.executemany("INSERT INTO secrets VALUES (?, ?, ?)", batch)
        db.commit()
    db.close()


def multifernet(work: Path, old_key: bytes) -> float:
    rotor = MultiFernet([Fernet(Fernet.generate_key()), Fernet(old_key)])
    started = time.perf_counter()
    db = sqlite3.connect(work / "app.db")
    for rows in pages(db):
        db.executemany(
            "UPDATE secrets SET a = ?, b = ? WHERE id = ?",
            [
                (rotor.rotate(a.encode()).decode(), rotor.rotate(b.encode()).decode(), i)
                for i, a, b in rows
            ],
        )
        db.commit()
    db.close()
    return time.perf_counter() - started


class OrmKeys:
    """The key sqlalchemy-utils' columns read, switched from old to new mid-run."""

    old = "old-key-" + os.urandom(8).hex()
    new = "new-key-" + os.urandom(8).hex()
    current = old


def orm_model() -> tuple[type, object]:
    from sqlalchemy import Column, Integer, String
    from sqlalchemy.orm import DeclarativeBase
    from sqlalchemy_utils import StringEncryptedType
    from sqlalchemy_utils.types.encrypted.encrypted_type import AesGcmEngine

    class Base(DeclarativeBase):
        pass

    def key() -> str:
        return OrmKeys.current

    class Secret(Base):
        __tablename__ = "secrets"
        id = Column(Integer, primary_key=True)
        a = Column(StringEncryptedType(String, key, AesGcmEngine))
        b = Column(StringEncryptedType(String, key, AesGcmEngine))

    return Secret, Base.metadata


def build_orm(work: Path, rows: int) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    work.mkdir(parents=True)
    secret, metadata = orm_model()
    engine = create_engine(f"sqlite:///{work / 'app.db'}")
    metadata.create_all(engine)  # type: ignore[attr-defined]
    OrmKeys.current = OrmKeys.old
    with Session(engine) as session:
        for start in range(1, rows + 1, 50_000):
            for i in range(start, min(start + 50_000, rows + 1)):
                a, b = plaintexts(i)
                session.add(secret(id=i, a=a, b=b))
            session.commit()
    engine.dispose()


def orm_resave(work: Path) -> float:
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session
    from sqlalchemy.orm.attributes import flag_modified

    secret, _ = orm_model()
    started = time.perf_counter()
    engine = create_engine(f"sqlite:///{work / 'app.db'}")
    last = 0
    with Session(engine) as session:
        while True:
            OrmKeys.current = OrmKeys.old
            query = select(secret).where(secret.id > last).order_by(secret.id).limit(5000)
            page = session.scalars(query).all()
            if not page:
                break
            for obj in page:  # the plaintexts, read under the old key
                obj.a, obj.b = str(obj.a), str(obj.b)
                flag_modified(obj, "a")
                flag_modified(obj, "b")
            last = page[-1].id
            OrmKeys.current = OrmKeys.new
            session.commit()  # written under the new key
            session.expunge_all()
    elapsed = time.perf_counter() - started
    OrmKeys.current = OrmKeys.new
    with Session(engine) as session:  # the rows open under the new key
        assert session.get(secret, 1).a == plaintexts(1)[0]  # type: ignore[attr-defined]
    engine.dispose()
    OrmKeys.current = OrmKeys.old
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1)
    runs = ["keyturn", "keyturn-backup", "sqlite3", "sqlalchemy", "multifernet", "orm"]
    choices = [*runs, "keyturn-auto", "keyturn-default"]
    parser.add_argument("--only", nargs="+", choices=choices, default=runs)
    args = parser.parse_args()
    os.environ["KEYTURN_KEK"] = os.urandom(32).hex()
    print(f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        build(tmp / "kt1", args.rows)
        with keyturn.open(tmp / "kt1" / "keyturn.toml") as store:
            old = AESGCM(store.keyring._keys[1].key)
        fernet_key = Fernet.generate_key()
        if "multifernet" in args.only:
            build_fernet(tmp / "fernet", args.rows, fernet_key)
        if "orm" in args.only:
            build_orm(tmp / "orm", args.rows)
        auto = most_auto_workers()
        plans: dict[str, tuple[str, Callable[[Path], float]]] = {
            "keyturn": ("kt1", lambda w: keyturn_rotate(w, backup=False)),
            "keyturn-backup": ("kt1", lambda w: keyturn_rotate(w, backup=True)),
            "keyturn-auto": ("kt1", lambda w: keyturn_rotate(w, False, auto, auto=True)),
            "keyturn-default": ("kt1", lambda w: keyturn_rotate(w, True, auto, auto=True)),
            "sqlite3": ("kt1", lambda w: per_row_sqlite3(w, old)),
            "sqlalchemy": ("kt1", lambda w: per_row_sqlalchemy(w, old)),
            "multifernet": ("fernet", lambda w: multifernet(w, fernet_key)),
            "orm": ("orm", orm_resave),
        }
        labels = {
            "keyturn": "keyturn rotate --no-backup",
            "keyturn-backup": "keyturn rotate (backup)",
            "keyturn-auto": "keyturn rotate --no-backup, --workers auto",
            "keyturn-default": "keyturn rotate, its defaults (auto, backup)",
            "sqlite3": "per-row sqlite3, one transaction",
            "sqlalchemy": "per-row SQLAlchemy, one transaction",
            "multifernet": "MultiFernet.rotate() batch loop",
            "orm": "sqlalchemy-utils ORM load and save",
        }
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for name in args.only:
                source, run = plans[name]
                work = tmp / "run"
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(tmp / source, work)
                elapsed = run(work)
                best[name] = min(best.get(name, elapsed), elapsed)
        print(f"\nrotate {args.rows:,} rows x 2 columns, best of {args.rounds}")
        print(f"   {'':<44} {'seconds':>8} {'rows/s':>9}  {'vs keyturn --no-backup':>22}")
        ours = best.get("keyturn")
        for name, seconds in best.items():
            ratio = f"{seconds / ours:8.2f}x the time" if ours else ""
            line = f"   {labels[name]:<44} {seconds:>8.2f} {args.rows / seconds:>9,.0f}"
            print(f"{line}  {ratio}")


if __name__ == "__main__":
    main()
