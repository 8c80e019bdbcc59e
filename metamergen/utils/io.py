"""Small file helpers shared by the writers (images, records, weight files)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "remove_temporaries", "replace_dir", "temporary_target"]

#: Name of :func:`atomic_write`'s temporary file: ``.<target name>.<8 random characters>.tmp``
#: (``tempfile.mkstemp``'s random part is 8 characters of ``[a-z0-9_]``).
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Produce ``path`` through a temporary file in the same folder, then rename it into place.

    ``write`` receives the temporary file's path and must write the complete file there. Readers
    never see a half-written file, and a failure leaves any previous ``path`` untouched and no
    temporary file behind. The folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # see _TEMPORARY
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp files are private (0600); give what a plain open() would
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def temporary_target(name: str) -> str | None:
    """The file name an :func:`atomic_write` temporary called ``name`` was being written for.

    Parameters
    ----------
    name
        A file name (no folder).

    Returns
    -------
    str or None
        ``"x.png"`` for ``".x.png.k3j_9a0b.tmp"``; ``None`` if ``name`` is not such a temporary.
    """
    match = _TEMPORARY.fullmatch(name)
    return None if match is None else match["target"]


def remove_temporaries(folder: str | os.PathLike, *, owned: Callable[[str], bool] | None = None) -> int:
    """Remove the temporary files an interrupted :func:`atomic_write` left in ``folder``.

    ``atomic_write`` removes its temporary file itself unless the process is killed (SIGKILL, power
    loss) while writing. Only regular files whose name matches its pattern,
    ``.<target name>.<8 random characters>.tmp``, are removed; the folder is not searched recursively.

    Parameters
    ----------
    folder
        The folder to clean (absent: nothing to do).
    owned
        Called with each temporary's target file name; only those for which it returns ``True`` are
        removed. Use it when other processes may be writing into the same folder right now: remove
        only the temporaries of files this process alone writes. Default: every temporary.

    Returns
    -------
    int
        How many files were removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in os.scandir(folder):
        target = temporary_target(entry.name)
        if target is None or not entry.is_file(follow_symlinks=False) or (owned is not None and not owned(target)):
            continue
        try:
            os.remove(entry.path)
        except FileNotFoundError:  # gone in the meantime: nothing left to remove
            continue
        removed += 1
    return removed


def replace_dir(build: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Rename the finished folder ``build`` to ``final``, replacing what ``final`` held.

    The previous ``final`` is first renamed aside (so no reader ever sees half of either), deleted
    once the new one is in place, and put back if the swap fails. ``build`` should be a sibling of
    ``final`` (same file system: the renames are then atomic). Returns ``final``.
    """
    build, final = Path(build), Path(final)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
        os.rmdir(old)  # only its unique name is needed: rename() cannot move a folder onto a folder
        os.replace(final, old)
    try:
        os.replace(build, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
