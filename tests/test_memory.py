"""Bounded memory: commands on files three times larger than --memory-limit stay under it
(peak RSS of the command's process, sampled every 5 ms)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest


def _peak_rss(cmd: list[str]) -> tuple[int, int, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.005)
    out, err = proc.communicate()
    return proc.returncode, peak, out + err


def _baseline_rss() -> int:
    """Peak RSS of a process that only imports what the commands import."""
    code, peak, text = _peak_rss(
        [
            sys.executable,
            "-c",
            "import volbin.cli, volbin.classify, volbin.io, volbin.masks, time; time.sleep(0.2)",
        ]
    )
    assert code == 0, text
    return peak


def _run_under_limit(src, out, limit: int, *options: str, command: str = "binarize") -> int:
    """Run `volbin COMMAND` in a subprocess with --memory-limit; its peak RSS must stay under
    it.  Returns the peak."""
    code, peak, text = _peak_rss(
        [
            sys.executable,
            "-m",
            "volbin",
            command,
            str(src),
            str(out),
            *options,
            "--memory-limit",
            str(limit),
            "--no-progress",
        ]
    )
    assert code == 0, text
    above = (peak - _baseline_rss()) / 2**20
    figures = f"peak RSS {peak / 2**20:.0f} MiB ({above:.0f} MiB above importing volbin)"
    print(f"volbin {command} {' '.join(options)}: {figures}, limit {limit / 2**20:.0f} MiB")
    assert peak < limit, f"{figures} over the {limit / 2**20:.0f} MiB limit"
    return peak


@pytest.mark.slow
def test_npy_three_times_the_memory_limit(tmp_path):
    limit = 400 * 2**20
    shape = (76, 128, 128, 256)  # (T, X, Y, Z) float32: 3 x the limit
    src = tmp_path / "stack.npy"
    x = np.lib.format.open_memmap(src, mode="w+", dtype=np.float32, shape=shape)
    rng = np.random.default_rng(0)
    for i in range(shape[0]):
        x[i] = rng.random(shape[1:], dtype=np.float32) ** 2 * 1000
    x.flush()
    del x
    assert src.stat().st_size >= 3 * limit
    out = tmp_path / "mask.npy"
    _run_under_limit(src, out, limit, "--method", "otsu", "--scope", "volume", "--volume-axis", "0")
    m = np.load(out, mmap_mode="r")
    assert m.shape == shape and m.dtype == np.uint8
    # Spot-check one volume against scikit-image.
    from skimage.filters import threshold_otsu

    v = np.load(src, mmap_mode="r")[7]
    np.testing.assert_array_equal(m[7].astype(bool), v > threshold_otsu(np.asarray(v)))


@pytest.mark.slow
def test_volume_dithering_three_times_the_memory_limit(tmp_path):
    """3D error diffusion streams slab by slab: a .nii 3x the limit stays under it."""
    import nibabel as nib

    limit = 400 * 2**20
    shape = (400, 400, 2000)  # float32, 1.28 GB
    src = tmp_path / "big.nii"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(np.eye(4), 1)
    hdr.set_sform(np.eye(4), 1)
    hdr["vox_offset"] = 352
    with open(src, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4)
    m = np.memmap(src, dtype=np.float32, mode="r+", offset=352, shape=shape, order="F")
    rng = np.random.default_rng(0)
    for z0 in range(0, shape[2], 200):
        m[:, :, z0 : z0 + 200] = rng.random((400, 400, 200), dtype=np.float32)
    m.flush()
    del m
    assert src.stat().st_size >= 3 * limit
    out = tmp_path / "dithered.nii"
    _run_under_limit(src, out, limit, "--method", "dither", "--scope", "volume")
    d = np.asanyarray(nib.load(out).dataobj)
    assert d.shape == shape and abs(d.mean() - 0.5) < 1e-3


# --- classify ---------------------------------------------------------------------------------
MEANS = np.array([200.0, 500.0, 800.0], dtype=np.float32)  # three classes, noise 60


def _tissue(shape: tuple[int, ...], start: int = 0) -> np.ndarray:
    """Class 0..2 of each voxel of a slab starting at plane `start` of the last axis: cubes of
    16 voxels, so the truth can be recomputed for any slab."""
    idx = list(np.ogrid[tuple(slice(0, n) for n in shape)])
    idx[-1] = idx[-1] + start
    return (sum(i // 16 for i in idx) % 3).astype(np.uint8)


@pytest.fixture(scope="module")
def classes_npy(tmp_path_factory) -> Path:
    """(T, X, Y, Z) float32 .npy of 1.2 GB, three intensity classes in noise; 128 volumes,
    the most that k-means gets its finest histograms for (65536 bins each)."""
    src = tmp_path_factory.mktemp("classify") / "stack.npy"
    shape = (128, 128, 128, 152)
    x = np.lib.format.open_memmap(src, mode="w+", dtype=np.float32, shape=shape)
    rng = np.random.default_rng(1)
    cls = _tissue(shape[1:])
    for t in range(shape[0]):
        x[t] = MEANS[cls] + rng.normal(0, 60, shape[1:]).astype(np.float32)
    x.flush()
    del x
    return src


@pytest.mark.slow
@pytest.mark.parametrize("method", ["multi-otsu", "kmeans"])
def test_classify_three_times_the_memory_limit(tmp_path, classes_npy, method):
    """Multi-Otsu and k-means on intensities, one decision per volume, of a .npy stack 3x the
    limit.  Measured (400 MiB limit, 90 MiB importing volbin): multi-Otsu 177 MiB, k-means
    269-290 MiB, where k-means took 565 MiB while its 128 x 65536-bin histograms were joined in a
    second copy and their bin means made full-size temporaries."""
    from skimage.filters import threshold_multiotsu

    limit = 400 * 2**20
    assert classes_npy.stat().st_size >= 3 * limit
    out = tmp_path / "labels.npy"
    _run_under_limit(classes_npy, out, limit, "--method", method, "--volume-axis", "0", command="classify")
    lab = np.load(out, mmap_mode="r")
    v = np.load(classes_npy, mmap_mode="r")
    assert lab.shape == v.shape and lab.dtype == np.uint8
    for t in (0, 97):
        x, got = np.asarray(v[t]), np.asarray(lab[t])
        if method == "multi-otsu":
            ref = threshold_multiotsu(x.astype(np.float64).ravel(), 3)
            np.testing.assert_array_equal(got, sum((x > r).astype(np.uint8) for r in ref))
        else:
            # Intensity classes: each class lies between its neighbours.
            for k in (0, 1):
                assert x[got == k].max() < x[got == k + 1].min()
        assert np.mean(got == _tissue(x.shape)) > 0.98


@pytest.mark.slow
def test_classify_channels_three_times_the_memory_limit(tmp_path):
    """k-means on voxel vectors of two contrasts (a .nii whose 4th axis holds them) 3x the
    limit: blocks keep the input's size with both channels in them.  Measured (400 MiB
    limit, 90 MiB importing volbin): 210 MiB, where blocks of the default size took 822 MiB."""
    import nibabel as nib

    limit = 400 * 2**20
    shape = (400, 400, 1000, 2)  # float32, 1.28 GB
    src = tmp_path / "two.nii"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(np.eye(4), 1)
    hdr.set_sform(np.eye(4), 1)
    hdr["vox_offset"] = 352
    with open(src, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4)
    m = np.memmap(src, dtype=np.float32, mode="r+", offset=352, shape=shape, order="F")
    rng = np.random.default_rng(2)
    t1, t2 = np.array([0.2, 0.5, 0.8], np.float32), np.array([0.9, 0.6, 0.4], np.float32)
    for z0 in range(0, shape[2], 100):
        cls = _tissue((400, 400, 100), z0)
        m[:, :, z0 : z0 + 100, 0] = t1[cls] + rng.normal(0, 0.08, cls.shape).astype(np.float32)
        m[:, :, z0 : z0 + 100, 1] = t2[cls] + rng.normal(0, 0.08, cls.shape).astype(np.float32)
    m.flush()
    del m
    assert src.stat().st_size >= 3 * limit
    out = tmp_path / "labels.nii"
    _run_under_limit(src, out, limit, "--method", "kmeans", "--channels", command="classify")
    lab = np.asanyarray(nib.load(out).dataobj)
    assert lab.shape == shape[:3] and lab.dtype == np.uint8
    # Darkest first on the first contrast: the classes as made (noise 0.08 at steps of 0.3).
    assert np.mean(lab[:, :, 500:600] == _tissue((400, 400, 100), 500)) > 0.95
