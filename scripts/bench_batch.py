"""Benchmark: `volbin batch` against a plain nibabel + scikit-image loop, and where time goes.

    python scripts/bench_batch.py                  # 20 x (181, 217, 181) float32 .nii.gz, 2 cores
    python scripts/bench_batch.py --files 8 --shape 96 112 96 --data-dir /tmp/bench-data
    python scripts/bench_batch.py --engines        # also the other ways to drive the files

Inputs are phantoms (`volbin.phantom`) written once to --data-dir (reused when present).
Every run makes Otsu masks (.nii.gz, one per input):

- plain loop: ``nib.load`` + ``threshold_otsu`` + ``nib.save``, one file after another, one
  process (the reference, ratio 1.00x);
- the plain loop as a whole process, and ``volbin batch`` as a whole process with its default
  engine (in this process on threads, one file per core, on machines of up to 2 cores);
- volbin batch on a LocalCluster of --cores cores, end to end (cluster start and stop
  included), and on a LocalCluster already running (steady state);
- with --engines: other cluster layouts, workers started with distributed's default
  MALLOC_TRIM_THRESHOLD_=65536 (volbin's own cluster unsets it), and the design
  `volbin.batch` does not use, where client-side threads drive each file's dask graphs on
  the cluster.

Then a per-stage breakdown of one file in one process (gzip decode/encode, statistics,
writing) for both.  Peak memory is the largest RSS of this process and its children.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import psutil


class PeakRSS:
    """Sample the RSS of this process and its children in a thread; `peak` is the maximum."""

    def __init__(self, interval: float = 0.05) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = 0
            with contextlib.suppress(psutil.Error):
                rss = self.proc.memory_info().rss
                for c in self.proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += c.memory_info().rss
            self.peak = max(self.peak, rss)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def make_inputs(folder: Path, n: int, shape: tuple[int, int, int]) -> list[Path]:
    from volbin.io import save
    from volbin.phantom import phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"sub-{i:02d}_T1w.nii.gz" for i in range(n)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"writing {len(missing)} phantom volumes {shape} float32 to {folder} ...")
        stack = phantom(shape, n_volumes=n, seed=0)
        for i, p in enumerate(paths):
            if not p.exists():
                img = nib.Nifti1Image(stack.intensity[..., i], stack.affine)
                # io.save's isal gzip: nibabel's zlib takes ~2 s per float32 volume here.
                save(img.get_fdata(dtype=np.float32), p, sidecar=False)
        del stack
    return paths


def plain_one(src: Path, dst: Path) -> None:
    from skimage.filters import threshold_otsu

    img = nib.load(src)
    data = np.asanyarray(img.dataobj)
    mask = (data > threshold_otsu(data)).astype(np.uint8)
    nib.Nifti1Image(mask, img.affine, img.header).to_filename(dst)


def run_plain(paths: list[Path], out: Path) -> float:
    t0 = time.perf_counter()
    for p in paths:
        plain_one(p, out / p.name.replace("_T1w", "_T1w_mask"))
    return time.perf_counter() - t0


def run_volbin(paths: list[Path], out: Path, **kw: object) -> float:
    import volbin

    t0 = time.perf_counter()
    res = volbin.batch(
        [str(p) for p in paths], out, method="otsu", scope="volume", progress=False, report=False, **kw
    )
    assert res.ok and len(res.done) == len(paths), res.summary()
    return time.perf_counter() - t0


PLAIN_SCRIPT = """
import sys
from pathlib import Path
import nibabel as nib
import numpy as np
from skimage.filters import threshold_otsu
out = Path(sys.argv[1])
for src in sys.argv[2:]:
    img = nib.load(src)
    data = np.asanyarray(img.dataobj)
    mask = (data > threshold_otsu(data)).astype(np.uint8)
    dst = out / Path(src).name.replace("_T1w", "_T1w_mask")
    nib.Nifti1Image(mask, img.affine, img.header).to_filename(dst)
"""


def run_process(cmd: list[str]) -> float:
    import subprocess

    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def run_client_driven(paths: list[Path], out: Path, client: object, nthreads: int) -> float:
    """The alternative design: client threads drive each file's graphs on the cluster."""
    import dask

    from volbin.binarize import binarize_volume
    from volbin.io import load, save
    from volbin.recipe import Recipe

    recipe = Recipe(method="otsu", scope="volume")

    def one(p: Path) -> None:
        vol = load(p)  # decompresses in this (client) process
        save(binarize_volume(vol, recipe), out / p.name.replace("_T1w", "_T1w_mask"))

    t0 = time.perf_counter()
    with dask.config.set(scheduler=client), ThreadPoolExecutor(nthreads) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - t0


def breakdown(path: Path, work: Path) -> list[tuple[str, str, float]]:
    """Seconds per stage for one file, in this process, on one thread."""
    import dask
    from isal import isal_zlib
    from skimage.filters import threshold_otsu

    from volbin.binarize import binarize_volume
    from volbin.io import load, save
    from volbin.recipe import Recipe

    rows: list[tuple[str, str, float]] = []

    def timed(who: str, what: str, fn, repeat: int = 3):
        best, out = float("inf"), None
        for _ in range(repeat):
            t = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t)
        rows.append((who, what, best))
        return out

    gz = path.read_bytes()
    raw = timed("both", "gzip decode, zlib (nibabel)", lambda: zlib.decompress(gz, 31))
    timed("both", "gzip decode, isal (volbin)", lambda: isal_zlib.decompress(gz, 31))
    timed("-", "gzip encode float32, zlib level 6", lambda: zlib.compress(raw, 6), 1)
    timed("-", "gzip encode float32, zlib level 1", lambda: zlib.compress(raw, 1), 1)
    timed("-", "gzip encode float32, isal level 1", lambda: isal_zlib.compress(raw, 1))

    img = timed("plain", "nib.load + read data", lambda: np.asanyarray(nib.load(path).dataobj))
    t = timed("plain", "threshold_otsu", lambda: threshold_otsu(img))
    mask = (img > t).astype(np.uint8)
    ref = nib.load(path)
    timed(
        "plain",
        "nib.save mask (zlib 1)",
        lambda: nib.Nifti1Image(mask, ref.affine, ref.header).to_filename(work / "plain.nii.gz"),
    )
    mraw = mask.tobytes(order="F")
    timed("both", "gzip encode mask, zlib level 1", lambda: zlib.compress(mraw, 1))
    timed("both", "gzip encode mask, isal level 1", lambda: isal_zlib.compress(mraw, 1))

    recipe = Recipe(method="otsu", scope="volume")
    with dask.config.set(scheduler="threads", num_workers=1):
        vol = timed("volbin", "load (gzip decode to a temporary .nii)", lambda: load(path))
        out = timed("volbin", "range + histogram passes, Otsu", lambda: binarize_volume(vol, recipe))

        def write() -> None:
            save(out, work / "volbin.nii.gz", force=True)

        timed("volbin", "save: mask, write, gzip, sha256, fsync", write)
        timed("volbin", "save .nii (no gzip)", lambda: save(out, work / "v.nii", force=True))
    return rows


def cpu_seconds() -> float:
    """CPU time of this process, its live children and its reaped children."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    for c in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            t = c.cpu_times()
            total += t.user + t.system
    return total


def measure(fn, repeat: int) -> tuple[float, float, int]:
    """Best wall time of `repeat` runs of `fn()`, with its CPU seconds and peak RSS."""
    best = (float("inf"), 0.0, 0)
    for _ in range(repeat):
        c0 = cpu_seconds()
        with PeakRSS() as m:
            t0 = time.perf_counter()
            fn()
            t = time.perf_counter() - t0
        best = min(best, (t, cpu_seconds() - c0, m.peak))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--shape", type=int, nargs=3, default=(181, 217, 181))
    p.add_argument("--cores", type=int, default=2, help="cores of the LocalCluster (2)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each engine; the best counts")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "volbin-bench-batch")
    p.add_argument("--engines", action="store_true", help="also compare other engines")
    args = p.parse_args()

    from distributed import Client, LocalCluster

    paths = make_inputs(args.data_dir, args.files, tuple(args.shape))
    work = Path(tempfile.mkdtemp(prefix="volbin-bench-"))
    n, c, r = args.files, args.cores, args.repeat
    rows: list[tuple[str, tuple[float, float, int]]] = []

    def fresh(name: str) -> Path:
        d = work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return d

    script = work / "plain_loop.py"
    script.write_text(PLAIN_SCRIPT)
    try:
        run_plain(paths[:1], fresh("warm"))  # imports, page cache
        rows.append(
            ("plain loop: nibabel + skimage, 1 process", measure(lambda: run_plain(paths, fresh("plain")), r))
        )
        # Whole processes, as users run them: the plain script, and the command line.
        py = sys.executable
        rows.append(
            (
                "plain loop as a whole process (python plain_loop.py)",
                measure(lambda: run_process([py, str(script), str(fresh("plain_p")), *map(str, paths)]), r),
            )
        )
        vb = [py, "-m", "volbin", "batch", *map(str, paths), "--method", "otsu", "--no-progress"]
        rows.append(
            (
                "volbin batch, whole process, default engine",
                measure(lambda: run_process([*vb, "--out-dir", str(fresh("cli"))]), r),
            )
        )
        rows.append(
            (
                "volbin.batch(...), default engine",
                measure(lambda: run_volbin(paths, fresh("default")), r),
            )
        )
        # volbin's default layout for `c` cores (see volbin.batch.engine._layout), and the alternatives.
        w0 = max(1, c // 2)
        t0 = c // w0
        rows.append(
            (
                f"volbin batch, LocalCluster {w0}x{t0}, start + stop included",
                measure(lambda: run_volbin(paths, fresh("a"), workers=w0, threads_per_worker=t0), r),
            )
        )
        layouts = [(w0, t0, True, False)]
        if args.engines:
            rows.append(
                (
                    f"volbin batch, LocalCluster {c}x1, start + stop included",
                    measure(lambda: run_volbin(paths, fresh("a"), workers=c, threads_per_worker=1), r),
                )
            )
            layouts += [(w0, t0, True, True), (c, 1, True, False), (w0, t0, False, False)]
        for w, th, procs, trim in layouts:
            # As volbin.batch starts its own LocalCluster (see volbin.batch.engine._engine), unless `trim`:
            # then with distributed's default MALLOC_TRIM_THRESHOLD_ for worker processes.
            unset = {} if trim else {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
            with dask.config.set(unset):
                cluster = LocalCluster(
                    n_workers=w,
                    threads_per_worker=th,
                    processes=procs,
                    silence_logs=40,
                    dashboard_address=None,
                )
            with cluster, Client(cluster) as client:
                run_volbin(paths[: w * th], fresh("warm"), client=client)  # worker imports
                kind = "processes" if procs else "in-process threads"
                kind += ", MALLOC_TRIM_THRESHOLD_=65536" if trim else ", cluster running"

                def steady(client: Client = client) -> None:
                    run_volbin(paths, fresh("b"), client=client)

                def driven(client: Client = client, k: int = w * th) -> None:
                    run_client_driven(paths, fresh("c"), client, k)

                rows.append((f"volbin batch, {w}x{th} {kind}", measure(steady, r)))
                if args.engines and procs and not trim:
                    rows.append((f"client threads drive graphs, {w}x{th} {kind}", measure(driven, r)))
        rows.append(
            (
                "volbin batch, scheduler='threads', threads_per_worker=2 (files in turn)",
                measure(lambda: run_volbin(paths, fresh("d"), scheduler="threads", threads_per_worker=2), r),
            )
        )

        base = rows[0][1][0]
        print(
            f"\n{n} files {tuple(args.shape)} float32 .nii.gz -> Otsu masks .nii.gz; "
            f"{os.cpu_count()} cores here, load average {os.getloadavg()[0]:.1f}; "
            f"best of {r}\n"
        )
        print(f"{'engine':<64} {'seconds':>8} {'files/s':>8} {'ratio':>7} {'CPU s/file':>10} {'peak MB':>8}")
        for name, (t, cpu, peak) in rows:
            print(
                f"{name:<64} {t:>8.2f} {n / t:>8.2f} {base / t:>6.2f}x {cpu / n:>10.3f} {peak / 2**20:>8.0f}"
            )

        print("\nwhere the time goes, one file, one thread (best of 3):\n")
        print(f"{'who':<7} {'stage':<46} {'seconds':>8}")
        for who, what, t in breakdown(paths[0], fresh("stages")):
            print(f"{who:<7} {what:<46} {t:>8.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
