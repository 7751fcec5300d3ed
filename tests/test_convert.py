"""Tests of volbin.convert: NIfTI <-> .npy <-> zarr round trips, against nibabel and numpy."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr

from volbin import convert
from volbin.cli import main
from volbin.errors import InputFileError, OutputFileError, VolbinWarning
from volbin.io import load
from volbin.phantom import phantom


def _oblique() -> np.ndarray:
    c, s = np.cos(0.4), np.sin(0.4)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.9, 1.2, 2.0])
    aff[:3, 3] = [-80.0, 110.0, -60.0]
    return aff


def _nifti(path: Path, data: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, _oblique())
    img.header.set_xyzt_units("mm", "msec")
    img.set_qform(_oblique(), code=1)
    img.set_sform(_oblique(), code=4)
    img.to_filename(path)
    return path


def _spatial(header: nib.Nifti1Header) -> tuple:
    return (
        header.get_zooms(),
        header.get_xyzt_units(),
        int(header["qform_code"]),
        int(header["sform_code"]),
    )


@pytest.mark.parametrize("first", [".zarr", ".npy", ".nii"])
@pytest.mark.parametrize("ndim", [3, 4])
def test_round_trip_through_every_format_matches_nibabel(tmp_path: Path, first: str, ndim: int) -> None:
    ph = phantom((20, 24, 18), n_volumes=3 if ndim == 4 else None, seed=2, dtype="int16")
    src = _nifti(tmp_path / "src.nii.gz", ph.intensity)
    ref = nib.load(src)
    mid = tmp_path / f"mid{first}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if first == ".npy" else "error", VolbinWarning)
        convert(src, mid)
    np.testing.assert_array_equal(load(mid).compute(), np.asanyarray(ref.dataobj))
    back = convert(mid, tmp_path / "back.nii.gz")
    img = nib.load(back)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.asanyarray(ref.dataobj))
    assert img.get_data_dtype() == np.int16
    if first == ".npy":  # .npy holds values only
        np.testing.assert_array_equal(img.affine, np.eye(4))
    else:
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-6)
        assert _spatial(img.header) == _spatial(ref.header)


def test_npy_output_warns_that_affine_is_dropped(tmp_path: Path) -> None:
    src = _nifti(tmp_path / "a.nii", np.ones((4, 5, 6), np.float32))
    with pytest.warns(VolbinWarning, match="values only"):
        convert(src, tmp_path / "a.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(tmp_path / "a.npy", tmp_path / "b.npy")  # nothing to lose


def test_stack_with_volumes_first_goes_to_nifti_order(tmp_path: Path) -> None:
    stack = np.random.default_rng(0).random((5, 8, 9, 7), dtype=np.float32)  # (T, X, Y, Z)
    np.save(tmp_path / "s.npy", stack)
    z = convert(tmp_path / "s.npy", tmp_path / "s.zarr", volume_axis=0)
    assert zarr.open_array(str(z), mode="r").attrs["volume_axis"] == 0
    assert load(z).volume_axis == 0  # the zarr remembers its volume axis
    nii = convert(z, tmp_path / "s.nii")
    np.testing.assert_array_equal(nib.load(nii).get_fdata(), np.moveaxis(stack, 0, 3))


def test_big_stack_streams_through_zarr_in_chunks(tmp_path: Path) -> None:
    ph = phantom((32, 36, 30), n_volumes=12, seed=4)
    src = _nifti(tmp_path / "big.nii", ph.intensity)
    z = convert(src, tmp_path / "big.zarr", chunk_bytes=2**16)
    arr = zarr.open_array(str(z), mode="r")
    assert arr.shape == (32, 36, 30, 12) and arr.nchunks > 12  # slabs, not one block
    np.testing.assert_array_equal(arr[...], ph.intensity)
    out = convert(z, tmp_path / "big.nii.gz", chunk_bytes=2**15)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), ph.intensity)


def test_zarr_stack_loads_in_chunks_of_about_chunk_bytes(tmp_path: Path) -> None:
    stack = np.random.default_rng(0).random((32, 36, 30, 12), dtype=np.float32)
    src = _nifti(tmp_path / "s.nii", stack)
    z = convert(src, tmp_path / "s.zarr", chunk_bytes=2**16)
    chunks = load(z, chunk_bytes=2**16).chunks
    largest = int(np.prod([max(c) for c in chunks])) * stack.itemsize
    assert largest <= 4 * 2**16  # whole zarr chunks of at most 64 KiB, a few of them


def test_scaled_and_boolean_values(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    img.to_filename(tmp_path / "scaled.nii")
    z = convert(tmp_path / "scaled.nii", tmp_path / "scaled.zarr")
    np.testing.assert_array_equal(load(z).compute(), nib.load(tmp_path / "scaled.nii").get_fdata())
    np.save(tmp_path / "m.npy", np.arange(60).reshape(3, 4, 5) % 3 == 0)
    nii = convert(tmp_path / "m.npy", tmp_path / "m.nii.gz")
    got = nib.load(nii)
    assert got.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), np.load(tmp_path / "m.npy"))


def test_refuses_to_overwrite_and_reports_bad_input(tmp_path: Path) -> None:
    src = _nifti(tmp_path / "a.nii", np.ones((4, 5, 6), np.float32))
    dst = convert(src, tmp_path / "a.zarr")
    with pytest.raises(OutputFileError, match="exists"):
        convert(src, dst)
    convert(src, dst, force=True)
    assert not (tmp_path / "a.json").exists()  # no sidecar next to a converted image
    with pytest.raises(OutputFileError, match="is the input file"):
        convert(src, src, force=True)
    with pytest.raises(ValueError, match="must end with"):
        convert(src, tmp_path / "a.mgz")
    with pytest.raises(InputFileError, match="no such file"):
        convert(tmp_path / "missing.nii", tmp_path / "m.nii")


def test_cli_convert(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _nifti(tmp_path / "a.nii.gz", phantom((12, 14, 10)).intensity)
    assert main(["convert", str(src), str(tmp_path / "a.zarr"), "--chunk-mb", "0.01"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "a.zarr")]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "a.zarr"), str(tmp_path / "b.nii"), "--force"]) == 0
    np.testing.assert_array_equal(nib.load(tmp_path / "b.nii").get_fdata(), nib.load(src).get_fdata())
