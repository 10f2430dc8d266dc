"""Loading and validating ``keyturn.toml``.

Only structure is checked here; whether the tables and columns exist is
checked against the database by ``keyturn.db.columns``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from keyturn._core.context import column_context, row_context, unescaped_row_context
from keyturn._core.jsonpath import JsonPath, parse_path
from keyturn.appimport import import_object
from keyturn.errors import ConfigError, InvalidToken
from keyturn.legacy import LegacySpec, parse_legacy
from keyturn.legacy.python import load_hooks

CONFIG_NAME = "keyturn.toml"
CONFIG_ENV = "KEYTURN_CONFIG"
DEFAULT_CRYPTOPERIOD_DAYS = 730  # NIST SP 800-57 Part 1: up to 2 years for a DEK
_TOP_KEYS = {
    "database",
    "kek",
    "cryptoperiod_days",
    "columns",
    "legacy",
    "server",
    "apps",
    "models",
}
_SERVER_KEYS = {"new_kek_env", "new_kek_file", "trusted_proxies"}
_APPS_KEYS = {"refresh_seconds", "write_margin_seconds"}
_COLUMN_KEYS = {
    "table",
    "column",
    "primary_key",
    "bind",
    "legacy",
    "read_plaintext",
    "where",
    "json_fields",
}
BINDS = ("column", "row")
#: How many values one ``where`` column may list (each is a bound parameter).
MAX_WHERE_VALUES = 1000
# A ``where`` filter: (column, the values it may hold), sorted by column.
RowFilter = tuple[tuple[str, tuple[str | int, ...]], ...]
T = TypeVar("T")


@dataclass(frozen=True)
class ColumnSpec:
    """A configured column holding secrets, and how its tokens are bound."""

    table: str
    column: str
    primary_key: tuple[str, ...]
    bind: str = "column"
    legacy: str | None = None
    #: Migration mode: Store.decrypt returns a value that is not a kt1 token as it is.
    read_plaintext: bool = False
    #: Only the rows whose columns hold one of the listed values (key/value settings
    #: tables); every other row is never read, changed or counted.
    where: RowFilter = ()
    #: The column holds JSON documents; only these fields of them are secrets.
    json_fields: tuple[JsonPath, ...] = ()
    #: For one field of a JSON column (see :meth:`fields`): its path, which its
    #: tokens are bound to.
    path: str = ""

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"

    def fields(self) -> list[tuple[JsonPath, ColumnSpec]]:
        """Each JSON field of the column with a spec of its own, whose context ends
        with the field's path (``table.column$.apiKey``)."""
        return [(p, replace(self, json_fields=(), path=p.text)) for p in self.json_fields]

    def describe_where(self) -> str:
        """The filter as the config spells it, for messages: ``key in [a, b]``."""
        return " and ".join(
            f"{column} in [{', '.join(map(str, values))}]" for column, values in self.where
        )

    def context(self, pk: tuple[Any, ...]) -> str:
        """The AAD context of this column's token in the row with key ``pk``."""
        if self.bind == "row":
            return row_context(self.table, self.column, pk) + self.path
        return column_context(self.table, self.column) + self.path

    def old_context(self, pk: tuple[Any, ...]) -> str | None:
        """The context keyturn 0.1 used for this row, where it differs (a key part with
        ``,`` or ``\\``): such a token still opens, and the next rotation rewrites it."""
        if self.bind != "row" or self.path:
            return None
        return unescaped_row_context(self.table, self.column, pk)

    def open_token(self, open_: Callable[[str, str], T], token: str, pk: tuple[Any, ...]) -> T:
        """``open_(token, context)`` with this row's context, then with its
        :meth:`old_context` if there is one and the first fails."""
        try:
            return open_(token, self.context(pk))
        except InvalidToken:
            old = self.old_context(pk)
            if old is None:
                raise
            return open_(token, old)


@dataclass(frozen=True)
class ServerSpec:
    """``[server]``: where ``POST /v1/admin/encryption/rotate-kek`` takes the new KEK from.

    Neither set: the endpoint is disabled (a Transit KEK needs no new key).
    """

    new_kek_env: str | None = None
    new_kek_file: Path | None = None
    #: Proxies (addresses or networks) whose X-Forwarded-For is believed; none by default.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()


@dataclass(frozen=True)
class AppContract:
    """``[apps]``: what every app process using a Store promises, and keyturn relies on.

    A Store re-reads the active key version at least every ``refresh_seconds``
    and commits what it sealed within ``write_margin_seconds``; so a version
    that stopped being active at T has no new values after
    T + :attr:`grace_seconds`, and only then may it be retired or destroyed.
    """

    refresh_seconds: float = 30.0
    write_margin_seconds: float = 60.0

    @property
    def grace_seconds(self) -> float:
        return self.refresh_seconds + self.write_margin_seconds


@dataclass(frozen=True)
class Config:
    """A parsed configuration; ``database`` is the resolved SQLAlchemy URL."""

    path: Path
    database: str
    kek: str | None
    columns: tuple[ColumnSpec, ...]
    cryptoperiod_days: int = DEFAULT_CRYPTOPERIOD_DAYS
    legacy: tuple[LegacySpec, ...] = ()
    server: ServerSpec = field(default_factory=lambda: ServerSpec())
    apps: AppContract = field(default_factory=lambda: AppContract())

    def legacy_for(self, column: ColumnSpec) -> LegacySpec | None:
        """The ``[[legacy]]`` reader a column names, if any."""
        return next((s for s in self.legacy if s.name == column.legacy), None)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def __repr__(self) -> str:
        # The URL may carry a database password: show only where the config is.
        return f"Config(path={str(self.path)!r}, columns={[c.name for c in self.columns]})"


def find_config(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file: ``path``, else $KEYTURN_CONFIG, else ./keyturn.toml."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    candidate = Path(path) if path is not None else Path.cwd() / CONFIG_NAME
    if not candidate.is_file():
        if path is None:
            raise ConfigError(
                f"no {CONFIG_NAME} in {Path.cwd()}; give its path (keyturn.open(PATH), or "
                f"--config PATH on the command line) or set {CONFIG_ENV}"
            )
        raise ConfigError(f"config file {candidate} does not exist")
    return candidate.resolve()


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Find, read and validate the configuration."""
    file = find_config(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    return parse_config(data, file)


def parse_config(data: dict[str, Any], file: Path) -> Config:
    """Validate a parsed TOML document; every error names the offending entry."""
    _reject_unknown(data, _TOP_KEYS, f"{file}")
    database = data.get("database")
    if not isinstance(database, str) or not database:
        raise ConfigError(f"{file}: `database` must be a SQLAlchemy URL string")
    kek = data.get("kek")
    if kek is not None and not isinstance(kek, str):
        raise ConfigError(f'{file}: `kek` must be a string such as "env:NAME"')
    period = data.get("cryptoperiod_days", DEFAULT_CRYPTOPERIOD_DAYS)
    if not isinstance(period, int) or isinstance(period, bool) or period <= 0:
        raise ConfigError(f"{file}: `cryptoperiod_days` must be a positive integer")
    raw_columns = data.get("columns", [])
    if not isinstance(raw_columns, list):
        raise ConfigError(f"{file}: `columns` must be an array of tables ([[columns]])")
    columns = tuple(_parse_column(entry, i, file) for i, entry in enumerate(raw_columns, 1))
    if "models" in data:
        columns = _with_models(columns, data["models"], file)
    seen: set[str] = set()
    for col in columns:
        if col.name in seen:
            raise ConfigError(f"{file}: column {col.name} is configured twice")
        seen.add(col.name)
    raw_legacy = data.get("legacy", [])
    if not isinstance(raw_legacy, list):
        raise ConfigError(f"{file}: `legacy` must be an array of tables ([[legacy]])")
    legacy = tuple(
        parse_legacy(entry, f"{file}: [[legacy]] entry {i}")
        for i, entry in enumerate(raw_legacy, 1)
    )
    for i, spec in enumerate(legacy, 1):
        if spec.format == "python":
            load_hooks(spec, file.parent, f"{file}: [[legacy]] entry {i} ({spec.name})")
    names = [spec.name for spec in legacy]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{file}: [[legacy]] name {name!r} is used twice")
    for col in columns:
        if col.legacy is not None and col.legacy not in names:
            raise ConfigError(
                f"{file}: column {col.name} names legacy reader {col.legacy!r}, but no "
                f"[[legacy]] entry has that name (defined: {', '.join(names) or 'none'})"
            )
    server = _parse_server(data.get("server", {}), file)
    apps = _parse_apps(data.get("apps", {}), file)
    return Config(
        file, _resolve_database(database, file), kek or None, columns, period, legacy, server, apps
    )


def _with_models(columns: tuple[ColumnSpec, ...], value: Any, file: Path) -> tuple[ColumnSpec, ...]:
    """The listed columns plus the encrypted columns the app's SQLAlchemy models declare
    (``models = "package.module:Base"``, or a list); a listed column the models
    declare differently is an error, so the two can never drift apart."""
    targets = [value] if isinstance(value, str) else value
    if not isinstance(targets, list) or not all(isinstance(t, str) and ":" in t for t in targets):
        raise ConfigError(
            f'{file}: `models` must be "package.module:Base" (a declarative base or a '
            "MetaData), or a list of them"
        )
    listed = {c.name: c for c in columns}
    found: list[ColumnSpec] = []
    for target in targets:
        for table in _model_tables(target, file):
            pk = tuple(c.name for c in table.primary_key.columns)
            for column in table.columns:
                name = f"{table.name}.{column.name}"
                encrypted = getattr(column.type, "keyturn_encrypted", False)
                spec = listed.get(name)
                where = f"{file}: column {name}"
                if spec is not None and not encrypted:
                    raise ConfigError(
                        f"{where} is listed, but {target} declares it as {column.type!r}, not "
                        "an encrypted type: use EncryptedString/EncryptedText in the model"
                    )
                if not encrypted:
                    continue
                bind = getattr(column.type, "keyturn_bind", "column")
                paths = tuple(
                    parse_path(p) for p in getattr(column.type, "keyturn_json_fields", ())
                )
                if spec is None:
                    found.append(ColumnSpec(table.name, column.name, pk, bind, json_fields=paths))
                elif spec.json_fields != paths:
                    raise ConfigError(
                        f"{where} lists json_fields {[p.text for p in spec.json_fields]}, but "
                        f"{target} declares {[p.text for p in paths]}"
                    )
                elif spec.primary_key != pk:
                    raise ConfigError(
                        f"{where} lists primary_key {list(spec.primary_key)}, but {target} "
                        f"declares {list(pk)}"
                    )
    return columns + tuple(found)


def _model_tables(target: str, file: Path) -> list[Any]:
    """The tables of ``module:attribute``, imported with the config's directory on the path."""
    where = f"{file}: models = {target!r}"
    found = import_object(target, file.parent, where)
    tables = getattr(getattr(found, "metadata", found), "tables", None)
    if not isinstance(tables, Mapping):
        raise ConfigError(f"{where}: that is neither a declarative base nor a MetaData")
    return list(tables.values())


def _parse_apps(entry: Any, file: Path) -> AppContract:
    if not isinstance(entry, dict):
        raise ConfigError(f"{file}: `apps` must be a table ([apps])")
    _reject_unknown(entry, _APPS_KEYS, f"{file}: [apps]")
    values: dict[str, float] = {}
    for key, value in entry.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
            raise ConfigError(f"{file}: [apps] `{key}` must be a number of seconds, 0 < s <= 86400")
        values[key] = float(value)
    return AppContract(**values)


def _parse_server(entry: Any, file: Path) -> ServerSpec:
    if not isinstance(entry, dict):
        raise ConfigError(f"{file}: `server` must be a table ([server])")
    _reject_unknown(entry, _SERVER_KEYS, f"{file}: [server]")
    env, path = entry.get("new_kek_env"), entry.get("new_kek_file")
    for key, value in (("new_kek_env", env), ("new_kek_file", path)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{file}: [server] `{key}` must be a non-empty string")
    if env and path:
        raise ConfigError(f"{file}: [server] give one of `new_kek_env` and `new_kek_file`")
    proxies = entry.get("trusted_proxies", [])
    try:
        if not isinstance(proxies, list) or not all(isinstance(p, str) for p in proxies):
            raise ValueError
        networks = tuple(ip_network(p, strict=False) for p in proxies)
    except ValueError:
        raise ConfigError(
            f"{file}: [server] `trusted_proxies` must be a list of addresses or networks, "
            'e.g. ["127.0.0.1", "10.0.0.0/8"]'
        ) from None
    return ServerSpec(env, (file.parent / path) if path else None, networks)


def _parse_column(entry: Any, index: int, file: Path) -> ColumnSpec:
    where = f"{file}: [[columns]] entry {index}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    _reject_unknown(entry, _COLUMN_KEYS, where)
    for key in ("table", "column"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ConfigError(f"{where}: `{key}` is required and must be a string")
    where = f"{where} ({entry['table']}.{entry['column']})"
    pk = entry.get("primary_key", "id")
    if isinstance(pk, str):
        pk = [pk]
    if not (isinstance(pk, list) and pk and all(isinstance(p, str) and p for p in pk)):
        raise ConfigError(f"{where}: `primary_key` must be a column name or a list of them")
    bind = entry.get("bind", "column")
    if bind not in BINDS:
        raise ConfigError(f'{where}: `bind` must be "column" or "row"')
    legacy = entry.get("legacy")
    if legacy is not None and (not isinstance(legacy, str) or not legacy):
        raise ConfigError(f"{where}: `legacy` must be the name of a [[legacy]] entry")
    read_plaintext = entry.get("read_plaintext", False)
    if not isinstance(read_plaintext, bool):
        raise ConfigError(f"{where}: `read_plaintext` must be true or false")
    rows = _parse_where(entry.get("where", {}), entry["column"], where)
    fields = entry.get("json_fields", [])
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise ConfigError(f'{where}: `json_fields` must be a list of paths, e.g. ["$.apiKey"]')
    try:
        paths = tuple(parse_path(f) for f in fields)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    texts = [p.text for p in paths]
    for text in texts:
        if texts.count(text) > 1:
            raise ConfigError(f"{where}: `json_fields` names {text} twice")
    for text in texts:
        if any(other.startswith((f"{text}.", f"{text}[")) for other in texts):
            raise ConfigError(f"{where}: `json_fields` names {text} and fields inside it")
    return ColumnSpec(
        entry["table"], entry["column"], tuple(pk), bind, legacy, read_plaintext, rows, paths
    )


def _parse_where(value: Any, secret: str, where: str) -> RowFilter:
    """``where = { key = ["smtp_pass", …] }``: each column compared with listed
    strings or integers, all of them required. No SQL is taken from the config."""
    usage = (
        f"{where}: `where` must be a table of column = [values], e.g. where = {{ key = "
        f'["smtp_pass", "oidc_client_secret"] }} (strings or integers)'
    )
    if not isinstance(value, dict):
        raise ConfigError(usage)
    parsed = []
    for column, listed in sorted(value.items()):
        values = [listed] if isinstance(listed, str | int) else listed
        if (
            not isinstance(values, list)
            or not values
            or len(values) > MAX_WHERE_VALUES
            or any(isinstance(v, bool) or not isinstance(v, str | int) for v in values)
            or len({type(v) for v in values}) > 1
        ):
            raise ConfigError(
                f"{usage}; `{column}` must list 1 to {MAX_WHERE_VALUES} values of one type"
            )
        if column == secret:
            raise ConfigError(f"{where}: `where` cannot filter on the secret column itself")
        parsed.append((column, tuple(dict.fromkeys(values))))
    return tuple(parsed)


def _reject_unknown(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _resolve_database(database: str, file: Path) -> str:
    """Resolve ``env:NAME`` and make a relative SQLite path relative to the config."""
    if database.startswith("env:"):
        name = database[4:]
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"{file}: `database` names env var {name}, which is not set")
        database = value
    try:
        url = make_url(database)
    except ArgumentError:
        raise ConfigError(f"{file}: `database` is not a valid SQLAlchemy URL") from None
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db_path = Path(url.database)
        if not db_path.is_absolute():
            url = url.set(database=str((file.parent / db_path).resolve()))
    return url.render_as_string(hide_password=False)
