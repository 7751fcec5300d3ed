"""Benchmark: printer export of the 181 x 217 x 181 phantom at 600 x 300 dpi and 0.027 mm layers.

    python scripts/bench_export.py               # N = 16 and 2N = 32 layers, 2D and 3D diffusion
    python scripts/bench_export.py --layers 40   # N = 40 and 80

The phantom (1 mm voxels) is written once to a NIfTI file; every export runs in a fresh
process that loads it, so peak memory is that of one export.  The printer grid is
4276 x 2563 pixels per layer and 6704 layers (72 gigavoxels).  Each run writes the first N or
2N layers (2D rows also start mid-head, where layers hold more detail); the table shows the
one-off setup (range pass and input hash), layers per second of the layer loop, and peak
memory: numpy's allocations (tracemalloc) and the process's resident set size (RSS, sampled
every millisecond; "above start" excludes the interpreter and libraries).  Peak memory must
not grow from N to 2N layers.  A last line compares interpolating one layer with volbin's
axis-by-axis path and with scipy.ndimage.map_coordinates.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil

DPI = (600, 300)
LAYER = 0.027


class PeakRSS:
    """Sample this process's RSS in a thread; `peak` is the maximum seen."""

    def __init__(self, interval: float = 0.001) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def child(src: str, out: str, mode: str, start: int, n: int) -> None:
    """One export in this process; prints a JSON line of measurements."""
    import volbin
    from volbin.printer import export_slices

    vol = volbin.load(src)
    tracemalloc.start()
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        res = export_slices(
            vol, out, dpi=DPI, layer=LAYER, mode=mode, layers=(start, start + n), progress=False
        )
    total = time.perf_counter() - t0
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    m = res.manifest
    print(
        json.dumps(
            {
                "mode": mode,
                "start": start,
                "n": n,
                "written": len(res.written),
                "total": total,
                "loop": res.seconds,
                "traced": traced,
                "rss_peak": rss.peak,
                "rss_start": rss.start,
                "shape": [m["width"], m["height"], m["layer_count"]],
                "density": float(np.mean([r["density"] for r in m["layers"]])),
            }
        )
    )


def resample_ratio(src: str) -> tuple[float, float]:
    """Seconds to interpolate one mid-head layer: volbin's path and map_coordinates."""
    from scipy import ndimage

    import volbin
    from volbin.printer import print_grid
    from volbin.resample import resample_block

    vol = volbin.load(src)
    g = print_grid(vol, DPI, LAYER)
    k = g.shape[2] // 2
    loc = [(0, g.shape[1]), (0, g.shape[0]), (k, k + 1)]
    region = g.vmap.region(loc)
    x = np.ascontiguousarray(vol.compute()[:, :, region[2][0] : region[2][1]], dtype=np.float32)
    start = [0, 0, region[2][0]]
    resample_block(g.vmap, x, start, loc)  # warm up
    t0 = time.perf_counter()
    ours = resample_block(g.vmap, x, start, loc)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = np.empty(ours.shape[:2], np.float32)
    rows = 256
    j = np.arange(g.shape[0], dtype=np.float64)
    m, off = g.vmap.matrix, g.vmap.offset
    for r0 in range(0, g.shape[1], rows):
        i = np.arange(r0, min(g.shape[1], r0 + rows), dtype=np.float64)[:, None]
        c = np.empty((3, i.size, j.size))
        for p in range(3):
            c[p] = m[p, 0] * i + m[p, 1] * j[None, :] + m[p, 2] * k + off[p]
        c[2] -= start[2]
        ndimage.map_coordinates(x, c, order=1, mode="nearest", output=ref[r0 : r0 + rows])
    t_ref = time.perf_counter() - t0
    assert np.allclose(ours[..., 0], ref, atol=1e-5)
    return t_ours, t_ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16, help="N: runs write N and 2N layers (16)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        src, out, mode, start, n = args.child
        child(src, out, mode, int(start), int(n))
        return

    import volbin

    n = args.layers
    with tempfile.TemporaryDirectory() as tmp:
        ph = volbin.phantom((181, 217, 181), seed=0)
        src = str(volbin.save(volbin.Volume(ph.intensity, affine=ph.affine), Path(tmp, "head.nii")))
        del ph
        mid = 3352
        runs = [
            ("2d", 0, n),
            ("2d", 0, 2 * n),
            ("3d", 0, n),
            ("3d", 0, 2 * n),
            ("2d", mid, n),
            ("2d", mid, 2 * n),
        ]
        rows = []
        for i, (mode, start, count) in enumerate(runs):
            out = str(Path(tmp, f"stack{i}"))
            cmd = [sys.executable, __file__, "--child", src, out, mode, str(start), str(count)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode:
                sys.exit(res.stderr)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        t_ours, t_ref = resample_ratio(src)

    w, h, nl = rows[0]["shape"]
    print(
        f"phantom 181 x 217 x 181 (1 mm) -> {w} x {h} px x {nl} layers at "
        f"{DPI[0]}x{DPI[1]} dpi, {LAYER} mm layers ({w * h * nl / 1e9:.1f} gigavoxels)"
    )
    head = (
        f"{'mode':>4} {'layers':>12} {'setup s':>8} {'loop s':>7} {'layers/s':>9} "
        f"{'density':>8} {'traced MB':>10} {'RSS MB':>8} {'above start':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        span = f"{r['start']}-{r['start'] + r['n'] - 1}"
        print(
            f"{r['mode']:>4} {span:>12} {r['total'] - r['loop']:>8.2f} {r['loop']:>7.2f} "
            f"{r['n'] / r['loop']:>9.2f} {r['density']:>8.4f} {r['traced'] / 1e6:>10.1f} "
            f"{r['rss_peak'] / 1e6:>8.0f} {(r['rss_peak'] - r['rss_start']) / 1e6:>12.0f}"
        )
    for mode, a, b in (("2d", 0, 1), ("3d", 2, 3), ("2d", 4, 5)):
        ra, rb = rows[a], rows[b]
        print(
            f"{mode} from layer {ra['start']}: peak traced memory {rb['n']} / {ra['n']} layers = "
            f"{rb['traced'] / ra['traced']:.3f}; RSS above start "
            f"{(rb['rss_peak'] - rb['rss_start']) / max(ra['rss_peak'] - ra['rss_start'], 1):.3f}"
        )
    print(
        f"interpolating one layer: volbin {t_ours * 1e3:.0f} ms, scipy.ndimage.map_coordinates "
        f"{t_ref * 1e3:.0f} ms (x{t_ref / t_ours:.1f})"
    )


if __name__ == "__main__":
    main()
