"""Secrets other than data keys that the KEK wraps, kept as rows of ``keyturn_meta``.

Today the audit log's MAC key; later e.g. blind-index keys. Each is named here
once with the AAD that binds it to its keyring, and rotate-kek rewraps all of
them through :func:`rewrap_all` (local KEK) or :func:`all_wrapped` and
:func:`swap` (a KMS that rewraps itself), beside the data keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select, update

from keyturn._core.kek import KEK
from keyturn.db import schema
from keyturn.db.database import has_table


@dataclass(frozen=True)
class WrappedSecret:
    """A KEK-wrapped secret in ``keyturn_meta``: its row name, and its AAD's prefix
    (the AAD is ``prefix:keyring_id``, so a wrapping moved to another keyring fails)."""

    name: str
    aad_prefix: str

    def aad(self, keyring_id: str) -> bytes:
        return f"{self.aad_prefix}:{keyring_id}".encode()


AUDIT_KEY = WrappedSecret("audit_key", "keyturn-audit-key:v1")

#: Every wrapped secret rotate-kek must carry over to the new KEK.
SECRETS: tuple[WrappedSecret, ...] = (AUDIT_KEY,)


def read(conn: Connection, secret: WrappedSecret) -> str | None:
    """The stored wrapping of ``secret``, or None if it does not exist (yet)."""
    if not has_table(conn, schema.meta.name):
        return None
    row = conn.execute(select(schema.meta.c.value).where(schema.meta.c.name == secret.name)).first()
    return None if row is None else str(row[0])


def all_wrapped(conn: Connection) -> list[tuple[WrappedSecret, str]]:
    """Every wrapped secret that exists, with its wrapping."""
    found = [(secret, read(conn, secret)) for secret in SECRETS]
    return [(secret, wrapped) for secret, wrapped in found if wrapped is not None]


def swap(conn: Connection, secret: WrappedSecret, old: str, new: str) -> bool:
    """Replace the wrapping ``old`` by ``new``; False if it changed meanwhile."""
    done = conn.execute(
        update(schema.meta)
        .where(schema.meta.c.name == secret.name, schema.meta.c.value == old)
        .values(value=new)
    )
    return done.rowcount == 1


def rewrap_all(conn: Connection, old: KEK, new: KEK, keyring_id: str) -> None:
    """Rewrap every wrapped secret under ``new`` (in rotate-kek's transaction)."""
    for secret, wrapped in all_wrapped(conn):
        aad = secret.aad(keyring_id)
        swap(conn, secret, wrapped, new.wrap(old.unwrap(wrapped, aad), aad))
