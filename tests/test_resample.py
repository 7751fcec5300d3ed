"""Upsampling and resampling against scipy.ndimage and nibabel, and chunk invariance."""

from __future__ import annotations

import itertools

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from dask.core import get_dependencies
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.transform import Rotation

import volbin
from volbin.resample import resample_to_grid, upsample
from volbin.volume import Volume

RNG = np.random.default_rng(0)
X = RNG.random((17, 23, 19)).astype(np.float32)


def _corners(shape):
    """The 8 outer corners of a grid, in voxel coordinates."""
    return np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in shape[:3]])))


def _zoom_ref(x, factors, order):
    out_shape = [max(n, round(n * f)) for n, f in zip(x.shape, factors, strict=True)]
    zoom = [m / n for m, n in zip(out_shape, x.shape, strict=True)]
    return ndimage.zoom(x, zoom, order=order, mode="nearest", grid_mode=True, output=np.float32)


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("factors", [(2, 3, 1.5), 2.5, (1, 1, 1), (2.7, 1.3, 4)])
def test_upsample_matches_scipy_zoom(order, factors):
    f = (factors,) * 3 if np.ndim(factors) == 0 else factors
    ref = _zoom_ref(X, f, order)
    out = upsample(X, factors, order=order)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == ref.shape
    if order == 0:
        np.testing.assert_array_equal(out, ref)
    else:
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("chunks", [(5, 7, 4), (1, 50, 3), (40, 40, 1)])
def test_upsample_chunking_does_not_change_the_bytes(order, chunks):
    whole = upsample(X, (2, 3, 1.5), order=order, chunks=(100, 100, 100))
    src = da.from_array(X, chunks=(4, 5, 6))
    out = upsample(src, (2, 3, 1.5), order=order, chunks=chunks)
    assert isinstance(out, da.Array) and out.chunks[0][0] == min(chunks[0], out.shape[0])
    np.testing.assert_array_equal(out.compute(), whole)


def test_cubic_chunked_within_float32_rounding():
    whole = upsample(X, 2.2, order=3, chunks=(100, 100, 100))
    out = upsample(da.from_array(X, chunks=(5, 6, 7)), 2.2, order=3, chunks=(9, 10, 11))
    np.testing.assert_allclose(out.compute(), whole, rtol=0, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 9)] * 3),
    factors=st.tuples(*[st.floats(1.0, 4.0)] * 3),
    chunks=st.tuples(*[st.integers(1, 12)] * 3),
    in_chunks=st.tuples(*[st.integers(1, 9)] * 3),
)
def test_upsample_any_chunking_property(shape, factors, chunks, in_chunks):
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    whole = upsample(x, factors)
    out = upsample(da.from_array(x, chunks=in_chunks), factors, chunks=chunks).compute()
    np.testing.assert_array_equal(out, whole)
    np.testing.assert_allclose(out, _zoom_ref(x, factors, 1), rtol=0, atol=1e-6)
    assert np.nanmin(x) - 1e-6 <= out.min() and out.max() <= np.nanmax(x) + 1e-6


def test_upsample_keeps_the_world_corners(nifti_factory):
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [12, -7, 30], degrees=True).as_matrix() @ np.diag(
        [1.2, 0.9, 2.5]
    )
    affine[:3, 3] = [-40.0, 12.5, 3.0]
    path = nifti_factory(X, "t1.nii.gz", affine=affine)
    vol = volbin.load(path)
    up = upsample(vol, (2, 3, 1.5))
    assert isinstance(up, Volume)
    ref_img = nib.load(path)
    in_world = nib.affines.apply_affine(ref_img.affine, _corners(X.shape))
    out_world = nib.affines.apply_affine(up.affine, _corners(up.shape))
    np.testing.assert_allclose(out_world, in_world, atol=1e-9)
    ratio = np.array(X.shape) / np.array(up.shape)
    np.testing.assert_allclose(up.zooms, np.array(ref_img.header.get_zooms()) * ratio, rtol=1e-6)
    assert up.steps[-1]["step"] == "upsample"
    # What is written carries the new grid: nibabel reads back the same corners and zooms.
    out_path = volbin.save(up, path.with_name("up.nii.gz"))
    img = nib.load(out_path)
    assert img.shape == up.shape
    np.testing.assert_allclose(nib.affines.apply_affine(img.affine, _corners(img.shape)), in_world, atol=1e-4)
    np.testing.assert_allclose(img.header.get_zooms(), up.zooms, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(img.dataobj), upsample(X, (2, 3, 1.5)), atol=1e-6)


@pytest.mark.parametrize("vaxis", [3, 0])
def test_4d_upsamples_spatial_axes_only(vaxis):
    x4 = RNG.random((9, 8, 7, 3)).astype(np.float32)
    x = x4 if vaxis == 3 else np.moveaxis(x4, 3, 0).copy()
    out = upsample(da.from_array(x, chunks=2), 2, volume_axis=vaxis, chunks=(5, 6, 7, 8))
    assert out.compute().shape == ((18, 16, 14, 3) if vaxis == 3 else (3, 18, 16, 14))
    for t in range(3):
        vol_t = np.take(out.compute(), t, axis=vaxis)
        np.testing.assert_array_equal(vol_t, upsample(x4[..., t], 2))


def test_output_chunks_read_only_the_input_they_need():
    x = da.from_array(RNG.random((16, 16, 64)).astype(np.float32), chunks=(16, 16, 8))
    y = upsample(x, 2, chunks=(32, 32, 16))
    graph = dict(y.__dask_graph__())
    for key in itertools.chain.from_iterable(itertools.chain.from_iterable(y.__dask_keys__())):
        deps = get_dependencies(graph, key)
        assert 1 <= len(deps) <= 3  # its own 8 input slices and a 1-voxel margin each side


def test_integer_input_is_interpolated_in_float32():
    x = (X * 1000).astype(np.int16)
    out = upsample(x, 2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _zoom_ref(x.astype(np.float32), (2, 2, 2), 1), atol=1e-3)
    assert upsample(X.astype(np.float64), 2).dtype == np.float64


def test_bad_arguments():
    with pytest.raises(ValueError, match="`factors`"):
        upsample(X, 0.5)
    with pytest.raises(ValueError, match="`factors`"):
        upsample(X, (2, 2))
    with pytest.raises(ValueError, match="`order`"):
        upsample(X, 2, order=6)
    with pytest.raises(ValueError, match="`target_shape`"):
        resample_to_grid(X, np.eye(4), (3, 3))
    with pytest.raises(ValueError, match="`target_affine`"):
        resample_to_grid(X, np.eye(3), (3, 3, 3))


# --- resample_to_grid ----------------------------------------------------------------------------
SRC_AFFINE = np.array([[1.2, 0, 0, -10], [0, 1.0, 0, 5], [0, 0, 2.0, 3], [0, 0, 0, 1]])


def _oblique_target():
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("xyz", [10, 20, -5], degrees=True).as_matrix()
    t = SRC_AFFINE @ t @ np.diag([0.7, 0.8, 0.9, 1.0])
    t[:3, 3] += [1.0, 2.0, -1.0]
    return t, (25, 30, 22)


def _map_coordinates_ref(x, src_affine, target, shape, order, cval=0.0):
    vox = np.linalg.solve(src_affine, target)
    idx = np.indices(shape).reshape(3, -1).astype(float)
    c = vox[:3, :3] @ idx + vox[:3, 3:]
    ref = ndimage.map_coordinates(x, c, order=order, mode="nearest", output=np.float32)
    inside = ((c >= -0.5) & (c <= np.array(x.shape)[:, None] - 0.5)).all(axis=0)
    ref[~inside] = cval
    return ref.reshape(shape)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_to_grid_matches_map_coordinates(order):
    target, shape = _oblique_target()
    vol = Volume(da.from_array(X, chunks=(5, 6, 7)), affine=SRC_AFFINE)
    out = resample_to_grid(vol, target, shape, order=order, cval=-1.0, chunks=(8, 9, 10))
    assert isinstance(out, Volume) and out.shape == shape
    np.testing.assert_allclose(out.affine, target)
    ref = _map_coordinates_ref(X, SRC_AFFINE, target, shape, order, cval=-1.0)
    got = out.compute()
    assert (got == -1).any() and (got != -1).any()
    if order <= 1:
        np.testing.assert_array_equal(got, ref)
        whole = resample_to_grid(
            Volume(da.from_array(X), affine=SRC_AFFINE), target, shape, order=order, cval=-1.0, chunks=shape
        )
        np.testing.assert_array_equal(got, whole.compute())
    else:
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_aligned_grid_equals_map_coordinates():
    # Flipped and permuted axes at another resolution: the axis-by-axis path.
    target = SRC_AFFINE @ np.array([[0, 0.4, 0, 1.0], [-0.3, 0, 0, 20.0], [0, 0, 0.5, -0.2], [0, 0, 0, 1]])
    shape = (70, 40, 36)
    out = resample_to_grid(
        Volume(da.from_array(X, chunks=6), affine=SRC_AFFINE), target, shape, chunks=(11, 13, 17)
    )
    ref = _map_coordinates_ref(X, SRC_AFFINE, target, shape, 1)
    np.testing.assert_allclose(out.compute(), ref, rtol=0, atol=1e-6)


def test_identity_grid_returns_the_data():
    out = resample_to_grid(X, np.eye(4), X.shape)
    np.testing.assert_array_equal(out, X)
