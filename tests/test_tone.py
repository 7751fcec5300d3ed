"""Tone curves against scikit-image (adjust_sigmoid, equalize_hist, equalize_adapthist) and
brute-force formulas; monotonicity, chunk-invariance and option refusal."""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import exposure, filters

import volbin
from volbin.errors import VolbinDataError, VolbinWarning
from volbin.phantom import phantom
from volbin.recipe import MONOTONE_CURVES, Recipe
from volbin.rescale import CLAHE_BYTES_PER_VOXEL, CLAHE_MEMORY_KEY, fit_transform
from volbin.volume import Volume, as_volume

SETTINGS = settings(max_examples=25, deadline=None, database=None)


def minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.min()) / (x.max() - x.min())


@pytest.fixture(scope="module")
def head() -> np.ndarray:
    return phantom((40, 48, 40), seed=2).intensity.astype(np.float64)


# --- sigmoid and auto-gamma ----------------------------------------------------------------


@pytest.mark.parametrize("gain,cutoff", [(10.0, 0.5), (4.0, 0.2), (25.0, 0.7)])
def test_sigmoid_equals_skimage_adjust_sigmoid(head, gain, cutoff):
    r = volbin.rescale(head, curve="sigmoid", gain=gain, cutoff=cutoff)
    ref = exposure.adjust_sigmoid(minmax(head), cutoff=cutoff, gain=gain)
    np.testing.assert_allclose(r, ref, rtol=0, atol=1e-7)


def test_sigmoid_defaults_are_skimage_defaults(head):
    r = volbin.rescale(head, curve="sigmoid")
    np.testing.assert_allclose(r, exposure.adjust_sigmoid(minmax(head)), rtol=0, atol=1e-7)


def test_auto_gamma_maps_each_volume_mean_to_half():
    rng = np.random.default_rng(3)
    x = np.stack([rng.gamma(2.0, size=(12, 13, 14)) * s for s in (1.0, 5.0)], axis=-1)
    x[..., 1] = x[..., 1] ** 2  # a different mean after rescaling
    out = volbin.rescale(x, curve="auto-gamma")
    vol = Volume(x)
    tr = fit_transform(vol, vol.grouping("volume"), Recipe(curve="auto-gamma"))
    for t in range(2):
        r = minmax(x[..., t])
        g = np.log(0.5) / np.log(r.mean())
        np.testing.assert_allclose(tr.gammas[t], g, rtol=1e-9)
        np.testing.assert_allclose(out[..., t], r**g, rtol=0, atol=2e-7)
        assert r.mean() ** tr.gammas[t] == pytest.approx(0.5, abs=1e-9)
    assert tr.record()["gamma"] == pytest.approx(list(tr.gammas))


def test_tone_curve_thresholds_are_skimage_on_the_rescaled_data(head):
    for curve, kw in [("sigmoid", {"gain": 8.0}), ("auto-gamma", {})]:
        r = volbin.rescale(head, curve=curve, **kw)
        t = volbin.threshold(head, "otsu", curve=curve, units="rescaled", **kw)
        assert t == filters.threshold_otsu(r, nbins=256)
        raw = volbin.threshold(head, "otsu", curve=curve, **kw)
        mask = volbin.binarize(head, "otsu", curve=curve, **kw)
        np.testing.assert_array_equal(mask, head > raw)


# --- equalize ------------------------------------------------------------------------------


def test_equalize_agrees_with_skimage_away_from_a_zero_background():
    p = phantom((64, 72, 64), seed=4)
    x = p.intensity.astype(np.float64)
    x[p.labels == 0] = 0.0  # a spike of zeros, as skull-stripped or masked scans have
    r = volbin.rescale(x, curve="equalize")
    ref = exposure.equalize_hist(x, nbins=65536)
    assert np.all(r[x == 0] == 0)  # the fraction of voxels below the minimum
    assert ref[x == 0].min() > 0.3  # scikit-image: the spike's own mass
    first_edge = x.max() / 65536
    away = x >= first_edge  # outside the spike's fine bin
    assert np.abs(r[away] - ref[away]).max() < 1e-4
    assert r.max() == 1.0


# --- CLAHE ---------------------------------------------------------------------------------


def test_clahe_equals_skimage_on_the_whole_volume(head):
    for kw in [{}, {"kernel_size": 8, "clip_limit": 0.02}, {"kernel_size": (5, 7, 9)}]:
        r = volbin.rescale(head, curve="clahe", **kw)
        ks = kw.get("kernel_size")
        ref = exposure.equalize_adapthist(minmax(head), kernel_size=ks, clip_limit=kw.get("clip_limit", 0.01))
        np.testing.assert_allclose(r, ref, rtol=0, atol=1e-7)


def test_clahe_per_volume_of_a_stack_and_volume_axis(head):
    x = np.stack([head, head * 3.0 + 100.0, np.sqrt(head)], axis=0)  # volumes first
    r = volbin.rescale(x, curve="clahe", kernel_size=6, volume_axis=0)
    for t in range(3):
        ref = exposure.equalize_adapthist(minmax(x[t]), kernel_size=6)
        np.testing.assert_allclose(r[t], ref, rtol=0, atol=1e-7)


def test_clahe_kernel_mm_uses_the_voxel_sizes(head):
    affine = np.diag([1.0, 2.0, 4.0, 1.0])
    vol = Volume(da.from_array(head, chunks=(40, 48, 10)), affine=affine)
    r = volbin.rescale(vol, curve="clahe", kernel_mm=16.0)
    assert r.steps[-1]["kernel_size"] == [16, 8, 4]
    ref = exposure.equalize_adapthist(minmax(head), kernel_size=(16, 8, 4))
    np.testing.assert_allclose(r.compute(), ref, rtol=0, atol=1e-7)


def test_clahe_refuses_a_volume_above_the_memory_limit(head):
    with dask.config.set({CLAHE_MEMORY_KEY: 10_000}), pytest.raises(VolbinDataError) as info:
        volbin.rescale(head, curve="clahe")
    need = head.size * CLAHE_BYTES_PER_VOXEL
    assert f"{need} bytes" in str(info.value) and "10000 bytes" in str(info.value)


def test_clahe_thresholds_exist_in_rescaled_units_only(head):
    with pytest.raises(ValueError, match=r"units='raw'.*clahe"):
        Recipe(curve="clahe", units="raw", method="value", threshold=1.0)
    vol = Volume(head)
    tr = fit_transform(vol, vol.grouping("volume"), Recipe(curve="clahe"))
    assert not tr.monotone
    with pytest.raises(ValueError, match="rescaled units only"):
        tr.to_raw(np.array(0.5))
    with pytest.raises(ValueError, match=r"`units='raw'` cannot be used with curve='clahe'"):
        volbin.threshold(head, "otsu", curve="clahe", units="raw")


def test_clahe_keeps_nan():
    x = np.random.default_rng(1).random((16, 16, 16))
    x[3, 4, 5] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        r = volbin.rescale(x, curve="clahe", kernel_size=4)
    assert (
        np.isnan(r[3, 4, 5])
        and np.isfinite(np.delete(r.ravel(), np.ravel_multi_index((3, 4, 5), x.shape))).all()
    )


# --- option refusal ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "curve,option,value",
    [
        ("gamma", "gain", 5.0),
        ("sigmoid", "gamma", 2.0),
        ("log", "cutoff", 0.3),
        ("equalize", "clip_limit", 0.1),
        ("auto-gamma", "gamma", 0.5),
        ("clahe", "log_gain", 3.0),
        ("sigmoid", "kernel_size", 8),
    ],
)
def test_an_option_of_another_curve_is_refused(curve, option, value):
    with pytest.raises(ValueError) as info:
        volbin.rescale(np.ones((4, 4, 4)), curve=curve, **{option: value})
    message = str(info.value)
    assert f"`{option}`" in message and f"curve={curve!r}" in message, message


# --- properties ----------------------------------------------------------------------------


@st.composite
def curve_recipes(draw):
    curve = draw(st.sampled_from(MONOTONE_CURVES))
    kw = {
        "gamma": {"gamma": draw(st.floats(0.1, 10.0))},
        "log": {"log_gain": draw(st.floats(0.1, 1000.0))},
        "sigmoid": {"gain": draw(st.floats(0.1, 50.0)), "cutoff": draw(st.floats(-1.0, 2.0))},
    }.get(curve, {})
    return curve, kw, draw(st.sampled_from(["minmax", "percentile"]))


@SETTINGS
@given(curve_recipes(), st.integers(0, 2**32 - 1), st.sampled_from(["normal", "lumpy", "int"]))
def test_every_curve_is_monotone_non_decreasing(spec, seed, kind):
    curve, kw, method = spec
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.normal(size=(7, 8, 9)) * 50
    elif kind == "lumpy":
        x = rng.choice([0.0, 1.0, 3.0, 50.0], size=(7, 8, 9)) + rng.normal(size=(7, 8, 9)) * 1e-3
    else:
        x = rng.integers(0, 20, size=(7, 8, 9)).astype(np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        r = volbin.rescale(x, method, curve=curve, **kw)
    order = np.argsort(x, axis=None, kind="stable")
    assert np.all(np.diff(r.ravel()[order].astype(np.float64)) >= 0)
    assert np.all((r >= 0) & (r <= 1))


def chunkings(draw, shape):
    chunks = []
    for s in shape:
        cuts = sorted(draw(st.sets(st.integers(1, s - 1), max_size=2))) if s > 1 else []
        edges = [0, *cuts, s]
        chunks.append(tuple(b - a for a, b in itertools.pairwise(edges)))
    return tuple(chunks)


X4 = np.random.default_rng(5).gamma(2.0, size=(12, 11, 10, 2)) * np.array([1.0, 4.0])
X4[2, 3, 4, 1] = np.nan


@st.composite
def chunked(draw):
    return chunkings(draw, X4.shape)


@settings(max_examples=15, deadline=None, database=None)
@given(
    st.sampled_from(
        [
            ("auto-gamma", {}),
            ("sigmoid", {"gain": 7.0, "cutoff": 0.3}),
            ("equalize", {}),
            ("clahe", {"kernel_size": 4}),
        ]
    ),
    st.sampled_from(["stack", "volume"]),
    chunked(),
)
def test_any_chunking_gives_the_same_bytes(spec, scope, chunks):
    curve, kw = spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        ref = volbin.rescale(X4, curve=curve, scope=scope, **kw)
        out = volbin.rescale(da.from_array(X4, chunks=chunks), curve=curve, scope=scope, **kw).compute()
    assert out.tobytes() == ref.tobytes()


def equalize_map_reference(x, e0, scale, values):
    """Plain numpy version of `_tone_kernels.equalize_map`."""
    last = len(values) - 2
    s = (x.astype(np.float64) - e0) * scale
    s = np.where(np.isnan(s), 0.0, s)
    k = np.floor(np.clip(s, 0.0, last))
    frac = np.clip(s - k, 0.0, 1.0)
    ki = k.astype(np.intp)
    r = values[ki] + frac * (values[ki + 1] - values[ki])
    return np.where(np.isnan(x), np.nan, r).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float64", "float32", "int16"])
def test_equalize_kernel_equals_its_reference_and_np_interp(dtype):
    from volbin._tone_kernels import equalize_map

    rng = np.random.default_rng(7)
    x = (rng.normal(size=5000) * 300).astype(dtype)
    if dtype.startswith("float"):
        x[:3] = [np.nan, np.inf, -np.inf]
    values = np.concatenate([[0.0], np.sort(rng.random(1023)), [1.0]])
    e0, scale = -700.0, 1024 / 1400.0
    out = np.empty(x.size, np.float32)
    equalize_map(x, e0, scale, values, out)
    ref = equalize_map_reference(x, e0, scale, values)
    assert out.tobytes() == ref.tobytes()
    edges = e0 + np.arange(1025) / scale
    finite = np.isfinite(x.astype(np.float64))
    np.testing.assert_allclose(out[finite], np.interp(x[finite].astype(np.float64), edges, values), atol=1e-7)
    if dtype.startswith("float"):
        assert np.isnan(out[0]) and out[1] == 1.0 and out[2] == 0.0


def test_clahe_output_thresholds_in_rescaled_units(head):
    r = volbin.rescale(head, curve="clahe")
    t = volbin.threshold(r, "otsu", rescale="none")
    assert t == filters.threshold_otsu(r)
    np.testing.assert_array_equal(volbin.binarize(r, "otsu", rescale="none"), r > t)


@settings(max_examples=20, deadline=None, database=None)
@given(
    st.sampled_from(["stack", "volume", "slice"]),
    st.sampled_from(["minmax", "percentile"]),
    st.sampled_from(["float64", "float32", "int16"]),
    st.integers(2, 300),
    chunked(),
)
def test_equalized_histograms_equal_histograms_of_the_equalised_values(scope, method, dtype, nbins, chunks):
    from volbin.histogram import group_histograms
    from volbin.rescale import equalized_histograms

    x = X4.astype(dtype) if dtype.startswith("float") else np.nan_to_num(X4 * 100).astype(dtype)
    vol = Volume(da.from_array(x, chunks=chunks))
    g = vol.grouping(scope)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        tr = fit_transform(vol, g, Recipe(curve="equalize", rescale=method))
    lo, hi = tr.from_raw(tr.data_min), tr.from_raw(tr.data_max)
    ref = group_histograms(vol, g, lo, hi, nbins, pre=tr.apply)
    # From the fine histograms the curve was fitted on, plus the voxels they do not settle;
    # and, without them, every voxel mapped on its knot interval.
    assert tr.eq_fine is not None
    np.testing.assert_array_equal(equalized_histograms(vol, tr, lo, hi, nbins), ref)
    np.testing.assert_array_equal(
        equalized_histograms(vol, dataclasses.replace(tr, eq_fine=None), lo, hi, nbins), ref
    )
    # Numpy input, reduced without a graph; fine histograms of other data are not used.
    fast, _ = as_volume(x, chunk_bytes=max(8, x.nbytes // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        tr_fast = fit_transform(fast, fast.grouping(scope), Recipe(curve="equalize", rescale=method))
    np.testing.assert_array_equal(equalized_histograms(fast, tr_fast, lo, hi, nbins), ref)
    assert tr.eq_fine[3] != fast.data.name
    np.testing.assert_array_equal(equalized_histograms(fast, tr, lo, hi, nbins), ref)


@pytest.mark.parametrize("lo, hi, nbins", [(0.0, 1.0, 256), (0.1, 0.9, 256), (0.0, 1.0, 7), (0.3, 0.3, 256)])
def test_equalized_table_equals_the_bins_of_the_interval_ends(lo, hi, nbins):
    """Each interval's bin (or -1 when its image spans a bin edge), against numpy: the ends of
    its image, as the curve computes them, binned as np.histogram bins them."""
    from volbin._tone_kernels import equalized_table
    from volbin.rescale import _hist_bins

    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, 4096) * (rng.random(4096) < 0.7)
    counts[100] = 10**6  # a spike: one interval spanning many bins
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()
    r0 = (cdf[:-1] + 0.0 * (cdf[1:] - cdf[:-1])).astype(np.float32).astype(np.float64)
    r1 = (cdf[:-1] + 1.0 * (cdf[1:] - cdf[:-1])).astype(np.float32).astype(np.float64)
    b0, b1 = _hist_bins(r0, lo, hi, nbins), _hist_bins(r1, lo, hi, nbins)
    ref = np.where(b0 == b1, b0, -1)
    table = equalized_table(cdf, lo, hi, nbins)
    assert table.dtype == np.int32
    np.testing.assert_array_equal(table, ref)
    assert (table < 0).sum() > 0 or not hi > lo


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lo, hi", [(0.1, 1328.7), (1e6, 1e6 + 3.7), (-5.0, 7.0), (0.0, 65535.0)])
def test_equalized_histograms_of_values_on_the_fine_edges(lo, hi, dtype, tone_level):
    """Values on (and next to) the fine-bin edges, both as the curve's knots and as
    np.histogram's edges, where a value's knot interval and its fine bin differ: the
    histogram of the equalised values is still exact, from the fine histograms or not."""
    from volbin.histogram import fine_nbins, group_histograms
    from volbin.rescale import _hist_bins, equalized_histograms

    rng = np.random.default_rng(0)
    nb = fine_nbins(1)
    k = np.arange(nb + 1)
    t = np.dtype(dtype).type
    lo, hi = float(t(lo)), float(t(hi))
    e_lin, e_hist = lo + (hi - lo) * (k / nb), k * ((hi - lo) / nb) + lo
    # The representable values on and around each edge.
    on = [e_lin.astype(dtype), e_hist.astype(dtype)]
    near = [np.nextafter(e, t(direction)) for e in on for direction in (-np.inf, np.inf)]
    vals = np.concatenate([*on, *near, rng.uniform(lo, hi, 50000).astype(dtype)]).astype(np.float64)
    vals = vals[(vals >= lo) & (vals <= hi)]
    vals[:2] = lo, hi
    x = np.concatenate([rng.permutation(vals), np.full(64 - vals.size % 64, lo)]).reshape(4, 4, 4, -1)
    x = x.astype(dtype)
    vol = Volume(da.from_array(x, chunks=(2, 4, 4, x.shape[-1])))
    g = vol.grouping("stack")
    tr = fit_transform(vol, g, Recipe(curve="equalize"))
    assert tr.eq_fine is not None
    e0, e1 = tr.eq_edges[0], tr.eq_edges[-1]
    knot = np.floor(np.clip((x.ravel() - e0) * (nb / (e1 - e0)), 0, nb - 1))
    differ = (knot != _hist_bins(x.ravel().astype(float), tr.eq_fine[1], tr.eq_fine[2], nb)).sum()
    # Where the two kinds of edge differ, float64 values fall between them (float32 ones are
    # too coarse to).
    assert differ > 100 or dtype == "float32" or (e_lin != e_hist).sum() < 100
    lo_r, hi_r = tr.from_raw(tr.data_min), tr.from_raw(tr.data_max)
    ref = group_histograms(vol, g, lo_r, hi_r, 256, pre=tr.apply)
    np.testing.assert_array_equal(equalized_histograms(vol, tr, lo_r, hi_r, 256), ref)
    no_fine = dataclasses.replace(tr, eq_fine=None)
    np.testing.assert_array_equal(equalized_histograms(vol, no_fine, lo_r, hi_r, 256), ref)
