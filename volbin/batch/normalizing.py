"""Normalising many volumes: `volbin.normalize` over inputs, on the batch engine.

`normalize` is the public ``volbin.normalize``: a volume in gives its normalisation out
(`volbin.normalize.normalize`); inputs (globs, list files, folders, paths) with `out_dir`
give one float32 output and sidecar per input, run by the batch engine (`run_batch`: output
names, up-to-date outputs skipped, failures reported, files in parallel on dask.distributed).
For ``method="nyul"`` without `landmarks` the standard scale is fitted first on the inputs
(or on `fit_on`), one task per file, saved to `save_landmarks`, and every file is then
standardised to it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import OutputFileError, VolbinDataError
from ..io import MAX_OUTPUT_BYTES
from ..recipe import NORMALIZE_OPTIONS, Recipe, normalize_options
from .engine import _engine, _tasks, run_file
from .inputs import expand_inputs

__all__ = ["fit_landmarks", "normalization_doc", "normalize", "normalize_one"]

#: Output names: ``sub-01_T1w.nii.gz`` -> ``sub-01_T1w_norm.nii.gz``.
SUFFIX = "_norm"


def normalization_doc(recipe: Recipe) -> dict[str, Any]:
    """The normalisation part of `recipe` as its sidecar records it (and resume checks it):
    ``normalize``, ``scope``, the mask and the options the method was given."""
    from ..io import to_jsonable

    assert recipe.normalize is not None
    names = ("normalize", "scope", "mask", *NORMALIZE_OPTIONS[recipe.normalize])
    d = recipe.to_dict()
    doc = {k: d[k] for k in names if d[k] is not None}
    return json.loads(json.dumps(to_jsonable(doc)))


def normalize_one(input: str, output: str, recipe: dict[str, Any], **options: Any) -> dict[str, Any]:
    """Normalise one file: the task a batch of `normalize` runs per input.

    `recipe` is a `normalization_doc`; `options` are `volbin.batch.process_one`'s.  The output
    is float32 with the input's header; its sidecar's ``normalize`` step holds the learnt
    parameters and the doc, so that an up-to-date output is skipped.
    """

    def job() -> tuple[dict[str, Any], Callable[[Any], Any]]:
        from ..intensity import normalized
        from ..masks import recipe_mask

        rec = Recipe.from_dict(recipe)
        doc = normalization_doc(rec)
        return doc, lambda vol: normalized(vol, rec, recipe_mask(rec, vol), record={"recipe": doc})

    return run_file(input, output, job, dtype="float32", **options)


def _nyul_file(
    path: str,
    mask: str | None,
    percentiles: Sequence[float],
    chunk_bytes: int | None,
    volume_axis: int | None,
) -> list[list[float]]:
    """One input's mapped Nyul landmarks (a task of `fit_landmarks`)."""
    from ..io import load
    from ..masks import resolve_mask
    from ..normalize import nyul_scales

    vol = load(path, chunk_bytes=chunk_bytes, volume_axis=volume_axis)
    m = resolve_mask(mask, vol)
    rows = nyul_scales(vol, None if m is None else m.data, percentiles=percentiles)
    return [[float(v) for v in row] for row in rows]


def fit_landmarks(
    paths: Sequence[str],
    mask: str | None = None,
    run: Callable[..., list[Any]] | None = None,
    chunk_bytes: int | None = None,
    volume_axis: int | None = None,
) -> Any:
    """The Nyul standard scale of `paths`: `volbin.fit_nyul` of them, one task per file.

    `run(fn, [args, ...])` runs the tasks (on a cluster, or in turn: the default).  Equal to
    ``fit_nyul([load(p) for p in paths], masks)`` bit for bit: each file's mapped landmarks
    are summed in input order.
    """
    from ..normalize import NYUL_PERCENTILES, nyul_from_scales

    if run is None:

        def run(fn: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
            return [fn(*args) for args in calls]

    parts = run(
        _nyul_file, [(os.path.abspath(p), mask, NYUL_PERCENTILES, chunk_bytes, volume_axis) for p in paths]
    )
    rows = [row for part in parts for row in part]
    return nyul_from_scales(rows, NYUL_PERCENTILES, (0.0, 100.0))


def _fitted_on(paths: Sequence[str], mask: str | None) -> dict[str, Any]:
    """What a landmarks file records of its training: the inputs' identities and the mask."""
    from ..io import input_identity

    items = []
    for p in paths:
        try:
            size, mtime_ns = input_identity(p)
        except OSError:
            size, mtime_ns = -1, -1
        items.append({"path": os.path.abspath(p), "size": size, "mtime_ns": mtime_ns})
    return {"inputs": items, "mask": mask}


def _saved_landmarks(path: str, fitted: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The landmarks of `path` if it was fitted on the same inputs (a re-run resumes); None
    when it does not exist or `force`.  Another file there is refused without `force`."""
    from ..recipe import nyul_landmarks

    if force or not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        saved = None
    if isinstance(saved, dict) and saved.get("fitted_on") == fitted:
        return nyul_landmarks(saved)
    raise ValueError(
        f"`save_landmarks` {path} exists and was not fitted on these inputs; pass force=True "
        "(CLI: --force) to fit and overwrite it, or give it as `landmarks` to apply it."
    )


def normalize(
    volume: Any,
    method: str,
    *,
    mask: Any = None,
    scope: str = "volume",
    volume_axis: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    save_landmarks: str | os.PathLike[str] | None = None,
    fit_on: Any = None,
    suffix: str = SUFFIX,
    ext: str | None = None,
    force: bool = False,
    keep_tree: bool = False,
    client: Any = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: int | str | None = None,
    scheduler: str | None = None,
    chunk_bytes: int | None = None,
    retries: int = 1,
    progress: bool | str | None = None,
    report: str | os.PathLike[str] | bool | None = None,
    verify: bool = False,
    allow_missing: bool = False,
    max_output_bytes: int | None = MAX_OUTPUT_BYTES,
    **options: Any,
) -> Any:
    """Normalise MRI intensities of one volume, or of many files into a folder.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) ndarray, dask array or Volume; or inputs
        One volume: normalised as `volbin.normalize.normalize` does (same kind out).  With
        `out_dir`: the inputs, as `volbin.batch` takes them (globs, list files, folders,
        paths).
    method : {'zscore', 'match', 'nyul', 'whitestripe', 'n4'}
    mask : optional
        Where the statistics are taken (by default the non-zero voxels).  For many inputs:
        a mask file on their common grid, or ``"nonzero"``.
    scope : {'volume', 'stack'}
    volume_axis : int, optional
    out_dir : str or path-like, optional
        Write ``<name>_norm<ext>`` (float32, with a sidecar of the learnt parameters) for each
        input into this folder, on the batch engine (see `volbin.batch` for `suffix`, `ext`,
        `force`, `keep_tree`, the cluster options, `retries`, `progress`, `report`,
        `verify`, `allow_missing` and `max_output_bytes`): outputs up to date are skipped, a
        file that fails is reported and the others go on.
    save_landmarks : str or path-like, optional
        ``method="nyul"`` without `landmarks`: write the standard scale fitted on the inputs
        (or `fit_on`) here, with the identities of the files it was fitted on.  A re-run
        reuses it when they are unchanged; another file there is refused without `force`.
    fit_on : optional
        ``method="nyul"`` without `landmarks`: fit the scale on these inputs (a subset, or
        other files) instead of all of them.
    **options
        The method's options (`volbin.normalize.normalize`); ``landmarks`` for ``nyul``
        (else it is fitted, with `out_dir`).

    Returns
    -------
    normalized : same kind as `volume`, float32; or BatchResult with `out_dir`

    Raises
    ------
    ValueError
        A bad method or option, an option of another method, batch options without
        `out_dir`, or no inputs.
    VolbinDataError
        As `volbin.normalize.normalize` (with one volume; with many, such a file fails and is
        reported).

    Examples
    --------
    >>> import os, tempfile, numpy as np, volbin
    >>> tmp = tempfile.mkdtemp()
    >>> for i in range(2):
    ...     _ = volbin.save(volbin.phantom((16, 18, 16), seed=i).intensity, f"{tmp}/sub-0{i}.nii")
    >>> res = volbin.normalize(f"{tmp}/*.nii", "nyul", out_dir=f"{tmp}/norm",
    ...                        save_landmarks=f"{tmp}/nyul.json", scheduler="threads", progress=False)
    >>> sorted(os.path.basename(f.output) for f in res.done)
    ['sub-00_norm.nii', 'sub-01_norm.nii']
    >>> one = volbin.normalize(volbin.load(f"{tmp}/sub-00.nii"), "nyul", landmarks=f"{tmp}/nyul.json")
    >>> bool(np.array_equal(one.compute(), volbin.load(f"{tmp}/norm/sub-00_norm.nii").compute()))
    True
    """
    if out_dir is None:
        batch_only = {
            "save_landmarks": save_landmarks,
            "fit_on": fit_on,
            "client": client,
            "scheduler": scheduler,
            "report": report,
        }
        given = [k for k, v in batch_only.items() if v is not None]
        if given:
            raise ValueError(f"`{given[0]}` needs `out_dir` (many inputs into a folder); got {given[0]}=...")
        from ..normalize import normalize as normalize_volume

        return normalize_volume(volume, method, mask=mask, scope=scope, volume_axis=volume_axis, **options)
    from ..io import write_json
    from . import run_batch

    if scope not in ("volume", "stack"):
        raise ValueError(f"`scope` must be one of volume, stack; got {scope!r}.")
    if mask is not None and not isinstance(mask, (str, os.PathLike)):
        raise TypeError(f"`mask` of many inputs must be a path or 'nonzero'; got {type(mask).__name__}.")
    for name in ("reference", "reference_mask"):
        if options.get(name) is not None and not isinstance(options[name], (str, os.PathLike)):
            raise TypeError(f"`{name}` of many inputs must be a path; got {type(options[name]).__name__}.")
    paths = expand_inputs(volume)
    needs_fit = method == "nyul" and options.get("landmarks") is None
    if not needs_fit and (save_landmarks is not None or fit_on is not None):
        name = "save_landmarks" if save_landmarks is not None else "fit_on"
        raise ValueError(f"`{name}` is for method='nyul' without `landmarks` (a fit); got method={method!r}.")
    normalize_options(method, options)  # checked before anything runs
    kw: dict[str, Any] = {
        "suffix": suffix,
        "ext": ext,
        "force": force,
        "keep_tree": keep_tree,
        "workers": workers,
        "threads_per_worker": threads_per_worker,
        "memory_limit": memory_limit,
        "chunk_bytes": chunk_bytes,
        "volume_axis": volume_axis,
        "retries": retries,
        "progress": progress,
        "report": report,
        "verify": verify,
        "allow_missing": allow_missing,
        "max_output_bytes": max_output_bytes,
    }

    def run(landmarks: Any, client: Any, scheduler: str | None) -> Any:
        extra = {} if landmarks is None else {"landmarks": landmarks}
        rec = Recipe(normalize=method, scope=scope, mask=mask, **options, **extra)
        doc = normalization_doc(rec)
        return run_batch(
            paths, out_dir, doc, doc, normalize_one, client=client, scheduler=scheduler, index=False, **kw
        )

    if not needs_fit:
        return run(None, client, scheduler)
    train = paths if fit_on is None else expand_inputs(fit_on)
    mask_path = None if mask is None else mask if mask == "nonzero" else os.path.abspath(os.fspath(mask))
    fitted = _fitted_on(train, mask_path)
    target = None if save_landmarks is None else os.path.abspath(os.fspath(save_landmarks))
    if target is not None and os.path.isdir(target):
        raise ValueError(f"`save_landmarks` {target} is a folder; give a file name.")
    saved = None if target is None else _saved_landmarks(target, fitted, force)
    if saved is not None:
        return run(saved, client, scheduler)
    with _engine(client, scheduler, workers, threads_per_worker, memory_limit) as (c, engine):
        tasks = _tasks(c, engine.get("threads", 1) * engine.get("files_at_once", 1), memory_limit)
        try:
            landmarks = fit_landmarks(train, mask_path, tasks, chunk_bytes, volume_axis)
        except VolbinDataError as exc:
            raise VolbinDataError(f"fitting the Nyul landmarks: {exc}") from exc
        record = landmarks.to_dict()
        if target is not None:
            try:
                write_json({**record, "fitted_on": fitted}, target)
            except OSError as exc:
                raise OutputFileError(f"{target}: cannot write the Nyul landmarks ({exc}).") from exc
        return run(record, c, "threads" if c is None else None)
