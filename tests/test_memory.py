"""Bounded memory: load -> otsu -> save of a .npy three times larger than --memory-limit."""

from __future__ import annotations

import subprocess
import sys
import time

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


def _run_under_limit(src, out, limit: int, *options: str) -> None:
    """Run `volbin binarize` in a subprocess with --memory-limit; its peak RSS must stay under it."""
    code, peak, text = _peak_rss(
        [
            sys.executable,
            "-m",
            "volbin",
            "binarize",
            str(src),
            str(out),
            *options,
            "--memory-limit",
            str(limit),
            "--no-progress",
        ]
    )
    assert code == 0, text
    assert peak < limit, f"peak RSS {peak / 2**20:.0f} MiB over the {limit / 2**20:.0f} MiB limit"


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
