"""Writing a file in one step: a crash leaves the old file or the new one,
never half of one."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, binary: bool = True, *, prefix: str = ".part-", suffix: str = ".tmp",
                permissions: int | None = None):
    """A temporary file beside ``path`` to write to; when the block ends
    normally it is flushed to disk and takes ``path``'s name at once (an
    existing file is replaced); when it fails it is removed. ``permissions``
    (e.g. 0o644) replaces the temporary file's private 0o600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if permissions is not None:
            os.chmod(tmp, permissions)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
