"""Benchmark: Otsu after histogram equalisation against Otsu alone, on the same stack.

    python scripts/bench_tone.py                   # (10, 181, 217, 181) float64 stack, ~570 MB
    python scripts/bench_tone.py --volumes 4 --repeat 3

Both run `volbin.binarize(stack, "otsu", volume_axis=0)` on a numpy stack of MRI-like
phantoms (per-volume decisions); the equalised run adds the fine-histogram pass and
histograms the equalised values.  A third run takes that decision histogram from
`rescale.equalized_histograms` (one pass that maps only the voxels of fine-bin intervals
straddling a bin edge) instead of histogramming `Transform.apply`'s output, as
`threshold.decide` can; its mask must equal the second's.  Prints median wall and CPU times
and the ratios to Otsu alone (target: at most 2), and checks the masks against
scikit-image's Otsu on the equalised volume.
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


def binarize_equalized(stack: np.ndarray) -> np.ndarray:
    """Otsu after equalisation, with the decision histogram from `equalized_histograms`."""
    from skimage.filters import threshold_otsu

    from volbin.binarize import apply_thresholds
    from volbin.recipe import Recipe
    from volbin.rescale import equalized_histograms, fit_transform
    from volbin.threshold import bin_centers
    from volbin.volume import as_volume, like_input

    vol, kind = as_volume(stack, volume_axis=0)
    g = vol.grouping("volume")
    tr = fit_transform(vol, g, Recipe(curve="equalize"))
    lo, hi = tr.from_raw(tr.data_min), tr.from_raw(tr.data_max)
    counts = equalized_histograms(vol, tr, lo, hi, 256)
    t = np.array(
        [threshold_otsu(hist=(counts[i], bin_centers(lo[i], hi[i], 256))) for i in range(g.n_groups)]
    )
    return like_input(vol.derive(apply_thresholds(vol.data, g, tr.to_raw(t), False)), kind)


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds of `fn` (CPU time is steadier on a shared machine)."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


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
    t_otsu, c_otsu, _ = timed(lambda: volbin.binarize(stack, "otsu", volume_axis=0), args.repeat)
    t_eq, c_eq, mask = timed(
        lambda: volbin.binarize(stack, "otsu", volume_axis=0, curve="equalize"), args.repeat
    )
    t_f, c_f, fused = timed(lambda: binarize_equalized(stack), args.repeat)
    print(f"{'':<32} {'wall s':>8} {'CPU s':>8} {'wall x':>8} {'CPU x':>8}")
    for name, t, c in (
        ("otsu", t_otsu, c_otsu),
        ("equalize + otsu (binarize)", t_eq, c_eq),
        ("equalize + otsu (fused hist)", t_f, c_f),
    ):
        print(f"{name:<32} {t:8.2f} {c:8.2f} {t / t_otsu:8.2f} {c / c_otsu:8.2f}")
    print("target: at most 2x Otsu alone")
    print(f"fused-histogram mask equals binarize's: {bool((fused == mask).all())}")
    if not args.no_check:
        from skimage.filters import threshold_otsu

        eq = volbin.rescale(stack[:1], curve="equalize", volume_axis=0)[0]
        same = bool(((eq > threshold_otsu(eq)) == mask[0]).all())
        print(f"volume 0 equals scikit-image's Otsu on the equalised volume: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
