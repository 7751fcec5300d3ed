"""Tests of the compiled dithering core (volbin._dither_kernels) and volbin.dither.ordered.

The compiled loops are compared bit for bit with the plain versions in tests/reference.py.
"""

from __future__ import annotations

import importlib.util
import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from volbin import _dither_kernels as dk
from volbin._kernels import seed_key
from volbin.dither import ordered


def _load_reference():
    path = Path(__file__).with_name("reference.py")
    spec = importlib.util.spec_from_file_location("volbin_test_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()

LOSSLESS = [name for name, k in dk.KERNELS.items() if abs(sum(k.weights) - 1) < 1e-12]
SHAPES = [(1, 1, 1), (1, 1, 6), (2, 5, 1), (2, 2, 2), (3, 9, 13), (1, 4, 3)]


def _smooth(shape, sigma, seed):
    rng = np.random.default_rng(seed)
    a = ndi.gaussian_filter(rng.random(shape), (0,) + (sigma,) * (len(shape) - 1))
    return ((a - a.min()) / (a.max() - a.min())).astype(np.float32)


# -- error diffusion against the references ---------------------------------------------------


@pytest.mark.parametrize("serpentine", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_floyd_steinberg_matches_reference_on_8bit_slices(shape, serpentine):
    u8 = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    ours = dk.diffuse_2d(u8.astype(np.float32) / np.float32(255), serpentine=serpentine)
    expected = np.stack([ref.floyd_steinberg(s, serpentine) for s in u8])
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("serpentine", [False, True])
@pytest.mark.parametrize("name", sorted(dk.KERNELS))
def test_named_kernels_match_reference(name, serpentine):
    rng = np.random.default_rng(2)
    for shape in [(3, 9, 13), (2, 3, 2)]:
        img = rng.random(shape, dtype=np.float32)
        ours = dk.diffuse_2d(img, kernel=name, serpentine=serpentine)
        expected = ref.diffuse(img, dk.KERNELS[name], serpentine=serpentine)
        np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("name", ["floyd-steinberg", "stucki", "sierra-lite"])
def test_jitter_and_threshold_match_reference(name):
    img = np.random.default_rng(3).random((3, 8, 11), dtype=np.float32)
    img[1, 2, 3] = np.nan  # non-finite values count as 0
    key = seed_key(7)
    kwargs = dict(serpentine=True, threshold=0.4, jitter=0.3, index_base=1000, index_strides=(1, 50, 3))
    ours = dk.diffuse_2d(img, kernel=name, key=key, **kwargs)
    expected = ref.diffuse(img, dk.KERNELS[name], key=int(key), **kwargs)
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("threshold", [0.4, 0.5, 0.7])
def test_threshold_matches_reference(threshold):
    img = np.random.default_rng(13).random((2, 9, 8), dtype=np.float32)
    np.testing.assert_array_equal(
        dk.diffuse_2d(img, kernel="sierra", threshold=threshold),
        ref.diffuse(img, dk.KERNELS["sierra"], threshold=threshold),
    )


def test_empty_inputs():
    for shape in [(0, 4, 5), (2, 0, 5), (2, 4, 0)]:
        img = np.zeros(shape, np.float32)
        assert dk.diffuse_2d(img).shape == shape
        assert dk.diffuse_3d(img)[0].shape == shape


def test_uniform_reference_matches_compiled_generator():
    from volbin._kernels import uniform01

    key = seed_key(11, 2)
    for index in (0, 1, 12345, 2**40 + 3):
        assert ref.uniform01(int(key), index) == uniform01(key, np.uint64(index))


@pytest.mark.parametrize("normalize", [True, False])
def test_user_matrix_matches_reference(normalize):
    matrix = np.array([[0, 0, 0, 2, 1], [1, 2, 3, 2, 1], [0, 1, 0, 1, 0]]) / 16
    kernel = dk.diffusion_kernel(matrix, normalize=normalize)
    assert abs(sum(kernel.weights) - (1 if normalize else 14 / 16)) < 1e-12
    img = np.random.default_rng(4).random((2, 7, 10), dtype=np.float32)
    for serpentine in (False, True):
        np.testing.assert_array_equal(
            dk.diffuse_2d(img, kernel=matrix if normalize else kernel, serpentine=serpentine),
            ref.diffuse(img, kernel, serpentine=serpentine),
        )


KERNELS_3D = {
    "floyd-steinberg-3d": dk.KERNELS_3D["floyd-steinberg-3d"],
    "jjn-extended": dk.diffusion_kernel_3d("jarvis-judice-ninke"),
    # Reaches two slices ahead, so slabs carry two slices of error.
    "two-deep": dk.DiffusionKernel3D(
        (0, 0, 0, 1, 1, 2),
        (0, 1, 1, 0, -1, 1),
        (1, 0, -1, 0, 2, -1),
        (0.3, 0.2, 0.1, 0.2, 0.1, 0.1),
    ),
}


@pytest.mark.parametrize("serpentine", [False, True])
@pytest.mark.parametrize("name", sorted(KERNELS_3D))
def test_3d_matches_reference(name, serpentine):
    vol = np.random.default_rng(5).random((5, 6, 7), dtype=np.float32)
    kernel = KERNELS_3D[name]
    key = seed_key(3)
    ours, carry = dk.diffuse_3d(vol, kernel=kernel, serpentine=serpentine, jitter=0.2, key=key)
    expected = ref.diffuse(vol, kernel, serpentine=serpentine, jitter=0.2, key=int(key))
    np.testing.assert_array_equal(ours, expected)
    assert carry.shape == (max(kernel.dz), 6, 7)
    assert not carry.any()  # nothing is sent past the end of the volume


# -- properties ---------------------------------------------------------------------------------


@pytest.mark.parametrize("serpentine", [False, True])
@pytest.mark.parametrize("shape", [(8, 8), (7, 10), (1, 5), (16, 3), (182, 217)])
def test_floyd_steinberg_of_half_grey_is_a_checkerboard(shape, serpentine):
    out = dk.diffuse_2d(np.full(shape, 0.5, np.float32), serpentine=serpentine)[0]
    y, x = np.indices(shape)
    np.testing.assert_array_equal(out, (y + x) % 2)


@pytest.mark.parametrize("serpentine", [False, True])
@pytest.mark.parametrize("shape", [(7, 9), (217, 181)])
def test_half_grey_with_both_sides_odd(shape, serpentine):
    """A checkerboard then holds half a pixel less than the input; since no error is dropped
    at the edges, the surplus surfaces at the end of the last row, which may change phase."""
    img = np.full(shape, 0.5, np.float32)
    out = dk.diffuse_2d(img, serpentine=serpentine)[0]
    y, x = np.indices(shape)
    np.testing.assert_array_equal(out[:-1], ((y + x) % 2)[:-1])
    assert abs(int(out.sum()) - img.sum()) <= 0.5


@pytest.mark.parametrize("name", sorted(dk.KERNELS))
def test_constant_images_stay_constant(name):
    for value in (0.0, 1.0):
        img = np.full((3, 10, 12), value, np.float32)
        assert (dk.diffuse_2d(img, kernel=name, serpentine=True) == value).all()
        assert (dk.diffuse_3d(img, kernel=name)[0] == value).all()
    for value in (0.0, 1.0):
        img = np.full((4, 6, 5), value, np.float32)
        assert (dk.diffuse_3d(img, kernel="floyd-steinberg-3d")[0] == value).all()


def _test_images():
    yield "smooth", _smooth((4, 64, 80), 3, 0)
    yield "smooth-dark", 0.25 * _smooth((4, 64, 80), 6, 1)
    yield "gradient-x", np.broadcast_to(np.linspace(0, 1, 96, dtype=np.float32), (2, 50, 96))
    grad_y = np.linspace(0, 1, 70, dtype=np.float32)[:, None]
    yield "gradient-y", np.broadcast_to(grad_y, (2, 70, 40))


@pytest.mark.parametrize("serpentine", [False, True])
@pytest.mark.parametrize("name", LOSSLESS)
def test_mean_is_preserved(name, serpentine):
    for label, img in _test_images():
        out = dk.diffuse_2d(img, kernel=name, serpentine=serpentine)
        per_slice = out.mean(axis=(1, 2)) - img.mean(axis=(1, 2))
        assert np.abs(per_slice).max() <= 0.005, label
        out3, _ = dk.diffuse_3d(img, kernel=name, serpentine=serpentine)
        assert abs(out3.mean() - img.mean()) <= 0.005, label


def test_mean_is_preserved_3d_on_small_and_thin_volumes():
    vol = _smooth((12, 20, 24), 2, 3)
    for shape in [(12, 20, 24), (1, 20, 24), (12, 1, 24), (12, 20, 1), (3, 2, 2)]:
        part = vol[: shape[0], : shape[1], : shape[2]]
        out, _ = dk.diffuse_3d(part)
        assert abs(out.mean() - part.mean()) <= 0.5 / part.size + 1e-6


def test_atkinson_drops_a_quarter_of_the_error_by_design():
    assert sum(dk.KERNELS["atkinson"].weights) == pytest.approx(0.75)
    dark = np.full((2, 64, 64), 0.1, np.float32)
    assert dk.diffuse_2d(dark, kernel="atkinson").mean() < 0.05  # shadows close up
    # The same footprint with weights normalised to 1 preserves the mean.
    footprint = np.array([[0, 0, 0, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]])
    for _, img in _test_images():
        out = dk.diffuse_2d(img, kernel=footprint)
        assert abs(out.mean() - img.mean()) <= 0.005


def test_agrees_with_pillow_on_the_fraction_of_ones():
    u8 = np.rint(255 * (0.2 + 0.6 * _smooth((3, 90, 120), 4, 6))).astype(np.uint8)
    ours = dk.diffuse_2d(u8.astype(np.float32) / np.float32(255))
    pillow = np.stack([np.asarray(Image.fromarray(s).convert("1")) for s in u8])
    assert abs(ours.mean() - pillow.mean()) < 0.01


def test_jitter_is_deterministic_and_chunk_invariant():
    vol = _smooth((7, 12, 10), 2, 7)
    key = seed_key(5)
    whole = dk.diffuse_2d(vol, kernel="burkes", jitter=0.5, key=key)
    np.testing.assert_array_equal(whole, dk.diffuse_2d(vol, kernel="burkes", jitter=0.5, key=key))
    assert not np.array_equal(whole, dk.diffuse_2d(vol, kernel="burkes", jitter=0.5, key=seed_key(6)))
    assert not np.array_equal(whole, dk.diffuse_2d(vol, kernel="burkes"))
    plane = 12 * 10
    for cuts in ([0, 1, 7], [0, 3, 4, 7], [0, 2, 4, 6, 7]):
        parts = [
            dk.diffuse_2d(vol[a:b], kernel="burkes", jitter=0.5, key=key, index_base=a * plane)
            for a, b in itertools.pairwise(cuts)
        ]
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_jitter_follows_global_index_along_any_slice_axis():
    """Slices along the last axis: a transposed copy with permuted strides."""
    vol = _smooth((6, 9, 8), 2, 8)
    key = seed_key(9)
    slices = np.ascontiguousarray(vol.transpose(2, 0, 1))
    strides = (1, 9 * 8, 8)  # global C-order steps of vol along (axis 2, axis 0, axis 1)
    whole = dk.diffuse_2d(slices, jitter=0.4, key=key, index_strides=strides)
    np.testing.assert_array_equal(
        whole,
        ref.diffuse(slices, dk.KERNELS["floyd-steinberg"], jitter=0.4, key=int(key), index_strides=strides),
    )
    parts = [
        dk.diffuse_2d(slices[a : a + 3], jitter=0.4, key=key, index_base=a, index_strides=strides)
        for a in (0, 3, 6)
    ]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


@settings(max_examples=40, deadline=None)
@given(
    thicknesses=st.lists(st.integers(1, 4), min_size=1, max_size=9),
    name=st.sampled_from(sorted(KERNELS_3D)),
    serpentine=st.booleans(),
    jitter=st.sampled_from([0.0, 0.3]),
)
def test_3d_slab_streaming_equals_one_piece(thicknesses, name, serpentine, jitter):
    vol = _smooth((9, 6, 7), 1.5, 10)
    kernel = KERNELS_3D[name]
    key = seed_key(4)
    opts = dict(kernel=kernel, serpentine=serpentine, jitter=jitter, key=key)
    whole, _ = dk.diffuse_3d(vol, **opts)
    plane = 6 * 7
    out = np.empty_like(whole)
    carry = None
    z = 0
    for t in thicknesses:
        if z >= 9:
            break
        t = min(t, 9 - z)
        out[z : z + t], carry = dk.diffuse_3d(
            vol[z : z + t], carry_in=carry, z0=z, n_slices=9, index_base=z * plane, **opts
        )
        z += t
    if z < 9:
        out[z:], carry = dk.diffuse_3d(
            vol[z:], carry_in=carry, z0=z, n_slices=9, index_base=z * plane, **opts
        )
    np.testing.assert_array_equal(out, whole)
    assert not carry.any()


def test_threads_give_the_same_bytes():
    vol = _smooth((12, 30, 28), 2, 14)
    key = seed_key(1)
    whole = dk.diffuse_2d(vol, jitter=0.2, key=key)
    out = np.empty_like(whole)
    plane = 30 * 28

    def run(a):
        dk.diffuse_2d(vol[a : a + 3], out[a : a + 3], jitter=0.2, key=key, index_base=a * plane)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, range(0, 12, 3)))
    np.testing.assert_array_equal(out, whole)


def test_out_buffers_are_filled_in_place():
    img = _smooth((3, 8, 9), 2, 11)
    out = np.zeros((3, 8, 9), np.uint8)
    assert dk.diffuse_2d(img, out) is out
    np.testing.assert_array_equal(out, dk.diffuse_2d(img))
    carry = np.empty((1, 8, 9), np.float32)
    _, carry_out = dk.diffuse_3d(img, np.zeros_like(out), carry_out=carry, n_slices=5)
    assert carry_out is carry and carry.any()


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "matrix, message",
    [
        ([[0, 1, 7], [3, 5, 1]], "0 at and before"),
        ([[0, 0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1]], "at most 2 pixels ahead"),
        ([[0, 0, 7]], "following rows"),
        ([[0, 0, 7], [3, -5, 1]], "non-negative"),
        ([[[0]]], "2D array"),
        ([[0, 0, 0], [0, 0, 0]], "following rows"),
    ],
)
def test_bad_matrices_are_refused(matrix, message):
    with pytest.raises(ValueError, match=message):
        dk.diffusion_kernel(matrix)


def test_bad_arguments_are_refused():
    img = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="must be one of"):
        dk.diffuse_2d(img, kernel="floyd")
    with pytest.raises(ValueError, match="must be one of"):
        dk.diffuse_3d(img, kernel="floyd")
    with pytest.raises(ValueError, match="`jitter`"):
        dk.diffuse_2d(img, jitter=-1)
    with pytest.raises(ValueError, match="`out`"):
        dk.diffuse_2d(img, np.zeros((2, 4, 4), np.float32))
    with pytest.raises(TypeError, match="divide uint8"):
        dk.diffuse_2d(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="`share`"):
        dk.extend_to_3d("stucki", 1.0)
    with pytest.raises(ValueError, match="`carry_in`"):
        dk.diffuse_3d(img, carry_in=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        dk.diffuse_3d(img, z0=3, n_slices=4)
    with pytest.raises(ValueError, match="already processed"):
        dk.diffusion_kernel_3d(dk.DiffusionKernel3D((0, 1), (0, 0), (-1, 0), (0.5, 0.5)))
    with pytest.raises(ValueError, match="next slice"):
        dk.diffusion_kernel_3d(dk.DiffusionKernel3D((0, 0), (0, 1), (1, 0), (0.5, 0.5)))


# -- ordered dithering ----------------------------------------------------------------------------


def test_bayer_order_one():
    np.testing.assert_array_equal(ordered.bayer_matrix(1) * 4 - 0.5, [[0, 2], [3, 1]])


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_bayer_is_a_permutation_of_ranks_matching_reference(n, ndim):
    m = ordered.bayer_matrix(n, ndim)
    assert m.shape == (2**n,) * ndim and not m.flags.writeable
    ranks = np.rint(m * m.size - 0.5).astype(np.int64)
    np.testing.assert_array_equal(np.sort(ranks.ravel()), np.arange(m.size))
    np.testing.assert_array_equal(ranks, ref.bayer_ranks(n, ndim))
    assert ((m > 0) & (m < 1)).all()


def test_bayer_3d_pairs_sit_at_opposite_corners():
    ranks = np.rint(ordered.bayer_matrix(1, 3) * 8 - 0.5).astype(int)
    where = {int(r): np.argwhere(ranks == r)[0] for r in range(8)}
    for r in range(0, 8, 2):
        assert (np.abs(where[r] - where[r + 1]) == 1).all()
    np.testing.assert_array_equal(ranks[0] // 2, [[0, 2], [3, 1]])


def _low_frequency_share(t):
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in t.shape], indexing="ij")
    radius = np.sqrt(sum(f**2 for f in freqs))
    power = np.abs(np.fft.fftn(t - t.mean())) ** 2
    return power[(radius > 0) & (radius < 0.15)].sum() / power.sum()


@pytest.mark.parametrize("size, ndim", [(32, 2), (64, 2), (8, 3), (16, 3)])
def test_blue_noise_is_a_permutation_with_little_low_frequency_power(size, ndim):
    t = ordered.blue_noise(size, ndim)
    assert t.shape == (size,) * ndim and not t.flags.writeable
    ranks = np.rint(t * t.size - 0.5).astype(np.int64)
    np.testing.assert_array_equal(np.sort(ranks.ravel()), np.arange(t.size))
    white = np.random.default_rng(0).permutation(t.size).reshape(t.shape).astype(float)
    assert _low_frequency_share(t) < 0.2 * _low_frequency_share(white)


def test_blue_noise_is_deterministic_and_cached():
    a = ordered.blue_noise(16, seed=3)
    assert ordered.blue_noise(16, 2, 3, 1.5) is a
    ordered._blue_noise.cache_clear()
    np.testing.assert_array_equal(ordered.blue_noise(16, seed=3), a)
    assert not np.array_equal(ordered.blue_noise(16, seed=4), a)
    assert not np.array_equal(ordered.blue_noise(16, seed=3, sigma=1.9), a)


def test_blue_noise_and_bayer_refuse_bad_arguments():
    with pytest.raises(ValueError, match="`size`"):
        ordered.blue_noise(2)
    with pytest.raises(ValueError, match="`ndim`"):
        ordered.blue_noise(8, ndim=4)
    with pytest.raises(ValueError, match="`seed`"):
        ordered.blue_noise(8, seed=-1)
    with pytest.raises(ValueError, match="`sigma`"):
        ordered.blue_noise(8, sigma=0)
    with pytest.raises(ValueError, match="`n`"):
        ordered.bayer_matrix(-1)


@pytest.mark.parametrize(
    "matrix", [ordered.bayer_matrix(3), ordered.blue_noise(16), ordered.bayer_matrix(2, 3)]
)
def test_ordered_dither_of_a_constant_keeps_its_mean(matrix):
    shape = tuple(2 * s for s in matrix.shape)
    for c in np.linspace(0, 1, 23):
        out = ordered.ordered_dither_block(np.full(shape, c, np.float32), matrix)
        assert out.dtype == np.uint8 and out.shape == shape
        assert abs(out.mean() - c) <= 1 / matrix.size + 1e-7


def test_ordered_dither_is_chunk_invariant():
    vol = _smooth((10, 21, 19), 2, 12)
    for matrix, axes in [(ordered.blue_noise(8, 3), None), (ordered.bayer_matrix(2), (0, 2))]:
        whole = ordered.ordered_dither_block(vol, matrix, axes=axes)
        for z in (0, 3, 7):
            for y in (0, 5, 13):
                block = vol[z : z + 4, y : y + 9, 2:17]
                np.testing.assert_array_equal(
                    ordered.ordered_dither_block(block, matrix, (z, y, 2), axes),
                    whole[z : z + 4, y : y + 9, 2:17],
                )
    with pytest.raises(ValueError, match="`axes`"):
        ordered.ordered_dither_block(vol, ordered.bayer_matrix(2), axes=(2, 0))
    with pytest.raises(ValueError, match="`offset`"):
        ordered.ordered_dither_block(vol, ordered.bayer_matrix(2), offset=(0, 0))


# -- void-and-cluster against the from-scratch reference, at every vector level ------------------


@pytest.fixture(params=[0, 1, 2, 3], ids=["scalar", "sse2", "avx2", "avx512"])
def simd_level(request):
    from volbin.kernels import _void_cluster

    level = request.param
    try:
        if _void_cluster._set_simd_level(level) != level:
            pytest.skip(f"this machine has no vector level {level}")
        yield level
    finally:
        _void_cluster._set_simd_level(99)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 6, 10), (3, 4, 5), (4, 4, 4), (1, 1, 9)])
def test_void_and_cluster_matches_reference(simd_level, shape):
    n = int(np.prod(shape))
    g = np.rint(ordered._gaussian_response(shape, 1.2) * 2.0**40).astype(np.int64)
    for seed in range(3):
        pattern = np.zeros(n, np.uint8)
        pattern[np.random.default_rng(seed).permutation(n)[: max(1, n // 5)]] = 1
        energy = pattern.astype(np.int64) @ np.stack(
            [np.roll(g, np.unravel_index(q, shape), axis=(0, 1, 2)).ravel() for q in range(n)]
        )
        ranks = dk.void_and_cluster_ranks(pattern, energy, g, 4 * n)
        np.testing.assert_array_equal(ranks, ref.void_and_cluster(pattern, g, 4 * n))
