"""Loading ORM objects whose secret is an EncryptedString, against the same objects
with a plain String column: the cost of decrypting on load (goal: at most 1.3x).

Usage: .venv/bin/python bench/orm_load.py [--rows 10000] [--rounds 7]

Both tables hold the same rows in one SQLite file; each round loads every row
of each table through a SQLAlchemy 2 ORM session (rounds alternate between the
two) and the best round of each is compared. The floor is the plain load plus
decrypting the same tokens in a bare loop (the keyring's opener, which costs
what AESGCM.decrypt with base64 costs): no ORM type can load for less. The goal
is judged on the median of each round's encrypted load over its plain load.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import String, TypeDecorator, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import keyturn
from keyturn._core import tokens as token_format
from keyturn.cli import cli
from keyturn.integrations.sqlalchemy import EncryptedString, configure


class Base(DeclarativeBase):
    pass


class Plain(Base):
    __tablename__ = "plain_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    api_key: Mapped[str] = mapped_column(String(255))


class Encrypted(Base):
    __tablename__ = "encrypted_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    api_key: Mapped[str] = mapped_column(EncryptedString(255))


CONTEXT = "encrypted_accounts.api_key"  # the encrypted table's column context


class PassThrough(TypeDecorator[str]):
    """A column type whose result processor does nothing: what the ORM's call of
    any type's processor costs, per value (bench/orm_instructions.py)."""

    impl = String(255)
    cache_ok = True

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        return lambda value: value


class Passed(Base):
    """The encrypted table's tokens, loaded through :class:`PassThrough`."""

    __tablename__ = "passed_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    api_key: Mapped[str] = mapped_column(PassThrough())


def load(engine: object, model: type[Plain] | type[Encrypted] | type[Passed]) -> float:
    started = time.perf_counter()
    with Session(engine) as session:  # type: ignore[call-overload]
        rows = session.scalars(select(model)).all()
        assert all(r.api_key for r in rows)
    return time.perf_counter() - started


def bare_decrypt(store: keyturn.Store, context: str, tokens: list[str]) -> Callable[[], float]:
    """A loop that decrypts ``tokens`` through the keyring's opener for ``context``,
    as bare as keyturn can: the decryption every encrypted load pays."""

    def run() -> float:
        open_ = store.keyring.opener(context)
        started = time.perf_counter()
        for token in tokens:
            open_(token).decode()
        return time.perf_counter() - started

    return run


def aead_alone(store: keyturn.Store, context: str, tokens: list[str]) -> Callable[[], float]:
    """A loop of ``AESGCM.decrypt`` alone over ``tokens``, decoded beforehand: the
    part of a decryption no Python code of keyturn's can make cheaper."""
    ring = store.keyring
    key = ring._keys[ring.active_version]  # the bench reads the raw key on purpose
    associated = token_format.aad(key.version, context)
    n = token_format.NONCE_LEN
    blobs = [token_format.decode_payload(t.split(":", 2)[2]) for t in tokens]
    pieces = [(blob[:n], blob[n:]) for blob in blobs]
    decrypt = key.aead.decrypt

    def run() -> float:
        started = time.perf_counter()
        for nonce, sealed in pieces:
            decrypt(nonce, sealed, associated)
        return time.perf_counter() - started

    return run


def prepare(work: Path, rows: int) -> tuple[Callable[[str], float], keyturn.Store, list[str]]:
    """The tables in ``work``, ``rows`` rows each: a load function (by table name:
    plain, encrypted, passed), the Store and the encrypted table's tokens. The
    caller closes the Store."""
    url = f"sqlite:///{work / 'app.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    (work / "keyturn.toml").write_text(
        f'database = "{url}"\n[[columns]]\ntable = "encrypted_accounts"\ncolumn = "api_key"\n'
    )
    os.environ.setdefault("KEYTURN_KEK", os.urandom(32).hex())
    cli.main(["--config", str(work / "keyturn.toml"), "init"], standalone_mode=False)
    store = keyturn.open(work / "keyturn.toml")
    configure(store)
    with Session(engine) as session:
        for i in range(rows):
            value = f"sk_live_{i:08d}_{os.urandom(12).hex()}"
            session.add(Plain(id=i, name=f"user{i}", api_key=value))
            session.add(Encrypted(id=i, name=f"user{i}", api_key=value))
        session.commit()
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO passed_accounts SELECT * FROM encrypted_accounts")
        tokens = [r[0] for r in conn.exec_driver_sql("SELECT api_key FROM encrypted_accounts")]
    models = {"plain": Plain, "encrypted": Encrypted, "passed": Passed}
    return lambda name: load(engine, models[name]), store, tokens


def compare(
    what: str,
    columns: tuple[str, str],
    load_table: Callable[[str], float],
    bare: Callable[[], float],
    rounds: int,
) -> None:
    """Alternate the plain load, the encrypted load and the bare decrypt loop for
    ``rounds`` rounds; print the best of each, the floor, and each round's
    encrypted load over its plain one. The goal is judged on the median of those
    round ratios: on a noisy machine one slow round of the plain load alone can
    make the best rounds' ratio look met (or not)."""
    times: dict[str, list[float]] = {"plain": [], "encrypted": [], "decrypt": []}
    steps = [
        ("plain", lambda: load_table("plain")),
        ("encrypted", lambda: load_table("encrypted")),
        ("decrypt", bare),
    ]
    for _ in range(rounds):
        for name, run in steps:
            gc.collect()  # each starts from a clean heap: no collection of another's garbage
            times[name].append(run())
    best = {name: min(measured) for name, measured in times.items()}
    floor = best["plain"] + best["decrypt"]
    paired = sorted(e / p for p, e in zip(times["plain"], times["encrypted"], strict=True))
    median = statistics.median(paired)
    print(f"load {what}, best of {rounds}")
    rows = [
        ("plain " + columns[0], best["plain"]),
        ("floor: plain + bare decrypt", floor),
        (columns[1], best["encrypted"]),
    ]
    for label, seconds in rows:
        print(f"   {label:<28} {seconds * 1000:8.1f} ms   {seconds / best['plain']:.2f}x")
    print(f"   each round, encrypted over plain: {paired[0]:.2f}x-{paired[-1]:.2f}x")
    print(
        f"goal: at most 1.3x, median round {median:.2f}x -> {'met' if median <= 1.3 else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        load_table, store, tokens = prepare(Path(tmp), args.rows)
        columns = ("String column", "EncryptedString column")
        what = f"{args.rows:,} ORM objects"
        bare = bare_decrypt(store, CONTEXT, tokens)
        compare(what, columns, load_table, bare, args.rounds)
        store.close()


if __name__ == "__main__":
    main()
