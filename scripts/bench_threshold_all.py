"""Every histogram method side by side (`volbin threshold`) against Otsu alone.

On a (10, 181, 217, 181) float64 stack made from volbin.phantom (568 MB), scope volume:

- ``otsu``: ``volbin.threshold(x, "otsu")`` (range pass + histogram pass);
- ``survey otsu``: the table for Otsu alone (range, histogram, foreground count);
- ``survey all``: the table for all 14 histogram methods (range, one histogram with bin
  means, one count of every threshold's foreground).

Wall and CPU seconds (the machine may be shared: CPU seconds are the steadier figure), best
of ``--repeat`` runs, and the ratio to Otsu alone.  Usage:
``python scripts/bench_threshold_all.py [--repeat 3] [--small]``.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

import volbin
from volbin.phantom import phantom
from volbin.survey import survey


def timed(fn, repeat):
    best = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        best = (w, c) if best is None or w < best[0] else best
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="(3, 91, 109, 91) for a quick check")
    args = ap.parse_args()
    shape, n = ((91, 109, 91), 3) if args.small else ((181, 217, 181), 10)
    vols = phantom(shape, n_volumes=n, seed=0).intensity
    x = np.ascontiguousarray(np.moveaxis(np.asarray(vols, dtype=np.float64), -1, 0))
    print(f"data {x.shape} {x.dtype}, {x.nbytes / 2**20:.0f} MiB; volume axis 0, scope volume")
    runs = {
        "otsu (volbin.threshold)": lambda: volbin.threshold(x, "otsu", volume_axis=0),
        "survey otsu alone": lambda: survey(x, ["otsu"], volume_axis=0),
        "survey all methods": lambda: survey(x, volume_axis=0),
    }
    results = {name: timed(fn, args.repeat) for name, fn in runs.items()}
    base_w, base_c = results["survey otsu alone"]
    print(f"{'run':<26} {'wall s':>8} {'CPU s':>8} {'wall x':>8} {'CPU x':>8}")
    for name, (w, c) in results.items():
        print(f"{name:<26} {w:>8.2f} {c:>8.2f} {w / base_w:>8.2f} {c / base_c:>8.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
