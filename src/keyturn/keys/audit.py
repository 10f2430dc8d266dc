"""The tamper-evident audit log in ``keyturn_audit``: append, verify, sign the head.

Each entry carries ``mac = HMAC(K_entries, keyring id, seq, time, actor, action,
details, previous mac)``. A bare hash chain could be recomputed by anyone who
can write the table; this one needs K, a random 256-bit key wrapped by the KEK
and kept in ``keyturn_meta`` (rewrapped by ``rotate-kek``, like a data key).
The head (``count``, ``last`` mac) is MAC'd under a second key derived from K
and updated in the entry's transaction, so deleting the newest entries is seen
too. A head kept outside the database (``keyturn audit head``) also catches
the database being rolled back as a whole, head included.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import DBAPIError

from keyturn._core.kek import KEK
from keyturn.db import migrations, schema
from keyturn.db.database import bound_actor, database_error, has_table, write_transaction
from keyturn.errors import AuditError, AuditHeadInvalid, DatabaseError, KEKChanged, WrongKEK
from keyturn.keys.wrapped import AUDIT_KEY
from keyturn.keys.wrapped import read as read_wrapped

HEAD_NAME = "audit_head"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Entry:
    """One audit entry as stored."""

    seq: int
    at: str
    actor: str
    action: str
    details: dict[str, Any]
    mac: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "details": self.details,
            "mac": self.mac,
        }


@dataclass(frozen=True)
class Head:
    """The signed head: how many entries there are and the last one's mac."""

    keyring_id: str
    count: int
    last: str
    mac: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyring_id": self.keyring_id,
            "count": self.count,
            "last": self.last,
            "mac": self.mac,
        }

    def to_text(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str) -> Head:
        try:
            data = json.loads(text)
            return cls(
                str(data["keyring_id"]), int(data["count"]), str(data["last"]), str(data["mac"])
            )
        except (ValueError, KeyError, TypeError):
            raise AuditError("the audit head is not valid JSON from `keyturn audit head`") from None


@dataclass(frozen=True)
class AuditCheck:
    """What ``audit verify`` found: ok, or each problem in plain words."""

    entries: int
    problems: tuple[str, ...] = ()
    head: Head | None = None
    checked_external_head: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "problems": list(self.problems),
            "checked_external_head": self.checked_external_head,
        }


@dataclass(frozen=True)
class _Keys:
    entries: bytes = field(repr=False)
    head: bytes = field(repr=False)
    tokens: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "_Keys(<redacted>)"


def _derive(secret: bytes) -> _Keys:
    def hkdf(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)

    return _Keys(
        hkdf(b"keyturn audit entries v1"),
        hkdf(b"keyturn audit head v1"),
        hkdf(b"keyturn api token records v1"),
    )


class Operation(dict[str, Any]):
    """An audited operation's outcome details; ``begin()`` writes its ``started`` entry."""

    def __init__(self, log: AuditLog, actor: str, action: str, base: dict[str, Any]) -> None:
        super().__init__()
        self.log, self.actor, self.action, self.base = log, actor, action, base
        self.begun = False

    def begin(self) -> None:
        if not self.begun:
            self.log.record(self.actor, self.action, {**self.base, "outcome": "started"})
            self.begun = True


class AuditLog:
    """The audit log of one keyring, opened with its KEK."""

    def __init__(
        self,
        engine: Engine,
        kek: KEK,
        keyring_id: str,
        current_kek: Callable[[], KEK] | None = None,
    ) -> None:
        self.engine = engine
        self.kek = kek
        #: Called when rotate-kek rewrapped the keyring after ``kek`` was loaded:
        #: returns the KEK that opens it now (the store's reload), or raises KEKChanged.
        self.current_kek = current_kek
        self.keyring_id = keyring_id
        self._keys: _Keys | None = None
        self._tables_ready = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AuditLog(keyring_id={self.keyring_id!r})"

    # -- keys and the head --------------------------------------------------------

    def _load_keys(self, conn: Connection) -> _Keys | None:
        if self._keys is None:
            wrapped = read_wrapped(conn, AUDIT_KEY)
            if wrapped is None:
                return None
            aad = AUDIT_KEY.aad(self.keyring_id)
            try:
                self._keys = _derive(self.kek.unwrap(wrapped, aad))
            except WrongKEK:
                self._keys = _derive(self._unwrap_after_rotate_kek(conn, aad))
        return self._keys

    def _unwrap_after_rotate_kek(self, conn: Connection, aad: bytes) -> bytes:
        """The audit key did not open. If rotate-kek rewrapped the keyring since this
        process loaded its KEK (the key itself is unchanged), take the KEK that opens
        the keyring now and unwrap again; otherwise the wrapping was tampered with."""
        from keyturn.keys import keystore  # keystore imports this module

        try:
            keystore.load(conn, self.kek)
        except WrongKEK:
            if self.current_kek is None:
                raise KEKChanged(
                    f"the keyring is no longer wrapped by this process's KEK "
                    f"({self.kek.kek_id}): rotate-kek ran; run again with the current KEK"
                ) from None
            self.kek = self.current_kek()
            wrapped = read_wrapped(conn, AUDIT_KEY)
            if wrapped is not None:
                with suppress(WrongKEK):
                    return self.kek.unwrap(wrapped, aad)
        raise AuditError(
            "the audit key does not open with this KEK (keyturn_meta.audit_key was "
            "changed or comes from another keyring); run `keyturn audit verify`"
        )

    def create_key(self, conn: Connection) -> _Keys:
        """Create the audit key and an empty head (in the caller's transaction)."""
        secret = os.urandom(32)
        keys = _derive(secret)
        conn.execute(
            schema.meta.insert(),
            [
                {
                    "name": AUDIT_KEY.name,
                    "value": self.kek.wrap(secret, AUDIT_KEY.aad(self.keyring_id)),
                },
                {"name": HEAD_NAME, "value": self._sign(keys, 0, "").to_text()},
            ],
        )
        self._keys = keys
        return keys

    def _keys_for_writing(self, conn: Connection) -> _Keys:
        keys = self._load_keys(conn)
        if keys is None:  # a keyring from before the audit log: wrap a key for it now
            from keyturn.keys.keystore import check_kek  # keystore imports this module

            check_kek(conn, self.kek)
            keys = self.create_key(conn)
        return keys

    def record_mac(
        self, conn: Connection, fields: list[Any], *, create: bool = False
    ) -> str | None:
        """A MAC over another table's record (an API token's) under a key derived
        from the audit key: only a KEK holder can make one. None if this keyring
        has no audit key yet (and ``create`` is off)."""
        keys = self._keys_for_writing(conn) if create else self._load_keys(conn)
        if keys is None:
            return None
        message = _canonical([self.keyring_id, *fields])
        return hmac.new(keys.tokens, message, hashlib.sha256).hexdigest()

    def _sign(self, keys: _Keys, count: int, last: str) -> Head:
        mac = hmac.new(keys.head, _canonical([self.keyring_id, "head", count, last]), "sha256")
        return Head(self.keyring_id, count, last, mac.hexdigest())

    def _head_ok(self, keys: _Keys, head: Head) -> bool:
        good = self._sign(keys, head.count, head.last)
        return head.keyring_id == self.keyring_id and hmac.compare_digest(good.mac, head.mac)

    def _entry_mac(
        self,
        keys: _Keys,
        seq: int,
        at: str,
        actor: str,
        action: str,
        details: dict[str, Any],
        prev: str,
    ) -> str:
        message = _canonical([self.keyring_id, seq, at, actor, action, details, prev])
        return hmac.new(keys.entries, message, hashlib.sha256).hexdigest()

    # -- writing ----------------------------------------------------------------

    def ensure_tables(self) -> None:
        """Bring a database initialized by an older keyturn up to this schema (the
        audit tables, the token records' ``mac`` column) before the first append."""
        if self._tables_ready:
            return
        with self.engine.connect() as conn:
            needed = bool(migrations.pending(conn))
        if needed:
            with write_transaction(self.engine) as conn:
                migrations.upgrade(conn)
        self._tables_ready = True

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction in which :meth:`append` can be called.

        The tables are created first, in a transaction of their own: DDL cannot
        share the operation's transaction (MySQL commits it implicitly).
        """
        self.ensure_tables()
        with write_transaction(self.engine) as conn:
            yield conn

    def append(self, conn: Connection, actor: str, action: str, details: dict[str, Any]) -> Entry:
        """Append an entry in the caller's write transaction (it commits or not with it);
        open that transaction with :meth:`transaction`, so the tables exist.

        The new entry links to the signed head, not to whatever the table's last
        row is now, so deleted newest entries stay visible as a gap.
        """
        keys = self._keys_for_writing(conn)
        row = conn.execute(
            select(schema.meta.c.value).where(schema.meta.c.name == HEAD_NAME).with_for_update()
        ).first()
        if row is None:
            raise AuditHeadInvalid(
                "the audit head is missing from keyturn_meta; run `keyturn audit verify` "
                "(SECURITY.md, 'If the audit log fails its check')"
            )
        head = Head.from_text(row[0])
        if not self._head_ok(keys, head):
            raise AuditHeadInvalid(
                "the audit head fails its check; run `keyturn audit verify` "
                "(SECURITY.md, 'If the audit log fails its check')"
            )
        details = json.loads(json.dumps(details, default=str))
        actor = bound_actor(actor)
        seq, at = head.count + 1, now_text()
        mac = self._entry_mac(keys, seq, at, actor, action, details, head.last)
        conn.execute(
            schema.audit.insert().values(
                seq=seq, at=at, actor=actor, action=action, details=details, mac=mac
            )
        )
        new_head = self._sign(keys, seq, mac)
        conn.execute(
            schema.meta.update()
            .where(schema.meta.c.name == HEAD_NAME)
            .values(value=new_head.to_text())
        )
        return Entry(seq, at, actor, action, details, mac)

    def record(self, actor: str, action: str, details: dict[str, Any]) -> Entry:
        """Append an entry in a transaction of its own."""
        try:
            with self._lock, self.transaction() as conn:
                return self.append(conn, actor, action, details)
        except (AuditError, KEKChanged):
            raise
        except Exception as exc:
            if not (isinstance(exc, DBAPIError) and exc.connection_invalidated):
                raise AuditError(
                    f"the audit entry for {action} could not be written "
                    f"({type(exc).__name__}); the operation was refused"
                ) from exc
            lost = database_error(exc)  # the connection, not the log: say so, as elsewhere
        raise lost

    @contextmanager
    def operation(
        self,
        actor: str,
        action: str,
        details: dict[str, Any] | None = None,
        *,
        deferred: bool = False,
    ) -> Iterator[Operation]:
        """Audit a multi-transaction operation: a ``started`` entry before it writes
        (if that cannot be written, the operation does not run), then ``succeeded``
        with what the body puts in the yielded dict, or ``failed``.

        With ``deferred``, ``started`` is written when the body calls
        ``begin()`` (after its read-only checks), so a refused check leaves the
        database untouched, audit log included.
        """
        op = Operation(self, actor, action, dict(details or {}))
        if not deferred:
            op.begin()
        try:
            yield op
        except BaseException as exc:
            if op.begun:
                # If this entry cannot be written either, the operation's own error
                # is the one to report; its ``started`` entry stays without outcome.
                with suppress(AuditError, DatabaseError):
                    failed = {**op.base, "outcome": "failed", "error": type(exc).__name__}
                    self.record(actor, action, failed)
            raise
        if op.begun:  # a deferred operation that never began (a dry run) wrote nothing
            self.record(actor, action, {**op.base, **op, "outcome": "succeeded"})

    # -- reading ----------------------------------------------------------------

    def head(self) -> Head:
        """The signed head as stored (checked)."""
        with self.engine.connect() as conn:
            keys = self._load_keys(conn)
            text = _meta(conn, HEAD_NAME)
        if keys is None or text is None:
            raise AuditError("this keyring has no audit log yet")
        head = Head.from_text(text)
        if not self._head_ok(keys, head):
            raise AuditHeadInvalid(
                "the stored audit head fails its check; run `keyturn audit verify`"
            )
        return head

    def entries(self, *, after: int = 0, limit: int = 100) -> list[Entry]:
        """Entries with ``seq > after``, oldest first (as stored; see :meth:`verify`)."""
        a = schema.audit.c
        with self.engine.connect() as conn:
            if not has_table(conn, schema.audit.name):
                return []
            rows = conn.execute(
                select(a.seq, a.at, a.actor, a.action, a.details, a.mac)
                .where(a.seq > after)
                .order_by(a.seq)
                .limit(limit)
            ).all()
        return [
            Entry(r[0], _text(r[1]), _text(r[2]), _text(r[3]), _details(r[4]), _text(r[5]))
            for r in rows
        ]

    def latest(self, limit: int, action: str | None = None) -> list[Entry]:
        """The newest ``limit`` entries (of ``action`` only, if given), newest first."""
        a = schema.audit.c
        query = select(a.seq, a.at, a.actor, a.action, a.details, a.mac)
        if action is not None:
            query = query.where(a.action == action)
        with self.engine.connect() as conn:
            if not has_table(conn, schema.audit.name):
                return []
            rows = conn.execute(query.order_by(a.seq.desc()).limit(limit)).all()
        return [
            Entry(r[0], _text(r[1]), _text(r[2]), _text(r[3]), _details(r[4]), _text(r[5]))
            for r in rows
        ]

    def count(self) -> int:
        with self.engine.connect() as conn:
            if not has_table(conn, schema.audit.name):
                return 0
            return int(conn.execute(select(func.count()).select_from(schema.audit)).scalar_one())

    def verify(self, external: Head | None = None) -> AuditCheck:
        """Recompute every link and the head; name each entry that fails."""
        problems: list[str] = []
        with self.engine.connect() as conn:
            logged = has_table(conn, schema.audit.name)
            keys = self._load_keys(conn)
            head_text = _meta(conn, HEAD_NAME)
        if keys is None:
            count = self.count() if logged else 0
            if count:
                problems.append(f"{count} audit entries exist but the audit key is missing")
            if external is not None and external.count:
                problems.append("the audit log is gone, but the head kept outside had entries")
            return AuditCheck(count, tuple(problems), None, external is not None)
        head: Head | None = None
        if head_text is None:
            problems.append("the audit head is missing from keyturn_meta")
        else:
            head = Head.from_text(head_text)
            if not self._head_ok(keys, head):
                problems.append("the audit head fails its MAC (edited or from another keyring)")
                head = None
        prev, expected, n = "", 1, 0
        macs: dict[int, str] = {}
        after = 0
        while True:
            batch = self.entries(after=after, limit=1000)
            if not batch:
                break
            for e in batch:
                n += 1
                if e.seq != expected:
                    problems.append(
                        f"entries {expected}..{e.seq - 1} are missing (deleted)"
                        if e.seq > expected
                        else f"entry {e.seq} is out of order"
                    )
                good = self._entry_mac(keys, e.seq, e.at, e.actor, e.action, e.details, prev)
                if not hmac.compare_digest(good, e.mac):
                    problems.append(
                        f"entry {e.seq} fails its MAC (edited, inserted, or its predecessor "
                        "was removed or reordered)"
                    )
                macs[e.seq] = e.mac
                prev, expected = e.mac, e.seq + 1
            after = batch[-1].seq
        last_seq = expected - 1
        if head is not None:
            if head.count > last_seq:
                problems.append(
                    f"the head records {head.count} entries but the log ends at {last_seq}: "
                    "the newest entries were deleted"
                )
            elif head.count < last_seq or not hmac.compare_digest(head.last, prev):
                problems.append(
                    f"the log does not end where the head says (entry {head.count}): entries "
                    "were added or changed without the audit key"
                )
        if external is not None:
            if external.keyring_id != self.keyring_id or not self._head_ok(keys, external):
                problems.append("the head given with --head is not a valid head of this log")
            elif external.count and not hmac.compare_digest(
                macs.get(external.count, ""), external.last
            ):
                problems.append(
                    f"the log no longer holds entry {external.count} as recorded in the head "
                    "kept outside: it was rolled back, truncated or rewritten"
                )
        return AuditCheck(n, tuple(dict.fromkeys(problems)), head, external is not None)


def _meta(conn: Connection, name: str) -> str | None:
    if not has_table(conn, schema.meta.name):
        return None
    row = conn.execute(select(schema.meta.c.value).where(schema.meta.c.name == name)).first()
    return None if row is None else str(row[0])


def _details(value: Any) -> dict[str, Any]:
    """An entry's details as stored; anything but a JSON object (a row edited by
    hand) is shown as such, and then fails its MAC: tampering, not a crash."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):  # a backend returned the JSON text
        try:
            value = json.loads(value)
        except ValueError:
            return {"corrupt": "details are not JSON"}
    if not isinstance(value, dict):
        return {"corrupt": f"details are a JSON {type(value).__name__}, not an object"}
    return value


def _text(value: Any) -> str:
    """A text column as stored; another type (a BLOB written by hand) as its repr."""
    return value if isinstance(value, str) else repr(value)
