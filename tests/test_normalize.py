"""volbin.normalize against references: numpy z-scores, scikit-image's match_histograms,
a brute-force WhiteStripe, SimpleITK's N4 run directly; Nyul on distorted phantoms;
chunk-invariance; and volbin.exposure against numpy."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks
from skimage import exposure

from volbin.errors import VolbinDataError, VolbinError
from volbin.exposure import exposure_stats, format_exposure, histogram_bar
from volbin.normalize import NyulLandmarks, fit_normalize, fit_nyul, normalize
from volbin.phantom import CLASSES, phantom
from volbin.volume import Volume

ITK_T1 = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz")
ITK_MASK = ITK_T1.with_name("KmeansTest_T1RawSkullStrip.nii.gz")


@pytest.fixture(scope="module")
def head():
    return phantom((48, 56, 48), seed=0)


@pytest.fixture(scope="module")
def itk_t1():
    if not (ITK_T1.is_file() and ITK_MASK.is_file()):
        pytest.skip("insighttoolkit5-examples' T1 head is not installed")
    x = np.asarray(nib.load(ITK_T1).dataobj).astype(np.float64)
    m = np.asarray(nib.load(ITK_MASK).dataobj) > 0
    return x, m


# --- z-score -------------------------------------------------------------------------------


def test_zscore_equals_numpy_inside_the_mask(head):
    x = head.intensity.astype(np.float64)
    m = head.brain
    z = normalize(x, "zscore", mask=m)
    np.testing.assert_allclose(z, (x - x[m].mean()) / x[m].std(), rtol=1e-6, atol=1e-6)
    assert z.dtype == np.float32 and isinstance(z, np.ndarray)


def test_zscore_default_mask_is_the_non_zero_voxels_per_volume():
    rng = np.random.default_rng(0)
    x = rng.gamma(3.0, size=(10, 11, 12, 3)) * np.array([1.0, 10.0, 100.0])
    x[:3] = 0
    z = normalize(x, "zscore")
    for t in range(3):
        v = x[..., t]
        nz = v[v != 0]
        np.testing.assert_allclose(z[..., t], (v - nz.mean()) / nz.std(), rtol=1e-5, atol=1e-5)
    s = normalize(x, "zscore", scope="stack")
    nz = x[x != 0]
    np.testing.assert_allclose(s, (x - nz.mean()) / nz.std(), rtol=1e-5, atol=1e-5)


def test_zscore_record_and_volume_steps(head):
    vol = Volume(da.from_array(head.intensity, chunks=(48, 56, 7)))
    out = normalize(vol, "zscore", mask=head.brain)
    assert isinstance(out, Volume) and out.dtype == np.float32
    rec = out.steps[-1]
    assert rec["step"] == "normalize" and rec["method"] == "zscore"
    x = head.intensity.astype(np.float64)[head.brain]
    assert rec["mean"] == pytest.approx(x.mean(), rel=1e-12) and rec["std"] == pytest.approx(
        x.std(), rel=1e-10
    )
    assert rec["n_voxels"] == int(head.brain.sum())
    json.dumps(rec)


def test_errors_name_the_option_and_the_method(head):
    with pytest.raises(
        ValueError, match=r"`tau` is an option of method='whitestripe', not of method='zscore'"
    ):
        normalize(head.intensity, "zscore", tau=0.1)
    with pytest.raises(ValueError, match="`method` must be one of"):
        normalize(head.intensity, "zscores")
    with pytest.raises(ValueError, match="`scope`"):
        normalize(head.intensity, "zscore", scope="slice")
    with pytest.raises(ValueError, match="needs `reference`"):
        normalize(head.intensity, "match")
    with pytest.raises(VolbinDataError, match="no finite voxel inside the mask"):
        normalize(head.intensity, "zscore", mask=np.zeros(head.labels.shape, bool))
    with pytest.raises(ValueError, match="`mask` must have"):
        normalize(head.intensity, "zscore", mask=np.ones((3, 3, 3), bool))


# --- histogram matching --------------------------------------------------------------------


def test_match_agrees_with_skimage_on_the_phantom_within_a_fine_bin(head):
    x = head.intensity.astype(np.float64)
    other = phantom((48, 56, 48), seed=3)
    ref = other.intensity.astype(np.float64) * 1.7 + 50.0
    y = normalize(x, "match", mask=head.brain, reference=ref, reference_mask=other.brain)
    xs, rs = x[head.brain], np.sort(ref[other.brain])
    sk = exposure.match_histograms(xs, rs)
    # Float data have (nearly) one value per voxel: compare the ranks in the reference, which
    # may differ by the voxels of one fine bin (of the source or of the reference).
    rank = np.searchsorted(rs, y[head.brain], side="right") / rs.size
    rank_sk = np.searchsorted(rs, sk, side="right") / rs.size
    fine_mass = max(np.histogram(xs, 65536)[0].max() / xs.size, np.histogram(rs, 65536)[0].max() / rs.size)
    assert np.abs(rank - rank_sk).max() <= fine_mass
    w = (rs[-1] - rs[0]) / 65536
    assert np.median(np.abs(y[head.brain] - sk)) < w


def test_match_agrees_with_skimage_on_real_mri(itk_t1):
    x, m = itk_t1
    ref = np.flip(x, axis=0) * 1.3 + 7.0  # another contrast scale, mirrored anatomy
    y = normalize(x, "match", mask=m, reference=ref, reference_mask=np.flip(m, axis=0))
    sk = exposure.match_histograms(x[m], ref[np.flip(m, axis=0)])
    r = ref[np.flip(m, axis=0)]
    w = (r.max() - r.min()) / 65536
    assert np.abs(y[m] - sk).max() <= w


def test_match_real_t1_int16(real_t1_path):
    x = np.asarray(nib.load(real_t1_path).dataobj).astype(np.float64)
    ref = np.sqrt(x - x.min()) * 10.0 + 3.0  # another, non-linear contrast
    y = normalize(x, "match", reference=ref)
    nz = x != 0
    sk = exposure.match_histograms(x[nz], ref[ref != 0])
    w = (ref[ref != 0].max() - ref[ref != 0].min()) / 65536
    assert np.abs(y[nz] - sk).max() <= w


# --- Nyul ----------------------------------------------------------------------------------


def distorted_cohort():
    """Phantoms of one anatomy under different gains, offsets and gamma distortions."""
    base = phantom((48, 56, 48), seed=5)
    x = base.intensity.astype(np.float64)
    top = x.max()
    cohort = [
        x,
        3.0 * x + 200.0,
        0.2 * x + 5.0,
        top * (x / top) ** 0.7,
        2.0 * top * (x / top) ** 1.4 + 30.0,
    ]
    return base, cohort


def test_nyul_standardises_tissue_classes_across_distortions():
    base, cohort = distorted_cohort()
    brain = base.brain
    lm = fit_nyul(cohort, masks=[brain] * len(cohort))
    assert lm.n_volumes == len(cohort) and lm.standard_scale[0] == 0.0 and lm.standard_scale[-1] == 100.0
    medians = {c: [] for c in ("csf", "grey_matter", "white_matter")}
    raw_medians = {c: [] for c in medians}
    for x in cohort:
        norm = fit_normalize(x, "nyul", mask=brain, landmarks=lm)
        y = norm.apply(x)
        # Each volume's landmarks land on the standard scale within one fine bin.
        got = np.percentile(y[brain], lm.percentiles)
        slope = np.max(np.diff(lm.standard_scale) / np.maximum(np.diff(norm.params["landmarks"]), 1e-300))
        assert np.abs(got - np.array(lm.standard_scale)).max() <= norm.params["fine_bin_width"] * slope
        for c in medians:
            sel = base.labels == CLASSES[c]
            medians[c].append(np.median(y[sel]))
            raw_medians[c].append(np.median(x[sel]))
    for c in medians:
        spread = np.ptp(medians[c])
        assert spread < 2.5, (c, medians[c])  # 2.5% of the standard range
        assert np.ptp(raw_medians[c]) > 20 * spread  # ... where the raw scales differ widely
    assert (
        max(medians["csf"])
        < min(medians["grey_matter"])
        < max(medians["grey_matter"])
        < min(medians["white_matter"])
    )


def test_nyul_landmarks_json_round_trip_and_streaming():
    _, cohort = distorted_cohort()
    # A generator of lazy dask arrays: fit_nyul reads one at a time.
    lm = fit_nyul(da.from_array(x, chunks=(48, 56, 8)) for x in cohort)
    again = NyulLandmarks.from_json(lm.to_json())
    assert again == lm
    y1 = normalize(cohort[1], "nyul", landmarks=lm)
    y2 = normalize(cohort[1], "nyul", landmarks=lm.to_json())
    assert y1.tobytes() == y2.tobytes()
    with pytest.raises(ValueError, match="`percentiles`"):
        fit_nyul(cohort, percentiles=(50, 10))
    with pytest.raises(ValueError, match="empty"):
        fit_nyul([])


def test_nyul_extends_the_end_segments():
    x = np.arange(1.0, 1001.0).reshape(10, 10, 10)
    lm = fit_nyul([x])
    y = normalize(x, "nyul", landmarks=lm).astype(np.float64)
    # Uniform data: the map is linear, so it extends linearly beyond p1 and p99.
    p1, p99 = np.percentile(x, [1, 99])
    np.testing.assert_allclose(y, (x - p1) / (p99 - p1) * 100, atol=0.02)


# --- WhiteStripe ---------------------------------------------------------------------------


def whitestripe_reference(x, mask, contrast, tau=0.05, peak_fraction=0.2):
    """WhiteStripe in plain numpy on the masked voxels (the definition in volbin's docs)."""
    voi = x[mask]
    lo, hi = voi.min(), voi.max()
    counts, edges = np.histogram(voi, 2048, (lo, hi))
    h = gaussian_filter1d(counts.astype(float), ((hi - lo) / 80) / ((hi - lo) / 2048), mode="constant")
    if contrast == "t2":
        k = int(np.argmax(h))
    else:
        peaks = find_peaks(np.concatenate([[0.0], h, [0.0]]))[0] - 1
        k = int(peaks[h[peaks] >= peak_fraction * h.max()][-1])
    mode = (edges[k] + edges[k + 1]) / 2
    q = np.mean(voi < mode)
    bounds = np.quantile(voi, [max(q - tau, 0), min(q + tau, 1)])
    return mode, q, bounds


@pytest.mark.parametrize("contrast", ["t1", "t2"])
def test_whitestripe_equals_a_brute_force_version(contrast):
    if contrast == "t1":
        p = phantom((56, 64, 56), seed=6)
    else:
        p = phantom(
            (56, 64, 56),
            seed=6,
            means={
                "background": 0.02,
                "csf": 0.95,
                "grey_matter": 0.55,
                "white_matter": 0.4,
                "scalp": 0.5,
                "skull": 0.1,
            },
        )
    x = p.intensity.astype(np.float64)
    m = p.brain
    norm = fit_normalize(x, "whitestripe", mask=m, contrast=contrast)
    rec = norm.record()
    mode, q, bounds = whitestripe_reference(x, m, contrast)
    assert rec["mode"] == mode
    assert rec["mode_quantile"] == pytest.approx(q, abs=1e-12)
    w = (x[m].max() - x[m].min()) / 65536
    assert np.abs(np.array(rec["stripe"]) - bounds).max() <= w
    # The white-matter mode lies in the phantom's white matter intensities.
    wm = x[p.labels == CLASSES["white_matter"]]
    assert np.percentile(wm, 10) < mode < np.percentile(wm, 90)
    lo, hi = rec["stripe"]
    stripe = x[m & (x > lo) & (x < hi)]
    assert rec["n_stripe"] == stripe.size
    assert rec["mean"] == pytest.approx(stripe.mean(), rel=1e-12)
    assert rec["std"] == pytest.approx(stripe.std(), rel=1e-9)
    y = norm.apply(x)
    np.testing.assert_allclose(y, (x - stripe.mean()) / stripe.std(), rtol=1e-5, atol=1e-5)


def test_whitestripe_on_real_t1(itk_t1):
    x, m = itk_t1
    rec = fit_normalize(x, "whitestripe", mask=m).record()
    mode, q, bounds = whitestripe_reference(x, m, "t1")
    assert rec["mode"] == mode and rec["mode_quantile"] == pytest.approx(q, abs=1e-12)
    assert np.abs(np.array(rec["stripe"]) - bounds).max() <= (x[m].max() - x[m].min()) / 65536


def test_whitestripe_validates_options(head):
    with pytest.raises(ValueError, match="`contrast`"):
        normalize(head.intensity, "whitestripe", contrast="flair")
    with pytest.raises(ValueError, match="`tau`"):
        normalize(head.intensity, "whitestripe", tau=0.7)


# --- N4 ------------------------------------------------------------------------------------


N4_SETTINGS = dict(shrink_factor=2, n_iterations=(20, 10), convergence_threshold=1e-4)


def sitk_n4_reference(x, mask, zooms):
    """The SimpleITK example: N4 on a shrunk copy, exp of the log field on the full grid."""
    sitk = pytest.importorskip("SimpleITK")
    img = sitk.GetImageFromArray(np.ascontiguousarray(x.T, dtype=np.float32))
    img.SetSpacing(zooms)
    msk = sitk.GetImageFromArray(np.ascontiguousarray(mask.T, dtype=np.uint8))
    msk.CopyInformation(img)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([20, 10])
    n4.SetConvergenceThreshold(1e-4)
    n4.Execute(sitk.Shrink(img, [2, 2, 2]), sitk.Shrink(msk, [2, 2, 2]))
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(img)).T
    return x.astype(np.float32) / np.exp(log_field)


def test_n4_equals_simpleitk_directly():
    pytest.importorskip("SimpleITK")
    p = phantom((40, 48, 40), seed=7, bias=0.35, zooms=(1.0, 1.2, 1.5))
    x = p.intensity
    m = p.labels > 0
    ref = sitk_n4_reference(x, m, [1.0, 1.2, 1.5])
    vol = Volume(da.from_array(x, chunks=(40, 48, 9)), affine=p.affine)
    out = normalize(vol, "n4", mask=m, **N4_SETTINGS)
    np.testing.assert_allclose(out.compute(), ref, rtol=1e-5, atol=1e-3)
    rec = out.steps[-1]
    assert rec["n4"]["shrink_factor"] == 2 and rec["n4"]["n_iterations"] == [20, 10]
    json.dumps(rec)
    # The correction flattens the bias: white matter varies less.
    wm = p.labels == CLASSES["white_matter"]
    y = out.compute()
    assert y[wm].std() / y[wm].mean() < 0.9 * x[wm].std() / x[wm].mean()


def test_n4_per_volume_of_a_stack():
    pytest.importorskip("SimpleITK")
    p = phantom((32, 36, 32), n_volumes=2, seed=8, bias=0.3)
    x = p.intensity
    m = p.labels > 0
    out = normalize(x, "n4", mask=m, **N4_SETTINGS)
    for t in range(2):
        np.testing.assert_allclose(
            out[..., t], sitk_n4_reference(x[..., t], m, [1.0, 1.0, 1.0]), rtol=1e-5, atol=1e-3
        )
    # Each volume is corrected whole: the chunking does not change a byte.
    chunked = normalize(da.from_array(x, chunks=(7, 9, 5, 1)), "n4", mask=m, **N4_SETTINGS).compute()
    assert chunked.tobytes() == out.tobytes()


def test_n4_without_simpleitk_says_what_to_install(monkeypatch, head):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(VolbinError, match=r"pip install 'volbin\[itk\]'"):
        normalize(head.intensity, "n4")


def test_n4_validates_settings(head):
    pytest.importorskip("SimpleITK")
    with pytest.raises(ValueError, match="`shrink_factor`"):
        normalize(head.intensity, "n4", shrink_factor=0)
    with pytest.raises(ValueError, match="`n_iterations`"):
        normalize(head.intensity, "n4", n_iterations=())
    with pytest.raises(ValueError, match="`scope`"):
        normalize(head.intensity, "n4", scope="stack")


# --- chunk-invariance ----------------------------------------------------------------------


X4 = phantom((20, 22, 18), n_volumes=2, seed=9).intensity.astype(np.float64)
X4[3, 4, 5, 1] = np.nan
LM = fit_nyul([X4[..., 0] * 2.0, X4[..., 1]])
REF = phantom((20, 22, 18), seed=10).intensity


@st.composite
def chunkings(draw):
    chunks = []
    for s in X4.shape:
        cuts = sorted(draw(st.sets(st.integers(1, s - 1), max_size=2))) if s > 1 else []
        chunks.append(tuple(b - a for a, b in itertools.pairwise([0, *cuts, s])))
    return tuple(chunks)


@settings(max_examples=20, deadline=None, database=None)
@given(
    st.sampled_from(
        [
            ("zscore", {}),
            ("match", {"reference": REF}),
            ("nyul", {"landmarks": LM}),
            ("whitestripe", {"contrast": "t1", "tau": 0.1}),
        ]
    ),
    st.sampled_from(["volume", "stack"]),
    chunkings(),
)
def test_any_chunking_gives_the_same_bytes(spec, scope, chunks):
    method, kw = spec
    ref = normalize(X4, method, scope=scope, **kw)
    out = normalize(da.from_array(X4, chunks=chunks), method, scope=scope, **kw).compute()
    assert out.tobytes() == ref.tobytes()
    assert np.isnan(out[3, 4, 5, 1])


# --- exposure statistics -------------------------------------------------------------------


def test_exposure_stats_equal_numpy(head):
    x = np.stack([head.intensity, head.intensity * 2 + 10], axis=-1).astype(np.float64)
    rows = exposure_stats(x, nbins=32)
    assert len(rows) == 2
    for t, row in enumerate(rows):
        v = x[..., t]
        assert row["group"] == {"volume": t}
        assert row["mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert row["rms"] == pytest.approx(np.sqrt(np.mean(v**2)), rel=1e-12)
        assert row["std"] == pytest.approx(v.std(), rel=1e-9)
        w = (v.max() - v.min()) / 65536
        assert abs(row["median"] - np.median(v)) <= w
        for q in (1, 5, 25, 75, 95, 99):
            assert abs(row["percentiles"][f"p{q}"] - np.percentile(v, q)) <= w
        counts, _ = np.histogram(v, 32, (v.min(), v.max()))
        assert row["histogram"]["counts"] == counts.tolist()
        assert len(row["bar"]) == 32
    stack = exposure_stats(x, scope="stack")
    assert stack[0]["mean"] == pytest.approx(x.mean(), rel=1e-12)
    text = format_exposure(rows)
    assert "volume 0" in text and rows[1]["bar"] in text


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=80))
def test_histogram_bar_is_monotone_in_counts(counts):
    bar = histogram_bar(counts)
    assert len(bar) == len(counts)
    levels = [" ▁▂▃▄▅▆▇█".index(c) for c in bar]
    for (c1, l1), (c2, l2) in itertools.combinations(zip(counts, levels, strict=True), 2):
        if c1 < c2:
            assert l1 <= l2
        assert (l1 == 0) == (c1 == 0)
