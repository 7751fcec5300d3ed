"""Masks, upper bounds, >= and inverted foreground, foreground counts: against numpy and
scikit-image on the voxels inside the mask."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.filters import threshold_li, threshold_otsu, threshold_yen

import volbin
from volbin.binarize import binarize_volume, foreground
from volbin.errors import InputFileError, VolbinDataError
from volbin.io import load, read_sidecar, save
from volbin.recipe import HISTOGRAM_METHODS, Recipe
from volbin.survey import survey
from volbin.volume import as_volume

ITK = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")


def _data(seed: int = 0, shape: tuple[int, ...] = (24, 20, 18)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, size=shape) * 100
    m = np.zeros(shape[:3], bool)
    m[3:-4, 2:-3, 4:-2] = True
    return x, m


# --- statistics inside the mask ---------------------------------------------------------------
@pytest.mark.parametrize("method, ref", [("otsu", threshold_otsu), ("yen", threshold_yen)])
def test_mask_threshold_is_skimage_on_masked_voxels(method, ref):
    x, m = _data()
    t = volbin.threshold(x, method, mask=m)
    assert t == ref(x[m])
    out = volbin.binarize(x, method, mask=m)
    np.testing.assert_array_equal(out, m & (x > ref(x[m])))


def test_li_inside_mask_within_a_bin():
    x, m = _data(1)
    t = volbin.threshold(x, "li", mask=m)
    assert abs(t - threshold_li(x[m])) <= (x[m].max() - x[m].min()) / 256


def test_stats_mask_applies_everywhere():
    x, m = _data(2)
    t = threshold_otsu(x[m])
    out = volbin.binarize(x, "otsu", stats_mask=m)
    np.testing.assert_array_equal(out, x > t)


def test_percentile_rescale_and_value_inside_mask():
    x, m = _data(3)
    lo, hi = np.percentile(x[m], [2, 98])
    out = volbin.binarize(x, "value", threshold=0.5, rescale="percentile", percentiles=(2, 98), mask=m)
    t_raw = lo + 0.5 * (hi - lo)
    expected = m & (x > t_raw)
    # percentiles come from fine histograms: within one fine bin of np.percentile
    fine = (x[m].max() - x[m].min()) / 65536
    near = np.abs(x - t_raw) <= 2 * fine
    assert ((out == expected) | near).all()


def test_percentile_method_nonzero_is_fslmaths_thrP():
    x, _ = _data(4)
    x[x < 150] = 0
    out = volbin.binarize(x, "percentile", percentile=90, mask="nonzero")
    p = np.percentile(x[x != 0], 90)
    width = (x[x != 0].max() - x[x != 0].min()) / 65536
    near = np.abs(x - p) <= width
    assert (((x != 0) & (x > p)) == out)[~near].all()


def test_4d_input_with_3d_mask_per_volume():
    x, m = _data(5, (20, 18, 16, 3))
    assert m.ndim == 3
    out = volbin.binarize(x, "otsu", mask=m, scope="volume")
    for v in range(3):
        t = threshold_otsu(x[..., v][m])
        np.testing.assert_array_equal(out[..., v], m & (x[..., v] > t))


def test_4d_mask_and_volume_axis_0():
    x, _ = _data(6, (3, 20, 18, 16))
    m4 = x > 150
    out = volbin.binarize(x, "otsu", mask=m4, volume_axis=0)
    for v in range(3):
        np.testing.assert_array_equal(out[v], m4[v] & (x[v] > threshold_otsu(x[v][m4[v]])))


def test_mask_file_and_dask_chunk_alignment(tmp_path):
    x, m = _data(7)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(x.astype(np.float32), aff), tmp_path / "x.nii")
    nib.save(nib.Nifti1Image(m.astype(np.uint8), aff), tmp_path / "m.nii.gz")
    vol = load(tmp_path / "x.nii", chunk_bytes=4096)
    out = binarize_volume(vol, Recipe(method="otsu", mask=str(tmp_path / "m.nii.gz")))
    xs = x.astype(np.float32)
    np.testing.assert_array_equal(out.compute(), m & (xs > threshold_otsu(xs[m])))
    p = save(out, tmp_path / "o.nii")
    side = read_sidecar(p)["steps"][-1]
    fg = int((m & (xs > threshold_otsu(xs[m]))).sum())
    assert side["foreground"]["voxels"] == fg
    assert side["foreground"]["mm3"] == pytest.approx(fg * 12.0)
    assert side["foreground"]["fraction"] == pytest.approx(fg / m.sum())
    assert side["mask"]["role"] == "mask"


def test_mask_on_another_grid_is_one_line(tmp_path):
    x, m = _data(8)
    nib.save(nib.Nifti1Image(x, np.eye(4)), tmp_path / "x.nii")
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    nib.save(nib.Nifti1Image(m.astype(np.uint8), shifted), tmp_path / "m.nii")
    nib.save(nib.Nifti1Image(m[:-1].astype(np.uint8), np.eye(4)), tmp_path / "small.nii")
    vol = load(tmp_path / "x.nii")
    for name in ("m.nii", "small.nii"):
        with pytest.raises(VolbinDataError, match="another grid") as e:
            volbin.binarize(vol, "otsu", mask=str(tmp_path / name))
        msg = str(e.value)
        assert "\n" not in msg and "mask" in msg and "input" in msg and "shape" in msg
    # within 1e-3 mm is the same grid
    close = np.eye(4)
    close[1, 3] = 5e-4
    nib.save(nib.Nifti1Image(m.astype(np.uint8), close), tmp_path / "close.nii")
    volbin.binarize(vol, "otsu", mask=str(tmp_path / "close.nii"))


def test_mask_errors():
    x, m = _data(9)
    with pytest.raises(VolbinDataError, match="empty"):
        volbin.binarize(x, "otsu", mask=np.zeros_like(m))
    with pytest.raises(VolbinDataError, match="nonzero"):
        volbin.binarize(np.zeros((4, 4, 4)), "otsu", mask="nonzero")
    with pytest.raises(VolbinDataError, match="another grid"):
        volbin.binarize(x, "otsu", mask=m[:-1])
    with pytest.raises(InputFileError):
        volbin.binarize(x, "otsu", mask="/nonexistent/mask.nii")
    with pytest.raises(ValueError, match="not both"):
        volbin.binarize(x, "otsu", mask=m, stats_mask="nonzero")
    with pytest.raises(ValueError, match="`mask` is not used by method='dither'"):
        volbin.binarize(x, "dither", mask="nonzero")


def test_nan_inside_mask_is_excluded_and_counted():
    x, m = _data(10)
    x[5, 5, 5] = np.nan  # inside
    x[0, 0, 0] = np.inf  # outside: not counted
    with pytest.warns(volbin.VolbinWarning, match="1 NaN/Inf"):
        t = volbin.threshold(x, "otsu", mask=m)
    inside = x[m & np.isfinite(x)]
    assert t == threshold_otsu(inside)


def test_stochastic_with_mask_zero_outside():
    x, m = _data(11)
    out = volbin.binarize(x, "stochastic", mask=m, seed=3)
    assert not out[~m].any() and out[m].any()
    full = volbin.binarize(x, "stochastic", stats_mask=m, seed=3)
    assert (full[m] == out[m]).all()


# --- comparisons ----------------------------------------------------------------------------
def test_foreground_definition():
    x = np.array([1.0, 2.0, 3.0, np.nan])
    assert foreground(x, 2.0).tolist() == [False, False, True, False]
    assert foreground(x, 2.0, inclusive=True).tolist() == [False, True, True, False]
    assert foreground(x, 1.0, upper=2.0).tolist() == [False, True, False, False]


def test_upper_inclusive_invert_raw_values():
    x, m = _data(12)
    out = volbin.binarize(x, "value", threshold=100, upper=300, units="raw", rescale="none")
    np.testing.assert_array_equal(out, (x > 100) & (x <= 300))
    x_int = np.round(x).astype(np.int16)
    out = volbin.binarize(x_int, "value", threshold=100, units="raw", inclusive=True)
    np.testing.assert_array_equal(out, x_int >= 100)
    out = volbin.binarize(x, "otsu", invert=True, mask=m)
    np.testing.assert_array_equal(out, m & ~(x > threshold_otsu(x[m])))


def test_upper_for_histogram_method_in_rescaled_units():
    x, _ = _data(13)
    out = volbin.binarize(x, "otsu", upper=0.5)
    lo, hi = x.min(), x.max()
    u = lo + 0.5 * (hi - lo)
    np.testing.assert_array_equal(out, (x > threshold_otsu(x)) & (x <= u))


def test_upper_below_threshold_is_refused():
    with pytest.raises(ValueError, match="`upper` must not lie below"):
        Recipe(method="value", threshold=0.5, upper=0.2)
    with pytest.raises(ValueError, match="`upper` is not used by method='dither'"):
        Recipe(method="dither", upper=0.2)


# --- chunk invariance -------------------------------------------------------------------------
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(HISTOGRAM_METHODS),
    chunk=st.tuples(st.integers(2, 12), st.integers(2, 12), st.integers(2, 12)),
    masked=st.sampled_from([None, "mask", "stats_mask", "nonzero"]),
    seed=st.integers(0, 5),
)
def test_every_method_chunk_invariant_with_and_without_masks(method, chunk, masked, seed):
    x, m = _data(seed, (14, 12, 10))
    x[x < 60] = 0
    extra = {"percentile": 70.0} if method == "percentile" else {}
    kw: dict = {}
    if masked == "nonzero":
        kw["mask"] = "nonzero"
    elif masked:
        kw[masked] = m
    try:
        ref = volbin.binarize(x, method, **extra, **kw)
    except VolbinDataError:
        return  # a method that cannot decide on this histogram fails on every chunking alike
    kw_d = {k: (da.from_array(v, chunks=chunk) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    out = volbin.binarize(da.from_array(x, chunks=chunk), method, **extra, **kw_d).compute()
    np.testing.assert_array_equal(out, ref)


# --- foreground counts ----------------------------------------------------------------------
def test_write_counts_add_no_pass(tmp_path):
    """The sidecar's foreground count comes from the write itself: the input's blocks are
    read as often as without it (range, histogram, write)."""
    x, _ = _data(14)
    reads = []

    def block(b: np.ndarray) -> np.ndarray:
        reads.append(1)
        return b

    arr = da.from_array(x, chunks=(24, 20, 3)).map_blocks(block, dtype=x.dtype, meta=np.empty((0, 0, 0)))
    vol, _ = as_volume(arr)
    out = binarize_volume(vol, Recipe(method="otsu"))
    save(out, tmp_path / "o.npy")
    n_blocks = 6
    assert len(reads) == 3 * n_blocks
    assert read_sidecar(tmp_path / "o.npy")["steps"][-1]["foreground"]["voxels"] == int(
        (x > threshold_otsu(x)).sum()
    )
    assert len(reads) == 3 * n_blocks  # reading the record computed nothing more


def test_counts_per_volume_4d(tmp_path):
    x, _ = _data(15, (10, 9, 8, 3))
    vol = as_volume(x)[0]
    out = binarize_volume(vol, Recipe(method="otsu", scope="volume"))
    save(out, tmp_path / "o.nii")
    rec = read_sidecar(tmp_path / "o.nii")["steps"][-1]["foreground"]
    for v in range(3):
        ref = int((x[..., v] > threshold_otsu(x[..., v])).sum())
        assert rec["per_volume"][v]["voxels"] == ref
        assert rec["per_volume"][v]["fraction"] == pytest.approx(ref / (10 * 9 * 8))


# --- survey ---------------------------------------------------------------------------------
def test_survey_matches_binarize_for_every_method():
    x, m = _data(16)
    r = survey(x, mask=m, percentile=80.0)
    for row in r["methods"]:
        if "reason" in row:
            continue
        method = row["method"]
        extra = {"percentile": 80.0} if method == "percentile" else {}
        t = volbin.threshold(x, method, mask=m, **extra)
        assert row["threshold_raw"][0] == pytest.approx(t, rel=0, abs=0)
        ref = int(volbin.binarize(x, method, mask=m, **extra).sum())
        assert row["foreground"][0] == ref
        assert row["fraction"][0] == pytest.approx(ref / m.sum())


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 1000), inclusive=st.booleans(), scope=st.sampled_from(["stack", "volume", "slice"])
)
def test_survey_counts_are_foreground_counts(seed, inclusive, scope):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, size=(6, 5, 4, 2)).astype(np.int16)  # ties at thresholds
    r = survey(x, ["otsu", "mean", "triangle"], scope=scope, inclusive=inclusive)
    vol = as_volume(x)[0]
    g = vol.grouping(scope, "z")
    for row in r["methods"]:
        if "reason" in row:
            continue
        t = np.array([np.inf if v is None else v for v in row["threshold_raw"]]).reshape(g.group_shape)
        ref = foreground(x, g.expand(t), inclusive=inclusive)
        axes = tuple(a for a in range(4) if a not in g.group_axes)
        np.testing.assert_array_equal(np.asarray(row["foreground"]), ref.sum(axis=axes).ravel())


def test_survey_reasons():
    r = survey(np.random.default_rng(0).normal(size=(8, 8, 8)), ["otsu", "percentile"])
    assert "reason" not in r["methods"][0]
    assert "needs a percentile" in r["methods"][1]["reason"]


# --- a real T1 head with its brain mask ---------------------------------------------------------
@pytest.fixture
def itk_t1():
    t1, brain = ITK / "KmeansTest_T1UCharRaw.nii.gz", ITK / "KmeansTest_T1RawSkullStrip.nii.gz"
    if not (t1.is_file() and brain.is_file()):
        pytest.skip("insighttoolkit5-examples' T1 head is not installed")
    return t1, brain


def test_itk_t1_inside_its_brain_mask(itk_t1, tmp_path):
    t1, brain = itk_t1
    # float: scikit-image bins integer images one bin per value, volbin in 256 bins
    x = np.asarray(nib.load(t1).dataobj).astype(np.float64)
    inside = np.asarray(nib.load(brain).dataobj) != 0
    vol = load(t1)
    t = volbin.threshold(vol, "otsu", mask=str(brain))
    assert t == threshold_otsu(x[inside])
    out = binarize_volume(vol, Recipe(method="otsu", mask=str(brain)))
    ref = inside & (x > threshold_otsu(x[inside]))
    np.testing.assert_array_equal(out.compute().astype(bool), ref)
    save(out, tmp_path / "wm.nii.gz")
    rec = read_sidecar(tmp_path / "wm.nii.gz")["steps"][-1]["foreground"]
    zooms = np.prod(nib.load(t1).header.get_zooms()[:3])
    assert rec["voxels"] == int(ref.sum()) and rec["mm3"] == pytest.approx(ref.sum() * zooms)
    # statistics inside the brain differ from the whole head's
    assert t != threshold_otsu(x)
