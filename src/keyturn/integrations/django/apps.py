"""The Django app: registers keyturn's system checks."""

from __future__ import annotations

from django.apps import AppConfig


class KeyturnConfig(AppConfig):
    name = "keyturn.integrations.django"
    label = "keyturn"
    verbose_name = "keyturn"

    def ready(self) -> None:
        from keyturn.integrations.django import checks  # noqa: F401  (registers them)
