"""The intensity stage inside binarize, threshold and dithering (normalize -> rescale -> curve
-> decide) against references computed here: numpy z-scores, scikit-image's
match_histograms and equalize_adapthist, SimpleITK's N4 through volbin.normalize; recipe
round trips, chunk-invariance and the refusals."""

from __future__ import annotations

import json
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import exposure
from skimage.filters import threshold_otsu

import volbin
from volbin.errors import VolbinDataError, VolbinWarning
from volbin.intensity import downstream, relabel
from volbin.io import load, read_sidecar, save
from volbin.phantom import phantom
from volbin.recipe import Recipe
from volbin.rescale import CLAHE_BYTES_PER_VOXEL, CLAHE_MEMORY_KEY
from volbin.volume import Volume


@pytest.fixture(scope="module")
def head():
    p = phantom((40, 48, 40), seed=0)
    return p.intensity.astype(np.float64), p.brain


def zscore32(x, m):
    """The brute-force z-score of volbin's float32 output: float64 arithmetic, then float32."""
    inside = x[m]
    return ((x - inside.mean()) / inside.std()).astype(np.float32)


def minmax(x):
    return (x - x.min()) / (x.max() - x.min())


# --- normalize inside binarize ------------------------------------------------------------


def test_zscore_then_a_threshold_in_normalized_units_equals_numpy(head):
    x, m = head
    z = zscore32(x, m)
    out = volbin.binarize(x, "value", threshold=1.0, units="normalized", normalize="zscore", mask=m)
    np.testing.assert_array_equal(out, m & (z > 1.0))
    assert 1000 < out.sum() < m.sum()  # the test selects some tissue, not all or none


def test_zscore_then_otsu_is_skimage_on_the_z_scores(head):
    x, m = head
    z = zscore32(x, m)
    out = volbin.binarize(x, "otsu", normalize="zscore", stats_mask=m)
    t = threshold_otsu(z[m])
    np.testing.assert_array_equal(out, z > t)
    assert volbin.threshold(x, "otsu", normalize="zscore", stats_mask=m) == pytest.approx(t, abs=1e-6)


def test_the_sidecar_records_each_stage(head, tmp_path):
    x, m = head
    vol = Volume(da.from_array(x, chunks=(40, 48, 7)))
    out = volbin.binarize(vol, "value", threshold=0.5, units="normalized", normalize="zscore", mask=m)
    norm, step = out.steps
    assert norm["step"] == "normalize" and norm["method"] == "zscore"
    assert norm["mean"] == pytest.approx(x[m].mean(), rel=1e-12)
    assert norm["std"] == pytest.approx(x[m].std(), rel=1e-10)
    assert step["recipe"]["normalize"] == "zscore" and step["recipe"]["units"] == "normalized"
    dec = step["decision"]
    assert dec["thresholded"] == "normalized" and dec["threshold_normalized"] == 0.5
    assert "threshold_raw" not in dec
    # The rescale is fitted on the normalised volume: its range is the z-scores' inside the mask.
    z = zscore32(x, m)
    assert step["rescale"]["lo"] == pytest.approx(float(z[m].min()), abs=1e-6)
    json.dumps(read_sidecar(save(out, tmp_path / "m.nii.gz")))


def test_match_equals_skimage_match_histograms_within_a_fine_bin(head):
    x, m = head
    p = phantom((36, 44, 40), seed=5)
    ref = p.intensity.astype(np.float64) * 1.7 + 40.0
    rmask = p.brain
    matched = np.empty_like(x)
    matched[m] = exposure.match_histograms(x[m], ref[rmask])
    t = float(np.percentile(ref[rmask], 60))
    out = volbin.binarize(
        x,
        "value",
        threshold=t,
        units="normalized",
        normalize="match",
        reference=ref,
        reference_mask=rmask,
        mask=m,
    )
    expected = m & (matched > t)
    fine = (ref[rmask].max() - ref[rmask].min()) / 65536
    differ = out != expected
    assert np.all(np.abs(matched[differ] - t) <= fine), (int(differ.sum()), fine)
    assert 1000 < expected.sum() < m.sum() and differ.sum() <= 5


def test_normalize_options_reach_the_method(head):
    x, m = head
    for method, options in [
        ("whitestripe", {"contrast": "t1", "tau": 0.1}),
        ("nyul", {"landmarks": volbin.fit_nyul([x], [m])}),
    ]:
        ref = volbin.normalize(x, method, mask=m, **options)
        out = volbin.binarize(
            x, "value", threshold=0.3, units="normalized", normalize=method, mask=m, **options
        )
        np.testing.assert_array_equal(out, m & (ref > 0.3))


def test_n4_inside_binarize_equals_n4_then_binarize():
    pytest.importorskip("SimpleITK")
    p = phantom((32, 36, 30), seed=7, bias=0.35)
    x, m = p.intensity, p.labels > 0
    n4 = dict(shrink_factor=2, n_iterations=(10, 5))
    corrected = volbin.normalize(x, "n4", mask=m, **n4)
    out = volbin.binarize(x, "otsu", normalize="n4", mask=m, **n4)
    np.testing.assert_array_equal(out, m & (corrected > threshold_otsu(corrected[m])))


def test_stack_scope_normalizes_the_stack():
    p = phantom((20, 22, 18), n_volumes=2, seed=3)
    x = p.intensity.astype(np.float64) * np.array([1.0, 3.0])
    nz = x[x != 0]
    z = ((x - nz.mean()) / nz.std()).astype(np.float32)
    out = volbin.binarize(x, "value", threshold=0.2, units="normalized", normalize="zscore", scope="stack")
    np.testing.assert_array_equal(out, z > 0.2)
    per_volume = volbin.binarize(x, "value", threshold=0.2, units="normalized", normalize="zscore")
    for t in range(2):
        v = x[..., t]
        zt = ((v - v[v != 0].mean()) / v[v != 0].std()).astype(np.float32)
        np.testing.assert_array_equal(per_volume[..., t], zt > 0.2)


def test_threshold_from_carries_normalized_thresholds(head, tmp_path):
    x, m = head
    a = save(volbin.binarize(Volume(x), "otsu", normalize="zscore", stats_mask=m), tmp_path / "a.nii")
    t = read_sidecar(a)["steps"][-1]["decision"]["threshold_normalized"]
    y = x * 2.0 + 100.0  # another gain and offset: the same z-scores
    b = volbin.binarize(y, normalize="zscore", stats_mask=m, threshold_from=a)
    np.testing.assert_array_equal(b, zscore32(y, m) > t)
    with pytest.raises(VolbinDataError, match=r"normalised intensities.*raw intensities"):
        volbin.binarize(y, threshold_from=a)


# --- CLAHE through binarize, threshold and dithering ---------------------------------------


@pytest.mark.parametrize("kw", [{}, {"kernel_size": 8, "clip_limit": 0.02}])
def test_clahe_binarize_equals_equalize_adapthist_then_the_threshold(head, kw):
    x, _ = head
    c = exposure.equalize_adapthist(
        minmax(x), kernel_size=kw.get("kernel_size"), clip_limit=kw.get("clip_limit", 0.01)
    ).astype(np.float32)
    out = volbin.binarize(x, "otsu", curve="clahe", **kw)
    np.testing.assert_array_equal(out, c > threshold_otsu(c))
    value = volbin.binarize(x, "value", threshold=0.6, curve="clahe", **kw)
    np.testing.assert_array_equal(value, c.astype(np.float64) > 0.6)  # 0.6 exactly, not float32(0.6)
    assert volbin.threshold(x, "otsu", curve="clahe", **kw) == threshold_otsu(c)


def test_clahe_record_has_no_raw_thresholds(head):
    x, _ = head
    out = volbin.binarize(Volume(x), "otsu", curve="clahe", kernel_size=8)
    step = out.steps[-1]
    assert step["rescale"]["curve"] == "clahe" and step["rescale"]["kernel_size"] == [8, 8, 8]
    dec = step["decision"]
    assert dec["thresholded"] == "clahe" and dec["threshold_raw"] is None
    assert 0 < dec["threshold_rescaled"] < 1


def test_clahe_then_dithering_dithers_the_clahe_output(head):
    x, _ = head
    c = volbin.rescale(x, curve="clahe", kernel_size=8)
    for method in ("dither", "ordered"):
        ref = volbin.binarize(c, method, rescale="none")
        out = volbin.binarize(x, method, curve="clahe", kernel_size=8)
        np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(
        volbin.dither(x, scope="volume", curve="clahe", kernel_size=8),
        volbin.binarize(c, "dither", rescale="none"),
    )


def test_clahe_after_normalisation(head):
    x, m = head
    z = zscore32(x, m)
    c = exposure.equalize_adapthist(minmax(z.astype(np.float64)), kernel_size=8).astype(np.float32)
    out = volbin.binarize(x, "otsu", normalize="zscore", curve="clahe", kernel_size=8, stats_mask=m)
    # The linear part of CLAHE's rescale is taken inside the mask; outside values clip to 0, 1.
    r = np.clip((z.astype(np.float64) - z[m].min()) / (z[m].max() - z[m].min()), 0, 1)
    c = exposure.equalize_adapthist(r, kernel_size=8).astype(np.float32)
    np.testing.assert_array_equal(out, c > threshold_otsu(c[m]))


def test_clahe_refuses_a_volume_above_the_memory_limit(head):
    x, _ = head
    with dask.config.set({CLAHE_MEMORY_KEY: 100_000}), pytest.raises(VolbinDataError) as info:
        volbin.binarize(x, "otsu", curve="clahe")
    assert f"{x.size * CLAHE_BYTES_PER_VOXEL} bytes" in str(info.value) and "100000 bytes" in str(info.value)


# --- refusals and the recipe ----------------------------------------------------------------


def test_refusals_name_the_option():
    x = np.random.default_rng(0).random((8, 8, 8))
    with pytest.raises(ValueError, match=r"`units='normalized'` needs `normalize`"):
        volbin.binarize(x, "value", threshold=1.0, units="normalized")
    with pytest.raises(ValueError, match=r"`normalize='match'` needs `reference`"):
        volbin.binarize(x, normalize="match")
    with pytest.raises(ValueError, match=r"`normalize='nyul'` needs `landmarks`"):
        volbin.binarize(x, normalize="nyul")
    with pytest.raises(ValueError, match=r"`units='raw'` cannot be used with normalize='zscore'"):
        volbin.binarize(x, "value", threshold=1.0, units="raw", normalize="zscore")
    with pytest.raises(ValueError, match=r"`contrast` is not used by normalize='zscore'"):
        volbin.binarize(x, normalize="zscore", contrast="t1")
    with pytest.raises(ValueError, match=r"`shrink_factor` is not used by a recipe without `normalize`"):
        volbin.binarize(x, shrink_factor=2)
    with pytest.raises(ValueError, match=r"`tau` must be a number in \(0, 0.5\)"):
        volbin.binarize(x, normalize="whitestripe", tau=0.5)
    with pytest.raises(ValueError, match=r"`units='normalized'` cannot be used with curve='clahe'"):
        volbin.binarize(x, "value", threshold=0.5, units="normalized", normalize="zscore", curve="clahe")
    with pytest.raises(ValueError, match=r"`threshold_from` cannot be used with curve='clahe'"):
        Recipe(curve="clahe", threshold_from="a.json")
    with pytest.raises(ValueError, match=r"pass it again as reference="):
        volbin.binarize(x, recipe=Recipe(normalize="match", reference="<array>"))


def test_downstream_recipe_and_relabel():
    r = Recipe(method="value", threshold=1.0, units="normalized", normalize="zscore", mask="nonzero")
    d = downstream(r)
    assert d.normalize is None and d.units == "raw" and d.threshold == 1.0 and d.mask == "nonzero"
    c = downstream(Recipe(curve="clahe", clip_limit=0.05, rescale="percentile", percentiles=(2, 98)))
    assert (c.rescale, c.curve, c.clip_limit, c.percentiles) == ("none", "linear", None, (1.0, 99.0))
    assert downstream(Recipe()) == Recipe()
    rec = {"threshold_raw": [1.0], "threshold_rescaled": [0.5], "upper_raw": 2.0, "compared": "raw"}
    assert relabel(rec, None) == rec
    assert relabel(rec, "normalized") == {
        "threshold_normalized": [1.0],
        "threshold_rescaled": [0.5],
        "upper_normalized": 2.0,
        "compared": "normalized",
        "thresholded": "normalized",
    }
    assert relabel(rec, "clahe")["threshold_raw"] is None


def test_landmarks_are_held_in_the_recipe(head, tmp_path):
    x, m = head
    lm = volbin.fit_nyul([x], [m])
    path = tmp_path / "nyul.json"
    path.write_text(lm.to_json(), encoding="utf-8")
    a, b = Recipe(normalize="nyul", landmarks=str(path)), Recipe(normalize="nyul", landmarks=lm)
    assert a == b and a.landmarks["standard_scale"] == list(lm.standard_scale)
    assert Recipe.from_json(a.to_json()) == a
    with pytest.raises(ValueError, match="`landmarks`"):
        Recipe(normalize="nyul", landmarks=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="`standard_scale`"):
        Recipe(normalize="nyul", landmarks={"percentiles": [1, 50, 99], "standard_scale": [0, 100]})


X4 = phantom((14, 16, 12), n_volumes=2, seed=4).intensity.astype(np.float64)


@settings(max_examples=8, deadline=None, database=None)
@given(
    st.sampled_from(
        [
            {"normalize": "zscore", "method": "value", "threshold": 0.3, "units": "normalized"},
            {"normalize": "nyul", "landmarks": {"percentiles": [1, 50, 99], "standard_scale": [0, 40, 100]}},
            {"normalize": "whitestripe", "method": "li"},
            {"curve": "clahe", "kernel_size": 4},
            {"normalize": "zscore", "curve": "clahe", "kernel_size": 4, "method": "stochastic"},
        ]
    ),
    st.tuples(st.integers(5, 14), st.integers(6, 16), st.integers(4, 12)),
)
def test_any_chunking_gives_the_same_bytes(options, chunks):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VolbinWarning)
        ref = volbin.binarize(X4, **options)
        out = volbin.binarize(da.from_array(X4, chunks=(*chunks, 1)), **options).compute()
    assert out.tobytes() == ref.tobytes()


# --- the command line -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("intensity")
    p = phantom((36, 40, 32), seed=1)
    t1 = d / "t1.nii.gz"
    save(p.intensity, t1)
    brain = d / "brainmask.nii.gz"
    save(p.brain.astype(np.uint8), brain)
    other = phantom((36, 40, 32), seed=2)
    ref = d / "ref.nii.gz"
    save(other.intensity * 1.5 + 10.0, ref)
    return d, p


def run(argv, capsys=None):
    from volbin.cli import main

    return main([str(a) for a in argv])


@pytest.mark.parametrize(
    "name,args",
    [
        ("zscore", ["--normalize", "zscore", "--mask", "brainmask.nii.gz", "--method", "value",
                    "--threshold", "1.0", "--units", "normalized"]),
        ("match", ["--normalize", "match", "--reference", "ref.nii.gz", "--stats-mask", "brainmask.nii.gz",
                   "--method", "otsu"]),
        ("whitestripe", ["--normalize", "whitestripe", "--tau", "0.08", "--method", "li"]),
        ("clahe", ["--curve", "clahe", "--kernel-size", "6", "--clip-limit", "0.02", "--method", "otsu"]),
        ("clahe-dither", ["--curve", "clahe", "--kernel-mm", "6", "--method", "dither"]),
        ("n4", ["--normalize", "n4", "--shrink-factor", "2", "--n-iterations", "5", "5",
                "--mask", "brainmask.nii.gz", "--method", "otsu"]),
    ],
)  # fmt: skip
def test_cli_recipe_round_trip_gives_identical_bytes(files, name, args, monkeypatch):
    if name == "n4":
        pytest.importorskip("SimpleITK")
    d, p = files
    monkeypatch.chdir(d)
    a, b = d / f"{name}_a.nii.gz", d / f"{name}_b.nii.gz"
    assert run(["binarize", "t1.nii.gz", a, *args, "--no-progress"]) == 0
    side = read_sidecar(a)
    steps = [s["step"] for s in side["steps"]]
    assert steps == (["normalize", "binarize"] if "--normalize" in args else ["binarize"])
    assert run(["binarize", "t1.nii.gz", b, "--recipe", d / f"{name}_a.json", "--no-progress"]) == 0
    assert a.read_bytes() == b.read_bytes()
    if name == "zscore":
        x = load(d / "t1.nii.gz").compute().astype(np.float64)
        expected = p.brain & (zscore32(x, p.brain) > 1.0)
        np.testing.assert_array_equal(load(a).compute().astype(bool), expected)


def test_cli_refusals(files, monkeypatch, capsys):
    d, _ = files
    monkeypatch.chdir(d)
    cases = [
        (
            ["--method", "value", "--threshold", "1", "--units", "normalized"],
            "--units normalized` needs --normalize",
        ),
        (["--normalize", "match"], "--normalize match` needs --reference"),
        (
            ["--normalize", "zscore", "--reference", "ref.nii.gz"],
            "--reference is not used by --normalize zscore",
        ),
        (["--landmarks", "x.json"], "--landmarks is not used by a recipe without --normalize"),
        (
            ["--normalize", "zscore", "--method", "value", "--threshold", "1", "--units", "raw"],
            "--units raw` cannot be used with --normalize zscore",
        ),
    ]
    for args, message in cases:
        assert run(["binarize", "t1.nii.gz", d / "never.nii.gz", *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (d / "never.nii.gz").exists()


def test_cli_clahe_memory_limit_too_small(tmp_path, capsys):
    src = tmp_path / "big.nii"
    save(phantom((70, 70, 70), seed=0).intensity, src)
    out = tmp_path / "m.nii"
    assert run(["binarize", src, out, "--curve", "clahe", "--memory-limit", "16MiB"]) == 1
    err = capsys.readouterr().err
    assert f"needs about {70**3 * CLAHE_BYTES_PER_VOXEL} bytes" in err and f"{16 * 2**20} bytes" in err
    assert "--memory-limit" in err and not out.exists()
    assert run(["threshold", src, "--curve", "clahe", "--memory-limit", "16MiB"]) == 1


def test_cli_threshold_table_in_normalized_and_clahe_units(files, monkeypatch, capsys):
    d, p = files
    monkeypatch.chdir(d)
    assert run(["threshold", "t1.nii.gz", "--normalize", "zscore", "--stats-mask", "brainmask.nii.gz",
                "--methods", "otsu", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    x = load(d / "t1.nii.gz").compute().astype(np.float64)
    z = zscore32(x, p.brain)
    (row,) = result["methods"]
    assert result["thresholded"] == "normalized"
    assert row["threshold_normalized"][0] == pytest.approx(threshold_otsu(z[p.brain]), abs=1e-6)
    assert row["foreground"][0] == int((z > row["threshold_normalized"][0]).sum())
    assert run(["threshold", "t1.nii.gz", "--curve", "clahe", "--kernel-size", "6", "--methods", "otsu"]) == 0
    table = capsys.readouterr().out
    c = exposure.equalize_adapthist(minmax(x), kernel_size=6).astype(np.float32)
    assert f"{threshold_otsu(c):.4f}" in table
