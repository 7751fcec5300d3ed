"""The batch engine: the per-file task, the dask cluster it runs on, and the loop over tasks.

`process_one` binarizes one file on a worker with the file's chunks on that worker's threads
(`run_file` is the body every per-file task shares);
`_engine` gives the client to submit to (a LocalCluster sized to the machine, a scheduler, a
given client, or none), and `_run` submits one task per file and yields results as they finish.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import dask
import dask.threaded

from ..errors import VolbinError
from ..io import MAX_OUTPUT_BYTES
from ..recipe import Recipe
from .inputs import _named_preview, _output_state, _recipe_doc
from .results import FileResult, _outcome

_LOCAL_SCHEDULERS = ("threads",)
#: A local cluster may run at most this many threads per core in all (workers x threads).
MAX_THREADS_PER_CORE = 4
#: Seconds to wait for a dask scheduler to answer before giving up.
CONNECT_TIMEOUT = 5.0
_TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


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
            # As a function: named "threads", dask would import distributed to look for a
            # client (a third of a second where it is not loaded yet).
            _sched_cfg = dask.config.set(scheduler=dask.threaded.get, num_workers=int(threads))
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
    import sys

    if "distributed" not in sys.modules:  # no worker without it (and its import is slow)
        return None
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
    files_at_once: int = 1,
    client_pid: int | None = None,
    cohort: dict[str, Any] | None = None,
    verify: bool = False,
    allow_missing: bool = False,
    max_output_bytes: int | None = MAX_OUTPUT_BYTES,
    preview: bool = False,
) -> dict[str, Any]:
    """Binarize one file: the task `batch` runs on a worker (or in the calling process).

    Loads `input`, decides and streams the mask to `output` with its sidecar, running the
    file's dask graphs on the threaded scheduler with the worker's threads.  The input chunk
    size follows the worker's memory limit (`volbin.volume.chunk_bytes_for`, counting every
    file the worker may run at once) unless `chunk_bytes` is given.  An output already up to
    date is skipped, so a retried task never redoes finished work.  `cohort` is the pooled
    decision of a ``scope="cohort"`` batch (`volbin.batch.cohort.pooled_decision`).  A file
    at the output's name that volbin did not write is replaced only with `force`; an output
    whose sidecar name is another existing image's is never written.

    With `preview`, the preview PNG (`volbin.preview.preview_output`) is drawn after the
    mask, here on the worker; an up-to-date mask whose sidecar names no existing preview gets
    only its preview.  A PNG at the preview's name that the output's sidecar does not name
    is replaced only with `force`.  Without `preview`, a redone output's old preview (it
    shows the old mask) is removed.

    Returns
    -------
    result : dict
        The fields of a `FileResult`.  Errors volbin raises on purpose (corrupt input, bad
        data, unwritable output) come back as ``status="failed"``; anything else is raised
        so that dask retries the task.  A preview that fails for any reason makes the
        result ``failed`` with the reason, the mask and its sidecar staying in place.
    """

    def job() -> tuple[dict[str, Any], Any]:
        from ..binarize import binarize_volume

        rec = Recipe.from_dict(recipe)
        extra = {} if cohort is None else {"cohort": cohort}
        return _recipe_doc(rec), lambda vol: binarize_volume(vol, rec, **extra)

    return run_file(
        input,
        output,
        job,
        force=force,
        chunk_bytes=chunk_bytes,
        volume_axis=volume_axis,
        memory_limit=memory_limit,
        threads=threads,
        files_at_once=files_at_once,
        client_pid=client_pid,
        cohort_id=None if cohort is None else cohort["record"].get("id"),
        verify=verify,
        allow_missing=allow_missing,
        max_output_bytes=max_output_bytes,
        preview=preview,
    )


def run_file(
    input: str,
    output: str,
    job: Callable[[], tuple[dict[str, Any], Callable[[Any], Any]]],
    *,
    force: bool = False,
    chunk_bytes: int | None = None,
    volume_axis: int | None = None,
    memory_limit: int | None = None,
    threads: int | None = None,
    files_at_once: int = 1,
    client_pid: int | None = None,
    cohort_id: str | None = None,
    verify: bool = False,
    allow_missing: bool = False,
    max_output_bytes: int | None = MAX_OUTPUT_BYTES,
    dtype: str | None = None,
    preview: bool = False,
) -> dict[str, Any]:
    """The body of every per-file task (`process_one`, `volbin.batch.normalizing.normalize_one`).

    ``job()`` gives the recipe record an up-to-date output's sidecar holds and the function
    from the loaded input to the (lazy) output Volume; its errors, like those of loading,
    computing and writing, are reported as `process_one` says.  `dtype` is the output's.
    """
    from ..io import load, save
    from ..preview import preview_path
    from ..volume import chunk_bytes_for

    t0 = time.perf_counter()
    worker = _current_worker()
    result = FileResult(input, output, "failed", worker=getattr(worker, "address", None))
    if worker is not None:
        threads = worker.state.nthreads
        memory_limit = worker.memory_manager.memory_limit or memory_limit
    threads = max(1, int(threads or os.cpu_count() or 1))
    if client_pid is not None and client_pid != os.getpid():
        _use_scratch()
    # Files run concurrently in this process (or on this worker), each with `threads` threads.
    at_once = threads if worker is not None else max(1, int(files_at_once))
    if chunk_bytes is None:
        chunk_bytes = chunk_bytes_for(memory_limit, threads * at_once)
    written = False
    try:
        doc, make = job()
        state, reason = _output_state(input, output, doc, volume_axis, cohort_id, verify)
        old_png = _named_preview(output)
        png = preview_path(output)
        if state == "conflict" or (state == "foreign" and not force):
            result.reason = reason
        elif preview and old_png is None and os.path.lexists(png) and not force:
            result.reason = (
                f"{png} exists and the output's sidecar does not name it (not written by volbin); "
                "pass --force (force=True) to replace it"
            )
        elif state == "current" and not force:
            result.status = "skipped"
            written = True
            if preview and not (old_png is not None and old_png.is_file()):
                result.status = "done"
                result.note = "only the preview was written; the mask was up to date"
                with _threaded_scheduler(threads):
                    vol = load(
                        input, chunk_bytes=chunk_bytes, volume_axis=volume_axis, allow_missing=allow_missing
                    )
                    _write_preview(result, output, vol, volume_axis)
                    del vol
        else:
            with _threaded_scheduler(threads):
                vol = load(
                    input, chunk_bytes=chunk_bytes, volume_axis=volume_axis, allow_missing=allow_missing
                )
                out = make(vol)
                # The old image stays until the new one is renamed over it; its sidecar is
                # first replaced by the new one marked pending, so an interrupted overwrite
                # leaves a sidecar that does not match the image, which the next run redoes.
                save(
                    out,
                    output,
                    force=True,
                    dtype=dtype,
                    sidecar={"batch": {"volume_axis": volume_axis}},
                    max_output_bytes=max_output_bytes,
                )
                del out
                result.status = "done"
                result.note = reason if state == "stale" else None
                written = True
                if preview:
                    _write_preview(result, output, vol, volume_axis)
                elif old_png is not None:  # it shows the mask just replaced
                    with contextlib.suppress(OSError):
                        os.unlink(old_png)
                del vol  # drops the decompressed copy of a .nii.gz now
    except VolbinError as exc:
        result.status, result.reason = "failed", str(exc)
    except (ValueError, TypeError) as exc:  # bad recipe or option: same for every file
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
    if written:  # the mask is in place (also when its preview failed)
        for key, value in _outcome(output).items():
            setattr(result, key, value)
    result.seconds = round(time.perf_counter() - t0, 3)
    return asdict(result)


def _write_preview(result: FileResult, output: str, vol: Any, volume_axis: int | None) -> None:
    """Draw `output`'s preview; if it cannot be made, `result` fails with the reason (the
    mask and its sidecar stay in place, and the next run draws the preview again)."""
    from ..preview import preview_output

    try:
        preview_output(output, vol, force=True, volume_axis=volume_axis)
    except Exception as exc:  # any failure of the picture leaves a mask that is fine
        why = str(exc) if isinstance(exc, VolbinError) else f"{type(exc).__name__}: {exc}"
        result.status = "failed"
        result.reason = f"{output}: the mask and its sidecar were written, but its preview failed: {why}"


def _tasks(client: Any, threads: int | None, memory_limit: Any) -> Any:
    """``run(fn, [args, ...]) -> [fn(*args), ...]``: one task per call on the cluster, or in
    turn in this process (with the file's chunks on `threads` threads) without one."""

    def local(fn: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
        with _threaded_scheduler(max(1, int(threads or _cores()))):
            return [fn(*args) for args in calls]

    def remote(fn: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
        token = secrets.token_hex(4)
        futures = [
            client.submit(_in_worker, fn, *args, pure=False, key=f"volbin-cohort-{token}-{i}")
            for i, args in enumerate(calls)
        ]
        try:
            return client.gather(futures)
        finally:
            client.cancel(futures)

    return local if client is None else remote


def _in_worker(fn: Any, *args: Any) -> Any:
    """Run `fn` on a worker with the file's chunks on the worker's threads."""
    worker = _current_worker()
    threads = worker.state.nthreads if worker is not None else (os.cpu_count() or 1)
    if worker is not None:
        _use_scratch()
    with _threaded_scheduler(threads):
        return fn(*args)


# --- engine -------------------------------------------------------------------------------
#: Up to this many cores, a batch without a cluster asked for runs in this process: worker
#: processes cost ~3 CPU seconds each to start and their cluster 2-2.5 s of wall time, more
#: than two files in one process lose to the GIL (scripts/bench_batch.py --engines).
IN_PROCESS_CORES = 2


def local_layout(threads: int | None = None) -> tuple[int, int]:
    """(files at once, threads per file) of a batch run in this process.

    By default one file per core, each file's chunks on one thread: reading, decompressing,
    deciding and compressing of different files overlap, and nothing waits for the slowest
    pass of one file.  With `threads` (``threads_per_worker``), one file at a time on that
    many threads.
    """
    if threads is not None:
        return 1, int(threads)
    return _cores(), 1


def _check_main_guard() -> None:
    """Refuse to start worker processes from a script's top level without a main guard.

    Worker processes start by importing the script that started them; code outside an
    ``if __name__ == "__main__":`` block would run the batch again in every worker (which
    then fails with "Nanny failed to start").  The call is found on the stack and its line
    located in the script's source.
    """
    import ast
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path) or os.path.basename(path) == "__main__.py":
        # An interactive session, python -c, a notebook, or a package's __main__.py (which
        # multiprocessing does not re-run): nothing is re-imported.
        return
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") != "__main__":
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or frame.f_code.co_name != "<module>":
        return  # called from a function: the function runs only when called
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return
    line = frame.f_lineno

    def is_guard(node: ast.AST) -> bool:
        t = getattr(node, "test", None)
        return (
            isinstance(node, ast.If)
            and isinstance(t, ast.Compare)
            and isinstance(t.left, ast.Name)
            and t.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in t.comparators)
        )

    for node in ast.walk(tree):
        if is_guard(node) and node.lineno <= line <= (node.end_lineno or node.lineno):
            return
    raise RuntimeError(
        f"{path}, line {line}: volbin.batch starts worker processes, which import this script "
        'and would run this line again; put the call under `if __name__ == "__main__":`, '
        'or run the batch in this process with scheduler="threads".'
    )


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _layout(workers: int | None, threads: int | None) -> tuple[int, int]:
    """Workers and threads per worker for a LocalCluster: workers x threads = cores.

    Up to 8 cores, workers of 2 threads: a worker process costs ~3 CPU seconds to start
    (it imports dask, nibabel and volbin) and two files in one process hardly
    contend for the GIL (scripts/bench_batch.py --engines).  Above, dask's own choice.
    """
    cores = _cores()
    for name, v in (("workers", workers), ("threads_per_worker", threads)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"`{name}` must be a positive int; got {v!r}.")
    if workers is None and threads is None:
        if cores > 8:
            from distributed.deploy.utils import nprocesses_nthreads

            return nprocesses_nthreads(cores)
        workers = max(1, cores // 2)
        return workers, max(1, cores // workers)
    if workers is None:
        n, t = max(1, cores // int(threads)), int(threads)  # type: ignore[arg-type]
    elif threads is None:
        n, t = int(workers), max(1, cores // int(workers))
    else:
        n, t = int(workers), int(threads)
    if n * t > MAX_THREADS_PER_CORE * cores:
        raise ValueError(
            f"`workers` x `threads_per_worker` = {n} x {t} = {n * t} threads on {cores} "
            f"core(s); at most {MAX_THREADS_PER_CORE * cores} ({MAX_THREADS_PER_CORE} per core) "
            "are allowed (more only thrash memory and starting them takes minutes): pass "
            "fewer --workers / --threads-per-worker."
        )
    return n, t


def runs_here(
    client: Any, scheduler: str | None, workers: int | None, threads_per_worker: int | None
) -> bool:
    """Whether a batch with these engine options runs in this process (see `_engine`)."""
    if client is not None:
        return False
    if scheduler is None and workers is None and threads_per_worker is None:
        return _cores() <= IN_PROCESS_CORES
    return scheduler in _LOCAL_SCHEDULERS


@contextlib.contextmanager
def _engine(
    client: Any,
    scheduler: str | None,
    workers: int | None,
    threads_per_worker: int | None,
    memory_limit: Any,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The dask client a batch submits to (None: run in this process), and a description.

    Without a client, a scheduler or a cluster size, files run in this process on threads when
    the machine has at most `IN_PROCESS_CORES` cores (see `local_layout`), else on a
    LocalCluster of worker processes.
    """
    if runs_here(client, scheduler, workers, threads_per_worker):
        at_once, threads = local_layout(threads_per_worker)
        yield None, {"kind": "local", "scheduler": "threads", "threads": threads, "files_at_once": at_once}
        return
    if client is None and scheduler is None:
        _check_main_guard()
    import logging

    from distributed import Client, LocalCluster

    cluster = None
    if client is not None:
        kind, own = "client", False
    elif scheduler is not None:
        kind, own = "scheduler", True
        try:
            _probe_scheduler(scheduler, CONNECT_TIMEOUT)
            client = Client(scheduler, set_as_default=False, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else "no answer"
            raise VolbinError(
                f"cannot reach a dask scheduler at {scheduler} within {CONNECT_TIMEOUT:g} s ({why}); "
                "check the address and that a dask scheduler is running there."
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


def _probe_scheduler(address: str, timeout: float) -> None:
    """Ask `address` for its identity; TimeoutError unless a dask scheduler answers in time.

    `distributed.Client` waits without a limit for the answer of a server that accepts
    connections but does not speak dask's protocol; this bounds the whole exchange.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect

    async def identity() -> Any:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    def run() -> Any:  # in a thread of its own: the caller may be inside an event loop
        return asyncio.run(asyncio.wait_for(identity(), timeout))

    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(run).result()
    if not (isinstance(reply, dict) and reply.get("type") == "Scheduler"):
        raise ValueError(f"the server there is not a dask scheduler (it answered {str(reply)[:60]!r})")


def _run(
    client: Any,
    jobs: list[tuple[str, str]],
    todo: list[int],
    recipe: dict[str, Any],
    options: dict[str, Any],
    retries: int,
    threads: int | None = None,
    files_at_once: int = 1,
    task: Callable[..., dict[str, Any]] = process_one,
) -> Iterator[tuple[int, FileResult]]:
    """Run the jobs in `todo`, yielding (index, result) as each finishes.

    ``task(input, output, recipe, **options)`` is the per-file task (`process_one`).  Tasks
    get absolute input paths (a worker's current folder is not this one); results name
    inputs as the user gave them.
    """

    def result(i: int, fields: dict[str, Any]) -> FileResult:
        return FileResult(**{**fields, "input": jobs[i][0]})

    if client is None:
        yield from _run_here(jobs, todo, recipe, options, threads, files_at_once, result, task)
        return
    from distributed import as_completed

    token = secrets.token_hex(4)
    futures = {
        client.submit(
            task,
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


def _run_here(
    jobs: list[tuple[str, str]],
    todo: list[int],
    recipe: dict[str, Any],
    options: dict[str, Any],
    threads: int | None,
    files_at_once: int,
    result: Any,
    task: Callable[..., dict[str, Any]] = process_one,
) -> Iterator[tuple[int, FileResult]]:
    """`_run` in this process: `files_at_once` files at a time on threads."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    options = {**options, "threads": threads, "files_at_once": files_at_once}

    def one(i: int) -> dict[str, Any]:
        return task(os.path.abspath(jobs[i][0]), jobs[i][1], recipe, **options)

    if files_at_once <= 1 or len(todo) <= 1:
        for i in todo:
            yield i, result(i, one(i))
        return
    pool = ThreadPoolExecutor(min(files_at_once, len(todo)), thread_name_prefix="volbin-batch")
    try:
        queue = iter(todo)
        running = {}
        for i in queue:  # at most files_at_once submitted: an interruption leaves the rest unstarted
            running[pool.submit(one, i)] = i
            if len(running) >= files_at_once:
                break
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                i = running.pop(fut)
                nxt = next(queue, None)
                if nxt is not None:
                    running[pool.submit(one, nxt)] = nxt
                yield i, result(i, fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
