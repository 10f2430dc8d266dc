"""A live app: read-modify-write, inserts and deletes through the ORM until STOPFILE
exists, each committed step appended to JOURNAL; any error ends it with exit 1."""

import json
import random
import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand
from django.db import transaction

from vault.models import Credential


class Command(BaseCommand):
    def add_arguments(self, parser):
        parser.add_argument("journal")
        parser.add_argument("stopfile")
        parser.add_argument("seed", type=int)

    def handle(self, journal, stopfile, seed, **options):
        rng = random.Random(seed)
        stop = Path(stopfile)
        counter = 0
        with open(journal, "a", encoding="utf-8") as log:
            try:
                while not stop.exists():
                    counter += 1
                    ids = list(Credential.objects.values_list("id", flat=True))
                    with transaction.atomic():
                        if rng.random() < 0.7 and ids:
                            row = Credential.objects.get(id=rng.choice(ids))
                            assert row.api_key is None or row.api_key.startswith("sk_")
                            row.api_key = f"sk_{row.id}_{seed}_{counter}"
                            row.save()
                            entry = {"id": row.id, "api_key": row.api_key}
                        elif rng.random() < 0.8 or not ids:
                            row = Credential.objects.create(name="new", api_key=f"sk_new_{counter}")
                            entry = {"id": row.id, "api_key": row.api_key}
                        else:
                            victim = rng.choice(ids)
                            Credential.objects.filter(id=victim).delete()
                            entry = {"id": victim, "deleted": True}
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
                    time.sleep(rng.uniform(0, 0.01))
            except Exception as exc:
                log.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
                sys.exit(1)
