"""Tests of volbin.threshold against scikit-image, on synthetic data and on real MRI."""

from __future__ import annotations

import os
import warnings

import dask.array as da
import nibabel
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import filters

import volbin
from volbin.errors import VolbinDataError, VolbinWarning
from volbin.recipe import Recipe, unused_options
from volbin.rescale import fit_transform
from volbin.threshold import decide
from volbin.volume import Volume


def used(kw: dict, method: str = "otsu") -> dict:
    """`kw` without the options `method` does not use (volbin refuses those)."""
    drop = {n for n, _ in unused_options({**kw, "method": method})}
    return {k: v for k, v in kw.items() if k not in drop}


SETTINGS = settings(max_examples=20, deadline=None, database=None)

NIBABEL_DATA = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")
EXACT = ("otsu", "yen", "isodata", "minimum", "triangle")  # skimage bins as volbin does
NEAR = ("li", "mean")  # skimage works on the voxels; volbin on the histogram
# The ImageJ/ITK family and percentile are tested in test_autothreshold.py.
SKIMAGE_METHODS = EXACT + NEAR


def skimage_threshold(x: np.ndarray, method: str, nbins: int = 256) -> float:
    """scikit-image's threshold of the finite voxels of `x`, binned as float data."""
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    fn = getattr(filters, f"threshold_{method}")
    return float(fn(v) if method in NEAR else fn(v, nbins=nbins))


def assert_matches_skimage(ours: float, x: np.ndarray, method: str, nbins: int = 256) -> None:
    ref = skimage_threshold(x, method, nbins)
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    width = (v.max() - v.min()) / nbins
    if method in EXACT:
        assert ours == ref, (method, ours, ref)
    elif method == "mean":  # from the bins' own means: exact up to 2**-24 of a bin
        assert abs(ours - ref) <= width * 1e-6, (method, ours, ref)
    else:
        assert abs(ours - ref) <= width, (method, ours, ref)


def datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(0, 1, 4000), rng.normal(6, 1.5, 4000)])
    return {
        "gamma": rng.gamma(2.0, size=(20, 20, 20)),
        "bimodal": rng.permutation(two).reshape(20, 20, 20),
        "float32": rng.normal(size=(16, 18, 20)).astype(np.float32),
        "int16": rng.integers(-300, 700, size=(16, 18, 20)).astype(np.int16),
        "uint8": (rng.gamma(3.0, size=(16, 18, 20)) * 20).clip(0, 255).astype(np.uint8),
    }


DATA = datasets()


@pytest.mark.parametrize("method", SKIMAGE_METHODS)
@pytest.mark.parametrize("name", list(DATA))
def test_matches_skimage(name, method):
    x = DATA[name]
    ours = volbin.threshold(x, method)
    assert isinstance(ours, float)
    assert_matches_skimage(ours, x, method)


@pytest.mark.parametrize("nbins", [16, 100, 1024])
def test_otsu_matches_skimage_for_other_bin_counts(nbins):
    x = DATA["gamma"]
    assert volbin.threshold(x, "otsu", nbins=nbins) == skimage_threshold(x, "otsu", nbins)


@pytest.mark.parametrize("method", ["otsu", "yen", "li", "triangle"])
@pytest.mark.parametrize("volume_axis", [0, 3])
def test_per_volume_and_stack_scopes_of_4d(method, volume_axis):
    rng = np.random.default_rng(1)
    vols = [rng.gamma(2.0 + t, size=(14, 15, 16)) * (1 + t) for t in range(3)]
    x = np.stack(vols, axis=volume_axis)
    per_volume = volbin.threshold(x, method, scope="volume", volume_axis=volume_axis)
    assert per_volume.shape == (3,)
    for t in range(3):
        assert_matches_skimage(per_volume[t], vols[t], method)
    stack = volbin.threshold(x, method, scope="stack", volume_axis=volume_axis)
    assert_matches_skimage(stack, x, method)


@pytest.mark.parametrize("axis", ["x", "y", "z"])
@pytest.mark.parametrize("volume_axis", [None, 0, 3])
def test_slice_scope_equals_loop_over_slices(axis, volume_axis):
    rng = np.random.default_rng(2)
    shape = {None: (6, 7, 8), 3: (6, 7, 8, 2), 0: (2, 6, 7, 8)}[volume_axis]
    x = rng.gamma(2.0, size=shape)
    got = volbin.threshold(x, "otsu", scope="slice", axis=axis, volume_axis=volume_axis)
    spatial = [a for a in range(x.ndim) if a != volume_axis]
    sa = spatial["xyz".index(axis)]
    if volume_axis is None:
        assert got.shape == (x.shape[sa],)
        expected = [skimage_threshold(np.take(x, k, axis=sa), "otsu") for k in range(x.shape[sa])]
    else:
        # Group axes are in array order: (volume, slice) or (slice, volume).
        assert got.shape == tuple(x.shape[a] for a in sorted((sa, volume_axis)))
        expected = np.empty(got.shape)
        for idx in np.ndindex(*got.shape):
            sel = [slice(None)] * 4
            for a, i in zip(sorted((sa, volume_axis)), idx, strict=True):
                sel[a] = i
            expected[idx] = skimage_threshold(x[tuple(sel)], "otsu")
    np.testing.assert_array_equal(got, expected)


def test_units_rescaled_and_raw():
    x = DATA["gamma"]
    raw = volbin.threshold(x, "otsu")
    rescaled = volbin.threshold(x, "otsu", units="rescaled")
    assert rescaled == pytest.approx((raw - x.min()) / (x.max() - x.min()), abs=1e-12)


def test_tone_curve_thresholds_are_skimage_on_the_rescaled_data():
    x = DATA["gamma"]
    for curve in ("gamma", "log", "equalize"):
        kw = used({"curve": curve, "gamma": 0.5})
        r = volbin.rescale(x, **kw)
        t = volbin.threshold(x, "otsu", units="rescaled", **kw)
        assert t == skimage_threshold(r, "otsu")


def test_percentile_rescale_thresholds_are_skimage_on_the_clipped_data():
    x = DATA["bimodal"]
    vol = Volume(x)
    tr = fit_transform(vol, vol.grouping("volume"), Recipe(rescale="percentile"))
    t = volbin.threshold(x, "otsu", rescale="percentile")
    assert t == skimage_threshold(np.clip(x, tr.lo, tr.hi), "otsu")


def test_dask_and_volume_inputs_give_the_same_thresholds():
    x = DATA["gamma"]
    ref = volbin.threshold(x, "yen", scope="slice")
    np.testing.assert_array_equal(
        volbin.threshold(da.from_array(x, chunks=(7, 5, 9)), "yen", scope="slice"), ref
    )
    np.testing.assert_array_equal(
        volbin.threshold(Volume(da.from_array(x, chunks=(10, 20, 7))), "yen", scope="slice"), ref
    )


# --- real MRI ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", SKIMAGE_METHODS)
def test_real_t1_matches_skimage(method):
    path = os.path.join(NIBABEL_DATA, "anatomical.nii")
    if not os.path.exists(path):
        pytest.skip("nibabel's anatomical.nii is not installed")
    x = nibabel.load(path).get_fdata()
    assert_matches_skimage(volbin.threshold(x, method), x, method)


@pytest.mark.parametrize("method", SKIMAGE_METHODS)
def test_real_4d_matches_skimage_per_volume(method):
    path = os.path.join(NIBABEL_DATA, "example4d.nii.gz")
    if not os.path.exists(path):
        pytest.skip("nibabel's example4d.nii.gz is not installed")
    x = nibabel.load(path).get_fdata()
    got = volbin.threshold(x, method, scope="volume")
    for t in range(x.shape[3]):
        assert_matches_skimage(got[t], x[..., t], method)


# --- data problems -------------------------------------------------------------------------


def test_constant_volume_gives_nan_threshold_and_warns():
    with pytest.warns(VolbinWarning, match="constant"):
        assert np.isnan(volbin.threshold(np.full((4, 5, 6), 3.0), "otsu"))
    x = np.random.default_rng(0).random((4, 5, 6, 2))
    x[..., 1] = 2.0
    with pytest.warns(VolbinWarning, match="volume 1 is constant"):
        t = volbin.threshold(x, "otsu")
    assert np.isfinite(t[0]) and np.isnan(t[1])


def test_all_nan_volume_raises():
    x = np.random.default_rng(0).random((4, 5, 6, 2))
    x[..., 0] = np.nan
    with pytest.raises(VolbinDataError, match="no finite voxel"):
        volbin.threshold(x, "otsu")


def test_nonfinite_voxels_are_excluded_and_warned_about():
    x = DATA["gamma"].copy()
    x[0, 0, :3] = [np.nan, np.inf, -np.inf]
    with pytest.warns(VolbinWarning, match="3 NaN/Inf"):
        t = volbin.threshold(x, "otsu")
    assert t == skimage_threshold(x, "otsu")


def test_method_that_fails_raises_data_error():
    # A flat histogram has no two maxima for `minimum`, however much it is smoothed.
    x = np.repeat(np.arange(256.0), 4).reshape(8, 8, 16)
    with pytest.raises(VolbinDataError, match="'minimum' failed"):
        volbin.threshold(x, "minimum")


def test_bad_method_is_named():
    with pytest.raises(ValueError, match=r"`method`.*'stochastic'"):
        volbin.threshold(np.zeros((3, 3, 3)), "stochastic")


def test_decide_value_method_in_both_units():
    x = np.arange(60.0).reshape(3, 4, 5)
    vol = Volume(x)
    g = vol.grouping("volume")
    tr = fit_transform(vol, g, Recipe())
    d = decide(vol, g, tr, Recipe(method="value", threshold=0.5))
    assert d.raw == 29.5 and d.rescaled == 0.5
    d = decide(vol, g, tr, Recipe(method="value", threshold=10.0, units="raw"))
    assert d.raw == 10.0 and d.rescaled == pytest.approx(10 / 59)
    rec = d.record()
    assert rec["threshold_raw"] == 10.0 and rec["scope"] == "volume"


# --- properties ----------------------------------------------------------------------------


@SETTINGS
@given(
    st.sampled_from(SKIMAGE_METHODS),
    st.sampled_from(["stack", "volume", "slice"]),
    st.sampled_from(["float64", "float32", "int16", "uint8"]),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["linear", "gamma", "equalize"]),
)
def test_thresholds_within_data_range(method, scope, dtype, seed, curve):
    rng = np.random.default_rng(seed)
    x = (rng.gamma(2.0, size=(5, 6, 7, 2)) * 30).clip(0, 250).astype(dtype)
    x[..., 1] += np.asarray(7).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        try:
            t = volbin.threshold(x, method, scope=scope, **used({"curve": curve, "gamma": 2.0}))
        except VolbinDataError:  # `minimum` on a histogram with one peak
            assert method == "minimum"
            return
    vol = Volume(x)
    g = vol.grouping(scope)
    t = np.broadcast_to(t, g.group_shape)
    xf = x.astype(float)
    for idx in np.ndindex(*g.group_shape):
        sel = [slice(None)] * 4
        for a, i in zip(g.group_axes, idx, strict=True):
            sel[a] = i
        v = xf[tuple(sel)]
        if v.min() == v.max():
            assert np.isnan(t[idx])
        else:
            assert v.min() <= t[idx] <= v.max()


@SETTINGS
@given(
    st.sampled_from(SKIMAGE_METHODS),
    st.sampled_from(["stack", "volume", "slice"]),
    st.sampled_from(["float64", "int16", "uint8", "bool"]),
    st.floats(-1e6, 1e6),
)
def test_constant_volumes_do_not_crash(method, scope, dtype, value):
    x = np.full((3, 4, 5), value).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        t = volbin.threshold(x, method, scope=scope)
    assert np.all(np.isnan(t))


def test_bad_units_are_named():
    with pytest.raises(ValueError, match=r"`units`.*'Raw'"):
        volbin.threshold(DATA["gamma"], "otsu", units="Raw")


@pytest.mark.parametrize(
    "shape,scope,where",
    [
        ((3, 4, 5), "volume", "the volume"),
        ((3, 4, 5, 2), "stack", "the stack"),
        ((3, 4, 5, 2), "volume", "volume 0"),
    ],
)
def test_no_finite_voxel_message_names_the_group(shape, scope, where):
    x = np.full(shape, np.nan)
    with pytest.raises(VolbinDataError, match=f"no finite voxel in .*{where}"):
        volbin.threshold(x, "otsu", scope=scope)
