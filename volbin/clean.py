"""Cleaning binary masks: opening, small and non-largest components, closing, hole filling.

`clean` applies its steps in one fixed order (opening, component filtering, closing, hole
filling), each equal to ``scipy.ndimage`` on the whole mask, and records how many voxels
each step removed and added.  Morphology runs block by block with overlaps of the
structuring element's reach; components come from `volbin.components`, which merges labels
across chunk borders in bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
from scipy import ndimage

from .components import as_mask, label_components, structure
from .volume import Volume, as_volume, like_input

__all__ = ["CleanResult", "ball", "clean"]

FillHoles = Literal[False, "2d", "3d"]


def ball(radius: float, spacing: Sequence[float] | None = None) -> np.ndarray:
    """A 3D ball structuring element of `radius` (voxels, or mm with `spacing`).

    Parameters
    ----------
    radius : float
        Radius, in voxels if `spacing` is None, else in the units of `spacing` (mm).
    spacing : 3 floats, optional
        Voxel sizes along the three axes.

    Returns
    -------
    ball : ndarray of bool
        The offsets ``d`` with ``sum((d * spacing) ** 2) <= radius ** 2``; with unit spacing
        and an integer radius, ``skimage.morphology.ball(radius)``.

    Examples
    --------
    >>> ball(1).sum(), ball(2, spacing=(1.0, 1.0, 2.0)).shape
    (np.int64(7), (5, 5, 3))
    """
    s = np.ones(3) if spacing is None else np.asarray(spacing, dtype=np.float64)
    reach = [math.floor(radius / si + 1e-9) for si in s]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    d2 = sum((g * si) ** 2 for g, si in zip(grids, s, strict=True))
    return np.asarray(d2 <= radius * radius)


@dataclass(frozen=True)
class CleanResult:
    """A cleaned mask and what each step did.

    Attributes
    ----------
    mask : same kind as the input mask, bool
        Lazy for dask and Volume input.
    steps : tuple of dict
        One record per step applied, in order: ``step``, its parameters, and the number of
        voxels it ``removed`` and ``added``.
    """

    mask: Any
    steps: tuple[dict[str, Any], ...]

    def record(self) -> dict[str, Any]:
        """The sidecar's record of the cleaning."""
        return {"step": "clean", "steps": [dict(s) for s in self.steps]}


def _check_radius(name: str, value: Any) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative number; got {value!r}.")
    return float(value)


def _check_spacing(spacing: Any) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"`spacing` must be 3 positive voxel sizes; got {spacing!r}.")
    return (values[0], values[1], values[2])


def _embed(struct3: np.ndarray, vol: Volume) -> np.ndarray:
    """A structuring element over the spatial axes, of size 1 along the volume axis."""
    if vol.volume_axis is None:
        return struct3
    return np.expand_dims(struct3, vol.volume_axis)


def _morphology(data: da.Array, struct: np.ndarray, op: str) -> da.Array:
    """scipy's binary opening or closing, block by block with overlaps of twice the reach."""
    fn = ndimage.binary_opening if op == "opening" else ndimage.binary_closing
    depth = {a: 2 * (struct.shape[a] // 2) for a in range(data.ndim)}

    def run(block: np.ndarray) -> np.ndarray:
        return fn(block, structure=struct)

    # boundary="none": a block at the array's edge sees that edge as scipy sees it.
    return da.map_overlap(
        run, data, depth=depth, boundary="none", dtype=bool, meta=np.empty((0,) * data.ndim, bool)
    )


def _changes(before: da.Array, after: da.Array) -> tuple[int, int]:
    removed, added = dask.compute(da.count_nonzero(before & ~after), da.count_nonzero(after & ~before))
    return int(removed), int(added)


def _components_step(
    data: da.Array, vol: Volume, connectivity: int, min_size: int, keep_largest: bool
) -> tuple[da.Array, list[dict[str, Any]]]:
    struct = structure(data.ndim, connectivity, volume_axis=vol.volume_axis)
    comps = label_components([data], lambda b: (b, ()), struct, first=keep_largest)
    count = comps.count
    keep = np.ones(len(count), dtype=bool)
    keep[0] = False
    steps = []
    if min_size:
        small = count < min_size
        small[0] = False
        keep &= ~small
        steps.append(
            {
                "step": "min_size",
                "min_size": min_size,
                "connectivity": connectivity,
                "components_removed": int(small.sum()),
                "removed": int(count[small].sum()),
                "added": 0,
            }
        )
    if keep_largest:
        assert comps.first is not None
        group = np.zeros(len(count), dtype=np.int64)
        if vol.volume_axis is not None:
            first = np.maximum(comps.first, 0)
            group = np.unravel_index(first, data.shape)[vol.volume_axis].astype(np.int64)
        cand = np.flatnonzero(keep)
        largest = np.zeros(len(count), dtype=bool)
        if len(cand):
            # Per volume: the most voxels, then the first in C order (scipy's lowest label).
            order = np.lexsort((comps.first[cand], -count[cand], group[cand]))
            ranked = cand[order]
            g = group[ranked]
            head = np.concatenate([[True], g[1:] != g[:-1]])
            largest[ranked[head]] = True
        dropped = keep & ~largest
        keep &= largest
        steps.append(
            {
                "step": "keep_largest",
                "connectivity": connectivity,
                "components_removed": int(dropped.sum()),
                "removed": int(count[dropped].sum()),
                "added": 0,
            }
        )
    return comps.select(keep), steps


def _fill_step(
    data: da.Array, vol: Volume, mode: str, axis: Any, connectivity: int
) -> tuple[da.Array, dict[str, Any]]:
    spatial = vol.spatial_axes
    if mode == "2d":
        plane = vol.axis_index(axis)
        struct = structure(data.ndim, connectivity, volume_axis=vol.volume_axis, plane_axis=plane)
        border = tuple(a for a in spatial if a != plane)
    else:
        struct = structure(data.ndim, connectivity, volume_axis=vol.volume_axis)
        border = spatial
    comps = label_components([data], lambda b: (~b, ()), struct, border_axes=border)
    holes = ~comps.border
    holes[0] = False
    filled = comps.select(holes, finish=lambda sel, block: sel | block)
    step = {
        "step": "fill_holes",
        "mode": mode,
        "connectivity": connectivity,
        "holes": int(holes.sum()),
        "removed": 0,
        "added": int(comps.count[holes].sum()),
    }
    return filled, step


def clean(
    mask: Any,
    *,
    keep_largest: bool = False,
    min_size: int = 0,
    fill_holes: FillHoles | bool = False,
    opening: float = 0,
    closing: float = 0,
    connectivity: int = 1,
    spacing: Sequence[float] | None = None,
    axis: str | int = "z",
    volume_axis: int | None = None,
) -> CleanResult:
    """Clean a binary mask: opening, component filtering, closing and hole filling.

    Steps run in this order, each only when asked for:

    1. ``opening``: binary opening by a ball of that radius (removes specks and thin
       bridges);
    2. ``min_size``: removes connected components of fewer voxels;
    3. ``keep_largest``: keeps the largest remaining component of each 3D volume;
    4. ``closing``: binary closing by a ball of that radius (closes small gaps);
    5. ``fill_holes``: fills background regions not connected to the border, in 3D or in
       each 2D slice along `axis`.

    Parameters
    ----------
    mask : (X, Y, Z[, T]) ndarray, dask array or Volume
        Nonzero voxels are foreground (NaN is background).  4D masks are cleaned one 3D
        volume at a time (nothing connects across volumes).
    keep_largest : bool
    min_size : int
        Components of fewer voxels are removed (0: none).
    fill_holes : {False, '2d', '3d'}
        ``True`` means ``'3d'``.
    opening, closing : float
        Ball radii, in voxels, or in mm when `spacing` is given (0: no step).
    connectivity : {1, 2, 3}
        Neighbourhood of components and of holes' background (squared distance, as
        ``scipy.ndimage.generate_binary_structure``); at most 2 for ``fill_holes='2d'``.
    spacing : 3 floats, optional
        Voxel sizes (mm) along x, y, z, making `opening` and `closing` radii in mm.
    axis : {'x', 'y', 'z'} or int
        Slice axis of ``fill_holes='2d'``.
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input (default 3).

    Returns
    -------
    CleanResult
        ``mask`` (same kind as the input, bool; lazy for dask and Volume input, and a
        Volume gets the record appended to its steps) and ``steps``, one record per step
        with the voxels it removed and added.

    Raises
    ------
    ValueError
        A bad parameter value (the message names it).
    VolbinDataError
        A mask that is not 3D or 4D.

    Notes
    -----
    Each step equals scipy on the whole mask: ``binary_opening``/``binary_closing`` with
    `ball` (default ``border_value=0``, so closing can erode at the array's edge);
    ``label`` with ``generate_binary_structure(3, connectivity)`` then sizes; largest ties
    go to the component that ``label`` numbers first; ``binary_fill_holes`` with the same
    structure.  Morphology reads each block with an overlap of twice the ball's reach;
    component steps make one labelling pass (and hole filling another) whose results are
    small, then label each block again when the output is computed.  Opening and closing
    each make one more pass to count their changes.  Whatever the chunking, the result is
    the same.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((9, 9, 9), bool); m[1:8, 1:8, 1:8] = True; m[4, 4, 4] = False
    >>> m[0, 0, 0] = True  # a speck in a corner
    >>> res = clean(m, keep_largest=True, fill_holes="3d")
    >>> int(res.mask.sum()), [(s["step"], s["removed"], s["added"]) for s in res.steps]
    (343, [('keep_largest', 1, 0), ('fill_holes', 0, 1)])
    """
    if fill_holes is True:
        fill_holes = "3d"
    if fill_holes not in (False, "2d", "3d"):
        raise ValueError(f"`fill_holes` must be False, '2d' or '3d'; got {fill_holes!r}.")
    if not isinstance(min_size, (int, np.integer)) or isinstance(min_size, bool) or min_size < 0:
        raise ValueError(f"`min_size` must be a non-negative int; got {min_size!r}.")
    if not isinstance(keep_largest, (bool, np.bool_)):
        raise ValueError(f"`keep_largest` must be True or False; got {keep_largest!r}.")
    r_open = _check_radius("opening", opening)
    r_close = _check_radius("closing", closing)
    sp = _check_spacing(spacing)
    vol, kind = as_volume(mask, volume_axis=volume_axis)
    structure(3, connectivity)  # validates `connectivity`
    if fill_holes == "2d":
        structure(3, connectivity, plane_axis=0)
        vol.axis_index(axis)
    units = "voxels" if sp is None else "mm"
    data = as_mask(vol.data)
    steps: list[dict[str, Any]] = []
    if r_open:
        new = _morphology(data, _embed(ball(r_open, sp), vol), "opening")
        removed, added = _changes(data, new)
        steps.append(
            {"step": "opening", "radius": r_open, "units": units, "removed": removed, "added": added}
        )
        data = new
    if min_size or keep_largest:
        data, comp_steps = _components_step(data, vol, int(connectivity), int(min_size), bool(keep_largest))
        steps.extend(comp_steps)
    if r_close:
        new = _morphology(data, _embed(ball(r_close, sp), vol), "closing")
        removed, added = _changes(data, new)
        steps.append(
            {"step": "closing", "radius": r_close, "units": units, "removed": removed, "added": added}
        )
        data = new
    if fill_holes:
        data, step = _fill_step(data, vol, str(fill_holes), axis, int(connectivity))
        steps.append(step)
    result = CleanResult(None, tuple(steps))
    out = vol.derive(data, result.record())
    return CleanResult(like_input(out, kind), tuple(steps))
