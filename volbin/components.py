"""Masks and their connected components, merged across chunk borders in bounded memory.

`as_mask` makes a lazy boolean mask of any array (nonzero voxels; NaN is outside).

`label_components` labels a dask mask in two passes.  The first labels each block on its own
(``scipy.ndimage.label``) and keeps only small things: per-label voxel counts, first voxels,
flags, and the label planes on each side of every chunk border.  Labels that touch across a
border are merged in numpy (each two-plane face is labelled with the same structure, the
merging that ``dask_image.ndmeasure.label`` does, then ``scipy.sparse.csgraph`` joins the
graph).  The second pass, lazy, labels each block again and looks up what to output per
component.  Only the border planes are held between the passes, never the labels of the
whole array (``dask_image.ndmeasure.label`` keeps every block's int32 labels alive until
the merge is done: four times the size of a boolean mask).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["Components", "as_mask", "label_components", "structure"]

Prepare = Callable[..., tuple[np.ndarray, Sequence[np.ndarray]]]


def as_mask(data: da.Array) -> da.Array:
    """Lazy boolean mask: nonzero voxels (NaN counts as outside)."""
    if data.dtype == bool:
        return data

    def run(block: np.ndarray) -> np.ndarray:
        out = block != 0
        if block.dtype.kind == "f":
            out &= ~np.isnan(block)
        return out

    return da.map_blocks(run, data, dtype=bool, meta=np.empty((0,) * data.ndim, bool))


def structure(
    ndim: int, connectivity: int = 1, *, volume_axis: int | None = None, plane_axis: int | None = None
) -> np.ndarray:
    """The structuring element of 3D (or 2D) connectivity on an `ndim`-D array.

    Parameters
    ----------
    ndim : {3, 4}
    connectivity : {1, 2, 3}
        As ``scipy.ndimage.generate_binary_structure``: neighbours at squared distance up to
        `connectivity` (1: faces, 2: and edges, 3: and corners).  With `plane_axis` at most 2.
    volume_axis : int, optional
        For 4D data, the axis along which nothing connects (voxels of different volumes).
    plane_axis : int, optional
        An axis along which nothing connects either: components of 2D slices.

    Returns
    -------
    structure : (3,) * ndim ndarray of bool

    Examples
    --------
    >>> s = structure(4, 1, volume_axis=3)
    >>> s.shape, int(s.sum()), bool(s[..., 0].any())
    ((3, 3, 3, 3), 7, False)
    """
    flat = tuple(a for a in (volume_axis, plane_axis) if a is not None)
    rank = ndim - len(flat)
    if not isinstance(connectivity, (int, np.integer)) or not 1 <= connectivity <= rank:
        raise ValueError(f"`connectivity` must be an int in [1, {rank}]; got {connectivity!r}.")
    base = ndimage.generate_binary_structure(rank, int(connectivity))
    index = tuple(1 if a in flat else slice(None) for a in range(ndim))
    out = np.zeros((3,) * ndim, dtype=bool)
    out[index] = base
    return out


def _connected_axes(struct: np.ndarray) -> tuple[int, ...]:
    """Axes along which `struct` connects neighbours (a face between chunks matters)."""
    return tuple(a for a in range(struct.ndim) if np.take(struct, [0, 2], axis=a).any())


@dataclass
class _Summary:
    n: int
    counts: np.ndarray  # (n + 1,) int64; [0] is the background
    first: np.ndarray | None  # (n,) int64 global C-order index of each label's first voxel
    flags: np.ndarray  # (n + 1, F) bool
    border: np.ndarray  # (n + 1,) bool
    planes: dict[tuple[int, int], np.ndarray]


def _first_voxels(
    lab: np.ndarray, n: int, location: Sequence[tuple[int, int]], shape: tuple[int, ...]
) -> np.ndarray:
    """Global C-order index of the first voxel of each of labels 1..n of a block."""
    flat = lab.ravel()
    # ndimage.label numbers labels by first appearance in C order, so the running maximum
    # steps up exactly at each label's first voxel.
    run = np.maximum.accumulate(flat)
    pos = np.flatnonzero(run[1:] > run[:-1]) + 1
    if flat.size and flat[0] > 0:
        pos = np.concatenate([[0], pos])
    if len(pos) != n or (n and not np.array_equal(flat[pos], np.arange(1, n + 1))):
        # Not numbered by first appearance: find the first voxels the slow way.
        _, pos = np.unique(flat, return_index=True)
        pos = pos[1:] if flat.size and (flat == 0).any() else pos
    local = np.unravel_index(pos, lab.shape)
    glob = tuple(idx + lo for idx, (lo, _) in zip(local, location, strict=True))
    return np.ravel_multi_index(glob, shape).astype(np.int64)


def _summarise(
    prepare: Prepare,
    struct: np.ndarray,
    shape: tuple[int, ...],
    location: Sequence[tuple[int, int]],
    face_axes: tuple[int, ...],
    border_axes: tuple[int, ...],
    first: bool,
    *blocks: np.ndarray,
) -> _Summary:
    mask, flag_masks = prepare(*blocks)
    lab, n = ndimage.label(mask, struct)
    counts = np.bincount(lab.ravel(), minlength=n + 1).astype(np.int64)
    flags = np.zeros((n + 1, len(flag_masks)), dtype=bool)
    for j, f in enumerate(flag_masks):
        flags[:, j] = np.bincount(lab[np.broadcast_to(f, lab.shape)], minlength=n + 1) > 0
    border = np.zeros(n + 1, dtype=bool)
    planes: dict[tuple[int, int], np.ndarray] = {}
    for a in range(lab.ndim):
        lo, hi = location[a]
        for side, at_edge, index in ((0, lo == 0, 0), (1, hi == shape[a], -1)):
            if (a in border_axes and at_edge) or (a in face_axes and not at_edge):
                plane = np.take(lab, index, axis=a)
                if a in border_axes and at_edge:
                    border[np.unique(plane)] = True
                if a in face_axes and not at_edge:
                    planes[(a, side)] = plane
    border[0] = False
    fv = _first_voxels(lab, n, location, shape) if first else None
    return _Summary(int(n), counts, fv, flags, border, planes)


def _face_edges(face: np.ndarray, struct: np.ndarray) -> np.ndarray:
    """(2, M) pairs of provisional labels connected through a two-plane `face`."""
    common, _ = ndimage.label(face > 0, struct)
    sel = common.ravel() > 0
    key = np.unique(common.ravel()[sel].astype(np.int64) * (1 << 32) + face.ravel()[sel].astype(np.int64))
    grp, lab = key >> 32, key & 0xFFFFFFFF
    same = np.flatnonzero(grp[1:] == grp[:-1])
    return np.stack([lab[same], lab[same + 1]])


@dataclass(frozen=True)
class Components:
    """The connected components of a chunked mask (see `label_components`).

    Component 0 is the background.  Per-component arrays have ``n_components + 1`` entries.

    Attributes
    ----------
    count : ndarray of int64
        Voxels of each component.
    first : ndarray of int64 or None
        Global C-order index of each component's first voxel (the order in which
        ``scipy.ndimage.label`` numbers them on the whole array); ``-1`` for the background.
    flags : ndarray of bool, shape ``(n_components + 1, F)``
        Whether each component holds a voxel of each flag mask.
    border : ndarray of bool
        Whether each component touches the array border along the border axes.
    """

    count: np.ndarray
    first: np.ndarray | None
    flags: np.ndarray
    border: np.ndarray
    _inputs: tuple[da.Array, ...]
    _prepare: Prepare
    _struct: np.ndarray
    _luts: tuple[np.ndarray, ...]  # per block: component of each local label

    @property
    def n_components(self) -> int:
        return len(self.count) - 1

    def select(self, keep: np.ndarray, finish: Callable[..., np.ndarray] | None = None) -> da.Array:
        """Lazy boolean array: voxels whose component has ``keep[component]`` true.

        `finish(selected, *blocks)`, if given, combines the selection with the input blocks
        (e.g. ``mask | selected`` to fill holes).  Each block is labelled again (the same
        labels as the first pass), so memory follows the chunk size.
        """
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != self.count.shape:
            raise ValueError(f"`keep` must have {len(self.count)} entries; got shape {keep.shape}.")
        luts = [keep[lut] for lut in self._luts]
        prepare, struct = self._prepare, self._struct
        numblocks = self._inputs[0].numblocks

        def run(*blocks: np.ndarray, block_info: dict | None = None) -> np.ndarray:
            idx = np.ravel_multi_index(block_info[0]["chunk-location"], numblocks)  # type: ignore[index]
            mask, _ = prepare(*blocks)
            lab, _ = ndimage.label(mask, struct)
            out = luts[idx][lab]
            return out if finish is None else finish(out, *blocks)

        data = self._inputs[0]
        return da.map_blocks(run, *self._inputs, dtype=bool, meta=np.empty((0,) * data.ndim, bool))


def label_components(
    inputs: Sequence[da.Array],
    prepare: Prepare,
    struct: np.ndarray,
    *,
    border_axes: Sequence[int] = (),
    first: bool = False,
) -> Components:
    """Connected components of ``prepare(*blocks)[0]`` over chunked `inputs` (one pass).

    Parameters
    ----------
    inputs : sequence of dask arrays
        Arrays of one shape, rechunked to the chunks of the first.
    prepare : callable
        ``prepare(*blocks) -> (mask, flag_masks)`` on the blocks of `inputs` at one location:
        the boolean mask to label and boolean masks whose presence in each component is
        recorded (`Components.flags`).  Called again per block by `Components.select`.
    struct : ndarray of bool
        Structuring element (see `structure`); symmetric, of shape ``(3,) * ndim``.
    border_axes : sequence of int
        Axes whose first and last planes are the border (`Components.border`).
    first : bool
        Also record each component's first voxel in C order (`Components.first`).

    Returns
    -------
    Components
        The same partition as ``scipy.ndimage.label(mask, struct)`` on the whole array,
        whatever the chunking.

    Notes
    -----
    Every voxel pair adjacent under `struct` and lying in different blocks straddles a chunk
    border along at least one axis, and both lie in the two planes on either side of it.
    Labelling those two planes across the whole array therefore finds every connection
    between blocks, including diagonal ones across block corners.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = np.zeros((6, 6, 1), bool); x[:, 2] = True; x[0, :] = True
    >>> c = label_components([da.from_array(x, chunks=2)], lambda b: (b, []), structure(3, 1))
    >>> c.n_components, c.count[1:].tolist()
    (1, [11])
    """
    base = inputs[0]
    arrays = tuple([base, *(a.rechunk(base.chunks) for a in inputs[1:])])
    shape = tuple(int(s) for s in base.shape)
    face_axes = tuple(a for a in _connected_axes(struct) if base.numblocks[a] > 1)
    starts = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in base.chunks]
    block_ids = list(np.ndindex(*base.numblocks))
    delayed_blocks = [a.to_delayed(optimize_graph=False) for a in arrays]
    summarise = dask.delayed(_summarise, pure=True)
    tasks = []
    for bid in block_ids:
        location = tuple((int(starts[a][i]), int(starts[a][i + 1])) for a, i in enumerate(bid))
        blocks = [d[bid] for d in delayed_blocks]
        tasks.append(
            summarise(prepare, struct, shape, location, face_axes, tuple(border_axes), first, *blocks)
        )
    summaries: list[_Summary] = list(dask.compute(*tasks))
    return _merge(summaries, block_ids, base, arrays, prepare, struct, face_axes, starts, first)


def _merge(
    summaries: list[_Summary],
    block_ids: list[tuple[int, ...]],
    base: da.Array,
    arrays: tuple[da.Array, ...],
    prepare: Prepare,
    struct: np.ndarray,
    face_axes: tuple[int, ...],
    starts: list[np.ndarray],
    first: bool,
) -> Components:
    ns = np.array([s.n for s in summaries], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(ns)])[:-1]
    total = int(ns.sum())
    if total >= 2**32 - 1:
        raise ValueError(f"too many components to merge ({total}); use larger chunks.")
    n_flags = summaries[0].flags.shape[1] if summaries else 0
    counts = np.zeros(total + 1, dtype=np.int64)
    flags = np.zeros((total + 1, n_flags), dtype=bool)
    border = np.zeros(total + 1, dtype=bool)
    firsts = np.full(total + 1, np.iinfo(np.int64).max, dtype=np.int64)
    for s, off in zip(summaries, offsets, strict=True):
        counts[0] += s.counts[0]
        counts[off + 1 : off + 1 + s.n] = s.counts[1:]
        flags[off + 1 : off + 1 + s.n] = s.flags[1:]
        border[off + 1 : off + 1 + s.n] = s.border[1:]
        if first and s.first is not None:
            firsts[off + 1 : off + 1 + s.n] = s.first
    index = {bid: k for k, bid in enumerate(block_ids)}
    shape = tuple(int(x) for x in base.shape)
    edges = [np.zeros((2, 0), dtype=np.int64)]
    for a in face_axes:
        other = [b for b in range(base.ndim) if b != a]
        plane_shape = tuple(shape[b] for b in other)
        for i in range(base.numblocks[a] - 1):
            face = np.zeros((2, *plane_shape), dtype=np.int64)
            for side, bi in ((1, i), (0, i + 1)):
                ranges = [range(base.numblocks[b]) for b in other]
                for rest in itertools.product(*ranges):
                    bid = list(rest)
                    bid.insert(a, bi)
                    k = index[tuple(bid)]
                    plane = summaries[k].planes[(a, side)].astype(np.int64)
                    spans = [
                        slice(int(starts[b][j]), int(starts[b][j + 1]))
                        for b, j in zip(other, rest, strict=True)
                    ]
                    where: tuple[int | slice, ...] = (1 - side, *spans)
                    face[where] = np.where(plane > 0, plane + offsets[k], 0)
            edges.append(_face_edges(np.moveaxis(face, 0, a), struct))
    e = np.concatenate(edges, axis=1)
    graph = coo_matrix((np.ones(e.shape[1], dtype=np.int8), (e[0], e[1])), shape=(total + 1, total + 1))
    n_comp, comp = connected_components(graph, directed=False)
    comp = comp.astype(np.int64)
    # Node 0 (the background) has no edge and comes first: it is component 0.
    c_count = np.zeros(n_comp, dtype=np.int64)
    np.add.at(c_count, comp, counts)
    c_flags = np.zeros((n_comp, n_flags), dtype=bool)
    np.logical_or.at(c_flags, comp, flags)
    c_border = np.zeros(n_comp, dtype=bool)
    np.logical_or.at(c_border, comp, border)
    c_first = None
    if first:
        c_first = np.full(n_comp, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(c_first, comp, firsts)
        c_first[0] = -1
    luts = tuple(
        comp[np.concatenate([[0], np.arange(off + 1, off + 1 + s.n)])]
        for s, off in zip(summaries, offsets, strict=True)
    )
    return Components(c_count, c_first, c_flags, c_border, arrays, prepare, struct, luts)
