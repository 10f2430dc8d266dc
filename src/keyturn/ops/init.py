"""``keyturn init``: keyturn's tables and data key v1 in the application's database."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from keyturn.config import Config
from keyturn.db.columns import bind_columns
from keyturn.db.database import connect
from keyturn.kek import resolve_kek
from keyturn.keys import keystore


@dataclass(frozen=True)
class InitResult:
    """What init found or made; ``created`` is False on a database already initialized."""

    created: bool
    active_version: int
    kek_id: str
    kek_source: str
    keyring_id: str
    columns: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["columns"]
        return data


def init(config: Config, *, actor: str = "library", wait: float = 0.0) -> InitResult:
    """Create the keyring (idempotent: on an initialized database, check the KEK,
    bring keyturn's schema up to date and change nothing else).

    The configured columns are checked first. Outside production, with no KEK
    provided, a random one is written to ``data/.keyturn_kek`` beside the config
    (mode 0600), with a warning. Creating holds the keyring lock (``wait``).
    """
    engine = connect(config.database)
    try:
        with engine.connect() as conn:
            bind_columns(conn, config.columns)
            exists = keystore.is_initialized(conn)
        kek = resolve_kek(config, allow_generate=not exists)
        created, loaded = keystore.initialize(engine, kek, actor, wait=wait)
    finally:
        engine.dispose()
    return InitResult(
        created,
        loaded.keyring.active_version,
        kek.kek_id,
        kek.source,
        loaded.keyring_id,
        len(config.columns),
    )
