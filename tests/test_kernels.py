"""Tests of volbin._kernels against brute-force numpy versions.

The per-group kernels are run on single blocks (C and F order) for every grouping a scope can
make, and compared with ``np.nanmin``/``np.histogram`` on the voxels of each group.  The
counter-based generator is tested for uniformity, independence of neighbours, seeds and
chunk invariance.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
from scipy import stats

from volbin import _kernels as K
from volbin.histogram import _local_gstrides
from volbin.kernels import _histogram, _random
from volbin.volume import Grouping, Volume

# (shape, volume_axis, scope, slice axis): every grouping a scope can make.
GROUPINGS = [
    ((5, 6, 7), None, "stack", None),
    ((5, 6, 7), None, "volume", None),
    *[((5, 6, 7), None, "slice", ax) for ax in "xyz"],
    ((4, 5, 6, 3), 3, "stack", None),
    ((4, 5, 6, 3), 3, "volume", None),
    *[((4, 5, 6, 3), 3, "slice", ax) for ax in "xyz"],
    ((3, 4, 5, 6), 0, "stack", None),
    ((3, 4, 5, 6), 0, "volume", None),
    *[((3, 4, 5, 6), 0, "slice", ax) for ax in "xyz"],
]
DTYPES = [np.float32, np.float64, np.int16, np.uint8, np.bool_]


def make_grouping(shape, volume_axis, scope, axis) -> Grouping:
    vol = Volume(np.zeros(shape, np.uint8), volume_axis=volume_axis)
    return vol.grouping(scope, axis)


def per_group(x: np.ndarray, grouping: Grouping) -> list[np.ndarray]:
    """The voxels of each group (C order over ``group_shape``), as float64."""
    g = grouping.group_axes
    moved = np.moveaxis(x, g, tuple(range(len(g))))
    flat = moved.reshape((grouping.n_groups, -1)).astype(np.float64)
    return list(flat)


def random_data(shape, dtype, rng, nonfinite=True) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) > 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -300), min(info.max, 300)
        return rng.integers(lo, hi + 1, size=shape).astype(dtype)
    x = (rng.normal(size=shape) * 10).astype(dtype)
    if nonfinite:
        flat = x.reshape(-1)
        idx = rng.choice(flat.size, size=min(9, flat.size), replace=False)
        flat[idx[:3]] = np.nan
        flat[idx[3:6]] = np.inf
        flat[idx[6:]] = -np.inf
    return x


def kernel_args(x: np.ndarray, grouping: Grouping):
    gstrides, _ = _local_gstrides(x.shape, grouping)
    return K.as_c4d(x, gstrides)


def run_minmax(x, grouping):
    x4, g4 = kernel_args(x, grouping)
    n = grouping.n_groups
    mn, mx, nf = np.full(n, np.inf), np.full(n, -np.inf), np.zeros(n, np.int64)
    K.group_minmax(x4, g4, mn, mx, nf)
    return mn, mx, nf


def run_stats(x, grouping):
    x4, g4 = kernel_args(x, grouping)
    n = grouping.n_groups
    out = dict(
        mn=np.full(n, np.inf),
        mx=np.full(n, -np.inf),
        cnt=np.zeros(n, np.int64),
        s=np.zeros(n),
        ss=np.zeros(n),
        nf=np.zeros((n, 3), np.int64),
    )
    K.group_stats(x4, g4, n, out["mn"], out["mx"], out["cnt"], out["s"], out["ss"], out["nf"])
    return out


def run_hist(x, grouping, lo, hi, nbins):
    x4, g4 = kernel_args(x, grouping)
    counts = np.zeros((grouping.n_groups, nbins), np.int64)
    K.group_histogram(
        x4,
        g4,
        np.ascontiguousarray(lo, np.float64),
        np.ascontiguousarray(hi, np.float64),
        nbins,
        counts,
    )
    return counts


def run_hist_offsets(x, grouping, lo, hi, nbins):
    x4, g4 = kernel_args(x, grouping)
    counts = np.zeros((grouping.n_groups, nbins), np.int64)
    offsets = np.zeros((grouping.n_groups, nbins), np.int64)
    K.group_histogram_offsets(
        x4,
        g4,
        np.ascontiguousarray(lo, np.float64),
        np.ascontiguousarray(hi, np.float64),
        nbins,
        counts,
        offsets,
    )
    return counts, offsets


def ref_bin_sums(values: np.ndarray, lo: float, hi: float, nbins: int) -> np.ndarray:
    """Sum of the (clipped) finite values in each bin, binned as np.histogram."""
    v = np.clip(values[np.isfinite(values)], lo, hi)
    return np.histogram(v, nbins, (lo, hi), weights=v)[0]


def ref_hist(values: np.ndarray, lo: float, hi: float, nbins: int) -> np.ndarray:
    """np.histogram of the finite values, clipped to [lo, hi]; all in bin 0 if hi <= lo."""
    v = values[np.isfinite(values)]
    if not hi > lo:
        out = np.zeros(nbins, np.int64)
        out[0] = v.size
        return out
    return np.histogram(np.clip(v, lo, hi), nbins, (lo, hi))[0]


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", GROUPINGS, ids=lambda s: f"{s[0]}-va{s[1]}-{s[2]}-{s[3]}")
def test_group_minmax_and_stats_match_numpy(spec, dtype, order):
    rng = np.random.default_rng(zlib.crc32(repr((spec, dtype, order)).encode()))
    grouping = make_grouping(*spec)
    x = random_data(spec[0], dtype, rng)
    x = np.asfortranarray(x) if order == "F" else np.ascontiguousarray(x)
    mn, mx, nf = run_minmax(x, grouping)
    st = run_stats(x, grouping)
    for g, v in enumerate(per_group(x, grouping)):
        fin = v[np.isfinite(v)]
        exp_min = fin.min() if fin.size else np.inf
        exp_max = fin.max() if fin.size else -np.inf
        assert mn[g] == exp_min and st["mn"][g] == exp_min
        assert mx[g] == exp_max and st["mx"][g] == exp_max
        assert nf[g] == np.count_nonzero(~np.isfinite(v))
        assert st["cnt"][g] == fin.size
        np.testing.assert_allclose(st["s"][g], fin.sum(), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(st["ss"][g], (fin**2).sum(), rtol=1e-12, atol=1e-9)
        assert list(st["nf"][g]) == [
            np.count_nonzero(np.isnan(v)),
            np.count_nonzero(v == np.inf),
            np.count_nonzero(v == -np.inf),
        ]


def test_minmax_all_nonfinite_group_keeps_initial_values():
    x = np.full((2, 3, 4), np.nan)
    x[1] = 5.0
    x[0, 0, 0] = np.inf
    grouping = make_grouping(x.shape, None, "slice", "x")
    mn, mx, nf = run_minmax(x, grouping)
    assert mn[0] == np.inf and mx[0] == -np.inf and nf[0] == 12
    assert mn[1] == mx[1] == 5.0 and nf[1] == 0


def test_minmax_accumulates_across_calls():
    x = np.arange(24.0).reshape(2, 3, 4)
    grouping = make_grouping(x.shape, None, "stack", None)
    mn, mx, nf = run_minmax(x[:1], grouping)
    x4, g4 = kernel_args(np.ascontiguousarray(x[1:]), grouping)
    K.group_minmax(x4, g4, mn, mx, nf)
    assert (mn[0], mx[0], nf[0]) == (0.0, 23.0, 0)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", GROUPINGS, ids=lambda s: f"{s[0]}-va{s[1]}-{s[2]}-{s[3]}")
def test_group_histogram_matches_np_histogram(spec, dtype, order):
    rng = np.random.default_rng(zlib.crc32(repr((spec, dtype, order, 1)).encode()))
    grouping = make_grouping(*spec)
    x = random_data(spec[0], dtype, rng)
    x = np.asfortranarray(x) if order == "F" else np.ascontiguousarray(x)
    groups = per_group(x, grouping)
    for nbins in (2, 7, 256):
        # Each group over its own finite range, then over a clipping range inside it.
        lo = np.array([np.min(v[np.isfinite(v)], initial=0.0) for v in groups])
        hi = np.array([np.max(v[np.isfinite(v)], initial=0.0) for v in groups])
        mid, half = (lo + hi) / 2, (hi - lo) / 4
        for a, b in ((lo, hi), (mid - half, mid + half)):
            counts = run_hist(x, grouping, a, b, nbins)
            counts2, offsets = run_hist_offsets(x, grouping, a, b, nbins)
            np.testing.assert_array_equal(counts2, counts)
            for g, v in enumerate(groups):
                np.testing.assert_array_equal(counts[g], ref_hist(v, a[g], b[g], nbins))
                if not b[g] > a[g]:
                    continue
                # Offsets are fixed-point positions in the bins: sum = count * left + offsets * w.
                w = (b[g] - a[g]) / nbins
                left = np.arange(nbins) * w + a[g]
                sums = counts[g] * left + offsets[g] / K.OFFSET_SCALE * w
                tol = counts[g] * w * (2.0**-24 + 1e-12) + 1e-9 * np.abs(sums)
                assert np.all(np.abs(sums - ref_bin_sums(v, a[g], b[g], nbins)) <= tol)
                assert np.all(offsets[g] <= counts[g] * K.OFFSET_SCALE) and np.all(offsets[g] >= 0)


@pytest.mark.parametrize("nbins", [3, 10, 51, 255, 256, 300])
def test_histogram_integer_values_on_bin_edges(nbins):
    # 0..255 over [0, 255]: with 51 or 255 bins every edge is an integer value; with other
    # counts many values fall within rounding distance of an edge.
    x = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    grouping = make_grouping(x.shape, None, "stack", None)
    for lo, hi in ((0.0, 255.0), (10.0, 200.0), (-5.0, 250.0)):
        counts = run_hist(x, grouping, [lo], [hi], nbins)
        np.testing.assert_array_equal(counts[0], ref_hist(x.ravel().astype(float), lo, hi, nbins))
        np.testing.assert_array_equal(run_hist_offsets(x, grouping, [lo], [hi], nbins)[0], counts)


@pytest.mark.parametrize("nbins", [10, 20, 30, 100, 1000])
def test_histogram_decimal_values_on_bin_edges(nbins):
    # k / 10 and k * 0.1 differ in the last bit for some k: np.histogram compares values with
    # the linspace edges exactly, and so must the kernel.
    values = np.concatenate([np.arange(1001) / 1000, np.arange(101) * 0.01, np.arange(11) * 0.1])
    x = np.zeros(1113)
    x[: values.size] = values
    x = x.reshape(3, 7, 53)
    grouping = make_grouping(x.shape, None, "stack", None)
    counts = run_hist(x, grouping, [0.0], [1.0], nbins)
    np.testing.assert_array_equal(counts[0], np.histogram(x, nbins, (0.0, 1.0))[0])
    np.testing.assert_array_equal(run_hist_offsets(x, grouping, [0.0], [1.0], nbins)[0], counts)


def test_histogram_edges_random_ranges():
    rng = np.random.default_rng(5)
    grouping = make_grouping((4, 5, 6), None, "stack", None)
    for _ in range(50):
        lo, hi = np.sort(rng.normal(size=2) * 10.0 ** rng.integers(-3, 4))
        nbins = int(rng.integers(2, 300))
        edges = np.linspace(lo, hi, nbins + 1)
        # Values exactly on edges, their float neighbours, and random values.
        pick = rng.choice(edges, 60)
        vals = np.concatenate([pick, np.nextafter(pick, -np.inf)[:30], rng.uniform(lo, hi, 30)])
        x = vals.reshape(4, 5, 6)
        counts = run_hist(x, grouping, [lo], [hi], nbins)
        np.testing.assert_array_equal(counts[0], ref_hist(vals, lo, hi, nbins))
        np.testing.assert_array_equal(run_hist_offsets(x, grouping, [lo], [hi], nbins)[0], counts)


def test_histogram_empty_and_inverted_ranges_put_finite_values_in_bin_0():
    x = np.array([1.0, 2.0, np.nan, np.inf, -np.inf, 3.0] * 4).reshape(2, 3, 4)
    grouping = make_grouping(x.shape, None, "stack", None)
    for lo, hi in ((2.0, 2.0), (3.0, 1.0)):
        counts = run_hist(x, grouping, [lo], [hi], 5)
        assert counts[0].tolist() == [12, 0, 0, 0, 0]
        counts, offsets = run_hist_offsets(x, grouping, [lo], [hi], 5)
        assert counts[0].tolist() == [12, 0, 0, 0, 0] and not offsets.any()


def test_histogram_extreme_values_clip_without_overflow():
    x = np.array([-1e308, 1e308, -3e38, 3e38, 0.5, 0.25, 0.0, 1.0]).reshape(2, 2, 2)
    grouping = make_grouping(x.shape, None, "stack", None)
    counts = run_hist(x, grouping, [0.0], [1.0], 4)
    np.testing.assert_array_equal(counts[0], ref_hist(x.ravel(), 0.0, 1.0, 4))
    counts2, offsets = run_hist_offsets(x, grouping, [0.0], [1.0], 4)
    np.testing.assert_array_equal(counts2, counts)
    # Clipped values sit on the range's edges: positions 0 (first bin) and 1 (last bin).
    assert offsets[0].tolist() == [0, 0, 0, 3 * K.OFFSET_SCALE]  # 1e308, 3e38 and 1.0


def test_histogram_accumulates():
    x = np.arange(24.0).reshape(2, 3, 4)
    grouping = make_grouping(x.shape, None, "stack", None)
    counts = run_hist(x, grouping, [0.0], [23.0], 4)
    x4, g4 = kernel_args(x, grouping)
    K.group_histogram(x4, g4, np.array([0.0]), np.array([23.0]), 4, counts)
    np.testing.assert_array_equal(counts[0], 2 * np.histogram(x, 4, (0, 23))[0])


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize(
    "shape,vaxis", [((7, 5, 6), None), ((4, 5, 6, 3), 3), ((3, 4, 5, 6), 0), ((5, 1, 6, 2), 1)]
)
def test_group_count_matches_numpy(shape, vaxis, order):
    from volbin.binarize import _count_per_volume

    rng = np.random.default_rng(len(shape) + (vaxis or 0))
    x = np.asarray(rng.random(shape) < 0.3, order=order)
    want = (
        [np.count_nonzero(x)]
        if vaxis is None
        else np.count_nonzero(x, axis=tuple(a for a in range(x.ndim) if a != vaxis))
    )
    np.testing.assert_array_equal(_count_per_volume(x, vaxis), want)
    # Accumulates, and counts bytes that are non-zero (not only 1).
    g = np.zeros(4, np.int64)
    c = np.full(1, 5, np.int64)
    K.group_count(np.full((1, 2, 3, 4), 7, np.uint8), g, c)
    assert c[0] == 5 + 24


def test_as_c4d_views_fortran_blocks_without_copy():
    x = np.asfortranarray(np.arange(60.0).reshape(3, 4, 5))
    x4, g4 = K.as_c4d(x, np.array([0, 0, 1]))
    assert x4.flags.c_contiguous and np.shares_memory(x4, x)
    # The transposed view (5, 4, 3), groups along its first axis; its last two axes merged
    # into rows of 12.
    assert x4.shape == (1, 1, 5, 12) and g4.tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize(
    ("shape", "g", "want_shape", "want_g"),
    [
        ((181, 217, 181, 10), (0, 0, 0, 0), (1, 181, 217, 1810), (0, 0, 0, 0)),
        ((181, 217, 181, 10), (0, 0, 0, 1), (181, 217, 181, 10), (0, 0, 0, 1)),
        ((10, 18, 21, 18), (1, 0, 0, 0), (1, 10, 18, 378), (0, 1, 0, 0)),
        ((3, 2, 2, 2), (0, 4, 2, 1), (1, 1, 3, 8), (0, 0, 0, 1)),
        ((4, 5, 6), (0, 1, 0), (1, 4, 5, 6), (0, 0, 1, 0)),
    ],
)
def test_as_c4d_merges_rows_keeping_every_voxels_group(shape, g, want_shape, want_g):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    x4, g4 = K.as_c4d(x, np.array(g))
    assert x4.shape == want_shape and g4.tolist() == list(want_g) and np.shares_memory(x4, x)
    # The same voxels in the same order, each in the group its strides gave it.
    groups = sum(np.indices(shape)[a] * g[a] for a in range(len(shape)))
    merged = sum(np.indices(want_shape)[a] * want_g[a] for a in range(4))
    np.testing.assert_array_equal(x4.ravel(), x.ravel())
    np.testing.assert_array_equal(merged.ravel(), groups.ravel())


# --- counter-based random numbers ---------------------------------------------------------


def uniforms(key, shape4, offset=(0, 0, 0, 0), block=None) -> np.ndarray:
    block = shape4 if block is None else block
    out = np.empty(block)
    K.uniform_block(key, np.array(shape4, np.int64), np.array(offset, np.int64), out)
    return out


N_RNG = 2**18
_M64 = 2**64 - 1


def splitmix64_uniform(key: int, index: int) -> float:
    """Plain reference: SplitMix64's output for state ``key + (index + 1) * gamma``, top 53 bits."""
    z = (key + (index + 1) * 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return ((z ^ (z >> 31)) >> 11) * 2.0**-53


def test_uniform_block_is_splitmix64_bit_for_bit():
    # SplitMix64 from state 0 (key 0) gives 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, ...
    u = uniforms(np.uint64(0), (1, 1, 1, 4)).ravel()
    for got, word in zip(u, [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F], strict=False):
        assert got == (word >> 11) * 2.0**-53
    for seed in (0, 5, 2**64 - 1):
        key = K.seed_key(seed)
        shape = (2, 3, 1, 5)
        got = uniforms(key, shape).ravel()
        expected = [splitmix64_uniform(int(key), i) for i in range(got.size)]
        np.testing.assert_array_equal(got, expected)


def test_uniform01_moments_and_range():
    u = uniforms(K.seed_key(0), (1, 1, 1, N_RNG)).ravel()
    assert u.min() >= 0.0 and u.max() < 1.0
    # Mean 1/2 (std sqrt(1/12 / N)); variance 1/12 (std sqrt(1/180 / N)): 5 sigma.
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / N_RNG)
    assert abs(u.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / N_RNG)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**63 + 7])
def test_uniform01_chi_square(seed):
    u = uniforms(K.seed_key(seed), (1, 1, 1, N_RNG)).ravel()
    observed = np.bincount((u * 256).astype(int), minlength=256)
    assert stats.chisquare(observed).pvalue > 1e-4


def test_uniform01_adjacent_indices_independent():
    u = uniforms(K.seed_key(3), (1, 1, 1, N_RNG)).ravel()
    for lag in (1, 2, 64):
        r = np.corrcoef(u[:-lag], u[lag:])[0, 1]
        assert abs(r) < 5 / np.sqrt(N_RNG)
    # Pairs of neighbours fill the unit square uniformly (16 x 16 cells).
    a, b = (u[0::2] * 16).astype(int), (u[1::2] * 16).astype(int)
    observed = np.bincount(a * 16 + b, minlength=256)
    assert stats.chisquare(observed).pvalue > 1e-4
    # The low bits too (a weak mixer leaves patterns there).
    bits = (u * 2**53).astype(np.uint64) & np.uint64(0xFF)
    assert stats.chisquare(np.bincount(bits.astype(int), minlength=256)).pvalue > 1e-4


def test_different_seeds_and_streams_differ():
    keys = [K.seed_key(s, stream) for s, stream in itertools.product((0, 1, 2), (0, 1))]
    assert len(set(int(k) for k in keys)) == len(keys)
    us = [uniforms(k, (1, 1, 1, 4096)).ravel() for k in keys]
    for a, b in itertools.combinations(us, 2):
        assert np.count_nonzero(a == b) == 0
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(4096)
    # Same seed, same numbers.
    np.testing.assert_array_equal(us[0], uniforms(K.seed_key(0, 0), (1, 1, 1, 4096)).ravel())


def test_uniform_block_is_chunk_invariant():
    shape = (3, 5, 7, 4)
    key = K.seed_key(9)
    full = uniforms(key, shape)
    for offset, block in [
        ((0, 0, 0, 0), (1, 2, 3, 4)),
        ((2, 3, 4, 1), (1, 2, 3, 3)),
        ((1, 0, 5, 2), (2, 5, 2, 2)),
    ]:
        sub = uniforms(key, shape, offset, block)
        sl = tuple(slice(o, o + b) for o, b in zip(offset, block, strict=True))
        np.testing.assert_array_equal(sub, full[sl])
    # The counter is the C-order index: the same numbers in any 4D reshape.
    np.testing.assert_array_equal(uniforms(key, (1, 1, 1, 420)).ravel(), full.ravel())


def test_bernoulli_block_is_uniform_below_p():
    shape = (2, 3, 4, 5)
    key = K.seed_key(4, 1)
    rng = np.random.default_rng(0)
    p = rng.random(shape).astype(np.float32)
    p.reshape(-1)[:5] = np.nan
    out = np.empty(shape, bool)
    K.bernoulli_block(p, key, np.array(shape), np.zeros(4, np.int64), out)
    u = uniforms(key, shape)
    np.testing.assert_array_equal(out, u < p)
    assert not out.reshape(-1)[:5].any()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1", None])
def test_seed_key_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="`seed`") as info:
        K.seed_key(bad)
    assert repr(bad) in str(info.value)


# --- vector versions -------------------------------------------------------------------------
# The loops have scalar, SSE2, AVX2 and AVX-512 versions, picked by the CPU; each must give
# the bytes of the plain definitions.  Levels the machine lacks are skipped.


@pytest.fixture(params=[0, 1, 2, 3], ids=["scalar", "sse2", "avx2", "avx512"])
def simd_level(request):
    level = request.param
    try:
        if _histogram._set_simd_level(level) != level or _random._set_simd_level(level) != level:
            pytest.skip(f"this machine has no vector level {level}")
        yield level
    finally:
        _histogram._set_simd_level(99)
        _random._set_simd_level(99)


def sequential_range(values: np.ndarray, lo: float, hi: float) -> tuple[float, float, int]:
    """The definition of `group_minmax` on one group, value by value."""
    bad = 0
    for v in values.tolist():
        if v - v == 0.0:
            lo = v if v < lo else lo
            hi = v if v > hi else hi
        else:
            bad += 1
    return lo, hi, bad


@pytest.mark.parametrize("n3", [1, 2, 3, 5, 8, 9, 16, 17, 31])
def test_vector_range_equals_sequential_definition_with_signed_zeros(simd_level, n3):
    rng = np.random.default_rng(n3)
    pool = np.array([0.0, -0.0, 1.5, -2.0, 3.0, np.nan, np.inf, -np.inf, -0.0, 0.0])
    for _ in range(30):
        x = rng.choice(pool, size=(3, 4, n3))
        if rng.random() < 0.5:
            x = np.abs(x)  # all-zero minima: which zero comes first decides the sign
        grouping = make_grouping(x.shape, None, "slice", "x")
        for init_lo, init_hi in ((np.inf, -np.inf), (0.0, -0.0), (-0.0, 0.0), (5.0, -5.0)):
            x4, g4 = kernel_args(x, grouping)
            mn, mx, nf = np.full(3, init_lo), np.full(3, init_hi), np.zeros(3, np.int64)
            K.group_minmax(x4, g4, mn, mx, nf)
            for g in range(3):
                exp = sequential_range(x[g].ravel(), init_lo, init_hi)
                got = (mn[g], mx[g], nf[g])
                assert got == exp
                assert np.signbit(got[:2]).tolist() == np.signbit(exp[:2]).tolist()


@pytest.mark.parametrize("dtype", [*DTYPES, np.uint16, np.int32, np.int8, np.uint32, np.int64])
def test_vector_histograms_match_np_histogram_on_every_row_length(simd_level, dtype):
    rng = np.random.default_rng(7)
    for n3 in (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33):
        x = random_data((2, 3, n3), dtype, rng, nonfinite=n3 > 3)
        grouping = make_grouping(x.shape, None, "stack", None)
        v = x.ravel().astype(np.float64)
        fin = v[np.isfinite(v)]
        lo, hi = fin.min(), fin.max()
        for nbins in (1, 3, 256):
            for a, b in ((lo, hi), ((lo + hi) / 2, hi), (lo, lo)):
                counts = run_hist(x, grouping, [a], [b], nbins)
                np.testing.assert_array_equal(counts[0], ref_hist(v, a, b, nbins))
                np.testing.assert_array_equal(run_hist_offsets(x, grouping, [a], [b], nbins)[0], counts)
        mn, mx, nf = run_minmax(x, grouping)
        assert (mn[0], mx[0], nf[0]) == (fin.min(), fin.max(), v.size - fin.size)


@pytest.mark.parametrize("dtype", ["float64", "float32", "int16", "uint8", "int64"])
@pytest.mark.parametrize(
    ("shape", "g"),
    [((3, 5, 7, 10), (0, 0, 0, 1)), ((4, 2, 9, 6), (6, 0, 0, 1)), ((2, 3, 11, 5), (0, 5, 0, 1))],
    ids=["xyzt", "slices", "mixed"],
)
def test_range_and_histogram_with_a_group_per_row_position(simd_level, dtype, shape, g):
    # Groups along the rows, the same for every row of a plane (a C-order (X, Y, Z, T)
    # stack per volume; z-slices with z innermost): the lanes are gathered into rows.
    rng = np.random.default_rng(sum(shape))
    x = (rng.normal(size=shape) * 50).astype(dtype)
    if x.dtype.kind == "f":
        x.flat[::13] = np.nan
        x.flat[5::17] = np.inf
        x.flat[7::19] = -np.inf
    g4 = np.array(g, np.int64)
    groups = sum(np.indices(shape)[a] * g[a] for a in range(4)).ravel()
    n = int(groups.max()) + 1
    mn, mx, nf = np.full(n, np.inf), np.full(n, -np.inf), np.zeros(n, np.int64)
    K.group_minmax(x, g4, mn, mx, nf)
    vals = x.ravel().astype(np.float64)
    lo, hi = np.empty(n), np.empty(n)
    for k in range(n):
        v = vals[groups == k]
        fin = v[np.isfinite(v)]
        assert (mn[k], mx[k], nf[k]) == (fin.min(), fin.max(), v.size - fin.size)
        lo[k], hi[k] = fin.min(), fin.max()
    for nbins in (7, 256, 20000):
        counts = np.zeros((n, nbins), np.int64)
        K.group_histogram(x, g4, lo, hi, nbins, counts)
        for k in range(n):
            np.testing.assert_array_equal(counts[k], ref_hist(vals[groups == k], lo[k], hi[k], nbins))


def test_vector_histogram_bins_values_on_edges(simd_level):
    # Edges and their float neighbours, as in test_histogram_edges_random_ranges, in one row.
    rng = np.random.default_rng(11)
    for _ in range(20):
        lo, hi = np.sort(rng.normal(size=2) * 10.0 ** rng.integers(-3, 4))
        nbins = int(rng.integers(2, 300))
        edges = np.linspace(lo, hi, nbins + 1)
        vals = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
        x = vals.reshape(1, 1, -1)
        grouping = make_grouping(x.shape, None, "stack", None)
        np.testing.assert_array_equal(
            run_hist(x, grouping, [lo], [hi], nbins)[0], ref_hist(vals, lo, hi, nbins)
        )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_vector_histogram_bins_values_a_few_ulps_from_edges(simd_level, dtype):
    # The vector loops store the truncated position of a value unless it lies within a
    # rounding bound of an edge: values 1 to 64 ulps either side of every edge, over ranges
    # far from 0 for their width (where that bound is widest) and tiny ones, must still be
    # binned as np.histogram bins them.
    rng = np.random.default_rng(12)
    d = np.dtype(dtype)
    cases = [(0.0, 1.0), (-3.0, 5.0), (1e6, 1e6 + 1), (1e12, 1e12 + 2**-8), (-1e9 - 3, -1e9),
             (0.0, 1e-300), (1e-300, 3e-300), (1.0, 1.0 + 2**-40)]  # fmt: skip
    for lo, hi in cases:
        lo, hi = float(d.type(lo)), float(d.type(hi))
        if not hi > lo:
            continue
        for nbins in (3, 256, 4099):
            edges = np.linspace(lo, hi, nbins + 1)
            if not (np.diff(edges) > 0).all():
                continue  # edges np.histogram refuses
            edges = edges.astype(d)
            near = [edges]
            for k in (1, 2, 5, 64):
                step = np.spacing(np.abs(edges)).astype(d) * k
                near += [edges - step, edges + step]
            vals = np.concatenate([*near, rng.uniform(lo, hi, 500).astype(d)])
            vals = vals[(vals >= lo) & (vals <= hi)]
            x = vals.reshape(1, 1, -1)
            grouping = make_grouping(x.shape, None, "stack", None)
            np.testing.assert_array_equal(
                run_hist(x, grouping, [lo], [hi], nbins)[0],
                ref_hist(vals.astype(np.float64), lo, hi, nbins),
                err_msg=f"{dtype} [{lo!r}, {hi!r}] {nbins} bins",
            )


@pytest.mark.parametrize("n3", [1, 3, 4, 7, 8, 9, 13, 64])
def test_vector_uniforms_and_draws_are_splitmix64(simd_level, n3):
    key = K.seed_key(21)
    shape = (2, 1, 3, n3)
    offset = (0, 0, 1, 0) if n3 == 1 else (0, 0, 0, 1)
    block = (2, 1, 2, max(1, n3 - 1)) if n3 > 1 else (2, 1, 2, 1)
    got = uniforms(key, shape, offset, block)
    flat = np.arange(np.prod(shape)).reshape(shape)
    sl = tuple(slice(o, o + b) for o, b in zip(offset, block, strict=True))
    expected = [splitmix64_uniform(int(key), int(i)) for i in flat[sl].ravel()]
    np.testing.assert_array_equal(got.ravel(), expected)
    for dtype in (np.float32, np.float64):
        p = np.random.default_rng(n3).random(block).astype(dtype)
        p.reshape(-1)[::5] = np.nan
        out = np.empty(block, bool)
        K.bernoulli_block(p, key, np.array(shape), np.array(offset), out)
        np.testing.assert_array_equal(out, got < p)


# --- threshold masks written in place ----------------------------------------------------------


@pytest.fixture(params=[0, 1, 2], ids=["scalar", "sse2", "avx2"])
def above_level(request):
    from volbin.kernels import _threshold

    try:
        if _threshold._set_simd_level(request.param) != request.param:
            pytest.skip(f"this machine has no vector level {request.param}")
        yield request.param
    finally:
        _threshold._set_simd_level(99)


def above_ref(x, t, u, flags):
    """numpy's definition: ``x > t`` (``>=``), ``& x <= u``, complement, then finite only."""
    f = np.greater_equal(x, t) if flags & K.ABOVE_INCLUSIVE else np.greater(x, t)
    if flags & K.ABOVE_UPPER:
        f &= np.less_equal(x, u)
    if flags & K.ABOVE_INVERT:
        f = ~f
    if flags & K.ABOVE_FINITE and x.dtype.kind == "f":
        f &= np.isfinite(x)
    return f


@pytest.mark.parametrize(
    "dtype", ["float64", "float32", "int32", "int16", "uint16", "uint8", "int8", "uint32", "int64", "uint64"]
)
@pytest.mark.parametrize("flags", range(16))
def test_group_above_equals_numpy_for_every_flag_type_and_vector_level(above_level, dtype, flags):
    rng = np.random.default_rng(flags)
    n3 = 37  # vector body and tail
    x = (rng.normal(size=(2, 3, 4, n3)) * 40).astype(dtype)
    if x.dtype.kind == "f":
        x.flat[::7] = np.nan
        x.flat[1::11] = np.inf
        x.flat[2::13] = -np.inf
    # Thresholds per axis-1 index (one per row) and a threshold exactly on data values.
    t = np.array([-10.0, float(x.flat[5]) if np.isfinite(x.flat[5]) else 0.5, 3.25])
    u = t + 30.0
    out = np.ones(x.shape, dtype=bool)
    counts = np.zeros(2, dtype=np.int64)
    K.group_above(x, np.array([0, 1, 0, 0]), t, u, flags, out, np.array([1, 0, 0, 0]), counts)
    ref = above_ref(x, t[None, :, None, None], u[None, :, None, None], flags)
    assert out.tobytes() == ref.tobytes()
    assert counts.tolist() == ref.sum(axis=(1, 2, 3)).tolist()


@pytest.mark.parametrize("dtype", ["float64", "float32", "int16", "uint8", "int64"])
@pytest.mark.parametrize("flags", range(16))
def test_group_above_counts_along_the_rows_with_a_threshold_per_row(above_level, dtype, flags):
    # A volume axis that is the contiguous one (a C-order (X, Y, Z, T) stack): the vector
    # row loops write the row, and each of its voxels is counted in its own volume.
    rng = np.random.default_rng(100 + flags)
    n3 = 37
    x = (rng.normal(size=(2, 3, 4, n3)) * 40).astype(dtype)
    if x.dtype.kind == "f":
        x.flat[::7] = np.nan
        x.flat[1::11] = np.inf
    t = np.array([-10.0, 0.5, 3.25])
    u = t + 30.0
    out = np.ones(x.shape, dtype=bool)
    counts = np.zeros(n3, dtype=np.int64)
    K.group_above(x, np.array([0, 1, 0, 0]), t, u, flags, out, np.array([0, 0, 0, 1]), counts)
    ref = above_ref(x, t[None, :, None, None], u[None, :, None, None], flags)
    assert out.tobytes() == ref.tobytes()
    assert counts.tolist() == ref.sum(axis=(0, 1, 2)).tolist()


@pytest.mark.parametrize("dtype", ["float64", "float32", "int16", "uint8", "int64"])
@pytest.mark.parametrize("flags", range(16))
@pytest.mark.parametrize(
    ("shape", "ts", "cs"),
    [
        ((2, 3, 7, 10), (0, 0, 0, 1), (0, 0, 0, 1)),  # a plane of rows, per volume
        ((2, 3, 7, 10), (10, 0, 0, 1), (0, 0, 0, 0)),  # per (volume, position)
        ((1, 2, 500, 9), (0, 0, 0, 1), (0, 0, 0, 1)),  # a plane too long to be one row
        ((2, 2, 3, 5), (0, 0, 5, 1), (0, 1, 0, 0)),  # thresholds along two axes
    ],
    ids=["plane", "plane-bases", "rows", "per-row"],
)
def test_group_above_with_a_threshold_per_row_position(above_level, dtype, flags, shape, ts, cs):
    rng = np.random.default_rng(200 + flags)
    x = (rng.normal(size=shape) * 40).astype(dtype)
    if x.dtype.kind == "f":
        x.flat[::7] = np.nan
        x.flat[1::11] = np.inf
        x.flat[2::13] = -np.inf
    tg = sum(np.indices(shape)[a] * ts[a] for a in range(4))
    cg = sum(np.indices(shape)[a] * cs[a] for a in range(4))
    t = rng.normal(size=int(tg.max()) + 1) * 30
    u = t + 25.0
    out = np.ones(shape, dtype=bool)
    counts = np.zeros(int(cg.max()) + 1, dtype=np.int64)
    K.group_above(x, np.array(ts), t, u, flags, out, np.array(cs), counts)
    ref = above_ref(x, t[tg], u[tg], flags)
    assert out.tobytes() == ref.tobytes()
    want = np.bincount(cg.ravel(), weights=ref.ravel(), minlength=counts.size)
    assert counts.tolist() == want.astype(int).tolist()


def test_group_above_with_groups_along_the_rows_and_bad_strides():
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    t = np.array([0.5, 5.0, 9.5, 30.0])
    out = np.zeros(x.shape, dtype=bool)
    counts = np.zeros(4, dtype=np.int64)
    K.group_above(x, np.array([0, 0, 0, 1]), t, None, 0, out, np.array([0, 0, 0, 1]), counts)
    ref = x > t
    assert out.tobytes() == ref.tobytes() and counts.tolist() == ref.sum(axis=(0, 1, 2)).tolist()
    with pytest.raises(ValueError, match="tstrides"):
        K.group_above(x, np.array([0, 0, 0, 2]), t, None, 0, out, np.zeros(4, np.int64), counts)
    with pytest.raises(ValueError, match="cstrides"):
        K.group_above(x, np.zeros(4, np.int64), t, None, 0, out, np.array([0, 0, 3, 0]), counts)
    with pytest.raises(ValueError, match="`out`"):
        K.group_above(x, np.zeros(4, np.int64), t, None, 0, out[:, :1], np.zeros(4, np.int64), counts)


@pytest.mark.parametrize("gstrides", [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], ids=["one", "rows", "lanes"])
@pytest.mark.parametrize("nbins", [16383, 20000, 65536])
def test_group_histogram_with_many_bins_equals_numpy(gstrides, nbins):
    # Many bins are counted in two interleaved uint32 histograms: the same counts.
    rng = np.random.default_rng(nbins)
    x = rng.gamma(2.0, 100.0, size=(2, 3, 5, 33))
    x[0, 0] = 0.0  # a run of equal bins
    x[1, 2, 1, ::5] = np.nan
    g = np.array(gstrides, dtype=np.int64)
    n_groups = int(1 + sum((s - 1) * st for s, st in zip(x.shape, g, strict=True)))
    groups = sum(
        np.arange(s).reshape([-1 if a == i else 1 for i in range(4)]) * st
        for a, (s, st) in enumerate(zip(x.shape, g, strict=True))
    )
    groups = np.broadcast_to(groups, x.shape)
    lo = np.array([np.nanmin(x[groups == k]) for k in range(n_groups)])
    hi = np.array([np.nanmax(x[groups == k]) for k in range(n_groups)])
    counts = np.zeros((n_groups, nbins), dtype=np.int64)
    K.group_histogram(x, g, lo, hi, nbins, counts)
    for k in range(n_groups):
        v = x[groups == k]
        assert counts[k].tolist() == ref_hist(v[np.isfinite(v)], lo[k], hi[k], nbins).tolist()
