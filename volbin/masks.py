"""Masks: which voxels the statistics see and, for ``mask=``, which voxels may be foreground.

`resolve_mask` turns what a user passes (a NIfTI/.npy/zarr path, a numpy/dask array, a
`Volume`, or ``"nonzero"``) into a boolean dask array of the input's shape and chunks, so
that it streams block by block beside the data.  Non-zero mask voxels are inside (NaN is
outside).  A 3D mask serves every volume of a 4D input; a 4D mask gives one per volume, and
``"nonzero"`` is each volume's own non-zero voxels.  With ``spatial=True`` (a 4D input whose
4th axis holds the channels of each voxel, as k-means on voxel vectors reads it) the mask
is 3D: a mask must be 3D, and ``"nonzero"`` is the voxels where any channel is non-zero.
A mask read from a file, or given as a Volume, must lie on the input's grid: same spatial
shape and an affine equal to within `AFFINE_TOLERANCE` mm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from .errors import VolbinDataError
from .volume import Volume

__all__ = ["AFFINE_TOLERANCE", "ARRAY", "NONZERO", "Mask", "mask_fields", "recipe_mask", "resolve_mask"]

#: How far (in mm, per affine entry) a mask's affine may be from the input's.
AFFINE_TOLERANCE = 1e-3
#: The mask of an input's own non-zero voxels (fslmaths ``-thrP`` style).
NONZERO = "nonzero"
#: How a recipe records a mask given as an array (it cannot be re-read from the recipe).
ARRAY = "<array>"


def mask_fields(mask: Any = None, stats_mask: Any = None) -> tuple[dict[str, str], Any]:
    """The Recipe fields for the masks given to an API call, and the in-memory mask if any.

    Paths and ``"nonzero"`` go into the recipe (so that its sidecar re-runs it); an array
    or Volume is recorded as `ARRAY` and handed over beside the recipe.
    """
    fields: dict[str, str] = {}
    obj = None
    for name, spec in (("mask", mask), ("stats_mask", stats_mask)):
        if spec is None:
            continue
        if isinstance(spec, (str, os.PathLike)):
            fields[name] = os.fspath(spec)
        else:
            fields[name], obj = ARRAY, spec
    return fields, obj


def recipe_mask(recipe: Any, vol: Volume, array: Any = None) -> Mask | None:
    """The mask a recipe asks for (``recipe.mask`` or ``recipe.stats_mask``), resolved on `vol`.

    Raises
    ------
    ValueError
        The recipe records an in-memory mask (`ARRAY`) and `array` is not given.
    """
    name = "mask" if recipe.mask is not None else "stats_mask"
    spec = getattr(recipe, name)
    if spec is None:
        return None
    if spec == ARRAY:
        if array is None:
            raise ValueError(
                f"the recipe's `{name}` was an in-memory array ({ARRAY}); pass it again as {name}=..."
            )
        spec = array
    return resolve_mask(spec, vol, name=name)


@dataclass(frozen=True)
class Mask:
    """A resolved mask: boolean dask data aligned with the input, and where it came from."""

    data: da.Array
    source: str  # "nonzero", a path, or "array"

    def describe(self) -> str:
        return "mask 'nonzero'" if self.source == NONZERO else f"mask {self.source}"


def _grid(shape: tuple[int, ...], affine: np.ndarray | None) -> str:
    text = f"shape {tuple(int(s) for s in shape)}"
    if affine is not None:
        rows = "; ".join(" ".join(f"{v:.4g}" for v in row) for row in np.asarray(affine)[:3])
        text += f", affine [{rows}]"
    return text


def _has_grid(vol: Volume) -> bool:
    """Whether the volume's affine says something (it came from a file or was given one)."""
    return vol.source is not None or vol.header is not None or not np.allclose(vol.affine, np.eye(4))


def resolve_mask(spec: Any, vol: Volume, *, name: str = "mask", spatial: bool = False) -> Mask | None:
    """The mask `spec` as a boolean dask array of `vol`'s shape and chunks.

    Parameters
    ----------
    spec : str, path-like, ndarray, dask array, Volume or None
        ``"nonzero"`` (the voxels of `vol` that are not 0), a path to a NIfTI/.npy/zarr
        mask, or the mask itself.  Non-zero values are inside.
    vol : Volume
        The input the mask applies to.
    name : str
        The parameter's name, for messages (``mask`` or ``stats_mask``).
    spatial : bool
        One mask for the voxels of a 4D `vol` whose volumes are channels of one voxel: the
        result has `vol`'s three spatial axes (and their chunks), ``"nonzero"`` is inside
        where any volume is non-zero, and a 4D mask is refused.  Same as False for 3D `vol`.

    Returns
    -------
    mask : Mask or None
        None when `spec` is None.

    Raises
    ------
    VolbinDataError
        The mask is on another grid (shape, or affine by more than `AFFINE_TOLERANCE` mm),
        or is 4D with `spatial`.
    InputFileError
        A mask file cannot be read.
    TypeError
        `spec` is of another type.

    Examples
    --------
    >>> import numpy as np
    >>> from volbin.volume import as_volume
    >>> vol, _ = as_volume(np.arange(8.0).reshape(2, 2, 2))
    >>> int(resolve_mask("nonzero", vol).data.sum().compute())
    7
    >>> x = np.zeros((2, 2, 1, 2))
    >>> x[0, 0, 0, 0] = x[1, 1, 0, 1] = 1  # one voxel seen by each channel
    >>> two, _ = as_volume(x)
    >>> resolve_mask("nonzero", two, spatial=True).data.compute()[..., 0].astype(int).tolist()
    [[1, 0], [0, 1]]
    """
    if spec is None:
        return None
    spatial = spatial and vol.ndim == 4
    if isinstance(spec, str) and spec == NONZERO:
        data = vol.data

        def nonzero(block: np.ndarray) -> np.ndarray:
            return np.not_equal(block, 0)

        inside = da.map_blocks(nonzero, data, dtype=bool, meta=np.empty((0,) * data.ndim, bool))
        if spatial:
            # A voxel whose channels are all 0 is background; one non-zero channel is tissue
            # seen by that contrast (the union, as a brain mask from several contrasts is).
            inside = inside.any(axis=vol.volume_axis)
        return Mask(inside, NONZERO)
    if isinstance(spec, (str, os.PathLike)):
        from .io import load

        source = os.path.abspath(os.fspath(spec))
        mvol = load(spec)
        check_affine = True
    elif isinstance(spec, Volume):
        source, mvol, check_affine = "array", spec, True
    elif isinstance(spec, da.Array) or hasattr(spec, "__array__"):
        arr = spec if isinstance(spec, da.Array) else np.asarray(spec)
        if arr.ndim not in (3, 4):
            raise VolbinDataError(
                f"`{name}` must be 3D or 4D; got {arr.ndim}D data of shape {tuple(arr.shape)}."
            )
        vaxis = vol.volume_axis if arr.ndim == 4 else None
        mvol = Volume(da.asarray(arr), affine=vol.affine, volume_axis=vaxis)
        source, check_affine = "array", False
    else:
        raise TypeError(
            f"`{name}` must be 'nonzero', a path, an array or a volbin.Volume; got {type(spec).__name__}."
        )
    if check_affine and _has_grid(vol) and _has_grid(mvol):
        same = mvol.spatial_shape == vol.spatial_shape and np.allclose(
            mvol.affine, vol.affine, rtol=0, atol=AFFINE_TOLERANCE
        )
    else:
        same = mvol.spatial_shape == vol.spatial_shape
    if spatial and mvol.ndim == 4 and same:
        raise VolbinDataError(
            f"`{name}` {'' if source == 'array' else source + ' '}has {mvol.n_volumes} volumes, but the "
            f"input's {vol.n_volumes} volumes are channels of one voxel: give a 3D mask."
        )
    if not same or (mvol.ndim == 4 and (vol.ndim == 3 or mvol.n_volumes != vol.n_volumes)):
        what = f"{mvol.n_volumes} volumes" if mvol.ndim == 4 else "3D"
        if mvol.ndim == 4 and same:
            raise VolbinDataError(
                f"`{name}` has {what} but the input has "
                f"{vol.n_volumes if vol.ndim == 4 else 'one (3D)'}; give a 3D mask or one volume "
                "per input volume."
            )
        show = check_affine and _has_grid(vol) and _has_grid(mvol)
        raise VolbinDataError(
            f"`{name}` {'' if source == 'array' else source + ' '}is on another grid than the input: "
            f"mask {_grid(mvol.shape, mvol.affine if show else None)}; "
            f"input {_grid(vol.shape, vol.affine if show else None)}."
        )
    m = mvol.data
    if m.dtype.kind == "f":
        m = da.map_blocks(_inside_float, m, dtype=bool, meta=np.empty((0,) * m.ndim, bool))
    elif m.dtype != np.bool_:
        m = m != 0
    return Mask(_align(m, mvol, vol, spatial), source)


def _inside_float(block: np.ndarray) -> np.ndarray:
    return np.not_equal(block, 0) & ~np.isnan(block)


def _align(m: da.Array, mvol: Volume, vol: Volume, spatial: bool = False) -> da.Array:
    """The mask laid out like the input: the same axis order and chunks, 3D broadcast on 4D
    (or, with `spatial`, 3D with the input's spatial chunks)."""
    data = vol.data
    if m.ndim == 3 and data.ndim == 4:
        va = vol.volume_axis
        assert va is not None
        spatial_chunks = tuple(data.chunks[a] for a in vol.spatial_axes)
        m = m.rechunk(spatial_chunks)
        if spatial:
            return m
        m = da.expand_dims(m, va)
        return da.broadcast_to(m, data.shape, chunks=data.chunks)
    if m.ndim == 4 and mvol.volume_axis != vol.volume_axis:
        m = da.moveaxis(m, mvol.volume_axis, vol.volume_axis)  # type: ignore[arg-type]
    return m if m.chunks == data.chunks else m.rechunk(data.chunks)
