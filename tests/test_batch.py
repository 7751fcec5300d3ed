"""Tests of volbin.batch: many files on dask.distributed, resumable, failures isolated.

Reference: the single-file command (``volbin binarize``) on each input.  Clusters are small
and in-process (``processes=False``) except in the test that kills a real batch process.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from distributed import Client, LocalCluster

import volbin
from volbin.batch import (
    LOCK_NAME,
    REPORT_NAME,
    _folder_lock,
    expand_inputs,
    output_path,
)
from volbin.cli import main
from volbin.errors import OutputFileError
from volbin.io import load, read_sidecar, save
from volbin.phantom import phantom

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (24, 28, 24)
N_FILES = 20
BAD = "sub-13_T1w.nii.gz"


# --- helpers ---------------------------------------------------------------------------------
def _write_inputs(folder: Path, n: int, shape: tuple[int, int, int] = SHAPE) -> list[Path]:
    """n phantom volumes as BIDS-like ``sub-XX/anat/sub-XX_T1w.nii.gz``."""
    stack = phantom(shape, n_volumes=n, seed=3)
    paths = []
    for i in range(n):
        p = folder / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii.gz"
        p.parent.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(np.ascontiguousarray(stack.intensity[..., i]), stack.affine)
        img.header.set_xyzt_units("mm", "sec")
        img.to_filename(p)
        paths.append(p)
    return paths


def _image_bytes(path: Path) -> bytes:
    """The bytes of an image file, decompressed if gzip."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith((".tmp", ".old")))


def _complete(side: Path, record: dict) -> bool:
    """Whether the output of sidecar `side` is complete: its sidecar is final, or still marked
    pending but naming the very image in place (a writer killed between renaming the image
    and rewriting its sidecar; `volbin.io.save` documents that window and batch resumes it as
    done).  A pending sidecar whose image is not there yet was interrupted before the rename."""
    pending = record.get("pending")
    if pending is None:
        return True
    try:
        st = side.with_name(side.stem + ".nii.gz").stat()
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino, st.st_size) == (pending["device"], pending["inode"], pending["size"])


def _created(out: Path) -> dict[str, tuple[str, int]]:
    """Sidecar `created` stamp and image mtime of every complete output in `out` (see
    `_complete`).  Read while a batch writes, too: a final sidecar implies its image is in
    place, since the image is renamed before the sidecar loses its pending mark."""
    found = {}
    for p in sorted(out.glob("*_mask.json")):
        record = read_sidecar(p)
        if _complete(p, record):
            found[p.name] = (record["created"], p.with_name(p.stem + ".nii.gz").stat().st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 phantom volumes in a BIDS-like tree, one of them a truncated (corrupt) .nii.gz."""
    root = tmp_path_factory.mktemp("data")
    paths = _write_inputs(root, N_FILES)
    bad = next(p for p in paths if p.name == BAD)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return root


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each good input binarized by the single-file command, into one folder."""
    out = tmp_path_factory.mktemp("reference")
    for p in sorted(dataset.rglob("*_T1w.nii.gz")):
        if p.name != BAD:
            dst = out / p.name.replace("_T1w", "_T1w_mask")
            assert main(["binarize", str(p), str(dst), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def cluster2() -> str:
    """An in-process LocalCluster with 2 single-threaded workers; yields its address."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


# --- the acceptance scenario ---------------------------------------------------------------
def test_batch_finishes_good_files_names_bad_one_and_matches_single_file_cli(
    dataset: Path, reference: Path, cluster2: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "masks"
    pattern = str(dataset / "sub-*" / "anat" / "*_T1w.nii.gz")
    code = main(
        [
            "batch",
            pattern,
            "--out-dir",
            str(out),
            "--method",
            "otsu",
            "--scope",
            "volume",
            "--scheduler",
            cluster2,
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert BAD in captured.out and "truncated or corrupt gzip data" in captured.out
    made = sorted(p.name for p in out.glob("*_mask.nii.gz"))
    assert len(made) == N_FILES - 1 and BAD.replace("_T1w", "_T1w_mask") not in made
    for name in made:
        assert _image_bytes(out / name) == _image_bytes(reference / name), name
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["counts"] == {"total": 20, "done": 19, "skipped": 0, "failed": 1, "pending": 0}
    (failed,) = [f for f in report["files"] if f["status"] == "failed"]
    assert failed["input"].endswith(BAD) and "corrupt" in failed["reason"]
    assert report["engine"]["kind"] == "scheduler" and report["engine"]["workers"] == 2
    assert _leftovers(out) == []
    # One log line per finished file on standard error (not a terminal here).
    assert captured.err.count("done ") == N_FILES - 1


def test_killed_batch_resumes_without_redoing_or_leaving_temporaries(
    tmp_path: Path,
) -> None:
    data, out, scratch = tmp_path / "data", tmp_path / "masks", tmp_path / "scratch"
    scratch.mkdir()
    paths = _write_inputs(data, 24, (32, 36, 32))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VOLBIN_TMPDIR": str(scratch)}
    cmd = [
        sys.executable,
        "-m",
        "volbin",
        "batch",
        str(data / "sub-*/anat/*.nii.gz"),
        "--out-dir",
        str(out),
        "--method",
        "otsu",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2", "--threads-per-worker", "1"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while len(_created(out)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the batch made no output in 120 s"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    before = _created(out)
    assert 3 <= len(before) < len(paths), "the batch was not killed halfway"
    # Whatever sits under a final name with its sidecar is complete.
    for name in before:
        img = out / name.replace(".json", ".nii.gz")
        assert load(img).compute().shape == (32, 36, 32)

    done = subprocess.run(
        [*cmd, "--scheduler", "threads"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"{len(before)} of {len(paths)} outputs are up to date" in done.stderr
    after = _created(out)
    assert len(after) == len(paths)
    assert {k: after[k] for k in before} == before  # nothing finished was redone
    assert _leftovers(out) == []
    assert list(scratch.iterdir()) == []  # decompressed copies of the killed run removed
    for p in paths:
        mask = out / p.name.replace("_T1w", "_T1w_mask")
        ref = volbin.binarize(nib.load(p).get_fdata(dtype=np.float32), method="otsu")
        np.testing.assert_array_equal(np.asarray(nib.load(mask).dataobj), ref)


# --- engines -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """3D NIfTI, a 4D NIfTI and a 4D .npy stack, each cut in several chunks below."""
    root = tmp_path_factory.mktemp("mixed")
    paths = _write_inputs(root, 3)
    stack = phantom(SHAPE, n_volumes=3, seed=5)
    four = root / "run-01_bold.nii.gz"
    nib.Nifti1Image(stack.intensity, stack.affine).to_filename(four)
    npy = root / "run-02_bold.npy"
    np.save(npy, np.moveaxis(stack.intensity, 3, 0))
    return [*paths, four, npy]


@pytest.mark.parametrize("engine", ["threads", "1 worker", "2 workers"])
def test_results_identical_on_every_engine(
    mixed: list[Path], tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    # Previews (about a second each here) are compared on the engine that draws two at once.
    preview = engine == "2 workers"
    kw = {
        "method": "otsu",
        "scope": "volume",
        "chunk_bytes": 16 * 2**10,
        "progress": False,
        "preview": preview,
    }
    ref = tmp_path / "ref"
    res = volbin.batch(mixed[:4], ref, scheduler="threads", **kw)
    res_npy = volbin.batch(mixed[4:], ref, scheduler="threads", volume_axis=0, **kw)
    assert res.ok and res_npy.ok
    out = tmp_path / "out"
    if engine == "threads":
        got = volbin.batch(mixed[:4], out, scheduler="threads", **{**kw, "chunk_bytes": 2**12})
        got_npy = volbin.batch(mixed[4:], out, scheduler="threads", volume_axis=0, **kw)
    else:
        n = int(engine[0])
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=2, processes=False, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            got = volbin.batch(mixed[:4], out, client=client, **kw)
            got_npy = volbin.batch(mixed[4:], out, client=client, volume_axis=0, **kw)
            assert got.engine["workers"] == n
            assert {f.worker for f in got.done} <= set(client.scheduler_info()["workers"])
    assert got.ok and got_npy.ok and len(got.done) == 4
    for f in [*res.files, *res_npy.files]:
        name = Path(f.output).name
        assert _image_bytes(out / name) == _image_bytes(ref / name), name
        if preview:  # drawn on the workers, two files at once on a worker's threads
            png = Path(f.preview).name
            assert (out / png).read_bytes() == (ref / png).read_bytes(), png
    assert load(out / "run-02_bold_mask.npy", volume_axis=0).shape == (3, *SHAPE)


def test_unexpected_task_error_is_retried_then_reported(
    mixed: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def broken(vol: object, recipe: object) -> None:
        calls.append(1)
        raise RuntimeError("boom")

    monkeypatch.setattr(sys.modules["volbin.binarize"], "binarize_volume", broken)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        res = volbin.batch(mixed[:2], tmp_path, client=client, retries=2, progress=False)
    assert [f.status for f in res.files] == ["failed", "failed"]
    assert all(f.reason == "RuntimeError: boom" for f in res.files)
    assert len(calls) == 2 * 3  # first try + 2 retries per file


# --- resume --------------------------------------------------------------------------------
def test_resume_skips_force_redoes_and_stale_outputs_are_redone(mixed: list[Path], tmp_path: Path) -> None:
    kw = {"method": "otsu", "scheduler": "threads", "progress": False}
    inputs = mixed[:3]
    first = volbin.batch(inputs, tmp_path, **kw)
    assert len(first.done) == 3
    stamps = _created(tmp_path)

    again = volbin.batch(inputs, tmp_path, **kw)
    assert [f.status for f in again.files] == ["skipped"] * 3
    assert _created(tmp_path) == stamps

    forced = volbin.batch(inputs, tmp_path, force=True, **kw)
    assert [f.status for f in forced.files] == ["done"] * 3
    assert all(_created(tmp_path)[k][0] > stamps[k][0] for k in stamps)

    # Another recipe, or a touched input: the output is redone, with a note saying why.
    other = volbin.batch(inputs[:1], tmp_path, **{**kw, "method": "li"})
    assert other.done[0].note == "replaced an output made with another recipe"
    assert read_sidecar(other.done[0].output)["steps"][-1]["recipe"]["method"] == "li"
    os.utime(inputs[1])
    touched = volbin.batch(inputs, tmp_path, **kw)
    assert [f.status for f in touched.files] == ["done", "done", "skipped"]
    assert "another version of the input" in touched.files[1].note


def test_output_without_sidecar_is_not_overwritten_without_force(mixed: list[Path], tmp_path: Path) -> None:
    foreign = output_path(mixed[0], tmp_path)
    foreign.write_bytes(b"someone else's file")
    res = volbin.batch(mixed[:2], tmp_path, scheduler="threads", progress=False)
    assert [f.status for f in res.files] == ["failed", "done"]
    assert "without its sidecar" in res.files[0].reason and "--force" in res.files[0].reason
    assert foreign.read_bytes() == b"someone else's file"
    res = volbin.batch(mixed[:2], tmp_path, scheduler="threads", progress=False, force=True)
    assert res.ok and load(foreign).shape == SHAPE


def test_stray_temporaries_of_outputs_are_removed_and_others_kept(mixed: list[Path], tmp_path: Path) -> None:
    strays = [
        "sub-00_T1w_mask.nii.gz.0123abcd.tmp",
        "sub-00_T1w_mask.nii.gz.0123abcd.nii.tmp",
        "sub-00_T1w_mask.json.89abcdef.tmp",
        "old_mask.npy.deadbeef.tmp",
        f"{REPORT_NAME}.12345678.tmp",
        "sub-00_T1w_mask.png.0badcafe.tmp",
        "index.html.c0ffee00.tmp",
    ]
    for name in strays:
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / "sub-09_T1w_mask.zarr.feedf00d.tmp").mkdir()
    keep = ["notes.tmp", "sub-00_T1w.nii.gz.0123abcd.tmp", "x_mask.nii.gz.tmp", "photo.png.0badcafe.tmp"]
    for name in keep:
        (tmp_path / name).write_bytes(b"not ours")
    res = volbin.batch(mixed[:1], tmp_path, scheduler="threads", progress=False)
    assert res.ok
    assert _leftovers(tmp_path) == sorted(keep)


def test_two_batches_cannot_write_one_folder(mixed: list[Path], tmp_path: Path) -> None:
    with _folder_lock(str(tmp_path)), pytest.raises(OutputFileError, match="another volbin"):
        volbin.batch(mixed[:1], tmp_path, scheduler="threads", progress=False)
    assert (tmp_path / LOCK_NAME).exists()
    assert volbin.batch(mixed[:1], tmp_path, scheduler="threads", progress=False).ok


# --- inputs and names ----------------------------------------------------------------------
def test_list_file_folder_and_glob_inputs(mixed: list[Path], tmp_path: Path) -> None:
    root = mixed[0].parents[2]
    listing = tmp_path / "inputs.txt"
    listing.write_text(
        f"# T1w images\n{mixed[0]}\n\n  {mixed[1]}   # second\n{root}/run-*_bold.nii.gz\n"
        f"{tmp_path}/missing.nii.gz\n"
    )
    assert expand_inputs(listing) == [
        str(mixed[0]),
        str(mixed[1]),
        str(mixed[3]),
        f"{tmp_path}/missing.nii.gz",
    ]
    assert expand_inputs(root) == [str(mixed[3]), str(mixed[4])]  # .nii.gz and .npy only
    assert expand_inputs([root / "sub-*" / "anat" / "*.nii.gz", mixed[0]]) == [str(p) for p in mixed[:3]]
    with pytest.raises(ValueError, match="no image matches"):
        expand_inputs(str(root / "*.nii"))

    res = volbin.batch(listing, tmp_path / "out", scheduler="threads", progress=False)
    assert [f.status for f in res.files] == ["done", "done", "done", "failed"]
    assert "no such file" in res.files[3].reason
    (tmp_path / "z").mkdir()
    z = save(np.zeros((4, 5, 6), np.float32) + np.arange(6), tmp_path / "z" / "a.zarr")
    (tmp_path / "z" / "b.txt").write_text("not an image")
    res = volbin.batch(tmp_path / "z", tmp_path / "zout", scheduler="threads", progress=False)
    assert [Path(f.input).name for f in res.files] == ["a.zarr"]
    assert res.ok and load(tmp_path / "zout" / "a_mask.zarr").shape == (4, 5, 6)
    assert z.exists()


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        ("sub-01_T1w.nii.gz", {}, "sub-01_T1w_mask.nii.gz"),
        ("sub-01_ses-1_T1w.nii", {}, "sub-01_ses-1_T1w_mask.nii"),
        ("stack.NPY", {"suffix": "_bin"}, "stack_bin.NPY"),
        ("a.b.zarr", {"ext": "nii.gz"}, "a.b_mask.nii.gz"),
        ("sub-01_T1w.nii.gz", {"ext": ".zarr", "suffix": ""}, "sub-01_T1w.zarr"),
    ],
)
def test_output_names_keep_bids_names(name: str, kw: dict, expected: str) -> None:
    assert output_path(f"/data/{name}", "/out", **kw) == Path("/out", expected)


def test_name_collisions_fail_before_running_unless_tree_kept(tmp_path: Path) -> None:
    a, b = tmp_path / "site1" / "brain.nii", tmp_path / "site2" / "brain.nii"
    for p in (a, b):
        p.parent.mkdir()
        save(phantom((12, 14, 12)).intensity, p, sidecar=False)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"(?s)brain_mask.*site1/brain\.nii.*--keep-tree"):
        volbin.batch([a, b], out, scheduler="threads", progress=False)
    assert not out.exists()  # nothing ran
    res = volbin.batch([a, b], out, keep_tree=True, scheduler="threads", progress=False)
    assert res.ok and [Path(f.output).relative_to(out).as_posix() for f in res.files] == [
        "site1/brain_mask.nii",
        "site2/brain_mask.nii",
    ]
    with pytest.raises(ValueError, match="overwrite"):
        volbin.batch(a, a.parent, suffix="", scheduler="threads", progress=False)
    with pytest.raises(ValueError, match="`ext`"):
        volbin.batch(a, out, ext=".mgz", scheduler="threads", progress=False)


def test_report_path_progress_lines_and_summary(
    mixed: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report = tmp_path / "run.json"
    res = volbin.batch(mixed[:2], tmp_path / "out", scheduler="threads", report=report, progress="log")
    err = capsys.readouterr().err
    assert err.count("volbin: [") == 2 and "sub-00_T1w_mask.nii.gz in " in err
    doc = json.loads(report.read_text())
    assert doc["recipe"]["method"] == "otsu" and doc["counts"]["done"] == 2
    assert set(doc["files"][0]) == {
        "input", "output", "status", "seconds", "reason", "note", "worker",
        "thresholds", "foreground_voxels", "foreground_mm3", "preview",
    }  # fmt: skip
    assert not (tmp_path / "out" / REPORT_NAME).exists()
    assert res.report == str(report)
    text = res.summary()
    assert "2 inputs" in text and "done" in text and "failed inputs" not in text
    volbin.batch(mixed[:2], tmp_path / "out", scheduler="threads", report=False, progress=False)
    assert capsys.readouterr().err == ""


def test_cli_batch_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["batch", str(tmp_path / "*.nii.gz"), "--out-dir", str(tmp_path)]) == 2
    assert "no image matches" in capsys.readouterr().err
    assert main(["batch", "x.nii"]) == 2  # --out-dir is required


def test_slurm_example_is_importable_and_has_help() -> None:
    pytest.importorskip("dask_jobqueue")
    for script in ("slurm_batch.py", "bench_batch.py"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / script), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert done.returncode == 0, done.stderr
        assert "usage:" in done.stdout


def test_files_at_once_in_this_process_give_the_bytes_of_one_at_a_time(tmp_path: Path) -> None:
    from volbin.batch.engine import local_layout

    paths = _write_inputs(tmp_path / "data", 5)
    glob = str(tmp_path / "data/sub-*/anat/*.nii.gz")
    both = volbin.batch(glob, tmp_path / "a", method="otsu", scheduler="threads", progress=False)
    one = volbin.batch(
        glob, tmp_path / "b", method="otsu", scheduler="threads", threads_per_worker=1, progress=False
    )
    assert both.ok and one.ok and len(both.done) == len(paths) == len(one.done)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert local_layout() == (cores, 1) and local_layout(3) == (1, 3)
    assert both.engine["files_at_once"] == local_layout()[0] and one.engine["files_at_once"] == 1
    for f in both.done:
        g = tmp_path / "b" / Path(f.output).name
        assert _image_bytes(Path(f.output)) == _image_bytes(g)


SCRIPT = """
import os, sys
import volbin
{setup}
res = volbin.batch(sys.argv[1], sys.argv[2], method="otsu", progress=False{options})
print("done", len(res.done))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_batch_from_a_script_without_a_main_guard(tmp_path: Path) -> None:
    """On a machine of up to 2 cores the default batch runs in the script's process, so a plain
    script needs no main guard; asked for worker processes, an unguarded top-level call is
    refused at once with the fix, before any worker starts."""
    _write_inputs(tmp_path / "data", 3)
    glob = str(tmp_path / "data/sub-*/anat/*.nii.gz")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(name: str, setup: str, options: str) -> subprocess.CompletedProcess[str]:
        script = tmp_path / f"{name}.py"
        script.write_text(SCRIPT.format(setup=setup, options=options))
        return subprocess.run(
            [sys.executable, str(script), glob, str(tmp_path / name)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = run("plain", "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})", "")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["done", "3"]
    refused = run("workers", "", ", workers=2")
    assert refused.returncode == 1
    assert "workers.py, line 5" in refused.stderr and 'if __name__ == "__main__":' in refused.stderr
    assert "Nanny" not in refused.stderr
    assert not list((tmp_path / "workers").glob("*_mask.nii.gz"))
