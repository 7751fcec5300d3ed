"""Benchmark: Otsu after histogram equalisation against Otsu alone, on the same stack.

    python scripts/bench_tone.py                   # (10, 181, 217, 181) float64 stack, ~570 MB
    python scripts/bench_tone.py --volumes 4 --repeat 3

Both run `volbin.binarize(stack, "otsu", volume_axis=0)` on a numpy stack of MRI-like
phantoms (per-volume decisions); the equalised run adds the fine-histogram pass and
histograms the equalised values.  Prints the median times and their ratio (target: at most
2), and checks that the masks equal scikit-image's Otsu on the equalised volumes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def make_stack(n_volumes: int, shape: tuple[int, int, int]) -> np.ndarray:
    from volbin.phantom import phantom

    base = phantom(shape, seed=0).intensity.astype(np.float64)
    rng = np.random.default_rng(1)
    # Volumes first (C order, one contiguous volume per chunk), each its own gain and offset.
    stack = np.empty((n_volumes, *shape))
    for t in range(n_volumes):
        stack[t] = base * rng.uniform(0.5, 2.0) + rng.uniform(0, 100)
    return stack


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=10)
    parser.add_argument("--shape", type=int, nargs=3, default=(181, 217, 181))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-check", action="store_true", help="skip the scikit-image check")
    args = parser.parse_args(argv)

    import volbin

    stack = make_stack(args.volumes, tuple(args.shape))
    print(f"stack {stack.shape} {stack.dtype}, {stack.nbytes / 2**20:.0f} MiB; median of {args.repeat} runs")
    volbin.binarize(stack[:1, :16, :16, :16], "otsu", volume_axis=0, curve="equalize")  # warm the kernels
    t_otsu, _ = timed(lambda: volbin.binarize(stack, "otsu", volume_axis=0), args.repeat)
    t_eq, mask = timed(lambda: volbin.binarize(stack, "otsu", volume_axis=0, curve="equalize"), args.repeat)
    print(f"{'otsu':<20} {t_otsu:8.2f} s")
    print(f"{'equalize + otsu':<20} {t_eq:8.2f} s")
    print(f"{'ratio':<20} {t_eq / t_otsu:8.2f}  (target <= 2)")
    if not args.no_check:
        from skimage.filters import threshold_otsu

        eq = volbin.rescale(stack[:1], curve="equalize", volume_axis=0)[0]
        same = bool(((eq > threshold_otsu(eq)) == mask[0]).all())
        print(f"volume 0 equals scikit-image's Otsu on the equalised volume: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
