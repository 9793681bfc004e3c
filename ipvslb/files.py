"""Files ipvslb writes: atomic writes (one file or a set), its run directory, executables."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
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



def write_all_atomic(directory: str | os.PathLike[str], files: dict[str, str],
                     mode: int = 0o600) -> None:
    """Write every file of ``files`` into ``directory``, or none of them.

    Each is first written in full to a temporary file beside its target; only when all of them
    are written are they renamed into place. Raises OSError (naming the file in ``filename``)
    with nothing written when any cannot be.
    """
    target_dir = Path(directory)
    created: list[Path] = []
    for parent in (target_dir, *target_dir.parents):
        if parent.exists():
            break
        created.append(parent)
    temps: dict[Path, str] = {}
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in files:
            path = target_dir / name
            if path.is_dir() or (path.exists() and not path.is_file()):
                raise IsADirectoryError(errno.EISDIR, "is a directory or not a regular file",
                                        str(path))
        for name, text in files.items():
            path = target_dir / name
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target_dir)
            temps[path] = tmp
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), mode)
                handle.write(text.encode())
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for parent in created:
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    for path, tmp in temps.items():
        os.replace(tmp, path)


# -- the run directory ---------------------------------------------------------------------------

# Written into a run directory ipvslb created (or adopted); only such a directory is emptied and
# removed again. A directory without it is someone else's.
RUN_DIR_MARKER = ".ipvslb-run-dir"
# Every name ipvslb writes in its run directory (an older ipvslb's directory, without the marker,
# holds only these and is adopted), with write_atomic's and vs_switch's temporary files.
RUN_DIR_NAMES = re.compile(
    r"\.?(agent\.lock|keepalived\.conf|apiserver-health|(keepalived|vrrp|checkers)\.pid"
    r"|vs-(active-|standby-)?\d+\.conf|state-\d+)(\.tmp|\.[A-Za-z0-9_]{8})?")


def owns_run_dir(run_dir: Path) -> bool:
    return (run_dir / RUN_DIR_MARKER).is_file()


def claim_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (mode 0700, with the marker) or make sure it is ipvslb's own.

    An existing directory is used only when it carries the marker, or when it holds nothing but
    ipvslb's own files and only its owner may write it; it is never chmod-ed. Anything else is a
    UserError naming the directory.
    """
    from ipvslb.errors import UserError

    try:
        run_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not run_dir.is_dir() or run_dir.is_symlink():
            raise UserError(f"node.runDir {run_dir} exists and is not a directory; set "
                            "node.runDir to a directory of ipvslb's own") from None
        if owns_run_dir(run_dir):
            return
        st = run_dir.stat()
        foreign = sorted(n for n in os.listdir(run_dir) if not RUN_DIR_NAMES.fullmatch(n))
        if foreign or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            what = (f"holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}"
                    if foreign else "may be written by other users")
            raise UserError(f"node.runDir {run_dir} exists, was not created by ipvslb and "
                            f"{what}; set node.runDir to a directory of ipvslb's own (default "
                            "/run/ipvslb, created by ipvslb)") from None
    except OSError as err:
        raise UserError(f"node.runDir {run_dir}: cannot create it ({err.strerror}); set "
                        "node.runDir to a writable place such as /run/ipvslb") from None
    (run_dir / RUN_DIR_MARKER).write_text("created by ipvslb; removed with this directory\n")


def release_run_dir(run_dir: Path) -> None:
    """Remove ``run_dir`` if it is ipvslb's and holds nothing but the marker."""
    if not owns_run_dir(run_dir):
        return
    try:
        if os.listdir(run_dir) != [RUN_DIR_MARKER]:
            return
        (run_dir / RUN_DIR_MARKER).unlink()
        run_dir.rmdir()
    except OSError:
        pass


def remove_run_files(run_dir: Path, names: list[str]) -> None:
    """Delete ipvslb's files ``names`` from ``run_dir`` (only a directory ipvslb owns)."""
    if not owns_run_dir(run_dir):
        return
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()


def executable_problem(path: str) -> str | None:
    """Why ``path`` cannot be executed, or None (a directory has the x bit but does not run)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "is a directory" if stat.S_ISDIR(st.st_mode) else "is not a regular file"
    if not os.access(path, os.X_OK):
        return "is not executable"
    return None
