"""Tests of volbin.rescale against the formulas, np.percentile and skimage's equalize_hist."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from skimage import exposure

import volbin
from volbin.errors import VolbinDataError, VolbinWarning
from volbin.recipe import CURVES, MONOTONE_CURVES, RESCALE_METHODS, Recipe, unused_options
from volbin.rescale import fit_transform
from volbin.volume import Volume


def used(kw: dict, method: str = "otsu") -> dict:
    """`kw` without the options `method` does not use (volbin refuses those)."""
    drop = {n for n, _ in unused_options({**kw, "method": method})}
    return {k: v for k, v in kw.items() if k not in drop}


SETTINGS = settings(max_examples=30, deadline=None, database=None)


def loop_groups(x: np.ndarray, scope: str, volume_axis: int | None = None, axis: int = 2):
    """Index tuples selecting each group of `x` (the groups a plain loop would make)."""
    if scope == "stack" or (scope == "volume" and x.ndim == 3):
        return [(...,)]
    if scope == "volume":
        return [
            tuple(t if a == volume_axis else slice(None) for a in range(4))
            for t in range(x.shape[volume_axis])
        ]
    spatial = [a for a in range(x.ndim) if a != volume_axis]
    sa = spatial[axis]
    out = []
    vols = range(x.shape[volume_axis]) if x.ndim == 4 else [None]
    for t in vols:
        for k in range(x.shape[sa]):
            idx = [slice(None)] * x.ndim
            idx[sa] = k
            if t is not None:
                idx[volume_axis] = t
            out.append(tuple(idx))
    return out


def minmax_ref(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    lo, hi = np.nanmin(x), np.nanmax(x)
    return ((x - lo) / (hi - lo)).astype(np.float32)


# --- linear rescales -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32", "int16", "uint8"])
def test_minmax_equals_formula(dtype):
    rng = np.random.default_rng(0)
    x = (rng.random((9, 10, 11)) * 200).astype(dtype)
    r = volbin.rescale(x)
    assert isinstance(r, np.ndarray) and r.dtype == np.float32
    np.testing.assert_array_equal(r, minmax_ref(x))
    assert r.min() == 0.0 and r.max() == 1.0


def test_minmax_bool():
    x = np.random.default_rng(0).random((4, 5, 6)) > 0.5
    np.testing.assert_array_equal(volbin.rescale(x), x.astype(np.float32))


@pytest.mark.parametrize("volume_axis", [0, 3])
@pytest.mark.parametrize(
    "scope,axis", [("stack", 2), ("volume", 2), ("slice", 0), ("slice", 1), ("slice", 2)]
)
def test_minmax_per_group_equals_loop(scope, axis, volume_axis):
    rng = np.random.default_rng(1)
    shape = (5, 6, 7, 3) if volume_axis == 3 else (3, 5, 6, 7)
    x = rng.gamma(2.0, size=shape) * (1 + np.arange(shape[volume_axis])).reshape(
        [-1 if a == volume_axis else 1 for a in range(4)]
    )
    r = (
        volbin.rescale(x, scope=scope, axis=axis, volume_axis=volume_axis)
        if scope == "slice"
        else volbin.rescale(x, scope=scope, volume_axis=volume_axis)
    )
    expected = np.empty(shape, np.float32)
    for idx in loop_groups(x, scope, volume_axis, axis):
        expected[idx] = minmax_ref(x[idx])
    np.testing.assert_array_equal(r, expected)


def test_nan_stays_nan_inf_maps_to_ends_and_is_excluded_from_range():
    x = np.linspace(-1, 3, 60).reshape(3, 4, 5)
    x[0, 0, 0], x[1, 1, 1], x[2, 2, 2] = np.nan, np.inf, -np.inf
    with pytest.warns(VolbinWarning, match="3 NaN/Inf voxel"):
        r = volbin.rescale(x)
    finite = np.isfinite(x)
    lo, hi = x[finite].min(), x[finite].max()
    np.testing.assert_array_equal(r[finite], ((x[finite] - lo) / (hi - lo)).astype(np.float32))
    assert np.isnan(r[0, 0, 0]) and r[1, 1, 1] == 1.0 and r[2, 2, 2] == 0.0


def test_percentile_matches_np_percentile():
    rng = np.random.default_rng(2)
    for x, q in [
        (rng.normal(size=(12, 13, 14)), (1.0, 99.0)),
        (rng.lognormal(0, 1.5, size=(8, 9, 10)), (2.0, 98.0)),
        (rng.integers(0, 30, size=(7, 8, 9)).astype(np.int16), (5.0, 95.0)),
        (rng.normal(size=(3, 4, 5)), (10.0, 60.0)),
    ]:
        xf = x.astype(float)
        vol = Volume(x)
        tr = fit_transform(vol, vol.grouping("volume"), Recipe(rescale="percentile", percentiles=q))
        lo, hi = np.percentile(xf, q)
        tol = (xf.max() - xf.min()) / 65536
        assert abs(tr.lo - lo) <= tol and abs(tr.hi - hi) <= tol
        r = volbin.rescale(x, "percentile", percentiles=q)
        expected = np.clip((xf - lo) / (hi - lo), 0, 1)
        assert np.abs(r - expected).max() <= 2 * tol / (hi - lo) + 1e-6


def test_percentile_per_volume():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 7, 8, 3)) * np.array([1.0, 5.0, 20.0])
    vol = Volume(x)
    tr = fit_transform(vol, vol.grouping("volume"), Recipe(rescale="percentile", percentiles=(3, 97)))
    for t in range(3):
        v = x[..., t]
        tol = (v.max() - v.min()) / 65536
        np.testing.assert_allclose([tr.lo[t], tr.hi[t]], np.percentile(v, [3, 97]), rtol=0, atol=tol)


def test_fixed_range():
    x = np.linspace(-50, 150, 120).reshape(4, 5, 6)
    r = volbin.rescale(x, "fixed", value_range=(0, 100))
    np.testing.assert_array_equal(r, np.clip(x / 100, 0, 1).astype(np.float32))


@pytest.mark.parametrize("dtype", ["int16", "uint8", "bool"])
def test_dtype_range(dtype):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 200, size=(5, 6, 7)).astype(dtype)
    lo, hi = (0, 1) if dtype == "bool" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    r = volbin.rescale(x, "dtype")
    np.testing.assert_array_equal(r, ((x.astype(float) - lo) / (hi - lo)).astype(np.float32))


def test_dtype_range_uses_the_stored_dtype_and_scaling_of_a_header():
    nib = pytest.importorskip("nibabel")
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_slope_inter(2.0, 10.0)
    x = np.linspace(10, 520, 60).reshape(3, 4, 5)
    r = volbin.rescale(Volume(x, header=hdr), "dtype").compute()
    np.testing.assert_allclose(r, (x - 10) / 510, atol=1e-7)


def test_dtype_range_rejects_float_data():
    with pytest.raises(ValueError, match=r"rescale='dtype'.*float64"):
        volbin.rescale(np.zeros((3, 3, 3)) + np.arange(3), "dtype")


def test_none_only_clips():
    x = np.linspace(-0.5, 1.5, 60).reshape(3, 4, 5)
    np.testing.assert_array_equal(volbin.rescale(x, "none"), np.clip(x, 0, 1).astype(np.float32))


# --- tone curves ---------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.3, 1.0, 2.5])
def test_gamma_curve(gamma):
    x = np.random.default_rng(5).gamma(2.0, size=(6, 7, 8))
    r = volbin.rescale(x, curve="gamma", gamma=gamma)
    base = (x - x.min()) / (x.max() - x.min())
    np.testing.assert_allclose(r, base**gamma, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("gain", [1.0, 9.0, 100.0])
def test_log_curve(gain):
    x = np.random.default_rng(6).gamma(2.0, size=(6, 7, 8))
    r = volbin.rescale(x, curve="log", log_gain=gain)
    base = (x - x.min()) / (x.max() - x.min())
    np.testing.assert_allclose(r, np.log1p(gain * base) / np.log1p(gain), rtol=1e-6, atol=1e-7)


def test_equalize_close_to_skimage_monotone_and_flat():
    x = np.random.default_rng(7).lognormal(0, 1, size=(20, 20, 20))
    r = volbin.rescale(x, curve="equalize")
    ref = exposure.equalize_hist(x, nbins=4096)
    assert np.abs(r - ref).max() < 0.01  # skimage evaluates its CDF at bin centres
    order = np.argsort(x, axis=None)
    assert np.all(np.diff(r.ravel()[order]) >= 0)
    deciles = np.histogram(r, 10, (0, 1))[0] / r.size
    np.testing.assert_allclose(deciles, 0.1, atol=0.005)
    assert r.min() == 0.0 and r.max() == 1.0


def test_equalize_with_percentile_clips_outside():
    x = np.random.default_rng(8).normal(size=(10, 10, 10))
    r = volbin.rescale(x, "percentile", percentiles=(10, 90), curve="equalize")
    lo, hi = np.percentile(x, [10, 90])
    assert np.all(r[x <= lo] == 0.0) and np.all(r[x >= hi] == 1.0)
    inside = (x > lo) & (x < hi)
    deciles = np.histogram(r[inside], 8, (0, 1))[0] / inside.sum()
    np.testing.assert_allclose(deciles, 1 / 8, atol=0.01)


# --- to_raw is the inverse; output in [0, 1] -----------------------------------------------


@st.composite
def transforms(draw):
    method = draw(st.sampled_from(RESCALE_METHODS))
    curve = draw(st.sampled_from(MONOTONE_CURVES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "int16", "lumpy"]))
    shape = (6, 5, 4, 2)
    if method == "none":
        x = rng.random(shape)  # 'none' treats values as they are: give it [0, 1] data
    elif kind == "int16" or method == "dtype":
        x = rng.integers(-200, 900, size=shape).astype(np.int16)
    elif kind == "lumpy":
        x = rng.choice([0.0, 1.0, 2.5, 40.0], size=shape) + rng.normal(size=shape) * 0.01
    else:
        x = rng.normal(size=shape) * 100
    options = dict(
        rescale=method,
        curve=curve,
        gamma=draw(st.floats(0.2, 5.0)),
        log_gain=draw(st.floats(0.5, 500.0)),
        gain=draw(st.floats(0.5, 30.0)),
        cutoff=draw(st.floats(-0.5, 1.5)),
        percentiles=tuple(sorted(draw(st.lists(st.floats(0, 100), min_size=2, max_size=2, unique=True)))),
        value_range=(-50.0, 400.0) if method == "fixed" else None,
        scope=draw(st.sampled_from(["stack", "volume", "slice"])),
    )
    assume(options["percentiles"][1] - options["percentiles"][0] > 1)
    return x, Recipe(**used(options))


@SETTINGS
@given(transforms(), st.lists(st.floats(-0.1, 1.1), min_size=1, max_size=4))
def test_to_raw_inverts_the_rescale(data, ts):
    x, recipe = data
    vol = Volume(x)
    grouping = vol.grouping(recipe.scope, recipe.axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)  # constant groups are fine here
        tr = fit_transform(vol, grouping, recipe)
    r = tr.apply(x)
    assert r.dtype == np.float32
    assert np.all((r >= 0) & (r <= 1))
    for t in ts:
        raw = grouping.expand(tr.to_raw(np.full(grouping.group_shape, t)))
        a = r.astype(np.float64) > t  # compare in float64: t would round to float32
        b = x > raw
        bad = a != b
        # Only voxels whose float32 rescaled value rounds onto the threshold may disagree.
        assert np.all(np.abs(r[bad].astype(float) - t) <= 2e-7), (t, r[bad], x[bad])
        # ... and they are few: at most a couple of distinct values (levels) per group.
        assert np.unique(x[bad]).size <= 2 * grouping.n_groups
    # And from_raw maps raw thresholds back (up to float rounding).
    inside = np.full(grouping.group_shape, 0.37)
    back = tr.from_raw(tr.to_raw(inside))
    ok = ~tr.constant
    if recipe.curve == "sigmoid":  # the sigmoid's range is [f(0), f(1)], inside (0, 1)
        ok &= (tr.from_raw(tr.lo) < 0.37) & (0.37 < tr.from_raw(tr.hi))
    if recipe.curve != "equalize":
        np.testing.assert_allclose(back[ok], 0.37, atol=1e-9)


def test_to_raw_outside_unit_interval():
    x = np.arange(60.0).reshape(3, 4, 5)
    vol = Volume(x)
    tr = fit_transform(vol, vol.grouping("volume"), Recipe())
    assert tr.to_raw(np.array(1.0)) == np.inf and tr.to_raw(np.array(1.5)) == np.inf
    assert tr.to_raw(np.array(-0.01)) == -np.inf
    assert tr.to_raw(np.array(0.5)) == 29.5


@settings(max_examples=20, deadline=None, database=None)
@given(
    st.sampled_from(RESCALE_METHODS),
    st.sampled_from(CURVES),
    st.sampled_from(["float64", "float32", "int16", "uint8"]),
    st.integers(0, 2**32 - 1),
)
def test_rescaled_output_in_unit_interval(method, curve, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(5, 6, 7)) * 50 + 60).clip(0, 250).astype(dtype)
    if method == "dtype" and dtype.startswith("float"):
        method = "minmax"
    kw = {"value_range": (10.0, 90.0)} if method == "fixed" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        r = volbin.rescale(x, method, **used({"gamma": 0.5, "curve": curve}), **kw)
    assert r.dtype == np.float32 and r.shape == x.shape
    assert np.all((r >= 0) & (r <= 1))


# --- kinds, constant and empty data --------------------------------------------------------


def test_kinds_in_and_out():
    x = np.random.default_rng(9).random((6, 7, 8))
    r_np = volbin.rescale(x)
    r_da = volbin.rescale(da.from_array(x, chunks=3))
    assert isinstance(r_da, da.Array) and r_da.dtype == np.float32
    np.testing.assert_array_equal(r_da.compute(), r_np)
    r_vol = volbin.rescale(Volume(da.from_array(x, chunks=4), affine=np.diag([2, 2, 2, 1])))
    assert isinstance(r_vol, Volume) and r_vol.steps[-1]["step"] == "rescale"
    assert r_vol.steps[-1]["lo"] == x.min() and r_vol.steps[-1]["hi"] == x.max()
    assert r_vol.zooms == (2.0, 2.0, 2.0)
    np.testing.assert_array_equal(r_vol.compute(), r_np)


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_constant_volume_gives_zeros_and_warns(method, curve):
    with pytest.warns(VolbinWarning, match="constant"):
        r = volbin.rescale(np.full((4, 4, 4), 7.0), method, curve=curve)
    # The sigmoid of scikit-image maps 0 to 1 / (1 + exp(gain * cutoff)), not to 0.
    assert np.all(r == (np.float32(1 / (1 + np.exp(10 * 0.5))) if curve == "sigmoid" else 0))


def test_all_nan_volume_raises():
    x = np.random.default_rng(0).random((4, 4, 4, 2))
    x[..., 1] = np.nan
    with pytest.raises(VolbinDataError, match="no finite voxel"):
        volbin.rescale(x)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: volbin.rescale(x),
        lambda x: volbin.rescale(x, curve="equalize"),
        lambda x: volbin.threshold(x, "otsu"),
        lambda x: volbin.binarize(x, "otsu", scope="slice"),
    ],
)
def test_a_span_float64_cannot_hold_is_refused(call):
    """max - min = inf would make every rescaled value 0 or NaN and every histogram empty:
    refused, naming the group and its range."""
    x = np.zeros((4, 4, 4))
    x[0, 0, 0], x[1, 1, 0] = -1.7e308, 1.7e308  # in one slice, so every scope sees both
    with pytest.raises(VolbinDataError, match="span float64 cannot hold"):
        call(x)
    x[0, 0, 0] = 0.0  # a wide but representable span still works
    assert np.isfinite(volbin.rescale(x)).all()


def test_empty_slices_warn_and_stay_nan():
    x = np.random.default_rng(0).random((4, 4, 4))
    x[..., 1] = np.nan
    with pytest.warns(VolbinWarning) as record:
        r = volbin.rescale(x, scope="slice")
    assert any("no finite voxel" in str(w.message) for w in record)
    assert np.all(np.isnan(r[..., 1]))
    np.testing.assert_array_equal(r[..., 0], minmax_ref(x[..., 0]))
