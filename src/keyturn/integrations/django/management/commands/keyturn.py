"""``python manage.py keyturn <command>``: every keyturn command, configured from settings."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Run a keyturn command (status, encrypt-existing, rotate, rotate-kek, verify, audit, "
        "…) with the database and fields from Django's settings; `keyturn --help` lists them."
    )

    def run_from_argv(self, argv: list[str]) -> None:
        """The arguments go to keyturn's own command line, untouched: same options,
        output and exit codes as ``keyturn``."""
        from keyturn.cli import cli
        from keyturn.db.database import quiet_driver_logs
        from keyturn.integrations.django.conf import build_config

        quiet_driver_logs()
        prog = f"{os.path.basename(argv[0])} {argv[1]}"
        cli.main(args=argv[2:], prog_name=prog, obj=build_config())

    def handle(self, *args: Any, **options: Any) -> None:  # call_command: not supported
        raise NotImplementedError("run `manage.py keyturn ...` from the command line")
