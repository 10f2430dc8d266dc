"""Small secret files (KEK files, legacy key files, KMS tokens): read and written only
with owner-only permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from keyturn.errors import KeyManagementError


def read_private_file(path: Path, what: str, error: type[KeyManagementError]) -> str:
    """A small key file's text, refused if group or others can read it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise error(f"the {what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read the {what} {path}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"the {what} {path} is not a regular file (a directory?)")
    with os.fdopen(fd, "rb") as handle:
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise error(
                f"the {what} {path} is accessible to group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        data = handle.read(4096)
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""


def write_key_file(path: Path, key_text: str) -> None:
    """Create a key file with mode 0600; refuse to overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key_text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
