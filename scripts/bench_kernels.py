"""Benchmark: volbin's compiled loops, one thread, in nanoseconds per voxel.

    python scripts/bench_kernels.py                  # a (181, 217, 181) head-like volume
    python scripts/bench_kernels.py --repeat 9 --shape 96 112 96

Times the loops through their Python entry points (`volbin._kernels`,
`volbin._dither_kernels`), after one untimed call, as the median of --repeat runs of this
process's CPU time.  Run it with PYTHONPATH pointing at another checkout to compare two
builds on the same machine; the output is one line per loop.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.ndimage as ndi

import volbin
from volbin import _dither_kernels as dk
from volbin import _kernels as K
from volbin import ordered


def head(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A head-like float32 volume in [0, 1]: dark background, bright shell, textured inside."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / a) ** 2 for g, a in zip(grids, (0.85, 0.9, 0.8), strict=True)))
    texture = ndi.gaussian_filter(rng.random(shape, dtype=np.float32), 3)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    vol = np.zeros(shape, np.float32)
    vol[r < 1.0] = 0.85
    inside = r < 0.9
    vol[inside] = 0.25 + 0.5 * texture[inside]
    vol[(r < 0.35) & (texture > 0.55)] = 0.1
    vol = np.clip(ndi.gaussian_filter(vol, 1.0), 0, 1)
    return (vol + rng.normal(0, 0.01, shape).astype(np.float32)).clip(0, 1)


def median_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(181, 217, 181))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    shape = tuple(args.shape)
    vol = head(shape)
    n = vol.size
    f32 = np.ascontiguousarray(vol * 1000)
    i16 = f32.astype(np.int16)
    g1 = np.zeros(3, np.int64)  # one group
    gz = np.array([1, 0, 0], np.int64)  # one group per slice along axis 0
    cases = {}
    for name, data, gs in (("float32", f32, g1), ("int16", i16, g1), ("float32 per slice", f32, gz)):
        x4, g4 = K.as_c4d(data, gs)
        ng = shape[0] if gs[0] else 1
        lo, hi = np.zeros(ng), np.full(ng, 1000.0)

        def minmax(x4=x4, g4=g4, ng=ng):
            K.group_minmax(x4, g4, np.full(ng, np.inf), np.full(ng, -np.inf), np.zeros(ng, np.int64))

        def stats(x4=x4, g4=g4, ng=ng):
            z = np.zeros(ng)
            K.group_stats(x4, g4, ng, np.full(ng, np.inf), np.full(ng, -np.inf), np.zeros(ng, np.int64),
                          z.copy(), z.copy(), np.zeros((ng, 3), np.int64))  # fmt: skip

        def hist(x4=x4, g4=g4, ng=ng, lo=lo, hi=hi, nbins=256):
            K.group_histogram(x4, g4, lo, hi, nbins, np.zeros((ng, nbins), np.int64))

        def hist_fine(x4=x4, g4=g4, ng=ng, lo=lo, hi=hi, nbins=65536):
            K.group_histogram(x4, g4, lo, hi, nbins, np.zeros((ng, nbins), np.int64))

        def offsets(x4=x4, g4=g4, ng=ng, lo=lo, hi=hi, nbins=256):
            c = np.zeros((ng, nbins), np.int64)
            K.group_histogram_offsets(x4, g4, lo, hi, nbins, c, c.copy())

        cases[f"group_minmax {name}"] = minmax
        cases[f"group_stats {name}"] = stats
        cases[f"group_histogram 256 bins {name}"] = hist
        if not gs[0]:
            cases[f"group_histogram 65536 bins {name}"] = hist_fine
        cases[f"group_histogram_offsets {name}"] = offsets
    key = K.seed_key(1)
    shape4 = np.array((1, *shape), np.int64)
    p4 = vol[None]
    out_b = np.empty(p4.shape, bool)
    out_u = np.empty(p4.shape)
    cases["uniform_block"] = lambda: K.uniform_block(key, shape4, np.zeros(4, np.int64), out_u)
    cases["bernoulli_block float32"] = lambda: K.bernoulli_block(
        p4, key, shape4, np.zeros(4, np.int64), out_b
    )
    out = np.empty(vol.shape, np.uint8)
    for kern in ("floyd-steinberg", "jarvis-judice-ninke"):
        cases[f"diffuse_2d {kern}"] = lambda k=kern: dk.diffuse_2d(vol, out, k)
        cases[f"diffuse_2d {kern} serpentine"] = lambda k=kern: dk.diffuse_2d(vol, out, k, serpentine=True)
    cases["diffuse_2d floyd-steinberg jitter 0.2"] = lambda: dk.diffuse_2d(vol, out, jitter=0.2, key=key)
    cases["diffuse_3d floyd-steinberg-3d"] = lambda: dk.diffuse_3d(vol, out)
    cases["diffuse_3d floyd-steinberg-3d serpentine"] = lambda: dk.diffuse_3d(vol, out, serpentine=True)
    print(f"volbin from {volbin.__file__}; shape {shape}, {n} voxels, median of {args.repeat} (CPU time)")
    for name, fn in cases.items():
        t = median_time(fn, args.repeat)
        print(f"{name:48s} {t * 1e9 / n:8.3f} ns/voxel")
    vac = ordered._blue_noise.__wrapped__
    for size, ndim in ((64, 2), (32, 3)):
        t = median_time(lambda s=size, d=ndim: vac(s, d, 0, 1.5), max(1, args.repeat // 2))
        print(f"{f'blue_noise {size}^{ndim} (void-and-cluster)':48s} {t:8.3f} s")


if __name__ == "__main__":
    main()
