"""Small file helpers shared by every writer: temporary files that get the user's permissions.

``tempfile.mkstemp`` creates files with mode 0600 whatever the umask; a file renamed from it
into place would then be private to its creator (a shared cache or a model file others cannot
read). ``user_mode(path)`` gives it the mode an ordinary ``open(path, "w")`` would have.
"""

from __future__ import annotations

import os
import threading

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
