"""Benchmark: volbin's compiled loops, one thread, in nanoseconds per voxel.

    python scripts/bench_kernels.py                  # a (181, 217, 181) head-like volume
    python scripts/bench_kernels.py --repeat 9 --shape 96 112 96
    python scripts/bench_kernels.py --tree /old/checkout --tree . --rounds 3

Times the loops through their Python entry points (`volbin._kernels`,
`volbin._dither_kernels`), after one untimed call, as the median of --repeat runs of this
process's CPU time; one line per loop.  With --tree, the checkouts are put on PYTHONPATH in
turn, in alternating child processes (--rounds of them each, so that a busy machine slows
them alike), and the table gives each tree's median and the ratio to the first tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

if not os.environ.get("PYTHONPATH"):  # this checkout, unless told otherwise
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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
    parser.add_argument("--tree", type=Path, action="append", help="checkout to compare (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tree:
        compare(args)
        return
    results = measure(tuple(args.shape), args.repeat, quiet=args.json)
    if args.json:
        print(json.dumps(results))


def compare(args: argparse.Namespace) -> None:
    trees = [t.resolve() for t in args.tree]
    runs: dict[Path, list[dict[str, float]]] = {t: [] for t in trees}
    cmd = [sys.executable, __file__, "--json", "--repeat", str(args.repeat), "--shape", *map(str, args.shape)]
    for _ in range(args.rounds):
        for t in trees:
            env = dict(os.environ, PYTHONPATH=str(t))
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            runs[t].append(json.loads(out.splitlines()[-1]))
    names = list(runs[trees[0]][0])
    print(f"shape {tuple(args.shape)}; median over {args.rounds} rounds of the medians of {args.repeat}")
    heads = "".join(f" {f'tree {i}':>9s}" for i in range(len(trees)))
    heads += "".join(f" {f'{i}/0':>6s}" for i in range(1, len(trees)))
    print(f"{'loop (ns/voxel; blue noise: s)':48s}{heads}")
    for i, t in enumerate(trees):
        print(f"  tree {i}: {t}")
    for name in names:
        med = [statistics.median(r[name] for r in runs[t]) for t in trees]
        print(
            f"{name:48s}"
            + "".join(f" {m:9.3f}" for m in med)
            + "".join(f" {m / med[0]:6.2f}" for m in med[1:])
        )


def measure(shape: tuple[int, ...], repeat: int, quiet: bool = False) -> dict[str, float]:
    import volbin
    from volbin import _dither_kernels as dk
    from volbin import _kernels as K
    from volbin import ordered

    vol = head(shape)  # type: ignore[arg-type]
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
    say = (lambda *a: None) if quiet else print
    say(f"volbin from {volbin.__file__}; shape {shape}, {n} voxels, median of {repeat} (CPU time)")
    results = {}
    for name, fn in cases.items():
        results[name] = median_time(fn, repeat) * 1e9 / n
        say(f"{name:48s} {results[name]:8.3f} ns/voxel")
    vac = ordered._blue_noise.__wrapped__
    for size, ndim in ((64, 2), (128, 2), (32, 3)):
        name = f"blue_noise {size}^{ndim} (void-and-cluster)"
        results[name] = median_time(lambda s=size, d=ndim: vac(s, d, 0, 1.5), max(1, repeat // 2))
        say(f"{name:48s} {results[name]:8.3f} s")
    return results


if __name__ == "__main__":
    main()
