"""Whole-volume 2D Floyd-Steinberg: volbin on all cores against Pillow slice by slice.

    python scripts/bench_dither_volume.py

Both dither the same uint8 slices of a 181x217x181 phantom (volbin works in float32 on
the slices divided by 255, with rescale 'none'); median of 5 runs, wall time.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from PIL import Image

import volbin


def main() -> None:
    ph = volbin.phantom((181, 217, 181), seed=0)
    r = volbin.rescale(ph.intensity)
    u8 = np.round(r * 255).astype(np.uint8)
    grey = u8.astype(np.float32) / 255
    volbin.dither(grey[:, :, :4], rescale="none")  # compile / load kernels

    def pillow() -> np.ndarray:
        out = np.empty(u8.shape, bool)
        for z in range(u8.shape[2]):
            # Pillow scans rows of (rows, cols) = (y, x), as volbin does for axial slices.
            img = Image.fromarray(np.ascontiguousarray(u8[:, :, z].T)).convert("1")
            out[:, :, z] = np.asarray(img).T
        return out

    def ours() -> np.ndarray:
        return volbin.dither(grey, "floyd-steinberg", scope="slice", axis="z", rescale="none")

    times: dict[str, list[float]] = {"pillow": [], "volbin": []}
    for _ in range(5):
        for name, fn in (("pillow", pillow), ("volbin", ours)):
            t0 = time.perf_counter()
            res = fn()
            times[name].append(time.perf_counter() - t0)
            if name == "pillow":
                ref = res
            else:
                out = res
    p, v = statistics.median(times["pillow"]), statistics.median(times["volbin"])
    print(f"volume {u8.shape} uint8 slices, {os.cpu_count()} cores; median of 5 runs (wall)")
    print(f"{'what':<48} {'seconds':>8} {'ratio':>6}")
    label = 'Pillow convert("1"), slice by slice, 1 thread'
    print(f"{label:<48} {p:>8.3f} {1.0:>6.2f}")
    print(f"{'volbin.dither(scope=slice), all cores':<48} {v:>8.3f} {p / v:>6.2f}")
    print(f"ones: Pillow {ref.mean():.4f}, volbin {out.mean():.4f}, input {grey.mean():.4f}")


if __name__ == "__main__":
    main()
