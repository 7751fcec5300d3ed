"""Tests of volbin.classify against scikit-image and brute-force k-means, on the phantom and
on real MRI."""

from __future__ import annotations

import itertools
import warnings

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.filters import threshold_multiotsu

import volbin
from volbin import _classify_kernels as CK
from volbin import _kernels as K
from volbin.classify import Classification, classify
from volbin.errors import VolbinDataError, VolbinWarning
from volbin.volume import Volume

SETTINGS = settings(max_examples=15, deadline=None, database=None)
TISSUES = ("csf", "grey_matter", "white_matter")  # darkest first on T1


def bin_width(v: np.ndarray, nbins: int = 256) -> float:
    return float(v.max() - v.min()) / nbins


def multiotsu(x: np.ndarray, classes: int = 3) -> np.ndarray:
    """scikit-image's thresholds of `x` as float64 (its histogram of float32 data has float32
    edges; volbin bins every dtype against float64 edges)."""
    return threshold_multiotsu(np.asarray(x, dtype=np.float64).ravel(), classes)


def labels_from(x: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Class of each voxel as ``sum(x > t)`` (ties to the darker class)."""
    return sum((x > t).astype(np.uint8) for t in thresholds)


# --- multi-Otsu against scikit-image ---------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_multiotsu_equals_skimage_on_float_data(phantom3d, classes):
    x = phantom3d.intensity
    res = classify(x, "multi-otsu", classes)
    ref = multiotsu(x, classes)
    np.testing.assert_array_equal(res.thresholds, ref)
    assert res.labels.dtype == np.uint8
    np.testing.assert_array_equal(res.labels, labels_from(x, ref))
    # scikit-image with the same histogram as counts: within one bin.
    counts, edges = np.histogram(x, 256)
    centres = (edges[:-1] + edges[1:]) / 2
    ref_hist = threshold_multiotsu(hist=(counts, centres), classes=classes)
    assert np.abs(res.thresholds - ref_hist).max() <= bin_width(x)


def test_multiotsu_inside_a_mask(phantom3d):
    x, brain = phantom3d.intensity, phantom3d.brain
    res = classify(x, "multi-otsu", 3, mask=brain)
    ref = multiotsu(x[brain])
    np.testing.assert_array_equal(res.thresholds, ref)
    lab = res.labels
    assert res.offset == 1
    assert (lab[~brain] == 0).all()
    np.testing.assert_array_equal(lab[brain], labels_from(x[brain], ref) + 1)
    assert sorted(np.unique(lab).tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("which", ["mask", "stats_mask"])
def test_masks_on_another_grid_are_refused(which):
    """A Volume mask carries a grid, checked against the input's as a mask file's is; on the
    same grid it classifies as the bare array does."""
    rng = np.random.default_rng(0)
    x = rng.random((20, 20, 20))
    inside = x > 0.3
    vol = Volume(da.from_array(x), affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    other = Volume(da.from_array(inside), affine=np.diag([3.0, 3.0, 3.0, 1.0]))
    with pytest.raises(VolbinDataError, match="another grid"):
        classify(vol, "kmeans", 3, **{which: other})
    same = Volume(da.from_array(inside), affine=vol.affine)
    got = classify(vol, "kmeans", 3, **{which: same})
    ref = classify(vol, "kmeans", 3, **{which: inside})
    np.testing.assert_array_equal(np.asarray(got.labels), np.asarray(ref.labels))


def test_stats_mask_decides_but_labels_everything(phantom3d):
    x, brain = phantom3d.intensity, phantom3d.brain
    res = classify(x, "multi-otsu", 3, stats_mask=brain)
    np.testing.assert_array_equal(res.thresholds, multiotsu(x[brain]))
    assert res.offset == 0
    np.testing.assert_array_equal(res.labels, labels_from(x, res.thresholds))
    # Both masks: statistics from their intersection, labels inside `mask`.
    half = np.zeros_like(brain)
    half[: x.shape[0] // 2] = True
    both = classify(x, "multi-otsu", 3, mask=brain, stats_mask=half)
    np.testing.assert_array_equal(both.thresholds, multiotsu(x[brain & half]))
    assert (both.labels[~brain] == 0).all()


@pytest.mark.parametrize("method", ["multi-otsu", "kmeans"])
def test_masks_chunked_unlike_the_volume(phantom3d, method):
    # One block of mask against several of the volume: dask would broadcast, not align.
    x, brain = phantom3d.intensity, phantom3d.brain
    ref = classify(x, method, 3, mask=brain, stats_mask=brain)
    xd = da.from_array(x, chunks=(x.shape[0], x.shape[1], 7))
    res = classify(xd, method, 3, mask=da.from_array(brain, chunks=-1), stats_mask=brain)
    np.testing.assert_array_equal(res.thresholds, ref.thresholds)
    np.testing.assert_array_equal(res.labels.compute(), ref.labels)


@pytest.mark.parametrize("volume_axis", [0, 3])
def test_multiotsu_per_volume_and_per_slice(phantom4d, volume_axis):
    x = phantom4d.intensity
    if volume_axis == 0:
        x = np.ascontiguousarray(np.moveaxis(x, 3, 0))
    vols = [np.take(x, t, axis=volume_axis) for t in range(x.shape[volume_axis])]
    res = classify(x, "multi-otsu", 3, volume_axis=volume_axis)
    assert res.thresholds.shape == (4, 2)
    for t, v in enumerate(vols):
        np.testing.assert_array_equal(res.thresholds[t], multiotsu(v))
    stack = classify(x, "multi-otsu", 3, scope="stack", volume_axis=volume_axis)
    np.testing.assert_array_equal(stack.thresholds, multiotsu(x))
    sl = classify(x, "multi-otsu", 3, scope="slice", axis="y", volume_axis=volume_axis)
    assert sl.thresholds.shape[:-1] == sl.grouping.group_shape
    for t, v in enumerate(vols):
        for j in (5, 20, 30):
            got = sl.thresholds[(t, j) if volume_axis == 0 else (j, t)]
            np.testing.assert_array_equal(got, multiotsu(v[:, j, :]))


def test_integer_data_bins_do_not_follow_the_dtype():
    # scikit-image bins integer images one value per bin (a 2**16 x 2**16 table for uint16
    # data with multi-Otsu); volbin uses `nbins` bins whatever the dtype.
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(m, 2500, 6000) for m in (8000, 30000, 52000)])
    x = rng.permutation(np.clip(x, 0, 65535).astype(np.uint16)).reshape(20, 30, 30)
    res = classify(x, "multi-otsu", 3, nbins=256)
    counts, edges = np.histogram(x, 256, (float(x.min()), float(x.max())))
    ref = threshold_multiotsu(hist=(counts, (edges[:-1] + edges[1:]) / 2), classes=3)
    assert np.abs(res.thresholds - ref).max() <= bin_width(x.astype(float))
    np.testing.assert_array_equal(res.labels, labels_from(x, res.thresholds))


def test_ties_go_to_the_darker_class():
    x = np.repeat(np.array([0.0, 1.0, 2.0]), 8).reshape(2, 3, 4)
    res = classify(x, "multi-otsu", 3, nbins=3)
    # Thresholds are bin centres; value 1.0 sits on one (np.digitize would call it class 2).
    assert 1.0 in res.thresholds
    assert [int(m.sum()) for m in res.split()] == [8, 8, 8]
    np.testing.assert_array_equal(res.labels[x == 1.0], 1)


def test_real_t1_multiotsu_within_one_bin(itk_t1):
    x, brain = itk_t1
    res = classify(x, "multi-otsu", 3, mask=brain)
    v = x[brain].astype(np.float64)
    counts, edges = np.histogram(v, 256)
    ref = threshold_multiotsu(hist=(counts, (edges[:-1] + edges[1:]) / 2), classes=3)
    assert np.abs(res.thresholds - ref).max() <= bin_width(v)
    assert (res.labels[~brain] == 0).all()
    np.testing.assert_array_equal(res.labels[brain], labels_from(v, res.thresholds) + 1)


def test_real_mri_files(real_mri_path):
    img = volbin.load(real_mri_path)
    x = img.compute().astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        res = classify(img, "multi-otsu", 3, scope="stack")
    counts, edges = np.histogram(x, 256)
    ref = threshold_multiotsu(hist=(counts, (edges[:-1] + edges[1:]) / 2), classes=3)
    assert np.abs(res.thresholds - ref).max() <= bin_width(x)
    assert isinstance(res.labels, Volume)
    assert res.labels.steps[-1]["step"] == "classify"


# --- Dice against the phantom's ground truth ----------------------------------------------------


@pytest.mark.parametrize("method", ["multi-otsu", "kmeans"])
def test_phantom_tissues_dice(phantom3d, method):
    p = phantom3d
    res = classify(p.intensity, method, 3, mask=p.brain)
    dice = {
        name: volbin.dice(res.labels == k, p.labels == p.classes[name]) for k, name in enumerate(TISSUES, 1)
    }
    # Measured on this phantom (48x56x48, bias 0.2, noise 3 %): csf 0.87, grey 0.85, white 0.96.
    assert dice["csf"] > 0.8, dice
    assert dice["grey_matter"] > 0.8, dice
    assert dice["white_matter"] > 0.9, dice


def test_phantom_two_contrasts_dice():
    shape = (40, 48, 40)
    t1 = volbin.phantom(shape, seed=2)
    t2 = volbin.phantom(
        shape, seed=2, means={"csf": 0.9, "grey_matter": 0.6, "white_matter": 0.4, "scalp": 0.3, "skull": 0.1}
    )
    x = np.stack([t1.intensity, t2.intensity], axis=-1)
    res = classify(x, "kmeans", 3, channels=True, mask=t1.brain)
    assert res.labels.shape == shape
    dice = [volbin.dice(res.labels == k, t1.labels == t1.classes[n]) for k, n in enumerate(TISSUES, 1)]
    # Measured: 0.83, 0.83, 0.98; better than T1 alone on the same phantom.
    assert min(dice) > 0.8, dice
    one = classify(t1.intensity, "kmeans", 3, mask=t1.brain)
    dice1 = [volbin.dice(one.labels == k, t1.labels == t1.classes[n]) for k, n in enumerate(TISSUES, 1)]
    assert sum(dice) > sum(dice1)


# --- Dice on a real head against tissue probability maps ---------------------------------------


@pytest.fixture(scope="module")
def mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's MNI152 T1 template (1 mm, float32 in [0, 1]), its brain mask (template >
    0.2) and the tissue of each voxel: argmax of CSF (1 - GM - WM), GM and WM probabilities,
    0 for CSF, 1 GM, 2 WM.  All shipped inside the nilearn package."""
    datasets = pytest.importorskip("nilearn.datasets")

    def data(img) -> np.ndarray:
        return np.asanyarray(img.dataobj)

    t1 = data(datasets.load_mni152_template(resolution=1))
    brain = data(datasets.load_mni152_brain_mask(resolution=1)) > 0
    gm = data(datasets.load_mni152_gm_template(resolution=1))
    wm = data(datasets.load_mni152_wm_template(resolution=1))
    tissue = np.argmax(np.stack([np.clip(1 - gm - wm, 0, 1), gm, wm]), axis=0).astype(np.uint8)
    return t1, brain, tissue


def tissue_dice(labels: np.ndarray, tissue: np.ndarray) -> list[float]:
    """Dice of class k (0 CSF, 1 GM, 2 WM) of `labels` against the reference `tissue`."""
    return [volbin.dice(labels == k, tissue == k) for k in range(3)]


def test_mni152_grey_and_white_matter_dice_at_least_skimage(mni152):
    t1, brain, tissue = mni152
    v, ref = t1[brain], tissue[brain]
    # scikit-image as its documentation uses it: thresholds, then np.digitize.
    skimage_dice = tissue_dice(np.digitize(v, threshold_multiotsu(v, 3)), ref)
    dice = {}
    for method in ("multi-otsu", "kmeans"):
        res = classify(t1, method, 3, mask=brain)
        dice[method] = tissue_dice(res.labels[brain] - 1, ref)
        # Grey and white matter: at least as good as scikit-image's multi-Otsu.
        assert dice[method][1] >= skimage_dice[1], (method, dice, skimage_dice)
        assert dice[method][2] >= skimage_dice[2], (method, dice, skimage_dice)
    # Measured (CSF, GM, WM): multi-Otsu and scikit-image 0.750, 0.892, 0.920 (the same
    # thresholds); k-means 0.737, 0.897, 0.931.
    assert dice["multi-otsu"][1] > 0.88 and dice["multi-otsu"][2] > 0.91, dice
    assert dice["kmeans"][1] > 0.89 and dice["kmeans"][2] > 0.925, dice
    assert min(dice["multi-otsu"][0], dice["kmeans"][0]) > 0.7, dice


def test_real_t1_multiotsu_against_skimage_own_binning(itk_t1):
    # A second real head without tissue maps: scikit-image bins these integers one value per
    # bin, volbin 256 bins over the range; thresholds within one bin, and a voxel classed
    # differently lies within one bin of one of scikit-image's thresholds.
    x, brain = itk_t1
    v = x[brain]
    ref = threshold_multiotsu(v, 3)
    res = classify(x, "multi-otsu", 3, mask=brain)
    width = bin_width(v.astype(np.float64))
    assert np.abs(res.thresholds - ref).max() <= width
    theirs = np.digitize(v, ref)
    ours = res.labels[brain] - 1
    differ = v[ours != theirs].astype(np.float64)
    assert np.all(np.abs(differ[:, None] - ref[None, :]).min(axis=1) <= width)


# --- k-means on intensities against brute force ------------------------------------------------


def brute_lloyd_1d(v: np.ndarray, init: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, int]:
    """Lloyd's algorithm on every voxel: nearest centre by distance, centres = means."""
    c = np.sort(np.asarray(init, dtype=np.float64))
    prev, it = None, 0
    while it < max_iter:
        assign = np.argmin(np.abs(v[:, None] - c[None, :]), axis=1)
        if prev is not None and np.array_equal(assign, prev):
            break
        c = np.sort([v[assign == k].mean() if (assign == k).any() else c[k] for k in range(len(c))])
        prev, it = assign, it + 1
    return c, it


def test_kmeans_real_t1_equals_brute_force(itk_t1):
    # Integer data of range 255 with 256 bins: one value per bin, so binned Lloyd is exact.
    x, brain = itk_t1
    res = classify(x, "kmeans", 3, mask=brain, seed=4)
    v = x[brain].astype(np.float64)
    ref, it = brute_lloyd_1d(v, res.initial_centres)
    np.testing.assert_allclose(res.centres, ref, rtol=1e-7)
    assert res.iterations == it
    nearest = np.argmin(np.abs(v[:, None] - ref[None, :]), axis=1)
    np.testing.assert_array_equal(res.labels[brain], nearest + 1)
    np.testing.assert_array_equal(res.thresholds, (res.centres[1:] + res.centres[:-1]) / 2)


def test_kmeans_float_phantom_is_a_fixed_point_within_a_bin(phantom3d):
    x, brain = phantom3d.intensity, phantom3d.brain
    res = classify(x, "kmeans", 3, mask=brain)
    v = x[brain].astype(np.float64)
    # One voxel-level Lloyd step from the binned fixed point moves no centre by a bin or more.
    ref, _ = brute_lloyd_1d(v, res.centres, max_iter=1)
    assert np.abs(ref - res.centres).max() <= bin_width(v, res.options["nbins"])
    assert (np.diff(res.centres) > 0).all()


def test_kmeans_seeding_is_deterministic(phantom3d):
    x = phantom3d.intensity
    a = classify(x, "kmeans", 4, seed=7)
    b = classify(x, "kmeans", 4, seed=7)
    np.testing.assert_array_equal(a.initial_centres, b.initial_centres)
    np.testing.assert_array_equal(a.labels, b.labels)
    inits = {tuple(classify(x, "kmeans", 4, seed=s).initial_centres) for s in range(4)}
    assert len(inits) > 1  # the seed matters


def test_kmeans_tol_and_max_iter(phantom3d):
    x = phantom3d.intensity
    full = classify(x, "kmeans", 3, seed=1)
    one = classify(x, "kmeans", 3, seed=1, max_iter=1)
    assert one.iterations == 1 and full.iterations > 1
    loose = classify(x, "kmeans", 3, seed=1, tol=0.05)
    assert 1 <= loose.iterations <= full.iterations


def test_warm_start_along_the_series(phantom4d):
    x, brain = phantom4d.intensity, phantom4d.brain
    warm = classify(x, "kmeans", 3, mask=brain, warm_start=True, seed=2)
    cold = classify(x, "kmeans", 3, mask=brain, seed=2)
    assert warm.iterations.shape == (4,)
    for t in range(1, 4):
        np.testing.assert_array_equal(warm.initial_centres[t], warm.centres[t - 1])
    np.testing.assert_array_equal(warm.initial_centres[0], cold.initial_centres[0])
    # The volumes are repeats of one anatomy: starting from the neighbour's centres helps.
    assert warm.iterations[1:].sum() <= cold.iterations[1:].sum()
    for t in range(4):
        v = x[..., t][brain].astype(np.float64)
        ref, _ = brute_lloyd_1d(v, warm.centres[t], max_iter=1)
        assert np.abs(ref - warm.centres[t]).max() <= bin_width(v, warm.options["nbins"])


# --- k-means on voxel vectors against brute force ------------------------------------------------


def brute_kmeans_vectors(x: np.ndarray, k: int, seed: int, mask: np.ndarray, max_iter: int = 100):
    """volbin's documented vector k-means on every voxel at once, in numpy.

    Channels scaled to [0, 1] by their range; k-means++ by exponential races with the same
    counter-based uniforms; Lloyd with centres as fixed-point means.
    """
    nc = x.shape[-1]
    xf = x.astype(np.float64)
    valid = mask & np.isfinite(xf).all(axis=-1)
    lo = np.array([xf[..., c][valid].min() for c in range(nc)])
    hi = np.array([xf[..., c][valid].max() for c in range(nc)])
    span = np.where(hi > lo, hi - lo, 0.0)
    inv = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 0.0)
    y = (xf[valid] - lo) * inv
    index = np.flatnonzero(valid.ravel())

    def dist2(c: np.ndarray) -> np.ndarray:
        d = np.zeros(len(y))
        for ch in range(nc):
            d = d + (y[:, ch] - c[ch]) ** 2
        return d

    centres = np.zeros((k, nc))
    for j in range(k):
        u = np.empty((1, *x.shape[:3]))
        K.uniform_block(
            K.seed_key(seed, stream=16 + j), np.array([1, *x.shape[:3]]), np.zeros(4, np.int64), u
        )
        e = -np.log1p(-u.ravel()[index])
        w = np.ones(len(y)) if j == 0 else np.min([dist2(c) for c in centres[:j]], axis=0)
        score = np.where(w > 0, e / np.where(w > 0, w, 1.0), np.inf)
        centres[j] = y[np.lexsort((index, score))[0]]
    initial = centres.copy()
    it = 0
    for _ in range(max_iter):
        assign = np.argmin(np.stack([dist2(c) for c in centres]), axis=0)
        new = centres.copy()
        q = (y * CK.FIXED_SCALE + 0.5).astype(np.int64)
        for j in range(k):
            sel = assign == j
            if sel.any():
                for ch in range(nc):
                    new[j, ch] = int(q[sel, ch].sum()) / int(sel.sum()) / CK.FIXED_SCALE
        if np.array_equal(new, centres):
            break
        centres, it = new, it + 1
    order = np.lexsort(centres.T[::-1])
    centres = centres[order]
    labels = np.zeros(x.shape[:3], np.uint8)
    labels[valid] = np.argmin(np.stack([dist2(c) for c in centres]), axis=0) + 1
    return labels, lo + centres * span, lo + initial * span, it


def two_contrasts(shape=(24, 28, 24)) -> tuple[np.ndarray, np.ndarray]:
    t1 = volbin.phantom(shape, seed=5)
    t2 = volbin.phantom(shape, seed=5, means={"csf": 0.9, "white_matter": 0.4, "scalp": 0.3})
    return np.stack([t1.intensity, t2.intensity], axis=-1), t1.brain


def test_vector_kmeans_equals_brute_force():
    x, brain = two_contrasts()
    res = classify(x, "kmeans", 3, channels=True, mask=brain, seed=3)
    labels, centres, initial, it = brute_kmeans_vectors(x, 3, 3, brain)
    np.testing.assert_array_equal(res.initial_centres, initial)
    np.testing.assert_array_equal(res.centres, centres)
    assert int(res.iterations) == it
    np.testing.assert_array_equal(res.labels, labels)


def test_vector_kmeans_on_real_4d_series(real_4d_path):
    # Two EPI volumes of one subject as two "channels": labels on the spatial grid.
    img = volbin.load(real_4d_path)
    res = classify(img, "kmeans", 3, channels=True, seed=1)
    assert isinstance(res.labels, Volume) and res.labels.shape == img.shape[:3]
    x = img.compute()
    labels, centres, _, it = brute_kmeans_vectors(x, 3, 1, np.ones(x.shape[:3], bool))
    np.testing.assert_array_equal(res.centres, centres)
    np.testing.assert_array_equal(res.labels.compute(), labels - 1)
    assert int(res.iterations) == it


def test_vector_blocks_keep_the_input_chunk_size():
    # Channels split across chunks are gathered into blocks of whole voxel vectors no larger
    # than the input's chunks (their size follows --memory-limit), with the same result.
    from volbin.classify import _vector_chunks

    x, brain = two_contrasts()
    xd = da.from_array(x, chunks=(24, 28, 6, 1))
    blocks = _vector_chunks(Volume(xd, volume_axis=3), 3)
    assert blocks.chunks[3] == (2,)
    assert max(blocks.chunks[2]) * 24 * 28 * 2 * x.itemsize <= 24 * 28 * 6 * x.itemsize
    ref = classify(x, "kmeans", 3, channels=True, mask=brain, seed=3)
    res = classify(xd, "kmeans", 3, channels=True, mask=brain, seed=3)
    np.testing.assert_array_equal(res.centres, ref.centres)
    np.testing.assert_array_equal(res.labels.compute(), ref.labels)


def test_vector_kmeans_per_slice_and_stack_scope():
    x, brain = two_contrasts((16, 18, 14))
    per_slice = classify(x, "kmeans", 2, channels=True, scope="slice", axis="z", stats_mask=brain)
    assert per_slice.centres.shape == (14, 2, 2)
    assert per_slice.iterations.shape == (14,)
    one = classify(x[:, :, 6:7], "kmeans", 2, channels=True, stats_mask=brain[:, :, 6:7])
    # Slice 6 on its own gives the same decision (voxel indices differ, so seeds differ:
    # compare the converged partitions through their centres' labels).
    lab6 = per_slice.labels[:, :, 6]
    assert volbin.dice(lab6 == 1, one.labels[:, :, 0] == 1) > 0.95


def lloyd_on_voxels(y: np.ndarray, init: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain floating-point Lloyd (scikit-learn's ``KMeans(init=..., n_init=1)`` steps) on an
    (n, C) array of voxel vectors: the partition and centres it converges to."""
    c = init.copy()
    assign = None
    while True:
        d = ((y[:, None, :] - c[None, :, :]) ** 2).sum(axis=-1)
        new = np.argmin(d, axis=1)
        if assign is not None and np.array_equal(new, assign):
            return assign, c
        assign = new
        c = np.stack([y[assign == k].mean(axis=0) if (assign == k).any() else c[k] for k in range(len(c))])


def contrasts_with_background() -> tuple[np.ndarray, np.ndarray]:
    """Two contrasts with voxels 0 in both (background), and others 0 in one channel only."""
    x, _ = two_contrasts((16, 18, 14))
    x = x.copy()
    x[:3] = 0  # no signal in either contrast
    x[5:7, :, :, 0] = 0  # seen by the second contrast only
    x[:, 15:, :, 1] = 0  # seen by the first contrast only
    inside = (x != 0).any(axis=-1)
    assert 0 < inside.sum() < inside.size and (inside != (x != 0).all(axis=-1)).any()
    assert (inside != (x[..., 0] != 0)).any() and (inside != (x[..., 1] != 0)).any()
    return x, inside


def test_vector_kmeans_mask_nonzero_is_any_channel():
    x, inside = contrasts_with_background()
    res = classify(x, "kmeans", 3, channels=True, mask="nonzero", seed=3)
    assert res.labels.shape == x.shape[:3] and res.offset == 1
    labels, centres, initial, it = brute_kmeans_vectors(x, 3, 3, inside)
    np.testing.assert_array_equal(res.initial_centres, initial)
    np.testing.assert_array_equal(res.centres, centres)
    assert int(res.iterations) == it
    np.testing.assert_array_equal(res.labels, labels)
    assert (res.labels[~inside] == 0).all() and (res.labels[inside] >= 1).all()
    # The classes inside are k-means of the masked voxels on their own (no grid, float
    # means), from the same start: the same partition, centres within the fixed point.
    v = x[inside].astype(np.float64)
    lo, span = v.min(axis=0), v.max(axis=0) - v.min(axis=0)
    assign, c = lloyd_on_voxels((v - lo) / span, (initial - lo) / span)
    rank = np.argsort(np.lexsort(c.T[::-1]))  # cluster -> its class, sorted by the first channel
    np.testing.assert_array_equal(res.labels[inside], rank[assign] + 1)
    np.testing.assert_allclose(res.centres, lo + c[np.lexsort(c.T[::-1])] * span, rtol=0, atol=1e-6)
    # The same bytes as the explicit mask, from an array or a dask array of other chunks.
    same = classify(da.from_array(x, chunks=(8, 9, 7, 1)), "kmeans", 3, channels=True, mask=inside, seed=3)
    np.testing.assert_array_equal(same.labels.compute(), res.labels)


def test_vector_kmeans_stats_mask_nonzero_labels_everything():
    x, inside = contrasts_with_background()
    res = classify(x, "kmeans", 3, channels=True, stats_mask="nonzero", seed=3)
    _, centres, initial, _ = brute_kmeans_vectors(x, 3, 3, inside)
    np.testing.assert_array_equal(res.initial_centres, initial)
    np.testing.assert_array_equal(res.centres, centres)
    assert res.offset == 0
    np.testing.assert_array_equal(
        res.labels, classify(x, "kmeans", 3, channels=True, stats_mask=inside, seed=3).labels
    )
    # The background (0 in every channel) is labelled too (here nearest the darkest centre).
    assert (res.labels[~inside] == 0).all() and set(np.unique(res.labels[inside])) == {0, 1, 2}


def test_vector_kmeans_mask_files(tmp_path):
    import nibabel as nib

    x, brain = two_contrasts((16, 18, 14))
    path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), np.eye(4)), path)
    ref = classify(x, "kmeans", 3, channels=True, mask=brain, seed=3)
    res = classify(x, "kmeans", 3, channels=True, mask=path, seed=3)
    np.testing.assert_array_equal(res.centres, ref.centres)
    np.testing.assert_array_equal(res.labels, ref.labels)
    stats = classify(x, "kmeans", 3, channels=True, stats_mask=str(path), seed=3)
    np.testing.assert_array_equal(stats.centres, ref.centres)
    # One mask per channel says nothing about the voxel vectors: refused, naming the mask.
    both = tmp_path / "both.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([brain, brain], -1).astype(np.uint8), np.eye(4)), both)
    with pytest.raises(VolbinDataError, match=r"`mask` .*both\.nii\.gz has 2 volumes.*give a 3D mask"):
        classify(x, "kmeans", 3, channels=True, mask=both)
    with pytest.raises(VolbinDataError, match=r"`stats_mask` .*2 volumes.*channels of one voxel"):
        classify(x, "kmeans", 3, channels=True, stats_mask=both)


def test_mask_nonzero_of_a_series_is_each_volume_own():
    # Without `channels` the 4th axis holds volumes: each is classified inside its own
    # non-zero voxels, as binarize's mask="nonzero" does.
    x, _ = contrasts_with_background()
    res = classify(x, "multi-otsu", 3, mask="nonzero")
    for t in range(2):
        v = x[..., t]
        inside = v != 0
        ref = multiotsu(v[inside])
        np.testing.assert_array_equal(res.thresholds[t], ref)
        assert (res.labels[..., t][~inside] == 0).all()
        np.testing.assert_array_equal(res.labels[..., t][inside], labels_from(v[inside], ref) + 1)


# --- chunk invariance ----------------------------------------------------------------------


@st.composite
def chunkings(draw, shape):
    chunks = []
    for s in shape:
        cuts = sorted(draw(st.sets(st.integers(1, s - 1), max_size=2))) if s > 1 else []
        edges = [0, *cuts, s]
        chunks.append(tuple(b - a for a, b in itertools.pairwise(edges)))
    return tuple(chunks)


X4 = volbin.phantom((14, 16, 12), n_volumes=2, seed=3).intensity
M3 = volbin.phantom((14, 16, 12), seed=3).labels > 0
REF: dict[tuple, Classification] = {}


def reference(key: tuple, **kw) -> Classification:
    if key not in REF:
        REF[key] = classify(X4, **kw)
    return REF[key]


CASES = {
    "multi-otsu volume": dict(method="multi-otsu", classes=3),
    "multi-otsu slice masked": dict(method="multi-otsu", classes=2, scope="slice", axis="x", mask=M3),
    "kmeans stack": dict(method="kmeans", classes=3, scope="stack", seed=1),
    "kmeans warm": dict(method="kmeans", classes=3, warm_start=True, mask=M3),
    "vectors": dict(method="kmeans", classes=3, channels=True, seed=2),
    "vectors masked slice": dict(method="kmeans", classes=2, channels=True, mask=M3, scope="slice", axis="y"),
}


@SETTINGS
@given(st.sampled_from(sorted(CASES)), chunkings(X4.shape))
def test_any_chunking_gives_the_same_bytes(case, chunks):
    kw = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)  # slices with too few values
        ref = reference((case,), **kw)
        res = classify(da.from_array(X4, chunks=chunks), **kw)
    assert res.labels.compute().tobytes() == ref.labels.tobytes()
    for name in ("thresholds", "centres", "initial_centres", "iterations"):
        a, b = getattr(res, name), getattr(ref, name)
        assert (a is None and b is None) or a.tobytes() == b.tobytes(), name


# --- kinds, results and records -------------------------------------------------------------


def test_numpy_dask_volume_in_and_out(phantom3d):
    x = phantom3d.intensity
    ref = classify(x, "multi-otsu", 3)
    assert isinstance(ref.labels, np.ndarray)
    lazy = classify(da.from_array(x, chunks=(16, 56, 48)), "multi-otsu", 3)
    assert isinstance(lazy.labels, da.Array) and lazy.labels.dtype == np.uint8
    np.testing.assert_array_equal(lazy.labels.compute(), ref.labels)
    vol = classify(Volume(da.from_array(x), affine=np.diag([2.0, 2, 2, 1])), "kmeans", 3)
    assert isinstance(vol.labels, Volume)
    step = vol.labels.steps[-1]
    assert step["method"] == "kmeans" and len(step["centres_raw"]) == 3 and step["iterations"] >= 1
    assert vol.labels.affine[0, 0] == 2.0
    parts = vol.split()
    assert len(parts) == 3 and all(isinstance(p, Volume) and p.dtype == bool for p in parts)
    total = sum(p.compute().astype(int) for p in parts)
    assert (total == 1).all()


def test_split_with_a_mask(phantom3d):
    res = classify(da.from_array(phantom3d.intensity), "multi-otsu", 3, mask=phantom3d.brain)
    parts = res.split()
    assert all(isinstance(p, da.Array) for p in parts)
    counts = [int(p.sum().compute()) for p in parts]
    assert sum(counts) == int(phantom3d.brain.sum())
    np.testing.assert_array_equal(parts[2].compute(), res.labels.compute() == 3)


def test_record_is_json(phantom4d):
    import json

    res = classify(phantom4d.intensity, "kmeans", 3, scope="slice", axis="z", mask=phantom4d.brain)
    rec = json.loads(json.dumps(res.record()))
    assert rec["group_axes"] == ["slice", "volume"]
    assert np.array(rec["thresholds_raw"], dtype=float).shape == (40, 4, 2)


def test_nonfinite_voxels_are_class_zero(phantom3d):
    x = phantom3d.intensity.copy()
    x[0, 0, :3] = [np.nan, np.inf, -np.inf]
    res = classify(x, "multi-otsu", 3)
    finite = x[np.isfinite(x)]
    np.testing.assert_array_equal(res.thresholds, multiotsu(finite))
    assert (res.labels[0, 0, :3] == 0).all()


def test_slices_with_too_few_values_warn(phantom3d):
    x, brain = phantom3d.intensity, phantom3d.brain
    mask = brain.copy()
    mask[..., 24] = False
    mask[20:22, 20, 24] = True  # two voxels in slice 24
    with pytest.warns(VolbinWarning, match=r"slice 24 \(2\) has fewer distinct values"):
        res = classify(x, "multi-otsu", 3, scope="slice", axis="z", mask=mask)
    assert np.isnan(res.thresholds[24]).all() and not np.isnan(res.thresholds[23]).any()
    assert (res.labels[..., 24][mask[..., 24]] == 1).all()  # the darkest class


# --- validation ----------------------------------------------------------------------------------


def test_errors_name_the_value(phantom3d, phantom4d):
    x = phantom3d.intensity
    with pytest.raises(ValueError, match="`classes` must be an int >= 2; got 1"):
        classify(x, "kmeans", 1)
    with pytest.raises(ValueError, match="`method` must be one of"):
        classify(x, "otsu")
    with pytest.raises(VolbinDataError, match=r"`channels=True` needs 4D data.*3D data"):
        classify(x, "kmeans", channels=True)
    few = np.repeat(np.array([1.0, 2.0]), 50).reshape(5, 5, 4)
    with pytest.raises(VolbinDataError, match=r"`classes` is 3 but the volume \(2\)"):
        classify(few, "multi-otsu", 3)
    with pytest.raises(VolbinDataError, match="`classes` is 3"):
        classify(few, "kmeans", 3)
    vec = np.stack([few, few], axis=-1)
    with pytest.raises(
        VolbinDataError, match="`classes` is 3 but the volume has only 2 distinct voxel vectors"
    ):
        classify(vec, "kmeans", 3, channels=True)
    with pytest.raises(ValueError, match="does not use `seed`"):
        classify(x, "multi-otsu", seed=3)
    with pytest.raises(ValueError, match="`warm_start=True`"):
        classify(x, "kmeans", warm_start=True)
    with pytest.raises(ValueError, match="`warm_start=True`"):
        classify(phantom4d.intensity, "kmeans", warm_start=True, scope="slice")
    with pytest.raises(ValueError, match="does not use `nbins`"):
        classify(phantom4d.intensity, "kmeans", channels=True, nbins=64)
    with pytest.raises(ValueError, match="`mask` must have the volume's shape"):
        classify(x, "kmeans", mask=np.ones((3, 3, 3), bool))
    with pytest.raises(ValueError, match="`nbins` must be an int >= 2; got 1"):
        classify(x, "multi-otsu", nbins=1)
    with pytest.raises(ValueError, match="`tol` must be a non-negative number"):
        classify(x, "kmeans", tol=-1)
    with pytest.raises(VolbinDataError, match="no finite voxel inside the mask"):
        classify(x, "kmeans", mask=np.zeros(x.shape, bool))
