"""Random option values for every command: volbin answers each with an exit code and a line.

Hypothesis draws numbers (huge, tiny, negative, NaN, infinite, malformed) and strings for the
options of ``binarize``, ``info``, ``batch``, ``convert`` and ``export-slices`` on small
phantom inputs, and checks what a user sees: the exit code is 0, 1 or 2; standard error holds
no traceback and no "unexpected" error; a failed run leaves no file behind; and the command
ends (a hang fails the time limit).  ``main([...])`` runs in-process.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volbin.cli import main
from volbin.io import TEMP_NAME, save
from volbin.phantom import phantom

#: A run that takes longer has hung (the inputs are a few thousand voxels).
TIME_LIMIT = 120.0
SHAPE = (8, 10, 8)

SPECIAL = ["0", "-1", "1", "2", "3", "0.5", "1e-9", "1e308", "-1e308", "inf", "-inf", "nan", "NaN",
           "18446744073709551616", "1" * 25, "", " ", "1e", "0x10", "1,5", "--", "-0"]  # fmt: skip
NUMBER = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(0, 1).map(lambda v: f"{v:.3g}"),  # values most options take
    st.integers(0, 8).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-100, 100).map(lambda v: f"{v:.3g}"),
)
WORD = st.text(alphabet="abcdefxyz-_.:/@ 0123456789", max_size=12)
SMALL = st.one_of(
    st.sampled_from(["1", "2", "1.5", "0", "-2", "65", "200", "nan", "inf", "1e308", "x"]), NUMBER
)
MEMORY = st.one_of(
    st.sampled_from(
        ["4GB", "16MiB", "1PiB", "2PiB", "15MiB", "inf", "nanGB", "-1MB", "1e308GB", "GB", "4 G"]
    ),
    st.tuples(NUMBER, st.sampled_from(["", "B", "K", "KB", "MiB", "G", "GB", "TB", "X"])).map("".join),
)


def one(values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return values.map(lambda v: [v])


def choice(*names: str) -> st.SearchStrategy[list[str]]:
    return one(st.one_of(st.sampled_from(names), WORD))


RECIPE = {
    "--method": choice("otsu", "li", "value", "stochastic", "dither", "ordered", "mean"),
    "--scope": choice("stack", "volume", "slice"),
    "--axis": choice("x", "y", "z"),
    "--rescale": choice("minmax", "percentile", "fixed", "dtype", "none"),
    "--percentiles": st.lists(NUMBER, min_size=2, max_size=2),
    "--range": st.lists(NUMBER, min_size=2, max_size=2),
    "--curve": choice("linear", "gamma", "log", "equalize"),
    "--gamma": one(NUMBER),
    "--log-gain": one(NUMBER),
    "--threshold": one(NUMBER),
    "--units": choice("raw", "rescaled"),
    "--nbins": one(st.one_of(st.sampled_from(["2", "256", "1", "1000"]), NUMBER)),
    "--seed": one(NUMBER),
    "--kernel": choice("floyd-steinberg", "stucki", "atkinson", "floyd-steinberg-3d"),
    "--serpentine": st.just([]),
    "--jitter": one(NUMBER),
    "--upsample": st.lists(SMALL, min_size=1, max_size=3),
    "--matrix": one(st.one_of(st.sampled_from(["2", "4", "8", "3", "0", "512"]), NUMBER)),
    "--pattern": choice("bayer", "blue-noise"),
}
COMMON = {
    "--volume-axis": one(NUMBER),
    "--memory-limit": one(MEMORY),
    "--chunk-mb": one(NUMBER),
    "--no-progress": st.just([]),
}
WRITE = {"--force": st.just([]), "--max-output-gb": one(NUMBER)}

COMMANDS = {
    "binarize": {
        **RECIPE,
        **COMMON,
        **WRITE,
        "--dtype": choice("uint8", "bool"),
        "--quality": st.just([]),
    },
    "info": {
        **COMMON,
        "--json": st.just([]),
        "--compare": st.just(["GREY"]),
        "--sigma": one(NUMBER),
        "--scope": choice("slice", "volume"),
    },
    "batch": {
        **RECIPE,
        **COMMON,
        **WRITE,
        "--suffix": one(WORD),
        "--ext": choice(".nii", ".nii.gz", ".npy"),
        "--keep-tree": st.just([]),
        "--workers": one(SMALL),
        "--threads-per-worker": one(SMALL),
        "--retries": one(NUMBER),
        "--scheduler": one(st.sampled_from(["threads", "not a url", "tcp://", "x:0"])),
        "--verify": st.just([]),
    },
    "convert": {**COMMON, **WRITE},
    "export-slices": {
        **{
            k: RECIPE[k]
            for k in (
                "--rescale",
                "--percentiles",
                "--range",
                "--curve",
                "--gamma",
                "--log-gain",
                "--kernel",
                "--serpentine",
                "--jitter",
                "--seed",
            )
        },
        **COMMON,
        "--max-output-gb": one(NUMBER),
        "--force": st.just([]),
        "--dpi": one(
            st.one_of(
                st.sampled_from(["50", "50x60", "10x10", "9", "20001", "1e308x300", "x", "50x"]),
                st.tuples(NUMBER, NUMBER).map("x".join),
            )
        ),
        "--layer": one(
            st.one_of(
                st.sampled_from(["2mm", "1.5", "500um", "0.0001mm", "101mm", "1e-9mm", "um"]),
                st.tuples(NUMBER, st.sampled_from(["", "mm", "um", "km"])).map("".join),
            )
        ),
        "--scope": choice("slice", "volume"),
        "--up": choice("S", "I", "A", "P", "R", "L"),
        "--order": one(SMALL),
        "--layers": one(
            st.one_of(
                st.sampled_from(["0:2", ":1", "1:", "2:1", "a:b", "0:0"]),
                st.tuples(NUMBER, NUMBER).map(":".join),
            )
        ),
        "--volume-index": one(SMALL),
        "--checkpoint-every": one(SMALL),
        "--labels": st.just([]),
    },
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fuzz-inputs")
    ph = phantom(SHAPE, seed=0)
    grey = d / "grey.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ph.intensity), np.diag([4.0, 4, 4, 1])), grey)
    binary = d / "binary.nii"
    nib.save(
        nib.Nifti1Image((np.asarray(ph.intensity) > 0.5).astype(np.uint8), np.diag([4.0, 4, 4, 1])), binary
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save(np.stack([np.asarray(ph.intensity)] * 2), d / "stack.npy", sidecar=False)
    save(np.asarray(ph.intensity), d / "grey.zarr", sidecar=False)
    return {"grey": grey, "binary": binary, "npy": d / "stack.npy", "zarr": d / "grey.zarr"}


@st.composite
def command_lines(draw: st.DrawFn, command: str, inputs: dict[str, Path], out: Path) -> list[str]:
    options = COMMANDS[command]
    flags = draw(st.lists(st.sampled_from(sorted(options)), max_size=4, unique=True))
    src = inputs[
        draw(st.sampled_from(["grey", "npy", "zarr"] if command != "info" else ["binary", "grey", "npy"]))
    ]
    ext = draw(st.sampled_from([".nii", ".nii.gz", ".npy", ".zarr"]))
    positional = {
        "binarize": [str(src), str(out / f"o{ext}")],
        "info": [str(src)],
        "batch": [str(src), "--out-dir", str(out / "batch")],
        "convert": [str(src), str(out / f"o{ext}")],
        "export-slices": [str(src), str(out / "stack")],
    }[command]
    line = [command, *positional]
    for flag in flags:
        values = draw(options[flag])
        line += [flag, *[str(inputs["grey"]) if v == "GREY" else v for v in values]]
    return line


def _left_behind(out: Path) -> list[str]:
    """Files a failed run must not leave: images, sidecars, temporaries, per-output locks."""
    bad = []
    for p in out.rglob("*"):
        rel = str(p.relative_to(out))
        if TEMP_NAME.match(p.name) or (p.name.startswith(".o.") and p.name.endswith(".lock")):
            bad.append(rel)
        elif p.parent == out and p.name.startswith("o."):  # binarize and convert: o.<ext>, its sidecar
            bad.append(rel)
        elif p.parent == out / "batch" and p.name not in ("volbin-batch-report.json", ".volbin-batch.lock"):
            bad.append(rel)
    return bad


def _run(line: list[str], out: Path) -> int:
    err = io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(line)
    elapsed = time.monotonic() - t0
    text = err.getvalue()
    assert code in (0, 1, 2), (line, code, text)
    assert "Traceback" not in text and "unexpected" not in text, (line, text)
    assert elapsed < TIME_LIMIT, (line, elapsed)
    if code != 0:
        assert _left_behind(out) == [], (line, text)
    return code


def _fuzz(command: str, inputs: dict[str, Path], n: int) -> collections.Counter[int]:
    """Run `n` random command lines of `command`; the count of each exit code."""
    codes: collections.Counter[int] = collections.Counter()
    root = Path(tempfile.mkdtemp(prefix=f"fuzz-{command}-"))
    try:

        @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def check(data: st.DataObject) -> None:
            out = Path(tempfile.mkdtemp(dir=root))
            try:
                line = data.draw(command_lines(command, inputs, out), label="argv")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # shown by the CLI; not what is tested here
                    codes[_run(line, out)] += 1
            finally:
                shutil.rmtree(out, ignore_errors=True)

        check()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return codes


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_random_options_give_an_exit_code_and_one_line(inputs: dict[str, Path], command: str) -> None:
    _fuzz(command, inputs, 5)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_random_options_many_examples(inputs: dict[str, Path], command: str) -> None:
    codes = _fuzz(command, inputs, int(os.environ.get("VOLBIN_FUZZ_EXAMPLES", "200")))
    print(command, dict(codes))
    assert codes[0] and codes[2], codes  # valid lines ran and bad ones were refused
