"""Benchmark: the intensity stage inside binarize against its peers on the same data, one run.

    python scripts/bench_intensity.py                  # 181 x 217 x 181 float32 phantom, 6 files
    python scripts/bench_intensity.py --files 10 --repeat 3

Rows (median wall and CPU seconds, and peak RSS above the start of each run):

- ``zscore``: `volbin.binarize(x, "value", threshold=1, units="normalized",
  normalize="zscore", mask=m)` against numpy (the masked mean and std, the z-scores, the
  comparison);
- ``clahe``: `volbin.binarize(x, "otsu", curve="clahe")` against scikit-image's
  ``equalize_adapthist`` then ``threshold_otsu``, and volbin with the CLAHE output
  recomputed by each pass instead of spilled once (`volbin.io.spill` replaced by the
  identity);
- ``normalize many``: `volbin normalize FILES --out-dir --method zscore --scheduler threads`
  against a loop of `volbin normalize IN OUT` on each file, on ``.nii.gz`` files.

Each row checks that volbin's output equals the peer's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import PeakRSS


def timed(fn, repeat: int):
    """Median wall and CPU seconds of `fn`, its largest peak RSS above the start, its result."""
    walls, cpus, peaks, out = [], [], [], None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        with PeakRSS() as rss:
            out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        peaks.append(rss.peak - rss.start)
    return statistics.median(walls), statistics.median(cpus), max(peaks), out


def row(name: str, wall: float, cpu: float, peak: int, base: tuple[float, float] | None) -> str:
    ratio = "" if base is None else f"{wall / base[0]:6.2f} {cpu / base[1]:6.2f}"
    return f"  {name:<42} {wall:8.2f} {cpu:8.2f} {peak / 2**20:9.0f}  {ratio}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(181, 217, 181))
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from skimage import exposure
    from skimage.filters import threshold_otsu

    import volbin
    import volbin.io as vio
    from volbin.cli import main as cli

    p = volbin.phantom(tuple(args.shape), seed=0)
    x, m = np.asarray(p.intensity, dtype=np.float32), p.brain
    print(f"phantom {tuple(args.shape)} float32, {x.nbytes / 2**20:.0f} MiB; {os.cpu_count()} cores")
    head = f"  {'':<42} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9}  ratio wall, cpu"
    volbin.binarize(x[:8, :8, :8], "otsu")  # imports, kernels

    print("zscore then a threshold in z-score units")
    print(head)

    def numpy_z():
        xd = x.astype(np.float64)
        inside = xd[m]
        return m & (((xd - inside.mean()) / inside.std()).astype(np.float32) > 1.0)

    w0, c0, p0, ref = timed(numpy_z, args.repeat)
    print(row("numpy", w0, c0, p0, None))
    w, c, pk, out = timed(
        lambda: volbin.binarize(x, "value", threshold=1.0, units="normalized", normalize="zscore", mask=m),
        args.repeat,
    )
    print(row("volbin.binarize(normalize='zscore')", w, c, pk, (w0, c0)))
    assert np.array_equal(out, ref)

    print("CLAHE then Otsu")
    print(head)
    r = (x.astype(np.float64) - x.min()) / (x.max() - x.min())

    def skimage_clahe():
        e = exposure.equalize_adapthist(r).astype(np.float32)
        return e > threshold_otsu(e)

    w0, c0, p0, ref = timed(skimage_clahe, 1)
    print(row("equalize_adapthist + threshold_otsu", w0, c0, p0, None))
    w, c, pk, out = timed(lambda: volbin.binarize(x, "otsu", curve="clahe"), 1)
    print(row("volbin.binarize(curve='clahe')", w, c, pk, (w0, c0)))
    assert np.array_equal(out, ref)
    saved = vio.spill  # prepare imports it when it runs
    vio.spill = lambda data, what="": data
    try:
        w, c, pk, again = timed(lambda: volbin.binarize(x, "otsu", curve="clahe"), 1)
    finally:
        vio.spill = saved
    print(row("  the same, CLAHE recomputed by each pass", w, c, pk, (w0, c0)))
    assert np.array_equal(again, ref)

    print(f"normalize {args.files} .nii.gz files (zscore)")
    print(head)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(args.files):
            f = Path(tmp, f"sub-{i:02d}_T1w.nii.gz")
            volbin.save(x * (1 + 0.1 * i), f, sidecar=False)
            files.append(str(f))
        quiet = ["--no-progress"]
        runs = {"loop": 0, "many": 0}

        def loop():
            runs["loop"] += 1
            for f in files:
                out = f"{tmp}/loop{runs['loop']}_{Path(f).name}"
                assert cli(["normalize", f, out, "--method", "zscore", *quiet]) == 0

        def many():
            runs["many"] += 1
            argv = ["normalize", *files, "--out-dir", f"{tmp}/many{runs['many']}", "--method", "zscore"]
            assert cli([*argv, "--scheduler", "threads", *quiet]) == 0

        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            with contextlib.redirect_stderr(devnull):
                w0, c0, p0, _ = timed(loop, args.repeat)
                w, c, pk, _ = timed(many, args.repeat)
        print(row("volbin normalize IN OUT, file after file", w0, c0, p0, None))
        print(row("volbin normalize FILES --out-dir", w, c, pk, (w0, c0)))
        a = volbin.load(f"{tmp}/loop1_{Path(files[-1]).name}").compute()
        b = volbin.load(f"{tmp}/many1/{Path(files[-1]).name.replace('_T1w', '_T1w_norm')}").compute()
        assert a.tobytes() == b.tobytes()


if __name__ == "__main__":
    main()
