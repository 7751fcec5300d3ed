"""Tests of volbin.histogram: streamed per-group reductions equal numpy whatever the chunking."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volbin.histogram import (
    fine_nbins,
    group_histograms,
    group_histograms_with_offsets,
    group_range,
    group_stats,
    percentiles_from_hist,
)
from volbin.volume import Grouping, Volume

SETTINGS = settings(max_examples=20, deadline=None, database=None)


def per_group(x: np.ndarray, grouping: Grouping) -> np.ndarray:
    """(n_groups, voxels) float64 array of each group's voxels."""
    g = grouping.group_axes
    return np.moveaxis(x, g, tuple(range(len(g)))).reshape((grouping.n_groups, -1)).astype(float)


def ref_hist(values: np.ndarray, lo: float, hi: float, nbins: int) -> np.ndarray:
    v = values[np.isfinite(values)]
    if not hi > lo:
        out = np.zeros(nbins, np.int64)
        out[0] = v.size
        return out
    return np.histogram(np.clip(v, lo, hi), nbins, (lo, hi))[0]


@st.composite
def chunked_volumes(draw, dtypes=("float32", "float64", "int16", "uint8", "bool")):
    """(numpy data, the same as a dask array in random chunks, volume_axis)."""
    ndim = draw(st.sampled_from([3, 4]))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        x = rng.random(shape) > 0.5
    elif dtype.kind in "iu":
        x = rng.integers(0, 60, size=shape).astype(dtype)
    else:
        x = rng.normal(size=shape).astype(dtype)
        n_bad = draw(st.integers(0, 3))
        flat = x.reshape(-1)
        flat[rng.integers(0, flat.size, n_bad)] = rng.choice([np.nan, np.inf, -np.inf], n_bad)
    chunks = []
    for s in shape:
        cuts = sorted(draw(st.sets(st.integers(1, s - 1), max_size=2))) if s > 1 else []
        edges = [0, *cuts, s]
        chunks.append(tuple(b - a for a, b in itertools.pairwise(edges)))
    order = draw(st.sampled_from(["C", "F"]))
    base = np.asfortranarray(x) if order == "F" else x
    volume_axis = draw(st.sampled_from([0, 3])) if ndim == 4 else None
    return x, da.from_array(base, chunks=tuple(chunks)), volume_axis


scopes = st.sampled_from([("stack", None), ("volume", None), ("slice", "x"), ("slice", "y"), ("slice", "z")])


@SETTINGS
@given(chunked_volumes(), scopes, st.integers(2, 40))
def test_range_stats_histograms_equal_numpy_for_any_chunking(data, scope, nbins):
    x, dx, volume_axis = data
    vol = Volume(dx, volume_axis=volume_axis)
    grouping = vol.grouping(*scope)
    groups = per_group(x, grouping)
    finite = np.isfinite(groups)

    mn, mx, nf = group_range(vol, grouping)
    assert mn.shape == mx.shape == nf.shape == grouping.group_shape
    exp_min = np.where(finite, groups, np.inf).min(axis=1)
    exp_max = np.where(finite, groups, -np.inf).max(axis=1)
    np.testing.assert_array_equal(mn.ravel(), exp_min)
    np.testing.assert_array_equal(mx.ravel(), exp_max)
    np.testing.assert_array_equal(nf.ravel(), (~finite).sum(axis=1))

    s = group_stats(vol, grouping)
    np.testing.assert_array_equal(s.min.ravel(), exp_min)
    np.testing.assert_array_equal(s.max.ravel(), exp_max)
    np.testing.assert_array_equal(s.count.ravel(), finite.sum(axis=1))
    np.testing.assert_allclose(s.sum.ravel(), np.where(finite, groups, 0).sum(axis=1), atol=1e-9)
    np.testing.assert_array_equal(s.nan.ravel(), np.isnan(groups).sum(axis=1))
    np.testing.assert_array_equal(s.posinf.ravel(), (groups == np.inf).sum(axis=1))
    np.testing.assert_array_equal(s.neginf.ravel(), (groups == -np.inf).sum(axis=1))
    np.testing.assert_array_equal(s.nonfinite, nf)

    lo = np.where(mx >= mn, mn, 0.0)
    hi = np.where(mx >= mn, mx, 0.0)
    for a, b in ((lo, hi), (lo + (hi - lo) / 3, hi - (hi - lo) / 3)):
        counts = group_histograms(vol, grouping, a, b, nbins)
        assert counts.shape == (*grouping.group_shape, nbins) and counts.dtype == np.int64
        expected = np.array(
            [ref_hist(v, ai, bi, nbins) for v, ai, bi in zip(groups, a.ravel(), b.ravel(), strict=True)]
        )
        np.testing.assert_array_equal(counts.reshape(-1, nbins), expected)

    # Bin means: integer accumulation, so equal bytes whatever the chunking.
    counts, means = group_histograms_with_offsets(vol, grouping, lo, hi, nbins)
    one = Volume(da.from_array(x, chunks=x.shape), volume_axis=volume_axis)
    counts1, means1 = group_histograms_with_offsets(one, grouping, lo, hi, nbins)
    assert counts.tobytes() == counts1.tobytes() and means.tobytes() == means1.tobytes()
    for v, m, c, a, b in zip(
        groups, means.reshape(-1, nbins), counts.reshape(-1, nbins), lo.ravel(), hi.ravel(), strict=True
    ):
        if not b > a:
            continue
        f = v[np.isfinite(v)]
        ref_sum = np.histogram(f, nbins, (a, b), weights=f)[0]
        full = c > 0
        np.testing.assert_allclose(
            m[full], ref_sum[full] / c[full], rtol=1e-12, atol=(b - a) / nbins * 2.0**-23
        )
        edges = np.linspace(a, b, nbins + 1)
        assert np.all((m >= edges[:-1] - 1e-12) & (m <= edges[1:] + 1e-12))


def test_histogram_of_mapped_blocks_sees_global_locations():
    # `pre` gets each block's array location: adding the global x index must give the
    # histogram of x + index, whatever the chunks.
    rng = np.random.default_rng(0)
    x = rng.random((6, 5, 4))
    vol = Volume(da.from_array(x, chunks=(2, 3, 4)))
    grouping = vol.grouping("slice", "y")

    def pre(block, location):
        return block + np.arange(*location[0])[:, None, None]

    shifted = x + np.arange(6)[:, None, None]
    lo, hi = np.zeros(5), np.full(5, 6.0)
    counts = group_histograms(vol, grouping, lo, hi, 12, pre=pre)
    for j in range(5):
        np.testing.assert_array_equal(counts[j], np.histogram(shifted[:, j], 12, (0, 6))[0])


def test_group_histograms_accepts_dask_arrays_and_validates_nbins():
    x = np.arange(27.0).reshape(3, 3, 3)
    g = Volume(x).grouping("stack")
    counts = group_histograms(da.from_array(x), g, np.array(0.0), np.array(26.0), 3)
    assert counts.tolist() == [9, 9, 9]
    for bad in (1, 0, 2.5, "8"):
        with pytest.raises(ValueError, match="`nbins`") as info:
            group_histograms(da.from_array(x), g, np.array(0.0), np.array(26.0), bad)
        assert repr(bad) in str(info.value)


def test_stats_moments():
    rng = np.random.default_rng(1)
    x = rng.normal(3, 2, size=(5, 6, 7, 2))
    x[0, 0, 0, 0] = np.nan
    vol = Volume(x)
    s = group_stats(vol, vol.grouping("volume"))
    for t in range(2):
        v = x[..., t][np.isfinite(x[..., t])]
        np.testing.assert_allclose(s.mean[t], v.mean())
        np.testing.assert_allclose(s.std[t], v.std())
        np.testing.assert_allclose(s.rms[t], np.sqrt((v**2).mean()))


# --- percentiles from histograms ------------------------------------------------------------


@SETTINGS
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 3000),
    st.sampled_from(["normal", "integers", "lognormal", "few"]),
    st.lists(st.floats(0, 100), min_size=1, max_size=5),
)
def test_percentiles_within_one_fine_bin_of_np_percentile(seed, n, kind, q):
    rng = np.random.default_rng(seed)
    v = {
        "normal": lambda: rng.normal(size=n),
        "integers": lambda: rng.integers(0, 50, n).astype(float),
        "lognormal": lambda: rng.lognormal(0, 2, n),
        "few": lambda: rng.choice([0.0, 1.0, 7.5], n),
    }[kind]()
    nbins = fine_nbins(1)
    lo, hi = v.min(), v.max()
    counts = np.array([ref_hist(v, lo, hi, nbins)])
    got = percentiles_from_hist(counts, np.array([lo]), np.array([hi]), q)[0]
    expected = np.percentile(v, q)
    assert np.all(np.abs(got - expected) <= (hi - lo) / nbins * (1 + 1e-9))
    assert np.all(np.diff(got[np.argsort(q)]) >= 0)


def test_percentiles_extremes_are_exact_and_constant_groups_give_lo():
    v = np.array([1.0, 2.0, 4.0, 8.0])
    counts = np.array([ref_hist(v, 1.0, 8.0, 16), np.zeros(16, np.int64), ref_hist(v, 3, 3, 16)])
    lo, hi = np.array([1.0, 0.0, 3.0]), np.array([8.0, 0.0, 3.0])
    p = percentiles_from_hist(counts, lo, hi, [0, 100])
    assert p.tolist() == [[1.0, 8.0], [0.0, 0.0], [3.0, 3.0]]


def test_fine_nbins_budget():
    assert fine_nbins(1) == 65536
    assert fine_nbins(128) == 65536
    assert fine_nbins(129) == 32768
    assert fine_nbins(10**6, 256) == 256
    assert fine_nbins(10**6, 300) == 300
    for n in (1, 7, 500, 4000):
        f = fine_nbins(n)
        assert f * n <= 2**23 or f == 256


@SETTINGS
@given(chunked_volumes(), scopes, st.integers(2, 40), st.integers(1, 3))
def test_numpy_input_reduced_without_a_graph_equals_the_dask_path(data, scope, nbins, threads):
    """Arrays wrapped by `as_volume` are reduced on their blocks directly: the same results
    as the graph over the same data and chunks, whatever the number of threads."""
    import dask

    from volbin.volume import as_volume, in_memory

    x, dx, volume_axis = data
    fast, kind = as_volume(np.asarray(dx), volume_axis=volume_axis, chunk_bytes=max(8, x.nbytes // 3))
    assert kind == "numpy" and in_memory(fast.data) is not None
    assert in_memory(fast.data + 0) is None and in_memory(dx) is None
    slow = Volume(fast.data.map_blocks(np.asarray), volume_axis=volume_axis)  # the same chunks, as a graph
    g_fast, g_slow = fast.grouping(*scope), slow.grouping(*scope)
    with dask.config.set(num_workers=threads):
        r_fast = group_range(fast, g_fast, counts=True)
        lo = np.where(np.isfinite(r_fast[0]), r_fast[0], 0.0)
        hi = np.where(np.isfinite(r_fast[1]), r_fast[1], 1.0)
        h_fast = group_histograms(fast, g_fast, lo, hi, nbins)
        c_fast, m_fast = group_histograms_with_offsets(fast, g_fast, lo, hi, nbins)
    r_slow = group_range(slow, g_slow, counts=True)
    for a, b in zip(r_fast, r_slow, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(h_fast, group_histograms(slow, g_slow, lo, hi, nbins))
    c_slow, m_slow = group_histograms_with_offsets(slow, g_slow, lo, hi, nbins)
    np.testing.assert_array_equal(c_fast, c_slow)
    np.testing.assert_array_equal(m_fast, m_slow)


@pytest.mark.parametrize("scope", ["volume", "slice"])
def test_histograms_gathered_by_batch_equal_one_compute(phantom4d, monkeypatch, scope):
    # Large results come back a batch of blocks at a time (bounded memory): same bytes.
    import volbin.histogram as H

    x = phantom4d.intensity
    vol = Volume(da.from_array(x, chunks=(20, 48, 40, 1)), volume_axis=3)
    grouping = vol.grouping(scope, "y")
    lo, hi, _ = group_range(vol, grouping)
    nbins = 512
    graph = H.histogram_graph(vol.data, grouping, lo, hi, nbins, offsets=True)
    ref = graph.compute()
    ref_counts, ref_means = group_histograms_with_offsets(vol, grouping, lo, hi, nbins)
    plain = group_histograms(vol, grouping, lo, hi, nbins)
    monkeypatch.setattr(H, "_BATCH_BYTES", graph.nbytes // 3)
    assert graph.nbytes > H._BATCH_BYTES and graph.npartitions > 3
    np.testing.assert_array_equal(H._compute_by_batch(graph), ref)
    counts, means = group_histograms_with_offsets(vol, grouping, lo, hi, nbins)
    assert counts.tobytes() == ref_counts.tobytes() and means.tobytes() == ref_means.tobytes()
    np.testing.assert_array_equal(group_histograms(vol, grouping, lo, hi, nbins), plain)
    # Bin means one group at a time equal the whole array at once (the formula before).
    c, off = ref[..., 0, :], ref[..., 1, :]
    c, off = H._move_groups(c, grouping), H._move_groups(off, grouping)
    lo_, hi_ = lo.reshape(grouping.group_shape)[..., None], hi.reshape(grouping.group_shape)[..., None]
    step = (hi_ - lo_) / nbins
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.where(c > 0, off / (np.maximum(c, 1) * float(H.K.OFFSET_SCALE)), 0.5)
    whole = np.arange(nbins) * step + lo_ + pos * step
    assert means.tobytes() == whole.tobytes()
