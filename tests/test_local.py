"""Tests of volbin.local against scikit-image on the same rescaled volume, whatever the
chunking, on the phantom and on real MRI."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage import filters

import volbin
from volbin.local import LOCAL_METHODS, apply_hysteresis_threshold, binarize_local, threshold_local
from volbin.volume import Volume

SETTINGS = settings(max_examples=15, deadline=None, database=None)
EXACT = ("gaussian", "median")  # scikit-image runs on each block: the same arithmetic
#: mean, Niblack and Sauvola sum windows directly, where scikit-image uses running sums and
#: integral images: equal to float32 rounding.
ATOL = 1e-6


def skimage_local(r: np.ndarray, method: str, size, **kw) -> np.ndarray:
    if method == "niblack":
        return filters.threshold_niblack(r, size, **kw)
    if method == "sauvola":
        return filters.threshold_sauvola(r, size, **kw)
    return filters.threshold_local(r, size, method, **kw)


def assert_local_equal(ours: np.ndarray, ref: np.ndarray, method: str) -> None:
    assert ours.dtype == ref.dtype
    if method in EXACT:
        np.testing.assert_array_equal(ours, ref)
    else:
        np.testing.assert_allclose(ours, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("method", LOCAL_METHODS)
def test_3d_equals_skimage(phantom3d, method):
    x = phantom3d.intensity
    r = volbin.rescale(x)
    size = 5 if method == "median" else 9  # a 9**3 median is slow in scipy too
    ref = skimage_local(r, method, size)
    ours = threshold_local(da.from_array(x, chunks=(10, 56, 13)), method, block_size=size)
    assert isinstance(ours, da.Array)
    assert_local_equal(ours.compute(), ref, method)
    mask = binarize_local(x, method, block_size=size)
    decided = np.abs(r - ref) > ATOL  # voxels not within rounding of their threshold
    np.testing.assert_array_equal(mask[decided], (r > ref)[decided])


@pytest.mark.parametrize("method", LOCAL_METHODS)
def test_2d_per_slice_equals_skimage_per_slice(phantom3d, method):
    x = phantom3d.intensity
    r = volbin.rescale(x)
    ours = threshold_local(x, method, block_size=7, dims=2, axis="y")
    for j in (0, 20, 55):
        assert_local_equal(ours[:, j, :], skimage_local(r[:, j, :], method, 7), method)


@pytest.mark.parametrize("method", ["gaussian", "sauvola"])
def test_4d_filters_each_volume(phantom4d, method):
    x = phantom4d.intensity
    r = volbin.rescale(x, scope="volume")
    ours = threshold_local(da.from_array(x, chunks=(13, 48, 40, 1)), method, block_size=(5, 7, 9)).compute()
    for t in range(x.shape[3]):
        assert_local_equal(ours[..., t], skimage_local(r[..., t], method, (5, 7, 9)), method)


@pytest.mark.parametrize("mode", ["reflect", "constant", "nearest", "mirror", "wrap"])
@pytest.mark.parametrize("method", ["gaussian", "mean", "median"])
def test_modes(phantom3d, method, mode):
    x = phantom3d.intensity[:24, :20, :16]
    r = volbin.rescale(x)
    kw = {"mode": mode, "offset": 0.01, **({"cval": 0.5} if mode == "constant" else {})}
    ours = threshold_local(da.from_array(x, chunks=(7, 9, 5)), method, block_size=5, **kw).compute()
    assert_local_equal(ours, filters.threshold_local(r, 5, method, **kw), method)


def test_gaussian_sigma_and_windows_wider_than_an_axis(phantom3d):
    x = phantom3d.intensity[:, :, :6]
    r = volbin.rescale(x)
    ours = threshold_local(
        da.from_array(x, chunks=(9, 9, 2)), "gaussian", block_size=11, param=(1.0, 2.5, 3.0)
    )
    ref = filters.threshold_local(r, 11, "gaussian", param=(1.0, 2.5, 3.0))
    np.testing.assert_array_equal(ours.compute(), ref)
    ours = threshold_local(da.from_array(x, chunks=(9, 9, 2)), "niblack", block_size=(3, 3, 15), k=-0.1)
    np.testing.assert_allclose(ours.compute(), filters.threshold_niblack(r, (3, 3, 15), k=-0.1), atol=ATOL)


def test_raw_values_of_integer_data(itk_t1):
    # rescale=None: the values as scikit-image sees them (float64 for int16; Sauvola's r is
    # half the int16 range, as scikit-image takes it from the dtype).
    x, _ = itk_t1
    ours = threshold_local(da.from_array(x, chunks=(40, 128, 20)), "sauvola", block_size=15, rescale=None)
    ref = filters.threshold_sauvola(x, 15)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours.compute(), ref, rtol=1e-12, atol=1e-9)
    ours = threshold_local(x, "median", block_size=(5, 5, 3), rescale=None)
    np.testing.assert_array_equal(ours, filters.threshold_local(x, (5, 5, 3), "median"))


def test_real_mri(real_mri_path):
    img = volbin.load(real_mri_path)
    x = img.compute()
    if x.ndim == 4:
        x = x[..., 0]
        img = Volume(img.data[..., 0], affine=img.affine)
    r = volbin.rescale(x)
    ours = threshold_local(img, "gaussian", block_size=5)
    assert isinstance(ours, Volume) and ours.steps[-1]["step"] == "threshold_local"
    np.testing.assert_array_equal(ours.compute(), filters.threshold_local(r, 5, "gaussian"))


@st.composite
def chunkings(draw, shape):
    chunks = []
    for s in shape:
        cuts = sorted(draw(st.sets(st.integers(1, s - 1), max_size=2))) if s > 1 else []
        edges = [0, *cuts, s]
        chunks.append(tuple(b - a for a, b in itertools.pairwise(edges)))
    return tuple(chunks)


X = volbin.phantom((20, 22, 18), seed=4).intensity
LOCAL_REF: dict[tuple, bytes] = {}


@SETTINGS
@given(st.sampled_from(LOCAL_METHODS), st.sampled_from([2, 3]), st.sampled_from([3, 7]), chunkings(X.shape))
def test_any_chunking_gives_the_same_bytes(method, dims, size, chunks):
    key = (method, dims, size)
    if key not in LOCAL_REF:
        LOCAL_REF[key] = threshold_local(X, method, block_size=size, dims=dims).tobytes()
    ours = threshold_local(da.from_array(X, chunks=chunks), method, block_size=size, dims=dims)
    assert ours.compute().tobytes() == LOCAL_REF[key]


def test_options_are_checked(phantom3d):
    x = phantom3d.intensity
    with pytest.raises(ValueError, match="`block_size` must be an odd positive int"):
        threshold_local(x, "gaussian", block_size=4)
    with pytest.raises(ValueError, match="method 'niblack' does not use `offset`"):
        threshold_local(x, "niblack", offset=0.1)
    with pytest.raises(ValueError, match="method 'gaussian' does not use `k`"):
        threshold_local(x, "gaussian", k=0.5)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        threshold_local(x, "mean", mode="edge")
    with pytest.raises(ValueError, match="`method` must be one of"):
        threshold_local(x, "otsu")
    with pytest.raises(ValueError, match="`dims` must be 2"):
        threshold_local(x, "mean", dims=1)
    with pytest.raises(ValueError, match="`r` must be positive"):
        threshold_local(x, "sauvola", r=0)


# --- hysteresis ----------------------------------------------------------------------------------


@SETTINGS
@given(chunkings(X.shape), st.sampled_from([(300.0, 700.0), (100.0, 850.0), (700.0, 300.0)]))
def test_hysteresis_equals_skimage_whatever_the_chunking(chunks, thresholds):
    low, high = thresholds
    ref = filters.apply_hysteresis_threshold(X, low, high)
    ours = apply_hysteresis_threshold(da.from_array(X, chunks=chunks), low, high)
    assert isinstance(ours, da.Array)
    assert ours.compute().tobytes() == ref.tobytes()


def test_hysteresis_on_the_phantom_and_real_t1(phantom3d, itk_t1):
    x = phantom3d.intensity
    ours = apply_hysteresis_threshold(da.from_array(x, chunks=(12, 14, 48)), 250, 600).compute()
    np.testing.assert_array_equal(ours, filters.apply_hysteresis_threshold(x, 250, 600))
    t1, _ = itk_t1
    ours = apply_hysteresis_threshold(da.from_array(t1, chunks=(50, 60, 20)), 60, 140).compute()
    np.testing.assert_array_equal(ours, filters.apply_hysteresis_threshold(t1, 60, 140))


def test_hysteresis_per_volume_with_threshold_arrays(phantom4d):
    x = phantom4d.intensity
    low = np.full(x.shape, 300.0)
    low[:20] = 500.0
    ours = apply_hysteresis_threshold(da.from_array(x, chunks=(9, 48, 17, 1)), low, 700.0).compute()
    for t in range(4):
        ref = filters.apply_hysteresis_threshold(x[..., t], low[..., t], 700.0)
        np.testing.assert_array_equal(ours[..., t], ref)


@pytest.mark.parametrize("connectivity", [2, 3])
def test_hysteresis_connectivity(connectivity):
    # scikit-image has face connectivity only: reference with scipy's labels.
    x = np.random.default_rng(5).random((16, 17, 15))
    st_ = ndimage.generate_binary_structure(3, connectivity)
    lab, n = ndimage.label(x > 0.6, st_)
    keep = ndimage.sum(x > 0.95, lab, np.arange(n + 1)) > 0
    keep[0] = False
    ours = apply_hysteresis_threshold(da.from_array(x, chunks=5), 0.6, 0.95, connectivity=connectivity)
    np.testing.assert_array_equal(ours.compute(), keep[lab])


def test_hysteresis_against_dask_image_labels(phantom3d):
    ndmeasure = pytest.importorskip("dask_image.ndmeasure")
    x = da.from_array(phantom3d.intensity, chunks=(24, 28, 24))
    lab, n = ndmeasure.label(x > 250)
    lab = lab.compute()
    high = phantom3d.intensity > 600
    keep = np.zeros(int(n.compute()) + 1, bool)
    keep[np.unique(lab[high])] = True
    keep[0] = False
    np.testing.assert_array_equal(apply_hysteresis_threshold(x, 250, 600).compute(), keep[lab])


def test_hysteresis_errors(phantom3d):
    x = phantom3d.intensity
    with pytest.raises(ValueError, match="`low` must be a number"):
        apply_hysteresis_threshold(x, np.nan, 1.0)
    with pytest.raises(ValueError, match="`high` must have the volume's shape"):
        apply_hysteresis_threshold(x, 1.0, np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="`connectivity` must be an int in"):
        apply_hysteresis_threshold(x, 1.0, 2.0, connectivity=4)


def test_binarize_local_with_edge_chunks_smaller_than_the_window():
    import dask.array as da
    from skimage.filters import threshold_local as sk_threshold_local

    import volbin
    from volbin.local import binarize_local

    x = np.random.default_rng(3).random((40, 44, 36))
    got = binarize_local(da.from_array(x, chunks=(13, 20, 11)), "gaussian", block_size=7).compute()
    r = np.asarray(volbin.rescale(x), dtype=np.float64)
    ref = r > sk_threshold_local(r, 7, method="gaussian")
    assert np.mean(got == ref) > 0.999
