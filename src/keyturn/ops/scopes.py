"""The scopes of admin API tokens, each including the ones before it (no I/O, so the
CLI can offer them without loading the database layer)."""

SCOPES = ("read", "rotate", "admin")
