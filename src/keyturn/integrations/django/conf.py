"""keyturn's configuration built from Django's settings, and the process's Store."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.apps import apps
from django.conf import settings

from keyturn.config import Config, parse_config
from keyturn.errors import ConfigError
from keyturn.store import Store, open_config

_DRIVERS = {
    "django.db.backends.postgresql": "postgresql+psycopg",
    "django.db.backends.mysql": "mysql+pymysql",
}
_OPTIONS = {"kek", "apps", "cryptoperiod_days", "legacy", "database", "columns"}
_store: Store | None = None
_lock = threading.Lock()


def options() -> dict[str, Any]:
    """The ``KEYTURN`` setting (a dict), checked for unknown keys."""
    given = getattr(settings, "KEYTURN", {}) or {}
    if not isinstance(given, dict):
        raise ConfigError("settings.KEYTURN must be a dict")
    unknown = sorted(set(given) - _OPTIONS)
    if unknown:
        raise ConfigError(
            f"settings.KEYTURN: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(_OPTIONS))}"
        )
    return given


def database_url(alias: str) -> str:
    """A SQLAlchemy URL for the Django database ``alias``."""
    try:
        db = settings.DATABASES[alias]
    except KeyError:
        raise ConfigError(f"settings.KEYTURN names database {alias!r}, not in DATABASES") from None
    engine = db.get("ENGINE", "")
    if engine == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    driver = _DRIVERS.get(engine)
    if driver is None:
        raise ConfigError(f"DATABASES[{alias!r}] uses {engine}, which keyturn does not support")
    user = quote(str(db.get("USER") or ""), safe="")
    password = quote(str(db.get("PASSWORD") or ""), safe="")
    login = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"{driver}://{login}{db.get('HOST') or '127.0.0.1'}{port}/{db['NAME']}"


def encrypted_fields() -> list[tuple[Any, Any]]:
    """``(model, field)`` for every encrypted field of the installed apps."""
    return [
        (model, field)
        for model in apps.get_models()
        for field in model._meta.local_fields
        if getattr(field, "keyturn_encrypted", False)
    ]


def build_config() -> Config:
    """The configuration, as ``keyturn.toml`` would give it, from the settings."""
    given = options()
    data: dict[str, Any] = {
        k: v for k, v in given.items() if k in ("kek", "apps", "cryptoperiod_days", "legacy")
    }
    data["database"] = database_url(given.get("database", "default"))
    declared = [
        {
            "table": model._meta.db_table,
            "column": field.column,
            "primary_key": model._meta.pk.column,
            **(
                {"json_fields": list(field.keyturn_json_fields)}
                if getattr(field, "keyturn_json_fields", None)
                else {}
            ),
        }
        for model, field in encrypted_fields()
    ]
    names = {(c["table"], c["column"]) for c in declared}
    listed = list(given.get("columns", []))
    for entry in listed:
        if entry.get("bind", "column") != "column":
            raise ConfigError(
                f"settings.KEYTURN column {entry.get('table')}.{entry.get('column')}: the "
                'Django fields seal with bind = "column" only (row binding is not built yet)'
            )
        if (entry.get("table"), entry.get("column")) not in names:
            raise ConfigError(
                f"settings.KEYTURN lists column {entry.get('table')}.{entry.get('column')}, "
                "but no installed model declares it as an encrypted field"
            )
    listed_names = {(e.get("table"), e.get("column")) for e in listed}
    data["columns"] = listed + [
        c for c in declared if (c["table"], c["column"]) not in listed_names
    ]
    base = Path(getattr(settings, "BASE_DIR", Path.cwd()))
    return parse_config(data, base / "settings.KEYTURN")


def store() -> Store:
    """The process's Store, opened on first use."""
    global _store
    if _store is None:
        with _lock:
            if _store is None:
                _store = open_config(build_config())
    return _store


def reset() -> None:
    """Close the process's Store (the next use opens it again)."""
    global _store
    with _lock:
        if _store is not None:
            _store.close()
        _store = None
