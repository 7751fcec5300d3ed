"""Tests of volbin.phantom, and of the shared fixtures in conftest.py."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.filters import threshold_otsu

from volbin.phantom import CLASS_MEANS, CLASSES, Phantom, phantom

SMALL = (40, 48, 40)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def interior(p: Phantom, name: str, depth: int = 2) -> np.ndarray:
    """Voxels of class `name` more than `depth` voxels (chessboard) from any other class.

    The partial-volume blur (sigma 0.7 voxel) barely reaches them for the default depth.
    """
    cube = np.ones((3, 3, 3), dtype=bool)
    return ndimage.binary_erosion(p.labels == p.classes[name], cube, iterations=depth)


# --- shapes, dtypes, affine --------------------------------------------------------------


def test_default_shape_dtype_and_classes():
    p = phantom()
    assert p.intensity.shape == p.labels.shape == (96, 112, 96)
    assert p.intensity.dtype == np.float32
    assert p.labels.dtype == np.uint8
    assert dict(p.classes) == {
        "background": 0,
        "csf": 1,
        "grey_matter": 2,
        "white_matter": 3,
        "scalp": 4,
        "skull": 5,
    }
    assert set(np.unique(p.labels)) == set(p.classes.values())
    assert np.isfinite(p.intensity).all()
    assert (p.intensity >= 0).all()


def test_affine_is_ras_with_zooms_and_centred_origin():
    shape, zooms = (30, 36, 24), (0.9, 1.1, 2.5)
    p = phantom(shape, zooms=zooms)
    assert p.affine.shape == (4, 4)
    assert nib.aff2axcodes(p.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.diag(p.affine)[:3], zooms)
    np.testing.assert_allclose(p.zooms, zooms)
    centre = (np.array(shape) - 1) / 2
    np.testing.assert_allclose(nib.affines.apply_affine(p.affine, centre), 0, atol=1e-12)


def test_zooms_change_only_the_affine():
    a = phantom(SMALL, seed=4)
    b = phantom(SMALL, seed=4, zooms=(2.0, 2.0, 3.0))
    np.testing.assert_array_equal(a.intensity, b.intensity)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_phantom_is_frozen():
    p = phantom(SMALL)
    with pytest.raises(AttributeError):
        p.labels = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.classes["csf"] = 9  # type: ignore[index]


@pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "uint16", "int32"])
def test_dtypes(dtype):
    p = phantom(SMALL, dtype=dtype)
    assert p.intensity.dtype == np.dtype(dtype)
    ref = phantom(SMALL, dtype="float64").intensity
    # Integer output is the float output rounded.
    np.testing.assert_allclose(p.intensity, ref, atol=0.5 if dtype[0] in "iu" else 1e-3)


def test_integer_dtype_clips_to_its_range():
    p = phantom(SMALL, dtype="uint8", max_intensity=1000)
    assert p.intensity.dtype == np.uint8
    assert p.intensity.max() == 255


def test_foreground_and_brain_masks(phantom3d):
    assert phantom3d.foreground.shape == phantom3d.labels.shape
    np.testing.assert_array_equal(phantom3d.foreground, phantom3d.labels > 0)
    brain = phantom3d.brain
    assert brain.any()
    assert not (brain & ~phantom3d.foreground).any()
    assert not np.isin(phantom3d.labels[brain], (0, 4, 5)).any()
    # The head fills a good part of the grid but leaves a margin of air.
    assert 0.2 < phantom3d.foreground.mean() < 0.5
    assert not phantom3d.foreground[[0, -1]].any()
    assert not phantom3d.foreground[:, [0, -1]].any()
    assert not phantom3d.foreground[:, :, [0, -1]].any()


def test_to_nifti_round_trip(tmp_path):
    p = phantom(SMALL, n_volumes=2, zooms=(1.5, 1.5, 2.0))
    path = tmp_path / "phantom.nii.gz"
    nib.save(p.to_nifti(), path)
    img = nib.load(path)
    np.testing.assert_array_equal(np.asarray(img.dataobj), p.intensity)
    np.testing.assert_allclose(img.affine, p.affine)
    assert img.header.get_zooms()[:3] == (1.5, 1.5, 2.0)


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_same_bytes():
    a = phantom(SMALL, seed=7, n_volumes=2)
    b = phantom(SMALL, seed=7, n_volumes=2)
    assert a.intensity.tobytes() == b.intensity.tobytes()
    assert a.labels.tobytes() == b.labels.tobytes()


def test_different_seeds_differ():
    a, b = phantom(SMALL, seed=0), phantom(SMALL, seed=1)
    assert not np.array_equal(a.intensity, b.intensity)
    # Anatomy differs too, but only by a smooth deformation: still mostly the same head.
    assert not np.array_equal(a.labels, b.labels)
    assert dice(a.foreground, b.foreground) > 0.9


# --- contrast, noise and bias ----------------------------------------------------------------


def test_class_means_follow_t1_contrast(phantom3d):
    p = phantom3d
    mean = {name: p.intensity[p.labels == k].mean() for name, k in p.classes.items()}
    assert mean["white_matter"] > mean["grey_matter"] > mean["csf"] > mean["background"]
    assert mean["scalp"] > mean["grey_matter"]
    assert mean["skull"] < mean["grey_matter"]


def test_noiseless_unbiased_interiors_equal_class_means():
    p = phantom(noise=0, bias=0, max_intensity=1000)
    for name in ("csf", "grey_matter", "white_matter", "background"):
        inside = p.intensity[interior(p, name)]
        assert inside.size > 20, name
        np.testing.assert_allclose(inside, 1000 * CLASS_MEANS[name], atol=0.1, err_msg=name)


def test_means_override():
    p = phantom(noise=0, bias=0, means={"csf": 0.5, "background": 0})
    for name, expected in [("csf", 500), ("background", 0), ("white_matter", 850)]:
        inside = p.intensity[interior(p, name)]
        assert inside.size > 20, name
        np.testing.assert_allclose(inside, expected, atol=0.1, err_msg=name)


def test_background_noise_is_rayleigh():
    sigma = 30.0
    p = phantom((48, 56, 48), noise=sigma / 1000, max_intensity=1000, means={"background": 0})
    air = p.intensity[interior(p, "background")]
    assert air.size > 10_000
    # The magnitude of complex Gaussian noise: Rayleigh with mean sigma * sqrt(pi / 2) and
    # second moment 2 sigma^2.
    np.testing.assert_allclose(air.mean(), sigma * np.sqrt(np.pi / 2), rtol=0.03)
    np.testing.assert_allclose(np.mean(air.astype(np.float64) ** 2), 2 * sigma**2, rtol=0.05)


def test_noise_level_in_tissue():
    sigma = 30.0
    noisy = phantom((48, 56, 48), noise=sigma / 1000)
    clean = phantom((48, 56, 48), noise=0)
    wm = interior(noisy, "white_matter")
    # At high SNR Rician noise is close to Gaussian noise of the same sigma.
    residual = (noisy.intensity - clean.intensity)[wm]
    assert abs(residual.mean()) < 2
    np.testing.assert_allclose(residual.std(), sigma, rtol=0.05)


def test_bias_field_is_smooth_and_of_the_asked_amplitude():
    flat = phantom(SMALL, noise=0, bias=0)
    biased = phantom(SMALL, noise=0, bias=0.2)
    wm = interior(flat, "white_matter")
    assert np.ptp(flat.intensity[wm]) < 2e-3 * flat.intensity[wm].mean()
    # Without noise, the ratio is the bias field itself, everywhere.
    field = biased.intensity.astype(np.float64) / flat.intensity
    np.testing.assert_allclose(np.abs(field - 1).max(), 0.2, rtol=1e-3)
    # Smooth: a quadratic of the coordinates has constant second differences.
    for axis in range(3):
        second = np.diff(field, 2, axis=axis)
        assert np.ptp(second) < 1e-4


def test_otsu_separates_head_from_background():
    for seed in range(3):
        p = phantom(seed=seed)
        t = threshold_otsu(p.intensity)
        air = p.intensity[interior(p, "background")]
        assert t > np.quantile(air, 0.999)
        assert t < p.intensity[p.labels == p.classes["grey_matter"]].mean()
        mask = p.intensity > t
        # As on a real T1 scan, CSF and skull are darker than the threshold: the raw mask is
        # the head with dark holes inside, and filling them gives the head.
        assert dice(mask, p.foreground) > 0.8
        assert dice(ndimage.binary_fill_holes(mask), p.foreground) > 0.98


def test_otsu_recovers_the_head_when_csf_and_skull_are_bright():
    p = phantom(means={"csf": 0.5, "skull": 0.5})
    mask = p.intensity > threshold_otsu(p.intensity)
    assert dice(mask, p.foreground) > 0.95


# --- 4D ----------------------------------------------------------------------------------------


def test_4d_shape_and_first_volume_is_the_3d_phantom(phantom4d):
    assert phantom4d.intensity.shape == (40, 48, 40, 4)
    assert phantom4d.labels.shape == (40, 48, 40)
    np.testing.assert_array_equal(phantom4d.intensity[..., 0], phantom(SMALL, seed=1).intensity)
    one = phantom(SMALL, seed=1, n_volumes=1)
    assert one.intensity.shape == (*SMALL, 1)


def test_4d_volumes_differ_in_noise_only(phantom4d):
    sigma = 0.03 * 1000
    v = phantom4d.intensity.astype(np.float64)
    wm = interior(phantom4d, "white_matter")
    for t in range(1, v.shape[-1]):
        diff = v[..., t] - v[..., 0]
        assert np.abs(diff).max() > 0
        # What is not noise is smooth (bias and scale) and small.
        smooth = ndimage.gaussian_filter(diff, 3)
        assert np.abs(smooth[wm]).max() < 0.15 * 1000
        # The rest is the difference of two independent noises.
        np.testing.assert_allclose((diff - smooth)[wm].std(), np.sqrt(2) * sigma, rtol=0.2)


def test_4d_noiseless_volumes_differ_by_a_smooth_field():
    p = phantom(SMALL, n_volumes=3, noise=0)
    head = ndimage.binary_erosion(p.foreground, iterations=2)
    for t in (1, 2):
        ratio = p.intensity[..., t][head] / p.intensity[..., 0][head]
        assert 0.7 < ratio.min() and ratio.max() < 1.3
        assert not np.allclose(ratio, 1)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (10, 10)}, "`shape`"),
        ({"shape": (10, 0, 10)}, "`shape`"),
        ({"shape": (10.0, 10, 10)}, "`shape`"),
        ({"n_volumes": 0}, "`n_volumes`"),
        ({"n_volumes": 2.5}, "`n_volumes`"),
        ({"noise": -0.1}, "`noise`"),
        ({"noise": float("nan")}, "`noise`"),
        ({"bias": 1.0}, "`bias`"),
        ({"bias": -0.1}, "`bias`"),
        ({"max_intensity": 0}, "`max_intensity`"),
        ({"zooms": (1, 1)}, "`zooms`"),
        ({"zooms": (1, -1, 1)}, "`zooms`"),
        ({"means": {"bone": 0.3}}, "`means`"),
        ({"means": {"csf": -1}}, "`means`"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs, match):
    kwargs.setdefault("shape", (8, 8, 8))
    with pytest.raises(ValueError, match=match):
        phantom(**kwargs)


@pytest.mark.parametrize("dtype", ["bool", "complex64", "U3"])
def test_bad_dtype_raises_type_error(dtype):
    with pytest.raises(TypeError, match="`dtype`"):
        phantom((8, 8, 8), dtype=dtype)


@settings(max_examples=20, deadline=None)
@given(
    shape=st.tuples(*[st.integers(2, 20)] * 3),
    n_volumes=st.none() | st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    noise=st.floats(0, 0.2),
    bias=st.floats(0, 0.9),
)
def test_any_small_phantom_is_well_formed(shape, n_volumes, seed, noise, bias):
    p = phantom(shape, n_volumes=n_volumes, seed=seed, noise=noise, bias=bias)
    expected = shape if n_volumes is None else (*shape, n_volumes)
    assert p.intensity.shape == expected
    assert p.labels.shape == shape
    assert np.isfinite(p.intensity).all()
    assert (p.intensity >= 0).all()
    assert set(np.unique(p.labels)) <= set(CLASSES.values())


def test_session_phantoms_are_read_only(phantom3d, phantom4d):
    assert phantom3d.intensity.shape == (48, 56, 48)
    for p in (phantom3d, phantom4d):
        with pytest.raises(ValueError, match="read-only"):
            p.intensity[0, 0, 0] = 1


@pytest.mark.parametrize("name", ["scaled.nii", "scaled.nii.gz", "sub/scaled.nii.gz"])
def test_nifti_factory_writes_slope_and_inter(nifti_factory, name):
    raw = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    path = nifti_factory(raw, name, affine=affine, dtype="int16", slope=0.5, inter=-3.0)
    img = nib.load(path)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(img.dataobj.get_unscaled(), raw)
    np.testing.assert_allclose(img.get_fdata(), raw * 0.5 - 3.0)
    np.testing.assert_allclose(img.affine, affine)


def test_nifti_factory_plain(nifti_factory, phantom3d):
    path = nifti_factory(phantom3d.intensity, affine=phantom3d.affine)
    img = nib.load(path)
    assert path.name == "volume.nii.gz"
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj), phantom3d.intensity)
