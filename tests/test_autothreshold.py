"""Tests of volbin.autothreshold (the ImageJ/ITK family) and of the percentile method.

References: SimpleITK's ``<Name>ThresholdImageFilter`` on the same data (a test-only
dependency; those tests skip without it), brute-force transcriptions of ImageJ's loops written
here, and ``np.percentile``.

ITK's convention, which the comparisons follow: ``HistogramThresholdImageFilter`` bins the
image into ``NumberOfHistogramBins`` bins over ``[min, max + (max - min) / (100 nbins)]``
(``ImageToHistogramFilter``'s marginal scale; the bin width is computed in float32), so its
bins are 1/25600 wider than ``np.histogram``'s and a value on a bin edge can fall in another
bin.  The calculator returns the centre of a bin (``Histogram::GetMeasurement``), cast to the
pixel type (float64 here), and the output marks ``value <= threshold`` with InsideValue (1).
volbin's foreground, ``value > threshold``, is therefore ITK's outside: the same voxels for the
same threshold.  End to end, thresholds are compared as bin indices, volbin's in its bins and
ITK's in ITK's (the coarser binning), and must be at most one bin apart; on ITK's own
histogram they are the same bin.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import warnings
from pathlib import Path

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import volbin
from volbin import autothreshold
from volbin.errors import VolbinDataError, VolbinWarning
from volbin.histogram import fine_nbins
from volbin.phantom import phantom
from volbin.recipe import Recipe
from volbin.volume import Volume

SETTINGS = settings(max_examples=25, deadline=None, database=None)
ITK_T1 = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz")

FUNCTIONS = {
    "huang": autothreshold.threshold_huang,
    "intermodes": autothreshold.threshold_intermodes,
    "kittler-illingworth": autothreshold.threshold_kittler_illingworth,
    "max-entropy": autothreshold.threshold_max_entropy,
    "moments": autothreshold.threshold_moments,
    "renyi-entropy": autothreshold.threshold_renyi_entropy,
    "shanbhag": autothreshold.threshold_shanbhag,
}
METHODS = tuple(FUNCTIONS)
ITK_FILTERS = {
    "huang": "HuangThresholdImageFilter",
    "intermodes": "IntermodesThresholdImageFilter",
    "kittler-illingworth": "KittlerIllingworthThresholdImageFilter",
    "max-entropy": "MaximumEntropyThresholdImageFilter",
    "moments": "MomentsThresholdImageFilter",
    "renyi-entropy": "RenyiEntropyThresholdImageFilter",
    "shanbhag": "ShanbhagThresholdImageFilter",
}


def quiet(fn, *args, **kwargs):
    """Call `fn` ignoring volbin's data warnings (constant groups, NaN voxels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        return fn(*args, **kwargs)


# --- SimpleITK ---------------------------------------------------------------------------


def itk_filter(x: np.ndarray, method: str, nbins: int = 256):
    """SimpleITK's filter of `method` run on `x` as float64 (None if ITK raises)."""
    sitk = pytest.importorskip("SimpleITK")
    f = getattr(sitk, ITK_FILTERS[method])()
    f.SetNumberOfHistogramBins(nbins)
    try:
        out = f.Execute(sitk.GetImageFromArray(np.ascontiguousarray(x, dtype=np.float64)))
    except RuntimeError:
        return None, None
    return f.GetThreshold(), sitk.GetArrayFromImage(out)


def itk_threshold(x: np.ndarray, method: str, nbins: int = 256) -> float | None:
    return itk_filter(x, method, nbins)[0]


def itk_edges(x: np.ndarray, nbins: int = 256) -> np.ndarray:
    """The bin edges of ITK's histogram of `x` (auto range, marginal scale 100)."""
    lo, hi = float(np.min(x)), float(np.max(x))
    top = hi + (hi - lo) / nbins / 100.0
    step = np.float32((np.float32(top) - np.float32(lo)) / np.float32(nbins))
    edges = lo + (np.arange(nbins + 1, dtype=np.float32) * step).astype(np.float64)
    edges[-1] = top
    return edges


def itk_histogram(x: np.ndarray, nbins: int = 256) -> tuple[np.ndarray, np.ndarray]:
    edges = itk_edges(x, nbins)
    counts, _ = np.histogram(np.asarray(x, dtype=np.float64), edges)
    return counts, (edges[:-1] + edges[1:]) / 2


def itk_width(x: np.ndarray, nbins: int = 256) -> float:
    edges = itk_edges(x, nbins)
    return float(edges[-1] - edges[0]) / nbins


def bins_apart(x: np.ndarray, ours: float, itk: float, nbins: int = 256) -> float:
    """Bin index of volbin's threshold in volbin's bins minus ITK's in ITK's (0 for the same bin).

    ITK's bins are wider by 1/25600, so bin k's centre is up to 1/100 bin further up than
    volbin's: a difference of one bin can be a little more than one bin width in intensity.
    """
    lo = float(np.min(x))
    ours_bin = (ours - lo) / ((float(np.max(x)) - lo) / nbins) - 0.5
    itk_bin = (itk - lo) / itk_width(x, nbins) - 0.5
    return ours_bin - itk_bin


# --- data --------------------------------------------------------------------------------

REAL = ("phantom", "nibabel-t1", "dipy-b0", "dipy-aniso", "itk-t1")


@pytest.fixture(scope="module", params=REAL)
def real_volume(request: pytest.FixtureRequest) -> np.ndarray:
    """The phantom and each real T1/b0 volume, as float64 (3D)."""
    name = request.param
    if name == "phantom":
        return phantom((48, 56, 48), seed=0).intensity.astype(np.float64)
    if name == "itk-t1":
        if not ITK_T1.is_file():
            pytest.skip(f"{ITK_T1} (Debian's insighttoolkit5-examples) is not installed")
        path = ITK_T1
    else:
        fixture = {"nibabel-t1": "real_t1_path", "dipy-b0": "dipy_b0_path", "dipy-aniso": "dipy_aniso_path"}
        path = request.getfixturevalue(fixture[name])
    x = np.asarray(nib.load(path).dataobj, dtype=np.float64)
    return x[..., 0] if x.ndim == 4 else x


# --- against SimpleITK --------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_matches_simpleitk_within_one_bin(real_volume, method):
    x = real_volume
    ref = itk_threshold(x, method)
    if ref is None:  # ITK cannot decide (Kittler-Illingworth's sigma2 <= 0 on the ITK T1)
        with pytest.raises(VolbinDataError, match=f"'{method}' failed"):
            volbin.threshold(x, method)
        return
    got = volbin.threshold(x, method)
    # ITK's bin width is a float32: its centres are exact to about 1e-7 of a bin.
    assert abs(bins_apart(x, got, ref)) <= 1 + 1e-6, (method, got, ref, bins_apart(x, got, ref))


@pytest.mark.parametrize("method", METHODS)
def test_same_bin_as_simpleitk_on_its_histogram(real_volume, method):
    x = real_volume
    ref = itk_threshold(x, method)
    counts, centers = itk_histogram(x)
    fn = FUNCTIONS[method]
    if ref is None:
        with pytest.raises(VolbinDataError, match=method):
            fn(hist=(counts, centers))
        return
    got = fn(hist=(counts, centers))
    # ITK's Huang rounds the class means to integer intensities, not to bins (see its Notes).
    tol = 1 + 1e-6 if method == "huang" else 1e-6
    assert abs(got - ref) / itk_width(x) <= tol, (method, (got - ref) / itk_width(x))


def dense_histograms() -> list[np.ndarray]:
    """Histograms with every bin occupied (no ties between splits): noise plus a bump or two."""
    out = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(8, 90))
        i = np.arange(n)
        shape = sum(
            rng.uniform(5, 40) * np.exp(-(((i - rng.uniform(0, n)) / rng.uniform(1, n / 3)) ** 2))
            for _ in range(int(rng.integers(1, 3)))
        )
        out.append((rng.integers(1, 30, n) * (1 + shape)).astype(np.int64))
    return out


@pytest.mark.parametrize("method", [m for m in METHODS if m != "kittler-illingworth"])
def test_same_bin_as_simpleitk_on_synthetic_histograms(method):
    # Voxels at (k - 1/2) * 1000 fill ITK's bin k exactly and put bin 0's centre near 0, where
    # ITK's Huang drops it from the class means.  (Kittler-Illingworth is left out: ITK's loop
    # never ends on histograms where the iteration cycles.)
    for counts in dense_histograms():
        n = counts.size
        x = np.repeat((np.arange(n) - 0.5) * 1000.0, counts).reshape(1, 1, -1)
        ref = itk_threshold(x, method, nbins=n)
        if ref is None:  # intermodes: never bimodal
            with pytest.raises(VolbinDataError, match="not bimodal"):
                FUNCTIONS[method](hist=counts)
            continue
        ref_bin = int(np.floor((ref - x.min()) / itk_width(x, n)))
        got = FUNCTIONS[method](hist=counts)
        # Renyi: where t1 = t2 = t3 = t, ITK's rounding truncates to t - 1 (see the Notes).
        tol = 1 if method in ("huang", "renyi-entropy") else 0
        assert abs(got - ref_bin) <= tol, (method, counts.tolist(), got, ref_bin)


def test_kittler_illingworth_matches_simpleitk_on_gaussian_mixtures():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n1, n2 = rng.integers(500, 5000, 2)
        x = np.concatenate([rng.normal(0, rng.uniform(0.5, 2), n1), rng.normal(rng.uniform(2, 10), 1, n2)])
        x = (x * 100).reshape(1, 1, -1)
        ref = itk_threshold(x, "kittler-illingworth")
        assert ref is not None
        got = autothreshold.threshold_kittler_illingworth(hist=itk_histogram(x))
        assert abs(got - ref) / itk_width(x) <= 1e-6
        assert abs(bins_apart(x, volbin.threshold(x, "kittler-illingworth"), ref)) <= 1 + 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_volbin_foreground_is_itk_outside(method):
    x = phantom((40, 44, 40), seed=3).intensity.astype(np.float64)
    ref, itk_mask = itk_filter(x, method)
    assert ref is not None
    np.testing.assert_array_equal(itk_mask == 1, x <= ref)  # ITK: inside is value <= threshold
    t = volbin.threshold(x, method)
    mask = volbin.binarize(x, method)
    np.testing.assert_array_equal(mask, x > t)
    differ = mask != (itk_mask == 0)
    assert np.all((x[differ] > min(t, ref)) & (x[differ] <= max(t, ref)))


def test_simpleitk_kittler_illingworth_and_volbin_both_refuse_a_one_bin_class():
    counts = np.array([400, 0, 0, 0, 3, 9, 14, 9, 3, 1])
    x = np.repeat((np.arange(counts.size) - 0.5) * 1000.0, counts).reshape(1, 1, -1)
    assert itk_threshold(x, "kittler-illingworth", nbins=counts.size) is None
    with pytest.raises(VolbinDataError, match=r"kittler-illingworth: sigma2 <= 0"):
        autothreshold.threshold_kittler_illingworth(hist=counts)


# --- brute-force transcriptions of ImageJ's loops -----------------------------------------


def first_best(values: list[float], maximize: bool) -> int:
    best = max(values) if maximize else min(values)
    tol = 1e-12 * max(1.0, abs(best))
    return next(k for k, v in enumerate(values) if (v >= best - tol if maximize else v <= best + tol))


def fractions(h: list[int]) -> tuple[list[float], list[float], list[float], list[int]]:
    """p, P1 (at or below), P2 (above) and the bins with both classes non-empty."""
    n = sum(h)
    cum = list(itertools.accumulate(h))
    return (
        [c / n for c in h],
        [c / n for c in cum],
        [(n - c) / n for c in cum],
        [t for t, c in enumerate(cum) if 0 < c < n],
    )


def brute_max_entropy_values(h: list[int], alpha: float = 1.0) -> tuple[list[int], list[float]]:
    p, p1, p2, ts = fractions(h)
    values = []
    for t in ts:
        lower = [p[i] / p1[t] for i in range(t + 1) if h[i]]
        upper = [p[i] / p2[t] for i in range(t + 1, len(h)) if h[i]]
        if alpha == 1.0:
            values.append(-sum(q * math.log(q) for q in lower) - sum(q * math.log(q) for q in upper))
        else:
            a, b = sum(q**alpha for q in lower), sum(q**alpha for q in upper)
            values.append(math.log(a * b) / (1 - alpha))
    return ts, values


def brute_max_entropy(h: list[int]) -> int:
    ts, values = brute_max_entropy_values(h)
    return ts[first_best(values, True)]


def brute_renyi(h: list[int]) -> int:
    _, p1, p2, _ = fractions(h)
    found = []
    for alpha in (0.5, 1.0, 2.0):
        ts, values = brute_max_entropy_values(h, alpha)
        found.append(ts[first_best(values, True)])
    t1, t2, t3 = sorted(found)
    if abs(t1 - t2) <= 5:
        beta = (1, 2, 1) if abs(t2 - t3) <= 5 else (0, 1, 3)
    else:
        beta = (3, 1, 0) if abs(t2 - t3) <= 5 else (1, 2, 1)
    omega = p1[t3] - p1[t1]
    opt = t1 * (p1[t1] + 0.25 * omega * beta[0]) + 0.25 * t2 * omega * beta[1]
    opt += t3 * (p2[t3] + 0.25 * omega * beta[2])
    return int(opt + 1e-9)


def brute_shanbhag(h: list[int]) -> int:
    p, p1, p2, ts = fractions(h)
    values = []
    for t in ts:
        term = 0.5 / p1[t]
        back = -term * sum(p[i] * math.log(1 - term * p1[i - 1]) for i in range(1, t + 1))
        term = 0.5 / p2[t]
        obj = -term * sum(p[i] * math.log(1 - term * p2[i]) for i in range(t + 1, len(h)))
        values.append(abs(back - obj))
    return ts[first_best(values, False)]


def brute_huang(h: list[int]) -> int:
    """ImageJ's Huang2 (class means rounded to bins), over splits first .. last - 1."""
    occupied = [i for i, c in enumerate(h) if c]
    first, last = occupied[0], occupied[-1]
    span = last - first

    def fuzz(d: int) -> float:
        mu = 1 / (1 + d / span)
        return 0.0 if mu == 1 else -mu * math.log(mu) - (1 - mu) * math.log(1 - mu)

    values = []
    for t in range(first, last):
        lo = range(first, t + 1)
        hi = range(t + 1, last + 1)
        m0 = math.floor(sum(i * h[i] for i in lo) / sum(h[i] for i in lo) + 0.5)
        m1 = math.floor(sum(i * h[i] for i in hi) / sum(h[i] for i in hi) + 0.5)
        values.append(sum(fuzz(abs(i - m0)) * h[i] for i in lo) + sum(fuzz(abs(i - m1)) * h[i] for i in hi))
    return first + first_best(values, False)


def brute_moments(h: list[int]) -> int:
    """Tsai's equations with raw moments, as ImageJ solves them."""
    n = sum(h)
    p = [c / n for c in h]
    m1 = sum(i * q for i, q in enumerate(p))
    m2 = sum(i * i * q for i, q in enumerate(p))
    m3 = sum(i**3 * q for i, q in enumerate(p))
    cd = m2 - m1 * m1
    c0 = (-m2 * m2 + m1 * m3) / cd
    c1 = (-m3 + m2 * m1) / cd
    z0 = 0.5 * (-c1 - math.sqrt(c1 * c1 - 4 * c0))
    z1 = 0.5 * (-c1 + math.sqrt(c1 * c1 - 4 * c0))
    p0 = (z1 - m1) / (z1 - z0)
    cum = 0
    for i, c in enumerate(h):
        cum += c
        if cum >= p0 * n * (1 - 1e-9):
            return i
    return len(h) - 1


def brute_intermodes(h: list[int], limit: int) -> int | None:
    y = [float(c) for c in h]
    for _ in range(limit + 1):
        modes = [k for k in range(1, len(y) - 1) if y[k - 1] < y[k] > y[k + 1]]
        if len(modes) == 2:
            return (modes[0] + modes[1]) // 2
        previous, current, nxt = 0.0, 0.0, y[0]
        for i in range(len(y) - 1):
            previous, current, nxt = current, nxt, y[i + 1]
            y[i] = (previous + current + nxt) / 3
        y[-1] = (current + nxt) / 3
    return None


BRUTE = {
    "huang": brute_huang,
    "max-entropy": brute_max_entropy,
    "moments": brute_moments,
    "renyi-entropy": brute_renyi,
    "shanbhag": brute_shanbhag,
}

histograms = st.lists(st.integers(0, 60), min_size=2, max_size=40).filter(
    lambda h: sum(1 for c in h if c) >= 2
)


@SETTINGS
@given(st.sampled_from(sorted(BRUTE)), histograms)
def test_equals_brute_force_on_any_histogram(method, h):
    # Sparse histograms included: their mirror-image splits tie, and ties go to the lowest bin.
    assert FUNCTIONS[method](hist=np.array(h)) == BRUTE[method](h)


@SETTINGS
@given(histograms)
def test_intermodes_equals_brute_force(h):
    limit = 200
    expected = brute_intermodes(h, limit)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(autothreshold, "MAX_SMOOTHING", limit)
        if expected is None:
            with pytest.raises(VolbinDataError, match=f"not bimodal after {limit} smoothings"):
                autothreshold.threshold_intermodes(hist=np.array(h))
        else:
            assert autothreshold.threshold_intermodes(hist=np.array(h)) == expected


@pytest.mark.parametrize("method", ["huang", "shanbhag"])
def test_blocked_tables_give_the_same_threshold(method, monkeypatch):
    counts = dense_histograms()[3]
    whole = FUNCTIONS[method](hist=counts)
    monkeypatch.setattr(autothreshold, "_BLOCK", 7)  # one row per block
    assert FUNCTIONS[method](hist=counts) == whole


# --- histograms, images and volbin.threshold ---------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_volbin_threshold_equals_the_function_on_the_image(method):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(10, 2, 6000), rng.normal(30, 5, 3000)]).reshape(20, 15, 30)
    ref = FUNCTIONS[method](x)  # np.histogram's 256 bins, as volbin bins float data
    assert volbin.threshold(x, method) == ref
    assert volbin.threshold(da.from_array(x, chunks=(7, 8, 9)), method) == ref
    counts, edges = np.histogram(x, 256)
    assert FUNCTIONS[method](hist=(counts, (edges[:-1] + edges[1:]) / 2)) == ref


@pytest.mark.parametrize("method", METHODS)
def test_bin_centres_set_the_units(method):
    counts = dense_histograms()[7]
    index = FUNCTIONS[method](hist=counts)
    centers = 3.0 + 0.5 * np.arange(counts.size)
    assert FUNCTIONS[method](hist=(counts, centers)) == 3.0 + 0.5 * index


@pytest.mark.parametrize("method", METHODS)
def test_constant_and_empty_histograms_raise(method):
    with pytest.raises(VolbinDataError, match=rf"^{method}: every value falls in one histogram bin"):
        FUNCTIONS[method](np.full((4, 5, 6), 3.0))
    with pytest.raises(VolbinDataError, match=rf"^{method}: every value falls in one histogram bin"):
        FUNCTIONS[method](hist=np.array([0, 0, 7, 0]))
    with pytest.raises(VolbinDataError, match=rf"^{method}: the histogram is empty"):
        FUNCTIONS[method](hist=np.zeros(5))
    with pytest.raises(VolbinDataError, match=rf"^{method}: the image has no finite value"):
        FUNCTIONS[method](np.full(4, np.nan))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "`image` or `hist`"),
        ({"hist": (np.ones(4), np.arange(5.0))}, "same length"),
        ({"hist": np.ones((2, 3))}, "1-D"),
        ({"hist": np.array([1.0, -1.0, 2.0])}, "non-negative"),
        ({"hist": (np.ones(3), np.array([0.0, 1.0, 5.0]))}, "equally spaced"),
        ({"hist": (np.ones(3), np.ones(3), np.ones(3))}, "3-tuple"),
        ({"image": np.arange(9.0), "nbins": 1}, "`nbins`"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        autothreshold.threshold_huang(**kwargs)


def test_intermodes_refuses_a_unimodal_histogram():
    counts = (np.exp(-(((np.arange(64) - 30) / 8.0) ** 2)) * 1000).astype(np.int64) + 1
    with pytest.raises(VolbinDataError, match=r"intermodes: the histogram is not bimodal after 10000"):
        autothreshold.threshold_intermodes(hist=counts)
    x = np.repeat(np.arange(64.0), counts)[:, None, None]  # 64 bins over [0, 63]: the same counts
    with pytest.raises(VolbinDataError, match=r"'intermodes' failed for the volume: .*not bimodal"):
        volbin.threshold(x, "intermodes", nbins=64)


def test_mirror_image_splits_tie_to_the_lowest_bin():
    # Splits 0 and 5 leave the same classes {1} and {29, 12, 14, 1}; the sums round apart.
    h = [1, 29, 12, 0, 0, 14, 1]
    assert autothreshold.threshold_max_entropy(hist=np.array(h)) == 0.0
    assert autothreshold.threshold_renyi_entropy(hist=np.array(h)) == 0.0
    for method in BRUTE:
        assert FUNCTIONS[method](hist=np.array(h)) == BRUTE[method](h), method


def test_two_equal_masses_are_split_between_them():
    for method in ("huang", "max-entropy", "moments", "renyi-entropy", "shanbhag"):
        assert FUNCTIONS[method](hist=np.array([3, 0, 0, 0, 0, 3])) == 0.0, method


# --- percentile ---------------------------------------------------------------------------


def fine_width(x: np.ndarray, n_groups: int = 1) -> float:
    return float(np.nanmax(x) - np.nanmin(x)) / fine_nbins(n_groups, 256)


@pytest.mark.parametrize("q", [0.0, 0.5, 2.5, 25.0, 50.0, 90.0, 99.9, 100.0])
def test_percentile_matches_numpy(real_volume, q):
    x = real_volume
    got = volbin.threshold(x, "percentile", percentile=q)
    assert abs(got - np.percentile(x, q)) <= fine_width(x)


def test_percentile_per_slice_and_per_volume():
    rng = np.random.default_rng(2)
    x = rng.gamma(2.0, size=(9, 10, 11, 3)) * np.array([1.0, 5.0, 20.0])
    got = volbin.threshold(x, "percentile", percentile=80, scope="slice", axis="y")
    assert got.shape == (10, 3)
    for j, t in itertools.product(range(10), range(3)):
        v = x[:, j, :, t]
        assert abs(got[j, t] - np.percentile(v, 80)) <= (v.max() - v.min()) / fine_nbins(30, 256)
    per_volume = volbin.threshold(x, "percentile", percentile=10, scope="volume")
    for t in range(3):
        assert abs(per_volume[t] - np.percentile(x[..., t], 10)) <= fine_width(x[..., t], 3)
    stack = volbin.threshold(x, "percentile", percentile=10, scope="stack")
    assert abs(stack - np.percentile(x, 10)) <= fine_width(x)


def test_percentile_binarize_selects_the_voxels_above():
    x = phantom((30, 32, 30), seed=1).intensity
    out = volbin.binarize(
        Volume(x), "percentile", percentile=90, rescale="percentile", curve="gamma", gamma=2
    )
    t = out.steps[-1]["decision"]["threshold_raw"]
    assert abs(t - np.percentile(x, 90)) <= fine_width(x)
    np.testing.assert_array_equal(out.compute(), x > t)
    assert out.steps[-1]["recipe"]["percentile"] == 90.0


@SETTINGS
@given(
    st.integers(0, 2**32 - 1),
    st.floats(0, 100),
    st.sampled_from(["float64", "float32", "int16", "uint8"]),
    st.sampled_from([(5, 6, 7), (40, 1, 3), (2, 2, 2)]),
)
def test_percentile_within_a_fine_bin_of_numpy(seed, q, dtype, shape):
    rng = np.random.default_rng(seed)
    x = (rng.gamma(1.5, size=shape) * 40).clip(0, 250).astype(dtype)
    if x.min() == x.max():
        return
    got = volbin.threshold(x, "percentile", percentile=q)
    assert abs(got - np.percentile(x.astype(np.float64), q)) <= fine_width(x.astype(np.float64))


@pytest.mark.parametrize("bad", [-0.1, 100.5, float("nan"), float("inf"), "50", True])
def test_percentile_out_of_range_is_named(bad):
    with pytest.raises(
        ValueError, match=r"`percentile` must be a number in \[0, 100\]; got " + re.escape(repr(bad))
    ):
        Recipe(method="percentile", percentile=bad)


def test_percentile_is_required_and_refused_elsewhere():
    x = np.random.default_rng(0).random((4, 5, 6))
    with pytest.raises(ValueError, match=r"`percentile` is not used by method='otsu'; got percentile=50"):
        volbin.binarize(x, method="otsu", percentile=50)
    with pytest.raises(ValueError, match=r"`method='percentile'` needs `percentile`"):
        volbin.binarize(x, method="percentile")
    r = Recipe(method="percentile", percentile=25)
    assert r.percentile == 25.0 and isinstance(r.percentile, float)
    assert Recipe.from_json(r.to_json()) == r


# --- properties through volbin.threshold ---------------------------------------------------

NEW_METHODS = (*METHODS, "percentile")
X4 = np.concatenate(
    [
        np.random.default_rng(7).gamma(2.0, size=(6, 7, 8, 2)) * np.array([1.0, 4.0]),
        np.random.default_rng(8).normal(12.0, 1.0, size=(6, 7, 8, 2)),
    ],
    axis=1,
)


@st.composite
def chunkings(draw, shape):
    chunks = []
    for s in shape:
        cuts = sorted(draw(st.sets(st.integers(1, s - 1), max_size=2))) if s > 1 else []
        edges = [0, *cuts, s]
        chunks.append(tuple(b - a for a, b in itertools.pairwise(edges)))
    return tuple(chunks)


def options(method: str) -> dict:
    return {"percentile": 70.0} if method == "percentile" else {}


@functools.cache
def unchunked(method: str, scope: str, axis: str, rescale: str):
    return try_threshold(X4, method, scope=scope, axis=axis, rescale=rescale)


def try_threshold(x, method, **kw):
    try:
        return quiet(volbin.threshold, x, method, **kw, **options(method))
    except VolbinDataError as exc:
        return exc


@settings(max_examples=15, deadline=None, database=None)
@given(
    st.sampled_from(NEW_METHODS),
    st.sampled_from([("stack", "z"), ("volume", "z"), ("slice", "x"), ("slice", "y"), ("slice", "z")]),
    st.sampled_from(["minmax", "percentile"]),
    chunkings(X4.shape),
)
def test_any_chunking_gives_the_same_thresholds(method, scope, rescale, chunks):
    kw = dict(scope=scope[0], axis=scope[1], rescale=rescale)
    ref = unchunked(method, *scope, rescale)
    got = try_threshold(da.from_array(X4, chunks=chunks), method, **kw)
    if isinstance(ref, VolbinDataError):  # then it fails whatever the chunking
        assert isinstance(got, VolbinDataError) and str(got) == str(ref)
        return
    np.testing.assert_array_equal(got, ref)
    mask = quiet(volbin.binarize, da.from_array(X4, chunks=chunks), method, **kw, **options(method))
    np.testing.assert_array_equal(mask.compute(), X4 > np.asarray(ref).reshape(_broadcast_shape(scope)))


def _broadcast_shape(scope: tuple[str, str]) -> tuple[int, ...]:
    if scope[0] == "stack":
        return ()
    if scope[0] == "volume":
        return (1, 1, 1, X4.shape[3])
    axis = "xyz".index(scope[1])
    return tuple(X4.shape[a] if a in (axis, 3) else 1 for a in range(4))


@SETTINGS
@given(
    st.sampled_from(NEW_METHODS),
    st.sampled_from(["stack", "volume", "slice"]),
    st.sampled_from(["float64", "float32", "int16", "uint8"]),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["linear", "gamma", "equalize"]),
)
def test_thresholds_lie_within_the_data_range(method, scope, dtype, seed, curve):
    rng = np.random.default_rng(seed)
    x = (rng.gamma(2.0, size=(5, 6, 7, 2)) * 30).clip(0, 250).astype(dtype)
    x[..., 1] += np.asarray(7).astype(dtype)
    t = try_threshold(x, method, scope=scope, curve=curve, **({"gamma": 2.0} if curve == "gamma" else {}))
    if isinstance(t, VolbinDataError):  # methods that can refuse a histogram say why
        assert method in ("kittler-illingworth", "intermodes"), t
        assert f"'{method}' failed" in str(t)
        return
    vol = Volume(x)
    g = vol.grouping(scope)
    t = np.broadcast_to(t, g.group_shape)
    xf = x.astype(float)
    for idx in np.ndindex(*g.group_shape):
        sel: list = [slice(None)] * 4
        for a, i in zip(g.group_axes, idx, strict=True):
            sel[a] = i
        v = xf[tuple(sel)]
        if v.min() == v.max():
            assert np.isnan(t[idx])
        else:
            assert v.min() <= t[idx] <= v.max()


@SETTINGS
@given(
    st.sampled_from(NEW_METHODS),
    st.sampled_from(["stack", "volume", "slice"]),
    st.sampled_from(["float64", "int16", "uint8", "bool"]),
    st.floats(-1e6, 1e6),
)
def test_constant_volumes_warn_and_select_nothing(method, scope, dtype, value):
    x = np.full((3, 4, 5), value).astype(dtype)
    with pytest.warns(VolbinWarning, match="constant"):
        t = volbin.threshold(x, method, scope=scope, **options(method))
    assert np.all(np.isnan(t))
    assert not quiet(volbin.binarize, x, method, scope=scope, **options(method)).any()
