"""Threshold arrays for ordered dithering: Bayer matrices and void-and-cluster blue noise.

A threshold array holds the values ``(rank + 0.5) / size`` for the ranks ``0 .. size - 1``
of its cells, so that a constant intensity ``c`` turns on the fraction ``c`` of the cells (to
within ``1 / size``).  `ordered_dither_block` tiles an array over a block at the block's
global position, so dithering a volume chunk by chunk gives the same bytes as in one piece.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._dither_kernels import void_and_cluster_ranks
from ..errors import VolbinError
from ..io import write_atomic

__all__ = ["bayer_matrix", "blue_noise", "ordered_dither_block"]

#: Energies of void-and-cluster are kept as integers in units of 2**-40 of the filter's total
#: weight: incremental updates are then exact, so results do not depend on summation order.
_ENERGY_SCALE = 2.0**40


def _check_ndim(ndim) -> int:
    if ndim not in (2, 3) or isinstance(ndim, bool):
        raise ValueError(f"`ndim` must be 2 or 3; got {ndim!r}.")
    return int(ndim)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _bayer_base(ndim: int) -> np.ndarray:
    if ndim == 2:
        return np.array([[0, 2], [3, 1]], np.int64)
    z, y, x = np.indices((2, 2, 2))
    return 4 * (x ^ y) + 2 * (y ^ z) + z


@functools.lru_cache(maxsize=32)
def _bayer(n: int, ndim: int) -> np.ndarray:
    base = _bayer_base(ndim)
    m = np.zeros((1,) * ndim, np.int64)
    for _ in range(n):
        # M(2k)[i] = 2**ndim * M(k)[i mod k] + D[i // k]
        m = base.size * np.tile(m, (2,) * ndim) + np.kron(base, np.ones_like(m))
    return _readonly((m + 0.5) / m.size)


def bayer_matrix(n: int, ndim: int = 2) -> np.ndarray:
    """The Bayer threshold matrix of side ``2**n``, as thresholds ``(rank + 0.5) / size``.

    Parameters
    ----------
    n : int
        Order, >= 0; the matrix has ``2**n`` cells per side.
    ndim : {2, 3}
        Number of dimensions.

    Returns
    -------
    (2**n,) * ndim float64 ndarray
        Read-only (cached) thresholds in (0, 1).

    Raises
    ------
    ValueError
        If `n` is negative or above 10, or `ndim` is not 2 or 3.

    Notes
    -----
    The recursion is Bayer's: ``M(2k) = 2**ndim * M(k)`` (tiled) ``+ D`` (each cell of ``D``
    repeated over a ``k``-block).  In 2D ``D = [[0, 2], [3, 1]]``.  In 3D the base matrix
    generalises the closed form of the 2D one, ``rank = 2 (x xor y) + y``, to
    ``D[z, y, x] = 4 (x xor y) + 2 (y xor z) + z``: each pair of successive ranks sits at
    opposite corners of the cube (the farthest apart two cells can be), and the plane
    ``z = 0`` orders its cells as the 2D matrix does.

    Examples
    --------
    >>> bayer_matrix(1) * 4 - 0.5
    array([[0., 2.],
           [3., 1.]])
    """
    ndim = _check_ndim(ndim)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 0 <= n <= 10:
        raise ValueError(f"`n` must be an int in [0, 10]; got {n!r}.")
    if ndim == 3 and n > 7:
        raise ValueError(f"`n` must be at most 7 for 3D matrices; got {n}.")
    return _bayer(int(n), ndim)


def _gaussian_response(shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Toroidal Gaussian filter response of one cell at the origin, from its Fourier form.

    The periodic Gaussian's transfer function is ``exp(-2 pi^2 sigma^2 |f|^2)``; its inverse
    FFT is the Gaussian wrapped around the torus (no truncation).
    """
    f2 = np.zeros(shape)
    for axis, n in enumerate(shape):
        f = np.fft.fftfreq(n)
        f2 = f2 + (f**2).reshape([n if a == axis else 1 for a in range(len(shape))])
    g = np.fft.ifftn(np.exp(-2.0 * np.pi**2 * sigma**2 * f2)).real
    return g / g.sum()


#: Arrays of at least this many cells are kept on disk (`cache_dir`) and announced on stderr
#: while they are generated (64**3 takes 15 s or so).
_DISK_CACHE_CELLS = 2**15


def cache_dir() -> Path:
    """Folder of volbin's on-disk cache: ``$VOLBIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/volbin``,
    else ``~/.cache/volbin``."""
    if os.environ.get("VOLBIN_CACHE_DIR"):
        return Path(os.environ["VOLBIN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "volbin"


def _cache_path(size: int, ndim: int, seed: int, sigma: float) -> Path:
    return cache_dir() / f"blue-noise-v1-{ndim}d-{size}-seed{seed}-sigma{sigma!r}.npy"


def _read_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached thresholds, or None when missing or not exactly a valid array of `shape`."""
    try:
        with open(path, "rb") as f:
            a = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    n = int(np.prod(shape))
    if a.shape != shape or a.dtype != np.float64:
        return None
    ranks = np.rint(a.ravel() * n - 0.5)
    exact = np.array_equal((ranks + 0.5) / n, a.ravel())
    if not (exact and np.array_equal(np.sort(ranks), np.arange(n, dtype=np.float64))):
        return None  # corrupt: not the thresholds of a permutation
    return a


def _write_cached(path: Path, a: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: np.save(f, a, allow_pickle=False))
    except (OSError, VolbinError):
        pass  # a cache that cannot be written is only a cache


@functools.lru_cache(maxsize=16)
def _blue_noise(size: int, ndim: int, seed: int, sigma: float) -> np.ndarray:
    shape = (size,) * ndim
    n = size**ndim
    if n < _DISK_CACHE_CELLS:
        return _readonly(_void_and_cluster(size, ndim, seed, sigma))
    path = _cache_path(size, ndim, seed, sigma)
    cached = _read_cached(path, shape)
    if cached is not None:
        return _readonly(cached)
    t0 = time.perf_counter()
    print(
        f"volbin: generating a {'x'.join([str(size)] * ndim)} blue-noise pattern (seed {seed}), "
        f"once: it is cached in {path.parent} ...",
        file=sys.stderr,
        flush=True,
    )
    a = _void_and_cluster(size, ndim, seed, sigma)
    print(
        f"volbin: blue-noise pattern ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True
    )
    _write_cached(path, a)
    return _readonly(a)


def _void_and_cluster(size: int, ndim: int, seed: int, sigma: float) -> np.ndarray:
    shape = (size,) * ndim
    n = size**ndim
    g = np.rint(_gaussian_response(shape, sigma) * _ENERGY_SCALE).astype(np.int64)
    rng = np.random.default_rng(seed)
    ones = max(1, n // 10)
    pattern = np.zeros(n, np.uint8)
    pattern[rng.permutation(n)[:ones]] = 1
    # Initial energy by FFT (circular convolution); rounding recovers the exact integers.
    energy = np.fft.ifftn(np.fft.fftn(pattern.reshape(shape)) * np.fft.fftn(g)).real
    energy = np.rint(energy).astype(np.int64).reshape(n)
    g3 = np.ascontiguousarray(g.reshape((1,) * (3 - ndim) + shape))
    ranks = void_and_cluster_ranks(pattern, energy, g3, 4 * n)
    return ((ranks + 0.5) / n).reshape(shape)


def blue_noise(size: int, ndim: int = 2, seed: int = 0, sigma: float = 1.5) -> np.ndarray:
    """A blue-noise threshold array by void-and-cluster (Ulichney 1993), cached per arguments.

    Parameters
    ----------
    size : int
        Cells per side, >= 4 (``size**ndim`` at most 2**18; 32**3 takes about a second).
    ndim : {2, 3}
        Number of dimensions.
    seed : int
        Seed of the initial random pattern; the same seed gives the same array.
    sigma : float
        Standard deviation of the Gaussian filter, in cells (Ulichney uses 1.5).

    Returns
    -------
    (size,) * ndim float64 ndarray
        Read-only thresholds ``(rank + 0.5) / size**ndim``.

    Raises
    ------
    ValueError
        On a bad `size`, `ndim`, `seed` or `sigma`.

    Notes
    -----
    The filter is toroidal, so the array tiles seamlessly.  The initial pattern (a tenth of
    the cells, chosen by ``numpy.random.default_rng(seed)``) is relaxed by moving its tightest
    cluster into its largest void until they coincide; its ones are ranked by removing
    tightest clusters, the rest by filling largest voids.  Energies are updated incrementally
    in exact integers, so each step costs one pass over the array.

    Arrays of 2**15 cells or more (32**3, 64**3, 256**2) are generated once and kept in
    `cache_dir` (``$VOLBIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/volbin``, else
    ``~/.cache/volbin``), one ``.npy`` file per (size, ndim, seed, sigma); generation is
    deterministic, so the cached array is exactly the generated one.  Files are written
    atomically (concurrent runs are safe); a file that is not a valid array of thresholds is
    ignored and regenerated.  A line on stderr announces the generation.

    References
    ----------
    R. Ulichney, "The void-and-cluster method for dither array generation", Proc. SPIE 1913,
    Human Vision, Visual Processing, and Digital Display IV (1993).

    Examples
    --------
    >>> t = blue_noise(8)
    >>> t.shape, np.array_equal(np.sort((t * 64 - 0.5).round().ravel()), np.arange(64))
    ((8, 8), True)
    """
    ndim = _check_ndim(ndim)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 4:
        raise ValueError(f"`size` must be an int >= 4; got {size!r}.")
    if int(size) ** ndim > 2**18:
        raise ValueError(
            f"`size`**`ndim` must be at most 2**18 cells; got {size}**{ndim}. Tile a smaller array instead."
        )
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int; got {seed!r}.")
    sigma = float(sigma)
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"`sigma` must be a positive number; got {sigma}.")
    return _blue_noise(int(size), ndim, int(seed), sigma)


def ordered_dither_block(
    block: np.ndarray,
    matrix: np.ndarray,
    offset: Sequence[int] | None = None,
    axes: Sequence[int] | None = None,
) -> np.ndarray:
    """``block > thresholds`` with `matrix` tiled over the block at its global position.

    Parameters
    ----------
    block : ndarray
        Intensities in [0, 1] (NaN gives 0).
    matrix : ndarray
        Threshold array (`bayer_matrix`, `blue_noise`), with ``matrix.ndim <= block.ndim``.
    offset : sequence of int, optional
        Global index of ``block[0, ..., 0]`` along every axis of `block` (default 0s).
    axes : sequence of int, optional
        The axes of `block` the matrix axes run along, increasing (default: the last
        ``matrix.ndim`` axes); the matrix repeats along the other axes.

    Returns
    -------
    uint8 ndarray of the block's shape
        1 where the block exceeds the threshold at its global position.

    Raises
    ------
    ValueError
        On mismatched dimensions, offset or axes.

    Examples
    --------
    >>> b = np.full((4, 4), 0.5)
    >>> ordered_dither_block(b, bayer_matrix(1))
    array([[1, 0, 1, 0],
           [0, 1, 0, 1],
           [1, 0, 1, 0],
           [0, 1, 0, 1]], dtype=uint8)
    """
    block = np.asarray(block)
    matrix = np.asarray(matrix)
    if matrix.ndim == 0 or matrix.ndim > block.ndim or 0 in matrix.shape:
        raise ValueError(
            f"`matrix` must have 1 to block.ndim = {block.ndim} non-empty axes; got shape {matrix.shape}."
        )
    if axes is None:
        axes = tuple(range(block.ndim - matrix.ndim, block.ndim))
    axes = tuple(int(a) for a in axes)
    if (
        len(axes) != matrix.ndim
        or list(axes) != sorted(set(axes))
        or not all(0 <= a < block.ndim for a in axes)
    ):
        raise ValueError(f"`axes` must be {matrix.ndim} increasing axes of the block; got {axes}.")
    offset = (0,) * block.ndim if offset is None else tuple(int(o) for o in offset)
    if len(offset) != block.ndim:
        raise ValueError(f"`offset` must have {block.ndim} entries; got {offset}.")
    index = [(offset[a] + np.arange(block.shape[a])) % matrix.shape[i] for i, a in enumerate(axes)]
    tile = matrix[np.ix_(*index)]
    shape = [1] * block.ndim
    for a in axes:
        shape[a] = block.shape[a]
    return (block > tile.reshape(shape)).view(np.uint8)
