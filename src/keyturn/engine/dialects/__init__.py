"""What differs per database in the engine's writes: which dialects take which swap.

SQLite runs SQLAlchemy's compiled compare-and-swap with executemany;
PostgreSQL and MariaDB/MySQL have faster statements of their own
(:mod:`.postgresql`, :mod:`.mysql`).
"""

from __future__ import annotations

# PyMySQL's executemany sends an UPDATE row by row: MariaDB/MySQL get one UPDATE
# joined with a list of rows instead.
BULK = ("mysql", "mariadb")
# psycopg pipelines executemany, but adapts each row's parameters in Python,
# which the deciding thread then waits for; PostgreSQL gets an UPDATE joined
# with unnest() of arrays, each sent as one text (docs/PERFORMANCE.md).
ARRAY = ("postgresql",)
# Where a batch is written while the next is read and decided. Not SQLite: in its
# rollback journal our next read holds off the previous batch's commit, and the
# busy handler sleeps (measured slower, docs/PERFORMANCE.md).
PIPELINED = ("postgresql", "mysql", "mariadb")
