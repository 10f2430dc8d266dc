"""Loading Django model instances whose secret is an EncryptedCharField, against the
same instances with a plain CharField: the cost of decrypting on load (goal: 1.3x).

Usage: .venv/bin/python bench/django_load.py [--rows 10000] [--rounds 15]

The Django twin of bench/orm_load.py: both tables in one SQLite file, rounds
alternating, the best round of each compared, beside the floor (the plain load
plus a bare decrypt loop over the same tokens); the goal is judged on the
median of each round's own ratio (orm_load.compare).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orm_load import aead_alone, bare_decrypt, compare


def prepare(
    work: Path, rows: int
) -> tuple[Callable[[str], float], Callable[[], float], Callable[[], float]]:
    """Django configured on a SQLite file in ``work``, the tables with ``rows`` rows
    each: a load function (by table name: plain, encrypted, passed), the bare
    decrypt loop and the loop of ``AESGCM.decrypt`` alone."""
    os.environ.setdefault("KEYTURN_KEK", os.urandom(32).hex())
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["keyturn.integrations.django"],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(work / "app.db")}
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        BASE_DIR=work,
    )
    django.setup()
    from django.db import connection, models

    from keyturn.integrations.django.conf import build_config, store
    from keyturn.integrations.django.fields import EncryptedCharField
    from keyturn.ops.init import init

    class Plain(models.Model):
        name = models.CharField(max_length=64)
        api_key = models.CharField(max_length=255)

        class Meta:
            app_label = "keyturn"

    class Encrypted(models.Model):
        name = models.CharField(max_length=64)
        api_key = EncryptedCharField(max_length=255)

        class Meta:
            app_label = "keyturn"

    class PassThroughField(models.CharField):  # type: ignore[type-arg]
        """A converter that does nothing: what Django's call of any field's
        converter costs, per value (bench/orm_instructions.py)."""

        def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
            return value

    class Passed(models.Model):
        """The encrypted table's tokens, loaded through :class:`PassThroughField`."""

        name = models.CharField(max_length=64)
        api_key = PassThroughField(max_length=255)

        class Meta:
            app_label = "keyturn"

    with connection.schema_editor() as editor:
        for model in (Plain, Encrypted, Passed):
            editor.create_model(model)
    init(build_config())
    values = [f"sk_live_{i:08d}_{os.urandom(12).hex()}" for i in range(rows)]
    Plain.objects.bulk_create(Plain(name=f"u{i}", api_key=v) for i, v in enumerate(values))
    Encrypted.objects.bulk_create(Encrypted(name=f"u{i}", api_key=v) for i, v in enumerate(values))
    connection.cursor().execute("INSERT INTO keyturn_passed SELECT * FROM keyturn_encrypted")
    tokens = [t for (t,) in connection.cursor().execute("SELECT api_key FROM keyturn_encrypted")]
    tables: dict[str, Any] = {"plain": Plain, "encrypted": Encrypted, "passed": Passed}

    def load(name: str) -> float:
        started = time.perf_counter()
        assert all(row.api_key for row in tables[name].objects.all())
        return time.perf_counter() - started

    context = "keyturn_encrypted.api_key"
    return load, bare_decrypt(store(), context, tokens), aead_alone(store(), context, tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    load, bare, _ = prepare(Path(tempfile.mkdtemp()), args.rows)
    what = f"{args.rows:,} Django model instances"
    compare(what, ("CharField", "EncryptedCharField"), load, bare, args.rounds)


if __name__ == "__main__":
    main()
