"""File I/O shared by every writer: one atomic write, with the user's permissions.

Every output of the toolkit (images, style files, caches, reports, adapter weights) is written
through :func:`atomic_write`: the content goes to a temporary file in the same directory, is
flushed to disk, gets the mode an ordinary ``open(path, "w")`` would give it, and is then
renamed into place. A reader never sees a half-written file, and a failed write leaves nothing
behind.

``tempfile.mkstemp`` creates files with mode 0600 whatever the umask; a file renamed from it
into place would otherwise be private to its creator (a shared cache or a model file others
cannot read). ``user_mode(path)`` fixes that.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock)."""
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def user_mode(path: str | os.PathLike) -> None:
    """chmod ``path`` to 0666 minus the umask, as a newly created ordinary file."""
    os.chmod(path, 0o666 & ~current_umask())


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _publish_new(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist; ``FileExistsError`` if it does.

    A hard link is the atomic create-if-absent; on a file system without hard links the name
    is claimed with ``O_EXCL`` first and then filled by a rename.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # FileExistsError if taken
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, exclusive: bool = False, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it becomes ``path``, atomically.

    Write the content to the yielded path with any writer (``save_file``, ``savefig``,
    ``write_bytes``...). On success the file is fsynced (unless ``fsync=False``), given the
    user's umask mode and renamed onto ``path``. With ``exclusive=True`` an existing ``path`` is
    never replaced: ``FileExistsError`` is raised instead, also when another writer created it
    meanwhile. On any error the temporary file is removed. The parent directory must exist.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        user_mode(tmp)  # mkstemp made it 0600
        if exclusive:
            _publish_new(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_write`; returns the path."""
    with atomic_write(path, exclusive=exclusive) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, exclusive: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), exclusive=exclusive)


def cache_dir() -> Path:
    """Where image embeddings (and model hashes) are cached: ``$INSTANTSTYLE_CACHE`` or the XDG cache."""
    root = os.environ.get("INSTANTSTYLE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "instantstyle"
    )
    return Path(root) / "embeddings"
