"""Benchmark: volbin multi-Otsu (3 classes) against volbin Otsu alone and scikit-image.

    python scripts/bench_classify.py                  # (10, 181, 217, 181) float64 stack, ~570 MB
    python scripts/bench_classify.py --volumes 4 --repeat 5

All three run on the same in-memory (T, X, Y, Z) float64 phantom stack, one decision per
volume, and produce full-size outputs as numpy arrays:

- ``volbin Otsu``: ``volbin.binarize(stack, "otsu", scope="volume")`` (range pass,
  histogram pass, boolean mask);
- ``volbin multi-Otsu``: ``volbin.classify.classify(stack, "multi-otsu", 3)`` (range pass,
  histogram pass, uint8 labels);
- ``skimage multi-Otsu``: per volume ``threshold_multiotsu(volume, 3)`` then
  ``np.digitize`` to labels.

Prints median times over `--repeat` runs and the ratios to volbin Otsu.

    python scripts/bench_classify.py --components --size 320

runs hysteresis on lazy smoothed noise of (size,)*3 float64 voxels in slabs of 32 planes
(labels of the low mask, keeping those that hold a high voxel), with
``dask_image.ndmeasure.label`` and with `volbin.components`, each in a fresh process, and
prints time and peak memory above the process's start; ``threshold`` only counts the low
mask (the cost of making the input).

    python scripts/bench_classify.py --dice

prints Dice per tissue on nilearn's MNI152 T1 template (1 mm, shipped with nilearn) against
its tissue probability maps (the argmax of CSF = 1 - GM - WM, GM and WM), for volbin
multi-Otsu, volbin k-means and scikit-image's ``threshold_multiotsu`` then ``np.digitize``,
3 classes on the same voxels: inside the template's brain mask (template > 0.2, nilearn's
``load_mni152_brain_mask``) and inside GM + WM > 0.1.  Then, on ITK's T1 head
(insighttoolkit5-examples) inside its brain mask, the thresholds of volbin multi-Otsu and of
scikit-image and the fraction of voxels they class alike.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def make_stack(n_volumes: int, shape: tuple[int, int, int]) -> np.ndarray:
    from volbin.phantom import phantom

    ph = phantom(shape, n_volumes=n_volumes, seed=0, dtype="float64")
    return np.ascontiguousarray(np.moveaxis(ph.intensity, -1, 0))


def skimage_multiotsu(stack: np.ndarray, classes: int) -> np.ndarray:
    from skimage.filters import threshold_multiotsu

    out = np.empty(stack.shape, dtype=np.uint8)
    for t in range(stack.shape[0]):
        out[t] = np.digitize(stack[t], bins=threshold_multiotsu(stack[t], classes))
    return out


LOW, HIGH = 0.508, 0.545


def _components_run(engine: str, size: int) -> None:
    import dask.array as da
    from scipy import ndimage

    noise = da.random.default_rng(0).random((size, size, size), chunks=(size, size, 32))
    # Smoothed noise: blobs of a few voxels, values 0.5 +- 0.015.
    x = da.map_overlap(ndimage.gaussian_filter, noise, depth=8, boundary="reflect", sigma=2.0)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if engine == "threshold":
        kept = int((x > LOW).sum().compute())
    elif engine == "dask-image":
        from dask_image import ndmeasure

        lab, _ = ndmeasure.label(x > LOW)
        present = da.unique(lab[x > HIGH]).compute()
        kept = int(da.isin(lab, present[present > 0]).sum().compute())
    else:
        from volbin.local import apply_hysteresis_threshold

        kept = int(apply_hysteresis_threshold(x, LOW, HIGH).sum().compute())
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
    print(f"{engine:<12} {seconds:>8.2f} s {peak / 1024:>8.0f} MiB above start  ({kept} voxels)")


def components(size: int) -> None:
    print(f"hysteresis of smoothed noise ({size},)*3, low {LOW}, high {HIGH}, slabs of 32 planes")
    here = __file__.rsplit("/", 1)[0]
    for engine in ("threshold", "dask-image", "volbin"):
        code = f"import bench_classify as b; b._components_run({engine!r}, {size})"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=here)


ITK_DATA = "/usr/share/doc/insighttoolkit5-examples/examples/Data"


def dice_table() -> None:
    import nibabel as nib
    from nilearn import datasets
    from skimage.filters import threshold_multiotsu

    import volbin
    from volbin.classify import classify

    def data(img) -> np.ndarray:
        return np.asanyarray(img.dataobj)

    t1 = data(datasets.load_mni152_template(resolution=1))
    brain = data(datasets.load_mni152_brain_mask(resolution=1)) > 0
    gm = data(datasets.load_mni152_gm_template(resolution=1))
    wm = data(datasets.load_mni152_wm_template(resolution=1))
    tissue = np.argmax(np.stack([np.clip(1 - gm - wm, 0, 1), gm, wm]), axis=0)
    print(f"MNI152 T1 template {t1.shape} {t1.dtype}: Dice against argmax(CSF, GM, WM) maps")
    print(f"{'voxels':<34} {'method':<20} {'CSF':>7} {'GM':>7} {'WM':>7}  thresholds")
    for where, mask in (("brain mask (T1 > 0.2)", brain), ("GM + WM > 0.1", gm + wm > 0.1)):
        v, ref = t1[mask], tissue[mask]
        th = threshold_multiotsu(v, 3)
        rows = [("skimage multi-Otsu", np.digitize(v, th), th)]
        for method in ("multi-otsu", "kmeans"):
            res = classify(t1, method, 3, mask=mask)
            rows.append((f"volbin {method}", res.labels[mask] - 1, res.thresholds))
        label = f"{where}, {int(mask.sum())}"
        for name, lab, thr in rows:
            d = [volbin.dice(lab == k, ref == k) for k in range(3)]
            ts = ", ".join(f"{t:.4f}" for t in thr)
            print(f"{label:<34} {name:<20} {d[0]:>7.4f} {d[1]:>7.4f} {d[2]:>7.4f}  {ts}")
            label = ""
    try:
        x = np.asanyarray(nib.load(f"{ITK_DATA}/KmeansTest_T1UCharRaw.nii.gz").dataobj)
        head = np.asanyarray(nib.load(f"{ITK_DATA}/KmeansTest_T1RawSkullStrip.nii.gz").dataobj) > 0
    except FileNotFoundError:
        print("ITK T1 head: not installed (apt-get install insighttoolkit5-examples)")
        return
    v = x[head]
    th = threshold_multiotsu(v, 3)
    res = classify(x, "multi-otsu", 3, mask=head)
    alike = float(np.mean(res.labels[head] - 1 == np.digitize(v, th)))
    width = float(v.max() - v.min()) / 256
    print(f"ITK T1 head {x.shape} {x.dtype}, {int(head.sum())} brain voxels, bin width {width:.4f}")
    print(f"  skimage multi-Otsu thresholds {', '.join(f'{t:.4f}' for t in th)}")
    print(f"  volbin multi-Otsu thresholds  {', '.join(f'{t:.4f}' for t in res.thresholds)}")
    print(f"  voxels classed alike: {alike:.6f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=10)
    parser.add_argument("--shape", type=int, nargs=3, default=(181, 217, 181))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--components", action="store_true", help="label components instead")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--dice", action="store_true", help="tissue Dice on real heads instead")
    args = parser.parse_args(argv)
    if args.dice:
        dice_table()
        return 0
    if args.components:
        components(args.size)
        return 0

    import volbin
    from volbin.classify import classify

    stack = make_stack(args.volumes, tuple(args.shape))
    print(f"stack {stack.shape} {stack.dtype}, {stack.nbytes / 2**20:.0f} MiB")
    # Load compiled kernels once before timing.
    volbin.binarize(stack[:1, :8], "otsu", volume_axis=0)
    classify(stack[:1, :8], "multi-otsu", args.classes, volume_axis=0)

    runs = {
        "volbin Otsu": lambda: volbin.binarize(stack, "otsu", scope="volume", volume_axis=0),
        "volbin multi-Otsu": lambda: classify(stack, "multi-otsu", args.classes, volume_axis=0).labels,
        "skimage multi-Otsu": lambda: skimage_multiotsu(stack, args.classes),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    agree = float(np.mean(outputs["volbin multi-Otsu"] == outputs["skimage multi-Otsu"]))
    base = statistics.median(times["volbin Otsu"])
    print(f"{'method':<20} {'median s':>9} {'vs volbin Otsu':>15}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<20} {med:>9.3f} {med / base:>14.2f}x")
    print(f"labels equal to skimage's: {agree:.6f} of voxels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
