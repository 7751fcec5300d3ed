"""Batch processing: many volumes to binary volumes on dask.distributed, resumable and bounded.

`batch` expands the inputs (globs, list files, folders, paths), derives one output name per
input, skips outputs whose sidecar already matches the recipe and the input, and runs one task
per remaining file on a dask.distributed cluster (a LocalCluster sized to the machine unless a
scheduler or client is given).  Each task loads, decides and writes its file on the worker that
runs it, with the file's chunks on that worker's threads.  A file that fails is reported and
skipped; the run ends with a summary table and a JSON report.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask

from .errors import OutputFileError, VolbinError
from .recipe import Recipe

__all__ = ["BatchResult", "FileResult", "batch", "expand_inputs", "output_path", "process_one"]

IMAGE_EXTS = (".nii.gz", ".nii", ".npy", ".zarr")
REPORT_NAME = "volbin-batch-report.json"
LOCK_NAME = ".volbin-batch.lock"
_GLOB_CHARS = re.compile(r"[*?\[]")
#: io.save's temporary names: ``<name>.<8 hex>.tmp`` (``.nii.tmp`` before gzip, ``.old`` for
#: a replaced zarr folder).
_TEMP = re.compile(r"^(?P<base>.+)\.[0-9a-f]{8}(\.nii)?\.(tmp|old)$")
_LOCAL_SCHEDULERS = ("threads",)
_TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


# --- inputs and names --------------------------------------------------------------------------
def _image_ext(name: str) -> str | None:
    low = name.lower()
    return next((e for e in IMAGE_EXTS if low.endswith(e)), None)


def _is_image(path: str) -> bool:
    return _image_ext(os.path.basename(path.rstrip("/" + os.sep))) is not None


def expand_inputs(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The input paths a batch runs over, in order and without duplicates.

    Parameters
    ----------
    inputs : str, path-like or sequence of them
        Each item is a glob (``data/sub-*/anat/*_T1w.nii.gz``; ``**`` recurses), a folder
        (every ``.nii``, ``.nii.gz``, ``.npy`` and ``.zarr`` directly inside it), an image
        path, or a list file (any other file: one path or glob per line, ``#`` starts a
        comment, relative paths are relative to the current folder).  A ``.zarr`` folder is an
        image, not a folder of inputs.

    Returns
    -------
    paths : list of str
        Globs and folders keep only image names; paths named explicitly are kept even if
        they do not exist or are not images, so that the batch reports them as failed.

    Raises
    ------
    ValueError
        No input at all, or a glob that matches no image.
    OSError
        A list file cannot be read.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out: dict[str, None] = {}
    for item in items:
        for p in _expand(os.fspath(item), list_file_ok=True):
            out.setdefault(os.path.normpath(p), None)
    if not out:
        raise ValueError(f"`inputs` names no input file; got {inputs!r}.")
    return list(out)


def _expand(item: str, list_file_ok: bool) -> list[str]:
    item = os.path.expanduser(item.strip())
    if _GLOB_CHARS.search(item):
        found = sorted(p for p in glob.glob(item, recursive=True) if _is_image(p))
        if not found:
            raise ValueError(f"no image matches {item!r} (volbin reads {', '.join(IMAGE_EXTS)}).")
        return found
    if os.path.isdir(item) and not _is_image(item):
        return sorted(os.path.join(item, e.name) for e in os.scandir(item) if _is_image(e.name))
    if list_file_ok and os.path.isfile(item) and not _is_image(item):
        with open(item, encoding="utf-8") as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
        return [p for line in lines if line for p in _expand(line, list_file_ok=False)]
    return [item]


def output_path(
    input: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    suffix: str = "_mask",
    ext: str | None = None,
    subdir: str = "",
) -> Path:
    """The output of `input`: its name with `suffix` before the extension, in `out_dir`.

    Examples
    --------
    >>> output_path("data/sub-01/anat/sub-01_T1w.nii.gz", "masks").as_posix()
    'masks/sub-01_T1w_mask.nii.gz'
    >>> output_path("run.npy", "out", suffix="_bin", ext=".zarr").as_posix()
    'out/run_bin.zarr'
    """
    name = os.path.basename(os.fspath(input).rstrip("/" + os.sep))
    in_ext = _image_ext(name)
    if in_ext is None:
        raise ValueError(f"{input}: unknown file format; volbin reads {', '.join(IMAGE_EXTS)}.")
    out_ext = name[-len(in_ext) :] if ext is None else _check_ext(ext)
    return Path(out_dir, subdir, name[: -len(in_ext)] + suffix + out_ext)


def _check_ext(ext: str) -> str:
    e = ext if ext.startswith(".") else "." + ext
    if e.lower() not in IMAGE_EXTS:
        raise ValueError(f"`ext` must be one of {', '.join(IMAGE_EXTS)}; got {ext!r}.")
    return e.lower()


# --- results -------------------------------------------------------------------------------
@dataclass
class FileResult:
    """What happened to one input: ``done``, ``skipped`` (up to date), ``failed`` (with a
    `reason`) or ``pending`` (not run: the batch was interrupted).  `note` says why an
    existing output was redone."""

    input: str
    output: str | None
    status: str
    seconds: float | None = None
    reason: str | None = None
    note: str | None = None
    worker: str | None = None


@dataclass
class BatchResult:
    """The outcome of `batch`: one `FileResult` per input, in input order."""

    files: list[FileResult]
    out_dir: str
    seconds: float
    report: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False

    def _with(self, status: str) -> list[FileResult]:
        return [f for f in self.files if f.status == status]

    @property
    def done(self) -> list[FileResult]:
        return self._with("done")

    @property
    def skipped(self) -> list[FileResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[FileResult]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when every input has an up-to-date output."""
        return all(f.status in ("done", "skipped") for f in self.files)

    def summary(self) -> str:
        """A table of counts, then each failed input with its reason."""
        n = {s: len(self._with(s)) for s in ("done", "skipped", "failed", "pending")}
        rate = n["done"] / self.seconds if self.seconds > 0 else 0.0
        notes = {"done": f"({rate:.2f} files/s)", "skipped": "(up to date)"}
        lines = [f"volbin batch: {len(self.files)} inputs in {self.seconds:.1f} s"]
        lines += [
            f"  {s:<8} {k:>6}  {notes.get(s, '')}".rstrip() for s, k in n.items() if k or s != "pending"
        ]
        if self.failed:
            lines.append("failed inputs:")
            for f in self.failed:
                lines += [f"  {f.input}", f"      {_reason(f)}"]
        if self.report:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "engine": self.engine,
            "counts": {
                "total": len(self.files),
                **{s: len(self._with(s)) for s in ("done", "skipped", "failed", "pending")},
            },
            "files": [asdict(f) for f in self.files],
        }


def _reason(f: FileResult) -> str:
    """The reason `f` failed, without the file name volbin's messages start with."""
    reason = f.reason or ""
    for prefix in (f.input, os.path.abspath(f.input), os.path.basename(f.input)):
        if reason.startswith(prefix + ": "):
            return reason[len(prefix) + 2 :]
    return reason


# --- resume: is an output up to date? -----------------------------------------------------------
def _identity(path: str) -> tuple[int, int]:
    """(size, mtime_ns) as io.load records them: a zarr folder counts every file in it."""
    st = os.stat(path)
    if not os.path.isdir(path):
        return st.st_size, st.st_mtime_ns
    size, mtime = 0, st.st_mtime_ns
    for root, _, files in os.walk(path):
        for f in files:
            s = os.stat(os.path.join(root, f))
            size += s.st_size
            mtime = max(mtime, s.st_mtime_ns)
    return size, mtime


def _recipe_doc(recipe: Recipe) -> dict[str, Any]:
    """The recipe as it reads back from a sidecar (JSON round trip)."""
    from .io import to_jsonable

    return json.loads(json.dumps(to_jsonable(recipe.to_dict())))


def _output_state(
    input: str, output: str, recipe_doc: dict[str, Any], volume_axis: int | None
) -> tuple[str, str | None]:
    """``("current" | "missing" | "stale" | "foreign", reason)`` for an output.

    io.save renames the image into place before its sidecar, so a sidecar that matches the
    recipe and the input's identity means the image beside it is complete.
    """
    from .io import read_sidecar, sidecar_path

    side = sidecar_path(output)
    if not os.path.lexists(output):
        return "missing", None
    if not side.exists():
        return "foreign", (
            f"{output} exists without its sidecar {side.name} (not written by volbin, or an "
            "interrupted overwrite); pass --force (force=True) to replace it"
        )
    try:
        record = read_sidecar(side)
    except VolbinError:
        record = {}
    if "volbin_version" not in record:
        return "foreign", f"{side} is not a volbin sidecar; pass --force (force=True) to replace it"
    recipes = [s["recipe"] for s in record.get("steps", []) if isinstance(s, dict) and "recipe" in s]
    if not recipes or recipes[-1] != recipe_doc:
        return "stale", "replaced an output made with another recipe"
    src = record.get("input") or {}
    try:
        size, mtime_ns = _identity(input)
    except OSError:
        size, mtime_ns = -1, -1
    if (src.get("path"), src.get("size"), src.get("mtime_ns")) != (
        os.path.abspath(input),
        size,
        mtime_ns,
    ):
        return "stale", "replaced an output made from another version of the input"
    if (record.get("batch") or {}).get("volume_axis") != volume_axis:
        return "stale", "replaced an output made with another volume axis"
    return "current", None


def _clean_stray_temps(folders: set[str], suffix: str) -> list[str]:
    """Remove io.save's temporary files left in `folders` by a killed run.

    Only names made from a batch output (``*<suffix>.<ext>``), its sidecar or the run
    report are touched.
    """
    removed = []
    bases = tuple(suffix + e for e in (*IMAGE_EXTS, ".json"))
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            m = _TEMP.match(e.name)
            if m and (m["base"].lower().endswith(bases) or m["base"] == REPORT_NAME):
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
                removed.append(e.path)
    return removed


@contextlib.contextmanager
def _folder_lock(out_dir: str) -> Iterator[None]:
    """Hold an exclusive lock on `out_dir` so that two batches never write it at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(os.path.join(out_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputFileError(
                f"{out_dir}: another volbin batch is writing to this folder; wait for it to "
                "finish or choose another output folder."
            ) from None
        except OSError:  # file systems without locks: run unlocked
            pass
        yield
    finally:
        os.close(fd)


# --- the per-file task -----------------------------------------------------------------------
_sched_lock = threading.Lock()
_scratch_lock = threading.Lock()
_sched_users = 0
_sched_cfg: Any = None


@contextlib.contextmanager
def _threaded_scheduler(threads: int) -> Iterator[None]:
    """Run dask computations of this process on the threaded scheduler with `threads` threads.

    dask's configuration is global to the process and several files run at once on one
    worker, so the setting is counted in and out rather than nested per task.  Without it,
    a computation inside a task would be sent back to the cluster through the worker's
    client and move the file's chunks between machines.
    """
    global _sched_users, _sched_cfg
    with _sched_lock:
        if _sched_users == 0:
            _sched_cfg = dask.config.set(scheduler="threads", num_workers=int(threads))
        _sched_users += 1
    try:
        yield
    finally:
        with _sched_lock:
            _sched_users -= 1
            if _sched_users == 0:
                _sched_cfg.__exit__(None, None, None)
                _sched_cfg = None


_scratch: str | None = None


def _use_scratch() -> None:
    """Give this process its own folder for io.load's decompressed copies.

    A ``.nii.gz`` is decompressed to a temporary ``.nii`` that a killed process cannot
    remove.  In a folder named after the host and process id, the next batch on the host
    finds and removes what dead processes left.
    """
    global _scratch
    with _scratch_lock:
        if _scratch is not None:
            return
        base = os.environ.get("VOLBIN_TMPDIR") or tempfile.gettempdir()
        prefix = f"volbin-batch-{socket.gethostname()}-"
        with contextlib.suppress(OSError):
            for e in os.scandir(base):
                pid = e.name[len(prefix) :]
                if e.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(e.path, ignore_errors=True)
        mine = os.path.join(base, f"{prefix}{os.getpid()}")
        try:
            os.makedirs(mine, exist_ok=True)
        except OSError:
            return  # io.load reports an unwritable temporary folder itself
        os.environ["VOLBIN_TMPDIR"] = mine
        atexit.register(shutil.rmtree, mine, ignore_errors=True)
        _scratch = mine


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not reaped, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # another user's process
        return True


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def process_one(
    input: str,
    output: str,
    recipe: dict[str, Any],
    *,
    force: bool = False,
    chunk_bytes: int | None = None,
    volume_axis: int | None = None,
    memory_limit: int | None = None,
    threads: int | None = None,
    client_pid: int | None = None,
) -> dict[str, Any]:
    """Binarize one file: the task `batch` runs on a worker (or in the calling process).

    Loads `input`, decides and streams the mask to `output` with its sidecar, running the
    file's dask graphs on the threaded scheduler with the worker's threads.  The input chunk
    size follows the worker's memory limit (`volbin.cli.chunk_bytes_for`, counting every
    file the worker may run at once) unless `chunk_bytes` is given.  An output already up to
    date is skipped, so a retried task never redoes finished work.

    Returns
    -------
    result : dict
        The fields of a `FileResult`.  Errors volbin raises on purpose (corrupt input, bad
        data, unwritable output) come back as ``status="failed"``; anything else is raised
        so that dask retries the task.
    """
    from .binarize import binarize_volume
    from .cli import chunk_bytes_for
    from .io import load, save

    t0 = time.perf_counter()
    worker = _current_worker()
    result = FileResult(input, output, "failed", worker=getattr(worker, "address", None))
    if worker is not None:
        threads = worker.state.nthreads
        memory_limit = worker.memory_manager.memory_limit or memory_limit
    threads = max(1, int(threads or os.cpu_count() or 1))
    if client_pid is not None and client_pid != os.getpid():
        _use_scratch()
    at_once = threads if worker is not None else 1  # files a worker may run concurrently
    if chunk_bytes is None:
        chunk_bytes = chunk_bytes_for(memory_limit, threads * at_once)
    try:
        rec = Recipe.from_dict(recipe)
        state, reason = _output_state(input, output, _recipe_doc(rec), volume_axis)
        if state == "current" and not force:
            result.status = "skipped"
        elif state == "foreign" and not force:
            result.reason = reason
        else:
            with _threaded_scheduler(threads):
                vol = load(input, chunk_bytes=chunk_bytes, volume_axis=volume_axis)
                mask = binarize_volume(vol, rec)
                # The old image and sidecar (if any) stay until the new ones are renamed
                # over them, image first: an interrupted overwrite leaves a sidecar that
                # no longer matches, which the next run redoes.
                save(mask, output, force=True, extra={"batch": {"volume_axis": volume_axis}})
                del vol, mask  # drops the decompressed copy of a .nii.gz now
            result.status = "done"
            result.note = reason if state == "stale" else None
    except VolbinError as exc:
        result.reason = str(exc)
    except (ValueError, TypeError) as exc:  # bad recipe or option: same for every file
        result.reason = f"{type(exc).__name__}: {exc}"
    result.seconds = round(time.perf_counter() - t0, 3)
    return asdict(result)


# --- engine -------------------------------------------------------------------------------
def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _layout(workers: int | None, threads: int | None) -> tuple[int, int]:
    """Workers and threads per worker for a LocalCluster: workers x threads = cores.

    Up to 8 cores, workers of 2 threads: a worker process costs ~3 CPU seconds to start
    (it imports dask, numba, nibabel and volbin) and two files in one process hardly
    contend for the GIL (scripts/bench_batch.py --engines).  Above, dask's own choice.
    """
    cores = _cores()
    if workers is None and threads is None:
        if cores > 8:
            from distributed.deploy.utils import nprocesses_nthreads

            return nprocesses_nthreads(cores)
        workers = max(1, cores // 2)
        return workers, max(1, cores // workers)
    if workers is None:
        return max(1, cores // int(threads)), int(threads)  # type: ignore[arg-type]
    if threads is None:
        return int(workers), max(1, cores // int(workers))
    return int(workers), int(threads)


@contextlib.contextmanager
def _engine(
    client: Any,
    scheduler: str | None,
    workers: int | None,
    threads_per_worker: int | None,
    memory_limit: Any,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The dask client a batch submits to (None: run in this process), and a description."""
    if client is None and scheduler in _LOCAL_SCHEDULERS:
        threads = threads_per_worker or _cores()
        yield None, {"kind": "local", "scheduler": scheduler, "threads": threads}
        return
    import logging

    from distributed import Client, LocalCluster

    cluster = None
    if client is not None:
        kind, own = "client", False
    elif scheduler is not None:
        kind, own = "scheduler", True
        try:
            client = Client(scheduler, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise VolbinError(
                f"cannot reach the dask scheduler at {scheduler} ({exc}); check the address "
                "and that the scheduler is running."
            ) from None
    else:
        kind, own = "local-cluster", True
        n, t = _layout(workers, threads_per_worker)
        # distributed starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off
        # glibc's reuse of large freed blocks: every chunk-sized array is then a fresh
        # mmap, page-faulted in and unmapped again (35% more CPU per file, measured by
        # scripts/bench_batch.py).  volbin keeps no data on workers, so it is left unset.
        with dask.config.set({_TRIM_KEY: None}):
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=t,
                processes=True,
                memory_limit="auto" if memory_limit is None else memory_limit,
                silence_logs=logging.ERROR,
            )
        client = Client(cluster, set_as_default=False)
    try:
        info = client.scheduler_info()
        ws = info.get("workers", {}).values()
        desc = {
            "kind": kind,
            "address": client.scheduler.address,
            "dashboard": client.dashboard_link,
            "workers": len(ws),
            "threads": sum(w.get("nthreads", 0) for w in ws),
            "memory_limit": max((w.get("memory_limit") or 0 for w in ws), default=0) or None,
        }
        yield client, desc
    finally:
        if own:
            client.close()
        if cluster is not None:
            cluster.close()


# --- progress ------------------------------------------------------------------------------
class _Progress:
    """A bar over files on a terminal, one log line per finished file otherwise."""

    def __init__(self, mode: Any, total: int, skipped: int) -> None:
        if mode is None:
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = {True: "bar", False: "off"}.get(mode, mode)
        if self.mode not in ("bar", "log", "off"):
            raise ValueError(f"`progress` must be None, True, False, 'bar' or 'log'; got {mode!r}.")
        self.total, self.count = total, skipped
        self.bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=skipped, unit="file", desc="volbin batch", file=sys.stderr)

    def say(self, text: str) -> None:
        if self.mode == "bar":
            self.bar.write(f"volbin: {text}", file=sys.stderr)
        elif self.mode == "log":
            print(f"volbin: {text}", file=sys.stderr, flush=True)

    def file(self, r: FileResult) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            if r.status == "failed":
                self.say(f"failed {r.input}: {_reason(r)}")
        elif self.mode == "log":
            where = f" on {r.worker}" if r.worker else ""
            if r.status == "failed":
                text = f"failed {r.input}: {_reason(r)}"
            else:
                text = f"{r.status} {r.input} -> {_rel(r.output)} in {r.seconds or 0:.2f} s{where}"
                text += f" ({r.note})" if r.note else ""
            self.say(f"[{self.count}/{self.total}] {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- batch -------------------------------------------------------------------------------------
def batch(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    recipe: Recipe | None = None,
    *,
    suffix: str = "_mask",
    ext: str | None = None,
    force: bool = False,
    keep_tree: bool = False,
    client: Any = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: int | str | None = None,
    scheduler: str | None = None,
    chunk_bytes: int | None = None,
    volume_axis: int | None = None,
    retries: int = 1,
    progress: bool | str | None = None,
    report: str | os.PathLike[str] | bool | None = None,
    **recipe_options: Any,
) -> BatchResult:
    """Binarize many volumes on a dask cluster, resumably, each output with its sidecar.

    Parameters
    ----------
    inputs : str, path-like or sequence of them
        Globs, list files, folders or paths (see `expand_inputs`).
    out_dir : str or path-like
        Output folder, created if missing.
    recipe : Recipe, optional
        What to do; if not given, built from `recipe_options` (``method``, ``scope``, ...).
    suffix : str
        Added to each input's name before its extension: ``sub-01_T1w.nii.gz`` gives
        ``sub-01_T1w_mask.nii.gz``.
    ext : str, optional
        Output format (``.nii``, ``.nii.gz``, ``.npy``, ``.zarr``); by default the input's.
    force : bool
        Redo outputs that are up to date, and overwrite files at output names that have no
        volbin sidecar (otherwise those inputs fail).  Outputs made with another recipe or
        from another version of the input are redone in any case.
    keep_tree : bool
        Mirror the inputs' folders (below their common folder) in `out_dir`.  Without it all
        outputs go directly into `out_dir`, and two inputs that would get the same output
        name are an error before anything runs.
    client : distributed.Client, optional
        Run on this client's cluster (left open).
    workers, threads_per_worker : int, optional
        Size of the LocalCluster started when neither `client` nor `scheduler` is given;
        by default workers x threads = the cores this process may use, with workers of 2
        threads up to 8 cores.
    memory_limit : int or str, optional
        Memory limit of each worker of that LocalCluster (``"4GB"``); default: the machine's
        memory shared between workers.  Input chunks are sized from each worker's limit.
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:8786``) to join, or ``"threads"``
        to run file after file in this process with each file's chunks on threads.
    chunk_bytes : int, optional
        Input chunk size in bytes; overrides the size chosen from the memory limit.
    volume_axis : int, optional
        Volume axis of 4D ``.npy``/zarr inputs (see `volbin.io.load`).
    retries : int
        Times a task that raises an unexpected error is retried.  A worker that dies
        (killed, out of memory) has its file rescheduled by dask in any case, up to
        ``distributed.scheduler.allowed-failures`` times.
    progress : bool or str, optional
        ``"bar"`` (True): a progress bar over files; ``"log"``: a line per finished file
        (to standard error); False: nothing.  Default: the bar on a terminal, lines otherwise.
    report : str, path-like or bool, optional
        Where to write the JSON run report (None or True: ``<out_dir>/volbin-batch-report.json``);
        False writes none.
    **recipe_options
        `Recipe` fields, when `recipe` is not given.

    Returns
    -------
    result : BatchResult
        One `FileResult` per input; ``result.ok`` is False if any failed.

    Raises
    ------
    ValueError
        No inputs, a glob matching nothing, two inputs with the same output, an output that
        would overwrite its input, or a bad recipe or option.
    OutputFileError
        Another batch holds `out_dir`, or it cannot be created.
    VolbinError
        The scheduler at `scheduler` cannot be reached.

    Notes
    -----
    One task per file goes to the cluster (``client.submit``); on its worker the task runs
    the file's dask graphs on the threaded scheduler, so a file's data never leaves the
    machine that reads it and its chunks use the worker's threads, while files spread over
    workers.  See docs/architecture.md ("Batch") for the measurements behind this choice.

    An output is skipped when its sidecar records the same recipe and the input's identity
    (absolute path, size, modification time in ns).  io.save renames the image into place
    before the sidecar, so a run killed at any moment leaves no partial file under a final
    name and no sidecar without its image; the next run removes io.save's temporary files
    (``*.tmp``) beside the outputs and does what is left.  Two batches must not write the
    same folder at once; a lock file (``.volbin-batch.lock``) enforces it.

    Examples
    --------
    >>> import os, shutil, tempfile
    >>> from volbin.io import save
    >>> from volbin.phantom import phantom
    >>> tmp = tempfile.mkdtemp()
    >>> for i in range(2):
    ...     _ = save(phantom((20, 24, 20), seed=i).intensity, f"{tmp}/sub-0{i}_T1w.nii")
    >>> res = batch(f"{tmp}/*.nii", f"{tmp}/masks", method="otsu", scheduler="threads",
    ...             progress=False)
    >>> sorted(os.path.basename(f.output) for f in res.done)
    ['sub-00_T1w_mask.nii', 'sub-01_T1w_mask.nii']
    >>> again = batch(f"{tmp}/*.nii", f"{tmp}/masks", method="otsu", scheduler="threads",
    ...               progress=False)
    >>> len(again.skipped), again.ok
    (2, True)
    >>> shutil.rmtree(tmp)
    """
    t0 = time.perf_counter()
    started = _now()
    if recipe is None:
        recipe = Recipe(**recipe_options)
    elif recipe_options:
        recipe = recipe.replace(**recipe_options)
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"`retries` must be a non-negative int; got {retries!r}.")
    out_root = os.path.abspath(os.path.expanduser(os.fspath(out_dir)))
    jobs, results = _plan(expand_inputs(inputs), out_root, suffix, ext, keep_tree)
    try:
        os.makedirs(out_root, exist_ok=True)
        for folder in {os.path.dirname(o) for _, o in jobs if o}:
            os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OutputFileError(f"{out_root}: cannot create the output folder ({exc}).") from exc
    report_path = None
    if report is not False:
        given = report if isinstance(report, (str, os.PathLike)) else None  # None or True
        report_path = os.path.abspath(given or os.path.join(out_root, REPORT_NAME))
    recipe_dict = recipe.to_dict()
    doc = _recipe_doc(recipe)

    with _folder_lock(out_root):
        folders = {os.path.dirname(o) for _, o in jobs if o}
        _clean_stray_temps(folders, suffix)
        todo = []
        for i, (inp, out) in enumerate(jobs):
            if results[i] is not None:
                continue
            if not os.path.exists(inp):
                results[i] = FileResult(inp, out, "failed", reason=f"{inp}: no such file")
            elif not force and _output_state(inp, out, doc, volume_axis)[0] == "current":
                results[i] = FileResult(inp, out, "skipped")
            else:
                todo.append(i)
        n_skipped = sum(r is not None and r.status == "skipped" for r in results)
        prog = _Progress(progress, len(results), n_skipped)
        engine: dict[str, Any] = {}
        finished = False
        try:
            if n_skipped:
                prog.say(f"{n_skipped} of {len(results)} outputs are up to date; skipping them")
            for r in results:
                if r is not None and r.status == "failed":
                    prog.file(r)
            if todo:
                options = {
                    "force": force,
                    "chunk_bytes": chunk_bytes,
                    "volume_axis": volume_axis,
                    "memory_limit": _bytes(memory_limit),  # used without a cluster
                    "client_pid": os.getpid(),
                }
                with _engine(client, scheduler, workers, threads_per_worker, memory_limit) as (
                    c,
                    engine,
                ):
                    if c is not None:
                        prog.say(
                            f"dask cluster {engine['address']}: {engine['workers']} workers, "
                            f"{engine['threads']} threads; dashboard {engine['dashboard']}"
                        )
                    runs = _run(c, jobs, todo, recipe_dict, options, retries, engine.get("threads"))
                    for i, r in runs:
                        results[i] = r
                        prog.file(r)
            finished = True
        finally:
            prog.close()
            files = [r or FileResult(*jobs[i], "pending") for i, r in enumerate(results)]
            res = BatchResult(files, out_root, time.perf_counter() - t0, report_path, engine, not finished)
            if report_path is not None:
                _write_report(res, report_path, started, recipe_dict)
        if todo:  # temporary files of tasks retried after their worker died
            _clean_stray_temps(folders, suffix)
    return res


def _plan(
    paths: list[str], out_root: str, suffix: str, ext: str | None, keep_tree: bool
) -> tuple[list[tuple[str, str]], list[FileResult | None]]:
    """(input, output) for every input and results pre-filled for inputs that cannot run."""
    from .io import sidecar_path

    if ext is not None:
        _check_ext(ext)
    if not isinstance(suffix, str) or os.sep in suffix or "/" in suffix:
        raise ValueError(f"`suffix` must be a file-name part without slashes; got {suffix!r}.")
    absolute = [os.path.abspath(p) for p in paths]
    images = [a for a in absolute if _is_image(a)]
    root = os.path.commonpath([os.path.dirname(a) for a in images]) if images else ""
    jobs: list[tuple[str, str]] = []
    results: list[FileResult | None] = []
    owners: dict[str, list[str]] = {}
    for p, a in zip(paths, absolute, strict=True):
        if not _is_image(a):
            jobs.append((p, ""))
            results.append(
                FileResult(
                    p,
                    None,
                    "failed",
                    reason=f"{p}: unknown file format; volbin reads {', '.join(IMAGE_EXTS)}",
                )
            )
            continue
        sub = os.path.relpath(os.path.dirname(a), root) if keep_tree else ""
        out = str(output_path(a, out_root, suffix=suffix, ext=ext, subdir=sub))
        out = os.path.normpath(out)
        if os.path.realpath(out) == os.path.realpath(a):
            raise ValueError(f"{p}: its output would overwrite it; pass another suffix or folder.")
        owners.setdefault(str(sidecar_path(out)), []).append(p)
        jobs.append((p, out))
        results.append(None)
    clashes = {k: v for k, v in owners.items() if len(v) > 1}
    if clashes:
        lines = [f"  {k[:-5]}.*: {', '.join(v)}" for k, v in list(clashes.items())[:10]]
        raise ValueError(
            f"{len(clashes)} outputs would be written by more than one input:\n"
            + "\n".join(lines)
            + "\nrename the inputs, or, for inputs in different folders, pass keep_tree=True "
            "(CLI: --keep-tree) to mirror their folders in the output folder."
        )
    return jobs, results


def _run(
    client: Any,
    jobs: list[tuple[str, str]],
    todo: list[int],
    recipe: dict[str, Any],
    options: dict[str, Any],
    retries: int,
    threads: int | None = None,
) -> Iterator[tuple[int, FileResult]]:
    """Run the jobs in `todo`, yielding (index, result) as each finishes.

    Tasks get absolute input paths (a worker's current folder is not this one); results
    name inputs as the user gave them.
    """

    def result(i: int, fields: dict[str, Any]) -> FileResult:
        return FileResult(**{**fields, "input": jobs[i][0]})

    if client is None:
        options = {**options, "threads": threads}
        for i in todo:
            yield i, result(i, process_one(os.path.abspath(jobs[i][0]), jobs[i][1], recipe, **options))
        return
    from distributed import as_completed

    token = secrets.token_hex(4)
    futures = {
        client.submit(
            process_one,
            os.path.abspath(jobs[i][0]),
            jobs[i][1],
            recipe,
            **options,
            retries=retries,
            pure=False,
            key=f"volbin-batch-{token}-{i}",
        ): i
        for i in todo
    }
    try:
        for fut in as_completed(futures, loop=client.loop):
            i = futures[fut]
            try:
                r = result(i, fut.result())
            except Exception as exc:  # the task raised after its retries, or workers died
                reason = f"{type(exc).__name__}: {exc}"
                if type(exc).__name__ == "KilledWorker":
                    reason = (
                        "the workers running it died (out of memory? pass a larger memory "
                        f"limit or smaller chunks): {exc}"
                    )
                r = FileResult(*jobs[i], "failed", reason=reason)
            yield i, r
    finally:
        client.cancel(list(futures))


def _bytes(size: int | str | None) -> int | None:
    if size is None or isinstance(size, int):
        return size
    from dask.utils import parse_bytes

    return int(parse_bytes(size))


def _rel(path: str | None) -> str:
    """`path` relative to the current folder when it lies below it."""
    if not path:
        return ""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_report(res: BatchResult, path: str, started: str, recipe: dict[str, Any]) -> None:
    from . import __version__
    from .io import to_jsonable

    doc = {
        "volbin_version": __version__,
        "started": started,
        "finished": _now(),
        "recipe": recipe,
        **res.to_dict(),
    }
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(to_jsonable(doc), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputFileError(f"{path}: cannot write the batch report ({exc}).") from exc


# --- command line -------------------------------------------------------------------------
EPILOG_BATCH = """\
examples:
  volbin batch 'data/sub-*/anat/*_T1w.nii.gz' --out-dir masks/ --method otsu --scope volume
  volbin batch inputs.txt --out-dir masks/ --recipe recipe.json --workers 2 --memory-limit 4GB
  volbin batch data/ --out-dir masks/ --scheduler tcp://scheduler-host:8786
  volbin batch 'site*/*.nii.gz' --out-dir masks/ --keep-tree --ext .zarr

Outputs whose sidecar matches the recipe and the input are skipped: re-run the same command
after an interruption to finish the rest.  Exit code 1 if any input failed.
"""


def add_batch_commands(subparsers: Any) -> None:
    """Add ``volbin batch`` and ``volbin convert`` to the CLI's subparsers."""
    import argparse

    from .cli import _add_common, _add_recipe_args
    from .convert import add_convert_command

    p = subparsers.add_parser(
        "batch",
        help="binarize many volumes on a dask cluster, resumably",
        epilog=EPILOG_BATCH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Binarize every input (globs, a list file, a folder, paths) into --out-dir, "
        "one output and JSON sidecar per input, files in parallel on dask.distributed.",
    )
    p.add_argument("inputs", nargs="+", help="globs (quote them), list files, folders or paths")
    p.add_argument("--out-dir", "-o", required=True, help="output folder (created if missing)")
    p.add_argument("--suffix", default="_mask", help="added before the extension (default _mask)")
    p.add_argument("--ext", choices=IMAGE_EXTS, help="output format (default: the input's)")
    p.add_argument("--force", action="store_true", help="redo outputs that are up to date")
    p.add_argument(
        "--keep-tree",
        action="store_true",
        help="mirror the inputs' folders in --out-dir (needed when names repeat)",
    )
    p.add_argument("--report", metavar="PATH", help=f"JSON run report (default OUT_DIR/{REPORT_NAME})")
    g = p.add_argument_group("cluster")
    g.add_argument("--workers", type=int, metavar="N", help="local cluster: worker processes")
    g.add_argument(
        "--threads-per-worker",
        type=int,
        metavar="N",
        help="local cluster: threads per worker (default: workers x threads = cores)",
    )
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="join a running dask scheduler (tcp://host:8786), or 'threads' to run "
        "in this process without a cluster",
    )
    g.add_argument("--retries", type=int, default=1, help="retries of a task that errors (1)")
    _add_recipe_args(p)
    _add_common(p)
    p.set_defaults(func=cmd_batch)
    add_convert_command(subparsers)


def cmd_batch(args: Any) -> int:
    from .cli import EXIT_DATA, EXIT_OK, recipe_from_args

    recipe = recipe_from_args(args)
    chunk_bytes = int(args.chunk_mb * 2**20) if args.chunk_mb else None
    if args.scheduler in _LOCAL_SCHEDULERS:
        _use_scratch()  # this process reads the inputs; it exits when the batch ends
    res = batch(
        args.inputs,
        args.out_dir,
        recipe,
        suffix=args.suffix,
        ext=args.ext,
        force=args.force,
        keep_tree=args.keep_tree,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
        scheduler=args.scheduler,
        chunk_bytes=chunk_bytes,
        volume_axis=args.volume_axis,
        retries=args.retries,
        progress="log" if args.no_progress else None,
        report=args.report,
    )
    print(res.summary())
    return EXIT_OK if res.ok else EXIT_DATA
