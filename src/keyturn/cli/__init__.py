"""The ``keyturn`` command line: parses, calls the library, renders; nothing more."""

from keyturn.cli.main import cli, exit_code, main

__all__ = ["cli", "exit_code", "main"]
