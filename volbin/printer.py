"""Bitmap stacks for voxel-wise 3D printers: one 1-bit PNG per layer, streamed and resumable.

`export_slices` resamples a volume onto the printer's grid (``25.4 / dpi`` mm across,
the layer thickness up), error-diffuses every layer to 0/1 and writes each as a PNG with its
DPI, plus ``manifest.json``.  It holds a few layers at a time: each layer is interpolated
from the few source slices around it (kept in a slab cache) and written by a background
thread.  A run that stops leaves only whole files; running it again writes only the missing
layers, with the same bytes (volumetric diffusion restarts from a saved carry buffer).
Label maps give one stack per label, every printer voxel holding at most one material.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from . import _dither_kernels as D
from . import _kernels as K
from .errors import OutputFileError, VolbinDataError
from .recipe import Recipe
from .resample import VoxelMap, resample_block
from .volume import Volume, as_volume

__all__ = ["ExportResult", "PrintGrid", "export_slices", "print_grid"]

MANIFEST = "manifest.json"
STATE_DIR = ".volbin-export"
FORMAT = "volbin-slices/1"
_RAS = "RAS"
_OPPOSITE = {"R": "L", "A": "P", "S": "I", "L": "R", "P": "A", "I": "S"}
_LAYER_FILE = re.compile(r"^layer_\d+\.png$")
#: Source slices are read and rescaled in slabs of this many bytes (float32): less than one
#: printer layer of memory, and read rarely (at 0.027 mm, each 1 mm slice serves 37 layers).
SLAB_BYTES = 8 * 2**20


# --- the printer's grid ------------------------------------------------------------------------
@dataclass(frozen=True)
class PrintGrid:
    """The printer's voxel grid over a volume.

    Attributes
    ----------
    shape : (width, height, layers)
        Pixels per row, rows per layer, and layers.
    pitch : (float, float, float)
        Pixel width, pixel height and layer thickness, in mm.
    axes : str
        Anatomical direction of the build's x (image right), y (image up) and z (layer
        order), e.g. ``"RAS"``.
    affine : (4, 4) ndarray
        (column, row, layer) index of an output pixel -> world mm, with row 0 the top row
        of the PNG.
    vmap : VoxelMap
        (row, column, layer) -> source voxel coordinate.
    """

    shape: tuple[int, int, int]
    pitch: tuple[float, float, float]
    axes: str
    affine: np.ndarray
    vmap: VoxelMap
    z_axis: int  # source voxel axis along the build's z

    def record(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "pitch_mm": list(self.pitch),
            "axes": self.axes,
            "affine": np.round(self.affine, 12).tolist(),
            "extent_mm": [n * p for n, p in zip(self.shape, self.pitch, strict=True)],
        }


def _parse_up(up: str) -> tuple[tuple[str, str, str], list[np.ndarray]]:
    """Directions of the build's x, y, z (right-handed, so prints are never mirrored)."""
    if not isinstance(up, str) or up.upper() not in _OPPOSITE:
        raise ValueError(f"`up` must be one of S, I, A, P, R, L; got {up!r}.")
    up = up.upper()
    vec = {c: np.eye(3)[i] for i, c in enumerate(_RAS)}
    vec.update({_OPPOSITE[c]: -vec[c] for c in _RAS})
    z = vec[up]
    x_code = next(c for c in _RAS if c not in (up, _OPPOSITE[up]))
    x = vec[x_code]
    y = np.cross(z, x)
    y_code = next(c for c, v in vec.items() if np.array_equal(v, y))
    return (x_code, y_code, up), [x, y, z]


def print_grid(
    volume: Any,
    dpi: float | Sequence[float] = (600, 300),
    layer: float = 0.027,
    *,
    up: str = "S",
    order: int = 1,
) -> PrintGrid:
    """The printer grid of a volume: pitches from the DPI and layer, axes from its affine.

    Parameters
    ----------
    volume : Volume or array
        The source; its affine gives its orientation and voxel sizes (identity for arrays).
    dpi : float or (float, float)
        Printer resolution along the build's x and y, in dots per inch.
    layer : float
        Layer thickness in mm.
    up : {'S', 'I', 'A', 'P', 'R', 'L'}
        Anatomical direction printed upwards, along the build's z (default superior).
    order : int
        Interpolation order of the resampling.

    Returns
    -------
    PrintGrid

    Raises
    ------
    ValueError
        A non-positive DPI or layer thickness, or a bad `up`.

    Notes
    -----
    The build axes follow the volume's voxel axes, each matched to the anatomical direction
    it runs closest to (``nibabel.io_orientation``): for images stored in RAS-like
    orientations the build's x, y, z are the world R, A, S axes; for oblique images they
    are the image's own axes, so nothing is rotated by interpolation.  x runs to the right
    of the image, y up (PNG rows go from the top, the largest y), z from the first layer to
    the last; the frame is right-handed, so the print is a proper copy, never a mirror
    image.  With ``up='S'`` a layer is an axial slice seen from above, R to the right and A
    up.  The grid starts at the outer face of the volume's first voxel along each axis and
    has ``ceil(extent / pitch)`` pixels or layers; pixels whose centre lies beyond the
    volume's extent are empty.
    """
    import nibabel as nib

    vol, _ = as_volume(volume)
    d: tuple[Any, ...] = (dpi, dpi) if np.ndim(dpi) == 0 else tuple(dpi)  # type: ignore[arg-type]
    if len(d) != 2 or not all(
        isinstance(v, (int, float, np.number)) and math.isfinite(v) and v > 0 for v in d
    ):
        raise ValueError(f"`dpi` must be a positive number or two of them (x, y); got {dpi!r}.")
    if not (isinstance(layer, (int, float, np.number)) and math.isfinite(layer) and layer > 0):
        raise ValueError(f"`layer` must be a positive thickness in mm; got {layer!r}.")
    codes, _ = _parse_up(up)
    pitch = (25.4 / float(d[0]), 25.4 / float(d[1]), float(layer))
    affine = vol.affine
    ornt = nib.io_orientation(affine)  # per voxel axis: (world axis, +1/-1)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    n_src = vol.spatial_shape
    build = []  # per build axis: (voxel axis, sign of the voxel index along it)
    for code in codes:
        w = _RAS.index(code) if code in _RAS else _RAS.index(_OPPOSITE[code])
        s = 1.0 if code in _RAS else -1.0
        a = int(np.flatnonzero(ornt[:, 0] == w)[0])
        build.append((a, s * float(ornt[a, 1])))
    counts = [
        max(1, math.ceil(n_src[a] * zooms[a] / p - 1e-9)) for (a, _), p in zip(build, pitch, strict=True)
    ]
    nx, ny, nz = counts
    # Output axes of the map: (row, column, layer); row r is build y index ny - 1 - r.
    matrix = np.zeros((3, 3))
    offset = np.zeros(3)
    for out_axis, b, flip in ((0, 1, True), (1, 0, False), (2, 2, False)):
        a, sign = build[b]
        step = pitch[b] / zooms[a]  # voxels per output pixel
        n_out = counts[b]
        # position along the build axis, in voxels from the lower face: (beta + 0.5) * step
        m, c0 = (-step, (n_out - 0.5) * step) if flip else (step, 0.5 * step)
        if sign > 0:
            matrix[a, out_axis], offset[a] = m, c0 - 0.5
        else:
            matrix[a, out_axis], offset[a] = -m, n_src[a] - 0.5 - c0
    vmap = VoxelMap(matrix, offset, n_src, (ny, nx, nz), order, 0.0, axis_order=(2, 1, 0))
    to_vox = np.eye(4)
    to_vox[:3, :3] = matrix[:, [1, 0, 2]]  # (column, row, layer) -> voxel
    to_vox[:3, 3] = offset
    return PrintGrid((nx, ny, nz), pitch, "".join(codes), affine @ to_vox, vmap, build[2][0])


# --- the source, a slab at a time --------------------------------------------------------------
class _Slabs:
    """Source slices along the build's z axis, read and prepared a slab at a time."""

    def __init__(self, data: da.Array, axis: int, prepare: Any, slab_bytes: int) -> None:
        self.data, self.axis, self.prepare = data, axis, prepare
        n = data.shape[axis]
        per_slice = max(1, data.size // max(n, 1)) * 4
        self.depth = max(1, slab_bytes // per_slice)
        self.lo = self.hi = 0
        self.block: np.ndarray | None = None

    def get(self, lo: int, hi: int, rising: bool) -> np.ndarray:
        if self.block is None or lo < self.lo or hi > self.hi:
            n = self.data.shape[self.axis]
            depth = max(self.depth, hi - lo)
            a, b = (lo, min(n, lo + depth)) if rising else (max(0, hi - depth), hi)
            sel: list[Any] = [slice(None)] * self.data.ndim
            sel[self.axis] = slice(a, b)
            self.block = None  # let the old slab go before reading the next
            raw = np.asarray(self.data[tuple(sel)].compute())
            loc = [(0, s) for s in self.data.shape]
            loc[self.axis] = (a, b)
            self.block, self.lo, self.hi = self.prepare(raw, loc), a, b
        sel = [slice(None)] * self.block.ndim
        sel[self.axis] = slice(lo - self.lo, hi - self.lo)
        return self.block[tuple(sel)]


# --- files -------------------------------------------------------------------------------------
def _write_png(path: Path, packed: bytes, size: tuple[int, int], dpi: tuple[float, float]) -> None:
    """Write a packed 1-bit image atomically: a temporary name, fsync, then rename."""
    from PIL import Image

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        img = Image.frombytes("1", size, packed)
        with open(tmp, "wb") as f:
            img.save(f, format="PNG", dpi=dpi)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _png_density(path: Path) -> float:
    from PIL import Image

    with Image.open(path) as img:
        a = np.asarray(img)
    return float(np.count_nonzero(a)) / max(a.size, 1)


def _write_json(obj: Any, path: Path) -> None:
    from .io import to_jsonable

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(to_jsonable(obj), f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _lock(state: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputFileError(
                f"{state.parent}: another volbin export is writing to this folder; wait for it "
                "to finish or choose another folder."
            ) from None
        except OSError:  # file systems without locks
            pass
        yield
    finally:
        os.close(fd)


def _clear(out: Path) -> None:
    """Remove what an export wrote in `out` (and nothing else)."""
    for e in list(os.scandir(out)):
        p = Path(e.path)
        if e.name == STATE_DIR:  # all but the lock, which this run holds
            for s in os.scandir(p):
                if s.name != "lock":
                    shutil.rmtree(s.path, ignore_errors=True) if s.is_dir() else os.unlink(s.path)
        elif e.name == MANIFEST:
            p.unlink()
        elif e.is_dir() and e.name.startswith("label_"):
            shutil.rmtree(p, ignore_errors=True)
        elif _LAYER_FILE.match(e.name) or (e.name.startswith(".layer_") and e.name.endswith(".tmp")):
            p.unlink()


def _clean_temps(folders: Sequence[Path]) -> None:
    for folder in folders:
        if folder.is_dir():
            for e in os.scandir(folder):
                if e.name.startswith(".") and e.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)


def _sha256(data: da.Array) -> str:
    """Hash of the values in Fortran order, whatever the chunking."""
    h = hashlib.sha256(f"{data.dtype.str}{tuple(data.shape)}".encode())
    bounds = np.cumsum((0, *data.chunks[-1]))
    for lo, hi in itertools.pairwise(bounds):
        block = np.asarray(data[..., int(lo) : int(hi)].compute())
        h.update(block.tobytes(order="F"))
    return h.hexdigest()


# --- the export --------------------------------------------------------------------------------
@dataclass
class ExportResult:
    """What `export_slices` did.

    Attributes
    ----------
    out_dir : Path
        The folder of the stack (or of one folder per label).
    manifest : dict
        The contents of ``manifest.json``.
    written : list of int
        Layers written by this run (others were already there).
    seconds : float
        Wall time of the layer loop.
    """

    out_dir: Path
    manifest: dict[str, Any]
    written: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"


def _layer_range(layers: Any, n: int) -> range:
    if layers is None:
        return range(n)
    if isinstance(layers, slice):
        return range(n)[layers]
    if isinstance(layers, range):
        r = layers
    else:
        try:
            a, b = layers
        except (TypeError, ValueError):
            raise ValueError(f"`layers` must be a range, a slice or (start, stop); got {layers!r}.") from None
        r = range(0 if a is None else int(a), n if b is None else int(b))
    if r.step != 1 or r.start < 0 or r.stop > n or r.start > r.stop:
        raise ValueError(f"`layers` must be a contiguous range within 0..{n}; got {layers!r}.")
    return r


def _label_values(data: da.Array) -> list[int]:
    if not (
        np.issubdtype(data.dtype, np.integer)
        or data.dtype == np.bool_
        or np.issubdtype(data.dtype, np.floating)
    ):
        raise VolbinDataError(f"a label map must hold integers; got {data.dtype} data.")
    values = np.asarray(da.unique(data).compute())
    if np.issubdtype(values.dtype, np.floating) and not (
        np.isfinite(values).all() and (values == np.round(values)).all()
    ):
        raise VolbinDataError(
            "a label map must hold integers; this volume has fractional or non-finite values "
            "(pass a grey-level volume without `labels`)."
        )
    return [int(v) for v in values if v != 0]


def export_slices(
    volume: Any,
    out_dir: str | os.PathLike[str],
    *,
    dpi: float | Sequence[float] = (600, 300),
    layer: float = 0.027,
    kernel: Any = None,
    mode: str = "2d",
    labels: bool = False,
    recipe: Recipe | None = None,
    up: str = "S",
    order: int = 1,
    layers: Any = None,
    volume_index: int | None = None,
    force: bool = False,
    checkpoint_every: int = 64,
    keep_checkpoints: bool = False,
    chunk_bytes: int | None = None,
    progress: bool | None = None,
    **options: Any,
) -> ExportResult:
    """Write a volume as a stack of 1-bit PNG layers for a bitmap 3D printer.

    Parameters
    ----------
    volume : path, Volume or (X, Y, Z[, T]) array
        Grey levels (rescaled by `recipe`), or an integer label map with ``labels=True``.
    out_dir : path
        Folder of the stack, created if missing: ``layer_00000.png``, ... (one folder
        ``label_<value>`` per label with `labels`) and ``manifest.json``.
    dpi : float or (float, float)
        Printer resolution along x and y; the pixel pitch is ``25.4 / dpi`` mm.
    layer : float
        Layer thickness in mm.
    kernel : str or array_like, optional
        Error-diffusion kernel (`volbin._dither_kernels.KERNELS`; default the recipe's,
        Floyd-Steinberg).
    mode : {'2d', '3d'}
        ``2d`` diffuses every layer on its own; ``3d`` also sends error into the next layer
        (`volbin._dither_kernels.diffuse_3d`), which renders grey levels seen through the
        layers with less noise.
    labels : bool
        Treat `volume` as a label map (0 = background): one stack per label, not dithered.
    recipe : Recipe, optional
        Rescale and dithering options (rescale, percentiles, value_range, curve, gamma,
        serpentine, jitter, seed); `options` may give them one by one instead.
    up : {'S', 'I', 'A', 'P', 'R', 'L'}
        Anatomical direction along the build's z (see `print_grid`).
    order : int
        Interpolation order of grey levels (label fractions are always linear).
    layers : range, slice or (start, stop), optional
        Export only these layers (the manifest says ``partial``); all by default.
    volume_index : int, optional
        The volume to print from a 4D stack.
    force : bool
        Start over in a folder that holds an export with other settings (or to redo one).
    checkpoint_every : int
        With ``mode='3d'``, save the carried error every this many layers, so that a
        stopped run resumes from the last one.
    keep_checkpoints : bool
        Keep the last checkpoint when the stack is complete (to re-make deleted layers
        quickly).
    chunk_bytes : int, optional
        Size of the source slabs read at a time (default `SLAB_BYTES`, 8 MiB).
    progress : bool, optional
        Show a progress bar (default: when standard error is a terminal).
    **options
        `Recipe` fields.

    Returns
    -------
    ExportResult

    Raises
    ------
    OutputFileError
        `out_dir` holds an export with other settings (pass ``force=True``), or another
        export is writing to it.
    VolbinDataError
        A 4D stack without `volume_index`, or a label map that does not hold integers.
    ValueError
        A bad DPI, layer thickness, mode, kernel or option.

    Notes
    -----
    Memory: a few layers (the interpolated grey layer in float32, the 0/1 layer, with
    ``3d`` the two carry buffers, and up to two packed layers waiting to be written) plus a
    source slab of `chunk_bytes`; it does not grow with the number of layers.

    Grey levels: the volume is rescaled to [0, 1] as `recipe` says (min-max by default),
    NaN counted as 0, then interpolated onto the printer grid (`print_grid`), then
    diffused with threshold 0.5, so each layer's density follows its mean grey level.  In a
    PNG, white (1) is material.

    Labels: each label's mask is interpolated linearly as a fraction, and every printer
    voxel takes the label of the largest fraction, background (one minus their sum)
    included, ties going to the background and then to the smaller label.  Materials
    therefore never overlap, and their boundaries are the smooth 50 % surfaces of the
    partial-volume masks instead of the source's voxel steps.  (Dithering each fraction
    on its own would let two materials claim one voxel.)

    Resuming: every file is written to a temporary name and renamed, so a file under a
    final name is whole.  ``manifest.json`` records the settings, the grid and a hash of
    the input; a run in a folder whose manifest matches writes only the layers that are
    missing.  With ``3d`` the error carried between layers makes each layer depend on all
    below it, so the carry is saved (``.volbin-export/carry_<layer>.npy``, float32, exact)
    every `checkpoint_every` layers and a resumed run restarts from the last checkpoint at
    or below the first missing layer (from layer 0 if there is none), recomputing the
    layers in between without rewriting them; the bytes are those of an uninterrupted run.
    """
    from .io import load
    from .rescale import fit_transform

    if mode not in ("2d", "3d"):
        raise ValueError(f"`mode` must be '2d' or '3d'; got {mode!r}.")
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise ValueError(f"`checkpoint_every` must be a positive int; got {checkpoint_every!r}.")
    if labels and mode == "3d":
        raise ValueError("`mode='3d'` applies to grey levels; label stacks are not dithered.")
    recipe = (recipe or Recipe()).replace(**options) if options else (recipe or Recipe())
    if kernel is not None:
        recipe = recipe.replace(kernel=kernel)
    recipe = recipe.replace(method="dither", threshold=None, upsample=None)
    if not labels:
        (D.diffusion_kernel_3d if mode == "3d" else D.diffusion_kernel)(recipe.kernel)

    if isinstance(volume, (str, os.PathLike)):
        vol = load(volume, chunk_bytes=chunk_bytes)
    else:
        vol, _ = as_volume(volume)
    if vol.ndim == 4:
        if volume_index is None and vol.n_volumes != 1:
            raise VolbinDataError(
                f"the input holds {vol.n_volumes} volumes; choose one with `volume_index` "
                "(CLI: --volume-index)."
            )
        t = int(volume_index or 0)
        if not 0 <= t < vol.n_volumes:
            raise ValueError(f"`volume_index` must be in [0, {vol.n_volumes}); got {volume_index}.")
        data = da.take(vol.data, t, axis=vol.volume_axis)
        vol = Volume(data, affine=vol.affine, header=None, source=vol.source, steps=vol.steps)
    grid = print_grid(vol, dpi, layer, up=up, order=1 if labels else order)
    dpi2 = (25.4 / grid.pitch[0], 25.4 / grid.pitch[1])
    nz = grid.shape[2]
    todo_range = _layer_range(layers, nz)

    if labels:
        values = _label_values(vol.data)
        transform = None
    else:
        values = []
        transform = fit_transform(vol, vol.grouping(recipe.scope, recipe.axis), recipe)
    settings: dict[str, Any] = {
        "format": FORMAT,
        "volbin_version": _version(),
        "dpi": list(dpi2),
        "layer_mm": grid.pitch[2],
        "up": grid.axes[2],
        "mode": None if labels else mode,
        "order": grid.vmap.order,
        "labels": values if labels else None,
        "recipe": None if labels else recipe.to_dict(),
        "rescale": None if transform is None else transform.record(),
        "grid": grid.record(),
        "input": {"sha256": _sha256(vol.data), "shape": list(vol.shape), "dtype": str(vol.dtype)},
    }
    settings = json.loads(json.dumps(_jsonable(settings)))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_DIR
    state.mkdir(exist_ok=True)
    width = max(5, len(str(nz - 1)))
    names = [f"layer_{k:0{width}d}.png" for k in range(nz)]
    folders = [out / f"label_{v}" for v in values] if labels else [out]
    with _lock(state):
        manifest_path = out / MANIFEST
        old = None
        if manifest_path.exists():
            with contextlib.suppress(OSError, ValueError):
                old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if (
            force
            or (old is not None and old.get("settings") != settings)
            or (old is None and any(_LAYER_FILE.match(n) for n in os.listdir(out)))
        ):
            if not force:
                what = _differences(old.get("settings", {}) if old else {}, settings)
                raise OutputFileError(
                    f"{out} holds a slice export with other settings ({what}); pass "
                    "force=True (CLI: --force) to replace it, or choose another folder."
                )
            _clear(out)
            state.mkdir(exist_ok=True)
        for f in folders:
            f.mkdir(exist_ok=True)
        _clean_temps([out, state, *folders])
        log_path = state / "densities.jsonl"
        records = _read_log(log_path)
        head = {"settings": settings, "input_source": vol.source, "status": "running"}
        _write_json({**head, "layers": []}, manifest_path)

        def listing() -> list[set[str]]:
            return [set(os.listdir(f)) for f in folders]

        def present(files: list[set[str]]) -> list[bool]:
            return [all(n in f for f in files) for n in names]

        done = present(listing())
        todo = [k for k in todo_range if not done[k]]
        t0 = time.perf_counter()
        written: list[int] = []
        if todo:
            run = _Run(
                vol,
                grid,
                transform,
                values,
                recipe,
                mode,
                folders,
                names,
                dpi2,
                log_path,
                records,
                state,
                checkpoint_every,
                chunk_bytes,
            )
            written = run.go(todo, progress)
        seconds = time.perf_counter() - t0
        done = present(listing())
        complete = all(done)
        if complete and not keep_checkpoints:
            for p in state.glob("carry_*.npy"):
                p.unlink()
        manifest = {
            **head,
            "status": "complete" if complete else "partial",
            **_summary(grid, settings, folders, names, values, records, done),
        }
        _write_json(manifest, manifest_path)
    return ExportResult(out, json.loads(json.dumps(_jsonable(manifest))), written, seconds)


def _version() -> str:
    from .io import _version as v

    return v()


def _jsonable(obj: Any) -> Any:
    from .io import to_jsonable

    return to_jsonable(obj)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not old:
        return "no manifest"
    return "differs in " + ", ".join(keys)


def _read_log(path: Path) -> dict[int, dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                records[int(r["layer"])] = r
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a stopped run
    return records


def _summary(
    grid: PrintGrid,
    settings: dict[str, Any],
    folders: list[Path],
    names: list[str],
    values: list[int],
    records: dict[int, dict[str, Any]],
    done: list[bool],
) -> dict[str, Any]:
    rows = []
    for k, name in enumerate(names):
        if not done[k]:
            continue
        r = records.get(k)
        if values:
            files = {str(v): f"{f.name}/{name}" for v, f in zip(values, folders, strict=True)}
            if r is None:
                r = {
                    "density": {str(v): _png_density(f / name) for v, f in zip(values, folders, strict=True)},
                    "fraction": None,
                }
            rows.append({"index": k, "files": files, "density": r["density"], "fraction": r.get("fraction")})
        else:
            if r is None:
                r = {"density": _png_density(folders[0] / name), "grey": None}
            rows.append({"index": k, "file": name, "density": r["density"], "grey": r.get("grey")})
    out: dict[str, Any] = {
        "layer_count": grid.shape[2],
        "written": len(rows),
        "width": grid.shape[0],
        "height": grid.shape[1],
        "dpi": settings["dpi"],
        "pitch_mm": list(grid.pitch),
        "layers": rows,
    }
    if values:
        out["label_folders"] = {str(v): f.name for v, f in zip(values, folders, strict=True)}
    return out


class _Run:
    """One pass over the layers still to write."""

    def __init__(
        self,
        vol: Volume,
        grid: PrintGrid,
        transform: Any,
        values: list[int],
        recipe: Recipe,
        mode: str,
        folders: list[Path],
        names: list[str],
        dpi: tuple[float, float],
        log_path: Path,
        records: dict[int, dict[str, Any]],
        state: Path,
        checkpoint_every: int,
        chunk_bytes: int | None,
    ) -> None:
        self.grid, self.values, self.recipe, self.mode = grid, values, recipe, mode
        self.folders, self.names, self.dpi = folders, names, dpi
        self.log_path, self.records, self.state = log_path, records, state
        self.every = checkpoint_every
        self.rising = grid.vmap.matrix[grid.z_axis, 2] > 0
        if transform is None:

            def prepare(raw: np.ndarray, loc: list[tuple[int, int]]) -> np.ndarray:
                return raw
        else:

            def prepare(raw: np.ndarray, loc: list[tuple[int, int]]) -> np.ndarray:
                r = transform.apply(raw, loc)
                np.nan_to_num(r, copy=False, nan=0.0)
                return r

        self.slabs = _Slabs(vol.data, grid.z_axis, prepare, chunk_bytes or SLAB_BYTES)
        self.key = K.seed_key(recipe.seed, stream=2)
        self.carry: list[np.ndarray] = []  # 3d: error into this layer, error it sends on

    # one layer -----------------------------------------------------------------------------
    def _region(self, k: int) -> tuple[np.ndarray, list[int], list[tuple[int, int]]]:
        ny, nx = self.grid.shape[1], self.grid.shape[0]
        loc = [(0, ny), (0, nx), (k, k + 1)]
        region = self.grid.vmap.region(loc)
        za = self.grid.z_axis
        lo, hi = region[za]
        if hi <= lo:
            return np.zeros((0, 0, 0), np.float32), [0, 0, 0], loc
        x = self.slabs.get(lo, hi, self.rising)
        start = [0, 0, 0]
        start[za] = lo
        return x, start, loc

    def grey(self, k: int) -> np.ndarray:
        ny, nx = self.grid.shape[1], self.grid.shape[0]
        x, start, loc = self._region(k)
        img = resample_block(self.grid.vmap, x.astype(np.float32, copy=False), start, loc)
        img = img.reshape(ny, nx)
        if self.grid.vmap.order > 1:
            np.clip(img, 0.0, 1.0, out=img)
        return img

    def label_masks(self, k: int) -> tuple[list[np.ndarray], list[float]]:
        ny, nx = self.grid.shape[1], self.grid.shape[0]
        x, start, loc = self._region(k)
        total = np.zeros((ny, nx), np.float32)
        best = np.zeros((ny, nx), np.float32)
        which = np.zeros((ny, nx), np.int32)
        fractions = []
        for i, v in enumerate(self.values):
            f = resample_block(self.grid.vmap, (x == v).astype(np.float32), start, loc)
            f = f.reshape(ny, nx)
            fractions.append(float(f.mean(dtype=np.float64)))
            total += f
            better = f > best
            best[better] = f[better]
            which[better] = i
        fg = best > 1.0 - total
        return [fg & (which == i) for i in range(len(self.values))], fractions

    # the loop ------------------------------------------------------------------------------
    def _checkpoints(self) -> list[int]:
        ks = []
        for p in self.state.glob("carry_*.npy"):
            with contextlib.suppress(ValueError):
                ks.append(int(p.stem.split("_")[1]))
        return sorted(ks)

    def _label_layer(self, k: int) -> tuple[dict[str, Any], list[bytes]]:
        masks, fractions = self.label_masks(k)
        record: dict[str, Any] = {
            "layer": k,
            "density": {
                str(v): float(np.count_nonzero(m)) / m.size for v, m in zip(self.values, masks, strict=True)
            },
            "fraction": {str(v): f for v, f in zip(self.values, fractions, strict=True)},
        }
        return record, [np.packbits(m, axis=1).tobytes() for m in masks]

    def _grey_layer(self, k: int, bits: np.ndarray) -> tuple[dict[str, Any], list[bytes]]:
        ny, nx, nz = self.grid.shape[1], self.grid.shape[0], self.grid.shape[2]
        img = self.grey(k)
        common: dict[str, Any] = {
            "kernel": self.recipe.kernel,
            "serpentine": self.recipe.serpentine,
            "threshold": 0.5,
            "jitter": float(self.recipe.jitter),
            "key": self.key,
            "index_base": k * ny * nx,
            "index_strides": (ny * nx, nx, 1),
        }
        if self.mode == "3d":
            D.diffuse_3d(img[None], bits, carry_in=self.carry[0], carry_out=self.carry[1],
                         z0=k, n_slices=nz, **common)  # fmt: skip
            self.carry.reverse()  # what layer k sent on is what layer k + 1 receives
        else:
            D.diffuse_2d(img, bits, **common)
        record = {
            "layer": k,
            "density": float(np.count_nonzero(bits)) / bits.size,
            "grey": float(img.mean(dtype=np.float64)),
        }
        return record, [np.packbits(bits[0], axis=1).tobytes()]

    def go(self, todo: list[int], progress: bool | None) -> list[int]:
        """Compute the layers from the first to write to the last, writing those in `todo`."""
        from tqdm import tqdm

        ny, nx, nz = self.grid.shape[1], self.grid.shape[0], self.grid.shape[2]
        steps: Sequence[int] = todo
        if self.mode == "3d":
            k0 = max([c for c in self._checkpoints() if c <= todo[0]], default=0)
            depth = int(max(D.diffusion_kernel_3d(self.recipe.kernel).dz))
            if k0 > 0:
                carry = np.load(self.state / f"carry_{k0:06d}.npy")
            else:
                carry = np.zeros((depth, ny, nx), np.float32)
            self.carry = [carry, np.empty_like(carry)]
            steps = range(k0, todo[-1] + 1)
        todo_set = set(todo)
        enabled = sys.stderr.isatty() if progress is None else progress
        bits = np.empty((1, ny, nx), np.uint8)
        written: list[int] = []
        pending: list[Future[None]] = []
        bar = tqdm(total=len(steps), desc="export", unit="layer", delay=1.0, disable=not enabled,
                   leave=False)  # fmt: skip
        with ThreadPoolExecutor(max_workers=1) as pool, bar:
            try:
                for k in steps:
                    record, packed = self._label_layer(k) if self.values else self._grey_layer(k, bits)
                    self.records[k] = record
                    if k in todo_set:
                        while len(pending) >= 2:  # at most two layers wait for the writer
                            pending.pop(0).result()
                        pending.append(pool.submit(self._write, k, packed, record))
                        written.append(k)
                    del packed
                    if self.mode == "3d" and (k + 1) % self.every == 0 and k + 1 < nz:
                        for f in pending:  # a checkpoint implies the layers below it are written
                            f.result()
                        pending.clear()
                        self._save_carry(k + 1, self.carry[0])
                    bar.update(1)
                for f in pending:
                    f.result()
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
        return written

    def _write(self, k: int, packed: list[bytes], record: dict[str, Any]) -> None:
        nx, ny = self.grid.shape[0], self.grid.shape[1]
        for folder, data in zip(self.folders, packed, strict=True):
            path = folder / self.names[k]
            if not path.exists():
                _write_png(path, data, (nx, ny), self.dpi)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

    def _save_carry(self, k: int, carry: np.ndarray) -> None:
        path = self.state / f"carry_{k:06d}.npy"
        if path.exists():
            return
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, carry)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for c in self._checkpoints():
            if c < k:
                with contextlib.suppress(OSError):
                    (self.state / f"carry_{c:06d}.npy").unlink()


# --- command line ------------------------------------------------------------------------------
EPILOG_EXPORT = """\
examples:
  volbin export-slices head.nii.gz stack/ --dpi 600x300 --layer 0.027mm
  volbin export-slices head.nii.gz stack/ --mode 3d --kernel stucki --rescale percentile
  volbin export-slices seg.nii.gz materials/ --labels          # one folder of layers per label
  volbin export-slices head.nii.gz stack/ --layers 0:100        # the first 100 layers only

Re-run the same command after an interruption: only missing layers are written.
"""


def _parse_dpi(text: str) -> tuple[float, float]:
    import argparse

    parts = text.lower().replace("dpi", "").split("x")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a resolution: {text!r} (e.g. 600x300 or 600)") from None
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2 or not all(v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"not a resolution: {text!r} (e.g. 600x300 or 600)")
    return vals[0], vals[1]


def _parse_length(text: str) -> float:
    import argparse

    t = text.strip().lower()
    scale = 1.0
    for unit, s in (("mm", 1.0), ("um", 1e-3), ("µm", 1e-3), ("μm", 1e-3)):
        if t.endswith(unit):
            t, scale = t[: -len(unit)], s
            break
    try:
        v = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a thickness: {text!r} (e.g. 0.027mm or 27um)") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"not a thickness: {text!r} (e.g. 0.027mm or 27um)")
    return v


def _parse_layers(text: str) -> tuple[int | None, int | None]:
    import argparse

    try:
        a, b = text.split(":")
        return (int(a) if a else None, int(b) if b else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a layer range: {text!r} (e.g. 0:100)") from None


def add_export_command(subparsers: Any) -> None:
    """Add ``volbin export-slices`` to the CLI's subparsers."""
    import argparse

    from .cli import _add_common
    from .recipe import CURVES, RESCALE_METHODS

    p = subparsers.add_parser(
        "export-slices",
        help="write a printer's stack of 1-bit PNG layers",
        epilog=EPILOG_EXPORT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Resample IN onto a bitmap 3D printer's grid, error-diffuse every layer "
        "and write one 1-bit PNG per layer (with its DPI) and manifest.json into OUT_DIR. "
        "Streams a layer at a time and resumes where a stopped run left off.",
    )
    p.add_argument("input", help="input volume (grey levels, or a label map with --labels)")
    p.add_argument("out_dir", help="output folder (created if missing)")
    p.add_argument(
        "--dpi",
        type=_parse_dpi,
        default=(600.0, 300.0),
        metavar="XxY",
        help="printer resolution in x and y (default 600x300)",
    )
    p.add_argument(
        "--layer",
        type=_parse_length,
        default=0.027,
        metavar="T",
        help="layer thickness, e.g. 0.027mm or 27um (default 0.027mm)",
    )
    p.add_argument(
        "--mode",
        choices=("2d", "3d"),
        default="2d",
        help="diffuse error within layers (2d) or also into the next layer (3d)",
    )
    p.add_argument(
        "--labels", action="store_true", help="IN is an integer label map: one stack per label, no dithering"
    )
    p.add_argument(
        "--up",
        choices=("S", "I", "A", "P", "R", "L"),
        default="S",
        help="anatomical direction printed upwards (default S)",
    )
    p.add_argument("--order", type=int, default=1, help="interpolation order (default 1, linear)")
    p.add_argument(
        "--layers", type=_parse_layers, default=None, metavar="A:B", help="write only layers A to B-1"
    )
    p.add_argument(
        "--volume-index", type=int, default=None, metavar="N", help="the volume of a 4D input to print"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=64,
        metavar="N",
        help="with --mode 3d, save the carried error every N layers (default 64)",
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the last 3d checkpoint when the stack is complete",
    )
    p.add_argument(
        "--force", action="store_true", help="start over in a folder holding an export with other settings"
    )
    g = p.add_argument_group("grey levels")
    g.add_argument("--recipe", metavar="JSON", help="reuse the rescale of a recipe or sidecar")
    g.add_argument("--rescale", choices=RESCALE_METHODS, help="intensity rescale (default minmax)")
    g.add_argument("--percentiles", type=float, nargs=2, metavar=("LO", "HI"))
    g.add_argument("--range", dest="value_range", type=float, nargs=2, metavar=("LO", "HI"))
    g.add_argument("--curve", choices=CURVES, help="tone curve (default linear)")
    g.add_argument("--gamma", type=float)
    g.add_argument("--log-gain", type=float)
    g.add_argument("--kernel", help="error-diffusion kernel (default floyd-steinberg)")
    g.add_argument("--serpentine", action="store_true", default=None, help="serpentine scan")
    g.add_argument("--jitter", type=float, help="threshold jitter amplitude in [0, 1]")
    g.add_argument("--seed", type=int, help="seed of the jitter (default 0)")
    _add_common(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: Any) -> int:
    from .cli import EXIT_OK, _configure, recipe_from_args
    from .io import load

    recipe = recipe_from_args(args).replace(method="dither", threshold=None)
    t0 = time.perf_counter()
    chunk_bytes = _configure(args)
    res = export_slices(
        load(args.input, chunk_bytes=chunk_bytes, volume_axis=args.volume_axis),
        args.out_dir,
        dpi=args.dpi,
        layer=args.layer,
        mode=args.mode,
        labels=args.labels,
        recipe=recipe,
        up=args.up,
        order=args.order,
        layers=args.layers,
        volume_index=args.volume_index,
        force=args.force,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        chunk_bytes=chunk_bytes,
        progress=False if args.no_progress else None,
    )
    m = res.manifest
    n = m["layer_count"]
    print(
        f"wrote {len(res.written)} layer(s) to {res.out_dir} ({m['written']} of {n} present, "
        f"{m['status']}; {m['width']} x {m['height']} px at {m['dpi'][0]:g}x{m['dpi'][1]:g} dpi, "
        f"{m['pitch_mm'][2]:g} mm layers) in {time.perf_counter() - t0:.1f} s"
    )
    return EXIT_OK
