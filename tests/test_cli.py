"""The command line, called in-process: outputs against nibabel/skimage, exit codes, errors."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest
from skimage.filters import threshold_otsu

from volbin.cli import main
from volbin.phantom import phantom


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ph = phantom((40, 48, 40), n_volumes=3, seed=1)
    path = d / "brains.nii.gz"
    nib.save(ph.to_nifti(), path)
    return path, ph


def test_binarize_otsu_per_volume_matches_skimage(brain, tmp_path, capsys):
    src, ph = brain
    out = tmp_path / "mask.nii.gz"
    assert main(["binarize", str(src), str(out), "--method", "otsu", "--scope", "volume"]) == 0
    assert "wrote" in capsys.readouterr().out
    img = nib.load(out)
    data = np.asanyarray(img.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1}
    x = nib.load(src).get_fdata(dtype=np.float32)
    for i in range(3):
        ref = x[..., i] > threshold_otsu(x[..., i])
        np.testing.assert_array_equal(data[..., i].astype(bool), ref)
    np.testing.assert_allclose(img.affine, ph.affine)
    side = json.loads((tmp_path / "mask.json").read_text())
    assert side["steps"][-1]["decision"]["method"] == "otsu"
    assert len(side["steps"][-1]["decision"]["threshold_raw"]) == 3


def test_recipe_from_sidecar_reproduces_bytes(brain, tmp_path):
    src, _ = brain
    a, b = tmp_path / "a.nii", tmp_path / "b.nii"
    args = ["--method", "stochastic", "--seed", "5", "--rescale", "percentile", "--scope", "slice"]
    assert main(["binarize", str(src), str(a), *args]) == 0
    assert main(["binarize", str(src), str(b), "--recipe", str(tmp_path / "a.json")]) == 0
    assert np.array_equal(np.asanyarray(nib.load(a).dataobj), np.asanyarray(nib.load(b).dataobj))
    c = tmp_path / "c.nii"
    assert main(["binarize", str(src), str(c), "--recipe", str(tmp_path / "a.json"), "--seed", "6"]) == 0
    assert not np.array_equal(np.asanyarray(nib.load(a).dataobj), np.asanyarray(nib.load(c).dataobj))


def test_npy_stochastic_volume_axis_first(tmp_path):
    x = np.random.default_rng(0).random((2, 10, 12, 14))
    src = tmp_path / "stack.npy"
    np.save(src, x)
    out = tmp_path / "mask.npy"
    assert (
        main(
            [
                "binarize",
                str(src),
                str(out),
                "--method",
                "stochastic",
                "--seed",
                "7",
                "--volume-axis",
                "0",
                "--rescale",
                "none",
            ]
        )
        == 0
    )
    m = np.load(out)
    assert m.shape == x.shape and m.dtype == np.uint8
    # Bernoulli(p = x): the mean matches within 5 binomial standard deviations.
    sd = np.sqrt((x * (1 - x)).sum()) / x.size
    assert abs(m.mean() - x.mean()) < 5 * sd


def test_refuses_existing_output_without_force(brain, tmp_path, capsys):
    src, _ = brain
    out = tmp_path / "m.nii.gz"
    out.write_bytes(b"keep me")
    assert main(["binarize", str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and err.count("\n") == 1
    assert out.read_bytes() == b"keep me"
    assert main(["binarize", str(src), str(out), "--force"]) == 0
    assert out.read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"not an image at all" * 30), ""),
    ],
)
def test_bad_inputs_one_line_exit_1(tmp_path, capsys, make, expect):
    src = tmp_path / "in.nii"
    make(src)
    assert main(["binarize", str(src), str(tmp_path / "o.nii")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("volbin: error:") and err.count("\n") == 1 and str(src.name) in err
    assert expect in err
    assert not (tmp_path / "o.nii").exists()


def test_truncated_gzip(brain, tmp_path, capsys):
    src, _ = brain
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    assert main(["binarize", str(bad), str(tmp_path / "o.nii.gz")]) == 1
    assert "cut.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_usage_errors_exit_2(brain, tmp_path, capsys):
    src, _ = brain
    assert main(["binarize", str(src), str(tmp_path / "o.nii"), "--method", "nope"]) == 2
    assert main(["binarize", str(src), str(tmp_path / "o.nii"), "--method", "value"]) == 2
    assert "threshold" in capsys.readouterr().err
    assert main(["binarize", str(src), str(tmp_path / "o.nii"), "--nbins", "1"]) == 2
    assert "--nbins" in capsys.readouterr().err
    assert main([]) == 2


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(Exception, match="no such file"):
        main(["--debug", "binarize", str(tmp_path / "missing.nii"), str(tmp_path / "o.nii")])


def test_nan_voxels_warned_and_zero(tmp_path, capsys):
    x = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    x[0, 0, :4] = np.nan
    x[1, 1, 1] = np.inf
    src = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(x, np.eye(4)), src)
    assert main(["binarize", str(src), str(tmp_path / "o.nii")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "5 NaN/Inf" in err
    m = np.asanyarray(nib.load(tmp_path / "o.nii").dataobj)
    assert m[0, 0, :4].sum() == 0 and m[1, 1, 1] == 0
    finite = x[np.isfinite(x)]
    np.testing.assert_array_equal(m[np.isfinite(x)].astype(bool), finite > threshold_otsu(finite))
    side = json.loads((tmp_path / "o.json").read_text())
    assert side["steps"][-1]["nonfinite_voxels"] == 5


def test_all_nan_volume_is_an_error(tmp_path, capsys):
    src = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), src)
    assert main(["binarize", str(src), str(tmp_path / "o.nii")]) == 1
    assert "no finite voxel" in capsys.readouterr().err


def test_constant_volume_defined_result(tmp_path, capsys):
    src = tmp_path / "c.nii"
    nib.save(nib.Nifti1Image(np.full((4, 5, 6), 7.0, np.float32), np.eye(4)), src)
    assert main(["binarize", str(src), str(tmp_path / "o.nii")]) == 0
    assert "constant" in capsys.readouterr().err
    assert np.asanyarray(nib.load(tmp_path / "o.nii").dataobj).sum() == 0


def test_info_json_against_numpy(brain, capsys):
    src, _ = brain
    assert main(["info", str(src), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    x = nib.load(src).get_fdata()
    assert info["shape"] == list(x.shape) and info["n_volumes"] == 3
    for i, s in enumerate(info["stats"]):
        v = x[..., i]
        assert s["min"] == pytest.approx(v.min()) and s["max"] == pytest.approx(v.max())
        assert s["mean"] == pytest.approx(v.mean()) and s["rms"] == pytest.approx(np.sqrt((v**2).mean()))
        width = (v.max() - v.min()) / 65536
        assert abs(s["percentiles"]["p50"] - np.percentile(v, 50)) <= 2 * width
    assert info["orientation"]["axcodes"] == "".join(nib.aff2axcodes(nib.load(src).affine))
    assert main(["info", str(src)]) == 0
    text = capsys.readouterr().out
    assert "vol 2" in text and "orientation" in text


def test_help_has_examples(capsys):
    for cmd in ("binarize", "info", "demo"):
        assert main([cmd, "--help"]) == 0
        assert "examples:" in capsys.readouterr().out
    assert main(["--version"]) == 0


def test_demo_prints_the_dice_of_its_masks_against_the_phantoms_truth(tmp_path, capsys):
    d = tmp_path / "d"
    assert main(["demo", "--out-dir", str(d), "--shape", "40", "48", "40", "--volumes", "2"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert len(rows) == 3  # one 3D volume and two 4D volumes
    ph = {"phantom3d": phantom((40, 48, 40), seed=0), "phantom4d": phantom((40, 48, 40), n_volumes=2, seed=0)}
    got = []
    for name, p in ph.items():
        mask = np.asanyarray(nib.load(d / f"{name}_mask.nii.gz").dataobj).astype(bool)
        x = p.intensity
        c = p.classes
        truth = np.isin(p.labels, (c["grey_matter"], c["white_matter"], c["scalp"]))
        for i in range(1 if mask.ndim == 3 else mask.shape[3]):
            m = mask if mask.ndim == 3 else mask[..., i]
            xi = x if x.ndim == 3 else x[..., i]
            np.testing.assert_array_equal(m, xi > threshold_otsu(xi))  # Otsu per volume, as skimage
            dice = 2 * np.sum(m & truth) / (m.sum() + truth.sum())
            got.append((int(m.sum()), int(truth.sum()), dice))
    for (_, _, fg, tr, dice, _), (fg_ref, tr_ref, dice_ref) in zip(rows, got, strict=True):
        assert (int(fg), int(tr)) == (fg_ref, tr_ref)
        assert float(dice) == pytest.approx(dice_ref, abs=5e-5)
        assert dice_ref > 0.8  # Otsu finds the bright T1 classes of the phantom
    assert "files in" in out and re.search(r"\(\d+\.\d s\)", out)


def test_dither_cli_records_quality_and_overlays_input(brain, tmp_path, capsys):
    src, _ = brain
    out = tmp_path / "d.nii.gz"
    assert (
        main(
            [
                "binarize",
                str(src),
                str(out),
                "--method",
                "dither",
                "--kernel",
                "stucki",
                "--scope",
                "volume",
                "--serpentine",
                "--upsample",
                "2",
                "--jitter",
                "0.2",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert "quality: blurred RMS error" in capsys.readouterr().out
    side = json.loads((tmp_path / "d.json").read_text())
    q = side["quality"]
    assert q["scope"] == "volume" and abs(q["mean_density_error"]) < 0.005
    a, b = nib.load(src), nib.load(out)
    assert b.shape[:3] == tuple(2 * s for s in a.shape[:3])
    assert int(b.header["qform_code"]) == int(a.header["qform_code"])
    assert int(b.header["sform_code"]) == int(a.header["sform_code"])
    # The outer corners of the grids coincide in world space.
    for corner in [(-0.5, -0.5, -0.5), tuple(n - 0.5 for n in a.shape[:3])]:
        scaled = tuple(2 * (c + 0.5) - 0.5 for c in corner)
        np.testing.assert_allclose(
            nib.affines.apply_affine(a.affine, corner), nib.affines.apply_affine(b.affine, scaled), atol=1e-5
        )


@pytest.mark.parametrize("dtype", [">f4", ">i2", "float16", "<u2", "int8"])
def test_foreign_dtypes_match_skimage(dtype):
    import volbin

    x = (np.random.default_rng(1).random((9, 10, 11)) * 100).astype(dtype)
    ref = x.astype(np.float64) > threshold_otsu(x.astype(np.float64))
    np.testing.assert_array_equal(volbin.binarize(x, "otsu"), ref)


def test_scaled_int16_dtype_range_and_info(tmp_path, capsys):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(0.5, -100)
    src = tmp_path / "s.nii"
    nib.save(img, src)
    import volbin

    vol = volbin.load(src)
    r = volbin.rescale(vol, "dtype").compute()
    expect = (raw * 0.5 - 100 - (-32768 * 0.5 - 100)) / (65535 * 0.5)
    np.testing.assert_allclose(r, expect, rtol=1e-5)
    assert main(["info", str(src), "--json"]) == 0
    o = json.loads(capsys.readouterr().out)["orientation"]
    assert o["scl_slope"] == 0.5 and o["scl_inter"] == -100


def test_rescale_none_records_identity(tmp_path):
    import volbin

    x = np.random.default_rng(0).gamma(2.0, 50.0, size=(10, 10, 10))
    out = volbin.binarize(volbin.Volume(x), "otsu", rescale="none")
    dec = out.steps[-1]["decision"]
    assert dec["threshold_raw"] == dec["threshold_rescaled"] == pytest.approx(threshold_otsu(x))
    assert "lo" not in out.steps[-1]["rescale"]


def test_debug_after_command_and_bad_numbers(tmp_path, capsys):
    with pytest.raises(Exception, match="no such file"):
        main(["binarize", str(tmp_path / "missing.nii"), str(tmp_path / "o.nii"), "--debug"])
    for bad in ("inf", "nan", "0", "-3"):
        assert main(["info", str(tmp_path / "x.nii"), "--chunk-mb", bad]) == 2
    assert main(["info", str(tmp_path / "x.nii"), "--volume-axis", "7"]) == 2


def test_input_sidecar_is_never_replaced(tmp_path, capsys):
    src = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((6, 6, 6)).astype(np.float32), np.eye(4)), src)
    bids = tmp_path / "sub-01_T1w.json"
    bids.write_text('{"RepetitionTime": 2.3}')
    assert main(["binarize", str(src), str(tmp_path / "sub-01_T1w.nii"), "--force"]) == 1
    assert "sidecar" in capsys.readouterr().err
    assert json.loads(bids.read_text()) == {"RepetitionTime": 2.3}
