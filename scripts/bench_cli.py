"""Benchmark: the single-file command line against the plain script it replaces, as whole processes.

    python scripts/bench_cli.py                       # (181, 217, 181) float64 head phantom, .nii.gz
    python scripts/bench_cli.py --rounds 9 --dtype float32

Each row runs a fresh process (alternating plain and volbin, --rounds times, so a busy machine
slows both alike) and gives the median wall-clock seconds and the ratio plain / volbin (above
1: volbin is faster):

* Otsu: ``nibabel.load + get_fdata + skimage.filters.threshold_otsu + nibabel.save`` against
  ``volbin binarize IN OUT --method otsu`` (which also validates, writes atomically and writes
  a sidecar);
* slice dithering: nibabel + min-max to uint8 + Pillow ``convert("1")`` per slice + save,
  against ``volbin binarize IN OUT --method dither --scope slice``;
* the imports alone of each side, the floor neither can go under.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN_OTSU = """
import sys
import nibabel as nib
import numpy as np
from skimage.filters import threshold_otsu
img = nib.load(sys.argv[1])
a = img.get_fdata()
m = (a > threshold_otsu(a)).astype(np.uint8)
nib.save(nib.Nifti1Image(m, img.affine, img.header), sys.argv[2])
"""

PLAIN_DITHER = """
import sys
import nibabel as nib
import numpy as np
from PIL import Image
img = nib.load(sys.argv[1])
a = img.get_fdata()
u8 = np.round(255 * (a - a.min()) / (a.max() - a.min())).astype(np.uint8)
out = np.empty(u8.shape, np.uint8)
for k in range(u8.shape[2]):
    out[:, :, k] = np.asarray(Image.fromarray(np.ascontiguousarray(u8[:, :, k])).convert("1"))
nib.save(nib.Nifti1Image(out, img.affine, img.header), sys.argv[2])
"""

IMPORTS_PLAIN = "import nibabel, numpy\nfrom skimage.filters import threshold_otsu"
IMPORTS_VOLBIN = "import volbin.cli.binarize, volbin.binarize, volbin.io"


def make_input(folder: Path, dtype: str) -> Path:
    import nibabel as nib
    import numpy as np

    from volbin.phantom import phantom

    ph = phantom((181, 217, 181), seed=0, max_intensity=1328.0, dtype=dtype)
    path = folder / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ph.intensity), np.diag([1.0, 1.0, 1.0, 1.0])), path)
    return path


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    args = p.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(dir=os.environ.get("VOLBIN_BENCH_DIR")) as d:
        work = Path(d)
        src = make_input(work, args.dtype)
        (work / "plain_otsu.py").write_text(PLAIN_OTSU)
        (work / "plain_dither.py").write_text(PLAIN_DITHER)
        vb = [py, "-m", "volbin", "binarize", str(src)]
        rows = {
            "Otsu": (
                [py, str(work / "plain_otsu.py"), str(src), str(work / "p.nii.gz")],
                [*vb, str(work / "v.nii.gz"), "--method", "otsu", "--force", "--no-progress"],
            ),
            "dither --scope slice": (
                [py, str(work / "plain_dither.py"), str(src), str(work / "pd.nii.gz")],
                [*vb, str(work / "vd.nii.gz"), "--method", "dither", "--scope", "slice", "--force",
                 "--no-progress"],
            ),
            "imports only": ([py, "-c", IMPORTS_PLAIN], [py, "-c", IMPORTS_VOLBIN]),
        }  # fmt: skip
        for plain, ours in rows.values():  # warm the page cache and .pyc files
            timed(plain)
            timed(ours)
        times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in rows}
        for _ in range(args.rounds):
            for name, (plain, ours) in rows.items():
                times[name][0].append(timed(plain))
                times[name][1].append(timed(ours))
        size = src.stat().st_size / 1e6
        print(f"input: (181, 217, 181) {args.dtype} .nii.gz, {size:.1f} MB; {args.rounds} rounds, median s")
        print(f"{'work':<24} {'plain':>8} {'volbin':>8} {'plain/volbin':>13}")
        for name, (tp, tv) in times.items():
            mp, mv = statistics.median(tp), statistics.median(tv)
            print(f"{name:<24} {mp:>8.3f} {mv:>8.3f} {mp / mv:>13.2f}")
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
