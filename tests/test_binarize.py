"""Tests of volbin.binarize: masks against scikit-image, scopes against loops, stochastic
binarization against its probabilities, and determinism over chunkings and schedulers."""

from __future__ import annotations

import functools
import itertools
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from skimage import filters

import volbin
from volbin import _kernels as K
from volbin.errors import VolbinDataError, VolbinWarning
from volbin.recipe import HISTOGRAM_METHODS, Recipe, unused_options
from volbin.volume import Volume

SETTINGS = settings(max_examples=25, deadline=None, database=None)
# scikit-image's family; test_autothreshold.py covers the ImageJ/ITK family and percentile.
SKIMAGE_METHODS = ("otsu", "yen", "isodata", "li", "minimum", "triangle", "mean")
METHODS = (*SKIMAGE_METHODS, "value", "stochastic")


def otsu_ref(x: np.ndarray) -> np.ndarray:
    """skimage's Otsu mask of the finite voxels of `x` (float data, 256 bins)."""
    xf = np.asarray(x, dtype=np.float64)
    t = filters.threshold_otsu(xf[np.isfinite(xf)], nbins=256)
    return np.isfinite(xf) & (xf > t)


def quiet(fn, *args, **kwargs):
    """Call `fn` ignoring volbin's data warnings (constant groups, NaN voxels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        return fn(*args, **kwargs)


def used(kw: dict, method: str = "otsu") -> dict:
    """`kw` without the options `method` does not use (volbin refuses those)."""
    drop = {n for n, _ in unused_options({**kw, "method": method})}
    return {k: v for k, v in kw.items() if k not in drop}


RNG = np.random.default_rng(0)
GAMMA = RNG.gamma(2.0, size=(18, 19, 20))


@pytest.mark.parametrize("dtype", ["float64", "float32", "int16", "uint8"])
def test_otsu_mask_equals_skimage(dtype):
    x = (GAMMA * 40).clip(0, 255).astype(dtype)
    mask = volbin.binarize(x, "otsu")
    assert isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == x.shape
    np.testing.assert_array_equal(mask, otsu_ref(x))


@pytest.mark.parametrize("method", SKIMAGE_METHODS)
def test_mask_is_volume_above_threshold(method):
    x = GAMMA
    np.testing.assert_array_equal(volbin.binarize(x, method), x > volbin.threshold(x, method))


@pytest.mark.parametrize("volume_axis", [0, 3])
@pytest.mark.parametrize(
    "scope,axis", [("stack", "z"), ("volume", "z"), ("slice", "x"), ("slice", "y"), ("slice", "z")]
)
def test_scopes_equal_loops(scope, axis, volume_axis):
    rng = np.random.default_rng(1)
    shape = (6, 7, 8, 3) if volume_axis == 3 else (3, 6, 7, 8)
    scale = (1.0 + np.arange(3)).reshape([-1 if a == volume_axis else 1 for a in range(4)])
    x = rng.gamma(2.0, size=shape) * scale
    mask = volbin.binarize(x, "otsu", scope=scope, axis=axis, volume_axis=volume_axis)
    expected = np.zeros(shape, bool)
    if scope == "stack":
        expected = otsu_ref(x)
    else:
        spatial = [a for a in range(4) if a != volume_axis]
        sa = spatial["xyz".index(axis)]
        for t in range(3):
            sel = [slice(None)] * 4
            sel[volume_axis] = t
            if scope == "volume":
                expected[tuple(sel)] = otsu_ref(x[tuple(sel)])
                continue
            for k in range(shape[sa]):
                sel[sa] = k
                expected[tuple(sel)] = otsu_ref(x[tuple(sel)])
    np.testing.assert_array_equal(mask, expected)


def test_scope_matters():
    x = np.stack([GAMMA, GAMMA * 10], axis=-1)
    stack = volbin.binarize(x, "otsu", scope="stack")
    per_volume = volbin.binarize(x, "otsu", scope="volume")
    assert not stack[..., 0].any() or stack[..., 0].sum() < per_volume[..., 0].sum()
    np.testing.assert_array_equal(per_volume[..., 0], per_volume[..., 1])


def test_value_method_in_raw_and_rescaled_units():
    x = GAMMA
    np.testing.assert_array_equal(volbin.binarize(x, "value", threshold=2.5, units="raw"), x > 2.5)
    r = volbin.rescale(x).astype(np.float64)
    mask = volbin.binarize(x, "value", threshold=0.3)
    assert np.count_nonzero(mask != (r > 0.3)) <= 1


def test_recipe_argument_equals_keywords():
    x = GAMMA
    recipe = Recipe(method="yen", scope="slice", axis="y")
    np.testing.assert_array_equal(
        volbin.binarize(x, recipe=recipe), volbin.binarize(x, "yen", scope="slice", axis="y")
    )


# --- kinds of input and provenance -------------------------------------------------------


def test_numpy_dask_and_volume_in_and_out():
    x = GAMMA
    ref = volbin.binarize(x, "otsu")
    lazy = volbin.binarize(da.from_array(x, chunks=(9, 10, 7)), "otsu")
    assert isinstance(lazy, da.Array) and lazy.dtype == np.bool_
    assert lazy.chunks == da.from_array(x, chunks=(9, 10, 7)).chunks
    np.testing.assert_array_equal(lazy.compute(), ref)

    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    vol = Volume(da.from_array(x, chunks=10), affine=affine, steps=({"step": "read"},))
    out = volbin.binarize(vol, "otsu", scope="slice", axis="x")
    assert isinstance(out, Volume) and isinstance(out.data, da.Array)
    np.testing.assert_array_equal(out.affine, affine)
    assert [s["step"] for s in out.steps] == ["read", "binarize"]
    step = out.steps[-1]
    assert step["recipe"] == Recipe(method="otsu", scope="slice", axis="x").to_dict()
    assert step["decision"]["method"] == "otsu" and step["decision"]["group_shape"] == [18]
    np.testing.assert_array_equal(
        step["decision"]["threshold_raw"], volbin.threshold(x, "otsu", scope="slice", axis="x")
    )
    assert step["rescale"]["method"] == "minmax" and step["nonfinite_voxels"] == 0
    np.testing.assert_array_equal(out.compute(), volbin.binarize(x, "otsu", scope="slice", axis="x"))

    stochastic = volbin.binarize(vol, "stochastic", seed=5)
    assert stochastic.steps[-1]["decision"] == {"method": "stochastic", "seed": 5}


def test_dask_result_is_lazy():
    # Count block reads: the statistics passes read the data; the mask reads it only when
    # computed, once per block.
    reads = []

    def read(block):
        reads.append(block.shape)
        return block

    x = da.from_array(GAMMA, chunks=(9, 19, 10)).map_blocks(read, dtype=GAMMA.dtype)
    for method in ("otsu", "stochastic"):
        reads.clear()
        mask = volbin.binarize(x, method)
        before = len(reads)
        assert isinstance(mask, da.Array) and before > 0
        mask.compute()
        assert len(reads) == before + x.npartitions


# --- non-finite, constant and empty data ------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_nonfinite_voxels_are_zero_excluded_counted_and_warned(method):
    x = GAMMA.copy()
    x[0, 0, :4] = [np.nan, np.inf, -np.inf, np.inf]
    kw = {"threshold": 0.2} if method == "value" else {}
    with pytest.warns(VolbinWarning, match="4 NaN/Inf"):
        out = volbin.binarize(Volume(x), method, **kw)
    mask = out.compute()
    assert not mask[0, 0, :4].any()
    assert out.steps[-1]["nonfinite_voxels"] == 4
    if method == "otsu":
        np.testing.assert_array_equal(mask, otsu_ref(x))
    if method in SKIMAGE_METHODS:  # statistics of the finite voxels only: skimage's on them
        f = x[np.isfinite(x)]
        fn = getattr(filters, f"threshold_{method}")
        ref = fn(f) if method in ("li", "mean") else fn(f, nbins=256)
        got = out.steps[-1]["decision"]["threshold_raw"]
        width = (f.max() - f.min()) / 256
        assert got == ref if method not in ("li", "mean") else abs(got - ref) <= width


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", ["stack", "volume", "slice"])
def test_constant_volume_gives_zeros_and_a_warning(method, scope):
    x = np.full((4, 5, 6, 2), 3.0)
    x[..., 1] = np.random.default_rng(0).random((4, 5, 6))
    kw = {"threshold": 0.5} if method == "value" else {}
    if scope != "stack":  # the stack as a whole is not constant
        with pytest.warns(VolbinWarning) as seen:
            mask = volbin.binarize(x, method, scope=scope, **kw)
        assert any("constant" in str(w.message) for w in seen)
        assert not mask[..., 0].any()
    with pytest.warns(VolbinWarning) as seen:
        assert not volbin.binarize(np.full((3, 4, 5), -2, np.int16), method, **kw).any()
    assert any("constant" in str(w.message) for w in seen)
    # Methods other than histogram thresholds also say that the mask is empty.
    assert method in HISTOGRAM_METHODS or any("mask is empty" in str(w.message) for w in seen)


def test_all_nan_volume_raises():
    x = np.random.default_rng(0).random((4, 5, 6, 2))
    x[..., 1] = np.nan
    for method in ("otsu", "stochastic"):
        with pytest.raises(VolbinDataError, match="no finite voxel"):
            volbin.binarize(x, method)


@pytest.mark.parametrize("method", ["otsu", "li", "value", "stochastic"])
def test_empty_slices_give_zeros_and_a_warning(method):
    x = GAMMA.copy()
    x[:, :, 3] = np.nan
    kw = {"threshold": 0.5} if method == "value" else {}
    with pytest.warns(VolbinWarning) as record:
        mask = volbin.binarize(x, method, scope="slice", **kw)
    messages = [str(w.message) for w in record]
    assert any("1 slice(s) have no finite voxel" in m for m in messages), messages
    assert any("342 NaN/Inf" in m for m in messages), messages
    assert not mask[:, :, 3].any()
    if method == "otsu":
        np.testing.assert_array_equal(mask[:, :, 4], otsu_ref(x[:, :, 4]))


# --- stochastic --------------------------------------------------------------------------


def test_stochastic_mean_equals_mean_intensity():
    x = np.random.default_rng(2).gamma(2.0, size=(40, 40, 40))
    p = volbin.rescale(x).astype(np.float64)
    mask = volbin.binarize(x, "stochastic", seed=11)
    sigma = np.sqrt(np.sum(p * (1 - p)))
    assert abs(mask.sum() - p.sum()) < 5 * sigma
    # Darker voxels are drawn less often: the same check per intensity decile.
    edges = np.quantile(p, np.linspace(0, 1, 11))
    for lo, hi in itertools.pairwise(edges):
        sel = (p >= lo) & (p < hi)
        s = np.sqrt(np.sum(p[sel] * (1 - p[sel])))
        assert abs(mask[sel].sum() - p[sel].sum()) < 5 * s + 1


def test_stochastic_constant_probability_field_chi_square():
    # p = 0.3 everywhere (rescale 'none'; two voxels at 0 and 1 keep the range non-empty).
    x = np.full((32, 32, 32), 0.3)
    x[0, 0, 0], x[-1, -1, -1] = 0.0, 1.0
    mask = volbin.binarize(x, "stochastic", rescale="none", seed=7)
    assert not mask[0, 0, 0] and mask[-1, -1, -1]
    field = x == 0.3

    def cells(a: np.ndarray) -> np.ndarray:  # sums over 64 cells of 8 x 8 x 8 voxels
        return a.reshape(4, 8, 4, 8, 4, 8).sum(axis=(1, 3, 5)).ravel().astype(float)

    ones, n = cells(mask & field), cells(field)
    chi2 = np.sum((ones - 0.3 * n) ** 2 / (n * 0.3 * 0.7))
    assert stats.chi2.sf(chi2, df=64) > 1e-4
    assert abs(ones.sum() - 0.3 * n.sum()) < 5 * np.sqrt(n.sum() * 0.21)


def test_stochastic_per_voxel_frequencies_over_keys():
    # Each voxel, drawn under many keys, is 1 with its own probability.
    rng = np.random.default_rng(3)
    shape = (2, 3, 4, 5)
    p = rng.uniform(0.05, 0.95, size=shape).astype(np.float32)
    n_keys = 2000
    hits = np.zeros(shape)
    out = np.empty(shape, bool)
    for seed in range(n_keys):
        K.bernoulli_block(p, K.seed_key(seed, 1), np.array(shape), np.zeros(4, np.int64), out)
        hits += out
    pf = p.astype(float)
    chi2 = np.sum((hits - n_keys * pf) ** 2 / (n_keys * pf * (1 - pf)))
    assert stats.chi2.sf(chi2, df=p.size) > 1e-4


def test_stochastic_seeds():
    x = GAMMA
    a = volbin.binarize(x, "stochastic", seed=1)
    np.testing.assert_array_equal(a, volbin.binarize(x, "stochastic", seed=1))
    b = volbin.binarize(x, "stochastic", seed=2)
    assert np.count_nonzero(a != b) > 0.1 * x.size
    # Two seeds agree only as often as independent draws would.
    p = volbin.rescale(x).astype(float)
    expected = np.sum(p * p + (1 - p) * (1 - p))
    assert abs(np.count_nonzero(a == b) - expected) < 5 * np.sqrt(x.size)


def test_stochastic_same_bytes_on_threads_and_sync_schedulers():
    x = da.from_array(GAMMA, chunks=(5, 7, 6))
    lazy = volbin.binarize(x, "stochastic", seed=4)
    threads = lazy.compute(scheduler="threads")
    with dask.config.set(scheduler="sync"):
        sync = lazy.compute()
    assert threads.tobytes() == sync.tobytes()
    otsu = volbin.binarize(x, "otsu", scope="slice")
    assert otsu.compute(scheduler="threads").tobytes() == otsu.compute(scheduler="sync").tobytes()


@pytest.mark.slow
def test_stochastic_same_bytes_on_processes_scheduler():
    x = da.from_array(GAMMA, chunks=(5, 7, 6))
    lazy = volbin.binarize(x, "stochastic", seed=4)
    assert lazy.compute(scheduler="processes").tobytes() == lazy.compute(scheduler="sync").tobytes()


# --- properties over chunkings, thresholds and constant data --------------------------------


@st.composite
def chunkings(draw, shape):
    chunks = []
    for s in shape:
        # At most one cut per axis keeps the number of blocks (and the test's time) small.
        cuts = sorted(draw(st.sets(st.integers(1, s - 1), max_size=1))) if s > 1 else []
        edges = [0, *cuts, s]
        chunks.append(tuple(b - a for a, b in itertools.pairwise(edges)))
    return tuple(chunks)


X4 = np.random.default_rng(4).gamma(2.0, size=(6, 5, 7, 2)) * np.array([1.0, 3.0])
X4[1, 1, 1, 0] = np.nan


def recipe_options(method, scope, rescale, curve, seed) -> dict:
    kw = dict(scope=scope[0], axis=scope[1], rescale=rescale, curve=curve, gamma=2.0, seed=seed)
    if method == "value":
        kw["threshold"] = 0.4
    return used(kw, method)


@functools.cache
def unchunked(method, scope, rescale, curve, seed) -> bytes | None:
    """The bytes of the mask of X4 as one numpy array (None if the method fails on it)."""
    kw = recipe_options(method, scope, rescale, curve, seed)
    try:
        return quiet(volbin.binarize, X4, method, **kw).tobytes()
    except VolbinDataError:  # e.g. `minimum` on a histogram with a single peak
        return None


@SETTINGS
@given(
    st.sampled_from(METHODS),
    st.sampled_from([("stack", "z"), ("volume", "z"), ("slice", "x"), ("slice", "y"), ("slice", "z")]),
    st.sampled_from(["minmax", "percentile"]),
    st.sampled_from(["linear", "gamma", "equalize"]),
    chunkings(X4.shape),
    st.integers(0, 3),
)
def test_any_chunking_gives_the_same_bytes(method, scope, rescale, curve, chunks, seed):
    seed = seed if method == "stochastic" else 0
    ref = unchunked(method, scope, rescale, curve, seed)
    kw = recipe_options(method, scope, rescale, curve, seed)
    if ref is None:  # then it fails whatever the chunking
        with pytest.raises(VolbinDataError):
            quiet(volbin.binarize, da.from_array(X4, chunks=chunks), method, **kw)
        return
    out = quiet(volbin.binarize, da.from_array(X4, chunks=chunks), method, **kw)
    assert out.compute().tobytes() == ref


@settings(max_examples=20, deadline=None, database=None)
@given(
    st.lists(st.floats(-1.0, 12.0), min_size=2, max_size=2),
    st.sampled_from(["raw", "rescaled"]),
    st.sampled_from(["linear", "gamma", "log", "equalize"]),
)
def test_higher_threshold_never_adds_voxels(ts, units, curve):
    t1, t2 = sorted(ts)
    if units == "rescaled":
        t1, t2 = t1 / 10, t2 / 10
    x = X4
    kw = used(dict(units=units, curve=curve, gamma=0.5), "value")
    low = quiet(volbin.binarize, x, "value", threshold=t1, **kw)
    high = quiet(volbin.binarize, x, "value", threshold=t2, **kw)
    assert not (high & ~low).any()


@settings(max_examples=20, deadline=None, database=None)
@given(
    st.sampled_from(METHODS),
    st.sampled_from(["stack", "volume", "slice"]),
    st.sampled_from(["float64", "float32", "int16", "uint8", "bool"]),
    st.floats(-1e6, 1e6),
    st.sampled_from(["minmax", "percentile", "dtype", "none"]),
)
def test_constant_volumes_do_not_crash(method, scope, dtype, value, rescale):
    x = np.full((3, 4, 5), value).astype(dtype)
    if rescale == "dtype" and dtype.startswith("float"):
        rescale = "minmax"
    kw = {"threshold": 0.5} if method == "value" else {}
    mask = quiet(volbin.binarize, x, method, scope=scope, rescale=rescale, **kw)
    assert mask.shape == x.shape and mask.dtype == np.bool_
    if rescale in ("minmax", "percentile"):
        assert not mask.any()


def test_stochastic_draws_do_not_depend_on_volume_axis_layout():
    x = np.random.default_rng(0).random((5, 6, 7, 3))
    nifti_order = volbin.binarize(x, "stochastic", seed=3, rescale="none")
    stacked = volbin.binarize(
        np.moveaxis(x, 3, 0).copy(), "stochastic", seed=3, rescale="none", volume_axis=0
    )
    np.testing.assert_array_equal(np.moveaxis(stacked, 0, 3), nifti_order)


# --- numpy input applied without a graph -----------------------------------------------------


@settings(max_examples=25, deadline=None, database=None)
@given(
    st.sampled_from(["float64", "float32", "float16", ">f8", "int16", "uint8", "int64"]),
    st.sampled_from(["C", "F", "strided"]),
    st.booleans(),
    st.sampled_from(["stack", "volume", "slice"]),
    st.sampled_from(
        [{}, {"inclusive": True}, {"invert": True}, {"upper": 0.8}, {"upper": 0.7, "invert": True}]
    ),
    st.booleans(),
    st.integers(1, 3),
    st.integers(0, 2**16),
)
def test_numpy_input_applied_in_place_equals_the_graph(
    dtype, layout, four_d, scope, extra, nonfinite, threads, seed
):
    """Numpy input is thresholded block by block into the output by the compiled loop: the
    same bytes, the same foreground counts, as the dask graph of the same data and chunks,
    in the input's memory order as ``x > t`` keeps it."""
    rng = np.random.default_rng(seed)
    shape = (9, 7, 5, 3) if four_d else (9, 7, 5)
    x = rng.gamma(2.0, 30.0, size=shape)
    if nonfinite:
        x.flat[::17] = np.nan
        x.flat[3::29] = np.inf
    x = x.astype(dtype) if "f" in dtype else np.round(np.nan_to_num(x, posinf=255)).clip(0, 255).astype(dtype)
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided":
        x = np.repeat(x, 2, axis=1)[:, ::2]
    opts = {"scope": scope, **({"axis": "y"} if scope == "slice" else {}), **extra}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        with dask.config.set(num_workers=threads):
            fast = volbin.binarize(x, "otsu", **opts)
        vol, _ = volbin.volume.as_volume(x, chunk_bytes=max(8, x.nbytes // 4))
        ref_vol = volbin.binarize(Volume(vol.data.map_blocks(np.asarray)), "otsu", **opts)
        ref = ref_vol.data.compute()
        again = volbin.binarize(Volume(vol.data), "otsu", **opts)  # lazy: its graph, not the fill
        step_fast = _fill_step(x, opts)
    assert fast.dtype == bool and fast.shape == x.shape
    assert fast.tobytes() == ref.tobytes()
    if layout == "F":
        assert fast.flags.f_contiguous
    assert again.data.compute().tobytes() == ref.tobytes()
    # The tally of the in-place pass equals counting the graph's output.
    assert step_fast["foreground"].to_dict() == ref_vol.steps[-1]["foreground"].to_dict()


def _fill_step(x, opts):
    """The binarize step of numpy input `x`, after its in-place fill ran."""
    import sys

    B = sys.modules["volbin.binarize"]
    vol, kind = volbin.volume.as_volume(x)
    res = B.binarize_volume(vol, volbin.recipe.merge(None, opts, "otsu"))
    volbin.volume.like_input(res, kind)
    return res.steps[-1]


def test_numpy_output_is_filled_without_a_graph(monkeypatch):
    # The graph path would go through da.store; the in-place fill does not.
    x = np.random.default_rng(1).gamma(2.0, size=(20, 16, 12))
    calls = []
    monkeypatch.setattr(da, "store", lambda *a, **k: calls.append(1))
    out = volbin.binarize(x, "otsu")
    assert not calls
    assert out.tobytes() == otsu_ref(x).tobytes()
