"""volbin.normalize over many inputs (volbin.batch.normalizing) against normalizing each file
alone: the batch engine's outputs, resume and failures; Nyul landmarks fitted per file equal
volbin.fit_nyul on the whole cohort."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

import volbin
from volbin.batch.normalizing import fit_landmarks
from volbin.cli import main
from volbin.io import load, read_sidecar
from volbin.phantom import phantom


@pytest.fixture
def cohort(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = []
    for i in range(3):
        folder = tmp_path / f"sub-0{i + 1}" / "anat"
        folder.mkdir(parents=True)
        p = phantom((20, 24, 18), seed=i)
        path = folder / f"sub-0{i + 1}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(p.intensity * (1 + 0.5 * i) + 20.0 * i, p.affine), path)
        paths.append(path)
    return tmp_path, paths


def data(path):
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img.header


def same_image(a, b):
    (x, hx), (y, hy) = data(a), data(b)
    assert x.dtype == y.dtype == np.float32
    assert x.tobytes() == y.tobytes()
    assert hx.binaryblock == hy.binaryblock


GLOB = "sub-*/anat/*_T1w.nii.gz"


def test_nyul_over_many_inputs_equals_each_file_alone(cohort):
    folder, paths = cohort
    args = ["normalize", GLOB, "--out-dir", "norm/", "--method", "nyul", "--save-landmarks", "nyul.json"]
    assert main([*args, "--scheduler", "threads", "--no-progress"]) == 0
    saved = json.loads((folder / "nyul.json").read_text())
    ref = volbin.fit_nyul(paths)
    assert saved["standard_scale"] == list(ref.standard_scale) and saved["n_volumes"] == 3
    assert [i["path"] for i in saved["fitted_on"]["inputs"]] == [str(p) for p in paths]
    for p in paths:
        alone = folder / f"alone_{p.name}"
        assert main(["normalize", str(p), str(alone), "--method", "nyul", "--landmarks", "nyul.json"]) == 0
        out = folder / "norm" / p.name.replace("_T1w", "_T1w_norm")
        same_image(out, alone)
        step = read_sidecar(out)["steps"][-1]
        assert step["method"] == "nyul" and step["nyul"]["standard_scale"] == saved["standard_scale"]
        assert step["recipe"]["landmarks"]["standard_scale"] == saved["standard_scale"]
    # A re-run finds everything up to date, the landmarks too.
    before = (folder / "nyul.json").stat().st_mtime_ns
    res = volbin.normalize(
        GLOB, "nyul", out_dir="norm", save_landmarks="nyul.json", scheduler="threads", progress=False
    )
    assert len(res.skipped) == 3 and res.ok
    assert (folder / "nyul.json").stat().st_mtime_ns == before
    # A changed input: the landmarks file no longer describes the cohort.
    x = load(paths[0]).compute() * 1.1
    nib.save(nib.Nifti1Image(x, nib.load(paths[0]).affine), paths[0])
    assert main([*args, "--scheduler", "threads"]) == 2
    assert main([*args, "--scheduler", "threads", "--force", "--no-progress"]) == 0
    assert json.loads((folder / "nyul.json").read_text())["standard_scale"] == list(
        volbin.fit_nyul(paths).standard_scale
    )


def test_fit_on_a_subset_applies_to_every_input(cohort):
    folder, paths = cohort
    res = volbin.normalize(
        GLOB,
        "nyul",
        out_dir="norm",
        save_landmarks="lm.json",
        fit_on=[str(p) for p in paths[:2]],
        scheduler="threads",
        progress=False,
    )
    assert len(res.done) == 3
    lm = volbin.NyulLandmarks.from_dict(json.loads((folder / "lm.json").read_text()))
    assert lm == volbin.fit_nyul(paths[:2])
    assert fit_landmarks([str(p) for p in paths[:2]]) == lm
    third = volbin.normalize(load(paths[2]), "nyul", landmarks=lm).compute()
    np.testing.assert_array_equal(load(folder / "norm" / "sub-03_T1w_norm.nii.gz").compute(), third)


@pytest.mark.parametrize("method,options", [("zscore", []), ("whitestripe", ["--tau", "0.1"])])
def test_other_methods_over_many_inputs_equal_each_file_alone(cohort, method, options):
    folder, paths = cohort
    common = ["--method", method, "--mask", "nonzero", *options]
    assert main(["normalize", GLOB, "-o", "out", *common, "--scheduler", "threads", "--no-progress"]) == 0
    for p in paths:
        alone = folder / f"alone_{p.name}"
        assert main(["normalize", str(p), str(alone), *common]) == 0
        same_image(folder / "out" / p.name.replace("_T1w", "_T1w_norm"), alone)


def test_failures_are_reported_and_the_others_go_on(cohort, capsys):
    folder, _ = cohort
    bad = folder / "sub-09" / "anat" / "sub-09_T1w.nii.gz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x1f\x8b not a nifti")
    rc = main(
        ["normalize", GLOB, "-o", "out", "--method", "zscore", "--scheduler", "threads", "--no-progress"]
    )
    assert rc == 1
    text = capsys.readouterr().out
    assert "failed        1" in text and "sub-09_T1w.nii.gz" in text
    report = json.loads((folder / "out" / "volbin-batch-report.json").read_text())
    assert report["counts"] == {"total": 4, "done": 3, "skipped": 0, "failed": 1, "pending": 0}
    assert report["recipe"] == {"normalize": "zscore", "scope": "volume"}


def test_usage_errors(cohort, capsys):
    folder, paths = cohort
    p = str(paths[0])
    cases = [
        (["normalize", p, "x.nii.gz", "--method", "nyul"], "needs --landmarks JSON"),
        (
            ["normalize", p, "x.nii.gz", "--method", "zscore", "--contrast", "t1"],
            "--contrast is not used by --method zscore",
        ),
        (
            ["normalize", p, "x.nii.gz", "--method", "zscore", "--workers", "2"],
            "--workers is used with --out-dir",
        ),
        (
            ["normalize", p, "x.nii.gz", "--method", "zscore", "--save-landmarks", "a.json"],
            "--save-landmarks is not used by --method zscore",
        ),
        (
            ["normalize", GLOB, "-o", "o", "--method", "nyul", "--landmarks", "nyul.json", "--fit-on", p],
            "--fit-on is used with --save-landmarks",
        ),
        (["normalize", p, "x.nii.gz", "--method", "match"], "--method match` needs --reference"),
        (
            ["normalize", p, "x.nii.gz", "--method", "whitestripe", "--tau", "0.5"],
            "--tau must be a number in (0, 0.5)",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not os.path.exists(folder / "x.nii.gz")
    with pytest.raises(ValueError, match="`save_landmarks` needs `out_dir`"):
        volbin.normalize(load(p), "nyul", save_landmarks="a.json")


@pytest.mark.slow
def test_a_local_cluster_gives_the_same_outputs(cohort):
    folder, paths = cohort
    base = ["normalize", GLOB, "--method", "nyul", "--no-progress"]
    assert main([*base, "-o", "a", "--save-landmarks", "a.json", "--scheduler", "threads"]) == 0
    assert (
        main([*base, "-o", "b", "--save-landmarks", "b.json", "--workers", "2", "--threads-per-worker", "1"])
        == 0
    )
    assert (
        json.loads((folder / "a.json").read_text())["standard_scale"]
        == json.loads((folder / "b.json").read_text())["standard_scale"]
    )
    for p in paths:
        name = p.name.replace("_T1w", "_T1w_norm")
        same_image(folder / "a" / name, folder / "b" / name)
