"""Tests of volbin.io against nibabel, numpy and zarr as references."""

from __future__ import annotations

import errno
import gc
import gzip
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from volbin.errors import InputFileError, OutputFileError, VolbinDataError
from volbin.io import _NpyReader, load, read_sidecar, save, sidecar_path, to_jsonable
from volbin.volume import DEFAULT_CHUNK_BYTES, Volume

ROOT = Path(__file__).resolve().parents[1]


# --- helpers ---------------------------------------------------------------------------------
def _affine() -> np.ndarray:
    """An oblique affine (rotation, anisotropic voxels, offset) that a qform can hold."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.9, 1.1, 2.5])
    aff[:3, 3] = [-90.0, 126.0, -72.0]
    return aff


def _write_nifti(
    path: Path,
    data: np.ndarray,
    *,
    qcode: int = 1,
    scode: int = 4,
    units: tuple[str, str] = ("mm", "msec"),
    tr: float = 2000.0,
    klass: type = nib.Nifti1Image,
) -> Path:
    img = klass(data, _affine(), dtype=data.dtype)
    hdr = img.header
    hdr.set_qform(_affine(), qcode)
    hdr.set_sform(_affine(), scode)
    hdr.set_xyzt_units(*units)
    if data.ndim == 4:
        hdr.set_zooms((*hdr.get_zooms()[:3], tr))
    img.to_filename(path)
    return path


def _patch_scaling(path: Path, slope: float, inter: float) -> None:
    """Set scl_slope/scl_inter in the header of an uncompressed .nii in place."""
    with open(path, "r+b") as f:
        hdr = nib.Nifti1Header.from_fileobj(f)
        hdr["scl_slope"], hdr["scl_inter"] = slope, inter
        f.seek(0)
        f.write(hdr.binaryblock)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old")))


def _failing(shape: tuple[int, ...], chunks: tuple[int, ...], exc: BaseException) -> da.Array:
    """A dask array whose computation raises `exc` in one of its later blocks."""

    def fail(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info is not None and block_info[None]["chunk-location"][-1] == 1:
            raise exc
        return block

    return da.zeros(shape, chunks=chunks, dtype=np.float32).map_blocks(fail, dtype=np.float32)


# --- NIfTI reading against nibabel -----------------------------------------------------------
DISK_DTYPES = [
    "uint8",
    "int8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "float32",
    "float64",
]


@pytest.mark.parametrize("dtype", DISK_DTYPES)
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_load_every_dtype_like_nibabel(tmp_path: Path, dtype: str, ext: str) -> None:
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    data = rng.uniform(max(info.min, -1e6), min(info.max, 1e6), (5, 6, 7)).astype(dtype)
    path = _write_nifti(tmp_path / f"x{ext}", data)
    ref = np.asanyarray(nib.load(path).dataobj)
    vol = load(path, chunk_bytes=64)
    out = vol.compute()
    assert vol.dtype == ref.dtype == np.dtype(dtype)
    assert out.dtype == vol.dtype
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize(
    ("dtype", "slope", "inter"),
    [
        ("int16", 2.0, 0.0),
        ("int16", 1.0, 0.0),
        ("uint8", 0.5, 10.0),
        ("int32", 1.0, -3.0),
        ("float32", 2.0, 1.0),
        ("float64", 0.25, 0.0),
        ("int16", np.nan, np.nan),
        ("int16", 0.0, 5.0),  # slope 0 means "no scaling" in NIfTI
    ],
)
def test_scaling_applied_like_nibabel(tmp_path: Path, dtype: str, slope: float, inter: float) -> None:
    data = np.arange(4 * 5 * 6).reshape(4, 5, 6).astype(dtype)
    path = _write_nifti(tmp_path / "scaled.nii", data)
    _patch_scaling(path, slope, inter)
    img = nib.load(path)
    ref = np.asanyarray(img.dataobj)
    vol = load(path, chunk_bytes=40)
    out = vol.compute()
    assert vol.dtype == ref.dtype == out.dtype
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(out, img.get_fdata())
    if slope == 2.0 and dtype == "int16":
        assert vol.dtype == np.float64
    if (slope == 1.0 and inter == 0.0) or np.isnan(slope) or slope == 0:
        assert vol.dtype == np.dtype(dtype)


def test_big_endian_is_read_natively(real_t1_path: Path) -> None:
    img = nib.load(real_t1_path)
    assert img.get_data_dtype().byteorder == ">"
    vol = load(real_t1_path)
    assert vol.dtype == np.int16 and vol.dtype.isnative
    np.testing.assert_array_equal(vol.compute(), np.asanyarray(img.dataobj))


def test_real_mri_matches_nibabel(real_mri_path: Path, tmp_path: Path) -> None:
    img = nib.load(real_mri_path)
    vol = load(real_mri_path, chunk_bytes=2**16)
    np.testing.assert_array_equal(vol.compute(), np.asanyarray(img.dataobj))
    np.testing.assert_array_equal(vol.affine, img.affine)
    assert vol.volume_axis == (3 if img.ndim == 4 else None)
    assert vol.zooms == pytest.approx(img.header.get_zooms()[:3])
    out = save(vol, tmp_path / "copy.nii.gz")
    back = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(img.dataobj))
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)
    assert back.header.get_zooms() == pytest.approx(img.header.get_zooms())


@pytest.mark.parametrize("ndim", [3, 4])
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_header_round_trip(tmp_path: Path, ndim: int, ext: str) -> None:
    shape = (6, 7, 5, 3)[:ndim]
    data = np.random.default_rng(1).integers(0, 1000, shape).astype(np.int16)
    src = _write_nifti(tmp_path / f"in{ext}", data, qcode=1, scode=4)
    vol = load(src)
    out = save(vol, tmp_path / f"out{ext}")
    ref, back = nib.load(src), nib.load(out)
    assert isinstance(back, nib.Nifti1Image) and not isinstance(back, nib.Nifti2Image)
    np.testing.assert_array_equal(back.affine, ref.affine)
    np.testing.assert_allclose(back.header.get_qform(), ref.header.get_qform(), atol=1e-6)
    np.testing.assert_array_equal(back.header.get_sform(), ref.header.get_sform())
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 4
    assert back.header.get_zooms() == ref.header.get_zooms()
    assert back.header.get_xyzt_units() == ("mm", "msec")
    np.testing.assert_array_equal(back.header["dim"], ref.header["dim"])
    assert back.header.get_data_dtype() == np.int16
    slope, inter = back.header.get_slope_inter()
    assert slope is None and inter is None
    assert back.header["descrip"].tobytes().startswith(b"volbin ")
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)
    # The same header nibabel itself makes from (data, affine, header), apart from our fields.
    expected = nib.Nifti1Image(data, vol.affine, vol.header).header
    for field in (
        "qform_code",
        "sform_code",
        "quatern_b",
        "quatern_c",
        "quatern_d",
        "pixdim",
        "srow_x",
        "srow_y",
        "srow_z",
        "xyzt_units",
        "dim",
    ):
        np.testing.assert_array_equal(back.header[field], expected[field], err_msg=field)


def test_binary_output_header(tmp_path: Path) -> None:
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 2:4, 3:5] = True
    out = save(mask, tmp_path / "mask.nii.gz")
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    assert (float(img.header["cal_min"]), float(img.header["cal_max"])) == (0.0, 1.0)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), mask.astype(np.uint8))
    # No input header: nibabel's rules (sform "aligned", qform unknown) with our affine.
    assert int(img.header["sform_code"]) == 2 and int(img.header["qform_code"]) == 0
    np.testing.assert_array_equal(img.affine, np.eye(4))


def test_nifti2_input_becomes_nifti1(tmp_path: Path) -> None:
    data = np.random.default_rng(2).random((5, 4, 3, 2)).astype(np.float32)
    src = _write_nifti(tmp_path / "in2.nii", data, klass=nib.Nifti2Image)
    assert isinstance(nib.load(src), nib.Nifti2Image)
    vol = load(src)
    assert type(vol.header) is nib.Nifti1Header
    np.testing.assert_array_equal(vol.compute(), data)
    np.testing.assert_array_equal(vol.affine, nib.load(src).affine)
    out = save(vol, tmp_path / "out.nii")
    back = nib.load(out)
    assert type(back) is nib.Nifti1Image
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 4)
    # NIfTI-1 stores the sform in float32, NIfTI-2 in float64.
    np.testing.assert_allclose(back.affine, nib.load(src).affine, rtol=1e-6, atol=1e-6)
    assert back.header.get_xyzt_units() == ("mm", "msec")
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)


def test_nifti2_written_when_nifti1_cannot_hold_the_shape(tmp_path: Path) -> None:
    data = np.zeros((40000, 1, 2), np.uint8)
    data[12345, 0, 1] = 1
    out = save(data, tmp_path / "long.nii")
    img = nib.load(out)
    assert isinstance(img, nib.Nifti2Image)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    vol = load(out)
    assert type(vol.header) is nib.Nifti2Header
    np.testing.assert_array_equal(vol.compute(), data)


def test_nifti_with_extension_round_trips(tmp_path: Path) -> None:
    data = np.ones((3, 4, 5), np.float32)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"hello volbin"))
    img.to_filename(tmp_path / "ext.nii")
    out = save(load(tmp_path / "ext.nii"), tmp_path / "out.nii")
    back = nib.load(out)
    assert [e.get_content() for e in back.header.extensions] == [b"hello volbin"]
    np.testing.assert_array_equal(back.get_fdata(), data)


# --- .npy and zarr ---------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", [(7, 6, 5), (3, 7, 6, 5)])
def test_npy_orders(tmp_path: Path, order: str, shape: tuple[int, ...]) -> None:
    data = np.asarray(np.random.default_rng(3).random(shape), order=order).astype(">f8", order=order)
    np.save(tmp_path / "a.npy", data)
    slow = 0 if order == "C" else len(shape) - 1
    vol = load(tmp_path / "a.npy", chunk_bytes=2 * 8 * int(np.prod(shape)) // shape[slow])
    assert vol.chunks[slow][0] == 2  # slabs two steps thick along the slowest axis
    assert all(vol.chunks[a] == (s,) for a, s in enumerate(shape) if a != slow)
    assert vol.dtype == np.float64 and vol.dtype.isnative
    np.testing.assert_array_equal(vol.compute(), data)
    np.testing.assert_array_equal(vol.data[1, ::-2, 2:4].compute(), data[1, ::-2, 2:4])
    assert vol.affine.tolist() == np.eye(4).tolist() and vol.header is None
    assert vol.volume_axis == (3 if len(shape) == 4 else None)


def test_npy_reader_slicing_matches_numpy(tmp_path: Path) -> None:
    for order in "CF":
        data = np.asarray(np.arange(5 * 6 * 7).reshape(5, 6, 7), order=order)
        np.save(tmp_path / "r.npy", data)
        with open(tmp_path / "r.npy", "rb") as f:
            np.lib.format.read_magic(f)
            np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
        reader = _NpyReader(str(tmp_path / "r.npy"), data.shape, data.dtype, offset, order == "F")
        keys = [
            (slice(None),) * 3,
            (slice(1, 4), slice(None), slice(2, 3)),
            (2, slice(None), -1),
            (slice(None, None, -2), 3, slice(1, None, 3)),
            (Ellipsis, 4),
            (slice(3, 3), slice(None), slice(None)),
            ([0, 2], slice(None), slice(None)),
        ]
        for key in keys:
            np.testing.assert_array_equal(reader[key], data[key], err_msg=f"{order} {key}")
        reader2 = pickle.loads(pickle.dumps(reader))
        np.testing.assert_array_equal(reader2[1:3], data[1:3])


def test_npy_volume_axis_zero(tmp_path: Path) -> None:
    stack = np.random.default_rng(4).random((3, 4, 5, 6)).astype(np.float32)  # (T, X, Y, Z)
    np.save(tmp_path / "stack.npy", stack)
    vol = load(tmp_path / "stack.npy", volume_axis=0)
    assert vol.volume_axis == 0 and vol.spatial_shape == (4, 5, 6)
    out = save(vol, tmp_path / "stack.nii")
    img = nib.load(out)
    assert img.shape == (4, 5, 6, 3)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.moveaxis(stack, 0, 3))
    back = save(vol, tmp_path / "stack2.npy")
    np.testing.assert_array_equal(np.load(back), stack)
    assert load(back, volume_axis=0).volume_axis == 0


def test_zarr_round_trip(tmp_path: Path) -> None:
    data = np.random.default_rng(5).integers(0, 500, (6, 7, 8, 2)).astype(np.int16)
    src = _write_nifti(tmp_path / "in.nii.gz", data)
    vol = load(src)
    out = save(vol, tmp_path / "out.zarr")
    assert out.is_dir()
    back = load(out)
    assert back.source is not None and back.source["format"] == "zarr"
    np.testing.assert_array_equal(back.compute(), data)
    np.testing.assert_array_equal(back.affine, vol.affine)
    assert back.header.binaryblock == vol.header.binaryblock
    assert back.volume_axis == 3
    assert read_sidecar(out)["output"]["format"] == "zarr"
    # Overwriting a zarr directory with force replaces it.
    save(np.zeros((2, 3, 4), np.float32), out, force=True)
    np.testing.assert_array_equal(load(out).compute(), np.zeros((2, 3, 4), np.float32))
    assert _leftovers(tmp_path) == []


def test_zarr_written_by_zarr(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    z = zarr.open_array(
        str(tmp_path / "ext.zarr"),
        mode="w",
        shape=data.shape,
        chunks=(1, 3, 4, 2),
        dtype=data.dtype,
    )
    z[:] = data
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    z.attrs.update({"affine": aff.tolist(), "volume_axis": 0, "header": {"descrip": "ext"}})
    vol = load(tmp_path / "ext.zarr")
    assert vol.volume_axis == 0
    np.testing.assert_array_equal(vol.affine, aff)
    assert vol.header["descrip"].tobytes().startswith(b"ext")
    # Default chunks hold whole zarr chunks.
    for axis, zc in enumerate((1, 3, 4, 2)):
        assert all(c % zc == 0 for c in vol.chunks[axis][:-1])
    np.testing.assert_array_equal(vol.compute(), data)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".npy", ".zarr"])
def test_save_dtypes(tmp_path: Path, ext: str) -> None:
    mask = np.random.default_rng(6).random((4, 5, 6)) > 0.5
    vol = load(save(mask, tmp_path / f"m{ext}"))
    assert vol.dtype == np.uint8
    np.testing.assert_array_equal(vol.compute(), mask)
    f32 = np.random.default_rng(6).random((4, 5, 6)).astype(np.float32)
    assert load(save(f32, tmp_path / f"f{ext}")).dtype == np.float32
    assert load(save(f32, tmp_path / f"d{ext}", dtype="float64")).dtype == np.float64
    if ext in (".npy", ".zarr"):
        b = load(save(mask, tmp_path / f"b{ext}", dtype="bool"))
        assert b.dtype == np.bool_
        np.testing.assert_array_equal(b.compute(), mask)
    else:
        with pytest.raises(ValueError, match="NIfTI has no boolean"):
            save(mask, tmp_path / f"b{ext}", dtype="bool")
        with pytest.raises(ValueError, match="cannot be stored in NIfTI"):
            save(f32, tmp_path / f"h{ext}", dtype="float16")


def test_save_npy_bytes_do_not_depend_on_chunks(tmp_path: Path) -> None:
    data = np.random.default_rng(7).random((6, 7, 8)).astype(np.float32)
    nii = _write_nifti(tmp_path / "in.nii", data)
    slabs_z = save(load(nii, chunk_bytes=6 * 7 * 4 * 2), tmp_path / "f.npy")  # slabs along z
    with open(slabs_z, "rb") as f:
        np.lib.format.read_magic(f)
        assert np.lib.format.read_array_header_1_0(f)[1] is False  # C order, always
    np.testing.assert_array_equal(np.load(slabs_z), data)
    slabs_x = save(da.from_array(data, chunks=(2, 7, 8)), tmp_path / "c.npy")
    assert slabs_x.read_bytes() == slabs_z.read_bytes()


def test_save_accepts_numpy_dask_and_volume(tmp_path: Path) -> None:
    data = np.random.default_rng(8).random((5, 6, 7)).astype(np.float32)
    for i, obj in enumerate([data, da.from_array(data, chunks=3), Volume(da.from_array(data))]):
        out = save(obj, tmp_path / f"o{i}.nii")
        np.testing.assert_array_equal(nib.load(out).get_fdata(dtype=np.float32), data)


def test_gzip_output_is_standard_and_deterministic(tmp_path: Path) -> None:
    data = (np.random.default_rng(9).random((20, 21, 22)) > 0.7).astype(np.uint8)
    a = save(data, tmp_path / "a.nii.gz", sidecar=False)
    b = save(da.from_array(data, chunks=(5, 21, 4)), tmp_path / "b.nii.gz", sidecar=False)
    assert a.read_bytes() == b.read_bytes()
    raw = gzip.decompress(a.read_bytes())
    hdr = nib.Nifti1Header.from_fileobj(gzip.open(a))
    assert len(raw) == int(hdr["vox_offset"]) + data.size
    for level in (0, 3):
        c = save(data, tmp_path / f"c{level}.nii.gz", sidecar=False, compress_level=level)
        np.testing.assert_array_equal(np.asanyarray(nib.load(c).dataobj), data)
    with pytest.raises(ValueError, match="compress_level"):
        save(data, tmp_path / "bad.nii.gz", compress_level=6)
    with pytest.raises(ValueError, match="compress_level"):
        save(data, tmp_path / "bad.nii", compress_level=1)


# --- laziness, chunks, names -----------------------------------------------------------------
def test_default_chunks_are_whole_slabs(tmp_path: Path) -> None:
    data = np.zeros((10, 11, 12, 4), np.float32)
    path = _write_nifti(tmp_path / "s.nii", data)
    vol = load(path)  # small: one chunk
    assert vol.chunks == tuple((s,) for s in data.shape)
    vol = load(path, chunk_bytes=10 * 11 * 12 * 4)  # one volume per chunk
    assert vol.chunks == ((10,), (11,), (12,), (1, 1, 1, 1))
    vol = load(path, chunk_bytes=10 * 11 * 4 * 5)  # five z-slices of one volume
    assert vol.chunks[:2] == ((10,), (11,)) and vol.chunks[2] == (5, 5, 2)
    vol = load(path, chunks=(5, 11, 6, 2))
    assert vol.chunks == ((5, 5), (11,), (6, 6), (2, 2))
    with pytest.raises(ValueError, match="chunk_bytes"):
        load(path, chunk_bytes=0)


def test_names_are_deterministic(tmp_path: Path) -> None:
    path = _write_nifti(tmp_path / "d.nii.gz", np.zeros((4, 5, 6), np.int16))
    a, b = load(path), load(path)
    assert a.data.name == b.data.name
    assert load(path, chunk_bytes=40).data.name != a.data.name
    os.utime(path, ns=(0, 10**18))
    assert load(path).data.name != a.data.name
    np.save(tmp_path / "d.npy", np.zeros((4, 5, 6, 2)))
    assert load(tmp_path / "d.npy").data.name == load(tmp_path / "d.npy").data.name
    assert load(tmp_path / "d.npy", volume_axis=0).data.name != load(tmp_path / "d.npy").data.name


def test_load_reads_no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (4096, 4096, 4096)  # 64 GiB, sparse: nothing on disk but the header
    path = tmp_path / "huge.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        f.truncate(f.tell() + int(np.prod(shape)))
    reads: list[int] = []
    real_fromfile = np.fromfile

    def counting(*args: object, **kwargs: object) -> np.ndarray:
        reads.append(1)
        return real_fromfile(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(np, "fromfile", counting)
    t = time.perf_counter()
    vol = load(path)
    assert time.perf_counter() - t < 2.0
    assert reads == []
    assert vol.shape == shape and vol.chunks[1:] == ((4096,), (4096,))
    assert vol.chunks[0][0] == DEFAULT_CHUNK_BYTES // 4096**2
    assert load(path).data.name == vol.data.name
    assert int(vol.data[100, :8, :8].sum().compute()) == 0
    assert len(reads) == 1


def test_pickled_graph_computes(tmp_path: Path) -> None:
    data = np.random.default_rng(10).random((5, 6, 7)).astype(np.float32)
    for name in ("p.nii.gz", "p.npy"):
        path = save(data, tmp_path / name, sidecar=False)
        vol = load(path, chunk_bytes=100)  # owns the decompressed copy of a .nii.gz
        arr = pickle.loads(pickle.dumps(vol.data))
        np.testing.assert_array_equal(arr.compute(), data)


def test_gz_temporary_copy_lives_as_long_as_the_graph(tmp_path: Path, tmpdir_env: Path) -> None:
    path = save(np.ones((4, 5, 6), np.float32), tmp_path / "g.nii.gz", sidecar=False)
    vol = load(path)
    assert len(list(tmpdir_env.iterdir())) == 1
    derived = vol.data + 1
    del vol
    gc.collect()
    assert float(derived.sum().compute()) == 240.0
    del derived
    gc.collect()
    assert list(tmpdir_env.iterdir()) == []


def test_loaded_files_are_reduced_from_their_reader_with_the_graphs_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Range and histogram passes over a loaded file read its blocks from the reader, without
    a dask graph (`block_source`), with the graph's results; above `SOURCE_MAX_BYTES` the
    graph is used (it reports progress)."""
    import volbin
    from volbin import volume

    rng = np.random.default_rng(0)
    x = (rng.random((20, 24, 18, 2)) * 1000).astype(np.float32)
    img = nib.Nifti1Image(x, np.diag([1.0, 2.0, 3.0, 1.0]))
    img.header.set_slope_inter(2.0, 1.0)  # scaled on read, by the reader as by the graph
    nib.save(img, tmp_path / "s.nii.gz")
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    for name in ("s.nii.gz", "f.npy"):
        vol = load(tmp_path / name, chunk_bytes=4000)
        assert vol.data.numblocks[-1] > 1
        assert volume.block_source(vol.data) is not None
        values = np.asarray(vol.data.compute())
        graph = Volume(da.from_array(values, chunks=vol.data.chunks), affine=vol.affine, volume_axis=3)
        graph = Volume(graph.data.map_blocks(np.copy), affine=vol.affine, volume_axis=3)
        assert volume.block_source(graph.data) is None
        for scope in ("volume", "slice"):
            for curve in ("linear", "equalize"):
                t = volbin.threshold(vol, "otsu", scope=scope, curve=curve)
                np.testing.assert_array_equal(t, volbin.threshold(graph, "otsu", scope=scope, curve=curve))
    monkeypatch.setattr(volume, "SOURCE_MAX_BYTES", x.nbytes - 1)
    assert volume.block_source(load(tmp_path / "f.npy").data) is None


def test_peak_memory_follows_chunks(tmp_path: Path) -> None:
    # 256 MiB of zeros in sparse .nii and .npy files, summed in 4 MiB slabs, in a fresh process:
    # reading whole files (or keeping memmapped pages) would grow the peak RSS by 256 MiB.
    shape = (512, 512, 256)
    nbytes = 4 * int(np.prod(shape))
    with open(tmp_path / "big.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.truncate(f.tell() + nbytes)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    with open(tmp_path / "big.nii", "wb") as f:
        hdr.write_to(f)
        f.truncate(int(hdr["vox_offset"]) + nbytes)
    script = (
        "import resource, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from volbin.io import load\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"for name in ('big.npy', 'big.nii'):\n"
        f"    v = load({str(tmp_path)!r} + '/' + name, chunk_bytes=4 * 2**20)\n"
        "    assert float(v.data.sum().compute(num_workers=2)) == 0.0\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    grown_mib = int(out.stdout.strip())
    assert grown_mib < 96, f"peak RSS grew by {grown_mib} MiB reading 256 MiB files"


# --- bad inputs ------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        load(tmp_path / "nope.nii.gz")


def test_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputFileError, match=r"unknown file format.*\.nii\.gz"):
        load(tmp_path / "notes.txt")


@pytest.mark.parametrize("name", ["fake.nii", "fake.nii.gz", "fake.npy"])
def test_not_an_image(tmp_path: Path, name: str, tmpdir_env: Path) -> None:
    content = b"this is not an image at all, just some text " * 20
    if name.endswith(".gz"):
        content = gzip.compress(content)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputFileError, match=r"not a (NIfTI image|NumPy \.npy file).*volbin reads"):
        load(tmp_path / name)
    assert list(tmpdir_env.iterdir()) == []


def test_compression_recognised_by_content(tmp_path: Path, tmpdir_env: Path) -> None:
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "plain.nii")
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "packed.nii.gz")
    os.rename(tmp_path / "plain.nii", tmp_path / "plain.nii.gz")
    os.rename(tmp_path / "packed.nii.gz", tmp_path / "packed.nii")
    for name in ("plain.nii.gz", "packed.nii"):
        vol = load(tmp_path / name)
        np.testing.assert_array_equal(vol.compute(), data)
        del vol
    gc.collect()
    assert list(tmpdir_env.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "crc"])
def test_corrupt_gzip(tmp_path: Path, damage: str, tmpdir_env: Path) -> None:
    data = np.random.default_rng(11).random((20, 20, 20)).astype(np.float32)
    good = save(data, tmp_path / "brain.nii.gz", sidecar=False).read_bytes()
    bad = bytearray(good)
    if damage == "truncate":
        bad = bad[: len(bad) // 2]
    elif damage == "flip":
        for i in range(len(bad) // 2, len(bad) // 2 + 64):
            bad[i] ^= 0xFF
    else:
        bad[-8] ^= 0xFF  # CRC32 of the trailer
    (tmp_path / "brain.nii.gz").write_bytes(bytes(bad))
    with pytest.raises(InputFileError, match=r"brain\.nii\.gz: truncated or corrupt gzip data"):
        load(tmp_path / "brain.nii.gz")
    assert list(tmpdir_env.iterdir()) == []


@pytest.mark.parametrize("ext", [".nii", ".npy"])
def test_truncated_file(tmp_path: Path, ext: str) -> None:
    data = np.ones((10, 10, 10), np.float32)
    path = save(data, tmp_path / f"t{ext}", sidecar=False)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(InputFileError, match="truncated"):
        load(path)


@pytest.mark.parametrize(
    ("shape", "ext"),
    [((4, 5), ".nii"), ((2, 3, 4, 5, 6), ".nii.gz"), ((4, 5), ".npy"), ((2,) * 5, ".npy")],
)
def test_wrong_dimensionality(tmp_path: Path, shape: tuple[int, ...], ext: str) -> None:
    data = np.zeros(shape, np.float32)
    path = tmp_path / f"x{ext}"
    if ext == ".npy":
        np.save(path, data)
    else:
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(
        VolbinDataError,
        match=rf"x{ext}.*{len(shape)}D.*{shape}".replace("(", r"\(").replace(")", r"\)"),
    ):
        load(path)


def test_unsupported_dtypes(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4), np.complex64), np.eye(4)), tmp_path / "c.nii")
    rgb = np.zeros((2, 3, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii")
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 4), np.complex128))
    np.save(tmp_path / "o.npy", np.empty((2, 3, 4), object), allow_pickle=True)
    np.save(tmp_path / "s.npy", np.zeros((2, 3, 4), "U3"))
    for name in ("c.nii", "rgb.nii", "c.npy", "o.npy", "s.npy"):
        with pytest.raises(VolbinDataError, match=rf"{name}: data type .* is not supported"):
            load(tmp_path / name)
    np.save(tmp_path / "b.npy", np.ones((2, 3, 4), bool))
    assert load(tmp_path / "b.npy").dtype == np.bool_


def test_nifti_volume_axis_must_be_last(tmp_path: Path) -> None:
    path = _write_nifti(tmp_path / "four.nii", np.zeros((3, 4, 5, 2), np.float32))
    assert load(path, volume_axis=3).volume_axis == 3
    with pytest.raises(ValueError, match="volume_axis"):
        load(path, volume_axis=0)


# --- bad outputs -----------------------------------------------------------------------------
def test_refuses_to_overwrite(tmp_path: Path) -> None:
    data = np.zeros((2, 3, 4), np.float32)
    out = save(data, tmp_path / "o.nii.gz")
    with pytest.raises(OutputFileError, match=r"o\.nii\.gz exists; pass force=True \(CLI: --force\)"):
        save(data, out)
    save(np.ones((2, 3, 4), np.float32), out, force=True)
    np.testing.assert_array_equal(load(out).compute(), 1)
    # An existing sidecar is protected too.
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(OutputFileError, match=r"p\.json exists"):
        save(data, tmp_path / "p.nii")
    assert not (tmp_path / "p.nii").exists()
    save(data, tmp_path / "p.nii", sidecar=False)


def test_output_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(OutputFileError, match="output folder does not exist"):
        save(np.zeros((2, 3, 4)), tmp_path / "missing" / "o.nii")


def test_output_is_input(tmp_path: Path) -> None:
    path = save(np.zeros((2, 3, 4), np.float32), tmp_path / "in.nii", sidecar=False)
    vol = load(path)
    with pytest.raises(OutputFileError, match="is the input file"):
        save(vol, path, force=True)
    os.symlink(path, tmp_path / "link.nii")
    with pytest.raises(OutputFileError, match="is the input file"):
        save(vol, tmp_path / "link.nii", force=True)
    with pytest.raises(OutputFileError, match="is the input file"):
        save(load(tmp_path / "link.nii"), path, force=True)


def test_unknown_output_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.nii, \.nii\.gz, \.npy or \.zarr"):
        save(np.zeros((2, 3, 4)), tmp_path / "o.mgz")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".npy", ".zarr"])
@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_write_leaves_nothing(tmp_path: Path, ext: str, exc: BaseException) -> None:
    data = _failing((4, 5, 8), (4, 5, 2), exc)
    with pytest.raises(type(exc)):
        save(data, tmp_path / f"o{ext}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".npy"])
def test_disk_full(tmp_path: Path, ext: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(OutputFileError, match=rf"o{ext}: cannot write: .*disk full") as info:
        save(np.zeros((4, 5, 6), np.float32), tmp_path / f"o{ext}")
    assert isinstance(info.value.__cause__, OSError)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path: Path) -> None:
    out = save(np.ones((4, 5, 8), np.float32), tmp_path / "keep.nii")
    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        save(_failing((4, 5, 8), (4, 5, 2), RuntimeError("x")), out, force=True)
    assert out.read_bytes() == before
    assert _leftovers(tmp_path) == []


# --- sidecars --------------------------------------------------------------------------------
def test_sidecar_contents(tmp_path: Path) -> None:
    src = _write_nifti(tmp_path / "in.nii.gz", np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    vol = load(src)
    vol = vol.derive(vol.data > 10, {"step": "binarize", "threshold": np.float32(10.0)})
    extra = {"recipe": {"method": "value"}, "thresholds": np.array([10.0, np.nan]), "note": "hi"}
    out = save(vol, tmp_path / "mask.nii.gz", sidecar=extra)
    side = sidecar_path(out)
    assert side == tmp_path / "mask.json"
    rec = json.loads(side.read_text())
    assert rec == read_sidecar(out) == read_sidecar(side)
    assert rec["volbin_version"]
    assert rec["created"].endswith("Z")
    assert rec["input"] == to_jsonable(vol.source)
    assert rec["input"]["path"] == str(src) and rec["input"]["size"] == src.stat().st_size
    assert rec["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert rec["output"]["shape"] == [3, 4, 5] and rec["output"]["dtype"] == "uint8"
    assert rec["steps"] == [{"step": "binarize", "threshold": 10.0}]
    assert rec["thresholds"] == [10.0, None] and rec["recipe"] == {"method": "value"}
    assert rec["note"] == "hi"
    assert not (tmp_path / "mask.json").read_text().count("NaN")


def test_sidecar_path_names() -> None:
    assert sidecar_path("a/mask.nii.gz") == Path("a/mask.json")
    assert sidecar_path("mask.NII") == Path("mask.json")
    # Other formats keep their extension: mask.npy and mask.zarr never share a sidecar.
    assert sidecar_path("mask.npy") == Path("mask.npy.json")
    assert sidecar_path("x.zarr") == Path("x.zarr.json")
    assert sidecar_path("x.tar") == Path("x.json")


def test_read_sidecar_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        read_sidecar(tmp_path / "none.nii.gz")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputFileError, match="not a valid JSON sidecar"):
        read_sidecar(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputFileError, match="expected an object"):
        read_sidecar(tmp_path / "list.json")


def test_to_jsonable() -> None:
    rec = to_jsonable(
        {
            "a": np.int64(3),
            "b": (np.float64(np.inf), 1.5),
            "c": {1, 2},
            "d": Path("x"),
            "e": np.dtype("uint8"),
            "f": np.bool_(True),
        }
    )
    assert json.dumps(rec, allow_nan=False)
    assert rec == {"a": 3, "b": [None, 1.5], "c": [1, 2], "d": "x", "e": "uint8", "f": True}
    with pytest.raises(TypeError, match="JSON sidecar"):
        to_jsonable(object())


# --- property: any array, any chunking, any format round-trips -------------------------------
@st.composite
def _arrays_and_chunks(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...]]:
    ndim = draw(st.sampled_from([3, 4]))
    shape = draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=6))
    dtype = draw(st.sampled_from([np.uint8, np.float32]))
    data = draw(hnp.arrays(dtype, shape))
    chunks = tuple(draw(st.integers(1, s)) for s in shape)
    return data, chunks


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_arrays_and_chunks(), ext=st.sampled_from([".nii", ".nii.gz", ".npy", ".zarr"]))
def test_save_load_round_trip(case: tuple[np.ndarray, tuple[int, ...]], ext: str) -> None:
    data, chunks = case
    with tempfile.TemporaryDirectory() as folder:
        out = save(da.from_array(data, chunks=chunks), Path(folder) / f"x{ext}")
        vol = load(out, chunks=chunks)
        assert vol.dtype == data.dtype and vol.shape == data.shape
        np.testing.assert_array_equal(vol.compute(), data)
        if ext != ".zarr":
            assert read_sidecar(out)["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
