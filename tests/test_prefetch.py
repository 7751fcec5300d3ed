"""Decompression of .nii.gz inputs ahead of use (`volbin._prefetch`): the copy equals the
file's data, a changed file is not used, nothing is left behind, errors still come from the
loader."""

from __future__ import annotations

import gc
import gzip
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from skimage.filters import threshold_otsu

from volbin import _prefetch
from volbin.cli import main
from volbin.errors import InputFileError
from volbin.io import load


@pytest.fixture
def head(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = (np.random.default_rng(0).random((30, 20, 25)) * 1000).astype(np.float32)
    path = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(x, np.eye(4)), path)
    return path, x


def test_the_copy_is_the_decompressed_file(head, tmpdir_env):
    path, _ = head
    _prefetch.start(path)
    _prefetch.start(path)  # once per file
    tmp = _prefetch.take(path)
    assert tmp is not None and Path(tmp).parent == tmpdir_env
    assert Path(tmp).read_bytes() == gzip.decompress(path.read_bytes())
    os.unlink(tmp)
    assert _prefetch.take(path) is None  # taken once
    # The loader takes the copy rather than making its own.
    _prefetch.start(path)
    vol = load(path)
    assert len(list(tmpdir_env.iterdir())) == 1 and _prefetch.take(path) is None
    np.testing.assert_array_equal(vol.data.compute(), head[1])


def test_a_file_changed_since_is_decompressed_again(head, tmpdir_env):
    path, x = head
    _prefetch.start(path)
    time.sleep(0.01)
    nib.save(nib.Nifti1Image(x + 1, np.eye(4)), path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert _prefetch.take(path) is None
    assert list(tmpdir_env.iterdir()) == []
    np.testing.assert_array_equal(load(path).data.compute(), x + 1)


def test_only_gzip_files_and_discard_removes_the_copy(head, tmp_path, tmpdir_env):
    path, x = head
    plain = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(x, np.eye(4)), plain)
    for p in (plain, tmp_path / "missing.nii.gz", tmp_path):
        _prefetch.start(p)
        assert _prefetch.take(p) is None
    _prefetch.start(path)
    _prefetch.discard(path)
    assert list(tmpdir_env.iterdir()) == []
    assert _prefetch.take(path) is None


def test_commands_leave_no_copy_behind(head, tmp_path, tmpdir_env):
    path, x = head
    out = tmp_path / "m.nii.gz"
    assert main(["binarize", str(path), str(out), "--method", "otsu"]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj) > 0, x > threshold_otsu(x))
    gc.collect()  # the loader's copy lives as long as the graph that reads it
    assert list(tmpdir_env.iterdir()) == []
    # A command that fails before it reads its input stops and removes the copy.
    assert main(["binarize", str(path), str(out), "--method", "otsu"]) != 0  # exists
    assert main(["binarize", str(path), str(out), "--method", "otsu", "--seed", "3"]) != 0
    assert list(tmpdir_env.iterdir()) == []


def test_corrupt_gzip_is_still_reported_by_the_loader(tmp_path, tmpdir_env, capsys):
    path = tmp_path / "bad.nii.gz"
    data = gzip.compress(b"\0" * 100000)
    path.write_bytes(data[: len(data) // 2])
    _prefetch.start(path)
    with pytest.raises(InputFileError, match="truncated or corrupt gzip"):
        load(path)
    assert main(["binarize", str(path), str(tmp_path / "m.nii.gz"), "--method", "otsu"]) != 0
    assert "truncated or corrupt gzip" in capsys.readouterr().err
    assert list(tmpdir_env.iterdir()) == []
