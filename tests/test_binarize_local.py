"""`binarize` and ``volbin binarize`` with local thresholds, hysteresis and mask clean-up,
against scikit-image and scipy on the same (rescaled) volume, whatever the chunking."""

from __future__ import annotations

import json

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from skimage import filters

import volbin
from volbin.cli import main
from volbin.phantom import phantom
from volbin.recipe import LOCAL_METHODS, Recipe, unused_options

#: mean, Niblack and Sauvola sum windows directly (scikit-image: running sums, integral
#: images), equal to float32 rounding: voxels that close to their threshold are not compared.
ATOL = 1e-6
CHUNKS = (13, 20, 11)


def sk_local(image: np.ndarray, method: str, size: int, **kw) -> np.ndarray:
    if method == "niblack":
        return filters.threshold_niblack(image, size, **kw)
    if method == "sauvola":
        return filters.threshold_sauvola(image, size, **kw)
    return filters.threshold_local(image, size, method, **kw)


def assert_mask_equal(ours: np.ndarray, r: np.ndarray, ref_t: np.ndarray, method: str) -> None:
    ref = r > ref_t
    if method in ("gaussian", "median"):  # scikit-image's own arithmetic on each block
        np.testing.assert_array_equal(ours, ref)
        return
    decided = np.abs(r - ref_t) > ATOL
    np.testing.assert_array_equal(ours[decided], ref[decided])
    assert decided.mean() > 0.99


def sk_hysteresis(x: np.ndarray, low, high, connectivity: int = 1) -> np.ndarray:
    """Brute-force hysteresis with scipy: labels of x > low holding a voxel x > high."""
    low = np.minimum(low, high)
    labels, _ = ndimage.label(x > low, ndimage.generate_binary_structure(3, connectivity))
    keep = np.unique(labels[(x > high) & (labels > 0)])
    return np.isin(labels, keep) & (labels > 0)


def ball(radius: float, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    reach = [int(np.floor(radius / s + 1e-9)) for s in spacing]
    g = np.ogrid[tuple(slice(-n, n + 1) for n in reach)]
    return sum((gi * s) ** 2 for gi, s in zip(g, spacing, strict=True)) <= radius**2


def scipy_clean(
    mask,
    *,
    opening=0,
    min_size=0,
    keep_largest=False,
    closing=0,
    fill=None,
    connectivity=1,
    axis=2,
    spacing=(1.0, 1.0, 1.0),
):
    """clean.py's documented order with scipy on the whole mask; returns (mask, [(step, removed, added)])."""
    steps = []

    def record(name, before, after):
        steps.append((name, int((before & ~after).sum()), int((after & ~before).sum())))

    struct = ndimage.generate_binary_structure(3, connectivity)
    if opening:
        new = ndimage.binary_opening(mask, structure=ball(opening, spacing))
        record("opening", mask, new)
        mask = new
    if min_size or keep_largest:
        labels, n = ndimage.label(mask, struct)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = np.ones(n + 1, bool)
        keep[0] = False
        if min_size:
            new = mask & keep[labels] & (sizes >= min_size)[labels]
            record("min_size", mask, new)
            keep &= sizes >= min_size
            mask = new
        if keep_largest:
            cand = np.flatnonzero(keep)
            largest = cand[np.argmax(sizes[cand])] if len(cand) else None  # argmax: first of ties
            new = labels == largest if largest is not None else np.zeros_like(mask)
            record("keep_largest", mask, new)
            mask = new
    if closing:
        new = ndimage.binary_closing(mask, structure=ball(closing, spacing))
        record("closing", mask, new)
        mask = new
    if fill == "3d":
        new = ndimage.binary_fill_holes(mask, struct)
        record("fill_holes", mask, new)
        mask = new
    elif fill == "2d":
        s2 = ndimage.generate_binary_structure(2, connectivity)
        new = np.stack(
            [ndimage.binary_fill_holes(np.take(mask, i, axis), s2) for i in range(mask.shape[axis])], axis
        )
        record("fill_holes", mask, new)
        mask = new
    return mask, steps


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    d = tmp_path_factory.mktemp("bincl")
    ph = phantom((40, 44, 36), seed=5)
    path = d / "p.nii.gz"
    nib.save(ph.to_nifti(), path)
    return path, nib.load(path).get_fdata(dtype=np.float32)


def read(path) -> tuple[np.ndarray, dict]:
    data = np.asanyarray(nib.load(path).dataobj).astype(bool)
    return data, json.loads(path.with_name(path.name.split(".")[0] + ".json").read_text())["steps"][-1]


# --- local thresholds --------------------------------------------------------------------------
@pytest.mark.parametrize("method", LOCAL_METHODS)
def test_local_equals_skimage_on_the_rescaled_volume(phantom3d, method):
    x = phantom3d.intensity
    r = volbin.rescale(x)
    size = 5 if method == "median" else 9
    ours = volbin.binarize(da.from_array(x, chunks=CHUNKS), "local", local_method=method, block_size=size)
    assert isinstance(ours, da.Array) and ours.chunks == da.from_array(x, chunks=CHUNKS).chunks
    assert_mask_equal(ours.compute(), r, sk_local(r, method, size), method)


@pytest.mark.parametrize(
    ("method", "options", "sk"),
    [
        ("gaussian", {"offset": 0.03}, {"offset": 0.03}),
        ("mean", {"offset": -0.02}, {"offset": -0.02}),
        ("niblack", {"k": -0.3}, {"k": -0.3}),
        ("sauvola", {"k": 0.35, "r": 0.4}, {"k": 0.35, "r": 0.4}),
    ],
)
def test_local_options_are_skimages(phantom3d, method, options, sk):
    x = phantom3d.intensity[:30, :30, :30]
    r = volbin.rescale(x)
    ours = volbin.binarize(x, "local", local_method=method, block_size=7, **options)
    assert_mask_equal(ours, r, sk_local(r, method, 7, **sk), method)


@pytest.mark.parametrize("method", ["gaussian", "sauvola"])
def test_local_scope_slice_is_2d_per_slice_of_the_slice_rescale(phantom3d, method):
    x = phantom3d.intensity
    r = volbin.rescale(x, scope="slice", axis="y")
    ours = volbin.binarize(x, "local", local_method=method, block_size=7, scope="slice", axis="y")
    for j in (0, 17, 55):
        assert_mask_equal(ours[:, j, :], r[:, j, :], sk_local(r[:, j, :], method, 7), method)


def test_local_4d_each_volume_and_sidecar_record(phantom4d):
    x = phantom4d.intensity[..., :2]
    r = volbin.rescale(x, scope="volume")
    out = volbin.binarize(
        volbin.Volume(da.from_array(x, chunks=(20, 48, 13, 1)), volume_axis=3),
        "local",
        local_method="niblack",
        block_size=5,
    )
    data = out.data.compute()
    for t in range(2):
        assert_mask_equal(data[..., t], r[..., t], filters.threshold_niblack(r[..., t], 5), "niblack")
    dec = out.steps[-1]["decision"]
    assert dec["method"] == "local" and dec["local_method"] == "niblack" and dec["dims"] == 3
    assert dec["block_size"] == [5, 5, 5] and dec["k"] == 0.2


def test_local_nonfinite_voxels_are_zero(phantom3d):
    x = np.array(phantom3d.intensity[:24, :24, :24])
    x[3, 4, 5], x[10, 10, 10] = np.nan, np.inf
    with pytest.warns(volbin.VolbinWarning, match="2 NaN/Inf"):
        out = volbin.binarize(x, "local", block_size=5, offset=1.0)  # finite voxels are foreground
    with pytest.warns(volbin.VolbinWarning):
        r = volbin.rescale(x)
    t = filters.threshold_local(r, 5, "gaussian", offset=1.0)  # NaN near the NaN voxel
    assert not out[3, 4, 5] and not out[10, 10, 10]
    np.testing.assert_array_equal(out, (r > t) & np.isfinite(x))
    assert out.sum() == x.size - np.isnan(t).sum() - 1


# --- hysteresis --------------------------------------------------------------------------------
@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_hysteresis_rescaled_units_equal_skimage(phantom3d, connectivity):
    x = phantom3d.intensity
    r = volbin.rescale(x)
    ours = volbin.binarize(
        da.from_array(x, chunks=CHUNKS), "hysteresis", low=0.25, high=0.55, connectivity=connectivity
    ).compute()
    np.testing.assert_array_equal(ours, sk_hysteresis(r, 0.25, 0.55, connectivity))
    if connectivity == 1:
        np.testing.assert_array_equal(ours, filters.apply_hysteresis_threshold(r, 0.25, 0.55))


def test_hysteresis_raw_units_and_recorded_thresholds(phantom3d):
    x = phantom3d.intensity
    out = volbin.binarize(
        volbin.Volume(da.from_array(x, chunks=CHUNKS)), "hysteresis", low=200.0, high=600.0, units="raw"
    )
    np.testing.assert_array_equal(out.data.compute(), filters.apply_hysteresis_threshold(x, 200.0, 600.0))
    dec = out.steps[-1]["decision"]
    lo, hi = float(x.min()), float(x.max())
    assert dec["low_raw"] == 200.0 and dec["high_raw"] == 600.0 and dec["compared"] == "raw"
    assert dec["low_rescaled"] == pytest.approx((200.0 - lo) / (hi - lo))
    assert dec["high_rescaled"] == pytest.approx((600.0 - lo) / (hi - lo))
    assert dec["kept"] <= dec["components"]


def test_hysteresis_from_histogram_methods(phantom3d):
    x = phantom3d.intensity
    out = volbin.binarize(
        volbin.Volume(da.from_array(x, chunks=CHUNKS)), "hysteresis", low_method="li", high_method="otsu"
    )
    dec = out.steps[-1]["decision"]
    assert dec["high_raw"] == filters.threshold_otsu(x)  # min-max Otsu is skimage's on raw data
    assert dec["low_raw"] == pytest.approx(filters.threshold_li(x), rel=1e-2)
    assert (dec["low_from"], dec["high_from"], dec["nbins"]) == ("li", "otsu", 256)
    lo, hi = float(x.min()), float(x.max())
    assert dec["high_rescaled"] == pytest.approx((dec["high_raw"] - lo) / (hi - lo))
    ref = filters.apply_hysteresis_threshold(x, dec["low_raw"], dec["high_raw"])
    np.testing.assert_array_equal(out.data.compute(), ref)


def test_hysteresis_per_volume_thresholds_of_4d(phantom4d):
    x = phantom4d.intensity[..., :3]
    out = volbin.binarize(
        volbin.Volume(da.from_array(x, chunks=(20, 24, 40, 1)), volume_axis=3),
        "hysteresis",
        low_method="triangle",
        high_method="otsu",
    )
    dec = out.steps[-1]["decision"]
    assert dec["group_shape"] == [3] and len(dec["high_raw"]) == 3
    data = out.data.compute()
    for t in range(3):
        assert dec["high_raw"][t] == pytest.approx(filters.threshold_otsu(x[..., t]), rel=1e-6)
        ref = filters.apply_hysteresis_threshold(x[..., t], dec["low_raw"][t], dec["high_raw"][t])
        np.testing.assert_array_equal(data[..., t], ref)


# --- clean-up ------------------------------------------------------------------------------------
CLEAN_CASES = {
    "everything": (
        dict(opening=1, min_size=30, keep_largest=True, closing=2, fill_holes="3d"),
        dict(opening=1, min_size=30, keep_largest=True, closing=2, fill="3d"),
    ),
    "fill 2d, connectivity 2": (
        dict(min_size=10, fill_holes="2d", axis="y", connectivity=2),
        dict(min_size=10, fill="2d", axis=1, connectivity=2),
    ),
}


@pytest.mark.parametrize("case", sorted(CLEAN_CASES))
@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("otsu", {}),
        ("local", {"local_method": "gaussian", "block_size": 9, "offset": -0.02}),
        ("hysteresis", {"low": 0.2, "high": 0.5}),
    ],
)
def test_clean_after_any_threshold_equals_scipy(phantom3d, method, options, case):
    x = phantom3d.intensity
    ours_kw, ref_kw = CLEAN_CASES[case]
    raw_mask = volbin.binarize(x, method, **options)
    ref, ref_steps = scipy_clean(raw_mask, **ref_kw)
    out = volbin.binarize(volbin.Volume(da.from_array(x, chunks=CHUNKS)), method, **options, **ours_kw)
    np.testing.assert_array_equal(out.data.compute(), ref)
    step = out.steps[-1]
    assert [(s["step"], s["removed"], s["added"]) for s in step["clean"]] == ref_steps
    assert step["foreground"].to_dict()["voxels"] == int(ref.sum())


def test_clean_cli_on_phantom_equals_scipy(brain, tmp_path, capsys):
    src, x = brain
    out = tmp_path / "m.nii.gz"
    args = [
        "--method",
        "otsu",
        "--opening",
        "1",
        "--min-size",
        "20",
        "--keep-largest",
        "--closing",
        "1",
        "--fill-holes",
        "2d",
        "--axis",
        "x",
        "--connectivity",
        "2",
    ]
    assert main(["binarize", str(src), str(out), "--no-progress", *args]) == 0
    ref, ref_steps = scipy_clean(
        x > filters.threshold_otsu(x),
        opening=1,
        min_size=20,
        keep_largest=True,
        closing=1,
        fill="2d",
        axis=0,
        connectivity=2,
    )
    data, step = read(out)
    np.testing.assert_array_equal(data, ref)
    assert [(s["step"], s["removed"], s["added"]) for s in step["clean"]] == ref_steps
    assert step["foreground"]["voxels"] == int(ref.sum())
    assert "foreground" in capsys.readouterr().out
    # The sidecar's recipe re-runs to the same bytes.
    again = tmp_path / "again.nii.gz"
    assert (
        main(["binarize", str(src), str(again), "--no-progress", "--recipe", str(tmp_path / "m.json")]) == 0
    )
    np.testing.assert_array_equal(read(again)[0], data)


def test_clean_radii_in_mm_use_the_voxel_sizes(tmp_path):
    ph = phantom((36, 30, 20), seed=6)
    affine = np.diag([1.0, 1.5, 2.5, 1.0])
    src = tmp_path / "aniso.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ph.intensity), affine), src)
    x = nib.load(src).get_fdata(dtype=np.float32)
    out = tmp_path / "m.nii.gz"
    args = ["--method", "otsu", "--opening", "2", "--closing", "3", "--radius-units", "mm"]
    assert main(["binarize", str(src), str(out), "--no-progress", *args]) == 0
    ref, ref_steps = scipy_clean(x > filters.threshold_otsu(x), opening=2, closing=3, spacing=(1.0, 1.5, 2.5))
    data, step = read(out)
    np.testing.assert_array_equal(data, ref)
    assert [(s["step"], s["removed"], s["added"], s["units"]) for s in step["clean"]] == [
        (*s, "mm") for s in ref_steps
    ]


def test_clean_with_mask_keeps_zero_outside(phantom3d):
    x = phantom3d.intensity
    inside = np.zeros(x.shape, bool)
    inside[5:40, 5:50, 5:40] = True
    out = volbin.binarize(x, "otsu", mask=inside, closing=3, fill_holes="3d")
    thresholded = inside & (x > filters.threshold_otsu(x[inside]))
    ref, _ = scipy_clean(thresholded, closing=3, fill="3d")
    np.testing.assert_array_equal(out, ref & inside)


def test_any_chunking_gives_the_same_mask(phantom3d):
    x = phantom3d.intensity
    kw = dict(local_method="sauvola", block_size=7, min_size=15, keep_largest=True, closing=1)
    whole = volbin.binarize(x, "local", **kw)
    for chunks in [(7, 9, 5), (48, 8, 48), (25, 56, 17)]:
        np.testing.assert_array_equal(volbin.binarize(da.from_array(x, chunks=chunks), "local", **kw), whole)


# --- options a method does not use ------------------------------------------------------------
NEW_FIELDS = {
    "local_method": "mean",
    "block_size": 5,
    "offset": 0.1,
    "k": 0.5,
    "r": 0.3,
    "low": 0.1,
    "high": 0.5,
    "low_method": "li",
    "high_method": "otsu",
    "connectivity": 2,
    "keep_largest": True,
    "min_size": 4,
    "fill_holes": "3d",
    "opening": 1.0,
    "closing": 1.0,
    "radius_units": "mm",
}


@pytest.mark.parametrize("name", sorted(NEW_FIELDS))
@pytest.mark.parametrize("method", ["stochastic", "dither", "ordered"])
def test_new_options_are_refused_by_rendering_methods(method, name):
    assert [n for n, _ in unused_options({"method": method, name: NEW_FIELDS[name]})] == [name]
    with pytest.raises(ValueError, match=f"`{name}` is not used by method='{method}'"):
        Recipe(method=method, **{name: NEW_FIELDS[name]})


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--method", "otsu", "--block-size", "5"], "--block-size"),
        (["--method", "otsu", "--local", "gaussian"], "--local"),
        (["--method", "value", "--threshold", "0.3", "--k", "0.3"], "--k"),
        (["--method", "local", "--local", "niblack", "--offset", "0.1"], "--offset"),
        (["--method", "local", "--local", "gaussian", "--r", "2"], "--r"),
        (["--method", "local", "--block-size", "4"], "--block-size"),
        (["--method", "otsu", "--low", "0.2"], "--low"),
        (["--method", "hysteresis", "--low", "0.1"], "--high"),
        (["--method", "hysteresis", "--low", "0.1", "--high", "0.5", "--nbins", "64"], "--nbins"),
        (
            ["--method", "hysteresis", "--low-method", "li", "--high-method", "otsu", "--units", "raw"],
            "--units",
        ),
        (["--method", "hysteresis", "--low", "0.5", "--high", "0.1"], "--low"),
        (["--method", "hysteresis", "--low-method", "percentile", "--high", "0.5"], "--low-method"),
        (["--method", "otsu", "--connectivity", "2"], "--connectivity"),
        (["--method", "otsu", "--connectivity", "4", "--min-size", "3"], "--connectivity"),
        (["--method", "otsu", "--fill-holes", "2d", "--connectivity", "3"], "--connectivity"),
        (["--method", "otsu", "--radius-units", "mm"], "--radius-units"),
        (["--method", "otsu", "--fill-holes", "--axis", "x"], "--axis"),
        (["--method", "dither", "--keep-largest"], "--keep-largest"),
        (["--method", "stochastic", "--min-size", "3"], "--min-size"),
        (["--method", "ordered", "--fill-holes"], "--fill-holes"),
        (["--method", "dither", "--opening", "1"], "--opening"),
    ],
)
def test_cli_refuses_unused_or_bad_options(brain, tmp_path, capsys, args, flag):
    src, _ = brain
    assert main(["binarize", str(src), str(tmp_path / "o.nii"), *args]) == 2
    err = capsys.readouterr().err
    assert flag in err
    assert not (tmp_path / "o.nii").exists()


def test_cli_local_and_hysteresis_on_phantom(brain, tmp_path):
    src, x = brain
    out = tmp_path / "local.nii.gz"
    assert (
        main(
            [
                "binarize",
                str(src),
                str(out),
                "--no-progress",
                "--method",
                "local",
                "--local",
                "sauvola",
                "--block-size",
                "9",
                "--k",
                "0.3",
                "--scope",
                "slice",
                "--axis",
                "z",
            ]
        )
        == 0
    )
    data, step = read(out)
    r = volbin.rescale(x, scope="slice", axis="z")
    for k in (0, 18, 35):
        t = filters.threshold_sauvola(r[:, :, k], 9, k=0.3)
        assert_mask_equal(data[:, :, k], r[:, :, k], t, "sauvola")
    assert step["decision"]["dims"] == 2 and step["recipe"]["local_method"] == "sauvola"
    out = tmp_path / "hyst.nii.gz"
    assert (
        main(
            [
                "binarize",
                str(src),
                str(out),
                "--no-progress",
                "--method",
                "hysteresis",
                "--low-method",
                "li",
                "--high-method",
                "otsu",
                "--connectivity",
                "3",
            ]
        )
        == 0
    )
    data, step = read(out)
    dec = step["decision"]
    assert dec["high_raw"] == pytest.approx(filters.threshold_otsu(x), rel=1e-6)
    np.testing.assert_array_equal(data, sk_hysteresis(x, dec["low_raw"], dec["high_raw"], 3))


def test_batch_takes_the_new_options(brain, tmp_path):
    src, x = brain
    res = volbin.batch(
        [src],
        tmp_path / "out",
        method="hysteresis",
        low=0.2,
        high=0.5,
        keep_largest=True,
        scheduler="threads",
        progress=False,
    )
    (out,) = sorted((tmp_path / "out").glob("*.nii.gz"))
    data, step = read(out)
    ref, _ = scipy_clean(sk_hysteresis(volbin.rescale(x), 0.2, 0.5), keep_largest=True)
    np.testing.assert_array_equal(data, ref)
    assert step["recipe"]["keep_largest"] is True and res is not None
