"""Faults found by trying to break volbin: data loss, silently wrong results, leftovers, hangs,
tracebacks.  Each test states the behaviour it guards; the references are the files on disk
(bytes, sidecars, what is left in a folder), nibabel, numpy and the single-file command.

Tests that need a signal or a separate process run volbin in a subprocess; the others call
``main([...])`` in-process.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import volbin
from volbin.batch import process_one
from volbin.cli import main
from volbin.errors import InputFileError, OutputFileError, VolbinWarning
from volbin.io import folder_lock, load, read_sidecar, save, sidecar_path
from volbin.phantom import phantom

ROOT = Path(volbin.__file__).resolve().parents[1]  # the tree under test, for subprocesses
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


# --- helpers ---------------------------------------------------------------------------------
def _nifti(path: Path, shape: tuple[int, ...] = (20, 24, 20), seed: int = 0) -> Path:
    ph = phantom(shape, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(ph.intensity), ph.affine), path)
    return path


def _leftovers(*folders: Path) -> list[str]:
    from volbin.io import TEMP_NAME

    return sorted(p.name for f in folders if f.is_dir() for p in f.iterdir() if TEMP_NAME.match(p.name))


def _batch(*args: str) -> int:
    return main(["batch", *args, "--scheduler", "threads", "--no-progress"])


# --- 1. batch never replaces a file volbin did not write -------------------------------------
def test_batch_does_not_replace_a_foreign_sidecar_without_force(tmp_path, capsys):
    src = _nifti(tmp_path / "sub-01.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "sub-01_mask.json"
    mine.write_text('{"mine": 1}')
    assert _batch(str(src), "--out-dir", str(out)) == 1
    assert "not a volbin sidecar" in capsys.readouterr().err
    assert json.loads(mine.read_text()) == {"mine": 1}
    assert not (out / "sub-01_mask.nii.gz").exists()
    # Single-file binarize refuses the same way; --force replaces it in both.
    assert main(["binarize", str(src), str(out / "sub-01_mask.nii.gz")]) == 1
    assert json.loads(mine.read_text()) == {"mine": 1}
    assert _batch(str(src), "--out-dir", str(out), "--force") == 0
    assert read_sidecar(mine)["output"]["path"] == str(out / "sub-01_mask.nii.gz")


# --- 2. sidecar names never collide ----------------------------------------------------------
def test_batches_with_different_formats_keep_their_own_sidecars(tmp_path):
    src = _nifti(tmp_path / "x.nii.gz")
    out = tmp_path / "out"
    assert _batch(str(src), "--out-dir", str(out), "--ext", ".nii.gz") == 0
    assert _batch(str(src), "--out-dir", str(out), "--ext", ".npy") == 0
    assert _batch(str(src), "--out-dir", str(out), "--ext", ".zarr") == 0
    for ext, side in ((".nii.gz", "x_mask.json"), (".npy", "x_mask.npy.json"), (".zarr", "x_mask.zarr.json")):
        assert sidecar_path(out / f"x_mask{ext}") == out / side
        assert read_sidecar(out / side)["output"]["path"] == str(out / f"x_mask{ext}")
    # Each is up to date on its own: a second round skips all three.
    for ext in (".nii.gz", ".npy", ".zarr"):
        res = volbin.batch(str(src), out, ext=ext, scheduler="threads", progress=False, report=False)
        assert len(res.skipped) == 1, res.files


def test_nifti_and_gzip_outputs_of_one_name_refuse_to_share_a_sidecar(tmp_path, capsys):
    src = _nifti(tmp_path / "x.nii.gz")
    out = tmp_path / "out"
    assert _batch(str(src), "--out-dir", str(out), "--ext", ".nii") == 0
    before = (out / "x_mask.json").read_bytes()
    assert _batch(str(src), "--out-dir", str(out), "--ext", ".nii.gz", "--force") == 1
    assert "is the sidecar of" in capsys.readouterr().err
    assert main(["binarize", str(src), str(out / "x_mask.nii.gz"), "--force"]) == 1
    assert "is the sidecar of" in capsys.readouterr().err
    assert (out / "x_mask.json").read_bytes() == before
    assert not (out / "x_mask.nii.gz").exists()


# --- 3. --force never deletes a folder volbin did not write ----------------------------------
@pytest.mark.parametrize("name", ["mask.nii.gz", "mask.npy", "mask.zarr"])
def test_force_does_not_delete_a_folder_at_the_output_path(tmp_path, capsys, name):
    src = _nifti(tmp_path / "in.nii")
    precious = tmp_path / name / "thesis"
    precious.mkdir(parents=True)
    (precious / "chapter1.tex").write_text("years of work")
    assert main(["binarize", str(src), str(tmp_path / name), "--force"]) == 1
    assert "volbin did not write" in capsys.readouterr().err
    assert (precious / "chapter1.tex").read_text() == "years of work"


def test_force_replaces_a_zarr_store_volbin_wrote(tmp_path):
    src = _nifti(tmp_path / "in.nii")
    out = tmp_path / "mask.zarr"
    assert main(["binarize", str(src), str(out)]) == 0
    first = load(out).compute()
    assert main(["binarize", str(src), str(out), "--force", "--method", "value", "--threshold", "0.9"]) == 0
    again = load(out).compute()
    assert again.sum() < first.sum()
    assert _leftovers(tmp_path) == []


# --- 4. zarr chunks that are missing or damaged ----------------------------------------------
def _zarr_store(path: Path, **kw) -> np.ndarray:
    zarr = pytest.importorskip("zarr")
    data = np.random.default_rng(0).random((8, 10, 12)).astype(np.float32) + 1
    z = zarr.create_array(store=str(path), shape=data.shape, chunks=(4, 5, 6), dtype=data.dtype, **kw)
    z[:] = data
    return data


def test_missing_zarr_chunk_is_an_error_naming_it_or_a_warning_when_allowed(tmp_path, capsys):
    store = tmp_path / "in.zarr"
    data = _zarr_store(store)
    chunk = store / "c" / "1" / "0" / "1"
    chunk.unlink()
    with pytest.raises(InputFileError, match=r"1 of 8 chunks are missing.*chunk \(1, 0, 1\)") as err:
        load(store)
    assert str(chunk) in str(err.value)
    assert main(["info", str(store)]) == 1
    assert "chunk (1, 0, 1)" in capsys.readouterr().err
    with pytest.warns(VolbinWarning, match="1 of 8 chunks are missing"):
        vol = load(store, allow_missing=True)
    expected = data.copy()
    expected[4:8, 0:5, 6:12] = 0  # the store's fill value
    np.testing.assert_array_equal(vol.compute(), expected)
    assert main(["info", str(store), "--allow-missing-chunks"]) == 0
    assert "1 of 8 chunks are missing" in capsys.readouterr().err


def test_missing_chunk_without_a_fill_value_is_refused_even_when_allowed(tmp_path):
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "v2.zarr"
    z = zarr.create_array(
        store=str(store), shape=(4, 4, 4), chunks=(2, 4, 4), dtype="f4", zarr_format=2, fill_value=None
    )
    z[:] = 1
    (store / "1.0.0").unlink()
    with pytest.raises(InputFileError, match="declares no fill value"):
        load(store, allow_missing=True)


def test_damaged_zarr_chunk_names_its_file(tmp_path, capsys):
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "in.zarr"
    _zarr_store(store, compressors=zarr.codecs.ZstdCodec())
    bad = store / "c" / "0" / "1" / "0"
    bad.write_bytes(b"not zstd data")
    with pytest.raises(InputFileError, match=r"chunk \(0, 1, 0\).*cannot be decoded"):
        load(store).compute()
    assert main(["binarize", str(store), str(tmp_path / "m.nii")]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "unexpected" not in err
    assert not (tmp_path / "m.nii").exists() and _leftovers(tmp_path) == []


def test_volbin_writes_every_zarr_chunk_of_an_empty_mask(tmp_path):
    out = save(np.zeros((8, 8, 8), bool), tmp_path / "empty.zarr")
    np.testing.assert_array_equal(load(out).compute(), 0)  # no chunk missing


# --- 5. silently wrong results -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("threshold", "units", "side"),
    [("412", "rescaled", "above"), ("5000", "raw", "above"), ("1.5", "rescaled", "above"),
     ("inf", "rescaled", "above"), ("-3", "rescaled", "below")],
)  # fmt: skip
def test_threshold_outside_the_data_range_warns_with_the_range(tmp_path, capsys, threshold, units, side):
    src = _nifti(tmp_path / "in.nii")
    raw = np.asarray(nib.load(src).dataobj)
    out = tmp_path / "m.nii"
    args = ["binarize", str(src), str(out), "--method", "value", "--threshold", threshold, "--units", units]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"lies {side} the data's range" in err
    lo, hi = (0.0, 1.0) if units == "rescaled" else (raw.min(), raw.max())
    assert f"{lo:.6g}..{hi:.6g} ({units} units)" in err
    mask = np.asarray(nib.load(out).dataobj)
    assert (mask == (0 if side == "above" else 1)).all()  # what the warning says


def test_threshold_inside_the_range_does_not_warn(tmp_path):
    vol = phantom((16, 18, 16), seed=1).intensity
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method, kw in (("value", {"threshold": 0.4}), ("otsu", {}), ("stochastic", {}), ("dither", {})):
            mask = volbin.binarize(vol, method, **kw)
            assert 0 < mask.sum() < mask.size


def test_empty_or_full_stochastic_and_dithered_masks_warn():
    x = np.random.default_rng(0).random((10, 12, 10)) + 5
    for method in ("stochastic", "dither", "ordered"):
        for value_range, state, expected in (((10, 20), "empty", 0), ((1, 2), "full", 1)):
            with pytest.warns(VolbinWarning) as seen:
                mask = volbin.binarize(x, method, rescale="fixed", value_range=value_range)
            assert any(f"the {method} mask is {state}" in str(w.message) for w in seen), [
                str(w.message) for w in seen
            ]
            assert (mask == expected).all()


def test_seed_of_2_64_is_refused_at_parse_time(tmp_path, capsys):
    assert main(["binarize", "missing.nii", str(tmp_path / "o.nii"), "--method", "stochastic",
                 "--seed", str(2**64)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--seed" in err and "no such file" not in err


def test_dither_jitter_is_the_same_for_a_nifti_stack_and_its_npy_copy(tmp_path):
    ph = phantom((14, 16, 12), n_volumes=3, seed=2)
    nii = tmp_path / "s.nii"
    nib.save(nib.Nifti1Image(np.asarray(ph.intensity), np.eye(4)), nii)
    npy = tmp_path / "s.npy"
    np.save(npy, np.moveaxis(np.asarray(ph.intensity), -1, 0))
    for scope in ("slice", "volume"):
        opts = ["--method", "dither", "--jitter", "0.5", "--seed", "3", "--scope", scope]
        assert main(["binarize", str(nii), str(tmp_path / f"a{scope}.nii"), *opts]) == 0
        assert main(["binarize", str(npy), str(tmp_path / f"b{scope}.npy"), *opts, "--volume-axis", "0"]) == 0
        a = np.asarray(nib.load(tmp_path / f"a{scope}.nii").dataobj)
        b = np.moveaxis(np.load(tmp_path / f"b{scope}.npy"), 0, -1)
        np.testing.assert_array_equal(a, b)


def test_compare_refuses_a_grey_first_volume(tmp_path, capsys):
    src = _nifti(tmp_path / "grey.nii")
    assert main(["info", str(src), "--compare", str(src)]) == 1
    err = capsys.readouterr().err
    assert "not a binary volume" in err and "mean density" not in err


# --- 6. resume trusts nothing it can check ----------------------------------------------------
def test_truncated_or_altered_output_with_intact_sidecar_is_redone(tmp_path):
    src = _nifti(tmp_path / "in.nii")
    out = tmp_path / "out"
    assert _batch(str(src), "--out-dir", str(out), "--ext", ".nii") == 0
    img = out / "in_mask.nii"
    good = img.read_bytes()
    assert read_sidecar(img)["output"]["size"] == len(good)
    img.write_bytes(good[: len(good) // 2])  # truncated: the size tells
    res = volbin.batch(str(src), out, ext=".nii", scheduler="threads", progress=False)
    assert len(res.done) == 1 and "damaged" in res.done[0].note
    assert img.read_bytes() == good
    flipped = bytearray(good)
    flipped[-1] ^= 1  # same size, other bytes: the SHA-256 tells
    img.write_bytes(bytes(flipped))
    res = volbin.batch(str(src), out, ext=".nii", scheduler="threads", progress=False)
    assert len(res.done) == 1 and "SHA-256" in res.done[0].note
    assert img.read_bytes() == good


def test_kill_between_image_and_sidecar_renames_leaves_a_recognised_output(tmp_path, monkeypatch):
    import volbin.io._write as W

    src = _nifti(tmp_path / "in.nii.gz")
    out = tmp_path / "out"
    img, side = out / "in_mask.nii.gz", out / "in_mask.json"
    real = W._replace
    seen: list[Path] = []

    def killed_after_image(tmp: Path, final: Path) -> None:
        if final == side and img in seen:
            raise KeyboardInterrupt  # the process dies after the image is in place
        real(tmp, final)
        seen.append(final)

    out.mkdir()
    monkeypatch.setattr(W, "_replace", killed_after_image)
    with pytest.raises(KeyboardInterrupt):  # the task batch runs for the file, killed midway
        process_one(str(src), str(img), volbin.Recipe().to_dict())
    monkeypatch.setattr(W, "_replace", real)
    assert img.exists() and "pending" in read_sidecar(side)
    mtime = img.stat().st_mtime_ns
    res = volbin.batch(str(src), out, scheduler="threads", progress=False)
    assert len(res.skipped) == 1, res.files  # recognised as complete, not refused or redone
    assert img.stat().st_mtime_ns == mtime and "pending" not in read_sidecar(side)
    ref = volbin.binarize(nib.load(src).get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(nib.load(img).dataobj), ref)


def test_kill_before_the_image_rename_is_redone(tmp_path, monkeypatch):
    import volbin.io._write as W

    src = _nifti(tmp_path / "in.nii")
    out = tmp_path / "out"
    img = out / "in_mask.nii"

    def killed(tmp: Path, final: Path) -> None:
        if final == img:
            raise KeyboardInterrupt
        W.os.replace(tmp, final)

    assert _batch(str(src), "--out-dir", str(out), "--method", "value", "--threshold", "0.2") == 0
    monkeypatch.setattr(W, "_replace", killed)
    with pytest.raises(KeyboardInterrupt):
        volbin.batch(str(src), out, scheduler="threads", progress=False)
    monkeypatch.undo()
    res = volbin.batch(str(src), out, scheduler="threads", progress=False)  # otsu this time
    assert len(res.done) == 1
    ref = volbin.binarize(nib.load(src).get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(nib.load(img).dataobj), ref)
    assert _leftovers(out) == []


def test_export_redoes_a_truncated_layer(tmp_path):
    src = _nifti(tmp_path / "in.nii", (12, 12, 8))
    out = tmp_path / "stack"
    opts = ["export-slices", str(src), str(out), "--dpi", "50", "--layer", "2mm", "--no-progress"]
    assert main(opts) == 0
    layers = sorted(out.glob("layer_*.png"))
    good = layers[1].read_bytes()
    layers[1].write_bytes(good[: len(good) // 2])
    layers[2].write_bytes(b"not a png")
    assert main(opts) == 0
    assert layers[1].read_bytes() == good
    from PIL import Image

    with Image.open(layers[2]) as im:
        assert im.mode == "1"
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


# --- 7. signals and clean-up -------------------------------------------------------------------
def test_sigterm_removes_temporaries_and_decompressed_copies(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    src = _nifti(tmp_path / "big.nii.gz", (120, 144, 120))
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "volbin", "binarize", str(src), str(out / "d.nii.gz"), "--method",
           "dither", "--scope", "volume", "--upsample", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env={**ENV, "VOLBIN_TMPDIR": str(scratch)}, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not _leftovers(out):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert list(scratch.iterdir())  # the decompressed copy of the input
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert list(out.iterdir()) == [] and list(scratch.iterdir()) == []


def test_binarize_removes_stale_temporaries_of_its_own_output(tmp_path):
    src = _nifti(tmp_path / "in.nii")
    out = tmp_path / "m.nii.gz"
    stale = ["m.nii.gz.0123abcd.tmp", "m.nii.gz.0123abcd.nii.tmp", "m.json.89abcdef.tmp"]
    kept = ["other.nii.gz.0123abcd.tmp", "m.nii.gz.notes"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x" * 100)
    assert main(["binarize", str(src), str(out)]) == 0
    left = {p.name for p in tmp_path.iterdir()}
    assert not left & set(stale) and set(kept) <= left
    assert not any(n.endswith(".lock") for n in left)  # the output's lock is removed too


def test_interrupt_during_the_quality_pass_says_what_was_written(tmp_path, capsys, monkeypatch):
    from volbin.dither import quality as Q

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Q, "compare_with_input", interrupted)
    src = _nifti(tmp_path / "in.nii")
    out = tmp_path / "d.nii"
    assert main(["binarize", str(src), str(out), "--method", "dither", "--quality"]) == 130
    err = capsys.readouterr().err
    assert "no partial output" not in err
    assert f"{out} and its sidecar were written; the quality figures were not" in err
    assert load(out).shape == (20, 24, 20) and "quality" not in read_sidecar(out)


def test_sigterm_handler_is_restored_after_main(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert main(["info", str(_nifti(tmp_path / "in.nii"))]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


# --- 8. hangs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [["--workers", "-1"], ["--workers", "0"], ["--threads-per-worker", "-1"], ["--threads-per-worker", "0"],
     ["--chunk-mb", "0.000001"], ["--chunk-mb", "1e308"], ["--memory-limit", "inf"],
     ["--scheduler", "not a url"], ["--scheduler", "tcp://"], ["--method", "dither", "--upsample", "1e308"],
     ["--max-output-gb", "0"]],
)  # fmt: skip
def test_bad_batch_numbers_are_usage_errors(tmp_path, capsys, args):
    assert main(["batch", str(tmp_path / "x.nii"), "--out-dir", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert args[0] in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args",
    [["--layer", "1e-9mm"], ["--dpi", "1e308x300"], ["--dpi", "nanx300"], ["--layers", "5:2"]],
)
def test_bad_export_numbers_are_usage_errors(tmp_path, capsys, args):
    assert main(["export-slices", str(tmp_path / "x.nii"), str(tmp_path / "o"), *args]) == 2
    assert args[0] in capsys.readouterr().err


def test_sigma_out_of_range_is_a_usage_error(tmp_path, capsys):
    assert main(["info", "x.nii", "--compare", "y.nii", "--sigma", "1e308"]) == 2
    assert "--sigma" in capsys.readouterr().err


def test_too_many_workers_for_the_cores_is_refused(tmp_path, capsys, monkeypatch):
    from volbin.batch import engine as E

    monkeypatch.setattr(E, "_cores", lambda: 2)
    assert E._layout(2, 4) == (2, 4)
    with pytest.raises(ValueError, match="threads on 2 core"):
        E._layout(3, 3)
    src = _nifti(tmp_path / "in.nii")
    assert main(["batch", str(src), "--out-dir", str(tmp_path / "o"), "--workers", "256"]) == 2
    err = capsys.readouterr().err
    assert "256 x 1 = 256 threads on 2 core(s); at most 8" in err


def test_a_port_that_is_not_a_dask_scheduler_fails_within_seconds(tmp_path, capsys, monkeypatch):
    from volbin.batch import engine as E

    monkeypatch.setattr(E, "CONNECT_TIMEOUT", 1.0)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:  # accepts connections and never answers
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        src = _nifti(tmp_path / "in.nii")
        t0 = time.monotonic()
        code = main(
            ["batch", str(src), "--out-dir", str(tmp_path / "o"), "--scheduler", f"tcp://127.0.0.1:{port}"]
        )
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        t.join()
        for c in accepted:
            c.close()
        server.close()
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"cannot reach a dask scheduler at tcp://127.0.0.1:{port}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert elapsed < 60  # not the 30 s default of each of several retries


def test_output_larger_than_the_limit_is_refused_before_writing(tmp_path, capsys):
    import dask.array as da

    src = _nifti(tmp_path / "in.nii")
    out = tmp_path / "up.nii"
    t0 = time.monotonic()
    # 20 x 24 x 20 upsampled 50 times: 1.2 G voxels, more than the 0.5 GB asked for.
    args = [
        "binarize",
        str(src),
        str(out),
        "--method",
        "dither",
        "--upsample",
        "50",
        "--max-output-gb",
        "0.5",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "the output would hold 1,200,000,000 voxels (1.2 GB of uint8 data)" in err
    assert "--max-output-gb" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 60 and not out.exists() and _leftovers(tmp_path) == []
    # The default limit (16 GiB) refuses a tera-voxel output at once, before computing it.
    with pytest.raises(OutputFileError, match=r"more than the limit of 17\.2 GB"):
        save(da.zeros((2**14, 2**14, 2**12), bool, chunks=2**10), tmp_path / "huge.npy")
    with pytest.raises(OutputFileError, match="more than the limit"):
        save(np.zeros((10, 10, 10), bool), tmp_path / "z.npy", max_output_bytes=999)
    save(np.zeros((10, 10, 10), bool), tmp_path / "z.npy", max_output_bytes=1000)
    assert _leftovers(tmp_path) == []


def test_export_refuses_a_stack_larger_than_the_limit(tmp_path, capsys):
    src = _nifti(tmp_path / "in.nii")
    ph = phantom((20, 24, 20), seed=0)
    big = tmp_path / "big.nii"  # the same voxels, 10 mm each: 200 x 240 x 200 mm
    nib.save(nib.Nifti1Image(np.asarray(ph.intensity), np.diag([10.0, 10, 10, 1])), big)
    t0 = time.monotonic()
    assert main(["export-slices", str(src), str(tmp_path / "s"), "--layer", "1um", "--dpi", "2000",
                 "--max-output-gb", "1"]) == 1  # fmt: skip
    assert "the stack would be 20,000 layers" in capsys.readouterr().err
    assert main(["export-slices", str(big), str(tmp_path / "s"), "--layer", "10um", "--dpi", "1000"]) == 1
    err = capsys.readouterr().err
    assert "the stack would be 20,000 layers of 7875 x 9449 pixels" in err and "--max-output-gb" in err
    assert main(["export-slices", str(src), str(tmp_path / "s"), "--dpi", "20000"]) == 1
    assert "pixels, more than the 268,435,456" in capsys.readouterr().err
    assert time.monotonic() - t0 < 60
    assert not list((tmp_path / "s").glob("*.png")) if (tmp_path / "s").exists() else True


# --- 9. no traceback, no "unexpected" ----------------------------------------------------------
def test_zero_size_nifti_is_an_input_error(tmp_path, capsys):
    p = tmp_path / "zero.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 4), np.float32), np.eye(4)), p)
    with pytest.raises(InputFileError, match="holds no voxels"):
        load(p)
    assert main(["binarize", str(p), str(tmp_path / "o.nii")]) == 1
    err = capsys.readouterr().err
    assert "holds no voxels" in err and "unexpected" not in err


def test_nan_in_the_sform_is_an_input_error_naming_the_file(tmp_path, capsys):
    p = tmp_path / "nan.nii"
    img = nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.eye(4))
    img.header.set_sform(np.eye(4), code=1)
    nib.save(img, p)
    raw = bytearray(p.read_bytes())
    raw[280:284] = struct.pack("<f", float("nan"))  # srow_x[0]
    p.write_bytes(bytes(raw))
    assert np.isnan(nib.load(p).affine).any()  # nibabel's own reading
    with pytest.raises(InputFileError, match=r"nan\.nii: its affine"):
        load(p)
    assert main(["binarize", str(p), str(tmp_path / "o.nii")]) == 1
    err = capsys.readouterr().err
    assert "nan.nii: its affine" in err and "unexpected" not in err


_INTERRUPT_AT_IMPORT = """
import builtins, os, runpy, signal, sys
real = builtins.__import__
def hook(name, *a, **k):
    if name == sys.argv[1] and not getattr(builtins, "_hit", False):
        builtins._hit = True
        os.kill(os.getpid(), signal.SIGINT)
    return real(name, *a, **k)
builtins.__import__ = hook
sys.argv = ["volbin", "info", sys.argv[2]]
runpy.run_module("volbin", run_name="__main__")
"""


@pytest.mark.parametrize("module", ["numpy", "dask", "nibabel"])
def test_ctrl_c_during_start_up_prints_one_line(tmp_path, module):
    src = _nifti(tmp_path / "in.nii")
    r = subprocess.run([sys.executable, "-c", _INTERRUPT_AT_IMPORT, module, str(src)], env=ENV,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr and "interrupted" in r.stderr


# --- 10. planted links -----------------------------------------------------------------------------
def test_planted_lock_link_does_not_make_batch_write_outside(tmp_path, capsys):
    src = _nifti(tmp_path / "in.nii")
    out, outside = tmp_path / "out", tmp_path / "elsewhere" / "victim"
    out.mkdir()
    outside.parent.mkdir()
    os.symlink(outside, out / ".volbin-batch.lock")
    assert _batch(str(src), "--out-dir", str(out)) == 1
    assert "symbolic link" in capsys.readouterr().err
    assert not outside.exists()


def test_planted_lock_link_does_not_make_export_write_outside(tmp_path, capsys):
    src = _nifti(tmp_path / "in.nii", (12, 12, 8))
    out, outside = tmp_path / "stack", tmp_path / "victim"
    (out / ".volbin-export").mkdir(parents=True)
    outside.write_text("keep")
    os.symlink(outside, out / ".volbin-export" / "lock")
    assert main(["export-slices", str(src), str(out), "--dpi", "50", "--layer", "2mm", "--no-progress"]) == 1
    assert "symbolic link" in capsys.readouterr().err
    assert outside.read_text() == "keep"


# --- 11. smaller faults -------------------------------------------------------------------------
def test_errors_name_the_input_not_its_decompressed_copy(tmp_path, capsys):
    p = tmp_path / "garbage.nii.gz"
    p.write_bytes(gzip.compress(b"x" * 400))
    assert main(["info", str(p)]) == 1
    err = capsys.readouterr().err
    assert "garbage.nii.gz" in err and "volbin-" not in err


@pytest.mark.parametrize("text", ["[1, 2]", '"otsu"', "3"])
def test_recipe_file_that_is_not_an_object_names_the_file(tmp_path, capsys, text):
    rec = tmp_path / "recipe.json"
    rec.write_text(text)
    assert main(["binarize", "in.nii", str(tmp_path / "o.nii"), "--recipe", str(rec)]) == 2
    assert f"{rec}: not a recipe" in capsys.readouterr().err


def test_unwritable_report_is_found_before_any_file_runs(tmp_path, capsys):
    src = _nifti(tmp_path / "in.nii")
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = tmp_path / "out"
    assert _batch(str(src), "--out-dir", str(out), "--report", str(blocker / "r.json")) == 1
    assert "batch report" in capsys.readouterr().err
    assert not list(out.glob("*_mask*"))


def test_one_file_by_relative_and_absolute_path_runs_once(tmp_path, monkeypatch):
    src = _nifti(tmp_path / "in.nii")
    monkeypatch.chdir(tmp_path)
    res = volbin.batch(
        ["in.nii", str(src), "./in.nii"], tmp_path / "out", scheduler="threads", progress=False
    )
    assert [f.status for f in res.files] == ["done"]


def test_interrupted_batch_reports_finished_files_as_done(tmp_path, monkeypatch):
    B = importlib.import_module("volbin.batch")

    paths = [_nifti(tmp_path / f"in{i}.nii", seed=i) for i in range(3)]
    out = tmp_path / "out"
    real_run = B._run

    def finished_then_interrupted(*args, **kw):
        for _ in real_run(*args, **kw):
            pass  # every file is written, none of their results is seen
        raise KeyboardInterrupt

    monkeypatch.setattr(B, "_run", finished_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        volbin.batch([str(p) for p in paths], out, scheduler="threads", progress=False)
    report = json.loads((out / "volbin-batch-report.json").read_text())
    assert report["interrupted"] is True
    assert [f["status"] for f in report["files"]] == ["done"] * 3


def test_the_loser_of_two_runs_on_one_output_says_another_process_writes_it(tmp_path, capsys):
    src = _nifti(tmp_path / "in.nii")
    out = tmp_path / "m.nii"
    with folder_lock(tmp_path / ".m.nii.lock", "held by the test"):
        assert main(["binarize", str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert "another volbin process is writing this output" in err and "truncated" not in err
    assert not out.exists()
    assert main(["binarize", str(src), str(out)]) == 0


def test_two_binarize_processes_racing_on_one_output(tmp_path):
    src = _nifti(tmp_path / "in.nii", (96, 112, 96))
    out = tmp_path / "m.npy"
    cmd = [sys.executable, "-m", "volbin", "binarize", str(src), str(out), "--method", "dither", "--force"]
    procs = [subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
             for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.stderr.close()  # type: ignore[union-attr]
    codes = sorted(c for c, _ in results)
    assert codes[0] == 0, results
    for code, err in results:
        assert "truncated" not in err and "Traceback" not in err
        if code:
            assert code == 1 and "another volbin process is writing this output" in err
    assert load(out).shape == (96, 112, 96)


def test_nibabel_log_lines_do_not_reach_the_terminal(tmp_path):
    p = tmp_path / "code.nii"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((6, 6, 6)).astype(np.float32), np.eye(4)), p)
    raw = bytearray(p.read_bytes())
    raw[254:256] = struct.pack("<h", 7)  # an invalid sform_code, which nibabel logs and fixes
    p.write_bytes(bytes(raw))
    # A subprocess: pytest's own log capture would hide what reaches a terminal.
    r = subprocess.run([sys.executable, "-m", "volbin", "binarize", str(p), str(tmp_path / "o.nii")],
                       env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "sform_code" not in r.stderr and r.stderr == ""
    import logging

    assert main(["info", str(p)]) == 0
    assert logging.getLogger("nibabel").level == logging.NOTSET  # restored after the command
