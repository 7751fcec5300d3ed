"""Tests of volbin.preview (PNG previews), the Volume repr/HTML/nibabel views and the HTML index.

Orientation is checked against the affine itself: markers are placed on a known anatomical side
(world coordinates from the affine), rendered, and must land next to the matching edge label in
the PNG, in both display conventions.  Histograms are checked against np.histogram, the dithered
view against scipy's Gaussian, the label legend against np.unique, PNGs are decoded by Pillow.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

import volbin
from volbin.errors import OutputFileError
from volbin.preview import CROP, HIST_INCHES, MONTAGE_COLUMNS, PANEL_INCHES, preview
from volbin.report_html import write_index_html
from volbin.volume import Volume

KMEANS = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
DPI = 60
OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    r = np.eye(3)
    a, b = [i for i in range(3) if i != axis]
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def _affine(kind: str) -> np.ndarray:
    zooms = np.diag([2.0, 2.5, 3.0])
    if kind == "RAS":
        m = zooms
    elif kind == "LAS":
        m = np.diag([-1.0, 1, 1]) @ zooms
    elif kind == "oblique":  # 25 degrees about z, then 15 about x: closest codes stay RAS
        m = _rotation(0, 15) @ _rotation(2, 25) @ zooms
    elif kind == "ASL":  # voxel axes point anterior, superior, left: a permutation
        m = np.array([[0.0, 0, -1], [1, 0, 0], [0, 1, 0]]) @ zooms
    else:  # pragma: no cover
        raise AssertionError(kind)
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = [-10.0, 20.0, 5.0]
    return aff


#: Marker values and the anatomical side each one sits on.
MARKERS = {1.0: "L", 0.8: "A", 0.6: "S"}


def _marker_volume(affine: np.ndarray, shape=(20, 24, 16), seed=0) -> np.ndarray:
    """Low noise, with a box of each marker value on its side (world coordinates), centred
    on the other two world axes so that the middle slices cross it."""
    rng = np.random.default_rng(seed)
    vol = rng.uniform(0.0, 0.2, shape)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = np.array([(n - 1) / 2 for n in shape]) @ affine[:3, :3].T + affine[:3, 3]
    d = xyz - centre
    half = np.abs(d).reshape(-1, 3).max(axis=0)
    rel = d / half
    near = np.abs(rel) < 0.3
    boxes = {
        "L": (rel[..., 0] < -0.45) & near[..., 1] & near[..., 2],
        "A": (rel[..., 1] > 0.45) & near[..., 0] & near[..., 2],
        "S": (rel[..., 2] > 0.45) & near[..., 0] & near[..., 1],
    }
    for value, side in MARKERS.items():
        assert boxes[side].any()
        vol[boxes[side]] = value
    return vol


def _check_markers(png: bytes, layout, vol: np.ndarray) -> dict[str, set[str]]:
    """Each marker lies nearer its side's edge label than the opposite one, in the PNG."""
    pixels = _decode(png)
    seen: dict[str, set[str]] = {side: set() for side in MARKERS.values()}
    for panel in layout.panels:
        for value, side in MARKERS.items():
            rows, cols = np.nonzero(panel.image == value)
            if rows.size == 0 or side not in panel.edges.values():
                continue  # (a montage's axial slice may cut the superior marker)
            seen[side].add(panel.view)
            # The layout maps displayed pixels back onto the right voxels.
            for r, c in zip(rows[:5], cols[:5], strict=False):
                assert vol[panel.voxel(int(r), int(c))] == value
            edge = next(e for e, letter in panel.edges.items() if letter == side)
            other = next(e for e, letter in panel.edges.items() if letter == OPPOSITE[side])
            x, y = panel.pixel(rows.mean(), cols.mean())
            lx, ly = panel.label_xy[edge]
            ox, oy = panel.label_xy[other]
            assert math.hypot(x - lx, y - ly) < math.hypot(x - ox, y - oy), (panel.view, side, edge)
            # ... and the PNG really shows the marker there (grey level = value).
            px, py = panel.pixel(int(rows[0]), int(cols[0]))
            grey = pixels[int(py), int(px)]
            assert np.all(np.abs(grey.astype(int) - round(255 * value)) <= 3), (panel.view, side, grey)
    return seen


# --- orientation ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["RAS", "LAS", "oblique", "ASL"])
@pytest.mark.parametrize("convention", ["neurological", "radiological"])
def test_markers_land_next_to_their_edge_labels(kind, convention):
    affine = _affine(kind)
    vol = _marker_volume(affine)
    v = Volume(vol, affine=affine)
    png, layout = preview(v, window=(0, 100), convention=convention, dpi=DPI, return_layout=True)
    assert layout.axcodes == "".join(nib.aff2axcodes(affine))
    seen = _check_markers(png, layout, vol)
    assert seen == {"L": {"axial", "coronal"}, "A": {"axial", "sagittal"}, "S": {"coronal", "sagittal"}}
    edges = {p.view: p.edges for p in layout.panels}
    lr = ("L", "R") if convention == "neurological" else ("R", "L")
    assert edges["axial"] == {"left": lr[0], "right": lr[1], "top": "A", "bottom": "P"}
    assert edges["coronal"] == {"left": lr[0], "right": lr[1], "top": "S", "bottom": "I"}
    assert edges["sagittal"] == {"left": "A", "right": "P", "top": "S", "bottom": "I"}


@pytest.mark.parametrize("kind", ["RAS", "LAS", "ASL"])
def test_montage_orientation_and_order(kind):
    affine = _affine(kind)
    vol = _marker_volume(affine)
    png, layout = preview(
        Volume(vol, affine=affine), slices=5, axis="axial", window=(0, 100), dpi=DPI, return_layout=True
    )
    assert {p.view for p in layout.panels} == {"axial"}
    _check_markers(png, layout, vol)
    # Slices go from inferior to superior whatever the voxel order.
    z = [(affine[:3, :3] @ np.array(p.voxel(0, 0)) + affine[:3, 3])[2] for p in layout.panels]
    assert z == sorted(z) and len(set(z)) == 5


def test_file_input_uses_the_file_affine(nifti_factory):
    affine = _affine("LAS")
    vol = _marker_volume(affine).astype(np.float32)
    path = nifti_factory(vol, "las.nii.gz", affine=affine)
    png, layout = preview(path, window=(0, 100), dpi=DPI, return_layout=True)
    assert layout.axcodes == "LAS"
    _check_markers(png, layout, vol.astype(np.float64))


def test_anisotropic_voxels_set_the_aspect():
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    _, layout = preview(np.zeros((40, 40, 10)), histogram=False, dpi=DPI, return_layout=True)
    _, aniso = preview(
        Volume(np.zeros((40, 40, 10)), affine=affine), histogram=False, dpi=DPI, return_layout=True
    )
    for panels in (layout.panels, aniso.panels):
        axial = next(p for p in panels if p.view == "axial")
        x0, y0, x1, y1 = axial.bbox
        assert (x1 - x0) == pytest.approx(y1 - y0, rel=0.02)  # 40 x 40 mm either way
    coronal = next(p for p in aniso.panels if p.view == "coronal")
    x0, y0, x1, y1 = coronal.bbox
    assert (x1 - x0) / (y1 - y0) == pytest.approx(40 / 40, rel=0.02)  # 40 mm wide, 10 x 4 mm high
    coronal_iso = next(p for p in layout.panels if p.view == "coronal")
    x0, y0, x1, y1 = coronal_iso.bbox
    assert (x1 - x0) / (y1 - y0) == pytest.approx(40 / 10, rel=0.02)


# --- sizes, 3D, 4D ------------------------------------------------------------------------------
def test_png_size_3d_and_montage(phantom3d):
    png, layout = preview(phantom3d.intensity, dpi=DPI, return_layout=True)
    assert Image.open(io.BytesIO(png)).format == "PNG"
    expected = (round(3 * PANEL_INCHES * DPI), round((PANEL_INCHES + HIST_INCHES) * DPI))
    assert Image.open(io.BytesIO(png)).size == layout.size == expected
    n = MONTAGE_COLUMNS + 2
    png, layout = preview(phantom3d.intensity, slices=n, dpi=DPI, return_layout=True)
    expected = (round(MONTAGE_COLUMNS * PANEL_INCHES * DPI), round((2 * PANEL_INCHES + HIST_INCHES) * DPI))
    assert Image.open(io.BytesIO(png)).size == expected
    assert len(layout.panels) == n
    assert len({p.slice_index for p in layout.panels}) == n
    _, every = preview(np.zeros((3, 4, 5)), slices=1000, histogram=False, dpi=10, return_layout=True)
    assert [p.slice_index for p in every.panels] == [0, 1, 2, 3, 4]


def test_4d_one_row_per_volume_and_histograms_match_numpy(phantom4d):
    x = phantom4d.intensity * np.arange(1, 5, dtype=np.float32)  # volumes of different ranges
    png, layout = preview(x, volumes=[3, 1], thresholds={3: [100.0, 900.0]}, dpi=DPI, return_layout=True)
    assert Image.open(io.BytesIO(png)).size == (
        round(3 * PANEL_INCHES * DPI),
        round(2 * (PANEL_INCHES + HIST_INCHES) * DPI),
    )
    assert [p.volume for p in layout.panels] == [3, 3, 3, 1, 1, 1]
    for panel in layout.panels:
        r, c = panel.image.shape[0] // 2, panel.image.shape[1] // 3
        assert x[panel.voxel(r, c)] == panel.image[r, c]
    for h, t, v in zip(layout.histograms, ([100.0, 900.0], []), (3, 1), strict=True):
        data = x[..., v].astype(np.float64)
        assert (h["volume"], h["lo"], h["hi"], h["thresholds"]) == (v, data.min(), data.max(), t)
        fine, _ = np.histogram(data, 65536, (h["lo"], h["hi"]))
        np.testing.assert_array_equal(h["counts"], fine.reshape(256, -1).sum(axis=1))
        lo, hi = np.percentile(data, (1, 99))
        width = (h["hi"] - h["lo"]) / 65536
        assert abs(h["window"][0] - lo) <= width and abs(h["window"][1] - hi) <= width


def test_4d_default_volumes_and_volume_axis(phantom4d):
    x = np.moveaxis(phantom4d.intensity, 3, 0)
    _, layout = preview(x, volume_axis=0, dpi=20, histogram=False, return_layout=True)
    assert sorted({p.volume for p in layout.panels}) == [0, 2, 3]
    for p in layout.panels:
        np.testing.assert_array_equal(x[p.voxel(1, 2)], p.image[1, 2])


def test_real_4d_file(real_4d_path):
    png, layout = preview(real_4d_path, volumes=1, dpi=DPI, return_layout=True)
    img = nib.load(real_4d_path)
    assert layout.axcodes == "".join(nib.aff2axcodes(img.affine))
    data = np.asarray(img.dataobj)
    for p in layout.panels:
        assert data[p.voxel(10, 10)] == p.image[10, 10]
    assert _decode(png).shape[:2][::-1] == layout.size


# --- overlays -----------------------------------------------------------------------------------
def _cyan(pixels: np.ndarray) -> np.ndarray:
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return (b - r > 60) & (g - r > 60)


def _shown(volume: np.ndarray, panel) -> np.ndarray:
    """The values of `volume` at the voxels of a panel, as displayed (brute force)."""
    h, w = panel.image.shape
    return np.array([[volume[panel.voxel(r, c)] for c in range(w)] for r in range(h)])


def test_mask_outline_and_fill(phantom3d):
    x = phantom3d.intensity
    mask = phantom3d.brain
    plain = _decode(preview(x, dpi=DPI, histogram=False))
    outline, layout = preview(x, mask=mask, dpi=DPI, histogram=False, return_layout=True)
    fill = _decode(preview(x, mask=mask, overlay="fill", dpi=DPI, histogram=False))
    assert not _cyan(plain).any()
    assert _cyan(_decode(outline)).sum() > 50
    # Filled: the pixel of a voxel inside the mask is tinted, one outside is not.
    axial = next(p for p in layout.panels if p.view == "axial")
    shown = _shown(mask, axial)
    rows, cols = np.nonzero(shown)
    px, py = (int(v) for v in axial.pixel(rows[len(rows) // 2], cols[len(cols) // 2]))
    assert fill[py, px, 2] > fill[py, px, 0] + 40 and plain[py, px, 2] == plain[py, px, 0]
    rows, cols = np.nonzero(~shown)
    px, py = (int(v) for v in axial.pixel(rows[0], cols[0]))
    assert fill[py, px, 2] == fill[py, px, 0]


def test_mask_checks():
    with pytest.raises(ValueError, match="`mask` must have the shape"):
        preview(np.zeros((4, 5, 6)), mask=np.zeros((4, 5, 7), bool))
    with pytest.raises(ValueError, match="`mask` must lie on the grid"):
        preview(np.zeros((4, 5, 6)), mask=Volume(np.zeros((4, 5, 6), bool), affine=np.diag([2, 1, 1, 1])))
    with pytest.raises(ValueError, match="`overlay` applies"):
        preview(np.zeros((4, 5, 6)), overlay="fill")


def test_labels_colours_and_legend_classes(phantom3d):
    names = {v: k for k, v in phantom3d.classes.items()}
    png, layout = preview(
        phantom3d.intensity, labels=phantom3d.labels, label_names=names, dpi=DPI, return_layout=True
    )
    present = sorted(int(v) for v in np.unique(phantom3d.labels) if v != 0)
    assert list(layout.classes) == present
    assert layout.classes[3] == "white_matter"
    pixels = _decode(png)
    # Two classes shown side by side get different colours.
    axial = next(p for p in layout.panels if p.view == "axial")
    colours = {}
    for r in range(0, axial.image.shape[0], 3):
        for c in range(0, axial.image.shape[1], 3):
            lab = int(phantom3d.labels[axial.voxel(r, c)])
            px, py = (int(v) for v in axial.pixel(r, c))
            colours.setdefault(lab, []).append(pixels[py, px].astype(int))
    mean = {k: np.mean(v, axis=0) for k, v in colours.items() if len(v) > 5}
    assert 3 in mean and 4 in mean and np.abs(mean[3] - mean[4]).max() > 40
    _, outline = preview(
        phantom3d.intensity, labels=phantom3d.labels, overlay="outline", dpi=20, return_layout=True
    )
    assert list(outline.classes) == present


def test_labels_checks():
    x = np.zeros((4, 5, 6))
    bad = np.zeros((4, 5, 6))
    bad[0, 0, 0] = np.nan
    with pytest.raises(volbin.VolbinDataError, match="`labels` must hold finite"):
        preview(x, labels=bad)
    wide = np.zeros((4, 5, 6))
    wide[0, 0, 0] = 10**6
    with pytest.raises(ValueError, match="`labels` must span at most"):
        preview(x, labels=wide)
    with pytest.raises(ValueError, match="`label_names` applies"):
        preview(x, label_names={1: "a"})


# --- NaN, constant, dithered, bool ----------------------------------------------------------------
def test_nan_voxels_are_magenta_and_excluded_from_the_window(phantom3d):
    x = phantom3d.intensity.copy()
    x[:8] = np.nan
    png, layout = preview(x, dpi=DPI, return_layout=True)
    pixels = _decode(png)
    finite = x[np.isfinite(x)].astype(np.float64)
    assert layout.histograms[0]["lo"] == finite.min() and layout.histograms[0]["counts"].sum() == finite.size
    axial = next(p for p in layout.panels if p.view == "axial")
    rows, cols = np.nonzero(np.isnan(axial.image))
    px, py = (int(v) for v in axial.pixel(rows[0], cols[0]))
    np.testing.assert_allclose(pixels[py, px], (255, 0, 255), atol=3)


def test_all_nan_and_constant_volumes():
    png, layout = preview(np.full((6, 7, 8), np.nan), dpi=DPI, return_layout=True)
    assert layout.histograms[0]["finite"] is False
    assert _decode(png).shape[:2][::-1] == layout.size
    png, layout = preview(np.full((6, 7, 8), 5.0, np.float32), thresholds=5.0, dpi=DPI, return_layout=True)
    pixels = _decode(png)
    for p in layout.panels:
        px, py = (int(v) for v in p.pixel(3, 3))
        np.testing.assert_allclose(pixels[py, px], (128, 128, 128), atol=2)
    assert layout.histograms[0]["counts"].sum() == 6 * 7 * 8


def test_dithered_blur_and_crop_match_scipy(phantom3d):
    mask = volbin.binarize(phantom3d.intensity, "stochastic", seed=0)
    png, layout = preview(mask, dithered=True, sigma=2.0, dpi=DPI, return_layout=True)
    assert Image.open(io.BytesIO(png)).size[0] == round(6 * PANEL_INCHES * DPI)
    assert [p.kind for p in layout.panels] == ["blurred", "crop"] * 3
    for blurred, crop in zip(layout.panels[::2], layout.panels[1::2], strict=True):
        full = _shown(mask, blurred).astype(np.float64)
        np.testing.assert_allclose(blurred.image, ndimage.gaussian_filter(full, 2.0, mode="reflect"))
        r0, c0 = crop.origin
        h, w = min(CROP, full.shape[0]), min(CROP, full.shape[1])
        np.testing.assert_array_equal(crop.image, full[r0 : r0 + h, c0 : c0 + w])
        assert crop.voxel(0, 0) == blurred.voxel(r0, c0)
    with pytest.raises(ValueError, match="`sigma` applies"):
        preview(mask, sigma=1.0)


def test_bool_volume_window_is_zero_one():
    x = np.zeros((10, 10, 10), bool)
    x[5:, 5:, 5:] = True
    _, layout = preview(x, dpi=20, return_layout=True)
    assert layout.histograms[0]["window"] == (0.0, 1.0)


# --- data access, determinism, files --------------------------------------------------------------
def _counting(shape, chunks):
    calls = []

    def block(block_info=None):
        loc = block_info[None]["array-location"]
        calls.append(tuple(loc))
        return np.full(block_info[None]["chunk-shape"], float(loc[2][0]))

    return da.map_blocks(block, chunks=chunks, dtype=np.float64, meta=np.empty((0, 0, 0))), calls


def test_only_the_displayed_slices_are_computed():
    data, calls = _counting((20, 20, 20), ((20,), (20,), (1,) * 20))
    preview(data, slices=2, histogram=False, dpi=20)
    assert sorted(c[2] for c in calls) == [(6, 7), (13, 14)]
    calls.clear()
    preview(data, histogram=False, dpi=20)  # sagittal and coronal slices cross every block:
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 20  # each is computed once


def test_same_bytes_twice_and_out_is_written_atomically(tmp_path, phantom3d):
    out = tmp_path / "p.png"
    png = preview(phantom3d.intensity, mask=phantom3d.brain, thresholds=300.0, out=out, dpi=DPI)
    assert (
        out.read_bytes()
        == png
        == preview(phantom3d.intensity, mask=phantom3d.brain, thresholds=300.0, dpi=DPI)
    )
    assert os.listdir(tmp_path) == ["p.png"]
    with pytest.raises(OutputFileError, match="exists"):
        preview(phantom3d.intensity, out=out)
    assert preview(phantom3d.intensity, out=out, force=True, dpi=20) == out.read_bytes()
    with pytest.raises(OutputFileError, match="does not exist"):
        preview(phantom3d.intensity, out=tmp_path / "missing" / "p.png")


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cx=st.integers(8, 48), cz=st.integers(8, 48))
def test_chunking_does_not_change_the_png(phantom3d, cx, cz):
    x = phantom3d.intensity
    ref = preview(x, thresholds=200.0, dpi=20)
    assert preview(da.from_array(x, chunks=(cx, 56, cz)), thresholds=200.0, dpi=20) == ref


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"convention": "up"}, "`convention`"),
        ({"window": (50, 10)}, "`window`"),
        ({"window": 5}, "`window`"),
        ({"slices": 0}, "`slices`"),
        ({"axis": "z"}, "`axis` applies"),
        ({"slices": 3, "axis": "w"}, "`axis`"),
        ({"volumes": 2}, "`volumes` applies to 4D"),
        ({"thresholds": [1.0, np.nan]}, "`thresholds`"),
        ({"thresholds": {0: 1.0}}, "`thresholds` keys"),
        ({"dpi": 0}, "`dpi`"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        preview(np.zeros((4, 5, 6)), **kwargs)


def test_bad_volumes_for_4d():
    with pytest.raises(ValueError, match="`volumes` must index the 3 volumes"):
        preview(np.zeros((4, 5, 6, 3)), volumes=[0, 3])
    with pytest.raises(TypeError, match="`volume` must be a path"):
        preview(object())


@pytest.mark.skipif(not (KMEANS / "KmeansTest_T1UCharRaw.nii.gz").is_file(), reason="ITK example data absent")
def test_real_t1_with_brain_mask(tmp_path):
    t1, brain = KMEANS / "KmeansTest_T1UCharRaw.nii.gz", KMEANS / "KmeansTest_T1RawSkullStrip.nii.gz"
    mask = np.asarray(nib.load(brain).dataobj) > 0
    png, layout = preview(t1, mask=mask, out=tmp_path / "t1.png", dpi=DPI, return_layout=True)
    assert layout.axcodes == "".join(nib.aff2axcodes(nib.load(t1).affine))
    assert _cyan(_decode(png)).sum() > 100


# --- Volume: repr, HTML, nibabel ------------------------------------------------------------------
def test_repr_says_shape_voxel_size_orientation_dtype_range():
    v = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), affine=_affine("LAS"))
    text = repr(v)
    assert text.startswith("Volume(shape=(2, 3, 4), voxel size=(2.0, 2.5, 3.0) mm, orientation=LAS")
    assert "dtype=int16" in text and "range=[0, 23]" in text
    nan = Volume(np.array([np.nan, 1.0, -2.5, np.inf] * 2).reshape(2, 2, 2))
    assert "range=[-2.5, 1]" in repr(nan)
    big, calls = _counting((128, 128, 128), ((128,), (128,), (64, 64)))
    assert "range not computed" in repr(Volume(big)) and calls == []


def test_repr_html_embeds_a_small_png(phantom4d):
    v, _ = volbin.volume.as_volume(phantom4d.intensity)
    page = v._repr_html_()
    (src,) = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    img = Image.open(io.BytesIO(base64.b64decode(src)))
    assert img.height == 96 and img.mode == "L"
    # The middle axial slice of the first volume, windowed: its brightest tile pixels are where
    # the phantom's middle slice is brightest.
    x = np.asarray(phantom4d.intensity[..., 0])
    tile = np.asarray(img)[:, img.width - round(x.shape[0] * 96 / x.shape[1]) :]
    assert tile.shape[1] > 0 and tile.max() == 255 and tile.min() == 0
    assert "Volume(shape=(40, 48, 40, 4)" in page


def test_to_nibabel_matches_the_file(real_t1_path, tmp_path):
    vol = volbin.load(real_t1_path)
    ref = nib.load(real_t1_path)
    img = vol.to_nibabel()
    assert isinstance(img, nib.Nifti1Image)
    np.testing.assert_array_equal(img.affine, ref.affine)
    assert img.header.get_zooms() == ref.header.get_zooms()
    assert img.header.get_xyzt_units() == ref.header.get_xyzt_units()
    np.testing.assert_array_equal(img.dataobj[:, :, 3], ref.get_fdata()[:, :, 3])
    np.testing.assert_array_equal(img.get_fdata(), ref.get_fdata())
    nib.save(img, tmp_path / "copy.nii")
    np.testing.assert_array_equal(nib.load(tmp_path / "copy.nii").get_fdata(), ref.get_fdata())


def test_to_nibabel_dtypes_axes_and_laziness():
    x = np.random.default_rng(0).random((3, 4, 5, 6)) > 0.5
    img = Volume(np.moveaxis(x, 3, 0), volume_axis=0).to_nibabel()
    assert img.shape == (3, 4, 5, 6)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), x.astype(np.uint8))
    data, calls = _counting((8, 8, 8), ((8,), (8,), (4, 4)))
    lazy = Volume(data).to_nibabel()
    assert calls == []
    lazy.dataobj[:, :, 5]
    assert len(calls) == 1
    assert isinstance(Volume(da.zeros((40000, 1, 1))).to_nibabel(), nib.Nifti2Image)


# --- the HTML index -------------------------------------------------------------------------------
class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "a":
            self.links.append(a["href"])


def test_index_html_is_static_and_relative(tmp_path, phantom3d):
    (tmp_path / "previews").mkdir()
    rows = []
    for i in range(2):
        png = tmp_path / "previews" / f"sub 0{i}.png"
        preview(phantom3d.intensity, thresholds=[250.0 + i], out=png, dpi=20)
        rows.append(
            {
                "name": f"sub-0{i}",
                "status": "done",
                "preview": str(png),
                "output": str(tmp_path / f"sub-0{i}_mask.nii.gz"),
                "thresholds": [250.0 + i],
                "foreground_mm3": 1234.5 * (i + 1),
            }
        )
    rows.append({"name": "sub-<02>", "status": "failed", "error": "sub-02.nii.gz: truncated & corrupt"})
    rows.append(
        {
            "name": "sub-03",
            "status": "done",
            "preview": str(tmp_path / "gone.png"),
            "thresholds": list(range(100)),
        }
    )
    path = write_index_html(rows, tmp_path / "index.html")
    page = path.read_text()
    assert not re.search(r"https?://", page) and "<link" not in page and "<script" not in page
    refs = _Refs()
    refs.feed(page)
    assert len(refs.imgs) == 2
    for src in refs.imgs + refs.links:
        assert not src.startswith("/") and ":" not in src
    for src in refs.imgs:
        assert (tmp_path / unquote(src)).is_file()
    assert "sub-02.nii.gz: truncated &amp; corrupt" in page and "sub-&lt;02&gt;" in page
    assert "1,234.5" in page and "2,469.0" in page and "100 in all; 0 to 99" in page
    assert "preview missing" in page
    assert os.listdir(tmp_path).count("index.html") == 1 and not [
        p for p in os.listdir(tmp_path) if p.endswith(".tmp")
    ]


def test_index_html_checks_rows(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        write_index_html([{"name": "a", "thresold": 1}], tmp_path / "i.html")
    with pytest.raises(ValueError, match=r"`rows\[0\]\['name'\]`"):
        write_index_html([{"status": "done"}], tmp_path / "i.html")
    with pytest.raises(TypeError, match="`rows` must be a list"):
        write_index_html({"name": "a"}, tmp_path / "i.html")
    with pytest.raises(ValueError, match="foreground_mm3"):
        write_index_html([{"name": "a", "foreground_mm3": "big"}], tmp_path / "i.html")
    with pytest.raises(OutputFileError):
        write_index_html([], tmp_path / "missing" / "i.html")
