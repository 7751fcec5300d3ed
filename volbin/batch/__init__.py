"""Batch processing: many volumes to binary volumes on dask.distributed, resumable and bounded.

`batch` expands the inputs (globs, list files, folders, paths), derives one output name per
input, skips outputs whose sidecar already matches the recipe and the input, and runs one task
per remaining file on a dask.distributed cluster (a LocalCluster sized to the machine unless a
scheduler or client is given).  Each task loads, decides and writes its file on the worker that
runs it, with the file's chunks on that worker's threads.  A file that fails is reported and
skipped; the run ends with a summary table and a JSON report.

Inputs, output names and resume checks live in `inputs`, the per-file task and the cluster in
`engine`, results and the report in `results`; the command is `volbin.cli.batch`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from ..errors import OutputFileError
from ..io import MAX_OUTPUT_BYTES
from ..recipe import Recipe, merge
from .cohort import cohort_id, pooled_decision
from .engine import _engine, _run, _tasks, process_one
from .inputs import (
    IMAGE_EXTS,
    INDEX_NAME,
    REPORT_NAME,
    _check_ext,
    _clean_stray_temps,
    _folder_lock,
    _has_preview,
    _is_image,
    _output_state,
    _recipe_doc,
    expand_inputs,
    output_path,
)
from .inputs import LOCK_NAME as LOCK_NAME
from .results import BatchResult, FileResult, _now, _outcome, _Progress, _write_index, _write_report

__all__ = ["BatchResult", "FileResult", "batch", "expand_inputs", "output_path", "process_one"]


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
    preview: bool = False,
    index: str | os.PathLike[str] | bool | None = None,
    verify: bool = False,
    allow_missing: bool = False,
    max_output_bytes: int | None = MAX_OUTPUT_BYTES,
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
        What to do.  `recipe_options` override its fields (``method``, ``scope``, ...) as
        `volbin.recipe.merge` says; without it they build the recipe.
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
        Size of the LocalCluster of worker processes started when neither `client` nor
        `scheduler` is given: workers x threads = the cores this process may use by default,
        with workers of 2 threads up to 8 cores.  Given none of `client`, `scheduler`,
        `workers` and `threads_per_worker`, a machine of at most 2 cores runs the batch in
        this process instead (as ``scheduler="threads"``), where it is faster; a script that
        starts worker processes from its top level must do so under
        ``if __name__ == "__main__":`` (workers import the script), and is told so if not.
    memory_limit : int or str, optional
        Memory limit of each worker of that LocalCluster (``"4GB"``); default: the machine's
        memory shared between workers.  Input chunks are sized from each worker's limit.
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:8786``) to join, or ``"threads"``
        to run in this process on threads: one file per core at a time, each on one thread
        (with `threads_per_worker`: one file at a time on that many threads).
    chunk_bytes : int, optional
        Input chunk size in bytes; overrides the size chosen from the memory limit.
    volume_axis : int, optional
        Volume axis of 4D ``.npy``/zarr inputs (see `volbin.io.load`).
    **recipe_options
        `Recipe` fields.  ``scope="cohort"`` decides one threshold from the pooled exact
        histogram of every input (per-file ranges, then per-file histograms over the common
        range, each pass one task per file; summed, decided once) and applies it to each
        file; every sidecar records it with the cohort's identity, and a changed input
        makes every output stale.  ``threshold_from=SIDECAR`` applies an earlier output's
        raw thresholds to every input.
    retries : int
        Times a task that raises an unexpected error is retried.  A worker that dies
        (killed, out of memory) has its file rescheduled by dask in any case, up to
        ``distributed.scheduler.allowed-failures`` times.
    progress : bool or str, optional
        ``"bar"`` (True): a progress bar over files; ``"log"``: a line per finished file
        (to standard error); False: nothing.  Default: the bar on a terminal, lines otherwise.
    report : str, path-like or bool, optional
        Where to write the JSON run report (None or True: ``<out_dir>/volbin-batch-report.json``);
        False writes none.  Its folder must exist and be writable (checked before anything
        runs).
    preview : bool
        Also draw a preview PNG of every output beside it (``sub-01_T1w_mask.png``: the
        input's middle slices with the mask's outline, and the histogram with the
        thresholds), named in the output's sidecar, as ``volbin binarize --preview`` does.
        Each preview is drawn in the file's task, on its worker; a preview that fails makes
        its file ``failed`` (the mask stays).  An up-to-date output without its preview gets
        only the preview.  Without `preview`, a redone output's old preview is removed.
    index : str, path-like or bool, optional
        Where to write the HTML index (None or True: ``<out_dir>/index.html``); False writes
        none.  One row per input, with its preview (when there is one), thresholds in raw
        units and rescaled, foreground voxels and mm^3, status and error; links are relative,
        and nothing is fetched from the network.  It is written with or without `preview`
        (rows without pictures still compare a cohort), at the end, atomically, also when
        files failed or the batch was interrupted.  An existing file there that volbin did
        not write is replaced only with `force`.
    verify : bool
        Hash every existing output against its sidecar's SHA-256 before skipping it (by
        default only outputs up to 64 MiB are hashed; every output's size is compared).
    allow_missing : bool
        Read chunks missing from zarr inputs as the store's fill value (see
        `volbin.io.load`).
    max_output_bytes : int or None
        Largest output written (see `volbin.io.save`); None for no limit.

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
    name; an image whose sidecar is still marked pending is recognised when it is the file
    the sidecar names.  The next run removes io.save's temporary files (``*.tmp``) beside
    the outputs and does what is left.  An output is skipped only if its size (and SHA-256,
    up to 64 MiB or with `verify`) matches its sidecar.  Two batches must not write the
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
    recipe = merge(recipe, recipe_options)
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"`retries` must be a non-negative int; got {retries!r}.")
    out_root = os.path.abspath(os.path.expanduser(os.fspath(out_dir)))
    if not isinstance(preview, bool):
        raise ValueError(f"`preview` must be True or False; got {preview!r}.")
    jobs, results = _plan(expand_inputs(inputs), out_root, suffix, ext, keep_tree, preview)
    try:
        os.makedirs(out_root, exist_ok=True)
        for folder in {os.path.dirname(o) for _, o in jobs if o}:
            os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OutputFileError(f"{out_root}: cannot create the output folder ({exc}).") from exc
    report_path = None
    if report is not False:
        given = report if isinstance(report, (str, os.PathLike)) else None  # None or True
        report_path = os.path.abspath(
            os.path.expanduser(os.fspath(given or os.path.join(out_root, REPORT_NAME)))
        )
        _check_report(report_path)
    index_path = None
    if index is not False:
        given = index if isinstance(index, (str, os.PathLike)) else None
        index_path = os.path.abspath(
            os.path.expanduser(os.fspath(given or os.path.join(out_root, INDEX_NAME)))
        )
        _check_index(index_path, force)
    recipe_dict = recipe.to_dict()
    doc = _recipe_doc(recipe)
    pooled = recipe.scope == "cohort" and recipe.threshold_from is None
    cid = cohort_id([inp for inp, out in jobs if out], recipe) if pooled else None

    with _folder_lock(out_root):
        folders = {os.path.dirname(o) for _, o in jobs if o}
        _clean_stray_temps(folders, suffix)
        todo = []
        for i, (inp, out) in enumerate(jobs):
            if results[i] is not None:
                continue
            if not os.path.exists(inp):
                results[i] = FileResult(inp, out, "failed", reason=f"{inp}: no such file")
            elif (
                not force
                and _output_state(inp, out, doc, volume_axis, cid, verify)[0] == "current"
                and (not preview or _has_preview(out))
            ):
                results[i] = FileResult(inp, out, "skipped", **_outcome(out))
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
                    "verify": verify,
                    "allow_missing": allow_missing,
                    "max_output_bytes": max_output_bytes,
                    "preview": preview,
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
                    if pooled:
                        prog.say(f"cohort: pooling the histograms of {len(jobs)} inputs")
                        inputs = [os.path.abspath(inp) for inp, out in jobs if out]
                        options["cohort"] = pooled_decision(
                            inputs,
                            recipe,
                            _tasks(
                                c, engine.get("threads", 1) * engine.get("files_at_once", 1), memory_limit
                            ),
                            chunk_bytes,
                            volume_axis,
                        )
                        options["cohort"]["record"]["id"] = cid
                    runs = _run(
                        c, jobs, todo, recipe_dict, options, retries, engine.get("threads"),
                        engine.get("files_at_once", 1),
                    )  # fmt: skip
                    for i, r in runs:
                        results[i] = r
                        prog.file(r)
            finished = True
        finally:
            prog.close()
            if not finished:  # files written before the interruption whose results never came back
                for i, r in enumerate(results):
                    if r is None and _output_state(*jobs[i], doc, volume_axis)[0] == "current":
                        results[i] = FileResult(
                            *jobs[i], "done", note="finished before the interruption", **_outcome(jobs[i][1])
                        )
            files = [r or FileResult(*jobs[i], "pending") for i, r in enumerate(results)]
            res = BatchResult(
                files, out_root, time.perf_counter() - t0, report_path, engine, not finished, index_path
            )
            if report_path is not None:
                _write_report(res, report_path, started, recipe_dict)
            if index_path is not None:
                _write_index(res, index_path, recipe)
        if todo:  # temporary files of tasks retried after their worker died
            _clean_stray_temps(folders, suffix)
    return res


def _plan(
    paths: list[str], out_root: str, suffix: str, ext: str | None, keep_tree: bool, preview: bool = False
) -> tuple[list[tuple[str, str]], list[FileResult | None]]:
    """(input, output) for every input and results pre-filled for inputs that cannot run."""
    from ..io import sidecar_path
    from ..preview import preview_path

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
        if preview:  # x_mask.nii.gz and x_mask.npy have one preview, x_mask.png
            owners.setdefault(str(preview_path(out)), []).append(p)
        jobs.append((p, out))
        results.append(None)
    clashes = {k: v for k, v in owners.items() if len(v) > 1}
    if clashes:
        lines = [f"  {os.path.splitext(k)[0]}.*: {', '.join(v)}" for k, v in list(clashes.items())[:10]]
        raise ValueError(
            f"{len(clashes)} outputs would be written by more than one input:\n"
            + "\n".join(lines)
            + "\nrename the inputs, or, for inputs in different folders, pass keep_tree=True "
            "(CLI: --keep-tree) to mirror their folders in the output folder."
        )
    return jobs, results


def _check_report(path: str) -> None:
    """Fail now, not after every file ran, if the report cannot be written at `path`."""
    _check_writable(path, "batch report", "--report")


def _check_index(path: str, force: bool) -> None:
    """Fail now if the HTML index cannot be written at `path`, or would replace a page
    that volbin did not write (unless `force`)."""
    from ..report_html import is_volbin_index

    _check_writable(path, "batch index", "--index")
    if os.path.lexists(path) and not force and not is_volbin_index(path):
        raise OutputFileError(
            f"{path} exists and volbin did not write it; remove it, pass another --index PATH, "
            "or pass --force (force=True) to replace it."
        )


def _check_writable(path: str, what: str, flag: str) -> None:
    from ..io import temp_path

    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise OutputFileError(f"{path}: the {what} path is a folder; pass a file name.")
    if not os.path.isdir(folder):
        raise OutputFileError(
            f"{path}: cannot write the {what}: {folder} is not an existing folder; create "
            f"it or pass another {flag}."
        )
    probe = temp_path(path)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OutputFileError(
            f"{path}: cannot write the {what} there ({exc.strerror or exc}); pass another {flag}."
        ) from None
    os.close(fd)
    os.unlink(probe)


def _bytes(size: int | str | None) -> int | None:
    if size is None or isinstance(size, int):
        return size
    from dask.utils import parse_bytes

    return int(parse_bytes(size))
