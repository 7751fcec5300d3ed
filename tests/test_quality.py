"""The dithering quality metric against direct numpy/scipy, and `volbin info --compare`."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

import volbin
from volbin.cli import main
from volbin.dither.quality import blur, dither_error

RNG = np.random.default_rng(0)
GREY = RNG.random((30, 31, 29)).astype(np.float32)
BINARY = RNG.random(GREY.shape) < GREY


def _direct(b, r, sigmas):
    gb = ndimage.gaussian_filter(b.astype(np.float32), sigmas)
    gr = ndimage.gaussian_filter(r.astype(np.float32), sigmas)
    return {
        "blurred_rms": np.sqrt(np.mean((gb.astype(np.float64) - r) ** 2)),
        "perceptual_rms": np.sqrt(np.mean((gb.astype(np.float64) - gr) ** 2)),
        "mean_density_error": b.mean() - r.astype(np.float64).mean(),
    }


@pytest.mark.parametrize("sigma", [0.5, 2.5])
@pytest.mark.parametrize("scope", ["slice", "volume"])
@pytest.mark.parametrize("chunks", [(7, 9, 8), (30, 31, 3)])
def test_blur_equals_gaussian_filter_on_the_whole_array(sigma, scope, chunks):
    out = blur(da.from_array(GREY, chunks=chunks), sigma, scope=scope)
    ref = ndimage.gaussian_filter(GREY, (sigma, sigma, sigma) if scope == "volume" else (sigma, sigma, 0))
    np.testing.assert_array_equal(out.compute(), ref)


def test_blur_assert_eq():
    da.utils.assert_eq(
        blur(da.from_array(GREY, chunks=(10, 11, 12)), 1.0), ndimage.gaussian_filter(GREY, 1.0)
    )


def test_blur_of_4d_never_mixes_volumes():
    x = RNG.random((12, 13, 11, 3)).astype(np.float32)
    out = blur(da.from_array(x, chunks=(5, 5, 5, 1)), 1.0)
    np.testing.assert_array_equal(out.compute(), ndimage.gaussian_filter(x, (1, 1, 1, 0)))
    out0 = blur(np.moveaxis(x, 3, 0), 1.0, volume_axis=0, scope="slice", axis="x")
    np.testing.assert_array_equal(out0, ndimage.gaussian_filter(np.moveaxis(x, 3, 0), (0, 0, 1, 1)))


@pytest.mark.parametrize("scope", ["slice", "volume"])
def test_dither_error_matches_direct_computation(scope):
    sigma = 1.3
    got = dither_error(da.from_array(BINARY, chunks=(6, 7, 8)), GREY, sigma=sigma, scope=scope)
    ref = _direct(BINARY, GREY, (sigma, sigma, sigma) if scope == "volume" else (sigma, sigma, 0))
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9)
    assert got["mean_density"] == pytest.approx(BINARY.mean())
    assert got["n_voxels"] == GREY.size and got["sigma"] == sigma and got["scope"] == scope


def test_perfect_and_bad_renderings():
    exact = dither_error(GREY, GREY)
    assert exact["perceptual_rms"] == 0 and exact["mean_density_error"] == 0
    # blurred_rms compares with the unblurred input: detail finer than sigma counts.
    assert exact["blurred_rms"] > 0.05
    flat = np.full((24, 24, 24), 0.25, np.float32)
    checker = np.indices(flat.shape).sum(axis=0) % 4 == 0  # a quarter of the voxels on, evenly
    clumped = np.zeros(flat.shape, bool)
    clumped[:6] = True  # also a quarter, in one slab
    even, clumps = dither_error(checker, flat, sigma=2), dither_error(clumped, flat, sigma=2)
    assert abs(even["mean_density_error"]) < 1e-9 and abs(clumps["mean_density_error"]) < 1e-9
    assert even["perceptual_rms"] < 0.02 < clumps["perceptual_rms"]


def test_nonfinite_reference_counts_as_zero():
    r = GREY.copy()
    r[0, 0, :5] = np.nan
    got = dither_error(BINARY, r)
    ref = dither_error(BINARY, np.nan_to_num(r, nan=0.0))
    assert got == ref


def test_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        dither_error(BINARY, GREY[:-1])
    with pytest.raises(ValueError, match="`sigma`"):
        dither_error(BINARY, GREY, sigma=-1)
    with pytest.raises(ValueError, match="`scope`"):
        dither_error(BINARY, GREY, scope="plane")


# --- volbin info --compare -----------------------------------------------------------------------
@pytest.fixture
def grey_path(tmp_path, phantom3d):
    return volbin.save(phantom3d.intensity, tmp_path / "t1.nii.gz")


def test_info_compare_uses_the_sidecar_recipe(tmp_path, grey_path, capsys):
    mask = tmp_path / "mask.nii.gz"
    opts = "--method stochastic --seed 3 --rescale percentile --percentiles 5 95 --no-progress"
    assert main(["binarize", str(grey_path), str(mask), *opts.split()]) == 0
    capsys.readouterr()
    assert (
        main(["info", str(mask), "--compare", str(grey_path), "--sigma", "1.5", "--json", "--no-progress"])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    cmp_ = info["compare"]
    assert "sidecar" in cmp_["reference"]["rescale"]
    grey = volbin.load(grey_path).compute()
    ref = volbin.rescale(grey, "percentile", percentiles=(5, 95))
    direct = dither_error(volbin.load(mask).compute(), ref, sigma=1.5)
    for key in ("blurred_rms", "perceptual_rms", "mean_density_error"):
        assert cmp_[key] == pytest.approx(direct[key], rel=1e-9, abs=1e-12)
    # Stochastic binarization follows the grey levels on average.
    assert abs(cmp_["mean_density_error"]) < 0.01


def test_info_compare_without_sidecar_rescales_minmax(tmp_path, grey_path, capsys):
    grey = volbin.load(grey_path).compute()
    r = volbin.rescale(grey)
    mask = np.random.default_rng(5).random(grey.shape) < r
    mask_path = volbin.save(mask, tmp_path / "m.nii", sidecar=False)
    assert main(["info", str(mask_path), "--compare", str(grey_path), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "rendering error" in text and "minmax per volume" in text
    expected = dither_error(mask, r)
    assert f"{expected['support_rms']:.5f} inside the input's support" in text
    assert f"{expected['perceptual_rms']:.5f} overall" in text


def test_info_compare_shape_mismatch_is_one_line(tmp_path, grey_path, capsys):
    other = volbin.save(np.zeros((5, 5, 5), np.uint8), tmp_path / "small.nii", sidecar=False)
    assert main(["info", str(other), "--compare", str(grey_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("volbin: error:") and "shape" in err and len(err.splitlines()) == 1


def test_info_compare_upsamples_as_the_recipe_says(tmp_path, grey_path, capsys):
    from volbin.recipe import Recipe
    from volbin.resample import upsample

    grey = volbin.load(grey_path)
    ref = upsample(volbin.rescale(grey.compute()), 2)
    mask = np.random.default_rng(2).random(ref.shape) < ref
    recipe = Recipe(method="dither", scope="slice", upsample=2)
    mask_path = volbin.save(mask, tmp_path / "m.nii", sidecar={"steps": [{"recipe": recipe.to_dict()}]})
    assert main(["info", str(mask_path), "--compare", str(grey_path), "--json", "--no-progress"]) == 0
    cmp_ = json.loads(capsys.readouterr().out)["compare"]
    assert "upsampled by [2.0, 2.0, 2.0]" in cmp_["reference"]["rescale"]
    assert cmp_["perceptual_rms"] == pytest.approx(dither_error(mask, ref)["perceptual_rms"], rel=1e-9)


def test_info_compare_warns_about_another_input(tmp_path, grey_path, capsys):
    mask = tmp_path / "mask.nii.gz"
    assert main(["binarize", str(grey_path), str(mask), "--method", "stochastic", "--no-progress"]) == 0
    other = volbin.save(volbin.load(grey_path).compute() * 2 + 5, tmp_path / "other.nii.gz")
    capsys.readouterr()
    assert main(["info", str(mask), "--compare", str(other), "--no-progress"]) == 0
    assert "differs from the one recorded" in capsys.readouterr().err


@pytest.mark.parametrize("sigma", [1.0, 2.0])
@pytest.mark.parametrize("scope", ["slice", "volume"])
def test_support_rms_matches_direct_computation(sigma, scope):
    # A bright ball in an empty box: the support is the ball, not the background.
    zz, yy, xx = np.indices((30, 31, 29))
    ball = np.clip(1.5 - np.sqrt((zz - 14) ** 2 + (yy - 16) ** 2 + (xx - 12) ** 2) / 6, 0, 1)
    grey = (ball * GREY).astype(np.float32)
    binary = RNG.random(grey.shape) < grey
    got = dither_error(da.from_array(binary, chunks=(6, 31, 29)), grey, sigma=sigma, scope=scope)
    sig = (sigma, sigma, sigma) if scope == "volume" else (sigma, sigma, 0)
    gb = ndimage.gaussian_filter(binary.astype(np.float32), sig).astype(np.float64)
    gr = ndimage.gaussian_filter(grey, sig).astype(np.float64)
    support = ndimage.gaussian_filter(grey, (1, 1, 1) if scope == "volume" else (1, 1, 0)) > 0.1
    assert 0.05 < support.mean() < 0.5
    assert got["support_fraction"] == pytest.approx(support.mean())
    assert got["support_rms"] == pytest.approx(np.sqrt(np.mean((gb - gr)[support] ** 2)), rel=1e-6)
    assert got["support_rms"] > got["perceptual_rms"]  # the background dilutes the overall figure


def test_support_rms_of_an_empty_reference_is_none():
    zero = np.zeros((8, 8, 8), np.float32)
    assert dither_error(zero > 0, zero)["support_rms"] is None
