"""Tests of volbin.volume: the Volume contract, scopes as groupings, input kinds."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volbin.errors import VolbinDataError
from volbin.volume import Volume, as_volume, like_input, slab_chunks

SETTINGS = settings(max_examples=50, deadline=None, database=None)


# --- slab chunks ---------------------------------------------------------------------------


@SETTINGS
@given(
    st.lists(st.integers(1, 40), min_size=3, max_size=4),
    st.sampled_from([1, 2, 4, 8]),
    st.sampled_from(["C", "F"]),
    st.integers(1, 200_000),
)
def test_slab_chunks_are_contiguous_slabs_within_budget(shape, itemsize, order, budget):
    chunks = slab_chunks(shape, itemsize, order, budget)
    assert len(chunks) == len(shape)
    assert all(1 <= c <= s for c, s in zip(chunks, shape, strict=True))
    # In memory order (slowest axis first) a chunk is (1, ..., 1, c, whole, ..., whole): one
    # contiguous run of memory.  It is as long as the budget allows.
    axes = list(range(len(shape))) if order == "C" else list(range(len(shape)))[::-1]
    split = [i for i, a in enumerate(axes) if chunks[a] < shape[a]]
    nbytes = math.prod(chunks) * itemsize
    assert nbytes <= max(budget, itemsize)
    if split:
        j = split[-1]
        assert all(chunks[a] == 1 for a in axes[:j])
        step = nbytes // chunks[axes[j]]  # bytes of one step along the split axis
        assert nbytes + step > budget
    else:
        # Nothing is split: the whole array fits, or every axis is already one voxel thick.
        assert math.prod(shape) * itemsize <= max(budget, itemsize) or len(shape) == 0


def test_slab_chunks_rejects_bad_budget():
    with pytest.raises(ValueError, match=r"`chunk_bytes`.*0"):
        slab_chunks((4, 4, 4), 8, "C", 0)


# --- Volume --------------------------------------------------------------------------------


def test_volume_wraps_numpy_and_validates():
    v = Volume(np.zeros((2, 3, 4)))
    assert isinstance(v.data, da.Array) and v.shape == (2, 3, 4) and v.ndim == 3
    assert v.volume_axis is None and v.n_volumes == 1 and v.spatial_axes == (0, 1, 2)
    np.testing.assert_array_equal(v.affine, np.eye(4))
    with pytest.raises(VolbinDataError, match="2D"):
        Volume(np.zeros((3, 4)))
    with pytest.raises(VolbinDataError, match="5D"):
        Volume(np.zeros((1, 2, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"`affine`.*\(3, 3\)"):
        Volume(np.zeros((2, 3, 4)), affine=np.eye(3))
    with pytest.raises(ValueError, match=r"`volume_axis`.*7"):
        Volume(np.zeros((2, 3, 4, 5)), volume_axis=7)


@pytest.mark.parametrize(
    "volume_axis,spatial",
    [(None, (0, 1, 2)), (3, (0, 1, 2)), (-1, (0, 1, 2)), (0, (1, 2, 3)), (-4, (1, 2, 3))],
)
def test_axis_roles(volume_axis, spatial):
    v = Volume(np.zeros((5, 6, 7, 8)), volume_axis=volume_axis)
    assert v.spatial_axes == spatial
    assert v.volume_axis == (3 if volume_axis is None else volume_axis % 4)
    assert v.n_volumes == v.shape[v.volume_axis]
    assert v.spatial_shape == tuple(v.shape[a] for a in spatial)
    for name, i in zip("xyz", range(3), strict=True):
        assert v.axis_index(name) == v.axis_index(name.upper()) == v.axis_index(i) == spatial[i]
    assert v.axis_index(None) == spatial[2]
    for bad in ("w", 3, -1, 1.0):
        with pytest.raises(ValueError, match="`axis`"):
            v.axis_index(bad)


def test_zooms_from_affine_and_header():
    affine = np.array([[0, 0, 3.0, 0], [2.0, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])
    assert Volume(np.zeros((2, 3, 4)), affine=affine).zooms == (2.0, 1.5, 3.0)
    nib = pytest.importorskip("nibabel")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2, 3, 4))
    hdr.set_zooms((0.5, 0.7, 0.9))
    assert Volume(np.zeros((2, 3, 4)), header=hdr).zooms == pytest.approx((0.5, 0.7, 0.9))


def test_derive_keeps_metadata_and_appends_steps():
    v = Volume(np.zeros((2, 3, 4, 2)), affine=np.diag([2, 2, 2, 1]), volume_axis=3, steps=({"step": "read"},))
    w = v.derive(v.data > 0, {"step": "binarize"})
    assert [s["step"] for s in w.steps] == ["read", "binarize"]
    assert w.volume_axis == 3 and np.array_equal(w.affine, v.affine) and w.dtype == np.bool_
    assert v.derive(v.data).steps == v.steps
    assert "Volume(shape=(2, 3, 4, 2)" in repr(w)
    np.testing.assert_array_equal(np.asarray(w), np.zeros((2, 3, 4, 2), bool))


# --- groupings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,volume_axis,scope,axis,group_axes",
    [
        ((4, 5, 6), None, "stack", "z", ()),
        ((4, 5, 6), None, "volume", "z", ()),
        ((4, 5, 6), None, "slice", "x", (0,)),
        ((4, 5, 6), None, "slice", "z", (2,)),
        ((4, 5, 6, 3), 3, "stack", "z", ()),
        ((4, 5, 6, 3), 3, "volume", "z", (3,)),
        ((4, 5, 6, 3), 3, "slice", "y", (1, 3)),
        ((3, 4, 5, 6), 0, "volume", "z", (0,)),
        ((3, 4, 5, 6), 0, "slice", "x", (0, 1)),
        ((3, 4, 5, 6), 0, "slice", "z", (0, 3)),
    ],
)
def test_grouping_of_scopes(shape, volume_axis, scope, axis, group_axes):
    g = Volume(np.zeros(shape), volume_axis=volume_axis).grouping(scope, axis)
    assert g.group_axes == group_axes
    assert g.group_shape == tuple(shape[a] for a in group_axes)
    assert g.n_groups == math.prod(g.group_shape)
    labels = g.labels()
    assert len(labels) == g.n_groups
    if scope == "slice":
        assert g.slice_axis == Volume(np.zeros(shape), volume_axis=volume_axis).axis_index(axis)
        assert all("slice" in lab for lab in labels)
        if len(shape) == 4:
            assert all("volume" in lab for lab in labels)


def test_grouping_rejects_unknown_scope():
    with pytest.raises(ValueError, match=r"`scope`.*'voxel'"):
        Volume(np.zeros((2, 3, 4))).grouping("voxel")


@pytest.mark.parametrize("volume_axis", [0, 3])
@pytest.mark.parametrize(
    "scope,axis", [("stack", "z"), ("volume", "z"), ("slice", "x"), ("slice", "y"), ("slice", "z")]
)
def test_expand_and_block_values_broadcast_each_group_onto_its_voxels(scope, axis, volume_axis):
    shape = (3, 4, 5, 6)
    vol = Volume(np.zeros(shape), volume_axis=volume_axis)
    g = vol.grouping(scope, axis)
    values = np.arange(g.n_groups, dtype=float).reshape(g.group_shape)
    full = np.broadcast_to(g.expand(values), shape)
    # Brute force: a voxel's group is its index along the group axes.
    for idx in np.ndindex(*shape):
        gidx = tuple(idx[a] for a in g.group_axes)
        assert full[idx] == values[gidx]
    location = [(1, 3), (0, 4), (2, 5), (3, 6)]
    block = np.broadcast_to(g.block_values(values, location), (2, 4, 3, 3))
    np.testing.assert_array_equal(block, full[1:3, 0:4, 2:5, 3:6])


# --- input kinds ---------------------------------------------------------------------------


def test_as_volume_and_like_input_round_trip_kinds():
    x = np.arange(24.0).reshape(2, 3, 4)
    vol, kind = as_volume(x)
    assert kind == "numpy" and isinstance(vol.data, da.Array)
    out = like_input(vol, kind)
    assert type(out) is np.ndarray and np.array_equal(out, x)

    d = da.from_array(x, chunks=2)
    vol, kind = as_volume(d)
    assert kind == "dask" and vol.data is d and like_input(vol, kind) is d

    v = Volume(d)
    vol, kind = as_volume(v)
    assert kind == "volume" and vol is v and like_input(vol, kind) is v

    vol, kind = as_volume(x.tolist())
    assert kind == "numpy" and np.array_equal(vol.compute(), x)


def test_as_volume_volume_axis_and_errors():
    x = np.zeros((2, 3, 4, 5))
    assert as_volume(x, volume_axis=0)[0].volume_axis == 0
    assert as_volume(Volume(x), volume_axis=1)[0].volume_axis == 1
    with pytest.raises(VolbinDataError, match="2D"):
        as_volume(np.zeros((3, 4)))
    with pytest.raises(TypeError, match=r"`volume`.*str"):
        as_volume("volume.nii")


def test_as_volume_chunks_follow_memory_order():
    x = np.zeros((10, 20, 30))
    c = as_volume(x, chunk_bytes=20 * 30 * 8 * 2)[0].chunks
    assert c == ((2,) * 5, (20,), (30,))
    f = as_volume(np.asfortranarray(x), chunk_bytes=10 * 20 * 8 * 3)[0].chunks
    assert f == ((10,), (20,), (3,) * 10)
