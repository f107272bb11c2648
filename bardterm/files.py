"""Writing a file atomically, the one way bardterm does it: to a temporary file beside the target, flushed to
disk, then renamed over it (os.replace), so that a reader or a crash never sees half a file.

Used by the settings file, conversation exports and training checkpoints alike; a plain module, importing
nothing heavier than the standard library, so that any layer may use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bardterm.errors import BardtermError


def write_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path`, creating its folder; a failure is one BardtermError line."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as error:
        raise BardtermError(f"cannot write {path} ({error.strerror}): choose another path") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` (whose folder exists) with the mode a plain open() would give; OSError as it comes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
