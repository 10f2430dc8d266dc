"""A helper worker of a parallel rotation: a process of its own that joins the job.

The coordinating :class:`~keyturn.ops.rotate.Rotator` starts N-1 of these with
:func:`spawn`; each reads the config path and the rotation's options as JSON on
stdin (nothing secret: the KEK comes from the environment or a key file, as for
any keyturn process) and works on leased chunks until none is left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

from keyturn.db.database import quiet_driver_logs
from keyturn.errors import KeyturnError
from keyturn.ops.rotate import RotateOptions, Rotator
from keyturn.store import open as open_store


def spawn(config_path: Path | None, options: RotateOptions) -> subprocess.Popen[bytes]:
    """Start one helper for the parallel job ``options`` describes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    request = {"config": str(config_path) if config_path else None, "options": asdict(options)}
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(request).encode())
    proc.stdin.close()
    return proc


def main() -> int:
    """Join the job; one line on stderr and exit code 1 if that fails (the
    coordinator then takes the chunks over)."""
    quiet_driver_logs()
    request = json.load(sys.stdin)
    options = replace(RotateOptions(**request["options"]), join=True, workers=1, wait=0.0)
    try:
        with open_store(request["config"]) as store:
            Rotator(store, options, actor="rotate-helper").run()
    except KeyturnError as exc:
        print(f"keyturn: rotate helper: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
