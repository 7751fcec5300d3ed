"""Benchmark: start-up cost of volbin in whole processes, against numpy + nibabel.

    python scripts/bench_startup.py                          # this checkout
    python scripts/bench_startup.py --repeat 9 --tree /other/checkout --tree .

Each command runs in a fresh process (`--repeat` times, median wall-clock seconds), with
PYTHONPATH set to the tree, so two checkouts (say, before and after a change) are compared
on the same machine in one run:

* ``import numpy, nibabel``: the floor, what any NIfTI tool pays;
* ``import volbin``;
* ``volbin --version`` (what the console script runs: ``volbin.cli.main(["--version"])``);
* a first dither call: Floyd-Steinberg per slice of a (181, 217, 181) float32 volume, the
  whole process, and inside it the first and second calls of the loop's entry point
  (``_dither_kernels.diffuse_2d``), then of ``volbin.dither`` (dask graph, range pass).

The table gives seconds and ratios to the floor.  Compiled loops are built ahead of time, so
the first call should cost what the second does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

FLOOR = "import numpy, nibabel"
DITHER = """
import time
import numpy as np
t = [time.perf_counter()]
import volbin
from volbin import _dither_kernels
t.append(time.perf_counter())
vol = np.random.default_rng(0).random((181, 217, 181), dtype=np.float32)
for f in (_dither_kernels.diffuse_2d, _dither_kernels.diffuse_2d, volbin.dither, volbin.dither):
    t0 = time.perf_counter()
    f(vol)
    t.append(time.perf_counter() - t0)
print(t[1] - t[0], *t[2:])
"""
COMMANDS = {
    "import numpy, nibabel": FLOOR,
    "import volbin": "import volbin",
    "volbin --version": "import sys\nfrom volbin.cli import main\nsys.exit(main(['--version']))",
    "first dither call (process)": DITHER,
}


def run(code: str, tree: Path) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tree", type=Path, action="append", help="checkout to put on PYTHONPATH")
    args = parser.parse_args()
    trees = args.tree or [Path(__file__).resolve().parents[1]]
    for tree in trees:
        tree = tree.resolve()
        print(f"\n{tree}  (median of {args.repeat} processes)")
        print(f"{'command':36s} {'seconds':>8s} {'ratio':>7s}")
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        inner: list[list[float]] = []
        for _ in range(args.repeat):  # interleaved, so load changes hit every command alike
            for name, code in COMMANDS.items():
                t, out = run(code, tree)
                times[name].append(t)
                if code is DITHER:
                    inner.append([float(v) for v in out.split()])
        floor = statistics.median(times["import numpy, nibabel"])
        for name, ts in times.items():
            t = statistics.median(ts)
            print(f"{name:36s} {t:8.3f} {t / floor:7.2f}")
        labels = ("  import volbin (in process)", "  diffuse_2d, 1st call", "  diffuse_2d, 2nd call")
        labels += ("  volbin.dither, 1st call", "  volbin.dither, 2nd call")
        for i, name in enumerate(labels):
            t = statistics.median(r[i] for r in inner)
            print(f"{name:36s} {t:8.3f} {t / floor:7.2f}")


if __name__ == "__main__":
    main()
