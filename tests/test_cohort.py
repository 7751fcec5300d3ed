"""Cohort thresholds (one decision from the pooled histograms of a batch) and thresholds
reused from a sidecar, against scikit-image and numpy on the concatenated inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from skimage.filters import threshold_li, threshold_otsu

import volbin
from volbin.batch import batch
from volbin.cli import main
from volbin.errors import VolbinDataError
from volbin.io import load, read_sidecar, save
from volbin.phantom import phantom


@pytest.fixture
def cohort(tmp_path):
    arrays = []
    for i in range(3):
        x = (phantom((20, 24, 18), seed=i).intensity * (1 + 0.4 * i)).astype(np.float32)
        save(x, tmp_path / f"sub-{i}.nii")
        arrays.append(x)
    return tmp_path, arrays


def _sidecars(out):
    return {
        p: read_sidecar(os.path.join(out, p))
        for p in sorted(os.listdir(out))
        if p.endswith(".json") and "report" not in p
    }


@pytest.mark.parametrize("method", ["otsu", "li"])
def test_cohort_threshold_is_pooled_skimage(cohort, method):
    folder, arrays = cohort
    res = batch(
        f"{folder}/*.nii", folder / "out", method=method, scope="cohort", scheduler="threads", progress=False
    )
    assert res.ok and len(res.done) == 3
    pooled = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
    ref = threshold_otsu(pooled) if method == "otsu" else threshold_li(pooled)
    tol = 0 if method == "otsu" else (pooled.max() - pooled.min()) / 256
    sides = _sidecars(folder / "out")
    ts = {s["steps"][-1]["decision"]["threshold_raw"] for s in sides.values()}
    assert len(ts) == 1
    (t,) = ts
    assert abs(t - ref) <= tol
    for i, a in enumerate(arrays):
        out = load(folder / "out" / f"sub-{i}_mask.nii").compute().astype(bool)
        np.testing.assert_array_equal(out, a > t)
        rec = sides[f"sub-{i}_mask.json"]["steps"][-1]
        assert rec["decision"]["scope"] == "cohort"
        assert rec["decision"]["cohort"]["inputs"] == 3
        assert rec["foreground"]["voxels"] == int((a > t).sum())


def test_cohort_percentile_is_numpy_percentile_of_the_pool(cohort):
    folder, arrays = cohort
    batch(
        f"{folder}/*.nii",
        folder / "out",
        method="percentile",
        percentile=75,
        scope="cohort",
        scheduler="threads",
        progress=False,
    )
    pooled = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
    t = next(iter(_sidecars(folder / "out").values()))["steps"][-1]["decision"]["threshold_raw"]
    assert abs(t - np.percentile(pooled, 75)) <= (pooled.max() - pooled.min()) / 65536


def test_cohort_with_mask_nonzero(cohort):
    folder, arrays = cohort
    batch(
        f"{folder}/*.nii",
        folder / "out",
        method="otsu",
        scope="cohort",
        mask="nonzero",
        scheduler="threads",
        progress=False,
    )
    pooled = np.concatenate([a[a != 0] for a in arrays]).astype(np.float64)
    t = next(iter(_sidecars(folder / "out").values()))["steps"][-1]["decision"]["threshold_raw"]
    assert t == threshold_otsu(pooled)


def test_cohort_resume_and_stale_when_an_input_changes(cohort):
    folder, arrays = cohort
    kw = dict(method="otsu", scope="cohort", scheduler="threads", progress=False)
    batch(f"{folder}/*.nii", folder / "out", **kw)
    again = batch(f"{folder}/*.nii", folder / "out", **kw)
    assert len(again.skipped) == 3
    save(arrays[0] * 3, folder / "sub-0.nii", force=True)
    redo = batch(f"{folder}/*.nii", folder / "out", **kw)
    assert len(redo.done) == 3  # one changed input changes every output's threshold


def test_threshold_from_applies_recorded_thresholds(cohort, tmp_path):
    folder, arrays = cohort
    batch(f"{folder}/sub-0.nii", folder / "out", method="otsu", scheduler="threads", progress=False)
    side = folder / "out" / "sub-0_mask.json"
    t = read_sidecar(side)["steps"][-1]["decision"]["threshold_raw"]
    assert t == threshold_otsu(arrays[0].astype(np.float64))
    out = volbin.binarize(arrays[2], threshold_from=str(side))
    np.testing.assert_array_equal(out, arrays[2] > t)
    # a cohort's threshold applied to a new input
    batch(
        f"{folder}/*.nii", folder / "coh", method="otsu", scope="cohort", scheduler="threads", progress=False
    )
    cside = folder / "coh" / "sub-1_mask.json"
    tc = read_sidecar(cside)["steps"][-1]["decision"]["threshold_raw"]
    new = arrays[1][::-1].copy()
    np.testing.assert_array_equal(volbin.binarize(new, scope="cohort", threshold_from=str(cside)), new > tc)


def test_threshold_from_mismatch_names_both(cohort):
    folder, arrays = cohort
    stack = np.stack(arrays, axis=-1)
    save(stack, folder / "stack.nii")
    batch(
        f"{folder}/stack.nii",
        folder / "out",
        method="otsu",
        scope="volume",
        scheduler="threads",
        progress=False,
    )
    side = str(folder / "out" / "stack_mask.json")
    with pytest.raises(
        VolbinDataError, match=r"scope 'volume' with 3 group\(s\).*scope 'volume' has 1 group"
    ):
        volbin.binarize(arrays[0], threshold_from=side)
    with pytest.raises(VolbinDataError, match=r"scope 'volume'.*scope 'stack'"):
        volbin.binarize(stack, scope="stack", threshold_from=side)
    with pytest.raises(VolbinDataError, match=r"method 'otsu'.*'yen'"):
        volbin.binarize(stack, "yen", threshold_from=side)
    # 4D with the same group count: applied per volume
    out = volbin.binarize(stack[..., ::-1].copy(), threshold_from=side)
    ts = read_sidecar(side)["steps"][-1]["decision"]["threshold_raw"]
    for v in range(3):
        np.testing.assert_array_equal(out[..., v], stack[..., 2 - v] > ts[v])


def test_cohort_alone_is_refused():
    with pytest.raises(ValueError, match=r"volbin\.batch"):
        volbin.binarize(np.arange(64.0).reshape(4, 4, 4), "otsu", scope="cohort")
    with pytest.raises(ValueError, match="histogram method"):
        volbin.Recipe(method="stochastic", scope="cohort")


def test_cli_batch_cohort_and_threshold_from(cohort, capsys):
    folder, arrays = cohort
    rc = main(
        [
            "batch",
            f"{folder}/*.nii",
            "--out-dir",
            str(folder / "out"),
            "--scope",
            "cohort",
            "--scheduler",
            "threads",
            "--no-progress",
        ]
    )
    assert rc == 0
    side = folder / "out" / "sub-0_mask.json"
    t = read_sidecar(side)["steps"][-1]["decision"]["threshold_raw"]
    assert t == threshold_otsu(np.concatenate([a.ravel() for a in arrays]).astype(np.float64))
    rc = main(
        [
            "binarize",
            str(folder / "sub-2.nii"),
            str(folder / "new.nii"),
            "--scope",
            "cohort",
            "--threshold-from",
            str(side),
            "--no-progress",
        ]
    )
    assert rc == 0
    np.testing.assert_array_equal(load(folder / "new.nii").compute().astype(bool), arrays[2] > t)
    capsys.readouterr()
    rc = main(
        [
            "binarize",
            str(folder / "sub-2.nii"),
            str(folder / "bad.nii"),
            "--threshold-from",
            str(side),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "scope 'cohort'" in err and "scope 'volume'" in err and err.count("\n") == 1
    assert not (folder / "bad.nii").exists()


def test_cohort_after_normalisation_is_skimage_on_the_pooled_z_scores(cohort):
    folder, arrays = cohort
    res = batch(
        f"{folder}/*.nii",
        folder / "out",
        method="otsu",
        scope="cohort",
        normalize="zscore",
        scheduler="threads",
        progress=False,
    )
    assert res.ok and len(res.done) == 3
    z = []
    for a in arrays:
        x = a.astype(np.float64)
        nz = x[x != 0]
        z.append(((x - nz.mean()) / nz.std()).astype(np.float32))
    t = threshold_otsu(np.concatenate([v.ravel() for v in z]).astype(np.float64))
    sides = _sidecars(folder / "out")
    assert {s["steps"][-1]["decision"]["threshold_normalized"] for s in sides.values()} == {t}
    for i, zi in enumerate(z):
        out = load(folder / "out" / f"sub-{i}_mask.nii").compute().astype(bool)
        np.testing.assert_array_equal(out, zi > t)
        assert sides[f"sub-{i}_mask.json"]["steps"][0]["step"] == "normalize"
