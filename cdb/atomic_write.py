"""Writing a file so that it is either entirely there or not changed: ``Results.save`` and the store's records.

The content goes to a temporary file in the destination's folder, is flushed to disk
(``fsync``), and only then takes the destination's name: with ``os.replace`` (replacing an
existing file in one step), or with ``os.link``, which fails if the name exists, so that of two
processes creating the same file exactly one succeeds. A failed write (a full disk, a killed
process) leaves the old file as it was and no partial file under the destination's name.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, overwrite: bool = True) -> Path:
    """Calls ``write(file)`` on a temporary file next to ``path``, syncs it, then gives it ``path``'s name.

    Args:
      path: the destination; its folder is created if needed.
      write: writes the whole content to the binary file it is given.
      overwrite: replace an existing ``path``; if ``False``, a ``FileExistsError`` when ``path``
        exists, also when another process creates it while this one writes.

    Returns:
      ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise _exists(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_exclusively(tmp, path)
        _sync_folder(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _link_exclusively(tmp: str, path: Path) -> None:
    """Gives ``tmp``'s file the name ``path`` unless that name exists (``FileExistsError``)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as err:  # a file system without hard links: create the name exclusively, then fill it
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        os.replace(tmp, path)


def _exists(path: Path) -> FileExistsError:
    return FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")


def _sync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (where a folder can be opened and synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
