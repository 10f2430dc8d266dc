"""The ``keyturn`` command line: a thin shell over the library.

Exit codes: 0 ok; 1 the operation failed (e.g. some rows failed, database
error); 2 usage, configuration or schema error; 3 key error (wrong, missing,
malformed or weak KEK; unknown key version); 4 the keyring is locked by another
keyturn operation (nothing was written).
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from keyturn.cli.progress import progress_factory
from keyturn.errors import (
    ConfigError,
    DatabaseError,
    KeyManagementError,
    KeyringBusy,
    KeyturnError,
)
from keyturn.ops.scopes import SCOPES

if TYPE_CHECKING:  # the commands import what they use: `keyturn --help` loads none of it
    from keyturn._core.kek import KEK
    from keyturn.config import Config
    from keyturn.keys import audit
    from keyturn.ops.reports import RewriteReport
    from keyturn.ops.status import StatusReport
    from keyturn.store import Store

EXIT_CODES = """\b
Exit codes:
  0  success
  1  the operation failed (rows failed, database error)
  2  usage, configuration or schema error
  3  key error: KEK missing, malformed, weak or wrong; unknown key version;
     legacy key missing or wrong
  4  busy: another keyturn operation holds the keyring lock (it is named);
     nothing was written. Retry, or pass --wait SECONDS
"""


# The four families of errors, most specific first (keep in step with EXIT_CODES).
_EXIT_CODES: tuple[tuple[type[KeyturnError], int], ...] = (
    (KeyringBusy, 4),
    (KeyManagementError, 3),
    (ConfigError, 2),
    (KeyturnError, 1),
)


def exit_code(exc: KeyturnError) -> int:
    """The documented exit code for a keyturn error (see EXIT_CODES)."""
    return next(code for cls, code in _EXIT_CODES if isinstance(exc, cls))


class _Group(click.Group):
    """Turns keyturn's errors into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DatabaseError as exc:
            self._database_error(ctx, exc)
        except KeyturnError as exc:
            click.echo(f"keyturn: error: {exc}", err=True)
            ctx.exit(exit_code(exc))
        except Exception as exc:
            if "keyturn.db.database" not in sys.modules:
                raise  # no database was touched: not a driver's error
            from keyturn.db.database import DRIVER_ERRORS, database_error

            if not isinstance(exc, DRIVER_ERRORS):
                raise
            self._database_error(ctx, database_error(exc))

    @staticmethod
    def _database_error(ctx: click.Context, exc: DatabaseError) -> None:
        hint = ""
        if ctx.invoked_subcommand in _RESUMABLE:
            hint = f"; run `keyturn {ctx.invoked_subcommand}` again to resume"
        click.echo(f"keyturn: {exc}{hint}", err=True)
        ctx.exit(exit_code(exc))


_RESUMABLE = ("rotate", "encrypt-existing", "import-legacy")
# --log-format's choices: text, or one JSON object per line (_JsonLines).
_LOG_FORMATS = click.Choice(["text", "json"])


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
@click.option(
    "--log-format",
    "log_format",
    type=_LOG_FORMATS,
    envvar="KEYTURN_LOG_FORMAT",
    default=None,
    help="Log each operation's start and end (outcome, counts, seconds; never a value) on "
    "stderr, as text or one JSON object per line ($KEYTURN_LOG_FORMAT).",
)
@click.version_option(package_name="keyturn")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_format: str | None) -> None:
    """keyturn: encrypt an app's secrets in its own SQL database and rotate every key.

    Keys are never accepted as command-line values: the KEK comes from
    $KEYTURN_KEK, a key file, or `kek = ...` in keyturn.toml (docs/KEYS.md).
    """
    if ctx.obj is None:  # else a caller passed a Config built in code
        ctx.obj = config_path
    _oplog.handlers = []
    _oplog.setLevel(logging.WARNING)  # operations are logged only when asked
    _oplog.propagate = False
    if log_format is not None:
        _log_to_stderr(_oplog, log_format, "%(asctime)s %(message)s")


def _config(ctx: click.Context) -> Config:
    """The configuration; the commands reach the database layer through here or
    :func:`_open`, and only then is it imported (`keyturn --help` stays fast)."""
    from keyturn.config import Config, load_config
    from keyturn.db.database import quiet_driver_logs

    quiet_driver_logs()
    return ctx.obj if isinstance(ctx.obj, Config) else load_config(ctx.obj)


def _open(ctx: click.Context) -> Store:
    from keyturn.db.database import quiet_driver_logs
    from keyturn.store import open as open_store

    quiet_driver_logs()
    return open_store(ctx.obj)


#: Operations' start and end, with --log-format (off otherwise).
_oplog = logging.getLogger("keyturn.cli")


@contextmanager
def _audited(
    store: Store, action: str, deferred: bool = False, **details: Any
) -> Iterator[audit.Operation]:
    """Audit a CLI operation: started, then succeeded or failed. A ``deferred`` one
    is started by its ``before_write`` hook, after its checks; dry runs never are.
    With --log-format, its start and end are logged too (counts, never values)."""
    started = time.monotonic()
    _oplog.info(
        "keyturn: %s started", action, extra={"event": "operation.start", "operation": action}
    )
    outcome, error, counts = "failed", None, None
    try:
        with store.audit.operation(actor(), action, details, deferred=deferred) as op:
            yield op
            counts = op.get("totals") or {k: v for k, v in op.items() if isinstance(v, int)}
        outcome = "succeeded"
    except BaseException as exc:
        error = type(exc).__name__
        raise
    finally:
        seconds = round(time.monotonic() - started, 3)
        _oplog.info(
            "keyturn: %s %s in %.2fs%s",
            action,
            outcome,
            seconds,
            f": {', '.join(f'{n} {k}' for k, n in counts.items() if n)}" if counts else "",
            extra={
                "event": "operation.end",
                "operation": action,
                "outcome": outcome,
                "seconds": seconds,
                "counts": counts,
                "error": error,
            },
        )


def _emit(as_json: bool, data: dict[str, Any], human: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human)


_yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
_wait_option = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="If another keyturn operation holds the keyring lock, wait up to this long for "
    "it instead of refusing at once (exit 4).",
)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_wait_option
@click.pass_context
def init(ctx: click.Context, as_json: bool, wait: float) -> None:
    """Create keyturn's tables and data key v1 in the database.

    Idempotent: on an initialized database it checks the KEK and changes nothing.
    Outside production, if no KEK is provided, a random one is written to
    data/.keyturn_kek beside keyturn.toml (mode 0600), with a warning.
    """
    from keyturn.ops.init import init as init_keyring

    result = init_keyring(_config(ctx), actor=actor(), wait=wait)
    human = (
        f"initialized keyturn: key v{result.active_version} is active, wrapped by the KEK "
        f"from {result.kek_source} (id {result.kek_id}); {result.columns} column(s) configured"
        if result.created
        else f"already initialized (key v{result.active_version} active, KEK {result.kek_id} "
        "opens it); nothing changed"
    )
    _emit(as_json, result.to_dict(), human)


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


_LEFT_UNTOUCHED = "they were left untouched. See docs/ROTATION.md, 'Rows that fail'."


def _print_rewrite(
    report: RewriteReport, as_json: bool, verb: str, failure: str = _LEFT_UNTOUCHED
) -> None:
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
        for row in report.unknown_rows:
            click.echo(f"  unknown: {row['table']}.{row['column']} at primary key {row['pk']}")
    if report.unknown_rows and not as_json:
        click.echo(
            f"keyturn: {len(report.unknown_rows)} value(s) look encrypted by a scheme keyturn "
            "cannot read and were left as they are: describe it in a [[legacy]] entry, or if "
            "they are plaintext (random keys in hex or base64) run `keyturn encrypt-existing "
            "--include-unknown` (docs/ADOPTING.md, 'Unknown values')",
            err=True,
        )
    if report.failed:
        click.echo(
            f"keyturn: {report.failed} value(s) failed (listed by primary key); {failure}",
            err=True,
        )
        sys.exit(1)


def _confirm(yes: bool, question: str | Callable[[], str]) -> None:
    """Ask on a terminal; without one, require --yes (exit 2 otherwise).

    ``question`` may be a function, so that a costly one is built only when asked.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        click.echo(
            "keyturn: error: this command changes data and there is no terminal to confirm "
            "on; pass --yes to proceed",
            err=True,
        )
        sys.exit(2)
    click.confirm(question if isinstance(question, str) else question(), abort=True)


@cli.command("encrypt-existing")
@click.option("--dry-run", is_flag=True, help="Count what would be encrypted; write nothing.")
@click.option(
    "--include-unknown",
    is_flag=True,
    help="Also encrypt values shaped like ciphertext that no reader opens (`unknown`): "
    "say they are plaintext, e.g. random keys in hex or base64.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@_pacing_options
@click.pass_context
def encrypt_existing_cmd(
    ctx: click.Context,
    dry_run: bool,
    include_unknown: bool,
    as_json: bool,
    chunk_time: float,
    max_rate: float | None,
) -> None:
    """Encrypt the plaintext values of every configured column, in place.

    Works in batches by compare-and-swap while the app keeps running. NULL and
    empty values are left alone; values that are already keyturn tokens are
    counted, never encrypted twice. Values shaped like another scheme's
    ciphertext that no [[legacy]] reader recognises are `unknown`: listed by
    primary key and left alone, unless --include-unknown. Safe to interrupt:
    run it again to finish. Exits 1 if any value failed (e.g. looks like a
    token but does not decrypt).
    """
    from keyturn.engine.pacing import Pacing
    from keyturn.ops.encrypt_existing import encrypt_existing
    from keyturn.ops.reports import audit_summary

    with _open(ctx) as store, _audited(store, "encrypt-existing", deferred=True) as outcome:
        report = encrypt_existing(
            store,
            dry_run=dry_run,
            include_unknown=include_unknown,
            pacing=Pacing(chunk_time=chunk_time, max_rate=max_rate),
            progress=None if as_json else progress_factory(),
            before_write=outcome.begin,
        )
        outcome.update(audit_summary(report))
    _print_rewrite(report, as_json, "encrypted")


@cli.command("import-legacy")
@click.option(
    "--dry-run", is_flag=True, help="Check keys and count what would change; write nothing."
)
@click.option(
    "--include-plaintext",
    is_flag=True,
    help="Also encrypt plaintext values found in these columns (otherwise counted and left).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@_yes_option
@_pacing_options
@click.pass_context
def import_legacy_cmd(
    ctx: click.Context,
    dry_run: bool,
    include_plaintext: bool,
    as_json: bool,
    yes: bool,
    chunk_time: float,
    max_rate: float | None,
) -> None:
    """Convert values encrypted by the app's old scheme to keyturn tokens, in place.

    For each column with `legacy = NAME`, decrypts every value in that
    [[legacy]] layout with its legacy key (from the env vars or files the entry
    names) and writes it back as a kt1 token under the active key, in batches
    by compare-and-swap while the app keeps running. First checks each
    column's legacy key on a sample: a wrong key writes nothing. Safe to
    interrupt: run it again to finish. Exits 1 if any value failed (listed by
    primary key, left as it is). See docs/ADOPTING.md.
    """
    from keyturn.engine.pacing import Pacing
    from keyturn.ops.import_legacy import import_legacy
    from keyturn.ops.reports import audit_summary

    with _open(ctx) as store:
        if not dry_run:
            _confirm(
                yes,
                "convert the legacy values of "
                + ", ".join(c.name for c in store.config.columns if c.legacy)
                + (" (and their plaintext values)" if include_plaintext else "")
                + " to keyturn tokens?",
            )
        with _audited(store, "import-legacy", deferred=True) as outcome:
            report = import_legacy(
                store,
                dry_run=dry_run,
                include_plaintext=include_plaintext,
                pacing=Pacing(chunk_time=chunk_time, max_rate=max_rate),
                progress=None if as_json else progress_factory(),
                before_write=outcome.begin,
            )
            outcome.update(audit_summary(report))
    _print_rewrite(report, as_json, "imported")
    if not as_json:
        for column, sampled in report.extra.get("key_check_sampled", {}).items():
            if sampled:
                click.echo(f"  {column}: legacy key checked on {sampled} value(s) before writing")
    plaintext = report.totals["plaintext"]
    if plaintext and not include_plaintext and not as_json:
        click.echo(
            f"{plaintext} plaintext value(s) were left as they are: rerun with "
            "--include-plaintext to encrypt them too"
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Decrypt every configured value and report those that fail; print no secret.

    kt1 tokens must open under their key version; legacy values must open with
    their legacy key where it is present (otherwise counted as
    legacy_unchecked, and the exit code is 3: a verify that checked less than
    everything is not a success). Failures are listed by table and primary key.
    Run it before and after any migration; each run is recorded in the audit
    log (the admin page shows the last). Exits 1 if any value fails.
    """
    from keyturn.ops.reports import audit_summary
    from keyturn.ops.verify import verify as verify_all

    with _open(ctx) as store, _audited(store, "verify") as outcome:
        report = verify_all(store, progress=None if as_json else progress_factory())
        outcome.update(audit_summary(report))  # the admin page shows the last one
    if not as_json:
        for column, why in report.extra["legacy_keys_missing"].items():
            click.echo(f"{column}: legacy values not checked: {why}")
    _print_rewrite(
        report,
        as_json,
        "ok",
        "they do not decrypt with the keys at hand (docs/ROTATION.md, 'Rows that fail').",
    )
    unchecked = report.totals.get("legacy_unchecked", 0)
    if unchecked:
        click.echo(
            f"keyturn: {unchecked} legacy value(s) were not checked: their legacy key is "
            "missing or malformed (named above); verify checked less than everything",
            err=True,
        )
        sys.exit(3)


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show the active key, key history, and per-column counts by key version.

    Counts come from each value's header; nothing is decrypted and no key or
    secret is printed. Warns when the active key is past its cryptoperiod
    (`cryptoperiod_days`, default 730) or plaintext values remain.
    """
    from keyturn.ops.status import status

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
            f"plaintext {c.plaintext}; "
            + (f"legacy {c.legacy}; " if c.legacy else "")
            + (f"unknown {c.unknown}; " if c.unknown else "")
            + f"empty {c.empty}"
            + (f"\n  {'':<30} (only rows where {c.where})" if c.where else "")
        )
    for w in r.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


AUTO_WORKERS = 0


def _workers(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    """``--workers``: a number from 1 to 64, or ``auto`` (AUTO_WORKERS)."""
    if value.strip().lower() == "auto":
        return AUTO_WORKERS
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a number of workers nor 'auto'") from None
    if not 1 <= n <= 64:
        raise click.BadParameter(f"{n} workers: give 1 to 64, or 'auto'")
    return n


@cli.command()
@click.option("--dry-run", is_flag=True, help="Report what would be done; write nothing at all.")
@click.option("--atomic", is_flag=True, help="Do everything in one transaction (small databases).")
@click.option("--no-backup", is_flag=True, help="Skip the backup file and per-row backup.")
@click.option(
    "--workers",
    metavar="N|auto",
    default="auto",
    callback=_workers,
    show_default=True,
    help="Processes re-encrypting disjoint primary-key ranges in parallel (leased chunks). "
    "'auto': walk alone, and after half a second go parallel with one helper per core the "
    "machine left idle meanwhile (a database server on this machine counts); never with "
    "--max-rate, which applies per worker.",
)
@click.option(
    "--join",
    is_flag=True,
    help="Work on the chunks of a parallel rotation started elsewhere, then exit.",
)
@click.option(
    "--rows-per-chunk",
    type=click.IntRange(min=10),
    default=None,
    help="With --workers: rows per leased chunk. [default: 10000; 50000 with --workers auto, "
    "whose first worker often runs alone: each chunk costs a claim and a checkpoint]",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="With --workers/--join: how long a killed worker's chunk waits before another "
    "worker takes it over.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@_yes_option
@_wait_option
@_pacing_options
@click.pass_context
def rotate(
    ctx: click.Context,
    dry_run: bool,
    atomic: bool,
    no_backup: bool,
    workers: int,
    join: bool,
    rows_per_chunk: int | None,
    lease_seconds: float,
    as_json: bool,
    yes: bool,
    wait: float,
    chunk_time: float,
    max_rate: float | None,
) -> None:
    """Rotate the data key: mint version N+1 and re-encrypt every older token.

    Online: batches by compare-and-swap while the app reads and writes.
    Resumable: if a rotation was interrupted, this resumes it (no new version
    is minted). Before the first write it checks the KEK, that each column's
    sample decrypts, and (unless --no-backup) copies a SQLite database file
    and keeps each replaced token in keyturn_backup_batches for `keyturn restore JOB`.
    Old versions are retired once nothing uses them. Exits 1 if any row failed.

    Parallel: --workers N splits each table into primary-key chunks leased in
    the database; `keyturn rotate --join` on another host works on the same
    job. --max-rate applies per worker. A killed worker's chunk is taken over
    after --lease-seconds; a killed coordinator's job is resumed by
    `keyturn rotate`. The default, --workers auto, walks alone and goes
    parallel with a helper for each core left idle during its first half
    second (none where a local database server keeps the cores busy, none
    with --max-rate); --workers 1 never starts a helper.

    Holds the keyring lock while it runs: rotate-kek, destroy-key, prune,
    restore and a second rotate refuse meanwhile (exit 4), or queue with --wait.
    """
    from keyturn.ops.reports import audit_summary
    from keyturn.ops.rotate import RotateOptions, Rotator, most_auto_workers

    explicit = ctx.get_parameter_source("workers") != click.core.ParameterSource.DEFAULT
    if atomic and ((explicit and workers != 1) or join):
        raise click.UsageError("--atomic runs in one transaction; it cannot use --workers/--join")
    auto = workers == AUTO_WORKERS and not atomic and not join
    if auto:  # the most; helpers only for idle cores
        workers = most_auto_workers()
    elif workers == AUTO_WORKERS:
        workers = 1
    if join and dry_run:
        raise click.UsageError("--join works on a running job; --dry-run writes nothing")
    with _open(ctx) as store:
        options = RotateOptions(
            dry_run,
            atomic,
            not no_backup,
            chunk_time,
            max_rate,
            workers=workers,
            auto_workers=auto,
            join=join,
            rows_per_chunk=rows_per_chunk,
            lease_seconds=lease_seconds,
            wait=wait,
        )
        rotator = Rotator(
            store, options, actor=actor(), progress=None if as_json else progress_factory()
        )

        def question() -> str:
            plan = Rotator(store, RotateOptions(dry_run=True)).run()
            what = (
                f"resume job {plan.extra['job']}"
                if plan.extra.get("resumes_job")
                else f"mint key v{plan.extra['new_version']}"
            )
            return f"{what} and re-encrypt {plan.totals['rotated']} value(s)?"

        if not dry_run and not join:
            _confirm(yes, question)
        with _audited(store, "rotate", deferred=True) as outcome:
            if not join:  # the coordinator's entries cover its helpers
                rotator.before_write = outcome.begin
            report = rotator.run()
            outcome.update(audit_summary(report))
    if join:
        _print_rewrite(report, as_json, "rotated")
        return
    if not as_json and not dry_run:
        extra = report.extra
        click.echo(
            f"job {extra['job']}: key v{extra['new_version']} is active"
            + (" (resumed)" if extra.get("resumed") else "")
        )
        if extra.get("idle_cores") is not None:
            click.echo(
                f"workers: {extra['workers']} (auto: {extra['idle_cores']:.1f} idle core(s) "
                "measured while walking alone)"
            )
        if extra.get("backup_file"):
            click.echo(f"backup of the database file: {extra['backup_file']}")
        for version, why in extra.get("draining", {}).items():
            click.echo(f"key v{version} stays draining: {_draining_hint(why)}")
    elif not as_json:
        click.echo(
            f"would mint key v{report.extra['new_version']}"
            if not report.extra.get("resumes_job")
            else f"would resume job {report.extra['job']}"
        )
    _print_rewrite(report, as_json, "rotated")


def _draining_hint(why: dict[str, Any]) -> str:
    """What keeps a version draining after a rotation, and what to run about it."""
    held = why.get("backup_jobs") or []
    if held:
        return (
            f"the backups of job(s) {', '.join(held)} hold its tokens (`keyturn prune "
            f"{held[0]}` drops one once you no longer need `keyturn restore`)"
        )
    until = why.get("grace_until")
    if until:
        return (
            f"app processes may seal under it until {until[:19].replace('T', ' ')}Z "
            "([apps] in keyturn.toml); it retires after that once nothing uses it"
        )
    return "values still use it (`keyturn keys` shows how many; `keyturn rotate` again)"


def _new_kek(env_name: str | None, file: Path | None) -> KEK:
    from keyturn._core.kek import LocalKEK, parse_kek
    from keyturn.kek import check_strength, new_kek

    if env_name and file:
        raise click.UsageError("give one of --new-kek-env and --new-kek-file")
    if env_name or file:
        return new_kek(env_name, file)
    if not sys.stdin.isatty():
        raise click.UsageError(
            "no terminal to prompt for the new KEK on: pass --new-kek-env NAME or "
            "--new-kek-file PATH"
        )
    value = click.prompt(
        "New KEK (64 hex characters or base64)", hide_input=True, confirmation_prompt=True
    )
    kek = LocalKEK(parse_kek(value, "prompt"), "prompt")
    check_strength(kek)
    return kek


@cli.command("rotate-kek")
@click.option("--new-kek-env", metavar="NAME", help="Read the new KEK from this env var.")
@click.option(
    "--new-kek-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the new KEK from this key file (mode 0600).",
)
@click.option(
    "--retire-kms-versions",
    is_flag=True,
    help="Transit KEK only: afterwards raise the Transit key's min_decryption_version, so "
    "older KMS key versions stop decrypting (only if no one else uses that key).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_yes_option
@_wait_option
@click.pass_context
def rotate_kek_cmd(
    ctx: click.Context,
    new_kek_env: str | None,
    new_kek_file: Path | None,
    retire_kms_versions: bool,
    as_json: bool,
    yes: bool,
    wait: float,
) -> None:
    """Rewrap every data key under a new KEK, in one transaction.

    Takes milliseconds whatever the number of rows: only the data keys change.
    The new KEK comes from --new-kek-env, --new-kek-file, or a no-echo prompt;
    never from a command-line value. If the current KEK is a key file, it is
    replaced atomically after the commit; if it is an env var, update that
    variable before restarting the app. Afterwards the old KEK opens nothing.

    With a Transit KEK (`kek = "transit://…"`), takes no new key: rotates the
    Transit key inside OpenBao/Vault and rewraps each data key with Transit's
    rewrap; --retire-kms-versions then archives the older Transit versions.
    """
    from keyturn.kek import is_managed
    from keyturn.ops.rotate_kek import rotate_kek

    with _open(ctx) as store:  # the current KEK is checked before the new one is asked for
        if is_managed(store.kek):
            if new_kek_env or new_kek_file:
                raise click.UsageError(
                    "the KEK is a Transit key: rotate-kek rotates it inside the KMS and takes "
                    "no --new-kek-env/--new-kek-file"
                )
            _confirm(yes, f"rotate Transit key {store.kek.kek_id} and rewrap every data key?")
            new = None
        else:
            if retire_kms_versions:
                raise click.UsageError("--retire-kms-versions applies only to a Transit KEK")
            new = _new_kek(new_kek_env, new_kek_file)
            _confirm(yes, f"rewrap every data key under the new KEK ({new.kek_id})?")
        old = store.kek.origin
        with _audited(store, "rotate-kek", deferred=True) as outcome:
            result = rotate_kek(
                store,
                new,
                retire_old_versions=retire_kms_versions,
                wait=wait,
                before_write=outcome.begin,
            )
            outcome.update(result.to_dict())
    if new is None:
        retired = (
            f"; Transit versions below {result.kms_min_decryption_version} no longer decrypt"
            if result.kms_min_decryption_version
            else ""
        )
        _emit(
            as_json,
            result.to_dict(),
            f"rewrapped {result.versions} data key(s) under Transit key version "
            f"{result.kms_key_version} in {result.milliseconds:.1f} ms{retired}",
        )
        return
    old_source = str(old)
    data = {**result.to_dict(), "old_kek_source": old_source}
    hint = ""
    if result.key_file:
        hint = f"{result.key_file} now holds the new KEK"
        if new_kek_file is not None:
            hint += (
                f"; {new_kek_file} is a second copy of it: keep it only as a backup kept "
                "apart from the database, else delete it"
            )
    elif old.scheme == "env":
        hint = (
            f"update the env var {old.location} to the new KEK before restarting the "
            "app: the old value no longer opens the keyring"
        )
        data["update_env"] = old.location
    _emit(
        as_json,
        data,
        f"rewrapped {result.versions} data key(s) under KEK {result.new_kek_id} in "
        f"{result.milliseconds:.1f} ms; {hint}",
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
@click.pass_context
def keys(ctx: click.Context, as_json: bool) -> None:
    """List data key versions with state, age, and how many values and backups use each."""
    from keyturn.ops.status import key_versions

    with _open(ctx) as store:
        rows = key_versions(store)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"  {'version':<8} {'state':<10} {'age(d)':>7} {'values':>9} {'backups':>8}  kek")
    for r in rows:
        click.echo(
            f"  v{r['version']:<7} {r['state']:<10} {r['age_days']:>7.1f} "
            f"{r['rows']:>9} {r['backups']:>8}  {r['kek_id'] or '-'}"
        )


@cli.command("destroy-key")
@click.argument("version", type=click.IntRange(min=1))
@_yes_option
@_wait_option
@click.pass_context
def destroy_key_cmd(ctx: click.Context, version: int, yes: bool, wait: float) -> None:
    """Erase a retired data key for good. Refuses while any value or backup uses it.

    Also refuses until app processes can no longer seal under it: the version
    must have stopped being active longer ago than the app contract's refresh
    interval plus write margin ([apps] in keyturn.toml); the refusal says from
    when it is allowed. Values encrypted under a destroyed version can never be
    decrypted again. Make sure no table outside keyturn.toml holds its tokens.
    """
    from keyturn.ops.lifecycle import destroy_key

    with _open(ctx) as store:
        _confirm(yes, f"destroy key v{version}? This cannot be undone")
        destroy_key(store, version, actor(), wait=wait)
    click.echo(f"key v{version} destroyed")


@cli.command()
@click.argument("job_id", metavar="JOB")
@_yes_option
@_wait_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def restore(ctx: click.Context, job_id: str, yes: bool, wait: float, as_json: bool) -> None:
    """Put back the tokens a rotation job replaced (from keyturn_backup_batches).

    A row is restored only if it still holds the token the job wrote; a value
    the app changed since is kept and counted as changed_since.
    """
    from keyturn.engine import jobs
    from keyturn.ops.restore import restore_job

    with _open(ctx) as store:
        job = jobs.lookup(store.engine, job_id)
        _confirm(yes, f"restore the tokens job {job.id} replaced?")
        with _audited(store, "restore", deferred=True, job=job.id) as outcome:
            result = restore_job(store, job.id, wait=wait, before_write=outcome.begin)
            outcome.update(result.counts())
    _emit(
        as_json,
        result.to_dict(),
        f"job {job.id}: restored {result.restored} value(s); "
        f"{result.changed_since} changed since and were kept"
        + (
            f"; {result.skipped_corrupt} backed-up row(s) were unreadable (edited) and were skipped"
            if result.skipped_corrupt
            else ""
        ),
    )


@cli.command()
@click.argument("job_id", metavar="JOB")
@_yes_option
@_wait_option
@click.pass_context
def prune(ctx: click.Context, job_id: str, yes: bool, wait: float) -> None:
    """Drop a job's backups: its rows in keyturn_backup_batches and its database file copy.

    The file copy is found by keyturn's own name for it beside the database
    (`<db>.keyturn-JOB-<time>.bak`); a path the database names that is not such
    a file is reported and left alone. Afterwards old key versions that nothing
    else uses become retired (once the [apps] grace has passed).
    """
    from keyturn.engine import jobs
    from keyturn.ops.restore import prune_job

    with _open(ctx) as store:
        job = jobs.lookup(store.engine, job_id)
        _confirm(yes, f"drop the backups of job {job.id}? `restore {job.id}` will no longer work")
        result = prune_job(store, job.id, actor(), wait=wait)
    removed = "".join(f"; removed {path}" for path in result.removed_files)
    retired = ", ".join(f"v{v}" for v in result.newly_retired) or "none"
    click.echo(
        f"job {job.id}: dropped {result.dropped} backed-up token(s){removed}; "
        f"newly retired: {retired}"
    )
    for path in result.refused_files:
        click.echo(
            f"keyturn: warning: job {job.id} names {path} as its backup file, but that is not "
            "a file keyturn made for this job beside the database; it was left alone "
            "(keyturn_jobs.backup_path may have been edited)",
            err=True,
        )


@cli.command("jobs")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@click.pass_context
def jobs_cmd(ctx: click.Context, as_json: bool) -> None:
    """List rotation jobs, newest last."""
    from keyturn.engine import jobs

    with _open(ctx) as store:
        found = jobs.list_all(store.engine)
    if as_json:
        click.echo(json.dumps([j.to_dict() for j in found], indent=2, default=str))
        return
    for j in found:
        click.echo(
            f"{j.id}  {j.kind:<8} {j.state:<10} target v{j.target_version}  "
            f"{j.created_at:%Y-%m-%d %H:%M}  {j.created_by}"
        )
    if not found:
        click.echo("no jobs yet")


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
    from keyturn._core.kek import generate_kek_bytes
    from keyturn.keyfiles import write_key_file

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


@cli.group()
def token() -> None:
    """Bearer tokens for the admin HTTP API (`keyturn serve`).

    Scopes: read (status, jobs, audit), rotate (also start a rotation), admin
    (also rotate-kek). Only a hash of each token is stored.
    """


@token.command("create")
@click.option("--name", required=True, help="A name for the token, e.g. the person or system.")
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    default="read",
    show_default=True,
    help="What the token may do; each scope includes the ones before it.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the token to this new file with mode 0600 instead of stdout (a shell "
    "redirect would make a 0644 file). An existing file is never overwritten.",
)
@click.pass_context
def token_create(ctx: click.Context, name: str, scope: str, output: Path | None) -> None:
    """Create a token and print it alone on stdout, once; it cannot be shown again."""
    from keyturn.keyfiles import write_key_file
    from keyturn.ops import api_tokens

    if output is not None and output.exists():
        raise click.UsageError(f"{output} exists; it was left as it is")
    with _open(ctx) as store:
        value = api_tokens.create(store.audit, name, scope, actor())
    where = "it is shown once, store it now"
    if output is None:
        click.echo(value)
    else:
        write_key_file(output, value)
        where = f"written to {output} (mode 0600)"
    click.echo(
        f"keyturn: created {scope} token {name!r}; {where} "
        f"(`keyturn token revoke {name}` disables it)",
        err=True,
    )


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as JSON.")
@click.pass_context
def token_list(ctx: click.Context, as_json: bool) -> None:
    """List tokens by name, scope and state (never the tokens themselves)."""
    from keyturn.ops import api_tokens

    with _open(ctx) as store:
        found = api_tokens.all_tokens(store.audit)
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in found], indent=2))
        return
    for t in found:
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "live"
        if not t.genuine:
            state = "REFUSED: not made by keyturn"
        click.echo(
            f"{t.name:<24} {t.scope:<7} {state:<24} created {t.created_at:%Y-%m-%d} "
            f"by {t.created_by}"
        )
    if not found:
        click.echo("no tokens yet: `keyturn token create --name NAME`")
    if any(not t.genuine for t in found):
        click.echo(
            "keyturn: warning: a token record marked REFUSED was not made with the KEK "
            "(inserted or edited by SQL, or created before keyturn signed tokens): it "
            "cannot authenticate; revoke it, and re-create it if it is yours",
            err=True,
        )


@token.command("revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Revoke a token at once: requests carrying it get 401 from then on."""
    from keyturn.ops import api_tokens

    with _open(ctx) as store:
        api_tokens.revoke(store.audit, name, actor())
    click.echo(f"token {name!r} revoked")


@cli.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log of every operation (keyturn_audit).

    Entries are chained with an HMAC under a key only the KEK opens, and a
    MAC'd head records the count and the last link. Keep `keyturn audit head`
    outside the database to also detect a rollback of the whole database.
    """


@audit_group.command("verify")
@click.option(
    "--head",
    "head_file",
    type=click.File("r"),
    help="A head printed earlier by `keyturn audit head` (a file, or - for stdin): also "
    "check that the log still holds everything it recorded.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_context
def audit_verify(ctx: click.Context, head_file: Any, as_json: bool) -> None:
    """Check every entry's link and the head; exit 1 naming each problem found."""
    from keyturn.keys import audit

    with _open(ctx) as store:
        external = audit.Head.from_text(head_file.read()) if head_file else None
        check = store.audit.verify(external)
    if as_json:
        click.echo(json.dumps(check.to_dict(), indent=2))
    elif check.ok:
        against = "; matches the head given" if check.checked_external_head else ""
        click.echo(
            f"audit log ok: {check.entries} entries, every link and the head check out{against}"
        )
    else:
        for problem in check.problems:
            click.echo(f"audit: {problem}")
    if not check.ok:
        click.echo(
            f"keyturn: the audit log fails its check ({len(check.problems)} problem(s)); "
            "see SECURITY.md, 'If the audit log fails its check'",
            err=True,
        )
        sys.exit(1)


@audit_group.command("head")
@click.pass_context
def audit_head(ctx: click.Context) -> None:
    """Print the signed head (count and last link) as one line, to keep outside the DB."""
    with _open(ctx) as store:
        click.echo(store.audit.head().to_text())


@audit_group.command("list")
@click.option("--after", type=click.IntRange(min=0), default=0, help="Entries after this seq.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@click.pass_context
def audit_list(ctx: click.Context, after: int, limit: int, as_json: bool) -> None:
    """List audit entries, oldest first (run `audit verify` to check them)."""
    with _open(ctx) as store:
        entries = store.audit.entries(after=after, limit=limit)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    for e in entries:
        details = ", ".join(f"{k}={json.dumps(v)}" for k, v in e.details.items())
        click.echo(f"{e.seq:>6}  {e.at[:19]}  {e.actor:<28} {e.action:<17} {details}")
    if not entries:
        click.echo("no audit entries")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8077, show_default=True)
@click.option(
    "--log-format",
    type=_LOG_FORMATS,
    default="text",
    show_default=True,
    help="json: one JSON object per line (at, level, event, method, path, status, "
    "duration_ms, token_name; never a token), for a log pipeline.",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, log_format: str) -> None:
    """Serve the admin HTTP API (/v1/admin/...) and page (/admin/encryption).

    Requests need a bearer token from `keyturn token create`. Serve it on
    loopback or behind a TLS-terminating proxy; the API docs are at
    /openapi.json. Logs one line per request on stderr (method, path, status,
    time, the token's name; never a token) and each refused sign-in.
    Requires the `server` extra (pip install 'keyturn[server]').
    """
    try:
        import uvicorn

        from keyturn.server import create_app
    except ImportError:
        raise click.UsageError(
            "the admin server needs Starlette and uvicorn: pip install 'keyturn[server]'"
        ) from None
    from keyturn.db.database import quiet_driver_logs

    quiet_driver_logs()
    app = create_app(ctx.obj)
    _log_to_stderr(
        logging.getLogger("keyturn.server"), log_format, "%(asctime)s keyturn: %(message)s"
    )
    click.echo(f"keyturn: serving the admin API on http://{host}:{port}", err=True)
    # uvicorn would believe X-Forwarded-For from 127.0.0.1; keyturn believes it only
    # from [server] trusted_proxies.
    uvicorn.run(
        app, host=host, port=port, log_level="warning", access_log=False, proxy_headers=False
    )


def main() -> None:
    cli(prog_name="keyturn")


def _log_to_stderr(logger: logging.Logger, log_format: str, text: str) -> None:
    """Send ``logger``'s INFO records to stderr: one JSON object per line, or ``text``."""
    handler = _Stderr()
    handler.setFormatter(_JsonLines() if log_format == "json" else logging.Formatter(text))
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)


class _Stderr(logging.Handler):
    """Writes to the stderr of the moment (a test runner may swap it per command)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


class _JsonLines(logging.Formatter):
    """A log record as one JSON object: when, level, message, and the record's
    structured fields (the request log's method, path, status and token name)."""

    FIELDS = (
        "event", "method", "path", "status", "duration_ms", "token_name", "client", "reason",
        "operation", "outcome", "seconds", "counts", "error",
    )  # fmt: skip

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for name in self.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        return json.dumps(data, ensure_ascii=False)
