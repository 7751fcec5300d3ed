"""Decompression of ``.nii.gz`` inputs started ahead of use, while a command is still
importing its libraries.

A command of the command line spends its first half second importing numpy, dask and
nibabel, and its first real work decompressing its input into a temporary ``.nii`` (see
`volbin.io.load`).  The two overlap: `start` decompresses on a thread (the gzip decoder
releases the interpreter lock), and the loader takes the copy (`take`) if the file has not
changed since; otherwise, or if the thread failed, it decompresses the file itself and reports
any error as usual.  The copy is byte for byte the one the loader would make.  Copies nobody
takes are stopped and removed when the command ends (`discard`), or at exit.  This module
imports nothing but the standard library, so that it can run before everything else.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import threading

__all__ = ["COPY_BYTES", "Cancelled", "decompress_into", "discard", "new_temp", "start", "take", "temp_dir"]

#: Bytes copied at a time from the decoder to the temporary file.
COPY_BYTES = 16 * 2**20

_lock = threading.Lock()
#: path -> (identity of the file when the copy started, thread, [temporary path or None],
#: the event that stops the copy after its current block)
_jobs: dict[str, tuple[tuple[int, int], threading.Thread, list[str | None], threading.Event]] = {}


def temp_dir() -> str:
    """The folder of temporary files: ``$VOLBIN_TMPDIR``, else the system's."""
    return os.environ.get("VOLBIN_TMPDIR") or tempfile.gettempdir()


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def new_temp(folder: str) -> tuple[int, str]:
    """A new temporary ``.nii`` in `folder`: its open descriptor and path."""
    return tempfile.mkstemp(prefix="volbin-", suffix=".nii", dir=folder)


class Cancelled(Exception):
    """Decompression stopped by its `cancel` event."""


def decompress_into(
    fd: int, tmp: str, path: str | os.PathLike[str], cancel: threading.Event | None = None
) -> None:
    """Stream-decompress the gzip file `path` into the new file `tmp` (open as `fd`, which
    this closes), checking `cancel` between blocks; `tmp` is removed if that fails or is
    cancelled (`Cancelled`), and the exception propagates."""
    from isal import igzip

    try:
        with os.fdopen(fd, "wb") as out, igzip.open(path, "rb") as src:
            while True:
                if cancel is not None and cancel.is_set():
                    raise Cancelled(path)
                block = src.read(COPY_BYTES)
                if not block:
                    break
                out.write(block)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def start(path: str | os.PathLike[str]) -> None:
    """Begin decompressing `path` on a thread if it is a gzip file (by its first bytes) that is
    not being decompressed already; does nothing for anything else, and never raises."""
    try:
        p = os.path.abspath(os.fspath(path))
        if not os.path.isfile(p):
            return
        with open(p, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                return
        ident = _identity(p)
    except (OSError, TypeError, ValueError):
        return
    result: list[str | None] = [None]
    cancel = threading.Event()

    def run() -> None:
        try:
            fd, tmp = new_temp(temp_dir())
            decompress_into(fd, tmp, p, cancel)
            result[0] = tmp
        except BaseException:  # the loader decompresses again and reports the error
            result[0] = None

    with _lock:
        if p in _jobs:
            return
        # A daemon, stopped at exit by `_cleanup` within one block: a command that fails at
        # once (an output that exists, a bad option) does not wait for a large file.
        thread = threading.Thread(target=run, name="volbin-prefetch", daemon=True)
        _jobs[p] = (ident, thread, result, cancel)
    thread.start()


def take(path: str | os.PathLike[str]) -> str | None:
    """The temporary copy `start` made of `path` (waiting for it), now the caller's to remove;
    None if there is none, it failed, or the file changed since it started."""
    p = os.path.abspath(os.fspath(path))
    with _lock:
        job = _jobs.pop(p, None)
    if job is None:
        return None
    ident, thread, result, _ = job
    thread.join()
    tmp = result[0]
    try:
        same = _identity(p) == ident
    except OSError:
        same = False
    if tmp is not None and not same:
        _unlink(tmp)
        return None
    return tmp


def discard(path: str | os.PathLike[str]) -> None:
    """Stop and remove the copy of `path`, if one was started and not taken (a command that
    ended without loading its input)."""
    with _lock:
        job = _jobs.pop(os.path.abspath(os.fspath(path)), None)
    if job is not None:
        _stop(job)


def _stop(job: tuple[tuple[int, int], threading.Thread, list[str | None], threading.Event]) -> None:
    _, thread, result, cancel = job
    cancel.set()
    thread.join()
    if result[0] is not None:
        _unlink(result[0])


@atexit.register
def _cleanup() -> None:
    with _lock:
        jobs = list(_jobs.values())
        _jobs.clear()
    for job in jobs:
        _stop(job)
