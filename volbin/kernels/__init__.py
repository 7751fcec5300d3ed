"""Compiled loops, built ahead of time (Cython) when the package is installed.

Modules
-------
_random
    Counter-based uniforms (SplitMix64's output function of ``key + (index + 1) * gamma``):
    `uniform_block`, `bernoulli_block`.  ``_splitmix.pxd`` exposes an inline ``uniform01`` to
    the other kernels, so that every loop draws the same numbers.
_histogram
    Per-group statistics of 4D C-contiguous blocks of any native numeric type: finite range
    (`group_minmax`), moments (`group_stats`), histograms with ``np.histogram``'s bin
    assignment (`group_histogram`) and in-bin offsets (`group_histogram_offsets`).
_diffusion
    Error diffusion of 2D slice stacks (`diffuse_slices`; `diffuse_lanes`, 16 slices in
    lockstep read from a view of raw data of any strides and type, rescaled as read) and of
    volumetric slabs carrying their error to the next slab (`diffuse_volume`); staging of
    raw views into float32 slabs and back (`load_slab`, `store_slab`).
_void_cluster
    Void-and-cluster ranks of blue-noise threshold arrays (`void_and_cluster_ranks`).
_simd.h
    Vector versions (SSE2, AVX2, AVX-512) of the hot row loops of binning, finite range,
    random draws, void-and-cluster, the lockstep diffusion and its rescale, picked at import
    from the CPU (``SIMD_LEVEL`` of each module).  Each computes lane by lane the IEEE
    operations of its scalar version, so the machine changes the speed, never a result; the
    tests run every version.

The loops take C-contiguous arrays of fixed types (the view loops of `_diffusion`, strided
ones), read no module globals but constants, release the GIL (dask's threads run them in
parallel) and know nothing of dask, files or scopes: the Python modules ``volbin._kernels``
and ``volbin._dither_kernels`` validate and prepare their arguments.  They are compiled
without fast-math and without fused multiply-add (``-ffp-contract=off``), so float results
are the same on every build and match ``tests/reference.py`` bit for bit.
"""
