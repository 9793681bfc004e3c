"""Atomic file writes: write a temporary file beside the target, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int = 0o600) -> bool:
    """Write ``data`` to ``path`` atomically with ``mode``.

    Returns True when the content changed (False when the file already held exactly ``data``
    with that mode, in which case nothing is written).
    """
    target = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    try:
        st = target.stat()
        if (st.st_mode & 0o7777) == mode and target.read_bytes() == raw:
            return False
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return True
