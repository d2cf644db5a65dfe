"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

The temporary file is made in the target's own directory and renamed there (``os.replace``), so the
rename never crosses a file system: this works when the directory is a mount point (a container
volume), where renaming a directory made in the parent fails with EXDEV / EBUSY. The result gets
the permissions of a plain ``open(path, "w")`` (0o666 minus the umask, e.g. 0644), not the
0600 that `tempfile.mkstemp` gives its files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "default_dir_mode", "default_file_mode"]


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back (a process-wide value, read once
    # per write: a concurrent thread creating a file in between would get 0o022 -- harmless).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """Mode a new file gets from ``open(path, "w")``: 0o666 minus the umask."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """Mode a new directory gets from ``mkdir``: 0o777 minus the umask."""
    return 0o777 & ~_umask()


def _fsync_dir(d: Path) -> None:
    """Makes the rename durable; some file systems cannot open a directory for syncing (ignored)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a synced temporary file in the same directory + rename;
    the temporary file is removed if anything fails. The file gets `default_file_mode` permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), default_file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
