"""System checks: production without an explicit KEK, a configuration that cannot load."""

from __future__ import annotations

from typing import Any

from django.core import checks

from keyturn.errors import KeyturnError
from keyturn.kek import ENV_VAR, is_production


@checks.register("keyturn")
def keyturn_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from keyturn.integrations.django.conf import build_config, options

    problems: list[checks.CheckMessage] = []
    try:
        if is_production() and not options().get("kek"):
            problems.append(
                checks.Error(
                    f"{ENV_VAR}=production and settings.KEYTURN names no kek: production "
                    "takes the KEK from an explicit source (env:, file: or transit://)",
                    id="keyturn.E001",
                )
            )
        build_config()
    except KeyturnError as exc:
        problems.append(checks.Error(str(exc), id="keyturn.E003"))
    return problems
