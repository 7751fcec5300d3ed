"""Benchmark: volbin's compiled error diffusion against Pillow, on the same slices, one thread.

    python scripts/bench_dither.py                     # two (181, 217, 181) volumes
    python scripts/bench_dither.py --repeat 11 --shape 96 112 96 --data smooth
    python scripts/bench_dither.py --end-to-end --repeat 9    # Pillow, volbin slice, volume

Pillow's ``Image.convert("1")`` is Floyd-Steinberg on 8-bit images (integer arithmetic,
raster scan, error off the edges dropped).  volbin gets the same uint8 slices as float32
``value / 255`` and works in float (edge rule "scan-end", see ``volbin/_dither_kernels.py``).
Pillow images are made before timing, so both sides time the dithering only.  Runs of the
methods are interleaved and each figure is the median of --repeat runs, as wall-clock time
and as this process's CPU time (the latter is steadier on a busy machine).

Two volumes: a head-like phantom (dark background, as in MRI) and smooth random texture
(mid-grey everywhere, the hard case for the quantiser's branch).  For each, also volumetric
(3D) diffusion of the float32 volume, in one piece and streamed in slabs.  Then, end to
end on the phantom as a float32 (X, Y, Z) volume in memory: ``volbin.dither(scope="slice")``
and ``scope="volume"`` (rescaling, dask graph and default scheduler included) against Pillow
slice by slice along z, the conversion to uint8 included; then the blue-noise generation
against a read from the on-disk cache, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import volbin
from volbin import _dither_kernels as dk
from volbin.dither import ordered


def head_phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A head-like float32 volume in [0, 1]: dark background, bright shell, textured inside."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / a) ** 2 for g, a in zip(grids, (0.85, 0.9, 0.8), strict=True)))
    texture = ndi.gaussian_filter(rng.random(shape, dtype=np.float32), 3)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    vol = np.zeros(shape, np.float32)
    vol[r < 1.0] = 0.85  # scalp and skull
    inside = r < 0.9
    vol[inside] = 0.25 + 0.5 * texture[inside]  # grey and white matter
    vol[(r < 0.35) & (texture > 0.55)] = 0.1  # ventricles
    return np.clip(ndi.gaussian_filter(vol, 1.0), 0, 1)


def timed(fn, clock) -> float:
    t = clock()
    fn()
    return clock() - t


def runs(methods: dict, repeat: int) -> dict:
    """Wall and CPU seconds of every run of each method, runs interleaved."""
    wall = {k: [] for k in methods}
    cpu = {k: [] for k in methods}
    for _ in range(repeat):
        for name, fn in methods.items():
            c = time.process_time()
            wall[name].append(timed(fn, time.perf_counter))
            cpu[name].append(time.process_time() - c)
    return {k: (wall[k], cpu[k]) for k in methods}


def run_interleaved(methods: dict, repeat: int) -> dict:
    """Median wall and CPU seconds of each method, runs interleaved."""
    return {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in runs(methods, repeat).items()}


def bench_end_to_end(vol: np.ndarray, args: argparse.Namespace) -> None:
    """volbin.dither on a float32 (X, Y, Z) volume in memory against Pillow per z slice.

    The volume is C-ordered, so a z slice is strided (Pillow's side copies each one out).
    Two figures per row: the best and the median of --repeat interleaved runs (the best is
    the steadier on a machine others use).
    """
    n = vol.size

    def pillow():
        u8 = np.rint(vol * np.float32(255)).astype(np.uint8)
        return [Image.fromarray(np.ascontiguousarray(u8[:, :, k])).convert("1") for k in range(vol.shape[2])]

    methods = {
        'Pillow convert("1") per z slice, with uint8': pillow,
        'volbin.dither(scope="slice")': lambda: volbin.dither(vol, scope="slice"),
        'volbin.dither(scope="volume")': lambda: volbin.dither(vol, scope="volume"),
    }
    for fn in methods.values():  # warm up
        fn()
    load = os.getloadavg()[0]
    times = runs(methods, args.repeat)
    pillow_name = 'Pillow convert("1") per z slice, with uint8'
    base, base_m = min(times[pillow_name][0]), statistics.median(times[pillow_name][0])
    print(
        f"== end to end, {vol.shape} float32 in memory (C order, z slices strided); "
        f"{args.repeat} runs, {os.cpu_count()} cores, load average {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    print(
        f"{'':46s} {'best s':>8s} {'ns/vox':>7s} {'ratio':>6s} {'median s':>9s} {'ratio':>6s} {'cpu s':>7s}"
    )
    for name, (w, c) in times.items():
        wb, wm = min(w), statistics.median(w)
        print(
            f"{name:46s} {wb:8.3f} {wb / n * 1e9:7.1f} {wb / base:6.2f} {wm:9.3f} {wm / base_m:6.2f} "
            f"{min(c):7.3f}"
        )
    print("(ratio: time / Pillow's; below 1 is faster than Pillow)")
    print()


def smooth_random(shape: tuple[int, int, int], seed: int = 1) -> np.ndarray:
    """Gaussian-smoothed noise stretched to [0, 1]: mid-grey texture everywhere (the case
    where the quantiser's branch is least predictable)."""
    rng = np.random.default_rng(seed)
    vol = ndi.gaussian_filter(rng.random(shape, dtype=np.float32), 3)
    return (vol - vol.min()) / (vol.max() - vol.min())


def bench_volume(label: str, vol: np.ndarray, args: argparse.Namespace) -> None:
    """Print the 2D table (against Pillow) and the 3D table for one volume."""
    shape = vol.shape
    u8 = np.rint(vol * 255).astype(np.uint8)
    f32 = u8.astype(np.float32) / np.float32(255)
    n = f32.size
    images = [Image.fromarray(s) for s in u8]
    out = np.empty(shape, np.uint8)
    print(
        f"== {label}: {shape} ({n / 1e6:.2f} M voxels), slices along axis 0: {shape[0]} x "
        f"{shape[1:]}; mean intensity {f32.mean():.3f}; median of {args.repeat} runs"
    )

    # Warm up before timing.
    dk.diffuse_2d(f32[:3], out[:3])
    dk.diffuse_3d(f32[:3], out[:3])
    pil = np.stack([np.asarray(im.convert("1")) for im in images])

    def per_slice():
        for i in range(shape[0]):
            dk.diffuse_2d(f32[i], out[i])

    strided = np.ascontiguousarray(f32.transpose(1, 2, 0)).transpose(2, 0, 1)  # slices innermost
    methods = {
        'Pillow convert("1") (FS, uint8)': lambda: [im.convert("1") for im in images],
        "volbin floyd-steinberg": lambda: dk.diffuse_2d(f32, out),
        "volbin FS, 16 slices in lockstep (view)": lambda: dk.diffuse_2d_view(f32, out),
        "volbin FS lockstep, slices innermost": lambda: dk.diffuse_2d_view(strided, out),
        "volbin floyd-steinberg, 1 slice/call": per_slice,
        "volbin floyd-steinberg serpentine": lambda: dk.diffuse_2d(f32, out, serpentine=True),
        "volbin floyd-steinberg + jitter": lambda: dk.diffuse_2d(f32, out, jitter=0.2, key=1),
    }
    for name in dk.KERNELS:
        if name != "floyd-steinberg":
            methods[f"volbin {name}"] = lambda name=name: dk.diffuse_2d(f32, out, name)
    res = run_interleaved(methods, args.repeat)
    base_w, base_c = res['Pillow convert("1") (FS, uint8)']
    print(
        f"{'2D error diffusion, one thread':42s} {'wall ns/vox':>11s} {'ratio':>6s} "
        f"{'cpu ns/vox':>11s} {'ratio':>6s}"
    )
    for name, (w, c) in res.items():
        print(f"{name:42s} {w / n * 1e9:11.2f} {w / base_w:6.2f} {c / n * 1e9:11.2f} {c / base_c:6.2f}")
    ours = dk.diffuse_2d(f32, out).copy()
    print(
        f"fraction of ones: input mean {f32.mean():.4f}, volbin FS {ours.mean():.4f}, Pillow {pil.mean():.4f}"
    )

    def streamed():
        carry = None
        for z in range(0, shape[0], args.slab):
            sl = slice(z, min(z + args.slab, shape[0]))
            _, carry = dk.diffuse_3d(
                f32[sl],
                out[sl],
                carry_in=carry,
                z0=z,
                n_slices=shape[0],
                index_base=z * shape[1] * shape[2],
            )

    res3 = run_interleaved(
        {
            "volbin sierra-lite-3d (default), one piece": lambda: dk.diffuse_3d(f32, out),
            "volbin 3D default, view, slices innermost": lambda: dk.diffuse_3d_view(strided, out),
            "  the same, staged on a 2nd thread": lambda: dk.diffuse_3d_view(strided, out, threads=2),
            f"volbin sierra-lite-3d, slabs of {args.slab}": streamed,
            "volbin jarvis-judice-ninke extended to 3D": lambda: dk.diffuse_3d(
                f32, out, "jarvis-judice-ninke"
            ),
        },
        args.repeat,
    )
    print()
    print(
        f"{'3D error diffusion, one thread':42s} {'wall s':>11s} {'ns/vox':>6s} {'cpu s':>11s} {'ns/vox':>6s}"
    )
    for name, (w, c) in res3.items():
        print(f"{name:42s} {w:11.3f} {w / n * 1e9:6.1f} {c:11.3f} {c / n * 1e9:6.1f}")
    one, _ = dk.diffuse_3d(f32)
    print(f"fraction of ones: input mean {f32.mean():.4f}, volbin sierra-lite-3d {one.mean():.4f}")
    print()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=(181, 217, 181))
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--slab", type=int, default=16, help="slab thickness for streamed 3D")
    p.add_argument("--data", choices=("phantom", "smooth", "both"), default="both")
    p.add_argument(
        "--end-to-end", action="store_true", help="only the end-to-end table (Pillow, volbin slice, volume)"
    )
    args = p.parse_args(argv)
    shape = tuple(args.shape)
    if args.end_to_end:
        bench_end_to_end(np.ascontiguousarray(head_phantom(shape).transpose(2, 1, 0)), args)
        return 0
    if args.data in ("phantom", "both"):
        bench_volume("head-like phantom", head_phantom(shape), args)
    if args.data in ("smooth", "both"):
        bench_volume("smooth random texture", smooth_random(shape), args)

    bench_end_to_end(np.ascontiguousarray(head_phantom(shape).transpose(2, 1, 0)), args)

    with tempfile.TemporaryDirectory() as cache:
        os.environ["VOLBIN_CACHE_DIR"] = cache
        for size, ndim in ((64, 2), (256, 2), (32, 3), (64, 3)):
            times = []
            for _ in range(2):  # generated (empty cache), then read from the cache
                ordered._blue_noise.cache_clear()
                t = time.perf_counter()
                ordered.blue_noise(size, ndim)
                times.append(time.perf_counter() - t)
            print(f"blue_noise({size}, ndim={ndim}): {times[0]:.3f} s, then {times[1]:.3f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mib = np.prod(shape) / 2**20
    print(
        f"peak RSS of this process: {peak:.0f} MiB (one volume: float32 {4 * mib:.0f} MiB, "
        f"uint8 {mib:.0f} MiB, output {mib:.0f} MiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
