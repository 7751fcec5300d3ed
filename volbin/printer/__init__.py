"""Bitmap stacks for voxel-wise 3D printers: one 1-bit PNG per layer, streamed and resumable.

`export_slices` resamples a volume onto the printer's grid (``25.4 / dpi`` mm across,
the layer thickness up), error-diffuses every layer to 0/1 and writes each as a PNG with its
DPI, plus ``manifest.json``.  It holds a few layers at a time: each layer is interpolated
from the few source slices around it (kept in a slab cache) and written by a background
thread.  A run that stops leaves only whole files; running it again writes only the missing
layers, with the same bytes (volumetric diffusion restarts from a saved carry buffer).
Label maps give one stack per label, every printer voxel holding at most one material.

The layer loop and PNG writer live in `layers`, the manifest, lock and resume state in
`state`; the command is `volbin.cli.export`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from .. import _dither_kernels as D
from ..errors import OutputFileError, VolbinDataError
from ..io import MAX_OUTPUT_BYTES
from ..recipe import Recipe, merge
from ..resample import VoxelMap
from ..volume import Volume, as_volume
from .layers import SLAB_BYTES as SLAB_BYTES
from .layers import _label_values, _layer_range, _Run
from .state import (
    _LAYER_FILE,
    FORMAT,
    MANIFEST,
    STATE_DIR,
    _clean_temps,
    _clear,
    _differences,
    _jsonable,
    _lock,
    _read_log,
    _sha256,
    _summary,
    _version,
    _write_json,
)

__all__ = ["ExportResult", "PrintGrid", "export_slices", "print_grid"]

_RAS = "RAS"
_OPPOSITE = {"R": "L", "A": "P", "S": "I", "L": "R", "P": "A", "I": "S"}


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


# --- the export --------------------------------------------------------------------------------
#: The largest printer layer `export_slices` computes, in pixels: a few layers are held in
#: memory at 4 bytes a pixel (about 4 GiB at this size).
MAX_LAYER_PIXELS = 2**28


def _check_grid(grid: PrintGrid, max_output_bytes: int | None, out: Any) -> None:
    nx, ny, nz = grid.shape
    if nx * ny > MAX_LAYER_PIXELS:
        raise OutputFileError(
            f"{out}: a printer layer would be {nx} x {ny} = {nx * ny:,} pixels, more than the "
            f"{MAX_LAYER_PIXELS:,} volbin computes at a time; check `dpi`."
        )
    if max_output_bytes is None:
        return
    if not isinstance(max_output_bytes, int) or isinstance(max_output_bytes, bool) or max_output_bytes <= 0:
        raise ValueError(f"`max_output_bytes` must be a positive int or None; got {max_output_bytes!r}.")
    nbytes = nz * ny * -(-nx // 8)
    if nbytes > max_output_bytes:
        raise OutputFileError(
            f"{out}: the stack would be {nz:,} layers of {nx} x {ny} pixels ({nbytes / 1e9:.3g} GB at one "
            f"bit per pixel), more than the limit of {max_output_bytes / 1e9:.3g} GB; check `layer` "
            "and `dpi`, or pass max_output_bytes= (CLI: --max-output-gb) to allow it."
        )


def _layer_ok(path: Path, size: tuple[int, int]) -> bool:
    """Whether `path` is a whole 1-bit greyscale PNG of `size` (width, height).

    The checks of Pillow's ``PngImageFile.verify`` (every chunk whole, with its CRC, up to
    ``IEND``) plus the header's size and mode, read here without Pillow's pixel limit, which
    printer layers may exceed.
    """
    import struct
    import zlib

    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            first = True
            while True:
                head = f.read(8)
                if len(head) != 8:
                    return False  # truncated
                length, kind = struct.unpack(">I4s", head)
                body = f.read(length)
                crc = f.read(4)
                if len(body) != length or len(crc) != 4:
                    return False
                if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
                    return False
                if first:
                    if kind != b"IHDR" or length != 13:
                        return False
                    width, height, depth, colour = struct.unpack(">IIBB", body[:10])
                    if (width, height) != size or (depth, colour) != (1, 0):
                        return False
                    first = False
                elif kind == b"IEND":
                    return True
    except OSError:
        return False


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


def export_slices(
    volume: Any,
    out_dir: str | os.PathLike[str],
    *,
    dpi: float | Sequence[float] = (600, 300),
    layer: float = 0.027,
    kernel: Any = None,
    scope: str = "slice",
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
    max_output_bytes: int | None = MAX_OUTPUT_BYTES,
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
    scope : {'slice', 'volume'}
        ``slice`` diffuses every layer on its own; ``volume`` also sends error into the next
        layer (3D error diffusion, as `volbin.dither` with ``scope='volume'``), which renders
        grey levels seen through the layers with less noise.
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
    max_output_bytes : int or None, optional
        Refuse a stack whose layers hold more than this many bytes at one bit per pixel
        (per label with `labels`; default `volbin.io.MAX_OUTPUT_BYTES`, 16 GiB, i.e. 137 G
        pixels); None for no limit.  A layer is also refused above `MAX_LAYER_PIXELS`
        pixels, since a few layers are held in memory at 4 bytes a pixel.
    **options
        `Recipe` fields.

    Returns
    -------
    ExportResult

    Raises
    ------
    OutputFileError
        `out_dir` holds an export with other settings (pass ``force=True``), or another
        export is writing to it; or the grid is larger than `max_output_bytes` or
        `MAX_LAYER_PIXELS` allow.
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
    A layer counts as present only if its PNG decodes (Pillow's ``verify``) and has the
    grid's size and 1-bit mode; another file under a layer's name is replaced.
    """
    from ..io import load
    from ..rescale import fit_transform

    if scope not in ("slice", "volume"):
        raise ValueError(f"`scope` must be 'slice' or 'volume'; got {scope!r}.")
    mode = "3d" if scope == "volume" else "2d"  # the layer loop's own name
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise ValueError(f"`checkpoint_every` must be a positive int; got {checkpoint_every!r}.")
    if labels and scope == "volume":
        raise ValueError("`scope='volume'` applies to grey levels; label stacks are not dithered.")
    if kernel is not None:
        options["kernel"] = kernel
    if recipe is None:  # the layer loop's defaults, whatever the recipe's scope
        options.setdefault("kernel", "floyd-steinberg")
        options.setdefault("serpentine", False)
    recipe = merge(recipe, options, "dither")
    if recipe.upsample is not None:
        raise ValueError("`upsample` does not apply to export_slices: the printer grid sets the resolution.")
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
    _check_grid(grid, max_output_bytes, out_dir)
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
        "scope": None if labels else scope,
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

        size = (grid.shape[0], grid.shape[1])
        done = present(listing())
        for k, ok in enumerate(done):
            if ok and not all(_layer_ok(f / names[k], size) for f in folders):
                for f in folders:  # a damaged layer (a truncated copy, another file): redo it
                    with contextlib.suppress(OSError):
                        if not _layer_ok(f / names[k], size):
                            (f / names[k]).unlink()
                done[k] = False
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
