"""The ``keyturn`` command line: a thin shell over the library.

Exit codes: 0 ok; 1 the operation failed (e.g. some rows failed, database
error); 2 usage, configuration or schema error; 3 key error (wrong, missing,
malformed or weak KEK; unknown key version).
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from . import keystore
from ._progress import progress_factory
from .columns import bind_columns
from .config import Config, load_config
from .database import connect
from .encrypt_existing import encrypt_existing
from .errors import KeyturnError
from .kek import generate_kek_bytes
from .kek_sources import resolve_kek, write_key_file
from .reports import RewriteReport
from .rewrite import Pacing
from .status import StatusReport, status
from .store import Store

EXIT_CODES = """\b
Exit codes:
  0  success
  1  the operation failed (rows failed, database error)
  2  usage, configuration or schema error
  3  key error: KEK missing, malformed, weak or wrong; unknown key version
"""


class _Group(click.Group):
    """Turns keyturn's errors into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyturnError as exc:
            click.echo(f"keyturn: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except SQLAlchemyError as exc:
            click.echo(f"keyturn: database error: {_db_message(exc)}", err=True)
            ctx.exit(1)


def _db_message(exc: SQLAlchemyError) -> str:
    # The engine hides bound parameters; show the driver's own first line only.
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__) + "; nothing further was written"


def actor() -> str:
    """Who is acting, for ``created_by`` and the audit log: the OS user and host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


@click.group(
    cls=_Group, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="KEYTURN_CONFIG",
    help="Path to keyturn.toml (default: ./keyturn.toml, or $KEYTURN_CONFIG).",
)
@click.version_option(package_name="keyturn")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """keyturn: encrypt an app's secrets in its own SQL database and rotate every key.

    Keys are never accepted as command-line values: the KEK comes from
    $KEYTURN_KEK, a key file, or `kek = ...` in keyturn.toml (docs/KEYS.md).
    """
    ctx.obj = config_path


def _config(ctx: click.Context) -> Config:
    return load_config(ctx.obj)


def _open(ctx: click.Context) -> Store:
    from .store import open as open_store

    return open_store(ctx.obj)


def _emit(as_json: bool, data: dict[str, Any], human: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_context
def init(ctx: click.Context, as_json: bool) -> None:
    """Create keyturn's tables and data key v1 in the database.

    Idempotent: on an initialized database it checks the KEK and changes nothing.
    Outside production, if no KEK is provided, a random one is written to
    data/.keyturn_kek beside keyturn.toml (mode 0600), with a warning.
    """
    config = _config(ctx)
    engine = connect(config.database)
    try:
        with engine.connect() as conn:
            bind_columns(conn, config.columns)
            exists = keystore.is_initialized(conn)
        kek = resolve_kek(config, allow_generate=not exists)
        created, loaded = keystore.initialize(engine, kek, actor())
    finally:
        engine.dispose()
    active = loaded.keyring.active_version
    human = (
        f"initialized keyturn: key v{active} is active, wrapped by the KEK from "
        f"{kek.source} (id {kek.kek_id}); {len(config.columns)} column(s) configured"
        if created
        else f"already initialized (key v{active} active, KEK {kek.kek_id} opens it); "
        "nothing changed"
    )
    _emit(
        as_json,
        {
            "created": created,
            "active_version": active,
            "kek_id": kek.kek_id,
            "kek_source": kek.source,
            "keyring_id": loaded.keyring_id,
        },
        human,
    )


def _pacing_options(func: Any) -> Any:
    func = click.option(
        "--chunk-time",
        type=click.FloatRange(min=0.01),
        default=0.5,
        show_default=True,
        help="Target seconds per batch; batch size adapts to it, keeping row locks short.",
    )(func)
    return click.option(
        "--max-rate",
        type=click.FloatRange(min=1),
        default=None,
        help="Throttle to at most this many rows per second.",
    )(func)


def _print_rewrite(report: RewriteReport, as_json: bool, verb: str) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        head = "dry run, nothing written: " if report.dry_run else ""
        totals = ", ".join(f"{v} {k}" for k, v in report.totals.items() if v or k == verb)
        click.echo(f"{head}{report.operation}: {totals} in {report.seconds:.2f}s")
        for name, counts in report.columns.items():
            detail = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
            click.echo(f"  {name}: {detail or 'no rows'}")
        for row in report.failed_rows:
            click.echo(f"  failed: {row['table']}.{row['column']} at primary key {row['pk']}")
    if report.failed:
        click.echo(
            f"keyturn: {report.failed} value(s) failed (listed by primary key); they were "
            "left untouched. See docs/ROTATION.md, 'Rows that fail'.",
            err=True,
        )
        sys.exit(1)


@cli.command("encrypt-existing")
@click.option("--dry-run", is_flag=True, help="Count what would be encrypted; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@_pacing_options
@click.pass_context
def encrypt_existing_cmd(
    ctx: click.Context, dry_run: bool, as_json: bool, chunk_time: float, max_rate: float | None
) -> None:
    """Encrypt the plaintext values of every configured column, in place.

    Works in batches by compare-and-swap while the app keeps running. NULL and
    empty values are left alone; values that are already keyturn tokens are
    counted, never encrypted twice. Safe to interrupt: run it again to finish.
    Exits 1 if any value failed (e.g. looks like a token but does not decrypt).
    """
    with _open(ctx) as store:
        report = encrypt_existing(
            store,
            dry_run=dry_run,
            pacing=Pacing(chunk_time=chunk_time, max_rate=max_rate),
            progress=None if as_json else progress_factory(),
        )
    _print_rewrite(report, as_json, "encrypted")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show the active key, key history, and per-column counts by key version.

    Counts come from each value's header; nothing is decrypted and no key or
    secret is printed. Warns when the active key is past its cryptoperiod
    (`cryptoperiod_days`, default 730) or plaintext values remain.
    """
    with _open(ctx) as store:
        report = status(store)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(_status_text(report))


def _status_text(r: StatusReport) -> str:
    lines = [
        f"active key: v{r.active_version} ({r.active_age_days:.0f} days old; "
        f"cryptoperiod {r.cryptoperiod_days} days)",
        f"KEK:        {r.kek_source} (id {r.kek_id})",
        "",
        "keys:",
        f"  {'version':<8} {'state':<10} {'created (UTC)':<20} {'age(d)':>7} {'rows':>9}"
        "  created by",
    ]
    for k in r.keys:
        lines.append(
            f"  v{k.version:<7} {k.state:<10} {k.created_at[:19].replace('T', ' '):<20} "
            f"{k.age_days:>7.1f} {k.rows:>9}  {k.created_by}"
        )
    lines += ["", "columns:"]
    if not r.columns:
        lines.append("  (none configured)")
    for c in r.columns:
        versions = ", ".join(f"v{v}: {n}" for v, n in c.by_version.items()) or "-"
        lines.append(
            f"  {c.column:<30} {c.rows} rows; encrypted {versions}; "
            f"plaintext {c.plaintext}; empty {c.empty}"
        )
    for w in r.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


@cli.command("gen-kek")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the new KEK to this file (mode 0600; an existing file is never overwritten).",
)
def gen_kek(path: Path | None) -> None:
    """Generate a random 256-bit KEK.

    With --file, writes it to a new key file with mode 0600 and prints nothing
    secret. Without, prints it as 64 hex characters on stdout, for piping into
    a secret manager (like `openssl rand -hex 32`).
    """
    key = generate_kek_bytes()
    if path is None:
        click.echo(key.hex())
        if sys.stdout.isatty():
            click.echo("keyturn: store this in your secret manager; it is shown once.", err=True)
        return
    try:
        write_key_file(path, key.hex())
    except FileExistsError:
        click.echo(f"keyturn: error: {path} exists; it was left as it is", err=True)
        sys.exit(2)
    click.echo(f"wrote a new KEK to {path} (mode 0600)")


def main() -> None:
    cli(prog_name="keyturn")
