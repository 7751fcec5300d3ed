"""Printer bitmap stacks: grid, PNGs and DPI, grey levels, resuming, labels, bounded memory."""

from __future__ import annotations

import json
import math
import os
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import volbin
from volbin.cli import main
from volbin.dither.quality import dither_error
from volbin.errors import OutputFileError, VolbinDataError
from volbin.printer import export_slices, print_grid
from volbin.resample import resample_to_grid
from volbin.volume import Volume

#: Coarse printer settings that keep stacks small: 0.5 x 1 mm pixels, 0.35 mm layers.
DPI = (50.8, 25.4)
LAYER = 0.35


@pytest.fixture(scope="module")
def head() -> volbin.Phantom:
    return volbin.phantom((24, 28, 20), seed=0)


@pytest.fixture(scope="module")
def head_vol(head) -> Volume:
    return Volume(head.intensity, affine=head.affine)


def _stack(folder: Path, n: int) -> np.ndarray:
    """The PNG stack as an (x, y, z) array, y up (PNG rows run from the top)."""
    layers = []
    for k in range(n):
        with Image.open(folder / f"layer_{k:05d}.png") as img:
            layers.append(np.asarray(img).T[:, ::-1])
    return np.stack(layers, axis=-1)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("layer_*.png"))}


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("layer_*.png"))}


# --- the grid ------------------------------------------------------------------------------------
def test_grid_counts_pitches_and_faces(head_vol):
    g = print_grid(head_vol, (600, 300), 0.027)
    extent = np.array([24, 28, 20], float)  # 1 mm voxels
    pitch = np.array([25.4 / 600, 25.4 / 300, 0.027])
    assert g.shape == tuple(math.ceil(e / p) for e, p in zip(extent, pitch, strict=True))
    np.testing.assert_allclose(g.pitch, pitch)
    assert g.axes == "RAS"
    # The grid starts at the volume's outer faces on its left, posterior and inferior sides.
    lower = nib.affines.apply_affine(head_vol.affine, [-0.5, -0.5, -0.5])
    first = nib.affines.apply_affine(g.affine, [-0.5, g.shape[1] - 0.5, -0.5])  # bottom-left face
    np.testing.assert_allclose(first, lower, atol=1e-9)
    # Pixel (column, row) steps go right and down the image: +R and -A in the world.
    step = g.affine[:3, :3]
    np.testing.assert_allclose(np.diag(step), [pitch[0], -pitch[1], pitch[2]])


@pytest.mark.parametrize(("up", "axes"), [("S", "RAS"), ("A", "RIA"), ("R", "ASR"), ("I", "RPI")])
def test_build_frames_are_right_handed(head_vol, up, axes):
    g = print_grid(head_vol, DPI, LAYER, up=up)
    assert g.axes == axes
    # (column, row-up, layer) is a proper rotation of the world axes: never a mirror image.
    frame = g.affine[:3, :3] @ np.diag([1.0, -1.0, 1.0])
    assert np.linalg.det(frame) > 0


def test_right_is_right_and_anterior_is_up(tmp_path):
    # A bright block on the right (+x), anterior (+y), superior (+z) side of an RAS volume.
    x = np.zeros((10, 12, 8), np.float32)
    x[5:, 6:, 4:] = 1.0
    r = export_slices(Volume(x), tmp_path, dpi=25.4, layer=1.0)
    with Image.open(tmp_path / "layer_00006.png") as img:
        a = np.asarray(img)  # rows from the top
    assert a.shape == (12, 10)
    assert a[:6, 5:].all() and not a[6:].any() and not a[:, :5].any()
    assert r.manifest["layers"][2]["density"] == 0  # below the block


def test_orientation_follows_the_world_not_the_storage(tmp_path, head):
    # The same head stored left-to-right and right-to-left, anterior-to-posterior flipped too.
    ras = Volume(head.intensity, affine=head.affine)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [23.0, 27.0, 0.0]
    lps = Volume(np.ascontiguousarray(head.intensity[::-1, ::-1]), affine=head.affine @ flip)
    a = export_slices(ras, tmp_path / "ras", dpi=DPI, layer=LAYER)
    b = export_slices(lps, tmp_path / "lps", dpi=DPI, layer=LAYER)
    # The printer grid lies at the same place in the world.
    np.testing.assert_allclose(
        a.manifest["settings"]["grid"]["affine"], b.manifest["settings"]["grid"]["affine"], atol=1e-9
    )
    ga = [r["grey"] for r in a.manifest["layers"]]
    gb = [r["grey"] for r in b.manifest["layers"]]
    np.testing.assert_allclose(ga, gb, rtol=0, atol=1e-6)
    sa, sb = _stack(tmp_path / "ras", 58), _stack(tmp_path / "lps", 58)
    assert (sa != sb).mean() < 0.01


# --- the stack -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def export_2d(tmp_path_factory, head_vol):
    out = tmp_path_factory.mktemp("stack2d")
    return export_slices(head_vol, out, dpi=DPI, layer=LAYER)


def test_pngs_are_1bit_with_their_dpi(export_2d):
    m = export_2d.manifest
    n = math.ceil(20 / LAYER)
    assert m["layer_count"] == n == len(list(export_2d.out_dir.glob("layer_*.png")))
    assert m["status"] == "complete" and m["written"] == n and export_2d.complete
    assert (m["width"], m["height"]) == (48, 28)
    for row in m["layers"][::10]:
        with Image.open(export_2d.out_dir / row["file"]) as img:
            assert img.format == "PNG" and img.mode == "1" and img.size == (48, 28)
            assert img.info["dpi"] == pytest.approx(DPI, abs=0.01)
            assert np.asarray(img).mean() == pytest.approx(row["density"])
    on_disk = json.loads((export_2d.out_dir / "manifest.json").read_text())
    assert on_disk["layers"] == m["layers"] and on_disk["settings"]["recipe"]["kernel"] == "floyd-steinberg"


def test_dpi_600x300_read_back(tmp_path):
    vol = Volume(np.random.default_rng(0).random((4, 3, 3)).astype(np.float32))
    r = export_slices(vol, tmp_path, dpi=(600, 300), layer=1.5)
    assert r.manifest["layer_count"] == 2 and (r.manifest["width"], r.manifest["height"]) == (95, 36)
    with Image.open(tmp_path / "layer_00000.png") as img:
        assert img.mode == "1" and img.info["dpi"] == pytest.approx((600, 300), abs=0.01)


def test_densities_follow_the_resampled_grey_levels(export_2d, head_vol):
    m = export_2d.manifest
    dens = np.array([r["density"] for r in m["layers"]])
    grey = np.array([r["grey"] for r in m["layers"]])
    # Error diffusion keeps each layer's mean but for the error dropped at the end of the
    # scan (the last row, the end of each raster row): at most a row and a column's worth.
    # The phantom's Rician background is almost all such error, hence a few % low overall.
    assert abs(dens.mean() - grey.mean()) <= 0.05 * grey.mean()
    assert np.abs(dens - grey).max() <= 1.0 / m["width"] + 1.0 / m["height"] + 1e-9
    # The grey levels are those of the rescaled volume resampled onto the printer's grid.
    rescaled = volbin.rescale(head_vol)
    g = print_grid(head_vol, DPI, LAYER)
    ref = resample_to_grid(rescaled, g.affine, g.shape).compute()
    np.testing.assert_allclose(grey, ref.mean(axis=(0, 1)), rtol=1e-5, atol=1e-7)
    # Seen from a little distance, the stack renders those grey levels.
    stack = _stack(export_2d.out_dir, m["layer_count"])
    ref_up = ref[:, ::-1]  # (column, row-from-top) -> (x, y up), as `_stack`
    err = dither_error(stack, ref_up, sigma=2.0, scope="slice")
    assert abs(err["mean_density_error"]) < 0.05 * grey.mean() and err["perceptual_rms"] < 0.1


@pytest.mark.parametrize("mode", ["slice", "volume"])
def test_resume_rewrites_only_missing_layers(tmp_path, head_vol, mode):
    out = tmp_path / mode
    first = export_slices(head_vol, out, dpi=DPI, layer=LAYER, scope=mode, checkpoint_every=8)
    assert len(first.written) == 58
    original, mtimes = _bytes(out), _mtimes(out)
    for k in (3, 30, 57):
        (out / f"layer_{k:05d}.png").unlink()
    again = export_slices(head_vol, out, dpi=DPI, layer=LAYER, scope=mode, checkpoint_every=8)
    assert again.written == [3, 30, 57]
    assert _bytes(out) == original
    after = _mtimes(out)
    redone = {f"layer_{k:05d}.png" for k in (3, 30, 57)}
    assert {n: t for n, t in after.items() if n not in redone} == {
        n: t for n, t in mtimes.items() if n not in redone
    }
    assert all(after[n] != mtimes[n] for n in redone)
    assert again.manifest["layers"] == first.manifest["layers"]
    none = export_slices(head_vol, out, dpi=DPI, layer=LAYER, scope=mode, checkpoint_every=8)
    assert none.written == [] and _mtimes(out) == after


def test_3d_resumes_from_a_checkpoint_with_the_same_bytes(tmp_path, head_vol):
    whole = export_slices(head_vol, tmp_path / "whole", dpi=DPI, layer=LAYER, scope="volume")
    # A run stopped after 21 layers leaves them and the carry saved at layer 16.
    part = export_slices(
        head_vol, tmp_path / "part", dpi=DPI, layer=LAYER, scope="volume", layers=(0, 21), checkpoint_every=8
    )
    assert part.manifest["status"] == "partial" and part.manifest["written"] == 21
    state = tmp_path / "part" / ".volbin-export"
    assert sorted(p.name for p in state.glob("carry_*.npy")) == ["carry_000016.npy"]
    (tmp_path / "part" / "layer_00020.png").unlink()  # as if stopped while writing it
    rest = export_slices(
        head_vol, tmp_path / "part", dpi=DPI, layer=LAYER, scope="volume", checkpoint_every=8
    )
    assert rest.written == list(range(20, 58)) and rest.complete
    assert _bytes(tmp_path / "part") == _bytes(tmp_path / "whole")
    assert not list(state.glob("carry_*.npy"))  # removed once the stack is complete
    # 3D diffusion differs from 2D (error goes into the next layer) but keeps the densities.
    dens = [r["density"] for r in whole.manifest["layers"]]
    grey = [r["grey"] for r in whole.manifest["layers"]]
    assert abs(np.mean(dens) - np.mean(grey)) < 0.05 * np.mean(grey)  # see above


def test_other_settings_need_force(tmp_path, head_vol):
    export_slices(head_vol, tmp_path, dpi=DPI, layer=LAYER, layers=(0, 3))
    with pytest.raises(OutputFileError, match=r"other settings.*dpi"):
        export_slices(head_vol, tmp_path, dpi=(25.4, 25.4), layer=LAYER, layers=(0, 3))
    r = export_slices(head_vol, tmp_path, dpi=(25.4, 25.4), layer=LAYER, layers=(0, 3), force=True)
    assert r.written == [0, 1, 2] and r.manifest["width"] == 24
    (tmp_path / "notes.txt").write_text("mine")
    export_slices(head_vol, tmp_path, dpi=DPI, layer=LAYER, layers=(0, 2), force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the export's files are replaced


def test_labels_give_one_exclusive_stack_per_label(tmp_path, head):
    vol = Volume(head.labels, affine=head.affine)
    r = export_slices(vol, tmp_path, dpi=DPI, layer=LAYER, labels=True)
    values = sorted(v for v in np.unique(head.labels) if v)
    assert r.manifest["label_folders"] == {str(v): f"label_{v}" for v in values}
    n = r.manifest["layer_count"]
    stacks = {v: _stack(tmp_path / f"label_{v}", n) for v in values}
    for v in values:
        with Image.open(tmp_path / f"label_{v}" / "layer_00025.png") as img:
            assert img.mode == "1" and img.info["dpi"] == pytest.approx(DPI, abs=0.01)
    total = sum(s.astype(int) for s in stacks.values())
    assert total.max() == 1  # one material per printer voxel
    # Each label's printed volume follows its voxel count (1 mm^3 voxels).
    px_mm3 = 0.5 * 1.0 * LAYER
    for v in values:
        printed = stacks[v].sum() * px_mm3
        assert printed == pytest.approx((head.labels == v).sum(), rel=0.1)
    row = r.manifest["layers"][25]
    assert set(row["files"]) == {str(v) for v in values}
    assert sum(row["density"].values()) <= 1.0


def test_memory_does_not_grow_with_layers(tmp_path):
    x = np.random.default_rng(0).random((20, 20, 8)).astype(np.float32)
    vol = Volume(x)  # 1 mm voxels; 600 x 600 pixels per layer, 1/30 mm thick: 240 layers
    opts = {"dpi": 762, "layer": 1 / 30}
    layer_bytes = 600 * 600 * 4
    peaks = {}
    for mode in ("slice", "volume"):
        export_slices(vol, tmp_path / f"warm{mode}", layers=(0, 2), scope=mode, **opts)
        for n in (6, 12):
            tracemalloc.start()
            export_slices(vol, tmp_path / f"{mode}{n}", layers=(0, n), scope=mode, **opts)
            peaks[mode, n] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peaks[mode, 12] <= 1.1 * peaks[mode, 6], peaks
        assert peaks[mode, 12] < 8 * layer_bytes, peaks  # a few layers, not twelve


def test_4d_needs_a_volume_index(tmp_path):
    x = np.random.default_rng(0).random((6, 5, 4, 2)).astype(np.float32)
    with pytest.raises(VolbinDataError, match="volume_index"):
        export_slices(x, tmp_path, dpi=DPI, layer=1.0)
    r = export_slices(x, tmp_path, dpi=DPI, layer=1.0, volume_index=1)
    assert r.manifest["layer_count"] == 4


def test_bad_arguments(tmp_path, head_vol):
    with pytest.raises(ValueError, match="`scope`"):
        export_slices(head_vol, tmp_path, scope="4d")
    with pytest.raises(ValueError, match="`dpi`"):
        export_slices(head_vol, tmp_path, dpi=(600, -1))
    with pytest.raises(ValueError, match="`layer`"):
        export_slices(head_vol, tmp_path, layer=0)
    with pytest.raises(ValueError, match="`kernel`"):
        export_slices(head_vol, tmp_path, kernel="nope")
    with pytest.raises(ValueError, match="`layers`"):
        export_slices(head_vol, tmp_path, dpi=DPI, layer=LAYER, layers=(5, 100))
    with pytest.raises(VolbinDataError, match="integers"):
        export_slices(head_vol, tmp_path, dpi=DPI, layer=LAYER, labels=True)


# --- command line --------------------------------------------------------------------------------
def test_cli_export_slices(tmp_path, head, capsys):
    src = volbin.save(Volume(head.intensity, affine=head.affine), tmp_path / "head.nii.gz")
    out = tmp_path / "stack"
    args = ["export-slices", str(src), str(out), *"--dpi 50.8x25.4 --layer 350um".split()]
    args += "--scope volume --layers 0:6 --no-progress".split()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "wrote 6 layer(s)" in text and "partial" in text
    m = json.loads((out / "manifest.json").read_text())
    assert m["settings"]["scope"] == "volume" and m["layer_count"] == 58 and m["written"] == 6
    assert main(args) == 0
    assert "wrote 0 layer(s)" in capsys.readouterr().out
    assert main([*args[:5], "--layer", "0.4mm", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("volbin: error:") and "--force" in err
    assert main(["export-slices", str(src), str(out), "--dpi", "fine"]) == 2
    assert "not a resolution" in capsys.readouterr().err
    assert os.path.exists(out / "layer_00005.png")
