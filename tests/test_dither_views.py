"""Error diffusion read from views of raw data: the lockstep and staged loops against the
references, and the in-memory path of `volbin.dither` against the dask graph."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import volbin
from volbin import _dither_kernels as dk
from volbin._kernels import seed_key
from volbin.kernels import _diffusion
from volbin.phantom import phantom


def _load_reference():
    path = Path(__file__).with_name("reference.py")
    spec = importlib.util.spec_from_file_location("volbin_test_reference_views", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()

#: Vector versions of the lockstep loops this machine can run (0 scalar, 1 SSE2, 2 AVX2).
LEVELS = list(range(_diffusion.SIMD_LEVEL + 1))


@pytest.fixture(params=LEVELS)
def level(request):
    assert _diffusion._set_simd_level(request.param) == request.param
    yield request.param
    _diffusion._set_simd_level(99)


def _raw(shape, dtype, seed):
    """Raw values with NaN, +-Inf and values outside the rescale's range."""
    rng = np.random.default_rng(seed)
    x = rng.random(shape) * 3.0 - 1.0
    if np.dtype(dtype).kind == "f":
        flat = x.reshape(-1)
        flat[::7] = np.nan
        flat[3::11] = np.inf
        flat[5::13] = -np.inf
        return x.astype(dtype)
    return np.round(x * 40).astype(dtype)


def _rescaled(x, lo, span):
    """`volbin.rescale.Transform.apply`'s linear rescale, in numpy (NaN kept)."""
    return np.clip((x.astype(np.float64) - lo) / span, 0.0, 1.0).astype(np.float32)


def _view(x, perm, flip):
    v = x.transpose(perm)
    return v[::-1, :, ::-1] if flip else v


def _out(shape, layout):
    if layout == "C":
        return np.zeros(shape, np.uint8)
    if layout == "F":
        return np.zeros(shape[::-1], bool).T
    return np.zeros((shape[1], shape[2], shape[0]), np.uint8).transpose(2, 0, 1)


# -- the lockstep loop (2D) -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["floyd-steinberg", "jarvis-judice-ninke", "atkinson", "sierra-lite"])
@pytest.mark.parametrize("serpentine", [False, True])
def test_2d_view_matches_reference(level, name, serpentine):
    # 19 slices: a full group of 16 lanes and a part; slices innermost and outermost in memory.
    raw = _raw((5, 19, 7), np.float64, 1)
    key = seed_key(4)
    kwargs = dict(serpentine=serpentine, jitter=0.3, index_base=17, index_strides=(3, 50, 7))
    for perm in [(1, 0, 2), (1, 2, 0)]:
        src = raw.transpose(perm)
        out = dk.diffuse_2d_view(src, None, name, rescale=(-0.5, 2.0), key=key, **kwargs)
        expected = ref.diffuse(_rescaled(src, -0.5, 2.0), dk.KERNELS[name], key=int(key), **kwargs)
        np.testing.assert_array_equal(out, expected)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 70),
    rows=st.integers(1, 6),
    cols=st.integers(1, 9),
    perm=st.sampled_from(list(itertools.permutations(range(3)))),
    flip=st.booleans(),
    dtype=st.sampled_from(["float32", "float64", "int16", "uint8", "int64"]),
    name=st.sampled_from(sorted(dk.KERNELS)),
    serpentine=st.booleans(),
    jitter=st.sampled_from([0.0, 0.25]),
    rescale=st.booleans(),
    layout=st.sampled_from(["C", "F", "T"]),
)
def test_2d_view_equals_diffuse_2d_of_the_rescaled_copy(
    n, rows, cols, perm, flip, dtype, name, serpentine, jitter, rescale, layout
):
    shape = (n, rows, cols)
    base = _raw(tuple(shape[p] for p in np.argsort(perm)), dtype, n * 31 + rows)
    src = _view(base, perm, flip)
    assert src.shape == shape
    lo, span = (-0.4, 1.7) if dtype.startswith("float") else (-10.0, 50.0)
    values = _rescaled(src, lo, span) if rescale else np.ascontiguousarray(src, np.float32)
    kwargs = dict(
        serpentine=serpentine, jitter=jitter, key=seed_key(2), index_base=5, index_strides=(9, 4, 1)
    )
    expected = dk.diffuse_2d(values, None, name, **kwargs)
    out = _out(shape, layout)
    dk.diffuse_2d_view(src, out, name, rescale=(lo, span) if rescale else None, **kwargs)
    np.testing.assert_array_equal(out.view(np.uint8), expected)


def test_2d_view_at_every_vector_level_on_a_transposed_volume(level):
    vol = phantom((40, 33, 70), seed=5).intensity.astype(np.float32)  # slices innermost
    src = vol.transpose(2, 1, 0)
    lo, hi = float(np.nanmin(vol)), float(np.nanmax(vol))
    expected = dk.diffuse_2d(np.ascontiguousarray(_rescaled(src, lo, hi - lo)))
    np.testing.assert_array_equal(dk.diffuse_2d_view(src, rescale=(lo, hi - lo)), expected)


# -- the staged loop (3D) ---------------------------------------------------------------------


@pytest.mark.parametrize("slab", [1, 2, 5, None])
@pytest.mark.parametrize("threads", [1, 2])
def test_3d_view_matches_reference(level, slab, threads):
    raw = _raw((6, 11, 5), np.float32, 3)
    src = raw.transpose(1, 0, 2)[::-1]
    key = seed_key(8)
    kwargs = dict(serpentine=True, jitter=0.2, index_base=3, index_strides=(1, 6, 66))
    carry_in = np.zeros((1, 6, 5), np.float32)
    out, carry = dk.diffuse_3d_view(
        src, _out(src.shape, "F"), rescale=(-0.5, 1.5), carry_in=carry_in, slab=slab, threads=threads,
        key=key, **kwargs,
    )  # fmt: skip
    values = _rescaled(src, -0.5, 1.5)
    expected = ref.diffuse(values, dk.KERNELS_3D["sierra-lite-3d"], key=int(key), **kwargs)
    np.testing.assert_array_equal(out, expected.astype(bool))
    _, expected_carry = dk.diffuse_3d(np.ascontiguousarray(values), key=key, **kwargs)
    np.testing.assert_array_equal(carry, expected_carry)
    assert not carry_in.any()  # the caller's buffer is not written


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12),
    split=st.integers(0, 12),
    perm=st.sampled_from(list(itertools.permutations(range(3)))),
    dtype=st.sampled_from(["float32", "float64", "uint16"]),
    name=st.sampled_from(["sierra-lite-3d", "floyd-steinberg-3d", "stucki"]),
    serpentine=st.booleans(),
    slab=st.sampled_from([1, 3, None]),
    threads=st.sampled_from([1, 2]),
)
def test_3d_view_streamed_equals_diffuse_3d(n, split, perm, dtype, name, serpentine, slab, threads):
    shape = (n, 5, 7)
    base = _raw(tuple(shape[p] for p in np.argsort(perm)), dtype, n)
    src = base.transpose(perm)
    lo, span = (-0.4, 1.7) if dtype.startswith("float") else (-10.0, 50.0)
    values = np.ascontiguousarray(_rescaled(src, lo, span))
    whole, carry = dk.diffuse_3d(values, None, name, serpentine=serpentine, jitter=0.1, key=3)
    k = min(split, n)
    opts = dict(rescale=(lo, span), n_slices=n, serpentine=serpentine, jitter=0.1, key=3, slab=slab)
    a, c = dk.diffuse_3d_view(src[:k], None, name, threads=threads, **opts)
    b, c2 = dk.diffuse_3d_view(
        src[k:], None, name, carry_in=c, z0=k, index_base=k * 35, threads=threads, **opts
    )
    np.testing.assert_array_equal(np.concatenate([a, b]), whole)
    np.testing.assert_array_equal(c2, carry)


# -- staging: the rescale as Transform.apply computes it --------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "uint16", "int32", "uint64"])
def test_load_slab_is_the_rescale_of_transform_apply(level, dtype):
    x = _raw((4, 6, 37), dtype, 9).transpose(2, 0, 1)
    lo, span = (-0.3, 1.1) if dtype.startswith("float") else (-7.0, 30.0)
    got = np.empty(x.shape, np.float32)
    _diffusion.load_slab(x, got, lo, span, True)
    expected = _rescaled(x, lo, span)
    expected[np.isnan(expected)] = 0.0  # what the loops read for NaN
    np.testing.assert_array_equal(got.view(np.uint32), (expected + np.float32(0)).view(np.uint32))
    _diffusion.load_slab(x, got, 0.0, 1.0, False)
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_view_arguments_are_checked():
    img = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(TypeError, match="float16"):
        dk.diffuse_2d_view(img.astype(np.float16))
    with pytest.raises(ValueError, match="`out`"):
        dk.diffuse_2d_view(img, np.zeros((2, 3, 5), np.uint8))
    with pytest.raises(ValueError, match="`rescale`"):
        dk.diffuse_2d_view(img, rescale=(0.0, 0.0))
    with pytest.raises(ValueError, match="`slab`"):
        dk.diffuse_3d_view(img, slab=0)
    with pytest.raises(ValueError, match="3D numpy array"):
        dk.diffuse_3d_view(img[0])


# -- volbin.dither: numpy in memory against the dask graph -----------------------------------


@pytest.mark.parametrize("scope", ["slice", "volume", "stack"])
@pytest.mark.parametrize("order", ["C", "F", "z-innermost"])
def test_numpy_path_equals_the_graph(scope, order):
    x = phantom((30, 26, 40), n_volumes=2, seed=7).intensity.astype(np.float32)
    x[3, 4, 5, 1] = np.nan
    if order == "F":
        x = np.asfortranarray(x)
    elif order == "z-innermost":
        x = np.ascontiguousarray(x.transpose(3, 0, 1, 2)).transpose(1, 2, 3, 0)
    opts = dict(scope=scope, axis="z", jitter=0.2, seed=3)
    with pytest.warns(volbin.VolbinWarning, match="NaN"):
        ours = volbin.dither(x, **opts)
    with pytest.warns(volbin.VolbinWarning, match="NaN"):
        graph = volbin.dither(da.from_array(x, chunks=(30, 26, 7, 1)), **opts).compute()
    np.testing.assert_array_equal(ours, graph)
    assert not ours[3, 4, 5, 1]


@pytest.mark.parametrize("scope", ["slice", "volume"])
def test_numpy_path_does_not_depend_on_threads(scope):
    x = phantom((64, 70, 66), seed=8).intensity.astype(np.float32).transpose(2, 1, 0).copy()
    with dask.config.set(num_workers=1):
        one = volbin.dither(x, scope=scope)
    with dask.config.set(num_workers=3):
        three = volbin.dither(x, scope=scope)
    np.testing.assert_array_equal(one, three)


@pytest.mark.parametrize("dtype", [np.float16, ">f4", np.int16, np.bool_])
def test_numpy_path_reads_any_type_as_the_rescale_does(dtype):
    x = phantom((20, 18, 17), seed=9).intensity
    x = x / x.max()
    if dtype is np.bool_:
        a = x > np.median(x)
    else:
        a = (x * 100).astype(dtype) if np.dtype(dtype).kind == "i" else x.astype(dtype)
    ours = volbin.dither(a, scope="slice")
    graph = volbin.dither(da.from_array(a, chunks=(7, 18, 5)), scope="slice").compute()
    np.testing.assert_array_equal(ours, graph)
    r = volbin.rescale(a).transpose(2, 1, 0)
    expected = dk.diffuse_2d(np.ascontiguousarray(r)).transpose(2, 1, 0)
    np.testing.assert_array_equal(ours, expected.astype(bool))
