"""Bearer tokens of the admin HTTP API, kept in ``keyturn_api_tokens`` as SHA-256 hashes.

A token is 32 random bytes (``kta_`` + base64url), shown once at creation. The
hash needs no salt or stretching: the token is random, not a password. Checks
compare the presented token's hash with every live token's in constant time.

Each record carries a MAC over its keyring, name, scope and hash under a key
derived from the audit key, which only a KEK holder can open: a row inserted
or edited (a scope raised) with SQL access alone is refused, and the refusal
is audited. Revoking clears the MAC, so un-revoking a row by SQL does not
bring the token back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from keyturn.db import schema
from keyturn.db.database import bound_actor, has_table, utcnow
from keyturn.errors import TokenError
from keyturn.keys.audit import AuditLog
from keyturn.ops.scopes import SCOPES

PREFIX = "kta_"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class ApiToken:
    """A token's record; never the token itself. ``genuine``: its MAC checks out."""

    name: str
    scope: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    genuine: bool = True

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "created_at": self.created_at.isoformat() + "Z",
            "created_by": self.created_by,
            "revoked_at": self.revoked_at.isoformat() + "Z" if self.revoked_at else None,
            "genuine": self.genuine,
        }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise TokenError(
            "a token name is 1-64 letters, digits, '_', '.', '@' or '-', starting with a "
            "letter or digit"
        )


def create(log: AuditLog, name: str, scope: str, actor: str) -> str:
    """Create a token (a revoked one's name may be reused); return it, once."""
    _check_name(name)
    if scope not in SCOPES:
        raise TokenError(f"scope must be one of {', '.join(SCOPES)}")
    token = PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    t = schema.api_tokens.c
    with log.transaction() as conn:
        existing = conn.execute(select(t.revoked_at).where(t.name == name)).first()
        if existing is not None and existing[0] is None:
            raise TokenError(f"a token named {name!r} exists; revoke it first or pick another name")
        if existing is not None:
            conn.execute(schema.api_tokens.delete().where(t.name == name))
        digest = token_hash(token)
        conn.execute(
            schema.api_tokens.insert().values(
                name=name,
                scope=scope,
                token_hash=digest,
                created_at=utcnow(),
                created_by=bound_actor(actor),
                revoked_at=None,
                mac=log.record_mac(conn, _fields(name, scope, digest), create=True),
            )
        )
        log.append(conn, actor, "token.create", {"name": name, "scope": scope})
    return token


def revoke(log: AuditLog, name: str, actor: str) -> None:
    t = schema.api_tokens.c
    with log.transaction() as conn:
        done = conn.execute(
            update(schema.api_tokens)
            .where(t.name == name, t.revoked_at.is_(None))
            .values(revoked_at=utcnow(), mac=None)
        )
        if done.rowcount != 1:
            raise TokenError(f"no live token is named {name!r} (`keyturn token list` shows them)")
        log.append(conn, actor, "token.revoke", {"name": name})


def _fields(name: str, scope: str, digest: str) -> list[Any]:
    return ["api-token", name, scope, digest]


def _genuine(log: AuditLog, conn: Connection, name: str, scope: str, digest: str, mac: Any) -> bool:
    expected = log.record_mac(conn, _fields(name, scope, digest))
    return bool(expected and isinstance(mac, str) and hmac.compare_digest(expected, mac))


def _has_tokens(log: AuditLog) -> bool:
    """Whether the tokens table exists (brought up to date if it does)."""
    with log.engine.connect() as conn:
        if not has_table(conn, schema.api_tokens.name):
            return False
    log.ensure_tables()
    return True


def all_tokens(log: AuditLog) -> list[ApiToken]:
    """Every token's record, live and revoked, each checked; none before the first."""
    if not _has_tokens(log):
        return []
    with log.engine.connect() as conn:
        t = schema.api_tokens.c
        rows = conn.execute(select(*_COLUMNS, t.token_hash, t.mac).order_by(t.name)).all()
        return [
            ApiToken(*r[:5], r[4] is not None or _genuine(log, conn, r[0], r[1], r[5], r[6]))
            for r in rows
        ]


@dataclass(frozen=True)
class Verdict:
    """What a presented token is: a live genuine token, or refused. ``refused`` names
    the record it matched if there is one (revoked, or ``forged``: its MAC fails)."""

    token: ApiToken | None
    refused: str | None = None
    forged: bool = False


def authenticate(log: AuditLog, presented: str) -> Verdict:
    """Check ``presented`` against every record, in constant time in the token (no
    early exit). Only a live record with a valid MAC authenticates."""
    if not _has_tokens(log):
        return Verdict(None)
    with log.engine.connect() as conn:
        digest = token_hash(presented)
        t = schema.api_tokens.c
        rows = conn.execute(select(*_COLUMNS, t.token_hash, t.mac)).all()
        verdict = Verdict(None)
        for r in rows:
            if hmac.compare_digest(digest, r[5]):
                if r[4] is not None:
                    verdict = Verdict(None, r[0])  # revoked
                elif _genuine(log, conn, r[0], r[1], r[5], r[6]):
                    verdict = Verdict(ApiToken(*r[:5]))
                else:
                    verdict = Verdict(None, r[0], forged=True)
    return verdict


def record_refusal(log: AuditLog, name: str) -> None:
    """Audit a token refused because its record was not made with the KEK."""
    log.record(
        f"token:{name}",
        "token.refused",
        {"name": name, "reason": "its record was not made with the KEK (forged or edited)"},
    )


_COLUMNS = (
    schema.api_tokens.c.name,
    schema.api_tokens.c.scope,
    schema.api_tokens.c.created_at,
    schema.api_tokens.c.created_by,
    schema.api_tokens.c.revoked_at,
)
