"""The layer loop of `export_slices`: interpolate, diffuse or split labels, write PNGs.

`_Run` computes the printer's layers from the source a slab at a time (`_Slabs`), dithers
grey layers (in 3D with the carried error, saved as checkpoints) or assigns each voxel of a
label stack one label, and writes each layer as a 1-bit PNG on a background thread.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np

from .. import _dither_kernels as D
from .. import _kernels as K
from ..errors import VolbinDataError
from ..recipe import Recipe
from ..resample import resample_block
from ..volume import Volume
from .state import _jsonable

if TYPE_CHECKING:
    from . import PrintGrid

#: Source slices are read and rescaled in slabs of this many bytes (float32): less than one
#: printer layer of memory, and read rarely (at 0.027 mm, each 1 mm slice serves 37 layers).
SLAB_BYTES = 8 * 2**20


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


# --- PNG files ---------------------------------------------------------------------------------
def _write_png(path: Path, packed: bytes, size: tuple[int, int], dpi: tuple[float, float]) -> None:
    """Write a packed 1-bit image atomically: a temporary name, fsync, then rename."""
    from PIL import Image

    from ..io import atomic_file

    img = Image.frombytes("1", size, packed)
    with atomic_file(path) as f:
        img.save(f, format="PNG", dpi=dpi)


# --- which layers and labels -------------------------------------------------------------------
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


# --- the loop over layers ----------------------------------------------------------------------
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
        from ..io import atomic_file

        with atomic_file(path) as f:
            np.save(f, carry)
        for c in self._checkpoints():
            if c < k:
                with contextlib.suppress(OSError):
                    (self.state / f"carry_{c:06d}.npy").unlink()
