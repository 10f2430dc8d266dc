"""``python -m keyturn`` runs the CLI."""

from keyturn.cli import main

main()
