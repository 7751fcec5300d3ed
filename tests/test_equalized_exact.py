"""Histograms of equalised values (`rescale.equalized_histograms`) against the histograms of
the values `Transform.apply` writes: exact integer counts for every input type, scope,
rescale method, layout and vector version, from the fitted fine histograms or not; and
Otsu thresholds of equalised data against scikit-image on `volbin.rescale`'s output."""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import filters

import volbin
from volbin import _kernels as K
from volbin._tone_kernels import binned_dtype, equalized_table
from volbin.errors import VolbinWarning
from volbin.histogram import fine_nbins, group_histograms
from volbin.kernels import _tone
from volbin.recipe import Recipe
from volbin.rescale import equalized_histograms, fit_transform
from volbin.volume import Volume, as_volume

#: Every type the loops take, and those converted before them.
DTYPES = [
    "uint8", "int16", "uint16", "int32", "float32", "float64",
    "int8", "uint32", "int64", "uint64", "float16", "bool", ">f8", ">i2", ">f2",
]  # fmt: skip


def fit(vol, scope, method="minmax", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        return fit_transform(vol, vol.grouping(scope), Recipe(curve="equalize", rescale=method, **kw))


def assert_exact(vol, tr, nbins=256, lo=None, hi=None, levels=(None,)):
    """Both routes of `equalized_histograms` equal the histograms of ``tr.apply``'s values
    (at each vector level of `levels`; None: the one in use)."""
    g = tr.grouping
    lo = tr.from_raw(tr.data_min) if lo is None else np.broadcast_to(np.float64(lo), g.group_shape)
    hi = tr.from_raw(tr.data_max) if hi is None else np.broadcast_to(np.float64(hi), g.group_shape)
    ref = group_histograms(vol, g, lo, hi, nbins, pre=tr.apply)
    no_fine = dataclasses.replace(tr, eq_fine=None)
    for level in levels:
        try:
            if level is not None:
                _tone._set_simd_level(level)
            np.testing.assert_array_equal(equalized_histograms(vol, tr, lo, hi, nbins), ref)
        finally:
            if level is not None:
                _tone._set_simd_level(99)
    np.testing.assert_array_equal(equalized_histograms(vol, no_fine, lo, hi, nbins), ref)
    return ref


def make_data(rng, dtype, kind, shape):
    """Adversarial values of `dtype`: spikes, huge offsets, subnormal ranges, values on the
    fine-bin edges of both kinds, the type's extremes, constants; NaN and ±Inf for floats."""
    d = np.dtype(dtype)
    if d == np.bool_:
        return rng.random(shape) < (0.0 if kind == "constant" else 0.3)
    n = int(np.prod(shape))
    if d.kind in "iu":
        info = np.iinfo(d)
        if kind == "extremes":
            v = rng.integers(info.min, info.max, n, endpoint=True, dtype=d.newbyteorder("="))
            v[:2] = info.min, info.max
        elif kind == "constant":
            v = np.full(n, min(info.max, 7))
        else:
            v = np.clip(np.round(rng.gamma(2.0, 40.0, n)), info.min, info.max)
            if kind == "spike":
                v[rng.random(n) < 0.7] = 0
        return v.astype(d).reshape(shape)
    finfo = np.finfo(d)
    if kind == "spike":
        v = rng.gamma(2.0, 40.0, n)
        v[rng.random(n) < 0.7] = -0.0 if rng.random() < 0.5 else 0.0
    elif kind == "offset":
        v = 1e12 + rng.normal(size=n) * 1e-2 if d.itemsize == 8 else 3e4 + rng.normal(size=n) * 1e-2
    elif kind == "tiny":  # a range of a few subnormals (or, in float16, of its smallest steps)
        v = rng.integers(0, 40, n) * float(finfo.smallest_subnormal)
    elif kind == "edges":
        a, b = sorted(rng.normal(size=2) * 100)
        a, b = float(d.type(a)), float(d.type(b))
        nb = fine_nbins(1)
        k = rng.integers(0, nb + 1, n)
        on = np.where(rng.random(n) < 0.5, a + (b - a) * (k / nb), k * ((b - a) / nb) + a).astype(d)
        step = rng.integers(-1, 2, n)
        below, above = np.nextafter(on, d.type(-np.inf)), np.nextafter(on, d.type(np.inf))
        v = np.where(step < 0, below, np.where(step > 0, above, on))
        v = np.clip(v.astype(np.float64), a, b)
        v[:2] = a, b
    elif kind == "extremes":
        v = rng.uniform(-1.0, 1.0, n) * float(finfo.max) / 2
        v[:2] = -float(finfo.max) / 2, float(finfo.max) / 2
    elif kind == "constant":
        v = np.full(n, 2.5)
    else:
        v = rng.normal(size=n) * 50.0
    v = v.astype(d)
    special = rng.random(n)
    v[special < 0.03] = np.nan
    v[(special >= 0.03) & (special < 0.05)] = np.inf
    v[(special >= 0.05) & (special < 0.06)] = -np.inf
    return v.reshape(shape)


def odd_chunks(draw, shape):
    chunks = []
    for s in shape:
        cuts = sorted(draw(st.sets(st.integers(1, s - 1), max_size=2))) if s > 1 else []
        chunks.append(tuple(b - a for a, b in itertools.pairwise([0, *cuts, s])))
    return tuple(chunks)


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["normal", "spike", "offset", "tiny", "edges", "extremes", "constant"]))
    layout = draw(st.sampled_from(["3d", "4d-last", "4d-first"]))
    shape = {"3d": (6, 5, 7), "4d-last": (5, 4, 6, 3), "4d-first": (3, 5, 4, 6)}[layout]
    methods = ["minmax", "percentile", "none", "fixed"] + (["dtype"] if np.dtype(dtype).kind in "iub" else [])
    return (
        dtype,
        kind,
        shape,
        None if layout == "3d" else (0 if layout == "4d-first" else 3),
        draw(st.sampled_from(["stack", "volume", "slice"])),
        draw(st.sampled_from(methods)),
        draw(st.sampled_from([0, 2, 3])),
        draw(st.sampled_from([2, 7, 256, 301])),
        odd_chunks(draw, shape) if draw(st.booleans()) else None,
        draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=40, deadline=None, database=None)
@given(cases())
def test_equalized_histograms_are_exact_for_every_type_scope_method_and_level(case):
    dtype, kind, shape, vaxis, scope, method, level, nbins, chunks, seed = case
    rng = np.random.default_rng(seed)
    x = make_data(rng, dtype, kind, shape)
    if scope == "slice" and np.dtype(dtype).kind == "f":
        z = 3 if vaxis == 0 else 2  # the array axis of z
        x[(slice(None),) * z + (1,)] = np.nan  # a slice with no finite voxel
        x[(slice(None),) * z + (2,)] = 1.0  # a constant one
    kw = {}
    if method == "fixed":
        finite = x[np.isfinite(x.astype(np.float64))].astype(np.float64)
        q = np.quantile(finite, [0.2, 0.8]) if finite.size else np.array([0.0, 1.0])
        kw["value_range"] = (float(q[0]), float(q[1]) + 1.0)
    if chunks is None:  # numpy input, reduced without a graph
        vol, _ = as_volume(x, chunk_bytes=max(8, x.nbytes // 3), volume_axis=vaxis)
    else:
        vol = Volume(da.from_array(x, chunks=chunks), volume_axis=vaxis)
    assert _tone._set_simd_level(level) <= level
    try:
        tr = fit(vol, scope, method, **kw)
        # The fine histograms are kept for the data they were fitted on.
        assert tr.eq_fine is not None and tr.eq_fine[3] == vol.data.name
        assert_exact(vol, tr, nbins)
        assert_exact(vol, tr, nbins, lo=0.0, hi=1.0)  # a range of its own, around constant groups too
    finally:
        _tone._set_simd_level(99)


@pytest.mark.parametrize(
    "dtype, lo, hi", [("int16", -32768, 32767), ("uint16", 0, 65535), ("int32", -70000, 70001)]
)
def test_equalized_histograms_of_every_integer_of_a_range(dtype, lo, hi):
    """Every integer of the range: with 65536 fine bins, integers fall on (or next to) the fine
    edges, and every knot interval is tested, at each vector level."""
    rng = np.random.default_rng(4)
    v = np.arange(lo, hi + 1)
    v = np.concatenate([rng.permutation(v), rng.choice(v, -v.size % 1024)])
    x = v.astype(dtype).reshape(-1, 32, 32)
    vol = Volume(da.from_array(x, chunks=(x.shape[0] // 3 + 1, 32, 20)))
    tr = fit(vol, "stack")
    assert_exact(vol, tr, 256, levels=(0, 2, 3))
    assert_exact(vol, fit(vol, "slice"), 7)


@pytest.mark.parametrize(
    "lo, hi",
    [(0.0, 1e-310), (0.0, 5e-324), (0.25, 0.25 + 1e-300), (-np.inf, np.inf), (0.0, 1.0)],
)
def test_equalized_histograms_over_ranges_whose_bin_positions_overflow(lo, hi, tone_level):
    """Decision ranges so narrow that ``nbins / (hi - lo)`` is inf (or so wide that it is 0):
    a value on `lo` has a NaN position, which np.histogram's assignment takes as bin 0 (it
    once gave a bin far outside the counts, and a crash)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 7, 8))
    x[x < -0.5] = -0.5  # a spike at the minimum: equalised values on 0
    vol = Volume(da.from_array(x, chunks=(3, 7, 5)))
    tr = fit(vol, "stack")
    ref = assert_exact(vol, tr, 256, lo=lo, hi=hi)
    assert ref.sum() == x.size
    table = equalized_table(tr.eq_cdf, lo, hi, 256)
    assert table.min() >= -1 and table.max() < 256


@pytest.mark.parametrize(
    "method, kw",
    [
        ("none", {}),
        ("fixed", {"value_range": (0.0, 10.0)}),
        ("fixed", {"value_range": (5.0, 10.0)}),
        ("minmax", {}),
    ],
)
def test_equalized_histograms_of_constant_groups_with_infinities(method, kw, tone_level):
    """A constant group is mapped by np.interp on knots all at its value: finite values and
    +Inf to the curve's last value (1 for rescale 'none' or a range around the value), -Inf
    to its first; the counts over a range that separates them follow."""
    x = np.full((4, 5, 6, 2), 3.0)
    x[0, 0, 0, 0], x[1, 0, 0, 0], x[2, 0, 0, 0] = np.inf, -np.inf, np.nan
    x[..., 1] = np.arange(x[..., 1].size).reshape(x.shape[:3])  # a group that is not constant
    vol = Volume(da.from_array(x, chunks=(3, 5, 4, 1)))
    for scope in ("volume", "stack"):
        tr = fit(vol, scope, method, **kw)
        ref = assert_exact(vol, tr, 256, lo=0.0, hi=1.0)
        if scope == "volume":
            r = tr.apply(x[..., :1], [(0, 4), (0, 5), (0, 6), (0, 1)])
            assert ref[0, 0] == (r == 0).sum() and ref[0, 255] == (r == 1).sum()


@pytest.mark.parametrize("curve", ["linear", "equalize"])
def test_big_endian_float64_is_used_at_its_precision(curve):
    """Big-endian float64 reaches the loops as native float64, not rounded to float32: the
    rescale, thresholds and masks of native data."""
    rng = np.random.default_rng(0)
    x = 1e6 + rng.random((8, 9, 10)) * 1e-3  # distinct in float64, one float32 value
    xb = x.astype(">f8")
    assert K.native(xb).dtype == np.float64 and K.native(np.zeros(3, ">f2")).dtype == np.float32
    assert binned_dtype(xb.dtype) == np.float64 and binned_dtype(np.dtype(">f2")) == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        assert volbin.rescale(xb, curve=curve).tobytes() == volbin.rescale(x, curve=curve).tobytes()
        assert volbin.threshold(xb, "otsu", curve=curve) == volbin.threshold(x, "otsu", curve=curve)
        np.testing.assert_array_equal(
            volbin.binarize(xb, "otsu", curve=curve), volbin.binarize(x, "otsu", curve=curve)
        )


@pytest.mark.parametrize("dtype", ["float64", "float32", "int16", "uint8", ">f8", "float16", "uint32"])
@pytest.mark.parametrize("scope", ["stack", "slice"])
@pytest.mark.parametrize("dask_input", [False, True])
def test_equalized_otsu_is_skimage_on_the_rescaled_data(dtype, scope, dask_input):
    """Otsu thresholds of equalised data (from the fine histograms of the fit) are
    scikit-image's on `volbin.rescale`'s output, and the masks keep what is above them, with
    a spike of zeros (a masked scan's background) and a NaN."""
    rng = np.random.default_rng(3)
    base = rng.gamma(2.0, 30.0, size=(10, 11, 12, 2))
    base[rng.random(base.shape) < 0.5] = 0.0
    kind = np.dtype(dtype).kind
    x = base.astype(dtype) if kind == "f" else np.clip(np.round(base), 0, 200).astype(dtype)
    if kind == "f":
        x[0, 0, 0, 0] = np.nan
    xi = da.from_array(x, chunks=(3, 11, 5, 1)) if dask_input else x
    opts = {"scope": scope, "curve": "equalize", **({"axis": "z"} if scope == "slice" else {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)  # the NaN
        r = np.asarray(volbin.rescale(xi, **opts))
        t = np.asarray(volbin.threshold(xi, "otsu", units="rescaled", **opts))
        mask = np.asarray(volbin.binarize(xi, "otsu", **opts))
    if scope == "stack":
        assert float(t) == filters.threshold_otsu(r[np.isfinite(r)], nbins=256)
        np.testing.assert_array_equal(mask, r > float(t))
    else:
        for z, v in np.ndindex(*t.shape):
            rz = r[:, :, z, v]
            assert t[z, v] == filters.threshold_otsu(rz[np.isfinite(rz)], nbins=256)
            np.testing.assert_array_equal(mask[:, :, z, v], rz > t[z, v])
