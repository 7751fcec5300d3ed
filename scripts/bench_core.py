"""Benchmark: volbin's Otsu binarization against scikit-image on the same data, one process.

    python scripts/bench_core.py                 # (10, 181, 217, 181) float64 stack, ~570 MB
    python scripts/bench_core.py --volumes 4 --repeat 3
    python scripts/bench_core.py --disk --memory-limit 1GB   # load -> otsu -> save from .npy

Prints a table of median times, the ratio, and peak memory above the input (RSS sampled
every millisecond, and numpy's allocations traced by tracemalloc).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil


class PeakRSS:
    """Sample this process's RSS in a thread; `peak` is the maximum seen."""

    def __init__(self, pid: int | None = None, interval: float = 0.001) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss
                for c in self.proc.children(recursive=True):
                    rss += c.memory_info().rss
            except psutil.Error:
                break
            self.peak = max(self.peak, rss)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def make_stack(n_volumes: int, shape: tuple[int, int, int]) -> np.ndarray:
    from volbin.phantom import phantom

    ph = phantom(shape, n_volumes=n_volumes, seed=0, max_intensity=1328.0, dtype="float64")
    # (T, X, Y, Z) as a researcher's np.stack of volumes, C-contiguous.
    return np.ascontiguousarray(np.moveaxis(ph.intensity, -1, 0))


def bench_memory(stack: np.ndarray, repeat: int) -> None:
    from skimage.filters import threshold_otsu

    import volbin

    volbin.binarize(stack[:1, :8], "otsu", scope="stack")  # compile / load kernels
    t_vb, t_sk, mem_rss, mem_trace = [], [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        mask = volbin.binarize(stack, "otsu", scope="stack")
        t_vb.append(time.perf_counter() - t0)
        del mask
        t0 = time.perf_counter()
        t = threshold_otsu(stack)
        ref = stack > t
        t_sk.append(time.perf_counter() - t0)
    # Memory in separate runs: tracemalloc slows every Python allocation down.
    for _ in range(2):
        with PeakRSS() as rss:
            mask = volbin.binarize(stack, "otsu", scope="stack")
        mem_rss.append(rss.peak - rss.start)
        del mask
        tracemalloc.start()
        mask = volbin.binarize(stack, "otsu", scope="stack")
        mem_trace.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        del mask
    mask = volbin.binarize(stack, "otsu", scope="stack")
    same = bool((mask == ref).all())
    vb, sk = statistics.median(t_vb), statistics.median(t_sk)
    nbytes = stack.nbytes
    print(f"data: {stack.shape} {stack.dtype}, {nbytes / 1e6:.0f} MB in memory; {repeat} runs, median")
    print(f"{'what':<52} {'seconds':>9} {'ratio':>7}")
    print(f"{'skimage threshold_otsu(stack); stack > t':<52} {sk:>9.3f} {1.0:>7.2f}")
    print(f"{'volbin.binarize(stack, method=otsu, scope=stack)':<52} {vb:>9.3f} {sk / vb:>7.2f}")
    print(f"masks identical: {same}")
    print(
        f"peak memory above the input: RSS {max(mem_rss) / 1e6:.0f} MB "
        f"({100 * max(mem_rss) / nbytes:.1f}% of input); numpy allocations "
        f"{max(mem_trace) / 1e6:.0f} MB ({100 * max(mem_trace) / nbytes:.1f}%)"
    )
    # The floor: three passes over memory (range, histogram, compare), single-threaded numpy.
    t0 = time.perf_counter()
    stack.min()
    stack.max()
    t_minmax = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.greater(stack, 1.0)
    t_cmp = time.perf_counter() - t0
    print(f"memory floor reference: numpy min+max {t_minmax:.3f} s, compare {t_cmp:.3f} s")


def bench_disk(stack: np.ndarray, limit: int, workdir: Path) -> None:
    src = workdir / "stack.npy"
    np.save(src, stack)
    dst = workdir / "mask.npy"
    size = src.stat().st_size
    cmd = [
        sys.executable,
        "-m",
        "volbin",
        "binarize",
        str(src),
        str(dst),
        "--method",
        "otsu",
        "--scope",
        "volume",
        "--volume-axis",
        "0",
        "--memory-limit",
        str(limit),
        "--force",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRSS(proc.pid) as rss:
        out, err = proc.communicate()
    if proc.returncode:
        print(err, file=sys.stderr)
        raise SystemExit(proc.returncode)
    print(
        f".npy on disk {size / 1e9:.2f} GB, --memory-limit {limit / 1e9:.2f} GB "
        f"({size / limit:.1f}x the limit): peak RSS {rss.peak / 1e9:.3f} GB "
        f"({'under' if rss.peak < limit else 'OVER'} the limit)"
    )
    print(out.strip())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=int, default=10)
    p.add_argument("--shape", type=int, nargs=3, default=(181, 217, 181))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--disk", action="store_true", help="also run load -> otsu -> save from a .npy")
    p.add_argument("--memory-limit", default="1GB")
    args = p.parse_args()
    stack = make_stack(args.volumes, tuple(args.shape))
    bench_memory(stack, args.repeat)
    if args.disk:
        from volbin.cli._common import parse_memory as _parse_memory

        limit = _parse_memory(args.memory_limit)
        reps = int(np.ceil(3 * limit / stack.nbytes))
        big = np.concatenate([stack] * reps) if reps > 1 else stack
        del stack
        with tempfile.TemporaryDirectory(dir=os.environ.get("VOLBIN_BENCH_DIR")) as d:
            bench_disk(big, limit, Path(d))


if __name__ == "__main__":
    main()
