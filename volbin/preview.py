"""PNG previews of volumes: slices in anatomical orientation, overlays and histograms.

`preview` draws three orthogonal middle slices (or a montage of slices along one axis) of a 3D
volume, or of chosen volumes of a 4D stack (one row each), in the orientation the affine gives,
with the anatomical direction at each panel edge; a mask outline or a label map on top; and under
each row the histogram of the volume with the thresholds drawn on it.  Only the displayed slices
are read, and the histogram comes from volbin's streamed histograms: memory follows the chunk
size, not the volume.  Rendering uses matplotlib's Agg canvas directly (no pyplot, no display).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np

from .errors import OutputFileError, VolbinDataError
from .histogram import fine_nbins, group_histograms, group_range, percentiles_from_hist
from .volume import Volume, as_volume

__all__ = [
    "HIST_INCHES",
    "PANEL_INCHES",
    "Panel",
    "PreviewLayout",
    "preview",
    "preview_output",
    "preview_path",
]

#: Size in inches of one image panel (square, title band included).
PANEL_INCHES = 2.5
#: Height in inches of the histogram under each row of panels.
HIST_INCHES = 1.25
#: Panels per line of a montage; more slices wrap onto further lines.
MONTAGE_COLUMNS = 6
#: Side in voxels of the full-resolution crop of a dithered volume.
CROP = 64
#: Bins of the drawn histogram.
NBINS = 256
#: Most label classes `preview` colours (the label range, max - min + 1).
MAX_CLASSES = 4096

_TITLE_INCHES = 0.25
_PAD_INCHES = 0.04
_EDGE_COLOUR = "#ffd24d"
_MASK_COLOUR = "#00e5ff"
_NAN_COLOUR = "#ff00ff"
_THRESHOLD_COLOUR = "#d62728"
_RENDER_LOCK = threading.Lock()

# Anatomical name of the positive / negative direction of each world (RAS+) axis.
_POS = "RAS"
_NEG = "LPI"
_AXIS_LETTER = "xyz"
_VIEW_OF_WORLD = ("sagittal", "coronal", "axial")
_WORLD_OF_VIEW = {"sagittal": 0, "coronal": 1, "axial": 2}
# Per view: (world axis, sign) that displayed rows go towards (downwards), and that displayed
# columns go towards (rightwards), in neurological convention.  Sagittal panels show the
# anterior on the left in both conventions.
_VIEWS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "sagittal": ((2, -1), (1, -1)),
    "coronal": ((2, -1), (0, +1)),
    "axial": ((1, -1), (0, +1)),
}


@dataclass(frozen=True)
class Panel:
    """Where one displayed slice went, and how it maps back onto voxels.

    Attributes
    ----------
    row : int
        Row of the figure (index into the chosen volumes).
    volume : int or None
        Volume index along the volume axis (None for 3D data).
    view : {"axial", "coronal", "sagittal"}
        The anatomical plane closest to the slice.
    kind : {"slice", "blurred", "crop"}
        A plain slice; for a dithered volume, the Gaussian-blurred slice or the crop at full
        resolution.
    slice_axis, slice_index : int
        Array axis cut, and the index along it.
    row_axis, col_axis : int
        Array axes shown along the displayed rows (downwards) and columns (rightwards).
    row_flip, col_flip : bool
        Whether the displayed rows/columns run against the array index.
    origin : (int, int)
        Position of ``image[0, 0]`` within the whole reoriented slice (non-zero for crops).
    edges : dict
        Anatomical direction at each edge: ``{"left": "L", "right": "R", "top": "A", ...}``.
    image : 2D ndarray of float64
        The values displayed (raw units; blurred values for ``kind="blurred"``), reoriented:
        ``image[r, c]`` is drawn at row `r` from the top, column `c` from the left.
    bbox : (x0, y0, x1, y1)
        The image's extent in PNG pixels (origin at the top left, y downwards).
    label_xy : dict
        Centre in PNG pixels of each edge label, by edge.
    """

    row: int
    volume: int | None
    view: str
    kind: str
    slice_axis: int
    slice_index: int
    row_axis: int
    col_axis: int
    row_flip: bool
    col_flip: bool
    origin: tuple[int, int]
    edges: Mapping[str, str]
    image: np.ndarray = field(repr=False)
    shape: tuple[int, ...] = field(repr=False, default=())
    volume_axis: int | None = None
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    label_xy: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def voxel(self, r: int, c: int) -> tuple[int, ...]:
        """Array index (every axis of the volume) of the voxel shown at ``image[r, c]``."""
        nr = self.shape[self.row_axis]
        nc = self.shape[self.col_axis]
        i = r + self.origin[0]
        j = c + self.origin[1]
        index = [0] * len(self.shape)
        index[self.slice_axis] = self.slice_index
        index[self.row_axis] = nr - 1 - i if self.row_flip else i
        index[self.col_axis] = nc - 1 - j if self.col_flip else j
        if self.volume_axis is not None:
            index[self.volume_axis] = int(self.volume or 0)
        return tuple(index)

    def pixel(self, r: float, c: float) -> tuple[float, float]:
        """PNG pixel (x, y) of the centre of ``image[r, c]``."""
        x0, y0, x1, y1 = self.bbox
        h, w = self.image.shape
        return (x0 + (c + 0.5) / w * (x1 - x0), y0 + (r + 0.5) / h * (y1 - y0))


@dataclass(frozen=True)
class PreviewLayout:
    """What `preview` drew: the PNG's size and every panel and histogram on it.

    Attributes
    ----------
    size : (int, int)
        Width and height of the PNG in pixels.
    dpi : float
    axcodes : str
        Closest anatomical codes of the array's spatial axes (``nibabel.aff2axcodes``).
    panels : tuple of Panel
    histograms : tuple of dict
        Per row: ``row``, ``volume``, ``bbox`` (PNG pixels), ``lo``/``hi`` (finite range),
        ``window`` (displayed intensity range), ``counts``/``edges`` (the drawn histogram) and
        ``thresholds``.
    classes : dict
        Label value -> name of the classes in the legend (empty without `labels`).
    """

    size: tuple[int, int]
    dpi: float
    axcodes: str
    panels: tuple[Panel, ...]
    histograms: tuple[dict[str, Any], ...]
    classes: Mapping[int, str]


# --- orientation ---------------------------------------------------------------------------------
def _world_to_voxel(affine: np.ndarray) -> dict[int, tuple[int, int]]:
    """World axis -> (spatial voxel axis 0..2, sign) from the closest axis codes."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(affine)
    out: dict[int, tuple[int, int]] = {}
    free_world = [0, 1, 2]
    free_voxel = []
    for v, (w, s) in enumerate(ornt):
        if np.isfinite(w) and np.isfinite(s):
            out[int(w)] = (v, int(s))
            free_world.remove(int(w))
        else:
            free_voxel.append(v)
    # A degenerate affine (zero columns) says nothing of some axes: show them as voxel order.
    for v, w in zip(free_voxel, free_world, strict=True):
        out[w] = (v, 1)
    return out


def _axcodes(w2v: Mapping[int, tuple[int, int]]) -> str:
    codes = [""] * 3
    for w, (v, s) in w2v.items():
        codes[v] = _POS[w] if s > 0 else _NEG[w]
    return "".join(codes)


def _letter(world: int, sign: int) -> str:
    return _POS[world] if sign > 0 else _NEG[world]


def _zooms(affine: np.ndarray) -> tuple[float, float, float]:
    z = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return tuple(float(v) if v > 0 and math.isfinite(v) else 1.0 for v in z)  # type: ignore[return-value]


@dataclass(frozen=True)
class _Cut:
    """One slice to show: which voxels, in which order on screen."""

    view: str
    slice_spatial: int  # spatial voxel axis 0..2
    index: int
    row_spatial: int
    col_spatial: int
    row_flip: bool
    col_flip: bool
    edges: dict[str, str]


def _cut(view: str, index: int, w2v: Mapping[int, tuple[int, int]], convention: str) -> _Cut:
    (rw, rs), (cw, cs) = _VIEWS[view]
    if convention == "radiological" and cw == 0:
        cs = -cs
    vr, sr = w2v[rw]
    vc, sc = w2v[cw]
    edges = {
        "left": _letter(cw, -cs),
        "right": _letter(cw, cs),
        "top": _letter(rw, -rs),
        "bottom": _letter(rw, rs),
    }
    return _Cut(view, w2v[_WORLD_OF_VIEW[view]][0], index, vr, vc, sr != rs, sc != cs, edges)


def _orient(plane: np.ndarray, cut: _Cut) -> np.ndarray:
    """A 2D slice (remaining spatial axes in array order) -> displayed rows x columns."""
    if cut.row_spatial > cut.col_spatial:
        plane = plane.T
    if cut.row_flip:
        plane = plane[::-1, :]
    if cut.col_flip:
        plane = plane[:, ::-1]
    return plane


# --- validation ----------------------------------------------------------------------------------
def _load(obj: Any, name: str, volume_axis: int | None) -> tuple[Volume, bool]:
    if isinstance(obj, (str, os.PathLike)):
        from .io import load

        return load(obj, volume_axis=volume_axis), True
    try:
        vol, kind = as_volume(obj, volume_axis=volume_axis)
    except TypeError:
        raise TypeError(
            f"`{name}` must be a path, a numpy array, a dask array or a volbin.Volume; "
            f"got {type(obj).__name__}."
        ) from None
    return vol, kind == "volume"


def _overlay_volume(obj: Any, name: str, vol: Volume) -> Volume | None:
    if obj is None:
        return None
    ov, has_affine = _load(obj, name, vol.volume_axis)
    if ov.spatial_shape != vol.spatial_shape or (ov.ndim == 4 and ov.shape != vol.shape):
        raise ValueError(f"`{name}` must have the shape of `volume` {vol.shape}; got {ov.shape}.")
    if has_affine and not np.allclose(ov.affine, vol.affine, atol=1e-4):
        raise ValueError(
            f"`{name}` must lie on the grid of `volume` (same affine); got affine\n{ov.affine}\n"
            f"for a volume with affine\n{vol.affine}."
        )
    return ov


def _check_volumes(volumes: Any, vol: Volume) -> list[int | None]:
    n = vol.n_volumes
    if vol.volume_axis is None:
        if volumes not in (None, 0, [0], (0,)):
            raise ValueError(f"`volumes` applies to 4D data; got {volumes!r} for a 3D volume.")
        return [None]
    out: list[int | None] = []
    if volumes is None:
        out.extend(sorted({0, n // 2, n - 1}))
        return out
    items = [volumes] if isinstance(volumes, (int, np.integer)) else list(volumes)
    if not items or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in items):
        raise ValueError(f"`volumes` must be a volume index or a sequence of them; got {volumes!r}.")
    for i in items:
        if not -n <= int(i) < n:
            raise ValueError(f"`volumes` must index the {n} volumes (0 to {n - 1}); got {volumes!r}.")
        out.append(int(i) % n)
    return out


def _check_window(window: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(w) for w in window)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (0.0 <= lo < hi <= 100.0):
        raise ValueError(f"`window` must be two percentiles 0 <= low < high <= 100; got {window!r}.")
    return lo, hi


def _check_thresholds(thresholds: Any, rows: list[int | None]) -> dict[int | None, list[float]]:
    def values(t: Any) -> list[float]:
        items = np.atleast_1d(np.asarray(t, dtype=np.float64)).ravel()
        if not np.isfinite(items).all():
            raise ValueError(f"`thresholds` must be finite numbers; got {thresholds!r}.")
        return [float(x) for x in items]

    if thresholds is None:
        return {r: [] for r in rows}
    if isinstance(thresholds, Mapping):
        unknown = [k for k in thresholds if k not in rows]
        if unknown:
            raise ValueError(
                f"`thresholds` keys must be displayed volumes {rows}; got unknown keys {unknown}."
            )
        return {r: values(thresholds[r]) if r in thresholds else [] for r in rows}
    try:
        same = values(thresholds)
    except (TypeError, ValueError):
        raise ValueError(
            f"`thresholds` must be a number, a sequence of numbers or a mapping volume -> numbers; "
            f"got {thresholds!r}."
        ) from None
    return {r: same for r in rows}


def _montage_axis(axis: Any, w2v: Mapping[int, tuple[int, int]], vol: Volume) -> int:
    """Spatial voxel axis (0..2) of a montage."""
    if isinstance(axis, str) and axis.lower() in _WORLD_OF_VIEW:
        return w2v[_WORLD_OF_VIEW[axis.lower()]][0]
    return vol.spatial_axes.index(vol.axis_index(axis))


def _montage_indices(n: int, count: int, sign: int) -> list[int]:
    """`count` evenly spaced slices strictly inside [0, n), from inferior/posterior/left up."""
    if count >= n:
        idx = list(range(n))
    else:
        idx = sorted({int(np.rint(x)) for x in np.linspace(0, n - 1, count + 2)[1:-1]})
    return idx if sign > 0 else idx[::-1]


# --- streamed statistics -------------------------------------------------------------------------
def _row_data(vol: Volume, rows: list[int | None]) -> Volume:
    if vol.volume_axis is None:
        return vol
    index: list[Any] = [slice(None)] * vol.ndim
    index[vol.volume_axis] = list(rows)
    return Volume(vol.data[tuple(index)], vol.affine, volume_axis=vol.volume_axis)


def _histograms(vol: Volume, rows: list[int | None], window: tuple[float, float]) -> list[dict[str, Any]]:
    """Per row: finite range, drawn histogram and the percentile window (two streamed passes)."""
    sub = _row_data(vol, rows)
    grouping = sub.grouping("volume")
    lo, hi, _ = group_range(sub, grouping)
    lo, hi = np.atleast_1d(lo), np.atleast_1d(hi)
    empty = ~(hi >= lo)
    lo = np.where(empty, 0.0, lo)
    hi = np.where(empty, 0.0, hi)
    nb = fine_nbins(len(rows), NBINS)
    fine = group_histograms(
        sub, grouping, lo.reshape(grouping.group_shape), hi.reshape(grouping.group_shape), nb
    )
    fine = fine.reshape(len(rows), nb)
    pct = percentiles_from_hist(fine, lo, hi, window).reshape(len(rows), 2)
    out = []
    for i, r in enumerate(rows):
        counts = fine[i].reshape(NBINS, nb // NBINS).sum(axis=1)
        out.append(
            {
                "volume": r,
                "lo": float(lo[i]),
                "hi": float(hi[i]),
                "finite": not bool(empty[i]),
                "counts": counts,
                "edges": np.linspace(lo[i], hi[i], NBINS + 1),
                "percentiles": (float(pct[i, 0]), float(pct[i, 1])),
            }
        )
    return out


def _classes(labels: Volume, rows: list[int | None], names: Mapping[int, str] | None) -> dict[int, str]:
    """Label values present (other than 0), from a streamed range and integer histogram."""
    sub = _row_data(labels, rows) if labels.ndim == 4 else labels
    grouping = sub.grouping("stack")
    lo, hi, nonfinite = group_range(sub, grouping)
    if int(nonfinite) or not hi >= lo:
        raise VolbinDataError(
            f"`labels` must hold finite integer values; got {int(nonfinite)} non-finite voxels."
        )
    a, b = int(np.rint(lo)), int(np.rint(hi))
    if b - a + 1 > MAX_CLASSES:
        raise ValueError(f"`labels` must span at most {MAX_CLASSES} values (max - min + 1); got {a}..{b}.")
    nbins = max(b - a + 1, 2)
    counts = group_histograms(sub, grouping, np.array(a - 0.5), np.array(a - 0.5 + nbins), nbins)
    present = [a + i for i in np.flatnonzero(counts.ravel()) if a + i != 0]
    names = names or {}
    return {int(v): str(names.get(int(v), v)) for v in present}


def _label_colour(value: int) -> tuple[float, float, float]:
    import matplotlib

    colours: Any = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]
    return tuple(colours[(int(value) - 1) % len(colours)])


# --- drawing -------------------------------------------------------------------------------------
def _normalise(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        out = (image - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0)  # NaN stays NaN, drawn in the "bad" colour


def _display_window(
    hist: dict[str, Any] | None, slices: list[np.ndarray], binary: bool, window: tuple[float, float]
) -> tuple[float, float]:
    if binary:
        return (0.0, 1.0)
    if hist is not None:
        lo, hi = hist["percentiles"]
        if not hi > lo:
            lo, hi = hist["lo"], hist["hi"]
    else:
        finite = np.concatenate([s[np.isfinite(s)].ravel() for s in slices]) if slices else np.empty(0)
        if finite.size:
            lo, hi = (float(v) for v in np.percentile(finite, window))
            if not hi > lo:
                lo, hi = float(finite.min()), float(finite.max())
        else:
            lo, hi = 0.0, 1.0
    if not hi > lo:
        lo, hi = lo - 0.5, lo + 0.5  # a constant volume shows mid-grey
    return float(lo), float(hi)


def _draw_image(
    fig: Any,
    rect: tuple[float, float, float, float],
    image: np.ndarray,
    zooms: tuple[float, float],
    window: tuple[float, float],
    title: str,
    edges: Mapping[str, str],
    mask: np.ndarray | None,
    labels: np.ndarray | None,
    overlay: str,
    classes: Mapping[int, str],
) -> tuple[Any, list[Any]]:
    import matplotlib
    from matplotlib.patheffects import withStroke

    ax = fig.add_axes(rect)
    ax.set_facecolor("none")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    zr, zc = zooms
    nr, nc = image.shape
    height, width = nr * zr, nc * zc
    extent = (0.0, width, height, 0.0)
    cmap = matplotlib.colormaps["gray"].with_extremes(bad=_NAN_COLOUR)
    ax.imshow(
        _normalise(image, *window),
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        extent=extent,
        interpolation="nearest",
        aspect="equal",
    )
    ys = (np.arange(nr) + 0.5) * zr
    xs = (np.arange(nc) + 0.5) * zc
    if labels is not None:
        values = [v for v in classes if (labels == v).any()]
        if overlay == "fill":
            rgba = np.zeros((nr, nc, 4))
            for v in values:
                rgba[labels == v] = (*_label_colour(v), 0.45)
            ax.imshow(rgba, extent=extent, interpolation="nearest", aspect="equal")
        else:
            for v in values:
                inside = labels == v
                if not inside.all():
                    ax.contour(
                        xs,
                        ys,
                        inside.astype(np.float64),
                        levels=[0.5],
                        colors=[_label_colour(v)],
                        linewidths=0.8,
                    )
    if mask is not None:
        inside = mask.astype(bool)
        if overlay == "fill":
            rgba = np.zeros((nr, nc, 4))
            rgba[inside] = (*matplotlib.colors.to_rgb(_MASK_COLOUR), 0.4)
            ax.imshow(rgba, extent=extent, interpolation="nearest", aspect="equal")
        elif inside.any() and not inside.all():
            ax.contour(xs, ys, inside.astype(np.float64), levels=[0.5], colors=[_MASK_COLOUR], linewidths=0.8)
    ax.set_xlim(0.0, width)
    ax.set_ylim(height, 0.0)
    ax.set_title(title, fontsize=7, pad=2)
    pad_x, pad_y = 0.02 * width, 0.02 * height
    spots = {
        "left": (pad_x, height / 2, "left", "center"),
        "right": (width - pad_x, height / 2, "right", "center"),
        "top": (width / 2, pad_y, "center", "top"),
        "bottom": (width / 2, height - pad_y, "center", "bottom"),
    }
    texts = []
    for edge, (x, y, ha, va) in spots.items():
        texts.append(
            ax.text(
                x,
                y,
                edges[edge],
                ha=ha,
                va=va,
                color=_EDGE_COLOUR,
                fontsize=8,
                fontweight="bold",
                path_effects=[withStroke(linewidth=1.5, foreground="black")],
            )
        )
    return ax, texts


def _draw_histogram(
    fig: Any,
    rect: tuple[float, float, float, float],
    hist: dict[str, Any],
    window: tuple[float, float],
    thresholds: list[float],
    title: str,
    classes: Mapping[int, str],
) -> Any:
    from matplotlib.ticker import NullFormatter

    ax = fig.add_axes(rect)
    ax.tick_params(labelsize=6, length=2, pad=1)
    ax.set_title(title, fontsize=7, pad=2)
    if not hist["finite"]:
        ax.text(0.5, 0.5, "no finite voxel", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        counts, edges = hist["counts"], hist["edges"]
        if hist["hi"] > hist["lo"]:
            ax.stairs(counts, edges, fill=True, color="#4a6fa5")
            left, right = hist["lo"], hist["hi"]
        else:  # a constant volume: one bar at its value
            v = hist["lo"]
            half = max(abs(v) * 0.01, 0.5)
            ax.bar([v], [int(counts.sum())], width=0.04 * half, color="#4a6fa5")
            left, right = v - half, v + half
        ax.set_yscale("log", nonpositive="clip")
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.axvspan(window[0], window[1], color="#999999", alpha=0.15, lw=0)
        for t in thresholds:
            left, right = min(left, t), max(right, t)
        span = right - left
        ax.set_xlim(left - 0.02 * span, right + 0.02 * span)
        for k, t in enumerate(thresholds):
            ax.axvline(t, color=_THRESHOLD_COLOUR, lw=1.0, label=f"threshold {t:.5g}" if k < 8 else None)
        if thresholds:
            ax.legend(loc="upper left", fontsize=6, frameon=False)
    if classes:
        _legend_classes(ax, classes)
    return ax


def _legend_classes(ax: Any, classes: Mapping[int, str]) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(color=_label_colour(v), label=f"{v}: {name}" if name != str(v) else f"{v}")
        for v, name in classes.items()
    ]
    legend = ax.legend(
        handles=handles[:20], loc="upper right", fontsize=6, frameon=False, ncols=1 + len(handles[:20]) // 7
    )
    ax.add_artist(legend)


def _px_bbox(ax: Any, extent_xy: tuple[float, float], height_px: int) -> tuple[float, float, float, float]:
    (x0, y0), (x1, y1) = ax.transData.transform([(0.0, 0.0), extent_xy])
    # data y grows downwards (inverted axis); display y grows upwards.
    return (float(x0), float(height_px - y0), float(x1), float(height_px - y1))


def _centre_px(artist: Any, renderer: Any, height_px: int) -> tuple[float, float]:
    bb = artist.get_window_extent(renderer)
    return (float((bb.x0 + bb.x1) / 2), float(height_px - (bb.y0 + bb.y1) / 2))


def _write_atomic(path: Path, data: bytes, force: bool) -> Path:
    """Write `data` to `path` atomically: a temporary name in the same folder, fsync, rename."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise OutputFileError(f"{folder}: output folder does not exist; create it first.")
    if os.path.lexists(path) and not force:
        raise OutputFileError(f"{path} exists; pass force=True (CLI: --force) to overwrite")
    from .io import write_atomic

    try:
        return write_atomic(path, data)
    except OSError as exc:
        raise OutputFileError(f"{path}: cannot write ({exc.strerror or exc}).") from exc


# --- the public function -------------------------------------------------------------------------
def preview(
    volume: Any,
    *,
    mask: Any = None,
    labels: Any = None,
    label_names: Mapping[int, str] | None = None,
    thresholds: float | Sequence[float] | Mapping[int, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    slices: int | None = None,
    axis: int | str | None = None,
    volumes: int | Sequence[int] | None = None,
    volume_axis: int | None = None,
    convention: Literal["neurological", "radiological"] = "neurological",
    window: tuple[float, float] = (1.0, 99.0),
    overlay: Literal["outline", "fill"] | None = None,
    dithered: bool = False,
    sigma: float | None = None,
    histogram: bool = True,
    dpi: float = 100.0,
    return_layout: bool = False,
) -> bytes | tuple[bytes, PreviewLayout]:
    """Render slices of a volume, with overlays and its histogram, as a PNG.

    Parameters
    ----------
    volume : (X, Y, Z[, T]) Volume, ndarray, dask array, or path
        What to show (a path is opened with `volbin.load`).  Only the displayed slices are read.
    mask : (X, Y, Z[, T]) array-like, Volume or path, optional
        A binary volume on the same grid, drawn as an outline or a translucent fill.
    labels : (X, Y, Z[, T]) array-like, Volume or path, optional
        A label map (integer values; 0 is background) on the same grid: one colour per class,
        and a legend of the classes present.
    label_names : mapping int -> str, optional
        Names of label values for the legend.  Only with `labels`.
    thresholds : float, sequence of float, or mapping volume -> float(s), optional
        Values in the volume's raw units, drawn as vertical lines on the histograms: the same
        for every row, or per volume index of 4D data.
    out : str or path-like, optional
        Also write the PNG there, atomically (temporary name in the same folder, fsync, rename).
    force : bool, optional
        Overwrite an existing `out`.
    slices : int, optional
        None: the three orthogonal middle slices.  N: a montage of N evenly spaced slices
        along `axis` (all of them if N exceeds their number), wrapped at `MONTAGE_COLUMNS`.
    axis : {"x", "y", "z", 0, 1, 2, "axial", "coronal", "sagittal"}, optional
        Axis of the montage (default "z"): a spatial array axis, or the array axis closest to
        the named plane's normal.  Only with `slices`.
    volumes : int or sequence of int, optional
        Volumes of 4D data to show, one row each (default: the first, middle and last).
    volume_axis : int, optional
        Volume axis of 4D numpy/dask input (default 3).
    convention : {"neurological", "radiological"}
        Neurological shows the subject's left on the left of axial and coronal panels;
        radiological on the right.  Superior is up; sagittal panels show anterior on the left.
    window : (float, float)
        Percentiles of the finite voxels mapped to black and white (default 1 and 99).
    overlay : {"outline", "fill"}, optional
        How `mask` and `labels` are drawn (default: outline for a mask, fill for labels).
    dithered : bool
        `volume` is a binary dithered volume: each slice is shown Gaussian-blurred (as the eye
        sees it from a distance) beside a `CROP`-voxel crop of its centre at full resolution.
    sigma : float, optional
        Standard deviation of the blur in voxels, within the slice (default 1.5).  Only with
        `dithered`.
    histogram : bool
        Draw the histogram under each row.  Without it nothing but the displayed slices is
        read, and `window` applies to the displayed voxels instead of the whole volume.
    dpi : float
        Pixels per inch; a panel is `PANEL_INCHES` square, a histogram `HIST_INCHES` high.
    return_layout : bool
        Also return a `PreviewLayout` (where each panel, label and histogram lies).

    Returns
    -------
    png : bytes
        The PNG file's bytes.
    layout : PreviewLayout
        Only with `return_layout`.

    Raises
    ------
    ValueError, TypeError
        An option out of range, an option the others do not use, an overlay of another shape
        or grid.
    VolbinDataError
        `labels` has non-finite values.
    OutputFileError
        `out`'s folder is missing, `out` exists without `force`, or it cannot be written.

    Notes
    -----
    Panels are voxel slices, not resampled.  Which array axis is shown as which anatomical
    direction comes from the closest axis codes of the affine
    (`nibabel.orientations.io_orientation`, as in `nibabel.aff2axcodes`); for an oblique affine
    the edge labels name the closest directions, correct up to the obliquity.  Voxel sizes
    (the norms of the affine's columns) set each panel's aspect ratio.

    With `histogram`, two streamed passes over the shown volumes (range, then exact
    histograms of 65536 bins) give the histogram and the percentile window, in memory bounded
    by the chunk size; with labels, two more over the label map find the classes present.  A
    slice of a lazily derived volume computes the blocks it crosses.  NaN voxels are drawn in
    magenta; +-Inf as white/black.

    Examples
    --------
    >>> import io
    >>> import numpy as np
    >>> from PIL import Image
    >>> volume = np.random.default_rng(0).normal(size=(20, 24, 16))
    >>> png, layout = preview(volume, thresholds=0.5, dpi=40, return_layout=True)
    >>> Image.open(io.BytesIO(png)).size == layout.size == (300, 150)
    True
    >>> [(p.view, p.edges["left"], p.edges["top"]) for p in layout.panels]
    [('sagittal', 'A', 'S'), ('coronal', 'L', 'S'), ('axial', 'L', 'A')]
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    if convention not in ("neurological", "radiological"):
        raise ValueError(f"`convention` must be 'neurological' or 'radiological'; got {convention!r}.")
    if overlay not in (None, "outline", "fill"):
        raise ValueError(f"`overlay` must be 'outline' or 'fill'; got {overlay!r}.")
    if overlay is not None and mask is None and labels is None:
        raise ValueError(
            f"`overlay` applies to a `mask` or `labels`; got overlay={overlay!r} without either."
        )
    if label_names is not None and labels is None:
        raise ValueError("`label_names` applies to `labels`; got label_names without labels.")
    if slices is not None and (
        isinstance(slices, bool) or not isinstance(slices, (int, np.integer)) or slices < 1
    ):
        raise ValueError(f"`slices` must be a positive int (a montage) or None; got {slices!r}.")
    if axis is not None and slices is None:
        raise ValueError(f"`axis` applies to a montage (`slices`=N); got axis={axis!r} without slices.")
    if sigma is not None and not dithered:
        raise ValueError(f"`sigma` applies to a dithered volume (`dithered`=True); got sigma={sigma!r}.")
    if sigma is None:
        sigma = 1.5
    if not (isinstance(sigma, (int, float, np.floating)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"`sigma` must be a finite number >= 0 (voxels); got {sigma!r}.")
    if not (isinstance(dpi, (int, float, np.floating)) and 1 <= dpi <= 1200):
        raise ValueError(f"`dpi` must be a number in [1, 1200]; got {dpi!r}.")
    win = _check_window(window)

    vol, _ = _load(volume, "volume", volume_axis)
    mvol = _overlay_volume(mask, "mask", vol)
    lvol = _overlay_volume(labels, "labels", vol)
    rows = _check_volumes(volumes, vol)
    lines = _check_thresholds(thresholds, rows)
    if overlay is None:
        overlay = "fill" if lvol is not None and mvol is None else "outline"

    w2v = _world_to_voxel(vol.affine)
    spatial_shape = vol.spatial_shape
    if slices is None:
        cuts = [_cut(v, spatial_shape[w2v[w][0]] // 2, w2v, convention) for w, v in enumerate(_VIEW_OF_WORLD)]
        per_line = 3
    else:
        sv = _montage_axis("z" if axis is None else axis, w2v, vol)
        world = next(w for w, (v, _s) in w2v.items() if v == sv)
        view = _VIEW_OF_WORLD[world]
        indices = _montage_indices(spatial_shape[sv], int(slices), w2v[world][1])
        cuts = [_cut(view, k, w2v, convention) for k in indices]
        per_line = MONTAGE_COLUMNS // 2 if dithered else MONTAGE_COLUMNS
    binary = dithered or vol.dtype == np.bool_

    # Every displayed slice of every layer, computed in one graph.
    def plane(v: Volume, r: int | None, cut: _Cut) -> da.Array:
        index: list[Any] = [slice(None)] * v.ndim
        index[v.spatial_axes[cut.slice_spatial]] = cut.index
        if v.volume_axis is not None:
            index[v.volume_axis] = r
        return v.data[tuple(index)]

    wanted: list[da.Array | None] = []
    for r in rows:
        for cut in cuts:
            wanted.append(plane(vol, r, cut))
            wanted.append(plane(mvol, r, cut) if mvol is not None else None)
            wanted.append(plane(lvol, r, cut) if lvol is not None else None)
    computed = iter(dask.compute(*[w for w in wanted if w is not None]))
    planes = [None if w is None else np.asarray(next(computed)) for w in wanted]

    hists = _histograms(vol, rows, win) if histogram else [None] * len(rows)
    classes = _classes(lvol, rows, label_names) if lvol is not None else {}
    zooms = _zooms(vol.affine)

    lines_per_row = math.ceil(len(cuts) / per_line)
    ncols = min(len(cuts), per_line) * (2 if dithered else 1)
    width_in = ncols * PANEL_INCHES
    row_in = lines_per_row * PANEL_INCHES + (HIST_INCHES if histogram else 0.0)
    height_in = len(rows) * row_in
    # matplotlib's text rendering and font cache are not thread-safe: previews of several
    # files drawn at once in one process (a batch worker's threads) take turns here.
    with _RENDER_LOCK:
        fig = Figure(figsize=(width_in, height_in), dpi=dpi, facecolor="white")
        canvas = FigureCanvasAgg(fig)

        def rect(x_in: float, y_in_top: float, w_in: float, h_in: float) -> tuple[float, float, float, float]:
            return (x_in / width_in, 1.0 - (y_in_top + h_in) / height_in, w_in / width_in, h_in / height_in)

        drawn: list[tuple[Any, list[Any], dict[str, Any], tuple[float, float]]] = []
        hist_axes: list[tuple[Any, dict[str, Any]]] = []
        k = 0
        for i, r in enumerate(rows):
            top = i * row_in
            row_slices = [planes[3 * (i * len(cuts) + j)] for j in range(len(cuts))]
            disp_window = _display_window(hists[i], [s for s in row_slices if s is not None], binary, win)
            for j, cut in enumerate(cuts):
                img, msk, lab = planes[k : k + 3]
                k += 3
                assert img is not None
                img = _orient(img.astype(np.float64), cut)
                msk = None if msk is None else _orient(msk, cut)
                lab = (
                    None
                    if lab is None
                    else np.rint(_orient(np.asarray(lab, np.float64), cut)).astype(np.int64)
                )
                zr, zc = zooms[cut.row_spatial], zooms[cut.col_spatial]
                line, col = divmod(j, per_line)
                y0 = top + line * PANEL_INCHES
                name = f"{cut.view} {_AXIS_LETTER[cut.slice_spatial]}={cut.index}"
                if r is not None:
                    name += f"  vol {r}"
                if np.isnan(img).any():
                    name += "  (NaN magenta)"
                if not dithered:
                    parts = [("slice", img, (0, 0), name)]
                else:
                    parts = [
                        (kd, sh, og, f"{name} {sfx}") for kd, sh, og, sfx in _dither_parts(img, float(sigma))
                    ]
                for p, (kind, shown, origin, title) in enumerate(parts):
                    x0 = (col * len(parts) + p) * PANEL_INCHES
                    area = rect(
                        x0 + _PAD_INCHES,
                        y0 + _TITLE_INCHES,
                        PANEL_INCHES - 2 * _PAD_INCHES,
                        PANEL_INCHES - _TITLE_INCHES - _PAD_INCHES,
                    )
                    sub = (
                        slice(origin[0], origin[0] + shown.shape[0]),
                        slice(origin[1], origin[1] + shown.shape[1]),
                    )
                    ax, texts = _draw_image(
                        fig,
                        area,
                        shown,
                        (zr, zc),
                        disp_window,
                        title,
                        cut.edges,
                        None if msk is None else msk[sub],
                        None if lab is None else lab[sub],
                        overlay,
                        classes,
                    )
                    if kind == "blurred" and len(parts) > 1:
                        _mark_crop(ax, parts[1][2], parts[1][1].shape, (zr, zc))
                    info: dict[str, Any] = {
                        "row": i,
                        "volume": r,
                        "view": cut.view,
                        "kind": kind,
                        "slice_axis": vol.spatial_axes[cut.slice_spatial],
                        "slice_index": cut.index,
                        "row_axis": vol.spatial_axes[cut.row_spatial],
                        "col_axis": vol.spatial_axes[cut.col_spatial],
                        "row_flip": cut.row_flip,
                        "col_flip": cut.col_flip,
                        "origin": origin,
                        "edges": dict(cut.edges),
                        "image": shown,
                        "shape": vol.shape,
                        "volume_axis": vol.volume_axis,
                    }
                    drawn.append((ax, texts, info, (shown.shape[1] * zc, shown.shape[0] * zr)))
            if histogram:
                h = hists[i]
                assert h is not None
                hy = top + lines_per_row * PANEL_INCHES
                area = rect(0.55, hy + 0.2, width_in - 0.7, HIST_INCHES - 0.5)
                title = "histogram (log counts)" + (f", vol {r}" if r is not None else "")
                ax = _draw_histogram(fig, area, h, disp_window, lines[r], title, classes if i == 0 else {})
                hist_axes.append((ax, {**h, "row": i, "window": disp_window, "thresholds": lines[r]}))
        if classes and not histogram:
            _legend_classes(drawn[-1][0], classes)

        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        height_px, width_px = rgba.shape[:2]
        renderer = canvas.get_renderer()
        panels = []
        for ax, texts, info, extent in drawn:
            label_xy = {
                edge: _centre_px(t, renderer, height_px)
                for edge, t in zip(("left", "right", "top", "bottom"), texts, strict=True)
            }
            panels.append(Panel(**info, bbox=_px_bbox(ax, extent, height_px), label_xy=label_xy))
        histograms = []
        for ax, h in hist_axes:
            bb = ax.get_window_extent(renderer)
            h["bbox"] = (float(bb.x0), float(height_px - bb.y1), float(bb.x1), float(height_px - bb.y0))
            del h["percentiles"]
            histograms.append(h)

        buf = _png(Image.fromarray(rgba[..., :3].copy()), dpi)
    if out is not None:
        _write_atomic(Path(out), buf, force)
    if not return_layout:
        return buf
    layout = PreviewLayout(
        size=(int(width_px), int(height_px)),
        dpi=float(dpi),
        axcodes=_axcodes(w2v),
        panels=tuple(panels),
        histograms=tuple(histograms),
        classes=dict(classes),
    )
    return buf, layout


# --- the preview of a binarized output ------------------------------------------------------------
def preview_path(output: str | os.PathLike[str]) -> Path:
    """The preview PNG of an output: beside it, its image extension replaced by ``.png``.

    Examples
    --------
    >>> preview_path("masks/sub-01_T1w_mask.nii.gz").as_posix()
    'masks/sub-01_T1w_mask.png'
    >>> preview_path("out/run_bin.zarr").name
    'run_bin.png'
    """
    from .formats import image_ext

    path = Path(output)
    ext = image_ext(path.name) or path.suffix
    return path.with_name(path.name[: len(path.name) - len(ext)] + ".png")


def _decision_lines(decision: Mapping[str, Any], scope: Any) -> Any:
    """The thresholds a preview draws from a sidecar's decision: raw values, None per slice."""
    keys = ("low_raw", "high_raw") if "low_raw" in decision else ("threshold_raw", "upper_raw")
    values = [decision.get(k) for k in keys]
    if all(v is None or isinstance(v, float) for v in values):
        finite = [v for v in values if isinstance(v, float)]
        return finite or None
    if scope == "volume" and all(v is None or isinstance(v, list) for v in values):
        # one threshold (or pair) per volume of 4D data; per-slice values are too many to draw
        per = {}
        for v in values:
            for i, t in enumerate(v or []):
                if isinstance(t, float):
                    per.setdefault(i, []).append(t)
        return per or None
    return None


def preview_output(
    output: str | os.PathLike[str],
    volume: Any,
    *,
    force: bool = False,
    volume_axis: int | None = None,
    dpi: float = 100.0,
) -> Path:
    """Write the preview PNG of a binarized output beside it and name it in its sidecar.

    The PNG (`preview_path`) shows `volume`'s slices with the output's outline over them and
    the histogram with the thresholds its sidecar records (per volume of 4D data; none for
    per-slice thresholds); a stochastic, dithered or ordered output is shown blurred, as
    `preview` with ``dithered=True`` draws it.  The sidecar names the PNG (``"preview"``)
    before the PNG is written, so that an interruption leaves a sidecar naming a missing
    preview, never a preview no sidecar names.

    Parameters
    ----------
    output : str or path-like
        An image volbin wrote, with its sidecar.
    volume : Volume, array or path
        The input it was made from (what the slices show).
    force : bool
        Overwrite an existing PNG at the preview's name.
    volume_axis : int, optional
        Volume axis of 4D numpy input (see `preview`).
    dpi : float
        Pixels per inch of the PNG.

    Returns
    -------
    Path
        The PNG written.

    Raises
    ------
    OutputFileError
        The PNG exists without `force`, or cannot be written.
    InputFileError
        `output` has no readable sidecar.
    """
    from .io import read_sidecar, update_sidecar
    from .recipe import RENDERING_METHODS

    output = Path(output)
    png = preview_path(output)
    if os.path.lexists(png) and not force:
        raise OutputFileError(f"{png} exists; pass force=True (CLI: --force) to overwrite")
    record = read_sidecar(output)
    steps = [s for s in record.get("steps") or [] if isinstance(s, dict)]
    decision = (steps[-1].get("decision") or {}) if steps else {}
    scope = (steps[-1].get("recipe") or {}).get("scope") if steps else None
    update_sidecar(output, preview=png.name)
    if decision.get("method") in RENDERING_METHODS:
        preview(output, out=png, force=True, dithered=True, volume_axis=volume_axis, dpi=dpi)
    else:
        preview(
            volume,
            mask=output,
            thresholds=_decision_lines(decision, scope),
            out=png,
            force=True,
            volume_axis=volume_axis,
            dpi=dpi,
        )
    return png


def _png(img: Any, dpi: float) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG", dpi=(dpi, dpi))
    return buf.getvalue()


def _dither_parts(img: np.ndarray, sigma: float) -> list[tuple[str, np.ndarray, tuple[int, int], str]]:
    """The blurred slice and a centred crop at full resolution."""
    from scipy import ndimage

    values = np.where(np.isfinite(img), img, 0.0)
    blurred = ndimage.gaussian_filter(values, sigma, mode="reflect") if sigma > 0 else values
    nr, nc = img.shape
    hr, hc = min(CROP, nr), min(CROP, nc)
    r0, c0 = (nr - hr) // 2, (nc - hc) // 2
    crop = img[r0 : r0 + hr, c0 : c0 + hc]
    return [("blurred", blurred, (0, 0), f"blurred {sigma:g}"), ("crop", crop, (r0, c0), "crop")]


def _mark_crop(ax: Any, origin: tuple[int, int], shape: tuple[int, int], zooms: tuple[float, float]) -> None:
    from matplotlib.patches import Rectangle

    zr, zc = zooms
    ax.add_patch(
        Rectangle(
            (origin[1] * zc, origin[0] * zr),
            shape[1] * zc,
            shape[0] * zr,
            fill=False,
            edgecolor=_MASK_COLOUR,
            lw=0.8,
        )
    )
