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
                "--quality",
            ]
        )
        == 0
    )
    assert "quality: rendering error" in capsys.readouterr().out
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


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--method", "otsu", "--upsample", "2"], "--upsample is not used by --method otsu"),
        (["--method", "otsu", "--kernel", "stucki"], "--kernel is not used by --method otsu"),
        (["--method", "otsu", "--kernel", "floyd-steinberg"], "--kernel is not used by --method otsu"),
        (["--method", "otsu", "--threshold", "0.3"], "--threshold is not used by --method otsu"),
        (["--percentiles", "2", "98"], "--percentiles is not used by --rescale minmax"),
        (["--method", "dither", "--seed", "3"], "--seed is not used by --method dither"),
        (["--method", "li", "--axis", "y"], "--axis is not used by --scope volume"),
        (["--curve", "gamma"], "--curve gamma needs --gamma"),
        (["--gamma", "0.5"], "--gamma is not used by --curve linear"),
    ],
)
def test_options_the_method_does_not_use_are_usage_errors(brain, tmp_path, capsys, flags, named):
    src, _ = brain
    out = tmp_path / "o.nii"
    assert main(["binarize", str(src), str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "o.json").exists()


def test_a_recipe_file_with_options_of_another_method_is_merged(brain, tmp_path):
    src, _ = brain
    a, b = tmp_path / "a.nii", tmp_path / "b.nii"
    assert (
        main(
            [
                "binarize",
                str(src),
                str(a),
                "--method",
                "dither",
                "--jitter",
                "0.2",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    # The sidecar's dither options do not apply to Otsu: they are dropped, not refused.
    assert main(["binarize", str(src), str(b), "--recipe", str(tmp_path / "a.json"), "--method", "otsu"]) == 0
    rec = json.loads((tmp_path / "b.json").read_text())["steps"][-1]["recipe"]
    assert rec["method"] == "otsu" and rec["jitter"] == 0.0 and rec["seed"] == 0


def test_a_mistyped_flag_suggests_the_closest(brain, tmp_path, capsys):
    src, _ = brain
    assert main(["binarize", str(src), str(tmp_path / "o.nii"), "--methd", "otsu"]) == 2
    assert "did you mean --method" in capsys.readouterr().err


def test_python_dash_m_volbin_runs_the_command_line():
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "volbin", "--version"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0 and r.stdout.startswith("volbin ")


def test_api_refuses_an_option_the_method_does_not_use():
    import volbin

    x = np.random.default_rng(0).random((8, 9, 10))
    with pytest.raises(ValueError, match="`kernel` is not used by method='otsu'"):
        volbin.binarize(x, "otsu", kernel="stucki")
    with pytest.raises(ValueError, match="`percentiles` is not used by rescale='minmax'"):
        volbin.rescale(x, percentiles=(2, 98))


def test_binarize_preview_writes_a_png_named_in_the_sidecar(brain, tmp_path):
    from PIL import Image

    src, _ = brain
    out = tmp_path / "m.nii.gz"
    assert main(["binarize", str(src), str(out), "--method", "otsu", "--preview", "--no-progress"]) == 0
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["preview"] == "m.png"
    with Image.open(tmp_path / "m.png") as img:
        assert img.format == "PNG" and img.width > 200
    assert main(["preview", str(src), "--mask", str(out), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert main(["preview", str(src), "--out", str(tmp_path / "p.png")]) == 1  # exists: refused
    assert main(["preview", str(src), "--axis", "x"]) == 2  # --axis without --slices


def test_normalize_zscore_matches_numpy_inside_the_mask(brain, tmp_path):
    src, ph = brain
    mask = tmp_path / "brainmask.nii.gz"
    nib.save(nib.Nifti1Image(ph.brain.astype(np.uint8), ph.affine), mask)
    out = tmp_path / "z.nii.gz"
    assert main(["normalize", str(src), str(out), "--method", "zscore", "--mask", str(mask)]) == 0
    z = nib.load(out).get_fdata(dtype=np.float32)
    x = nib.load(src).get_fdata(dtype=np.float64)
    for i in range(x.shape[3]):
        inside = x[..., i][ph.brain]
        ref = (x[..., i] - inside.mean()) / inside.std()
        np.testing.assert_allclose(z[..., i], ref, rtol=1e-5, atol=1e-5)
    assert z.dtype == np.float32 and "normalize" in json.dumps(json.loads((tmp_path / "z.json").read_text()))


def test_normalize_nyul_cohort_then_new_volume(tmp_path):
    srcs = []
    for i in range(3):
        p = phantom((24, 28, 22), seed=i)
        path = tmp_path / f"sub-0{i}.nii.gz"
        nib.save(nib.Nifti1Image(p.intensity * (1 + 0.5 * i) + 20 * i, p.affine), path)
        srcs.append(path)
    lm = tmp_path / "nyul.json"
    args = ["normalize", str(srcs[0]), str(srcs[1]), "--out-dir", str(tmp_path / "norm"), "--method", "nyul"]
    args += ["--scheduler", "threads"]
    assert main([*args, "--save-landmarks", str(lm)]) == 0
    assert json.loads(lm.read_text())
    out = tmp_path / "new.nii.gz"
    assert main(["normalize", str(srcs[2]), str(out), "--method", "nyul", "--landmarks", str(lm)]) == 0
    a = nib.load(tmp_path / "norm" / "sub-00_norm.nii.gz").get_fdata()
    c = nib.load(out).get_fdata()
    # Gain and offset differ by 2x and 40: after standardisation the medians of the heads agree.
    assert abs(np.median(a[a > 5]) - np.median(c[c > 5])) < 10
    assert main(["normalize", str(srcs[0]), str(tmp_path / "x.nii.gz"), "--method", "nyul"]) == 2
    assert (
        main(
            ["normalize", str(srcs[0]), str(tmp_path / "x.nii.gz"), "--method", "zscore", "--contrast", "t1"]
        )
        == 2
    )


def test_info_histogram_prints_exposure_statistics(brain, capsys):
    src, _ = brain
    assert main(["info", str(src), "--histogram"]) == 0
    out = capsys.readouterr().out
    assert "histogram (log counts)" in out and "median" in out


# --- masks, comparisons, counts, the threshold table, binary info ---------------------------------
@pytest.fixture(scope="module")
def head(tmp_path_factory):
    d = tmp_path_factory.mktemp("masks")
    ph = phantom((36, 40, 32), seed=4)
    t1 = d / "t1.nii.gz"
    nib.save(nib.Nifti1Image(ph.intensity, ph.affine), t1)
    brain = ph.labels > 0
    m = d / "brain.nii.gz"
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), ph.affine), m)
    other = d / "shifted.nii.gz"
    aff = ph.affine.copy()
    aff[2, 3] += 1.0
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), aff), other)
    return t1, m, other, np.asarray(ph.intensity, dtype=np.float64), brain


def test_cli_mask_and_stats_mask(head, tmp_path, capsys):
    t1, m, _, x, brain = head
    t = threshold_otsu(x[brain])
    assert main(["binarize", str(t1), str(tmp_path / "a.nii"), "--mask", str(m), "--no-progress"]) == 0
    out = capsys.readouterr().out
    a = np.asanyarray(nib.load(tmp_path / "a.nii").dataobj).astype(bool)
    np.testing.assert_array_equal(a, brain & (x > t))
    n = int(a.sum())
    mm3 = n * float(np.prod(nib.load(t1).header.get_zooms()[:3]))
    assert f"foreground {n} voxels" in out and f"{mm3:.6g} mm^3" in out and "of the mask" in out
    side = json.loads((tmp_path / "a.json").read_text())["steps"][-1]
    assert side["foreground"]["voxels"] == n and side["recipe"]["mask"] == str(m)
    assert main(["binarize", str(t1), str(tmp_path / "b.nii"), "--stats-mask", str(m), "--no-progress"]) == 0
    b = np.asanyarray(nib.load(tmp_path / "b.nii").dataobj).astype(bool)
    np.testing.assert_array_equal(b, x > t)
    # re-running the sidecar's recipe reproduces the output, mask included
    assert main(["binarize", str(t1), str(tmp_path / "c.nii"), "--recipe", str(tmp_path / "a.json")]) == 0
    assert (tmp_path / "c.nii").read_bytes() == (tmp_path / "a.nii").read_bytes()


def test_cli_upper_inclusive_invert(head, tmp_path):
    t1, m, _, x, brain = head
    args = ["--method", "value", "--threshold", "200", "--upper", "600", "--units", "raw", "--inclusive"]
    assert main(["binarize", str(t1), str(tmp_path / "a.nii"), *args, "--no-progress"]) == 0
    a = np.asanyarray(nib.load(tmp_path / "a.nii").dataobj).astype(bool)
    xs = x.astype(np.float32)
    np.testing.assert_array_equal(a, (xs >= 200) & (xs <= 600))
    assert (
        main(["binarize", str(t1), str(tmp_path / "i.nii"), "--invert", "--mask", str(m), "--no-progress"])
        == 0
    )
    i = np.asanyarray(nib.load(tmp_path / "i.nii").dataobj).astype(bool)
    np.testing.assert_array_equal(i, brain & ~(x > threshold_otsu(x[brain])))


@pytest.mark.parametrize(
    "extra, code, words",
    [
        (["--mask", "{other}"], 1, "another grid"),
        (["--mask", "{missing}"], 1, "no such file"),
        (["--method", "value", "--threshold", "0.5", "--upper", "0.2"], 2, "--upper must not lie below"),
        (["--method", "dither", "--mask", "nonzero"], 2, "--mask is not used by --method dither"),
        (["--mask", "nonzero", "--stats-mask", "nonzero"], 2, "not both"),
        (["--scope", "cohort"], 2, "volbin batch"),
    ],
)
def test_cli_mask_errors_one_line_nothing_written(head, tmp_path, capsys, extra, code, words):
    t1, _, other, _, _ = head
    extra = [e.format(other=other, missing=tmp_path / "none.nii.gz") for e in extra]
    out = tmp_path / "o.nii"
    assert main(["binarize", str(t1), str(out), *extra, "--no-progress"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1] and err[-1].startswith("volbin: error:")
    assert not out.exists() and not (tmp_path / "o.json").exists()


def test_cli_all_zero_input_with_nonzero(tmp_path, capsys):
    src = tmp_path / "z.nii"
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6), np.float32), np.eye(4)), src)
    assert main(["binarize", str(src), str(tmp_path / "o.nii"), "--mask", "nonzero", "--no-progress"]) == 1
    assert "every voxel of the input is 0" in capsys.readouterr().err


def test_cli_threshold_table_and_json(head, capsys):
    t1, m, _, x, brain = head
    assert main(["threshold", str(t1), "--mask", str(m), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "otsu" in text and "shanbhag" in text and "needs a percentile" in text
    assert (
        main(["threshold", str(t1), "--mask", str(m), "--json", "--percentile", "90", "--no-progress"]) == 0
    )
    res = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in res["methods"]}
    xs = x.astype(np.float32)
    assert rows["otsu"]["threshold_raw"] == [threshold_otsu(xs.astype(np.float64)[brain])]
    assert rows["otsu"]["foreground"] == [int((brain & (xs > rows["otsu"]["threshold_raw"][0])).sum())]
    p = rows["percentile"]["threshold_raw"][0]
    assert abs(p - np.percentile(xs[brain], 90)) <= (xs[brain].max() - xs[brain].min()) / 65536
    assert res["voxels"] == [int(brain.sum())]


def test_cli_threshold_many_groups_summary(brain, capsys):
    src, _ = brain
    assert main(["threshold", str(src), "--scope", "slice", "--methods", "otsu", "li", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "min/median/max" in text and "120 group(s)" in text


def test_cli_info_binary_and_compare_masks(head, tmp_path, capsys):
    t1, m, _, x, brain = head
    a = tmp_path / "a.nii"
    assert main(["binarize", str(t1), str(a), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["info", str(a), "--json", "--no-progress"]) == 0
    info = json.loads(capsys.readouterr().out)
    fg = x > threshold_otsu(x)
    voxel = float(np.prod(nib.load(t1).header.get_zooms()[:3]))
    assert info["binary"]["voxels"] == int(fg.sum()) and info["binary"]["mm3"] == pytest.approx(
        fg.sum() * voxel
    )
    assert "stats" not in info
    assert main(["info", str(a), "--compare", str(m), "--json", "--no-progress"]) == 0
    ov = json.loads(capsys.readouterr().out)["compare"]["overlap"]
    both = int((fg & brain).sum())
    assert ov["dice"] == pytest.approx(2 * both / (fg.sum() + brain.sum()))
    assert ov["jaccard"] == pytest.approx(both / (fg | brain).sum())
    assert ov["difference_mm3"] == pytest.approx((int(fg.sum()) - int(brain.sum())) * voxel)
    assert main(["info", str(a), "--compare", str(m), "--no-progress"]) == 0
    assert "Dice" in capsys.readouterr().out
    # a binary volume against a grey one is still the rendering error
    assert main(["info", str(a), "--compare", str(t1), "--json", "--no-progress"]) == 0
    assert "blurred_rms" in json.loads(capsys.readouterr().out)["compare"]


def test_classify_channels_with_mask_nonzero_and_a_3d_mask_file(tmp_path, capsys):
    import volbin

    t1 = phantom((16, 18, 14), seed=5)
    t2 = phantom((16, 18, 14), seed=5, means={"csf": 0.9, "white_matter": 0.4, "scalp": 0.3})
    x = np.stack([t1.intensity, t2.intensity], axis=-1).astype(np.float32)
    x[:3] = 0  # background in both contrasts
    x[5:7, :, :, 0] = 0  # seen by the second contrast only
    inside = (x != 0).any(axis=-1)
    src, brain = tmp_path / "t1t2.nii.gz", tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(x, t1.affine), src)
    nib.save(nib.Nifti1Image(t1.brain.astype(np.uint8), t1.affine), brain)
    base = ["classify", str(src), "--method", "kmeans", "--classes", "3", "--channels", "--seed", "2"]
    cases = {
        "nonzero.nii.gz": (["--mask", "nonzero"], dict(mask=inside)),
        "stats.nii.gz": (["--stats-mask", "nonzero"], dict(stats_mask=inside)),
        "file.nii.gz": (["--mask", str(brain)], dict(mask=t1.brain)),
    }
    for name, (flags, kw) in cases.items():
        out = tmp_path / name
        assert main([*base[:2], str(out), *base[2:], *flags, "--no-progress"]) == 0, capsys.readouterr().err
        img = nib.load(out)
        labels = np.asanyarray(img.dataobj)
        assert labels.shape == x.shape[:3] and labels.dtype == np.uint8  # the spatial grid
        np.testing.assert_allclose(img.affine, t1.affine)
        ref = volbin.classify(x, "kmeans", 3, channels=True, seed=2, **kw)
        np.testing.assert_array_equal(labels, ref.labels)
        side = json.loads(out.with_name(name.replace(".nii.gz", ".json")).read_text())
        np.testing.assert_array_equal(side["steps"][-1]["centres_raw"], ref.centres)
    assert (np.asanyarray(nib.load(tmp_path / "nonzero.nii.gz").dataobj)[~inside] == 0).all()
    # A mask per channel is refused in one line naming the file.
    both = tmp_path / "both.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([t1.brain] * 2, -1).astype(np.uint8), t1.affine), both)
    assert main([*base[:2], str(tmp_path / "o.nii.gz"), *base[2:], "--mask", str(both), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert (
        "both.nii.gz has 2 volumes" in err and "give a 3D mask" in err and len(err.strip().splitlines()) == 1
    )


def test_classify_multi_otsu_labels_match_skimage_and_split_masks(tmp_path):
    from skimage.filters import threshold_multiotsu

    p = phantom((32, 36, 30), seed=2)
    src = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(p.intensity.astype(np.float64), p.affine), src)
    out = tmp_path / "labels.nii.gz"
    assert main(["classify", str(src), str(out), "--method", "multi-otsu", "--classes", "3"]) == 0
    labels = np.asanyarray(nib.load(out).dataobj)
    x = nib.load(src).get_fdata()
    t = threshold_multiotsu(x, classes=3)
    ref = (x > t[0]).astype(np.uint8) + (x > t[1])
    assert np.mean(labels == ref) > 0.999  # within one bin of scikit-image
    side = json.loads((tmp_path / "labels.json").read_text())
    assert any(s.get("step") == "classify" for s in side["steps"])
    assert main(["classify", str(src), str(out), "--method", "kmeans", "--split", "--seed", "1"]) == 0
    masks = [np.asanyarray(nib.load(tmp_path / f"labels_class-{k}.nii.gz").dataobj) for k in (1, 2, 3)]
    np.testing.assert_array_equal(sum(masks), np.ones_like(masks[0]))  # a partition of the volume
    assert main(["classify", str(src), str(out), "--method", "multi-otsu"]) == 2  # exists
    assert (
        main(["classify", str(src), str(tmp_path / "l2.nii"), "--method", "multi-otsu", "--warm-start"]) == 2
    )
